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

mod codec;
pub mod ids;
mod relay;
pub mod store;
mod types;
pub mod webhook;

pub use codec::Corrupt;
pub use ids::{IdGen, MsgId, ParseMsgIdError};
pub use relay::{
    BatchId, ChatError, Directory, Limits, Reader, Relay, SendOutcome, SyncPage, retention_cutoff,
};
pub use store::{
    AckRow, ChatStore, DedupeRow, FjallStore, RedbStore, StoreError, StoreKind, TrimCounts,
    WriteBatch,
};
pub use types::{Conversation, EntryKind, InboxEntry, MAX_ID_LEN, StoredMessage, Target};
