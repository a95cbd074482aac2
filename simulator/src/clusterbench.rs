//! `simulator cluster-bench`: the cluster benchmarks of one command. The same dark launch
//! (same graph, seed and offered load) against clusters of 1, 2, 3 … nodes, then one run
//! with a node killed; each run is a `dark-launch` child process writing its JSON report to
//! the output folder; a summary table (stdout and `summary.md`) draws the figures from them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::util::parse_duration_ms;

/// `simulator cluster-bench` flags.
#[derive(Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// Snapshot written by `simulator graph`.
    #[arg(long)]
    pub graph: PathBuf,
    /// The presence-node binary.
    #[arg(long)]
    pub node_bin: PathBuf,
    /// Folder for the reports, the runs' logs and `summary.md`.
    #[arg(long)]
    pub out: PathBuf,
    /// Cluster sizes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub nodes: Vec<usize>,
    /// Size of the cluster of the kill run (0: no kill run).
    #[arg(long, default_value_t = 3)]
    pub kill_nodes: usize,
    /// When the kill run kills its busiest node.
    #[arg(long, default_value = "15s", value_parser = parse_duration_ms)]
    pub kill_at: u64,
    /// Wall-clock length of each run.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub duration: u64,
    /// Wall-clock length of the kill run: long enough for checks after the convergence
    /// (heartbeat timeout 15 s + lease TTL 2 s + grace 5 s after the kill, then the views).
    #[arg(long, default_value = "90s", value_parser = parse_duration_ms)]
    pub kill_duration: u64,
    #[arg(long, default_value_t = 0.3)]
    pub peak_online: f64,
    /// Latency probes a second.
    #[arg(long, default_value_t = 100.0)]
    pub probe_rate: f64,
    #[arg(long, default_value = "200ms", value_parser = parse_duration_ms)]
    pub tick: u64,
    /// Most sessions open at once (one worker process holds up to ~19,700 WebSocket clients).
    #[arg(long, default_value_t = 15_000)]
    pub max_sessions: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Further `dark-launch` flags for every run (repeatable), e.g. `--dark-arg=--quic-share=0.5`.
    #[arg(long, allow_hyphen_values = true)]
    pub dark_arg: Vec<String>,
}

/// One dark-launch run of the bench.
struct Run {
    name: String,
    nodes: usize,
    kill: bool,
}

pub fn main(a: ClusterBenchArgs) -> Result<ExitCode> {
    if a.nodes.is_empty() || a.nodes.iter().any(|&n| !(1..=16).contains(&n)) {
        bail!("--nodes: sizes from 1 to 16");
    }
    if a.kill_nodes == 1 || a.kill_nodes > 16 {
        bail!("--kill-nodes: 0 (no kill run) or 2 to 16");
    }
    if !a.graph.is_file() {
        bail!("graph file {} does not exist", a.graph.display());
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut runs: Vec<Run> = a
        .nodes
        .iter()
        .map(|&n| Run {
            name: format!("n{n}"),
            nodes: n,
            kill: false,
        })
        .collect();
    if a.kill_nodes > 0 {
        runs.push(Run {
            name: format!("n{}-kill", a.kill_nodes),
            nodes: a.kill_nodes,
            kill: true,
        });
    }
    let exe = std::env::current_exe().context("locating the simulator binary")?;
    let mut reports = Vec::new();
    for r in &runs {
        let json = a.out.join(format!("{}.json", r.name));
        let log = a.out.join(format!("{}.log", r.name));
        let _ = std::fs::remove_file(&json);
        let t = Instant::now();
        eprintln!("cluster-bench: run {} ({} nodes) …", r.name, r.nodes);
        let code = run_one(&exe, &a, r, &json, &log)?;
        eprintln!(
            "cluster-bench: run {} exit {code} in {:.0} s (log {})",
            r.name,
            t.elapsed().as_secs_f64(),
            log.display()
        );
        // 3: the dark launch's verification found mismatches; the report says where.
        if code != 0 && code != 3 {
            bail!("run {} failed (exit {code}); see {}", r.name, log.display());
        }
        let v: Value = serde_json::from_slice(
            &std::fs::read(&json).with_context(|| format!("no report {}", json.display()))?,
        )
        .with_context(|| format!("reading {}", json.display()))?;
        reports.push((r.name.clone(), v));
    }
    let table = summary(&a, &reports);
    print!("{table}");
    let md = a.out.join("summary.md");
    std::fs::write(&md, &table).with_context(|| format!("cannot write {}", md.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one dark launch as a child process; returns its exit code.
fn run_one(exe: &Path, a: &ClusterBenchArgs, r: &Run, json: &Path, log: &Path) -> Result<i32> {
    let ms = |v: u64| format!("{v}ms");
    let mut args: Vec<String> = vec![
        "dark-launch".into(),
        "--no-progress".into(),
        "--graph".into(),
        a.graph.display().to_string(),
        "--node-bin".into(),
        a.node_bin.display().to_string(),
        "--cluster".into(),
        r.nodes.to_string(),
        "--duration".into(),
        ms(if r.kill { a.kill_duration } else { a.duration }),
        "--peak-online".into(),
        a.peak_online.to_string(),
        "--probe-rate".into(),
        a.probe_rate.to_string(),
        "--tick".into(),
        ms(a.tick),
        "--seed".into(),
        a.seed.to_string(),
        // WebSocket clients in one worker process: the cheapest load to generate, so the
        // nodes keep what they can of two cores.
        "--quic-share".into(),
        "0".into(),
        "--workers".into(),
        "1".into(),
        "--max-sessions".into(),
        a.max_sessions.to_string(),
        // Short enough that the kill run converges well within the run; the same for every
        // run, so the offered load is the same.
        "--lease-ttl".into(),
        "2s".into(),
        "--heartbeat-timeout".into(),
        "15s".into(),
        "--client-heartbeat".into(),
        "5s".into(),
        "--grace".into(),
        "5s".into(),
        // A node loads its slots' friend lists from PostgreSQL before it serves them.
        "--settle-timeout".into(),
        "600s".into(),
        "--verify".into(),
        "--check-every".into(),
        "10s".into(),
        // A friend on another node hears of a change two ticks later at most.
        "--margin".into(),
        ms(2 * a.tick + 100),
        "--json".into(),
        json.display().to_string(),
    ];
    if r.kill {
        args.extend(["--kill-node-at".into(), ms(a.kill_at)]);
    }
    args.extend(a.dark_arg.iter().cloned());
    let mut out =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // The run's exact command heads its log.
    std::io::Write::write_all(
        &mut out,
        format!("{} {}\n", exe.display(), args.join(" ")).as_bytes(),
    )
    .with_context(|| format!("writing {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    let status = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .context("starting a dark-launch run")?;
    Ok(status.code().unwrap_or(-1))
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn nodes(v: &Value) -> &[Value] {
    v.pointer("/cluster/nodes")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Mean and largest of one figure over a run's nodes.
fn per_node(v: &Value, path: &[&str]) -> (f64, f64) {
    let xs: Vec<f64> = nodes(v).iter().map(|n| f(n, path)).collect();
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    (
        xs.iter().sum::<f64>() / xs.len() as f64,
        xs.iter().copied().fold(f64::MIN, f64::max),
    )
}

fn mismatches(v: &Value) -> f64 {
    ["stale", "missing", "ghost", "duplicate"]
        .iter()
        .map(|k| f(v, &["verify", k]))
        .sum()
}

/// The summary: throughput and latency, memory per node, the kill.
fn summary(a: &ClusterBenchArgs, reports: &[(String, Value)]) -> String {
    let mut s = String::new();
    let first = reports.first().map(|r| &r.1);
    let _ = writeln!(
        s,
        "cluster bench: {} ({} users, {} edges), {} s a run ({} s the kill run), peak online {}, {} probes/s, tick {} ms, seed {}, {} cores\n",
        a.graph.display(),
        first.map_or(0.0, |v| f(v, &["config", "graph_users"])),
        first.map_or(0.0, |v| f(v, &["config", "graph_edges"])),
        a.duration / 1000,
        a.kill_duration / 1000,
        a.peak_online,
        a.probe_rate,
        a.tick,
        a.seed,
        crate::util::cores()
    );
    let _ = writeln!(
        s,
        "| run | peak sessions | deliveries/s | node CPU s per 1k deliveries (all nodes) | per node (mean) | load generator CPU s per 1k | same-node p50 / p99 ms | cross-node p50 / p99 ms | replication lag p99 | peer B per change, one link / all links | mismatches |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, v) in reports {
        let n = nodes(v).len().max(1) as f64;
        let t = |k: &str| f(v, &["cluster", "throughput", k]);
        let l = |k: &str| f(v, &["cluster", "replication_lag", k]);
        let lag = v
            .pointer("/cluster/replication_lag/lag_p99_ms")
            .and_then(Value::as_f64)
            .map_or("-".to_owned(), |ms| {
                format!("{ms:.1} ms ({:.2} ticks)", l("lag_p99_ticks"))
            });
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} / {:.1} | {} | {} | {:.1} / {:.1} | {:.0} |",
            f(v, &["sessions", "peak_open"]),
            t("deliveries_per_s"),
            t("node_cpu_s_per_1k_deliveries"),
            t("node_cpu_s_per_1k_deliveries") / n,
            t("driver_cpu_s_per_1k_deliveries"),
            l("same_node_p50_ms"),
            l("same_node_p99_ms"),
            if f(v, &["cluster", "cross_node_probe_receipts"]) > 0.0 {
                format!(
                    "{:.1} / {:.1}",
                    l("cross_node_p50_ms"),
                    l("cross_node_p99_ms")
                )
            } else {
                "-".into()
            },
            lag,
            f(v, &["cluster", "peer_bytes_per_change"]),
            f(v, &["cluster", "peer_bytes_per_transition"]),
            mismatches(v),
        );
    }
    let _ = writeln!(
        s,
        "\nMemory per node after the graph is loaded (every slot taken, before any session), and at the end (sessions included); mean / largest over the nodes:\n"
    );
    let _ = writeln!(
        s,
        "| run | users owned | users known | friend-list entries | graph MiB (estimated heap) | RSS after load MiB | RSS at end MiB |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mib = |x: f64| x / 1048576.0;
    for (name, v) in reports.iter().filter(|(n, _)| !n.ends_with("-kill")) {
        let g = |k: &str| per_node(v, &["graph_after_load", k]);
        let (ou, ou_max) = g("owned_users");
        let (uk, uk_max) = g("users_known");
        let (fe, fe_max) = g("friend_entries");
        let (gb, gb_max) = g("graph_bytes");
        let (r0, r0_max) = per_node(v, &["rss_start"]);
        let (r1, r1_max) = per_node(v, &["rss_end"]);
        let _ = writeln!(
            s,
            "| {name} | {ou:.0} / {ou_max:.0} | {uk:.0} / {uk_max:.0} | {fe:.0} / {fe_max:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
            mib(gb),
            mib(gb_max),
            mib(r0),
            mib(r0_max),
            mib(r1),
            mib(r1_max),
        );
    }
    for (name, v) in reports.iter().filter(|(n, _)| n.ends_with("-kill")) {
        let k = |key: &str| f(v, &["cluster", "kill", key]);
        let converged = v
            .pointer("/cluster/kill/converged_after_s")
            .and_then(Value::as_f64)
            .map_or("NEVER".to_owned(), |c| format!("{c:.1} s"));
        let _ = writeln!(
            s,
            "\nFailover ({name}): kill -9 of {} at {:.1} s: {} sessions lost, {} of {} reconnects welcomed (p50 {:.0} ms, max {:.0} ms after the kill); converged after {converged} (the truth decides after heartbeat timeout + lease TTL + grace = {:.1} s); mismatches before convergence {:.0} in {:.0} checks, after {:.0} in {:.0} checks",
            v.pointer("/cluster/kill/node")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            k("at_s"),
            k("sessions_lost"),
            k("reconnected"),
            k("reconnects"),
            k("reconnect_p50_ms"),
            k("reconnect_max_ms"),
            k("decided_after_s"),
            k("mismatches_before_convergence"),
            k("checks_before_convergence"),
            k("mismatches_after_convergence"),
            k("checks_after_convergence"),
        );
    }
    let _ = writeln!(
        s,
        "\nThe nodes, etcd, PostgreSQL and the load generator share this machine's cores: deliveries/s is what the nodes got of them here; CPU per 1,000 deliveries is the figure that carries to bigger machines. Replication lag = cross-node p99 − same-node p99 of scheduled probe → receipt, both on the client's clock."
    );
    s
}
