//! Durable storage of the relay: the trait the logic talks to, the group-commit batch, and two
//! embedded implementations ([`RedbStore`], [`FjallStore`]) in a folder of the data dir.
//!
//! The trait is small and synchronous so a networked store (replicated log, KV service) can
//! implement it later without touching the relay. Reads return only what a `commit` has made
//! durable; `commit` returns once its whole batch is on disk (fsync'd) or not at all.

mod fjall_store;
mod redb_store;

use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub use fjall_store::FjallStore;
pub use redb_store::RedbStore;

/// The bytes [`ChatStore::dedupe_keys`] hands out for `(sender, client_id)`: what a store
/// that keeps the two apart (a database's columns) builds them from.
pub use crate::codec::dedupe_key;

use crate::codec::{self, Corrupt};
use crate::ids::MsgId;
use crate::types::{Conversation, ConversationRef, InboxEntry, StoredMessage};

/// Why the store could not answer or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chat store: {0}")]
    Backend(String),
    #[error("chat store: {0}")]
    Corrupt(#[from] Corrupt),
    #[error("chat store io: {0}")]
    Io(#[from] std::io::Error),
    /// A shared store refused a batch: another node has taken `slot` (of one of the batch's
    /// writers) under a later epoch than the one the batch was written under.
    #[error("chat store: slot {slot} was taken by a newer owner (epoch {fenced} > {epoch})")]
    Fenced { slot: u16, epoch: u64, fenced: u64 },
    /// The store's layout is one this build does not know (a newer node wrote it).
    #[error(
        "chat store: its layout is format {found}, this node reads format {} (a newer node wrote it)",
        crate::codec::FORMAT
    )]
    Format { found: u64 },
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
#[must_use = "a taken batch must be committed with `ChatStore::commit`, then reported with \
              `Relay::committed` or `Relay::reset`: its operations wait on it"]
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
    /// For a store several relays write: `(slot, epoch)` for each slot of the batch's
    /// writers (senders, editors, readers, acking users), under the epoch this relay's node
    /// serves it. The store refuses the whole batch ([`StoreError::Fenced`]) if any of them
    /// was taken since under a later epoch, so a former owner that has not yet learnt it
    /// lost a slot writes nothing for it. The driver fills it before the commit; a store
    /// only one relay writes ignores it.
    pub fences: Vec<(u16, u64)>,
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

    /// The batch's rows encoded, table by table, each table's rows in key order.
    ///
    /// Key order because the stores insert row by row into ordered structures (fjall's
    /// memtable skiplists, redb's B-trees), and a batch's inbox, history and dedupe keys land
    /// all over them: in key order, each insert walks down the path the previous one just
    /// brought into the cache. `cargo bench -p chat-relay --bench memtable_order` measures it
    /// on fjall. The sort is stable, so a hand-built batch that repeats a key keeps its last
    /// row winning. Every key and value is encoded into one buffer: the stores copy what they
    /// keep, so a row costs no allocation of its own here.
    pub(crate) fn sorted_rows(&self) -> SortedRows {
        let mut r = SortedRows {
            // About a row's bytes with a short text (the buffer grows for longer ones).
            buf: Vec::with_capacity(128 * self.rows()),
            messages: Vec::with_capacity(self.messages.len()),
            history: Vec::with_capacity(self.messages.len()),
            inbox: Vec::with_capacity(self.inbox.len()),
            dedupe: Vec::with_capacity(self.dedupe.len()),
            acks: Vec::with_capacity(self.acks.len()),
        };
        let buf = &mut r.buf;
        for m in &self.messages {
            r.messages
                .push((m.msg_id, span(buf, |b| codec::put_message(b, m))));
            r.history.push(span(buf, |b| {
                codec::put_history_key(b, ConversationRef::of(&m.from, &m.target), m.msg_id)
            }));
        }
        for (user, e) in &self.inbox {
            let k = span(buf, |b| codec::put_inbox_key(b, user, e.seq));
            r.inbox.push((k, span(buf, |b| codec::put_entry(b, e))));
        }
        for d in &self.dedupe {
            let k = span(buf, |b| codec::put_dedupe_key(b, &d.sender, &d.client_id));
            r.dedupe.push((k, codec::encode_dedupe(d.msg_id, d.ts)));
        }
        for a in &self.acks {
            let k = span(buf, |b| codec::put_ack_key(b, &a.user, &a.device));
            r.acks.push((k, a.seq));
        }
        let b = r.buf.as_slice();
        r.messages.sort_by_key(|(id, _)| *id);
        r.history.sort_by(|x, y| b[x.clone()].cmp(&b[y.clone()]));
        r.inbox.sort_by(|x, y| b[x.0.clone()].cmp(&b[y.0.clone()]));
        r.dedupe.sort_by(|x, y| b[x.0.clone()].cmp(&b[y.0.clone()]));
        r.acks.sort_by(|x, y| b[x.0.clone()].cmp(&b[y.0.clone()]));
        r
    }
}

/// Where `put` wrote its bytes in `buf`.
fn span(buf: &mut Vec<u8>, put: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = buf.len();
    put(buf);
    start..buf.len()
}

/// A [`WriteBatch`] encoded for a store ([`WriteBatch::sorted_rows`]): keys and values as the
/// codec lays them out, in one buffer, each table in key order.
pub(crate) struct SortedRows {
    buf: Vec<u8>,
    /// `(id, encoded message)`; the key is the id's big-endian bytes.
    messages: Vec<(MsgId, Range<usize>)>,
    /// History index keys (the rows have no value).
    history: Vec<Range<usize>>,
    inbox: Vec<(Range<usize>, Range<usize>)>,
    dedupe: Vec<(Range<usize>, [u8; 16])>,
    acks: Vec<(Range<usize>, u64)>,
}

impl SortedRows {
    /// `(id, encoded message)`, in id order.
    pub(crate) fn messages(&self) -> impl Iterator<Item = (MsgId, &[u8])> {
        self.messages
            .iter()
            .map(|(id, v)| (*id, &self.buf[v.clone()]))
    }

    /// History index keys, in order.
    pub(crate) fn history(&self) -> impl Iterator<Item = &[u8]> {
        self.history.iter().map(|k| &self.buf[k.clone()])
    }

    /// `(key, encoded entry)`, in key order.
    pub(crate) fn inbox(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.inbox
            .iter()
            .map(|(k, v)| (&self.buf[k.clone()], &self.buf[v.clone()]))
    }

    /// `(key, msg_id ‖ ts)`, in key order.
    pub(crate) fn dedupe(&self) -> impl Iterator<Item = (&[u8], &[u8; 16])> {
        self.dedupe.iter().map(|(k, v)| (&self.buf[k.clone()], v))
    }

    /// `(key, seq)`, in key order.
    pub(crate) fn acks(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.acks
            .iter()
            .map(|(k, seq)| (&self.buf[k.clone()], *seq))
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
    /// [`ChatStore::commit`] for a store several relays write ([`crate::Relay::shared`]):
    /// inbox entries with seq 0 get their inbox's next seqs, in their order in the batch,
    /// in the same transaction, and leave with them (for delivery).
    ///
    /// The store also enforces dedupe itself: a send whose `(sender, client_id)` is stored
    /// already (a retry that reached another node, or this one after a restart) is taken out
    /// of the batch — its message, its inbox entries and its dedupe row — and comes back in
    /// the returned list as the row already stored, so its sender is answered with the first
    /// send's id. A store only one relay writes has nothing to number and no such retry to
    /// meet (its relay read the dedupe row before accepting the send): the default commits
    /// the batch as it is.
    fn commit_numbered(&self, batch: &mut WriteBatch) -> Result<Vec<DedupeRow>, StoreError> {
        self.commit(batch).map(|()| Vec::new())
    }
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

/// What a read reserves up front for its rows, at most. Most reads (a lagging session's inbox
/// fill, a resume) return a few rows; reserving the whole page (1,024 inbox entries, ~110 KiB)
/// made each of them a large allocation, which in glibc sweeps the thread's free lists
/// (`malloc_consolidate`): about 1% of the node's CPU at 20,000 sends/s. Longer reads grow.
pub(crate) const READ_RESERVE: usize = 32;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::{EntryKind, Target};

    /// A batch with a row in every table: a 1:1 message and a group message, their inbox
    /// entries, dedupe rows and two devices' acks.
    pub(crate) fn sample_batch() -> WriteBatch {
        let mut group = message(12, "amy", "x");
        group.target = Target::Group("g1".into());
        let e = |seq: u64, id: u64, target: Target| InboxEntry {
            target,
            ..entry(seq, id)
        };
        let bob = || Target::User("bob".into());
        WriteBatch {
            id: 1,
            messages: vec![message(11, "amy", "bob"), group],
            inbox: vec![
                ("amy".into(), e(1, 11, bob())),
                ("bob".into(), e(1, 11, bob())),
                ("amy".into(), e(2, 12, Target::Group("g1".into()))),
                ("cat".into(), e(1, 12, Target::Group("g1".into()))),
            ],
            dedupe: vec![
                DedupeRow {
                    sender: "amy".into(),
                    client_id: "c11".into(),
                    msg_id: MsgId(11),
                    ts: 1,
                },
                DedupeRow {
                    sender: "amy".into(),
                    client_id: "c12".into(),
                    msg_id: MsgId(12),
                    ts: 1,
                },
            ],
            acks: vec![
                AckRow {
                    user: "bob".into(),
                    device: "phone".into(),
                    seq: 1,
                },
                AckRow {
                    user: "amy".into(),
                    device: "laptop".into(),
                    seq: 2,
                },
            ],
            fences: Vec::new(),
        }
    }

    /// Asserts that `store` answers every read about [`sample_batch`]'s rows as a store that
    /// committed it does.
    pub(crate) fn assert_holds_sample(store: &dyn ChatStore) {
        let batch = sample_batch();
        for user in ["amy", "bob", "cat"] {
            let mut want: Vec<_> = (batch.inbox.iter())
                .filter(|(u, _)| u == user)
                .map(|(_, e)| e.clone())
                .collect();
            want.sort_by_key(|e| e.seq);
            assert_eq!(store.read_inbox(user, 0, 100).unwrap(), want, "{user}");
            assert_eq!(
                store.inbox_head(user).unwrap(),
                want.last().map_or(0, |e| e.seq)
            );
        }
        for m in &batch.messages {
            assert_eq!(store.message(m.msg_id).unwrap().as_ref(), Some(m));
            assert_eq!(
                store.history(&m.conversation(), None, 10).unwrap(),
                vec![m.clone()]
            );
        }
        for d in &batch.dedupe {
            assert_eq!(
                store.dedupe(&d.sender, &d.client_id).unwrap(),
                Some((d.msg_id, d.ts))
            );
        }
        let mut keys = Vec::new();
        store.dedupe_keys(&mut |k| keys.push(k.to_vec())).unwrap();
        keys.sort();
        let mut want: Vec<_> = (batch.dedupe.iter())
            .map(|d| codec::dedupe_key(&d.sender, &d.client_id))
            .collect();
        want.sort();
        assert_eq!(keys, want);
        for a in &batch.acks {
            assert_eq!(store.device_ack(&a.user, &a.device).unwrap(), a.seq);
        }
        assert_eq!(store.last_msg_id().unwrap(), Some(MsgId(12)));
    }

    /// [`sample_batch`]'s rows as format 1 laid them out: `(table, key, value)`, the keys
    /// without format 2's hash in front (messages, whose keys did not change, as they are).
    pub(crate) fn sample_rows_v1() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let rows = sample_batch().sorted_rows();
        let mut out = Vec::new();
        for (id, v) in rows.messages() {
            out.push(("messages", id.to_be_bytes().to_vec(), v.to_vec()));
        }
        for k in rows.history() {
            out.push(("history", k[4..].to_vec(), Vec::new()));
        }
        for (k, v) in rows.inbox() {
            out.push(("inbox", k[4..].to_vec(), v.to_vec()));
        }
        for (k, v) in rows.dedupe() {
            out.push(("dedupe", k[4..].to_vec(), v.to_vec()));
        }
        for (k, seq) in rows.acks() {
            out.push(("acks", k[4..].to_vec(), seq.to_be_bytes().to_vec()));
        }
        out
    }

    #[test]
    fn both_stores_hold_what_they_commit() {
        for kind in [StoreKind::Fjall, StoreKind::Redb] {
            let dir = tempfile::tempdir().unwrap();
            let store = kind.open(dir.path()).unwrap();
            store.commit(&sample_batch()).unwrap();
            assert_holds_sample(&*store);
            drop(store);
            assert_holds_sample(&*kind.open(dir.path()).unwrap());
        }
    }

    fn message(id: u64, from: &str, to: &str) -> StoredMessage {
        StoredMessage {
            msg_id: MsgId(id),
            from: from.into(),
            target: Target::User(to.into()),
            text: "t".into(),
            ts: 1,
            edited_ts: None,
            deleted: false,
            client_id: format!("c{id}"),
        }
    }

    fn entry(seq: u64, id: u64) -> InboxEntry {
        InboxEntry {
            seq,
            kind: EntryKind::Message,
            msg_id: MsgId(id),
            from: "x".into(),
            target: Target::User("y".into()),
            text: Some("t".into()),
            ts: 1,
        }
    }

    #[test]
    fn sorted_rows_keep_every_row_and_put_each_table_in_key_order() {
        let batch = WriteBatch {
            id: 1,
            messages: vec![message(9, "zed", "amy"), message(3, "bob", "cat")],
            inbox: vec![
                ("zed".into(), entry(4, 9)),
                ("amy".into(), entry(2, 9)),
                ("bob".into(), entry(7, 3)),
                ("amy".into(), entry(3, 3)),
            ],
            dedupe: vec![
                DedupeRow {
                    sender: "zed".into(),
                    client_id: "c9".into(),
                    msg_id: MsgId(9),
                    ts: 1,
                },
                DedupeRow {
                    sender: "bob".into(),
                    client_id: "c3".into(),
                    msg_id: MsgId(3),
                    ts: 1,
                },
            ],
            acks: vec![
                AckRow {
                    user: "zed".into(),
                    device: "d".into(),
                    seq: 4,
                },
                AckRow {
                    user: "amy".into(),
                    device: "d".into(),
                    seq: 3,
                },
            ],
            fences: Vec::new(),
        };
        let r = batch.sorted_rows();
        let messages: Vec<_> = r.messages().map(|(id, v)| (id, v.to_vec())).collect();
        assert_eq!(
            messages,
            vec![
                (MsgId(3), codec::encode_message(&batch.messages[1])),
                (MsgId(9), codec::encode_message(&batch.messages[0])),
            ]
        );
        // Each table in key order: the expected rows, sorted by their keys.
        fn sorted<T: Clone>(mut rows: Vec<(Vec<u8>, T)>) -> Vec<(Vec<u8>, T)> {
            rows.sort_by(|x, y| x.0.cmp(&y.0));
            rows
        }
        let history: Vec<_> = r.history().map(|k| (k.to_vec(), ())).collect();
        let history_key = |i: usize| {
            let m = &batch.messages[i];
            (codec::history_key(&m.conversation(), m.msg_id), ())
        };
        assert_eq!(history, sorted(vec![history_key(0), history_key(1)]));
        let inbox: Vec<_> = r.inbox().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let row = |i: usize| {
            let (user, e) = &batch.inbox[i];
            (codec::inbox_key(user, e.seq), codec::encode_entry(e))
        };
        assert_eq!(inbox, sorted(vec![row(0), row(1), row(2), row(3)]));
        // One user's rows stay together, in seq order.
        let amy_prefix = codec::inbox_key("amy", 0);
        let amy_prefix = &amy_prefix[..amy_prefix.len() - 8];
        let amy: Vec<_> = (inbox.iter())
            .filter(|(k, _)| k.len() == amy_prefix.len() + 8 && k.starts_with(amy_prefix))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(
            amy,
            vec![codec::inbox_key("amy", 2), codec::inbox_key("amy", 3)]
        );
        let dedupe: Vec<_> = r.dedupe().map(|(k, v)| (k.to_vec(), *v)).collect();
        let dedupe_row = |i: usize| {
            let d = &batch.dedupe[i];
            (
                codec::dedupe_key(&d.sender, &d.client_id),
                codec::encode_dedupe(d.msg_id, d.ts),
            )
        };
        assert_eq!(dedupe, sorted(vec![dedupe_row(0), dedupe_row(1)]));
        let acks: Vec<_> = r.acks().map(|(k, seq)| (k.to_vec(), seq)).collect();
        let ack_row = |i: usize| {
            let a = &batch.acks[i];
            (codec::ack_key(&a.user, &a.device), a.seq)
        };
        assert_eq!(acks, sorted(vec![ack_row(0), ack_row(1)]));
    }
}
