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
    if std::panic::catch_unwind(a_second_writer_cannot_reuse_a_seq_or_a_client_id).is_err() {
        failed.push("a_second_writer_cannot_reuse_a_seq_or_a_client_id");
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
