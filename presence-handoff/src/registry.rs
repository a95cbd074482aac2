//! The live sessions by user, what the tick and the chat delivery hand frames to, here rather
//! than in the node so that loom can model registering against the tick (`tests/loom.rs`).
//!
//! Striped over [`SHARDS`] mutexes by user id. [`Registry::register`] runs the engine's
//! `connect` under the user's stripe lock and registers the session before letting go, and
//! [`Registry::hand_out`] takes the same lock for each watcher: a tick's hand-out either comes
//! first (and its batch is at or before the welcome's tick) or sees the session, so a session
//! is handed exactly the batches after its welcome.
//!
//! **Pacing.** With engine ticks a fraction of the batching period (`every` engine ticks a
//! period), [`Registry::hand_out`] wakes each watcher's sessions for presence at most once a
//! period: a watcher woken less than `every` ticks ago has its diffs *held* here, merged
//! latest per friend, and handed out together at its next free tick. An isolated change still
//! leaves at the next engine tick, and the watchers' frames spread over the period instead of
//! all leaving at its start. Holding here rather than in each session's outbox keeps a held
//! diff off the session's handle and outbox (cache lines its I/O thread owns): a held tick
//! costs the tick thread a map lookup and a merge, not a hand-out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use presence_core::{Batch, SessionId, UserId, Welcome};
use rustc_hash::FxHashMap;

use crate::outbox::{CloseReason, Outbox};
use crate::sync::{Mutex, MutexGuard};
use crate::view::View;

static DEFAULT_VIEW: View = View {
    focus: None,
    groups: Vec::new(),
};

/// Stripes of the registry.
pub const SHARDS: usize = 64;

/// One open session as the tick and the chat delivery see it.
pub struct SessionHandle {
    pub sid: SessionId,
    /// Hand this session the batches of later ticks only.
    pub welcome_tick: u64,
    pub outbox: Outbox,
    /// The session's focus and watched groups: changed only under the user's stripe lock
    /// (with [`Registry::with_sessions`]), so the hand-out sees each change whole.
    view: Mutex<Option<Box<Extras>>>,
    /// Whether `view` is not the default (read by the hand-out without the view's lock; set
    /// under the stripe lock it holds).
    narrowed: AtomicBool,
}

/// What a session holds beyond the default, boxed: most sessions focus on nothing and
/// watch no group, and an idle session's handle is kept small.
#[derive(Default)]
struct Extras {
    view: View,
    /// `group_counts` entries not taken yet: (group key, rendered count), ascending by key,
    /// the latest per group kept, and the tick of the latest.
    counts_tick: u64,
    counts: Vec<(u32, Bytes)>,
}

impl SessionHandle {
    /// The session's view (a copy).
    pub fn view(&self) -> View {
        self.view
            .lock()
            .as_deref()
            .map(|e| e.view.clone())
            .unwrap_or_default()
    }

    /// Queues watched groups' new counts (any order) and wakes the session; the latest per
    /// group is kept, so a session gets one `group_counts` frame for what it has not taken.
    pub fn push_counts(&self, tick: u64, mut items: Vec<(u32, Bytes)>) {
        items.sort_unstable_by_key(|(g, _)| *g);
        {
            let mut extras = self.view.lock();
            let e = extras.get_or_insert_with(Box::default);
            e.counts_tick = e.counts_tick.max(tick);
            let old = std::mem::take(&mut e.counts);
            e.counts = crate::outbox::merge(old, items);
        }
        self.outbox.wakeup.notify();
    }

    /// The counts waiting, if any: (tick, entries ascending by group key).
    pub fn take_counts(&self) -> Option<(u64, Vec<(u32, Bytes)>)> {
        let mut extras = self.view.lock();
        let e = extras.as_deref_mut()?;
        if e.counts.is_empty() {
            return None;
        }
        let taken = (e.counts_tick, std::mem::take(&mut e.counts));
        if e.view.is_default() {
            *extras = None;
        }
        Some(taken)
    }

    /// Whether the session has a focus or watches a group.
    pub fn narrowed(&self) -> bool {
        self.narrowed.load(Ordering::Relaxed)
    }
}

/// The sessions of one user, under its stripe lock: their views may change here.
pub struct UserSessions<'a> {
    pub sessions: &'a [Arc<SessionHandle>],
}

impl UserSessions<'_> {
    /// Replaces `h`'s view (one of `sessions`).
    pub fn set_view(&self, h: &SessionHandle, view: View) {
        h.narrowed.store(!view.is_default(), Ordering::Relaxed);
        let mut extras = h.view.lock();
        match extras.as_deref_mut() {
            Some(e) => e.view = view,
            None if view.is_default() => {}
            None => {
                *extras = Some(Box::new(Extras {
                    view,
                    ..Extras::default()
                }))
            }
        }
    }
}

type Stripe = HashMap<u32, Vec<Arc<SessionHandle>>>;

/// What one tick's hand-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandOut {
    /// Entries handed to sessions.
    pub handed: usize,
    /// Frames merged into one the session had not taken yet.
    pub merges: u64,
    /// Watchers whose diffs were held this tick (woken less than the interval ago).
    pub held: u64,
    /// Watchers whose held diffs were handed out this tick.
    pub released: u64,
}

/// One entry of a held diff: the friend, the tick it came from, whether it is a removal (for
/// a narrowed view), the rendered entry.
struct HeldEntry {
    friend: u32,
    tick: u64,
    removal: bool,
    frame: Bytes,
}

/// The tick thread's pacing state (see the module docs), under one lock the hand-out takes
/// once a tick.
#[derive(Default)]
struct Pacer {
    /// Watchers woken within the last interval or held (pruned once neither).
    watchers: FxHashMap<u32, Pace>,
    /// Held watchers by the tick of their release.
    due: BTreeMap<u64, Vec<u32>>,
}

/// One watcher's pacing.
struct Pace {
    /// The first tick the watcher's sessions may be woken at for presence again.
    free_at: u64,
    /// Held diffs, ascending by friend, the latest per friend; due at `free_at` when not empty.
    held: Vec<HeldEntry>,
}

/// The sessions of every user with one.
pub struct Registry {
    stripes: Box<[Mutex<Stripe>]>,
    pacer: Mutex<Pacer>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            stripes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pacer: Mutex::new(Pacer::default()),
        }
    }
}

/// A watcher's entries to hand to its sessions: a batch's diff, or a held one.
#[derive(Clone, Copy)]
enum Diff<'a> {
    Batch {
        batch: &'a Batch,
        rendered: &'a [Bytes],
        items: &'a [u32],
    },
    Held(&'a [HeldEntry]),
}

/// Merges a later tick's entries (ascending by friend) into a held diff, the later winning.
fn merge_held(held: &mut Vec<HeldEntry>, new: impl Iterator<Item = HeldEntry>) {
    for e in new {
        match held.binary_search_by_key(&e.friend, |h| h.friend) {
            Ok(i) => held[i] = e,
            Err(i) => held.insert(i, e),
        }
    }
}

impl Registry {
    /// The stripe of `user`, locked.
    fn lock(&self, user: u32) -> MutexGuard<'_, Stripe> {
        self.stripes[user as usize % SHARDS].lock()
    }

    /// Starts a session with `connect` (the engine's `connect` for `user`) and registers it,
    /// atomically with respect to [`Registry::hand_out`], so no batch after the welcome can be
    /// missed and none at or before it is handed.
    pub fn register<E>(
        &self,
        user: UserId,
        connect: impl FnOnce() -> Result<Welcome, E>,
    ) -> Result<(Arc<SessionHandle>, Welcome), E> {
        let mut stripe = self.lock(user.0);
        let welcome = connect()?;
        let handle = Arc::new(SessionHandle {
            sid: welcome.session,
            welcome_tick: welcome.tick,
            outbox: Outbox::default(),
            view: Mutex::new(None),
            narrowed: AtomicBool::new(false),
        });
        stripe.entry(user.0).or_default().push(handle.clone());
        Ok((handle, welcome))
    }

    /// Hands one tick's batch to the sessions: each watcher's diff to the outboxes of its
    /// sessions welcomed before the tick (`rendered[i]` is entry `i`, rendered once for every
    /// watcher), paced to one presence wakeup a watcher every `every` ticks (diffs that come
    /// sooner are held and leave merged at the watcher's next free tick: see the module docs);
    /// and a close to the sessions the heartbeat timeout expired. Called by one thread, with
    /// ticks in order.
    pub fn hand_out(
        &self,
        batch: &Batch,
        rendered: &[Bytes],
        friends: impl Fn(u32, u32) -> bool,
        every: u64,
    ) -> HandOut {
        let mut out = HandOut::default();
        let tick = batch.tick;
        if every <= 1 {
            for (watcher, items) in batch.diffs() {
                let diff = Diff::Batch {
                    batch,
                    rendered,
                    items,
                };
                self.deliver(watcher.0, diff, &friends, &mut out);
            }
        } else {
            let mut pacer = self.pacer.lock();
            let pacer = &mut *pacer;
            for (watcher, items) in batch.diffs() {
                let w = watcher.0;
                let entries = || {
                    items.iter().map(|&i| {
                        let (user, change) = &batch.entries[i as usize];
                        HeldEntry {
                            friend: user.0,
                            tick,
                            removal: matches!(change, presence_core::Change::Removed),
                            frame: rendered[i as usize].clone(),
                        }
                    })
                };
                let p = pacer.watchers.entry(w).or_insert_with(|| Pace {
                    free_at: 0,
                    held: Vec::new(),
                });
                if !p.held.is_empty() {
                    merge_held(&mut p.held, entries());
                    continue;
                }
                if p.free_at > tick {
                    p.held = entries().collect();
                    if !p.held.is_empty() {
                        pacer.due.entry(p.free_at).or_default().push(w);
                        out.held += 1;
                    }
                    continue;
                }
                let diff = Diff::Batch {
                    batch,
                    rendered,
                    items,
                };
                // A frame opens the period: a diff that no session's view shows (all of them
                // focused elsewhere) leaves the watcher free for its next change.
                if self.deliver(w, diff, &friends, &mut out) {
                    p.free_at = tick + every;
                }
            }
            // Ticks come one by one: everything due by now is this tick's.
            while pacer
                .due
                .first_key_value()
                .is_some_and(|(&at, _)| at <= tick)
            {
                let Some((_, ws)) = pacer.due.pop_first() else {
                    break;
                };
                for w in ws {
                    let Some(p) = pacer.watchers.get_mut(&w) else {
                        continue;
                    };
                    let held = std::mem::take(&mut p.held);
                    if self.deliver(w, Diff::Held(&held), &friends, &mut out) {
                        p.free_at = tick + every;
                    }
                    out.released += 1;
                }
            }
            if tick.is_multiple_of(every) {
                pacer
                    .watchers
                    .retain(|_, p| p.free_at > tick || !p.held.is_empty());
            }
        }
        for sid in &batch.expired {
            let stripe = self.lock(sid.user);
            if let Some(h) = stripe
                .get(&sid.user)
                .and_then(|l| l.iter().find(|h| h.sid == *sid))
            {
                h.outbox.close(CloseReason::HeartbeatTimeout);
            }
        }
        out
    }

    /// Hands `watcher`'s diff to the outboxes of its sessions, each the entries after its
    /// welcome that its view shows; whether any session got any.
    fn deliver(
        &self,
        watcher: u32,
        diff: Diff<'_>,
        friends: &impl Fn(u32, u32) -> bool,
        out: &mut HandOut,
    ) -> bool {
        let stripe = self.lock(watcher);
        let Some(list) = stripe.get(&watcher) else {
            return false;
        };
        let mut any = false;
        // The user's diff is the union of its sessions' views: with any of them narrowed,
        // each session gets its own share.
        let narrowed = list.iter().any(|h| h.narrowed());
        for h in list {
            let extras = narrowed.then(|| h.view.lock());
            let view = extras
                .as_ref()
                .map(|x| x.as_deref().map_or(&DEFAULT_VIEW, |e| &e.view));
            let shows = |friend: u32, removal: bool| {
                view.is_none_or(|v| v.shows(friend, removal, || friends(watcher, friend)))
            };
            let (since, tick, entries) = match diff {
                Diff::Batch {
                    batch,
                    rendered,
                    items,
                } => {
                    if batch.tick <= h.welcome_tick {
                        continue;
                    }
                    let entries: Vec<(u32, Bytes)> = items
                        .iter()
                        .filter_map(|&i| {
                            let (user, change) = &batch.entries[i as usize];
                            let removal = matches!(change, presence_core::Change::Removed);
                            shows(user.0, removal).then(|| (user.0, rendered[i as usize].clone()))
                        })
                        .collect();
                    (batch.tick, batch.tick, entries)
                }
                Diff::Held(held) => {
                    let (mut since, mut tick) = (u64::MAX, 0);
                    let entries: Vec<(u32, Bytes)> = held
                        .iter()
                        .filter(|e| e.tick > h.welcome_tick && shows(e.friend, e.removal))
                        .map(|e| {
                            since = since.min(e.tick);
                            tick = tick.max(e.tick);
                            (e.friend, e.frame.clone())
                        })
                        .collect();
                    (since, tick, entries)
                }
            };
            drop(extras);
            if entries.is_empty() {
                continue;
            }
            out.handed += entries.len();
            out.merges += u64::from(h.outbox.push_since(since, tick, entries));
            any = true;
        }
        any
    }

    /// Runs `f` on `user`'s live sessions under its stripe lock: no hand-out to them runs
    /// meanwhile, so a view changed and a snapshot pushed here are ordered with the ticks'.
    pub fn with_sessions<R>(&self, user: u32, f: impl FnOnce(UserSessions<'_>) -> R) -> R {
        let stripe = self.lock(user);
        let sessions = stripe.get(&user).map_or(&[][..], |l| l.as_slice());
        f(UserSessions { sessions })
    }

    /// Removes a session.
    pub fn remove(&self, handle: &Arc<SessionHandle>) {
        let mut reg = self.lock(handle.sid.user);
        if let Some(list) = reg.get_mut(&handle.sid.user) {
            list.retain(|h| !Arc::ptr_eq(h, handle));
            if list.is_empty() {
                reg.remove(&handle.sid.user);
            }
        }
    }

    /// The live sessions of a user.
    pub fn sessions_of(&self, user: u32) -> Vec<Arc<SessionHandle>> {
        self.lock(user).get(&user).cloned().unwrap_or_default()
    }

    /// Calls `f` on every open session.
    pub fn for_each(&self, mut f: impl FnMut(&SessionHandle)) {
        for i in 0..SHARDS {
            self.for_each_in_stripe(i, &mut f);
        }
    }

    /// Every open session with its user's dense id (handles cloned out, so the caller can
    /// take other locks afterwards without holding a stripe).
    pub fn all(&self) -> Vec<(u32, Arc<SessionHandle>)> {
        let mut out = Vec::new();
        for stripe in &self.stripes {
            for (&user, list) in stripe.lock().iter() {
                out.extend(list.iter().map(|h| (user, h.clone())));
            }
        }
        out
    }

    /// Calls `f` on the open sessions of stripe `i` (mod [`SHARDS`]).
    pub fn for_each_in_stripe(&self, i: usize, mut f: impl FnMut(&SessionHandle)) {
        for list in self.stripes[i % SHARDS].lock().values() {
            list.iter().for_each(|h| f(h));
        }
    }

    pub fn count(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().values().map(Vec::len).sum::<usize>())
            .sum()
    }
}
