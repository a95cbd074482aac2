//! `simulator dark-launch --cluster 3 --kill-node-at`: three real `presence-node` processes on
//! a private etcd and PostgreSQL, clients on every node following `moved`, one node killed
//! with -9 mid-run. Every compared view must equal the truth once the cluster converged, and
//! it must converge within heartbeat timeout + lease TTL + 5 s of the kill. Chat runs beside
//! it (50 messages a second, stored in PostgreSQL): every acknowledged message must reach its
//! recipient once, under its acknowledged id, live, on a resume or read back after the run.
//! Alone in its test binary: three nodes, etcd, PostgreSQL and the clients already fill two
//! cores.

use std::process::Command;
use std::time::Duration;

mod common;

use common::{graph, node_bin, run, sim};

/// Heartbeat timeout 3 s, lease TTL 2 s, grace 2 s, tick 50 ms (as the cluster suite).
const HEARTBEAT_S: f64 = 3.0;
const LEASE_S: f64 = 2.0;

#[test]
fn a_killed_cluster_node_converges_with_no_mismatch_after_and_loses_no_chat() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let g = graph(tmp.path(), 300);
    let json = tmp.path().join("r.json");
    let out = run(
        Command::new(sim())
            .args(["dark-launch", "--graph"])
            .arg(&g)
            .arg("--node-bin")
            .arg(node_bin())
            .args([
                "--cluster",
                "3",
                "--lease-ttl",
                "2s",
                "--kill-node-at",
                "8s",
                "--duration",
                "30s",
                "--speed",
                "20",
                "--tick",
                "50ms",
                "--idle-thresholds",
                "1s,2s,4s",
                "--grace",
                "2s",
                "--heartbeat-timeout",
                "3s",
                "--client-heartbeat",
                "1s",
                "--peak-online",
                "0.6",
                "--quic-share",
                "0.5",
                "--verify",
                "--check-every",
                "2s",
                // Two ticks: a friend on another node hears of a change through its owner's
                // tick, the peer link, then its own node's tick.
                "--margin",
                "400ms",
                "--probe-rate",
                "20",
                "--chat-rate",
                "50",
                "--seed",
                "7",
                "--no-progress",
            ])
            .arg("--json")
            .arg(&json),
        Duration::from_secs(150),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = match std::fs::read(&json) {
        Ok(b) => serde_json::from_slice(&b).expect("report"),
        Err(e) => panic!(
            "no report ({e}); exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status.code()
        ),
    };
    let c = &r["cluster"];
    let k = &c["kill"];
    eprintln!("{stdout}");
    assert!(k["sessions_lost"].as_u64().unwrap() > 10, "{k}");
    assert!(k["reconnected"].as_u64().unwrap() > 0, "{k}");
    assert_eq!(k["mismatches_after_convergence"], 0, "{k}\n{stdout}");
    assert!(k["checks_after_convergence"].as_u64().unwrap() >= 2, "{k}");
    let converged = k["converged_after_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("never converged: {k}\n{stdout}"));
    assert!(
        converged <= HEARTBEAT_S + LEASE_S + 5.0,
        "converged {converged} s after the kill: {k}"
    );
    // The users who stayed away went offline in their friends' views.
    assert!(k["abandoned_entries_offline"].as_u64().unwrap() > 0, "{k}");
    assert_eq!(k["abandoned_entries_online"], 0, "{k}");
    // Presence crossed nodes, and the peers carried it.
    assert!(c["cross_node_probe_receipts"].as_u64().unwrap() > 50, "{c}");
    assert!(c["peer_bytes_sent"].as_u64().unwrap() > 0, "{c}");
    assert!(c["moves_followed"].as_u64().unwrap() > 0, "{c}");
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().filter(|n| n["killed"] == true).count(), 1);
    assert!(
        nodes.iter().all(|n| n["cpu_seconds"].as_f64() > Some(0.0)),
        "{c}"
    );
    // Chat: acknowledged against delivered, after the settle.
    let l = &r["chat"]["ledger"];
    let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k}: {l}"));
    assert!(n("acknowledged") > 500, "{l}");
    assert_eq!(n("delivered"), n("acknowledged"), "{l}\n{stdout}");
    for k in [
        "lost",
        "stored_twice",
        "wrong_msg_id",
        "ack_conflicts",
        "unanswered",
    ] {
        assert_eq!(n(k), 0, "{k}: {l}\n{stdout}");
    }
    assert_eq!(n("reads_failed"), 0, "{l}");
    assert!(
        n("delivered_live") > 0 && n("delivered_on_resume") > 0,
        "{l}"
    );
    // Entries for users served elsewhere crossed the peer links; commits went to PostgreSQL.
    let ch = &c["chat"];
    assert!(ch["peer_chat_frames"].as_u64().unwrap() > 0, "{ch}");
    assert!(ch["commits"].as_u64().unwrap() > 0, "{ch}");
    // Mismatches while the cluster converges (counted in the report) make the exit status 3;
    // anything else is a failure.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
}
