//! The node's decisions, clock- and socket-free: the engine, the chat relay, the groups, the
//! session registry and every protocol rule. The driver (the connection tasks, the tick and
//! commit threads, the admin HTTP handlers) calls in with `now` and executes what comes back.
//!
//! ```text
//! client frame ──> connection task ──> Service::on_received(&mut Session, frame, now)
//!                                      └─> Effects { frames, ping, read, end } ──> client
//! store read done ────────────────────> Service::on_read(&mut Session, result, now)
//! tick thread ───> Service::on_tick(now) ──> each session's Outbox ──> connection task
//!                                            └─> Service::on_outbox(&mut Session, now)
//! commit thread ─> Chat::next_batch ─> store commit ─> Chat::committed ─> delivery thread
//!                  ─> Chat::hand_over ──> Outboxes (sent, inbox entries), webhook events
//! admin handler ─> Service::plan_* ─> GraphWrite ─> Store::write ─> Service::apply_graph_write
//! ```
//!
//! `now` is milliseconds since the Unix epoch, read by the driver (`now_ms`): no decision here
//! reads a clock. (A monotonic clock times the metrics, and paces how often the commit thread
//! writes held acks in `Chat::next_batch`; a device without an id gets a random one.) Blocking
//! work happens only in methods the driver runs on its own threads: store reads
//! ([`Service::read`]) and `Chat::next_batch`'s wait; the stores' writes are the driver's
//! (`Store::write` of a planned `GraphWrite`, the chat store's commit of a batch).

pub mod admin;
pub mod chat;
pub mod cluster;
pub mod replicate;
pub mod session;
pub mod statuses;
mod ticks;
pub mod views;

// The hand-offs to session tasks live in a tokio-free crate so that loom can model them.
pub use presence_handoff::{outbox, registry};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;
use presence_core::{Engine, UserId};

use crate::config::NodeConfig;
use crate::frames;
use crate::metrics as m;
use crate::store::Store;
use chat::Chat;
use outbox::CloseReason;
use registry::{Registry, SessionHandle};

pub use session::{Effects, End, Read, ReadResult, Received, RecvError, Session};

/// Groups: id -> members.
pub type Groups = HashMap<String, Arc<[String]>>;

/// What one tick did, for the driver's bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct TickReport {
    /// The tick handed out: a session that starts now follows it.
    pub tick: u64,
    /// Entries handed to sessions.
    pub handed: usize,
    /// Cluster mode: the frames for peers (one `Tick` per peer, and snapshot requests).
    pub peer_frames: Vec<(String, presence_peer::PeerFrame)>,
}

/// The node's state and rules.
pub struct Service {
    engine: Engine,
    cfg: NodeConfig,
    secret: Vec<u8>,
    admin_key: String,
    store: Store,
    chat: Chat,
    groups: RwLock<Groups>,
    registry: Registry,
    /// Cluster mode: the slots served here and where other users belong (`None`: a single
    /// node, which serves everyone).
    routes: RwLock<Option<Arc<cluster::Routes>>>,
    /// Cluster mode: presence to and from peers.
    replica: parking_lot::Mutex<replicate::Replica>,
    /// Cluster mode: until when (ms since the epoch) the lease surely holds; no hello is
    /// taken from then on, even before the slot driver has withdrawn the routes.
    fence_until: std::sync::atomic::AtomicU64,
    /// Cluster mode: statuses set here, for the store.
    statuses: statuses::StatusLog,
    /// Cluster mode: typing notices for users other nodes serve, by node, until the tick.
    peer_chat: parking_lot::Mutex<HashMap<String, Vec<presence_peer::ChatPush>>>,
    /// Watched groups' counts (v1.1).
    counter: parking_lot::Mutex<views::Counter>,
    /// Cluster mode: the counter's generation last told to peers (`PeerFrame::Follow`), and
    /// whether it must be told again (a frame lost on a full queue).
    follows_sent: std::sync::atomic::AtomicU64,
    follows_again: std::sync::atomic::AtomicBool,
    /// When the last ticks ran (for `presence_frame_delay_seconds`).
    tick_times: ticks::TickTimes,
}

impl Service {
    /// Opens what the node holds in its data folder — the graph store (loaded into a new
    /// engine and published, so the first welcome already has every friend), the groups, the
    /// chat store — with the settings of `cfg`. Blocking: it reads the stores.
    pub fn open(
        cfg: NodeConfig,
        secret: Vec<u8>,
        admin_key: String,
        shared_chat: Option<(Arc<dyn chat_relay::ChatStore>, u16)>,
        now: u64,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let engine = Engine::new(cfg.engine_config()?, now)?;
        let store = Store::open(&cfg.data_dir.join("graph.redb"))?;
        // In a cluster the graph is PostgreSQL's, loaded slot by slot as they are taken.
        let loaded = if cfg.is_cluster() {
            crate::store::Loaded::default()
        } else {
            store
                .load_into(&engine)
                .context("loading the friend graph")?
        };
        // Publish the loaded graph before any session can start: a welcome shows the graph as
        // of the last tick, so without this a client that reconnects before the first tick
        // would see no friends at all.
        let first = engine.tick(now);
        debug_assert!(first.diffs().next().is_none(), "no session exists yet");
        let groups: Groups = loaded
            .groups
            .into_iter()
            .map(|(g, m)| (g, m.into()))
            .collect();
        tracing::info!(
            edges = loaded.edges,
            groups = groups.len(),
            users = engine.user_count(),
            "graph loaded"
        );
        let limits = chat_relay::Limits {
            max_text: cfg.max_text,
            max_group: cfg.max_group,
            max_unsettled_sends: cfg.chat_max_in_flight,
            ..chat_relay::Limits::default()
        };
        let chat_dir = cfg.data_dir.join("chat");
        let backend = match shared_chat {
            Some((store, node_number)) => chat::ChatBackend::Shared { store, node_number },
            None => chat::ChatBackend::Local {
                dir: &chat_dir,
                kind: cfg.chat_store,
                node_id: cfg.node_id.as_deref().unwrap_or("0"),
            },
        };
        let chat = Chat::open(backend, limits)?;
        tracing::info!(
            store = if chat.is_shared() {
                "postgres"
            } else {
                cfg.chat_store.as_str()
            },
            "chat store open"
        );
        Ok(Self {
            engine,
            cfg,
            secret,
            admin_key,
            store,
            chat,
            groups: RwLock::new(groups),
            registry: Registry::default(),
            routes: RwLock::new(None),
            replica: parking_lot::Mutex::new(replicate::Replica::new()),
            fence_until: std::sync::atomic::AtomicU64::new(u64::MAX),
            statuses: statuses::StatusLog::default(),
            peer_chat: parking_lot::Mutex::new(HashMap::new()),
            counter: parking_lot::Mutex::new(views::Counter::default()),
            follows_sent: std::sync::atomic::AtomicU64::new(0),
            follows_again: std::sync::atomic::AtomicBool::new(false),
            tick_times: ticks::TickTimes::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn chat(&self) -> &Chat {
        &self.chat
    }

    /// Cluster mode: a chat frame for a user node `node` serves, sent with the next tick.
    pub(crate) fn queue_peer_chat(&self, node: String, push: presence_peer::ChatPush) {
        self.peer_chat.lock().entry(node).or_default().push(push);
    }

    /// The chat frames queued for other nodes since the last call (the tick's).
    pub fn take_peer_chat(&self) -> HashMap<String, Vec<presence_peer::ChatPush>> {
        std::mem::take(&mut *self.peer_chat.lock())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The chat relay's view of the graph and the groups.
    pub fn dir(&self) -> chat::Dir<'_> {
        chat::Dir {
            engine: &self.engine,
            groups: &self.groups,
            registry: &self.registry,
            routes: &self.routes,
        }
    }

    /// Verifies a client token at `now` (ms) with the node's secret, as a hello does.
    pub fn verify_token(
        &self,
        token: &str,
        now: u64,
    ) -> Result<crate::token::Claims, crate::token::TokenError> {
        crate::token::verify(&self.secret, token, now / 1000)
    }

    /// Whether `key` is the admin key (compared by digest, so the timing says nothing).
    pub fn admin_key_ok(&self, key: &str) -> bool {
        let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
        digest(key.as_bytes()).as_ref() == digest(self.admin_key.as_bytes()).as_ref()
    }

    /// Routes hellos by the cluster's slots from now on (cluster mode): users whose slot is
    /// not served here are answered `moved` or `unavailable`.
    ///
    /// Live sessions of users no longer served here are told to close with `moved` (or
    /// `unavailable`): they wake, say so and end. Returns how many were told.
    pub fn set_routes(&self, routes: cluster::Routes) -> usize {
        let routes = Arc::new(routes);
        *self.routes.write() = Some(routes.clone());
        // The registry's handles first, the names after: no stripe is held while the names
        // are (a session registering holds its stripe while the engine reads the names).
        let sessions = self.registry.all();
        let mut told = 0;
        self.engine.with_names(|name| {
            for (user, h) in &sessions {
                if name(UserId(*user)).is_some_and(|n| routes.elsewhere(n).is_some()) {
                    h.outbox.close(CloseReason::Moved);
                    told += 1;
                }
            }
        });
        told
    }

    /// Where `user`'s sessions belong, if not here.
    pub fn elsewhere(&self, user: &str) -> Option<cluster::Elsewhere> {
        self.routes.read().as_ref()?.elsewhere(user)
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.registry.count()
    }

    /// Starts a session in the engine and registers it, atomically with respect to the tick
    /// hand-out, so no batch after the welcome can be missed.
    fn open_session(
        &self,
        user: UserId,
        device: &str,
        now: u64,
    ) -> Result<(Arc<SessionHandle>, presence_core::Welcome), presence_core::Error> {
        self.registry
            .register(user, || self.engine.connect(user, device, now))
    }

    /// Ends a session: the engine keeps the user present for the grace period.
    pub fn close(&self, session: Session, how: presence_core::Disconnect, now: u64) {
        let handle = session.into_handle();
        self.registry.remove(&handle);
        self.views_closed(&handle);
        // Already gone if the engine expired it.
        let _ = self.engine.disconnect(handle.sid, how, now);
    }

    /// Asks every session to close (shutdown).
    pub fn close_all(&self) {
        self.registry
            .for_each(|h| h.outbox.close(CloseReason::Shutdown));
    }

    /// Asks the sessions of registry stripes `from..from + n` (wrapping) to ping their
    /// clients; returns where the next round starts. The tick driver walks the stripes so
    /// that every session is pinged once per third of the heartbeat timeout, a few stripes a
    /// tick, spreading the pings and the wakeups they cost.
    pub fn ping_stripes(&self, from: usize, n: usize) -> usize {
        for i in 0..n.min(registry::SHARDS) {
            self.registry
                .for_each_in_stripe(from + i, |h| h.outbox.ping());
        }
        (from + n) % registry::SHARDS
    }

    /// Runs one tick and hands its diffs to the sessions' outboxes.
    pub fn on_tick(&self, now: u64) -> TickReport {
        self.on_tick_with(now, true)
    }

    /// [`Service::on_tick`], in cluster mode folding the peers' frames received since the
    /// last tick into it first, and returning this tick's frames for the peers; `may_send`
    /// is false while the lease is not surely held (a fenced node tells peers nothing).
    pub fn on_tick_with(&self, now: u64, may_send: bool) -> TickReport {
        let started = Instant::now();
        let routes = self.routes.read().clone();
        let mut peer_frames = Vec::new();
        if let Some(r) = &routes {
            let (folded, replies) = self.replica.lock().fold(&self.engine, r, now);
            peer_frames = replies;
            metrics::counter!(m::PEER_APPLIED).increment(folded.applied as u64);
            metrics::counter!(m::PEER_STALE).increment(folded.stale as u64);
            metrics::counter!(m::PEER_RESYNCS).increment(folded.resyncs as u64);
            if folded.refused > 0 {
                metrics::counter!(m::PEER_REFUSED).increment(folded.refused as u64);
                tracing::warn!(refused = folded.refused, "peer entries refused");
            }
        }
        let batch = self.engine.tick(now);
        self.tick_times.record(batch.tick, now);
        if let Some(r) = &routes {
            peer_frames.extend(
                self.replica
                    .lock()
                    .outgoing(&self.engine, r, &batch, may_send),
            );
            // Whom the peers must stream here for watched groups, when that changed.
            let again = self
                .follows_again
                .swap(false, std::sync::atomic::Ordering::AcqRel);
            if let Some(users) = self.follows_due(again) {
                for peer in self.replica.lock().peer_names() {
                    let frame = presence_peer::PeerFrame::Follow {
                        users: users.clone(),
                    };
                    peer_frames.push((peer, frame));
                }
            }
        }
        let ecfg = self.engine.config();
        // Render each referenced entry once; every watcher shares the bytes.
        let rendered: Vec<Bytes> = self.engine.with_names(|name| {
            batch
                .entries
                .iter()
                .map(|(u, c)| Bytes::from(frames::render_change(name(*u).unwrap_or(""), c, ecfg)))
                .collect()
        });
        let engine = &self.engine;
        let every = u64::from(self.cfg.tick_phases.max(1));
        let registry::HandOut {
            handed,
            merges,
            held,
            released,
        } = self.registry.hand_out(
            &batch,
            &rendered,
            |w, u| engine.are_friends(UserId(w), UserId(u)),
            every,
        );
        self.hand_out_counts(&batch, batch.tick.is_multiple_of(every));
        metrics::histogram!(m::TICK_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::TRANSITIONS).increment(batch.stats.transitions as u64);
        metrics::counter!(m::ENTRIES_SENT).increment(handed as u64);
        metrics::counter!(m::MERGES).increment(merges);
        metrics::counter!(m::PACED_HELD).increment(held);
        metrics::counter!(m::PACED_RELEASED).increment(released);
        metrics::counter!(m::EXPIRED).increment(batch.expired.len() as u64);
        metrics::gauge!(m::LIVE).set(batch.stats.live_watchers as f64);
        TickReport {
            tick: batch.tick,
            handed,
            peer_frames,
        }
    }
}
