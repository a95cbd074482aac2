//! Where users' sessions belong: this node alone, or the cluster's slot map. The admin API's
//! `/v1/route` and `/v1/cluster` answer from here, the same shape on one node as on many.

use presence_cluster::{Member, SLOTS, slot_of};
use serde::Serialize;

/// The node's place: alone (every slot its own), or in a cluster.
pub enum Topology {
    /// No cluster flags: this node owns every user.
    Single(Member),
}

/// `GET /v1/route`'s answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RouteAnswer {
    pub user: String,
    pub slot: u16,
    pub node: String,
    pub ws: String,
    pub quic: String,
    pub lp: String,
}

/// One node in `GET /v1/cluster`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub ws: String,
    pub quic: String,
    pub admin: String,
    pub slots: usize,
}

/// `GET /v1/cluster`'s answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ClusterAnswer {
    pub nodes: Vec<ClusterNode>,
    pub slots: u16,
    pub epoch: i64,
}

impl Topology {
    /// This node's own record.
    pub fn me(&self) -> &Member {
        let Topology::Single(m) = self;
        m
    }

    /// Where `user`'s sessions belong now; `None` while no node surely owns its slot.
    pub fn route(&self, user: &str) -> Option<RouteAnswer> {
        let slot = slot_of(user.as_bytes());
        let Topology::Single(owner) = self;
        Some(RouteAnswer {
            user: user.to_owned(),
            slot: slot.get(),
            node: owner.id.clone(),
            ws: owner.ws.clone(),
            quic: owner.quic.clone(),
            lp: owner.lp.clone(),
        })
    }

    /// Members and their slot counts, for operators and load balancers.
    pub fn cluster(&self) -> ClusterAnswer {
        let Topology::Single(m) = self;
        ClusterAnswer {
            nodes: vec![ClusterNode {
                id: m.id.clone(),
                ws: m.ws.clone(),
                quic: m.quic.clone(),
                admin: m.admin.clone(),
                slots: usize::from(SLOTS),
            }],
            slots: SLOTS,
            epoch: 0,
        }
    }
}
