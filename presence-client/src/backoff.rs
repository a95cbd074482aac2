//! Reconnect delays: exponential backoff with full jitter, as a pure function of the attempt
//! and a uniform sample ([`Backoff::delay`]), and a seeded generator of the schedule
//! ([`Jitter`]), so the schedule is tested without clocks.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The backoff policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry; each retry doubles it (default 500 ms).
    pub base: Duration,
    /// The largest ceiling (default 20 s).
    pub cap: Duration,
    /// A connection that lasted this long starts the schedule over (default 30 s): a node that
    /// accepts and then drops at once is not hammered, a node that served for a while is
    /// retried quickly.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling of retry `attempt` (0 for the first): `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Full jitter: the delay before retry `attempt` for a sample `unit` uniform in [0, 1):
    /// `unit · ceiling(attempt)` (a `unit` out of range is clamped).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        self.ceiling(attempt).mul_f64(unit)
    }

    /// The first `n` delays of the schedule seeded with `seed`: what a [`Jitter`] with that
    /// seed hands out while every attempt fails.
    pub fn schedule(&self, seed: u64, n: usize) -> Vec<Duration> {
        let mut j = Jitter::new(*self, seed);
        (0..n).map(|_| j.next_delay()).collect()
    }
}

/// The backoff state of one session: the attempt count and a seeded generator.
#[derive(Debug, Clone)]
pub struct Jitter {
    policy: Backoff,
    rng: SmallRng,
    attempt: u32,
}

impl Jitter {
    pub fn new(policy: Backoff, seed: u64) -> Jitter {
        Jitter {
            policy,
            rng: SmallRng::seed_from_u64(seed),
            attempt: 0,
        }
    }

    /// The delay before the next retry; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.policy.delay(self.attempt, self.rng.random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// A connection ended after `lasted`: long enough, and the schedule starts over.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if lasted >= self.policy.reset_after {
            self.attempt = 0;
        }
    }

    /// Retries counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// A seed from the process's hash keys (random per process) and the clock, for sessions
/// not given one.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let b = Backoff::default();
        let got: Vec<u128> = (0..9).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]
        );
        // No overflow however many attempts.
        assert_eq!(b.ceiling(u32::MAX), b.cap);
        let huge = Backoff {
            base: Duration::MAX,
            ..b
        };
        assert_eq!(huge.ceiling(3), b.cap);
    }

    #[test]
    fn full_jitter_scales_the_ceiling_by_the_sample() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(0, 0.5), 250 * MS);
        assert_eq!(b.delay(3, 0.25), 1000 * MS);
        assert_eq!(b.delay(20, 0.5), 10_000 * MS);
        assert_eq!(b.delay(1, -3.0), Duration::ZERO);
        assert_eq!(b.delay(1, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(1, 7.0), b.ceiling(1));
    }

    #[test]
    fn a_seed_fixes_the_schedule_and_every_delay_is_under_its_ceiling() {
        let b = Backoff::default();
        let s = b.schedule(42, 40);
        assert_eq!(s, b.schedule(42, 40), "same seed, same schedule");
        assert_ne!(s, b.schedule(43, 40), "another seed, another schedule");
        for (a, d) in s.iter().enumerate() {
            assert!(*d < b.ceiling(a as u32), "attempt {a}: {d:?}");
        }
        // Jittered, not constant: the capped tail is spread over [0, cap).
        let tail: Vec<_> = s[10..].to_vec();
        assert!(tail.iter().any(|d| *d < b.cap / 2) && tail.iter().any(|d| *d > b.cap / 2));
    }

    #[test]
    fn a_long_connection_resets_the_schedule_and_a_short_one_does_not() {
        let b = Backoff::default();
        let mut j = Jitter::new(b, 7);
        let first: Vec<_> = (0..5).map(|_| j.next_delay()).collect();
        assert_eq!(first, b.schedule(7, 5));
        j.connection_ended(b.reset_after - MS);
        assert_eq!(j.attempt(), 5);
        j.connection_ended(b.reset_after);
        assert_eq!(j.attempt(), 0);
        assert!(j.next_delay() < b.ceiling(0));
    }
}
