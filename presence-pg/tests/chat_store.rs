//! The chat relay's own cases (chat-relay's `tests/common/cases.rs`, the ones the embedded
//! stores pass) over `PgChatStore` on a private PostgreSQL, each case on a database of its
//! own; a reopen (same folder) reaches the same database.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

#[path = "../../chat-relay/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chat_relay::ChatStore;
use common::cases::*;
use presence_pg::PgChatStore;
use presence_tests::services::Postgres;

/// The server of the running test, and the database of each case's folder.
static SERVER: Mutex<Option<Postgres>> = Mutex::new(None);
static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

fn open_pg(folder: &Path) -> Arc<dyn ChatStore> {
    let url = {
        let mut dbs = DATABASES.lock().unwrap();
        let dbs = dbs.get_or_insert_with(HashMap::new);
        let n = dbs.len();
        match dbs.get(folder) {
            Some(u) => u.clone(),
            None => {
                let server = SERVER.lock().unwrap();
                let url = server
                    .as_ref()
                    .expect("the server")
                    .create_database(&format!("chat{n}"))
                    .expect("a database");
                dbs.insert(folder.to_owned(), url.clone());
                url
            }
        }
    };
    Arc::new(PgChatStore::connect(&url).expect("connect"))
}

/// One of chat-relay's cases.
type Case = fn(common::Opener);

#[test]
fn the_relay_cases_pass_over_postgres() {
    *SERVER.lock().unwrap() = Some(Postgres::start().expect("start PostgreSQL"));
    let cases: &[(&str, Case)] = &[
        (
            "busy_past_the_unsettled_bound",
            busy_past_the_unsettled_bound,
        ),
        ("one_to_one_in_both_inboxes", one_to_one_in_both_inboxes),
        ("group_fan_out", group_fan_out),
        ("refusals", refusals),
        (
            "dedupe_before_after_commit_and_restart",
            dedupe_before_after_commit_and_restart,
        ),
        ("edit_delete_read_rules", edit_delete_read_rules),
        ("sync_order_and_batching", sync_order_and_batching),
        ("history_pages_backwards", history_pages_backwards),
        ("retention_trim", retention_trim),
        ("durable_across_reopen", durable_across_reopen),
        ("acks", acks),
        (
            "typing_is_ephemeral_and_rate_limited",
            typing_is_ephemeral_and_rate_limited,
        ),
        ("failed_commit_resets", failed_commit_resets),
        ("edit_of_in_flight_message", edit_of_in_flight_message),
        ("head_cache_eviction", head_cache_eviction),
    ];
    let mut failed = Vec::new();
    for (name, case) in cases {
        if std::panic::catch_unwind(|| case(open_pg)).is_err() {
            failed.push(*name);
        }
    }
    let own: &[(&str, fn())] = &[
        (
            "a_second_writer_cannot_reuse_a_seq_or_a_client_id",
            a_second_writer_cannot_reuse_a_seq_or_a_client_id,
        ),
        (
            "shared_relays_on_two_threads_keep_every_inbox_gap_free",
            shared_relays_on_two_threads_keep_every_inbox_gap_free,
        ),
        (
            "a_batch_under_an_older_epoch_writes_nothing",
            a_batch_under_an_older_epoch_writes_nothing,
        ),
        (
            "node_numbers_are_unique_and_kept",
            node_numbers_are_unique_and_kept,
        ),
    ];
    for (name, case) in own {
        if std::panic::catch_unwind(case).is_err() {
            failed.push(*name);
        }
    }
    // The server goes before any assertion can unwind past it.
    drop(SERVER.lock().unwrap_or_else(|e| e.into_inner()).take());
    assert!(failed.is_empty(), "failed over PostgreSQL: {failed:?}");
}

/// Two stores on one database, as two nodes that both believe they own an inbox (one of them
/// stale): the database refuses the second entry at a seq already taken and the second
/// dedupe row of a `(sender, client id)`, failing that whole commit and writing nothing of it.
fn a_second_writer_cannot_reuse_a_seq_or_a_client_id() {
    use chat_relay::{DedupeRow, EntryKind, InboxEntry, MsgId, Target, WriteBatch};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open_pg(dir.path()), open_pg(dir.path()));
    let entry = |seq, text: &str| InboxEntry {
        seq,
        kind: EntryKind::Message,
        msg_id: MsgId(1000 + seq),
        from: "alice".into(),
        target: Target::User("bob".into()),
        text: Some(text.into()),
        ts: common::T0,
    };
    let dedupe = |client: &str, id| DedupeRow {
        sender: "alice".into(),
        client_id: client.into(),
        msg_id: MsgId(id),
        ts: common::T0,
    };
    a.commit(&WriteBatch {
        id: 1,
        inbox: vec![("bob".into(), entry(1, "from a"))],
        dedupe: vec![dedupe("c1", 1001)],
        ..WriteBatch::default()
    })
    .unwrap();
    // The stale writer's batch: a fresh seq and an entry at seq 1 again.
    let stale = b.commit(&WriteBatch {
        id: 1,
        inbox: vec![
            ("bob".into(), entry(1, "from b")),
            ("carol".into(), entry(1, "from b")),
        ],
        ..WriteBatch::default()
    });
    assert!(stale.is_err(), "a seq taken twice was committed");
    let twice = b.commit(&WriteBatch {
        id: 2,
        inbox: vec![("dave".into(), entry(1, "from b"))],
        dedupe: vec![dedupe("c1", 2002)],
        ..WriteBatch::default()
    });
    assert!(twice.is_err(), "a client id stored twice was committed");
    assert_eq!(
        a.read_inbox("bob", 0, 10).unwrap()[0].text.as_deref(),
        Some("from a")
    );
    for u in ["carol", "dave"] {
        assert_eq!(
            a.inbox_head(u).unwrap(),
            0,
            "{u}: nothing of a failed commit"
        );
    }
    assert_eq!(
        a.dedupe("alice", "c1").unwrap(),
        Some((MsgId(1001), common::T0))
    );
}

/// Two shared relays on two stores (two nodes) on two threads, each sending for its own senders to the same
/// recipients and a group of all, committing with `commit_numbered` at once: every inbox is
/// 1, 2, 3, … with no gap, each message in each of its inboxes exactly once, each sender's
/// messages in the order sent; a retry of a send on the other relay is answered as the
/// duplicate it is, from the database.
fn shared_relays_on_two_threads_keep_every_inbox_gap_free() {
    use chat_relay::{IdGen, Limits, Relay, SendOutcome, Target};
    let dir = tempfile::tempdir().unwrap();
    let store = open_pg(dir.path());
    let users: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let mut friends: Vec<(&str, &str)> = Vec::new();
    for a in &users {
        for b in &users {
            if a < b {
                friends.push((a, b));
            }
        }
    }
    let members: Vec<&str> = users.iter().map(String::as_str).collect();
    let d = common::Dir::new(&friends, &[("all", &members)]);
    const SENDS: usize = 150;
    let workers: Vec<_> = (0..2u32)
        .map(|node| {
            // A store each: two connections, as two nodes.
            let (store, d, users) = (open_pg(dir.path()), d.clone(), users.clone());
            std::thread::spawn(move || {
                let mut r = Relay::shared(
                    store.clone(),
                    IdGen::new(node + 1).unwrap(),
                    Limits::default(),
                )
                .unwrap();
                for i in 0..SENDS {
                    // Node 0 sends for p0..p3, node 1 for p4..p7.
                    let from = &users[node as usize * 4 + i % 4];
                    let to = if i % 5 == 0 {
                        Target::Group("all".into())
                    } else {
                        Target::User(users[(i * 3 + 1) % 8].clone())
                    };
                    if to == Target::User(from.clone()) {
                        continue;
                    }
                    let text = format!("{from}:{i}");
                    let out = r
                        .send(
                            common::T0 + i as u64,
                            from,
                            &format!("c{i}"),
                            &to,
                            &text,
                            &d,
                        )
                        .unwrap();
                    assert!(matches!(out, SendOutcome::New { .. }));
                    if i % 7 == 0 {
                        let mut b = r.take_batch().unwrap();
                        store.commit_numbered(&mut b).unwrap();
                        assert!(b.inbox.iter().all(|(_, e)| e.seq > 0));
                        r.committed(b.id);
                    }
                }
                while let Some(mut b) = r.take_batch() {
                    store.commit_numbered(&mut b).unwrap();
                    r.committed(b.id);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut total = 0;
    for u in &users {
        let entries = store.read_inbox(u, 0, 10_000).unwrap();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (1..=entries.len() as u64).collect();
        assert_eq!(seqs, want, "{u}'s inbox is not 1..n");
        let mut ids: Vec<_> = entries.iter().map(|e| e.msg_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), entries.len(), "{u}: a message twice");
        // Each sender's messages in the order sent.
        for s in &users {
            let order: Vec<usize> = entries
                .iter()
                .filter(|e| e.from == *s)
                .filter_map(|e| e.text.as_deref()?.split(':').nth(1)?.parse().ok())
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "{s} in {u}: {order:?}"
            );
        }
        total += entries.len();
    }
    assert!(total > 2 * SENDS, "{total} entries");
    // A client retrying on the other node (its first send was committed by node 0): the
    // shared relay reads nothing and takes it as new; the commit finds the key taken, drops
    // the send from the batch and answers with the first send's id.
    let first = store.dedupe("p0", "c0").unwrap().expect("c0 was stored");
    let heads: Vec<u64> = users.iter().map(|u| store.inbox_head(u).unwrap()).collect();
    let mut other =
        Relay::shared(store.clone(), IdGen::new(9).unwrap(), Limits::default()).unwrap();
    let again = other
        .send(
            common::T0,
            "p0",
            "c0",
            &Target::Group("all".into()),
            "p0:0",
            &d,
        )
        .unwrap();
    let SendOutcome::New { msg_id: minted, .. } = again else {
        panic!("a shared relay reads no dedupe row: {again:?}");
    };
    // With a new send beside it in the same batch, which must land.
    let fresh = other
        .send(
            common::T0 + 1,
            "p1",
            "late",
            &Target::User("p2".into()),
            "late",
            &d,
        )
        .unwrap();
    let mut b = other.take_batch().unwrap();
    let stored = store.commit_numbered(&mut b).unwrap();
    other.committed(b.id);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        (stored[0].sender.as_str(), stored[0].client_id.as_str()),
        ("p0", "c0")
    );
    assert_eq!((stored[0].msg_id, stored[0].ts), first);
    assert!(b.messages.iter().all(|m| m.msg_id != minted));
    assert!(b.inbox.iter().all(|(_, e)| e.msg_id != minted));
    assert_eq!(b.inbox.len(), 2, "the late send's two entries stay");
    assert!(store.message(minted).unwrap().is_none());
    let SendOutcome::New { msg_id: late, .. } = fresh else {
        panic!("{fresh:?}")
    };
    assert!(store.message(late).unwrap().is_some());
    for (u, h) in users.iter().zip(&heads) {
        let grew = u64::from(u == "p1" || u == "p2");
        assert_eq!(store.inbox_head(u).unwrap(), h + grew, "{u}");
    }

    // An edit on a shared relay finds the message as the driver fetched it, reading nothing.
    assert!(other.needs_fetch(late));
    let fetched = store.message(late).unwrap();
    let edit = other.edit_with(
        common::T0 + 2,
        "p1",
        late,
        "later",
        chat_relay::Lookup::Fetched(fetched),
        &d,
    );
    assert!(edit.is_ok(), "{edit:?}");
    let missing = other.delete_with(
        common::T0 + 2,
        "p1",
        chat_relay::MsgId(1),
        chat_relay::Lookup::Fetched(None),
        &d,
    );
    assert!(matches!(missing, Err(chat_relay::ChatError::NotFound(_))));
    // An ack beyond the head is clamped by the store; an older one does not go back.
    let head = store.inbox_head("p2").unwrap();
    other.ack("p2", "phone", head + 50).unwrap();
    let mut b = other.take_batch().unwrap();
    assert!(store.commit_numbered(&mut b).unwrap().is_empty());
    other.committed(b.id);
    assert_eq!(store.device_ack("p2", "phone").unwrap(), head + 1);
    other.ack("p2", "phone", 1).unwrap();
    let mut b = other.take_batch().unwrap();
    store.commit_numbered(&mut b).unwrap();
    other.committed(b.id);
    assert_eq!(store.device_ack("p2", "phone").unwrap(), head + 1);
}

/// A node that took a slot raised its chat fence: a batch written for a sender of that slot
/// under the former epoch is refused whole (nothing of it lands, not even its other slots'
/// writes), while one under the new epoch commits.
fn a_batch_under_an_older_epoch_writes_nothing() {
    use chat_relay::{IdGen, Limits, Relay, StoreError, Target};
    let dir = tempfile::tempdir().unwrap();
    let store = open_pg(dir.path());
    let d = common::Dir::new(&[("ann", "bob"), ("cy", "bob")], &[]);
    let slot = |u: &str| presence_cluster::slot_of(u.as_bytes()).get();
    let url = DATABASES.lock().unwrap().as_ref().unwrap()[dir.path()].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let graph = rt.block_on(presence_pg::Store::connect(&url)).unwrap();
    // Both slots taken at epoch 10; then ann's slot taken again at 20 by another node.
    rt.block_on(graph.fence_chat_slots(&[(slot("ann"), 10), (slot("cy"), 10)]))
        .unwrap();
    rt.block_on(graph.fence_chat_slots(&[(slot("ann"), 20)]))
        .unwrap();
    // A lower epoch never lowers a fence.
    rt.block_on(graph.fence_chat_slots(&[(slot("ann"), 15)]))
        .unwrap();
    let mut stale =
        Relay::shared(store.clone(), IdGen::new(1).unwrap(), Limits::default()).unwrap();
    let _ = stale
        .send(
            common::T0,
            "ann",
            "a1",
            &Target::User("bob".into()),
            "hi",
            &d,
        )
        .unwrap();
    let _ = stale
        .send(
            common::T0,
            "cy",
            "c1",
            &Target::User("bob".into()),
            "yo",
            &d,
        )
        .unwrap();
    let mut b = stale.take_batch().unwrap();
    b.fences = vec![(slot("ann"), 10), (slot("cy"), 10)];
    match store.commit_numbered(&mut b) {
        Err(StoreError::Fenced {
            slot: s,
            epoch,
            fenced,
        }) => {
            assert_eq!((s, epoch, fenced), (slot("ann"), 10, 20));
        }
        other => panic!("a stale batch committed: {other:?}"),
    }
    let _ = stale.reset();
    assert_eq!(store.inbox_head("bob").unwrap(), 0, "nothing of it landed");
    assert!(store.dedupe("cy", "c1").unwrap().is_none());
    // The new owner, under epoch 20, writes.
    let mut owner =
        Relay::shared(store.clone(), IdGen::new(2).unwrap(), Limits::default()).unwrap();
    let _ = owner
        .send(
            common::T0,
            "ann",
            "a1",
            &Target::User("bob".into()),
            "hi",
            &d,
        )
        .unwrap();
    let mut b = owner.take_batch().unwrap();
    b.fences = vec![(slot("ann"), 20)];
    store.commit_numbered(&mut b).unwrap();
    owner.committed(b.id);
    assert_eq!(store.inbox_head("bob").unwrap(), 1);
}

/// Node names get distinct numbers for their message ids, the same one on every start.
fn node_numbers_are_unique_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let url = {
        let _ = open_pg(dir.path());
        DATABASES.lock().unwrap().as_ref().unwrap()[dir.path()].clone()
    };
    let a = PgChatStore::connect(&url).unwrap();
    let b = PgChatStore::connect(&url).unwrap();
    let names = ["n1", "n2", "n3", "node\0four"];
    let first: Vec<u16> = names.iter().map(|n| a.node_number(n).unwrap()).collect();
    let mut distinct = first.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), names.len(), "{first:?}");
    let again: Vec<u16> = names.iter().map(|n| b.node_number(n).unwrap()).collect();
    assert_eq!(first, again);
}
