//! When the last ticks ran, so a session task can say how long a presence frame waited
//! between the tick that made its oldest entries and its write (`presence_frame_delay_seconds`):
//! the node's own part of a change's way to a watcher, without the client's.

use std::sync::atomic::{AtomicU64, Ordering};

/// Ticks remembered: at the default 200 ms tick, the last 51 s; at 4 tick phases, 12.8 s.
const SLOTS: usize = 256;
/// Low bits of a slot hold the tick's low bits (to tell an old tick from a newer one in the
/// same slot); the rest, the tick's time in ms since the epoch (2^44 ms is 557 years).
const TICK_BITS: u32 = 20;
const TICK_MASK: u64 = (1 << TICK_BITS) - 1;

/// A ring of (tick, time) packed one atomic a slot: written by the tick thread, read by any
/// session task without a lock.
pub(super) struct TickTimes {
    slots: [AtomicU64; SLOTS],
}

impl Default for TickTimes {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        }
    }
}

impl TickTimes {
    /// Tick `tick` ran at `now_ms`.
    pub(super) fn record(&self, tick: u64, now_ms: u64) {
        let v = (now_ms << TICK_BITS) | (tick & TICK_MASK);
        self.slots[tick as usize % SLOTS].store(v, Ordering::Relaxed);
    }

    /// When tick `tick` ran, if it is one of the last [`SLOTS`] recorded.
    pub(super) fn at(&self, tick: u64) -> Option<u64> {
        let v = self.slots[tick as usize % SLOTS].load(Ordering::Relaxed);
        (v != u64::MAX && v & TICK_MASK == tick & TICK_MASK).then_some(v >> TICK_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_ticks_and_forgets_older_ones() {
        let t = TickTimes::default();
        assert_eq!(t.at(0), None, "nothing recorded");
        let t0 = 1_780_000_000_000u64;
        for tick in 0..100u64 {
            t.record(tick, t0 + tick * 200);
        }
        assert_eq!(t.at(99), Some(t0 + 99 * 200));
        for tick in 100..300u64 {
            t.record(tick, t0 + tick * 200);
        }
        assert_eq!(t.at(299), Some(t0 + 299 * 200));
        assert_eq!(t.at(44), Some(t0 + 44 * 200), "the oldest kept");
        assert_eq!(t.at(43), None, "overwritten by tick 299");
        assert_eq!(t.at(300), None, "not run yet");
    }
}
