//! `simulator dark-launch` against the real `presence-node` binary: a few hundred WebSocket
//! (through a worker process) and QUIC clients with a 50 ms tick and second-long idle
//! thresholds, `--verify` at quiescent points; any view mismatch fails the test. Also the
//! tool's own bad inputs: each a clear message and exit 1, never a hang.

use std::process::Command;
use std::time::Duration;

mod common;

use common::{graph, node_bin, run, sim};

const FAST: &[&str] = &[
    "--speed",
    "20",
    "--tick",
    "50ms",
    "--idle-thresholds",
    "1s,2s,4s",
    "--grace",
    "250ms",
    "--heartbeat-timeout",
    "6s",
    "--client-heartbeat",
    "1s",
];

#[test]
fn small_dark_launch_verifies_every_view_over_both_transports() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let g = graph(tmp.path(), 300);
    let json = tmp.path().join("r.json");
    let html = tmp.path().join("r.html");
    let out = run(
        Command::new(sim())
            .args(["dark-launch", "--graph"])
            .arg(&g)
            .arg("--node-bin")
            .arg(node_bin())
            .args(FAST)
            .args([
                "--duration",
                "16s",
                "--peak-online",
                "0.6",
                "--quic-share",
                "0.5",
                "--workers",
                "1",
                "--source-ips",
                "2",
                "--verify",
                "--check-every",
                "2s",
                "--margin",
                "250ms",
                "--probe-rate",
                "20",
                "--chat-rate",
                "2",
                "--no-progress",
            ])
            .arg("--json")
            .arg(&json)
            .arg("--html")
            .arg(&html),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("report");
    let v = &r["verify"];
    for k in ["stale", "missing", "ghost", "duplicate"] {
        assert_eq!(v[k], 0, "{k}: {v}\n{stdout}");
    }
    assert!(v["checks"].as_u64().unwrap() >= 4, "{v}");
    assert!(v["entries_compared"].as_u64().unwrap() > 2000, "{v}");
    let s = &r["sessions"];
    assert!(s["peak_ws"].as_u64().unwrap() >= 50, "{s}");
    assert!(s["peak_quic"].as_u64().unwrap() >= 50, "{s}");
    assert_eq!(s["connect_failures"], 0, "{s}");
    assert_eq!(s["closed_by_node"], 0, "{s}");
    let p = &r["presence_latency"];
    assert!(p["receipts"].as_u64().unwrap() > 100, "{p}");
    assert!(p["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{p}");
    // Chat is measured end to end: every send acknowledged, entries received.
    let c = &r["chat"];
    assert!(c["disabled_message"].is_null(), "{c}");
    assert!(c["acked"].as_u64().unwrap() > 0, "{c}");
    assert!(c["inbox"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["errors"], 0, "{c}");
    // ... and every acknowledged message reached its recipient once (fjall, one node).
    let l = &c["ledger"];
    assert!(l["acknowledged"].as_u64().unwrap() > 0, "{l}");
    assert_eq!(l["delivered"], l["acknowledged"], "{l}");
    assert_eq!(
        (&l["lost"], &l["stored_twice"]),
        (&0.into(), &0.into()),
        "{l}"
    );
    assert!(r["server"]["measured"].as_bool().unwrap());
    assert!(
        stdout.contains("every compared view equals the truth"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.contains("<svg"));
}

fn fails_with(args: &[&str], extra: impl FnOnce(&mut Command), needle: &str) {
    let mut cmd = Command::new(sim());
    cmd.args(args);
    extra(&mut cmd);
    let out = run(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

#[test]
fn bad_input_is_a_clear_message_and_exit_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let g = graph(tmp.path(), 100);
    let gs = g.to_str().expect("utf8 path");
    // A node that is not there: ready.json pointing at a closed port.
    let dead = tmp.path().join("dead");
    std::fs::create_dir_all(dead.join("tls")).expect("mkdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    std::fs::write(
        dead.join("ready.json"),
        format!(r#"{{"ws":"127.0.0.1:{port}","quic":"127.0.0.1:{port}","admin":"127.0.0.1:{port}","pid":1}}"#),
    )
    .expect("write");
    std::fs::write(dead.join("admin_key"), "k").expect("write");
    std::fs::write(dead.join("tls/cert.pem"), "").expect("write");
    fails_with(
        &["dark-launch", "--graph", gs, "--duration", "5s"],
        |c| {
            c.arg("--node-dir").arg(&dead);
        },
        "unreachable",
    );
    // No node at all.
    fails_with(
        &[
            "dark-launch",
            "--graph",
            gs,
            "--node-dir",
            "/nonexistent-node-dir",
        ],
        |_| {},
        "ready.json",
    );
    // A real node, the wrong key.
    fails_with(
        &[
            "dark-launch",
            "--graph",
            gs,
            "--admin-key",
            "wrong",
            "--duration",
            "5s",
        ],
        |c| {
            c.arg("--node-bin").arg(node_bin());
        },
        "refused the admin key",
    );
    // More WebSocket clients than the processes' open files allow.
    fails_with(
        &[
            "dark-launch",
            "--graph",
            gs,
            "--quic-share",
            "0",
            "--fd-budget",
            "10",
        ],
        |c| {
            c.arg("--node-bin").arg(node_bin());
        },
        "--workers",
    );
    // Zero users.
    fails_with(
        &["dark-launch", "--graph", gs, "--users", "0"],
        |c| {
            c.arg("--node-bin").arg(node_bin());
        },
        "--users",
    );
    // A missing graph.
    fails_with(
        &[
            "dark-launch",
            "--graph",
            "/nonexistent.rkyv",
            "--node-dir",
            "/tmp",
        ],
        |_| {},
        "does not exist",
    );
}
