//! Commit latency at a steady send rate, long enough for fjall's memtables to rotate: shows
//! when a flush slows the group commit's journal fsync (the node's `send` → `sent` tail).
//!
//! ```sh
//! CHAT_STALL_SECS=60 CHAT_STALL_RATE=8000 cargo bench -p chat-relay --bench flush_stalls
//! # one store: `-- fjall` (as the node opens it: fjall's default, levels 0 and 1
//! # uncompressed) or `-- fjall-lz4` (data blocks LZ4-compressed at every level)
//! ```
//!
//! One thread offers 1:1 sends at the given rate (the simulator's text: `chat:<seq>:<µs>`),
//! the committer takes whatever is pending each time it is free (the node's group commit).
//! Prints commit p50/p99/max, the commits over 20 ms with their time into the run, and the
//! largest send → durable wait.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: fail loudly

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chat_relay::{ChatStore, Directory, FjallStore, IdGen, Limits, Relay, Target};
use hdrhistogram::Histogram;

const USERS: u64 = 4_000;

struct Friends;

impl Directory for Friends {
    fn are_friends(&self, _: &str, _: &str) -> bool {
        true
    }
    fn group_members(&self, _: &str) -> Option<Vec<String>> {
        None
    }
}

fn open(kind: &str, dir: &std::path::Path) -> Arc<dyn ChatStore> {
    match kind {
        "fjall" => Arc::new(FjallStore::open(dir).unwrap()),
        "fjall-lz4" => {
            Arc::new(FjallStore::open_tuned(dir, fjall::PersistMode::SyncAll, true).unwrap())
        }
        other => panic!("unknown store {other}"),
    }
}

struct Shared {
    relay: Relay,
    /// Send time (µs into the run) of the oldest send in the pending batch.
    oldest: Option<u64>,
    done: bool,
}

fn run(kind: &str, rate: f64, secs: f64) {
    let tmp = common::tempdir();
    let store = open(kind, tmp.path());
    let relay = Relay::new(store.clone(), IdGen::new(1).unwrap(), Limits::default()).unwrap();
    let shared = Arc::new((
        Mutex::new(Shared {
            relay,
            oldest: None,
            done: false,
        }),
        Condvar::new(),
    ));
    let start = Instant::now();
    let committer = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut commit = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            let mut wait = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            let mut slow = Vec::new();
            loop {
                let (batch, oldest) = {
                    let (m, cv) = &*shared;
                    let mut g = m.lock().unwrap();
                    loop {
                        if let Some(b) = g.relay.take_batch() {
                            break (b, g.oldest.take());
                        }
                        if g.done {
                            return (commit, wait, slow);
                        }
                        g = cv.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
                    }
                };
                let t = Instant::now();
                store.commit(&batch).unwrap();
                let took = t.elapsed();
                commit.record(took.as_nanos() as u64).unwrap();
                let now_us = start.elapsed().as_micros() as u64;
                if let Some(o) = oldest {
                    wait.record(now_us.saturating_sub(o).max(1) * 1_000)
                        .unwrap();
                }
                if took > Duration::from_millis(20) {
                    slow.push((t.duration_since(start).as_secs_f64(), took, batch.rows()));
                }
                shared.0.lock().unwrap().relay.committed(batch.id);
            }
        })
    };
    let mut seq = 0u64;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let per = Duration::from_secs_f64(1.0 / rate);
    while start.elapsed().as_secs_f64() < secs {
        let due = per * u32::try_from(seq).unwrap();
        if let Some(d) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(d);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = x % USERS;
        let b = (a + 1 + (x >> 20) % (USERS - 1)) % USERS;
        let at = start.elapsed().as_micros() as u64;
        let text = format!("chat:{seq}:{at}");
        let (m, cv) = &*shared;
        let mut g = m.lock().unwrap();
        let now_ms = 1_750_000_000_000 + at / 1000;
        common::assert_new(
            g.relay
                .send(
                    now_ms,
                    &format!("u{a}"),
                    &seq.to_string(),
                    &Target::User(format!("u{b}")),
                    &text,
                    &Friends,
                )
                .unwrap(),
        );
        g.oldest.get_or_insert(at);
        drop(g);
        cv.notify_one();
        seq += 1;
    }
    shared.0.lock().unwrap().done = true;
    shared.1.notify_one();
    let (commit, wait, slow) = committer.join().unwrap();
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "{kind}: {seq} sends in {secs:.0} s, {} commits; commit p50 {:.2} p99 {:.2} max {:.1} ms; oldest send -> durable p50 {:.2} p99 {:.2} max {:.1} ms; {} commits over 20 ms",
        commit.len(),
        ms(commit.value_at_quantile(0.5)),
        ms(commit.value_at_quantile(0.99)),
        ms(commit.max()),
        ms(wait.value_at_quantile(0.5)),
        ms(wait.value_at_quantile(0.99)),
        ms(wait.max()),
        slow.len(),
    );
    for (at, took, rows) in slow {
        println!(
            "    at {at:6.2} s: {:.1} ms ({rows} rows)",
            took.as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs = common::env_or("CHAT_STALL_SECS", 60.0);
    let rate = common::env_or("CHAT_STALL_RATE", 5000.0);
    for kind in ["fjall", "fjall-lz4"] {
        if args.is_empty() || args.iter().any(|a| a == kind) {
            run(kind, rate, secs);
        }
    }
}
