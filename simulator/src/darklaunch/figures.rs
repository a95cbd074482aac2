//! The cluster's benchmark figures in a dark-launch report: replication lag measured from the
//! client side (same-node against cross-node probe receipts, so no clocks need to agree), the
//! graph each node holds, and CPU per delivered presence change.

use std::fmt::Write as _;

use serde::Serialize;

use super::cluster::ClusterOut;
use super::out::Latency;

/// Replication lag: what a change costs to reach a watcher on another node beyond what it
/// costs on the changed user's own node. Both sides are measured the same way (scheduled
/// probe → receipt by the watcher's client, on one clock), so the driver's own lag, the tick
/// alignment and the client's read cancel out of the difference.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationLag {
    pub tick_ms: u64,
    pub same_node_p50_ms: f64,
    pub same_node_p99_ms: f64,
    pub cross_node_p50_ms: f64,
    pub cross_node_p99_ms: f64,
    /// Cross-node p99 − same-node p99 (absent without receipts on both sides).
    pub lag_p99_ms: Option<f64>,
    pub lag_p50_ms: Option<f64>,
    /// `lag_p99_ms` in ticks (the target is ≤ 1 on loopback).
    pub lag_p99_ticks: Option<f64>,
}

impl ReplicationLag {
    pub fn new(same: &Latency, cross: &Latency, tick_ms: u64) -> Self {
        let both = same.count > 0 && cross.count > 0;
        let lag99 = both.then_some(cross.p99_ms - same.p99_ms);
        ReplicationLag {
            tick_ms,
            same_node_p50_ms: same.p50_ms,
            same_node_p99_ms: same.p99_ms,
            cross_node_p50_ms: cross.p50_ms,
            cross_node_p99_ms: cross.p99_ms,
            lag_p99_ms: lag99,
            lag_p50_ms: both.then_some(cross.p50_ms - same.p50_ms),
            lag_p99_ticks: lag99.map(|l| l / tick_ms.max(1) as f64),
        }
    }
}

/// What a node's `/metrics` says of the graph it holds (its gauges, at one reading).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GraphHeld {
    /// `presence_owned_users`.
    pub owned_users: u64,
    /// `presence_users`: users the node knows (owned, and friends of owned users).
    pub users_known: u64,
    /// `presence_friend_edges`: friendships with an end owned here.
    pub friend_edges: u64,
    /// Friend-list entries: each edge sits in both ends' lists.
    pub friend_entries: u64,
    /// `presence_graph_bytes`: the friend lists' estimated heap bytes.
    pub graph_bytes: u64,
}

impl GraphHeld {
    pub fn from_metrics(text: &str) -> Self {
        let g = |name: &str| super::node::counter_value(text, name).unwrap_or(0.0) as u64;
        let friend_edges = g("presence_friend_edges");
        GraphHeld {
            owned_users: g("presence_owned_users"),
            users_known: g("presence_users"),
            friend_edges,
            friend_entries: 2 * friend_edges,
            graph_bytes: g("presence_graph_bytes"),
        }
    }
}

/// The same offered load through 1, 2, 3 … nodes: node CPU per delivered change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    /// Presence entries the clients received (diffs, not welcomes).
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// The cluster's changes a second (see `ClusterOut::cluster_transitions`).
    pub transitions_per_s: f64,
    /// Every node's CPU seconds, summed, per 1,000 deliveries.
    pub node_cpu_s_per_1k_deliveries: f64,
    /// The load generator's (this process and its workers) CPU per 1,000 deliveries.
    pub driver_cpu_s_per_1k_deliveries: f64,
    pub node_cpu_seconds: f64,
    pub driver_cpu_seconds: f64,
    pub note: String,
}

impl Throughput {
    pub fn new(c: &ClusterOut, deliveries: u64, active_s: f64, driver_cpu_s: f64) -> Self {
        let node_cpu: f64 = c.nodes.iter().map(|n| n.cpu_seconds).sum();
        let per_1k = |s: f64| s * 1000.0 / deliveries.max(1) as f64;
        Throughput {
            deliveries,
            deliveries_per_s: deliveries as f64 / active_s.max(1e-9),
            transitions_per_s: c.cluster_transitions as f64 / active_s.max(1e-9),
            node_cpu_s_per_1k_deliveries: per_1k(node_cpu),
            driver_cpu_s_per_1k_deliveries: per_1k(driver_cpu_s),
            node_cpu_seconds: node_cpu,
            driver_cpu_seconds: driver_cpu_s,
            note: "the nodes, etcd, PostgreSQL and the load generator share this machine's \
                   cores: deliveries/s is what is left for the nodes here; CPU per delivered \
                   change is the figure that carries to bigger machines"
                .into(),
        }
    }
}

/// The figures' lines of the text report.
pub fn table(c: &ClusterOut, s: &mut String) {
    let r = &c.replication_lag;
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let _ = writeln!(
        s,
        "  same-node probes: {} receipts, p50 {:.1} p99 {:.1} max {:.1} ms",
        c.same_node_probe_receipts,
        c.same_node_probe_latency.p50_ms,
        c.same_node_probe_latency.p99_ms,
        c.same_node_probe_latency.max_ms
    );
    let _ = writeln!(
        s,
        "  replication lag (cross-node − same-node): p50 {} ms, p99 {} ms = {} ticks of {} ms",
        opt(r.lag_p50_ms),
        opt(r.lag_p99_ms),
        r.lag_p99_ticks
            .map_or("-".to_owned(), |v| format!("{v:.2}")),
        r.tick_ms
    );
    for n in &c.nodes {
        let g = &n.graph_after_load;
        // A killed node's counters died with it: no per-entry figure.
        let per_entry = if n.killed || n.entries_sent == 0 {
            "-".to_owned()
        } else {
            format!("{:.3} s", n.cpu_seconds * 1000.0 / n.entries_sent as f64)
        };
        let _ = writeln!(
            s,
            "  {:<4} after load: RSS {:>6.1} MiB, owns {:>7} users, knows {:>7}, {:>9} friend-list entries, graph {:>7.1} MiB; CPU {per_entry} per 1k entries it handed out ({} entries)",
            n.id,
            n.rss_start as f64 / 1048576.0,
            g.owned_users,
            g.users_known,
            g.friend_entries,
            g.graph_bytes as f64 / 1048576.0,
            n.entries_sent
        );
    }
    let t = &c.throughput;
    let _ = writeln!(
        s,
        "  throughput: {} deliveries ({:.0}/s), {:.0} transitions/s; CPU per 1k deliveries: nodes {:.3} s, load generator {:.3} s",
        t.deliveries,
        t.deliveries_per_s,
        t.transitions_per_s,
        t.node_cpu_s_per_1k_deliveries,
        t.driver_cpu_s_per_1k_deliveries
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(count: u64, p50: f64, p99: f64) -> Latency {
        Latency {
            count,
            p50_ms: p50,
            p99_ms: p99,
            ..Latency::default()
        }
    }

    #[test]
    fn replication_lag_is_the_difference_of_the_two_sides() {
        let r = ReplicationLag::new(&lat(10, 100.0, 240.0), &lat(10, 180.0, 390.0), 200);
        assert_eq!(r.lag_p99_ms, Some(150.0));
        assert_eq!(r.lag_p50_ms, Some(80.0));
        assert_eq!(r.lag_p99_ticks, Some(0.75));
        // One node: no cross-node receipts, no lag.
        let one = ReplicationLag::new(&lat(10, 100.0, 240.0), &Latency::default(), 200);
        assert_eq!(one.lag_p99_ms, None);
        assert_eq!(one.lag_p99_ticks, None);
    }

    #[test]
    fn graph_gauges_are_read_from_the_prometheus_text() {
        let text = "# TYPE presence_users gauge\npresence_users 20000\n\
                    presence_owned_users 6712\npresence_friend_edges 555000\n\
                    presence_graph_bytes 4400000\npresence_users_other 1\n";
        let g = GraphHeld::from_metrics(text);
        assert_eq!(g.users_known, 20000);
        assert_eq!(g.owned_users, 6712);
        assert_eq!(g.friend_edges, 555_000);
        assert_eq!(g.friend_entries, 1_110_000);
        assert_eq!(g.graph_bytes, 4_400_000);
    }
}
