//! The output of a tick: every watcher's diff in one compact batch.
//!
//! Layout is CSR: `watchers` (ascending), `offsets` (one more than watchers), and `items`,
//! indexes into `entries`. Each changed user's entry is stored once however many friends
//! watch it, so a transport can render it once and send the same bytes to every watcher.

use crate::ids::UserId;
use crate::presence::Change;
use crate::shard::SessionId;

/// How a tick computed its fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Nothing changed.
    #[default]
    Idle,
    /// For each changed user, its friends that are live.
    Push,
    /// For each live watcher, its friends that changed.
    Pull,
}

/// Counters of one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickStats {
    /// Users whose visible state changed.
    pub transitions: usize,
    /// Users with a connected session when the tick was taken.
    pub live_watchers: u64,
    /// Work estimates the strategy was picked by.
    pub push_cost: u64,
    pub pull_cost: u64,
    pub strategy: Strategy,
    /// Net friend-list changes announced.
    pub edge_changes: usize,
}

/// Every watcher's diff for one tick.
///
/// A tick publishes its changes as it computes this batch: the next tick will not report them
/// again, so a batch dropped unread is a tick's worth of diffs and expired sessions lost.
#[must_use = "the batch holds every watcher's diff of this tick and the sessions to close: \
              hand it out"]
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Tick number, starting at 1. A session whose welcome carried tick `t` must be handed the
    /// diffs of ticks after `t` only.
    pub tick: u64,
    /// The `now` the tick was computed at.
    pub now: u64,
    /// Entries referenced by `items`: first the users whose presence changed (ascending ids),
    /// then entries for friends added or removed while live.
    pub entries: Vec<(UserId, Change)>,
    /// Watchers with a non-empty diff, ascending.
    pub watchers: Vec<UserId>,
    /// `items[offsets[i]..offsets[i + 1]]` is the diff of `watchers[i]`.
    pub offsets: Vec<u32>,
    /// Indexes into `entries`.
    pub items: Vec<u32>,
    /// Sessions the heartbeat timeout expired since the last tick: close them.
    pub expired: Vec<SessionId>,
    /// Cluster mode only (empty otherwise): ascending indexes into `entries` of the owned
    /// users whose presence the peers hosting their friends must be sent: those whose
    /// presence changed, and those that gained a friend not owned here (whose node may not
    /// mirror them yet). Route them with [`crate::Engine::for_each_remote_friend`].
    pub outgoing: Vec<u32>,
    pub stats: TickStats,
}

impl Batch {
    /// Number of diff entries across all watchers (what a transport sends).
    pub fn entry_count(&self) -> usize {
        self.items.len()
    }

    /// `(watcher, items)` for every watcher with a diff.
    pub fn diffs(&self) -> impl ExactSizeIterator<Item = (UserId, &[u32])> + '_ {
        self.watchers.iter().enumerate().map(move |(i, &w)| {
            (
                w,
                &self.items[self.offsets[i] as usize..self.offsets[i + 1] as usize],
            )
        })
    }

    /// The diff of one watcher (empty if it has none).
    pub fn diff_of(&self, watcher: UserId) -> &[u32] {
        match self.watchers.binary_search(&watcher) {
            Ok(i) => &self.items[self.offsets[i] as usize..self.offsets[i + 1] as usize],
            Err(_) => &[],
        }
    }

    pub fn entry(&self, item: u32) -> &(UserId, Change) {
        &self.entries[item as usize]
    }

    /// Builds the CSR arrays from `(watcher << 32 | item)` keys.
    pub(crate) fn fill_from_pairs(&mut self, pairs: &mut [u64]) {
        radsort::sort(pairs);
        self.fill_from_sorted(pairs.iter().copied());
    }

    /// Builds the CSR arrays from ascending `(watcher << 32 | item)` keys.
    pub(crate) fn fill_from_sorted(&mut self, pairs: impl Iterator<Item = u64>) {
        self.watchers.clear();
        self.offsets.clear();
        self.items.clear();
        self.items.reserve(pairs.size_hint().0);
        let mut last = None;
        for p in pairs {
            let w = (p >> 32) as u32;
            if last != Some(w) {
                self.offsets.push(self.items.len() as u32);
                self.watchers.push(UserId(w));
                last = Some(w);
            }
            self.items.push(p as u32);
        }
        self.offsets.push(self.items.len() as u32);
    }

    /// Adds ascending `(watcher << 32 | item)` keys, none already in the batch, keeping
    /// every watcher's items in order: one linear merge.
    pub(crate) fn merge_sorted_pairs(&mut self, extra: &[u64]) {
        let old = self.to_pairs();
        let mut a = old.into_iter().peekable();
        let mut b = extra.iter().copied().peekable();
        let merged = std::iter::from_fn(|| match (a.peek(), b.peek()) {
            (Some(&x), Some(&y)) if y < x => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        });
        let merged: Vec<u64> = merged.collect();
        self.fill_from_sorted(merged.into_iter());
    }

    /// The CSR as `(watcher << 32 | item)` keys.
    pub(crate) fn to_pairs(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.items.len());
        for (w, items) in self.diffs() {
            out.extend(items.iter().map(|&i| (u64::from(w.0) << 32) | u64::from(i)));
        }
        out
    }
}
