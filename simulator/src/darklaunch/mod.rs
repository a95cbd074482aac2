//! `simulator dark-launch`: drives a real running presence node with many virtual clients
//! (WebSocket and QUIC) moved by the same activity model as `replay`, verifies every
//! client's view against the truth at quiescent points, and measures end-to-end latency.
//!
//! - [`node`]: start or attach to the node, the admin API client, `/proc` readings.
//! - [`cluster`]: `--cluster N`, several nodes on a private etcd and PostgreSQL, and
//!   `--kill-node-at`.
//! - [`figures`]: the cluster's benchmark figures (replication lag, graph per node, CPU per
//!   delivered change).
//! - [`host`]: the clients (in this process, and in `dark-launch-worker` processes for
//!   WebSocket clients beyond one process's open-file limit).
//! - [`verify`]: the truth engine and the comparison rule.
//! - [`out`]: the report.

pub mod cluster;
pub mod figures;
pub mod host;
pub mod ledger;
pub mod node;
pub mod out;
pub mod proto;
pub mod settle;
pub mod verify;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use presence_client::ClientMessage;
use presence_core::Status;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::activity::{ActivityModel, ActivityParams, DEVICE_NAMES, Ending, Event, EventKind};
use crate::rng::Rng;
use crate::util::{fmt_ms, parse_duration_ms};
use host::{hist_merge, new_hist, now_us};
use node::{Admin, Node, NodeTiming, proc_sample};
use out::{
    ChatOut, ConfigOut, DarkReport, DriverOut, Latency, LoadOut, ProbeOut, SampleOut, ServerOut,
    SessionsOut, ThroughputOut,
};
use proto::{Cmd, ConnectSpec, HostInit, HostStats, Reply, ViewOut};
use verify::{Oracle, VerifyCounts};

/// Idle thresholds in milliseconds, increasing.
#[derive(Debug, Clone)]
pub struct Thresholds(pub Vec<u64>);

fn parse_thresholds(s: &str) -> Result<Thresholds, String> {
    let v: Vec<u64> = s
        .split(',')
        .map(|p| parse_duration_ms(p.trim()))
        .collect::<Result<_, _>>()?;
    if v.is_empty() || v.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("{s:?}: idle thresholds must be increasing"));
    }
    Ok(Thresholds(v))
}

/// `simulator dark-launch` flags.
#[derive(Args, Debug, Clone)]
pub struct DarkLaunchArgs {
    /// Snapshot written by `simulator graph`.
    #[arg(long)]
    pub graph: PathBuf,
    /// Start this presence-node binary (on free loopback ports) ...
    #[arg(long, conflicts_with = "node_dir")]
    pub node_bin: Option<PathBuf>,
    /// ... as a cluster of N nodes on a private etcd and PostgreSQL started here (the graph
    /// bulk-loaded into PostgreSQL); clients dial any node and follow `moved`.
    #[arg(long, requires = "node_bin", conflicts_with = "data_dir")]
    pub cluster: Option<usize>,
    /// How long the cluster may take to settle at the start (every slot loaded from
    /// PostgreSQL and served, every peer link up).
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub settle_timeout: u64,
    /// The cluster nodes' lease TTL.
    #[arg(long, default_value = "2s", value_parser = parse_duration_ms)]
    pub lease_ttl: u64,
    /// `kill -9` one cluster node this long into the run, and measure the convergence.
    #[arg(long, requires = "cluster", value_parser = parse_duration_ms)]
    pub kill_node_at: Option<u64>,
    /// The node to kill (n1, n2, …; default: the one with the most sessions).
    #[arg(long, requires = "kill_node_at")]
    pub kill_node: Option<String>,
    /// Share of the killed node's users whose devices reconnect (the others stay away).
    #[arg(long, default_value_t = 0.5)]
    pub kill_reconnect_share: f64,
    /// ... with this data folder (default: a fresh temporary one, removed at the end).
    #[arg(long, requires = "node_bin")]
    pub data_dir: Option<PathBuf>,
    /// Or attach to a node running with this --data-dir (reads ready.json, admin_key,
    /// tls/cert.pem).
    #[arg(long)]
    pub node_dir: Option<PathBuf>,
    /// Admin key (default: the one in the data folder).
    #[arg(long)]
    pub admin_key: Option<String>,
    /// Extra argument for the node started with --node-bin (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub node_arg: Vec<String>,
    /// Wall-clock length of the run.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub duration: u64,
    /// Model time per wall-clock time (20: a virtual 20 s of activity per real second).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Drive only the first N users of the graph (default: all); the others stay offline.
    #[arg(long)]
    pub users: Option<u32>,
    /// Share of the driven users online at the daily peak, in (0, 1].
    #[arg(long, default_value_t = 0.3)]
    pub peak_online: f64,
    /// The node's tick (passed to a node started here; must match an attached node).
    #[arg(long, default_value = "200ms", value_parser = parse_duration_ms)]
    pub tick: u64,
    /// The node's idle thresholds (real time).
    #[arg(long, default_value = "1m,2m,5m,10m", value_parser = parse_thresholds)]
    pub idle_thresholds: Thresholds,
    /// The node's grace period.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub grace: u64,
    /// The node's heartbeat timeout.
    #[arg(long, default_value = "45s", value_parser = parse_duration_ms)]
    pub heartbeat_timeout: u64,
    /// How often each client sends a heartbeat (real time, ±10%).
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    pub client_heartbeat: u64,
    /// Share of devices that use QUIC (the rest use WebSocket), in [0, 1].
    #[arg(long, default_value_t = 0.5)]
    pub quic_share: f64,
    /// Worker processes for WebSocket clients (0: WebSocket clients in this process).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// 127.0.0.x source addresses per process for WebSocket clients (0: let the kernel pick).
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// quinn endpoints (UDP sockets) shared by the QUIC clients; 0: one each, as devices
    /// have, so that a vanished device can fall silent alone (on a shared socket it closes).
    #[arg(long, default_value_t = 0)]
    pub quic_endpoints: usize,
    /// Most sessions open at once; connects beyond it are not made (and counted).
    #[arg(long, default_value_t = 100_000)]
    pub max_sessions: u64,
    /// Open files one process may use for WebSocket clients (default: its hard limit - 300).
    #[arg(long)]
    pub fd_budget: Option<u64>,
    /// Handshakes in flight at once per process.
    #[arg(long, default_value_t = 64)]
    pub connect_parallel: usize,
    /// Latency probes (status-text changes) per second; default 1% of the driven users.
    #[arg(long)]
    pub probe_rate: Option<f64>,
    /// Chat messages per second between random friends (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub chat_rate: f64,
    /// How often a device acks its inbox at most, in ms: one cumulative `ack` of the latest
    /// seq it has read (0: one after every burst of frames it reads, the heaviest a client
    /// can reasonably be).
    #[arg(long, default_value_t = 1000)]
    pub chat_ack_ms: u64,
    /// Compare views with the truth at quiescent points; exit 3 on any mismatch.
    #[arg(long)]
    pub verify: bool,
    /// Time between quiescent points.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub check_every: u64,
    /// Timing margin of the comparison rule (and extra wait after a tick).
    #[arg(long, default_value = "150ms", value_parser = parse_duration_ms)]
    pub margin: u64,
    /// Most views compared per check (a random sample when more are open).
    #[arg(long, default_value_t = 5000)]
    pub verify_sample: usize,
    /// Friendship pairs per POST /v1/friendships.
    #[arg(long, default_value_t = 100_000)]
    pub load_batch: usize,
    /// The node already holds the graph.
    #[arg(long)]
    pub skip_load: bool,
    /// Friend cap (as the node's --max-friends).
    #[arg(long, default_value_t = 5000)]
    pub max_friends: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

impl DarkLaunchArgs {
    fn validate(&self) -> Result<()> {
        if self.node_bin.is_none() && self.node_dir.is_none() {
            bail!(
                "give --node-bin PATH (start a node) or --node-dir DIR (attach to a running one)"
            );
        }
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 1000.0) {
            bail!("--speed must be in (0, 1000]");
        }
        if !(self.peak_online > 0.0 && self.peak_online <= 1.0) {
            bail!("--peak-online must be in (0, 1], got {}", self.peak_online);
        }
        if !(0.0..=1.0).contains(&self.quic_share) {
            bail!("--quic-share must be in [0, 1], got {}", self.quic_share);
        }
        if self.cluster.is_some_and(|n| !(1..=16).contains(&n)) {
            bail!("--cluster: 1 to 16 nodes");
        }
        if !(0.0..=1.0).contains(&self.kill_reconnect_share) {
            bail!("--kill-reconnect-share must be in [0, 1]");
        }
        if let (Some(n), Some(k)) = (self.cluster, &self.kill_node)
            && !(1..=n).any(|i| *k == format!("n{i}"))
        {
            bail!("--kill-node {k:?}: the nodes are n1 to n{n}");
        }
        if self.users == Some(0) {
            bail!("--users must be at least 1");
        }
        if self.max_sessions == 0 {
            bail!("--max-sessions must be at least 1");
        }
        if self.load_batch == 0 {
            bail!("--load-batch must be at least 1");
        }
        if self
            .probe_rate
            .is_some_and(|r| !(r.is_finite() && r >= 0.0))
            || !(self.chat_rate.is_finite() && self.chat_rate >= 0.0)
        {
            bail!("--probe-rate and --chat-rate must be non-negative");
        }
        if self.workers > 64 {
            bail!("--workers: at most 64");
        }
        if (self.workers.max(1)) * self.source_ips > 250 {
            bail!("--workers × --source-ips must stay within 127.0.0.2–127.0.0.251");
        }
        // A client must heartbeat well within the timeout, pauses for checks included.
        let gap = self.client_heartbeat * 11 / 10
            + if self.verify {
                self.tick + self.margin + 500
            } else {
                0
            };
        if gap >= self.heartbeat_timeout {
            bail!(
                "--client-heartbeat {} (+10% jitter{}) does not keep sessions alive under --heartbeat-timeout {}",
                fmt_ms(self.client_heartbeat),
                if self.verify { " and check pauses" } else { "" },
                fmt_ms(self.heartbeat_timeout)
            );
        }
        Ok(())
    }
}

/// Exit codes as `replay`: 0 ok, 1 failure, 3 mismatches.
pub fn main(a: DarkLaunchArgs) -> Result<ExitCode> {
    a.validate()?;
    if !a.graph.is_file() {
        bail!(
            "graph file {} does not exist (make one with `simulator graph --users N --out FILE`)",
            a.graph.display()
        );
    }
    let rt = host::runtime()?;
    let rep = rt.block_on(run(&a))?;
    print!("{}", out::table(&rep));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.html {
        std::fs::write(p, out::html(&rep))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    if rep.verify.as_ref().is_some_and(VerifyCounts::failed) {
        eprintln!("error: --verify found views that differ from the truth (see above)");
        return Ok(ExitCode::from(3));
    }
    if rep
        .chat
        .ledger
        .as_ref()
        .is_some_and(ledger::LedgerOut::failed)
    {
        eprintln!("error: acknowledged chat messages lost or stored twice (see above)");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// A client host as the driver sees it.
struct HostLink {
    tx: mpsc::UnboundedSender<Cmd>,
    child: Option<tokio::process::Child>,
}

impl HostLink {
    fn send(&self, c: Cmd) -> Result<()> {
        self.tx
            .send(c)
            .map_err(|_| anyhow!("a client host stopped (see its error above)"))
    }
}

fn spawn_worker(
    idx: usize,
    init: HostInit,
    replies: mpsc::UnboundedSender<(usize, Reply)>,
) -> Result<HostLink> {
    let exe = std::env::current_exe().context("locating the simulator binary")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("dark-launch-worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a dark-launch worker")?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("worker has no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("worker has no stdout"))?;
    let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
    tx.send(Cmd::Init(init))
        .map_err(|_| anyhow!("worker channel closed"))?;
    tokio::spawn(proto::pump_json_lines(rx, stdin));
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => match serde_json::from_str::<Reply>(&l) {
                    Ok(r) => {
                        if replies.send((idx, r)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = replies.send((
                            idx,
                            Reply::Fatal {
                                message: format!("worker {idx} sent a bad line: {e}"),
                            },
                        ));
                        break;
                    }
                },
                _ => {
                    let _ = replies.send((
                        idx,
                        Reply::Fatal {
                            message: format!("worker {idx} exited"),
                        },
                    ));
                    break;
                }
            }
        }
    });
    Ok(HostLink {
        tx,
        child: Some(child),
    })
}

/// Where one (user, device) is connected.
#[derive(Debug, Clone, Copy)]
struct Live {
    cid: u64,
    host: usize,
    quic: bool,
}

#[derive(Debug, Clone, Copy)]
struct CidInfo {
    user: u32,
    dev: u8,
    welcomed: bool,
    /// The node that welcomed it.
    node: usize,
}

struct Driver<'a> {
    a: &'a DarkLaunchArgs,
    timing: NodeTiming,
    oracle: Oracle,
    hosts: Vec<HostLink>,
    replies: mpsc::UnboundedReceiver<(usize, Reply)>,
    users: u32,
    tokens: Vec<String>,
    live: Vec<[Option<Live>; 3]>,
    cids: HashMap<u64, CidInfo>,
    /// Connects not yet answered: user, device, dispatch time (ms).
    connecting: HashMap<u64, (u32, u8, u64)>,
    status: Vec<Status>,
    pending_status: Vec<Option<Status>>,
    /// The status sent with a connect's hello, until its welcome (or failure).
    first_status: HashMap<u64, Status>,
    probe_busy: Vec<u64>,
    next_cid: u64,
    seq: u64,
    rng: Rng,
    quic_salt: u64,
    open: u64,
    open_ws: u64,
    open_quic: u64,
    sess: SessionsOut,
    verify: VerifyCounts,
    probes: ProbeOut,
    chat: ChatOut,
    chat_stopped: bool,
    /// Per cluster node: not killed (one entry for one node).
    node_alive: Vec<bool>,
    kill: Option<cluster::KillTrack>,
    /// `moved` followed by the clients before their welcome.
    moves: u64,
    /// The recipient of each chat send (chat seq − 1).
    chat_recipients: Vec<u32>,
}

/// A client message as the text a host sends (`Cmd::Send` carries text between processes).
fn frame(m: &ClientMessage) -> String {
    // serde_json writes UTF-8.
    String::from_utf8_lossy(&m.to_frame()).into_owned()
}

fn status_msg(s: Status, text: Option<&str>) -> String {
    frame(&ClientMessage::Status {
        status: s.as_str().to_owned(),
        text: text.map(str::to_owned),
    })
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl<'a> Driver<'a> {
    fn new(
        a: &'a DarkLaunchArgs,
        timing: NodeTiming,
        oracle: Oracle,
        hosts: Vec<HostLink>,
        replies: mpsc::UnboundedReceiver<(usize, Reply)>,
        tokens: Vec<String>,
        quic_salt: u64,
    ) -> Self {
        let users = tokens.len() as u32;
        Driver {
            a,
            timing,
            oracle,
            hosts,
            replies,
            users,
            tokens,
            live: vec![[None; 3]; users as usize],
            cids: HashMap::new(),
            connecting: HashMap::new(),
            status: vec![Status::Available; users as usize],
            pending_status: vec![None; users as usize],
            first_status: HashMap::new(),
            probe_busy: vec![0; users as usize],
            next_cid: 1,
            seq: 0,
            rng: Rng::derive(a.seed, 0xDA, 1),
            quic_salt,
            open: 0,
            open_ws: 0,
            open_quic: 0,
            sess: SessionsOut::default(),
            verify: VerifyCounts::default(),
            probes: ProbeOut {
                target_ms: (a.tick + 50) as f64,
                ..ProbeOut::default()
            },
            chat: ChatOut {
                enabled: a.chat_rate > 0.0,
                ..ChatOut::default()
            },
            chat_stopped: false,
            node_alive: vec![true],
            kill: None,
            moves: 0,
            chat_recipients: Vec::new(),
        }
    }

    /// Waits until every host says Ready (or why not).
    async fn wait_ready(&mut self) -> Result<()> {
        let mut ready = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ready < self.hosts.len() {
            match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                Ok(Some((_, Reply::Ready { .. }))) => ready += 1,
                Ok(Some((h, Reply::Fatal { message }))) => bail!("client host {h}: {message}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => bail!("client hosts did not start within 30 s"),
            }
        }
        Ok(())
    }
}

impl Driver<'_> {
    fn is_quic(&self, user: u32, dev: u8) -> bool {
        let h = mix(self.quic_salt ^ (u64::from(user) << 2 | u64::from(dev)));
        (h >> 11) as f64 / (1u64 << 53) as f64 <= self.a.quic_share && self.a.quic_share > 0.0
    }

    /// The WebSocket host of a device: always the same, which keeps its chat state (inbox
    /// cursor, unanswered sends) across its connections.
    fn ws_host(&self, user: u32, dev: u8) -> usize {
        if self.hosts.len() <= 1 {
            0
        } else {
            let h = mix(self.quic_salt ^ 0x5753 ^ (u64::from(user) << 2 | u64::from(dev)));
            1 + (h % (self.hosts.len() as u64 - 1)) as usize
        }
    }

    fn send_msg(&mut self, l: Live, msg: String) -> Result<()> {
        self.sess.events_sent += 1;
        self.hosts[l.host].send(Cmd::Send { cid: l.cid, msg })
    }

    fn end_session(&mut self, l: Live) {
        self.cids.remove(&l.cid);
        self.open = self.open.saturating_sub(1);
        if l.quic {
            self.open_quic = self.open_quic.saturating_sub(1);
        } else {
            self.open_ws = self.open_ws.saturating_sub(1);
        }
    }

    fn dispatch(&mut self, ev: &Event) -> Result<()> {
        let u = ev.user;
        let ui = u as usize;
        match ev.kind {
            EventKind::Connect { device: d } => {
                self.cancel_reconnect(u, d);
                if self.open >= self.a.max_sessions {
                    self.sess.capped += 1;
                    return Ok(());
                }
                let quic = self.is_quic(u, d);
                let cid = self.next_cid;
                self.next_cid += 1;
                let host = if quic { 0 } else { self.ws_host(u, d) };
                if !self.oracle.connect(u, d, DEVICE_NAMES[d as usize]) {
                    return Ok(());
                }
                // A status the user set while no device was connected goes with the hello; the
                // truth takes it once the welcome arrives (`Reply::Connected`), as the node
                // does: a connect that takes a while (a cluster's failover) must not show the
                // truth a status the node cannot have yet.
                let first_status = self.pending_status[ui].take();
                let first = first_status.map(|s| status_msg(s, None));
                if let Some(s) = first_status {
                    self.first_status.insert(cid, s);
                }
                self.hosts[host].send(Cmd::Connect(ConnectSpec {
                    cid,
                    device: DEVICE_NAMES[d as usize].to_string(),
                    quic,
                    token: self.tokens[ui].clone(),
                    first,
                    node: self.first_node(cid),
                    user: u,
                }))?;
                self.sess.connects_sent += 1;
                self.connecting.insert(cid, (u, d, verify::now_ms()));
                self.live[ui][d as usize] = Some(Live { cid, host, quic });
                self.cids.insert(
                    cid,
                    CidInfo {
                        user: u,
                        dev: d,
                        welcomed: false,
                        node: 0,
                    },
                );
                self.open += 1;
                if quic {
                    self.open_quic += 1;
                } else {
                    self.open_ws += 1;
                }
                self.sess.peak_open = self.sess.peak_open.max(self.open);
                self.sess.peak_ws = self.sess.peak_ws.max(self.open_ws);
                self.sess.peak_quic = self.sess.peak_quic.max(self.open_quic);
            }
            EventKind::Disconnect { device: d, how } => {
                let Some(l) = self.live[ui][d as usize].take() else {
                    self.cancel_reconnect(u, d);
                    return Ok(());
                };
                self.end_session(l);
                if how == Ending::Vanished {
                    self.oracle.vanish(u, d);
                    self.hosts[l.host].send(Cmd::Vanish { cid: l.cid })?;
                } else {
                    self.oracle.close(u, d);
                    self.hosts[l.host].send(Cmd::Close { cid: l.cid })?;
                }
            }
            EventKind::Activity { device: d } | EventKind::Heartbeat { device: d } => {
                let Some(l) = self.live[ui][d as usize] else {
                    self.sess.events_without_session += 1;
                    return Ok(());
                };
                let (ok, msg) = if matches!(ev.kind, EventKind::Activity { .. }) {
                    (self.oracle.activity(u, d), ClientMessage::Activity {})
                } else {
                    (self.oracle.heartbeat(u, d), ClientMessage::Heartbeat {})
                };
                if !ok {
                    // The truth expired this session (a late heartbeat): it can no longer
                    // say what the node shows for this user.
                    self.sess.truth_expired += 1;
                    self.oracle.taint(u);
                }
                self.send_msg(l, frame(&msg))?;
            }
            EventKind::Status(s) => {
                self.status[ui] = s;
                let dev = (0..3u8).find(|&d| self.live[ui][d as usize].is_some());
                match dev {
                    Some(d) => {
                        self.oracle.status(u, d, s, None);
                        if let Some(l) = self.live[ui][d as usize] {
                            self.send_msg(l, status_msg(s, None))?;
                        }
                    }
                    None => self.pending_status[ui] = Some(s),
                }
            }
        }
        Ok(())
    }

    /// A connected device of a random user, or None after a few tries.
    fn random_online(&mut self, visible: bool) -> Option<(u32, u8, Live)> {
        for _ in 0..64 {
            let u = self.rng.below(u64::from(self.users)) as u32;
            if visible && self.status[u as usize] == Status::Invisible {
                continue;
            }
            for d in 0..3u8 {
                if let Some(l) = self.live[u as usize][d as usize]
                    && self.cids.get(&l.cid).is_some_and(|c| c.welcomed)
                {
                    return Some((u, d, l));
                }
            }
        }
        None
    }

    fn welcomed_sessions(&self, user: u32) -> u64 {
        self.live[user as usize]
            .iter()
            .flatten()
            .filter(|l| self.cids.get(&l.cid).is_some_and(|c| c.welcomed))
            .count() as u64
    }

    fn probe(&mut self, scheduled_us: u64) -> Result<()> {
        let now = now_us();
        for _ in 0..8 {
            let Some((u, d, l)) = self.random_online(true) else {
                return Ok(());
            };
            if self.probe_busy[u as usize] > now {
                continue;
            }
            self.probe_busy[u as usize] = now + (2 * self.timing.tick_ms + 100) * 1000;
            self.probes.sent += 1;
            let text = match self.cids.get(&l.cid) {
                // In a cluster the sender's node rides along: receipts on other nodes are
                // cross-node latency.
                Some(c) if self.a.cluster.is_some() => {
                    format!("pr:{}:{scheduled_us}:{}", self.probes.sent, c.node)
                }
                _ => format!("pr:{}:{scheduled_us}", self.probes.sent),
            };
            let s = self.status[u as usize];
            self.oracle.status(u, d, s, Some(&text));
            let expected: u64 = self
                .oracle
                .friends(u)
                .into_iter()
                .filter(|&f| f < self.users)
                .map(|f| self.welcomed_sessions(f))
                .sum();
            self.probes.expected_receipts += expected;
            return self.send_msg(l, status_msg(s, Some(&text)));
        }
        Ok(())
    }

    fn chat_send(&mut self, scheduled_us: u64) -> Result<()> {
        let Some((u, d, l)) = self.random_online(false) else {
            return Ok(());
        };
        let friends = self.oracle.friends(u);
        if friends.is_empty() {
            return Ok(());
        }
        let f = friends[self.rng.below(friends.len() as u64) as usize];
        self.chat.sent += 1;
        self.chat_recipients.push(f);
        let id = format!("chat:{}:{scheduled_us}", self.chat.sent);
        // Explicit activity first, so the truth is the same whether or not the node counts
        // a chat message as activity.
        self.oracle.activity(u, d);
        self.send_msg(l, frame(&ClientMessage::Activity {}))?;
        let msg = ClientMessage::Send {
            text: id.clone(),
            id,
            to: Some(format!("u{f}")),
            group: None,
        };
        self.sess.events_sent += 1;
        self.hosts[l.host].send(Cmd::ChatSend {
            cid: l.cid,
            seq: self.chat.sent,
            msg: frame(&msg),
        })
    }

    /// Handles a reply that is not the answer to a pending request.
    fn on_reply(&mut self, host: usize, r: Reply) -> Result<()> {
        match r {
            Reply::Connected { cid, node, moves } => {
                self.moves += u64::from(moves);
                let current = if let Some(c) = self.cids.get_mut(&cid) {
                    c.welcomed = true;
                    c.node = node;
                    true
                } else {
                    false
                };
                if let Some((u, dev, at)) = self.connecting.remove(&cid) {
                    self.oracle.connected(u, at, current.then_some(dev));
                    if let Some(s) = self.first_status.remove(&cid) {
                        // Not current: the model ended this device before its welcome, but the
                        // node got the status with it all the same; the truth, with no session
                        // to take it on, can no longer follow this user.
                        if !(current && self.oracle.status(u, dev, s, None)) {
                            self.oracle.taint(u);
                        }
                    }
                }
                if current {
                    self.on_welcomed(cid, node)?;
                }
            }
            Reply::ConnectFailed { cid, .. } | Reply::Closed { cid, .. }
                if self.kill.as_ref().is_some_and(|k| k.ignores(cid)) => {}
            Reply::ConnectFailed { cid, reason } | Reply::Closed { cid, reason } => {
                if let Some((u, _, at)) = self.connecting.remove(&cid) {
                    self.oracle.connected(u, at, None);
                    // The node never saw the status sent with the hello: the next connect
                    // sends it again.
                    if let Some(s) = self.first_status.remove(&cid) {
                        self.pending_status[u as usize].get_or_insert(s);
                    }
                }
                let failed_connect = !self.cids.get(&cid).is_some_and(|c| c.welcomed);
                if failed_connect {
                    self.sess.connect_failures += 1;
                    if self.sess.connect_failure_examples.len() < 5 {
                        self.sess
                            .connect_failure_examples
                            .push(format!("connect failed: {reason}"));
                    }
                } else {
                    self.sess.closed_by_node += 1;
                    if self.sess.closed_by_node_examples.len() < 5 {
                        self.sess
                            .closed_by_node_examples
                            .push(format!("closed by the node: {reason}"));
                    }
                }
                if let Some(c) = self.cids.get(&cid).copied() {
                    // The truth can no longer follow this user.
                    self.oracle.taint(c.user);
                    if let Some(l) = self.live[c.user as usize][c.dev as usize]
                        && l.cid == cid
                    {
                        self.live[c.user as usize][c.dev as usize] = None;
                        self.end_session(l);
                        self.oracle.vanish(c.user, c.dev);
                    }
                }
            }
            Reply::Fatal { message } => bail!("client host {host}: {message}"),
            Reply::Ready { .. }
            | Reply::Flushed { .. }
            | Reply::Views { .. }
            | Reply::Stats { .. }
            | Reply::Settled { .. }
            | Reply::Ledger { .. }
            | Reply::Read { .. } => {}
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        while let Ok((h, r)) = self.replies.try_recv() {
            self.on_reply(h, r)?;
        }
        Ok(())
    }

    /// Sends one request per host and collects the answers.
    async fn request(
        &mut self,
        mk: impl Fn(usize, u64) -> Cmd,
        timeout: Duration,
    ) -> Result<Vec<Reply>> {
        self.seq += 1;
        let seq = self.seq;
        for (i, h) in self.hosts.iter().enumerate() {
            h.send(mk(i, seq))?;
        }
        let mut got: Vec<Option<Reply>> = vec![None; self.hosts.len()];
        let deadline = tokio::time::Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            let (h, r) = match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                Ok(Some(x)) => x,
                Ok(None) => bail!("every client host stopped"),
                Err(_) => bail!("a client host did not answer within {timeout:?}"),
            };
            let s = match &r {
                Reply::Flushed { seq, .. }
                | Reply::Views { seq, .. }
                | Reply::Stats { seq, .. }
                | Reply::Settled { seq, .. }
                | Reply::Ledger { seq, .. }
                | Reply::Read { seq, .. } => Some(*seq),
                _ => None,
            };
            if s == Some(seq) {
                got[h] = Some(r);
            } else {
                self.on_reply(h, r)?;
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    async fn stats(&mut self, full: bool) -> Result<HostStats> {
        let rs = self
            .request(|_, seq| Cmd::Stats { seq, full }, Duration::from_secs(30))
            .await?;
        let mut t = HostStats::default();
        let mut hists = [
            new_hist(),
            new_hist(),
            new_hist(),
            new_hist(),
            new_hist(),
            new_hist(),
            new_hist(),
        ];
        for r in rs {
            if let Reply::Stats { stats: s, .. } = r {
                t.open += s.open;
                t.connects += s.connects;
                t.connect_failures += s.connect_failures;
                t.frames += s.frames;
                t.entries += s.entries;
                t.welcome_entries += s.welcome_entries;
                t.pongs += s.pongs;
                t.errors += s.errors;
                t.duplicates += s.duplicates;
                t.unknown_users += s.unknown_users;
                t.probe_receipts += s.probe_receipts;
                t.probe_cross_receipts += s.probe_cross_receipts;
                t.probe_same_receipts += s.probe_same_receipts;
                t.chat_sent += s.chat_sent;
                t.chat_inbox += s.chat_inbox;
                t.chat_device_acks += s.chat_device_acks;
                t.chat_disabled += s.chat_disabled;
                t.chat_errors += s.chat_errors;
                t.server_closes += s.server_closes;
                t.vanish_closed += s.vanish_closed;
                t.error_examples.extend(s.error_examples);
                if t.chat_disabled_message.is_none() {
                    t.chat_disabled_message = s.chat_disabled_message;
                }
                hist_merge(&mut hists[0], &s.connect_us);
                hist_merge(&mut hists[1], &s.probe_us);
                hist_merge(&mut hists[2], &s.chat_sent_us);
                hist_merge(&mut hists[3], &s.chat_inbox_us);
                hist_merge(&mut hists[4], &s.chat_sent_interval_us);
                hist_merge(&mut hists[5], &s.probe_cross_us);
                hist_merge(&mut hists[6], &s.probe_same_us);
            }
        }
        let [a, b, c, d, e, f, g] = hists;
        t.chat_sent_interval_us = host::hist_out(&e);
        if full {
            t.connect_us = host::hist_out(&a);
            t.probe_us = host::hist_out(&b);
            t.chat_sent_us = host::hist_out(&c);
            t.chat_inbox_us = host::hist_out(&d);
            t.probe_cross_us = host::hist_out(&f);
            t.probe_same_us = host::hist_out(&g);
        }
        Ok(t)
    }

    /// One quiescent point: flush, wait a tick and the margin, compare.
    async fn check(&mut self) -> Result<()> {
        let rs = self
            .request(|_, seq| Cmd::Flush { seq }, Duration::from_secs(30))
            .await?;
        for r in rs {
            if let Reply::Flushed { behind, .. } = r {
                self.verify.flush_behind += behind;
            }
        }
        tokio::time::sleep(Duration::from_millis(self.timing.tick_ms + self.a.margin)).await;
        self.drain()?;
        let mut welcomed: Vec<u64> = self
            .cids
            .iter()
            .filter(|(_, c)| c.welcomed && !self.oracle.tainted[c.user as usize])
            .map(|(&cid, _)| cid)
            .collect();
        welcomed.sort_unstable();
        if welcomed.len() > self.a.verify_sample {
            for i in 0..self.a.verify_sample {
                let j = i + self.rng.below((welcomed.len() - i) as u64) as usize;
                welcomed.swap(i, j);
            }
            welcomed.truncate(self.a.verify_sample);
        }
        let mut per_host: Vec<Vec<u64>> = vec![Vec::new(); self.hosts.len()];
        for cid in welcomed {
            if let Some(c) = self.cids.get(&cid)
                && let Some(l) = self.live[c.user as usize][c.dev as usize]
                && l.cid == cid
            {
                per_host[l.host].push(cid);
            }
        }
        let rs = self
            .request(
                |h, seq| Cmd::Snapshot {
                    seq,
                    cids: per_host[h].clone(),
                },
                Duration::from_secs(60),
            )
            .await?;
        let mut views: Vec<(u32, ViewOut)> = Vec::new();
        for r in rs {
            if let Reply::Views { views: vs, .. } = r {
                for v in vs {
                    if let Some(c) = self.cids.get(&v.cid) {
                        views.push((c.user, v));
                    }
                }
            }
        }
        let connecting: std::collections::HashSet<u32> =
            self.connecting.values().map(|&(u, _, _)| u).collect();
        let bad = self
            .oracle
            .check(&views, &connecting, self.a.margin, &mut self.verify);
        self.after_check(&views, bad);
        tracing::info!(
            views = views.len(),
            bad,
            open = self.open,
            "quiescent point checked"
        );
        Ok(())
    }
}

fn lat(h: &proto::HistOut) -> Latency {
    let mut x: Histogram<u64> = new_hist();
    hist_merge(&mut x, h);
    Latency::from_hist(&x)
}

/// One run, phase by phase: the graph, the activity model, the node, the friendships and
/// tokens it needs, the client hosts, the schedule, the stop, the report.
async fn run(a: &DarkLaunchArgs) -> Result<DarkReport> {
    let t_start = Instant::now();
    let timing = NodeTiming {
        tick_ms: a.tick,
        idle_thresholds_ms: a.idle_thresholds.0.clone(),
        grace_ms: a.grace,
        heartbeat_timeout_ms: a.heartbeat_timeout,
    };
    let graph = load_graph(a, &timing)?;
    let (mut model, quic_salt) = activity_model(a, graph.users)?;
    check_fd_budget(a, &model, graph.users, quic_salt)?;
    let (mut target, friendships) = match (a.cluster, &a.node_bin) {
        (Some(n), Some(bin)) => {
            let c = cluster::Cluster::start(a, bin, &timing, n, &graph.edges).await?;
            let f = Friendships {
                batches: 1,
                seconds: c.load_seconds,
            };
            (Target::of_cluster(c)?, f)
        }
        _ => {
            let mut t = start_node(a, &timing).await?;
            let f = load_friendships(a, &mut t.admin, graph.edges).await?;
            (t, f)
        }
    };
    let tokens = mint_tokens(target.admin_addr, &target.key, graph.users, a.duration).await?;
    let hosts = open_hosts(a, &target, &timing)?;
    let probe_rate = a.probe_rate.unwrap_or(f64::from(graph.users) * 0.01);
    let mut d = Driver::new(
        a,
        timing,
        graph.oracle,
        hosts.links,
        hosts.replies,
        tokens.tokens,
        quic_salt,
    );
    d.node_alive = vec![true; target.addrs.len().max(1)];
    d.wait_ready().await?;

    let result = drive(&mut d, &mut model, &mut target, probe_rate).await;
    let stopped = stop(&mut d, &mut target, result).await?;

    let run = RunFacts {
        graph_users: graph.graph_users,
        graph_edges: graph.graph_edges,
        users: graph.users,
        node_desc: target.desc,
        source_ips: hosts.source_ips,
        probe_rate,
        friendships,
        tokens_s: tokens.seconds,
        t_start,
    };
    Ok(report(a, &mut d, run, stopped))
}

/// The graph, read by the truth engine (which doubles as the graph reader), and its edges
/// for the node.
struct Graph {
    oracle: Oracle,
    graph_users: u64,
    /// The users the model drives (`--users`, at most the graph's).
    users: u32,
    /// Each friendship once, (lower id, higher id).
    edges: Vec<(u32, u32)>,
    graph_edges: u64,
}

/// Reads the graph snapshot into the truth engine and lists its friendships.
fn load_graph(a: &DarkLaunchArgs, timing: &NodeTiming) -> Result<Graph> {
    let oracle = Oracle::load(&a.graph, timing, a.max_friends)?;
    let graph_users = oracle.users() as u64;
    if graph_users == 0 {
        bail!("the graph {} has no users", a.graph.display());
    }
    let users = a
        .users
        .map_or(graph_users, |u| u64::from(u).min(graph_users)) as u32;
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for u in 0..graph_users as u32 {
        for f in oracle.friends(u) {
            if f > u {
                edges.push((u, f));
            }
        }
    }
    let graph_edges = edges.len() as u64;
    Ok(Graph {
        oracle,
        graph_users,
        users,
        edges,
        graph_edges,
    })
}

/// The activity model, its clock mapped onto the wall clock by --speed, and the salt that
/// decides which devices use QUIC.
fn activity_model(a: &DarkLaunchArgs, users: u32) -> Result<(ActivityModel, u64)> {
    let virtual_ms = (a.duration as f64 * a.speed) as u64;
    let mut params = ActivityParams::new(users, a.peak_online);
    params.start_hour = (params.peak_hour - virtual_ms as f64 / 7_200_000.0).rem_euclid(24.0);
    params.heartbeat_ms = ((a.client_heartbeat as f64 * a.speed) as u64).max(10);
    params.heartbeat_jitter_ms = params.heartbeat_ms / 10;
    let model = ActivityModel::new(params, a.seed)?;
    Ok((model, mix(a.seed ^ 0x0D1C)))
}

/// Refuses a run whose WebSocket clients could need more open files than the client
/// processes have.
fn check_fd_budget(
    a: &DarkLaunchArgs,
    model: &ActivityModel,
    users: u32,
    quic_salt: u64,
) -> Result<()> {
    // Sessions this run might open on WebSocket: every (user, device) mapped to WebSocket.
    let mut ws_slots = 0u64;
    {
        let probe_driver_share = a.quic_share;
        for u in 0..users {
            for d in 0..model.devices_of(u) as u8 {
                let h = mix(quic_salt ^ (u64::from(u) << 2 | u64::from(d)));
                let quic = (h >> 11) as f64 / (1u64 << 53) as f64 <= probe_driver_share
                    && probe_driver_share > 0.0;
                if !quic {
                    ws_slots += 1;
                }
            }
        }
    }
    // Devices are not always the first ones (a single laptop is device 1), but the count
    // per user is what bounds the sessions.
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(_, h)| h);
    let budget = a.fd_budget.unwrap_or(hard.saturating_sub(300));
    let ws_bound = ws_slots.min(a.max_sessions);
    let ws_processes = a.workers.max(1) as u64;
    if ws_bound > ws_processes * budget {
        bail!(
            "up to {ws_bound} WebSocket clients may be open at once ({ws_slots} WebSocket devices, \
             --max-sessions {}), but {ws_processes} process(es) × {budget} open files allow only {}: \
             use --workers {} or more, a larger --quic-share, or a lower --max-sessions",
            a.max_sessions,
            ws_processes * budget,
            ws_bound.div_ceil(budget.max(1))
        );
    }
    if ws_bound > 19_900 {
        tracing::warn!(
            ws_bound,
            "more WebSocket clients than one node process can hold under a 20,000-file limit"
        );
    }
    Ok(())
}

/// The node under test: its process (or the attached one), its admin API, and how the report
/// names it.
struct Target {
    /// The node (one node), or none in a cluster.
    node: Option<Node>,
    cluster: Option<cluster::Cluster>,
    /// A node's admin API (the first node's in a cluster), and its key.
    admin: Admin,
    admin_addr: std::net::SocketAddr,
    key: String,
    /// Every node's client addresses, and their certificates (one PEM bundle).
    addrs: Vec<proto::NodeAddrs>,
    cert_pem: String,
    desc: String,
}

impl Target {
    fn of_node(node: Node, admin: Admin, desc: String) -> Target {
        Target {
            admin_addr: node.ready.admin,
            key: node.key.clone(),
            addrs: vec![proto::NodeAddrs {
                ws: node.ready.ws,
                quic: node.ready.quic,
            }],
            cert_pem: node.cert_pem.clone(),
            node: Some(node),
            cluster: None,
            admin,
            desc,
        }
    }

    fn of_cluster(c: cluster::Cluster) -> Result<Target> {
        let first = &c
            .members
            .first()
            .ok_or_else(|| anyhow!("a cluster without nodes"))?
            .node;
        Ok(Target {
            admin: Admin::new(first.ready.admin, &first.key),
            admin_addr: first.ready.admin,
            key: first.key.clone(),
            addrs: c.addrs(),
            cert_pem: c.cert_pem(),
            desc: c.desc(),
            node: None,
            cluster: Some(c),
        })
    }

    /// CPU and RSS of the node, or of the cluster's nodes summed.
    fn sample(&mut self) -> Option<node::ProcSample> {
        match (&self.node, &mut self.cluster) {
            (Some(n), _) => n.pid().and_then(proc_sample),
            (None, Some(c)) => Some(c.sample()),
            (None, None) => None,
        }
    }

    /// Why a node stopped on its own, if one did.
    fn exited(&mut self) -> Option<String> {
        if let Some(n) = self.node.as_mut() {
            return n.exited().map(|s| {
                format!(
                    "the node exited during the run ({s}); see its log in {}",
                    n.dir.display()
                )
            });
        }
        self.cluster.as_mut()?.exited()
    }

    fn stop(&mut self) {
        if let Some(n) = self.node.as_mut() {
            n.stop();
        }
        if let Some(c) = self.cluster.as_mut() {
            c.stop();
        }
    }
}

/// Starts the node (or attaches to a running one) and checks that it is healthy and that
/// the admin key works.
async fn start_node(a: &DarkLaunchArgs, timing: &NodeTiming) -> Result<Target> {
    let mut node = match (&a.node_bin, &a.node_dir) {
        (Some(bin), _) => {
            tracing::info!(bin = %bin.display(), "starting the node");
            Node::start(bin, a.data_dir.as_deref(), timing, &a.node_arg)?
        }
        (None, Some(dir)) => Node::attach(dir, a.admin_key.clone())?,
        (None, None) => bail!("give --node-bin or --node-dir"),
    };
    if let Some(k) = &a.admin_key {
        node.key = k.clone();
    }
    let desc = format!(
        "ws {} quic {} admin {}{}",
        node.ready.ws,
        node.ready.quic,
        node.ready.admin,
        node.pid().map_or(String::new(), |p| format!(" pid {p}"))
    );
    let mut admin = Admin::new(node.ready.admin, &node.key);
    let h = node::health(&mut admin).await?;
    // Any /v1 call checks the key.
    admin.ok("GET", "/v1/presence?users=u0", None).await?;
    tracing::info!(
        users = h.users,
        edges = h.edges,
        sessions = h.sessions,
        "node healthy"
    );
    if !a.skip_load && h.edges > 0 {
        tracing::warn!(
            edges = h.edges,
            "the node already holds friendships: views are compared with this graph only"
        );
    }
    Ok(Target::of_node(node, admin, desc))
}

/// What loading the friendships took.
struct Friendships {
    batches: u64,
    seconds: f64,
}

/// Bulk-loads the graph's friendships through the admin API (unless --skip-load).
async fn load_friendships(
    a: &DarkLaunchArgs,
    admin: &mut Admin,
    edges: Vec<(u32, u32)>,
) -> Result<Friendships> {
    let t_load = Instant::now();
    let mut batches = 0;
    if !a.skip_load {
        for chunk in edges.chunks(a.load_batch) {
            let add: Vec<[String; 2]> = chunk
                .iter()
                .map(|&(x, y)| [format!("u{x}"), format!("u{y}")])
                .collect();
            let body = serde_json::json!({ "add": add }).to_string();
            admin
                .ok("POST", "/v1/friendships", Some(body))
                .await
                .context("bulk-loading the graph")?;
            batches += 1;
        }
    }
    let seconds = t_load.elapsed().as_secs_f64();
    tracing::info!(edges = edges.len(), secs = seconds, "graph loaded");
    Ok(Friendships { batches, seconds })
}

/// Every driven user's token, and how long minting them took.
struct Tokens {
    tokens: Vec<String>,
    seconds: f64,
}

/// Mints a token per driven user through the node's admin API, several requests in flight.
async fn mint_tokens(
    admin: std::net::SocketAddr,
    key: &str,
    users: u32,
    duration_ms: u64,
) -> Result<Tokens> {
    let t_tok = Instant::now();
    let ttl = duration_ms / 1000 + 3600;
    let conns = 8u32;
    let mut tasks = Vec::new();
    for k in 0..conns {
        let (addr, key) = (admin, key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ad = Admin::new(addr, &key);
            let mut out = Vec::new();
            let mut u = k;
            while u < users {
                let body = serde_json::json!({"user": format!("u{u}"), "ttl_s": ttl}).to_string();
                let text = ad.ok("POST", "/v1/tokens", Some(body)).await?;
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let t = v["token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("POST /v1/tokens answered without a token"))?;
                out.push((u, t.to_string()));
                u += conns;
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut tokens = vec![String::new(); users as usize];
    for t in tasks {
        for (u, tok) in t.await.context("token task")?? {
            tokens[u as usize] = tok;
        }
    }
    let seconds = t_tok.elapsed().as_secs_f64();
    tracing::info!(tokens = users, secs = seconds, "tokens minted");
    Ok(Tokens { tokens, seconds })
}

/// The client hosts, started: their links, the one queue of their replies, and the source
/// addresses they use.
struct Hosts {
    links: Vec<HostLink>,
    replies: mpsc::UnboundedReceiver<(usize, Reply)>,
    source_ips: Vec<String>,
}

/// Starts the client hosts: this process (QUIC, and WebSocket without workers), then the
/// workers, each with its own source addresses.
fn open_hosts(a: &DarkLaunchArgs, target: &Target, timing: &NodeTiming) -> Result<Hosts> {
    let (rep_tx, rep_rx) = mpsc::unbounded_channel::<(usize, Reply)>();
    let ip = |i: usize| Ipv4Addr::new(127, 0, 0, 2 + i as u8);
    let mut source_ips_all = Vec::new();
    let first = *target
        .addrs
        .first()
        .ok_or_else(|| anyhow!("no node addresses"))?;
    let mk_init = |ips: Vec<Ipv4Addr>| HostInit {
        ws: first.ws,
        quic: first.quic,
        cert_pem: target.cert_pem.clone(),
        nodes: if target.addrs.len() > 1 {
            target.addrs.clone()
        } else {
            Vec::new()
        },
        source_ips: ips,
        quic_endpoints: a.quic_endpoints,
        connect_parallel: a.connect_parallel,
        idle_thresholds_ms: timing.idle_thresholds_ms.clone(),
        chat_ack_ms: a.chat_ack_ms,
        vanish_hold_ms: a.heartbeat_timeout + 20_000,
        chat_resume: a.chat_rate > 0.0,
    };
    let mut hosts = Vec::new();
    {
        let ips: Vec<Ipv4Addr> = if a.workers == 0 {
            (0..a.source_ips).map(ip).collect()
        } else {
            Vec::new()
        };
        source_ips_all.extend(ips.iter().map(ToString::to_string));
        let init = mk_init(ips);
        let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
        let (htx, mut hrx) = mpsc::unbounded_channel::<Reply>();
        let fwd = rep_tx.clone();
        tokio::spawn(async move {
            while let Some(r) = hrx.recv().await {
                if fwd.send((0, r)).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(host::run_host(init, rx, htx));
        hosts.push(HostLink { tx, child: None });
    }
    for w in 0..a.workers {
        let ips: Vec<Ipv4Addr> = (0..a.source_ips)
            .map(|j| ip(w * a.source_ips + j))
            .collect();
        source_ips_all.extend(ips.iter().map(ToString::to_string));
        hosts.push(spawn_worker(w + 1, mk_init(ips), rep_tx.clone())?);
    }
    Ok(Hosts {
        links: hosts,
        replies: rep_rx,
        source_ips: source_ips_all,
    })
}

/// What is left once the run stopped: the schedule's own measures, the hosts' final
/// counters, and the node's part of chat.
struct Stopped {
    drive: DriveOut,
    ledger: Option<ledger::LedgerOut>,
    stats: HostStats,
    node_measures: node::NodeMeasures,
    cluster: Option<cluster::ClusterOut>,
}

/// Stops everything, even after an error: the final counters first (when the schedule ran to
/// its end), then the clients and the workers, then the node's own measures, then the node.
async fn stop(
    d: &mut Driver<'_>,
    target: &mut Target,
    result: Result<DriveOut>,
) -> Result<Stopped> {
    let finals = match &result {
        Ok(_) => Some(d.stats(true).await),
        Err(_) => None,
    };
    // The node's own measures of the run, before the settle adds its traffic.
    let node_measures = match node::node_measures(&mut target.admin).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not read the node's /metrics: {e:#}");
            node::NodeMeasures::default()
        }
    };
    let wall = result.as_ref().map_or(0.0, |r| r.active_s);
    let kill = d.kill.take().map(cluster::KillTrack::report);
    let cluster = match target.cluster.as_mut() {
        Some(c) => {
            c.read_metrics(false).await;
            c.sample();
            Some(c.report(wall, kill))
        }
        None => None,
    };
    // Chat's settle and check, once the run's own counts are taken.
    let ledger = if result.is_ok() && d.a.chat_rate > 0.0 && !d.chat_stopped {
        match d.settle_chat().await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("chat settle failed: {e:#}");
                None
            }
        }
    } else {
        None
    };
    for h in &d.hosts {
        let _ = h.send(Cmd::Shutdown);
    }
    for h in &mut d.hosts {
        if let Some(c) = h.child.as_mut()
            && tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
        {
            let _ = c.kill().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    target.stop();
    let drive = result?;
    let stats = finals.ok_or_else(|| anyhow!("no final statistics"))??;
    Ok(Stopped {
        drive,
        ledger,
        stats,
        node_measures,
        cluster,
    })
}

/// Facts of the run the report states besides the measures.
struct RunFacts {
    graph_users: u64,
    graph_edges: u64,
    users: u32,
    node_desc: String,
    source_ips: Vec<String>,
    probe_rate: f64,
    friendships: Friendships,
    tokens_s: f64,
    t_start: Instant,
}

/// The report: the driver's counts, the hosts' final counters and latencies, the node's
/// measures.
fn report(a: &DarkLaunchArgs, d: &mut Driver<'_>, run: RunFacts, stopped: Stopped) -> DarkReport {
    let Stopped {
        drive: dr,
        ledger,
        stats: st,
        node_measures,
        cluster,
    } = stopped;
    let cluster = cluster.map(|mut c| {
        c.cross_node_probe_receipts = st.probe_cross_receipts;
        c.cross_node_probe_latency = lat(&st.probe_cross_us);
        c.same_node_probe_receipts = st.probe_same_receipts;
        c.same_node_probe_latency = lat(&st.probe_same_us);
        c.replication_lag = figures::ReplicationLag::new(
            &c.same_node_probe_latency,
            &c.cross_node_probe_latency,
            a.tick,
        );
        c.moves_followed = d.moves;
        c.throughput = figures::Throughput::new(
            &c,
            st.entries,
            dr.active_s,
            dr.driver.cpu_user_seconds + dr.driver.cpu_sys_seconds,
        );
        c
    });
    let mut sess = std::mem::take(&mut d.sess);
    sess.connects = st.connects;
    sess.connect_latency = lat(&st.connect_us);
    sess.errors_from_node = st.errors;
    sess.error_examples = st.error_examples.clone();
    let active = dr.active_s.max(1e-9);
    let mut probes = std::mem::take(&mut d.probes);
    probes.receipts = st.probe_receipts;
    probes.latency = lat(&st.probe_us);
    probes.node_tick_to_write = node_measures.frame_delay;
    let mut chat = std::mem::take(&mut d.chat);
    chat.acked = st.chat_sent;
    chat.inbox = st.chat_inbox;
    chat.device_acks = st.chat_device_acks;
    chat.errors = st.chat_errors;
    if st.chat_disabled > 0 && st.chat_sent == 0 {
        chat.disabled_message = st.chat_disabled_message.clone();
    }
    chat.send_to_sent = lat(&st.chat_sent_us);
    chat.send_to_inbox = lat(&st.chat_inbox_us);
    chat.node_send_to_sent = node_measures.send;
    chat.node_commit = node_measures.commit;
    chat.node_sends = node_measures.sends;
    chat.node_commits = node_measures.commits;
    chat.node_committed_rows = node_measures.rows;
    if let Some(c) = &cluster {
        // Every node's counts (the histogram above is the first node's).
        chat.node_sends = c.chat.sends;
        chat.node_commits = c.chat.commits;
        chat.node_committed_rows = c.chat.committed_rows;
    }
    chat.ledger = ledger;
    // The rate once the sessions have ramped up: a saturated run's capacity, which the
    // whole-run mean understates (few sessions at the start, answers in flight at the end).
    let second_half: Vec<f64> = dr.series[out::second_half_from(&dr.series, dr.active_s)..]
        .iter()
        .map(|p| p.chat_acked_per_s)
        .collect();
    chat.acked_per_s = st.chat_sent as f64 / dr.active_s.max(1e-9);
    chat.acked_per_s_second_half = if second_half.is_empty() {
        0.0
    } else {
        second_half.iter().sum::<f64>() / second_half.len() as f64
    };
    let verify = a.verify.then(|| {
        let mut v = std::mem::take(&mut d.verify);
        v.duplicate = st.duplicates;
        v.ghost += st.unknown_users;
        v
    });
    let graph_edges = run.graph_edges;
    let load_s = run.friendships.seconds;
    DarkReport {
        config: ConfigOut {
            graph: a.graph.display().to_string(),
            graph_users: run.graph_users,
            graph_edges,
            model_users: u64::from(run.users),
            node: run.node_desc,
            duration_s: a.duration as f64 / 1000.0,
            speed: a.speed,
            peak_online: a.peak_online,
            tick_ms: a.tick,
            idle_thresholds_ms: a.idle_thresholds.0.clone(),
            grace_ms: a.grace,
            heartbeat_timeout_ms: a.heartbeat_timeout,
            client_heartbeat_ms: a.client_heartbeat,
            quic_share: a.quic_share,
            workers: a.workers,
            source_ips: run.source_ips,
            quic_endpoints: a.quic_endpoints,
            max_sessions: a.max_sessions,
            probe_rate: run.probe_rate,
            chat_rate: a.chat_rate,
            chat_ack_ms: a.chat_ack_ms,
            seed: a.seed,
            verify: a.verify,
            margin_ms: a.margin,
        },
        load: LoadOut {
            skipped: a.skip_load,
            edges: if a.skip_load { 0 } else { graph_edges },
            batches: run.friendships.batches,
            seconds: load_s,
            edges_per_s: if a.skip_load {
                0.0
            } else {
                graph_edges as f64 / load_s.max(1e-9)
            },
            tokens: u64::from(run.users),
            token_seconds: run.tokens_s,
        },
        sessions: SessionsOut {
            peak_connect_rate: dr.peak_connect_rate,
            ..sess
        },
        throughput: ThroughputOut {
            frames: st.frames,
            entries: st.entries,
            welcome_entries: st.welcome_entries,
            frames_per_s: st.frames as f64 / active,
            entries_per_s: st.entries as f64 / active,
            pongs: st.pongs,
            cost: out::DeliveryCost::new(
                st.frames,
                st.entries,
                &dr.server,
                &dr.driver,
                &dr.series,
                dr.active_s,
            ),
        },
        presence_latency: probes,
        chat,
        server: dr.server,
        driver: dr.driver,
        verify,
        verify_rule: verify::RULE.to_string(),
        wall_seconds: run.t_start.elapsed().as_secs_f64(),
        series: dr.series,
        cluster,
    }
}

struct DriveOut {
    series: Vec<SampleOut>,
    server: ServerOut,
    driver: DriverOut,
    active_s: f64,
    peak_connect_rate: f64,
}

/// User and kernel CPU seconds of these processes together (`None` if one can't be read).
fn driver_cpu(pids: &[u32]) -> Option<(f64, f64)> {
    pids.iter().try_fold((0.0, 0.0), |(u, s), &p| {
        let q = proc_sample(p)?;
        Some((u + q.user_s, s + q.sys_s))
    })
}

async fn drive(
    d: &mut Driver<'_>,
    model: &mut ActivityModel,
    target: &mut Target,
    probe_rate: f64,
) -> Result<DriveOut> {
    let a = d.a;
    let start = Instant::now();
    let end = start + Duration::from_millis(a.duration);
    let check_every = Duration::from_millis(a.check_every);
    let mut next_check = start + check_every;
    let mut next_sample = start + Duration::from_secs(1);
    let probe_iv = (probe_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / probe_rate));
    let chat_iv = (a.chat_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.chat_rate));
    let (mut next_probe, mut next_chat) = (start, start);
    if let Some(c) = target.cluster.as_mut() {
        c.read_metrics(true).await;
    }
    let kill_at = a.kill_node_at.map(|t| start + Duration::from_millis(t));
    let mut killed = false;
    let first = target.sample();
    let driver_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(d.hosts.iter().filter_map(|h| h.child.as_ref()?.id()))
        .collect();
    let driver_first = driver_cpu(&driver_pids);
    let mut prev_proc = first;
    let mut prev_t = start;
    let mut prev = HostStats::default();
    let mut prev_chat_sent = d.chat.sent;
    let mut series = Vec::new();
    let mut rss_peak = first.map_or(0, |p| p.rss);
    let mut session_seconds = 0.0;
    let mut peak_connect_rate = 0.0f64;
    let mut evs: Vec<Event> = Vec::new();
    loop {
        d.drain()?;
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(why) = target.exited() {
            bail!("{why}");
        }
        if let (Some(at), Some(c)) = (kill_at, target.cluster.as_mut())
            && !killed
            && now >= at
        {
            killed = true;
            let victim = match &a.kill_node {
                Some(id) => c
                    .members
                    .iter()
                    .position(|m| m.id == *id)
                    .ok_or_else(|| anyhow!("no node {id}"))?,
                None => d.busiest_node(),
            };
            c.kill(victim)?;
            let id = c.members[victim].id.clone();
            d.on_kill(victim, id, c.lease_ms, (now - start).as_secs_f64())?;
        }
        d.reconnects_due()?;
        if a.verify && now >= next_check {
            if d.awaiting_takeover()
                && let Some(c) = target.cluster.as_mut()
                && c.all_served().await
            {
                d.taken_over(verify::now_ms());
            }
            d.check().await?;
            let after = Instant::now();
            // After a kill, a check a second until the views converge.
            next_check = after
                + if d.converging() {
                    check_every.min(Duration::from_secs(1))
                } else {
                    check_every
                };
            // A deliberate pause is no lag: probes and chat resume from now.
            next_probe = next_probe.max(after);
            next_chat = next_chat.max(after);
            continue;
        }
        // The model follows the wall clock through pauses too (it catches up after a check):
        // heartbeats must stay on their real schedule or the node rightly expires sessions.
        let v = ((now - start).as_secs_f64() * a.speed * 1000.0) as u64;
        evs.clear();
        model.run_until(v, &mut |e: &Event| evs.push(*e));
        for e in &evs {
            d.dispatch(e)?;
        }
        let sched_us = |t: Instant| {
            now_us().saturating_sub(now.saturating_duration_since(t).as_micros() as u64)
        };
        if let Some(iv) = probe_iv {
            while next_probe <= now {
                d.probe(sched_us(next_probe))?;
                next_probe += iv;
            }
        }
        if let Some(iv) = chat_iv
            && !d.chat_stopped
        {
            while next_chat <= now {
                d.chat_send(sched_us(next_chat))?;
                next_chat += iv;
            }
        }
        if now >= next_sample {
            next_sample += Duration::from_secs(1);
            let s = d.stats(false).await?;
            let t = Instant::now();
            let dt = (t - prev_t).as_secs_f64().max(1e-6);
            let p = target.sample();
            let cpu = match (p, prev_proc) {
                (Some(p), Some(q)) => (p.cpu_s() - q.cpu_s()) / dt * 100.0,
                _ => 0.0,
            };
            if let Some(p) = p {
                rss_peak = rss_peak.max(p.rss);
            }
            let connects_per_s = (s.connects - prev.connects) as f64 / dt;
            peak_connect_rate = peak_connect_rate.max(connects_per_s);
            session_seconds += s.open as f64 * dt;
            let chat_lat = lat(&s.chat_sent_interval_us);
            series.push(SampleOut {
                t_s: (t - start).as_secs_f64(),
                open: s.open,
                connects_per_s,
                frames_per_s: (s.frames - prev.frames) as f64 / dt,
                entries_per_s: (s.entries - prev.entries) as f64 / dt,
                rss: p.map_or(0, |p| p.rss),
                cpu_percent: cpu,
                chat_sends_per_s: (d.chat.sent - prev_chat_sent) as f64 / dt,
                chat_acked_per_s: (s.chat_sent - prev.chat_sent) as f64 / dt,
                chat_sent_p50_ms: chat_lat.p50_ms,
                chat_sent_p99_ms: chat_lat.p99_ms,
                chat_sent_max_ms: chat_lat.max_ms,
            });
            prev_chat_sent = d.chat.sent;
            if a.chat_rate > 0.0 && !d.chat_stopped && s.chat_disabled > 0 && s.chat_sent == 0 {
                d.chat_stopped = true;
                tracing::warn!(
                    message = s.chat_disabled_message.as_deref().unwrap_or(""),
                    "the node does not speak chat: chat traffic stopped, presence goes on"
                );
            }
            prev = s;
            prev_t = t;
            prev_proc = p.or(prev_proc);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let last = target.sample();
    let driver = match (driver_first, driver_cpu(&driver_pids)) {
        (Some((u0, s0)), Some((u1, s1))) => DriverOut {
            measured: true,
            workers: driver_pids.len() - 1,
            cpu_user_seconds: u1 - u0,
            cpu_sys_seconds: s1 - s0,
        },
        _ => DriverOut::default(),
    };
    let server = match (first, last) {
        (Some(f), Some(l)) => {
            let cpu = l.cpu_s() - f.cpu_s();
            ServerOut {
                measured: true,
                rss_start: f.rss,
                rss_peak: rss_peak.max(l.rss),
                rss_end: l.rss,
                rss_per_session_bytes: rss_peak.saturating_sub(f.rss) as f64
                    / d.sess.peak_open.max(1) as f64,
                cpu_seconds: cpu,
                cpu_user_seconds: l.user_s - f.user_s,
                cpu_sys_seconds: l.sys_s - f.sys_s,
                cpu_mean_percent: cpu / wall.max(1e-9) * 100.0,
                cpu_us_per_session_s: if session_seconds > 0.0 {
                    cpu * 1e6 / session_seconds
                } else {
                    0.0
                },
            }
        }
        _ => ServerOut::default(),
    };
    Ok(DriveOut {
        series,
        server,
        driver,
        active_s: wall,
        peak_connect_rate,
    })
}
