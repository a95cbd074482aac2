//! A device whose network went away: for tests and load generators that must check what a
//! node does when a client falls silent without closing (heartbeat expiry, ghosts).
//!
//! Not reading is not enough. A WebSocket library answers pings only while it is read, so a
//! WebSocket that is no longer read is silent; but a QUIC stack acknowledges the node's
//! keep-alives by itself, and the node counts those as signs of life. So a vanished QUIC
//! connection's UDP socket is swapped for one that drops everything.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// What is left of a vanished connection: it holds the socket (a WebSocket's TCP connection
/// stays open, unread), so the node sees no close. Dropping it releases the socket: a
/// WebSocket's TCP connection then closes; a QUIC connection says nothing, ever.
#[must_use = "dropping it at once closes a WebSocket's TCP connection"]
pub struct Vanished {
    _held: Box<dyn Send>,
    silent: bool,
}

impl Vanished {
    pub(crate) fn new(held: Box<dyn Send>, silent: bool) -> Vanished {
        Vanished {
            _held: held,
            silent,
        }
    }

    /// Whether the connection really fell silent (`false`: it had to be closed instead).
    pub fn silent(&self) -> bool {
        self.silent
    }
}

impl std::fmt::Debug for Vanished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vanished")
    }
}

/// A UDP socket on which nothing arrives and everything sent is lost.
#[derive(Debug)]
pub(crate) struct BlackHole {
    pub(crate) local: SocketAddr,
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for BlackHole {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, _transmit: &Transmit) -> io::Result<()> {
        Ok(())
    }

    fn poll_recv(
        &self,
        _cx: &mut Context,
        _bufs: &mut [IoSliceMut<'_>],
        _meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
