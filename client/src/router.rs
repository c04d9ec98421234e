//! The router: the topology snapshot requests are routed by, which node each request goes to,
//! and failover to the key's next replica. Keeping the snapshot fresh is in `refresh.rs`; sending
//! to one node is [`NodePool`]'s.
//!
//! **Snapshot.** [`State`] (topology, ring, one [`NodeSlot`] per ring member) sits in a
//! `RwLock<Arc<State>>`. A request takes the read lock only to clone the `Arc` and routes every
//! attempt from that one snapshot; a refresh builds a new `State` and swaps it in under the write
//! lock. Neither lock is ever held across an await.
//!
//! **Routing.** A key goes to the first node of its replica set (its primary), except that nodes
//! whose circuit breaker is open (`breaker.rs`: consecutive transport failures) are tried after
//! the others. A ring with no members (a node
//! without the `Cluster` service, or every member still joining) sends everything to the node the
//! client connected to, which forwards what it does not own.
//!
//! **Failover.** When an attempt fails in a way that [`Access::fails_over`] allows, the request
//! is sent to the key's next replica, each replica at most once. A batch is split by node, the
//! parts are sent concurrently, and the keys of a failed part are split again by their next
//! replica.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use ringcache_proto::{
    placement::{ReplicaSet, Ring},
    topology::{NodeState, Topology},
    v1::{NodeLimits, cache_client::CacheClient},
};
use tokio::{sync::oneshot, time::Instant};
use tonic::Status;
use tracing::{Instrument, Span};

use crate::pipeline::PipelineOp;
use crate::{
    CircuitBreaker, Error, RetryPolicy,
    breaker::{self, BreakerState, Noted},
    conn::{self, ConnectConfig, Failure, FailureClass, NodePool, Reply},
    observe,
    refresh::{self, FetchError, Refresher},
    retry::{self, Budget, Retry},
    security::NodeChannel,
};

/// Replica positions beyond this are never reordered (a bit mask of positions is used).
const MAX_REORDERED_REPLICAS: usize = 64;

/// Keys per multi-key request while no node has stated its limit (older nodes): the nodes'
/// default `max_batch_keys`.
pub(crate) const DEFAULT_NODE_BATCH_KEYS: usize = 1000;

/// Room kept in every request under the message limit for what is not an item's key or value:
/// field tags and lengths, the consistency, the pipeline entry's tag.
const MESSAGE_HEADROOM: usize = 4096;

/// The request limits the nodes stated with their topologies (`Topology.sender_limits`): the
/// latest statement of each node, and the smallest of them, which batches are split to fit.
#[derive(Debug, Default)]
pub(crate) struct StatedLimits {
    by_node: Mutex<BTreeMap<String, NodeLimits>>,
    /// The smallest stated `max_batch_keys`; 0 while no node stated one.
    batch_keys: AtomicUsize,
    /// The smallest stated `max_message_bytes`; 0 while no node stated one.
    message_bytes: AtomicUsize,
}

impl StatedLimits {
    /// Notes what the node at `addr` stated (`None`: an older node, which states nothing).
    pub(crate) fn note(&self, addr: &str, limits: Option<NodeLimits>) {
        let Some(limits) = limits else {
            return;
        };
        let mut by_node = self.by_node.lock().unwrap_or_else(PoisonError::into_inner);
        if by_node.get(addr) == Some(&limits) {
            return;
        }
        by_node.insert(addr.to_owned(), limits);
        let smallest = |of: fn(&NodeLimits) -> u64| {
            by_node
                .values()
                .map(of)
                .filter(|&n| n > 0)
                .min()
                .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        let keys = smallest(|l| u64::from(l.max_batch_keys));
        let bytes = smallest(|l| l.max_message_bytes);
        self.batch_keys.store(keys, Ordering::Relaxed);
        self.message_bytes.store(bytes, Ordering::Relaxed);
        tracing::debug!(node = %addr, max_batch_keys = keys, max_message_bytes = bytes, "node limits");
    }
}

/// How big one part of a batch may be: at most `keys` items, and items whose sizes add up to at
/// most `bytes` (an item bigger than that still travels, alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartLimits {
    pub(crate) keys: usize,
    pub(crate) bytes: usize,
}

/// Splits `indexes` (in order) into consecutive parts within `limits`; `size` gives each item's
/// encoded size. Every part holds at least one item.
pub(crate) fn split_parts(
    indexes: Vec<usize>,
    limits: PartLimits,
    size: impl Fn(usize) -> usize,
) -> Vec<Vec<usize>> {
    let max_keys = limits.keys.max(1);
    if indexes.len() <= max_keys && limits.bytes == usize::MAX {
        return vec![indexes];
    }
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0usize;
    for index in indexes {
        let item = size(index);
        if !part.is_empty() && (part.len() == max_keys || bytes.saturating_add(item) > limits.bytes)
        {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes = bytes.saturating_add(item);
        part.push(index);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

/// What a request does to the data, which decides when it may be retried on another replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads change nothing: retried on another replica after any sign of an unreachable,
    /// unavailable or slow node.
    Read,
    /// Writes are retried on another replica only when the request certainly never reached the
    /// node: a write that timed out, broke in flight or was refused by the node may have been
    /// applied, and `incr` or a conditional set must not run twice.
    Write,
}

impl Access {
    /// Whether a failure of this class is retried on the next replica.
    pub(crate) fn fails_over(self, class: FailureClass) -> bool {
        match class {
            FailureClass::NotSent => true,
            FailureClass::Broken | FailureClass::NodeUnavailable | FailureClass::TimedOut => {
                self == Access::Read
            }
            FailureClass::Answered => false,
        }
    }
}

/// One node address with its lazily opened pool of connections. Slots are shared between
/// snapshots (and with the seed list) by address, so a refresh keeps the connections of every
/// member whose address did not change.
pub(crate) struct NodeSlot {
    addr: String,
    pool: OnceLock<Arc<NodePool>>,
    /// Serialises opening the pool, so concurrent first requests make one pool, not several.
    opening: Mutex<()>,
    /// The node's circuit breaker (times in ms since `created`).
    breaker: BreakerState,
    /// The origin of the breaker's times: tokio's clock, so paused and simulated time apply.
    created: tokio::time::Instant,
}

impl fmt::Debug for NodeSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSlot")
            .field("addr", &self.addr)
            .field("open", &self.pool.get().is_some())
            .field("unreachable", &self.is_unreachable())
            .finish()
    }
}

impl NodeSlot {
    pub(crate) fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            pool: OnceLock::new(),
            opening: Mutex::new(()),
            breaker: BreakerState::default(),
            created: tokio::time::Instant::now(),
        }
    }

    /// The node's `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The pool, opened through the channel factory on first use.
    pub(crate) fn pool(&self, config: &ConnectConfig) -> Result<Arc<NodePool>, Error> {
        if let Some(pool) = self.pool.get() {
            return Ok(Arc::clone(pool));
        }
        let _opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = self.pool.get() {
            return Ok(Arc::clone(pool));
        }
        let pool = Arc::new(NodePool::lazy(&self.addr, config)?);
        tracing::debug!(node = %self.addr, "opened connection pool");
        Ok(Arc::clone(self.pool.get_or_init(|| pool)))
    }

    /// Installs a pool opened elsewhere (the seed connect probe) if none is open yet.
    pub(crate) fn install(&self, pool: NodePool) {
        let _ = self.pool.set(Arc::new(pool));
    }

    /// Whether the node's circuit breaker is open (it is tried after the other replicas).
    pub(crate) fn is_unreachable(&self) -> bool {
        self.breaker.is_open(self.now_ms())
    }

    /// Whether a request should try this node after the others: its breaker is open, or
    /// half-open with the probe taken by another request (this call may take it).
    fn holds_back(&self, settings: &CircuitBreaker) -> bool {
        self.breaker.holds_back(self.now_ms(), settings)
    }

    /// A transport failure: may open the breaker.
    fn mark_failed(&self, settings: &CircuitBreaker) {
        if let Noted::Opened(open_for) = self.breaker.failed(self.now_ms(), settings) {
            observe::marked_unreachable();
            tracing::debug!(node = %self.addr, ?open_for, "circuit breaker opened");
        }
    }

    /// The node answered: closes the breaker.
    fn mark_reachable(&self) {
        self.breaker.succeeded();
    }
}

impl NodeSlot {
    /// Milliseconds since the slot was created.
    fn now_ms(&self) -> u64 {
        millis(self.created.elapsed())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One topology with what routing derives from it.
pub(crate) struct State {
    topology: Topology,
    ring: Ring,
    /// The slot of each ring member, parallel to `ring.nodes()`.
    slots: Box<[Arc<NodeSlot>]>,
    /// Whether each ring member is `Restarting` (stopped for a quick restart, or catching up
    /// after one), parallel to `ring.nodes()`: tried after the others.
    restarting: Box<[bool]>,
    /// Whether each ring member is `Active`, parallel to `ring.nodes()`: the reads of a hot key
    /// are spread over these only.
    active: Box<[bool]>,
    /// Whether the cluster serves its topology; `false` for a node without the `Cluster` service,
    /// where the topology is empty and every request goes to that node.
    aware: bool,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("digest", &self.topology.digest())
            .field("ring_members", &self.ring.nodes().len())
            .field("aware", &self.aware)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The snapshot of `topology`, reusing the slots of `previous` and of the seeds by address.
    pub(crate) fn build(
        topology: Topology,
        aware: bool,
        previous: Option<&State>,
        seeds: &[Arc<NodeSlot>],
    ) -> Self {
        let ring = Ring::new(&topology);
        let mut reusable: BTreeMap<&str, &Arc<NodeSlot>> = BTreeMap::new();
        for slot in previous
            .into_iter()
            .flat_map(|p| p.slots.iter())
            .chain(seeds)
        {
            reusable.entry(slot.addr()).or_insert(slot);
        }
        let slots = ring
            .nodes()
            .iter()
            .map(|node_id| {
                let addr = topology
                    .member(node_id)
                    .map_or("", |member| member.grpc_addr.as_str());
                reusable
                    .get(addr)
                    .map_or_else(|| Arc::new(NodeSlot::new(addr)), |slot| Arc::clone(slot))
            })
            .collect();
        let restarting = ring
            .nodes()
            .iter()
            .map(|node_id| {
                topology
                    .member(node_id)
                    .is_some_and(|member| member.state == NodeState::Restarting)
            })
            .collect();
        let active = ring
            .nodes()
            .iter()
            .map(|node_id| {
                topology
                    .member(node_id)
                    .is_some_and(|member| member.state == NodeState::Active)
            })
            .collect();
        Self {
            topology,
            ring,
            slots,
            restarting,
            active,
            aware,
        }
    }

    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    pub(crate) fn aware(&self) -> bool {
        self.aware
    }

    /// The ring member slots, in node id order.
    pub(crate) fn slots(&self) -> &[Arc<NodeSlot>] {
        &self.slots
    }

    /// The index of a ring member in `ring.nodes()` and `slots`.
    fn position(&self, node_id: &str) -> Option<usize> {
        self.ring
            .nodes()
            .binary_search_by(|node| (**node).cmp(node_id))
            .ok()
    }

    /// The replicas of `key` in the order they are tried: the replica set's order, except that
    /// nodes whose breaker holds them back, and nodes restarting, come after the others. Each
    /// appears once.
    ///
    /// `spread` (a hot key's read: the turn of the round-robin) also puts members that are not
    /// `Active` after the others, and starts the others at the turn's replica instead of the
    /// primary.
    fn attempt_order<'s>(
        &'s self,
        replicas: ReplicaSet<'s>,
        breaker: &CircuitBreaker,
        spread: Option<usize>,
    ) -> impl Iterator<Item = (&'s str, &'s Arc<NodeSlot>)> + 's {
        // One pass decides which replicas go last, so a node marked unreachable during the
        // attempts is not tried twice.
        let mut late: u64 = 0;
        for (i, node_id) in replicas.iter().enumerate().take(MAX_REORDERED_REPLICAS) {
            if self.position(node_id).is_some_and(|p| {
                self.restarting[p]
                    || self.slots[p].holds_back(breaker)
                    || (spread.is_some() && !self.active[p])
            }) {
                late |= 1 << i;
            }
        }
        let is_late = move |i: usize| i < MAX_REORDERED_REPLICAS && late & (1 << i) != 0;
        let n_replicas = replicas.len();
        let n_first = (0..n_replicas).filter(|&i| !is_late(i)).count();
        let skip = match spread {
            Some(turn) if n_first > 0 => turn % n_first,
            _ => 0,
        };
        let first = (0..n_replicas).filter(move |&i| !is_late(i));
        let first = first.clone().skip(skip).chain(first.take(skip));
        let then = (0..n_replicas).filter(move |&i| is_late(i));
        first.chain(then).filter_map(move |i| {
            let node_id = replicas.iter().nth(i)?;
            self.position(node_id)
                .map(|position| (node_id, &self.slots[position]))
        })
    }
}

/// Picks the node(s) for each request and fails over between replicas.
pub(crate) struct Router {
    pub(crate) config: ConnectConfig,
    /// One slot per seed, in the order given.
    seeds: Box<[Arc<NodeSlot>]>,
    /// The seed that answered at connect: requests go there when the ring is empty.
    home: Arc<NodeSlot>,
    state: RwLock<Arc<State>>,
    /// The digest of `state`'s topology, readable without the lock.
    digest: AtomicU64,
    /// Serialises building and swapping in snapshots (not reading them).
    applying: Mutex<()>,
    pub(crate) refresher: Refresher,
    /// The request limits the nodes stated.
    pub(crate) limits: StatedLimits,
    /// The retry budget shared by the client and its clones.
    pub(crate) budget: Budget,
    /// Rotates the nodes a refresh or the watch start from.
    pub(crate) rotation: AtomicUsize,
    /// The keys the nodes answered as hot, whose ONE reads are spread over their replicas.
    pub(crate) hot: crate::hot::HotKeys,
    /// Reads served by the local node.
    pub(crate) local_reads: AtomicU64,
    /// Dropped with the router, which ends the watch task.
    _watch_stop: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("home", &self.home.addr())
            .field("state", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `fetched`, the topology `home` served with its limits (`None`: the node
    /// has no `Cluster` service); starts the watch task when there is a topology to watch.
    pub(crate) fn start(
        config: ConnectConfig,
        seeds: Box<[Arc<NodeSlot>]>,
        home: Arc<NodeSlot>,
        fetched: Option<refresh::Fetched>,
    ) -> Arc<Router> {
        let aware = fetched.is_some();
        let limits = StatedLimits::default();
        let topology = match fetched {
            Some((topology, stated)) => {
                limits.note(home.addr(), stated);
                topology
            }
            None => Topology::new(Vec::new(), 1, 1),
        };
        let state = State::build(topology, aware, None, &seeds);
        let budget = Budget::new(&config.retry_budget);
        let hot = crate::hot::HotKeys::new(config.hot);
        let digest = state.topology.digest();
        let (stop, stopped) = oneshot::channel();
        let router = Arc::new(Router {
            config,
            seeds,
            home,
            state: RwLock::new(Arc::new(state)),
            digest: AtomicU64::new(digest),
            applying: Mutex::new(()),
            refresher: Refresher::default(),
            budget,
            limits,
            rotation: AtomicUsize::new(0),
            hot,
            local_reads: AtomicU64::new(0),
            _watch_stop: aware.then_some(stop),
        });
        if aware {
            tokio::spawn(refresh::watch(Arc::downgrade(&router), stopped));
        }
        router
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The digest of the current topology.
    pub(crate) fn digest(&self) -> u64 {
        self.digest.load(Ordering::Acquire)
    }

    /// The address of the node the client connected through.
    pub(crate) fn home_addr(&self) -> &str {
        self.home.addr()
    }

    pub(crate) fn home(&self) -> &Arc<NodeSlot> {
        &self.home
    }

    pub(crate) fn seeds(&self) -> &[Arc<NodeSlot>] {
        &self.seeds
    }

    /// Swaps in the snapshot of `topology` unless it is the one in force.
    pub(crate) fn apply(&self, topology: Topology) {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot();
        if previous.aware && previous.topology.digest() == topology.digest() {
            return;
        }
        let digest = topology.digest();
        let members = topology.members().len();
        let state = State::build(topology, true, Some(&previous), &self.seeds);
        let ring_members = state.ring.nodes().len();
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        self.digest.store(digest, Ordering::Release);
        observe::topology_changed();
        tracing::debug!(
            digest,
            previous = previous.topology.digest(),
            members,
            ring_members,
            "new topology"
        );
    }

    /// Sends `message` for `key` to the key's primary, failing over to its other replicas as
    /// `access` allows, and retrying the whole as `call` allows.
    pub(crate) async fn execute<Req, Resp, F, Fut>(
        self: &Arc<Self>,
        call: Call,
        key: &[u8],
        access: Access,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: PipelineOp<Response = Resp> + Clone,
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.with_retries(&call, |attempt| {
            self.attempt_replicas(&call, key, access, &message, &rpc, attempt)
        })
        .await
    }

    /// Runs `attempt` (numbered from 1) until it succeeds, fails in a way that is not retried,
    /// or `call`'s retries run out (waiting each backoff); records the attempts on the span.
    /// One call, one deposit in the retry budget.
    async fn with_retries<T, Fut>(
        self: &Arc<Self>,
        call: &Call,
        mut attempt: impl FnMut(u32) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.budget.deposit();
        let mut number = 1;
        loop {
            let outcome = attempt(number).await;
            Span::current().record("attempts", number);
            let failure = match outcome {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            if !self.may_retry(call, failure.class, number).await {
                return Err(failure.error);
            }
            number += 1;
        }
    }

    /// A ONE-level Get for the near cache: sent to the node the key's first attempt goes to,
    /// with the tracking id of the near cache's live invalidation stream to that node. Returns
    /// the answer and whether the node tracked it (`GetResponse.tracked`: only then may it be
    /// cached). Without a live
    /// stream, or when that node fails, it runs as a plain [`Self::execute`] (untracked).
    pub(crate) async fn get_tracked(
        self: &Arc<Self>,
        call: Call,
        key: &[u8],
        message: ringcache_proto::v1::GetRequest,
        near: &Arc<crate::near::NearCache>,
    ) -> Result<(ringcache_proto::v1::GetResponse, bool), Error> {
        let rpc = |mut c: CacheClient<NodeChannel>, r| async move { c.get(r).await };
        let state = self.snapshot();
        let replicas = state.ring.replicas(key);
        let first = if replicas.is_empty() {
            Some((self.home.addr(), &self.home))
        } else {
            state
                .attempt_order(replicas, &self.config.breaker, self.spread_turn(&call, key))
                .next()
        };
        let tracking_id = first.map_or(0, |(_, slot)| {
            near.tracking_id(
                slot.addr(),
                || slot.pool(&self.config).ok(),
                self.config.request_timeout,
            )
        });
        if let Some((node, slot)) = first
            && tracking_id != 0
        {
            let tracked = ringcache_proto::v1::GetRequest {
                tracking_id,
                ..message.clone()
            };
            match self.send(&call, node, slot, tracked, &rpc, 1).await {
                Ok(response) => {
                    // One call, one deposit: the fallback below deposits in `execute`.
                    self.budget.deposit();
                    Span::current().record("node", node);
                    Span::current().record("attempts", 1);
                    // Cached only if the node says it tracks the key for this stream: a node
                    // restarted since the stream opened does not know its id and serves the read
                    // untracked (no invalidation would ever come).
                    let tracked = response.tracked;
                    return Ok((response, tracked));
                }
                Err(failure) if !Access::Read.fails_over(failure.class) => {
                    self.budget.deposit();
                    return Err(failure.error);
                }
                Err(_) => {}
            }
        }
        let response = self.execute(call, key, Access::Read, message, rpc).await?;
        Ok((response, false))
    }

    /// One attempt of a single-key request: the key's replicas in order, as `access` allows.
    async fn attempt_replicas<Req, Resp, F, Fut>(
        self: &Arc<Self>,
        call: &Call,
        key: &[u8],
        access: Access,
        message: &Req,
        rpc: &F,
        attempt: u32,
    ) -> Result<Resp, Failure>
    where
        Req: PipelineOp<Response = Resp> + Clone,
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let state = self.snapshot();
        let replicas = state.ring.replicas(key);
        if replicas.is_empty() {
            let home = self.home.addr();
            Span::current().record("node", home);
            return self
                .send(call, home, &self.home, message.clone(), rpc, attempt)
                .await;
        }
        let mut tried = Tried::default();
        let spread = self.spread_turn(call, key);
        for (node_id, slot) in state.attempt_order(replicas, &self.config.breaker, spread) {
            if tried.last.is_some() {
                tracing::debug!(node = node_id, "trying the next replica");
                observe::failover(call.op);
            }
            match self
                .send(call, node_id, slot, message.clone(), rpc, attempt)
                .await
            {
                Ok(response) => {
                    Span::current().record("node", node_id);
                    return Ok(response);
                }
                Err(failure) if !access.fails_over(failure.class) => {
                    Span::current().record("node", node_id);
                    return Err(failure);
                }
                Err(failure) => {
                    tracing::debug!(node = node_id, addr = %slot.addr(), error = %failure.error, "replica failed");
                    tried.push(node_id, slot, failure);
                }
            }
        }
        Err(tried.into_failure("no replica of the key answered"))
    }

    /// Runs a single-key call the pipeline stream does not carry (`GetOrLease`) as unary calls:
    /// to the key's replicas in attempt order (the node forwards it to the key's primary), with
    /// the failover and retries of a write. Each attempt may take `extra` longer than usual (the
    /// time the node may hold the request, waiting).
    pub(crate) async fn execute_unary<Req, Resp, F, Fut>(
        self: &Arc<Self>,
        call: Call,
        key: &[u8],
        extra: Duration,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.with_retries(&call, |_| async {
            let state = self.snapshot();
            let replicas = state.ring.replicas(key);
            if replicas.is_empty() {
                return self
                    .send_unary(&call, &self.home, message.clone(), &rpc, extra)
                    .await;
            }
            let mut tried = Tried::default();
            for (node_id, slot) in state.attempt_order(replicas, &self.config.breaker, None) {
                match self
                    .send_unary(&call, slot, message.clone(), &rpc, extra)
                    .await
                {
                    Ok(response) => return Ok(response),
                    Err(failure) if !Access::Write.fails_over(failure.class) => {
                        return Err(failure);
                    }
                    Err(failure) => tried.push(node_id, slot, failure),
                }
            }
            Err(tried.into_failure("no replica of the key answered"))
        })
        .await
    }

    async fn send_unary<Req, Resp, F, Fut>(
        self: &Arc<Self>,
        call: &Call,
        slot: &Arc<NodeSlot>,
        message: Req,
        rpc: &F,
        extra: Duration,
    ) -> Result<Resp, Failure>
    where
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = match call.deadline {
            None => self.config.request_timeout + extra,
            Some(_) => call
                .attempt_timeout(self.config.request_timeout)
                .ok_or(Failure {
                    error: Error::Timeout {
                        after: call.timeout,
                    },
                    class: FailureClass::TimedOut,
                })?,
        };
        let reply = self.pool_of(slot)?.unary(message, timeout, rpc).await;
        let result = self.noted(slot, reply);
        if let Err(failure) = &result {
            observe::attempt_failed(call.op, failure.class);
        }
        result
    }

    /// A read of `key` served by the local node (embedded mode): when there is one, it is a
    /// replica of the key, `Active` in the current topology, and answers it (see
    /// [`crate::LocalNode`]). `None`: send the read the normal way.
    pub(crate) fn local_read(
        &self,
        key: &[u8],
        consistency: Option<crate::Consistency>,
    ) -> Option<ringcache_proto::v1::GetResponse> {
        let local = self.config.local.as_ref()?;
        let state = self.snapshot();
        let node_id = local.node_id();
        if !state.ring.replicas(key).contains(node_id) {
            return None;
        }
        if !state.position(node_id).is_some_and(|p| state.active[p]) {
            return None;
        }
        let response = match local.read_one(key, consistency) {
            crate::LocalRead::Found(entry) => ringcache_proto::v1::GetResponse {
                found: true,
                value: entry.value,
                version: entry.version,
                ttl_ms: entry
                    .ttl
                    .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)),
                hot: false,
                tracked: false,
            },
            crate::LocalRead::Missing => ringcache_proto::v1::GetResponse::default(),
            crate::LocalRead::NotHere => return None,
        };
        self.local_reads.fetch_add(1, Ordering::Relaxed);
        observe::local_read();
        Span::current().record("node", node_id);
        Some(response)
    }

    /// The round-robin turn of a read of `key` when `call` may be spread and `key` is hot.
    fn spread_turn(&self, call: &Call, key: &[u8]) -> Option<usize> {
        (call.spread && self.hot.is_hot(key)).then(|| self.hot.next_turn())
    }

    /// Whether `call`, whose attempt `attempt` failed with `class`, is tried again; waits the
    /// backoff first when it is.
    async fn may_retry(&self, call: &Call, class: FailureClass, attempt: u32) -> bool {
        if !call.retry.may_retry(class) || attempt >= call.policy.max_attempts {
            return false;
        }
        let delay = retry::backoff(&call.policy, attempt);
        if let Some(deadline) = call.deadline
            && Instant::now() + delay >= deadline
        {
            observe::retry_denied(call.op, "deadline");
            return false;
        }
        if !self.budget.withdraw() {
            tracing::debug!(op = call.op, "retry budget empty; not retrying");
            observe::retry_denied(call.op, "budget");
            return false;
        }
        observe::retry(call.op);
        tracing::debug!(
            op = call.op,
            attempt,
            ?delay,
            class = observe::class_label(class),
            "retrying"
        );
        tokio::time::sleep(delay).await;
        true
    }

    /// The size of one part of a batch: the client's `max_batch_keys` and the smallest limit
    /// the nodes stated (or [`DEFAULT_NODE_BATCH_KEYS`] while none did); the client's and the
    /// nodes' message limits, less [`MESSAGE_HEADROOM`].
    pub(crate) fn part_limits(&self) -> PartLimits {
        let stated_keys = self.limits.batch_keys.load(Ordering::Relaxed);
        let node_keys = if stated_keys == 0 {
            DEFAULT_NODE_BATCH_KEYS
        } else {
            stated_keys
        };
        let keys = node_keys
            .min(self.config.max_batch_keys.unwrap_or(usize::MAX))
            .max(1);
        let stated_bytes = self.limits.message_bytes.load(Ordering::Relaxed);
        let message = match stated_bytes {
            0 => self.config.max_message_bytes,
            stated => stated.min(self.config.max_message_bytes),
        };
        PartLimits {
            keys,
            bytes: message.saturating_sub(MESSAGE_HEADROOM).max(1),
        }
    }

    /// Sends a batch over `keys`: the keys are split by primary, and each node's keys into
    /// parts within [`part_limits`](Self::part_limits) (`size` gives each item's encoded
    /// size); `build` makes the request of each part from the indexes of its keys (ascending),
    /// and the parts are sent concurrently, each failing over as `access` allows. Keys whose
    /// part failed in a way `call` may retry are sent again after a backoff (only those).
    /// Returns every part's indexes with its response.
    pub(crate) async fn execute_batch<Req, Resp, S, B, F, Fut>(
        self: &Arc<Self>,
        call: Call,
        keys: &[Bytes],
        access: Access,
        size: S,
        build: B,
        rpc: F,
    ) -> Result<Vec<(Vec<usize>, Resp)>, Error>
    where
        S: Fn(usize) -> usize,
        B: Fn(&[usize]) -> Req,
        Req: PipelineOp<Response = Resp> + Clone,
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.budget.deposit();
        let batch = Batch {
            keys,
            access,
            size: &size,
            build: &build,
            rpc: &rpc,
        };
        let mut done = Vec::new();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut attempt = 1;
        loop {
            let outcome = self
                .batch_round(&call, &batch, pending, &mut done, attempt)
                .await;
            Span::current().record("attempts", attempt);
            let (failure, left) = match outcome {
                Ok(()) => return Ok(done),
                Err(failed) => failed,
            };
            if !self.may_retry(&call, failure.class, attempt).await {
                return Err(failure.error);
            }
            pending = left;
            attempt += 1;
        }
    }

    /// One attempt of a batch over the `pending` keys, from the current snapshot: answered
    /// parts go to `done`; on failure, the failure that decides whether to retry and the keys
    /// left.
    async fn batch_round<Req, Resp, S, B, F, Fut>(
        self: &Arc<Self>,
        call: &Call,
        batch: &Batch<'_, S, B, F>,
        mut pending: Vec<usize>,
        done: &mut Vec<(Vec<usize>, Resp)>,
        attempt: u32,
    ) -> Result<(), (Failure, Vec<usize>)>
    where
        S: Fn(usize) -> usize,
        B: Fn(&[usize]) -> Req,
        Req: PipelineOp<Response = Resp> + Clone,
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let state = self.snapshot();
        let limits = self.part_limits();
        let total = batch.keys.len();
        let home = state.ring.is_empty();
        let n_nodes = state.slots.len();
        let mut failed = vec![false; n_nodes];
        let mut tried = Tried::default();
        // Keys to send again after a backoff, and why; an answer that must not be retried.
        let mut left = Vec::new();
        let mut retryable: Option<Failure> = None;
        let mut fatal: Option<Failure> = None;
        // Parts of a read whose answer was too large for one message, halved: sent as they are.
        let mut halves: Vec<(usize, Vec<usize>)> = Vec::new();
        // Whether `pending` holds keys of parts that failed over.
        let mut failing_over = false;
        while !pending.is_empty() || !halves.is_empty() {
            // Each key's node: the home node while the ring is empty, else its first replica
            // not failed in this round (`None` for a key with none left).
            let mut parts: Vec<Vec<usize>> = vec![Vec::new(); n_nodes.max(1)];
            let mut stranded = Vec::new();
            for &index in &pending {
                let target = if home {
                    Some(0)
                } else {
                    let key = &batch.keys[index];
                    let spread = if failing_over {
                        None
                    } else {
                        self.spread_turn(call, key)
                    };
                    state
                        .attempt_order(state.ring.replicas(key), &self.config.breaker, spread)
                        .filter_map(|(node_id, _)| state.position(node_id))
                        .find(|&position| !failed[position])
                };
                match target {
                    Some(position) => parts[position].push(index),
                    None => stranded.push(index),
                }
            }
            if std::mem::take(&mut failing_over) && parts.iter().any(|p| !p.is_empty()) {
                // Keys of failed parts, on to their next replicas.
                observe::failover(call.op);
            }
            if !stranded.is_empty() {
                let failure = std::mem::take(&mut tried).into_failure(&format!(
                    "no replica answered for {} of {total} keys",
                    stranded.len()
                ));
                left.extend(stranded);
                retryable = Some(failure);
            }
            let sends: Vec<_> = parts
                .into_iter()
                .enumerate()
                .filter(|(_, indexes)| !indexes.is_empty())
                .flat_map(|(position, indexes)| {
                    split_parts(indexes, limits, batch.size)
                        .into_iter()
                        .map(move |part| (position, part))
                })
                .chain(std::mem::take(&mut halves))
                .map(|(position, indexes)| {
                    let (node, slot) = if home {
                        (self.home.addr(), &self.home)
                    } else {
                        (&*state.ring.nodes()[position], &state.slots[position])
                    };
                    let message = (batch.build)(&indexes);
                    async move {
                        let outcome = self
                            .send(call, node, slot, message, batch.rpc, attempt)
                            .await;
                        (position, indexes, outcome)
                    }
                })
                .collect();
            observe::batch_parts(call.op, sends.len());
            pending = Vec::new();
            for (position, indexes, outcome) in join_all(sends).await {
                match outcome {
                    Ok(response) => done.push((indexes, response)),
                    // The answer (the values of a read) did not fit in one message: the same
                    // node gets each half of the keys; a single key too large stays an error.
                    Err(failure)
                        if batch.access == Access::Read
                            && indexes.len() > 1
                            && failure.error.is_message_too_large() =>
                    {
                        tracing::debug!(
                            keys = indexes.len(),
                            "answer too large for one message; halving the part"
                        );
                        let mut first_half = indexes;
                        let second_half = first_half.split_off(first_half.len() / 2);
                        halves.push((position, first_half));
                        halves.push((position, second_half));
                    }
                    Err(failure) if !home && batch.access.fails_over(failure.class) => {
                        let node_id = &state.ring.nodes()[position];
                        tracing::debug!(node = %node_id, error = %failure.error, keys = indexes.len(), "replica failed; trying the next for its keys");
                        failed[position] = true;
                        tried.push(node_id, &state.slots[position], failure);
                        pending.extend(indexes);
                        failing_over = true;
                    }
                    Err(failure) if call.retry.may_retry(failure.class) => {
                        left.extend(indexes);
                        retryable = Some(failure);
                    }
                    Err(failure) => fatal = Some(failure),
                }
            }
            pending.sort_unstable();
        }
        if let Some(failure) = fatal {
            return Err((failure, Vec::new()));
        }
        match retryable {
            None => Ok(()),
            Some(failure) => {
                left.sort_unstable();
                Err((failure, left))
            }
        }
    }

    /// Sends one request to one node (`node`: its id, or its address without a topology) as
    /// attempt `attempt` of `call`; notes the digest it reports and what a failure says about
    /// the node.
    async fn send<Req, Resp, F, Fut>(
        self: &Arc<Self>,
        call: &Call,
        node: &str,
        slot: &Arc<NodeSlot>,
        message: Req,
        rpc: &F,
        attempt: u32,
    ) -> Result<Resp, Failure>
    where
        Req: PipelineOp<Response = Resp> + Clone,
        F: Fn(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let span = observe::attempt_span(node, slot.addr(), attempt);
        let result = async {
            let Some(timeout) = call.attempt_timeout(self.config.request_timeout) else {
                return Err(Failure {
                    error: Error::Timeout {
                        after: call.timeout,
                    },
                    class: FailureClass::TimedOut,
                });
            };
            let pool = self.pool_of(slot)?;
            let max_batch_bytes = self.part_limits().bytes;
            let reply = pool.call(message, timeout, max_batch_bytes, rpc).await;
            self.noted(slot, reply)
        }
        .instrument(span)
        .await;
        if let Err(failure) = &result {
            observe::attempt_failed(call.op, failure.class);
        }
        result
    }

    /// The node's connection pool; a node no channel can be made to fails as not sent.
    fn pool_of(self: &Arc<Self>, slot: &Arc<NodeSlot>) -> Result<Arc<NodePool>, Failure> {
        slot.pool(&self.config).map_err(|error| {
            let failure = Failure::not_sent(Error::Unavailable(format!(
                "cannot open a channel to {}: {error}",
                slot.addr()
            )));
            self.after_failure(slot, failure.class);
            failure
        })
    }

    /// Notes what a reply says about its node (the topology digest it reports, reached or
    /// failed) and returns its result.
    fn noted<T>(self: &Arc<Self>, slot: &Arc<NodeSlot>, reply: Reply<T>) -> Result<T, Failure> {
        if let Some(digest) = reply.digest {
            self.observe_digest(digest, slot);
        }
        match &reply.result {
            Ok(_) => slot.mark_reachable(),
            Err(failure) => self.after_failure(slot, failure.class),
        }
        reply.result
    }

    fn after_failure(self: &Arc<Self>, slot: &Arc<NodeSlot>, class: FailureClass) {
        if breaker::is_transport_failure(class) {
            slot.mark_failed(&self.config.breaker);
        } else {
            // It answered, even if with an error.
            slot.mark_reachable();
        }
        if class.suggests_refresh() {
            self.refresh_after_failure(slot);
        }
    }
}

/// What a batch sends: its keys, how it may fail over, and how its parts are sized, built and
/// sent.
struct Batch<'a, S, B, F> {
    keys: &'a [Bytes],
    access: Access,
    size: &'a S,
    build: &'a B,
    rpc: &'a F,
}

/// One call as the router runs it: what it is (for retries, metrics and spans) and its bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    /// The operation's name (metric label and span field).
    pub(crate) op: &'static str,
    /// What may be retried.
    pub(crate) retry: Retry,
    /// How often and after how long.
    pub(crate) policy: RetryPolicy,
    /// The call's timeout, when it has one ([`CallOptions::timeout`](crate::CallOptions)).
    pub(crate) timeout: Option<Duration>,
    /// The call's deadline (its start + `timeout`).
    pub(crate) deadline: Option<Instant>,
    /// A read at ONE whose hot keys may go to any of their replicas in turn.
    pub(crate) spread: bool,
}

impl Call {
    /// The time an attempt may take: what is left before the deadline, else the request
    /// timeout; `None` when the deadline has passed.
    fn attempt_timeout(&self, request_timeout: Duration) -> Option<Duration> {
        match self.deadline {
            None => Some(request_timeout),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(left)
            }
        }
    }
}

/// The nodes a request failed on, for the error that names them.
#[derive(Default)]
struct Tried {
    /// Each node once (several parts of a batch may fail on the same node).
    nodes: Vec<String>,
    reasons: Vec<String>,
    last: Option<Failure>,
    /// Whether every failure was a request that never left.
    all_unsent: bool,
}

impl Tried {
    fn push(&mut self, node_id: &str, slot: &NodeSlot, failure: Failure) {
        if !self.nodes.iter().any(|n| n == node_id) {
            self.nodes.push(node_id.to_owned());
            self.reasons
                .push(format!("{node_id} at {}: {}", slot.addr(), failure.error));
        }
        self.all_unsent =
            (self.last.is_none() || self.all_unsent) && failure.class == FailureClass::NotSent;
        self.last = Some(failure);
    }

    /// The failure after every replica failed: one node's own failure when only one was
    /// tried, else `Unavailable` naming each node with its reason, never sent if no request
    /// left, else of the class of the last failure.
    fn into_failure(self, what: &str) -> Failure {
        match self.last {
            Some(failure) if self.reasons.len() == 1 => failure,
            last => Failure {
                error: Error::Unavailable(format!("{what} ({})", self.reasons.join("; "))),
                class: match last {
                    Some(_) if self.all_unsent => FailureClass::NotSent,
                    Some(failure) => failure.class,
                    None => FailureClass::NotSent,
                },
            },
        }
    }
}

/// Awaits every future concurrently on the caller's task; outputs in input order.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Connects to the first seed that answers and fetches its topology.
pub(crate) async fn connect(seeds: &[String], config: ConnectConfig) -> Result<Arc<Router>, Error> {
    let slots: Box<[Arc<NodeSlot>]> = seeds.iter().map(|s| Arc::new(NodeSlot::new(s))).collect();
    let mut failures = Vec::with_capacity(seeds.len());
    let mut from = 0;
    while let Some((offset, pool)) =
        conn::open_first_seed(&seeds[from..], &config, &mut failures).await?
    {
        let index = from + offset;
        let slot = &slots[index];
        slot.install(pool);
        match refresh::fetch_topology(slot, &config).await {
            Ok(fetched) => {
                if fetched.is_none() {
                    tracing::debug!(node = %slot.addr(), "node has no Cluster service; sending every request to it");
                }
                let home = Arc::clone(slot);
                return Ok(Router::start(config, slots, home, fetched));
            }
            Err(FetchError::Invalid(why)) => {
                return Err(Error::Protocol(format!(
                    "seed {} sent an invalid topology: {why}",
                    slot.addr()
                )));
            }
            // Final for every seed: not tried on the others.
            Err(FetchError::Denied(error)) => return Err(error),
            Err(FetchError::Failed(why)) => {
                failures.push(format!("{}: topology: {why}", slot.addr()));
            }
        }
        from = index + 1;
    }
    Err(Error::Unavailable(format!(
        "no seed answered ({})",
        failures.join("; ")
    )))
}

#[cfg(test)]
impl Router {
    /// A router over one lazy channel and no topology, for tests that need no node.
    pub(crate) fn single(
        addr: &str,
        channel: tonic::transport::Channel,
        config: ConnectConfig,
    ) -> Arc<Router> {
        let slot = Arc::new(NodeSlot::new(addr));
        slot.install(NodePool::from_channels(
            addr,
            vec![NodeChannel::new(channel, config.authorization.clone())],
            config.max_message_bytes,
            config.pipelining,
        ));
        Router::start(config, Box::new([Arc::clone(&slot)]), slot, None)
    }
}

#[cfg(test)]
mod tests {
    use ringcache_proto::topology::{Member, NodeState};

    use super::*;

    fn member(id: &str, state: NodeState) -> Member {
        Member::for_test(id)
            .with_state(state)
            .with_grpc_addr(format!("{id}:7379"))
            .with_gossip_addr(format!("{id}:7380"))
            .with_http_addr(format!("{id}:7381"))
    }

    fn topology(ids: &[&str]) -> Topology {
        Topology::new(
            ids.iter().map(|id| member(id, NodeState::Active)).collect(),
            3,
            16,
        )
    }

    #[test]
    fn only_unsent_writes_fail_over() {
        use FailureClass::*;
        for class in [NotSent, Broken, NodeUnavailable, TimedOut, Answered] {
            assert_eq!(
                Access::Read.fails_over(class),
                class != Answered,
                "{class:?}"
            );
            assert_eq!(
                Access::Write.fails_over(class),
                class == NotSent,
                "{class:?}"
            );
        }
    }

    #[test]
    fn slots_are_reused_by_address_across_snapshots() {
        let seed = Arc::new(NodeSlot::new("n1:7379"));
        let first = State::build(
            topology(&["n1", "n2", "n3"]),
            true,
            None,
            &[Arc::clone(&seed)],
        );
        assert!(
            Arc::ptr_eq(&first.slots[0], &seed),
            "the seed's pool serves n1"
        );

        let mut moved = member("n3", NodeState::Active);
        moved.grpc_addr = "elsewhere:1".to_owned();
        let next = Topology::new(
            vec![
                member("n1", NodeState::Active),
                member("n2", NodeState::Active),
                moved,
                member("n4", NodeState::Joining),
            ],
            3,
            16,
        );
        let second = State::build(next, true, Some(&first), &[seed]);
        assert_eq!(second.slots.len(), 3, "a joining member is not in the ring");
        assert!(Arc::ptr_eq(&second.slots[0], &first.slots[0]));
        assert!(Arc::ptr_eq(&second.slots[1], &first.slots[1]));
        assert!(!Arc::ptr_eq(&second.slots[2], &first.slots[2]));
        assert_eq!(second.slots[2].addr(), "elsewhere:1");
        let moved_away = Arc::downgrade(&first.slots[2]);
        drop(first);
        assert!(
            moved_away.upgrade().is_none(),
            "the old address's pool is dropped"
        );
    }

    #[test]
    fn unreachable_replicas_are_tried_last_and_once() {
        let state = State::build(topology(&["n1", "n2", "n3"]), true, None, &[]);
        let key = b"some-key";
        let replicas = state.ring.replicas(key);
        let in_ring_order: Vec<&str> = replicas.iter().collect();
        let breaker = CircuitBreaker::new().failures(2);
        let order: Vec<&str> = state
            .attempt_order(replicas, &breaker, None)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(order, in_ring_order);

        let primary = state.position(in_ring_order[0]).unwrap();
        state.slots[primary].mark_failed(&breaker);
        assert!(!state.slots[primary].is_unreachable(), "one failure of two");
        state.slots[primary].mark_failed(&breaker);
        let order: Vec<&str> = state
            .attempt_order(replicas, &breaker, None)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            order,
            [in_ring_order[1], in_ring_order[2], in_ring_order[0]]
        );
        state.slots[primary].mark_reachable();
        assert!(!state.slots[primary].is_unreachable());
    }

    #[test]
    fn restarting_replicas_are_tried_last_but_stay_in_the_ring() {
        let all = State::build(topology(&["n1", "n2", "n3"]), true, None, &[]);
        let key = b"some-key";
        let in_ring_order: Vec<&str> = all.ring.replicas(key).iter().collect();
        let members = ["n1", "n2", "n3"]
            .iter()
            .map(|id| {
                let state = if *id == in_ring_order[0] {
                    NodeState::Restarting
                } else {
                    NodeState::Active
                };
                member(id, state)
            })
            .collect();
        let state = State::build(Topology::new(members, 3, 16), true, None, &[]);
        let replicas = state.ring.replicas(key);
        assert_eq!(
            replicas.iter().collect::<Vec<_>>(),
            in_ring_order,
            "a restarting member keeps its ranges"
        );
        let order: Vec<&str> = state
            .attempt_order(replicas, &CircuitBreaker::new(), None)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            order,
            [in_ring_order[1], in_ring_order[2], in_ring_order[0]]
        );
    }

    #[test]
    fn spread_reads_take_the_active_reachable_replicas_in_turn() {
        let all = State::build(topology(&["n1", "n2", "n3"]), true, None, &[]);
        let key = b"hot-key";
        let in_ring_order: Vec<&str> = all.ring.replicas(key).iter().collect();
        let breaker = CircuitBreaker::new().failures(1);
        let firsts = |state: &State| -> Vec<&str> {
            (0..6)
                .map(|turn| {
                    state
                        .attempt_order(state.ring.replicas(key), &breaker, Some(turn))
                        .map(|(id, _)| id)
                        .next()
                        .unwrap()
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|id| in_ring_order.iter().copied().find(|n| *n == id).unwrap())
                .collect()
        };
        // Every replica in turn; each order still lists every replica once.
        assert_eq!(
            firsts(&all),
            [0, 1, 2, 0, 1, 2].map(|i| in_ring_order[i]).to_vec()
        );
        let order: Vec<&str> = all
            .attempt_order(all.ring.replicas(key), &breaker, Some(1))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            order,
            [in_ring_order[1], in_ring_order[2], in_ring_order[0]]
        );

        // A replica whose breaker is open gets no turn (it is still tried last).
        let second = all.position(in_ring_order[1]).unwrap();
        all.slots[second].mark_failed(&breaker);
        assert!(!firsts(&all).contains(&in_ring_order[1]));
        let order: Vec<&str> = all
            .attempt_order(all.ring.replicas(key), &breaker, Some(1))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            order,
            [in_ring_order[2], in_ring_order[0], in_ring_order[1]]
        );
        all.slots[second].mark_reachable();

        // Restarting and leaving members get no turn either.
        for (i, away) in [(0, NodeState::Restarting), (2, NodeState::Leaving)] {
            let members = ["n1", "n2", "n3"]
                .iter()
                .map(|id| {
                    let state = if *id == in_ring_order[i] {
                        away
                    } else {
                        NodeState::Active
                    };
                    member(id, state)
                })
                .collect();
            let state = State::build(Topology::new(members, 3, 16), true, None, &[]);
            let turns = firsts(&state);
            assert!(!turns.contains(&in_ring_order[i]), "{away:?}: {turns:?}");
            assert_eq!(
                turns
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                2,
                "{away:?}: the two others share the reads"
            );
        }
        // Without `spread`, the primary first.
        assert_eq!(
            all.attempt_order(all.ring.replicas(key), &breaker, None)
                .next()
                .map(|(id, _)| id),
            Some(in_ring_order[0])
        );
    }

    /// A local node answering every read with `answer`, counting the reads it was asked.
    #[derive(Debug)]
    struct FakeLocal {
        answer: crate::LocalRead,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl crate::LocalNode for FakeLocal {
        fn node_id(&self) -> &str {
            "n2"
        }

        fn read_one(&self, _: &[u8], _: Option<crate::Consistency>) -> crate::LocalRead {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.answer.clone()
        }
    }

    fn router_with_local(answer: crate::LocalRead) -> (Arc<Router>, Arc<FakeLocal>) {
        let local = Arc::new(FakeLocal {
            answer,
            asked: std::sync::atomic::AtomicUsize::new(0),
        });
        let config = ConnectConfig {
            connect_timeout: Duration::from_secs(1),
            pool_size: 1,
            max_message_bytes: 1 << 20,
            max_batch_keys: None,
            retry: crate::RetryPolicy::new(),
            retry_budget: crate::RetryBudget::default(),
            breaker: CircuitBreaker::default(),
            request_timeout: Duration::from_secs(1),
            pipelining: true,
            factory: crate::conn::default_factory(Duration::from_secs(1), None),
            authorization: None,
            tls: false,
            hot: crate::hot::HotSettings::default(),
            local: Some(Arc::clone(&local) as Arc<dyn crate::LocalNode>),
        };
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        (Router::single("127.0.0.1:1", channel, config), local)
    }

    /// A key whose replica set (2 of n1..n3) does or does not contain n2.
    fn key_held_by_n2(router: &Router, held: bool) -> Vec<u8> {
        let state = router.snapshot();
        (0..1000)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|key| state.ring.replicas(key).contains("n2") == held)
            .unwrap()
    }

    #[tokio::test]
    async fn the_local_node_answers_only_the_keys_it_holds_while_active() {
        let entry = crate::Entry {
            value: Bytes::from_static(b"v"),
            version: 9,
            ttl: Some(Duration::from_millis(1500)),
        };
        let (router, local) = router_with_local(crate::LocalRead::Found(entry));
        // No topology yet: nothing is local.
        assert!(router.local_read(b"k", None).is_none());
        let members = ["n1", "n2", "n3"].map(|id| member(id, NodeState::Active));
        router.apply(Topology::new(members.to_vec(), 2, 16));
        let held = key_held_by_n2(&router, true);
        let other = key_held_by_n2(&router, false);
        let answer = router.local_read(&held, None).unwrap();
        assert!(answer.found);
        assert_eq!(
            (&answer.value[..], answer.version, answer.ttl_ms),
            (&b"v"[..], 9, Some(1500))
        );
        assert!(router.local_read(&other, None).is_none(), "not a replica");
        assert_eq!(local.asked.load(Ordering::Relaxed), 1, "not even asked");
        assert_eq!(router.local_reads.load(Ordering::Relaxed), 1);

        // Restarting (or joining, leaving) in the topology: not asked.
        let mut members = members.to_vec();
        members[1].state = NodeState::Restarting;
        router.apply(Topology::new(members, 2, 16));
        assert!(router.local_read(&held, None).is_none());
        assert_eq!(local.asked.load(Ordering::Relaxed), 1);

        // A node that declines: the normal way; a miss is an answer.
        for (answer, expect) in [
            (crate::LocalRead::NotHere, None),
            (crate::LocalRead::Missing, Some(false)),
        ] {
            let (router, _) = router_with_local(answer);
            let members = ["n1", "n2", "n3"].map(|id| member(id, NodeState::Active));
            router.apply(Topology::new(members.to_vec(), 2, 16));
            let held = key_held_by_n2(&router, true);
            assert_eq!(router.local_read(&held, None).map(|r| r.found), expect);
        }
    }

    #[test]
    fn parts_stay_within_the_key_and_byte_limits_in_order() {
        let sizes = [10, 10, 50, 10, 10, 10, 200, 10];
        let size = |i: usize| sizes[i];
        let all: Vec<usize> = (0..sizes.len()).collect();
        let limits = |keys, bytes| PartLimits { keys, bytes };
        assert_eq!(
            split_parts(all.clone(), limits(3, usize::MAX), size),
            [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        assert_eq!(
            split_parts(all.clone(), limits(100, 60), size),
            [vec![0, 1], vec![2, 3], vec![4, 5], vec![6], vec![7]],
            "an item over the byte limit goes alone"
        );
        assert_eq!(
            split_parts(all.clone(), limits(2, 30), size),
            [vec![0, 1], vec![2], vec![3, 4], vec![5], vec![6], vec![7]]
        );
        let whole = split_parts(all.clone(), limits(1000, usize::MAX), size);
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0], all);
        assert_eq!(split_parts(vec![5], limits(0, 1), size), [vec![5]]);
        assert!(split_parts(Vec::new(), limits(1, 1), size).is_empty());
    }

    #[test]
    fn the_smallest_stated_limit_applies() {
        let limits = StatedLimits::default();
        let stated = |keys, bytes| NodeLimits {
            max_batch_keys: keys,
            max_message_bytes: bytes,
        };
        limits.note("a:1", None);
        assert_eq!(
            limits.batch_keys.load(Ordering::Relaxed),
            0,
            "nothing stated"
        );
        limits.note("a:1", Some(stated(500, 1 << 20)));
        limits.note("b:1", Some(stated(200, 0)));
        assert_eq!(limits.batch_keys.load(Ordering::Relaxed), 200);
        assert_eq!(limits.message_bytes.load(Ordering::Relaxed), 1 << 20);
        // A node's new statement replaces its old one.
        limits.note("b:1", Some(stated(800, 1 << 16)));
        assert_eq!(limits.batch_keys.load(Ordering::Relaxed), 500);
        assert_eq!(limits.message_bytes.load(Ordering::Relaxed), 1 << 16);
    }

    #[tokio::test]
    async fn join_all_keeps_input_order() {
        let futures = (0..5u64)
            .map(|i| async move {
                tokio::time::sleep(Duration::from_millis(10 * (5 - i))).await;
                i
            })
            .collect();
        assert_eq!(join_all(futures).await, [0, 1, 2, 3, 4]);
    }
}
