//! Three real `presence-node` processes in a cluster, on a private etcd and a private
//! PostgreSQL (started here, in temporary folders, on loopback): slots shared, presence
//! crossing nodes over the peer links, `moved` and `/v1/route`, a killed node's slots and
//! users taken over, a graceful stop handing its slots over.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Client, Node, Via};
use presence_tests::services::{Etcd, Postgres};
use serde_json::Value;

const SECRET: &str = "cluster-test-token-secret";
const KEY: &str = "cluster-test-admin-key";
/// The tick of these nodes (`common::FAST`).
const TICK: Duration = Duration::from_millis(50);
const LEASE: &str = "2s";

struct Cluster {
    _etcd: Etcd,
    _pg: Postgres,
    url: String,
    etcd: Vec<String>,
    prefix: String,
    nodes: BTreeMap<String, Node>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// etcd, PostgreSQL with `pairs` loaded as friendships, and nodes `ids`.
    async fn start(ids: &[&str], pairs: &[(String, String)]) -> Cluster {
        common::init();
        let etcd = Etcd::start().expect("etcd");
        let pg = Postgres::start().expect("postgres");
        let url = pg.create_database("cluster").expect("database");
        let store = presence_pg::Store::connect(&url).await.expect("store");
        store
            .bulk_load(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())))
            .await
            .expect("bulk load");
        let mut c = Cluster {
            etcd: etcd.endpoints(),
            _etcd: etcd,
            _pg: pg,
            url,
            prefix: format!("/test-{}/", std::process::id()),
            nodes: BTreeMap::new(),
            dirs: Vec::new(),
        };
        for id in ids {
            c.add(id);
        }
        c.settled(Duration::from_secs(20)).await;
        c
    }

    /// Starts node `id` on a fresh data folder.
    fn add(&mut self, id: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin_key"), KEY).expect("key");
        let etcd = self.etcd.join(",");
        let mut args: Vec<&str> = common::FAST.to_vec();
        args.extend([
            "--node-id",
            id,
            "--cluster-etcd",
            &etcd,
            "--cluster-prefix",
            &self.prefix,
            "--store",
            &self.url,
            "--secret",
            SECRET,
            "--admin-key",
            KEY,
            "--lease-ttl",
            LEASE,
            "--peer-listen",
            "127.0.0.1:0",
        ]);
        let node = Node::start_in(dir.path(), &args);
        self.nodes.insert(id.to_owned(), node);
        self.dirs.push(dir);
    }

    fn node(&self, id: &str) -> &Node {
        &self.nodes[id]
    }

    /// Waits until every running node sees the same members, every slot owned, and each
    /// node serving (loaded) all of its slots.
    async fn settled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let want: Vec<&String> = self.nodes.keys().collect();
        loop {
            let mut ok = true;
            let mut last = Value::Null;
            for (id, n) in &self.nodes {
                let (_, c) = n.admin("GET", "/v1/cluster", None).await;
                let (_, h) = common::http(n.ready.admin, "GET", "/healthz", None, None).await;
                let ids: Vec<&str> = c["nodes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n["id"].as_str()).collect())
                    .unwrap_or_default();
                let total: u64 = c["nodes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n["slots"].as_u64()).sum())
                    .unwrap_or(0);
                let mine = c["nodes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|n| n["id"] == id.as_str()))
                    .and_then(|n| n["slots"].as_u64());
                let served = h["cluster"]["slots_served"].as_u64();
                let peers = h["cluster"]["peers"].as_u64();
                if ids != want
                    || total != 1024
                    || mine != served
                    || peers != Some(want.len() as u64 - 1)
                {
                    ok = false;
                    last = serde_json::json!({"node": id, "cluster": c, "health": h});
                }
            }
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not settled: {last}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node that owns `user` now, by `/v1/route` on `asked`.
    async fn owner(&self, asked: &str, user: &str) -> String {
        let (status, r) = self
            .node(asked)
            .admin("GET", &format!("/v1/route?user={user}"), None)
            .await;
        assert_eq!(status, 200, "{r}");
        r["node"].as_str().expect("node").to_owned()
    }
}

/// Users named so that each of the three nodes owns some: `u00`… and the hub `hub`.
fn star(n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let users: Vec<String> = (0..n).map(|i| format!("u{i:02}")).collect();
    let pairs = users.iter().map(|u| ("hub".to_owned(), u.clone())).collect();
    (users, pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_hellos_are_routed() {
    let (users, pairs) = star(30);
    let c = Cluster::start(&["n1", "n2", "n3"], &pairs).await;

    // Every node answers the same route; the slots are spread over the three.
    let hub_node = c.owner("n1", "hub").await;
    for id in ["n2", "n3"] {
        assert_eq!(c.owner(id, "hub").await, hub_node);
    }
    let (_, cl) = c.node("n2").admin("GET", "/v1/cluster", None).await;
    for n in cl["nodes"].as_array().expect("nodes") {
        assert!(n["slots"].as_u64().unwrap_or(0) > 200, "{cl}");
    }

    // A hello on a node that does not own the user is answered `moved`, with the owner's
    // addresses.
    let other = c.nodes.keys().find(|id| **id != hub_node).expect("other");
    let token = c.node(other).token("hub").await;
    let mut wrong = Client::open(c.node(other), Via::Ws).await;
    wrong
        .send(serde_json::json!({"type": "hello", "token": token, "device": "d"}))
        .await;
    let e = wrong.recv().await.expect("an answer");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "moved", "{e}");
    assert_eq!(
        e["ws"].as_str(),
        Some(c.node(&hub_node).ready.ws.to_string().as_str()),
        "{e}"
    );

    // The hub on its node; one friend on each other node.
    let (mut hub, w) = Client::hello(c.node(&hub_node), Via::Ws, "hub", "d").await;
    assert_eq!(
        w["friends"].as_array().map(Vec::len),
        Some(users.len()),
        "the welcome lists every friend, wherever they live: {w}"
    );
    let mut remote = Vec::new();
    for u in &users {
        let owner = c.owner("n1", u).await;
        if owner != hub_node && !remote.iter().any(|(_, o): &(String, String)| *o == owner) {
            remote.push((u.clone(), owner));
        }
    }
    assert_eq!(remote.len(), 2, "friends on both other nodes: {remote:?}");
    let mut lags = Vec::new();
    let mut friends = Vec::new();
    for (u, owner) in &remote {
        let (f, w) = Client::hello(c.node(owner), Via::Quic, u, "d").await;
        let online_at = Instant::now();
        // The friend's node mirrors the hub: its welcome shows the hub online.
        let hub_entry = w["friends"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["user"] == "hub"))
            .cloned()
            .unwrap_or(Value::Null);
        // The hub, on another node, sees the friend come online.
        hub.expect_presence(u, Duration::from_secs(5), |e| e["state"] == "online")
            .await;
        lags.push(online_at.elapsed());
        friends.push((f, hub_entry));
    }
    // The friends' nodes mirror the hub: online in the welcome, or within two ticks after
    // (the hub came online moments before).
    for (f, hub_entry) in &mut friends {
        if hub_entry["state"] != "online" {
            f.expect_presence("hub", Duration::from_secs(2), |e| e["state"] == "online")
                .await;
        }
    }
    // The hub changes its status: both remote friends see it.
    hub.send(serde_json::json!({"type": "status", "status": "dnd", "text": "focus"}))
        .await;
    let changed_at = Instant::now();
    for (f, _) in &mut friends {
        let e = f
            .expect_presence("hub", Duration::from_secs(5), |e| e["status"] == "dnd")
            .await;
        assert_eq!(e["text"], "focus", "{e}");
        lags.push(changed_at.elapsed());
    }
    eprintln!("cross-node changes seen after {lags:?} (tick {TICK:?})");
    for lag in &lags {
        // Two ticks, and the scheduling of three nodes and this test on two cores.
        assert!(*lag < TICK * 2 + Duration::from_millis(400), "{lags:?}");
    }

    // The hub goes away: both remote friends see it offline (after the grace).
    hub.close().await;
    for (f, _) in &mut friends {
        f.expect_presence("hub", Duration::from_secs(5), |e| e["state"] == "offline")
            .await;
    }
}
