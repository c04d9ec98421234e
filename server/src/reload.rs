//! Reloading files while the node runs (secrets: the gossip key ring today, TLS certificates
//! next).
//!
//! One function, [`watch_files`]: a task that polls the content of a set of files and calls a
//! closure when it changes, or at once when a [`Notify`] is triggered (SIGHUP). The closure
//! does the actual reload (read, parse, swap) and decides what a failure means; the usual rule
//! is that a reload that fails keeps what was loaded before and logs why.
//!
//! Content, not modification time, decides: the SHA-256 of each file's bytes. A file that
//! cannot be read counts as a change (the closure then reports the error) and again when it
//! comes back. Files are read with blocking I/O on the runtime: they are small (keys,
//! certificates), read once per interval.
//!
//! Must not: parse or hold the secrets themselves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ring::digest;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the reload closure is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// The content of a watched file changed (or it became unreadable, or readable again).
    Changed,
    /// The trigger was notified (SIGHUP, `Node::reload_secrets`): reload whatever the content.
    Requested,
}

impl std::fmt::Display for ReloadCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Changed => "file changed",
            Self::Requested => "reload requested",
        })
    }
}

/// The content hash of each path (`None`: unreadable).
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<digest::Digest>> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path)
                .ok()
                .map(|bytes| digest::digest(&digest::SHA256, &bytes))
        })
        .collect()
}

fn same(a: &[Option<digest::Digest>], b: &[Option<digest::Digest>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => x.as_ref() == y.as_ref(),
            (None, None) => true,
            _ => false,
        })
}

/// Spawns a task that calls `reload` whenever the content of any of `paths` differs from what
/// it was at the previous check (checked every `interval`; the first check compares with the
/// content at spawn time, which the caller has loaded already), and whenever `trigger` is
/// notified. Stops when `shutdown` is cancelled.
pub fn watch_files<F>(
    paths: Vec<PathBuf>,
    interval: Duration,
    trigger: Arc<Notify>,
    shutdown: CancellationToken,
    mut reload: F,
) -> JoinHandle<()>
where
    F: FnMut(ReloadCause) + Send + 'static,
{
    // Taken now, not when the task first runs: a change made right after this call counts.
    let mut last = fingerprint(&paths);
    crate::logging::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let cause = tokio::select! {
                () = shutdown.cancelled() => return,
                () = trigger.notified() => ReloadCause::Requested,
                _ = tick.tick() => ReloadCause::Changed,
            };
            let now = fingerprint(&paths);
            let changed = !same(&now, &last);
            last = now;
            if changed || cause == ReloadCause::Requested {
                reload(cause);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("ringcache-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Replaces the file's content at once (as a rename), so a poll never sees half of it.
    fn replace(path: &std::path::Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// The calls made once there are `n` of them (or all made within 10 s, for the caller to
    /// compare).
    async fn wait_for_calls(calls: &Mutex<Vec<ReloadCause>>, n: usize) -> Vec<ReloadCause> {
        let what = format!("{n} reload calls");
        let _ = ringcache_test_support::until(&what, Duration::from_secs(10), async || {
            calls.lock().unwrap().len() >= n
        })
        .await;
        calls.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_content_change_or_a_trigger_calls_reload_and_nothing_else_does() {
        let dir = temp_dir("change");
        let path = dir.0.join("secret");
        std::fs::write(&path, "one").unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let trigger = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let task = watch_files(
            vec![path.clone()],
            Duration::from_millis(10),
            trigger.clone(),
            shutdown.clone(),
            {
                let calls = calls.clone();
                move |cause| calls.lock().unwrap().push(cause)
            },
        );
        // Rewriting the same bytes is no change; new bytes are.
        replace(&path, "one");
        replace(&path, "two");
        assert_eq!(wait_for_calls(&calls, 1).await, [ReloadCause::Changed]);
        trigger.notify_one();
        assert_eq!(
            wait_for_calls(&calls, 2).await,
            [ReloadCause::Changed, ReloadCause::Requested]
        );
        // Removing the file is a change (the closure gets to report it), and so is its return.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(wait_for_calls(&calls, 3).await.len(), 3);
        replace(&path, "two");
        assert_eq!(wait_for_calls(&calls, 4).await.len(), 4);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task stops on shutdown")
            .unwrap();
        assert_eq!(calls.lock().unwrap().len(), 4, "no call without a cause");
    }
}
