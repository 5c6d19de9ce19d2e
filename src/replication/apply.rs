//! The forwarding task for one (database, replica): initial copy when the replica has no progress yet,
//! then the pgoutput stream applied in commit order. Consecutive small transactions share one replica
//! transaction; a large one is sent in chunks inside its replica transaction. The last applied commit
//! position is written to `pgfleet_replica.progress` in the same replica transaction as the changes, and
//! the slot is confirmed only up to what the replica has committed, so a crash of pgfleet or of the replica
//! at any moment leads to neither loss nor duplicates: on restart, transactions at or below the stored
//! position are skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Replication;
use super::copy::{CopyJob, initial_copy};
use super::pgoutput::{self, Lsn, PgOutput, Relation, ReplicationMessage};
use super::setup::{DDL_PREFIX, ForwardError, client, slot_name, sql_err};
use super::stream::ReplicationStream;
use super::{Progress, State, sql};
use crate::backend::connect::NodeTarget;
use crate::router::classify::classify;
use crate::router::split::split_statements;

/// A chunk of SQL larger than this is sent before its transaction ends (large transactions).
const CHUNK_BYTES: usize = 1 << 20;
/// How often sequence values are carried over.
const SEQUENCE_SYNC: Duration = Duration::from_secs(1);

const PROGRESS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgfleet_replica;
    CREATE TABLE IF NOT EXISTS pgfleet_replica.progress (
        slot text PRIMARY KEY, lsn pg_lsn NOT NULL, state text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())";

/// One forwarding task.
pub(crate) struct Applier {
    ctx: Arc<Replication>,
    node: usize,
    database: String,
    slot: String,
    progress: Arc<Progress>,
}

impl Applier {
    /// The task for `node` (a replica) and the `db`-th forwarded database.
    pub(crate) fn new(ctx: Arc<Replication>, node: usize, db: usize, progress: Arc<Progress>) -> Self {
        let database = ctx.forward.databases[db].clone();
        let slot = slot_name(
            &ctx.config().replication.name,
            &database,
            &ctx.fleet.nodes()[node].target.name,
        );
        Self {
            ctx,
            node,
            database,
            slot,
            progress,
        }
    }

    /// Runs until the process ends, restarting after failures with a growing pause.
    pub(crate) async fn run_forever(self) {
        let name = self.ctx.fleet.nodes()[self.node].target.name.clone();
        let mut pause = Duration::from_millis(500);
        loop {
            let started = std::time::Instant::now();
            match self.run_once().await {
                Ok(()) => pause = Duration::from_millis(500),
                Err(e) => {
                    // A run that streamed for a while earned a quick retry; repeated quick failures back off.
                    if started.elapsed() > Duration::from_secs(30) {
                        pause = Duration::from_millis(500);
                    }
                    self.progress.set_state(State::Stopped);
                    tracing::warn!(replica = %name, database = %self.database, error = %e, "forwarding stopped; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn credentials(&self) -> (String, String) {
        let config = self.ctx.config();
        let r = &config.replication;
        (
            r.user.clone().unwrap_or_default(),
            r.password.clone().unwrap_or_default(),
        )
    }

    async fn run_once(&self) -> Result<(), ForwardError> {
        let (user, password) = self.credentials();
        let timeout = self.ctx.config().pool.connect_timeout;
        let fleet = &self.ctx.fleet;
        let primary = fleet.nodes()[fleet.likely_primary().index()].target.clone();
        let replica_node = fleet.nodes()[self.node].target.clone();
        let replica = client(&replica_node, &user, &password, &self.database, timeout).await?;
        replica
            .batch_execute(PROGRESS_DDL)
            .await
            .map_err(sql_err("creating the progress table on the replica"))?;
        replica
            .batch_execute("SET session_replication_role = replica")
            .await
            .map_err(sql_err("setting session_replication_role"))?;
        let stored: Option<(String, String)> = replica
            .query_opt(
                "SELECT lsn::text, state FROM pgfleet_replica.progress WHERE slot = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql_err("reading progress"))?
            .map(|r| (r.get(0), r.get(1)));
        let mut stream =
            ReplicationStream::connect(&primary, &user, &password, &self.database, timeout).await?;
        let start = match stored {
            Some((lsn, state)) if state == "streaming" => lsn
                .parse::<Lsn>()
                .map_err(|_| ForwardError::Apply(format!("bad progress {lsn}")))?,
            _ => self.copy(&mut stream, &replica, &primary, &replica_node).await?,
        };
        self.progress.set_applied(start);
        self.progress.set_state(State::Streaming);
        if let Err(e) = stream
            .start(&self.slot, start, &self.ctx.config().replication.name)
            .await
        {
            if matches!(&e, super::stream::StreamError::Refused { code, .. } if code == "42704") {
                // The slot is gone (dropped, or invalidated by max_slot_wal_keep_size): only a fresh copy can
                // make the replica whole again, and the next attempt does one.
                tracing::warn!(slot = %self.slot, "replication slot missing; the replica will be copied again");
                replica
                    .execute(
                        "UPDATE pgfleet_replica.progress SET state = 'lost' WHERE slot = $1",
                        &[&self.slot],
                    )
                    .await
                    .map_err(sql_err("marking the replica for a new copy"))?;
            }
            return Err(e.into());
        }
        tracing::info!(replica = %self.ctx.fleet.nodes()[self.node].target.name, database = %self.database,
            from = %start, "forwarding changes");
        self.follow(&mut stream, &replica, start).await
    }

    /// Drops any earlier slot of ours, creates it afresh and copies from its snapshot.
    async fn copy(
        &self,
        stream: &mut ReplicationStream,
        replica: &tokio_postgres::Client,
        primary: &NodeTarget,
        replica_node: &NodeTarget,
    ) -> Result<Lsn, ForwardError> {
        self.progress.set_state(State::Copying);
        let (user, password) = self.credentials();
        let timeout = self.ctx.config().pool.connect_timeout;
        let control = client(primary, &user, &password, &self.database, timeout).await?;
        // A slot left by a copy that crashed cannot give its snapshot again: start over. Its walsender may
        // take a moment to notice that its client is gone.
        for attempt in 0..50 {
            let r = control
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await;
            match r {
                Ok(_) => break,
                Err(e) if attempt < 49 => {
                    tracing::debug!(error = %e, "slot still active; waiting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(sql_err("dropping an old replication slot")(e)),
            }
        }
        replica
            .execute(
                "INSERT INTO pgfleet_replica.progress (slot, lsn, state) VALUES ($1, '0/0', 'copying')
                 ON CONFLICT (slot) DO UPDATE SET state = 'copying', updated_at = now()",
                &[&self.slot],
            )
            .await
            .map_err(sql_err("marking the replica as copying"))?;
        let (consistent, snapshot) = stream.create_slot(&self.slot).await?;
        let job = CopyJob {
            primary,
            replica: replica_node,
            database: &self.database,
            user: &user,
            password: &password,
            snapshot: &snapshot,
            publication: &self.ctx.config().replication.name,
            parallelism: self.ctx.config().replication.copy_parallelism,
            timeout,
        };
        let rows = initial_copy(&job).await?;
        // The restore recreated everything but our progress table, which lives in its own schema.
        replica
            .execute(
                "UPDATE pgfleet_replica.progress SET lsn = $2::text::pg_lsn, state = 'streaming', updated_at = now()
                 WHERE slot = $1",
                &[&self.slot, &consistent.to_string()],
            )
            .await
            .map_err(sql_err("recording the copy's consistent point"))?;
        sync_sequences(&control, replica, &mut HashMap::new()).await?;
        self.progress.rows.fetch_add(rows, Ordering::Relaxed);
        tracing::info!(replica = %replica_node.address, database = %self.database, rows, at = %consistent,
            "initial copy done");
        Ok(consistent)
    }

    async fn follow(
        &self,
        stream: &mut ReplicationStream,
        replica: &tokio_postgres::Client,
        mut applied: Lsn,
    ) -> Result<(), ForwardError> {
        let (user, password) = self.credentials();
        let fleet = &self.ctx.fleet;
        let primary = fleet.nodes()[fleet.likely_primary().index()].target.clone();
        let control = client(
            &primary,
            &user,
            &password,
            &self.database,
            self.ctx.config().pool.connect_timeout,
        )
        .await?;
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut batch = Batch::default();
        let mut sequences = HashMap::new();
        let mut ticker = tokio::time::interval(SEQUENCE_SYNC);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch_size = self.ctx.config().replication.batch_size;
        loop {
            let msg = tokio::select! {
                m = stream.next() => m?,
                _ = ticker.tick() => {
                    if !batch.open {
                        sync_sequences(&control, replica, &mut sequences).await?;
                    }
                    continue;
                }
            };
            match msg {
                ReplicationMessage::PrimaryKeepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    if !batch.open {
                        // Nothing received is left unapplied: the replica is consistent with the primary here.
                        self.progress.visible.fetch_max(wal_end.0, Ordering::Relaxed);
                    }
                    if reply_requested {
                        stream.send_status(applied, false).await?;
                    }
                }
                ReplicationMessage::XLogData { data, .. } => {
                    let change = pgoutput::decode(&data).map_err(|e| ForwardError::Apply(e.to_string()))?;
                    tracing::trace!(kind = change.kind(), "change");
                    batch.add(change, &mut relations, applied)?;
                    if batch.sql.len() > CHUNK_BYTES && batch.in_tx {
                        replica
                            .batch_execute(&batch.sql)
                            .await
                            .map_err(sql_err("applying changes"))?;
                        batch.sql.clear();
                    }
                }
            }
            // Commit what whole transactions have gathered once the batch is big enough or nothing more is
            // waiting: small transactions share a replica transaction, and none waits for the next one.
            let due = batch.end.is_some()
                && !batch.in_tx
                && (batch.changes >= batch_size || !stream.has_buffered());
            if due && let Some(end) = batch.commit(&self.slot) {
                replica
                    .batch_execute(&batch.sql)
                    .await
                    .map_err(sql_err("committing changes"))?;
                applied = end;
                self.progress.set_applied(end);
                self.progress
                    .rows
                    .fetch_add(batch.changes as u64, Ordering::Relaxed);
                self.progress
                    .transactions
                    .fetch_add(batch.transactions, Ordering::Relaxed);
                self.progress
                    .last_commit_time
                    .store(batch.last_commit_time, Ordering::Relaxed);
                stream.send_status(applied, false).await?;
                batch.reset();
            }
        }
    }
}

/// Row changes of one or more primary transactions, becoming one replica transaction.
#[derive(Default)]
struct Batch {
    sql: String,
    open: bool,
    in_tx: bool,
    skip: bool,
    changes: usize,
    transactions: u64,
    end: Option<Lsn>,
    last_commit_time: i64,
    /// Per DDL string, how many of its event-trigger messages this primary transaction has carried.
    ddl_seen: HashMap<String, usize>,
}

impl Batch {
    fn push(&mut self, stmt: &str) {
        if !self.open {
            self.sql.push_str("BEGIN;");
            self.open = true;
        }
        self.sql.push_str(stmt);
        self.sql.push_str(";\n");
    }

    /// Adds one decoded message.
    fn add(
        &mut self,
        m: PgOutput,
        relations: &mut HashMap<u32, Relation>,
        applied: Lsn,
    ) -> Result<(), ForwardError> {
        let err = |e: sql::SqlError| ForwardError::Apply(e.to_string());
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
                self.in_tx = false;
                if !self.skip {
                    self.end = Some(end_lsn);
                    self.transactions += 1;
                    self.last_commit_time = commit_time;
                }
            }
            PgOutput::Relation(r) => {
                relations.insert(r.id, r);
            }
            PgOutput::Origin { .. } | PgOutput::Type { .. } => {}
            _ if self.skip => {}
            PgOutput::Insert { relation, new } => {
                let r = rel(relations, relation)?;
                self.push(&sql::insert(&r, &new).map_err(err)?);
                self.changes += 1;
            }
            PgOutput::Update {
                relation,
                old,
                key_only,
                new,
            } => {
                let r = rel(relations, relation)?;
                self.push(&sql::update(&r, old.as_ref(), key_only, &new).map_err(err)?);
                self.changes += 1;
            }
            PgOutput::Delete {
                relation,
                old,
                key_only,
            } => {
                let r = rel(relations, relation)?;
                self.push(&sql::delete(&r, &old, key_only).map_err(err)?);
                self.changes += 1;
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
                    self.push(&stmt);
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
                    let text = String::from_utf8_lossy(&content).into_owned();
                    let mut parts = text.splitn(3, '\n');
                    let (Some(role), Some(path), Some(query)) = (parts.next(), parts.next(), parts.next())
                    else {
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
                        ));
                        for stmt in run {
                            self.push(&stmt);
                            self.changes += 1;
                        }
                        self.push("RESET ROLE; RESET search_path");
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes the replica transaction with the progress update; None when nothing is to be committed.
    fn commit(&mut self, slot: &str) -> Option<Lsn> {
        let end = self.end?;
        if !self.open {
            self.sql.push_str("BEGIN;");
            self.open = true;
        }
        self.sql.push_str(&format!(
            "UPDATE pgfleet_replica.progress SET lsn = '{}', updated_at = now() WHERE slot = {};COMMIT;",
            end,
            crate::protocol::quote::quote_literal(slot)
        ));
        Some(end)
    }

    fn reset(&mut self) {
        let in_tx = self.in_tx;
        *self = Batch {
            in_tx,
            ..Batch::default()
        };
    }
}

/// The commands of a client's query string that fire the DDL event trigger, in order, each with what the
/// replica must run for it (nothing for temporary objects and pgfleet's own machinery). Rows that a command
/// writes into a new table (CREATE TABLE AS, SELECT INTO) arrive through the change stream like any other
/// rows, so the replica creates such tables empty; materialized views are not in the stream, so they are
/// created and refreshed on the replica from its own (identical) data.
fn ddl_commands(text: &str) -> Vec<Option<Vec<String>>> {
    let rules = crate::router::functions::FunctionRules::default();
    let mut out = Vec::new();
    for stmt in split_statements(text) {
        let upper = stmt.to_ascii_uppercase();
        let words = crate::router::split::first_keywords(stmt, 6);
        let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        let d = classify(stmt, &rules);
        if !fires_event_trigger(&words, &upper, &d) {
            continue;
        }
        let temp = |w: &str| matches!(w, "TEMP" | "TEMPORARY");
        if upper.contains("PUBLICATION") || upper.contains("SUBSCRIPTION") {
            out.push(None);
        } else if word(0) == "CREATE"
            && (temp(word(1)) || matches!(word(1), "LOCAL" | "GLOBAL") && temp(word(2)))
        {
            // Temporary objects live only in the session that made them.
            out.push(None);
        } else if d.rule == crate::router::classify::Rule::SelectInto {
            out.push(
                select_into_target(stmt).map(|table| vec![stmt.to_owned(), format!("TRUNCATE {table}")]),
            );
        } else {
            // A replica transaction cannot build an index concurrently; the plain form gives the same index.
            let mut stmt = stmt.replace(" CONCURRENTLY", "").replace(" concurrently", "");
            if word(0) == "CREATE" && is_create_table_as(&stmt) {
                let trimmed = stmt.trim_end().trim_end_matches(';').trim_end().to_owned();
                let lower = trimmed.to_ascii_lowercase();
                stmt = if lower.ends_with("with no data") {
                    trimmed
                } else if lower.ends_with("with data") {
                    format!("{} WITH NO DATA", &trimmed[..trimmed.len() - "with data".len()])
                } else {
                    format!("{trimmed} WITH NO DATA")
                };
            }
            out.push(Some(vec![stmt]));
        }
    }
    out
}

/// Whether PostgreSQL fires `ddl_command_start` for a statement: CREATE/ALTER/DROP of most objects (not
/// databases, roles, tablespaces or event triggers), COMMENT, SECURITY LABEL, GRANT/REVOKE on objects,
/// IMPORT FOREIGN SCHEMA, REFRESH MATERIALIZED VIEW, SELECT INTO and CREATE TABLE AS.
fn fires_event_trigger(words: &[String], upper: &str, d: &crate::router::classify::Decision) -> bool {
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "CREATE" | "ALTER" | "DROP" => {
            let object = words
                .iter()
                .skip(1)
                .map(String::as_str)
                .find(|w| {
                    !matches!(
                        *w,
                        "OR" | "REPLACE"
                            | "UNIQUE"
                            | "TEMP"
                            | "TEMPORARY"
                            | "UNLOGGED"
                            | "LOCAL"
                            | "GLOBAL"
                            | "MATERIALIZED"
                            | "RECURSIVE"
                            | "TRUSTED"
                            | "PROCEDURAL"
                            | "DEFAULT"
                    )
                })
                .unwrap_or("");
            !matches!(
                object,
                "DATABASE" | "ROLE" | "USER" | "GROUP" | "TABLESPACE" | "EVENT" | "SYSTEM"
            )
        }
        "COMMENT" | "SECURITY" | "IMPORT" | "REFRESH" => true,
        "GRANT" | "REVOKE" => upper.contains(" ON "),
        _ => d.rule == crate::router::classify::Rule::SelectInto,
    }
}

/// CREATE [UNLOGGED] TABLE ... AS (not a materialized view, whose rows are not in the stream): an `AS` at
/// parenthesis depth 0 after the table name (column defaults and generated columns sit inside parentheses).
fn is_create_table_as(stmt: &str) -> bool {
    use crate::router::split::{Lexer, TokKind};
    let toks: Vec<_> = Lexer::new(stmt).filter(|t| t.kind != TokKind::Comment).collect();
    let Some(table_at) = toks
        .iter()
        .position(|t| t.kind == TokKind::Word && t.text(stmt).eq_ignore_ascii_case("TABLE"))
    else {
        return false;
    };
    let mut depth = 0i32;
    for t in &toks[table_at + 1..] {
        match t.text(stmt) {
            "(" => depth += 1,
            ")" => depth -= 1,
            w if depth == 0 && t.kind == TokKind::Word && w.eq_ignore_ascii_case("AS") => return true,
            _ => {}
        }
    }
    false
}

/// The table a non-temporary `SELECT ... INTO [UNLOGGED] [TABLE] name` creates.
fn select_into_target(stmt: &str) -> Option<String> {
    use crate::router::split::{Lexer, TokKind};
    let toks: Vec<_> = Lexer::new(stmt).filter(|t| t.kind != TokKind::Comment).collect();
    let at = toks
        .iter()
        .position(|t| t.kind == TokKind::Word && t.text(stmt).eq_ignore_ascii_case("INTO"))?;
    let mut i = at + 1;
    while let Some(t) = toks.get(i) {
        let w = t.text(stmt).to_ascii_uppercase();
        match w.as_str() {
            "TEMP" | "TEMPORARY" => return None,
            "UNLOGGED" | "TABLE" => i += 1,
            _ => break,
        }
    }
    // name, or schema.name: identifiers separated by single dots.
    let ident = |t: Option<&crate::router::split::Tok>| {
        t.filter(|t| matches!(t.kind, TokKind::Word | TokKind::QuotedIdent))
            .map(|t| t.text(stmt).to_owned())
    };
    let mut name = ident(toks.get(i))?;
    while toks.get(i + 1).is_some_and(|t| t.text(stmt) == ".") {
        name.push('.');
        name.push_str(&ident(toks.get(i + 2))?);
        i += 2;
    }
    Some(name)
}

/// Carries sequence values from the primary to the replica (sequences are not in the change stream),
/// comparing with what the replica has, so that a reset there (TRUNCATE ... RESTART IDENTITY) is corrected.
async fn sync_sequences(
    primary: &tokio_postgres::Client,
    replica: &tokio_postgres::Client,
    _last: &mut HashMap<String, i64>,
) -> Result<(), ForwardError> {
    const SQL: &str = "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences";
    let wanted = primary
        .query(SQL, &[])
        .await
        .map_err(sql_err("reading sequences on the primary"))?;
    let have: HashMap<String, Option<i64>> = match replica.query(SQL, &[]).await {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "sequence sync deferred");
            return Ok(());
        }
    };
    let mut sql = String::new();
    for r in wanted {
        let (name, value): (String, Option<i64>) = (r.get(0), r.get(1));
        let Some(value) = value else { continue };
        // A sequence created a moment ago may not exist on the replica yet; it is caught next time.
        if let Some(current) = have.get(&name)
            && *current != Some(value)
        {
            sql.push_str(&format!(
                "SELECT setval({}, {value}, true);",
                crate::protocol::quote::quote_literal(&name)
            ));
        }
    }
    if !sql.is_empty()
        && let Err(e) = replica.batch_execute(&sql).await
    {
        tracing::debug!(error = %e, "sequence sync deferred");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
