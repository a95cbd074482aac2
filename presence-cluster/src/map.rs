//! The cluster as every node sees it: the members and who owns each slot under which epoch,
//! as read from etcd, and the coordinator's plan to bring it to the rendezvous assignment.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::assign;
use crate::slot::{SLOTS, Slot, slot_of};

/// A node of the cluster, as it registers itself in etcd (under its lease, as JSON): its id
/// and the addresses others should use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// WebSocket address clients connect to.
    pub ws: String,
    /// QUIC address clients connect to.
    pub quic: String,
    /// Base URL of the long-poll endpoints (empty when it serves none).
    #[serde(default)]
    pub lp: String,
    /// Admin HTTP address.
    pub admin: String,
    /// QUIC address of the peer link (ALPN `presence-peer/1`).
    pub peer: String,
    /// The peer link's certificate (PEM, made at start): peers that dial this node trust
    /// exactly this one.
    #[serde(default)]
    pub peer_cert: String,
    /// Stopping: the coordinator moves its slots away, and gives it none.
    #[serde(default)]
    pub draining: bool,
}

/// Who owns a slot: a member's id, and the epoch (the etcd revision of the assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: Arc<str>,
    pub epoch: i64,
}

/// A slot's assignment as stored in etcd (the epoch is the key's revision, not stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub node: String,
}

/// Where a user's sessions belong now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub slot: Slot,
    pub epoch: i64,
    pub node: &'a Member,
}

/// Members and slot owners at one etcd revision.
#[derive(Debug, Clone)]
pub struct SlotMap {
    members: BTreeMap<String, Member>,
    slots: Vec<Option<Owner>>,
    revision: i64,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap::new()
    }
}

impl SlotMap {
    /// No members, no owners.
    pub fn new() -> SlotMap {
        SlotMap {
            members: BTreeMap::new(),
            slots: vec![None; usize::from(SLOTS)],
            revision: 0,
        }
    }

    /// The etcd revision this map reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn set_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    pub fn put_member(&mut self, m: Member) {
        self.members.insert(m.id.clone(), m);
    }

    pub fn remove_member(&mut self, id: &str) -> Option<Member> {
        self.members.remove(id)
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Records `slot`'s owner; returns the one it replaces.
    pub fn set_owner(&mut self, slot: Slot, owner: Option<Owner>) -> Option<Owner> {
        std::mem::replace(&mut self.slots[slot.index()], owner)
    }

    pub fn owner(&self, slot: Slot) -> Option<&Owner> {
        self.slots[slot.index()].as_ref()
    }

    /// Where `user`'s sessions belong: `None` while its slot has no owner, or its owner is
    /// not (yet, or any longer) a member.
    pub fn route(&self, user: &[u8]) -> Option<Route<'_>> {
        let slot = slot_of(user);
        let owner = self.owner(slot)?;
        Some(Route {
            slot,
            epoch: owner.epoch,
            node: self.members.get(&*owner.node)?,
        })
    }

    /// The slots `node` owns.
    pub fn slots_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (Slot, i64)> + 'a {
        Slot::all().filter_map(move |s| {
            self.owner(s)
                .filter(|o| &*o.node == node)
                .map(|o| (s, o.epoch))
        })
    }

    /// How many slots each member owns (members with none included).
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut c: BTreeMap<&str, usize> = self.members.keys().map(|k| (k.as_str(), 0)).collect();
        for o in self.slots.iter().flatten() {
            if let Some(n) = c.get_mut(&*o.node) {
                *n += 1;
            }
        }
        c
    }

    /// The highest epoch of any slot (the cluster's epoch for `/v1/cluster`).
    pub fn epoch(&self) -> i64 {
        self.slots
            .iter()
            .flatten()
            .map(|o| o.epoch)
            .max()
            .unwrap_or(0)
    }

    /// The coordinator's plan: every slot whose owner is not the rendezvous choice among the
    /// members that are not draining, with that choice. Empty when no member can take slots
    /// (the slots of draining members then stay where they are).
    pub fn plan(&self) -> Vec<(Slot, String)> {
        let live: Vec<&str> = self
            .members
            .values()
            .filter(|m| !m.draining)
            .map(|m| m.id.as_str())
            .collect();
        if live.is_empty() {
            return Vec::new();
        }
        Slot::all()
            .filter_map(|s| {
                let want = assign::owner(s, live.iter().copied())?;
                match self.owner(s) {
                    Some(o) if &*o.node == want => None,
                    _ => Some((s, want.to_owned())),
                }
            })
            .collect()
    }
}

/// Where the cluster's records live in etcd, under one prefix per cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Records under `prefix` (e.g. `/presence/`); a trailing slash is added if missing.
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// Everything of this cluster: members, slots and the leader key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>members/`: one key per node, under its lease.
    pub fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    pub fn member(&self, id: &str) -> String {
        format!("{}members/{id}", self.prefix)
    }

    /// `<prefix>slots/`: one key per assigned slot, `slots/0042`.
    pub fn slots(&self) -> String {
        format!("{}slots/", self.prefix)
    }

    pub fn slot(&self, s: Slot) -> String {
        format!("{}slots/{:04}", self.prefix, s.get())
    }

    /// `<prefix>leader`: the coordinator's key, under its lease.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// The slot a `slots/NNNN` key names.
    pub fn parse_slot(&self, key: &[u8]) -> Option<Slot> {
        let rest = key.strip_prefix(self.slots().as_bytes())?;
        let n: u16 = std::str::from_utf8(rest).ok()?.parse().ok()?;
        Slot::new(n)
    }

    /// The node id a `members/ID` key names.
    pub fn parse_member<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(self.members().as_bytes())?;
        std::str::from_utf8(rest).ok().filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            ws: format!("{id}:1"),
            quic: format!("{id}:2"),
            lp: String::new(),
            admin: format!("{id}:3"),
            peer: format!("{id}:4"),
            peer_cert: String::new(),
            draining: false,
        }
    }

    fn apply(map: &mut SlotMap, plan: Vec<(Slot, String)>, epoch: i64) {
        for (s, n) in plan {
            map.set_owner(
                s,
                Some(Owner {
                    node: n.into(),
                    epoch,
                }),
            );
        }
    }

    #[test]
    fn plan_assigns_everything_then_nothing() {
        let mut map = SlotMap::new();
        assert!(map.plan().is_empty(), "no members, nothing to do");
        for id in ["a", "b", "c"] {
            map.put_member(member(id));
        }
        let plan = map.plan();
        assert_eq!(plan.len(), usize::from(SLOTS));
        apply(&mut map, plan, 7);
        assert!(map.plan().is_empty());
        assert_eq!(map.counts().values().sum::<usize>(), 1024);
        assert_eq!(map.epoch(), 7);
    }

    #[test]
    fn draining_and_departed_members_lose_their_slots() {
        let mut map = SlotMap::new();
        for id in ["a", "b", "c"] {
            map.put_member(member(id));
        }
        let plan = map.plan();
        apply(&mut map, plan, 1);
        let b_had = map.slots_of("b").count();
        map.put_member(Member {
            draining: true,
            ..member("b")
        });
        let plan = map.plan();
        assert_eq!(plan.len(), b_had);
        assert!(
            plan.iter()
                .all(|(s, n)| n != "b" && map.owner(*s).is_some_and(|o| &*o.node == "b"))
        );
        apply(&mut map, plan, 2);
        assert_eq!(map.slots_of("b").count(), 0);
        // c's lease expires: its slots go to a.
        map.remove_member("c");
        let plan = map.plan();
        assert!(plan.iter().all(|(_, n)| n == "a"));
        apply(&mut map, plan, 3);
        assert_eq!(map.counts().get("a"), Some(&1024));
    }

    #[test]
    fn routes_only_to_members() {
        let mut map = SlotMap::new();
        assert!(map.route(b"alice").is_none());
        map.put_member(member("a"));
        let plan = map.plan();
        apply(&mut map, plan, 5);
        let r = map.route(b"alice").expect("routed");
        assert_eq!(
            (r.node.id.as_str(), r.epoch, r.slot),
            ("a", 5, slot_of(b"alice"))
        );
        map.remove_member("a");
        assert!(map.route(b"alice").is_none(), "the owner left: nowhere yet");
    }

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/presence");
        let s = Slot::new(42).expect("slot");
        assert_eq!(k.slot(s), "/presence/slots/0042");
        assert_eq!(k.parse_slot(k.slot(s).as_bytes()), Some(s));
        assert_eq!(k.parse_slot(b"/presence/slots/1024"), None);
        assert_eq!(k.parse_slot(b"/presence/slots/x"), None);
        assert_eq!(k.parse_member(k.member("n1").as_bytes()), Some("n1"));
        assert_eq!(k.parse_member(b"/presence/members/"), None);
        assert_eq!(k.leader(), "/presence/leader");
    }
}
