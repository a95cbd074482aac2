//! The tables, created and upgraded at connect. Every node runs the migrations when it starts;
//! a transaction-scoped advisory lock makes the first one do the work and the others wait and
//! then find nothing left to do, so several nodes may start at once.

use crate::Error;
use tokio_postgres::Client;

/// Advisory lock key of the migrations ("presence" in ASCII, then 1).
pub(crate) const MIGRATION_LOCK: i64 = 0x7072_6573_656e_0001;
/// Advisory lock key serialising appends to the change log, so that ids commit in order.
pub(crate) const CHANGE_LOCK: i64 = 0x7072_6573_656e_0002;
/// Advisory lock key serialising the claims of chat node numbers.
pub(crate) const CHAT_NODE_LOCK: i64 = 0x7072_6573_656e_0003;

/// The `NOTIFY` channel; the payload is the id of the change just committed.
pub const CHANNEL: &str = "presence_graph";

/// The migrations, in order; version `i + 1` is `MIGRATIONS[i]`. Append only: never edit one
/// that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: directed edges (both directions of each friendship), groups, the change log.
    "CREATE TABLE edges (
         user_id   bytea    NOT NULL CHECK (octet_length(user_id) BETWEEN 1 AND 128),
         friend_id bytea    NOT NULL CHECK (octet_length(friend_id) BETWEEN 1 AND 128),
         slot      smallint NOT NULL CHECK (slot BETWEEN 0 AND 1023),
         PRIMARY KEY (user_id, friend_id),
         CHECK (user_id <> friend_id)
     );
     CREATE INDEX edges_slot ON edges (slot);
     CREATE TABLE groups (
         gid     bytea   PRIMARY KEY CHECK (octet_length(gid) BETWEEN 1 AND 128),
         members bytea[] NOT NULL
     );
     CREATE TABLE changes (
         id      bigserial   PRIMARY KEY,
         at      timestamptz NOT NULL DEFAULT now(),
         kind    text        NOT NULL
                 CHECK (kind IN ('edges', 'put_group', 'delete_group', 'reload')),
         slots   smallint[]  NOT NULL,
         add_a   bytea[],
         add_b   bytea[],
         del_a   bytea[],
         del_b   bytea[],
         gid     bytea,
         members bytea[]
     );",
    // 2: users' custom statuses, so that a slot's new owner (after a failover or a handover)
    // shows friends what the user set, invisible above all. Only statuses other than
    // `available` with no text have a row. The text is UTF-8 in `bytea`, as ids are: a
    // client may send a NUL, which PostgreSQL's `text` refuses.
    "CREATE TABLE statuses (
         user_id bytea    PRIMARY KEY CHECK (octet_length(user_id) BETWEEN 1 AND 128),
         slot    smallint NOT NULL CHECK (slot BETWEEN 0 AND 1023),
         status  text     NOT NULL CHECK (status IN ('available', 'busy', 'dnd', 'invisible')),
         text    bytea    CHECK (octet_length(text) <= 1024)
     );
     CREATE INDEX statuses_slot ON statuses (slot);",
    // 3: chat (`chat::PgChatStore`): messages with their conversation's history key, inbox
    // logs keyed by (owner, seq), dedupe keyed by (sender, client id), device acks, and the
    // inbox heads a commit numbers entries from when several nodes write (`chat_heads`).
    // Message ids are bigint with the top bit flipped (their u64 order).
    "CREATE TABLE chat_messages (
         msg_id      bigint   PRIMARY KEY,
         sender      bytea    NOT NULL,
         target_kind smallint NOT NULL CHECK (target_kind IN (0, 1)),
         target      bytea    NOT NULL,
         conv        bytea    NOT NULL,
         text        bytea    NOT NULL,
         ts          bigint   NOT NULL,
         edited_ts   bigint,
         deleted     boolean  NOT NULL,
         client_id   bytea    NOT NULL
     );
     CREATE INDEX chat_messages_conv ON chat_messages (conv, msg_id);
     CREATE INDEX chat_messages_ts ON chat_messages (ts);
     CREATE TABLE chat_inbox (
         owner       bytea    NOT NULL,
         seq         bigint   NOT NULL CHECK (seq > 0),
         kind        smallint NOT NULL CHECK (kind BETWEEN 0 AND 3),
         msg_id      bigint   NOT NULL,
         sender      bytea    NOT NULL,
         target_kind smallint NOT NULL CHECK (target_kind IN (0, 1)),
         target      bytea    NOT NULL,
         text        bytea,
         ts          bigint   NOT NULL,
         PRIMARY KEY (owner, seq)
     );
     CREATE TABLE chat_dedupe (
         sender    bytea  NOT NULL,
         client_id bytea  NOT NULL,
         msg_id    bigint NOT NULL,
         ts        bigint NOT NULL,
         PRIMARY KEY (sender, client_id)
     );
     CREATE TABLE chat_acks (
         owner  bytea  NOT NULL,
         device bytea  NOT NULL,
         seq    bigint NOT NULL,
         PRIMARY KEY (owner, device)
     );
     CREATE TABLE chat_heads (
         owner bytea  PRIMARY KEY,
         head  bigint NOT NULL
     );",
    // 4: chat in a cluster — each node name's number in its message ids (unique, 0-1023),
    // and each slot's chat fence: the epoch of its latest owner, raised when a node takes it;
    // a commit written under an older epoch for any of its writers' slots is refused.
    "CREATE TABLE chat_nodes (
         name bytea   PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 128),
         num  integer NOT NULL UNIQUE CHECK (num BETWEEN 0 AND 1023)
     );
     CREATE TABLE chat_fences (
         slot  smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 1023),
         epoch bigint   NOT NULL
     );",
];

/// The schema version this build writes.
pub fn latest() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Brings the database to [`latest`] in one transaction; returns the version found before.
pub(crate) async fn migrate(client: &mut Client) -> Result<i32, Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    if found > latest() {
        return Err(Error::SchemaTooNew {
            found,
            known: latest(),
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "migrated the graph schema");
    }
    tx.commit().await?;
    Ok(found)
}
