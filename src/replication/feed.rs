//! One change stream per forwarded database, shared by all of its replicas.
//!
//! Decoding is the largest cost forward mode puts on the primary: a WAL sender reads every WAL record of
//! the database, reorders the changes by transaction (spilling large ones to disk) and turns each row into
//! pgoutput. With a slot per replica that work was done once per replica. The feed reads one slot per
//! database and hands every pgoutput message to each replica's applier ([`Subscription`]); the slot is
//! confirmed only up to what every replica of the database has durably applied, so a replica that is down
//! or behind still finds the WAL it needs when it returns, as it did with a slot of its own.
//!
//! A replica joins at a transaction boundary of the stream, after the descriptions of the relations (and
//! types) sent so far, which pgoutput sends once per stream. When the stream has already passed a commit the
//! joiner has not applied (it was copied from a snapshot a moment ago, or its applier restarted), the stream
//! starts over from the slot's confirmed position: the other subscriptions end, their appliers read their
//! progress again and join the new stream, and each skips the transactions it has. A replica whose position
//! is behind the slot's confirmed position (the slot was made afresh: dropped by hand, invalidated, or
//! pgfleet upgraded from a slot per replica) cannot be made whole from this slot and is told to copy again.
//! With large transactions streamed while they run (pgoutput protocol version 2), a replica joins only
//! between blocks, and one that would join while a streamed transaction is open (it missed its first
//! blocks) makes the stream start over as well. Descriptions sent inside a streamed transaction count as
//! sent for everyone once it commits, so they are kept for joiners from then on.
//!
//! The feed sends a replica's messages in stream order and waits when the replica's queue is full, so the
//! replicas of a database move at the pace of the slowest one that is streaming; one that takes nothing for
//! [`STALL`] leaves the stream and joins again later.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{Notify, mpsc};

pub(super) mod spill;

use self::spill::{ChunkLimits, Spills};
use super::Replication;
use super::copy_round::CopyRounds;
use super::pgoutput::{Lsn, ReplicationMessage, split_streamed};
use super::setup::{ForwardError, client, sql_err};
use super::stream::{ReplicationStream, StreamError};
use super::streamed::{OpenStreams, StreamedLoad};
use crate::backend::connect::NodeTarget;

/// Hand-overs queued per replica before the feed waits for it: enough that two replicas applying at about the
/// same pace rarely wait for each other, and at most `QUEUE` × [`BATCH_BYTES`] of messages per replica.
const QUEUE: usize = 256;
/// Messages handed over at once at most, and their size at most (a batch ends after the message that passes it).
const BATCH: usize = 256;
const BATCH_BYTES: usize = 128 * 1024;
/// How long a new stream waits for the replicas that were following before they all ask to join, so that a
/// restart is shared rather than repeated once per replica.
const GATHER: Duration = Duration::from_secs(2);
/// How long the stream waits for a replica whose queue is full before it goes on without it: a replica stuck
/// (a lock held on it for long, a full disk) must not hold back the others for longer than that. It joins
/// again from its stored position once it gets going.
const STALL: Duration = Duration::from_secs(30);
/// The least time between two restarts of the stream for replicas behind it. Each restart makes the primary
/// decode again everything after the slot's confirmed position, so a replica whose task fails again and again
/// (a conflict on the replica, retried with a growing pause) must not make the others pay for every attempt.
const REWIND_GAP: Duration = Duration::from_secs(30);
/// A held transaction is handed over in chunks of the size the stream's own batches have at most.
const CHUNK: ChunkLimits = ChunkLimits {
    messages: BATCH,
    bytes: BATCH_BYTES,
};
/// How often a slot another task is creating is looked at again.
const SLOT_POLL: Duration = Duration::from_millis(100);

/// What the feed hands a replica's applier.
#[derive(Debug)]
pub(crate) enum Event {
    /// pgoutput messages, in stream order: what the feed had received at once (up to [`BATCH`]), handed out
    /// together so that a bulk change costs one hand-over per batch rather than per row.
    Data(Arc<[Bytes]>),
    /// The primary's WAL end while the stream is idle or between messages.
    Keepalive { wal_end: Lsn },
    /// The replica's position is behind what the slot keeps: only a fresh copy can make it whole.
    Recopy,
}

/// A replica's place in the shared stream. Ends (`next` fails with [`ForwardError::Rewound`]) when the
/// stream starts over; the applier then joins again from its stored position.
pub(crate) struct Subscription {
    events: mpsc::Receiver<Event>,
    held: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event, in stream order.
    pub(crate) async fn next(&mut self) -> Result<Event, ForwardError> {
        self.events.recv().await.ok_or(ForwardError::Rewound)
    }

    /// Whether another message is already on its way (queued here, or received by the feed and not yet
    /// handed out), so that a batch may grow without waiting.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.events.is_empty() || self.held.load(Ordering::Relaxed)
    }
}

struct Join {
    member: usize,
    from: Lsn,
    events: mpsc::Sender<Event>,
}

/// The shared stream of one database. Members are the database's replicas, numbered by the caller.
pub(crate) struct Feed {
    ctx: Arc<Replication>,
    database: String,
    slot: String,
    /// Per member: its node's name, for the log.
    names: Vec<String>,
    /// Per member: the end of the last transaction it durably applied (an [`Lsn`]'s `u64`); 0 while not
    /// known (not reported since pgfleet started, or being copied), which holds the slot where it is.
    applied: Vec<AtomicU64>,
    reported: Notify,
    /// Whether the feed holds received messages it has not handed out yet.
    held: Arc<AtomicBool>,
    /// The large transactions the stream has open, for the reports.
    load: Arc<StreamedLoad>,
    joins: mpsc::UnboundedSender<Join>,
    /// The replicas' initial copies, shared by those that need one at about the same time.
    copies: CopyRounds,
}

/// The feed's task: owns the replication connection; run it with [`FeedTask::run_forever`].
pub(crate) struct FeedTask {
    feed: Arc<Feed>,
    joins: mpsc::UnboundedReceiver<Join>,
    /// When the stream last started over for a replica behind it.
    last_rewind: Option<tokio::time::Instant>,
}

impl Feed {
    /// The feed of `database`, reading `slot`, for the replicas `names` (members are numbered in that order);
    /// it keeps `load` as it reads.
    pub(crate) fn new(
        ctx: Arc<Replication>,
        (database, slot): (String, String),
        names: Vec<String>,
        load: Arc<StreamedLoad>,
    ) -> (Arc<Feed>, FeedTask) {
        let members = names.len();
        let (joins, joins_rx) = mpsc::unbounded_channel();
        let feed = Arc::new(Feed {
            ctx,
            database,
            slot,
            names,
            applied: (0..members).map(|_| AtomicU64::new(0)).collect(),
            reported: Notify::new(),
            held: Arc::new(AtomicBool::new(false)),
            load,
            joins,
            copies: CopyRounds::new(members),
        });
        let task = FeedTask {
            feed: feed.clone(),
            joins: joins_rx,
            last_rewind: None,
        };
        (feed, task)
    }

    /// The database's copy rounds.
    pub(crate) fn copies(&self) -> &CopyRounds {
        &self.copies
    }

    /// The slot every replica of the database is fed from (also the key of their progress rows).
    pub(crate) fn slot(&self) -> &str {
        &self.slot
    }

    /// Records what `member` has durably applied; None while it is being copied (the slot then keeps
    /// everything from where it is).
    pub(crate) fn report(&self, member: usize, applied: Option<Lsn>) {
        if let Some(slot) = self.applied.get(member) {
            slot.store(applied.map_or(0, |l| l.0), Ordering::Relaxed);
            self.reported.notify_one();
        }
    }

    /// Asks to be fed from after `from` (the end of the last transaction `member` applied).
    pub(crate) fn join(&self, member: usize, from: Lsn) -> Result<Subscription, ForwardError> {
        self.report(member, Some(from));
        let (tx, rx) = mpsc::channel(QUEUE);
        self.joins
            .send(Join {
                member,
                from,
                events: tx,
            })
            .map_err(|_| {
                ForwardError::Apply(format!("the change stream of \"{}\" has ended", self.database))
            })?;
        Ok(Subscription {
            events: rx,
            held: self.held.clone(),
        })
    }

    /// Makes sure the slot exists on `primary` and returns its confirmed position.
    pub(crate) async fn ensure_slot(&self, primary: &tokio_postgres::Client) -> Result<Lsn, ForwardError> {
        ensure_slot(primary, &self.slot).await
    }

    fn known_positions(&self) -> Vec<u64> {
        self.applied.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }

    fn primary(&self) -> NodeTarget {
        let fleet = &self.ctx.fleet;
        fleet.nodes()[fleet.likely_primary(crate::cluster::ShardId::default()).index()]
            .target
            .clone()
    }

    fn credentials(&self) -> (String, String, Duration) {
        let config = self.ctx.config();
        let r = &config.replication;
        (
            r.user.clone().unwrap_or_default(),
            r.password.clone().unwrap_or_default(),
            config.pool.connect_timeout,
        )
    }
}

/// Creates `slot` for pgoutput unless it exists; returns its confirmed position.
async fn ensure_slot(primary: &tokio_postgres::Client, slot: &str) -> Result<Lsn, ForwardError> {
    const READ: &str = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";
    let mut created_elsewhere = false;
    loop {
        if let Some(row) = primary
            .query_opt(READ, &[&slot])
            .await
            .map_err(sql_err("reading the replication slot"))?
        {
            let text: Option<String> = row.get(0);
            match text.and_then(|t| t.parse::<Lsn>().ok()) {
                Some(lsn) => return Ok(lsn),
                // Being created by another task: it has a position once the transactions running at its
                // start have ended.
                None => {
                    tokio::time::sleep(SLOT_POLL).await;
                    continue;
                }
            }
        }
        if created_elsewhere {
            return Err(ForwardError::Apply(format!(
                "replication slot {slot} vanished while being created"
            )));
        }
        match primary
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
        {
            Ok(row) => {
                let text: String = row.get(0);
                tracing::info!(slot, at = %text, "replication slot created");
                return text
                    .parse::<Lsn>()
                    .map_err(|_| ForwardError::Apply(format!("bad slot position {text}")));
            }
            // Made by another task a moment ago: read it.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                created_elsewhere = true;
            }
            Err(e) => return Err(sql_err("creating the replication slot")(e)),
        }
    }
}

/// A description's message tag and the relation's or type's OID.
type DescriptionKey = (u8, u32);

/// What a pgoutput message means to the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Begin,
    /// A commit, with the end of its transaction.
    Commit(Lsn),
    /// A description (relation or type) a joiner needs before the changes that use it; keyed by tag and id.
    Description(u8, u32),
    /// A block of a streamed transaction's changes starts.
    StreamStart(u32),
    /// The block ends.
    StreamStop,
    /// A streamed transaction ends: committed (with the end of its transaction) or aborted.
    StreamEnd(u32, Option<Lsn>),
    /// A subtransaction (second) of a streamed transaction (first) aborted.
    SubAbort(u32, u32),
    Other,
}

/// The mark of `data`; `in_block` says whether it came inside a streamed block, where every message carries
/// its transaction's xid after the tag.
fn mark(data: &[u8], in_block: bool) -> Mark {
    let be_u32 = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be_lsn = |at: usize| {
        data.get(at..at + 8).map(|b| {
            Lsn(u64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))
        })
    };
    match data.first() {
        Some(b'E') if in_block => Mark::StreamStop,
        Some(&tag @ (b'R' | b'Y')) if in_block => {
            be_u32(5).map_or(Mark::Other, |id| Mark::Description(tag, id))
        }
        _ if in_block => Mark::Other,
        Some(b'B') => Mark::Begin,
        // Commit: tag, flags, commit LSN, end LSN, time.
        Some(b'C') => be_lsn(10).map_or(Mark::Other, Mark::Commit),
        Some(&tag @ (b'R' | b'Y')) => be_u32(1).map_or(Mark::Other, |id| Mark::Description(tag, id)),
        Some(b'S') => be_u32(1).map_or(Mark::Other, Mark::StreamStart),
        // Stream Commit: tag, xid, flags, commit LSN, end LSN, time.
        Some(b'c') => match (be_u32(1), be_lsn(14)) {
            (Some(xid), Some(end)) => Mark::StreamEnd(xid, Some(end)),
            _ => Mark::Other,
        },
        // Stream Abort: tag, xid, subtransaction xid; only the whole transaction's ends it.
        Some(b'A') => match (be_u32(1), be_u32(5)) {
            (Some(xid), Some(sub)) if xid == sub => Mark::StreamEnd(xid, None),
            (Some(xid), Some(sub)) => Mark::SubAbort(xid, sub),
            _ => Mark::Other,
        },
        _ => Mark::Other,
    }
}

/// Where a replica asking to join at `from` goes, given the slot's confirmed position and the end of the
/// last commit the stream has passed to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Joins the running stream.
    Attach,
    /// The stream passed commits it needs, or is inside streamed transactions whose first blocks it missed:
    /// start over from the slot.
    Rewind,
    /// The slot no longer has what it needs.
    Recopy,
}

fn admit(from: Lsn, confirmed: Lsn, forwarded: Option<Lsn>, streams_open: bool) -> Admission {
    if from < confirmed {
        Admission::Recopy
    } else if streams_open || forwarded.is_some_and(|f| f > from) {
        Admission::Rewind
    } else {
        Admission::Attach
    }
}

/// How far the slot may be confirmed: the least position every member applied, once every member's is
/// known, and only forwards.
fn confirmable(applied: &[u64], confirmed: Lsn) -> Option<Lsn> {
    if applied.contains(&0) {
        return None;
    }
    let least = Lsn(*applied.iter().min()?);
    (least > confirmed).then_some(least)
}

struct Member {
    id: usize,
    events: mpsc::Sender<Event>,
}

impl FeedTask {
    /// Streams while any replica follows; restarts after failures with a growing pause.
    pub(crate) async fn run_forever(mut self) {
        let mut waiting: Vec<Join> = Vec::new();
        let mut pause = Duration::from_millis(500);
        loop {
            if waiting.is_empty() {
                match self.joins.recv().await {
                    Some(j) => waiting.push(j),
                    None => return,
                }
            }
            let started = std::time::Instant::now();
            match self.session(&mut waiting).await {
                Ok(()) => pause = Duration::from_millis(500),
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        pause = Duration::from_millis(500);
                    }
                    tracing::warn!(database = %self.feed.database, slot = %self.feed.slot, error = %e,
                        "change stream stopped; retrying");
                    // The replicas' subscriptions ended with the session: they join again.
                    waiting.clear();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Waits until every replica with a known position asked to join (or [`GATHER`] passed).
    async fn gather(&mut self, waiting: &mut Vec<Join>) {
        let deadline = tokio::time::Instant::now() + GATHER;
        loop {
            let known = self.feed.known_positions();
            let all_in = known
                .iter()
                .enumerate()
                .all(|(member, at)| *at == 0 || waiting.iter().any(|j| j.member == member));
            if all_in {
                return;
            }
            tokio::select! {
                j = self.joins.recv() => match j {
                    Some(j) => {
                        waiting.retain(|w| w.member != j.member);
                        waiting.push(j);
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// One replication connection: from the slot's confirmed position until a failure, a rewind, or no
    /// replica left. Ok means "start again at once".
    async fn session(&mut self, waiting: &mut Vec<Join>) -> Result<(), ForwardError> {
        let feed = self.feed.clone();
        let (user, password, timeout) = feed.credentials();
        let primary = feed.primary();
        let control = client(&primary, &user, &password, &feed.database, timeout).await?;
        let mut confirmed = feed.ensure_slot(&control).await?;
        let in_progress = feed.ctx.config().replication.streaming && streams_in_progress(&control).await;
        drop(control);
        self.gather(waiting).await;
        let mut members: Vec<Member> = Vec::new();
        for j in waiting.drain(..) {
            match admit(j.from, confirmed, None, false) {
                Admission::Recopy => {
                    let _ = j.events.try_send(Event::Recopy);
                }
                _ => members.push(Member {
                    id: j.member,
                    events: j.events,
                }),
            }
        }
        if members.is_empty() {
            return Ok(());
        }
        let mut stream =
            ReplicationStream::connect(&primary, &user, &password, &feed.database, timeout).await?;
        let publication = feed.ctx.config().replication.name.clone();
        if let Err(e) = stream
            .start(&feed.slot, confirmed, &publication, in_progress)
            .await
        {
            if matches!(&e, StreamError::Refused { code, .. } if code == "42704") {
                // Dropped between the check and the start: the next session makes it again, and the
                // replicas, now behind it, are copied again.
                tracing::warn!(slot = %feed.slot, "replication slot missing");
            }
            return Err(e.into());
        }
        tracing::info!(database = %feed.database, slot = %feed.slot, from = %confirmed,
            replicas = members.len(), "change stream started");
        let mut descriptions: HashMap<DescriptionKey, Bytes> = HashMap::new();
        // Replicas behind the stream, waiting for the next restart it may make.
        let mut behind: Vec<Join> = Vec::new();
        let rewind_at = self.last_rewind.map(|t| t + REWIND_GAP);
        let mut in_tx = false;
        // Inside a streamed block, and the streamed transactions begun and not yet ended: a replica joins
        // only between blocks, and one that joins while a streamed transaction is open missed its first
        // blocks, so the stream starts over for it.
        let mut block: Option<u32> = None;
        let mut streams = OpenStreams::new(feed.load.clone());
        // Streamed transactions beyond the limit the replicas apply while they run, held in files until they end.
        let limit = feed.ctx.config().replication.max_streamed_transactions;
        let mut spills = Spills::new(limit, feed.load.clone());
        // Descriptions sent inside streamed transactions, kept for joiners once their transaction commits.
        let mut streamed_descriptions: HashMap<u32, Vec<(DescriptionKey, Bytes)>> = HashMap::new();
        let mut forwarded: Option<Lsn> = None;
        loop {
            feed.held.store(stream.has_buffered(), Ordering::Relaxed);
            tokio::select! {
                m = stream.next() => {
                    // What arrived together goes together: the first message, then whatever is already buffered.
                    let mut messages: Vec<Bytes> = Vec::new();
                    let mut bytes = 0;
                    let mut next = Some(m?);
                    while let Some(m) = next.take() {
                        match m {
                            ReplicationMessage::XLogData { data, .. } => {
                                // A held transaction's blocks go to its file, and its ends are dealt with here.
                                let held_block = block.filter(|x| spills.holds(*x));
                                let mut pass_on = held_block.is_none();
                                match mark(&data, block.is_some()) {
                                    Mark::Begin => in_tx = true,
                                    Mark::Commit(end) => {
                                        in_tx = false;
                                        forwarded = Some(end);
                                    }
                                    Mark::StreamStart(xid) => {
                                        block = Some(xid);
                                        if streams.insert(xid) {
                                            spills.begin(xid, streams.len() - 1).await?;
                                        }
                                        pass_on = !spills.holds(xid);
                                    }
                                    Mark::StreamStop => block = None,
                                    Mark::SubAbort(xid, sub) if spills.holds(xid) => {
                                        spills.abort_sub(xid, sub);
                                        pass_on = false;
                                    }
                                    Mark::StreamEnd(xid, end) => {
                                        streams.remove(xid);
                                        let described = streamed_descriptions.remove(&xid);
                                        if end.is_some() {
                                            forwarded = end;
                                            descriptions.extend(described.into_iter().flatten());
                                        }
                                        if spills.holds(xid) {
                                            pass_on = false;
                                            match end {
                                                None => spills.abort(xid),
                                                Some(_) => {
                                                    let before = std::mem::take(&mut messages);
                                                    bytes = 0;
                                                    let whole = (&mut spills, xid, &data[..]);
                                                    if !hand_over_held(&feed, &mut members, before, whole).await? {
                                                        return Ok(());
                                                    }
                                                }
                                            }
                                        }
                                    }
                                    Mark::Description(tag, id) => match block {
                                        Some(xid) => streamed_descriptions
                                            .entry(xid)
                                            .or_default()
                                            .push(((tag, id), unstreamed(&data))),
                                        None => {
                                            descriptions.insert((tag, id), data.clone());
                                        }
                                    },
                                    Mark::SubAbort(..) | Mark::Other => {}
                                }
                                if let Some(xid) = held_block
                                    && block.is_some()
                                {
                                    spills.write(xid, &data).await?;
                                }
                                if pass_on {
                                    bytes += data.len();
                                    messages.push(data);
                                }
                            }
                            ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. } => {
                                if reply_requested {
                                    stream.send_status(confirmed, false).await?;
                                }
                                // Only between messages: a keepalive says nothing about what is still queued.
                                if messages.is_empty() {
                                    for m in &members {
                                        // Advisory: a replica with a full queue has other things to do first.
                                        let _ = m.events.try_send(Event::Keepalive { wal_end });
                                    }
                                }
                            }
                        }
                        if messages.len() < BATCH && bytes < BATCH_BYTES && stream.has_buffered() {
                            next = Some(stream.next().await?);
                        }
                    }
                    if messages.is_empty() {
                        continue;
                    }
                    if !hand_over(&feed, &mut members, messages.into()).await {
                        return Ok(());
                    }
                },
                j = self.joins.recv(), if !in_tx && block.is_none() => {
                    let Some(j) = j else { return Ok(()) };
                    tracing::trace!(member = j.member, from = %j.from, ?forwarded, %confirmed, "feed join");
                    // A replica joining again replaces its earlier subscription.
                    members.retain(|m| m.id != j.member);
                    match admit(j.from, confirmed, forwarded, !streams.is_empty()) {
                        Admission::Recopy => {
                            let _ = j.events.try_send(Event::Recopy);
                        }
                        Admission::Rewind => {
                            behind.retain(|b| b.member != j.member);
                            behind.push(j);
                            if rewind_at.is_none_or(|at| tokio::time::Instant::now() >= at) {
                                self.rewind(waiting, &mut behind);
                                return Ok(());
                            }
                        }
                        Admission::Attach => {
                            let known: Arc<[Bytes]> = descriptions.values().cloned().collect();
                            if known.is_empty() || j.events.send(Event::Data(known)).await.is_ok() {
                                members.push(Member { id: j.member, events: j.events });
                            }
                        }
                    }
                },
                _ = sleep_until_some(rewind_at), if !behind.is_empty() && !in_tx && block.is_none() => {
                    self.rewind(waiting, &mut behind);
                    return Ok(());
                },
                _ = feed.reported.notified() => {
                    if let Some(c) = confirmable(&feed.known_positions(), confirmed) {
                        confirmed = c;
                        stream.send_status(confirmed, false).await?;
                    }
                },
            }
        }
    }
}

/// Hands `messages` to every member in turn. One whose queue stays full for [`STALL`] leaves the stream (it
/// joins again from its stored position), as does one whose applier ended. False when none is left.
async fn hand_over(feed: &Feed, members: &mut Vec<Member>, messages: Arc<[Bytes]>) -> bool {
    let mut leaving = Vec::new();
    for m in members.iter() {
        match m.events.send_timeout(Event::Data(messages.clone()), STALL).await {
            Ok(()) => {}
            Err(SendTimeoutError::Closed(_)) => leaving.push(m.id),
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::warn!(database = %feed.database, replica = %feed.names[m.id],
                    "replica took no changes for {} s; it leaves the change stream and joins again",
                    STALL.as_secs());
                leaving.push(m.id);
            }
        }
    }
    if !leaving.is_empty() {
        members.retain(|m| !leaving.contains(&m.id));
    }
    !members.is_empty()
}

/// Held transaction `xid` committed (`stream_commit` is its Stream Commit): what the stream gathered before the
/// commit goes to the members first, then the transaction whole, in chunks. False when no member is left.
async fn hand_over_held(
    feed: &Feed,
    members: &mut Vec<Member>,
    before: Vec<Bytes>,
    (spills, xid, stream_commit): (&mut Spills, u32, &[u8]),
) -> Result<bool, ForwardError> {
    if !before.is_empty() && !hand_over(feed, members, before.into()).await {
        return Ok(false);
    }
    if let Some(mut replay) = spills.commit(xid, stream_commit).await? {
        while let Some(chunk) = replay.next_chunk(&CHUNK).await? {
            if !hand_over(feed, members, chunk.into()).await {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl FeedTask {
    /// Ends the session so that the next one starts from the slot's confirmed position with `behind` among
    /// its replicas (the others join again by themselves).
    fn rewind(&mut self, waiting: &mut Vec<Join>, behind: &mut Vec<Join>) {
        for j in behind.iter() {
            tracing::debug!(database = %self.feed.database, member = j.member, from = %j.from,
                "change stream starts over for a replica behind it");
        }
        waiting.append(behind);
        self.last_rewind = Some(tokio::time::Instant::now());
    }
}

/// A description sent inside a streamed block, as it would have been sent outside one (without the xid),
/// for replicas that join later: pgoutput sends a table's description once per stream and, once a streamed
/// transaction that described it commits, not again.
fn unstreamed(data: &Bytes) -> Bytes {
    match split_streamed(data) {
        Ok((_, tag, fields)) => {
            let mut out = Vec::with_capacity(1 + fields.len());
            out.push(tag);
            out.extend_from_slice(fields);
            out.into()
        }
        // Malformed: passed on as it came, for the appliers to report.
        Err(_) => data.clone(),
    }
}

/// Whether the primary can stream transactions in progress (pgoutput protocol version 2: PostgreSQL 14).
async fn streams_in_progress(primary: &tokio_postgres::Client) -> bool {
    match primary
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(row) => row.get::<_, i32>(0) >= 140_000,
        Err(e) => {
            tracing::debug!(error = %e, "server version unknown; large transactions arrive whole");
            false
        }
    }
}

/// Waits until `at`; forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_attaches_rewinds_or_is_copied_again() {
        let l = Lsn;
        // (from, confirmed, forwarded, streamed transactions open) -> admission
        let table = [
            ((l(100), l(100), None, false), Admission::Attach),
            ((l(150), l(100), None, false), Admission::Attach),
            ((l(150), l(100), Some(l(150)), false), Admission::Attach),
            ((l(200), l(100), Some(l(150)), false), Admission::Attach),
            ((l(149), l(100), Some(l(150)), false), Admission::Rewind),
            ((l(100), l(100), Some(l(101)), false), Admission::Rewind),
            // It would get a streamed transaction's later blocks without its first ones.
            ((l(200), l(100), Some(l(150)), true), Admission::Rewind),
            ((l(100), l(100), None, true), Admission::Rewind),
            ((l(99), l(100), None, false), Admission::Recopy),
            ((l(99), l(100), Some(l(150)), false), Admission::Recopy),
            ((l(99), l(100), None, true), Admission::Recopy),
            ((Lsn::ZERO, l(100), None, false), Admission::Recopy),
        ];
        for ((from, confirmed, forwarded, open), want) in table {
            assert_eq!(
                admit(from, confirmed, forwarded, open),
                want,
                "{from} {confirmed} {forwarded:?} {open}"
            );
        }
    }

    #[test]
    fn the_slot_is_confirmed_only_up_to_every_replicas_position() {
        let l = Lsn;
        let table: [(&[u64], Lsn, Option<Lsn>); 6] = [
            (&[300, 200], l(100), Some(l(200))),
            (&[300, 200], l(200), None),
            (&[300, 200], l(250), None),
            (&[300, 0], l(100), None),
            (&[0], l(100), None),
            (&[500], l(100), Some(l(500))),
        ];
        for (applied, confirmed, want) in table {
            assert_eq!(confirmable(applied, confirmed), want, "{applied:?} {confirmed}");
        }
    }

    #[test]
    fn messages_are_marked_by_their_tag() {
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&0x10u64.to_be_bytes());
        commit.extend_from_slice(&0x0000_0001_0000_0020u64.to_be_bytes());
        commit.extend_from_slice(&7i64.to_be_bytes());
        let mut relation = vec![b'R'];
        relation.extend_from_slice(&16385u32.to_be_bytes());
        relation.extend_from_slice(b"public\0t\0d\0\0\0");
        let mut ty = vec![b'Y'];
        ty.extend_from_slice(&16400u32.to_be_bytes());
        let table: [(&[u8], Mark); 7] = [
            (b"B\0\0\0\0\0\0\0\x01", Mark::Begin),
            (&commit, Mark::Commit(Lsn(0x0000_0001_0000_0020))),
            (&relation, Mark::Description(b'R', 16385)),
            (&ty, Mark::Description(b'Y', 16400)),
            (b"I\0\0@\x01N", Mark::Other),
            (b"C\0short", Mark::Other),
            (b"", Mark::Other),
        ];
        for (data, want) in table {
            assert_eq!(mark(data, false), want, "{data:?}");
        }
    }

    #[test]
    fn streamed_blocks_and_their_ends_are_marked() {
        let mut stream_commit = vec![b'c'];
        stream_commit.extend_from_slice(&741u32.to_be_bytes());
        stream_commit.push(0);
        stream_commit.extend_from_slice(&0x10u64.to_be_bytes());
        stream_commit.extend_from_slice(&0x0000_0001_0000_0040u64.to_be_bytes());
        stream_commit.extend_from_slice(&7i64.to_be_bytes());
        let abort = |xid: u32, sub: u32| {
            let mut a = vec![b'A'];
            a.extend_from_slice(&xid.to_be_bytes());
            a.extend_from_slice(&sub.to_be_bytes());
            a
        };
        let whole = abort(741, 741);
        let sub = abort(741, 745);
        // A relation inside a block: tag, xid, then the relation.
        let mut relation = vec![b'R'];
        relation.extend_from_slice(&741u32.to_be_bytes());
        relation.extend_from_slice(&16385u32.to_be_bytes());
        relation.extend_from_slice(b"public\0t\0d\0\0\0");
        let table: [(&[u8], bool, Mark); 8] = [
            (b"S\0\0\x02\xe5\x01", false, Mark::StreamStart(741)),
            (b"E", true, Mark::StreamStop),
            (&relation, true, Mark::Description(b'R', 16385)),
            (b"I\0\0\x02\xe5\0\0@\x01N", true, Mark::Other),
            (
                &stream_commit,
                false,
                Mark::StreamEnd(741, Some(Lsn(0x0000_0001_0000_0040))),
            ),
            (&whole, false, Mark::StreamEnd(741, None)),
            (&sub, false, Mark::SubAbort(741, 745)),
            (b"c\0\0\x02\xe5\0", false, Mark::Other),
        ];
        for (data, in_block, want) in table {
            assert_eq!(mark(data, in_block), want, "{data:?} in block: {in_block}");
        }
        // Kept for joiners as it would have come outside a block.
        let mut plain = vec![b'R'];
        plain.extend_from_slice(&16385u32.to_be_bytes());
        plain.extend_from_slice(b"public\0t\0d\0\0\0");
        assert_eq!(unstreamed(&Bytes::from(relation)), Bytes::from(plain));
    }
}
