//! `presence-memory`: what one user, one connection and one friendship cost in the engine.
//!
//! Builds the community graph (default 1,000,000 users, mean 150 friends, seed 1), loads it
//! into an engine, connects half of the users, and prints the engine's own accounting
//! (`Engine::footprint`) next to what the allocator saw and a plain `Vec<Vec<u32>>` adjacency
//! list of the same graph, with the process RSS as a cross-check.
//!
//! ```text
//! cargo run --release -p presence-benches --bin presence-memory -- [--users N] [--mean M] [--seed S]
//!     [--connect-order random|ascending|descending]
//! ```
//! `PRESENCE_USERS` / `PRESENCE_MEAN` / `PRESENCE_SEED` set the same from the environment.
//! `--connect-order random|ascending|descending` (default random) picks the order in which
//! the sampled half of the users connect; it changes how much spare capacity the engine's
//! growing per-shard tables end up with.
//!
//! How bytes are counted:
//! - "footprint" is the engine's estimate (capacities times element sizes, roaring containers
//!   at a fixed overhead each).
//! - "heap" is what a counting global allocator saw requested between two points (exact).
//! - "malloc" adds glibc's chunk overhead to each allocation: `max(32, round16(size + 8))`.
//! - The adjacency baseline counts 24 bytes per `Vec` header (in the outer vector), 4 bytes per
//!   element of capacity, and 16 bytes of allocator header and rounding per non-empty list;
//!   the allocator's own figures for it are printed beside.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use presence_benches::{adjacency, degrees, generate, sample_distinct};
use presence_core::{Config, Engine, UserId};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Live heap bytes requested, live allocations, and live bytes with malloc chunk overhead.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE_CHUNKS: AtomicUsize = AtomicUsize::new(0);

fn chunk(size: usize) -> usize {
    ((size + 8).div_ceil(16) * 16).max(32)
}

/// The system allocator, counting.
struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never affect the returned memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            LIVE_CHUNKS.fetch_add(chunk(layout.size()), Relaxed);
            LIVE_ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            LIVE_CHUNKS.fetch_add(chunk(layout.size()), Relaxed);
            LIVE_ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
        LIVE_CHUNKS.fetch_sub(chunk(layout.size()), Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
            LIVE_CHUNKS.fetch_add(chunk(new_size), Relaxed);
            LIVE_CHUNKS.fetch_sub(chunk(layout.size()), Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap at one moment.
#[derive(Clone, Copy)]
struct Heap {
    bytes: usize,
    chunks: usize,
    allocs: usize,
}

impl Heap {
    fn now() -> Self {
        Self {
            bytes: LIVE.load(Relaxed),
            chunks: LIVE_CHUNKS.load(Relaxed),
            allocs: LIVE_ALLOCS.load(Relaxed),
        }
    }

    /// (requested bytes, malloc bytes, allocations) since `earlier`.
    fn since(self, earlier: Heap) -> (i64, i64, i64) {
        (
            self.bytes as i64 - earlier.bytes as i64,
            self.chunks as i64 - earlier.chunks as i64,
            self.allocs as i64 - earlier.allocs as i64,
        )
    }
}

/// VmRSS and VmHWM of this process, in bytes (0 where /proc is unavailable).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: impl Into<f64>) -> String {
    format!("{:.1} MiB", bytes.into() / (1024.0 * 1024.0))
}

struct Args {
    users: u32,
    mean: u32,
    seed: u64,
    order: Order,
}

/// The order the sampled half of the users connect in.
#[derive(Clone, Copy, Debug)]
enum Order {
    Random,
    Ascending,
    Descending,
}

fn parse_num<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String> {
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{what}: not a valid number: {value:?}"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        users: 1_000_000,
        mean: 150,
        seed: 1,
        order: Order::Random,
    };
    if let Ok(v) = std::env::var("PRESENCE_USERS") {
        args.users = parse_num("PRESENCE_USERS", &v)?;
    }
    if let Ok(v) = std::env::var("PRESENCE_MEAN") {
        args.mean = parse_num("PRESENCE_MEAN", &v)?;
    }
    if let Ok(v) = std::env::var("PRESENCE_SEED") {
        args.seed = parse_num("PRESENCE_SEED", &v)?;
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--users" => args.users = parse_num("--users", &value()?)?,
            "--mean" => args.mean = parse_num("--mean", &value()?)?,
            "--seed" => args.seed = parse_num("--seed", &value()?)?,
            "--connect-order" => {
                args.order = match value()?.as_str() {
                    "random" => Order::Random,
                    "ascending" => Order::Ascending,
                    "descending" => Order::Descending,
                    other => {
                        return Err(format!(
                            "--connect-order: expected random, ascending or descending, got \
                             {other:?}"
                        ));
                    }
                }
            }
            "-h" | "--help" => {
                return Err("usage: presence-memory [--users N] [--mean M] [--seed S] \
                            [--connect-order random|ascending|descending]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.users == 0 || args.users == u32::MAX {
        return Err("--users must be between 1 and 4294967294".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("presence-memory: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presence-memory: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let start_ms: u64 = 1_700_000_000_000;
    let (rss0, _) = rss();
    let t = Instant::now();
    let g = generate(args.users, args.mean, args.seed);
    let gen_s = t.elapsed().as_secs_f64();
    let snap = &g.snapshot;
    let degree = degrees(snap);
    let n = snap.users();
    let edges = snap.edges();
    let max_degree = degree.iter().copied().max().unwrap_or(0);
    let mean = 2.0 * edges as f64 / n as f64;
    drop(degree);
    let (rss_graph, _) = rss();
    eprintln!(
        "generated {n} users, {edges} edges (mean {mean:.1}, max {max_degree}), {} communities, \
         {} rounds, in {gen_s:.1} s",
        g.community_starts.len(),
        g.rounds
    );

    let t = Instant::now();
    let bytes = snap.to_bytes().map_err(|e| format!("serialize: {e}"))?;
    let ser_s = t.elapsed().as_secs_f64();

    // --- the engine --------------------------------------------------------------------------
    let cfg = Config {
        threads: 2,
        ..Config::default()
    };
    // What an empty engine allocates (shards, wheels), to isolate the graph in load's heap.
    let heap_e = Heap::now();
    let empty = Engine::new(cfg.clone(), start_ms).map_err(|e| format!("config: {e}"))?;
    let (empty_heap, empty_malloc, _) = Heap::now().since(heap_e);
    drop(empty);
    let (rss_before_load, _) = rss();
    let heap0 = Heap::now();
    let t = Instant::now();
    let engine = presence_core::snapshot::load(cfg, start_ms, &bytes, u64::MAX)
        .map_err(|e| format!("load: {e}"))?;
    let load_s = t.elapsed().as_secs_f64();
    let heap_loaded = Heap::now();
    let (rss_loaded, _) = rss();

    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0xc0ec7);
    // Half of the users, in a random order (sample_distinct returns them shuffled).
    let mut online = sample_distinct(args.users, n / 2, &mut rng);
    match args.order {
        Order::Random => {}
        Order::Ascending => online.sort_unstable(),
        Order::Descending => online.sort_unstable_by(|a, b| b.cmp(a)),
    }
    let t = Instant::now();
    for &u in &online {
        engine
            .connect(UserId(u), "phone", start_ms)
            .map_err(|e| format!("connect u{u}: {e}"))?;
    }
    let connect_s = t.elapsed().as_secs_f64();
    let heap_connected = Heap::now();
    let (rss_connected, _) = rss();
    let fp = engine.footprint();
    let heap_online_list = online.capacity() * 4;

    // --- the baseline adjacency list --------------------------------------------------------
    let heap_a0 = Heap::now();
    let (rss_a0, _) = rss();
    let t = Instant::now();
    let adj = adjacency(snap);
    let adj_s = t.elapsed().as_secs_f64();
    let (rss_adj, hwm) = rss();
    let (adj_heap, adj_malloc, adj_allocs) = Heap::now().since(heap_a0);
    let nonempty = adj.iter().filter(|l| l.capacity() > 0).count();
    let adj_counted = adj.len() * std::mem::size_of::<Vec<u32>>()
        + adj.iter().map(|l| 4 * l.capacity()).sum::<usize>()
        + 16 * nonempty;
    drop(adj);

    let users = fp.users as f64;
    let directed = 2.0 * fp.edges as f64;
    let (load_heap, load_malloc, load_allocs) = heap_loaded.since(heap0);
    let (conn_heap, conn_malloc, _) = heap_connected.since(heap_loaded);
    let conn_heap = conn_heap - heap_online_list as i64;
    // The interner's own accounting is capacity-exact; the rest of load's heap is the graph.
    let graph_heap = load_heap - empty_heap - fp.interner_bytes as i64;
    let graph_malloc = load_malloc - empty_malloc - fp.interner_bytes as i64;
    let conn_malloc = conn_malloc - heap_online_list as i64;

    println!(
        "presence-memory: {} users, mean {:.1} friends (max {}), {} edges, {} sessions \
         (connected in {:?} order), seed {}",
        fp.users, mean, max_degree, fp.edges, fp.sessions, args.order, args.seed
    );
    println!(
        "timings: generate {gen_s:.1} s, serialize {ser_s:.1} s ({}), load {load_s:.1} s, \
         connect {connect_s:.1} s, adjacency {adj_s:.1} s",
        mib(bytes.len() as f64)
    );
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "per-unit cost", "measured", "baseline", "target"
    );
    let row = |name: &str, v: f64, base: &str, target: &str| {
        println!("{name:<34} {v:>12.2} {base:>12} {target:>12}");
    };
    row(
        "state bytes / user (footprint)",
        fp.state_bytes as f64 / users,
        "-",
        "<= 64",
    );
    row(
        "graph bytes / directed edge (fp)",
        fp.graph_bytes as f64 / directed,
        &format!("{:.2}", adj_counted as f64 / directed),
        "<= 4",
    );
    row(
        "  (allocator: graph heap / edge)",
        graph_heap as f64 / directed,
        &format!("{:.2}", adj_heap as f64 / directed),
        "<= 4",
    );
    row(
        "  (+ malloc chunk overhead)",
        graph_malloc as f64 / directed,
        &format!("{:.2}", adj_malloc as f64 / directed),
        "<= 4",
    );
    row(
        "interner bytes / user",
        fp.interner_bytes as f64 / users,
        "-",
        "-",
    );
    row(
        "engine heap / user after load",
        load_heap as f64 / users,
        "-",
        "-",
    );
    row(
        "heap / connected session",
        conn_heap as f64 / fp.sessions.max(1) as f64,
        "-",
        "-",
    );
    println!();
    println!("{:<34} {:>14}", "engine footprint", "bytes");
    for (name, v) in [
        ("state_bytes", fp.state_bytes),
        ("graph_bytes", fp.graph_bytes),
        ("interner_bytes", fp.interner_bytes),
    ] {
        println!("{name:<34} {v:>14} ({})", mib(v as f64));
    }
    println!(
        "{:<34} {:>14} ({:.1}% of users)",
        "roaring_sets",
        fp.roaring_sets,
        100.0 * fp.roaring_sets as f64 / users
    );
    println!("{:<34} {:>14}", "wheel_entries", fp.wheel_entries);
    println!();
    println!("allocator (requested / with malloc chunk overhead):");
    println!(
        "  load (graph + interner + shards): {} / {} in {} allocations (empty engine {}); \
         footprint graph + interner says {}",
        mib(load_heap as f64),
        mib(load_malloc as f64),
        load_allocs,
        mib(empty_heap as f64),
        mib((fp.graph_bytes + fp.interner_bytes) as f64),
    );
    println!(
        "  connect {} users (state growth):  {} / {}; footprint state says {}",
        fp.sessions,
        mib(conn_heap as f64),
        mib(conn_malloc as f64),
        mib(fp.state_bytes as f64),
    );
    println!(
        "  Vec<Vec<u32>> adjacency:          {} / {} in {} allocations; counted {} \
         = {:.2} / {:.2} / {:.2} B per directed edge",
        mib(adj_heap as f64),
        mib(adj_malloc as f64),
        adj_allocs,
        mib(adj_counted as f64),
        adj_heap as f64 / directed,
        adj_malloc as f64 / directed,
        adj_counted as f64 / directed,
    );
    println!(
        "  engine graph vs adjacency:        {:.2} vs {:.2} B per directed edge requested, \
         {:.2} vs {:.2} with malloc overhead (footprint estimate {:.2})",
        graph_heap as f64 / directed,
        adj_heap as f64 / directed,
        graph_malloc as f64 / directed,
        adj_malloc as f64 / directed,
        fp.graph_bytes as f64 / directed,
    );
    println!();
    println!("process RSS (VmRSS):");
    for (name, v) in [
        ("start", rss0),
        ("after generating the graph", rss_graph),
        ("after serializing (before load)", rss_before_load),
        ("after loading the engine", rss_loaded),
        ("after connecting", rss_connected),
        ("before building adjacency", rss_a0),
        ("after building adjacency", rss_adj),
    ] {
        println!("  {name:<34} {:>12}", mib(v as f64));
    }
    println!(
        "  load delta {} (engine heap {}: the allocator reuses what the generator freed), \
         connect delta {}, adjacency delta {}; VmHWM {}",
        mib(rss_loaded as f64 - rss_before_load as f64),
        mib(load_malloc as f64),
        mib(rss_connected as f64 - rss_loaded as f64),
        mib(rss_adj as f64 - rss_a0 as f64),
        mib(hwm as f64)
    );
    drop(engine);
    Ok(())
}
