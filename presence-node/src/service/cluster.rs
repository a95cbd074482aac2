//! The service's view of a cluster (cluster mode only): which slots this node serves now,
//! and where every other user's sessions belong. The driver keeps it from etcd (the slot map
//! and the lease fence, through a [`presence_cluster::SlotTable`]); the service answers
//! `hello` from it, with `moved` or `unavailable` for users it does not serve.

use std::sync::Arc;

use presence_cluster::{SLOTS, Slot, SlotMap, SlotTable, slot_of};
use presence_wire::ErrorCode;

/// What the service routes by.
#[derive(Debug, Clone)]
pub struct Routes {
    me: String,
    serving: Vec<bool>,
    map: Arc<SlotMap>,
}

/// Why a user's session does not start here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elsewhere {
    /// Another node owns the user's slot: its client addresses.
    Moved {
        node: String,
        ws: String,
        quic: String,
        lp: String,
    },
    /// No node serves it right now.
    Unavailable(&'static str),
}

impl Elsewhere {
    pub fn code(&self) -> ErrorCode {
        match self {
            Elsewhere::Moved { .. } => ErrorCode::Moved,
            Elsewhere::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

impl Routes {
    /// The view of node `me` after `table` took in `map`.
    pub fn new(me: &str, table: &SlotTable, map: Arc<SlotMap>) -> Routes {
        Routes {
            me: me.to_owned(),
            serving: Slot::all().map(|s| table.serving(s).is_some()).collect(),
            map,
        }
    }

    /// Nothing served (before the first view).
    pub fn none(me: &str) -> Routes {
        Routes {
            me: me.to_owned(),
            serving: vec![false; usize::from(SLOTS)],
            map: Arc::new(SlotMap::new()),
        }
    }

    /// Whether sessions of users in `slot` are served here now.
    pub fn serves(&self, slot: Slot) -> bool {
        self.serving[slot.index()]
    }

    /// `None` when `user`'s sessions belong here now; else where they go.
    pub fn elsewhere(&self, user: &str) -> Option<Elsewhere> {
        let slot = slot_of(user.as_bytes());
        if self.serves(slot) {
            return None;
        }
        Some(match self.map.route(user.as_bytes()) {
            Some(r) if r.node.id != self.me => Elsewhere::Moved {
                node: r.node.id.clone(),
                ws: r.node.ws.clone(),
                quic: r.node.quic.clone(),
                lp: r.node.lp.clone(),
            },
            Some(_) => {
                Elsewhere::Unavailable("this node is taking this user's slot: retry shortly")
            }
            None => {
                Elsewhere::Unavailable("no node owns this user's slot right now: retry shortly")
            }
        })
    }
}
