//! One lock stripe of users: their state machines, sessions and timing wheel.
//!
//! Everything here runs under the shard's mutex and takes `now` as an argument. The hot path
//! (`activity`, `heartbeat`) writes a timestamp and at most sets a dirty bit; deadlines it
//! pushes later are re-armed lazily when the wheel reaches the old one.
//!
//! In cluster mode a user may instead be *mirrored* (flag `REMOTE`): owned by another node,
//! it has no sessions, timers or state machine here; a peer sets its visible presence, which
//! waits in `mirror` until the tick publishes it like any local change.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::config::Config;
use crate::error::Error;
use crate::presence::{Presence, State, Status};
use crate::wheel::{Entry, Wheel};

const NIL: u32 = u32::MAX;
const NO_DEADLINE: u64 = u64::MAX;

const DIRTY: u8 = 1;
const HAS_EXT: u8 = 2;
/// The user has a connected (not lingering) session.
const LIVE: u8 = 4;
/// The user is not owned here: its presence is mirrored from its owner (cluster mode).
const REMOTE: u8 = 8;
/// Device hash of the lingering session a taken user starts with (see `Shard::take`).
const TAKEOVER_DEVICE: u64 = 0;

const IN_USE: u32 = 1 << 31;
const LINGERING: u32 = 1 << 30;
const GEN_MASK: u32 = LINGERING - 1;

/// A live or lingering session, as handed out by `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    pub user: u32,
    pub(crate) slot: u32,
    pub(crate) tag: u32,
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The connection dropped: keep the user present for the grace period, so a quick
    /// reconnect does not flap.
    Dropped,
    /// The user logged out: no grace period.
    LoggedOut,
}

/// Per-user state: 32 bytes.
#[derive(Debug, Clone, Copy)]
struct User {
    /// Last activity over all devices, ms since the epoch (0 = never).
    last_active: u64,
    /// `last_active` of the published entry.
    pub_la: u64,
    /// The earliest deadline this user has in the wheel (`NO_DEADLINE` if none).
    armed: u64,
    /// Head of the user's session list in the shard's slab.
    first: u32,
    status: u8,
    pub_state: u8,
    pub_status: u8,
    flags: u8,
}

impl Default for User {
    fn default() -> Self {
        Self {
            last_active: 0,
            pub_la: 0,
            armed: NO_DEADLINE,
            first: NIL,
            status: Status::Available as u8,
            pub_state: State::Offline.code(),
            pub_status: Status::Available as u8,
            flags: 0,
        }
    }
}

/// A session slot: 24 bytes. `at` is the last contact while connected, the grace expiry
/// while lingering.
#[derive(Debug, Clone, Copy)]
struct Session {
    device: u64,
    at: u64,
    next: u32,
    tag: u32,
}

/// Rarely present per-user data: status text and the last-active time frozen while invisible.
#[derive(Debug, Default, Clone)]
struct Ext {
    text: Option<Arc<str>>,
    pub_text: Option<Arc<str>>,
    frozen_la: u64,
}

/// What one shard contributes to a tick.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Global ids whose visible state changed, ascending, with their new presence.
    pub changes: Vec<(u32, Presence)>,
    /// Changes of "has a connected session" since the last tick, in order: (global id, live).
    pub live_changes: Vec<(u32, bool)>,
    /// Sessions expired by the heartbeat timeout since the last tick.
    pub expired: Vec<SessionId>,
}

#[derive(Debug)]
pub(crate) struct Shard {
    index: u32,
    bits: u32,
    users: Vec<User>,
    sessions: Vec<Session>,
    free: Vec<u32>,
    wheel: Wheel,
    dirty: Vec<u32>,
    /// Flips of the users' `LIVE` flag since the last tick, handed to the tick (which keeps the global set).
    live_changes: Vec<(u32, bool)>,
    ext: HashMap<u32, Ext>,
    /// Cluster mode: users start out mirrored (`REMOTE`) until taken.
    cluster: bool,
    /// Mirrored presence set by peers since the last tick, by local index (each user in it is
    /// also dirty). Empty on a single node.
    mirror: HashMap<u32, Presence>,
    /// Highest `now` seen: time never goes backwards inside a shard.
    clock: u64,
    fired: Vec<Entry>,
    expired: Vec<SessionId>,
}

impl Shard {
    pub fn new(index: u32, bits: u32, start: u64, cluster: bool) -> Self {
        Self {
            index,
            bits,
            users: Vec::new(),
            sessions: Vec::new(),
            free: Vec::new(),
            wheel: Wheel::new(start),
            dirty: Vec::new(),
            live_changes: Vec::new(),
            ext: HashMap::new(),
            cluster,
            mirror: HashMap::new(),
            clock: start,
            fired: Vec::new(),
            expired: Vec::new(),
        }
    }

    fn local(&self, global: u32) -> usize {
        (global >> self.bits) as usize
    }

    fn global(&self, local: usize) -> u32 {
        ((local as u32) << self.bits) | self.index
    }

    fn tick_clock(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Makes room for users up to `global` (mirrored ones in cluster mode).
    pub fn ensure(&mut self, global: u32) {
        let local = self.local(global);
        if local >= self.users.len() {
            let fresh = User {
                flags: if self.cluster { REMOTE } else { 0 },
                ..User::default()
            };
            self.users.resize(local + 1, fresh);
        }
    }

    /// Whether the user is mirrored from another node rather than owned here.
    pub fn is_remote(&self, global: u32) -> bool {
        self.users
            .get(self.local(global))
            .map_or(self.cluster, |u| u.flags & REMOTE != 0)
    }

    /// Reserves exactly enough room for `n` users (when the count is known, at snapshot load),
    /// instead of letting the table grow by doubling.
    pub fn reserve_users(&mut self, n: usize) {
        self.users.reserve_exact(n.saturating_sub(self.users.len()));
    }

    /// Records whether the user has a connected session: a flag on the user's own record
    /// (already in cache here), so a flip costs no set insert or remove.
    fn set_live(&mut self, global: u32, live: bool) {
        let local = self.local(global);
        let Some(u) = self.users.get_mut(local) else {
            return;
        };
        if (u.flags & LIVE != 0) != live {
            u.flags ^= LIVE;
            self.live_changes.push((global, live));
        }
    }

    fn mark_dirty(&mut self, local: usize) {
        let u = &mut self.users[local];
        if u.flags & DIRTY == 0 {
            u.flags |= DIRTY;
            self.dirty.push(local as u32);
        }
    }

    /// Starts loading the session's and its user's lines (see [`crate::prefetch`]).
    pub fn prefetch_session(&self, id: SessionId) {
        if let Some(s) = self.sessions.get(id.slot as usize) {
            crate::prefetch(s);
        }
        self.prefetch_user(id.user);
    }

    /// Starts loading the user's line.
    pub fn prefetch_user(&self, global: u32) {
        if let Some(u) = self.users.get(self.local(global)) {
            crate::prefetch(u);
        }
    }

    fn session_ok(&self, id: SessionId) -> Option<usize> {
        let s = self.sessions.get(id.slot as usize)?;
        let local = self.local(id.user);
        (s.tag & IN_USE != 0 && s.tag & GEN_MASK == id.tag && local < self.users.len())
            .then_some(local)
    }

    fn alloc_session(&mut self, s: Session) -> u32 {
        if let Some(slot) = self.free.pop() {
            let tag = self.sessions[slot as usize].tag;
            self.sessions[slot as usize] = Session {
                tag: (tag & GEN_MASK) | IN_USE,
                ..s
            };
            slot
        } else {
            let slot = self.sessions.len() as u32;
            self.sessions.push(Session { tag: IN_USE, ..s });
            slot
        }
    }

    /// Unlinks `slot` from `local`'s list (given its predecessor) and frees it.
    fn free_session(&mut self, local: usize, prev: u32, slot: u32) {
        let next = self.sessions[slot as usize].next;
        if prev == NIL {
            self.users[local].first = next;
        } else {
            self.sessions[prev as usize].next = next;
        }
        let s = &mut self.sessions[slot as usize];
        s.tag = (s.tag.wrapping_add(1)) & GEN_MASK;
        s.next = NIL;
        self.free.push(slot);
    }

    fn has_connected(&self, local: usize) -> bool {
        let mut slot = self.users[local].first;
        while slot != NIL {
            let s = &self.sessions[slot as usize];
            if s.tag & LINGERING == 0 {
                return true;
            }
            slot = s.next;
        }
        false
    }

    /// Drops sessions whose heartbeat timed out or whose grace ran out by `now`.
    fn expire_sessions(&mut self, local: usize, now: u64, cfg: &Config) {
        let mut prev = NIL;
        let mut slot = self.users[local].first;
        let mut removed = false;
        while slot != NIL {
            let s = self.sessions[slot as usize];
            let lingering = s.tag & LINGERING != 0;
            let gone = if lingering {
                s.at <= now
            } else {
                s.at.saturating_add(cfg.heartbeat_timeout_ms) <= now
            };
            if gone {
                if !lingering {
                    self.expired.push(SessionId {
                        user: self.global(local),
                        slot,
                        tag: s.tag & GEN_MASK,
                    });
                }
                self.free_session(local, prev, slot);
                removed = true;
            } else {
                prev = slot;
            }
            slot = s.next;
        }
        if removed {
            if !self.has_connected(local) {
                self.set_live(self.global(local), false);
            }
            self.mark_dirty(local);
        }
    }

    /// The user's visible presence at `now`, from scratch.
    fn evaluate(&self, local: usize, now: u64, cfg: &Config) -> Presence {
        let u = &self.users[local];
        let mut present = false;
        let mut slot = u.first;
        while slot != NIL {
            let s = &self.sessions[slot as usize];
            let alive = if s.tag & LINGERING != 0 {
                s.at > now
            } else {
                s.at.saturating_add(cfg.heartbeat_timeout_ms) > now
            };
            if alive {
                present = true;
                break;
            }
            slot = s.next;
        }
        let status = Status::from_u8(u.status);
        let nonzero = |t: u64| (t != 0).then_some(t);
        if status == Status::Invisible {
            let frozen = self.ext.get(&(local as u32)).map_or(0, |e| e.frozen_la);
            return Presence {
                last_active: nonzero(frozen),
                ..Presence::NEVER_SEEN
            };
        }
        if !present {
            return Presence {
                last_active: nonzero(u.last_active),
                ..Presence::NEVER_SEEN
            };
        }
        let idle_for = now.saturating_sub(u.last_active);
        let passed = cfg
            .idle_thresholds_ms
            .iter()
            .take_while(|&&t| t <= idle_for)
            .count();
        let state = if passed == 0 {
            State::Online
        } else {
            State::Idle((passed - 1) as u8)
        };
        let text = if u.flags & HAS_EXT != 0 {
            self.ext.get(&(local as u32)).and_then(|e| e.text.clone())
        } else {
            None
        };
        Presence {
            state,
            last_active: nonzero(u.last_active),
            status,
            text,
        }
    }

    /// The entry friends were last told about.
    fn published_local(&self, local: usize) -> Presence {
        let Some(u) = self.users.get(local) else {
            return Presence::NEVER_SEEN;
        };
        let state = State::from_code(u.pub_state);
        let text = if u.flags & HAS_EXT != 0 && state != State::Offline {
            self.ext
                .get(&(local as u32))
                .and_then(|e| e.pub_text.clone())
        } else {
            None
        };
        Presence {
            state,
            last_active: (u.pub_la != 0).then_some(u.pub_la),
            status: if state == State::Offline {
                Status::Available
            } else {
                Status::from_u8(u.pub_status)
            },
            text,
        }
    }

    pub fn published(&self, global: u32) -> Presence {
        self.published_local(self.local(global))
    }

    /// The earliest moment after `now` at which this user's visible state could change
    /// without any event.
    fn next_deadline(&self, local: usize, now: u64, cfg: &Config) -> u64 {
        let u = &self.users[local];
        let mut d = NO_DEADLINE;
        let mut slot = u.first;
        while slot != NIL {
            let s = &self.sessions[slot as usize];
            let at = if s.tag & LINGERING != 0 {
                s.at
            } else {
                s.at.saturating_add(cfg.heartbeat_timeout_ms)
            };
            d = d.min(at);
            slot = s.next;
        }
        if u.first != NIL
            && Status::from_u8(u.status) != Status::Invisible
            && let Some(&t) = cfg
                .idle_thresholds_ms
                .iter()
                .find(|&&t| u.last_active.saturating_add(t) > now)
        {
            d = d.min(u.last_active.saturating_add(t));
        }
        d
    }

    /// Puts the user's next deadline in the wheel if it is earlier than the armed one.
    fn arm(&mut self, local: usize, now: u64, cfg: &Config) {
        let d = self.next_deadline(local, now, cfg);
        let u = &mut self.users[local];
        if d < u.armed {
            u.armed = d;
            self.wheel.insert(local as u32, d);
        }
    }

    pub fn connect(
        &mut self,
        global: u32,
        device: u64,
        now: u64,
        cfg: &Config,
    ) -> Result<SessionId, Error> {
        if self.is_remote(global) {
            return Err(Error::NotOwned(crate::UserId(global)));
        }
        let now = self.tick_clock(now);
        self.ensure(global);
        let local = self.local(global);
        self.expire_sessions(local, now, cfg);
        // A reconnect of the same device replaces its lingering session.
        let mut prev = NIL;
        let mut slot = self.users[local].first;
        let mut count = 0u32;
        let mut lingering_same = None;
        // The lingering session a take started the user with stands for whichever device
        // comes back first (see `take`).
        let mut takeover = None;
        while slot != NIL {
            let s = self.sessions[slot as usize];
            if s.tag & LINGERING != 0 && s.device == device && lingering_same.is_none() {
                lingering_same = Some((prev, slot));
            } else {
                if s.tag & LINGERING != 0 && s.device == TAKEOVER_DEVICE && takeover.is_none() {
                    takeover = Some((prev, slot));
                }
                count += 1;
            }
            prev = slot;
            slot = s.next;
        }
        if lingering_same.is_none() && takeover.is_some() {
            lingering_same = takeover;
            count -= 1;
        }
        if count >= cfg.max_sessions_per_user {
            return Err(Error::TooManySessions {
                user: crate::UserId(global),
                cap: cfg.max_sessions_per_user,
            });
        }
        let was_present = self.users[local].first != NIL;
        if let Some((prev, slot)) = lingering_same {
            self.free_session(local, prev, slot);
        }
        if !was_present {
            // Opening the app is activity.
            let u = &mut self.users[local];
            u.last_active = u.last_active.max(now);
        }
        let first = self.users[local].first;
        let slot = self.alloc_session(Session {
            device,
            at: now,
            next: first,
            tag: 0,
        });
        self.users[local].first = slot;
        self.set_live(global, true);
        self.mark_dirty(local);
        self.arm(local, now, cfg);
        Ok(SessionId {
            user: global,
            slot,
            tag: self.sessions[slot as usize].tag & GEN_MASK,
        })
    }

    pub fn disconnect(
        &mut self,
        id: SessionId,
        how: Disconnect,
        now: u64,
        cfg: &Config,
    ) -> Result<(), Error> {
        let now = self.tick_clock(now);
        let local = self.live_session(id, now, cfg)?;
        match how {
            Disconnect::Dropped => {
                let s = &mut self.sessions[id.slot as usize];
                s.tag |= LINGERING;
                s.at = now.saturating_add(cfg.grace_ms);
            }
            Disconnect::LoggedOut => {
                let mut prev = NIL;
                let mut slot = self.users[local].first;
                while slot != id.slot {
                    if slot == NIL {
                        return Err(Error::UnknownSession);
                    }
                    prev = slot;
                    slot = self.sessions[slot as usize].next;
                }
                self.free_session(local, prev, slot);
            }
        }
        if !self.has_connected(local) {
            self.set_live(id.user, false);
        }
        self.expire_sessions(local, now, cfg);
        self.mark_dirty(local);
        self.arm(local, now, cfg);
        Ok(())
    }

    /// A connected session's slot, or `UnknownSession` if it is gone, lingering, or past its
    /// heartbeat timeout (then it is reaped now: no ghost outlives the timeout).
    fn live_session(&mut self, id: SessionId, now: u64, cfg: &Config) -> Result<usize, Error> {
        let local = self.session_ok(id).ok_or(Error::UnknownSession)?;
        let s = &self.sessions[id.slot as usize];
        if s.tag & LINGERING != 0 {
            return Err(Error::UnknownSession);
        }
        if s.at.saturating_add(cfg.heartbeat_timeout_ms) <= now {
            self.expire_sessions(local, now, cfg);
            return Err(Error::UnknownSession);
        }
        Ok(local)
    }

    /// The hot path: the person did something.
    pub fn activity(&mut self, id: SessionId, now: u64, cfg: &Config) -> Result<(), Error> {
        let now = self.tick_clock(now);
        let local = self.live_session(id, now, cfg)?;
        self.sessions[id.slot as usize].at = now;
        let u = &mut self.users[local];
        u.last_active = u.last_active.max(now);
        if u.pub_state != State::Online.code() && u.flags & DIRTY == 0 {
            u.flags |= DIRTY;
            self.dirty.push(local as u32);
        }
        Ok(())
    }

    /// The connection is alive; idleness is untouched.
    pub fn heartbeat(&mut self, id: SessionId, now: u64, cfg: &Config) -> Result<(), Error> {
        let now = self.tick_clock(now);
        self.live_session(id, now, cfg)?;
        self.sessions[id.slot as usize].at = now;
        Ok(())
    }

    pub fn set_status(
        &mut self,
        global: u32,
        status: Status,
        text: Option<Arc<str>>,
        now: u64,
        cfg: &Config,
    ) -> Result<(), Error> {
        if self.is_remote(global) {
            return Err(Error::NotOwned(crate::UserId(global)));
        }
        let now = self.tick_clock(now);
        self.ensure(global);
        let local = self.local(global);
        let u = self.users[local];
        let was = Status::from_u8(u.status);
        let needs_ext = text.is_some() || status == Status::Invisible;
        if needs_ext || u.flags & HAS_EXT != 0 {
            let ext = self.ext.entry(local as u32).or_default();
            ext.text = text;
            if status == Status::Invisible && was != Status::Invisible {
                // Going invisible looks like leaving: freeze what friends will see as last seen.
                ext.frozen_la = u.last_active;
            }
            self.users[local].flags |= HAS_EXT;
        }
        self.users[local].status = status as u8;
        self.mark_dirty(local);
        self.arm(local, now, cfg);
        Ok(())
    }

    /// Sets a mirrored user's presence (validated and normalised by the engine); the next
    /// tick publishes it if it differs from what was published. Refused for an owned user.
    pub fn set_mirrored(&mut self, global: u32, presence: Presence, now: u64) -> Result<(), Error> {
        if !self.is_remote(global) {
            return Err(Error::Owned(crate::UserId(global)));
        }
        self.tick_clock(now);
        self.ensure(global);
        let local = self.local(global);
        self.mirror.insert(local as u32, presence);
        self.mark_dirty(local);
        Ok(())
    }

    /// Whether the user holds a session that still counts as connected at `now` (what a
    /// release refuses). Changes nothing.
    pub fn has_connected_at(&self, global: u32, now: u64, cfg: &Config) -> bool {
        let now = now.max(self.clock); // as `release` will see it
        let Some(u) = self.users.get(self.local(global)) else {
            return false;
        };
        let mut slot = u.first;
        while slot != NIL {
            let s = &self.sessions[slot as usize];
            if s.tag & LINGERING == 0 && s.at.saturating_add(cfg.heartbeat_timeout_ms) > now {
                return true;
            }
            slot = s.next;
        }
        false
    }

    /// Makes an owned user mirrored. The caller has checked [`Shard::has_connected_at`]:
    /// sessions that timed out are reported as expired, lingering ones are discarded, and the
    /// user's visible presence at `now` (lingering sessions still counting) becomes its
    /// mirrored presence until a peer says otherwise, so the release itself shows friends no
    /// flap. Returns false if the user was already mirrored.
    pub fn release(&mut self, global: u32, now: u64, cfg: &Config) -> bool {
        if self.is_remote(global) {
            return false;
        }
        let now = self.tick_clock(now);
        self.ensure(global);
        let local = self.local(global);
        self.expire_sessions(local, now, cfg);
        let presence = self.evaluate(local, now, cfg);
        while self.users[local].first != NIL {
            let first = self.users[local].first;
            self.free_session(local, NIL, first);
        }
        if !self.has_connected(local) {
            self.set_live(global, false);
        }
        let u = &mut self.users[local];
        u.last_active = 0;
        u.status = Status::Available as u8;
        u.armed = NO_DEADLINE; // what the wheel still holds for the user is stale now
        u.flags |= REMOTE;
        if let Some(ext) = self.ext.get_mut(&(local as u32)) {
            ext.text = None;
            ext.frozen_la = 0;
        }
        self.mirror.insert(local as u32, presence);
        self.mark_dirty(local);
        true
    }

    /// Makes a mirrored user owned, its state machine starting from its latest mirrored
    /// presence (last active, status, text). A user that was present gets one lingering
    /// session for the grace period, as if its device had just dropped: its sessions moving
    /// here from the old owner within the grace period show friends no flap (the first to
    /// connect replaces it, whatever its device), and otherwise it goes offline when the
    /// grace runs out. Returns false if the user was already owned.
    pub fn take(&mut self, global: u32, now: u64, cfg: &Config) -> bool {
        if !self.is_remote(global) {
            return false;
        }
        let now = self.tick_clock(now);
        self.ensure(global);
        let local = self.local(global);
        let start = self
            .mirror
            .remove(&(local as u32))
            .unwrap_or_else(|| self.published_local(local));
        let u = &mut self.users[local];
        u.flags &= !REMOTE;
        u.last_active = start.last_active.unwrap_or(0);
        u.status = start.status as u8;
        if start.text.is_some() || u.flags & HAS_EXT != 0 {
            u.flags |= HAS_EXT;
            self.ext.entry(local as u32).or_default().text = start.text.clone();
        }
        if start.state != State::Offline {
            let first = self.users[local].first;
            let slot = self.alloc_session(Session {
                device: TAKEOVER_DEVICE,
                at: now.saturating_add(cfg.grace_ms),
                next: first,
                tag: 0,
            });
            self.sessions[slot as usize].tag |= LINGERING;
            self.users[local].first = slot;
        }
        self.mark_dirty(local);
        self.arm(local, now, cfg);
        true
    }

    /// Fires due deadlines and publishes every dirty user whose visible state changed.
    pub fn collect(&mut self, now: u64, cfg: &Config) -> Collected {
        let now = self.tick_clock(now);
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(now, &mut fired);
        for i in 0..fired.len() {
            let e = fired[i];
            if let Some(u) = fired.get(i + 8).and_then(|n| self.users.get(n.id as usize)) {
                crate::prefetch(u);
            }
            let local = e.id as usize;
            let when = e.when;
            if self.users[local].armed != when {
                continue; // stale: the user was re-armed earlier since
            }
            self.users[local].armed = NO_DEADLINE;
            self.expire_sessions(local, now, cfg);
            self.mark_dirty(local);
            self.arm(local, now, cfg);
        }
        fired.clear();
        self.fired = fired;

        let mut changes = Vec::new();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        for (i, &local) in dirty.iter().enumerate() {
            // A dirty user's record, then its first session, are cold: prefetched ahead.
            if let Some(u) = dirty.get(i + 8).and_then(|&n| self.users.get(n as usize)) {
                crate::prefetch(u);
            }
            if let Some(s) = dirty
                .get(i + 4)
                .and_then(|&n| self.users.get(n as usize))
                .and_then(|u| self.sessions.get(u.first as usize))
            {
                crate::prefetch(s);
            }
            let local = local as usize;
            self.users[local].flags &= !DIRTY;
            let cur = if self.users[local].flags & REMOTE == 0 {
                self.evaluate(local, now, cfg)
            } else {
                match self.mirror.remove(&(local as u32)) {
                    Some(p) => p,
                    None => continue, // nothing set since the last tick
                }
            };
            if cur != self.published_local(local) {
                let u = &mut self.users[local];
                u.pub_state = cur.state.code();
                u.pub_la = cur.last_active.unwrap_or(0);
                u.pub_status = cur.status as u8;
                if u.flags & HAS_EXT != 0 || cur.text.is_some() {
                    u.flags |= HAS_EXT;
                    let ext = self.ext.entry(local as u32).or_default();
                    ext.pub_text = cur.text.clone();
                    if ext.text.is_none()
                        && ext.pub_text.is_none()
                        && Status::from_u8(self.users[local].status) != Status::Invisible
                    {
                        self.ext.remove(&(local as u32));
                        self.users[local].flags &= !HAS_EXT;
                    }
                }
                changes.push((self.global(local), cur));
            }
            // Activity after idling makes the next idle deadline earlier than the armed one
            // (activity itself only writes a timestamp): arm it now.
            self.arm(local, now, cfg);
        }
        dirty.clear();
        self.dirty = dirty;
        Collected {
            changes,
            live_changes: std::mem::take(&mut self.live_changes),
            expired: std::mem::take(&mut self.expired),
        }
    }

    pub fn is_live(&self, global: u32) -> bool {
        self.users
            .get(self.local(global))
            .is_some_and(|u| u.flags & LIVE != 0)
    }

    /// Heap and inline bytes of this shard's per-user state.
    pub fn state_bytes(&self) -> usize {
        self.users.capacity() * std::mem::size_of::<User>()
            + self.sessions.capacity() * std::mem::size_of::<Session>()
            + self.free.capacity() * 4
            + self.dirty.capacity() * 4
            + self.wheel.heap_bytes()
            + self.live_changes.capacity() * 8
            + self.ext.capacity() * (std::mem::size_of::<(u32, Ext)>() + 1)
            + self.mirror.capacity() * (std::mem::size_of::<(u32, Presence)>() + 1)
    }

    pub fn wheel_len(&self) -> usize {
        self.wheel.len()
    }

    /// Number of sessions (connected and lingering) in this shard.
    pub fn session_count(&self) -> usize {
        self.sessions.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_structs_stay_small() {
        assert_eq!(std::mem::size_of::<User>(), 32);
        assert_eq!(std::mem::size_of::<Session>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 12);
    }
}
