//! The node's snapshot file: the store written to disk, and loaded back at start.
//!
//! A snapshot lets a restarted node serve warm instead of empty. It is a *fuzzy* copy: the
//! writer walks the shards with [`Store::visit`] in bounded batches while the node keeps
//! serving, so every entry present for the whole write is in the file (at its version when its
//! shard was visited or later); entries written, changed or deleted during the write may or may
//! not be in it, and a key may appear twice. Loading applies every record with [`Store::apply`]
//! (last writer wins), so duplicates and order do not matter.
//!
//! # Format (version 1), all integers little-endian
//!
//! ```text
//! header   magic "RCSNAP\r\n" (8) | format version u32 | header length u32 (whole header,
//!          CRC included) | created-at unix ms u64 | start version u64 (the store's HLC when
//!          the write began) | flush floor u64 | max key bytes u32 | max value bytes u32 |
//!          target block bytes u32 | node id length u16 | node id | CRC-32 of the header u32
//! block    tag u8 (1 = records) | payload length u32 | record count u32 | payload |
//!          CRC-32 of tag, length, count and payload u32
//! record   flags u8 (bit 0: tombstone) | key length u16 | value length u32 | version u64 |
//!          expires-at unix ms u64 (0: never; a tombstone's: when it may be dropped) | key | value
//! trailer  tag u8 (2 = end) | payload length u32 (= 28) | record count u32 (= 0) |
//!          records u64 | blocks u64 | flush floor at the end u64 | CRC-32 of every byte of
//!          the file before this field u32 | CRC-32 of the trailer's tag..file CRC u32
//! ```
//!
//! Nothing follows the trailer. Lengths are never trusted: the header's limits are bounded by
//! [`MAX_KEY_LEN`], [`MAX_VALUE_BYTES_CAP`] and [`MAX_BLOCK_BYTES_CAP`], a block longer than
//! the header's limits allow, or a record longer than the header's key and value limits, is
//! corruption (reported with its byte offset), not an allocation, and a block is read only as
//! far as the file really goes.
//!
//! # Guarantees
//!
//! - **Atomic replacement:** the writer writes `<path>.tmp.<pid>.<n>` in the same directory,
//!   `fsync`s it, renames it over `path` and `fsync`s the directory; a write that fails or is
//!   cancelled removes its temp file and leaves the previous snapshot as it was.
//! - **Never half-loaded:** [`load()`] refuses to start on a store that holds anything; if any
//!   check fails part way (a checksum, a length, a truncated file, a missing or inconsistent
//!   trailer) it empties the store again before returning the error.
//! - **Bounded memory:** one block buffer (the target block size, or one record if larger) and
//!   one batch of entry pointers on the writer; one block buffer on the reader.
//!
//! Not in a snapshot: the version floors left by tombstones evicted under memory pressure (a
//! restarted node forgets them; its tombstones within their grace are kept), hints for
//! unreachable replicas, and anything that is not store data (membership, statistics).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::{MAX_EXPIRY_MS, MAX_KEY_LEN, Store, StoreError};

/// The file name of a node's snapshot in its data directory.
pub const FILE_NAME: &str = "snapshot.rcs";
/// The first bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"RCSNAP\r\n";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest value limit a snapshot header may declare (1 GiB).
pub const MAX_VALUE_BYTES_CAP: u64 = 1 << 30;
/// Largest target block size a snapshot header may declare (64 MiB).
pub const MAX_BLOCK_BYTES_CAP: u64 = 64 << 20;
/// Default target block size: records are grouped into blocks of about this many bytes.
pub const DEFAULT_BLOCK_BYTES: usize = 256 * 1024;
/// Default number of entries the writer takes from a shard at a time.
pub const DEFAULT_BATCH_ENTRIES: usize = 1024;
/// Bytes of a record before its key and value.
pub const RECORD_HEADER_BYTES: usize = 1 + 2 + 4 + 8 + 8;
/// Bytes of a block before its payload.
const BLOCK_HEADER_BYTES: usize = 1 + 4 + 4;
/// Bytes of the trailer's payload.
const TRAILER_PAYLOAD_BYTES: usize = 8 + 8 + 8 + 4;
/// Bytes of the fixed part of the header (before the node id and the CRC).
const HEADER_FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + 2;
/// Longest header accepted: the fixed part, a node id of at most `u16::MAX` bytes and its CRC.
const MAX_HEADER_BYTES: u64 = (HEADER_FIXED_BYTES + u16::MAX as usize + 4) as u64;
/// The longest single sleep of a throttled write (it checks for cancellation in between).
const PACE_SLICE: Duration = Duration::from_millis(100);
/// Block tag: a block of records.
const TAG_RECORDS: u8 = 1;
/// Block tag: the trailer.
const TAG_END: u8 = 2;
/// Record flag: a tombstone (no value).
const FLAG_TOMBSTONE: u8 = 1;

/// Why a snapshot could not be written or loaded. The node logs it and goes on (a failed load
/// starts empty).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Snapshots are off: no data directory is configured.
    #[error("snapshots are off: no data_dir (--data-dir) is set")]
    Disabled,
    /// A file system call failed.
    #[error("snapshot {path}: cannot {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the snapshot magic bytes.
    #[error("{path} is not a ringcache snapshot (its first bytes are not the snapshot magic)")]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// The file was written in a format this build does not read.
    #[error(
        "snapshot {path} has format version {found}; this build reads version {FORMAT_VERSION} only"
    )]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The snapshot is another node's.
    #[error(
        "snapshot {path} belongs to node {found:?}, not to this node ({expected:?}); move it away or start with this node's own data directory"
    )]
    OtherNode {
        /// The file.
        path: PathBuf,
        /// The node id in the file.
        found: String,
        /// This node's id.
        expected: String,
    },
    /// The snapshot is older than `snapshot_max_age`.
    #[error(
        "snapshot {path} is {} old, more than snapshot_max_age ({}): it may hold keys deleted \
         in the cluster since, whose tombstones are gone; raise --snapshot-max-age to load it \
         anyway (e.g. when the whole cluster restarts)",
        humantime::format_duration(*.age), humantime::format_duration(*.max_age)
    )]
    TooOld {
        /// The file.
        path: PathBuf,
        /// Its age.
        age: Duration,
        /// The limit.
        max_age: Duration,
    },
    /// The snapshot's versions are further ahead of this node's clock than `max_clock_drift`.
    #[error(
        "snapshot {path} holds versions stamped {ahead_ms} ms ahead of this node's clock (more \
         than max_clock_drift, {max_drift_ms} ms): was the clock set back?"
    )]
    FromTheFuture {
        /// The file.
        path: PathBuf,
        /// How far ahead.
        ahead_ms: u64,
        /// The limit.
        max_drift_ms: u64,
    },
    /// A checksum, length or field is wrong.
    #[error("snapshot {path} is corrupt at byte offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad part starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The file ends before its trailer.
    #[error("snapshot {path} is truncated: it ends at byte offset {offset}, inside {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the file ends.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// The store must be empty to load a snapshot (so a failed load can empty it again).
    #[error("cannot load snapshot {path} into a store that holds {entries} entries")]
    StoreNotEmpty {
        /// The file.
        path: PathBuf,
        /// Entries held.
        entries: u64,
    },
    /// The store refused a record.
    #[error("snapshot {path}: the store refused the record at byte offset {offset}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The record's offset.
        offset: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The write was cancelled (the node is shutting down); the previous snapshot is kept.
    #[error("snapshot {path} not written: cancelled")]
    Cancelled {
        /// The file that was not replaced.
        path: PathBuf,
    },
    /// The blocking task that ran the write or load failed.
    #[error("snapshot task failed: {0}")]
    Task(String),
}

/// How [`write()`] runs.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Unix ms now: the file's creation time; expired entries and tombstones past their grace
    /// are not written.
    pub now_ms: u64,
    /// Bytes per second at most (the writer sleeps between blocks); 0: as fast as it can.
    pub rate_bytes_per_sec: u64,
    /// Target block size in bytes (a record larger than it gets a block of its own); clamped
    /// to 4 KiB..=[`MAX_BLOCK_BYTES_CAP`].
    pub block_bytes: usize,
    /// Entries taken from a shard at a time (the shard's lock is held only to copy their
    /// pointers); at least 1.
    pub batch_entries: usize,
    /// When cancelled, the write stops at the next block and keeps the previous snapshot.
    pub cancel: Option<CancellationToken>,
    /// Called with each block's size once it is written; the writer then sleeps as long as it
    /// says, on top of `rate_bytes_per_sec` (the node's adaptive pacer: slower while requests
    /// wait for a CPU).
    pub yield_to: Option<YieldTo>,
}

/// How long a writer waits after each block, given its bytes (see [`WriteOptions::yield_to`]).
#[derive(Clone)]
pub struct YieldTo(pub Arc<dyn Fn(u64) -> Duration + Send + Sync>);

impl std::fmt::Debug for YieldTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("YieldTo")
    }
}

impl WriteOptions {
    /// Unthrottled, default block and batch sizes, at `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        Self {
            now_ms,
            rate_bytes_per_sec: 0,
            block_bytes: DEFAULT_BLOCK_BYTES,
            batch_entries: DEFAULT_BATCH_ENTRIES,
            cancel: None,
            yield_to: None,
        }
    }
}

/// What [`write()`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot file.
    pub path: PathBuf,
    /// Records written (values and tombstones).
    pub entries: u64,
    /// Of them, tombstones.
    pub tombstones: u64,
    /// Entries left out because they had expired (values past their TTL, tombstones past
    /// their grace).
    pub skipped_expired: u64,
    /// Values left out because they are longer than the format allows
    /// ([`MAX_VALUE_BYTES_CAP`]; only with `max_value_bytes` set above it).
    pub skipped_too_large: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// How long the write took (throttling included).
    pub duration: Duration,
    /// The store's version clock when the write began.
    pub start_version: u64,
    /// Unix ms the write began.
    pub created_at_ms: u64,
}

/// What [`load()`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// There is no snapshot file: the node starts empty (not an error).
    NoSnapshot,
    /// The snapshot was loaded.
    Loaded(LoadInfo),
}

/// What [`load()`] loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadInfo {
    /// Records applied to the store (values and tombstones).
    pub entries: u64,
    /// Of them, tombstones.
    pub tombstones: u64,
    /// Records skipped because they had expired by now (values past their TTL, tombstones
    /// past their grace).
    pub skipped_expired: u64,
    /// Records the store did not take: an older or equal copy of a key already loaded (a key
    /// written during the snapshot can appear twice), at or below the flush floor, longer
    /// than this store's key or value limit, or refused for memory (`noeviction`).
    pub skipped_other: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// The snapshot's start version (the version clock of the node that wrote it).
    pub start_version: u64,
    /// Unix ms the snapshot was begun.
    pub created_at_ms: u64,
    /// Its age at load.
    pub age: Duration,
    /// How long the load took.
    pub duration: Duration,
}

/// How long to sleep after `bytes` were written in `elapsed` so the average stays at most
/// `rate` bytes per second (0: unthrottled, never sleeps).
pub fn pace_delay(bytes: u64, rate: u64, elapsed: Duration) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let due_nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
    let due = Duration::from_nanos(u64::try_from(due_nanos).unwrap_or(u64::MAX));
    due.saturating_sub(elapsed)
}

/// Writes the store to `path` (see the module documentation for the format and guarantees).
/// Blocking: run it on a blocking thread. `node_id` goes into the header, so only this node
/// loads it back.
pub fn write(
    store: &Store,
    path: &Path,
    node_id: &str,
    options: &WriteOptions,
) -> Result<SnapshotInfo, SnapshotError> {
    let started = Instant::now();
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io {
            path,
            action,
            source,
        }
    };
    let node_id_len = u16::try_from(node_id.len()).map_err(|_| SnapshotError::Io {
        path: path.to_path_buf(),
        action: "write a node id longer than 65535 bytes",
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io("create the temporary file"))?;
    let mut guard = TempFile {
        path: Some(tmp.clone()),
    };
    let block_bytes = options
        .block_bytes
        .clamp(4096, MAX_BLOCK_BYTES_CAP as usize);
    let config = store.config();
    let start_version = store.hlc().current();
    let flush_floor = store.flush_floor();
    let mut header = Vec::with_capacity(HEADER_FIXED_BYTES + node_id.len() + 4);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let header_len = (HEADER_FIXED_BYTES + node_id.len() + 4) as u32;
    header.extend_from_slice(&header_len.to_le_bytes());
    header.extend_from_slice(&options.now_ms.to_le_bytes());
    header.extend_from_slice(&start_version.to_le_bytes());
    header.extend_from_slice(&flush_floor.to_le_bytes());
    header.extend_from_slice(&(config.max_key_bytes.min(MAX_KEY_LEN) as u32).to_le_bytes());
    let max_value = (config.max_value_bytes as u64).min(MAX_VALUE_BYTES_CAP);
    header.extend_from_slice(&(max_value as u32).to_le_bytes());
    header.extend_from_slice(&(block_bytes as u32).to_le_bytes());
    header.extend_from_slice(&node_id_len.to_le_bytes());
    header.extend_from_slice(node_id.as_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());

    let mut out = BlockWriter {
        file,
        buf: Vec::with_capacity(block_bytes + BLOCK_HEADER_BYTES + 4),
        count: 0,
        block_bytes,
        file_crc: crc32fast::Hasher::new(),
        written: 0,
        blocks: 0,
        records: 0,
        tombstones: 0,
        rate: options.rate_bytes_per_sec,
        started,
        cancel: options.cancel.clone(),
        yield_to: options.yield_to.clone(),
    };
    out.write_raw(&header).map_err(io("write the header"))?;
    out.start_block();

    let mut skipped_expired = 0u64;
    let mut skipped_too_large = 0u64;
    let mut failed: Option<io::Error> = None;
    let batch = options.batch_entries.max(1);
    let now_ms = options.now_ms;
    for shard in 0..store.shard_count() {
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            if out.cancelled() {
                return Err(SnapshotError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            cursor = store.visit(shard, at, batch, |key, copy| {
                if failed.is_some() {
                    return;
                }
                let expires = copy.expires_at_ms.unwrap_or(0);
                if expires != 0 && expires <= now_ms {
                    skipped_expired += 1;
                    return;
                }
                if copy.version <= flush_floor {
                    // Flushed cluster-wide (a flush ran meanwhile): nothing to keep.
                    return;
                }
                if copy.value.is_some_and(|v| v.len() as u64 > max_value) {
                    // Only with max_value_bytes above the format's 1 GiB cap.
                    skipped_too_large += 1;
                    return;
                }
                if let Err(error) = out.record(key, copy.value, copy.version, expires) {
                    failed = Some(error);
                }
            });
            if let Some(error) = failed.take() {
                return Err(io("write a block")(error));
            }
        }
    }
    out.end_block().map_err(io("write a block"))?;
    if out.cancelled() {
        return Err(SnapshotError::Cancelled {
            path: path.to_path_buf(),
        });
    }
    // The trailer.
    let mut trailer = Vec::with_capacity(BLOCK_HEADER_BYTES + TRAILER_PAYLOAD_BYTES + 4);
    trailer.push(TAG_END);
    trailer.extend_from_slice(&(TRAILER_PAYLOAD_BYTES as u32).to_le_bytes());
    trailer.extend_from_slice(&0u32.to_le_bytes());
    trailer.extend_from_slice(&out.records.to_le_bytes());
    trailer.extend_from_slice(&out.blocks.to_le_bytes());
    trailer.extend_from_slice(&store.flush_floor().to_le_bytes());
    let mut file_crc = out.file_crc.clone();
    file_crc.update(&trailer);
    trailer.extend_from_slice(&file_crc.finalize().to_le_bytes());
    let crc = crc32fast::hash(&trailer);
    trailer.extend_from_slice(&crc.to_le_bytes());
    out.write_raw(&trailer).map_err(io("write the trailer"))?;
    out.file
        .sync_all()
        .map_err(io("fsync the temporary file"))?;
    drop(out.file);
    std::fs::rename(&tmp, path).map_err(io("rename the temporary file over the snapshot"))?;
    guard.path = None;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SnapshotError::Io {
            path: dir.clone(),
            action: "fsync the data directory",
            source,
        })?;
    Ok(SnapshotInfo {
        path: path.to_path_buf(),
        entries: out.records,
        tombstones: out.tombstones,
        skipped_expired,
        skipped_too_large,
        bytes: out.written,
        duration: started.elapsed(),
        start_version,
        created_at_ms: options.now_ms,
    })
}

/// Removes the temporary files that writes of `path` left behind when their process died
/// before finishing (`<path>.tmp.<pid>.<n>` whose process no longer runs, per `/proc`; where
/// there is no `/proc`, nothing is removed). Returns how many were removed. The node calls it
/// at start, before loading.
pub fn remove_stale_temp_files(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let prefix = format!("{}.tmp.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A unique temporary name next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Groups records into checksummed blocks and writes them, paced.
struct BlockWriter {
    file: File,
    /// The block being filled: its header (filled in at the end) then records.
    buf: Vec<u8>,
    count: u32,
    block_bytes: usize,
    /// CRC of every byte written so far.
    file_crc: crc32fast::Hasher,
    written: u64,
    blocks: u64,
    records: u64,
    tombstones: u64,
    rate: u64,
    started: Instant,
    cancel: Option<CancellationToken>,
    yield_to: Option<YieldTo>,
}

impl BlockWriter {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.file_crc.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn start_block(&mut self) {
        self.buf.clear();
        self.buf.resize(BLOCK_HEADER_BYTES, 0);
        self.count = 0;
    }

    fn record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        version: u64,
        expires_at_ms: u64,
    ) -> io::Result<()> {
        let len = RECORD_HEADER_BYTES + key.len() + value.map_or(0, <[u8]>::len);
        if self.count > 0 && self.buf.len() + len > self.block_bytes + BLOCK_HEADER_BYTES {
            self.end_block()?;
        }
        let flags = if value.is_none() { FLAG_TOMBSTONE } else { 0 };
        let value = value.unwrap_or_default();
        self.buf.push(flags);
        // The store keeps keys within MAX_KEY_LEN and values within max_value_bytes.
        self.buf
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf.extend_from_slice(&expires_at_ms.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self.count += 1;
        self.records += 1;
        self.tombstones += u64::from(flags == FLAG_TOMBSTONE);
        Ok(())
    }

    /// Writes the current block, if it holds records, and paces.
    fn end_block(&mut self) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let payload = (self.buf.len() - BLOCK_HEADER_BYTES) as u32;
        self.buf[0] = TAG_RECORDS;
        self.buf[1..5].copy_from_slice(&payload.to_le_bytes());
        self.buf[5..9].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        let block = std::mem::take(&mut self.buf);
        let block_len = block.len() as u64;
        let result = self.write_raw(&block);
        self.buf = block;
        result?;
        self.blocks += 1;
        self.start_block();
        // Throttling a blocking thread: the periodic write must not take the disk's whole
        // bandwidth. Slept in slices, so a cancelled write stops sleeping soon.
        let mut delay = pace_delay(self.written, self.rate, self.started.elapsed());
        if let Some(YieldTo(yield_to)) = &self.yield_to {
            delay = delay.max(yield_to(block_len));
        }
        while !delay.is_zero() && !self.cancelled() {
            let step = delay.min(PACE_SLICE);
            std::thread::sleep(step);
            delay -= step;
        }
        Ok(())
    }
}

/// The header's fields.
struct Header {
    created_at_ms: u64,
    start_version: u64,
    flush_floor: u64,
    max_key_bytes: u64,
    max_value_bytes: u64,
    block_bytes: u64,
    /// The CRC of the header's bytes (the start of the whole-file CRC).
    file_crc: crc32fast::Hasher,
}

/// Reads a file, keeping the byte offset.
struct Input<'a> {
    reader: BufReader<File>,
    offset: u64,
    path: &'a Path,
}

impl Input<'_> {
    /// Reads exactly `buf.len()` bytes; a short file is [`SnapshotError::Truncated`].
    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), SnapshotError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(SnapshotError::Truncated {
                        path: self.path.to_path_buf(),
                        offset: self.offset + filled as u64,
                        what,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SnapshotError::Io {
                        path: self.path.to_path_buf(),
                        action: "read",
                        source,
                    });
                }
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Reads `len` bytes into `buf` (replacing its contents), growing it only as far as the
    /// file really goes, so a wrong length cannot make a large allocation of nothing.
    fn read_vec(
        &mut self,
        buf: &mut Vec<u8>,
        len: usize,
        what: &'static str,
    ) -> Result<(), SnapshotError> {
        buf.clear();
        let start = self.offset;
        let got = (&mut self.reader)
            .take(len as u64)
            .read_to_end(buf)
            .map_err(|source| SnapshotError::Io {
                path: self.path.to_path_buf(),
                action: "read",
                source,
            })?;
        self.offset += got as u64;
        if got < len {
            return Err(SnapshotError::Truncated {
                path: self.path.to_path_buf(),
                offset: start + got as u64,
                what,
            });
        }
        Ok(())
    }

    fn at_end(&mut self) -> Result<bool, SnapshotError> {
        let mut b = [0; 1];
        loop {
            match self.reader.read(&mut b) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SnapshotError::Io {
                        path: self.path.to_path_buf(),
                        action: "read",
                        source,
                    });
                }
            }
        }
    }

    fn corrupt(&self, offset: u64, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.to_path_buf(),
            offset,
            what: what.into(),
        }
    }
}

/// Little-endian fields from a slice already checked to be long enough.
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Loads the snapshot at `path` into `store`, which must be empty (the node loads before it
/// serves). `LoadOutcome::NoSnapshot` when there is no file. Refuses (with the store left
/// empty) a snapshot of another node than `expected_node_id`, of an unknown format, older
/// than `max_age` at `now_ms`, stamped too far ahead of `now_ms`, or damaged in any way.
pub fn load(
    store: &Store,
    path: &Path,
    expected_node_id: &str,
    now_ms: u64,
    max_age: Duration,
) -> Result<LoadOutcome, SnapshotError> {
    let started = Instant::now();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadOutcome::NoSnapshot),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_path_buf(),
                action: "open",
                source,
            });
        }
    };
    let entries = store.entry_count();
    if entries > 0 {
        return Err(SnapshotError::StoreNotEmpty {
            path: path.to_path_buf(),
            entries,
        });
    }
    let mut input = Input {
        reader: BufReader::with_capacity(1 << 20, file),
        offset: 0,
        path,
    };
    let header = read_header(&mut input, expected_node_id)?;
    let age = Duration::from_millis(now_ms.saturating_sub(header.created_at_ms));
    if age > max_age {
        return Err(SnapshotError::TooOld {
            path: path.to_path_buf(),
            age,
            max_age,
        });
    }
    if let Err(drift) = store.check_remote_version(header.start_version, now_ms) {
        return Err(SnapshotError::FromTheFuture {
            path: path.to_path_buf(),
            ahead_ms: drift.ahead_ms,
            max_drift_ms: drift.max_drift_ms,
        });
    }
    match load_blocks(store, &mut input, &header, now_ms) {
        Ok(mut info) => {
            // Later local versions order after everything the writer had stamped (checked
            // against the drift bound above).
            let drift = store.config().max_clock_drift_ms;
            let _ = store.hlc().observe(header.start_version, now_ms, drift);
            info.age = age;
            info.duration = started.elapsed();
            Ok(LoadOutcome::Loaded(info))
        }
        Err(error) => {
            // Never half-loaded: the store was empty before.
            store.flush();
            Err(error)
        }
    }
}

fn read_header(input: &mut Input<'_>, expected_node_id: &str) -> Result<Header, SnapshotError> {
    let path = input.path.to_path_buf();
    let mut fixed = [0u8; HEADER_FIXED_BYTES];
    input.read_exact(&mut fixed[..8], "the header")?;
    if fixed[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path });
    }
    input.read_exact(&mut fixed[8..], "the header")?;
    let version = le_u32(&fixed, 8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownVersion {
            path,
            found: version,
        });
    }
    let header_len = u64::from(le_u32(&fixed, 12));
    let node_id_len = usize::from(le_u16(&fixed, 52));
    if header_len != (HEADER_FIXED_BYTES + node_id_len + 4) as u64 || header_len > MAX_HEADER_BYTES
    {
        return Err(input.corrupt(
            12,
            format!("header length {header_len} does not match a node id of {node_id_len} bytes"),
        ));
    }
    let mut rest = Vec::new();
    input.read_vec(&mut rest, node_id_len + 4, "the header")?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fixed);
    crc.update(&rest[..node_id_len]);
    let stored = le_u32(&rest, node_id_len);
    if crc.clone().finalize() != stored {
        return Err(input.corrupt(0, "header checksum mismatch"));
    }
    crc.update(&rest[node_id_len..]);
    let header = Header {
        created_at_ms: le_u64(&fixed, 16),
        start_version: le_u64(&fixed, 24),
        flush_floor: le_u64(&fixed, 32),
        max_key_bytes: u64::from(le_u32(&fixed, 40)),
        max_value_bytes: u64::from(le_u32(&fixed, 44)),
        block_bytes: u64::from(le_u32(&fixed, 48)),
        file_crc: crc,
    };
    if header.max_key_bytes == 0
        || header.max_key_bytes > MAX_KEY_LEN as u64
        || header.max_value_bytes > MAX_VALUE_BYTES_CAP
        || header.block_bytes > MAX_BLOCK_BYTES_CAP
    {
        return Err(input.corrupt(
            40,
            format!(
                "header limits out of range (max key {} B, max value {} B, block {} B)",
                header.max_key_bytes, header.max_value_bytes, header.block_bytes
            ),
        ));
    }
    let node_id = String::from_utf8_lossy(&rest[..node_id_len]);
    if node_id != expected_node_id {
        return Err(SnapshotError::OtherNode {
            path,
            found: node_id.into_owned(),
            expected: expected_node_id.to_owned(),
        });
    }
    Ok(header)
}

fn load_blocks(
    store: &Store,
    input: &mut Input<'_>,
    header: &Header,
    now_ms: u64,
) -> Result<LoadInfo, SnapshotError> {
    let path = input.path.to_path_buf();
    let max_record = RECORD_HEADER_BYTES as u64 + header.max_key_bytes + header.max_value_bytes;
    let max_payload = header.block_bytes.max(max_record);
    // The CRC of every byte read so far (the header's included), for the trailer's check.
    let mut file_crc = header.file_crc.clone();
    let mut info = LoadInfo {
        entries: 0,
        tombstones: 0,
        skipped_expired: 0,
        skipped_other: 0,
        bytes: 0,
        start_version: header.start_version,
        created_at_ms: header.created_at_ms,
        age: Duration::ZERO,
        duration: Duration::ZERO,
    };
    let mut records = 0u64;
    let mut blocks = 0u64;
    let mut payload = Vec::new();
    loop {
        let block_offset = input.offset;
        let mut head = [0u8; BLOCK_HEADER_BYTES];
        input.read_exact(&mut head, "a block header (no trailer)")?;
        let tag = head[0];
        let len = u64::from(le_u32(&head, 1));
        let count = u64::from(le_u32(&head, 5));
        match tag {
            TAG_RECORDS => {
                if len == 0 || len > max_payload {
                    return Err(input.corrupt(
                        block_offset + 1,
                        format!("block length {len} is out of range (1..={max_payload})"),
                    ));
                }
                if count == 0 || count > len / RECORD_HEADER_BYTES as u64 {
                    return Err(input.corrupt(
                        block_offset + 5,
                        format!("block record count {count} does not fit its {len} bytes"),
                    ));
                }
            }
            TAG_END => {
                if len != TRAILER_PAYLOAD_BYTES as u64 || count != 0 {
                    return Err(input.corrupt(
                        block_offset + 1,
                        format!("trailer length {len} or count {count} is wrong"),
                    ));
                }
            }
            other => {
                return Err(input.corrupt(block_offset, format!("unknown block tag {other}")));
            }
        }
        input.read_vec(&mut payload, len as usize, "a block")?;
        let mut crc_bytes = [0u8; 4];
        input.read_exact(&mut crc_bytes, "a block checksum")?;
        let mut block_crc = crc32fast::Hasher::new();
        block_crc.update(&head);
        block_crc.update(&payload);
        if tag == TAG_END {
            // The file CRC covers everything before its own field.
            let mut before = file_crc.clone();
            before.update(&head);
            before.update(&payload[..TRAILER_PAYLOAD_BYTES - 4]);
            if block_crc.finalize() != u32::from_le_bytes(crc_bytes) {
                return Err(input.corrupt(block_offset, "trailer checksum mismatch"));
            }
            if before.finalize() != le_u32(&payload, 24) {
                return Err(input.corrupt(
                    block_offset + BLOCK_HEADER_BYTES as u64 + 24,
                    "whole-file checksum mismatch",
                ));
            }
            let total = le_u64(&payload, 0);
            let total_blocks = le_u64(&payload, 8);
            if total != records || total_blocks != blocks {
                return Err(input.corrupt(
                    block_offset,
                    format!(
                        "the trailer counts {total} records in {total_blocks} blocks, the file \
                         holds {records} in {blocks}"
                    ),
                ));
            }
            if !input.at_end()? {
                return Err(input.corrupt(input.offset, "bytes after the trailer"));
            }
            let end_floor = le_u64(&payload, 16).max(header.flush_floor);
            if end_floor > 0 {
                store
                    .flush_through(end_floor, now_ms)
                    .map_err(|source| SnapshotError::Store {
                        path: path.clone(),
                        offset: block_offset,
                        source,
                    })?;
            }
            info.bytes = input.offset;
            return Ok(info);
        }
        let crc = block_crc.clone().finalize();
        if crc != u32::from_le_bytes(crc_bytes) {
            return Err(input.corrupt(block_offset, "block checksum mismatch"));
        }
        file_crc.combine(&block_crc);
        file_crc.update(&crc_bytes);
        let payload_offset = block_offset + BLOCK_HEADER_BYTES as u64;
        let decoded = apply_records(store, &payload, count, header, now_ms, &mut info).map_err(
            |(at, problem)| match problem {
                Problem::Corrupt(what) => input.corrupt(payload_offset + at as u64, what),
                Problem::Store(source) => SnapshotError::Store {
                    path: path.clone(),
                    offset: payload_offset + at as u64,
                    source,
                },
            },
        )?;
        records += decoded;
        blocks += 1;
    }
}

enum Problem {
    Corrupt(String),
    Store(StoreError),
}

/// Decodes and applies the `count` records of a verified block; returns how many there were,
/// or the offset in `payload` of the bad one and what is wrong.
fn apply_records(
    store: &Store,
    payload: &[u8],
    count: u64,
    header: &Header,
    now_ms: u64,
    info: &mut LoadInfo,
) -> Result<u64, (usize, Problem)> {
    let corrupt = |at: usize, what: String| Err((at, Problem::Corrupt(what)));
    let mut at = 0;
    let mut n = 0u64;
    while at < payload.len() {
        if n == count {
            return corrupt(at, format!("more records than the block's count ({count})"));
        }
        if payload.len() - at < RECORD_HEADER_BYTES {
            return corrupt(at, "record header cut short by the block's end".to_owned());
        }
        let flags = payload[at];
        let key_len = usize::from(le_u16(payload, at + 1));
        let value_len = le_u32(payload, at + 3) as usize;
        let version = le_u64(payload, at + 7);
        let expires = le_u64(payload, at + 15);
        if flags & !FLAG_TOMBSTONE != 0 {
            return corrupt(at, format!("unknown record flags {flags:#04x}"));
        }
        let tombstone = flags & FLAG_TOMBSTONE != 0;
        if key_len == 0 || key_len as u64 > header.max_key_bytes {
            return corrupt(
                at,
                format!(
                    "key length {key_len} is out of range (1..={})",
                    header.max_key_bytes
                ),
            );
        }
        if value_len as u64 > header.max_value_bytes || (tombstone && value_len != 0) {
            return corrupt(
                at,
                format!(
                    "value length {value_len} is out of range (0..={}{})",
                    header.max_value_bytes,
                    if tombstone { ", 0 for a tombstone" } else { "" }
                ),
            );
        }
        if version == 0 || expires > MAX_EXPIRY_MS {
            return corrupt(at, format!("version {version} or expiry {expires} invalid"));
        }
        let end = at + RECORD_HEADER_BYTES + key_len + value_len;
        if end > payload.len() {
            return corrupt(at, "record runs past the block's end".to_owned());
        }
        let key = &payload[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + key_len];
        let value = (!tombstone).then(|| &payload[at + RECORD_HEADER_BYTES + key_len..end]);
        if expires != 0 && expires <= now_ms {
            info.skipped_expired += 1;
        } else if version <= header.flush_floor
            || store.check_key(key).is_err()
            || value.is_some_and(|v| store.check_value(v).is_err())
        {
            info.skipped_other += 1;
        } else {
            let expires_at = (expires != 0).then_some(expires);
            match store.apply(key, value, version, expires_at, now_ms) {
                Ok(true) => {
                    info.entries += 1;
                    info.tombstones += u64::from(tombstone);
                }
                Ok(false) | Err(StoreError::MemoryFull { .. }) => info.skipped_other += 1,
                Err(error) => return Err((at, Problem::Store(error))),
            }
        }
        at = end;
        n += 1;
    }
    if n != count {
        return corrupt(
            at,
            format!("the block holds {n} records, its header says {count}"),
        );
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::store::{SetOptions, StoreConfig, VersionedItem};

    /// Unix ms the tests' stores run at.
    const NOW: u64 = 1_700_000_000_000;
    /// The tombstone grace of the tests' stores (10 min).
    const GRACE: u64 = 600_000;
    const HOUR: Duration = Duration::from_secs(3600);

    /// A fresh directory under the system's temp dir, removed at drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ringcache-snapshot-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join(FILE_NAME)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config() -> StoreConfig {
        StoreConfig {
            shards: 8,
            tombstone_grace_ms: GRACE,
            max_memory_bytes: 64 << 20,
            ..StoreConfig::default()
        }
    }

    fn new_store() -> Store {
        Store::new(config())
    }

    fn set(store: &Store, key: &str, value: &[u8], ttl_ms: Option<u64>) {
        let options = SetOptions {
            ttl_ms,
            ..SetOptions::default()
        };
        store.set(key.as_bytes(), value, options, NOW).unwrap();
    }

    /// Every entry of `store`, tombstones and expired ones included.
    fn contents(store: &Store) -> BTreeMap<Vec<u8>, VersionedItem> {
        let mut all = BTreeMap::new();
        for shard in 0..store.shard_count() {
            let mut cursor = Some(0);
            while let Some(at) = cursor {
                let (items, next) = store.scan(shard, at, 256);
                all.extend(items.into_iter().map(|(k, v)| (k.to_vec(), v)));
                cursor = next;
            }
        }
        all
    }

    fn write_at(store: &Store, path: &Path, now_ms: u64) -> SnapshotInfo {
        write(store, path, "node-a", &WriteOptions::at(now_ms)).unwrap()
    }

    fn loaded(outcome: Result<LoadOutcome, SnapshotError>) -> LoadInfo {
        match outcome.unwrap() {
            LoadOutcome::Loaded(info) => info,
            LoadOutcome::NoSnapshot => panic!("no snapshot"),
        }
    }

    /// A store of `n` small values, a few with TTLs, and a few tombstones.
    fn sample(n: usize, value_len: usize) -> Store {
        let store = new_store();
        for i in 0..n {
            let ttl = (i % 3 == 0).then_some(3_600_000 + i as u64);
            set(
                &store,
                &format!("key:{i:04}"),
                &vec![b'a' + (i % 26) as u8; value_len],
                ttl,
            );
        }
        for i in (0..n).step_by(7) {
            store.delete(format!("key:{i:04}").as_bytes(), NOW).unwrap();
        }
        store
    }

    #[test]
    fn a_snapshot_loads_back_every_value_ttl_version_tombstone_and_the_flush_floor() {
        let dir = TestDir::new("round-trip");
        let store = new_store();
        set(&store, "flushed", b"gone", None);
        let floor = store.hlc().next(NOW);
        store.flush_through(floor, NOW).unwrap();
        set(&store, "plain", b"value", None);
        set(&store, "empty", b"", None);
        set(&store, "ttl", b"short-lived", Some(60_000));
        set(&store, "deleted", b"x", None);
        store.delete(b"deleted", NOW).unwrap();
        let big = vec![7u8; 1 << 20];
        set(&store, "big", &big, None);
        for i in 0..2_000 {
            set(
                &store,
                &format!("k{i}"),
                format!("v{i}").as_bytes(),
                Some(1_000 + i),
            );
        }
        let before = contents(&store);
        let info = write_at(&store, &dir.file(), NOW);
        assert_eq!(info.entries, before.len() as u64);
        assert_eq!(info.tombstones, 1);
        assert_eq!(info.start_version, store.hlc().current());
        assert_eq!(info.bytes, std::fs::metadata(dir.file()).unwrap().len());
        assert_eq!(dir.names(), [FILE_NAME], "no temporary file is left");

        let fresh = new_store();
        let loaded = loaded(load(&fresh, &dir.file(), "node-a", NOW + 500, HOUR));
        assert_eq!(loaded.entries, before.len() as u64);
        assert_eq!(loaded.tombstones, 1);
        assert_eq!((loaded.skipped_expired, loaded.skipped_other), (0, 0));
        assert_eq!(loaded.start_version, info.start_version);
        assert_eq!(loaded.age, Duration::from_millis(500));
        assert_eq!(loaded.bytes, info.bytes);
        assert_eq!(contents(&fresh), before, "every entry, version and expiry");
        assert_eq!(
            fresh.get_versioned(b"deleted").unwrap(),
            store.get_versioned(b"deleted").unwrap()
        );
        assert_eq!(
            fresh.get(b"big", NOW).unwrap().unwrap().value.as_ref(),
            &big[..]
        );
        assert_eq!(fresh.flush_floor(), floor, "the flush floor is restored");
        assert!(
            !fresh
                .apply(b"flushed", Some(b"late"), floor, None, NOW)
                .unwrap(),
            "a copy from before the flush stays refused"
        );
        assert!(
            fresh.hlc().current() >= info.start_version,
            "the clock resumes after every version of the snapshot"
        );
        assert!(fresh.hlc().next(NOW) > info.start_version);
    }

    #[test]
    fn an_empty_store_round_trips() {
        let dir = TestDir::new("empty");
        let info = write_at(&new_store(), &dir.file(), NOW);
        assert_eq!(info.entries, 0);
        let fresh = new_store();
        let loaded = loaded(load(&fresh, &dir.file(), "node-a", NOW, HOUR));
        assert_eq!(loaded.entries, 0);
        assert_eq!(fresh.entry_count(), 0);
    }

    /// A small snapshot of several blocks: 50 entries of 100-byte values.
    fn small_snapshot(dir: &TestDir) -> Vec<u8> {
        let store = sample(50, 100);
        let options = WriteOptions {
            block_bytes: 4096,
            ..WriteOptions::at(NOW)
        };
        write(&store, &dir.file(), "node-a", &options).unwrap();
        let bytes = std::fs::read(dir.file()).unwrap();
        assert!(
            bytes.len() > 4096 + 512,
            "more than one block: {} bytes",
            bytes.len()
        );
        bytes
    }

    #[test]
    fn a_byte_changed_at_any_offset_is_an_error_and_leaves_the_store_empty() {
        let dir = TestDir::new("corrupt");
        let good = small_snapshot(&dir);
        let path = dir.0.join("damaged.rcs");
        for offset in 0..good.len() {
            for flip in [0x01u8, 0xff] {
                let mut bad = good.clone();
                bad[offset] ^= flip;
                std::fs::write(&path, &bad).unwrap();
                let fresh = new_store();
                let result = load(&fresh, &path, "node-a", NOW, HOUR);
                assert!(
                    result.is_err(),
                    "byte {offset} ^ {flip:#04x} loaded: {result:?}"
                );
                assert_eq!(
                    fresh.entry_count(),
                    0,
                    "byte {offset}: the store is left empty"
                );
            }
        }
        // The untouched file loads.
        let fresh = new_store();
        assert_eq!(
            loaded(load(&fresh, &dir.file(), "node-a", NOW, HOUR)).entries,
            50
        );
    }

    #[test]
    fn a_truncated_or_extended_file_is_an_error_and_leaves_the_store_empty() {
        let dir = TestDir::new("truncated");
        let good = small_snapshot(&dir);
        let path = dir.0.join("short.rcs");
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            let fresh = new_store();
            let error = load(&fresh, &path, "node-a", NOW, HOUR).unwrap_err();
            assert!(
                matches!(
                    error,
                    SnapshotError::Truncated { .. }
                        | SnapshotError::NotASnapshot { .. }
                        | SnapshotError::Corrupt { .. }
                ),
                "{len} bytes: {error}"
            );
            assert_eq!(
                fresh.entry_count(),
                0,
                "{len} bytes: the store is left empty"
            );
        }
        let error = {
            std::fs::write(&path, &good[..good.len() - 10]).unwrap();
            load(&new_store(), &path, "node-a", NOW, HOUR).unwrap_err()
        };
        assert!(error.to_string().contains("truncated"), "{error}");
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let fresh = new_store();
        let error = load(&fresh, &path, "node-a", NOW, HOUR).unwrap_err();
        assert!(error.to_string().contains("after the trailer"), "{error}");
        assert_eq!(fresh.entry_count(), 0);
    }

    #[test]
    fn lengths_beyond_the_limits_are_corruption_not_allocations() {
        let dir = TestDir::new("lengths");
        let good = small_snapshot(&dir);
        let header_len = le_u32(&good, 12) as usize;
        let path = dir.0.join("bad.rcs");
        // A block length of almost 4 GiB.
        let mut bad = good.clone();
        bad[header_len + 1..header_len + 5].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let error = load(&new_store(), &path, "node-a", NOW, HOUR).unwrap_err();
        let SnapshotError::Corrupt { offset, what, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*offset, header_len as u64 + 1);
        assert!(what.contains("block length"), "{error}");
        // A record whose value length is past the header's limit, in a block with a valid
        // checksum: refused as corrupt before anything is read for it.
        let mut bad = good.clone();
        let record = header_len + BLOCK_HEADER_BYTES;
        bad[record + 3..record + 7].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let payload_len = le_u32(&bad, header_len + 1) as usize;
        let block_end = header_len + BLOCK_HEADER_BYTES + payload_len;
        let crc = crc32fast::hash(&bad[header_len..block_end]);
        bad[block_end..block_end + 4].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let fresh = new_store();
        let error = load(&fresh, &path, "node-a", NOW, HOUR).unwrap_err();
        let SnapshotError::Corrupt { offset, what, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*offset, record as u64);
        assert!(what.contains("value length"), "{error}");
        assert_eq!(fresh.entry_count(), 0);
    }

    #[test]
    fn records_over_the_loading_stores_limits_are_skipped() {
        let dir = TestDir::new("limits");
        let store = new_store();
        set(&store, "small", b"ok", None);
        set(&store, "large", &[1u8; 2048], None);
        write_at(&store, &dir.file(), NOW);
        let fresh = Store::new(StoreConfig {
            max_value_bytes: 1024,
            ..config()
        });
        let info = loaded(load(&fresh, &dir.file(), "node-a", NOW, HOUR));
        assert_eq!((info.entries, info.skipped_other), (1, 1));
        assert!(fresh.get(b"large", NOW).unwrap().is_none());
    }

    #[test]
    fn expired_entries_are_left_out_when_writing_and_dropped_when_loading() {
        let dir = TestDir::new("expiry");
        let store = new_store();
        set(&store, "forever", b"v", None);
        set(&store, "one-second", b"v", Some(1_000));
        set(&store, "one-minute", b"v", Some(60_000));
        set(&store, "one-hour", b"v", Some(3_600_000));
        set(&store, "deleted", b"v", None);
        store.delete(b"deleted", NOW).unwrap(); // kept until NOW + GRACE
        // Written 2 s later: the one-second key has expired already.
        let info = write_at(&store, &dir.file(), NOW + 2_000);
        assert_eq!((info.entries, info.skipped_expired), (4, 1));
        // Loaded 2 min later: the one-minute key has expired meanwhile.
        let fresh = new_store();
        let info = loaded(load(&fresh, &dir.file(), "node-a", NOW + 120_000, HOUR));
        assert_eq!((info.entries, info.skipped_expired), (3, 1));
        assert!(fresh.get_versioned(b"one-minute").unwrap().is_none());
        assert!(fresh.get_versioned(b"deleted").unwrap().is_some());
        // Loaded after the tombstone's grace: only live values come back.
        let fresh = new_store();
        let info = loaded(load(&fresh, &dir.file(), "node-a", NOW + GRACE + 1, HOUR));
        assert_eq!((info.entries, info.skipped_expired), (2, 2));
        assert!(fresh.get_versioned(b"deleted").unwrap().is_none());
        assert!(fresh.get(b"one-hour", NOW + GRACE + 1).unwrap().is_some());
    }

    #[test]
    fn another_nodes_an_old_an_unknown_or_a_future_snapshot_is_refused() {
        let dir = TestDir::new("refused");
        let store = sample(20, 10);
        write_at(&store, &dir.file(), NOW);
        let refused = |node: &str, now_ms: u64, max_age: Duration| {
            let fresh = new_store();
            let error = load(&fresh, &dir.file(), node, now_ms, max_age).unwrap_err();
            assert_eq!(fresh.entry_count(), 0);
            error
        };
        let error = refused("node-b", NOW, HOUR);
        assert!(matches!(error, SnapshotError::OtherNode { .. }), "{error}");
        assert!(error.to_string().contains("node-a"), "{error}");
        let error = refused("node-a", NOW + 11 * 60_000, Duration::from_secs(600));
        assert!(matches!(error, SnapshotError::TooOld { .. }), "{error}");
        assert!(error.to_string().contains("--snapshot-max-age"), "{error}");
        // Raising the limit loads it (a whole-cluster restart).
        let fresh = new_store();
        let info = loaded(load(&fresh, &dir.file(), "node-a", NOW + 11 * 60_000, HOUR));
        assert!(info.entries > 0);
        assert_eq!(info.age, Duration::from_secs(660));
        // Versions far ahead of the loading node's clock (its clock was set back).
        let error = refused("node-a", NOW - 3_600_000, HOUR);
        assert!(
            matches!(error, SnapshotError::FromTheFuture { .. }),
            "{error}"
        );
        // Another format version, with a valid header checksum.
        let mut bytes = std::fs::read(dir.file()).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let header_len = le_u32(&bytes, 12) as usize;
        let crc = crc32fast::hash(&bytes[..header_len - 4]);
        bytes[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.file(), &bytes).unwrap();
        let error = refused("node-a", NOW, HOUR);
        assert!(
            matches!(error, SnapshotError::UnknownVersion { found: 2, .. }),
            "{error}"
        );
        std::fs::write(dir.file(), b"not a snapshot at all").unwrap();
        let error = refused("node-a", NOW, HOUR);
        assert!(
            matches!(error, SnapshotError::NotASnapshot { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_missing_file_is_no_snapshot_and_a_full_store_is_refused() {
        let dir = TestDir::new("missing");
        let fresh = new_store();
        assert_eq!(
            load(&fresh, &dir.file(), "node-a", NOW, HOUR).unwrap(),
            LoadOutcome::NoSnapshot
        );
        write_at(&sample(5, 5), &dir.file(), NOW);
        set(&fresh, "already", b"here", None);
        let error = load(&fresh, &dir.file(), "node-a", NOW, HOUR).unwrap_err();
        assert!(
            matches!(error, SnapshotError::StoreNotEmpty { entries: 1, .. }),
            "{error}"
        );
        assert!(
            fresh.get(b"already", NOW).unwrap().is_some(),
            "left as it was"
        );
    }

    #[test]
    fn a_write_concurrent_with_writers_completes_and_loads() {
        let dir = TestDir::new("concurrent");
        let store = Arc::new(new_store());
        for i in 0..20_000 {
            set(
                &store,
                &format!("stable:{i}"),
                format!("v{i}").as_bytes(),
                None,
            );
        }
        for i in 0..1_000 {
            set(&store, &format!("hot:{i}"), b"0", None);
        }
        let stable = contents(&store);
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (store, done) = (store.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    // Bounded: stops when the snapshot is written or after 2 million writes.
                    while !done.load(Ordering::Relaxed) && n < 2_000_000 {
                        let key = format!("hot:{}", n % 1_000);
                        store
                            .set(
                                key.as_bytes(),
                                format!("{t}-{n}").as_bytes(),
                                SetOptions::default(),
                                NOW,
                            )
                            .unwrap();
                        let fresh = format!("new:{t}:{n}");
                        store
                            .set(fresh.as_bytes(), b"x", SetOptions::default(), NOW)
                            .unwrap();
                        if n.is_multiple_of(3) {
                            store.delete(fresh.as_bytes(), NOW).unwrap();
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let options = WriteOptions {
            block_bytes: 4096,
            batch_entries: 16,
            ..WriteOptions::at(NOW)
        };
        let info = write(&store, &dir.file(), "node-a", &options).unwrap();
        done.store(true, Ordering::Relaxed);
        let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(info.entries >= stable.len() as u64, "{info:?}");
        let fresh = new_store();
        let loaded = loaded(load(&fresh, &dir.file(), "node-a", NOW, HOUR));
        assert!(loaded.entries >= stable.len() as u64);
        for (key, item) in &stable {
            let got = fresh
                .get_versioned(key)
                .unwrap()
                .expect("present all along");
            if key.starts_with(b"stable:") {
                assert_eq!(&got, item, "untouched keys come back exactly");
            } else {
                assert!(
                    got.version >= item.version,
                    "hot keys at their version or later"
                );
            }
        }
        assert!(written > 0);
    }

    #[test]
    fn the_yield_hook_hears_of_every_block_and_its_bytes() {
        let dir = TestDir::new("yield");
        let store = sample(50, 100);
        let heard = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let options = WriteOptions {
            block_bytes: 4096,
            yield_to: Some(YieldTo(Arc::new({
                let (heard, calls) = (heard.clone(), calls.clone());
                move |bytes| {
                    heard.fetch_add(bytes, Ordering::Relaxed);
                    calls.fetch_add(1, Ordering::Relaxed);
                    Duration::ZERO
                }
            }))),
            ..WriteOptions::at(NOW)
        };
        let info = write(&store, &dir.file(), "node-a", &options).unwrap();
        assert!(calls.load(Ordering::Relaxed) >= 2, "several blocks");
        // Every record block, each told once: at most the file less its header and trailer.
        let heard = heard.load(Ordering::Relaxed);
        assert!(
            heard > 50 * 100 && heard < info.bytes,
            "{heard} of {}",
            info.bytes
        );
    }

    #[test]
    fn pacing_keeps_the_average_at_the_rate() {
        let mib = 1 << 20;
        assert_eq!(
            pace_delay(mib, 0, Duration::ZERO),
            Duration::ZERO,
            "0: unthrottled"
        );
        assert_eq!(pace_delay(0, mib, Duration::ZERO), Duration::ZERO);
        assert_eq!(pace_delay(mib, mib, Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            pace_delay(mib, mib, Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(
            pace_delay(256 * mib, 256 * mib, Duration::from_secs(2)),
            Duration::ZERO,
            "behind schedule: no sleep"
        );
        assert_eq!(
            pace_delay(3 * mib, 2 * mib, Duration::from_millis(500)),
            Duration::from_millis(1_000)
        );
        assert_eq!(
            pace_delay(u64::MAX, 1, Duration::ZERO),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn a_failed_or_cancelled_write_keeps_the_previous_snapshot() {
        let dir = TestDir::new("failed");
        let old = sample(30, 10);
        write_at(&old, &dir.file(), NOW);
        let good = std::fs::read(dir.file()).unwrap();
        let newer = sample(200, 50);
        // Cancelled part way (at its first block).
        let cancel = CancellationToken::new();
        cancel.cancel();
        let options = WriteOptions {
            cancel: Some(cancel),
            ..WriteOptions::at(NOW)
        };
        let error = write(&newer, &dir.file(), "node-a", &options).unwrap_err();
        assert!(matches!(error, SnapshotError::Cancelled { .. }), "{error}");
        assert_eq!(std::fs::read(dir.file()).unwrap(), good);
        assert_eq!(dir.names(), [FILE_NAME], "the temporary file is removed");
        // Failing at the rename, after the whole file was written: the target is a directory.
        let target = dir.0.join("occupied");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"x").unwrap();
        let error = write(&newer, &target, "node-a", &WriteOptions::at(NOW)).unwrap_err();
        assert!(error.to_string().contains("rename"), "{error}");
        assert_eq!(dir.names(), ["occupied", FILE_NAME]);
        // A directory that does not exist.
        let error = write(
            &newer,
            &dir.0.join("no/such/dir/s.rcs"),
            "node-a",
            &WriteOptions::at(NOW),
        )
        .unwrap_err();
        assert!(matches!(error, SnapshotError::Io { .. }), "{error}");
        // The good snapshot still loads.
        let fresh = new_store();
        assert_eq!(
            loaded(load(&fresh, &dir.file(), "node-a", NOW, HOUR)).entries,
            contents(&old).len() as u64
        );
    }

    #[test]
    fn temporary_files_of_dead_writers_are_removed() {
        let dir = TestDir::new("stale");
        let file = dir.file();
        write_at(&sample(5, 5), &file, NOW);
        // A pid above the kernel's limit (4,194,304) never runs; ours does.
        let dead = dir.0.join(format!("{FILE_NAME}.tmp.4294967295.0"));
        let ours = dir
            .0
            .join(format!("{FILE_NAME}.tmp.{}.7", std::process::id()));
        let other = dir.0.join("other.tmp.4294967295.0");
        for path in [&dead, &ours, &other] {
            std::fs::write(path, b"partial").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&file), 1);
        assert!(!dead.exists());
        assert!(ours.exists() && other.exists() && file.exists());
        assert_eq!(remove_stale_temp_files(&dir.0.join("missing-dir/x.rcs")), 0);
    }

    #[tokio::test]
    async fn a_node_writes_its_snapshot_and_a_restarted_node_loads_it() {
        use crate::clock::ManualClock;
        use crate::config::Config;
        use crate::node::Node;
        let dir = TestDir::new("node");
        let mut config = Config::for_test();
        config.snapshot.data_dir = Some(dir.0.clone());
        let clock = Arc::new(ManualClock::new(NOW));
        let node = Node::with_clock(config.clone(), clock.clone());
        node.store()
            .set(b"k", b"v", SetOptions::default(), NOW)
            .unwrap();
        let info = node.write_snapshot(None).await.unwrap();
        assert_eq!(info.entries, 1);
        let text = node
            .metrics()
            .render(&node.store().stats(), 1, Duration::ZERO);
        assert!(text.contains("ringcache_snapshot_bytes "), "{text}");
        assert!(
            text.contains(&format!("ringcache_snapshot_bytes {}", info.bytes)),
            "{text}"
        );
        clock.advance(Duration::from_secs(5));
        let restarted = Node::with_clock(config.clone(), clock.clone());
        let LoadOutcome::Loaded(loaded) = restarted.load_snapshot().await.unwrap() else {
            panic!("not loaded")
        };
        assert_eq!(loaded.entries, 1);
        assert_eq!(loaded.age, Duration::from_secs(5));
        assert_eq!(
            restarted
                .store()
                .get(b"k", NOW)
                .unwrap()
                .unwrap()
                .value
                .as_ref(),
            b"v"
        );
        let text = restarted
            .metrics()
            .render(&restarted.store().stats(), 1, Duration::ZERO);
        assert!(
            text.contains("ringcache_snapshot_loaded_entries 1"),
            "{text}"
        );
        // Without a data directory, snapshots are off.
        let off = Node::with_clock(Config::for_test(), clock);
        assert!(matches!(
            off.write_snapshot(None).await,
            Err(SnapshotError::Disabled)
        ));
    }
}
