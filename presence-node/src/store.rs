//! Durable friend graph and groups, in an embedded redb database in the data folder.
//!
//! redb commits are durable when `commit` returns (fsync, copy-on-write pages with a
//! checksummed root), so a `kill -9` or a torn last write leaves the last committed state,
//! never a corrupt one. Edges are keyed by the two app user ids (smaller first), not by dense
//! ids: dense ids are assigned afresh at every start, and names make the file independent of
//! them.

use std::path::Path;

use anyhow::Context;
use presence_core::{EdgeDelta, Engine, UserId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const EDGES: TableDefinition<(&str, &str), ()> = TableDefinition::new("edges");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");

/// Why a write did not reach the disk.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The node's durable state.
pub struct Store {
    db: Database,
}

/// A change to the graph store, planned by the service and written by the driver before the
/// service applies it (write-ahead: a change the store refused never reaches the engine).
#[must_use = "write it with Store::write, then hand it to Service::apply_graph_write"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphWrite {
    /// Edges added and removed, with the app id of every dense id they name.
    Edges {
        delta: EdgeDelta,
        names: std::collections::HashMap<u32, String>,
    },
    PutGroup {
        gid: String,
        members: Vec<String>,
    },
    DeleteGroup {
        gid: String,
    },
}

impl GraphWrite {
    /// Whether it changes nothing (an edge request whose pairs were all in place already).
    pub fn is_noop(&self) -> bool {
        matches!(self, GraphWrite::Edges { delta, .. } if delta.added.is_empty() && delta.removed.is_empty())
    }
}

/// What a store held at start.
#[derive(Default)]
pub struct Loaded {
    pub edges: u64,
    pub groups: Vec<(String, Vec<String>)>,
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Database::create(path)
            .with_context(|| format!("opening the graph store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(EDGES)?;
        txn.open_table(GROUPS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Loads every edge into `engine` (interning names) and returns the groups.
    pub fn load_into(&self, engine: &Engine) -> anyhow::Result<Loaded> {
        let txn = self.db.begin_read()?;
        let edges = txn.open_table(EDGES)?;
        let mut batch: Vec<(UserId, UserId)> = Vec::with_capacity(65_536);
        let mut total = 0u64;
        for item in edges.iter()? {
            let (k, _) = item?;
            let (a, b) = k.value();
            let a = engine
                .intern(a)
                .with_context(|| format!("stored user id {a:?}"))?;
            let b = engine
                .intern(b)
                .with_context(|| format!("stored user id {b:?}"))?;
            batch.push((a, b));
            if batch.len() == batch.capacity() {
                total += engine.apply_friendships(&batch, &[])?.0;
                batch.clear();
            }
        }
        total += engine.apply_friendships(&batch, &[])?.0;
        let groups_table = txn.open_table(GROUPS)?;
        let mut groups = Vec::new();
        for item in groups_table.iter()? {
            let (k, v) = item?;
            let members: Vec<String> = serde_json::from_slice(v.value())
                .with_context(|| format!("stored group {:?}", k.value()))?;
            groups.push((k.value().to_owned(), members));
        }
        Ok(Loaded {
            edges: total,
            groups,
        })
    }

    /// Makes a planned change durable (one fsync); nothing for a no-op.
    pub fn write(&self, w: &GraphWrite) -> Result<(), StoreError> {
        match w {
            _ if w.is_noop() => Ok(()),
            GraphWrite::Edges { delta, names } => {
                self.commit_edges(delta, &|id| names.get(&id.0).cloned())
            }
            GraphWrite::PutGroup { gid, members } => self.put_group(gid, members),
            GraphWrite::DeleteGroup { gid } => self.delete_group(gid),
        }
    }

    /// Makes an edge change durable. `name` resolves every id in `delta`.
    fn commit_edges(
        &self,
        delta: &EdgeDelta,
        name: &dyn Fn(UserId) -> Option<String>,
    ) -> Result<(), StoreError> {
        let key = |a: UserId, b: UserId| -> Result<(String, String), StoreError> {
            let na = name(a).ok_or_else(|| StoreError(format!("no name for {a:?}")))?;
            let nb = name(b).ok_or_else(|| StoreError(format!("no name for {b:?}")))?;
            Ok(if na <= nb { (na, nb) } else { (nb, na) })
        };
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(EDGES).map_err(err)?;
            for &(a, b) in &delta.added {
                let (x, y) = key(a, b)?;
                t.insert((x.as_str(), y.as_str()), ()).map_err(err)?;
            }
            for &(a, b) in &delta.removed {
                let (x, y) = key(a, b)?;
                t.remove((x.as_str(), y.as_str())).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    fn put_group(&self, gid: &str, members: &[String]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(members).map_err(err)?;
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(GROUPS)
            .map_err(err)?
            .insert(gid, bytes.as_slice())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Removes a group (one that does not exist is no error).
    fn delete_group(&self, gid: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(GROUPS)
            .map_err(err)?
            .remove(gid)
            .map_err(err)?;
        txn.commit().map_err(err)
    }
}
