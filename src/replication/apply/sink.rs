//! The replica side of a forwarding task: runs [`Step`]s on the replica connection in the order they come,
//! while the stream side goes on decoding the next ones (a pipeline of depth [`PIPELINE_STEPS`]), and
//! reports each committed replica transaction back.
//!
//! A bulk set runs inside a savepoint: staging table, COPY, one statement (INSERTs: COPY into the target). If any of it fails (a unique
//! index that a set-wise UPDATE trips over where the row-by-row order would not, a type the staging table
//! cannot hold), the savepoint is rolled back and the same rows are applied row by row, which fails only if
//! the changes themselves cannot be applied.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, pin_mut};
use tokio::sync::mpsc;

use super::super::setup::{ForwardError, sql_err};
use super::batch::{Commit, Step};
use super::bulk::BulkSet;

/// Steps queued between the stream side and the replica side.
pub(super) const PIPELINE_STEPS: usize = 4;
/// Bytes of COPY data sent in one message.
const COPY_CHUNK: usize = 1 << 20;

/// Runs steps until the queue closes or one fails; each commit, or the failure, is sent to `acks`.
pub(super) async fn run(
    replica: Arc<tokio_postgres::Client>,
    mut steps: mpsc::Receiver<Step>,
    acks: mpsc::UnboundedSender<Result<Commit, ForwardError>>,
) {
    // Staging tables get a new name each time: they live until the replica transaction ends.
    let mut stage_number: u64 = 0;
    while let Some(step) = steps.recv().await {
        let result = match step {
            Step::Sql(sql) => replica
                .batch_execute(&sql)
                .await
                .map_err(sql_err("applying changes")),
            Step::Set(set) => {
                stage_number += 1;
                apply_set(&replica, &set, stage_number).await
            }
            Step::Commit(commit) => match replica.batch_execute(&commit.sql).await {
                Ok(()) => {
                    if acks.send(Ok(commit)).is_err() {
                        return;
                    }
                    Ok(())
                }
                Err(e) => Err(sql_err("committing changes")(e)),
            },
        };
        if let Err(e) = result {
            let _ = acks.send(Err(e));
            return;
        }
    }
}

async fn apply_set(replica: &tokio_postgres::Client, set: &BulkSet, number: u64) -> Result<(), ForwardError> {
    let stage = format!("pgfleet_stage_{number}");
    let table = super::super::sql::qualified(&set.rel);
    match stage_and_apply(replica, set, &stage).await {
        Ok(()) => {
            tracing::debug!(%table, kind = ?set.shape.kind, rows = set.len(), "applied a set");
            Ok(())
        }
        Err(e) => {
            tracing::info!(%table, kind = ?set.shape.kind, rows = set.len(), error = %e,
                "set-wise apply failed; applying row by row");
            replica
                .batch_execute("ROLLBACK TO SAVEPOINT pgfleet_set; RELEASE SAVEPOINT pgfleet_set")
                .await
                .map_err(sql_err("rolling back a set-wise apply"))?;
            let sql = set.row_sql().map_err(|e| ForwardError::Apply(e.to_string()))?;
            replica
                .batch_execute(&sql)
                .await
                .map_err(sql_err("applying changes"))
        }
    }
}

async fn stage_and_apply(
    replica: &tokio_postgres::Client,
    set: &BulkSet,
    stage: &str,
) -> Result<(), ForwardError> {
    let mut prepare = "SAVEPOINT pgfleet_set".to_owned();
    if let Some(create) = set.create_stage(stage) {
        prepare.push_str("; ");
        prepare.push_str(&create);
    }
    replica
        .batch_execute(&prepare)
        .await
        .map_err(sql_err("creating a staging table"))?;
    let sink = replica
        .copy_in::<_, Bytes>(&set.copy_statement(stage))
        .await
        .map_err(sql_err("copying a set"))?;
    pin_mut!(sink);
    let data = Bytes::from(set.copy_data());
    let mut at = 0;
    while at < data.len() {
        let end = (at + COPY_CHUNK).min(data.len());
        sink.send(data.slice(at..end))
            .await
            .map_err(sql_err("copying a set"))?;
        at = end;
    }
    sink.finish().await.map_err(sql_err("copying a set"))?;
    let mut finish = String::new();
    if let Some(apply) = set.apply_statement(stage) {
        finish.push_str(&apply);
        finish.push_str("; ");
    }
    finish.push_str("RELEASE SAVEPOINT pgfleet_set");
    replica
        .batch_execute(&finish)
        .await
        .map_err(sql_err("applying a staged set"))
}
