//! [`ChatStore`] on fjall: an LSM tree per table (fjall keyspaces) sharing one journal, in
//! the folder `dir/fjall`.
//!
//! fjall's default write only reaches the OS page cache. Every commit here is one atomic
//! fjall batch written with `PersistMode::SyncAll`: the journal is fsync'd before `commit`
//! returns, and the batch becomes visible to readers only after that.
//!
//! The layout's version ([`codec::FORMAT`]) is kept in the keyspace `meta`. A store without it
//! is format 1 (or new): at open, its inbox, history, dedupe and acks keyspaces are copied into
//! format 2's (`inbox_v2`, …) batch by batch, the version is written, and the old keyspaces
//! are dropped. A crash in between copies again at the next open (the copy is idempotent).

use std::path::Path;

use fjall::config::CompressionPolicy;
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{ChatStore, READ_RESERVE, StoreError, TrimCounts, WriteBatch, backend, prefix_end};
use crate::codec::{self, Corrupt, Keyed};
use crate::ids::MsgId;
use crate::types::{Conversation, InboxEntry, StoredMessage};

/// The fjall chat store.
pub struct FjallStore {
    db: Database,
    messages: Keyspace,
    inbox: Keyspace,
    history: Keyspace,
    dedupe: Keyspace,
    acks: Keyspace,
    meta: Keyspace,
    persist: PersistMode,
}

/// The tables whose keys changed in format 2: format 1's keyspace, then format 2's.
const KEYED: [(Keyed, &str, &str); 4] = [
    (Keyed::Inbox, "inbox", "inbox_v2"),
    (Keyed::History, "history", "history_v2"),
    (Keyed::Dedupe, "dedupe", "dedupe_v2"),
    (Keyed::Acks, "acks", "acks_v2"),
];

/// The key of the layout version in `meta`.
const FORMAT_KEY: &[u8] = b"format";

/// Rows a format upgrade copies a batch (each batch fsync'd).
const UPGRADE_BATCH: usize = 10_000;

impl FjallStore {
    /// Opens or creates the store in `dir/fjall` (creating `dir`), fsyncing every commit
    /// with `PersistMode::SyncAll`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, PersistMode::SyncAll)
    }

    /// Opens with another persist mode per commit (`SyncData` is `fdatasync`; `Buffer` is
    /// *not* durable and only for measurements).
    pub fn open_with(dir: &Path, persist: PersistMode) -> Result<Self, StoreError> {
        Self::open_tuned(dir, persist, false)
    }

    /// As [`FjallStore::open_with`]; `lz4_everywhere` compresses the data blocks of every
    /// level, the tables a memtable flush writes (level 0) included; `false` is fjall's
    /// default (levels 0 and 1 uncompressed). For measurements (`benches/flush_stalls.rs`):
    /// a flush writes a whole memtable and fsyncs it, and on ext4 the group commit's journal
    /// fsync waits behind that writeback; a smaller table shortened that stall in the store
    /// bench (39–43 ms against 66–69 ms in two quiet pairs) but not measurably in the node
    /// (85 ms against 83–106 ms), so the node keeps the default. Applies to keyspaces this
    /// creates; existing ones keep their options.
    pub fn open_tuned(
        dir: &Path,
        persist: PersistMode,
        lz4_everywhere: bool,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::builder(dir.join("fjall"))
            .open()
            .map_err(backend)?;
        let options = || {
            let o = KeyspaceCreateOptions::default();
            if lz4_everywhere {
                o.data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
            } else {
                o
            }
        };
        let ks = |name: &str| db.keyspace(name, options).map_err(backend);
        let store = Self {
            messages: ks("messages")?,
            inbox: ks(KEYED[0].2)?,
            history: ks(KEYED[1].2)?,
            dedupe: ks(KEYED[2].2)?,
            acks: ks(KEYED[3].2)?,
            meta: ks("meta")?,
            db,
            persist,
        };
        store.upgrade()?;
        Ok(store)
    }

    /// Brings a format-1 store to format 2 (see the module doc); refuses a newer format.
    fn upgrade(&self) -> Result<(), StoreError> {
        match self.meta.get(FORMAT_KEY).map_err(backend)? {
            Some(v) => {
                let found = codec::read_u64(&v).ok_or(Corrupt("format"))?;
                if found != codec::FORMAT {
                    return Err(StoreError::Format { found });
                }
            }
            None => {
                for (table, old, _) in KEYED {
                    if self.db.keyspace_exists(old) {
                        let from = (self.db)
                            .keyspace(old, KeyspaceCreateOptions::default)
                            .map_err(backend)?;
                        self.copy_v1(table, &from)?;
                    }
                }
                let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
                b.insert(&self.meta, FORMAT_KEY, codec::FORMAT.to_be_bytes());
                b.commit().map_err(backend)?;
            }
        }
        // Format 1's keyspaces once copied, also after a crash between the version and this.
        for (_, old, _) in KEYED {
            if self.db.keyspace_exists(old) {
                let ks = (self.db)
                    .keyspace(old, KeyspaceCreateOptions::default)
                    .map_err(backend)?;
                self.db.delete_keyspace(ks).map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Copies a format-1 keyspace's rows into `table`'s format-2 keyspace.
    fn copy_v1(&self, table: Keyed, from: &Keyspace) -> Result<(), StoreError> {
        let to = match table {
            Keyed::Inbox => &self.inbox,
            Keyed::History => &self.history,
            Keyed::Dedupe => &self.dedupe,
            Keyed::Acks => &self.acks,
        };
        let batch = || self.db.batch().durability(Some(PersistMode::SyncAll));
        let (mut b, mut n) = (batch(), 0);
        for g in from.iter() {
            let (k, v) = g.into_inner().map_err(backend)?;
            b.insert(to, codec::v1_key_to_v2(table, &k)?, v);
            n += 1;
            if n % UPGRADE_BATCH == 0 {
                std::mem::replace(&mut b, batch())
                    .commit()
                    .map_err(backend)?;
            }
        }
        b.commit().map_err(backend)
    }
}

fn seq_range(user: &str, after: u64) -> std::ops::RangeInclusive<Vec<u8>> {
    codec::inbox_key(user, after.saturating_add(1))..=codec::inbox_key(user, u64::MAX)
}

impl ChatStore for FjallStore {
    fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        match self.inbox.range(seq_range(user, 0)).next_back() {
            None => Ok(0),
            Some(g) => {
                let k = g.key().map_err(backend)?;
                Ok(codec::split_inbox_key(&k)?.1)
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
        let mut out = Vec::with_capacity(limit.min(READ_RESERVE));
        for g in self.inbox.range(seq_range(user, after)).take(limit) {
            let (k, v) = g.into_inner().map_err(backend)?;
            let (_, seq) = codec::split_inbox_key(&k)?;
            out.push(codec::decode_entry(seq, &v)?);
        }
        Ok(out)
    }

    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, StoreError> {
        match self.messages.get(id.to_be_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode_message(id, &v)?)),
        }
    }

    fn dedupe_len_hint(&self) -> Result<usize, StoreError> {
        Ok(self.dedupe.approximate_len())
    }

    fn dedupe_keys(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), StoreError> {
        for g in self.dedupe.iter() {
            let (k, _) = g.into_inner().map_err(backend)?;
            f(&k);
        }
        Ok(())
    }

    fn dedupe(&self, sender: &str, client_id: &str) -> Result<Option<(MsgId, u64)>, StoreError> {
        match self
            .dedupe
            .get(codec::dedupe_key(sender, client_id))
            .map_err(backend)?
        {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode_dedupe(&v)?)),
        }
    }

    fn history(
        &self,
        conversation: &Conversation,
        before: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let lo = codec::history_key(conversation, MsgId(0));
        let hi = codec::history_key(conversation, before.unwrap_or(MsgId(u64::MAX)));
        let iter = if before.is_some() {
            self.history.range(lo..hi)
        } else {
            self.history.range(lo..=hi)
        };
        let mut out = Vec::with_capacity(limit.min(READ_RESERVE));
        for g in iter.rev() {
            if out.len() >= limit {
                break;
            }
            let key = g.key().map_err(backend)?;
            let id = key
                .len()
                .checked_sub(8)
                .and_then(|p| codec::read_u64(&key[p..]))
                .ok_or(Corrupt("history key"))?;
            if let Some(m) = self.message(MsgId(id))? {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn device_ack(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        match self
            .acks
            .get(codec::ack_key(user, device))
            .map_err(backend)?
        {
            None => Ok(0),
            Some(v) => Ok(codec::read_u64(&v).ok_or(Corrupt("ack"))?),
        }
    }

    fn last_msg_id(&self) -> Result<Option<MsgId>, StoreError> {
        match self.messages.last_key_value() {
            None => Ok(None),
            Some(g) => {
                let k = g.key().map_err(backend)?;
                Ok(Some(MsgId(
                    codec::read_u64(&k).ok_or(Corrupt("message key"))?,
                )))
            }
        }
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = batch.sorted_rows();
        let mut b = self.db.batch().durability(Some(self.persist));
        for (id, v) in rows.messages() {
            b.insert(&self.messages, id.to_be_bytes(), v);
        }
        for k in rows.history() {
            b.insert(&self.history, k, [0u8; 0]);
        }
        for (k, v) in rows.inbox() {
            b.insert(&self.inbox, k, v);
        }
        for (k, v) in rows.dedupe() {
            b.insert(&self.dedupe, k, *v);
        }
        for (k, seq) in rows.acks() {
            b.insert(&self.acks, k, seq.to_be_bytes());
        }
        b.commit().map_err(backend)
    }

    fn trim(&self, older_than_ms: u64) -> Result<TrimCounts, StoreError> {
        let mut counts = TrimCounts::default();
        let cut = MsgId::first_at(older_than_ms);
        let mut b = self.db.batch().durability(Some(self.persist));
        for g in self.messages.range(..cut.to_be_bytes()) {
            let (k, v) = g.into_inner().map_err(backend)?;
            let id = MsgId(codec::read_u64(&k).ok_or(Corrupt("message key"))?);
            let m = codec::decode_message(id, &v)?;
            b.remove(&self.messages, k);
            b.remove(&self.history, codec::history_key(&m.conversation(), id));
            let dk = codec::dedupe_key(&m.from, &m.client_id);
            if self.dedupe.contains_key(&dk).map_err(backend)? {
                b.remove(&self.dedupe, dk);
                counts.dedupe += 1;
            }
            counts.messages += 1;
        }
        // Skip-scan the inboxes: per user, drop old entries from the start, keep the last.
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(first) = self.inbox.range(from.as_slice()..).next() else {
                break;
            };
            let k = first.key().map_err(backend)?;
            let (plen, _) = codec::split_inbox_key(&k)?;
            let prefix = k[..plen].to_vec();
            let end = prefix_end(&prefix);
            let range = match &end {
                Some(e) => self.inbox.range(prefix.clone()..e.clone()),
                None => self.inbox.range(prefix.clone()..),
            };
            let mut user_old = Vec::new();
            let mut reached_new = false;
            for g in range {
                let (k, v) = g.into_inner().map_err(backend)?;
                if codec::entry_ts(&v)? >= older_than_ms {
                    reached_new = true;
                    break;
                }
                user_old.push(k);
            }
            if !reached_new {
                user_old.pop(); // the newest entry stays: it holds the head
            }
            for k in user_old {
                b.remove(&self.inbox, k);
                counts.inbox += 1;
            }
            match end {
                Some(e) => from = e,
                None => break,
            }
        }
        b.commit().map_err(backend)?;
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
            // The layout the store wrote before format 2: no `meta`, format 1's keyspaces.
            let db = Database::builder(dir.path().join("fjall")).open().unwrap();
            let mut b = db.batch().durability(Some(PersistMode::SyncAll));
            for (table, k, v) in sample_rows_v1() {
                let ks = db.keyspace(table, KeyspaceCreateOptions::default).unwrap();
                b.insert(&ks, k, v);
            }
            b.commit().unwrap();
        }
        let store = FjallStore::open(dir.path()).unwrap();
        assert_holds_sample(&store);
        for (_, old, _) in KEYED {
            assert!(!store.db.keyspace_exists(old), "{old} was left");
        }
        drop(store);
        assert_holds_sample(&FjallStore::open(dir.path()).unwrap());
    }

    #[test]
    fn an_upgrade_cut_short_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample_rows_v1();
        {
            let db = Database::builder(dir.path().join("fjall")).open().unwrap();
            let mut b = db.batch().durability(Some(PersistMode::SyncAll));
            for (table, k, v) in &rows {
                let ks = db.keyspace(table, KeyspaceCreateOptions::default).unwrap();
                b.insert(&ks, k.clone(), v.clone());
            }
            // Every other row already copied, no version yet: a node stopped mid-copy.
            for (table, k, v) in rows.iter().step_by(2) {
                if let Some((keyed, _, new)) = KEYED.iter().find(|(_, old, _)| old == table) {
                    let ks = db.keyspace(new, KeyspaceCreateOptions::default).unwrap();
                    b.insert(&ks, codec::v1_key_to_v2(*keyed, k).unwrap(), v.clone());
                }
            }
            b.commit().unwrap();
        }
        let store = FjallStore::open(dir.path()).unwrap();
        assert_holds_sample(&store);
        for (_, old, _) in KEYED {
            assert!(!store.db.keyspace_exists(old), "{old} was left");
        }
    }

    #[test]
    fn format_1_keyspaces_left_after_the_version_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path()).unwrap();
            store.commit(&crate::store::tests::sample_batch()).unwrap();
            // A node stopped after writing the version, before dropping format 1's tables.
            let old = (store.db)
                .keyspace("inbox", KeyspaceCreateOptions::default)
                .unwrap();
            old.insert(b"not copied again", b"x").unwrap();
            store.db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = FjallStore::open(dir.path()).unwrap();
        assert!(!store.db.keyspace_exists("inbox"));
        assert_holds_sample(&store);
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        store.meta.insert(FORMAT_KEY, 3u64.to_be_bytes()).unwrap();
        store.db.persist(PersistMode::SyncAll).unwrap();
        drop(store);
        match FjallStore::open(dir.path()) {
            Err(StoreError::Format { found: 3 }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a format 3 store opened"),
        }
    }
}
