//! Who owns which user in a simulated cluster of `nodes` nodes named `n0..n{nodes-1}`: the
//! real slot hash (`presence_cluster::slot_of` of the user id `u{id}` as the node sees it) and
//! the real rendezvous assignment (`presence_cluster::assign::owner`), precomputed per user so
//! the generator and the peer accounting ask in O(1).

use anyhow::{Result, bail};
use presence_cluster::{SLOTS, Slot, assign, slot_of};

/// The slot and owning node of every user of a generated graph.
#[derive(Debug, Clone)]
pub struct Ownership {
    /// This node's index.
    pub node: u8,
    pub nodes: u8,
    /// Owning node of each slot.
    slot_node: Vec<u8>,
    /// Slot of each user.
    user_slot: Vec<u16>,
    /// Users owned by `node`.
    pub owned_users: u64,
}

/// The node names the simulated cluster uses.
pub fn node_names(nodes: u8) -> Vec<String> {
    (0..nodes).map(|i| format!("n{i}")).collect()
}

/// The app's user id of dense id `id`, as the graph generator and the replay name users.
pub fn user_name(id: u32) -> String {
    format!("u{id}")
}

impl Ownership {
    pub fn new(users: u32, nodes: u8, node: u8) -> Result<Self> {
        if nodes == 0 || node >= nodes {
            bail!("--node must be below --nodes (got node {node} of {nodes})");
        }
        let names = node_names(nodes);
        let mut slot_node = Vec::with_capacity(usize::from(SLOTS));
        for slot in Slot::all() {
            let Some(owner) = assign::owner(slot, names.iter().map(String::as_str)) else {
                bail!("no owner for slot {slot}");
            };
            let Some(i) = names.iter().position(|n| n == owner) else {
                bail!("owner {owner} is not a node name");
            };
            slot_node.push(i as u8);
        }
        let mut user_slot = Vec::with_capacity(users as usize);
        let mut buf = String::with_capacity(12);
        let mut owned_users = 0u64;
        for id in 0..users {
            use std::fmt::Write;
            buf.clear();
            let _ = write!(buf, "u{id}");
            let s = slot_of(buf.as_bytes()).get();
            owned_users += u64::from(slot_node[usize::from(s)] == node);
            user_slot.push(s);
        }
        Ok(Self {
            node,
            nodes,
            slot_node,
            user_slot,
            owned_users,
        })
    }

    pub fn users(&self) -> u32 {
        self.user_slot.len() as u32
    }

    #[inline]
    pub fn slot(&self, user: u32) -> u16 {
        self.user_slot[user as usize]
    }

    #[inline]
    pub fn node_of(&self, user: u32) -> u8 {
        self.slot_node[usize::from(self.user_slot[user as usize])]
    }

    #[inline]
    pub fn owned(&self, user: u32) -> bool {
        self.node_of(user) == self.node
    }

    /// Slots owned by `node`.
    pub fn slots_of(&self, node: u8) -> usize {
        self.slot_node.iter().filter(|&&n| n == node).count()
    }

    /// Owned users, ascending.
    pub fn owned_list(&self) -> Vec<u32> {
        (0..self.users()).filter(|&u| self.owned(u)).collect()
    }
}
