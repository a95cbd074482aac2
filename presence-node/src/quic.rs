//! QUIC clients: ALPN `presence/1`, one bidirectional stream per connection, each message a
//! 4-byte big-endian length then the JSON bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec, LengthDelimitedCodecError};
use tracing::debug;

use crate::connection::{self, HELLO_TIMEOUT, Transport};
use crate::node::Node;
use crate::service::{Received, RecvError};

pub use presence_wire::ALPN;
use presence_wire::framing::quic_codec as codec;

/// A server endpoint sized for chat clients: one stream each way, small windows, keep-alive
/// well below the idle timeout.
///
/// The keep-alive runs at least once per third of the heartbeat timeout (every 10 s at most):
/// that is how often the node looks for a sign of life from each session, and a live client's
/// acknowledgement of a keep-alive is one (protocol v1.1).
pub fn endpoint(
    addr: SocketAddr,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    heartbeat_timeout: Duration,
) -> anyhow::Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = heartbeat_timeout + Duration::from_secs(15);
    let keep_alive = (heartbeat_timeout / 3).clamp(Duration::from_millis(100), KEEP_ALIVE);
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((128u32 * 1024).into())
        .receive_window((256u32 * 1024).into())
        .send_window(1024 * 1024)
        .max_idle_timeout(Some(idle.try_into()?))
        .keep_alive_interval(Some(keep_alive));
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, addr).with_context(|| format!("binding QUIC on {addr}"))
}

/// The longest keep-alive interval.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, node: Arc<Node>) {
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return debug!("QUIC handshake failed: {e}"),
            };
            let stream = tokio::select! {
                s = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()) => s,
                () = node.shutdown().cancelled() => return,
            };
            let (send, recv) = match stream {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!("QUIC connection ended before a stream: {e}"),
                Err(_) => {
                    conn.close(1u32.into(), b"no stream within 10 s");
                    return;
                }
            };
            let t = QuicTransport {
                rx_seen: 0,
                conn,
                read: FramedRead::with_capacity(recv, codec(), READ_CAPACITY),
                send,
            };
            connection::run(node, t, "quic").await;
        });
    }
}

/// Initial read buffer per connection (tokio-util's default is 8 KiB; client messages are
/// tiny and the buffer grows for larger ones).
const READ_CAPACITY: usize = 512;

/// Frames are written straight into quinn's send buffer (no per-connection write buffer).
struct QuicTransport {
    conn: quinn::Connection,
    /// UDP datagrams received from the client as of the last ping.
    rx_seen: u64,
    read: FramedRead<quinn::RecvStream, LengthDelimitedCodec>,
    send: quinn::SendStream,
}

impl Transport for QuicTransport {
    async fn recv(&mut self) -> Result<Option<Received>, RecvError> {
        match self.read.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(Received::Frame(b.freeze()))),
            Some(Err(e))
                if e.get_ref()
                    .is_some_and(|r| r.is::<LengthDelimitedCodecError>()) =>
            {
                Err(RecvError::TooLarge)
            }
            Some(Err(e)) => Err(RecvError::Io(e.to_string())),
        }
    }

    /// QUIC needs no ping of ours: the connection's keep-alives are acknowledged by a live
    /// client's stack. Any datagram from the client since the last call is a sign of life.
    async fn ping(&mut self) -> std::io::Result<bool> {
        let rx = self.conn.stats().udp_rx.datagrams;
        let alive = rx > self.rx_seen;
        self.rx_seen = rx;
        Ok(alive)
    }

    /// quinn gathers stream data into packets itself: the frame is handed over at once and
    /// there is nothing to flush.
    async fn feed(&mut self, frame: Bytes) -> std::io::Result<()> {
        let prefix = presence_wire::framing::quic_prefix(frame.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large")
        })?;
        self.send
            .write_all_chunks(&mut [Bytes::copy_from_slice(&prefix), frame])
            .await
            .map_err(std::io::Error::other)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn close(&mut self, reason: &str) {
        let _ = self.send.finish();
        // Give the peer a moment to read what was sent (an error frame) before closing.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.send.stopped()).await;
        self.conn.close(0u32.into(), reason.as_bytes());
    }
}
