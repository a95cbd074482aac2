//! The activity hot path: `Engine::activity(session, now)`, which every keystroke-ish event of
//! every connected client goes through.
//!
//! Each engine has 1,000,000 users with one live session each (empty friend graph: activity
//! never looks at it). Calls walk a shuffled list of sessions. Variants:
//!
//! - `hot4k` cycles over 4,096 sessions (state stays in cache: the cost of the code and the lock),
//!   `all1M` over all of them (mostly cache misses, as on a busy node).
//! - `1t`: one caller.
//! - `2t`: two callers at once on disjoint sessions; with `shards = 1` every call takes
//!   the same lock (worst-case contention), with the default 16 shards they are striped.
//!
//! Baseline: the same timestamp write into a `std::sync::Mutex<HashMap<u64, u64>>` (std
//! hasher) keyed by session, one map (`1 lock`) or 16 maps striped by key (`16 locks`).
//!
//! The `now` passed advances by 1 ms per 16,384 calls (about real time at ~60 ns a call), so
//! no session ever reaches its heartbeat timeout during a run.
//!
//! Criterion's time per iteration is the wall time per call seen by each thread (with two
//! threads, two calls run per iteration). The summary printed at the end adds, from
//! `/proc/thread-self/schedstat`, the CPU time per call and the share of time the threads
//! spent runnable but waiting for a CPU: on a shared machine that share is time stolen by
//! other processes, which inflates the wall figures (most of all with two threads on two
//! cores).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use presence_benches::sample_distinct;
use presence_core::{Config, Engine, SessionId, UserId};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const USERS: u32 = 1_000_000;
const START_MS: u64 = 1_700_000_000_000;
const SAMPLES: usize = 30;
/// Sessions in the hot working set (their state, about 0.5 MiB of cache lines, stays cached).
const HOT: usize = 4096;

/// Something that records one activity for key `i` of its own.
trait Target: Sync {
    fn touch(&self, i: usize, now: u64);
}

struct Core {
    engine: Engine,
    sessions: Vec<SessionId>,
}

impl Core {
    fn build(shards: usize, order: &[u32]) -> Self {
        let engine = Engine::new(
            Config {
                shards,
                ..Config::default()
            },
            START_MS,
        )
        .expect("a valid config");
        let mut sessions = Vec::with_capacity(order.len());
        for i in 0..USERS {
            let id = engine.intern(&format!("u{i}")).expect("a valid user id");
            debug_assert_eq!(id, UserId(i));
        }
        let mut by_user = vec![None; USERS as usize];
        for i in 0..USERS {
            let welcome = engine
                .connect(UserId(i), "phone", START_MS)
                .expect("connect a known user");
            by_user[i as usize] = Some(welcome.session);
        }
        // Calls go in shuffled order over all sessions.
        for &u in order {
            sessions.push(by_user[u as usize].expect("every user has a session"));
        }
        Self { engine, sessions }
    }
}

impl Target for Core {
    #[inline]
    fn touch(&self, i: usize, now: u64) {
        self.engine
            .activity(self.sessions[i], now)
            .expect("the session is live");
    }
}

/// `Mutex<HashMap<session, last_active>>`, striped over `locks` maps by key.
struct Baseline {
    maps: Vec<Mutex<HashMap<u64, u64>>>,
    keys: Vec<u64>,
}

impl Baseline {
    fn build(locks: usize, order: &[u32]) -> Self {
        let maps: Vec<Mutex<HashMap<u64, u64>>> =
            (0..locks).map(|_| Mutex::new(HashMap::new())).collect();
        for i in 0..u64::from(USERS) {
            maps[i as usize % locks]
                .lock()
                .expect("not poisoned")
                .insert(i, START_MS);
        }
        Self {
            maps,
            keys: order.iter().map(|&u| u64::from(u)).collect(),
        }
    }
}

impl Target for Baseline {
    #[inline]
    fn touch(&self, i: usize, now: u64) {
        let key = self.keys[i];
        let mut map = self.maps[key as usize % self.maps.len()]
            .lock()
            .expect("not poisoned");
        if let Some(t) = map.get_mut(&key) {
            *t = (*t).max(now);
        }
    }
}

/// This thread's (on-CPU, waiting-for-a-CPU) nanoseconds so far, from
/// `/proc/thread-self/schedstat` (zeros where unavailable).
fn schedstat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// What one measured call of `hammer` saw.
#[derive(Clone, Copy, Default)]
struct Run {
    wall: Duration,
    /// Summed over threads: time on a CPU, and time runnable but waiting for one (stolen by
    /// other processes on a busy machine).
    cpu_ns: u64,
    wait_ns: u64,
}

/// `iters` calls on each of `threads` threads, thread `t` taking keys `t, t + threads, ...`
/// (disjoint); the wall time runs from a common start to the last thread's end.
fn hammer(target: &dyn Target, len: usize, threads: usize, iters: u64, offset: &mut usize) -> Run {
    let start = *offset;
    *offset = (*offset + iters as usize * threads) % len;
    let work = |t: usize| {
        let before = schedstat();
        let mut i = (start + t) % len;
        for n in 0..iters {
            target.touch(i, START_MS + (n >> 14));
            i += threads;
            if i >= len {
                i -= len;
            }
        }
        let after = schedstat();
        (after.0 - before.0, after.1 - before.1)
    };
    if threads == 1 {
        let t = Instant::now();
        let (cpu_ns, wait_ns) = work(0);
        return Run {
            wall: t.elapsed(),
            cpu_ns,
            wait_ns,
        };
    }
    let barrier = Barrier::new(threads + 1);
    let (t, stats) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    work(t)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let stats: Vec<(u64, u64)> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (t, stats)
    });
    Run {
        wall: t.elapsed(),
        cpu_ns: stats.iter().map(|s| s.0).sum(),
        wait_ns: stats.iter().map(|s| s.1).sum(),
    }
}

/// Per-call figures of every recorded sample.
struct Record {
    name: String,
    threads: usize,
    /// (wall ns per call per thread, CPU ns per call, share of thread time spent waiting for
    /// a CPU)
    samples: Vec<(f64, f64, f64)>,
}

impl Record {
    /// Medians over the measured samples (the last `SAMPLES` calls, after the warm-up).
    fn medians(&self) -> (f64, f64, f64) {
        let last = &self.samples[self.samples.len().saturating_sub(SAMPLES)..];
        let median = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = last.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        (median(|s| s.0), median(|s| s.1), median(|s| s.2))
    }
}

fn activity(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(7);
    let order = sample_distinct(USERS, USERS as usize, &mut rng);
    let mut records: Vec<Record> = Vec::new();

    let mut group = c.benchmark_group("activity");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // Every target runs over a hot working set (the code path and the lock) and over all
    // sessions (what a busy node sees: mostly cache misses).
    let mut run =
        |group: &mut criterion::BenchmarkGroup<'_, _>, name: &str, target: &dyn Target| {
            for (set, len) in [("hot4k", HOT), ("all1M", order.len())] {
                for threads in [1, 2] {
                    let mut rec = Record {
                        name: format!("{name}/{set}/{threads}t"),
                        threads,
                        samples: Vec::new(),
                    };
                    let mut offset = 0;
                    group.throughput(Throughput::Elements(threads as u64));
                    let id = BenchmarkId::new(format!("{name}/{set}"), format!("{threads}t"));
                    group.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            let run = hammer(target, len, threads, iters, &mut offset);
                            let calls = (iters.max(1) * threads as u64) as f64;
                            let thread_ns = (run.cpu_ns + run.wait_ns).max(1) as f64;
                            rec.samples.push((
                                run.wall.as_nanos() as f64 / iters.max(1) as f64,
                                run.cpu_ns as f64 / calls,
                                run.wait_ns as f64 / thread_ns,
                            ));
                            run.wall
                        })
                    });
                    records.push(rec);
                }
            }
        };

    for shards in [1usize, 16] {
        let t = Instant::now();
        let core = Core::build(shards, &order);
        eprintln!(
            "activity: engine with {shards} shard(s), {} sessions, built in {:.1} s",
            core.sessions.len(),
            t.elapsed().as_secs_f64()
        );
        run(&mut group, &format!("core/{shards}-shard"), &core);
        black_box(core.engine.footprint());
    }
    for locks in [1usize, 16] {
        let base = Baseline::build(locks, &order);
        run(&mut group, &format!("mutex-hashmap/{locks}-lock"), &base);
    }
    group.finish();

    eprintln!(
        "activity summary: median per call, per thread: wall ns (what criterion measures) / \
         CPU ns (schedstat) / share of the threads' time spent waiting for a CPU"
    );
    for r in &records {
        let (wall, cpu, wait) = r.medians();
        eprintln!(
            "  {:<34} {wall:>8.1} ns wall {cpu:>8.1} ns cpu {:>5.1}% waiting ({} thread{})",
            r.name,
            100.0 * wait,
            r.threads,
            if r.threads == 1 { "" } else { "s" }
        );
    }
}

criterion_group!(benches, activity);
criterion_main!(benches);
