//! Writes seed inputs for the fuzz targets into `fuzz/corpus/<target>/` (or the directory given
//! as the first argument): real gossip datagrams recorded from a small simulated cluster, wire
//! topologies, config and users files.
//!
//! `cargo run --release --example seed_corpus` (from `fuzz/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use ringcache_fuzz::{
    INSTANCES, KEYS, LOCAL_SEED, TimerQueue, config, local_addr, local_membership, meta_for, op,
    push_record, seal,
};
use ringcache_proto::topology::{Member, NodeState, Topology};
use ringcache_proto::v1;
use ringcache_server::cluster::{Membership, NodeIdentity};

struct Node {
    core: Membership,
    addr: SocketAddr,
    timers: TimerQueue,
    alive: bool,
}

/// Runs a 3-node cluster (the fuzzed core plus two peers; peer 3 dies half way) and returns the
/// datagrams the fuzzed core received, with the time each arrived.
fn simulate() -> Vec<Vec<u8>> {
    let peer = |index: u8| {
        let addr = SocketAddr::from(([10, 0, 0, index], 7380));
        let identity = NodeIdentity::new(&format!("fuzz-peer-{index}"), addr, 0).unwrap();
        Node {
            core: Membership::new(config(), identity, meta_for(index), LOCAL_SEED + u64::from(index))
                .unwrap(),
            addr,
            timers: TimerQueue::default(),
            alive: true,
        }
    };
    let mut nodes = vec![
        Node {
            core: local_membership(),
            addr: local_addr(),
            timers: TimerQueue::default(),
            alive: true,
        },
        peer(2),
        peer(3),
    ];
    let mut now = Duration::ZERO;
    let mut wire: BTreeMap<(Duration, u64), (SocketAddr, Vec<u8>)> = BTreeMap::new();
    let mut seq = 0_u64;
    let mut received = Vec::new();
    for i in 1..nodes.len() {
        nodes[i].core.join(now, vec![local_addr()]);
    }
    let end = Duration::from_secs(6);
    while now < end {
        // Drain outputs.
        for node in nodes.iter_mut() {
            for (to, bytes) in node.core.take_packets() {
                seq += 1;
                wire.insert((now + Duration::from_millis(1), seq), (to, bytes.to_vec()));
            }
            node.timers.collect(now, &mut node.core);
        }
        if now > Duration::from_secs(3) {
            nodes[2].alive = false;
        }
        // Next event: a packet or the earliest timer, whichever is due first.
        let next_packet = wire.keys().next().copied();
        let next_timer = (0..nodes.len())
            .filter_map(|i| nodes[i].timers.next_due().map(|due| (due, i)))
            .min();
        match (next_packet, next_timer) {
            (Some(key), timer) if timer.is_none_or(|(due, _)| key.0 <= due) => {
                let (to, bytes) = wire.remove(&key).unwrap();
                now = now.max(key.0);
                if let Some(node) = nodes.iter_mut().find(|n| n.addr == to && n.alive) {
                    if to == local_addr() {
                        received.push(bytes.clone());
                    }
                    let _ = node.core.handle_data(now, &bytes);
                }
            }
            (_, Some((_, i))) => {
                let (due, timer) = nodes[i].timers.pop().unwrap();
                now = now.max(due);
                if nodes[i].alive {
                    nodes[i].core.handle_timer(now, timer);
                }
            }
            _ => break,
        }
    }
    received
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn gossip_seeds(dir: &Path) {
    let datagrams = simulate();
    eprintln!("recorded {} datagrams to the fuzzed core", datagrams.len());
    // One datagram per seed, plaintext and sealed (raw and via the SEALED op).
    for (i, d) in datagrams.iter().enumerate().take(200) {
        let mut plain = vec![0];
        push_record(&mut plain, op::DATAGRAM, d);
        write(dir, &format!("plain-{i:03}"), &plain);

        let mut enc = vec![1];
        let sealed = seal(&KEYS[i % 2], &INSTANCES[1 + i % 3], i as u64, d).unwrap();
        push_record(&mut enc, op::DATAGRAM, &sealed);
        write(dir, &format!("sealed-raw-{i:03}"), &enc);

        let mut via = vec![1];
        let mut payload = vec![(1 + i % 3) as u8];
        payload.extend_from_slice(&(i as u64).to_le_bytes());
        payload.push((i % 2) as u8);
        payload.extend_from_slice(&0_u16.to_le_bytes());
        payload.extend_from_slice(d);
        push_record(&mut via, op::SEALED, &payload);
        push_record(&mut via, op::REPLAY, &[0]);
        write(dir, &format!("sealed-op-{i:03}"), &via);
    }
    // Sequences of datagrams with timers in between, up to ~1500 bytes each.
    for (n, chunk) in datagrams.chunks(6).enumerate().take(60) {
        for mode in [0_u8, 1] {
            let mut input = vec![mode];
            for (j, d) in chunk.iter().enumerate() {
                if input.len() + d.len() + 80 > 1500 {
                    break;
                }
                if mode == 0 {
                    push_record(&mut input, op::DATAGRAM, d);
                } else {
                    let mut payload = vec![1];
                    payload.extend_from_slice(&((n * 8 + j) as u64).to_le_bytes());
                    payload.push(0);
                    payload.extend_from_slice(&0_u16.to_le_bytes());
                    payload.extend_from_slice(d);
                    push_record(&mut input, op::SEALED, &payload);
                }
                push_record(&mut input, op::TIMER, &[]);
            }
            push_record(&mut input, op::CONTROL, &[100, 0, 0, 2]);
            write(dir, &format!("seq-{mode}-{n:03}"), &input);
        }
    }
}

fn topology_seeds(dir: &Path) {
    let member = |i: u32, state: NodeState, weight: u32| Member {
        node_id: format!("node-{i}"),
        incarnation: u64::from(i),
        state,
        weight,
        grpc_addr: format!("10.0.0.{i}:7379"),
        gossip_addr: format!("10.0.0.{i}:7380"),
        http_addr: format!("10.0.0.{i}:7381"),
        cluster_addr: format!("10.0.0.{i}:7382"),
        resp_addr: String::new(),
        zone: (i % 2 == 0).then(|| format!("zone-{i}")),
    };
    let cases: Vec<(Vec<Member>, u32, u32)> = vec![
        (vec![], 3, 256),
        (vec![member(1, NodeState::Active, 1)], 3, 256),
        (
            (1..=3).map(|i| member(i, NodeState::Active, i)).collect(),
            2,
            16,
        ),
        (
            vec![
                member(1, NodeState::Active, 1),
                member(2, NodeState::Joining, 2),
                member(3, NodeState::Leaving, 1),
                member(4, NodeState::Suspect, 1),
                member(5, NodeState::Dead, 1),
            ],
            3,
            8,
        ),
        ((1..=12).map(|i| member(i, NodeState::Active, 1)).collect(), 5, 4),
    ];
    for (i, (members, rf, vnodes)) in cases.into_iter().enumerate() {
        let topology = Topology::new(members, rf, vnodes);
        let wire = v1::Topology::from(&topology);
        write(dir, &format!("topology-{i}"), &wire.encode_to_vec());
        // And one with a wrong digest (the target repairs it).
        let mut bad = wire.clone();
        bad.digest ^= 1;
        write(dir, &format!("topology-{i}-digest"), &bad.encode_to_vec());
    }
}

fn config_seeds(dir: &Path) {
    let files = [
        "",
        "node_id = \"n1\"\nbind = \"0.0.0.0\"\nadvertise_addr = \"10.0.0.1\"\ngrpc_port = 7379\ngossip_port = 7380\nhttp_port = 7381\ncluster_port = 7382\nseeds = [\"10.0.0.2:7380\", \"node-3:7380\"]\n",
        "replication_factor = 3\nmax_memory = \"512MiB\"\neviction_policy = \"clock\"\nmax_key_bytes = \"8KiB\"\nmax_value_bytes = \"1MiB\"\nmax_message_bytes = \"2MiB\"\nmax_batch_keys = 1000\nmax_ttl = \"30days\"\nshards = 16\nexpiry_interval = \"100ms\"\ntombstone_grace = \"10m\"\nmax_clock_drift = \"5s\"\n",
        "rebalance_rate = \"64MiB\"\nleave_timeout = \"5m\"\nshutdown_timeout = \"10s\"\nworkers = 4\nlog_format = \"json\"\nweight = 2\nvnodes = 256\nprobe_interval = \"1s\"\nprobe_timeout = \"500ms\"\nsuspicion_timeout = \"3s\"\nwrite_consistency = \"quorum\"\nread_consistency = \"one\"\nreplica_timeout = \"1s\"\nhint_max_bytes = \"64MiB\"\nhint_max_age = \"1h\"\nmin_cluster_size = 3\nmax_connections = 10000\nready_settle = \"2s\"\n",
        "tls_cert = \"/etc/ringcache/tls.crt\"\ntls_key = \"/etc/ringcache/tls.key\"\ntls_client_ca = \"/etc/ringcache/ca.crt\"\ncluster_ca = \"/etc/ringcache/cluster-ca.crt\"\ncluster_server_name = \"ringcache-cluster\"\nusers_file = \"/etc/ringcache/users.toml\"\ninsecure = false\nhandshake_timeout = \"10s\"\nmax_unauthenticated_connections = 100\nmax_cluster_connections = 64\nmax_concurrent_streams = 128\nmax_header_list_bytes = \"16KiB\"\nmax_auth_failures = 10\ngossip_keyring = \"/etc/ringcache/gossip.keys\"\nsecrets_reload_interval = \"10s\"\n",
        "insecure = true\n[[users]]\nname = \"alice\"\nrole = \"admin\"\nsecret_sha256 = \"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\"\n\n[[users]]\nname = \"bob\"\nrole = \"read\"\nsecret_sha256 = \"fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9\"\n",
    ];
    for (i, text) in files.iter().enumerate() {
        write(dir, &format!("config-{i}"), text.as_bytes());
    }
}

fn credentials_seeds(dir: &Path) {
    let headers: [&[u8]; 6] = [
        b"Basic YWxpY2U6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ==",
        b"basic Ym9iOnNlY3JldA==",
        b"Basic Og==",
        b"Bearer abc",
        b"Basic !!!",
        b"Basic   YTpi  ",
    ];
    for (i, h) in headers.iter().enumerate() {
        let mut input = vec![0];
        input.extend_from_slice(h);
        write(dir, &format!("header-{i}"), &input);
    }
    let files = [
        "",
        "[[users]]\nname = \"alice\"\nrole = \"write\"\nsecret_sha256 = \"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\"\n",
        "[[users]]\nname = \"a@b.c\"\nrole = \"admin\"\nsecret_sha256 = \"2C26B46B68FFC68FF99B453C1D30413413422D706483BFA0F98A5E886266E7AE\"\n[[users]]\nname = \"r_1-x\"\nrole = \"read\"\nsecret_sha256 = \"fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9\"\n",
        "users = []\n",
    ];
    for (i, f) in files.iter().enumerate() {
        let mut input = vec![1];
        input.extend_from_slice(f.as_bytes());
        write(dir, &format!("users-{i}"), &input);
    }
}

fn main() {
    let root: PathBuf = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("corpus"), PathBuf::from);
    gossip_seeds(&root.join("gossip_datagram"));
    topology_seeds(&root.join("topology_wire"));
    config_seeds(&root.join("config_file"));
    credentials_seeds(&root.join("credentials"));
    eprintln!("seeds written under {}", root.display());
}
