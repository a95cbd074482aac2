//! Which slots this node serves now, slot by slot: a slot is served only while the map says
//! it is this node's, the lease surely holds, and its users' friend lists are loaded; a slot
//! that stops being this node's has its sessions moved before its users are released.
//!
//! ```text
//!   Idle ──mine──> Loading(e) ──loaded(e)──> Serving(e) ──not mine / fence down──> Draining
//!    ^               │ not mine                 │ mine under a new epoch e'          │
//!    └───────────────┘                          └──> Serving(e') (peers re-snapshot) │
//!    ^──────────────────────────────── drained (no session left) ────────────────────┘
//! ```
//!
//! Clock- and socket-free: the driver feeds the map and the fence, and reports loads and
//! drains; the returned [`Actions`] say what to start.

use crate::map::SlotMap;
use crate::slot::{SLOTS, Slot};

/// Where one slot stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Not this node's.
    Idle,
    /// This node's under `epoch`; its friend lists are being loaded: hellos wait or retry.
    Loading { epoch: i64 },
    /// Served under `epoch`.
    Serving { epoch: i64 },
    /// No longer this node's (or the fence fell): its sessions are being moved, then its
    /// users released.
    Draining,
}

/// What the driver must start after a change. Each list is in slot order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use = "the driver must start every action"]
pub struct Actions {
    /// Load these slots' friend lists (then report [`SlotTable::loaded`]).
    pub load: Vec<(Slot, i64)>,
    /// Serve these now, under these epochs (take their users in the engine, send peers
    /// snapshots).
    pub serve: Vec<(Slot, i64)>,
    /// Tell these slots' sessions `moved` and end them (then report [`SlotTable::drained`]).
    pub evict: Vec<Slot>,
    /// Release these slots' users in the engine: their sessions are gone.
    pub release: Vec<Slot>,
}

impl Actions {
    pub fn is_empty(&self) -> bool {
        self.load.is_empty()
            && self.serve.is_empty()
            && self.evict.is_empty()
            && self.release.is_empty()
    }
}

/// Every slot's state on this node.
#[derive(Debug, Clone)]
pub struct SlotTable {
    me: String,
    states: Vec<SlotState>,
}

impl SlotTable {
    /// Nothing served yet.
    pub fn new(me: &str) -> SlotTable {
        SlotTable {
            me: me.to_owned(),
            states: vec![SlotState::Idle; usize::from(SLOTS)],
        }
    }

    pub fn state(&self, slot: Slot) -> SlotState {
        self.states[slot.index()]
    }

    /// The epoch `slot` is served under, if it is served.
    pub fn serving(&self, slot: Slot) -> Option<i64> {
        match self.states[slot.index()] {
            SlotState::Serving { epoch } => Some(epoch),
            _ => None,
        }
    }

    /// How many slots are served.
    pub fn served(&self) -> usize {
        self.states
            .iter()
            .filter(|s| matches!(s, SlotState::Serving { .. }))
            .count()
    }

    /// The map, or whether the lease surely holds, changed.
    pub fn on_view(&mut self, map: &SlotMap, holds: bool) -> Actions {
        let mut a = Actions::default();
        for slot in Slot::all() {
            let mine = map
                .owner(slot)
                .filter(|o| holds && *o.node == *self.me)
                .map(|o| o.epoch);
            let st = &mut self.states[slot.index()];
            match (*st, mine) {
                (SlotState::Idle, Some(epoch)) => {
                    *st = SlotState::Loading { epoch };
                    a.load.push((slot, epoch));
                }
                (SlotState::Loading { epoch: was }, Some(epoch)) if was != epoch => {
                    *st = SlotState::Loading { epoch };
                    a.load.push((slot, epoch));
                }
                (SlotState::Loading { .. }, None) => *st = SlotState::Idle,
                (SlotState::Serving { epoch: was }, Some(epoch)) if was != epoch => {
                    *st = SlotState::Serving { epoch };
                    a.serve.push((slot, epoch));
                }
                (SlotState::Serving { .. }, None) => {
                    *st = SlotState::Draining;
                    a.evict.push(slot);
                }
                // Given back before its sessions were gone: they were told to move already
                // and will find their way back; load it afresh once drained.
                (SlotState::Draining, _)
                | (SlotState::Idle, None)
                | (SlotState::Loading { .. }, Some(_))
                | (SlotState::Serving { .. }, Some(_)) => {}
            }
        }
        a
    }

    /// `slot`'s load under `epoch` finished: serve it, unless it moved on meanwhile (a late
    /// load of an old epoch, or of a slot no longer this node's, is dropped).
    pub fn loaded(&mut self, slot: Slot, epoch: i64) -> Actions {
        let mut a = Actions::default();
        let st = &mut self.states[slot.index()];
        if *st == (SlotState::Loading { epoch }) {
            *st = SlotState::Serving { epoch };
            a.serve.push((slot, epoch));
        }
        a
    }

    /// `slot`'s sessions are gone: release its users. The next view loads it again if it is
    /// this node's once more.
    pub fn drained(&mut self, slot: Slot) -> Actions {
        let mut a = Actions::default();
        let st = &mut self.states[slot.index()];
        if *st == SlotState::Draining {
            *st = SlotState::Idle;
            a.release.push(slot);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Member, Owner};

    fn map(owners: &[(u16, &str, i64)]) -> SlotMap {
        let mut m = SlotMap::new();
        for (s, n, e) in owners {
            m.set_owner(
                Slot::new(*s).expect("slot"),
                Some(Owner {
                    node: (*n).into(),
                    epoch: *e,
                }),
            );
            m.put_member(Member {
                id: (*n).into(),
                ws: String::new(),
                quic: String::new(),
                lp: String::new(),
                admin: String::new(),
                peer: String::new(),
                peer_cert: String::new(),
                draining: false,
            });
        }
        m
    }

    fn s(n: u16) -> Slot {
        Slot::new(n).expect("slot")
    }

    #[test]
    fn a_slot_is_served_only_after_its_load() {
        let mut t = SlotTable::new("a");
        let a = t.on_view(&map(&[(1, "a", 10), (2, "b", 11)]), true);
        assert_eq!(a.load, [(s(1), 10)]);
        assert_eq!(t.serving(s(1)), None, "loading, not yet served");
        assert!(
            t.on_view(&map(&[(1, "a", 10)]), true).is_empty(),
            "no second load"
        );
        assert_eq!(t.loaded(s(1), 10).serve, [(s(1), 10)]);
        assert_eq!(t.serving(s(1)), Some(10));
        assert_eq!(t.served(), 1);
    }

    #[test]
    fn a_lost_slot_drains_then_releases() {
        let mut t = SlotTable::new("a");
        let _ = t.on_view(&map(&[(1, "a", 10)]), true);
        let _ = t.loaded(s(1), 10);
        let a = t.on_view(&map(&[(1, "b", 12)]), true);
        assert_eq!(a.evict, [s(1)]);
        assert_eq!(t.serving(s(1)), None, "no hello is served while draining");
        assert_eq!(t.drained(s(1)).release, [s(1)]);
        assert_eq!(t.state(s(1)), SlotState::Idle);
        assert!(t.drained(s(1)).is_empty(), "once");
    }

    #[test]
    fn the_fence_stops_everything_and_a_new_lease_reloads() {
        let mut t = SlotTable::new("a");
        let m = map(&[(1, "a", 10), (2, "a", 10)]);
        let _ = t.on_view(&m, true);
        let _ = t.loaded(s(1), 10);
        // Fence down: the served slot drains, the loading one stops loading.
        let a = t.on_view(&m, false);
        assert_eq!(a.evict, [s(1)]);
        assert_eq!(t.state(s(2)), SlotState::Idle);
        assert!(t.loaded(s(2), 10).is_empty(), "a late load is dropped");
        let _ = t.drained(s(1));
        let a = t.on_view(&m, true);
        assert_eq!(a.load, [(s(1), 10), (s(2), 10)]);
    }

    #[test]
    fn a_new_epoch_reloads_or_re_serves() {
        let mut t = SlotTable::new("a");
        let _ = t.on_view(&map(&[(1, "a", 10), (2, "a", 10)]), true);
        let _ = t.loaded(s(1), 10);
        let a = t.on_view(&map(&[(1, "a", 20), (2, "a", 20)]), true);
        assert_eq!(a.serve, [(s(1), 20)], "served: the new epoch at once");
        assert_eq!(
            a.load,
            [(s(2), 20)],
            "loading: load again under the new epoch"
        );
        assert!(t.loaded(s(2), 10).is_empty(), "the old load is stale");
        assert_eq!(t.loaded(s(2), 20).serve, [(s(2), 20)]);
    }
}
