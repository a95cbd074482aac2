//! Protocol v1.1's big groups and partial subscriptions against the real binary: group counts
//! as members connect, idle and leave (one `group_counts` frame a tick at most), watched
//! members and their removal with the group, and `focus` narrowing then restoring a session.

mod common;

use std::time::Duration;

use common::{Client, Node, Via};
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(3);

/// A 50 ms tick, idle after 400 ms; sessions outlive the test without heartbeats.
const ARGS: &[&str] = &[
    "--tick",
    "50ms",
    "--idle-thresholds",
    "400ms,800ms",
    "--grace",
    "300ms",
    "--heartbeat-timeout",
    "30s",
];

/// Every `group_counts` frame until one satisfies `done` (panics after `d`).
async fn counts_until(c: &mut Client, d: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + d;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Ok(Some(v)) if v["type"] == "group_counts" => {
                let hit = done(&v["groups"][0]);
                seen.push(v);
                if hit {
                    return seen;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("closed; counts so far: {seen:?}"),
            Err(()) => panic!("no matching counts within {d:?}; got {seen:?}"),
        }
    }
}

/// At most one `group_counts` frame a tick.
fn one_a_tick(frames: &[Value]) {
    let ticks: Vec<u64> = frames.iter().filter_map(|f| f["tick"].as_u64()).collect();
    assert_eq!(ticks.len(), frames.len(), "every frame has a tick");
    assert!(
        ticks.windows(2).all(|w| w[0] < w[1]),
        "more than one frame in a tick: {ticks:?}"
    );
}

#[tokio::test]
async fn a_thousand_member_group_counts_within_a_tick_one_frame_a_tick() {
    common::init();
    let node = Node::start(ARGS);
    let members: Vec<String> = std::iter::once("alice".to_owned())
        .chain((0..999).map(|i| format!("m{i:03}")))
        .collect();
    let (status, v) = node
        .admin("PUT", "/v1/groups/big", Some(json!({ "members": members })))
        .await;
    assert_eq!(status, 204, "{v}");
    let (mut alice, _) = Client::hello(&node, Via::Ws, "alice", "phone").await;
    alice
        .send(json!({"type": "watch_group", "group": "big"}))
        .await;
    let first = counts_until(&mut alice, SOON, |g| g["online"] == 1).await;
    assert!(first.iter().all(|f| f["groups"][0]["total"] == 1000));

    // 40 members connect: the counts follow within the tick after the last welcome.
    let mut sessions = Vec::new();
    let mut last_welcome = 0;
    for i in 0..40 {
        let (c, w) = Client::hello(&node, Via::Ws, &format!("m{i:03}"), "d").await;
        last_welcome = w["tick"].as_u64().expect("welcome tick");
        sessions.push(c);
    }
    let frames = counts_until(&mut alice, SOON, |g| g["online"] == 41).await;
    one_a_tick(&frames);
    let tick = frames.last().and_then(|f| f["tick"].as_u64()).unwrap_or(0);
    assert!(
        tick <= last_welcome + 2,
        "counts of tick {tick} for a welcome at tick {last_welcome}"
    );
    // They idle (alice may too): idle counts, still one frame a tick.
    let n = |g: &Value, k: &str| g[k].as_u64().unwrap_or(0);
    let frames = counts_until(&mut alice, SOON, |g| n(g, "idle") >= 40).await;
    one_a_tick(&frames);
    // 20 leave: offline after the grace.
    for c in sessions.drain(..20) {
        c.close().await;
    }
    let frames = counts_until(&mut alice, SOON, |g| n(g, "idle") + n(g, "online") == 21).await;
    one_a_tick(&frames);
    let (status, v) = node.admin("GET", "/v1/groups/big/presence", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["group"], "big");
    assert_eq!(n(&v, "idle") + n(&v, "online"), 21, "{v}");
    assert_eq!(v["total"], 1000);
    let (status, _) = node.admin("GET", "/v1/groups/nope/presence", None).await;
    assert_eq!(status, 404);
    // What an operator graphs: one watched group, its counts handed out, one watch taken.
    assert_eq!(node.metric("presence_watched_groups").await, 1.0);
    assert!(node.metric("presence_group_counts_sent_total").await >= 4.0);
    assert_eq!(node.metric("presence_view_changes_total").await, 1.0);
}

#[tokio::test]
async fn watched_members_and_focus_over_both_transports() {
    common::init();
    for via in [Via::Ws, Via::Quic] {
        let node = Node::start(ARGS);
        node.befriend(&[("alice", "bob"), ("alice", "carol")]).await;
        let (status, _) = node
            .admin(
                "PUT",
                "/v1/groups/g",
                Some(json!({"members": ["alice", "m1", "m2"]})),
            )
            .await;
        assert_eq!(status, 204);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (mut alice, _) = Client::hello(&node, via, "alice", "phone").await;
        let (mut bob, _) = Client::hello(&node, via, "bob", "b").await;
        let (mut carol, _) = Client::hello(&node, via, "carol", "c").await;
        let (mut m1, _) = Client::hello(&node, via, "m1", "d").await;
        alice
            .expect_presence("carol", SOON, |e| e["state"] == "online")
            .await;

        // Focus on bob: his state follows at once; carol's changes stop, bob's go on.
        alice.send(json!({"type": "focus", "users": ["bob"]})).await;
        let f = alice.expect("presence", SOON).await;
        let users: Vec<&str> = f["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["user"].as_str())
            .collect();
        assert_eq!(users, ["bob"], "{f}");
        carol
            .send(json!({"type": "status", "status": "busy", "text": "out of focus"}))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        bob.send(json!({"type": "status", "status": "dnd"})).await;
        let e = alice
            .expect_presence("bob", SOON, |e| e["status"] == "dnd")
            .await;
        assert_eq!(e["user"], "bob");
        // null: carol's state, missed while out of focus, at once.
        alice.send(json!({"type": "focus", "users": null})).await;
        let e = alice
            .expect_presence("carol", SOON, |e| e["status"] == "busy")
            .await;
        assert_eq!(e["text"], "out of focus");

        // Members on demand: a snapshot, then diffs, then removal with the group.
        alice
            .send(json!({"type": "watch_group", "group": "g", "counts": false, "members": ["m1", "m2"]}))
            .await;
        let f = alice.expect("presence", SOON).await;
        let mut users: Vec<&str> = f["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["user"].as_str())
            .collect();
        users.sort_unstable();
        assert_eq!(users, ["m1", "m2"], "{f}");
        m1.send(json!({"type": "status", "status": "busy"})).await;
        alice
            .expect_presence("m1", SOON, |e| e["status"] == "busy")
            .await;
        let (status, _) = node
            .admin(
                "PUT",
                "/v1/groups/g",
                Some(json!({"members": ["alice", "m2"]})),
            )
            .await;
        assert_eq!(status, 204);
        alice
            .expect_presence("m1", SOON, |e| e["removed"] == true)
            .await;
        // Refusals are typed and close nothing.
        alice
            .send(json!({"type": "watch_group", "group": "g", "members": ["bob"]}))
            .await;
        let e = alice.expect("error", SOON).await;
        assert_eq!(e["code"], "bad_request", "{e}");
        alice.send(json!({"type": "heartbeat"})).await;
        alice.expect("pong", SOON).await;
    }
}
