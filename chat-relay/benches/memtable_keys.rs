//! Why the store's format 2 puts a hash in front of its keys: fjall memtable inserts of format
//! 1's keys (`lp(user) ‖ …`, whose first four bytes are the id's length and its first two
//! bytes, shared by most users) against format 2's, the same keys behind a 4-byte hash of
//! their user (inbox, dedupe) or conversation (history) — the codec's `hash4`, FNV-1a.
//!
//! fjall keeps keys as `ByteView`s: up to 20 bytes inline, longer ones on the heap, each with
//! its first four bytes inline as a prefix that a comparison checks first. A memtable insert
//! walks its skiplist comparing keys; when the prefixes tie, the comparison reads the whole
//! key, from the heap for a long one: a cache miss a step. With a hash in front, the prefix
//! decides almost every step.
//!
//! ```sh
//! cargo bench -p chat-relay --bench memtable_keys
//! # MEMTABLE_BENCH_SENDS=400000 MEMTABLE_BENCH_BATCHES=100 MEMTABLE_BENCH_IDS=short,uuid
//! ```
//!
//! The workload is the relay's 1:1 send in key order (what `WriteBatch::sorted_rows` hands the
//! store): a message row, a history row, two inbox rows, a dedupe row, values of their real
//! sizes; 20,000 users. The two layouts fill two databases, batch by batch alternately, so
//! both see the same memtable sizes; the first quarter is warm-up. No fsync. Prints µs of
//! insert time per send and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: fail loudly

mod common;

use std::time::Instant;

use fjall::{Database, KeyspaceCreateOptions};

const USERS: u64 = 20_000;
const TABLES: [&str; 4] = ["messages", "history", "inbox", "dedupe"];

fn lp(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// FNV-1a, 32 bits, as the codec's `hash4` (the codec is private to the crate).
fn hash4(s: &[u8]) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for &b in s {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes()
}

/// `key` with `hash4(of)` in front when `hashed`.
fn key(hashed: bool, of: &[u8], rest: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    if hashed {
        k.extend_from_slice(&hash4(of));
    }
    rest(&mut k);
    k
}

fn user_id(n: u64, uuid: bool) -> String {
    if uuid {
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            (h >> 20) & 0xfff,
            h & 0xffff_ffff_ffff
        )
    } else {
        format!("u{n}")
    }
}

fn run(sends: usize, per_batch: usize, uuid: bool) {
    let dirs = [common::tempdir(), common::tempdir()];
    let dbs: Vec<_> = dirs
        .iter()
        .map(|d| Database::builder(d.path()).open().unwrap())
        .collect();
    let ks: Vec<Vec<_>> = dbs
        .iter()
        .map(|db| {
            TABLES
                .iter()
                .map(|n| db.keyspace(n, KeyspaceCreateOptions::default).unwrap())
                .collect()
        })
        .collect();
    let users: Vec<String> = (0..USERS).map(|n| user_id(n, uuid)).collect();
    let mut rng = common::Rng(1);
    let mut seqs = vec![0u64; USERS as usize];
    let mut msg_id = 1u64 << 40;
    let (message, entry) = (vec![7u8; 150], vec![7u8; 130]);
    let batches = sends / per_batch;
    let (mut secs, mut counted) = ([0f64; 2], [0usize; 2]);
    for i in 0..batches {
        let hashed = i % 2 == 1;
        // (table, key, value)
        let mut rows: Vec<(usize, Vec<u8>, &[u8])> = Vec::with_capacity(per_batch * 5);
        for _ in 0..per_batch {
            let (a, b) = (rng.next() % USERS, rng.next() % USERS);
            let (ua, ub) = (&users[a as usize], &users[b as usize]);
            msg_id += 1;
            rows.push((0, msg_id.to_be_bytes().to_vec(), &message));
            let (x, y) = if ua <= ub { (ua, ub) } else { (ub, ua) };
            let mut conv = vec![b'd'];
            lp(&mut conv, x.as_bytes());
            lp(&mut conv, y.as_bytes());
            let h = key(hashed, &conv, |k| {
                k.extend_from_slice(&conv);
                k.extend_from_slice(&msg_id.to_be_bytes());
            });
            rows.push((1, h, &[]));
            for (n, u) in [(a, ua), (b, ub)] {
                seqs[n as usize] += 1;
                let seq = seqs[n as usize];
                let k = key(hashed, u.as_bytes(), |k| {
                    lp(k, u.as_bytes());
                    k.extend_from_slice(&seq.to_be_bytes());
                });
                rows.push((2, k, &entry));
            }
            let client = format!(
                "chat:{}:{}",
                rng.next() % 1_000_000,
                1_733_000_000_000_000 + rng.next() % 1_000_000_000
            );
            let d = key(hashed, ua.as_bytes(), |k| {
                lp(k, ua.as_bytes());
                k.extend_from_slice(client.as_bytes());
            });
            rows.push((3, d, &[0u8; 16]));
        }
        let t = Instant::now();
        rows.sort_by(|p, q| (p.0, &p.1).cmp(&(q.0, &q.1)));
        let side = usize::from(hashed);
        let mut batch = dbs[side].batch().durability(None);
        for (table, k, v) in rows {
            batch.insert(&ks[side][table], k, v);
        }
        batch.commit().unwrap();
        if i >= batches / 4 {
            secs[side] += t.elapsed().as_secs_f64();
            counted[side] += 1;
        }
    }
    let per_send = |j: usize| secs[j] / (counted[j] * per_batch) as f64 * 1e6;
    println!(
        "{:>5} ids, {per_batch:>4} sends/batch | format 1 keys {:>6.2} µs/send | format 2 (hash first) {:>6.2} µs/send | ratio {:.3}",
        if uuid { "uuid" } else { "short" },
        per_send(0),
        per_send(1),
        per_send(1) / per_send(0),
    );
}

fn main() {
    let sends: usize = common::env_or("MEMTABLE_BENCH_SENDS", 400_000);
    let sizes = common::env_sizes("MEMTABLE_BENCH_BATCHES", "100");
    let ids: String = common::env_or("MEMTABLE_BENCH_IDS", "short,uuid".to_string());
    println!("fjall memtable inserts, {sends} sends of five rows a layout (see the file's doc)");
    for uuid in ids.split(',').map(|s| s.trim() == "uuid") {
        for &b in &sizes {
            run(sends, b, uuid);
        }
    }
}
