//! What a recovery run reports: what it committed, rolled back or left waiting, and what failed where.

use super::DECISION_TABLE;
use super::gid::Gid;
use super::participant::ParticipantError;
use super::resolve::WaitReason;
use crate::cluster::ShardId;

/// Why recovery could not do something on one shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// No connection, or no answer in time.
    #[error("pgfleet: two-phase commit recovery cannot reach shard primary \"{node}\": {reason}")]
    Unreachable {
        /// Node name.
        node: String,
        /// What failed.
        reason: String,
    },
    /// The decision table is missing and could not be created.
    #[error(
        "pgfleet: cannot create {DECISION_TABLE} on shard primary \"{node}\" (database \"{database}\") as \
         user \"{user}\": {source}. Grant the user CREATE on the database (GRANT CREATE ON DATABASE \
         \"{database}\" TO \"{user}\"), or create the table as a privileged role: CREATE SCHEMA pgfleet; \
         CREATE TABLE pgfleet.commit_decisions (gid_base text PRIMARY KEY, instance text NOT NULL, \
         decided_at timestamptz NOT NULL DEFAULT clock_timestamp()); GRANT USAGE ON SCHEMA pgfleet TO \
         <client roles>; GRANT INSERT ON pgfleet.commit_decisions TO <client roles>"
    )]
    DecisionTable {
        /// Node name.
        node: String,
        /// The database.
        database: String,
        /// Recovery's role.
        user: String,
        /// What the server said.
        source: Box<ParticipantError>,
    },
    /// A statement failed.
    #[error(
        "pgfleet: two-phase commit recovery on shard primary \"{node}\": {what} failed: {source}{advice}"
    )]
    Statement {
        /// Node name.
        node: String,
        /// The statement, in words.
        what: String,
        /// What the server said.
        source: Box<ParticipantError>,
        /// What to do, when known (starts with a separator).
        advice: String,
    },
}

/// A failure of one run on one shard; the run goes on with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFailure {
    /// The shard.
    pub shard: ShardId,
    /// What failed.
    pub error: RecoveryError,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Committed prepared transactions.
    pub committed: Vec<Gid>,
    /// Rolled back prepared transactions.
    pub rolled_back: Vec<Gid>,
    /// Left prepared for now, and why.
    pub waiting: Vec<(Gid, WaitReason)>,
    /// Gids starting with `pgfleet_` that pgfleet did not write, left alone.
    pub ignored: Vec<String>,
    /// Decision rows removed.
    pub decisions_removed: usize,
    /// What failed, per shard.
    pub failures: Vec<RecoveryFailure>,
}

impl RecoveryReport {
    /// True when the run changed nothing and nothing failed or waits.
    pub fn is_quiet(&self) -> bool {
        self.committed.is_empty()
            && self.rolled_back.is_empty()
            && self.waiting.is_empty()
            && self.failures.is_empty()
            && self.decisions_removed == 0
    }
}

/// Logs a run: every failure, and a summary when something happened.
pub(crate) fn log_report(report: &RecoveryReport) {
    for failure in &report.failures {
        tracing::warn!(shard = failure.shard.get(), error = %failure.error, "two-phase commit recovery");
    }
    if !report.is_quiet() {
        tracing::info!(
            committed = report.committed.len(),
            rolled_back = report.rolled_back.len(),
            waiting = report.waiting.len(),
            decisions_removed = report.decisions_removed,
            "two-phase commit recovery run"
        );
    }
}
