//! WebSocket clients at `/v1/ws`: one JSON message per text frame, small buffers.
//!
//! The upgrade is done here rather than through axum's `WebSocketUpgrade` so the socket is a
//! plain tokio-tungstenite stream: that lets the node send a large message (a welcome with
//! hundreds of friends) as 1 KiB fragments. tungstenite keeps its write buffer at the size of
//! the largest frame ever written, so without fragmenting, every session would hold on to its
//! welcome's size for life (measured: 10.6 KiB per idle session with 100 friends).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, handshake::derive_accept_key};

use crate::connection::{self, Transport};
use crate::node::Node;
use crate::service::{Received, RecvError};
use presence_wire::MAX_FRAME;

/// Per-connection read buffer, allocated eagerly by tungstenite. Its default (128 KiB) costs
/// about 134 KB per idle connection; client messages are tiny (larger ones still work, they
/// are read in several chunks).
const READ_BUFFER: usize = 512;
/// How long a close waits for the client's close frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Messages larger than this go out as fragments of this size.
const FRAGMENT: usize = 1024;

pub fn router(node: Arc<Node>) -> Router {
    Router::new().route("/v1/ws", get(upgrade)).with_state(node)
}

fn config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = READ_BUFFER;
    c.write_buffer_size = 0;
    c.max_write_buffer_size = 4 * MAX_FRAME;
    c.max_message_size = Some(MAX_FRAME);
    c.max_frame_size = Some(MAX_FRAME);
    c
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let ok = req.method() == Method::GET
        && has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| ok) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)",
        )
            .into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            Corked::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(config()),
        )
        .await;
        connection::run(node, WsTransport(ws), "ws").await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct WsTransport(WebSocketStream<Corked<TokioIo<hyper::upgrade::Upgraded>>>);

/// Writes gather here until a flush, however tungstenite hands them over: with its write
/// buffer at 0 (which keeps idle sessions small) it writes every frame to the socket at once,
/// one `write` syscall a frame. Behind this, the frames one wakeup feeds leave in one write at
/// the flush. The buffer is freed once written out, so an idle session holds none.
struct Corked<S> {
    inner: S,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
}

/// Past this much buffered, writes go out before more is taken.
const CORK_MAX: usize = 64 * 1024;

/// What the first write after a flush reserves: a wakeup's few frames (a `sent` and an inbox
/// entry, or a presence frame of a few entries) then fit one allocation instead of one and a
/// regrowth or two (the regrowths were 1.6% of the node's CPU at 20,000 chat sends a second).
/// Kept under 1 KiB, the largest request glibc serves from its per-thread cache: 4 KiB cost
/// presence frames at ~179 k entries/s 3–9% more CPU in two back-to-back pairs.
const CORK_FIRST: usize = 1000;

impl<S> Corked<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.buf.is_empty() && this.buf.len() + data.len() > CORK_MAX {
            ready!(this.poll_drain(cx))?;
        }
        if this.buf.is_empty() && data.len() >= CORK_MAX {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve(data.len().max(CORK_FIRST));
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Received>, RecvError> {
        loop {
            return match self.0.next().await {
                None => Ok(None),
                Some(Ok(Message::Text(t))) => Ok(Some(Received::Frame(Bytes::from(t)))),
                Some(Ok(Message::Binary(_))) => Err(RecvError::Framing(
                    "binary frames are not accepted: send JSON text frames".into(),
                )),
                // tungstenite answers pings by itself; both are signs of life.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Some(Received::Alive)),
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) => Ok(None),
                Some(Err(tungstenite::Error::Capacity(_))) => Err(RecvError::TooLarge),
                Some(Err(tungstenite::Error::Protocol(p))) => {
                    Err(RecvError::Framing(p.to_string()))
                }
                Some(Err(e)) => Err(RecvError::Io(e.to_string())),
            };
        }
    }

    /// The pong comes back through `recv`.
    async fn ping(&mut self) -> std::io::Result<bool> {
        self.0
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(std::io::Error::other)?;
        Ok(false)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await.map_err(std::io::Error::other)
    }

    async fn feed(&mut self, frame: Bytes) -> std::io::Result<()> {
        let io = std::io::Error::other;
        if frame.len() <= FRAGMENT {
            let text = Utf8Bytes::try_from(frame)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            return self.0.feed(Message::Text(text)).await.map_err(io);
        }
        // Fragments may split a UTF-8 sequence: WebSocket validates the reassembled message.
        let bytes = frame;
        let count = bytes.len().div_ceil(FRAGMENT);
        for i in 0..count {
            let piece = bytes.slice(i * FRAGMENT..((i + 1) * FRAGMENT).min(bytes.len()));
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            self.0
                .feed(Message::Frame(Frame::message(
                    piece,
                    opcode,
                    i + 1 == count,
                )))
                .await
                .map_err(io)?;
        }
        Ok(())
    }

    async fn close(&mut self, reason: &str) {
        let mut reason = reason.to_owned();
        while reason.len() > 120 {
            reason.pop();
        }
        let _ = self
            .0
            .send(Message::Close(Some(CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Policy,
                reason: reason.into(),
            })))
            .await;
        // The closing handshake: read on (briefly) until the client's close. A socket closed
        // at once would answer what the client still sends (a pong to our last ping) with a
        // reset, and a reset discards the client's unread data: the error frame and the close.
        let drain = async {
            while let Some(Ok(m)) = self.0.next().await {
                if m.is_close() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
    }
}
