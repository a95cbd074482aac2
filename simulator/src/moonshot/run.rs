//! The replay of one node's tick loop: its users' activity into its engine, the other nodes'
//! frames folded in with `apply_mirrored`, its tick, and its outgoing frames.
//!
//! Two threads, as two sides of the network: the *cluster* thread plays every other node (the
//! activity model over all users, a plain engine that runs the remote users' state machines
//! as their owners would, and the frames those owners send this node); the *node* thread is
//! the node itself, and only its work is timed as the node's.

use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use presence_core::{Change, Config, Engine, Presence, UserId};
use presence_peer::PeerFrame;
use serde::Serialize;

use super::drive::{Driver, Refused};
use super::load::bit;
use super::own::Ownership;
use super::peer::{Encoded, Frames, entry_of, presence_of};
use crate::activity::{ActivityModel, ActivityParams, Event};
use crate::util;

/// What one tick carries from the cluster thread to the node.
struct Step {
    /// Events of the users this node owns.
    events: Vec<Event>,
    /// Frames the other nodes send this node this tick: (sender, frame).
    incoming: Vec<(u8, Encoded)>,
    online: u64,
}

/// Counts over the measured span (after warm-up).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    pub frames: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// What the replay measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunOut {
    pub ticks: u64,
    pub measured_seconds: f64,
    pub incoming: Traffic,
    pub outgoing: Traffic,
    /// Owned users' visible changes (the node's own transitions).
    pub owned_transitions: u64,
    /// Mirrored users' changes applied from peer frames.
    pub mirrored_changes: u64,
    /// Diff entries for this node's watchers.
    pub diff_entries: u64,
    pub events: u64,
    pub welcome_entries: u64,
    pub tick: TickTimes,
    /// The node's whole loop per tick: decode + `apply_mirrored`, events, tick, routing and
    /// encoding of the outgoing frames.
    pub node_loop: TickTimes,
    /// Node thread CPU seconds per simulated second (the engine's tick may add helper
    /// threads, which `tick` wall time includes and this does not).
    pub node_cpu_per_sim_s: f64,
    /// Whole process CPU (the simulated rest of the cluster included) per simulated second.
    pub process_cpu_per_sim_s: f64,
    pub wall_seconds: f64,
    pub sessions_end: u64,
    pub sessions_peak: u64,
    /// Users online in the model (all nodes' users) at the end.
    pub model_online_end: u64,
    pub footprint_end: crate::report::FootprintOut,
    pub rss_end: u64,
    pub rss_peak: u64,
    pub refused_node: Refused,
    pub refused_remote: Refused,
    /// Outgoing frames decoded again and checked (`verify`).
    pub frames_verified: u64,
}

/// Tick time percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct TickTimes {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

fn times(h: &Histogram<u64>) -> TickTimes {
    let us = |ns: u64| ns as f64 / 1000.0;
    TickTimes {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        max_us: us(h.max()),
        mean_us: h.mean() / 1000.0,
    }
}

/// CPU seconds (user + system) from a `/proc/.../stat` file (clock ticks of 1/100 s, Linux's
/// `USER_HZ` everywhere it runs).
fn cpu_seconds(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (get(11) + get(12)) / 100.0
}

/// Run parameters.
#[derive(Debug, Clone, Serialize)]
pub struct RunParams {
    pub warmup_ms: u64,
    pub duration_ms: u64,
    pub tick_ms: u64,
    pub peak_online: f64,
    pub start_hour: f64,
    pub peak_hour: f64,
    pub seed: u64,
    pub verify: bool,
}

fn hist() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram")
}

/// Replays the node's ticks.
pub fn run(
    p: &RunParams,
    node: &Engine,
    own: &Ownership,
    needed: &[u64],
    base: u64,
    remote_cfg: Config,
    progress: bool,
) -> Result<RunOut> {
    let wall = Instant::now();
    let users = own.users();
    // The other nodes' users, each run by its owner: one plain engine stands in for them all.
    let remote = Engine::new(remote_cfg, base).context("remote engine")?;
    let mut name = String::with_capacity(12);
    for id in 0..users {
        use std::fmt::Write;
        name.clear();
        let _ = write!(name, "u{id}");
        remote.intern(&name).context("interning a remote user")?;
    }
    let mut ap = ActivityParams::new(users, p.peak_online);
    ap.start_hour = p.start_hour;
    ap.peak_hour = p.peak_hour;
    let mut model = ActivityModel::new(ap, p.seed)?;
    let ticks = (p.warmup_ms + p.duration_ms) / p.tick_ms;
    let cpu0 = cpu_seconds("/proc/self/stat");
    let (tx, rx) = mpsc::sync_channel::<Step>(2);
    let pb = if progress {
        util::bar(ticks, "node ticks")
    } else {
        indicatif::ProgressBar::hidden()
    };
    std::thread::scope(|scope| -> Result<RunOut> {
        let remote = &remote;
        let cluster = scope.spawn(move || -> Result<Refused> {
            let mut driver = Driver::new(remote, base, false);
            let mut frames: Vec<Frames> = (0..own.nodes).map(|_| Frames::new(own.nodes)).collect();
            let mut all: Vec<Event> = Vec::new();
            for k in 1..=ticks {
                let t = k * p.tick_ms;
                all.clear();
                model.run_until(t, &mut |ev: &Event| all.push(*ev));
                let mut events = Vec::with_capacity(all.len() / 2);
                for ev in &all {
                    if own.owned(ev.user) {
                        events.push(*ev);
                    } else if bit(needed, ev.user) {
                        driver.event(ev);
                    }
                }
                let batch = remote.tick(base + t);
                driver.expired(&batch.expired);
                let changed = &batch.entries[..batch.stats.transitions];
                remote.with_names(|names| {
                    for (uid, change) in changed {
                        let Change::Presence(pr) = change else {
                            continue;
                        };
                        if !bit(needed, uid.0) {
                            continue;
                        }
                        let from = own.node_of(uid.0);
                        let user = names(*uid).unwrap_or_default().to_owned();
                        let (e, text) = entry_of(user, pr);
                        frames[usize::from(from)].push(own.node, own.slot(uid.0), e, text);
                    }
                });
                let mut incoming = Vec::new();
                for (from, f) in frames.iter_mut().enumerate() {
                    for enc in f.finish(k)? {
                        incoming.push((from as u8, enc));
                    }
                }
                let step = Step {
                    events,
                    incoming,
                    online: model.online_users(),
                };
                if tx.send(step).is_err() {
                    break;
                }
            }
            Ok(driver.refused)
        });

        // Owned here: dropped on an early return, which ends the cluster thread's sends.
        let rx = rx;
        let mut driver = Driver::new(node, base, true);
        let mut out_frames = Frames::new(own.nodes);
        let (mut tick_h, mut loop_h) = (hist()?, hist()?);
        let (mut inc, mut outg) = (Traffic::default(), Traffic::default());
        let (mut owned_tr, mut mirrored, mut diff_entries) = (0u64, 0u64, 0u64);
        let (mut sessions_peak, mut verified, mut owned_online) = (0u64, 0u64, 0u64);
        let (mut node_cpu0, mut events0, mut welcome0) = (0.0, 0u64, 0u64);
        let mut routes: Vec<(u32, u8)> = Vec::new();
        let mut updates: Vec<(UserId, Option<Presence>)> = Vec::new();
        for k in 1..=ticks {
            let t = k * p.tick_ms;
            let Ok(step) = rx.recv() else { break };
            let measured = t > p.warmup_ms;
            if k == p.warmup_ms / p.tick_ms + 1 {
                node_cpu0 = cpu_seconds("/proc/thread-self/stat");
                events0 = driver.events;
                welcome0 = driver.welcome_entries;
            }
            let t0 = Instant::now();
            // The frames the peers sent since the last tick, decoded and folded in.
            for (_, enc) in &step.incoming {
                let PeerFrame::Tick { slots, .. } = PeerFrame::decode(&enc.bytes)? else {
                    return Err(anyhow!("a peer sent a frame that is not a tick"));
                };
                updates.clear();
                for su in &slots {
                    let mut texts = su.texts.iter().peekable();
                    for (i, e) in su.entries.iter().enumerate() {
                        let text = texts
                            .next_if(|(j, _)| *j as usize == i)
                            .map(|(_, t)| t.as_str());
                        let uid = node
                            .lookup(&e.user)
                            .ok_or_else(|| anyhow!("peer sent unknown user {}", e.user))?;
                        updates.push((uid, Some(presence_of(e, text)?)));
                    }
                }
                node.apply_mirrored(&updates, base + t)
                    .context("applying a peer frame")?;
                if measured {
                    inc.frames += 1;
                    inc.entries += updates.len() as u64;
                    inc.bytes += enc.bytes.len() as u64;
                    mirrored += updates.len() as u64;
                }
            }
            for ev in &step.events {
                driver.event(ev);
            }
            let t1 = Instant::now();
            let batch = node.tick(base + t);
            let tick_ns = t1.elapsed().as_nanos().max(1) as u64;
            driver.expired(&batch.expired);
            // Route each owned change to the nodes hosting the user's remote friends.
            routes.clear();
            let out_users = batch.outgoing.iter().map(|&i| batch.entry(i).0);
            node.for_each_remote_friend(out_users, |u, f| routes.push((u.0, own.node_of(f.0))));
            routes.sort_unstable();
            routes.dedup();
            node.with_names(|names| {
                for &(u, to) in &routes {
                    let Some(i) = batch
                        .outgoing
                        .binary_search_by_key(&u, |&i| batch.entry(i).0.0)
                        .ok()
                    else {
                        continue;
                    };
                    let (_, Change::Presence(pr)) = batch.entry(batch.outgoing[i]) else {
                        continue;
                    };
                    let user = names(UserId(u)).unwrap_or_default().to_owned();
                    let (e, text) = entry_of(user, pr);
                    out_frames.push(to, own.slot(u), e, text);
                }
            });
            let sent = out_frames.finish(k)?;
            let loop_ns = t0.elapsed().as_nanos().max(1) as u64;
            if p.verify {
                for enc in &sent {
                    let PeerFrame::Tick { slots, .. } = PeerFrame::decode(&enc.bytes)? else {
                        return Err(anyhow!("encoded a frame that is not a tick"));
                    };
                    let n: u64 = slots.iter().map(|s| s.entries.len() as u64).sum();
                    if n != enc.entries {
                        return Err(anyhow!("frame to n{} lost entries", enc.to));
                    }
                    verified += 1;
                }
            }
            let sessions = driver.open_sessions() as u64;
            sessions_peak = sessions_peak.max(sessions);
            owned_online = step.online;
            if measured {
                tick_h.record(tick_ns).ok();
                loop_h.record(loop_ns).ok();
                owned_tr += batch.outgoing.len() as u64;
                diff_entries += batch.entry_count() as u64;
                for enc in &sent {
                    outg.frames += 1;
                    outg.entries += enc.entries;
                    outg.bytes += enc.bytes.len() as u64;
                }
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let node_cpu = cpu_seconds("/proc/thread-self/stat") - node_cpu0;
        drop(rx);
        let refused_remote = cluster
            .join()
            .map_err(|_| anyhow!("the cluster thread panicked"))??;
        let measured_seconds = p.duration_ms as f64 / 1000.0;
        let mem = util::mem();
        Ok(RunOut {
            ticks,
            measured_seconds,
            incoming: inc,
            outgoing: outg,
            owned_transitions: owned_tr,
            mirrored_changes: mirrored,
            diff_entries,
            events: driver.events - events0,
            welcome_entries: driver.welcome_entries - welcome0,
            tick: times(&tick_h),
            node_loop: times(&loop_h),
            node_cpu_per_sim_s: node_cpu / measured_seconds,
            process_cpu_per_sim_s: (cpu_seconds("/proc/self/stat") - cpu0)
                / ((p.warmup_ms + p.duration_ms) as f64 / 1000.0),
            wall_seconds: wall.elapsed().as_secs_f64(),
            sessions_end: driver.open_sessions() as u64,
            sessions_peak,
            model_online_end: owned_online,
            footprint_end: node.footprint().into(),
            rss_end: mem.rss,
            rss_peak: mem.hwm,
            refused_node: driver.refused,
            refused_remote,
            frames_verified: verified,
        })
    })
}
