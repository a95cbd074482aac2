//! The live sessions by user, what the tick and the chat delivery hand frames to, here rather
//! than in the node so that loom can model registering against the tick (`tests/loom.rs`).
//!
//! Striped over [`SHARDS`] mutexes by user id. [`Registry::register`] runs the engine's
//! `connect` under the user's stripe lock and registers the session before letting go, and
//! [`Registry::hand_out`] takes the same lock for each watcher: a tick's hand-out either comes
//! first (and its batch is at or before the welcome's tick) or sees the session, so a session
//! is handed exactly the batches after its welcome.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use presence_core::{Batch, SessionId, UserId, Welcome};

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
    /// Sessions whose entries were held this tick (woken less than the interval ago).
    pub held: u64,
    /// Sessions woken this tick for entries held before.
    pub released: u64,
}

/// The sessions of every user with one.
pub struct Registry {
    stripes: Box<[Mutex<Stripe>]>,
    /// Held outboxes by the tick of their release (see [`Outbox::push_paced`]).
    due: Mutex<BTreeMap<u64, Vec<Arc<SessionHandle>>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            stripes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            due: Mutex::new(BTreeMap::new()),
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
    /// watcher), paced to one presence wakeup a session every `every` ticks (entries that
    /// come sooner wait in the outbox and leave at the session's next free tick); and a close
    /// to the sessions the heartbeat timeout expired.
    pub fn hand_out(
        &self,
        batch: &Batch,
        rendered: &[Bytes],
        friends: impl Fn(u32, u32) -> bool,
        every: u64,
    ) -> HandOut {
        let mut out = HandOut::default();
        let mut held = Vec::new();
        for (watcher, items) in batch.diffs() {
            let stripe = self.lock(watcher.0);
            let Some(list) = stripe.get(&watcher.0) else {
                continue;
            };
            // The user's diff is the union of its sessions' views: with any of them narrowed,
            // each session gets its own share.
            let narrowed = list.iter().any(|h| h.narrowed());
            for h in list {
                if batch.tick <= h.welcome_tick {
                    continue;
                }
                let entry =
                    |&i: &u32| (batch.entries[i as usize].0.0, rendered[i as usize].clone());
                let entries: Vec<(u32, Bytes)> = if narrowed {
                    let extras = h.view.lock();
                    let view = extras.as_deref().map_or(&DEFAULT_VIEW, |e| &e.view);
                    items
                        .iter()
                        .filter(|&&i| {
                            let (u, change) = &batch.entries[i as usize];
                            let removal = matches!(change, presence_core::Change::Removed);
                            view.shows(u.0, removal, || friends(watcher.0, u.0))
                        })
                        .map(entry)
                        .collect()
                } else {
                    items.iter().map(entry).collect()
                };
                if entries.is_empty() {
                    continue;
                }
                out.handed += entries.len();
                let paced = h.outbox.push_paced(batch.tick, entries, every);
                out.merges += u64::from(paced.merged);
                if let Some(at) = paced.release_at {
                    held.push((at, h.clone()));
                }
            }
        }
        out.held = held.len() as u64;
        out.released = self.release_due(batch.tick, held, every);
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

    /// Files the sessions held this tick and wakes those due by `tick` (an engine tick can be
    /// skipped by no number: each hand-out's tick is the last plus one).
    fn release_due(&self, tick: u64, held: Vec<(u64, Arc<SessionHandle>)>, every: u64) -> u64 {
        let ready = {
            let mut due = self.due.lock();
            for (at, h) in held {
                due.entry(at).or_default().push(h);
            }
            let later = due.split_off(&(tick + 1));
            std::mem::replace(&mut *due, later)
        };
        let mut released = 0;
        for h in ready.into_values().flatten() {
            h.outbox.release(tick, every);
            released += 1;
        }
        released
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
