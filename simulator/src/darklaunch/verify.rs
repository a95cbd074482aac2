//! The truth: a `presence_core::Engine` of the same graph and timing, fed the very events the
//! clients sent (at the wall-clock time they were sent, mapped the way the node maps them:
//! every close is a dropped connection, a status is also activity), ticked at each quiescent
//! point. Views are compared with it friend by friend under the ambiguity rule below.

use std::path::Path;

use anyhow::{Context, Result};
use presence_core::{Config, Disconnect, Engine, Presence, SessionId, State, Status, UserId};
use serde::Serialize;

use super::node::NodeTiming;
use super::proto::ViewOut;

pub const RULE: &str = "At each quiescent point (activity paused, every command flushed to the \
wire, then tick + margin waited) each sampled live client's view (welcome + presence frames \
only) is compared with the truth at check time t, friend by friend. Online/idle vs offline, \
status and text are compared exactly, except for a friend one of whose sessions reaches the end \
of its grace period or its heartbeat expiry within [t - tick - margin, t + margin] (skipped: \
undecidable over a real clock). The idle level (online, idle 1..n) is compared exactly except \
when the friend crosses an idle threshold within that same window (only the level is skipped). \
A client's session starts at the node somewhere between the driver's connect and the welcome's arrival: its boundaries are intervals that long, and meeting the window counts. last_active is not compared (node and driver clocks read it at different instants). Friends \
whose own client failed to connect or was closed by the node are left out (counted).";

pub fn now_ms() -> u64 {
    super::host::now_us() / 1000
}

/// Mismatch counts and examples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyCounts {
    pub checks: u64,
    pub views_compared: u64,
    pub entries_compared: u64,
    /// A field differs (state, idle level, status or text), or shown offline while present.
    pub stale: u64,
    /// A friend absent from the view.
    pub missing: u64,
    /// Shown present while offline in truth, or a user who is no friend at all.
    pub ghost: u64,
    /// The same user twice in one frame (counted by the hosts).
    pub duplicate: u64,
    pub skipped_state: u64,
    pub skipped_idle_level: u64,
    pub skipped_tainted: u64,
    /// Clients that had not caught up when a check began.
    pub flush_behind: u64,
    pub examples: Vec<String>,
    /// Mismatches logged in the current check (a few a check, so late ones show too).
    #[serde(skip)]
    logged_this_check: u64,
}

impl VerifyCounts {
    pub fn failed(&self) -> bool {
        self.stale + self.missing + self.ghost + self.duplicate > 0
    }

    fn note(&mut self, s: String) {
        if self.logged_this_check < 5 {
            self.logged_this_check += 1;
            tracing::warn!(check = self.checks, "{s}");
        }
        if self.examples.len() < 20 {
            self.examples.push(s);
        }
    }
}

pub struct Oracle {
    engine: Engine,
    timing: NodeTiming,
    sessions: Vec<[Option<SessionId>; 3]>,
    last_msg: Vec<[u64; 3]>,
    /// Latest end of a grace period or heartbeat expiry of a session that ended, as an
    /// interval: the node saw the session start up to its connect slack later than the truth.
    end_bound: Vec<(u64, u64)>,
    /// Per session: how much later than its dispatch the client's welcome arrived (the node
    /// started the session somewhere in between); u64::MAX while unknown.
    slack: Vec<[u64; 3]>,
    pub tainted: Vec<bool>,
    last_now: u64,
    pub refused: u64,
}

fn state_code(p: &Presence) -> u8 {
    match p.state {
        State::Offline => 0,
        State::Online => 1,
        State::Idle(l) => 2 + l,
    }
}

fn status_code(p: &Presence) -> u8 {
    if p.state == State::Offline {
        return 0;
    }
    match p.status {
        Status::Available => 1,
        Status::Busy => 2,
        Status::Dnd => 3,
        Status::Invisible => 4,
    }
}

impl Oracle {
    pub fn load(graph: &Path, timing: &NodeTiming, max_friends: u32) -> Result<Self> {
        let cfg = Config {
            idle_thresholds_ms: timing.idle_thresholds_ms.clone(),
            grace_ms: timing.grace_ms,
            heartbeat_timeout_ms: timing.heartbeat_timeout_ms,
            threads: 1,
            max_friends,
            ..Config::default()
        };
        cfg.validate().context("truth engine configuration")?;
        let engine = presence_core::snapshot::load_file(cfg, now_ms(), graph, 64 << 30)
            .with_context(|| format!("loading {} into the truth engine", graph.display()))?;
        let n = engine.user_count();
        Ok(Self {
            engine,
            timing: timing.clone(),
            sessions: vec![[None; 3]; n],
            last_msg: vec![[0; 3]; n],
            end_bound: vec![(0, 0); n],
            slack: vec![[0; 3]; n],
            tainted: vec![false; n],
            last_now: 0,
            refused: 0,
        })
    }

    pub fn users(&self) -> usize {
        self.sessions.len()
    }

    pub fn friends(&self, user: u32) -> Vec<u32> {
        self.engine
            .friends(UserId(user))
            .into_iter()
            .map(|u| u.0)
            .collect()
    }

    fn now(&mut self) -> u64 {
        let t = now_ms().max(self.last_now);
        self.last_now = t;
        t
    }

    pub fn connect(&mut self, user: u32, dev: u8, name: &str) -> bool {
        let now = self.now();
        match self.engine.connect(UserId(user), name, now) {
            Ok(w) => {
                self.sessions[user as usize][dev as usize] = Some(w.session);
                self.last_msg[user as usize][dev as usize] = now;
                self.slack[user as usize][dev as usize] = u64::MAX;
                true
            }
            Err(_) => {
                self.refused += 1;
                false
            }
        }
    }

    /// The client closed the connection: the node sees a dropped connection.
    pub fn close(&mut self, user: u32, dev: u8) {
        let now = self.now();
        if let Some(s) = self.sessions[user as usize][dev as usize].take() {
            let _ = self.engine.disconnect(s, Disconnect::Dropped, now);
            let slack = self.slack[user as usize][dev as usize];
            self.push_end(user, now + self.timing.grace_ms, slack);
        }
    }

    /// The client went silent: only the heartbeat timeout ends the session. The node counts
    /// the transport's signs of life too (WebSocket pongs, QUIC acknowledgements), which the
    /// client gave until now: so the session ends between its last message and now, plus the
    /// timeout.
    pub fn vanish(&mut self, user: u32, dev: u8) {
        if self.sessions[user as usize][dev as usize].take().is_some() {
            let now = self.now();
            let last = self.last_msg[user as usize][dev as usize];
            let exp = last + self.timing.heartbeat_timeout_ms;
            // Still u64::MAX while the welcome has not arrived: unbounded, not an overflow.
            let slack =
                self.slack[user as usize][dev as usize].saturating_add(now.saturating_sub(last));
            self.push_end(user, exp, slack);
        }
    }

    /// The node holding the session died (`kill -9`) at `at`: as a vanished device, the
    /// session ends on the truth's heartbeat expiry, but the cluster may show it until
    /// `decided` (heartbeat timeout + lease TTL + grace after the kill, plus the session's
    /// connect slack): the friend is undecidable until then.
    pub fn lost(&mut self, user: u32, dev: u8, at: u64, decided: u64) {
        if self.sessions[user as usize][dev as usize].take().is_some() {
            let slack = self.slack[user as usize][dev as usize];
            let hi = decided.saturating_add(if slack == u64::MAX { 0 } else { slack });
            self.push_end(user, at, hi.saturating_sub(at));
        }
    }

    /// The latest moment `user`'s sessions that already ended may still show is `until`
    /// (or later, if it already said so).
    pub fn widen_end(&mut self, user: u32, until: u64) {
        let b = &mut self.end_bound[user as usize];
        b.1 = b.1.max(until);
    }

    fn push_end(&mut self, user: u32, at: u64, slack: u64) {
        let b = &mut self.end_bound[user as usize];
        b.0 = b.0.max(at);
        b.1 = b.1.max(at.saturating_add(slack));
    }

    /// The welcome of a session dispatched at `at_ms` arrived now: the node started it
    /// somewhere in between, so its time-driven boundaries are uncertain by that much.
    pub fn connected(&mut self, user: u32, at_ms: u64, dev: Option<u8>) {
        let slack = now_ms().saturating_sub(at_ms);
        if let Some(d) = dev {
            self.slack[user as usize][d as usize] = slack;
        }
        let b = &mut self.end_bound[user as usize];
        if b.1 == u64::MAX {
            b.1 = b.0.saturating_add(slack);
        }
    }

    /// The largest slack among the user's live sessions.
    fn user_slack(&self, user: u32) -> u64 {
        (0..3)
            .filter(|&d| self.sessions[user as usize][d].is_some())
            .map(|d| self.slack[user as usize][d])
            .max()
            .unwrap_or(0)
    }

    /// Returns false when the truth no longer knows the session (it expired).
    pub fn activity(&mut self, user: u32, dev: u8) -> bool {
        let now = self.now();
        let Some(s) = self.sessions[user as usize][dev as usize] else {
            return false;
        };
        self.last_msg[user as usize][dev as usize] = now;
        self.engine.activity(s, now).is_ok()
    }

    pub fn heartbeat(&mut self, user: u32, dev: u8) -> bool {
        let now = self.now();
        let Some(s) = self.sessions[user as usize][dev as usize] else {
            return false;
        };
        self.last_msg[user as usize][dev as usize] = now;
        self.engine.heartbeat(s, now).is_ok()
    }

    /// A `status` message on device `dev`: the status, then activity (as the node does).
    pub fn status(&mut self, user: u32, dev: u8, status: Status, text: Option<&str>) -> bool {
        let now = self.now();
        let Some(s) = self.sessions[user as usize][dev as usize] else {
            return false;
        };
        self.last_msg[user as usize][dev as usize] = now;
        self.engine
            .set_status(UserId(user), status, text, now)
            .is_ok()
            && self.engine.activity(s, now).is_ok()
    }

    /// Forget a session the node closed on its own (its user is tainted from now on).
    pub fn taint(&mut self, user: u32) {
        self.tainted[user as usize] = true;
    }

    /// Compares views with the truth at the current time.
    pub fn check(
        &mut self,
        views: &[(u32, ViewOut)],
        connecting: &std::collections::HashSet<u32>,
        margin_ms: u64,
        counts: &mut VerifyCounts,
    ) -> u64 {
        let t = self.now();
        let _ = self.engine.tick(t);
        counts.checks += 1;
        counts.logged_this_check = 0;
        let lo = t.saturating_sub(self.timing.tick_ms + margin_ms);
        let hi = t + margin_ms;
        // An interval of possible boundary times meets the window.
        let meets = |b0: u64, b1: u64| b0 <= hi && b1 >= lo;
        let thresholds = self.timing.idle_thresholds_ms.clone();
        let mut bad_before = counts.stale + counts.missing + counts.ghost;
        for (watcher, view) in views {
            if self.tainted[*watcher as usize] {
                counts.skipped_tainted += 1;
                continue;
            }
            counts.views_compared += 1;
            let truth = self.engine.friends_presence(UserId(*watcher));
            let mut vi = view.entries.iter().peekable();
            for (f, p) in &truth {
                let f = f.0;
                // Entries in the view before this friend are not friends at all.
                while let Some(e) = vi.peek() {
                    if e.0 >= f {
                        break;
                    }
                    counts.ghost += 1;
                    counts.note(format!("u{watcher} sees u{} who is not a friend", e.0));
                    vi.next();
                }
                let got = match vi.peek() {
                    Some(e) if e.0 == f => vi.next(),
                    _ => None,
                };
                if self.tainted[f as usize] {
                    counts.skipped_tainted += 1;
                    continue;
                }
                let Some(got) = got else {
                    counts.missing += 1;
                    counts.note(format!("u{watcher} is missing friend u{f}"));
                    continue;
                };
                // Sessions of f that may end inside the window.
                let (e0, e1) = self.end_bound[f as usize];
                let mut end_ambiguous = meets(e0, e1);
                for d in 0..3 {
                    let exp = self.last_msg[f as usize][d] + self.timing.heartbeat_timeout_ms;
                    if self.sessions[f as usize][d].is_some()
                        && meets(exp, exp.saturating_add(self.slack[f as usize][d]))
                    {
                        end_ambiguous = true;
                    }
                }
                // A session the node may not have started yet: undecidable.
                if end_ambiguous || connecting.contains(&f) {
                    counts.skipped_state += 1;
                    continue;
                }
                counts.entries_compared += 1;
                let (ts, tst) = (state_code(p), status_code(p));
                let text = if p.state == State::Offline {
                    None
                } else {
                    p.text.as_deref()
                };
                let (vs, vst, vtext) = (got.1, got.2, got.3.as_deref());
                let t_present = ts != 0;
                let v_present = vs != 0;
                if t_present != v_present {
                    if v_present {
                        counts.ghost += 1;
                    } else {
                        counts.stale += 1;
                    }
                    counts.note(format!(
                        "u{watcher} sees u{f} in state {vs}, truth {ts} (0 offline, 1 online, 2+ idle level)"
                    ));
                    continue;
                }
                if tst != vst || text != vtext {
                    counts.stale += 1;
                    counts.note(format!(
                        "u{watcher} sees u{f} with status {vst} text {vtext:?}, truth {tst} {text:?}"
                    ));
                    continue;
                }
                if t_present && ts != vs {
                    let la = p.last_active.unwrap_or(0);
                    let slack = self.user_slack(f);
                    if thresholds
                        .iter()
                        .any(|&th| meets(la + th, (la + th).saturating_add(slack)))
                    {
                        counts.skipped_idle_level += 1;
                        continue;
                    }
                    counts.stale += 1;
                    counts.note(format!(
                        "u{watcher} sees u{f} at level {vs}, truth {ts} (idle for {} ms at the check)",
                        t.saturating_sub(la)
                    ));
                } else if t_present {
                    // Equal, but count the skip rule consistently: nothing to do.
                }
            }
            for e in vi {
                counts.ghost += 1;
                counts.note(format!("u{watcher} sees u{} who is not a friend", e.0));
            }
        }
        bad_before = counts.stale + counts.missing + counts.ghost - bad_before;
        bad_before
    }
}
