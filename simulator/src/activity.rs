//! The activity model: what a population of people does with their devices, as one
//! time-ordered stream of [`Event`]s.
//!
//! The model knows nothing about where events go: the in-process replay feeds them to a
//! `presence_core::Engine`, and a dark-launch driver can feed the very same stream to real
//! network clients. It is deterministic for a seed.
//!
//! Per user:
//! - **Devices.** One to three (phone, laptop, tablet); phones and tablets are mobile.
//! - **Online periods** alternate with offline periods. Period lengths are exponential with a
//!   fixed mean (`mean_session_ms`); offline lengths are exponential with a mean chosen at
//!   logout time from the daily curve, so that the share of people online follows
//!   `peak_online × curve(hour)` (a cosine between `trough` and 1, highest at `peak_hour`).
//!   A period starts on one device; the user's other devices join within two minutes.
//! - **Activity** comes in bursts (an action every ~10 s for ~90 s) separated by idle stretches
//!   (log-normal, median 90 s, heavy tail: about 7% last over 10 minutes, so every idle level
//!   is walked).
//! - **Mobile connections drop** every ~8 minutes and come back after 0.5–4 s (90%, inside
//!   the engine's grace period) or 6–30 s (past it).
//! - **Heartbeats**: every connected session sends one every 30 s ± 3 s, as a real client does
//!   (the engine expires sessions silent for 45 s).
//! - **A period ends** with a logout (83%), a dropped connection that never comes back (12%,
//!   offline after the grace period), or a vanished client (5%: the process died; no event
//!   reaches the server, and only the heartbeat timeout can notice).
//! - **Status**: at login a few people set busy (3%), do-not-disturb (1%) or invisible (0.5%).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use anyhow::{Result, bail};
use presence_core::Status;
use serde::Serialize;

use crate::rng::Rng;

/// Names of the three devices a user may have.
pub const DEVICE_NAMES: [&str; 3] = ["phone", "laptop", "tablet"];
/// Whether each device is mobile (drops and reconnects).
pub const DEVICE_MOBILE: [bool; 3] = [true, false, true];

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Ending {
    /// The connection dropped (the server sees a close; grace applies).
    Dropped,
    /// The user logged out.
    LoggedOut,
    /// The client died silently: nothing reaches the server; only heartbeats stop.
    Vanished,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connect { device: u8 },
    Disconnect { device: u8, how: Ending },
    Activity { device: u8 },
    Heartbeat { device: u8 },
    Status(Status),
}

/// One event of the stream. `at` is virtual milliseconds since the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub at: u64,
    pub user: u32,
    pub kind: EventKind,
}

/// Where events go.
pub trait EventSink {
    fn event(&mut self, ev: &Event);
}

impl<F: FnMut(&Event)> EventSink for F {
    fn event(&mut self, ev: &Event) {
        self(ev)
    }
}

/// Parameters of the model. Durations in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityParams {
    pub users: u32,
    /// Share of users online at the daily peak, in (0, 1].
    pub peak_online: f64,
    /// Hour of the day (0–24) of the peak.
    pub peak_hour: f64,
    /// Hour of the day at virtual time 0.
    pub start_hour: f64,
    /// Online share at the daily trough, relative to the peak.
    pub trough: f64,
    pub mean_session_ms: f64,
    pub heartbeat_ms: u64,
    pub heartbeat_jitter_ms: u64,
    /// Users online at the start log in spread over this window.
    pub warmup_ms: u64,
    pub burst_mean_ms: f64,
    pub action_gap_mean_ms: f64,
    pub idle_median_ms: f64,
    pub idle_sigma: f64,
    pub mobile_drop_mean_ms: f64,
    /// Share of drops that reconnect within the grace period.
    pub quick_reconnect: f64,
    /// Share of period ends that are a logout / a drop that never returns (the rest vanish).
    pub end_logout: f64,
    pub end_drop: f64,
    pub status_busy: f64,
    pub status_dnd: f64,
    pub status_invisible: f64,
    /// Probability of owning 1, 2 or 3 devices.
    pub device_weights: [f64; 3],
}

impl ActivityParams {
    pub fn new(users: u32, peak_online: f64) -> Self {
        Self {
            users,
            peak_online,
            peak_hour: 20.0,
            start_hour: 19.5,
            trough: 0.35,
            mean_session_ms: 25.0 * 60_000.0,
            heartbeat_ms: 30_000,
            heartbeat_jitter_ms: 3_000,
            warmup_ms: 60_000,
            burst_mean_ms: 90_000.0,
            action_gap_mean_ms: 10_000.0,
            idle_median_ms: 90_000.0,
            idle_sigma: 1.3,
            mobile_drop_mean_ms: 8.0 * 60_000.0,
            quick_reconnect: 0.9,
            end_logout: 0.83,
            end_drop: 0.12,
            status_busy: 0.03,
            status_dnd: 0.01,
            status_invisible: 0.005,
            device_weights: [0.5, 0.35, 0.15],
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.users == 0 {
            bail!("the activity model needs at least one user");
        }
        if !(self.peak_online > 0.0 && self.peak_online <= 1.0) {
            bail!(
                "--peak-online must be in (0, 1] (a share of users), got {}",
                self.peak_online
            );
        }
        if !(0.0..24.0).contains(&self.peak_hour) || !(0.0..24.0).contains(&self.start_hour) {
            bail!("hours must be in [0, 24)");
        }
        if !(self.trough > 0.0 && self.trough <= 1.0) {
            bail!("trough must be in (0, 1]");
        }
        if self.heartbeat_ms == 0 || self.heartbeat_jitter_ms >= self.heartbeat_ms {
            bail!("heartbeat interval must be positive and larger than its jitter");
        }
        for (name, v) in [
            ("mean session", self.mean_session_ms),
            ("burst", self.burst_mean_ms),
            ("action gap", self.action_gap_mean_ms),
            ("idle median", self.idle_median_ms),
            ("mobile drop", self.mobile_drop_mean_ms),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} duration must be positive");
            }
        }
        Ok(())
    }

    /// Target share of users online at virtual time `at`.
    pub fn online_share(&self, at: u64) -> f64 {
        let hour = (self.start_hour + at as f64 / 3_600_000.0).rem_euclid(24.0);
        let phase = std::f64::consts::TAU * (hour - self.peak_hour) / 24.0;
        let shape = self.trough + (1.0 - self.trough) * (0.5 + 0.5 * phase.cos());
        (self.peak_online * shape).clamp(1e-6, 1.0)
    }
}

const K_LOGIN: u8 = 0;
const K_LOGOUT: u8 = 1;
const K_ACT: u8 = 2;
const K_HB: u8 = 3;
const K_DROP: u8 = 4;
const K_RECONNECT: u8 = 5;
const K_JOIN: u8 = 6;

/// A scheduled step of one user's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    at: u64,
    seq: u64,
    user: u32,
    kind: u8,
    dev: u8,
    epoch: u16,
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

const BUCKET_MS: u64 = 1000;
const RING: u64 = 4096;

/// A calendar queue: one-second buckets in a ring covering ~68 minutes, the bucket being
/// drained sorted once (descending, so the next step is at the end), a small heap for steps
/// scheduled into the bucket being drained, and a heap for anything further out. Pops in
/// (time, insertion) order. Sorting a whole bucket once is several times cheaper than popping
/// each of its hundreds of thousands of steps off a heap at millions of users.
#[derive(Debug)]
struct Calendar {
    ring: Vec<Vec<Pending>>,
    cur: u64,
    /// Bucket `cur`, sorted descending.
    current: Vec<Pending>,
    /// Steps scheduled into bucket `cur` (or earlier) after it was sorted.
    late: BinaryHeap<Reverse<Pending>>,
    far: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    len: usize,
}

impl Calendar {
    fn new() -> Self {
        Self {
            ring: (0..RING).map(|_| Vec::new()).collect(),
            cur: 0,
            current: Vec::new(),
            late: BinaryHeap::new(),
            far: BinaryHeap::new(),
            seq: 0,
            len: 0,
        }
    }

    fn push(&mut self, mut p: Pending) {
        p.seq = self.seq;
        self.seq += 1;
        self.len += 1;
        let b = p.at / BUCKET_MS;
        if b <= self.cur {
            self.late.push(Reverse(p));
        } else if b < self.cur + RING {
            self.ring[(b % RING) as usize].push(p);
        } else {
            self.far.push(Reverse(p));
        }
    }

    /// The user of the step `ahead` places after the next one in the sorted bucket, if there
    /// is one (a hint for prefetching: steps scheduled later may come first).
    fn peek_user(&self, ahead: usize) -> Option<u32> {
        let i = self.current.len().checked_sub(ahead + 1)?;
        self.current.get(i).map(|p| p.user)
    }

    /// The next pending step with `at < t`, in order.
    fn pop_before(&mut self, t: u64) -> Option<Pending> {
        loop {
            let sorted = self.current.last().copied();
            let late = self.late.peek().map(|Reverse(p)| *p);
            let next = match (sorted, late) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            };
            if let Some(top) = next {
                if top.at >= t {
                    return None;
                }
                self.len -= 1;
                if late.is_some_and(|b| b.seq == top.seq) {
                    self.late.pop();
                } else {
                    self.current.pop();
                }
                return Some(top);
            }
            let next_start = (self.cur + 1) * BUCKET_MS;
            if next_start >= t {
                return None;
            }
            self.cur += 1;
            let slot = (self.cur % RING) as usize;
            // Take the bucket's allocation away with its items: a bucket keeping its capacity
            // would pin a second's worth of events in each of the 4096 slots (gigabytes at a
            // million users). The drained vector's own allocation is reused instead.
            let items = std::mem::take(&mut self.ring[slot]);
            self.current.clear();
            self.current.extend_from_slice(&items);
            drop(items);
            let end = (self.cur + 1) * BUCKET_MS;
            while let Some(Reverse(top)) = self.far.peek() {
                if top.at >= end {
                    break;
                }
                let Some(Reverse(p)) = self.far.pop() else {
                    break;
                };
                let b = p.at / BUCKET_MS;
                if b <= self.cur {
                    self.current.push(p);
                } else {
                    self.ring[(b % RING) as usize].push(p);
                }
            }
            self.current
                .sort_unstable_by_key(|p| Reverse((p.at, p.seq)));
        }
    }
}

/// One user's state in the model.
#[derive(Debug, Clone, Copy, Default)]
struct Agent {
    burst_end: u64,
    epoch: [u16; 3],
    pepoch: u16,
    /// Devices owned (bit per device).
    owned: u8,
    /// Devices connected as far as the client knows (bit per device).
    conn: u8,
    online: bool,
    status: u8,
}

/// Counts of what the model emitted.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ModelCounts {
    pub logins: u64,
    pub logouts: u64,
    pub connects: u64,
    pub drops: u64,
    pub vanished: u64,
    pub activities: u64,
    pub heartbeats: u64,
    pub statuses: u64,
}

/// The activity model.
#[derive(Debug)]
pub struct ActivityModel {
    params: ActivityParams,
    rng: Rng,
    agents: Vec<Agent>,
    cal: Calendar,
    now: u64,
    online: u64,
    sessions: u64,
    counts: ModelCounts,
}

impl ActivityModel {
    pub fn new(params: ActivityParams, seed: u64) -> Result<Self> {
        params.validate()?;
        let mut rng = Rng::derive(seed, 0xAC71, 0);
        let mut cal = Calendar::new();
        let p0 = params.online_share(0);
        let mean_off0 = params.mean_session_ms * (1.0 - p0) / p0;
        let mut agents = vec![Agent::default(); params.users as usize];
        let [w1, w2, _] = params.device_weights;
        for (u, a) in agents.iter_mut().enumerate() {
            let r = rng.f64();
            a.owned = if r < w1 {
                // One device: a phone, or a laptop for a third of single-device people.
                if rng.chance(0.35) { 0b010 } else { 0b001 }
            } else if r < w1 + w2 {
                0b011
            } else {
                0b111
            };
            let at = if rng.chance(p0) {
                rng.below(params.warmup_ms.max(1))
            } else {
                rng.exp(mean_off0) as u64
            };
            cal.push(Pending {
                at,
                seq: 0,
                user: u as u32,
                kind: K_LOGIN,
                dev: 0,
                epoch: 0,
            });
        }
        Ok(Self {
            params,
            rng,
            agents,
            cal,
            now: 0,
            online: 0,
            sessions: 0,
            counts: ModelCounts::default(),
        })
    }

    pub fn params(&self) -> &ActivityParams {
        &self.params
    }

    /// Virtual time reached (every event before it has been emitted).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Users inside an online period.
    pub fn online_users(&self) -> u64 {
        self.online
    }

    /// Sessions the clients believe connected.
    pub fn connected_sessions(&self) -> u64 {
        self.sessions
    }

    pub fn counts(&self) -> ModelCounts {
        self.counts
    }

    /// Number of devices `user` owns.
    pub fn devices_of(&self, user: u32) -> u32 {
        self.agents
            .get(user as usize)
            .map_or(0, |a| a.owned.count_ones())
    }

    /// Steps scheduled and not yet run.
    pub fn pending(&self) -> usize {
        self.cal.len
    }

    /// Emits, in time order, every event before `t`, and moves the clock to `t`.
    pub fn run_until(&mut self, t: u64, sink: &mut impl EventSink) {
        // Each step reads its agent, a cold line at millions of users: the agent of the step
        // a few places ahead is prefetched so those misses overlap.
        const AHEAD: usize = 12;
        while let Some(p) = self.cal.pop_before(t) {
            if let Some(u) = self.cal.peek_user(AHEAD)
                && let Some(a) = self.agents.get(u as usize)
            {
                presence_core::prefetch(a);
            }
            self.now = self.now.max(p.at);
            self.step(p, sink);
        }
        self.now = self.now.max(t);
    }

    fn schedule(&mut self, at: u64, user: u32, kind: u8, dev: u8, epoch: u16) {
        self.cal.push(Pending {
            at,
            seq: 0,
            user,
            kind,
            dev,
            epoch,
        });
    }

    fn emit(sink: &mut impl EventSink, at: u64, user: u32, kind: EventKind) {
        sink.event(&Event { at, user, kind });
    }

    fn step(&mut self, p: Pending, sink: &mut impl EventSink) {
        let t = p.at;
        let u = p.user;
        let a = self.agents[u as usize];
        match p.kind {
            K_LOGIN => {
                if a.online {
                    return;
                }
                self.login(t, u, sink);
            }
            K_LOGOUT if a.online && a.pepoch == p.epoch => self.logout(t, u, sink),
            K_ACT if a.online && a.pepoch == p.epoch => self.act(t, u, sink),
            K_HB => {
                let d = p.dev;
                if a.conn & (1 << d) != 0 && a.epoch[d as usize] == p.epoch {
                    self.counts.heartbeats += 1;
                    Self::emit(sink, t, u, EventKind::Heartbeat { device: d });
                    let next = self.heartbeat_delay();
                    self.schedule(t + next, u, K_HB, d, p.epoch);
                }
            }
            K_DROP => {
                let d = p.dev;
                if a.conn & (1 << d) != 0 && a.epoch[d as usize] == p.epoch {
                    self.counts.drops += 1;
                    Self::emit(
                        sink,
                        t,
                        u,
                        EventKind::Disconnect {
                            device: d,
                            how: Ending::Dropped,
                        },
                    );
                    let ag = &mut self.agents[u as usize];
                    ag.conn &= !(1 << d);
                    ag.epoch[d as usize] = ag.epoch[d as usize].wrapping_add(1);
                    let epoch = ag.epoch[d as usize];
                    self.sessions -= 1;
                    let delay = if self.rng.chance(self.params.quick_reconnect) {
                        self.rng.range(500, 4_000)
                    } else {
                        self.rng.range(6_000, 30_000)
                    };
                    self.schedule(t + delay, u, K_RECONNECT, d, epoch);
                }
            }
            K_RECONNECT => {
                let d = p.dev;
                if a.online && a.conn & (1 << d) == 0 && a.epoch[d as usize] == p.epoch {
                    self.connect(t, u, d, sink);
                }
            }
            K_JOIN => {
                let d = p.dev;
                if a.online && a.pepoch == p.epoch && a.conn & (1 << d) == 0 {
                    self.connect(t, u, d, sink);
                }
            }
            _ => {}
        }
    }

    fn heartbeat_delay(&mut self) -> u64 {
        let j = self.params.heartbeat_jitter_ms;
        self.params.heartbeat_ms - j + self.rng.below(2 * j + 1)
    }

    fn connect(&mut self, t: u64, u: u32, d: u8, sink: &mut impl EventSink) {
        let ag = &mut self.agents[u as usize];
        ag.conn |= 1 << d;
        ag.epoch[d as usize] = ag.epoch[d as usize].wrapping_add(1);
        let epoch = ag.epoch[d as usize];
        self.sessions += 1;
        self.counts.connects += 1;
        Self::emit(sink, t, u, EventKind::Connect { device: d });
        let hb = self.heartbeat_delay();
        self.schedule(t + hb, u, K_HB, d, epoch);
        if DEVICE_MOBILE[d as usize] {
            let drop = self.rng.exp(self.params.mobile_drop_mean_ms) as u64 + 1;
            self.schedule(t + drop, u, K_DROP, d, epoch);
        }
    }

    fn login(&mut self, t: u64, u: u32, sink: &mut impl EventSink) {
        self.online += 1;
        self.counts.logins += 1;
        let pr = &self.params;
        let r = self.rng.f64();
        let status = if r < pr.status_invisible {
            Status::Invisible
        } else if r < pr.status_invisible + pr.status_dnd {
            Status::Dnd
        } else if r < pr.status_invisible + pr.status_dnd + pr.status_busy {
            Status::Busy
        } else {
            Status::Available
        };
        let ag = &mut self.agents[u as usize];
        ag.online = true;
        ag.pepoch = ag.pepoch.wrapping_add(1);
        let pepoch = ag.pepoch;
        let owned = ag.owned;
        if status as u8 != ag.status {
            ag.status = status as u8;
            self.counts.statuses += 1;
            Self::emit(sink, t, u, EventKind::Status(status));
        }
        // Devices for this period: a random non-empty subset of those owned, the first now.
        let devices: Vec<u8> = (0..3u8).filter(|d| owned & (1 << d) != 0).collect();
        let k = 1 + self.rng.below(devices.len() as u64) as usize;
        let first = self.rng.below(devices.len() as u64) as usize;
        self.connect(t, u, devices[first], sink);
        for i in 1..k {
            let d = devices[(first + i) % devices.len()];
            let delay = self.rng.range(500, 120_000);
            self.schedule(t + delay, u, K_JOIN, d, pepoch);
        }
        // Opening the app starts a burst of activity.
        let burst = self.rng.exp(self.params.burst_mean_ms) as u64;
        self.agents[u as usize].burst_end = t + burst;
        let gap = self.rng.exp(self.params.action_gap_mean_ms) as u64 + 1;
        self.schedule(t + gap, u, K_ACT, 0, pepoch);
        let len = self.rng.exp(self.params.mean_session_ms) as u64 + 1;
        self.schedule(t + len, u, K_LOGOUT, 0, pepoch);
    }

    fn act(&mut self, t: u64, u: u32, sink: &mut impl EventSink) {
        let a = self.agents[u as usize];
        if a.conn != 0 {
            let n = a.conn.count_ones() as u64;
            let pick = self.rng.below(n) as usize;
            let d = (0..3u8)
                .filter(|d| a.conn & (1 << d) != 0)
                .nth(pick)
                .unwrap_or(0);
            self.counts.activities += 1;
            Self::emit(sink, t, u, EventKind::Activity { device: d });
        }
        let gap = self.rng.exp(self.params.action_gap_mean_ms) as u64 + 1;
        let next = if t + gap < a.burst_end {
            t + gap
        } else {
            let idle = self
                .rng
                .lognormal(self.params.idle_median_ms, self.params.idle_sigma)
                as u64;
            let start = a.burst_end.max(t) + idle + 1;
            let burst = self.rng.exp(self.params.burst_mean_ms) as u64;
            self.agents[u as usize].burst_end = start + burst;
            start
        };
        self.schedule(next, u, K_ACT, 0, a.pepoch);
    }

    fn logout(&mut self, t: u64, u: u32, sink: &mut impl EventSink) {
        let r = self.rng.f64();
        let how = if r < self.params.end_logout {
            Ending::LoggedOut
        } else if r < self.params.end_logout + self.params.end_drop {
            Ending::Dropped
        } else {
            Ending::Vanished
        };
        let ag = self.agents[u as usize];
        for d in 0..3u8 {
            if ag.conn & (1 << d) != 0 {
                match how {
                    Ending::Dropped => self.counts.drops += 1,
                    Ending::Vanished => self.counts.vanished += 1,
                    Ending::LoggedOut => {}
                }
                Self::emit(sink, t, u, EventKind::Disconnect { device: d, how });
                self.sessions -= 1;
            }
        }
        self.counts.logouts += 1;
        self.online -= 1;
        let share = self.params.online_share(t);
        let mean_off = self.params.mean_session_ms * (1.0 - share) / share;
        let ag = &mut self.agents[u as usize];
        ag.conn = 0;
        ag.online = false;
        for g in &mut ag.epoch {
            *g = g.wrapping_add(1);
        }
        ag.pepoch = ag.pepoch.wrapping_add(1);
        let pepoch = ag.pepoch;
        let off = self.rng.exp(mean_off) as u64 + 1_000;
        self.schedule(t + off, u, K_LOGIN, 0, pepoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_pops_in_time_order_across_buckets_and_far_heap() {
        let mut c = Calendar::new();
        let mut r = Rng::new(4);
        let mut ats: Vec<u64> = (0..5000).map(|_| r.below(10_000_000)).collect();
        for &at in &ats {
            c.push(Pending {
                at,
                seq: 0,
                user: 0,
                kind: 0,
                dev: 0,
                epoch: 0,
            });
        }
        ats.sort_unstable();
        let mut out = Vec::new();
        let mut t = 0;
        while out.len() < ats.len() {
            t += 777;
            while let Some(p) = c.pop_before(t) {
                assert!(p.at < t);
                out.push(p.at);
            }
        }
        assert_eq!(out, ats);
    }

    #[test]
    fn stream_is_time_ordered_and_deterministic() {
        let run = || {
            let mut m = ActivityModel::new(ActivityParams::new(500, 0.5), 3).unwrap();
            let mut evs = Vec::new();
            m.run_until(600_000, &mut |e: &Event| evs.push(*e));
            evs
        };
        let a = run();
        assert!(a.len() > 1000);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(a, run());
    }
}
