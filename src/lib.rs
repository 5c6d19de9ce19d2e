//! pgfleet: a PostgreSQL read/write-splitting proxy. The binary in `main.rs` is a thin CLI over this library;
//! integration tests use the few items re-exported here.

pub(crate) mod admin;
pub(crate) mod backend;
pub(crate) mod certs;
pub(crate) mod cluster;
pub mod config;
pub mod frontend;
pub mod log_filter;
pub mod log_scope;
pub(crate) mod peer;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod replication;
pub mod router;
pub mod shard;
pub(crate) mod stats;
