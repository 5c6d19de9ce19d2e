//! Running one request on one node: write the client's frames, then stream the node's answer back as whole
//! frames, never decoding rows. While the node works, client input is read only when the protocol needs it
//! there: COPY FROM STDIN data, and extended-protocol frames that follow a Flush up to their Sync.
//!
//! A Bind or Describe that follows a Flush may name a statement the session prepared on another node
//! connection (a pipeline whose first request went elsewhere, a connection given back between
//! transactions): the flow prepares it here first, in the same batch, and keeps the node's answer to that
//! Parse (and to the Close of a stale statement of the same name) from the client (`Sent`).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod open_batch;
mod riders;

use crate::protocol::wal_call;
use open_batch::{Sent, undo, without};
pub(crate) use riders::Trailer;
use riders::{LeadState, TrailerState, lead_call};

use super::cancel::{ActiveBackend, CancelAnswered, Start, cancel_behind_request};
use super::request::{End, Plan, Request};
use super::session::{Session, SessionError};
use crate::backend::BackendError;
use crate::cluster::NodeId;
use crate::cluster::positions::LeadInFlight;
use crate::protocol::TxStatus;

/// The largest request-assembly buffer a session keeps between requests.
const SCRATCH_KEPT: usize = 16 * 1024;
/// Most reply bytes held back from the client while a retryable read may still fail over (see `hold_back`).
const HOLD_BACK_LIMIT: usize = 64 * 1024;

/// What a finished request left behind, read from the node's replies.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Transaction status of the last ReadyForQuery.
    pub status: TxStatus,
    /// An ErrorResponse came back.
    pub saw_error: bool,
    /// How many ParseComplete came back (the first N Parse messages succeeded).
    pub parses_ok: usize,
    /// How many command tags of transaction control came back (SAVEPOINT, RELEASE, ROLLBACK, also of
    /// ROLLBACK TO, COMMIT and PREPARE TRANSACTION): which of a request's savepoints and transaction ends
    /// ran, in order ([`SessionChange`](crate::router::classify::SessionChange)'s markers).
    pub control_tags: usize,
    /// Bit `i` set: the `i`-th of those tags (of the first 64) kept its transaction's changes (COMMIT,
    /// PREPARE TRANSACTION), where a COMMIT of a failed transaction answers ROLLBACK.
    pub kept: u64,
}

impl Outcome {
    /// Takes note of a CommandComplete's tag.
    pub(crate) fn note_tag(&mut self, tag: &[u8]) {
        let kept = match tag {
            b"COMMIT" | b"PREPARE TRANSACTION" => true,
            b"ROLLBACK" | b"SAVEPOINT" | b"RELEASE" => false,
            _ => return,
        };
        if kept && self.control_tags < 64 {
            self.kept |= 1 << self.control_tags;
        }
        self.control_tags += 1;
    }

    /// Whether the `i`-th tag of transaction control kept its transaction's changes. Past the 64th, in a
    /// request of that many transaction ends, it counts as a rollback.
    pub(crate) fn kept(&self, i: usize) -> bool {
        i < 64 && self.kept & (1 << i) != 0
    }
}

/// Why a request did not complete.
pub(crate) enum FlowError {
    /// A read is for another node, and nothing reached the client: the next candidate runs it with the same
    /// plan.
    Stale {
        /// Why the node could not give the read its answer.
        why: Redo,
    },
    /// The client cancelled the request before it reached the node (see [`CancelKey::run_on`]): nothing was
    /// sent; the session answers 57014.
    ///
    /// [`CancelKey::run_on`]: crate::frontend::cancel::CancelKey::run_on
    Canceled,
    /// The client failed; the session ends.
    Client(SessionError),
    /// The node failed; `output_sent` tells whether the client already saw part of the answer.
    Node {
        /// What went wrong.
        error: BackendError,
        /// Whether any reply bytes reached the client.
        output_sent: bool,
        /// Whether the node's own FATAL (sent before it closed the connection) reached the client.
        farewell_sent: bool,
    },
}

/// Why a read runs again on another node ([`FlowError::Stale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redo {
    /// A led read found its replica behind (see [`LeadState`]).
    Behind,
    /// The replica canceled it for a conflict with recovery (its replay needed a lock the read held, or
    /// removed rows the read's snapshot could still see): SQLSTATE 40001 or 40P01, which a client of the
    /// primary never gets for a read outside a transaction.
    RecoveryConflict,
    /// The replica refused the read's serializable isolation, which the session's role or database makes its
    /// default ([`Refusal::Serializable`]): the primary serves it, and the session's next reads.
    Serializable,
}

/// Why a replica's ErrorResponse lets the read run again elsewhere, told by its SQLSTATE (read once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A hot standby's refusal to take a serializable snapshot ("cannot use serializable mode in a hot
    /// standby"): the statement's transaction is serializable by default, and nothing of it ran. Told by its
    /// code and the server's routine name, which no `lc_messages` translates.
    Serializable,
    /// A conflict with recovery. A standby runs no serializable transaction nor anything that waits on
    /// another session's lock, so outside a transaction these two codes come from its replay (or from a
    /// function raising them on purpose, which raises them on the next node as well).
    RecoveryConflict,
}

fn refusal(body: &[u8]) -> Option<Refusal> {
    use crate::protocol::messages::error_field;
    match error_field(body, b'C')? {
        "0A000" if error_field(body, b'R') == Some("GetSerializableTransactionSnapshot") => {
            Some(Refusal::Serializable)
        }
        "40001" | "40P01" => Some(Refusal::RecoveryConflict),
        _ => None,
    }
}

/// What a wait inside a request found first.
enum Got {
    /// The node's next block was read (into the connection's buffer), or its connection failed.
    Node(Result<(), BackendError>),
    /// The client sent more (COPY data, an open batch's frames), or its connection failed.
    Client(std::io::Result<usize>),
}

/// The protocol state of a request in flight.
pub(crate) struct Flow {
    /// ReadyForQuery messages still to come.
    pending_ready: usize,
    /// An extended batch is open on the node (after Flush): client frames go there until Sync.
    open_batch: bool,
    /// COPY FROM STDIN is running: client CopyData goes to the node.
    copy_in: bool,
    /// The request used the extended protocol, whose Sync a COPY swallows.
    extended: bool,
    /// After this COPY ends, the batch is open again (its Sync was swallowed).
    reopen_after_copy: bool,
    outcome: Outcome,
    output_sent: bool,
    /// The node sent a FATAL: it closes the connection next.
    fatal_seen: bool,
    /// That FATAL reached the client.
    farewell_sent: bool,
    /// In a batch left open by Flush: the Parse, Close and Sync messages sent, in order, for telling the
    /// replies to pgfleet's own Parse and Close from the client's. Empty in any other request.
    sent: VecDeque<Sent>,
    /// Whether `sent` is kept (the request ended with Flush).
    track: bool,
    /// Byte ranges of the current reply block that answer pgfleet's own messages.
    drops: Vec<(usize, usize)>,
    /// Where the next frame of the current reply block starts.
    block_at: usize,
    /// pgfleet's own Parse or Close that the node skipped after an error: the applied state to put back.
    undo: Vec<Sent>,
    /// A read that may be retried on another node: its reply is held back until it is complete (or large),
    /// so that a node dying in mid-reply (an immediate shutdown sends a FATAL, then resets) costs the client
    /// nothing. A reply that arrives in one piece, the usual case, is written as it comes, without a copy.
    hold_back: bool,
    /// A held-back read's node canceled it for a conflict with recovery, or refused its serializable
    /// snapshot, before any of its reply reached the client: on a replica, the reply is dropped and the read
    /// runs again elsewhere.
    conflict: bool,
    /// The node refused a serializable snapshot ([`Refusal::Serializable`]), held back or not.
    serializable_refused: bool,
    /// Reply bytes not yet written to the client: a retryable read's (`hold_back`), or, with a trailer, the
    /// client's frames waiting to go out with its last ReadyForQuery in one write once the trailer's answer
    /// is in (one send, so one wakeup of the client, per request).
    held: BytesMut,
    /// The block read last holds a NotificationResponse, whose pid is the node backend's.
    notified: bool,
    /// A client's cancel that came while pgfleet had the request inside a transaction: it goes to the
    /// backend once the request is written there (`CancelKey::run_on`).
    cancel_after_send: Option<ActiveBackend>,
    /// Once it went: told when the node answers, which ends its repeats (`cancel_behind_request`).
    cancel_sent: Option<CancelAnswered>,
    trailer: Option<TrailerState>,
    lead: Option<LeadState>,
}

impl Flow {
    fn inspect(&mut self, kind: u8, body: &[u8]) {
        if let Some(l) = self.lead.as_mut()
            && !l.done
        {
            // The lead's own reply: its value and its end; the client never sees it.
            let len = 5 + body.len();
            l.end += len;
            if let Some(t) = self.trailer.as_mut() {
                t.pos += len;
            }
            match kind {
                b'V' => l.answer = wal_call::answer(body),
                b'Z' => {
                    l.done = true;
                    l.stale = l.answer.is_none_or(|a| a < l.need);
                    // At once, not when the read's reply is in: reads waiting on this node go on now.
                    l.in_flight.answered(l.answer);
                    self.pending_ready = self.pending_ready.saturating_sub(1);
                }
                _ => {}
            }
            return;
        }
        if let Some(t) = self.trailer.as_mut() {
            let start = t.pos;
            t.pos += 5 + body.len();
            if t.client_ready == 0 {
                // The trailer's own reply: only its value and its end matter.
                match kind {
                    b'V' => t.answer = wal_call::answer(body),
                    b'Z' => self.pending_ready = self.pending_ready.saturating_sub(1),
                    b'A' => {
                        t.late.push(kind);
                        t.late.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
                        t.late.extend_from_slice(body);
                    }
                    _ => {}
                }
                return;
            }
            t.visible_end = t.pos;
            if kind == b'Z' {
                t.client_ready -= 1;
                if t.client_ready == 0 {
                    t.visible_end = start;
                    t.ready_span = Some((start, t.pos));
                }
            }
        }
        match kind {
            b'Z' => {
                self.pending_ready = self.pending_ready.saturating_sub(1);
                self.outcome.status = TxStatus::from_ready_body(body);
            }
            b'G' => {
                self.copy_in = true;
                if self.extended && self.pending_ready > 0 && !self.open_batch {
                    // PostgreSQL ignores a Sync that arrives during COPY; the client sends another after it.
                    self.pending_ready -= 1;
                    self.reopen_after_copy = true;
                }
            }
            b'E' => {
                self.outcome.saw_error = true;
                let refusal = refusal(body);
                self.serializable_refused |= refusal == Some(Refusal::Serializable);
                self.conflict |= self.hold_back && !self.output_sent && refusal.is_some();
                self.fatal_seen |= crate::backend::conn::is_fatal(body);
                if self.copy_in {
                    self.copy_in = false;
                    self.open_batch |= std::mem::take(&mut self.reopen_after_copy);
                }
            }
            b'C' => {
                // Compared as bytes: every reply carries a tag, and only transaction control's matter here.
                let tag = body
                    .iter()
                    .position(|b| *b == 0)
                    .map_or(&b""[..], |end| &body[..end]);
                self.outcome.note_tag(tag);
            }
            b'1' if !self.track => self.outcome.parses_ok += 1,
            b'A' => self.notified = true,
            _ => {}
        }
        let len = 5 + body.len();
        if self.track {
            self.answered(kind, len);
        }
        self.block_at += len;
    }

    /// Matches a reply of an open batch with what was sent; see [`Sent`].
    fn answered(&mut self, kind: u8, len: usize) {
        match kind {
            b'1' | b'3' => {
                while let Some(front) = self.sent.pop_front() {
                    match front {
                        Sent::Sync => continue,
                        Sent::Client => {
                            if kind == b'1' {
                                self.outcome.parses_ok += 1;
                            }
                        }
                        Sent::Parsed(..) | Sent::Closed(_) => {
                            self.drops.push((self.block_at, self.block_at + len))
                        }
                    }
                    break;
                }
            }
            b'E' => {
                // The node skips every message up to the next Sync.
                while let Some(front) = self.sent.front() {
                    if matches!(front, Sent::Sync) {
                        break;
                    }
                    if let Some(skipped) = self.sent.pop_front()
                        && !matches!(skipped, Sent::Client)
                    {
                        self.undo.push(skipped);
                    }
                }
            }
            b'Z' => {
                while let Some(front) = self.sent.pop_front() {
                    if matches!(front, Sent::Sync) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    /// Notes a client frame sent in an open batch.
    fn sending(&mut self, kind: u8) {
        if !self.track {
            return;
        }
        match kind {
            b'P' | b'C' => self.sent.push_back(Sent::Client),
            b'S' | b'Q' => self.sent.push_back(Sent::Sync),
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.pending_ready == 0 && !self.open_batch && !self.copy_in
    }

    /// Runs `req` on `node` to completion, then records its effects on the session. The plan stays the
    /// caller's (borrowed, not moved: it is large, and a read that fails over runs again with it); a request
    /// that completed leaves it emptied of what the session took over.
    pub(super) async fn run(
        session: &mut Session,
        node: NodeId,
        req: &Request,
        end: End,
        plan: &mut Plan,
        retryable: bool,
    ) -> Result<(), FlowError> {
        let Some(conn) = session.conns[node.index()].as_ref() else {
            return Err(FlowError::Client(SessionError::Fatal(
                "internal: no connection for node".into(),
            )));
        };
        // Outside a transaction a cancel that came while pgfleet routed the request ends it here, as
        // PostgreSQL ends a statement it has not finished; inside one, an error of pgfleet's own would leave
        // the node's transaction open where the client expects it aborted, so the node gets the cancel
        // right behind the request and aborts the transaction itself.
        let backend = (conn.target.index, conn.pid, conn.secret);
        let cancel_after_send = match session.key.run_on(backend, || session.status() == TxStatus::Idle) {
            Start::Refuse => return Err(FlowError::Canceled),
            Start::RunThenCancel => Some(backend),
            Start::Run => None,
        };
        let trailer = session.trailer.take().filter(|_| end != End::Open);
        let lead = session.lead_need.take().filter(|_| end != End::Open);
        let mut flow = Flow {
            pending_ready: req.ready_count() + usize::from(trailer.is_some()) + usize::from(lead.is_some()),
            lead: lead.map(|need| LeadState {
                need,
                end: 0,
                answer: None,
                done: false,
                stale: false,
                in_flight: LeadInFlight::start(session.shared.fleet.node(node)),
            }),
            trailer: trailer.map(|kind| TrailerState {
                kind,
                client_ready: req.ready_count(),
                final_ready: None,
                visible_end: 0,
                ready_span: None,
                pos: 0,
                answer: None,
                late: Vec::new(),
            }),
            open_batch: end == End::Open,
            copy_in: false,
            extended: req.is_extended(),
            reopen_after_copy: false,
            outcome: Outcome::default(),
            output_sent: false,
            sent: VecDeque::new(),
            track: end == End::Open,
            drops: Vec::new(),
            block_at: 0,
            undo: Vec::new(),
            fatal_seen: false,
            farewell_sent: false,
            hold_back: retryable,
            conflict: false,
            serializable_refused: false,
            held: BytesMut::new(),
            notified: false,
            cancel_after_send,
            cancel_sent: None,
        };
        let mut result = flow.pump(session, node, req, plan).await;
        let stale = flow.lead.take().is_some_and(|mut l| {
            // Published already unless the run ended before the lead's reply did.
            l.in_flight.answered(l.answer);
            l.stale
        });
        if flow.serializable_refused && !session.is_primary(node) {
            // Also a read inside a transaction, which cannot run again: the session's next ones go to the
            // primary, until its settings change.
            session.serializable_by_default();
        }
        let redo = match (stale, flow.conflict, flow.serializable_refused) {
            (true, _, _) => Some(Redo::Behind),
            (false, true, true) => Some(Redo::Serializable),
            (false, true, false) => Some(Redo::RecoveryConflict),
            (false, false, _) => None,
        };
        if result.is_ok()
            && let Some(why) = redo
            && let Some(conn) = session.conns[node.index()].as_mut()
        {
            conn.status = flow.outcome.status;
            session.key.clear_active();
            return Err(FlowError::Stale { why });
        }
        if result.is_ok()
            && let Some(mut t) = flow.trailer.take()
        {
            t.answer = t
                .answer
                .map(|lsn| session.position_answer(node, t.kind.position(), lsn));
            session.trailer_answer = t.answer;
            if let Some(lsn) = t.answer {
                match t.kind {
                    // Published before the client hears of the commit: a read that starts after it learns
                    // of the commit must find the position here.
                    Trailer::Commit | Trailer::AsyncCommit if flow.outcome.status == TxStatus::Idle => {
                        session.shared.fleet.positions(session.shard).acknowledged(lsn)
                    }
                    Trailer::Replay => session.shared.fleet.nodes()[node.index()].replayed.saw(lsn),
                    _ => {}
                }
            }
            // The client's frames, its last ReadyForQuery and any notification that came behind them: one write.
            let mut out = std::mem::take(&mut flow.held);
            if let Some(ready) = t.final_ready {
                out.extend_from_slice(&ready);
            }
            if !t.late.is_empty() {
                let late = session
                    .shared
                    .cancels
                    .rewrite_notifications(node.index(), Bytes::from(t.late));
                out.extend_from_slice(&late);
            }
            if !out.is_empty() {
                flow.output_sent = true;
                result = write_flush(&mut session.client, &out)
                    .await
                    .map_err(|e| Failure::Client(e.into()));
            }
        } else if matches!(result, Err(Failure::Node(_))) && !flow.hold_back && !flow.held.is_empty() {
            // The node failed before the trailer's answer: what the client's request got (a commit's
            // CommandComplete, say) still reaches it, as it would have without a trailer.
            flow.output_sent = true;
            if write_flush(&mut session.client, &flow.held).await.is_ok() {
                // A FATAL among them (pg_terminate_backend of its own backend) ends the client's session.
                flow.farewell_sent |= flow.fatal_seen;
            }
        }
        session.key.clear_active();
        match result {
            Ok(()) => {
                session.finish(node, plan, &flow.outcome);
                Ok(())
            }
            Err(Failure::Client(e)) => Err(FlowError::Client(e)),
            Err(Failure::Node(error)) => Err(FlowError::Node {
                error,
                output_sent: flow.output_sent,
                farewell_sent: flow.farewell_sent,
            }),
        }
    }

    async fn pump(
        &mut self,
        session: &mut Session,
        node: NodeId,
        req: &Request,
        plan: &mut Plan,
    ) -> Result<(), Failure> {
        let Some(conn) = session.conns[node.index()].as_mut() else {
            return Ok(());
        };
        if self.track {
            for f in &req.frames {
                self.sending(f.kind);
            }
        }
        let lead: &[u8] = if self.lead.is_some() { lead_call() } else { &[] };
        let trailer: &[u8] = self.trailer.as_ref().map_or(&[], |t| t.kind.call());
        if lead.is_empty() && trailer.is_empty() {
            conn.write_all(req.encode(&mut session.scratch))
                .await
                .map_err(Failure::Node)?;
        } else if req.bytes <= SCRATCH_KEPT {
            // The lead and the trailer ride in the same write as the client's frames: no round trip of their own.
            session.scratch.clear();
            session.scratch.extend_from_slice(lead);
            for f in &req.frames {
                session.scratch.extend_from_slice(&f.raw);
            }
            session.scratch.extend_from_slice(trailer);
            conn.write_all(&session.scratch).await.map_err(Failure::Node)?;
        } else {
            // A large request is not copied to join them: they go just before and after it, still unanswered.
            if !lead.is_empty() {
                conn.write_all(lead).await.map_err(Failure::Node)?;
            }
            conn.write_all(req.encode(&mut session.scratch))
                .await
                .map_err(Failure::Node)?;
            if !trailer.is_empty() {
                conn.write_all(trailer).await.map_err(Failure::Node)?;
            }
        }
        if let Some(backend) = self.cancel_after_send.take() {
            // On its own task: the reply is read meanwhile, and the cancel's connection to the node starts only
            // now that the request is there.
            self.cancel_sent = Some(cancel_behind_request(session.shared.fleet.clone(), backend));
        }
        if session.scratch.capacity() > SCRATCH_KEPT {
            // A large request passed through: idle sessions should not keep its buffer.
            session.scratch = Vec::new();
        }
        let mut to_node = BytesMut::new();
        while !self.done() {
            let read_client = self.copy_in || self.open_batch;
            // Frames that arrived in the same read as the request (Execute and Flush after a Flush,
            // CopyData right behind a COPY) go on before waiting for anything: the client may be
            // waiting for their replies and send nothing more.
            let passed = read_client
                && session.cbuf.buffered() > 0
                && self.pass_on_buffered(session, node, plan, &mut to_node)?;
            let Some(conn) = session.conns[node.index()].as_mut() else {
                return Ok(());
            };
            if passed {
                conn.write_all(&to_node).await.map_err(Failure::Node)?;
                to_node.clear();
                continue;
            }
            // Most requests read nothing more of the client: they await the node alone, without a select's
            // machinery around the read.
            let got = if read_client {
                tokio::select! {
                    // The node's output first: no need to draw a random branch order for every read.
                    biased;
                    r = conn.fill() => Got::Node(r),
                    r = session.client.read_buf(session.cbuf.read_target()) => Got::Client(r),
                }
            } else {
                Got::Node(conn.fill().await)
            };
            match got {
                Got::Node(r) => {
                    r.map_err(Failure::Node)?;
                    if let Some(c) = &self.cancel_sent {
                        c.answered();
                    }
                    self.block_at = 0;
                    if let Some(t) = self.trailer.as_mut() {
                        t.pos = 0;
                        t.visible_end = 0;
                    }
                    if let Some(l) = self.lead.as_mut() {
                        l.end = 0;
                    }
                    let block = conn
                        .take_block(|k, b| self.inspect(k, b))
                        .map_err(Failure::Node)?;
                    if self.done() && !self.lead.as_ref().is_some_and(|l| l.stale) {
                        // PostgreSQL shows a backend idle before its ReadyForQuery goes out; so does SHOW
                        // CLIENTS: a client that asks once it has its answer never sees its request active.
                        Session::settle_row(&session.entry, self.outcome.status);
                    }
                    if !self.undo.is_empty() {
                        undo(conn, &mut self.undo);
                    }
                    // An open batch's added replies are dropped (`Sent`); a trailer's reply is kept back. The
                    // two never meet: a trailer never follows a request left open by a Flush.
                    // The lead's frames come first in the block that holds them: the client's start after them.
                    let lead_end = self.lead.as_ref().map_or(0, |l| l.end);
                    let block = match (block, self.trailer.as_mut()) {
                        (Some(b), None) if !self.drops.is_empty() => {
                            Some(without(b, &mut self.drops)).filter(|b| !b.is_empty())
                        }
                        (Some(block), Some(t)) => {
                            // The client's frames go on; its last ReadyForQuery waits; the trailer's stay here.
                            if let Some((start, end)) = t.ready_span.take() {
                                t.final_ready = Some(block.slice(start..end));
                            }
                            (t.visible_end > lead_end).then(|| block.slice(lead_end..t.visible_end))
                        }
                        (Some(block), None) if lead_end > 0 => {
                            (block.len() > lead_end).then(|| block.slice(lead_end..))
                        }
                        (block, _) => block,
                    };
                    if self.conflict {
                        // The primary's own error is its client's, as it would be without pgfleet.
                        self.conflict = !session.is_primary(node);
                    }
                    // A stale replica's answer to the read is not the client's, nor one that a conflict with
                    // recovery ended: it is read to its end and dropped.
                    let block =
                        block.filter(|_| !self.lead.as_ref().is_some_and(|l| l.stale) && !self.conflict);
                    let block = if std::mem::take(&mut self.notified) {
                        // The client is told the pid pgfleet gave the notifying client, not a node's.
                        block.map(|b| session.shared.cancels.rewrite_notifications(node.index(), b))
                    } else {
                        block
                    };
                    if let Some(block) = block {
                        // The client must see a COPY or an open batch's replies at once: it answers them. A
                        // trailer never rides with either; its request's frames wait for its answer.
                        let for_trailer = self.trailer.is_some() && !self.copy_in && !self.open_batch;
                        let must_send = !for_trailer && (self.done() || self.copy_in || self.open_batch);
                        let held = &mut self.held;
                        if (self.hold_back || for_trailer)
                            && !must_send
                            && held.len() + block.len() <= HOLD_BACK_LIMIT
                        {
                            held.extend_from_slice(&block);
                        } else {
                            self.output_sent = true;
                            if !held.is_empty() && held.len() + block.len() > HOLD_BACK_LIMIT {
                                // Written ahead rather than joined: a large block is never copied.
                                session
                                    .client
                                    .write_all(held)
                                    .await
                                    .map_err(|e| Failure::Client(e.into()))?;
                                held.clear();
                            }
                            let out: &[u8] = if held.is_empty() {
                                &block
                            } else {
                                held.extend_from_slice(&block);
                                held
                            };
                            write_flush(&mut session.client, out)
                                .await
                                .map_err(|e| Failure::Client(e.into()))?;
                            self.farewell_sent |= self.fatal_seen;
                            held.clear();
                        }
                    }
                }
                Got::Client(r) => match r {
                    Ok(0) => {
                        return Err(Failure::Client(
                            std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Failure::Client(e.into())),
                },
            }
        }
        if self.conflict {
            self.held.clear();
        } else if !self.held.is_empty() && self.trailer.is_none() {
            self.output_sent = true;
            write_flush(&mut session.client, &self.held)
                .await
                .map_err(|e| Failure::Client(e.into()))?;
            self.farewell_sent |= self.fatal_seen;
            self.held.clear();
        }
        Ok(())
    }

    /// Moves the buffered client frames that belong to the request in flight (COPY data up to its end, an
    /// open batch's frames up to its Sync) into `to_node`; whatever follows stays buffered for the next
    /// request. Returns whether any frame was taken.
    fn pass_on_buffered(
        &mut self,
        session: &mut Session,
        node: NodeId,
        plan: &mut Plan,
        to_node: &mut BytesMut,
    ) -> Result<bool, Failure> {
        let mut passed = false;
        while self.copy_in || self.open_batch {
            let frame = match session.cbuf.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(Failure::Client(e.into())),
            };
            passed = true;
            if frame.kind == b'X' {
                // The client leaves in mid-batch: the node must not see its Terminate (the connection goes
                // back to the pool, which cleans it up).
                return Err(Failure::Client(
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
                ));
            }
            if self.copy_in {
                if matches!(frame.kind, b'c' | b'f') {
                    self.copy_in = false;
                    self.open_batch |= std::mem::take(&mut self.reopen_after_copy);
                }
                to_node.extend_from_slice(&frame.raw);
                continue;
            }
            // Under transaction pooling the client's statement names become the proxy's here too.
            let frame = session.rewrite_names(frame);
            self.prepare_for(session, node, plan, &frame, to_node);
            plan.note(&frame, &session.statements, &session.rules, &mut session.reading);
            self.sending(frame.kind);
            if matches!(frame.kind, b'S' | b'Q') {
                self.pending_ready += 1;
                self.open_batch = false;
            }
            to_node.extend_from_slice(&frame.raw);
        }
        Ok(passed)
    }
}

enum Failure {
    Client(SessionError),
    Node(BackendError),
}

async fn write_flush(client: &mut super::stream::ClientStream, bytes: &[u8]) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (code, value) in fields {
            body.push(*code);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn a_replicas_error_tells_whether_the_read_may_run_elsewhere() {
        let serializable = "GetSerializableTransactionSnapshot";
        type Fields<'a> = &'a [(u8, &'a str)];
        let cases: [(Fields, Option<Refusal>); 7] = [
            (
                &[(b'S', "ERROR"), (b'C', "0A000"), (b'R', serializable)],
                Some(Refusal::Serializable),
            ),
            // The same code for another unsupported feature: the client's own error.
            (&[(b'S', "ERROR"), (b'C', "0A000"), (b'R', "transformStmt")], None),
            (&[(b'C', "0A000")], None),
            (
                &[(b'S', "ERROR"), (b'C', "40001")],
                Some(Refusal::RecoveryConflict),
            ),
            (
                &[(b'S', "ERROR"), (b'C', "40P01")],
                Some(Refusal::RecoveryConflict),
            ),
            (&[(b'S', "ERROR"), (b'C', "42P01")], None),
            (&[(b'S', "ERROR")], None),
        ];
        for (fields, expected) in cases {
            assert_eq!(refusal(&error_body(fields)), expected, "{fields:?}");
        }
    }
}
