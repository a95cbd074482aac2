//! Writes the statuses users set on this node to PostgreSQL, a batch at a time, so that the
//! next owner of their slot loads them (see `service::statuses`).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::metrics as m;
use crate::node::Node;

/// How often the statuses set since the last write are written (one transaction each time).
pub const WRITE_EVERY: Duration = Duration::from_millis(50);
/// The pause after a failed write.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Writes what is pending; on failure puts it back (newer statuses win) and says so.
pub async fn flush(node: &Node, store: &presence_pg::Store) -> Result<usize, presence_pg::Error> {
    let rows = node.service().take_statuses();
    if rows.is_empty() {
        return Ok(0);
    }
    match store.put_statuses(&rows).await {
        Ok(()) => {
            metrics::counter!(m::STATUS_WRITES).increment(rows.len() as u64);
            Ok(rows.len())
        }
        Err(e) => {
            metrics::counter!(m::STATUS_WRITE_FAILURES).increment(1);
            node.service().requeue_statuses(rows);
            Err(e)
        }
    }
}

/// Runs until the node shuts down.
pub async fn run(node: Arc<Node>, store: Arc<presence_pg::Store>) {
    loop {
        let pause = match flush(&node, &store).await {
            Ok(_) => WRITE_EVERY,
            Err(e) => {
                warn!("writing statuses failed, trying again: {e}");
                RETRY_AFTER
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = node.shutdown().cancelled() => return,
        }
    }
}
