//! The few counters `stats` adds from a node's Prometheus endpoint (`GET /metrics` on its HTTP
//! address) that `NodeInfo` does not carry: hints dropped and replayed, replica writes, read
//! repairs. (Connections, forwarded requests, hints pending and replication lag come with
//! `NodeInfo`, so they show even when the HTTP port cannot be reached.)

use std::{collections::BTreeMap, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The metric families (counters) `ringctl stats` reads from a node's `/metrics`, each summed
/// over its labels. A test checks that each is a family the node declares.
pub const STATS_FAMILIES: &[&str] = &[
    "ringcache_hints_dropped_total",
    "ringcache_hints_replayed_total",
    "ringcache_replica_writes_total",
    "ringcache_read_repairs_total",
];

/// Scrapes `http://{addr}/metrics` and returns the shown metrics by name, summed over labels.
pub(super) async fn scrape(addr: &str, timeout: Duration) -> Result<BTreeMap<String, f64>, String> {
    let body = tokio::time::timeout(timeout, http_get(addr, "/metrics"))
        .await
        .map_err(|_| {
            format!(
                "no answer from {addr} within {}",
                super::fmt::duration(timeout)
            )
        })??;
    Ok(parse(&body))
}

async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach {addr}: {}", super::node::describe_chain(&e)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let io = |e: std::io::Error| format!("{addr}: {}", super::node::describe_chain(&e));
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: malformed HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("{addr}{path}: HTTP {status}"));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body).ok_or_else(|| format!("{addr}: malformed chunked body"))
    } else {
        Ok(body.to_owned())
    }
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Sums the samples of the shown metrics by name.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind('}') {
            Some(end) => (&line[..=end], line[end + 1..].trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((series, value)) => (series, value.trim()),
                None => continue,
            },
        };
        let name = series.split('{').next().unwrap_or(series);
        if !STATS_FAMILIES.contains(&name) {
            continue;
        }
        // A timestamp may follow the value.
        let value = value.split_whitespace().next().unwrap_or_default();
        if let Ok(value) = value.parse::<f64>() {
            *sums.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_metrics_are_summed_over_labels() {
        let text = "\
# TYPE ringcache_forwarded_requests_total counter
ringcache_hints_dropped_total{reason=\"max_age\"} 3
ringcache_hints_dropped_total{reason=\"max_bytes\"} 4
ringcache_hints_pending 2
ringcache_keys 99
ringcache_replica_writes_total{result=\"ok\"} 5 1700000000000
ringcache_replica_writes_total{result=\"failed\"} 1
ringcache_replica_streams 3
";
        let sums = parse(text);
        assert_eq!(sums.get("ringcache_hints_dropped_total"), Some(&7.0));
        assert!(
            !sums.contains_key("ringcache_hints_pending"),
            "NodeInfo carries it"
        );
        assert_eq!(sums.get("ringcache_replica_writes_total"), Some(&6.0));
        assert!(!sums.contains_key("ringcache_keys"));
        assert!(
            !sums.contains_key("ringcache_replica_streams"),
            "a family that only shares a prefix is not shown"
        );
        assert_eq!(dechunk("3\r\nabc\r\n0\r\n\r\n").as_deref(), Some("abc"));
    }
}
