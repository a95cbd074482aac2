//! Shared helpers for the workspace-level integration tests, and the harness that gives any
//! process-level suite of the workspace a private etcd or PostgreSQL ([`services`]).

pub mod services;
