//! The live sessions by user: what the tick and the chat delivery hand frames to.
//!
//! Striped over [`SHARDS`] mutexes by user id. Registering a session happens under its
//! stripe's lock together with the engine's `connect` (see `Service::open`), so the tick's
//! hand-out, which takes the same lock, can never miss a session's first batch.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use presence_core::SessionId;

use super::outbox::Outbox;

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
    pub(crate) fn lock(&self, user: u32) -> MutexGuard<'_, Stripe> {
        self.stripes[user as usize % SHARDS].lock()
    }

    /// Stripe `i` (mod [`SHARDS`]), locked.
    pub(crate) fn stripe(&self, i: usize) -> MutexGuard<'_, Stripe> {
        self.stripes[i % SHARDS].lock()
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
            for list in self.stripe(i).values() {
                list.iter().for_each(|h| f(h));
            }
        }
    }

    pub fn count(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().values().map(Vec::len).sum::<usize>())
            .sum()
    }
}
