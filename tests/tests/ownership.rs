//! Slot ownership on a real etcd: nodes join under leases, one coordinator assigns every slot,
//! a node that dies loses its slots once its lease runs out (and only its slots move), a
//! draining node hands them over, and a node cut off from etcd fences itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_cluster::etcd::{Control, Options};
use presence_cluster::{Member, SLOTS, Slot, SlotMap};
use presence_tests::services::Etcd;

const TTL: Duration = Duration::from_secs(2);

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        ws: format!("127.0.0.1:1{id}"),
        quic: format!("127.0.0.1:2{id}"),
        lp: String::new(),
        admin: format!("127.0.0.1:3{id}"),
        peer: format!("127.0.0.1:4{id}"),
        peer_cert: String::new(),
        draining: false,
    }
}

async fn join(etcd: &Etcd, id: &str) -> Control {
    let opts = Options {
        endpoints: etcd.endpoints(),
        prefix: "/test/".into(),
        lease_ttl: TTL,
        resync: Duration::from_secs(30),
        member: member(id),
    };
    Control::join(opts, Duration::from_secs(10))
        .await
        .expect("join")
}

/// Waits (bounded) until `ok` holds for the map `c` sees; returns that map.
async fn until(
    c: &Control,
    what: &str,
    d: Duration,
    ok: impl Fn(&SlotMap) -> bool,
) -> Arc<SlotMap> {
    let mut rx = c.map();
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let m = rx.borrow_and_update().clone();
        if ok(&m) {
            return m;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("{what}: not within {d:?}; counts {:?}", m.counts());
        }
    }
}

fn owners(m: &SlotMap) -> BTreeMap<Slot, (String, i64)> {
    Slot::all()
        .filter_map(|s| m.owner(s).map(|o| (s, (o.node.to_string(), o.epoch))))
        .collect()
}

/// Every slot owned by a member, and the members are exactly `ids`.
fn settled(m: &SlotMap, ids: &[&str]) -> bool {
    let members: Vec<&str> = m.members().map(|m| m.id.as_str()).collect();
    members == ids
        && Slot::all().all(|s| m.owner(s).is_some_and(|o| ids.contains(&&*o.node)))
        && m.plan().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_every_slot_and_a_dead_one_loses_only_its_own() {
    let etcd = Etcd::start().expect("etcd");
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let c = join(&etcd, "c").await;
    let m = until(
        &a,
        "three members own every slot",
        Duration::from_secs(10),
        |m| settled(m, &["a", "b", "c"]),
    )
    .await;
    let counts = m.counts();
    for id in ["a", "b", "c"] {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!((250..=430).contains(&n), "{id} owns {n}: {counts:?}");
    }
    assert_eq!(counts.values().sum::<usize>(), usize::from(SLOTS));
    // Every node sees the same owners and epochs.
    for other in [&b, &c] {
        let seen = until(
            other,
            "the same map everywhere",
            Duration::from_secs(5),
            |o| owners(o) == owners(&m),
        )
        .await;
        assert_eq!(seen.epoch(), m.epoch());
    }
    let before = owners(&m);

    // c dies without a word (as kill -9: its tasks stop, its lease is left to expire).
    let died = Instant::now();
    drop(c);
    let after = until(&a, "c's slots move", Duration::from_secs(15), |m| {
        settled(m, &["a", "b"])
    })
    .await;
    let took = died.elapsed();
    assert!(
        took >= TTL / 2,
        "not before the lease could expire: {took:?}"
    );
    let after = owners(&after);
    let mut moved = 0;
    for (s, (node, epoch)) in &before {
        let (now, new_epoch) = &after[s];
        if node == "c" {
            moved += 1;
            assert!(now == "a" || now == "b");
            assert!(new_epoch > epoch, "a moved slot gets a new epoch");
        } else {
            assert_eq!(
                (now, new_epoch),
                (node, epoch),
                "slot {s} of a live node stays put"
            );
        }
    }
    assert!(moved > 0);
    eprintln!("a dead node's {moved} slots moved {took:?} after it died (lease {TTL:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_its_slots_over_and_leaves() {
    let etcd = Etcd::start().expect("etcd");
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    until(&a, "two members", Duration::from_secs(10), |m| {
        settled(m, &["a", "b"])
    })
    .await;
    b.drain();
    let m = until(&a, "b drained", Duration::from_secs(10), |m| {
        m.slots_of("b").count() == 0 && m.member("b").is_some_and(|r| r.draining)
    })
    .await;
    assert_eq!(m.counts().get("a"), Some(&usize::from(SLOTS)));
    let left = Instant::now();
    b.leave().await;
    until(&a, "b gone", Duration::from_secs(1), |m| {
        m.member("b").is_none()
    })
    .await;
    assert!(left.elapsed() < TTL, "a revoked lease goes at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_fences_itself_and_comes_back() {
    let etcd = Etcd::start().expect("etcd");
    let a = join(&etcd, "a").await;
    until(&a, "a owns everything", Duration::from_secs(10), |m| {
        settled(m, &["a"])
    })
    .await;
    let lease = a.lease();
    assert!(lease.borrow().holds(Instant::now()));
    etcd.pause().expect("SIGSTOP etcd");
    let cut = Instant::now();
    // No answer to any keep-alive: the fence falls within the TTL, on the node's own clock.
    let fell = loop {
        if !lease.borrow().holds(Instant::now()) {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < TTL + Duration::from_secs(1),
            "still holding"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(fell <= TTL, "fenced after {fell:?}");
    etcd.resume().expect("SIGCONT etcd");
    // Back: a holds a lease again (the old one or, if it expired meanwhile, a new one).
    let mut rx = a.lease();
    tokio::time::timeout(Duration::from_secs(15), async {
        while !rx.borrow_and_update().holds(Instant::now()) {
            let _ = rx.changed().await;
        }
    })
    .await
    .expect("a holds a lease again");
    until(
        &a,
        "a owns everything again",
        Duration::from_secs(15),
        |m| settled(m, &["a"]),
    )
    .await;
    eprintln!("fenced {fell:?} after etcd stopped answering (lease {TTL:?})");
}
