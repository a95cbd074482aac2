//! One client session as a state machine, the same behind WebSocket and QUIC: the hello and
//! its checks, the welcome, the rate limit, the inbox cursor and the answer to every client
//! message. The connection task feeds it what the client sent, what the session's outbox
//! holds and what a store read returned, each with `now`, and executes the [`Effects`] that
//! come back; nothing here awaits, reads a clock or touches a socket.
//!
//! The inbox cursor: a device must see every seq of its inbox once, in order. Entries arrive
//! live through the outbox; anything before them this connection has not had (a resume with
//! `hello.after`, entries a lagging outbox left out) is read back from the store first — the
//! session then asks for a [`Read::Inbox`] and holds the rest of what it was writing until
//! the read comes back.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use chat_relay::{MsgId, SyncPage, Target};
use presence_core::{Disconnect, Error as CoreError, Status};
use presence_wire::{ClientMessage, ErrorCode, ProtocolError};
use tracing::{debug, warn};

use super::Service;
use super::chat::{Answer, MessageOp, refusal};
use super::outbox::{ChatItem, CloseReason};
use super::registry::SessionHandle;
use crate::frames;
use crate::metrics as m;
use crate::token;

/// Token bucket: sustained messages per second and burst.
pub const RATE_PER_SEC: f64 = 20.0;
pub const RATE_BURST: f64 = 60.0;
/// Messages refused for rate before the connection is closed.
pub const RATE_STRIKES: u32 = 50;
/// Longest device id.
const MAX_DEVICE: usize = 128;

/// What a transport received.
#[derive(Debug)]
pub enum Received {
    /// A client message's frame.
    Frame(Bytes),
    /// A sign of life below the protocol (a WebSocket pong or ping): it keeps the session
    /// alive like a heartbeat, and needs no answer.
    Alive,
}

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

/// A store read the driver runs off the async workers ([`Service::read`]) and hands back
/// with [`Service::on_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The user's durable inbox head and this device's durable ack (for the welcome).
    Heads { user: String, device: String },
    /// Inbox entries after `after`, for the cursor.
    Inbox { user: String, after: u64 },
    /// A client's `sync`.
    Sync {
        user: String,
        after: u64,
        limit: usize,
    },
    /// The message an `edit`, `delete` or `read` acts on, from a shared chat store (the
    /// relay reads nothing under its lock).
    Message {
        user: String,
        id: MsgId,
        op: MessageOp,
    },
    /// A client's `history`.
    History {
        user: String,
        target: Target,
        before: Option<MsgId>,
        limit: usize,
    },
}

/// What a [`Read`] returned.
#[derive(Debug)]
pub enum ReadResult {
    Heads(Result<(u64, u64), chat_relay::ChatError>),
    Inbox(Result<SyncPage, chat_relay::ChatError>),
    Sync {
        after: u64,
        page: Result<SyncPage, chat_relay::ChatError>,
    },
    /// The rendered `history` frame.
    History(Result<Vec<u8>, chat_relay::ChatError>),
    Message {
        user: String,
        id: MsgId,
        op: MessageOp,
        found: Result<Option<chat_relay::StoredMessage>, chat_relay::StoreError>,
    },
}

/// How a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The close reason to send (after the frames); `None`: the connection is gone already.
    pub close: Option<String>,
    pub how: Disconnect,
}

/// What the driver must do, in this order: ping, write `frames` (in one write where it can),
/// run `read` and hand its result to [`Service::on_read`], or end the session.
#[must_use = "the driver must execute every effect"]
#[derive(Debug, Default)]
pub struct Effects {
    pub ping: bool,
    pub frames: Vec<Bytes>,
    /// Boxed: reads are rare, and effects pass by value on every wakeup.
    pub read: Option<Box<Read>>,
    pub end: Option<End>,
}

impl Effects {
    fn frame(mut self, f: impl Into<Bytes>) -> Self {
        self.frames.push(f.into());
        self
    }

    fn error(self, e: &ProtocolError) -> Self {
        metrics::counter!(m::ERRORS, "code" => e.code.as_str()).increment(1);
        self.frame(presence_wire::error_frame(e))
    }

    /// The error, then the close (the error's words are the close reason).
    fn fail(self, code: ErrorCode, message: impl Into<String>) -> Self {
        let e = ProtocolError::new(code, message);
        let mut fx = self.error(&e);
        fx.end = Some(End {
            close: Some(e.message),
            how: Disconnect::Dropped,
        });
        fx
    }

    /// This user's sessions belong elsewhere (cluster mode): `moved` with the owner's
    /// addresses, or `unavailable`; then the close.
    fn elsewhere(self, e: super::cluster::Elsewhere) -> Self {
        use super::cluster::Elsewhere;
        let code = e.code();
        metrics::counter!(m::ERRORS, "code" => code.as_str()).increment(1);
        let (message, frame) = match e {
            Elsewhere::Moved { node, ws, quic, lp } => {
                let message = format!("this user's sessions belong on node {node}");
                let frame = presence_wire::Error {
                    code,
                    message: message.as_str().into(),
                    ws: Some(ws.into()),
                    quic: Some(quic.into()),
                    lp: Some(lp.into()),
                    ..presence_wire::Error::default()
                }
                .to_frame();
                (message, frame)
            }
            Elsewhere::Unavailable(why) => (
                why.to_owned(),
                presence_wire::error_frame(&ProtocolError::new(code, why)),
            ),
        };
        let mut fx = self.frame(frame);
        fx.end = Some(End {
            close: Some(message),
            how: Disconnect::Dropped,
        });
        fx
    }

    fn dropped() -> Self {
        Effects {
            end: Some(End {
                close: None,
                how: Disconnect::Dropped,
            }),
            ..Effects::default()
        }
    }
}

/// A token bucket on the caller's clock (ms).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: u64,
}

impl Bucket {
    fn new(now: u64) -> Self {
        Self {
            tokens: RATE_BURST,
            last: now,
        }
    }

    fn take(&mut self, now: u64) -> bool {
        let dt = now.saturating_sub(self.last) as f64 / 1000.0;
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * RATE_PER_SEC).min(RATE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where the session is.
enum Stage {
    /// Waiting for the inbox heads to write the welcome (the snapshot is kept until then).
    Welcoming {
        welcome: Box<presence_core::Welcome>,
        after: Option<u64>,
        /// The device's ack not yet durable when the heads were asked for: read before the
        /// durable one, so an ack committed in between is in one of the two.
        unsettled_ack: u64,
    },
    /// Reading the inbox back from the store up to `until` (or to the end), then going on
    /// with `rest`.
    Filling {
        until: Option<u64>,
        rest: VecDeque<ChatItem>,
        lagging: bool,
        close: Option<CloseReason>,
    },
    Live,
}

/// One client's protocol state, owned by its connection task.
pub struct Session {
    handle: Arc<SessionHandle>,
    user: Box<str>,
    device: Box<str>,
    bucket: Bucket,
    /// Refusals for rate in a row.
    strikes: u32,
    /// The highest seq this session has acked. An `ack` that moves it forward, up to what
    /// the node has pushed to the session, is exempt from the bucket: the device owes it for
    /// entries the node sent (a busy group can push more than the sustained rate), so their
    /// number is bounded by the node's own output.
    acked: u64,
    /// The next inbox seq this device needs.
    next_seq: u64,
    stage: Stage,
}

impl Session {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// The hand-off point the tick and the chat delivery write to.
    pub fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    pub(super) fn into_handle(self) -> Arc<SessionHandle> {
        self.handle
    }

    /// The last inbox seq written to this connection.
    fn pushed(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }
}

/// No hello came within the hello timeout: the refusal to send before closing.
pub fn hello_timeout() -> Effects {
    Effects::default().fail(ErrorCode::Protocol, "no hello within 10 s")
}

/// The node is stopping: close without an error.
pub fn shutting_down() -> Effects {
    Effects {
        end: Some(End {
            close: Some("node shutting down".into()),
            how: Disconnect::Dropped,
        }),
        ..Effects::default()
    }
}

/// What a client message asks for besides frames.
enum Reply {
    None,
    Frame(Vec<u8>),
    Error(ProtocolError),
    /// The engine no longer knows the session (expired).
    Gone,
    Read(Read),
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

impl Service {
    /// The connection's first message: checks the hello and opens the session, whose
    /// effects then ask for the inbox heads; or the refusal and the close.
    pub fn hello(
        &self,
        first: Result<Option<Received>, RecvError>,
        now: u64,
    ) -> Result<(Session, Effects), Effects> {
        let fx = Effects::default();
        let frame = match first {
            Ok(Some(Received::Frame(f))) => f,
            Ok(Some(Received::Alive)) => {
                return Err(fx.fail(ErrorCode::Protocol, "the first message must be hello"));
            }
            Ok(None) | Err(RecvError::Io(_)) => return Err(Effects::dropped()),
            Err(RecvError::TooLarge) => {
                return Err(fx.fail(ErrorCode::Protocol, "frame over 64 KiB"));
            }
            Err(RecvError::Framing(m)) => return Err(fx.fail(ErrorCode::Protocol, m)),
        };
        let (token, device, after) = match presence_wire::parse_client(&frame) {
            Ok(ClientMessage::Hello {
                token,
                device,
                after,
            }) => (token, device, after),
            Ok(_) => return Err(fx.fail(ErrorCode::Protocol, "the first message must be hello")),
            Err(e) => return Err(fx.fail(ErrorCode::Protocol, e.message)),
        };
        let claims = match token::verify(&self.secret, &token, now / 1000) {
            Ok(c) => c,
            Err(e) => return Err(fx.fail(ErrorCode::Unauthorized, e.to_string())),
        };
        let device = match device.or(claims.dev) {
            Some(d) if d.is_empty() || d.len() > MAX_DEVICE => {
                return Err(fx.fail(ErrorCode::Protocol, "device must be 1 to 128 bytes"));
            }
            Some(d) => d,
            None => crate::datadir::random_hex(8).unwrap_or_else(|_| "device".into()),
        };
        if self.fenced(now) {
            return Err(fx.elsewhere(super::cluster::Elsewhere::Unavailable(
                "this node cannot prove its etcd lease right now: retry shortly",
            )));
        }
        if let Some(e) = self.elsewhere(&claims.sub) {
            return Err(fx.elsewhere(e));
        }
        let user = match self.engine.intern(&claims.sub) {
            Ok(u) => u,
            Err(e) => return Err(fx.fail(ErrorCode::Unauthorized, e.to_string())),
        };
        if self.routes.read().is_some() {
            // A user of a served slot with no friend in the store was not taken with it.
            self.take_lone_user(user, &claims.sub, now);
        }
        let (handle, welcome) = match self.open_session(user, &device, now) {
            Ok(x) => {
                self.views_opened(&x.0);
                x
            }
            Err(CoreError::TooManySessions { cap, .. }) => {
                let msg = format!("too many sessions for this user (at most {cap})");
                return Err(fx.fail(ErrorCode::Forbidden, msg));
            }
            Err(e) => return Err(fx.fail(ErrorCode::BadRequest, e.to_string())),
        };
        let read = Read::Heads {
            user: claims.sub.clone(),
            device: device.clone(),
        };
        let unsettled_ack = self.chat.unsettled_ack(&claims.sub, &device);
        let session = Session {
            handle,
            user: claims.sub.into(),
            device: device.into(),
            bucket: Bucket::new(now),
            strikes: 0,
            acked: 0,
            next_seq: 1,
            stage: Stage::Welcoming {
                welcome: Box::new(welcome),
                after,
                unsettled_ack,
            },
        };
        Ok((
            session,
            Effects {
                read: Some(Box::new(read)),
                ..Effects::default()
            },
        ))
    }

    /// Runs a store read. Blocking: the driver calls it on a blocking thread.
    pub fn read(&self, read: Read) -> ReadResult {
        let reader = self.chat.reader();
        match read {
            Read::Heads { user, device } => ReadResult::Heads(
                reader
                    .durable_head(&user)
                    .and_then(|head| Ok((head, reader.device_ack(&user, &device)?))),
            ),
            Read::Inbox { user, after } => ReadResult::Inbox(reader.sync(&user, after, 0)),
            Read::Message { user, id, op } => ReadResult::Message {
                found: self.chat.store().message(id),
                user,
                id,
                op,
            },
            Read::Sync { user, after, limit } => ReadResult::Sync {
                after,
                page: reader.sync(&user, after, limit),
            },
            Read::History {
                user,
                target,
                before,
                limit,
            } => {
                let page = reader.history_page(limit);
                ReadResult::History(
                    reader
                        .history(&user, &target, before, page, &self.dir())
                        .map(|msgs| frames::history_frame(&target, &msgs, msgs.len() >= page)),
                )
            }
        }
    }

    /// A store read came back.
    pub fn on_read(&self, s: &mut Session, result: ReadResult, now: u64) -> Effects {
        match result {
            ReadResult::Heads(heads) => self.welcome(s, heads),
            ReadResult::Inbox(Ok(page)) => {
                metrics::counter!(m::CHAT_ENTRIES_READ).increment(page.entries.len() as u64);
                self.filled(s, page, Effects::default())
            }
            ReadResult::Inbox(Err(e)) => {
                warn!("reading the inbox back failed: {e}");
                Effects::dropped()
            }
            ReadResult::Sync { after, page } => match page {
                Ok(page) => {
                    metrics::counter!(m::CHAT_ENTRIES_READ).increment(page.entries.len() as u64);
                    let mut fx = Effects::default();
                    let mut last = after;
                    for e in &page.entries {
                        fx = fx.frame(frames::inbox_frame(e));
                        last = e.seq;
                    }
                    fx.frame(frames::synced_frame(after, last, page.more))
                }
                Err(e) => Effects::default().error(&refusal(&e, None)),
            },
            ReadResult::Message {
                user,
                id,
                op,
                found,
            } => match found {
                Ok(m) => {
                    let answer = self
                        .chat
                        .message_op(&self.dir(), &user, id, &op, Some(m), now);
                    match answer {
                        Some(Answer::Error(e)) => Effects::default().error(&e),
                        Some(Answer::Frame(f)) => Effects::default().frame(f),
                        Some(Answer::Later) | None => Effects::default(),
                    }
                }
                Err(e) => {
                    warn!("reading a message for an edit, delete or read failed: {e}");
                    Effects::default().error(&refusal(&chat_relay::ChatError::Store(e), None))
                }
            },
            ReadResult::History(Ok(frame)) => Effects::default().frame(frame),
            ReadResult::History(Err(e)) => Effects::default().error(&refusal(&e, None)),
        }
    }

    /// `edit`, `delete` or `read` of a message: at once, or after the message is read from
    /// a shared store.
    fn message_op(
        &self,
        dir: &super::chat::Dir<'_>,
        user: &str,
        id: MsgId,
        op: MessageOp,
        now: u64,
    ) -> Reply {
        match self.chat.message_op(dir, user, id, &op, None, now) {
            Some(answer) => chat_answer(answer),
            None => Reply::Read(Read::Message {
                user: user.to_owned(),
                id,
                op,
            }),
        }
    }

    /// The welcome, once the inbox heads are known; then a resume from `after`.
    fn welcome(
        &self,
        s: &mut Session,
        heads: Result<(u64, u64), chat_relay::ChatError>,
    ) -> Effects {
        let Stage::Welcoming {
            welcome,
            after,
            unsettled_ack,
        } = std::mem::replace(&mut s.stage, Stage::Live)
        else {
            return Effects::default();
        };
        let (inbox_seq, durable_ack) = match heads {
            Ok(h) => h,
            Err(e) => {
                warn!("reading the inbox head failed: {e}");
                return Effects::default()
                    .fail(ErrorCode::Internal, "the inbox cannot be read; try again");
            }
        };
        // Acks not yet durable count too: the device must not be offered them again.
        let acked_seq = durable_ack.max(unsettled_ack);
        let head = frames::WelcomeHead {
            user: &s.user,
            device: &s.device,
            inbox_seq,
            acked_seq,
            tick: welcome.tick,
        };
        let cfg = self.engine.config();
        let frame = self.engine.with_names(|name| {
            let friends = welcome
                .friends
                .iter()
                .map(|(id, p)| (name(*id).unwrap_or(""), p));
            frames::welcome_frame(&head, friends, cfg)
        });
        debug!(friends = welcome.friends.len(), inbox_seq, "welcome");
        s.next_seq = after.map_or(inbox_seq, |a| a.min(inbox_seq)) + 1;
        let fx = Effects::default().frame(frame);
        if after.is_some() {
            self.fill(s, None, VecDeque::new(), false, None, fx)
        } else {
            fx
        }
    }

    /// Asks for the inbox from the cursor on, holding `rest` until it is read.
    fn fill(
        &self,
        s: &mut Session,
        until: Option<u64>,
        rest: VecDeque<ChatItem>,
        lagging: bool,
        close: Option<CloseReason>,
        mut fx: Effects,
    ) -> Effects {
        s.stage = Stage::Filling {
            until,
            rest,
            lagging,
            close,
        };
        fx.read = Some(Box::new(Read::Inbox {
            user: s.user.to_string(),
            after: s.pushed(),
        }));
        fx
    }

    /// A page of the inbox came back for the cursor.
    fn filled(&self, s: &mut Session, page: SyncPage, mut fx: Effects) -> Effects {
        let Stage::Filling { until, .. } = &s.stage else {
            return fx;
        };
        let until = *until;
        let mut reached = false;
        for e in &page.entries {
            if until.is_some_and(|u| e.seq > u) {
                reached = true;
                break;
            }
            if e.seq < s.next_seq {
                continue;
            }
            fx = fx.frame(frames::inbox_frame(e));
            s.next_seq = e.seq + 1;
        }
        if !reached && page.more && !page.entries.is_empty() {
            fx.read = Some(Box::new(Read::Inbox {
                user: s.user.to_string(),
                after: s.pushed(),
            }));
            return fx;
        }
        let Stage::Filling {
            rest,
            lagging,
            close,
            ..
        } = std::mem::replace(&mut s.stage, Stage::Live)
        else {
            return fx;
        };
        // Entries the store no longer has (trimmed by retention) are gone for good: step past
        // them, or the live entry after the gap would ask for the same read forever.
        if let Some(u) = until {
            s.next_seq = s.next_seq.max(u + 1);
        }
        self.write_chat(s, rest, lagging, close, fx)
    }

    /// The session's outbox has something: presence, chat frames, a ping or a close.
    pub fn on_outbox(&self, s: &mut Session, now: u64) -> Effects {
        let taken = s.handle.outbox.take();
        let mut fx = Effects {
            ping: taken.ping,
            ..Effects::default()
        };
        if let Some((tick, items)) = taken.presence {
            fx = fx.frame(presence_wire::presence_frame(
                tick,
                items.iter().map(|(_, b)| b.as_ref()),
            ));
            metrics::counter!(m::FRAMES_SENT).increment(1);
            if let Some(at) = self.tick_times.at(taken.presence_since) {
                let waited = now.saturating_sub(at) as f64 / 1000.0;
                metrics::histogram!(m::FRAME_DELAY_SECONDS).record(waited);
            }
        }
        if let Some((tick, items)) = s.handle.take_counts() {
            fx = fx.frame(presence_wire::group_counts_frame(
                tick,
                items.iter().map(|(_, b)| b.as_ref()),
            ));
        }
        self.write_chat(s, taken.chat, taken.lagging, taken.close, fx)
    }

    /// Writes chat items in order, filling any gap before an inbox entry from the store, then
    /// reads back what a lagging outbox left out, then closes if asked to.
    fn write_chat(
        &self,
        s: &mut Session,
        mut items: VecDeque<ChatItem>,
        lagging: bool,
        close: Option<CloseReason>,
        mut fx: Effects,
    ) -> Effects {
        while let Some(item) = items.pop_front() {
            match item {
                ChatItem::Frame(f) => fx.frames.push(f),
                ChatItem::Inbox { seq, frame } => {
                    if seq > s.next_seq {
                        items.push_front(ChatItem::Inbox { seq, frame });
                        return self.fill(s, Some(seq - 1), items, lagging, close, fx);
                    }
                    if seq == s.next_seq {
                        fx.frames.push(frame);
                        s.next_seq = seq + 1;
                    }
                }
            }
        }
        if lagging {
            return self.fill(s, None, VecDeque::new(), false, close, fx);
        }
        match close {
            Some(CloseReason::HeartbeatTimeout) => {
                fx.fail(ErrorCode::Protocol, "heartbeat timeout")
            }
            Some(CloseReason::Shutdown) => {
                fx.end = shutting_down().end;
                fx
            }
            // Unless the slot came back meanwhile.
            Some(CloseReason::Moved) => match self.elsewhere(&s.user) {
                Some(e) => fx.elsewhere(e),
                None => fx,
            },
            None => fx,
        }
    }

    /// What the client sent (or that the connection ended).
    pub fn on_received(
        &self,
        s: &mut Session,
        received: Result<Option<Received>, RecvError>,
        now: u64,
    ) -> Effects {
        let fx = Effects::default();
        let frame = match received {
            Ok(Some(Received::Frame(f))) => f,
            Ok(Some(Received::Alive)) => {
                return match self.engine.heartbeat(s.handle.sid, now) {
                    Err(CoreError::UnknownSession) => {
                        fx.fail(ErrorCode::Protocol, "session expired")
                    }
                    _ => fx,
                };
            }
            Ok(None) | Err(RecvError::Io(_)) => return Effects::dropped(),
            Err(RecvError::TooLarge) => return fx.fail(ErrorCode::Protocol, "frame over 64 KiB"),
            Err(RecvError::Framing(m)) => return fx.fail(ErrorCode::Protocol, m),
        };
        let msg = presence_wire::parse_client(&frame);
        // Any frame is a sign of life (v1.1); these three already count as one in the engine.
        if !matches!(
            msg,
            Ok(ClientMessage::Activity {}
                | ClientMessage::Heartbeat {}
                | ClientMessage::Status { .. })
        ) {
            let _ = self.engine.heartbeat(s.handle.sid, now);
        }
        let owed_ack = match msg {
            Ok(ClientMessage::Ack { seq }) if seq > s.acked && seq <= s.pushed() => Some(seq),
            _ => None,
        };
        if let Some(seq) = owed_ack {
            s.acked = seq;
        } else if !s.bucket.take(now) {
            s.strikes += 1;
            if s.strikes >= RATE_STRIKES {
                warn!("flood: closing");
                return fx.fail(ErrorCode::RateLimited, "too many messages; closing");
            }
            // A refused send is answered with its id, so the client knows what to retry;
            // other refused messages get one "slow down" per burst.
            let id = match msg {
                Ok(ClientMessage::Send { id, .. }) => Some(id),
                Ok(_) => None,
                Err(_) => refused_send_id(&frame),
            };
            if s.strikes == 1 || id.is_some() {
                return fx.error(&ProtocolError {
                    code: ErrorCode::RateLimited,
                    message: "slow down".into(),
                    id,
                });
            }
            return fx;
        } else {
            s.strikes = 0;
        }
        let reply = match msg {
            Ok(m) => self.dispatch(s, m, now),
            Err(e) => Reply::Error(e),
        };
        match reply {
            Reply::None => fx,
            Reply::Frame(f) => fx.frame(f),
            Reply::Read(r) => Effects {
                read: Some(Box::new(r)),
                ..fx
            },
            Reply::Error(e) if e.code.closes() => fx.fail(e.code, e.message),
            Reply::Error(e) => fx.error(&e),
            Reply::Gone => fx.fail(ErrorCode::Protocol, "session expired"),
        }
    }

    /// One parsed client message.
    fn dispatch(&self, s: &Session, msg: ClientMessage, now: u64) -> Reply {
        let sid = s.handle.sid;
        let engine_result = |r: Result<(), CoreError>| match r {
            Ok(()) => Reply::None,
            Err(CoreError::UnknownSession) => Reply::Gone,
            Err(e) => Reply::Error(ProtocolError::new(ErrorCode::BadRequest, e.to_string())),
        };
        let user = &*s.user;
        let dir = self.dir();
        match msg {
            ClientMessage::Hello { .. } => bad("this session already said hello"),
            ClientMessage::Activity {} => engine_result(self.engine.activity(sid, now)),
            ClientMessage::Heartbeat {} => match self.engine.heartbeat(sid, now) {
                Ok(()) => Reply::Frame(presence_wire::PONG.to_vec()),
                Err(e) => engine_result(Err(e)),
            },
            ClientMessage::Status { status, text } => {
                let Some(status) = Status::parse(&status) else {
                    return bad("status must be available, busy, dnd or invisible");
                };
                // A status change is also activity: the person is there.
                let uid = presence_core::UserId(sid.user);
                match self.engine.set_status(uid, status, text.as_deref(), now) {
                    Ok(()) => {
                        if self.cfg.is_cluster() {
                            self.statuses.record(user, status, text.as_deref());
                        }
                        engine_result(self.engine.activity(sid, now))
                    }
                    Err(e) => engine_result(Err(e)),
                }
            }
            ClientMessage::Send {
                id,
                to,
                group,
                text,
            } => match target_of(to, group) {
                Ok(target) => chat_answer(
                    self.chat
                        .send(&dir, &s.handle, user, &id, &target, &text, now),
                ),
                Err(m) => Reply::Error(ProtocolError {
                    code: ErrorCode::BadRequest,
                    message: m.into(),
                    id: Some(id),
                }),
            },
            ClientMessage::Ack { seq } => chat_answer(self.chat.ack(user, &s.device, seq)),
            ClientMessage::Sync { after, limit } => Reply::Read(Read::Sync {
                user: user.to_owned(),
                after,
                limit: limit.map_or(0, |l| l as usize),
            }),
            ClientMessage::Typing { to, group } => {
                let target = match target_of(to, group) {
                    Ok(t) => t,
                    Err(m) => return bad(m),
                };
                match self.chat.typing(&dir, user, &target, now) {
                    Ok(users) => {
                        let g = match &target {
                            Target::Group(g) => Some(g.as_str()),
                            Target::User(_) => None,
                        };
                        let frame = Bytes::from(frames::typing_frame(user, g));
                        for u in users {
                            match dir.home_of(&u) {
                                super::chat::Home::Here => {
                                    for h in dir.sessions_of(&u) {
                                        h.outbox.push_chat(ChatItem::Frame(frame.clone()));
                                    }
                                }
                                super::chat::Home::Node(node) => self.queue_peer_chat(
                                    node,
                                    presence_peer::ChatPush {
                                        owner: u,
                                        seq: 0,
                                        frame: frame.to_vec(),
                                        message: None,
                                    },
                                ),
                                super::chat::Home::Nowhere => {}
                            }
                        }
                        Reply::None
                    }
                    Err(e) => Reply::Error(e),
                }
            }
            ClientMessage::Read { msg_id } => match parse_msg_id(&msg_id) {
                Ok(id) => self.message_op(&dir, user, id, MessageOp::Read, now),
                Err(r) => r,
            },
            ClientMessage::Edit { msg_id, text } => match parse_msg_id(&msg_id) {
                Ok(id) => self.message_op(&dir, user, id, MessageOp::Edit(text), now),
                Err(r) => r,
            },
            ClientMessage::Delete { msg_id } => match parse_msg_id(&msg_id) {
                Ok(id) => self.message_op(&dir, user, id, MessageOp::Delete, now),
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
                Reply::Read(Read::History {
                    user: user.to_owned(),
                    target,
                    before,
                    limit: limit.map_or(0, |l| l as usize),
                })
            }
            ClientMessage::Focus { users } => match self.focus(&s.handle, users) {
                Ok(()) => Reply::None,
                Err(e) => Reply::Error(e),
            },
            ClientMessage::WatchGroup {
                group,
                counts,
                members,
            } => match self.watch_group(&s.handle, user, &group, counts, members) {
                Ok(()) => Reply::None,
                Err(e) => Reply::Error(e),
            },
            ClientMessage::UnwatchGroup { group } => match self.unwatch_group(&s.handle, &group) {
                Ok(()) => Reply::None,
                Err(e) => Reply::Error(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_sustained_rate() {
        let t0 = 1_000_000;
        let mut b = Bucket::new(t0);
        let burst = (0..200).take_while(|_| b.take(t0)).count();
        assert_eq!(burst, RATE_BURST as usize);
        assert!(!b.take(t0));
        assert!(b.take(t0 + 60));
        assert!(!b.take(t0 + 60));
    }
}
