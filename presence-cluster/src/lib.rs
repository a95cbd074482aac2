//! `presence-cluster`: who owns which user in a presence cluster.
//!
//! Users are split into [`SLOTS`] slots by a documented hash ([`slot_of`]); nodes own slots.
//! etcd decides ownership: every node registers a [`Member`] record under its lease, an
//! elected coordinator assigns each slot to a live member by rendezvous hashing
//! ([`assign::owner`], [`SlotMap::plan`]), and a slot's epoch is the etcd revision of its
//! assignment. A node serves a slot only while its [`Fence`] says its lease is surely alive
//! and the slot's friend lists are loaded ([`SlotTable`]).
//!
//! The modules here are clock- and socket-free: time comes in as `Instant`s, etcd's answers
//! as values.

pub mod assign;
pub mod etcd;
mod fence;
mod map;
mod serve;
mod slot;

pub use fence::{Fence, Sent};
pub use map::{Keys, Member, Owner, Route, SlotMap, SlotRecord};
pub use serve::{Actions, SlotState, SlotTable};
pub use slot::{SLOTS, Slot, slot_of};

/// A node name: 1-64 characters of `A-Z a-z 0-9 . _ -` (it goes into etcd keys and logs).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
