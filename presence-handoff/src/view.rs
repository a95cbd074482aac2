//! What one session shows of presence beyond the default "every friend" (protocol v1.1): a
//! focus narrowing the friends, and watched groups whose chosen members show as if they were
//! friends. The tick's hand-out reads it to narrow the user's diff to each session's share.

use std::sync::Arc;

/// One session's view. The default (no focus, no group) shows every friend.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// The friends shown, ascending; `None`: every friend.
    pub focus: Option<Vec<u32>>,
    /// The groups watched, in the order they were first watched.
    pub groups: Vec<WatchedGroup>,
}

/// A group a session watches (`watch_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedGroup {
    pub group: Arc<str>,
    /// Whether the session wants `group_counts` for it.
    pub counts: bool,
    /// Members whose presence the session is shown, ascending (dense ids).
    pub members: Vec<u32>,
}

impl View {
    pub fn is_default(&self) -> bool {
        self.focus.is_none() && self.groups.is_empty()
    }

    /// Whether `u` is shown as a watched member of some group.
    pub fn watches(&self, u: u32) -> bool {
        self.groups
            .iter()
            .any(|g| g.members.binary_search(&u).is_ok())
    }

    /// Whether the focus lets friend `u` through.
    pub fn focus_allows(&self, u: u32) -> bool {
        self.focus
            .as_ref()
            .is_none_or(|f| f.binary_search(&u).is_ok())
    }

    /// Every watched member, ascending, once.
    pub fn members(&self) -> Vec<u32> {
        let mut m: Vec<u32> = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter().copied())
            .collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Whether an entry about `u` reaches this session: as a watched member (a presence,
    /// never a removal: the member stays in view), or as a friend the focus lets through (a
    /// presence only while still a friend, which `friend` tells; a removal always).
    pub fn shows(&self, u: u32, removal: bool, friend: impl FnOnce() -> bool) -> bool {
        if self.watches(u) {
            !removal
        } else {
            self.focus_allows(u) && (removal || friend())
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn members_show_as_friends_and_focus_narrows() {
        let v = View {
            focus: Some(vec![2, 4]),
            groups: vec![WatchedGroup {
                group: "g".into(),
                counts: true,
                members: vec![4, 9],
            }],
        };
        assert!(v.shows(9, false, || false), "a watched member");
        assert!(!v.shows(9, true, || false), "a member stays in view");
        assert!(v.shows(2, false, || true) && v.shows(2, true, || false));
        assert!(!v.shows(2, false, || false), "no longer a friend");
        assert!(!v.shows(3, false, || true), "out of focus");
        assert_eq!(v.members(), [4, 9]);
        assert!(View::default().shows(3, false, || true));
        assert!(View::default().is_default() && !v.is_default());
    }
}
