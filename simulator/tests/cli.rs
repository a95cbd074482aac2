//! The `simulator` binary end to end: determinism of `graph`, a small `replay --verify`, and
//! refusals of bad input (non-zero exit with a message, never a panic).

use std::path::Path;
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simulator"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run simulator")
}

fn graph(dir: &Path, name: &str, users: &str, seed: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let o = sim(&[
        "graph",
        "--users",
        users,
        "--avg-friends",
        "40",
        "--seed",
        seed,
        "--out",
        out.to_str().expect("utf-8 path"),
        "--no-load",
    ]);
    assert!(
        o.status.success(),
        "graph failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn graph_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = graph(dir.path(), "a.rkyv", "3000", "7");
    let b = graph(dir.path(), "b.rkyv", "3000", "7");
    let c = graph(dir.path(), "c.rkyv", "3000", "8");
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a.len() > 10_000);
    assert_eq!(a, b, "same flags must give the same bytes");
    assert_ne!(a, c, "another seed gives another graph");
}

#[test]
fn graph_prints_statistics_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.rkyv");
    let json = dir.path().join("g.json");
    let o = sim(&[
        "graph",
        "--users",
        "4000",
        "--avg-friends",
        "50",
        "--out",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for needle in ["degrees:", "clustering", "B/edge", "vs Facebook"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    assert_eq!(v["stats"]["users"], 4000);
    assert!(v["memory_graph_bytes_per_edge"].as_f64().unwrap() > 0.0);
    let mean = v["stats"]["mean_degree"].as_f64().unwrap();
    assert!((mean - 50.0).abs() < 1.0, "{mean}");
}

#[test]
fn small_replay_with_verify_passes_and_writes_reports() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.rkyv");
    let o = sim(&[
        "graph",
        "--users",
        "2000",
        "--avg-friends",
        "60",
        "--seed",
        "3",
        "--out",
        g.to_str().unwrap(),
        "--no-load",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let o = sim(&[
        "replay",
        "--graph",
        g.to_str().unwrap(),
        "--duration",
        "10m",
        "--peak-online",
        "0.4",
        "--verify",
        "--sample-watchers",
        "60",
        "--policies",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "replay failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("0 mismatches"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    assert_eq!(v["verify"]["mismatches"], 0);
    assert_eq!(v["verify"]["welcome_mismatches"], 0);
    assert_eq!(v["verify"]["ghosts"], 0);
    assert!(v["verify"]["checks"].as_u64().unwrap() > 1000);
    assert_eq!(v["totals"]["expired_unexpected"], 0);
    assert_eq!(v["totals"]["ticks"], 3000);
    assert!(v["totals"]["transitions"].as_u64().unwrap() > 100);
    assert!(v["whole"]["entries_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["tick_time"]["p99_us"].as_f64().unwrap() > 0.0);
    assert!(v["memory"]["peak_rss"].as_u64().unwrap() > 0);
    assert_eq!(v["policies"].as_array().unwrap().len(), 3);
    assert!(!v["series"].as_array().unwrap().is_empty());
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.matches("<svg").count() >= 4);
    assert!(!html.contains("<script"));
}

fn assert_refused(args: &[&str], needle: &str) {
    let o = sim(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: expected {needle:?} in:\n{stderr}"
    );
}

#[test]
fn bad_input_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.rkyv");
    let out = out.to_str().unwrap();
    assert_refused(&["graph", "--users", "0", "--out", out], "--users");
    assert_refused(
        &[
            "graph",
            "--users",
            "1000",
            "--avg-friends",
            "6000",
            "--out",
            out,
        ],
        "cap",
    );
    assert_refused(
        &[
            "graph",
            "--users",
            "100000",
            "--avg-friends",
            "300",
            "--max-friends",
            "200",
            "--out",
            out,
        ],
        "cap",
    );
    assert_refused(
        &[
            "graph",
            "--users",
            "1000",
            "--avg-friends",
            "-5",
            "--out",
            out,
        ],
        "--avg-friends",
    );
    assert_refused(
        &[
            "graph",
            "--users",
            "1000",
            "--out",
            "/nonexistent-dir/x.rkyv",
        ],
        "does not exist",
    );

    let missing = dir.path().join("missing.rkyv");
    let missing = missing.to_str().unwrap();
    assert_refused(&["replay", "--graph", missing], "does not exist");

    let corrupt = dir.path().join("corrupt.rkyv");
    std::fs::write(&corrupt, vec![0xA5u8; 4096]).unwrap();
    let corrupt = corrupt.to_str().unwrap();
    assert_refused(&["replay", "--graph", corrupt], "snapshot");
    let empty = dir.path().join("empty.rkyv");
    std::fs::write(&empty, b"").unwrap();
    assert_refused(&["replay", "--graph", empty.to_str().unwrap()], "snapshot");

    let g = graph(dir.path(), "ok.rkyv", "500", "1");
    let g = g.to_str().unwrap();
    // A truncated copy of a valid snapshot.
    let bytes = std::fs::read(g).unwrap();
    let cut = dir.path().join("cut.rkyv");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&["replay", "--graph", cut.to_str().unwrap()], "snapshot");

    assert_refused(&["replay", "--graph", g, "--duration", "0s"], "duration");
    assert_refused(&["replay", "--graph", g, "--duration", "-5m"], "negative");
    assert_refused(&["replay", "--graph", g, "--duration", "soon"], "duration");
    assert_refused(&["replay", "--graph", g, "--tick", "0ms"], "duration");
    assert_refused(
        &["replay", "--graph", g, "--duration", "1s", "--tick", "2s"],
        "longer",
    );
    assert_refused(
        &["replay", "--graph", g, "--peak-online", "0"],
        "peak-online",
    );
    assert_refused(
        &["replay", "--graph", g, "--peak-online", "1.5"],
        "peak-online",
    );
    assert_refused(
        &["replay", "--graph", g, "--peak-online", "-0.2"],
        "peak-online",
    );
    assert_refused(&["replay", "--graph", g, "--shards", "3"], "shards");
}

/// `write-floor` writes real frames to real loopback sockets, by both modes, and its reader
/// process accounts for every byte (the run fails otherwise); its figures are per frame.
#[test]
fn write_floor_delivers_every_frame_in_both_modes() {
    for mode in ["write", "task"] {
        let o = sim(&[
            "write-floor",
            "--sessions",
            "40",
            "--frame-rate",
            "400",
            "--tick",
            "50ms",
            "--duration",
            "500ms",
            "--mode",
            mode,
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{mode}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // 10 ticks of 20 frames, each 83 bytes.
        assert!(
            out.contains("200 frames of 83 bytes") && out.contains("all 16600 bytes read"),
            "{mode}: {out}"
        );
        assert!(out.contains("CPU per frame: writer"), "{mode}: {out}");
    }
}
