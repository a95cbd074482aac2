//! What the app's backend can ask of the node: friend lists, friendships, groups, presence
//! queries, tokens, health. Validation and the all-or-nothing rules live here; the HTTP
//! layer (`crate::admin`) only parses bodies and maps [`AdminError`] to status codes.
//!
//! The writes are blocking (the graph store fsyncs before the engine changes): the driver
//! runs them on a blocking thread. An edge write returns the tick that publishes it; the
//! driver answers once that tick has been handed out, so every welcome after the answer
//! reflects the change (read-your-writes).

use std::collections::HashMap;
use std::sync::Arc;

use presence_core::{ApplyError, Interner, UserId};
use presence_wire::PresenceEntry;

use super::Service;
use crate::frames;
use crate::metrics as m;
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

    /// Validates, writes durably, then applies; all or nothing. Blocking.
    fn apply_edges(
        &self,
        add: &[(UserId, UserId)],
        remove: &[(UserId, UserId)],
        known: &HashMap<u32, String>,
    ) -> Result<EdgesApplied, AdminError> {
        let res = {
            let _writer = self.admin_writes.lock();
            self.engine.apply_friendships_logged(add, remove, |delta| {
                self.store
                    .commit_edges(delta, &|id| known.get(&id.0).cloned())
            })
        };
        let (added, removed) = match res {
            Ok(c) => c,
            Err(ApplyError::Invalid(e)) => return Err(bad(self.describe(&e))),
            Err(ApplyError::Log(e)) => {
                tracing::error!("admin: {e}");
                return Err(AdminError::Internal(e.to_string()));
            }
        };
        let fp = self.engine.footprint();
        metrics::gauge!(m::EDGES).set(fp.edges as f64);
        metrics::gauge!(m::USERS).set(fp.users as f64);
        let changed = added + removed > 0;
        Ok(EdgesApplied {
            added,
            removed,
            published_by: changed.then(|| self.engine.published_tick() + 1),
        })
    }

    /// Replaces `user`'s friend list (edges stay symmetric). Blocking.
    pub fn put_friends(&self, user: &str, friends: &[String]) -> Result<EdgesApplied, AdminError> {
        check_id("user id", user)?;
        let mut known = HashMap::new();
        let ids = self.intern_all(std::iter::once(user), &mut known)?;
        let user = ids[0];
        let friends = self.intern_all(friends.iter().map(String::as_str), &mut known)?;
        let (add, remove) = {
            let _writer = self.admin_writes.lock();
            self.engine
                .replace_plan(user, &friends)
                .map_err(|e| bad(self.describe(&e)))?
        };
        for &(_, f) in &remove {
            if let Some(n) = self.engine.name(f) {
                known.entry(f.0).or_insert(n);
            }
        }
        self.apply_edges(&add, &remove, &known)
    }

    /// Bulk edge changes. Blocking.
    pub fn friendships(
        &self,
        add: &[(String, String)],
        remove: &[(String, String)],
    ) -> Result<EdgesApplied, AdminError> {
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
        self.apply_edges(&add, &remove, &known)
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

    /// Creates or replaces a group. Blocking.
    pub fn put_group(&self, gid: &str, mut members: Vec<String>) -> Result<(), AdminError> {
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
        for mbr in &members {
            self.engine.intern(mbr).map_err(|e| bad(e.to_string()))?;
        }
        let _writer = self.admin_writes.lock();
        self.store
            .put_group(gid, &members)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        self.groups.write().insert(gid.to_owned(), members.into());
        Ok(())
    }

    /// A group's members.
    pub fn group(&self, gid: &str) -> Result<Arc<[String]>, AdminError> {
        self.groups
            .read()
            .get(gid)
            .cloned()
            .ok_or_else(|| AdminError::NotFound(format!("no group {gid:?}")))
    }

    /// Removes a group. Blocking.
    pub fn delete_group(&self, gid: &str) -> Result<(), AdminError> {
        check_id("group id", gid)?;
        let _writer = self.admin_writes.lock();
        self.store
            .delete_group(gid)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        self.groups.write().remove(gid);
        Ok(())
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

    pub fn health(&self) -> Health {
        let fp = self.engine.footprint();
        Health {
            users: fp.users,
            edges: fp.edges,
            sessions: self.session_count(),
        }
    }
}
