//! The change follower (cluster mode): every node reads PostgreSQL's change log in commit
//! order (woken by `NOTIFY`, and polled in case a notice is lost) and applies each change to
//! its engine — the friendships with an end it owns, the groups — so an admin write made on
//! any node reaches the owners of both ends. A slot that finishes loading rewinds the cursor
//! to where its load began: changes committed meanwhile are applied again (edge changes are
//! idempotent), so none is missed between the load and the follower.

use std::sync::Arc;
use std::time::Duration;

use presence_pg::{ChangeKind, Listener, Notice};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::node::{Node, now_ms};

/// Changes read per query.
const BATCH: u32 = 1000;
/// How often the log is read without a notice.
const POLL: Duration = Duration::from_secs(1);

/// Asks the follower to read the log again from an earlier id.
pub type Rewind = mpsc::UnboundedSender<i64>;

/// Runs until the node shuts down, starting after change `cursor`; publishes the id of the
/// last change applied.
pub async fn run(
    node: Arc<Node>,
    store: Arc<presence_pg::Store>,
    url: String,
    mut cursor: i64,
    applied: watch::Sender<i64>,
    mut rewinds: mpsc::UnboundedReceiver<i64>,
) {
    let mut listener = match Listener::start(&url) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("no LISTEN on the change log ({e}): polling it every {POLL:?}");
            None
        }
    };
    loop {
        loop {
            let changes = match store.changes_after(cursor, BATCH).await {
                Ok(c) => c,
                Err(e) => {
                    warn!("reading the change log: {e}");
                    break;
                }
            };
            let n = changes.len();
            for c in changes {
                apply(&node, &store, &c).await;
                cursor = c.id;
            }
            applied.send_replace(cursor);
            if n < BATCH as usize {
                break;
            }
        }
        tokio::select! {
            n = next_notice(&mut listener) => {
                if n.is_none() {
                    listener = None;
                }
            }
            Some(from) = rewinds.recv() => {
                if from < cursor {
                    info!(from, cursor, "change log read again after a slot load");
                    cursor = from;
                }
            }
            () = tokio::time::sleep(POLL) => {}
            () = node.shutdown().cancelled() => return,
        }
    }
}

async fn next_notice(listener: &mut Option<Listener>) -> Option<Notice> {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

async fn apply(node: &Node, store: &presence_pg::Store, change: &presence_pg::Change) {
    let svc = node.service();
    match &change.kind {
        ChangeKind::Edges { added, removed } => {
            if let Err(e) = svc.apply_store_edges(added, removed, now_ms()) {
                warn!("a friendship change from the store was refused: {e}");
            }
        }
        ChangeKind::PutGroup { gid, members } => svc.put_group_from_store(gid, members),
        ChangeKind::DeleteGroup { gid } => svc.delete_group_from_store(gid),
        // A bulk load: the owners of the slots it touched load them again (taking a slot's
        // users again adds their new friendships and leaves the rest as it is).
        ChangeKind::Reload => {
            let Some(routes) = svc.routes() else { return };
            let served: Vec<u16> = change
                .slots
                .iter()
                .copied()
                .filter(|&s| presence_cluster::Slot::new(s).is_some_and(|s| routes.serves(s)))
                .collect();
            if served.is_empty() {
                return;
            }
            match store.load_slots(&served).await {
                Ok(edges) => {
                    for (s, edges) in super::slots::by_slot(edges) {
                        let Some(slot) = presence_cluster::Slot::new(s) else {
                            continue;
                        };
                        if let Err(e) = svc.take_slot(slot, &edges, now_ms()) {
                            warn!(slot = s, "reloading the slot failed: {e}");
                        }
                    }
                }
                Err(e) => warn!("reloading slots after a bulk load: {e}"),
            }
        }
    }
}
