//! Shared by every test module: the local PostgreSQL cluster (`cluster`), the pgfleet process launcher
//! (`proxy`), the forward-mode helpers (`forward`, and `streaming` for large transactions), the raw protocol client (`raw`), a relay that holds back what pgfleet sends a node (`relay`), running client programs
//! (`clients`), and polling for a condition (`wait`). Not every test uses every helper.

#![allow(dead_code)]

pub(crate) mod admin;
pub(crate) mod clients;
pub(crate) mod cluster;
pub(crate) mod forward;
pub(crate) mod proxy;
pub(crate) mod raw;
pub(crate) mod relay;
pub(crate) mod shards;
pub(crate) mod streaming;
pub(crate) mod wait;

pub(crate) use proxy::one;
pub(crate) use wait::wait_until;
