//! `presence-client` against the real node binary: typed welcomes over both transports, typed
//! refusals, typed presence and chat, and a session that resumes across restarts with
//! exactly the inbox entries it missed, and keeps its v1.1 focus and group watches.

mod common;

use std::time::Duration;

use common::{FAST, Node, Via, transport};
use presence_client::{
    Backoff, Client, ClientError, ClientMessage, ConnectOptions, Connection, ErrorCode, Event,
    Inbox, QuicCert, QuicEndpoint, ServerMessage, Session, SessionOptions, State, Transport,
};

const SOON: Duration = Duration::from_secs(5);
/// Long enough for something the node would send to arrive, on a shared 2-core machine.
const QUIET: Duration = Duration::from_millis(500);

async fn options(node: &Node, via: Via, user: &str) -> ConnectOptions {
    ConnectOptions::new(transport(node, via), node.token(user).await).device("d")
}

async fn connect(node: &Node, via: Via, user: &str) -> Connection {
    let (c, w) = Client::connect(&options(node, via, user).await)
        .await
        .expect("welcome");
    assert_eq!(w.user, user);
    c
}

/// Reads until `pick` returns something, heartbeating meanwhile (the FAST node expires a
/// silent session after 2 s); panics after `SOON`.
async fn until<T>(c: &mut Connection, mut pick: impl FnMut(ServerMessage) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let beat = tokio::time::sleep(Duration::from_millis(300));
        tokio::select! {
            msg = c.recv() => {
                if let Some(t) = pick(msg.expect("connection open")) {
                    return t;
                }
            }
            () = beat => c.send(&ClientMessage::Heartbeat {}).await.expect("heartbeat"),
            () = tokio::time::sleep_until(deadline) => panic!("nothing matching within {SOON:?}"),
        }
    }
}

async fn chat(c: &mut Connection, id: &str, to: &str, text: &str) {
    let send = ClientMessage::Send {
        id: id.into(),
        to: Some(to.into()),
        group: None,
        text: text.into(),
    };
    c.send(&send).await.expect("send");
    until(c, |m| match m {
        ServerMessage::Sent(s) if s.id == id => Some(()),
        ServerMessage::Error(e) => panic!("{id}: {e:?}"),
        _ => None,
    })
    .await;
}

fn bob_is(state: State) -> impl FnMut(ServerMessage) -> Option<()> {
    move |m| match m {
        ServerMessage::Presence(p) => p
            .changes
            .iter()
            .any(|e| e.user == "bob" && e.state == Some(state))
            .then_some(()),
        _ => None,
    }
}

async fn welcome_presence_and_chat_are_typed(via: Via) {
    let node = Node::start(FAST);
    // Answered after publishing: the next welcome has it (read-your-writes).
    node.befriend(&[("alice", "bob")]).await;

    let opts = options(&node, via, "alice").await.device("phone");
    let (mut alice, w) = Client::connect(&opts).await.expect("welcome");
    assert_eq!((&*w.user, &*w.device), ("alice", "phone"));
    assert_eq!(&*w.idle_thresholds_ms, &[400, 800, 1600]);
    assert_eq!(w.inbox_seq, 0);
    assert_eq!(w.friends.len(), 1, "{w:?}");
    assert_eq!(w.friends[0].user, "bob");
    assert_eq!(w.friends[0].state, Some(State::Offline));

    let mut bob = connect(&node, via, "bob").await;
    until(&mut alice, bob_is(State::Online)).await;
    chat(&mut bob, "b1", "alice", "hi alice").await;
    let entry = until(&mut alice, |m| match m {
        ServerMessage::Inbox(i) => Some(i),
        _ => None,
    })
    .await;
    assert_eq!((entry.seq, &*entry.from), (1, "bob"));
    assert_eq!(entry.text.as_deref(), Some("hi alice"));
    bob.close().await.expect("close");
    // Offline after the grace period.
    until(&mut alice, bob_is(State::Offline)).await;
    alice.close().await.expect("close");
}

#[tokio::test]
async fn welcome_presence_and_chat_are_typed_ws() {
    common::init();
    welcome_presence_and_chat_are_typed(Via::Ws).await;
}

#[tokio::test]
async fn welcome_presence_and_chat_are_typed_quic() {
    common::init();
    welcome_presence_and_chat_are_typed(Via::Quic).await;
}

/// What a load host does: QUIC connections on one shared UDP socket, and frames fed together
/// then flushed in one write.
#[tokio::test]
async fn connections_share_a_quic_socket_and_fed_frames_leave_on_flush() {
    common::init();
    let node = Node::start(FAST);
    node.befriend(&[("alice", "bob")]).await;

    let shared = QuicEndpoint::bind(([127, 0, 0, 1], 0).into()).expect("udp socket");
    let on_shared = |mut o: ConnectOptions| {
        o.transport_options.quic_endpoint = Some(shared.clone());
        o.transport_options.quic_stream_receive_window = Some(1 << 20);
        o.transport_options.quic_receive_window = Some(2 << 20);
        o.transport_options.quic_send_window = Some(64 * 1024);
        o
    };
    let (mut alice, _) = Client::connect(&on_shared(options(&node, Via::Quic, "alice").await))
        .await
        .expect("alice's welcome");
    let (mut bob, _) = Client::connect(&on_shared(options(&node, Via::Quic, "bob").await))
        .await
        .expect("bob's welcome");
    until(&mut alice, bob_is(State::Online)).await;
    chat(&mut bob, "b1", "alice", "over one socket").await;

    let mut o = options(&node, Via::Ws, "carol").await;
    o.transport_options.ws_write_buffer = 64 * 1024;
    let (mut carol, _) = Client::connect(&o).await.expect("carol's welcome");
    carol
        .feed_frame(&ClientMessage::Activity {}.to_frame())
        .await
        .expect("feed");
    carol
        .feed_frame(&ClientMessage::Heartbeat {}.to_frame())
        .await
        .expect("feed");
    carol.flush().await.expect("flush");
    let pong = tokio::time::timeout(SOON, carol.recv()).await;
    assert!(
        matches!(pong, Ok(Ok(ServerMessage::Pong))),
        "the heartbeat's pong: {pong:?}"
    );
    for c in [alice, bob, carol] {
        c.close().await.expect("close");
    }
}

#[tokio::test]
async fn bad_tokens_and_certificates_are_typed_refusals() {
    common::init();
    let node = Node::start(FAST);
    let good = node.token("x").await;
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let tampered = String::from_utf8(tampered).expect("utf8");
    for via in [Via::Ws, Via::Quic] {
        for token in ["nope", &tampered] {
            let opts = ConnectOptions::new(transport(&node, via), token);
            match Client::connect(&opts).await {
                Err(ClientError::Refused { code, .. }) => {
                    assert_eq!(code, ErrorCode::Unauthorized, "{via:?}");
                }
                other => panic!("{via:?}: expected unauthorized, got {other:?}"),
            }
        }
    }
    // QUIC checks the certificate: a name it is not for fails the handshake...
    let wrong_name = Transport::quic(
        node.ready.quic.to_string(),
        "example.com",
        common::node_cert(&node),
    );
    match Client::connect(&ConnectOptions::new(wrong_name, good.as_str())).await {
        Err(ClientError::Tls(_)) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // ...unless told to accept anything.
    let any = Transport::quic(
        node.ready.quic.to_string(),
        "example.com",
        QuicCert::DangerousAcceptAny,
    );
    let (c, w) = Client::connect(&ConnectOptions::new(any, good.as_str()))
        .await
        .expect("welcome");
    assert_eq!(w.user, "x");
    c.close().await.expect("close");
}

/// The session's next event within `SOON`.
async fn next(s: &mut Session) -> Event {
    tokio::time::timeout(SOON * 3, s.next_event())
        .await
        .expect("an event in time")
        .expect("the session goes on")
}

/// Inbox entries from the session until it has `n` in all (other events skipped).
async fn inbox_until(s: &mut Session, got: &mut Vec<Inbox<'static>>, n: usize) {
    while got.len() < n {
        if let Event::Message(ServerMessage::Inbox(i)) = next(s).await {
            got.push(i);
        }
    }
}

async fn session_resumes_after_restarts(via: Via) {
    let node = Node::start(FAST);
    node.befriend(&[("alice", "bob")]).await;
    let (ws, quic) = (node.ready.ws, node.ready.quic);
    let mut opts = SessionOptions::new(options(&node, via, "alice").await);
    opts.connect.transport_options.connect_timeout = Duration::from_secs(3);
    opts.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(300),
        reset_after: Duration::from_secs(30),
    };
    opts.seed = Some(7);
    let mut alice = Session::start(opts);
    match next(&mut alice).await {
        Event::Connected(w) => assert_eq!(w.inbox_seq, 0),
        other => panic!("expected a welcome, got {other:?}"),
    }
    let mut got = Vec::new();

    // One entry live.
    let mut bob = connect(&node, via, "bob").await;
    chat(&mut bob, "m1", "alice", "one").await;
    inbox_until(&mut alice, &mut got, 1).await;
    drop(bob);

    // The node goes down; two entries are written while it runs elsewhere, where alice's
    // session does not look.
    let mut node = node;
    assert!(node.stop().success());
    loop {
        if let Event::Disconnected { retry_in, .. } = next(&mut alice).await {
            assert!(retry_in.is_some(), "a lost node is retried");
            break;
        }
    }
    let mut node = node.restart();
    let mut bob = connect(&node, via, "bob").await;
    chat(&mut bob, "m2", "alice", "two").await;
    chat(&mut bob, "m3", "alice", "three").await;
    drop(bob);
    assert!(node.stop().success());

    // Back where alice's session looks: it resumes after 1, gets 2 and 3 from the store,
    // then 4 live.
    let node = node.restart_at(ws, quic);
    loop {
        if let Event::Connected(w) = next(&mut alice).await {
            assert_eq!(w.inbox_seq, 3);
            break;
        }
    }
    let mut bob = connect(&node, via, "bob").await;
    chat(&mut bob, "m4", "alice", "four").await;
    inbox_until(&mut alice, &mut got, 4).await;
    // And nothing more: no entry twice.
    let quiet = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(e)) = tokio::time::timeout_at(quiet, alice.next_event()).await {
        if let Event::Message(ServerMessage::Inbox(extra)) = e {
            panic!("an extra entry: {extra:?}");
        }
    }
    let seqs: Vec<u64> = got.iter().map(|i| i.seq).collect();
    let texts: Vec<&str> = got.iter().filter_map(|i| i.text.as_deref()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(texts, ["one", "two", "three", "four"]);
    assert_eq!(alice.resume_after(), Some(4));
    alice.close().await;
    bob.close().await.expect("close");
}

#[tokio::test]
async fn a_session_resumes_after_restarts_ws() {
    common::init();
    session_resumes_after_restarts(Via::Ws).await;
}

#[tokio::test]
async fn a_session_resumes_after_restarts_quic() {
    common::init();
    session_resumes_after_restarts(Via::Quic).await;
}

/// Events of `s` until `pick` returns something, with every presence entry's user seen on
/// the way; panics after `SOON` (3x).
async fn events_until<T>(
    s: &mut Session,
    seen: &mut Vec<String>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + SOON * 3;
    loop {
        let e = match tokio::time::timeout_at(deadline, s.next_event()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the session ended waiting for {what}"),
            Err(_) => panic!("no {what} in time; presence seen: {seen:?}"),
        };
        if let Event::Message(ServerMessage::Presence(p)) = &e {
            seen.extend(p.changes.iter().map(|c| c.user.to_string()));
        }
        if let Some(t) = pick(&e) {
            return t;
        }
    }
}

fn counts_of(e: &Event, group: &str) -> Option<(u64, u64)> {
    match e {
        Event::Message(ServerMessage::GroupCounts(c)) => c
            .groups
            .iter()
            .find(|g| g.group == group)
            .map(|g| (g.online + g.idle, g.total)),
        _ => None,
    }
}

fn shows(e: &Event, user: &str) -> bool {
    matches!(e, Event::Message(ServerMessage::Presence(p))
        if p.changes.iter().any(|c| c.user == user && c.removed != Some(true)))
}

/// g1's counts (here, total) and dave's presence, in either order.
async fn watch_shown(s: &mut Session, seen: &mut Vec<String>, what: &str) -> (u64, u64) {
    let (mut counts, mut dave) = (None, false);
    events_until(s, seen, what, |e| {
        counts = counts.or(counts_of(e, "g1"));
        dave |= shows(e, "dave");
        counts.filter(|_| dave)
    })
    .await
}

/// The node forgets a session's focus and watches with its connection: the session sends
/// them again after the welcome of a restarted node.
#[tokio::test]
async fn a_session_keeps_its_focus_and_watches_across_a_restart() {
    common::init();
    let node = Node::start(FAST);
    node.befriend(&[("alice", "bob"), ("alice", "carol")]).await;
    let group = serde_json::json!({"members": ["alice", "dave", "erin"]});
    let (status, _) = node.admin("PUT", "/v1/groups/g1", Some(group)).await;
    assert_eq!(status, 204);
    let (ws, quic) = (node.ready.ws, node.ready.quic);
    let mut opts = SessionOptions::new(options(&node, Via::Ws, "alice").await);
    opts.connect.transport_options.connect_timeout = Duration::from_secs(3);
    opts.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(300),
        reset_after: Duration::from_secs(30),
    };
    opts.seed = Some(7);
    let mut alice = Session::start(opts);
    alice.focus(Some(vec!["bob".into()])).await.expect("focus");
    alice
        .watch_group("g1", true, Some(vec!["dave".into()]))
        .await
        .expect("watch");
    let mut seen = Vec::new();
    events_until(&mut alice, &mut seen, "the first welcome", |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    let first = watch_shown(&mut alice, &mut seen, "the first counts and dave").await;
    assert_eq!(first.1, 3, "every member counted");

    let mut node = node;
    assert!(node.stop().success());
    events_until(&mut alice, &mut seen, "the disconnect", |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    let node = node.restart_at(ws, quic);
    events_until(&mut alice, &mut seen, "the second welcome", |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    // The watch again: counts and the member, from the new session.
    seen.clear();
    let again = watch_shown(&mut alice, &mut seen, "counts and dave again").await;
    assert_eq!(again.1, 3);
    // The focus again: carol (a friend out of focus) comes online and is not shown; bob is.
    let mut others = Vec::new();
    for user in ["carol", "bob"] {
        let mut s = Session::start(SessionOptions::new(options(&node, Via::Ws, user).await));
        assert!(matches!(next(&mut s).await, Event::Connected(_)));
        others.push(s);
    }
    events_until(&mut alice, &mut seen, "bob", |e| {
        shows(e, "bob").then_some(())
    })
    .await;
    let quiet = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(e)) = tokio::time::timeout_at(quiet, alice.next_event()).await {
        if let Event::Message(ServerMessage::Presence(p)) = e {
            seen.extend(p.changes.iter().map(|c| c.user.to_string()));
        }
    }
    assert!(
        !seen.iter().any(|u| u == "carol"),
        "carol is out of focus: {seen:?}"
    );
    alice.close().await;
    for s in others {
        s.close().await;
    }
}
