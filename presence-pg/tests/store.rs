//! presence-pg against a real PostgreSQL 15: one server for this test binary, a fresh database
//! per case, the cases run concurrently and each is reported by name.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use presence_cluster::slot_of;
use presence_pg::{Applied, ChangeKind, Error, Listener, Notice, StatusRow, Store, schema};
use presence_tests::services::Postgres;
use tokio::time::timeout;

/// Upper bound of one case.
const LIMIT: Duration = Duration::from_secs(40);

type Case = fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), (|url| Box::pin($name(url))) as Case)),*]
    };
}

#[test]
fn postgres_graph_store() {
    let cases: &[(&str, Case)] = cases![
        each_operation,
        ids_round_trip,
        slot_loads_are_exact,
        bulk_load_merges_and_logs_a_reload,
        change_log_follows_commit_order,
        notify_reaches_a_listener_across_reconnects,
        migration_runs_once_under_concurrency,
        bad_input_is_refused_and_writes_nothing,
        statuses_round_trip_by_slot,
        the_friend_cap_holds_under_concurrent_writers,
    ];
    let mut pg = Postgres::start().expect("start PostgreSQL");
    let urls: Vec<String> = cases
        .iter()
        .map(|(name, _)| pg.create_database(name).expect("create a database"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let failed: Vec<String> = rt.block_on(async {
        let handles: Vec<_> = cases
            .iter()
            .zip(urls)
            .map(|(&(name, case), url)| {
                (
                    name,
                    tokio::spawn(async move { timeout(LIMIT, case(url)).await }),
                )
            })
            .collect();
        let mut failed = Vec::new();
        for (name, h) in handles {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => failed.push(format!("{name}: timed out after {LIMIT:?}")),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        failed
    });
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    durable_across_a_crash(&mut pg, &rt);
}

/// Last, alone on the server: committed writes survive `pg_ctl stop -m immediate` (no
/// checkpoint; the restart replays the WAL), and the same `Store` and `Listener` carry on by
/// reopening their connections.
fn durable_across_a_crash(pg: &mut Postgres, rt: &tokio::runtime::Runtime) {
    let url = pg.create_database("crash").expect("create a database");
    let (s, mut l) = rt.block_on(async {
        timeout(LIMIT, async {
            let s = store(&url).await;
            let mut l = Listener::start(&url).expect("listener");
            assert_eq!(next_notice(&mut l).await, Notice::Listening);
            s.apply_friendships(&[("a\0", "b"), ("b", "c")], &[])
                .await
                .expect("write");
            s.put_group("g", &["a\0", "c"]).await.expect("group");
            (s, l)
        })
        .await
        .expect("bounded")
    });
    pg.stop_immediate().expect("crash");
    pg.start_again().expect("restart");
    rt.block_on(async {
        timeout(LIMIT, async {
            assert_eq!(
                s.friends("b").await.expect("read after restart"),
                ["a\0", "c"]
            );
            assert_eq!(
                s.group("g").await.expect("group"),
                Some(vec!["a\0".into(), "c".into()])
            );
            loop {
                match next_notice(&mut l).await {
                    Notice::Listening => break,
                    Notice::Change(_) => {}
                }
            }
            let id = s
                .apply_friendships(&[("c", "d")], &[])
                .await
                .expect("write after restart")
                .change;
            assert_eq!(Some(next_notice(&mut l).await), id.map(Notice::Change));
            assert_eq!(s.changes_after(0, 10).await.expect("log").len(), 3);
        })
        .await
        .expect("bounded")
    });
}

async fn store(url: &str) -> Store {
    Store::connect(url).await.expect("connect and migrate")
}

fn slots_of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<u16> {
    ids.into_iter()
        .map(|i| slot_of(i.as_bytes()).get())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn all_slots() -> Vec<u16> {
    (0..presence_cluster::SLOTS).collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|&(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

async fn each_operation(url: String) {
    let s = store(&url).await;
    let r = s
        .apply_friendships(&[("a", "b"), ("c", "b"), ("c", "a")], &[])
        .await
        .expect("add");
    assert_eq!((r.added, r.removed), (3, 0));
    let first = r.change.expect("logged");
    let r = s
        .apply_friendships(&[("b", "a")], &[])
        .await
        .expect("re-add");
    assert_eq!(
        r,
        Applied::default(),
        "already friends: nothing written, nothing logged"
    );
    let r = s
        .apply_friendships(&[("a", "d")], &[("a", "c"), ("x", "y")])
        .await
        .expect("mixed");
    assert_eq!((r.added, r.removed), (1, 1));
    assert_eq!(s.friends("a").await.expect("friends"), ["b", "d"]);
    assert_eq!(s.friends("c").await.expect("friends"), ["b"]);
    assert_eq!(s.friends("d").await.expect("friends"), ["a"]);

    let r = s
        .replace_friends("a", &["c", "e", "d"])
        .await
        .expect("replace");
    assert_eq!((r.added, r.removed), (2, 1), "c and e in, b out");
    assert_eq!(s.friends("a").await.expect("friends"), ["c", "d", "e"]);
    assert_eq!(s.friends("b").await.expect("friends"), ["c"]);
    assert_eq!(s.friends("e").await.expect("friends"), ["a"]);
    let r = s
        .replace_friends("a", &["e", "c", "d"])
        .await
        .expect("same");
    assert_eq!(r, Applied::default());

    assert!(s.put_group("g", &["a", "b"]).await.expect("put").is_some());
    assert_eq!(s.put_group("g", &["a", "b"]).await.expect("same"), None);
    assert!(
        s.put_group("g", &["c", "b"])
            .await
            .expect("replace")
            .is_some()
    );
    assert_eq!(
        s.group("g").await.expect("group"),
        Some(vec!["c".into(), "b".into()])
    );
    assert_eq!(
        s.groups().await.expect("groups"),
        [("g".to_owned(), vec!["c".to_owned(), "b".to_owned()])]
    );
    let del = s.delete_group("g").await.expect("delete").expect("logged");
    assert_eq!(s.delete_group("g").await.expect("again"), None);
    assert_eq!(s.group("g").await.expect("group"), None);

    let log = s.changes_after(0, 100).await.expect("log");
    let kinds: Vec<ChangeKind> = log.iter().map(|c| c.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Edges {
                added: owned(&[("a", "b"), ("a", "c"), ("b", "c")]),
                removed: vec![],
            },
            ChangeKind::Edges {
                added: owned(&[("a", "d")]),
                removed: owned(&[("a", "c")]),
            },
            ChangeKind::Edges {
                added: owned(&[("a", "c"), ("a", "e")]),
                removed: owned(&[("a", "b")]),
            },
            ChangeKind::PutGroup {
                gid: "g".into(),
                members: vec!["a".into(), "b".into()]
            },
            ChangeKind::PutGroup {
                gid: "g".into(),
                members: vec!["c".into(), "b".into()]
            },
            ChangeKind::DeleteGroup { gid: "g".into() },
        ]
    );
    assert_eq!(log[0].id, first);
    assert_eq!(log[0].slots, slots_of(["a", "b", "c"]));
    assert_eq!(
        log[4].slots,
        slots_of(["a", "b", "c"]),
        "old and new members"
    );
    assert_eq!(log[5].slots, slots_of(["b", "c"]));
    assert!(log.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(s.last_change_id().await.expect("last"), del);
    assert_eq!(s.changes_after(log[3].id, 1).await.expect("page").len(), 1);
    assert_eq!(s.prune_changes(log[2].id).await.expect("prune"), 3);
    assert_eq!(s.changes_after(0, 100).await.expect("log").len(), 3);
}

async fn ids_round_trip(url: String) {
    let s = store(&url).await;
    let long_ascii = "x".repeat(128);
    let long_utf8 = "é".repeat(64); // 128 bytes
    let ids = [
        "al\0ice",
        "\0",
        long_ascii.as_str(),
        long_utf8.as_str(),
        "😀\0😀",
    ];
    let pairs: Vec<(&str, &str)> = ids[1..].iter().map(|&b| (ids[0], b)).collect();
    let r = s.apply_friendships(&pairs, &[]).await.expect("add");
    assert_eq!(r.added, 4);
    let mut want: Vec<String> = ids[1..].iter().map(|i| (*i).to_owned()).collect();
    want.sort();
    assert_eq!(s.friends(ids[0]).await.expect("friends"), want);
    for id in &ids[1..] {
        assert_eq!(s.friends(id).await.expect("friends"), [ids[0]]);
    }
    let mut edges = s.load_slots(&slots_of(ids)).await.expect("load");
    edges.sort();
    let mut want: Vec<(String, String)> = pairs
        .iter()
        .flat_map(|&(a, b)| [(a.to_owned(), b.to_owned()), (b.to_owned(), a.to_owned())])
        .collect();
    want.sort();
    assert_eq!(edges, want);
    s.put_group(&long_utf8, &ids).await.expect("group");
    assert_eq!(
        s.group(&long_utf8).await.expect("group"),
        Some(ids.iter().map(|i| (*i).to_owned()).collect())
    );
    let bulk = [("\0\0", long_utf8.as_str()), ("\0\0", "al\0ice")];
    assert_eq!(s.bulk_load(bulk).await.expect("bulk").added, 2);
    assert_eq!(
        s.friends("\0\0").await.expect("friends"),
        ["al\0ice", long_utf8.as_str()]
    );
    let log = s.changes_after(0, 10).await.expect("log");
    let ChangeKind::Edges { added, .. } = &log[0].kind else {
        panic!("edges first: {log:?}");
    };
    assert_eq!(added.len(), 4);
    assert!(added.iter().any(|(a, b)| a == "\0" && b == "al\0ice"));
    assert_eq!(
        log[1].kind,
        ChangeKind::PutGroup {
            gid: long_utf8.clone(),
            members: ids.iter().map(|i| (*i).to_owned()).collect()
        }
    );
}

/// A small deterministic generator (no clock, no OS randomness).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn random_pairs(users: u64, n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = Lcg(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let (a, b) = (rng.below(users), rng.below(users));
        if a == b || !seen.insert((a.min(b), a.max(b))) {
            continue;
        }
        out.push((format!("u{a}"), format!("u{b}")));
    }
    out
}

async fn slot_loads_are_exact(url: String) {
    let s = store(&url).await;
    let pairs = random_pairs(400, 3000, 7);
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let r = s.apply_friendships(&refs, &[]).await.expect("add");
    assert_eq!(r.added, 3000);
    let mine = {
        let mut v = slots_of(
            (0..40)
                .map(|i| format!("u{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        );
        v.push(1023);
        v
    };
    let mut got = s.load_slots(&mine).await.expect("load");
    got.sort();
    let mut want: Vec<(String, String)> = pairs
        .iter()
        .flat_map(|(a, b)| [(a.clone(), b.clone()), (b.clone(), a.clone())])
        .filter(|(u, _)| mine.contains(&slot_of(u.as_bytes()).get()))
        .collect();
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(got, want, "exactly the edges of users in the loaded slots");
    assert_eq!(s.load_slots(&all_slots()).await.expect("all").len(), 6000);
    assert!(s.load_slots(&[]).await.expect("none").is_empty());
    assert!(matches!(
        s.load_slots(&[5, 1024]).await,
        Err(Error::BadSlot(1024))
    ));
}

async fn bulk_load_merges_and_logs_a_reload(url: String) {
    let s = store(&url).await;
    s.apply_friendships(&[("u1", "u2")], &[])
        .await
        .expect("one edge first");
    let mut pairs = random_pairs(2000, 10_000, 11);
    pairs.push(("u2".into(), "u1".into())); // already there
    pairs.push(pairs[0].clone()); // twice in the load
    let r = s.bulk_load(pairs.clone()).await.expect("bulk");
    let fresh: HashSet<(String, String)> = pairs
        .iter()
        .map(|(a, b)| {
            if a < b {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            }
        })
        .filter(|p| p != &("u1".to_owned(), "u2".to_owned()))
        .collect();
    assert_eq!(r.added, fresh.len() as u64);
    let all = s.load_slots(&all_slots()).await.expect("all");
    assert_eq!(all.len(), 2 * (fresh.len() + 1));
    let log = s.changes_after(1, 10).await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].kind, ChangeKind::Reload);
    assert_eq!(
        log[0].slots,
        slots_of(fresh.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]))
    );
    // Nothing new: nothing logged.
    let again = s.bulk_load([("u1", "u2")]).await.expect("again");
    assert_eq!(again, Applied::default());
}

/// Two writers on their own connections toggle the same few friendships while a follower reads
/// the log from its cursor as it grows: the follower's replay must end equal to the table, which
/// fails if an id ever became visible before a smaller one.
async fn change_log_follows_commit_order(url: String) {
    const USERS: u64 = 6;
    const WRITES: usize = 120;
    let setup = store(&url).await;
    let writer = |seed: u64| {
        let url = url.clone();
        tokio::spawn(async move {
            let s = store(&url).await;
            let mut rng = Lcg(seed);
            let mut ids = Vec::new();
            for _ in 0..WRITES {
                let a = rng.below(USERS);
                let b = (a + 1 + rng.below(USERS - 1)) % USERS;
                let (a, b) = (format!("u{a}"), format!("u{b}"));
                let pair = [(a.as_str(), b.as_str())];
                let r = if rng.below(2) == 0 {
                    s.apply_friendships(&pair, &[]).await
                } else {
                    s.apply_friendships(&[], &pair).await
                };
                if let Some(id) = r.expect("write").change {
                    ids.push(id);
                }
            }
            ids
        })
    };
    let (w1, w2) = (writer(1), writer(2));
    let mut state: HashSet<(String, String)> = HashSet::new();
    let mut cursor = 0;
    let mut seen = Vec::new();
    let mut replay = |batch: Vec<presence_pg::Change>, cursor: &mut i64| {
        for c in batch {
            assert!(c.id > *cursor);
            *cursor = c.id;
            seen.push(c.id);
            let ChangeKind::Edges { added, removed } = c.kind else {
                panic!("edges only");
            };
            for p in added {
                assert!(state.insert(p), "added twice without a removal between");
            }
            for p in removed {
                assert!(state.remove(&p), "removed one that was not there");
            }
        }
    };
    while !(w1.is_finished() && w2.is_finished()) {
        let batch = setup.changes_after(cursor, 7).await.expect("follow");
        replay(batch, &mut cursor);
    }
    let mut ids = w1.await.expect("writer 1");
    ids.extend(w2.await.expect("writer 2"));
    loop {
        let batch = setup.changes_after(cursor, 1000).await.expect("drain");
        if batch.is_empty() {
            break;
        }
        replay(batch, &mut cursor);
    }
    ids.sort_unstable();
    assert_eq!(
        seen, ids,
        "the follower saw every committed change, in id order"
    );
    let table: HashSet<(String, String)> = setup
        .load_slots(&all_slots())
        .await
        .expect("all")
        .into_iter()
        .filter(|(a, b)| a < b)
        .collect();
    assert_eq!(state, table, "replaying the log rebuilds the table");
}

async fn next_notice(l: &mut Listener) -> Notice {
    timeout(Duration::from_secs(10), l.next())
        .await
        .expect("a notice within 10 s")
        .expect("listener alive")
}

async fn notify_reaches_a_listener_across_reconnects(url: String) {
    let s = store(&url).await;
    let mut l = Listener::start(&url).expect("listener");
    assert_eq!(next_notice(&mut l).await, Notice::Listening);
    let id = s
        .apply_friendships(&[("a", "b")], &[])
        .await
        .expect("write")
        .change;
    assert_eq!(Some(next_notice(&mut l).await), id.map(Notice::Change));

    // Cut the listener's connection from the server side: it comes back by itself.
    let raw = {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("raw connection");
        tokio::spawn(conn);
        c
    };
    let killed: i64 = raw
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1);
    assert_eq!(
        next_notice(&mut l).await,
        Notice::Listening,
        "re-subscribed"
    );
    let id = s.put_group("g", &["a"]).await.expect("write");
    assert_eq!(Some(next_notice(&mut l).await), id.map(Notice::Change));
}

async fn migration_runs_once_under_concurrency(url: String) {
    let (a, b, c) = tokio::join!(
        Store::connect(&url),
        Store::connect(&url),
        Store::connect(&url)
    );
    for s in [a, b, c] {
        let s = s.expect("connect");
        assert_eq!(s.schema_version().await.expect("version"), schema::latest());
    }
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    let rows: i64 = raw
        .query_one("SELECT count(*) FROM schema_version", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, i64::from(schema::latest()), "each migration ran once");
    // A database migrated by a newer build is refused, not downgraded.
    raw.execute("INSERT INTO schema_version (version) VALUES (999)", &[])
        .await
        .expect("bump");
    assert!(matches!(
        Store::connect(&url).await,
        Err(Error::SchemaTooNew { found: 999, .. })
    ));
}

async fn bad_input_is_refused_and_writes_nothing(url: String) {
    let s = store(&url).await;
    let long = "é".repeat(64) + "x"; // 129 bytes
    let bad_len = |r: Result<_, Error>, want: usize| {
        assert!(
            matches!(r, Err(Error::BadId { len, .. }) if len == want),
            "{:?}",
            r.map(|_: Applied| ())
        );
    };
    bad_len(s.apply_friendships(&[("a", "b"), ("", "b")], &[]).await, 0);
    bad_len(
        s.apply_friendships(&[("a", "b")], &[("c", &long)]).await,
        129,
    );
    bad_len(s.replace_friends("", &["a"]).await, 0);
    bad_len(s.replace_friends("a", &["b", &long]).await, 129);
    bad_len(
        s.bulk_load(
            (0..1000)
                .map(|i| (format!("u{i}"), format!("v{i}")))
                .chain([("u".into(), long.clone())]),
        )
        .await,
        129,
    );
    assert!(matches!(
        s.apply_friendships(&[("a", "b"), ("c", "c")], &[]).await,
        Err(Error::SelfFriendship(u)) if u == "c"
    ));
    assert!(matches!(
        s.replace_friends("a", &["b", "a"]).await,
        Err(Error::SelfFriendship(_))
    ));
    assert!(matches!(
        s.bulk_load([("a", "b"), ("z", "z")]).await,
        Err(Error::SelfFriendship(_))
    ));
    assert!(matches!(
        s.apply_friendships(&[("a", "b")], &[("b", "a")]).await,
        Err(Error::DuplicatePair(..))
    ));
    assert!(matches!(
        s.replace_friends("a", &["b", "b"]).await,
        Err(Error::DuplicatePair(..))
    ));
    assert!(matches!(
        s.put_group("", &["a"]).await,
        Err(Error::BadId { what: "group", .. })
    ));
    assert!(matches!(
        s.put_group("g", &["a", ""]).await,
        Err(Error::BadId { what: "user", .. })
    ));
    assert!(matches!(
        s.delete_group(&long).await,
        Err(Error::BadId { .. })
    ));
    assert!(matches!(s.friends("").await, Err(Error::BadId { .. })));

    assert!(
        s.load_slots(&all_slots()).await.expect("edges").is_empty(),
        "no edge written"
    );
    assert!(
        s.groups().await.expect("groups").is_empty(),
        "no group written"
    );
    assert!(
        s.changes_after(0, 10).await.expect("log").is_empty(),
        "nothing logged"
    );
    // The store still works after the refusals (the aborted COPY left no open transaction).
    let r = s
        .bulk_load([("a", "b")])
        .await
        .expect("bulk after a refused bulk");
    assert_eq!(r.added, 1);
}

/// Statuses are kept by slot, the latest of a user's rows wins, a plain `available` removes
/// the row, texts keep every byte (NUL included), and a bad status refuses the whole batch.
async fn statuses_round_trip_by_slot(url: String) {
    let s = store(&url).await;
    let row = |u: &str, st: &str, t: Option<&str>| StatusRow {
        user: u.into(),
        status: st.into(),
        text: t.map(String::from),
    };
    s.put_statuses(&[
        row("a", "busy", Some("in a meeting")),
        row("b", "invisible", None),
        row("c", "dnd", Some("nul\0inside")),
        row("a", "dnd", None),
        row("d", "available", Some("here")),
    ])
    .await
    .expect("put");
    let mut all = s.load_statuses(&all_slots()).await.expect("load");
    all.sort_by(|x, y| x.user.cmp(&y.user));
    assert_eq!(
        all,
        vec![
            row("a", "dnd", None),
            row("b", "invisible", None),
            row("c", "dnd", Some("nul\0inside")),
            row("d", "available", Some("here")),
        ]
    );
    // Only the slot asked for.
    let only_b = s.load_statuses(&slots_of(["b"])).await.expect("load b");
    assert!(only_b.contains(&row("b", "invisible", None)), "{only_b:?}");
    assert!(
        only_b
            .iter()
            .all(|r| slots_of([r.user.as_str()]) == slots_of(["b"]))
    );
    // Back to a plain `available`: the row goes.
    s.put_statuses(&[row("b", "available", None)])
        .await
        .expect("clear");
    let all = s.load_statuses(&all_slots()).await.expect("load");
    assert!(all.iter().all(|r| r.user != "b"), "{all:?}");
    assert!(matches!(
        s.put_statuses(&[row("e", "busy", None), row("f", "away", None)])
            .await,
        Err(Error::BadStatus(st)) if st == "away"
    ));
    assert!(matches!(
        s.put_statuses(&[row("", "busy", None)]).await,
        Err(Error::BadId { .. })
    ));
    let all = s.load_statuses(&all_slots()).await.expect("load");
    assert!(
        all.iter().all(|r| r.user != "e"),
        "nothing of a refused batch: {all:?}"
    );
    assert!(matches!(
        s.load_statuses(&[1024]).await,
        Err(Error::BadSlot(1024))
    ));
}

/// With a cap of 5, every kind of write that would pass it is refused whole, and 20 writers on
/// four stores (four connections, as four nodes) racing to befriend one hub leave it with
/// exactly 5 friends.
async fn the_friend_cap_holds_under_concurrent_writers(url: String) {
    let s = Arc::new(store(&url).await.with_max_friends(5));
    s.apply_friendships(&[("hub", "f1"), ("hub", "f2"), ("hub", "f3")], &[])
        .await
        .expect("three");
    let over = s
        .apply_friendships(&[("hub", "f4"), ("hub", "f5"), ("hub", "f6")], &[])
        .await;
    assert!(
        matches!(&over, Err(Error::TooManyFriends { user, would_have: 6, cap: 5 }) if user == "hub"),
        "{over:?}"
    );
    assert_eq!(
        s.friends("hub").await.expect("friends").len(),
        3,
        "nothing of it written"
    );
    let over = s
        .replace_friends("hub", &["f1", "f2", "f3", "f4", "f5", "f6"])
        .await;
    assert!(
        matches!(over, Err(Error::TooManyFriends { .. })),
        "{over:?}"
    );
    let over = s
        .bulk_load((1..=6).map(|i| ("hub".to_string(), format!("f{i}"))))
        .await;
    assert!(
        matches!(over, Err(Error::TooManyFriends { .. })),
        "{over:?}"
    );
    // Removing makes room within the same write.
    s.replace_friends("hub", &["f4", "f5", "f6", "f7", "f8"])
        .await
        .expect("replace within the cap");
    s.replace_friends("hub", &[]).await.expect("clear");
    // One store writes on one connection; nodes are several stores, so the race is theirs.
    let mut stores = vec![s.clone()];
    for _ in 0..3 {
        stores.push(Arc::new(store(&url).await.with_max_friends(5)));
    }
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let s = Arc::clone(&stores[i % stores.len()]);
            tokio::spawn(async move {
                let f = format!("racer{i}");
                s.apply_friendships(&[("hub", f.as_str())], &[]).await
            })
        })
        .collect();
    let mut ok = 0;
    for w in writers {
        match w.await.expect("writer") {
            Ok(_) => ok += 1,
            Err(Error::TooManyFriends { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(s.friends("hub").await.expect("friends").len(), 5);
}
