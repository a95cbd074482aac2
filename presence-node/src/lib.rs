//! `presence-node`: the presence server, as a clock- and socket-free [`service`] under a thin
//! tokio driver.
//!
//! Data flows one way: client → driver ([`ws`], [`quic`], [`connection`], [`admin`], the
//! threads in [`node`]) → [`service`] (every decision, with `now`) → effects → driver →
//! client. The service never imports the driver; the driver never decides.
//!
//! Shared leaves: [`config`] (every setting, declared once), [`frames`] (the node's values as
//! `presence-wire` frames), [`token`], [`store`] (the graph store), [`topology`] (where users' sessions belong), [`datadir`], [`metrics`], [`openapi`] (the admin API's OpenAPI document).

pub mod admin;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod datadir;
pub mod demo;
pub mod frames;
pub mod longpoll;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod quic;
pub mod server;
pub mod service;
pub mod store;
pub mod token;
pub mod topology;
pub mod webhook;
pub mod ws;
