//! The friend graph and groups of a presence cluster, kept in PostgreSQL.
//!
//! In cluster mode (`--store postgres://…`) no node holds the whole graph: each holds the
//! friend lists of the users in the slots it owns ([`presence_cluster::slot_of`]) and loads
//! them when it takes a slot. Admin writes may arrive at any node; each is one transaction that
//! also appends its effect to an ordered change log and `NOTIFY`s [`CHANNEL`], so the owners of
//! both ends of a friendship learn of it. Ids are any 1–128 bytes of UTF-8 (NUL included) and
//! are stored as `bytea`.
//!
//! # Schema ([`schema::MIGRATIONS`])
//!
//! - `edges (user_id bytea, friend_id bytea, slot smallint)`: both directions of every
//!   friendship, `slot` = the slot of `user_id`; primary key `(user_id, friend_id)`, index on
//!   `slot`, so loading a set of slots is one indexed query.
//! - `groups (gid bytea primary key, members bytea[])`.
//! - `statuses (user_id bytea primary key, slot, status, text bytea)`: custom statuses other
//!   than a plain `available`, loaded with a slot so that its new owner shows what the user
//!   set (invisible above all) after a failover or handover.
//! - `changes (id bigserial, kind, slots smallint[], …)`: one row per write. Appends are
//!   serialised by an advisory lock held until commit, so ids follow commit order and a
//!   follower's cursor never skips a change that commits later.
//! - `schema_version`: migrations run at connect under an advisory lock; nodes starting
//!   together migrate once.
//!
//! # What a node does
//!
//! ```no_run
//! # async fn node() -> Result<(), presence_pg::Error> {
//! use presence_pg::{ChangeKind, Listener, Notice, Store};
//!
//! let url = "postgres://presence@db:5432/presence";
//! let store = Store::connect(url).await?; // migrates if needed
//! let mut listener = Listener::start(url)?; // LISTEN, reconnecting by itself
//!
//! // Taking slots: read the cursor first, then load; replaying changes after the cursor on
//! // top of the load is harmless (edges are a set).
//! let owned: Vec<u16> = vec![3, 17, 900];
//! let mut cursor = store.last_change_id().await?;
//! for (user, friend) in store.load_slots(&owned).await? {
//!     // engine.add_friendship(user, friend) …
//! #   let _ = (user, friend);
//! }
//!
//! // Any node may write; the call returns once the commit is durable.
//! let applied = store.apply_friendships(&[("alice", "bob")], &[]).await?;
//! # let _ = applied;
//! store.replace_friends("carol", &["alice", "dave"]).await?;
//! store.put_group("team", &["alice", "bob"]).await?;
//!
//! // Following: on every notice (or a timer, in case one was lost), read the log from the
//! // cursor until it is drained, applying what touches owned slots.
//! while let Some(notice) = listener.next().await {
//!     if matches!(notice, Notice::Change(id) if id <= cursor) {
//!         continue;
//!     }
//!     loop {
//!         let batch = store.changes_after(cursor, 1000).await?;
//!         for change in &batch {
//!             cursor = change.id;
//!             if !change.slots.iter().any(|s| owned.contains(s)) {
//!                 continue;
//!             }
//!             match &change.kind {
//!                 ChangeKind::Edges { added, removed } => { /* both ends, where owned */ }
//!                 ChangeKind::PutGroup { gid, members } => {}
//!                 ChangeKind::DeleteGroup { gid } => {}
//!                 ChangeKind::Reload => { /* load_slots(owned ∩ change.slots) again */ }
//!             }
//!         }
//!         if batch.len() < 1000 {
//!             break;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod change;
pub mod chat;
mod error;
mod listener;
pub mod schema;
mod store;

pub use change::{Change, ChangeKind};
pub use chat::PgChatStore;
pub use error::{Error, MAX_ID_BYTES};
pub use listener::{Listener, Notice};
pub use schema::CHANNEL;
pub use store::{Applied, StatusRow, Store};
