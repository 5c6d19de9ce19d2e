//! The forwarding task for one (database, replica): initial copy when the replica has no progress yet,
//! then the database's shared change stream (`feed`) applied in commit order. Consecutive small
//! transactions share one replica transaction (`batch`); a large one is sent in chunks inside its replica
//! transaction, and its runs of bulk changes are applied set-wise (`bulk`). One the primary streams while it
//! runs comes in blocks, applied as they come in a replica transaction of its own that commits at its place
//! in commit order (`streamed`). The stream side decodes and
//! builds while the replica side (`sink`) runs what was built before, so neither waits for the other. The
//! last applied commit position is written to `pgfleet_replica.progress` in the same replica transaction as
//! the changes, and the slot is confirmed only up to what every replica has committed, so a crash of pgfleet
//! or of a replica at any moment leads to neither loss nor duplicates: on restart, transactions at or below
//! the stored position are skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Replication;
use super::copy::{CopyJob, initial_copy};
use super::copy_round::{Copied, Seat, Ticket};
use tokio::sync::mpsc;

use self::batch::{Batch, Commit, Step};
use self::streamed::Open;
use super::feed::{Event, Feed, Subscription};
use super::pgoutput::{self, Lsn, PgOutput, Relation};
use super::setup::{ForwardError, client, slot_name, sql_err};
use super::stream::ReplicationStream;
use super::{Progress, State};
use crate::backend::connect::NodeTarget;

mod batch;
pub(crate) mod bulk;
mod ddl;
mod sink;
mod streamed;
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
    /// The database's shared stream, and this replica's number there.
    feed: Arc<Feed>,
    member: usize,
    /// The feed's slot: the key of this replica's progress row.
    slot: String,
    /// The temporary slot whose snapshot an initial copy reads (named as the per-replica slots of earlier
    /// versions were, which a copy drops first).
    copy_slot: String,
    progress: Arc<Progress>,
}

impl Applier {
    /// The task for `node` (a replica, `member` of `feed`) and the `db`-th forwarded database.
    pub(crate) fn new(
        ctx: Arc<Replication>,
        node: usize,
        db: usize,
        feed: Arc<Feed>,
        member: usize,
        progress: Arc<Progress>,
    ) -> Self {
        let database = ctx.forward.databases[db].clone();
        let copy_slot = slot_name(
            &ctx.config().replication.name,
            &database,
            &ctx.fleet.nodes()[node].target.name,
        );
        let slot = feed.slot().to_owned();
        // Slot names end at 63 bytes: with a long database name both names may be cut to the same one, and a
        // copy must never drop the database's slot.
        let mut copy_slot = copy_slot;
        if copy_slot == slot {
            copy_slot.truncate(58);
            copy_slot.push_str(&format!("_c{member:03}"));
        }
        Self {
            ctx,
            node,
            database,
            feed,
            member,
            slot,
            copy_slot,
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
                // The shared stream starts over: join it again at once, from the stored position.
                Err(ForwardError::Rewound) => {
                    tracing::debug!(replica = %name, database = %self.database, "change stream started over");
                }
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
        let primary = fleet.nodes()[fleet.likely_primary(crate::cluster::ShardId::default()).index()]
            .target
            .clone();
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
        let start = match stored {
            Some((lsn, state)) if state == "streaming" => {
                self.feed.copies().needs_none(self.member);
                lsn.parse::<Lsn>()
                    .map_err(|_| ForwardError::Apply(format!("bad progress {lsn}")))?
            }
            _ => self.copy(&replica, &primary, &replica_node).await?,
        };
        self.progress.set_applied(start);
        self.progress.set_state(State::Streaming);
        let feed = self.feed.join(self.member, start)?;
        tracing::info!(replica = %replica_node.name, database = %self.database, from = %start,
            "forwarding changes");
        self.follow(feed, Arc::new(replica), start).await
    }

    /// Copies the replica, in a round shared with the database's other replicas that need a copy now
    /// (`copy_round`), from the snapshot of a temporary slot made after the feed's slot, so that the feed
    /// still holds every transaction committed after the copy's snapshot.
    async fn copy(
        &self,
        replica: &tokio_postgres::Client,
        primary: &NodeTarget,
        replica_node: &NodeTarget,
    ) -> Result<Lsn, ForwardError> {
        self.progress.set_state(State::Copying);
        // Until the copy is done the slot must not move past where it is now.
        self.feed.report(self.member, None);
        let (ticket, outcome) = self.feed.copies().ask(self.member, replica_node.clone());
        let (user, password) = self.credentials();
        let timeout = self.ctx.config().pool.connect_timeout;
        let control = client(primary, &user, &password, &self.database, timeout).await;
        let prepared = match &control {
            Ok(control) => self.prepare_copy(control, replica).await,
            Err(e) => Err(e.shared()),
        };
        // A leader whose own preparation failed still copies the others (and itself: harmless, its progress
        // does not say streaming); it tries again afterwards.
        if let Ticket::Lead = ticket {
            let seats = self.feed.copies().gather().await;
            self.lead_copy(seats, primary, control.as_ref()).await;
        }
        // The round's answer comes first, whatever went wrong here: this task must not try again (and start
        // another round on this replica) while a round may still be writing to it.
        let answer = outcome.await;
        let control = control?;
        prepared?;
        let copied =
            answer.map_err(|_| ForwardError::Copy("the copy's round ended without an answer".into()))??;
        // The restore recreated everything but our progress table, which lives in its own schema.
        replica
            .execute(
                "UPDATE pgfleet_replica.progress SET lsn = $2::text::pg_lsn, state = 'streaming', updated_at = now()
                 WHERE slot = $1",
                &[&self.slot, &copied.consistent.to_string()],
            )
            .await
            .map_err(sql_err("recording the copy's consistent point"))?;
        sync_sequences(&control, replica, &mut HashMap::new()).await?;
        self.progress.rows.fetch_add(copied.rows, Ordering::Relaxed);
        tracing::info!(replica = %replica_node.address, database = %self.database, rows = copied.rows,
            at = %copied.consistent, "initial copy done");
        Ok(copied.consistent)
    }

    /// This replica's part before any copy: its copy slot left by a copy that crashed (or its own slot from a
    /// version that kept one per replica) dropped, and its progress marked as copying.
    async fn prepare_copy(
        &self,
        control: &tokio_postgres::Client,
        replica: &tokio_postgres::Client,
    ) -> Result<(), ForwardError> {
        // Its walsender may take a moment to notice that its client is gone.
        for attempt in 0..50 {
            let r = control
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.copy_slot],
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
        Ok(())
    }

    /// Copies every replica of the round (this one's first) from one snapshot, taken with this replica's
    /// temporary copy slot, and tells each how it went. `control` is this task's connection to the primary
    /// (or why there is none, which fails the round).
    async fn lead_copy(
        &self,
        seats: Vec<Seat>,
        primary: &NodeTarget,
        control: Result<&tokio_postgres::Client, &ForwardError>,
    ) {
        let replicas: Vec<NodeTarget> = seats.iter().map(|s| s.replica.clone()).collect();
        let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
        tracing::info!(database = %self.database, replicas = ?names, "initial copy");
        let round = match control {
            Ok(control) => self.copy_round(&replicas, primary, control).await,
            Err(e) => Err(e.shared()),
        };
        let results = match round {
            Ok((consistent, results)) => results
                .into_iter()
                .map(|r| r.map(|rows| Copied { consistent, rows }))
                .collect(),
            Err(e) => replicas.iter().map(|_| Err(e.shared())).collect::<Vec<_>>(),
        };
        for (seat, result) in seats.into_iter().zip(results) {
            let _ = seat.outcome.send(result);
        }
    }

    async fn copy_round(
        &self,
        replicas: &[NodeTarget],
        primary: &NodeTarget,
        control: &tokio_postgres::Client,
    ) -> Result<(Lsn, Vec<Result<u64, ForwardError>>), ForwardError> {
        let (user, password) = self.credentials();
        let timeout = self.ctx.config().pool.connect_timeout;
        self.feed.ensure_slot(control).await?;
        let mut stream =
            ReplicationStream::connect(primary, &user, &password, &self.database, timeout).await?;
        let (consistent, snapshot) = stream.create_copy_slot(&self.copy_slot).await?;
        let job = CopyJob {
            primary,
            replicas,
            database: &self.database,
            user: &user,
            password: &password,
            snapshot: &snapshot,
            publication: &self.ctx.config().replication.name,
            parallelism: self.ctx.config().replication.copy_parallelism,
            timeout,
        };
        let results = initial_copy(&job).await;
        // Ends the copy slot's connection, and with it the slot.
        drop(stream);
        Ok((consistent, results))
    }

    async fn follow(
        &self,
        mut stream: Subscription,
        replica: Arc<tokio_postgres::Client>,
        applied: Lsn,
    ) -> Result<(), ForwardError> {
        let (step_tx, step_rx) = mpsc::channel(sink::PIPELINE_STEPS);
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let applier = tokio::spawn(sink::run(replica.clone(), step_rx, ack_tx));
        let result = self
            .follow_stream(&mut stream, &replica, applied, &step_tx, &mut ack_rx)
            .await;
        // Whatever is queued runs to its end (a queued commit commits, together with its progress) before
        // this attempt returns, so that the next one finds the replica as this one leaves it.
        drop(step_tx);
        if let Err(e) = applier.await {
            tracing::warn!(error = %e, "the apply task ended abnormally");
        }
        result
    }

    async fn follow_stream(
        &self,
        stream: &mut Subscription,
        replica: &tokio_postgres::Client,
        mut applied: Lsn,
        steps: &mpsc::Sender<Step>,
        acks: &mut mpsc::UnboundedReceiver<Result<Commit, ForwardError>>,
    ) -> Result<(), ForwardError> {
        let (user, password) = self.credentials();
        let fleet = &self.ctx.fleet;
        let primary = fleet.nodes()[fleet.likely_primary(crate::cluster::ShardId::default()).index()]
            .target
            .clone();
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
        // Streamed transactions open on the replica, and the one whose block is being received.
        let mut streams: HashMap<u32, Open> = HashMap::new();
        let mut block: Option<u32> = None;
        let mut sequences = HashMap::new();
        let mut ticker = tokio::time::interval(SEQUENCE_SYNC);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch_size = self.ctx.config().replication.batch_size;
        // Replica transactions sent but not yet committed.
        let mut in_flight = 0usize;
        let closed = || ForwardError::Apply("the replica side of the forwarding task ended".into());
        loop {
            let msg = tokio::select! {
                m = stream.next() => Some(m?),
                ack = acks.recv() => {
                    let done = ack.ok_or_else(closed)??;
                    in_flight = in_flight.saturating_sub(1);
                    applied = self.committed(&done);
                    continue;
                }
                // Also a second look at whether a finished batch is due, should the feed have stopped
                // holding more messages without sending any.
                _ = ticker.tick() => {
                    if !batch.busy() && in_flight == 0 {
                        sync_sequences(&control, replica, &mut sequences).await?;
                    }
                    None
                }
            };
            match msg {
                None => {}
                // Nothing received is left unapplied: the replica is consistent with the primary here.
                Some(Event::Keepalive { wal_end }) if !batch.busy() && in_flight == 0 => {
                    self.progress.visible.fetch_max(wal_end.0, Ordering::Relaxed);
                }
                Some(Event::Keepalive { .. }) => {}
                Some(Event::Data(messages)) => {
                    for (i, data) in messages.iter().enumerate() {
                        let bad = |e: pgoutput::DecodeError| ForwardError::Apply(e.to_string());
                        if let Some(xid) = block {
                            let (sub, change) = pgoutput::decode_streamed(data).map_err(bad)?;
                            tracing::trace!(kind = change.kind(), xid, "streamed change");
                            let open = streams.get_mut(&xid).ok_or_else(|| unknown_stream(xid))?;
                            if change == PgOutput::StreamStop {
                                open.block_ends().await?;
                                block = None;
                            } else {
                                open.add(sub, change).await?;
                            }
                            continue;
                        }
                        let change = pgoutput::decode(data).map_err(bad)?;
                        tracing::trace!(kind = change.kind(), "change");
                        match change {
                            PgOutput::StreamStart { xid, first } => {
                                // Whole transactions gathered so far commit first: the block may change rows
                                // they wrote, and its replica transaction would wait for theirs.
                                in_flight +=
                                    commit_if_due(&mut batch, &self.slot, batch_size, false, steps).await?;
                                if first && !streams.contains_key(&xid) {
                                    let conn = self.stream_connection().await?;
                                    streams.insert(xid, Open::start(xid, conn, &relations));
                                } else if first || !streams.contains_key(&xid) {
                                    return Err(ForwardError::Apply(format!(
                                        "streamed transaction {xid}: a first block that is not its first, or a later \
                                         block without its first"
                                    )));
                                }
                                block = Some(xid);
                                continue;
                            }
                            PgOutput::StreamCommit {
                                xid,
                                commit_lsn,
                                end_lsn,
                                commit_time,
                            } => {
                                let mut open = streams.remove(&xid).ok_or_else(|| unknown_stream(xid))?;
                                relations.extend(open.take_described().into_iter().map(|r| (r.id, r)));
                                // Commit order: everything committed before it is committed on the replica first.
                                in_flight +=
                                    commit_if_due(&mut batch, &self.slot, batch_size, false, steps).await?;
                                while in_flight > 0 {
                                    let done = acks.recv().await.ok_or_else(closed)??;
                                    in_flight -= 1;
                                    applied = self.committed(&done);
                                }
                                if commit_lsn < applied {
                                    // Applied before the stream started over.
                                    open.rollback().await?;
                                } else {
                                    let done = open.commit(&self.slot, end_lsn, commit_time).await?;
                                    applied = self.committed(&done);
                                }
                                continue;
                            }
                            PgOutput::StreamAbort { xid, subxid } => {
                                if xid == subxid {
                                    if let Some(open) = streams.remove(&xid) {
                                        open.rollback().await?;
                                    }
                                } else if let Some(open) = streams.get_mut(&xid) {
                                    open.abort_sub(subxid).await?;
                                }
                                continue;
                            }
                            change => batch.add(change, &mut relations, applied)?,
                        }
                        for step in batch.take_ready() {
                            steps.send(step).await.map_err(|_| closed())?;
                        }
                        let more = i + 1 < messages.len() || stream.has_buffered();
                        in_flight += commit_if_due(&mut batch, &self.slot, batch_size, more, steps).await?;
                    }
                    continue;
                }
                Some(Event::Recopy) => {
                    // The slot was made afresh (dropped, invalidated by max_slot_wal_keep_size, or pgfleet
                    // upgraded from a slot per replica): only a fresh copy can make the replica whole again,
                    // and the next attempt does one.
                    tracing::warn!(slot = %self.slot, at = %applied,
                        "the replication slot no longer holds this replica's changes; it will be copied again");
                    replica
                        .execute(
                            "UPDATE pgfleet_replica.progress SET state = 'lost' WHERE slot = $1",
                            &[&self.slot],
                        )
                        .await
                        .map_err(sql_err("marking the replica for a new copy"))?;
                    return Err(ForwardError::Apply("the replica must be copied again".into()));
                }
            }
            in_flight +=
                commit_if_due(&mut batch, &self.slot, batch_size, stream.has_buffered(), steps).await?;
        }
    }
}

/// A block or the end of a streamed transaction that this replica never saw begin.
fn unknown_stream(xid: u32) -> ForwardError {
    ForwardError::Apply(format!("streamed transaction {xid} was not begun in this stream"))
}

impl Applier {
    /// Records a replica transaction committed on the replica; returns the new applied position.
    fn committed(&self, done: &Commit) -> Lsn {
        self.progress.set_applied(done.end);
        self.progress
            .rows
            .fetch_add(done.changes as u64, Ordering::Relaxed);
        self.progress
            .transactions
            .fetch_add(done.transactions, Ordering::Relaxed);
        self.progress
            .last_commit_time
            .store(done.last_commit_time, Ordering::Relaxed);
        self.feed.report(self.member, Some(done.end));
        done.end
    }

    /// A connection to the replica for one streamed transaction, set up as the forwarding task's own.
    async fn stream_connection(&self) -> Result<tokio_postgres::Client, ForwardError> {
        let (user, password) = self.credentials();
        let target = self.ctx.fleet.nodes()[self.node].target.clone();
        let timeout = self.ctx.config().pool.connect_timeout;
        let conn = client(&target, &user, &password, &self.database, timeout).await?;
        conn.batch_execute("SET session_replication_role = replica")
            .await
            .map_err(sql_err("setting session_replication_role"))?;
        Ok(conn)
    }
}

/// Commits what whole transactions have gathered once the batch is big enough or nothing `more` is waiting:
/// small transactions share a replica transaction, and none waits for the next one. Returns the number of
/// replica transactions sent (0 or 1).
async fn commit_if_due(
    batch: &mut Batch,
    slot: &str,
    batch_size: usize,
    more: bool,
    steps: &mpsc::Sender<Step>,
) -> Result<usize, ForwardError> {
    let due = batch.end.is_some() && !batch.in_tx && (batch.changes >= batch_size || !more);
    if !due {
        return Ok(0);
    }
    let Some(step) = batch.commit(slot) else {
        return Ok(0);
    };
    steps
        .send(step)
        .await
        .map_err(|_| ForwardError::Apply("the replica side of the forwarding task ended".into()))?;
    Ok(1)
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
