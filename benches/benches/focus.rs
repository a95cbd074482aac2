//! Focus: the fan-out cost when every live session is focused on 10 of its ~150 friends
//! (a phone showing ten friends on screen, protocol v1.1 `focus`), against the same sessions
//! unfocused, same graph, same events, same run.
//!
//! 200,000 users (override with `PRESENCE_BENCH_USERS`), mean 150 friends, community
//! locality; half of them hold a live session. In the **focused** engine every live user's
//! view is set (`Engine::set_view`) to 10 of its friends drawn at random; the **unfocused**
//! engine has no views. Each measured tick, a fresh 1% of the users (all online) toggle
//! their custom status, then `Engine::tick(now)` computes every watcher's diff (2 threads).
//!
//! Timed: the status calls and the tick, including dropping the batch. Throughput is changes
//! per tick. The summary gives each variant's time a tick, its diff entries a tick and the
//! ratio, from criterion's samples and from a final interleaved run (one tick of each in
//! turn, `PRESENCE_BENCH_ROUNDS`, default 10), fair on a machine whose load drifts.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use presence_benches::{community_graph, sample_distinct};
use presence_core::{Config, Engine, Status, UserId};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

const SEED: u64 = 7;
const MEAN_FRIENDS: u32 = 150;
const FOCUS: usize = 10;
const START_MS: u64 = 1_700_000_000_000;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Default)]
struct Sample {
    ticks: u64,
    entries: u64,
    time: Duration,
}

struct Variant {
    name: &'static str,
    engine: Engine,
    busy: Vec<bool>,
    now: u64,
    cursor: usize,
    samples: Sample,
    /// Time in `tick` alone (the rest is the status calls).
    tick_time: Duration,
}

impl Variant {
    fn build(name: &'static str, bytes: &[u8], online: &[u32], focus: Option<usize>) -> Self {
        let cfg = Config {
            threads: 2,
            ..Config::default()
        };
        let engine = presence_core::snapshot::load(cfg, START_MS, bytes, u64::MAX)
            .expect("the generated snapshot loads");
        let mut rng = SmallRng::seed_from_u64(SEED);
        for &u in online {
            engine
                .connect(UserId(u), "phone", START_MS)
                .expect("connect a generated user");
            if let Some(n) = focus {
                let mut friends = engine.friends(UserId(u));
                friends.shuffle(&mut rng);
                friends.truncate(n);
                let _ = engine
                    .set_view(UserId(u), Some(&friends), &[])
                    .expect("a known user");
            }
        }
        drop(engine.tick(START_MS + 1));
        Self {
            name,
            busy: vec![false; engine.user_count()],
            engine,
            now: START_MS + 1,
            cursor: 0,
            samples: Sample::default(),
            tick_time: Duration::ZERO,
        }
    }

    /// One tick: the next window of changers toggle their status, then the tick.
    fn step(&mut self, changers: &[u32], per_tick: usize) -> Sample {
        if self.cursor + per_tick > changers.len() {
            self.cursor = 0;
        }
        let window = &changers[self.cursor..self.cursor + per_tick];
        self.cursor += per_tick;
        // 1 ms a tick, as the fan-out bench: no session reaches its heartbeat timeout or an
        // idle threshold over a run, so every change is a status change of an online user.
        self.now += 1;
        let t = Instant::now();
        for &u in window {
            let b = &mut self.busy[u as usize];
            *b = !*b;
            let status = if *b { Status::Busy } else { Status::Available };
            self.engine
                .set_status(UserId(u), status, None, self.now)
                .expect("a known user");
        }
        let t_tick = Instant::now();
        let batch = self.engine.tick(self.now);
        let entries = batch.entry_count() as u64;
        drop(black_box(batch));
        self.tick_time += t_tick.elapsed();
        let s = Sample {
            ticks: 1,
            entries,
            time: t.elapsed(),
        };
        self.samples.ticks += 1;
        self.samples.entries += entries;
        self.samples.time += s.time;
        s
    }
}

fn summary(what: &str, vs: &[(&str, Sample)]) {
    let per = |s: &Sample| {
        (
            s.time.as_secs_f64() * 1e3 / s.ticks.max(1) as f64,
            s.entries as f64 / s.ticks.max(1) as f64,
        )
    };
    let (base_ms, base_entries) = per(&vs[0].1);
    let mut line = format!("focus summary ({what}):");
    for (name, s) in vs {
        let (ms, entries) = per(s);
        line += &format!(
            " {name} {ms:.2} ms/tick, {entries:.0} entries/tick ({:.2}x time, {:.3}x entries);",
            ms / base_ms,
            entries / base_entries.max(1.0)
        );
    }
    eprintln!("{line}");
}

fn bench(c: &mut Criterion) {
    let users = env_num("PRESENCE_BENCH_USERS", 200_000) as u32;
    let t = Instant::now();
    let snapshot = community_graph(users, MEAN_FRIENDS, SEED);
    let bytes = snapshot.to_bytes().expect("serialize the snapshot");
    let mut rng = SmallRng::seed_from_u64(SEED);
    let online = sample_distinct(users, users as usize / 2, &mut rng);
    let per_tick = (users as usize / 100).max(1);
    let mut changers = online.clone();
    changers.shuffle(&mut rng);
    let mut variants = vec![
        Variant::build("unfocused", &bytes, &online, None),
        Variant::build("focused-10", &bytes, &online, Some(FOCUS)),
        // Calibration: every session focused on nobody, so the tick fans out nothing; what
        // is left is the tick's fixed cost (collecting the shards' changes).
        Variant::build("focused-0", &bytes, &online, Some(0)),
    ];
    eprintln!(
        "focus: {users} users, {} online, {per_tick} changes a tick; set up in {:.1} s",
        online.len(),
        t.elapsed().as_secs_f64()
    );

    let mut g = c.benchmark_group("focus");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .throughput(Throughput::Elements(per_tick as u64));
    for v in &mut variants {
        let name = v.name;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += v.step(&changers, per_tick).time;
                }
                total
            })
        });
    }
    g.finish();
    let from_criterion: Vec<(&str, Sample)> =
        variants.iter().map(|v| (v.name, v.samples)).collect();
    summary("criterion samples", &from_criterion);
    for v in &variants {
        eprintln!(
            "focus: {} spent {:.0}% of its time in tick",
            v.name,
            100.0 * v.tick_time.as_secs_f64() / v.samples.time.as_secs_f64().max(1e-9)
        );
    }

    let rounds = env_num("PRESENCE_BENCH_ROUNDS", 10);
    let mut interleaved = vec![Sample::default(); variants.len()];
    for _ in 0..rounds {
        for (i, v) in variants.iter_mut().enumerate() {
            let s = v.step(&changers, per_tick);
            interleaved[i].ticks += s.ticks;
            interleaved[i].entries += s.entries;
            interleaved[i].time += s.time;
        }
    }
    let names: Vec<(&str, Sample)> = variants
        .iter()
        .zip(interleaved)
        .map(|(v, s)| (v.name, s))
        .collect();
    summary(&format!("interleaved, {rounds} rounds"), &names);
}

criterion_group!(benches, bench);
criterion_main!(benches);
