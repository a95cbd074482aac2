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

use crate::hub::{Hub, SessionHandle, now_ms};
use crate::metrics as m;
use crate::outbox::CloseReason;
use crate::protocol::{self, ClientMessage, ErrorCode, ProtocolError};
use crate::token;

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

/// A message-framed, bidirectional connection.
pub trait Transport: Send {
    /// The next frame; `Ok(None)` when the peer closed.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, RecvError>> + Send;
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;
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
    let frame = protocol::error_frame(e);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, t.send(frame)).await;
}

async fn fail<T: Transport>(t: &mut T, code: ErrorCode, message: impl Into<String>) {
    let e = ProtocolError::new(code, message);
    send_error(t, &e).await;
    t.close(&e.message).await;
}

/// Serves one connection to the end.
pub async fn run<T: Transport>(hub: Arc<Hub>, mut t: T, transport: &'static str) {
    metrics::counter!(m::CONNECTIONS, "transport" => transport).increment(1);
    // 1. hello, within the timeout.
    let first = tokio::select! {
        r = tokio::time::timeout(HELLO_TIMEOUT, t.recv()) => r,
        () = hub.shutdown.cancelled() => return t.close("node shutting down").await,
    };
    let frame = match first {
        Err(_) => return fail(&mut t, ErrorCode::Protocol, "no hello within 10 s").await,
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) | Ok(Err(RecvError::Io(_))) => return,
        Ok(Err(RecvError::TooLarge)) => {
            return fail(&mut t, ErrorCode::Protocol, "frame over 64 KiB").await;
        }
        Ok(Err(RecvError::Framing(m))) => return fail(&mut t, ErrorCode::Protocol, m).await,
    };
    let (token, device) = match protocol::parse_client(&frame) {
        Ok(ClientMessage::Hello { token, device, .. }) => (token, device),
        Ok(_) => {
            return fail(
                &mut t,
                ErrorCode::Protocol,
                "the first message must be hello",
            )
            .await;
        }
        Err(e) => {
            return fail(&mut t, ErrorCode::Protocol, e.message).await;
        }
    };
    let claims = match token::verify(&hub.secret, &token, now_ms() / 1000) {
        Ok(c) => c,
        Err(e) => return fail(&mut t, ErrorCode::Unauthorized, e.to_string()).await,
    };
    let device = match device.or(claims.dev.clone()) {
        Some(d) if d.is_empty() || d.len() > 128 => {
            return fail(&mut t, ErrorCode::Protocol, "device must be 1 to 128 bytes").await;
        }
        Some(d) => d,
        None => crate::datadir::random_hex(8).unwrap_or_else(|_| "device".into()),
    };
    let user = match hub.engine.intern(&claims.sub) {
        Ok(u) => u,
        Err(e) => return fail(&mut t, ErrorCode::Unauthorized, e.to_string()).await,
    };
    let (handle, welcome) = match hub.open_session(user, &device) {
        Ok(x) => x,
        Err(CoreError::TooManySessions { cap, .. }) => {
            let msg = format!("too many sessions for this user (at most {cap})");
            return fail(&mut t, ErrorCode::Forbidden, msg).await;
        }
        Err(e) => return fail(&mut t, ErrorCode::BadRequest, e.to_string()).await,
    };
    let span = info_span!("session", user = %claims.sub, device = %device, transport);
    metrics::gauge!(m::SESSIONS, "transport" => transport).increment(1.0);
    let how = serve(&hub, &mut t, &handle, welcome, &claims.sub, &device)
        .instrument(span)
        .await;
    hub.close_session(&handle, how);
    metrics::gauge!(m::SESSIONS, "transport" => transport).decrement(1.0);
}

fn welcome_frame(hub: &Hub, welcome: &presence_core::Welcome, user: &str, device: &str) -> Vec<u8> {
    let ecfg = hub.engine.config();
    let friends: Vec<serde_json::Value> = hub.engine.with_names(|name| {
        welcome
            .friends
            .iter()
            .map(|(id, p)| protocol::presence_value(name(*id).unwrap_or(""), p, ecfg))
            .collect()
    });
    let v = serde_json::json!({
        "type": "welcome",
        "user": user,
        "device": device,
        "heartbeat_ms": ecfg.heartbeat_timeout_ms,
        "idle_thresholds_ms": ecfg.idle_thresholds_ms,
        "inbox_seq": 0,
        "tick": welcome.tick,
        "friends": friends,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The session loop; returns how the session ended for the engine.
async fn serve<T: Transport>(
    hub: &Hub,
    t: &mut T,
    handle: &SessionHandle,
    welcome: presence_core::Welcome,
    user: &str,
    device: &str,
) -> Disconnect {
    let sid = handle.sid;
    let frame = welcome_frame(hub, &welcome, user, device);
    debug!(friends = welcome.friends.len(), "welcome");
    // The snapshot is not kept for the life of the session (150 friends ≈ 6 KB).
    drop(welcome);
    if write(t, frame).await.is_err() {
        return Disconnect::Dropped;
    }
    let mut bucket = Bucket::new(Instant::now());
    let mut strikes = 0u32;
    loop {
        tokio::select! {
            biased;
            () = handle.outbox.notify.notified() => {
                let taken = handle.outbox.take();
                if let Some((tick, items)) = taken.presence {
                    let frame = protocol::presence_frame(tick, items.iter().map(|(_, b)| b.as_ref()));
                    if write(t, frame).await.is_err() {
                        return Disconnect::Dropped;
                    }
                    metrics::counter!(m::FRAMES_SENT).increment(1);
                }
                match taken.close {
                    Some(CloseReason::HeartbeatTimeout) => {
                        fail(t, ErrorCode::Protocol, "heartbeat timeout").await;
                        return Disconnect::Dropped;
                    }
                    Some(CloseReason::Shutdown) => {
                        t.close("node shutting down").await;
                        return Disconnect::Dropped;
                    }
                    None => {}
                }
            }
            frame = t.recv() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(RecvError::Io(_)) => return Disconnect::Dropped,
                    Err(RecvError::TooLarge) => {
                        fail(t, ErrorCode::Protocol, "frame over 64 KiB").await;
                        return Disconnect::Dropped;
                    }
                    Err(RecvError::Framing(m)) => {
                        fail(t, ErrorCode::Protocol, m).await;
                        return Disconnect::Dropped;
                    }
                };
                if !bucket.take(Instant::now()) {
                    strikes += 1;
                    if strikes >= RATE_STRIKES {
                        warn!("flood: closing");
                        fail(t, ErrorCode::RateLimited, "too many messages; closing").await;
                        return Disconnect::Dropped;
                    }
                    if strikes == 1 {
                        send_error(t, &ProtocolError::new(ErrorCode::RateLimited, "slow down")).await;
                    }
                    continue;
                }
                strikes = 0;
                match handle_message(hub, sid, &frame) {
                    Reply::None => {}
                    Reply::Frame(f) => {
                        if write(t, f).await.is_err() {
                            return Disconnect::Dropped;
                        }
                    }
                    Reply::Error(e) => {
                        let closes = e.code.closes();
                        send_error(t, &e).await;
                        if closes {
                            t.close(&e.message).await;
                            return Disconnect::Dropped;
                        }
                    }
                    Reply::Gone => {
                        fail(t, ErrorCode::Protocol, "session expired").await;
                        return Disconnect::Dropped;
                    }
                }
            }
            () = hub.shutdown.cancelled() => {
                t.close("node shutting down").await;
                return Disconnect::Dropped;
            }
        }
    }
}

async fn write<T: Transport>(t: &mut T, frame: Vec<u8>) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, t.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

enum Reply {
    None,
    Frame(Vec<u8>),
    Error(ProtocolError),
    /// The engine no longer knows the session (expired).
    Gone,
}

fn handle_message(hub: &Hub, sid: presence_core::SessionId, frame: &[u8]) -> Reply {
    let msg = match protocol::parse_client(frame) {
        Ok(m) => m,
        Err(e) => return Reply::Error(e),
    };
    let now = now_ms();
    let engine_result = |r: Result<(), CoreError>| match r {
        Ok(()) => Reply::None,
        Err(CoreError::UnknownSession) => Reply::Gone,
        Err(e) => Reply::Error(ProtocolError::new(ErrorCode::BadRequest, e.to_string())),
    };
    match msg {
        ClientMessage::Hello { .. } => Reply::Error(ProtocolError::new(
            ErrorCode::BadRequest,
            "this session already said hello",
        )),
        ClientMessage::Activity {} => engine_result(hub.engine.activity(sid, now)),
        ClientMessage::Heartbeat {} => match hub.engine.heartbeat(sid, now) {
            Ok(()) => Reply::Frame(protocol::PONG.to_vec()),
            Err(e) => engine_result(Err(e)),
        },
        ClientMessage::Status { status, text } => {
            let Some(status) = Status::parse(&status) else {
                return Reply::Error(ProtocolError::new(
                    ErrorCode::BadRequest,
                    "status must be available, busy, dnd or invisible",
                ));
            };
            // A status change is also activity: the person is there.
            let user = presence_core::UserId(sid.user);
            match hub.engine.set_status(user, status, text.as_deref(), now) {
                Ok(()) => engine_result(hub.engine.activity(sid, now)),
                Err(e) => engine_result(Err(e)),
            }
        }
        ClientMessage::Send { id, .. } => Reply::Error(ProtocolError {
            code: ErrorCode::BadRequest,
            message: "chat is not enabled on this node yet".into(),
            id: Some(id),
        }),
        ClientMessage::Ack { .. }
        | ClientMessage::Sync { .. }
        | ClientMessage::Typing { .. }
        | ClientMessage::Read { .. }
        | ClientMessage::Edit { .. }
        | ClientMessage::Delete { .. } => Reply::Error(ProtocolError::new(
            ErrorCode::BadRequest,
            "chat is not enabled on this node yet",
        )),
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
