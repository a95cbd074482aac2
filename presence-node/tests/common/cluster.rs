//! What the cluster suites (`cluster.rs`, `partition.rs`) share: the nodes' fast settings,
//! the convergence bound, the graphs, how a client waits to see friends online, and the
//! cluster itself (etcd, PostgreSQL and the nodes, started here).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use presence_tests::services::{Etcd, Postgres};
use serde_json::Value;

use super::{Client, Node};

/// Like `FAST`, with a grace long enough for a client to find its new node, and the default
/// idle thresholds (a silent test client stays online).
pub const CLUSTER_FAST: &[&str] = &[
    "--tick",
    "50ms",
    "--grace",
    "2s",
    "--heartbeat-timeout",
    "3s",
];

/// Heartbeat timeout + lease TTL + 5 s: the bound for every friend's view to
/// converge after a node is gone.
pub const CONVERGE: Duration = Duration::from_secs(3 + 2 + 5);

/// Every pair of `n` users `m00`… is a friendship.
pub fn mesh(n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let users: Vec<String> = (0..n).map(|i| format!("m{i:02}")).collect();
    let mut pairs = Vec::new();
    for (i, a) in users.iter().enumerate() {
        for b in &users[i + 1..] {
            pairs.push((a.clone(), b.clone()));
        }
    }
    (users, pairs)
}

/// Waits until `c` (welcomed with `welcome`) has seen each of `users` online: in the
/// welcome, or in presence frames within 5 s. Returns those never seen.
pub async fn sees_online(c: &mut Client, welcome: &Value, users: &[&str]) -> Vec<String> {
    let online = |e: &Value| e["state"] == "online";
    let mut missing: Vec<String> = users
        .iter()
        .filter(|u| {
            !welcome["friends"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["user"] == **u))
                .is_some_and(online)
        })
        .map(|u| u.to_string())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Ok(Some(v)) if v["type"] == "presence" => {
                for e in v["changes"].as_array().into_iter().flatten() {
                    if online(e) {
                        missing.retain(|u| e["user"] != u.as_str());
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => break,
        }
    }
    missing
}

/// Whether node `id` sees exactly `ids` as members, every slot owned by one of them, each
/// owning some, itself serving (loaded) all of its own and linked to the others; `Err` with
/// what it sees otherwise.
pub async fn settled_on(id: &str, n: &Node, ids: &[&str]) -> Result<(), Value> {
    let (_, c) = n.admin("GET", "/v1/cluster", None).await;
    let (_, h) = super::http(n.ready.admin, "GET", "/healthz", None, None).await;
    let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
    let members: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    let total: u64 = nodes.iter().filter_map(|n| n["slots"].as_u64()).sum();
    let mine = nodes
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["slots"].as_u64());
    let every_one_owns = nodes.iter().all(|n| n["slots"].as_u64() > Some(0));
    if members != ids
        || total != 1024
        || !every_one_owns
        || mine != h["cluster"]["slots_served"].as_u64()
        || h["cluster"]["peers"].as_u64() != Some(ids.len() as u64 - 1)
    {
        return Err(serde_json::json!({"node": id, "cluster": c, "health": h}));
    }
    Ok(())
}

/// Sends `sig` (`-STOP`, `-CONT`, …) to the node's process.
pub fn signal(node: &Node, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &node.ready.pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig}");
}

/// The node that owns `user` now, by `/v1/route` on `asked`.
pub async fn route(asked: &Node, user: &str) -> String {
    let (status, r) = asked
        .admin("GET", &format!("/v1/route?user={user}"), None)
        .await;
    assert_eq!(status, 200, "{r}");
    r["node"].as_str().expect("node").to_owned()
}

pub const SECRET: &str = "cluster-test-token-secret";
pub const KEY: &str = "cluster-test-admin-key";
/// The tick of these nodes (`common::FAST`).
pub const TICK: Duration = Duration::from_millis(50);
pub const LEASE: &str = "2s";

pub struct Cluster {
    pub _etcd: Etcd,
    pub _pg: Postgres,
    pub url: String,
    pub etcd: Vec<String>,
    pub prefix: String,
    pub nodes: BTreeMap<String, Node>,
    pub dirs: Vec<tempfile::TempDir>,
    /// The nodes' settings beyond their cluster flags ([`CLUSTER_FAST`] unless started
    /// with others).
    pub settings: Vec<&'static str>,
}

/// One cluster at a time: three nodes, etcd and PostgreSQL already fill two cores.
/// (A tokio mutex: a test that failed holding it does not poison the others.)
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// etcd, PostgreSQL with `pairs` loaded as friendships, and nodes `ids`.
    pub async fn start(ids: &[&str], pairs: &[(String, String)]) -> Cluster {
        Self::start_with(ids, pairs, CLUSTER_FAST).await
    }

    /// As [`Cluster::start`], the nodes with `settings` instead of [`CLUSTER_FAST`].
    pub async fn start_with(
        ids: &[&str],
        pairs: &[(String, String)],
        settings: &[&'static str],
    ) -> Cluster {
        super::init();
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
            settings: settings.to_vec(),
        };
        for id in ids {
            c.add(id);
        }
        c.settled(Duration::from_secs(20)).await;
        c
    }

    /// Starts node `id` on a fresh data folder.
    pub fn add(&mut self, id: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin_key"), KEY).expect("key");
        let etcd = self.etcd.join(",");
        let mut args: Vec<&str> = self.settings.clone();
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

    pub fn node(&self, id: &str) -> &Node {
        &self.nodes[id]
    }

    /// Waits until every running node sees the same members, every slot owned, and each
    /// node serving (loaded) all of its slots.
    pub async fn settled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let want: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
        loop {
            let mut ok = true;
            let mut last = Value::Null;
            for (id, n) in &self.nodes {
                if let Err(seen) = settled_on(id, n, &want).await {
                    ok = false;
                    last = seen;
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
    pub async fn owner(&self, asked: &str, user: &str) -> String {
        route(self.node(asked), user).await
    }
}
