//! Commands as model and view: each command builds one serializable value (its model, a
//! [`View`]) and [`Ctx::emit`](super::Ctx::emit) prints it with one of two renderers: the
//! value's own text rendering (aligned tables, lines), or JSON (the value serialized as it is, so
//! the JSON has every field the text shows, for every outcome, misses and failures included).

use serde::Serialize;

use super::EXIT_OK;

/// What the text renderer writes for a value.
#[derive(Debug, Default)]
pub(crate) struct Human {
    /// For stdout: text, or raw bytes (`get` writes a value as it is).
    pub(crate) stdout: Vec<u8>,
    /// One line for stderr (without `ringctl: ` and the newline), for outcomes that must not
    /// mix with raw output on stdout (a `get` miss).
    pub(crate) note: Option<String>,
}

impl Human {
    /// Text for stdout.
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Human {
            stdout: text.into().into_bytes(),
            note: None,
        }
    }

    /// Raw bytes for stdout.
    pub(crate) fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Human {
            stdout: bytes.into(),
            note: None,
        }
    }

    /// Nothing on stdout, one line on stderr.
    pub(crate) fn note(note: impl Into<String>) -> Self {
        Human {
            stdout: Vec::new(),
            note: Some(note.into()),
        }
    }
}

/// A command's result. The JSON renderer serializes it; [`human`](View::human) is the text
/// renderer.
pub(crate) trait View: Serialize {
    /// The text rendering; colour only when `color`.
    fn human(&self, color: bool) -> Human;

    /// The exit status of this outcome (0 unless a miss or a failure says otherwise).
    fn exit_code(&self) -> i32 {
        EXIT_OK
    }

    /// Why the command failed, when this outcome is a failure: one line on stderr (after
    /// `ringctl: `) whichever renderer prints the value.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Milliseconds of a duration, saturating, for JSON.
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
