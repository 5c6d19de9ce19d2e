//! Routing: what a statement is (`classify`, `functions`, `split`, with `depth` guarding the parser) and
//! where it should run (`policy`, `balance`, with the per-database function rules in `catalog`); the
//! session asks the policy and does the I/O.

pub mod balance;
pub mod cache;
pub mod catalog;
pub mod classify;
pub mod depth;
pub mod functions;
pub mod policy;
pub mod redact;
pub mod split;
