//! `presence-peer`: the node-to-node presence link of a cluster (ALPN `presence-peer/1`).
//!
//! Each node owns some slots' users and is the truth for them. Once per tick it sends each
//! peer one [`PeerFrame::Tick`] with the changes of its users that have friends on that peer,
//! slot by slot, tagged (slot, epoch, sequence); the receiver mirrors them into its engine
//! before its own tick. The frames are rkyv archives ([`frame`]), checked on every read; the
//! link is authenticated by a cluster secret bound to the TLS session ([`auth`]); gaps, new
//! epochs and overflows turn into snapshots of the slot ([`seq`]).

pub mod auth;
mod entry;
pub mod frame;
pub mod link;
pub mod seq;

pub use frame::{ChatPush, FrameError, MAX_PEER_FRAME, PeerEntry, PeerFrame, SlotUpdate};
pub use link::{Identity, Link, LinkError, LinkReceiver, LinkSender, Me};
pub use seq::{Inbound, Next, Outbound, Verdict};

/// The peer link's ALPN.
pub const ALPN: &[u8] = b"presence-peer/1";
