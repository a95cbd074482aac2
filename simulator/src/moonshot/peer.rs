//! The peer traffic of one tick, as real `presence_peer` frames: changes grouped per receiving
//! node into one `PeerFrame::Tick` whose `SlotUpdate`s group them by slot, encoded (and, on
//! the receiving side, decoded) with the link's own codec, so the bytes counted are the bytes
//! a node would put on (or take off) its QUIC streams, before QUIC's own framing.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use presence_core::Presence;
use presence_peer::{PeerEntry, PeerFrame, SlotUpdate};

/// The epoch every simulated slot assignment has (nothing moves during a run).
pub const EPOCH: i64 = 1;

/// A presence as its owner puts it on the wire, with its status text.
pub fn entry_of(user: String, p: &Presence) -> (PeerEntry, Option<String>) {
    (
        PeerEntry::from_presence(user, p),
        p.text.as_ref().map(|t| t.to_string()),
    )
}

/// The presence a receiver reads from an entry.
pub fn presence_of(e: &PeerEntry, text: Option<&str>) -> Result<Presence> {
    match e.presence(text) {
        Some(p) => Ok(p),
        None => bail!("status {} of {} is not one a peer sends", e.status, e.user),
    }
}

/// One slot's queued entries and their status texts (index into the entries, text).
type SlotQueue = (Vec<PeerEntry>, Vec<(u32, String)>);

/// Builds one tick's frames from one sender, one frame per receiving node.
#[derive(Debug)]
pub struct Frames {
    nodes: u8,
    /// Per receiving node: slot -> (entries, texts).
    pending: Vec<BTreeMap<u16, SlotQueue>>,
    /// Next sequence number per (receiver, slot).
    seq: Vec<u64>,
}

/// One encoded frame.
#[derive(Debug)]
pub struct Encoded {
    pub to: u8,
    pub entries: u64,
    pub bytes: rkyv::util::AlignedVec,
}

impl Frames {
    pub fn new(nodes: u8) -> Self {
        Self {
            nodes,
            pending: (0..nodes).map(|_| BTreeMap::new()).collect(),
            seq: vec![0; usize::from(nodes) * usize::from(presence_cluster::SLOTS)],
        }
    }

    /// Queues `entry` (of a user of `slot`) for node `to`.
    pub fn push(&mut self, to: u8, slot: u16, entry: PeerEntry, text: Option<String>) {
        let (entries, texts) = self.pending[usize::from(to)].entry(slot).or_default();
        if let Some(t) = text {
            texts.push((entries.len() as u32, t));
        }
        entries.push(entry);
    }

    /// Encodes this tick's frames (one per node with something queued) and empties the queue.
    pub fn finish(&mut self, tick: u64) -> Result<Vec<Encoded>> {
        let mut out = Vec::new();
        for to in 0..self.nodes {
            let queued = std::mem::take(&mut self.pending[usize::from(to)]);
            if queued.is_empty() {
                continue;
            }
            let mut entries = 0u64;
            let slots: Vec<SlotUpdate> = queued
                .into_iter()
                .map(|(slot, (e, texts))| {
                    entries += e.len() as u64;
                    let i =
                        usize::from(to) * usize::from(presence_cluster::SLOTS) + usize::from(slot);
                    self.seq[i] += 1;
                    SlotUpdate {
                        slot,
                        epoch: EPOCH,
                        seq: self.seq[i],
                        snapshot: false,
                        entries: e,
                        texts,
                    }
                })
                .collect();
            let bytes = PeerFrame::Tick { tick, slots }.encode()?;
            out.push(Encoded { to, entries, bytes });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{State, Status};

    #[test]
    fn presences_survive_the_wire() {
        for p in [
            Presence::NEVER_SEEN,
            Presence {
                state: State::Idle(2),
                last_active: Some(1_767_225_600_000),
                status: Status::Busy,
                text: Some("out".into()),
            },
            Presence {
                state: State::Online,
                last_active: Some(5),
                status: Status::Dnd,
                text: None,
            },
        ] {
            let (e, t) = entry_of("u1".into(), &p);
            assert_eq!(presence_of(&e, t.as_deref()).ok(), Some(p));
        }
    }

    #[test]
    fn frames_group_by_node_and_slot_and_round_trip() {
        let mut f = Frames::new(3);
        let p = Presence::NEVER_SEEN;
        for (to, slot, u) in [(1u8, 7u16, "a"), (1, 7, "b"), (1, 9, "c"), (2, 7, "d")] {
            let (e, t) = entry_of(u.into(), &p);
            f.push(to, slot, e, t);
        }
        let out = f.finish(5).expect("encode");
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].to, out[0].entries), (1, 3));
        let Ok(PeerFrame::Tick { tick, slots }) = PeerFrame::decode(&out[0].bytes) else {
            panic!("not a tick frame");
        };
        assert_eq!(tick, 5);
        assert_eq!(slots.len(), 2);
        assert_eq!(
            (slots[0].slot, slots[0].seq, slots[0].entries.len()),
            (7, 1, 2)
        );
        // Sequence numbers run per (receiver, slot).
        let (e, t) = entry_of("a".into(), &p);
        f.push(1, 7, e, t);
        let again = f.finish(6).expect("encode");
        let Ok(PeerFrame::Tick { slots, .. }) = PeerFrame::decode(&again[0].bytes) else {
            panic!("not a tick frame");
        };
        assert_eq!(slots[0].seq, 2);
    }
}
