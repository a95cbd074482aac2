//! `chat-relay`: the clock- and socket-free chat layer on top of the presence engine.
//!
//! Messages get time-sortable 64-bit ids ([`ids`]); every user has an inbox log with a gap-free
//! sequence, and a message is appended to the inbox of every participant (fan-out on write);
//! edits, deletes and read receipts are inbox entries too. The [`Relay`] validates and
//! sequences operations and gathers their writes into one pending [`WriteBatch`]; the driver
//! (the node) commits that batch to a [`ChatStore`] — durable when `commit` returns — and only
//! then answers the senders and delivers the entries. No clock or socket here: time (`now_ms`)
//! and the node id come in as arguments. The relay itself is plain method calls, but it is not
//! free of I/O: it reads the store for what it has not cached, the stores ([`store`]) read and
//! write files in the folder they are given, and [`FjallStore`] runs fjall's background
//! threads (memtable flushes, compaction).
//!
//! # Driving the relay
//!
//! Operations go in with the caller's `now_ms` (ms since the Unix epoch) and come back with
//! the [`BatchId`] they ride in; nothing is answered until that batch is durable. One
//! committer takes batch after batch, commits each outside the relay's lock, and reports it:
//! [`Relay::committed`], then answer the batch's waiters and deliver its `inbox` in order; or,
//! if the commit failed, [`Relay::reset`], and fail the waiters of that batch and of the
//! pending one `reset` dropped. (In the node the committer is a thread of its own and the
//! relay sits behind a lock; here everything runs in turn.)
//!
//! ```rust
//! use std::collections::HashMap;
//!
//! use chat_relay::{BatchId, ChatStore, Directory, IdGen, Limits, Relay, SendOutcome, StoreKind};
//! use chat_relay::Target;
//!
//! struct Everyone; // the app's social graph: here everyone is everyone's friend
//! impl Directory for Everyone {
//!     fn are_friends(&self, _: &str, _: &str) -> bool { true }
//!     fn group_members(&self, _: &str) -> Option<Vec<String>> { None }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let folder = tempfile::tempdir()?;
//! let store = StoreKind::Fjall.open(folder.path())?;
//! let mut relay = Relay::new(store.clone(), IdGen::new(1)?, Limits::default())?;
//! let mut waiters: HashMap<BatchId, Vec<String>> = HashMap::new(); // client ids to answer
//! let mut delivered = Vec::new();
//! let start_ms = 1_750_000_000_000; // from the driver's clock
//! let sends = [("alice", "bob"), ("bob", "alice"), ("alice", "bob")];
//! for (i, &(from, to)) in sends.iter().enumerate() {
//!     let (client_id, to) = (format!("c{i}"), Target::User(to.into()));
//!     let now_ms = start_ms + i as u64;
//!     let wait_on = match relay.send(now_ms, from, &client_id, &to, "hi", &Everyone)? {
//!         SendOutcome::New { batch, .. } => Some(batch),
//!         SendOutcome::Duplicate { pending, .. } => pending, // None: durable, answer now
//!     };
//!     if let Some(batch) = wait_on {
//!         waiters.entry(batch).or_default().push(client_id);
//!     }
//!     // The committer: here after every send; in the node, whenever it is free.
//!     while let Some(batch) = relay.take_batch() {
//!         match store.commit(&batch) {
//!             Ok(()) => {
//!                 relay.committed(batch.id);
//!                 waiters.remove(&batch.id); // answer each `sent`
//!                 delivered.extend(batch.inbox); // to each owner's live devices, in order
//!             }
//!             Err(_) => {
//!                 let dropped = relay.reset();
//!                 for b in [Some(batch.id), dropped].into_iter().flatten() {
//!                     waiters.remove(&b); // answer each an error: retry with the same id
//!                 }
//!             }
//!         }
//!     }
//! }
//! assert!(waiters.is_empty());
//! assert_eq!(delivered.len(), 6); // three messages, each in two inboxes
//! assert_eq!(relay.reader().sync("bob", 0, 10)?.entries.len(), 3);
//! # Ok(())
//! # }
//! ```

mod codec;
pub mod ids;
mod relay;
pub mod store;
mod types;
pub mod webhook;

pub use codec::Corrupt;
pub use ids::{IdGen, MsgId, ParseMsgIdError};
pub use relay::{
    BatchId, ChatError, Directory, Limits, Lookup, Reader, Relay, SendOutcome, SyncPage,
    retention_cutoff,
};
pub use store::{
    AckRow, ChatStore, DedupeRow, FjallStore, RedbStore, StoreError, StoreKind, TrimCounts,
    WriteBatch, dedupe_key,
};
pub use types::{Conversation, EntryKind, InboxEntry, MAX_ID_LEN, StoredMessage, Target};
