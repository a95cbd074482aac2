//! Whether this node's lease is surely alive: a node serves its slots only while it is.
//!
//! etcd counts a lease's time to live from when its server handles a keep-alive, which is
//! after the node sent it. So a lease kept alive by a request sent at `t` and answered with
//! TTL `d` lives at least until `t + d` on etcd's clock. The node counts on its own monotonic
//! clock from the moment it *sent* the request, less a margin for the two clocks' rates, and
//! fences itself when that runs out: by the time etcd lets the lease expire and the
//! coordinator gives the slots away, the node has already stopped serving them, even if it
//! was paused (SIGSTOP) or cut off and never heard from etcd again.
//!
//! Clock- and socket-free: the driver passes `now` (a monotonic `Instant`) and says what it
//! sent and what came back.

use std::time::{Duration, Instant};

/// The part of each granted TTL the node does not count on (the two clocks' rates).
const MARGIN: f64 = 0.1;

/// The lease fence of one node.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Until when the lease is surely alive; `None`: never granted, or known lost.
    until: Option<Instant>,
    lost: bool,
}

/// A keep-alive (or grant) request as it leaves: remember when, and hand it back with the
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "hand it to Fence::answered with etcd's answer"]
pub struct Sent(Instant);

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    /// A fence that holds nothing yet, with a 10% margin.
    pub fn new() -> Fence {
        Fence {
            until: None,
            lost: false,
        }
    }

    /// A request (lease grant or keep-alive) leaves at `now`.
    pub fn sending(&self, now: Instant) -> Sent {
        Sent(now)
    }

    /// etcd answered the request sent at `sent` with `ttl` left on the lease; a TTL of zero
    /// means the lease is gone (expired or revoked): the fence then stays down for good and
    /// the node must join again with a new lease.
    pub fn answered(&mut self, sent: Sent, ttl: Duration) {
        if ttl.is_zero() {
            self.lost = true;
            self.until = None;
            return;
        }
        if self.lost {
            return;
        }
        let keep = ttl.mul_f64(1.0 - MARGIN);
        let until = sent.0 + keep;
        // Answers may come back out of order: the latest expiry wins.
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// Whether the lease is surely alive at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Until when it surely holds (for a timer that fences the node on time).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// The lease is known gone (a zero TTL came back).
    pub fn is_lost(&self) -> bool {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn holds_from_the_send_not_the_answer() {
        let t0 = Instant::now();
        let mut f = Fence::new();
        assert!(!f.holds(t0));
        let sent = f.sending(t0);
        // The answer comes 3 s later (a slow etcd): the lease still counts from t0.
        f.answered(sent, 5 * S);
        assert!(f.holds(t0 + 4 * S));
        assert!(!f.holds(t0 + 9 * S / 2), "the 10% margin");
        assert_eq!(f.until(), Some(t0 + 9 * S / 2));
    }

    #[test]
    fn keep_alives_extend_and_late_answers_do_not_shorten() {
        let t0 = Instant::now();
        let mut f = Fence::new();
        let first = f.sending(t0);
        let second = f.sending(t0 + 2 * S);
        f.answered(second, 5 * S);
        f.answered(first, 5 * S);
        assert!(f.holds(t0 + 6 * S));
    }

    #[test]
    fn silence_fences() {
        let t0 = Instant::now();
        let mut f = Fence::new();
        let s = f.sending(t0);
        f.answered(s, 3 * S);
        assert!(f.holds(t0 + 2 * S));
        // Paused or cut off: no more answers, and the fence falls on its own.
        assert!(!f.holds(t0 + 3 * S));
    }

    #[test]
    fn a_lost_lease_stays_lost() {
        let t0 = Instant::now();
        let mut f = Fence::new();
        let s = f.sending(t0);
        f.answered(s, 3 * S);
        let s = f.sending(t0 + S);
        f.answered(s, Duration::ZERO);
        assert!(!f.holds(t0 + S) && f.is_lost());
        let s = f.sending(t0 + 2 * S);
        f.answered(s, 3 * S);
        assert!(!f.holds(t0 + 2 * S), "a lease once lost is not revived");
    }
}
