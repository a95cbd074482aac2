//! The measured store comparison: the relay's real workload on both stores, on disk, with an
//! fsync per group commit. Prints a table (criterion's sampling model fits fsync-bound
//! throughput poorly, so this is a plain harness).
//!
//! ```sh
//! cargo bench -p chat-relay --bench store_compare
//! # shorter: CHAT_BENCH_SECS=1 cargo bench -p chat-relay --bench store_compare
//! ```
//!
//! Write rows: for each store and batch size B, the relay takes B sends (1:1: one message row,
//! its history index row, 2 inbox entries, one dedupe row; group: 50 inbox entries instead of
//! 2), hands the batch over, and the store commits it durably. "sends/s" is end to end on one
//! thread (relay CPU + commit); "commit p50/p99" is the store's commit alone.
//! Read rows: `sync` of 500 entries and a history page of 50, from a warm store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: fail loudly

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_relay::{ChatStore, FjallStore, IdGen, Limits, RedbStore, Relay, Target};
use common::{Everyone, TEXT};
use hdrhistogram::Histogram;

const USERS: u64 = 100_000;
const GROUP: usize = 50;

fn open(kind: &str, dir: &Path) -> Arc<dyn ChatStore> {
    match kind {
        "redb" => Arc::new(RedbStore::open(dir).unwrap()),
        "fjall" => Arc::new(FjallStore::open(dir).unwrap()),
        "fjall-nosync" => Arc::new(FjallStore::open_with(dir, fjall::PersistMode::Buffer).unwrap()),
        "fjall-syncdata" => {
            Arc::new(FjallStore::open_with(dir, fjall::PersistMode::SyncData).unwrap())
        }
        _ => unreachable!(),
    }
}

struct WriteResult {
    sends: u64,
    commits: u64,
    elapsed: Duration,
    commit_ns: Histogram<u64>,
    build_per_send: Duration,
}

fn write_run(kind: &str, batch: usize, group: bool, budget: Duration) -> WriteResult {
    let tmp = common::tempdir();
    let store = open(kind, tmp.path());
    let mut relay = Relay::new(store.clone(), IdGen::new(1).unwrap(), Limits::default()).unwrap();
    let dir = Everyone {
        members: (0..GROUP).map(|i| format!("m{i}")).collect(),
    };
    let mut rng = common::Rng(42);
    // the node's shape: one committer thread commits batch after batch while the relay
    // (here: this thread) fills the next one; at most one batch waits for the committer
    let (to_committer, batches) = std::sync::mpsc::sync_channel::<chat_relay::WriteBatch>(1);
    let (done_tx, done) = std::sync::mpsc::channel::<u64>();
    let committer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            for b in batches {
                let t = Instant::now();
                store.commit(&b).unwrap();
                hist.record(t.elapsed().as_nanos() as u64).unwrap();
                done_tx.send(b.id).unwrap();
            }
            hist
        })
    };
    let mut now = 1_750_000_000_000u64;
    let mut taken = 0u64;
    let mut client = 0u64;
    let mut build = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < budget || taken < 5 {
        let t = Instant::now();
        for _ in 0..batch {
            client += 1;
            let cid = client.to_string();
            if group {
                let from = format!("m{}", rng.next() % GROUP as u64);
                common::assert_new(
                    relay
                        .send(now, &from, &cid, &Target::Group("g".into()), TEXT, &dir)
                        .unwrap(),
                );
            } else {
                let a = rng.next() % USERS;
                let b = (a + 1 + rng.next() % (USERS - 1)) % USERS;
                common::assert_new(
                    relay
                        .send(
                            now,
                            &format!("u{a}"),
                            &cid,
                            &Target::User(format!("u{b}")),
                            TEXT,
                            &dir,
                        )
                        .unwrap(),
                );
            }
        }
        let b = relay.take_batch().unwrap();
        build += t.elapsed();
        to_committer.send(b).unwrap();
        taken += 1;
        while let Ok(id) = done.try_recv() {
            relay.committed(id);
        }
        now += 1;
    }
    drop(to_committer);
    let hist = committer.join().unwrap();
    let elapsed = start.elapsed(); // every batch durable
    for id in done.try_iter() {
        relay.committed(id);
    }
    WriteResult {
        sends: taken * batch as u64,
        commits: taken,
        elapsed,
        commit_ns: hist,
        build_per_send: build / (taken * batch as u64) as u32,
    }
}

struct ReadResult {
    sync_ns: Histogram<u64>,
    history_ns: Histogram<u64>,
}

fn read_run(kind: &str, rounds: usize) -> ReadResult {
    let tmp = common::tempdir();
    let store = open(kind, tmp.path());
    let mut relay = Relay::new(store.clone(), IdGen::new(1).unwrap(), Limits::default()).unwrap();
    let dir = Everyone { members: vec![] };
    // 20 users × 2,000 messages each with one partner, plus noise from other users
    let mut client = 0u64;
    for round in 0..2_000u64 {
        let now = 1_750_000_000_000u64 + round;
        for u in 0..20u64 {
            client += 1;
            let (a, b) = if round % 2 == 0 {
                (u, u + 20)
            } else {
                (u + 20, u)
            };
            common::assert_new(
                relay
                    .send(
                        now,
                        &format!("r{a}"),
                        &client.to_string(),
                        &Target::User(format!("r{b}")),
                        TEXT,
                        &dir,
                    )
                    .unwrap(),
            );
        }
        if round % 50 == 49 {
            let b = relay.take_batch().unwrap();
            store.commit(&b).unwrap();
            relay.committed(b.id);
        }
    }
    let reader = relay.reader();
    let mut rng = common::Rng(7);
    let mut sync_ns = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3).unwrap();
    let mut history_ns = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3).unwrap();
    for _ in 0..rounds {
        let u = rng.next() % 40;
        let after = rng.next() % 1_500;
        let t = Instant::now();
        let page = reader.sync(&format!("r{u}"), after, 500).unwrap();
        sync_ns.record(t.elapsed().as_nanos() as u64).unwrap();
        assert_eq!(page.entries.len(), 500);
        let u = rng.next() % 20;
        let t = Instant::now();
        let h = reader
            .history(
                &format!("r{u}"),
                &Target::User(format!("r{}", u + 20)),
                None,
                50,
                &dir,
            )
            .unwrap();
        history_ns.record(t.elapsed().as_nanos() as u64).unwrap();
        assert_eq!(h.len(), 50);
    }
    ReadResult {
        sync_ns,
        history_ns,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks stores by name
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = common::env_or("CHAT_BENCH_SECS", 3.0);
    let budget = Duration::from_secs_f64(secs);
    let kinds: Vec<&str> = ["redb", "fjall", "fjall-syncdata", "fjall-nosync"]
        .into_iter()
        .filter(|k| args.is_empty() || args.iter().any(|a| k.contains(a.as_str())))
        .collect();

    println!(
        "| store | workload | B (sends/commit) | commits | durable sends/s | relay µs/send | commit p50 ms | commit p99 ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for &(group, sizes) in &[
        (false, &[1usize, 16, 128, 1024][..]),
        (true, &[1, 16, 128][..]),
    ] {
        for &b in sizes {
            for &kind in &kinds {
                let r = write_run(kind, b, group, budget);
                println!(
                    "| {kind} | {} | {b} | {} | {:.0} | {:.1} | {:.2} | {:.2} |",
                    if group { "group of 50" } else { "1:1" },
                    r.commits,
                    r.sends as f64 / r.elapsed.as_secs_f64(),
                    r.build_per_send.as_secs_f64() * 1e6,
                    ms(r.commit_ns.value_at_quantile(0.5)),
                    ms(r.commit_ns.value_at_quantile(0.99)),
                );
            }
        }
    }
    println!();
    println!("| store | read | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|");
    for &kind in &kinds {
        let r = read_run(kind, 300);
        println!(
            "| {kind} | sync 500 entries | {:.3} | {:.3} |",
            ms(r.sync_ns.value_at_quantile(0.5)),
            ms(r.sync_ns.value_at_quantile(0.99))
        );
        println!(
            "| {kind} | history page of 50 | {:.3} | {:.3} |",
            ms(r.history_ns.value_at_quantile(0.5)),
            ms(r.history_ns.value_at_quantile(0.99))
        );
    }
}
