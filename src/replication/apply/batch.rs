//! The replica transaction being built: decoded messages of one or more primary transactions in, [`Step`]s
//! out, in stream order. Row changes become SQL text, except runs of bulk changes, which become sets
//! (`bulk`); the progress update and COMMIT close the last step of a replica transaction.

use std::collections::HashMap;

use super::super::pgoutput::{Lsn, PgOutput, Relation};
use super::super::setup::{DDL_PREFIX, ForwardError};
use super::super::sql;
use super::bulk::{BulkSet, Change, shape};
use super::ddl::ddl_commands;

/// A chunk of SQL larger than this is sent before its transaction ends (large transactions).
const CHUNK_BYTES: usize = 1 << 20;

/// Work for the replica, in order; everything up to a [`Step::Commit`] is one replica transaction.
#[derive(Debug)]
pub(super) enum Step {
    /// Statements inside the replica transaction (the first one opens it with BEGIN).
    Sql(String),
    /// A bulk set, applied set-wise inside the replica transaction.
    Set(BulkSet),
    /// The last statements, the progress update and COMMIT.
    Commit(Commit),
}

/// The end of a replica transaction and what it applied.
#[derive(Debug)]
pub(super) struct Commit {
    /// Statements ending with COMMIT.
    pub sql: String,
    /// End LSN of the last primary transaction in it.
    pub end: Lsn,
    /// Row changes in it.
    pub changes: usize,
    /// Primary transactions in it.
    pub transactions: u64,
    /// Commit time of the last of them.
    pub last_commit_time: i64,
}

/// Row changes of one or more primary transactions, becoming one replica transaction.
#[derive(Default)]
pub(super) struct Batch {
    sql: String,
    /// A replica transaction has been opened (its BEGIN is written) and not committed.
    pub open: bool,
    /// Inside a primary transaction (between Begin and Commit).
    pub in_tx: bool,
    skip: bool,
    /// Row changes gathered.
    pub changes: usize,
    transactions: u64,
    /// End LSN of the last whole primary transaction gathered.
    pub end: Option<Lsn>,
    last_commit_time: i64,
    /// Per DDL string, how many of its event-trigger messages this primary transaction has carried.
    ddl_seen: HashMap<String, usize>,
    /// The run of changes that may become a bulk set.
    run: Option<BulkSet>,
    /// Steps ready to be sent.
    ready: Vec<Step>,
}

fn apply_err(e: sql::SqlError) -> ForwardError {
    ForwardError::Apply(e.to_string())
}

impl Batch {
    /// The batch of one streamed transaction: inside it from the start, it ends with
    /// [`Batch::finish_streamed`].
    pub(super) fn streamed() -> Batch {
        Batch {
            in_tx: true,
            ..Batch::default()
        }
    }

    fn begin(&mut self) {
        if !self.open {
            self.sql.push_str("BEGIN;");
            self.open = true;
        }
    }

    /// Applies the pending run (a set-wise step when big enough, row-wise SQL otherwise).
    fn flush_run(&mut self) -> Result<(), ForwardError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        self.begin();
        if run.is_bulk() {
            let sql = std::mem::take(&mut self.sql);
            self.ready.push(Step::Sql(sql));
            self.ready.push(Step::Set(run));
        } else {
            self.sql.push_str(&run.row_sql().map_err(apply_err)?);
        }
        Ok(())
    }

    fn push(&mut self, stmt: &str) -> Result<(), ForwardError> {
        self.flush_run()?;
        self.begin();
        self.sql.push_str(stmt);
        self.sql.push_str(";\n");
        Ok(())
    }

    /// A statement of pgfleet's own (a savepoint) at this place among the changes.
    pub(super) fn statement(&mut self, stmt: &str) -> Result<(), ForwardError> {
        self.push(stmt)
    }

    /// A row change: joins the run when it can, else ends the run and starts another or goes row-wise.
    fn change(&mut self, rel: &Relation, change: Change) -> Result<(), ForwardError> {
        self.changes += 1;
        let Some(shape) = shape(rel, &change) else {
            return self.push(&change.row_sql(rel).map_err(apply_err)?);
        };
        let change = match &mut self.run {
            Some(run) => match run.try_push(&shape, change) {
                Ok(()) => return Ok(()),
                Err(refused) => refused,
            },
            None => change,
        };
        self.flush_run()?;
        self.run = Some(BulkSet::new(rel.clone(), shape, change));
        Ok(())
    }

    /// Adds one decoded message.
    pub(super) fn add(
        &mut self,
        m: PgOutput,
        relations: &mut HashMap<u32, Relation>,
        applied: Lsn,
    ) -> Result<(), ForwardError> {
        let rel = |relations: &HashMap<u32, Relation>, id: u32| {
            relations
                .get(&id)
                .cloned()
                .ok_or_else(|| ForwardError::Apply(format!("change for unknown relation {id}")))
        };
        match m {
            PgOutput::Begin { final_lsn, .. } => {
                // Already applied before a restart: the progress row says so.
                self.skip = final_lsn < applied;
                self.in_tx = true;
                self.ddl_seen.clear();
            }
            PgOutput::Commit {
                end_lsn, commit_time, ..
            } => {
                self.flush_run()?;
                self.in_tx = false;
                if !self.skip {
                    self.end = Some(end_lsn);
                    self.transactions += 1;
                    self.last_commit_time = commit_time;
                }
            }
            PgOutput::Relation(r) => {
                // A new description may change the columns: the run was built on the old one.
                self.flush_run()?;
                relations.insert(r.id, r);
            }
            PgOutput::Origin { .. } | PgOutput::Type { .. } => {}
            PgOutput::StreamStart { .. }
            | PgOutput::StreamStop
            | PgOutput::StreamCommit { .. }
            | PgOutput::StreamAbort { .. } => {
                return Err(ForwardError::Apply(format!(
                    "pgoutput {} where a transaction's change belongs",
                    m.kind()
                )));
            }
            _ if self.skip => {}
            PgOutput::Insert { relation, new } => {
                let r = relations
                    .get(&relation)
                    .ok_or_else(|| ForwardError::Apply(format!("change for unknown relation {relation}")))?;
                self.change(r, Change::Insert(new))?;
            }
            PgOutput::Update {
                relation,
                old,
                key_only,
                new,
            } => {
                let r = relations
                    .get(&relation)
                    .ok_or_else(|| ForwardError::Apply(format!("change for unknown relation {relation}")))?;
                self.change(r, Change::Update { old, key_only, new })?;
            }
            PgOutput::Delete {
                relation,
                old,
                key_only,
            } => {
                let r = relations
                    .get(&relation)
                    .ok_or_else(|| ForwardError::Apply(format!("change for unknown relation {relation}")))?;
                self.change(r, Change::Delete { old, key_only })?;
            }
            PgOutput::Truncate {
                cascade,
                restart_identity,
                relations: ids,
            } => {
                let rels: Vec<Relation> = ids
                    .iter()
                    .map(|id| rel(relations, *id))
                    .collect::<Result<_, _>>()?;
                let refs: Vec<&Relation> = rels.iter().collect();
                let stmt = sql::truncate(&refs, cascade, restart_identity);
                if !stmt.is_empty() {
                    self.push(&stmt)?;
                    self.changes += 1;
                }
            }
            PgOutput::Message {
                prefix,
                content,
                transactional,
                ..
            } => {
                if prefix == DDL_PREFIX && transactional {
                    self.ddl(&content)?;
                }
            }
        }
        Ok(())
    }

    fn ddl(&mut self, content: &[u8]) -> Result<(), ForwardError> {
        let text = String::from_utf8_lossy(content).into_owned();
        let mut parts = text.splitn(3, '\n');
        let (Some(role), Some(path), Some(query)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ForwardError::Apply(format!("malformed DDL message: {text}")));
        };
        // The trigger fires once per command, before it runs: the k-th message for a string stands
        // for the k-th command of that string, at its place among the string's row changes.
        let seen = self.ddl_seen.entry(text.clone()).or_insert(0);
        let k = *seen;
        *seen += 1;
        let commands = ddl_commands(query);
        let run: Vec<String> = if commands.is_empty() {
            // DDL run by a DO block or a function: the block is replayed once, whole.
            if k == 0 {
                vec![query.to_owned()]
            } else {
                Vec::new()
            }
        } else {
            commands.into_iter().nth(k).flatten().unwrap_or_default()
        };
        if !run.is_empty() {
            self.push(&format!(
                "SET ROLE {}; SET search_path TO {path}",
                crate::protocol::quote::quote_ident(role)
            ))?;
            for stmt in run {
                self.push(&stmt)?;
                self.changes += 1;
            }
            self.push("RESET ROLE; RESET search_path")?;
        }
        Ok(())
    }

    /// The steps ready to go, in order: sets and the SQL before them, and inside a large transaction the SQL
    /// gathered so far once it passes the chunk size.
    pub(super) fn take_ready(&mut self) -> Vec<Step> {
        if self.in_tx && self.sql.len() > CHUNK_BYTES {
            let sql = std::mem::take(&mut self.sql);
            self.ready.push(Step::Sql(sql));
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.retain(|s| !matches!(s, Step::Sql(sql) if sql.is_empty()));
        ready
    }

    /// The steps gathered and the SQL so far, whatever its size; the pending run is left to grow, so that a
    /// bulk change whose rows come in several blocks still makes sets.
    pub(super) fn take_written(&mut self) -> Vec<Step> {
        if !self.sql.is_empty() {
            let sql = std::mem::take(&mut self.sql);
            self.ready.push(Step::Sql(sql));
        }
        self.take_ready()
    }

    /// Ends a streamed transaction that committed at `end`: what is left, then its commit with the progress
    /// update for `slot`.
    pub(super) fn finish_streamed(
        &mut self,
        end: Lsn,
        commit_time: i64,
        slot: &str,
    ) -> Result<Vec<Step>, ForwardError> {
        self.flush_run()?;
        self.in_tx = false;
        self.end = Some(end);
        self.transactions += 1;
        self.last_commit_time = commit_time;
        let mut steps = self.take_ready();
        steps.extend(self.commit(slot));
        Ok(steps)
    }

    /// Whether received changes are still unapplied here: a transaction open, changes gathered, or a run
    /// waiting to become a set.
    pub(super) fn busy(&self) -> bool {
        self.open || self.in_tx || self.run.is_some()
    }

    /// Closes the replica transaction with the progress update and leaves the batch empty for the next;
    /// None when no whole transaction is gathered.
    pub(super) fn commit(&mut self, slot: &str) -> Option<Step> {
        let end = self.end?;
        self.begin();
        self.sql.push_str(&format!(
            "UPDATE pgfleet_replica.progress SET lsn = '{}', updated_at = now() WHERE slot = {};COMMIT;",
            end,
            crate::protocol::quote::quote_literal(slot)
        ));
        let step = Step::Commit(Commit {
            sql: std::mem::take(&mut self.sql),
            end,
            changes: self.changes,
            transactions: self.transactions,
            last_commit_time: self.last_commit_time,
        });
        let in_tx = self.in_tx;
        *self = Batch {
            in_tx,
            ..Batch::default()
        };
        Some(step)
    }
}
