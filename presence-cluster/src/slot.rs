//! The slot of a user: the fixed, documented hash every node, client and load balancer can
//! compute the same way.

/// How many slots a cluster has. Fixed: changing it would move almost every user.
pub const SLOTS: u16 = 1024;

/// One of the [`SLOTS`] parts of the user id space; nodes own slots, not users.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Slot(u16);

impl Slot {
    /// `None` past the last slot.
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOTS).then_some(Slot(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// Every slot, in order.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOTS).map(Slot)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection): the hash Redis Cluster
/// uses for its key slots, so a library for it exists in every language.
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The slot of a user id (its bytes as the app gives them, 1–128 bytes):
/// `CRC-16/XMODEM(id) mod 1024`.
pub fn slot_of(user: &[u8]) -> Slot {
    Slot(CRC16.checksum(user) % SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_hash() {
        // The CRC-16/XMODEM check value, and Redis Cluster's own example.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"123456789"), Slot(0x31C3 % 1024));
        assert_eq!(slot_of(b"alice").get(), CRC16.checksum(b"alice") % 1024);
        assert_eq!(slot_of(b"7"), slot_of(b"7"));
    }

    #[test]
    fn ids_spread_over_every_slot() {
        let mut per = vec![0u32; usize::from(SLOTS)];
        for i in 0..1_024_000u32 {
            per[slot_of(i.to_string().as_bytes()).index()] += 1;
        }
        let (min, max) = (per.iter().min().copied(), per.iter().max().copied());
        // 1,000 a slot on average.
        assert!(min.is_some_and(|m| m >= 800), "{min:?}");
        assert!(max.is_some_and(|m| m <= 1200), "{max:?}");
    }

    #[test]
    fn slot_bounds() {
        assert!(Slot::new(SLOTS).is_none());
        assert_eq!(Slot::new(SLOTS - 1).map(Slot::get), Some(1023));
        assert_eq!(Slot::all().count(), 1024);
    }
}
