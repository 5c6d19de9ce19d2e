//! Sharded fleets (`nodes[i].shard`): the shard each request runs on, decided by `shard::plan`; an open
//! transaction carried to every shard it touches (a BEGIN of the same isolation level on the shard's
//! primary when it first gets there); statements that need several shards, run on each and answered as
//! one; and the end of a transaction that spans shards, with two-phase commit (`shard::twophase`).
//!
//! A session keeps one routing state per shard (`Session::enter_shard`): positions, read homes and pins of
//! different servers never mix. An unsharded fleet never gets here.

use super::{Session, SessionError};
use crate::backend::{BackendConn, BackendError};
use crate::cluster::{NodeId, ShardId};
use crate::frontend::request::{End, Plan, Request};
use crate::protocol::frame::build;
use crate::protocol::messages::{ProxyError, bind_names, parse_fields, query, query_text, ready_for_query};
use crate::protocol::{Frame, TxStatus};
use crate::shard::plan::{ParamValue, Params, ShardPlan, ShardTarget, combined_target, plan_all};
use crate::shard::twophase::{self, CommitOutcome, Participant, ParticipantError, Rows};
use crate::shard::{Sharding, ShardingPlacement};

/// What the session does with a request after its shard step.
pub(super) enum Step {
    /// Run it as usual on the session's current shard.
    Run,
    /// It was answered (refused, run on several shards, or a transaction ended across shards).
    Answered,
}

/// How a transaction that spans shards ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxEnd {
    Commit,
    Rollback,
}

/// What one shard answered to a statement the session ran there on the client's behalf.
struct Answer {
    /// RowDescription, DataRows, CommandComplete, notices: everything before ReadyForQuery but the error.
    frames: Vec<Frame>,
    /// The shard's ErrorResponse, if the statement failed.
    error: Option<Frame>,
}

impl Session {
    /// Sharded fleets, before a request runs: moves the session to the shard the request needs (carrying
    /// an open transaction there), or answers the request itself when it needs several shards or ends a
    /// transaction that spans them.
    pub(super) async fn shard_step(&mut self, req: &Request, end: End) -> Result<Step, SessionError> {
        let Some(sharding) = self.shared.sharding.clone() else {
            return Ok(Step::Run);
        };
        if let Some(how) = transaction_end(req)
            && self.tx_shards().len() > 1
        {
            self.end_across_shards(how, req, end).await?;
            return Ok(Step::Answered);
        }
        // A transaction that failed on one shard fails everywhere until it ends, as PostgreSQL's does: the
        // failed shard answers every request with 25P02.
        if let Some(failed) = self.failed_tx_shard() {
            self.enter_shard(failed);
            return Ok(Step::Run);
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
                                st.parse.get(5..).and_then(parse_fields).map(|(_, q)| q.to_owned())
                            });
                            stored.as_deref().unwrap_or("")
                        }
                    };
                    let values = bind_params(f.body()).unwrap_or_default();
                    plans.extend(plan_all(text, &sharding.rules, &Params::Known(&values), &placement)?);
                }
                _ => {}
            }
        }
        Ok(plans)
    }

    /// The shards with an open transaction of this session.
    fn tx_shards(&self) -> Vec<(ShardId, NodeId)> {
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
    fn failed_tx_shard(&self) -> Option<ShardId> {
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
                row.first().cloned().flatten().unwrap_or_else(|| "read committed".into()),
                row.get(1).cloned().flatten().as_deref() == Some("on"),
            ),
            _ => ("read committed".to_owned(), false),
        };
        let begin = format!(
            "BEGIN ISOLATION LEVEL {} {}",
            isolation.to_ascii_uppercase(),
            if read_only { "READ ONLY" } else { "READ WRITE" }
        );
        let primary = self.shared.fleet.primary(self.shard)?;
        self.connect(primary).await.map_err(|e| self.error_of(&e))?;
        let nothing = Plan::for_request(&Request::default(), &self.statements, &self.rules);
        if let Err(e) = self.bring_up_to_date(primary, &nothing).await {
            return Err(match e {
                super::replay::Prepare::Node(e) => self.error_of(&e),
                super::replay::Prepare::Refused(e) => e,
            });
        }
        let conn = self.conns[primary.index()]
            .as_mut()
            .ok_or_else(|| ProxyError::error("08006", "pgfleet: lost the shard's connection"))?;
        match conn.query_rows(&begin).await {
            Ok(Ok(_)) => {
                self.routing.tx_node = Some(primary);
                Ok(())
            }
            Ok(Err(frame)) => Err(server_error(&frame)),
            Err(e) => Err(self.error_of(&e)),
        }
    }

    /// Runs a request that needs several shards: a simple query of one statement, in the session's
    /// transaction (opened on each shard) or in one of its own committed across them.
    async fn run_on_shards(
        &mut self,
        req: &Request,
        end: End,
        plans: &[ShardPlan],
        shards: Vec<ShardId>,
    ) -> Result<(), SessionError> {
        let (sql, plan) = match (req.frames.as_slice(), plans) {
            ([q], [plan]) if q.kind == b'Q' => (query_text(q.body()).unwrap_or("").to_owned(), plan),
            _ => {
                return self
                    .refuse(
                        ProxyError::error(
                            "0A000",
                            "pgfleet: a statement that needs several shards must come alone in a simple query",
                        )
                        .with_hint(
                            "Send it on its own with the simple query protocol, or add a condition on the \
                             shard key so that it runs on one shard.",
                        ),
                        end,
                    )
                    .await;
            }
        };
        if plan.split.is_some() || plan.copy_in.is_some() || plan.outside_transaction {
            return self
                .refuse(
                    ProxyError::error(
                        "0A000",
                        "pgfleet: this statement needs its rows split over the shards or must run outside a \
                         transaction on each shard, which this version does not do yet",
                    )
                    .with_hint("Send one statement per shard key value."),
                    end,
                )
                .await;
        }
        if !plan.write {
            return self.read_across_shards(&sql, shards, end).await;
        }
        let explicit = self.in_transaction();
        let mut answers: Vec<(ShardId, Answer)> = Vec::new();
        for shard in shards {
            if let Err(e) = self.open_on(shard).await {
                if !explicit {
                    self.rollback_everywhere().await;
                }
                return self.refuse(e, end).await;
            }
            let node = self.routing.tx_node;
            let answer = match node {
                Some(n) => self.capture(n, &sql).await,
                None => Err(ProxyError::error("08006", "pgfleet: no transaction node on the shard")),
            };
            match answer {
                Ok(a) if a.error.is_none() => answers.push((shard, a)),
                Ok(a) => {
                    let frame = a.error.unwrap_or_else(|| build(b'E', b""));
                    if !explicit {
                        self.rollback_everywhere().await;
                    }
                    let mut out = frame.raw.to_vec();
                    out.extend_from_slice(&ready_for_query(self.status().byte()));
                    return self.write_client(&out).await;
                }
                Err(e) => {
                    if !explicit {
                        self.rollback_everywhere().await;
                    }
                    return self.refuse(e, end).await;
                }
            }
        }
        let mut out = combine_answers(&answers, plan.same_on_every_shard);
        if !explicit {
            if let Err(e) = self.commit_everywhere().await {
                return self.refuse(e, end).await;
            }
        }
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }

    /// Makes `shard` current with a transaction open on its primary: the session's own, or, outside one,
    /// a transaction the session opens for a statement on several shards.
    async fn open_on(&mut self, shard: ShardId) -> Result<(), ProxyError> {
        let open = self.tx_shards().first().copied();
        self.enter_shard(shard);
        if self.routing.tx_node.is_some() {
            return Ok(());
        }
        match open {
            Some((_, from)) => self.join_transaction(from).await,
            None => {
                let primary = self.shared.fleet.primary(self.shard)?;
                self.connect(primary).await.map_err(|e| self.error_of(&e))?;
                let nothing = Plan::for_request(&Request::default(), &self.statements, &self.rules);
                if let Err(e) = self.bring_up_to_date(primary, &nothing).await {
                    return Err(match e {
                        super::replay::Prepare::Node(e) => self.error_of(&e),
                        super::replay::Prepare::Refused(e) => e,
                    });
                }
                let conn = self.conns[primary.index()]
                    .as_mut()
                    .ok_or_else(|| ProxyError::error("08006", "pgfleet: lost the shard's connection"))?;
                match conn.query_rows("BEGIN").await {
                    Ok(Ok(_)) => {
                        self.routing.tx_node = Some(primary);
                        Ok(())
                    }
                    Ok(Err(frame)) => Err(server_error(&frame)),
                    Err(e) => Err(self.error_of(&e)),
                }
            }
        }
    }

    /// A read on several shards: each shard's rows from the node the routing policy gives it (its node
    /// in the session's transaction), merged into one result as PostgreSQL would give it.
    async fn read_across_shards(
        &mut self,
        sql: &str,
        shards: Vec<ShardId>,
        end: End,
    ) -> Result<(), SessionError> {
        let sharding = match self.shared.sharding.clone() {
            Some(s) => s,
            None => return Ok(()),
        };
        let rules = &sharding.rules;
        let merge_plan = match crate::shard::merge::analyze(sql, &|name: &sqlparser::ast::ObjectName| {
            rules.shard_key_of(name)
        }) {
            Ok(p) => p,
            Err(e) => return self.refuse(e, end).await,
        };
        let mut merger = crate::shard::merge::Merger::new(&merge_plan.merge, shards.len());
        for (i, shard) in shards.into_iter().enumerate() {
            let node = match self.read_node(shard).await {
                Ok(n) => n,
                Err(e) => return self.refuse(e, end).await,
            };
            let answer = match self.capture(node, &merge_plan.shard_sql).await {
                Ok(a) => a,
                Err(e) => return self.refuse(e, end).await,
            };
            self.release_between_transactions(node);
            if let Some(error) = answer.error {
                let mut out = error.raw.to_vec();
                out.extend_from_slice(&ready_for_query(self.status().byte()));
                return self.write_client(&out).await;
            }
            for f in &answer.frames {
                if let Err(e) = merger.feed(i, f) {
                    return self.refuse(e, end).await;
                }
            }
        }
        let mut out = match merger.finish() {
            Ok(frames) => frames,
            Err(e) => return self.refuse(e, end).await,
        };
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }

    /// The node a read on `shard` uses: the shard's transaction node, else the routing policy's first
    /// choice among the shard's nodes (connected and up to date).
    async fn read_node(&mut self, shard: ShardId) -> Result<NodeId, ProxyError> {
        if self.in_transaction() {
            self.open_on(shard).await?;
            return self
                .routing
                .tx_node
                .ok_or_else(|| ProxyError::error("08006", "pgfleet: no transaction node on the shard"));
        }
        self.enter_shard(shard);
        let read = Plan::for_request(&Request::default(), &self.statements, &self.rules);
        let mut order = std::mem::take(&mut self.candidates);
        let chosen = self
            .candidates(&read, (&Request::default(), End::Sync), &mut order)
            .await;
        let first = order.first().copied();
        self.candidates = order;
        chosen?;
        let node = first.ok_or_else(|| {
            ProxyError::error("08006", format!("pgfleet: no node of {shard} is available"))
        })?;
        self.connect(node).await.map_err(|e| self.error_of(&e))?;
        if let Err(e) = self.bring_up_to_date(node, &read).await {
            return Err(match e {
                super::replay::Prepare::Node(e) => self.error_of(&e),
                super::replay::Prepare::Refused(e) => e,
            });
        }
        Ok(node)
    }

    /// Runs `sql` as a simple query on the session's connection to `node` and keeps what it answered.
    async fn capture(&mut self, node: NodeId, sql: &str) -> Result<Answer, ProxyError> {
        let Some(conn) = self.conns[node.index()].as_mut() else {
            return Err(ProxyError::error("08006", "pgfleet: lost the shard's connection"));
        };
        conn.applied.unnamed = None;
        match capture_on(conn, sql).await {
            Ok(a) => Ok(a),
            Err(e) => {
                self.conns[node.index()] = None;
                Err(self.error_of(&e))
            }
        }
    }

    /// Ends a transaction that spans shards: COMMIT with two-phase commit (a transaction that failed on a
    /// shard is rolled back, and answered ROLLBACK, as PostgreSQL answers the COMMIT of a failed one),
    /// ROLLBACK everywhere.
    async fn end_across_shards(&mut self, how: TxEnd, req: &Request, end: End) -> Result<(), SessionError> {
        let failed = self.failed_tx_shard().is_some();
        let result = match how {
            TxEnd::Commit if !failed => self.commit_everywhere().await.map(|()| "COMMIT"),
            _ => {
                self.rollback_everywhere().await;
                Ok("ROLLBACK")
            }
        };
        match result {
            Ok(tag) => {
                let out = completion(req, tag, self.status().byte());
                self.write_client(&out).await
            }
            Err(e) => self.refuse(e, end).await,
        }
    }

    /// Commits the session's transaction on every shard where it is open: a plain COMMIT on one, two-phase
    /// commit on several. Records each shard's commit position for the consistency levels before the
    /// client hears of the commit. The transaction is over whatever the outcome.
    async fn commit_everywhere(&mut self) -> Result<(), ProxyError> {
        let open = self.tx_shards();
        let instance = match self.shared.sharding.as_ref() {
            Some(s) => s.instance.clone(),
            None => return Ok(()),
        };
        let outcome = {
            let mut parts: Vec<(ShardId, NodeParticipant<'_>)> = Vec::new();
            let mut conns: Vec<Option<&mut crate::backend::PooledConn>> =
                self.conns.iter_mut().map(Option::as_mut).collect();
            for (shard, node) in &open {
                if let Some(conn) = conns.get_mut(node.index()).and_then(Option::take) {
                    parts.push((*shard, NodeParticipant(conn)));
                }
            }
            let mut refs: Vec<(ShardId, &mut NodeParticipant<'_>)> =
                parts.iter_mut().map(|(s, p)| (*s, p)).collect();
            twophase::commit(&instance, &mut refs).await
        };
        let result = match outcome {
            Ok(CommitOutcome::Committed { unfinished, .. }) => {
                for (shard, e) in unfinished {
                    tracing::warn!(shard = %shard, error = %e, "COMMIT PREPARED failed; recovery will finish it");
                }
                for (shard, node) in &open {
                    let lsn = match self.conns[node.index()].as_mut() {
                        Some(c) => c
                            .query_value("SELECT pg_current_wal_lsn()::text")
                            .await
                            .ok()
                            .flatten()
                            .and_then(|v| v.parse().ok()),
                        None => None,
                    };
                    if let Some(lsn) = lsn {
                        self.shared.fleet.positions(*shard).acknowledged(lsn);
                    }
                    self.enter_shard(*shard);
                    self.routing.wrote_at(lsn);
                }
                Ok(())
            }
            Ok(CommitOutcome::RolledBack { shard }) => Err(ProxyError::error(
                "25P02",
                format!("pgfleet: the transaction had failed on {shard} and was rolled back everywhere"),
            )),
            Err(e) => {
                let err = ProxyError::error(e.sqlstate(), e.to_string());
                Err(match e.hint() {
                    Some(h) => err.with_hint(h),
                    None => err,
                })
            }
        };
        self.transaction_over(&open);
        result
    }

    /// Rolls back the session's transaction on every shard where it is open.
    async fn rollback_everywhere(&mut self) {
        let open = self.tx_shards();
        for (_, node) in &open {
            if let Some(c) = self.conns[node.index()].as_mut()
                && c.query_rows("ROLLBACK").await.is_err()
            {
                self.conns[node.index()] = None;
            }
        }
        self.transaction_over(&open);
    }

    /// Forgets a transaction that ended on `open`'s shards; under transaction pooling their connections go
    /// back to the pools.
    fn transaction_over(&mut self, open: &[(ShardId, NodeId)]) {
        for (shard, node) in open {
            self.enter_shard(*shard);
            self.routing.tx_node = None;
            self.release_between_transactions(*node);
        }
    }
}

/// A session's node connection as a two-phase-commit participant.
struct NodeParticipant<'a>(&'a mut crate::backend::PooledConn);

impl Participant for NodeParticipant<'_> {
    async fn execute(&mut self, sql: &str) -> Result<Rows, ParticipantError> {
        let conn: &mut BackendConn = self.0;
        match conn.query_rows(sql).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(frame)) => {
                let body = frame.body();
                let field = |f| crate::protocol::messages::error_field(body, f).map(str::to_owned);
                Err(ParticipantError::Server {
                    code: field(b'C').unwrap_or_else(|| "XX000".into()),
                    message: field(b'M').unwrap_or_default(),
                    detail: field(b'D'),
                })
            }
            Err(e) => Err(ParticipantError::Connection(e.to_string())),
        }
    }
}

/// Runs `sql` on `conn` and collects its answer up to ReadyForQuery.
async fn capture_on(conn: &mut BackendConn, sql: &str) -> Result<Answer, BackendError> {
    conn.write_all(&query(sql)).await?;
    let mut answer = Answer {
        frames: Vec::new(),
        error: None,
    };
    loop {
        let f = conn.read_frame().await?;
        match f.kind {
            b'Z' => {
                conn.status = TxStatus::from_ready_body(f.body());
                return Ok(answer);
            }
            b'E' if answer.error.is_none() => answer.error = Some(f),
            b'E' => {}
            _ => answer.frames.push(f),
        }
    }
}

/// One answer for the client from each shard's answer to the same write: a statement with the same
/// result everywhere (DDL, reference tables) answers as the first shard did; otherwise rows returned are
/// concatenated and the affected-row counts of the command tags added.
fn combine_answers(answers: &[(ShardId, Answer)], same_everywhere: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let Some((_, first)) = answers.first() else {
        return out;
    };
    if same_everywhere {
        for f in &first.frames {
            out.extend_from_slice(&f.raw);
        }
        return out;
    }
    let mut described = false;
    let mut tag: Option<(String, u64)> = None;
    for (_, a) in answers {
        for f in &a.frames {
            match f.kind {
                b'T' if described => {}
                b'T' => {
                    described = true;
                    out.extend_from_slice(&f.raw);
                }
                b'C' => {
                    let text = crate::protocol::messages::command_tag(f.body()).unwrap_or("");
                    let (head, count) = match text.rsplit_once(' ') {
                        Some((head, n)) if n.parse::<u64>().is_ok() => (head.to_owned(), n.parse().unwrap_or(0)),
                        _ => (text.to_owned(), 0),
                    };
                    tag = Some(match tag {
                        Some((h, n)) => (h, n + count),
                        None => (head, count),
                    });
                }
                _ => out.extend_from_slice(&f.raw),
            }
        }
    }
    if let Some((head, count)) = tag {
        let mut body = format!("{head} {count}").into_bytes();
        body.push(0);
        out.extend_from_slice(&build(b'C', &body));
    }
    out
}

/// Whether a request is only a COMMIT or ROLLBACK of the open transaction (simple or extended), and which.
fn transaction_end(req: &Request) -> Option<TxEnd> {
    let mut found = None;
    for f in &req.frames {
        let text = match f.kind {
            b'Q' => query_text(f.body())?,
            b'P' => parse_fields(f.body())?.1,
            b'B' | b'E' | b'S' | b'D' | b'H' => continue,
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

/// The client's answer to a COMMIT or ROLLBACK the session carried out itself, in the protocol it used.
fn completion(req: &Request, tag: &str, status: u8) -> Vec<u8> {
    let mut tag_body = tag.as_bytes().to_vec();
    tag_body.push(0);
    let mut out = Vec::new();
    for f in &req.frames {
        match f.kind {
            b'Q' => {
                out.extend_from_slice(&build(b'C', &tag_body));
                out.extend_from_slice(&ready_for_query(status));
            }
            b'P' => out.extend_from_slice(&build(b'1', b"")),
            b'B' => out.extend_from_slice(&build(b'2', b"")),
            b'D' => out.extend_from_slice(&build(b'n', b"")),
            b'E' => out.extend_from_slice(&build(b'C', &tag_body)),
            b'S' => out.extend_from_slice(&ready_for_query(status)),
            _ => {}
        }
    }
    out
}

/// A node's ErrorResponse as the error the client gets.
fn server_error(frame: &Frame) -> ProxyError {
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
