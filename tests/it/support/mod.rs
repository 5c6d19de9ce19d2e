//! Shared by every test module: the local PostgreSQL cluster (`cluster`), the pgfleet process launcher
//! (`proxy`), the forward-mode helpers (`forward`), the raw protocol client (`raw`), running client programs
//! (`clients`), and polling for a condition (`wait`). Not every test uses every helper.

#![allow(dead_code)]

pub mod clients;
pub mod cluster;
pub mod forward;
pub mod proxy;
pub mod raw;
pub mod wait;

pub use proxy::one;
pub use wait::wait_until;
