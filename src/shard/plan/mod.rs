//! The shard planner: which shard or shards one statement runs on, decided from its text and, for a
//! prepared statement, its Bind parameters. It owns the routing rules of sharding (docs/sharding.md, "What
//! is routed where"): key conditions in WHERE and JOIN, INSERT VALUES rows (and the per-shard texts of a
//! multi-row INSERT whose rows go to several shards), UPDATE/DELETE, COPY, co-located joins and
//! subqueries, reference tables, DDL and the statements that only concern the session; and the refusals
//! (SQLSTATE 0A000) of what would otherwise run on the wrong shards.
//!
//! Everything here is a pure function of the statement, the [`ShardingRules`], the parameters and a
//! [`Placement`] (the hash of piece 1, passed in so that the planner does not depend on it). `rules` reads
//! the config, `keys` turns literals and parameters into shards, `query` walks queries and their scopes,
//! `insert` plans INSERT and splits its rows, `utility` dispatches statements by their first keywords.

mod insert;
mod keys;
mod query;
mod rules;
mod utility;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use crate::cluster::ShardId;
use crate::config::ShardKeyType;
use crate::protocol::messages::ProxyError;
use crate::router::split::split_statements;
use crate::shard::value::KeyValue;

pub use rules::{ShardedTable, ShardingRules};

/// Where a key value lives: PostgreSQL's hash partitioning in production (`shard::hash`), any function of
/// the value in tests.
pub trait Placement {
    /// The shard holding rows whose key is `value`.
    fn shard_for(&self, value: &KeyValue) -> ShardId;
}

impl<F: Fn(&KeyValue) -> ShardId> Placement for F {
    fn shard_for(&self, value: &KeyValue) -> ShardId {
        self(value)
    }
}

/// One Bind parameter's value as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamValue<'a> {
    /// SQL NULL (length -1).
    Null,
    /// Text format.
    Text(&'a [u8]),
    /// Binary format.
    Binary(&'a [u8]),
}

/// The parameters of the statement being planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params<'a> {
    /// Not known yet (Parse time): a plan that depends on them lists them in `needs_params`.
    Unknown,
    /// The values of a Bind, `$1` first (empty for a simple query).
    Known(&'a [ParamValue<'a>]),
}

impl Params<'_> {
    /// No parameters: a simple query.
    pub const NONE: Params<'static> = Params::Known(&[]);
}

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardTarget {
    /// On this shard only.
    One(ShardId),
    /// On each of these shards (sorted, distinct, at least two).
    Several(Vec<ShardId>),
    /// On every shard: a fan-out read, or a write on every shard (reference tables, DDL, a sharded table
    /// without a key condition).
    All,
    /// It reads only reference tables (or no table): any one shard may answer.
    Any,
    /// Not about data placement (transaction control, SET/RESET/SHOW, DISCARD, LISTEN, FETCH...): the
    /// session handles it on the shards it already uses.
    Session,
}

impl fmt::Display for ShardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardTarget::One(s) => write!(f, "{s}"),
            ShardTarget::Several(v) => {
                f.write_str("shards ")?;
                let names: Vec<String> = v.iter().map(|s| s.get().to_string()).collect();
                f.write_str(&names.join(", "))
            }
            ShardTarget::All => f.write_str("every shard"),
            ShardTarget::Any => f.write_str("any shard"),
            ShardTarget::Session => f.write_str("session"),
        }
    }
}

impl ShardTarget {
    /// The target of a set of shards: one, several, or (empty: the statement matches no row anywhere, so
    /// any shard answers it correctly) shard 0.
    fn of_set(set: &BTreeSet<ShardId>) -> ShardTarget {
        match set.len() {
            0 => ShardTarget::One(ShardId::new(0)),
            1 => ShardTarget::One(*set.iter().next().unwrap_or(&ShardId::new(0))),
            _ => ShardTarget::Several(set.iter().copied().collect()),
        }
    }
}

/// `COPY table FROM STDIN` into a sharded table: each data row must go to the shard of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    /// The table as configured.
    pub table: String,
    /// The key column's position (from 0) in the COPY column list.
    pub key_index: usize,
    /// The key column's type.
    pub key_type: ShardKeyType,
}

/// The plan of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// Where it runs.
    pub target: ShardTarget,
    /// Whether it may write or lock rows (and so needs the shard primaries; a write on several shards
    /// commits with two-phase commit).
    pub write: bool,
    /// Why, for SHOW ROUTE: "accounts.id = 42 -> shard 1".
    pub reason: String,
    /// The parameters (1-based) the target depends on that are not known yet: plan again at Bind.
    pub needs_params: Vec<usize>,
    /// A multi-row INSERT whose rows go to several shards: per shard (in shard order), the INSERT holding
    /// only that shard's rows, each row's original text kept; parameters renumbered from `$1` per text.
    pub split: Option<Vec<(ShardId, String)>>,
    /// With `split`: per text, the original parameter numbers (1-based) it takes as `$1`, `$2`, ...
    pub split_params: Option<Vec<Vec<usize>>>,
    /// `COPY ... FROM STDIN` into a sharded table: the rows must be split by key (target is `All`).
    pub copy_in: Option<CopyIn>,
    /// Every shard's copy of the statement produces the same result (reference-table writes, DDL): the
    /// session answers the client with one of them.
    pub same_on_every_shard: bool,
    /// It cannot run inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...), so it cannot be
    /// committed with two-phase commit: the session runs it on each shard on its own.
    pub outside_transaction: bool,
}

impl ShardPlan {
    fn new(target: ShardTarget, write: bool, reason: impl Into<String>) -> ShardPlan {
        ShardPlan {
            target,
            write,
            reason: reason.into(),
            needs_params: Vec::new(),
            split: None,
            split_params: None,
            copy_in: None,
            same_on_every_shard: false,
            outside_transaction: false,
        }
    }

    fn session(reason: impl Into<String>) -> ShardPlan {
        ShardPlan::new(ShardTarget::Session, false, reason)
    }

    /// A write whose result is the same on every shard (reference tables, DDL).
    fn everywhere(reason: impl Into<String>) -> ShardPlan {
        ShardPlan {
            same_on_every_shard: true,
            ..ShardPlan::new(ShardTarget::All, true, reason)
        }
    }
}

/// The SQLSTATE of a refusal.
const NOT_SUPPORTED: &str = "0A000";

/// A refusal: 0A000 with the construct and what would make it work.
fn refuse(message: impl Into<String>, hint: impl Into<String>) -> ProxyError {
    ProxyError::error(NOT_SUPPORTED, message).with_hint(hint)
}

/// The plan of one statement `sql` (a simple query's single statement or a Parse's text).
pub fn plan(
    sql: &str,
    rules: &ShardingRules,
    params: &Params<'_>,
    placement: &dyn Placement,
) -> Result<ShardPlan, ProxyError> {
    let ctx = Ctx {
        rules,
        params,
        placement,
    };
    utility::plan_statement(sql, &ctx)
}

/// The plans of each statement of a simple-query string, in order (empty for an empty string).
pub fn plan_all(
    sql: &str,
    rules: &ShardingRules,
    params: &Params<'_>,
    placement: &dyn Placement,
) -> Result<Vec<ShardPlan>, ProxyError> {
    split_statements(sql)
        .into_iter()
        .map(|stmt| plan(stmt, rules, params, placement))
        .collect()
}

/// Where a request made of these statements runs as a whole: the union of their shards, every shard if
/// one of them needs every shard, any shard when all of them may run anywhere, the session's shards when
/// none of them is about data.
pub fn combined_target(plans: &[ShardPlan]) -> ShardTarget {
    let mut set = BTreeSet::new();
    let mut any = false;
    for p in plans {
        match &p.target {
            ShardTarget::All => return ShardTarget::All,
            ShardTarget::One(s) => {
                set.insert(*s);
            }
            ShardTarget::Several(v) => set.extend(v.iter().copied()),
            ShardTarget::Any => any = true,
            ShardTarget::Session => {}
        }
    }
    if !set.is_empty() {
        ShardTarget::of_set(&set)
    } else if any {
        ShardTarget::Any
    } else {
        ShardTarget::Session
    }
}

/// What every part of the planner reads.
struct Ctx<'a> {
    rules: &'a ShardingRules,
    params: &'a Params<'a>,
    placement: &'a dyn Placement,
}

/// "shard 1" or "shards 0, 2".
fn shards_text(set: &BTreeSet<ShardId>) -> String {
    match ShardTarget::of_set(set) {
        ShardTarget::One(s) => s.to_string(),
        other => other.to_string(),
    }
}
