//! Statements that need several shards: a write run on each shard in one transaction (the client's, or one
//! of pgfleet's committed across them), a multi-row INSERT split into each shard's rows, and a read run on
//! each shard and merged (`shard::merge`). Each shard's answer is captured whole, then answered as one.

use super::Answer;
use crate::backend::{BackendConn, BackendError};
use crate::cluster::{NodeId, ShardId};
use crate::frontend::request::{End, Plan, Request};
use crate::frontend::session::{Session, SessionError};
use crate::protocol::frame::build;
use crate::protocol::messages::{ProxyError, bind_names, parse_fields, query_text, ready_for_query};
use crate::protocol::{Frame, TxStatus};
use crate::shard::plan::ShardPlan;

impl Session {
    /// Runs a request that needs several shards (one statement, simple or extended and ended by Sync), in
    /// the session's transaction (opened on each shard) or in one of its own committed across them.
    pub(super) async fn run_on_shards(
        &mut self,
        req: &Request,
        end: End,
        plans: &[ShardPlan],
        shards: Vec<ShardId>,
    ) -> Result<(), SessionError> {
        let [plan] = plans else {
            return self
                .refuse(
                    ProxyError::error(
                        "0A000",
                        "pgfleet: a statement that needs several shards must come alone, not with other statements",
                    )
                    .with_hint(
                        "Send it on its own, or add a condition on the shard key so that it runs on one shard.",
                    ),
                    end,
                )
                .await;
        };
        if end == End::Open {
            return self
                .refuse(
                    ProxyError::error(
                        "0A000",
                        "pgfleet: a statement that needs several shards cannot run in a batch left open by Flush",
                    )
                    .with_hint("End the request with Sync."),
                    end,
                )
                .await;
        }
        if plan.copy_in.is_some() {
            return self.copy_into_shards(req, end, plan).await;
        }
        if plan.outside_transaction {
            return self
                .refuse(
                    ProxyError::error(
                        "0A000",
                        "pgfleet: this statement cannot run inside a transaction block, so pgfleet cannot run it \
                         on every shard atomically",
                    )
                    .with_hint("Run it on each shard's primary directly."),
                    end,
                )
                .await;
        }
        // A multi-row INSERT whose rows belong to several shards: each shard gets its own rows.
        let work: Vec<(ShardId, Request)> = match &plan.split {
            Some(_) if req.is_extended() => return self.run_split_prepared(req, end, plan).await,
            Some(split) => split
                .iter()
                .map(|(shard, text)| {
                    let mut one = Request::default();
                    one.push(frame_of(build(b'Q', &cstring(text))));
                    (*shard, one)
                })
                .collect(),
            None if !plan.write => return self.read_across_shards(req, end, shards).await,
            None => shards.into_iter().map(|s| (s, request_copy(req))).collect(),
        };
        let explicit = self.in_transaction();
        let mut answers: Vec<(ShardId, Answer)> = Vec::new();
        for (shard, shard_req) in work {
            let answer = match self.open_on(shard).await {
                Ok(()) => match self.routing.tx_node {
                    Some(n) => self.capture(n, &shard_req).await,
                    None => Err(ProxyError::error(
                        "08006",
                        "pgfleet: no transaction node on the shard",
                    )),
                },
                Err(e) => Err(e),
            };
            let failure = match answer {
                Ok(a) if a.error.is_none() => {
                    answers.push((shard, a));
                    continue;
                }
                Ok(a) => Ok(a),
                Err(e) => Err(e),
            };
            if !explicit {
                self.rollback_everywhere().await;
            }
            return match failure {
                Ok(a) => {
                    // The shard's own answer up to its error, as PostgreSQL would have sent it.
                    let mut out = Vec::new();
                    for f in a.frames.iter().filter(|f| f.kind != b'Z') {
                        out.extend_from_slice(&f.raw);
                    }
                    if let Some(e) = &a.error {
                        out.extend_from_slice(&e.raw);
                    }
                    out.extend_from_slice(&ready_for_query(self.status().byte()));
                    self.write_client(&out).await
                }
                Err(e) => self.refuse(e, end).await,
            };
        }
        let mut out = combine_answers(&answers, plan.same_on_every_shard);
        if !explicit && let Err(e) = self.commit_everywhere().await {
            return self.refuse(e, end).await;
        }
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }

    /// A read on several shards: each shard's rows from the node the routing policy gives it (its node
    /// in the session's transaction), merged into one result as PostgreSQL would give it. Each shard runs
    /// the statement the merge needs (`shard::merge::analyze`); in the extended protocol that is possible
    /// when the statement is parsed in the same request (unnamed or not) or needs no rewriting.
    async fn read_across_shards(
        &mut self,
        req: &Request,
        end: End,
        shards: Vec<ShardId>,
    ) -> Result<(), SessionError> {
        let Some(sharding) = self.shared.sharding.clone() else {
            return Ok(());
        };
        let Some(text) = statement_text(req, &self.statements) else {
            return self
                .refuse(
                    ProxyError::error("0A000", "pgfleet: no statement to run on the shards"),
                    end,
                )
                .await;
        };
        let rules = &sharding.rules;
        let merge_plan = match crate::shard::merge::analyze(&text, &|name: &sqlparser::ast::ObjectName| {
            rules.key_of(name)
        }) {
            Ok(p) => p,
            Err(e) => return self.refuse(e, end).await,
        };
        // A statement prepared in an earlier request: the shards get the rewritten text as the unnamed
        // statement, with the stored Parse's parameter types.
        let stored: Option<Vec<u8>> = req
            .frames
            .iter()
            .find(|f| f.kind == b'B')
            .and_then(|f| bind_names(f.body()))
            .and_then(|(_, name)| self.statements.get(name))
            .and_then(|st| st.parse.get(5..).map(<[u8]>::to_vec));
        let unnamed_before = self.statements.get("").cloned();
        let (shard_req, injected_parse) = match rewritten(
            req,
            &text,
            &merge_plan.shard_sql,
            stored.as_deref(),
        ) {
            Some(r) => r,
            None => {
                return self
                    .refuse(
                        ProxyError::error(
                            "0A000",
                            "pgfleet: this query across shards needs each shard to run a rewritten statement, \
                             which pgfleet cannot do for a statement prepared in an earlier request",
                        )
                        .with_hint(
                            "Run it with the simple query protocol or unprepared (for JDBC, prepareThreshold=0), \
                             or add a condition on the shard key.",
                        ),
                        end,
                    )
                    .await;
            }
        };
        // The merger needs each shard's RowDescription. A driver that already knows the columns (pgjdbc
        // executing its named statement again) sends Bind/Execute without Describe: pgfleet asks for the
        // portal's description itself and does not pass it on.
        let described = !req.is_extended() || req.frames.iter().any(|f| f.kind == b'D');
        let shard_req = if described {
            shard_req
        } else {
            with_describe(&shard_req)
        };
        // The merge works on text: columns the client asks in binary are asked of the shards in text and
        // encoded after the merge.
        let (shard_req, binary) = text_results_only(shard_req);
        let mut merger = Some(crate::shard::merge::Merger::new(&merge_plan.merge, shards.len()));
        let mut out: Vec<u8> = Vec::new();
        for (i, shard) in shards.into_iter().enumerate() {
            let node = match self.read_node(shard).await {
                Ok(n) => n,
                Err(e) => return self.refuse(e, end).await,
            };
            if i == 0
                && let Some(collation) = self.collation(node).await
            {
                merger = merger.map(|m| m.with_collation(&collation));
            }
            let answer = match self.capture(node, &shard_req).await {
                Ok(a) => a,
                Err(e) => return self.refuse(e, end).await,
            };
            // Monotonic reads: how far this read saw is unknown, so the shard's next read stays on this
            // node (or the primary) until the session finds the bound out.
            self.routing.read_on(node, None);
            self.release_between_transactions(node);
            if let Some(error) = answer.error {
                let mut out = error.raw.to_vec();
                out.extend_from_slice(&ready_for_query(self.status().byte()));
                return self.write_client(&out).await;
            }
            let Some(m) = merger.as_mut() else {
                break;
            };
            for f in &answer.frames {
                let merged = match f.kind {
                    // The extended protocol's acknowledgements, once: every shard sends the same.
                    b'1' | b'2' | b'3' | b't' | b'n' if i == 0 => {
                        out.extend_from_slice(&f.raw);
                        continue;
                    }
                    b'T' => m.row_description(i, f.body()),
                    b'D' => m.data_row(i, f.body()),
                    // Each shard's CommandComplete: the merger writes the client's own.
                    b'C' | b'1' | b'2' | b'3' | b't' | b'n' => continue,
                    _ => {
                        out.extend_from_slice(&f.raw);
                        continue;
                    }
                };
                match merged {
                    Ok(frames) => frames.iter().for_each(|b| out.extend_from_slice(b)),
                    Err(e) => return self.refuse(e, end).await,
                }
            }
        }
        // The client's statements keep its own texts (the shards ran the rewritten text as the unnamed one):
        // those it parsed in this request, and the unnamed one it had before.
        let parses = Plan::for_request(req, &self.statements, &self.rules).parses;
        let parsed_unnamed = parses.iter().any(|(name, _)| name.is_empty());
        for (name, stmt) in parses {
            self.statements.insert(&name, stmt);
        }
        if !parsed_unnamed {
            match unnamed_before {
                Some(stmt) => {
                    self.statements.insert("", stmt);
                }
                None => self.statements.remove(""),
            }
        }
        match merger.map(|m| m.finish()) {
            Some(Ok(frames)) => frames.iter().for_each(|b| out.extend_from_slice(b)),
            Some(Err(e)) => return self.refuse(e, end).await,
            None => {}
        }
        if let Some(results) = binary {
            out = match crate::shard::merge::binary::encode(&out, &results) {
                Ok(encoded) => encoded,
                Err(e) => return self.refuse(e, end).await,
            };
        }
        if !described {
            // The description pgfleet asked for itself is not the client's.
            out = without_messages(&out, b'T');
        }
        if injected_parse {
            // Nor is the ParseComplete of the Parse pgfleet added.
            out = without_messages(&out, b'1');
        }
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await
    }

    /// The database's collation (`datcollate`), asked once per database on a node of the fleet: merging
    /// ordered text is exact only when the shards sort it bytewise.
    async fn collation(&mut self, node: NodeId) -> Option<String> {
        let sharding = self.shared.sharding.clone()?;
        if let Some(c) = sharding.collation(&self.database) {
            return Some(c);
        }
        let conn = self.conns[node.index()].as_mut()?;
        conn.applied.unnamed = None;
        let c = conn
            .query_value("SELECT datcollate FROM pg_database WHERE datname = current_database()")
            .await
            .ok()
            .flatten()?;
        sharding.remember_collation(&self.database, &c);
        Some(c)
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
        // The policy may name a replica to be asked, in the same write as the read, whether it replayed
        // what the read must see (a led read); a captured read has no such rider, so it is asked first,
        // and passed over for the fresh candidates behind it when it has not caught up.
        if let Some((led, need)) = self.lead.take()
            && order.first() == Some(&led)
            && !self.has_replayed(led, need).await
        {
            order.remove(0);
        }
        let first = order.first().copied();
        self.candidates = order;
        chosen?;
        let node = first
            .ok_or_else(|| ProxyError::error("08006", format!("pgfleet: no node of {shard} is available")))?;
        self.connect(node).await.map_err(|e| self.error_of(&e))?;
        self.up_to_date(node, &read).await?;
        Ok(node)
    }

    /// Runs `req` (ended by Query or Sync) on the session's connection to `node`, brought up to date
    /// first, and keeps what it answered; the session's bookkeeping (statements, transaction) follows.
    pub(super) async fn capture(&mut self, node: NodeId, req: &Request) -> Result<Answer, ProxyError> {
        let mut plan = Plan::for_request(req, &self.statements, &self.rules);
        self.up_to_date(node, &plan).await?;
        let Some(conn) = self.conns[node.index()].as_mut() else {
            return Err(ProxyError::error("08006", "pgfleet: lost the shard's connection"));
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let captured = capture_on(conn, req.encode(&mut scratch), req.ready_count()).await;
        self.scratch = scratch;
        match captured {
            Ok(answer) => {
                let mut outcome = crate::frontend::forward::Outcome {
                    status: answer.status,
                    saw_error: answer.error.is_some(),
                    parses_ok: answer.frames.iter().filter(|f| f.kind == b'1').count(),
                    ..Default::default()
                };
                for f in answer.frames.iter().filter(|f| f.kind == b'C') {
                    outcome.note_tag(f.body().split(|b| *b == 0).next().unwrap_or(&[]));
                }
                self.finish(node, &mut plan, &outcome);
                Ok(answer)
            }
            Err(e) => {
                self.conns[node.index()] = None;
                Err(self.error_of(&e))
            }
        }
    }
}

/// `req` with a Describe of the portal after each Bind, so that the shard sends the RowDescription the
/// merge needs.
fn with_describe(req: &Request) -> Request {
    let mut out = Request::default();
    for f in &req.frames {
        out.push(f.clone());
        if f.kind == b'B'
            && let Some((portal, _)) = bind_names(f.body())
        {
            let mut body = vec![b'P'];
            body.extend_from_slice(&cstring(portal));
            out.push(frame_of(build(b'D', &body)));
        }
    }
    out
}

/// The request with its Bind asking for text results, and the result formats the client asked when any
/// column was asked in binary.
fn text_results_only(req: Request) -> (Request, Option<Vec<i16>>) {
    let mut binary = None;
    let mut out = Request::default();
    for f in &req.frames {
        if f.kind == b'B'
            && let Some((results, text)) = crate::shard::merge::binary::text_results(f.body())
            && crate::shard::merge::binary::wants_binary(&results)
        {
            binary = Some(results);
            out.push(frame_of(build(b'B', &text)));
            continue;
        }
        out.push(f.clone());
    }
    (out, binary)
}

/// `frames` (whole messages back to back) without the messages of type `kind`.
pub(super) fn without_messages(frames: &[u8], kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len());
    let mut at = 0;
    while at + 5 <= frames.len() {
        let len =
            u32::from_be_bytes([frames[at + 1], frames[at + 2], frames[at + 3], frames[at + 4]]) as usize;
        let end = (at + 1 + len).min(frames.len());
        if frames[at] != kind {
            out.extend_from_slice(&frames[at..end]);
        }
        at = end;
    }
    out
}

/// A copy of a request's frames (they share their bytes).
fn request_copy(req: &Request) -> Request {
    let mut out = Request::default();
    for f in &req.frames {
        out.push(f.clone());
    }
    out
}

/// Sends `request` on `conn` and collects the answer up to its `readies`-th ReadyForQuery.
async fn capture_on(conn: &mut BackendConn, request: &[u8], readies: usize) -> Result<Answer, BackendError> {
    conn.write_all(request).await?;
    read_until_ready(conn, readies).await
}

/// What `conn` answers up to its `readies`-th ReadyForQuery.
pub(super) async fn read_until_ready(conn: &mut BackendConn, readies: usize) -> Result<Answer, BackendError> {
    let mut answer = Answer {
        frames: Vec::new(),
        error: None,
        status: TxStatus::Idle,
    };
    let mut left = readies.max(1);
    loop {
        let f = conn.read_frame().await?;
        match f.kind {
            b'Z' => {
                conn.status = TxStatus::from_ready_body(f.body());
                answer.status = conn.status;
                left -= 1;
                if left == 0 {
                    return Ok(answer);
                }
            }
            b'E' if answer.error.is_none() => answer.error = Some(f),
            b'E' => {}
            _ => answer.frames.push(f),
        }
    }
}

/// The text of the one statement a request runs: its query, the Parse in it, or the prepared statement
/// its Bind names.
fn statement_text(req: &Request, statements: &crate::frontend::state::Statements) -> Option<String> {
    for f in &req.frames {
        match f.kind {
            b'Q' => return query_text(f.body()).map(str::to_owned),
            b'P' => return parse_fields(f.body()).map(|(_, q)| q.to_owned()),
            b'B' => {
                let (_, name) = bind_names(f.body())?;
                let st = statements.get(name)?;
                return st
                    .parse
                    .get(5..)
                    .and_then(parse_fields)
                    .map(|(_, q)| q.to_owned());
            }
            _ => {}
        }
    }
    None
}

/// `req` with its statement replaced by `shard_sql`: the query text, or the text of the Parse it holds
/// (same name and parameter types), or, for a statement prepared in an earlier request (`stored`, its Parse
/// body), a Parse of the rewritten text added before its Bind; the flag says a Parse was added (its
/// ParseComplete is not the client's). None when the text must change and no Parse is at hand.
///
/// A named statement is prepared on the shards as the unnamed one (its Bind and Describe follow): the
/// client's name must keep the client's text, or a later Bind of it would be merged as the rewritten
/// statement (an `avg` answered with the shards' sum, an OFFSET not applied).
fn rewritten(
    req: &Request,
    original: &str,
    shard_sql: &str,
    stored: Option<&[u8]>,
) -> Option<(Request, bool)> {
    let mut out = Request::default();
    let mut injected = false;
    let mut replaced = shard_sql == original;
    let mut renamed: Option<&str> = None;
    for f in &req.frames {
        if f.kind == b'B'
            && !replaced
            && let (Some(stored), Some((_, statement))) = (stored, bind_names(f.body()))
        {
            // Prepared in an earlier request: Parse the rewritten text as the unnamed statement first.
            out.push(frame_of(parse_renamed(stored, "", shard_sql)?));
            injected = true;
            replaced = true;
            renamed = Some(statement).filter(|n| !n.is_empty());
        }
        let frame = match f.kind {
            b'Q' => {
                replaced = true;
                frame_of(build(b'Q', &cstring(shard_sql)))
            }
            b'P' if !replaced => {
                let (name, _) = parse_fields(f.body())?;
                replaced = true;
                // The shards run the rewritten text as the unnamed statement: the client's name keeps the
                // client's text.
                renamed = Some(name).filter(|n| !n.is_empty());
                frame_of(parse_renamed(f.body(), "", shard_sql)?)
            }
            b'B' if renamed.is_some() => {
                let (portal, statement) = bind_names(f.body())?;
                if Some(statement) != renamed {
                    return None;
                }
                let rest = f.body().get(portal.len() + 1 + statement.len() + 1..)?;
                let mut new = cstring(portal);
                new.extend_from_slice(&cstring(""));
                new.extend_from_slice(rest);
                frame_of(build(b'B', &new))
            }
            b'D' if renamed.is_some() => match crate::protocol::messages::target_name(f.body())? {
                (b'S', name) if Some(name) == renamed => frame_of(build(b'D', b"S\0")),
                _ => f.clone(),
            },
            _ => f.clone(),
        };
        out.push(frame);
    }
    replaced.then_some((out, injected))
}

/// A Parse message like `body`'s (same statement name, same parameter types) for the statement `text`.
pub(super) fn parse_with_text(body: &[u8], text: &str) -> Option<bytes::Bytes> {
    let (name, _) = parse_fields(body)?;
    parse_renamed(body, name, text)
}

/// A Parse message with `body`'s parameter types for the statement `text` under `name`.
pub(super) fn parse_renamed(body: &[u8], name: &str, text: &str) -> Option<bytes::Bytes> {
    let (old_name, old) = parse_fields(body)?;
    // After the name and the text: the parameter types, kept as the client sent them.
    let types_at = old_name.len() + 1 + old.len() + 1;
    let mut new = cstring(name);
    new.extend_from_slice(&cstring(text));
    new.extend_from_slice(body.get(types_at..)?);
    Some(build(b'P', &new))
}

pub(super) fn cstring(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    v.push(0);
    v
}

/// A frame built by pgfleet, as the frame reader would have produced it.
pub(super) fn frame_of(raw: bytes::Bytes) -> Frame {
    let kind = raw[0];
    Frame { kind, raw }
}

/// One answer for the client from each shard's answer to the same write: a statement with the same
/// result everywhere (DDL, reference tables) answers as the first shard did; otherwise rows returned are
/// concatenated and the affected-row counts of the command tags added.
pub(super) fn combine_answers(answers: &[(ShardId, Answer)], same_everywhere: bool) -> Vec<u8> {
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
    let mut tag: Option<(String, u64)> = None;
    for (i, (_, a)) in answers.iter().enumerate() {
        for f in &a.frames {
            match f.kind {
                // Descriptions and the extended protocol's acknowledgements: every shard sends the same.
                b'T' | b'n' | b't' | b'1' | b'2' | b'3' if i > 0 => {}
                b'C' => {
                    let text = crate::protocol::messages::command_tag(f.body()).unwrap_or("");
                    let (head, count) = match text.rsplit_once(' ') {
                        Some((head, n)) if n.parse::<u64>().is_ok() => {
                            (head.to_owned(), n.parse().unwrap_or(0))
                        }
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
