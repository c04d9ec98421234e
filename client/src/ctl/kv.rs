//! The key-value commands: `get`, `set`, `del`, `ttl`, `incr`, through the routing client. Each
//! builds one value ([`View`]) that prints as text or as JSON; a miss is an outcome with its own
//! JSON (`"found": false`) and exit status 3.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use super::{
    Ctx, EXIT_MISSING, KvOptions, fmt,
    view::{Human, View, millis},
};
use crate::{KeyTtl, SetOptions};

/// How a value shows in JSON: as a UTF-8 string when it is one, else as base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Encoding {
    Utf8,
    Base64,
}

/// `get KEY`: the value with its version and time to live, or a miss.
#[derive(Debug, Serialize)]
pub(super) struct Got {
    key: String,
    found: bool,
    /// The value as text (see `encoding`); `null` on a miss.
    value: Option<String>,
    encoding: Option<Encoding>,
    version: Option<u64>,
    /// Time to live left; `null` when persistent or missing.
    ttl_ms: Option<u64>,
    /// The raw value, written as it is by the text renderer.
    #[serde(skip)]
    raw: Option<Bytes>,
}

impl Got {
    fn miss(key: String) -> Self {
        Got {
            key,
            found: false,
            value: None,
            encoding: None,
            version: None,
            ttl_ms: None,
            raw: None,
        }
    }

    fn hit(key: String, value: Bytes, version: u64, ttl: Option<Duration>) -> Self {
        let (text, encoding) = match std::str::from_utf8(&value) {
            Ok(text) => (text.to_owned(), Encoding::Utf8),
            Err(_) => (fmt::base64(&value), Encoding::Base64),
        };
        Got {
            key,
            found: true,
            value: Some(text),
            encoding: Some(encoding),
            version: Some(version),
            ttl_ms: ttl.map(millis),
            raw: Some(value),
        }
    }
}

impl View for Got {
    /// The raw bytes (binary-safe, no newline added); a miss is a line on stderr, so stdout
    /// holds only values.
    fn human(&self, _color: bool) -> Human {
        match &self.raw {
            Some(raw) => Human::bytes(raw.to_vec()),
            None => Human::note(format!("key {:?} not found", self.key)),
        }
    }

    fn exit_code(&self) -> i32 {
        if self.found {
            super::EXIT_OK
        } else {
            EXIT_MISSING
        }
    }
}

/// `get KEY`: the raw value on stdout (no newline added), or in JSON `value` as a UTF-8 string
/// (`encoding: "utf8"`) when it is valid UTF-8 and as base64 (`encoding: "base64"`) otherwise.
pub(super) async fn get(
    ctx: &mut Ctx<'_>,
    key: String,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let got = match client.get_entry(key.clone()).await? {
        Some(entry) => Got::hit(key, entry.value, entry.version, entry.ttl),
        None => Got::miss(key),
    };
    ctx.emit(&got)
}

/// `set KEY ...`: what was stored.
#[derive(Debug, Serialize)]
pub(super) struct Stored {
    key: String,
    stored: bool,
    version: Option<u64>,
    bytes: usize,
    ttl_ms: Option<u64>,
}

impl View for Stored {
    fn human(&self, _color: bool) -> Human {
        let size = fmt::bytes(self.bytes as u64);
        Human::text(match (self.stored, self.version) {
            (true, Some(version)) => format!("stored {size} (version {version})\n"),
            (true, None) => format!("stored {size}\n"),
            // Said by `failure`.
            (false, _) => String::new(),
        })
    }

    fn exit_code(&self) -> i32 {
        if self.stored {
            super::EXIT_OK
        } else {
            super::EXIT_ERROR
        }
    }

    fn failure(&self) -> Option<String> {
        (!self.stored).then(|| format!("{:?} was not stored", self.key))
    }
}

/// `set KEY (VALUE | --file PATH | --stdin) [--ttl D]`: the value from the argument, the file, or
/// stdin.
pub(super) async fn set(
    ctx: &mut Ctx<'_>,
    key: String,
    value: Option<String>,
    file: Option<PathBuf>,
    ttl: Option<Duration>,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    // Read the value before connecting, so a bad file fails fast.
    let value: Bytes = match (value, file) {
        (Some(value), _) => value.into(),
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {}: {}",
                    path.display(),
                    super::node::describe_chain(&e)
                )
            })?
            .into(),
        // `--stdin` (the command line requires one of the three sources).
        (None, None) => {
            let mut buffer = Vec::new();
            ctx.stdin
                .read_to_end(&mut buffer)
                .context("cannot read the value from stdin")?;
            buffer.into()
        }
    };
    let client = ctx.client(options).await?;
    let mut set_options = SetOptions::new();
    if let Some(ttl) = ttl {
        set_options = set_options.ttl(ttl);
    }
    let bytes = value.len();
    let outcome = client.set_with(key.clone(), value, set_options).await?;
    ctx.emit(&Stored {
        key,
        stored: outcome.stored,
        version: outcome.version,
        bytes,
        ttl_ms: ttl.map(millis),
    })
}

/// `del KEY`: whether it existed.
#[derive(Debug, Serialize)]
pub(super) struct Deleted {
    key: String,
    deleted: bool,
}

impl View for Deleted {
    fn human(&self, _color: bool) -> Human {
        Human::text(if self.deleted {
            "deleted\n"
        } else {
            "not found\n"
        })
    }
}

/// `del KEY`: whether it existed; status 0 either way.
pub(super) async fn del(
    ctx: &mut Ctx<'_>,
    key: String,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let deleted = client.delete(key.clone()).await?;
    ctx.emit(&Deleted { key, deleted })
}

/// `ttl KEY`: the time left, none (persistent), or a miss.
#[derive(Debug, Serialize)]
pub(super) struct TimeToLive {
    key: String,
    found: bool,
    /// Whether the key has no expiry (`false` on a miss).
    persistent: bool,
    /// Time left; `null` when persistent or missing.
    ttl_ms: Option<u64>,
}

impl View for TimeToLive {
    fn human(&self, _color: bool) -> Human {
        Human::text(match (self.found, self.ttl_ms) {
            (false, _) => "not found\n".to_owned(),
            (true, None) => "persistent\n".to_owned(),
            (true, Some(ms)) => format!("{}\n", fmt::duration(Duration::from_millis(ms))),
        })
    }

    fn exit_code(&self) -> i32 {
        if self.found {
            super::EXIT_OK
        } else {
            EXIT_MISSING
        }
    }
}

/// `ttl KEY`: `persistent` or the time left; a missing key is status 3.
pub(super) async fn ttl(
    ctx: &mut Ctx<'_>,
    key: String,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let (found, left) = match client.ttl(key.clone()).await? {
        KeyTtl::Missing => (false, None),
        KeyTtl::Persistent => (true, None),
        KeyTtl::ExpiresIn(left) => (true, Some(left)),
    };
    ctx.emit(&TimeToLive {
        key,
        found,
        persistent: found && left.is_none(),
        ttl_ms: left.map(millis),
    })
}

/// `incr KEY [DELTA]`: the new value.
#[derive(Debug, Serialize)]
pub(super) struct Incremented {
    key: String,
    value: i64,
}

impl View for Incremented {
    fn human(&self, _color: bool) -> Human {
        Human::text(format!("{}\n", self.value))
    }
}

/// `incr KEY [DELTA] [--ttl D]`: the new value.
pub(super) async fn incr(
    ctx: &mut Ctx<'_>,
    key: String,
    delta: i64,
    ttl: Option<Duration>,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let value = match ttl {
        Some(ttl) => client.incr_with_ttl(key.clone(), delta, ttl).await?,
        None => client.incr(key.clone(), delta).await?,
    };
    ctx.emit(&Incremented { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_has_the_same_json_shape_as_a_hit() {
        let hit = serde_json::to_value(Got::hit(
            "k".into(),
            Bytes::from_static(b"v"),
            7,
            Some(Duration::from_millis(1500)),
        ))
        .unwrap();
        let miss = serde_json::to_value(Got::miss("k".into())).unwrap();
        let keys = |v: &serde_json::Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<String>>()
        };
        assert_eq!(keys(&hit), keys(&miss));
        assert_eq!(
            miss,
            serde_json::json!({"key": "k", "found": false, "value": null, "encoding": null,
                "version": null, "ttl_ms": null})
        );
        assert_eq!(hit["encoding"], "utf8");
        assert_eq!(hit["ttl_ms"], 1500);
        let binary = serde_json::to_value(Got::hit(
            "b".into(),
            Bytes::from_static(&[0xff, 0xfe]),
            1,
            None,
        ))
        .unwrap();
        assert_eq!(binary["encoding"], "base64");
        assert_eq!(binary["value"], "//4=");
    }

    #[test]
    fn misses_exit_three_and_say_so() {
        let miss = Got::miss("k".into());
        assert_eq!(miss.exit_code(), EXIT_MISSING);
        let human = miss.human(false);
        assert!(human.stdout.is_empty(), "stdout holds values only");
        assert_eq!(human.note.as_deref(), Some("key \"k\" not found"));
        let ttl = TimeToLive {
            key: "k".into(),
            found: false,
            persistent: false,
            ttl_ms: None,
        };
        assert_eq!(ttl.exit_code(), EXIT_MISSING);
        assert_eq!(ttl.human(false).stdout, b"not found\n");
    }
}
