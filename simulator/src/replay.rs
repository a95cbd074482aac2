//! In-process replay: the activity model drives a `presence_core::Engine` at accelerated
//! virtual time, tick by tick, while the replay measures throughput, tick times and memory,
//! optionally verifies sampled watchers' views against the truth, and counts what two other
//! fan-out policies would have sent for the same activity.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use presence_core::snapshot;
use presence_core::{
    Batch, Change, Config, Disconnect, Engine, Presence, SessionId, State, UserId,
};

use crate::activity::{
    ActivityModel, ActivityParams, DEVICE_NAMES, Ending, Event, EventKind, EventSink, ModelCounts,
};
use crate::policies::PolicyTick;
use crate::report::{
    FootprintOut, LoadOut, MemoryOut, PolicyOut, RateSet, ReplayConfigOut, ReplayReport, Sample,
    TickTimeOut, Totals, VerifyOut,
};
use crate::rng::Rng;
use crate::util;

/// Engine time (ms since the epoch) of virtual midnight: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Rates "after warm-up" leave out this much virtual time from the start.
pub const WARMUP_MS: u64 = 120_000;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayParams {
    pub graph: PathBuf,
    pub duration_ms: u64,
    pub tick_ms: u64,
    pub peak_online: f64,
    pub seed: u64,
    pub verify: bool,
    pub sample_watchers: usize,
    pub policies: bool,
    /// Hour of the day at the start; by default the run is centred on the peak.
    pub start_hour: Option<f64>,
    pub peak_hour: f64,
    pub threads: usize,
    pub shards: usize,
    pub max_friends: u32,
    pub max_snapshot_bytes: u64,
    pub progress: bool,
    /// Log every event of this user (debugging).
    pub trace_user: Option<u32>,
    /// Back the big tables with transparent huge pages once they are built (see
    /// [`crate::hugepages`]).
    pub huge_pages: bool,
}

impl ReplayParams {
    pub fn new(graph: PathBuf) -> Self {
        Self {
            graph,
            duration_ms: 3_600_000,
            tick_ms: 200,
            peak_online: 0.3,
            seed: 1,
            verify: false,
            sample_watchers: 100,
            policies: false,
            start_hour: None,
            peak_hour: 20.0,
            threads: 2,
            shards: 16,
            max_friends: 5000,
            max_snapshot_bytes: 64 << 30,
            progress: false,
            trace_user: None,
            huge_pages: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.duration_ms == 0 {
            bail!("--duration must be positive");
        }
        if self.tick_ms == 0 {
            bail!("--tick must be positive");
        }
        if self.tick_ms > self.duration_ms {
            bail!(
                "--tick ({}) is longer than --duration ({})",
                util::fmt_ms(self.tick_ms),
                util::fmt_ms(self.duration_ms)
            );
        }
        if self.duration_ms / self.tick_ms > 50_000_000 {
            bail!("--duration / --tick is over 50 million ticks: use a longer tick");
        }
        if !(self.peak_online > 0.0 && self.peak_online <= 1.0) {
            bail!(
                "--peak-online must be in (0, 1] (a share of users), got {}",
                self.peak_online
            );
        }
        if let Some(h) = self.start_hour
            && !(0.0..24.0).contains(&h)
        {
            bail!("--start-hour must be in [0, 24), got {h}");
        }
        if !(0.0..24.0).contains(&self.peak_hour) {
            bail!("--peak-hour must be in [0, 24)");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        Ok(())
    }

    fn start_hour(&self) -> f64 {
        self.start_hour.unwrap_or_else(|| {
            (self.peak_hour - self.duration_ms as f64 / 7_200_000.0).rem_euclid(24.0)
        })
    }
}

/// A sampled watcher's view, built only from its welcome and later batches.
#[derive(Debug, Clone)]
struct View {
    tick: u64,
    friends: Vec<(UserId, Presence)>,
}

#[derive(Debug, Default)]
struct Verifier {
    watchers: Vec<u32>,
    views: Vec<Option<View>>,
    checks: u64,
    mismatches: u64,
    welcome_checks: u64,
    welcome_mismatches: u64,
    views_started: u64,
    ghost_checks: u64,
    ghosts: u64,
    examples: Vec<String>,
}

impl Verifier {
    fn slot(&self, user: u32) -> Option<usize> {
        self.watchers.binary_search(&user).ok()
    }

    fn note(&mut self, msg: String) {
        if self.examples.len() < 10 {
            tracing::warn!("{msg}");
            self.examples.push(msg);
        }
    }
}

fn apply_diff(view: &mut View, batch: &Batch, watcher: UserId) {
    for &item in batch.diff_of(watcher) {
        let (f, change) = batch.entry(item);
        let pos = view.friends.binary_search_by_key(f, |(id, _)| *id);
        match (change, pos) {
            (Change::Presence(p), Ok(i)) => view.friends[i].1 = p.clone(),
            (Change::Presence(p), Err(i)) => view.friends.insert(i, (*f, p.clone())),
            (Change::Removed, Ok(i)) => {
                view.friends.remove(i);
            }
            (Change::Removed, Err(_)) => {}
        }
    }
    view.tick = batch.tick;
}

/// Counts of engine calls refused (none are expected).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct EngineErrors {
    pub connect: u64,
    pub disconnect: u64,
    pub activity: u64,
    pub heartbeat: u64,
    pub status: u64,
    /// Events for a device the replay had no session for.
    pub no_session: u64,
}

impl EngineErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.disconnect + self.activity + self.heartbeat + self.status
    }
}

/// The sink that applies model events to the engine.
struct Driver<'e> {
    engine: &'e Engine,
    base: u64,
    sessions: Vec<[Option<SessionId>; 3]>,
    errors: EngineErrors,
    error_examples: Vec<String>,
    events: u64,
    /// The users of this tick's activity events, for the policy counts (`--policies`).
    activity_users: Option<Vec<u32>>,
    verify: Option<Verifier>,
    /// Users whose last session vanished: (time by which they must look offline, user,
    /// the user's connect count then).
    ghosts_due: std::collections::VecDeque<(u64, u32, u32)>,
    /// Connects per user (a ghost check is skipped if the user came back since).
    connects: Vec<u32>,
    /// Log every event of this user.
    trace_user: Option<u32>,
    logins: u64,
    /// Wall time of the sampled full `connect` calls (welcome snapshot included).
    welcome_hist: Histogram<u64>,
}

/// One tick's worth of events from the activity model, with its counts at the tick's end.
struct TickEvents {
    events: Vec<Event>,
    sessions: u64,
    online: u64,
}

/// One login in this many builds and times the full welcome snapshot; the others start their
/// session with `Engine::connect_bare` (no client is there to read a snapshot).
pub const WELCOME_SAMPLE_EVERY: u64 = 64;

impl Driver<'_> {
    fn error(&mut self, what: &str, ev: &Event, e: &dyn std::fmt::Display) {
        if self.error_examples.len() < 10 {
            let msg = format!("{what} at {} ms for user {}: {e}", ev.at, ev.user);
            tracing::warn!("{msg}");
            self.error_examples.push(msg);
        }
    }

    /// Applies a tick's events in order. At ten million users each event's lines (this
    /// driver's session table, the engine's session and user) are cold: they are prefetched a
    /// few events ahead so the misses overlap (about halves the time per event at 10 M users).
    fn apply(&mut self, events: &[Event]) {
        const AHEAD_TABLE: usize = 16;
        const AHEAD_ENGINE: usize = 8;
        for (i, ev) in events.iter().enumerate() {
            if let Some(next) = events.get(i + AHEAD_TABLE)
                && let Some(slots) = self.sessions.get(next.user as usize)
            {
                presence_core::prefetch(slots);
            }
            if let Some(next) = events.get(i + AHEAD_ENGINE) {
                self.prefetch_engine(next);
            }
            self.event(ev);
        }
    }

    fn prefetch_engine(&self, ev: &Event) {
        let device = match ev.kind {
            EventKind::Activity { device }
            | EventKind::Heartbeat { device }
            | EventKind::Disconnect { device, .. } => device,
            EventKind::Connect { .. } | EventKind::Status(_) => {
                self.engine.prefetch_user(UserId(ev.user));
                return;
            }
        };
        if let Some(Some(sid)) = self
            .sessions
            .get(ev.user as usize)
            .and_then(|slots| slots.get(device as usize))
        {
            self.engine.prefetch_session(*sid);
        }
    }

    fn connected(&self, user: u32) -> bool {
        self.sessions[user as usize].iter().any(Option::is_some)
    }
}

impl EventSink for Driver<'_> {
    fn event(&mut self, ev: &Event) {
        self.events += 1;
        let now = self.base + ev.at;
        let u = ev.user;
        if self.trace_user == Some(u) {
            tracing::info!(at_ms = ev.at, kind = ?ev.kind, "trace");
        }
        match ev.kind {
            EventKind::Connect { device } => {
                self.connects[u as usize] = self.connects[u as usize].wrapping_add(1);
                let was_connected = self.connected(u);
                let device_name = DEVICE_NAMES[device as usize];
                let watched = self.verify.as_ref().is_some_and(|v| v.slot(u).is_some());
                self.logins += 1;
                let sampled = self.logins.is_multiple_of(WELCOME_SAMPLE_EVERY);
                if !watched && !sampled {
                    // The welcome snapshot is built only where it is looked at (verified
                    // watchers) or timed (every WELCOME_SAMPLE_EVERY-th login).
                    match self.engine.connect_bare(UserId(u), device_name, now) {
                        Ok((session, _)) => {
                            self.sessions[u as usize][device as usize] = Some(session);
                        }
                        Err(e) => {
                            self.errors.connect += 1;
                            self.error("connect", ev, &e);
                        }
                    }
                    return;
                }
                let t0 = Instant::now();
                let res = self.engine.connect(UserId(u), device_name, now);
                if sampled {
                    self.welcome_hist
                        .record(t0.elapsed().as_nanos().max(1) as u64)
                        .ok();
                }
                match res {
                    Ok(welcome) => {
                        self.sessions[u as usize][device as usize] = Some(welcome.session);
                        if let Some(v) = self.verify.as_mut()
                            && let Some(i) = v.slot(u)
                        {
                            match (&v.views[i], was_connected) {
                                (Some(view), true) if view.tick == welcome.tick => {
                                    v.welcome_checks += 1;
                                    if view.friends != welcome.friends {
                                        v.welcome_mismatches += 1;
                                        let msg = format!(
                                            "welcome of a second device of user {u} at tick {} differs from the view kept from diffs",
                                            welcome.tick
                                        );
                                        v.note(msg);
                                    }
                                }
                                _ => {
                                    v.views_started += 1;
                                    v.views[i] = Some(View {
                                        tick: welcome.tick,
                                        friends: welcome.friends,
                                    });
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.errors.connect += 1;
                        self.error("connect", ev, &e);
                    }
                }
            }
            EventKind::Disconnect { device, how } => {
                let Some(sid) = self.sessions[u as usize][device as usize].take() else {
                    self.errors.no_session += 1;
                    return;
                };
                let res = match how {
                    Ending::Dropped => self.engine.disconnect(sid, Disconnect::Dropped, now),
                    Ending::LoggedOut => self.engine.disconnect(sid, Disconnect::LoggedOut, now),
                    Ending::Vanished => Ok(()),
                };
                if let Err(e) = res {
                    self.errors.disconnect += 1;
                    self.error("disconnect", ev, &e);
                }
                if !self.connected(u) {
                    if let Some(v) = self.verify.as_mut()
                        && let Some(i) = v.slot(u)
                    {
                        v.views[i] = None;
                    }
                    if how == Ending::Vanished {
                        // No ghost: offline once the heartbeat timeout has passed.
                        let due = ev.at + self.engine.config().heartbeat_timeout_ms;
                        self.ghosts_due
                            .push_back((due, u, self.connects[u as usize]));
                    }
                }
            }
            EventKind::Activity { device } => {
                let Some(sid) = self.sessions[u as usize][device as usize] else {
                    self.errors.no_session += 1;
                    return;
                };
                if let Err(e) = self.engine.activity(sid, now) {
                    self.errors.activity += 1;
                    self.error("activity", ev, &e);
                }
                if let Some(users) = self.activity_users.as_mut() {
                    users.push(u);
                }
            }
            EventKind::Heartbeat { device } => {
                let Some(sid) = self.sessions[u as usize][device as usize] else {
                    self.errors.no_session += 1;
                    return;
                };
                if let Err(e) = self.engine.heartbeat(sid, now) {
                    self.errors.heartbeat += 1;
                    self.error("heartbeat", ev, &e);
                }
            }
            EventKind::Status(s) => {
                if let Err(e) = self.engine.set_status(UserId(u), s, None, now) {
                    self.errors.status += 1;
                    self.error("status", ev, &e);
                }
            }
        }
    }
}

/// Per-window accumulators for the time series.
#[derive(Debug, Default, Clone)]
struct Window {
    ticks: u64,
    transitions: u64,
    entries: u64,
    frames: u64,
    events: u64,
    tick_ns_sum: u64,
    tick_ns_max: u64,
}

/// Totals over a span of the run.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    ms: u64,
    transitions: u64,
    entries: u64,
    frames: u64,
    a_entries: u64,
    b_entries: u64,
    events: u64,
}

impl Span {
    fn rates(&self) -> RateSet {
        let s = (self.ms as f64 / 1000.0).max(1e-9);
        RateSet {
            virtual_seconds: self.ms as f64 / 1000.0,
            transitions_per_s: self.transitions as f64 / s,
            entries_per_s: self.entries as f64 / s,
            frames_per_s: self.frames as f64 / s,
            entries_per_transition: if self.transitions > 0 {
                self.entries as f64 / self.transitions as f64
            } else {
                0.0
            },
            events_per_s: self.events as f64 / s,
        }
    }
}

fn footprint_out(engine: &Engine) -> FootprintOut {
    engine.footprint().into()
}

fn tick_time_out(h: &Histogram<u64>) -> TickTimeOut {
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut buckets = Vec::new();
    if !h.is_empty() {
        let mut lo = 1_000u64; // 1 µs
        while lo <= h.max() {
            let hi = lo * 2;
            let c = h.count_between(lo, hi.saturating_sub(1));
            buckets.push((us(lo), us(hi), c));
            lo = hi;
        }
        let below = h.count_between(0, 999);
        if below > 0 {
            buckets.insert(0, (0.0, 1.0, below));
        }
    }
    TickTimeOut {
        count: h.len(),
        mean_us: us(h.mean() as u64),
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        buckets,
    }
}

/// Runs the replay, phase by phase: load the graph into an engine, set up the model and the
/// watchers to verify, back the tables with huge pages, replay the ticks, fold in the policy
/// counts, report.
pub fn run(params: &ReplayParams) -> Result<ReplayReport> {
    params.validate()?;
    let wall = Instant::now();
    let cfg = engine_config(params)?;
    let start_hour = params.start_hour();
    let base = EPOCH_MS + (start_hour * 3_600_000.0) as u64;
    let loaded = load_engine(params, &cfg, base)?;
    let engine = &loaded.engine;
    let users = engine.user_count();
    let users_u32 = u32::try_from(users).context("too many users")?;

    let mut ap = ActivityParams::new(users_u32, params.peak_online);
    ap.start_hour = start_hour;
    ap.peak_hour = params.peak_hour;
    let model = ActivityModel::new(ap.clone(), params.seed)?;
    let mut driver = Driver {
        engine,
        base,
        sessions: vec![[None; 3]; users],
        errors: EngineErrors::default(),
        error_examples: Vec::new(),
        events: 0,
        activity_users: None,
        verify: pick_watchers(params, users),
        ghosts_due: std::collections::VecDeque::new(),
        connects: vec![0; users],
        trace_user: params.trace_user,
        logins: 0,
        welcome_hist: Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
            .context("histogram")?,
    };
    let mut tally = Tally::new(params, &cfg, users, loaded.footprint)?;
    let huge_pages = params.huge_pages.then(advise_huge_pages);

    let (model_counts, policy_ticks) = replay_ticks(params, &mut driver, &mut tally, model)?;
    if let Some(per_tick) = &policy_ticks {
        tally.add_policy_counts(per_tick, params.tick_ms);
    }
    let wall_seconds = wall.elapsed().as_secs_f64();
    let report = report(
        params,
        &cfg,
        &loaded,
        &mut driver,
        tally,
        ReplayFacts {
            start_hour,
            activity: ap,
            model: model_counts,
            huge_pages,
            wall_seconds,
        },
    );
    drop(driver);
    drop(loaded);
    Ok(report)
}

/// The engine's configuration from the replay's flags.
fn engine_config(params: &ReplayParams) -> Result<Config> {
    let cfg = Config {
        threads: params.threads,
        shards: params.shards,
        max_friends: params.max_friends,
        ..Config::default()
    };
    cfg.validate().context("engine configuration")?;
    Ok(cfg)
}

/// The engine with the graph loaded, and what loading it took.
struct Loaded {
    engine: Engine,
    seconds: f64,
    footprint: FootprintOut,
    mem_before: util::Mem,
    mem_loaded: util::Mem,
}

/// Loads the graph snapshot into a fresh engine whose clock starts at `base`.
fn load_engine(params: &ReplayParams, cfg: &Config, base: u64) -> Result<Loaded> {
    let mem_before = util::mem();
    let sp = if params.progress {
        util::spinner(&format!("loading {}", params.graph.display()))
    } else {
        ProgressBar::hidden()
    };
    let t_load = Instant::now();
    let engine =
        snapshot::load_file(cfg.clone(), base, &params.graph, params.max_snapshot_bytes)
            .with_context(|| format!("cannot load graph snapshot {}", params.graph.display()))?;
    let seconds = t_load.elapsed().as_secs_f64();
    sp.finish_and_clear();
    let users = engine.user_count();
    if users == 0 {
        bail!("the graph {} has no users", params.graph.display());
    }
    let footprint = footprint_out(&engine);
    let mem_loaded = util::mem();
    tracing::info!(
        users,
        edges = footprint.edges,
        secs = seconds,
        rss_mib = util::mib(mem_loaded.rss),
        "graph loaded"
    );
    Ok(Loaded {
        engine,
        seconds,
        footprint,
        mem_before,
        mem_loaded,
    })
}

/// The sampled watchers whose views are verified (`--verify`): `--sample-watchers` users
/// drawn with the seed, sorted.
fn pick_watchers(params: &ReplayParams, users: usize) -> Option<Verifier> {
    if !params.verify {
        return None;
    }
    let n = params.sample_watchers.min(users);
    let mut rng = Rng::derive(params.seed, 0x7E21, 0);
    let mut picked: Vec<u32> = if n == users {
        (0..users as u32).collect()
    } else {
        let mut set = std::collections::BTreeSet::new();
        while set.len() < n {
            set.insert(rng.below(users as u64) as u32);
        }
        set.into_iter().collect()
    };
    picked.sort_unstable();
    Some(Verifier {
        views: vec![None; picked.len()],
        watchers: picked,
        ..Verifier::default()
    })
}

/// Backs every big table (graph, engine state, agents, the driver's session table) with
/// huge pages, once they all exist and before the ticks start.
fn advise_huge_pages() -> crate::hugepages::HugePages {
    let h = crate::hugepages::advise_large_mappings(16 << 20);
    tracing::info!(
        mappings = h.mappings,
        advised_mib = util::mib(h.advised_bytes),
        huge_mib_before = util::mib(h.huge_before),
        huge_mib_after = util::mib(h.huge_after),
        secs = h.seconds,
        refused = ?h.refused,
        "huge pages"
    );
    h
}

/// What the replay measures as the ticks go: tick and apply times, the published
/// populations, the spans and the series, expiries, the peak footprint.
struct Tally {
    ticks: u64,
    tick_ms: u64,
    window_ms: u64,
    users: usize,
    hist: Histogram<u64>,
    apply_hist: Histogram<u64>,
    /// Each user's published state (0 offline, 1 online, 2 + level idle).
    pub_state: Vec<u8>,
    /// Users per published state.
    pops: Vec<u64>,
    win: Window,
    series: Vec<Sample>,
    /// The series' windows as tick ranges, for the policy counts filled in at the end.
    series_ticks: Vec<std::ops::RangeInclusive<u64>>,
    window_first: u64,
    whole: Span,
    steady: Span,
    expired_expected: u64,
    expired_unexpected: u64,
    peak_fp: FootprintOut,
    online_share_sum: f64,
    online_share_n: u64,
    last_fp_at: u64,
}

impl Tally {
    fn new(
        params: &ReplayParams,
        cfg: &Config,
        users: usize,
        fp_load: FootprintOut,
    ) -> Result<Self> {
        let levels = cfg.idle_thresholds_ms.len();
        let mut pops = vec![0u64; 2 + levels];
        pops[0] = users as u64;
        let window_ms = {
            let w = (params.duration_ms / 600).max(params.tick_ms).max(1000);
            w.div_ceil(params.tick_ms) * params.tick_ms
        };
        Ok(Tally {
            ticks: params.duration_ms / params.tick_ms,
            tick_ms: params.tick_ms,
            window_ms,
            users,
            hist: Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
                .context("histogram")?,
            apply_hist: Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
                .context("histogram")?,
            pub_state: vec![0u8; users],
            pops,
            win: Window::default(),
            series: Vec::new(),
            series_ticks: Vec::new(),
            window_first: 1,
            whole: Span::default(),
            steady: Span::default(),
            expired_expected: 0,
            expired_unexpected: 0,
            peak_fp: fp_load,
            online_share_sum: 0.0,
            online_share_n: 0,
            last_fp_at: 0,
        })
    }

    /// Sessions the heartbeat timeout expired: expected when the driver had already let go of
    /// them (their client vanished), unexpected otherwise.
    fn expired(&mut self, batch: &Batch, sessions: &mut [[Option<SessionId>; 3]]) {
        for sid in &batch.expired {
            let slots = &mut sessions[sid.user as usize];
            if let Some(s) = slots.iter_mut().find(|s| **s == Some(*sid)) {
                *s = None;
                self.expired_unexpected += 1;
            } else {
                self.expired_expected += 1;
            }
        }
    }

    /// The tick's published states: the populations, and the policy thread's input.
    fn publish(&mut self, batch: &Batch, mut policy_tick: Option<&mut PolicyTick>) {
        let published = &batch.entries[..batch.stats.transitions];
        for (i, (uid, change)) in published.iter().enumerate() {
            let Change::Presence(p) = change else {
                continue;
            };
            // Sparse ids: the state bytes a few entries ahead are prefetched.
            if let Some((n, _)) = published.get(i + 8)
                && let Some(s) = self.pub_state.get(n.index())
            {
                presence_core::prefetch(s);
            }
            let u = uid.index();
            let new = match p.state {
                State::Offline => 0u8,
                State::Online => 1,
                State::Idle(l) => 2 + l,
            };
            let old = self.pub_state[u];
            self.pub_state[u] = new;
            if let Some(c) = self.pops.get_mut(old as usize) {
                *c -= 1;
            }
            if let Some(c) = self.pops.get_mut(new as usize) {
                *c += 1;
            }
            if let Some(p) = policy_tick.as_deref_mut() {
                p.published.push(crate::policies::Published {
                    user: uid.0,
                    flip: (old == 0) != (new == 0),
                    offline: new == 0,
                });
            }
        }
    }

    /// Tick `k` (at virtual time `t`) into the spans, the current window of the series (a
    /// sample when the window closes), and the peak footprint.
    fn account(
        &mut self,
        k: u64,
        batch: &Batch,
        events: u64,
        tick_ns: u64,
        step: &TickEvents,
        engine: &Engine,
    ) {
        let t = k * self.tick_ms;
        let users = self.users;
        let transitions = batch.stats.transitions as u64;
        let entries = batch.entry_count() as u64;
        let frames = batch.watchers.len() as u64;
        for span in [&mut self.whole]
            .into_iter()
            .chain((t > WARMUP_MS).then_some(&mut self.steady))
        {
            span.ms += self.tick_ms;
            span.transitions += transitions;
            span.entries += entries;
            span.frames += frames;
            span.events += events;
        }
        if t > WARMUP_MS {
            self.online_share_sum += (users as u64 - self.pops[0]) as f64 / users as f64;
            self.online_share_n += 1;
        }
        let win = &mut self.win;
        win.ticks += 1;
        win.transitions += transitions;
        win.entries += entries;
        win.frames += frames;
        win.events += events;
        win.tick_ns_sum += tick_ns;
        win.tick_ns_max = win.tick_ns_max.max(tick_ns);
        if t.is_multiple_of(self.window_ms) || k == self.ticks {
            let secs = (win.ticks * self.tick_ms) as f64 / 1000.0;
            self.series.push(Sample {
                t_s: t as f64 / 1000.0,
                transitions_per_s: win.transitions as f64 / secs,
                entries_per_s: win.entries as f64 / secs,
                frames_per_s: win.frames as f64 / secs,
                // Filled in from the policy thread's counts at the end.
                policy_a_entries_per_s: 0.0,
                policy_b_entries_per_s: 0.0,
                events_per_s: win.events as f64 / secs,
                tick_mean_us: win.tick_ns_sum as f64 / win.ticks as f64 / 1000.0,
                tick_max_us: win.tick_ns_max as f64 / 1000.0,
                online: self.pops[1],
                idle: self.pops[2..].to_vec(),
                present: users as u64 - self.pops[0],
                live_watchers: batch.stats.live_watchers,
                sessions: step.sessions,
                model_online: step.online,
                rss: util::mem().rss,
            });
            self.series_ticks.push(self.window_first..=k);
            self.window_first = k + 1;
            self.win = Window::default();
        }
        if t - self.last_fp_at >= 60_000 || k == self.ticks {
            self.last_fp_at = t;
            let fp = footprint_out(engine);
            if fp.sessions >= self.peak_fp.sessions {
                self.peak_fp = fp;
            }
        }
    }

    /// The policy counts, tick by tick (index k - 1), into the spans and the series.
    fn add_policy_counts(&mut self, per_tick: &[crate::policies::PolicyCounts], tick_ms: u64) {
        for (i, c) in per_tick.iter().enumerate() {
            let t = (i as u64 + 1) * tick_ms;
            for span in [&mut self.whole]
                .into_iter()
                .chain((t > WARMUP_MS).then_some(&mut self.steady))
            {
                span.a_entries += c.a;
                span.b_entries += c.b;
            }
        }
        for (sample, ks) in self.series.iter_mut().zip(&self.series_ticks) {
            let counts = ks
                .clone()
                .filter_map(|k| per_tick.get(k as usize - 1))
                .fold((0u64, 0u64), |acc, c| (acc.0 + c.a, acc.1 + c.b));
            let secs = ((ks.end() + 1 - ks.start()) * tick_ms) as f64 / 1000.0;
            sample.policy_a_entries_per_s = counts.0 as f64 / secs;
            sample.policy_b_entries_per_s = counts.1 as f64 / secs;
        }
    }
}

impl Driver<'_> {
    /// Verification of the sampled watchers after a tick at virtual time `t`: each view takes
    /// the tick's diff and must equal the truth; users whose client vanished must look offline
    /// once their heartbeat timeout has passed.
    fn verify_tick(&mut self, batch: &Batch, t: u64, tick_ms: u64) {
        let engine = self.engine;
        let Some(v) = self.verify.as_mut() else {
            self.ghosts_due.clear();
            return;
        };
        for i in 0..v.watchers.len() {
            let w = UserId(v.watchers[i]);
            let Some(view) = v.views[i].as_mut() else {
                continue;
            };
            if batch.tick > view.tick {
                apply_diff(view, batch, w);
            }
            let truth = engine.friends_presence(w);
            v.checks += 1;
            if truth != view.friends {
                v.mismatches += 1;
                let wrong = truth
                    .iter()
                    .zip(view.friends.iter())
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("truth {a:?} vs view {b:?}"))
                    .unwrap_or_else(|| {
                        format!(
                            "{} friends in truth, {} in view",
                            truth.len(),
                            view.friends.len()
                        )
                    });
                // Resynchronise so one miss is counted once, not at every later tick.
                view.friends = truth;
                let msg = format!("tick {}: watcher {} view differs: {wrong}", batch.tick, w.0);
                v.note(msg);
            }
        }
        while let Some(&(due, u, connects)) = self.ghosts_due.front() {
            if due + tick_ms > t {
                break;
            }
            self.ghosts_due.pop_front();
            if self.connects[u as usize] != connects {
                continue; // the user came back since: nothing to check
            }
            v.ghost_checks += 1;
            let p = engine.presence(UserId(u));
            if p.state != State::Offline || engine.is_live(UserId(u)) {
                v.ghosts += 1;
                let msg = format!(
                    "user {u} still looks {:?} (live: {}) at {} ms, its client vanished at {} ms",
                    p.state,
                    engine.is_live(UserId(u)),
                    t,
                    due - engine.config().heartbeat_timeout_ms
                );
                v.note(msg);
            }
        }
    }
}

/// Replays every tick: the activity model generates each tick's events one tick ahead on a
/// second thread (event vectors go back for reuse), this thread applies them and runs the
/// engine's tick, then verifies and accounts; the policy thread (`--policies`) counts what
/// the other policies would have sent.
fn replay_ticks(
    params: &ReplayParams,
    driver: &mut Driver<'_>,
    tally: &mut Tally,
    mut model: ActivityModel,
) -> Result<(ModelCounts, Option<Vec<crate::policies::PolicyCounts>>)> {
    let engine = driver.engine;
    let base = driver.base;
    let ticks = tally.ticks;
    let pb = if params.progress {
        util::bar(ticks, "replaying ticks")
    } else {
        ProgressBar::hidden()
    };
    let (ev_tx, ev_rx) = std::sync::mpsc::sync_channel::<TickEvents>(2);
    let (buf_tx, buf_rx) = std::sync::mpsc::channel::<Vec<Event>>();
    let tick_ms = params.tick_ms;
    let out = std::thread::scope(|scope| -> Result<_> {
        let policies = if params.policies {
            Some(
                crate::policies::Policies::spawn(scope, engine, tally.users)
                    .context("starting the policy accounting thread")?,
            )
        } else {
            None
        };
        let generator = scope.spawn(move || {
            for k in 1..=ticks {
                let mut events = buf_rx.try_recv().unwrap_or_default();
                model.run_until(k * tick_ms, &mut |ev: &Event| events.push(*ev));
                let step = TickEvents {
                    events,
                    sessions: model.connected_sessions(),
                    online: model.online_users(),
                };
                if ev_tx.send(step).is_err() {
                    break;
                }
            }
            model.counts()
        });
        for k in 1..=ticks {
            let t = k * tick_ms;
            let events_before = driver.events;
            let mut policy_tick = policies.as_ref().map(|p| p.buffer());
            driver.activity_users = policy_tick
                .as_mut()
                .map(|p| std::mem::take(&mut p.activity));
            // The model runs ahead on its own thread (it never reads the engine): this thread
            // only applies the tick's events and runs the tick.
            let Ok(mut step) = ev_rx.recv() else {
                break;
            };
            let t0 = Instant::now();
            driver.apply(&step.events);
            step.events.clear();
            buf_tx.send(std::mem::take(&mut step.events)).ok();
            tally
                .apply_hist
                .record(t0.elapsed().as_nanos().max(1) as u64)
                .ok();
            let t1 = Instant::now();
            let batch = engine.tick(base + t);
            let tick_ns = (t1.elapsed().as_nanos() as u64).max(1);
            tally.hist.record(tick_ns).ok();

            tally.expired(&batch, &mut driver.sessions);
            tally.publish(&batch, policy_tick.as_mut());
            if let (Some(policies), Some(mut p)) = (policies.as_ref(), policy_tick) {
                p.activity = driver.activity_users.take().unwrap_or_default();
                policies.send(p)?;
            }
            driver.verify_tick(&batch, t, tick_ms);
            tally.account(
                k,
                &batch,
                driver.events - events_before,
                tick_ns,
                &step,
                engine,
            );
            pb.inc(1);
        }
        drop(ev_rx);
        let policy_ticks = policies.map(|p| p.finish()).transpose()?;
        match generator.join() {
            Ok(counts) => Ok((counts, policy_ticks)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })?;
    pb.finish_and_clear();
    Ok(out)
}

/// Facts of the run the report states besides the tallies.
struct ReplayFacts {
    start_hour: f64,
    activity: ActivityParams,
    model: ModelCounts,
    huge_pages: Option<crate::hugepages::HugePages>,
    wall_seconds: f64,
}

/// The report: configuration, load, totals, rates, times, memory, policies, verification,
/// series.
fn report(
    params: &ReplayParams,
    cfg: &Config,
    loaded: &Loaded,
    driver: &mut Driver<'_>,
    tally: Tally,
    facts: ReplayFacts,
) -> ReplayReport {
    let mem_end = util::mem();
    let users = tally.users;
    let (whole, steady, peak_fp) = (tally.whole, tally.steady, tally.peak_fp);
    let fp_load = loaded.footprint;
    let verify = driver.verify.take().map(|v| VerifyOut {
        watchers: v.watchers.len(),
        views_started: v.views_started,
        checks: v.checks,
        mismatches: v.mismatches,
        welcome_checks: v.welcome_checks,
        welcome_mismatches: v.welcome_mismatches,
        ghost_checks: v.ghost_checks,
        ghosts: v.ghosts,
        examples: v.examples,
    });
    let policies = params.policies.then(|| {
        let s = (whole.ms as f64 / 1000.0).max(1e-9);
        let st = (steady.ms as f64 / 1000.0).max(1e-9);
        let a_total = whole.a_entries;
        let b_entries = whole.b_entries;
        vec![
            PolicyOut::new(
                "(a) online/offline + last-active pushed on every activity",
                (a_total, a_total),
                s,
                (steady.a_entries, steady.a_entries),
                st,
            ),
            PolicyOut::new(
                "(b) idle levels, every change pushed at once (no batching)",
                (b_entries, b_entries),
                s,
                (steady.b_entries, steady.b_entries),
                st,
            ),
            PolicyOut::new(
                "(c) idle levels, batched and coalesced per tick (the engine)",
                (whole.entries, whole.frames),
                s,
                (steady.entries, steady.frames),
                st,
            ),
        ]
    });
    let engine_bytes = peak_fp.state_bytes + peak_fp.graph_bytes + peak_fp.interner_bytes;
    let wall_seconds = facts.wall_seconds;
    ReplayReport {
        config: ReplayConfigOut {
            graph: params.graph.display().to_string(),
            users: users as u64,
            edges: fp_load.edges,
            duration_ms: params.duration_ms,
            tick_ms: params.tick_ms,
            peak_online: params.peak_online,
            seed: params.seed,
            start_hour: facts.start_hour,
            peak_hour: params.peak_hour,
            threads: params.threads,
            shards: params.shards,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            grace_ms: cfg.grace_ms,
            idle_thresholds_ms: cfg.idle_thresholds_ms.clone(),
            verify: params.verify,
            sample_watchers: params.sample_watchers,
            policies: params.policies,
            activity: facts.activity,
        },
        load: LoadOut {
            seconds: loaded.seconds,
            footprint: fp_load,
            rss_before: loaded.mem_before.rss,
            rss_after: loaded.mem_loaded.rss,
        },
        totals: Totals {
            ticks: tally.ticks,
            events: driver.events,
            model: facts.model,
            transitions: whole.transitions,
            entries: whole.entries,
            frames: whole.frames,
            expired_vanished: tally.expired_expected,
            expired_unexpected: tally.expired_unexpected,
            engine_errors: driver.errors,
            engine_error_examples: driver.error_examples.clone(),
            wall_seconds,
            speedup: params.duration_ms as f64 / 1000.0 / wall_seconds.max(1e-9),
            mean_present_share_after_warmup: if tally.online_share_n > 0 {
                tally.online_share_sum / tally.online_share_n as f64
            } else {
                0.0
            },
        },
        whole: whole.rates(),
        steady: steady.rates(),
        tick_time: tick_time_out(&tally.hist),
        apply_time: tick_time_out(&tally.apply_hist),
        welcome_time: tick_time_out(&driver.welcome_hist),
        welcome_sample_every: WELCOME_SAMPLE_EVERY,
        memory: MemoryOut {
            peak_rss: mem_end.hwm,
            rss_end: mem_end.rss,
            peak_rss_per_user: mem_end.hwm as f64 / users as f64,
            engine_at_peak: peak_fp,
            engine_bytes_per_user: engine_bytes as f64 / users as f64,
            engine_state_bytes_per_session: if peak_fp.sessions > 0 {
                peak_fp.state_bytes as f64 / peak_fp.sessions as f64
            } else {
                0.0
            },
            graph_bytes_per_edge: peak_fp.graph_bytes as f64 / peak_fp.edges.max(1) as f64,
        },
        huge_pages: facts.huge_pages,
        policies,
        verify,
        idle_levels: cfg
            .idle_thresholds_ms
            .iter()
            .map(|&ms| format!("idle {}", util::fmt_ms(ms)))
            .collect(),
        series: tally.series,
    }
}
