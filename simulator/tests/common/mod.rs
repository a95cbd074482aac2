//! What the dark-launch suites share: the simulator and node binaries, a command run under
//! a deadline, and a small graph.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sim() -> &'static str {
    env!("CARGO_BIN_EXE_simulator")
}

/// `target/<profile>/presence-node`, built with `cargo build -p presence-node` when missing
/// (a dev-dependency does not build another package's binaries).
pub fn node_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/darklaunch-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned();
    let bin = profile_dir.join("presence-node");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "presence-node", "--bin", "presence-node"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo build -p presence-node");
        assert!(st.success(), "building presence-node failed");
    }
    assert!(
        bin.is_file(),
        "no presence-node binary at {}",
        bin.display()
    );
    bin
}

/// Runs a command with a deadline (kills it and fails past it).
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn simulator");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "simulator did not finish within {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn graph(dir: &Path, users: u32) -> PathBuf {
    let g = dir.join("g.rkyv");
    let out = run(
        Command::new(sim())
            .args([
                "graph",
                "--users",
                &users.to_string(),
                "--avg-friends",
                "20",
                "--seed",
                "3",
                "--no-load",
                "--out",
            ])
            .arg(&g),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    g
}
