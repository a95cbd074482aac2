//! The baseline: what a straightforward presence server would do.
//!
//! Friends are a `HashMap<u64, HashSet<u64>>`, per-user state a `HashMap<u64, UserState>`, and
//! every state change is pushed at once, entry by entry, into a `Vec` per online friend
//! (`HashMap<u64, Vec<(u64, UserState)>>`); [`NaiveEngine::flush`] hands those vectors out, as
//! a server would each tick. No dense ids, no bitmaps, no coalescing, std hashers throughout.

use std::collections::{HashMap, HashSet};

use presence_core::Status;
use presence_core::snapshot::GraphSnapshot;

/// What the naive engine keeps, and sends, per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserState {
    pub online: bool,
    pub status: Status,
    /// Last activity, ms since the epoch.
    pub last_active: u64,
}

/// The straightforward engine.
#[derive(Debug, Default)]
pub struct NaiveEngine {
    pub friends: HashMap<u64, HashSet<u64>>,
    pub state: HashMap<u64, UserState>,
    /// Pending entries per watcher since the last flush.
    pub outbox: HashMap<u64, Vec<(u64, UserState)>>,
}

impl NaiveEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the friend map from a snapshot (user ids are the snapshot's dense ids). Each set
    /// is allocated at its final size, which only makes the setup faster.
    pub fn from_snapshot(snap: &GraphSnapshot) -> Self {
        let mut engine = Self::new();
        let n = snap.users();
        engine.friends.reserve(n);
        engine.state.reserve(n);
        for (a, list) in crate::adjacency(snap).into_iter().enumerate() {
            let a = a as u64;
            engine
                .friends
                .insert(a, list.into_iter().map(u64::from).collect());
            engine.state.insert(a, UserState::default());
        }
        engine
    }

    pub fn add_friendship(&mut self, a: u64, b: u64) {
        self.friends.entry(a).or_default().insert(b);
        self.friends.entry(b).or_default().insert(a);
    }

    /// Pushes `user`'s current state to each of its online friends.
    fn broadcast(&mut self, user: u64) {
        let Some(&state) = self.state.get(&user) else {
            return;
        };
        let Some(friends) = self.friends.get(&user) else {
            return;
        };
        for f in friends {
            if self.state.get(f).is_some_and(|s| s.online) {
                self.outbox.entry(*f).or_default().push((user, state));
            }
        }
    }

    pub fn connect(&mut self, user: u64, now: u64) {
        let s = self.state.entry(user).or_default();
        s.online = true;
        s.last_active = now;
        self.broadcast(user);
    }

    pub fn disconnect(&mut self, user: u64, now: u64) {
        let s = self.state.entry(user).or_default();
        s.online = false;
        s.last_active = now;
        self.broadcast(user);
    }

    pub fn set_status(&mut self, user: u64, status: Status) {
        self.state.entry(user).or_default().status = status;
        self.broadcast(user);
    }

    /// Hands every watcher its pending entries (here: counts them, as a stand-in for
    /// writing them to sockets; each `Vec` is freed after "sending", the map keeps its
    /// table). Returns the number of entries.
    pub fn flush(&mut self) -> usize {
        let mut sent = 0;
        for (watcher, entries) in self.outbox.drain() {
            std::hint::black_box((watcher, &entries));
            sent += entries.len();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_only_to_online_friends() {
        let mut snap = GraphSnapshot::new();
        snap.push_user("a", &[1, 2]);
        snap.push_user("b", &[]);
        snap.push_user("c", &[]);
        let mut e = NaiveEngine::from_snapshot(&snap);
        e.connect(1, 10);
        assert_eq!(e.flush(), 0); // nobody else online
        e.connect(0, 11);
        assert_eq!(e.outbox[&1].len(), 1);
        e.set_status(0, Status::Busy);
        assert_eq!(e.flush(), 2);
        e.set_status(2, Status::Busy); // friend 0 is online
        assert_eq!(e.outbox[&0], vec![(2, e.state[&2])]);
    }
}
