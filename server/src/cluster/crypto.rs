//! Authenticated encryption of gossip datagrams under a cluster key ring.
//!
//! Owns [`Keyring`] (the ordered list of 32-byte cluster keys read from the `--gossip-keyring`
//! file) and `Sealer`, the per-process state that seals outgoing datagrams and opens incoming
//! ones: our sender instance id and packet counter, and a bounded table of the other senders'
//! replay windows.
//!
//! A sealed datagram is a plaintext frame (`codec.rs`) with the body encrypted:
//!
//! ```text
//! 0       1       2      3          7                 23            31
//! +-------+-------+------+----------+-----------------+-------------+---------------------+
//! | MAGIC | 2     | kind | key id   | instance id     | counter     | ciphertext ‖ tag    |
//! | 0xC7  |       | u8   | 4 B      | 16 B            | u64 BE      | body len + 16 B     |
//! +-------+-------+------+----------+-----------------+-------------+---------------------+
//! \______________________ AAD (authenticated, not encrypted) ______/
//! ```
//!
//! - *Cipher*: AES-256-GCM. It is the AEAD memberlist and Serf use for the same job, it is
//!   hardware-accelerated (AES-NI, ARMv8 crypto extensions) on every server CPU a cache cluster
//!   runs on, and ring's software fallback is constant-time. ChaCha20-Poly1305 would be the pick
//!   for CPUs without AES instructions; gossip is a few hundred datagrams per second, so either
//!   is far from being a cost.
//! - *Key id*: the first 4 bytes of SHA-256 of the key, so the receiver picks the key without
//!   trial decryption. Every key of the ring opens; the first (primary) seals.
//! - *Nonces never repeat*: each process draws a 16-byte random *instance id* at start and
//!   seals under a subkey `HKDF-SHA256(salt = label, ikm = cluster key, info = instance id)`,
//!   with the 96-bit nonce `0u32 ‖ counter` where the counter grows by one per datagram and never
//!   wraps (at `u64::MAX` the sealer refuses to send). Two processes never share a subkey unless
//!   their random instance ids collide (2⁻¹²⁸), so no (key, nonce) pair is used twice.
//! - *Replay*: per sender instance, a sliding window of [`REPLAY_WINDOW`] counters (a bitmap
//!   under the highest counter seen): a counter already seen or older than the window is dropped.
//!   Windows move only after the tag verifies, and a sender gets an entry only then, so forged
//!   datagrams cannot fill the table. The table holds at most [`MAX_SENDERS`] instances; the one
//!   used least recently is forgotten first (a cluster has one instance per node process, so
//!   only more than 4096 restarts' worth of live senders ever evicts anyone).
//!
//! Must not: log or format key bytes (the `Debug` of [`Keyring`] shows key ids only), or panic
//! on input.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::{digest, hkdf, rand::SecureRandom};

use super::codec::{DropReason, FRAME_HEADER_LEN, MAGIC, SEALED_WIRE_VERSION, WIRE_VERSION};

/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// The most keys a key ring holds (a rotation needs two; a few spare for staged rollouts).
pub const MAX_KEYS: usize = 16;
/// Bytes of a sender instance id.
pub const INSTANCE_ID_LEN: usize = 16;
/// Counters per sender remembered by the replay window.
pub const REPLAY_WINDOW: u64 = 128;
/// The most sender instances whose replay windows are kept.
pub const MAX_SENDERS: usize = 4096;

const KEY_ID_LEN: usize = 4;
const COUNTER_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Bytes of the sealed header (the AAD): frame header, key id, instance id, counter.
const SEALED_HEADER_LEN: usize = FRAME_HEADER_LEN + KEY_ID_LEN + INSTANCE_ID_LEN + COUNTER_LEN;
/// Bytes a sealed datagram adds to its plaintext frame: key id, instance id, counter and tag.
pub const SEAL_OVERHEAD: usize = KEY_ID_LEN + INSTANCE_ID_LEN + COUNTER_LEN + TAG_LEN;
/// The HKDF salt: names what the subkeys are for.
const HKDF_SALT: &[u8] = b"ringcache gossip datagram v2";

/// The id of a key: the first 4 bytes of its SHA-256, shown as 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let hash = digest::digest(&digest::SHA256, key);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        Self(id)
    }

    /// The id as a number (big-endian), for the primary-key gauge.
    pub fn as_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.as_u32())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One cluster key.
#[derive(Clone, PartialEq, Eq)]
struct ClusterKey {
    id: KeyId,
    bytes: [u8; KEY_LEN],
}

/// The ordered cluster keys: the first (primary) seals, every key opens. 1 to [`MAX_KEYS`]
/// distinct keys with distinct ids.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl fmt::Debug for Keyring {
    /// Key ids only, never key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

impl fmt::Display for Keyring {
    /// The key ids, primary first, comma-separated (`0a1b2c3d,5e6f7a8b`); never key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.ids().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(id, f)?;
        }
        Ok(())
    }
}

/// A key ring file that cannot be used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file could not be read.
    #[error("cannot read gossip keyring {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A line is not a key.
    #[error("gossip keyring {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No key at all (only comments and blank lines).
    #[error("gossip keyring {path} holds no key")]
    Empty {
        /// The file.
        path: String,
    },
}

impl Keyring {
    /// Parses key ring text: one standard-base64 32-byte key per line, `#` starts a comment,
    /// blank lines are skipped, the first key is the primary. `source` names the text in
    /// errors (the file path).
    pub fn parse(text: &str, source: &str) -> Result<Self, KeyringError> {
        let bad = |line: usize, reason: String| KeyringError::Line {
            path: source.to_owned(),
            line,
            reason,
        };
        let mut keys: Vec<(usize, ClusterKey)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let decoded = BASE64
                .decode(content)
                .map_err(|_| bad(line, "not standard base64".to_owned()))?;
            let bytes: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
                bad(
                    line,
                    format!(
                        "a key must be {KEY_LEN} bytes, this one is {}",
                        decoded.len()
                    ),
                )
            })?;
            let key = ClusterKey {
                id: KeyId::of(&bytes),
                bytes,
            };
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.id == key.id) {
                return Err(bad(
                    line,
                    format!("same key (or key id) as line {first}; list each key once"),
                ));
            }
            if keys.len() == MAX_KEYS {
                return Err(bad(line, format!("more than {MAX_KEYS} keys")));
            }
            keys.push((line, key));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty {
                path: source.to_owned(),
            });
        }
        Ok(Self {
            keys: keys.into_iter().map(|(_, key)| key).collect(),
        })
    }

    /// Reads and parses a key ring file (see [`Keyring::parse`]).
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KeyringError::Read {
            path: name.clone(),
            error,
        })?;
        Self::parse(&text, &name)
    }

    /// A fresh random key from the system's secure RNG, as a key ring line (standard base64).
    pub fn generate_key() -> Result<String, ring::error::Unspecified> {
        let mut key = [0_u8; KEY_LEN];
        ring::rand::SystemRandom::new().fill(&mut key)?;
        Ok(BASE64.encode(key))
    }

    /// The id of the primary key (the one that seals).
    pub fn primary_id(&self) -> KeyId {
        self.keys[0].id
    }

    /// The ids of every key, primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// How many keys the ring holds (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn key(&self, id: KeyId) -> Option<&ClusterKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// The AEAD subkey of one sender instance under one cluster key.
fn subkey(key: &ClusterKey, instance: &[u8; INSTANCE_ID_LEN]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&key.bytes);
    let info = [&instance[..]];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("32 bytes is far below HKDF-SHA256's output limit");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0_u8; NONCE_LEN];
    bytes[NONCE_LEN - COUNTER_LEN..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Which counters of one sender have been seen: the highest, and a bitmap of the
/// [`REPLAY_WINDOW`] counters at and below it (bit `i` = `highest - i`).
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    highest: u64,
    seen: u128,
}

impl ReplayWindow {
    fn new(counter: u64) -> Self {
        Self {
            highest: counter,
            seen: 1,
        }
    }

    /// Whether `counter` is new and inside the window (does not record it).
    fn accepts(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        let age = self.highest - counter;
        age < REPLAY_WINDOW && self.seen & (1 << age) == 0
    }

    /// Records `counter` (call only after [`ReplayWindow::accepts`] and a verified tag).
    fn record(&mut self, counter: u64) {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.highest = counter;
            self.seen |= 1;
        } else {
            self.seen |= 1 << (self.highest - counter);
        }
    }
}

/// What we know of one other sender instance.
struct Sender {
    window: ReplayWindow,
    /// Subkeys derived so far, by cluster key id (cleared when the key ring changes).
    subkeys: Vec<(KeyId, LessSafeKey)>,
    last_used: u64,
}

fn evict_least_recent(senders: &mut HashMap<[u8; INSTANCE_ID_LEN], Sender>) {
    if let Some(oldest) = senders
        .iter()
        .min_by_key(|(_, sender)| sender.last_used)
        .map(|(instance, _)| *instance)
    {
        senders.remove(&oldest);
    }
}

/// A sealed datagram could not be made; nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    /// Not a plaintext frame (a bug of the caller).
    #[error("not a plaintext gossip frame")]
    NotAFrame,
    /// The packet counter reached `u64::MAX`; restart the process for a new instance id.
    #[error("packet counter exhausted")]
    CounterExhausted,
}

/// Seals our datagrams and opens others' under a [`Keyring`]. See the module docs.
///
/// Public only so the fuzz targets (`fuzz/`) can reach the opener; the driver is its one user.
pub struct Sealer {
    keyring: Keyring,
    instance: [u8; INSTANCE_ID_LEN],
    /// The counter of the next datagram sealed.
    next_counter: u64,
    sealing_key: LessSafeKey,
    senders: HashMap<[u8; INSTANCE_ID_LEN], Sender>,
    max_senders: usize,
    tick: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keyring", &self.keyring)
            .field("next_counter", &self.next_counter)
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for this process: `instance` must be fresh random bytes for every process start
    /// (nonces repeat otherwise).
    pub fn new(keyring: Keyring, instance: [u8; INSTANCE_ID_LEN]) -> Self {
        Self::with_capacity(keyring, instance, MAX_SENDERS)
    }

    fn with_capacity(
        keyring: Keyring,
        instance: [u8; INSTANCE_ID_LEN],
        max_senders: usize,
    ) -> Self {
        let sealing_key = subkey(&keyring.keys[0], &instance);
        Self {
            keyring,
            instance,
            next_counter: 0,
            sealing_key,
            senders: HashMap::new(),
            max_senders: max_senders.max(1),
            tick: 0,
        }
    }

    /// The key ring in use.
    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Switches to another key ring: its primary seals from now on, and only its keys open
    /// (subkeys of removed keys are forgotten). The counter and the replay windows carry on.
    pub(crate) fn set_keyring(&mut self, keyring: Keyring) {
        self.sealing_key = subkey(&keyring.keys[0], &self.instance);
        for sender in self.senders.values_mut() {
            sender.subkeys.clear();
        }
        self.keyring = keyring;
    }

    /// Seals a plaintext frame (version 1) into a sealed datagram (version 2).
    pub(crate) fn seal(&mut self, frame: &[u8]) -> Result<Bytes, SealError> {
        let (header, body) = match frame {
            [MAGIC, WIRE_VERSION, kind, body @ ..] => (*kind, body),
            _ => return Err(SealError::NotAFrame),
        };
        let counter = self.next_counter;
        if counter == u64::MAX {
            return Err(SealError::CounterExhausted);
        }
        self.next_counter += 1;
        let mut out = BytesMut::with_capacity(SEALED_HEADER_LEN + body.len() + TAG_LEN);
        out.put_slice(&[MAGIC, SEALED_WIRE_VERSION, header]);
        out.put_slice(&self.keyring.primary_id().0);
        out.put_slice(&self.instance);
        out.put_u64(counter);
        let mut sealed = body.to_vec();
        self.sealing_key
            .seal_in_place_append_tag(nonce(counter), Aad::from(&out[..]), &mut sealed)
            .map_err(|_| SealError::NotAFrame)?;
        out.put_slice(&sealed);
        Ok(out.freeze())
    }

    /// Opens a sealed datagram (version 2) into `plain` as a plaintext frame (version 1).
    /// `plain` is cleared first; on error it holds nothing useful.
    pub fn open(&mut self, datagram: &[u8], plain: &mut Vec<u8>) -> Result<(), DropReason> {
        plain.clear();
        if datagram.len() < SEALED_HEADER_LEN + TAG_LEN {
            return Err(DropReason::Malformed);
        }
        let (aad, sealed) = datagram.split_at(SEALED_HEADER_LEN);
        if aad[0] != MAGIC || aad[1] != SEALED_WIRE_VERSION {
            return Err(DropReason::Malformed);
        }
        let kind = aad[2];
        let mut key_id = [0; KEY_ID_LEN];
        key_id.copy_from_slice(&aad[3..3 + KEY_ID_LEN]);
        let key_id = KeyId(key_id);
        let mut instance = [0; INSTANCE_ID_LEN];
        instance.copy_from_slice(&aad[3 + KEY_ID_LEN..3 + KEY_ID_LEN + INSTANCE_ID_LEN]);
        let mut counter = [0; COUNTER_LEN];
        counter.copy_from_slice(&aad[SEALED_HEADER_LEN - COUNTER_LEN..]);
        let counter = u64::from_be_bytes(counter);

        let Some(cluster_key) = self.keyring.key(key_id) else {
            return Err(DropReason::UnknownKey);
        };
        if instance == self.instance {
            // Our own datagram, looped back or replayed at us.
            return Err(DropReason::Replayed);
        }
        let known = self.senders.get_mut(&instance);
        if let Some(sender) = &known
            && !sender.window.accepts(counter)
        {
            return Err(DropReason::Replayed);
        }
        let mut buf = sealed.to_vec();
        let opened_len = {
            let derived;
            let key = match known
                .as_ref()
                .and_then(|s| s.subkeys.iter().find(|(id, _)| *id == key_id))
            {
                Some((_, key)) => key,
                None => {
                    derived = subkey(cluster_key, &instance);
                    &derived
                }
            };
            key.open_in_place(nonce(counter), Aad::from(aad), &mut buf)
                .map_err(|_| DropReason::Unauthenticated)?
                .len()
        };
        // Verified: only now does the sender get (or move) a window.
        self.tick += 1;
        let tick = self.tick;
        match self.senders.get_mut(&instance) {
            Some(sender) => {
                sender.window.record(counter);
                sender.last_used = tick;
                if !sender.subkeys.iter().any(|(id, _)| *id == key_id) {
                    sender
                        .subkeys
                        .push((key_id, subkey(cluster_key, &instance)));
                }
            }
            None => {
                if self.senders.len() >= self.max_senders {
                    evict_least_recent(&mut self.senders);
                }
                self.senders.insert(
                    instance,
                    Sender {
                        window: ReplayWindow::new(counter),
                        subkeys: vec![(key_id, subkey(cluster_key, &instance))],
                        last_used: tick,
                    },
                );
            }
        }
        plain.reserve(FRAME_HEADER_LEN + opened_len);
        plain.extend_from_slice(&[MAGIC, WIRE_VERSION, kind]);
        plain.extend_from_slice(&buf[..opened_len]);
        Ok(())
    }

    /// How many sender instances have a replay window.
    #[cfg(test)]
    fn senders(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cluster::codec::{FrameKind, frame, split_frame};

    fn ring_of(keys: &[[u8; KEY_LEN]]) -> Keyring {
        let text: String = keys
            .iter()
            .map(|k| format!("{}\n", BASE64.encode(k)))
            .collect();
        Keyring::parse(&text, "test").unwrap()
    }

    fn pair(keys_a: &[[u8; KEY_LEN]], keys_b: &[[u8; KEY_LEN]]) -> (Sealer, Sealer) {
        (
            Sealer::new(ring_of(keys_a), [1; INSTANCE_ID_LEN]),
            Sealer::new(ring_of(keys_b), [2; INSTANCE_ID_LEN]),
        )
    }

    const K1: [u8; KEY_LEN] = [0x11; KEY_LEN];
    const K2: [u8; KEY_LEN] = [0x22; KEY_LEN];

    #[test]
    fn sealed_frames_round_trip_and_hide_the_body() {
        let (mut a, mut b) = pair(&[K1], &[K1]);
        let plain = frame(FrameKind::MetaPush, b"the metadata body");
        let sealed = a.seal(&plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert_eq!(
            &sealed[..3],
            &[MAGIC, SEALED_WIRE_VERSION, FrameKind::MetaPush as u8]
        );
        assert!(
            !sealed.windows(8).any(|w| w == b"metadata"),
            "body in clear"
        );
        let mut opened = Vec::new();
        b.open(&sealed, &mut opened).unwrap();
        assert_eq!(opened, plain.to_vec());
        assert_eq!(
            split_frame(&opened, 1400),
            Ok((FrameKind::MetaPush, &b"the metadata body"[..]))
        );
    }

    #[test]
    fn a_datagram_under_an_unknown_key_is_dropped_as_such() {
        let (mut a, mut b) = pair(&[K1], &[K2]);
        let sealed = a.seal(&frame(FrameKind::Swim, b"x")).unwrap();
        assert_eq!(
            b.open(&sealed, &mut Vec::new()),
            Err(DropReason::UnknownKey)
        );
        assert_eq!(b.senders(), 0, "no state for unverified senders");
    }

    #[test]
    fn any_tampered_byte_fails_authentication() {
        let (mut a, mut b) = pair(&[K1], &[K1]);
        let sealed = a
            .seal(&frame(FrameKind::Swim, b"some swim packet"))
            .unwrap();
        for at in 2..sealed.len() {
            let mut bad = sealed.to_vec();
            bad[at] ^= 0x01;
            let result = b.open(&bad, &mut Vec::new());
            let expected = if (3..7).contains(&at) {
                DropReason::UnknownKey
            } else {
                DropReason::Unauthenticated
            };
            assert_eq!(result, Err(expected), "byte {at}");
        }
        assert_eq!(b.senders(), 0);
        // The untouched datagram still opens: failures moved no window.
        b.open(&sealed, &mut Vec::new()).unwrap();
    }

    #[test]
    fn a_replayed_datagram_is_dropped() {
        let (mut a, mut b) = pair(&[K1], &[K1]);
        let sealed = a.seal(&frame(FrameKind::Swim, b"ping")).unwrap();
        b.open(&sealed, &mut Vec::new()).unwrap();
        assert_eq!(b.open(&sealed, &mut Vec::new()), Err(DropReason::Replayed));
        // Our own datagrams reflected back at us count as replays too.
        assert_eq!(a.open(&sealed, &mut Vec::new()), Err(DropReason::Replayed));
    }

    #[test]
    fn reordering_within_the_window_is_accepted_and_older_is_dropped() {
        let (mut a, mut b) = pair(&[K1], &[K1]);
        let sealed: Vec<Bytes> = (0..REPLAY_WINDOW + 10)
            .map(|_| a.seal(&frame(FrameKind::Swim, b"p")).unwrap())
            .collect();
        let mut out = Vec::new();
        // Newest first, then the ones inside the window in reverse.
        let (too_old, window) = sealed.split_at(sealed.len() - REPLAY_WINDOW as usize);
        let (newest, rest) = window.split_last().unwrap();
        b.open(newest, &mut out).unwrap();
        for datagram in rest.iter().rev() {
            b.open(datagram, &mut out).unwrap();
        }
        for (i, datagram) in too_old.iter().chain(window).enumerate() {
            assert_eq!(b.open(datagram, &mut out), Err(DropReason::Replayed), "{i}");
        }
    }

    #[test]
    fn counters_never_repeat_and_never_wrap() {
        let (mut a, _) = pair(&[K1], &[K1]);
        let counter_of = |d: &Bytes| {
            u64::from_be_bytes(
                d[SEALED_HEADER_LEN - 8..SEALED_HEADER_LEN]
                    .try_into()
                    .unwrap(),
            )
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = a.seal(&frame(FrameKind::Swim, b"p")).unwrap();
            assert!(seen.insert(counter_of(&d)));
        }
        // A key change keeps the counter going.
        a.set_keyring(ring_of(&[K2, K1]));
        let d = a.seal(&frame(FrameKind::Swim, b"p")).unwrap();
        assert_eq!(counter_of(&d), 1000);
        a.next_counter = u64::MAX - 1;
        a.seal(&frame(FrameKind::Swim, b"p")).unwrap();
        assert_eq!(
            a.seal(&frame(FrameKind::Swim, b"p")),
            Err(SealError::CounterExhausted)
        );
    }

    #[test]
    fn every_key_opens_and_the_primary_seals_through_a_rotation() {
        // Install K2 as secondary everywhere, then make it primary on `a` only.
        let (mut a, mut b) = pair(&[K1, K2], &[K1, K2]);
        a.set_keyring(ring_of(&[K2, K1]));
        let sealed = a.seal(&frame(FrameKind::Swim, b"p")).unwrap();
        assert_eq!(&sealed[3..7], &KeyId::of(&K2).0);
        b.open(&sealed, &mut Vec::new()).unwrap();
        // Removing K1 from `b` stops K1 datagrams, even from a sender seen before.
        let old = Sealer::new(ring_of(&[K1]), [1; INSTANCE_ID_LEN])
            .seal(&frame(FrameKind::Swim, b"p"))
            .unwrap();
        b.set_keyring(ring_of(&[K2]));
        assert_eq!(b.open(&old, &mut Vec::new()), Err(DropReason::UnknownKey));
    }

    #[test]
    fn the_sender_table_is_bounded_and_forgets_the_least_recent() {
        let mut b = Sealer::with_capacity(ring_of(&[K1]), [0; INSTANCE_ID_LEN], 3);
        let mut senders: Vec<Sealer> = (1..=4)
            .map(|i| Sealer::new(ring_of(&[K1]), [i; INSTANCE_ID_LEN]))
            .collect();
        let mut out = Vec::new();
        for s in &mut senders[..3] {
            b.open(&s.seal(&frame(FrameKind::Swim, b"p")).unwrap(), &mut out)
                .unwrap();
        }
        // Sender 1 is used again, so sender 2 is the least recent when sender 4 arrives.
        b.open(
            &senders[0].seal(&frame(FrameKind::Swim, b"p")).unwrap(),
            &mut out,
        )
        .unwrap();
        b.open(
            &senders[3].seal(&frame(FrameKind::Swim, b"p")).unwrap(),
            &mut out,
        )
        .unwrap();
        assert_eq!(b.senders(), 3);
        assert!(b.senders.contains_key(&[1; INSTANCE_ID_LEN]));
        assert!(!b.senders.contains_key(&[2; INSTANCE_ID_LEN]));
    }

    #[test]
    fn keyring_files_are_checked_line_by_line_without_showing_keys() {
        let k1 = BASE64.encode(K1);
        let k2 = BASE64.encode(K2);
        let ring = Keyring::parse(&format!("# primary\n{k1}\n\n  {k2}  # next\n"), "f").unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.primary_id(), KeyId::of(&K1));
        assert!(!format!("{ring:?}").contains(&k1));
        let err = |text: &str| {
            Keyring::parse(text, "/etc/ringcache/gossip.keys")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&format!("{k1}\nnot base64!\n")),
            "gossip keyring /etc/ringcache/gossip.keys, line 2: not standard base64"
        );
        let short = BASE64.encode([7_u8; 16]);
        let message = err(&format!("\n{short}\n"));
        assert!(
            message.contains("line 2: a key must be 32 bytes, this one is 16"),
            "{message}"
        );
        assert!(!message.contains(&short));
        assert!(err(&format!("{k1}\n{k1}\n")).contains("line 2: same key"));
        assert_eq!(
            err("# nothing\n\n"),
            "gossip keyring /etc/ringcache/gossip.keys holds no key"
        );
        let many: String = (0..=MAX_KEYS as u8)
            .map(|i| format!("{}\n", BASE64.encode([i; KEY_LEN])))
            .collect();
        assert!(err(&many).contains("line 17: more than 16 keys"));
        let generated = Keyring::generate_key().unwrap();
        assert_eq!(Keyring::parse(&generated, "g").unwrap().len(), 1);
        assert_ne!(generated, Keyring::generate_key().unwrap());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_opener(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            sealed_header in any::<bool>(),
        ) {
            let mut b = Sealer::new(ring_of(&[K1]), [2; INSTANCE_ID_LEN]);
            let mut datagram = bytes;
            if sealed_header && datagram.len() >= 7 {
                datagram[0] = MAGIC;
                datagram[1] = SEALED_WIRE_VERSION;
                datagram[3..7].copy_from_slice(&KeyId::of(&K1).0);
            }
            let result = b.open(&datagram, &mut Vec::new());
            prop_assert!(result.is_err());
            prop_assert_eq!(b.senders(), 0);
        }
    }
}
