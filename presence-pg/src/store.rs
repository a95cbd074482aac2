//! The store a cluster node talks to: one connection for reads (queries pipeline on it) and one
//! for writes (a transaction needs the connection to itself), each reopened when it breaks.
//! Every write is one transaction, durable when the call returns, and appends its effect to the
//! change log and `NOTIFY`s [`CHANNEL`] in that same transaction.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use futures_util::{StreamExt, pin_mut};
use presence_cluster::{SLOTS, slot_of};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls, Transaction};

use crate::Error;
use crate::change::{self, Change};
use crate::error::{check_id, id_from};
use crate::schema::{self, CHANGE_LOCK, CHANNEL};

/// How many times a write rolled back by a deadlock or serialization failure is tried again.
const RETRIES: u32 = 5;

/// The effect of a friendship write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Friendships that did not exist and now do.
    pub added: u64,
    /// Friendships that existed and now do not.
    pub removed: u64,
    /// The change-log id of the write; `None` when it changed nothing (and logged nothing).
    pub change: Option<i64>,
}

/// The statuses a [`Store`] knows.
const STATUSES: [&str; 4] = ["available", "busy", "dnd", "invisible"];

/// One user's custom status, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub user: String,
    /// `available`, `busy`, `dnd` or `invisible`.
    pub status: String,
    pub text: Option<String>,
}

/// The graph and groups of a cluster, in PostgreSQL.
pub struct Store {
    config: Config,
    reader: Mutex<Option<Arc<Client>>>,
    writer: Mutex<Option<Client>>,
    /// Most friends a user may have ([`Store::with_max_friends`]); writes over it are refused.
    max_friends: Option<u32>,
}

/// Opens a connection whose `Connection` future a spawned task drives until it ends.
pub(crate) async fn open(config: &Config) -> Result<Client, Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The slot of an id as the `smallint` the table holds (slots are below 1,024).
fn slot16(id: &str) -> i16 {
    i16::try_from(slot_of(id.as_bytes()).get()).unwrap_or(i16::MAX)
}

/// A pair with the smaller id first.
fn norm<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Friendships by id, smaller first.
type Pairs<'a> = Vec<(&'a str, &'a str)>;
/// Friendships as owned ids, smaller first.
type OwnedPairs = Vec<(String, String)>;

/// Checks the ids of a request and normalises its pairs; refuses self-pairs and a pair given
/// twice (in either list, in either direction).
fn check_pairs<'a>(
    add: &[(&'a str, &'a str)],
    remove: &[(&'a str, &'a str)],
) -> Result<(Pairs<'a>, Pairs<'a>), Error> {
    let mut seen = HashSet::with_capacity(add.len() + remove.len());
    let mut check = |list: &[(&'a str, &'a str)]| -> Result<Vec<(&'a str, &'a str)>, Error> {
        let mut out = Vec::with_capacity(list.len());
        for &(a, b) in list {
            check_id("user", a)?;
            check_id("user", b)?;
            if a == b {
                return Err(Error::SelfFriendship(a.to_owned()));
            }
            let p = norm(a, b);
            if !seen.insert(p) {
                return Err(Error::DuplicatePair(a.to_owned(), b.to_owned()));
            }
            out.push(p);
        }
        Ok(out)
    };
    let add = check(add)?;
    let remove = check(remove)?;
    Ok((add, remove))
}

/// The slots of a set of ids, ascending.
fn slots_of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<i16> {
    ids.into_iter()
        .map(slot16)
        .collect::<BTreeSet<i16>>()
        .into_iter()
        .collect()
}

/// Both directed rows of each pair, sorted (so concurrent writers lock rows in one order).
fn directed<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut rows: Vec<(&str, &str)> = pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
    rows.sort_unstable();
    rows
}

/// The friendships (smaller id first) among returned directed rows.
fn forward_pairs(rows: &[tokio_postgres::Row]) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for r in rows {
        let (a, b): (Vec<u8>, Vec<u8>) = (r.try_get(0)?, r.try_get(1)?);
        if a < b {
            out.push((id_from(a)?, id_from(b)?));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Takes a transaction-scoped advisory lock per user, in key order (every writer takes its
/// users' locks before any row lock, then the change-log lock: one order, no deadlock), so
/// two writes adding friends to one user count them one after the other.
async fn lock_users<'a>(
    tx: &Transaction<'_>,
    users: impl IntoIterator<Item = &'a str>,
) -> Result<(), Error> {
    let keys: BTreeSet<i64> = users.into_iter().map(user_lock).collect();
    if keys.is_empty() {
        return Ok(());
    }
    let keys: Vec<i64> = keys.into_iter().collect();
    tx.execute(
        "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY k) s",
        &[&keys],
    )
    .await?;
    Ok(())
}

/// A user's advisory lock key: FNV-1a of the id in a key space of its own (the top byte),
/// apart from [`CHANGE_LOCK`] and the migrations'.
fn user_lock(id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(((h >> 8) | (0x55 << 56)).to_ne_bytes())
}

/// Refuses the write (the caller drops the transaction) if one of `users` now has more
/// than `cap` friends.
async fn check_cap<'a>(
    tx: &Transaction<'_>,
    cap: Option<u32>,
    users: impl IntoIterator<Item = &'a str>,
) -> Result<(), Error> {
    let Some(cap) = cap else { return Ok(()) };
    let users: Vec<&[u8]> = users
        .into_iter()
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .map(str::as_bytes)
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    let over = tx
        .query(
            "SELECT user_id, count(*) FROM edges WHERE user_id = ANY($1::bytea[])
             GROUP BY user_id HAVING count(*) > $2 LIMIT 1",
            &[&users, &i64::from(cap)],
        )
        .await?;
    match over.first() {
        None => Ok(()),
        Some(r) => Err(Error::TooManyFriends {
            user: id_from(r.try_get(0)?)?,
            would_have: u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
            cap,
        }),
    }
}

/// Inserts and deletes both directions of each pair; returns the pairs actually added and
/// removed.
async fn write_edges(
    tx: &Transaction<'_>,
    add: &[(&str, &str)],
    remove: &[(&str, &str)],
) -> Result<(OwnedPairs, OwnedPairs), Error> {
    let mut added = Vec::new();
    if !add.is_empty() {
        let rows = directed(add);
        let users: Vec<&[u8]> = rows.iter().map(|r| r.0.as_bytes()).collect();
        let friends: Vec<&[u8]> = rows.iter().map(|r| r.1.as_bytes()).collect();
        let slots: Vec<i16> = rows.iter().map(|r| slot16(r.0)).collect();
        let ret = tx
            .query(
                "INSERT INTO edges (user_id, friend_id, slot)
                 SELECT u, f, s FROM unnest($1::bytea[], $2::bytea[], $3::smallint[]) AS t(u, f, s)
                 ON CONFLICT DO NOTHING
                 RETURNING user_id, friend_id",
                &[&users, &friends, &slots],
            )
            .await?;
        added = forward_pairs(&ret)?;
    }
    let mut removed = Vec::new();
    if !remove.is_empty() {
        let rows = directed(remove);
        let users: Vec<&[u8]> = rows.iter().map(|r| r.0.as_bytes()).collect();
        let friends: Vec<&[u8]> = rows.iter().map(|r| r.1.as_bytes()).collect();
        let ret = tx
            .query(
                "DELETE FROM edges e USING unnest($1::bytea[], $2::bytea[]) AS t(u, f)
                 WHERE e.user_id = t.u AND e.friend_id = t.f
                 RETURNING e.user_id, e.friend_id",
                &[&users, &friends],
            )
            .await?;
        removed = forward_pairs(&ret)?;
    }
    Ok((added, removed))
}

/// One change-log row to append.
struct LogRow<'a> {
    kind: &'static str,
    slots: Vec<i16>,
    added: &'a [(String, String)],
    removed: &'a [(String, String)],
    gid: Option<&'a [u8]>,
    members: Option<Vec<&'a [u8]>>,
}

/// Appends to the change log and notifies, as the last step of a write transaction. The
/// advisory lock, held until commit, makes ids follow commit order: a reader that sees id `n`
/// committed sees every smaller id that will ever commit.
async fn log_change(tx: &Transaction<'_>, row: LogRow<'_>) -> Result<i64, Error> {
    let col = |pairs: &'_ [(String, String)], first: bool| -> Option<Vec<Vec<u8>>> {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(a, b)| if first { a } else { b }.as_bytes().to_vec())
                .collect()
        })
    };
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGE_LOCK])
        .await?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO changes (kind, slots, add_a, add_b, del_a, del_b, gid, members)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &row.kind,
                &row.slots,
                &col(row.added, true),
                &col(row.added, false),
                &col(row.removed, true),
                &col(row.removed, false),
                &row.gid,
                &row.members,
            ],
        )
        .await?
        .try_get(0)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id.to_string()])
        .await?;
    Ok(id)
}

/// Logs an edge effect (nothing when it is empty); returns the change id.
async fn log_edges(
    tx: &Transaction<'_>,
    added: &[(String, String)],
    removed: &[(String, String)],
) -> Result<Option<i64>, Error> {
    if added.is_empty() && removed.is_empty() {
        return Ok(None);
    }
    let slots = slots_of(
        added
            .iter()
            .chain(removed)
            .flat_map(|(a, b)| [a.as_str(), b.as_str()]),
    );
    let row = LogRow {
        kind: "edges",
        slots,
        added,
        removed,
        gid: None,
        members: None,
    };
    Ok(Some(log_change(tx, row).await?))
}

/// Runs a write, again while it fails with a transient error (the transaction rolled back).
macro_rules! retry {
    ($self:ident, $client:ident => $body:expr) => {{
        let mut attempt = 0;
        loop {
            let mut guard = $self.writer().await?;
            let $client: &mut Client = &mut guard;
            match $body.await {
                Err(e) if e.is_transient() && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "graph write rolled back; retrying");
                }
                r => break r,
            }
        }
    }};
}

/// Runs a read, once more on a fresh connection if the connection closed under it.
macro_rules! read {
    ($self:ident, $client:ident => $body:expr) => {{
        let mut attempt = 0;
        loop {
            let guard = $self.reader().await?;
            let $client: &Client = &guard;
            match $body.await.map_err(Error::from) {
                Err(e) if e.is_transient() && attempt < 1 => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "graph read failed; retrying");
                }
                r => break r,
            }
        }
    }};
}

impl Store {
    /// Connects (`postgres://user@host:port/db`; no TLS) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        let config: Config = url.parse()?;
        let store = Store {
            config,
            reader: Mutex::new(None),
            writer: Mutex::new(None),
            max_friends: None,
        };
        {
            let mut w = store.writer().await?;
            schema::migrate(&mut w).await?;
        }
        Ok(store)
    }

    /// Refuses, from now on, any write that would give a user more than `cap` friends (the
    /// nodes' `--max-friends`, which their engines hold to: a change they could not apply
    /// must not be committed). Concurrent friendship writes to the same users are serialised,
    /// so the cap holds exactly among them; a bulk load checks the users it touched as of its
    /// own commit.
    pub fn with_max_friends(mut self, cap: u32) -> Store {
        self.max_friends = Some(cap);
        self
    }

    /// The write connection, reopened if it broke.
    async fn writer(&self) -> Result<MappedMutexGuard<'_, Client>, Error> {
        let mut guard = self.writer.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let client = open(&self.config).await?;
            // Durable on return, whatever the server's default.
            client.batch_execute("SET synchronous_commit = on").await?;
            *guard = Some(client);
        }
        MutexGuard::try_map(guard, Option::as_mut).map_err(|_| Error::Closed)
    }

    /// The read connection, reopened if it broke; shared by concurrent reads.
    async fn reader(&self) -> Result<Arc<Client>, Error> {
        let mut guard = self.reader.lock().await;
        match guard.as_ref() {
            Some(c) if !c.is_closed() => Ok(Arc::clone(c)),
            _ => {
                let c = Arc::new(open(&self.config).await?);
                *guard = Some(Arc::clone(&c));
                Ok(c)
            }
        }
    }

    // ---- writes ----

    /// Adds and removes friendships in one transaction. Pairs already in the wanted state are
    /// no-ops; a self-pair, a bad id or a pair given twice refuses the whole request.
    pub async fn apply_friendships(
        &self,
        add: &[(&str, &str)],
        remove: &[(&str, &str)],
    ) -> Result<Applied, Error> {
        let (add, remove) = check_pairs(add, remove)?;
        let cap = self.max_friends;
        retry!(self, client => async {
            let tx = client.transaction().await?;
            lock_users(&tx, add.iter().flat_map(|&(a, b)| [a, b])).await?;
            let (added, removed) = write_edges(&tx, &add, &remove).await?;
            check_cap(&tx, cap, added.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()])).await?;
            let change = log_edges(&tx, &added, &removed).await?;
            tx.commit().await?;
            Ok::<_, Error>(Applied { added: added.len() as u64, removed: removed.len() as u64, change })
        })
    }

    /// Makes `friends` the friend list of `user` (edges stay symmetric: the other ends change
    /// too). Returns how many friendships were added and removed.
    pub async fn replace_friends(&self, user: &str, friends: &[&str]) -> Result<Applied, Error> {
        check_id("user", user)?;
        let wanted: Vec<(&str, &str)> = friends.iter().map(|&f| (user, f)).collect();
        check_pairs(&wanted, &[])?;
        let wanted: HashSet<&str> = friends.iter().copied().collect();
        let cap = self.max_friends;
        retry!(self, client => async {
            let tx = client.transaction().await?;
            lock_users(&tx, wanted.iter().copied().chain([user])).await?;
            let rows = tx
                .query(
                    "SELECT friend_id FROM edges WHERE user_id = $1 FOR UPDATE",
                    &[&user.as_bytes()],
                )
                .await?;
            let current = rows
                .iter()
                .map(|r| r.try_get::<_, Vec<u8>>(0).map_err(Error::from).and_then(id_from))
                .collect::<Result<HashSet<String>, Error>>()?;
            let add: Vec<(&str, &str)> = wanted
                .iter()
                .filter(|f| !current.contains(**f))
                .map(|&f| norm(user, f))
                .collect();
            let remove: Vec<(&str, &str)> = current
                .iter()
                .filter(|f| !wanted.contains(f.as_str()))
                .map(|f| norm(user, f))
                .collect();
            let (added, removed) = write_edges(&tx, &add, &remove).await?;
            check_cap(&tx, cap, added.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()])).await?;
            let change = log_edges(&tx, &added, &removed).await?;
            tx.commit().await?;
            Ok::<_, Error>(Applied { added: added.len() as u64, removed: removed.len() as u64, change })
        })
    }

    /// Creates or replaces a group; returns the change id, `None` if it already had exactly
    /// these members. The change lists the slots of its old and new members.
    pub async fn put_group(&self, gid: &str, members: &[&str]) -> Result<Option<i64>, Error> {
        check_id("group", gid)?;
        for m in members {
            check_id("user", m)?;
        }
        let new: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
        retry!(self, client => async {
            let tx = client.transaction().await?;
            let old: Option<Vec<Vec<u8>>> = tx
                .query_opt("SELECT members FROM groups WHERE gid = $1 FOR UPDATE", &[&gid.as_bytes()])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            if old.as_ref().is_some_and(|o| o.iter().map(Vec::as_slice).eq(new.iter().copied())) {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO groups (gid, members) VALUES ($1, $2)
                 ON CONFLICT (gid) DO UPDATE SET members = excluded.members",
                &[&gid.as_bytes(), &new],
            )
            .await?;
            let old = old.unwrap_or_default();
            let old_ids: Vec<&str> = old.iter().filter_map(|m| std::str::from_utf8(m).ok()).collect();
            let row = LogRow {
                kind: "put_group",
                slots: slots_of(members.iter().copied().chain(old_ids)),
                added: &[],
                removed: &[],
                gid: Some(gid.as_bytes()),
                members: Some(new.clone()),
            };
            let id = log_change(&tx, row).await?;
            tx.commit().await?;
            Ok::<_, Error>(Some(id))
        })
    }

    /// Removes a group; returns the change id, `None` if there was no such group.
    pub async fn delete_group(&self, gid: &str) -> Result<Option<i64>, Error> {
        check_id("group", gid)?;
        retry!(self, client => async {
            let tx = client.transaction().await?;
            let Some(row) = tx
                .query_opt("DELETE FROM groups WHERE gid = $1 RETURNING members", &[&gid.as_bytes()])
                .await?
            else {
                return Ok(None);
            };
            let old: Vec<Vec<u8>> = row.try_get(0)?;
            let old_ids: Vec<&str> = old.iter().filter_map(|m| std::str::from_utf8(m).ok()).collect();
            let row = LogRow {
                kind: "delete_group",
                slots: slots_of(old_ids),
                added: &[],
                removed: &[],
                gid: Some(gid.as_bytes()),
                members: None,
            };
            let id = log_change(&tx, row).await?;
            tx.commit().await?;
            Ok::<_, Error>(Some(id))
        })
    }

    /// Loads many friendships in one transaction through `COPY … FROM STDIN BINARY` (into a
    /// temporary table, then merged: friendships already there are skipped). Logs one
    /// [`ChangeKind::Reload`](crate::ChangeKind::Reload) naming the slots that gained edges.
    /// A bad pair anywhere refuses the whole load.
    pub async fn bulk_load<I, A, B>(&self, pairs: I) -> Result<Applied, Error>
    where
        I: IntoIterator<Item = (A, B)>,
        A: AsRef<str>,
        B: AsRef<str>,
    {
        let mut client = self.writer().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE bulk_edges (user_id bytea, friend_id bytea, slot smallint)
             ON COMMIT DROP",
        )
        .await?;
        let sink = tx
            .copy_in("COPY bulk_edges (user_id, friend_id, slot) FROM STDIN BINARY")
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::BYTEA, Type::BYTEA, Type::INT2]);
        pin_mut!(writer);
        for (a, b) in pairs {
            let (a, b) = (a.as_ref(), b.as_ref());
            check_id("user", a)?;
            check_id("user", b)?;
            if a == b {
                return Err(Error::SelfFriendship(a.to_owned()));
            }
            let (sa, sb) = (slot16(a), slot16(b));
            writer
                .as_mut()
                .write(&[&a.as_bytes(), &b.as_bytes(), &sa])
                .await?;
            writer
                .as_mut()
                .write(&[&b.as_bytes(), &a.as_bytes(), &sb])
                .await?;
        }
        writer.as_mut().finish().await?;
        let row = tx
            .query_one(
                "WITH ins AS (
                     INSERT INTO edges (user_id, friend_id, slot)
                     SELECT user_id, friend_id, slot FROM bulk_edges ORDER BY user_id, friend_id
                     ON CONFLICT DO NOTHING
                     RETURNING user_id < friend_id AS fwd, slot)
                 SELECT count(*) FILTER (WHERE fwd), coalesce(array_agg(DISTINCT slot), '{}')
                 FROM ins",
                &[],
            )
            .await?;
        let added: i64 = row.try_get(0)?;
        let slots: Vec<i16> = row.try_get(1)?;
        if let Some(cap) = self.max_friends
            && added > 0
        {
            // Every user the load touched, by the slots that gained edges (one pass).
            let over = tx
                .query(
                    "SELECT user_id, count(*) FROM edges
                     WHERE slot = ANY($1::smallint[])
                       AND user_id IN (SELECT user_id FROM bulk_edges)
                     GROUP BY user_id HAVING count(*) > $2 LIMIT 1",
                    &[&slots, &i64::from(cap)],
                )
                .await?;
            if let Some(r) = over.first() {
                return Err(Error::TooManyFriends {
                    user: id_from(r.try_get(0)?)?,
                    would_have: u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
                    cap,
                });
            }
        }
        let change = if added > 0 {
            let log = LogRow {
                kind: "reload",
                slots,
                added: &[],
                removed: &[],
                gid: None,
                members: None,
            };
            Some(log_change(&tx, log).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Applied {
            added: u64::try_from(added).unwrap_or(0),
            removed: 0,
            change,
        })
    }

    /// Records users' custom statuses (`(user, status, text)`, one per user, the latest):
    /// `available` with no text deletes the row. One transaction, rows locked in id order.
    pub async fn put_statuses(&self, rows: &[StatusRow]) -> Result<(), Error> {
        // The latest of a user's rows first, then the others dropped.
        let mut rows: Vec<&StatusRow> = rows.iter().rev().collect();
        for r in &rows {
            check_id("user", &r.user)?;
            if !STATUSES.contains(&r.status.as_str()) {
                return Err(Error::BadStatus(r.status.clone()));
            }
        }
        rows.sort_by(|a, b| a.user.cmp(&b.user));
        rows.dedup_by(|a, b| a.user == b.user);
        let (set, clear): (Vec<&StatusRow>, Vec<&StatusRow>) = rows
            .into_iter()
            .partition(|r| r.status != "available" || r.text.is_some());
        let users: Vec<&[u8]> = set.iter().map(|r| r.user.as_bytes()).collect();
        let slots: Vec<i16> = set.iter().map(|r| slot16(&r.user)).collect();
        let statuses: Vec<&str> = set.iter().map(|r| r.status.as_str()).collect();
        let texts: Vec<Option<&[u8]>> = set
            .iter()
            .map(|r| r.text.as_deref().map(str::as_bytes))
            .collect();
        let cleared: Vec<&[u8]> = clear.iter().map(|r| r.user.as_bytes()).collect();
        retry!(self, client => async {
            let tx = client.transaction().await?;
            if !users.is_empty() {
                tx.execute(
                    "INSERT INTO statuses (user_id, slot, status, text)
                     SELECT * FROM unnest($1::bytea[], $2::smallint[], $3::text[], $4::bytea[])
                     ON CONFLICT (user_id)
                     DO UPDATE SET status = excluded.status, text = excluded.text",
                    &[&users, &slots, &statuses, &texts],
                )
                .await?;
            }
            if !cleared.is_empty() {
                tx.execute(
                    "DELETE FROM statuses WHERE user_id = ANY($1::bytea[])",
                    &[&cleared],
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<(), Error>(())
        })
    }

    /// Drops change-log rows up to and including `id` (every owner has followed past it);
    /// returns how many.
    pub async fn prune_changes(&self, id: i64) -> Result<u64, Error> {
        let client = self.writer().await?;
        Ok(client
            .execute("DELETE FROM changes WHERE id <= $1", &[&id])
            .await?)
    }

    // ---- reads ----

    /// The friendships whose first user lives in one of `slots`, as directed pairs (user,
    /// friend): exactly what the owner of those slots holds in memory.
    pub async fn load_slots(&self, slots: &[u16]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        self.load_slots_with(slots, |u, f| out.push((u, f))).await?;
        Ok(out)
    }

    /// Like [`Store::load_slots`], handing each edge to `edge` as it streams in (`COPY … TO
    /// STDOUT BINARY`, no buffering of the whole result). Returns how many.
    pub async fn load_slots_with(
        &self,
        slots: &[u16],
        mut edge: impl FnMut(String, String),
    ) -> Result<u64, Error> {
        if let Some(&bad) = slots.iter().find(|&&s| s >= SLOTS) {
            return Err(Error::BadSlot(bad));
        }
        if slots.is_empty() {
            return Ok(0);
        }
        // COPY takes no parameters; slots are numbers checked above, so the list is safe.
        let list = slots
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "COPY (SELECT user_id, friend_id FROM edges WHERE slot IN ({list})) TO STDOUT BINARY"
        );
        // Retried only before the first row: a callback must not see an edge twice.
        let stream = read!(self, client => client.copy_out(sql.as_str()))?;
        let rows = BinaryCopyOutStream::new(stream, &[Type::BYTEA, Type::BYTEA]);
        pin_mut!(rows);
        let mut n = 0;
        while let Some(row) = rows.next().await {
            let row = row?;
            let u: &[u8] = row.try_get(0)?;
            let f: &[u8] = row.try_get(1)?;
            edge(id_from(u.to_vec())?, id_from(f.to_vec())?);
            n += 1;
        }
        Ok(n)
    }

    /// Raises the chat fences of `slots` to the epochs given (never lowers one): call it
    /// when taking slots, before serving them. From its return, a chat commit written under
    /// an older epoch for a writer in one of these slots is refused (see
    /// `chat_relay::WriteBatch::fences`); one in flight holds the fence rows it checked
    /// until it ends, so this waits for it. Rows are written in slot order, as commits lock
    /// them, so the two never deadlock.
    pub async fn fence_chat_slots(&self, slots: &[(u16, i64)]) -> Result<(), Error> {
        if let Some(&(bad, _)) = slots.iter().find(|(s, _)| *s >= SLOTS) {
            return Err(Error::BadSlot(bad));
        }
        if slots.is_empty() {
            return Ok(());
        }
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        let list: Vec<i16> = sorted
            .iter()
            .map(|&(s, _)| i16::try_from(s).unwrap_or(i16::MAX))
            .collect();
        let epochs: Vec<i64> = sorted.iter().map(|&(_, e)| e).collect();
        retry!(self, client => async {
            client
                .execute(
                    "INSERT INTO chat_fences (slot, epoch)
                     SELECT * FROM unnest($1::smallint[], $2::bigint[]) AS t(s, e) ORDER BY s
                     ON CONFLICT (slot)
                     DO UPDATE SET epoch = greatest(chat_fences.epoch, excluded.epoch)",
                    &[&list, &epochs],
                )
                .await
                .map_err(Error::from)
        })?;
        Ok(())
    }

    /// The custom statuses of the users in `slots` (users with none are `available`).
    pub async fn load_statuses(&self, slots: &[u16]) -> Result<Vec<StatusRow>, Error> {
        if let Some(&bad) = slots.iter().find(|&&s| s >= SLOTS) {
            return Err(Error::BadSlot(bad));
        }
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<i16> = slots
            .iter()
            .map(|&s| i16::try_from(s).unwrap_or(i16::MAX))
            .collect();
        let rows = read!(self, client => client.query(
            "SELECT user_id, status, text FROM statuses WHERE slot = ANY($1::smallint[])",
            &[&list]))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let text: Option<Vec<u8>> = r.try_get(2)?;
            out.push(StatusRow {
                user: id_from(r.try_get(0)?)?,
                status: r.try_get(1)?,
                text: text
                    .map(|t| {
                        String::from_utf8(t).map_err(|_| Error::BadStatus("text not UTF-8".into()))
                    })
                    .transpose()?,
            });
        }
        Ok(out)
    }

    /// A user's friends, sorted by their bytes.
    pub async fn friends(&self, user: &str) -> Result<Vec<String>, Error> {
        check_id("user", user)?;
        let rows = read!(self, client => client.query(
            "SELECT friend_id FROM edges WHERE user_id = $1 ORDER BY friend_id",
            &[&user.as_bytes()],
        ))?;
        rows.iter().map(|r| id_from(r.try_get(0)?)).collect()
    }

    /// A group's members, in the order they were put; `None` if there is no such group.
    pub async fn group(&self, gid: &str) -> Result<Option<Vec<String>>, Error> {
        check_id("group", gid)?;
        let row = read!(self, client => client.query_opt(
            "SELECT members FROM groups WHERE gid = $1",
            &[&gid.as_bytes()],
        ))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let members: Vec<Vec<u8>> = row.try_get(0)?;
        Ok(Some(
            members.into_iter().map(id_from).collect::<Result<_, _>>()?,
        ))
    }

    /// Every group with its members, sorted by gid.
    pub async fn groups(&self) -> Result<Vec<(String, Vec<String>)>, Error> {
        let rows = read!(self, client =>
            client.query("SELECT gid, members FROM groups ORDER BY gid", &[]))?;
        rows.iter()
            .map(|r| {
                let members: Vec<Vec<u8>> = r.try_get(1)?;
                Ok((
                    id_from(r.try_get(0)?)?,
                    members.into_iter().map(id_from).collect::<Result<_, _>>()?,
                ))
            })
            .collect()
    }

    /// Up to `limit` changes with an id above `after`, in commit order.
    pub async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, Error> {
        let sql = format!("{} WHERE id > $1 ORDER BY id LIMIT $2", change::SELECT);
        let rows = read!(self, client =>
            client.query(sql.as_str(), &[&after, &i64::from(limit)]))?;
        rows.iter().map(Change::from_row).collect()
    }

    /// The id of the last committed change (0 for none): read it before
    /// [`Store::load_slots`], then follow from it.
    pub async fn last_change_id(&self) -> Result<i64, Error> {
        let row = read!(self, client =>
            client.query_one("SELECT coalesce(max(id), 0) FROM changes", &[]))?;
        Ok(row.try_get(0)?)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, Error> {
        let row = read!(self, client =>
            client.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[]))?;
        Ok(row.try_get(0)?)
    }
}
