//! A client host: opens WebSocket and QUIC clients against the node, sends what the driver
//! tells it, and keeps each client's view of its friends built only from its `welcome` and
//! `presence` frames. Runs inside the driver's process or as a `dark-launch-worker`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::proto::{Cmd, ConnectSpec, HistOut, HostInit, HostStats, Reply, ViewOut};

/// Connect, handshake, hello and welcome must all happen within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A write that does not complete within this counts as a dead connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a flush waits for clients to catch up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(25);
/// Frames larger than this from the node are refused (a welcome of 5,000 friends fits).
const MAX_FRAME: usize = 4 << 20;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub fn new_hist() -> Histogram<u64> {
    // 1 µs .. 1 hour at 3 significant figures; the bounds are valid constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
    })
}

pub fn hist_out(h: &Histogram<u64>) -> HistOut {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn hist_merge(into: &mut Histogram<u64>, from: &HistOut) {
    for &(v, n) in from {
        let _ = into.record_n(v.max(1), n);
    }
}

#[derive(Default)]
struct Hists {
    connect: Option<Histogram<u64>>,
    probe: Option<Histogram<u64>>,
    chat_sent: Option<Histogram<u64>>,
    chat_inbox: Option<Histogram<u64>>,
    /// send → `sent` since the last stats request (the report's per-second series).
    chat_sent_interval: Option<Histogram<u64>>,
}

fn record(h: &mut Option<Histogram<u64>>, us: u64) {
    let _ = h.get_or_insert_with(new_hist).record(us.max(1));
}

/// Counters shared by a host's clients.
#[derive(Default)]
struct Shared {
    open: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    frames: AtomicU64,
    entries: AtomicU64,
    welcome_entries: AtomicU64,
    pongs: AtomicU64,
    errors: AtomicU64,
    duplicates: AtomicU64,
    unknown_users: AtomicU64,
    probe_receipts: AtomicU64,
    chat_sent: AtomicU64,
    chat_inbox: AtomicU64,
    chat_device_acks: AtomicU64,
    chat_disabled: AtomicU64,
    chat_errors: AtomicU64,
    server_closes: AtomicU64,
    hists: parking_mutex::Mutex<Hists>,
    examples: parking_mutex::Mutex<Vec<String>>,
    chat_disabled_message: parking_mutex::Mutex<Option<String>>,
    thresholds: Vec<u64>,
    /// A device acks at most this often (zero: after every burst it reads).
    ack_every: Duration,
}

/// std's mutex with poisoning ignored (a panicking client task must not stop the host).
mod parking_mutex {
    #[derive(Default)]
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

impl Shared {
    fn example(&self, msg: String) {
        let mut ex = self.examples.lock();
        if ex.len() < 10 {
            ex.push(msg);
        }
    }

    fn stats(&self, full: bool) -> HostStats {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let mut s = HostStats {
            open: g(&self.open),
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
            frames: g(&self.frames),
            entries: g(&self.entries),
            welcome_entries: g(&self.welcome_entries),
            pongs: g(&self.pongs),
            errors: g(&self.errors),
            duplicates: g(&self.duplicates),
            unknown_users: g(&self.unknown_users),
            probe_receipts: g(&self.probe_receipts),
            chat_sent: g(&self.chat_sent),
            chat_inbox: g(&self.chat_inbox),
            chat_device_acks: g(&self.chat_device_acks),
            chat_disabled: g(&self.chat_disabled),
            chat_errors: g(&self.chat_errors),
            server_closes: g(&self.server_closes),
            chat_disabled_message: self.chat_disabled_message.lock().clone(),
            ..HostStats::default()
        };
        {
            let mut h = self.hists.lock();
            if let Some(iv) = h.chat_sent_interval.as_mut() {
                s.chat_sent_interval_us = hist_out(iv);
                iv.reset();
            }
        }
        if full {
            s.error_examples = self.examples.lock().clone();
            let h = self.hists.lock();
            let out = |h: &Option<Histogram<u64>>| h.as_ref().map(hist_out).unwrap_or_default();
            s.connect_us = out(&h.connect);
            s.probe_us = out(&h.probe);
            s.chat_sent_us = out(&h.chat_sent);
            s.chat_inbox_us = out(&h.chat_inbox);
        }
        s
    }
}

/// One friend as a client sees it.
#[derive(Debug, Clone, Default)]
struct Entry {
    state: u8,
    status: u8,
    text: Option<Box<str>>,
    /// Highest probe sequence number already received about this friend.
    probe_seen: u64,
}

/// A client's view, sorted by friend id.
#[derive(Debug, Default)]
struct View {
    friends: Vec<(u32, Entry)>,
    /// When the welcome arrived: only probes scheduled after it are receipts (an old probe
    /// text shown again when its owner comes back online is not).
    since_us: u64,
}

struct ClientState {
    view: parking_mutex::Mutex<View>,
    /// Welcome received and neither closed nor vanished.
    live: AtomicBool,
}

enum ClientCmd {
    Send(String),
    Close,
    Vanish,
    Flush(oneshot::Sender<()>),
}

struct ClientHandle {
    tx: mpsc::UnboundedSender<ClientCmd>,
    state: Arc<ClientState>,
}

#[derive(Debug, Deserialize)]
struct EntryIn {
    user: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    idle_ms: Option<u64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    removed: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct In {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    friends: Vec<EntryIn>,
    #[serde(default)]
    changes: Vec<EntryIn>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

fn user_id(name: &str) -> Option<u32> {
    name.strip_prefix('u')?.parse().ok()
}

fn status_code(s: Option<&str>) -> u8 {
    match s {
        None => 0,
        Some("available") => 1,
        Some("busy") => 2,
        Some("dnd") => 3,
        Some("invisible") => 4,
        Some(_) => 255,
    }
}

fn state_code(e: &EntryIn, thresholds: &[u64]) -> u8 {
    match e.state.as_deref() {
        Some("offline") => 0,
        Some("online") => 1,
        Some("idle") => e
            .idle_ms
            .and_then(|ms| thresholds.iter().position(|&t| t == ms))
            .map_or(255, |l| 2 + l as u8),
        _ => 255,
    }
}

/// `pr:<seq>:<scheduled µs>`: a latency probe's status text.
pub fn parse_probe(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("pr:")?;
    let (seq, us) = rest.split_once(':')?;
    Some((seq.parse().ok()?, us.parse().ok()?))
}

/// `chat:<seq>:<scheduled µs>`: a chat message's client id and text.
pub fn parse_chat(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("chat:")?;
    let (seq, us) = rest.split_once(':')?;
    Some((seq.parse().ok()?, us.parse().ok()?))
}

fn apply_entries(view: &mut View, entries: &[EntryIn], sh: &Shared, welcome: bool, now: u64) {
    if welcome {
        view.since_us = now;
    }
    let mut seen: Vec<u32> = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(id) = user_id(&e.user) else {
            sh.unknown_users.fetch_add(1, Relaxed);
            continue;
        };
        seen.push(id);
        let pos = view.friends.binary_search_by_key(&id, |(f, _)| *f);
        if e.removed == Some(true) {
            if let Ok(i) = pos {
                view.friends.remove(i);
            }
            continue;
        }
        let mut entry = Entry {
            state: state_code(e, &sh.thresholds),
            status: status_code(e.status.as_deref()),
            text: e.text.as_deref().map(Box::from),
            probe_seen: 0,
        };
        let prev_seen = pos.ok().map_or(0, |i| view.friends[i].1.probe_seen);
        entry.probe_seen = prev_seen;
        if let Some((seq, at)) = e.text.as_deref().and_then(parse_probe)
            && seq > prev_seen
        {
            entry.probe_seen = seq;
            if !welcome && at >= view.since_us {
                sh.probe_receipts.fetch_add(1, Relaxed);
                record(&mut sh.hists.lock().probe, now.saturating_sub(at));
            }
        }
        match pos {
            Ok(i) => view.friends[i].1 = entry,
            Err(i) => view.friends.insert(i, (id, entry)),
        }
    }
    seen.sort_unstable();
    let n = seen.len();
    seen.dedup();
    if seen.len() != n {
        sh.duplicates.fetch_add((n - seen.len()) as u64, Relaxed);
    }
}

/// Handles one frame after the welcome; returns the `seq` of an `inbox` entry, which the
/// device owes an `ack`.
fn on_frame(st: &ClientState, sh: &Shared, bytes: &[u8]) -> Option<u64> {
    let now = now_us();
    let msg: In = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => {
            sh.errors.fetch_add(1, Relaxed);
            sh.example(format!("unparsable frame from the node: {e}"));
            return None;
        }
    };
    match msg.ty.as_str() {
        "presence" => {
            sh.frames.fetch_add(1, Relaxed);
            sh.entries.fetch_add(msg.changes.len() as u64, Relaxed);
            apply_entries(&mut st.view.lock(), &msg.changes, sh, false, now);
        }
        "pong" => {
            sh.pongs.fetch_add(1, Relaxed);
        }
        "sent" => {
            if let Some((_, at)) = msg.id.as_deref().and_then(parse_chat) {
                sh.chat_sent.fetch_add(1, Relaxed);
                let us = now.saturating_sub(at);
                let mut h = sh.hists.lock();
                record(&mut h.chat_sent, us);
                record(&mut h.chat_sent_interval, us);
            }
        }
        "inbox" => {
            if msg.kind.as_deref() == Some("message")
                && let Some((_, at)) = msg.text.as_deref().and_then(parse_chat)
            {
                sh.chat_inbox.fetch_add(1, Relaxed);
                record(&mut sh.hists.lock().chat_inbox, now.saturating_sub(at));
            }
            return msg.seq;
        }
        "typing" => {}
        "error" => {
            let text = msg.message.clone().unwrap_or_default();
            let chat = msg.id.as_deref().is_some_and(|id| id.starts_with("chat:"));
            if msg.code.as_deref() == Some("bad_request") && text.contains("chat is not enabled") {
                sh.chat_disabled.fetch_add(1, Relaxed);
                let mut m = sh.chat_disabled_message.lock();
                if m.is_none() {
                    *m = Some(text);
                }
            } else if chat {
                sh.chat_errors.fetch_add(1, Relaxed);
                sh.example(format!(
                    "chat error {}: {text}",
                    msg.code.as_deref().unwrap_or("?")
                ));
            } else {
                sh.errors.fetch_add(1, Relaxed);
                sh.example(format!(
                    "error {}: {text}",
                    msg.code.as_deref().unwrap_or("?")
                ));
            }
        }
        other => {
            sh.errors.fetch_add(1, Relaxed);
            sh.example(format!("unexpected frame type {other:?}"));
        }
    }
    None
}

/// A device's cumulative `ack` of its inbox up to `seq`.
fn ack_frame(seq: u64) -> String {
    format!(r#"{{"type":"ack","seq":{seq}}}"#)
}

/// Sends the owed ack if it is due, through `write`; false if the write failed or timed out.
async fn ack<F, E>(pacer: &mut AckPacer, sh: &Shared, write: impl FnOnce(String) -> F) -> bool
where
    F: Future<Output = Result<(), E>>,
{
    let Some(seq) = pacer.take() else {
        return true;
    };
    let r = tokio::time::timeout(WRITE_TIMEOUT, write(ack_frame(seq))).await;
    if matches!(r, Ok(Ok(()))) {
        sh.chat_device_acks.fetch_add(1, Relaxed);
        true
    } else {
        false
    }
}

async fn quic_write_owned(send: &mut quinn::SendStream, msg: String) -> Result<()> {
    quic_write(send, msg.as_bytes()).await
}

/// When a device acks: the latest seq it has read, at most once per `every` (an `ack` is a
/// cursor, so a later one covers what an earlier one would have said).
struct AckPacer {
    every: Duration,
    owed: Option<u64>,
    last: Option<tokio::time::Instant>,
}

impl AckPacer {
    fn new(every: Duration) -> Self {
        Self {
            every,
            owed: None,
            last: None,
        }
    }

    fn owe(&mut self, seq: Option<u64>) {
        self.owed = self.owed.max(seq);
    }

    /// When the owed ack may go (far away when nothing is owed).
    fn due(&self) -> tokio::time::Instant {
        match (self.owed, self.last) {
            (Some(_), Some(last)) => last + self.every,
            (Some(_), None) => tokio::time::Instant::now(),
            (None, _) => tokio::time::Instant::now() + Duration::from_secs(3600),
        }
    }

    /// The seq to ack now, if one is owed and due.
    fn take(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        self.owed?;
        if self.last.is_some_and(|last| now < last + self.every) {
            return None;
        }
        self.last = Some(now);
        self.owed.take()
    }
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

enum Conn {
    Ws(Box<WsStream>),
    Quic {
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
}

async fn quic_write(send: &mut quinn::SendStream, msg: &[u8]) -> Result<()> {
    let len = u32::try_from(msg.len()).context("frame too large")?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(msg).await?;
    Ok(())
}

async fn quic_read(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        bail!("frame of {n} bytes from the node");
    }
    let mut buf = vec![0u8; n];
    recv.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

struct Dialer {
    init: HostInit,
    endpoints: Vec<quinn::Endpoint>,
    quic_cfg: quinn::ClientConfig,
    next_ip: AtomicU64,
}

fn quic_client_config(cert_pem: &str) -> Result<quinn::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots
            .add(cert.context("node certificate PEM")?)
            .context("node certificate")?;
    }
    if roots.is_empty() {
        bail!("no certificate in the node's PEM");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"presence/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((1u32 << 20).into())
        .receive_window((2u32 << 20).into())
        .send_window(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(10)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

impl Dialer {
    fn new(init: HostInit) -> Result<Self> {
        let quic_cfg = quic_client_config(&init.cert_pem)?;
        let mut endpoints = Vec::new();
        for _ in 0..init.quic_endpoints.max(1) {
            let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                .context("binding a UDP socket for QUIC clients")?;
            endpoints.push(ep);
        }
        Ok(Self {
            init,
            endpoints,
            quic_cfg,
            next_ip: AtomicU64::new(0),
        })
    }

    async fn ws(&self) -> Result<Conn> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .context("creating a TCP socket (out of file descriptors?)")?;
        let ips = &self.init.source_ips;
        if !ips.is_empty() {
            let i = self.next_ip.fetch_add(1, Relaxed) as usize % ips.len();
            // socket2 0.6 has no setter for IP_BIND_ADDRESS_NO_PORT (and the workspace forbids
            // unsafe code): a plain bind reserves a source port per address, which is fine
            // here because every connection from these addresses goes to the one node port.
            sock.bind(&SocketAddr::new(IpAddr::V4(ips[i]), 0).into())
                .with_context(|| format!("binding to source address {}", ips[i]))?;
        }
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        let std: std::net::TcpStream = sock.into();
        let stream = tokio::net::TcpSocket::from_std_stream(std)
            .connect(self.init.ws)
            .await
            .with_context(|| format!("connecting to {}", self.init.ws))?;
        let cfg = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            // Frames wait for a flush (`run_conn` flushes after what is queued), so the
            // frames of one wakeup leave in one write.
            .write_buffer_size(64 * 1024)
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let url = format!("ws://{}/v1/ws", self.init.ws);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg))
            .await
            .context("WebSocket handshake")?;
        Ok(Conn::Ws(Box::new(ws)))
    }

    async fn quic(&self, cid: u64) -> Result<Conn> {
        let ep = &self.endpoints[(cid % self.endpoints.len() as u64) as usize];
        let conn = ep
            .connect_with(self.quic_cfg.clone(), self.init.quic, "localhost")?
            .await
            .context("QUIC handshake")?;
        let (send, recv) = conn.open_bi().await.context("opening the QUIC stream")?;
        Ok(Conn::Quic { conn, send, recv })
    }
}

impl Conn {
    async fn send(&mut self, msg: String) -> Result<()> {
        let fut = async {
            match self {
                Conn::Ws(ws) => ws
                    .send(Message::text(msg))
                    .await
                    .map_err(anyhow::Error::from),
                Conn::Quic { send, .. } => quic_write(send, msg.as_bytes()).await,
            }
        };
        tokio::time::timeout(WRITE_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("write timed out"))?
    }

    /// The next frame (only for the welcome; later QUIC reads run on their own task).
    async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        match self {
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(Some(t.as_bytes().to_vec())),
                    Some(Ok(Message::Close(_))) | None => return Ok(None),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(_)) => {}
                }
            },
            Conn::Quic { recv, .. } => quic_read(recv).await,
        }
    }
}

async fn open(dialer: &Dialer, sp: &ConnectSpec, st: &ClientState, sh: &Shared) -> Result<Conn> {
    let mut c = if sp.quic {
        dialer.quic(sp.cid).await?
    } else {
        dialer.ws().await?
    };
    let hello = serde_json::json!({"type": "hello", "token": sp.token, "device": sp.device});
    c.send(hello.to_string()).await?;
    let Some(frame) = c.recv().await? else {
        bail!("the node closed the connection before the welcome");
    };
    let msg: In = serde_json::from_slice(&frame).context("welcome is not JSON")?;
    if msg.ty != "welcome" {
        bail!(
            "expected welcome, got {} {} {}",
            msg.ty,
            msg.code.unwrap_or_default(),
            msg.message.unwrap_or_default()
        );
    }
    sh.welcome_entries
        .fetch_add(msg.friends.len() as u64, Relaxed);
    apply_entries(&mut st.view.lock(), &msg.friends, sh, true, now_us());
    Ok(c)
}

async fn client(
    dialer: Arc<Dialer>,
    sem: Arc<Semaphore>,
    sp: ConnectSpec,
    mut rx: mpsc::UnboundedReceiver<ClientCmd>,
    st: Arc<ClientState>,
    sh: Arc<Shared>,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let t0 = Instant::now();
    let opened = {
        let _permit = sem.acquire().await;
        tokio::time::timeout(CONNECT_TIMEOUT, open(&dialer, &sp, &st, &sh)).await
    };
    let conn = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            sh.connect_failures.fetch_add(1, Relaxed);
            let _ = replies.send(Reply::ConnectFailed {
                cid: sp.cid,
                reason: format!("{e:#}"),
            });
            return;
        }
        Err(_) => {
            sh.connect_failures.fetch_add(1, Relaxed);
            let _ = replies.send(Reply::ConnectFailed {
                cid: sp.cid,
                reason: format!("no welcome within {CONNECT_TIMEOUT:?}"),
            });
            return;
        }
    };
    record(
        &mut sh.hists.lock().connect,
        t0.elapsed().as_micros() as u64,
    );
    sh.connects.fetch_add(1, Relaxed);
    sh.open.fetch_add(1, Relaxed);
    st.live.store(true, Relaxed);
    let _ = replies.send(Reply::Connected { cid: sp.cid });
    let ended = run_conn(conn, &sp, &mut rx, &st, &sh).await;
    st.live.store(false, Relaxed);
    sh.open.fetch_sub(1, Relaxed);
    if let Some(reason) = ended {
        sh.server_closes.fetch_add(1, Relaxed);
        let _ = replies.send(Reply::Closed {
            cid: sp.cid,
            reason,
        });
    }
}

/// Writes out the frames fed so far; false if that failed or timed out.
async fn flush_ws(ws: &mut WsStream) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.flush()).await,
        Ok(Ok(()))
    )
}

/// Serves a connection; returns Some(reason) when it ended without being told to.
async fn run_conn(
    mut conn: Conn,
    sp: &ConnectSpec,
    rx: &mut mpsc::UnboundedReceiver<ClientCmd>,
    st: &Arc<ClientState>,
    sh: &Arc<Shared>,
) -> Option<String> {
    if let Some(first) = &sp.first
        && let Err(e) = conn.send(first.clone()).await
    {
        return Some(format!("write failed: {e:#}"));
    }
    let mut vanished = false;
    let mut pacer = AckPacer::new(sh.ack_every);
    match conn {
        Conn::Ws(mut ws) => loop {
            tokio::select! {
                // A vanished device neither reads nor answers the node's pings (a phone that
                // lost its network): reading on would let tungstenite answer them.
                m = ws.next(), if !vanished => {
                    // This frame and those already read behind it, then one cumulative `ack`
                    // for the inbox entries among them, as a client acks what it has shown.
                    let mut m = m;
                    loop {
                        match m {
                            Some(Ok(Message::Text(t))) => pacer.owe(on_frame(st, sh, t.as_bytes())),
                            Some(Ok(Message::Close(f))) => {
                                if vanished { return None; }
                                return Some(format!("closed by the node: {}", f.map(|f| f.reason.to_string()).unwrap_or_default()));
                            }
                            None | Some(Err(_)) => {
                                return if vanished { None } else { Some("connection lost".into()) };
                            }
                            Some(Ok(_)) => {}
                        }
                        match ws.next().now_or_never() {
                            Some(next) => m = next,
                            None => break,
                        }
                    }
                    if !vanished && !ack(&mut pacer, sh, |f| ws.send(Message::text(f))).await {
                        return Some("write failed".into());
                    }
                }
                () = tokio::time::sleep_until(pacer.due()), if pacer.owed.is_some() && !vanished => {
                    if !ack(&mut pacer, sh, |f| ws.send(Message::text(f))).await {
                        return Some("write failed".into());
                    }
                }
                c = rx.recv() => {
                    if vanished {
                        match c {
                            Some(ClientCmd::Flush(ack)) => { let _ = ack.send(()); }
                            Some(ClientCmd::Close) | None => return None,
                            Some(_) => {}
                        }
                        continue;
                    }
                    // Frames queued together leave in one write, as a client writes what it
                    // has to say at once (a chat message's `activity` and `send`, say): a
                    // write each doubled the syscalls of both sides.
                    let mut c = c;
                    let mut fed = false;
                    loop {
                        if fed && !matches!(c, Some(ClientCmd::Send(_))) {
                            if !flush_ws(&mut ws).await {
                                return Some("write failed".into());
                            }
                            fed = false;
                        }
                        match c {
                            Some(ClientCmd::Send(s)) => {
                                let r = tokio::time::timeout(WRITE_TIMEOUT, ws.feed(Message::text(s))).await;
                                if !matches!(r, Ok(Ok(()))) {
                                    return Some("write failed".into());
                                }
                                fed = true;
                            }
                            Some(ClientCmd::Flush(ack)) => { let _ = ack.send(()); }
                            Some(ClientCmd::Vanish) => {
                                vanished = true;
                                st.live.store(false, Relaxed);
                                break;
                            }
                            Some(ClientCmd::Close) | None => {
                                st.live.store(false, Relaxed);
                                let _ = tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Close(None))).await;
                                return None;
                            }
                        }
                        match rx.try_recv() {
                            Ok(next) => c = Some(next),
                            Err(_) => break,
                        }
                    }
                    if fed && !flush_ws(&mut ws).await {
                        return Some("write failed".into());
                    }
                }
            }
        },
        Conn::Quic {
            conn: qc,
            mut send,
            mut recv,
        } => {
            // Reads run on their own task: quinn's read_exact is not cancel-safe.
            let (done_tx, mut done_rx) = oneshot::channel::<String>();
            // Inbox seqs the reader saw, for the writer to ack.
            let (owed_tx, mut owed_rx) = mpsc::unbounded_channel::<u64>();
            let (st2, sh2) = (st.clone(), sh.clone());
            let reader = tokio::spawn(async move {
                let reason = loop {
                    match quic_read(&mut recv).await {
                        Ok(Some(f)) => {
                            if let Some(seq) = on_frame(&st2, &sh2, &f) {
                                let _ = owed_tx.send(seq);
                            }
                        }
                        Ok(None) => break "stream finished by the node".to_string(),
                        Err(e) => break format!("{e:#}"),
                    }
                };
                let _ = done_tx.send(reason);
            });
            let out = loop {
                tokio::select! {
                    r = &mut done_rx => {
                        break if vanished { None } else { Some(format!("closed by the node: {}", r.unwrap_or_default())) };
                    }
                    Some(seq) = owed_rx.recv() => {
                        pacer.owe(Some(seq));
                        while let Ok(s) = owed_rx.try_recv() {
                            pacer.owe(Some(s));
                        }
                        if !vanished && !ack(&mut pacer, sh, |f| quic_write_owned(&mut send, f)).await {
                            break Some("write failed".into());
                        }
                    }
                    () = tokio::time::sleep_until(pacer.due()), if pacer.owed.is_some() && !vanished => {
                        if !ack(&mut pacer, sh, |f| quic_write_owned(&mut send, f)).await {
                            break Some("write failed".into());
                        }
                    }
                    c = rx.recv(), if !vanished => match c {
                        Some(ClientCmd::Send(s)) => {
                            let r = tokio::time::timeout(WRITE_TIMEOUT, quic_write(&mut send, s.as_bytes())).await;
                            if !matches!(r, Ok(Ok(()))) {
                                break Some("write failed".into());
                            }
                        }
                        Some(ClientCmd::Flush(ack)) => { let _ = ack.send(()); }
                        Some(ClientCmd::Vanish) => { vanished = true; st.live.store(false, Relaxed); }
                        Some(ClientCmd::Close) | None => {
                            st.live.store(false, Relaxed);
                            qc.close(0u32.into(), b"bye");
                            break None;
                        }
                    },
                }
            };
            reader.abort();
            out
        }
    }
}

/// Runs a host until `Shutdown` or until the command channel closes.
pub async fn run_host(
    init: HostInit,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let sh = Arc::new(Shared {
        thresholds: init.idle_thresholds_ms.clone(),
        ack_every: Duration::from_millis(init.chat_ack_ms),
        ..Shared::default()
    });
    let sem = Arc::new(Semaphore::new(init.connect_parallel.max(1)));
    let dialer = match Dialer::new(init) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            let _ = replies.send(Reply::Fatal {
                message: format!("{e:#}"),
            });
            return;
        }
    };
    let fd_limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    let _ = replies.send(Reply::Ready { fd_limit });
    let mut clients: HashMap<u64, ClientHandle> = HashMap::new();
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Init(_) => {}
            Cmd::Connect(spec) => {
                let cid = spec.cid;
                let (tx, rx) = mpsc::unbounded_channel();
                let state = Arc::new(ClientState {
                    view: parking_mutex::Mutex::default(),
                    live: AtomicBool::new(false),
                });
                tokio::spawn(client(
                    dialer.clone(),
                    sem.clone(),
                    spec,
                    rx,
                    state.clone(),
                    sh.clone(),
                    replies.clone(),
                ));
                clients.insert(cid, ClientHandle { tx, state });
            }
            Cmd::Send { cid, msg } => {
                if let Some(c) = clients.get(&cid) {
                    let _ = c.tx.send(ClientCmd::Send(msg));
                }
            }
            Cmd::Close { cid } => {
                if let Some(c) = clients.remove(&cid) {
                    let _ = c.tx.send(ClientCmd::Close);
                }
            }
            Cmd::Vanish { cid } => {
                if let Some(c) = clients.remove(&cid) {
                    let _ = c.tx.send(ClientCmd::Vanish);
                }
            }
            Cmd::Flush { seq } => {
                clients.retain(|_, c| !c.tx.is_closed());
                let mut acks = Vec::with_capacity(clients.len());
                for c in clients.values() {
                    let (tx, rx) = oneshot::channel();
                    if c.tx.send(ClientCmd::Flush(tx)).is_ok() {
                        acks.push(rx);
                    }
                }
                let replies = replies.clone();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
                    let mut behind = 0;
                    for rx in acks {
                        if tokio::time::timeout_at(deadline, rx).await.is_err() {
                            behind += 1;
                        }
                    }
                    let _ = replies.send(Reply::Flushed { seq, behind });
                });
            }
            Cmd::Snapshot { seq, cids } => {
                let mut views = Vec::with_capacity(cids.len());
                for cid in cids {
                    let Some(c) = clients.get(&cid) else { continue };
                    if !c.state.live.load(Relaxed) {
                        continue;
                    }
                    let v = c.state.view.lock();
                    views.push(ViewOut {
                        cid,
                        entries: v
                            .friends
                            .iter()
                            .map(|(f, e)| {
                                (*f, e.state, e.status, e.text.as_deref().map(String::from))
                            })
                            .collect(),
                    });
                }
                let _ = replies.send(Reply::Views { seq, views });
            }
            Cmd::Stats { seq, full } => {
                let _ = replies.send(Reply::Stats {
                    seq,
                    stats: Box::new(sh.stats(full)),
                });
            }
            Cmd::Shutdown => break,
        }
    }
    for (_, c) in clients.drain() {
        let _ = c.tx.send(ClientCmd::Close);
    }
    // Let the close frames go out.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// What a process holding many clients needs: the ring TLS provider, the open-files limit at
/// its hard maximum, and a two-thread runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// `simulator dark-launch-worker`: a host driven over stdin/stdout (JSON lines). Exits when
/// stdin closes, so a dying driver never leaves workers behind.
pub fn worker_main() -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow!("no Init from the driver within 30 s"))??
            .ok_or_else(|| anyhow!("stdin closed before Init"))?;
        let Cmd::Init(init) = serde_json::from_str(&first).context("first line is not Init")?
        else {
            bail!("the first command must be Init");
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (rep_tx, rep_rx) = mpsc::unbounded_channel::<Reply>();
        let host = tokio::spawn(run_host(init, cmd_rx, rep_tx));
        let writer = tokio::spawn(super::proto::pump_json_lines(rep_rx, tokio::io::stdout()));
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Cmd>(&line) {
                Ok(Cmd::Shutdown) => {
                    let _ = cmd_tx.send(Cmd::Shutdown);
                    break;
                }
                Ok(c) => {
                    if cmd_tx.send(c).is_err() {
                        break;
                    }
                }
                Err(e) => bail!("bad command from the driver: {e}"),
            }
        }
        drop(cmd_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), host).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_pacer_acks_the_latest_seq_at_most_once_per_interval() {
        let mut every_burst = AckPacer::new(Duration::ZERO);
        assert_eq!(every_burst.take(), None, "nothing owed");
        every_burst.owe(Some(3));
        every_burst.owe(None);
        assert_eq!(every_burst.take(), Some(3));
        assert_eq!(every_burst.take(), None, "acked already");
        every_burst.owe(Some(5));
        every_burst.owe(Some(4));
        assert_eq!(every_burst.take(), Some(5), "the latest, once");

        let mut paced = AckPacer::new(Duration::from_secs(3600));
        paced.owe(Some(1));
        assert!(paced.due() <= tokio::time::Instant::now());
        assert_eq!(paced.take(), Some(1), "the first ack goes at once");
        paced.owe(Some(2));
        paced.owe(Some(7));
        assert_eq!(paced.take(), None, "not due for an hour");
        assert_eq!(paced.owed, Some(7));
        assert!(paced.due() > tokio::time::Instant::now() + Duration::from_secs(3500));
    }
}
