//! Metric names and the Prometheus recorder: everything an operator would graph.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "presence_connections_total";
pub const SESSIONS: &str = "presence_sessions";
pub const TICK_SECONDS: &str = "presence_tick_seconds";
pub const TRANSITIONS: &str = "presence_transitions_total";
pub const ENTRIES_SENT: &str = "presence_entries_sent_total";
pub const FRAMES_SENT: &str = "presence_frames_sent_total";
pub const FRAME_DELAY_SECONDS: &str = "presence_frame_delay_seconds";
pub const MERGES: &str = "presence_outbox_merges_total";
pub const PACED_HELD: &str = "presence_paced_holds_total";
pub const PACED_RELEASED: &str = "presence_paced_releases_total";
pub const GROUP_COUNTS_SENT: &str = "presence_group_counts_sent_total";
pub const WATCHED_GROUPS: &str = "presence_watched_groups";
pub const VIEW_CHANGES: &str = "presence_view_changes_total";
pub const ERRORS: &str = "presence_errors_total";
pub const ADMIN_REQUESTS: &str = "presence_admin_requests_total";
pub const LP_REQUESTS: &str = "presence_lp_requests_total";
pub const EXPIRED: &str = "presence_sessions_expired_total";
pub const USERS: &str = "presence_users";
pub const EDGES: &str = "presence_friend_edges";
pub const OWNED_USERS: &str = "presence_owned_users";
pub const GRAPH_BYTES: &str = "presence_graph_bytes";
pub const LIVE: &str = "presence_live_watchers";
pub const CHAT_SENDS: &str = "chat_sends_total";
pub const CHAT_DUPLICATES: &str = "chat_send_retries_total";
pub const CHAT_ACKS: &str = "chat_acks_total";
pub const CHAT_ACK_ROWS: &str = "chat_ack_rows_total";
pub const CHAT_COMMITS: &str = "chat_commits_total";
pub const CHAT_COMMIT_SECONDS: &str = "chat_commit_seconds";
pub const CHAT_COMMITTED_ROWS: &str = "chat_committed_rows_total";
pub const CHAT_COMMIT_ROWS: &str = "chat_commit_rows";
pub const CHAT_COMMIT_FAILURES: &str = "chat_commit_failures_total";
pub const CHAT_SEND_SECONDS: &str = "chat_send_seconds";
pub const CHAT_ENTRIES_PUSHED: &str = "chat_entries_pushed_total";
pub const CHAT_ENTRIES_LAGGING: &str = "chat_entries_left_to_store_total";
pub const CHAT_ENTRIES_READ: &str = "chat_entries_read_back_total";
pub const WEBHOOKS: &str = "chat_webhooks_total";
pub const SLOTS_SERVED: &str = "cluster_slots_served";
pub const LEASE_HELD: &str = "cluster_lease_held";
pub const SLOT_LOAD_SECONDS: &str = "cluster_slot_load_seconds";
pub const PEER_LINKS: &str = "cluster_peer_links";
pub const PEER_FRAMES_SENT: &str = "cluster_peer_frames_sent_total";
pub const PEER_BYTES_SENT: &str = "cluster_peer_bytes_sent_total";
pub const PEER_OVERFLOWS: &str = "cluster_peer_queue_overflows_total";
pub const PEER_CHAT_FRAMES: &str = "cluster_peer_chat_frames_total";
pub const HANDOFFS_MISSED: &str = "cluster_handoffs_missed_total";
pub const CHAT_CATCH_UPS: &str = "cluster_chat_catch_ups_total";
pub const CHAT_FENCED: &str = "chat_commits_fenced_total";
pub const PEER_APPLIED: &str = "cluster_peer_entries_applied_total";
pub const PEER_STALE: &str = "cluster_peer_updates_stale_total";
pub const PEER_RESYNCS: &str = "cluster_peer_resyncs_total";
pub const PEER_REFUSED: &str = "cluster_peer_entries_refused_total";
pub const STATUS_WRITES: &str = "cluster_status_writes_total";
pub const ADMIN_PEERS_BEHIND: &str = "cluster_admin_writes_peers_behind_total";
pub const STATUS_WRITE_FAILURES: &str = "cluster_status_write_failures_total";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the node exports, with its help text (`docs/protocol.md` lists them; a test
/// keeps the two in step).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        CONNECTIONS,
        Kind::Counter,
        "Connections accepted, by transport (ws, quic; lp: long-poll opens)",
    ),
    (
        SESSIONS,
        Kind::Gauge,
        "Sessions open, by transport (ws, quic, lp)",
    ),
    (
        TICK_SECONDS,
        Kind::Histogram,
        "Time to compute and hand out one tick",
    ),
    (
        TRANSITIONS,
        Kind::Counter,
        "Users whose visible presence changed",
    ),
    (
        ENTRIES_SENT,
        Kind::Counter,
        "Presence entries handed to sessions",
    ),
    (
        FRAMES_SENT,
        Kind::Counter,
        "Presence frames written to clients",
    ),
    (
        FRAME_DELAY_SECONDS,
        Kind::Histogram,
        "From the tick that made a presence frame's oldest entries to the frame handed to its \
         connection (ms resolution; a long-poll frame waits for its poll)",
    ),
    (
        MERGES,
        Kind::Counter,
        "Presence frames merged into a slow client's pending frame",
    ),
    (
        PACED_HELD,
        Kind::Counter,
        "Sessions whose presence waited for their next frame slot (one a batching period), \
         by engine tick",
    ),
    (
        PACED_RELEASED,
        Kind::Counter,
        "Sessions woken at their frame slot for presence that waited",
    ),
    (
        GROUP_COUNTS_SENT,
        Kind::Counter,
        "Watched groups' counts handed to sessions (group_counts entries)",
    ),
    (
        WATCHED_GROUPS,
        Kind::Gauge,
        "Groups some session watches (their counts kept tick by tick)",
    ),
    (
        VIEW_CHANGES,
        Kind::Counter,
        "Focus, watch_group and unwatch_group messages taken, by type",
    ),
    (ERRORS, Kind::Counter, "Error frames sent, by code"),
    (
        ADMIN_REQUESTS,
        Kind::Counter,
        "Admin API requests, by route and status",
    ),
    (
        LP_REQUESTS,
        Kind::Counter,
        "Long-poll requests, by endpoint (open, poll, send, close, preflight) and status",
    ),
    (
        EXPIRED,
        Kind::Counter,
        "Sessions expired by the heartbeat timeout",
    ),
    (USERS, Kind::Gauge, "Users known to the node"),
    (
        EDGES,
        Kind::Gauge,
        "Friendships (undirected) held: in a cluster those with an end owned here, each held in \
         both ends' lists",
    ),
    (
        OWNED_USERS,
        Kind::Gauge,
        "Users owned here (in a cluster: those of the slots served; single node: every user)",
    ),
    (
        GRAPH_BYTES,
        Kind::Gauge,
        "Estimated heap bytes of the friend lists held",
    ),
    (LIVE, Kind::Gauge, "Users with a connected session"),
    (
        CHAT_SENDS,
        Kind::Counter,
        "Chat messages accepted (new, not retries)",
    ),
    (
        CHAT_DUPLICATES,
        Kind::Counter,
        "Chat sends that were retries of a known id",
    ),
    (
        CHAT_ACKS,
        Kind::Counter,
        "Device acks accepted (written every 250 ms, the latest per device)",
    ),
    (
        CHAT_ACK_ROWS,
        Kind::Counter,
        "Device ack rows committed (one per device per write)",
    ),
    (
        CHAT_COMMITS,
        Kind::Counter,
        "Group commits of the chat store",
    ),
    (
        CHAT_COMMIT_SECONDS,
        Kind::Histogram,
        "Time of one chat group commit (fsync included)",
    ),
    (
        CHAT_COMMITTED_ROWS,
        Kind::Counter,
        "Rows written by chat commits",
    ),
    (
        CHAT_COMMIT_ROWS,
        Kind::Histogram,
        "Rows of one chat group commit (the batch size; a 1:1 send is 5 rows)",
    ),
    (
        CHAT_COMMIT_FAILURES,
        Kind::Counter,
        "Chat commits that failed",
    ),
    (
        CHAT_SEND_SECONDS,
        Kind::Histogram,
        "The node's part of a send: accepted from the client's frame until its sent answer \
         is queued to the session, durable (waiting for a batch, the commit, the hand-over)",
    ),
    (
        CHAT_ENTRIES_PUSHED,
        Kind::Counter,
        "Inbox entries queued to live sessions",
    ),
    (
        CHAT_ENTRIES_LAGGING,
        Kind::Counter,
        "Inbox entries not queued to a slow session (it reads them back from the store)",
    ),
    (
        CHAT_ENTRIES_READ,
        Kind::Counter,
        "Inbox entries read back from the store for sessions",
    ),
    (
        WEBHOOKS,
        Kind::Counter,
        "message.undelivered webhook attempts, by result",
    ),
    (
        SLOTS_SERVED,
        Kind::Gauge,
        "Cluster: slots this node serves now",
    ),
    (
        LEASE_HELD,
        Kind::Gauge,
        "Cluster: 1 while the node's etcd lease is surely alive, else 0 (it serves nothing)",
    ),
    (
        SLOT_LOAD_SECONDS,
        Kind::Histogram,
        "Cluster: time to load a batch of taken slots' friend lists from PostgreSQL",
    ),
    (PEER_LINKS, Kind::Gauge, "Cluster: peer links up"),
    (
        PEER_FRAMES_SENT,
        Kind::Counter,
        "Cluster: frames sent to peers",
    ),
    (
        PEER_BYTES_SENT,
        Kind::Counter,
        "Cluster: bytes of frames sent to peers",
    ),
    (
        PEER_OVERFLOWS,
        Kind::Counter,
        "Cluster: frames dropped on a full peer queue (their slots are sent again as snapshots)",
    ),
    (
        CHAT_CATCH_UPS,
        Kind::Counter,
        "Cluster: sessions made to read their inbox back after a peer link came up or a peer lost chat pushes",
    ),
    (
        HANDOFFS_MISSED,
        Kind::Counter,
        "Cluster: slot loads that took slots from a live node without its handover (waited 1 s; users it never saw may flap)",
    ),
    (
        PEER_CHAT_FRAMES,
        Kind::Counter,
        "Cluster: chat frames (durable inbox entries, typing) sent to the nodes serving their users",
    ),
    (
        CHAT_FENCED,
        Kind::Counter,
        "Cluster: chat batches refused because a writer's slot is no longer this node's (its senders retry at the new owner)",
    ),
    (
        PEER_APPLIED,
        Kind::Counter,
        "Cluster: mirrored presences set from peers",
    ),
    (
        PEER_STALE,
        Kind::Counter,
        "Cluster: slot updates from peers dropped as stale (a former owner's, or waiting for a snapshot)",
    ),
    (
        PEER_RESYNCS,
        Kind::Counter,
        "Cluster: snapshots asked of peers after a gap or a new epoch",
    ),
    (
        PEER_REFUSED,
        Kind::Counter,
        "Cluster: peer entries refused (wrong slot, invalid presence, owned here)",
    ),
    (
        STATUS_WRITES,
        Kind::Counter,
        "Cluster: custom statuses written to the store (for the next owner of their slot)",
    ),
    (
        STATUS_WRITE_FAILURES,
        Kind::Counter,
        "Cluster: status writes that failed and wait to be tried again",
    ),
    (
        ADMIN_PEERS_BEHIND,
        Kind::Counter,
        "Cluster: admin writes answered before every linked peer had applied them (a peer paused or cut off)",
    ),
];

/// Buckets (seconds) of the latency histograms: the tick and a chat group commit.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// Buckets (seconds) of a presence frame's delay after its tick: the target is 50 ms.
const FRAME_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
];

/// Buckets (seconds) of the node's part of a send's latency: fine where the target is.
const SEND_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.2,
    0.5, 1.0, 2.0, 5.0,
];

/// How often histogram samples are folded into their buckets. The exporter keeps every
/// sample recorded since the last fold; `install_recorder` leaves the folding to us, and
/// without it a node nobody scrapes grows by 8 bytes a presence frame.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds `handle`'s histogram samples into their buckets every [`UPKEEP_EVERY`], for as long
/// as the runtime runs.
fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Installs the global recorder; returns the handle `/metrics` renders. Histograms get real
/// buckets so they aggregate across nodes. Also starts the task that folds their samples
/// (so it must run inside the node's tokio runtime): without it they pile up unscraped.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(TICK_SECONDS.to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(CHAT_COMMIT_SECONDS.to_owned()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(CHAT_SEND_SECONDS.to_owned()), SEND_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(FRAME_DELAY_SECONDS.to_owned()), FRAME_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(CHAT_COMMIT_ROWS.to_owned()),
            &[
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                10000.0,
            ],
        )?
        .install_recorder()?;
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
    spawn_upkeep(handle.clone());
    Ok(handle)
}
