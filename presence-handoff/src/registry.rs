//! The live sessions by user, what the tick and the chat delivery hand frames to, here rather
//! than in the node so that loom can model registering against the tick (`tests/loom.rs`).
//!
//! Striped over [`SHARDS`] mutexes by user id. [`Registry::register`] runs the engine's
//! `connect` under the user's stripe lock and registers the session before letting go, and
//! [`Registry::hand_out`] takes the same lock for each watcher: a tick's hand-out either comes
//! first (and its batch is at or before the welcome's tick) or sees the session, so a session
//! is handed exactly the batches after its welcome.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use presence_core::{Batch, SessionId, UserId, Welcome};

use crate::outbox::{CloseReason, Outbox};
use crate::sync::{Mutex, MutexGuard};

/// Stripes of the registry.
pub const SHARDS: usize = 64;

/// One open session as the tick and the chat delivery see it.
pub struct SessionHandle {
    pub sid: SessionId,
    /// Hand this session the batches of later ticks only.
    pub welcome_tick: u64,
    pub outbox: Outbox,
}

type Stripe = HashMap<u32, Vec<Arc<SessionHandle>>>;

/// What one tick's hand-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandOut {
    /// Entries handed to sessions.
    pub handed: usize,
    /// Frames merged into one the session had not taken yet.
    pub merges: u64,
}

/// The sessions of every user with one.
pub struct Registry {
    stripes: Box<[Mutex<Stripe>]>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            stripes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
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
        });
        stripe.entry(user.0).or_default().push(handle.clone());
        Ok((handle, welcome))
    }

    /// Hands one tick's batch to the sessions: each watcher's diff to the outboxes of its
    /// sessions welcomed before the tick (`rendered[i]` is entry `i`, rendered once for every
    /// watcher), and a close to the sessions the heartbeat timeout expired.
    pub fn hand_out(&self, batch: &Batch, rendered: &[Bytes]) -> HandOut {
        let mut out = HandOut::default();
        for (watcher, items) in batch.diffs() {
            let stripe = self.lock(watcher.0);
            let Some(list) = stripe.get(&watcher.0) else {
                continue;
            };
            for h in list {
                if batch.tick <= h.welcome_tick {
                    continue;
                }
                let entries: Vec<(u32, Bytes)> = items
                    .iter()
                    .map(|&i| (batch.entries[i as usize].0.0, rendered[i as usize].clone()))
                    .collect();
                out.handed += entries.len();
                out.merges += u64::from(h.outbox.push(batch.tick, entries));
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
