//! `presence-node`: the presence server. Clients subscribe over WebSocket or QUIC, the app's
//! backend manages the friend graph and groups through the admin HTTP API, and a tick driver
//! runs `presence-core` and hands each session its diff.

pub mod admin;
pub mod chat;
pub mod config;
pub mod datadir;
pub mod frames;
pub mod hub;
pub mod metrics;
pub mod outbox;

pub mod quic;
pub mod server;
pub mod session;
pub mod store;
pub mod token;
pub mod webhook;
pub mod ws;
