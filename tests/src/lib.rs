//! Shared helpers for the workspace-level integration tests, and the harness that gives any
//! process-level suite of the workspace a private etcd or PostgreSQL ([`services`]) and network
//! namespaces to cut a process off the network ([`netns`]).

pub mod netns;
pub mod services;
