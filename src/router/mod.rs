//! Routing: what a statement is (`classify`, `functions`, `split`, with `depth` guarding the parser) and
//! where it should run (`policy`, `balance`, with the per-database function rules in `catalog`); the
//! session asks the policy and does the I/O.

pub(crate) mod balance;
pub mod cache;
pub(crate) mod catalog;
pub mod classify;
pub mod deallocate;
pub mod depth;
pub mod functions;
pub(crate) mod policy;
pub mod redact;
pub mod split;
