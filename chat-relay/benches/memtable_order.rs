//! Why [`WriteBatch::sorted_rows`](chat_relay::WriteBatch) puts each table's rows in key order:
//! the cost of a group commit's memtable inserts in fjall, in the order the store used to
//! insert them (table by table, each send's message row next to its history row — the
//! baseline) against key order within each table. No fsync (`durability(None)`): this measures
//! the inserts, which fjall applies after the journal write under its journal lock, so every
//! commit waits for them.
//!
//! ```sh
//! cargo bench -p chat-relay --bench memtable_order
//! # other sizes: MEMTABLE_BENCH_SENDS=400000 MEMTABLE_BENCH_BATCHES=7,100 cargo bench …
//! ```
//!
//! The workload is the relay's 1:1 send: a message row (ids ascending), two inbox rows (random
//! users of 20,000, each user's seq ascending), a history row (the pair's conversation) and a
//! dedupe row (random client id), with values of the inbox rows' size. The memtables fill as
//! they do in a node over a minute (64 MiB, then a rotation). Baseline and key order alternate
//! batch by batch over the same stream, so both see the same memtable sizes; the first quarter
//! is warm-up. Prints µs of insert time per send and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: fail loudly

mod common;

use std::time::Instant;

use fjall::{Database, KeyspaceCreateOptions};

const USERS: u64 = 20_000;

/// Table indices, in the order the baseline inserts tables.
const MESSAGES: usize = 0;
const HISTORY: usize = 1;
const INBOX: usize = 2;
const DEDUPE: usize = 3;

fn run(sends: usize, per_batch: usize) {
    let dir = common::tempdir();
    let db = Database::builder(dir.path()).open().unwrap();
    let ks: Vec<_> = ["messages", "history", "inbox", "dedupe"]
        .iter()
        .map(|n| db.keyspace(n, KeyspaceCreateOptions::default).unwrap())
        .collect();
    let mut rng = common::Rng(1);
    let mut seqs = vec![0u64; USERS as usize];
    let mut msg_id = 1u64 << 40;
    let value = vec![7u8; 90];
    let batches = sends / per_batch;
    let (mut secs, mut counted) = ([0f64; 2], [0usize; 2]);
    for i in 0..batches {
        // (table, position of the send in the batch, key)
        let mut rows: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(per_batch * 5);
        for n in 0..per_batch {
            let (a, b) = (rng.next() % USERS, rng.next() % USERS);
            msg_id += 1;
            rows.push((MESSAGES, n, msg_id.to_be_bytes().to_vec()));
            let (x, y) = (a.min(b), a.max(b));
            let mut h = format!("d:user-{x}\0user-{y}\0").into_bytes();
            h.extend_from_slice(&msg_id.to_be_bytes());
            rows.push((HISTORY, n, h));
            for u in [a, b] {
                seqs[u as usize] += 1;
                let mut k = format!("user-{u}\0").into_bytes();
                k.extend_from_slice(&seqs[u as usize].to_be_bytes());
                rows.push((INBOX, n, k));
            }
            let mut d = format!("user-{a}\0").into_bytes();
            d.extend_from_slice(format!("c-{:016x}", rng.next()).as_bytes());
            rows.push((DEDUPE, n, d));
        }
        let keyed = i % 2 == 1;
        let t = Instant::now();
        if keyed {
            rows.sort_by(|p, q| (p.0, &p.2).cmp(&(q.0, &q.2)));
        } else {
            // The baseline: messages and history interleaved send by send, then inbox, dedupe.
            rows.sort_by_key(|r| (if r.0 == HISTORY { MESSAGES } else { r.0 }, r.1));
        }
        let mut b = db.batch().durability(None);
        for (table, _, key) in rows {
            b.insert(&ks[table], key, value.as_slice());
        }
        b.commit().unwrap();
        if i >= batches / 4 {
            secs[usize::from(keyed)] += t.elapsed().as_secs_f64();
            counted[usize::from(keyed)] += 1;
        }
    }
    let per_send = |j: usize| secs[j] / (counted[j] * per_batch) as f64 * 1e6;
    println!(
        "{per_batch:>5} sends/batch | table order (baseline) {:>6.2} µs/send | key order {:>6.2} µs/send | ratio {:.3}",
        per_send(0),
        per_send(1),
        per_send(1) / per_send(0),
    );
}

fn main() {
    let sends: usize = common::env_or("MEMTABLE_BENCH_SENDS", 400_000);
    println!("fjall memtable inserts, {sends} sends of five rows (see the file's doc)");
    for b in common::env_sizes("MEMTABLE_BENCH_BATCHES", "7,100,500") {
        run(sends, b);
    }
}
