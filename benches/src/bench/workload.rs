//! What a run asks of its target: the operation mix, the key space and how keys are drawn from
//! it, value sizes, TTL and batch size ([`WorkloadSpec`]), the named presets, and the per-worker
//! [`OpGenerator`] that turns a spec into a deterministic stream of [`Operation`]s.
//!
//! Determinism: a worker's operation sequence depends only on the spec (seed included), the
//! worker's index and the number of workers — never on timing, completion order or the target.
//! This module does no I/O and reads no clock.

use std::{fmt, str::FromStr, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::bench::{rng::Rng, zipf::Zipfian};

/// Keys are `key:` + the index as 12 decimal digits: 16 bytes, `key:000000000042`.
pub const KEY_PREFIX: &[u8] = b"key:";
/// `incr` works on counters, `ctr:` + 12 digits, so it never meets a non-numeric value.
pub const COUNTER_PREFIX: &[u8] = b"ctr:";
/// Key spaces are limited to what 12 digits can name.
pub const MAX_KEYS: u64 = 1_000_000_000_000;

/// The stream index of the load phase's random numbers (workers use 0, 1, 2, …).
const LOAD_STREAM: u64 = 1 << 48;
/// The stream of the shared value bytes.
const VALUE_STREAM: u64 = (1 << 48) + 1;

/// The name of key `index` (`key:%012d`), as a string: for tests and messages.
pub fn key_name(index: u64) -> String {
    format!("key:{index:012}")
}

/// A kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Read one key.
    Get,
    /// Write one key.
    Set,
    /// Add 1 to a counter.
    Incr,
    /// Delete one key.
    Del,
    /// Read `batch` keys in one request.
    Mget,
    /// Write `batch` keys in one request.
    Mset,
}

impl OpKind {
    /// Every kind, in a fixed order (the index of each is its [`OpKind::index`]).
    pub const ALL: [OpKind; 6] = [
        OpKind::Get,
        OpKind::Set,
        OpKind::Incr,
        OpKind::Del,
        OpKind::Mget,
        OpKind::Mset,
    ];

    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Set => "set",
            OpKind::Incr => "incr",
            OpKind::Del => "del",
            OpKind::Mget => "mget",
            OpKind::Mset => "mset",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the operation carries `batch` keys.
    pub fn is_multi_key(self) -> bool {
        matches!(self, OpKind::Mget | OpKind::Mset)
    }
}

impl FromStr for OpKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        OpKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown operation {s:?} (expected get, set, incr, del, mget or mset)")
            })
    }
}

/// Relative weights of the operation kinds, written `get=95,set=5`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mix {
    /// Kinds with a positive weight, in the order written.
    weights: Vec<(OpKind, u32)>,
}

impl Mix {
    /// The kinds with a positive weight and their weights.
    pub fn weights(&self) -> &[(OpKind, u32)] {
        &self.weights
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.weights.iter().map(|&(_, w)| w).sum()
    }

    /// Whether `kind` has a positive weight.
    pub fn uses(&self, kind: OpKind) -> bool {
        self.weights.iter().any(|&(k, _)| k == kind)
    }

    /// Whether any kind is a multi-key operation.
    pub fn uses_batches(&self) -> bool {
        self.weights.iter().any(|&(k, _)| k.is_multi_key())
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights: Vec<(OpKind, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| {
                format!("bad mix entry {part:?}: expected op=weight, e.g. get=95")
            })?;
            let kind: OpKind = name.parse()?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {part:?}: expected a whole number"))?;
            if weights.iter().any(|&(k, _)| k == kind) {
                return Err(format!(
                    "operation {} appears twice in the mix",
                    kind.name()
                ));
            }
            if weight > 1_000_000 {
                return Err(format!(
                    "weight {weight} in {part:?} is too large (at most 1000000)"
                ));
            }
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        if weights.is_empty() {
            return Err(format!("mix {s:?} has no operation with a positive weight"));
        }
        Ok(Self { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, weight)) in self.weights.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={weight}", kind.name())?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Mix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Mix> for String {
    fn from(mix: Mix) -> String {
        mix.to_string()
    }
}

/// How keys are drawn from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Key `i` (0-based) with probability ∝ `(i + 1)^-θ`: key 0 is the hottest.
    Zipfian {
        /// The exponent θ (> 0; 0.99 by default, as in YCSB).
        theta: f64,
    },
    /// Each worker walks the key space in order from its own starting point, wrapping around.
    Sequential,
}

/// θ when `--distribution zipfian` gives none.
pub const DEFAULT_THETA: f64 = 0.99;

impl FromStr for KeyDistribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, param) = match lower.split_once(':') {
            Some((name, param)) => (name, Some(param)),
            None => (lower.as_str(), None),
        };
        match (name, param) {
            ("uniform", None) => Ok(Self::Uniform),
            ("sequential", None) => Ok(Self::Sequential),
            ("zipfian" | "zipf", None) => Ok(Self::Zipfian {
                theta: DEFAULT_THETA,
            }),
            ("zipfian" | "zipf", Some(theta)) => {
                let theta: f64 = theta.parse().map_err(|_| {
                    format!("bad zipfian theta {theta:?}: expected a number such as 0.99")
                })?;
                if !(theta.is_finite() && theta > 0.0) {
                    return Err(format!("zipfian theta must be positive, got {theta}"));
                }
                Ok(Self::Zipfian { theta })
            }
            _ => Err(format!(
                "unknown distribution {s:?} (expected uniform, zipfian, zipfian:THETA or sequential)"
            )),
        }
    }
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipfian { theta } => write!(f, "zipfian:{theta}"),
            Self::Sequential => f.write_str("sequential"),
        }
    }
}

impl TryFrom<String> for KeyDistribution {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<KeyDistribution> for String {
    fn from(d: KeyDistribution) -> String {
        d.to_string()
    }
}

/// Value sizes in bytes: one size (`100`) or uniform over an inclusive range (`64..1024`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ValueSize {
    /// Every value has this many bytes.
    Fixed(usize),
    /// Sizes drawn uniformly from `min..=max`.
    Range {
        /// Smallest size.
        min: usize,
        /// Largest size (inclusive).
        max: usize,
    },
}

/// Largest value the harness generates (the server's default limit is 4 MiB).
pub const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;

impl ValueSize {
    /// The largest size this can produce.
    pub fn max(self) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::Range { max, .. } => max,
        }
    }

    /// The mean size.
    pub fn mean(self) -> f64 {
        match self {
            Self::Fixed(n) => n as f64,
            Self::Range { min, max } => (min + max) as f64 / 2.0,
        }
    }

    fn draw(self, rng: &mut Rng) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::Range { min, max } => min + rng.below((max - min) as u64 + 1) as usize,
        }
    }
}

impl FromStr for ValueSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |t: &str| -> Result<usize, String> {
            let n: usize = t.trim().parse().map_err(|_| {
                format!("bad value size {t:?}: expected bytes, e.g. 100 or 64..1024")
            })?;
            if n > MAX_VALUE_SIZE {
                return Err(format!(
                    "value size {n} is above the harness's limit of {MAX_VALUE_SIZE}"
                ));
            }
            Ok(n)
        };
        match s.split_once("..") {
            None => Ok(Self::Fixed(parse(s)?)),
            Some((lo, hi)) => {
                let hi = hi.strip_prefix('=').unwrap_or(hi);
                let (min, max) = (parse(lo)?, parse(hi)?);
                if min > max {
                    return Err(format!("value size range {s:?} is empty"));
                }
                if min == max {
                    Ok(Self::Fixed(min))
                } else {
                    Ok(Self::Range { min, max })
                }
            }
        }
    }
}

impl fmt::Display for ValueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Range { min, max } => write!(f, "{min}..{max}"),
        }
    }
}

impl TryFrom<String> for ValueSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ValueSize> for String {
    fn from(v: ValueSize) -> String {
        v.to_string()
    }
}

/// Everything that decides which operations a run sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Operation weights.
    pub mix: Mix,
    /// Size of the key space: keys `0..keys`.
    pub keys: u64,
    /// How keys are drawn.
    pub distribution: KeyDistribution,
    /// Value sizes of set and mset.
    pub value_size: ValueSize,
    /// TTL of written keys, in milliseconds (`None`: no expiry).
    pub ttl_ms: Option<u64>,
    /// Keys per mget/mset (and per request of the load phase's batches, see the runner).
    pub batch: usize,
    /// The seed of every random choice.
    pub seed: u64,
}

impl WorkloadSpec {
    /// Checks the parts against each other.
    ///
    /// # Errors
    ///
    /// A one-line message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.keys == 0 || self.keys > MAX_KEYS {
            return Err(format!(
                "--keys must be in 1..={MAX_KEYS}, got {}",
                self.keys
            ));
        }
        if self.batch == 0 {
            return Err("--batch must be at least 1".to_owned());
        }
        if self.ttl_ms == Some(0) {
            return Err("--ttl must be at least 1ms".to_owned());
        }
        if let KeyDistribution::Zipfian { theta } = self.distribution {
            Zipfian::new(self.keys, theta)?;
        }
        Ok(())
    }

    /// The TTL as a duration.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl_ms.map(Duration::from_millis)
    }
}

/// A named workload: a starting point that explicit flags override.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name given to `--preset`.
    pub name: &'static str,
    /// One line for `--help` and reports.
    pub about: &'static str,
    /// `--mix`.
    pub mix: &'static str,
    /// `--keys`.
    pub keys: u64,
    /// `--distribution`.
    pub distribution: &'static str,
    /// `--value-size`.
    pub value_size: &'static str,
    /// `--batch`.
    pub batch: usize,
}

/// The named presets. `read-heavy` is the target workload.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "read-heavy",
        about: "95% get / 5% set, zipfian 0.99 over 100k keys, 100 B values",
        mix: "get=95,set=5",
        keys: 100_000,
        distribution: "zipfian:0.99",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "write-heavy",
        about: "10% get / 90% set, zipfian 0.99 over 100k keys, 100 B values",
        mix: "get=10,set=90",
        keys: 100_000,
        distribution: "zipfian:0.99",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "balanced",
        about: "50% get / 50% set (YCSB A), zipfian 0.99 over 100k keys, 100 B values",
        mix: "get=50,set=50",
        keys: 100_000,
        distribution: "zipfian:0.99",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "read-only",
        about: "100% get, uniform over 100k keys, 100 B values",
        mix: "get=100",
        keys: 100_000,
        distribution: "uniform",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "hot-keys",
        about: "90% get / 10% set on 100 keys (uniform): contention on a few keys",
        mix: "get=90,set=10",
        keys: 100,
        distribution: "uniform",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "multi-key",
        about: "90% mget / 10% mset of 10 keys, zipfian 0.99 over 100k keys, 100 B values",
        mix: "mget=90,mset=10",
        keys: 100_000,
        distribution: "zipfian:0.99",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "counters",
        about: "100% incr, zipfian 0.99 over 100k counters",
        mix: "incr=100",
        keys: 100_000,
        distribution: "zipfian:0.99",
        value_size: "100",
        batch: 10,
    },
    Preset {
        name: "large-values",
        about: "80% get / 20% set, uniform over 10k keys, values of 1..16 KiB",
        mix: "get=80,set=20",
        keys: 10_000,
        distribution: "uniform",
        value_size: "1024..16384",
        batch: 10,
    },
];

/// The preset called `name`.
///
/// # Errors
///
/// A message listing the preset names.
pub fn preset(name: &str) -> Result<&'static Preset, String> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        format!("unknown preset {name:?} (one of: {})", names.join(", "))
    })
}

/// One request, with everything it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Read a key.
    Get(Bytes),
    /// Write a key.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Expiry.
        ttl: Option<Duration>,
    },
    /// Add 1 to a counter.
    Incr(Bytes),
    /// Delete a key.
    Del(Bytes),
    /// Read several keys.
    Mget(Vec<Bytes>),
    /// Write several keys.
    Mset {
        /// Keys and values.
        entries: Vec<(Bytes, Bytes)>,
        /// Expiry of every key.
        ttl: Option<Duration>,
    },
}

impl Operation {
    /// The kind of this operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Operation::Get(_) => OpKind::Get,
            Operation::Set { .. } => OpKind::Set,
            Operation::Incr(_) => OpKind::Incr,
            Operation::Del(_) => OpKind::Del,
            Operation::Mget(_) => OpKind::Mget,
            Operation::Mset { .. } => OpKind::Mset,
        }
    }

    /// Number of keys it touches.
    pub fn key_count(&self) -> usize {
        match self {
            Operation::Mget(keys) => keys.len(),
            Operation::Mset { entries, .. } => entries.len(),
            _ => 1,
        }
    }
}

/// Formats keys into a shared buffer: one allocation per few thousand keys, and each key is a
/// cheap [`Bytes`] view of it.
#[derive(Debug, Default)]
struct KeyWriter {
    buf: BytesMut,
}

/// Bytes of a key: 4 of prefix + 12 digits.
const KEY_LEN: usize = 16;

impl KeyWriter {
    fn key(&mut self, prefix: &[u8], index: u64) -> Bytes {
        if self.buf.capacity() < KEY_LEN {
            self.buf.reserve(KEY_LEN * 4096);
        }
        self.buf.put_slice(prefix);
        let mut digits = [b'0'; 12];
        let mut rest = index % MAX_KEYS;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.buf.put_slice(&digits);
        self.buf.split().freeze()
    }
}

/// The bytes every value is cut from: random (so nothing compresses them), made once per run.
#[derive(Debug, Clone)]
pub struct ValuePool {
    bytes: Bytes,
}

impl ValuePool {
    /// A pool for values of up to `max_size` bytes, from `seed`.
    pub fn new(seed: u64, max_size: usize) -> Self {
        let mut buf = vec![0u8; max_size];
        Rng::for_stream(seed, VALUE_STREAM).fill_bytes(&mut buf);
        Self {
            bytes: Bytes::from(buf),
        }
    }

    /// A value of `size` bytes (a view of the pool; no copy).
    pub fn value(&self, size: usize) -> Bytes {
        self.bytes.slice(..size.min(self.bytes.len()))
    }
}

/// Which key index comes next, per distribution.
#[derive(Debug, Clone)]
enum KeyChooser {
    Uniform,
    Zipfian(Zipfian),
    Sequential { next: u64 },
}

/// The operation stream of one worker.
#[derive(Debug)]
pub struct OpGenerator {
    rng: Rng,
    keys: u64,
    chooser: KeyChooser,
    /// Cumulative weights, parallel to `kinds`.
    cumulative: Vec<u32>,
    kinds: Vec<OpKind>,
    total_weight: u32,
    value_size: ValueSize,
    ttl: Option<Duration>,
    batch: usize,
    writer: KeyWriter,
    values: ValuePool,
}

impl OpGenerator {
    /// The generator of worker `worker` of `workers`, for a validated `spec`, cutting values from
    /// `values` (a pool of at least `spec.value_size.max()` bytes).
    pub fn new(spec: &WorkloadSpec, values: ValuePool, worker: u64, workers: u64) -> Self {
        let chooser = match spec.distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform,
            KeyDistribution::Zipfian { theta } => {
                KeyChooser::Zipfian(Zipfian::new(spec.keys, theta).unwrap_or_else(|_| {
                    Zipfian::new(spec.keys.max(1), DEFAULT_THETA).expect("valid defaults")
                }))
            }
            KeyDistribution::Sequential => {
                let start = u128::from(spec.keys) * u128::from(worker) / u128::from(workers.max(1));
                KeyChooser::Sequential {
                    next: start as u64 % spec.keys.max(1),
                }
            }
        };
        let mut cumulative = Vec::new();
        let mut kinds = Vec::new();
        let mut sum = 0;
        for &(kind, weight) in spec.mix.weights() {
            sum += weight;
            cumulative.push(sum);
            kinds.push(kind);
        }
        Self {
            rng: Rng::for_stream(spec.seed, worker),
            keys: spec.keys.max(1),
            chooser,
            cumulative,
            kinds,
            total_weight: sum.max(1),
            value_size: spec.value_size,
            ttl: spec.ttl(),
            batch: spec.batch.max(1),
            writer: KeyWriter::default(),
            values,
        }
    }

    /// The next key index.
    pub fn next_index(&mut self) -> u64 {
        match &mut self.chooser {
            KeyChooser::Uniform => self.rng.below(self.keys),
            KeyChooser::Zipfian(zipf) => {
                let rng = &mut self.rng;
                zipf.sample(|| rng.next_f64())
            }
            KeyChooser::Sequential { next } => {
                let index = *next;
                *next = (index + 1) % self.keys;
                index
            }
        }
    }

    fn next_kind(&mut self) -> OpKind {
        let pick = self.rng.below(u64::from(self.total_weight)) as u32;
        let slot = self.cumulative.partition_point(|&c| c <= pick);
        self.kinds[slot.min(self.kinds.len() - 1)]
    }

    fn next_key(&mut self) -> Bytes {
        let index = self.next_index();
        self.writer.key(KEY_PREFIX, index)
    }

    fn next_value(&mut self) -> Bytes {
        let size = self.value_size.draw(&mut self.rng);
        self.values.value(size)
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Operation {
        match self.next_kind() {
            OpKind::Get => Operation::Get(self.next_key()),
            OpKind::Set => Operation::Set {
                key: self.next_key(),
                value: self.next_value(),
                ttl: self.ttl,
            },
            OpKind::Incr => {
                let index = self.next_index();
                Operation::Incr(self.writer.key(COUNTER_PREFIX, index))
            }
            OpKind::Del => Operation::Del(self.next_key()),
            OpKind::Mget => Operation::Mget((0..self.batch).map(|_| self.next_key()).collect()),
            OpKind::Mset => Operation::Mset {
                entries: (0..self.batch)
                    .map(|_| (self.next_key(), self.next_value()))
                    .collect(),
                ttl: self.ttl,
            },
        }
    }
}

/// The load phase's requests: keys `0..spec.keys` in batches of `batch`, every `connections`-th
/// batch for connection `connection`, as msets. Deterministic for the seed.
pub fn load_batches(
    spec: &WorkloadSpec,
    values: &ValuePool,
    batch: usize,
    connection: u64,
    connections: u64,
) -> impl Iterator<Item = Operation> + use<> {
    let batch = batch.max(1) as u64;
    let keys = spec.keys;
    let chunks = keys.div_ceil(batch);
    let value_size = spec.value_size;
    let ttl = spec.ttl();
    let seed = spec.seed;
    let values = values.clone();
    let mut writer = KeyWriter::default();
    (connection..chunks)
        .step_by(connections.max(1) as usize)
        .map(move |chunk| {
            let mut rng = Rng::for_stream(seed, LOAD_STREAM + chunk);
            let start = chunk * batch;
            let end = (start + batch).min(keys);
            let entries = (start..end)
                .map(|index| {
                    let size = value_size.draw(&mut rng);
                    (writer.key(KEY_PREFIX, index), values.value(size))
                })
                .collect();
            Operation::Mset { entries, ttl }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mix: &str, distribution: &str, seed: u64) -> WorkloadSpec {
        WorkloadSpec {
            mix: mix.parse().unwrap(),
            keys: 1000,
            distribution: distribution.parse().unwrap(),
            value_size: "10..20".parse().unwrap(),
            ttl_ms: None,
            batch: 4,
            seed,
        }
    }

    fn ops(spec: &WorkloadSpec, worker: u64, n: usize) -> Vec<Operation> {
        let pool = ValuePool::new(spec.seed, spec.value_size.max());
        let mut generator = OpGenerator::new(spec, pool, worker, 4);
        (0..n).map(|_| generator.next_op()).collect()
    }

    #[test]
    fn same_seed_gives_the_same_operations_per_worker() {
        for distribution in ["uniform", "zipfian:0.99", "sequential"] {
            let s = spec(
                "get=50,set=20,incr=10,del=5,mget=10,mset=5",
                distribution,
                7,
            );
            assert_eq!(ops(&s, 0, 500), ops(&s, 0, 500), "{distribution}");
            assert_eq!(ops(&s, 3, 500), ops(&s, 3, 500), "{distribution}");
        }
    }

    #[test]
    fn different_seeds_and_workers_differ() {
        let a = spec("get=95,set=5", "zipfian", 1);
        let b = spec("get=95,set=5", "zipfian", 2);
        assert_ne!(ops(&a, 0, 200), ops(&b, 0, 200));
        assert_ne!(ops(&a, 0, 200), ops(&a, 1, 200));
    }

    #[test]
    fn mix_weights_are_respected() {
        let s = spec("get=90,set=10", "uniform", 3);
        let all = ops(&s, 0, 100_000);
        let gets = all.iter().filter(|op| op.kind() == OpKind::Get).count();
        assert!((89_000..91_000).contains(&gets), "{gets}");
        assert!(
            all.iter()
                .all(|op| matches!(op.kind(), OpKind::Get | OpKind::Set))
        );
    }

    #[test]
    fn keys_values_and_batches_have_the_promised_shape() {
        let s = spec("mget=1,mset=1,incr=1", "uniform", 5);
        for op in ops(&s, 0, 300) {
            match op {
                Operation::Mget(keys) => {
                    assert_eq!(keys.len(), 4);
                    assert!(keys.iter().all(|k| k.len() == 16 && k.starts_with(b"key:")));
                }
                Operation::Mset { entries, ttl } => {
                    assert_eq!(entries.len(), 4);
                    assert!(entries.iter().all(|(_, v)| (10..=20).contains(&v.len())));
                    assert_eq!(ttl, None);
                }
                Operation::Incr(key) => assert!(key.starts_with(b"ctr:")),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(key_name(42), "key:000000000042");
        let mut writer = KeyWriter::default();
        assert_eq!(&writer.key(KEY_PREFIX, 42)[..], key_name(42).as_bytes());
    }

    #[test]
    fn sequential_workers_start_apart_and_wrap() {
        let s = spec("get=1", "sequential", 1);
        let pool = ValuePool::new(1, 20);
        let mut w1 = OpGenerator::new(&s, pool.clone(), 1, 4);
        assert_eq!(w1.next_index(), 250);
        assert_eq!(w1.next_index(), 251);
        let mut w3 = OpGenerator::new(&s, pool, 3, 4);
        let last: Vec<u64> = (0..251).map(|_| w3.next_index()).collect();
        assert_eq!(last[249], 999);
        assert_eq!(last[250], 0);
    }

    #[test]
    fn load_batches_cover_every_key_once() {
        let mut s = spec("get=1", "uniform", 9);
        s.keys = 1003;
        let pool = ValuePool::new(9, 20);
        let mut seen = vec![0u32; 1003];
        for connection in 0..3 {
            for op in load_batches(&s, &pool, 100, connection, 3) {
                let Operation::Mset { entries, .. } = op else {
                    panic!("load sends msets")
                };
                for (key, _) in entries {
                    let index: usize = std::str::from_utf8(&key[4..]).unwrap().parse().unwrap();
                    seen[index] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        // Deterministic too.
        let a: Vec<_> = load_batches(&s, &pool, 100, 1, 3).collect();
        let b: Vec<_> = load_batches(&s, &pool, 100, 1, 3).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn parsing_and_display_round_trip() {
        let mix: Mix = "get=95, set=5,del=0".parse().unwrap();
        assert_eq!(mix.to_string(), "get=95,set=5");
        assert!("get=95,get=5".parse::<Mix>().is_err());
        assert!("get".parse::<Mix>().is_err());
        assert!(
            "fetch=1"
                .parse::<Mix>()
                .unwrap_err()
                .contains("unknown operation")
        );
        assert!("get=0".parse::<Mix>().is_err());
        assert_eq!(
            "zipfian".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Zipfian { theta: 0.99 }
        );
        assert_eq!(
            "zipfian:1.2"
                .parse::<KeyDistribution>()
                .unwrap()
                .to_string(),
            "zipfian:1.2"
        );
        assert!("zipfian:-1".parse::<KeyDistribution>().is_err());
        assert!("pareto".parse::<KeyDistribution>().is_err());
        assert_eq!("100".parse::<ValueSize>().unwrap(), ValueSize::Fixed(100));
        assert_eq!(
            "64..1024".parse::<ValueSize>().unwrap(),
            ValueSize::Range { min: 64, max: 1024 }
        );
        assert_eq!(
            "64..=1024".parse::<ValueSize>().unwrap().to_string(),
            "64..1024"
        );
        assert!("9..1".parse::<ValueSize>().is_err());
        assert!(preset("read-heavy").is_ok());
        assert!(preset("nope").unwrap_err().contains("read-heavy"));
        for p in PRESETS {
            p.mix.parse::<Mix>().unwrap();
            p.distribution.parse::<KeyDistribution>().unwrap();
            p.value_size.parse::<ValueSize>().unwrap();
        }
    }
}
