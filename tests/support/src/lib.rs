//! What every test crate of the workspace shares, in one place:
//!
//! - **Waiting for a condition** ([`until`], [`until_some`], [`blocking_until_some`]): the
//!   condition is polled every [`POLL`] until it holds or a deadline passes, and a timeout names
//!   what was awaited. Tests never sleep a fixed time to let something happen.
//! - **Free loopback addresses** ([`free_loopback_ip`]): a `127.x.y.z` address, picked at random,
//!   whose given ports are free, for tests of the binary that need fixed ports (its defaults,
//!   seeds known in advance). Two test runs on one machine, or a node running beside them on
//!   127.0.0.1, do not meet; and a closed one ([`closed_addr`]) for a peer that is down.
//! - **The clients of other languages** ([`target_dir`], [`python`]): where `scripts/test-deps`
//!   installs them, beside the test binary.
//! - **Generated files** ([`generated_file`], [`generated_section`]): a committed file (or the
//!   part of one between markers) must be what the code generates; `RINGCACHE_REGENERATE=1`
//!   rewrites it.
//! - **Zipfian ranks** ([`zipf::Zipfian`]): the skewed key choice of ringbench's workloads, its
//!   micro-benchmarks and the hot-key tests (no dependency: the caller brings the uniform draws).

pub mod zipf;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// A condition that did not hold within its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// How long it was awaited.
    pub deadline: Duration,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} not reached within {:?}", self.what, self.deadline)
    }
}

impl std::error::Error for Timeout {}

/// Waits until `condition` holds, polling it every [`POLL`] (on tokio's clock, so paused-time
/// tests advance through it); `Err` once `deadline` has passed.
pub async fn until(
    what: &str,
    deadline: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) -> Result<(), Timeout> {
    until_some(what, deadline, async || condition().await.then_some(())).await
}

/// Waits until `probe` gives a value and returns it, polling every [`POLL`] on tokio's clock;
/// `Err` once `deadline` has passed.
pub async fn until_some<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(Timeout {
                what: what.to_owned(),
                deadline,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`until_some`] for tests without a runtime: polls `probe` every [`POLL`] on the real clock,
/// blocking the thread between polls.
pub fn blocking_until_some<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if start.elapsed() >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                deadline,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// A loopback address `127.x.y.z` (never 127.0.0.0/16, where local nodes and other tests bind),
/// picked at random, on which every port of `tcp` and `udp` is free now. Ports are checked by
/// binding them and letting go, so a test that binds them next gets them unless another process
/// takes the same random address and port in between.
///
/// # Panics
/// When no such address is found in 1,000 tries (loopback is not 127.0.0.0/8 here).
pub fn free_loopback_ip(tcp: &[u16], udp: &[u16]) -> Ipv4Addr {
    let mut state = seed();
    for _ in 0..1_000 {
        state = next(state);
        let [_, x, y, z, ..] = state.to_le_bytes();
        // 127.1.0.0 – 127.254.255.254: not the 127.0.0.0/16 of fixed test addresses.
        let ip = Ipv4Addr::new(127, 1 + x % 254, y, 1 + z % 254);
        let free = tcp
            .iter()
            .all(|&port| TcpListener::bind(SocketAddrV4::new(ip, port)).is_ok())
            && udp
                .iter()
                .all(|&port| UdpSocket::bind(SocketAddrV4::new(ip, port)).is_ok());
        if free {
            return ip;
        }
    }
    panic!("no free loopback address in 1,000 tries: is 127.0.0.0/8 the loopback network?");
}

/// A seed that differs between processes and calls.
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// splitmix64: a well-spread step from one state to the next.
fn next(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A `127.0.0.1` port nothing listens on (bound to a free port, then released): a dial to it
/// is refused.
pub fn closed_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener
        .local_addr()
        .expect("a bound listener's address")
        .to_string()
}

/// The target directory this test binary was built in (it is `<target>/<profile>/deps/<test>-*`),
/// where `scripts/test-deps` installs the clients of other languages.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf()
}

/// The Python interpreter of the tests: `$RINGCACHE_TEST_PYTHON`, or the virtualenv that
/// `scripts/test-deps` makes in the [`target_dir`].
pub fn python() -> String {
    if let Ok(python) = std::env::var("RINGCACHE_TEST_PYTHON") {
        return python;
    }
    target_dir()
        .join("python-clients/bin/python")
        .to_string_lossy()
        .into_owned()
}

/// The variable that makes [`generated_file`] and [`generated_section`] rewrite a stale file
/// instead of failing.
pub const REGENERATE: &str = "RINGCACHE_REGENERATE";

/// Checks that the committed file `path` is `fresh` (what the code generates); with
/// `RINGCACHE_REGENERATE` set, rewrites it instead. `command` is how to rewrite it, for the
/// failure message.
///
/// # Panics
///
/// When the file differs (or cannot be written while regenerating).
pub fn generated_file(path: &Path, fresh: &str, command: &str) {
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed == fresh {
        return;
    }
    if std::env::var_os(REGENERATE).is_some() {
        std::fs::write(path, fresh)
            .unwrap_or_else(|e| panic!("cannot rewrite {}: {e}", path.display()));
        return;
    }
    panic!(
        "{} differs from what the code generates: rewrite it with `{command}` and commit it",
        path.display()
    );
}

/// [`generated_file`] for the part of `path` after the line holding `begin` and up to `end`
/// (both markers stay); the rest of the file is left as it is.
///
/// # Panics
///
/// When the markers are missing or out of order, or as [`generated_file`] does.
pub fn generated_section(path: &Path, begin: &str, end: &str, fresh: &str, command: &str) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (Some(start), Some(stop)) = (text.find(begin), text.find(end)) else {
        panic!("{} lacks the markers {begin:?} and {end:?}", path.display());
    };
    assert!(
        start < stop,
        "{}: {begin:?} comes after {end:?}",
        path.display()
    );
    let whole = format!("{}{begin}\n{fresh}{}", &text[..start], &text[stop..]);
    generated_file(path, &whole, command);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn until_returns_once_the_condition_holds_and_times_out_naming_it() {
        let mut polls = 0;
        until("three polls", Duration::from_secs(1), async || {
            polls += 1;
            polls == 3
        })
        .await
        .unwrap();
        assert_eq!(polls, 3);
        let err = until("never", Duration::from_millis(100), async || false)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "never not reached within 100ms");
    }

    #[test]
    fn blocking_until_some_gives_the_value() {
        let mut n = 0;
        let value = blocking_until_some("n = 2", Duration::from_secs(5), || {
            n += 1;
            (n == 2).then_some(n * 10)
        })
        .unwrap();
        assert_eq!(value, 20);
        assert!(blocking_until_some("never", Duration::ZERO, || None::<()>).is_err());
    }

    #[test]
    fn a_free_loopback_address_is_outside_127_0_and_its_ports_bind() {
        let ip = free_loopback_ip(&[7379, 7381], &[7380]);
        assert_eq!(ip.octets()[0], 127);
        assert_ne!(ip.octets()[1], 0);
        let _held = TcpListener::bind(SocketAddrV4::new(ip, 7379)).unwrap();
        // A second pick never returns an address whose port is held.
        for _ in 0..20 {
            let other = free_loopback_ip(&[7379], &[]);
            assert_ne!(other, ip);
        }
    }
}
