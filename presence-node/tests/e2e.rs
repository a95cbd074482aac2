//! End-to-end: the real binary, real WebSocket and QUIC clients, real files.

mod common;

use std::time::Duration;

use common::{Client, FAST, Node, Via};
use serde_json::json;

const SOON: Duration = Duration::from_secs(3);

fn is_state(s: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |e| e["state"] == s
}

async fn snapshot_and_live_change(via: Via) {
    let node = Node::start(FAST);
    node.befriend(&[("alice", "bob"), ("alice", "carol")]).await;
    // Give the tick a moment to publish the edges before the snapshot.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut alice, welcome) = Client::hello(&node, via, "alice", "phone").await;
    let friends = welcome["friends"].as_array().expect("friends");
    assert_eq!(friends.len(), 2, "{welcome}");
    assert!(friends.iter().all(|f| f["state"] == "offline"));
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["idle_thresholds_ms"], json!([400, 800, 1600]));
    let started = std::time::Instant::now();
    let (_bob, _) = Client::hello(&node, via, "bob", "web").await;
    let e = alice.expect_presence("bob", SOON, is_state("online")).await;
    assert_eq!(e["status"], "available");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "within a tick or so"
    );
    // The frame's wait after its tick was measured before it was written.
    let (s, text) = common::http_text(node.ready.admin, "GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("presence_frame_delay_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(count.is_some_and(|c| c >= 1.0), "{text}");
}

#[tokio::test]
async fn snapshot_and_live_change_ws() {
    common::init();
    snapshot_and_live_change(Via::Ws).await;
}

#[tokio::test]
async fn snapshot_and_live_change_quic() {
    common::init();
    snapshot_and_live_change(Via::Quic).await;
}

async fn idle_levels_walked(via: Via) {
    let node = Node::start(FAST);
    node.befriend(&[("alice", "bob")]).await;
    let (mut alice, _) = Client::hello(&node, via, "alice", "d").await;
    let (mut bob, _) = Client::hello(&node, via, "bob", "d").await;
    alice.expect_presence("bob", SOON, is_state("online")).await;
    // Heartbeats keep both alive but do not reset idleness.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let hb = tokio::spawn(async move {
        loop {
            bob.send(json!({"type": "heartbeat"})).await;
            tokio::select! {
                _ = &mut stopped => return bob,
                () = tokio::time::sleep(Duration::from_millis(150)) => {}
            }
        }
    });
    let mut seen = Vec::new();
    for _ in 0..3 {
        alice.send(json!({"type": "heartbeat"})).await;
        let e = alice.expect_presence("bob", SOON, is_state("idle")).await;
        seen.push(e["idle_ms"].as_u64().expect("idle_ms"));
        assert!(e["last_active"].as_u64().is_some());
    }
    assert_eq!(seen, vec![400, 800, 1600]);
    let _ = stop.send(());
    let mut bob = hb.await.expect("heartbeats");
    bob.send(json!({"type": "activity"})).await;
    alice.expect_presence("bob", SOON, is_state("online")).await;
}

#[tokio::test]
async fn idle_levels_walked_ws() {
    common::init();
    idle_levels_walked(Via::Ws).await;
}

#[tokio::test]
async fn idle_levels_walked_quic() {
    common::init();
    idle_levels_walked(Via::Quic).await;
}

async fn grace_absorbs_reconnect(via: Via) {
    let node = Node::start(&[
        "--tick",
        "50ms",
        "--grace",
        "1500ms",
        "--heartbeat-timeout",
        "10s",
    ]);
    node.befriend(&[("alice", "bob")]).await;
    let (mut alice, _) = Client::hello(&node, via, "alice", "d").await;
    let (bob, _) = Client::hello(&node, via, "bob", "phone").await;
    alice.expect_presence("bob", SOON, is_state("online")).await;
    bob.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (bob, _) = Client::hello(&node, via, "bob", "phone").await;
    // No offline flap in the next two grace periods.
    let quiet = alice.recv_within(Duration::from_millis(2000)).await;
    assert!(
        !matches!(&quiet, Ok(Some(v)) if v["type"] == "presence"),
        "flapped: {quiet:?}"
    );
    bob.close().await;
    let e = alice
        .expect_presence("bob", SOON, is_state("offline"))
        .await;
    assert!(e["last_active"].as_u64().is_some(), "last seen: {e}");
}

#[tokio::test]
async fn grace_absorbs_reconnect_ws() {
    common::init();
    grace_absorbs_reconnect(Via::Ws).await;
}

#[tokio::test]
async fn grace_absorbs_reconnect_quic() {
    common::init();
    grace_absorbs_reconnect(Via::Quic).await;
}

/// A 1.5 s heartbeat timeout (and a short grace), for the expiry tests.
const SHORT_HEARTBEAT: &[&str] = &[
    "--tick",
    "50ms",
    "--grace",
    "200ms",
    "--heartbeat-timeout",
    "1500ms",
];

async fn vanished_client_expires(via: Via) {
    let node = Node::start(SHORT_HEARTBEAT);
    node.befriend(&[("alice", "bob")]).await;
    let (mut alice, _) = Client::hello(&node, via, "alice", "d").await;
    let (bob, _) = Client::hello(&node, via, "bob", "d").await;
    alice.expect_presence("bob", SOON, is_state("online")).await;
    let started = std::time::Instant::now();
    // alice keeps heartbeating; bob goes silent without closing. A WebSocket that is not read
    // answers no pings; a QUIC connection must lose its network, or its stack would
    // acknowledge the node's keep-alives, which count as signs of life.
    let mut bob = match via {
        Via::Ws => Some(bob),
        Via::Quic => {
            let _gone = bob.vanish();
            None
        }
    };
    let alive = tokio::spawn(async move {
        let e = loop {
            alice.send(json!({"type": "heartbeat"})).await;
            match alice.recv_within(Duration::from_millis(300)).await {
                Ok(Some(v)) if v["type"] == "presence" => {
                    if let Some(e) = v["changes"]
                        .as_array()
                        .and_then(|c| c.iter().find(|e| e["user"] == "bob").cloned())
                    {
                        break e;
                    }
                }
                Ok(None) => panic!("alice was closed"),
                _ => {}
            }
        };
        (alice, e)
    });
    let (_alice, e) = tokio::time::timeout(Duration::from_secs(6), alive)
        .await
        .expect("bob expired in time")
        .expect("task");
    assert_eq!(e["state"], "offline");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "not before the timeout: {took:?}"
    );
    // bob's connection is told and closed (where bob still reads).
    if let Some(bob) = &mut bob {
        let err = bob.expect("error", SOON).await;
        assert_eq!(err["code"], "protocol");
        assert_eq!(bob.recv_within(SOON).await, Ok(None));
    }
}

#[tokio::test]
async fn vanished_client_expires_ws() {
    common::init();
    vanished_client_expires(Via::Ws).await;
}

#[tokio::test]
async fn vanished_client_expires_quic() {
    common::init();
    vanished_client_expires(Via::Quic).await;
}

/// Pacing on a real node (`--tick 2s --tick-phases 10`: engine ticks every 200 ms): a lone
/// change after a quiet period arrives at the next engine tick, long before the 2 s period is
/// up; changes within a period of the last frame wait for the session's next frame and arrive
/// together in one frame, the latest state winning.
#[tokio::test]
async fn paced_sessions_get_lone_changes_at_once_and_one_frame_a_period() {
    common::init();
    let period = Duration::from_secs(2);
    let node = Node::start(&["--tick", "2s", "--tick-phases", "10"]);
    node.befriend(&[("alice", "bob")]).await;
    let (mut alice, _) = Client::hello(&node, Via::Ws, "alice", "web").await;
    // Quiet for a period: bob's connect leaves at the next engine tick (unpaced, a 2 s tick
    // would make it wait 1 s on average).
    tokio::time::sleep(period).await;
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "phone").await;
    let started = std::time::Instant::now();
    alice.expect_presence("bob", SOON, is_state("online")).await;
    let first = std::time::Instant::now();
    assert!(
        first - started < Duration::from_millis(1000),
        "a lone change waits for an engine tick, not the period: {:?}",
        first - started
    );
    // Three changes right after that frame: held, then one frame with the last.
    for status in ["busy", "dnd", "busy"] {
        bob.send(json!({"type": "status", "status": status, "text": status}))
            .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    bob.send(json!({"type": "status", "status": "dnd", "text": "last"}))
        .await;
    let mut held = None;
    while let Ok(Some(v)) = alice.recv_within(period + Duration::from_millis(800)).await {
        if v["type"] == "presence" {
            held = Some((std::time::Instant::now(), v));
            break;
        }
    }
    let (at, frame) = held.expect("the held changes arrive");
    let e = &frame["changes"][0];
    assert_eq!(
        (e["status"].as_str(), e["text"].as_str()),
        (Some("dnd"), Some("last"))
    );
    assert!(
        at - first >= period - Duration::from_millis(400),
        "the held frame left before its slot: {:?} after the first",
        at - first
    );
    let quiet = alice.recv_within(Duration::from_millis(500)).await;
    assert!(quiet.is_err(), "one frame for the held changes: {quiet:?}");
    assert!(node.metric("presence_paced_holds_total").await >= 1.0);
    assert!(node.metric("presence_paced_releases_total").await >= 1.0);
}

#[tokio::test]
async fn two_devices_invisible_and_status_text() {
    common::init();
    let node = Node::start(&["--tick", "50ms", "--grace", "500ms"]);
    node.befriend(&[("alice", "bob")]).await;
    let (mut alice, _) = Client::hello(&node, Via::Ws, "alice", "d").await;
    let (mut phone, _) = Client::hello(&node, Via::Quic, "bob", "phone").await;
    let (web, _) = Client::hello(&node, Via::Ws, "bob", "web").await;
    alice.expect_presence("bob", SOON, is_state("online")).await;
    // One device leaves: still online (grace and the other device).
    web.close().await;
    let quiet = alice.recv_within(Duration::from_millis(800)).await;
    assert!(
        !matches!(&quiet, Ok(Some(v)) if v["type"] == "presence"),
        "{quiet:?}"
    );
    phone
        .send(json!({"type": "status", "status": "dnd", "text": "focus time"}))
        .await;
    let e = alice
        .expect_presence("bob", SOON, |e| e["status"] == "dnd")
        .await;
    assert_eq!(e["text"], "focus time");
    assert_eq!(e["state"], "online");
    phone
        .send(json!({"type": "status", "status": "invisible"}))
        .await;
    let e = alice
        .expect_presence("bob", SOON, is_state("offline"))
        .await;
    assert!(e.get("status").is_none() && e.get("text").is_none(), "{e}");
    // Invisible bob still sees alice.
    alice
        .send(json!({"type": "status", "status": "busy"}))
        .await;
    phone
        .expect_presence("alice", SOON, |e| e["status"] == "busy")
        .await;
    let long = "x".repeat(141);
    phone
        .send(json!({"type": "status", "status": "busy", "text": long}))
        .await;
    let err = phone.expect("error", SOON).await;
    assert_eq!(err["code"], "bad_request");
    phone
        .send(json!({"type": "status", "status": "sleepy"}))
        .await;
    assert_eq!(phone.expect("error", SOON).await["code"], "bad_request");
}

#[tokio::test]
async fn friends_added_and_removed_while_live() {
    common::init();
    let node = Node::start(FAST);
    let (mut alice, w) = Client::hello(&node, Via::Ws, "alice", "d").await;
    assert_eq!(w["friends"], json!([]));
    let (_bob, _) = Client::hello(&node, Via::Quic, "bob", "d").await;
    node.befriend(&[("alice", "bob")]).await;
    alice.expect_presence("bob", SOON, is_state("online")).await;
    let (status, _) = node
        .admin(
            "PUT",
            "/v1/users/alice/friends",
            Some(json!({"friends": []})),
        )
        .await;
    assert_eq!(status, 204);
    let e = alice
        .expect_presence("bob", SOON, |e| e["removed"] == true)
        .await;
    assert_eq!(e, json!({"user": "bob", "removed": true}));
}

#[tokio::test]
async fn graph_and_groups_survive_restart_and_kill9() {
    common::init();
    let mut node = Node::start(FAST);
    node.befriend(&[("a", "b"), ("a", "c")]).await;
    let (s, _) = node
        .admin(
            "PUT",
            "/v1/groups/g1",
            Some(json!({"members": ["a", "b", "c"]})),
        )
        .await;
    assert_eq!(s, 204);
    assert!(node.stop().success(), "SIGTERM exits 0");
    assert!(
        !node.dir.join("ready.json").exists(),
        "ready.json removed on exit"
    );
    let mut node = node.restart();
    let (_, v) = node.admin("GET", "/v1/users/a/friends", None).await;
    assert_eq!(v["friends"], json!(["b", "c"]));
    let (_, v) = node.admin("GET", "/v1/groups/g1", None).await;
    assert_eq!(v["members"], json!(["a", "b", "c"]));
    // Acknowledged writes survive kill -9.
    node.befriend(&[("b", "c")]).await;
    let (s, _) = node.admin("DELETE", "/v1/groups/g1", None).await;
    assert_eq!(s, 204);
    node.kill9();
    let node = node.restart();
    let (_, v) = node.admin("GET", "/v1/users/c/friends", None).await;
    assert_eq!(v["friends"], json!(["a", "b"]));
    let (s, _) = node.admin("GET", "/v1/groups/g1", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn admin_api_refuses_bad_requests() {
    common::init();
    let node = Node::start(FAST);
    let (s, _) = common::http(node.ready.admin, "GET", "/v1/presence?users=a", None, None).await;
    assert_eq!(s, 401);
    let (s, _) = common::http(
        node.ready.admin,
        "GET",
        "/v1/presence?users=a",
        Some("wrong"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    let (s, v) = node
        .admin(
            "PUT",
            "/v1/users/a/friends",
            Some(json!({"friends": ["a"]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = node
        .admin("POST", "/v1/friendships", Some(json!({"add": [["a"]]})))
        .await;
    assert_eq!(s, 400);
    let (s, _) = common::http_text(
        node.ready.admin,
        "POST",
        "/v1/friendships",
        Some(&node.key),
        Some("{not json".into()),
    )
    .await;
    assert_eq!(s, 400);
    let long = "u".repeat(129);
    let (s, _) = node
        .admin(
            "POST",
            "/v1/friendships",
            Some(json!({"add": [["a", long]]})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = node
        .admin(
            "POST",
            "/v1/friendships",
            Some(json!({"add": [["a", "b"], ["b", "a"]]})),
        )
        .await;
    assert_eq!(s, 400);
    let (_, v) = node.admin("GET", "/v1/users/a/friends", None).await;
    assert_eq!(v["friends"], json!([]), "refused requests change nothing");
    let (s, v) = node
        .admin(
            "POST",
            "/v1/friendships",
            Some(json!({"add": [["a", "b"]]})),
        )
        .await;
    assert_eq!((s, v), (200, json!({"added": 1, "removed": 0})));
    let (s, v) = node
        .admin("GET", "/v1/presence?users=a,b,nobody", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["presence"].as_array().map(Vec::len), Some(3));
    let (s, v) = common::http(node.ready.admin, "GET", "/healthz", None, None).await;
    assert_eq!((s, &v["status"]), (200, &json!("ok")));
    // The tick histogram appears once the first tick has run.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let (s, text) = common::http_text(node.ready.admin, "GET", "/metrics", None, None).await;
        assert_eq!(s, 200);
        if text.contains("presence_tick_seconds_bucket") {
            assert!(text.contains("presence_admin_requests_total"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no tick metrics: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bad_client_input(via: Via) {
    let node = Node::start(FAST);
    // First message not hello.
    let mut c = Client::open(&node, via).await;
    c.send(json!({"type": "activity"})).await;
    assert_eq!(c.expect("error", SOON).await["code"], "protocol");
    assert_eq!(c.recv_within(SOON).await, Ok(None));
    // Bad and expired tokens.
    for token in ["nope".to_owned(), {
        let t = node.token("x").await;
        let mut t = t.into_bytes();
        let last = t.len() - 2;
        t[last] ^= 1;
        String::from_utf8(t).expect("utf8")
    }] {
        let mut c = Client::open(&node, via).await;
        c.send(json!({"type": "hello", "token": token})).await;
        assert_eq!(c.expect("error", SOON).await["code"], "unauthorized");
        assert_eq!(c.recv_within(SOON).await, Ok(None));
    }
    // Malformed JSON after hello closes with protocol.
    let (mut c, _) = Client::hello(&node, via, "m", "d").await;
    c.send_raw(b"{oops".to_vec()).await;
    assert_eq!(c.expect("error", SOON).await["code"], "protocol");
    assert_eq!(c.recv_within(SOON).await, Ok(None));
    // Unknown type and invalid field: bad_request, connection stays open.
    let (mut c, _) = Client::hello(&node, via, "n", "d").await;
    c.send(json!({"type": "teleport"})).await;
    assert_eq!(c.expect("error", SOON).await["code"], "bad_request");
    c.send(json!({"type": "ack", "seq": "many"})).await;
    assert_eq!(c.expect("error", SOON).await["code"], "bad_request");
    c.send(json!({"type": "heartbeat"})).await;
    assert_eq!(c.expect("pong", SOON).await["type"], "pong");
    // Oversize frame.
    let mut big = json!({"type": "status", "status": "busy", "text": ""}).to_string();
    big.push_str(&" ".repeat(70 * 1024));
    c.send_raw(big.into_bytes()).await;
    assert_eq!(c.expect("error", SOON).await["code"], "protocol");
    assert_eq!(c.recv_within(SOON).await, Ok(None));
    // Flood: rate_limited, then closed.
    let (mut c, _) = Client::hello(&node, via, "f", "d").await;
    for _ in 0..200 {
        c.send(json!({"type": "activity"})).await;
    }
    assert_eq!(c.expect("error", SOON).await["code"], "rate_limited");
    let closed = async {
        loop {
            match c.recv_within(SOON).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(()) => return false,
            }
        }
    };
    assert!(closed.await, "a flood ends in a close");
    // Too many sessions for one user.
    let node = Node::start(&["--max-sessions-per-user", "2"]);
    let (_a, _) = Client::hello(&node, via, "s", "1").await;
    let (_b, _) = Client::hello(&node, via, "s", "2").await;
    let token = node.token("s").await;
    let mut c = Client::open(&node, via).await;
    c.send(json!({"type": "hello", "token": token, "device": "3"}))
        .await;
    assert_eq!(c.expect("error", SOON).await["code"], "forbidden");
    // The node is still fine.
    let (s, _) = common::http(node.ready.admin, "GET", "/healthz", None, None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn bad_client_input_ws() {
    common::init();
    bad_client_input(Via::Ws).await;
}

#[tokio::test]
async fn bad_client_input_quic() {
    common::init();
    bad_client_input(Via::Quic).await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_hello_timeout() {
    common::init();
    let node = Node::start(FAST);
    let mut ws = Client::open(&node, Via::Ws).await;
    let mut quic = Client::open_raw_quic(&node).await;
    // QUIC streams only reach the server with data: send a partial frame header.
    if let Client::RawQuic { send, .. } = &mut quic {
        send.write_all(&[0, 0]).await.expect("partial");
    }
    for c in [&mut ws, &mut quic] {
        let e = c.expect("error", Duration::from_secs(12)).await;
        assert_eq!(e["code"], "protocol");
        assert!(e["message"].as_str().unwrap_or("").contains("hello"));
    }
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_grow_memory() {
    common::init();
    let node = Node::start(&["--tick", "20ms", "--heartbeat-timeout", "60s"]);
    let friends: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
    let pairs: Vec<(&str, &str)> = friends.iter().map(|f| ("slow", f.as_str())).collect();
    node.befriend(&pairs).await;
    // The slow client says hello and then never reads again; its tiny receive buffer makes the
    // node's writes back up within a few frames.
    let _slow = Client::hello_tiny_window(&node, "slow").await;
    let mut senders = Vec::new();
    for f in &friends[..200] {
        senders.push(Client::hello(&node, Via::Quic, f, "d").await.0);
    }
    let rss_before = node.rss_kib();
    // About 8 MB of presence for the slow client: more than the kernel's largest send buffer
    // (4 MiB here), so the node's writes must back up and the outbox must merge.
    let texts: Vec<String> = (0..8).map(|i| format!("{i}{}", "z".repeat(139))).collect();
    for round in 0..150 {
        for c in senders.iter_mut() {
            let t = &texts[round % texts.len()];
            c.send(json!({"type": "status", "status": "busy", "text": t}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let merges = node.metric("presence_outbox_merges_total").await;
    let grown = node.rss_kib().saturating_sub(rss_before);
    assert!(merges > 0.0, "the slow client's presence was merged");
    assert!(grown < 30 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn a_large_welcome_arrives_whole_over_both_transports() {
    common::init();
    let node = Node::start(FAST);
    // Long ids with multi-byte characters, so 1 KiB WebSocket fragments split UTF-8 sequences.
    let friends: Vec<String> = (0..400)
        .map(|i| format!("ami-é-{i:04}-{}", "ü".repeat(20)))
        .collect();
    let pairs: Vec<(&str, &str)> = friends.iter().map(|f| ("big", f.as_str())).collect();
    node.befriend(&pairs).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for via in [Via::Ws, Via::Quic] {
        let (_c, w) = Client::hello(&node, via, "big", "d").await;
        let got: Vec<&str> = w["friends"]
            .as_array()
            .expect("friends")
            .iter()
            .filter_map(|f| f["user"].as_str())
            .collect();
        assert_eq!(got.len(), 400, "{via:?}");
        for f in &friends {
            assert!(got.contains(&f.as_str()), "{via:?} lost {f}");
        }
    }
}

/// Every `presence` entry about `user` that `c` receives within `d`.
async fn entries_about(c: &mut Client, user: &str, d: Duration) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Ok(Some(v)) if v["type"] == "presence" => out.extend(
                v["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["user"] == user)
                    .cloned(),
            ),
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => return out,
        }
    }
}

/// Read-your-writes for the app's backend: once an edge change is answered, every welcome
/// reflects it — with a long tick, so a welcome taken before the tick that publishes the
/// change would miss it — and a session live before the change gets it exactly once.
#[tokio::test]
async fn admin_writes_are_in_every_later_welcome() {
    common::init();
    let tick = Duration::from_millis(1500);
    let node = Node::start(&["--tick", "1500ms"]);
    let (mut before, w) = Client::hello(&node, Via::Ws, "alice", "old").await;
    assert_eq!(w["friends"], json!([]));
    node.befriend(&[("alice", "bob")]).await;
    let (_, w) = Client::hello(&node, Via::Ws, "alice", "new").await;
    assert_eq!(w["friends"], json!([{"user": "bob", "state": "offline"}]));
    let seen = entries_about(&mut before, "bob", 2 * tick).await;
    assert_eq!(seen, vec![json!({"user": "bob", "state": "offline"})]);

    let (status, _) = node
        .admin(
            "PUT",
            "/v1/users/bob/friends",
            Some(json!({"friends": ["carol"]})),
        )
        .await;
    assert_eq!(status, 204);
    let (_, w) = Client::hello(&node, Via::Quic, "alice", "newer").await;
    assert_eq!(w["friends"], json!([]));
    let (_, w) = Client::hello(&node, Via::Ws, "carol", "d").await;
    assert_eq!(w["friends"], json!([{"user": "bob", "state": "offline"}]));
    let seen = entries_about(&mut before, "bob", 2 * tick).await;
    assert_eq!(seen, vec![json!({"user": "bob", "removed": true})]);
}

/// After a restart the loaded graph is published before the first session: a client that
/// reconnects at once (long before the first tick) sees its friends.
#[tokio::test]
async fn welcome_right_after_restart_has_the_friends() {
    common::init();
    let mut node = Node::start(&["--tick", "5s"]);
    node.befriend(&[("alice", "bob")]).await;
    assert!(node.stop().success());
    let node = node.restart();
    let (_, w) = Client::hello(&node, Via::Ws, "alice", "d").await;
    assert_eq!(w["friends"], json!([{"user": "bob", "state": "offline"}]));
}

/// `presence-node` run with `args` and `env`, expected to exit within 10 s (a node that
/// serves instead is killed): (success, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_presence-node"))
        .args(args)
        .envs(env.iter().copied())
        .env("PRESENCE_WS_LISTEN", "127.0.0.1:0")
        .env("PRESENCE_QUIC_LISTEN", "127.0.0.1:0")
        .env("PRESENCE_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run presence-node");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The precedence flag > environment > file, seen through the validation of a value that
/// stops the node before it binds anything; and `token` reads the same variables as `serve`.
#[test]
fn environment_variables_sit_between_flags_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "max-group = 3\n").expect("write");
    let file = file.to_str().expect("utf-8 path");
    let refused = "max-group must be at least 2";
    // The environment's 1 wins over the file's 3.
    let (ok, _, err) = run(
        &["serve", "--data-dir", data, "--config", file],
        &[("PRESENCE_MAX_GROUP", "1")],
    );
    assert!(!ok && err.contains(refused), "{err}");
    // The flag's 1 wins over the environment's 3.
    let (ok, _, err) = run(
        &["serve", "--data-dir", data, "--max-group", "1"],
        &[("PRESENCE_MAX_GROUP", "3")],
    );
    assert!(!ok && err.contains(refused), "{err}");
    // The file alone.
    std::fs::write(file, "max_group = 1\n").expect("write");
    let (ok, _, err) = run(&["serve", "--data-dir", data, "--config", file], &[]);
    assert!(!ok && err.contains(refused), "{err}");
    // `token`: PRESENCE_SECRET instead of the data dir's secret, PRESENCE_DATA_DIR for it.
    let empty = tempfile::tempdir().expect("tempdir");
    let empty = empty.path().to_str().expect("utf-8 path");
    let (ok, _, err) = run(&["token", "--user", "alice", "--data-dir", empty], &[]);
    assert!(!ok && err.contains("pass --secret"), "{err}");
    let (ok, out, err) = run(
        &["token", "--user", "alice", "--data-dir", empty],
        &[("PRESENCE_SECRET", "s3cret")],
    );
    assert!(ok && out.trim().split('.').count() == 3, "{out} {err}");
    std::fs::write(dir.path().join("secret"), "s3cret\n").expect("write");
    let (ok, from_dir, err) = run(
        &["token", "--user", "alice", "--ttl", "1h"],
        &[("PRESENCE_DATA_DIR", data)],
    );
    assert!(ok && from_dir.trim().split('.').count() == 3, "{err}");
}

/// v1.1 liveness from the transport: the node pings WebSocket clients, and a client that only
/// reads (its WebSocket library answers the pings, as a browser does from a hidden tab) stays
/// online past the heartbeat timeout without sending a single message; on QUIC the
/// acknowledgements of the connection's keep-alives do the same.
async fn transport_keeps_a_silent_reader_alive(via: Via) {
    let node = Node::start(SHORT_HEARTBEAT);
    node.befriend(&[("alice", "bob")]).await;
    let (mut alice, _) = Client::hello(&node, via, "alice", "tab").await;
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "d").await;
    bob.expect_presence("alice", SOON, is_state("online")).await;
    // alice only reads, for three heartbeat timeouts; bob heartbeats and watches.
    let reader = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(4500);
        while tokio::time::Instant::now() < until {
            if let Ok(None) = alice.recv_within(Duration::from_millis(100)).await {
                panic!("alice's connection was closed");
            }
        }
        alice
    });
    let mut about_alice = Vec::new();
    for _ in 0..15 {
        bob.send(json!({"type": "heartbeat"})).await;
        about_alice.extend(entries_about(&mut bob, "alice", Duration::from_millis(300)).await);
    }
    assert_eq!(
        about_alice,
        Vec::<serde_json::Value>::new(),
        "alice never left"
    );
    let _alice = reader.await.expect("reader");
}

#[tokio::test]
async fn websocket_pongs_keep_a_silent_reader_alive() {
    common::init();
    transport_keeps_a_silent_reader_alive(Via::Ws).await;
}

#[tokio::test]
async fn quic_keep_alives_keep_a_silent_reader_alive() {
    common::init();
    transport_keeps_a_silent_reader_alive(Via::Quic).await;
}

/// v1.1 routing on a single node: `/v1/route` names the node itself with the user's slot (the
/// documented CRC-16/XMODEM mod 1024), `/v1/cluster` lists it with every slot, and the node's
/// generated name is kept across a restart.
#[tokio::test]
async fn a_single_node_routes_every_user_to_itself() {
    common::init();
    let mut node = Node::start(&[]);
    let name = node.ready.node.clone();
    assert!(name.starts_with("node-") && name.len() == 13, "{name}");
    let (st, v) = node.admin("GET", "/v1/route?user=123456789", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({
            "user": "123456789",
            "slot": 0x31C3 % 1024,
            "node": name,
            "ws": node.ready.ws.to_string(),
            "quic": node.ready.quic.to_string(),
            // Long-poll shares the WebSocket port.
            "lp": format!("http://{}", node.ready.ws),
        })
    );
    let (st, _) = node.admin("GET", "/v1/route", None).await;
    assert_eq!(st, 400, "no user");
    let long = "x".repeat(129);
    let (st, _) = node
        .admin("GET", &format!("/v1/route?user={long}"), None)
        .await;
    assert_eq!(st, 400, "a user id over 128 bytes");
    let (st, v) = node.admin("GET", "/v1/cluster", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({
            "nodes": [{
                "id": name,
                "ws": node.ready.ws.to_string(),
                "quic": node.ready.quic.to_string(),
                "admin": node.ready.admin.to_string(),
                "slots": 1024,
            }],
            "slots": 1024,
            "epoch": 0,
        })
    );
    assert!(node.stop().success());
    let node = node.restart();
    assert_eq!(node.ready.node, name, "the generated name is kept");
    let named = Node::start(&["--node-id", "7"]);
    assert_eq!(named.ready.node, "7");
}

/// Whether `v` has the shape `schema` (an OpenAPI 3.1 schema of `doc`) describes, as far as
/// the admin API's answers use schemas; a key the schema does not list is an error.
fn conforms(
    v: &serde_json::Value,
    schema: &serde_json::Value,
    doc: &serde_json::Value,
) -> Result<(), String> {
    use serde_json::Value;
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(v, &doc["components"]["schemas"][name], doc);
    }
    if let Some(any) = schema["oneOf"].as_array() {
        return match any.iter().any(|s| conforms(v, s, doc).is_ok()) {
            true => Ok(()),
            false => Err(format!("{v} is none of {schema}")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let typed = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
    if !typed {
        return Err(format!("{v} is not of the type {types:?}"));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{v} is not one of {values:?}"));
    }
    if let Some(obj) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            if !obj.contains_key(key) {
                return Err(format!("{v} lacks the required {key:?}"));
            }
        }
        for (k, field) in obj {
            let Some(s) = schema["properties"].get(k) else {
                return Err(format!("{k:?} of {v} is not in the schema {schema}"));
            };
            conforms(field, s, doc).map_err(|e| format!("{k}: {e}"))?;
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(prefix) = schema["prefixItems"].as_array() {
            for (item, s) in items.iter().zip(prefix) {
                conforms(item, s, doc)?;
            }
        } else if schema["items"].is_object() {
            for item in items {
                conforms(item, &schema["items"], doc)?;
            }
        }
    }
    Ok(())
}

/// The admin API answers as `docs/openapi.json` says: the document is served, without the
/// key, byte for byte; every routed operation is keyed (`401` without the key) or open as
/// documented; and real answers, successes and refusals, have their documented status and
/// shape.
#[tokio::test]
async fn admin_api_answers_as_its_openapi_document_says() {
    common::init();
    let node = Node::start(FAST);
    let admin = node.ready.admin;
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json");
    let (st, head, body) =
        common::http_response(admin, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(st, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert!(
        body == committed,
        "GET /v1/openapi.json is not docs/openapi.json"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");

    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if presence_node::openapi::PENDING.contains(&(method.as_str(), path.as_str())) {
                continue;
            }
            let concrete = path.replace("{id}", "a").replace("{gid}", "g");
            let (st, v) = common::http(admin, &method.to_uppercase(), &concrete, None, None).await;
            let keyed = op.get("security").is_some();
            assert_eq!(
                st,
                if keyed { 401 } else { 200 },
                "{method} {path} without the key: {v}"
            );
            if keyed {
                let schema = &op["responses"]["401"]["content"]["application/json"]["schema"];
                conforms(&v, schema, &doc).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 13, "{checked} operations");

    // (method, documented path, request path, body, expected status)
    let calls: &[(&str, &str, &str, Option<serde_json::Value>, u16)] = &[
        (
            "post",
            "/v1/friendships",
            "/v1/friendships",
            Some(json!({"add": [["a", "b"]]})),
            200,
        ),
        (
            "post",
            "/v1/friendships",
            "/v1/friendships",
            Some(json!({"add": [["a", "a"]]})),
            400,
        ),
        (
            "put",
            "/v1/users/{id}/friends",
            "/v1/users/a/friends",
            Some(json!({"friends": ["b", "c"]})),
            204,
        ),
        (
            "get",
            "/v1/users/{id}/friends",
            "/v1/users/a/friends",
            None,
            200,
        ),
        (
            "put",
            "/v1/groups/{gid}",
            "/v1/groups/g",
            Some(json!({"members": ["a", "b"]})),
            204,
        ),
        ("get", "/v1/groups/{gid}", "/v1/groups/g", None, 200),
        (
            "get",
            "/v1/groups/{gid}/presence",
            "/v1/groups/g/presence",
            None,
            200,
        ),
        ("delete", "/v1/groups/{gid}", "/v1/groups/g", None, 204),
        ("get", "/v1/groups/{gid}", "/v1/groups/g", None, 404),
        (
            "get",
            "/v1/groups/{gid}/presence",
            "/v1/groups/g/presence",
            None,
            404,
        ),
        (
            "get",
            "/v1/presence",
            "/v1/presence?users=a,b,nobody",
            None,
            200,
        ),
        ("get", "/v1/presence", "/v1/presence", None, 400),
        (
            "post",
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"user": "a", "device": "web"})),
            200,
        ),
        (
            "post",
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"user": "a", "ttl_s": 0})),
            400,
        ),
        ("get", "/v1/route", "/v1/route?user=a", None, 200),
        ("get", "/v1/route", "/v1/route", None, 400),
        ("get", "/v1/cluster", "/v1/cluster", None, 200),
        ("get", "/healthz", "/healthz", None, 200),
    ];
    for (method, path, concrete, body, want) in calls {
        let what = format!("{method} {concrete}");
        let (st, v) = node
            .admin(&method.to_uppercase(), concrete, body.clone())
            .await;
        assert_eq!(st, *want, "{what}: {v}");
        let response = &doc["paths"][*path][*method]["responses"][want.to_string()];
        assert!(response.is_object(), "{what}: {want} is not documented");
        match response["content"]["application/json"].get("schema") {
            Some(schema) => conforms(&v, schema, &doc).unwrap_or_else(|e| panic!("{what}: {e}")),
            None => assert_eq!(v, serde_json::Value::Null, "{what}: undocumented body"),
        }
    }
}

/// The shape check above refuses what the document does not say, so the live test is not
/// vacuous.
#[test]
fn the_shape_check_refuses_undocumented_keys_wrong_types_and_missing_fields() {
    let doc: serde_json::Value =
        serde_json::from_str(&presence_node::openapi::json().expect("document")).expect("JSON");
    let applied = json!({"$ref": "#/components/schemas/FriendshipsApplied"});
    assert!(conforms(&json!({"added": 1, "removed": 0}), &applied, &doc).is_ok());
    assert!(
        conforms(
            &json!({"added": 1, "removed": 0, "extra": 1}),
            &applied,
            &doc
        )
        .is_err()
    );
    assert!(conforms(&json!({"added": "1", "removed": 0}), &applied, &doc).is_err());
    assert!(conforms(&json!({"added": 1}), &applied, &doc).is_err());
    let presence = json!({"$ref": "#/components/schemas/PresenceAnswer"});
    let entry = |state| json!({"presence": [{"user": "a", "state": state}]});
    assert!(conforms(&entry("idle"), &presence, &doc).is_ok());
    assert!(conforms(&entry("asleep"), &presence, &doc).is_err());
}
