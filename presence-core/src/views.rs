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

/// A follower of a user: in its focus, a watched member, a friend now, a focused watcher.
const IN_FOCUS: u8 = 1;
const MEMBER: u8 = 2;
const FRIEND: u8 = 4;
const FOCUSED: u8 = 8;

/// Every watcher's focus and watched members, and who follows whom.
#[derive(Debug, Default)]
pub(crate) struct Views {
    /// Watcher -> the friends in its focus, ascending.
    focus: HashMap<u32, Box<[u32]>>,
    /// Watcher -> users whose presence it watches beyond its friends, ascending.
    members: HashMap<u32, Box<[u32]>>,
    /// Target -> (watcher, flags) for the watchers holding it in a focus or members list,
    /// ascending by watcher. The flags say why, and whether the two are friends now (kept
    /// up to date from the graph's edge events), so a tick decides each pair without a
    /// lookup elsewhere.
    followers: HashMap<u32, Vec<(u32, u8)>>,
}

impl Views {
    pub(crate) fn is_focused(&self, w: u32) -> bool {
        self.focus.contains_key(&w)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.followers.is_empty()
    }

    /// Replaces `w`'s focus (`None`: every friend) and watched members; `friend(w, u)` tells
    /// whether they are friends now. Returns whether `w` is focused now.
    pub(crate) fn set(
        &mut self,
        w: u32,
        focus: Option<Vec<u32>>,
        members: Vec<u32>,
        friend: impl Fn(u32, u32) -> bool,
    ) -> bool {
        for t in self.targets(w) {
            if let Some(ws) = self.followers.get_mut(&t) {
                if let Ok(i) = ws.binary_search_by_key(&w, |&(x, _)| x) {
                    ws.remove(i);
                }
                if ws.is_empty() {
                    self.followers.remove(&t);
                }
            }
        }
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
        for t in self.targets(w) {
            let mut flags = if focused { FOCUSED } else { 0 };
            if self.in_focus(w, t) {
                flags |= IN_FOCUS;
            }
            if self.watches(w, t) {
                flags |= MEMBER;
            }
            if friend(w, t) {
                flags |= FRIEND;
            }
            let ws = self.followers.entry(t).or_default();
            if let Err(i) = ws.binary_search_by_key(&w, |&(x, _)| x) {
                ws.insert(i, (w, flags));
            }
        }
        focused
    }

    /// `w` and `f` became friends (`true`) or stopped being friends.
    pub(crate) fn edge(&mut self, w: u32, f: u32, friends: bool) {
        if let Some(ws) = self.followers.get_mut(&f)
            && let Ok(i) = ws.binary_search_by_key(&w, |&(x, _)| x)
        {
            if friends {
                ws[i].1 |= FRIEND;
            } else {
                ws[i].1 &= !FRIEND;
            }
        }
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

    fn in_focus(&self, w: u32, u: u32) -> bool {
        self.focus
            .get(&w)
            .is_some_and(|f| f.binary_search(&u).is_ok())
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
    /// made (live, unfocused friends) is not repeated. Ascending, no duplicates. Costs one
    /// lookup per changed user and a flag test per follower.
    pub(crate) fn extra_pairs(&self, changed: &[u32], live: impl Fn(u32) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        for (item, &u) in changed.iter().enumerate() {
            let Some(ws) = self.followers.get(&u) else {
                continue;
            };
            for &(w, flags) in ws {
                let friend = flags & FRIEND != 0;
                if friend && flags & FOCUSED == 0 {
                    continue; // the ordinary fan-out has it
                }
                let shown = flags & MEMBER != 0 || (friend && flags & IN_FOCUS != 0);
                if shown && live(w) {
                    out.push((u64::from(w) << 32) | item as u64);
                }
            }
        }
        out.sort_unstable();
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
        let followers: usize = self.followers.values().map(|v| v.capacity() * 8 + 32).sum();
        lists + followers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_track_every_list_change() {
        let mut v = Views::default();
        let friends = |w: u32, u: u32| w + u == 4; // 1 and 3 are friends
        assert!(v.set(1, Some(vec![5, 3, 3]), vec![9], friends));
        assert!(!v.set(2, None, vec![9, 3], friends));
        assert_eq!(
            v.followers.get(&3),
            Some(&vec![(1, FOCUSED | IN_FOCUS | FRIEND), (2, MEMBER)])
        );
        assert_eq!(
            v.followers.get(&9),
            Some(&vec![(1, FOCUSED | MEMBER), (2, MEMBER)])
        );
        // 3 changes: 1 sees it (a friend in focus), 2 too (a member); 5 changes: nobody.
        assert_eq!(v.extra_pairs(&[3, 5], |_| true), [(1 << 32), (2 << 32)]);
        v.edge(1, 3, false);
        assert_eq!(v.extra_pairs(&[3], |_| true), [(2 << 32)]);
        assert!(!v.set(1, None, vec![], friends));
        assert_eq!(v.followers.get(&3), Some(&vec![(2, MEMBER)]));
        assert!(!v.followers.contains_key(&5));
        v.set(2, None, vec![], friends);
        assert!(v.is_empty());
        assert!(!v.is_focused(1));
    }
}
