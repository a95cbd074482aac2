//! Fan-out: the cost of telling every online friend about 1% of users changing state.
//!
//! 1,000,000 users (override with `PRESENCE_BENCH_USERS`), mean 150 friends, community
//! locality; half of them hold a live session. Each measured tick, a fresh 1% of the users
//! (all of them online, so every change is visible) toggle their custom status between
//! available and busy, and then:
//!
//! - **core**: `Engine::set_status` for each, then `Engine::tick(now)`, which computes the
//!   batch of every live watcher's diff (2 threads). Run three times: the automatic push/pull
//!   choice, and push and pull forced.
//! - **naive**: [`NaiveEngine::set_status`] for each (which pushes the entry into a `Vec` per
//!   online friend, std `HashMap`/`HashSet`), then `flush`, which hands out and frees the
//!   vectors.
//!
//! Timed: the status calls and the tick (or flush), including dropping the output. Criterion's
//! throughput is diff entries per tick (`Batch::entry_count`). At the end a one-line summary
//! gives exact entries/s of every variant and its ratio to naive, twice: from criterion's
//! samples, and from a final round-robin run (one tick of each variant in turn, 10 rounds,
//! `PRESENCE_BENCH_ROUNDS`) that is fair on a machine whose load drifts.
//!
//! `PRESENCE_BENCH_USERS` scales the graph; `PRESENCE_BENCH_ONLY=auto,naive` skips the setup of
//! the variants not listed. All variants stay in memory together (about 6 GiB at 1M users).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use presence_benches::naive::NaiveEngine;
use presence_benches::{community_graph, sample_distinct};
use presence_core::snapshot::GraphSnapshot;
use presence_core::{Config, Engine, FanoutPolicy, Status, Strategy, UserId};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const SEED: u64 = 1;
const MEAN_FRIENDS: u32 = 150;
const START_MS: u64 = 1_700_000_000_000;
const SAMPLES: usize = 10;

fn users() -> u32 {
    std::env::var("PRESENCE_BENCH_USERS")
        .ok()
        .map(|v| {
            v.replace('_', "")
                .parse()
                .expect("PRESENCE_BENCH_USERS must be a number")
        })
        .unwrap_or(1_000_000)
}

/// The status to toggle `user` to, flipping the record.
fn toggle(busy: &mut [bool], user: u32) -> Status {
    let b = &mut busy[user as usize];
    *b = !*b;
    if *b { Status::Busy } else { Status::Available }
}

/// One measured call of `iter_custom`: ticks run, entries produced, time spent.
#[derive(Clone, Copy, Default)]
struct Sample {
    ticks: u64,
    entries: u64,
    total: Duration,
    /// Time in `tick` (or `flush`) alone.
    tick: Duration,
}

/// The events of successive ticks: windows of 1% of all users, walking through a shuffled
/// list of online users (distinct within a tick).
struct Events {
    online: Vec<u32>,
    per_tick: usize,
    cursor: usize,
}

impl Events {
    fn next(&mut self) -> &[u32] {
        if self.cursor + self.per_tick > self.online.len() {
            self.cursor = 0;
        }
        let w = &self.online[self.cursor..self.cursor + self.per_tick];
        self.cursor += self.per_tick;
        w
    }
}

struct Core {
    engine: Engine,
    events: Events,
    busy: Vec<bool>,
    now: u64,
    samples: Vec<Sample>,
    strategies: [u64; 3],
}

impl Core {
    fn build(policy: FanoutPolicy, bytes: &[u8], online: &[u32], per_tick: usize) -> Self {
        let t = Instant::now();
        let cfg = Config {
            threads: 2,
            fanout: policy,
            ..Config::default()
        };
        let engine = presence_core::snapshot::load(cfg, START_MS, bytes, u64::MAX)
            .expect("the generated snapshot loads");
        let loaded = t.elapsed();
        // Connect on two threads: setup only, it is slow (each connect builds a snapshot).
        std::thread::scope(|s| {
            for part in online.chunks(online.len().div_ceil(2).max(1)) {
                let engine = &engine;
                s.spawn(move || {
                    for &u in part {
                        engine
                            .connect(UserId(u), "phone", START_MS)
                            .expect("connect a generated user");
                    }
                });
            }
        });
        // Publish the logins: not part of any measured tick.
        let first = engine.tick(START_MS + 1);
        eprintln!(
            "fanout: {policy:?} engine loaded in {:.1} s, {} sessions connected in {:.1} s, \
             login tick {} entries",
            loaded.as_secs_f64(),
            online.len(),
            (t.elapsed() - loaded).as_secs_f64(),
            first.entry_count()
        );
        drop(first);
        Self {
            busy: vec![false; engine.user_count()],
            engine,
            events: Events {
                online: online.to_vec(),
                per_tick,
                cursor: 0,
            },
            now: START_MS + 1,
            samples: Vec::new(),
            strategies: [0; 3],
        }
    }

    /// One tick's worth of events and the tick; returns the batch's entry count.
    fn step(&mut self, sample: &mut Sample) -> u64 {
        self.now += 1;
        let now = self.now;
        let started = Instant::now();
        let changed = self.events.next();
        for &u in changed {
            let status = toggle(&mut self.busy, u);
            self.engine
                .set_status(UserId(u), status, None, now)
                .expect("set_status of a known user");
        }
        let tick_started = Instant::now();
        let batch = self.engine.tick(now);
        let entries = batch.entry_count() as u64;
        let transitions = batch.stats.transitions;
        let strategy = batch.stats.strategy;
        drop(black_box(batch));
        let done = Instant::now();
        sample.ticks += 1;
        sample.entries += entries;
        sample.total += done - started;
        sample.tick += done - tick_started;
        assert_eq!(
            transitions,
            changed.len(),
            "every toggled user, and only those, must change"
        );
        self.strategies[match strategy {
            Strategy::Push => 0,
            Strategy::Pull => 1,
            Strategy::Idle => 2,
        }] += 1;
        entries
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut sample = Sample::default();
        for _ in 0..iters {
            self.step(&mut sample);
        }
        self.samples.push(sample);
        sample.total
    }
}

struct Naive {
    engine: NaiveEngine,
    events: Events,
    busy: Vec<bool>,
    samples: Vec<Sample>,
}

impl Naive {
    fn build(snap: &GraphSnapshot, online: &[u32], per_tick: usize) -> Self {
        let t = Instant::now();
        let mut engine = NaiveEngine::from_snapshot(snap);
        for &u in online {
            engine.connect(u64::from(u), START_MS);
        }
        let logins = engine.flush();
        eprintln!(
            "fanout: naive engine built in {:.1} s, login flush {logins} entries",
            t.elapsed().as_secs_f64()
        );
        Self {
            busy: vec![false; snap.users()],
            engine,
            events: Events {
                online: online.to_vec(),
                per_tick,
                cursor: 0,
            },
            samples: Vec::new(),
        }
    }

    fn step(&mut self, sample: &mut Sample) -> u64 {
        let started = Instant::now();
        for &u in self.events.next() {
            let status = toggle(&mut self.busy, u);
            self.engine.set_status(u64::from(u), status);
        }
        let flush_started = Instant::now();
        let entries = self.engine.flush() as u64;
        let done = Instant::now();
        sample.ticks += 1;
        sample.entries += entries;
        sample.total += done - started;
        sample.tick += done - flush_started;
        entries
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut sample = Sample::default();
        for _ in 0..iters {
            self.step(&mut sample);
        }
        self.samples.push(sample);
        sample.total
    }
}

/// Entries of the first `n` ticks, on a throwaway sample.
fn probe(n: usize, mut step: impl FnMut(&mut Sample) -> u64) -> Vec<u64> {
    let mut scratch = Sample::default();
    (0..n).map(|_| step(&mut scratch)).collect()
}

/// Whether variant `name` should run: `PRESENCE_BENCH_ONLY=auto,naive` limits the (slow)
/// setups to the variants listed; by default all run.
fn wanted(name: &str) -> bool {
    std::env::var("PRESENCE_BENCH_ONLY")
        .map(|only| only.split(',').any(|v| v.trim() == name))
        .unwrap_or(true)
}

fn fanout(c: &mut Criterion) {
    let users = users();
    let t = Instant::now();
    let snap = community_graph(users, MEAN_FRIENDS, SEED);
    let bytes = snap.to_bytes().expect("serialize the snapshot");
    let mut rng = SmallRng::seed_from_u64(SEED ^ 0x0111e);
    let online = sample_distinct(users, users as usize / 2, &mut rng);
    let per_tick = (users as usize / 100).max(1);
    eprintln!(
        "fanout: {users} users, {} edges, {} online, {per_tick} changes per tick; graph built in \
         {:.1} s",
        snap.edges(),
        online.len(),
        t.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .sampling_mode(SamplingMode::Flat);

    const PROBE: usize = 3;
    let mut reference: Option<Vec<u64>> = None;
    let mut cores: Vec<(&str, Core)> = Vec::new();
    for (name, policy) in [
        ("auto", FanoutPolicy::Auto),
        ("push", FanoutPolicy::Push),
        ("pull", FanoutPolicy::Pull),
    ] {
        if !wanted(name) {
            continue;
        }
        let mut core = Core::build(policy, &bytes, &online, per_tick);
        // The first windows, on every engine: they must all agree on the entry counts.
        let counts = probe(PROBE, |s| core.step(s));
        match &reference {
            Some(r) => assert_eq!(r, &counts, "{name} disagrees with auto on entry counts"),
            None => reference = Some(counts.clone()),
        }
        group.throughput(Throughput::Elements(
            counts.iter().sum::<u64>() / PROBE as u64,
        ));
        group.bench_function(BenchmarkId::new("core", name), |b| {
            b.iter_custom(|iters| core.run(iters))
        });
        cores.push((name, core));
    }

    let mut naive = None;
    if wanted("naive") {
        let mut n = Naive::build(&snap, &online, per_tick);
        let counts = probe(PROBE, |s| n.step(s));
        if let Some(r) = &reference {
            assert_eq!(
                r, &counts,
                "naive and core must send the same number of entries"
            );
        }
        group.throughput(Throughput::Elements(
            counts.iter().sum::<u64>() / PROBE as u64,
        ));
        group.bench_function("naive", |b| b.iter_custom(|iters| n.run(iters)));
        naive = Some(n);
    }
    group.finish();
    drop(snap);

    let criterion_rates: Vec<(String, Sample)> = cores
        .iter()
        .map(|(name, c)| (format!("core/{name}"), last_samples(&c.samples)))
        .chain(
            naive
                .iter()
                .map(|n| ("naive".to_string(), last_samples(&n.samples))),
        )
        .collect();
    summary("criterion samples", users, per_tick, &criterion_rates);

    // The machine may be shared and its load drifts over the minutes above: also run every
    // variant one tick at a time, round-robin, so they all see the same conditions.
    let rounds: usize = std::env::var("PRESENCE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut acc: Vec<Sample> = vec![Sample::default(); cores.len() + 1];
    for _ in 0..rounds {
        for (i, (_, core)) in cores.iter_mut().enumerate() {
            core.step(&mut acc[i]);
        }
        if let Some(n) = naive.as_mut() {
            n.step(&mut acc[cores.len()]);
        }
    }
    let mut interleaved: Vec<(String, Sample)> = cores
        .iter()
        .zip(&acc)
        .map(|((name, _), s)| (format!("core/{name}"), *s))
        .collect();
    if naive.is_some() {
        interleaved.push(("naive".to_string(), acc[cores.len()]));
    }
    for (name, core) in &cores {
        eprintln!(
            "fanout: core/{name} strategies over all its ticks (push, pull, idle): {:?}",
            core.strategies
        );
    }
    summary(
        &format!("interleaved, {rounds} rounds"),
        users,
        per_tick,
        &interleaved,
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        eprintln!("fanout: peak RSS of the whole run ({hwm})");
    }
}

/// The criterion measurement samples of a variant (its last `SAMPLES` calls), summed.
fn last_samples(samples: &[Sample]) -> Sample {
    let mut total = Sample::default();
    for s in &samples[samples.len().saturating_sub(SAMPLES)..] {
        total.ticks += s.ticks;
        total.entries += s.entries;
        total.total += s.total;
        total.tick += s.tick;
    }
    total
}

/// The one-line summary: entries per tick, entries/s of every variant, ratio to naive.
fn summary(what: &str, users: u32, per_tick: usize, rates: &[(String, Sample)]) {
    let rate = |s: &Sample| s.entries as f64 / s.total.as_secs_f64().max(1e-12);
    let naive = rates
        .iter()
        .find(|(n, _)| n == "naive")
        .map(|(_, s)| rate(s));
    let entries = rates
        .first()
        .map_or(0.0, |(_, s)| s.entries as f64 / s.ticks.max(1) as f64);
    let mut line = format!(
        "fanout summary ({what}): {users} users, {per_tick} changes/tick, {entries:.0} \
         entries/tick;"
    );
    for (name, s) in rates {
        line += &format!(
            " {name} {:.2} M entries/s ({:.1} ms/tick, {:.0}% in tick/flush)",
            rate(s) / 1e6,
            1e3 * s.total.as_secs_f64() / s.ticks.max(1) as f64,
            100.0 * s.tick.as_secs_f64() / s.total.as_secs_f64().max(1e-12),
        );
        if let Some(nr) = naive.filter(|_| name != "naive") {
            line += &format!(" = {:.2}x naive", rate(s) / nr);
        }
        line += ";";
    }
    eprintln!("{}", line.trim_end_matches(';'));
}

criterion_group!(benches, fanout);
criterion_main!(benches);
