//! Reports: the types behind the JSON, a plain-text table for stdout, and a self-contained
//! HTML page with inline SVG charts (no scripts, nothing fetched from the network).

use std::fmt::Write as _;

use serde::Serialize;

use crate::activity::{ActivityParams, ModelCounts};
use crate::graphgen::GraphStats;
use crate::replay::EngineErrors;
use crate::util::{fmt_ms, mib, thousands};

// ---- replay report types ------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct ReplayConfigOut {
    pub graph: String,
    pub users: u64,
    pub edges: u64,
    pub duration_ms: u64,
    pub tick_ms: u64,
    pub peak_online: f64,
    pub seed: u64,
    pub start_hour: f64,
    pub peak_hour: f64,
    pub threads: usize,
    pub shards: usize,
    pub heartbeat_timeout_ms: u64,
    pub grace_ms: u64,
    pub idle_thresholds_ms: Vec<u64>,
    pub verify: bool,
    pub sample_watchers: usize,
    pub policies: bool,
    pub activity: ActivityParams,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FootprintOut {
    pub users: u64,
    pub sessions: u64,
    pub edges: u64,
    pub wheel_entries: u64,
    pub state_bytes: u64,
    pub graph_bytes: u64,
    pub interner_bytes: u64,
    pub roaring_sets: u64,
}

impl From<presence_core::Footprint> for FootprintOut {
    fn from(f: presence_core::Footprint) -> Self {
        Self {
            users: f.users as u64,
            sessions: f.sessions as u64,
            edges: f.edges,
            wheel_entries: f.wheel_entries as u64,
            state_bytes: f.state_bytes as u64,
            graph_bytes: f.graph_bytes as u64,
            interner_bytes: f.interner_bytes as u64,
            roaring_sets: f.roaring_sets as u64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadOut {
    pub seconds: f64,
    pub footprint: FootprintOut,
    pub rss_before: u64,
    pub rss_after: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub ticks: u64,
    pub events: u64,
    pub model: ModelCounts,
    pub transitions: u64,
    pub entries: u64,
    pub frames: u64,
    /// Sessions the heartbeat timeout expired after their client vanished (expected).
    pub expired_vanished: u64,
    /// Sessions expired while their client was still heartbeating (a bug if not zero).
    pub expired_unexpected: u64,
    pub engine_errors: EngineErrors,
    pub engine_error_examples: Vec<String>,
    pub wall_seconds: f64,
    /// Virtual seconds per wall second.
    pub speedup: f64,
    /// Mean share of users whose published state is not offline, after the warm-up.
    pub mean_present_share_after_warmup: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RateSet {
    pub virtual_seconds: f64,
    pub transitions_per_s: f64,
    pub entries_per_s: f64,
    pub frames_per_s: f64,
    /// Diff entries per visible transition: the multicast amplification.
    pub entries_per_transition: f64,
    pub events_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TickTimeOut {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (from µs, to µs, ticks) in power-of-two buckets.
    pub buckets: Vec<(f64, f64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryOut {
    /// VmHWM of the process.
    pub peak_rss: u64,
    pub rss_end: u64,
    pub peak_rss_per_user: f64,
    /// Engine footprint at the moment with the most sessions.
    pub engine_at_peak: FootprintOut,
    pub engine_bytes_per_user: f64,
    pub engine_state_bytes_per_session: f64,
    pub graph_bytes_per_edge: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyOut {
    pub name: String,
    pub entries: u64,
    pub frames: u64,
    pub entries_per_s: f64,
    pub frames_per_s: f64,
    pub steady_entries_per_s: f64,
    pub steady_frames_per_s: f64,
}

impl PolicyOut {
    /// A policy's totals over `secs` of virtual time and its steady-state counts over
    /// `steady_secs`.
    pub fn new(
        name: &str,
        (entries, frames): (u64, u64),
        secs: f64,
        (steady_entries, steady_frames): (u64, u64),
        steady_secs: f64,
    ) -> Self {
        Self {
            name: name.to_owned(),
            entries,
            frames,
            entries_per_s: entries as f64 / secs,
            frames_per_s: frames as f64 / secs,
            steady_entries_per_s: steady_entries as f64 / steady_secs,
            steady_frames_per_s: steady_frames as f64 / steady_secs,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyOut {
    pub watchers: usize,
    pub views_started: u64,
    pub checks: u64,
    pub mismatches: u64,
    pub welcome_checks: u64,
    pub welcome_mismatches: u64,
    pub ghost_checks: u64,
    pub ghosts: u64,
    pub examples: Vec<String>,
}

impl VerifyOut {
    pub fn failed(&self) -> bool {
        self.mismatches > 0 || self.welcome_mismatches > 0 || self.ghosts > 0
    }
}

/// One point of the time series (a window of virtual time ending at `t_s`).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub transitions_per_s: f64,
    pub entries_per_s: f64,
    pub frames_per_s: f64,
    pub policy_a_entries_per_s: f64,
    pub policy_b_entries_per_s: f64,
    pub events_per_s: f64,
    pub tick_mean_us: f64,
    pub tick_max_us: f64,
    /// Published populations at the end of the window.
    pub online: u64,
    pub idle: Vec<u64>,
    pub present: u64,
    pub live_watchers: u64,
    pub sessions: u64,
    pub model_online: u64,
    /// Resident set of the process at the end of the window.
    pub rss: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub config: ReplayConfigOut,
    pub load: LoadOut,
    pub totals: Totals,
    /// Rates over the whole run, and after the first two virtual minutes (login storm).
    pub whole: RateSet,
    pub steady: RateSet,
    pub tick_time: TickTimeOut,
    /// Wall time spent applying one tick's worth of events to the engine.
    pub apply_time: TickTimeOut,
    /// Wall time of one full `connect` (session + welcome snapshot), timed on one login in
    /// `welcome_sample_every`; the other logins skip the snapshot.
    pub welcome_time: TickTimeOut,
    pub welcome_sample_every: u64,
    pub memory: MemoryOut,
    /// Transparent huge pages advised once the tables were built (`None`: turned off).
    pub huge_pages: Option<crate::hugepages::HugePages>,
    pub policies: Option<Vec<PolicyOut>>,
    pub verify: Option<VerifyOut>,
    pub idle_levels: Vec<String>,
    pub series: Vec<Sample>,
}

fn f(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1} k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// The replay report as a plain-text table.
pub fn replay_table(r: &ReplayReport) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "replay: {} users, {} edges, {} virtual at tick {}, peak online {:.0}%, seed {}",
        thousands(c.users),
        thousands(c.edges),
        fmt_ms(c.duration_ms),
        fmt_ms(c.tick_ms),
        c.peak_online * 100.0,
        c.seed
    );
    let t = &r.totals;
    let _ = writeln!(
        s,
        "wall {:.1} s ({:.0}x real time); load {:.1} s; {} events ({} logins, {} activities, {} heartbeats, {} drops, {} vanished)",
        t.wall_seconds,
        t.speedup,
        r.load.seconds,
        thousands(t.events),
        thousands(t.model.logins),
        thousands(t.model.activities),
        thousands(t.model.heartbeats),
        thousands(t.model.drops),
        thousands(t.model.vanished),
    );
    let _ = writeln!(
        s,
        "present after warm-up: {:.1}% of users (target at peak {:.1}%)",
        t.mean_present_share_after_warmup * 100.0,
        c.peak_online * 100.0
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>14} {:>14}",
        "throughput (virtual /s)", "whole run", "after warm-up"
    );
    for (name, a, b) in [
        (
            "transitions/s",
            r.whole.transitions_per_s,
            r.steady.transitions_per_s,
        ),
        (
            "diff entries/s",
            r.whole.entries_per_s,
            r.steady.entries_per_s,
        ),
        ("frames/s", r.whole.frames_per_s, r.steady.frames_per_s),
        (
            "entries per transition",
            r.whole.entries_per_transition,
            r.steady.entries_per_transition,
        ),
        (
            "engine events/s",
            r.whole.events_per_s,
            r.steady.events_per_s,
        ),
    ] {
        let _ = writeln!(s, "{name:<24} {:>14} {:>14}", f(a), f(b));
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "wall time per tick (µs)", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, h) in [
        ("engine.tick", &r.tick_time),
        ("applying events", &r.apply_time),
    ] {
        let _ = writeln!(
            s,
            "{name:<24} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            h.mean_us, h.p50_us, h.p90_us, h.p99_us, h.p999_us, h.max_us
        );
    }
    let w = &r.welcome_time;
    let _ = writeln!(
        s,
        "{:<24} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        "connect + welcome", w.mean_us, w.p50_us, w.p90_us, w.p99_us, w.p999_us, w.max_us
    );
    let _ = writeln!(
        s,
        "(connect + welcome timed on 1 login in {}: {} timed; the others start bare, no snapshot)",
        r.welcome_sample_every, w.count
    );
    let _ = writeln!(s);
    if let Some(h) = &r.huge_pages {
        let _ = writeln!(
            s,
            "huge pages: {:.0} MiB of tables advised, {:.0} MiB in 2 MiB pages ({:.1} s){}",
            mib(h.advised_bytes),
            mib(h.huge_after),
            h.seconds,
            if h.refused.is_empty() {
                String::new()
            } else {
                format!(
                    "; advice refused for {:.0} MiB (first: {})",
                    mib(h.refused_bytes),
                    h.refused.first().map_or("", String::as_str)
                )
            }
        );
    }
    let m = &r.memory;
    let e = &m.engine_at_peak;
    let _ = writeln!(
        s,
        "memory: peak RSS {:.0} MiB ({:.0} B/user); engine at peak sessions ({}): state {:.0} MiB, graph {:.0} MiB ({:.2} B/edge), ids {:.0} MiB = {:.0} B/user, {:.0} state B/session",
        mib(m.peak_rss),
        m.peak_rss_per_user,
        thousands(e.sessions),
        mib(e.state_bytes),
        mib(e.graph_bytes),
        m.graph_bytes_per_edge,
        mib(e.interner_bytes),
        m.engine_bytes_per_user,
        m.engine_state_bytes_per_session
    );
    if t.expired_unexpected > 0 || t.engine_errors.total() > 0 {
        let _ = writeln!(
            s,
            "WARNING: {} sessions expired while heartbeating, {} engine calls refused",
            t.expired_unexpected,
            t.engine_errors.total()
        );
    } else {
        let _ = writeln!(
            s,
            "sessions expired by heartbeat timeout (vanished clients): {}; engine calls refused: 0",
            thousands(t.expired_vanished)
        );
    }
    if let Some(p) = &r.policies {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<62} {:>12} {:>12} {:>12} {:>12}",
            "policy (same activity)", "entries/s", "frames/s", "vs (c) ent", "vs (c) frm"
        );
        let base = p
            .last()
            .map_or((1.0, 1.0), |c| (c.entries_per_s, c.frames_per_s));
        for row in p {
            let _ = writeln!(
                s,
                "{:<62} {:>12} {:>12} {:>11.1}x {:>11.1}x",
                row.name,
                f(row.entries_per_s),
                f(row.frames_per_s),
                row.entries_per_s / base.0.max(1e-9),
                row.frames_per_s / base.1.max(1e-9)
            );
        }
    }
    if let Some(v) = &r.verify {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "verify: {} watchers, {} views from welcomes, {} view checks, {} mismatches; {} second-device welcomes checked, {} mismatches; {} vanished clients checked for ghosts, {} ghosts => {}",
            v.watchers,
            thousands(v.views_started),
            thousands(v.checks),
            v.mismatches,
            thousands(v.welcome_checks),
            v.welcome_mismatches,
            thousands(v.ghost_checks),
            v.ghosts,
            if v.failed() { "FAILED" } else { "ok" }
        );
        for ex in &v.examples {
            let _ = writeln!(s, "  {ex}");
        }
    }
    s
}

// ---- graph report -------------------------------------------------------------------------

/// Published figures of the Facebook graph (Ugander, Karrer, Backstrom, Marlow 2011).
pub mod facebook {
    pub const USERS: f64 = 721e6;
    pub const FRIENDSHIPS: f64 = 69e9;
    pub const MEDIAN_DEGREE: f64 = 99.0;
    pub const CAP: f64 = 5000.0;
    pub const CLUSTERING_MEDIAN_USER: f64 = 0.14;
    pub const SHARE_WITHIN_COUNTRY: f64 = 0.84;
    /// Mean degree 2 × 69 B / 721 M ≈ 191 (2011); ~130 in the 2008-era figures.
    pub const MEAN_DEGREE_2011: f64 = 2.0 * FRIENDSHIPS / USERS;
    pub const MEAN_DEGREE_2008: f64 = 130.0;
}

#[derive(Debug, Clone, Serialize)]
pub struct GraphReport {
    pub params: crate::graphgen::GraphParams,
    pub out: String,
    pub stats: GraphStats,
    pub disk_bytes: u64,
    pub disk_bytes_per_edge: f64,
    pub write_seconds: f64,
    pub load_seconds: Option<f64>,
    pub memory: Option<FootprintOut>,
    pub memory_graph_bytes_per_edge: Option<f64>,
    pub memory_engine_bytes_per_edge: Option<f64>,
    pub load_rss_delta: Option<u64>,
    pub peak_rss: u64,
    pub total_seconds: f64,
    /// Bytes the snapshot takes (estimated before writing).
    pub snapshot_estimate_bytes: u64,
    /// Why the snapshot could not be written, if it could not.
    pub snapshot_error: Option<String>,
    pub comparison: Vec<Comparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub figure: String,
    pub ours: f64,
    pub facebook: f64,
    /// ours / facebook.
    pub ratio: f64,
}

pub fn graph_comparison(s: &GraphStats) -> Vec<Comparison> {
    use facebook::*;
    let row = |figure: &str, ours: f64, fb: f64| Comparison {
        figure: figure.into(),
        ours,
        facebook: fb,
        ratio: if fb != 0.0 { ours / fb } else { 0.0 },
    };
    vec![
        row("median friends", f64::from(s.p50_degree), MEDIAN_DEGREE),
        row(
            "mean friends (vs 2008-era ~130)",
            s.mean_degree,
            MEAN_DEGREE_2008,
        ),
        row(
            "mean friends (vs 2011: 2 x 69 B / 721 M)",
            s.mean_degree,
            MEAN_DEGREE_2011,
        ),
        row("friend cap (max degree seen)", f64::from(s.max_degree), CAP),
        row(
            "clustering of median-degree users",
            s.clustering_median_users,
            CLUSTERING_MEDIAN_USER,
        ),
        row(
            "share of edges within country",
            s.share_edges_in_country,
            SHARE_WITHIN_COUNTRY,
        ),
    ]
}

pub fn graph_table(r: &GraphReport) -> String {
    let s = &r.stats;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "graph: {} users, {} edges (mean {:.2} friends), {} countries, {} communities, seed {} -> {}",
        thousands(s.users),
        thousands(s.edges),
        s.mean_degree,
        s.countries,
        s.communities,
        r.params.seed,
        r.out
    );
    let _ = writeln!(
        o,
        "degrees: min {}  p50 {}  p90 {}  p99 {}  max {} (cap {}); isolated users {}",
        s.min_degree,
        s.p50_degree,
        s.p90_degree,
        s.p99_degree,
        s.max_degree,
        r.params.max_friends,
        s.isolated_users
    );
    let _ = writeln!(
        o,
        "edges inside own community {:.1}%, inside own country {:.1}%; clustering of {} median-degree users {:.3}",
        s.share_edges_in_community * 100.0,
        s.share_edges_in_country * 100.0,
        s.clustering_sample,
        s.clustering_median_users
    );
    let _ = writeln!(
        o,
        "edges dropped at the cap {}, top-up edges {}",
        s.capped_edges, s.topup_edges
    );
    if r.snapshot_error.is_some() {
        let _ = writeln!(
            o,
            "on disk: NOT WRITTEN (would be {:.1} MiB = {:.2} B/edge, over the snapshot size guard)",
            mib(r.snapshot_estimate_bytes),
            r.snapshot_estimate_bytes as f64 / s.edges.max(1) as f64
        );
    } else {
        let _ = writeln!(
            o,
            "on disk: {:.1} MiB = {:.2} B/edge (upper CSR, each edge once)",
            mib(r.disk_bytes),
            r.disk_bytes_per_edge
        );
    }
    if let (Some(m), Some(g), Some(e)) = (
        &r.memory,
        r.memory_graph_bytes_per_edge,
        r.memory_engine_bytes_per_edge,
    ) {
        let _ = writeln!(
            o,
            "in memory (presence-core, loaded in {:.1} s): graph {:.1} MiB = {:.2} B/edge ({} roaring sets), ids {:.1} MiB, all engine {:.2} B/edge; RSS grew {:.1} MiB",
            r.load_seconds.unwrap_or(0.0),
            mib(m.graph_bytes),
            g,
            thousands(m.roaring_sets),
            mib(m.interner_bytes),
            e,
            mib(r.load_rss_delta.unwrap_or(0)),
        );
    }
    let _ = writeln!(
        o,
        "time: generate {:.1} s, write {:.1} s, total {:.1} s; peak RSS {:.0} MiB",
        s.generate_seconds,
        r.write_seconds,
        r.total_seconds,
        mib(r.peak_rss)
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<44} {:>10} {:>10} {:>8}",
        "vs Facebook (Ugander et al. 2011)", "ours", "facebook", "ratio"
    );
    for c in &r.comparison {
        let _ = writeln!(
            o,
            "{:<44} {:>10.3} {:>10.3} {:>8.2}",
            c.figure, c.ours, c.facebook, c.ratio
        );
    }
    o
}

// ---- HTML with inline SVG -----------------------------------------------------------------

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn nice_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1e9 {
        format!("{:.1}G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// A line chart. `log_y` plots log10 (values ≤ 0 are clipped to the smallest positive).
/// Horizontal grid lines with their labels, one per tick value.
fn y_grid(svg: &mut String, yticks: &[f64], sy: &dyn Fn(f64) -> f64, l: f64, pw: f64) {
    for &v in yticks {
        let y = sy(v);
        let _ = write!(
            svg,
            r##"<line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            l + pw,
            l - 4.0,
            y + 4.0,
            nice_num(v)
        );
    }
}

pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> String {
    let (w, h) = (760.0, 300.0);
    let (l, r, t, b) = (70.0, 180.0, 30.0, 40.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11"><text x="{l}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    if pts.is_empty() {
        svg.push_str(r#"<text x="100" y="100">no data</text></svg>"#);
        return svg;
    }
    let xmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let ty = |v: f64| -> f64 { if log_y { v.max(1e-3).log10() } else { v } };
    let positive_min = pts
        .iter()
        .map(|p| p.1)
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut ymin = if log_y {
        ty(if positive_min.is_finite() {
            positive_min
        } else {
            1.0
        })
        .floor()
    } else {
        0.0
    };
    let mut ymax = pts
        .iter()
        .map(|p| ty(p.1))
        .fold(f64::NEG_INFINITY, f64::max);
    if log_y {
        ymax = ymax.ceil();
    } else {
        ymax *= 1.08;
    }
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    if !log_y && ymin > 0.0 {
        ymin = 0.0;
    }
    let xspan = if xmax > xmin { xmax - xmin } else { 1.0 };
    let sx = |x: f64| l + (x - xmin) / xspan * pw;
    let sy = |v: f64| t + ph - (ty(v).max(ymin) - ymin) / (ymax - ymin) * ph;
    let _ = write!(
        svg,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##
    );
    // y grid
    let yticks: Vec<f64> = if log_y {
        (ymin as i64..=ymax as i64)
            .map(|e| 10f64.powi(e as i32))
            .collect()
    } else {
        (0..=5)
            .map(|i| ymin + (ymax - ymin) * f64::from(i) / 5.0)
            .collect()
    };
    y_grid(&mut svg, &yticks, &sy, l, pw);
    for i in 0..=5 {
        let x = xmin + xspan * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            t + ph + 14.0,
            nice_num(x)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        l + pw / 2.0,
        h - 6.0,
        esc(x_label),
        t + ph / 2.0,
        t + ph / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = String::new();
        for (j, &(x, y)) in p.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                sx(x),
                sy(y)
            );
        }
        let _ = write!(
            svg,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
        );
        let ly = t + 12.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 10.0,
            ly - 4.0,
            l + pw + 26.0,
            ly,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A bar chart of labelled groups; each group has one bar per series. `log_y` as above.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    log_y: bool,
) -> String {
    let (w, h) = (760.0, 320.0);
    let (l, r, t, b) = (70.0, 160.0, 30.0, 70.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11"><text x="{l}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let vals: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    if vals.is_empty() || groups.is_empty() {
        svg.push_str(r#"<text x="100" y="100">no data</text></svg>"#);
        return svg;
    }
    let ty = |v: f64| if log_y { v.max(1.0).log10() } else { v };
    let ymin = 0.0;
    let mut ymax = vals.iter().map(|&v| ty(v)).fold(0.0, f64::max);
    ymax = if log_y {
        ymax.ceil().max(1.0)
    } else {
        ymax * 1.1
    };
    if ymax <= ymin {
        ymax = 1.0;
    }
    let sy = |v: f64| t + ph - (ty(v) - ymin) / (ymax - ymin) * ph;
    let _ = write!(
        svg,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##
    );
    let yticks: Vec<f64> = if log_y {
        (0..=ymax as i64).map(|e| 10f64.powi(e as i32)).collect()
    } else {
        (0..=5).map(|i| ymax * f64::from(i) / 5.0).collect()
    };
    y_grid(&mut svg, &yticks, &sy, l, pw);
    let gw = pw / groups.len() as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = l + gw * gi as f64 + gw * 0.1;
        for (si, (_, v)) in series.iter().enumerate() {
            let val = v.get(gi).copied().unwrap_or(0.0);
            let y = sy(val);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                gx + bw * si as f64,
                bw * 0.95,
                (t + ph - y).max(0.0),
                COLORS[si % COLORS.len()],
                esc(&format!("{g}: {}", nice_num(val)))
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + gw * 0.4,
            t + ph + 14.0,
            esc(g)
        );
    }
    for (si, (name, _)) in series.iter().enumerate() {
        let ly = t + 12.0 + 16.0 * si as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 10.0,
            ly - 9.0,
            COLORS[si % COLORS.len()],
            l + pw + 24.0,
            ly,
            esc(name)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text></svg>"#,
        t + ph / 2.0,
        t + ph / 2.0,
        esc(y_label)
    );
    svg
}

/// The replay report as a self-contained HTML page.
pub fn replay_html(r: &ReplayReport) -> String {
    let mut h = String::new();
    let c = &r.config;
    let _ = write!(
        h,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>presence replay: {} users</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}pre{{background:#f4f4f4;padding:1em;overflow-x:auto;font-size:12px}}svg{{display:block;margin:1em 0}}</style></head><body><h1>Presence replay</h1>"#,
        thousands(c.users)
    );
    let _ = write!(h, "<pre>{}</pre>", esc(&replay_table(r)));
    let mins = |s: &Sample| s.t_s / 60.0;
    let thr: Vec<(String, Vec<(f64, f64)>)> = {
        let mut v = vec![
            (
                "transitions/s".to_string(),
                r.series
                    .iter()
                    .map(|s| (mins(s), s.transitions_per_s))
                    .collect(),
            ),
            (
                "diff entries/s".to_string(),
                r.series
                    .iter()
                    .map(|s| (mins(s), s.entries_per_s))
                    .collect(),
            ),
            (
                "frames/s".to_string(),
                r.series.iter().map(|s| (mins(s), s.frames_per_s)).collect(),
            ),
            (
                "engine events/s".to_string(),
                r.series.iter().map(|s| (mins(s), s.events_per_s)).collect(),
            ),
        ];
        if r.policies.is_some() {
            v.push((
                "(a) entries/s".to_string(),
                r.series
                    .iter()
                    .map(|s| (mins(s), s.policy_a_entries_per_s))
                    .collect(),
            ));
        }
        v
    };
    h.push_str(&line_chart(
        "Throughput over virtual time",
        "virtual minutes",
        "per virtual second (log)",
        &thr,
        true,
    ));
    let buckets = &r.tick_time.buckets;
    let groups: Vec<String> = buckets
        .iter()
        .map(|(lo, hi, _)| format!("{}–{}", nice_num(*lo), nice_num(*hi)))
        .collect();
    h.push_str(&bar_chart(
        "engine.tick wall time (µs buckets)",
        "ticks (log)",
        &groups,
        &[(
            "ticks".to_string(),
            buckets.iter().map(|b| b.2 as f64).collect(),
        )],
        true,
    ));
    h.push_str(&line_chart(
        "engine.tick wall time over virtual time",
        "virtual minutes",
        "µs",
        &[
            (
                "mean".to_string(),
                r.series.iter().map(|s| (mins(s), s.tick_mean_us)).collect(),
            ),
            (
                "max".to_string(),
                r.series.iter().map(|s| (mins(s), s.tick_max_us)).collect(),
            ),
        ],
        false,
    ));
    let mut pop = vec![
        (
            "present (not offline)".to_string(),
            r.series
                .iter()
                .map(|s| (mins(s), s.present as f64))
                .collect(),
        ),
        (
            "online".to_string(),
            r.series
                .iter()
                .map(|s| (mins(s), s.online as f64))
                .collect(),
        ),
    ];
    for (i, name) in r.idle_levels.iter().enumerate() {
        pop.push((
            name.clone(),
            r.series
                .iter()
                .map(|s| (mins(s), s.idle.get(i).copied().unwrap_or(0) as f64))
                .collect(),
        ));
    }
    pop.push((
        "live watchers".to_string(),
        r.series
            .iter()
            .map(|s| (mins(s), s.live_watchers as f64))
            .collect(),
    ));
    h.push_str(&line_chart(
        "Published presence populations",
        "virtual minutes",
        "users",
        &pop,
        false,
    ));
    h.push_str(&line_chart(
        "Memory over virtual time",
        "virtual minutes",
        "MiB / thousands",
        &[
            (
                "process RSS (MiB)".to_string(),
                r.series.iter().map(|s| (mins(s), mib(s.rss))).collect(),
            ),
            (
                "sessions (thousands)".to_string(),
                r.series
                    .iter()
                    .map(|s| (mins(s), s.sessions as f64 / 1000.0))
                    .collect(),
            ),
        ],
        false,
    ));
    if let Some(p) = &r.policies {
        let groups: Vec<String> = ["(a) last-active", "(b) unbatched", "(c) engine"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        h.push_str(&bar_chart(
            "Fan-out policies on the same activity",
            "per virtual second (log)",
            &groups,
            &[
                (
                    "entries/s".to_string(),
                    p.iter().map(|x| x.entries_per_s).collect(),
                ),
                (
                    "frames/s".to_string(),
                    p.iter().map(|x| x.frames_per_s).collect(),
                ),
            ],
            true,
        ));
        h.push_str("<ul>");
        for x in p {
            let _ = write!(
                h,
                "<li>{}: {} entries/s, {} frames/s</li>",
                esc(&x.name),
                nice_num(x.entries_per_s),
                nice_num(x.frames_per_s)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("<p>(a) counts one entry per online friend for every activity event and every online/offline change; (b) counts one entry per online friend for every published transition, each sent alone; (c) is what the engine emitted: per-tick batches, one frame per watcher per tick, changes undone within a tick dropped. Entries of (b) and (c) are close because a user rarely changes twice within one tick; the gain of (c) is in frames, and it grows with the tick.</p>");
    h.push_str("<p>Generated by <code>simulator replay</code>. Charts are inline SVG; the full data is in the JSON report.</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_escape_labels() {
        let s = line_chart(
            "a<b",
            "x",
            "y",
            &[("s&1".into(), vec![(0.0, 1.0), (1.0, 100.0)])],
            true,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("a&lt;b") && s.contains("s&amp;1"));
        let b = bar_chart("t", "y", &["g".into()], &[("v".into(), vec![5.0])], false);
        assert!(b.contains("<rect"));
        let empty = line_chart("t", "x", "y", &[], false);
        assert!(empty.contains("no data"));
    }
}
