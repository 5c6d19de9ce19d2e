//! Shared by every integration test (`mod support;` at the top of a test file): the local PostgreSQL
//! cluster (`cluster`) and the pgfleet process launcher (`proxy`). Not every test uses every helper.

#![allow(dead_code)]

pub mod cluster;
pub mod forward;
pub mod proxy;
