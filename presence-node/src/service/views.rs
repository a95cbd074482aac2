//! Protocol v1.1's big groups and partial subscriptions on the node: `focus`, `watch_group` /
//! `unwatch_group` with `group_counts` and watched members, and the admin's group presence.
//!
//! A session's view ([`View`]) lives on its registry handle and is changed only under the
//! user's stripe lock, with the engine told the union of the user's views
//! ([`presence_core::Engine::set_view`]) and the session handed a snapshot of what came into
//! view, all before any later tick's hand-out reaches the user: so the snapshot and the diffs
//! stay in order. The hand-out narrows each user's diff to each session's view.
//!
//! Group counts are kept for watched groups only, incrementally: a group is counted once when
//! its first session watches it (or its members change), then each tick moves the members
//! whose visible state changed from one count to another. Nothing is recounted per tick.
//!
//! Locks, in order: the counter, then a user's stripe (and a handle's view), then the engine.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use presence_core::{Batch, Change, Presence, State, UserId};
use presence_handoff::registry::{SessionHandle, UserSessions};
use presence_handoff::view::{View, WatchedGroup};
use presence_wire::{ErrorCode, ProtocolError};

use super::Service;
use super::admin::AdminError;
use crate::frames;
use crate::metrics as m;

/// Friends in one `focus` list.
pub const MAX_FOCUS: usize = 200;
/// Members in one `watch_group`.
pub const MAX_MEMBERS: usize = 200;
/// Groups one session watches at once.
pub const MAX_WATCHED_GROUPS: usize = 20;
/// Members one session watches over all its groups.
pub const MAX_WATCHED_MEMBERS: usize = 1_000;

/// A group's counts: `online` (active), `idle`, and `total` members; the rest are offline
/// (invisible members count as offline, as they look to everyone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupPresence {
    pub online: u64,
    pub idle: u64,
    pub total: u64,
}

/// What a member counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cat {
    Online,
    Idle,
    Offline,
}

fn cat(p: &Presence) -> Cat {
    match p.state {
        State::Online => Cat::Online,
        State::Idle(_) => Cat::Idle,
        State::Offline => Cat::Offline,
    }
}

impl GroupPresence {
    fn add(&mut self, c: Cat, by: i64) {
        let field = match c {
            Cat::Online => &mut self.online,
            Cat::Idle => &mut self.idle,
            Cat::Offline => return,
        };
        *field = field.saturating_add_signed(by);
    }
}

/// A watched group's counts and who watches it.
struct Tracked {
    /// The key a session's outbox merges this group's counts by.
    key: u32,
    members: Vec<u32>,
    counts: GroupPresence,
    /// The counts last handed out: a tick whose moves cancel out sends nothing.
    sent: GroupPresence,
    /// Counts moved since they were last handed out.
    dirty: bool,
    /// Sessions watching it (counts or members), and whether each wants the counts.
    watchers: Vec<(Arc<SessionHandle>, bool)>,
}

/// The counts of every watched group, kept from tick to tick.
#[derive(Default)]
pub struct Counter {
    groups: HashMap<Arc<str>, Tracked>,
    /// Tracked member -> the groups it counts in, and what it counts as.
    members: HashMap<u32, (Cat, Vec<Arc<str>>)>,
    /// Groups whose members or counts changed since the last hand-out of counts (their
    /// counts go out with it).
    changed: Vec<Arc<str>>,
    next_key: u32,
    /// Bumped whenever the tracked members change (cluster mode: peers are told whom to
    /// stream here).
    generation: u64,
}

impl Counter {
    /// Starts counting `group` (its members' published presence, once).
    fn track(&mut self, group: &Arc<str>, members: Vec<u32>, presence: &[Presence]) {
        let mut counts = GroupPresence {
            total: members.len() as u64,
            ..GroupPresence::default()
        };
        for (&m, p) in members.iter().zip(presence) {
            let c = cat(p);
            counts.add(c, 1);
            let entry = self.members.entry(m).or_insert((c, Vec::new()));
            entry.0 = c;
            entry.1.push(group.clone());
        }
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        self.generation += 1;
        self.groups.insert(
            group.clone(),
            Tracked {
                key,
                members,
                counts,
                sent: counts,
                dirty: false,
                watchers: Vec::new(),
            },
        );
    }

    /// Stops counting `group`.
    fn untrack(&mut self, group: &str) -> Option<Tracked> {
        let t = self.groups.remove(group)?;
        self.generation += 1;
        for m in &t.members {
            if let Some((_, gs)) = self.members.get_mut(m) {
                gs.retain(|g| &**g != group);
                if gs.is_empty() {
                    self.members.remove(m);
                }
            }
        }
        Some(t)
    }

    /// Moves the members whose state changed this tick; returns the groups whose counts
    /// moved (once each).
    fn apply(&mut self, batch: &Batch) -> Vec<Arc<str>> {
        let mut moved = Vec::new();
        for (u, change) in &batch.entries {
            let Change::Presence(p) = change else {
                continue;
            };
            let Some((was, groups)) = self.members.get_mut(&u.0) else {
                continue;
            };
            let now = cat(p);
            if *was == now {
                continue;
            }
            for g in groups.iter() {
                if let Some(t) = self.groups.get_mut(g) {
                    t.counts.add(*was, -1);
                    t.counts.add(now, 1);
                    if !t.dirty {
                        t.dirty = true;
                        moved.push(g.clone());
                    }
                }
            }
            *was = now;
        }
        moved
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, message)
}

fn bad(message: impl Into<String>) -> ProtocolError {
    refuse(ErrorCode::BadRequest, message)
}

/// The union of the views of a user's sessions: what the engine must follow for the user.
fn union(sessions: &[Arc<SessionHandle>]) -> (Option<Vec<UserId>>, Vec<UserId>) {
    let views: Vec<View> = sessions.iter().map(|h| h.view()).collect();
    // One session showing every friend: the user's diff carries every friend.
    let focus = if views.iter().any(|v| v.focus.is_none()) {
        None
    } else {
        let mut f: Vec<u32> = views
            .iter()
            .flat_map(|v| v.focus.iter().flatten().copied())
            .collect();
        f.sort_unstable();
        f.dedup();
        Some(f.into_iter().map(UserId).collect())
    };
    let mut m: Vec<u32> = views.iter().flat_map(|v| v.members()).collect();
    m.sort_unstable();
    m.dedup();
    (focus, m.into_iter().map(UserId).collect())
}

impl Service {
    /// Tells the engine the union of `user`'s views, under its stripe lock, and returns the
    /// published presence of everything now in view for the user.
    fn follow_union(
        &self,
        user: UserId,
        us: &UserSessions<'_>,
    ) -> Result<HashMap<u32, Presence>, ProtocolError> {
        let (focus, members) = union(us.sessions);
        let shown = self
            .engine
            .set_view(user, focus.as_deref(), &members)
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        Ok(shown.into_iter().map(|(u, p)| (u.0, p)).collect())
    }

    /// Hands `h` these users' presence (or their removal) at once, as a `presence` frame.
    fn push_snapshot(&self, h: &SessionHandle, shown: &[(u32, Change)]) {
        if shown.is_empty() {
            return;
        }
        let cfg = self.engine.config();
        let items: Vec<(u32, Bytes)> = self.engine.with_names(|name| {
            shown
                .iter()
                .map(|(u, c)| {
                    let n = name(UserId(*u)).unwrap_or("");
                    (*u, Bytes::from(frames::render_change(n, c, cfg)))
                })
                .collect()
        });
        let _ = h.outbox.push(self.engine.published_tick(), items);
    }

    /// `focus`: only these friends from now on (`None`: every friend again), with their
    /// current state at once.
    pub(super) fn focus(
        &self,
        h: &Arc<SessionHandle>,
        users: Option<Vec<String>>,
    ) -> Result<(), ProtocolError> {
        metrics::counter!(m::VIEW_CHANGES, "type" => "focus").increment(1);
        let focus = match users {
            None => None,
            Some(list) if list.len() > MAX_FOCUS => {
                return Err(bad(format!("focus lists at most {MAX_FOCUS} friends")));
            }
            // Ids the node has never seen cannot be friends: left out.
            Some(list) => {
                let mut ids: Vec<u32> = list
                    .iter()
                    .filter_map(|n| self.engine.lookup(n))
                    .map(|u| u.0)
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
        };
        let user = UserId(h.sid.user);
        self.registry.with_sessions(user.0, |us| {
            let mut view = h.view();
            let before = view.focus.clone();
            view.focus = focus;
            us.set_view(h, view.clone());
            let shown = self.follow_union(user, &us)?;
            // Focus: the listed friends' state; none: every friend the focus kept out.
            let back: Vec<(u32, Change)> = shown
                .into_iter()
                .filter(|(u, _)| {
                    !view.watches(*u)
                        && self.engine.are_friends(user, UserId(*u))
                        && match (&view.focus, &before) {
                            (Some(f), _) => f.binary_search(u).is_ok(),
                            (None, Some(b)) => b.binary_search(u).is_err(),
                            (None, None) => false,
                        }
                })
                .map(|(u, p)| (u, Change::Presence(p)))
                .collect();
            self.push_snapshot(h, &back);
            Ok(())
        })
    }

    /// `watch_group`: counts (and members' presence) of a group the user belongs to.
    pub(super) fn watch_group(
        &self,
        h: &Arc<SessionHandle>,
        user: &str,
        group: &str,
        counts: bool,
        members: Option<Vec<String>>,
    ) -> Result<(), ProtocolError> {
        metrics::counter!(m::VIEW_CHANGES, "type" => "watch_group").increment(1);
        let members = members.unwrap_or_default();
        if members.len() > MAX_MEMBERS {
            return Err(bad(format!(
                "watch_group lists at most {MAX_MEMBERS} members"
            )));
        }
        let Some(all) = self.groups.read().get(group).cloned() else {
            return Err(refuse(ErrorCode::NotFound, "no such group"));
        };
        if !all.iter().any(|m| m == user) {
            return Err(refuse(ErrorCode::Forbidden, "not a member of this group"));
        }
        if let Some(m) = members.iter().find(|m| !all.iter().any(|a| a == *m)) {
            return Err(bad(format!("{m:?} is not a member of this group")));
        }
        let intern = |names: &[String]| -> Result<Vec<u32>, ProtocolError> {
            let mut ids = names
                .iter()
                .map(|n| self.engine.intern(n).map(|u| u.0))
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        };
        let member_ids = intern(&members)?;
        let group: Arc<str> = Arc::from(group);
        let me = UserId(h.sid.user);
        let mut counter = self.counter.lock();
        if !counter.groups.contains_key(&group) {
            let ids = intern(&all)?;
            let users: Vec<UserId> = ids.iter().map(|&u| UserId(u)).collect();
            let presence = self.engine.presence_of(&users);
            counter.track(&group, ids, &presence);
        }
        let r = self.registry.with_sessions(me.0, |us| {
            let mut view = h.view();
            let before = view.clone();
            let watched = view.groups.len();
            match view.groups.iter_mut().find(|g| g.group == group) {
                Some(g) => {
                    g.counts = counts;
                    g.members = member_ids.clone();
                }
                None if watched >= MAX_WATCHED_GROUPS => {
                    return Err(bad(format!(
                        "a session watches at most {MAX_WATCHED_GROUPS} groups"
                    )));
                }
                None => view.groups.push(WatchedGroup {
                    group: group.clone(),
                    counts,
                    members: member_ids.clone(),
                }),
            }
            if view.members().len() > MAX_WATCHED_MEMBERS {
                return Err(bad(format!(
                    "a session watches at most {MAX_WATCHED_MEMBERS} members"
                )));
            }
            us.set_view(h, view.clone());
            let shown = self.follow_union(me, &us)?;
            let changes = self.view_changes(me, &before, &view, &shown);
            self.push_snapshot(h, &changes);
            Ok(())
        });
        let Some(t) = counter.groups.get_mut(&group) else {
            return r;
        };
        if r.is_ok() {
            t.watchers.retain(|(w, _)| !Arc::ptr_eq(w, h));
            t.watchers.push((h.clone(), counts));
            if counts {
                let item = render_count(&group, t.counts);
                h.push_counts(self.engine.published_tick(), vec![(t.key, item)]);
            }
        } else if t.watchers.is_empty() {
            counter.untrack(&group);
        }
        r
    }

    /// `unwatch_group`: stop; the members shown only for it leave the view.
    pub(super) fn unwatch_group(
        &self,
        h: &Arc<SessionHandle>,
        group: &str,
    ) -> Result<(), ProtocolError> {
        metrics::counter!(m::VIEW_CHANGES, "type" => "unwatch_group").increment(1);
        let mut counter = self.counter.lock();
        let me = UserId(h.sid.user);
        let r = self.registry.with_sessions(me.0, |us| {
            let mut view = h.view();
            let before = view.clone();
            let n = view.groups.len();
            view.groups.retain(|g| &*g.group != group);
            if view.groups.len() == n {
                return Err(refuse(ErrorCode::NotFound, "this group is not watched"));
            }
            us.set_view(h, view.clone());
            let shown = self.follow_union(me, &us)?;
            let changes = self.view_changes(me, &before, &view, &shown);
            self.push_snapshot(h, &changes);
            Ok(())
        });
        if r.is_ok() {
            drop_watcher(&mut counter, group, h);
        }
        r
    }

    /// What a session must be told when its view goes from `before` to `after`: members
    /// coming into view (their state), members leaving it (removed, unless still shown as a
    /// friend).
    fn view_changes(
        &self,
        me: UserId,
        before: &View,
        after: &View,
        shown: &HashMap<u32, Presence>,
    ) -> Vec<(u32, Change)> {
        let (old, new) = (before.members(), after.members());
        let mut out = Vec::new();
        for &u in new.iter().filter(|u| old.binary_search(u).is_err()) {
            if let Some(p) = shown.get(&u) {
                out.push((u, Change::Presence(p.clone())));
            }
        }
        for &u in old.iter().filter(|u| new.binary_search(u).is_err()) {
            let friend_shown = after.focus_allows(u) && self.engine.are_friends(me, UserId(u));
            if !friend_shown {
                out.push((u, Change::Removed));
            }
        }
        out
    }

    /// A session ends: its view no longer counts in its user's union, and its watches end.
    pub(super) fn views_closed(&self, h: &Arc<SessionHandle>) {
        let view = h.view();
        if view.is_default() {
            return;
        }
        let mut counter = self.counter.lock();
        for g in &view.groups {
            drop_watcher(&mut counter, &g.group, h);
        }
        let me = UserId(h.sid.user);
        self.registry.with_sessions(me.0, |us| {
            if let Err(e) = self.follow_union(me, &us) {
                tracing::warn!("narrowing a closed session's view: {}", e.message);
            }
        });
    }

    /// A session starts: it sees every friend, so a user whose other sessions were all
    /// focused gets its whole view back, and the new session the friends the focus kept out
    /// of the ticks since its welcome.
    pub(super) fn views_opened(&self, h: &Arc<SessionHandle>) {
        let me = UserId(h.sid.user);
        self.registry.with_sessions(me.0, |us| {
            let others: Vec<Arc<SessionHandle>> = us
                .sessions
                .iter()
                .filter(|o| !Arc::ptr_eq(o, h))
                .cloned()
                .collect();
            let (Some(before), _) = union(&others) else {
                return; // the user's diff already carried every friend
            };
            if others.is_empty() {
                return;
            }
            match self.follow_union(me, &us) {
                // No tick since the welcome: nothing was missed.
                Ok(_) if self.engine.published_tick() <= h.welcome_tick => {}
                Ok(shown) => {
                    let missed: Vec<(u32, Change)> = shown
                        .into_iter()
                        .filter(|(u, _)| {
                            before.binary_search(&UserId(*u)).is_err()
                                && self.engine.are_friends(me, UserId(*u))
                        })
                        .map(|(u, p)| (u, Change::Presence(p)))
                        .collect();
                    self.push_snapshot(h, &missed);
                }
                Err(e) => tracing::warn!("widening the view for a new session: {}", e.message),
            }
        });
    }

    /// After a tick: moves the watched groups' counts and, on the batching period's first
    /// engine tick (`send`), hands the ones changed since out, one `group_counts` frame per
    /// session at most.
    pub(super) fn hand_out_counts(&self, batch: &Batch, send: bool) {
        let mut counter = self.counter.lock();
        metrics::gauge!(m::WATCHED_GROUPS).set(counter.groups.len() as f64);
        if counter.groups.is_empty() {
            return;
        }
        let mut moved = counter.apply(batch);
        if !send {
            // Kept for the period's hand-out, as a membership change is.
            counter.changed.append(&mut moved);
            return;
        }
        // A membership change marks its group too (`group_changed`).
        moved.append(&mut counter.changed);
        let mut changed = Vec::new();
        for g in moved {
            if let Some(t) = counter.groups.get_mut(&g)
                && std::mem::take(&mut t.dirty)
                && t.counts != t.sent
            {
                t.sent = t.counts;
                let item = render_count(&g, t.counts);
                changed.push((g, (t.key, item)));
            }
        }
        match changed.as_slice() {
            [] => {}
            // The common case, one group: straight to its watchers.
            [(g, (key, item))] => {
                if let Some(t) = counter.groups.get(g) {
                    let mut sent = 0;
                    for (w, wants) in &t.watchers {
                        if *wants {
                            w.push_counts(batch.tick, vec![(*key, item.clone())]);
                            sent += 1;
                        }
                    }
                    metrics::counter!(m::GROUP_COUNTS_SENT).increment(sent);
                }
            }
            _ => {
                let mut per_session: HashMap<*const SessionHandle, PendingCounts> = HashMap::new();
                for (g, (key, item)) in &changed {
                    let Some(t) = counter.groups.get(g) else {
                        continue;
                    };
                    for (w, wants) in &t.watchers {
                        if *wants {
                            per_session
                                .entry(Arc::as_ptr(w))
                                .or_insert_with(|| (w.clone(), Vec::new()))
                                .1
                                .push((*key, item.clone()));
                        }
                    }
                }
                let mut sent = 0;
                for (_, (h, items)) in per_session {
                    sent += items.len() as u64;
                    h.push_counts(batch.tick, items);
                }
                metrics::counter!(m::GROUP_COUNTS_SENT).increment(sent);
            }
        }
    }

    /// A group's members changed (`Some`) or it was deleted (`None`): its counts start
    /// again, members no longer in it leave every watching session's view, and a deleted
    /// group is watched no more (its watchers get counts of zero).
    pub(super) fn group_changed(&self, gid: &str, members: Option<&[String]>) {
        let mut counter = self.counter.lock();
        let Some(old) = counter.untrack(gid) else {
            return;
        };
        let group: Arc<str> = Arc::from(gid);
        let ids: Vec<u32> = members
            .unwrap_or_default()
            .iter()
            .filter_map(|n| self.engine.intern(n).ok().map(|u| u.0))
            .collect();
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        if members.is_some() {
            let users: Vec<UserId> = ids.iter().map(|&u| UserId(u)).collect();
            let presence = self.engine.presence_of(&users);
            counter.track(&group, ids.clone(), &presence);
        }
        let mut kept = Vec::new();
        let old_sent = old.sent;
        for (h, counts_wanted) in old.watchers {
            let me = UserId(h.sid.user);
            let still_member = ids.binary_search(&me.0).is_ok();
            self.registry.with_sessions(me.0, |us| {
                let mut view = h.view();
                let before = view.clone();
                if still_member {
                    for g in view.groups.iter_mut().filter(|g| g.group == group) {
                        g.members.retain(|m| ids.binary_search(m).is_ok());
                    }
                } else {
                    view.groups.retain(|g| g.group != group);
                }
                if view == before {
                    return;
                }
                us.set_view(&h, view.clone());
                match self.follow_union(me, &us) {
                    Ok(shown) => {
                        let changes = self.view_changes(me, &before, &view, &shown);
                        self.push_snapshot(&h, &changes);
                    }
                    Err(e) => tracing::warn!("narrowing a view: {}", e.message),
                }
            });
            if still_member {
                kept.push((h, counts_wanted));
            } else if counts_wanted {
                // Gone from the group (or the group is gone): a last count of nothing.
                let item = render_count(&group, GroupPresence::default());
                h.push_counts(self.engine.published_tick(), vec![(old.key, item)]);
            }
        }
        match counter.groups.get_mut(&group) {
            Some(t) if !kept.is_empty() => {
                t.watchers = kept;
                // What the watchers saw last: the next tick sends the new counts if they differ.
                t.sent = old_sent;
                t.dirty = true;
                counter.changed.push(group.clone());
            }
            _ => {
                counter.untrack(&group);
            }
        }
    }

    /// Cluster mode: the users peers must stream here beyond friends (every member of a
    /// group watched here), if that set changed since the last call or `again`; its
    /// generation is remembered.
    pub(crate) fn follows_due(&self, again: bool) -> Option<Vec<String>> {
        let generation = self.counter.lock().generation;
        let last = self
            .follows_sent
            .swap(generation, std::sync::atomic::Ordering::AcqRel);
        (last != generation || again).then(|| self.follow_set())
    }

    /// Cluster mode: every member of a group watched here (the set `PeerFrame::Follow`
    /// carries).
    pub(crate) fn follow_set(&self) -> Vec<String> {
        let ids: Vec<u32> = self.counter.lock().members.keys().copied().collect();
        self.engine.with_names(|name| {
            ids.iter()
                .filter_map(|&u| name(UserId(u)).map(str::to_owned))
                .collect()
        })
    }

    /// `GET /v1/groups/{gid}/presence` on a single node: from the live counts of a watched
    /// group, else counted now. (A cluster node asks the members' owners:
    /// `cluster::admin::get_group_presence`.)
    pub fn group_presence(&self, gid: &str) -> Result<GroupPresence, AdminError> {
        if self.routes.read().is_some() {
            return Err(AdminError::Unavailable(
                "a cluster node counts a group from its members' owners".into(),
            ));
        }
        if let Some(t) = self.counter.lock().groups.get(gid) {
            return Ok(t.counts);
        }
        let members = self.group(gid)?;
        let users: Vec<UserId> = members
            .iter()
            .filter_map(|n| self.engine.lookup(n))
            .collect();
        let mut counts = GroupPresence {
            total: members.len() as u64,
            ..GroupPresence::default()
        };
        for p in self.engine.presence_of(&users) {
            counts.add(cat(&p), 1);
        }
        Ok(counts)
    }
}

/// Removes `h` from `group`'s watchers; a group nobody watches is counted no more.
fn drop_watcher(counter: &mut Counter, group: &str, h: &Arc<SessionHandle>) {
    if let Some(t) = counter.groups.get_mut(group) {
        t.watchers.retain(|(w, _)| !Arc::ptr_eq(w, h));
        if t.watchers.is_empty() {
            counter.untrack(group);
        }
    }
}

/// A session and the counts for it this tick.
type PendingCounts = (Arc<SessionHandle>, Vec<(u32, Bytes)>);

/// One `group_counts` entry.
fn render_count(group: &str, c: GroupPresence) -> Bytes {
    let entry = presence_wire::GroupCount {
        group: group.into(),
        online: c.online,
        idle: c.idle,
        total: c.total,
    };
    Bytes::from(serde_json::to_vec(&entry).unwrap_or_default())
}
