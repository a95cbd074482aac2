//! Issue #17's choice, measured: how a cluster's chat commits go to PostgreSQL.
//!
//! - `owner`: the inbox owner (by slot) is its only writer. Each node's relay numbers its own
//!   users' inboxes in memory; a batch carries the messages its users sent, their own inbox
//!   entries and the entries of recipients it owns; entries for recipients owned elsewhere
//!   are handed to their owner, which writes them in its next batch. Every commit checks the
//!   epochs of the slots it writes for (`chat_fences`, `FOR SHARE`) in the same transaction.
//! - `database`: any node writes any inbox; the commit takes each touched inbox's next seqs
//!   from `chat_heads` (`INSERT … ON CONFLICT DO UPDATE … RETURNING`, rows in owner order, so
//!   concurrent batches never deadlock) and checks the epochs of its senders' slots only.
//!
//! Three writer threads stand for three nodes on one PostgreSQL (a private one started
//! here, fsync on, `synchronous_commit = on`), 10,000 users spread over them by slot, 1:1
//! sends to random users (two thirds owned by another node), batches of `BATCH` sends in a
//! closed loop for `SECONDS` each. Reported: durable sends per second, transactions and rows
//! per send, commit p50/p99, and send → recipient entry durable p99 (for `owner`, the second
//! commit on the recipient's node included).
//!
//! `cargo bench -p presence-pg --bench chat_commit` (needs PostgreSQL: `scripts/cluster-deps.sh`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use postgres::{Client, NoTls};
use presence_cluster::slot_of;
use presence_tests::services::Postgres;

const USERS: u64 = 10_000;
const NODES: usize = 3;
const SECONDS: u64 = 8;
const BATCH: usize = 32;

fn node_of(user: u64) -> usize {
    usize::from(slot_of(format!("u{user}").as_bytes()).get()) % NODES
}

fn slot16(user: &str) -> i16 {
    i16::try_from(slot_of(user.as_bytes()).get()).unwrap_or(0)
}

/// A tiny xorshift, seeded per node.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One inbox entry on its way: (owner, seq or 0 for "the database assigns", message id,
/// sender, sent at).
#[derive(Clone)]
struct Entry {
    owner: String,
    seq: i64,
    msg: i64,
    sender: String,
    sent: Instant,
}

#[derive(Default)]
struct Tally {
    sends: u64,
    txs: u64,
    rows: u64,
    commit: Option<Histogram<u64>>,
    delivered: Option<Histogram<u64>>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

fn setup(url: &str) -> Client {
    let mut c = Client::connect(url, NoTls).unwrap_or_else(|e| panic!("connect: {e}"));
    c.batch_execute(
        "SET synchronous_commit = on;
         CREATE TABLE IF NOT EXISTS chat_heads (owner bytea PRIMARY KEY, head bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS chat_fences (slot smallint PRIMARY KEY, node smallint NOT NULL, epoch bigint NOT NULL);
         TRUNCATE chat_messages, chat_inbox, chat_dedupe, chat_heads, chat_fences;
         INSERT INTO chat_fences SELECT s, (s % 3)::smallint, 1 FROM generate_series(0, 1023) s;",
    )
    .unwrap_or_else(|e| panic!("setup: {e}"));
    c
}

/// Checks in the transaction that this node holds epoch 1 of every slot in `slots`.
fn fence(tx: &mut postgres::Transaction<'_>, node: usize, slots: &mut Vec<i16>) {
    slots.sort_unstable();
    slots.dedup();
    let me = i16::try_from(node).unwrap_or(0);
    let ok: i64 = tx
        .query_one(
            "SELECT count(*) FROM (SELECT slot FROM chat_fences
              WHERE slot = ANY($1) AND node = $2 AND epoch = 1 FOR SHARE) f",
            &[&*slots, &me],
        )
        .and_then(|r| r.try_get(0))
        .unwrap_or_else(|e| panic!("fence: {e}"));
    assert_eq!(ok, slots.len() as i64, "fenced out");
}

fn insert_messages(tx: &mut postgres::Transaction<'_>, msgs: &[(i64, String, String)]) -> u64 {
    let ids: Vec<i64> = msgs.iter().map(|m| m.0).collect();
    let from: Vec<&[u8]> = msgs.iter().map(|m| m.1.as_bytes()).collect();
    let to: Vec<&[u8]> = msgs.iter().map(|m| m.2.as_bytes()).collect();
    let n = tx
        .execute(
            "INSERT INTO chat_messages (msg_id, sender, target_kind, target, conv, text, ts, deleted, client_id)
             SELECT id, f, 0, t, f || t, 'hello there', 0, false, int8send(id)
             FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS m(id, f, t)",
            &[&ids, &from, &to],
        )
        .unwrap_or_else(|e| panic!("messages: {e}"));
    tx.execute(
        "INSERT INTO chat_dedupe (sender, client_id, msg_id, ts)
         SELECT f, int8send(id), id, 0 FROM unnest($1::bigint[], $2::bytea[]) AS m(id, f)",
        &[&ids, &from],
    )
    .unwrap_or_else(|e| panic!("dedupe: {e}"));
    2 * n
}

fn insert_entries(tx: &mut postgres::Transaction<'_>, entries: &[Entry]) -> u64 {
    let owners: Vec<&[u8]> = entries.iter().map(|e| e.owner.as_bytes()).collect();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    let ids: Vec<i64> = entries.iter().map(|e| e.msg).collect();
    let from: Vec<&[u8]> = entries.iter().map(|e| e.sender.as_bytes()).collect();
    tx.execute(
        "INSERT INTO chat_inbox (owner, seq, kind, msg_id, sender, target_kind, target, text, ts)
         SELECT o, s, 0, id, f, 0, o, 'hello there', 0
         FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bytea[]) AS e(o, s, id, f)",
        &[&owners, &seqs, &ids, &from],
    )
    .unwrap_or_else(|e| panic!("inbox: {e}"))
}

/// Takes the next seqs of each entry's inbox from `chat_heads`, rows in owner order.
fn assign(tx: &mut postgres::Transaction<'_>, entries: &mut [Entry]) {
    let mut counts: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for e in entries.iter() {
        *counts.entry(e.owner.as_str()).or_default() += 1;
    }
    let owners: Vec<&[u8]> = counts.keys().map(|o| o.as_bytes()).collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    let rows = tx
        .query(
            "INSERT INTO chat_heads (owner, head)
             SELECT o, n FROM unnest($1::bytea[], $2::bigint[]) AS h(o, n) ORDER BY o
             ON CONFLICT (owner) DO UPDATE SET head = chat_heads.head + excluded.head
             RETURNING owner, head",
            &[&owners, &ns],
        )
        .unwrap_or_else(|e| panic!("heads: {e}"));
    let mut next: HashMap<String, i64> = HashMap::new();
    for r in rows {
        let (o, head): (Vec<u8>, i64) = (r.get(0), r.get(1));
        let o = String::from_utf8(o).unwrap_or_default();
        let n = counts.get(o.as_str()).copied().unwrap_or(0);
        next.insert(o, head - n + 1);
    }
    for e in entries.iter_mut() {
        if let Some(s) = next.get_mut(&e.owner) {
            e.seq = *s;
            *s += 1;
        }
    }
}

fn run(url: &str, strategy: &'static str) -> Tally {
    drop(setup(url));
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(1));
    let tally = Arc::new(Mutex::new(Tally {
        commit: Some(hist()),
        delivered: Some(hist()),
        ..Tally::default()
    }));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..NODES).map(|_| mpsc::channel::<Entry>()).unzip();
    let mut handles = Vec::new();
    for (node, rx) in rxs.into_iter().enumerate() {
        let (url, stop, ids, tally, txs) = (
            url.to_owned(),
            stop.clone(),
            ids.clone(),
            tally.clone(),
            txs.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut c = Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect: {e}"));
            c.batch_execute("SET synchronous_commit = on")
                .unwrap_or_else(|e| panic!("{e}"));
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (node as u64 + 1));
            let mine: Vec<u64> = (0..USERS).filter(|&u| node_of(u) == node).collect();
            let mut heads: HashMap<String, i64> = HashMap::new();
            let (mut commit, mut delivered) = (hist(), hist());
            let (mut sends, mut n_tx, mut rows) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut msgs = Vec::with_capacity(BATCH);
                let mut entries = Vec::with_capacity(2 * BATCH);
                let mut slots = Vec::new();
                for _ in 0..BATCH {
                    let from = format!("u{}", mine[rng.below(mine.len() as u64) as usize]);
                    let to_n = rng.below(USERS);
                    let to = format!("u{to_n}");
                    let id = i64::try_from(ids.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
                    slots.push(slot16(&from));
                    msgs.push((id, from.clone(), to.clone()));
                    for owner in [from.clone(), to] {
                        entries.push(Entry {
                            owner,
                            seq: 0,
                            msg: id,
                            sender: from.clone(),
                            sent: started,
                        });
                    }
                }
                // Entries handed over by other nodes (owner strategy).
                let forwarded: Vec<Entry> = rx.try_iter().collect();
                let mut tx = c.transaction().unwrap_or_else(|e| panic!("{e}"));
                match strategy {
                    "owner" => {
                        let mut local = Vec::new();
                        let mut remote = Vec::new();
                        for e in entries.into_iter().chain(forwarded) {
                            let owner_node = node_of(e.owner[1..].parse().unwrap_or(0));
                            if owner_node == node {
                                let h = heads.entry(e.owner.clone()).or_insert(0);
                                *h += 1;
                                local.push(Entry { seq: *h, ..e });
                            } else {
                                remote.push((owner_node, e));
                            }
                        }
                        let mut fence_slots = slots.clone();
                        fence_slots.extend(local.iter().map(|e| slot16(&e.owner)));
                        fence(&mut tx, node, &mut fence_slots);
                        rows += insert_messages(&mut tx, &msgs);
                        rows += insert_entries(&mut tx, &local);
                        tx.commit().unwrap_or_else(|e| panic!("commit: {e}"));
                        for e in &local {
                            if e.owner != e.sender {
                                let _ = delivered.record(e.sent.elapsed().as_micros() as u64);
                            }
                        }
                        // Durable at the sender's node: handed to the recipients' owners.
                        for (owner_node, e) in remote {
                            let _ = txs[owner_node].send(e);
                        }
                    }
                    _ => {
                        let mut here = entries;
                        here.extend(forwarded);
                        fence(&mut tx, node, &mut slots);
                        assign(&mut tx, &mut here);
                        rows += insert_messages(&mut tx, &msgs);
                        rows += insert_entries(&mut tx, &here);
                        rows += here.len() as u64; // the heads
                        tx.commit().unwrap_or_else(|e| panic!("commit: {e}"));
                        for e in &here {
                            if e.owner != e.sender {
                                let _ = delivered.record(e.sent.elapsed().as_micros() as u64);
                            }
                        }
                    }
                }
                let _ = commit.record(started.elapsed().as_micros() as u64);
                n_tx += 1;
                sends += BATCH as u64;
            }
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.sends += sends;
            t.txs += n_tx;
            t.rows += rows;
            if let Some(h) = t.commit.as_mut() {
                let _ = h.add(&commit);
            }
            if let Some(h) = t.delivered.as_mut() {
                let _ = h.add(&delivered);
            }
        }));
    }
    drop(txs);
    std::thread::sleep(Duration::from_secs(SECONDS));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    Arc::try_unwrap(tally)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

fn main() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
    let url = pg
        .create_database("chatbench")
        .unwrap_or_else(|e| panic!("{e}"));
    // The chat tables (migration 3).
    drop(presence_pg::PgChatStore::connect(&url).unwrap_or_else(|e| panic!("{e}")));
    println!(
        "{NODES} writers, {USERS} users, batches of {BATCH} 1:1 sends, {SECONDS} s each, fsync on"
    );
    println!(
        "{:<9} {:>9} {:>9} {:>10} {:>11} {:>11} {:>14}",
        "strategy", "sends/s", "tx/send", "rows/send", "commit p50", "commit p99", "deliver p99"
    );
    for strategy in ["owner", "database", "owner", "database"] {
        let t = run(&url, strategy);
        let secs = SECONDS as f64;
        let (c, d) = (
            t.commit.unwrap_or_else(hist),
            t.delivered.unwrap_or_else(hist),
        );
        println!(
            "{:<9} {:>9.0} {:>9.3} {:>10.2} {:>9.1}ms {:>9.1}ms {:>12.1}ms",
            strategy,
            t.sends as f64 / secs,
            t.txs as f64 / t.sends.max(1) as f64,
            t.rows as f64 / t.sends.max(1) as f64,
            c.value_at_quantile(0.5) as f64 / 1000.0,
            c.value_at_quantile(0.99) as f64 / 1000.0,
            d.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }
}
