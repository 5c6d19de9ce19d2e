//! Streamed transactions on the replica side. With pgoutput protocol version 2 the primary sends a
//! transaction whose decoded changes pass `logical_decoding_work_mem` in blocks while it still runs, instead
//! of spilling it to disk and sending it whole after its commit. Each such transaction is applied here as
//! its blocks come, in a replica transaction of its own on a connection of its own, left open until the
//! primary's transaction ends: COMMIT with the progress update at its Stream Commit, once every transaction
//! committed before it is committed on the replica (commit order, as for the others); ROLLBACK at its Stream
//! Abort. A subtransaction gets a savepoint before its first change, rolled back to when it aborts.
//!
//! Why the open replica transaction blocks no one: on the primary, a row the streamed transaction changed
//! stays locked until it ends, so no transaction committed before it touched that row after it did; what
//! they changed before, the stream sent (and this side committed, see `Applier::follow_stream`) before the
//! block that changes it again. A subtransaction's rows freed by its abort are freed here by the same abort,
//! which the stream sends when the primary decodes it, before any later change.
//!
//! A transaction this replica already has comes again when the stream starts over (its commit lies after
//! what the slot confirmed, because another replica had not applied it): its commit position tells only at
//! its end. Its blocks are applied anyway and rolled back at its commit; an error while applying them (a key
//! that is already there) is held until then, and reported only if the transaction turns out to be new.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::super::pgoutput::{Lsn, PgOutput, Relation};
use super::super::setup::{ForwardError, sql_err};
use super::batch::{Batch, Commit, Step};
use super::sink;

/// One streamed transaction being applied.
pub(super) struct Open {
    /// The top-level transaction id on the primary.
    xid: u32,
    batch: Batch,
    /// Relation descriptions as this transaction sees them: those known when it began, and those its own
    /// blocks carry (which describe the tables as its changes left them).
    relations: HashMap<u32, Relation>,
    /// The descriptions its blocks carried: once it commits, pgoutput counts them as sent for everyone.
    described: Vec<Relation>,
    replica: Arc<tokio_postgres::Client>,
    steps: Option<mpsc::Sender<Step>>,
    acks: mpsc::UnboundedReceiver<Result<Commit, ForwardError>>,
    task: JoinHandle<()>,
    /// Subtransactions that have a savepoint, in the order of their first change.
    savepoints: Vec<u32>,
    /// The first failure on the replica; later steps are not sent.
    failed: Option<ForwardError>,
}

/// The savepoint standing for subtransaction `subxid`.
fn savepoint(subxid: u32) -> String {
    format!("pgfleet_sub_{subxid}")
}

impl Open {
    /// Starts applying transaction `xid` on `replica`, a connection of its own (`session_replication_role`
    /// already set), with the descriptions known so far.
    pub(super) fn start(
        xid: u32,
        replica: tokio_postgres::Client,
        relations: &HashMap<u32, Relation>,
    ) -> Self {
        let replica = Arc::new(replica);
        let (steps, rx) = mpsc::channel(sink::PIPELINE_STEPS);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(sink::run(replica.clone(), rx, ack_tx));
        Open {
            xid,
            batch: Batch::streamed(),
            relations: relations.clone(),
            described: Vec::new(),
            replica,
            steps: Some(steps),
            acks,
            task,
            savepoints: Vec::new(),
            failed: None,
        }
    }

    /// Adds one message of a block; `sub` is the (sub)transaction it belongs to.
    pub(super) async fn add(&mut self, sub: Option<u32>, m: PgOutput) -> Result<(), ForwardError> {
        if let PgOutput::Relation(r) = &m {
            self.described.push(r.clone());
        }
        let change = !matches!(m, PgOutput::Relation(_) | PgOutput::Type { .. });
        if change
            && let Some(sub) = sub
            && sub != self.xid
            && !self.savepoints.contains(&sub)
        {
            self.batch.statement(&format!("SAVEPOINT {}", savepoint(sub)))?;
            self.savepoints.push(sub);
        }
        self.batch.add(m, &mut self.relations, Lsn::ZERO)?;
        let ready = self.batch.take_ready();
        self.send(ready).await
    }

    /// The end of a block: the statements it gathered go to the replica now rather than with the next
    /// block; a run of bulk changes waits for the rest of its rows, which may come in the next block.
    pub(super) async fn block_ends(&mut self) -> Result<(), ForwardError> {
        let ready = self.batch.take_written();
        self.send(ready).await
    }

    /// Subtransaction `subxid` aborted: its changes, and those of everything begun after it, are undone.
    pub(super) async fn abort_sub(&mut self, subxid: u32) -> Result<(), ForwardError> {
        let Some(at) = self.savepoints.iter().position(|s| *s == subxid) else {
            // None of its changes reached this side: nothing to undo.
            return Ok(());
        };
        // Rolling back to a savepoint destroys those made after it.
        self.savepoints.truncate(at);
        // A statement ends the pending run first, so its rows are rolled back with the rest.
        self.batch
            .statement(&format!("ROLLBACK TO SAVEPOINT {}", savepoint(subxid)))?;
        let ready = self.batch.take_written();
        self.send(ready).await
    }

    async fn send(&mut self, ready: Vec<Step>) -> Result<(), ForwardError> {
        for step in ready {
            if self.failed.is_some() {
                return Ok(());
            }
            let Some(steps) = &self.steps else {
                return Ok(());
            };
            if steps.send(step).await.is_err() {
                // The replica side stopped: it says why on its acks.
                self.failed = Some(self.sink_failure().await);
                self.steps = None;
            }
        }
        Ok(())
    }

    async fn sink_failure(&mut self) -> ForwardError {
        match self.acks.recv().await {
            Some(Err(e)) => e,
            _ => ForwardError::Apply("the replica side of a streamed transaction ended".into()),
        }
    }

    /// The descriptions its blocks carried, for the changes of the transactions after its commit: pgoutput
    /// does not send them again.
    pub(super) fn take_described(&mut self) -> Vec<Relation> {
        std::mem::take(&mut self.described)
    }

    /// Commits the transaction with the progress update for `slot`; returns what the replica committed.
    pub(super) async fn commit(
        mut self,
        slot: &str,
        end: Lsn,
        commit_time: i64,
    ) -> Result<Commit, ForwardError> {
        let commit = self.batch.finish_streamed(end, commit_time, slot)?;
        self.send(commit).await?;
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.steps = None;
        match self.acks.recv().await {
            Some(Ok(done)) => Ok(done),
            Some(Err(e)) => Err(e),
            None => Err(ForwardError::Apply(
                "the replica side of a streamed transaction ended before its commit".into(),
            )),
        }
    }

    /// Rolls the transaction back on the replica (it aborted, or this replica had it already).
    pub(super) async fn rollback(mut self) -> Result<(), ForwardError> {
        // Whatever was queued runs first, then the task ends; the rollback follows on the same connection.
        self.steps = None;
        while let Some(ack) = self.acks.recv().await {
            drop(ack);
        }
        self.replica
            .batch_execute("ROLLBACK")
            .await
            .map_err(sql_err("rolling back a streamed transaction"))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Ending the task drops its connection, and the server rolls the open transaction back.
        self.task.abort();
    }
}
