//! [`ChatStore`] on redb: one copy-on-write B-tree file, `chat.redb`, in the store folder.
//!
//! A redb write transaction commits with `Durability::Immediate` (the default): when `commit`
//! returns, the new root is fsync'd, and a crash at any point leaves the last committed state.
//! redb has one writer at a time, which is what group commit wants anyway.
//!
//! The layout's version ([`codec::FORMAT`]) is kept in the table `meta`. A store without it is
//! format 1 (or new): at open, one transaction copies its inbox, history, dedupe and acks tables
//! into format 2's (`inbox_v2`, …), drops them and writes the version (all or nothing; it holds
//! the copied pages until it commits, which is fine at the sizes redb is chosen for here).

use std::path::Path;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::{ChatStore, READ_RESERVE, StoreError, TrimCounts, WriteBatch, backend, prefix_end};
use crate::codec::{self, Corrupt, Keyed};
use crate::ids::MsgId;
use crate::types::{Conversation, InboxEntry, StoredMessage};

type Bytes = &'static [u8];
const MESSAGES: TableDefinition<u64, Bytes> = TableDefinition::new("messages");
const INBOX: TableDefinition<Bytes, Bytes> = TableDefinition::new("inbox_v2");
const HISTORY: TableDefinition<Bytes, ()> = TableDefinition::new("history_v2");
const DEDUPE: TableDefinition<Bytes, Bytes> = TableDefinition::new("dedupe_v2");
const ACKS: TableDefinition<Bytes, u64> = TableDefinition::new("acks_v2");
/// `"format"` → the layout version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Format 1's tables (the same keys without the hash in front).
const INBOX_V1: TableDefinition<Bytes, Bytes> = TableDefinition::new("inbox");
const HISTORY_V1: TableDefinition<Bytes, ()> = TableDefinition::new("history");
const DEDUPE_V1: TableDefinition<Bytes, Bytes> = TableDefinition::new("dedupe");
const ACKS_V1: TableDefinition<Bytes, u64> = TableDefinition::new("acks");

/// The redb chat store.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens or creates `dir/chat.redb` (creating `dir`).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("chat.redb")).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(MESSAGES).map_err(backend)?;
        txn.open_table(INBOX).map_err(backend)?;
        txn.open_table(HISTORY).map_err(backend)?;
        txn.open_table(DEDUPE).map_err(backend)?;
        txn.open_table(ACKS).map_err(backend)?;
        let found = txn
            .open_table(META)
            .map_err(backend)?
            .get("format")
            .map_err(backend)?
            .map(|v| v.value());
        match found {
            Some(f) if f == codec::FORMAT => {}
            Some(found) => return Err(StoreError::Format { found }),
            None => {
                copy_v1(&txn, INBOX_V1, INBOX, Keyed::Inbox)?;
                copy_v1(&txn, HISTORY_V1, HISTORY, Keyed::History)?;
                copy_v1(&txn, DEDUPE_V1, DEDUPE, Keyed::Dedupe)?;
                copy_v1(&txn, ACKS_V1, ACKS, Keyed::Acks)?;
                (txn.open_table(META).map_err(backend)?)
                    .insert("format", codec::FORMAT)
                    .map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        Ok(Self { db })
    }
}

/// Copies format 1's `old` table, if the store has it, into `new` with format 2's keys, and
/// drops it.
fn copy_v1<V: redb::Value + 'static>(
    txn: &WriteTransaction,
    old: TableDefinition<Bytes, V>,
    new: TableDefinition<Bytes, V>,
    table: Keyed,
) -> Result<(), StoreError> {
    let exists = (txn.list_tables().map_err(backend)?).any(|t| t.name() == old.name());
    if !exists {
        return Ok(());
    }
    {
        let from = txn.open_table(old).map_err(backend)?;
        let mut to = txn.open_table(new).map_err(backend)?;
        for item in from.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let key = codec::v1_key_to_v2(table, k.value())?;
            to.insert(key.as_slice(), v.value()).map_err(backend)?;
        }
    }
    txn.delete_table(old).map_err(backend)?;
    Ok(())
}

fn seq_range(user: &str, after: u64) -> (Vec<u8>, Vec<u8>) {
    (
        codec::inbox_key(user, after.saturating_add(1)),
        codec::inbox_key(user, u64::MAX),
    )
}

impl ChatStore for RedbStore {
    fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(INBOX).map_err(backend)?;
        let (lo, hi) = seq_range(user, 0);
        let last = t
            .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
            .map_err(backend)?
            .next_back();
        match last {
            None => Ok(0),
            Some(item) => {
                let (k, _) = item.map_err(backend)?;
                Ok(codec::split_inbox_key(k.value())?.1)
            }
        }
    }

    fn read_inbox(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        if after == u64::MAX || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(INBOX).map_err(backend)?;
        let (lo, hi) = seq_range(user, after);
        let mut out = Vec::with_capacity(limit.min(READ_RESERVE));
        for item in t
            .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
            .map_err(backend)?
            .take(limit)
        {
            let (k, v) = item.map_err(backend)?;
            let (_, seq) = codec::split_inbox_key(k.value())?;
            out.push(codec::decode_entry(seq, v.value())?);
        }
        Ok(out)
    }

    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(MESSAGES).map_err(backend)?;
        match t.get(id.0).map_err(backend)? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode_message(id, v.value())?)),
        }
    }

    fn dedupe_len_hint(&self) -> Result<usize, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(DEDUPE).map_err(backend)?;
        let n = t.len().map_err(backend)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn dedupe_keys(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(DEDUPE).map_err(backend)?;
        for item in t.iter().map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            f(k.value());
        }
        Ok(())
    }

    fn dedupe(&self, sender: &str, client_id: &str) -> Result<Option<(MsgId, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(DEDUPE).map_err(backend)?;
        let k = codec::dedupe_key(sender, client_id);
        match t.get(k.as_slice()).map_err(backend)? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode_dedupe(v.value())?)),
        }
    }

    fn history(
        &self,
        conversation: &Conversation,
        before: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let index = txn.open_table(HISTORY).map_err(backend)?;
        let messages = txn.open_table(MESSAGES).map_err(backend)?;
        let lo = codec::history_key(conversation, MsgId(0));
        let hi = codec::history_key(conversation, before.unwrap_or(MsgId(u64::MAX)));
        let range = if before.is_some() {
            index.range::<&[u8]>(lo.as_slice()..hi.as_slice())
        } else {
            index.range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        }
        .map_err(backend)?;
        let mut out = Vec::with_capacity(limit.min(READ_RESERVE));
        for item in range.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(backend)?;
            let key = k.value();
            let id = key
                .len()
                .checked_sub(8)
                .and_then(|p| codec::read_u64(&key[p..]))
                .ok_or(Corrupt("history key"))?;
            if let Some(v) = messages.get(id).map_err(backend)? {
                out.push(codec::decode_message(MsgId(id), v.value())?);
            }
        }
        Ok(out)
    }

    fn device_ack(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(ACKS).map_err(backend)?;
        let k = codec::ack_key(user, device);
        Ok(t.get(k.as_slice())
            .map_err(backend)?
            .map_or(0, |v| v.value()))
    }

    fn last_msg_id(&self) -> Result<Option<MsgId>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(MESSAGES).map_err(backend)?;
        Ok(t.last().map_err(backend)?.map(|(k, _)| MsgId(k.value())))
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = batch.sorted_rows();
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(backend)?;
            for (id, v) in rows.messages() {
                messages.insert(id.0, v).map_err(backend)?;
            }
            let mut history = txn.open_table(HISTORY).map_err(backend)?;
            for k in rows.history() {
                history.insert(k, ()).map_err(backend)?;
            }
            let mut inbox = txn.open_table(INBOX).map_err(backend)?;
            for (k, v) in rows.inbox() {
                inbox.insert(k, v).map_err(backend)?;
            }
            let mut dedupe = txn.open_table(DEDUPE).map_err(backend)?;
            for (k, v) in rows.dedupe() {
                dedupe.insert(k, v.as_slice()).map_err(backend)?;
            }
            let mut acks = txn.open_table(ACKS).map_err(backend)?;
            for (k, seq) in rows.acks() {
                acks.insert(k, seq).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }

    fn trim(&self, older_than_ms: u64) -> Result<TrimCounts, StoreError> {
        let mut counts = TrimCounts::default();
        let cut = MsgId::first_at(older_than_ms);
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(backend)?;
            let mut history = txn.open_table(HISTORY).map_err(backend)?;
            let mut dedupe = txn.open_table(DEDUPE).map_err(backend)?;
            let mut old = Vec::new();
            for item in messages.range(..cut.0).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                old.push(codec::decode_message(MsgId(k.value()), v.value())?);
            }
            for m in &old {
                messages.remove(m.msg_id.0).map_err(backend)?;
                let hk = codec::history_key(&m.conversation(), m.msg_id);
                history.remove(hk.as_slice()).map_err(backend)?;
                let dk = codec::dedupe_key(&m.from, &m.client_id);
                if dedupe.remove(dk.as_slice()).map_err(backend)?.is_some() {
                    counts.dedupe += 1;
                }
                counts.messages += 1;
            }

            // Skip-scan the inboxes: per user, drop old entries from the start, keep the last.
            let mut inbox = txn.open_table(INBOX).map_err(backend)?;
            let mut doomed: Vec<Vec<u8>> = Vec::new();
            let mut from: Vec<u8> = Vec::new();
            loop {
                let first = inbox
                    .range::<&[u8]>(from.as_slice()..)
                    .map_err(backend)?
                    .next();
                let Some(first) = first else { break };
                let (k, _) = first.map_err(backend)?;
                let (plen, _) = codec::split_inbox_key(k.value())?;
                let prefix = k.value()[..plen].to_vec();
                drop(k);
                let end = prefix_end(&prefix);
                let mut user_old: Vec<Vec<u8>> = Vec::new();
                let mut reached_new = false;
                {
                    let range = match &end {
                        Some(e) => inbox.range::<&[u8]>(prefix.as_slice()..e.as_slice()),
                        None => inbox.range::<&[u8]>(prefix.as_slice()..),
                    }
                    .map_err(backend)?;
                    for item in range {
                        let (k, v) = item.map_err(backend)?;
                        if codec::entry_ts(v.value())? >= older_than_ms {
                            reached_new = true;
                            break;
                        }
                        user_old.push(k.value().to_vec());
                    }
                }
                if !reached_new {
                    user_old.pop(); // the newest entry stays: it holds the head
                }
                doomed.extend(user_old);
                match end {
                    Some(e) => from = e,
                    None => break,
                }
            }
            for k in &doomed {
                inbox.remove(k.as_slice()).map_err(backend)?;
            }
            counts.inbox = doomed.len() as u64;
        }
        txn.commit().map_err(backend)?;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{assert_holds_sample, sample_rows_v1};

    #[test]
    fn a_format_1_store_is_upgraded_at_open_with_every_row() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The layout the store wrote before format 2: no `meta`, format 1's tables.
            let db = Database::create(dir.path().join("chat.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            for (table, k, v) in sample_rows_v1() {
                match table {
                    "messages" => {
                        let id = codec::read_u64(&k).unwrap();
                        let mut t = txn.open_table(MESSAGES).unwrap();
                        t.insert(id, v.as_slice()).unwrap();
                    }
                    "history" => {
                        let mut t = txn.open_table(HISTORY_V1).unwrap();
                        t.insert(k.as_slice(), ()).unwrap();
                    }
                    "inbox" => {
                        let mut t = txn.open_table(INBOX_V1).unwrap();
                        t.insert(k.as_slice(), v.as_slice()).unwrap();
                    }
                    "dedupe" => {
                        let mut t = txn.open_table(DEDUPE_V1).unwrap();
                        t.insert(k.as_slice(), v.as_slice()).unwrap();
                    }
                    _ => {
                        let mut t = txn.open_table(ACKS_V1).unwrap();
                        t.insert(k.as_slice(), codec::read_u64(&v).unwrap())
                            .unwrap();
                    }
                }
            }
            txn.commit().unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_holds_sample(&store);
        let txn = store.db.begin_read().unwrap();
        let names: Vec<String> = (txn.list_tables().unwrap())
            .map(|t| t.name().to_owned())
            .collect();
        for old in ["inbox", "history", "dedupe", "acks"] {
            assert!(!names.iter().any(|n| n == old), "{old} was left: {names:?}");
        }
        drop((txn, store));
        assert_holds_sample(&RedbStore::open(dir.path()).unwrap());
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        (txn.open_table(META).unwrap()).insert("format", 3).unwrap();
        txn.commit().unwrap();
        drop(store);
        match RedbStore::open(dir.path()) {
            Err(StoreError::Format { found: 3 }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a format 3 store opened"),
        }
    }
}
