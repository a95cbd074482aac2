//! `simulator moonshot` at a small size: the partitioned generator has graphgen's shape and
//! agrees with itself across nodes, the loaded node holds exactly what it generated, and the
//! replay's peer frames are real, non-empty and decode back to what was counted.

use std::collections::BTreeSet;

use presence_core::{Config, UserId};
use simulator::graphgen::{self, GraphParams};
use simulator::moonshot::own::Ownership;
use simulator::moonshot::{load, partition, run};
use simulator::replay::EPOCH_MS;

fn params(users: u32) -> GraphParams {
    GraphParams {
        users,
        avg_friends: 130.0,
        max_friends: 5000,
        seed: 3,
        threads: 2,
    }
}

/// Node `k`'s edges, sorted and deduplicated.
fn node_edges(p: &GraphParams, own: &Ownership) -> Vec<u64> {
    let mut all = Vec::new();
    partition::generate(p, own, |chunk| {
        all.extend_from_slice(&chunk);
        Ok(())
    })
    .expect("partition");
    all.sort_unstable();
    all.dedup();
    all
}

fn degrees(users: u32, edges: &[u64]) -> Vec<u32> {
    let mut d = vec![0u32; users as usize];
    for &e in edges {
        d[(e >> 32) as usize] += 1;
        d[e as u32 as usize] += 1;
    }
    d
}

fn pct(sorted: &[u32], q: f64) -> f64 {
    f64::from(sorted[((q * sorted.len() as f64) as usize).min(sorted.len() - 1)])
}

#[test]
fn partitions_have_graphgens_shape_and_agree_across_nodes() {
    let p = params(200_000);
    let g = graphgen::generate(&p, false).expect("graphgen");
    let owns: Vec<Ownership> = (0..4)
        .map(|k| Ownership::new(p.users, 4, k).expect("ownership"))
        .collect();
    let parts: Vec<Vec<u64>> = owns.iter().map(|o| node_edges(&p, o)).collect();

    // Every edge a node holds has an end it owns, and nodes k and j hold the same k–j edges.
    for (k, edges) in parts.iter().enumerate() {
        let o = &owns[k];
        assert!(
            edges
                .iter()
                .all(|&e| o.owned((e >> 32) as u32) || o.owned(e as u32))
        );
        for (j, other) in parts.iter().enumerate().filter(|&(j, _)| j != k) {
            let between = |list: &[u64]| -> Vec<u64> {
                list.iter()
                    .copied()
                    .filter(|&e| {
                        let (a, b) = (o.node_of((e >> 32) as u32), o.node_of(e as u32));
                        (a, b) == (k as u8, j as u8) || (a, b) == (j as u8, k as u8)
                    })
                    .collect()
            };
            let (mine, theirs) = (between(edges), between(other));
            assert!(!mine.is_empty());
            assert_eq!(
                mine, theirs,
                "nodes {k} and {j} disagree on their shared edges"
            );
        }
    }

    // The union is graphgen's graph: every edge graphgen drew before its top-up is there.
    let mut union: Vec<u64> = parts.concat();
    union.sort_unstable();
    union.dedup();
    let union_set: BTreeSet<u64> = union.iter().copied().collect();
    let mut common = 0u64;
    for a in 0..g.users() {
        for &b in g.row(a) {
            common += u64::from(union_set.contains(&((u64::from(a) << 32) | u64::from(b))));
        }
    }
    assert!(
        common >= g.edges() - g.topup_edges,
        "{common} of graphgen's {} edges ({} top-up)",
        g.edges(),
        g.topup_edges
    );

    // Same degree distribution within stated tolerances.
    let mut dp = degrees(p.users, &union);
    let mut dg = g.degrees.clone();
    dp.sort_unstable();
    dg.sort_unstable();
    let mean = |d: &[u32]| d.iter().map(|&x| f64::from(x)).sum::<f64>() / d.len() as f64;
    let (mp, mg) = (mean(&dp), mean(&dg));
    assert!((mp - mg).abs() / mg < 0.01, "mean {mp} vs graphgen {mg}");
    for q in [0.1, 0.5, 0.9, 0.99] {
        let (a, b) = (pct(&dp, q), pct(&dg, q));
        assert!(
            (a - b).abs() / b < 0.05,
            "p{} {a} vs graphgen {b}",
            q * 100.0
        );
    }
    let in_comm = |edges: &mut dyn Iterator<Item = (u32, u32)>| -> f64 {
        let (mut n, mut c) = (0u64, 0u64);
        for (a, b) in edges {
            n += 1;
            c += u64::from(g.layout.community_of(a) == g.layout.community_of(b));
        }
        c as f64 / n as f64
    };
    let sp = in_comm(&mut union.iter().map(|&e| ((e >> 32) as u32, e as u32)));
    let sg = in_comm(&mut (0..g.users()).flat_map(|a| g.row(a).iter().map(move |&b| (a, b))));
    assert!((sp - sg).abs() < 0.02, "in-community share {sp} vs {sg}");
}

#[test]
fn one_node_of_four_end_to_end() {
    let p = params(40_000);
    let own = Ownership::new(p.users, 4, 1).expect("ownership");
    let share = own.owned_users as f64 / f64::from(p.users);
    let slot_share = own.slots_of(1) as f64 / 1024.0;
    assert!((share - 0.25).abs() < 0.06, "owned share {share}");
    assert!(
        (share - slot_share).abs() < 0.02,
        "{share} vs {slot_share} of the slots"
    );

    let base = EPOCH_MS + 19 * 3_600_000;
    let cfg = load::node_config(2, 16, p.max_friends).expect("config");
    let mut generated = Vec::new();
    let node = load::load(&p, &own, cfg, base, |c| generated.extend_from_slice(c)).expect("load");
    generated.sort_unstable();
    generated.dedup();
    let deg = degrees(p.users, &generated);
    let e = &node.engine;
    for u in (0..p.users).filter(|&u| own.owned(u)) {
        assert_eq!(
            e.friends(UserId(u)).len() as u32,
            deg[u as usize],
            "user {u}"
        );
    }
    assert_eq!(node.out.edges_held, generated.len() as u64);
    assert!(node.out.rss_loaded > 0 && node.out.footprint.graph_bytes > 0);
    let needed = (0..p.users).filter(|&u| load::bit(&node.needed, u)).count() as u64;
    assert_eq!(needed, node.out.mirrored_users);

    let rp = run::RunParams {
        warmup_ms: 60_000,
        duration_ms: 60_000,
        tick_ms: 200,
        peak_online: 0.3,
        start_hour: 19.0,
        peak_hour: 20.0,
        seed: 3,
        verify: true,
    };
    let remote = Config {
        threads: 1,
        ..Config::default()
    };
    let r = run::run(&rp, e, &own, &node.needed, base, remote, false).expect("run");
    assert!(r.incoming.bytes > 0 && r.outgoing.bytes > 0);
    assert!(r.incoming.frames > 0 && r.outgoing.frames > 0);
    assert!(r.frames_verified >= r.outgoing.frames);
    assert_eq!(r.incoming.entries, r.mirrored_changes);
    for t in [&r.incoming, &r.outgoing] {
        let per = t.bytes as f64 / t.entries as f64;
        // 32 B an entry plus the frame's and slots' headers.
        assert!((32.0..400.0).contains(&per), "{per} B per change");
    }
    // At most one frame a tick to each of the 3 peers, and from each.
    let ticks = rp.duration_ms / rp.tick_ms;
    assert!(r.outgoing.frames <= 3 * ticks && r.incoming.frames <= 3 * ticks);
    assert!(r.owned_transitions > 0 && r.sessions_peak > 0);
    assert_eq!(r.refused_node.connect, 0);
    assert!(r.tick.count == ticks && r.tick.p99_us > 0.0);
}

#[test]
fn two_nodes_hold_the_same_edges_between_them() {
    let p = params(30_000);
    let base = EPOCH_MS;
    let load_node = |k: u8| {
        let own = Ownership::new(p.users, 4, k).expect("ownership");
        let cfg = load::node_config(2, 16, p.max_friends).expect("config");
        let node = load::load(&p, &own, cfg, base, |_| {}).expect("load");
        (own, node)
    };
    let (o0, n0) = load_node(0);
    let (o2, n2) = load_node(2);
    let mut shared = 0;
    for u in (0..p.users).filter(|&u| o0.owned(u)) {
        // u is remote on node 2: its set there holds exactly its friends owned by node 2.
        let on_0: Vec<UserId> = n0
            .engine
            .friends(UserId(u))
            .into_iter()
            .filter(|f| o2.owned(f.0))
            .collect();
        assert_eq!(on_0, n2.engine.friends(UserId(u)), "user {u}");
        shared += on_0.len();
    }
    assert!(shared > 0);
}
