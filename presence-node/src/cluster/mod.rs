//! Cluster mode's driver: joins etcd ([`presence_cluster::etcd::Control`]), opens the
//! PostgreSQL store, runs the slot driver ([`slots`]) and the peer links ([`peers`]), and
//! hands a graceful stop's slots over before the node leaves. It moves bytes and awaits;
//! the decisions are the slot table's (`presence-cluster`) and the service's.
//!
//! ```text
//! etcd ── map, lease ──> slots::run ── SlotTable ──> load (PostgreSQL) ─> Service::take_slot
//!                                   └─> Service::set_routes (hellos, `moved`), release_slot
//! peers ── frames ─────> Service::peer_frame ──> (next tick) ──> peer frames ──> peers
//! ```

pub(crate) mod admin;
pub mod follow;
pub mod peers;
pub mod slots;
pub mod statuses;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use presence_cluster::Member;
use presence_cluster::etcd::{Control, LeaseState, Options};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::node::Node;
use peers::Peers;

/// How often the whole slot map is read again, whatever the watch said.
const RESYNC: Duration = Duration::from_secs(30);
/// Longest wait for the first slot map when joining.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// What the tick thread and the admin API need of the cluster.
pub struct Hooks {
    pub lease: watch::Receiver<LeaseState>,
    pub peers: Arc<Peers>,
    /// The graph and groups (the admin API writes and reads them here).
    pub store: Arc<presence_pg::Store>,
    /// The id of the last change-log entry this node has applied.
    pub applied: watch::Receiver<i64>,
}

impl Hooks {
    /// Whether the lease surely holds now (else the node tells peers nothing).
    pub fn may_send(&self) -> bool {
        self.lease.borrow().holds(Instant::now())
    }
}

/// A joined node's cluster side.
pub struct Cluster {
    control: Control,
    peers: Arc<Peers>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The peer links' key: derived from the token secret every node shares, so the two keys
/// are never the same bytes.
pub fn peer_key(secret: &[u8]) -> Arc<[u8]> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    Arc::from(ring::hmac::sign(&key, b"presence-peer/1 link key").as_ref())
}

/// The peer endpoint and this node's peer identity (made at start; its certificate goes
/// into the member record).
pub fn peer_endpoint(
    cfg: &NodeConfig,
) -> anyhow::Result<(quinn::Endpoint, presence_peer::Identity)> {
    let id = presence_peer::Identity::generate().context("making the peer certificate")?;
    let endpoint = presence_peer::link::endpoint(cfg.peer_listen, &id)
        .with_context(|| format!("binding the peer link on {}", cfg.peer_listen))?;
    Ok((endpoint, id))
}

impl Cluster {
    /// Joins (registers `member` under a new lease and reads the slot map), then starts the
    /// slot driver and the links. Returns once the map is known.
    pub async fn join(
        cfg: &NodeConfig,
        node: &Arc<Node>,
        store: Arc<presence_pg::Store>,
        member: Member,
        endpoint: quinn::Endpoint,
        secret: &[u8],
    ) -> anyhow::Result<Cluster> {
        let endpoints = cfg.cluster_etcd.clone().unwrap_or_default();
        // The change log's position before any slot is loaded, and the groups as of then:
        // the follower applies every later change.
        let cursor = store
            .last_change_id()
            .await
            .context("reading the change log")?;
        for (gid, members) in store.groups().await.context("reading the groups")? {
            node.service().put_group_from_store(&gid, &members);
        }
        let (applied_tx, applied) = watch::channel(cursor);
        let (rewind_tx, rewind_rx) = tokio::sync::mpsc::unbounded_channel();
        let url = cfg.store.clone().unwrap_or_default();
        let me = member.id.clone();
        let control = Control::join(
            Options {
                endpoints,
                prefix: cfg.cluster_prefix.clone(),
                lease_ttl: cfg.lease_ttl,
                resync: RESYNC,
                member,
            },
            JOIN_WAIT,
        )
        .await
        .context("joining the cluster")?;
        let peers = Peers::new(
            presence_peer::Me {
                node: me.clone(),
                secret: peer_key(secret),
            },
            endpoint.clone(),
        );
        node.set_cluster(Hooks {
            lease: control.lease(),
            peers: peers.clone(),
            store: store.clone(),
            applied,
        });
        let tasks = vec![
            tokio::spawn(follow::run(
                node.clone(),
                store.clone(),
                url,
                cursor,
                applied_tx,
                rewind_rx,
            )),
            tokio::spawn(statuses::run(node.clone(), store.clone())),
            tokio::spawn(slots::run(
                node.clone(),
                store.clone(),
                me.clone(),
                control.map(),
                control.lease(),
                rewind_tx,
            )),
            tokio::spawn(peers::accept_loop(peers.clone(), node.clone())),
            tokio::spawn(peers::dial_loop(peers.clone(), node.clone(), control.map())),
        ];
        info!(node = me, "joined the cluster");
        Ok(Cluster {
            control,
            peers,
            endpoint,
            tasks,
        })
    }

    /// The slot map, as it changes.
    pub fn map(&self) -> watch::Receiver<Arc<presence_cluster::SlotMap>> {
        self.control.map()
    }

    /// The lease, as it changes.
    pub fn lease(&self) -> watch::Receiver<LeaseState> {
        self.control.lease()
    }

    /// A graceful stop's handover: asks the coordinator to move this node's slots, and waits
    /// (at most `wait`) until the map shows none left here. Their sessions are told `moved`
    /// by the slot driver as each slot goes.
    pub async fn hand_over(&self, me: &str, wait: Duration) {
        self.control.drain();
        let mut map = self.control.map();
        let gone = async {
            loop {
                if map.borrow_and_update().slots_of(me).next().is_none() {
                    return;
                }
                if map.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(wait, gone).await.is_err() {
            warn!("slots not handed over in {wait:?}: leaving anyway");
        } else {
            info!("slots handed over");
        }
    }

    /// Leaves: stops the driver and the links, and revokes the lease.
    pub async fn leave(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.peers.close_all();
        self.endpoint.close(0u32.into(), b"node leaving");
        self.control.leave().await;
    }
}
