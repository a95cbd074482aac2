//! `message.undelivered` webhooks as plain values and calls, with no clock, socket, thread or
//! file: the event body, its signature, and a retry schedule with exponential backoff and full
//! jitter.
//!
//! The node POSTs [`Undelivered::body`] with the header
//! `X-Presence-Signature: `[`sign`]`(secret, body)`. It keeps a [`Schedule`]: `push` an event,
//! ask [`Schedule::due`] for what to send now, and report each attempt's outcome with
//! [`Schedule::succeeded`] or [`Schedule::failed`] (which re-queues it after a backoff, or
//! gives up after `max_attempts`). Randomness for the jitter comes in as an argument.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ring::hmac;

use crate::ids::MsgId;

/// A message whose recipient had no live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// The recipient.
    pub user: String,
    pub msg_id: MsgId,
    /// The sender.
    pub from: String,
}

impl Undelivered {
    /// `{"event":"message.undelivered","user":…,"msg_id":…,"from":…}`: the exact bytes to
    /// sign and send.
    pub fn body(&self) -> String {
        serde_json::json!({
            "event": "message.undelivered",
            "user": self.user,
            "msg_id": self.msg_id.to_string(),
            "from": self.from,
        })
        .to_string()
    }
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Whether `signature` (`sha256=<hex>`) is `body`'s, in constant time.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hexsig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hexsig) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).is_ok()
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry waits up to this long.
    pub base_ms: u64,
    /// No wait is longer than this.
    pub max_delay_ms: u64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 500,
            max_delay_ms: 60_000,
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` after `attempt` attempts failed (1-based), or
    /// `None` when no attempt is left: uniform in `[0, min(max, base · 2^(attempt-1))]`,
    /// drawn from `random`.
    pub fn delay(&self, attempt: u32, random: u64) -> Option<u64> {
        if attempt == 0 || attempt >= self.max_attempts {
            return None;
        }
        let exp = self
            .base_ms
            .saturating_mul(1u64.checked_shl(attempt - 1).unwrap_or(u64::MAX));
        let cap = exp.min(self.max_delay_ms);
        Some(random % cap.saturating_add(1))
    }
}

/// One event waiting to be (re)sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub event: Undelivered,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What the schedule did with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Re-queued for this time (ms).
    At(u64),
    /// No attempt left: dropped.
    GaveUp,
}

/// The queue of webhook events, by due time.
#[derive(Debug, Default)]
pub struct Schedule {
    policy: RetryPolicy,
    next_id: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    jobs: hashbrown::HashMap<u64, Job>,
    /// Events dropped after `max_attempts`.
    pub gave_up: u64,
}

impl Schedule {
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Queues an event, due now.
    pub fn push(&mut self, now_ms: u64, event: Undelivered) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.jobs.insert(
            id,
            Job {
                id,
                event,
                attempts: 0,
            },
        );
        self.queue.push(Reverse((now_ms, id)));
        id
    }

    /// Jobs due at `now_ms` (removed from the queue until their outcome is reported).
    pub fn due(&mut self, now_ms: u64) -> Vec<Job> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > now_ms {
                break;
            }
            self.queue.pop();
            if let Some(job) = self.jobs.get_mut(&id) {
                job.attempts += 1;
                out.push(job.clone());
            }
        }
        out
    }

    /// When the next job is due.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// Jobs queued or in flight.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The app answered 2xx.
    pub fn succeeded(&mut self, id: u64) {
        self.jobs.remove(&id);
    }

    /// The app answered an error or nothing.
    pub fn failed(&mut self, id: u64, now_ms: u64, random: u64) -> Retry {
        let Some(job) = self.jobs.get(&id) else {
            return Retry::GaveUp;
        };
        match self.policy.delay(job.attempts, random) {
            Some(d) => {
                let at = now_ms.saturating_add(d);
                self.queue.push(Reverse((at, id)));
                Retry::At(at)
            }
            None => {
                self.jobs.remove(&id);
                self.gave_up += 1;
                Retry::GaveUp
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_signature() {
        let ev = Undelivered {
            user: "7".into(),
            msg_id: MsgId(0x1234),
            from: "42".into(),
        };
        let body = ev.body();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["event"], "message.undelivered");
        assert_eq!(v["user"], "7");
        assert_eq!(v["msg_id"], "0000000000001234");
        assert_eq!(v["from"], "42");
        // RFC 4231 test case 2
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let sig = sign(b"secret", body.as_bytes());
        assert!(verify(b"secret", body.as_bytes(), &sig));
        assert!(!verify(b"other", body.as_bytes(), &sig));
        assert!(!verify(b"secret", body.as_bytes(), "sha256=zz"));
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy {
            base_ms: 100,
            max_delay_ms: 1000,
            max_attempts: 6,
        };
        assert_eq!(p.delay(1, u64::MAX), Some(u64::MAX % 101));
        assert_eq!(p.delay(1, 100), Some(100));
        assert_eq!(p.delay(3, 400), Some(400));
        assert_eq!(p.delay(3, 401), Some(0));
        assert!(p.delay(5, 999_999).unwrap() <= 1000);
        assert_eq!(p.delay(6, 0), None);
        let big = RetryPolicy {
            max_attempts: 200,
            ..p
        };
        assert!(big.delay(150, u64::MAX).unwrap() <= 1000);
    }

    #[test]
    fn schedule_retries_then_gives_up() {
        let mut s = Schedule::new(RetryPolicy {
            base_ms: 10,
            max_delay_ms: 100,
            max_attempts: 3,
        });
        let ev = Undelivered {
            user: "u".into(),
            msg_id: MsgId(1),
            from: "f".into(),
        };
        let id = s.push(0, ev);
        let jobs = s.due(0);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].attempts, 1);
        assert!(s.due(1000).is_empty(), "in flight, not queued");
        let Retry::At(at) = s.failed(id, 0, 7) else {
            panic!()
        };
        assert_eq!(at, 7);
        assert_eq!(s.due(at)[0].attempts, 2);
        assert!(matches!(s.failed(id, at, 3), Retry::At(_)));
        let j = s.due(10_000);
        assert_eq!(j[0].attempts, 3);
        assert_eq!(s.failed(id, 10_000, 3), Retry::GaveUp);
        assert!(s.is_empty());
        assert_eq!(s.gave_up, 1);

        let id2 = s.push(
            5,
            Undelivered {
                user: "u".into(),
                msg_id: MsgId(2),
                from: "f".into(),
            },
        );
        assert_eq!(s.next_due(), Some(5));
        s.due(5);
        s.succeeded(id2);
        assert!(s.is_empty());
    }
}
