//! Seeds: the `host:port` gossip addresses a node joins through, resolved again and again.
//!
//! A name may not resolve yet when the node starts: in a StatefulSet a pod's DNS name appears
//! only once the pod exists (and a resolver may cache the miss for a while), and a node may be
//! started before its seeds. So seeds are not resolved once: `follow` resolves them again
//! with a backoff, from one probe interval doubling up to [`MAX_DELAY_PROBES`] probe intervals
//! (30 s by default), for as long as the node has not joined or some seed does not resolve, and
//! every [`MAX_DELAY_PROBES`] probe intervals after that, so a seed that moved (a rescheduled
//! pod with a new IP) is announced to at its new address. Each time the addresses change the
//! gossip core gets them ([`MembershipHandle::set_seeds`]): it announces to them at once and
//! keeps retrying them while not connected.
//!
//! What the seeds resolved to decides whether the node may found a cluster ([`SeedState`]):
//! a node none of whose seeds resolves stays Joining (it never starts a cluster of one on a DNS
//! failure) and is not ready, saying so, until one does. The state is kept until the node turns
//! Active and then no longer changes, so a founder that later learns of a peer's name stays
//! ready.
//!
//! Names are resolved through a [`SeedResolver`]: the system's resolver by default, another in
//! tests ([`crate::Node::set_seed_resolver`]). Each lookup is bounded by [`LOOKUP_TIMEOUT`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ringcache_proto::v1;

use crate::cluster::MembershipHandle;
use crate::node::Node;
use crate::readiness::SeedState;

/// The backoff between resolutions stops growing at this many probe intervals (30 s at the
/// default 1 s), which is also the period of the resolutions once every seed resolves and the
/// node has joined (the gossip's announce period).
pub const MAX_DELAY_PROBES: u32 = 30;

/// Longest one lookup may take (a resolver that does not answer).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The future of one lookup.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a `host:port` seed into addresses.
pub trait SeedResolver: fmt::Debug + Send + Sync {
    /// The addresses of `seed` (`host:port`), or why there are none.
    fn resolve(&self, seed: &str) -> LookupFuture;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl SeedResolver for SystemResolver {
    fn resolve(&self, seed: &str) -> LookupFuture {
        let seed = seed.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host(seed).await?.collect()) })
    }
}

/// What one round of lookups found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Addresses of the seeds other than this node, in seed order, without duplicates.
    pub others: Vec<SocketAddr>,
    /// Some seed resolved to this node's own gossip address.
    pub own: bool,
    /// `seed: why` for each seed that did not resolve.
    pub failures: Vec<String>,
}

impl Resolution {
    /// The seed state this resolution shows, for a node with seeds configured.
    pub fn state(&self) -> SeedState {
        if !self.others.is_empty() {
            SeedState::Peers
        } else if self.own {
            SeedState::Founder
        } else {
            SeedState::Unresolved(self.failures.join("; "))
        }
    }
}

/// Resolves every seed once (each lookup bounded by [`LOOKUP_TIMEOUT`]); `own` is this node's
/// advertised gossip address.
pub async fn resolve_all(
    resolver: &dyn SeedResolver,
    seeds: &[String],
    own: SocketAddr,
) -> Resolution {
    let mut found = Resolution::default();
    for seed in seeds {
        let looked_up = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve(seed))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {LOOKUP_TIMEOUT:?}"),
                ))
            });
        match looked_up {
            Ok(addrs) if addrs.is_empty() => found.failures.push(format!("{seed}: no address")),
            Ok(addrs) => {
                for addr in addrs {
                    if addr == own {
                        found.own = true;
                    } else if !found.others.contains(&addr) {
                        found.others.push(addr);
                    }
                }
            }
            Err(error) => found.failures.push(format!("{seed}: {error}")),
        }
    }
    found
}

/// The wait before the next resolution: doubled after `previous`, at most `max`; `max` at once
/// when the node has joined and every seed resolved.
pub fn next_delay(previous: Duration, max: Duration, settled: bool) -> Duration {
    if settled {
        max
    } else {
        previous.saturating_mul(2).min(max)
    }
}

/// Resolves the node's seeds again until shutdown (see the module docs), starting after
/// `first`, the resolution made at start. Hands changed addresses to `handle` and records the
/// seed state on the node while it is Joining.
pub(crate) async fn follow(
    node: Arc<Node>,
    handle: MembershipHandle,
    own: SocketAddr,
    first: Resolution,
) {
    let probe = node.config().probe_interval;
    let max = probe.saturating_mul(MAX_DELAY_PROBES);
    let seeds = node.config().seeds.clone();
    let resolver = node.seed_resolver();
    let mut current = first.others.clone();
    let mut last_failures = first.failures.clone();
    let mut delay = probe;
    let shutdown = node.shutdown_token().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let found = resolve_all(&*resolver, &seeds, own).await;
        let joined = node.has_joined();
        if found.failures != last_failures {
            if found.failures.is_empty() {
                tracing::info!(seeds = ?found.others, "every seed resolves");
            } else if joined {
                tracing::debug!(failures = %found.failures.join("; "), "some seeds do not resolve");
            }
        }
        if !found.failures.is_empty() && !joined {
            tracing::warn!(
                failures = %found.failures.join("; "),
                retry_in = %humantime::format_duration(next_delay(delay, max, false)),
                "cannot resolve seeds; retrying"
            );
        }
        last_failures.clone_from(&found.failures);
        if node.state() == v1::NodeState::Joining {
            node.record_seed_state(found.state());
        }
        // Keep the addresses we have when a round finds none (a resolver hiccup).
        if !found.others.is_empty() && found.others != current {
            tracing::info!(seeds = ?found.others, previous = ?current, "seed addresses changed; announcing to them");
            if handle.set_seeds(found.others.clone()).await.is_err() {
                return; // gossip stopped
            }
            current = found.others;
        }
        delay = next_delay(delay, max, joined && found.failures.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl SeedResolver for Fixed {
        fn resolve(&self, seed: &str) -> LookupFuture {
            let answer = match seed {
                "me:1" => Ok(vec!["10.0.0.1:1".parse().unwrap()]),
                "peer:1" => Ok(vec![
                    "10.0.0.2:1".parse().unwrap(),
                    "10.0.0.1:1".parse().unwrap(),
                ]),
                "empty:1" => Ok(vec![]),
                "slow:1" => {
                    return Box::pin(async {
                        std::future::pending::<()>().await;
                        Ok(vec![])
                    });
                }
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            };
            Box::pin(async move { answer })
        }
    }

    fn seeds(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    const OWN: &str = "10.0.0.1:1";

    #[tokio::test]
    async fn each_seed_is_own_another_node_or_a_failure() {
        let own = OWN.parse().unwrap();
        let found = resolve_all(
            &Fixed,
            &seeds(&["me:1", "peer:1", "gone:1", "empty:1"]),
            own,
        )
        .await;
        assert!(found.own);
        assert_eq!(
            found.others,
            vec!["10.0.0.2:1".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            found.failures,
            vec![
                "gone:1: no such host".to_owned(),
                "empty:1: no address".to_owned()
            ]
        );
        assert_eq!(found.state(), SeedState::Peers);

        // Only itself (the first pod of a StatefulSet, its peers not created yet): a founder.
        let found = resolve_all(&Fixed, &seeds(&["me:1", "gone:1"]), own).await;
        assert_eq!(found.state(), SeedState::Founder);

        // Nothing resolves: not a founder, it waits.
        let found = resolve_all(&Fixed, &seeds(&["gone:1"]), own).await;
        assert_eq!(
            found.state(),
            SeedState::Unresolved("gone:1: no such host".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_never_answers_is_a_failure_after_the_timeout() {
        let own = OWN.parse().unwrap();
        let found = resolve_all(&Fixed, &seeds(&["slow:1", "peer:1"]), own).await;
        assert_eq!(found.failures.len(), 1);
        assert!(
            found.failures[0].starts_with("slow:1: no answer within"),
            "{found:?}"
        );
        assert_eq!(
            found.state(),
            SeedState::Peers,
            "the other seed still counts"
        );
    }

    #[test]
    fn the_delay_doubles_up_to_the_maximum_and_stays_there_once_settled() {
        let probe = Duration::from_secs(1);
        let max = probe * MAX_DELAY_PROBES;
        let mut delay = probe;
        let mut schedule = Vec::new();
        for _ in 0..7 {
            delay = next_delay(delay, max, false);
            schedule.push(delay.as_secs());
        }
        assert_eq!(schedule, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(next_delay(probe, max, true), max);
    }
}
