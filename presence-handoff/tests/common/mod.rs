//! What the registry's tests share: an engine configuration small enough to model, its clock's
//! start, and a renderer whose output says where each entry came from.

use bytes::Bytes;
use presence_core::{Batch, Config};

/// The engine's clock at the start of every test (ms).
pub const T0: u64 = 1_000_000;

/// Two shards on one thread; idle after a second, which no test's ticks reach.
pub fn cfg() -> Config {
    Config {
        idle_thresholds_ms: vec![1_000],
        grace_ms: 100,
        heartbeat_timeout_ms: 1_000_000,
        shards: 2,
        threads: 1,
        ..Config::default()
    }
}

/// Renders entry `i` of the batch of tick `t` as `"t/i"`, so what a session takes says which
/// tick and entry it came from.
pub fn render(batch: &Batch) -> Vec<Bytes> {
    (0..batch.entries.len())
        .map(|i| Bytes::from(format!("{}/{i}", batch.tick)))
        .collect()
}
