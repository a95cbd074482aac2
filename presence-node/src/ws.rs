//! WebSocket clients at `/v1/ws`: one JSON message per text frame, small buffers.
//!
//! The upgrade is done here rather than through axum's `WebSocketUpgrade` so the socket is a
//! plain tokio-tungstenite stream: that lets the node send a large message (a welcome with
//! hundreds of friends) as 1 KiB fragments. tungstenite keeps its write buffer at the size of
//! the largest frame ever written, so without fragmenting, every session would hold on to its
//! welcome's size for life (measured: 10.6 KiB per idle session with 100 friends).
//!
//! It also lets the tick thread write presence frames straight into the socket ([`Socket`]):
//! issue #20 measured ~21 µs of node CPU per presence frame when every frame woke its
//! session's task.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::io::IoSlice;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use presence_handoff::outbox::{Direct, DirectWrite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
        // The client port is served by `client_port`, whose connections are plain TCP: the
        // socket comes back whole, with whatever hyper read past the request.
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => {
                tracing::error!("a WebSocket upgrade on a connection that is not plain TCP");
                return;
            }
        };
        let (read, write) = parts.io.into_inner().into_split();
        let socket = Arc::new(Socket {
            out: Mutex::new(Out {
                tcp: write,
                buf: Vec::new(),
                written: 0,
            }),
            closing: AtomicBool::new(false),
        });
        let io = SocketIo {
            socket: socket.clone(),
            read,
            prefix: parts.read_buf,
        };
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
        connection::run(node, WsTransport { ws, socket }, "ws").await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct WsTransport {
    ws: WebSocketStream<SocketIo>,
    socket: Arc<Socket>,
}

/// A WebSocket's TCP socket's sending side, shared by its session task (the frames it writes
/// through tungstenite; it reads alone, [`SocketIo`]) and the tick thread, which writes presence frames straight in
/// ([`DirectWrite`]) when nothing of the task's is waiting, so that a frame to a reader with
/// room costs one `write` and no task wake-up.
///
/// Bytes leave in order through `out`: the task's frames gather there until a flush
/// (tungstenite, with its write buffer at 0 to keep idle sessions small, would otherwise make
/// one `write` a frame), so the frames of one wakeup leave in one write; the buffer is freed
/// once written out, so an idle session holds none. `out` only ever holds whole WebSocket
/// frames, and the tick writes only while it is empty, so the two never interleave within a
/// frame; what a direct write could not finish waits in `out` for the task's next flush.
struct Socket {
    out: Mutex<Out>,
    /// The task is closing the connection: nothing may follow its close frame.
    closing: AtomicBool,
}

struct Out {
    tcp: OwnedWriteHalf,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
}

/// Past this much buffered, writes go out before more is taken.
const CORK_MAX: usize = 64 * 1024;

impl Out {
    /// Writes out `buf`; `Pending` (with the task's waker registered) while the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.buf[self.written..]))?;
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

impl DirectWrite for Socket {
    fn write_presence(&self, tick: u64, items: &[(u32, Bytes)]) -> Direct {
        // The task is writing: its bytes go first.
        let Some(mut out) = self.out.try_lock() else {
            return Direct::Refused;
        };
        if !out.buf.is_empty() || self.closing.load(Ordering::Acquire) {
            return Direct::Refused;
        }
        let payload = presence_wire::presence_frame(tick, items.iter().map(|(_, b)| b.as_ref()));
        let (header, hlen) = text_header(payload.len());
        let header = &header[..hlen];
        match out
            .tcp
            .try_write_vectored(&[IoSlice::new(header), IoSlice::new(&payload)])
        {
            Ok(n) if n == header.len() + payload.len() => Direct::Written,
            Ok(0) | Err(_) => Direct::Refused,
            Ok(n) => {
                // The rest of the frame must follow before anything else does.
                out.buf.extend_from_slice(&header[n.min(hlen)..]);
                out.buf
                    .extend_from_slice(&payload[n.saturating_sub(hlen)..]);
                Direct::Started
            }
        }
    }
}

/// The header of an unmasked, unfragmented WebSocket text frame of `len` bytes (RFC 6455
/// 5.2: a server's frames are not masked), and how many of its bytes are used.
fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x81; // FIN, text
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(l) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&l.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// The session task's side of a [`Socket`], for tungstenite: it reads alone (starting with
/// what hyper had already read past the upgrade request) and writes through the socket's
/// buffer.
struct SocketIo {
    socket: Arc<Socket>,
    read: OwnedReadHalf,
    prefix: Bytes,
}

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for SocketIo {
    /// Takes all of `data` or none of it, so the buffer holds whole frames only.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = self.socket.out.lock();
        if !out.buf.is_empty() && out.buf.len() + data.len() > CORK_MAX {
            ready!(out.poll_drain(cx))?;
        }
        out.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.socket.out.lock().poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut out = self.socket.out.lock();
        ready!(out.poll_drain(cx))?;
        Pin::new(&mut out.tcp).poll_shutdown(cx)
    }
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Received>, RecvError> {
        loop {
            return match self.ws.next().await {
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
        self.ws
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(std::io::Error::other)?;
        Ok(false)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.ws.flush().await.map_err(std::io::Error::other)
    }

    async fn feed(&mut self, frame: Bytes) -> std::io::Result<()> {
        let io = std::io::Error::other;
        if frame.len() <= FRAGMENT {
            let text = Utf8Bytes::try_from(frame)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            return self.ws.feed(Message::Text(text)).await.map_err(io);
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
            self.ws
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

    fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
        Some(self.socket.clone())
    }

    async fn close(&mut self, reason: &str) {
        self.socket.closing.store(true, Ordering::Release);
        let mut reason = reason.to_owned();
        while reason.len() > 120 {
            reason.pop();
        }
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Policy,
                reason: reason.into(),
            })))
            .await;
        // The closing handshake: read on (briefly) until the client's close. A socket closed
        // at once would answer what the client still sends (a pong to our last ping) with a
        // reset, and a reset discards the client's unread data: the error frame and the close.
        let drain = async {
            while let Some(Ok(m)) = self.ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header the tick writes decodes, with tungstenite's own parser, to an unmasked final
    /// text frame of the payload's length, at each of the three length forms.
    #[test]
    fn text_headers_parse_as_tungstenite_reads_them() {
        for len in [0usize, 1, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let (h, n) = text_header(len);
            let mut bytes = h[..n].to_vec();
            bytes.extend(std::iter::repeat_n(b'x', len));
            let mut cursor = std::io::Cursor::new(bytes);
            let (header, payload_len) =
                tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
                    .expect("parses")
                    .expect("complete");
            assert!(header.is_final, "{len}");
            assert_eq!(header.opcode, OpCode::Data(Data::Text), "{len}");
            assert!(header.mask.is_none(), "{len}");
            assert_eq!(payload_len, len as u64);
            assert_eq!(cursor.position() as usize, n, "{len}");
        }
    }
}
