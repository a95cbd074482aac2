//! The node's protocol rules on the service alone: no socket, no runtime, time injected.
//! Each test drives `Service` the way the connection task does — hello, client frames,
//! outbox wakeups, store reads run inline — and reads the frames it would write.

use std::time::Duration;

use bytes::Bytes;
use presence_node::config::{NodeConfig, ServeArgs};
use presence_node::service::admin::{AdminError, EdgesApplied};
use presence_node::service::{Effects, End, Received, RecvError, Service, Session};
use presence_node::store::GraphWrite;
use serde_json::{Value, json};

/// 2026-12-01T00:00:00Z, and the heartbeat timeout of these tests.
const T0: u64 = 1_796_083_200_000;
const HEARTBEAT: u64 = 2_000;

struct Harness {
    svc: Service,
    _dir: tempfile::TempDir,
}

/// What the driver did with a run of effects.
#[derive(Debug, Default)]
struct Out {
    frames: Vec<Value>,
    pinged: bool,
    end: Option<End>,
}

impl Out {
    fn types(&self) -> Vec<String> {
        self.frames
            .iter()
            .map(|f| f["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn only(&self) -> &Value {
        assert_eq!(self.frames.len(), 1, "{:?}", self.frames);
        &self.frames[0]
    }

    fn closed(&self) -> bool {
        self.end.is_some()
    }
}

fn frame(v: Value) -> Result<Option<Received>, RecvError> {
    Ok(Some(Received::Frame(Bytes::from(v.to_string()))))
}

fn raw(s: &str) -> Result<Option<Received>, RecvError> {
    Ok(Some(Received::Frame(Bytes::from(s.to_owned()))))
}

impl Harness {
    fn new(tweak: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = NodeConfig::resolve(&ServeArgs::default()).expect("defaults");
        cfg.data_dir = dir.path().to_owned();
        cfg.heartbeat_timeout = Duration::from_millis(HEARTBEAT);
        cfg.grace = Duration::from_millis(500);
        cfg.idle_thresholds = vec![Duration::from_secs(60)];
        tweak(&mut cfg);
        let svc = Service::open(cfg, b"secret".to_vec(), "key".into(), None, T0).expect("open");
        Harness { svc, _dir: dir }
    }

    fn token(&self, user: &str) -> String {
        self.svc
            .mint_token(user.into(), 3600, None, T0)
            .expect("token")
    }

    /// Executes effects as the driver does, store reads inline (at most 100 reads: a
    /// session that keeps asking is a bug).
    fn run(&self, s: &mut Session, mut fx: Effects, now: u64) -> Out {
        let mut out = Out::default();
        for _ in 0..100 {
            out.pinged |= fx.ping;
            out.frames.extend(
                fx.frames
                    .drain(..)
                    .map(|f| serde_json::from_slice(&f).expect("frames are JSON")),
            );
            if fx.end.is_some() {
                out.end = fx.end;
                return out;
            }
            let Some(read) = fx.read else {
                return out;
            };
            let result = self.svc.read(*read);
            fx = self.svc.on_read(s, result, now);
        }
        panic!("the session kept asking for store reads");
    }

    /// A refused hello's frames.
    fn refused(&self, first: Result<Option<Received>, RecvError>, now: u64) -> Out {
        match self.svc.hello(first, now) {
            Ok(_) => panic!("the hello was accepted"),
            Err(fx) => Out {
                frames: fx
                    .frames
                    .iter()
                    .map(|f| serde_json::from_slice(f).expect("json"))
                    .collect(),
                pinged: false,
                end: fx.end,
            },
        }
    }

    fn hello_with(&self, msg: Value, now: u64) -> (Session, Out) {
        let (mut s, fx) = match self.svc.hello(frame(msg), now) {
            Ok(x) => x,
            Err(fx) => panic!("hello refused: {fx:?}"),
        };
        let out = self.run(&mut s, fx, now);
        (s, out)
    }

    fn hello(&self, user: &str, device: &str, now: u64) -> (Session, Value) {
        let msg = json!({"type": "hello", "token": self.token(user), "device": device});
        let (s, out) = self.hello_with(msg, now);
        assert_eq!(out.types(), ["welcome"], "{:?}", out.frames);
        (s, out.frames[0].clone())
    }

    fn send(&self, s: &mut Session, msg: Value, now: u64) -> Out {
        let fx = self.svc.on_received(s, frame(msg), now);
        self.run(s, fx, now)
    }

    fn wake(&self, s: &mut Session, now: u64) -> Out {
        let fx = self.svc.on_outbox(s, now);
        self.run(s, fx, now)
    }

    /// An admin write as the driver runs it: plan, write to the graph store, apply.
    fn write(&self, planned: Result<GraphWrite, AdminError>) -> EdgesApplied {
        let w = planned.expect("a valid write");
        self.svc.graph_store().write(&w).expect("durable");
        self.svc.apply_graph_write(w)
    }

    fn befriend(&self, a: &str, b: &str, now: u64) {
        let applied = self.write(self.svc.plan_friendships(&[(a.into(), b.into())], &[]));
        let tick = self.svc.on_tick(now).tick;
        assert!(applied.published_by.is_some_and(|t| t <= tick));
    }

    /// Commits whatever chat is pending and delivers it (the commit and delivery threads'
    /// work, inline); returns the `message.undelivered` events.
    fn commit(&self) -> Vec<String> {
        let chat = self.svc.chat();
        chat.stop();
        let mut acks = std::time::Instant::now();
        let mut undelivered = Vec::new();
        while let Some(mut batch) = chat.next_batch(&mut acks) {
            let result = chat.commit(&mut batch, false, |_| None);
            let handed = chat.hand_over(&self.svc.dir(), chat.committed(batch, result));
            assert!(handed.remote.is_empty(), "a single node has no peers");
            undelivered.extend(handed.undelivered.into_iter().map(|e| e.user));
        }
        undelivered
    }
}

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["code"].as_str().unwrap_or("?")
}

#[test]
fn a_hello_is_checked_before_a_session_starts() {
    let h = Harness::new(|_| {});
    let out = h.refused(frame(json!({"type": "activity"})), T0);
    assert_eq!(code(out.only()), "protocol");
    assert!(out.closed());
    let out = h.refused(raw("{nope"), T0);
    assert_eq!(code(out.only()), "protocol");
    let out = h.refused(frame(json!({"type": "hello", "token": "x.y.z"})), T0);
    assert_eq!(code(out.only()), "unauthorized");
    assert!(out.closed());
    // Expired: the token's exp is an hour after T0.
    let t = h.token("alice");
    let out = h.refused(frame(json!({"type": "hello", "token": t})), T0 + 3_601_000);
    assert_eq!(code(out.only()), "unauthorized");
    let long = "d".repeat(129);
    let out = h.refused(
        frame(json!({"type": "hello", "token": t, "device": long})),
        T0,
    );
    assert_eq!(code(out.only()), "protocol");
    let out = h.refused(Ok(Some(Received::Alive)), T0);
    assert_eq!(code(out.only()), "protocol");
    let out = h.refused(Err(RecvError::TooLarge), T0);
    assert_eq!(code(out.only()), "protocol");
    // A connection that ends before its hello gets nothing written.
    let out = h.refused(Ok(None), T0);
    assert!(out.frames.is_empty() && out.end.is_some_and(|e| e.close.is_none()));
    assert_eq!(h.svc.session_count(), 0, "nothing was registered");
}

#[test]
fn too_many_devices_are_refused() {
    let h = Harness::new(|c| c.max_sessions_per_user = 2);
    let (_a, _) = h.hello("alice", "a", T0);
    let (_b, _) = h.hello("alice", "b", T0);
    let t = h.token("alice");
    let out = h.refused(
        frame(json!({"type": "hello", "token": t, "device": "c"})),
        T0,
    );
    assert_eq!(code(out.only()), "forbidden");
    assert!(out.closed());
}

#[test]
fn the_welcome_has_every_friend_and_the_inbox_head() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "bob", T0);
    let (_bob, _) = h.hello("bob", "phone", T0);
    h.svc.on_tick(T0 + 10);
    let (_alice, w) = h.hello("alice", "web", T0 + 20);
    assert_eq!(w["user"], "alice");
    assert_eq!(w["device"], "web");
    assert_eq!(w["heartbeat_ms"], HEARTBEAT);
    assert_eq!(w["inbox_seq"], 0);
    assert_eq!(w["acked_seq"], 0);
    assert_eq!(
        w["friends"],
        json!([{"user": "bob", "state": "online", "status": "available", "last_active": T0}])
    );
}

#[test]
fn messages_after_the_hello_are_answered_and_bad_ones_refused() {
    let h = Harness::new(|_| {});
    let (mut s, _) = h.hello("alice", "d", T0);
    let out = h.send(&mut s, json!({"type": "heartbeat"}), T0 + 1);
    assert_eq!(out.types(), ["pong"]);
    let out = h.send(&mut s, json!({"type": "activity"}), T0 + 2);
    assert!(out.frames.is_empty() && !out.closed());
    let out = h.send(&mut s, json!({"type": "hello", "token": "t"}), T0 + 3);
    assert_eq!(code(out.only()), "bad_request");
    assert!(!out.closed(), "a second hello does not close");
    let out = h.send(&mut s, json!({"type": "dance"}), T0 + 4);
    assert_eq!(code(out.only()), "bad_request");
    let out = h.send(
        &mut s,
        json!({"type": "status", "status": "asleep"}),
        T0 + 5,
    );
    assert_eq!(code(out.only()), "bad_request");
    let out = h.send(&mut s, json!({"type": "read", "msg_id": "zz"}), T0 + 6);
    assert_eq!(code(out.only()), "bad_request");
    let out = h.send(
        &mut s,
        json!({"type": "send", "id": "c1", "to": "b", "group": "g", "text": "x"}),
        T0 + 7,
    );
    assert_eq!(code(out.only()), "bad_request");
    assert_eq!(out.only()["id"], "c1", "a refused send names its id");
    assert!(!out.closed());
    // v1.1's big-group messages are served: a group that does not exist, or one not watched.
    let out = h.send(&mut s, json!({"type": "watch_group", "group": "g"}), T0 + 7);
    assert_eq!(code(out.only()), "not_found");
    let out = h.send(
        &mut s,
        json!({"type": "unwatch_group", "group": "g"}),
        T0 + 7,
    );
    assert_eq!(code(out.only()), "not_found");
    let out = h.send(&mut s, json!({"type": "focus", "users": null}), T0 + 7);
    assert!(out.frames.is_empty() && !out.closed());
    // Malformed JSON after the hello closes the connection.
    let fx = h.svc.on_received(&mut s, raw("{nope"), T0 + 8);
    let out = h.run(&mut s, fx, T0 + 8);
    assert_eq!(code(out.only()), "protocol");
    assert!(out.closed());
}

#[test]
fn transport_failures_end_the_session() {
    let h = Harness::new(|_| {});
    let (mut s, _) = h.hello("alice", "d", T0);
    for (r, frames) in [
        (Err(RecvError::TooLarge), 1),
        (Err(RecvError::Framing("binary".into())), 1),
        (Err(RecvError::Io("reset".into())), 0),
        (Ok(None), 0),
    ] {
        let fx = h.svc.on_received(&mut s, r, T0 + 1);
        let out = h.run(&mut s, fx, T0 + 1);
        assert_eq!(out.frames.len(), frames, "{:?}", out.frames);
        assert!(out.closed());
    }
}

#[test]
fn the_rate_limit_refuses_bursts_and_closes_a_flood() {
    let h = Harness::new(|_| {});
    let (mut s, _) = h.hello("alice", "d", T0);
    let t = T0 + 1;
    for _ in 0..60 {
        let out = h.send(&mut s, json!({"type": "activity"}), t);
        assert!(out.frames.is_empty());
    }
    // The first refusal says "slow down", later ones in the run say nothing…
    let out = h.send(&mut s, json!({"type": "activity"}), t);
    assert_eq!(code(out.only()), "rate_limited");
    let out = h.send(&mut s, json!({"type": "activity"}), t);
    assert!(out.frames.is_empty());
    // …except a refused send, which is answered with its id.
    let out = h.send(
        &mut s,
        json!({"type": "send", "id": "m1", "to": "bob", "text": "x"}),
        t,
    );
    assert_eq!(code(out.only()), "rate_limited");
    assert_eq!(out.only()["id"], "m1");
    // 50 ms later one token is back (20 a second).
    let out = h.send(&mut s, json!({"type": "heartbeat"}), t + 50);
    assert_eq!(out.types(), ["pong"]);
    // 50 refusals in a row close the connection.
    let mut last = Out::default();
    for _ in 0..50 {
        last = h.send(&mut s, json!({"type": "activity"}), t + 50);
        if last.closed() {
            break;
        }
    }
    assert!(last.closed());
    assert_eq!(code(last.only()), "rate_limited");
}

#[test]
fn a_message_is_sent_once_durable_and_reaches_every_device_in_order() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "bob", T0);
    let (mut a, _) = h.hello("alice", "web", T0);
    let (mut b1, _) = h.hello("bob", "phone", T0);
    let (mut b2, _) = h.hello("bob", "tablet", T0);
    let out = h.send(
        &mut a,
        json!({"type": "send", "id": "c1", "to": "bob", "text": "lunch?"}),
        T0 + 5,
    );
    assert!(out.frames.is_empty(), "nothing before it is durable");
    assert!(h.wake(&mut b1, T0 + 6).frames.is_empty());
    h.commit();
    let out = h.wake(&mut a, T0 + 7);
    assert_eq!(out.types(), ["sent", "inbox"]);
    assert_eq!(out.frames[0]["id"], "c1");
    for b in [&mut b1, &mut b2] {
        let out = h.wake(b, T0 + 7);
        assert_eq!(out.types(), ["inbox"]);
        assert_eq!(out.frames[0]["seq"], 1);
        assert_eq!(out.frames[0]["text"], "lunch?");
    }
    // A retry of the durable send is answered at once with the same id.
    let out = h.send(
        &mut a,
        json!({"type": "send", "id": "c1", "to": "bob", "text": "lunch?"}),
        T0 + 8,
    );
    assert_eq!(out.types(), ["sent"]);
    // Not friends: refused with the id.
    let out = h.send(
        &mut a,
        json!({"type": "send", "id": "c2", "to": "carol", "text": "hi"}),
        T0 + 9,
    );
    assert_eq!(code(out.only()), "forbidden");
    assert_eq!(out.only()["id"], "c2");
}

#[test]
fn a_resume_reads_back_what_the_device_missed_then_goes_live() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "bob", T0);
    let (mut a, _) = h.hello("alice", "web", T0);
    for i in 0..3 {
        let out = h.send(
            &mut a,
            json!({"type": "send", "id": format!("c{i}"), "to": "bob", "text": format!("m{i}")}),
            T0 + 1,
        );
        assert!(out.frames.is_empty());
    }
    h.commit();
    let msg = json!({"type": "hello", "token": h.token("bob"), "device": "phone", "after": 1});
    let (mut b, out) = h.hello_with(msg, T0 + 2);
    assert_eq!(out.types(), ["welcome", "inbox", "inbox"]);
    assert_eq!(out.frames[0]["inbox_seq"], 3);
    assert_eq!(out.frames[1]["seq"], 2);
    assert_eq!(out.frames[2]["seq"], 3);
    // Live from here: the next entry comes through the outbox, once.
    h.send(
        &mut a,
        json!({"type": "send", "id": "c9", "to": "bob", "text": "later"}),
        T0 + 3,
    );
    h.commit();
    let out = h.wake(&mut b, T0 + 4);
    assert_eq!(out.types(), ["inbox"]);
    assert_eq!(out.frames[0]["seq"], 4);
    // `sync` reads a page and closes it with `synced`.
    let out = h.send(
        &mut b,
        json!({"type": "sync", "after": 2, "limit": 1}),
        T0 + 5,
    );
    assert_eq!(out.types(), ["inbox", "synced"]);
    assert_eq!(
        out.frames[1],
        json!({"type": "synced", "after": 2, "last": 3, "more": true})
    );
}

#[test]
fn acks_of_pushed_entries_are_free_and_show_in_the_next_welcome() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "bob", T0);
    let (mut a, _) = h.hello("alice", "web", T0);
    let (mut b, _) = h.hello("bob", "phone", T0);
    for i in 0..70 {
        h.send(
            &mut a,
            json!({"type": "send", "id": format!("c{i}"), "to": "bob", "text": "x"}),
            T0 + 1_000 + i * 100,
        );
    }
    h.commit();
    let out = h.wake(&mut b, T0 + 9_000);
    assert_eq!(out.frames.len(), 70);
    // 70 acks at one instant: more than the burst, none refused (each moves forward).
    for seq in 1..=70 {
        let out = h.send(&mut b, json!({"type": "ack", "seq": seq}), T0 + 9_001);
        assert!(out.frames.is_empty(), "ack {seq}: {:?}", out.frames);
    }
    // Not yet durable, and still in the next welcome.
    let (_b2, w) = h.hello("bob", "phone", T0 + 9_002);
    assert_eq!(w["acked_seq"], 70);
    assert_eq!(w["inbox_seq"], 70);
}

#[test]
fn a_silent_session_expires_and_any_sign_of_life_keeps_it() {
    let h = Harness::new(|_| {});
    let (mut quiet, _) = h.hello("alice", "a", T0);
    let (mut alive, _) = h.hello("bob", "b", T0);
    // bob's transport says it is alive (a pong) every second; alice says nothing.
    for k in 1..=4u64 {
        let fx = h
            .svc
            .on_received(&mut alive, Ok(Some(Received::Alive)), T0 + k * 1_000);
        assert!(h.run(&mut alive, fx, T0 + k * 1_000).frames.is_empty());
        h.svc.on_tick(T0 + k * 1_000 + 10);
    }
    let out = h.wake(&mut quiet, T0 + 4_100);
    assert_eq!(code(out.only()), "protocol");
    assert_eq!(out.only()["message"], "heartbeat timeout");
    assert!(out.closed());
    let out = h.wake(&mut alive, T0 + 4_100);
    assert!(!out.closed(), "{:?}", out.frames);
    // Any client frame counts too: a send refused for its target still keeps bob alive.
    for k in 5..=7u64 {
        h.send(
            &mut alive,
            json!({"type": "typing", "to": "nobody"}),
            T0 + k * 1_000,
        );
        h.svc.on_tick(T0 + k * 1_000 + 10);
    }
    assert!(!h.wake(&mut alive, T0 + 7_100).closed());
}

#[test]
fn pings_and_shutdown_reach_sessions_through_their_outbox() {
    let h = Harness::new(|_| {});
    let (mut s, _) = h.hello("alice", "a", T0);
    h.svc.ping_stripes(0, 64);
    let out = h.wake(&mut s, T0 + 1);
    assert!(out.pinged && out.frames.is_empty());
    h.svc.close_all();
    let out = h.wake(&mut s, T0 + 2);
    assert!(out.frames.is_empty());
    assert_eq!(
        out.end.and_then(|e| e.close).as_deref(),
        Some("node shutting down")
    );
}

#[test]
fn an_edge_change_is_in_every_welcome_after_its_tick_and_once_in_a_live_diff() {
    let h = Harness::new(|_| {});
    let (mut live, w) = h.hello("alice", "old", T0);
    assert_eq!(w["friends"], json!([]));
    let planned = h.svc.plan_put_friends("alice", &["bob".into()]);
    // A plan changes nothing until it is durable and applied.
    h.svc.on_tick(T0 + 100);
    let (_before, w) = h.hello("alice", "early", T0 + 101);
    assert_eq!(w["friends"], json!([]));
    let applied = h.write(planned);
    let by = applied.published_by.expect("a change");
    let tick = h.svc.on_tick(T0 + 200).tick;
    assert!(tick >= by);
    let (_new, w) = h.hello("alice", "new", T0 + 201);
    assert_eq!(w["friends"], json!([{"user": "bob", "state": "offline"}]));
    let out = h.wake(&mut live, T0 + 202);
    assert_eq!(out.types(), ["presence"]);
    assert_eq!(
        out.frames[0]["changes"],
        json!([{"user": "bob", "state": "offline"}])
    );
    h.svc.on_tick(T0 + 400);
    assert!(
        h.wake(&mut live, T0 + 401).frames.is_empty(),
        "exactly once"
    );
    // An unchanged list changes nothing and needs no tick.
    let again = h.write(h.svc.plan_put_friends("alice", &["bob".into()]));
    assert_eq!(again.published_by, None);
}

#[test]
fn typing_reaches_the_online_recipient_only_as_an_ephemeral_frame() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "bob", T0);
    let (mut a, _) = h.hello("alice", "web", T0);
    let (mut b, _) = h.hello("bob", "phone", T0);
    let out = h.send(&mut a, json!({"type": "typing", "to": "bob"}), T0 + 1);
    assert!(out.frames.is_empty());
    let out = h.wake(&mut b, T0 + 2);
    assert_eq!(out.frames, vec![json!({"type": "typing", "from": "alice"})]);
}

#[test]
fn a_gap_the_store_cannot_fill_does_not_stall_the_cursor() {
    use presence_node::service::outbox::ChatItem;
    let h = Harness::new(|_| {});
    let (mut b, w) = h.hello("bob", "p", T0);
    assert_eq!(w["inbox_seq"], 0);
    // A live entry whose predecessors the store does not have (trimmed by retention): the
    // cursor reads the gap once, finds nothing, steps past it and writes the entry.
    let frame = Bytes::from_static(br#"{"type":"inbox","seq":5}"#);
    b.handle()
        .outbox
        .push_chat(ChatItem::Inbox { seq: 5, frame });
    let out = h.wake(&mut b, T0 + 1);
    assert_eq!(out.frames, vec![json!({"type": "inbox", "seq": 5})]);
}

#[test]
fn a_message_for_a_user_with_no_live_session_raises_one_undelivered_event() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "bob", T0);
    h.befriend("alice", "carol", T0);
    let (mut a, _) = h.hello("alice", "web", T0);
    let (_c, _) = h.hello("carol", "phone", T0);
    for (id, to) in [("c1", "bob"), ("c2", "carol")] {
        h.send(
            &mut a,
            json!({"type": "send", "id": id, "to": to, "text": "hi"}),
            T0 + 1,
        );
    }
    // bob has no session: one event for him; carol is online, alice is the sender.
    assert_eq!(h.commit(), ["bob"]);
}

#[test]
fn bad_admin_writes_are_refused_before_anything_is_written() {
    let h = Harness::new(|c| {
        c.max_group = 3;
        c.max_friends = 1;
    });
    let refused = |r: Result<GraphWrite, AdminError>| match r {
        Err(AdminError::Bad(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let m = refused(h.svc.plan_friendships(&[("a".into(), "a".into())], &[]));
    assert!(m.contains("own friend"), "{m}");
    let m = refused(h.svc.plan_put_friends("a", &["b".into(), "c".into()]));
    assert!(m.contains("over the cap of 1"), "{m}");
    let m = refused(
        h.svc
            .plan_put_group("g", vec!["a".into(), "b".into(), "c".into(), "d".into()]),
    );
    assert!(m.contains("--max-group"), "{m}");
    let m = refused(h.svc.plan_put_group("g", vec!["a".into(), "a".into()]));
    assert!(m.contains("twice"), "{m}");
    let m = refused(h.svc.plan_put_friends("", &[]));
    assert!(m.contains("user id"), "{m}");
    assert!(h.svc.friends_of("a").is_empty());
    assert!(h.svc.group("g").is_err());
    // A good group write, through the store, then its removal.
    h.write(h.svc.plan_put_group("g", vec!["b".into(), "a".into()]));
    assert_eq!(&*h.svc.group("g").expect("group"), ["a", "b"]);
    h.write(h.svc.plan_delete_group("g"));
    assert!(h.svc.group("g").is_err());
}

/// Cluster mode: a hello is served only for a user whose slot this node serves; a user owned
/// elsewhere is told `moved` with the owner's addresses, one whose slot nobody serves yet
/// `unavailable`; both close.
#[test]
fn a_cluster_node_serves_its_slots_and_routes_the_rest() {
    use presence_cluster::{Member, Owner, SlotMap, SlotTable, slot_of};
    use presence_node::service::cluster::Routes;
    let h = Harness::new(|_| {});
    // Three users in three different slots: alice's is ours, bob's is b's, carol's nobody's.
    let (alice, bob, carol) = ("alice", "bob", "carol");
    let slots = [alice, bob, carol].map(|u| slot_of(u.as_bytes()));
    assert!(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);
    let member = |id: &str| Member {
        id: id.into(),
        ws: format!("{id}-ws:1"),
        quic: format!("{id}-quic:2"),
        lp: format!("http://{id}-lp:3"),
        admin: String::new(),
        peer: String::new(),
        peer_cert: String::new(),
        draining: false,
    };
    let mut map = SlotMap::new();
    map.put_member(member("a"));
    map.put_member(member("b"));
    map.set_owner(
        slots[0],
        Some(Owner {
            node: "a".into(),
            epoch: 5,
        }),
    );
    map.set_owner(
        slots[1],
        Some(Owner {
            node: "b".into(),
            epoch: 6,
        }),
    );
    let map = std::sync::Arc::new(map);
    let mut table = SlotTable::new("a");
    let loads = table.on_view(&map, true);
    assert_eq!(loads.load, [(slots[0], 5)]);
    // Loading: not served yet.
    h.svc.set_routes(Routes::new("a", &table, map.clone()));
    let hello = |u: &str| frame(json!({"type": "hello", "token": h.token(u)}));
    let out = h.refused(hello(alice), T0);
    assert_eq!(code(out.only()), "unavailable");
    assert!(out.closed());
    // Loaded: served.
    let _ = table.loaded(slots[0], 5);
    h.svc.set_routes(Routes::new("a", &table, map.clone()));
    let (_s, w) = h.hello(alice, "d", T0);
    assert_eq!(w["user"], alice);
    let out = h.refused(hello(bob), T0);
    assert_eq!(code(out.only()), "moved");
    assert_eq!(
        (&out.only()["ws"], &out.only()["quic"], &out.only()["lp"]),
        (
            &json!("b-ws:1"),
            &json!("b-quic:2"),
            &json!("http://b-lp:3")
        )
    );
    assert!(out.closed());
    let out = h.refused(hello(carol), T0);
    assert_eq!(code(out.only()), "unavailable");
    assert_eq!(h.svc.session_count(), 1, "only alice's session");

    // alice's slot goes to b: her live session is told `moved` and ends.
    let mut s = _s;
    let mut moved = (*map).clone();
    moved.set_owner(
        slots[0],
        Some(Owner {
            node: "b".into(),
            epoch: 9,
        }),
    );
    let moved = std::sync::Arc::new(moved);
    let evict = table.on_view(&moved, true);
    assert_eq!(evict.evict, [slots[0]]);
    assert_eq!(h.svc.set_routes(Routes::new("a", &table, moved.clone())), 1);
    let out = h.wake(&mut s, T0 + 1);
    assert_eq!(code(out.only()), "moved");
    assert_eq!(out.only()["ws"], "b-ws:1");
    assert!(out.closed());
    h.svc.close(s, presence_core::Disconnect::Dropped, T0 + 1);
    // Told to move but given back before it woke: it stays.
    let (mut s2, _) = {
        let _ = table.drained(slots[0]);
        let _ = table.on_view(&map, true);
        let _ = table.loaded(slots[0], 5);
        h.svc.set_routes(Routes::new("a", &table, map.clone()));
        h.hello(alice, "d2", T0 + 2)
    };
    let _ = table.on_view(&moved, true);
    assert_eq!(h.svc.set_routes(Routes::new("a", &table, moved)), 1);
    let _ = table.drained(slots[0]);
    let _ = table.on_view(&map, true);
    let _ = table.loaded(slots[0], 5);
    h.svc.set_routes(Routes::new("a", &table, map));
    let out = h.wake(&mut s2, T0 + 3);
    assert!(out.frames.is_empty() && !out.closed(), "{:?}", out.frames);
}

// ---- v1.1: focus, watched groups, group counts ------------------------------------------------

/// The entries of the presence frames in `out`, as (user, state or "removed").
fn presence_of(out: &Out) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out
        .frames
        .iter()
        .filter(|f| f["type"] == "presence")
        .flat_map(|f| f["changes"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let state = if e["removed"] == true {
                "removed".to_owned()
            } else {
                e["state"].as_str().unwrap_or("?").to_owned()
            };
            (e["user"].as_str().unwrap_or("?").to_owned(), state)
        })
        .collect();
    v.sort();
    v
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The `group_counts` frames in `out`.
fn counts_of(out: &Out) -> Vec<Value> {
    out.frames
        .iter()
        .filter(|f| f["type"] == "group_counts")
        .cloned()
        .collect()
}

/// Pacing (`--tick-phases 4`, engine ticks 50 ms apart here): a lone change leaves at the
/// next engine tick, later ones wait for the session's next slot a period after its last
/// frame, merged, and a chat frame meanwhile does not take them early.
#[test]
fn paced_sessions_get_a_lone_change_at_once_and_one_frame_a_period() {
    let h = Harness::new(|c| c.tick_phases = 4);
    h.befriend("alice", "bob", T0);
    h.befriend("alice", "carol", T0);
    let (mut alice, _) = h.hello("alice", "web", T0 + 10);
    h.svc.on_tick(T0 + 50);
    assert!(presence_of(&h.wake(&mut alice, T0 + 50)).is_empty());
    // Quiet for a period: bob's connect leaves at the next engine tick.
    let (mut bob, _) = h.hello("bob", "b", T0 + 60);
    let first = h.svc.on_tick(T0 + 100).tick;
    let out = h.wake(&mut alice, T0 + 100);
    assert_eq!(presence_of(&out), pairs(&[("bob", "online")]));
    // Within the period after that frame: held, through a chat wakeup too.
    let (mut carol, _) = h.hello("carol", "c", T0 + 110);
    h.svc.on_tick(T0 + 150);
    assert!(presence_of(&h.wake(&mut alice, T0 + 150)).is_empty());
    h.send(
        &mut bob,
        json!({"type": "status", "status": "busy"}),
        T0 + 160,
    );
    h.send(
        &mut carol,
        json!({"type": "send", "id": "c1", "to": "alice", "text": "hi"}),
        T0 + 170,
    );
    assert!(h.commit().is_empty());
    let tick = h.svc.on_tick(T0 + 200).tick;
    let out = h.wake(&mut alice, T0 + 200);
    assert_eq!(
        out.types(),
        ["inbox"],
        "the chat frame only: {:?}",
        out.frames
    );
    h.svc.on_tick(T0 + 250);
    assert!(h.wake(&mut alice, T0 + 250).frames.is_empty());
    // The slot: `first` + 4 engine ticks. Both changes in one frame, latest state each.
    let slot = h.svc.on_tick(T0 + 300).tick;
    assert_eq!(slot, first + 4);
    assert!(slot > tick);
    let out = h.wake(&mut alice, T0 + 300);
    let frames: Vec<&Value> = out
        .frames
        .iter()
        .filter(|f| f["type"] == "presence")
        .collect();
    assert_eq!(frames.len(), 1, "{:?}", out.frames);
    assert_eq!(frames[0]["tick"], tick, "the tick of its newest entries");
    assert_eq!(
        presence_of(&out),
        pairs(&[("bob", "online"), ("carol", "online")])
    );
    assert_eq!(frames[0]["changes"][0]["status"], "busy");
    // Quiet for a period again (the engine ticks on): the next change leaves at once.
    for k in 1..8 {
        h.svc.on_tick(T0 + 300 + k * 50);
    }
    h.svc
        .close(carol, presence_core::Disconnect::LoggedOut, T0 + 700);
    h.svc.on_tick(T0 + 750);
    let out = h.wake(&mut alice, T0 + 750);
    assert_eq!(presence_of(&out), pairs(&[("carol", "offline")]));
}

/// Runs the tick at `now`, a pacing period's first (4 phases), and returns the one group's
/// counts `s` gets then.
fn counts_at_period_start(h: &Harness, s: &mut Session, now: u64) -> Value {
    let tick = h.svc.on_tick(now).tick;
    assert!(tick.is_multiple_of(4), "tick {tick} starts no period");
    let c = counts_of(&h.wake(s, now));
    assert_eq!(c.len(), 1, "{c:?}");
    c[0]["groups"][0].clone()
}

/// With pacing, watched groups' counts go out on the period's first engine tick, with what
/// moved since; moves that cancel out within the period send nothing.
#[test]
fn paced_group_counts_go_out_once_a_period() {
    let h = Harness::new(|c| {
        c.heartbeat_timeout = Duration::from_secs(300);
        c.tick_phases = 4;
    });
    let members: Vec<String> = ["alice", "m1", "m2"].map(String::from).to_vec();
    h.write(h.svc.plan_put_group("g", members));
    let (mut alice, _) = h.hello("alice", "phone", T0);
    let mut now = T0;
    let mut tick = h.svc.on_tick(now).tick;
    h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "g"}),
        now,
    );
    assert_eq!(
        counts_of(&h.wake(&mut alice, now)).len(),
        1,
        "the counts at once"
    );
    // Run to the tick before a period's first.
    while !(tick + 1).is_multiple_of(4) {
        now += 50;
        tick = h.svc.on_tick(now).tick;
    }
    // m1 and m2 connect: one frame at the period's first tick; m2 goes invisible just after:
    // counted at the next period's first, not before.
    let (_m1, _) = h.hello("m1", "d", now + 10);
    let (mut m2, _) = h.hello("m2", "d", now + 10);
    now += 50;
    assert_eq!(counts_at_period_start(&h, &mut alice, now)["online"], 3);
    h.send(
        &mut m2,
        json!({"type": "status", "status": "invisible"}),
        now + 10,
    );
    for _ in 0..3 {
        now += 50;
        h.svc.on_tick(now);
        assert!(
            counts_of(&h.wake(&mut alice, now)).is_empty(),
            "counts only on the period's first tick"
        );
    }
    now += 50;
    assert_eq!(counts_at_period_start(&h, &mut alice, now)["online"], 2);
    // Back and invisible again within one period: no frame.
    for status in ["available", "invisible"] {
        h.send(
            &mut m2,
            json!({"type": "status", "status": status}),
            now + 10,
        );
        now += 50;
        h.svc.on_tick(now);
    }
    for _ in 0..2 {
        now += 50;
        h.svc.on_tick(now);
    }
    assert!(counts_of(&h.wake(&mut alice, now)).is_empty());
}

#[test]
fn focus_narrows_a_session_and_null_restores_it() {
    // Tick by tick (no pacing: every tick may send a frame); pacing has its own tests.
    let h = Harness::new(|c| c.tick_phases = 1);
    for f in ["bob", "carol", "dave"] {
        h.befriend("alice", f, T0);
    }
    let (mut phone, _) = h.hello("alice", "phone", T0);
    let (mut web, _) = h.hello("alice", "web", T0);
    let (mut bob, _) = h.hello("bob", "b", T0);
    let (mut carol, _) = h.hello("carol", "c", T0);
    h.svc.on_tick(T0 + 100);
    h.wake(&mut phone, T0 + 100);
    h.wake(&mut web, T0 + 100);

    // The phone focuses on bob and dave: their state at once.
    let out = h.send(
        &mut phone,
        json!({"type": "focus", "users": ["bob", "dave", "nobody-known"]}),
        T0 + 200,
    );
    assert!(out.frames.is_empty(), "{:?}", out.frames);
    let out = h.wake(&mut phone, T0 + 200);
    assert_eq!(
        presence_of(&out),
        pairs(&[("bob", "online"), ("dave", "offline")])
    );
    // Carol and bob change: the phone hears bob only, the web session both.
    h.send(
        &mut carol,
        json!({"type": "status", "status": "busy"}),
        T0 + 300,
    );
    h.send(
        &mut bob,
        json!({"type": "status", "status": "dnd"}),
        T0 + 300,
    );
    h.svc.on_tick(T0 + 400);
    let out = h.wake(&mut phone, T0 + 400);
    assert_eq!(presence_of(&out), pairs(&[("bob", "online")]));
    let out = h.wake(&mut web, T0 + 400);
    assert_eq!(
        presence_of(&out),
        pairs(&[("bob", "online"), ("carol", "online")])
    );
    // Both sessions focused: carol's next change reaches neither.
    h.send(
        &mut web,
        json!({"type": "focus", "users": ["dave"]}),
        T0 + 500,
    );
    let out = h.wake(&mut web, T0 + 500);
    assert_eq!(presence_of(&out), pairs(&[("dave", "offline")]));
    h.svc
        .close(carol, presence_core::Disconnect::LoggedOut, T0 + 600);
    h.svc.on_tick(T0 + 700);
    assert!(presence_of(&h.wake(&mut phone, T0 + 700)).is_empty());
    assert!(presence_of(&h.wake(&mut web, T0 + 700)).is_empty());
    // null: every friend the focus kept out, at once (carol is offline now).
    h.send(
        &mut phone,
        json!({"type": "focus", "users": null}),
        T0 + 800,
    );
    let out = h.wake(&mut phone, T0 + 800);
    assert_eq!(presence_of(&out), pairs(&[("carol", "offline")]));
    // A new device of a user whose sessions are all focused sees every friend again.
    h.send(
        &mut phone,
        json!({"type": "focus", "users": ["dave"]}),
        T0 + 900,
    );
    h.wake(&mut phone, T0 + 900);
    let (mut tablet, _) = h.hello("alice", "tablet", T0 + 950);
    h.send(
        &mut bob,
        json!({"type": "status", "status": "available"}),
        T0 + 960,
    );
    h.svc.on_tick(T0 + 1_000);
    let out = h.wake(&mut tablet, T0 + 1_000);
    assert_eq!(presence_of(&out), pairs(&[("bob", "online")]));
    assert!(presence_of(&h.wake(&mut phone, T0 + 1_000)).is_empty());
    // Limits.
    let many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
    let out = h.send(
        &mut phone,
        json!({"type": "focus", "users": many}),
        T0 + 1_100,
    );
    assert_eq!(code(out.only()), "bad_request");
}

#[test]
fn group_counts_move_within_a_tick_one_frame_a_tick() {
    // Sessions live past the 60 s idle threshold without a heartbeat each tick; every tick
    // may send (pacing has its own test).
    let h = Harness::new(|c| {
        c.heartbeat_timeout = Duration::from_secs(300);
        c.tick_phases = 1;
    });
    let members: Vec<String> = std::iter::once("alice".to_owned())
        .chain((0..999).map(|i| format!("m{i}")))
        .collect();
    h.write(h.svc.plan_put_group("g", members.clone()));
    let (mut alice, _) = h.hello("alice", "phone", T0);
    h.svc.on_tick(T0 + 1);
    let out = h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "g"}),
        T0 + 1,
    );
    assert!(out.frames.is_empty(), "{:?}", out.frames);
    // The counts at once: alice herself is online.
    let out = h.wake(&mut alice, T0 + 1);
    let c = counts_of(&out);
    assert_eq!(c.len(), 1, "{:?}", out.frames);
    assert_eq!(
        c[0]["groups"],
        json!([{"group": "g", "online": 1, "idle": 0, "total": 1000}])
    );
    // 300 members connect between two ticks: one frame for that tick, with all of them.
    let mut sessions: Vec<Session> = (0..300)
        .map(|i| h.hello(&format!("m{i}"), "d", T0 + 10).0)
        .collect();
    let tick = h.svc.on_tick(T0 + 100).tick;
    let out = h.wake(&mut alice, T0 + 100);
    let c = counts_of(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["tick"], tick);
    assert_eq!(c[0]["groups"][0]["online"], 301);
    // A tick that changes no count sends none; nor does one whose moves cancel out (a
    // member goes invisible as another connects).
    h.svc.on_tick(T0 + 200);
    assert!(counts_of(&h.wake(&mut alice, T0 + 200)).is_empty());
    h.send(
        &mut sessions[299],
        json!({"type": "status", "status": "invisible"}),
        T0 + 250,
    );
    sessions.push(h.hello("m500", "d", T0 + 250).0);
    h.svc.on_tick(T0 + 300);
    assert!(counts_of(&h.wake(&mut alice, T0 + 300)).is_empty());
    // Idle after the 60 s threshold (alice keeps active).
    let later = T0 + 61_000;
    h.send(&mut alice, json!({"type": "activity"}), later - 10);
    h.svc.on_tick(later);
    let c = counts_of(&h.wake(&mut alice, later));
    assert_eq!(
        c.last().map(|f| f["groups"][0].clone()),
        Some(json!({"group": "g", "online": 1, "idle": 300, "total": 1000}))
    );
    // 100 leave (logged out): offline at the next tick.
    for s in sessions.drain(..100) {
        h.svc
            .close(s, presence_core::Disconnect::LoggedOut, later + 10);
    }
    h.svc.on_tick(later + 100);
    let c = counts_of(&h.wake(&mut alice, later + 100));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["groups"][0]["idle"], 200);
    assert_eq!(
        h.svc.group_presence("g").expect("counts"),
        presence_node::service::views::GroupPresence {
            online: 1,
            idle: 200,
            total: 1000
        }
    );
    // Stop: no more counts.
    h.send(
        &mut alice,
        json!({"type": "unwatch_group", "group": "g"}),
        later + 200,
    );
    for s in sessions.drain(..50) {
        h.svc
            .close(s, presence_core::Disconnect::LoggedOut, later + 210);
    }
    h.svc.on_tick(later + 300);
    assert!(counts_of(&h.wake(&mut alice, later + 300)).is_empty());
    // Counted on demand when nobody watches.
    assert_eq!(h.svc.group_presence("g").expect("counts").idle, 150);
    assert!(matches!(
        h.svc.group_presence("nope"),
        Err(AdminError::NotFound(_))
    ));
}

#[test]
fn watched_members_show_as_friends_and_leave_with_the_group() {
    let h = Harness::new(|_| {});
    h.befriend("alice", "m2", T0);
    let group = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    h.write(
        h.svc
            .plan_put_group("g", group(&["alice", "m1", "m2", "m3"])),
    );
    let (mut alice, _) = h.hello("alice", "phone", T0);
    let (mut web, _) = h.hello("alice", "web", T0);
    let (mut m1, _) = h.hello("m1", "d", T0);
    h.svc.on_tick(T0 + 100);
    h.wake(&mut alice, T0 + 100);
    h.wake(&mut web, T0 + 100);
    let out = h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "g", "counts": false, "members": ["m1", "m3"]}),
        T0 + 200,
    );
    assert!(out.frames.is_empty(), "{:?}", out.frames);
    let out = h.wake(&mut alice, T0 + 200);
    assert_eq!(
        presence_of(&out),
        pairs(&[("m1", "online"), ("m3", "offline")])
    );
    assert!(counts_of(&out).is_empty(), "counts: false");
    // m1 changes: the watching session hears it, the other device of alice does not.
    h.send(
        &mut m1,
        json!({"type": "status", "status": "invisible"}),
        T0 + 300,
    );
    h.svc.on_tick(T0 + 400);
    let out = h.wake(&mut alice, T0 + 400);
    assert_eq!(
        presence_of(&out),
        pairs(&[("m1", "offline")]),
        "invisible looks offline"
    );
    assert!(presence_of(&h.wake(&mut web, T0 + 400)).is_empty());
    // m1 leaves the group: removed from the view; m3 stays.
    h.write(h.svc.plan_put_group("g", group(&["alice", "m2", "m3"])));
    let out = h.wake(&mut alice, T0 + 500);
    assert_eq!(presence_of(&out), pairs(&[("m1", "removed")]));
    h.send(
        &mut m1,
        json!({"type": "status", "status": "available"}),
        T0 + 550,
    );
    h.svc.on_tick(T0 + 600);
    assert!(presence_of(&h.wake(&mut alice, T0 + 600)).is_empty());
    // Watching m2 (a friend) then stopping leaves m2 in view as a friend.
    h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "g", "members": ["m2", "m3"]}),
        T0 + 700,
    );
    let out = h.wake(&mut alice, T0 + 700);
    assert_eq!(presence_of(&out), pairs(&[("m2", "offline")]));
    assert_eq!(counts_of(&out).len(), 1, "counts by default");
    h.send(
        &mut alice,
        json!({"type": "unwatch_group", "group": "g"}),
        T0 + 800,
    );
    let out = h.wake(&mut alice, T0 + 800);
    assert_eq!(presence_of(&out), pairs(&[("m3", "removed")]));

    // Refusals: not a member, not in the group, too many.
    h.write(h.svc.plan_put_group("other", group(&["m1"])));
    let out = h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "other"}),
        T0 + 900,
    );
    assert_eq!(code(out.only()), "forbidden");
    let out = h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "g", "members": ["m1"]}),
        T0 + 901,
    );
    assert_eq!(code(out.only()), "bad_request");
    let many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
    let out = h.send(
        &mut alice,
        json!({"type": "watch_group", "group": "g", "members": many}),
        T0 + 902,
    );
    assert_eq!(code(out.only()), "bad_request");
    for i in 0..21 {
        h.write(h.svc.plan_put_group(&format!("g{i}"), group(&["alice"])));
    }
    for i in 0..20 {
        let out = h.send(
            &mut web,
            json!({"type": "watch_group", "group": format!("g{i}")}),
            T0 + 1_000 + i,
        );
        assert!(out.frames.is_empty(), "{:?}", out.frames);
    }
    let out = h.send(
        &mut web,
        json!({"type": "watch_group", "group": "g20"}),
        T0 + 1_100,
    );
    assert_eq!(code(out.only()), "bad_request");
    // A deleted group: its watchers get a last count of nothing.
    h.wake(&mut web, T0 + 1_100);
    h.write(h.svc.plan_delete_group("g3"));
    let c = counts_of(&h.wake(&mut web, T0 + 1_200));
    assert_eq!(
        c[0]["groups"],
        json!([{"group": "g3", "online": 0, "idle": 0, "total": 0}])
    );
}
