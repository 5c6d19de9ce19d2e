//! Sharded fleets (`nodes[i].shard`): the shard each request runs on, decided by `shard::plan`; an open
//! transaction carried to every shard it touches (a BEGIN of the same isolation level on the shard's
//! primary when it first gets there); statements that need several shards, run on each and answered as
//! one; and the end of a transaction that spans shards, with two-phase commit (`shard::twophase`).
//!
//! A session keeps one routing state per shard (`Session::enter_shard`): positions, read homes and pins of
//! different servers never mix. An unsharded fleet never gets here.

use super::{Session, SessionError};
use crate::cluster::{NodeId, ShardId};
use crate::frontend::request::{End, Plan, Request};
use crate::protocol::messages::{ProxyError, bind_names, parse_fields, query_text};
use crate::protocol::{Frame, TxStatus};
use crate::router::classify::SessionChange;
use crate::shard::plan::{ParamValue, Params, ShardPlan, ShardTarget, combined_target, plan_all};
use crate::shard::{Sharding, ShardingPlacement};

mod batch;
mod commit;
mod copy;
mod ids;
mod pipeline;
mod several;

pub(super) use ids::Ids;

/// What the session does with a request after its shard step.
pub(super) enum Step {
    /// Run it as usual on the session's current shard.
    Run,
    /// It was answered (refused, run on several shards, or a transaction ended across shards).
    Answered,
}

/// How a transaction that spans shards ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxEnd {
    Commit,
    Rollback,
}

/// What one shard answered to a statement the session ran there on the client's behalf.
pub(super) struct Answer {
    /// RowDescription, DataRows, CommandComplete, notices: everything before ReadyForQuery but the error.
    pub(super) frames: Vec<Frame>,
    /// The shard's ErrorResponse, if the statement failed.
    pub(super) error: Option<Frame>,
    /// The transaction status of the last ReadyForQuery.
    pub(super) status: TxStatus,
}

/// Whether a request is one simple-protocol statement that only sets `client_encoding` (SET NAMES, SET or
/// RESET client_encoding): the way out of an encoding a sharded database refuses.
fn only_sets_client_encoding(req: &Request, plan: &Plan) -> bool {
    let [q] = req.frames.as_slice() else {
        return false;
    };
    q.kind == b'Q'
        && query_text(q.body()).is_some_and(crate::router::split::surely_one_statement)
        && plan.pin.is_none()
        && matches!(plan.changes.as_slice(), [c] if c.name() == Some("client_encoding"))
}

/// Whether a request sets, releases or rolls back to a savepoint, as the classifier reads its statements.
fn uses_savepoints(plan: &Plan) -> bool {
    plan.changes
        .iter()
        .any(|c| matches!(c, SessionChange::Savepoint(_)))
}

impl Session {
    /// Sharded fleets, before a request runs: moves the session to the shard the request needs (carrying
    /// an open transaction there), or answers the request itself when it needs several shards or ends a
    /// transaction that spans them.
    pub(super) async fn shard_step(&mut self, req: &Request, end: End) -> Result<Step, SessionError> {
        let Some(sharding) = self.shared.sharding.clone() else {
            return Ok(Step::Run);
        };
        if self.tx_shards().len() > 1 {
            if let Some(how) = transaction_end(req, &self.statements) {
                self.end_across_shards(how, req, end).await?;
                return Ok(Step::Answered);
            }
            if ends_otherwise(req) {
                // COMMIT AND CHAIN, PREPARE TRANSACTION: on one shard they would end only its part.
                let e = ProxyError::error(
                    "0A000",
                    "pgfleet: a transaction that spans several shards ends only with COMMIT or ROLLBACK",
                )
                .with_hint("End it with a plain COMMIT or ROLLBACK, then begin the next one.");
                self.refuse(e, end).await?;
                return Ok(Step::Answered);
            }
        }
        // A transaction that failed on one shard fails everywhere until it ends, as PostgreSQL's does: the
        // failed shard answers every request with 25P02.
        if let Some(failed) = self.failed_tx_shard() {
            self.enter_shard(failed);
            return Ok(Step::Run);
        }
        if !self.in_transaction() {
            self.tx_savepoint = false;
        }
        // Read as the classifier reads it (the session's own reading is left to the request's dispatch):
        // what it sets, releases or rolls back to, and whether it only changes client_encoding.
        let plan = Plan::for_request(req, &self.statements, &self.rules);
        if uses_savepoints(&plan) {
            // A savepoint exists on one server: rolling back to it on one shard would keep what the others did.
            if self.tx_shards().len() > 1 {
                let e = ProxyError::error(
                    "0A000",
                    "pgfleet: savepoints are not supported in a transaction that spans several shards",
                )
                .with_hint("Use savepoints in transactions that stay on one shard.");
                self.refuse(e, end).await?;
                return Ok(Step::Answered);
            }
            self.tx_savepoint = true;
        }
        if !self.reading.encoding.is_utf8() && !only_sets_client_encoding(req, &plan) {
            // Key values are hashed, and statements split over shards are resent, as the UTF-8 they would be
            // in the database: text in another encoding would place rows on the wrong shard.
            let e = ProxyError::error(
                "0A000",
                "pgfleet: a sharded database is read in UTF8, and this session's client_encoding is not UTF8",
            )
            .with_hint(
                "Connect with client_encoding UTF8 (PGCLIENTENCODING=UTF8), or run SET client_encoding TO 'UTF8' \
                 first; PostgreSQL then converts what it returns.",
            );
            self.refuse(e, end).await?;
            return Ok(Step::Answered);
        }
        let plans = match self.shard_plans(req, &sharding) {
            Ok(plans) => plans,
            Err(e) => {
                self.refuse(e, end).await?;
                return Ok(Step::Answered);
            }
        };
        match combined_target(&plans) {
            ShardTarget::Session | ShardTarget::Any => Ok(Step::Run),
            ShardTarget::One(shard) => {
                if let Err(e) = self.go_to_shard(shard).await {
                    self.refuse(e, end).await?;
                    return Ok(Step::Answered);
                }
                Ok(Step::Run)
            }
            // Drivers' batches (pgjdbc's executeBatch, psycopg's executemany) send many Bind/Execute before
            // one Sync: each execution runs on its own shard.
            ShardTarget::Several(_) | ShardTarget::All if plans.len() > 1 && req.is_extended() => {
                self.run_pipeline(req, end).await?;
                Ok(Step::Answered)
            }
            ShardTarget::Several(_) | ShardTarget::All if plans.len() > 1 => {
                let text = match req.frames.as_slice() {
                    [q] if q.kind == b'Q' => query_text(q.body()).unwrap_or(""),
                    _ => "",
                };
                let texts = crate::router::split::split_statements(text);
                self.run_batch(&texts, &plans, end).await?;
                Ok(Step::Answered)
            }
            ShardTarget::Several(shards) => {
                self.run_on_shards(req, end, &plans, shards).await?;
                Ok(Step::Answered)
            }
            ShardTarget::All => {
                let shards = (0..self.shared.fleet.shard_count())
                    .map(|s| ShardId::new(s as u32))
                    .collect();
                self.run_on_shards(req, end, &plans, shards).await?;
                Ok(Step::Answered)
            }
        }
    }

    /// The plans of the request's statements: a simple query's, or each Bind's statement with its
    /// parameters. A Parse without a Bind runs nothing and plans as any shard.
    fn shard_plans(&self, req: &Request, sharding: &Sharding) -> Result<Vec<ShardPlan>, ProxyError> {
        let placement = ShardingPlacement::new(&sharding.rules);
        let mut plans = Vec::new();
        let mut parsed: Vec<(&str, &str)> = Vec::new();
        for f in &req.frames {
            match f.kind {
                b'Q' => {
                    let text = query_text(f.body()).unwrap_or("");
                    plans.extend(plan_all(text, &sharding.rules, &Params::NONE, &placement)?);
                }
                b'P' => {
                    if let Some(fields) = parse_fields(f.body()) {
                        parsed.retain(|(name, _)| *name != fields.0);
                        parsed.push(fields);
                    }
                }
                b'B' => {
                    let Some((_, statement)) = bind_names(f.body()) else {
                        continue;
                    };
                    let stored;
                    let text = match parsed.iter().rev().find(|(name, _)| *name == statement) {
                        Some((_, text)) => *text,
                        None => {
                            stored = self.statements.get(statement).and_then(|st| {
                                st.parse
                                    .get(5..)
                                    .and_then(parse_fields)
                                    .map(|(_, q)| q.to_owned())
                            });
                            stored.as_deref().unwrap_or("")
                        }
                    };
                    let values = bind_params(f.body()).unwrap_or_default();
                    plans.extend(plan_all(
                        text,
                        &sharding.rules,
                        &Params::Known(&values),
                        &placement,
                    )?);
                }
                _ => {}
            }
        }
        Ok(plans)
    }

    /// The shards with an open transaction of this session.
    pub(super) fn tx_shards(&self) -> Vec<(ShardId, NodeId)> {
        let mut out = Vec::new();
        if let Some(n) = self.routing.tx_node {
            out.push((self.shard, n));
        }
        for (s, state) in self.parked.iter().enumerate() {
            if s != self.shard.index()
                && let Some(n) = state.tx_node
            {
                out.push((ShardId::new(s as u32), n));
            }
        }
        out.sort();
        out
    }

    /// Whether the session has a transaction open on any shard.
    pub(super) fn in_transaction(&self) -> bool {
        self.routing.tx_node.is_some() || self.parked.iter().any(|s| s.tx_node.is_some())
    }

    /// The transaction status across shards: failed if it failed anywhere, else in a transaction if one
    /// is open anywhere.
    pub(super) fn status_across_shards(&self) -> TxStatus {
        let mut status = TxStatus::Idle;
        for (_, node) in self.tx_shards() {
            match self.conn(node).map_or(TxStatus::Idle, |c| c.status) {
                TxStatus::Failed => return TxStatus::Failed,
                TxStatus::InTransaction => status = TxStatus::InTransaction,
                TxStatus::Idle => {}
            }
        }
        status
    }

    /// The shard whose part of the session's transaction failed, if any.
    pub(super) fn failed_tx_shard(&self) -> Option<ShardId> {
        self.tx_shards()
            .into_iter()
            .find(|(_, node)| self.conn(*node).is_some_and(|c| c.status == TxStatus::Failed))
            .map(|(shard, _)| shard)
    }

    /// Makes `shard` current; inside a transaction, opens the transaction there too.
    async fn go_to_shard(&mut self, shard: ShardId) -> Result<(), ProxyError> {
        if shard == self.shard {
            return Ok(());
        }
        let open = self.tx_shards().first().copied();
        if let Some((from, _)) = open
            && self.tx_savepoint
            && self.in_transaction()
        {
            return Err(savepoint_pins(from));
        }
        self.enter_shard(shard);
        match open {
            Some((_, node)) if self.routing.tx_node.is_none() => self.join_transaction(node).await,
            _ => Ok(()),
        }
    }

    /// Opens the session's transaction on the current shard's primary, with the isolation level and
    /// access mode it has on `from` (a node where it is open).
    async fn join_transaction(&mut self, from: NodeId) -> Result<(), ProxyError> {
        let mode = match self.conns[from.index()].as_mut() {
            Some(c) => c
                .query_rows(
                    "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
                )
                .await
                .map_err(|e| self.error_of(&e))?,
            None => return Err(ProxyError::error("08006", "pgfleet: the transaction's node is gone")),
        };
        let (isolation, read_only) = match mode.as_deref() {
            Ok([row]) => (
                row.first()
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "read committed".into()),
                row.get(1).cloned().flatten().as_deref() == Some("on"),
            ),
            _ => ("read committed".to_owned(), false),
        };
        let begin = format!(
            "BEGIN ISOLATION LEVEL {} {}",
            isolation.to_ascii_uppercase(),
            if read_only { "READ ONLY" } else { "READ WRITE" }
        );
        self.begin_on_primary(&begin).await
    }

    /// Opens a transaction with `begin` on the current shard's primary, connected and brought up to date,
    /// which becomes the shard's transaction node.
    async fn begin_on_primary(&mut self, begin: &str) -> Result<(), ProxyError> {
        let primary = self.shared.fleet.primary(self.shard)?;
        self.connect(primary).await.map_err(|e| self.error_of(&e))?;
        let nothing = Plan::for_request(&Request::default(), &self.statements, &self.rules);
        self.up_to_date(primary, &nothing).await?;
        let conn = self.conns[primary.index()]
            .as_mut()
            .ok_or_else(|| ProxyError::error("08006", "pgfleet: lost the shard's connection"))?;
        match conn.query_rows(begin).await {
            Ok(Ok(_)) => {
                self.routing.tx_node = Some(primary);
                Ok(())
            }
            Ok(Err(frame)) => Err(server_error(&frame)),
            Err(e) => Err(self.error_of(&e)),
        }
    }

    /// Brings the session's connection to `node` up to date for `plan` (settings, prepared statements);
    /// a node that failed loses the connection.
    pub(super) async fn up_to_date(&mut self, node: NodeId, plan: &Plan) -> Result<(), ProxyError> {
        match self.bring_up_to_date(node, plan).await {
            Ok(()) => Ok(()),
            Err(crate::frontend::session::replay::Prepare::Node(e)) => {
                self.conns[node.index()] = None;
                Err(self.error_of(&e))
            }
            Err(crate::frontend::session::replay::Prepare::Refused(e)) => Err(e),
        }
    }

    /// Makes `shard` current with a transaction open on its primary: the session's own, or, outside one,
    /// a transaction the session opens for a statement on several shards.
    pub(super) async fn open_on(&mut self, shard: ShardId) -> Result<(), ProxyError> {
        self.open_on_with(shard, "BEGIN").await
    }

    /// [`Session::open_on`], opening a transaction of pgfleet's own (none open anywhere) with `begin`.
    pub(super) async fn open_on_with(&mut self, shard: ShardId, begin: &str) -> Result<(), ProxyError> {
        let open = self.tx_shards().first().copied();
        if let Some((from, _)) = open
            && from != shard
            && self.tx_savepoint
            && !self.tx_shards().iter().any(|(s, _)| *s == shard)
        {
            return Err(savepoint_pins(from));
        }
        self.enter_shard(shard);
        if self.routing.tx_node.is_some() {
            return Ok(());
        }
        match open {
            Some((_, from)) => self.join_transaction(from).await,
            None => self.begin_on_primary(begin).await,
        }
    }
}

/// Whether a request is only a COMMIT or ROLLBACK of the open transaction (simple or extended), and which.
/// A Bind of a statement prepared in an earlier request counts by that statement's text: pgjdbc prepares
/// its COMMIT as a named statement once and later sends only Bind/Execute.
fn transaction_end(req: &Request, statements: &crate::frontend::state::Statements) -> Option<TxEnd> {
    let mut found = None;
    let mut parsed: Vec<&str> = Vec::new();
    let mut stored;
    for f in &req.frames {
        let text = match f.kind {
            b'Q' => query_text(f.body())?,
            b'P' => {
                let (name, text) = parse_fields(f.body())?;
                parsed.push(name);
                text
            }
            b'B' => {
                let (_, name) = bind_names(f.body())?;
                if parsed.contains(&name) {
                    continue;
                }
                stored = statements
                    .get(name)?
                    .parse
                    .get(5..)
                    .and_then(parse_fields)
                    .map(|(_, q)| q.to_owned())?;
                stored.as_str()
            }
            b'E' | b'S' | b'D' | b'H' => continue,
            _ => return None,
        };
        let statements = crate::router::split::split_statements(text);
        let [one] = statements.as_slice() else {
            return None;
        };
        let words: Vec<String> = one
            .split_whitespace()
            .take(3)
            .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
            .collect();
        let how = match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["COMMIT" | "END"] | ["COMMIT" | "END", "WORK" | "TRANSACTION"] => TxEnd::Commit,
            ["ROLLBACK" | "ABORT"] | ["ROLLBACK" | "ABORT", "WORK" | "TRANSACTION"] => TxEnd::Rollback,
            _ => return None,
        };
        if found.is_some_and(|f| f != how) {
            return None;
        }
        found = Some(how);
    }
    found
}

/// The refusal of a statement that would carry a transaction holding a savepoint to another shard.
fn savepoint_pins(shard: ShardId) -> ProxyError {
    ProxyError::error(
        "0A000",
        format!(
            "pgfleet: this transaction set a savepoint on {shard}, so it cannot go on to another shard: rolling \
             back to the savepoint would keep what the other shard did"
        ),
    )
    .with_hint("Keep transactions that use savepoints on one shard.")
}

/// Whether a request holds a statement that ends a transaction in a way other than a plain COMMIT or
/// ROLLBACK (AND CHAIN, PREPARE TRANSACTION).
fn ends_otherwise(req: &Request) -> bool {
    req.frames.iter().any(|f| {
        let text = match f.kind {
            b'Q' => query_text(f.body()),
            b'P' => parse_fields(f.body()).map(|(_, t)| t),
            _ => None,
        };
        text.is_some_and(|t| {
            crate::router::split::split_statements(t).iter().any(|st| {
                let upper = st.to_ascii_uppercase();
                let words: Vec<&str> = upper.split_whitespace().collect();
                match words.first().copied() {
                    Some("COMMIT" | "END" | "ROLLBACK" | "ABORT") => {
                        words.contains(&"CHAIN") && !words.contains(&"TO")
                    }
                    Some("PREPARE") => words.get(1) == Some(&"TRANSACTION"),
                    _ => false,
                }
            })
        })
    })
}

/// Whether `text` contains `word`, ignoring ASCII case, without allocating.
pub(super) fn contains_ignore_case(text: &str, word: &str) -> bool {
    text.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
}

/// A node's ErrorResponse as the error the client gets.
pub(super) fn server_error(frame: &Frame) -> ProxyError {
    let body = frame.body();
    let field = |f| crate::protocol::messages::error_field(body, f).unwrap_or("");
    ProxyError::error(field(b'C'), field(b'M'))
}

/// The parameter values of a Bind message, `$1` first.
fn bind_params(body: &[u8]) -> Option<Vec<ParamValue<'_>>> {
    let mut at = 0;
    for _ in 0..2 {
        at += body.get(at..)?.iter().position(|b| *b == 0)? + 1;
    }
    let word = |at: usize| -> Option<i16> { Some(i16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?])) };
    let formats_count = usize::try_from(word(at)?).ok()?;
    at += 2;
    let mut formats = Vec::with_capacity(formats_count);
    for i in 0..formats_count {
        formats.push(word(at + 2 * i)?);
    }
    at += 2 * formats_count;
    let count = usize::try_from(word(at)?).ok()?;
    at += 2;
    let mut values = Vec::with_capacity(count);
    for i in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let binary = match formats.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).copied()? == 1,
        };
        if len < 0 {
            values.push(ParamValue::Null);
            continue;
        }
        let bytes = body.get(at..at + len as usize)?;
        at += len as usize;
        values.push(if binary {
            ParamValue::Binary(bytes)
        } else {
            ParamValue::Text(bytes)
        });
    }
    Some(values)
}
