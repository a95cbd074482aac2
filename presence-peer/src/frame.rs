//! What nodes say to each other, as rkyv archives: compact, validated on every read, never
//! trusted beyond [`MAX_PEER_FRAME`] bytes.

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The largest frame a node accepts from a peer (a snapshot of a big slot fits; a peer that
/// sends more is cut off).
pub const MAX_PEER_FRAME: usize = 16 << 20;

/// One message on the peer link.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum PeerFrame {
    /// The first frame each way: who speaks, and its proof of the cluster secret, bound to
    /// this connection's TLS session (see [`crate::auth`]).
    Hello { node: String, proof: [u8; 32] },
    /// Everything this tick about the sender's users that the receiver mirrors, slot by slot:
    /// one frame per peer per tick, whatever the number of users.
    Tick { tick: u64, slots: Vec<SlotUpdate> },
    /// The receiver lost track of a slot (a gap, or an epoch it has not seen the start of):
    /// the owner answers with a snapshot of it.
    Resync { slot: u16 },
    /// The sender has applied the graph's change log up to `change` and published it in a
    /// tick: a session that starts on the sender from now on sees those changes. An admin
    /// write is answered once every linked node says so (read-your-writes on any node).
    Applied { change: i64 },
    /// Slots' users as their owner leaves them, sent by the node losing the slots to the
    /// node they move to (each under the map's epoch of the new assignment): every user of
    /// each slot it has seen. The new owner starts its users' state machines from it, so a user online
    /// through the move stays online (its sessions reconnect within the grace period) instead
    /// of showing never seen, then online.
    Handoff { slots: Vec<SlotUpdate> },
    /// Chat for users the receiver serves: durable inbox entries (each owner's in the order
    /// committed here; the receiver's session fills any gap from the store) and typing
    /// notices, as the client frames they become.
    Chat { items: Vec<ChatPush> },
    /// Every user the sender wants mirrored beyond its users' friends (the members of big
    /// groups watched there, protocol v1.1 `watch_group`), replacing the set it sent before.
    /// Each receiver streams the ones it owns as if they had a friend on the sender: in its
    /// ticks' updates and in its slot snapshots. Sent whole on a link coming up and whenever
    /// it changes, so a slot's new owner knows it already.
    Follow { users: Vec<String> },
}

/// One chat frame for the live devices of `owner`, a user the receiver serves.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChatPush {
    pub owner: String,
    /// The entry's seq in `owner`'s inbox; 0: not an inbox entry (a typing notice).
    pub seq: u64,
    /// The client frame (JSON), as the owner's devices get it.
    pub frame: Vec<u8>,
    /// For a message from someone else: `(message id, sender)`, for the
    /// `message.undelivered` webhook the receiver sends if `owner` has no live device.
    pub message: Option<(u64, String)>,
}

/// Changes of one slot's users, under the sender's epoch for the slot.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SlotUpdate {
    pub slot: u16,
    /// The etcd revision of the sender's assignment of the slot.
    pub epoch: i64,
    /// Per (sender, receiver, slot, epoch): 1 for the first update, +1 for each next one.
    pub seq: u64,
    /// The whole set: every user of the slot the receiver mirrors; any user it mirrors from
    /// this slot and that is not listed is gone.
    pub snapshot: bool,
    pub entries: Vec<PeerEntry>,
    /// Custom status texts: (index into `entries`, text); an entry without one has none.
    pub texts: Vec<(u32, String)>,
}

/// One user's visible presence, as its owner publishes it (invisible already applied).
/// Fields in this order keep an entry at 32 bytes for ids that rkyv stores inline (with the
/// workspace's 64-bit relative pointers, up to 16 bytes; longer ids add their length); a
/// custom status text goes in [`SlotUpdate::texts`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeerEntry {
    /// Milliseconds since the epoch; 0: never seen.
    pub last_active: u64,
    /// The app's user id.
    pub user: String,
    /// 0 offline, 1 online, 2 + level idle.
    pub state: u8,
    /// 0 available, 1 busy, 2 dnd (invisible is never sent: it reads as offline).
    pub status: u8,
    /// The receiver no longer needs this user (its last friend there went): stop mirroring.
    pub gone: bool,
}

/// Why bytes from a peer are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("peer frame of {0} bytes, over the {MAX_PEER_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("invalid peer frame: {0}")]
    Invalid(String),
}

impl PeerFrame {
    /// The archive's bytes.
    pub fn encode(&self) -> Result<AlignedVec, FrameError> {
        let bytes = rkyv::to_bytes::<rancor::Error>(self)
            .map_err(|e| FrameError::Invalid(e.to_string()))?;
        if bytes.len() > MAX_PEER_FRAME {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Checks and reads a frame (any alignment: the bytes are copied to an aligned buffer
    /// first).
    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, FrameError> {
        if bytes.len() > MAX_PEER_FRAME {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<PeerFrame, rancor::Error>(&aligned)
            .map_err(|e| FrameError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick() -> PeerFrame {
        PeerFrame::Tick {
            tick: 42,
            slots: vec![SlotUpdate {
                slot: 7,
                epoch: 1234,
                seq: 3,
                snapshot: false,
                entries: vec![
                    PeerEntry {
                        user: "alice".into(),
                        state: 1,
                        status: 1,
                        last_active: 1_700_000_000_000,
                        gone: false,
                    },
                    PeerEntry {
                        user: "a user id of more than eight bytes, with a \0".into(),
                        state: 0,
                        status: 0,
                        last_active: 0,
                        gone: true,
                    },
                ],
                texts: vec![(0, "in a meeting".into())],
            }],
        }
    }

    #[test]
    fn round_trips() {
        for f in [
            tick(),
            PeerFrame::Hello {
                node: "n1".into(),
                proof: [9; 32],
            },
            PeerFrame::Resync { slot: 1023 },
            PeerFrame::Applied { change: 42 },
            PeerFrame::Handoff {
                slots: match tick() {
                    PeerFrame::Tick { slots, .. } => slots,
                    _ => Vec::new(),
                },
            },
            PeerFrame::Chat {
                items: vec![
                    ChatPush {
                        owner: "bob".into(),
                        seq: 7,
                        frame: br#"{"type":"inbox"}"#.to_vec(),
                        message: Some((1 << 40, "ann".into())),
                    },
                    ChatPush {
                        owner: "cy".into(),
                        seq: 0,
                        frame: br#"{"type":"typing"}"#.to_vec(),
                        message: None,
                    },
                ],
            },
        ] {
            let bytes = f.encode().expect("encode");
            assert_eq!(PeerFrame::decode(&bytes), Ok(f));
        }
    }

    #[test]
    fn bytes_per_change_are_small() {
        // One state change of a user with a 6-byte id, no status text.
        let one = PeerFrame::Tick {
            tick: 1,
            slots: vec![SlotUpdate {
                slot: 1,
                epoch: 1,
                seq: 1,
                snapshot: false,
                entries: vec![
                    PeerEntry {
                        user: "123456".into(),
                        state: 1,
                        status: 0,
                        last_active: 1,
                        gone: false,
                    };
                    100
                ],
                texts: Vec::new(),
            }],
        };
        let n = one.encode().expect("encode").len();
        assert!(n <= 100 * 32 + 128, "{n} bytes for 100 changes");
    }

    #[test]
    fn damage_is_an_error() {
        let bytes = tick().encode().expect("encode");
        assert!(PeerFrame::decode(&bytes[..bytes.len() / 2]).is_err());
        assert!(PeerFrame::decode(&[]).is_err());
        assert_eq!(
            PeerFrame::decode(&vec![0; MAX_PEER_FRAME + 1]),
            Err(FrameError::TooLarge(MAX_PEER_FRAME + 1))
        );
    }
}
