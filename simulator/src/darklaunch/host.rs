//! A client host: opens WebSocket and QUIC clients against the node, sends what the driver
//! tells it, and keeps each client's view of its friends built only from its `welcome` and
//! `presence` frames. Runs inside the driver's process or as a `dark-launch-worker`.
//!
//! The clients are `presence-client` connections (its handshake, framing and message types):
//! this module adds only what a load host needs on top, sharing sockets, pacing acks,
//! batching writes, and the views and measurements.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use presence_client::{
    Client, ClientError, ClientMessage, ConnectOptions, Connection, ErrorCode, InboxKind, Moved,
    PresenceEntry, QuicCert, QuicEndpoint, ServerMessage, State, Status, Transport,
    TransportOptions,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::ledger::{Delivery, DeviceChat, How, Ledger};
use super::proto::{Cmd, ConnectSpec, HistOut, HostInit, HostStats, NodeAddrs, Reply, ViewOut};

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
    /// Probes from a sender on another node than the receiver.
    probe_cross: Option<Histogram<u64>>,
    /// Probes from a sender on the receiver's node.
    probe_same: Option<Histogram<u64>>,
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
pub(super) struct Shared {
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
    probe_cross_receipts: AtomicU64,
    probe_same_receipts: AtomicU64,
    chat_sent: AtomicU64,
    chat_inbox: AtomicU64,
    chat_device_acks: AtomicU64,
    chat_disabled: AtomicU64,
    chat_errors: AtomicU64,
    server_closes: AtomicU64,
    vanish_closed: AtomicU64,
    /// How long a vanished client's socket is held.
    vanish_hold_ms: u64,
    hists: parking_mutex::Mutex<Hists>,
    examples: parking_mutex::Mutex<Vec<String>>,
    chat_disabled_message: parking_mutex::Mutex<Option<String>>,
    thresholds: Vec<u64>,
    /// A device acks at most this often (zero: after every burst it reads).
    ack_every: Duration,
    /// Devices resume with `after` and send unanswered sends again (`HostInit::chat_resume`).
    pub(super) chat_resume: bool,
    /// Each device's chat state, by (user, device).
    pub(super) devices: parking_mutex::Mutex<HashMap<(u32, String), Arc<DeviceMutex>>>,
    /// What was acknowledged and delivered.
    pub(super) ledger: parking_mutex::Mutex<Ledger>,
}

pub(super) type DeviceMutex = parking_mutex::Mutex<DeviceChat>;

/// std's mutex with poisoning ignored (a panicking client task must not stop the host).
pub(super) mod parking_mutex {
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
            probe_cross_receipts: g(&self.probe_cross_receipts),
            probe_same_receipts: g(&self.probe_same_receipts),
            chat_sent: g(&self.chat_sent),
            chat_inbox: g(&self.chat_inbox),
            chat_device_acks: g(&self.chat_device_acks),
            chat_disabled: g(&self.chat_disabled),
            chat_errors: g(&self.chat_errors),
            server_closes: g(&self.server_closes),
            vanish_closed: g(&self.vanish_closed),
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
            s.probe_cross_us = out(&h.probe_cross);
            s.probe_same_us = out(&h.probe_same);
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
    /// When this friend's state last changed in this view (µs since the epoch).
    changed_us: u64,
}

/// A client's view, sorted by friend id.
#[derive(Debug, Default)]
struct View {
    friends: Vec<(u32, Entry)>,
    /// When the welcome arrived: only probes scheduled after it are receipts (an old probe
    /// text shown again when its owner comes back online is not).
    since_us: u64,
    /// The node this client is connected to (an index into the host's node list).
    node: usize,
}

pub(super) struct ClientState {
    view: parking_mutex::Mutex<View>,
    /// Welcome received and neither closed nor vanished.
    pub(super) live: AtomicBool,
    /// The user (dense id) and its device's chat state (kept across connections).
    pub(super) user: u32,
    pub(super) dev: Option<Arc<DeviceMutex>>,
    /// The welcome's `inbox_seq`: entries up to it are the resumed backlog.
    pub(super) welcome_seq: AtomicU64,
    /// How the backlog counts in the ledger (a reader's is read back, not resumed).
    pub(super) backlog: How,
    /// The device has unanswered sends to send again (refused, or past the last batch).
    retry: AtomicBool,
}

impl ClientState {
    pub(super) fn new(user: u32, dev: Option<Arc<DeviceMutex>>, backlog: How) -> Self {
        ClientState {
            view: parking_mutex::Mutex::default(),
            live: AtomicBool::new(false),
            user,
            dev,
            welcome_seq: AtomicU64::new(0),
            backlog,
            retry: AtomicBool::new(false),
        }
    }

    /// The `after` of the next hello: the device's cursor, when devices resume.
    fn after(&self) -> Option<u64> {
        self.dev.as_ref().map(|d| d.lock().cursor)
    }

    /// Up to `cap` of the device's unanswered sends not in flight, to send again (a new
    /// connection has none in flight).
    fn retries(&self, cap: usize, new_connection: bool) -> Vec<String> {
        let Some(d) = &self.dev else {
            return Vec::new();
        };
        let mut d = d.lock();
        if new_connection {
            d.inflight.clear();
        }
        let (frames, more) = d.take_retries(cap);
        self.retry.store(more, Relaxed);
        frames
    }
}

pub(super) enum ClientCmd {
    Send(String),
    /// Send the device's unanswered sends again (same ids).
    Resend,
    Close,
    Vanish,
    Flush(oneshot::Sender<()>),
}

pub(super) struct ClientHandle {
    pub(super) tx: mpsc::UnboundedSender<ClientCmd>,
    pub(super) state: Arc<ClientState>,
}

fn user_id(name: &str) -> Option<u32> {
    name.strip_prefix('u')?.parse().ok()
}

fn status_code(s: Option<Status>) -> u8 {
    match s {
        None => 0,
        Some(Status::Available) => 1,
        Some(Status::Busy) => 2,
        Some(Status::Dnd) => 3,
        Some(Status::Invisible) => 4,
    }
}

fn state_code(e: &PresenceEntry<'_>, thresholds: &[u64]) -> u8 {
    match e.state {
        Some(State::Offline) => 0,
        Some(State::Online) => 1,
        Some(State::Idle) => e
            .idle_ms
            .and_then(|ms| thresholds.iter().position(|&t| t == ms))
            .map_or(255, |l| 2 + l as u8),
        None => 255,
    }
}

/// `pr:<seq>:<scheduled µs>[:<sender's node>]`: a latency probe's status text.
pub fn parse_probe(text: &str) -> Option<(u64, u64, Option<usize>)> {
    let rest = text.strip_prefix("pr:")?;
    let (seq, rest) = rest.split_once(':')?;
    let (us, node) = match rest.split_once(':') {
        Some((us, n)) => (us, Some(n.parse().ok()?)),
        None => (rest, None),
    };
    Some((seq.parse().ok()?, us.parse().ok()?, node))
}

/// `chat:<seq>:<scheduled µs>`: a chat message's client id and text.
pub fn parse_chat(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("chat:")?;
    let (seq, us) = rest.split_once(':')?;
    Some((seq.parse().ok()?, us.parse().ok()?))
}

fn apply_entries(
    view: &mut View,
    entries: &[PresenceEntry<'_>],
    sh: &Shared,
    welcome: bool,
    now: u64,
) {
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
            status: status_code(e.status),
            text: e.text.as_deref().map(Box::from),
            probe_seen: 0,
            // A welcome is no change seen: 0 until a presence frame changes the state.
            changed_us: if welcome { 0 } else { now },
        };
        let prev = pos.ok().map(|i| &view.friends[i].1);
        entry.probe_seen = prev.map_or(0, |p| p.probe_seen);
        if let Some(p) = prev
            && p.state == entry.state
        {
            entry.changed_us = p.changed_us;
        }
        if let Some((seq, at, from)) = e.text.as_deref().and_then(parse_probe)
            && seq > entry.probe_seen
        {
            entry.probe_seen = seq;
            if !welcome && at >= view.since_us {
                let us = now.saturating_sub(at);
                sh.probe_receipts.fetch_add(1, Relaxed);
                let mut h = sh.hists.lock();
                record(&mut h.probe, us);
                match from {
                    Some(n) if n != view.node => {
                        sh.probe_cross_receipts.fetch_add(1, Relaxed);
                        record(&mut h.probe_cross, us);
                    }
                    Some(_) => {
                        sh.probe_same_receipts.fetch_add(1, Relaxed);
                        record(&mut h.probe_same, us);
                    }
                    None => {}
                }
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
pub(super) fn on_frame(st: &ClientState, sh: &Shared, bytes: &[u8]) -> Option<u64> {
    let now = now_us();
    let msg = match ServerMessage::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            sh.errors.fetch_add(1, Relaxed);
            sh.example(format!("unparsable frame from the node: {e}"));
            return None;
        }
    };
    match msg {
        ServerMessage::Presence(p) => {
            sh.frames.fetch_add(1, Relaxed);
            sh.entries.fetch_add(p.changes.len() as u64, Relaxed);
            apply_entries(&mut st.view.lock(), &p.changes, sh, false, now);
        }
        ServerMessage::Pong => {
            sh.pongs.fetch_add(1, Relaxed);
        }
        ServerMessage::Sent(s) => {
            if let Some((seq, at)) = parse_chat(&s.id) {
                let resent = st.dev.as_ref().is_some_and(|d| {
                    let mut d = d.lock();
                    d.pending.remove(&seq);
                    d.inflight.remove(&seq);
                    d.resent.remove(&seq)
                });
                // A send sent again is answered again: counted and timed once.
                if sh.chat_resume && !sh.ledger.lock().acked(seq, s.msg_id.0) {
                    return None;
                }
                sh.chat_sent.fetch_add(1, Relaxed);
                if resent {
                    return None;
                }
                let us = now.saturating_sub(at);
                let mut h = sh.hists.lock();
                record(&mut h.chat_sent, us);
                record(&mut h.chat_sent_interval, us);
            }
        }
        ServerMessage::Inbox(i) => {
            // Entries up to the welcome's head are the backlog a resume reads: delivered,
            // but not timed (their send → inbox is the device's time away).
            let live = i.seq > st.welcome_seq.load(Relaxed);
            if i.kind == InboxKind::Message
                && let Some((seq, at)) = i.text.as_deref().and_then(parse_chat)
            {
                if live {
                    sh.chat_inbox.fetch_add(1, Relaxed);
                    record(&mut sh.hists.lock().chat_inbox, now.saturating_sub(at));
                }
                if sh.chat_resume && i.to.as_deref().and_then(user_id) == Some(st.user) {
                    let d = Delivery {
                        msg_id: i.msg_id.0,
                        inbox_seq: i.seq,
                        how: if live { How::Live } else { st.backlog },
                    };
                    sh.ledger.lock().delivered(st.user, seq, d);
                }
            }
            if let Some(d) = &st.dev {
                let mut d = d.lock();
                d.cursor = d.cursor.max(i.seq);
            }
            return Some(i.seq);
        }
        ServerMessage::Typing(_) => {}
        ServerMessage::Error(e) => {
            let chat = e.id.as_deref().is_some_and(|id| id.starts_with("chat:"));
            let code = e.code.as_str();
            if e.code == ErrorCode::BadRequest && e.message.contains("chat is not enabled") {
                sh.chat_disabled.fetch_add(1, Relaxed);
                let mut m = sh.chat_disabled_message.lock();
                if m.is_none() {
                    *m = Some(e.message.into_owned());
                }
            } else if chat {
                // Refused (rate, a store that could not commit): sent again on the device's
                // next connection, or by the settle, not at once: retries on the live
                // connection would add to the offered load exactly when the node is
                // refusing, and push the session into the node's flood close.
                if let (Some(d), Some((seq, _))) = (&st.dev, e.id.as_deref().and_then(parse_chat)) {
                    d.lock().inflight.remove(&seq);
                }
                sh.chat_errors.fetch_add(1, Relaxed);
                sh.example(format!("chat error {code}: {}", e.message));
            } else {
                sh.errors.fetch_add(1, Relaxed);
                sh.example(format!("error {code}: {}", e.message));
            }
        }
        other => {
            // Named, not printed: a welcome carries thousands of friends.
            let kind = match other {
                ServerMessage::Welcome(_) => "welcome",
                ServerMessage::Synced(_) => "synced",
                ServerMessage::History(_) => "history",
                _ => "unknown",
            };
            sh.errors.fetch_add(1, Relaxed);
            sh.example(format!("unexpected frame type {kind:?}"));
        }
    }
    None
}

/// Runs one write (or flush) with the host's write timeout; false if it failed or timed out.
async fn timed(write: impl Future<Output = Result<(), ClientError>>) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// Sends the owed ack if it is due; false if the write failed or timed out.
async fn ack(pacer: &mut AckPacer, sh: &Shared, conn: &mut Connection) -> bool {
    let Some(seq) = pacer.take() else {
        return true;
    };
    if timed(conn.send(&ClientMessage::Ack { seq })).await {
        sh.chat_device_acks.fetch_add(1, Relaxed);
        true
    } else {
        false
    }
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

/// How the host's clients reach the node: the WebSocket and QUIC addresses, the source
/// addresses WebSocket clients take in turn, and the UDP sockets QUIC clients share.
pub(super) struct Dialer {
    /// Each node's WebSocket and QUIC transports (one entry for one node).
    nodes: Vec<(Transport, Transport)>,
    cert: QuicCert,
    /// Dial other nodes after a failure, and follow `moved` (a cluster).
    cluster: bool,
    source_ips: Vec<Ipv4Addr>,
    next_ip: AtomicU64,
    endpoints: Vec<QuicEndpoint>,
}

/// The transport knobs of a host's clients: a host holds thousands of connections, so QUIC
/// windows are small (1 MiB per stream, 2 MiB per connection, 64 KiB to send), and WebSocket
/// frames queued together wait for one flush.
fn transport_options() -> TransportOptions {
    TransportOptions {
        connect_timeout: CONNECT_TIMEOUT,
        max_frame_in: MAX_FRAME,
        ws_write_buffer: 64 * 1024,
        quic_keep_alive: Duration::from_secs(10),
        quic_stream_receive_window: Some(1 << 20),
        quic_receive_window: Some(2 << 20),
        quic_send_window: Some(64 * 1024),
        ..TransportOptions::default()
    }
}

impl Dialer {
    fn new(init: &HostInit) -> Result<Self> {
        let mut endpoints = Vec::new();
        for _ in 0..init.quic_endpoints {
            let ep = QuicEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .context("binding a UDP socket for QUIC clients")?;
            endpoints.push(ep);
        }
        let cert = QuicCert::Pem(init.cert_pem.clone());
        let addrs = if init.nodes.is_empty() {
            vec![NodeAddrs {
                ws: init.ws,
                quic: init.quic,
            }]
        } else {
            init.nodes.clone()
        };
        Ok(Self {
            nodes: addrs
                .iter()
                .map(|n| {
                    (
                        Transport::ws(n.ws.to_string()),
                        Transport::quic(n.quic.to_string(), "localhost", cert.clone()),
                    )
                })
                .collect(),
            cert,
            cluster: init.nodes.len() > 1,
            source_ips: init.source_ips.clone(),
            next_ip: AtomicU64::new(0),
            endpoints,
        })
    }

    /// Node `i`'s transport of the kind the client uses.
    fn transport(&self, i: usize, quic: bool) -> Transport {
        let (ws, q) = &self.nodes[i % self.nodes.len()];
        if quic { q.clone() } else { ws.clone() }
    }

    /// Where a `moved` points (same kind of transport), and the index of that node when it is
    /// one of ours.
    fn follow(&self, m: &Moved, quic: bool) -> Option<(Transport, Option<usize>)> {
        let addr = if quic {
            m.quic.as_deref()?
        } else {
            m.ws.as_deref()?
        };
        let addr = addr.strip_prefix("ws://").unwrap_or(addr);
        let addr = addr.strip_suffix("/v1/ws").unwrap_or(addr);
        let known = self.nodes.iter().position(|(w, q)| {
            let t = if quic { q } else { w };
            match t {
                Transport::Ws(a) | Transport::Quic { addr: a, .. } => a == addr,
            }
        });
        let t = match known {
            Some(i) => self.transport(i, quic),
            None if quic => Transport::quic(addr, "localhost", self.cert.clone()),
            None => Transport::ws(addr),
        };
        Some((t, known))
    }

    /// The hello and the way of one client to `transport`: QUIC on its own socket (or on a
    /// shared one chosen by its id), or WebSocket from the next source address.
    fn connect_options(&self, sp: &ConnectSpec, transport: Transport) -> ConnectOptions {
        let mut transport_options = transport_options();
        if sp.quic {
            if !self.endpoints.is_empty() {
                let i = (sp.cid % self.endpoints.len() as u64) as usize;
                transport_options.quic_endpoint = self.endpoints.get(i).cloned();
            }
        } else if !self.source_ips.is_empty() {
            let i = self.next_ip.fetch_add(1, Relaxed) as usize % self.source_ips.len();
            transport_options.local_ip = Some(IpAddr::V4(self.source_ips[i]));
        }
        let mut opts = ConnectOptions::new(transport, sp.token.clone()).device(&sp.device);
        opts.hello_timeout = CONNECT_TIMEOUT;
        opts.transport_options = transport_options;
        opts
    }
}

/// One connect attempt in a cluster (then another node is tried).
const CLUSTER_ATTEMPT: Duration = Duration::from_secs(3);

/// Most `moved` one connect follows in a row.
const MAX_MOVES: u32 = 4;

/// Connects, says hello (following `moved` to the user's owner, and in a cluster trying the
/// other nodes with jittered backoff while the owner is unreachable), and builds the client's
/// view from its welcome. Returns the connection, the node that welcomed it (when known) and
/// the `moved` followed.
pub(super) async fn open(
    dialer: &Dialer,
    sp: &ConnectSpec,
    st: &ClientState,
    sh: &Shared,
) -> Result<(Connection, usize, u32), ClientError> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut node = sp.node % dialer.nodes.len();
    let mut at = Some(node);
    let mut transport = dialer.transport(node, sp.quic);
    let (mut moves, mut total_moves) = (0u32, 0u32);
    let mut backoff = Duration::from_millis(50);
    let mut jitter = sp.cid.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    loop {
        let mut opts = dialer.connect_options(sp, transport.clone());
        opts.after = st.after();
        // In a cluster one attempt may not take the whole deadline: a QUIC hello to a killed
        // node's address meets silence, not a refusal.
        let attempt = if dialer.cluster {
            match tokio::time::timeout(CLUSTER_ATTEMPT, Client::connect(&opts)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout("cluster connect attempt")),
            }
        } else {
            Client::connect(&opts).await
        };
        let err = match attempt {
            Ok((conn, welcome)) => {
                st.welcome_seq.store(welcome.inbox_seq, Relaxed);
                sh.welcome_entries
                    .fetch_add(welcome.friends.len() as u64, Relaxed);
                let mut v = st.view.lock();
                v.node = at.unwrap_or(node);
                apply_entries(&mut v, &welcome.friends, sh, true, now_us());
                return Ok((conn, at.unwrap_or(node), total_moves));
            }
            Err(e) => e,
        };
        if let ClientError::Moved(m) = &err
            && moves < MAX_MOVES
            && let Some((t, i)) = dialer.follow(m, sp.quic)
        {
            moves += 1;
            total_moves += 1;
            transport = t;
            at = i;
            continue;
        }
        let fatal = matches!(
            err,
            ClientError::Config(_)
                | ClientError::Refused {
                    code: ErrorCode::Unauthorized | ErrorCode::Protocol,
                    ..
                }
        );
        if !dialer.cluster || fatal || tokio::time::Instant::now() + backoff >= deadline {
            return Err(err);
        }
        // The owner is down or the slot is between owners: another node, after a jittered
        // pause (50 ms doubling to 1 s, ±50%).
        jitter = jitter.rotate_left(17) ^ 0x2545_f491_4f6c_dd1d;
        let pause = backoff.mul_f64(0.5 + (jitter % 1000) as f64 / 1000.0);
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        node = (node + 1) % dialer.nodes.len();
        at = Some(node);
        transport = dialer.transport(node, sp.quic);
        moves = 0;
    }
}

pub(super) async fn client(
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
        open(&dialer, &sp, &st, &sh).await
    };
    let (conn, node, moves) = match opened {
        Ok(c) => c,
        Err(e) => {
            sh.connect_failures.fetch_add(1, Relaxed);
            let reason = match e {
                ClientError::Timeout(_) => format!("no welcome within {CONNECT_TIMEOUT:?}"),
                e => e.to_string(),
            };
            let _ = replies.send(Reply::ConnectFailed {
                cid: sp.cid,
                reason,
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
    let _ = replies.send(Reply::Connected {
        cid: sp.cid,
        node,
        moves,
    });
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

/// Serves a connection; returns Some(reason) when it ended without being told to.
async fn run_conn(
    mut conn: Connection,
    sp: &ConnectSpec,
    rx: &mut mpsc::UnboundedReceiver<ClientCmd>,
    st: &Arc<ClientState>,
    sh: &Arc<Shared>,
) -> Option<String> {
    if let Some(first) = &sp.first
        && !timed(conn.send_frame(first.as_bytes())).await
    {
        return Some("write failed".into());
    }
    // A client sends again what its device sent and never saw answered, with the same ids.
    if !resend(&mut conn, st, sh, FIRST_RETRIES, true).await {
        return Some("write failed".into());
    }
    let mut pacer = AckPacer::new(sh.ack_every);
    let mut retry_at = tokio::time::Instant::now() + RETRY_EVERY;
    loop {
        tokio::select! {
            f = conn.recv_frame() => {
                // This frame and those already read behind it, then one cumulative `ack`
                // for the inbox entries among them, as a client acks what it has shown.
                let mut f = f;
                loop {
                    match f {
                        Ok(frame) => pacer.owe(on_frame(st, sh, &frame)),
                        Err(e) => return Some(format!("closed by the node: {e}")),
                    }
                    match conn.recv_frame().now_or_never() {
                        Some(next) => f = next,
                        None => break,
                    }
                }
                if !ack(&mut pacer, sh, &mut conn).await {
                    return Some("write failed".into());
                }
            }
            () = tokio::time::sleep_until(retry_at), if st.retry.load(Relaxed) => {
                retry_at = tokio::time::Instant::now() + RETRY_EVERY;
                if !resend(&mut conn, st, sh, RETRIES, false).await {
                    return Some("write failed".into());
                }
            }
            () = tokio::time::sleep_until(pacer.due()), if pacer.owed.is_some() => {
                if !ack(&mut pacer, sh, &mut conn).await {
                    return Some("write failed".into());
                }
            }
            c = rx.recv() => {
                // Frames queued together leave in one write, as a client writes what it
                // has to say at once (a chat message's `activity` and `send`, say): a
                // write each doubled the syscalls of both sides.
                let mut c = c;
                let mut fed = false;
                loop {
                    if fed && !matches!(c, Some(ClientCmd::Send(_))) {
                        if !timed(conn.flush()).await {
                            return Some("write failed".into());
                        }
                        fed = false;
                    }
                    match c {
                        Some(ClientCmd::Send(s)) => {
                            if !timed(conn.feed_frame(s.as_bytes())).await {
                                return Some("write failed".into());
                            }
                            fed = true;
                        }
                        Some(ClientCmd::Flush(ack)) => { let _ = ack.send(()); }
                        Some(ClientCmd::Resend) => st.retry.store(true, Relaxed),
                        Some(ClientCmd::Vanish) => {
                            st.live.store(false, Relaxed);
                            vanish(conn, Duration::from_millis(sh.vanish_hold_ms), sh).await;
                            return None;
                        }
                        Some(ClientCmd::Close) | None => {
                            st.live.store(false, Relaxed);
                            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                            return None;
                        }
                    }
                    match rx.try_recv() {
                        Ok(next) => c = Some(next),
                        Err(_) => break,
                    }
                }
                if fed && !timed(conn.flush()).await {
                    return Some("write failed".into());
                }
            }
        }
    }
}

/// Unanswered sends a new connection sends at once, and then every `RETRY_EVERY` while any
/// are left or refused: within the node's per-session bucket (burst 60, 20 a second), with
/// room for the device's own messages.
const FIRST_RETRIES: usize = 40;
const RETRIES: usize = 10;
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Writes some of the device's unanswered sends again; false if the write failed.
async fn resend(
    conn: &mut Connection,
    st: &ClientState,
    sh: &Shared,
    cap: usize,
    new_connection: bool,
) -> bool {
    let frames = st.retries(cap, new_connection);
    if frames.is_empty() {
        return true;
    }
    sh.ledger.lock().sends_resent += frames.len() as u64;
    for f in &frames {
        if !timed(conn.feed_frame(f.as_bytes())).await {
            return false;
        }
    }
    timed(conn.flush()).await
}

/// A device that vanished (a phone that lost its network) says nothing more, reads and acks
/// nothing, and takes no more commands (the host forgot it): a WebSocket is held open unread
/// (no pongs), a QUIC connection's own socket drops every datagram (no acknowledgements), so
/// only the node's heartbeat timeout ends the session. Held for `hold`, then let go. A QUIC
/// client on a shared socket (`--quic-endpoints` above 0) cannot fall silent alone: it
/// closes, and the node sees a dropped connection.
async fn vanish(conn: Connection, hold: Duration, sh: &Shared) {
    let gone = conn.vanish();
    if !gone.silent() {
        sh.vanish_closed.fetch_add(1, Relaxed);
    }
    tokio::time::sleep(hold).await;
    drop(gone);
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
        vanish_hold_ms: init.vanish_hold_ms,
        chat_resume: init.chat_resume,
        ..Shared::default()
    });
    let sem = Arc::new(Semaphore::new(init.connect_parallel.max(1)));
    let dialer = match Dialer::new(&init) {
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
                let dev = sh.chat_resume.then(|| {
                    let d = sh
                        .devices
                        .lock()
                        .entry((spec.user, spec.device.clone()))
                        .or_default()
                        .clone();
                    d.lock().spec = Some(spec.clone());
                    d
                });
                let state = Arc::new(ClientState::new(spec.user, dev, How::Resume));
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
            Cmd::ChatSend { cid, seq, msg } => {
                if let Some(c) = clients.get(&cid) {
                    if let Some(d) = &c.state.dev {
                        let mut d = d.lock();
                        d.pending.insert(seq, msg.clone());
                        d.inflight.insert(seq);
                    }
                    let _ = c.tx.send(ClientCmd::Send(msg));
                }
            }
            Cmd::SettleChat { seq, timeout_ms } => {
                let live: Vec<(
                    Arc<DeviceMutex>,
                    mpsc::UnboundedSender<ClientCmd>,
                    Arc<ClientState>,
                )> = clients
                    .values()
                    .filter_map(|c| Some((c.state.dev.clone()?, c.tx.clone(), c.state.clone())))
                    .collect();
                tokio::spawn(super::settle::settle_sends(
                    dialer.clone(),
                    sem.clone(),
                    sh.clone(),
                    live,
                    Duration::from_millis(timeout_ms),
                    seq,
                    replies.clone(),
                ));
            }
            Cmd::Ledger { seq } => {
                let ledger = Box::new(sh.ledger.lock().to_wire());
                let _ = replies.send(Reply::Ledger { seq, ledger });
            }
            Cmd::ReadInboxes { seq, users } => {
                tokio::spawn(super::settle::read_inboxes(
                    dialer.clone(),
                    sh.clone(),
                    users,
                    seq,
                    replies.clone(),
                ));
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
                // A client still connecting has put nothing on the wire yet (and in a
                // cluster may be retrying for seconds while a dead node's slots move): it
                // would hold the check until the flush timeout.
                for c in clients.values().filter(|c| c.state.live.load(Relaxed)) {
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
                        changed_us: v.friends.iter().map(|(_, e)| e.changed_us).collect(),
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

/// What a process holding many clients needs: the open-files limit at its hard maximum, and a
/// two-thread runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
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

    /// Frames as the node writes them, through the typed parse, into a client's view and the
    /// host's counters.
    #[test]
    fn frames_build_the_view_and_the_counters() {
        let sh = Shared {
            thresholds: vec![60_000, 120_000],
            ..Shared::default()
        };
        let st = ClientState::new(1, None, How::Resume);
        let welcome = br#"{"acked_seq":0,"device":"d","friends":[{"state":"online","user":"u7"},{"state":"offline","user":"u3"}],"heartbeat_ms":45000,"idle_thresholds_ms":[60000,120000],"inbox_seq":0,"tick":1,"type":"welcome","user":"u1"}"#;
        let Ok(ServerMessage::Welcome(w)) = ServerMessage::parse(welcome) else {
            panic!("a welcome");
        };
        apply_entries(&mut st.view.lock(), &w.friends, &sh, true, now_us());
        let at = now_us();
        let frames = [
            format!(
                r#"{{"type":"presence","tick":2,"changes":[{{"idle_ms":120000,"state":"idle","status":"busy","text":"pr:1:{at}","user":"u3"}},{{"removed":true,"user":"u7"}},{{"state":"online","user":"x9"}}]}}"#
            ),
            format!(r#"{{"id":"chat:1:{at}","msg_id":"0553540624800000","ts":1,"type":"sent"}}"#),
            r#"{"type":"pong"}"#.to_owned(),
            r#"{"type":"error","code":"bad_request","message":"chat is not enabled on this node"}"#
                .to_owned(),
            r#"{"type":"welcome"}"#.to_owned(),
        ];
        for f in &frames {
            assert_eq!(on_frame(&st, &sh, f.as_bytes()), None, "{f}");
        }
        let inbox = format!(
            r#"{{"from":"u7","kind":"message","msg_id":"0553540624800000","seq":5,"text":"chat:2:{at}","to":"u1","ts":1,"type":"inbox"}}"#
        );
        assert_eq!(on_frame(&st, &sh, inbox.as_bytes()), Some(5));

        let view = st.view.lock();
        assert_eq!(view.friends.len(), 1, "u7 removed, x9 not a user");
        let (id, e) = &view.friends[0];
        assert_eq!(
            (*id, e.state, e.status),
            (3, 3, 2),
            "u3: idle level 2, busy"
        );
        assert_eq!(e.probe_seen, 1);
        let s = sh.stats(true);
        assert_eq!((s.frames, s.entries, s.unknown_users), (1, 3, 1));
        assert_eq!((s.probe_receipts, s.chat_sent, s.chat_inbox), (1, 1, 1));
        assert_eq!((s.pongs, s.chat_disabled, s.errors), (1, 1, 1));
        assert_eq!(s.error_examples.len(), 1, "{:?}", s.error_examples);
        assert!(
            s.error_examples[0].starts_with("unparsable frame from the node: missing field"),
            "{:?}",
            s.error_examples
        );
    }

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

    /// A device that resumes: `sent` clears its unanswered send and is counted once however
    /// often the send went; inbox entries move its cursor and land in the ledger once, the
    /// backlog (up to the welcome's head) as resumed and untimed.
    #[test]
    fn a_resuming_device_keeps_its_cursor_and_ledger() {
        let sh = Shared {
            chat_resume: true,
            ..Shared::default()
        };
        let dev = Arc::new(DeviceMutex::default());
        dev.lock().pending.insert(3, "send".into());
        let st = ClientState::new(1, Some(dev.clone()), How::Resume);
        st.welcome_seq.store(4, Relaxed);
        assert_eq!(st.after(), Some(0));
        assert_eq!(st.retries(10, true), vec!["send".to_owned()]);
        assert!(st.retries(10, false).is_empty(), "in flight");
        let at = now_us();
        let sent =
            format!(r#"{{"id":"chat:3:{at}","msg_id":"0553540624800000","ts":1,"type":"sent"}}"#);
        on_frame(&st, &sh, sent.as_bytes());
        on_frame(&st, &sh, sent.as_bytes());
        assert!(dev.lock().pending.is_empty());
        assert_eq!(sh.chat_sent.load(Relaxed), 1);
        let inbox = |seq: u64, chat: u64, to: &str| {
            format!(
                r#"{{"from":"u7","kind":"message","msg_id":"055354062480000{seq}","seq":{seq},"text":"chat:{chat}:{at}","to":"{to}","ts":1,"type":"inbox"}}"#
            )
        };
        for f in [
            inbox(4, 9, "u1"),
            inbox(5, 10, "u1"),
            inbox(5, 10, "u1"),
            inbox(6, 11, "u7"),
        ] {
            on_frame(&st, &sh, f.as_bytes());
        }
        assert_eq!(st.after(), Some(6));
        assert_eq!(sh.chat_inbox.load(Relaxed), 3, "timed: the live ones");
        let l = sh.ledger.lock();
        assert_eq!(l.acked.len(), 1);
        assert_eq!(l.resent, 1);
        assert_eq!(l.delivered.len(), 2, "u7's entry is not u1's delivery");
        assert_eq!(l.delivered[&(1, 9)].how, How::Resume);
        assert_eq!(l.delivered[&(1, 10)].how, How::Live);
        assert!(l.stored_twice.is_empty());
    }
}
