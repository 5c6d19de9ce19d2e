//! The request loop: reads client frames into requests and dispatches them, answers DEALLOCATE locally
//! under transaction pooling, waits for the client with the idle timers and the shutdown deadline, passes
//! on notifications of a LISTEN node meanwhile, keeps the function rules fresh, and leaves nodes a reload
//! retired.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Session, SessionError};
use crate::backend::PooledConn;
use crate::cluster::NodeId;
use crate::frontend::cancel::Attention;
use crate::frontend::request::{End, Request};
use crate::frontend::stream::ClientStream;
use crate::protocol::FrameBuffer;
use crate::protocol::messages::{ProxyError, ready_for_query};
use crate::router::classify::Pin;
use crate::router::functions::FunctionRules;

impl Session {
    /// Reads and serves requests until the client leaves.
    pub(super) async fn serve(&mut self) -> Result<(), SessionError> {
        let mut req = Request::default();
        loop {
            let frame = match self.cbuf.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.wait_for_client().await?;
                    continue;
                }
                Err(e) => {
                    let err = ProxyError::fatal("08P01", format!("invalid frontend message: {e}"));
                    let _ = self.client.write_all(&err.encode()).await;
                    return Err(e.into());
                }
            };
            match frame.kind {
                b'X' => return Ok(()),
                b'Q' | b'P' | b'B' | b'D' | b'E' | b'S' | b'H' | b'C' | b'F' => {}
                b'd' | b'c' | b'f' => {}
                other => {
                    // As PostgreSQL does: an unknown message ends the session, and no node ever sees it.
                    let err = ProxyError::fatal("08P01", format!("invalid frontend message type {other}"));
                    let _ = self.client.write_all(&err.encode()).await;
                    return Err(SessionError::Fatal(err.message));
                }
            }
            match frame.kind {
                // CopyData/CopyDone/CopyFail outside COPY: PostgreSQL ignores them, and so do we.
                b'd' | b'c' | b'f' => continue,
                _ => {}
            }
            if self.discard_until_sync {
                if frame.kind == b'S' {
                    self.discard_until_sync = false;
                    self.write_client(&ready_for_query(self.status().byte())).await?;
                }
                continue;
            }
            let frame = self.rewrite_names(frame);
            if self.shared_conns
                && frame.kind == b'Q'
                && req.frames.is_empty()
                && self.deallocate_locally(&frame).await?
            {
                continue;
            }
            if frame.kind == b'Q' && req.frames.is_empty() && self.answer_token_command(&frame).await? {
                continue;
            }
            if let Some(end) = req.push(frame) {
                // A Flush with nothing before it asks for output that does not exist (psycopg ends each
                // pipeline with Sync, Flush): routing it would open an empty batch on some node.
                let empty_flush = end == End::Open && req.frames.iter().all(|f| f.kind == b'H');
                if !empty_flush {
                    self.dispatch_watched(&req, end).await?;
                }
                // Emptied rather than replaced, so the next request reuses its frame list.
                req.clear();
            }
        }
    }

    /// Waits for client bytes; meanwhile passes on notifications from a node the session listens on.
    async fn wait_for_client(&mut self) -> Result<(), SessionError> {
        let deadline = *self.shutdown.borrow_and_update();
        if let Some(deadline) = deadline {
            // Shutting down: a session between transactions ends now; one inside a transaction may finish it.
            if !self.in_transaction() || tokio::time::Instant::now() >= deadline {
                let e = ProxyError::fatal("57P01", "terminating connection due to administrator command");
                let _ = self.write_client(&e.encode()).await;
                return Err(SessionError::Fatal("pgfleet is shutting down".into()));
            }
            tokio::select! {
                r = self.client.read_buf(self.cbuf.read_target()) => {
                    if r? == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            return Ok(());
        }
        self.current.refresh();
        let (idle_in_transaction, client_idle) = {
            let config = &self.current.config;
            (
                config.listen.idle_in_transaction_timeout,
                config.listen.client_idle_timeout,
            )
        };
        let (limit, code, what, key) = if self.in_transaction() {
            (
                idle_in_transaction,
                "25P03",
                "idle-in-transaction",
                "listen.idle_in_transaction_timeout",
            )
        } else {
            (client_idle, "57P05", "idle-session", "listen.client_idle_timeout")
        };
        // The idle timer is armed once per session and only moved when it is due or would fire too late:
        // registering a fresh timer for every request is a good share of a short request's cost.
        let idle_due = limit.map(|limit| tokio::time::Instant::now() + limit);
        if let Some(due) = idle_due {
            match self.idle_timer.as_mut() {
                Some(timer) if timer.deadline() <= due => {}
                Some(timer) => timer.as_mut().reset(due),
                None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        // The node holding the session's LISTEN, transaction or pinned state is watched while the client is
        // idle: notifications go on at once, and so does a FATAL that ends the node's session (PostgreSQL
        // sends an idle_in_transaction_session_timeout when it fires, not at the next query).
        let listen_node = match self.routing.pinned {
            Some((n, Pin::Listen)) => Some(n),
            _ => self.routing.tx_node.or(self.routing.pinned.map(|(n, _)| n)),
        }
        .filter(|n| self.conn(*n).is_some());
        loop {
            tokio::select! {
                // In the order written: the client's next request is the usual outcome, and a fair select
                // draws a random branch order (a thread-local generator) on every poll of every request.
                biased;
                r = client_or_node(&mut self.client, &mut self.cbuf, &mut self.conns, listen_node, &self.shared.cancels) => return r,
                attention = self.key.attention(&self.shutdown) => match attention {
                    Attention::Shutdown => return Ok(()),
                    Attention::Terminated => return self.end_terminated().await,
                },
                _ = idle_timer_fired(&mut self.idle_timer), if idle_due.is_some() => {
                    let Some(due) = idle_due else { continue };
                    if tokio::time::Instant::now() < due {
                        // Armed during an earlier wait: this one has time left.
                        if let Some(timer) = self.idle_timer.as_mut() {
                            timer.as_mut().reset(due);
                        }
                        continue;
                    }
                    // As PostgreSQL's idle_session_timeout / idle_in_transaction_session_timeout; the node
                    // connection is closed with the session, which rolls back an open transaction.
                    let e = ProxyError::fatal(code, format!("terminating connection due to {what} timeout ({key})"));
                    let _ = self.write_client(&e.encode()).await;
                    return Err(SessionError::Fatal(e.message));
                }
            }
        }
    }

    /// Transaction pooling: the client's statement names in `frame` replaced by the proxy's.
    pub(in crate::frontend) fn rewrite_names(
        &mut self,
        frame: crate::protocol::Frame,
    ) -> crate::protocol::Frame {
        if self.shared_conns {
            self.names.rewrite(frame)
        } else {
            frame
        }
    }

    /// Transaction pooling: a query made only of DEALLOCATE statements names the client's statements, which
    /// exist on shared connections under proxy names; the proxy forgets them and answers by itself.
    async fn deallocate_locally(&mut self, frame: &crate::protocol::Frame) -> Result<bool, SessionError> {
        // Every query of a transaction-pooled session comes by: the start of the bytes is looked at before
        // the text is checked as UTF-8.
        if !crate::router::deallocate::may_be_only_deallocate(frame.body()) {
            return Ok(false);
        }
        let text = crate::protocol::messages::query_text(frame.body()).unwrap_or("");
        let names = crate::router::deallocate::deallocated_names(text);
        if names.is_empty() {
            return Ok(false);
        }
        let statements = crate::router::split::split_statements(text);
        if names.len() != statements.len() {
            return Ok(false);
        }
        self.names.forget(&names);
        let mut out = Vec::new();
        for _ in &names {
            out.extend_from_slice(&crate::protocol::frame::build(b'C', b"DEALLOCATE\0"));
        }
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await?;
        Ok(true)
    }

    /// Takes the catalog's current function rules for the session's database (asking the primary if its
    /// entry is stale); true when they changed. Called when [`Session::function_rules_fresh`] says no.
    pub(super) async fn reload_function_rules(&mut self) -> bool {
        let generation = self.shared.catalog.generation();
        let code_generation = self.shared.catalog.code_generation();
        let rules = self.function_rules().await;
        self.rules_fresh = self
            .shared
            .catalog
            .fresh_until(&self.database, &rules)
            .map(|until| super::RulesFresh {
                generation,
                code_generation,
                until,
            });
        if Arc::ptr_eq(&rules, &self.rules) {
            return false;
        }
        self.rules = rules;
        true
    }

    /// Whether the session's function rules are the catalog's current ones (a counter comparison and a
    /// clock read): then there is nothing to reload.
    pub(super) fn function_rules_fresh(&self) -> bool {
        let generation = self.shared.catalog.generation();
        self.rules_fresh
            .is_some_and(|f| f.generation == generation && std::time::Instant::now() < f.until)
    }

    /// Whether what the session's rules say of function bodies (`FunctionRules::may_set_commit_mode`) is
    /// current: loaded, not expired, and no DDL that may change a body came since. DDL on tables alone
    /// leaves it so, which keeps writes after a migration's CREATE TABLE from waiting for a load each.
    pub(super) fn function_bodies_known(&self) -> bool {
        let code_generation = self.shared.catalog.code_generation();
        self.rules_fresh
            .is_some_and(|f| f.code_generation == code_generation && std::time::Instant::now() < f.until)
    }

    async fn function_rules(&mut self) -> Arc<FunctionRules> {
        let fleet = &self.shared.fleet;
        // Every shard has the same functions (DDL runs on all): the first one's catalog serves.
        let p = fleet.likely_primary(crate::cluster::ShardId::default());
        if !fleet.view().nodes[p.index()].up || !fleet.nodes()[p.index()].is_up() {
            // The primary is down or hung: nothing could write through it anyway, so the lists already at
            // hand decide, and reads do not wait for a catalog query that cannot be answered.
            return self
                .shared
                .catalog
                .cached(&self.database)
                .unwrap_or_else(|| self.rules.clone());
        }
        let primary = fleet.nodes()[p.index()].target.clone();
        let source = crate::router::catalog::Source {
            primary: &primary,
            database: &self.database,
            user: &self.user,
            password: &self.password,
        };
        self.shared.catalog.rules(source).await
    }

    /// After a reload changed the fleet: gives back connections to removed nodes, unless a transaction or
    /// pinned state lives there (those end with the transaction or the session).
    pub(super) async fn leave_retired_nodes(&mut self) {
        self.fleet_generation = self.shared.fleet.generation();
        let nodes = self.shared.fleet.nodes_arc();
        for (node, slot) in nodes.iter().enumerate() {
            if !slot.is_retired() || self.routing.holds_state_on(NodeId::new(node)) {
                continue;
            }
            if let Some(pool) = self.pools.get_mut(node) {
                *pool = None;
            }
            if let Some(c) = self.conns.get_mut(node).and_then(Option::take) {
                c.release().await;
            }
        }
    }

    /// `log.slow_statement`: one line for a request that took at least that long, with its statements
    /// redacted (constants replaced) so that no value reaches the log.
    pub(super) fn log_if_slow(&self, req: &Request, node: NodeId, started: std::time::Instant) {
        let Some(limit) = self.shared.config().log.slow_statement else {
            return;
        };
        let took = started.elapsed();
        if took < limit {
            return;
        }
        let text = req.frames.iter().find_map(|f| match f.kind {
            b'Q' => crate::protocol::messages::query_text(f.body()).map(str::to_owned),
            b'P' => crate::protocol::messages::parse_fields(f.body()).map(|(_, q)| q.to_owned()),
            b'B' => crate::protocol::messages::bind_names(f.body())
                .and_then(|(_, name)| self.statements.get(name))
                // The stored Parse is the whole frame: type byte and length before the body.
                .and_then(|st| st.parse.get(5..))
                .and_then(crate::protocol::messages::parse_fields)
                .map(|(_, q)| q.to_owned()),
            _ => None,
        });
        let statement = crate::router::redact::redact(text.as_deref().unwrap_or(""), 1000);
        let node = &self.shared.fleet.node(node).target.name;
        tracing::warn!(duration_ms = took.as_millis() as u64, node = %node, statement = %statement, "slow statement");
    }
}

/// Resolves when the session's idle timer fires; never without one.
async fn idle_timer_fired(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer.as_mut() {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Reads client bytes into `cbuf`; meanwhile, for a session listening on `listen_node`, passes on what that
/// node sends (notifications), ending the session if the node goes away.
async fn client_or_node(
    client: &mut ClientStream,
    cbuf: &mut FrameBuffer,
    conns: &mut [Option<PooledConn>],
    listen_node: Option<NodeId>,
    cancels: &crate::frontend::cancel::CancelRegistry,
) -> Result<(), SessionError> {
    let Some(conn) = listen_node.and_then(|n| conns.get_mut(n.index())?.as_mut()) else {
        if client.read_buf(cbuf.read_target()).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        return Ok(());
    };
    tokio::select! {
        // The client first, as in `wait_for_client`: each branch ends the wait, so neither can starve the
        // other.
        biased;
        r = client.read_buf(cbuf.read_target()) => {
            if r? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        r = conn.fill() => {
            let block = match r {
                Ok(()) => conn.take_block(|_, _| {}).ok().flatten(),
                Err(_) => None,
            };
            if let Some(b) = block {
                let b = cancels.rewrite_notifications(conn.target.index, b);
                client.write_all(&b).await?;
                client.flush().await?;
            }
            if let Some(farewell) = &conn.farewell {
                // The node's FATAL went on with the block: the client's session ends with the node's.
                let message = crate::protocol::messages::error_field(farewell.body(), b'M').unwrap_or("FATAL");
                return Err(SessionError::Fatal(format!("node \"{}\" ended the session: {message}", conn.target.name)));
            }
            if conn.broken {
                let e = ProxyError::fatal("57P01", format!(
                    "pgfleet: lost the connection to node \"{}\" that held this session's state (LISTEN, transaction or pin)",
                    conn.target.name));
                let _ = client.write_all(&e.encode()).await;
                return Err(SessionError::Fatal(e.message));
            }
        }
    }
    Ok(())
}
