//! The graph generator's properties at a size where they are meaningful (50k users).

use presence_core::{Config, UserId};
use simulator::graphgen::{GraphParams, generate, stats};

#[test]
fn fifty_thousand_users_hit_the_mean_stay_under_the_cap_and_load_symmetric() {
    let params = GraphParams {
        users: 50_000,
        avg_friends: 130.0,
        max_friends: 1000,
        seed: 42,
        threads: 2,
    };
    let g = generate(&params, false).unwrap();
    let s = stats(&g, 100);
    assert!(
        (s.mean_degree - 130.0).abs() / 130.0 < 0.02,
        "mean {}",
        s.mean_degree
    );
    assert!(s.max_degree <= 1000, "max {}", s.max_degree);
    assert!(g.degrees.iter().all(|&d| d <= 1000));
    // Heavy tail: p99 well above the median, median below the mean.
    assert!(
        s.p50_degree < 130 && s.p99_degree > 3 * s.p50_degree,
        "{s:?}"
    );
    // Locality and clustering in the right region.
    assert!(s.share_edges_in_community > 0.3, "{s:?}");
    assert!(
        (0.08..0.25).contains(&s.clustering_median_users),
        "clustering {}",
        s.clustering_median_users
    );
    // Rows strictly increasing and above their owner: no self-loops, no duplicates.
    for a in 0..g.users() {
        let row = g.row(a);
        assert!(row.first().is_none_or(|&b| b > a));
        assert!(row.windows(2).all(|w| w[0] < w[1]));
    }
    // The degrees agree with the edges.
    let sum: u64 = g.degrees.iter().map(|&d| u64::from(d)).sum();
    assert_eq!(sum, 2 * g.edges());

    // presence-core accepts it, and the loaded graph is symmetric.
    let edges = g.edges();
    let bytes = g.into_snapshot().to_bytes().unwrap();
    let cfg = Config {
        max_friends: 1000,
        ..Config::default()
    };
    let engine = presence_core::snapshot::load(cfg, 0, &bytes, u64::MAX).unwrap();
    assert_eq!(engine.footprint().edges, edges);
    for u in (0..50_000u32).step_by(997) {
        for f in engine.friends(UserId(u)) {
            assert!(engine.are_friends(f, UserId(u)));
            assert_ne!(f, UserId(u));
        }
    }
    assert_eq!(engine.name(UserId(17)).as_deref(), Some("u17"));
}
