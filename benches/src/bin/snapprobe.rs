//! Measures the snapshot file: fills a `Store` with `--gib` GiB of `--value-bytes` values
//! (default 1 GiB of 1 KiB values), writes a snapshot to `--dir` (default: the system's temp
//! dir), loads it into a fresh store, and prints MB/s each way and the resident memory before,
//! during (the peak, sampled every 5 ms) and after the write. Build it in release:
//!
//! `cargo build --release -p ringcache-bench --features probes --bin snapprobe`
//! `target/release/snapprobe --gib 1 --dir /tmp/snap`
//!
//! `--rate BYTES_PER_SEC` throttles the write as `--snapshot-rate` does (default 0: unthrottled).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringcache_bench::{bench_key, rss_bytes, take_flag};
use ringcache_server::snapshot::{self, LoadOutcome, WriteOptions};
use ringcache_server::store::{SetOptions, Store, StoreConfig};

/// Unix ms the probe's store runs at (the store never reads the clock).
const NOW: u64 = 1_700_000_000_000;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gib: f64 = take_flag(&mut args, "--gib")?
        .map_or(Ok(1.0), |v| v.parse())
        .context("--gib must be a number")?;
    let value_len: usize = take_flag(&mut args, "--value-bytes")?
        .map_or(Ok(1024), |v| v.parse())
        .context("--value-bytes must be a number")?;
    let rate: u64 = take_flag(&mut args, "--rate")?
        .map_or(Ok(0), |v| v.parse())
        .context("--rate must be a number of bytes per second")?;
    let dir = take_flag(&mut args, "--dir")?.map_or_else(
        || std::env::temp_dir().join("ringcache-snapprobe"),
        Into::into,
    );
    if !args.is_empty() {
        bail!(
            "unknown arguments {args:?}; usage: snapprobe [--gib G] [--value-bytes V] [--rate B/s] [--dir PATH]"
        );
    }
    if value_len == 0 || gib.is_nan() || gib <= 0.0 {
        bail!("--gib and --value-bytes must be positive");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(snapshot::FILE_NAME);
    let n = ((gib * (1u64 << 30) as f64) / value_len as f64).ceil() as u64;
    let config = StoreConfig {
        max_memory_bytes: usize::MAX / 2,
        max_value_bytes: value_len.max(4 * 1024 * 1024),
        ..StoreConfig::default()
    };

    let rss_start = rss_bytes()?;
    let store = Store::new(config.clone());
    let mut value = vec![0u8; value_len];
    let fill = Instant::now();
    for i in 0..n {
        value[..8.min(value_len)].copy_from_slice(&i.to_le_bytes()[..8.min(value_len)]);
        store
            .set(bench_key(i).as_bytes(), &value, SetOptions::default(), NOW)
            .context("fill")?;
    }
    println!(
        "filled              {n} keys of {value_len} B in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let rss_before = rss_bytes()?;
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_bytes() {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let options = WriteOptions {
        rate_bytes_per_sec: rate,
        ..WriteOptions::at(NOW)
    };
    let written = snapshot::write(&store, &path, "snapprobe", &options);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let info = written?;
    let rss_after = rss_bytes()?;
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_after);
    let write_secs = info.duration.as_secs_f64();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "write               {} entries, {:.1} MiB in {:.2} s: {:.0} MB/s",
        info.entries,
        mib(info.bytes),
        write_secs,
        info.bytes as f64 / 1e6 / write_secs
    );
    println!(
        "rss                 before {:.1} MiB, peak during {:.1} MiB, after {:.1} MiB: +{:.2} % at peak",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after),
        100.0 * (rss_peak as f64 - rss_before as f64) / rss_before.max(1) as f64
    );
    drop(store);

    let fresh = Store::new(config);
    let rss_load_before = rss_bytes()?;
    let loaded = snapshot::load(&fresh, &path, "snapprobe", NOW, Duration::from_secs(3600))?;
    let LoadOutcome::Loaded(loaded) = loaded else {
        bail!("the snapshot just written is missing");
    };
    let load_secs = loaded.duration.as_secs_f64();
    println!(
        "load                {} entries, {:.1} MiB in {:.2} s: {:.0} MB/s",
        loaded.entries,
        mib(loaded.bytes),
        load_secs,
        loaded.bytes as f64 / 1e6 / load_secs
    );
    println!(
        "rss                 start {:.1} MiB, before load {:.1} MiB, after load {:.1} MiB",
        mib(rss_start),
        mib(rss_load_before),
        mib(rss_bytes()?)
    );
    if loaded.entries != info.entries {
        bail!("loaded {} entries of {}", loaded.entries, info.entries);
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
