//! Partial subscriptions: a watcher's *focus* (only these friends' changes reach it) and its
//! *watched members* (these non-friends' changes reach it as if they were friends), kept so
//! that the tick pays for what is in view, never for the friends out of it.
//!
//! A focused watcher drops out of the ordinary fan-out (its bit in the fan-out bitset is
//! clear, so push and pull skip it at the cost of one bit test); what it should see comes from
//! the reverse index `followers`: for each changed user, the watchers that hold it in a focus
//! or a members list. Both lists are at most a few hundred users, set by the node per watcher
//! (the union over that user's sessions; the node narrows per session at hand-out).

use hashbrown::HashMap;

use crate::graph::Graph;

/// Every watcher's focus and watched members, and who follows whom.
#[derive(Debug, Default)]
pub(crate) struct Views {
    /// Watcher -> the friends in its focus, ascending.
    focus: HashMap<u32, Box<[u32]>>,
    /// Watcher -> users whose presence it watches beyond its friends, ascending.
    members: HashMap<u32, Box<[u32]>>,
    /// Target -> watchers holding it in a focus or members list, ascending.
    followers: HashMap<u32, Vec<u32>>,
}

impl Views {
    pub(crate) fn is_focused(&self, w: u32) -> bool {
        self.focus.contains_key(&w)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.followers.is_empty()
    }

    /// Replaces `w`'s focus (`None`: every friend) and watched members. Returns whether `w` is
    /// focused now.
    pub(crate) fn set(&mut self, w: u32, focus: Option<Vec<u32>>, members: Vec<u32>) -> bool {
        let old = self.targets(w);
        let norm = |mut v: Vec<u32>| {
            v.sort_unstable();
            v.dedup();
            v.into_boxed_slice()
        };
        let focused = focus.is_some();
        match focus {
            Some(f) => {
                self.focus.insert(w, norm(f));
            }
            None => {
                self.focus.remove(&w);
            }
        }
        let members = norm(members);
        if members.is_empty() {
            self.members.remove(&w);
        } else {
            self.members.insert(w, members);
        }
        let new = self.targets(w);
        for &t in old.iter().filter(|t| new.binary_search(t).is_err()) {
            if let Some(ws) = self.followers.get_mut(&t) {
                if let Ok(i) = ws.binary_search(&w) {
                    ws.remove(i);
                }
                if ws.is_empty() {
                    self.followers.remove(&t);
                }
            }
        }
        for &t in new.iter().filter(|t| old.binary_search(t).is_err()) {
            let ws = self.followers.entry(t).or_default();
            if let Err(i) = ws.binary_search(&w) {
                ws.insert(i, w);
            }
        }
        focused
    }

    /// Everything `w` follows, ascending.
    fn targets(&self, w: u32) -> Vec<u32> {
        let mut t: Vec<u32> = self
            .focus
            .get(&w)
            .into_iter()
            .chain(self.members.get(&w))
            .flat_map(|s| s.iter().copied())
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Whether a friendship of `w` with `f` starting or ending shows in `w`'s view: `f` is in
    /// `w`'s focus (or `w` has none) and `f` is not in view anyway as a watched member.
    pub(crate) fn friend_in_view(&self, w: u32, f: u32) -> bool {
        self.focus
            .get(&w)
            .is_none_or(|l| l.binary_search(&f).is_ok())
            && !self.watches(w, f)
    }

    /// Whether `w` follows `u` as a watched member.
    pub(crate) fn watches(&self, w: u32, u: u32) -> bool {
        self.members
            .get(&w)
            .is_some_and(|m| m.binary_search(&u).is_ok())
    }

    /// The `(watcher << 32 | item)` pairs the ordinary fan-out left out: for each changed
    /// user (`changed[item]`), the live watchers following it that should see it: as a
    /// watched member, or as a friend in their focus. A pair the ordinary fan-out already
    /// made (live, unfocused friends) is not repeated. Ascending, no duplicates.
    pub(crate) fn extra_pairs(
        &self,
        graph: &Graph,
        changed: &[u32],
        live: impl Fn(u32) -> bool,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        for (item, &u) in changed.iter().enumerate() {
            let Some(ws) = self.followers.get(&u) else {
                continue;
            };
            for &w in ws {
                if !live(w) {
                    continue;
                }
                let friend = graph.are_friends(w, u);
                let focus = self.focus.get(&w);
                if friend && focus.is_none() {
                    continue; // the ordinary fan-out has it
                }
                let in_focus = friend && focus.is_some_and(|f| f.binary_search(&u).is_ok());
                if in_focus || self.watches(w, u) {
                    out.push((u64::from(w) << 32) | item as u64);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Bytes held (for the footprint).
    pub(crate) fn bytes(&self) -> usize {
        let lists: usize = self
            .focus
            .values()
            .chain(self.members.values())
            .map(|s| s.len() * 4 + 24)
            .sum();
        let followers: usize = self.followers.values().map(|v| v.capacity() * 4 + 32).sum();
        lists + followers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_track_every_list_change() {
        let mut v = Views::default();
        assert!(v.set(1, Some(vec![5, 3, 3]), vec![9]));
        assert!(!v.set(2, None, vec![9, 3]));
        assert_eq!(v.followers.get(&3), Some(&vec![1, 2]));
        assert_eq!(v.followers.get(&9), Some(&vec![1, 2]));
        assert!(!v.set(1, None, vec![]));
        assert_eq!(v.followers.get(&3), Some(&vec![2]));
        assert!(!v.followers.contains_key(&5));
        v.set(2, None, vec![]);
        assert!(v.is_empty());
        assert!(!v.is_focused(1));
    }
}
