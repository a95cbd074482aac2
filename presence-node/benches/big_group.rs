//! A 1,000-member group with everyone online and 1% changing per tick, two ways, same run:
//!
//! - **full**: every member sees every other member's presence (the group as a clique of
//!   friends, 499,500 friendships): each change goes to 999 sessions;
//! - **counts+20**: no friendships; every session watches the group (`watch_group`) with
//!   counts and 20 members drawn at random: each change moves the counts (one
//!   `group_counts` entry for each of the 1,000 sessions, one frame a tick) and reaches the
//!   ~20 sessions watching that member.
//!
//! Each tick 10 members toggle between available and invisible (visible: online ↔ offline),
//! then the node's tick runs (`Service::on_tick`: the engine's tick, rendering, the hand-out
//! to outboxes, the counts) and every woken session renders its frames
//! (`Service::on_outbox`), as the node's connection tasks do before writing. Timed: the
//! status messages, the tick and the outbox renders, on this thread: the node's CPU for the
//! tick minus the socket writes. Reported a tick: time, presence entries + count entries
//! delivered, frames and bytes; and the ratio of the two. Interleaved at the end (one tick
//! of each in turn, `PRESENCE_BENCH_ROUNDS`, default 200) for a fair comparison on a
//! machine whose load drifts.
//!
//! `cargo bench -p presence-node --bench big_group`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use presence_node::config::{NodeConfig, ServeArgs};
use presence_node::service::{Effects, Received, Service, Session};
use serde_json::json;

const MEMBERS: usize = 1_000;
const CHANGES: usize = 10;
const WATCHED: usize = 20;
const T0: u64 = 1_796_083_200_000;

#[derive(Clone, Copy, Default)]
struct Sample {
    ticks: u64,
    time: Duration,
    entries: u64,
    frames: u64,
    bytes: u64,
}

struct Variant {
    name: &'static str,
    svc: Service,
    _dir: tempfile::TempDir,
    sessions: Vec<Session>,
    invisible: Vec<bool>,
    now: u64,
    next: usize,
    samples: Sample,
}

fn name(i: usize) -> String {
    format!("m{i:04}")
}

/// Runs effects as the driver does, store reads inline; returns the frames.
fn run(svc: &Service, s: &mut Session, mut fx: Effects, now: u64) -> Vec<Bytes> {
    let mut frames = Vec::new();
    for _ in 0..100 {
        frames.append(&mut fx.frames);
        let Some(read) = fx.read.take() else {
            break;
        };
        let result = svc.read(*read);
        fx = svc.on_read(s, result, now);
    }
    frames
}

fn frame(v: serde_json::Value) -> Result<Option<Received>, presence_node::service::RecvError> {
    Ok(Some(Received::Frame(Bytes::from(v.to_string()))))
}

impl Variant {
    fn build(name_: &'static str, counts: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = NodeConfig::resolve(&ServeArgs::default()).expect("defaults");
        cfg.data_dir = dir.path().to_owned();
        cfg.heartbeat_timeout = Duration::from_secs(3_600);
        let svc = Service::open(cfg, b"secret".to_vec(), "key".into(), None, T0).expect("open");
        let members: Vec<String> = (0..MEMBERS).map(name).collect();
        let write = |w| {
            svc.graph_store().write(&w).expect("durable");
            let _ = svc.apply_graph_write(w);
        };
        if counts {
            write(svc.plan_put_group("big", members.clone()).expect("a group"));
        } else {
            let mut pairs = Vec::new();
            for a in 0..MEMBERS {
                for b in a + 1..MEMBERS {
                    pairs.push((name(a), name(b)));
                }
            }
            for chunk in pairs.chunks(50_000) {
                write(svc.plan_friendships(chunk, &[]).expect("friendships"));
            }
        }
        let _ = svc.on_tick(T0);
        let mut sessions = Vec::new();
        for m in &members {
            let token = svc.mint_token(m.clone(), 36_000, None, T0).expect("token");
            let hello = json!({"type": "hello", "token": token, "device": "d"});
            let (mut s, fx) = match svc.hello(frame(hello), T0) {
                Ok(x) => x,
                Err(_) => panic!("hello refused"),
            };
            run(&svc, &mut s, fx, T0);
            sessions.push(s);
        }
        let mut now = T0 + 1;
        let _ = svc.on_tick(now);
        if counts {
            // 20 members each, drawn by a fixed stride walk (deterministic, spread).
            for (i, s) in sessions.iter_mut().enumerate() {
                let watched: Vec<String> = (1..=WATCHED)
                    .map(|k| name((i + k * 37) % MEMBERS))
                    .collect();
                let msg = json!({"type": "watch_group", "group": "big", "members": watched});
                now += 1;
                let fx = svc.on_received(s, frame(msg), now);
                let out = run(&svc, s, fx, now);
                assert!(out.is_empty(), "watch_group refused");
            }
        }
        now += 1;
        let _ = svc.on_tick(now);
        for s in &mut sessions {
            s.handle().outbox.wakeup.try_take();
            let fx = svc.on_outbox(s, now);
            run(&svc, s, fx, now);
        }
        Variant {
            name: name_,
            svc,
            _dir: dir,
            sessions,
            invisible: vec![false; MEMBERS],
            now,
            next: 0,
            samples: Sample::default(),
        }
    }

    fn step(&mut self) -> Sample {
        let t = Instant::now();
        self.now += 1;
        let now = self.now;
        for _ in 0..CHANGES {
            let i = self.next;
            self.next = (self.next + 97) % MEMBERS;
            self.invisible[i] = !self.invisible[i];
            let status = if self.invisible[i] {
                "invisible"
            } else {
                "available"
            };
            let s = &mut self.sessions[i];
            let fx =
                self.svc
                    .on_received(s, frame(json!({"type": "status", "status": status})), now);
            run(&self.svc, s, fx, now);
        }
        let _ = self.svc.on_tick(now);
        let mut written = Vec::new();
        for s in &mut self.sessions {
            if !s.handle().outbox.wakeup.try_take() {
                continue;
            }
            let fx = self.svc.on_outbox(s, now);
            written.extend(run(&self.svc, s, fx, now));
        }
        let mut sample = Sample {
            ticks: 1,
            time: t.elapsed(),
            ..Sample::default()
        };
        // Counted after the clock stopped: entries are a presence frame's changes and a
        // group_counts frame's groups.
        for f in written {
            sample.frames += 1;
            sample.bytes += f.len() as u64;
            let v: serde_json::Value = serde_json::from_slice(&f).unwrap_or_default();
            sample.entries += v["changes"]
                .as_array()
                .or(v["groups"].as_array())
                .map_or(0, |a| a.len() as u64);
        }
        self.samples.ticks += 1;
        self.samples.time += sample.time;
        self.samples.entries += sample.entries;
        self.samples.frames += sample.frames;
        self.samples.bytes += sample.bytes;
        sample
    }
}

fn summary(what: &str, vs: &[(&str, Sample)]) {
    let per = |s: &Sample, x: u64| x as f64 / s.ticks.max(1) as f64;
    let base = vs[0].1;
    let base_us = base.time.as_secs_f64() * 1e6 / base.ticks.max(1) as f64;
    let mut line = format!("big_group summary ({what}):");
    for (name, s) in vs {
        let us = s.time.as_secs_f64() * 1e6 / s.ticks.max(1) as f64;
        line += &format!(
            " {name}: {us:.0} µs/tick, {:.0} entries, {:.0} frames, {:.0} KB a tick \
             ({:.2}x time, {:.3}x entries of {});",
            per(s, s.entries),
            per(s, s.frames),
            per(s, s.bytes) / 1e3,
            us / base_us,
            per(s, s.entries) / per(&base, base.entries).max(1.0),
            vs[0].0,
        );
    }
    eprintln!("{line}");
}

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let mut variants = vec![
        Variant::build("full", false),
        Variant::build("counts+20", true),
    ];
    eprintln!(
        "big_group: {MEMBERS} members online, {CHANGES} changes a tick; set up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut g = c.benchmark_group("big_group");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    for v in &mut variants {
        let n = v.name;
        g.bench_function(n, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| v.step().time).sum())
        });
    }
    g.finish();
    let from_criterion: Vec<(&str, Sample)> =
        variants.iter().map(|v| (v.name, v.samples)).collect();
    summary("criterion samples", &from_criterion);
    let rounds: usize = std::env::var("PRESENCE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut inter = vec![Sample::default(); variants.len()];
    for _ in 0..rounds {
        for (i, v) in variants.iter_mut().enumerate() {
            let s = v.step();
            inter[i].ticks += 1;
            inter[i].time += s.time;
            inter[i].entries += s.entries;
            inter[i].frames += s.frames;
            inter[i].bytes += s.bytes;
        }
    }
    let names: Vec<(&str, Sample)> = variants.iter().map(|v| v.name).zip(inter).collect();
    summary(&format!("interleaved, {rounds} rounds"), &names);
}

criterion_group!(benches, bench);
criterion_main!(benches);
