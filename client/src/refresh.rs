//! Keeping the router's topology fresh.
//!
//! - **Watch.** A task streams `Cluster.WatchTopology` from one live node and swaps in every
//!   topology it receives. When the stream ends or fails it moves on to another ring member or
//!   seed after a backoff (100 ms doubling to 5 s, reset once a stream delivers); a new stream
//!   starts with the current topology, so reconnecting is also a re-fetch. The task holds only a
//!   `Weak` router and a stop channel the router owns, so it ends when the last `Client` clone
//!   is dropped.
//! - **Triggered refresh.** Every answer carries the node's topology digest. When it differs from
//!   the client's, or when a node looks unreachable, a background `GetTopology` runs, from the
//!   node that answered (or from another node than the one that failed). Triggers are coalesced:
//!   while a refresh runs, further triggers only mark it to run once more, and only if the
//!   digest they saw is still not the client's; refreshes start at least
//!   [`MIN_REFRESH_INTERVAL`] apart.
//! - **Explicit refresh.** [`Client::refresh_topology`](crate::Client::refresh_topology) fetches
//!   at once and reports the outcome.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak, atomic::Ordering},
    time::Duration,
};

use ringcache_proto::{
    topology::Topology,
    v1::{GetTopologyRequest, NodeLimits, WatchTopologyRequest},
};
use tokio::{sync::oneshot, time::Instant};
use tonic::Code;

use crate::{
    Error,
    conn::ConnectConfig,
    observe,
    router::{NodeSlot, Router},
};

/// The least time between the starts of two triggered refreshes.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// The watch's first reconnect delay, doubled after each failed attempt.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The watch's longest reconnect delay.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Nodes asked, one after the other, by one refresh.
const MAX_FETCH_CANDIDATES: usize = 5;

/// Why a topology could not be had from a node.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The node sent a topology that does not validate.
    Invalid(String),
    /// The node did not answer, or answered an error.
    Failed(String),
    /// The node refused the credentials or the user's role: final for every node.
    Denied(Error),
}

/// A topology as one node served it, with the limits the node stated (`None`: an older node).
pub(crate) type Fetched = (Topology, Option<NodeLimits>);

/// Asks one node for its topology. `Ok(None)`: the node has no `Cluster` service.
pub(crate) async fn fetch_topology(
    slot: &NodeSlot,
    config: &ConnectConfig,
) -> Result<Option<Fetched>, FetchError> {
    let pool = slot
        .pool(config)
        .map_err(|error| FetchError::Failed(error.to_string()))?;
    let timeout = config.request_timeout;
    let mut request = tonic::Request::new(GetTopologyRequest {});
    request.set_timeout(timeout);
    let wire = match tokio::time::timeout(timeout, pool.cluster().get_topology(request)).await {
        Err(_) => return Err(FetchError::Failed(format!("no answer within {timeout:?}"))),
        Ok(Err(status)) if status.code() == Code::Unimplemented => return Ok(None),
        Ok(Err(status)) => {
            let error = Error::from_status(&status);
            return Err(if error.is_denial() {
                FetchError::Denied(error)
            } else {
                FetchError::Failed(error.to_string())
            });
        }
        Ok(Ok(response)) => response.into_inner(),
    };
    Topology::try_from(&wire)
        .map(|topology| Some((topology, wire.sender_limits)))
        .map_err(|error| FetchError::Invalid(error.to_string()))
}

/// The triggered-refresh bookkeeping of one router.
#[derive(Debug, Default)]
pub(crate) struct Refresher {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    /// A refresh task is running.
    running: bool,
    /// A trigger arrived since the running refresh started fetching.
    again: bool,
    /// One of those triggers was a failure: refresh again whatever the digest.
    any: bool,
    /// The newest digest a node advertised.
    wanted: Option<u64>,
    /// Ask this node first (it advertised a different digest).
    prefer: Option<Arc<NodeSlot>>,
    /// Do not ask this node (it just failed).
    avoid: Option<Arc<NodeSlot>>,
    /// When the last triggered refresh finished.
    last_finished: Option<Instant>,
}

impl Pending {
    /// No refresh running and none asked for; keeps when the last one finished.
    fn reset(&mut self) {
        *self = Pending {
            last_finished: self.last_finished,
            ..Pending::default()
        };
    }
}

/// Clears the running flag if a refresh task is dropped before it finished (its runtime shut
/// down), so that later triggers start a new one.
struct RunningGuard<'a> {
    router: &'a Router,
    finished: bool,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.router.lock_pending().reset();
        }
    }
}

impl Router {
    /// Notes the digest a node reported; refreshes when it is not the client's.
    pub(crate) fn observe_digest(self: &Arc<Self>, advertised: u64, from: &Arc<NodeSlot>) {
        if advertised == self.digest() || !self.snapshot().aware() {
            return;
        }
        tracing::trace!(node = %from.addr(), advertised, ours = self.digest(), "topology digest differs");
        self.trigger_refresh(Some(advertised), Some(from), None);
    }

    /// Refreshes after `failed` looked unreachable or unavailable.
    pub(crate) fn refresh_after_failure(self: &Arc<Self>, failed: &Arc<NodeSlot>) {
        if self.snapshot().aware() {
            self.trigger_refresh(None, None, Some(failed));
        }
    }

    fn trigger_refresh(
        self: &Arc<Self>,
        advertised: Option<u64>,
        prefer: Option<&Arc<NodeSlot>>,
        avoid: Option<&Arc<NodeSlot>>,
    ) {
        let mut pending = self.lock_pending();
        match advertised {
            Some(digest) => pending.wanted = Some(digest),
            None => pending.any = true,
        }
        if let Some(prefer) = prefer {
            pending.prefer = Some(Arc::clone(prefer));
        }
        if let Some(avoid) = avoid {
            pending.avoid = Some(Arc::clone(avoid));
        }
        if pending.running {
            pending.again = true;
            return;
        }
        pending.running = true;
        drop(pending);
        tokio::spawn(Arc::clone(self).refresh_loop());
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.refresher
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs triggered refreshes until no trigger is left that the last one did not satisfy.
    async fn refresh_loop(self: Arc<Self>) {
        let mut guard = RunningGuard {
            router: &self,
            finished: false,
        };
        loop {
            let wait = self.lock_pending().last_finished.map(|finished| {
                (finished + MIN_REFRESH_INTERVAL).saturating_duration_since(Instant::now())
            });
            if let Some(wait) = wait.filter(|wait| !wait.is_zero()) {
                tokio::time::sleep(wait).await;
            }
            let (prefer, avoid) = {
                let mut pending = self.lock_pending();
                pending.again = false;
                pending.any = false;
                pending.wanted = None;
                (pending.prefer.take(), pending.avoid.take())
            };
            if let Err(error) = self.fetch_and_apply(prefer.as_ref(), avoid.as_ref()).await {
                tracing::debug!(%error, "topology refresh failed");
            }
            let digest = self.digest();
            let mut pending = self.lock_pending();
            pending.last_finished = Some(Instant::now());
            let needed = pending.again
                && (pending.any || pending.wanted.is_some_and(|wanted| wanted != digest));
            if !needed {
                pending.reset();
                guard.finished = true;
                return;
            }
        }
    }

    /// Fetches the topology from the first of a few nodes that answers and swaps it in.
    pub(crate) async fn fetch_and_apply(
        &self,
        prefer: Option<&Arc<NodeSlot>>,
        avoid: Option<&Arc<NodeSlot>>,
    ) -> Result<(), Error> {
        let mut failures = Vec::new();
        let mut invalid = false;
        for slot in self.fetch_candidates(prefer, avoid) {
            match fetch_topology(&slot, &self.config).await {
                Ok(Some((topology, limits))) => {
                    self.limits.note(slot.addr(), limits);
                    self.apply(topology);
                    observe::refreshed(true);
                    return Ok(());
                }
                // A node without the Cluster service: nothing to refresh from it.
                Ok(None) if !self.snapshot().aware() => return Ok(()),
                Ok(None) => failures.push(format!("{}: no Cluster service", slot.addr())),
                Err(FetchError::Invalid(why)) => {
                    invalid = true;
                    failures.push(format!("{}: invalid topology: {why}", slot.addr()));
                }
                Err(FetchError::Failed(why)) => failures.push(format!("{}: {why}", slot.addr())),
                // The next node would refuse the same credentials.
                Err(FetchError::Denied(error)) => return Err(error),
            }
        }
        observe::refreshed(false);
        let failures = failures.join("; ");
        Err(if invalid {
            Error::Protocol(format!("no valid topology ({failures})"))
        } else {
            Error::Unavailable(format!("no node answered with its topology ({failures})"))
        })
    }

    /// The nodes to ask for the topology, in order: `prefer`, the ring members that look
    /// reachable (starting at a rotating offset), the node the client connected through, the
    /// other seeds; never `avoid`; each address once; at most [`MAX_FETCH_CANDIDATES`].
    fn fetch_candidates(
        &self,
        prefer: Option<&Arc<NodeSlot>>,
        avoid: Option<&Arc<NodeSlot>>,
    ) -> Vec<Arc<NodeSlot>> {
        let state = self.snapshot();
        let members = state.slots();
        let offset = self.rotation.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..members.len()).map(|i| &members[(offset + i) % members.len()]);
        let mut candidates: Vec<Arc<NodeSlot>> = Vec::new();
        let ordered = prefer
            .into_iter()
            .chain(rotated.filter(|slot| !slot.is_unreachable()))
            .chain(std::iter::once(self.home()))
            .chain(self.seeds());
        for slot in ordered {
            let skip = avoid.is_some_and(|avoid| avoid.addr() == slot.addr())
                || candidates.iter().any(|c| c.addr() == slot.addr());
            if !skip {
                candidates.push(Arc::clone(slot));
            }
            if candidates.len() == MAX_FETCH_CANDIDATES {
                break;
            }
        }
        candidates
    }

    /// The node the watch streams from: the node the client connected through first, then in
    /// turn the ring members that look reachable and the seeds, not `previous` when another
    /// exists.
    fn watch_target(&self, attempt: usize, previous: Option<&Arc<NodeSlot>>) -> Arc<NodeSlot> {
        if attempt == 0 {
            return Arc::clone(self.home());
        }
        let state = self.snapshot();
        let mut candidates: Vec<&Arc<NodeSlot>> = Vec::new();
        let ordered = state
            .slots()
            .iter()
            .filter(|slot| !slot.is_unreachable())
            .chain(self.seeds());
        for slot in ordered {
            if !candidates.iter().any(|c| c.addr() == slot.addr()) {
                candidates.push(slot);
            }
        }
        if candidates.len() > 1
            && let Some(previous) = previous
        {
            candidates.retain(|c| c.addr() != previous.addr());
        }
        candidates
            .get(attempt % candidates.len().max(1))
            .map_or_else(|| Arc::clone(self.home()), |slot| Arc::clone(slot))
    }
}

/// The watch task: streams topologies into the router until the router is dropped.
pub(crate) async fn watch(router: Weak<Router>, mut stop: oneshot::Receiver<()>) {
    let mut backoff = WATCH_BACKOFF_MIN;
    let mut previous: Option<Arc<NodeSlot>> = None;
    for attempt in 0.. {
        let (slot, config) = {
            let Some(router) = router.upgrade() else {
                return;
            };
            (
                router.watch_target(attempt, previous.as_ref()),
                router.config.clone(),
            )
        };
        let session = watch_session(&router, &slot, &config);
        let (received, why, denied) = tokio::select! {
            _ = &mut stop => return,
            ended = session => ended,
        };
        if received > 0 {
            backoff = WATCH_BACKOFF_MIN;
        }
        if denied {
            // Credentials refused (revoked, say): every node would refuse them, and each
            // refusal counts against the user; try again only rarely.
            backoff = WATCH_BACKOFF_MAX;
        }
        tracing::debug!(node = %slot.addr(), received, reason = %why, retry_in = ?backoff, "topology watch ended");
        observe::watch_restarted();
        previous = Some(slot);
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// One watch stream from one node. Returns how many topologies it delivered, why it ended, and
/// whether the node refused the credentials or the user's role.
async fn watch_session(
    router: &Weak<Router>,
    slot: &NodeSlot,
    config: &ConnectConfig,
) -> (usize, String, bool) {
    let pool = match slot.pool(config) {
        Ok(pool) => pool,
        Err(error) => return (0, error.to_string(), false),
    };
    let ended = |received: usize, status: tonic::Status| {
        let error = Error::from_status(&status);
        (received, error.to_string(), error.is_denial())
    };
    let timeout = config.request_timeout;
    let opened = tokio::time::timeout(
        timeout,
        pool.cluster().watch_topology(WatchTopologyRequest {}),
    )
    .await;
    let mut stream = match opened {
        Err(_) => return (0, format!("no answer within {timeout:?}"), false),
        Ok(Err(status)) => return ended(0, status),
        Ok(Ok(response)) => response.into_inner(),
    };
    let mut received = 0;
    loop {
        match stream.message().await {
            Ok(Some(wire)) => {
                let topology = match Topology::try_from(&wire) {
                    Ok(topology) => topology,
                    Err(error) => {
                        return (received, format!("invalid topology: {error}"), false);
                    }
                };
                let Some(router) = router.upgrade() else {
                    return (received, "the client is gone".to_owned(), false);
                };
                router.limits.note(slot.addr(), wire.sender_limits);
                router.apply(topology);
                received += 1;
            }
            Ok(None) => return (received, "the node ended the stream".to_owned(), false),
            Err(status) => return ended(received, status),
        }
    }
}
