//! `COPY table (columns) FROM STDIN` into a sharded table: the COPY runs on every shard's primary in one
//! transaction, the client's data is split row by row (`shard::copy_rows`) so that each shard receives
//! exactly its rows, byte for byte, and the whole COPY commits on every shard or on none.

use tokio::io::AsyncReadExt;

use super::Answer;
use crate::backend::BackendError;
use crate::cluster::{NodeId, ShardId};
use crate::frontend::request::{End, Request};
use crate::frontend::session::{Session, SessionError};
use crate::protocol::frame::build;
use crate::protocol::messages::{ProxyError, query, query_text, ready_for_query};
use crate::protocol::{Frame, TxStatus};
use crate::shard::copy_rows::{CopySplitter, KeyField, parse_copy_from};
use crate::shard::hash::shard_for;
use crate::shard::plan::ShardPlan;

impl Session {
    /// Runs a COPY FROM STDIN into a sharded table (a simple query) across every shard.
    pub(super) async fn copy_into_shards(
        &mut self,
        req: &Request,
        end: End,
        plan: &ShardPlan,
    ) -> Result<(), SessionError> {
        let (Some(copy_in), [q]) = (plan.copy_in.as_ref(), req.frames.as_slice()) else {
            return self.refuse(not_simple(), end).await;
        };
        if q.kind != b'Q' {
            return self.refuse(not_simple(), end).await;
        }
        let sql = query_text(q.body()).unwrap_or("").to_owned();
        let statement = match parse_copy_from(&sql) {
            Ok(s) => s,
            Err(e) => return self.refuse(e.to_proxy_error(), end).await,
        };
        let column = match statement.columns.as_ref().and_then(|c| c.get(copy_in.key_index)) {
            Some(c) => c.clone(),
            None => String::new(),
        };
        let shards = self.shared.fleet.shard_count() as u32;
        let explicit = self.in_transaction();
        // The transaction first on every shard (joining it asks a shard with it open, which must not be
        // in COPY yet), then COPY on every shard, in shard order; the client hears CopyInResponse once all
        // are ready.
        let mut nodes: Vec<(ShardId, NodeId)> = Vec::new();
        for s in 0..shards {
            let shard = ShardId::new(s);
            let opened = match self.open_on(shard).await {
                Ok(()) => self
                    .routing
                    .tx_node
                    .ok_or_else(|| ProxyError::error("08006", "pgfleet: no transaction node on the shard")),
                Err(e) => Err(e),
            };
            match opened {
                Ok(node) => nodes.push((shard, node)),
                Err(e) => {
                    if !explicit {
                        self.rollback_everywhere().await;
                    }
                    return self.refuse(e, end).await;
                }
            }
        }
        let mut open: Vec<(ShardId, NodeId)> = Vec::new();
        let mut copy_in_response = None;
        for (shard, node) in nodes {
            match self.start_copy(node, &sql).await {
                Ok(response) => {
                    open.push((shard, node));
                    copy_in_response.get_or_insert(response);
                }
                Err(e) => {
                    self.abandon_copies(&open, "pgfleet: COPY could not start on every shard")
                        .await;
                    if !explicit {
                        self.rollback_everywhere().await;
                    }
                    return self.refuse(e, end).await;
                }
            }
        }
        if let Some(response) = copy_in_response {
            self.write_client(&response.raw).await?;
        }
        let place = move |v: &crate::shard::value::KeyValue| shard_for(v, shards);
        let key = KeyField {
            index: copy_in.key_index,
            column,
            key_type: copy_in.key_type,
        };
        let mut splitter = CopySplitter::new(statement.options.clone(), key, shards, &place);
        let failure = loop {
            let frame = self.next_client_frame().await?;
            let routed = match frame.kind {
                b'd' => splitter.push(frame.body()),
                b'c' => match splitter.finish() {
                    Ok(rows) => {
                        if let Err(e) = self.send_rows(&open, &rows.per_shard).await {
                            break Some(e);
                        }
                        break None;
                    }
                    Err(e) => Err(e),
                },
                b'f' => {
                    let why = crate::protocol::messages::query_text(frame.body()).unwrap_or("");
                    break Some(ProxyError::error(
                        "57014",
                        format!("COPY from stdin failed: {why}"),
                    ));
                }
                // As PostgreSQL: Flush and Sync mean nothing during COPY data.
                b'H' | b'S' => continue,
                other => {
                    break Some(ProxyError::error(
                        "08P01",
                        format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    ));
                }
            };
            match routed {
                Ok(rows) => {
                    if let Err(e) = self.send_rows(&open, &rows.per_shard).await {
                        break Some(e);
                    }
                }
                Err(e) => break Some(e.to_proxy_error(&copy_in.table)),
            }
        };
        if let Some(e) = failure {
            self.abandon_copies(&open, &e.message).await;
            if !explicit {
                self.rollback_everywhere().await;
            }
            let mut out = e.encode().to_vec();
            out.extend_from_slice(&ready_for_query(self.status().byte()));
            return self.write_client(&out).await;
        }
        // CopyDone to every shard, then every shard's answer.
        let mut copied = 0u64;
        let mut error: Option<Frame> = None;
        for (_, node) in &open {
            match self.finish_copy(*node).await {
                Ok(answer) => {
                    if let Some(e) = answer.error {
                        error.get_or_insert(e);
                    }
                    copied += answer
                        .frames
                        .iter()
                        .filter(|f| f.kind == b'C')
                        .filter_map(|f| crate::protocol::messages::command_tag(f.body()))
                        .filter_map(|t| t.strip_prefix("COPY ").and_then(|n| n.parse::<u64>().ok()))
                        .sum::<u64>();
                }
                Err(e) => {
                    error.get_or_insert_with(|| frame_of_error(&self.error_of(&e)));
                }
            }
        }
        if let Some(e) = error {
            if !explicit {
                self.rollback_everywhere().await;
            }
            let mut out = e.raw.to_vec();
            out.extend_from_slice(&ready_for_query(self.status().byte()));
            return self.write_client(&out).await;
        }
        if !explicit && let Err(e) = self.commit_everywhere().await {
            return self.refuse(e, end).await;
        }
        let mut out = build(b'C', format!("COPY {copied}\0").as_bytes()).to_vec();
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }

    /// Sends the COPY statement to `node` and waits for its CopyInResponse.
    async fn start_copy(&mut self, node: NodeId, sql: &str) -> Result<Frame, ProxyError> {
        let Some(conn) = self.conns[node.index()].as_mut() else {
            return Err(ProxyError::error("08006", "pgfleet: lost the shard's connection"));
        };
        conn.applied.unnamed = None;
        let started = async {
            conn.write_all(&query(sql)).await?;
            loop {
                let f = conn.read_frame().await?;
                match f.kind {
                    b'G' => return Ok(Ok(f)),
                    b'E' => {
                        // The statement failed before any data: read up to its ReadyForQuery.
                        loop {
                            let z = conn.read_frame().await?;
                            if z.kind == b'Z' {
                                conn.status = TxStatus::from_ready_body(z.body());
                                break;
                            }
                        }
                        return Ok(Err(f));
                    }
                    _ => {}
                }
            }
        };
        match started.await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(super::server_error(&e)),
            Err(e) => {
                let err = self.error_of(&e);
                self.conns[node.index()] = None;
                Err(err)
            }
        }
    }

    /// Each shard's share of the rows, as CopyData.
    async fn send_rows(
        &mut self,
        open: &[(ShardId, NodeId)],
        per_shard: &[Vec<u8>],
    ) -> Result<(), ProxyError> {
        for (shard, node) in open {
            let Some(bytes) = per_shard.get(shard.index()).filter(|b| !b.is_empty()) else {
                continue;
            };
            let Some(conn) = self.conns[node.index()].as_mut() else {
                return Err(ProxyError::error("08006", "pgfleet: lost the shard's connection"));
            };
            if let Err(e) = conn.write_all(&build(b'd', bytes)).await {
                return Err(self.error_of(&e));
            }
        }
        Ok(())
    }

    /// CopyDone to `node`, and its answer up to ReadyForQuery.
    async fn finish_copy(&mut self, node: NodeId) -> Result<Answer, BackendError> {
        let Some(conn) = self.conns[node.index()].as_mut() else {
            return Err(BackendError::protocol(
                &self.shared.fleet.node(node).target,
                "lost the shard's connection",
            ));
        };
        conn.write_all(&build(b'c', b"")).await?;
        super::several::read_until_ready(conn, 1).await
    }

    /// CopyFail to every shard whose COPY is open, and their answers read (they fail the COPY).
    async fn abandon_copies(&mut self, open: &[(ShardId, NodeId)], why: &str) {
        let mut body = why.as_bytes().to_vec();
        body.push(0);
        for (_, node) in open {
            let Some(conn) = self.conns[node.index()].as_mut() else {
                continue;
            };
            let ok = conn.write_all(&build(b'f', &body)).await.is_ok()
                && super::several::read_until_ready(conn, 1).await.is_ok();
            if !ok {
                self.conns[node.index()] = None;
            }
        }
    }

    /// The next frame from the client, reading as needed.
    async fn next_client_frame(&mut self) -> Result<Frame, SessionError> {
        loop {
            if let Some(f) = self.cbuf.next_frame()? {
                return Ok(f);
            }
            if self.client.read_buf(self.cbuf.read_target()).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
}

fn not_simple() -> ProxyError {
    ProxyError::error(
        "0A000",
        "pgfleet: COPY into a sharded table must be sent alone as a simple query",
    )
    .with_hint("Send the COPY statement on its own (psql's \\copy and COPY FROM STDIN in drivers do).")
}

/// An error pgfleet speaks, as a frame beside the nodes' own.
fn frame_of_error(e: &ProxyError) -> Frame {
    Frame {
        kind: b'E',
        raw: e.encode(),
    }
}
