//! `simulator`: graph generation and activity replay.
//!
//! ```text
//! simulator graph  --users 1000000 --avg-friends 130 --seed 1 --out graph.rkyv
//! simulator replay --graph graph.rkyv --duration 1h --peak-online 0.3 --tick 200ms \
//!                  --verify --policies --json report.json --html report.html
//! simulator moonshot --users 70000000 --nodes 4 --node 0 --duration 10m --json moon.json
//! simulator cluster-bench --graph g20k.rkyv --node-bin target/release/presence-node --out bench/
//! ```
//!
//! Exit status: 0 on success, 1 on bad input or failure, 2 on a usage error (clap), 3 when
//! `--verify` found a watcher whose view differed from the truth.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use presence_core::Config;
use presence_core::snapshot;
use simulator::graphgen::{self, GraphParams};
use simulator::replay::{self, ReplayParams};
use simulator::report::{self, GraphReport};
use simulator::util::{self, parse_duration_ms};

#[derive(Parser, Debug)]
#[command(
    name = "simulator",
    version,
    about = "Synthetic friend graphs and activity replay against presence-core"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate a friend graph and write it as a presence-core snapshot.
    Graph(GraphArgs),
    /// Replay activity against the engine at accelerated virtual time.
    Replay(ReplayArgs),
    /// Run one node of an N-node cluster on its share of a graph too big for one machine.
    Moonshot(MoonArgs),
    /// Drive a real running node with many WebSocket and QUIC clients, verify and measure.
    DarkLaunch(Box<simulator::darklaunch::DarkLaunchArgs>),
    /// Run the dark launch on clusters of 1, 2, 3 … nodes and with a node killed; summarize.
    ClusterBench(simulator::clusterbench::ClusterBenchArgs),
    /// Internal: a client host process of `dark-launch` (JSON lines on stdin/stdout).
    #[command(hide = true)]
    DarkLaunchWorker,
    /// The floor under a presence frame's cost here: CPU per small frame written to many
    /// loopback TCP sockets, by one thread or by a woken task a socket (a baseline for the node).
    WriteFloor(simulator::floor::FloorArgs),
    /// Internal: the reader process of `write-floor`.
    #[command(hide = true)]
    WriteFloorReader {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        sessions: u32,
    },
}

#[derive(Args, Debug)]
struct GraphArgs {
    /// Number of users.
    #[arg(long)]
    users: u32,
    /// Mean number of friends.
    #[arg(long, default_value_t = 130.0, allow_negative_numbers = true)]
    avg_friends: f64,
    /// Most friends one user may have.
    #[arg(long, default_value_t = 5000)]
    max_friends: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Snapshot file to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write the statistics as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip loading the snapshot into an engine (no in-memory figures).
    #[arg(long)]
    no_load: bool,
    /// Users sampled for the clustering coefficient.
    #[arg(long, default_value_t = 300)]
    clustering_sample: usize,
    /// Worker threads (the output does not depend on it).
    #[arg(long, default_value_t = simulator::util::cores())]
    threads: usize,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Snapshot written by `simulator graph`.
    #[arg(long)]
    graph: PathBuf,
    /// Virtual time to replay (200ms, 30s, 10m, 1h, 1h30m).
    #[arg(long, default_value = "1h", value_parser = parse_duration_ms, allow_hyphen_values = true)]
    duration: u64,
    /// Share of users online at the daily peak, in (0, 1].
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    peak_online: f64,
    /// Engine tick (virtual).
    #[arg(long, default_value = "200ms", value_parser = parse_duration_ms, allow_hyphen_values = true)]
    tick: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep sampled watchers' views from welcomes and diffs, and check them against the
    /// truth at every tick. Exit 3 on any mismatch.
    #[arg(long)]
    verify: bool,
    /// Number of watchers sampled by --verify.
    #[arg(long, default_value_t = 100)]
    sample_watchers: usize,
    /// Compare the engine with two other fan-out policies on the same activity.
    #[arg(long)]
    policies: bool,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with charts.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Hour of the day at the start (default: the run is centred on the peak hour).
    #[arg(long)]
    start_hour: Option<f64>,
    /// Hour of the daily peak.
    #[arg(long, default_value_t = 20.0)]
    peak_hour: f64,
    /// Engine threads for the tick.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Engine lock shards (a power of two).
    #[arg(long, default_value_t = 16)]
    shards: usize,
    /// Friend cap the engine enforces when loading.
    #[arg(long, default_value_t = 5000)]
    max_friends: u32,
    /// Largest snapshot accepted, in bytes.
    #[arg(long, default_value_t = 64 << 30)]
    max_snapshot_bytes: u64,
    /// Log every event of this dense user id (debugging).
    #[arg(long)]
    trace_user: Option<u32>,
    /// Keep the tables in 4 KiB pages (by default they move to transparent huge pages once
    /// built, which halves the time spent on cache and TLB misses at millions of users).
    #[arg(long)]
    no_huge_pages: bool,
}

#[derive(Args, Debug)]
struct MoonArgs {
    /// Users of the whole graph.
    #[arg(long, default_value_t = 70_000_000)]
    users: u32,
    #[arg(long, default_value_t = 130.0, allow_negative_numbers = true)]
    avg_friends: f64,
    #[arg(long, default_value_t = 5000)]
    max_friends: u32,
    /// Nodes of the cluster (named n0, n1, ...).
    #[arg(long, default_value_t = 4)]
    nodes: u8,
    /// The node run for real.
    #[arg(long, default_value_t = 0)]
    node: u8,
    /// Virtual time measured after the warm-up.
    #[arg(long, default_value = "10m", value_parser = parse_duration_ms, allow_hyphen_values = true)]
    duration: u64,
    /// Virtual time before measuring (logins of the users online at the start).
    #[arg(long, default_value = "2m", value_parser = parse_duration_ms, allow_hyphen_values = true)]
    warmup: u64,
    /// The node's tick (virtual).
    #[arg(long, default_value = "200ms", value_parser = parse_duration_ms, allow_hyphen_values = true)]
    tick: u64,
    /// Share of users online at the evening peak.
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    peak_online: f64,
    #[arg(long, default_value_t = 20.0)]
    peak_hour: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for generation and the engine's tick.
    #[arg(long, default_value_t = simulator::util::cores())]
    threads: usize,
    #[arg(long, default_value_t = 16)]
    shards: usize,
    /// Decode every outgoing frame again and check it.
    #[arg(long)]
    verify: bool,
    /// Stop once the node is loaded (memory figures only).
    #[arg(long)]
    load_only: bool,
    /// Project to this many users of the whole graph.
    #[arg(long, default_value_t = 70_000_000)]
    target_users: u64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Replay(a) = &cli.cmd
        && !a.no_huge_pages
    {
        simulator::hugepages::reexec_with_malloc_huge_pages();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let progress = !cli.no_progress && std::io::stderr().is_terminal();
    let result = match cli.cmd {
        Cmd::Graph(a) => graph(a, progress),
        Cmd::Replay(a) => replay_cmd(a, progress),
        Cmd::Moonshot(a) => moonshot_cmd(a, progress),
        Cmd::DarkLaunch(a) => simulator::darklaunch::main(*a),
        Cmd::ClusterBench(a) => simulator::clusterbench::main(a),
        Cmd::DarkLaunchWorker => {
            simulator::darklaunch::host::worker_main().map(|()| ExitCode::SUCCESS)
        }
        Cmd::WriteFloor(a) => simulator::floor::run(&a).map(|()| ExitCode::SUCCESS),
        Cmd::WriteFloorReader { addr, sessions } => {
            simulator::floor::reader(addr, sessions).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn write_out(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn graph(a: GraphArgs, progress: bool) -> Result<ExitCode> {
    let t0 = Instant::now();
    let params = GraphParams {
        users: a.users,
        avg_friends: a.avg_friends,
        max_friends: a.max_friends,
        seed: a.seed,
        threads: a.threads,
    };
    params.validate()?;
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty())
        && !dir.is_dir()
    {
        anyhow::bail!("output folder {} does not exist", dir.display());
    }
    tracing::info!(?params, "generating graph");
    let g = graphgen::generate(&params, progress)?;
    let sp = progress.then(|| util::spinner("statistics (degrees, locality, clustering)"));
    let stats = graphgen::stats(&g, a.clustering_sample);
    if let Some(sp) = sp {
        sp.finish_and_clear();
    }
    tracing::info!(edges = stats.edges, "statistics computed");

    let t_write = Instant::now();
    let estimate = g.snapshot_size_estimate();
    let mut snapshot_error = None;
    let mut disk_bytes = 0;
    if estimate > graphgen::SNAPSHOT_LIMIT_BYTES {
        drop(g);
        let msg = format!(
            "cannot write {}: this graph needs a {:.2} GiB snapshot, over the generator's guard of \
             1 TiB; use fewer users or a lower mean (about {} users at this mean fit)",
            a.out.display(),
            util::gib(estimate),
            util::thousands(
                (graphgen::SNAPSHOT_LIMIT_BYTES as f64 / (estimate as f64 / f64::from(a.users)))
                    as u64
            )
        );
        tracing::error!("{msg}");
        snapshot_error = Some(msg);
    } else {
        let sp = progress.then(|| util::spinner("serialising and writing the snapshot"));
        let snap = g.into_snapshot();
        let bytes = snap.to_bytes().context("serialising the snapshot")?;
        drop(snap);
        snapshot::write_file(&a.out, &bytes).context("writing the snapshot")?;
        disk_bytes = bytes.len() as u64;
        drop(bytes);
        if let Some(sp) = sp {
            sp.finish_and_clear();
        }
        tracing::info!(bytes = disk_bytes, secs = t_write.elapsed().as_secs_f64(), path = %a.out.display(), "snapshot written");
    }
    let write_seconds = t_write.elapsed().as_secs_f64();

    let (mut load_seconds, mut memory, mut rss_delta) = (None, None, None);
    if !a.no_load && snapshot_error.is_none() {
        let sp = progress.then(|| util::spinner("loading the snapshot into presence-core"));
        let before = util::mem();
        let t = Instant::now();
        let cfg = Config {
            max_friends: a.max_friends,
            ..Config::default()
        };
        let engine = snapshot::load_file(cfg, replay::EPOCH_MS, &a.out, u64::MAX)
            .context("loading the snapshot back")?;
        load_seconds = Some(t.elapsed().as_secs_f64());
        let fp = engine.footprint();
        let after = util::mem();
        if let Some(sp) = sp {
            sp.finish_and_clear();
        }
        if fp.edges != stats.edges || fp.users as u64 != stats.users {
            anyhow::bail!(
                "loaded snapshot has {} users / {} edges, generated {} / {}",
                fp.users,
                fp.edges,
                stats.users,
                stats.edges
            );
        }
        rss_delta = Some(after.rss.saturating_sub(before.rss));
        memory = Some(report::FootprintOut::from(fp));
        drop(engine);
    }
    let edges = stats.edges.max(1) as f64;
    let rep = GraphReport {
        params,
        out: a.out.display().to_string(),
        comparison: report::graph_comparison(&stats),
        disk_bytes,
        disk_bytes_per_edge: disk_bytes as f64 / edges,
        write_seconds,
        load_seconds,
        memory_graph_bytes_per_edge: memory.map(|m| m.graph_bytes as f64 / edges),
        memory_engine_bytes_per_edge: memory
            .map(|m| (m.graph_bytes + m.interner_bytes + m.state_bytes) as f64 / edges),
        memory,
        load_rss_delta: rss_delta,
        peak_rss: util::mem().hwm,
        total_seconds: t0.elapsed().as_secs_f64(),
        snapshot_estimate_bytes: estimate,
        snapshot_error: snapshot_error.clone(),
        stats,
    };
    print!("{}", report::graph_table(&rep));
    if let Some(path) = &a.json {
        write_out(path, &serde_json::to_string_pretty(&rep)?)?;
    }
    if let Some(msg) = snapshot_error {
        anyhow::bail!("{msg}");
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_cmd(a: ReplayArgs, progress: bool) -> Result<ExitCode> {
    let params = ReplayParams {
        graph: a.graph,
        duration_ms: a.duration,
        tick_ms: a.tick,
        peak_online: a.peak_online,
        seed: a.seed,
        verify: a.verify,
        sample_watchers: a.sample_watchers,
        policies: a.policies,
        start_hour: a.start_hour,
        peak_hour: a.peak_hour,
        threads: a.threads,
        shards: a.shards,
        max_friends: a.max_friends,
        max_snapshot_bytes: a.max_snapshot_bytes,
        progress,
        trace_user: a.trace_user,
        huge_pages: !a.no_huge_pages,
    };
    params.validate()?;
    if !params.graph.is_file() {
        anyhow::bail!(
            "graph file {} does not exist (make one with `simulator graph --users N --out FILE`)",
            params.graph.display()
        );
    }
    let rep = replay::run(&params)?;
    print!("{}", report::replay_table(&rep));
    if let Some(path) = &a.json {
        write_out(path, &serde_json::to_string_pretty(&rep)?)?;
    }
    if let Some(path) = &a.html {
        write_out(path, &report::replay_html(&rep))?;
    }
    if rep.verify.as_ref().is_some_and(|v| v.failed()) {
        eprintln!("error: --verify found views that differ from the truth (see above)");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn moonshot_cmd(a: MoonArgs, progress: bool) -> Result<ExitCode> {
    use simulator::moonshot::{self, verdict};
    let start_hour = (a.peak_hour - (a.warmup + a.duration) as f64 / 7_200_000.0).rem_euclid(24.0);
    let params = moonshot::MoonParams {
        graph: GraphParams {
            users: a.users,
            avg_friends: a.avg_friends,
            max_friends: a.max_friends,
            seed: a.seed,
            threads: a.threads,
        },
        nodes: a.nodes,
        node: a.node,
        run: moonshot::run::RunParams {
            warmup_ms: a.warmup,
            duration_ms: a.duration,
            tick_ms: a.tick,
            peak_online: a.peak_online,
            start_hour,
            peak_hour: a.peak_hour,
            seed: a.seed,
            verify: a.verify,
        },
        threads: a.threads,
        shards: a.shards,
        load_only: a.load_only,
        progress,
        projection: verdict::Projection {
            target_users: a.target_users,
            target_nodes: u64::from(a.nodes),
            ..verdict::Projection::default()
        },
    };
    let rep = moonshot::main(&params)?;
    print!("{}", verdict::table(&rep));
    if let Some(path) = &a.json {
        write_out(path, &serde_json::to_string_pretty(&rep)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
