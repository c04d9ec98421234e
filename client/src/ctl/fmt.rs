//! Output helpers: aligned tables, colour, and the formatting of sizes, durations and digests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringcache_proto::topology::NodeState;

/// A colour for a table cell or a verdict; only written when the output is a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Color {
    Green,
    Yellow,
    Red,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
        }
    }
}

/// `text` in `color` when `enabled`, else as is.
pub(crate) fn paint(text: &str, color: Option<Color>, enabled: bool) -> String {
    match color {
        Some(color) if enabled => format!("\x1b[{}m{text}\x1b[0m", color.code()),
        _ => text.to_owned(),
    }
}

/// The colour of a member state.
pub(crate) fn state_color(state: NodeState) -> Color {
    match state {
        NodeState::Active => Color::Green,
        NodeState::Joining | NodeState::Leaving | NodeState::Suspect | NodeState::Restarting => {
            Color::Yellow
        }
        NodeState::Dead => Color::Red,
        NodeState::Left => Color::Yellow,
    }
}

/// One cell of a [`Table`].
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    text: String,
    color: Option<Color>,
    right: bool,
}

impl Cell {
    /// Left-aligned text.
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            color: None,
            right: false,
        }
    }

    /// A right-aligned number or quantity.
    #[allow(clippy::needless_pass_by_value)] // called with temporaries: numbers and strings
    pub(crate) fn num(text: impl ToString) -> Self {
        Cell {
            text: text.to_string(),
            color: None,
            right: true,
        }
    }

    /// The same cell, coloured on a terminal.
    pub(crate) fn color(mut self, color: Color) -> Self {
        self.color = Some(color);
        self
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::text(text)
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::text(text)
    }
}

/// A table with a header row, columns padded to their widest cell, two spaces apart.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline; no trailing spaces.
    pub(crate) fn render(&self, color: bool) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for (i, header) in self.headers.iter().enumerate() {
            widths[i] = header.chars().count();
        }
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.text.chars().count());
            }
        }
        let mut out = String::new();
        // A header is aligned like its column's cells.
        let header: Vec<Cell> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| Cell {
                right: self
                    .rows
                    .first()
                    .and_then(|r| r.get(i))
                    .is_some_and(|c| c.right),
                ..Cell::text(*h)
            })
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.text.chars().count());
                let last = i + 1 == row.len();
                if i > 0 {
                    line.push_str("  ");
                }
                if cell.right {
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str(&paint(&cell.text, cell.color, color));
                if !cell.right && !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Label/value lines with the values aligned.
pub(crate) fn pairs(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        out.push_str(format!("{key:<width$}  {value}").trim_end());
        out.push('\n');
    }
    out
}

/// A 64-bit digest or hash as operators see it: `0x` and 16 hex digits.
pub(crate) fn hex(value: u64) -> String {
    format!("{value:#018x}")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub(crate) fn bytes(value: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if value < 1024 {
        return format!("{value} B");
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let mut scaled = value as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}

/// `part / whole` as a percentage with one decimal, or `-` when `whole` is 0.
pub(crate) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let ratio = part as f64 * 100.0 / whole as f64;
    format!("{ratio:.1}%")
}

/// A duration rounded to milliseconds (seconds when over a minute), in humantime's syntax.
pub(crate) fn duration(value: Duration) -> String {
    let rounded = if value >= Duration::from_secs(60) {
        Duration::from_secs(value.as_secs())
    } else {
        Duration::from_millis(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    };
    if rounded.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(rounded).to_string()
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An absolute expiry (unix ms) relative to now: `in 9.5s`, or `expired 2s ago`.
pub(crate) fn expires(at_ms: u64) -> String {
    let now = now_unix_ms();
    if at_ms >= now {
        format!("in {}", duration(Duration::from_millis(at_ms - now)))
    } else {
        format!(
            "expired {} ago",
            duration(Duration::from_millis(now - at_ms))
        )
    }
}

/// Standard base64 (RFC 4648, with padding).
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut table = Table::new(&["NODE", "KEYS", "STATE"]);
        table.row(vec![Cell::text("n1"), Cell::num(5), Cell::text("active")]);
        table.row(vec![
            Cell::text("node-22"),
            Cell::num(12345),
            Cell::text("dead").color(Color::Red),
        ]);
        assert_eq!(
            table.render(false),
            "NODE      KEYS  STATE\nn1           5  active\nnode-22  12345  dead\n"
        );
        assert!(table.render(true).contains("\x1b[31mdead\x1b[0m"));
    }

    #[test]
    fn quantities() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(1, 0), "-");
        assert_eq!(hex(0xab), "0x00000000000000ab");
        assert_eq!(duration(Duration::from_micros(9_500_700)), "9s 500ms");
        assert_eq!(duration(Duration::from_millis(61_500)), "1m 1s");
        assert_eq!(duration(Duration::ZERO), "0s");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }
}
