//! The change log: every write appends one row in its own transaction, in commit order, so an
//! owner that follows it from a known id sees every change to its slots exactly in the order
//! the database applied them.

use crate::Error;
use crate::error::id_from;
use tokio_postgres::Row;

/// One committed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Strictly increasing in commit order (not gap-free: a rolled-back write skips ids).
    pub id: i64,
    /// The slots of every user the change touches, ascending, each once.
    pub slots: Vec<u16>,
    pub kind: ChangeKind,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Friendships that were actually added or removed (each pair once, smaller id first);
    /// pairs already in the wanted state are left out.
    Edges {
        added: Vec<(String, String)>,
        removed: Vec<(String, String)>,
    },
    /// A group created or replaced.
    PutGroup { gid: String, members: Vec<String> },
    /// A group removed.
    DeleteGroup { gid: String },
    /// Edges were bulk-loaded into these slots: an owner reloads them ([`crate::Store::load_slots`]).
    Reload,
}

pub(crate) const SELECT: &str =
    "SELECT id, kind, slots, add_a, add_b, del_a, del_b, gid, members FROM changes";

impl Change {
    pub(crate) fn from_row(row: &Row) -> Result<Change, Error> {
        let id: i64 = row.try_get(0)?;
        let kind: &str = row.try_get(1)?;
        let slots: Vec<i16> = row.try_get(2)?;
        let slots = slots
            .into_iter()
            .map(|s| u16::try_from(s).map_err(|_| Error::Corrupt(format!("slot {s}"))))
            .collect::<Result<Vec<u16>, Error>>()?;
        let pairs = |a: usize, b: usize| -> Result<Vec<(String, String)>, Error> {
            let a: Option<Vec<Vec<u8>>> = row.try_get(a)?;
            let b: Option<Vec<Vec<u8>>> = row.try_get(b)?;
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            if a.len() != b.len() {
                return Err(Error::Corrupt(format!("change {id}: unpaired ids")));
            }
            a.into_iter()
                .zip(b)
                .map(|(a, b)| Ok((id_from(a)?, id_from(b)?)))
                .collect()
        };
        let gid = || -> Result<String, Error> {
            let g: Option<Vec<u8>> = row.try_get(7)?;
            id_from(g.ok_or_else(|| Error::Corrupt(format!("change {id}: no gid")))?)
        };
        let kind = match kind {
            "edges" => ChangeKind::Edges {
                added: pairs(3, 4)?,
                removed: pairs(5, 6)?,
            },
            "put_group" => {
                let members: Option<Vec<Vec<u8>>> = row.try_get(8)?;
                ChangeKind::PutGroup {
                    gid: gid()?,
                    members: members
                        .unwrap_or_default()
                        .into_iter()
                        .map(id_from)
                        .collect::<Result<_, _>>()?,
                }
            }
            "delete_group" => ChangeKind::DeleteGroup { gid: gid()? },
            "reload" => ChangeKind::Reload,
            other => return Err(Error::Corrupt(format!("change {id}: kind {other:?}"))),
        };
        Ok(Change { id, slots, kind })
    }
}
