//! One long-poll session: a service [`Session`] like a WebSocket's, driven by a task of its
//! own, whose frames wait in a numbered buffer until a poll takes them.
//!
//! - Frames are numbered from 1 in the order the session wrote them; a poll with cursor `C`
//!   forgets every frame up to `C` and gets those after it, so a lost answer is sent again by
//!   the next poll with the same cursor.
//! - The task takes the session's outbox only while a poll waits (or to end the session):
//!   between polls, presence stays in the outbox, merged latest-per-friend as for a slow
//!   WebSocket reader, and chat entries past the outbox's cap are read back from the store.
//! - The buffer is bounded ([`BUFFER_MAX`] bytes): past it, writing waits for a poll to make
//!   room, as a WebSocket write waits for the socket, and the session ends if none comes
//!   within the write timeout.
//! - Every request of the session reaches the service as a sign of life (a heartbeat).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use presence_core::Disconnect;
use presence_wire::{ErrorCode, ProtocolError};
use tokio::sync::{Notify, mpsc};
use tracing::{Instrument, info_span};

use crate::connection::{self, Transport};
use crate::metrics as m;
use crate::node::{Node, now_ms};
use crate::service::session::{self, Effects, Received, RecvError, Session};

/// Bytes of frames a session holds for its polls before writing waits for one.
pub const BUFFER_MAX: usize = 256 * 1024;
/// Bytes of frames one answer carries at most (at least one frame, however large).
pub const ANSWER_MAX: usize = 256 * 1024;
/// Client messages and signs of life queued for the session task.
const INCOMING: usize = 128;

/// What a request hands the session task.
#[derive(Debug)]
pub enum Incoming {
    Frame(Bytes),
    /// A request of the session arrived or ended: a heartbeat.
    Alive,
    /// `close`: end like a WebSocket closed by its client.
    Close,
}

/// What a session's requests share with its task.
pub struct Lp {
    /// Not secret, for logs: the session's number on this node.
    pub id: u64,
    pub user: Box<str>,
    pub device: Box<str>,
    state: parking_lot::Mutex<State>,
    /// Frames were written, a newer poll came, or the session ended.
    changed: Notify,
    /// A poll acknowledged frames: the buffer has room.
    room: Notify,
    /// A poll started: the task may take the outbox.
    poll_started: Notify,
    pub incoming: mpsc::Sender<Incoming>,
}

#[derive(Default)]
struct State {
    /// Frames after `acked`, with their numbers.
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The client has every frame up to this one (the last cursor it polled with).
    acked: u64,
    /// The number of the last frame written.
    last: u64,
    /// The newest poll's number (0: none yet), and whether it is still waiting.
    poll: u64,
    waiting: bool,
    /// The last frame written, if it was an `error`: what ended the session, when it ends.
    last_error: Option<Bytes>,
    /// Set when the session has ended: the `410` answer, and when.
    ended: Option<(Bytes, Instant)>,
    /// `close` was asked: a write waiting for room gives up at once.
    closing: bool,
}

/// What a poll gets.
#[derive(Debug)]
pub enum Taken {
    Frames {
        cursor: u64,
        frames: Vec<Bytes>,
    },
    /// A newer poll took over, or nothing came in time.
    Empty {
        cursor: u64,
    },
    /// The session has ended: the `410` body.
    Ended(Bytes),
}

/// Why a poll's cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// Past the last frame written.
    Ahead { last: u64 },
    /// Behind a cursor already polled with: those frames are forgotten.
    Behind { acked: u64 },
}

impl Lp {
    pub fn new(id: u64, user: &str, device: &str) -> (Arc<Lp>, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(INCOMING);
        let lp = Arc::new(Lp {
            id,
            user: user.into(),
            device: device.into(),
            state: parking_lot::Mutex::new(State::default()),
            changed: Notify::new(),
            room: Notify::new(),
            poll_started: Notify::new(),
            incoming: tx,
        });
        (lp, rx)
    }

    /// The `410` body, if the session has ended.
    pub fn ended(&self) -> Option<Bytes> {
        self.state.lock().ended.as_ref().map(|(b, _)| b.clone())
    }

    /// When the session ended, if it has.
    pub fn ended_at(&self) -> Option<Instant> {
        self.state.lock().ended.as_ref().map(|(_, t)| *t)
    }

    /// Whether a poll is waiting now.
    fn polling(&self) -> bool {
        self.state.lock().waiting
    }

    /// A poll with `cursor` starts: forgets the frames up to it and becomes the newest poll
    /// (ending any older one). Returns the poll's number.
    pub fn start_poll(&self, cursor: u64) -> Result<u64, CursorError> {
        let n = {
            let mut st = self.state.lock();
            if cursor > st.last {
                return Err(CursorError::Ahead { last: st.last });
            }
            if cursor < st.acked {
                return Err(CursorError::Behind { acked: st.acked });
            }
            while st.frames.front().is_some_and(|(seq, _)| *seq <= cursor) {
                if let Some((_, f)) = st.frames.pop_front() {
                    st.bytes -= f.len();
                }
            }
            st.acked = cursor;
            st.poll += 1;
            st.waiting = true;
            st.poll
        };
        self.room.notify_waiters();
        self.changed.notify_waiters();
        self.poll_started.notify_one();
        Ok(n)
    }

    /// Poll `n` stops waiting (answered, or its request went away).
    pub fn end_poll(&self, n: u64) {
        let mut st = self.state.lock();
        if st.poll == n {
            st.waiting = false;
        }
    }

    /// What poll `n` (or the open, `n == 0`) may answer now with, or `None` to wait.
    fn try_take(&self, n: u64, cursor: u64) -> Option<Taken> {
        let st = self.state.lock();
        if let Some((body, _)) = &st.ended {
            return Some(Taken::Ended(body.clone()));
        }
        if n != 0 && st.poll != n {
            return Some(Taken::Empty { cursor });
        }
        let mut size = 0;
        let mut frames = Vec::new();
        let mut last = cursor;
        for (seq, f) in st.frames.iter().filter(|(seq, _)| *seq > cursor) {
            if !frames.is_empty() && size + f.len() > ANSWER_MAX {
                break;
            }
            size += f.len();
            frames.push(f.clone());
            last = *seq;
        }
        (!frames.is_empty()).then_some(Taken::Frames {
            cursor: last,
            frames,
        })
    }

    /// Waits until poll `n` (or the open, `n == 0`) can be answered, at most until `deadline`.
    pub async fn take(&self, n: u64, cursor: u64, deadline: tokio::time::Instant) -> Taken {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(t) = self.try_take(n, cursor) {
                return t;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return self.try_take(n, cursor).unwrap_or(Taken::Empty { cursor });
                }
            }
        }
    }

    /// `close`: ends the session like a WebSocket closed by its client, even if it is
    /// waiting for a poll to make room for its frames.
    pub fn request_close(&self) {
        self.state.lock().closing = true;
        self.room.notify_waiters();
        let _ = self.incoming.try_send(Incoming::Close);
    }

    /// Waits until the session has ended, at most until `deadline`.
    pub async fn wait_ended(&self, deadline: tokio::time::Instant) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.lock().ended.is_some() {
                return;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Marks the session ended with `body` as every later call's `410` answer; drops the
    /// frames no poll took (chat is read back with `after`, presence comes with the next
    /// welcome).
    fn end(&self, body: Bytes) {
        {
            let mut st = self.state.lock();
            st.ended.get_or_insert((body, Instant::now()));
            st.frames.clear();
            st.bytes = 0;
            st.waiting = false;
        }
        self.changed.notify_waiters();
        self.room.notify_waiters();
    }
}

/// The session's end of its buffer, as the connection driver's [`Transport`].
struct LpTransport {
    lp: Arc<Lp>,
    rx: mpsc::Receiver<Incoming>,
    /// The reason the service closed with, if it did.
    closed: Option<String>,
}

fn is_error(frame: &[u8]) -> bool {
    frame.starts_with(br#"{"type":"error""#)
}

impl Transport for LpTransport {
    async fn recv(&mut self) -> Result<Option<Received>, RecvError> {
        if self.lp.state.lock().closing {
            return Ok(None);
        }
        Ok(match self.rx.recv().await {
            Some(Incoming::Frame(f)) => Some(Received::Frame(f)),
            Some(Incoming::Alive) => Some(Received::Alive),
            Some(Incoming::Close) | None => None,
        })
    }

    /// Every request is a sign of life already: nothing to ask.
    async fn ping(&mut self) -> std::io::Result<bool> {
        Ok(false)
    }

    /// Buffers the frame, waiting for room while the buffer is full (the driver's write
    /// timeout ends the session if no poll makes room).
    async fn feed(&mut self, frame: Bytes) -> std::io::Result<()> {
        loop {
            let room = self.lp.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.lp.state.lock();
                if st.ended.is_some() || st.closing {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                if st.bytes < BUFFER_MAX || st.frames.is_empty() {
                    st.last += 1;
                    let seq = st.last;
                    st.bytes += frame.len();
                    st.last_error = is_error(&frame).then(|| frame.clone());
                    st.frames.push_back((seq, frame));
                    return Ok(());
                }
            }
            room.await;
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.lp.changed.notify_waiters();
        Ok(())
    }

    async fn close(&mut self, reason: &str) {
        self.closed = Some(reason.to_owned());
    }
}

/// Starts the task that drives `session` (whose hello `fx` it executes first) until it ends.
pub fn spawn(
    node: Arc<Node>,
    session: Session,
    fx: Effects,
    lp: Arc<Lp>,
    rx: mpsc::Receiver<Incoming>,
) {
    let span =
        info_span!("session", user = %lp.user, device = %lp.device, transport = "lp", lp = lp.id);
    let t = LpTransport {
        lp,
        rx,
        closed: None,
    };
    tokio::spawn(run(node, session, fx, t).instrument(span));
}

async fn run(node: Arc<Node>, mut s: Session, fx: Effects, mut t: LpTransport) {
    metrics::gauge!(m::SESSIONS, "transport" => "lp").increment(1.0);
    let how = match connection::execute(&node, &mut t, &mut s, fx).await {
        Some(how) => how,
        None => serve(&node, &mut t, &mut s).await,
    };
    let last_error = t.lp.state.lock().last_error.take();
    let body = match (&t.closed, last_error) {
        // The service closed right after the error that says why (`moved` names where to
        // go): the close reason is that error's message.
        (Some(reason), Some(e)) if error_message(&e).as_deref() == Some(reason.as_str()) => e,
        (Some(reason), _) => ended_frame(ErrorCode::Protocol, reason),
        (None, _) => ended_frame(ErrorCode::Protocol, "session ended"),
    };
    t.lp.end(body);
    node.service().close(s, how, now_ms());
    metrics::gauge!(m::SESSIONS, "transport" => "lp").decrement(1.0);
}

/// The `message` of a rendered `error` frame.
fn error_message(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        message: String,
    }
    serde_json::from_slice::<Probe>(frame)
        .ok()
        .map(|p| p.message)
}

/// An `error` message as a `410` body.
pub fn ended_frame(code: ErrorCode, message: &str) -> Bytes {
    Bytes::from(presence_wire::error_frame(&ProtocolError::new(
        code, message,
    )))
}

/// The session loop, as the WebSocket's in [`connection`], except that the outbox is taken
/// only while a poll waits (or when it holds a close).
async fn serve(node: &Arc<Node>, t: &mut LpTransport, s: &mut Session) -> Disconnect {
    let svc = node.service();
    let lp = t.lp.clone();
    // The outbox woke while no poll waited: take it when one comes.
    let mut pending = false;
    loop {
        let fx = tokio::select! {
            biased;
            () = s.handle().outbox.wakeup.notified() => {
                if lp.polling() || s.handle().outbox.closing() {
                    pending = false;
                    svc.on_outbox(s, now_ms())
                } else {
                    pending = true;
                    continue;
                }
            }
            () = lp.poll_started.notified(), if pending => {
                if !lp.polling() {
                    continue;
                }
                pending = false;
                svc.on_outbox(s, now_ms())
            }
            frame = t.recv() => svc.on_received(s, frame, now_ms()),
            () = node.shutdown().cancelled() => session::shutting_down(),
        };
        if let Some(how) = Box::pin(connection::execute(node, t, s, fx)).await {
            return how;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn feed(lp: &Arc<Lp>, n: u64) {
        let mut st = lp.state.lock();
        for _ in 0..n {
            st.last += 1;
            let seq = st.last;
            let f = Bytes::from(format!(r#"{{"n":{seq}}}"#));
            st.bytes += f.len();
            st.frames.push_back((seq, f));
        }
    }

    #[test]
    fn a_cursor_forgets_what_it_covers_and_a_repeat_gets_the_same() {
        let (lp, _rx) = Lp::new(1, "u", "d");
        feed(&lp, 3);
        let p = lp.start_poll(0).expect("poll");
        let Some(Taken::Frames { cursor, frames }) = lp.try_take(p, 0) else {
            panic!("frames")
        };
        assert_eq!((cursor, frames.len()), (3, 3));
        // The answer was lost: the same cursor again gets the same frames.
        let p = lp.start_poll(0).expect("poll");
        let Some(Taken::Frames { cursor, .. }) = lp.try_take(p, 0) else {
            panic!("frames")
        };
        assert_eq!(cursor, 3);
        let p = lp.start_poll(3).expect("poll");
        assert!(lp.try_take(p, 3).is_none(), "nothing new");
        assert_eq!(lp.state.lock().frames.len(), 0, "forgotten");
        assert_eq!(lp.start_poll(2), Err(CursorError::Behind { acked: 3 }));
        assert_eq!(lp.start_poll(4), Err(CursorError::Ahead { last: 3 }));
    }

    #[test]
    fn a_newer_poll_ends_the_older_with_nothing() {
        let (lp, _rx) = Lp::new(1, "u", "d");
        let old = lp.start_poll(0).expect("poll");
        let new = lp.start_poll(0).expect("poll");
        feed(&lp, 1);
        assert!(matches!(
            lp.try_take(old, 0),
            Some(Taken::Empty { cursor: 0 })
        ));
        assert!(matches!(
            lp.try_take(new, 0),
            Some(Taken::Frames { cursor: 1, .. })
        ));
        lp.end_poll(old);
        assert!(lp.polling(), "the newer poll still waits");
        lp.end_poll(new);
        assert!(!lp.polling());
    }

    #[test]
    fn an_answer_is_bounded() {
        let (lp, _rx) = Lp::new(1, "u", "d");
        {
            let mut st = lp.state.lock();
            for seq in 1..=3 {
                st.last = seq;
                st.frames
                    .push_back((seq, Bytes::from(vec![b' '; ANSWER_MAX / 2])));
            }
        }
        let p = lp.start_poll(0).expect("poll");
        let Some(Taken::Frames { cursor, frames }) = lp.try_take(p, 0) else {
            panic!("frames")
        };
        assert_eq!((cursor, frames.len()), (2, 2));
    }

    #[tokio::test]
    async fn a_full_buffer_makes_writes_wait_for_a_poll_or_a_close() {
        let (lp, rx) = Lp::new(1, "u", "d");
        let mut t = LpTransport {
            lp: lp.clone(),
            rx,
            closed: None,
        };
        let big = Bytes::from(vec![b' '; BUFFER_MAX]);
        t.feed(big.clone()).await.expect("room for one");
        let waiting = tokio::time::timeout(Duration::from_millis(50), t.feed(big.clone())).await;
        assert!(waiting.is_err(), "full: the write waits");
        // A poll that acknowledges the first frame makes room.
        lp.start_poll(1).expect("poll");
        tokio::time::timeout(Duration::from_secs(1), t.feed(big.clone()))
            .await
            .expect("room after the poll")
            .expect("written");
        // Full again; a close ends the wait at once.
        let lp2 = lp.clone();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            lp2.request_close();
        });
        let r = tokio::time::timeout(Duration::from_secs(1), t.feed(big)).await;
        assert!(matches!(r, Ok(Err(_))), "the write gives up");
        closer.await.expect("closer");
        assert!(matches!(t.recv().await, Ok(None)), "and the session ends");
    }

    #[test]
    fn error_frames_are_recognised() {
        let f = presence_wire::error_frame(&ProtocolError::new(ErrorCode::Protocol, "x"));
        assert!(is_error(&f), "{}", String::from_utf8_lossy(&f));
        assert_eq!(error_message(&f).as_deref(), Some("x"));
        assert!(!is_error(presence_wire::PONG));
    }
}
