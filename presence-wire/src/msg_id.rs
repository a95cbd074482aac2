//! Message ids: 64-bit, unique across nodes, and sortable by time (minted by the chat relay's
//! `IdGen`; clients only compare, show and send them back).
//!
//! Layout, most significant bit first: 42 bits of milliseconds since [`EPOCH_MS`]
//! (2024-01-01T00:00:00Z; enough for 139 years), 10 bits of node id, 12 bits of a per-millisecond
//! sequence. On the wire an id is 16 lowercase hex digits, fixed width, so comparing two id
//! strings compares their times.

use std::fmt;
use std::str::FromStr;

/// The custom epoch: 2024-01-01T00:00:00Z in milliseconds since the Unix epoch.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
/// Bits of node id in a [`MsgId`].
pub const NODE_BITS: u32 = 10;
/// Bits of per-millisecond sequence in a [`MsgId`].
pub const SEQ_BITS: u32 = 12;
/// The largest node id (1023).
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
/// The largest per-millisecond sequence.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Where the milliseconds start in an id.
pub const TIME_SHIFT: u32 = NODE_BITS + SEQ_BITS;
/// The largest millisecond count an id holds.
pub const MAX_TIME: u64 = (1 << (64 - TIME_SHIFT)) - 1;

/// A message id. `Ord` is time order (then node, then sequence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(pub u64);

impl MsgId {
    /// The smallest id that can be minted at `unix_ms` (any node): every id minted earlier
    /// is below it. Used to cut the message log by age.
    pub fn first_at(unix_ms: u64) -> MsgId {
        MsgId(unix_ms.saturating_sub(EPOCH_MS).min(MAX_TIME) << TIME_SHIFT)
    }

    /// Milliseconds since the Unix epoch encoded in the id (the minting time, or a few ms
    /// later when the generator had to borrow from the next millisecond).
    pub fn unix_ms(self) -> u64 {
        (self.0 >> TIME_SHIFT) + EPOCH_MS
    }

    /// The node that minted the id.
    pub fn node(self) -> u16 {
        ((self.0 >> SEQ_BITS) & u64::from(MAX_NODE)) as u16
    }

    /// The per-millisecond sequence.
    pub fn seq(self) -> u16 {
        (self.0 & MAX_SEQ) as u16
    }

    /// Big-endian bytes: byte order = id order, for store keys.
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a string is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message id is exactly 16 lowercase hex digits, got {0:?}")]
pub struct ParseMsgIdError(pub String);

impl FromStr for MsgId {
    type Err = ParseMsgIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            let shown: String = s.chars().take(40).collect();
            return Err(ParseMsgIdError(shown));
        }
        u64::from_str_radix(s, 16)
            .map(MsgId)
            .map_err(|_| ParseMsgIdError(s.to_owned()))
    }
}

impl serde::Serialize for MsgId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MsgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_bad_ones_are_refused() {
        for id in [MsgId(0), MsgId(0x00a1_b2c3_d4e5_f607), MsgId(u64::MAX)] {
            let s = id.to_string();
            assert_eq!(s.len(), 16);
            assert_eq!(s.parse::<MsgId>(), Ok(id));
            let json = serde_json::to_string(&id).expect("json");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<MsgId>(&json).ok(), Some(id));
        }
        for bad in [
            "",
            "123",
            "000000000000000G",
            "000000000000000A",
            "00000000000000001",
        ] {
            assert!(bad.parse::<MsgId>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<MsgId>("17").is_err());
    }
}
