//! Atomic commit of a transaction that wrote on several shards: two-phase commit with the decision recorded
//! in the databases themselves, and the recovery that finishes what a crash left prepared.
//!
//! This module owns the names of distributed transactions ([`gid`]), the coordinator's steps over a narrow
//! [`Participant`] trait ([`commit`]), the decision table `pgfleet.commit_decisions`, the pure rule that
//! turns what recovery finds into actions ([`resolve`]), and recovery itself with its connections to the
//! shard primaries ([`target`], [`recovery`], [`report`]). The session drives [`commit()`] over its own connections;
//! recovery runs as a background task ([`spawn_recovery`]). docs/sharding.md, "Two-phase commit", tells the
//! protocol and its guarantees.

pub mod commit;
pub mod gid;
pub mod participant;
pub mod recovery;
pub mod report;
pub mod resolve;
pub mod target;

use std::fmt;

pub use commit::{CommitOutcome, CommitStep, TwoPhaseError, commit, rollback};
pub use gid::{Gid, GidBase, InstanceId, InstanceIdError};
pub use participant::{Participant, ParticipantError, Rows};
pub use recovery::{Recovery, RecoveryOptions, recover_once, spawn_recovery};
pub use report::{RecoveryError, RecoveryFailure, RecoveryReport};
pub use resolve::{CoordinatorAnswer, Resolution, WaitReason, XidStatus};
pub use target::{RecoveryLogin, ShardTarget, StartCheckError, TargetError, check_prepared_transactions};

/// The schema of the decision table, in every database pgfleet coordinates.
pub const DECISION_SCHEMA: &str = "pgfleet";
/// The decision table: one row per distributed transaction whose decision is commit.
pub const DECISION_TABLE: &str = "pgfleet.commit_decisions";

/// Creates the decision table where it is missing. Only the roles recovery is told about may insert: a
/// visible row commits a prepared transaction, so a role that could forge one could commit half of another
/// role's transaction.
pub(crate) const CREATE_DECISION_TABLE: &str = "CREATE SCHEMA IF NOT EXISTS pgfleet; \
     CREATE TABLE IF NOT EXISTS pgfleet.commit_decisions (\
         gid_base text PRIMARY KEY, \
         instance text NOT NULL, \
         decided_at timestamptz NOT NULL DEFAULT clock_timestamp()); \
     CREATE SEQUENCE IF NOT EXISTS pgfleet.ids INCREMENT BY 1000";

/// The grants that let `roles` record decisions.
pub(crate) fn grant_decision_writers(roles: &[String]) -> Option<String> {
    if roles.is_empty() {
        return None;
    }
    let list = roles
        .iter()
        .map(|r| format!("\"{}\"", r.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "GRANT USAGE ON SCHEMA pgfleet TO {list}; GRANT INSERT ON pgfleet.commit_decisions TO {list}; \
         GRANT USAGE ON SEQUENCE pgfleet.ids TO {list}"
    ))
}

/// What to do when the decision table cannot be written or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionTableHint {
    /// It does not exist (recovery has not created it yet, or could not).
    Missing,
    /// The role lacks a privilege on it.
    NotWritable,
}

impl DecisionTableHint {
    /// The hint that fits a server error's SQLSTATE, if it is about the table.
    pub fn for_sqlstate(code: &str) -> Option<DecisionTableHint> {
        match code {
            // undefined_table, invalid_schema_name
            "42P01" | "3F000" => Some(DecisionTableHint::Missing),
            // insufficient_privilege
            "42501" => Some(DecisionTableHint::NotWritable),
            _ => None,
        }
    }
}

impl fmt::Display for DecisionTableHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionTableHint::Missing => f.write_str(
                "pgfleet's recovery creates pgfleet.commit_decisions in every shard primary's database at start; \
                 check its log for why it could not, or create it as a privileged role (docs/sharding.md, \
                 \"Two-phase commit\").",
            ),
            DecisionTableHint::NotWritable => f.write_str(
                "As the owner of the schema: GRANT USAGE ON SCHEMA pgfleet TO <role>; \
                 GRANT INSERT ON pgfleet.commit_decisions TO <role>.",
            ),
        }
    }
}
