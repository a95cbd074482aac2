//! The client against scripted WebSocket servers: what a real node does rarely or not at all
//! on one machine (`moved`, a resend of entries the device has, silence, a stuck handshake).
//! The real node is in `presence-node/tests/client.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use presence_client::{
    Backoff, Client, ClientError, ClientMessage, ConnectOptions, ErrorCode, Event, ServerMessage,
    Session, SessionOptions, Transport,
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

const SOON: Duration = Duration::from_secs(5);

/// A WebSocket server running `script(n, ws)` for its n-th connection (from 0).
async fn fake<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(usize, Ws) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                tokio::spawn(script(n, ws));
            }
            n += 1;
        }
    });
    addr
}

async fn read(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn say(ws: &mut Ws, v: Value) {
    let _ = ws.send(Message::Text(v.to_string().into())).await;
}

fn welcome(user: &str, inbox_seq: u64, heartbeat_ms: u64) -> Value {
    json!({
        "type": "welcome", "user": user, "device": "d", "heartbeat_ms": heartbeat_ms,
        "idle_thresholds_ms": [60000], "inbox_seq": inbox_seq, "acked_seq": 0, "tick": 1,
        "friends": [{"user": "bob", "state": "online"}],
    })
}

fn inbox(seq: u64) -> Value {
    json!({
        "type": "inbox", "seq": seq, "kind": "message", "msg_id": format!("{seq:016x}"),
        "from": "bob", "to": "alice", "text": format!("m{seq}"), "ts": 1,
    })
}

/// Records every hello a fake receives.
#[derive(Clone, Default)]
struct Hellos(Arc<Mutex<Vec<Value>>>);

impl Hellos {
    fn push(&self, v: Value) {
        self.0.lock().expect("lock").push(v);
    }

    fn all(&self) -> Vec<Value> {
        self.0.lock().expect("lock").clone()
    }
}

fn options(addr: SocketAddr) -> SessionOptions {
    let mut o = SessionOptions::new(ConnectOptions::new(Transport::ws(addr.to_string()), "t"));
    // A backoff this long would show in every test: `moved` must not wait for it.
    o.backoff = Backoff {
        base: Duration::from_secs(30),
        cap: Duration::from_secs(30),
        reset_after: Duration::from_secs(30),
    };
    o.seed = Some(1);
    o
}

async fn next(s: &mut Session) -> Event {
    tokio::time::timeout(SOON, s.next_event())
        .await
        .expect("an event in time")
        .expect("the session goes on")
}

#[tokio::test]
async fn a_moved_hello_is_followed_at_once_to_the_named_node() {
    let hellos = Hellos::default();
    let h = hellos.clone();
    let owner = fake(move |_, mut ws| {
        let h = h.clone();
        async move {
            let hello = read(&mut ws).await.expect("hello");
            h.push(hello);
            say(&mut ws, welcome("alice", 4, 45_000)).await;
            while read(&mut ws).await.is_some() {}
        }
    })
    .await;
    let router = fake(move |_, mut ws| async move {
        let _ = read(&mut ws).await;
        let moved = json!({"type": "error", "code": "moved", "message": "not here",
            "ws": owner.to_string(), "quic": "127.0.0.1:9", "lp": "http://x"});
        say(&mut ws, moved).await;
        let _ = ws.close(None).await;
    })
    .await;

    // One connection: the refusal is typed, with the owner's addresses.
    let once = ConnectOptions::new(Transport::ws(router.to_string()), "t");
    match Client::connect(&once).await {
        Err(ClientError::Moved(m)) => {
            assert_eq!(m.ws.as_deref(), Some(owner.to_string().as_str()));
            assert_eq!(m.quic.as_deref(), Some("127.0.0.1:9"));
            assert_eq!(m.lp.as_deref(), Some("http://x"));
        }
        other => panic!("expected moved, got {other:?}"),
    }

    // A session follows it without backing off (the backoff is 30 s).
    let mut s = Session::start(options(router));
    match next(&mut s).await {
        Event::Disconnected {
            reason: ClientError::Moved(_),
            retry_in,
        } => assert_eq!(retry_in, Some(Duration::ZERO)),
        other => panic!("expected moved, got {other:?}"),
    }
    match next(&mut s).await {
        Event::Connected(w) => {
            assert_eq!(w.user, "alice");
            assert_eq!(w.friends.len(), 1);
        }
        other => panic!("expected the owner's welcome, got {other:?}"),
    }
    assert_eq!(
        s.resume_after(),
        Some(4),
        "a fresh device starts at inbox_seq"
    );
    assert_eq!(hellos.all().len(), 1);
    assert!(
        hellos.all()[0].get("after").is_none(),
        "first hello: no after"
    );
    s.close().await;
}

#[tokio::test]
async fn a_live_session_moved_resumes_with_after_and_never_repeats_a_seq() {
    let hellos = Hellos::default();
    let h = hellos.clone();
    let owner = fake(move |_, mut ws| {
        let h = h.clone();
        async move {
            let hello = read(&mut ws).await.expect("hello");
            h.push(hello);
            say(&mut ws, welcome("alice", 3, 45_000)).await;
            // A node whose store is behind sends what the device already has.
            for seq in [1, 2, 3, 4] {
                say(&mut ws, inbox(seq)).await;
            }
            while read(&mut ws).await.is_some() {}
        }
    })
    .await;
    let first = fake(move |_, mut ws| async move {
        let _ = read(&mut ws).await;
        say(&mut ws, welcome("alice", 0, 45_000)).await;
        for seq in [1, 2, 2, 1, 3] {
            say(&mut ws, inbox(seq)).await;
        }
        let moved = json!({"type": "error", "code": "moved", "message": "slot moved",
            "ws": format!("ws://{owner}/v1/ws")});
        say(&mut ws, moved).await;
        let _ = ws.close(None).await;
    })
    .await;
    let mut s = Session::start(options(first));
    let mut seqs = Vec::new();
    let mut connected = 0;
    while connected < 2 || seqs.len() < 4 {
        match next(&mut s).await {
            Event::Connected(_) => connected += 1,
            Event::Message(ServerMessage::Inbox(i)) => seqs.push(i.seq),
            Event::Message(_) => {}
            Event::Disconnected { reason, retry_in } => {
                assert!(matches!(reason, ClientError::Moved(_)), "{reason}");
                assert_eq!(retry_in, Some(Duration::ZERO));
            }
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4], "every seq once, in order");
    assert_eq!(
        hellos.all()[0]["after"],
        3,
        "the owner is asked for what came after 3"
    );
    assert_eq!(s.resume_after(), Some(4));
    s.close().await;
}

#[tokio::test]
async fn refusals_are_typed_and_a_refused_token_waits_for_a_new_one() {
    let server = fake(move |_, mut ws| async move {
        let hello = read(&mut ws).await.expect("hello");
        if hello["token"] == "good" {
            say(&mut ws, welcome("alice", 0, 45_000)).await;
            while read(&mut ws).await.is_some() {}
        } else {
            say(
                &mut ws,
                json!({"type": "error", "code": "unauthorized", "message": "bad token"}),
            )
            .await;
            let _ = ws.close(None).await;
        }
    })
    .await;
    let once = ConnectOptions::new(Transport::ws(server.to_string()), "bad");
    match Client::connect(&once).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert_eq!(message, "bad token");
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }

    let mut o = options(server);
    o.connect.token = "bad".into();
    let mut s = Session::start(o);
    match next(&mut s).await {
        Event::Disconnected { reason, retry_in } => {
            assert_eq!(reason.code(), Some(ErrorCode::Unauthorized));
            assert_eq!(retry_in, None, "a refused token is not retried by itself");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        s.send(ClientMessage::Activity {}).await,
        Err(ClientError::Closed)
    ));
    s.set_token("good").await.expect("set token");
    assert!(matches!(next(&mut s).await, Event::Connected(_)));
    s.send(ClientMessage::Activity {}).await.expect("send");
    s.close().await;
}

#[tokio::test]
async fn a_stuck_handshake_times_out() {
    let server = fake(move |_, mut ws| async move {
        let _ = read(&mut ws).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let mut once = ConnectOptions::new(Transport::ws(server.to_string()), "t");
    once.hello_timeout = Duration::from_millis(300);
    assert!(matches!(
        Client::connect(&once).await,
        Err(ClientError::Timeout(_))
    ));
}

#[tokio::test]
async fn a_session_heartbeats_and_gives_up_a_silent_node() {
    let hellos = Hellos::default();
    let h = hellos.clone();
    let server = fake(move |n, mut ws| {
        let h = h.clone();
        async move {
            let _ = read(&mut ws).await;
            say(&mut ws, welcome("alice", 0, 300)).await;
            // The first connection records the heartbeats and never answers; later ones hang.
            while let Some(v) = read(&mut ws).await {
                if n == 0 {
                    h.push(v);
                }
            }
        }
    })
    .await;
    let mut o = options(server);
    o.backoff.base = Duration::from_millis(10);
    o.backoff.cap = Duration::from_millis(10);
    let mut s = Session::start(o);
    assert!(matches!(next(&mut s).await, Event::Connected(_)));
    match next(&mut s).await {
        Event::Disconnected { reason, retry_in } => {
            assert!(matches!(reason, ClientError::Timeout(_)), "{reason}");
            assert!(retry_in.is_some());
        }
        other => panic!("expected the silent node to be given up, got {other:?}"),
    }
    let sent = hellos.all();
    assert!(
        sent.len() >= 2 && sent.iter().all(|v| v["type"] == "heartbeat"),
        "{sent:?}"
    );
    assert!(matches!(next(&mut s).await, Event::Connected(_)));
    s.close().await;
}

/// A WebSocket connection leaves from the source address it is given, and the frames it feeds
/// wait for the flush.
#[tokio::test]
async fn websocket_frames_leave_from_the_given_address_on_flush() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (fed_tx, fed_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
        let _ = fed_rx.await;
        // The client fed a frame and has not flushed: nothing may arrive.
        let early = tokio::time::timeout(Duration::from_millis(300), read(&mut ws)).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            match tokio::time::timeout(SOON, read(&mut ws)).await {
                Ok(Some(v)) => got.push(v),
                _ => break,
            }
        }
        (peer, early.is_err(), got)
    });
    let opts = presence_client::TransportOptions {
        local_ip: Some([127, 0, 0, 2].into()),
        ws_write_buffer: 64 * 1024,
        ..Default::default()
    };
    let mut conn = Client::open(&Transport::ws(addr.to_string()), &opts)
        .await
        .expect("open");
    conn.feed_frame(&ClientMessage::Activity {}.to_frame())
        .await
        .expect("feed");
    conn.feed_frame(&ClientMessage::Heartbeat {}.to_frame())
        .await
        .expect("feed");
    let _ = fed_tx.send(());
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.flush().await.expect("flush");
    let (peer, nothing_early, got) = tokio::time::timeout(SOON * 2, server)
        .await
        .expect("in time")
        .expect("server task");
    assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
    assert!(nothing_early, "a fed frame left before the flush");
    assert_eq!(
        got,
        vec![json!({"type": "activity"}), json!({"type": "heartbeat"})]
    );
}

/// Every frame after the hello, per connection (heartbeats left out).
#[derive(Clone, Default)]
struct Frames(Arc<Mutex<Vec<(usize, Value)>>>);

impl Frames {
    fn push(&self, n: usize, v: Value) {
        self.0.lock().expect("lock").push((n, v));
    }

    fn of(&self, n: usize) -> Vec<Value> {
        let all = self.0.lock().expect("lock");
        all.iter()
            .filter(|(c, _)| *c == n)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits until connection `n` has sent `count` frames of type `kind`.
    async fn until(&self, n: usize, kind: &str, count: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let got = self.of(n);
            if got.iter().filter(|v| v["type"] == kind).count() >= count {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "connection {n}: no {count} {kind} in {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn focus_and_watches_are_sent_again_after_every_welcome() {
    let frames = Frames::default();
    let f = frames.clone();
    let server = fake(move |n, mut ws| {
        let f = f.clone();
        async move {
            let _ = read(&mut ws).await;
            say(&mut ws, welcome("alice", 0, 45_000)).await;
            let mut activities = 0;
            while let Some(v) = read(&mut ws).await {
                if v["type"] == "heartbeat" {
                    continue;
                }
                f.push(n, v.clone());
                activities += usize::from(v["type"] == "activity");
                if n == 0 && v["type"] == "watch_group" && v["group"] == "d" {
                    // d deleted: a last count of zeros, and the node watches it no more.
                    let counts = json!({"type": "group_counts", "tick": 9, "groups": [
                        {"group": "d", "online": 0, "idle": 0, "total": 0},
                        {"group": "b", "online": 1, "idle": 1, "total": 3},
                    ]});
                    say(&mut ws, counts).await;
                    let _ = ws.close(None).await;
                    return;
                }
                if n == 1 && activities == 2 {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
    })
    .await;
    let mut o = options(server);
    o.backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(50),
        reset_after: Duration::from_secs(30),
    };
    let mut s = Session::start(o);
    let ids = |ids: &[&str]| Some(ids.iter().map(|u| u.to_string()).collect::<Vec<_>>());

    // Over the protocol's 200 ids: refused here, and not kept.
    let many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
    assert!(matches!(
        s.focus(Some(many.clone())).await,
        Err(ClientError::Protocol(_))
    ));
    assert!(matches!(
        s.watch_group("x", true, Some(many)).await,
        Err(ClientError::Protocol(_))
    ));
    // Asked for before (or while) the first connection comes up.
    s.focus(ids(&["bob"])).await.expect("focus");
    s.watch_group("a", true, None).await.expect("watch a");
    s.watch_group("b", false, ids(&["m1"]))
        .await
        .expect("watch b");
    assert!(matches!(next(&mut s).await, Event::Connected(_)));
    // Changed on the live connection.
    s.unwatch_group("a").await.expect("unwatch a");
    s.unwatch_group("never").await.expect("unwatch never");
    s.watch_group("c", true, None).await.expect("watch c");
    s.watch_group("b", true, ids(&["m2"]))
        .await
        .expect("watch b again");
    s.watch_group("d", true, None).await.expect("watch d");
    match next(&mut s).await {
        Event::Message(ServerMessage::GroupCounts(c)) => {
            assert_eq!(c.tick, 9);
            assert_eq!(c.groups.len(), 2);
            assert_eq!((&*c.groups[1].group, c.groups[1].total), ("b", 3));
        }
        other => panic!("expected the counts, got {other:?}"),
    }
    let watch = |g: &str, counts: bool, members: Option<&[&str]>| match members {
        Some(m) => json!({"type": "watch_group", "group": g, "counts": counts, "members": m}),
        None => json!({"type": "watch_group", "group": g, "counts": counts}),
    };
    let focus_bob = json!({"type": "focus", "users": ["bob"]});
    assert_eq!(
        frames.of(0),
        [
            focus_bob.clone(),
            watch("a", true, None),
            watch("b", false, Some(&["m1"])),
            json!({"type": "unwatch_group", "group": "a"}),
            watch("c", true, None),
            watch("b", true, Some(&["m2"])),
            watch("d", true, None),
        ],
        "as asked, and no unwatch of a group not watched"
    );

    // A new connection: the focus, then the watches left (b replaced in place, a unwatched,
    // d gone with its group), before anything the app sends.
    assert!(matches!(
        next(&mut s).await,
        Event::Disconnected {
            retry_in: Some(_),
            ..
        }
    ));
    assert!(matches!(next(&mut s).await, Event::Connected(_)));
    s.send(ClientMessage::Activity {}).await.expect("activity");
    let activity = json!({"type": "activity"});
    assert_eq!(
        frames.until(1, "activity", 1).await,
        [
            focus_bob,
            watch("b", true, Some(&["m2"])),
            watch("c", true, None),
            activity.clone(),
        ]
    );

    // No focus any more: not sent after the next welcome.
    s.focus(None).await.expect("unfocus");
    s.send(ClientMessage::Activity {}).await.expect("activity");
    assert!(matches!(next(&mut s).await, Event::Disconnected { .. }));
    assert!(matches!(next(&mut s).await, Event::Connected(_)));
    s.send(ClientMessage::Activity {}).await.expect("activity");
    assert_eq!(
        frames.of(1)[4..],
        [json!({"type": "focus", "users": null}), activity.clone()]
    );
    assert_eq!(
        frames.until(2, "activity", 1).await,
        [
            watch("b", true, Some(&["m2"])),
            watch("c", true, None),
            activity
        ]
    );
    s.close().await;
}
