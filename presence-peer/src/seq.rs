//! Sequencing on the peer link: each slot's updates form a chain under the owner's epoch,
//! started by a snapshot. A receiver that sees a gap, or a delta of an epoch it never saw the
//! snapshot of, asks for a snapshot ([`crate::PeerFrame::Resync`]) and ignores the slot's
//! deltas until it comes; updates under an older epoch (a former owner's, late) are dropped.
//! A sender starts every slot with a snapshot: on a new connection, a new epoch, a resync
//! request, or after its queue to the peer overflowed.
//!
//! Clock- and socket-free: the node calls these as frames come and go.

use std::collections::{BTreeSet, HashMap};

/// What the receiver does with one slot update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Apply the entries as changes.
    Apply,
    /// A snapshot: set the listed users, and drop the slot's mirrored users not listed.
    Replace,
    /// A former owner's, or a duplicate: drop it.
    Stale,
    /// Lost track: drop it, and send `Resync { slot }` to the sender.
    Resync,
    /// Waiting for a snapshot already asked for: drop it.
    Waiting,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    epoch: i64,
    next: u64,
    waiting: bool,
}

/// The receiving side, for all peers together (slots move between peers; epochs order them).
#[derive(Debug, Default)]
pub struct Inbound {
    slots: HashMap<u16, Track>,
}

impl Inbound {
    pub fn new() -> Inbound {
        Inbound::default()
    }

    /// Judges one update of `slot`.
    pub fn on_update(&mut self, slot: u16, epoch: i64, seq: u64, snapshot: bool) -> Verdict {
        let t = self.slots.get_mut(&slot);
        match (t, snapshot) {
            (Some(t), _) if epoch < t.epoch => Verdict::Stale,
            (_, true) => {
                self.slots.insert(
                    slot,
                    Track {
                        epoch,
                        next: seq.saturating_add(1),
                        waiting: false,
                    },
                );
                Verdict::Replace
            }
            (None, false) => {
                self.slots.insert(
                    slot,
                    Track {
                        epoch,
                        next: 0,
                        waiting: true,
                    },
                );
                Verdict::Resync
            }
            (Some(t), false) if epoch > t.epoch => {
                *t = Track {
                    epoch,
                    next: 0,
                    waiting: true,
                };
                Verdict::Resync
            }
            (Some(t), false) if t.waiting => Verdict::Waiting,
            (Some(t), false) if seq < t.next => Verdict::Stale,
            (Some(t), false) if seq == t.next => {
                t.next += 1;
                Verdict::Apply
            }
            (Some(t), false) => {
                t.waiting = true;
                Verdict::Resync
            }
        }
    }

    /// The link to a peer broke: the slots it sent must start again from snapshots (the new
    /// connection's sender sends them unasked).
    pub fn forget(&mut self, slots: impl IntoIterator<Item = u16>) {
        for s in slots {
            if let Some(t) = self.slots.get_mut(&s) {
                t.waiting = true;
            }
        }
    }

    /// The slot is no longer mirrored from anyone (no friend of a local user in it).
    pub fn drop_slot(&mut self, slot: u16) {
        self.slots.remove(&slot);
    }
}

/// How the sender must send a slot this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Next {
    pub seq: u64,
    /// Send the whole set, not the changes.
    pub snapshot: bool,
}

/// The sending side toward one peer.
#[derive(Debug, Default)]
pub struct Outbound {
    slots: HashMap<u16, (i64, u64)>,
    due: BTreeSet<u16>,
}

impl Outbound {
    pub fn new() -> Outbound {
        Outbound::default()
    }

    /// The sequence number of this tick's update of `slot` under `epoch`, and whether it must
    /// be a snapshot.
    pub fn next(&mut self, slot: u16, epoch: i64) -> Next {
        let due = self.due.remove(&slot);
        match self.slots.get_mut(&slot) {
            Some((e, seq)) if *e == epoch && !due => {
                *seq += 1;
                Next {
                    seq: *seq,
                    snapshot: false,
                }
            }
            _ => {
                self.slots.insert(slot, (epoch, 1));
                Next {
                    seq: 1,
                    snapshot: true,
                }
            }
        }
    }

    /// The peer asked for a snapshot of `slot`, or its queue overflowed with `slot` in it.
    pub fn resync(&mut self, slot: u16) {
        self.due.insert(slot);
    }

    /// Slots with a snapshot owed, to send this tick even without changes.
    pub fn due(&self) -> impl Iterator<Item = u16> + '_ {
        self.due.iter().copied()
    }

    /// A new connection: every slot starts from a snapshot again.
    pub fn reset(&mut self) {
        self.slots.clear();
        self.due.clear();
    }

    /// The slot is no longer sent to this peer (lost, or no friends there any more).
    pub fn drop_slot(&mut self, slot: u16) {
        self.slots.remove(&slot);
        self.due.remove(&slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_applies_in_order() {
        let mut out = Outbound::new();
        let mut inb = Inbound::new();
        for i in 0..5 {
            let n = out.next(3, 10);
            assert_eq!((n.seq, n.snapshot), (i + 1, i == 0));
            let v = inb.on_update(3, 10, n.seq, n.snapshot);
            assert_eq!(
                v,
                if i == 0 {
                    Verdict::Replace
                } else {
                    Verdict::Apply
                }
            );
        }
    }

    #[test]
    fn a_gap_asks_once_then_waits_for_the_snapshot() {
        let mut inb = Inbound::new();
        assert_eq!(inb.on_update(1, 5, 1, true), Verdict::Replace);
        assert_eq!(inb.on_update(1, 5, 3, false), Verdict::Resync);
        assert_eq!(inb.on_update(1, 5, 4, false), Verdict::Waiting);
        assert_eq!(inb.on_update(1, 5, 7, true), Verdict::Replace);
        assert_eq!(inb.on_update(1, 5, 8, false), Verdict::Apply);
        assert_eq!(inb.on_update(1, 5, 8, false), Verdict::Stale, "a duplicate");
    }

    #[test]
    fn a_delta_of_an_unseen_epoch_asks_for_its_snapshot() {
        let mut inb = Inbound::new();
        assert_eq!(
            inb.on_update(2, 5, 4, false),
            Verdict::Resync,
            "never saw a snapshot"
        );
        assert_eq!(inb.on_update(2, 5, 1, true), Verdict::Replace);
        assert_eq!(
            inb.on_update(2, 9, 2, false),
            Verdict::Resync,
            "a new owner"
        );
        assert_eq!(inb.on_update(2, 9, 1, true), Verdict::Replace);
    }

    #[test]
    fn a_former_owners_late_updates_are_dropped() {
        let mut inb = Inbound::new();
        assert_eq!(inb.on_update(2, 9, 1, true), Verdict::Replace);
        assert_eq!(inb.on_update(2, 5, 6, false), Verdict::Stale);
        assert_eq!(inb.on_update(2, 5, 1, true), Verdict::Stale);
    }

    #[test]
    fn resync_and_reset_restart_from_a_snapshot() {
        let mut out = Outbound::new();
        assert!(out.next(1, 1).snapshot);
        assert!(!out.next(1, 1).snapshot);
        out.resync(1);
        assert_eq!(out.due().collect::<Vec<_>>(), [1]);
        assert_eq!(
            out.next(1, 1),
            Next {
                seq: 1,
                snapshot: true
            }
        );
        assert!(out.due().next().is_none());
        assert!(out.next(1, 2).snapshot, "a new epoch");
        out.reset();
        assert!(out.next(1, 2).snapshot, "a new connection");
    }

    #[test]
    fn a_broken_link_waits_for_new_snapshots() {
        let mut inb = Inbound::new();
        assert_eq!(inb.on_update(4, 1, 1, true), Verdict::Replace);
        inb.forget([4]);
        assert_eq!(inb.on_update(4, 1, 2, false), Verdict::Waiting);
        assert_eq!(inb.on_update(4, 1, 1, true), Verdict::Replace);
    }
}
