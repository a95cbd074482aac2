//! The node's hand-offs from its threads to its session tasks, kept free of tokio so that loom
//! (`--cfg loom` applies to every dependency, and tokio does not build with it) can model the
//! very code that ships.
//!
//! - [`sync`]: the locks and the wakeup a session task awaits, `parking_lot` and `std`
//!   normally, loom's under `cfg(loom)`.

pub mod sync;
