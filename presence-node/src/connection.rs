//! One client connection, the same behind WebSocket and QUIC: the driver of a
//! [`Session`]. It waits for the hello, then for whatever comes
//! first — a client frame, the session's outbox, shutdown — hands it to the service with
//! `now`, and executes the effects: writes frames, runs store reads off the async workers
//! and feeds their results back, closes. Every protocol decision is the service's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use presence_core::Disconnect;
use tracing::{Instrument, info_span};

use crate::metrics as m;
use crate::node::{Node, now_ms};
use crate::service::session::{self, Effects, Received, RecvError, Session};

/// How long a connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block before the client is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A message-framed, bidirectional connection.
pub trait Transport: Send {
    /// What the client sent next; `Ok(None)` when the peer closed.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Received>, RecvError>> + Send;
    /// Asks the client for a sign of life, where the transport has a way to (a WebSocket
    /// ping, which browsers answer by themselves even from a throttled background tab; its
    /// pong comes back through [`Transport::recv`]). `Ok(true)` when the transport itself saw
    /// the client alive since the last call (QUIC: packets from it, such as the
    /// acknowledgements of the connection's keep-alives).
    fn ping(&mut self) -> impl Future<Output = std::io::Result<bool>> + Send;
    /// Queues one frame (the bytes are shared: a frame for many sessions is not copied); it
    /// may stay buffered until [`Transport::flush`], so the frames of one wakeup can leave
    /// together.
    fn feed(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Writes out whatever [`Transport::feed`] buffered.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Closes with a short reason.
    fn close(&mut self, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Serves one connection to the end.
pub async fn run<T: Transport>(node: Arc<Node>, mut t: T, transport: &'static str) {
    metrics::counter!(m::CONNECTIONS, "transport" => transport).increment(1);
    // Boxed, so that what only the hello needs is not part of the state the session keeps.
    let Some((mut session, how)) = Box::pin(hello(&node, &mut t)).await else {
        return;
    };
    if let Some(how) = how {
        node.service().close(session, how, now_ms());
        return;
    }
    let span = info_span!("session", user = %session.user(), device = %session.device(), transport);
    metrics::gauge!(m::SESSIONS, "transport" => transport).increment(1.0);
    let how = serve(&node, &mut t, &mut session).instrument(span).await;
    node.service().close(session, how, now_ms());
    metrics::gauge!(m::SESSIONS, "transport" => transport).decrement(1.0);
}

/// Waits for the hello (within [`HELLO_TIMEOUT`]) and opens the session, with how it ended if
/// the welcome could not be written; `None` when the connection ends instead.
async fn hello<T: Transport>(node: &Arc<Node>, t: &mut T) -> Option<(Session, Option<Disconnect>)> {
    let first = tokio::select! {
        r = tokio::time::timeout(HELLO_TIMEOUT, t.recv()) => r,
        () = node.shutdown().cancelled() => {
            t.close("node shutting down").await;
            return None;
        }
    };
    let opened = match first {
        Err(_) => Err(session::hello_timeout()),
        Ok(r) => node.service().hello(r, now_ms()),
    };
    match opened {
        Ok((mut s, fx)) => {
            let how = execute(node, t, &mut s, fx).await;
            Some((s, how))
        }
        Err(fx) => {
            refuse(t, fx).await;
            None
        }
    }
}

/// Writes a refusal's frames and closes (no session was opened).
async fn refuse<T: Transport>(t: &mut T, fx: Effects) {
    if write_out(t, fx.frames).await.is_ok()
        && let Some(close) = fx.end.and_then(|e| e.close)
    {
        t.close(&close).await;
    }
}

/// Writes `frames` in one flush (nothing for none); `Err` when the connection is gone.
async fn write_out<T: Transport>(t: &mut T, frames: Vec<Bytes>) -> Result<(), ()> {
    if frames.is_empty() {
        return Ok(());
    }
    for f in frames {
        timed(t.feed(f)).await?;
    }
    timed(t.flush()).await
}

/// The session loop; returns how the session ended for the engine.
///
/// Every idle session holds this future for its whole life, and an async fn's state is as
/// large as its largest await point. So the loop itself awaits only the three small wakeup
/// futures; executing a wakeup's effects (writes with their timeouts, store reads) runs in a
/// boxed future that exists only while it runs. One allocation per wakeup buys about 2 KB
/// less per idle session (docs/benchmarks.md).
async fn serve<T: Transport>(node: &Arc<Node>, t: &mut T, s: &mut Session) -> Disconnect {
    let svc = node.service();
    loop {
        let fx = tokio::select! {
            biased;
            () = s.handle().outbox.wakeup.notified() => svc.on_outbox(s, now_ms()),
            frame = t.recv() => svc.on_received(s, frame, now_ms()),
            () = node.shutdown().cancelled() => session::shutting_down(),
        };
        if let Some(how) = Box::pin(execute(node, t, s, fx)).await {
            return how;
        }
    }
}

/// Executes effects until none are left: ping, frames (one flush), a store read whose result
/// goes back to the service (whose effects are executed in turn), an end. Returns how the
/// session ended, if it did.
pub(crate) async fn execute<T: Transport>(
    node: &Arc<Node>,
    t: &mut T,
    s: &mut Session,
    mut fx: Effects,
) -> Option<Disconnect> {
    loop {
        let alive = if fx.ping {
            match timed(t.ping()).await {
                Ok(alive) => alive,
                Err(()) => return Some(Disconnect::Dropped),
            }
        } else {
            false
        };
        if write_out(t, std::mem::take(&mut fx.frames)).await.is_err() {
            return Some(Disconnect::Dropped);
        }
        if let Some(end) = fx.end {
            if let Some(reason) = end.close {
                t.close(&reason).await;
            }
            return Some(end.how);
        }
        if alive {
            // A sign of life from the transport counts as a heartbeat; a read still pending
            // runs after it.
            let read = fx.read.take();
            fx = node
                .service()
                .on_received(s, Ok(Some(Received::Alive)), now_ms());
            fx.read = fx.read.or(read);
            continue;
        }
        let read = fx.read?;
        let svc = node.service_arc();
        let result = tokio::task::spawn_blocking(move || svc.read(*read)).await;
        match result {
            Ok(r) => fx = node.service().on_read(s, r, now_ms()),
            Err(_) => return Some(Disconnect::Dropped),
        }
    }
}

/// A transport write that must end within [`WRITE_TIMEOUT`]; an error or a timeout ends
/// the session (`Err`).
async fn timed<T>(op: impl Future<Output = std::io::Result<T>>) -> Result<T, ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, op).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(()),
    }
}
