//! Minting message ids: [`IdGen`]. The id itself ([`MsgId`]) is part of the protocol and
//! lives in `presence-wire`.

pub use presence_wire::msg_id::{
    EPOCH_MS, MAX_NODE, MAX_SEQ, MAX_TIME, NODE_BITS, SEQ_BITS, TIME_SHIFT,
};
pub use presence_wire::{MsgId, ParseMsgIdError};

/// Why an id generator could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id must be 0 to {max}, got {0}", max = MAX_NODE)]
pub struct NodeIdError(pub u32);

/// Mints [`MsgId`]s for one node. Strictly increasing whatever the clock does: a clock that
/// steps backwards keeps the last millisecond used, and a millisecond whose 4,096 sequence
/// numbers are spent borrows the next one.
#[derive(Debug, Clone)]
pub struct IdGen {
    node: u16,
    last_ms: u64,
    seq: u64,
    started: bool,
}

impl IdGen {
    /// A generator for `node` (0 to [`MAX_NODE`]).
    pub fn new(node: u32) -> Result<Self, NodeIdError> {
        let node = u16::try_from(node)
            .ok()
            .filter(|n| *n <= MAX_NODE)
            .ok_or(NodeIdError(node))?;
        Ok(Self {
            node,
            last_ms: 0,
            seq: 0,
            started: false,
        })
    }

    /// The node id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// Raises the floor so the next id is above `id` (used after a restart, with the newest
    /// id in the store, in case the clock went back across the restart).
    pub fn observe(&mut self, id: MsgId) {
        let ms = id.0 >> TIME_SHIFT;
        if !self.started
            || ms > self.last_ms
            || (ms == self.last_ms && u64::from(id.seq()) > self.seq)
        {
            self.last_ms = ms;
            self.seq = u64::from(id.seq());
            self.started = true;
        }
    }

    /// The next id, for a clock reading of `now_ms` (ms since the Unix epoch).
    pub fn next(&mut self, now_ms: u64) -> MsgId {
        let ms = now_ms.saturating_sub(EPOCH_MS).min(MAX_TIME);
        if !self.started || ms > self.last_ms {
            self.last_ms = ms;
            self.seq = 0;
            self.started = true;
        } else if self.seq < MAX_SEQ {
            self.seq += 1;
        } else {
            self.last_ms = (self.last_ms + 1).min(MAX_TIME);
            self.seq = 0;
        }
        MsgId((self.last_ms << TIME_SHIFT) | (u64::from(self.node) << SEQ_BITS) | self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let mut g = IdGen::new(5).unwrap();
        let id = g.next(EPOCH_MS + 1234);
        assert_eq!(id.unix_ms(), EPOCH_MS + 1234);
        assert_eq!(id.node(), 5);
        assert_eq!(id.seq(), 0);
        let s = id.to_string();
        assert_eq!(s.len(), 16);
        assert_eq!(s.parse::<MsgId>().unwrap(), id);
    }

    /// (Bad id strings are refused by `presence-wire`'s own test.)
    #[test]
    fn rejects_bad_nodes() {
        assert!(IdGen::new(1024).is_err());
        assert!(IdGen::new(1023).is_ok());
    }

    #[test]
    fn monotonic_under_backwards_clock_and_bursts() {
        let mut g = IdGen::new(1).unwrap();
        let t = EPOCH_MS + 1_000_000;
        let mut last = g.next(t);
        // 10,000 ids in one ms: borrows the next milliseconds
        for _ in 0..10_000 {
            let id = g.next(t);
            assert!(id > last);
            assert!(id.to_string() > last.to_string());
            last = id;
        }
        assert!(last.unix_ms() >= t + 2);
        // clock steps back one second
        for i in 0..5_000 {
            let id = g.next(t - 1000 + i / 10);
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn first_at_bounds_ids() {
        let mut g = IdGen::new(MAX_NODE.into()).unwrap();
        let t = EPOCH_MS + 5_000;
        let id = g.next(t - 1);
        assert!(id < MsgId::first_at(t));
        let id = g.next(t);
        assert!(id >= MsgId::first_at(t));
    }

    #[test]
    fn observe_raises_floor() {
        let mut a = IdGen::new(1).unwrap();
        let far = a.next(EPOCH_MS + 10_000);
        let mut b = IdGen::new(1).unwrap();
        b.observe(far);
        assert!(b.next(EPOCH_MS + 5) > far);
    }
}
