//! The end of a transaction that spans shards: COMMIT with two-phase commit (`shard::twophase`) over the
//! session's own node connections, ROLLBACK on each shard, and the client's answer in the protocol it used.

use super::TxEnd;
use crate::backend::BackendConn;
use crate::cluster::{NodeId, ShardId};
use crate::frontend::request::{End, Plan, Request};
use crate::frontend::session::{Session, SessionError};
use crate::protocol::frame::build;
use crate::protocol::messages::{ProxyError, ready_for_query};
use crate::shard::twophase::{self, CommitOutcome, Participant, ParticipantError, Rows};

impl Session {
    /// Ends a transaction that spans shards: COMMIT with two-phase commit (a transaction that failed on a
    /// shard is rolled back, and answered ROLLBACK, as PostgreSQL answers the COMMIT of a failed one),
    /// ROLLBACK everywhere.
    pub(super) async fn end_across_shards(
        &mut self,
        how: TxEnd,
        req: &Request,
        end: End,
    ) -> Result<(), SessionError> {
        // The session answers the request itself, so a statement it names (pgjdbc's named COMMIT) is
        // recorded here, to be prepared on a node when a later request Binds it.
        let plan = Plan::for_request(req, &self.statements, &self.rules);
        for (name, stmt) in plan.parses {
            self.statements.insert(&name, stmt);
        }
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
    pub(super) async fn commit_everywhere(&mut self) -> Result<(), ProxyError> {
        let open = self.tx_shards();
        let instance = match self.shared.sharding.as_ref() {
            Some(s) => s.instance.clone(),
            None => return Ok(()),
        };
        if open.len() > 1
            && let Some(sharding) = self.shared.sharding.clone()
            && let Err(e) = sharding.decisions.ready(&self.database).await
        {
            self.rollback_everywhere().await;
            return Err(ProxyError::error("55000", e.to_string()));
        }
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
                    let lsn = self.ask_commit_position(*node).await;
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
    pub(super) async fn rollback_everywhere(&mut self) {
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
