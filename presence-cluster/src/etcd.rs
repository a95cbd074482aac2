//! The cluster's control plane on etcd: this node's membership under a lease, the slot map
//! kept by a watch, and, on the elected node, the coordinator's slot writes.
//!
//! etcd's Rust client reconnects nothing by itself, so each part runs under a supervisor:
//! the lease task re-opens its keep-alive stream (and joins again with a new lease if the old
//! one is gone), the map task re-lists and re-watches after any error or compaction and
//! re-reads the whole map every `resync` anyway. Two tasks, so that a slow list or write never
//! delays a keep-alive.
//!
//! What the node reads: [`Control::lease`] (is my lease surely alive, until when) and
//! [`Control::map`] (members and slot owners with their epochs), both `tokio::sync::watch`
//! channels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::fence::Fence;
use crate::map::{Keys, Member, Owner, SlotMap, SlotRecord};

/// How to join.
#[derive(Debug, Clone)]
pub struct Options {
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Where this cluster's records live (one prefix per cluster).
    pub prefix: String,
    /// The node's lease: how long a dead node keeps its slots (etcd raises it to at least
    /// about 2 s).
    pub lease_ttl: Duration,
    /// How often the whole map is read again, whatever the watch said.
    pub resync: Duration,
    /// This node's record.
    pub member: Member,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("node id {0:?}: must be 1-64 characters of [A-Za-z0-9._-]")]
    BadNodeId(String),
    #[error("no slot map from etcd within {0:?}")]
    Timeout(Duration),
}

/// This node's lease as the node must see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id (0 before the first grant).
    pub id: i64,
    /// Until when the lease is surely alive; `None`: not now.
    pub until: Option<Instant>,
}

impl LeaseState {
    /// Whether the node may serve its slots at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }
}

/// A joined node's handle on the control plane. Dropping it stops the tasks (the lease then
/// expires on its own); [`Control::leave`] revokes it at once.
pub struct Control {
    client: Client,
    keys: Keys,
    member: watch::Sender<Member>,
    lease: watch::Receiver<LeaseState>,
    map: watch::Receiver<Arc<SlotMap>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Control {
    /// Connects, registers this node under a new lease, and returns once the slot map has
    /// been read (within `wait`).
    pub async fn join(opts: Options, wait: Duration) -> Result<Control, ClusterError> {
        if !crate::valid_node_id(&opts.member.id) {
            return Err(ClusterError::BadNodeId(opts.member.id.clone()));
        }
        let etcd_err = |source| ClusterError::Etcd {
            endpoints: opts.endpoints.join(","),
            source,
        };
        let connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(request_timeout(opts.lease_ttl))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(etcd_err)?;
        let keys = Keys::new(&opts.prefix);
        let (member_tx, member_rx) = watch::channel(opts.member.clone());
        let (lease_tx, lease_rx) = watch::channel(LeaseState { id: 0, until: None });
        let (map_tx, mut map_rx) = watch::channel(Arc::new(SlotMap::new()));
        let opts = Arc::new(opts);
        let tasks = vec![
            tokio::spawn(lease_task(
                client.clone(),
                opts.clone(),
                keys.clone(),
                member_rx,
                lease_tx,
            )),
            tokio::spawn(map_task(
                client.clone(),
                opts.clone(),
                keys.clone(),
                lease_rx.clone(),
                map_tx,
            )),
        ];
        let control = Control {
            client,
            keys,
            member: member_tx,
            lease: lease_rx,
            map: map_rx.clone(),
            tasks,
        };
        let known = async {
            loop {
                if map_rx.borrow_and_update().revision() > 0 {
                    return;
                }
                if map_rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(wait, known)
            .await
            .map_err(|_| ClusterError::Timeout(wait))?;
        Ok(control)
    }

    /// This node's lease: whether it may serve.
    pub fn lease(&self) -> watch::Receiver<LeaseState> {
        self.lease.clone()
    }

    /// Members and slot owners, as of the latest etcd revision seen.
    pub fn map(&self) -> watch::Receiver<Arc<SlotMap>> {
        self.map.clone()
    }

    /// Marks this node as stopping: the coordinator moves its slots to the others. Returns
    /// at once; watch [`Control::map`] for the slots to go.
    pub fn drain(&self) {
        self.member.send_modify(|m| m.draining = true);
    }

    /// Revokes the lease: the member record (and the coordinator's key, if this node held
    /// it) go at once, without waiting for the TTL.
    pub async fn leave(self) {
        let id = self.lease.borrow().id;
        for t in &self.tasks {
            t.abort();
        }
        if id != 0 {
            let mut c = self.client.clone();
            if let Err(e) = c.lease_revoke(id).await {
                warn!("revoking the lease on leaving: {e}");
            }
        }
    }

    /// The keys this cluster uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// Each request must end well within the lease, or a stuck call would outlive it.
fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

/// Keeps this node's lease alive and its member record in place; publishes the fence.
async fn lease_task(
    client: Client,
    opts: Arc<Options>,
    keys: Keys,
    mut member: watch::Receiver<Member>,
    out: watch::Sender<LeaseState>,
) {
    let ttl_secs = i64::try_from(opts.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let every = (opts.lease_ttl / 3).max(Duration::from_millis(200));
    let mut retry = Duration::from_millis(100);
    loop {
        // Join: a new lease, the member record under it.
        let mut fence = Fence::new();
        let mut lease = client.lease_client();
        let sent = fence.sending(Instant::now());
        let (id, ttl) = match lease.grant(ttl_secs, None).await {
            Ok(g) => (
                g.id(),
                Duration::from_secs(u64::try_from(g.ttl()).unwrap_or(0)),
            ),
            Err(e) => {
                warn!("etcd lease grant: {e}");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        fence.answered(sent, ttl);
        let record = member.borrow_and_update().clone();
        if let Err(e) = put_member(&client, &keys, &record, id).await {
            warn!("etcd member record: {e}");
            tokio::time::sleep(retry).await;
            continue;
        }
        info!(node = %record.id, lease = id, ?ttl, "joined the cluster");
        retry = Duration::from_millis(100);
        out.send_replace(LeaseState {
            id,
            until: fence.until(),
        });
        // Keep it alive until it is lost; re-open the stream whenever it fails.
        'stream: loop {
            if fence.is_lost() {
                break;
            }
            let sent = fence.sending(Instant::now());
            let opened = tokio::time::timeout(every, lease.keep_alive(id)).await;
            let (mut keeper, mut stream) = match opened {
                Ok(Ok(ks)) => {
                    fence.answered(sent, ttl);
                    ks
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                    fence.answered(sent, Duration::ZERO);
                    break;
                }
                Ok(Err(e)) => {
                    debug!("etcd keep-alive stream: {e}");
                    publish_fence(&out, id, &fence);
                    tokio::time::sleep(every.min(retry)).await;
                    continue;
                }
                Err(_) => {
                    publish_fence(&out, id, &fence);
                    continue;
                }
            };
            publish_fence(&out, id, &fence);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Ok(()) = member.changed() => {
                        let record = member.borrow_and_update().clone();
                        if let Err(e) = put_member(&client, &keys, &record, id).await {
                            warn!("etcd member record update: {e}");
                        }
                        continue;
                    }
                }
                let sent = fence.sending(Instant::now());
                if keeper.keep_alive().await.is_err() {
                    continue 'stream;
                }
                match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(r))) => {
                        let left = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0));
                        fence.answered(sent, left);
                        publish_fence(&out, id, &fence);
                        if fence.is_lost() {
                            warn!(lease = id, "the lease expired: joining again");
                            break 'stream;
                        }
                    }
                    _ => {
                        publish_fence(&out, id, &fence);
                        continue 'stream;
                    }
                }
            }
        }
        out.send_replace(LeaseState { id, until: None });
    }
}

fn publish_fence(out: &watch::Sender<LeaseState>, id: i64, fence: &Fence) {
    out.send_if_modified(|s| {
        let new = LeaseState {
            id,
            until: fence.until(),
        };
        let changed = *s != new;
        *s = new;
        changed
    });
}

async fn put_member(
    client: &Client,
    keys: &Keys,
    m: &Member,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let value = serde_json::to_vec(m).unwrap_or_default();
    client
        .kv_client()
        .put(
            keys.member(&m.id),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map(|_| ())
}

/// Keeps the slot map: list, then watch from the list's revision, again after any failure
/// and every `resync`; on the coordinator, brings the map to the plan after each change.
async fn map_task(
    client: Client,
    opts: Arc<Options>,
    keys: Keys,
    lease: watch::Receiver<LeaseState>,
    out: watch::Sender<Arc<SlotMap>>,
) {
    let mut coord = Coordinator::default();
    let every = (opts.lease_ttl / 3).max(Duration::from_millis(200));
    loop {
        let mut map = match list(&client, &keys).await {
            Ok(m) => m,
            Err(e) => {
                warn!("etcd list: {e}");
                tokio::time::sleep(every).await;
                continue;
            }
        };
        out.send_replace(Arc::new(map.clone()));
        let watched = client
            .watch_client()
            .watch(
                keys.prefix(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(map.revision() + 1),
                ),
            )
            .await;
        let mut stream = match watched {
            Ok(s) => s,
            Err(e) => {
                warn!("etcd watch: {e}");
                tokio::time::sleep(every).await;
                continue;
            }
        };
        let resync_at = tokio::time::Instant::now() + opts.resync;
        let mut tick = tokio::time::interval(every);
        loop {
            coord.run(&client, &keys, &lease, &map).await;
            tokio::select! {
                () = tokio::time::sleep_until(resync_at) => break,
                _ = tick.tick() => continue,
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            // Compacted past our revision, or cancelled: list again.
                            debug!(compact = resp.compact_revision(), "etcd watch cancelled");
                            break;
                        }
                        let mut changed = false;
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                changed |= apply(&mut map, &keys, ev.event_type(), kv);
                            }
                        }
                        if let Some(h) = resp.header() {
                            map.set_revision(h.revision());
                        }
                        if changed {
                            out.send_replace(Arc::new(map.clone()));
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
    }
}

/// Reads members and slot owners at one revision.
async fn list(client: &Client, keys: &Keys) -> Result<SlotMap, etcd_client::Error> {
    let resp = client
        .kv_client()
        .get(keys.prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut map = SlotMap::new();
    for kv in resp.kvs() {
        apply(&mut map, keys, EventType::Put, kv);
    }
    map.set_revision(resp.header().map_or(1, |h| h.revision()).max(1));
    Ok(map)
}

/// Applies one key's change; whether the map changed. Records that do not parse are
/// skipped with a warning (another version's, or damaged): the coordinator rewrites slots.
fn apply(map: &mut SlotMap, keys: &Keys, ev: EventType, kv: &etcd_client::KeyValue) -> bool {
    if let Some(slot) = keys.parse_slot(kv.key()) {
        let owner = match ev {
            EventType::Delete => None,
            EventType::Put => match serde_json::from_slice::<SlotRecord>(kv.value()) {
                Ok(r) => Some(Owner {
                    node: r.node.into(),
                    epoch: kv.mod_revision(),
                }),
                Err(e) => {
                    warn!(%slot, "unreadable slot record: {e}");
                    None
                }
            },
        };
        return map.set_owner(slot, owner.clone()) != owner;
    }
    if let Some(id) = keys.parse_member(kv.key()) {
        return match ev {
            EventType::Delete => map.remove_member(id).is_some(),
            EventType::Put => match serde_json::from_slice::<Member>(kv.value()) {
                Ok(m) if m.id == id => {
                    let changed = map.member(id) != Some(&m);
                    map.put_member(m);
                    changed
                }
                Ok(_) | Err(_) => {
                    warn!(node = id, "unreadable member record");
                    false
                }
            },
        };
    }
    false
}

/// The coordinator's side: become leader while the lease holds, then write the plan.
#[derive(Default)]
struct Coordinator {
    /// The leader key's create revision while this node holds it.
    leading: Option<i64>,
    /// The revision of the last slot write: nothing is planned again before the map has seen
    /// it, or the same slots would be written twice (and their epochs bumped for nothing).
    written: i64,
}

/// etcd's default limit is 128 operations per transaction; the guard takes one.
const SLOTS_PER_TXN: usize = 100;

impl Coordinator {
    async fn run(
        &mut self,
        client: &Client,
        keys: &Keys,
        lease: &watch::Receiver<LeaseState>,
        map: &SlotMap,
    ) {
        let state = *lease.borrow();
        if !state.holds(Instant::now()) {
            self.leading = None;
            return;
        }
        let mut kv = client.kv_client();
        if self.leading.is_none() {
            let me = serde_json::to_vec(&state.id).unwrap_or_default();
            let campaign = Txn::new()
                .when([Compare::create_revision(keys.leader(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    keys.leader(),
                    me,
                    Some(PutOptions::new().with_lease(state.id)),
                )])
                .or_else([TxnOp::get(keys.leader(), None)]);
            match kv.txn(campaign).await {
                Ok(r) if r.succeeded() => {
                    let rev = r.header().map_or(0, |h| h.revision());
                    info!(revision = rev, "became the coordinator");
                    self.leading = Some(rev);
                }
                Ok(r) => {
                    // Someone holds it; it may be us from before a restart of this task.
                    for op in r.op_responses() {
                        if let TxnOpResponse::Get(g) = op
                            && let Some(kv) = g.kvs().first()
                            && kv.lease() == state.id
                        {
                            self.leading = Some(kv.create_revision());
                        }
                    }
                }
                Err(e) => {
                    debug!("etcd campaign: {e}");
                    return;
                }
            }
        }
        let Some(rev) = self.leading else { return };
        if map.revision() < self.written {
            return;
        }
        let plan = map.plan();
        if plan.is_empty() {
            return;
        }
        info!(slots = plan.len(), "assigning slots");
        for chunk in plan.chunks(SLOTS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(s, node)| {
                    let v =
                        serde_json::to_vec(&SlotRecord { node: node.clone() }).unwrap_or_default();
                    TxnOp::put(keys.slot(*s), v, None)
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    keys.leader(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then(ops);
            match kv.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    self.written = self.written.max(r.header().map_or(0, |h| h.revision()));
                }
                Ok(_) => {
                    warn!("lost the coordinator's key: stepping down");
                    self.leading = None;
                    return;
                }
                Err(e) => {
                    debug!("etcd slot write: {e}");
                    return;
                }
            }
        }
    }
}
