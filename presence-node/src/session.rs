//! One client session, the same behind WebSocket and QUIC: hello and authentication, the
//! welcome snapshot, then a loop that answers client messages and writes presence frames.
//!
//! Transports implement [`Transport`] (receive a frame, send a frame, close); everything the
//! protocol says lives here once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use presence_core::{Disconnect, Error as CoreError, Status};
use tracing::{Instrument, debug, info_span, warn};

use chat_relay::{MsgId, Target};

use crate::chat::{Answer, Dir, refusal};
use crate::frames;
use crate::hub::{Hub, SessionHandle, now_ms};
use crate::metrics as m;
use crate::outbox::{ChatItem, CloseReason};
use crate::token;
use presence_wire::{ClientMessage, ErrorCode, ProtocolError};

/// How long a connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block before the client is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Token bucket: sustained messages per second and burst.
const RATE_PER_SEC: f64 = 20.0;
const RATE_BURST: f64 = 60.0;
/// Messages refused for rate before the connection is closed.
const RATE_STRIKES: u32 = 50;

/// Why a frame could not be received.
#[derive(Debug)]
pub enum RecvError {
    /// Over the 64 KiB limit.
    TooLarge,
    /// Not a text frame, or not valid framing.
    Framing(String),
    /// The connection failed.
    Io(String),
}

/// What a transport received.
#[derive(Debug)]
pub enum Received {
    /// A client message's frame.
    Frame(Bytes),
    /// A sign of life below the protocol (a WebSocket pong or ping): it keeps the session
    /// alive like a heartbeat, and needs no answer from the session.
    Alive,
}

/// A message-framed, bidirectional connection.
pub trait Transport: Send {
    /// What the client sent next; `Ok(None)` when the peer closed.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Received>, RecvError>> + Send;
    /// Asks the client for a sign of life, where the transport has a way to (a WebSocket
    /// ping, which browsers answer by themselves even from a throttled background tab).
    fn ping(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        async { Ok(()) }
    }
    /// Queues one frame (the bytes are shared: a frame for many sessions is not copied); it
    /// may stay buffered until [`Transport::flush`], so the frames of one wakeup can leave
    /// together.
    fn feed(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Writes out whatever [`Transport::feed`] buffered.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Writes one frame now.
    fn send(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send {
        async move {
            self.feed(frame).await?;
            self.flush().await
        }
    }
    /// Closes with a short reason.
    fn close(&mut self, reason: &str) -> impl Future<Output = ()> + Send;
}

/// A token bucket driven by the caller's clock.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: RATE_BURST,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * RATE_PER_SEC).min(RATE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn send_error<T: Transport>(t: &mut T, e: &ProtocolError) {
    metrics::counter!(m::ERRORS, "code" => e.code.as_str()).increment(1);
    let frame = presence_wire::error_frame(e);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, t.send(Bytes::from(frame))).await;
}

/// Sends the error and closes. (Awaited only inside the boxed hello and wakeup futures, so
/// it does not count towards what an idle session holds.)
async fn fail<T: Transport>(t: &mut T, code: ErrorCode, message: impl Into<String>) {
    let e = ProtocolError::new(code, message);
    send_error(t, &e).await;
    t.close(&e.message).await;
}

/// Serves one connection to the end.
pub async fn run<T: Transport>(hub: Arc<Hub>, mut t: T, transport: &'static str) {
    metrics::counter!(m::CONNECTIONS, "transport" => transport).increment(1);
    // Boxed, so that what only the hello needs is not part of the state the session keeps.
    let Some(Opened {
        sub,
        device,
        after,
        handle,
        welcome,
    }) = Box::pin(hello(&hub, &mut t)).await
    else {
        return;
    };
    let span = info_span!("session", user = %sub, device = %device, transport);
    metrics::gauge!(m::SESSIONS, "transport" => transport).increment(1.0);
    let who = Who {
        user: &sub,
        device: &device,
    };
    let how = serve(&hub, &mut t, &handle, welcome, who, after)
        .instrument(span)
        .await;
    hub.close_session(&handle, how);
    metrics::gauge!(m::SESSIONS, "transport" => transport).decrement(1.0);
}

/// A session the hello opened.
struct Opened {
    /// The user id (the token's `sub`).
    sub: String,
    device: String,
    after: Option<u64>,
    handle: Arc<SessionHandle>,
    welcome: presence_core::Welcome,
}

/// Waits for the hello (within [`HELLO_TIMEOUT`]), checks it and opens the session; `None`
/// when the connection ends instead (with an error frame where one is due).
async fn hello<T: Transport>(hub: &Hub, t: &mut T) -> Option<Opened> {
    let first = tokio::select! {
        r = tokio::time::timeout(HELLO_TIMEOUT, t.recv()) => r,
        () = hub.shutdown.cancelled() => {
            t.close("node shutting down").await;
            return None;
        }
    };
    let frame = match first {
        Err(_) => {
            fail(t, ErrorCode::Protocol, "no hello within 10 s").await;
            return None;
        }
        Ok(Ok(Some(Received::Frame(f)))) => f,
        Ok(Ok(Some(Received::Alive))) => {
            fail(t, ErrorCode::Protocol, "the first message must be hello").await;
            return None;
        }
        Ok(Ok(None)) | Ok(Err(RecvError::Io(_))) => return None,
        Ok(Err(RecvError::TooLarge)) => {
            fail(t, ErrorCode::Protocol, "frame over 64 KiB").await;
            return None;
        }
        Ok(Err(RecvError::Framing(m))) => {
            fail(t, ErrorCode::Protocol, m).await;
            return None;
        }
    };
    let (token, device, after) = match presence_wire::parse_client(&frame) {
        Ok(ClientMessage::Hello {
            token,
            device,
            after,
        }) => (token, device, after),
        Ok(_) => {
            fail(t, ErrorCode::Protocol, "the first message must be hello").await;
            return None;
        }
        Err(e) => {
            fail(t, ErrorCode::Protocol, e.message).await;
            return None;
        }
    };
    let claims = match token::verify(&hub.secret, &token, now_ms() / 1000) {
        Ok(c) => c,
        Err(e) => {
            fail(t, ErrorCode::Unauthorized, e.to_string()).await;
            return None;
        }
    };
    let device = match device.or(claims.dev.clone()) {
        Some(d) if d.is_empty() || d.len() > 128 => {
            fail(t, ErrorCode::Protocol, "device must be 1 to 128 bytes").await;
            return None;
        }
        Some(d) => d,
        None => crate::datadir::random_hex(8).unwrap_or_else(|_| "device".into()),
    };
    let user = match hub.engine.intern(&claims.sub) {
        Ok(u) => u,
        Err(e) => {
            fail(t, ErrorCode::Unauthorized, e.to_string()).await;
            return None;
        }
    };
    let (handle, welcome) = match hub.open_session(user, &device) {
        Ok(x) => x,
        Err(CoreError::TooManySessions { cap, .. }) => {
            let msg = format!("too many sessions for this user (at most {cap})");
            fail(t, ErrorCode::Forbidden, msg).await;
            return None;
        }
        Err(e) => {
            fail(t, ErrorCode::BadRequest, e.to_string()).await;
            return None;
        }
    };
    Some(Opened {
        sub: claims.sub,
        device,
        after,
        handle,
        welcome,
    })
}

/// Whose session this is, by the app's ids.
#[derive(Clone, Copy)]
struct Who<'a> {
    user: &'a str,
    device: &'a str,
}

fn welcome_frame(
    hub: &Hub,
    welcome: &presence_core::Welcome,
    who: Who<'_>,
    inbox_seq: u64,
    acked_seq: u64,
) -> Vec<u8> {
    let head = frames::WelcomeHead {
        user: who.user,
        device: who.device,
        inbox_seq,
        acked_seq,
        tick: welcome.tick,
    };
    let cfg = hub.engine.config();
    hub.engine.with_names(|name| {
        let friends = welcome
            .friends
            .iter()
            .map(|(id, p)| (name(*id).unwrap_or(""), p));
        frames::welcome_frame(&head, friends, cfg)
    })
}

/// Runs a blocking store read off the async workers.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Where this device stands in its user's inbox: the next seq it must get. Entries arrive live
/// from the committer; anything before them that this connection has not had (a resume after
/// `hello.after`, entries a lagging outbox left out) is read back from the store, so every seq
/// reaches the device once, in order.
struct Cursor {
    next_seq: u64,
}

impl Cursor {
    /// Queues the durable entries from `next_seq` on, up to `until` (inclusive) or to the end
    /// (the caller flushes).
    async fn fill<T: Transport>(
        &mut self,
        hub: &Hub,
        t: &mut T,
        user: &str,
        until: Option<u64>,
    ) -> Result<(), ()> {
        loop {
            let reader = hub.chat.reader().clone();
            let owner = user.to_owned();
            let after = self.next_seq.saturating_sub(1);
            let page = match blocking(move || reader.sync(&owner, after, 0)).await {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    warn!("reading the inbox back failed: {e}");
                    return Err(());
                }
                None => return Err(()),
            };
            metrics::counter!(m::CHAT_ENTRIES_READ).increment(page.entries.len() as u64);
            for e in &page.entries {
                if until.is_some_and(|u| e.seq > u) {
                    return Ok(());
                }
                if e.seq < self.next_seq {
                    continue;
                }
                feed(t, frames::inbox_frame(e)).await?;
                self.next_seq = e.seq + 1;
            }
            if !page.more || page.entries.is_empty() {
                return Ok(());
            }
        }
    }

    /// Queues one live entry, first filling any gap before it; skips what the device has.
    async fn live<T: Transport>(
        &mut self,
        hub: &Hub,
        t: &mut T,
        user: &str,
        seq: u64,
        frame: Bytes,
    ) -> Result<(), ()> {
        if seq > self.next_seq {
            self.fill(hub, t, user, Some(seq - 1)).await?;
        }
        if seq == self.next_seq {
            feed(t, frame).await?;
            self.next_seq = seq + 1;
        }
        Ok(())
    }
}

/// The session loop; returns how the session ended for the engine.
///
/// Every idle session holds this future for its whole life, and an async fn's state is as
/// large as its largest await point. So the loop itself awaits only the three small wakeup
/// futures; the work of a wakeup (writes with their timeouts, store reads, refusals) runs in
/// boxed futures that exist only while it runs. One allocation per wakeup buys about 2 KB
/// less per idle session (docs/benchmarks.md).
async fn serve<T: Transport>(
    hub: &Arc<Hub>,
    t: &mut T,
    handle: &Arc<SessionHandle>,
    welcome: presence_core::Welcome,
    who: Who<'_>,
    after: Option<u64>,
) -> Disconnect {
    let mut cursor = match Box::pin(start(hub, t, welcome, who, after)).await {
        Ok(c) => c,
        Err(d) => return d,
    };
    let mut limit = Limit {
        bucket: Bucket::new(Instant::now()),
        strikes: 0,
        acked: 0,
    };
    loop {
        let flow = tokio::select! {
            biased;
            () = handle.outbox.notify.notified() => {
                Box::pin(drain_outbox(hub, t, handle, who, &mut cursor)).await
            }
            frame = t.recv() => {
                let pushed = cursor.next_seq.saturating_sub(1);
                Box::pin(on_frame(hub, t, handle, who, &mut limit, pushed, frame)).await
            }
            () = hub.shutdown.cancelled() => {
                t.close("node shutting down").await;
                Err(Disconnect::Dropped)
            }
        };
        if let Err(how) = flow {
            return how;
        }
    }
}

/// `Err` ends the session, the way it says.
type Flow = Result<(), Disconnect>;

/// Until the session's first wakeup: the inbox head, the welcome, a resume from `after`.
async fn start<T: Transport>(
    hub: &Arc<Hub>,
    t: &mut T,
    welcome: presence_core::Welcome,
    who: Who<'_>,
    after: Option<u64>,
) -> Result<Cursor, Disconnect> {
    // Read after the session is registered: everything committed later is pushed to it.
    let hub2 = hub.clone();
    let (user, device) = (who.user.to_owned(), who.device.to_owned());
    let heads = blocking(move || {
        Ok::<_, chat_relay::ChatError>((
            hub2.chat.reader().durable_head(&user)?,
            hub2.chat.device_ack(&user, &device)?,
        ))
    })
    .await;
    let (inbox_seq, acked_seq) = match heads {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            warn!("reading the inbox head failed: {e}");
            fail(
                t,
                ErrorCode::Internal,
                "the inbox cannot be read; try again",
            )
            .await;
            return Err(Disconnect::Dropped);
        }
        None => return Err(Disconnect::Dropped),
    };
    let frame = welcome_frame(hub, &welcome, who, inbox_seq, acked_seq);
    debug!(friends = welcome.friends.len(), inbox_seq, "welcome");
    // The snapshot is not kept for the life of the session (150 friends ≈ 6 KB).
    drop(welcome);
    if write(t, frame).await.is_err() {
        return Err(Disconnect::Dropped);
    }
    let mut cursor = Cursor {
        next_seq: after.map_or(inbox_seq, |a| a.min(inbox_seq)) + 1,
    };
    if after.is_some()
        && (cursor.fill(hub, t, who.user, None).await.is_err() || flush(t).await.is_err())
    {
        return Err(Disconnect::Dropped);
    }
    Ok(cursor)
}

/// Writes what the outbox holds. Everything taken in one wakeup leaves in one write where the
/// transport allows (one syscall instead of one a frame).
async fn drain_outbox<T: Transport>(
    hub: &Hub,
    t: &mut T,
    handle: &SessionHandle,
    who: Who<'_>,
    cursor: &mut Cursor,
) -> Flow {
    let taken = handle.outbox.take();
    if taken.ping {
        timed(t.ping()).await.map_err(dropped)?;
    }
    if let Some((tick, items)) = taken.presence {
        let frame = presence_wire::presence_frame(tick, items.iter().map(|(_, b)| b.as_ref()));
        feed(t, frame).await.map_err(dropped)?;
        metrics::counter!(m::FRAMES_SENT).increment(1);
    }
    for item in taken.chat {
        match item {
            ChatItem::Frame(f) => feed(t, f).await,
            ChatItem::Inbox { seq, frame } => cursor.live(hub, t, who.user, seq, frame).await,
        }
        .map_err(dropped)?;
    }
    if taken.lagging {
        cursor.fill(hub, t, who.user, None).await.map_err(dropped)?;
    }
    flush(t).await.map_err(dropped)?;
    match taken.close {
        Some(CloseReason::HeartbeatTimeout) => {
            fail(t, ErrorCode::Protocol, "heartbeat timeout").await;
            Err(Disconnect::Dropped)
        }
        Some(CloseReason::Shutdown) => {
            t.close("node shutting down").await;
            Err(Disconnect::Dropped)
        }
        None => Ok(()),
    }
}

fn dropped(_: ()) -> Disconnect {
    Disconnect::Dropped
}

/// The per-session rate limit and its count of refusals in a row.
struct Limit {
    bucket: Bucket,
    strikes: u32,
    /// The highest seq this session has acked. An `ack` that moves it forward, up to what
    /// the node has pushed to the session, is exempt from the bucket: the device owes it for
    /// entries the node sent (a busy group can push more than the sustained rate), so their
    /// number is bounded by the node's own output.
    acked: u64,
}

/// Handles one received frame (or the end of the stream); `pushed` is the last inbox seq
/// written to the session.
async fn on_frame<T: Transport>(
    hub: &Arc<Hub>,
    t: &mut T,
    handle: &Arc<SessionHandle>,
    who: Who<'_>,
    limit: &mut Limit,
    pushed: u64,
    frame: Result<Option<Received>, RecvError>,
) -> Flow {
    let frame = match frame {
        Ok(Some(Received::Frame(f))) => f,
        Ok(Some(Received::Alive)) => {
            return match hub.engine.heartbeat(handle.sid, now_ms()) {
                Err(CoreError::UnknownSession) => {
                    fail(t, ErrorCode::Protocol, "session expired").await;
                    Err(Disconnect::Dropped)
                }
                _ => Ok(()),
            };
        }
        Ok(None) | Err(RecvError::Io(_)) => return Err(Disconnect::Dropped),
        Err(RecvError::TooLarge) => {
            fail(t, ErrorCode::Protocol, "frame over 64 KiB").await;
            return Err(Disconnect::Dropped);
        }
        Err(RecvError::Framing(m)) => {
            fail(t, ErrorCode::Protocol, m).await;
            return Err(Disconnect::Dropped);
        }
    };
    let msg = presence_wire::parse_client(&frame);
    // Any frame is a sign of life (v1.1); these three already count as one in the engine.
    if !matches!(
        msg,
        Ok(ClientMessage::Activity {} | ClientMessage::Heartbeat {} | ClientMessage::Status { .. })
    ) {
        let _ = hub.engine.heartbeat(handle.sid, now_ms());
    }
    let owed_ack = match msg {
        Ok(ClientMessage::Ack { seq }) if seq > limit.acked && seq <= pushed => Some(seq),
        _ => None,
    };
    if let Some(seq) = owed_ack {
        limit.acked = seq;
    } else if !limit.bucket.take(Instant::now()) {
        limit.strikes += 1;
        if limit.strikes >= RATE_STRIKES {
            warn!("flood: closing");
            fail(t, ErrorCode::RateLimited, "too many messages; closing").await;
            return Err(Disconnect::Dropped);
        }
        // A refused send is answered with its id, so the client knows what to retry; other
        // refused messages get one "slow down" per burst.
        let id = match msg {
            Ok(ClientMessage::Send { id, .. }) => Some(id),
            Ok(_) => None,
            Err(_) => refused_send_id(&frame),
        };
        if limit.strikes == 1 || id.is_some() {
            let e = ProtocolError {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                id,
            };
            send_error(t, &e).await;
        }
        return Ok(());
    } else {
        limit.strikes = 0;
    }
    let reply = match msg {
        Ok(m) => handle_message(hub, handle, who, m),
        Err(e) => Reply::Error(e),
    };
    match reply {
        Reply::None => Ok(()),
        Reply::Sync { after, limit } => sync(hub, t, who.user, after, limit).await.map_err(dropped),
        Reply::History {
            target,
            before,
            limit,
        } => match history(hub, who.user, target, before, limit).await {
            Ok(f) => write(t, f).await.map_err(dropped),
            Err(e) => {
                send_error(t, &e).await;
                Ok(())
            }
        },
        Reply::Frame(f) => write(t, f).await.map_err(dropped),
        Reply::Error(e) => {
            let closes = e.code.closes();
            send_error(t, &e).await;
            if closes {
                t.close(&e.message).await;
                return Err(Disconnect::Dropped);
            }
            Ok(())
        }
        Reply::Gone => {
            fail(t, ErrorCode::Protocol, "session expired").await;
            Err(Disconnect::Dropped)
        }
    }
}

/// The client id of a `send` frame, if it is one (for a refusal that must name it).
fn refused_send_id(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
        id: Option<String>,
    }
    let p: Probe = serde_json::from_slice(frame).ok()?;
    (p.kind == "send").then_some(p.id).flatten()
}

/// A transport write that must end within [`WRITE_TIMEOUT`]; an error or a timeout ends
/// the session (`Err`).
async fn timed(op: impl Future<Output = std::io::Result<()>>) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, op).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn write<T: Transport>(t: &mut T, frame: impl Into<Bytes>) -> Result<(), ()> {
    timed(t.send(frame.into())).await
}

/// Queues a frame to be written with the next [`flush`].
async fn feed<T: Transport>(t: &mut T, frame: impl Into<Bytes>) -> Result<(), ()> {
    timed(t.feed(frame.into())).await
}

async fn flush<T: Transport>(t: &mut T) -> Result<(), ()> {
    timed(t.flush()).await
}

enum Reply {
    None,
    Frame(Vec<u8>),
    Error(ProtocolError),
    /// The engine no longer knows the session (expired).
    Gone,
    /// Read from the store, off the async workers.
    Sync {
        after: u64,
        limit: usize,
    },
    History {
        target: Target,
        before: Option<MsgId>,
        limit: usize,
    },
}

fn bad(message: &str) -> Reply {
    Reply::Error(ProtocolError::new(ErrorCode::BadRequest, message))
}

/// `to` xor `group`.
fn target_of(to: Option<String>, group: Option<String>) -> Result<Target, &'static str> {
    match (to, group) {
        (Some(u), None) => Ok(Target::User(u)),
        (None, Some(g)) => Ok(Target::Group(g)),
        _ => Err("give exactly one of to (or with) and group"),
    }
}

fn parse_msg_id(s: &str) -> Result<MsgId, Reply> {
    s.parse()
        .map_err(|_| bad("msg_id is not a message id (16 hex digits)"))
}

fn chat_answer(a: Answer) -> Reply {
    match a {
        Answer::Later => Reply::None,
        Answer::Frame(f) => Reply::Frame(f),
        Answer::Error(e) => Reply::Error(e),
    }
}

fn handle_message(
    hub: &Hub,
    handle: &Arc<SessionHandle>,
    who: Who<'_>,
    msg: ClientMessage,
) -> Reply {
    let sid = handle.sid;
    let now = now_ms();
    let engine_result = |r: Result<(), CoreError>| match r {
        Ok(()) => Reply::None,
        Err(CoreError::UnknownSession) => Reply::Gone,
        Err(e) => Reply::Error(ProtocolError::new(ErrorCode::BadRequest, e.to_string())),
    };
    let user = who.user;
    match msg {
        ClientMessage::Hello { .. } => bad("this session already said hello"),
        ClientMessage::Activity {} => engine_result(hub.engine.activity(sid, now)),
        ClientMessage::Heartbeat {} => match hub.engine.heartbeat(sid, now) {
            Ok(()) => Reply::Frame(presence_wire::PONG.to_vec()),
            Err(e) => engine_result(Err(e)),
        },
        ClientMessage::Status { status, text } => {
            let Some(status) = Status::parse(&status) else {
                return bad("status must be available, busy, dnd or invisible");
            };
            // A status change is also activity: the person is there.
            let uid = presence_core::UserId(sid.user);
            match hub.engine.set_status(uid, status, text.as_deref(), now) {
                Ok(()) => engine_result(hub.engine.activity(sid, now)),
                Err(e) => engine_result(Err(e)),
            }
        }
        ClientMessage::Send {
            id,
            to,
            group,
            text,
        } => match target_of(to, group) {
            Ok(target) => chat_answer(hub.chat.send(hub, handle, user, &id, &target, &text)),
            Err(m) => Reply::Error(ProtocolError {
                code: ErrorCode::BadRequest,
                message: m.into(),
                id: Some(id),
            }),
        },
        ClientMessage::Ack { seq } => chat_answer(hub.chat.ack(user, who.device, seq)),
        ClientMessage::Sync { after, limit } => Reply::Sync {
            after,
            limit: limit.map_or(0, |l| l as usize),
        },
        ClientMessage::Typing { to, group } => {
            let target = match target_of(to, group) {
                Ok(t) => t,
                Err(m) => return bad(m),
            };
            match hub.chat.typing(hub, user, &target) {
                Ok(users) => {
                    let g = match &target {
                        Target::Group(g) => Some(g.as_str()),
                        Target::User(_) => None,
                    };
                    let frame = Bytes::from(frames::typing_frame(user, g));
                    for u in users {
                        for s in hub.sessions_of_name(&u) {
                            s.outbox.push_chat(ChatItem::Frame(frame.clone()));
                        }
                    }
                    Reply::None
                }
                Err(e) => Reply::Error(e),
            }
        }
        ClientMessage::Read { msg_id } => match parse_msg_id(&msg_id) {
            Ok(id) => chat_answer(hub.chat.write(|r| r.read(now, user, id, &Dir(hub)))),
            Err(r) => r,
        },
        ClientMessage::Edit { msg_id, text } => match parse_msg_id(&msg_id) {
            Ok(id) => chat_answer(hub.chat.write(|r| r.edit(now, user, id, &text, &Dir(hub)))),
            Err(r) => r,
        },
        ClientMessage::Delete { msg_id } => match parse_msg_id(&msg_id) {
            Ok(id) => chat_answer(hub.chat.write(|r| r.delete(now, user, id, &Dir(hub)))),
            Err(r) => r,
        },
        ClientMessage::History {
            with,
            group,
            before,
            limit,
        } => {
            let target = match target_of(with, group) {
                Ok(t) => t,
                Err(m) => return bad(m),
            };
            let before = match before.as_deref().map(parse_msg_id).transpose() {
                Ok(b) => b,
                Err(r) => return r,
            };
            Reply::History {
                target,
                before,
                limit: limit.map_or(0, |l| l as usize),
            }
        }
    }
}

/// `sync`: the page as `inbox` frames, then `synced`.
async fn sync<T: Transport>(
    hub: &Hub,
    t: &mut T,
    user: &str,
    after: u64,
    limit: usize,
) -> Result<(), ()> {
    let reader = hub.chat.reader().clone();
    let owner = user.to_owned();
    let page = match blocking(move || reader.sync(&owner, after, limit)).await {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            send_error(t, &refusal(&e, None)).await;
            return Ok(());
        }
        None => return Err(()),
    };
    metrics::counter!(m::CHAT_ENTRIES_READ).increment(page.entries.len() as u64);
    let mut last = after;
    for e in &page.entries {
        feed(t, frames::inbox_frame(e)).await?;
        last = e.seq;
    }
    write(t, frames::synced_frame(after, last, page.more)).await
}

/// `history`: one page, newest first.
async fn history(
    hub: &Arc<Hub>,
    user: &str,
    target: Target,
    before: Option<MsgId>,
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let hub2 = hub.clone();
    let owner = user.to_owned();
    let res = blocking(move || {
        let reader = hub2.chat.reader();
        let page = reader.history_page(limit);
        reader
            .history(&owner, &target, before, page, &Dir(&hub2))
            .map(|messages| frames::history_frame(&target, &messages, messages.len() >= page))
    })
    .await;
    match res {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(refusal(&e, None)),
        None => Err(ProtocolError::new(ErrorCode::Internal, "history failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let burst = (0..200).take_while(|_| b.take(t0)).count();
        assert_eq!(burst, RATE_BURST as usize);
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(60)));
        assert!(!b.take(t0 + Duration::from_millis(60)));
    }
}
