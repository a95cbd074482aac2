//! What the cluster suites (`cluster.rs`, `partition.rs`) share: the nodes' fast settings,
//! the convergence bound, the graphs, and how a client waits to see friends online.

use std::time::Duration;

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

/// The node that owns `user` now, by `/v1/route` on `asked`.
pub async fn route(asked: &Node, user: &str) -> String {
    let (status, r) = asked
        .admin("GET", &format!("/v1/route?user={user}"), None)
        .await;
    assert_eq!(status, 200, "{r}");
    r["node"].as_str().expect("node").to_owned()
}
