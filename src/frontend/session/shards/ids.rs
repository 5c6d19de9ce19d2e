//! `pgfleet_next_id()` in a request to a sharded fleet: each call is replaced by a cluster-unique id
//! (`shard::ids`) before the request is planned, so that an INSERT names its key and goes to its shard.
//! Blocks of ids are reserved from the first shard's `pgfleet.ids` sequence over the session's connection.

use super::contains_ignore_case;
use crate::cluster::ShardId;
use crate::frontend::request::{End, Request};
use crate::frontend::session::{Session, SessionError};
use crate::protocol::frame::build;
use crate::protocol::messages::{ProxyError, parse_fields, query_text};
use crate::shard::ids::{ID_BLOCK, ID_FUNCTION, NEXT_BLOCK, id_calls, with_ids};

/// What the id step made of a request.
pub(in crate::frontend::session) enum Ids {
    /// It calls no `pgfleet_next_id()`.
    Unchanged,
    /// The request with each call replaced by an id.
    Rewritten(Request),
    /// It was refused (the client has its answer).
    Answered,
}

impl Session {
    /// Replaces the request's `pgfleet_next_id()` calls with cluster-unique ids: in a simple query, or in a
    /// Parse of the unnamed statement (which drivers send again for each execution). A named prepared
    /// statement would run every execution with the same ids, so it is refused.
    pub(in crate::frontend::session) async fn assign_ids(
        &mut self,
        req: &Request,
        end: End,
    ) -> Result<Ids, SessionError> {
        let texts: Vec<(usize, &str, Option<&str>)> = req
            .frames
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f.kind {
                b'Q' => query_text(f.body()).map(|t| (i, t, None)),
                b'P' => parse_fields(f.body()).map(|(name, t)| (i, t, Some(name))),
                _ => None,
            })
            .filter(|(_, t, _)| contains_ignore_case(t, ID_FUNCTION))
            .collect();
        if texts.is_empty() {
            return Ok(Ids::Unchanged);
        }
        let mut out = Request::default();
        let mut replaced: Vec<(usize, crate::protocol::Frame)> = Vec::new();
        for (i, text, name) in texts {
            let calls = id_calls(text);
            if calls.is_empty() {
                continue;
            }
            if name.is_some_and(|n| !n.is_empty()) {
                let e = ProxyError::error(
                    "0A000",
                    format!(
                        "pgfleet: {ID_FUNCTION}() in a named prepared statement would give every execution the \
                         same id"
                    ),
                )
                .with_hint("Use the simple query protocol or the unnamed statement (for JDBC, prepareThreshold=0).");
                self.refuse(e, end).await?;
                return Ok(Ids::Answered);
            }
            let ids = match self.take_ids(calls.len()).await {
                Ok(ids) => ids,
                Err(e) => {
                    self.refuse(e, end).await?;
                    return Ok(Ids::Answered);
                }
            };
            let new_text = with_ids(text, &calls, &ids);
            let frame = match name {
                None => build(b'Q', &super::several::cstring(&new_text)),
                Some(_) => match super::several::parse_with_text(req.frames[i].body(), &new_text) {
                    Some(frame) => frame,
                    None => continue,
                },
            };
            replaced.push((
                i,
                crate::protocol::Frame {
                    kind: frame[0],
                    raw: frame,
                },
            ));
        }
        if replaced.is_empty() {
            return Ok(Ids::Unchanged);
        }
        for (i, f) in req.frames.iter().enumerate() {
            match replaced.iter().find(|(at, _)| *at == i) {
                Some((_, new)) => out.push(new.clone()),
                None => out.push(f.clone()),
            };
        }
        Ok(Ids::Rewritten(out))
    }

    /// `n` ids, reserving a block from the first shard's `pgfleet.ids` when this process has too few.
    async fn take_ids(&mut self, n: usize) -> Result<Vec<i64>, ProxyError> {
        let Some(sharding) = self.shared.sharding.clone() else {
            return Err(ProxyError::error(
                "0A000",
                format!("pgfleet: {ID_FUNCTION}() needs a sharded fleet"),
            ));
        };
        if n as i64 > ID_BLOCK {
            return Err(ProxyError::error(
                "0A000",
                format!("pgfleet: at most {ID_BLOCK} calls of {ID_FUNCTION}() in one statement"),
            ));
        }
        if let Some(ids) = sharding.ids.take(&self.database, n) {
            return Ok(ids);
        }
        // The sequence lives beside the decision table, created by the database's first recovery.
        sharding
            .decisions
            .ready(&self.database)
            .await
            .map_err(|e| ProxyError::error("55000", e.to_string()))?;
        let primary = self.shared.fleet.primary(ShardId::default())?;
        self.connect(primary).await.map_err(|e| self.error_of(&e))?;
        let first = match self.conns[primary.index()].as_mut() {
            Some(c) => {
                c.applied.unnamed = None;
                c.query_value(NEXT_BLOCK).await
            }
            None => {
                return Err(ProxyError::error(
                    "08006",
                    "pgfleet: lost the first shard's connection",
                ));
            }
        };
        self.release_between_transactions(primary);
        let first = match first {
            Ok(Some(v)) => v.parse::<i64>().ok(),
            Ok(None) => None,
            Err(e) => return Err(self.error_of(&e)),
        }
        .ok_or_else(|| {
            ProxyError::error(
                "55000",
                "pgfleet: could not reserve ids from pgfleet.ids on the first shard",
            )
        })?;
        sharding.ids.reserved(&self.database, first);
        sharding.ids.take(&self.database, n).ok_or_else(|| {
            ProxyError::error(
                "55000",
                "pgfleet: the reserved block of ids is smaller than asked",
            )
        })
    }
}
