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
//!
//! # Driving the engine
//!
//! `now` is milliseconds since the Unix epoch from the driver's clock (wall time in the node,
//! simulated time in the simulator); a `now` earlier than one already seen counts as that one.
//! Events go in as calls, each with its `now`; every tick period the driver calls
//! [`Engine::tick`] and hands out the [`Batch`]: each watcher's diff, as indexes into
//! `batch.entries` (each changed user's entry is there once, so it can be rendered once and
//! the bytes shared), and `batch.expired`, the sessions whose heartbeat ran out, to close.
//!
//! ```rust
//! use presence_core::{Change, Config, Disconnect, Engine, State, Status};
//!
//! fn drive(start: u64) -> Result<Vec<State>, Box<dyn std::error::Error>> {
//!     let engine = Engine::new(Config::default(), start)?;
//!     let (alice, bob) = (engine.intern("alice")?, engine.intern("bob")?);
//!     engine.add_friendship(alice, bob)?;
//!     let phone = engine.connect(alice, "phone", start)?; // a session + its friends' presence
//!     let web = engine.connect(bob, "web", start)?.session;
//!     engine.set_status(bob, Status::Busy, Some("in a meeting"), start)?;
//!     let mut alice_saw = Vec::new();
//!     for step in 1..=150 {
//!         let now = start + step * 200; // one tick every 200 ms, for 30 s
//!         engine.heartbeat(phone.session, now)?; // alive; idleness runs on
//!         if step == 10 {
//!             engine.activity(web, now)?; // bob did something
//!         }
//!         if step == 100 {
//!             engine.disconnect(web, Disconnect::LoggedOut, now)?;
//!         }
//!         let batch = engine.tick(now);
//!         for (watcher, items) in batch.diffs() {
//!             // Send `batch.entries[i]` for each `i` to the watcher's sessions that were
//!             // welcomed before this tick.
//!             if watcher == alice && batch.tick > phone.tick {
//!                 for &i in items {
//!                     if let (_, Change::Presence(p)) = &batch.entries[i as usize] {
//!                         alice_saw.push(p.state);
//!                     }
//!                 }
//!             }
//!         }
//!         for _session in &batch.expired {} // close each: its heartbeat timed out
//!     }
//!     Ok(alice_saw)
//! }
//!
//! // Bob came online (busy); his activity changed nothing alice can see; he logged out.
//! assert_eq!(drive(1_700_000_000_000).unwrap(), [State::Online, State::Offline]);
//! ```

//!
//! # Clusters: owned and mirrored users
//!
//! With [`Config::cluster`] on, the engine runs the state machines of the users it owns
//! only. [`Engine::take_users`] and [`Engine::release_users`] move users (a slot's worth)
//! in and out of ownership, loading or dropping their friendships: a node keeps every edge
//! of its owned users and no edge between two users it does not own. Every other user is
//! *mirrored*: no sessions ([`Engine::connect`] answers [`Error::NotOwned`], which the node
//! turns into `moved`), no timers, just the presence its owner publishes, set from a peer
//! frame with [`Engine::apply_mirrored`] (or [`Engine::set_mirrored`] /
//! [`Engine::drop_mirrored`]). The run loop is the same: frames received since the last
//! tick go in as calls, and the next `tick` folds them into the same diffs as local changes,
//! once per watcher, nothing for a change undone in between. What goes out is
//! `batch.outgoing`: the entries of the owned users the peers must hear about, each routed
//! to the nodes of its friends given by [`Engine::for_each_remote_friend`], one frame per peer.
//!
//! ```rust
//! # use presence_core::{Config, Engine, Presence, State, Status};
//! # fn main() -> Result<(), presence_core::Error> {
//! let engine = Engine::new(Config { cluster: true, ..Config::default() }, 0).expect("config");
//! let (alice, bob) = (engine.intern("alice")?, engine.intern("bob")?);
//! engine.take_users(&[alice], &[(alice, bob)], 0)?; // alice's slot is ours; bob's is not
//! let welcome = engine.connect(alice, "phone", 0)?;
//! let online = Presence { state: State::Online, last_active: Some(0), status: Status::Busy, text: None };
//! engine.set_mirrored(bob, &online, 0)?; // from bob's owner
//! let batch = engine.tick(200);
//! assert_eq!(batch.diff_of(alice).len(), 1); // alice sees bob come online
//! let mut peers = Vec::new(); // alice came online too: bob's node must hear it
//! let out = batch.outgoing.iter().map(|&i| batch.entry(i).0);
//! engine.for_each_remote_friend(out, |user, friend| peers.push((user, friend)));
//! assert_eq!(peers, [(alice, bob)]);
//! # let _ = welcome; Ok(()) }
//! ```

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
mod views;
mod wheel;

pub use batch::{Batch, Strategy, TickStats};
pub use config::{Config, FanoutPolicy, MAX_DURATION_MS};
pub use engine::{ApplyError, EdgeDelta, Engine, Footprint, Ownership, Welcome};
pub use error::{ConfigError, Error, SnapshotError};
pub use graph::Graph;
pub use ids::{Interner, MAX_USER_ID_LEN, UserId};
pub use prefetch::prefetch;
pub use presence::{Change, Presence, State, Status};
pub use shard::{Disconnect, SessionId};
