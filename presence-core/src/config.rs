//! Engine configuration: the timers of the state machine and the sizes of the engine.

use crate::error::ConfigError;

/// Longest duration accepted anywhere in the configuration (30 days): keeps every deadline
/// well inside the timing wheel's range.
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;

/// Tunables of the presence engine. All durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Idle levels: a user with no activity for `idle_thresholds[i]` is `Idle(i)`.
    pub idle_thresholds_ms: Vec<u64>,
    /// A disconnect becomes offline only after this long without a reconnect.
    pub grace_ms: u64,
    /// A session with no heartbeat or activity for this long is expired.
    pub heartbeat_timeout_ms: u64,
    /// Number of lock shards users are striped over (a power of two).
    pub shards: usize,
    /// Threads the tick may use for its parallel phases.
    pub threads: usize,
    /// Work (friend-list entries, users) below which a tick phase stays on one thread:
    /// spawning threads costs tens of microseconds that small ticks do not repay.
    pub parallel_threshold: u64,
    /// Most friends one user may have.
    pub max_friends: u32,
    /// Most concurrent sessions (devices) one user may have.
    pub max_sessions_per_user: u32,
    /// Longest custom status text, in characters.
    pub max_status_text: usize,
    /// Force a fan-out strategy instead of choosing by cost (for tests and benchmarks).
    pub fanout: FanoutPolicy,
    /// Cluster mode: a user is owned here only once [`crate::Engine::take_users`] says so;
    /// every other user is mirrored (its presence set by a peer, no state machine here), and
    /// each tick lists the owned users' changes in [`crate::Batch::outgoing`] for the peers.
    /// Off (the default), every user is owned and nothing of this costs anything.
    pub cluster: bool,
}

/// How `tick` computes watchers' diffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutPolicy {
    /// Pick push or pull per tick, whichever the cost model says is cheaper.
    Auto,
    /// For each changed user, `friends(u) ∩ live`.
    Push,
    /// For each live watcher, `friends(w) ∩ changed`.
    Pull,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_thresholds_ms: vec![60_000, 120_000, 300_000, 600_000],
            grace_ms: 5_000,
            heartbeat_timeout_ms: 45_000,
            shards: 16,
            threads: 2,
            parallel_threshold: 256 * 1024,
            max_friends: 5_000,
            max_sessions_per_user: 16,
            max_status_text: 140,
            fanout: FanoutPolicy::Auto,
            cluster: false,
        }
    }
}

impl Config {
    /// Checks every field; the engine refuses to start on a config that fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.idle_thresholds_ms;
        if t.is_empty()
            || t.len() > 15
            || t[0] == 0
            || t.windows(2).any(|w| w[0] >= w[1])
            || t.iter().any(|&x| x > MAX_DURATION_MS)
        {
            return Err(ConfigError::IdleThresholds);
        }
        for (name, v) in [
            ("grace", self.grace_ms),
            ("heartbeat timeout", self.heartbeat_timeout_ms),
        ] {
            if v == 0 || v > MAX_DURATION_MS {
                return Err(ConfigError::Duration(name));
            }
        }
        if !self.shards.is_power_of_two() || self.shards > 4096 {
            return Err(ConfigError::Shards(self.shards));
        }
        for (name, v) in [
            ("threads", self.threads as u64),
            ("max friends", u64::from(self.max_friends)),
            (
                "max sessions per user",
                u64::from(self.max_sessions_per_user),
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}
