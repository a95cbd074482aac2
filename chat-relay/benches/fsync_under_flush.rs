//! How long a small append + `fdatasync` takes while another thread writes and syncs a large
//! file (what fjall's worker does when it flushes a memtable into a table), for two kinds of
//! log file:
//!
//! - `sparse`: sized with `set_len` and never written, the way fjall preallocates its journal:
//!   every append fills a hole, so every sync also commits file-system metadata;
//! - `zeroed`: written with zeros and synced first (a recycled write-ahead log): an append
//!   changes no metadata, so `fdatasync` only writes data and flushes the device cache.
//!
//! The question it answers: would the node's group commit escape the memtable-flush stall
//! with a write-ahead log of its own, preallocated and zero-filled? On this machine it would
//! not (README, chat-relay): both kinds stall alike, because the device cache flush waits
//! for the large write in flight, so the stall comes from the disk and not the file system.
//!
//! ```sh
//! cargo bench -p chat-relay --bench fsync_under_flush
//! # other flush sizes / pacing: FLUSH_MIB=64 FLUSH_SYNC_EVERY_MIB=4 SECS=15
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: fail loudly

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const LOG_BYTES: u64 = 64 << 20;
const APPEND: usize = 2_000;

/// Writes `mib` MiB to a fresh file and syncs it, again and again (half a second apart),
/// syncing every `every` MiB along the way when `every > 0`.
fn flusher(dir: &Path, mib: u64, every: u64, stop: &AtomicBool) {
    let chunk = vec![0x5au8; 1 << 20];
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let path = dir.join(format!("table-{i}"));
        let mut f = File::create(&path).unwrap();
        for k in 1..=mib {
            f.write_all(&chunk).unwrap();
            if every > 0 && k % every == 0 {
                f.sync_data().unwrap();
            }
        }
        f.sync_all().unwrap();
        drop(f);
        std::fs::remove_file(&path).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run(kind: &str, secs: u64, mib: u64, every: u64) {
    let tmp = common::tempdir();
    let log = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(tmp.path().join("log"))
        .unwrap();
    match kind {
        "sparse" => log.set_len(LOG_BYTES).unwrap(),
        _ => {
            let zeros = vec![0u8; 1 << 20];
            for i in 0..LOG_BYTES >> 20 {
                log.write_all_at(&zeros, i << 20).unwrap();
            }
        }
    }
    log.sync_all().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let (dir, stop) = (tmp.path().to_owned(), stop.clone());
        std::thread::spawn(move || flusher(&dir, mib, every, &stop))
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
    let payload = vec![0xa5u8; APPEND];
    let mut off = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        log.write_all_at(&payload, off).unwrap();
        log.sync_data().unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        off = (off + APPEND as u64) % (LOG_BYTES - APPEND as u64);
    }
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    let over = hist
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > 10_000_000)
        .map(|v| v.count_at_value())
        .sum::<u64>();
    println!(
        "| {kind} | {mib} | {every} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {over} |",
        hist.len(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1e6
    );
}

fn main() {
    let secs = common::env_or("SECS", 15);
    let mib = common::env_or("FLUSH_MIB", 64);
    let every = common::env_or("FLUSH_SYNC_EVERY_MIB", 0);
    println!(
        "| log | flush MiB | flush synced every MiB | appends | p50 ms | p99 ms | p99.9 ms | max ms | over 10 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for kind in ["sparse", "zeroed", "sparse", "zeroed"] {
        run(kind, secs, mib, every);
    }
}
