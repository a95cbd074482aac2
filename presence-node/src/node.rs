//! The driver's shared handle and its threads: the tick thread, the chat commit and delivery
//! threads, retention. They call the [`Service`] with `now` from the one clock the node reads
//! ([`now_ms`]) and move what it returns; they decide nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use chat_relay::webhook::Undelivered;

use crate::metrics as m;
use crate::service::Service;
use crate::service::chat::Delivery;
use crate::service::registry;

/// Client frames' bytes per chat frame to a peer, about (one item may pass it).
const CHAT_FRAME_BYTES: usize = 1 << 20;

/// Longest an admin answer waits for the tick that publishes its change.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the epoch, from the wall clock: the `now` of every service call.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A cluster node's health, as `/healthz` reports it.
#[derive(Debug, Clone, Copy)]
pub struct ClusterHealth {
    pub lease_held: bool,
    pub slots_served: usize,
    pub peers: usize,
}

/// What the connection tasks, the admin handlers and the threads share.
pub struct Node {
    service: Arc<Service>,
    shutdown: CancellationToken,
    /// The last tick handed out.
    published: tokio::sync::watch::Sender<u64>,
    stopped: std::sync::atomic::AtomicBool,
    /// Where `message.undelivered` events go (the webhook task), when there is a URL.
    webhooks: Option<tokio::sync::mpsc::Sender<Undelivered>>,
    /// Serialises admin writes from plan to apply, so each plan still holds when it is
    /// applied (the service validates against the graph as it is).
    admin_writes: tokio::sync::Mutex<()>,
    /// Cluster mode: the fence and the peer links, for the tick thread.
    cluster: std::sync::OnceLock<crate::cluster::Hooks>,
}

impl Node {
    pub fn new(service: Service, webhooks: Option<tokio::sync::mpsc::Sender<Undelivered>>) -> Self {
        Self {
            service: Arc::new(service),
            shutdown: CancellationToken::new(),
            published: tokio::sync::watch::Sender::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
            webhooks,
            admin_writes: tokio::sync::Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Cluster mode: from now on each tick folds in the peers' frames and sends its own.
    pub fn set_cluster(&self, hooks: crate::cluster::Hooks) {
        if self.cluster.set(hooks).is_err() {
            warn!("cluster hooks set twice: keeping the first");
        }
    }

    /// Cluster mode: what the cluster's driver gave the node.
    pub fn cluster_hooks(&self) -> Option<&crate::cluster::Hooks> {
        self.cluster.get()
    }

    /// Cluster mode: the lease, the slots served and the links, for `/healthz`.
    pub fn cluster_health(&self) -> Option<ClusterHealth> {
        let c = self.cluster.get()?;
        Some(ClusterHealth {
            lease_held: c.may_send(),
            slots_served: self.service().routes().map_or(0, |r| r.served().count()),
            peers: c.peers.count(),
        })
    }

    /// One tick: the service's, then its frames to the peers (cluster mode).
    fn tick(&self, now: u64) -> u64 {
        let svc = self.service();
        match self.cluster.get() {
            None => svc.on_tick(now).tick,
            Some(c) => {
                // Changes applied by now are published by this tick.
                let applied = *c.applied.borrow();
                let report = svc.on_tick_with(now, c.may_send());
                if !report.peer_frames.is_empty() {
                    c.peers.send(self, report.peer_frames);
                }
                // Typing notices for users other nodes serve, gathered since the last tick.
                self.send_chat(svc.take_peer_chat());
                c.peers.settle_chat();
                c.peers.announce(self, applied);
                report.tick
            }
        }
    }

    /// Held by an admin write from its plan to its apply.
    pub fn admin_writes(&self) -> &tokio::sync::Mutex<()> {
        &self.admin_writes
    }

    /// What a delivered batch left: its webhooks, and the chat of users other nodes serve.
    fn handed(&self, h: crate::service::chat::Handed) {
        self.send_webhooks(h.undelivered);
        self.send_chat(h.remote);
    }

    /// Chat for users other nodes serve, by node, over the peer links (cluster mode), in
    /// frames of at most [`CHAT_FRAME_BYTES`] of client frames. Best effort, like the links:
    /// an entry that does not reach a device live is read back from the store on its next
    /// gap or connect.
    fn send_chat(&self, remote: HashMap<String, Vec<presence_peer::ChatPush>>) {
        if remote.is_empty() {
            return;
        }
        let Some(c) = self.cluster.get() else {
            return;
        };
        let mut frames = Vec::new();
        for (peer, items) in remote {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for item in items {
                bytes += item.frame.len() + item.owner.len();
                chunk.push(item);
                if bytes >= CHAT_FRAME_BYTES {
                    let items = std::mem::take(&mut chunk);
                    frames.push((peer.clone(), presence_peer::PeerFrame::Chat { items }));
                    bytes = 0;
                }
            }
            if !chunk.is_empty() {
                frames.push((peer, presence_peer::PeerFrame::Chat { items: chunk }));
            }
        }
        metrics::counter!(m::PEER_CHAT_FRAMES).increment(frames.len() as u64);
        c.peers.send(self, frames);
    }

    /// Chat a peer sent for users served here (from its link's reader task).
    pub fn chat_from_peer(&self, items: Vec<presence_peer::ChatPush>) {
        let svc = self.service();
        self.send_webhooks(svc.chat().from_peer(&svc.dir(), items));
    }

    /// Hands a delivered batch's `message.undelivered` events to the webhook task (dropped,
    /// and counted, when its queue is full: a push notification is best effort).
    fn send_webhooks(&self, events: Vec<Undelivered>) {
        let Some(tx) = &self.webhooks else {
            return;
        };
        for event in events {
            if tx.try_send(event).is_err() {
                metrics::counter!(m::WEBHOOKS, "result" => "dropped").increment(1);
                warn!("webhook queue full: dropping a message.undelivered event");
            }
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The service, for work moved to a blocking thread.
    pub fn service_arc(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// Cancelled when the node stops.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits until tick `tick` has been handed out (at most `PUBLISH_WAIT`: a node that
    /// stops ticking, shutting down, does not hold answers forever).
    pub async fn published(&self, tick: u64) {
        let mut rx = self.published.subscribe();
        let wait = rx.wait_for(|&t| t >= tick);
        if tokio::time::timeout(PUBLISH_WAIT, wait).await.is_err() {
            warn!(tick, "tick not published in time; answering anyway");
        }
    }

    /// The tick thread: a plain OS thread, so the fan-out never runs on the async workers.
    /// It also walks the registry's stripes so that every session is pinged once per third
    /// of the heartbeat timeout, a few stripes a tick.
    pub fn spawn_ticker(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let node = self.clone();
        std::thread::Builder::new()
            .name("presence-tick".into())
            .spawn(move || {
                let svc = node.service();
                let period = svc.config().engine_tick();
                let ping_cycle = (svc.config().heartbeat_timeout / 3).max(period);
                let per_tick = (registry::SHARDS as u128 * period.as_nanos())
                    .div_ceil(ping_cycle.as_nanos().max(1))
                    .clamp(1, registry::SHARDS as u128) as usize;
                let mut ping_from = 0;
                let mut next = Instant::now() + period;
                while !node.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    let tick = node.tick(now_ms());
                    node.published.send_replace(tick);
                    ping_from = svc.ping_stripes(ping_from, per_tick);
                    next += period;
                    if next < Instant::now() {
                        // Fell behind (a tick took longer than the period): skip, do not burst.
                        next = Instant::now() + period;
                    }
                }
            })
    }

    pub fn stop_ticker(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The chat commit thread, with a delivery thread behind it: the commit thread commits
    /// one batch at a time (one fsync each) and hands each outcome over, so the next fsync
    /// starts as soon as the previous one ends; the delivery thread takes them in commit
    /// order, which keeps every owner's entries in seq order.
    pub fn spawn_committer(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let node = self.clone();
        std::thread::Builder::new()
            .name("chat-commit".into())
            .spawn(move || {
                let svc = node.service_arc();
                let (tx, rx) = std::sync::mpsc::channel::<Delivery>();
                let node2 = node.clone();
                let delivery = std::thread::Builder::new()
                    .name("chat-deliver".into())
                    .spawn(move || {
                        let svc = node2.service();
                        for d in rx {
                            node2.handed(svc.chat().hand_over(&svc.dir(), d));
                        }
                    });
                let delivery = match delivery {
                    Ok(h) => Some((tx, h)),
                    Err(e) => {
                        warn!("no chat delivery thread ({e}): delivering on the commit thread");
                        None
                    }
                };
                let here = |d: Delivery| node.handed(svc.chat().hand_over(&svc.dir(), d));
                let chat = svc.chat();
                let mut acks_written = Instant::now();
                while let Some(mut batch) = chat.next_batch(&mut acks_written) {
                    let started = Instant::now();
                    let routes = svc.routes();
                    let result = chat.commit(&mut batch, svc.fenced(now_ms()), |slot| {
                        routes
                            .as_ref()
                            .and_then(|r| r.serving_epoch(presence_cluster::Slot::new(slot)?))
                    });
                    metrics::histogram!(m::CHAT_COMMIT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    let d = chat.committed(batch, result);
                    match &delivery {
                        Some((tx, _)) => {
                            if let Err(std::sync::mpsc::SendError(d)) = tx.send(d) {
                                here(d);
                            }
                        }
                        None => here(d),
                    }
                }
                if let Some((tx, h)) = delivery {
                    drop(tx);
                    if h.join().is_err() {
                        error!("the chat delivery thread panicked");
                    }
                }
                info!("chat committer stopped");
            })
    }

    /// Retention: trims chat entries older than `max_age` every so often, on a blocking
    /// thread.
    pub fn spawn_retention(self: &Arc<Self>, max_age: Duration) {
        let node = self.clone();
        let every = (max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = node.shutdown.cancelled() => return,
                }
                let svc = node.service_arc();
                let res =
                    tokio::task::spawn_blocking(move || svc.chat().trim(now_ms(), max_age_ms))
                        .await;
                match res {
                    Ok(Ok(counts)) => info!(?counts, "chat retention trimmed"),
                    Ok(Err(e)) => warn!("chat retention failed: {e}"),
                    Err(e) => warn!("chat retention task failed: {e}"),
                }
            }
        });
    }
}
