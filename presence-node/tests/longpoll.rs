//! HTTP long-poll (protocol v1.1) against the real binary: open, poll, send, close; presence
//! and chat through polls; lost answers, cursors, one poll at a time, expiry, refusals, CORS.

mod common;

use std::time::{Duration, Instant};

use common::lp::{Session, request, request_and_lose_answer};
use common::{Client, Node, Via};
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(5);

/// Fast ticks, a 3 s heartbeat timeout and polls held 1 s.
const LP: &[&str] = &[
    "--tick",
    "50ms",
    "--idle-thresholds",
    "30s,60s",
    "--grace",
    "500ms",
    "--heartbeat-timeout",
    "3s",
    "--lp-hold",
    "1s",
];

/// Polls held up to 5 s (the heartbeat timeout allows it).
const LONG_HOLD: &[&str] = &[
    "--tick",
    "50ms",
    "--grace",
    "500ms",
    "--heartbeat-timeout",
    "12s",
    "--lp-hold",
    "5s",
];

const ORIGIN: &str = "http://app.test:8080";

fn hello(token: &str) -> Value {
    json!({"type": "hello", "token": token, "device": "web"})
}

async fn open(node: &Node, user: &str) -> (Session, Vec<Value>) {
    let token = node.token(user).await;
    Session::open(node.ready.ws, &hello(&token)).await
}

fn is_state(s: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["state"] == s
}

#[tokio::test]
async fn open_poll_send_close() {
    common::init();
    let node = Node::start(LP);
    node.befriend(&[("alice", "bob")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut alice, first) = open(&node, "alice").await;
    assert_eq!(alice.sid.len(), 40, "160 bits in hex: {}", alice.sid);
    assert!(alice.sid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(first[0]["type"], "welcome", "{first:?}");
    assert_eq!(first[0]["user"], "alice");
    assert_eq!(first[0]["friends"][0]["user"], "bob");
    assert_eq!(
        alice.cursor,
        first.len() as u64,
        "the cursor numbers the messages"
    );
    assert_eq!(
        node.metric("presence_sessions{transport=\"lp\"}").await,
        1.0
    );

    alice.send(&json!({"type": "heartbeat"})).await;
    let got = alice.expect("pong", SOON).await;
    assert_eq!(got["type"], "pong");
    // An array: answered in order.
    alice
        .send(&json!([{"type": "heartbeat"}, {"type": "bogus"}, {"type": "heartbeat"}]))
        .await;
    let mut kinds = Vec::new();
    let deadline = Instant::now() + SOON;
    while kinds.len() < 3 && Instant::now() < deadline {
        for m in alice.poll().await {
            kinds.push(m["type"].as_str().unwrap_or("").to_owned());
        }
    }
    assert_eq!(kinds, ["pong", "error", "pong"]);

    let a = alice.close().await;
    assert_eq!(a.status, 204, "{}", a.body);
    let a = alice.poll_raw(&[]).await;
    assert_eq!(a.status, 410, "{}", a.body);
    assert_eq!(a.json()["type"], "error");
    let a = alice.send_raw(br#"{"type":"heartbeat"}"#, &[]).await;
    assert_eq!(a.status, 410);
    assert_eq!(
        node.metric("presence_sessions{transport=\"lp\"}").await,
        0.0
    );
    assert!(node.metric("presence_lp_requests_total").await >= 8.0);
}

#[tokio::test]
async fn friend_presence_arrives_by_poll_and_a_held_poll_answers_when_it_changes() {
    common::init();
    let node = Node::start(LONG_HOLD);
    node.befriend(&[("alice", "bob")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut alice, _) = open(&node, "alice").await;
    // Nothing to say: the poll is held.
    let started = Instant::now();
    let waiting = {
        let mut a = alice.clone();
        tokio::spawn(async move {
            let msgs = a.poll().await;
            (a, msgs, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !waiting.is_finished(),
        "the poll is held while nothing happens"
    );
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "d").await;
    let (a, msgs, took) = waiting.await.expect("poll");
    alice = a;
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "answered at the change: {took:?}"
    );
    let e = msgs
        .iter()
        .filter(|m| m["type"] == "presence")
        .flat_map(|m| m["changes"].as_array().cloned().unwrap_or_default())
        .find(|e| e["user"] == "bob")
        .unwrap_or_else(|| panic!("bob in {msgs:?}"));
    assert_eq!(e["state"], "online");
    // A later change reaches alice by poll too.
    bob.send(json!({"type": "status", "status": "busy", "text": "lp"}))
        .await;
    let e = alice
        .expect_presence("bob", SOON, |e| e["status"] == "busy")
        .await;
    assert_eq!(e["text"], "lp");
}

#[tokio::test]
async fn an_empty_poll_is_answered_after_the_hold() {
    common::init();
    let node = Node::start(LP);
    let (mut alice, _) = open(&node, "alice").await;
    let cursor = alice.cursor;
    let started = Instant::now();
    let msgs = alice.poll().await;
    let took = started.elapsed();
    assert!(msgs.is_empty(), "{msgs:?}");
    assert_eq!(alice.cursor, cursor, "nothing new: the same cursor");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "held for --lp-hold (1 s): {took:?}"
    );
}

#[tokio::test]
async fn a_lost_answer_comes_again_and_a_cursor_forgets() {
    common::init();
    let node = Node::start(LP);
    let (mut alice, _) = open(&node, "alice").await;
    alice
        .send(&json!([{"type": "heartbeat"}, {"type": "heartbeat"}]))
        .await;
    // Wait for both pongs to be written, without taking them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = alice.cursor;
    // The node answers this poll; the answer is lost on the way.
    request_and_lose_answer(alice.addr, &alice.poll_path(before)).await;
    // The same cursor again: the same messages.
    let a = alice.poll_raw(&[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["messages"], json!([{"type": "pong"}, {"type": "pong"}]));
    let after = v["cursor"].as_u64().expect("cursor");
    assert_eq!(after, before + 2);
    // Again (a retry of the retry): still the same.
    let again = alice.poll_raw(&[]).await.json();
    assert_eq!(again, v);
    // Moving the cursor on forgets them: the old cursor is refused, the waiting state kept.
    alice.cursor = after;
    alice.send(&json!({"type": "heartbeat"})).await;
    let msgs = alice.poll().await;
    assert_eq!(msgs, vec![json!({"type": "pong"})]);
    let a = request(alice.addr, "GET", &alice.poll_path(before), &[], b"").await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(a.json()["code"], "bad_request");
    let a = request(
        alice.addr,
        "GET",
        &alice.poll_path(alice.cursor + 5),
        &[],
        b"",
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
}

#[tokio::test]
async fn one_poll_at_a_time_a_newer_poll_ends_the_older_empty() {
    common::init();
    let node = Node::start(LONG_HOLD);
    let (alice, _) = open(&node, "alice").await;
    let older = {
        let a = alice.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (a.poll_raw(&[]).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = {
        let a = alice.clone();
        tokio::spawn(async move { a.poll_raw(&[]).await })
    };
    let (old, took) = older.await.expect("older poll");
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(
        old.json(),
        json!({"cursor": alice.cursor, "messages": []}),
        "the older poll is answered empty with its own cursor"
    );
    assert!(
        took < Duration::from_secs(2),
        "ended by the newer: {took:?}"
    );
    // The newer one gets what comes next.
    alice.send(&json!({"type": "heartbeat"})).await;
    let new = newer.await.expect("newer poll");
    assert_eq!(new.status, 200);
    assert_eq!(new.json()["messages"], json!([{"type": "pong"}]));
}

#[tokio::test]
async fn a_session_without_polls_expires_then_answers_410() {
    common::init();
    let node = Node::start(LP);
    node.befriend(&[("alice", "bob")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "d").await;
    // Before alice's last activity (her open), so the timeout's lower bound holds however long
    // a busy machine takes to show bob that she is online.
    let started = Instant::now();
    let (alice, _) = open(&node, "alice").await;
    bob.expect_presence("alice", SOON, is_state("online")).await;
    // alice stops polling; bob keeps talking (a WebSocket client must read to pong).
    let e = loop {
        bob.send(json!({"type": "heartbeat"})).await;
        if let Ok(Some(v)) = bob.recv_within(Duration::from_millis(300)).await
            && let Some(e) = v["changes"]
                .as_array()
                .and_then(|c| c.iter().find(|e| e["user"] == "alice").cloned())
        {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "alice never expired"
        );
    };
    assert_eq!(e["state"], "offline");
    let took = started.elapsed();
    // The heartbeat timeout (3 s) plus grace, less one tick (50 ms) of the wheel's rounding.
    assert!(
        took >= Duration::from_millis(2950),
        "offline before the heartbeat timeout: {took:?}"
    );
    let a = alice.poll_raw(&[]).await;
    assert_eq!(a.status, 410, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "protocol");
    assert_eq!(v["message"], "heartbeat timeout");
    let a = alice.close().await;
    assert_eq!(a.status, 410);
}

#[tokio::test]
async fn polling_keeps_a_session_alive_past_the_heartbeat_timeout() {
    common::init();
    let node = Node::start(LP);
    let (mut alice, _) = open(&node, "alice").await;
    let started = Instant::now();
    // Empty polls only (1 s holds), for twice the heartbeat timeout.
    while started.elapsed() < Duration::from_secs(6) {
        let msgs = alice.poll().await;
        assert!(msgs.iter().all(|m| m["type"] != "error"), "alive: {msgs:?}");
    }
    alice.send(&json!({"type": "heartbeat"})).await;
    alice.expect("pong", SOON).await;
}

#[tokio::test]
async fn unknown_sessions_and_malformed_requests_are_refused() {
    common::init();
    let node = Node::start(LP);
    let addr = node.ready.ws;
    let (alice, _) = open(&node, "alice").await;
    let code = |a: &common::lp::Answer| a.json()["code"].as_str().unwrap_or("").to_owned();

    // Unknown session.
    let a = request(addr, "GET", "/v1/lp/poll?session=00ff&cursor=0", &[], b"").await;
    assert_eq!(
        (a.status, code(&a)),
        (404, "not_found".into()),
        "{}",
        a.body
    );
    let a = request(addr, "POST", "/v1/lp/send?session=00ff", &[], b"{}").await;
    assert_eq!(a.status, 404);
    // Queries.
    for path in [
        "/v1/lp/poll",
        "/v1/lp/poll?session=ab",
        "/v1/lp/poll?cursor=1",
        "/v1/lp/poll?session=ab&cursor=x",
        "/v1/lp/poll?session=ab&cursor=-1",
    ] {
        let a = request(addr, "GET", path, &[], b"").await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(a.json()["message"].as_str().unwrap_or("").contains("query"));
    }
    // Bodies of send.
    for body in [
        &b""[..],
        b"nope",
        b"{\"type\": ",
        b"5",
        b"\"hello\"",
        b"[{\"type\":\"heartbeat\"}, 7]",
    ] {
        let a = alice.send_raw(body, &[]).await;
        assert_eq!(
            a.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            a.body
        );
        assert_eq!(code(&a), "protocol");
    }
    let many = format!("[{}]", vec![r#"{"type":"heartbeat"}"#; 101].join(","));
    let a = alice.send_raw(many.as_bytes(), &[]).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let huge = format!(
        r#"{{"type":"heartbeat","pad":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let a = alice.send_raw(huge.as_bytes(), &[]).await;
    assert_eq!(a.status, 413, "{}", a.body);
    let big = format!(
        r#"{{"type":"heartbeat","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let a = alice.send_raw(big.as_bytes(), &[]).await;
    assert_eq!(a.status, 413, "one message over 64 KiB: {}", a.body);
    // Bodies of open.
    let token = node.token("carol").await;
    for (body, status, want) in [
        ("".to_owned(), 400, "protocol"),
        ("[]".to_owned(), 400, "protocol"),
        ("{nope".to_owned(), 400, "protocol"),
        (json!({"type": "activity"}).to_string(), 400, "protocol"),
        (json!({"type": "hello"}).to_string(), 400, "protocol"),
        (hello("not.a.token").to_string(), 401, "unauthorized"),
        (hello(&format!("{token}x")).to_string(), 401, "unauthorized"),
    ] {
        let a = request(addr, "POST", "/v1/lp/open", &[], body.as_bytes()).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert_eq!(a.json()["type"], "error");
        assert_eq!(code(&a), want, "{body}");
    }
    let big = format!(r#"{{"type":"hello","token":"{}"}}"#, "x".repeat(70 * 1024));
    let a = request(addr, "POST", "/v1/lp/open", &[], big.as_bytes()).await;
    assert_eq!(a.status, 413, "{}", a.body);
    // The session survived all of it.
    let mut alice = alice;
    alice.send(&json!({"type": "heartbeat"})).await;
    alice.expect("pong", SOON).await;
}

#[tokio::test]
async fn a_session_id_is_bound_to_its_user_and_origin() {
    common::init();
    let node = Node::start(&[LP, &["--cors-origin", ORIGIN]].concat());
    let (mut alice, _) = open(&node, "alice").await;
    let alice_token = node.token("alice").await;
    let bob_token = node.token("bob").await;
    let bearer = |t: &str| format!("Bearer {t}");
    // alice's session id under bob's token.
    let stolen = bearer(&bob_token);
    let a = alice.poll_raw(&[("Authorization", &stolen)]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["code"], "forbidden");
    let a = alice
        .send_raw(br#"{"type":"heartbeat"}"#, &[("Authorization", &stolen)])
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    // A token that does not verify.
    let a = alice.poll_raw(&[("Authorization", "Bearer x.y.z")]).await;
    assert_eq!(a.status, 401, "{}", a.body);
    // From a page of another origin.
    let a = alice.poll_raw(&[("Origin", "http://evil.test")]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.header("access-control-allow-origin").is_none());
    let a = alice
        .send_raw(
            br#"{"type":"send","id":"x","to":"bob","text":"hi"}"#,
            &[
                ("Origin", "http://evil.test"),
                ("Content-Type", "text/plain"),
            ],
        )
        .await;
    assert_eq!(
        a.status, 403,
        "refused before the session sees it: {}",
        a.body
    );
    // A page of the node's own origin: browsers send Origin on a same-origin POST.
    let own_origin = format!("http://{}", node.ready.ws);
    let a = alice
        .send_raw(
            br#"{"type":"heartbeat"}"#,
            &[("Origin", &own_origin), ("Content-Type", "text/plain")],
        )
        .await;
    assert_eq!(a.status, 204, "same origin: {}", a.body);
    assert!(
        a.header("access-control-allow-origin").is_none(),
        "no CORS needed"
    );
    let (_, first) = Session::open_with(
        node.ready.ws,
        &hello(&alice_token),
        &[("Origin", &own_origin)],
    )
    .await;
    assert_eq!(first[0]["type"], "welcome", "{first:?}");
    let other_port = format!("http://127.0.0.1:{}", node.ready.ws.port() ^ 1);
    let a = alice.poll_raw(&[("Origin", &other_port)]).await;
    assert_eq!(a.status, 403, "another port is another origin: {}", a.body);
    // Nothing of that reached the session; alice's own token and origin work.
    let own = bearer(&alice_token);
    let a = alice
        .send_raw(
            br#"{"type":"heartbeat"}"#,
            &[("Authorization", &own), ("Origin", ORIGIN)],
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(a.header("access-control-allow-origin"), Some(ORIGIN));
    // A poll answers as soon as anything is there: the second pong may come in a later one
    // (seen once in CI). Whatever the refused sends had caused would come first.
    let mut msgs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while msgs.len() < 2 && tokio::time::Instant::now() < deadline {
        msgs.extend(alice.poll().await);
    }
    assert_eq!(
        msgs,
        vec![json!({"type": "pong"}), json!({"type": "pong"})],
        "only the same-origin send and the last one arrived"
    );
}

#[tokio::test]
async fn cors_preflight_for_the_configured_origin_only() {
    common::init();
    let node = Node::start(&[LP, &["--cors-origin", ORIGIN]].concat());
    let addr = node.ready.ws;
    for path in ["/v1/lp/open", "/v1/lp/poll", "/v1/lp/send", "/v1/lp/close"] {
        let a = request(
            addr,
            "OPTIONS",
            path,
            &[
                ("Origin", ORIGIN),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        )
        .await;
        assert_eq!(a.status, 204, "{path}: {}", a.body);
        assert_eq!(a.header("access-control-allow-origin"), Some(ORIGIN));
        let methods = a.header("access-control-allow-methods").unwrap_or("");
        assert!(
            methods.contains("POST") && methods.contains("GET"),
            "{methods}"
        );
        let headers = a.header("access-control-allow-headers").unwrap_or("");
        assert!(headers.contains("content-type"), "{headers}");
        assert_eq!(a.header("vary"), Some("Origin"));
        let a = request(
            addr,
            "OPTIONS",
            path,
            &[("Origin", "http://evil.test")],
            b"",
        )
        .await;
        assert_eq!(a.status, 403, "{path}");
        assert!(a.header("access-control-allow-origin").is_none());
    }
    // A cross-origin open from the page: answered with the CORS header.
    let token = node.token("alice").await;
    let a = request(
        addr,
        "POST",
        "/v1/lp/open",
        &[("Origin", ORIGIN), ("Content-Type", "text/plain")],
        hello(&token).to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("access-control-allow-origin"), Some(ORIGIN));
    // Refusals carry it too, so the page can read why.
    let a = request(
        addr,
        "POST",
        "/v1/lp/open",
        &[("Origin", ORIGIN)],
        hello("bad").to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("access-control-allow-origin"), Some(ORIGIN));

    // Without --cors-origin, no origin may call.
    let plain = Node::start(LP);
    let a = request(
        plain.ready.ws,
        "OPTIONS",
        "/v1/lp/open",
        &[("Origin", ORIGIN)],
        b"",
    )
    .await;
    assert_eq!(a.status, 403);
    let a = request(
        plain.ready.ws,
        "POST",
        "/v1/lp/open",
        &[("Origin", ORIGIN)],
        hello(&token).to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
}

#[tokio::test]
async fn chat_send_and_sent_and_inbox_through_polls() {
    common::init();
    let node = Node::start(LP);
    node.befriend(&[("alice", "bob")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut alice, _) = open(&node, "alice").await;
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "d").await;
    alice
        .send(&json!({"type": "send", "id": "c1", "to": "bob", "text": "lunch?"}))
        .await;
    let entry = bob.expect("inbox", SOON).await;
    assert_eq!(entry["text"], "lunch?");
    assert_eq!(entry["from"], "alice");
    bob.send(json!({"type": "send", "id": "b1", "to": "alice", "text": "yes"}))
        .await;
    let mut sent = Vec::new();
    let mut texts = Vec::new();
    let deadline = Instant::now() + SOON;
    while (sent.is_empty() || texts.len() < 2) && Instant::now() < deadline {
        for m in alice.poll().await {
            match m["type"].as_str() {
                Some("sent") => sent.push(m["id"].clone()),
                Some("inbox") => texts.push(m["text"].as_str().unwrap_or("").to_owned()),
                _ => {}
            }
        }
    }
    assert_eq!(sent, [json!("c1")], "durable, then answered through a poll");
    assert_eq!(
        texts,
        ["lunch?", "yes"],
        "alice's own message, then bob's, in inbox order"
    );
    // A new session resuming with `after` reads the inbox back.
    let token = node.token("alice").await;
    let (mut again, first) = Session::open(
        node.ready.ws,
        &json!({"type": "hello", "token": token, "device": "tab2", "after": 0}),
    )
    .await;
    let mut seqs: Vec<u64> = first
        .iter()
        .filter(|m| m["type"] == "inbox")
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    let deadline = Instant::now() + SOON;
    while seqs.len() < 2 && Instant::now() < deadline {
        for m in again.poll().await {
            if let Some(s) = m["seq"].as_u64().filter(|_| m["type"] == "inbox") {
                seqs.push(s);
            }
        }
    }
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test]
async fn presence_waiting_for_a_poll_is_merged() {
    common::init();
    let node = Node::start(LONG_HOLD);
    node.befriend(&[("alice", "bob")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "d").await;
    let (mut alice, _) = open(&node, "alice").await;
    // alice does not poll while bob changes his status over many ticks.
    for i in 0..20 {
        bob.send(json!({"type": "status", "status": "busy", "text": format!("t{i}")}))
            .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let msgs = alice.poll().await;
    let presence: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "presence").collect();
    assert_eq!(
        presence.len(),
        1,
        "one merged frame, not one per tick: {msgs:?}"
    );
    let changes = presence[0]["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["text"], "t19", "the latest state wins");
}

#[tokio::test]
async fn a_flood_is_limited_as_on_a_websocket() {
    common::init();
    let node = Node::start(LP);
    let (mut alice, _) = open(&node, "alice").await;
    let batch = Value::Array(vec![json!({"type": "heartbeat"}); 100]);
    // 60 pass (the burst), then refusals: one "slow down", then silence, then the close
    // after 50 refusals in a row.
    alice.send(&batch).await;
    let mut pongs = 0;
    let mut limited = 0;
    let deadline = Instant::now() + SOON;
    while pongs + limited < 61 && Instant::now() < deadline {
        for m in alice.poll().await {
            match m["type"].as_str() {
                Some("pong") => pongs += 1,
                Some("error") if m["code"] == "rate_limited" => limited += 1,
                _ => panic!("{m}"),
            }
        }
    }
    assert_eq!((pongs, limited), (60, 1));
    let a = alice.send_raw(batch.to_string().as_bytes(), &[]).await;
    assert!(a.status == 204 || a.status == 410, "{}", a.body);
    let deadline = Instant::now() + SOON;
    let ended = loop {
        let a = alice.poll_raw(&[]).await;
        if a.status == 410 {
            break a.json();
        }
        assert_eq!(a.status, 200, "{}", a.body);
        alice.cursor = a.json()["cursor"].as_u64().expect("cursor");
        assert!(Instant::now() < deadline, "the flood was not closed");
    };
    assert_eq!(ended["code"], "rate_limited", "{ended}");
}

#[tokio::test]
async fn a_held_poll_ends_when_the_node_stops() {
    common::init();
    let mut node = Node::start(LONG_HOLD);
    let (alice, _) = open(&node, "alice").await;
    let held = {
        let a = alice.clone();
        tokio::spawn(async move { a.poll_raw(&[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || node.stop())
        .await
        .expect("stop");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a held poll does not hold the stop: {:?}",
        started.elapsed()
    );
    let a = held.await.expect("poll");
    assert_eq!(a.status, 410, "{}", a.body);
    assert_eq!(a.json()["message"], "node shutting down");
}

#[tokio::test]
async fn a_poll_whose_client_went_away_leaves_presence_merged() {
    common::init();
    let node = Node::start(LONG_HOLD);
    node.befriend(&[("alice", "bob")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (mut bob, _) = Client::hello(&node, Via::Ws, "bob", "d").await;
    let (mut alice, _) = open(&node, "alice").await;
    // Take whatever is pending until a poll comes back empty (after the 5 s hold).
    for _ in 0..3 {
        if alice.poll().await.is_empty() {
            break;
        }
    }
    // A poll held, then its connection dropped (a tab closed mid-poll).
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(alice.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
            alice.poll_path(alice.cursor)
        );
        s.write_all(req.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node counts no reader once that request is gone: what comes meanwhile waits,
    // merged, for the next poll (no frame was taken for the dead one).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10 {
        bob.send(json!({"type": "status", "status": "busy", "text": format!("t{i}")}))
            .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let msgs = alice.poll().await;
    let presence: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "presence").collect();
    assert_eq!(presence.len(), 1, "one merged frame: {msgs:?}");
    assert_eq!(presence[0]["changes"][0]["text"], "t9", "{msgs:?}");
}
