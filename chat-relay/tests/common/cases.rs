//! The relay's behaviour over a store, one function per case, each taking the store's
//! opener: the embedded stores run them (`tests/relay.rs`), and so does any other
//! implementation of `ChatStore` (presence-pg's PostgreSQL store includes this file).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Dir, Opener, T0, commit, relay, relay_with};
use chat_relay::{
    ChatError, ChatStore, Conversation, EntryKind, InboxEntry, Limits, MsgId, Relay, SendOutcome,
    StoreError, StoredMessage, Target, TrimCounts, WriteBatch,
};

fn user(u: &str) -> Target {
    Target::User(u.into())
}

fn group(g: &str) -> Target {
    Target::Group(g.into())
}

fn dir() -> Dir {
    Dir::new(
        &[("alice", "bob"), ("alice", "carol")],
        &[("g1", &["alice", "bob", "carol", "dave", "erin"])],
    )
}

fn new_id(o: SendOutcome) -> MsgId {
    match o {
        SendOutcome::New { msg_id, .. } => msg_id,
        other => panic!("expected a new message, got {other:?}"),
    }
}

fn all(store: &Arc<dyn ChatStore>, u: &str) -> Vec<InboxEntry> {
    store.read_inbox(u, 0, usize::MAX).unwrap()
}

fn assert_gap_free(entries: &[InboxEntry]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap-free seqs");
    }
}

pub fn one_to_one_in_both_inboxes(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(new_id(
            r.send(T0 + i, "alice", &format!("c{i}"), &user("bob"), "hi", &d)
                .unwrap(),
        ));
    }
    ids.push(new_id(
        r.send(T0 + 5, "bob", "x", &user("alice"), "yo", &d)
            .unwrap(),
    ));
    // not durable yet: nothing to read
    assert!(all(&store, "alice").is_empty());
    assert_eq!(store.inbox_head("bob").unwrap(), 0);
    let b = commit(&mut r).unwrap();
    assert_eq!(b.messages.len(), 4);
    assert_eq!(b.inbox.len(), 8);
    assert_eq!(b.dedupe.len(), 4);

    for u in ["alice", "bob"] {
        let inbox = all(&store, u);
        assert_eq!(inbox.len(), 4);
        assert_gap_free(&inbox);
        assert_eq!(
            inbox.iter().map(|e| e.msg_id).collect::<Vec<_>>(),
            ids,
            "same order in both inboxes"
        );
        // `to` is the recipient in both inboxes
        assert_eq!(inbox[0].target, user("bob"));
        assert_eq!(inbox[0].from, "alice");
        assert_eq!(inbox[3].target, user("alice"));
        assert_eq!(inbox[3].kind, EntryKind::Message);
        assert_eq!(inbox[3].text.as_deref(), Some("yo"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // a second batch continues the seqs
    new_id(
        r.send(T0 + 9, "alice", "c9", &user("carol"), "hey", &d)
            .unwrap(),
    );
    commit(&mut r);
    let inbox = all(&store, "alice");
    assert_eq!(inbox.len(), 5);
    assert_gap_free(&inbox);
    assert_eq!(all(&store, "carol").len(), 1);
    assert_eq!(store.inbox_head("alice").unwrap(), 5);
}

pub fn group_fan_out(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    let id = new_id(r.send(T0, "dave", "1", &group("g1"), "all", &d).unwrap());
    new_id(
        r.send(T0, "alice", "1", &user("bob"), "direct", &d)
            .unwrap(),
    );
    commit(&mut r);
    for u in ["alice", "bob", "carol", "dave", "erin"] {
        let inbox = all(&store, u);
        assert_eq!(inbox[0].msg_id, id, "{u}");
        assert_eq!(inbox[0].target, group("g1"));
        assert_eq!(inbox[0].from, "dave");
        assert_gap_free(&inbox);
    }
    assert_eq!(all(&store, "bob").len(), 2);
    assert_eq!(all(&store, "erin").len(), 1);
    assert!(all(&store, "zed").is_empty());
}

pub fn refusals(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let limits = Limits {
        max_group: 4,
        ..Limits::default()
    };
    let mut r = relay_with(&store, limits);
    let d = dir();
    let code = |res: Result<SendOutcome, ChatError>| res.unwrap_err().code();
    assert_eq!(
        code(r.send(T0, "alice", "1", &user("bob"), "", &d)),
        "bad_request"
    );
    let long = "é".repeat(4001);
    assert_eq!(
        code(r.send(T0, "alice", "2", &user("bob"), &long, &d)),
        "too_large"
    );
    assert!(
        r.send(T0, "alice", "3", &user("bob"), &"é".repeat(4000), &d)
            .is_ok()
    );
    assert_eq!(
        code(r.send(T0, "bob", "4", &user("carol"), "x", &d)),
        "forbidden"
    );
    assert_eq!(
        code(r.send(T0, "alice", "5", &user("alice"), "x", &d)),
        "forbidden"
    );
    assert_eq!(
        code(r.send(T0, "zed", "6", &group("g1"), "x", &d)),
        "forbidden"
    );
    assert_eq!(
        code(r.send(T0, "alice", "7", &group("nope"), "x", &d)),
        "not_found"
    );
    assert_eq!(
        code(r.send(T0, "alice", "8", &group("g1"), "x", &d)),
        "too_large"
    );
    assert_eq!(
        code(r.send(T0, "alice", "", &user("bob"), "x", &d)),
        "bad_request"
    );
    let long_id = "x".repeat(129);
    assert_eq!(
        code(r.send(T0, "alice", &long_id, &user("bob"), "x", &d)),
        "bad_request"
    );
    assert_eq!(
        code(r.send(T0, "alice", "9", &user(&long_id), "x", &d)),
        "bad_request"
    );
    // only the one good send was written
    let b = commit(&mut r).unwrap();
    assert_eq!(b.messages.len(), 1);
    assert_gap_free(&all(&store, "bob"));
    assert_eq!(all(&store, "bob").len(), 1);
}

pub fn dedupe_before_after_commit_and_restart(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let d = dir();
    let (id, ts) = {
        let store = open(tmp.path());
        let mut r = relay(&store);
        let SendOutcome::New { msg_id, ts, batch } =
            r.send(T0, "alice", "c1", &user("bob"), "once", &d).unwrap()
        else {
            panic!()
        };
        // retry while pending
        assert_eq!(
            r.send(T0 + 1, "alice", "c1", &user("bob"), "once", &d)
                .unwrap(),
            SendOutcome::Duplicate {
                msg_id,
                ts,
                pending: Some(batch)
            }
        );
        // the same client id from another sender is another message
        assert!(matches!(
            r.send(T0 + 1, "bob", "c1", &user("alice"), "mine", &d)
                .unwrap(),
            SendOutcome::New { .. }
        ));
        let b = r.take_batch().unwrap();
        assert_eq!(b.id, batch);
        // retry while the batch is in flight
        assert_eq!(
            r.send(T0 + 2, "alice", "c1", &user("bob"), "once", &d)
                .unwrap(),
            SendOutcome::Duplicate {
                msg_id,
                ts,
                pending: Some(batch)
            }
        );
        store.commit(&b).unwrap();
        r.committed(b.id);
        assert_eq!(
            r.send(T0 + 3, "alice", "c1", &user("bob"), "once", &d)
                .unwrap(),
            SendOutcome::Duplicate {
                msg_id,
                ts,
                pending: None
            }
        );
        assert!(r.take_batch().is_none(), "duplicates write nothing");
        (msg_id, ts)
    };
    // restart: a new store handle and relay on the same folder
    let store = open(tmp.path());
    let mut r = relay(&store);
    assert_eq!(store.dedupe("alice", "c1").unwrap(), Some((id, ts)));
    assert_eq!(
        r.send(T0 + 4, "alice", "c1", &user("bob"), "once", &d)
            .unwrap(),
        SendOutcome::Duplicate {
            msg_id: id,
            ts,
            pending: None
        }
    );
    // a dedupe hit does not re-check permissions: the original was allowed
    let d2 = Dir::default();
    assert!(matches!(
        r.send(T0 + 4, "alice", "c1", &user("bob"), "once", &d2)
            .unwrap(),
        SendOutcome::Duplicate { .. }
    ));
    assert_eq!(all(&store, "bob").len(), 2);
}

pub fn edit_delete_read_rules(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    let m1 = new_id(r.send(T0, "alice", "1", &user("bob"), "v1", &d).unwrap());
    let g1 = new_id(
        r.send(T0, "carol", "2", &group("g1"), "hello all", &d)
            .unwrap(),
    );
    // edit while the message is still pending: updates the same row
    r.edit(T0 + 1, "alice", m1, "v2", &d).unwrap();
    let b = commit(&mut r).unwrap();
    assert_eq!(b.messages.len(), 2, "one row per message per batch");
    let m = store.message(m1).unwrap().unwrap();
    assert_eq!(m.text, "v2");
    assert_eq!(m.edited_ts, Some(T0 + 1));

    let err = |e: ChatError| e.code();
    assert_eq!(
        err(r.edit(T0, "bob", m1, "hack", &d).unwrap_err()),
        "forbidden"
    );
    assert_eq!(err(r.delete(T0, "bob", m1, &d).unwrap_err()), "forbidden");
    assert_eq!(
        err(r.edit(T0, "alice", MsgId(42), "x", &d).unwrap_err()),
        "not_found"
    );
    assert_eq!(
        err(r.edit(T0, "alice", m1, "", &d).unwrap_err()),
        "bad_request"
    );
    assert_eq!(err(r.read(T0, "alice", m1, &d).unwrap_err()), "bad_request");
    assert_eq!(err(r.read(T0, "carol", m1, &d).unwrap_err()), "forbidden");
    assert_eq!(err(r.read(T0, "zed", g1, &d).unwrap_err()), "forbidden");

    r.read(T0 + 2, "bob", m1, &d).unwrap();
    r.read(T0 + 2, "erin", g1, &d).unwrap();
    r.edit(T0 + 3, "carol", g1, "hello everyone", &d).unwrap();
    r.delete(T0 + 4, "alice", m1, &d).unwrap();
    assert_eq!(
        err(r.edit(T0 + 5, "alice", m1, "again", &d).unwrap_err()),
        "not_found"
    );
    assert_eq!(
        err(r.delete(T0 + 5, "alice", m1, &d).unwrap_err()),
        "not_found"
    );
    assert_eq!(err(r.read(T0 + 5, "bob", m1, &d).unwrap_err()), "not_found");
    commit(&mut r);

    let kinds = |u: &str| {
        all(&store, u)
            .iter()
            .map(|e| (e.kind, e.msg_id, e.from.clone(), e.text.clone()))
            .collect::<Vec<_>>()
    };
    use EntryKind::*;
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        kinds("alice"),
        vec![
            (Message, m1, "alice".into(), s("v1")),
            (Message, g1, "carol".into(), s("hello all")),
            (Edit, m1, "alice".into(), s("v2")),
            (Read, m1, "bob".into(), None),
            (Edit, g1, "carol".into(), s("hello everyone")),
            (Delete, m1, "alice".into(), None),
        ]
    );
    assert_eq!(
        kinds("bob"),
        vec![
            (Message, m1, "alice".into(), s("v1")),
            (Message, g1, "carol".into(), s("hello all")),
            (Edit, m1, "alice".into(), s("v2")),
            (Edit, g1, "carol".into(), s("hello everyone")),
            (Delete, m1, "alice".into(), None),
        ]
    );
    assert_eq!(
        kinds("carol"),
        vec![
            (Message, g1, "carol".into(), s("hello all")),
            (Read, g1, "erin".into(), None),
            (Edit, g1, "carol".into(), s("hello everyone")),
        ]
    );
    for u in ["alice", "bob", "carol", "erin"] {
        assert_gap_free(&all(&store, u));
    }
    let m = store.message(m1).unwrap().unwrap();
    assert!(m.deleted);
    assert!(m.text.is_empty(), "a deleted message's text is dropped");
    // the read entry keeps the original target
    let read = &all(&store, "alice")[3];
    assert_eq!(read.target, user("bob"));
}

pub fn sync_order_and_batching(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    for i in 0..1200u64 {
        new_id(
            r.send(
                T0 + i,
                "alice",
                &i.to_string(),
                &user("bob"),
                &format!("m{i}"),
                &d,
            )
            .unwrap(),
        );
        if i % 100 == 99 {
            commit(&mut r);
        }
    }
    // one more, not committed: never returned by sync
    new_id(
        r.send(T0 + 5000, "alice", "late", &user("bob"), "late", &d)
            .unwrap(),
    );
    let reader = r.reader();
    let p = reader.sync("bob", 0, 0).unwrap();
    assert_eq!(p.entries.len(), 500);
    assert!(p.more);
    assert!(!p.trimmed);
    assert_eq!(p.entries[0].seq, 1);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let p = r.sync("bob", after, 0).unwrap();
        seen.extend(p.entries.iter().map(|e| e.text.clone().unwrap()));
        if let Some(last) = p.entries.last() {
            after = last.seq;
        }
        if !p.more {
            break;
        }
    }
    assert_eq!(seen.len(), 1200);
    assert_eq!(seen[0], "m0");
    assert_eq!(seen[1199], "m1199");
    assert_eq!(
        reader.sync("bob", 0, 100_000).unwrap().entries.len(),
        1000,
        "clamped"
    );
    assert_eq!(reader.sync("bob", 1190, 5).unwrap().entries[0].seq, 1191);
    assert!(reader.sync("bob", 1200, 5).unwrap().entries.is_empty());
    assert!(reader.sync("bob", u64::MAX, 5).unwrap().entries.is_empty());
    assert_eq!(reader.durable_head("bob").unwrap(), 1200);
    commit(&mut r);
    assert_eq!(reader.durable_head("bob").unwrap(), 1201);
    let p = reader.sync("bob", 1200, 0).unwrap();
    assert_eq!(p.entries[0].text.as_deref(), Some("late"));
    assert!(!p.more);
}

pub fn history_pages_backwards(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    let mut ids = Vec::new();
    for i in 0..25u64 {
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        ids.push(new_id(
            r.send(
                T0 + i,
                from,
                &i.to_string(),
                &user(to),
                &format!("m{i}"),
                &d,
            )
            .unwrap(),
        ));
        // another conversation interleaved
        new_id(
            r.send(
                T0 + i,
                "alice",
                &format!("c{i}"),
                &user("carol"),
                "other",
                &d,
            )
            .unwrap(),
        );
    }
    new_id(
        r.send(T0, "erin", "g", &group("g1"), "in group", &d)
            .unwrap(),
    );
    commit(&mut r);
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = r.history("bob", &user("alice"), before, 10, &d).unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|m: &StoredMessage| m.msg_id);
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let got: Vec<MsgId> = pages.concat().iter().map(|m| m.msg_id).collect();
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(got, want, "newest first, no overlap, nothing missed");
    assert_eq!(pages[0][0].text, "m24");
    // both participants see the same conversation
    let a = r.history("alice", &user("bob"), None, 0, &d).unwrap();
    assert_eq!(a.len(), 25);
    assert_eq!(
        store
            .history(&Conversation::of("alice", &user("carol")), None, 100)
            .unwrap()
            .len(),
        25
    );
    let g = r.history("bob", &group("g1"), None, 0, &d).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].text, "in group");
    assert_eq!(
        r.history("bob", &user("carol"), None, 10, &d)
            .unwrap_err()
            .code(),
        "forbidden"
    );
    assert_eq!(
        r.history("zed", &group("g1"), None, 10, &d)
            .unwrap_err()
            .code(),
        "forbidden"
    );
    assert_eq!(
        r.history("bob", &group("gx"), None, 10, &d)
            .unwrap_err()
            .code(),
        "not_found"
    );
}

pub fn retention_trim(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    let day = 86_400_000;
    let old: Vec<MsgId> = (0..5)
        .map(|i| {
            new_id(
                r.send(T0 + i, "alice", &format!("o{i}"), &user("bob"), "old", &d)
                    .unwrap(),
            )
        })
        .collect();
    // carol's only entries are old: her newest stays
    new_id(
        r.send(T0, "alice", "oc", &user("carol"), "old", &d)
            .unwrap(),
    );
    new_id(
        r.send(T0 + 1, "alice", "oc2", &user("carol"), "old", &d)
            .unwrap(),
    );
    commit(&mut r);
    let new = new_id(
        r.send(T0 + 10 * day, "bob", "n", &user("alice"), "new", &d)
            .unwrap(),
    );
    commit(&mut r);
    let counts = Relay::trim(store.as_ref(), T0 + 10 * day + 5, 5 * day).unwrap();
    assert_eq!(
        counts,
        TrimCounts {
            messages: 7,
            inbox: 7 + 5 + 1,
            dedupe: 7
        }
    );
    for id in &old {
        assert!(store.message(*id).unwrap().is_none());
    }
    assert!(store.message(new).unwrap().is_some());
    assert_eq!(store.dedupe("alice", "o0").unwrap(), None);
    assert!(store.dedupe("bob", "n").unwrap().is_some());
    // heads never go back
    assert_eq!(store.inbox_head("alice").unwrap(), 8);
    assert_eq!(store.inbox_head("bob").unwrap(), 6);
    assert_eq!(store.inbox_head("carol").unwrap(), 2);
    let carol = all(&store, "carol");
    assert_eq!(carol.len(), 1);
    assert_eq!(carol[0].seq, 2);
    let p = r.sync("bob", 0, 0).unwrap();
    assert!(p.trimmed);
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].seq, 6);
    let h = r.history("bob", &user("alice"), None, 0, &d).unwrap();
    assert_eq!(h.len(), 1);
    // trimming again removes nothing more
    assert_eq!(
        Relay::trim(store.as_ref(), T0 + 10 * day + 5, 5 * day).unwrap(),
        TrimCounts::default()
    );
    // seqs continue after a trim, also with a fresh relay
    let mut r2 = relay(&store);
    new_id(
        r2.send(T0 + 11 * day, "alice", "after", &user("carol"), "x", &d)
            .unwrap(),
    );
    commit(&mut r2);
    assert_eq!(store.inbox_head("carol").unwrap(), 3);
    // now carol's kept entry is no longer the newest
    let c = Relay::trim(store.as_ref(), T0 + 10 * day + 5, 5 * day).unwrap();
    assert_eq!(c.inbox, 1);
    assert_eq!(all(&store, "carol")[0].seq, 3);
}

pub fn durable_across_reopen(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let d = dir();
    let last = {
        let store = open(tmp.path());
        let mut r = relay(&store);
        let mut last = MsgId(0);
        for i in 0..10u64 {
            last = new_id(
                r.send(
                    T0 + 1000 + i,
                    "alice",
                    &i.to_string(),
                    &group("g1"),
                    "x",
                    &d,
                )
                .unwrap(),
            );
        }
        r.ack("bob", "phone", 7).unwrap();
        commit(&mut r);
        // pending but never committed: lost in the "crash", never acknowledged
        new_id(
            r.send(T0 + 2000, "alice", "lost", &user("bob"), "lost", &d)
                .unwrap(),
        );
        last
    };
    let store = open(tmp.path());
    assert_eq!(store.inbox_head("erin").unwrap(), 10);
    assert_eq!(all(&store, "bob").len(), 10);
    assert_eq!(store.device_ack("bob", "phone").unwrap(), 7);
    assert_eq!(store.device_ack("bob", "web").unwrap(), 0);
    assert_eq!(store.last_msg_id().unwrap(), Some(last));
    assert!(store.dedupe("alice", "lost").unwrap().is_none());
    // a restarted relay with the clock behind still mints larger ids and continues seqs
    let mut r = relay(&store);
    let id = new_id(
        r.send(T0, "alice", "lost", &user("bob"), "again", &d)
            .unwrap(),
    );
    assert!(id > last);
    commit(&mut r);
    let bob = all(&store, "bob");
    assert_eq!(bob.len(), 11);
    assert_gap_free(&bob);
}

pub fn acks(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    assert_eq!(r.ack("bob", "phone", 1).unwrap_err().code(), "bad_request");
    new_id(r.send(T0, "alice", "1", &user("bob"), "x", &d).unwrap());
    new_id(r.send(T0, "alice", "2", &user("bob"), "x", &d).unwrap());
    assert!(!r.has_pending_acks());
    r.ack("bob", "phone", 1).unwrap();
    r.ack("bob", "phone", 2).unwrap();
    r.ack("bob", "web", 1).unwrap();
    assert!(r.has_pending_acks());
    assert_eq!(r.ack("bob", "", 1).unwrap_err().code(), "bad_request");
    let b = commit(&mut r).unwrap();
    assert_eq!(b.acks.len(), 2, "one row per device per batch");
    assert_eq!(r.reader().device_ack("bob", "phone").unwrap(), 2);
    assert_eq!(r.reader().device_ack("bob", "web").unwrap(), 1);
    assert_eq!(r.ack("bob", "phone", 3).unwrap_err().code(), "bad_request");
    assert!(!r.has_pending_acks());
    // Acks may be held back over several batches: still one row per device, the latest.
    assert!(r.take_batch_holding_acks().is_none(), "nothing pending");
    r.ack("bob", "web", 2).unwrap();
    assert!(r.take_batch_holding_acks().is_none(), "acks alone are held");
    new_id(r.send(T0, "alice", "3", &user("bob"), "x", &d).unwrap());
    r.ack("bob", "phone", 3).unwrap();
    let b = r.take_batch_holding_acks().unwrap();
    assert_eq!(
        (b.acks.len(), b.inbox.len()),
        (0, 2),
        "the acks stay behind"
    );
    r.store().commit(&b).unwrap();
    r.committed(b.id);
    r.ack("bob", "web", 1).unwrap();
    new_id(r.send(T0, "alice", "4", &user("bob"), "x", &d).unwrap());
    r.ack("bob", "phone", 4).unwrap();
    let b = commit(&mut r).unwrap();
    let mut rows: Vec<(&str, u64)> = b.acks.iter().map(|a| (a.device.as_str(), a.seq)).collect();
    rows.sort_unstable();
    assert_eq!(
        rows,
        vec![("phone", 4), ("web", 2)],
        "the highest ack of each device (web's later ack of 1 is stale)"
    );
    assert_eq!(r.reader().device_ack("bob", "phone").unwrap(), 4);
    assert!(!r.has_pending_acks());
}

pub fn typing_is_ephemeral_and_rate_limited(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    assert_eq!(
        r.typing(T0, "alice", &user("bob"), &d).unwrap(),
        vec!["bob"]
    );
    assert!(
        r.typing(T0 + 500, "alice", &user("bob"), &d)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        r.typing(T0 + 500, "alice", &user("carol"), &d).unwrap(),
        vec!["carol"]
    );
    assert_eq!(
        r.typing(T0 + 1000, "alice", &user("bob"), &d).unwrap(),
        vec!["bob"]
    );
    assert_eq!(
        r.typing(T0, "bob", &group("g1"), &d).unwrap(),
        vec!["alice", "carol", "dave", "erin"]
    );
    assert_eq!(
        r.typing(T0, "bob", &user("carol"), &d).unwrap_err().code(),
        "forbidden"
    );
    assert_eq!(
        r.typing(T0, "zed", &group("g1"), &d).unwrap_err().code(),
        "forbidden"
    );
    assert_eq!(
        r.typing(T0, "bob", &group("gx"), &d).unwrap_err().code(),
        "not_found"
    );
    // many senders: the limiter's map is pruned, never unbounded
    for i in 0..10_000u64 {
        let dd = Dir::new(&[(&format!("u{i}"), "bob")], &[]);
        r.typing(T0 + 10_000 + i * 2000, &format!("u{i}"), &user("bob"), &dd)
            .unwrap();
    }
    assert!(r.take_batch().is_none(), "typing is never stored");
}

/// A store whose commits can be made to fail.
struct Flaky {
    inner: Arc<dyn ChatStore>,
    fail: AtomicBool,
}

impl ChatStore for Flaky {
    fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        self.inner.inbox_head(user)
    }
    fn read_inbox(&self, u: &str, after: u64, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        self.inner.read_inbox(u, after, limit)
    }
    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, StoreError> {
        self.inner.message(id)
    }
    fn dedupe(&self, s: &str, c: &str) -> Result<Option<(MsgId, u64)>, StoreError> {
        self.inner.dedupe(s, c)
    }
    fn history(
        &self,
        c: &Conversation,
        before: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.history(c, before, limit)
    }
    fn device_ack(&self, u: &str, d: &str) -> Result<u64, StoreError> {
        self.inner.device_ack(u, d)
    }
    fn last_msg_id(&self) -> Result<Option<MsgId>, StoreError> {
        self.inner.last_msg_id()
    }
    fn commit(&self, b: &WriteBatch) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        self.inner.commit(b)
    }
    fn trim(&self, t: u64) -> Result<TrimCounts, StoreError> {
        self.inner.trim(t)
    }
    fn dedupe_len_hint(&self) -> Result<usize, StoreError> {
        self.inner.dedupe_len_hint()
    }
    fn dedupe_keys(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), StoreError> {
        self.inner.dedupe_keys(f)
    }
}

pub fn failed_commit_resets(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let flaky = Arc::new(Flaky {
        inner: open(tmp.path()),
        fail: AtomicBool::new(false),
    });
    let store: Arc<dyn ChatStore> = flaky.clone();
    let mut r = relay(&store);
    let d = dir();
    new_id(r.send(T0, "alice", "1", &user("bob"), "ok", &d).unwrap());
    commit(&mut r);
    flaky.fail.store(true, Ordering::SeqCst);
    let m = new_id(
        r.send(T0 + 1, "alice", "2", &user("bob"), "fails", &d)
            .unwrap(),
    );
    let b = r.take_batch().unwrap();
    // an op arrives while the failing batch is in flight
    new_id(
        r.send(T0 + 2, "alice", "3", &user("bob"), "behind", &d)
            .unwrap(),
    );
    assert!(store.commit(&b).is_err());
    assert_eq!(
        r.reset(),
        Some(b.id + 1),
        "the pending batch is dropped too"
    );
    flaky.fail.store(false, Ordering::SeqCst);
    // edits of the lost message find nothing; the retry is a new send
    assert_eq!(
        r.edit(T0 + 3, "alice", m, "x", &d).unwrap_err().code(),
        "not_found"
    );
    assert!(matches!(
        r.send(T0 + 3, "alice", "2", &user("bob"), "retry", &d)
            .unwrap(),
        SendOutcome::New { .. }
    ));
    let b2 = commit(&mut r).unwrap();
    assert!(b2.id > b.id + 1);
    let bob = all(&store, "bob");
    assert_eq!(bob.len(), 2);
    assert_gap_free(&bob);
    assert_eq!(bob[1].text.as_deref(), Some("retry"));
}

pub fn edit_of_in_flight_message(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut r = relay(&store);
    let d = dir();
    let m = new_id(r.send(T0, "alice", "1", &user("bob"), "a", &d).unwrap());
    let b1 = r.take_batch().unwrap();
    r.edit(T0 + 1, "alice", m, "b", &d).unwrap();
    store.commit(&b1).unwrap();
    r.committed(b1.id);
    r.delete(T0 + 2, "alice", m, &d).unwrap();
    commit(&mut r);
    let kinds: Vec<EntryKind> = all(&store, "bob").iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EntryKind::Message, EntryKind::Edit, EntryKind::Delete]
    );
    let stored = store.message(m).unwrap().unwrap();
    assert!(stored.deleted);
    assert_eq!(stored.edited_ts, Some(T0 + 1));
}

pub fn head_cache_eviction(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let limits = Limits {
        max_cached_heads: 10,
        ..Limits::default()
    };
    let mut r = relay_with(&store, limits);
    let mut d = Dir::default();
    for i in 0..50 {
        d = Dir::new(&[("hub", &*format!("u{i}"))], &[]);
        new_id(
            r.send(T0, "hub", &i.to_string(), &user(&format!("u{i}")), "x", &d)
                .unwrap(),
        );
        if i % 7 == 0 {
            commit(&mut r);
        }
    }
    commit(&mut r);
    assert!(r.cached_heads() <= 10);
    d.friends.insert(("hub".into(), "u3".into()));
    new_id(r.send(T0, "hub", "again", &user("u3"), "x", &d).unwrap());
    commit(&mut r);
    let hub = all(&store, "hub");
    assert_eq!(hub.len(), 51);
    assert_gap_free(&hub);
    assert_gap_free(&all(&store, "u3"));
}

/// Past `max_unsettled_sends` sends waiting for the disk, a new send is refused as busy (a
/// retry of one already accepted is still answered); once a batch is durable, sends pass
/// again. Nothing of a refused send is stored.
pub fn busy_past_the_unsettled_bound(open: Opener) {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let limits = Limits {
        max_unsettled_sends: 3,
        ..Limits::default()
    };
    let mut r = relay_with(&store, limits);
    let d = dir();
    let first = new_id(r.send(T0, "alice", "a1", &user("bob"), "1", &d).unwrap());
    new_id(r.send(T0, "alice", "a2", &user("bob"), "2", &d).unwrap());
    // one in a batch already taken (in flight), one pending: both count
    let in_flight = r.take_batch().unwrap();
    new_id(r.send(T0, "alice", "a3", &user("carol"), "3", &d).unwrap());
    let refused = r
        .send(T0, "alice", "a4", &user("bob"), "4", &d)
        .unwrap_err();
    assert!(
        matches!(refused, ChatError::Busy { unsettled: 3 }),
        "{refused}"
    );
    assert_eq!(refused.code(), "rate_limited");
    // a retry of an accepted send still gets its id
    assert!(matches!(
        r.send(T0, "alice", "a1", &user("bob"), "1", &d).unwrap(),
        SendOutcome::Duplicate { msg_id, .. } if msg_id == first
    ));
    store.commit(&in_flight).unwrap();
    r.committed(in_flight.id);
    // two are durable now: room again
    new_id(r.send(T0, "alice", "a4", &user("bob"), "4", &d).unwrap());
    commit(&mut r);
    let texts: Vec<_> = all(&store, "bob")
        .into_iter()
        .filter_map(|e| e.text)
        .collect();
    assert_eq!(texts, ["1", "2", "4"]);
    assert_gap_free(&all(&store, "alice"));
}
