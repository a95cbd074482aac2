//! Presence between nodes (cluster mode), decided here, clock- and socket-free: how frames
//! from peers fold into the engine before the tick that publishes them, and what each tick
//! sends each peer.
//!
//! ```text
//! peer link ──> Replica::received(peer, frame)         (queued until the next tick)
//! tick:  Replica::fold(engine, routes)    ──> mirrored presence set; Resync asks to send
//!        Engine::tick                     ──> Batch::outgoing (owned users that changed)
//!        Replica::outgoing(engine, batch) ──> one PeerFrame::Tick per peer ──> peer link
//! ```
//!
//! Each slot's updates to a peer form a chain under the slot's epoch ([`presence_peer::seq`]):
//! a new connection, a newly served slot, a resync request or an overflowed queue start the
//! slot again with a snapshot: every user of the slot with a friend on that peer. The
//! receiver drops updates of an epoch older than the owner its map names.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use presence_cluster::{Slot, slot_of};
use presence_core::{Batch, Change, Engine, Presence, State, UserId};
use presence_peer::{Inbound, Outbound, PeerEntry, PeerFrame, SlotUpdate, Verdict};

use super::cluster::Routes;

/// Counts for metrics and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Mirrored presences set (or dropped).
    pub applied: usize,
    /// Slot updates dropped as stale (a former owner's, or duplicates).
    pub stale: usize,
    /// Snapshots asked for.
    pub resyncs: usize,
    /// Updates refused by the engine (a peer's bug, or a split view of ownership).
    pub refused: usize,
}

/// The replication state of one node.
#[derive(Debug)]
pub struct Replica {
    /// Connected peers and the chains of slots sent to each.
    peers: HashMap<String, Outbound>,
    inbound: Inbound,
    /// Mirrored users by slot, as the last snapshot and updates listed them.
    mirrored: HashMap<u16, HashSet<UserId>>,
    /// Users owned here, by slot.
    owned: HashMap<u16, HashSet<UserId>>,
    /// Received, not yet folded.
    queue: Vec<(String, PeerFrame)>,
    /// Slots to ask peers for again with the next tick's frames (each once, however many
    /// slots were taken since the last tick).
    asks: BTreeSet<(String, u16)>,
    /// Handovers of lost slots for nodes not linked yet: sent when their link comes up.
    held: HashMap<String, BTreeMap<u16, SlotUpdate>>,
    /// Slots handed over to this node and not taken yet.
    handed: HashSet<u16>,
    /// Per peer: the users it wants mirrored beyond friends ([`PeerFrame::Follow`]), sent
    /// to it as if they had a friend there.
    follows: HashMap<String, HashSet<UserId>>,
}

impl Default for Replica {
    fn default() -> Self {
        Replica::new()
    }
}

impl Replica {
    pub fn new() -> Replica {
        Replica {
            peers: HashMap::new(),
            inbound: Inbound::new(),
            mirrored: HashMap::new(),
            owned: HashMap::new(),
            queue: Vec::new(),
            asks: BTreeSet::new(),
            held: HashMap::new(),
            handed: HashSet::new(),
            follows: HashMap::new(),
        }
    }

    /// A link to `peer` is up: every slot served here starts again with a snapshot. Returns
    /// the handovers held for it.
    #[must_use = "send the held handovers to the peer"]
    pub fn connected(&mut self, peer: &str, routes: &Routes) -> Option<PeerFrame> {
        let mut out = Outbound::new();
        for (slot, _) in routes.served() {
            out.resync(slot.get());
        }
        self.peers.insert(peer.to_owned(), out);
        let held = self.held.remove(peer)?;
        Some(PeerFrame::Handoff {
            slots: held.into_values().collect(),
        })
    }

    /// Whether every one of `slots` has been handed over to this node (and not taken yet).
    pub fn all_handed(&self, slots: &[u16]) -> bool {
        slots.iter().all(|s| self.handed.contains(s))
    }

    /// The link to `peer` broke: nothing goes there until it is back, and the slots it sent
    /// wait for fresh snapshots.
    pub fn disconnected(&mut self, peer: &str, routes: &Routes) {
        self.peers.remove(peer);
        // The peer sends its follows again when the link is back.
        self.follows.remove(peer);
        self.inbound.forget(
            Slot::all()
                .filter(|&s| routes.owner_of(s) == Some(peer))
                .map(Slot::get),
        );
    }

    pub fn is_connected(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// `slot` is served here from now on (a new slot, or a new epoch): peers get a snapshot.
    pub fn serving(&mut self, slot: Slot) {
        for out in self.peers.values_mut() {
            out.resync(slot.get());
        }
    }

    /// A peer's queue overflowed with these slots' updates in it: they start again.
    pub fn overflowed(&mut self, peer: &str, slots: impl IntoIterator<Item = u16>) {
        if let Some(out) = self.peers.get_mut(peer) {
            for s in slots {
                out.resync(s);
            }
        }
    }

    /// Users taken here (their slot's load).
    pub fn owned(&mut self, slot: Slot, users: impl IntoIterator<Item = UserId>) {
        self.owned.entry(slot.get()).or_default().extend(users);
        // What was mirrored of them is now this node's own state.
        self.mirrored.remove(&slot.get());
        self.handed.remove(&slot.get());
        self.inbound.drop_slot(slot.get());
    }

    /// Users just taken here may have remote friends this node never mirrored (none of their
    /// friends was owned here before, so their owners sent nothing here): asks those friends'
    /// owners for their slots again, or such a friend would look never seen here until its
    /// next change, however long it stays online.
    pub fn ask_for_unseen_friends(&mut self, engine: &Engine, routes: &Routes, users: &[UserId]) {
        let mut unseen = Vec::new();
        engine.for_each_remote_friend(users.iter().copied(), |_, f| {
            if engine.presence(f) == Presence::NEVER_SEEN {
                unseen.push(f);
            }
        });
        if unseen.is_empty() {
            return;
        }
        let asks = &mut self.asks;
        engine.with_names(|name| {
            for &f in &unseen {
                let Some(n) = name(f) else { continue };
                let slot = slot_of(n.as_bytes());
                if let Some(owner) = routes.owner_of(slot)
                    && owner != routes.me()
                {
                    asks.insert((owner.to_owned(), slot.get()));
                }
            }
        });
    }

    /// The users of `slot` owned here.
    pub fn owned_in(&self, slot: Slot) -> Vec<UserId> {
        self.owned
            .get(&slot.get())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The slot's users were released.
    pub fn released(&mut self, slot: Slot) {
        self.owned.remove(&slot.get());
        for out in self.peers.values_mut() {
            out.drop_slot(slot.get());
        }
    }

    /// Queues a frame from `peer` for the next tick.
    pub fn received(&mut self, peer: String, frame: PeerFrame) {
        self.queue.push((peer, frame));
    }

    /// Folds the queued frames into the engine as mirrored presence (published by the next
    /// tick), and returns the frames to send back (snapshot requests).
    pub fn fold(
        &mut self,
        engine: &Engine,
        routes: &Routes,
        now: u64,
    ) -> (Folded, Vec<(String, PeerFrame)>) {
        let mut folded = Folded::default();
        let mut replies: Vec<(String, PeerFrame)> = std::mem::take(&mut self.asks)
            .into_iter()
            .map(|(peer, slot)| (peer, PeerFrame::Resync { slot }))
            .collect();
        for (peer, frame) in std::mem::take(&mut self.queue) {
            match frame {
                PeerFrame::Tick { slots, .. } => {
                    for update in slots {
                        self.fold_update(
                            engine,
                            routes,
                            &peer,
                            update,
                            now,
                            &mut folded,
                            &mut replies,
                        );
                    }
                }
                PeerFrame::Resync { slot } => {
                    if let Some(out) = self.peers.get_mut(&peer) {
                        out.resync(slot);
                    }
                }
                PeerFrame::Handoff { slots } => {
                    let f = self.handed_over(engine, routes, slots, now);
                    folded.applied += f.applied;
                    folded.stale += f.stale;
                    folded.refused += f.refused;
                }
                PeerFrame::Follow { users } => {
                    folded.refused += self.followed_by(engine, &peer, &users);
                }
                // The links handle these themselves.
                PeerFrame::Hello { .. } | PeerFrame::Applied { .. } | PeerFrame::Chat { .. } => {}
            }
        }
        (folded, replies)
    }

    /// The users `peer` follows now (the whole set): the slots of those newly followed
    /// that are owned here start again for it, so their snapshot carries them at once.
    /// Returns how many ids were refused.
    fn followed_by(&mut self, engine: &Engine, peer: &str, users: &[String]) -> usize {
        let mut refused = 0;
        let mut set = HashSet::with_capacity(users.len());
        for u in users {
            match engine.intern(u) {
                Ok(id) => {
                    set.insert(id);
                }
                Err(_) => refused += 1,
            }
        }
        let before = self.follows.remove(peer).unwrap_or_default();
        let mut restart = BTreeSet::new();
        for (slot, owned) in &self.owned {
            if owned.iter().any(|u| set.contains(u) && !before.contains(u)) {
                restart.insert(*slot);
            }
        }
        if let Some(out) = self.peers.get_mut(peer) {
            for s in restart {
                out.resync(s);
            }
        }
        if !set.is_empty() {
            self.follows.insert(peer.to_owned(), set);
        }
        refused
    }

    /// Connected peers.
    pub fn peer_names(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn fold_update(
        &mut self,
        engine: &Engine,
        routes: &Routes,
        peer: &str,
        update: SlotUpdate,
        now: u64,
        folded: &mut Folded,
        replies: &mut Vec<(String, PeerFrame)>,
    ) {
        let Some(slot) = Slot::new(update.slot) else {
            folded.refused += 1;
            return;
        };
        // A former owner's update, older than the assignment this node knows: drop it.
        if routes.epoch_of(slot).is_some_and(|e| update.epoch < e) || routes.serves(slot) {
            folded.stale += 1;
            return;
        }
        let verdict =
            self.inbound
                .on_update(update.slot, update.epoch, update.seq, update.snapshot);
        match verdict {
            Verdict::Apply | Verdict::Replace => {}
            Verdict::Stale | Verdict::Waiting => {
                folded.stale += 1;
                return;
            }
            Verdict::Resync => {
                folded.resyncs += 1;
                replies.push((peer.to_owned(), PeerFrame::Resync { slot: update.slot }));
                return;
            }
        }
        self.apply(
            engine,
            slot,
            &update,
            verdict == Verdict::Replace,
            now,
            folded,
        );
    }

    /// Slots handed over by `peer`, their former owner, as it left them ([`PeerFrame::Handoff`]):
    /// their users are mirrored here at once (not at the next tick), so that the take that
    /// follows the slots' load starts their state machines from them. Not for slots served
    /// here already (a take already done started from what it had).
    pub fn handed_over(
        &mut self,
        engine: &Engine,
        routes: &Routes,
        slots: Vec<SlotUpdate>,
        now: u64,
    ) -> Folded {
        let mut folded = Folded::default();
        for update in slots {
            let Some(slot) = Slot::new(update.slot) else {
                folded.refused += 1;
                continue;
            };
            // A later assignment than the handover's, or a take already done: too late.
            // (A handover may arrive before this node has seen the map that gives it the
            // slot: an epoch newer than the routes' is taken.)
            if routes.serves(slot) || routes.epoch_of(slot).is_some_and(|e| e > update.epoch) {
                folded.stale += 1;
                continue;
            }
            self.apply(engine, slot, &update, false, now, &mut folded);
            self.handed.insert(update.slot);
        }
        folded
    }

    /// The handover of `slots`, just lost, to the nodes they move to: every user of each
    /// slot owned here and seen (none is a handover too: the taker waits for it), under the
    /// epoch of the slot's new assignment. For a node not linked yet it is held until its
    /// link comes up (one per slot, the latest).
    pub fn handoff(
        &mut self,
        engine: &Engine,
        routes: &Routes,
        slots: &[Slot],
    ) -> Vec<(String, PeerFrame)> {
        let mut by_peer: BTreeMap<String, Vec<SlotUpdate>> = BTreeMap::new();
        for &slot in slots {
            let (Some(peer), Some(epoch)) = (routes.owner_of(slot), routes.epoch_of(slot)) else {
                continue;
            };
            if peer == routes.me() {
                continue;
            }
            let mut users = self.owned_in(slot);
            users.retain(|&u| engine.presence(u) != Presence::NEVER_SEEN);
            users.sort_unstable();
            let u = update(engine, slot.get(), epoch, 0, true, &users);
            if self.peers.contains_key(peer) {
                by_peer.entry(peer.to_owned()).or_default().push(u);
            } else {
                self.held
                    .entry(peer.to_owned())
                    .or_default()
                    .insert(slot.get(), u);
            }
        }
        by_peer
            .into_iter()
            .map(|(peer, slots)| (peer, PeerFrame::Handoff { slots }))
            .collect()
    }

    /// Sets the mirrored presence of an update's users (all of the slot's, if `replace`).
    fn apply(
        &mut self,
        engine: &Engine,
        slot: Slot,
        update: &SlotUpdate,
        replace: bool,
        now: u64,
        folded: &mut Folded,
    ) {
        let texts: HashMap<u32, &str> =
            update.texts.iter().map(|(i, t)| (*i, t.as_str())).collect();
        let mut changes: Vec<(UserId, Option<Presence>)> = Vec::with_capacity(update.entries.len());
        for (i, e) in update.entries.iter().enumerate() {
            // Users of another slot, or unknown ids, are a peer's bug: skip them.
            if slot_of(e.user.as_bytes()) != slot {
                folded.refused += 1;
                continue;
            }
            let Ok(user) = engine.intern(&e.user) else {
                folded.refused += 1;
                continue;
            };
            if e.gone {
                changes.push((user, None));
                continue;
            }
            let text = u32::try_from(i).ok().and_then(|i| texts.get(&i)).copied();
            match e.presence(text) {
                Some(p) => changes.push((user, Some(p))),
                None => folded.refused += 1,
            }
        }
        let set = self.mirrored.entry(update.slot).or_default();
        if replace {
            let listed: HashSet<UserId> = changes.iter().map(|(u, _)| *u).collect();
            for &gone in set.iter().filter(|u| !listed.contains(u)) {
                changes.push((gone, None));
            }
        }
        // One user at a time if the whole update is refused, so one bad entry costs one user.
        let results: Vec<(UserId, bool)> = match engine.apply_mirrored(&changes, now) {
            Ok(()) => changes.iter().map(|(u, p)| (*u, p.is_some())).collect(),
            Err(_) => changes
                .iter()
                .filter_map(|(u, p)| {
                    let ok = engine.apply_mirrored(&[(*u, p.clone())], now).is_ok();
                    if !ok {
                        folded.refused += 1;
                    }
                    ok.then_some((*u, p.is_some()))
                })
                .collect(),
        };
        for (u, present) in results {
            folded.applied += 1;
            if present {
                set.insert(u);
            } else {
                set.remove(&u);
            }
        }
    }

    /// This tick's frames: for each connected peer, the changed users with a friend there,
    /// and the snapshots owed to it, grouped by slot under the slot's epoch. Nothing while
    /// the fence is down (`may_send` false): a node that cannot prove its lease says nothing.
    pub fn outgoing(
        &mut self,
        engine: &Engine,
        routes: &Routes,
        batch: &Batch,
        may_send: bool,
    ) -> Vec<(String, PeerFrame)> {
        if !may_send || self.peers.is_empty() {
            return Vec::new();
        }
        // peer -> slot -> users
        let mut plan: HashMap<&str, BTreeMap<u16, Vec<UserId>>> = HashMap::new();
        let changed = batch.outgoing.iter().filter_map(|&i| {
            let (u, c) = batch.entries.get(i as usize)?;
            matches!(c, Change::Presence(_)).then_some(*u)
        });
        let changed: Vec<UserId> = changed.collect();
        let mut pairs = Vec::new();
        engine.for_each_remote_friend(changed.iter().copied(), |user, friend| {
            pairs.push((user, friend))
        });
        // Each pair's slots under one hold of the names (no name copied).
        let slotted: Vec<(UserId, Slot, Slot)> = engine.with_names(|name| {
            let slot = |u: UserId| name(u).map(|n| slot_of(n.as_bytes()));
            pairs
                .iter()
                .filter_map(|&(user, friend)| Some((user, slot(user)?, slot(friend)?)))
                .collect()
        });
        for (user, us, fs) in slotted {
            let Some(peer) = routes.owner_of(fs) else {
                continue;
            };
            if !self.peers.contains_key(peer) {
                continue;
            }
            let list = plan.entry(peer).or_default().entry(us.get()).or_default();
            if list.last() != Some(&user) {
                list.push(user);
            }
        }
        // Users a peer follows go there as if they had a friend there.
        if !self.follows.is_empty() {
            let followed: Vec<(&str, UserId)> = self
                .follows
                .iter()
                .flat_map(|(peer, set)| {
                    changed
                        .iter()
                        .filter(|u| set.contains(u))
                        .map(move |&u| (peer.as_str(), u))
                })
                .collect();
            let slotted: Vec<(&str, UserId, Slot)> = engine.with_names(|name| {
                followed
                    .iter()
                    .filter_map(|&(p, u)| Some((p, u, slot_of(name(u)?.as_bytes()))))
                    .collect()
            });
            for (peer, user, us) in slotted {
                if self.peers.contains_key(peer) {
                    plan.entry(peer)
                        .or_default()
                        .entry(us.get())
                        .or_default()
                        .push(user);
                }
            }
        }
        let mut frames = Vec::new();
        let peers: Vec<String> = self.peers.keys().cloned().collect();
        for peer in peers {
            let mut slots: BTreeMap<u16, Vec<UserId>> =
                plan.remove(peer.as_str()).unwrap_or_default();
            let Some(out) = self.peers.get_mut(&peer) else {
                continue;
            };
            let due: Vec<u16> = out.due().collect();
            for s in due {
                slots.entry(s).or_default();
            }
            let mut updates = Vec::new();
            for (s, mut users) in slots {
                let Some(slot) = Slot::new(s) else { continue };
                let Some(epoch) = routes.serving_epoch(slot) else {
                    continue;
                };
                let next = out.next(s, epoch);
                if next.snapshot {
                    users = snapshot_users(&self.owned, engine, routes, slot, &peer);
                    if let (Some(set), Some(owned)) = (self.follows.get(&peer), self.owned.get(&s))
                    {
                        users.extend(owned.iter().filter(|u| {
                            set.contains(u) && engine.presence(**u) != Presence::NEVER_SEEN
                        }));
                    }
                }
                users.sort_unstable();
                users.dedup();
                updates.push(update(engine, s, epoch, next.seq, next.snapshot, &users));
            }
            if !updates.is_empty() {
                frames.push((
                    peer,
                    PeerFrame::Tick {
                        tick: batch.tick,
                        slots: updates,
                    },
                ));
            }
        }
        frames
    }
}

/// The users of `slot` owned here with a friend on `peer` (the users never seen are left
/// out: the receiver reads a user not listed as never seen).
fn snapshot_users(
    owned: &HashMap<u16, HashSet<UserId>>,
    engine: &Engine,
    routes: &Routes,
    slot: Slot,
    peer: &str,
) -> Vec<UserId> {
    {
        let Some(owned) = owned.get(&slot.get()) else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        engine.for_each_remote_friend(owned.iter().copied(), |u, f| pairs.push((u, f)));
        let mut users: Vec<UserId> = engine.with_names(|name| {
            pairs
                .into_iter()
                .filter(|&(_, f)| {
                    name(f).is_some_and(|n| routes.owner_of(slot_of(n.as_bytes())) == Some(peer))
                })
                .map(|(u, _)| u)
                .collect()
        });
        users.sort_unstable();
        users.dedup();
        users.retain(|&u| engine.presence(u) != Presence::NEVER_SEEN);
        users
    }
}

/// One slot's update with the current presence of `users`.
fn update(
    engine: &Engine,
    slot: u16,
    epoch: i64,
    seq: u64,
    snapshot: bool,
    users: &[UserId],
) -> SlotUpdate {
    let presence = engine.presence_of(users);
    let mut entries = Vec::with_capacity(users.len());
    let mut texts = Vec::new();
    engine.with_names(|name| {
        for (u, p) in users.iter().zip(&presence) {
            let Some(n) = name(*u) else { continue };
            if let Some(t) = p.text.as_deref().filter(|_| p.state != State::Offline)
                && let Ok(i) = u32::try_from(entries.len())
            {
                texts.push((i, t.to_owned()));
            }
            entries.push(PeerEntry::from_presence(n.to_owned(), p));
        }
    });
    SlotUpdate {
        slot,
        epoch,
        seq,
        snapshot,
        entries,
        texts,
    }
}
