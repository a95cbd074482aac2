//! The peer links (cluster mode): one authenticated QUIC connection per pair of nodes (the
//! node with the smaller id dials), a bounded queue of encoded frames per peer, and a reader
//! per link that hands decoded frames to the service for the next tick. Moves bytes only;
//! what to send and what a frame means are the service's (`service::replicate`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use presence_cluster::{Member, SlotMap};
use presence_peer::{Link, LinkReceiver, LinkSender, Me, PeerFrame};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics as m;
use crate::node::Node;

/// Frames queued to one peer, at most: a peer this far behind gets snapshots instead.
pub const QUEUE: usize = 64;

/// Longest pause between two dials of a peer that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct LinkHandle {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    conn: quinn::Connection,
}

impl LinkHandle {
    fn close(&self, why: &str) {
        self.conn.close(0u32.into(), why.as_bytes());
    }
}

/// The live links, by peer id.
pub struct Peers {
    me: Me,
    endpoint: quinn::Endpoint,
    links: Mutex<HashMap<String, LinkHandle>>,
    next_id: AtomicU64,
    /// The change-log id each peer says it has applied and published.
    confirmed: watch::Sender<HashMap<String, i64>>,
    /// The change-log id this node last told its peers it has applied and published.
    announced: AtomicI64,
    /// Peers that lost chat pushes on a full queue: they are told (an empty `Chat`) at the
    /// next tick that finds room.
    chat_owed: Mutex<HashSet<String>>,
}

impl Peers {
    pub fn new(me: Me, endpoint: quinn::Endpoint) -> Arc<Peers> {
        Arc::new(Peers {
            me,
            endpoint,
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            confirmed: watch::Sender::new(HashMap::new()),
            announced: AtomicI64::new(0),
            chat_owed: Mutex::new(HashSet::new()),
        })
    }

    /// From the tick thread, after a tick: every change up to `change` (read before the
    /// tick) is published here now; peers hear of it when it moved on.
    pub fn announce(&self, node: &Node, change: i64) {
        if self.announced.fetch_max(change, Ordering::AcqRel) >= change {
            return;
        }
        let frames = self
            .links
            .lock()
            .keys()
            .map(|p| (p.clone(), PeerFrame::Applied { change }))
            .collect();
        self.send(node, frames);
    }

    /// Peer `peer` says it has applied and published the change log up to `change`.
    fn confirm(&self, peer: &str, change: i64) {
        self.confirmed.send_if_modified(|m| {
            let at = m.entry(peer.to_owned()).or_insert(i64::MIN);
            let moved = change > *at;
            *at = (*at).max(change);
            moved
        });
    }

    /// Waits (at most `wait`) until every linked peer has applied and published change
    /// `change`; returns the peers that had not by then.
    pub async fn applied_everywhere(&self, change: i64, wait: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.confirmed.subscribe();
        loop {
            let behind: Vec<String> = {
                let confirmed = rx.borrow_and_update();
                self.links
                    .lock()
                    .keys()
                    .filter(|p| confirmed.get(*p).is_none_or(|&c| c < change))
                    .cloned()
                    .collect()
            };
            if behind.is_empty() || tokio::time::Instant::now() >= deadline {
                return behind;
            }
            // A link that goes away does not change the map: look again now and then.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                rx.changed(),
            )
            .await;
        }
    }

    /// Queues this tick's frames (from the tick thread). A full queue drops the frame and
    /// has the service send its slots again as snapshots.
    pub fn send(&self, node: &Node, frames: Vec<(String, PeerFrame)>) {
        for (peer, frame) in frames {
            let bytes = match frame.encode() {
                Ok(b) => Bytes::copy_from_slice(&b),
                Err(e) => {
                    warn!(peer, "a frame for a peer did not encode: {e}");
                    continue;
                }
            };
            let len = bytes.len();
            let sent = match self.links.lock().get(&peer) {
                Some(h) => h.tx.try_send(bytes),
                None => continue,
            };
            match sent {
                Ok(()) => {
                    metrics::counter!(m::PEER_FRAMES_SENT).increment(1);
                    metrics::counter!(m::PEER_BYTES_SENT).increment(len as u64);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!(m::PEER_OVERFLOWS).increment(1);
                    match &frame {
                        PeerFrame::Tick { slots, .. } => node
                            .service()
                            .peer_overflowed(&peer, slots.iter().map(|u| u.slot)),
                        // Its sessions read their inboxes back once the peer hears of it.
                        PeerFrame::Chat { .. } => {
                            self.chat_owed.lock().insert(peer.clone());
                        }
                        // Sent whole again with the next tick.
                        PeerFrame::Follow { .. } => node.service().follows_changed(),
                        _ => {}
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// From the tick thread: tells peers that lost chat pushes to have their sessions read
    /// their inboxes back (an empty `Chat` frame), where their queues have room now.
    pub fn settle_chat(&self) {
        let owed: Vec<String> = self.chat_owed.lock().iter().cloned().collect();
        for peer in owed {
            let Ok(bytes) = (PeerFrame::Chat { items: Vec::new() }).encode() else {
                continue;
            };
            let sent = match self.links.lock().get(&peer) {
                Some(h) => h.tx.try_send(Bytes::copy_from_slice(&bytes)).is_ok(),
                // No link: it catches up when the link comes up.
                None => true,
            };
            if sent {
                self.chat_owed.lock().remove(&peer);
            }
        }
    }

    /// Links up.
    pub fn count(&self) -> usize {
        self.links.lock().len()
    }

    pub fn is_linked(&self, peer: &str) -> bool {
        self.links.lock().contains_key(peer)
    }

    /// Closes the link to `peer`, if there is one (its reader then unregisters it).
    fn close_link(&self, peer: &str, why: &str) {
        if let Some(h) = self.links.lock().get(peer) {
            info!(peer, "closing the link: {why}");
            h.close(why);
        }
    }

    /// Closes every link (shutdown).
    pub fn close_all(&self) {
        for h in self.links.lock().drain().map(|(_, h)| h) {
            h.close("node shutting down");
        }
        metrics::gauge!(m::PEER_LINKS).set(0.0);
    }

    /// Takes a new link: replaces any older one to the same peer, starts its writer and its
    /// reader.
    fn register(self: &Arc<Self>, node: &Arc<Node>, link: Link) {
        let peer = link.peer().to_owned();
        let (sender, receiver) = link.split();
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = sender.connection();
        let old = self
            .links
            .lock()
            .insert(peer.clone(), LinkHandle { id, tx, conn });
        if let Some(old) = old {
            old.close("replaced by a newer link");
        }
        metrics::gauge!(m::PEER_LINKS).set(self.links.lock().len() as f64);
        // The service resets what it sent this peer: every slot starts with a snapshot.
        let held = node.service().peer_connected(&peer);
        // Chat the peer pushed while the link was down is in the store, not here yet.
        crate::service::chat::Chat::catch_up_all(&node.service().dir());
        // And the peer learns how far this node has applied the change log, and gets the
        // handovers of slots it took before the link was up.
        let change = self.announced.load(Ordering::Acquire);
        let mut frames = vec![(peer.clone(), PeerFrame::Applied { change })];
        frames.extend(held.into_iter().map(|f| (peer.clone(), f)));
        self.send(node, frames);
        info!(peer, "peer link up");
        let span = info_span!("peer", peer = %peer);
        tokio::spawn(write_loop(sender, rx).instrument(span.clone()));
        let peers = self.clone();
        let node = node.clone();
        tokio::spawn(
            async move {
                read_loop(&node, &peers, receiver).await;
                peers.unregister(&node, &peer, id);
            }
            .instrument(span),
        );
    }

    fn unregister(&self, node: &Node, peer: &str, id: u64) {
        let mut links = self.links.lock();
        if links.get(peer).is_some_and(|h| h.id == id) {
            if let Some(h) = links.remove(peer) {
                h.close("link ended");
            }
            metrics::gauge!(m::PEER_LINKS).set(links.len() as f64);
            drop(links);
            node.service().peer_disconnected(peer);
            info!(peer, "peer link down");
        }
    }
}

async fn write_loop(mut sender: LinkSender, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = sender.send_encoded(bytes).await {
            debug!("peer write failed: {e}");
            sender.close("write failed");
            return;
        }
    }
}

async fn read_loop(node: &Node, peers: &Peers, mut receiver: LinkReceiver) {
    loop {
        match receiver.recv_encoded().await {
            Ok(Some(bytes)) => match PeerFrame::decode(&bytes) {
                Ok(PeerFrame::Hello { .. }) => {
                    receiver.close("a second hello");
                    warn!("peer sent a second hello: link closed");
                    return;
                }
                Ok(PeerFrame::Applied { change }) => peers.confirm(receiver.peer(), change),
                Ok(PeerFrame::Chat { items }) => node.chat_from_peer(items),
                Ok(frame) => {
                    node.service()
                        .peer_frame(receiver.peer(), frame, crate::node::now_ms())
                }
                Err(e) => {
                    receiver.close("bad frame");
                    warn!("peer sent a bad frame ({e}): link closed");
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                debug!("peer read ended: {e}");
                return;
            }
        }
    }
}

/// Accepts peers' links (those with a smaller id dial us); a newer link to the same peer
/// replaces the older.
pub async fn accept_loop(peers: Arc<Peers>, node: Arc<Node>) {
    while let Some(incoming) = peers.endpoint.accept().await {
        let peers = peers.clone();
        let node = node.clone();
        tokio::spawn(async move {
            match Link::accept(incoming, &peers.me).await {
                Ok(link) => peers.register(&node, link),
                Err(e) => warn!("refused a peer link: {e}"),
            }
        });
    }
}

/// Keeps a link up to every member with a larger id than ours, as the map lists them.
pub async fn dial_loop(peers: Arc<Peers>, node: Arc<Node>, mut map: watch::Receiver<Arc<SlotMap>>) {
    let mut backoff: HashMap<String, (Duration, tokio::time::Instant)> = HashMap::new();
    let mut members: Vec<String> = Vec::new();
    loop {
        let view = map.borrow_and_update().clone();
        // A member that left (its lease ended: killed, or cut off and fenced) has its link
        // closed now, not at the connection's idle timeout: nothing waits on it meanwhile
        // (an admin write's answer, a snapshot). Only those seen leaving: a node that just
        // joined may dial before this node's map shows it.
        for gone in members.iter().filter(|id| view.member(id).is_none()) {
            peers.close_link(gone, "the peer left the cluster");
        }
        members = view.members().map(|m| m.id.clone()).collect();
        let now = tokio::time::Instant::now();
        let mut next_try: Option<tokio::time::Instant> = None;
        for member in view.members() {
            if member.id.as_str() <= peers.me.node.as_str() || peers.is_linked(&member.id) {
                continue;
            }
            let (delay, at) = backoff
                .get(&member.id)
                .copied()
                .unwrap_or((Duration::from_millis(100), now));
            if at > now {
                next_try = Some(next_try.map_or(at, |n| n.min(at)));
                continue;
            }
            match dial(&peers, member).await {
                Ok(link) => {
                    backoff.remove(&member.id);
                    peers.register(&node, link);
                }
                Err(e) => {
                    debug!(peer = member.id, "dial failed: {e}");
                    let at = tokio::time::Instant::now() + delay;
                    backoff.insert(member.id.clone(), ((delay * 2).min(MAX_BACKOFF), at));
                    next_try = Some(next_try.map_or(at, |n| n.min(at)));
                }
            }
        }
        backoff.retain(|id, _| view.member(id).is_some());
        // Links break without a map change: look again every so often.
        let wake =
            next_try.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(500));
        tokio::select! {
            r = map.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(wake) => {}
            () = node.shutdown().cancelled() => return,
        }
    }
}

async fn dial(peers: &Peers, member: &Member) -> anyhow::Result<Link> {
    let addr: SocketAddr = member
        .peer
        .parse()
        .map_err(|e| anyhow::anyhow!("peer address {:?}: {e}", member.peer))?;
    Ok(Link::dial(
        &peers.endpoint,
        &peers.me,
        &member.id,
        addr,
        &member.peer_cert,
    )
    .await?)
}
