//! Where users' sessions belong: this node alone, or the cluster's slot map. The admin API's
//! `/v1/route` and `/v1/cluster` answer from here, the same shape on one node as on many.

use std::sync::Arc;

use presence_cluster::{Member, SLOTS, SlotMap, slot_of};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

/// The node's place: alone (every slot its own), or in a cluster.
pub enum Topology {
    /// No cluster flags: this node owns every user.
    Single(Member),
    /// In a cluster: this node's record, and the slot map as etcd says it now.
    Cluster {
        me: Member,
        map: watch::Receiver<Arc<SlotMap>>,
    },
}

/// `GET /v1/route`'s answer.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct RouteAnswer {
    pub user: String,
    /// CRC-16/XMODEM of the user id's bytes, mod 1024.
    pub slot: u16,
    /// The owning node's id.
    pub node: String,
    /// Its WebSocket address.
    pub ws: String,
    /// Its QUIC address.
    pub quic: String,
    /// Its long-poll base URL (the endpoints are under `/v1/lp/`).
    pub lp: String,
}

/// One node in `GET /v1/cluster`.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ClusterNode {
    pub id: String,
    /// WebSocket address.
    pub ws: String,
    /// QUIC address.
    pub quic: String,
    /// Admin API address.
    pub admin: String,
    /// How many slots it owns.
    pub slots: usize,
}

/// `GET /v1/cluster`'s answer.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ClusterAnswer {
    pub nodes: Vec<ClusterNode>,
    /// Slots in all (1024).
    pub slots: u16,
    /// The slot map's version (0 on a single node).
    pub epoch: i64,
}

impl Topology {
    /// This node's own record.
    pub fn me(&self) -> &Member {
        match self {
            Topology::Single(m) | Topology::Cluster { me: m, .. } => m,
        }
    }

    /// Where `user`'s sessions belong now; `None` while no node owns its slot.
    pub fn route(&self, user: &str) -> Option<RouteAnswer> {
        let slot = slot_of(user.as_bytes());
        let answer = |owner: &Member| RouteAnswer {
            user: user.to_owned(),
            slot: slot.get(),
            node: owner.id.clone(),
            ws: owner.ws.clone(),
            quic: owner.quic.clone(),
            lp: owner.lp.clone(),
        };
        match self {
            Topology::Single(owner) => Some(answer(owner)),
            Topology::Cluster { map, .. } => {
                map.borrow().route(user.as_bytes()).map(|r| answer(r.node))
            }
        }
    }

    /// Members and their slot counts, for operators and load balancers.
    pub fn cluster(&self) -> ClusterAnswer {
        let node = |m: &Member, slots| ClusterNode {
            id: m.id.clone(),
            ws: m.ws.clone(),
            quic: m.quic.clone(),
            admin: m.admin.clone(),
            slots,
        };
        match self {
            Topology::Single(m) => ClusterAnswer {
                nodes: vec![node(m, usize::from(SLOTS))],
                slots: SLOTS,
                epoch: 0,
            },
            Topology::Cluster { map, .. } => {
                let map = map.borrow();
                let counts = map.counts();
                ClusterAnswer {
                    nodes: map
                        .members()
                        .map(|m| node(m, counts.get(m.id.as_str()).copied().unwrap_or(0)))
                        .collect(),
                    slots: SLOTS,
                    epoch: map.epoch(),
                }
            }
        }
    }
}
