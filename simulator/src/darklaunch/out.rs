//! The dark-launch report: JSON types, the stdout table and the HTML page (charts from
//! `report.rs`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::verify::VerifyCounts;
use crate::report::{bar_chart, line_chart};
use crate::util::{cores, mib, thousands};

#[derive(Debug, Clone, Serialize)]
pub struct ConfigOut {
    pub graph: String,
    pub graph_users: u64,
    pub graph_edges: u64,
    pub model_users: u64,
    pub node: String,
    pub duration_s: f64,
    pub speed: f64,
    pub peak_online: f64,
    pub tick_ms: u64,
    pub idle_thresholds_ms: Vec<u64>,
    pub grace_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub client_heartbeat_ms: u64,
    pub quic_share: f64,
    pub workers: usize,
    pub source_ips: Vec<String>,
    pub quic_endpoints: usize,
    pub max_sessions: u64,
    pub probe_rate: f64,
    pub chat_rate: f64,
    /// A device acks at most this often (0: after every burst it reads).
    pub chat_ack_ms: u64,
    pub seed: u64,
    pub verify: bool,
    pub margin_ms: u64,
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (upper bound ms, count) buckets for the chart.
    pub buckets: Vec<(f64, u64)>,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        let mut buckets = Vec::new();
        let mut bound = 1u64; // µs
        let mut prev = 0u64;
        while bound <= h.max().saturating_mul(2).max(2) && buckets.len() < 40 {
            let below = h.count_between(0, bound);
            buckets.push((bound as f64 / 1000.0, below - prev));
            prev = below;
            bound *= 2;
        }
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
            buckets,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadOut {
    pub skipped: bool,
    pub edges: u64,
    pub batches: u64,
    pub seconds: f64,
    pub edges_per_s: f64,
    pub tokens: u64,
    pub token_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionsOut {
    pub connects_sent: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub connect_failure_examples: Vec<String>,
    pub closed_by_node: u64,
    pub closed_by_node_examples: Vec<String>,
    pub capped: u64,
    pub peak_open: u64,
    pub peak_ws: u64,
    pub peak_quic: u64,
    pub peak_connect_rate: f64,
    pub connect_latency: Latency,
    pub events_sent: u64,
    pub events_without_session: u64,
    pub truth_expired: u64,
    pub errors_from_node: u64,
    pub error_examples: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThroughputOut {
    pub frames: u64,
    pub entries: u64,
    pub welcome_entries: u64,
    pub frames_per_s: f64,
    pub entries_per_s: f64,
    pub pongs: u64,
    /// CPU over the whole run per presence frame and per entry the clients received (issue
    /// #20's figures); chat, connects and heartbeats are included, so read them on runs
    /// without chat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<DeliveryCost>,
}

/// Where the run's second half starts in `series` (the samples from `active_s / 2` on): the
/// sessions have ramped up by then, so rates and costs there are the steady ones.
pub fn second_half_from(series: &[SampleOut], active_s: f64) -> usize {
    series.partition_point(|p| p.t_s < active_s / 2.0)
}

/// CPU per delivered presence frame and entry, of the node and of the load generator beside it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryCost {
    pub node_us_per_frame: f64,
    pub node_sys_us_per_frame: f64,
    pub node_us_per_entry: f64,
    pub driver_us_per_frame: f64,
    pub driver_us_per_entry: f64,
    /// The node's CPU per frame and per entry over the run's second half alone (the
    /// per-second samples), once the sessions have connected: the steady cost of delivery.
    pub node_us_per_frame_second_half: f64,
    pub node_us_per_entry_second_half: f64,
}

impl DeliveryCost {
    /// `None` when no frame arrived or the node's CPU was not measured.
    pub fn new(
        frames: u64,
        entries: u64,
        server: &ServerOut,
        driver: &DriverOut,
        series: &[SampleOut],
        active_s: f64,
    ) -> Option<Self> {
        if frames == 0 || !server.measured {
            return None;
        }
        let us = |secs: f64, n: u64| secs * 1e6 / n.max(1) as f64;
        let driver_s = if driver.measured {
            driver.cpu_user_seconds + driver.cpu_sys_seconds
        } else {
            f64::NAN
        };
        // Each sample covers the time since the one before it.
        let from = second_half_from(series, active_s).max(1);
        let (mut cpu_s, mut half_frames, mut half_entries) = (0.0, 0.0, 0.0);
        for w in series.get(from - 1..).unwrap_or_default().windows(2) {
            let dt = w[1].t_s - w[0].t_s;
            cpu_s += w[1].cpu_percent / 100.0 * dt;
            half_frames += w[1].frames_per_s * dt;
            half_entries += w[1].entries_per_s * dt;
        }
        let per = |n: f64| if n > 0.0 { cpu_s * 1e6 / n } else { f64::NAN };
        Some(Self {
            node_us_per_frame_second_half: per(half_frames),
            node_us_per_entry_second_half: per(half_entries),
            node_us_per_frame: us(server.cpu_seconds, frames),
            node_sys_us_per_frame: us(server.cpu_sys_seconds, frames),
            node_us_per_entry: us(server.cpu_seconds, entries),
            driver_us_per_frame: us(driver_s, frames),
            driver_us_per_entry: us(driver_s, entries),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeOut {
    pub sent: u64,
    pub expected_receipts: u64,
    pub receipts: u64,
    /// Scheduled send → receipt at each online friend (schedule-based: a late driver counts).
    pub latency: Latency,
    pub target_ms: f64,
    /// The node's part of it, from its `presence_frame_delay_seconds`: from the tick that made
    /// a frame's oldest entries to the frame handed to its connection. The rest is the wait
    /// for the tick, the driver's own send of the change and its read of the frame.
    pub node_tick_to_write: Option<super::node::NodeQuantiles>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatOut {
    pub enabled: bool,
    pub sent: u64,
    pub acked: u64,
    pub inbox: u64,
    /// `ack` frames sent by the receiving devices (one per burst of inbox entries read).
    pub device_acks: u64,
    pub errors: u64,
    /// Set when the node answered `bad_request` "chat is not enabled".
    pub disabled_message: Option<String>,
    pub send_to_sent: Latency,
    pub send_to_inbox: Latency,
    /// `sent` answers a second over the run, and over its second half (once ramped up).
    pub acked_per_s: f64,
    pub acked_per_s_second_half: f64,
    /// The node's own part of send → sent (its `chat_send_seconds`), when it exports it.
    pub node_send_to_sent: Option<super::node::NodeQuantiles>,
    /// The node's group commit time (its `chat_commit_seconds`; the first node's in a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_commit: Option<super::node::NodeQuantiles>,
    /// The node's own counts (`chat_sends_total`, `chat_commits_total`,
    /// `chat_committed_rows_total`): sends accepted, group commits (one fsync each), rows.
    pub node_sends: u64,
    pub node_commits: u64,
    pub node_committed_rows: u64,
    /// Acknowledged against delivered, after the settle (`--chat-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<super::ledger::LedgerOut>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerOut {
    pub measured: bool,
    pub rss_start: u64,
    pub rss_peak: u64,
    pub rss_end: u64,
    pub rss_per_session_bytes: f64,
    pub cpu_seconds: f64,
    /// The part of `cpu_seconds` in user space and in the kernel.
    pub cpu_user_seconds: f64,
    pub cpu_sys_seconds: f64,
    pub cpu_mean_percent: f64,
    /// CPU time per session per second of wall time, in microseconds.
    pub cpu_us_per_session_s: f64,
}

/// CPU of the load generator over the run: this process and its worker processes. On a
/// machine the driver shares with the node, it is what the node could not have.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriverOut {
    pub measured: bool,
    /// Worker processes counted besides this one.
    pub workers: usize,
    pub cpu_user_seconds: f64,
    pub cpu_sys_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleOut {
    pub t_s: f64,
    pub open: u64,
    pub connects_per_s: f64,
    pub frames_per_s: f64,
    pub entries_per_s: f64,
    pub rss: u64,
    pub cpu_percent: f64,
    /// Chat sends the driver issued in this interval, per second.
    pub chat_sends_per_s: f64,
    /// `sent` answers received in this interval, per second.
    pub chat_acked_per_s: f64,
    /// send → `sent` of the answers received in this interval (0 when none).
    pub chat_sent_p50_ms: f64,
    pub chat_sent_p99_ms: f64,
    pub chat_sent_max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DarkReport {
    pub config: ConfigOut,
    pub load: LoadOut,
    pub sessions: SessionsOut,
    pub throughput: ThroughputOut,
    pub presence_latency: ProbeOut,
    pub chat: ChatOut,
    pub server: ServerOut,
    pub driver: DriverOut,
    pub verify: Option<VerifyCounts>,
    pub verify_rule: String,
    pub wall_seconds: f64,
    pub series: Vec<SampleOut>,
    /// `--cluster`: per node, the peer traffic, cross-node latency and the kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::cluster::ClusterOut>,
}

/// A row of quantiles the node measured itself (bucket bounds, so "p99 ≤ 5 ms").
fn node_row(s: &mut String, label: &str, q: &super::node::NodeQuantiles) {
    let le = |v: Option<f64>| v.map_or_else(|| "> last bucket".into(), |v| format!("≤ {v}"));
    let _ = writeln!(
        s,
        "  {label}: n={}  p50 {}  p90 {}  p99 {}  p99.9 {} ms",
        q.count,
        le(q.p50_le_ms),
        le(q.p90_le_ms),
        le(q.p99_le_ms),
        le(q.p999_le_ms)
    );
}

fn lat_row(s: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        s,
        "  {name:<28} n={:<9} mean {:>8.1}  p50 {:>8.1}  p90 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>8.1} ms",
        l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
}

pub fn table(r: &DarkReport) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "dark launch: {} ({} users, {} edges; model over {} users), node {}",
        c.graph,
        thousands(c.graph_users),
        thousands(c.graph_edges),
        thousands(c.model_users),
        c.node
    );
    let _ = writeln!(
        s,
        "  {:.0} s wall at {}x model speed, peak online {}, tick {} ms, idle {:?} ms, grace {} ms, heartbeat timeout {} ms",
        c.duration_s,
        c.speed,
        c.peak_online,
        c.tick_ms,
        c.idle_thresholds_ms,
        c.grace_ms,
        c.heartbeat_timeout_ms
    );
    let _ = writeln!(
        s,
        "  QUIC share {}, {} worker process(es) for WebSocket, source addresses {:?}, {} QUIC endpoints",
        c.quic_share, c.workers, c.source_ips, c.quic_endpoints
    );
    let l = &r.load;
    if l.skipped {
        let _ = writeln!(s, "graph load: skipped (--skip-load)");
    } else {
        let _ = writeln!(
            s,
            "graph load: {} edges in {} batches, {:.2} s ({:.0} edges/s)",
            thousands(l.edges),
            l.batches,
            l.seconds,
            l.edges_per_s
        );
    }
    let _ = writeln!(
        s,
        "tokens: {} minted through POST /v1/tokens in {:.2} s",
        thousands(l.tokens),
        l.token_seconds
    );
    let ss = &r.sessions;
    let _ = writeln!(
        s,
        "sessions: peak {} open ({} WebSocket, {} QUIC); {} connects, {} failed, {} closed by the node, {} refused by --max-sessions; peak connect rate {:.0}/s",
        thousands(ss.peak_open),
        thousands(ss.peak_ws),
        thousands(ss.peak_quic),
        thousands(ss.connects),
        ss.connect_failures,
        ss.closed_by_node,
        ss.capped,
        ss.peak_connect_rate
    );
    lat_row(&mut s, "connect → welcome", &ss.connect_latency);
    let _ = writeln!(
        s,
        "  {} client messages sent; {} error frames from the node",
        thousands(ss.events_sent),
        ss.errors_from_node
    );
    for e in ss
        .connect_failure_examples
        .iter()
        .chain(&ss.closed_by_node_examples)
        .chain(&ss.error_examples)
        .take(8)
    {
        let _ = writeln!(s, "    {e}");
    }
    let t = &r.throughput;
    let _ = writeln!(
        s,
        "throughput: {} presence frames ({:.0}/s), {} entries ({:.0}/s), {} welcome entries",
        thousands(t.frames),
        t.frames_per_s,
        thousands(t.entries),
        t.entries_per_s,
        thousands(t.welcome_entries)
    );
    if let Some(c) = &t.cost {
        let _ = writeln!(
            s,
            "  CPU per presence frame: node {:.1} µs a frame, {:.2} µs an entry over the second half; whole run (connects, heartbeats and chat included): node {:.1} µs ({:.1} in the kernel), {:.2} µs an entry, load generator {:.1} µs a frame, {:.2} µs an entry",
            c.node_us_per_frame_second_half,
            c.node_us_per_entry_second_half,
            c.node_us_per_frame,
            c.node_sys_us_per_frame,
            c.node_us_per_entry,
            c.driver_us_per_frame,
            c.driver_us_per_entry
        );
    }
    let p = &r.presence_latency;
    let _ = writeln!(
        s,
        "presence latency (status-text probes): {} probes, {} / {} receipts expected (target p99 ≤ {:.0} ms)",
        thousands(p.sent),
        thousands(p.receipts),
        thousands(p.expected_receipts),
        p.target_ms
    );
    lat_row(&mut s, "change → receipt", &p.latency);
    if let Some(q) = &p.node_tick_to_write {
        node_row(
            &mut s,
            "node's part (its presence_frame_delay_seconds: the frame's tick → written)",
            q,
        );
    }
    let ch = &r.chat;
    if ch.enabled {
        if let Some(m) = &ch.disabled_message {
            let _ = writeln!(
                s,
                "chat: NOT MEASURED: the node answered bad_request {m:?} ({} messages tried)",
                ch.sent
            );
        } else {
            let _ = writeln!(
                s,
                "chat: {} sent, {} acknowledged ({:.0}/s; {:.0}/s over the second half), {} inbox receipts ({} device acks, {}), {} errors",
                ch.sent,
                ch.acked,
                ch.acked_per_s,
                ch.acked_per_s_second_half,
                ch.inbox,
                ch.device_acks,
                if c.chat_ack_ms == 0 {
                    "one per burst read".to_owned()
                } else {
                    format!("at most one per {} ms a device", c.chat_ack_ms)
                },
                ch.errors
            );
            lat_row(&mut s, "send → sent", &ch.send_to_sent);
            lat_row(&mut s, "send → inbox", &ch.send_to_inbox);
            if let Some(q) = &ch.node_send_to_sent {
                node_row(
                    &mut s,
                    "node's part of send → sent (its chat_send_seconds: accepted → sent queued, durable)",
                    q,
                );
            }
            if let Some(q) = &ch.node_commit {
                node_row(&mut s, "node's group commit (its chat_commit_seconds)", q);
            }
            if ch.node_sends > 0 && r.server.measured {
                let per_send = |secs: f64| secs * 1e6 / ch.node_sends as f64;
                let sv = &r.server;
                let _ = write!(
                    s,
                    "  CPU per durable send: node {:.1} µs ({:.1} in the kernel)",
                    per_send(sv.cpu_seconds),
                    per_send(sv.cpu_sys_seconds)
                );
                let dv = &r.driver;
                if dv.measured {
                    let _ = write!(
                        s,
                        ", driver {:.1} µs ({:.1} in the kernel); both processes' kernel time alone caps this machine's {} cores at {:.1} k sends/s",
                        per_send(dv.cpu_user_seconds + dv.cpu_sys_seconds),
                        per_send(dv.cpu_sys_seconds),
                        cores(),
                        cores() as f64 * 1e3
                            / per_send(sv.cpu_sys_seconds + dv.cpu_sys_seconds).max(1e-9)
                    );
                }
                let _ = writeln!(s, " (presence traffic and connects included)");
            }
            if ch.node_commits > 0 {
                let per = |n: u64| n as f64 / ch.node_commits as f64;
                let _ = writeln!(
                    s,
                    "  node's group commits: {} (one fsync each) for {} sends: {:.1} sends and {:.1} rows a commit",
                    ch.node_commits,
                    ch.node_sends,
                    per(ch.node_sends),
                    per(ch.node_committed_rows)
                );
            }
            chat_seconds(&mut s, &r.series);
            if let Some(l) = &ch.ledger {
                ledger_rows(&mut s, l);
            }
        }
    } else {
        let _ = writeln!(s, "chat: off (--chat-rate 0)");
    }
    let sv = &r.server;
    if sv.measured {
        let _ = writeln!(
            s,
            "node process: RSS {:.1} MiB at start, {:.1} MiB peak, {:.1} MiB at end ({:.1} KiB per session at peak); CPU {:.1} s ({:.1} s in the kernel), mean {:.1}%, {:.1} µs per session-second",
            mib(sv.rss_start),
            mib(sv.rss_peak),
            mib(sv.rss_end),
            sv.rss_per_session_bytes / 1024.0,
            sv.cpu_seconds,
            sv.cpu_sys_seconds,
            sv.cpu_mean_percent,
            sv.cpu_us_per_session_s
        );
    } else {
        let _ = writeln!(s, "node process: not on this machine (no /proc figures)");
    }
    let dv = &r.driver;
    if dv.measured {
        let _ = writeln!(
            s,
            "driver processes (this one and {} worker(s)): CPU {:.1} s ({:.1} s in the kernel)",
            dv.workers,
            dv.cpu_user_seconds + dv.cpu_sys_seconds,
            dv.cpu_sys_seconds
        );
    }
    if let Some(v) = &r.verify {
        let _ = writeln!(
            s,
            "verify: {} checks, {} views, {} entries compared: {} stale, {} missing, {} ghost, {} duplicated; skipped {} (session end near the check), {} idle levels (threshold near the check), {} (tainted)",
            v.checks,
            thousands(v.views_compared),
            thousands(v.entries_compared),
            v.stale,
            v.missing,
            v.ghost,
            v.duplicate,
            v.skipped_state,
            v.skipped_idle_level,
            v.skipped_tainted
        );
        if v.flush_behind > 0 {
            let _ = writeln!(
                s,
                "  {} client(s) had not caught up when a check began",
                v.flush_behind
            );
        }
        for e in &v.examples {
            let _ = writeln!(s, "    {e}");
        }
        let _ = writeln!(s, "  rule: {}", r.verify_rule);
        let _ = writeln!(
            s,
            "  result: {}",
            if v.failed() {
                "MISMATCHES"
            } else {
                "every compared view equals the truth"
            }
        );
    }
    if let Some(c) = &r.cluster {
        super::cluster::table(c, &mut s);
    }
    let _ = writeln!(s, "wall time {:.1} s", r.wall_seconds);
    s
}

/// The per-second chat figures in brief: how many seconds had a send → `sent` p99 over
/// 10 ms, and the five seconds with the largest maximum (the whole series is in the JSON).
/// Acknowledged against delivered.
fn ledger_rows(s: &mut String, l: &super::ledger::LedgerOut) {
    let _ = writeln!(
        s,
        "  acknowledged {} vs delivered {} ({} live, {} on a resume with `after`, {} read back after the run): {} lost, {} stored twice, {} under another msg_id, {} acknowledged twice differently{}",
        l.acknowledged,
        l.delivered,
        l.delivered_live,
        l.delivered_on_resume,
        l.delivered_on_read,
        l.lost,
        l.stored_twice,
        l.wrong_msg_id,
        l.ack_conflicts,
        if l.failed() { "  ** FAILED **" } else { "" }
    );
    let _ = writeln!(
        s,
        "  {} sends sent again with their id after a reconnect or at the end ({} answered twice); settle {:.1} s: {} devices held unanswered sends at the end ({} still unanswered after); {} delivered without a `sent` (in flight when the sender left); {} messages no device had read, {} inboxes read back ({} failed)",
        l.sends_resent,
        l.resent_answers,
        l.settle_seconds,
        l.devices_pending_at_end,
        l.unanswered,
        l.delivered_unacknowledged,
        l.missing_before_read,
        l.users_read,
        l.reads_failed
    );
    for e in &l.examples {
        let _ = writeln!(s, "    {e}");
    }
}

fn chat_seconds(s: &mut String, series: &[SampleOut]) {
    let with: Vec<&SampleOut> = series.iter().filter(|x| x.chat_acked_per_s > 0.0).collect();
    if with.is_empty() {
        return;
    }
    let over = with.iter().filter(|x| x.chat_sent_p99_ms > 10.0).count();
    let _ = writeln!(
        s,
        "  per second (answers received that second): {} seconds, p99 over 10 ms in {over}; largest maxima:",
        with.len()
    );
    let mut worst = with.clone();
    worst.sort_by(|a, b| b.chat_sent_max_ms.total_cmp(&a.chat_sent_max_ms));
    for x in worst.iter().take(5) {
        let _ = writeln!(
            s,
            "    t={:>6.1} s  sends {:>6.0}/s  sent {:>6.0}/s  p50 {:>6.1}  p99 {:>6.1}  max {:>7.1} ms  (open {}, connects {:.0}/s, node CPU {:.0}%)",
            x.t_s,
            x.chat_sends_per_s,
            x.chat_acked_per_s,
            x.chat_sent_p50_ms,
            x.chat_sent_p99_ms,
            x.chat_sent_max_ms,
            x.open,
            x.connects_per_s,
            x.cpu_percent
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn html(r: &DarkReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>presence dark launch</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}pre{{background:#f4f4f4;padding:1em;overflow-x:auto;font-size:12px}}svg{{display:block;margin:1em 0}}</style></head><body><h1>Presence dark launch</h1>"#
    );
    let _ = write!(h, "<pre>{}</pre>", esc(&table(r)));
    let pts = |f: &dyn Fn(&SampleOut) -> f64| -> Vec<(f64, f64)> {
        r.series.iter().map(|s| (s.t_s, f(s))).collect()
    };
    h.push_str(&line_chart(
        "Sessions and connects",
        "seconds",
        "count, per s",
        &[
            ("open sessions".into(), pts(&|s| s.open as f64)),
            ("connects/s".into(), pts(&|s| s.connects_per_s)),
        ],
        false,
    ));
    h.push_str(&line_chart(
        "Presence traffic received by the clients",
        "seconds",
        "per second",
        &[
            ("frames/s".into(), pts(&|s| s.frames_per_s)),
            ("entries/s".into(), pts(&|s| s.entries_per_s)),
        ],
        false,
    ));
    if r.server.measured {
        h.push_str(&line_chart(
            "Node process",
            "seconds",
            "MiB, %",
            &[
                ("RSS MiB".into(), pts(&|s| mib(s.rss))),
                ("CPU %".into(), pts(&|s| s.cpu_percent)),
            ],
            false,
        ));
    }
    if r.chat.enabled && r.chat.disabled_message.is_none() {
        h.push_str(&line_chart(
            "Chat send → sent, per second of receipt",
            "seconds",
            "ms",
            &[
                ("p50".into(), pts(&|s| s.chat_sent_p50_ms)),
                ("p99".into(), pts(&|s| s.chat_sent_p99_ms)),
                ("max".into(), pts(&|s| s.chat_sent_max_ms)),
            ],
            false,
        ));
    }
    let mut lats: Vec<(&str, &Latency)> =
        vec![("presence change → receipt", &r.presence_latency.latency)];
    if r.chat.enabled && r.chat.disabled_message.is_none() {
        lats.push(("chat send → sent", &r.chat.send_to_sent));
        lats.push(("chat send → inbox", &r.chat.send_to_inbox));
    }
    lats.push(("connect → welcome", &r.sessions.connect_latency));
    for (name, l) in lats {
        if l.buckets.is_empty() {
            continue;
        }
        let groups: Vec<String> = l.buckets.iter().map(|(b, _)| format!("≤{b:.3}")).collect();
        h.push_str(&bar_chart(
            &format!("{name} latency (ms buckets)"),
            "count (log)",
            &groups,
            &[(
                name.to_string(),
                l.buckets.iter().map(|b| b.1 as f64).collect(),
            )],
            true,
        ));
    }
    h.push_str("</body></html>\n");
    h
}
