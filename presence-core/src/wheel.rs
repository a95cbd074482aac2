//! A hierarchical timing wheel: six levels of 64 slots at 1 ms resolution (a range of about
//! 795 days), O(1) to insert, amortised O(1) to fire.
//!
//! It holds every pending deadline of a shard: next idle threshold, grace expiry, heartbeat
//! expiry. It is deliberately dumb about what a deadline means: the shard keeps one `armed`
//! deadline per user and inserts an entry whenever it arms an earlier one, so an entry whose
//! time is no longer the user's armed deadline is stale and simply dropped when reached. That
//! is what lets `activity` and `heartbeat` only write a timestamp: the deadlines they push
//! later are re-armed lazily when the old entry fires.

const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 6;
/// Deadlines further than this from the wheel's time are parked at the last level and
/// re-inserted when reached.
const MAX_SPAN: u64 = 1 << (BITS * LEVELS as u32);

/// One pending deadline: 12 bytes.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
pub(crate) struct Entry {
    pub id: u32,
    pub when: u64,
}

#[derive(Debug)]
struct Level {
    occupied: u64,
    slots: Vec<Vec<Entry>>,
}

impl Level {
    fn new() -> Self {
        Self {
            occupied: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
        }
    }
}

/// Timing wheel keyed by milliseconds.
#[derive(Debug)]
pub(crate) struct Wheel {
    /// Every deadline `< cur` has fired; entries hold deadlines `>= cur`.
    cur: u64,
    levels: Vec<Level>,
    /// Entries inserted with a deadline already past: they fire on the next advance.
    due: Vec<Entry>,
    len: usize,
}

fn slot_span(level: usize) -> u64 {
    1u64 << (BITS as usize * level)
}

impl Wheel {
    pub fn new(start: u64) -> Self {
        Self {
            cur: start,
            levels: (0..LEVELS).map(|_| Level::new()).collect(),
            due: Vec::new(),
            len: 0,
        }
    }

    /// Number of entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes held by the wheel's slot vectors.
    pub fn heap_bytes(&self) -> usize {
        let slots: usize = self
            .levels
            .iter()
            .flat_map(|l| l.slots.iter())
            .map(|s| {
                s.capacity() * std::mem::size_of::<Entry>() + std::mem::size_of::<Vec<Entry>>()
            })
            .sum();
        slots + self.due.capacity() * std::mem::size_of::<Entry>()
    }

    pub fn insert(&mut self, id: u32, when: u64) {
        self.len += 1;
        self.place(Entry { id, when });
    }

    fn place(&mut self, entry: Entry) {
        let when = entry.when;
        if when < self.cur {
            self.due.push(entry);
            return;
        }
        // The highest bit where `when` and `cur` differ decides the level; a deadline beyond
        // the top level's current rotation is parked in its last slot and placed again from there.
        let target = when.min(self.cur | (MAX_SPAN - 1));
        let masked = (self.cur ^ target) | (SLOTS as u64 - 1);
        let significant = 63 - masked.leading_zeros();
        let level = ((significant / BITS) as usize).min(LEVELS - 1);
        let slot = ((target >> (BITS as usize * level)) as usize) & (SLOTS - 1);
        let l = &mut self.levels[level];
        l.occupied |= 1 << slot;
        l.slots[slot].push(entry);
    }

    /// The earliest (time, level, slot) holding entries, if any.
    fn next_slot(&self) -> Option<(u64, usize, usize)> {
        let mut best: Option<(u64, usize, usize)> = None;
        for level in (0..LEVELS).rev() {
            let occupied = self.levels[level].occupied;
            if occupied == 0 {
                continue;
            }
            let span = slot_span(level);
            let cur_slot = ((self.cur / span) as usize) & (SLOTS - 1);
            // `cur` never moves past the start of an occupied slot, so a slot at or after the
            // current one is the next to fire (level 0) or to cascade (higher levels).
            let first = cur_slot;
            let candidates = occupied & (u64::MAX << first);
            if candidates == 0 {
                continue;
            }
            let slot = candidates.trailing_zeros() as usize;
            let rotation = span * SLOTS as u64;
            let base = self.cur & !(rotation - 1);
            let time = (base + slot as u64 * span).max(self.cur);
            if best.is_none_or(|(t, _, _)| time < t) {
                best = Some((time, level, slot));
            }
        }
        best
    }

    /// Moves time to `now` and appends to `fired` every entry whose deadline is `<= now`, in
    /// deadline order (entries already past when inserted come first).
    pub fn advance(&mut self, now: u64, fired: &mut Vec<Entry>) {
        self.len -= self.due.len();
        fired.append(&mut self.due);
        if now < self.cur {
            return;
        }
        while let Some((time, level, slot)) = self.next_slot() {
            if time > now {
                break;
            }
            let l = &mut self.levels[level];
            l.occupied &= !(1 << slot);
            let entries = std::mem::take(&mut l.slots[slot]);
            if level == 0 {
                self.cur = time + 1;
                for e in &entries {
                    if e.when > now {
                        // Parked beyond the span: place it again, nearer its time.
                        self.place(*e);
                    } else {
                        fired.push(*e);
                        self.len -= 1;
                    }
                }
            } else {
                // Entering this slot's span: hand its entries down to finer levels.
                self.cur = time;
                for e in &entries {
                    self.place(*e);
                }
            }
            // Give the emptied slot's buffer back to it so steady state allocates nothing.
            let l = &mut self.levels[level];
            if l.slots[slot].is_empty() {
                let mut entries = entries;
                entries.clear();
                l.slots[slot] = entries;
            }
        }
        self.cur = self.cur.max(now + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(w: &mut Wheel, now: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        w.advance(now, &mut out);
        out.iter().map(|e| (e.id, e.when)).collect()
    }

    #[test]
    fn fires_each_deadline_once_at_or_after_its_time() {
        let mut w = Wheel::new(1_000);
        let deadlines = [
            1_000u64, 1_001, 1_063, 1_064, 1_065, 5_000, 65_000, 300_000, 4_000_000, 90_000_000,
        ];
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(i as u32, d);
        }
        assert_eq!(w.len(), deadlines.len());
        let mut seen = Vec::new();
        let mut now = 1_000;
        while now <= 100_000_000 {
            for (id, when) in fire(&mut w, now) {
                assert!(when <= now, "fired early: {when} at {now}");
                assert!(now - when < 7_919, "fired late: {when} at {now}");
                seen.push(id);
            }
            now += 7_919;
        }
        seen.sort();
        assert_eq!(seen, (0..deadlines.len() as u32).collect::<Vec<_>>());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn exact_steps_fire_exactly_on_time() {
        let mut w = Wheel::new(0);
        for d in [1u64, 63, 64, 65, 4095, 4096, 4097, 262_143, 262_144] {
            w.insert(d as u32, d);
        }
        for now in 0..=262_144u64 {
            for (id, when) in fire(&mut w, now) {
                assert_eq!(when, now);
                assert_eq!(u64::from(id), when);
            }
        }
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn past_deadlines_fire_on_next_advance_and_far_ones_are_parked() {
        let mut w = Wheel::new(10_000);
        w.insert(1, 5);
        let far = 10_000 + MAX_SPAN * 3;
        w.insert(2, far);
        assert_eq!(fire(&mut w, 10_000), vec![(1, 5)]);
        assert!(fire(&mut w, 10_000 + MAX_SPAN * 2).is_empty());
        assert_eq!(fire(&mut w, far), vec![(2, far)]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn time_going_backwards_fires_nothing() {
        let mut w = Wheel::new(1_000);
        w.insert(7, 2_000);
        assert!(fire(&mut w, 500).is_empty());
        assert_eq!(fire(&mut w, 2_000), vec![(7, 2_000)]);
    }

    #[test]
    fn random_schedules_fire_every_entry_once_on_the_first_advance_past_it() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..50 {
            let start = 1_700_000_000_000 + next() % 1_000_000;
            let mut w = Wheel::new(start);
            let mut pending: Vec<(u32, u64)> = Vec::new();
            let mut now = start;
            let mut id = 0u32;
            for _ in 0..400 {
                // Insert a few deadlines at mixed distances, some already past.
                for _ in 0..(next() % 4) {
                    let span = [10, 1_000, 70_000, 5_000_000, 900_000_000][(next() % 5) as usize];
                    let when = (now + next() % span).saturating_sub(next() % 3 * 5);
                    w.insert(id, when);
                    pending.push((id, when));
                    id += 1;
                }
                let step = [1, 7, 64, 999, 65_536, 3_000_000][(next() % 6) as usize];
                now += next() % step;
                let mut fired = Vec::new();
                w.advance(now, &mut fired);
                let mut got: Vec<(u32, u64)> = fired.iter().map(|e| (e.id, e.when)).collect();
                got.sort();
                let mut want: Vec<(u32, u64)> =
                    pending.iter().copied().filter(|&(_, t)| t <= now).collect();
                want.sort();
                assert_eq!(got, want, "round {round} at {now}");
                pending.retain(|&(_, t)| t > now);
                assert_eq!(w.len(), pending.len());
            }
        }
    }
}
