//! The friend graph: one friend set per dense user id, symmetric, with a journal of the edge
//! changes since the last tick.
//!
//! A friend set is a `RoaringBitmap` when that is the smaller form, and a sorted boxed slice
//! of `u32` otherwise. Roaring shines when ids cluster (communities laid out in id order): a
//! few array containers at 2 bytes a friend. But each container costs about 50 bytes of
//! overhead, so a short list spread over many 65,536-id blocks is cheaper as plain `u32`s
//! (measured: 300 random ids cost about 9 bytes a friend as roaring). Choosing per user keeps
//! every list at the smaller of the two, so the graph is never worse than a `u32` adjacency
//! list and much better where locality exists.
//!
//! The journal is what keeps watchers' views exact when edges change between ticks: for every
//! pair touched since the last tick it remembers whether the two were friends at that tick.
//! A new session's snapshot is taken against that published graph, and the tick announces the
//! net change (added with the friend's presence, or removed) to live endpoints.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

/// Lists shorter than this are always kept as a plain slice.
const SMALL_ALWAYS: usize = 32;
/// Estimated bytes of one roaring container beyond its values (struct, allocation header).
const ROARING_CONTAINER_OVERHEAD: usize = 56;
/// Estimated fixed bytes of a boxed roaring bitmap (the box target and its container vector's
/// allocation header).
const ROARING_FIXED: usize = 24 + 16;
/// Allocation header of a boxed slice.
const ALLOC_HEADER: usize = 16;

/// One user's friends.
#[derive(Debug, Clone)]
pub(crate) enum FriendSet {
    Small(Box<[u32]>),
    Big(Box<RoaringBitmap>),
}

impl Default for FriendSet {
    fn default() -> Self {
        FriendSet::Small(Box::new([]))
    }
}

/// Estimated heap bytes of a roaring bitmap holding `sorted` (strictly increasing).
fn roaring_estimate(sorted: &[u32]) -> usize {
    let mut bytes = ROARING_FIXED;
    let mut i = 0;
    while i < sorted.len() {
        let high = sorted[i] >> 16;
        let start = i;
        while i < sorted.len() && sorted[i] >> 16 == high {
            i += 1;
        }
        let n = i - start;
        // Array containers are filled by pushing, so their vectors carry growth slack: count
        // 3 bytes a value rather than 2 (measured with a counting allocator).
        bytes += ROARING_CONTAINER_OVERHEAD + if n > 4096 { 8192 } else { 3 * n };
    }
    bytes
}

fn small_bytes(n: usize) -> usize {
    if n == 0 { 0 } else { ALLOC_HEADER + 4 * n }
}

impl FriendSet {
    /// Builds the smaller representation of a strictly increasing list.
    pub fn from_sorted(sorted: Vec<u32>) -> Self {
        debug_assert!(sorted.windows(2).all(|w| w[0] < w[1]));
        if sorted.len() >= SMALL_ALWAYS && roaring_estimate(&sorted) < small_bytes(sorted.len()) {
            let bm = RoaringBitmap::from_sorted_iter(sorted.iter().copied())
                .unwrap_or_else(|_| sorted.iter().copied().collect());
            FriendSet::Big(Box::new(bm))
        } else {
            FriendSet::Small(sorted.into_boxed_slice())
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            FriendSet::Small(s) => s.len() as u64,
            FriendSet::Big(b) => b.len(),
        }
    }

    pub fn contains(&self, v: u32) -> bool {
        match self {
            FriendSet::Small(s) => s.binary_search(&v).is_ok(),
            FriendSet::Big(b) => b.contains(v),
        }
    }

    /// Calls `f` for every friend in increasing order.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(u32)) {
        match self {
            FriendSet::Small(s) => s.iter().for_each(|&v| f(v)),
            FriendSet::Big(b) => b.iter().for_each(f),
        }
    }

    /// The members as a sorted slice, if the set is held as one.
    pub(crate) fn as_slice(&self) -> Option<&[u32]> {
        match self {
            FriendSet::Small(s) => Some(s),
            FriendSet::Big(_) => None,
        }
    }

    /// Starts loading the set's first elements (see [`crate::prefetch`]).
    pub(crate) fn prefetch_items(&self) {
        match self {
            FriendSet::Small(s) => {
                if let Some(first) = s.first() {
                    crate::prefetch(first);
                }
            }
            FriendSet::Big(b) => crate::prefetch(&**b),
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len() as usize);
        self.for_each(|x| v.push(x));
        v
    }

    /// Adds `v`; returns whether it was new.
    pub fn insert(&mut self, v: u32) -> bool {
        let added = match self {
            FriendSet::Small(s) => match s.binary_search(&v) {
                Ok(_) => false,
                Err(pos) => {
                    let mut vec = std::mem::take(s).into_vec();
                    vec.insert(pos, v);
                    *s = vec.into_boxed_slice();
                    true
                }
            },
            FriendSet::Big(b) => b.insert(v),
        };
        if added {
            self.reshape_if_due();
        }
        added
    }

    /// Removes `v`; returns whether it was there.
    pub fn remove(&mut self, v: u32) -> bool {
        let removed = match self {
            FriendSet::Small(s) => match s.binary_search(&v) {
                Err(_) => false,
                Ok(pos) => {
                    let mut vec = std::mem::take(s).into_vec();
                    vec.remove(pos);
                    *s = vec.into_boxed_slice();
                    true
                }
            },
            FriendSet::Big(b) => b.remove(v),
        };
        if removed {
            self.reshape_if_due();
        }
        removed
    }

    /// Re-picks the representation every 16 changes of length (cheap enough, and keeps the
    /// choice close to optimal under incremental edits).
    fn reshape_if_due(&mut self) {
        let n = self.len() as usize;
        if n.is_multiple_of(16) {
            let sorted = self.to_vec();
            *self = FriendSet::from_sorted(sorted);
        }
    }

    /// Heap bytes held (estimated for roaring from its containers).
    pub fn heap_bytes(&self) -> usize {
        match self {
            FriendSet::Small(s) => small_bytes(s.len()),
            FriendSet::Big(b) => {
                // roaring's own byte counts assume 4 bytes per array value; arrays hold u16s.
                let st = b.statistics();
                ROARING_FIXED
                    + st.n_containers as usize * ROARING_CONTAINER_OVERHEAD
                    + st.n_values_array_containers as usize * 2
                    + st.n_bitset_containers as usize * 8192
                    + st.n_bytes_run_containers as usize
            }
        }
    }
}

/// The symmetric friend graph.
#[derive(Debug, Default)]
pub struct Graph {
    pub(crate) sets: Vec<FriendSet>,
    edges: u64,
    /// For each ordered pair touched since the last tick (both orientations): were they
    /// friends at the last tick?
    journal: BTreeMap<(u32, u32), bool>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn ensure(&mut self, id: u32) {
        if id as usize >= self.sets.len() {
            self.sets.resize_with(id as usize + 1, FriendSet::default);
        }
    }

    /// Number of undirected edges.
    pub fn edges(&self) -> u64 {
        self.edges
    }

    pub fn degree(&self, id: u32) -> u64 {
        self.sets.get(id as usize).map_or(0, FriendSet::len)
    }

    pub fn are_friends(&self, a: u32, b: u32) -> bool {
        self.sets.get(a as usize).is_some_and(|s| s.contains(b))
    }

    pub(crate) fn set(&self, id: u32) -> Option<&FriendSet> {
        self.sets.get(id as usize)
    }

    /// Friends of `id`, ascending.
    pub fn friends(&self, id: u32) -> Vec<u32> {
        self.sets
            .get(id as usize)
            .map_or_else(Vec::new, FriendSet::to_vec)
    }

    fn journal_touch(&mut self, a: u32, b: u32, was: bool) {
        self.journal.entry((a, b)).or_insert(was);
        self.journal.entry((b, a)).or_insert(was);
    }

    /// Adds the edge; the caller has validated ids, self-loops and caps.
    pub(crate) fn add_edge(&mut self, a: u32, b: u32) -> bool {
        self.ensure(a.max(b));
        if !self.sets[a as usize].insert(b) {
            return false;
        }
        self.sets[b as usize].insert(a);
        self.edges += 1;
        self.journal_touch(a, b, false);
        true
    }

    pub(crate) fn remove_edge(&mut self, a: u32, b: u32) -> bool {
        if !self.sets.get_mut(a as usize).is_some_and(|s| s.remove(b)) {
            return false;
        }
        if let Some(s) = self.sets.get_mut(b as usize) {
            s.remove(a);
        }
        self.edges -= 1;
        self.journal_touch(a, b, true);
        true
    }

    /// Friends of `id` as of the last tick: the current set with this tick's journal undone.
    pub(crate) fn published_friends(&self, id: u32) -> Vec<u32> {
        let mut friends = self.friends(id);
        for (&(_, other), &was) in self.journal.range((id, 0)..=(id, u32::MAX)) {
            match (was, friends.binary_search(&other)) {
                (true, Err(pos)) => friends.insert(pos, other),
                (false, Ok(pos)) => {
                    friends.remove(pos);
                }
                _ => {}
            }
        }
        friends
    }

    /// The net edge changes since the last tick, as (watcher, friend, now_friends), and a
    /// fresh journal.
    pub(crate) fn drain_journal(&mut self) -> Vec<(u32, u32, bool)> {
        let journal = std::mem::take(&mut self.journal);
        journal
            .into_iter()
            .filter_map(|((a, b), was)| {
                let now = self.are_friends(a, b);
                (now != was).then_some((a, b, now))
            })
            .collect()
    }

    /// Replaces the whole graph from per-user sorted lists, clearing the journal. Lists must be
    /// symmetric, strictly increasing, loop-free and in range (checked by the caller).
    pub(crate) fn replace_all(&mut self, sets: Vec<FriendSet>, edges: u64) {
        self.sets = sets;
        self.edges = edges;
        self.journal.clear();
    }

    /// Heap bytes of all friend sets, plus the per-user slot.
    pub fn heap_bytes(&self) -> usize {
        self.sets.capacity() * std::mem::size_of::<FriendSet>()
            + self.sets.iter().map(FriendSet::heap_bytes).sum::<usize>()
    }

    /// Number of users whose set is a roaring bitmap.
    pub fn roaring_sets(&self) -> usize {
        self.sets
            .iter()
            .filter(|s| matches!(s, FriendSet::Big(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friend_set_is_two_words() {
        assert_eq!(std::mem::size_of::<FriendSet>(), 16);
    }

    #[test]
    fn clustered_lists_become_roaring_and_scattered_stay_small() {
        let clustered: Vec<u32> = (1000..1200).collect();
        assert!(matches!(
            FriendSet::from_sorted(clustered),
            FriendSet::Big(_)
        ));
        let scattered: Vec<u32> = (0..200).map(|i| i * 70_000).collect();
        assert!(matches!(
            FriendSet::from_sorted(scattered),
            FriendSet::Small(_)
        ));
    }

    #[test]
    fn insert_remove_keep_order_across_reshapes() {
        let mut s = FriendSet::default();
        for v in (0..500u32).rev() {
            assert!(s.insert(v * 3));
            assert!(!s.insert(v * 3));
        }
        assert_eq!(s.len(), 500);
        assert!(matches!(s, FriendSet::Big(_)));
        for v in 0..490u32 {
            assert!(s.remove(v * 3));
        }
        assert_eq!(s.to_vec(), (490..500).map(|v| v * 3).collect::<Vec<_>>());
        assert!(matches!(s, FriendSet::Small(_)));
    }

    #[test]
    fn journal_nets_out_add_then_remove() {
        let mut g = Graph::new();
        g.add_edge(1, 2);
        g.drain_journal();
        assert!(g.remove_edge(1, 2));
        assert!(g.add_edge(1, 2));
        assert!(g.drain_journal().is_empty());
        g.add_edge(1, 3);
        assert_eq!(g.published_friends(1), vec![2]);
        assert_eq!(g.published_friends(3), Vec::<u32>::new());
        assert_eq!(g.drain_journal(), vec![(1, 3, true), (3, 1, true)]);
        assert_eq!(g.published_friends(1), vec![2, 3]);
    }
}
