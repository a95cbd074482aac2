//! Chat on the presence sessions: drives the clock- and socket-free `chat-relay` (validation,
//! sequencing, dedupe) for the driver's group-commit thread, hands durable inbox entries to
//! every live device of their owner, and returns `message.undelivered` events for recipients
//! with no live session (the driver sends the webhooks).
//!
//! Flow: a session's `send` runs `Relay::send` under the chat lock (cheap: no I/O but cache
//! misses to the store), which puts its writes into the pending batch and registers the
//! session as a waiter of that batch. The committer thread takes the whole pending batch
//! whenever it is free, commits it with one fsync outside the lock (so batches grow by
//! themselves under load: group commit), then hands the batch to the delivery thread, which
//! answers the waiters with `sent` and pushes the batch's inbox entries, in seq order, to the
//! owners' live sessions while the next commit runs. Nothing is answered or delivered before
//! it is durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chat_relay::webhook::Undelivered;
use chat_relay::{
    BatchId, ChatError, ChatStore, Directory, EntryKind, IdGen, Limits, Lookup, Reader, Relay,
    SendOutcome, Target, WriteBatch,
};
use parking_lot::{Condvar, Mutex};
use tracing::error;

use super::Groups;
use super::outbox::ChatItem;
use super::registry::{Registry, SessionHandle};
use crate::frames;
use crate::metrics as m;
use presence_wire::{ErrorCode, ProtocolError};

/// Device acks are written at most this often: each device's latest ack makes one row per
/// interval, in a commit of sends or alone. An ack needs no fsync of its own (see
/// `Relay::take_batch_holding_acks`); a crash within the interval only means the device is
/// offered again entries it already has.
const ACK_DELAY: Duration = Duration::from_millis(250);

/// Somebody waiting for a batch to be durable: the session and the frame it gets then
/// (opaque outside this module).
pub struct Waiter {
    session: Arc<SessionHandle>,
    /// The sender (a shared store may answer its send with the id stored first).
    user: String,
    client_id: String,
    frame: Bytes,
    /// When the relay accepted the send (for [`m::CHAT_SEND_SECONDS`]).
    accepted: Instant,
}

struct State {
    relay: Relay,
    waiters: HashMap<BatchId, Vec<Waiter>>,
}

/// What the commit thread hands the delivery thread, in commit order.
pub enum Delivery {
    /// A durable batch: `sent` to its waiters, its entries to the owners' devices.
    Durable {
        batch: WriteBatch,
        waiters: Vec<Waiter>,
    },
    /// The waiters of a batch that could not be stored.
    Failed(Vec<Waiter>),
}

/// The node's chat service.
pub struct Chat {
    state: Mutex<State>,
    wake: Condvar,
    reader: Reader,
    store: Arc<dyn ChatStore>,
    /// Cluster mode: the store is PostgreSQL, shared with the other nodes.
    shared: bool,
    stopped: AtomicBool,
}

/// Where the chat store is.
pub enum ChatBackend<'a> {
    /// This node's own, in `dir` of its data folder.
    Local {
        dir: &'a Path,
        kind: chat_relay::StoreKind,
        node_id: &'a str,
    },
    /// The cluster's, which every node writes (`node_number`: this node's, unique in the
    /// cluster, for its message ids).
    Shared {
        store: Arc<dyn ChatStore>,
        node_number: u16,
    },
}

/// What chat asks of the rest of the node: the friend graph and the groups (for the
/// relay's checks), who is online (for delivery) and, in a cluster, which node serves whom.
pub struct Dir<'a> {
    pub engine: &'a presence_core::Engine,
    pub groups: &'a parking_lot::RwLock<Groups>,
    pub registry: &'a Registry,
    pub routes: &'a parking_lot::RwLock<Option<Arc<super::cluster::Routes>>>,
}

impl Dir<'_> {
    /// The live sessions of a user by app id (none if the node never saw it).
    pub fn sessions_of(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        self.engine
            .lookup(user)
            .map(|u| self.registry.sessions_of(u.0))
            .unwrap_or_default()
    }

    /// Where `user`'s devices are: here, at another node (its id), or nowhere now (its slot
    /// has no owner: the devices find the entries by `sync` when they connect again).
    pub fn home_of(&self, user: &str) -> Home {
        let routes = self.routes.read();
        let Some(r) = routes.as_ref() else {
            return Home::Here;
        };
        match r.owner_of(presence_cluster::slot_of(user.as_bytes())) {
            Some(o) if o == r.me() => Home::Here,
            Some(o) => Home::Node(o.to_owned()),
            None => Home::Nowhere,
        }
    }
}

/// Where a user's live devices are (see [`Dir::home_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    Here,
    Node(String),
    Nowhere,
}

/// What the delivery of a batch leaves for the driver: webhooks to send, and the chat of
/// users other nodes serve, by node.
#[derive(Default)]
pub struct Handed {
    pub undelivered: Vec<Undelivered>,
    pub remote: HashMap<String, Vec<presence_peer::ChatPush>>,
}

impl Directory for Dir<'_> {
    fn are_friends(&self, a: &str, b: &str) -> bool {
        let e = self.engine;
        match (e.lookup(a), e.lookup(b)) {
            (Some(a), Some(b)) => e.are_friends(a, b),
            _ => false,
        }
    }

    fn group_members(&self, gid: &str) -> Option<Vec<String>> {
        self.groups.read().get(gid).map(|m| m.to_vec())
    }
}

/// An operation on a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOp {
    Edit(String),
    Delete,
    Read,
}

/// What a chat operation answers right away.
pub enum Answer {
    /// Nothing now (a `sent` or the entries come once durable).
    Later,
    Frame(Vec<u8>),
    Error(ProtocolError),
}

/// The error frame for a refused chat operation (`id`: the client id it answers).
pub fn refusal(e: &ChatError, id: Option<&str>) -> ProtocolError {
    ProtocolError {
        code: frames::chat_error_code(e),
        message: e.to_string(),
        id: id.map(str::to_owned),
    }
}

/// The node part (10 bits) of the message ids a node makes: its name if that is a number
/// 0-1023, else the name's slot hash (CRC-16/XMODEM mod 1024). Names that collide there make
/// ids that may collide too, so name cluster nodes 0, 1, 2, … for now.
pub fn msg_id_node(name: &str) -> u16 {
    match name.parse::<u16>() {
        Ok(n) if n < 1024 => n,
        _ => presence_cluster::slot_of(name.as_bytes()).get(),
    }
}

impl Chat {
    /// Opens the chat store (a local one is created if missing).
    pub fn open(backend: ChatBackend<'_>, limits: Limits) -> anyhow::Result<Self> {
        let (relay, store) = match backend {
            ChatBackend::Local { dir, kind, node_id } => {
                let store = kind.open(dir).with_context(|| {
                    format!(
                        "opening the {} chat store in {}",
                        kind.as_str(),
                        dir.display()
                    )
                })?;
                let ids = IdGen::new(u32::from(msg_id_node(node_id))).context("node id")?;
                let relay =
                    Relay::new(store.clone(), ids, limits).context("reading the chat store")?;
                (relay, store)
            }
            ChatBackend::Shared { store, node_number } => {
                let ids = IdGen::new(u32::from(node_number)).context("node number")?;
                let relay = Relay::shared(store.clone(), ids, limits)
                    .context("reading the cluster's chat store")?;
                (relay, store)
            }
        };
        Ok(Self {
            shared: relay.is_shared(),
            reader: relay.reader(),
            state: Mutex::new(State {
                relay,
                waiters: HashMap::new(),
            }),
            wake: Condvar::new(),
            store,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// `send`: answered `sent` once durable (or at once for a retry of a durable send).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        dir: &Dir<'_>,
        session: &Arc<SessionHandle>,
        user: &str,
        client_id: &str,
        target: &Target,
        text: &str,
        now: u64,
    ) -> Answer {
        let mut st = self.state.lock();
        let outcome = st.relay.send(now, user, client_id, target, text, dir);
        let (msg_id, ts, wait_for) = match outcome {
            Ok(SendOutcome::New { msg_id, ts, batch }) => {
                metrics::counter!(m::CHAT_SENDS).increment(1);
                (msg_id, ts, Some(batch))
            }
            Ok(SendOutcome::Duplicate {
                msg_id,
                ts,
                pending,
            }) => {
                metrics::counter!(m::CHAT_DUPLICATES).increment(1);
                (msg_id, ts, pending)
            }
            Err(e) => return Answer::Error(refusal(&e, Some(client_id))),
        };
        let frame = frames::sent_frame(client_id, msg_id, ts);
        match wait_for {
            None => Answer::Frame(frame),
            Some(batch) => {
                st.waiters.entry(batch).or_default().push(Waiter {
                    session: session.clone(),
                    user: user.to_owned(),
                    client_id: client_id.to_owned(),
                    frame: Bytes::from(frame),
                    accepted: Instant::now(),
                });
                drop(st);
                self.wake.notify_one();
                Answer::Later
            }
        }
    }

    /// `edit`, `delete` or `read` of message `id`: the entries they make arrive as `inbox`
    /// frames. `None`: the message must be read from the (shared) store first, off the chat
    /// lock — call again with `fetched: Some(what was read)`.
    #[allow(clippy::too_many_arguments)]
    pub fn message_op(
        &self,
        dir: &Dir<'_>,
        user: &str,
        id: chat_relay::MsgId,
        op: &MessageOp,
        fetched: Option<Option<chat_relay::StoredMessage>>,
        now: u64,
    ) -> Option<Answer> {
        let mut st = self.state.lock();
        let how = match fetched {
            Some(m) => Lookup::Fetched(m),
            None if st.relay.needs_fetch(id) => return None,
            // Shared, and the message is in flight here: that write comes first anyway.
            None if st.relay.is_shared() => Lookup::Fetched(None),
            None => Lookup::Store,
        };
        let relay = &mut st.relay;
        let res = match op {
            MessageOp::Edit(text) => relay.edit_with(now, user, id, text, how, dir),
            MessageOp::Delete => relay.delete_with(now, user, id, how, dir),
            MessageOp::Read => relay.read_with(now, user, id, how, dir),
        };
        drop(st);
        Some(match res {
            Ok(_) => {
                self.wake.notify_one();
                Answer::Later
            }
            Err(e) => Answer::Error(refusal(&e, None)),
        })
    }

    /// `ack`: the device's position, durable with the next batch.
    pub fn ack(&self, user: &str, device: &str, seq: u64) -> Answer {
        let mut st = self.state.lock();
        match st.relay.ack(user, device, seq) {
            Ok(()) => {
                metrics::counter!(m::CHAT_ACKS).increment(1);
                // No wakeup: the committer writes acks every ACK_DELAY.
                Answer::Later
            }
            Err(e) => Answer::Error(refusal(&e, None)),
        }
    }

    /// The device's last ack not yet durable (0 if none): the welcome's `acked_seq` is the
    /// larger of this and the durable one.
    pub fn unsettled_ack(&self, user: &str, device: &str) -> u64 {
        self.state.lock().relay.unsettled_ack(user, device)
    }

    /// `typing`: the users to tell (rate-limited by the relay; never stored).
    pub fn typing(
        &self,
        dir: &Dir<'_>,
        user: &str,
        target: &Target,
        now: u64,
    ) -> Result<Vec<String>, ProtocolError> {
        self.state
            .lock()
            .relay
            .typing(now, user, target, dir)
            .map_err(|e| refusal(&e, None))
    }

    /// Asks the committer to finish what is pending and stop.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Delivers a durable batch, or refuses a failed one's waiters (on the delivery thread:
    /// batches in commit order keep every owner's entries in seq order).
    /// Returns the `message.undelivered` events for recipients with no live session, for
    /// the driver's webhook sender.
    #[must_use = "the undelivered events go to the webhook sender, the remote chat to peers"]
    pub fn hand_over(&self, dir: &Dir<'_>, d: Delivery) -> Handed {
        match d {
            Delivery::Durable { batch, waiters } => self.deliver(dir, &batch, waiters),
            Delivery::Failed(failed) => {
                Self::refuse(failed);
                Handed::default()
            }
        }
    }

    /// Chat a peer committed for users served here: pushed to their live devices in the
    /// order it came (a session fills any gap before an entry from the store); returns the
    /// `message.undelivered` events for owners with no live device.
    ///
    /// No items is a peer saying some of its pushes were lost (a full queue): every live
    /// session here reads its inbox back from the store.
    #[must_use = "the undelivered events go to the webhook sender"]
    pub fn from_peer(
        &self,
        dir: &Dir<'_>,
        items: Vec<presence_peer::ChatPush>,
    ) -> Vec<Undelivered> {
        if items.is_empty() {
            Self::catch_up_all(dir);
            return Vec::new();
        }
        let mut undelivered = Vec::new();
        let (mut delivered, mut lagging) = (0u64, 0u64);
        let mut live: HashMap<String, Vec<Arc<SessionHandle>>> = HashMap::new();
        for item in items {
            let sessions = live
                .entry(item.owner.clone())
                .or_insert_with(|| dir.sessions_of(&item.owner));
            if sessions.is_empty() {
                if let Some((id, from)) = item.message
                    && dir.home_of(&item.owner) == Home::Here
                {
                    undelivered.push(Undelivered {
                        user: item.owner,
                        msg_id: chat_relay::MsgId(id),
                        from,
                    });
                }
                continue;
            }
            let frame = Bytes::from(item.frame);
            for s in sessions.iter() {
                let pushed = if item.seq == 0 {
                    s.outbox.push_chat(ChatItem::Frame(frame.clone()))
                } else {
                    s.outbox.push_chat(ChatItem::Inbox {
                        seq: item.seq,
                        frame: frame.clone(),
                    })
                };
                if pushed {
                    delivered += 1;
                } else {
                    lagging += 1;
                }
            }
        }
        metrics::counter!(m::CHAT_ENTRIES_PUSHED).increment(delivered);
        metrics::counter!(m::CHAT_ENTRIES_LAGGING).increment(lagging);
        undelivered
    }

    /// Tells the waiters of a failed commit to retry.
    fn refuse(failed: Vec<Waiter>) {
        for w in failed {
            let e = ProtocolError {
                code: ErrorCode::Internal,
                message: "the node could not store this; retry with the same id".into(),
                id: Some(w.client_id),
            };
            w.session
                .outbox
                .push_chat(ChatItem::Frame(Bytes::from(presence_wire::error_frame(&e))));
        }
    }

    /// The next batch to commit, blocking on the chat lock's condition variable until sends
    /// are pending, held acks are due (every `ACK_DELAY` after `acks_written`, which this
    /// moves on when it hands out acks), or the chat is stopping; `None` once stopping and
    /// drained. The commit thread calls it, commits the batch to [`Chat::store`] (one fsync)
    /// and hands the result to [`Chat::committed`].
    pub fn next_batch(&self, acks_written: &mut Instant) -> Option<WriteBatch> {
        let mut st = self.state.lock();
        loop {
            let stopping = self.stopped.load(Ordering::Acquire);
            let acks_due = acks_written.elapsed() >= ACK_DELAY;
            let b = if acks_due || stopping {
                st.relay.take_batch()
            } else {
                st.relay.take_batch_holding_acks()
            };
            if let Some(b) = b {
                if !b.acks.is_empty() {
                    *acks_written = Instant::now();
                }
                return Some(b);
            }
            if stopping {
                return None;
            }
            let wait = if st.relay.has_pending_acks() {
                ACK_DELAY.saturating_sub(acks_written.elapsed())
            } else {
                Duration::from_millis(100)
            };
            self.wake
                .wait_for(&mut st, wait.max(Duration::from_millis(1)));
        }
    }

    /// Where batches are committed (durable when `commit` returns).
    pub fn store(&self) -> &dyn ChatStore {
        self.store.as_ref()
    }

    /// Whether the store is the cluster's, shared with the other nodes.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Commits a batch (blocking: on the commit thread; durable when it returns `Ok`).
    ///
    /// In a cluster the store numbers the inboxes and keeps dedupe in the same transaction,
    /// and the batch is fenced: `epoch_of(slot)` is the epoch this node serves a slot under
    /// (`None`: not served here). A batch is refused before it reaches the store if this
    /// node cannot prove its lease (`fenced`) or no longer serves a writer's slot, and by
    /// the store if a writer's slot was taken since by a newer owner: its senders retry,
    /// with the same ids, at the node that serves them now. Returns the sends the store had
    /// already (answer them with the stored ids).
    pub fn commit(
        &self,
        batch: &mut WriteBatch,
        fenced: bool,
        epoch_of: impl Fn(u16) -> Option<i64>,
    ) -> Result<Vec<chat_relay::DedupeRow>, chat_relay::StoreError> {
        if !self.shared {
            return self.store.commit(batch).map(|()| Vec::new());
        }
        if fenced {
            metrics::counter!(m::CHAT_FENCED).increment(1);
            return Err(chat_relay::StoreError::Backend(
                "this node cannot prove its etcd lease: nothing is committed".into(),
            ));
        }
        let mut slots: Vec<u16> = batch
            .messages
            .iter()
            .map(|m| m.from.as_str())
            .chain(
                batch
                    .inbox
                    .iter()
                    .filter(|(_, e)| e.kind == EntryKind::Read)
                    .map(|(_, e)| e.from.as_str()),
            )
            .chain(batch.acks.iter().map(|a| a.user.as_str()))
            .map(|u| presence_cluster::slot_of(u.as_bytes()).get())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        batch.fences.clear();
        for slot in slots {
            let Some(epoch) = epoch_of(slot) else {
                metrics::counter!(m::CHAT_FENCED).increment(1);
                return Err(chat_relay::StoreError::Backend(format!(
                    "slot {slot} is no longer served here"
                )));
            };
            batch
                .fences
                .push((slot, u64::try_from(epoch).unwrap_or_default()));
        }
        let result = self.store.commit_numbered(batch);
        if let Err(chat_relay::StoreError::Fenced {
            slot,
            epoch,
            fenced,
        }) = &result
        {
            metrics::counter!(m::CHAT_FENCED).increment(1);
            tracing::warn!(
                slot,
                epoch,
                fenced,
                "a chat batch was fenced: a newer owner took a slot"
            );
        }
        result
    }

    /// A batch's commit came back: what the delivery thread hands over, in commit order
    /// (`sent` and the entries once durable; a retry-with-the-same-id refusal otherwise).
    /// `Ok` holds the sends the store had already: their senders get the stored id.
    pub fn committed(
        &self,
        batch: WriteBatch,
        result: Result<Vec<chat_relay::DedupeRow>, chat_relay::StoreError>,
    ) -> Delivery {
        metrics::histogram!(m::CHAT_COMMIT_ROWS).record(batch.rows() as f64);
        match result {
            Ok(stored) => {
                let mut waiters = {
                    let mut st = self.state.lock();
                    st.relay.committed(batch.id);
                    st.waiters.remove(&batch.id).unwrap_or_default()
                };
                if !stored.is_empty() {
                    metrics::counter!(m::CHAT_DUPLICATES).increment(stored.len() as u64);
                    let by_key: HashMap<(&str, &str), &chat_relay::DedupeRow> = stored
                        .iter()
                        .map(|d| ((d.sender.as_str(), d.client_id.as_str()), d))
                        .collect();
                    for w in &mut waiters {
                        if let Some(d) = by_key.get(&(w.user.as_str(), w.client_id.as_str())) {
                            w.frame = Bytes::from(frames::sent_frame(&w.client_id, d.msg_id, d.ts));
                        }
                    }
                }
                metrics::counter!(m::CHAT_COMMITS).increment(1);
                metrics::counter!(m::CHAT_ACK_ROWS).increment(batch.acks.len() as u64);
                metrics::counter!(m::CHAT_COMMITTED_ROWS).increment(batch.rows() as u64);
                Delivery::Durable { batch, waiters }
            }
            Err(e) => {
                error!("chat commit failed: {e}");
                metrics::counter!(m::CHAT_COMMIT_FAILURES).increment(1);
                let mut failed = Vec::new();
                let mut st = self.state.lock();
                let dropped = st.relay.reset();
                failed.extend(st.waiters.remove(&batch.id).unwrap_or_default());
                if let Some(d) = dropped {
                    failed.extend(st.waiters.remove(&d).unwrap_or_default());
                }
                Delivery::Failed(failed)
            }
        }
    }

    /// Every live session here reads its inbox back from the store after what it has
    /// written: pushes from a peer may have been lost (a link that broke, a full queue).
    /// One store read per session, so only on such events.
    pub fn catch_up_all(dir: &Dir<'_>) {
        let mut n = 0u64;
        dir.registry.for_each(|s| {
            s.outbox.catch_up();
            n += 1;
        });
        metrics::counter!(m::CHAT_CATCH_UPS).increment(n);
    }

    /// After a commit: `sent` to the waiters, entries to the owners' live devices, webhooks
    /// for recipients with none; entries of users another node serves go to that node.
    fn deliver(&self, dir: &Dir<'_>, batch: &WriteBatch, waiters: Vec<Waiter>) -> Handed {
        let mut undelivered = Vec::new();
        let mut remote: HashMap<String, Vec<presence_peer::ChatPush>> = HashMap::new();
        let send_seconds = metrics::histogram!(m::CHAT_SEND_SECONDS);
        for w in waiters {
            w.session.outbox.push_chat(ChatItem::Frame(w.frame));
            send_seconds.record(w.accepted.elapsed().as_secs_f64());
        }
        let mut delivered = 0u64;
        let mut lagging = 0u64;
        // Each owner's live sessions are looked up once per batch (a busy sender, or a group's
        // members, own many of its entries); entries stay in batch order, which is seq order
        // for each owner.
        let mut live: HashMap<&str, Result<Vec<Arc<SessionHandle>>, Home>> = HashMap::new();
        for (owner, entry) in &batch.inbox {
            let here = live
                .entry(owner.as_str())
                .or_insert_with(|| match dir.home_of(owner) {
                    Home::Here => Ok(dir.sessions_of(owner)),
                    elsewhere => Err(elsewhere),
                });
            let sessions = match here {
                Ok(s) => s,
                Err(Home::Node(node)) => {
                    let message = (entry.kind == EntryKind::Message && entry.from != *owner)
                        .then(|| (entry.msg_id.0, entry.from.clone()));
                    remote
                        .entry(node.clone())
                        .or_default()
                        .push(presence_peer::ChatPush {
                            owner: owner.clone(),
                            seq: entry.seq,
                            frame: frames::inbox_frame(entry),
                            message,
                        });
                    continue;
                }
                Err(_) => continue,
            };
            if sessions.is_empty() {
                if entry.kind == EntryKind::Message && entry.from != *owner {
                    undelivered.push(Undelivered {
                        user: owner.clone(),
                        msg_id: entry.msg_id,
                        from: entry.from.clone(),
                    });
                }
                continue;
            }
            let frame = Bytes::from(frames::inbox_frame(entry));
            for s in sessions.iter() {
                if s.outbox.push_chat(ChatItem::Inbox {
                    seq: entry.seq,
                    frame: frame.clone(),
                }) {
                    delivered += 1;
                } else {
                    lagging += 1;
                }
            }
        }
        metrics::counter!(m::CHAT_ENTRIES_PUSHED).increment(delivered);
        metrics::counter!(m::CHAT_ENTRIES_LAGGING).increment(lagging);
        Handed {
            undelivered,
            remote,
        }
    }

    /// Retention: trims entries older than `max_age` at `now` (blocking: a store scan).
    pub fn trim(
        &self,
        now: u64,
        max_age_ms: u64,
    ) -> Result<chat_relay::TrimCounts, chat_relay::StoreError> {
        Relay::trim(self.store.as_ref(), now, max_age_ms)
    }
}
