//! `--cluster N`: a private etcd and PostgreSQL (the test harness's servers, on loopback, in
//! temporary folders), the graph bulk-loaded into PostgreSQL, N `presence-node` processes
//! joined as one cluster on them; per-node `/proc` and `/metrics` readings; `kill -9` of one
//! node mid-run, the lost sessions' truth and reconnects, and the convergence that follows.
//! The benchmark figures drawn from these readings are in [`super::figures`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use presence_tests::services::{Etcd, Postgres};
use serde::Serialize;

use super::figures::{GraphHeld, ReplicationLag, Throughput};
use super::node::{Admin, Node, NodeTiming, ProcSample, proc_sample};
use super::out::Latency;
use super::proto::{Cmd, NodeAddrs, ViewOut};
use super::{DarkLaunchArgs, Driver, mix};
use crate::activity::{Event, EventKind};

/// Every node of a cluster shares these (the nodes' flags).
const SECRET: &str = "darklaunch-cluster-secret";
const ADMIN_KEY: &str = "darklaunch-cluster-admin-key";
/// Slots of the cluster (presence-cluster's fixed count).
const SLOTS: u64 = 1024;

/// One node of the cluster.
pub struct Member {
    pub id: String,
    pub node: Node,
    pub killed: Option<Instant>,
    /// `/proc` readings: the first, the last one taken, the highest RSS.
    first: Option<ProcSample>,
    last: Option<ProcSample>,
    rss_peak: u64,
    /// `/metrics` counters at the start of the run, and the last reading.
    metrics0: PeerMetrics,
    metrics: PeerMetrics,
}

/// The counters read from a node's `/metrics`, and its graph gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerMetrics {
    pub peer_bytes: u64,
    pub peer_frames: u64,
    pub transitions: u64,
    pub entries_sent: u64,
    pub peer_applied: u64,
    pub graph: GraphHeld,
    pub chat: ChatCounts,
}

/// A node's chat counters (`/metrics`), or their sum over the cluster.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ChatCounts {
    /// `chat_sends_total`: sends accepted.
    pub sends: u64,
    /// `chat_commits_total`: group commits (PostgreSQL transactions in a cluster).
    pub commits: u64,
    /// `chat_committed_rows_total`.
    pub committed_rows: u64,
    /// `chat_commits_fenced_total`: commits refused whole for a stale epoch.
    pub commits_fenced: u64,
    /// `cluster_peer_chat_frames_total`: chat frames sent to peers.
    pub peer_chat_frames: u64,
}

impl ChatCounts {
    fn from_metrics(text: &str) -> ChatCounts {
        let n = |name: &str| super::node::counter_value(text, name).unwrap_or(0.0) as u64;
        ChatCounts {
            sends: n("chat_sends_total"),
            commits: n("chat_commits_total"),
            committed_rows: n("chat_committed_rows_total"),
            commits_fenced: n("chat_commits_fenced_total"),
            peer_chat_frames: n("cluster_peer_chat_frames_total"),
        }
    }

    fn since(self, o: ChatCounts) -> ChatCounts {
        ChatCounts {
            sends: self.sends.saturating_sub(o.sends),
            commits: self.commits.saturating_sub(o.commits),
            committed_rows: self.committed_rows.saturating_sub(o.committed_rows),
            commits_fenced: self.commits_fenced.saturating_sub(o.commits_fenced),
            peer_chat_frames: self.peer_chat_frames.saturating_sub(o.peer_chat_frames),
        }
    }

    fn add(self, o: ChatCounts) -> ChatCounts {
        ChatCounts {
            sends: self.sends + o.sends,
            commits: self.commits + o.commits,
            committed_rows: self.committed_rows + o.committed_rows,
            commits_fenced: self.commits_fenced + o.commits_fenced,
            peer_chat_frames: self.peer_chat_frames + o.peer_chat_frames,
        }
    }
}

/// A cluster started here: its servers, its nodes, where they keep their folders.
pub struct Cluster {
    pub members: Vec<Member>,
    pub lease_ms: u64,
    pub load_seconds: f64,
    pub settle_seconds: f64,
    pub edges: u64,
    root: PathBuf,
    etcd: Option<Etcd>,
    pg: Option<Postgres>,
    /// PostgreSQL's postmaster and etcd, and their CPU seconds at the first and the last
    /// sample (PostgreSQL's with its backends).
    pg_pid: Option<u32>,
    etcd_pid: Option<u32>,
    services_first: Option<(f64, f64)>,
    services_last: Option<(f64, f64)>,
}

fn ms(v: u64) -> String {
    format!("{v}ms")
}

impl Cluster {
    /// Starts etcd and PostgreSQL, loads `edges`, starts `n` nodes of `bin`, and waits until
    /// every node serves its share of the slots and sees its peers.
    pub async fn start(
        a: &DarkLaunchArgs,
        bin: &std::path::Path,
        timing: &NodeTiming,
        n: usize,
        edges: &[(u32, u32)],
    ) -> Result<Cluster> {
        let (etcd, pg) = tokio::task::spawn_blocking(|| {
            let etcd = Etcd::start().map_err(|e| anyhow!("starting etcd: {e}"))?;
            let pg = Postgres::start().map_err(|e| anyhow!("starting PostgreSQL: {e}"))?;
            Ok::<_, anyhow::Error>((etcd, pg))
        })
        .await
        .context("the etcd/PostgreSQL start task")??;
        let url = pg.url();
        tracing::info!(etcd = ?etcd.endpoints(), pg = %url, "etcd and PostgreSQL up");
        let t_load = Instant::now();
        let store = presence_pg::Store::connect(&url)
            .await
            .map_err(|e| anyhow!("connecting to PostgreSQL at {url}: {e}"))?;
        let names: Vec<(String, String)> = edges
            .iter()
            .map(|&(x, y)| (format!("u{x}"), format!("u{y}")))
            .collect();
        store
            .bulk_load(names.iter().map(|(x, y)| (x.as_str(), y.as_str())))
            .await
            .map_err(|e| anyhow!("bulk-loading the graph into PostgreSQL: {e}"))?;
        drop(store);
        let load_seconds = t_load.elapsed().as_secs_f64();
        tracing::info!(
            edges = edges.len(),
            secs = load_seconds,
            "graph bulk-loaded into PostgreSQL"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root =
            std::env::temp_dir().join(format!("darklaunch-cluster-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let mut c = Cluster {
            members: Vec::new(),
            lease_ms: a.lease_ttl,
            load_seconds,
            settle_seconds: 0.0,
            edges: edges.len() as u64,
            root,
            etcd: None,
            pg: None,
            // The socket's lock file names the postmaster on its first line.
            pg_pid: std::fs::read_to_string(
                pg.socket_dir().join(format!(".s.PGSQL.{}.lock", pg.port())),
            )
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok()),
            etcd_pid: etcd.pid(),
            services_first: None,
            services_last: None,
        };
        let endpoints = etcd.endpoints().join(",");
        c.etcd = Some(etcd);
        c.pg = Some(pg);
        let t_settle = Instant::now();
        let mut starts = Vec::new();
        for i in 0..n {
            let id = format!("n{}", i + 1);
            let dir = c.root.join(&id);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(dir.join("admin_key"), ADMIN_KEY)
                .with_context(|| format!("cannot write {}/admin_key", dir.display()))?;
            let mut extra: Vec<String> = vec![
                "--node-id".into(),
                id.clone(),
                "--cluster-etcd".into(),
                endpoints.clone(),
                "--cluster-prefix".into(),
                format!("/darklaunch-{}-{nanos}/", std::process::id()),
                "--store".into(),
                url.clone(),
                "--secret".into(),
                SECRET.into(),
                "--admin-key".into(),
                ADMIN_KEY.into(),
                "--lease-ttl".into(),
                ms(a.lease_ttl),
                "--peer-listen".into(),
                "127.0.0.1:0".into(),
            ];
            extra.extend(a.node_arg.iter().cloned());
            let (bin, timing) = (bin.to_owned(), timing.clone());
            starts.push((
                id,
                tokio::task::spawn_blocking(move || Node::start(&bin, Some(&dir), &timing, &extra)),
            ));
        }
        for (id, t) in starts {
            let node = t
                .await
                .context("a node start task")?
                .with_context(|| format!("starting cluster node {id}"))?;
            c.members.push(Member {
                id,
                node,
                killed: None,
                first: None,
                last: None,
                rss_peak: 0,
                metrics0: PeerMetrics::default(),
                metrics: PeerMetrics::default(),
            });
        }
        c.settled(Duration::from_millis(a.settle_timeout)).await?;
        c.settle_seconds = t_settle.elapsed().as_secs_f64();
        tracing::info!(nodes = n, secs = c.settle_seconds, "cluster settled");
        Ok(c)
    }

    fn admin(&self, i: usize) -> Admin {
        let n = &self.members[i].node;
        Admin::new(n.ready.admin, &n.key)
    }

    /// The live members' indices.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|&i| self.members[i].killed.is_none())
    }

    /// Waits until every live node sees the same live members, every slot is owned by one of
    /// them, each serves all of its slots, and each has a peer link to every other.
    pub async fn settled(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let Some(why) = self.unsettled().await else {
                return Ok(());
            };
            if Instant::now() > deadline {
                bail!("the cluster did not settle within {within:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the live nodes serve every slot between them (a killed node's slots taken
    /// over and loaded), by their `/healthz`.
    pub async fn all_served(&mut self) -> bool {
        let mut served = 0;
        for i in self.live().collect::<Vec<_>>() {
            let mut ad = self.admin(i);
            let Ok(t) = ad.ok("GET", "/healthz", None).await else {
                return false;
            };
            let h: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
            served += h["cluster"]["slots_served"].as_u64().unwrap_or(0);
        }
        served >= SLOTS
    }

    /// One look at the live nodes: `None` when settled (as [`Cluster::settled`] waits for),
    /// else what one of them sees.
    pub async fn unsettled(&mut self) -> Option<String> {
        let want: Vec<String> = self
            .live()
            .map(|i| self.members[i].id.clone())
            .collect::<Vec<_>>();
        let mut why = None;
        for i in self.live().collect::<Vec<_>>() {
            let mut ad = self.admin(i);
            let id = self.members[i].id.clone();
            let c: serde_json::Value = match ad.ok("GET", "/v1/cluster", None).await {
                Ok(t) => serde_json::from_str(&t).unwrap_or_default(),
                Err(e) => {
                    why = Some(format!("{id}: {e:#}"));
                    continue;
                }
            };
            let h: serde_json::Value = match ad.ok("GET", "/healthz", None).await {
                Ok(t) => serde_json::from_str(&t).unwrap_or_default(),
                Err(e) => {
                    why = Some(format!("{id}: {e:#}"));
                    continue;
                }
            };
            let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
            let mut ids: Vec<String> = nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect();
            ids.sort();
            let total: u64 = nodes.iter().filter_map(|n| n["slots"].as_u64()).sum();
            let mine = nodes
                .iter()
                .find(|n| n["id"] == id.as_str())
                .and_then(|n| n["slots"].as_u64());
            let served = h["cluster"]["slots_served"].as_u64();
            let peers = h["cluster"]["peers"].as_u64();
            let all_have = nodes.iter().all(|n| n["slots"].as_u64() > Some(0));
            let mut w = want.clone();
            w.sort();
            if ids != w
                || total != SLOTS
                || !all_have
                || mine != served
                || peers != Some(want.len() as u64 - 1)
            {
                why = Some(format!("{id}: cluster {c} health {h}"));
            }
        }
        why
    }

    /// Every node's client addresses, in member order.
    pub fn addrs(&self) -> Vec<NodeAddrs> {
        self.members
            .iter()
            .map(|m| NodeAddrs {
                ws: m.node.ready.ws,
                quic: m.node.ready.quic,
            })
            .collect()
    }

    /// Every node's certificate, one PEM bundle (a QUIC client trusts them all).
    pub fn cert_pem(&self) -> String {
        self.members
            .iter()
            .map(|m| m.node.cert_pem.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn desc(&self) -> String {
        let nodes: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "{} (ws {} quic {} pid {})",
                    m.id, m.node.ready.ws, m.node.ready.quic, m.node.ready.pid
                )
            })
            .collect();
        format!(
            "cluster of {}: {}; lease TTL {}",
            self.members.len(),
            nodes.join(", "),
            ms(self.lease_ms)
        )
    }

    /// Reads `/proc` of every live node (the baseline on the first call), and keeps the last
    /// reading of a killed one. Returns the nodes' CPU time so far (a killed node's until its
    /// last reading) and the live nodes' RSS, summed.
    pub fn sample(&mut self) -> ProcSample {
        let cpu = |p: Option<u32>| p.and_then(super::node::proc_tree_cpu).unwrap_or(0.0);
        let services = (cpu(self.pg_pid), cpu(self.etcd_pid));
        self.services_first.get_or_insert(services);
        self.services_last = Some(services);
        let mut sum = ProcSample::default();
        for m in &mut self.members {
            if m.killed.is_none()
                && let Some(p) = proc_sample(m.node.ready.pid)
            {
                m.first.get_or_insert(p);
                m.last = Some(p);
                m.rss_peak = m.rss_peak.max(p.rss);
                sum.rss += p.rss;
            }
            if let Some(p) = m.last {
                sum.user_s += p.user_s;
                sum.sys_s += p.sys_s;
            }
        }
        sum
    }

    /// Reads every live node's peer and transition counters (the baseline on the first call).
    pub async fn read_metrics(&mut self, baseline: bool) {
        for i in self.live().collect::<Vec<_>>() {
            let mut ad = self.admin(i);
            match ad.ok("GET", "/metrics", None).await {
                Ok(text) => {
                    let n = |name: &str| super::node::counter_value(&text, name).unwrap_or(0.0);
                    let m = PeerMetrics {
                        peer_bytes: n("cluster_peer_bytes_sent_total") as u64,
                        peer_frames: n("cluster_peer_frames_sent_total") as u64,
                        transitions: n("presence_transitions_total") as u64,
                        entries_sent: n("presence_entries_sent_total") as u64,
                        peer_applied: n("cluster_peer_entries_applied_total") as u64,
                        graph: GraphHeld::from_metrics(&text),
                        chat: ChatCounts::from_metrics(&text),
                    };
                    if baseline {
                        self.members[i].metrics0 = m;
                    }
                    self.members[i].metrics = m;
                }
                Err(e) => tracing::warn!(node = %self.members[i].id, "/metrics: {e:#}"),
            }
        }
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow!("no node {i}"))?;
        // The last reading before it goes.
        if let Some(p) = proc_sample(m.node.ready.pid) {
            m.last = Some(p);
            m.rss_peak = m.rss_peak.max(p.rss);
        }
        m.node.kill9();
        m.killed = Some(Instant::now());
        tracing::warn!(node = %m.id, pid = m.node.ready.pid, "killed (SIGKILL)");
        Ok(())
    }

    /// A node that exited without being killed here, if any.
    pub fn exited(&mut self) -> Option<String> {
        for m in &mut self.members {
            if m.killed.is_none()
                && let Some(s) = m.node.exited()
            {
                return Some(format!(
                    "cluster node {} exited ({s}); see {}",
                    m.id,
                    m.node.dir.join("node.log").display()
                ));
            }
        }
        None
    }

    /// Stops every node, then the servers, and removes the folders.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.node.stop();
        }
        self.etcd = None;
        self.pg = None;
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// The per-node report (over `wall` seconds of the run).
    pub fn report(&self, wall: f64, kill: Option<KillOut>) -> ClusterOut {
        let nodes: Vec<ClusterNodeOut> = self
            .members
            .iter()
            .map(|m| {
                let cpu = match (m.first, m.last) {
                    (Some(f), Some(l)) => l.cpu_s() - f.cpu_s(),
                    _ => 0.0,
                };
                ClusterNodeOut {
                    id: m.id.clone(),
                    pid: m.node.ready.pid,
                    killed: m.killed.is_some(),
                    cpu_seconds: cpu,
                    cpu_mean_percent: cpu / wall.max(1e-9) * 100.0,
                    rss_start: m.first.map_or(0, |p| p.rss),
                    rss_peak: m.rss_peak,
                    rss_end: m.last.map_or(0, |p| p.rss),
                    peer_bytes_sent: m.metrics.peer_bytes.saturating_sub(m.metrics0.peer_bytes),
                    peer_frames_sent: m.metrics.peer_frames.saturating_sub(m.metrics0.peer_frames),
                    transitions: m.metrics.transitions.saturating_sub(m.metrics0.transitions),
                    entries_sent: m
                        .metrics
                        .entries_sent
                        .saturating_sub(m.metrics0.entries_sent),
                    peer_entries_applied: m
                        .metrics
                        .peer_applied
                        .saturating_sub(m.metrics0.peer_applied),
                    graph_after_load: m.metrics0.graph,
                    graph_at_end: m.metrics.graph,
                    chat: m.metrics.chat.since(m.metrics0.chat),
                }
            })
            .collect();
        let bytes: u64 = nodes.iter().map(|n| n.peer_bytes_sent).sum();
        let frames: u64 = nodes.iter().map(|n| n.peer_frames_sent).sum();
        let transitions: u64 = nodes.iter().map(|n| n.transitions).sum();
        let cluster_transitions = nodes.iter().map(|n| n.transitions).max().unwrap_or(0);
        let applied: u64 = nodes.iter().map(|n| n.peer_entries_applied).sum();
        let chat = nodes
            .iter()
            .fold(ChatCounts::default(), |a, n| a.add(n.chat));
        ClusterOut {
            nodes_started: self.members.len(),
            lease_ttl_ms: self.lease_ms,
            graph_load_seconds: self.load_seconds,
            settle_seconds: self.settle_seconds,
            peer_bytes_sent: bytes,
            peer_frames_sent: frames,
            transitions,
            cluster_transitions,
            peer_bytes_per_transition: bytes as f64 / cluster_transitions.max(1) as f64,
            peer_entries_applied: applied,
            peer_bytes_per_change: bytes as f64 / applied.max(1) as f64,
            chat,
            chat_commits_per_s: chat.commits as f64 / wall.max(1e-9),
            postgres_cpu_seconds: match (self.services_first, self.services_last) {
                (Some(f), Some(l)) => l.0 - f.0,
                _ => 0.0,
            },
            etcd_cpu_seconds: match (self.services_first, self.services_last) {
                (Some(f), Some(l)) => l.1 - f.1,
                _ => 0.0,
            },
            cross_node_probe_receipts: 0,
            cross_node_probe_latency: Latency::default(),
            same_node_probe_receipts: 0,
            same_node_probe_latency: Latency::default(),
            replication_lag: ReplicationLag::default(),
            throughput: Throughput::default(),
            moves_followed: 0,
            metrics_note: "peer counters and transitions are read from each node's /metrics at \
                the start and the end of the run; a killed node's are those of the last reading \
                before the end (its own counters die with it, so its share is undercounted)"
                .into(),
            nodes,
            kill,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the report says of the cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterOut {
    pub nodes_started: usize,
    pub lease_ttl_ms: u64,
    pub graph_load_seconds: f64,
    pub settle_seconds: f64,
    pub peer_bytes_sent: u64,
    pub peer_frames_sent: u64,
    /// `presence_transitions_total` summed over the nodes. A node's tick counts the changes
    /// of the remote users it mirrors too, so this counts most changes once per node.
    pub transitions: u64,
    /// The cluster's changes: the largest node's count (each node sees nearly every user's,
    /// its own and those it mirrors, at a mean of 100 friends).
    pub cluster_transitions: u64,
    /// Peer bytes over the cluster's changes: what one change costs on all links together.
    pub peer_bytes_per_transition: f64,
    /// `cluster_peer_entries_applied_total` summed: changes received over the peer links.
    pub peer_entries_applied: u64,
    /// Peer bytes per change received: what one change costs on one link.
    pub peer_bytes_per_change: f64,
    /// Chat over the run, summed over the nodes (a killed node's counters die with it: its
    /// share is missing).
    pub chat: ChatCounts,
    /// PostgreSQL chat commits a second over the run.
    pub chat_commits_per_s: f64,
    /// CPU seconds over the run of PostgreSQL (postmaster and backends) and of etcd.
    pub postgres_cpu_seconds: f64,
    pub etcd_cpu_seconds: f64,
    pub metrics_note: String,
    /// Probes whose receivers were on another node than their sender.
    pub cross_node_probe_receipts: u64,
    pub cross_node_probe_latency: Latency,
    /// Probes whose receivers were on their sender's node.
    pub same_node_probe_receipts: u64,
    pub same_node_probe_latency: Latency,
    pub replication_lag: ReplicationLag,
    pub throughput: Throughput,
    /// `moved` the clients followed before their welcome.
    pub moves_followed: u64,
    pub nodes: Vec<ClusterNodeOut>,
    pub kill: Option<KillOut>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterNodeOut {
    pub id: String,
    pub pid: u32,
    pub killed: bool,
    pub cpu_seconds: f64,
    pub cpu_mean_percent: f64,
    pub rss_start: u64,
    pub rss_peak: u64,
    pub rss_end: u64,
    pub peer_bytes_sent: u64,
    pub peer_frames_sent: u64,
    pub transitions: u64,
    /// Presence entries the node handed to its sessions over the run.
    pub entries_sent: u64,
    /// Mirrored presences it set from its peers' frames.
    pub peer_entries_applied: u64,
    /// The node's graph gauges when the run started (every slot loaded, no session yet), and
    /// at the end (after a kill, the survivors hold the dead node's share too).
    pub graph_after_load: GraphHeld,
    pub graph_at_end: GraphHeld,
    /// This node's chat counters over the run.
    pub chat: ChatCounts,
}

/// The kill and what followed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillOut {
    pub node: String,
    pub at_s: f64,
    /// Sessions on the node when it died (welcomed, or welcomed by it just after).
    pub sessions_lost: u64,
    /// Of those, devices that reconnected (the rest stayed away: the node's death took them
    /// offline).
    pub reconnects: u64,
    pub reconnected: u64,
    pub abandoned_users: u64,
    /// Kill → welcome of the reconnects, ms.
    pub reconnect_p50_ms: f64,
    pub reconnect_max_ms: f64,
    /// When the truth can decide every lost session: heartbeat timeout + lease TTL + grace
    /// after the kill.
    pub decided_after_s: f64,
    /// Kill → first check with no mismatch, every lost session decided and no reconnect
    /// pending (at check granularity: checks run every second after a kill).
    pub converged_after_s: Option<f64>,
    /// Kill → the live nodes seen serving every slot again.
    pub taken_over_after_s: Option<f64>,
    pub checks_before_convergence: u64,
    pub mismatches_before_convergence: u64,
    pub checks_after_convergence: u64,
    pub mismatches_after_convergence: u64,
    /// Entries of friends who stayed away, shown offline in a compared view after the truth
    /// decided, and the latest moment one of them turned offline there (kill → that frame).
    pub abandoned_entries_offline: u64,
    pub abandoned_entries_online: u64,
    pub abandoned_offline_last_s: Option<f64>,
    pub note: String,
}

/// The driver's side of a kill: which sessions died, which reconnect and when, and the
/// convergence of the checks that follow.
pub struct KillTrack {
    pub node: usize,
    pub id: String,
    at: Instant,
    at_ms: u64,
    at_us: u64,
    /// The truth decides every lost session from then on (ms since the epoch).
    decided_ms: u64,
    lost_cids: HashSet<u64>,
    /// Reconnects not yet dispatched: (user, device) → when.
    queue: HashMap<(u32, u8), Instant>,
    /// Reconnect connects not yet welcomed.
    pending: HashSet<u64>,
    abandoned: HashSet<u32>,
    /// Users whose sessions died with the node.
    lost_users: HashSet<u32>,
    /// When the live nodes were first seen serving every slot again (ms since the epoch).
    taken_ms: Option<u64>,
    reconnect_ms: Vec<f64>,
    out: KillOut,
    converged: bool,
}

impl KillTrack {
    /// Closes received for sessions the kill already accounted for are not the node's doing.
    pub fn ignores(&self, cid: u64) -> bool {
        self.lost_cids.contains(&cid)
    }

    pub fn report(mut self) -> KillOut {
        self.reconnect_ms.sort_by(f64::total_cmp);
        let q = |p: f64| {
            self.reconnect_ms
                .get(((self.reconnect_ms.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        self.out.reconnect_p50_ms = q(0.5);
        self.out.reconnect_max_ms = q(1.0);
        self.out.abandoned_users = self.abandoned.len() as u64;
        self.out
    }
}

impl Driver<'_> {
    /// The node a new client dials first: round robin over the live nodes.
    pub(super) fn first_node(&self, cid: u64) -> usize {
        let n = self.node_alive.len().max(1);
        let live: Vec<usize> = (0..n)
            .filter(|&i| self.node_alive.get(i).copied().unwrap_or(true))
            .collect();
        if live.is_empty() {
            return 0;
        }
        live[(cid % live.len() as u64) as usize]
    }

    /// The node with the most welcomed sessions.
    pub(super) fn busiest_node(&self) -> usize {
        let mut per = vec![0u64; self.node_alive.len().max(1)];
        for c in self.cids.values() {
            if c.welcomed
                && let Some(p) = per.get_mut(c.node)
            {
                *p += 1;
            }
        }
        (0..per.len()).max_by_key(|&i| per[i]).unwrap_or(0)
    }

    /// Node `node` was just killed: its sessions are lost. A share of their users reconnect
    /// (each device after a jittered pause within one client heartbeat, when a real client
    /// notices its connection is dead), the others stay away.
    pub(super) fn on_kill(
        &mut self,
        node: usize,
        id: String,
        lease_ms: u64,
        at_s: f64,
    ) -> Result<()> {
        let a = self.a;
        let at_ms = super::verify::now_ms();
        if let Some(al) = self.node_alive.get_mut(node) {
            *al = false;
        }
        let decided_ms = at_ms + a.heartbeat_timeout + lease_ms + a.grace;
        self.kill = Some(KillTrack {
            node,
            id: id.clone(),
            at: Instant::now(),
            at_ms,
            at_us: super::host::now_us(),
            decided_ms,
            lost_cids: HashSet::new(),
            queue: HashMap::new(),
            pending: HashSet::new(),
            abandoned: HashSet::new(),
            lost_users: HashSet::new(),
            taken_ms: None,
            reconnect_ms: Vec::new(),
            out: KillOut {
                node: id,
                at_s,
                decided_after_s: (decided_ms - at_ms) as f64 / 1000.0,
                note: "lost sessions are undecidable for the truth until heartbeat timeout + \
                    lease TTL + grace (+ their connect slack) after the kill, as a vanished \
                    device is until its expiry, and until one grace (+ a tick) after every \
                    slot is served again if the takeover took longer; convergence needs both; \
                    reconnecting devices dial a live node after a \
                    pause uniform in [0, client heartbeat] and follow `moved`, retrying with \
                    jittered backoff while the slot has no live owner"
                    .into(),
                ..KillOut::default()
            },
            converged: false,
        });
        let on_node: Vec<u64> = self
            .cids
            .iter()
            .filter(|(_, c)| c.welcomed && c.node == node)
            .map(|(&cid, _)| cid)
            .collect();
        for cid in on_node {
            self.lose(cid)?;
        }
        Ok(())
    }

    /// Session `cid` died with its node.
    pub(super) fn lose(&mut self, cid: u64) -> Result<()> {
        let Some(c) = self.cids.get(&cid).copied() else {
            return Ok(());
        };
        let Some(k) = self.kill.as_mut() else {
            return Ok(());
        };
        let (u, d) = (c.user, c.dev);
        k.lost_cids.insert(cid);
        k.lost_users.insert(u);
        k.out.sessions_lost += 1;
        let (at_ms, decided_ms) = (k.at_ms, k.decided_ms);
        // Whole users reconnect or stay away, decided by the seed.
        let draw = (mix(self.quic_salt ^ 0x4B11 ^ u64::from(u)) % 1000) as f64;
        let reconnect = draw < self.a.kill_reconnect_share * 1000.0;
        if let Some(l) = self.live[u as usize][d as usize]
            && l.cid == cid
        {
            self.live[u as usize][d as usize] = None;
            self.end_session(l);
            self.oracle.lost(u, d, at_ms, decided_ms);
            // What the device sent the dead node since its last tick (a status, a probe's
            // text) may be lost with it: its next connect, a reconnect queued here or the
            // model's own, says its status again, as a client that lost its node does.
            self.pending_status[u as usize].get_or_insert(self.status[u as usize]);
            // The socket is dead already; let the host forget it.
            self.hosts[l.host].send(Cmd::Close { cid })?;
        }
        let k = self.kill.as_mut().ok_or_else(|| anyhow!("no kill"))?;
        if reconnect {
            let hb = self.a.client_heartbeat.max(1);
            let pause = mix(cid ^ self.quic_salt) % hb;
            k.queue
                .insert((u, d), Instant::now() + Duration::from_millis(pause));
            k.out.reconnects += 1;
        } else {
            k.abandoned.insert(u);
        }
        Ok(())
    }

    /// A kill happened and the checks have not seen the cluster converge yet.
    pub(super) fn converging(&self) -> bool {
        self.kill.as_ref().is_some_and(|k| !k.converged)
    }

    /// A kill happened and the live nodes have not been seen serving every slot yet.
    pub(super) fn awaiting_takeover(&self) -> bool {
        self.kill.as_ref().is_some_and(|k| k.taken_ms.is_none())
    }

    /// The live nodes serve every slot again (first seen at `at_ms`). A lost user the new
    /// owner took from its mirror stays as it was for one grace period after the take (the
    /// no-flap rule for devices moving over), and its friends elsewhere keep the dead node's
    /// last word until then: the truth cannot decide a lost session before that, however
    /// long the takeover took. (The report's convergence time still counts from the kill.)
    pub(super) fn taken_over(&mut self, at_ms: u64) {
        let until = at_ms + self.a.grace + self.timing.tick_ms;
        let Some(k) = self.kill.as_mut() else {
            return;
        };
        k.taken_ms = Some(at_ms);
        k.out.taken_over_after_s = Some(at_ms.saturating_sub(k.at_ms) as f64 / 1000.0);
        if until > k.decided_ms {
            k.decided_ms = until;
            k.out.decided_after_s = (until - k.at_ms) as f64 / 1000.0;
            for &u in &k.lost_users {
                self.oracle.widen_end(u, until);
            }
        }
    }

    /// Dispatches the reconnects that are due.
    pub(super) fn reconnects_due(&mut self) -> Result<()> {
        let Some(k) = self.kill.as_mut() else {
            return Ok(());
        };
        if k.queue.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut due: Vec<(u32, u8)> = k
            .queue
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(&ud, _)| ud)
            .collect();
        due.sort_unstable();
        for ud in &due {
            k.queue.remove(ud);
        }
        for (u, d) in due {
            if self.live[u as usize][d as usize].is_some() {
                continue;
            }
            let before = self.next_cid;
            self.dispatch(&Event {
                at: 0,
                user: u,
                kind: EventKind::Connect { device: d },
            })?;
            if self.next_cid > before
                && let Some(k) = self.kill.as_mut()
            {
                k.pending.insert(before);
            }
        }
        Ok(())
    }

    /// The model moved (user, device) on its own: a queued reconnect is void.
    pub(super) fn cancel_reconnect(&mut self, user: u32, dev: u8) {
        if let Some(k) = self.kill.as_mut() {
            k.queue.remove(&(user, dev));
            k.abandoned.remove(&user);
        }
    }

    /// A client was welcomed by `node`.
    pub(super) fn on_welcomed(&mut self, cid: u64, node: usize) -> Result<()> {
        if let Some(k) = self.kill.as_mut()
            && k.pending.remove(&cid)
        {
            k.out.reconnected += 1;
            k.reconnect_ms.push(k.at.elapsed().as_secs_f64() * 1000.0);
        }
        if self.node_alive.get(node) == Some(&false) {
            // Welcomed by the node just before it died.
            self.lose(cid)?;
        }
        Ok(())
    }

    /// A check after the kill: convergence, and the abandoned users' entries.
    pub(super) fn after_check(&mut self, views: &[(u32, ViewOut)], bad: u64) {
        // A user who stayed away may still have a device on a node that lived: online, rightly.
        let online: HashSet<u32> = self
            .cids
            .values()
            .filter(|c| c.welcomed)
            .map(|c| c.user)
            .collect();
        let Some(k) = self.kill.as_mut() else {
            return;
        };
        let now = super::verify::now_ms();
        if !k.converged {
            k.out.checks_before_convergence += 1;
            k.out.mismatches_before_convergence += bad;
            k.pending.retain(|cid| self.connecting.contains_key(cid));
            if bad == 0
                && k.taken_ms.is_some()
                && now >= k.decided_ms
                && k.pending.is_empty()
                && k.queue.is_empty()
            {
                k.converged = true;
                k.out.converged_after_s = Some(k.at.elapsed().as_secs_f64());
            }
        } else {
            k.out.checks_after_convergence += 1;
            k.out.mismatches_after_convergence += bad;
        }
        if now < k.decided_ms {
            return;
        }
        for (_, v) in views {
            for (i, e) in v.entries.iter().enumerate() {
                if !k.abandoned.contains(&e.0)
                    || self.oracle.tainted[e.0 as usize]
                    || online.contains(&e.0)
                {
                    continue;
                }
                if e.1 == 0 {
                    k.out.abandoned_entries_offline += 1;
                    if let Some(&t) = v.changed_us.get(i)
                        && t >= k.at_us
                    {
                        let s = (t - k.at_us) as f64 / 1e6;
                        let last = k.out.abandoned_offline_last_s.get_or_insert(s);
                        *last = last.max(s);
                    }
                } else {
                    k.out.abandoned_entries_online += 1;
                }
            }
        }
    }
}

/// The cluster's lines of the text report.
pub fn table(c: &ClusterOut, s: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "cluster: {} nodes, lease TTL {} ms, graph bulk-loaded into PostgreSQL in {:.1} s, settled in {:.1} s, {} moved followed",
        c.nodes_started, c.lease_ttl_ms, c.graph_load_seconds, c.settle_seconds, c.moves_followed
    );
    for n in &c.nodes {
        let _ = writeln!(
            s,
            "  {:<4} pid {:<8} cpu {:>7.1} s ({:>5.1}% of one core)  RSS peak {:>7.1} MiB  peer out {:>10} B in {:>8} frames  transitions {:>9}{}",
            n.id,
            n.pid,
            n.cpu_seconds,
            n.cpu_mean_percent,
            n.rss_peak as f64 / 1048576.0,
            n.peer_bytes_sent,
            n.peer_frames_sent,
            n.transitions,
            if n.killed { "  (killed)" } else { "" }
        );
    }
    let _ = writeln!(
        s,
        "  peer traffic {} B in {} frames: {:.1} B per change on one link ({} changes applied by peers), {:.1} B per change on all links ({} changes in the cluster)",
        c.peer_bytes_sent,
        c.peer_frames_sent,
        c.peer_bytes_per_change,
        c.peer_entries_applied,
        c.peer_bytes_per_transition,
        c.cluster_transitions
    );
    if c.chat.sends > 0 {
        let ch = &c.chat;
        let _ = writeln!(
            s,
            "  chat in PostgreSQL: {} sends accepted, {} commits ({:.0}/s, {:.1} sends a commit), {} rows ({:.2} a send), {} commits fenced, {} chat frames to peers",
            ch.sends,
            ch.commits,
            c.chat_commits_per_s,
            ch.sends as f64 / ch.commits.max(1) as f64,
            ch.committed_rows,
            ch.committed_rows as f64 / ch.sends as f64,
            ch.commits_fenced,
            ch.peer_chat_frames
        );
        let nodes: f64 = c.nodes.iter().map(|n| n.cpu_seconds).sum();
        let _ = writeln!(
            s,
            "  CPU per accepted send: nodes {:.1} µs, PostgreSQL {:.1} µs, etcd {:.1} µs (PostgreSQL {:.1} s, etcd {:.1} s over the run)",
            nodes * 1e6 / ch.sends as f64,
            c.postgres_cpu_seconds * 1e6 / ch.sends as f64,
            c.etcd_cpu_seconds * 1e6 / ch.sends as f64,
            c.postgres_cpu_seconds,
            c.etcd_cpu_seconds
        );
    }
    let l = &c.cross_node_probe_latency;
    let _ = writeln!(
        s,
        "  cross-node probes: {} receipts, p50 {:.1} p99 {:.1} max {:.1} ms",
        c.cross_node_probe_receipts, l.p50_ms, l.p99_ms, l.max_ms
    );
    super::figures::table(c, s);
    if let Some(k) = &c.kill {
        let _ = writeln!(
            s,
            "  kill -9 {} at {:.1} s: {} sessions lost, {} reconnects ({} welcomed, p50 {:.0} ms, max {:.0} ms after the kill), {} users stayed away",
            k.node,
            k.at_s,
            k.sessions_lost,
            k.reconnects,
            k.reconnected,
            k.reconnect_p50_ms,
            k.reconnect_max_ms,
            k.abandoned_users
        );
        let _ = writeln!(
            s,
            "  every slot served again after {}; converged after {} (truth decides after {:.1} s); mismatches before {} in {} checks, after {} in {} checks",
            k.taken_over_after_s
                .map_or("NEVER".to_owned(), |v| format!("{v:.1} s")),
            k.converged_after_s
                .map_or("NEVER".to_owned(), |v| format!("{v:.1} s")),
            k.decided_after_s,
            k.mismatches_before_convergence,
            k.checks_before_convergence,
            k.mismatches_after_convergence,
            k.checks_after_convergence
        );
        let _ = writeln!(
            s,
            "  users who stayed away: {} entries offline, {} online in compared views; last turned offline {} after the kill",
            k.abandoned_entries_offline,
            k.abandoned_entries_online,
            k.abandoned_offline_last_s
                .map_or("-".to_owned(), |v| format!("{v:.1} s"))
        );
    }
}
