//! What the registry's tests share: an engine configuration small enough to model, its clock's
//! start, the pacing tests' three users, and a renderer whose output says where each entry came
//! from.

use std::sync::Arc;

use bytes::Bytes;
use presence_core::{Batch, Config, Engine, UserId};
use presence_handoff::registry::{Registry, SessionHandle};

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

/// `a` with friends `b` and `c`, all online, `a` on one device whose welcome is handed
/// nothing; the engine's clock at `T0`.
pub struct World {
    pub e: Engine,
    pub registry: Registry,
    #[cfg_attr(loom, allow(dead_code))] // the loom model needs only a's session
    pub a: UserId,
    pub b: UserId,
    pub c: UserId,
    pub web: Arc<SessionHandle>,
    /// The tick that published the setup (not handed out).
    pub setup: u64,
}

impl World {
    pub fn new() -> Self {
        let e = Engine::new(cfg(), T0).expect("config");
        let [a, b, c] = ["a", "b", "c"].map(|n| e.intern(n).expect("id"));
        e.add_friendship(a, b).expect("edge");
        e.add_friendship(a, c).expect("edge");
        e.connect(b, "w", T0).expect("connect");
        e.connect(c, "w", T0).expect("connect");
        let registry = Registry::default();
        let (web, _) = registry
            .register(a, || e.connect(a, "web", T0))
            .expect("connect");
        let setup = e.tick(T0).tick;
        Self {
            e,
            registry,
            a,
            b,
            c,
            web,
            setup,
        }
    }
}
