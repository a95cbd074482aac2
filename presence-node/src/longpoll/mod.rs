//! HTTP long-poll clients at `/v1/lp/*` on the client port (protocol v1.1): `open` (a hello),
//! `poll` (frames after a cursor, held until there is one), `send`, `close`.
//!
//! A long-poll session is a service session like a WebSocket's ([`session`]): its frames wait
//! in a numbered buffer for the next poll, and every request is a heartbeat. The rules the
//! protocol leaves open, decided here (docs/protocol.md states them for clients):
//!
//! - The session id is 160 random bits in hex, a bearer secret; the node keeps only its
//!   SHA-256, so the map lookup says nothing about other ids. It never appears in logs (the
//!   session's number on this node does).
//! - A request may also carry `Authorization: Bearer <token>`; then the token must verify and
//!   name the session's user (`401`, `403` otherwise): a session id taken from one user cannot
//!   be used under another user's token.
//! - A request with an `Origin` header other than `--cors-origin` is refused with `403` before
//!   it touches a session (a page of another site cannot drive a session, even with a
//!   "simple" request the browser sends without a preflight).
//! - One poll at a time: a newer poll ends the older one with an empty answer (its own
//!   cursor). A cursor past the last frame is `400`; one behind a cursor already polled with
//!   is `409` (those frames are forgotten) and does not disturb the waiting poll.
//! - An unknown session id is `404`; an ended one (closed, expired, moved, flooded) is `410`
//!   with the `error` that ended it, for [`TOMBSTONE_MIN`] or twice the heartbeat timeout,
//!   whichever is longer, then `404`.
//! - `open`'s refusals: the `error` message with `401` (unauthorized), `400` (protocol,
//!   bad_request), `403` (forbidden: too many sessions), `409` (moved: the body names the
//!   owner's `lp` base URL), `503` (unavailable), `500` (internal).

pub mod body;
mod http;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use axum::routing::{get, post};

use crate::node::Node;
use session::Lp;

/// Shortest time an ended session's id answers `410` (then `404`).
pub const TOMBSTONE_MIN: Duration = Duration::from_secs(60);

/// The long-poll sessions of a node, by the digest of their ids.
pub struct LongPoll {
    node: Arc<Node>,
    sessions: parking_lot::Mutex<HashMap<[u8; 32], Arc<Lp>>>,
    next_id: AtomicU64,
    hold: Duration,
    cors: Option<HeaderValue>,
    tombstone: Duration,
}

/// A session id's digest: the map's key.
fn digest(sid: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, sid.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl LongPoll {
    pub fn new(node: Arc<Node>) -> anyhow::Result<Arc<Self>> {
        let cfg = node.service().config();
        let cors = cfg
            .cors_origin
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()?;
        let hold = cfg.lp_hold_effective();
        if hold < cfg.lp_hold {
            tracing::warn!(
                ?hold,
                "lp-hold is over two thirds of the heartbeat timeout: polls are held {hold:?}"
            );
        }
        let tombstone = (cfg.heartbeat_timeout * 2).max(TOMBSTONE_MIN);
        Ok(Arc::new(LongPoll {
            node,
            sessions: parking_lot::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            hold,
            cors,
            tombstone,
        }))
    }

    fn insert(&self, sid: &str, lp: Arc<Lp>) {
        self.sessions.lock().insert(digest(sid), lp);
    }

    fn get(&self, sid: &str) -> Option<Arc<Lp>> {
        self.sessions.lock().get(&digest(sid)).cloned()
    }

    /// Forgets sessions that ended more than the tombstone time ago.
    fn reap(&self) {
        let tombstone = self.tombstone;
        self.sessions
            .lock()
            .retain(|_, lp| lp.ended_at().is_none_or(|t| t.elapsed() < tombstone));
    }

    /// Sessions known (live or ended recently).
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The long-poll routes, and the task that forgets ended sessions (it stops at shutdown).
pub fn router(node: Arc<Node>) -> anyhow::Result<Router> {
    let lp = LongPoll::new(node.clone())?;
    let every = (lp.tombstone / 4).max(Duration::from_secs(1));
    let weak = Arc::downgrade(&lp);
    let shutdown = node.shutdown().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match weak.upgrade() {
                Some(lp) => lp.reap(),
                None => return,
            }
        }
    });
    Ok(Router::new()
        .route("/v1/lp/open", post(http::open).options(http::preflight))
        .route("/v1/lp/poll", get(http::poll).options(http::preflight))
        .route("/v1/lp/send", post(http::send).options(http::preflight))
        .route("/v1/lp/close", post(http::close).options(http::preflight))
        .with_state(lp))
}

impl LongPoll {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
