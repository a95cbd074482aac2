//! The simulator: synthetic friend graphs and activity, replayed against `presence-core`.
//!
//! - [`graphgen`]: friend graphs with a realistic shape (heavy-tailed degrees, communities
//!   by country, clustering), written as presence-core snapshots.
//! - [`activity`]: the activity model (logins on a daily curve, devices, bursts, idle
//!   stretches, mobile drops, heartbeats) as a time-ordered stream of events, independent of
//!   where the events go.
//! - [`replay`]: drives a `presence_core::Engine` with that stream at accelerated virtual
//!   time, measures it, verifies watchers' views and compares fan-out policies.
//! - [`policies`]: the counts of the other fan-out policies, on a thread of their own.
//! - [`darklaunch`]: drives a real running node with many WebSocket and QUIC clients moved
//!   by the same activity model, verifies their views and measures end-to-end latency.
//! - [`clusterbench`]: the cluster benchmarks (1, 2, 3 … nodes and a kill) in one command,
//!   dark launches run one after the other, and their summary.
//! - [`moonshot`]: one node of a cluster run for real on its share of a graph too big for
//!   one machine, with the peer traffic it would send and receive.
//! - [`report`]: the table, JSON and self-contained HTML (inline SVG) reports.

pub mod activity;
pub mod clusterbench;
pub mod darklaunch;
pub mod floor;
pub mod graphgen;
pub mod hugepages;
pub mod moonshot;
pub mod policies;
pub mod replay;
pub mod report;
pub mod rng;
pub mod util;
