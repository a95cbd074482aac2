//! The harness against the real binaries: a private etcd (KV, leases that expire, watches,
//! pause, crash and restart) and a private PostgreSQL 15 (tables, `bytea` user ids with NUL
//! bytes, a binary COPY bulk load, a crash that keeps committed rows). Each test is bounded in
//! time; the servers go away on drop, also when an assertion fails.

use etcd_client::{Client, ConnectOptions, EventType, PutOptions};
use presence_tests::services::{Etcd, Postgres};
use std::time::{Duration, Instant};
use tokio::time::timeout;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, error::Error as PgError};

/// Upper bound of every test body (start-up excluded: the harness bounds its own waits).
const LIMIT: Duration = Duration::from_secs(60);

async fn etcd_client(etcd: &Etcd) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    Client::connect(etcd.endpoints(), Some(options))
        .await
        .expect("connect to etcd")
}

async fn pg_client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("PostgreSQL connection ended: {e}");
        }
    });
    client
}

#[tokio::test]
async fn etcd_put_get() {
    let etcd = Etcd::start().expect("start etcd");
    timeout(LIMIT, async {
        let mut c = etcd_client(&etcd).await;
        c.put("slot/7", "node-a", None).await.expect("put");
        let resp = c.get("slot/7", None).await.expect("get");
        let kvs = resp.kvs();
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].value(), b"node-a");
        assert!(kvs[0].mod_revision() > 1, "a revision that epochs can use");
        assert!(c.get("slot/8", None).await.expect("get").kvs().is_empty());
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn etcd_lease_expires_without_keep_alive() {
    let etcd = Etcd::start().expect("start etcd");
    timeout(LIMIT, async {
        let mut c = etcd_client(&etcd).await;
        let lease = c.lease_grant(2, None).await.expect("grant");
        assert_eq!(lease.ttl(), 2);
        let put = PutOptions::new().with_lease(lease.id());
        c.put("nodes/a", "alive", Some(put)).await.expect("put");
        let granted = Instant::now();
        assert_eq!(c.get("nodes/a", None).await.expect("get").count(), 1);
        // No keep-alive: the key goes when the lease does, within the TTL plus etcd's slack.
        let gone = loop {
            if c.get("nodes/a", None).await.expect("get").count() == 0 {
                break granted.elapsed();
            }
            assert!(
                granted.elapsed() < Duration::from_secs(15),
                "lease still alive"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("lease with TTL 2 s expired after {gone:?}");
        assert!(
            gone >= Duration::from_millis(1500),
            "expired early: {gone:?}"
        );
        let ttl = c.lease_time_to_live(lease.id(), None).await.expect("ttl");
        assert_eq!(ttl.ttl(), -1, "etcd reports the lease as gone");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn etcd_watch_sees_a_put() {
    let etcd = Etcd::start().expect("start etcd");
    timeout(LIMIT, async {
        let mut c = etcd_client(&etcd).await;
        let mut watch = c.watch("slot/3", None).await.expect("watch");
        let mut writer = c.clone();
        writer.put("slot/3", "node-b", None).await.expect("put");
        let event = loop {
            let resp = watch.message().await.expect("watch message");
            let resp = resp.expect("watch stream open");
            if let Some(e) = resp.events().first() {
                break e.clone();
            }
        };
        assert_eq!(event.event_type(), EventType::Put);
        let kv = event.kv().expect("event carries the pair");
        assert_eq!((kv.key(), kv.value()), (&b"slot/3"[..], &b"node-b"[..]));
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn etcd_pause_then_crash_and_restart() {
    let mut etcd = Etcd::start().expect("start etcd");
    let mut c = timeout(LIMIT, etcd_client(&etcd)).await.expect("bounded");
    timeout(LIMIT, c.put("k", "v", None))
        .await
        .expect("bounded")
        .expect("put");

    // Paused: requests get no answer (the client's 5 s timeout, or ours, ends them).
    etcd.pause().expect("SIGSTOP");
    let paused = timeout(Duration::from_secs(2), c.get("k", None)).await;
    assert!(!matches!(paused, Ok(Ok(_))), "a stopped etcd answered");
    etcd.resume().expect("SIGCONT");
    let resp = timeout(LIMIT, c.get("k", None)).await.expect("bounded");
    assert_eq!(resp.expect("get after resume").count(), 1);

    // kill -9, then the same data again: what was written is still there.
    etcd.kill();
    assert!(etcd.pid().is_none());
    etcd.start_again().expect("restart etcd");
    let mut c = timeout(LIMIT, etcd_client(&etcd)).await.expect("bounded");
    let resp = timeout(LIMIT, c.get("k", None)).await.expect("bounded");
    assert_eq!(resp.expect("get after restart").kvs()[0].value(), b"v");
    etcd.stop();
}

#[tokio::test]
async fn postgres_table_insert_select() {
    let pg = Postgres::start().expect("start PostgreSQL");
    timeout(LIMIT, async {
        let c = pg_client(&pg).await;
        let version: String = c
            .query_one("SHOW server_version", &[])
            .await
            .expect("version")
            .get(0);
        assert!(version.starts_with("15."), "PostgreSQL 15, got {version}");
        let fsync: String = c.query_one("SHOW fsync", &[]).await.expect("fsync").get(0);
        assert_eq!(fsync, "on");
        c.batch_execute("CREATE TABLE groups (id bigint PRIMARY KEY, name text NOT NULL)")
            .await
            .expect("create");
        for (id, name) in [(1i64, "climbers"), (2, "chess")] {
            c.execute("INSERT INTO groups VALUES ($1, $2)", &[&id, &name])
                .await
                .expect("insert");
        }
        let rows = c
            .query("SELECT id, name FROM groups ORDER BY id", &[])
            .await
            .expect("select");
        let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(got, [(1, "climbers".into()), (2, "chess".into())]);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn postgres_user_ids_with_nul_bytes_need_bytea() {
    let pg = Postgres::start().expect("start PostgreSQL");
    timeout(LIMIT, async {
        let c = pg_client(&pg).await;
        c.batch_execute(
            "CREATE TABLE users (id bytea PRIMARY KEY CHECK (octet_length(id) BETWEEN 1 AND 128));
             CREATE TABLE names (id text PRIMARY KEY);",
        )
        .await
        .expect("create");
        // User ids are any 1..=128 bytes: NUL, bytes that are not UTF-8, the longest.
        let ids: [Vec<u8>; 3] = [b"al\0ice".to_vec(), vec![0xff, 0x00, 0xfe], vec![0u8; 128]];
        for id in &ids {
            c.execute("INSERT INTO users VALUES ($1)", &[id])
                .await
                .expect("insert bytea");
        }
        let rows = c
            .query("SELECT id FROM users WHERE id = ANY($1)", &[&ids.to_vec()])
            .await
            .expect("select");
        let mut got: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        got.sort();
        let mut want = ids.to_vec();
        want.sort();
        assert_eq!(got, want, "every id back byte for byte");

        // The key is the bytes: the same id twice is refused; 129 bytes breaks the check.
        let dup = c.execute("INSERT INTO users VALUES ($1)", &[&ids[0]]).await;
        assert_eq!(sql_state(dup), Some(SqlState::UNIQUE_VIOLATION));
        let long = c
            .execute("INSERT INTO users VALUES ($1)", &[&vec![1u8; 129]])
            .await;
        assert_eq!(sql_state(long), Some(SqlState::CHECK_VIOLATION));

        // `text` refuses NUL (PostgreSQL strings cannot hold it), so ids cannot be text.
        let nul = c
            .execute("INSERT INTO names VALUES ($1)", &[&"al\0ice"])
            .await;
        assert_eq!(sql_state(nul), Some(SqlState::CHARACTER_NOT_IN_REPERTOIRE));
    })
    .await
    .expect("bounded");
}

fn sql_state(result: Result<u64, PgError>) -> Option<SqlState> {
    result.err().and_then(|e| e.code().cloned())
}

#[tokio::test]
async fn postgres_binary_copy_of_100k_rows_survives_a_crash() {
    const ROWS: i64 = 100_000;
    let mut pg = Postgres::start().expect("start PostgreSQL");
    timeout(LIMIT, async {
        let c = pg_client(&pg).await;
        c.batch_execute("CREATE TABLE friends (user_id bytea NOT NULL, friend_id bytea NOT NULL, since bigint NOT NULL)")
            .await
            .expect("create");
        let t0 = Instant::now();
        let sink = c
            .copy_in("COPY friends (user_id, friend_id, since) FROM STDIN BINARY")
            .await
            .expect("copy in");
        let writer = BinaryCopyInWriter::new(sink, &[Type::BYTEA, Type::BYTEA, Type::INT8]);
        let mut writer = std::pin::pin!(writer);
        for i in 0..ROWS {
            let user = format!("user-{i}").into_bytes();
            let friend = format!("user-{}\0", (i * 7919) % ROWS).into_bytes();
            writer
                .as_mut()
                .write(&[&user, &friend, &i])
                .await
                .expect("row");
        }
        let loaded = writer.as_mut().finish().await.expect("finish copy");
        let took = t0.elapsed();
        println!(
            "COPY FROM STDIN BINARY: {loaded} rows in {took:?} ({:.0} rows/s)",
            loaded as f64 / took.as_secs_f64()
        );
        assert_eq!(loaded, ROWS as u64);
    })
    .await
    .expect("bounded");

    // A crash (no checkpoint) and a start that replays the WAL: the committed copy is all there.
    pg.stop_immediate().expect("crash");
    pg.start_again().expect("restart");
    timeout(LIMIT, async {
        let c = pg_client(&pg).await;
        let row = c
            .query_one(
                "SELECT count(*), sum(since)::bigint, count(*) FILTER (WHERE position('\\x00'::bytea IN friend_id) > 0) FROM friends",
                &[],
            )
            .await
            .expect("count");
        let (count, sum, with_nul): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(count, ROWS);
        assert_eq!(sum, ROWS * (ROWS - 1) / 2);
        assert_eq!(with_nul, ROWS, "every friend id kept its NUL byte");
    })
    .await
    .expect("bounded");
}
