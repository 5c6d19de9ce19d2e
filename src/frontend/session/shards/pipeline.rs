//! Extended-protocol requests across shards that drivers send as batches: a pipeline of executions ended
//! by one Sync (pgjdbc's `executeBatch`, psycopg's `executemany`) whose executions need different shards,
//! and a prepared multi-row INSERT whose rows belong to several shards. Each execution (or each shard's
//! share of the rows) runs on its shard inside one transaction across them: the client's, or, as PostgreSQL
//! runs everything up to a Sync, one implicit transaction committed (with two-phase commit) at the Sync and
//! rolled back at the first error, after which the rest of the pipeline is skipped.

use super::Answer;
use crate::cluster::ShardId;
use crate::frontend::request::{End, Request};
use crate::frontend::session::{Session, SessionError};
use crate::protocol::Frame;
use crate::protocol::frame::build;
use crate::protocol::messages::{BindParts, ProxyError, bind_names, parse_fields, ready_for_query, sync};
use crate::shard::plan::{ShardPlan, ShardTarget, combined_target};

impl Session {
    /// Runs a pipeline whose executions need different shards, execution by execution.
    pub(super) async fn run_pipeline(&mut self, req: &Request, end: End) -> Result<(), SessionError> {
        let Some(sharding) = self.shared.sharding.clone() else {
            return Ok(());
        };
        if end != End::Sync {
            let e = ProxyError::error(
                "0A000",
                "pgfleet: statements for several shards in a batch left open by Flush are not supported",
            )
            .with_hint("End the batch with Sync.");
            return self.refuse(e, end).await;
        }
        // Each execution with the frames before it (Parse, Describe, Close), checked before any runs.
        let mut units: Vec<(ShardId, Request)> = Vec::new();
        let mut current = Request::default();
        // The Parse frames seen so far: a later execution's Bind names a statement an earlier one parsed,
        // which the session records only once it ran.
        let mut parses: Vec<Frame> = Vec::new();
        for f in req.frames.iter().filter(|f| !matches!(f.kind, b'S' | b'H')) {
            current.push(f.clone());
            if f.kind == b'P' {
                parses.push(f.clone());
            }
            if f.kind != b'E' {
                continue;
            }
            let unit = std::mem::take(&mut current);
            let mut planned = Request::default();
            parses
                .iter()
                .chain(unit.frames.iter().filter(|f| f.kind != b'P'))
                .for_each(|f| {
                    planned.push(f.clone());
                });
            let plans = match self.shard_plans(&planned, &sharding) {
                Ok(p) => p,
                Err(e) => return self.refuse(e, end).await,
            };
            let shard = match combined_target(&plans) {
                ShardTarget::One(s) => s,
                ShardTarget::Any | ShardTarget::Session => self.shard,
                _ => {
                    let e = ProxyError::error(
                        "0A000",
                        "pgfleet: a statement that needs several shards cannot be part of a batch across shards",
                    )
                    .with_hint("Execute it on its own, ended by its own Sync.");
                    return self.refuse(e, end).await;
                }
            };
            units.push((shard, unit));
        }
        if !current.frames.is_empty() {
            // Frames after the last Execute (a trailing Close or Describe): they run with the last shard's.
            match units.last_mut() {
                Some((_, last)) => current.frames.iter().for_each(|f| {
                    last.push(f.clone());
                }),
                None => units.push((self.shard, current)),
            }
        }
        let work = units
            .into_iter()
            .map(|(shard, mut unit)| {
                unit.push(frame_of(sync()));
                (shard, unit)
            })
            .collect();
        self.run_units(work, end, None).await
    }

    /// A prepared multi-row INSERT whose rows belong to several shards: each shard's rows as an unnamed
    /// statement of their own, with only the parameters they use.
    pub(super) async fn run_split_prepared(
        &mut self,
        req: &Request,
        end: End,
        plan: &ShardPlan,
    ) -> Result<(), SessionError> {
        let (Some(split), Some(picks)) = (plan.split.as_ref(), plan.split_params.as_ref()) else {
            return Ok(());
        };
        let Some(work) = split_requests(req, &self.statements, split, picks) else {
            let e = ProxyError::error(
                "0A000",
                "pgfleet: this prepared multi-row INSERT cannot be split over the shards",
            )
            .with_hint(
                "Send it as one Parse, Bind and Execute ended by Sync, or insert each shard's rows apart.",
            );
            return self.refuse(e, end).await;
        };
        // One answer for the client's one execution: the row counts added, one BindComplete, and a
        // ParseComplete only for a Parse the client sent.
        let parsed = req.frames.iter().any(|f| f.kind == b'P');
        self.run_units(work, end, Some(parsed)).await
    }

    /// Runs each unit (a request ended by Sync) on its shard inside one transaction across them, and answers
    /// the client with every unit's answer up to the first error, then one ReadyForQuery.
    /// With `combined` (a split statement), the units' answers become one (`Some(true)` when the client
    /// sent the Parse).
    async fn run_units(
        &mut self,
        work: Vec<(ShardId, Request)>,
        end: End,
        combined: Option<bool>,
    ) -> Result<(), SessionError> {
        let explicit = self.in_transaction();
        let mut out: Vec<u8> = Vec::new();
        let mut failed = false;
        let mut answers = Vec::new();
        for (shard, unit) in work {
            let answer: Result<Answer, ProxyError> = match self.open_on(shard).await {
                Ok(()) => match self.routing.tx_node {
                    Some(node) => self.capture(node, &unit).await,
                    None => Err(ProxyError::error(
                        "08006",
                        "pgfleet: no transaction node on the shard",
                    )),
                },
                Err(e) => Err(e),
            };
            match answer {
                Ok(a) if combined.is_some() && a.error.is_none() => answers.push((shard, a)),
                Ok(a) => {
                    if combined.is_none() {
                        a.frames.iter().for_each(|f| out.extend_from_slice(&f.raw));
                    }
                    if let Some(e) = a.error {
                        out.extend_from_slice(&e.raw);
                        failed = true;
                    }
                }
                Err(e) => {
                    out.extend_from_slice(&e.encode());
                    failed = true;
                }
            }
            if failed {
                break;
            }
        }
        if let (Some(client_parsed), false) = (combined, failed) {
            let all = super::several::combine_answers(&answers, false);
            out = if client_parsed {
                all
            } else {
                super::several::without_messages(&all, b'1')
            };
        }
        if !explicit {
            if failed {
                self.rollback_everywhere().await;
            } else if let Err(e) = self.commit_everywhere().await {
                return self.refuse(e, end).await;
            }
        }
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }
}

/// Per shard, the request that inserts that shard's rows: Parse of its text (parameter types picked from the
/// original Parse), Bind of the picked parameters, the original Describe and Execute, Sync.
fn split_requests(
    req: &Request,
    statements: &crate::frontend::state::Statements,
    split: &[(ShardId, String)],
    picks: &[Vec<usize>],
) -> Option<Vec<(ShardId, Request)>> {
    let bind = req.frames.iter().find(|f| f.kind == b'B')?;
    let (_, statement) = bind_names(bind.body())?;
    let parse_body: Vec<u8> = match req.frames.iter().find(|f| f.kind == b'P') {
        Some(p) => p.body().to_vec(),
        None => statements.get(statement)?.parse.get(5..)?.to_vec(),
    };
    let types = parse_types(&parse_body)?;
    let bind = BindParts::read(bind.body())?;
    let describe_portal = req
        .frames
        .iter()
        .any(|f| f.kind == b'D' && f.body().first() == Some(&b'P'));
    let mut out = Vec::with_capacity(split.len());
    for ((shard, text), picked) in split.iter().zip(picks) {
        let mut p = cstring("");
        p.extend_from_slice(&cstring(text));
        let picked_types: Vec<u32> = picked
            .iter()
            .map(|i| types.get(i - 1).copied().unwrap_or(0))
            .collect();
        p.extend_from_slice(&(picked_types.len() as i16).to_be_bytes());
        picked_types
            .iter()
            .for_each(|t| p.extend_from_slice(&t.to_be_bytes()));
        let mut one = Request::default();
        one.push(frame_of(build(b'P', &p)));
        one.push(frame_of(build(b'B', &bind.picked(picked)?)));
        if describe_portal {
            one.push(frame_of(build(b'D', b"P\0")));
        }
        one.push(frame_of(build(b'E', b"\0\0\0\0\0")));
        one.push(frame_of(sync()));
        out.push((*shard, one));
    }
    Some(out)
}

/// The parameter type OIDs a Parse body names (0: unspecified).
fn parse_types(body: &[u8]) -> Option<Vec<u32>> {
    let (name, text) = parse_fields(body)?;
    let at = name.len() + 1 + text.len() + 1;
    let count = usize::try_from(i16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?)).ok()?;
    (0..count)
        .map(|i| {
            let from = at + 2 + 4 * i;
            Some(u32::from_be_bytes(body.get(from..from + 4)?.try_into().ok()?))
        })
        .collect()
}

fn cstring(text: &str) -> Vec<u8> {
    super::several::cstring(text)
}

fn frame_of(raw: bytes::Bytes) -> Frame {
    super::several::frame_of(raw)
}
