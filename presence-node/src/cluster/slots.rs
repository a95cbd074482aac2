//! The slot driver (cluster mode): feeds the slot map and the lease fence from etcd into a
//! [`SlotTable`] and carries out what it decides — loads taken slots' friend lists from
//! PostgreSQL into the engine, publishes the routes hellos follow (which tells the sessions
//! of lost slots `moved`), and releases a lost slot's users once its sessions are gone.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_cluster::etcd::LeaseState;
use presence_cluster::{Actions, Slot, SlotMap, SlotState, SlotTable, slot_of};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::metrics as m;
use crate::node::{Node, now_ms};
use crate::service::cluster::{Routes, SlotError};

/// How often slots being drained are checked for sessions still open.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Longest a load waits for the handover of slots taken from a node still in the cluster.
const HANDOFF_WAIT: Duration = Duration::from_secs(1);

/// What a slot load read from the store.
struct Loaded {
    /// Directed pairs `(user of a loaded slot, friend)`.
    edges: Vec<(String, String)>,
    /// Custom statuses of the loaded slots' users.
    statuses: Vec<presence_pg::StatusRow>,
}

/// A finished load: the slots (with the epochs asked for), the change-log id read before it,
/// and what it read.
type LoadResult = (Vec<(Slot, i64)>, i64, Result<Loaded, presence_pg::Error>);

/// Reads the change-log position, then the slots' edges and statuses: a change after that
/// position may or may not be in the load, so the follower applies it again once the slots
/// are taken.
async fn load(
    store: &presence_pg::Store,
    slots: &[(Slot, i64)],
) -> (i64, Result<Loaded, presence_pg::Error>) {
    let started = Instant::now();
    let before = match store.last_change_id().await {
        Ok(id) => id,
        Err(e) => return (0, Err(e)),
    };
    let list: Vec<u16> = slots.iter().map(|(s, _)| s.get()).collect();
    let fences: Vec<(u16, i64)> = slots.iter().map(|(s, e)| (s.get(), *e)).collect();
    let result = async {
        // Before the slots are served: from here on a former owner's chat commit for their
        // users is refused (it may not know yet that it lost them).
        store.fence_chat_slots(&fences).await?;
        Ok(Loaded {
            edges: store.load_slots(&list).await?,
            statuses: store.load_statuses(&list).await?,
        })
    }
    .await;
    metrics::histogram!(m::SLOT_LOAD_SECONDS).record(started.elapsed().as_secs_f64());
    (before, result)
}

/// Runs until the node shuts down.
pub async fn run(
    node: Arc<Node>,
    store: Arc<presence_pg::Store>,
    me: String,
    mut map: watch::Receiver<Arc<SlotMap>>,
    mut lease: watch::Receiver<LeaseState>,
    rewind: super::follow::Rewind,
) {
    let mut table = SlotTable::new(&me);
    let mut draining: BTreeSet<Slot> = BTreeSet::new();
    let (loaded_tx, mut loaded_rx) = mpsc::channel::<LoadResult>(16);
    let mut view = map.borrow_and_update().clone();
    // The view before the latest change: who owned the slots being taken.
    let mut before = view.clone();
    let mut fence = *lease.borrow_and_update();
    let mut pending = Actions::default();
    let mut published = -1;
    loop {
        let now = Instant::now();
        let holds = fence.holds(now);
        metrics::gauge!(m::LEASE_HELD).set(if holds { 1.0 } else { 0.0 });
        // The same deadline on the wall clock `now_ms` reads, for the hello path.
        let left = fence.until.filter(|_| holds).map(|u| u.duration_since(now));
        node.service().set_fence(left.map_or(0, |d| {
            now_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }));
        let mut actions = table.on_view(&view, holds);
        actions.serve.append(&mut pending.serve);
        carry_out(
            &node,
            &store,
            &me,
            &table,
            (&before, &view),
            actions,
            &mut draining,
            &loaded_tx,
            &mut published,
            holds,
        );
        drain(&node, &mut table, &mut draining, !holds);

        let fence_falls = fence
            .until
            .filter(|_| holds)
            .map(tokio::time::Instant::from_std);
        let poll = (!draining.is_empty()).then(|| tokio::time::Instant::now() + DRAIN_POLL);
        tokio::select! {
            r = map.changed() => {
                if r.is_err() { return }
                before = std::mem::replace(&mut view, map.borrow_and_update().clone());
            }
            r = lease.changed() => {
                if r.is_err() { return }
                fence = *lease.borrow_and_update();
            }
            Some((slots, before, result)) = loaded_rx.recv() => {
                pending = on_loaded(&node, &mut table, slots, result, &store, &loaded_tx);
                if !pending.serve.is_empty() {
                    let _ = rewind.send(before);
                }
            }
            () = sleep_until(fence_falls) => {
                warn!("the lease is no longer surely alive: serving nothing until it is");
            }
            () = sleep_until(poll) => {}
            () = node.shutdown().cancelled() => return,
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts the loads, publishes the routes, tells peers of newly served slots, and marks
/// lost slots for draining.
#[allow(clippy::too_many_arguments)]
fn carry_out(
    node: &Arc<Node>,
    store: &Arc<presence_pg::Store>,
    me: &str,
    table: &SlotTable,
    (before, view): (&Arc<SlotMap>, &Arc<SlotMap>),
    actions: Actions,
    draining: &mut BTreeSet<Slot>,
    loaded_tx: &mpsc::Sender<LoadResult>,
    published: &mut i64,
    holds: bool,
) {
    if actions.is_empty() {
        // The map may still have changed (members, others' slots): routes follow it.
        if view.revision() != *published {
            publish(node, me, table, view, holds);
            *published = view.revision();
        }
        return;
    }
    *published = view.revision();
    draining.extend(actions.evict.iter().copied());
    // Routes first: lost slots stop taking hellos and their sessions are told `moved`.
    publish(node, me, table, view, holds);
    // Then their users' presence to the nodes taking them, which start from it.
    if !actions.evict.is_empty()
        && let Some(hooks) = node.cluster_hooks()
    {
        let frames = node.service().handoff_frames(&actions.evict);
        if !frames.is_empty() {
            hooks.peers.send(node, frames);
        }
    }
    for &(slot, _) in &actions.serve {
        node.service().serving_slot(slot);
    }
    if !actions.serve.is_empty() {
        info!(
            slots = actions.serve.len(),
            served = table.served(),
            "serving slots"
        );
    }
    if !actions.load.is_empty() {
        let store = store.clone();
        let tx = loaded_tx.clone();
        let slots = actions.load;
        // Slots moving from a node still in the cluster: it hands their users over, and the
        // take waits for that (bounded), so a user online through the move stays online.
        let members: BTreeSet<&str> = view.members().map(|m| m.id.as_str()).collect();
        let handed_by_live: Vec<u16> = slots
            .iter()
            .filter(|(s, _)| {
                before
                    .owner(*s)
                    .is_some_and(|o| &*o.node != me && members.contains(&*o.node))
            })
            .map(|(s, _)| s.get())
            .collect();
        let node = node.clone();
        tokio::spawn(async move {
            let (before, result) = load(&store, &slots).await;
            if !handed_by_live.is_empty() && result.is_ok() {
                let deadline = tokio::time::Instant::now() + HANDOFF_WAIT;
                while !node.service().all_handed(&handed_by_live)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if !node.service().all_handed(&handed_by_live) {
                    metrics::counter!(m::HANDOFFS_MISSED).increment(1);
                    warn!(
                        slots = handed_by_live.len(),
                        "taking slots without their former owner's handover"
                    );
                }
            }
            let _ = tx.send((slots, before, result)).await;
        });
    }
}

/// A load finished: take the slots' users and serve them (if they are still ours under the
/// same epoch); returns the slots to serve. A failed load is tried again.
fn on_loaded(
    node: &Arc<Node>,
    table: &mut SlotTable,
    slots: Vec<(Slot, i64)>,
    result: Result<Loaded, presence_pg::Error>,
    store: &Arc<presence_pg::Store>,
    loaded_tx: &mpsc::Sender<LoadResult>,
) -> Actions {
    let mut actions = Actions::default();
    let loaded = match result {
        Ok(e) => e,
        Err(e) => {
            warn!(
                slots = slots.len(),
                "loading slots failed, trying again: {e}"
            );
            let store = store.clone();
            let tx = loaded_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (before, result) = load(&store, &slots).await;
                let _ = tx.send((slots, before, result)).await;
            });
            return actions;
        }
    };
    let mut by_slot = by_slot(loaded.edges);
    let mut statuses: HashMap<u16, Vec<presence_pg::StatusRow>> = HashMap::new();
    for r in loaded.statuses {
        statuses
            .entry(slot_of(r.user.as_bytes()).get())
            .or_default()
            .push(r);
    }
    let now = now_ms();
    for (slot, epoch) in slots {
        if table.state(slot) != (SlotState::Loading { epoch }) {
            continue;
        }
        let edges = by_slot.remove(&slot.get()).unwrap_or_default();
        match node.service().take_slot(slot, &edges, now) {
            Ok(_) => {
                // Before the slot is served: the first tick under this owner shows them.
                let rows = statuses.remove(&slot.get()).unwrap_or_default();
                node.service().restore_statuses(slot, &rows, now);
                actions.serve.extend(table.loaded(slot, epoch).serve);
            }
            Err(e) => warn!(slot = slot.get(), "taking the slot failed: {e}"),
        }
    }
    actions
}

/// A load's edges `(user, friend)` by the slot of their user.
pub fn by_slot(edges: Vec<(String, String)>) -> HashMap<u16, Vec<(String, String)>> {
    let mut out: HashMap<u16, Vec<(String, String)>> = HashMap::new();
    for (u, f) in edges {
        out.entry(slot_of(u.as_bytes()).get())
            .or_default()
            .push((u, f));
    }
    out
}

/// Releases the users of drained slots whose sessions are all gone.
fn drain(node: &Node, table: &mut SlotTable, draining: &mut BTreeSet<Slot>, fenced: bool) {
    let now = now_ms();
    draining.retain(|&slot| {
        if table.state(slot) != SlotState::Draining {
            return false;
        }
        match node.service().release_slot(slot, now, fenced) {
            Ok(_) => {
                // The release the table asks for is the one just done.
                let _ = table.drained(slot);
                false
            }
            Err(SlotError::HasSessions(_)) => true,
            Err(e) => {
                warn!(slot = slot.get(), "releasing the slot failed: {e}");
                true
            }
        }
    });
}

/// Publishes the routes of `table` under `view`: hellos follow them, and live sessions of
/// users no longer served here are told `moved`.
fn publish(node: &Node, me: &str, table: &SlotTable, view: &Arc<SlotMap>, holds: bool) {
    let told = node
        .service()
        .set_routes(Routes::with_lease(me, table, view.clone(), holds));
    if told > 0 {
        info!(sessions = told, "sessions told to move");
    }
    metrics::gauge!(m::SLOTS_SERVED).set(table.served() as f64);
}
