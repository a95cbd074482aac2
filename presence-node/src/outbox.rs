//! A session's outbox for presence: bounded by merging, never by dropping.
//!
//! The tick driver pushes each tick's entries for the session's user; the session task takes
//! them when it can write. If the previous frame has not been taken yet (the client reads
//! slowly), the new entries are merged into it, latest state per friend winning, so a slow
//! client costs at most one pending entry per friend however long it lags.

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why the node closes a session on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    HeartbeatTimeout,
    Shutdown,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    /// (friend dense id, rendered entry), ascending by friend.
    pending: Vec<(u32, Bytes)>,
    close: Option<CloseReason>,
}

/// What the session task takes from its outbox.
pub struct Taken {
    pub presence: Option<(u64, Vec<(u32, Bytes)>)>,
    pub close: Option<CloseReason>,
}

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    pub notify: Notify,
}

impl Outbox {
    /// Queues one tick's entries (any order); returns true if they were merged into a frame the
    /// client had not taken yet.
    pub fn push(&self, tick: u64, mut items: Vec<(u32, Bytes)>) -> bool {
        items.sort_unstable_by_key(|(u, _)| *u);
        let merged = {
            let mut inner = self.inner.lock();
            inner.tick = tick;
            if inner.pending.is_empty() {
                inner.pending = items;
                false
            } else {
                let old = std::mem::take(&mut inner.pending);
                inner.pending = merge(old, items);
                true
            }
        };
        self.notify.notify_one();
        merged
    }

    pub fn close(&self, reason: CloseReason) {
        self.inner.lock().close.get_or_insert(reason);
        self.notify.notify_one();
    }

    pub fn take(&self) -> Taken {
        let mut inner = self.inner.lock();
        let presence =
            (!inner.pending.is_empty()).then(|| (inner.tick, std::mem::take(&mut inner.pending)));
        Taken {
            presence,
            close: inner.close.clone(),
        }
    }

    /// Entries waiting to be written.
    pub fn pending_len(&self) -> usize {
        self.inner.lock().pending.len()
    }
}

/// Merges two ascending lists; on equal keys the newer entry wins.
fn merge(old: Vec<(u32, Bytes)>, new: Vec<(u32, Bytes)>) -> Vec<(u32, Bytes)> {
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

#[cfg(test)]
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
        assert_eq!(items, vec![e(1, "b1"), e(2, "c2"), e(3, "c3")]);
        assert!(o.take().presence.is_none());
    }
}
