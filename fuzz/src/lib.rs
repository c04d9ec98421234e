//! Helpers shared by the fuzz targets and the seed corpus generator (`examples/seed_corpus.rs`).
//!
//! The gossip target reads its input as a sequence of *records* so that one input can drive a
//! membership core through several datagrams and timers:
//!
//! ```text
//! input  = mode:u8 record*
//! record = op:u8 len:u16le payload[len]     (len is clamped to what is left)
//! ```
//!
//! See `fuzz_targets/gossip_datagram.rs` for what `mode` and `op` mean.

use std::net::SocketAddr;
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::{digest, hkdf};
use ringcache_server::cluster::{
    ClusterSettings, INSTANCE_ID_LEN, KEY_LEN, MAGIC, Membership, MembershipConfig, MetaState,
    NodeIdentity, NodeMeta, SEALED_WIRE_VERSION, WIRE_VERSION,
};

/// The node id of the membership core under test.
pub const LOCAL_ID: &str = "fuzz-local";
/// Its gossip address.
pub fn local_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7380))
}
/// The RNG seed of the core under test (deterministic runs).
pub const LOCAL_SEED: u64 = 0x5EED;

/// The membership config of the core under test: the test timings, default packet size.
pub fn config() -> MembershipConfig {
    MembershipConfig::for_test()
}

/// Metadata of node `index` (same shape as the cluster tests use).
pub fn meta_for(index: u8) -> NodeMeta {
    NodeMeta {
        grpc_addr: format!("10.0.0.{index}:7379"),
        http_addr: format!("10.0.0.{index}:7381"),
        cluster_addr: format!("10.0.0.{index}:7382"),
        resp_addr: String::new(),
        weight: 1 + u32::from(index),
        state: MetaState::Active,
        settings: ClusterSettings::default(),
        // Odd nodes have a zone, so zoned records (the zone after the record) are exercised.
        zone: (index % 2 == 1).then(|| format!("zone-{index}")),
    }
}

/// The membership core under test, knowing only itself.
pub fn local_membership() -> Membership {
    let identity = NodeIdentity::new(LOCAL_ID, local_addr(), 0).expect("valid identity");
    Membership::new(config(), identity, meta_for(1), LOCAL_SEED).expect("valid config")
}

/// Ops of a gossip record.
pub mod op {
    /// Payload is a raw datagram: straight to the core (plaintext mode) or through the opener
    /// first (encrypted mode).
    pub const DATAGRAM: u8 = 0;
    /// Fire the earliest pending timer (time jumps to it). Payload ignored.
    pub const TIMER: u8 = 1;
    /// Payload = `[sender, counter:u64le, key, tamper:u16le] frame`: sealed by the fuzz target
    /// with the documented format, then opened (encrypted mode; plaintext mode feeds `frame`).
    pub const SEALED: u8 = 2;
    /// Re-deliver sealed datagram number `payload[0]` of this run (replay).
    pub const REPLAY: u8 = 3;
    /// Advance time by `payload[0..2]` milliseconds, then join or announce (payload[2]).
    pub const CONTROL: u8 = 4;
    /// How many ops there are (`op % COUNT`).
    pub const COUNT: u8 = 5;
}

/// Appends one record to `out`.
pub fn push_record(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    let len = u16::try_from(payload.len()).expect("record payload fits u16");
    out.push(op);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits `data` into records `(op, payload)`.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [op, rest @ ..] = data {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        out.push((*op, &rest[..len]));
        data = &rest[len..];
    }
    out
}

/// The cluster keys of the fuzzed key ring (fixed, so seeds stay valid).
pub const KEYS: [[u8; KEY_LEN]; 2] = [[0x11; KEY_LEN], [0x22; KEY_LEN]];
/// A key the receiving ring does not hold.
pub const FOREIGN_KEY: [u8; KEY_LEN] = [0x33; KEY_LEN];
/// The receiver's own instance id.
pub const LOCAL_INSTANCE: [u8; INSTANCE_ID_LEN] = [0xAA; INSTANCE_ID_LEN];
/// Sender instance ids a `SEALED` record can pick from (index 0 is the receiver itself).
pub const INSTANCES: [[u8; INSTANCE_ID_LEN]; 4] = [
    LOCAL_INSTANCE,
    [0x01; INSTANCE_ID_LEN],
    [0x02; INSTANCE_ID_LEN],
    [0x03; INSTANCE_ID_LEN],
];

/// Key ring text for [`KEYS`] (base64 by hand: no extra dependency).
pub fn keyring_text() -> String {
    KEYS.iter()
        .map(|k| format!("{}\n", base64(k)))
        .collect::<String>()
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The key id of `key`: the first 4 bytes of its SHA-256.
pub fn key_id(key: &[u8; KEY_LEN]) -> [u8; 4] {
    let hash = digest::digest(&digest::SHA256, key);
    let mut id = [0; 4];
    id.copy_from_slice(&hash.as_ref()[..4]);
    id
}

/// Seals the plaintext frame `frame` (`[MAGIC, 1, kind, body..]`) as sender `instance` with
/// `counter` under `key`, following the format documented in `server/src/cluster/crypto.rs`
/// (independently of its `Sealer`). `None` if `frame` is shorter than a frame header.
pub fn seal(
    key: &[u8; KEY_LEN],
    instance: &[u8; INSTANCE_ID_LEN],
    counter: u64,
    frame: &[u8],
) -> Option<Vec<u8>> {
    let [_, _, kind, body @ ..] = frame else {
        return None;
    };
    let mut out = vec![MAGIC, SEALED_WIRE_VERSION, *kind];
    out.extend_from_slice(&key_id(key));
    out.extend_from_slice(instance);
    out.extend_from_slice(&counter.to_be_bytes());
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ringcache gossip datagram v2").extract(key);
    let info = [&instance[..]];
    let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF output length");
    let sealing = LessSafeKey::new(UnboundKey::from(okm));
    let mut nonce = [0_u8; NONCE_LEN];
    nonce[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    let mut sealed = body.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..]),
            &mut sealed,
        )
        .expect("AES-GCM seal");
    out.extend_from_slice(&sealed);
    Some(out)
}

/// A plaintext frame header.
pub fn frame_header(kind: u8) -> [u8; 3] {
    [MAGIC, WIRE_VERSION, kind]
}

/// Delays drained from a core are relative; this keeps absolute due times.
#[derive(Debug, Default)]
pub struct TimerQueue {
    pending: Vec<(Duration, ringcache_server::cluster::Timer)>,
}

/// The most timers kept pending (older extra ones are dropped: inputs are short anyway).
pub const MAX_PENDING_TIMERS: usize = 4096;

impl TimerQueue {
    /// Drains `core`'s timers, due `now` + their delay.
    pub fn collect(&mut self, now: Duration, core: &mut Membership) {
        for (delay, timer) in core.take_timers() {
            if self.pending.len() < MAX_PENDING_TIMERS {
                self.pending.push((now + delay, timer));
            }
        }
    }

    /// When the earliest pending timer is due.
    pub fn next_due(&self) -> Option<Duration> {
        self.pending.iter().map(|(due, _)| *due).min()
    }

    /// Removes and returns the earliest pending timer.
    pub fn pop(&mut self) -> Option<(Duration, ringcache_server::cluster::Timer)> {
        let index = self
            .pending
            .iter()
            .enumerate()
            .min_by_key(|(_, (due, _))| *due)
            .map(|(i, _)| i)?;
        Some(self.pending.swap_remove(index))
    }
}
