//! Queries across shards: for one SELECT that runs on every shard, whether its shards' results can be merged
//! into exactly the result PostgreSQL would give on one database holding all the rows, the statement each
//! shard runs ([`analyze`]), and the sans-IO [`Merger`] that turns the shards' rows into the client's rows.
//!
//! The rule is "never a wrong answer": a construct is merged only when this module knows how to merge it
//! exactly (row union, ORDER BY with LIMIT/OFFSET, DISTINCT, count/sum/min/max/avg with GROUP BY); anything
//! else is refused with SQLSTATE 0A000 naming the construct and what would make it work. Refusals found in
//! the text come from [`analyze`]; those that depend on column types (ordering text under a non-C collation,
//! summing an interval) come from the [`Merger`] when the shards' RowDescription arrives.

mod agg;
mod aggregate;
mod analyze;
pub mod binary;
mod clauses;
mod frames;
mod merger;
mod numeric;
mod scan;
mod tables;
mod value;

#[cfg(test)]
mod tests;

pub use analyze::analyze;
pub use merger::Merger;

use sqlparser::ast::ObjectName;

/// What [`analyze`] needs to know about the tables a statement names.
pub trait ShardedTables {
    /// The shard key column of `table` when it is a sharded table, `None` for a reference table (one
    /// present whole on every shard) or a name that is not a configured sharded table.
    fn shard_key(&self, table: &ObjectName) -> Option<String>;

    /// Whether `function` is a user-defined aggregate (PostgreSQL's own aggregates are known here). A user
    /// aggregate cannot be merged, so a statement calling one is refused; the session can answer this from
    /// `pg_proc` (`prokind = 'a'`). The default knows none.
    fn is_user_aggregate(&self, _function: &ObjectName) -> bool {
        false
    }
}

impl<F: Fn(&ObjectName) -> Option<String>> ShardedTables for F {
    fn shard_key(&self, table: &ObjectName) -> Option<String> {
        self(table)
    }
}

/// The outcome of [`analyze`] for a mergeable SELECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    /// The statement every shard runs.
    pub shard_sql: String,
    /// How the shards' results become the client's result.
    pub merge: Merge,
}

/// How to merge the shards' results of a [`MergePlan::shard_sql`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// Row union, de-duplicated union, or aggregation.
    pub mode: Mode,
    /// The client's sort order; empty when the statement has no ORDER BY.
    pub order: Vec<SortKey>,
    /// LIMIT n (None: no limit).
    pub limit: Option<u64>,
    /// OFFSET m (0: none).
    pub offset: u64,
}

/// The shape of a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The shards' rows are the client's rows; the last `hidden` columns of each shard row were added to the
    /// shard statement for sorting and are dropped.
    Rows { hidden: usize },
    /// As `Rows`, and rows equal across shards are kept once (SELECT DISTINCT).
    Distinct,
    /// Aggregation: each shard groups its own rows; rows of equal group keys are combined.
    Aggregate(Aggregate),
}

/// An aggregating merge: one [`Slot`] per column of the shard statement's select list (the client's
/// `visible` columns first, then hidden ones for ORDER BY/GROUP BY), and after them one extra count column
/// per `avg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// The merged row's slots; slot `i` reads shard column `i` (and an avg its count column).
    pub slots: Vec<Slot>,
    /// How many leading slots the client sees.
    pub visible: usize,
    /// Whether the statement has GROUP BY: without it, the result is always exactly one row.
    pub grouped: bool,
}

/// How one merged column is made from the shards' columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// A GROUP BY key or a value determined by the keys: part of the group identity.
    Key,
    /// count(...): the shards' counts added (bigint).
    Count,
    /// sum(...): the shards' sums added, in the sum's own type; NULL when every shard's sum is NULL.
    Sum,
    /// min(...): the least non-NULL value.
    Min,
    /// max(...): the greatest non-NULL value.
    Max,
    /// A select-list value neither grouped on nor aggregated (a function of the group keys, or a
    /// constant): taken from the first row of the group.
    Any,
    /// avg(...): shard column `i` carries sum(x), shard column `count_column` carries count(x); the
    /// result is total sum / total count in PostgreSQL's avg type and scale.
    Avg { count_column: usize },
}

/// One ORDER BY key of the merged rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The column sorted on.
    pub column: SortColumn,
    /// DESC.
    pub descending: bool,
    /// NULLS FIRST (PostgreSQL's default: NULLS LAST for ASC, NULLS FIRST for DESC).
    pub nulls_first: bool,
    /// The key is an expression with COLLATE "C" (or "POSIX"): bytewise order is right whatever the
    /// database's collation.
    pub c_collation: bool,
}

/// Where a sort key's value is in a merged row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    /// Column `i` counted from the first (a slot in an aggregating merge).
    Front(usize),
    /// Column `i` counted from the end of the shard row (0 is the last): a hidden sort column appended after
    /// a select list whose width is known only from the RowDescription (`SELECT *`).
    Back(usize),
}
