//! The relay: a clock- and socket-free state machine that validates chat operations,
//! sequences them into inboxes and gathers their writes into one pending batch for a group
//! commit. It reads the store (files, for both stores here) for what it has not cached and
//! writes nothing to it: the driver commits the batches and runs [`Relay::trim`].
//!
//! # Driver flow
//!
//! ```text
//!   client op ──lock──▶ relay.send/edit/delete/read/ack(now, …, dir) ──▶ Ok(batch id) / Err
//!                        (writes go into the pending batch; nothing is answered yet)
//!   committer loop:  lock; b = relay.take_batch(); unlock
//!                    store.commit(&b)                      (fsync; outside any lock)
//!                    Ok  → lock; relay.committed(b.id); unlock;
//!                          answer `sent` to the sends of b; push b.inbox entries to the
//!                          owners' live devices (in order); webhook for offline recipients
//!                    Err → lock; dropped = relay.reset(); unlock;
//!                          answer an error to every op of b and of `dropped`
//! ```
//!
//! Batches must be committed one at a time, in the order they were taken. Within a batch,
//! each user's entries are in seq order, and batches commit one after another, so pushing
//! each committed batch's `inbox` in order delivers every inbox in seq order.
//!
//! **Durability.** Nothing the relay hands out is visible to readers before it is durable:
//! [`Relay::sync`] and [`Relay::history`] read the store only, and the store only holds what a
//! `commit` made durable. An op's effects are acknowledged only after its batch committed.
//! If a commit fails, [`Relay::reset`] forgets the cached inbox heads, the pending batch and
//! the not-yet-durable dedupe and message state; they reload from the store, so the next
//! sequences continue exactly after what is durable and a client retry of a failed send is
//! either found durable (if the failed commit did land) or sent anew. Nothing is half
//! acknowledged.
//!
//! **Dedupe.** A send's `(sender, client_id)` is looked up first among batches not yet
//! committed, then in the store. A duplicate of a send whose batch is still in flight comes
//! back as [`SendOutcome::Duplicate`] with `pending: Some(batch)`: answer `sent` when that
//! batch commits.

use std::sync::Arc;

use hashbrown::HashMap;

use fastbloom::BloomFilter;

use crate::codec;
use crate::ids::{IdGen, MsgId};
use crate::store::{AckRow, ChatStore, DedupeRow, StoreError, TrimCounts, WriteBatch};
use crate::types::{Conversation, EntryKind, InboxEntry, MAX_ID_LEN, StoredMessage, Target};

/// The number of a group-commit batch: 1, 2, 3, … in commit order.
pub type BatchId = u64;

/// In `Relay::unsettled_acks`: no batch has taken the ack yet (greater than every batch id,
/// so `committed` keeps it).
const ACK_PENDING: BatchId = BatchId::MAX;

/// Where [`Relay::edit_with`], [`Relay::delete_with`] and [`Relay::read_with`] find a message
/// that no batch still in flight writes (those writes always come first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Read it from the store now (blocking I/O: fine for a local store, not for a shared
    /// one on an async thread).
    Store,
    /// The driver read it from the store beforehand, off the relay's lock (`None`: there is
    /// no such message).
    Fetched(Option<StoredMessage>),
}

/// What the relay asks the node about the social graph (the app owns it).
pub trait Directory {
    /// Whether `a` and `b` are friends (symmetric).
    fn are_friends(&self, a: &str, b: &str) -> bool;
    /// The members of a group, `None` if there is no such group.
    fn group_members(&self, gid: &str) -> Option<Vec<String>>;
}

/// Why an operation was refused. A refused operation changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("text is {len} characters, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the group has {members} members, over the limit of {max}")]
    GroupTooLarge { members: usize, max: usize },
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("rate limited")]
    RateLimited,
    #[error("the node is busy: {unsettled} sends are waiting for the disk; retry with the same id")]
    Busy { unsettled: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChatError {
    /// The protocol's error code (`internal` for a store failure, which the protocol does not
    /// name: the node decides what to tell the client).
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::BadRequest(_) => "bad_request",
            ChatError::TooLarge { .. } | ChatError::GroupTooLarge { .. } => "too_large",
            ChatError::Forbidden(_) => "forbidden",
            ChatError::NotFound(_) => "not_found",
            ChatError::RateLimited | ChatError::Busy { .. } => "rate_limited",
            ChatError::Store(_) => "internal",
        }
    }
}

/// The relay's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Characters per message (Unicode scalar values).
    pub max_text: usize,
    /// Members of a group that can be sent to.
    pub max_group: usize,
    /// Entries per `sync` page when the client gives no limit, and the most it may ask for.
    pub sync_default: usize,
    pub sync_max: usize,
    /// Messages per history page by default, and at most.
    pub history_default: usize,
    pub history_max: usize,
    /// At most one typing indicator per sender and target per this many ms.
    pub typing_interval_ms: u64,
    /// Cached inbox heads kept once their writes are durable (evicted past this).
    pub max_cached_heads: usize,
    /// New sends not yet durable, at most: past it a send is refused with
    /// [`ChatError::Busy`] (retry later with the same id), so an overloaded node answers
    /// at once instead of queueing without bound, in memory and in latency.
    pub max_unsettled_sends: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text: 4000,
            max_group: 1000,
            sync_default: 500,
            sync_max: 1000,
            history_default: 50,
            history_max: 200,
            typing_interval_ms: 1000,
            max_cached_heads: 1 << 20,
            max_unsettled_sends: 20_000,
        }
    }
}

/// The result of a `send`.
#[must_use = "answer the sender: at once for a durable duplicate, else once its batch commits"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// A new message, riding in `batch`: answer `sent` once that batch is committed.
    New {
        msg_id: MsgId,
        ts: u64,
        batch: BatchId,
    },
    /// A retry of a send already made. `pending: None` — it is durable, answer `sent` now;
    /// `Some(batch)` — answer once that batch is committed.
    Duplicate {
        msg_id: MsgId,
        ts: u64,
        pending: Option<BatchId>,
    },
}

/// One page of a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPage {
    /// Entries after the requested seq, in seq order, durable.
    pub entries: Vec<InboxEntry>,
    /// Whether more durable entries follow the page (ask again after the last seq).
    pub more: bool,
    /// Whether entries right after the requested seq were removed by retention (the page
    /// starts later than `after + 1`).
    pub trimmed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u64,
    /// The batch that last wrote this inbox (0: nothing not yet durable).
    batch: BatchId,
}

/// Reads that need no relay state: cheap to clone, so a driver can serve `sync` and
/// `history` without taking the lock it keeps the [`Relay`] under.
#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn ChatStore>,
    limits: Limits,
}

impl Reader {
    /// Durable inbox entries of `user` after `after`. `limit` 0 means the default page size;
    /// larger than the maximum is clamped to it.
    pub fn sync(&self, user: &str, after: u64, limit: usize) -> Result<SyncPage, ChatError> {
        let limit = match limit {
            0 => self.limits.sync_default,
            n => n.min(self.limits.sync_max),
        };
        let mut entries = self
            .store
            .read_inbox(user, after, limit.saturating_add(1))?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let trimmed = entries
            .first()
            .is_some_and(|e| e.seq > after.saturating_add(1));
        Ok(SyncPage {
            entries,
            more,
            trimmed,
        })
    }

    /// A page of a conversation's history, newest first, older than `before`. `user` must
    /// be a participant now: a friend of the other user, or a member of the group.
    pub fn history(
        &self,
        user: &str,
        target: &Target,
        before: Option<MsgId>,
        limit: usize,
        dir: &dyn Directory,
    ) -> Result<Vec<StoredMessage>, ChatError> {
        check_id(user, "user")?;
        check_id(target.id(), "target")?;
        match target {
            Target::User(other) => {
                if other == user {
                    return Err(ChatError::Forbidden("no conversation with yourself"));
                }
                if !dir.are_friends(user, other) {
                    return Err(ChatError::Forbidden("not friends"));
                }
            }
            Target::Group(g) => {
                let members = dir
                    .group_members(g)
                    .ok_or(ChatError::NotFound("no such group"))?;
                if !members.iter().any(|m| m == user) {
                    return Err(ChatError::Forbidden("not a member of the group"));
                }
            }
        }
        Ok(self.store.history(
            &Conversation::of(user, target),
            before,
            self.history_page(limit),
        )?)
    }

    /// The page size a `history` call with `limit` gets: 0 means the default, more than the
    /// maximum is clamped to it. A page this long may have more behind it.
    pub fn history_page(&self, limit: usize) -> usize {
        match limit {
            0 => self.limits.history_default,
            n => n.min(self.limits.history_max),
        }
    }

    /// The durable head of `user`'s inbox (for `welcome`'s `inbox_seq`).
    pub fn durable_head(&self, user: &str) -> Result<u64, ChatError> {
        Ok(self.store.inbox_head(user)?)
    }

    /// The last seq `device` acknowledged (durably).
    pub fn device_ack(&self, user: &str, device: &str) -> Result<u64, ChatError> {
        Ok(self.store.device_ack(user, device)?)
    }
}

/// The chat state machine of one node. Not thread-safe by itself: keep it under a lock and
/// commit batches outside it (see the module docs for the driver flow).
pub struct Relay {
    reader: Reader,
    ids: IdGen,
    /// Inbox heads, loaded lazily from the store, including not-yet-durable appends.
    heads: HashMap<String, Head>,
    pending: WriteBatch,
    /// Index in `pending.messages` of each message the pending batch writes.
    pending_msgs: HashMap<MsgId, usize>,
    /// Device acks not yet durable: (user, device) → (highest seq, the batch writing it, or
    /// [`ACK_PENDING`] while no batch has taken it yet).
    unsettled_acks: HashMap<(String, String), (u64, BatchId)>,
    /// Entries of `unsettled_acks` that no batch has taken yet.
    pending_acks: usize,
    /// Messages written by batches not yet committed, with the last such batch.
    unsettled_msgs: HashMap<MsgId, (StoredMessage, BatchId)>,
    /// Sends in batches not yet committed: (sender, client id) → (id, ts, batch).
    unsettled_dedupe: HashMap<(String, String), (MsgId, u64, BatchId)>,
    /// Every (sender, client id) ever written through this relay or found in the store at
    /// start: a miss means a send is new without reading the store (the point read cost a
    /// quarter of the node's send path). A hit, possibly false, reads the store as before.
    /// The filter assumes this relay is the store's only writer.
    used_ids: BloomFilter,
    typing: HashMap<(String, Target), u64>,
    typing_floor: usize,
    /// Other relays write the same store (a cluster's nodes): the store numbers inbox entries
    /// and enforces dedupe at commit ([`ChatStore::commit_numbered`]), no head is cached, and
    /// no operation reads the store (see [`Relay::shared`]).
    shared: bool,
}

fn check_id(id: &str, what: &'static str) -> Result<(), ChatError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ChatError::BadRequest(match what {
            "user" => "user id must be 1 to 128 bytes",
            "target" => "to / group must be 1 to 128 bytes",
            "client" => "id must be 1 to 128 bytes",
            _ => "device must be 1 to 128 bytes",
        }));
    }
    Ok(())
}

/// The cutoff for a retention pass at `now_ms` keeping `max_age_ms`.
pub fn retention_cutoff(now_ms: u64, max_age_ms: u64) -> u64 {
    now_ms.saturating_sub(max_age_ms)
}

impl Relay {
    /// A relay over `store`. Seeds the id generator with the newest stored id, so ids keep
    /// increasing across a restart even if the clock went back.
    pub fn new(
        store: Arc<dyn ChatStore>,
        mut ids: IdGen,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        if let Some(last) = store.last_msg_id()? {
            ids.observe(last);
        }
        // Sized for four times what is stored (at least 4 M ids, ~5 MB): past that the false
        // positive rate grows and more sends read the store, which stays correct.
        let expected = store.dedupe_len_hint()?.saturating_mul(4).max(1 << 22);
        let mut used_ids = BloomFilter::with_false_pos(0.01).expected_items(expected);
        store.dedupe_keys(&mut |k| {
            used_ids.insert(k);
        })?;
        Ok(Self::with(store, ids, limits, used_ids, false))
    }

    /// A relay over a store that other relays write too (a cluster's nodes on one
    /// database). Commit its batches with [`ChatStore::commit_numbered`]: inbox entries
    /// leave it with seq 0 and the store numbers them in the commit; a send is checked
    /// against the sends of batches still in flight only, and the store drops a retry of a
    /// send it has already and returns the row it has (answer that sender `sent` with the
    /// stored id and ts; [`Relay::committed`] as for any batch). No operation reads the store, so the relay's
    /// lock is never held across I/O — pass `Lookup::Fetched` to `edit_with`, `delete_with`
    /// and `read_with`; an `ack` beyond the inbox head is left to the store to clamp.
    pub fn shared(
        store: Arc<dyn ChatStore>,
        mut ids: IdGen,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        if let Some(last) = store.last_msg_id()? {
            ids.observe(last);
        }
        // The store checks every send's client id in the commit: no filter to keep here.
        let used_ids = BloomFilter::with_false_pos(0.01).expected_items(1);
        Ok(Self::with(store, ids, limits, used_ids, true))
    }

    /// The state both constructors start from: nothing pending, nothing cached.
    fn with(
        store: Arc<dyn ChatStore>,
        ids: IdGen,
        limits: Limits,
        used_ids: BloomFilter,
        shared: bool,
    ) -> Self {
        Self {
            reader: Reader { store, limits },
            ids,
            heads: HashMap::new(),
            pending: WriteBatch {
                id: 1,
                ..WriteBatch::default()
            },
            pending_msgs: HashMap::new(),
            unsettled_acks: HashMap::new(),
            pending_acks: 0,
            unsettled_msgs: HashMap::new(),
            unsettled_dedupe: HashMap::new(),
            used_ids,
            typing: HashMap::new(),
            typing_floor: 1024,
            shared,
        }
    }

    /// Whether other relays write this relay's store ([`Relay::shared`]).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The store, for the driver's commits.
    pub fn store(&self) -> &Arc<dyn ChatStore> {
        &self.reader.store
    }

    pub fn limits(&self) -> &Limits {
        &self.reader.limits
    }

    /// A lock-free handle for reads (`sync`, `history`, heads, acks).
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// The id of the batch new operations go into.
    pub fn pending_batch(&self) -> BatchId {
        self.pending.id
    }

    /// Cached inbox heads (for metrics).
    pub fn cached_heads(&self) -> usize {
        self.heads.len()
    }

    fn check_text(&self, text: &str) -> Result<(), ChatError> {
        if text.is_empty() {
            return Err(ChatError::BadRequest("text must not be empty"));
        }
        let max = self.reader.limits.max_text;
        // chars().count() only past the byte length that could exceed it
        if text.len() > max {
            let len = text.chars().count();
            if len > max {
                return Err(ChatError::TooLarge { len, max });
            }
        }
        Ok(())
    }

    /// The head of `user`'s inbox including pending appends, loading it on first touch.
    fn head(&mut self, user: &str) -> Result<u64, StoreError> {
        if self.shared {
            // Numbered by the store: its durable head is all there is.
            return self.reader.store.inbox_head(user);
        }
        if let Some(h) = self.heads.get(user) {
            return Ok(h.seq);
        }
        let seq = self.reader.store.inbox_head(user)?;
        self.heads.insert(user.to_owned(), Head { seq, batch: 0 });
        Ok(seq)
    }

    /// Loads every owner's head first (the only fallible step), then appends one entry to
    /// each inbox. Infallible once the heads are loaded, so a store error changes nothing.
    /// Takes the owners and the entry by value: the last inbox gets the entry itself, each
    /// owner's id moves into its row (a send's hot path, so no copy it can do without).
    fn append_all(&mut self, owners: Vec<String>, entry: InboxEntry) -> Result<(), StoreError> {
        let n = owners.len();
        if self.shared {
            // Seq 0: the store numbers them in the commit.
            self.pending.inbox.reserve(n);
            self.pending
                .inbox
                .extend(owners.into_iter().zip(std::iter::repeat_n(entry, n)));
            return Ok(());
        }
        let mut heads = Vec::with_capacity(n);
        for o in &owners {
            heads.push(self.head(o)?);
        }
        let batch = self.pending.id;
        self.pending.inbox.reserve(n);
        let entries = std::iter::repeat_n(entry, n);
        for ((owner, head), mut e) in owners.into_iter().zip(heads).zip(entries) {
            let seq = head + 1;
            match self.heads.get_mut(owner.as_str()) {
                Some(h) => *h = Head { seq, batch },
                None => {
                    self.heads.insert(owner.clone(), Head { seq, batch });
                }
            }
            e.seq = seq;
            self.pending.inbox.push((owner, e));
        }
        Ok(())
    }

    fn put_message(&mut self, m: StoredMessage) {
        let batch = self.pending.id;
        match self.pending_msgs.get(&m.msg_id) {
            Some(&i) => self.pending.messages[i] = m.clone(),
            None => {
                self.pending_msgs
                    .insert(m.msg_id, self.pending.messages.len());
                self.pending.messages.push(m.clone());
            }
        }
        self.unsettled_msgs.insert(m.msg_id, (m, batch));
    }

    /// The current state of a message: not-yet-durable first, then the store (or what the
    /// driver read from it).
    fn lookup(&self, id: MsgId, how: Lookup) -> Result<Option<StoredMessage>, StoreError> {
        if let Some((m, _)) = self.unsettled_msgs.get(&id) {
            return Ok(Some(m.clone()));
        }
        match how {
            Lookup::Store => self.reader.store.message(id),
            Lookup::Fetched(m) => Ok(m.filter(|m| m.msg_id == id)),
        }
    }

    /// Whether an `edit_with`, `delete_with` or `read_with` of `id` needs the message read
    /// from the store first: a shared relay ([`Relay::shared`]) that has no write of it in
    /// flight.
    pub fn needs_fetch(&self, id: MsgId) -> bool {
        self.shared && !self.unsettled_msgs.contains_key(&id)
    }

    fn group(&self, gid: &str, dir: &dyn Directory) -> Result<Vec<String>, ChatError> {
        let mut members = dir
            .group_members(gid)
            .ok_or(ChatError::NotFound("no such group"))?;
        members.sort_unstable();
        members.dedup();
        Ok(members)
    }

    /// Who received a message (and gets its edits and deletes): both users of a 1:1, or the
    /// group's members now plus the author (all members at send time cannot be known
    /// without storing them per message).
    fn recipients_of(&self, m: &StoredMessage, dir: &dyn Directory) -> Vec<String> {
        match &m.target {
            Target::User(to) => vec![m.from.clone(), to.clone()],
            Target::Group(g) => {
                let mut members = dir.group_members(g).unwrap_or_default();
                members.push(m.from.clone());
                members.sort_unstable();
                members.dedup();
                members
            }
        }
    }

    /// Sends `text` from `from` to `target` under the sender's `client_id`.
    ///
    /// A 1:1 message gets a seq in both the sender's and the recipient's inbox; a group
    /// message in every member's, the sender's included.
    pub fn send(
        &mut self,
        now_ms: u64,
        from: &str,
        client_id: &str,
        target: &Target,
        text: &str,
        dir: &dyn Directory,
    ) -> Result<SendOutcome, ChatError> {
        check_id(from, "user")?;
        check_id(client_id, "client")?;
        check_id(target.id(), "target")?;
        let key = (from.to_owned(), client_id.to_owned());
        if let Some(&(msg_id, ts, batch)) = self.unsettled_dedupe.get(&key) {
            return Ok(SendOutcome::Duplicate {
                msg_id,
                ts,
                pending: Some(batch),
            });
        }
        let dedupe_key = codec::dedupe_key(from, client_id);
        // A shared relay leaves the store's dedupe to the commit (see `Relay::shared`).
        if !self.shared
            && self.used_ids.contains(&dedupe_key[..])
            && let Some((msg_id, ts)) = self.reader.store.dedupe(from, client_id)?
        {
            return Ok(SendOutcome::Duplicate {
                msg_id,
                ts,
                pending: None,
            });
        }
        self.check_text(text)?;
        let unsettled = self.unsettled_dedupe.len();
        if unsettled >= self.reader.limits.max_unsettled_sends {
            return Err(ChatError::Busy { unsettled });
        }
        let owners = match target {
            Target::User(to) => {
                if to == from {
                    return Err(ChatError::Forbidden("cannot send to yourself"));
                }
                if !dir.are_friends(from, to) {
                    return Err(ChatError::Forbidden("not friends"));
                }
                vec![from.to_owned(), to.clone()]
            }
            Target::Group(g) => {
                let members = self.group(g, dir)?;
                if members.binary_search_by(|m| m.as_str().cmp(from)).is_err() {
                    return Err(ChatError::Forbidden("not a member of the group"));
                }
                let max = self.reader.limits.max_group;
                if members.len() > max {
                    return Err(ChatError::GroupTooLarge {
                        members: members.len(),
                        max,
                    });
                }
                members
            }
        };
        // Load the heads before minting anything: a store error leaves no trace.
        if !self.shared {
            for o in &owners {
                self.head(o)?;
            }
        }
        let msg_id = self.ids.next(now_ms);
        let entry = InboxEntry {
            seq: 0,
            kind: EntryKind::Message,
            msg_id,
            from: from.to_owned(),
            target: target.clone(),
            text: Some(text.to_owned()),
            ts: now_ms,
        };
        self.append_all(owners, entry)?;
        self.put_message(StoredMessage {
            msg_id,
            from: from.to_owned(),
            target: target.clone(),
            text: text.to_owned(),
            ts: now_ms,
            edited_ts: None,
            deleted: false,
            client_id: client_id.to_owned(),
        });
        let batch = self.pending.id;
        self.pending.dedupe.push(DedupeRow {
            sender: from.to_owned(),
            client_id: client_id.to_owned(),
            msg_id,
            ts: now_ms,
        });
        self.unsettled_dedupe.insert(key, (msg_id, now_ms, batch));
        self.used_ids.insert(&dedupe_key[..]);
        Ok(SendOutcome::New {
            msg_id,
            ts: now_ms,
            batch,
        })
    }

    fn own_live_message(
        &self,
        user: &str,
        id: MsgId,
        how: Lookup,
    ) -> Result<StoredMessage, ChatError> {
        check_id(user, "user")?;
        let m = self
            .lookup(id, how)?
            .ok_or(ChatError::NotFound("no such message"))?;
        if m.from != user {
            return Err(ChatError::Forbidden("not your message"));
        }
        if m.deleted {
            return Err(ChatError::NotFound("message was deleted"));
        }
        Ok(m)
    }

    /// The author changes a message's text: an `Edit` entry goes to every recipient's inbox,
    /// the author's included. A deleted message cannot be edited.
    #[must_use = "the operation is acknowledged only once this batch commits: wait on it"]
    pub fn edit(
        &mut self,
        now_ms: u64,
        user: &str,
        msg_id: MsgId,
        text: &str,
        dir: &dyn Directory,
    ) -> Result<BatchId, ChatError> {
        self.edit_with(now_ms, user, msg_id, text, Lookup::Store, dir)
    }

    /// [`Relay::edit`] finding the message as `how` says.
    #[must_use = "the operation is acknowledged only once this batch commits: wait on it"]
    pub fn edit_with(
        &mut self,
        now_ms: u64,
        user: &str,
        msg_id: MsgId,
        text: &str,
        how: Lookup,
        dir: &dyn Directory,
    ) -> Result<BatchId, ChatError> {
        self.check_text(text)?;
        let mut m = self.own_live_message(user, msg_id, how)?;
        let owners = self.recipients_of(&m, dir);
        let entry = InboxEntry {
            seq: 0,
            kind: EntryKind::Edit,
            msg_id,
            from: user.to_owned(),
            target: m.target.clone(),
            text: Some(text.to_owned()),
            ts: now_ms,
        };
        self.append_all(owners, entry)?;
        m.text = text.to_owned();
        m.edited_ts = Some(now_ms);
        self.put_message(m);
        Ok(self.pending.id)
    }

    /// The author deletes a message: its text is dropped from the store and a `Delete` entry
    /// goes to every recipient's inbox, the author's included.
    #[must_use = "the operation is acknowledged only once this batch commits: wait on it"]
    pub fn delete(
        &mut self,
        now_ms: u64,
        user: &str,
        msg_id: MsgId,
        dir: &dyn Directory,
    ) -> Result<BatchId, ChatError> {
        self.delete_with(now_ms, user, msg_id, Lookup::Store, dir)
    }

    /// [`Relay::delete`] finding the message as `how` says.
    #[must_use = "the operation is acknowledged only once this batch commits: wait on it"]
    pub fn delete_with(
        &mut self,
        now_ms: u64,
        user: &str,
        msg_id: MsgId,
        how: Lookup,
        dir: &dyn Directory,
    ) -> Result<BatchId, ChatError> {
        let mut m = self.own_live_message(user, msg_id, how)?;
        let owners = self.recipients_of(&m, dir);
        let entry = InboxEntry {
            seq: 0,
            kind: EntryKind::Delete,
            msg_id,
            from: user.to_owned(),
            target: m.target.clone(),
            text: None,
            ts: now_ms,
        };
        self.append_all(owners, entry)?;
        m.text.clear();
        m.deleted = true;
        self.put_message(m);
        Ok(self.pending.id)
    }

    /// A read receipt: `reader` (a recipient: the 1:1 recipient, or a group member now)
    /// read the message; a `Read` entry goes to the author's inbox.
    #[must_use = "the operation is acknowledged only once this batch commits: wait on it"]
    pub fn read(
        &mut self,
        now_ms: u64,
        reader: &str,
        msg_id: MsgId,
        dir: &dyn Directory,
    ) -> Result<BatchId, ChatError> {
        self.read_with(now_ms, reader, msg_id, Lookup::Store, dir)
    }

    /// [`Relay::read`] finding the message as `how` says.
    #[must_use = "the operation is acknowledged only once this batch commits: wait on it"]
    pub fn read_with(
        &mut self,
        now_ms: u64,
        reader: &str,
        msg_id: MsgId,
        how: Lookup,
        dir: &dyn Directory,
    ) -> Result<BatchId, ChatError> {
        check_id(reader, "user")?;
        let m = self
            .lookup(msg_id, how)?
            .ok_or(ChatError::NotFound("no such message"))?;
        if m.deleted {
            return Err(ChatError::NotFound("message was deleted"));
        }
        if m.from == reader {
            return Err(ChatError::BadRequest(
                "a read receipt is for someone else's message",
            ));
        }
        let recipient = match &m.target {
            Target::User(to) => to == reader,
            Target::Group(g) => dir
                .group_members(g)
                .is_some_and(|ms| ms.iter().any(|x| x == reader)),
        };
        if !recipient {
            return Err(ChatError::Forbidden("not a recipient of the message"));
        }
        let entry = InboxEntry {
            seq: 0,
            kind: EntryKind::Read,
            msg_id,
            from: reader.to_owned(),
            target: m.target.clone(),
            text: None,
            ts: now_ms,
        };
        self.append_all(vec![m.from.clone()], entry)?;
        Ok(self.pending.id)
    }

    /// A typing indicator: the users it goes to (the node sends it to their live devices
    /// only). Never stored. At most one per sender and target per `typing_interval_ms`;
    /// a faster one is dropped silently (an empty list).
    pub fn typing(
        &mut self,
        now_ms: u64,
        from: &str,
        target: &Target,
        dir: &dyn Directory,
    ) -> Result<Vec<String>, ChatError> {
        check_id(from, "user")?;
        check_id(target.id(), "target")?;
        let recipients = match target {
            Target::User(to) => {
                if to == from {
                    return Err(ChatError::Forbidden("cannot type to yourself"));
                }
                if !dir.are_friends(from, to) {
                    return Err(ChatError::Forbidden("not friends"));
                }
                vec![to.clone()]
            }
            Target::Group(g) => {
                let mut members = self.group(g, dir)?;
                let Ok(me) = members.binary_search_by(|m| m.as_str().cmp(from)) else {
                    return Err(ChatError::Forbidden("not a member of the group"));
                };
                members.remove(me);
                members
            }
        };
        let interval = self.reader.limits.typing_interval_ms;
        let key = (from.to_owned(), target.clone());
        if let Some(&last) = self.typing.get(&key)
            && now_ms < last.saturating_add(interval)
        {
            return Ok(Vec::new());
        }
        self.typing.insert(key, now_ms);
        if self.typing.len() > 2 * self.typing_floor {
            self.typing
                .retain(|_, last| now_ms < last.saturating_add(interval));
            self.typing_floor = self.typing.len().max(1024);
        }
        Ok(recipients)
    }

    /// A device acknowledges its inbox up to `seq`: one row per device, the latest seq, in
    /// the pending batch (or a later one, see [`Relay::take_batch_holding_acks`]).
    pub fn ack(&mut self, user: &str, device: &str, seq: u64) -> Result<(), ChatError> {
        check_id(user, "user")?;
        check_id(device, "device")?;
        // A shared relay knows no head without reading the store: the store clamps.
        if !self.shared && seq > self.head(user)? {
            return Err(ChatError::BadRequest("ack beyond the inbox head"));
        }
        // A lower ack than one not yet durable is stale (another session of the device).
        let e = self
            .unsettled_acks
            .entry((user.to_owned(), device.to_owned()))
            .or_insert((seq, BatchId::MIN));
        if e.1 != ACK_PENDING {
            self.pending_acks += 1;
        }
        *e = (e.0.max(seq), ACK_PENDING);
        Ok(())
    }

    /// Durable inbox entries after `after` (see [`Reader::sync`]). Entries of batches not yet
    /// committed are never returned: they arrive by live delivery once durable, or by a
    /// later sync. A client keeps the highest seq it has and drops entries at or below it.
    pub fn sync(&self, user: &str, after: u64, limit: usize) -> Result<SyncPage, ChatError> {
        self.reader.sync(user, after, limit)
    }

    /// A page of history (see [`Reader::history`]).
    pub fn history(
        &self,
        user: &str,
        target: &Target,
        before: Option<MsgId>,
        limit: usize,
        dir: &dyn Directory,
    ) -> Result<Vec<StoredMessage>, ChatError> {
        self.reader.history(user, target, before, limit, dir)
    }

    /// Whether device acks wait to be written.
    pub fn has_pending_acks(&self) -> bool {
        self.pending_acks > 0
    }

    /// The device's highest ack not yet durable (0 if none): with the store's, what the
    /// device has acked.
    pub fn unsettled_ack(&self, user: &str, device: &str) -> u64 {
        self.unsettled_acks
            .get(&(user.to_owned(), device.to_owned()))
            .map_or(0, |&(seq, _)| seq)
    }

    /// As [`Relay::take_batch`], but the device acks stay pending for a later batch (`None`
    /// if nothing else is pending). Nobody waits for an ack to be durable, and an ack lost
    /// in a crash only means the device is offered entries again that it drops by seq; so a
    /// driver may write acks at most every so often. Each device's acks then make one row
    /// per interval instead of one per batch, and lone acks cost no fsync of their own.
    #[must_use = "commit the batch, then report it with `committed` or `reset`: dropped, its \
                  writes are lost and its operations never answered"]
    pub fn take_batch_holding_acks(&mut self) -> Option<WriteBatch> {
        // Acks join a batch only in `take_batch`, so the pending batch holds none here.
        (!self.pending.is_empty()).then(|| self.next_batch())
    }

    /// Hands the pending batch to the driver for one group commit (`None` if it is empty).
    /// New operations go into the next batch.
    #[must_use = "commit the batch, then report it with `committed` or `reset`: dropped, its \
                  writes are lost and its operations never answered"]
    pub fn take_batch(&mut self) -> Option<WriteBatch> {
        if self.pending.is_empty() && self.pending_acks == 0 {
            return None;
        }
        let id = self.pending.id;
        for ((user, device), (seq, batch)) in &mut self.unsettled_acks {
            if *batch == ACK_PENDING {
                *batch = id;
                self.pending.acks.push(AckRow {
                    user: user.clone(),
                    device: device.clone(),
                    seq: *seq,
                });
            }
        }
        self.pending_acks = 0;
        Some(self.next_batch())
    }

    /// Starts the next batch; returns the one that was pending.
    fn next_batch(&mut self) -> WriteBatch {
        let next = WriteBatch {
            id: self.pending.id + 1,
            ..WriteBatch::default()
        };
        self.pending_msgs.clear();
        std::mem::replace(&mut self.pending, next)
    }

    /// The driver committed batch `id` (durably). Forgets what the store now answers for,
    /// and evicts cached heads past `max_cached_heads` (only heads with nothing in flight).
    pub fn committed(&mut self, id: BatchId) {
        self.unsettled_msgs.retain(|_, (_, b)| *b > id);
        self.unsettled_dedupe.retain(|_, (_, _, b)| *b > id);
        self.unsettled_acks.retain(|_, (_, b)| *b > id);
        if self.heads.len() > self.reader.limits.max_cached_heads {
            self.heads.retain(|_, h| h.batch > id);
        }
    }

    /// After a failed commit: drops the pending batch (returning its id if it held
    /// anything: fail its operations too), the cached heads and the not-yet-durable state.
    /// Everything reloads from the store. Batch ids keep increasing.
    #[must_use = "the operations of the dropped batch are lost too: answer them an error"]
    pub fn reset(&mut self) -> Option<BatchId> {
        let old = self.next_batch();
        let dropped = (!old.is_empty()).then_some(old.id);
        self.unsettled_acks.clear();
        self.pending_acks = 0;
        self.unsettled_msgs.clear();
        self.unsettled_dedupe.clear();
        self.heads.clear();
        dropped
    }

    /// Retention: removes what is older than `max_age_ms` at `now_ms` (see
    /// [`ChatStore::trim`]). Run it from a background task, outside the relay's lock.
    pub fn trim(
        store: &dyn ChatStore,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<TrimCounts, StoreError> {
        store.trim(retention_cutoff(now_ms, max_age_ms))
    }
}
