//! The messages between the driver and a client host (in this process over channels, or a
//! `dark-launch-worker` process as JSON lines over its stdin and stdout).

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Writes every message from `rx` to `out` as one JSON line, flushing whenever the queue is
/// drained, until the queue closes or the write fails (the pipe between driver and worker).
///
/// The lines gather in a buffer, so the messages queued together leave in one `write`: a
/// `write` per line costs the driver kernel time that the node beside it could use.
pub async fn pump_json_lines<T: Serialize, W: AsyncWrite + Unpin>(
    mut rx: mpsc::UnboundedReceiver<T>,
    out: W,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::new();
    while let Some(m) = rx.recv().await {
        line.clear();
        if serde_json::to_writer(&mut line, &m).is_err() {
            continue;
        }
        line.push(b'\n');
        if out.write_all(&line).await.is_err() {
            break;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            break;
        }
    }
    let _ = out.flush().await;
}

/// What a host needs to open clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInit {
    pub ws: SocketAddr,
    pub quic: SocketAddr,
    /// PEM of the node's certificate (QUIC clients verify the server against it).
    pub cert_pem: String,
    /// Source addresses WebSocket clients bind to, round robin (empty: the kernel picks).
    pub source_ips: Vec<Ipv4Addr>,
    /// quinn endpoints (UDP sockets) the host's QUIC clients share; 0: one each.
    pub quic_endpoints: usize,
    /// Handshakes in flight at once.
    pub connect_parallel: usize,
    /// Idle thresholds of the node, to turn `idle_ms` into a level.
    pub idle_thresholds_ms: Vec<u64>,
    /// A device acks its inbox at most this often, in ms (0: after every burst it reads).
    #[serde(default)]
    pub chat_ack_ms: u64,
    /// How long a vanished client's socket is held (past the node's heartbeat timeout).
    #[serde(default)]
    pub vanish_hold_ms: u64,
    /// Every node of a cluster (`ws`, `quic` above are the first): a client dials one of them
    /// and follows `moved` to its user's owner. Empty: one node.
    #[serde(default)]
    pub nodes: Vec<NodeAddrs>,
    /// Devices keep their inbox cursor and unanswered sends across connections: every hello
    /// says `after`, every new connection sends the unanswered sends again (`--chat-rate`).
    #[serde(default)]
    pub chat_resume: bool,
}

/// One node's client addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    pub ws: SocketAddr,
    pub quic: SocketAddr,
}

/// One client to open (the fields of `Cmd::Connect`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSpec {
    pub cid: u64,
    pub device: String,
    pub quic: bool,
    pub token: String,
    /// A message to send right after the welcome (a login's status).
    pub first: Option<String>,
    /// The node to dial first (an index into `HostInit::nodes`; round robin by the driver).
    #[serde(default)]
    pub node: usize,
    /// The user (dense id): its devices' chat state is kept by (user, device).
    #[serde(default)]
    pub user: u32,
}

/// Driver → host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "c")]
pub enum Cmd {
    Init(HostInit),
    /// Open a client, say hello, then send `first` (a status) if any.
    Connect(ConnectSpec),
    /// Send one JSON message on a client's connection.
    Send {
        cid: u64,
        msg: String,
    },
    /// A chat `send` (chat seq `seq`): kept by the device until answered `sent`.
    ChatSend {
        cid: u64,
        seq: u64,
        msg: String,
    },
    /// After the run: send every unanswered send again (same id) until answered, connecting
    /// devices that have no connection; answer within `timeout_ms`.
    SettleChat {
        seq: u64,
        timeout_ms: u64,
    },
    /// The host's chat ledger.
    Ledger {
        seq: u64,
    },
    /// Read these users' whole inboxes back (user, token) with a reader device each.
    ReadInboxes {
        seq: u64,
        users: Vec<(u32, String)>,
    },
    /// Close the connection (a logout or a dropped connection: the server sees a close).
    Close {
        cid: u64,
    },
    /// Go silent: keep the connection, send nothing more; the node expires it.
    Vanish {
        cid: u64,
    },
    /// Answer once every command sent before this one is on the wire.
    Flush {
        seq: u64,
    },
    /// The views of these clients.
    Snapshot {
        seq: u64,
        cids: Vec<u64>,
    },
    /// Counters; with `full`, the latency histograms too.
    Stats {
        seq: u64,
        full: bool,
    },
    Shutdown,
}

/// One client's view: (friend dense id, state code, status code, text). State code: 0
/// offline, 1 online, 2 + level idle, 255 unknown. Status code: 0 absent, 1 available,
/// 2 busy, 3 dnd, 4 invisible, 255 unknown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewOut {
    pub cid: u64,
    pub entries: Vec<(u32, u8, u8, Option<String>)>,
    /// Per entry: when the client last saw that friend's state change (µs since the epoch;
    /// the welcome counts as a change).
    #[serde(default)]
    pub changed_us: Vec<u64>,
}

/// A histogram as (value, count) pairs (microseconds).
pub type HistOut = Vec<(u64, u64)>;

/// A host's counters (cumulative).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostStats {
    pub open: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub frames: u64,
    pub entries: u64,
    pub welcome_entries: u64,
    pub pongs: u64,
    pub errors: u64,
    /// Entries naming the same user twice in one frame.
    pub duplicates: u64,
    /// Entries about a user id the host could not parse.
    pub unknown_users: u64,
    pub probe_receipts: u64,
    /// Probe receipts whose sender was on another node than the receiver (a cluster).
    #[serde(default)]
    pub probe_cross_receipts: u64,
    /// Probe receipts whose sender was on the receiver's node (a cluster).
    #[serde(default)]
    pub probe_same_receipts: u64,
    pub chat_sent: u64,
    pub chat_inbox: u64,
    /// `ack` frames the devices sent for the inbox entries they received.
    pub chat_device_acks: u64,
    pub chat_disabled: u64,
    pub chat_errors: u64,
    pub server_closes: u64,
    /// Vanished QUIC clients on a shared socket, which had to close instead of falling silent.
    #[serde(default)]
    pub vanish_closed: u64,
    pub error_examples: Vec<String>,
    pub chat_disabled_message: Option<String>,
    pub connect_us: HistOut,
    pub probe_us: HistOut,
    #[serde(default)]
    pub probe_cross_us: HistOut,
    #[serde(default)]
    pub probe_same_us: HistOut,
    pub chat_sent_us: HistOut,
    pub chat_inbox_us: HistOut,
    /// send → `sent` of the answers received since the previous stats request (every
    /// request takes it, `full` or not).
    #[serde(default)]
    pub chat_sent_interval_us: HistOut,
}

/// Host → driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "r")]
pub enum Reply {
    Ready {
        fd_limit: u64,
    },
    Connected {
        cid: u64,
        /// The node that welcomed the client (an index into `HostInit::nodes`, 0 for one
        /// node), and how many `moved` it followed to get there.
        #[serde(default)]
        node: usize,
        #[serde(default)]
        moves: u32,
    },
    ConnectFailed {
        cid: u64,
        reason: String,
    },
    /// The node closed a client that had not been told to close or vanish.
    Closed {
        cid: u64,
        reason: String,
    },
    Flushed {
        seq: u64,
        /// Clients that had not caught up within the flush timeout.
        behind: u64,
    },
    Views {
        seq: u64,
        views: Vec<ViewOut>,
    },
    Stats {
        seq: u64,
        stats: Box<HostStats>,
    },
    /// `SettleChat` done: sends still unanswered, and those that were unanswered at the start.
    Settled {
        seq: u64,
        unanswered: u64,
        pending_at_start: u64,
    },
    Ledger {
        seq: u64,
        ledger: Box<super::ledger::LedgerWire>,
    },
    /// `ReadInboxes` done: readers that could not read their inbox.
    Read {
        seq: u64,
        failed: u64,
    },
    Fatal {
        message: String,
    },
}
