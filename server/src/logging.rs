//! Log output: the subscriber `ringcached` installs, and the node span that puts the node id on
//! every line.
//!
//! Every node has a root span, `node{id=<node id>}` ([`node_span`]). The node runs its serving
//! future, every task it spawns (and the tasks those spawn, with `in_current_span`) and every
//! gRPC request (tonic's `trace_fn`) inside it, so each line a node logs names it, in text
//! (`node{id=n1}: ...`) and in JSON (`"span":{"id":"n1","name":"node"}` and `"spans"`), also
//! when several nodes share a process (tests, simulations). `ringcached` runs one node per
//! process and also enters the span on the main thread and on every runtime thread, so lines of
//! libraries from tasks the node did not spawn (tonic's connection tasks) carry it too.
//!
//! The span is at level ERROR under its own target, [`NODE_SPAN_TARGET`], and [`init`] always
//! enables that target: a filter such as `RUST_LOG=warn` or `RUST_LOG=foca=debug` never loses
//! the node id from the lines it lets through.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing::span::EnteredSpan;
use tracing::{Instrument as _, Span};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The target of the node span (see the module docs).
pub const NODE_SPAN_TARGET: &str = "ringcache_server::node_span";

/// The root span of the node `node_id`: `node{id=<node_id>}`, with no parent.
pub fn node_span(node_id: &str) -> Span {
    tracing::error_span!(target: NODE_SPAN_TARGET, parent: None, "node", id = %node_id)
}

/// Whether text lines get ANSI colours: only on a terminal, and never when `NO_COLOR` is set to
/// a non-empty value (<https://no-color.org>). Files, pipes and journald get plain text.
pub fn use_ansi(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The level filter: `RUST_LOG` (default `info`), with the node span always enabled.
pub fn env_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format!("{NODE_SPAN_TARGET}=error").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Installs the global subscriber: lines on stderr, as text or one JSON object per line,
/// filtered by [`env_filter`], coloured as [`use_ansi`] decides.
pub fn init(format: LogFormat) {
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// `tokio::spawn` in the current span: the task's lines keep the node span of the code that
/// spawned it (a spawned task starts outside any span otherwise).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}

/// `JoinSet::spawn` in the current span (see [`spawn`]).
pub fn spawn_in<T, F>(set: &mut tokio::task::JoinSet<T>, future: F) -> tokio::task::AbortHandle
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    set.spawn(future.in_current_span())
}

thread_local! {
    /// The span entered for the whole life of this thread ([`enter_for_thread`]).
    static THREAD_SPAN: RefCell<Option<EnteredSpan>> = const { RefCell::new(None) };
}

/// Enters `span` on this thread until [`exit_for_thread`] (or the thread ends): every line
/// logged on it outside any other span belongs to `span`. For the runtime threads of a process
/// that runs one node (tokio's `on_thread_start`).
pub fn enter_for_thread(span: &Span) {
    let entered = span.clone().entered();
    THREAD_SPAN.with(|slot| *slot.borrow_mut() = Some(entered));
}

/// Leaves the span [`enter_for_thread`] entered on this thread (tokio's `on_thread_stop`).
pub fn exit_for_thread() {
    THREAD_SPAN.with(|slot| drop(slot.borrow_mut().take()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(!use_ansi(false, None), "a file, a pipe or journald");
        assert!(!use_ansi(true, Some(OsStr::new("1"))), "NO_COLOR=1");
        assert!(!use_ansi(false, Some(OsStr::new("1"))));
        // no-color.org: an empty NO_COLOR does not count.
        assert!(use_ansi(true, Some(OsStr::new(""))));
    }
}
