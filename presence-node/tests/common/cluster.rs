//! What the cluster suites (`cluster.rs`, `partition.rs`) share: the nodes' fast settings,
//! the convergence bound, the graphs, and how a client waits to see friends online.

use std::time::Duration;

use serde_json::Value;

use super::Client;

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
