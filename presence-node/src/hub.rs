//! The node's shared state: the engine, the session registry, the store, and the tick driver
//! that runs the engine's tick on its own thread and hands each session its diff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use presence_core::{Engine, Error as CoreError, SessionId, UserId, Welcome};
use tokio_util::sync::CancellationToken;

use crate::chat::Chat;
use crate::config::NodeConfig;
use crate::frames;
use crate::metrics as m;
use crate::outbox::{CloseReason, Outbox};
use crate::store::Store;

const REGISTRY_SHARDS: usize = 64;
/// Longest an admin answer waits for the tick that publishes its change.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the epoch, from the wall clock (the one place the node reads it for
/// presence).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One open session as the tick driver sees it.
pub struct SessionHandle {
    pub sid: SessionId,
    /// Hand this session the batches of later ticks only.
    pub welcome_tick: u64,
    pub outbox: Outbox,
}

/// Groups: id -> members.
pub type Groups = HashMap<String, Arc<[String]>>;

type Registry = Mutex<HashMap<u32, Vec<Arc<SessionHandle>>>>;

pub struct Hub {
    pub engine: Engine,
    pub cfg: NodeConfig,
    pub secret: Vec<u8>,
    pub admin_key: String,
    pub store: Store,
    pub chat: Chat,
    pub groups: RwLock<Groups>,
    /// Serialises admin writes so validation, the durable write and the apply see one graph.
    pub admin_writes: tokio::sync::Mutex<()>,
    registry: Box<[Registry]>,
    pub shutdown: CancellationToken,
    stopped: AtomicBool,
    /// The last tick whose diffs have been handed out.
    published: tokio::sync::watch::Sender<u64>,
}

impl Hub {
    pub fn new(
        engine: Engine,
        cfg: NodeConfig,
        secret: Vec<u8>,
        admin_key: String,
        store: Store,
        chat: Chat,
        groups: Groups,
    ) -> Self {
        Self {
            engine,
            cfg,
            secret,
            admin_key,
            store,
            chat,
            groups: RwLock::new(groups),
            admin_writes: tokio::sync::Mutex::new(()),
            registry: (0..REGISTRY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            shutdown: CancellationToken::new(),
            stopped: AtomicBool::new(false),
            published: tokio::sync::watch::Sender::new(0),
        }
    }

    fn shard(&self, user: u32) -> &Registry {
        &self.registry[user as usize % REGISTRY_SHARDS]
    }

    /// Starts a session in the engine and registers it, atomically with respect to the tick
    /// driver's hand-out, so no batch after the welcome can be missed.
    pub fn open_session(
        &self,
        user: UserId,
        device: &str,
    ) -> Result<(Arc<SessionHandle>, Welcome), CoreError> {
        let mut reg = self.shard(user.0).lock();
        let welcome = self.engine.connect(user, device, now_ms())?;
        let handle = Arc::new(SessionHandle {
            sid: welcome.session,
            welcome_tick: welcome.tick,
            outbox: Outbox::default(),
        });
        reg.entry(user.0).or_default().push(handle.clone());
        Ok((handle, welcome))
    }

    /// Ends a session: the engine keeps the user present for the grace period.
    pub fn close_session(&self, handle: &Arc<SessionHandle>, how: presence_core::Disconnect) {
        {
            let mut reg = self.shard(handle.sid.user).lock();
            if let Some(list) = reg.get_mut(&handle.sid.user) {
                list.retain(|h| !Arc::ptr_eq(h, handle));
                if list.is_empty() {
                    reg.remove(&handle.sid.user);
                }
            }
        }
        // Already gone if the engine expired it.
        let _ = self.engine.disconnect(handle.sid, how, now_ms());
    }

    /// Asks the sessions of registry shards `from..from + n` (wrapping) to ping their clients;
    /// returns where the next round starts. The tick driver walks the shards so that every
    /// session is pinged once per third of the heartbeat timeout, a few shards a tick, so the
    /// pings (and the wakeups they cost) are spread evenly instead of all at once.
    pub fn ping_shards(&self, from: usize, n: usize) -> usize {
        for i in 0..n.min(REGISTRY_SHARDS) {
            for list in self.registry[(from + i) % REGISTRY_SHARDS].lock().values() {
                for h in list {
                    h.outbox.ping();
                }
            }
        }
        (from + n) % REGISTRY_SHARDS
    }

    /// Asks every session to close (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.registry.iter() {
            for list in shard.lock().values() {
                for h in list {
                    h.outbox.close(reason.clone());
                }
            }
        }
    }

    /// The live sessions of a user (for chat delivery).
    pub fn sessions_of(&self, user: u32) -> Vec<Arc<SessionHandle>> {
        self.shard(user)
            .lock()
            .get(&user)
            .cloned()
            .unwrap_or_default()
    }

    /// The live sessions of a user by app id (none if the node never saw it).
    pub fn sessions_of_name(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        self.engine
            .lookup(user)
            .map(|u| self.sessions_of(u.0))
            .unwrap_or_default()
    }

    pub fn session_count(&self) -> usize {
        self.registry
            .iter()
            .map(|s| s.lock().values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Waits until tick `tick` has been handed out (at most [`PUBLISH_WAIT`]: a node that
    /// stops ticking, shutting down, does not hold answers forever).
    pub async fn published(&self, tick: u64) {
        let mut rx = self.published.subscribe();
        let wait = rx.wait_for(|&t| t >= tick);
        if tokio::time::timeout(PUBLISH_WAIT, wait).await.is_err() {
            tracing::warn!(tick, "tick not published in time; answering anyway");
        }
    }

    /// Runs one tick and hands out its diffs. Returns the number of entries handed out.
    pub fn run_tick(&self) -> usize {
        let started = Instant::now();
        let batch = self.engine.tick(now_ms());
        let ecfg = self.engine.config();
        // Render each referenced entry once; every watcher shares the bytes.
        let rendered: Vec<Bytes> = self.engine.with_names(|name| {
            batch
                .entries
                .iter()
                .map(|(u, c)| Bytes::from(frames::render_change(name(*u).unwrap_or(""), c, ecfg)))
                .collect()
        });
        let mut handed = 0usize;
        let mut merges = 0u64;
        for (watcher, items) in batch.diffs() {
            let reg = self.shard(watcher.0).lock();
            let Some(list) = reg.get(&watcher.0) else {
                continue;
            };
            for h in list {
                if batch.tick <= h.welcome_tick {
                    continue;
                }
                let entries: Vec<(u32, Bytes)> = items
                    .iter()
                    .map(|&i| (batch.entries[i as usize].0.0, rendered[i as usize].clone()))
                    .collect();
                handed += entries.len();
                merges += u64::from(h.outbox.push(batch.tick, entries));
            }
        }
        for sid in &batch.expired {
            let reg = self.shard(sid.user).lock();
            if let Some(h) = reg
                .get(&sid.user)
                .and_then(|l| l.iter().find(|h| h.sid == *sid))
            {
                h.outbox.close(CloseReason::HeartbeatTimeout);
            }
        }
        self.published.send_replace(batch.tick);
        metrics::histogram!(m::TICK_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::TRANSITIONS).increment(batch.stats.transitions as u64);
        metrics::counter!(m::ENTRIES_SENT).increment(handed as u64);
        metrics::counter!(m::MERGES).increment(merges);
        metrics::counter!(m::EXPIRED).increment(batch.expired.len() as u64);
        metrics::gauge!(m::LIVE).set(batch.stats.live_watchers as f64);
        handed
    }

    /// The tick driver: a plain OS thread, so the fan-out never runs on the async workers.
    pub fn spawn_ticker(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let hub = self.clone();
        std::thread::Builder::new()
            .name("presence-tick".into())
            .spawn(move || {
                let period = hub.cfg.tick;
                let mut next = Instant::now() + period;
                // Every session pinged once per third of the heartbeat timeout.
                let ping_cycle = (hub.cfg.heartbeat_timeout / 3).max(period);
                let per_tick = (REGISTRY_SHARDS as u128 * period.as_nanos())
                    .div_ceil(ping_cycle.as_nanos().max(1))
                    .clamp(1, REGISTRY_SHARDS as u128) as usize;
                let mut ping_from = 0;
                while !hub.stopped.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    hub.run_tick();
                    ping_from = hub.ping_shards(ping_from, per_tick);
                    next += period;
                    if next < Instant::now() {
                        // Fell behind (a tick took longer than the period): skip, do not burst.
                        next = Instant::now() + period;
                    }
                }
            })
    }

    pub fn stop_ticker(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}
