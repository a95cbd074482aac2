//! A session's outbox: where the tick and the chat delivery leave frames for the session task,
//! here rather than in the node so that loom can model it (`tests/loom.rs`).
//!
//! Presence is bounded by merging, chat by the durable inbox.
//! The tick driver pushes each tick's entries for the session's user; the session task takes
//! them when it can write. If the previous frame has not been taken yet (the client reads
//! slowly), the new entries are merged into it, latest state per friend winning, so a slow
//! client costs at most one pending entry per friend however long it lags.
//!
//! Chat frames queue in order. Inbox entries are never merged, but they are already durable:
//! past [`CHAT_QUEUE_MAX`] queued entries the outbox stops holding them and marks the session
//! lagging, and the session reads what it missed back from the store, in order, when it
//! catches up. A slow device costs a bounded queue, never a lost entry.
//!
//! Every push, close and ping gives the outbox's [`Wakeup`] its permit; the session task awaits
//! `outbox.wakeup.notified()` and then takes everything at once.
//!
//! **Pacing** happens before the outbox, in the registry ([`crate::registry::Registry::hand_out`]):
//! what reaches an outbox is due, and every push wakes the session.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::sync::{Mutex, Wakeup};

/// Entries a tick merges into what waits one by one, in place; more go through [`merge`].
const SMALL_MERGE: usize = 8;

/// Inbox entries held for a session before it is marked lagging.
pub const CHAT_QUEUE_MAX: usize = 1024;

/// A chat frame for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatItem {
    /// An entry of the user's inbox (durable), rendered.
    Inbox { seq: u64, frame: Bytes },
    /// Any other frame (`sent`, `typing`, an `error` for a failed send).
    Frame(Bytes),
}

/// Why the node closes a session on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    HeartbeatTimeout,
    Shutdown,
    /// Cluster mode: the user's slot is no longer served here; the session is told where it
    /// belongs now (`moved`), unless the slot came back before it woke.
    Moved,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    /// How many ticks the oldest pending entries are behind `tick` (merged frames span
    /// several ticks; saturating: a u32 keeps the outbox small).
    behind: u32,
    /// (friend dense id, rendered entry), ascending by friend.
    pending: Vec<(u32, Bytes)>,
    close: Option<CloseReason>,
    chat: VecDeque<ChatItem>,
    /// Inbox entries in `chat`, and how many it may hold (u32s: an outbox per session).
    inbox_queued: u32,
    inbox_cap: u32,
    lagging: bool,
    ping: bool,
}

/// What the session task takes from its outbox.
pub struct Taken {
    /// The newest tick and the entries (latest per friend, ascending by friend).
    pub presence: Option<(u64, Vec<(u32, Bytes)>)>,
    /// The tick of the oldest entries in `presence` (the same tick unless frames merged):
    /// what a frame's delay is measured from.
    pub presence_since: u64,
    pub chat: VecDeque<ChatItem>,
    /// Inbox entries were left out: read the inbox back from the store.
    pub lagging: bool,
    pub close: Option<CloseReason>,
    /// Ask the client for a sign of life.
    pub ping: bool,
}

pub struct Outbox {
    inner: Mutex<Inner>,
    /// Given a permit by every push, close and ping: the session task awaits
    /// `wakeup.notified()`, then calls [`Outbox::take`].
    pub wakeup: Wakeup,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::with_chat_cap(CHAT_QUEUE_MAX)
    }
}

impl Outbox {
    /// An outbox that holds at most `cap` inbox entries (capped at `u32::MAX`) before it marks
    /// the session lagging; [`CHAT_QUEUE_MAX`] by default.
    pub fn with_chat_cap(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                inbox_cap: u32::try_from(cap).unwrap_or(u32::MAX),
                ..Inner::default()
            }),
            wakeup: Wakeup::default(),
        }
    }

    /// Queues one tick's entries (any order) and wakes the session; returns true if they were
    /// merged into a frame the client had not taken yet.
    pub fn push(&self, tick: u64, items: Vec<(u32, Bytes)>) -> bool {
        self.push_since(tick, tick, items)
    }

    /// Queues entries of ticks `since..=tick` (any order; entries held over several ticks,
    /// latest per friend) and wakes the session; returns true if they were merged into a frame
    /// the client had not taken yet. `since` is what the frame's delay is measured from.
    pub fn push_since(&self, since: u64, tick: u64, items: Vec<(u32, Bytes)>) -> bool {
        let merged = self.inner.lock().queue(since, tick, items);
        self.wakeup.notify();
        merged
    }

    /// Asks the session to ping its client.
    pub fn ping(&self) {
        self.inner.lock().ping = true;
        self.wakeup.notify();
    }

    pub fn close(&self, reason: CloseReason) {
        self.inner.lock().close.get_or_insert(reason);
        self.wakeup.notify();
    }

    /// Queues a chat frame. Returns false if an inbox entry was left out (the session is
    /// lagging and will read it from the store).
    pub fn push_chat(&self, item: ChatItem) -> bool {
        let kept = {
            let mut inner = self.inner.lock();
            match item {
                ChatItem::Inbox { .. } if inner.inbox_queued >= inner.inbox_cap => {
                    inner.lagging = true;
                    false
                }
                ChatItem::Inbox { .. } => {
                    inner.inbox_queued += 1;
                    inner.chat.push_back(item);
                    true
                }
                ChatItem::Frame(_) => {
                    inner.chat.push_back(item);
                    true
                }
            }
        };
        self.wakeup.notify();
        kept
    }

    /// Has the session read its inbox back from the store after what it has written, as
    /// a lagging one does: for entries that may have been lost on their way here (another
    /// node's push over a link that broke).
    pub fn catch_up(&self) {
        self.inner.lock().lagging = true;
        self.wakeup.notify();
    }

    /// Everything waiting, at once (a close stays: every later take reports it too).
    pub fn take(&self) -> Taken {
        let mut inner = self.inner.lock();
        let presence =
            (!inner.pending.is_empty()).then(|| (inner.tick, std::mem::take(&mut inner.pending)));
        let presence_since = inner.tick.saturating_sub(u64::from(inner.behind));
        if presence.is_some() {
            inner.behind = 0;
        }
        inner.inbox_queued = 0;
        Taken {
            presence,
            presence_since,
            chat: std::mem::take(&mut inner.chat),
            lagging: std::mem::take(&mut inner.lagging),
            close: inner.close.clone(),
            ping: std::mem::take(&mut inner.ping),
        }
    }

    /// Whether a close is waiting, taking nothing: a driver that takes only while its client
    /// can read (long-poll, between polls) still ends the session at once.
    pub fn closing(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Entries waiting to be written.
    pub fn pending_len(&self) -> usize {
        self.inner.lock().pending.len()
    }
}

impl Inner {
    /// Adds entries of ticks `since..=tick` to what waits; true if merged into entries not
    /// taken yet.
    fn queue(&mut self, since: u64, tick: u64, mut items: Vec<(u32, Bytes)>) -> bool {
        items.sort_unstable_by_key(|(u, _)| *u);
        // A snapshot pushed between ticks carries the tick it was read at, which may be
        // behind the tick of entries already waiting.
        let (newest, merging) = (self.tick.max(tick), !self.pending.is_empty());
        let since = if merging {
            self.tick.saturating_sub(u64::from(self.behind)).min(since)
        } else {
            since.min(tick)
        };
        self.behind = u32::try_from(newest - since).unwrap_or(u32::MAX);
        self.tick = newest;
        if merging && items.len() <= SMALL_MERGE {
            // The common merge, a slow reader's next tick: a few entries into a short list,
            // in place (no new list a tick).
            for item in items {
                match self.pending.binary_search_by_key(&item.0, |e| e.0) {
                    Ok(i) => self.pending[i] = item,
                    Err(i) => self.pending.insert(i, item),
                }
            }
        } else if merging {
            let old = std::mem::take(&mut self.pending);
            self.pending = merge(old, items);
        } else {
            self.pending = items;
        }
        merging
    }
}

/// Merges two ascending lists; on equal keys the newer entry wins.
pub(crate) fn merge(old: Vec<(u32, Bytes)>, new: Vec<(u32, Bytes)>) -> Vec<(u32, Bytes)> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut a = old.into_iter().peekable();
    let mut b = new.into_iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 < y.0 => out.extend(a.next()),
            (Some(x), Some(y)) if x.0 > y.0 => out.extend(b.next()),
            (Some(_), Some(_)) => {
                a.next();
                out.extend(b.next());
            }
            (Some(_), None) => out.extend(a.next()),
            (None, Some(_)) => out.extend(b.next()),
            (None, None) => break,
        }
    }
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn e(u: u32, s: &'static str) -> (u32, Bytes) {
        (u, Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn merges_latest_per_friend_and_stays_bounded() {
        let o = Outbox::default();
        assert!(!o.push(1, vec![e(3, "a3"), e(1, "a1")]));
        assert!(o.push(2, vec![e(1, "b1"), e(2, "b2")]));
        for t in 3..1000 {
            assert!(o.push(t, vec![e(2, "c2"), e(3, "c3")]));
        }
        assert_eq!(o.pending_len(), 3, "bounded by the number of friends");
        let taken = o.take();
        let (tick, items) = taken.presence.expect("pending");
        assert_eq!(tick, 999);
        assert_eq!(
            taken.presence_since, 1,
            "the merged frame waited since tick 1"
        );
        assert_eq!(items, vec![e(1, "b1"), e(2, "c2"), e(3, "c3")]);
        assert!(o.take().presence.is_none());
        assert!(!o.push(1000, vec![e(1, "d1")]));
        let taken = o.take();
        assert_eq!(
            taken.presence_since, 1000,
            "a frame taken starts the next one afresh"
        );
    }

    #[test]
    fn small_merges_in_place_equal_the_list_merge() {
        // Pending lists and ticks of every size around the in-place bound, keys overlapping.
        for n in [0usize, 1, 3, 20] {
            for m in [1usize, 2, SMALL_MERGE, SMALL_MERGE + 1, 30] {
                let o = Outbox::default();
                let old: Vec<(u32, Bytes)> = (0..n as u32)
                    .map(|u| (u * 2, Bytes::from(format!("old{u}"))))
                    .collect();
                let new: Vec<(u32, Bytes)> = (0..m as u32)
                    .rev()
                    .map(|u| (u * 3, Bytes::from(format!("new{u}"))))
                    .collect();
                let _ = o.push(1, old.clone());
                let _ = o.push(2, new.clone());
                let mut sorted = new;
                sorted.sort_unstable_by_key(|e| e.0);
                let want = if n == 0 { sorted } else { merge(old, sorted) };
                assert_eq!(o.take().presence, Some((2, want)), "n={n} m={m}");
            }
        }
    }

    #[test]
    fn a_snapshot_behind_the_pending_tick_is_the_oldest() {
        let o = Outbox::default();
        assert!(!o.push(7, vec![e(1, "a1")]));
        // A snapshot read at tick 5, pushed after tick 7's entries.
        assert!(o.push(5, vec![e(2, "s2")]));
        let taken = o.take();
        assert_eq!(taken.presence.expect("pending").0, 7);
        assert_eq!(taken.presence_since, 5);
    }

    #[test]
    fn entries_held_over_ticks_are_timed_from_the_oldest() {
        let o = Outbox::default();
        assert!(!o.push_since(2, 4, vec![e(2, "b2"), e(1, "d1")]));
        assert!(o.wakeup.try_take(), "every push wakes");
        let t = o.take();
        assert_eq!(t.presence, Some((4, vec![e(1, "d1"), e(2, "b2")])));
        assert_eq!(t.presence_since, 2, "held since tick 2");
        // Merged into a frame not taken: the oldest of both.
        assert!(!o.push(9, vec![e(1, "x1")]));
        assert!(o.push_since(6, 10, vec![e(3, "y3")]));
        let t = o.take();
        assert_eq!(t.presence.map(|(tick, _)| tick), Some(10));
        assert_eq!(t.presence_since, 6);
    }

    #[test]
    fn catch_up_marks_lagging_once() {
        let o = Outbox::default();
        assert!(!o.take().lagging);
        o.catch_up();
        assert!(o.take().lagging, "the session reads its inbox back");
        assert!(!o.take().lagging, "once");
    }

    #[test]
    fn chat_keeps_order_and_marks_lagging_past_the_cap() {
        let o = Outbox::default();
        let inbox = |seq: u64| ChatItem::Inbox {
            seq,
            frame: Bytes::from(seq.to_string()),
        };
        for seq in 1..=CHAT_QUEUE_MAX as u64 {
            assert!(o.push_chat(inbox(seq)));
        }
        assert!(!o.push_chat(inbox(CHAT_QUEUE_MAX as u64 + 1)));
        assert!(o.push_chat(ChatItem::Frame(Bytes::from_static(b"sent"))));
        let taken = o.take();
        assert!(taken.lagging);
        assert_eq!(taken.chat.len(), CHAT_QUEUE_MAX + 1);
        assert_eq!(taken.chat.front(), Some(&inbox(1)));
        assert_eq!(
            taken.chat.back(),
            Some(&ChatItem::Frame(Bytes::from_static(b"sent")))
        );
        let again = o.take();
        assert!(!again.lagging && again.chat.is_empty());
        assert!(o.push_chat(inbox(9)), "room again once taken");
    }

    #[test]
    fn a_small_cap_marks_lagging_sooner() {
        let o = Outbox::with_chat_cap(2);
        let inbox = |seq: u64| ChatItem::Inbox {
            seq,
            frame: Bytes::from(seq.to_string()),
        };
        assert!(o.push_chat(inbox(1)) && o.push_chat(inbox(2)));
        assert!(!o.push_chat(inbox(3)));
        assert!(
            o.push_chat(ChatItem::Frame(Bytes::from_static(b"sent"))),
            "other frames are never left out"
        );
        let taken = o.take();
        assert!(taken.lagging);
        assert_eq!(taken.chat.len(), 3);
    }

    #[test]
    fn every_push_close_and_ping_gives_the_wakeup_its_permit() {
        let o = Outbox::default();
        assert!(!o.wakeup.try_take());
        o.push(1, vec![e(1, "a")]);
        assert!(o.wakeup.try_take());
        o.push_chat(ChatItem::Frame(Bytes::from_static(b"sent")));
        assert!(o.wakeup.try_take());
        o.ping();
        assert!(o.wakeup.try_take());
        assert!(!o.closing());
        o.close(CloseReason::Shutdown);
        assert!(o.closing());
        assert!(o.wakeup.try_take());
        assert!(!o.wakeup.try_take());
    }

    /// An idle session holds one outbox; the node's target is 4 KiB of user space a session.
    /// 128 bytes (96 of state behind the mutex, 32 of [`Wakeup`]): 120 as it was with tokio's
    /// `Notify`, and 8 more for pacing's next free tick.
    #[test]
    fn stays_small() {
        assert!(size_of::<Outbox>() <= 128, "{} bytes", size_of::<Outbox>());
    }
}
