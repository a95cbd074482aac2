//! The chat relay's store in PostgreSQL ([`PgChatStore`]), for cluster mode: messages, inbox
//! logs, dedupe rows and device acks in tables (migration 3), one transaction per group
//! commit, durable when `commit` returns (`synchronous_commit = on`).
//!
//! The relay's [`ChatStore`] is synchronous (its committer and readers are threads of their
//! own), so this store speaks through the `postgres` crate, the blocking face of
//! `tokio-postgres`. Called from a thread inside a tokio runtime (where that client's own
//! `block_on` would panic), a call runs on a scoped thread of its own and still blocks the
//! caller: keep it off async tasks, on the commit thread or `spawn_blocking`.
//!
//! The database holds two of the relay's rules itself, so that a second writer (a node that
//! lost a slot and does not know it yet) cannot break them: an inbox `(owner, seq)` is a
//! primary key (an entry at a seq already taken fails the whole commit), and so is a dedupe
//! `(sender, client_id)` (a send stored twice fails its second commit; the retry is then
//! answered from the first).
//!
//! Ids, texts and client ids are `bytea`, stored exactly (PostgreSQL `text` refuses NUL).
//! Message ids are `bigint` with the top bit flipped, so their order is the `u64` order.

use std::sync::Mutex;

use chat_relay::{
    ChatStore, Conversation, DedupeRow, EntryKind, InboxEntry, MsgId, StoreError, StoredMessage,
    Target, TrimCounts, WriteBatch, dedupe_key,
};
use postgres::{Client, NoTls, Transaction};

/// A [`ChatStore`] on one PostgreSQL database (shared by every node of a cluster).
pub struct PgChatStore {
    url: String,
    /// Commits (one at a time: the relay's committer).
    writer: Mutex<Option<Client>>,
    /// Reads, one at a time.
    reader: Mutex<Option<Client>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("PostgreSQL: {e}"))
}

/// A message id as the `bigint` the tables hold (order-preserving).
fn db_id(id: MsgId) -> i64 {
    i64::from_ne_bytes((id.0 ^ (1 << 63)).to_ne_bytes())
}

fn msg_id(v: i64) -> MsgId {
    MsgId(u64::from_ne_bytes(v.to_ne_bytes()) ^ (1 << 63))
}

fn db_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn string(b: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(b).map_err(|_| backend("a stored string is not UTF-8"))
}

/// A conversation's history key: `0, len(a), a, b` for a pair, `1, g` for a group.
fn conv_key(c: &Conversation) -> Vec<u8> {
    match c {
        Conversation::Direct(a, b) => {
            let mut k = Vec::with_capacity(2 + a.len() + b.len());
            k.push(0);
            k.push(u8::try_from(a.len()).unwrap_or(u8::MAX));
            k.extend_from_slice(a.as_bytes());
            k.extend_from_slice(b.as_bytes());
            k
        }
        Conversation::Group(g) => {
            let mut k = Vec::with_capacity(1 + g.len());
            k.push(1);
            k.extend_from_slice(g.as_bytes());
            k
        }
    }
}

/// A target as `(kind, id)`: 0 a user, 1 a group.
fn target_cols(t: &Target) -> (i16, &[u8]) {
    match t {
        Target::User(u) => (0, u.as_bytes()),
        Target::Group(g) => (1, g.as_bytes()),
    }
}

fn target_of(kind: i16, id: Vec<u8>) -> Result<Target, StoreError> {
    let id = string(id)?;
    match kind {
        0 => Ok(Target::User(id)),
        1 => Ok(Target::Group(id)),
        k => Err(backend(format!("unknown target kind {k}"))),
    }
}

fn kind_code(k: EntryKind) -> i16 {
    match k {
        EntryKind::Message => 0,
        EntryKind::Edit => 1,
        EntryKind::Delete => 2,
        EntryKind::Read => 3,
    }
}

fn kind_of(c: i16) -> Result<EntryKind, StoreError> {
    Ok(match c {
        0 => EntryKind::Message,
        1 => EntryKind::Edit,
        2 => EntryKind::Delete,
        3 => EntryKind::Read,
        c => return Err(backend(format!("unknown entry kind {c}"))),
    })
}

const MESSAGE_COLS: &str =
    "msg_id, sender, target_kind, target, text, ts, edited_ts, deleted, client_id";

fn message_of(r: &postgres::Row) -> Result<StoredMessage, StoreError> {
    let g = |e: postgres::Error| backend(e);
    Ok(StoredMessage {
        msg_id: msg_id(r.try_get(0).map_err(g)?),
        from: string(r.try_get(1).map_err(g)?)?,
        target: target_of(r.try_get(2).map_err(g)?, r.try_get(3).map_err(g)?)?,
        text: string(r.try_get(4).map_err(g)?)?,
        ts: u64_of(r.try_get(5).map_err(g)?),
        edited_ts: r.try_get::<_, Option<i64>>(6).map_err(g)?.map(u64_of),
        deleted: r.try_get(7).map_err(g)?,
        client_id: string(r.try_get(8).map_err(g)?)?,
    })
}

impl PgChatStore {
    /// Connects (`postgres://user@host:port/db`; no TLS) and brings the schema up to date
    /// (the same migrations as [`crate::Store::connect`]). Blocking.
    pub fn connect(url: &str) -> Result<PgChatStore, StoreError> {
        let store = PgChatStore {
            url: url.to_owned(),
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        };
        // The migrations are the graph store's (async): run them once on a runtime of
        // their own, as `Store::connect` does.
        let config: tokio_postgres::Config = url.parse().map_err(backend)?;
        off_runtime(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(backend)?
                .block_on(async {
                    let mut client = crate::store::open(&config).await?;
                    crate::schema::migrate(&mut client).await
                })
                .map_err(backend)
        })?;
        Ok(store)
    }

    /// The number (0-1023) of node `name` in the message ids it makes, unique in the
    /// cluster: the one it had, or the lowest free one. Blocking.
    pub fn node_number(&self, name: &str) -> Result<u16, StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(backend)?;
            // One claim at a time: two new names must not pick the same free number.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&crate::schema::CHAT_NODE_LOCK],
            )
            .map_err(backend)?;
            let row = tx
                .query_one(
                    "WITH had AS (SELECT num FROM chat_nodes WHERE name = $1),
                          free AS (SELECT min(n) AS num FROM generate_series(0, 1023) n
                                   WHERE n NOT IN (SELECT num FROM chat_nodes)),
                          put AS (INSERT INTO chat_nodes (name, num)
                                  SELECT $1, free.num FROM free
                                  WHERE NOT EXISTS (SELECT 1 FROM had) AND free.num IS NOT NULL
                                  RETURNING num)
                     SELECT coalesce((SELECT num FROM had), (SELECT num FROM put))",
                    &[&name.as_bytes()],
                )
                .map_err(backend)?;
            let num: Option<i32> = row.try_get(0).map_err(backend)?;
            tx.commit().map_err(backend)?;
            num.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
                backend(
                    "all 1024 chat node numbers are taken: delete the chat_nodes rows of \
                     node names that will not come back",
                )
            })
        })
    }

    fn open(&self) -> Result<Client, StoreError> {
        let mut c = Client::connect(&self.url, NoTls).map_err(backend)?;
        // Durable on return, whatever the server's default. A node paused in the middle of
        // a commit (SIGSTOP, a VM freeze) holds the fence rows it checked: the server ends
        // its transaction after a while, so the node that takes its slots is not held up
        // for longer (a commit's statements follow each other at once).
        c.batch_execute(
            "SET synchronous_commit = on; SET idle_in_transaction_session_timeout = '2s'",
        )
        .map_err(backend)?;
        Ok(c)
    }

    /// Runs `f` on the connection in `slot`, reopened if it broke; a connection that fails
    /// is dropped so the next call opens a fresh one.
    fn with<T: Send>(
        &self,
        slot: &Mutex<Option<Client>>,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let mut guard = slot
            .lock()
            .map_err(|_| backend("a chat store connection lock was poisoned"))?;
        let conn: &mut Option<Client> = &mut guard;
        off_runtime(|| {
            if conn.as_ref().is_none_or(Client::is_closed) {
                *conn = Some(self.open()?);
            }
            let client = conn.as_mut().ok_or_else(|| backend("no connection"))?;
            let r = f(client);
            if r.is_err() && client.is_closed() {
                *conn = None;
            }
            r
        })
    }

    fn with_writer<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.with(&self.writer, f)
    }

    fn with_reader<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.with(&self.reader, f)
    }
}

/// Runs `f` where the blocking client may block: here, or — on a thread inside a tokio
/// runtime, where the client's own `block_on` would panic — on a scoped thread of its own
/// (the caller still waits for it: the store stays blocking, as its trait says).
fn off_runtime<T: Send>(f: impl FnOnce() -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("chat-pg".into())
            .spawn_scoped(s, f)
            .map_err(|e| backend(format!("no thread for the chat store: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(backend("a chat store call panicked")))
    })
}

impl Drop for PgChatStore {
    /// The clients close their connections with a blocking call: off any runtime, too.
    fn drop(&mut self) {
        let mut clients = Vec::new();
        for slot in [&self.writer, &self.reader] {
            if let Ok(mut c) = slot.lock()
                && let Some(c) = c.take()
            {
                clients.push(c);
            }
        }
        if !clients.is_empty() {
            let _ = off_runtime(move || {
                drop(clients);
                Ok(())
            });
        }
    }
}

/// Writes one batch's rows (unnest arrays: one statement per table).
fn write_batch(tx: &mut Transaction<'_>, b: &WriteBatch) -> Result<(), postgres::Error> {
    write_rows(tx, b)?;
    if !b.dedupe.is_empty() {
        let senders: Vec<&[u8]> = b.dedupe.iter().map(|d| d.sender.as_bytes()).collect();
        let clients: Vec<&[u8]> = b.dedupe.iter().map(|d| d.client_id.as_bytes()).collect();
        let ids: Vec<i64> = b.dedupe.iter().map(|d| db_id(d.msg_id)).collect();
        let ts: Vec<i64> = b.dedupe.iter().map(|d| db_u64(d.ts)).collect();
        // A plain insert: a send stored twice fails the commit.
        tx.execute(
            "INSERT INTO chat_dedupe (sender, client_id, msg_id, ts)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[])",
            &[&senders, &clients, &ids, &ts],
        )?;
    }
    Ok(())
}

/// Refuses the batch if any of its writers' slots was taken under a later epoch than the
/// one it was written under. The fence rows checked stay locked (shared) until the
/// transaction ends, so a node taking one of these slots waits for this commit, and every
/// commit after its take sees its epoch. Locked in slot order, as takers write them.
fn check_fences(tx: &mut Transaction<'_>, fences: &[(u16, u64)]) -> Result<(), StoreError> {
    if fences.is_empty() {
        return Ok(());
    }
    let slots: Vec<i16> = fences
        .iter()
        .map(|&(s, _)| i16::try_from(s).unwrap_or(i16::MAX))
        .collect();
    let epochs: Vec<i64> = fences.iter().map(|&(_, e)| db_u64(e)).collect();
    let rows = tx
        .query(
            "SELECT f.slot, f.epoch, t.e
             FROM chat_fences f JOIN unnest($1::smallint[], $2::bigint[]) AS t(s, e)
               ON f.slot = t.s
             ORDER BY f.slot
             FOR SHARE OF f",
            &[&slots, &epochs],
        )
        .map_err(backend)?;
    for r in &rows {
        let slot: i16 = r.try_get(0).map_err(backend)?;
        let fenced: i64 = r.try_get(1).map_err(backend)?;
        let epoch: i64 = r.try_get(2).map_err(backend)?;
        if fenced > epoch {
            return Err(StoreError::Fenced {
                slot: u16::try_from(slot).unwrap_or(u16::MAX),
                epoch: u64_of(epoch),
                fenced: u64_of(fenced),
            });
        }
    }
    Ok(())
}

/// Claims the batch's sends in `chat_dedupe` (the database's unique key decides between
/// concurrent writers: a second insert of a key waits for the first transaction and then
/// does nothing). The sends whose key was taken already leave the batch — message, inbox
/// entries, dedupe row — and come back as the rows already stored.
fn claim_sends(
    tx: &mut Transaction<'_>,
    b: &mut WriteBatch,
) -> Result<Vec<DedupeRow>, postgres::Error> {
    if b.dedupe.is_empty() {
        return Ok(Vec::new());
    }
    let senders: Vec<&[u8]> = b.dedupe.iter().map(|d| d.sender.as_bytes()).collect();
    let clients: Vec<&[u8]> = b.dedupe.iter().map(|d| d.client_id.as_bytes()).collect();
    let ids: Vec<i64> = b.dedupe.iter().map(|d| db_id(d.msg_id)).collect();
    let ts: Vec<i64> = b.dedupe.iter().map(|d| db_u64(d.ts)).collect();
    let claimed = tx.query(
        "INSERT INTO chat_dedupe (sender, client_id, msg_id, ts)
         SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[])
         ON CONFLICT (sender, client_id) DO NOTHING
         RETURNING msg_id",
        &[&senders, &clients, &ids, &ts],
    )?;
    if claimed.len() == b.dedupe.len() {
        b.dedupe.clear();
        return Ok(Vec::new());
    }
    let mut fresh = std::collections::HashSet::with_capacity(claimed.len());
    for r in &claimed {
        fresh.insert(msg_id(r.try_get(0)?));
    }
    let (_, taken): (Vec<_>, Vec<_>) = std::mem::take(&mut b.dedupe)
        .into_iter()
        .partition(|d| fresh.contains(&d.msg_id));
    let dropped: std::collections::HashSet<MsgId> = taken.iter().map(|d| d.msg_id).collect();
    b.messages.retain(|m| !dropped.contains(&m.msg_id));
    b.inbox.retain(|(_, e)| !dropped.contains(&e.msg_id));
    let senders: Vec<&[u8]> = taken.iter().map(|d| d.sender.as_bytes()).collect();
    let clients: Vec<&[u8]> = taken.iter().map(|d| d.client_id.as_bytes()).collect();
    let rows = tx.query(
        "SELECT d.sender, d.client_id, d.msg_id, d.ts
         FROM chat_dedupe d JOIN unnest($1::bytea[], $2::bytea[]) AS t(s, c)
           ON d.sender = t.s AND d.client_id = t.c",
        &[&senders, &clients],
    )?;
    let mut stored = Vec::with_capacity(rows.len());
    for r in &rows {
        let text = |i: usize| -> Result<String, postgres::Error> {
            let b: Vec<u8> = r.try_get(i)?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        };
        stored.push(DedupeRow {
            sender: text(0)?,
            client_id: text(1)?,
            msg_id: msg_id(r.try_get(2)?),
            ts: u64_of(r.try_get(3)?),
        });
    }
    Ok(stored)
}

/// Writes a batch's messages, inbox entries and acks (not its dedupe rows).
fn write_rows(tx: &mut Transaction<'_>, b: &WriteBatch) -> Result<(), postgres::Error> {
    if !b.messages.is_empty() {
        let ids: Vec<i64> = b.messages.iter().map(|m| db_id(m.msg_id)).collect();
        let senders: Vec<&[u8]> = b.messages.iter().map(|m| m.from.as_bytes()).collect();
        let kinds: Vec<i16> = b
            .messages
            .iter()
            .map(|m| target_cols(&m.target).0)
            .collect();
        let targets: Vec<&[u8]> = b
            .messages
            .iter()
            .map(|m| target_cols(&m.target).1)
            .collect();
        let convs: Vec<Vec<u8>> = b
            .messages
            .iter()
            .map(|m| conv_key(&m.conversation()))
            .collect();
        let texts: Vec<&[u8]> = b.messages.iter().map(|m| m.text.as_bytes()).collect();
        let ts: Vec<i64> = b.messages.iter().map(|m| db_u64(m.ts)).collect();
        let edited: Vec<Option<i64>> = b.messages.iter().map(|m| m.edited_ts.map(db_u64)).collect();
        let deleted: Vec<bool> = b.messages.iter().map(|m| m.deleted).collect();
        let clients: Vec<&[u8]> = b.messages.iter().map(|m| m.client_id.as_bytes()).collect();
        tx.execute(
            "INSERT INTO chat_messages
                 (msg_id, sender, target_kind, target, conv, text, ts, edited_ts, deleted, client_id)
             SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::smallint[], $4::bytea[],
                                  $5::bytea[], $6::bytea[], $7::bigint[], $8::bigint[],
                                  $9::boolean[], $10::bytea[])
             ON CONFLICT (msg_id) DO UPDATE
                 SET text = excluded.text, edited_ts = excluded.edited_ts,
                     deleted = excluded.deleted",
            &[
                &ids, &senders, &kinds, &targets, &convs, &texts, &ts, &edited, &deleted, &clients,
            ],
        )?;
    }
    if !b.inbox.is_empty() {
        let owners: Vec<&[u8]> = b.inbox.iter().map(|(u, _)| u.as_bytes()).collect();
        let seqs: Vec<i64> = b.inbox.iter().map(|(_, e)| db_u64(e.seq)).collect();
        let kinds: Vec<i16> = b.inbox.iter().map(|(_, e)| kind_code(e.kind)).collect();
        let ids: Vec<i64> = b.inbox.iter().map(|(_, e)| db_id(e.msg_id)).collect();
        let froms: Vec<&[u8]> = b.inbox.iter().map(|(_, e)| e.from.as_bytes()).collect();
        let tkinds: Vec<i16> = b
            .inbox
            .iter()
            .map(|(_, e)| target_cols(&e.target).0)
            .collect();
        let targets: Vec<&[u8]> = b
            .inbox
            .iter()
            .map(|(_, e)| target_cols(&e.target).1)
            .collect();
        let texts: Vec<Option<&[u8]>> = b
            .inbox
            .iter()
            .map(|(_, e)| e.text.as_deref().map(str::as_bytes))
            .collect();
        let ts: Vec<i64> = b.inbox.iter().map(|(_, e)| db_u64(e.ts)).collect();
        // A plain insert: an `(owner, seq)` already there fails the commit.
        tx.execute(
            "INSERT INTO chat_inbox
                 (owner, seq, kind, msg_id, sender, target_kind, target, text, ts)
             SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::smallint[], $4::bigint[],
                                  $5::bytea[], $6::smallint[], $7::bytea[], $8::bytea[],
                                  $9::bigint[])",
            &[
                &owners, &seqs, &kinds, &ids, &froms, &tkinds, &targets, &texts, &ts,
            ],
        )?;
    }
    if !b.acks.is_empty() {
        let owners: Vec<&[u8]> = b.acks.iter().map(|a| a.user.as_bytes()).collect();
        let devices: Vec<&[u8]> = b.acks.iter().map(|a| a.device.as_bytes()).collect();
        let seqs: Vec<i64> = b.acks.iter().map(|a| db_u64(a.seq)).collect();
        // Clamped to the inbox head (a shared relay cannot check it without a read), and
        // never back: two nodes may write one device's acks around a slot move.
        tx.execute(
            "INSERT INTO chat_acks (owner, device, seq)
             SELECT t.o, t.d, least(t.s, coalesce(
                        (SELECT max(seq) FROM chat_inbox i WHERE i.owner = t.o), 0))
             FROM unnest($1::bytea[], $2::bytea[], $3::bigint[]) AS t(o, d, s)
             ON CONFLICT (owner, device) DO UPDATE
                 SET seq = greatest(chat_acks.seq, excluded.seq)",
            &[&owners, &devices, &seqs],
        )?;
    }
    Ok(())
}

/// Gives the batch's seq-0 inbox entries their inboxes' next seqs, in batch order, from
/// `chat_heads` (a missing head starts at the inbox's last seq). The head rows are locked in
/// owner order, so concurrent commits wait for each other and never deadlock.
fn number(tx: &mut Transaction<'_>, batch: &mut WriteBatch) -> Result<(), postgres::Error> {
    let mut counts: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for (owner, e) in &batch.inbox {
        if e.seq == 0 {
            *counts.entry(owner.as_str()).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return Ok(());
    }
    let owners: Vec<&[u8]> = counts.keys().map(|o| o.as_bytes()).collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    tx.execute(
        "INSERT INTO chat_heads (owner, head)
         SELECT o, coalesce((SELECT max(seq) FROM chat_inbox i WHERE i.owner = o), 0)
         FROM unnest($1::bytea[]) AS o ORDER BY o
         ON CONFLICT (owner) DO NOTHING",
        &[&owners],
    )?;
    tx.execute(
        "SELECT 1 FROM chat_heads WHERE owner = ANY($1::bytea[]) ORDER BY owner FOR UPDATE",
        &[&owners],
    )?;
    let rows = tx.query(
        "UPDATE chat_heads h SET head = h.head + t.n
         FROM unnest($1::bytea[], $2::bigint[]) AS t(o, n)
         WHERE h.owner = t.o
         RETURNING h.owner, h.head",
        &[&owners, &ns],
    )?;
    // The first seq of each owner's run in this batch.
    let mut next: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    for r in rows {
        let owner: Vec<u8> = r.try_get(0)?;
        let head: i64 = r.try_get(1)?;
        let n = std::str::from_utf8(&owner)
            .ok()
            .and_then(|o| counts.get(o))
            .copied()
            .unwrap_or(0);
        next.insert(owner, u64_of(head - n + 1));
    }
    for (owner, e) in &mut batch.inbox {
        if e.seq == 0
            && let Some(s) = next.get_mut(owner.as_bytes())
        {
            e.seq = *s;
            *s += 1;
        }
    }
    Ok(())
}

impl ChatStore for PgChatStore {
    fn commit_numbered(&self, batch: &mut WriteBatch) -> Result<Vec<DedupeRow>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // On failure nothing is written, and the relay drops the batch (`Relay::reset`).
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(backend)?;
            check_fences(&mut tx, &batch.fences)?;
            let stored = claim_sends(&mut tx, batch).map_err(backend)?;
            number(&mut tx, batch).map_err(backend)?;
            if batch.inbox.iter().any(|(_, e)| e.seq == 0) {
                return Err(backend("an inbox entry was left without a seq"));
            }
            write_rows(&mut tx, batch).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(stored)
        })
    }

    fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        self.with_reader(|c| {
            let r = c
                .query_one(
                    "SELECT coalesce(max(seq), 0) FROM chat_inbox WHERE owner = $1",
                    &[&user.as_bytes()],
                )
                .map_err(backend)?;
            Ok(u64_of(r.try_get(0).map_err(backend)?))
        })
    }

    fn read_inbox(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.with_reader(|c| {
            let rows = c
                .query(
                    "SELECT seq, kind, msg_id, sender, target_kind, target, text, ts
                     FROM chat_inbox WHERE owner = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&user.as_bytes(), &db_u64(after), &db_u64(limit as u64)],
                )
                .map_err(backend)?;
            rows.iter()
                .map(|r| {
                    let text: Option<Vec<u8>> = r.try_get(6).map_err(backend)?;
                    Ok(InboxEntry {
                        seq: u64_of(r.try_get(0).map_err(backend)?),
                        kind: kind_of(r.try_get(1).map_err(backend)?)?,
                        msg_id: msg_id(r.try_get(2).map_err(backend)?),
                        from: string(r.try_get(3).map_err(backend)?)?,
                        target: target_of(
                            r.try_get(4).map_err(backend)?,
                            r.try_get(5).map_err(backend)?,
                        )?,
                        text: text.map(string).transpose()?,
                        ts: u64_of(r.try_get(7).map_err(backend)?),
                    })
                })
                .collect()
        })
    }

    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, StoreError> {
        self.with_reader(|c| {
            let rows = c
                .query(
                    &format!("SELECT {MESSAGE_COLS} FROM chat_messages WHERE msg_id = $1"),
                    &[&db_id(id)],
                )
                .map_err(backend)?;
            rows.first().map(message_of).transpose()
        })
    }

    fn dedupe(&self, sender: &str, client_id: &str) -> Result<Option<(MsgId, u64)>, StoreError> {
        self.with_reader(|c| {
            let rows = c
                .query(
                    "SELECT msg_id, ts FROM chat_dedupe WHERE sender = $1 AND client_id = $2",
                    &[&sender.as_bytes(), &client_id.as_bytes()],
                )
                .map_err(backend)?;
            match rows.first() {
                None => Ok(None),
                Some(r) => Ok(Some((
                    msg_id(r.try_get(0).map_err(backend)?),
                    u64_of(r.try_get(1).map_err(backend)?),
                ))),
            }
        })
    }

    fn history(
        &self,
        conversation: &Conversation,
        before: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let key = conv_key(conversation);
        let before = before.map_or(i64::MAX, db_id);
        self.with_reader(|c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {MESSAGE_COLS} FROM chat_messages
                         WHERE conv = $1 AND msg_id < $2 ORDER BY msg_id DESC LIMIT $3"
                    ),
                    &[&key, &before, &db_u64(limit as u64)],
                )
                .map_err(backend)?;
            rows.iter().map(message_of).collect()
        })
    }

    fn device_ack(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        self.with_reader(|c| {
            let rows = c
                .query(
                    "SELECT seq FROM chat_acks WHERE owner = $1 AND device = $2",
                    &[&user.as_bytes(), &device.as_bytes()],
                )
                .map_err(backend)?;
            match rows.first() {
                None => Ok(0),
                Some(r) => Ok(u64_of(r.try_get(0).map_err(backend)?)),
            }
        })
    }

    fn last_msg_id(&self) -> Result<Option<MsgId>, StoreError> {
        self.with_reader(|c| {
            let r = c
                .query_one("SELECT max(msg_id) FROM chat_messages", &[])
                .map_err(backend)?;
            Ok(r.try_get::<_, Option<i64>>(0).map_err(backend)?.map(msg_id))
        })
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(backend)?;
            write_batch(&mut tx, batch).map_err(backend)?;
            tx.commit().map_err(backend)
        })
    }

    fn trim(&self, older_than_ms: u64) -> Result<TrimCounts, StoreError> {
        let cutoff = db_u64(older_than_ms);
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(backend)?;
            let dedupe = tx
                .execute(
                    "DELETE FROM chat_dedupe d USING chat_messages m
                     WHERE m.ts < $1 AND d.sender = m.sender AND d.client_id = m.client_id",
                    &[&cutoff],
                )
                .map_err(backend)?;
            let messages = tx
                .execute("DELETE FROM chat_messages WHERE ts < $1", &[&cutoff])
                .map_err(backend)?;
            // Each inbox from its start up to its first entry new enough, never its newest.
            let inbox = tx
                .execute(
                    "DELETE FROM chat_inbox i USING (
                         SELECT owner,
                                coalesce(min(seq) FILTER (WHERE ts >= $1), max(seq)) AS keep_from
                         FROM chat_inbox GROUP BY owner
                     ) k
                     WHERE i.owner = k.owner AND i.seq < k.keep_from",
                    &[&cutoff],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(TrimCounts {
                messages,
                inbox,
                dedupe,
            })
        })
    }

    fn dedupe_len_hint(&self) -> Result<usize, StoreError> {
        self.with_reader(|c| {
            let r = c
                .query_one("SELECT count(*) FROM chat_dedupe", &[])
                .map_err(backend)?;
            Ok(usize::try_from(r.try_get::<_, i64>(0).map_err(backend)?).unwrap_or(0))
        })
    }

    fn dedupe_keys(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), StoreError> {
        // Gathered first: the call may run on a thread of its own (a shared relay, the
        // cluster's, never asks for them).
        let keys = self.with_reader(|c| {
            let mut rows = c
                .query_raw(
                    "SELECT sender, client_id FROM chat_dedupe",
                    std::iter::empty::<&dyn postgres::types::ToSql>(),
                )
                .map_err(backend)?;
            use postgres::fallible_iterator::FallibleIterator;
            let mut keys = Vec::new();
            while let Some(r) = rows.next().map_err(backend)? {
                let sender = string(r.try_get(0).map_err(backend)?)?;
                let client = string(r.try_get(1).map_err(backend)?)?;
                keys.push(dedupe_key(&sender, &client));
            }
            Ok(keys)
        })?;
        for k in &keys {
            f(k);
        }
        Ok(())
    }
}
