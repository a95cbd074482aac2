//! `presence-core`: the clock- and socket-free heart of the presence engine.
//!
//! Every user has an online / idle-N-minutes / offline state machine (multi-device, custom
//! status, invisible, grace period on disconnect, heartbeat expiry); friends are kept in a
//! symmetric graph of per-user sets; and `tick(now)` turns everything that happened since the
//! last tick into one batch holding each live watcher's diff. Nothing here reads a clock,
//! opens a socket or spawns a task: time comes in as `now` (milliseconds since the epoch),
//! events as method calls, and output goes back as values, so the same code runs in the
//! server, in the simulator at accelerated time, and under loom. Two things do more than
//! compute: a large tick fans its work out over scoped threads ([`Config::threads`], past
//! [`Config::parallel_threshold`]) and joins them before it returns, and [`snapshot`] reads
//! and writes files. Everything else is plain method calls.

mod batch;
mod config;
mod engine;
mod error;
mod graph;
mod ids;
mod prefetch;
mod presence;
mod shard;
pub mod snapshot;
mod sync;
mod wheel;

pub use batch::{Batch, Strategy, TickStats};
pub use config::{Config, FanoutPolicy, MAX_DURATION_MS};
pub use engine::{ApplyError, EdgeDelta, Engine, Footprint, Welcome};
pub use error::{ConfigError, Error, SnapshotError};
pub use graph::Graph;
pub use ids::{Interner, MAX_USER_ID_LEN, UserId};
pub use prefetch::prefetch;
pub use presence::{Change, Presence, State, Status};
pub use shard::{Disconnect, SessionId};
