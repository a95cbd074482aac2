//! What the app's backend can ask of the node: friend lists, friendships, groups, presence
//! queries, tokens, health. Validation and the all-or-nothing rules live here; the HTTP
//! layer (`crate::admin`) only parses bodies and maps [`AdminError`] to status codes.
//!
//! A write is planned here (validated against the graph as it is, nothing changed) as a
//! [`GraphWrite`]; the driver makes it durable in the graph store and then hands it back to
//! [`Service::apply_graph_write`], with no other admin write in between (it serialises them).
//! An edge write's answer names the tick that publishes it; the driver answers once that tick
//! has been handed out, so every welcome after the answer reflects the change
//! (read-your-writes).

use std::collections::HashMap;
use std::sync::Arc;

use presence_core::{Interner, UserId};
use presence_wire::PresenceEntry;

use super::Service;
use crate::frames;
use crate::metrics as m;
use crate::store::GraphWrite;
use crate::token;

/// Most users one presence query may name.
pub const MAX_QUERY: usize = 10_000;

/// Why an admin call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong (400).
    #[error("{0}")]
    Bad(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The node failed (500); nothing changed.
    #[error("{0}")]
    Internal(String),
    /// Not served by this node as it runs (503).
    #[error("{0}")]
    Unavailable(String),
}

fn bad(msg: impl Into<String>) -> AdminError {
    AdminError::Bad(msg.into())
}

/// The core's id rule (1 to 128 bytes), for user and group ids alike.
pub fn check_id(what: &str, id: &str) -> Result<(), AdminError> {
    Interner::check(id).map_err(|e| bad(format!("{what} {id:?}: {e}")))
}

/// An edge change that was applied: its counts and the tick that publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgesApplied {
    pub added: u64,
    pub removed: u64,
    /// Answer once this tick is handed out (`None`: nothing changed, answer at once).
    pub published_by: Option<u64>,
}

impl EdgesApplied {
    /// What a write that is not an edge change answers.
    pub const NONE: EdgesApplied = EdgesApplied {
        added: 0,
        removed: 0,
        published_by: None,
    };
}

/// The node's health, for probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub users: usize,
    pub edges: u64,
    pub sessions: usize,
}

impl Service {
    /// Interns names, remembering each id's name for the durable write.
    fn intern_all<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        known: &mut HashMap<u32, String>,
    ) -> Result<Vec<UserId>, AdminError> {
        names
            .map(|n| {
                check_id("user id", n)?;
                let id = self.engine.intern(n).map_err(|e| bad(e.to_string()))?;
                known.entry(id.0).or_insert_with(|| n.to_owned());
                Ok(id)
            })
            .collect()
    }

    /// An engine error with app ids instead of dense ids.
    fn describe(&self, e: &presence_core::Error) -> String {
        use presence_core::Error as E;
        let name = |u: UserId| self.engine.name(u).unwrap_or_else(|| format!("#{}", u.0));
        match e {
            E::SelfFriendship(u) => format!("user {:?} cannot be their own friend", name(*u)),
            E::DuplicateEdge(a, b) => format!(
                "the pair ({:?}, {:?}) appears twice in one request",
                name(*a),
                name(*b)
            ),
            E::TooManyFriends {
                user,
                would_have,
                cap,
            } => format!(
                "user {:?} would have {would_have} friends, over the cap of {cap}",
                name(*user)
            ),
            E::UnknownUser(u) => format!("unknown user {:?}", name(*u)),
            other => other.to_string(),
        }
    }

    /// An edge change planned against the graph as it is: validated, pairs already in place
    /// left out, with the name of every user it touches for the store.
    fn plan_edges(
        &self,
        add: &[(UserId, UserId)],
        remove: &[(UserId, UserId)],
        mut names: HashMap<u32, String>,
    ) -> Result<GraphWrite, AdminError> {
        let delta = self
            .engine
            .plan_friendships(add, remove)
            .map_err(|e| bad(self.describe(&e)))?;
        for &(a, b) in delta.added.iter().chain(&delta.removed) {
            for id in [a, b] {
                if let std::collections::hash_map::Entry::Vacant(v) = names.entry(id.0)
                    && let Some(n) = self.engine.name(id)
                {
                    v.insert(n);
                }
            }
        }
        Ok(GraphWrite::Edges { delta, names })
    }

    /// Plans replacing `user`'s friend list (edges stay symmetric).
    pub fn plan_put_friends(
        &self,
        user: &str,
        friends: &[String],
    ) -> Result<GraphWrite, AdminError> {
        check_id("user id", user)?;
        let mut known = HashMap::new();
        let ids = self.intern_all(std::iter::once(user), &mut known)?;
        let user = ids[0];
        let friends = self.intern_all(friends.iter().map(String::as_str), &mut known)?;
        let (add, remove) = self
            .engine
            .replace_plan(user, &friends)
            .map_err(|e| bad(self.describe(&e)))?;
        self.plan_edges(&add, &remove, known)
    }

    /// Plans bulk edge changes.
    pub fn plan_friendships(
        &self,
        add: &[(String, String)],
        remove: &[(String, String)],
    ) -> Result<GraphWrite, AdminError> {
        let mut known = HashMap::new();
        let mut pairs = |list: &[(String, String)]| -> Result<Vec<(UserId, UserId)>, AdminError> {
            let ids = self.intern_all(
                list.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]),
                &mut known,
            )?;
            Ok(ids.chunks(2).map(|c| (c[0], c[1])).collect())
        };
        let add = pairs(add)?;
        let remove = pairs(remove)?;
        self.plan_edges(&add, &remove, known)
    }

    /// Applies a write the driver has made durable. For edges: the counts and the tick that
    /// publishes them.
    pub fn apply_graph_write(&self, w: GraphWrite) -> EdgesApplied {
        match w {
            GraphWrite::Edges { delta, .. } => {
                let (added, removed) = self.engine.apply_planned(&delta);
                let fp = self.engine.footprint();
                metrics::gauge!(m::EDGES).set(fp.edges as f64);
                metrics::gauge!(m::USERS).set(fp.users as f64);
                EdgesApplied {
                    added,
                    removed,
                    published_by: (added + removed > 0).then(|| self.engine.published_tick() + 1),
                }
            }
            GraphWrite::PutGroup { gid, members } => {
                self.groups
                    .write()
                    .insert(gid.clone(), members.clone().into());
                self.group_changed(&gid, Some(&members));
                EdgesApplied::NONE
            }
            GraphWrite::DeleteGroup { gid } => {
                self.groups.write().remove(&gid);
                self.group_changed(&gid, None);
                EdgesApplied::NONE
            }
        }
    }

    /// The graph store, where the driver writes planned changes.
    pub fn graph_store(&self) -> &crate::store::Store {
        &self.store
    }

    /// A user's friends by app id.
    pub fn friends_of(&self, user: &str) -> Vec<String> {
        let Some(user) = self.engine.lookup(user) else {
            return Vec::new();
        };
        let friends = self.engine.friends(user);
        self.engine.with_names(|name| {
            friends
                .iter()
                .filter_map(|f| name(*f).map(str::to_owned))
                .collect()
        })
    }

    /// Plans creating or replacing a group.
    pub fn plan_put_group(
        &self,
        gid: &str,
        members: Vec<String>,
    ) -> Result<GraphWrite, AdminError> {
        let members = self.check_group(gid, members)?;
        for mbr in &members {
            self.engine.intern(mbr).map_err(|e| bad(e.to_string()))?;
        }
        Ok(GraphWrite::PutGroup {
            gid: gid.to_owned(),
            members,
        })
    }

    /// A group as the admin API accepts it, on one node or in a cluster: valid ids, at most
    /// `--max-group` members, none twice. Returns the members sorted.
    pub fn check_group(
        &self,
        gid: &str,
        mut members: Vec<String>,
    ) -> Result<Vec<String>, AdminError> {
        check_id("group id", gid)?;
        // The chat relay refuses sends to a larger group: refuse to make one.
        let max = self.cfg.max_group;
        if members.len() > max {
            return Err(bad(format!(
                "a group has at most {max} members (--max-group)"
            )));
        }
        for mbr in &members {
            check_id("member", mbr)?;
        }
        members.sort();
        if let Some(w) = members.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("member {:?} listed twice", w[0])));
        }
        Ok(members)
    }

    /// A group's members.
    pub fn group(&self, gid: &str) -> Result<Arc<[String]>, AdminError> {
        self.groups
            .read()
            .get(gid)
            .cloned()
            .ok_or_else(|| AdminError::NotFound(format!("no group {gid:?}")))
    }

    /// Plans removing a group (removing one that does not exist is no error).
    pub fn plan_delete_group(&self, gid: &str) -> Result<GraphWrite, AdminError> {
        check_id("group id", gid)?;
        Ok(GraphWrite::DeleteGroup {
            gid: gid.to_owned(),
        })
    }

    /// The current presence of `names`, in order (unknown users are offline, never seen).
    pub fn presence(&self, names: &[&str]) -> Result<Vec<PresenceEntry<'static>>, AdminError> {
        if names.len() > MAX_QUERY {
            return Err(bad(format!("at most {MAX_QUERY} users per query")));
        }
        for n in names {
            check_id("user id", n)?;
        }
        let ids: Vec<UserId> = names
            .iter()
            .map(|n| self.engine.lookup(n).unwrap_or(UserId(u32::MAX)))
            .collect();
        let presence = self.engine.presence_of(&ids);
        let cfg = self.engine.config();
        Ok(names
            .iter()
            .zip(&presence)
            .map(|(n, p)| frames::entry(n, p, cfg).into_owned())
            .collect())
    }

    /// The admin key, for calls this node makes to other nodes of its cluster.
    pub(crate) fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// A client token for `user` (development and tests).
    pub fn mint_token(
        &self,
        user: String,
        ttl_s: u64,
        device: Option<String>,
        now: u64,
    ) -> Result<String, AdminError> {
        check_id("user", &user)?;
        if ttl_s == 0 || ttl_s > 366 * 24 * 3600 {
            return Err(bad("ttl_s must be between 1 and one year"));
        }
        let claims = token::Claims {
            sub: user,
            exp: now / 1000 + ttl_s,
            dev: device,
        };
        Ok(token::mint(&self.secret, &claims))
    }

    /// Sets the graph gauges from what the engine holds now (a cluster node's graph changes
    /// as it takes and releases slots, not only through admin writes): called before
    /// `/metrics` renders. Costs a pass over the friend lists, as `/healthz` does.
    pub fn refresh_graph_gauges(&self) {
        let fp = self.engine.footprint();
        metrics::gauge!(m::USERS).set(fp.users as f64);
        metrics::gauge!(m::EDGES).set(fp.edges as f64);
        metrics::gauge!(m::OWNED_USERS).set(fp.owned_users as f64);
        metrics::gauge!(m::GRAPH_BYTES).set(fp.graph_bytes as f64);
    }

    pub fn health(&self) -> Health {
        let fp = self.engine.footprint();
        Health {
            users: fp.users,
            edges: fp.edges,
            sessions: self.session_count(),
        }
    }
}
