//! Durable storage of the relay: the trait the logic talks to, the group-commit batch, and two
//! embedded implementations ([`RedbStore`], [`FjallStore`]) in a folder of the data dir.
//!
//! The trait is small and synchronous so a networked store (replicated log, KV service) can
//! implement it later without touching the relay. Reads return only what a `commit` has made
//! durable; `commit` returns once its whole batch is on disk (fsync'd) or not at all.

mod fjall_store;
mod redb_store;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub use fjall_store::FjallStore;
pub use redb_store::RedbStore;

use crate::codec::Corrupt;
use crate::ids::MsgId;
use crate::types::{Conversation, InboxEntry, StoredMessage};

/// Why the store could not answer or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chat store: {0}")]
    Backend(String),
    #[error("chat store: {0}")]
    Corrupt(#[from] Corrupt),
    #[error("chat store io: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A dedupe row: `(sender, client_id)` was sent as `msg_id` at `ts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeRow {
    pub sender: String,
    pub client_id: String,
    pub msg_id: MsgId,
    pub ts: u64,
}

/// A device's acknowledged inbox position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRow {
    pub user: String,
    pub device: String,
    pub seq: u64,
}

/// Everything one group commit writes, atomically.
///
/// Invariants the relay keeps (a hand-built batch must keep them too): a `msg_id` appears at
/// most once in `messages`, a `(user, seq)` at most once in `inbox`, a `(sender, client_id)`
/// at most once in `dedupe`, a `(user, device)` at most once in `acks`; each user's inbox
/// entries are in increasing seq order, continuing that user's log without a gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Which batch this is (the relay numbers them 1, 2, 3, … in the order they must commit).
    pub id: u64,
    /// New messages and updated ones (edit, delete): whole rows, put as they are. The store
    /// also writes each message's history index row.
    pub messages: Vec<StoredMessage>,
    /// Inbox appends, `(owner, entry)`.
    pub inbox: Vec<(String, InboxEntry)>,
    pub dedupe: Vec<DedupeRow>,
    pub acks: Vec<AckRow>,
}

impl WriteBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.inbox.is_empty()
            && self.dedupe.is_empty()
            && self.acks.is_empty()
    }

    /// Rows the batch writes (history index rows included).
    pub fn rows(&self) -> usize {
        2 * self.messages.len() + self.inbox.len() + self.dedupe.len() + self.acks.len()
    }
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimCounts {
    /// Messages (with their history index rows).
    pub messages: u64,
    pub inbox: u64,
    pub dedupe: u64,
}

/// The relay's durable state. Every method may be called from any thread; `commit` is called
/// by one driver at a time, batch after batch, in batch id order.
pub trait ChatStore: Send + Sync {
    /// The last seq of `user`'s inbox, 0 if it has none.
    fn inbox_head(&self, user: &str) -> Result<u64, StoreError>;
    /// Up to `limit` entries of `user`'s inbox with `seq > after`, in seq order.
    fn read_inbox(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError>;
    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, StoreError>;
    /// The message a `(sender, client_id)` was committed as, with its ts.
    fn dedupe(&self, sender: &str, client_id: &str) -> Result<Option<(MsgId, u64)>, StoreError>;
    /// Up to `limit` messages of a conversation with ids below `before` (all if `None`),
    /// newest first: pass the last id of a page as `before` to get the next older page.
    fn history(
        &self,
        conversation: &Conversation,
        before: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The last seq `device` of `user` acknowledged, 0 if none.
    fn device_ack(&self, user: &str, device: &str) -> Result<u64, StoreError>;
    /// The newest message id in the store (to seed the id generator after a restart).
    fn last_msg_id(&self) -> Result<Option<MsgId>, StoreError>;
    /// Writes the whole batch atomically; durable on disk when it returns `Ok`.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Retention: removes messages minted before `older_than_ms` (ms since the Unix epoch)
    /// with their history and dedupe rows, and inbox entries with `ts < older_than_ms` — except
    /// each inbox's newest entry, which is kept so an inbox head never goes back. Each inbox
    /// is cut from its start up to its first entry new enough. Durable when it returns.
    fn trim(&self, older_than_ms: u64) -> Result<TrimCounts, StoreError>;

    /// About how many dedupe rows there are (sizes the relay's filter of used ids).
    fn dedupe_len_hint(&self) -> Result<usize, StoreError>;

    /// Calls `f` with the key of every dedupe row (`codec::dedupe_key` bytes), so a relay can
    /// build its filter of client ids already used at start.
    fn dedupe_keys(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), StoreError>;
}

/// The store implementations, for a node flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// fjall (LSM tree, journal fsync'd per commit) — the default: see the crate README for
    /// the measurement that chose it.
    #[default]
    Fjall,
    /// redb (copy-on-write B-tree, fsync per commit).
    Redb,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Fjall => "fjall",
            StoreKind::Redb => "redb",
        }
    }

    /// Opens (creating if needed) this kind of store in the folder `dir`.
    pub fn open(self, dir: &Path) -> Result<Arc<dyn ChatStore>, StoreError> {
        Ok(match self {
            StoreKind::Fjall => Arc::new(FjallStore::open(dir)?),
            StoreKind::Redb => Arc::new(RedbStore::open(dir)?),
        })
    }
}

/// An unknown store name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown chat store {0:?}: expected \"fjall\" or \"redb\"")]
pub struct ParseStoreKindError(pub String);

impl FromStr for StoreKind {
    type Err = ParseStoreKindError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fjall" => Ok(StoreKind::Fjall),
            "redb" => Ok(StoreKind::Redb),
            _ => Err(ParseStoreKindError(s.to_owned())),
        }
    }
}

/// The exclusive upper bound of a key range holding every key that starts with `prefix`
/// (`None` when there is none: the prefix is all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
