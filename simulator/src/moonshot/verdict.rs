//! From one node measured at some size to the target size (70 M users on 4 nodes by
//! default), and the verdict: linear extrapolation of what was measured, plus the two costs a
//! simulated node does not have (its clients' sockets), taken from the dark-launch and
//! idle-session measurements in docs/benchmarks.md. Every figure says which it is.

use std::fmt::Write;

use serde::Serialize;

use super::MoonParams;
use super::load::LoadOut;
use super::run::RunOut;
use crate::util::{gib, thousands};

/// The machine and target the projection is for.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    pub target_users: u64,
    pub target_nodes: u64,
    pub machine_ram_gib: f64,
    pub machine_cores: f64,
    /// Share of RAM kept free (kernel socket buffers, page cache, fragmentation, spikes).
    pub headroom: f64,
    /// User-space memory per idle WebSocket session (docs/benchmarks.md: 3.4 KiB).
    pub session_kib: f64,
    /// Node CPU per WebSocket session-second under the model's traffic (docs/benchmarks.md,
    /// 19,900-session dark launch: 23 µs).
    pub session_cpu_us: f64,
}

impl Default for Projection {
    fn default() -> Self {
        Self {
            target_users: 70_000_000,
            target_nodes: 4,
            machine_ram_gib: 24.0,
            machine_cores: 2.0,
            headroom: 0.2,
            session_kib: 3.4,
            session_cpu_us: 23.0,
        }
    }
}

/// The projection to the target.
#[derive(Debug, Clone, Serialize)]
pub struct Projected {
    /// Target owned users per node over measured owned users.
    pub scale: f64,
    pub owned_users: u64,
    /// Measured: node memory after load (RSS delta), per owned user.
    pub node_bytes_per_owned_user: f64,
    /// Measured: engine session state at the end (peak hour), per owned user.
    pub session_state_bytes_per_owned_user: f64,
    pub node_memory_bytes: f64,
    pub sessions: f64,
    /// From the per-session figure, not simulated.
    pub socket_bytes: f64,
    pub memory_bytes: f64,
    pub memory_budget_bytes: f64,
    pub tick_p99_ms: f64,
    pub tick_period_ms: f64,
    /// Measured node-thread CPU scaled, in cores.
    pub engine_cores: f64,
    /// From the per-session figure, in cores.
    pub socket_cores: f64,
    pub peer_in_bytes_per_s: f64,
    pub peer_out_bytes_per_s: f64,
    /// Smallest node count whose per-node memory fits (0: none does), from the measured
    /// per-known-user and per-friend-entry bytes.
    pub machines_for_memory: u64,
    /// Memory every node needs whatever the node count: the users it knows.
    pub known_users_bytes: f64,
    pub machines_for_cpu: u64,
    pub memory_ok: bool,
    pub tick_ok: bool,
    pub cpu_ok: bool,
    pub verdict: String,
}

pub fn project(pr: &Projection, p: &MoonParams, load: &LoadOut, run: &RunOut) -> Projected {
    let owned = load.owned_users.max(1) as f64;
    let scale = pr.target_users as f64 / pr.target_nodes as f64 / owned;
    let node_mem = load.rss_loaded.saturating_sub(load.rss_before) as f64;
    let fp_load = load.footprint.state_bytes as f64;
    let session_state = (run.footprint_end.state_bytes as f64 - fp_load).max(0.0);
    let sessions = run.sessions_peak as f64 * scale;
    let socket_bytes = sessions * pr.session_kib * 1024.0;
    let memory = (node_mem + session_state) * scale + socket_bytes;
    let budget = pr.machine_ram_gib * (1.0 - pr.headroom) * (1u64 << 30) as f64;
    let tick_p99_ms = run.tick.p99_us / 1000.0 * scale;
    let engine_cores = run.node_cpu_per_sim_s * scale;
    let socket_cores = sessions * pr.session_cpu_us * 1e-6;
    let per_s = run.measured_seconds.max(1e-9);
    let memory_ok = memory <= budget;
    let tick_ok = tick_p99_ms <= p.run.tick_ms as f64;
    let cpu_ok = engine_cores + socket_cores <= pr.machine_cores * 0.8;
    let nodes = pr.target_nodes as f64;
    // How many nodes it would take. A node interns and keeps a record for every user it
    // knows (owned, or friend of an owned user: nearly everyone at 130 friends), so part of
    // its memory does not shrink as nodes are added; the rest (friend-list entries, sessions)
    // does. Both parts are measured here, with the allocator's overhead as measured.
    let fp = &load.footprint;
    let engine_bytes = (fp.graph_bytes + fp.state_bytes + fp.interner_bytes).max(1) as f64;
    let overhead = (node_mem / engine_bytes).max(1.0);
    let users = f64::from(load.users.max(1));
    let slot_bytes = 16.0 * users;
    let per_known = (fp.state_bytes + fp.interner_bytes) as f64 + slot_bytes;
    let per_known = per_known / users * overhead;
    let entries = 2.0 * load.edges_held.max(1) as f64;
    let per_entry = ((fp.graph_bytes as f64 - slot_bytes).max(0.0) / entries) * overhead;
    let n_measured = f64::from(p.nodes);
    let degree = entries / owned / (2.0 - 1.0 / n_measured);
    let target = pr.target_users as f64;
    let per_session = pr.session_kib * 1024.0 + session_state / run.sessions_peak.max(1) as f64;
    let sessions_total = sessions * nodes;
    let engine_total = engine_cores * nodes;
    let memory_at = |n: f64| {
        target * per_known
            + target / n * degree * (2.0 - 1.0 / n) * per_entry
            + sessions_total / n * per_session
    };
    let fits = |n: u64| memory_at(n as f64) <= budget;
    let machines_for_memory = (1..=4096u64).find(|&n| fits(n)).unwrap_or(0);
    let usable_cores = pr.machine_cores * 0.8;
    let machines_for_cpu =
        ((engine_total + sessions_total * pr.session_cpu_us * 1e-6) / usable_cores).ceil() as u64;
    let ok = memory_ok && tick_ok && cpu_ok;
    let verdict = format!(
        "{} {} machines of {} cores and {:.0} GiB {} {} M users at {:.0}% online: per node {:.1} GiB \
         of {:.1} GiB usable ({:.1} GiB engine and graph, {:.1} GiB for {} sockets), tick p99 \
         {:.0} ms of {} ms, {:.2} cores of {:.0} ({:.2} engine, {:.2} sockets); {} for memory \
         ({:.1} GiB a node for the users every node knows) and about {} machines for CPU",
        if ok { "YES:" } else { "NO:" },
        pr.target_nodes,
        pr.machine_cores,
        pr.machine_ram_gib,
        if ok { "carry" } else { "do not carry" },
        pr.target_users / 1_000_000,
        p.run.peak_online * 100.0,
        gib(memory as u64),
        gib(budget as u64),
        gib(((node_mem + session_state) * scale) as u64),
        gib(socket_bytes as u64),
        thousands(sessions as u64),
        tick_p99_ms,
        p.run.tick_ms,
        engine_cores + socket_cores,
        pr.machine_cores,
        engine_cores,
        socket_cores,
        if machines_for_memory == 0 {
            "no number of nodes fits".to_string()
        } else {
            format!("{machines_for_memory} machines")
        },
        gib((target * per_known) as u64),
        machines_for_cpu.max(1),
    );
    Projected {
        scale,
        owned_users: (pr.target_users as f64 / nodes) as u64,
        node_bytes_per_owned_user: node_mem / owned,
        session_state_bytes_per_owned_user: session_state / owned,
        node_memory_bytes: (node_mem + session_state) * scale,
        sessions,
        socket_bytes,
        memory_bytes: memory,
        memory_budget_bytes: budget,
        tick_p99_ms,
        tick_period_ms: p.run.tick_ms as f64,
        engine_cores,
        socket_cores,
        peer_in_bytes_per_s: run.incoming.bytes as f64 / per_s * scale,
        peer_out_bytes_per_s: run.outgoing.bytes as f64 / per_s * scale,
        machines_for_memory,
        known_users_bytes: target * per_known,
        machines_for_cpu,
        memory_ok,
        tick_ok,
        cpu_ok,
        verdict,
    }
}

fn per(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The human summary.
pub fn table(r: &super::MoonReport) -> String {
    let mut s = String::new();
    let p = &r.params;
    let l = &r.load;
    let _ = writeln!(
        s,
        "moonshot: node n{} of {}, {} users (mean {} friends, seed {}), {} of 1024 slots",
        p.node,
        p.nodes,
        thousands(u64::from(p.graph.users)),
        p.graph.avg_friends,
        p.graph.seed,
        r.slots_owned
    );
    let _ = writeln!(
        s,
        "measured  users owned {} ({:.2}%), remote users mirrored {}, interned unused {}",
        thousands(l.owned_users),
        100.0 * per(l.owned_users, u64::from(l.users)),
        thousands(l.mirrored_users),
        thousands(l.unused_users)
    );
    let _ = writeln!(
        s,
        "measured  edges held {} ({} between two owned users), {:.1} per owned user; \
         generated in {:.0} s, loaded in {:.0} s",
        thousands(l.edges_held),
        thousands(l.edges_both_owned),
        per(l.edges_held + l.edges_both_owned, l.owned_users),
        l.partition.seconds,
        l.seconds
    );
    let fp = &l.footprint;
    let _ = writeln!(
        s,
        "measured  RSS after load {:.2} GiB (+{:.2} GiB for the engine); engine footprint \
         {:.2} GiB (graph {:.2}, state {:.2}, interner {:.2})",
        gib(l.rss_loaded),
        gib(l.rss_loaded.saturating_sub(l.rss_before)),
        gib(fp.graph_bytes + fp.state_bytes + fp.interner_bytes),
        gib(fp.graph_bytes),
        gib(fp.state_bytes),
        gib(fp.interner_bytes)
    );
    if let Some(run) = &r.run {
        let secs = run.measured_seconds.max(1e-9);
        let _ = writeln!(
            s,
            "measured  {} s of virtual time after a {} s warm-up, tick {} ms, {:.0}% peak online; \
             {:.0} s wall",
            run.measured_seconds,
            p.run.warmup_ms / 1000,
            p.run.tick_ms,
            p.run.peak_online * 100.0,
            run.wall_seconds
        );
        let _ = writeln!(
            s,
            "measured  engine.tick p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; whole node loop p99 \
             {:.2} ms",
            run.tick.p50_us / 1000.0,
            run.tick.p99_us / 1000.0,
            run.tick.max_us / 1000.0,
            run.node_loop.p99_us / 1000.0
        );
        let _ = writeln!(
            s,
            "measured  sessions at the end {} (peak {}), engine {:.2} GiB then",
            thousands(run.sessions_end),
            thousands(run.sessions_peak),
            gib(run.footprint_end.graph_bytes
                + run.footprint_end.state_bytes
                + run.footprint_end.interner_bytes)
        );
        for (what, t) in [("in ", &run.incoming), ("out", &run.outgoing)] {
            let _ = writeln!(
                s,
                "measured  peer {what} {:.2} MB/s in {:.1} frames/s, {:.0} changes/s, {:.1} B per change",
                t.bytes as f64 / secs / 1e6,
                t.frames as f64 / secs,
                t.entries as f64 / secs,
                per(t.bytes, t.entries)
            );
        }
        let _ = writeln!(
            s,
            "measured  transitions/s: owned {:.0}, mirrored {:.0}; diff entries/s {:.0}; events/s {:.0}",
            run.owned_transitions as f64 / secs,
            run.mirrored_changes as f64 / secs,
            run.diff_entries as f64 / secs,
            run.events as f64 / secs
        );
        let _ = writeln!(
            s,
            "measured  CPU per simulated second: node thread {:.3} s, whole process {:.3} s \
             (it also plays the other nodes)",
            run.node_cpu_per_sim_s, run.process_cpu_per_sim_s
        );
        let _ = writeln!(
            s,
            "measured  RSS peak {:.2} GiB (with the simulated rest of the cluster)",
            gib(run.rss_peak)
        );
    }
    if let Some(pj) = &r.projection {
        let _ = writeln!(
            s,
            "projected ×{:.2} to {} owned users a node: engine {:.1} GiB, {} sockets {:.1} GiB \
             (3.4 KiB each, not simulated), tick p99 {:.0} ms, peer in {:.1} MB/s, out {:.1} MB/s",
            pj.scale,
            thousands(pj.owned_users),
            gib(pj.node_memory_bytes as u64),
            thousands(pj.sessions as u64),
            gib(pj.socket_bytes as u64),
            pj.tick_p99_ms,
            pj.peer_in_bytes_per_s / 1e6,
            pj.peer_out_bytes_per_s / 1e6
        );
        let _ = writeln!(s, "verdict   {}", pj.verdict);
    }
    s
}
