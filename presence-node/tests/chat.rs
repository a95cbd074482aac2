//! End-to-end chat: the real binary, real WebSocket and QUIC clients, real files, a real
//! webhook receiver.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use common::hooks::{Hook, webhook_receiver};
use common::{Client, Node, Via};
use serde_json::{Value, json};
use tokio::time::Instant;

const SOON: Duration = Duration::from_secs(5);
/// Long enough for something the node would send to arrive, on a shared 2-core machine.
const QUIET: Duration = Duration::from_millis(400);
/// Presence is not what these tests are about: quick ticks, a long heartbeat timeout so a
/// silent receiver is not expired mid-test.
const ARGS: &[&str] = &[
    "--tick",
    "50ms",
    "--grace",
    "300ms",
    "--heartbeat-timeout",
    "30s",
];

/// A small deterministic generator (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Says hello (optionally with `after`) and checks the welcome's chat fields.
async fn hello(
    node: &Node,
    via: Via,
    token: &str,
    device: &str,
    after: Option<u64>,
) -> (Client, Value) {
    let mut c = Client::open(node, via).await;
    let mut h = json!({"type": "hello", "token": token, "device": device});
    if let Some(a) = after {
        h["after"] = json!(a);
    }
    c.send(h).await;
    let w = c.recv().await.expect("welcome");
    assert_eq!(w["type"], "welcome", "{w}");
    assert!(w["inbox_seq"].is_u64(), "welcome without inbox_seq: {w}");
    assert!(w["acked_seq"].is_u64(), "welcome without acked_seq: {w}");
    (c, w)
}

/// A client that files what it receives: inbox entries in arrival order, everything else
/// (but presence) in a queue to be taken.
struct Peer {
    c: Client,
    welcome: Value,
    inbox: Vec<Value>,
    other: VecDeque<Value>,
}

impl Peer {
    async fn connect(node: &Node, via: Via, user: &str, device: &str) -> Peer {
        Self::connect_after(node, via, user, device, None).await
    }

    async fn connect_after(
        node: &Node,
        via: Via,
        user: &str,
        device: &str,
        after: Option<u64>,
    ) -> Peer {
        let token = node.token(user).await;
        let (c, welcome) = hello(node, via, &token, device, after).await;
        Peer {
            c,
            welcome,
            inbox: Vec::new(),
            other: VecDeque::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        self.c.send(v).await;
    }

    fn file(&mut self, v: Value) {
        match v["type"].as_str() {
            Some("inbox") => self.inbox.push(v),
            Some("presence") => {}
            _ => self.other.push_back(v),
        }
    }

    /// Reads one frame within `d` and files it; false on timeout.
    async fn pump(&mut self, d: Duration) -> bool {
        match self.c.recv_within(d).await {
            Ok(Some(v)) => {
                self.file(v);
                true
            }
            Ok(None) => panic!(
                "connection closed; unread: {:?}, welcome: {}",
                self.other, self.welcome
            ),
            Err(()) => false,
        }
    }

    /// Files everything that arrives within `d`.
    async fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while self
            .pump(deadline.saturating_duration_since(Instant::now()))
            .await
        {}
    }

    /// Waits until `n` inbox entries have arrived.
    async fn wait_inbox(&mut self, n: usize, d: Duration) {
        let deadline = Instant::now() + d;
        while self.inbox.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.pump(left).await {
                panic!(
                    "{} of {n} inbox entries within {d:?}; last: {:?}; other: {:?}",
                    self.inbox.len(),
                    self.inbox.last(),
                    self.other
                );
            }
        }
    }

    /// The first filed or arriving non-inbox frame matching `pred`.
    async fn take(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(i) = self.other.iter().position(&pred) {
                return self.other.remove(i).expect("index");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.pump(left).await {
                panic!("no {what} within {SOON:?}; unread: {:?}", self.other);
            }
        }
    }

    async fn take_type(&mut self, kind: &str) -> Value {
        self.take(kind, |v| v["type"] == kind).await
    }

    /// The `sent` or `error` answering client id `id`.
    async fn reply(&mut self, id: &str) -> Value {
        self.take(&format!("answer to {id}"), |v| {
            v["id"] == id && (v["type"] == "sent" || v["type"] == "error")
        })
        .await
    }

    /// Sends `text` to user `to` and returns the `sent`.
    async fn send_to(&mut self, id: &str, to: &str, text: &str) -> Value {
        self.send(json!({"type": "send", "id": id, "to": to, "text": text}))
            .await;
        let r = self.reply(id).await;
        assert_eq!(r["type"], "sent", "{r}");
        r
    }

    /// Sends and expects an error with `code` (carrying the id); returns it.
    async fn refused(&mut self, send: Value, code: &str) -> Value {
        let id = send["id"].as_str().expect("id").to_owned();
        self.send(send).await;
        let r = self.reply(&id).await;
        assert_eq!(
            (&r["type"], &r["code"]),
            (&json!("error"), &json!(code)),
            "{r}"
        );
        r
    }

    /// An error frame (for operations without a client id).
    async fn error(&mut self, code: &str) -> Value {
        let e = self.take_type("error").await;
        assert_eq!(e["code"], code, "{e}");
        e
    }

    /// The connection is open and answering.
    async fn alive(&mut self) {
        self.send(json!({"type": "heartbeat"})).await;
        self.take_type("pong").await;
    }

    fn seqs(&self) -> Vec<u64> {
        self.inbox.iter().map(seq_of).collect()
    }

    /// Nothing unexpected arrived: no errors, no typing.
    fn assert_no(&self, kind: &str) {
        assert!(
            !self.other.iter().any(|v| v["type"] == kind),
            "unexpected {kind}: {:?}",
            self.other
        );
    }
}

fn seq_of(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or_else(|| panic!("seq in {e}"))
}

fn msg_id(v: &Value) -> String {
    let id = v["msg_id"]
        .as_str()
        .unwrap_or_else(|| panic!("msg_id in {v}"));
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "msg_id is 16 lowercase hex digits: {id}"
    );
    id.to_owned()
}

async fn put_group(node: &Node, gid: &str, members: &[&str]) {
    let (s, v) = node
        .admin(
            "PUT",
            &format!("/v1/groups/{gid}"),
            Some(json!({ "members": members })),
        )
        .await;
    assert_eq!(s, 204, "{v}");
}

/// The node allows a connection 20 messages a second with bursts of 60 (docs/protocol.md,
/// `rate_limited`), counted when it reads them: senders here stay well under that (a burst
/// of 30, then 18 a second), so a node slowed down by a busy machine does not refuse them.
const BURST: usize = 30;
const GAP: Duration = Duration::from_millis(55);

/// Sends `n` messages (`{prefix}{i}` ids, `text(i)`, to `target`: `{"to": …}` or
/// `{"group": …}`) paced under the node's rate limit while reading everything that arrives
/// (as a real client does), until every send is answered. Returns the msg_ids in send order,
/// checked strictly increasing.
async fn paced_sends(
    p: &mut Peer,
    prefix: &str,
    target: &Value,
    n: usize,
    text: impl Fn(usize) -> String,
) -> Vec<String> {
    let frames: Vec<String> = (0..n)
        .map(|i| {
            let mut v = json!({"type": "send", "id": format!("{prefix}{i}"), "text": text(i)});
            for (k, x) in target.as_object().expect("target") {
                v[k] = x.clone();
            }
            v.to_string()
        })
        .collect();
    let start = Instant::now();
    let due = move |i: usize| start + GAP * (i + 1).saturating_sub(BURST) as u32;
    let mut got: Vec<Value> = Vec::new();
    // Counts answers to these sends; an error that names no id (rate_limited) fails at once.
    let mut answers = 0;
    let mut file = |v: Value| {
        if v["type"] == "error" && v.get("id").is_none() {
            panic!("{prefix}: {v}");
        }
        if (v["type"] == "sent" || v["type"] == "error")
            && v["id"].as_str().is_some_and(|id| id.starts_with(prefix))
        {
            answers += 1;
        }
        got.push(v);
        answers == n
    };
    // Reading and writing run side by side on the two halves of the connection, so no read
    // is ever cancelled half way through a frame.
    let run = async {
        let (mut tx, mut rx) = p.c.split();
        let write = async {
            for (i, f) in frames.iter().enumerate() {
                tokio::time::sleep_until(due(i)).await;
                tx.send_frame(f.as_bytes()).await.expect("send");
            }
        };
        let read = async {
            loop {
                match rx.recv_frame().await {
                    Ok(frame) => {
                        if file(serde_json::from_slice(&frame).expect("json")) {
                            break;
                        }
                    }
                    Err(e) => panic!("{prefix}: closed ({e})"),
                }
            }
        };
        tokio::join!(write, read);
    };
    let limit = GAP * n as u32 + Duration::from_secs(10);
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{prefix}: not all {n} sends answered in {limit:?}"));
    for v in got {
        p.file(v);
    }
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let r = p.reply(&format!("{prefix}{i}")).await;
        assert_eq!(r["type"], "sent", "{r}");
        assert!(r["ts"].is_u64(), "{r}");
        ids.push(msg_id(&r));
    }
    for w in ids.windows(2) {
        assert!(w[0] < w[1], "{prefix}: msg_ids strictly increase: {w:?}");
    }
    ids
}

/// 1. Every device of both users receives every entry, with the same seqs, in order.
#[tokio::test]
async fn in_order_delivery_to_every_device() {
    common::init();
    const N: usize = 200;
    let node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let mut a1 = Peer::connect(&node, Via::Ws, "a", "a1").await;
    let mut a2 = Peer::connect(&node, Via::Quic, "a", "a2").await;
    let mut b1 = Peer::connect(&node, Via::Ws, "b", "b1").await;
    let mut b2 = Peer::connect(&node, Via::Quic, "b", "b2").await;
    for p in [&a1, &a2, &b1, &b2] {
        assert_eq!(p.welcome["inbox_seq"], 0, "{}", p.welcome);
        assert_eq!(p.welcome["acked_seq"], 0, "{}", p.welcome);
    }
    // Both of a's devices send, at the same time, 100 messages each.
    let to_b = json!({"to": "b"});
    let (ids1, ids2) = tokio::join!(
        paced_sends(&mut a1, "x", &to_b, N / 2, |i| format!("a1 {i}")),
        paced_sends(&mut a2, "y", &to_b, N / 2, |i| format!("a2 {i}")),
    );
    let mut want: HashMap<String, (String, usize)> = HashMap::new();
    for (dev, ids) in [("a1", &ids1), ("a2", &ids2)] {
        for (i, id) in ids.iter().enumerate() {
            want.insert(id.clone(), (dev.to_owned(), i));
        }
    }
    assert_eq!(want.len(), N, "distinct msg_ids");
    let mut order: Option<Vec<String>> = None;
    for (name, p) in [
        ("a1", &mut a1),
        ("a2", &mut a2),
        ("b1", &mut b1),
        ("b2", &mut b2),
    ] {
        p.wait_inbox(N, SOON).await;
        p.settle(Duration::from_millis(200)).await;
        assert_eq!(p.seqs(), (1..=N as u64).collect::<Vec<_>>(), "{name}");
        let mut next = HashMap::from([("a1".to_owned(), 0), ("a2".to_owned(), 0)]);
        for e in &p.inbox {
            assert_eq!(e["kind"], "message", "{name}: {e}");
            assert_eq!(e["from"], "a", "{name}: {e}");
            assert_eq!(e["to"], "b", "{name}: the recipient in both inboxes: {e}");
            assert!(e.get("group").is_none(), "{name}: {e}");
            assert!(e["ts"].is_u64(), "{name}: {e}");
            let (dev, i) = want
                .get(&msg_id(e))
                .unwrap_or_else(|| panic!("{name}: {e}"));
            assert_eq!(e["text"], format!("{dev} {i}"), "{name}: {e}");
            // Each sender's messages in the order it sent them.
            let n = next.get_mut(dev).expect("dev");
            assert_eq!(*i, *n, "{name}: {e}");
            *n += 1;
        }
        // Same message at the same seq on every device, and in both users' inboxes.
        let ids: Vec<String> = p.inbox.iter().map(msg_id).collect();
        match &order {
            None => order = Some(ids),
            Some(o) => assert_eq!(o, &ids, "{name}"),
        }
        p.assert_no("error");
    }
}

/// 2. A receiver cut at random points resumes with `after` = the last seq it saw, while
///    senders send without pause: every seq once, in order, no gap, every text once.
#[tokio::test]
async fn randomized_cut_and_resume() {
    common::init();
    // 15 senders (one connection each, paced under the rate limit) × 200 = 3,000 messages.
    const SENDERS: usize = 15;
    const PER: usize = 200;
    const N: u64 = (SENDERS * PER) as u64;
    let node = Node::start(ARGS);
    let names = node.friends_of("r", SENDERS).await;
    let r_token = node.token("r").await;
    let mut senders = Vec::new();
    for (i, s) in names.iter().enumerate() {
        let via = if i % 2 == 0 { Via::Ws } else { Via::Quic };
        senders.push(Peer::connect(&node, via, s, "d").await);
    }
    let started = std::time::Instant::now();
    let to_r = json!({"to": "r"});
    let sending = futures_util::future::join_all(
        senders
            .iter_mut()
            .map(|p| paced_sends(p, "c", &to_r, PER, |i| format!("m{i}"))),
    );

    let receiver = async {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut got: Vec<Value> = Vec::with_capacity(N as usize);
        let mut last = 0u64;
        let mut cuts = 0u32;
        loop {
            let via = if rng.below(2) == 0 {
                Via::Ws
            } else {
                Via::Quic
            };
            let (mut c, w) = hello(&node, via, &r_token, "r1", Some(last)).await;
            let head = w["inbox_seq"].as_u64().expect("inbox_seq");
            assert!(
                head >= last,
                "inbox_seq {head} behind what was seen ({last})"
            );
            // Cut after a random number of entries (0: right after the welcome).
            let budget = rng.below(160);
            let mut n = 0;
            while n < budget && last < N {
                match c.recv_within(SOON).await {
                    Ok(Some(v)) if v["type"] == "inbox" => {
                        let seq = seq_of(&v);
                        assert_eq!(
                            seq,
                            last + 1,
                            "after cut {cuts} (resumed after {last}): {v}"
                        );
                        last = seq;
                        got.push(v);
                        n += 1;
                    }
                    Ok(Some(v)) if v["type"] == "error" => panic!("receiver: {v}"),
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("receiver closed by the node after {last}"),
                    Err(()) => panic!("receiver: nothing after {last} within {SOON:?}"),
                }
            }
            if last == N {
                // Nothing more on this connection: no duplicate, nothing extra.
                loop {
                    match c.recv_within(QUIET).await {
                        Err(()) => break,
                        Ok(Some(v)) if v["type"] == "presence" => {}
                        other => panic!("after the last entry: {other:?}"),
                    }
                }
                c.close().await;
                break;
            }
            // Gone without a goodbye; sometimes away long enough for a backlog to build up,
            // so the resume reads from the store while new entries arrive live.
            c.abandon();
            cuts += 1;
            if rng.below(3) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            }
        }
        (got, cuts)
    };

    let (ids, (got, cuts)) = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(sending, receiver)
    })
    .await
    .expect("senders and receiver finished in 40 s");
    let took = started.elapsed();
    assert!(cuts >= 20, "only {cuts} cuts");
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    let mut texts = HashMap::new();
    let mut next = vec![0usize; SENDERS];
    for e in &got {
        assert_eq!(e["kind"], "message", "{e}");
        assert_eq!(e["to"], "r", "{e}");
        let from = e["from"].as_str().expect("from");
        let k = names.iter().position(|s| s == from).expect("a sender");
        // Each sender's messages in its order, with the msg_ids it was told.
        assert_eq!(e["text"], format!("m{}", next[k]), "{e}");
        assert_eq!(msg_id(e), ids[k][next[k]], "{e}");
        next[k] += 1;
        *texts.entry(format!("{from} {}", e["text"])).or_insert(0) += 1;
    }
    assert_eq!(next, vec![PER; SENDERS]);
    assert_eq!(texts.len(), N as usize, "every text once");
    // A fresh device resuming at the end gets nothing; the head is N.
    let (mut c, w) = hello(&node, Via::Ws, &r_token, "r2", Some(N)).await;
    assert_eq!(w["inbox_seq"], N);
    assert!(
        !matches!(c.recv_within(QUIET).await, Ok(Some(v)) if v["type"] == "inbox"),
        "nothing after the head"
    );
    // Sync pages: at most 1,000 entries, 500 by default.
    let mut r = Peer {
        c,
        welcome: w,
        inbox: Vec::new(),
        other: VecDeque::new(),
    };
    r.send(json!({"type": "sync", "after": 0, "limit": 5000}))
        .await;
    let s = r.take_type("synced").await;
    assert_eq!(
        s,
        json!({"type": "synced", "after": 0, "last": 1000, "more": true})
    );
    assert_eq!(r.seqs(), (1..=1000).collect::<Vec<_>>());
    r.inbox.clear();
    r.send(json!({"type": "sync", "after": 2800})).await;
    let s = r.take_type("synced").await;
    assert_eq!(
        s,
        json!({"type": "synced", "after": 2800, "last": N, "more": false})
    );
    assert_eq!(r.seqs(), (2801..=N).collect::<Vec<_>>());
    r.inbox.clear();
    r.send(json!({"type": "sync", "after": 1000})).await;
    let s = r.take_type("synced").await;
    assert_eq!(
        s,
        json!({"type": "synced", "after": 1000, "last": 1500, "more": true})
    );
    assert_eq!(r.seqs(), (1001..=1500).collect::<Vec<_>>());
    eprintln!("cut-and-resume: {N} messages, {cuts} cuts, {took:?}");
}

/// A device that stops reading while far more than the node queues for it arrives: what
/// was left out is read back from the store, and the device still gets every seq once, in
/// order.
#[tokio::test]
async fn a_slow_reader_is_caught_up_from_the_store() {
    common::init();
    const SENDERS: usize = 20;
    const PER: usize = 120;
    const N: usize = SENDERS * PER;
    let node = Node::start(ARGS);
    let names = node.friends_of("r", SENDERS).await;
    // 4 KiB socket receive buffer, and it does not read while the senders send: ~9.6 MB
    // for it, more than the node's socket send buffer (at most 4 MiB here) and its queue of
    // 1,024 entries hold, so the queue overflows.
    let slow = Client::hello_tiny_window(&node, "r").await;
    let mut senders = Vec::new();
    for (i, s) in names.iter().enumerate() {
        let via = if i % 2 == 0 { Via::Ws } else { Via::Quic };
        senders.push(Peer::connect(&node, via, s, "d").await);
    }
    let body = "z".repeat(3990);
    let to_r = json!({"to": "r"});
    let ids = futures_util::future::join_all(
        senders
            .iter_mut()
            .map(|p| paced_sends(p, "c", &to_r, PER, |i| format!("{i} {body}"))),
    )
    .await;
    assert!(
        node.metric("chat_entries_left_to_store_total").await > 0.0,
        "the slow reader's queue overflowed (else this test tests nothing)"
    );
    let mut r = Peer {
        c: slow,
        welcome: Value::Null,
        inbox: Vec::new(),
        other: VecDeque::new(),
    };
    r.wait_inbox(N, Duration::from_secs(20)).await;
    r.settle(QUIET).await;
    assert_eq!(r.seqs(), (1..=N as u64).collect::<Vec<_>>());
    let mut next = [0usize; SENDERS];
    for e in &r.inbox {
        let k = names
            .iter()
            .position(|s| e["from"] == s.as_str())
            .expect("a sender");
        assert_eq!(e["text"], format!("{} {body}", next[k]), "seq {}", e["seq"]);
        assert_eq!(msg_id(e), ids[k][next[k]]);
        next[k] += 1;
    }
    r.assert_no("error");
}

/// 3. A retried `id` gets the same msg_id and makes one inbox entry, also after a restart.
#[tokio::test]
async fn retries_are_deduplicated_across_a_restart() {
    common::init();
    let mut node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    let mut b = Peer::connect(&node, Via::Quic, "b", "b1").await;
    let send = json!({"type": "send", "id": "x1", "to": "b", "text": "once"});
    // Twice back to back, before the first is durable.
    a.send(send.clone()).await;
    a.send(send.clone()).await;
    let r1 = a.reply("x1").await;
    let r2 = a.reply("x1").await;
    assert_eq!(r1["type"], "sent", "{r1}");
    assert_eq!(r1, r2, "same msg_id and ts");
    // Again once durable, and with another text: still the same message.
    let r3 = a.send_to("x1", "b", "once").await;
    assert_eq!(r1, r3);
    let r4 = a.send_to("x1", "b", "other text").await;
    assert_eq!(r1, r4);
    // A different id is a different message.
    let r5 = a.send_to("x2", "b", "twice").await;
    assert!(msg_id(&r5) > msg_id(&r1));
    b.wait_inbox(2, SOON).await;
    a.wait_inbox(2, SOON).await;
    b.settle(QUIET).await;
    a.settle(Duration::ZERO).await;
    for p in [&a, &b] {
        assert_eq!(p.seqs(), vec![1, 2]);
        assert_eq!(p.inbox[0]["text"], "once");
        assert_eq!(msg_id(&p.inbox[0]), msg_id(&r1));
        assert_eq!(msg_id(&p.inbox[1]), msg_id(&r5));
    }
    drop((a, b));

    assert!(node.stop().success());
    let node = node.restart();
    let mut a = Peer::connect(&node, Via::Quic, "a", "a1").await;
    assert_eq!(a.welcome["inbox_seq"], 2);
    let r6 = a.send_to("x1", "b", "once").await;
    assert_eq!(r1, r6, "same msg_id after a restart");
    let r7 = a.send_to("x2", "b", "twice").await;
    assert_eq!(r5, r7);
    let mut b = Peer::connect_after(&node, Via::Ws, "b", "b1", Some(0)).await;
    assert_eq!(b.welcome["inbox_seq"], 2, "no new entry: {}", b.welcome);
    b.wait_inbox(2, SOON).await;
    b.settle(QUIET).await;
    assert_eq!(b.seqs(), vec![1, 2]);
    // New ids continue after the old ones.
    let r8 = a.send_to("x3", "b", "three").await;
    assert!(msg_id(&r8) > msg_id(&r5));
    b.wait_inbox(3, SOON).await;
    assert_eq!(seq_of(&b.inbox[2]), 3);
    a.assert_no("error");
}

/// 4. What was acknowledged with `sent` survives kill -9 and is delivered after the restart.
#[tokio::test]
async fn sent_survives_kill9() {
    common::init();
    const N: usize = 20;
    let mut node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let mut a = Peer::connect(&node, Via::Quic, "a", "a1").await;
    for i in 0..N {
        a.send(json!({"type": "send", "id": format!("k{i}"), "to": "b", "text": format!("k {i}")}))
            .await;
    }
    let mut ids = Vec::new();
    for i in 0..N {
        let r = a.reply(&format!("k{i}")).await;
        assert_eq!(r["type"], "sent", "{r}");
        ids.push(msg_id(&r));
    }
    // Right after the last `sent`.
    node.kill9();
    drop(a);
    let node = node.restart();
    // Resuming from 0 delivers all of them, in order.
    let mut b = Peer::connect_after(&node, Via::Ws, "b", "b1", Some(0)).await;
    assert_eq!(b.welcome["inbox_seq"], N as u64, "{}", b.welcome);
    b.wait_inbox(N, SOON).await;
    for (i, e) in b.inbox.iter().enumerate() {
        assert_eq!(seq_of(e), i as u64 + 1);
        assert_eq!(e["text"], format!("k {i}"));
        assert_eq!(msg_id(e), ids[i]);
    }
    // And sync finds them too.
    let mut b2 = Peer::connect(&node, Via::Quic, "b", "b2").await;
    b2.send(json!({"type": "sync", "after": 0})).await;
    let s = b2.take_type("synced").await;
    assert_eq!(
        s,
        json!({"type": "synced", "after": 0, "last": N, "more": false})
    );
    assert_eq!(b2.seqs(), (1..=N as u64).collect::<Vec<_>>());
    // The sender's inbox has them as well, and sequences continue.
    let mut a = Peer::connect_after(&node, Via::Ws, "a", "a1", Some(0)).await;
    a.wait_inbox(N, SOON).await;
    let r = a.send_to("k-next", "b", "after the crash").await;
    assert!(msg_id(&r) > ids[N - 1]);
    b.wait_inbox(N + 1, SOON).await;
    assert_eq!(seq_of(&b.inbox[N]), N as u64 + 1);
}

/// Sync pages, `hello` without and with `after`, and `ack` in the next welcome.
#[tokio::test]
async fn sync_pages_resume_and_ack() {
    common::init();
    let node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    for i in 0..30 {
        a.send(json!({"type": "send", "id": format!("p{i}"), "to": "b", "text": format!("p {i}")}))
            .await;
    }
    for i in 0..30 {
        assert_eq!(a.reply(&format!("p{i}")).await["type"], "sent");
    }
    // Without `after`: nothing old is pushed.
    let mut b = Peer::connect(&node, Via::Quic, "b", "b1").await;
    assert_eq!(b.welcome["inbox_seq"], 30);
    assert_eq!(b.welcome["acked_seq"], 0);
    b.settle(QUIET).await;
    assert!(b.inbox.is_empty(), "{:?}", b.inbox);
    for (after, last, more) in [
        (0u64, 12u64, true),
        (12, 24, true),
        (24, 30, false),
        (30, 30, false),
    ] {
        b.inbox.clear();
        b.send(json!({"type": "sync", "after": after, "limit": 12}))
            .await;
        let s = b.take_type("synced").await;
        assert_eq!(
            s,
            json!({"type": "synced", "after": after, "last": last, "more": more})
        );
        assert_eq!(b.seqs(), (after + 1..=last).collect::<Vec<_>>());
        for e in &b.inbox {
            assert_eq!(e["text"], format!("p {}", seq_of(e) - 1));
        }
    }
    // Live entries are pushed.
    b.inbox.clear();
    a.send_to("p30", "b", "p 30").await;
    b.wait_inbox(1, SOON).await;
    assert_eq!(seq_of(&b.inbox[0]), 31);
    // ack: the same device sees it in a later welcome; another device does not. (It should
    // be the very next welcome; see `ack_is_in_the_next_welcome_under_load`.)
    b.send(json!({"type": "ack", "seq": 31})).await;
    b.alive().await;
    b.assert_no("error");
    b.c.close().await;
    let deadline = Instant::now() + SOON;
    let mut b = loop {
        let b = Peer::connect_after(&node, Via::Ws, "b", "b1", Some(28)).await;
        assert_eq!(b.welcome["inbox_seq"], 31, "{}", b.welcome);
        let acked = b.welcome["acked_seq"].as_u64().expect("acked_seq");
        assert!(acked == 0 || acked == 31, "{}", b.welcome);
        if acked == 31 {
            break b;
        }
        assert!(Instant::now() < deadline, "ack not stored: {}", b.welcome);
        b.c.close().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    b.wait_inbox(3, SOON).await;
    b.settle(QUIET).await;
    assert_eq!(b.seqs(), vec![29, 30, 31]);
    let other = Peer::connect(&node, Via::Ws, "b", "b2").await;
    assert_eq!(other.welcome["acked_seq"], 0, "{}", other.welcome);
}

/// 5. Refusals carry the client id and leave the connection open.
#[tokio::test]
async fn refusals_keep_the_connection_open() {
    common::init();
    let node = Node::start(&[ARGS, &["--max-text", "10"]].concat());
    node.befriend(&[("a", "b"), ("b", "c")]).await;
    put_group(&node, "g", &["b", "c"]).await;
    for via in [Via::Ws, Via::Quic] {
        let dev = format!("{via:?}");
        let mut a = Peer::connect(&node, via, "a", &dev).await;
        let t = |id: &str, extra: Value| {
            let mut v = json!({"type": "send", "id": format!("{dev}-{id}"), "text": "hi"});
            for (k, x) in extra.as_object().expect("object") {
                v[k] = x.clone();
            }
            v
        };
        a.refused(t("nf", json!({"to": "c"})), "forbidden").await;
        a.refused(t("self", json!({"to": "a"})), "forbidden").await;
        a.refused(t("nm", json!({"group": "g"})), "forbidden").await;
        a.refused(t("ng", json!({"group": "nope"})), "not_found")
            .await;
        a.refused(
            t("big", json!({"to": "b", "text": "x".repeat(11)})),
            "too_large",
        )
        .await;
        a.refused(
            t("bigu", json!({"to": "b", "text": "é".repeat(11)})),
            "too_large",
        )
        .await;
        a.refused(t("empty", json!({"to": "b", "text": ""})), "bad_request")
            .await;
        a.refused(t("both", json!({"to": "b", "group": "g"})), "bad_request")
            .await;
        a.refused(t("neither", json!({})), "bad_request").await;
        a.alive().await;
        // Exactly the limit, counted in characters, not bytes.
        a.send_to(&format!("{dev}-ten"), "b", &"x".repeat(10)).await;
        a.send_to(&format!("{dev}-tenu"), "b", &"é".repeat(10))
            .await;
        // A refused id was not used up.
        a.send_to(&format!("{dev}-big"), "b", "now fits").await;
        a.alive().await;
        a.settle(Duration::from_millis(100)).await;
        a.assert_no("error");
    }
    // Only the accepted messages reached b.
    let mut b = Peer::connect_after(&node, Via::Ws, "b", "b1", Some(0)).await;
    b.wait_inbox(6, SOON).await;
    b.settle(QUIET).await;
    let texts: Vec<&str> = b.inbox.iter().filter_map(|e| e["text"].as_str()).collect();
    let ten = "x".repeat(10);
    let tenu = "é".repeat(10);
    assert_eq!(
        texts,
        vec![&ten, &tenu, "now fits", &ten, &tenu, "now fits"],
        "{:?}",
        b.inbox
    );
}

/// 6. Edit and delete by the author only, read receipts to the author's devices, typing to
///    live devices only and at most once a second.
#[tokio::test]
async fn edit_delete_read_and_typing() {
    common::init();
    let node = Node::start(&[ARGS, &["--max-text", "100"]].concat());
    node.befriend(&[("a", "b")]).await;
    let mut a1 = Peer::connect(&node, Via::Ws, "a", "a1").await;
    let mut a2 = Peer::connect(&node, Via::Quic, "a", "a2").await;
    let mut b = Peer::connect(&node, Via::Ws, "b", "b1").await;
    let m1 = msg_id(&a1.send_to("e1", "b", "first").await);
    for p in [&mut a1, &mut a2, &mut b] {
        p.wait_inbox(1, SOON).await;
    }

    // Edit: not by b.
    b.send(json!({"type": "edit", "msg_id": m1, "text": "hijacked"}))
        .await;
    b.error("forbidden").await;
    b.send(json!({"type": "delete", "msg_id": m1})).await;
    b.error("forbidden").await;
    b.alive().await;
    a1.send(json!({"type": "edit", "msg_id": m1, "text": "x".repeat(101)}))
        .await;
    a1.error("too_large").await;
    // By the author: an entry in every participant's inbox.
    a1.send(json!({"type": "edit", "msg_id": m1, "text": "first, edited"}))
        .await;
    for (name, p) in [("a1", &mut a1), ("a2", &mut a2), ("b", &mut b)] {
        p.wait_inbox(2, SOON).await;
        let e = &p.inbox[1];
        assert_eq!(seq_of(e), 2, "{name}: {e}");
        assert_eq!(e["kind"], "edit", "{name}: {e}");
        assert_eq!(msg_id(e), m1, "{name}: {e}");
        assert_eq!(
            (&e["from"], &e["to"]),
            (&json!("a"), &json!("b")),
            "{name}: {e}"
        );
        assert_eq!(e["text"], "first, edited", "{name}: {e}");
    }
    a2.send(json!({"type": "delete", "msg_id": m1})).await;
    for (name, p) in [("a1", &mut a1), ("a2", &mut a2), ("b", &mut b)] {
        p.wait_inbox(3, SOON).await;
        let e = &p.inbox[2];
        assert_eq!(seq_of(e), 3, "{name}: {e}");
        assert_eq!(e["kind"], "delete", "{name}: {e}");
        assert_eq!(msg_id(e), m1, "{name}: {e}");
        assert_eq!(e["from"], "a", "{name}: {e}");
        assert!(e.get("text").is_none(), "{name}: {e}");
    }
    // A deleted message cannot be edited; an unknown one is not found.
    a1.send(json!({"type": "edit", "msg_id": m1, "text": "again"}))
        .await;
    a1.error("not_found").await;
    a1.send(json!({"type": "delete", "msg_id": "00000000000000ff"}))
        .await;
    a1.error("not_found").await;

    // Read receipt: to the author's devices only.
    let m2 = msg_id(&a2.send_to("e2", "b", "second").await);
    b.wait_inbox(4, SOON).await;
    b.send(json!({"type": "read", "msg_id": m2})).await;
    for (name, p) in [("a1", &mut a1), ("a2", &mut a2)] {
        p.wait_inbox(5, SOON).await;
        let e = &p.inbox[4];
        assert_eq!(seq_of(e), 5, "{name}: {e}");
        assert_eq!(e["kind"], "read", "{name}: {e}");
        assert_eq!(msg_id(e), m2, "{name}: {e}");
        assert_eq!(e["from"], "b", "{name}: the reader: {e}");
    }
    b.settle(QUIET).await;
    assert_eq!(b.seqs(), vec![1, 2, 3, 4], "no read entry for the reader");

    // Typing: to both of a's live devices, never to the typist.
    b.send(json!({"type": "typing", "to": "a"})).await;
    let typed = Instant::now();
    for p in [&mut a1, &mut a2] {
        let t = p.take_type("typing").await;
        assert_eq!(t, json!({"type": "typing", "from": "b"}));
    }
    // A second one within the second is dropped silently.
    b.send(json!({"type": "typing", "to": "a"})).await;
    a1.settle(QUIET).await;
    a2.settle(Duration::ZERO).await;
    a1.assert_no("typing");
    a2.assert_no("typing");
    // After the second, one goes through again.
    tokio::time::sleep_until(typed + Duration::from_millis(1100)).await;
    b.send(json!({"type": "typing", "to": "a"})).await;
    a1.take_type("typing").await;
    a2.take_type("typing").await;
    b.settle(Duration::ZERO).await;
    b.assert_no("typing");
    b.assert_no("error");
    // Offline: not delivered, not stored.
    b.c.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a1.send(json!({"type": "typing", "to": "b"})).await;
    a1.alive().await;
    let mut b = Peer::connect_after(&node, Via::Quic, "b", "b1", Some(4)).await;
    b.settle(QUIET).await;
    b.assert_no("typing");
    assert!(b.inbox.is_empty(), "{:?}", b.inbox);
    // And live again: delivered.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a1.send(json!({"type": "typing", "to": "b"})).await;
    assert_eq!(
        b.take_type("typing").await,
        json!({"type": "typing", "from": "a"})
    );
    for p in [&a1, &a2] {
        p.assert_no("error");
    }
}

/// 7. A group message lands in every member's inbox, the sender's included.
#[tokio::test]
async fn group_fan_out() {
    common::init();
    let node = Node::start(ARGS);
    let members = ["u1", "u2", "u3", "u4", "u5"];
    put_group(&node, "g", &members).await;
    // An outsider, even a friend of every member, may not post.
    let pairs: Vec<(&str, &str)> = members.iter().map(|m| ("x", *m)).collect();
    node.befriend(&pairs).await;
    let mut peers = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let via = if i % 2 == 0 { Via::Ws } else { Via::Quic };
        peers.push(Peer::connect(&node, via, m, "d").await);
    }
    let mut x = Peer::connect(&node, Via::Ws, "x", "d").await;
    let s1 = peers[0]
        .send_and_reply(json!({"type": "send", "id": "g1", "group": "g", "text": "hello all"}))
        .await;
    let s2 = peers[2]
        .send_and_reply(json!({"type": "send", "id": "g2", "group": "g", "text": "hi u1"}))
        .await;
    for (m, p) in members.iter().zip(peers.iter_mut()) {
        p.wait_inbox(2, SOON).await;
        p.settle(Duration::from_millis(50)).await;
        assert_eq!(p.seqs(), vec![1, 2], "{m}");
        for (e, (from, text, s)) in p
            .inbox
            .iter()
            .zip([("u1", "hello all", &s1), ("u3", "hi u1", &s2)])
        {
            assert_eq!(e["kind"], "message", "{m}: {e}");
            assert_eq!(e["group"], "g", "{m}: {e}");
            assert!(e.get("to").is_none(), "{m}: {e}");
            assert_eq!(
                (&e["from"], &e["text"]),
                (&json!(from), &json!(text)),
                "{m}: {e}"
            );
            assert_eq!(msg_id(e), msg_id(s), "{m}: {e}");
        }
    }
    x.refused(
        json!({"type": "send", "id": "x1", "group": "g", "text": "let me in"}),
        "forbidden",
    )
    .await;
    x.alive().await;
    // Typing in the group: every other member, with the group.
    peers[1].send(json!({"type": "typing", "group": "g"})).await;
    for (i, p) in peers.iter_mut().enumerate() {
        if i == 1 {
            continue;
        }
        let t = p.take_type("typing").await;
        assert_eq!(t, json!({"type": "typing", "from": "u2", "group": "g"}));
    }
    peers[1].settle(QUIET).await;
    peers[1].assert_no("typing");
    for p in &mut peers {
        p.settle(Duration::ZERO).await;
        assert_eq!(p.inbox.len(), 2, "nothing from the outsider");
        p.assert_no("error");
    }
}

/// 7b. `--max-group` is the admin API's largest group as well as the relay's.
#[tokio::test]
async fn max_group_bounds_admin_groups_and_sends_alike() {
    common::init();
    let node = Node::start(&[ARGS, &["--max-group", "3"]].concat());
    put_group(&node, "three", &["u1", "u2", "u3"]).await;
    let (s, v) = node
        .admin(
            "PUT",
            "/v1/groups/four",
            Some(json!({"members": ["u1", "u2", "u3", "u4"]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("at most 3")),
        "{v}"
    );
    let (s, v) = node.admin("GET", "/v1/groups/four", None).await;
    assert_eq!(s, 404, "a refused group is not stored: {v}");
    // The relay agrees: the largest group the admin API takes can be written to.
    let mut u1 = Peer::connect(&node, Via::Ws, "u1", "d").await;
    let mut u3 = Peer::connect(&node, Via::Quic, "u3", "d").await;
    let sent = u1
        .send_and_reply(json!({"type": "send", "id": "m1", "group": "three", "text": "hi"}))
        .await;
    u3.wait_inbox(1, SOON).await;
    assert_eq!(
        (&u3.inbox[0]["group"], &u3.inbox[0]["text"]),
        (&json!("three"), &json!("hi")),
        "{:?}",
        u3.inbox
    );
    assert_eq!(msg_id(&u3.inbox[0]), msg_id(&sent));
    u1.assert_no("error");
}

impl Peer {
    async fn send_and_reply(&mut self, send: Value) -> Value {
        let id = send["id"].as_str().expect("id").to_owned();
        self.send(send).await;
        let r = self.reply(&id).await;
        assert_eq!(r["type"], "sent", "{r}");
        r
    }
}

fn verify_signature(secret: &str, hook: &Hook) {
    let sig = hook.signature.as_deref().expect("X-Presence-Signature");
    let hexsig = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let tag = hex::decode(hexsig).expect("hex");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, &hook.body, &tag).unwrap_or_else(|_| {
        panic!(
            "bad signature {sig} for {}",
            String::from_utf8_lossy(&hook.body)
        )
    });
}

/// 8. `message.undelivered` to a real HTTP receiver: signed, retried while it fails, none
///    for a recipient who is online.
#[tokio::test]
async fn webhook_for_offline_recipient_signed_and_retried() {
    common::init();
    const SECRET: &str = "webhook-test-secret-0123456789";
    let (addr, mut hooks) = webhook_receiver(2).await;
    let url = format!("http://{addr}/hook");
    let node = Node::start(&[ARGS, &["--secret", SECRET, "--webhook-url", &url]].concat());
    node.befriend(&[("a", "b"), ("a", "c")]).await;
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(4), hooks.recv())
            .await
            .expect("a webhook POST within 4 s")
            .expect("receiver running")
    };
    // b has never connected.
    let m = msg_id(&a.send_to("w1", "b", "are you there?").await);
    let first = next().await;
    let second = next().await;
    let third = next().await;
    let answered: Vec<u16> = [&first, &second, &third]
        .iter()
        .map(|h| h.answered)
        .collect();
    assert_eq!(answered, vec![500, 500, 200]);
    for h in [&first, &second, &third] {
        verify_signature(SECRET, h);
        let body: Value = serde_json::from_slice(&h.body).expect("json body");
        assert_eq!(
            body,
            json!({"event": "message.undelivered", "user": "b", "msg_id": m, "from": "a"})
        );
    }
    assert_eq!(first.body, third.body, "the same event is retried");
    let gap = second.at - first.at;
    assert!(
        gap < Duration::from_millis(1500),
        "first retry after {gap:?}"
    );
    // Delivered: no more attempts.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), hooks.recv())
            .await
            .is_err(),
        "no POST after a 200"
    );
    // c is online: no webhook.
    let mut c = Peer::connect(&node, Via::Quic, "c", "c1").await;
    a.send_to("w2", "c", "hi c").await;
    c.wait_inbox(1, SOON).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), hooks.recv())
            .await
            .is_err(),
        "no webhook for an online recipient"
    );
    // b offline again: another event, answered 200 at once.
    let m3 = msg_id(&a.send_to("w3", "b", "still?").await);
    let h = tokio::time::timeout(SOON, hooks.recv())
        .await
        .expect("webhook")
        .expect("receiver");
    verify_signature(SECRET, &h);
    let body: Value = serde_json::from_slice(&h.body).expect("json body");
    assert_eq!(body["msg_id"], m3);
    assert_eq!(h.answered, 200);
}

/// 9. History, newest first, paged backwards with `before`.
#[tokio::test]
async fn history_pages_backwards() {
    common::init();
    let node = Node::start(ARGS);
    node.befriend(&[("a", "b"), ("a", "c")]).await;
    put_group(&node, "g", &["a", "b"]).await;
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    let mut b = Peer::connect(&node, Via::Quic, "b", "b1").await;
    let mut sent = Vec::new(); // (msg_id, from, text)
    for i in 0..25 {
        let text = format!("h {i}");
        let r = if i % 3 == 2 {
            b.send_to(&format!("h{i}"), "a", &text).await
        } else {
            a.send_to(&format!("h{i}"), "b", &text).await
        };
        sent.push((msg_id(&r), if i % 3 == 2 { "b" } else { "a" }, text));
    }
    // Unrelated conversations do not show.
    a.send_to("hc", "c", "to c").await;
    a.send_and_reply(json!({"type": "send", "id": "hg", "group": "g", "text": "group"}))
        .await;
    // An edit and a delete show in history.
    a.send(json!({"type": "edit", "msg_id": sent[3].0, "text": "h 3 edited"}))
        .await;
    a.send(json!({"type": "delete", "msg_id": sent[4].0})).await;
    a.alive().await;
    b.wait_inbox(25 + 1 + 2, SOON).await;

    let mut pages = Vec::new();
    let mut got: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut q = json!({"type": "history", "with": "b", "limit": 10});
        if let Some(bf) = &before {
            q["before"] = json!(bf);
        }
        a.send(q).await;
        let h = a.take_type("history").await;
        assert_eq!(h["with"], "b", "{h}");
        let msgs = h["messages"].as_array().expect("messages").clone();
        let more = h["more"].as_bool().expect("more");
        before = msgs.last().map(msg_id);
        pages.push(msgs.len());
        got.extend(msgs);
        if !more {
            break;
        }
        assert!(pages.len() < 10, "history does not end");
    }
    assert_eq!(pages, vec![10, 10, 5]);
    let want: Vec<&(String, &str, String)> = sent.iter().rev().collect();
    assert_eq!(got.len(), want.len());
    for (m, (id, from, text)) in got.iter().zip(want) {
        assert_eq!(&msg_id(m), id, "{m}");
        assert_eq!(m["from"], *from, "{m}");
        assert_eq!(m["to"], if *from == "a" { "b" } else { "a" }, "{m}");
        assert!(m["ts"].is_u64(), "{m}");
        if *id == sent[3].0 {
            assert_eq!(m["text"], "h 3 edited", "{m}");
            assert!(m["edited_ts"].is_u64(), "{m}");
        } else if *id == sent[4].0 {
            assert_eq!(m["deleted"], true, "{m}");
            assert!(
                m.get("text").is_none_or(|t| t == "" || t.is_null()),
                "a deleted message's text is gone: {m}"
            );
        } else {
            assert_eq!(m["text"], json!(text), "{m}");
            assert!(m.get("edited_ts").is_none_or(Value::is_null), "{m}");
            assert!(m.get("deleted").is_none_or(|d| d == false), "{m}");
        }
    }
    // The other side sees the same conversation; the default page holds all of it.
    b.send(json!({"type": "history", "with": "a"})).await;
    let h = b.take_type("history").await;
    assert_eq!(h["with"], "a");
    assert_eq!(h["more"], false);
    let ids: Vec<String> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(msg_id)
        .collect();
    let want: Vec<String> = sent.iter().rev().map(|s| s.0.clone()).collect();
    assert_eq!(ids, want);
    // Exactly one page before the 5 oldest.
    b.send(json!({"type": "history", "with": "a", "before": sent[5].0, "limit": 5}))
        .await;
    let h = b.take_type("history").await;
    let ids: Vec<String> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(msg_id)
        .collect();
    assert_eq!(ids, want[20..].to_vec());
    // Group history.
    b.send(json!({"type": "history", "group": "g"})).await;
    let h = b.take_type("history").await;
    assert_eq!(h["group"], "g", "{h}");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h["messages"][0]["group"], "g", "{h}");
    assert_eq!(h["messages"][0]["text"], "group", "{h}");
    // Refusals.
    b.send(json!({"type": "history", "with": "c"})).await;
    b.error("forbidden").await;
    b.send(json!({"type": "history", "group": "nope"})).await;
    b.error("not_found").await;
    b.alive().await;
}

// ---- regressions for node issues these tests found (both fixed) ----

/// An `ack` the node has processed (a `pong` sent after it came back) is in the device's next
/// `welcome` even while the committer is busy (the welcome used to read the store only, and
/// the ack still waited in the pending batch).
#[tokio::test]
async fn ack_is_in_the_next_welcome_under_load() {
    common::init();
    let node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let names = node.friends_of("t", 10).await;
    let mut senders = Vec::new();
    for s in &names {
        senders.push(Peer::connect(&node, Via::Ws, s, "d").await);
    }
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    for i in 0..40 {
        a.send_to(&format!("q{i}"), "b", "x").await;
    }
    let token = node.token("b").await;
    // Load for the committer: ten users sending 4 KB messages.
    let body = "z".repeat(3990);
    let to_t = json!({"to": "t"});
    let load = futures_util::future::join_all(
        senders
            .iter_mut()
            .map(|p| paced_sends(p, "c", &to_t, 60, |i| format!("{i} {body}"))),
    );
    let probe = async {
        let mut stale = Vec::new();
        for k in 1..=40u64 {
            let (mut c, _) = hello(&node, Via::Ws, &token, "b1", None).await;
            c.send(json!({"type": "ack", "seq": k})).await;
            c.send(json!({"type": "heartbeat"})).await;
            let mut next = Client::open(&node, Via::Ws).await;
            // The ack was handled before this pong.
            c.expect("pong", SOON).await;
            next.send(json!({"type": "hello", "token": token, "device": "b1"}))
                .await;
            let w = next.recv().await.expect("welcome");
            if w["acked_seq"] != k {
                stale.push((k, w["acked_seq"].clone()));
            }
            c.close().await;
            next.close().await;
        }
        stale
    };
    let (_, stale) = tokio::join!(load, probe);
    assert!(
        stale.is_empty(),
        "(ack, acked_seq in the next welcome): {stale:?}"
    );
}

/// Every `send` refused for rate is answered `rate_limited` with its `id`, so a client knows
/// which sends to retry (the node used to answer only the first refused frame, without `id`).
#[tokio::test]
async fn every_send_is_answered_even_when_rate_limited() {
    common::init();
    let node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    const N: usize = 80;
    for i in 0..N {
        a.send(json!({"type": "send", "id": format!("r{i}"), "to": "b", "text": "hi"}))
            .await;
    }
    a.settle(Duration::from_secs(1)).await;
    let mut unanswered = Vec::new();
    for i in 0..N {
        let id = format!("r{i}");
        if !a.other.iter().any(|v| v["id"] == id.as_str()) {
            unanswered.push(id);
        }
    }
    let anonymous: Vec<&Value> = a
        .other
        .iter()
        .filter(|v| v["type"] == "error" && v.get("id").is_none())
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} of {N} sends never answered: {unanswered:?}; errors without id: {anonymous:?}",
        unanswered.len()
    );
}

/// A device that acks every entry of a busy inbox, one frame each, is never refused for it:
/// an `ack` that moves forward within what the node pushed to the session is exempt from the
/// per-session limit (20 a second, bursts of 60). Such acks used to count, so the most
/// diligent client of a busy group got `rate_limited`, lost those acks and, after 50 in a
/// row, its connection. Acks that move nothing still count.
#[tokio::test]
async fn acks_of_a_busy_inbox_are_not_rate_limited() {
    common::init();
    const SENDERS: usize = 5;
    const EACH: usize = 40;
    const N: usize = SENDERS * EACH;
    let node = Node::start(ARGS);
    let names = node.friends_of("b", SENDERS).await;
    let mut b = Peer::connect(&node, Via::Ws, "b", "b1").await;
    let mut senders = Vec::new();
    for s in &names {
        senders.push(Peer::connect(&node, Via::Ws, s, "d").await);
    }
    // Each sender stays within its own burst; b gets 200 entries within a second or so.
    for p in &mut senders {
        for i in 0..EACH {
            p.send(json!({"type": "send", "id": format!("m{i}"), "to": "b", "text": "x"}))
                .await;
        }
    }
    let mut acked = 0;
    while acked < N {
        b.wait_inbox(acked + 1, SOON).await;
        let seqs: Vec<u64> = b.inbox[acked..].iter().map(seq_of).collect();
        for seq in seqs {
            b.send(json!({"type": "ack", "seq": seq})).await;
        }
        acked = b.inbox.len();
    }
    b.alive().await;
    b.assert_no("error");
    assert_eq!(b.seqs(), (1..=N as u64).collect::<Vec<_>>());
    let again = Peer::connect(&node, Via::Quic, "b", "b1").await;
    assert_eq!(again.welcome["acked_seq"], N as u64, "{}", again.welcome);
    // Acks that move nothing are ordinary messages: a flood of them is refused.
    for _ in 0..100 {
        b.send(json!({"type": "ack", "seq": N})).await;
    }
    let e = b.error("rate_limited").await;
    assert_eq!(e["message"], "slow down", "{e}");
}

/// Device acks need no fsync of their own: alone (no sends to share a commit with) they are
/// written within a short delay, and a graceful stop writes what is pending. Both survive.
#[tokio::test]
async fn lone_acks_are_written_soon_and_on_stop() {
    common::init();
    let mut node = Node::start(ARGS);
    node.befriend(&[("a", "b")]).await;
    let mut a = Peer::connect(&node, Via::Ws, "a", "a1").await;
    for i in 0..3 {
        a.send_to(&format!("w{i}"), "b", "x").await;
    }
    let mut b = Peer::connect_after(&node, Via::Ws, "b", "b1", Some(0)).await;
    b.wait_inbox(3, SOON).await;
    // No sends follow: the ack is written by the committer's delay (250 ms), well inside 2 s.
    b.send(json!({"type": "ack", "seq": 1})).await;
    b.send(json!({"type": "ack", "seq": 2})).await;
    b.alive().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Both acks counted; written as one row, or two if the committer's delay happened to
    // end between them (coalescing itself is covered by the relay's `acks` test).
    let (s, text) = common::http_text(node.ready.admin, "GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    let counter = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(counter("chat_acks_total"), Some(2.0), "{text}");
    let rows = counter("chat_ack_rows_total").expect("chat_ack_rows_total");
    assert!((1.0..=2.0).contains(&rows), "{text}");
    node.kill9();
    drop((a, b));
    let mut node = node.restart();
    let mut b = Peer::connect(&node, Via::Ws, "b", "b1").await;
    assert_eq!(b.welcome["acked_seq"], 2, "{}", b.welcome);
    // An ack right before SIGTERM is written by the stop.
    b.send(json!({"type": "ack", "seq": 3})).await;
    b.alive().await;
    let status = node.stop();
    assert!(status.success(), "{status}");
    drop(b);
    let node = node.restart();
    let b = Peer::connect(&node, Via::Ws, "b", "b1").await;
    assert_eq!(b.welcome["acked_seq"], 3, "{}", b.welcome);
}
