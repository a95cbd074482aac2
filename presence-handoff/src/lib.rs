//! The node's hand-offs from its threads to its session tasks, kept free of tokio so that loom
//! (`--cfg loom` applies to every dependency, and tokio does not build with it) can model the
//! very code that ships.
//!
//! ```text
//! tick thread ───> Registry::hand_out(batch) ──┐
//! delivery thread ─> Outbox::push_chat ─────────┼─> Outbox ─> Wakeup ─> session task: take()
//! session start ─> Registry::register(connect) ─┘
//! ```
//!
//! - [`outbox`]: one session's pending presence (merged, latest per friend), chat queue
//!   (bounded, with a `lagging` flag), close and ping, and the [`sync::Wakeup`] its task awaits.
//! - [`registry`]: the live sessions by user, registered together with the engine's `connect`,
//!   and the hand-out of one tick's batch to them.
//! - [`view`]: a session's focus and watched groups, which narrow what the hand-out gives it.
//! - [`sync`]: the locks and the wakeup, `parking_lot` and `std` normally, loom's under
//!   `cfg(loom)`. The models are in `tests/loom.rs`:
//!   `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p presence-handoff --test loom --release`.

pub mod outbox;
pub mod registry;
pub mod sync;
pub mod view;
