//! Metric names and the Prometheus recorder: everything an operator would graph.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "presence_connections_total";
pub const SESSIONS: &str = "presence_sessions";
pub const TICK_SECONDS: &str = "presence_tick_seconds";
pub const TRANSITIONS: &str = "presence_transitions_total";
pub const ENTRIES_SENT: &str = "presence_entries_sent_total";
pub const FRAMES_SENT: &str = "presence_frames_sent_total";
pub const MERGES: &str = "presence_outbox_merges_total";
pub const ERRORS: &str = "presence_errors_total";
pub const ADMIN_REQUESTS: &str = "presence_admin_requests_total";
pub const EXPIRED: &str = "presence_sessions_expired_total";
pub const USERS: &str = "presence_users";
pub const EDGES: &str = "presence_friend_edges";
pub const LIVE: &str = "presence_live_watchers";

/// Installs the global recorder; returns the handle `/metrics` renders. Histograms get real
/// buckets so they aggregate across nodes.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(TICK_SECONDS.to_owned()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
            ],
        )?
        .install_recorder()?;
    describe_counter!(CONNECTIONS, "Connections accepted, by transport");
    describe_gauge!(SESSIONS, "Sessions open, by transport");
    describe_histogram!(TICK_SECONDS, "Time to compute and hand out one tick");
    describe_counter!(TRANSITIONS, "Users whose visible presence changed");
    describe_counter!(ENTRIES_SENT, "Presence entries handed to sessions");
    describe_counter!(FRAMES_SENT, "Presence frames written to clients");
    describe_counter!(
        MERGES,
        "Presence frames merged into a slow client's pending frame"
    );
    describe_counter!(ERRORS, "Error frames sent, by code");
    describe_counter!(ADMIN_REQUESTS, "Admin API requests, by route and status");
    describe_counter!(EXPIRED, "Sessions expired by the heartbeat timeout");
    describe_gauge!(USERS, "Users known to the node");
    describe_gauge!(EDGES, "Friendships (undirected)");
    describe_gauge!(LIVE, "Users with a connected session");
    Ok(handle)
}
