//! The Redis Cluster protocol on the RESP port: `CLUSTER SLOTS/SHARDS/NODES/MYID/INFO/KEYSLOT/
//! COUNTKEYSINSLOT/GETKEYSINSLOT`, and the routing decision for a cluster-aware connection
//! (`-MOVED`, `-CROSSSLOT`, `READONLY`).
//!
//! Placement is by Redis Cluster hash slot (`ringcache_proto::placement`), so the ring's slot
//! table is exactly what these commands describe: every slot's primary and neighbours, in the
//! node ids and RESP addresses the members gossip. A node's Redis id is the first 40 hex digits
//! of the SHA-256 of its ringcache id, so it is stable across restarts and the same on every
//! node.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use ringcache_proto::placement::{ReplicaSet, SLOTS, key_slot};
use ringcache_proto::topology::{Member, NodeState};
use tokio::time::Instant;

use super::reply::Reply;
use super::table::Spec;
use crate::node::Node;
use crate::view::ClusterView;

/// How long after a change of the ring a node forwards requests for slots it no longer serves
/// instead of answering `-MOVED`: long enough for every node to apply the same ring, so a
/// cluster client is never bounced between two nodes that disagree (in units of the gossip
/// probe interval).
const SETTLE_PROBES: u32 = 5;

/// When this node's ring last changed, for the settle window; and the cluster map answers of
/// the current view, shared by the listener's connections.
#[derive(Debug)]
pub struct RingWatch {
    start: Instant,
    changed_ms: AtomicU64,
    settle: Duration,
    maps: Mutex<Option<Maps>>,
}

/// `CLUSTER SLOTS` and `CLUSTER NODES` of one view, encoded (the same in RESP2 and RESP3). Every
/// cluster client asks for the map after a topology change, all at once; a map of 10,000
/// ranges takes milliseconds to build, so it is built once per view, not once per client.
#[derive(Debug)]
struct Maps {
    view: Arc<ClusterView>,
    slots: Bytes,
    nodes: Bytes,
}

impl RingWatch {
    /// Watches `node`'s views until it shuts down.
    pub fn spawn(node: &Arc<Node>) -> Arc<Self> {
        let watch = Arc::new(Self {
            start: Instant::now(),
            changed_ms: AtomicU64::new(0),
            settle: node.config().probe_interval * SETTLE_PROBES,
            maps: Mutex::new(None),
        });
        let mut views = node.watch_view();
        let shutdown = node.shutdown_token().clone();
        let task = watch.clone();
        crate::logging::spawn(async move {
            let mut last = ring_shape(&views.borrow_and_update());
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = views.changed() => if changed.is_err() { return },
                }
                let shape = ring_shape(&views.borrow_and_update());
                if shape != last {
                    last = shape;
                    let ms = task.start.elapsed().as_millis();
                    task.changed_ms
                        .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
            }
        });
        watch
    }

    /// `CLUSTER SLOTS` (`nodes`: `CLUSTER NODES`) of `view` as answered by `myself`, built once
    /// per view.
    fn map(&self, view: &Arc<ClusterView>, myself: &Member, nodes: bool) -> Reply {
        let mut maps = self.maps.lock();
        let current = match &*maps {
            Some(built) if Arc::ptr_eq(&built.view, view) => built,
            _ => {
                let mut slots_out = BytesMut::new();
                slots(view, myself).encode(false, &mut slots_out);
                let mut nodes_out = BytesMut::new();
                Reply::bulk(nodes_text(view, myself)).encode(false, &mut nodes_out);
                maps.insert(Maps {
                    view: view.clone(),
                    slots: slots_out.freeze(),
                    nodes: nodes_out.freeze(),
                })
            }
        };
        Reply::Encoded(if nodes {
            current.nodes.clone()
        } else {
            current.slots.clone()
        })
    }

    /// Whether the ring has been the same for the whole settle window.
    pub fn settled(&self) -> bool {
        let changed = Duration::from_millis(self.changed_ms.load(Ordering::Relaxed));
        changed.is_zero() || self.start.elapsed() >= changed + self.settle
    }
}

/// What decides slot ownership: the ring's members and replication.
fn ring_shape(view: &ClusterView) -> (Vec<Arc<str>>, usize) {
    (view.ring.nodes().to_vec(), view.ring.replication())
}

/// A node's Redis Cluster id: 40 hex digits derived from its ringcache id.
pub fn redis_id(node_id: &str) -> String {
    let mut hex = crate::auth::to_hex(&crate::auth::sha256(node_id.as_bytes()));
    hex.truncate(40);
    hex
}

/// `host` and `port` of a `host:port` address (IPv6 hosts lose their brackets).
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// A member's RESP endpoint, when it has one.
fn resp_endpoint(member: &Member) -> Option<(&str, u16)> {
    split_addr(&member.resp_addr).filter(|(_, port)| *port != 0)
}

/// Where a connection's command goes.
#[derive(Debug)]
pub enum Route {
    /// Run it here (this node is the primary, the command has no keys, or the connection is
    /// not cluster-aware and gets server-side forwarding).
    Here,
    /// Refuse it with this reply (`-MOVED`, `-CROSSSLOT`).
    Refuse(Reply),
}

/// The routing state of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Routing {
    /// The connection asked for the cluster map (or said `READONLY`/`READWRITE`/`ASKING`, or
    /// chose it with `RINGCACHE ROUTING MOVED`): it is a cluster client and gets `-MOVED`.
    pub cluster_aware: bool,
    /// `READONLY`: reads of slots this node is a replica of are served here.
    pub readonly: bool,
}

impl Routing {
    /// Where `args` (a command described by `spec`) should run when it reaches `node`.
    pub fn route(&self, node: &Node, watch: &RingWatch, spec: &Spec, args: &[Bytes]) -> Route {
        // A plain connection is served whatever its keys (forwarding): no hashing.
        if !self.cluster_aware {
            return Route::Here;
        }
        let mut keys = spec.key_positions(args.len()).filter_map(|i| args.get(i));
        let Some(first) = keys.next() else {
            return Route::Here;
        };
        let slot = key_slot(first);
        // Keys of several slots: a cluster client gets Redis Cluster's refusal; anyone else
        // gets them served (split by owner, as the gRPC API does).
        if keys.any(|key| key_slot(key) != slot) {
            return Route::Refuse(Reply::Error(
                "CROSSSLOT Keys in request don't hash to the same slot".to_owned(),
            ));
        }
        if !watch.settled() {
            return Route::Here;
        }
        let view = node.view();
        let replicas = view.ring.slot_replicas(slot);
        let self_id = node.config().node_id.as_str();
        match replicas.primary() {
            None => Route::Here,
            Some(primary) if primary == self_id => Route::Here,
            Some(_) if self.readonly && !spec.writes() && replicas.contains(self_id) => Route::Here,
            Some(primary) => match view.topology.member(primary).and_then(resp_endpoint) {
                Some((host, port)) => Route::Refuse(moved(slot, host, port)),
                // The primary has no RESP port: forward to it.
                None => Route::Here,
            },
        }
    }
}

/// `-MOVED slot host:port`.
fn moved(slot: u16, host: &str, port: u16) -> Reply {
    if host.contains(':') {
        Reply::Error(format!("MOVED {slot} [{host}]:{port}"))
    } else {
        Reply::Error(format!("MOVED {slot} {host}:{port}"))
    }
}

/// The member a slot's clients should be sent to for `set`: its primary, or this node when the
/// primary has no RESP port (this node then forwards).
fn entry_members<'a>(
    view: &'a ClusterView,
    myself: &'a Member,
    set: ReplicaSet<'a>,
) -> Vec<(&'a Member, bool)> {
    let mut members: Vec<(&Member, bool)> = Vec::with_capacity(set.len());
    for (i, id) in set.iter().enumerate() {
        match view.topology.member(id) {
            Some(member) if resp_endpoint(member).is_some() => members.push((member, i == 0)),
            _ if i == 0 => members.push((myself, true)),
            _ => {}
        }
    }
    members
}

fn node_entry(member: &Member) -> Reply {
    let (host, port) = resp_endpoint(member).unwrap_or(("", 0));
    Reply::Array(vec![
        Reply::Bulk(Bytes::copy_from_slice(host.as_bytes())),
        Reply::Integer(i64::from(port)),
        Reply::Bulk(Bytes::from(redis_id(&member.node_id))),
    ])
}

/// Runs `CLUSTER <subcommand> ...`.
pub fn cluster(node: &Node, watch: &RingWatch, rest: &[Bytes]) -> Reply {
    let Some(sub) = rest.first() else {
        return Reply::err("wrong number of arguments for 'cluster' command");
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let args = &rest[1..];
    let view = node.view();
    let Some(myself) = view.topology.member(&node.config().node_id) else {
        return Reply::err("this node is not in its own topology yet");
    };
    match (sub.as_str(), args) {
        ("slots", []) => watch.map(&view, myself, false),
        ("shards", []) => shards(&view, myself),
        ("nodes", []) => watch.map(&view, myself, true),
        ("myid", []) => Reply::Bulk(Bytes::from(redis_id(&myself.node_id))),
        ("myshardid", []) => Reply::Bulk(Bytes::from(redis_id(&myself.node_id))),
        ("info", []) => Reply::Bulk(Bytes::from(info(node, &view))),
        ("keyslot", [key]) => Reply::Integer(i64::from(key_slot(key))),
        ("countkeysinslot", [slot]) => match parse_slot(slot) {
            Ok(slot) => Reply::Integer(
                i64::try_from(keys_in_slot(node, slot, usize::MAX).len()).unwrap_or(i64::MAX),
            ),
            Err(reply) => reply,
        },
        ("getkeysinslot", [slot, count]) => {
            match (parse_slot(slot), super::commands::integer(count)) {
                (Ok(slot), Some(count)) if count >= 0 => Reply::Array(
                    keys_in_slot(node, slot, usize::try_from(count).unwrap_or(usize::MAX))
                        .into_iter()
                        .map(Reply::Bulk)
                        .collect(),
                ),
                (Err(reply), _) => reply,
                _ => Reply::err("Invalid number of keys"),
            }
        }
        ("help", []) => Reply::Array(HELP.iter().map(|line| Reply::Simple(line)).collect()),
        (
            "addslots" | "addslotsrange" | "delslots" | "delslotsrange" | "flushslots" | "meet"
            | "forget" | "replicate" | "reset" | "setslot" | "failover" | "bumpepoch"
            | "set-config-epoch" | "saveconfig",
            _,
        ) => Reply::err(format!(
            "CLUSTER {} is not supported: ringcache places slots on its consistent-hash ring \
             itself (join, drain and forget nodes with ringcached and ringctl)",
            sub.to_ascii_uppercase()
        )),
        (
            "slots" | "shards" | "nodes" | "myid" | "myshardid" | "info" | "keyslot"
            | "countkeysinslot" | "getkeysinslot" | "help",
            _,
        ) => Reply::err(format!(
            "wrong number of arguments for 'cluster|{sub}' command"
        )),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLUSTER HELP.",
            String::from_utf8_lossy(&rest[0])
        )),
    }
}

const HELP: &[&str] = &[
    "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "COUNTKEYSINSLOT <slot>",
    "    Return the number of keys in <slot> held by this node.",
    "GETKEYSINSLOT <slot> <count>",
    "    Return key names stored by this node in a slot.",
    "INFO",
    "    Return information about the cluster.",
    "KEYSLOT <key>",
    "    Return the hash slot for <key>.",
    "MYID",
    "    Return the node id.",
    "NODES",
    "    Return cluster configuration seen by node. Output format:",
    "    <id> <ip:port@bus-port> <flags> <master> <pings> <pongs> <epoch> <link> <slot> ...",
    "SHARDS",
    "    Return information about slot range mappings and the nodes serving them.",
    "SLOTS",
    "    Return information about slots range mappings. Each range is made of:",
    "    start, end, master and replicas IP addresses, ports and ids",
    "HELP",
    "    Print this help.",
];

fn parse_slot(arg: &[u8]) -> Result<u16, Reply> {
    match super::commands::integer(arg) {
        Some(slot) if (0..i64::from(SLOTS)).contains(&slot) => Ok(slot as u16),
        _ => Err(Reply::err("Invalid or out of range slot")),
    }
}

/// Up to `max` live keys of `slot` this node holds.
fn keys_in_slot(node: &Node, slot: u16, max: usize) -> Vec<Bytes> {
    let store = node.store();
    let now = node.now_ms();
    let mut keys = Vec::new();
    for shard in 0..store.shard_count() {
        let mut cursor = Some(0);
        while let Some(from) = cursor {
            if keys.len() >= max {
                return keys;
            }
            cursor = store.visit(shard, from, 1024, |key, copy| {
                if keys.len() < max
                    && key_slot(key) == slot
                    && copy.value.is_some()
                    && copy.expires_at_ms.is_none_or(|at| at > now)
                {
                    keys.push(Bytes::copy_from_slice(key));
                }
            });
        }
    }
    keys
}

/// `CLUSTER SLOTS`: `[start, end, [host, port, id]]` per run of slots with one primary.
///
/// Only primaries are listed. In Redis Cluster a node is either a master or a replica, and
/// cluster clients (redis-py, the redis crate, Jedis) give each node the one role they last saw
/// it in; here every node is the primary of some slots and holds copies of others, so listing
/// the copies as replicas makes clients take most nodes for replicas and send "every master"
/// commands (SCAN, DBSIZE, FLUSHALL) to a few nodes only. The full replica sets are in
/// `CLUSTER SHARDS`.
fn slots(view: &ClusterView, myself: &Member) -> Reply {
    let mut runs: Vec<(u16, u16, &Member)> = Vec::new();
    for (first, last, set) in view.ring.slot_ranges() {
        let Some((primary, _)) = entry_members(view, myself, set).into_iter().next() else {
            continue;
        };
        match runs.last_mut() {
            Some(run) if run.2.node_id == primary.node_id && run.1 + 1 == first => run.1 = last,
            _ => runs.push((first, last, primary)),
        }
    }
    // Each member's entry once (a SHA-256 per member, not per range).
    let entries: std::collections::HashMap<&str, Reply> = view
        .topology
        .members()
        .iter()
        .map(|member| (member.node_id.as_str(), node_entry(member)))
        .collect();
    Reply::Array(
        runs.into_iter()
            .map(|(first, last, primary)| {
                Reply::Array(vec![
                    Reply::Integer(i64::from(first)),
                    Reply::Integer(i64::from(last)),
                    entries
                        .get(primary.node_id.as_str())
                        .cloned()
                        .unwrap_or_else(|| node_entry(primary)),
                ])
            })
            .collect(),
    )
}

fn health(member: &Member) -> &'static str {
    match member.state {
        NodeState::Active | NodeState::Leaving => "online",
        NodeState::Joining | NodeState::Restarting => "loading",
        NodeState::Suspect | NodeState::Dead | NodeState::Left => "failed",
    }
}

/// `CLUSTER SHARDS`: one shard per distinct replica set (its primary the master, the others
/// replicas), with the slots it serves as `[start, end, ...]`.
fn shards(view: &ClusterView, myself: &Member) -> Reply {
    let ids: std::collections::HashMap<&str, Bytes> = view
        .topology
        .members()
        .iter()
        .map(|member| {
            (
                member.node_id.as_str(),
                Bytes::from(redis_id(&member.node_id)),
            )
        })
        .collect();
    let id_of = |member: &Member| {
        ids.get(member.node_id.as_str())
            .cloned()
            .unwrap_or_else(|| Bytes::from(redis_id(&member.node_id)))
    };
    let text = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
    Reply::Array(
        view.ring
            .shards()
            .into_iter()
            .map(|(set, runs)| {
                let slots = runs
                    .iter()
                    .flat_map(|&(first, last)| {
                        [
                            Reply::Integer(i64::from(first)),
                            Reply::Integer(i64::from(last)),
                        ]
                    })
                    .collect();
                let nodes = entry_members(view, myself, set)
                    .into_iter()
                    .map(|(member, primary)| {
                        let (host, port) = resp_endpoint(member).unwrap_or(("", 0));
                        Reply::Map(vec![
                            (text("id"), Reply::Bulk(id_of(member))),
                            (text("port"), Reply::Integer(i64::from(port))),
                            (text("ip"), text(host)),
                            (text("endpoint"), text(host)),
                            (
                                text("role"),
                                text(if primary { "master" } else { "replica" }),
                            ),
                            (text("replication-offset"), Reply::Integer(0)),
                            (text("health"), text(health(member))),
                        ])
                    })
                    .collect();
                Reply::Map(vec![
                    (text("slots"), Reply::Array(slots)),
                    (text("nodes"), Reply::Array(nodes)),
                ])
            })
            .collect(),
    )
}

/// `CLUSTER NODES`: one line per live member; every member is a master of the slots it is the
/// primary of (its neighbours' copies are not Redis replicas of one master, so they are not
/// shown as replica lines).
fn nodes_text(view: &ClusterView, myself: &Member) -> String {
    let mut primary_runs: std::collections::HashMap<&str, Vec<(u16, u16)>> = Default::default();
    for (first, last, set) in view.ring.slot_ranges() {
        let Some((member, _)) = entry_members(view, myself, set).into_iter().next() else {
            continue;
        };
        let runs = primary_runs.entry(member.node_id.as_str()).or_default();
        match runs.last_mut() {
            Some(run) if run.1 + 1 == first => run.1 = last,
            _ => runs.push((first, last)),
        }
    }
    let mut out = String::new();
    for member in view.topology.members() {
        if member.state.is_gone() {
            continue;
        }
        let Some((host, port)) = resp_endpoint(member) else {
            continue;
        };
        let bus = split_addr(&member.gossip_addr).map_or(0, |(_, port)| port);
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let mut flags = String::new();
        if member.node_id == myself.node_id {
            flags.push_str("myself,");
        }
        flags.push_str("master");
        if member.state == NodeState::Suspect {
            flags.push_str(",fail?");
        }
        let _ = write!(
            out,
            "{} {host}:{port}@{bus} {flags} - 0 0 {} connected",
            redis_id(&member.node_id),
            member.incarnation
        );
        for &(first, last) in primary_runs
            .get(member.node_id.as_str())
            .into_iter()
            .flatten()
        {
            if first == last {
                let _ = write!(out, " {first}");
            } else {
                let _ = write!(out, " {first}-{last}");
            }
        }
        out.push('\n');
    }
    out
}

/// `CLUSTER INFO`.
fn info(node: &Node, view: &ClusterView) -> String {
    let ring = &view.ring;
    let ok = !ring.is_empty() && node.is_ready();
    let assigned = if ring.is_empty() { 0 } else { SLOTS };
    let pfail: usize = ring
        .slot_ranges()
        .filter(|(_, _, set)| {
            set.primary()
                .and_then(|id| view.topology.member(id))
                .is_some_and(|m| m.state == NodeState::Suspect)
        })
        .map(|(first, last, _)| usize::from(last - first) + 1)
        .sum();
    let known = view
        .topology
        .members()
        .iter()
        .filter(|m| !m.state.is_gone())
        .count();
    let epoch = view
        .topology
        .members()
        .iter()
        .map(|m| m.incarnation)
        .max()
        .unwrap_or(0);
    let my_epoch = view
        .topology
        .member(&node.config().node_id)
        .map_or(0, |m| m.incarnation);
    format!(
        "cluster_state:{}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{}\r\n\
         cluster_slots_pfail:{pfail}\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{known}\r\n\
         cluster_size:{}\r\ncluster_current_epoch:{epoch}\r\ncluster_my_epoch:{my_epoch}\r\n\
         cluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\n\
         total_cluster_links_buffer_limit_exceeded:0\r\n",
        if ok { "ok" } else { "fail" },
        usize::from(assigned) - pfail,
        ring.nodes().len(),
    )
}
