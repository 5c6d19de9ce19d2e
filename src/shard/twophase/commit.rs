//! The coordinator's side of a commit across shards: the steps, each over one participant's connection,
//! and [`commit`], which runs them in order and undoes what it can when a step fails before the decision.
//!
//! 1. [`start`] on the coordinator (the lowest shard): its transaction id, which names the transaction.
//! 2. [`prepare`] on every other participant, concurrently: `PREPARE TRANSACTION '<gid>'`.
//! 3. [`decide`] on the coordinator: insert the decision row and `COMMIT`. That local commit *is* the
//!    decision, atomic with the coordinator's own writes.
//! 4. [`commit_prepared`] on every other participant. A failure here no longer changes the outcome.

use futures_util::future::join_all;

use super::gid::{Gid, GidBase, InstanceId};
use super::participant::{Participant, ParticipantError};
use super::{DECISION_TABLE, DecisionTableHint};
use crate::cluster::ShardId;

/// Where a commit stopped when a participant refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// Asking the coordinator for its transaction id.
    Start,
    /// `PREPARE TRANSACTION` on a participant.
    Prepare,
    /// Recording the decision and committing on the coordinator.
    Decide,
}

impl std::fmt::Display for CommitStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommitStep::Start => "start",
            CommitStep::Prepare => "PREPARE TRANSACTION",
            CommitStep::Decide => "decision commit",
        })
    }
}

/// How a commit across shards ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The decision is commit. `unfinished` lists the participants whose `COMMIT PREPARED` failed: their
    /// part stays prepared (holding its locks) until recovery commits it.
    Committed {
        /// The transaction's name; None when only one participant wrote and a plain COMMIT sufficed.
        gid: Option<GidBase>,
        /// Participants left prepared, with the error that stopped their `COMMIT PREPARED`.
        unfinished: Vec<(ShardId, ParticipantError)>,
    },
    /// A participant's transaction had already failed, so everything was rolled back: PostgreSQL answers a
    /// COMMIT of a failed transaction with ROLLBACK, and so does pgfleet.
    RolledBack {
        /// The participant whose transaction had failed.
        shard: ShardId,
    },
}

/// Why a commit across shards did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwoPhaseError {
    /// No participant was given.
    #[error("pgfleet: a commit across shards needs at least one participant")]
    NoParticipants,
    /// The same shard was given twice.
    #[error("pgfleet: {0} is given twice to one commit across shards")]
    DuplicateShard(ShardId),
    /// A participant refused before the decision: everything was rolled back. The client gets this
    /// participant's error.
    #[error("{source}")]
    Aborted {
        /// The participant that refused.
        shard: ShardId,
        /// At which step.
        step: CommitStep,
        /// Its error.
        source: ParticipantError,
    },
    /// The decision could not be recorded because the decision table is missing or not writable: rolled
    /// back.
    #[error("pgfleet: cannot record the commit decision in {DECISION_TABLE} on {shard}: {source}")]
    DecisionTable {
        /// The coordinator.
        shard: ShardId,
        /// What the server said.
        source: ParticipantError,
        /// What to do about it.
        hint: DecisionTableHint,
    },
    /// The connection to the coordinator broke while it committed: the decision is whatever the
    /// coordinator's server did with that COMMIT, and recovery applies it to the prepared participants.
    #[error(
        "pgfleet: lost the connection to the coordinator {shard} while committing distributed transaction {gid}; \
         its outcome is unknown here and recovery will apply it on every shard: {source}"
    )]
    InDoubt {
        /// The coordinator.
        shard: ShardId,
        /// The transaction.
        gid: GidBase,
        /// What broke.
        source: ParticipantError,
    },
}

impl TwoPhaseError {
    /// The SQLSTATE a client should see.
    pub fn sqlstate(&self) -> &str {
        match self {
            TwoPhaseError::NoParticipants | TwoPhaseError::DuplicateShard(_) => "XX000",
            TwoPhaseError::Aborted { source, .. } => source.sqlstate(),
            TwoPhaseError::DecisionTable { source, .. } => source.sqlstate(),
            // transaction_resolution_unknown, as the standard names exactly this case.
            TwoPhaseError::InDoubt { .. } => "08007",
        }
    }

    /// A HINT for the client, when there is something to do.
    pub fn hint(&self) -> Option<String> {
        match self {
            TwoPhaseError::DecisionTable { hint, .. } => Some(hint.to_string()),
            TwoPhaseError::InDoubt { .. } => {
                Some("Check whether the transaction's changes are there before retrying it.".to_owned())
            }
            _ => None,
        }
    }
}

/// Step 1: the coordinator's transaction id (assigning one if it has none yet), which names the
/// distributed transaction. Run it on the coordinator inside its open transaction.
pub async fn start<P: Participant + ?Sized>(
    instance: &InstanceId,
    coordinator: ShardId,
    participant: &mut P,
) -> Result<GidBase, ParticipantError> {
    let rows = participant.execute("SELECT txid_current()").await?;
    let xid = single_value(&rows)
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| unexpected("txid_current()", &rows))?;
    Ok(GidBase {
        instance: instance.clone(),
        coordinator,
        xid,
        nonce: rand::random(),
    })
}

/// Step 2 on one participant: `PREPARE TRANSACTION`, then whether the prepared transaction exists. Ok(false)
/// when the participant's transaction had already failed (or there was none): PostgreSQL then answers the
/// PREPARE with ROLLBACK and no error, so only the check tells.
pub async fn prepare<P: Participant + ?Sized>(
    gid: &Gid,
    participant: &mut P,
) -> Result<bool, ParticipantError> {
    let sql =
        format!("PREPARE TRANSACTION '{gid}'; SELECT count(*) FROM pg_prepared_xacts WHERE gid = '{gid}'");
    let rows = participant.execute(&sql).await?;
    match single_value(&rows) {
        Some("1") => Ok(true),
        Some("0") => Ok(false),
        _ => Err(unexpected("the prepared transaction check", &rows)),
    }
}

/// Step 3: on the coordinator, the decision row and `COMMIT`, flushed whatever `synchronous_commit` says
/// (a decision lost in a crash after the participants committed would undo half a transaction). Ok(true)
/// when the coordinator's transaction committed, Ok(false) when its COMMIT turned into a rollback. A server
/// error does not say which statement failed, so the transaction's status is asked before it is returned:
/// Err(Server) means rolled back (and the coordinator's session is out of its transaction block), a
/// connection error means unknown.
pub async fn decide<P: Participant + ?Sized>(
    base: &GidBase,
    participant: &mut P,
) -> Result<bool, ParticipantError> {
    let sql = format!(
        "SET LOCAL synchronous_commit TO on; \
         INSERT INTO {DECISION_TABLE} (gid_base, instance) VALUES ('{base}', '{}'); \
         COMMIT; SELECT txid_status({})",
        base.instance, base.xid
    );
    let failure = match participant.execute(&sql).await {
        Ok(rows) => {
            return match single_value(&rows) {
                Some("committed") => Ok(true),
                Some("aborted") => Ok(false),
                _ => Err(unexpected("txid_status() after COMMIT", &rows)),
            };
        }
        Err(e @ ParticipantError::Server { .. }) => e,
        Err(e) => return Err(e),
    };
    // The ROLLBACK ends a transaction the failed INSERT left open, and only warns when the COMMIT ran.
    let rows = participant
        .execute(&format!("ROLLBACK; SELECT txid_status({})", base.xid))
        .await?;
    match single_value(&rows) {
        Some("committed") => {
            tracing::warn!(gid = %base, error = %failure, "a statement after the decision commit failed; the decision stands");
            Ok(true)
        }
        Some("aborted") => Err(failure),
        _ => Err(unexpected("txid_status() after a failed COMMIT", &rows)),
    }
}

/// Step 4 on one participant: `COMMIT PREPARED`.
pub async fn commit_prepared<P: Participant + ?Sized>(
    gid: &Gid,
    participant: &mut P,
) -> Result<(), ParticipantError> {
    participant
        .execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .map(drop)
}

/// Undoes step 2 on one participant.
pub async fn rollback_prepared<P: Participant + ?Sized>(
    gid: &Gid,
    participant: &mut P,
) -> Result<(), ParticipantError> {
    participant
        .execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .await
        .map(drop)
}

/// Commits a transaction that wrote on every participant given (each inside its open transaction block on
/// its shard's primary, all in one database). With one participant this is a plain COMMIT; with more, the
/// lowest shard coordinates and the others prepare (see the module's steps).
///
/// Before the decision, any refusal rolls everything back and returns [`TwoPhaseError::Aborted`] with the
/// refusing participant's error. After it, the transaction is committed whatever happens: failures of
/// `COMMIT PREPARED` are listed in [`CommitOutcome::Committed`] and left to recovery.
pub async fn commit<P: Participant + Send + ?Sized>(
    instance: &InstanceId,
    participants: &mut [(ShardId, &mut P)],
) -> Result<CommitOutcome, TwoPhaseError> {
    let mut all: Vec<&mut (ShardId, &mut P)> = participants.iter_mut().collect();
    all.sort_by_key(|(shard, _)| *shard);
    if let Some(pair) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TwoPhaseError::DuplicateShard(pair[0].0));
    }
    if all.is_empty() {
        return Err(TwoPhaseError::NoParticipants);
    }
    let coordinator = all.remove(0);
    let (c_shard, c) = (coordinator.0, &mut *coordinator.1);
    let mut others = all;

    if others.is_empty() {
        // The SELECT fails (and the COMMIT is skipped) in a failed transaction, whose COMMIT would
        // otherwise turn into a ROLLBACK without a word.
        return match c.execute("SELECT 1; COMMIT").await {
            Ok(_) => Ok(CommitOutcome::Committed {
                gid: None,
                unfinished: Vec::new(),
            }),
            Err(source) => {
                if source.sqlstate() == "25P02" {
                    let _ = c.execute("ROLLBACK").await;
                }
                failed_before_prepare(c_shard, CommitStep::Decide, source)
            }
        };
    }

    let base = match start(instance, c_shard, c).await {
        Ok(base) => base,
        Err(source) => {
            let _ = c.execute("ROLLBACK").await;
            rollback_open(&mut others).await;
            return failed_before_prepare(c_shard, CommitStep::Start, source);
        }
    };

    let prepared = join_all(others.iter_mut().map(|entry| {
        let gid = base.gid(entry.0);
        async move { prepare(&gid, &mut *entry.1).await }
    }))
    .await;
    // A participant's error is what the client gets; failed transactions only say "rolled back".
    let refusal = prepared
        .iter()
        .zip(&others)
        .find_map(|(result, entry)| result.as_ref().err().map(|e| (entry.0, Some(e.clone()))))
        .or_else(|| {
            prepared
                .iter()
                .zip(&others)
                .find_map(|(result, entry)| matches!(result, Ok(false)).then_some((entry.0, None)))
        });
    if let Some((shard, error)) = refusal {
        // The coordinator's rollback first: from then on recovery, too, can roll back what stayed prepared.
        let _ = c.execute("ROLLBACK").await;
        join_all(others.iter_mut().zip(&prepared).map(|(entry, result)| {
            let gid = base.gid(entry.0);
            let was_prepared = matches!(result, Ok(true));
            async move {
                if was_prepared {
                    if let Err(e) = rollback_prepared(&gid, &mut *entry.1).await {
                        tracing::warn!(%gid, error = %e, "ROLLBACK PREPARED failed; recovery will retry it");
                    }
                } else {
                    // A failed PREPARE has ended the transaction already; a lost connection ended it too,
                    // or left it prepared for recovery to roll back. This ROLLBACK only tidies up.
                    let _ = entry.1.execute("ROLLBACK").await;
                    if matches!(result, Err(ParticipantError::Server { .. })) {
                        // The error may have come from the check after a PREPARE that succeeded.
                        let _ = rollback_prepared(&gid, &mut *entry.1).await;
                    }
                }
            }
        }))
        .await;
        return match error {
            None => Ok(CommitOutcome::RolledBack { shard }),
            Some(source) => Err(TwoPhaseError::Aborted {
                shard,
                step: CommitStep::Prepare,
                source,
            }),
        };
    }

    match decide(&base, c).await {
        Ok(true) => {}
        Ok(false) => {
            rollback_all_prepared(&base, &mut others).await;
            return Ok(CommitOutcome::RolledBack { shard: c_shard });
        }
        Err(source @ ParticipantError::Server { .. }) => {
            // The INSERT or the COMMIT failed: the coordinator's transaction is rolled back.
            rollback_all_prepared(&base, &mut others).await;
            let code = source.sqlstate().to_owned();
            return Err(match DecisionTableHint::for_sqlstate(&code) {
                Some(hint) => TwoPhaseError::DecisionTable {
                    shard: c_shard,
                    source,
                    hint,
                },
                None => TwoPhaseError::Aborted {
                    shard: c_shard,
                    step: CommitStep::Decide,
                    source,
                },
            });
        }
        Err(source) => {
            return Err(TwoPhaseError::InDoubt {
                shard: c_shard,
                gid: base,
                source,
            });
        }
    }

    let finished = join_all(others.iter_mut().map(|entry| {
        let gid = base.gid(entry.0);
        async move { (gid.participant, commit_prepared(&gid, &mut *entry.1).await) }
    }))
    .await;
    let unfinished: Vec<_> = finished
        .into_iter()
        .filter_map(|(shard, result)| result.err().map(|e| (shard, e)))
        .collect();
    for (shard, error) in &unfinished {
        tracing::warn!(gid = %base.gid(*shard), %error, "COMMIT PREPARED failed after the commit decision; recovery will finish it");
    }
    Ok(CommitOutcome::Committed {
        gid: Some(base),
        unfinished,
    })
}

/// Rolls back a transaction on every participant (a ROLLBACK before any commit step is a plain one on
/// each shard). Returns the participants where it failed.
pub async fn rollback<P: Participant + Send + ?Sized>(
    participants: &mut [(ShardId, &mut P)],
) -> Vec<(ShardId, ParticipantError)> {
    join_all(
        participants
            .iter_mut()
            .map(|entry| async move { (entry.0, entry.1.execute("ROLLBACK").await.err()) }),
    )
    .await
    .into_iter()
    .filter_map(|(shard, e)| e.map(|e| (shard, e)))
    .collect()
}

async fn rollback_open<P: Participant + Send + ?Sized>(others: &mut [&mut (ShardId, &mut P)]) {
    join_all(others.iter_mut().map(|entry| async move {
        let _ = entry.1.execute("ROLLBACK").await;
    }))
    .await;
}

async fn rollback_all_prepared<P: Participant + Send + ?Sized>(
    base: &GidBase,
    others: &mut [&mut (ShardId, &mut P)],
) {
    join_all(others.iter_mut().map(|entry| {
        let gid = base.gid(entry.0);
        async move {
            if let Err(e) = rollback_prepared(&gid, &mut *entry.1).await {
                tracing::warn!(%gid, error = %e, "ROLLBACK PREPARED failed; recovery will retry it");
            }
        }
    }))
    .await;
}

/// A failure before anything was prepared: a coordinator whose transaction had failed means the whole
/// transaction rolls back, as a COMMIT of a failed transaction does in PostgreSQL.
fn failed_before_prepare(
    shard: ShardId,
    step: CommitStep,
    source: ParticipantError,
) -> Result<CommitOutcome, TwoPhaseError> {
    if source.sqlstate() == "25P02" {
        return Ok(CommitOutcome::RolledBack { shard });
    }
    Err(TwoPhaseError::Aborted { shard, step, source })
}

fn single_value(rows: &[Vec<Option<String>>]) -> Option<&str> {
    match rows {
        [row] => match row.as_slice() {
            [Some(value)] => Some(value),
            _ => None,
        },
        _ => None,
    }
}

fn unexpected(what: &str, rows: &[Vec<Option<String>>]) -> ParticipantError {
    ParticipantError::Connection(format!("unexpected answer to {what}: {rows:?}"))
}
