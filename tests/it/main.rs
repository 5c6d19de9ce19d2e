//! pgfleet's integration tests, in one binary: one module per area, and `support` with what they share
//! (the local PostgreSQL fleet, the pgfleet launcher, the raw protocol client, client programs, polling).
//! One binary rather than one per file because each test binary links the whole crate graph.
//!
//! Run one area with a name filter: `cargo test --test it -- core_routing::`.

mod support;

// `pgfleet demo` is part of the binary, not the library; its config generator is checked against a real
// cluster in `harness_smoke`, so the module is compiled in here too.
#[path = "../../src/demo.rs"]
#[allow(dead_code)]
mod demo;

mod admin_console;
mod cli;
mod client_drivers;
mod client_encoding;
mod config_docs;
mod consistency;
mod container;
mod core_routing;
mod failures;
mod fleet_failover;
mod fleet_lag;
mod forward_admin;
mod forward_bulk;
mod forward_crash;
mod forward_held;
mod forward_smoke;
mod forward_streaming;
mod forward_sync;
mod forward_types;
mod harness_smoke;
mod hostile_input;
mod limits;
mod node_errors;
mod node_tls;
mod pids;
mod pooling;
mod psql_pgbench;
mod recovery_conflicts;
mod release_build;
mod reload;
mod replica_affinity;
mod router_table;
mod server_role;
mod session_pools;
mod session_settings;
mod sessions_auth;
mod shard_merge;
mod shard_placement;
mod sharding;
mod sharding_crash;
mod sharding_differential;
mod sharding_drivers;
mod shutdown_logs;
mod transaction_pooling;
mod twophase;
mod unix_sockets;
mod workers;
