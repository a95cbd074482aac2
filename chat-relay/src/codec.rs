//! The byte layout shared by the stores: keys that sort the way they are scanned, and compact
//! values. Every decoder checks lengths and returns [`Corrupt`] instead of panicking.
//!
//! Keys (`lp(s)` is a 2-byte big-endian length then the bytes, so one id is never a prefix of
//! another's key range; `h(x)` is the 4-byte [`hash4`] of the bytes `x`):
//!
//! | table | key | value |
//! |---|---|---|
//! | messages | msg_id (8 BE) | [`put_message`] |
//! | inbox | h(lp(user)) ‖ lp(user) ‖ seq (8 BE) | [`put_entry`] (without the seq) |
//! | history | h(conversation) ‖ conversation ‖ msg_id (8 BE) | empty |
//! | dedupe | h(lp(sender)) ‖ lp(sender) ‖ client id | msg_id (8 BE) ‖ ts (8 BE) |
//! | acks | h(lp(user)) ‖ lp(user) ‖ device | seq (8 BE) |
//!
//! A conversation is `d ‖ lp(a) ‖ lp(b)` (1:1, `a < b`) or `g ‖ lp(gid)`.
//!
//! Why the hash in front: fjall keeps a key's first four bytes beside its pointer and compares
//! them first; a memtable insert compares its key with one skiplist node a step. Without the
//! hash those four bytes are the id's length and first two characters, the same for most
//! users, so nearly every step read the whole key, from the heap for a key over 20 bytes: a
//! cache miss a step. `cargo bench -p chat-relay --bench memtable_keys`: 0.75–0.79× the insert
//! time. This is format [`FORMAT`]; format 1 had the same keys without the hash
//! ([`v1_key_to_v2`] converts them, the stores migrate at open).

use crate::ids::MsgId;
use crate::types::{Conversation, ConversationRef, EntryKind, InboxEntry, StoredMessage, Target};

/// Stored bytes that do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {0} record")]
pub struct Corrupt(pub &'static str);

/// The stores' layout version, kept in each store beside the data (format 1 had no hash in
/// front of its keys).
pub const FORMAT: u64 = 2;

fn lp(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s[..usize::from(len)]);
}

/// FNV-1a, 32 bits, big-endian: the first four bytes of every key of a user or a
/// conversation. Part of the stored format: never change it.
pub fn hash4(bytes: &[u8]) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes()
}

/// Appends what `owner` writes behind the [`hash4`] of those bytes.
fn hashed(out: &mut Vec<u8>, owner: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    owner(out);
    let h = hash4(&out[at + 4..]);
    out[at..at + 4].copy_from_slice(&h);
}

pub fn inbox_key(user: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + user.len() + 8);
    put_inbox_key(&mut k, user, seq);
    k
}

/// [`inbox_key`] appended to `out` (the `put_` functions encode into a buffer the caller
/// reuses: a group commit encodes all its rows into one).
pub fn put_inbox_key(out: &mut Vec<u8>, user: &str, seq: u64) {
    hashed(out, |o| lp(o, user.as_bytes()));
    out.extend_from_slice(&seq.to_be_bytes());
}

/// Splits an inbox key into (user prefix length, seq).
pub fn split_inbox_key(key: &[u8]) -> Result<(usize, u64), Corrupt> {
    let plen = key.len().checked_sub(8).ok_or(Corrupt("inbox key"))?;
    let seq = read_u64(&key[plen..]).ok_or(Corrupt("inbox key"))?;
    Ok((plen, seq))
}

pub fn history_key(c: &Conversation, id: MsgId) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    put_history_key(&mut k, c.as_ref(), id);
    k
}

pub(crate) fn put_history_key(out: &mut Vec<u8>, c: ConversationRef<'_>, id: MsgId) {
    hashed(out, |o| match c {
        ConversationRef::Direct(a, b) => {
            o.push(b'd');
            lp(o, a.as_bytes());
            lp(o, b.as_bytes());
        }
        ConversationRef::Group(g) => {
            o.push(b'g');
            lp(o, g.as_bytes());
        }
    });
    out.extend_from_slice(&id.to_be_bytes());
}

pub fn dedupe_key(sender: &str, client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + sender.len() + client_id.len());
    put_dedupe_key(&mut k, sender, client_id);
    k
}

pub fn put_dedupe_key(out: &mut Vec<u8>, sender: &str, client_id: &str) {
    hashed(out, |o| lp(o, sender.as_bytes()));
    out.extend_from_slice(client_id.as_bytes());
}

pub fn ack_key(user: &str, device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + user.len() + device.len());
    put_ack_key(&mut k, user, device);
    k
}

pub fn put_ack_key(out: &mut Vec<u8>, user: &str, device: &str) {
    hashed(out, |o| lp(o, user.as_bytes()));
    out.extend_from_slice(device.as_bytes());
}

/// The tables whose keys changed between formats 1 and 2 (messages did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    Inbox,
    History,
    Dedupe,
    Acks,
}

/// A format-1 key of `table` as format 2 lays it out: the same bytes behind the hash of
/// their owner part (`lp(user)`, `lp(sender)`, or the conversation).
pub fn v1_key_to_v2(table: Keyed, old: &[u8]) -> Result<Vec<u8>, Corrupt> {
    let owner = match table {
        Keyed::Inbox | Keyed::Dedupe | Keyed::Acks => {
            let len = old.get(..2).ok_or(Corrupt("format 1 key"))?;
            let end = 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            let owner = old.get(..end).ok_or(Corrupt("format 1 key"))?;
            // An inbox key ends in its seq.
            if table == Keyed::Inbox && old.len() != end + 8 {
                return Err(Corrupt("format 1 inbox key"));
            }
            owner
        }
        Keyed::History => {
            let end = old
                .len()
                .checked_sub(8)
                .filter(|&e| e > 0)
                .ok_or(Corrupt("format 1 history key"))?;
            &old[..end]
        }
    };
    let mut k = Vec::with_capacity(4 + old.len());
    k.extend_from_slice(&hash4(owner));
    k.extend_from_slice(old);
    Ok(k)
}

pub fn read_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

pub fn encode_dedupe(id: MsgId, ts: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&id.to_be_bytes());
    v[8..].copy_from_slice(&ts.to_be_bytes());
    v
}

pub fn decode_dedupe(v: &[u8]) -> Result<(MsgId, u64), Corrupt> {
    let id = read_u64(v).ok_or(Corrupt("dedupe"))?;
    let ts = v.get(8..).and_then(read_u64).ok_or(Corrupt("dedupe"))?;
    Ok((MsgId(id), ts))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

fn put_target(out: &mut Vec<u8>, t: &Target) {
    match t {
        Target::User(u) => {
            out.push(b'u');
            put_str(out, u);
        }
        Target::Group(g) => {
            out.push(b'g');
            put_str(out, g);
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.b.len() < n {
            return Err(Corrupt(self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        read_u64(self.take(8)?).ok_or(Corrupt(self.what))
    }
    fn str(&mut self) -> Result<String, Corrupt> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| Corrupt(self.what))
    }
    fn target(&mut self) -> Result<Target, Corrupt> {
        match self.u8()? {
            b'u' => Ok(Target::User(self.str()?)),
            b'g' => Ok(Target::Group(self.str()?)),
            _ => Err(Corrupt(self.what)),
        }
    }
    fn done(&self) -> Result<(), Corrupt> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Corrupt(self.what))
        }
    }
}

/// One inbox value alone ([`put_entry`] is what a commit uses).
#[cfg(test)]
pub fn encode_entry(e: &InboxEntry) -> Vec<u8> {
    let mut v = Vec::new();
    put_entry(&mut v, e);
    v
}

/// Inbox value: kind ‖ msg_id ‖ ts ‖ from ‖ target ‖ has_text ‖ text.
pub fn put_entry(out: &mut Vec<u8>, e: &InboxEntry) {
    out.push(e.kind.code());
    out.extend_from_slice(&e.msg_id.to_be_bytes());
    out.extend_from_slice(&e.ts.to_be_bytes());
    put_str(out, &e.from);
    put_target(out, &e.target);
    match &e.text {
        Some(t) => {
            out.push(1);
            put_str(out, t);
        }
        None => out.push(0),
    }
}

pub fn decode_entry(seq: u64, v: &[u8]) -> Result<InboxEntry, Corrupt> {
    let mut r = Reader {
        b: v,
        what: "inbox",
    };
    let kind = EntryKind::from_code(r.u8()?).ok_or(Corrupt("inbox"))?;
    let msg_id = MsgId(r.u64()?);
    let ts = r.u64()?;
    let from = r.str()?;
    let target = r.target()?;
    let text = match r.u8()? {
        0 => None,
        1 => Some(r.str()?),
        _ => return Err(Corrupt("inbox")),
    };
    r.done()?;
    Ok(InboxEntry {
        seq,
        kind,
        msg_id,
        from,
        target,
        text,
        ts,
    })
}

/// The ts of an encoded inbox entry, without decoding the rest (for retention scans).
pub fn entry_ts(v: &[u8]) -> Result<u64, Corrupt> {
    v.get(9..).and_then(read_u64).ok_or(Corrupt("inbox"))
}

/// One message value alone ([`put_message`] is what a commit uses).
#[cfg(test)]
pub fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut v = Vec::new();
    put_message(&mut v, m);
    v
}

/// Message value: ts ‖ edited (0 | 1 ‖ ts) ‖ deleted ‖ from ‖ target ‖ text ‖ client id.
pub fn put_message(out: &mut Vec<u8>, m: &StoredMessage) {
    out.extend_from_slice(&m.ts.to_be_bytes());
    match m.edited_ts {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_be_bytes());
        }
        None => out.push(0),
    }
    out.push(u8::from(m.deleted));
    put_str(out, &m.from);
    put_target(out, &m.target);
    put_str(out, &m.text);
    put_str(out, &m.client_id);
}

pub fn decode_message(id: MsgId, v: &[u8]) -> Result<StoredMessage, Corrupt> {
    let mut r = Reader {
        b: v,
        what: "message",
    };
    let ts = r.u64()?;
    let edited_ts = match r.u8()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return Err(Corrupt("message")),
    };
    let deleted = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(Corrupt("message")),
    };
    let from = r.str()?;
    let target = r.target()?;
    let text = r.str()?;
    let client_id = r.str()?;
    r.done()?;
    Ok(StoredMessage {
        msg_id: id,
        from,
        target,
        text,
        ts,
        edited_ts,
        deleted,
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let e = InboxEntry {
            seq: 7,
            kind: EntryKind::Edit,
            msg_id: MsgId(99),
            from: "alice".into(),
            target: Target::Group("g1".into()),
            text: Some("héllo".into()),
            ts: 12345,
        };
        let v = encode_entry(&e);
        assert_eq!(decode_entry(7, &v).unwrap(), e);
        assert_eq!(entry_ts(&v).unwrap(), 12345);
        for n in 0..v.len() {
            assert!(decode_entry(7, &v[..n]).is_err());
        }
        let m = StoredMessage {
            msg_id: MsgId(5),
            from: "a".into(),
            target: Target::User("b".into()),
            text: "t".into(),
            ts: 1,
            edited_ts: Some(2),
            deleted: false,
            client_id: "c1".into(),
        };
        let v = encode_message(&m);
        assert_eq!(decode_message(MsgId(5), &v).unwrap(), m);
        for n in 0..v.len() {
            assert!(decode_message(MsgId(5), &v[..n]).is_err());
        }
    }

    #[test]
    fn user_prefixes_do_not_nest() {
        // "a" with any seq must not fall inside the range of "ab" or the other way round.
        let a = inbox_key("a", u64::MAX);
        let ab = inbox_key("ab", 0);
        assert!(!ab.starts_with(&a[..a.len() - 8]));
        let in_range = |k: &[u8], user: &str| {
            inbox_key(user, 0).as_slice() <= k && k <= inbox_key(user, u64::MAX).as_slice()
        };
        assert!(!in_range(&a, "ab") && !in_range(&ab, "a"));
        assert!(in_range(&a, "a") && in_range(&ab, "ab"));
    }

    #[test]
    fn format_2_keys_are_format_1_keys_behind_their_owners_hash() {
        let direct = Conversation::of("bob", &Target::User("amy".into()));
        let group = Conversation::Group("g1".into());
        for (table, v2) in [
            (Keyed::Inbox, inbox_key("amy", 7)),
            (Keyed::History, history_key(&direct, MsgId(9))),
            (Keyed::History, history_key(&group, MsgId(9))),
            (Keyed::Dedupe, dedupe_key("amy", "chat:1:2")),
            (Keyed::Acks, ack_key("amy", "phone")),
        ] {
            assert_eq!(v1_key_to_v2(table, &v2[4..]).unwrap(), v2, "{table:?}");
        }
        // One user's keys share their first four bytes; two users' (almost always) differ.
        assert_eq!(inbox_key("amy", 1)[..4], ack_key("amy", "d")[..4]);
        assert_ne!(inbox_key("amy", 1)[..4], inbox_key("amz", 1)[..4]);
    }

    #[test]
    fn format_1_conversion_refuses_what_is_not_a_key() {
        let inbox = inbox_key("amy", 7);
        for n in 0..inbox.len() - 4 {
            assert!(v1_key_to_v2(Keyed::Inbox, &inbox[4..4 + n]).is_err(), "{n}");
        }
        assert!(v1_key_to_v2(Keyed::Dedupe, &[0, 9, b'a']).is_err());
        assert!(v1_key_to_v2(Keyed::History, &[0; 8]).is_err());
        // Arbitrary bytes: an answer, never a panic.
        let mut x = 1u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            for t in [Keyed::Inbox, Keyed::History, Keyed::Dedupe, Keyed::Acks] {
                if let Ok(k) = v1_key_to_v2(t, &bytes) {
                    assert_eq!(k[4..], bytes[..]);
                }
            }
        }
    }
}
