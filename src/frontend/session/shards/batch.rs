//! A simple query of several statements whose statements need different shards (`BEGIN; UPDATE ... WHERE
//! id = 1; UPDATE ... WHERE id = 2; COMMIT`): run statement by statement on each one's shard, inside one
//! transaction across them, with PostgreSQL's rules for such a string: without transaction control it is one
//! implicit transaction (committed at its end, rolled back at its first error); `BEGIN` ... `COMMIT` around
//! the statements is an explicit one; processing stops at the first error.

use super::{Answer, TxEnd};
use crate::cluster::ShardId;
use crate::frontend::request::{End, Request};
use crate::frontend::session::{Session, SessionError};
use crate::protocol::frame::build;
use crate::protocol::messages::{ProxyError, ready_for_query};
use crate::shard::plan::{ShardPlan, ShardTarget};

/// What one statement of the string is, for the batch.
enum Part<'a> {
    /// `BEGIN` / `START TRANSACTION` (its text, to open the first shard's transaction with).
    Begin(&'a str),
    /// `COMMIT` / `ROLLBACK`.
    End(TxEnd),
    /// A statement on one shard, or on any.
    Data(&'a str, Option<ShardId>),
    /// A write on several shards (DDL, reference tables, no key condition), answered as one; `same` when
    /// every shard's answer is the same.
    Spread(&'a str, Vec<ShardId>, bool),
}

impl Session {
    /// Runs a multi-statement simple query whose statements need different shards. Refused (before any
    /// statement runs) when a statement needs several shards itself or the transaction control is not
    /// the plain shape above.
    pub(super) async fn run_batch(
        &mut self,
        texts: &[&str],
        plans: &[ShardPlan],
        end: End,
    ) -> Result<(), SessionError> {
        let shard_count = self.shared.fleet.shard_count() as u32;
        let parts = match batch_parts(texts, plans, shard_count) {
            Some(p) => p,
            None => {
                return self
                    .refuse(
                        ProxyError::error(
                            "0A000",
                            "pgfleet: this query string mixes statements for several shards in a way pgfleet cannot \
                             run as one transaction",
                        )
                        .with_hint(
                            "Send the statements one by one (BEGIN, each statement, COMMIT), or keep each statement \
                             on one shard with a condition on its shard key.",
                        ),
                        end,
                    )
                    .await;
            }
        };
        let was_open = self.in_transaction();
        let explicit = matches!(parts.first(), Some(Part::Begin(_)));
        if explicit && was_open {
            // PostgreSQL warns and goes on; the transaction stays the open one.
            tracing::debug!("BEGIN inside an open transaction");
        }
        let implicit = !was_open && !explicit;
        let mut begin: Option<&str> = None;
        let mut out: Vec<u8> = Vec::new();
        for part in &parts {
            match part {
                Part::Begin(text) => {
                    begin = Some(text);
                    out.extend_from_slice(&build(b'C', b"BEGIN\0"));
                }
                Part::End(how) => {
                    let failed = self.failed_tx_shard().is_some();
                    let tag: &[u8] = match how {
                        TxEnd::Commit if !failed => match self.commit_everywhere().await {
                            Ok(()) => b"COMMIT\0",
                            Err(e) => {
                                out.extend_from_slice(&e.encode());
                                break;
                            }
                        },
                        _ => {
                            self.rollback_everywhere().await;
                            b"ROLLBACK\0"
                        }
                    };
                    out.extend_from_slice(&build(b'C', tag));
                }
                Part::Spread(text, shards, same) => {
                    let mut answers = Vec::new();
                    let mut failed = None;
                    for shard in shards {
                        match self.data_in_batch(*shard, text, begin).await {
                            Ok(a) if a.error.is_none() => answers.push((*shard, a)),
                            Ok(a) => {
                                failed = Some(a.error.map(|e| e.raw.to_vec()).unwrap_or_default());
                                break;
                            }
                            Err(e) => {
                                failed = Some(e.encode().to_vec());
                                break;
                            }
                        }
                    }
                    if let Some(error) = failed {
                        out.extend_from_slice(&error);
                        if implicit {
                            self.rollback_everywhere().await;
                        }
                        break;
                    }
                    out.extend_from_slice(&super::several::combine_answers(&answers, *same));
                }
                Part::Data(text, shard) => {
                    let shard = shard.unwrap_or(self.shard);
                    let answer = self.data_in_batch(shard, text, begin).await;
                    match answer {
                        Ok(a) => {
                            a.frames.iter().for_each(|f| out.extend_from_slice(&f.raw));
                            if let Some(e) = a.error {
                                out.extend_from_slice(&e.raw);
                                if implicit {
                                    self.rollback_everywhere().await;
                                }
                                break;
                            }
                        }
                        Err(e) => {
                            out.extend_from_slice(&e.encode());
                            if implicit {
                                self.rollback_everywhere().await;
                            }
                            break;
                        }
                    }
                }
            }
        }
        if implicit
            && self.in_transaction()
            && self.failed_tx_shard().is_none()
            && let Err(e) = self.commit_everywhere().await
        {
            out.extend_from_slice(&e.encode());
        }
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }

    /// One data statement of a batch on `shard`, inside the batch's transaction there (opened with the
    /// batch's BEGIN text when it is the first shard).
    async fn data_in_batch(
        &mut self,
        shard: ShardId,
        text: &str,
        begin: Option<&str>,
    ) -> Result<Answer, ProxyError> {
        self.open_on_with(shard, begin.unwrap_or("BEGIN")).await?;
        let node = self
            .routing
            .tx_node
            .ok_or_else(|| ProxyError::error("08006", "pgfleet: no transaction node on the shard"))?;
        let mut one = Request::default();
        let mut body = text.as_bytes().to_vec();
        body.push(0);
        one.push(super::several::frame_of(build(b'Q', &body)));
        self.capture(node, &one).await
    }
}

/// The batch's statements, or None when its shape is not one pgfleet runs across shards.
fn batch_parts<'a>(texts: &[&'a str], plans: &[ShardPlan], shard_count: u32) -> Option<Vec<Part<'a>>> {
    if texts.len() != plans.len() {
        return None;
    }
    let mut parts = Vec::with_capacity(texts.len());
    for (i, (text, plan)) in texts.iter().zip(plans).enumerate() {
        let first = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(';')
            .to_ascii_uppercase();
        let part = match (&plan.target, first.as_str()) {
            (ShardTarget::Session, "BEGIN" | "START") if i == 0 => Part::Begin(text),
            (ShardTarget::Session, "COMMIT" | "END") if i + 1 == texts.len() => Part::End(TxEnd::Commit),
            (ShardTarget::Session, "ROLLBACK" | "ABORT") if i + 1 == texts.len() => {
                Part::End(TxEnd::Rollback)
            }
            (ShardTarget::One(s), _) => Part::Data(text, Some(*s)),
            (ShardTarget::All | ShardTarget::Several(_), _)
                if plan.write
                    && plan.split.is_none()
                    && plan.copy_in.is_none()
                    && !plan.outside_transaction =>
            {
                let shards = match &plan.target {
                    ShardTarget::Several(v) => v.clone(),
                    _ => (0..shard_count).map(ShardId::new).collect(),
                };
                Part::Spread(text, shards, plan.same_on_every_shard)
            }
            (ShardTarget::Any, _) => Part::Data(text, None),
            // SET, SAVEPOINT, a second BEGIN, statements on several shards: not in a batch across shards.
            _ => return None,
        };
        parts.push(part);
    }
    // An END without a BEGIN in the same string ends a transaction opened before: fine; a BEGIN without
    // an end leaves it open: fine too.
    Some(parts)
}
