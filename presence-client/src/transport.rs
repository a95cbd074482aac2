//! The two transports of protocol v1 as one [`Connection`]: WebSocket (`GET /v1/ws`, one JSON
//! message per text frame) and QUIC (ALPN `presence/1`, one bidirectional stream, each
//! message a 4-byte big-endian length then the JSON bytes).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use presence_wire::{ALPN, ClientMessage, MAX_FRAME, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::error::{ClientError, from_quic, from_ws};

/// Where a node listens, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket: a `ws://host:port/path` URL, or a bare `host:port` (the path is `/v1/ws`).
    /// `wss://` is not supported: terminate TLS in front of the node, or use QUIC.
    Ws(String),
    /// QUIC: `addr` is `host:port`; `server_name` is the name the node's certificate is for
    /// (`localhost` for a node's dev certificate).
    Quic {
        addr: String,
        server_name: String,
        cert: QuicCert,
    },
}

impl Transport {
    /// WebSocket to a URL or a `host:port`.
    pub fn ws(url_or_addr: impl Into<String>) -> Transport {
        Transport::Ws(url_or_addr.into())
    }

    /// QUIC to `addr` (`host:port`), checking the certificate as `cert` says.
    pub fn quic(
        addr: impl Into<String>,
        server_name: impl Into<String>,
        cert: QuicCert,
    ) -> Transport {
        Transport::Quic {
            addr: addr.into(),
            server_name: server_name.into(),
            cert,
        }
    }
}

/// How a QUIC client checks the node's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum QuicCert {
    /// Trust these root certificates (PEM, one or more), for example the node's own dev
    /// certificate from `<data-dir>/tls/cert.pem`, or the CA of a cluster.
    Pem(String),
    /// Accept any certificate. For development only: anyone on the path can read and change
    /// the traffic.
    DangerousAcceptAny,
}

impl QuicCert {
    /// Reads a PEM file (for example `<data-dir>/tls/cert.pem`).
    pub fn pem_file(path: impl AsRef<std::path::Path>) -> std::io::Result<QuicCert> {
        std::fs::read_to_string(path).map(QuicCert::Pem)
    }
}

impl std::fmt::Debug for QuicCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuicCert::Pem(p) => write!(f, "Pem({} bytes)", p.len()),
            QuicCert::DangerousAcceptAny => f.write_str("DangerousAcceptAny"),
        }
    }
}

/// Knobs of the transports; the defaults suit a chat client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// The TCP connect and WebSocket upgrade, or the QUIC handshake, take at most this long
    /// (default 10 s).
    pub connect_timeout: Duration,
    /// The largest frame accepted from the node (default 16 MiB: a welcome carries every
    /// friend, and the node allows thousands).
    pub max_frame_in: usize,
    /// The WebSocket's TCP receive buffer (`SO_RCVBUF`), if not the system's default.
    pub tcp_recv_buffer: Option<u32>,
    /// WebSocket: how many bytes [`Connection::feed_frame`] may gather before they are
    /// written (default 0: every frame is written at once). Frames fed together and then
    /// flushed leave in one write.
    pub ws_write_buffer: usize,
    /// The local address connections leave from: a WebSocket's TCP socket, or the UDP socket
    /// of a QUIC connection that has no shared [`QuicEndpoint`] (default: the system picks).
    /// A load generator spreads many connections over several source addresses this way.
    pub local_ip: Option<IpAddr>,
    /// Open QUIC connections on this shared UDP socket instead of one socket each (for a
    /// process that holds thousands of connections).
    pub quic_endpoint: Option<QuicEndpoint>,
    /// How often QUIC sends keep-alives; below the node's idle timeout (its heartbeat timeout
    /// plus 15 s), default 5 s.
    pub quic_keep_alive: Duration,
    /// QUIC flow control, per connection: the stream's receive window, the connection's
    /// receive window and its send window, in bytes (`None`: quinn's defaults, sized for
    /// bulk transfers; a process holding many connections sets them smaller).
    pub quic_stream_receive_window: Option<u32>,
    pub quic_receive_window: Option<u32>,
    pub quic_send_window: Option<u64>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            connect_timeout: Duration::from_secs(10),
            max_frame_in: 16 << 20,
            tcp_recv_buffer: None,
            ws_write_buffer: 0,
            local_ip: None,
            quic_endpoint: None,
            quic_keep_alive: Duration::from_secs(5),
            quic_stream_receive_window: None,
            quic_receive_window: None,
            quic_send_window: None,
        }
    }
}

impl TransportOptions {
    /// What of these options goes into a QUIC client configuration.
    fn quic_knobs(&self) -> QuicKnobs {
        QuicKnobs {
            keep_alive: self.quic_keep_alive,
            stream_receive_window: self.quic_stream_receive_window,
            receive_window: self.quic_receive_window,
            send_window: self.quic_send_window,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuicKnobs {
    keep_alive: Duration,
    stream_receive_window: Option<u32>,
    receive_window: Option<u32>,
    send_window: Option<u64>,
}

/// A UDP socket (a quinn `Endpoint`) that many QUIC connections share, given to them in
/// [`TransportOptions::quic_endpoint`]. It keeps the client configuration it last built, so
/// connections with the same certificate and options do not parse the certificate again.
/// Cheap to clone; equal to its clones only.
#[derive(Clone)]
pub struct QuicEndpoint(Arc<SharedEndpoint>);

struct SharedEndpoint {
    endpoint: quinn::Endpoint,
    config: std::sync::Mutex<Option<(QuicCert, QuicKnobs, quinn::ClientConfig)>>,
}

impl QuicEndpoint {
    /// Binds a UDP socket at `local` (port 0: any free port). Needs a tokio runtime.
    pub fn bind(local: SocketAddr) -> Result<QuicEndpoint, ClientError> {
        Ok(QuicEndpoint(Arc::new(SharedEndpoint {
            endpoint: quinn::Endpoint::client(local)?,
            config: std::sync::Mutex::new(None),
        })))
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.0.endpoint.local_addr()?)
    }

    /// The configuration for `cert` and `opts`: the last one built, when it was built for
    /// them.
    fn config(
        &self,
        cert: &QuicCert,
        opts: &TransportOptions,
    ) -> Result<quinn::ClientConfig, ClientError> {
        let knobs = opts.quic_knobs();
        let mut last = self
            .0
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((c, k, cfg)) = last.as_ref()
            && c == cert
            && *k == knobs
        {
            return Ok(cfg.clone());
        }
        let cfg = quic_client_config(cert, opts)?;
        *last = Some((cert.clone(), knobs, cfg.clone()));
        Ok(cfg)
    }
}

impl PartialEq for QuicEndpoint {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for QuicEndpoint {}

impl std::fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.endpoint.local_addr() {
            Ok(a) => write!(f, "QuicEndpoint({a})"),
            Err(_) => f.write_str("QuicEndpoint(?)"),
        }
    }
}

/// tungstenite reads this much per read call (its default is 128 KiB, per connection).
const WS_READ_BUFFER: usize = 8 * 1024;

type WsStream = WebSocketStream<TcpStream>;
type QuicRead = FramedRead<quinn::RecvStream, LengthDelimitedCodec>;

/// An open connection to a node: frames in, frames out. Made by
/// [`Client::connect`](crate::Client::connect) (hello said, welcome read) or
/// [`Client::open`](crate::Client::open) (nothing said yet).
pub struct Connection {
    inner: Inner,
}

enum Inner {
    Ws(Box<WsStream>),
    Quic(Box<QuicConn>),
}

struct QuicConn {
    send: quinn::SendStream,
    recv: QuicRead,
    conn: quinn::Connection,
    /// Keeps the UDP socket's driver alive as long as the connection.
    endpoint: quinn::Endpoint,
    /// The endpoint is a [`QuicEndpoint`] other connections use too.
    shared: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Ws(_) => f.write_str("Connection(ws)"),
            Inner::Quic(q) => write!(f, "Connection(quic {})", q.conn.remote_address()),
        }
    }
}

impl Connection {
    /// Opens the transport, without saying anything.
    pub(crate) async fn open(
        transport: &Transport,
        opts: &TransportOptions,
    ) -> Result<Connection, ClientError> {
        let open = async {
            match transport {
                Transport::Ws(target) => open_ws(target, opts).await,
                Transport::Quic {
                    addr,
                    server_name,
                    cert,
                } => open_quic(addr, server_name, cert, opts).await,
            }
        };
        tokio::time::timeout(opts.connect_timeout, open)
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
    }

    /// `"ws"` or `"quic"`.
    pub fn transport_name(&self) -> &'static str {
        match self.inner {
            Inner::Ws(_) => "ws",
            Inner::Quic(_) => "quic",
        }
    }

    /// Sends one message. Refuses locally a message over the protocol's 64 KiB (the node would
    /// close the connection for it). Not cancel-safe: a send dropped half way leaves a partial
    /// frame on a QUIC stream.
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        self.send_frame(&render(msg)?).await
    }

    /// The next message from the node, typed; unknown types come as
    /// [`ServerMessage::Unknown`]. `Err(Closed)` once the connection is closed. Cancel-safe:
    /// use it in `tokio::select!` and send from another branch.
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        parse(&self.recv_frame().await?)
    }

    /// Sends one frame as it is (the framing is added, the content is not checked): for
    /// proxies, recorders, load generators, and tests of the node's refusals.
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws_send(&mut **ws, frame).await,
            Inner::Quic(q) => quic_send(&mut q.send, frame).await,
        }
    }

    /// Queues one frame as it is: over WebSocket it waits in the write buffer (up to
    /// [`TransportOptions::ws_write_buffer`] bytes) for [`Connection::flush`]; QUIC hands it
    /// to the stream at once. Frames fed together, then flushed, leave in one write.
    pub async fn feed_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws_feed(&mut **ws, frame).await,
            Inner::Quic(q) => quic_send(&mut q.send, frame).await,
        }
    }

    /// Writes out what [`Connection::feed_frame`] queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => SinkExt::flush(&mut **ws).await.map_err(from_ws),
            Inner::Quic(_) => Ok(()),
        }
    }

    /// The next frame as the node sent it. Cancel-safe.
    pub async fn recv_frame(&mut self) -> Result<Bytes, ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws_recv(&mut **ws).await,
            Inner::Quic(q) => quic_recv(&mut q.recv).await,
        }
    }

    /// The sending and receiving halves, to run side by side (for example with
    /// `tokio::join!`) for as long as the borrow lasts.
    pub fn split(&mut self) -> (FrameSender<'_>, FrameReceiver<'_>) {
        match &mut self.inner {
            Inner::Ws(ws) => {
                let (tx, rx) = StreamExt::split(&mut **ws);
                (
                    FrameSender(SenderInner::Ws(tx)),
                    FrameReceiver(ReceiverInner::Ws(rx)),
                )
            }
            Inner::Quic(q) => (
                FrameSender(SenderInner::Quic(&mut q.send)),
                FrameReceiver(ReceiverInner::Quic(&mut q.recv)),
            ),
        }
    }

    /// Closes: a WebSocket close frame, or a QUIC close with code 0.
    pub async fn close(self) -> Result<(), ClientError> {
        match self.inner {
            Inner::Ws(mut ws) => match WebSocketStream::close(&mut ws, None).await {
                Ok(()) => Ok(()),
                Err(e) => match from_ws(e) {
                    ClientError::Closed => Ok(()),
                    e => Err(e),
                },
            },
            Inner::Quic(q) => {
                q.conn.close(0u32.into(), b"bye");
                Ok(())
            }
        }
    }

    /// Falls silent as a device whose network went away: from now on nothing is sent, read
    /// or acknowledged, and nothing closes, so the node learns of it only from its own
    /// timeouts (for tests and load generators). See [`Vanished`](crate::Vanished).
    ///
    /// A QUIC connection on a shared [`QuicEndpoint`] cannot fall silent alone (its socket is
    /// everyone's): it is closed instead, as a dropped connection, and
    /// [`Vanished::silent`](crate::Vanished::silent) says so.
    pub fn vanish(self) -> crate::Vanished {
        match self.inner {
            Inner::Ws(ws) => crate::Vanished::new(ws, true),
            Inner::Quic(q) if q.shared => {
                q.conn.close(0u32.into(), b"gone");
                crate::Vanished::new(q, false)
            }
            Inner::Quic(q) => {
                let local = q
                    .endpoint
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)));
                // Rebinding can fail only for a socket of the OS's; this one is not.
                let silent = q
                    .endpoint
                    .rebind_abstract(Arc::new(crate::vanish::BlackHole { local }))
                    .is_ok();
                crate::Vanished::new(q, silent)
            }
        }
    }

    /// Drops the connection without a close handshake (as a lost network would; for tests of
    /// what the node does then).
    pub fn abandon(self) {
        if let Inner::Quic(q) = &self.inner {
            // Without a close the node would only notice at its idle timeout; an application
            // close without a WebSocket-style handshake is what a dying app sends.
            q.conn.close(0u32.into(), b"bye");
        }
    }
}

/// The sending half of a [`Connection`].
pub struct FrameSender<'a>(SenderInner<'a>);

enum SenderInner<'a> {
    Ws(SplitSink<&'a mut WsStream, Message>),
    Quic(&'a mut quinn::SendStream),
}

impl FrameSender<'_> {
    /// As [`Connection::send`].
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        self.send_frame(&render(msg)?).await
    }

    /// As [`Connection::send_frame`].
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        match &mut self.0 {
            SenderInner::Ws(tx) => ws_send(tx, frame).await,
            SenderInner::Quic(send) => quic_send(send, frame).await,
        }
    }

    /// As [`Connection::feed_frame`].
    pub async fn feed_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        match &mut self.0 {
            SenderInner::Ws(tx) => ws_feed(tx, frame).await,
            SenderInner::Quic(send) => quic_send(send, frame).await,
        }
    }

    /// As [`Connection::flush`].
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        match &mut self.0 {
            SenderInner::Ws(tx) => SinkExt::flush(tx).await.map_err(from_ws),
            SenderInner::Quic(_) => Ok(()),
        }
    }
}

/// The receiving half of a [`Connection`].
pub struct FrameReceiver<'a>(ReceiverInner<'a>);

enum ReceiverInner<'a> {
    Ws(SplitStream<&'a mut WsStream>),
    Quic(&'a mut QuicRead),
}

impl FrameReceiver<'_> {
    /// As [`Connection::recv`].
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        parse(&self.recv_frame().await?)
    }

    /// As [`Connection::recv_frame`].
    pub async fn recv_frame(&mut self) -> Result<Bytes, ClientError> {
        match &mut self.0 {
            ReceiverInner::Ws(rx) => ws_recv(rx).await,
            ReceiverInner::Quic(rx) => quic_recv(rx).await,
        }
    }
}

/// A message as a frame, refused over the protocol's limit.
fn render(msg: &ClientMessage) -> Result<Vec<u8>, ClientError> {
    let frame = msg.to_frame();
    if frame.len() > MAX_FRAME {
        return Err(ClientError::Protocol(format!(
            "a frame of {} bytes is over the protocol's {MAX_FRAME}",
            frame.len()
        )));
    }
    Ok(frame)
}

fn parse(frame: &[u8]) -> Result<ServerMessage, ClientError> {
    ServerMessage::parse(frame)
        .map_err(|e| ClientError::Protocol(format!("unreadable message from the node: {e}")))
}

async fn ws_send<S>(tx: &mut S, frame: &[u8]) -> Result<(), ClientError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    tx.send(ws_text(frame)?).await.map_err(from_ws)
}

async fn ws_feed<S>(tx: &mut S, frame: &[u8]) -> Result<(), ClientError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    tx.feed(ws_text(frame)?).await.map_err(from_ws)
}

fn ws_text(frame: &[u8]) -> Result<Message, ClientError> {
    Utf8Bytes::try_from(frame.to_vec())
        .map(Message::Text)
        .map_err(|_| ClientError::Protocol("a WebSocket text frame must be UTF-8".into()))
}

async fn ws_recv<S>(rx: &mut S) -> Result<Bytes, ClientError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => return Ok(Bytes::from(t)),
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Err(e)) => return Err(from_ws(e)),
        }
    }
}

async fn quic_send(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), ClientError> {
    let len = u32::try_from(frame.len())
        .map_err(|_| ClientError::Protocol("a frame over 4 GiB".into()))?;
    let mut buf = BytesMut::with_capacity(4 + frame.len());
    buf.put_u32(len);
    buf.put_slice(frame);
    send.write_all(&buf).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(c) => from_quic(c),
        _ => ClientError::Closed,
    })
}

async fn quic_recv(rx: &mut QuicRead) -> Result<Bytes, ClientError> {
    match rx.next().await {
        Some(Ok(frame)) => Ok(frame.freeze()),
        None => Err(ClientError::Closed),
        Some(Err(e)) => Err(match e.kind() {
            std::io::ErrorKind::InvalidData => {
                ClientError::Protocol(format!("a frame from the node: {e}"))
            }
            _ => match e.downcast::<quinn::ReadError>() {
                Ok(quinn::ReadError::ConnectionLost(c)) => from_quic(c),
                Ok(_) => ClientError::Closed,
                Err(e) => e.into(),
            },
        }),
    }
}

/// `ws://host:port/path` from a URL or a bare `host:port`.
fn ws_url(target: &str) -> Result<String, ClientError> {
    if target.starts_with("ws://") {
        Ok(target.to_owned())
    } else if target.starts_with("wss://") {
        Err(ClientError::Config(
            "wss:// is not supported: terminate TLS in front of the node, or use QUIC".into(),
        ))
    } else if target.contains("://") {
        Err(ClientError::Config(format!(
            "not a WebSocket URL: {target:?}"
        )))
    } else {
        Ok(format!("ws://{target}/v1/ws"))
    }
}

/// The first address `host:port` resolves to.
async fn resolve(host_port: &str) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host(host_port)
        .await?
        .next()
        .ok_or_else(|| ClientError::Config(format!("{host_port} resolves to no address")))
}

async fn open_ws(target: &str, opts: &TransportOptions) -> Result<Connection, ClientError> {
    let url = ws_url(target)?;
    let uri: tungstenite::http::Uri = url
        .parse()
        .map_err(|e| ClientError::Config(format!("{url}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| ClientError::Config(format!("{url}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = resolve(&format!("{}:{port}", bracket(host))).await?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(n) = opts.tcp_recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(ip) = opts.local_ip {
        // A plain bind reserves a source port per address (no IP_BIND_ADDRESS_NO_PORT without
        // unsafe code): fine while the connections from one address go to few node ports.
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        // 0: every frame is written at once; more: fed frames wait for a flush.
        .write_buffer_size(opts.ws_write_buffer)
        .max_message_size(Some(opts.max_frame_in))
        .max_frame_size(Some(opts.max_frame_in));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg))
        .await
        .map_err(from_ws)?;
    Ok(Connection {
        inner: Inner::Ws(Box::new(ws)),
    })
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

async fn open_quic(
    addr: &str,
    server_name: &str,
    cert: &QuicCert,
    opts: &TransportOptions,
) -> Result<Connection, ClientError> {
    let remote = resolve(addr).await?;
    let shared = opts.quic_endpoint.is_some();
    let (endpoint, cfg) = match &opts.quic_endpoint {
        Some(shared) => (shared.0.endpoint.clone(), shared.config(cert, opts)?),
        None => {
            let ip = opts.local_ip.unwrap_or(if remote.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            });
            let endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0))?;
            (endpoint, quic_client_config(cert, opts)?)
        }
    };
    let conn = endpoint
        .connect_with(cfg, remote, server_name)
        .map_err(|e| ClientError::Config(format!("QUIC connect to {addr}: {e}")))?
        .await
        .map_err(from_quic)?;
    let (send, recv) = conn.open_bi().await.map_err(from_quic)?;
    let codec = presence_wire::framing::length_prefixed(opts.max_frame_in);
    Ok(Connection {
        inner: Inner::Quic(Box::new(QuicConn {
            send,
            recv: FramedRead::new(recv, codec),
            conn,
            endpoint,
            shared,
        })),
    })
}

/// A QUIC client configuration for nodes: TLS 1.3 with ALPN `presence/1`, the certificate
/// checked as `cert` says, no streams accepted from the node, keep-alive as `opts` says. For
/// apps that run their own `quinn::Endpoint`.
pub fn quic_client_config(
    cert: &QuicCert,
    opts: &TransportOptions,
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut tls = match cert {
        QuicCert::Pem(pem) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| ClientError::Config(format!("certificate PEM: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| ClientError::Config(format!("certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Config("no certificate in the PEM".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        QuicCert::DangerousAcceptAny => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(opts.quic_keep_alive));
    if let Some(w) = opts.quic_stream_receive_window {
        transport.stream_receive_window(w.into());
    }
    if let Some(w) = opts.quic_receive_window {
        transport.receive_window(w.into());
    }
    if let Some(w) = opts.quic_send_window {
        transport.send_window(w);
    }
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A verifier that trusts any certificate but still checks the handshake signatures (so the
/// peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_targets_become_urls() {
        assert_eq!(
            ws_url("127.0.0.1:7400").ok().as_deref(),
            Some("ws://127.0.0.1:7400/v1/ws")
        );
        assert_eq!(
            ws_url("ws://h:1/custom").ok().as_deref(),
            Some("ws://h:1/custom")
        );
        assert!(matches!(
            ws_url("wss://h/v1/ws"),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(ws_url("http://h/"), Err(ClientError::Config(_))));
    }

    #[test]
    fn quic_configs_need_a_certificate_and_accept_the_dangerous_mode() {
        let opts = TransportOptions::default();
        assert!(matches!(
            quic_client_config(&QuicCert::Pem("not a pem".into()), &opts),
            Err(ClientError::Config(_))
        ));
        assert!(quic_client_config(&QuicCert::DangerousAcceptAny, &opts).is_ok());
    }
}
