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
    /// The epoch each slot is served under here, if it is.
    serving: Vec<Option<i64>>,
    map: Arc<SlotMap>,
    /// Whether this node's lease surely held when these routes were made.
    lease_held: bool,
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
        Routes::with_lease(me, table, map, true)
    }

    /// [`Routes::new`], saying whether the lease surely holds (when it does not, users the
    /// map gives this node are told so, not that their slot is being taken).
    pub fn with_lease(me: &str, table: &SlotTable, map: Arc<SlotMap>, lease_held: bool) -> Routes {
        Routes {
            me: me.to_owned(),
            serving: Slot::all().map(|s| table.serving(s)).collect(),
            map,
            lease_held,
        }
    }

    /// Nothing served (before the first view).
    pub fn none(me: &str) -> Routes {
        Routes {
            me: me.to_owned(),
            serving: vec![None; usize::from(SLOTS)],
            map: Arc::new(SlotMap::new()),
            lease_held: false,
        }
    }

    /// Whether sessions of users in `slot` are served here now.
    pub fn serves(&self, slot: Slot) -> bool {
        self.serving[slot.index()].is_some()
    }

    /// The epoch `slot` is served under here, if it is.
    pub fn serving_epoch(&self, slot: Slot) -> Option<i64> {
        self.serving[slot.index()]
    }

    /// The slots served here, with their epochs.
    pub fn served(&self) -> impl Iterator<Item = (Slot, i64)> + '_ {
        Slot::all().filter_map(|s| Some((s, self.serving[s.index()]?)))
    }

    /// The node the map says owns `slot` (it may not serve it yet).
    pub fn owner_of(&self, slot: Slot) -> Option<&str> {
        self.map.owner(slot).map(|o| &*o.node)
    }

    /// The epoch of `slot`'s assignment in the map.
    pub fn epoch_of(&self, slot: Slot) -> Option<i64> {
        self.map.owner(slot).map(|o| o.epoch)
    }

    /// The map these routes follow.
    pub fn map(&self) -> &Arc<SlotMap> {
        &self.map
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
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
            Some(_) if !self.lease_held => Elsewhere::Unavailable(
                "this node cannot prove its etcd lease right now: retry shortly",
            ),
            Some(_) => {
                Elsewhere::Unavailable("this node is taking this user's slot: retry shortly")
            }
            None => {
                Elsewhere::Unavailable("no node owns this user's slot right now: retry shortly")
            }
        })
    }
}

/// Why a slot could not be released yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// A user of the slot still has a connected session (told `moved`, not yet gone).
    #[error("user {0:?} of the slot still has a session")]
    HasSessions(String),
    /// The engine refused (a bug, or ids the store should not hold).
    #[error("{0}")]
    Engine(String),
}

impl super::Service {
    /// Until when (ms since the epoch, `now`'s clock) this node surely holds its lease; 0
    /// when it does not.
    pub fn set_fence(&self, until: u64) {
        self.fence_until
            .store(until, std::sync::atomic::Ordering::Release);
    }

    /// Whether the lease may have run out at `now`: then no session starts here.
    pub fn fenced(&self, now: u64) -> bool {
        now >= self.fence_until.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The routes hellos follow now (cluster mode).
    pub fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.read().clone()
    }

    /// Takes `slot`'s users, with `edges` (directed pairs `(user of the slot, friend)`, as
    /// the store holds them): their state machines start here from what was mirrored.
    /// Returns how many users were taken.
    pub fn take_slot(
        &self,
        slot: Slot,
        edges: &[(String, String)],
        now: u64,
    ) -> Result<usize, SlotError> {
        let engine = self.engine();
        let mut users = Vec::new();
        let mut pairs = Vec::with_capacity(edges.len());
        for (u, f) in edges {
            let (Ok(a), Ok(b)) = (engine.intern(u), engine.intern(f)) else {
                return Err(SlotError::Engine(format!(
                    "ids in the store the node cannot hold: {u:?}, {f:?}"
                )));
            };
            if slot_of(u.as_bytes()) != slot {
                return Err(SlotError::Engine(format!(
                    "the store lists {u:?} in slot {}, not {}",
                    slot_of(u.as_bytes()).get(),
                    slot.get()
                )));
            }
            users.push(a);
            pairs.push((a, b));
        }
        users.sort_unstable();
        users.dedup();
        engine
            .take_users(&users, &pairs, now)
            .map_err(|e| SlotError::Engine(e.to_string()))?;
        let routes = self.routes();
        let mut replica = self.replica.lock();
        replica.owned(slot, users.iter().copied());
        if let Some(routes) = routes {
            replica.ask_for_unseen_friends(engine, &routes, &users);
        }
        Ok(users.len())
    }

    /// Takes one user of a served slot that has no friend in the store (its hello came
    /// first).
    pub(crate) fn take_lone_user(&self, user: presence_core::UserId, name: &str, now: u64) {
        if self.engine().is_owned(user) {
            return;
        }
        if self.engine().take_users(&[user], &[], now).is_ok() {
            self.replica
                .lock()
                .owned(slot_of(name.as_bytes()), std::iter::once(user));
        }
    }

    /// Sets the custom statuses the store holds for users of `slot`, just taken and not yet
    /// served, so that a user who set one shows it (or stays invisible) from the first tick
    /// under this owner. A user with no friend yet is taken alone first. Returns how many
    /// were set; rows the engine refuses (a bad text, a user of another slot) are skipped
    /// with a warning.
    pub fn restore_statuses(&self, slot: Slot, rows: &[presence_pg::StatusRow], now: u64) -> usize {
        let mut set = 0;
        for r in rows {
            let (Some(status), true) = (
                presence_core::Status::parse(&r.status),
                slot_of(r.user.as_bytes()) == slot,
            ) else {
                tracing::warn!(slot = slot.get(), user = %r.user, "a status row that is not this slot's");
                continue;
            };
            let Ok(id) = self.engine().intern(&r.user) else {
                continue;
            };
            self.take_lone_user(id, &r.user, now);
            match self.engine().set_status(id, status, r.text.as_deref(), now) {
                Ok(()) => set += 1,
                Err(e) => tracing::warn!(user = %r.user, "restoring a status: {e}"),
            }
        }
        set
    }

    /// The statuses set here since the last call, for the store (cluster mode).
    pub fn take_statuses(&self) -> Vec<presence_pg::StatusRow> {
        self.statuses.take()
    }

    /// Statuses whose write failed, to be written again (unless newer ones came since).
    pub fn requeue_statuses(&self, rows: Vec<presence_pg::StatusRow>) {
        self.statuses.requeue(rows);
    }

    /// Releases `slot`'s users once none has a connected session.
    ///
    /// `fenced`: the slot went because this node could not prove its lease, so the others
    /// took it over while this node's view of its users went stale (its links may have been
    /// down too). The released users are then shown offline here, not as they last were: a
    /// node that gets the slot back later must not bring back users who left meanwhile. (A
    /// slot handed over while the lease holds keeps their last presence: no flap for anyone.)
    pub fn release_slot(&self, slot: Slot, now: u64, fenced: bool) -> Result<usize, SlotError> {
        let users: Vec<presence_core::UserId> = self.replica.lock().owned_in(slot);
        match self.engine().release_users(&users, now) {
            Ok(o) => {
                self.replica.lock().released(slot);
                if fenced {
                    let gone: Vec<_> = users
                        .iter()
                        .map(|&u| {
                            let was = self.engine().presence(u);
                            let last = match was.state {
                                presence_core::State::Offline => was.last_active,
                                _ => Some(now),
                            };
                            (
                                u,
                                Some(presence_core::Presence {
                                    state: presence_core::State::Offline,
                                    last_active: last,
                                    ..presence_core::Presence::NEVER_SEEN
                                }),
                            )
                        })
                        .collect();
                    if let Err(e) = self.engine().apply_mirrored(&gone, now) {
                        tracing::warn!(slot = slot.get(), "marking released users offline: {e}");
                    }
                }
                Ok(o.users)
            }
            Err(presence_core::Error::HasSessions(u)) => Err(SlotError::HasSessions(
                self.engine().name(u).unwrap_or_default(),
            )),
            Err(e) => Err(SlotError::Engine(e.to_string())),
        }
    }

    /// `slot` is served from now on under a new epoch: peers get snapshots of it.
    pub fn serving_slot(&self, slot: Slot) {
        self.replica.lock().serving(slot);
    }

    /// A peer link is up; returns what to send it first: the handovers held for it, and
    /// whom it must stream here for watched groups.
    #[must_use = "send the held handovers and the follows to the peer"]
    pub fn peer_connected(&self, peer: &str) -> Vec<presence_peer::PeerFrame> {
        let routes = self.routes().unwrap_or_else(|| Arc::new(Routes::none("")));
        let mut frames: Vec<presence_peer::PeerFrame> = self
            .replica
            .lock()
            .connected(peer, &routes)
            .into_iter()
            .collect();
        let users = self.follow_set();
        if !users.is_empty() {
            frames.push(presence_peer::PeerFrame::Follow { users });
        }
        frames
    }

    /// A `Follow` frame was lost on a full queue: every peer gets the set again with the
    /// next tick.
    pub fn follows_changed(&self) {
        self.follows_again
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether every one of `slots` has been handed over here by its former owner.
    pub fn all_handed(&self, slots: &[u16]) -> bool {
        self.replica.lock().all_handed(slots)
    }

    /// A peer link went down.
    pub fn peer_disconnected(&self, peer: &str) {
        let routes = self.routes().unwrap_or_else(|| Arc::new(Routes::none("")));
        self.replica.lock().disconnected(peer, &routes);
    }

    /// A frame from a peer, for the next tick; a handover at once (see
    /// `Replica::handed_over`).
    pub fn peer_frame(&self, peer: &str, frame: presence_peer::PeerFrame, now: u64) {
        match frame {
            presence_peer::PeerFrame::Handoff { slots } => {
                let Some(routes) = self.routes() else { return };
                let f = self
                    .replica
                    .lock()
                    .handed_over(self.engine(), &routes, slots, now);
                metrics::counter!(crate::metrics::PEER_APPLIED).increment(f.applied as u64);
                metrics::counter!(crate::metrics::PEER_STALE).increment(f.stale as u64);
            }
            frame => self.replica.lock().received(peer.to_owned(), frame),
        }
    }

    /// The handover of `slots`, just lost here, for the nodes they move to.
    pub fn handoff_frames(&self, slots: &[Slot]) -> Vec<(String, presence_peer::PeerFrame)> {
        let Some(routes) = self.routes() else {
            return Vec::new();
        };
        self.replica.lock().handoff(self.engine(), &routes, slots)
    }

    /// A peer's queue was full: these slots start again from snapshots.
    pub fn peer_overflowed(&self, peer: &str, slots: impl IntoIterator<Item = u16>) {
        self.replica.lock().overflowed(peer, slots);
    }
}

impl super::Service {
    /// A friendship change from the store's log: the pairs with an end owned here are
    /// applied (an end in a served slot that is not owned yet is taken first: its first
    /// friendship came after its slot's load). Idempotent: pairs already in the wanted state
    /// are left out.
    pub fn apply_store_edges(
        &self,
        added: &[(String, String)],
        removed: &[(String, String)],
        now: u64,
    ) -> Result<(u64, u64), String> {
        let Some(routes) = self.routes() else {
            return Ok((0, 0));
        };
        let engine = self.engine();
        let ids = |list: &[(String, String)]| -> Result<Vec<_>, String> {
            list.iter()
                .map(|(a, b)| {
                    let mut pair = [presence_core::UserId(0); 2];
                    for (i, n) in [a, b].into_iter().enumerate() {
                        let id = engine.intern(n).map_err(|e| e.to_string())?;
                        if routes.serves(slot_of(n.as_bytes())) {
                            self.take_lone_user(id, n, now);
                        }
                        pair[i] = id;
                    }
                    Ok((pair[0], pair[1]))
                })
                .collect()
        };
        let add = ids(added)?;
        let remove = ids(removed)?;
        engine
            .apply_friendships(&add, &remove)
            .map_err(|e| e.to_string())
    }

    /// A group created or replaced, from the store's log.
    pub fn put_group_from_store(&self, gid: &str, members: &[String]) {
        self.groups
            .write()
            .insert(gid.to_owned(), members.to_vec().into());
        self.group_changed(gid, Some(members));
    }

    /// A group removed, from the store's log.
    pub fn delete_group_from_store(&self, gid: &str) {
        self.groups.write().remove(gid);
        self.group_changed(gid, None);
    }
}
