//! The engine: users striped over lock shards, the friend graph, and the tick that turns what
//! happened since the last tick into one batch of diffs.
//!
//! Locks, and the order they are taken in: the tick lock (one tick at a time), then the graph,
//! then one shard at a time; the interner is only ever taken alone. `connect` registers the
//! session and reads its snapshot under the graph's read lock, and the tick publishes new
//! states under the graph's write lock, so every snapshot sits exactly between two ticks.
//!
//! Cluster mode ([`Config::cluster`]) adds ownership: which users this node owns is a bitset
//! under the graph's lock (what graph edits and the tick consult) mirrored by a flag on each
//! user's record (what its shard consults); both change only in `take_users` and
//! `release_users`, under the graph's write lock.

use std::hash::BuildHasher;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use hashbrown::{DefaultHashBuilder, HashMap};
use roaring::RoaringBitmap;

use crate::batch::{Batch, Strategy, TickStats};
use crate::config::{Config, FanoutPolicy};
use crate::error::{ConfigError, Error};
use crate::graph::Graph;
use crate::ids::{Interner, UserId};
use crate::presence::{Change, Presence, State, Status};
use crate::shard::{Disconnect, SessionId, Shard};
use crate::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, downgrade, parallel_map};
use crate::views::Views;

/// The edges a request really changes (pairs with the smaller id first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeDelta {
    pub added: Vec<(UserId, UserId)>,
    pub removed: Vec<(UserId, UserId)>,
}

/// Why a logged graph change did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError<E> {
    #[error(transparent)]
    Invalid(Error),
    #[error("write-ahead log failed: {0}")]
    Log(E),
}

/// What a new session starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub session: SessionId,
    /// The tick this snapshot was taken after: hand this session the batches of later ticks.
    pub tick: u64,
    /// Presence of every friend, ascending by id.
    pub friends: Vec<(UserId, Presence)>,
}

/// Counts of what the engine holds, for metrics and memory reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub users: usize,
    /// Users owned here: in cluster mode those of the slots this node serves (the others it
    /// knows are friends of its users, mirrored); on a single node every user.
    pub owned_users: usize,
    pub sessions: usize,
    pub edges: u64,
    pub wheel_entries: usize,
    /// Bytes of per-user state: user records, sessions, wheels, live sets, side tables.
    pub state_bytes: usize,
    /// Bytes of the friend graph.
    pub graph_bytes: usize,
    /// Bytes of the id interner.
    pub interner_bytes: usize,
    /// Friend sets held as roaring bitmaps (the rest are plain sorted slices).
    pub roaring_sets: usize,
}

/// State the tick keeps between runs.
#[derive(Debug, Default)]
struct Ticker {
    tick: u64,
    /// Dense `user -> index in this tick's entries` map for pull fan-out (`u32::MAX` = none).
    index: Vec<u32>,
    /// Users with a connected session as of the last tick, kept up to date from the shards'
    /// flips (so a tick costs what changed, not what is live), as a roaring set for iteration
    /// and a dense bitset for the fan-out's one-load membership test. A bit of `live_bits` is
    /// set while the user is live *and has no focus*: a focused watcher gets its friends'
    /// changes through `views`, not the ordinary fan-out.
    live: RoaringBitmap,
    live_bits: Vec<u64>,
    /// Focus and watched members (v1.1 partial subscriptions).
    views: Views,
}

impl Ticker {
    fn apply_live(&mut self, changes: &[(u32, bool)]) {
        for &(id, live) in changes {
            if live {
                self.live.insert(id);
            } else {
                self.live.remove(id);
            }
            self.refresh_fan_bit(id);
        }
    }

    /// Sets `id`'s fan-out bit from its liveness and its focus.
    fn refresh_fan_bit(&mut self, id: u32) {
        let on = self.live.contains(id) && !self.views.is_focused(id);
        let word = (id >> 6) as usize;
        if word >= self.live_bits.len() {
            if !on {
                return;
            }
            self.live_bits.resize(word + 1, 0);
        }
        if on {
            self.live_bits[word] |= 1 << (id & 63);
        } else {
            self.live_bits[word] &= !(1 << (id & 63));
        }
    }
}

/// Whether bit `id` of a dense bitset is set.
fn bit(bits: &[u64], id: u32) -> bool {
    bits.get((id >> 6) as usize)
        .is_some_and(|w| (w >> (id & 63)) & 1 == 1)
}

/// The presence engine. All methods take `&self` and may be called from many threads.
pub struct Engine {
    cfg: Config,
    shard_bits: u32,
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    graph: RwLock<GraphState>,
    names: RwLock<Interner>,
    ticker: Mutex<Ticker>,
    device_hasher: DefaultHashBuilder,
}

/// What [`Engine::take_users`] and [`Engine::release_users`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Users whose ownership changed (those already in the wanted state are not counted).
    pub users: usize,
    /// Friendships added (take) or dropped (release).
    pub edges: u64,
}

/// The graph plus the number of the last published tick, under one lock.
#[derive(Debug, Default)]
struct GraphState {
    graph: Graph,
    published_tick: u64,
    /// Cluster mode only: bit `u` is set while user `u` is owned here. `None` on a single
    /// node, where every user is owned.
    owned: Option<Vec<u64>>,
}

impl GraphState {
    fn owned(&self, id: u32) -> bool {
        match &self.owned {
            None => true,
            Some(bits) => bit(bits, id),
        }
    }

    fn set_owned(&mut self, id: u32, owned: bool) {
        if let Some(bits) = &mut self.owned {
            let word = (id >> 6) as usize;
            if word >= bits.len() {
                bits.resize(word + 1, 0);
            }
            if owned {
                bits[word] |= 1 << (id & 63);
            } else {
                bits[word] &= !(1 << (id & 63));
            }
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A new, empty engine whose clock starts at `start` (ms since the epoch).
    pub fn new(cfg: Config, start: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let shard_bits = cfg.shards.trailing_zeros();
        let shards = (0..cfg.shards)
            .map(|i| {
                CachePadded::new(Mutex::new(Shard::new(
                    i as u32,
                    shard_bits,
                    start,
                    cfg.cluster,
                )))
            })
            .collect();
        let graph = GraphState {
            owned: cfg.cluster.then(Vec::new),
            ..GraphState::default()
        };
        Ok(Self {
            cfg,
            shard_bits,
            shards,
            graph: RwLock::new(graph),
            names: RwLock::new(Interner::new()),
            ticker: Mutex::new(Ticker::default()),
            device_hasher: DefaultHashBuilder::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn shard(&self, id: u32) -> &Mutex<Shard> {
        &self.shards[(id & ((1 << self.shard_bits) - 1)) as usize]
    }

    // ---- ids -------------------------------------------------------------------------------

    /// The dense id of an app user id, interning it if new.
    pub fn intern(&self, name: &str) -> Result<UserId, Error> {
        if let Some(id) = self.names.read().get(name) {
            return Ok(id);
        }
        Ok(self.names.write().intern(name)?.0)
    }

    /// The dense id of an app user id, if known.
    pub fn lookup(&self, name: &str) -> Option<UserId> {
        self.names.read().get(name)
    }

    /// The app's id for a dense id.
    pub fn name(&self, id: UserId) -> Option<String> {
        self.names.read().name(id).map(str::to_owned)
    }

    /// Calls `f` with the app id of each dense id (one lock for the lot).
    pub fn with_names<R>(
        &self,
        f: impl for<'a> FnOnce(&'a dyn Fn(UserId) -> Option<&'a str>) -> R,
    ) -> R {
        let names = self.names.read();
        f(&|id| names.name(id))
    }

    pub fn user_count(&self) -> usize {
        self.names.read().len()
    }

    fn check_user(&self, id: UserId) -> Result<(), Error> {
        if id.index() < self.names.read().len() {
            Ok(())
        } else {
            Err(Error::UnknownUser(id))
        }
    }

    // ---- sessions --------------------------------------------------------------------------

    /// Starts a session of `user` on `device` and returns its snapshot of friends.
    pub fn connect(&self, user: UserId, device: &str, now: u64) -> Result<Welcome, Error> {
        let (session, g) = self.open_session(user, device, now)?;
        let friends = self.published_of(&g.graph.published_friends(user.0));
        Ok(Welcome {
            session,
            tick: g.published_tick,
            friends,
        })
    }

    /// Starts a session like [`Engine::connect`] without building the welcome snapshot, for
    /// load generators and drivers that never send one. Returns the session and the tick it
    /// starts after (the same tick `connect` would report).
    pub fn connect_bare(
        &self,
        user: UserId,
        device: &str,
        now: u64,
    ) -> Result<(SessionId, u64), Error> {
        let (session, g) = self.open_session(user, device, now)?;
        Ok((session, g.published_tick))
    }

    /// The session is opened under the graph's read lock, which the caller keeps while it reads
    /// the published state: no tick can publish in between.
    fn open_session(
        &self,
        user: UserId,
        device: &str,
        now: u64,
    ) -> Result<(SessionId, RwLockReadGuard<'_, GraphState>), Error> {
        self.check_user(user)?;
        let device = self.device_hasher.hash_one(device);
        let g = self.graph.read();
        let session = self
            .shard(user.0)
            .lock()
            .connect(user.0, device, now, &self.cfg)?;
        Ok((session, g))
    }

    /// Published presence of `ids` (ascending ids lock each shard once).
    fn published_of(&self, ids: &[u32]) -> Vec<(UserId, Presence)> {
        let mut out: Vec<(UserId, Presence)> = Vec::with_capacity(ids.len());
        let mask = (1u32 << self.shard_bits) - 1;
        let mut order: Vec<u32> = ids.to_vec();
        order.sort_unstable_by_key(|&id| (id & mask, id));
        let mut i = 0;
        while i < order.len() {
            let s = order[i] & mask;
            let shard = self.shard(order[i]).lock();
            while i < order.len() && order[i] & mask == s {
                out.push((UserId(order[i]), shard.published(order[i])));
                i += 1;
            }
        }
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    pub fn disconnect(&self, session: SessionId, how: Disconnect, now: u64) -> Result<(), Error> {
        self.shard(session.user)
            .lock()
            .disconnect(session, how, now, &self.cfg)
    }

    /// A hint, changing nothing: starts loading the memory an event on `session` will touch.
    /// A caller that knows its next events (a batch, a sorted queue) calls this a few events
    /// ahead so their cache misses overlap instead of being paid one after another.
    pub fn prefetch_session(&self, session: SessionId) {
        self.shard(session.user).lock().prefetch_session(session);
    }

    /// Like [`Engine::prefetch_session`], for an event on `user` (a connect, a status).
    pub fn prefetch_user(&self, user: UserId) {
        self.shard(user.0).lock().prefetch_user(user.0);
    }

    /// The person did something: resets idleness. The hot path.
    pub fn activity(&self, session: SessionId, now: u64) -> Result<(), Error> {
        self.shard(session.user)
            .lock()
            .activity(session, now, &self.cfg)
    }

    /// The connection is alive; idleness is untouched.
    pub fn heartbeat(&self, session: SessionId, now: u64) -> Result<(), Error> {
        self.shard(session.user)
            .lock()
            .heartbeat(session, now, &self.cfg)
    }

    /// Sets the user's custom status and optional text.
    pub fn set_status(
        &self,
        user: UserId,
        status: Status,
        text: Option<&str>,
        now: u64,
    ) -> Result<(), Error> {
        self.check_user(user)?;
        let text = match text {
            Some(t) if !t.is_empty() => {
                self.check_status_text(t)?;
                Some(Arc::from(t))
            }
            _ => None,
        };
        self.shard(user.0)
            .lock()
            .set_status(user.0, status, text, now, &self.cfg)
    }

    /// A custom status text within `max_status_text` characters.
    fn check_status_text(&self, t: &str) -> Result<(), Error> {
        let len = t.chars().count();
        if len > self.cfg.max_status_text {
            return Err(Error::TextTooLong {
                len,
                max: self.cfg.max_status_text,
            });
        }
        Ok(())
    }

    // ---- cluster: owned and mirrored users -------------------------------------------------

    /// Whether `user` is owned here (always, on a single node).
    pub fn is_owned(&self, user: UserId) -> bool {
        self.graph.read().owned(user.0)
    }

    /// Sets the presence of a user this node does not own, as its owner published it (the
    /// owner has already applied invisibility). The next tick publishes it to the user's
    /// friends here like a local change: once, and not at all if it is undone before then.
    /// Refused for an owned user (`Owned`), and for a presence no owner could publish.
    pub fn set_mirrored(&self, user: UserId, presence: &Presence, now: u64) -> Result<(), Error> {
        self.apply_mirrored(&[(user, Some(presence.clone()))], now)
    }

    /// Forgets a mirrored user's presence (its owner's snapshot no longer lists it): it reads
    /// as [`Presence::NEVER_SEEN`], offline and never seen, from the next tick on. A node whose
    /// slot merely moved keeps the mirrored presence until the new owner overwrites it, which
    /// spares friends a flap.
    pub fn drop_mirrored(&self, user: UserId, now: u64) -> Result<(), Error> {
        self.apply_mirrored(&[(user, None)], now)
    }

    /// [`Engine::set_mirrored`] (`Some`) and [`Engine::drop_mirrored`] (`None`) for a whole
    /// peer frame, all or nothing: if any user is unknown or owned here, or any presence is
    /// invalid, nothing changes. A user listed twice gets its last presence.
    pub fn apply_mirrored(
        &self,
        updates: &[(UserId, Option<Presence>)],
        now: u64,
    ) -> Result<(), Error> {
        let users = self.names.read().len();
        let mut checked = Vec::with_capacity(updates.len());
        for (user, presence) in updates {
            if user.index() >= users {
                return Err(Error::UnknownUser(*user));
            }
            let p = match presence {
                Some(p) => self.normalize(p)?,
                None => Presence::NEVER_SEEN,
            };
            checked.push((*user, p));
        }
        // Under the graph's read lock: no take or release can slip between check and apply.
        let g = self.graph.read();
        if let Some((user, _)) = checked.iter().find(|(u, _)| g.owned(u.0)) {
            return Err(Error::Owned(*user));
        }
        for (user, p) in checked {
            self.shard(user.0).lock().set_mirrored(user.0, p, now)?;
        }
        Ok(())
    }

    /// A peer's presence as this engine would have published it, or why it cannot be one.
    fn normalize(&self, p: &Presence) -> Result<Presence, Error> {
        if let State::Idle(level) = p.state
            && usize::from(level) >= self.cfg.idle_thresholds_ms.len()
        {
            return Err(Error::InvalidPresence(
                "idle level beyond the configured thresholds",
            ));
        }
        if p.state == State::Offline {
            // Status and text are not shown while offline (see `Presence`'s equality).
            return Ok(Presence {
                last_active: p.last_active.filter(|&t| t != 0),
                ..Presence::NEVER_SEEN
            });
        }
        if p.status == Status::Invisible {
            return Err(Error::InvalidPresence(
                "an invisible user is published as offline",
            ));
        }
        let text = match &p.text {
            Some(t) if !t.is_empty() => {
                self.check_status_text(t)?;
                Some(t.clone())
            }
            _ => None,
        };
        Ok(Presence {
            state: p.state,
            last_active: p.last_active.filter(|&t| t != 0),
            status: p.status,
            text,
        })
    }

    /// Takes ownership of `users` (the node took their slot) and loads their friendships.
    ///
    /// Each newly owned user's state machine starts from its mirrored presence: last active,
    /// status and text carry over, and a user that was present holds one lingering session
    /// for the grace period, so its devices moving here in time show friends no flap (and a
    /// device that never comes makes it offline when the grace runs out). A mirrored
    /// presence does not say whether the user is invisible (the owner showed it as offline):
    /// the node restores the custom status with [`Engine::set_status`] if it keeps it.
    ///
    /// `friendships` are validated as [`Engine::apply_friendships`] validates additions,
    /// except that a pair may appear twice (in either order: it is one edge, as when each
    /// user's list names the other); pairs between two users still not owned here are left
    /// out. All or nothing: if anything is refused, nothing changes. Users already owned are
    /// left as they are. Refused with `Owned` on a single node, where every user is owned.
    pub fn take_users(
        &self,
        users: &[UserId],
        friendships: &[(UserId, UserId)],
        now: u64,
    ) -> Result<Ownership, Error> {
        let (known, mut g, taken) = self.ownership_changes(users, true)?;
        for &u in &taken {
            g.set_owned(u, true);
        }
        let mut pairs: Vec<(UserId, UserId)> = friendships
            .iter()
            .map(|&(a, b)| (a.min(b), a.max(b)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let delta = match self.plan(&g, known, &pairs, &[]) {
            Ok(delta) => delta,
            Err(e) => {
                for &u in &taken {
                    g.set_owned(u, false);
                }
                return Err(e);
            }
        };
        for &u in &taken {
            self.shard(u).lock().take(u, now, &self.cfg);
        }
        let (edges, _) = Self::apply_to(&mut g.graph, &delta);
        Ok(Ownership {
            users: taken.len(),
            edges,
        })
    }

    /// For [`Engine::take_users`] (`to_owned`) and [`Engine::release_users`]: the number of
    /// known users, the graph under its write lock, and those of `users` whose ownership
    /// changes (sorted, each once). Refuses unknown users, and any change on a single node.
    fn ownership_changes(
        &self,
        users: &[UserId],
        to_owned: bool,
    ) -> Result<(usize, RwLockWriteGuard<'_, GraphState>, Vec<u32>), Error> {
        let known = self.names.read().len();
        if let Some(&u) = users.iter().find(|u| u.index() >= known) {
            return Err(Error::UnknownUser(u));
        }
        let g = self.graph.write();
        if g.owned.is_none() {
            return Err(users
                .first()
                .map_or(Error::Owned(UserId(0)), |&u| Error::Owned(u)));
        }
        let mut changing: Vec<u32> = users
            .iter()
            .map(|u| u.0)
            .filter(|&u| g.owned(u) != to_owned)
            .collect();
        changing.sort_unstable();
        changing.dedup();
        Ok((known, g, changing))
    }

    /// Gives up ownership of `users` (their slot went to another node) and drops what this
    /// node no longer needs of them: sessions, timers, custom status, and their friendships
    /// with users not owned here (those with owned users stay: they route the released
    /// users' mirrored changes to their owned friends).
    ///
    /// Refused with `HasSessions`, changing nothing, while any of them has a connected
    /// session: the node tells those sessions `moved` and ends them first. A session that
    /// merely lingers in its grace period is discarded, and a session past its heartbeat
    /// timeout is reported in the next batch's `expired`. Each released user keeps, as its
    /// mirrored presence, what it looked like at `now` (lingering sessions counting), so the
    /// release shows friends nothing until the new owner says otherwise. Users already not
    /// owned are left as they are. Refused with `Owned` on a single node.
    pub fn release_users(&self, users: &[UserId], now: u64) -> Result<Ownership, Error> {
        let (_, mut g, released) = self.ownership_changes(users, false)?;
        for &u in &released {
            if self.shard(u).lock().has_connected_at(u, now, &self.cfg) {
                return Err(Error::HasSessions(UserId(u)));
            }
        }
        for &u in &released {
            g.set_owned(u, false);
            self.shard(u).lock().release(u, now, &self.cfg);
        }
        let mut edges = 0;
        for &u in &released {
            for f in g.graph.friends(u) {
                if !g.owned(f) {
                    edges += u64::from(g.graph.remove_edge(u, f));
                }
            }
        }
        Ok(Ownership {
            users: released.len(),
            edges,
        })
    }

    /// Calls `f(user, friend)` for every friend of each of `users` that is not owned here,
    /// under one lock: what the node maps to the peers a changed user's presence goes to (for
    /// the users of [`Batch::outgoing`]). Nothing on a single node.
    pub fn for_each_remote_friend(
        &self,
        users: impl IntoIterator<Item = UserId>,
        mut f: impl FnMut(UserId, UserId),
    ) {
        let g = self.graph.read();
        if g.owned.is_none() {
            return;
        }
        for user in users {
            if let Some(set) = g.graph.set(user.0) {
                set.for_each(|friend| {
                    if !g.owned(friend) {
                        f(user, UserId(friend));
                    }
                });
            }
        }
    }

    // ---- queries ---------------------------------------------------------------------------

    /// Published presence of one user (what friends currently see).
    pub fn presence(&self, user: UserId) -> Presence {
        self.shard(user.0).lock().published(user.0)
    }

    /// Published presence of many users, in the order given.
    pub fn presence_of(&self, users: &[UserId]) -> Vec<Presence> {
        let ids: Vec<u32> = users.iter().map(|u| u.0).collect();
        let found = self.published_of(&ids);
        users
            .iter()
            .map(|u| {
                found
                    .binary_search_by_key(u, |(id, _)| *id)
                    .map_or(Presence::NEVER_SEEN, |i| found[i].1.clone())
            })
            .collect()
    }

    /// Sets what `watcher` follows beyond (or instead of) all its friends, from the next tick
    /// on: with `focus` given, only the friends in it reach the watcher (their changes, and
    /// their friendship ending or starting); `members` are users whose changes reach it as
    /// if they were friends (a big group's members on screen). Both replace what was set
    /// before; `None` and `[]` restore the default; the watcher itself is never in view. On
    /// a node both lists are the union over the watcher's sessions, and the node narrows
    /// each session's share at hand-out. A new session ([`Engine::connect`]) sees every
    /// friend, so whoever connects a second device must widen the view first (its welcome
    /// is not narrowed).
    ///
    /// Returns the presence of everything now in view (friends as of the last tick, narrowed
    /// by the focus, and the members), ascending, as published by the last tick: the ticks
    /// after this call carry the diffs. Costs what the lists and the watcher's friends hold
    /// once; each tick then costs what changed among the users someone follows this way,
    /// never the friends out of focus.
    pub fn set_view(
        &self,
        watcher: UserId,
        focus: Option<&[UserId]>,
        members: &[UserId],
    ) -> Result<Vec<(UserId, Presence)>, Error> {
        self.check_user(watcher)?;
        for &u in focus.into_iter().flatten().chain(members) {
            self.check_user(u)?;
        }
        let ids = |l: &[UserId]| {
            l.iter()
                .map(|u| u.0)
                .filter(|&u| u != watcher.0)
                .collect::<Vec<u32>>()
        };
        let (focus, members) = (focus.map(ids), ids(members));
        // Under the tick lock: no tick publishes between the change and the snapshot.
        let mut ticker = self.ticker.lock();
        let mut visible = {
            let g = self.graph.read();
            let friends = g.graph.published_friends(watcher.0);
            match &focus {
                None => friends,
                Some(f) => friends.into_iter().filter(|u| f.contains(u)).collect(),
            }
        };
        visible.extend(&members);
        visible.sort_unstable();
        visible.dedup();
        ticker.views.set(watcher.0, focus, members);
        ticker.refresh_fan_bit(watcher.0);
        Ok(self.published_of(&visible))
    }

    /// The snapshot a new session of `user` would get, without starting one.
    pub fn friends_presence(&self, user: UserId) -> Vec<(UserId, Presence)> {
        let g = self.graph.read();
        self.published_of(&g.graph.published_friends(user.0))
    }

    /// Whether `user` has at least one connected session.
    pub fn is_live(&self, user: UserId) -> bool {
        self.shard(user.0).lock().is_live(user.0)
    }

    // ---- friend graph ----------------------------------------------------------------------

    /// A hint like [`Engine::prefetch_session`]: starts loading `user`'s friend set, for a
    /// caller about to read it.
    pub fn prefetch_friends(&self, user: UserId) {
        if let Some(set) = self.graph.read().graph.set(user.0) {
            set.prefetch_items();
        }
    }

    /// Current friends of `user`, ascending.
    pub fn friends(&self, user: UserId) -> Vec<UserId> {
        let g = self.graph.read();
        g.graph.friends(user.0).into_iter().map(UserId).collect()
    }

    pub fn are_friends(&self, a: UserId, b: UserId) -> bool {
        self.graph.read().graph.are_friends(a.0, b.0)
    }

    /// Applies edge additions and removals atomically: either every pair is valid and the
    /// whole request is applied, or nothing changes. Pairs already in the wanted state are not
    /// errors; they count as neither added nor removed. Returns (added, removed).
    ///
    /// In cluster mode, pairs of two users neither of which is owned here are left out the
    /// same way: a node keeps its owned users' friendships only (the other end's owner keeps
    /// the rest), so the counts and [`EdgeDelta`]s are this node's, not the cluster's.
    pub fn apply_friendships(
        &self,
        add: &[(UserId, UserId)],
        remove: &[(UserId, UserId)],
    ) -> Result<(u64, u64), Error> {
        self.apply_friendships_logged(add, remove, |_| Ok::<(), std::convert::Infallible>(()))
            .map_err(|e| match e {
                ApplyError::Invalid(e) => e,
                ApplyError::Log(never) => match never {},
            })
    }

    /// Like [`Engine::apply_friendships`], but once the request is validated and before
    /// anything changes, hands the effective changes to `log` (a write-ahead hook: the node
    /// makes them durable there). If `log` fails, nothing changes. `log` runs under the
    /// graph's write lock: it must not call back into the engine.
    pub fn apply_friendships_logged<E>(
        &self,
        add: &[(UserId, UserId)],
        remove: &[(UserId, UserId)],
        log: impl FnOnce(&EdgeDelta) -> Result<(), E>,
    ) -> Result<(u64, u64), ApplyError<E>> {
        let users = self.names.read().len();
        let mut g = self.graph.write();
        let effect = self
            .plan(&g, users, add, remove)
            .map_err(ApplyError::Invalid)?;
        if effect.added.is_empty() && effect.removed.is_empty() {
            return Ok((0, 0));
        }
        log(&effect).map_err(ApplyError::Log)?;
        Ok(Self::apply_to(&mut g.graph, &effect))
    }

    /// The effective change of a request against the graph as it is now, validated as
    /// [`Engine::apply_friendships`] validates it (pairs already in the wanted state left
    /// out); nothing changes. For a driver that makes the change durable itself before
    /// [`Engine::apply_planned`]: it must let no other graph write in between (the node
    /// serialises its admin writes), or the plan may no longer hold.
    pub fn plan_friendships(
        &self,
        add: &[(UserId, UserId)],
        remove: &[(UserId, UserId)],
    ) -> Result<EdgeDelta, Error> {
        let users = self.names.read().len();
        let g = self.graph.read();
        self.plan(&g, users, add, remove)
    }

    /// Applies a change planned by [`Engine::plan_friendships`]; returns (added, removed).
    pub fn apply_planned(&self, delta: &EdgeDelta) -> (u64, u64) {
        Self::apply_to(&mut self.graph.write().graph, delta)
    }

    fn apply_to(graph: &mut Graph, delta: &EdgeDelta) -> (u64, u64) {
        let (mut added, mut removed) = (0, 0);
        for &(a, b) in &delta.added {
            added += u64::from(graph.add_edge(a.0, b.0));
        }
        for &(a, b) in &delta.removed {
            removed += u64::from(graph.remove_edge(a.0, b.0));
        }
        (added, removed)
    }

    fn plan(
        &self,
        g: &GraphState,
        users: usize,
        add: &[(UserId, UserId)],
        remove: &[(UserId, UserId)],
    ) -> Result<EdgeDelta, Error> {
        let graph = &g.graph;
        let mut seen = hashbrown::HashSet::with_capacity(add.len() + remove.len());
        let mut delta: HashMap<u32, i64> = HashMap::new();
        let mut effect = EdgeDelta::default();
        for (list, adding) in [(add, true), (remove, false)] {
            for &(a, b) in list {
                for id in [a, b] {
                    if id.index() >= users {
                        return Err(Error::UnknownUser(id));
                    }
                }
                if a == b {
                    return Err(Error::SelfFriendship(a));
                }
                let key = (a.0.min(b.0), a.0.max(b.0));
                if !seen.insert(key) {
                    return Err(Error::DuplicateEdge(a, b));
                }
                if !g.owned(a.0) && !g.owned(b.0) {
                    continue; // neither end is owned here: not this node's edge to keep
                }
                if adding != graph.are_friends(a.0, b.0) {
                    let sign = if adding { 1 } else { -1 };
                    *delta.entry(a.0).or_default() += sign;
                    *delta.entry(b.0).or_default() += sign;
                    let pair = (UserId(key.0), UserId(key.1));
                    if adding {
                        effect.added.push(pair);
                    } else {
                        effect.removed.push(pair);
                    }
                }
            }
        }
        for (&id, &d) in &delta {
            let would_have = (graph.degree(id) as i64 + d).max(0) as u64;
            if d > 0 && would_have > u64::from(self.cfg.max_friends) {
                return Err(Error::TooManyFriends {
                    user: UserId(id),
                    would_have,
                    cap: self.cfg.max_friends,
                });
            }
        }
        Ok(effect)
    }

    /// Adds one friendship; `Ok(false)` if they already were friends.
    pub fn add_friendship(&self, a: UserId, b: UserId) -> Result<bool, Error> {
        Ok(self.apply_friendships(&[(a, b)], &[])?.0 == 1)
    }

    /// Removes one friendship; `Ok(false)` if they were not friends.
    pub fn remove_friendship(&self, a: UserId, b: UserId) -> Result<bool, Error> {
        Ok(self.apply_friendships(&[], &[(a, b)])?.1 == 1)
    }

    /// Replaces `user`'s friend list (edges stay symmetric). Returns (added, removed).
    pub fn replace_friends(&self, user: UserId, friends: &[UserId]) -> Result<(u64, u64), Error> {
        let (add, remove) = self.replace_plan(user, friends)?;
        self.apply_friendships(&add, &remove)
    }

    /// The (add, remove) pairs that turn `user`'s friend list into `friends`.
    #[allow(clippy::type_complexity)]
    pub fn replace_plan(
        &self,
        user: UserId,
        friends: &[UserId],
    ) -> Result<(Vec<(UserId, UserId)>, Vec<(UserId, UserId)>), Error> {
        let current = self.friends(user);
        let mut wanted: Vec<UserId> = friends.to_vec();
        wanted.sort_unstable();
        if let Some(w) = wanted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateEdge(user, w[0]));
        }
        let add: Vec<(UserId, UserId)> = wanted
            .iter()
            .filter(|f| current.binary_search(f).is_err())
            .map(|&f| (user, f))
            .collect();
        let remove: Vec<(UserId, UserId)> = current
            .iter()
            .filter(|f| wanted.binary_search(f).is_err())
            .map(|&f| (user, f))
            .collect();
        Ok((add, remove))
    }

    /// The last tick published: every graph change applied before a call to this is published
    /// by tick `published_tick() + 1` at the latest, and a session that starts after that tick
    /// has it in its welcome (read-your-writes for the app's backend).
    pub fn published_tick(&self) -> u64 {
        self.graph.read().published_tick
    }

    // ---- tick ------------------------------------------------------------------------------

    /// Fires due deadlines, publishes every visible change since the last tick and computes
    /// each live watcher's diff. Call it periodically (the node does every 200 ms).
    pub fn tick(&self, now: u64) -> Batch {
        let mut ticker = self.ticker.lock();
        ticker.tick += 1;
        let tick = ticker.tick;

        let mut gw = self.graph.write();
        let collect_threads = self.threads_for(gw.graph.sets.len() as u64);
        let collected = parallel_map(self.shards.len(), collect_threads, |i| {
            self.shards[i].lock().collect(now, &self.cfg)
        });
        let edge_events = gw.graph.drain_journal();
        gw.published_tick = tick;
        let g = downgrade(gw);
        let graph = &g.graph;

        let mut batch = Batch {
            tick,
            now,
            ..Batch::default()
        };
        let mut changed: Vec<(u32, Presence)> = Vec::new();
        for c in collected {
            ticker.apply_live(&c.live_changes);
            changed.extend(c.changes);
            batch.expired.extend(c.expired);
        }
        changed.sort_unstable_by_key(|(id, _)| *id);
        let changed_ids: Vec<u32> = changed.iter().map(|(id, _)| *id).collect();
        batch.entries = changed
            .into_iter()
            .map(|(id, p)| (UserId(id), Change::Presence(p)))
            .collect();

        let push_cost: u64 = changed_ids.iter().map(|&u| graph.degree(u)).sum();
        let users = graph.sets.len().max(1) as u64;
        let ticker = &mut *ticker;
        let live = &ticker.live;
        let pull_cost = live.len() * (2 * graph.edges()).div_ceil(users);
        let strategy = if changed_ids.is_empty() || live.is_empty() {
            Strategy::Idle
        } else {
            match self.cfg.fanout {
                FanoutPolicy::Push => Strategy::Push,
                FanoutPolicy::Pull => Strategy::Pull,
                // Push also sorts what it emits: weigh its per-friend work twice.
                FanoutPolicy::Auto if 2 * push_cost <= pull_cost => Strategy::Push,
                FanoutPolicy::Auto => Strategy::Pull,
            }
        };
        match strategy {
            Strategy::Idle => batch.offsets.push(0),
            Strategy::Push => {
                let threads = self.threads_for(push_cost);
                self.fan_out_push(graph, &changed_ids, &ticker.live_bits, threads, &mut batch);
            }
            Strategy::Pull => self.fan_out_pull(
                graph,
                &changed_ids,
                live,
                &ticker.live_bits,
                &mut ticker.index,
                &mut batch,
            ),
        }
        // Focused watchers and watched members: the pairs the ordinary fan-out left out.
        if !ticker.views.is_empty() && !changed_ids.is_empty() {
            let extra = ticker
                .views
                .extra_pairs(graph, &changed_ids, |w| live.contains(w));
            if !extra.is_empty() {
                batch.merge_sorted_pairs(&extra);
            }
        }

        if let Some(owned) = &g.owned {
            batch.outgoing = (0..changed_ids.len() as u32)
                .filter(|&i| bit(owned, changed_ids[i as usize]))
                .collect();
        }
        let owned = g.owned.as_deref();
        let edge_changes = self.announce_edges(
            &edge_events,
            &changed_ids,
            live,
            &ticker.views,
            owned,
            &mut batch,
        );
        drop(g);

        batch.stats = TickStats {
            transitions: changed_ids.len(),
            live_watchers: live.len(),
            push_cost,
            pull_cost,
            strategy,
            edge_changes,
        };
        batch
    }

    /// Threads worth using for `work` units: spawning them costs tens of microseconds, which
    /// small ticks do not repay (measured: a 50k-user replay ticked 10× slower on 2 threads).
    fn threads_for(&self, work: u64) -> usize {
        if work >= self.cfg.parallel_threshold {
            self.cfg.threads.max(1)
        } else {
            1
        }
    }

    fn fan_out_push(
        &self,
        graph: &Graph,
        changed: &[u32],
        live: &[u64],
        threads: usize,
        batch: &mut Batch,
    ) {
        // Each thread walks a slice of the changed users and drops (watcher, item) keys into
        // buckets by watcher range; then each bucket is sorted on its own thread, and the
        // buckets in order are the CSR.
        // Bucket spans are a power of two: a shift per entry, not a division.
        let users = graph.sets.len() as u64;
        let shift = users
            .div_ceil((threads * 4) as u64)
            .max(1)
            .next_power_of_two()
            .trailing_zeros();
        let buckets = (users >> shift) as usize + 1;
        let chunk = changed.len().div_ceil(threads).max(1);
        let parts = parallel_map(changed.len().div_ceil(chunk), threads, |t| {
            let lo = t * chunk;
            let hi = (lo + chunk).min(changed.len());
            let mut out: Vec<Vec<u64>> = vec![Vec::new(); buckets];
            let mine = &changed[lo..hi];
            for (idx, &u) in mine.iter().enumerate() {
                // Each changed user's set is a cold line, then its items another: prefetched
                // two steps apart, a few users ahead.
                if let Some(set) = mine.get(idx + 8).and_then(|&n| graph.set(n)) {
                    crate::prefetch(set);
                }
                if let Some(set) = mine.get(idx + 4).and_then(|&n| graph.set(n)) {
                    set.prefetch_items();
                }
                let item = (lo + idx) as u64;
                let mut emit = |w: u32| {
                    let bit = live
                        .get((w >> 6) as usize)
                        .map_or(0, |word| word >> (w & 63));
                    if bit & 1 == 1 {
                        let b = ((w >> shift) as usize).min(buckets - 1);
                        out[b].push((u64::from(w) << 32) | item);
                    }
                };
                let set = graph.set(u);
                if let Some(friends) = set.and_then(|s| s.as_slice()) {
                    // A sorted list hits a different word of the live bits per friend (a
                    // megabyte at 10 M users): the word a few friends ahead is prefetched.
                    for (j, &w) in friends.iter().enumerate() {
                        if let Some(word) = friends
                            .get(j + 8)
                            .and_then(|&n| live.get((n >> 6) as usize))
                        {
                            crate::prefetch(word);
                        }
                        emit(w);
                    }
                } else if let Some(set) = set {
                    set.for_each(emit);
                }
            }
            out
        });
        let parts = &parts;
        let sorted = parallel_map(buckets, threads, |b| {
            let mut keys: Vec<u64> = Vec::with_capacity(parts.iter().map(|p| p[b].len()).sum());
            for p in parts {
                keys.extend_from_slice(&p[b]);
            }
            radsort::sort(&mut keys);
            keys
        });
        batch.fill_from_sorted(sorted.iter().flatten().copied());
    }

    fn fan_out_pull(
        &self,
        graph: &Graph,
        changed: &[u32],
        live: &RoaringBitmap,
        fan_bits: &[u64],
        index: &mut Vec<u32>,
        batch: &mut Batch,
    ) {
        if index.len() < graph.sets.len() {
            index.resize(graph.sets.len(), u32::MAX);
        }
        for (i, &u) in changed.iter().enumerate() {
            if let Some(slot) = index.get_mut(u as usize) {
                *slot = i as u32;
            }
        }
        // Focused watchers are left to the views (their fan-out bit is clear).
        let watchers: Vec<u32> = live.iter().filter(|&w| bit(fan_bits, w)).collect();
        let threads = self.threads_for(live.len() * 16);
        let chunk = watchers.len().div_ceil(threads).max(1);
        let index_ref: &[u32] = index;
        let parts = parallel_map(watchers.len().div_ceil(chunk), threads, |t| {
            let lo = t * chunk;
            let hi = (lo + chunk).min(watchers.len());
            let mut ws = Vec::new();
            let mut ends = Vec::new();
            let mut items = Vec::new();
            for &w in &watchers[lo..hi] {
                let start = items.len();
                if let Some(set) = graph.set(w) {
                    set.for_each(|u| {
                        if let Some(&i) = index_ref.get(u as usize)
                            && i != u32::MAX
                        {
                            items.push(i);
                        }
                    });
                }
                if items.len() > start {
                    ws.push(UserId(w));
                    ends.push(items.len() as u32);
                }
            }
            (ws, ends, items)
        });
        batch.offsets.push(0);
        for (ws, ends, items) in parts {
            let base = batch.items.len() as u32;
            batch.watchers.extend(ws);
            batch.offsets.extend(ends.iter().map(|e| e + base));
            batch.items.extend(items);
        }
        for &u in changed {
            if let Some(slot) = index.get_mut(u as usize) {
                *slot = u32::MAX;
            }
        }
    }

    /// Adds the net friend additions and removals since the last tick to live endpoints'
    /// diffs. Returns how many were announced.
    ///
    /// In cluster mode (`owned` given), an owned user that gained a friend not owned here is
    /// also added to `batch.outgoing` with its presence: the friend's node may have no
    /// mirror of it yet.
    fn announce_edges(
        &self,
        events: &[(u32, u32, bool)],
        changed: &[u32],
        live: &RoaringBitmap,
        views: &Views,
        owned: Option<&[u64]>,
        batch: &mut Batch,
    ) -> usize {
        let mut extra: Vec<u64> = Vec::new();
        let mut added_idx: HashMap<u32, u32> = HashMap::new();
        let mut removed_idx: HashMap<u32, u32> = HashMap::new();
        let mut gained = false;
        for &(w, f, now_friends) in events {
            if let Some(owned) = owned
                && now_friends
                && !bit(owned, w)
                && bit(owned, f)
                && changed.binary_search(&f).is_err()
            {
                let item = *added_idx.entry(f).or_insert_with(|| {
                    let p = self.shard(f).lock().published(f);
                    batch.entries.push((UserId(f), Change::Presence(p)));
                    (batch.entries.len() - 1) as u32
                });
                batch.outgoing.push(item);
                gained = true;
            }
            if !live.contains(w) {
                continue;
            }
            // Out of w's focus, or in view anyway as a watched member: nothing to tell.
            if !views.friend_in_view(w, f) {
                continue;
            }
            let item = if now_friends {
                if changed.binary_search(&f).is_ok() {
                    continue; // the fan-out already carries f's new presence to w
                }
                *added_idx.entry(f).or_insert_with(|| {
                    let p = self.shard(f).lock().published(f);
                    batch.entries.push((UserId(f), Change::Presence(p)));
                    (batch.entries.len() - 1) as u32
                })
            } else {
                *removed_idx.entry(f).or_insert_with(|| {
                    batch.entries.push((UserId(f), Change::Removed));
                    (batch.entries.len() - 1) as u32
                })
            };
            extra.push((u64::from(w) << 32) | u64::from(item));
        }
        if gained {
            batch.outgoing.sort_unstable();
            batch.outgoing.dedup();
        }
        let announced = extra.len();
        if announced > 0 {
            let mut pairs = batch.to_pairs();
            pairs.extend(extra);
            batch.fill_from_pairs(&mut pairs);
        }
        announced
    }

    // ---- bulk load and accounting ----------------------------------------------------------

    /// Replaces the id table and friend graph wholesale (from a snapshot). Only valid before
    /// any session exists, and on a single node (a cluster node owns no user yet, so it could
    /// keep none of the edges); refuses otherwise.
    pub(crate) fn install(&self, names: Interner, graph: Graph) -> Result<(), Error> {
        let mut g = self.graph.write();
        if g.owned.is_some() {
            return Err(Error::NotOwned(UserId(0)));
        }
        for shard in self.shards.iter() {
            if shard.lock().session_count() > 0 {
                return Err(Error::NotEmpty);
            }
        }
        let per_shard = names.len().div_ceil(self.shards.len());
        for shard in self.shards.iter() {
            shard.lock().reserve_users(per_shard);
        }
        *self.names.write() = names;
        g.graph = graph;
        Ok(())
    }

    /// Reads the graph under its lock.
    pub(crate) fn with_graph<R>(&self, f: impl FnOnce(&Graph) -> R) -> R {
        f(&self.graph.read().graph)
    }

    /// Reads the interner under its lock.
    pub(crate) fn with_interner<R>(&self, f: impl FnOnce(&Interner) -> R) -> R {
        f(&self.names.read())
    }

    /// What the engine holds, and its bytes.
    pub fn footprint(&self) -> Footprint {
        let mut fp = Footprint::default();
        let owned: Option<usize>;
        for shard in self.shards.iter() {
            let s = shard.lock();
            fp.sessions += s.session_count();
            fp.wheel_entries += s.wheel_len();
            fp.state_bytes += s.state_bytes();
        }
        fp.state_bytes += self.shards.len() * std::mem::size_of::<CachePadded<Mutex<Shard>>>();
        {
            let g = self.graph.read();
            fp.edges = g.graph.edges();
            fp.graph_bytes = g.graph.heap_bytes();
            fp.roaring_sets = g.graph.roaring_sets();
            owned = g
                .owned
                .as_ref()
                .map(|bits| bits.iter().map(|w| w.count_ones() as usize).sum());
        }
        fp.state_bytes += self.ticker.lock().views.bytes();
        let names = self.names.read();
        fp.users = names.len();
        fp.owned_users = owned.unwrap_or(fp.users);
        fp.interner_bytes = names.heap_bytes();
        fp
    }
}
