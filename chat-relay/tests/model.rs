//! Model test: random operation sequences (sends, retries, edits, deletes, reads, commits,
//! crashes) against the relay on a real store, compared with a plain in-memory model of what
//! must be durable. Runs over both stores.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

mod common;
#[path = "../../presence-wire/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;

use chat_relay::{ChatStore, Directory, EntryKind, MsgId, Relay, SendOutcome, Target};
use common::{Dir, Opener, T0, commit, relay};
use proptest::prelude::*;

const USERS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    Send {
        from: usize,
        to: usize,
        group: bool,
        client: u8,
        empty: bool,
    },
    Edit {
        user: usize,
        msg: usize,
    },
    Delete {
        user: usize,
        msg: usize,
    },
    Read {
        user: usize,
        msg: usize,
    },
    Commit,
    /// Drop the relay and the store without committing the pending batch, reopen.
    Crash,
    /// The clock jumps back.
    ClockBack,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 0..4usize, any::<bool>(), 0..6u8, prop::bool::weighted(0.05))
            .prop_map(|(from, to, group, client, empty)| Op::Send { from, to, group, client, empty }),
        2 => (0..4usize, any::<usize>()).prop_map(|(user, msg)| Op::Edit { user, msg }),
        1 => (0..4usize, any::<usize>()).prop_map(|(user, msg)| Op::Delete { user, msg }),
        2 => (0..4usize, any::<usize>()).prop_map(|(user, msg)| Op::Read { user, msg }),
        3 => Just(Op::Commit),
        1 => Just(Op::Crash),
        1 => Just(Op::ClockBack),
    ]
}

#[derive(Debug, Clone)]
struct Msg {
    id: MsgId,
    from: String,
    target: Target,
    deleted: bool,
}

/// (kind, msg id, from, text)
type Entry = (EntryKind, MsgId, String, Option<String>);

#[derive(Debug, Clone, Default)]
struct State {
    inboxes: HashMap<String, Vec<Entry>>,
    msgs: Vec<Msg>,
    dedupe: HashMap<(String, u8), MsgId>,
}

impl State {
    fn append(&mut self, owners: &[String], e: Entry) {
        for o in owners {
            self.inboxes.entry(o.clone()).or_default().push(e.clone());
        }
    }
}

fn dir() -> Dir {
    // a–b, a–c, b–c friends; d has no friends; group g = a, b, d
    Dir::new(
        &[("a", "b"), ("a", "c"), ("b", "c")],
        &[("g", &["a", "b", "d"])],
    )
}

fn recipients(d: &Dir, m: &Msg) -> Vec<String> {
    match &m.target {
        Target::User(to) => vec![m.from.clone(), to.clone()],
        Target::Group(g) => {
            let mut v = d.groups[g].clone();
            v.push(m.from.clone());
            v.sort();
            v.dedup();
            v
        }
    }
}

fn check(store: &Arc<dyn ChatStore>, durable: &State) {
    for u in USERS {
        let got: Vec<Entry> = store
            .read_inbox(u, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                assert_eq!(e.seq, i as u64 + 1, "gap-free");
                (e.kind, e.msg_id, e.from, e.text)
            })
            .collect();
        let want = durable.inboxes.get(u).cloned().unwrap_or_default();
        assert_eq!(got, want, "inbox of {u}");
        assert_eq!(store.inbox_head(u).unwrap(), want.len() as u64);
    }
}

fn run(open: Opener, ops: &[Op]) {
    let tmp = tempfile::tempdir().unwrap();
    let d = dir();
    let mut store = open(tmp.path());
    let mut r: Relay = relay(&store);
    let mut durable = State::default();
    let mut pending = State::default();
    let mut now = T0;
    let mut last_id = MsgId(0);
    // ids minted into a batch lost in a crash were never acknowledged: only ids above the
    // newest durable one are promised after a restart
    let mut durable_last = MsgId(0);
    for (step, op) in ops.iter().enumerate() {
        now += 3;
        let text = format!("t{step}");
        match op {
            Op::Send {
                from,
                to,
                group,
                client,
                empty,
            } => {
                let from = USERS[*from].to_string();
                let target = if *group {
                    Target::Group(if *to == 3 { "nope".into() } else { "g".into() })
                } else {
                    Target::User(USERS[*to].into())
                };
                let text = if *empty { String::new() } else { text };
                let got = r.send(now, &from, &client.to_string(), &target, &text, &d);
                let key = (from.clone(), *client);
                if let Some(&id) = pending.dedupe.get(&key) {
                    let SendOutcome::Duplicate {
                        msg_id, pending: p, ..
                    } = got.unwrap()
                    else {
                        panic!("expected a duplicate")
                    };
                    assert_eq!(msg_id, id);
                    assert_eq!(p.is_none(), durable.dedupe.contains_key(&key));
                    continue;
                }
                let want_err = if text.is_empty() {
                    Some("bad_request")
                } else {
                    match &target {
                        Target::User(to) if *to == from || !d.are_friends(&from, to) => {
                            Some("forbidden")
                        }
                        Target::Group(g) if g == "nope" => Some("not_found"),
                        Target::Group(g) if !d.groups[g].contains(&from) => Some("forbidden"),
                        _ => None,
                    }
                };
                match want_err {
                    Some(code) => assert_eq!(got.unwrap_err().code(), code),
                    None => {
                        let SendOutcome::New { msg_id, .. } = got.unwrap() else {
                            panic!("expected a new message")
                        };
                        assert!(msg_id > last_id, "ids increase");
                        last_id = msg_id;
                        let m = Msg {
                            id: msg_id,
                            from: from.clone(),
                            target,
                            deleted: false,
                        };
                        let owners = match &m.target {
                            Target::User(to) => vec![from.clone(), to.clone()],
                            Target::Group(g) => d.groups[g].clone(),
                        };
                        pending.append(&owners, (EntryKind::Message, msg_id, from, Some(text)));
                        pending.msgs.push(m);
                        pending.dedupe.insert(key, msg_id);
                    }
                }
            }
            Op::Edit { user, msg } | Op::Delete { user, msg } => {
                if pending.msgs.is_empty() {
                    continue;
                }
                let i = msg % pending.msgs.len();
                let m = pending.msgs[i].clone();
                let user = USERS[*user];
                let is_edit = matches!(op, Op::Edit { .. });
                let got = if is_edit {
                    r.edit(now, user, m.id, &text, &d)
                } else {
                    r.delete(now, user, m.id, &d)
                };
                if m.from != user {
                    assert_eq!(got.unwrap_err().code(), "forbidden");
                } else if m.deleted {
                    assert_eq!(got.unwrap_err().code(), "not_found");
                } else {
                    got.unwrap();
                    let owners = recipients(&d, &m);
                    if is_edit {
                        pending
                            .append(&owners, (EntryKind::Edit, m.id, m.from.clone(), Some(text)));
                    } else {
                        pending.append(&owners, (EntryKind::Delete, m.id, m.from.clone(), None));
                        pending.msgs[i].deleted = true;
                    }
                }
            }
            Op::Read { user, msg } => {
                if pending.msgs.is_empty() {
                    continue;
                }
                let m = pending.msgs[msg % pending.msgs.len()].clone();
                let user = USERS[*user];
                let got = r.read(now, user, m.id, &d);
                let recipient = match &m.target {
                    Target::User(to) => to == user,
                    Target::Group(g) => d.groups[g].iter().any(|x| x == user),
                };
                if m.deleted {
                    assert_eq!(got.unwrap_err().code(), "not_found");
                } else if m.from == user {
                    assert_eq!(got.unwrap_err().code(), "bad_request");
                } else if !recipient {
                    assert_eq!(got.unwrap_err().code(), "forbidden");
                } else {
                    got.unwrap();
                    pending.append(
                        std::slice::from_ref(&m.from),
                        (EntryKind::Read, m.id, user.to_string(), None),
                    );
                }
            }
            Op::Commit => {
                commit(&mut r);
                durable = pending.clone();
                durable_last = last_id;
                check(&store, &durable);
            }
            Op::Crash => {
                drop(r);
                drop(store);
                store = open(tmp.path());
                r = relay(&store);
                pending = durable.clone();
                last_id = durable_last;
                check(&store, &durable);
            }
            Op::ClockBack => now -= 5_000,
        }
    }
    commit(&mut r);
    check(&store, &pending);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        rng_seed: support::fixed_seed(0x5eed_c4a7),
        ..ProptestConfig::default()
    })]

    #[test]
    fn redb_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(common::open_redb, &ops);
    }

    #[test]
    fn fjall_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(common::open_fjall, &ops);
    }
}
