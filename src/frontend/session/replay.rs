//! Session state on nodes: before a request runs on a node, the settings and prepared statements the
//! session has and that node lacks are replayed there (`bring_up_to_date`); after it, what the request
//! changed is recorded (`finish`: prepared statements, pins, the open transaction, committed settings);
//! at the end, every node connection goes back to its pool (`close`).

use super::Session;
use crate::backend::BackendError;
use crate::cluster::NodeId;
use crate::frontend::forward::Outcome;
use crate::frontend::request::Plan;
use crate::frontend::state::{PendingChanges, Settings};
use crate::protocol::TxStatus;
use crate::protocol::messages::{ProxyError, close_statement, query, sync};
use crate::router::classify::SessionChange;

/// Most parsed statements whose room a session keeps between requests (`Session::spare_parses`).
const SPARE_PARSES: usize = 4;

impl Session {
    /// Whether `bring_up_to_date` has nothing to do for `plan` on `node`: the connection (if any) has the
    /// session's settings, and the request neither parses a named statement nor needs a prepared one.
    pub(super) fn needs_no_replay(&self, node: NodeId, plan: &Plan) -> bool {
        let settled =
            |c: &crate::backend::PooledConn| c.applied.settings_generation == self.settings.generation();
        // A Parse of the unnamed statement replaces whatever the node had under that name: nothing to close
        // first, so the extended protocol's usual request (Parse "", Bind "", ...) needs no replay either.
        plan.parses.iter().all(|(name, _)| name.is_empty())
            && plan.needs.is_empty()
            && self.conn(node).is_none_or(settled)
    }

    /// [`Self::bring_up_to_date`], ended by a cancel of the request unless the session keeps state on `node`:
    /// a node that hangs would otherwise hold the cancelled request until it answered. The connection is
    /// then half replayed and the caller closes it (`Prepare::Node`).
    pub(super) async fn bring_up_to_date_or_cancel(
        &mut self,
        node: NodeId,
        plan: &Plan,
    ) -> Result<(), Prepare> {
        let cancelable = !self.routing.holds_state_on(node);
        let handle = self.key.handle();
        handle
            .unless_canceled(cancelable, self.bring_up_to_date(node, plan))
            .await
            .unwrap_or(Err(Prepare::Node(BackendError::Canceled)))
    }

    /// Replays on `node` what the session has and that node lacks: settings, then prepared statements.
    pub(super) async fn bring_up_to_date(&mut self, node: NodeId, plan: &Plan) -> Result<(), Prepare> {
        let Some(conn) = self.conns[node.index()].as_mut() else {
            return Ok(());
        };
        let same_settings = conn.applied.settings_generation == self.settings.generation();
        if let Some(sql) = (!same_settings)
            .then(|| self.settings.diff(&conn.applied.settings))
            .flatten()
        {
            let x = conn.exchange(&query(&sql)).await.map_err(Prepare::Node)?;
            if let Some(err) = x.error {
                let msg = crate::protocol::messages::error_field(err.body(), b'M')
                    .unwrap_or("error")
                    .to_owned();
                return Err(Prepare::Refused(ProxyError::error(
                    "55000",
                    format!(
                        "pgfleet: cannot apply this session's settings on node \"{}\": {msg}",
                        conn.target.name
                    ),
                )));
            }
            conn.applied.settings = self.settings.entries().clone();
            conn.applied.unnamed = None;
        }
        // Applied just now, or equal already: either way the maps match.
        conn.applied.settings_generation = self.settings.generation();
        let mut replay: Vec<u8> = Vec::new();
        let mut added: Vec<(String, u64)> = Vec::new();
        // A name the client closed and now parses again may still exist here if the Close ran elsewhere; with
        // shared connections, another session may have prepared the same proxy-named statement here.
        for (name, _) in &plan.parses {
            if name.is_empty() || !conn.applied.prepared.contains(name) {
                continue;
            }
            if self.shared_conns || self.statements.get(name).is_none() {
                replay.extend_from_slice(&close_statement(name));
                conn.applied.prepared.remove(name);
            }
        }
        for name in &plan.needs {
            let Some(stmt) = self.statements.get(name) else {
                continue;
            };
            let present = if name.is_empty() {
                conn.applied.unnamed == Some(stmt.id)
            } else {
                conn.applied.prepared.contains(name)
            };
            if !present {
                replay.extend_from_slice(&stmt.parse);
                added.push((name.clone(), stmt.id));
            }
        }
        if !replay.is_empty() {
            replay.extend_from_slice(&sync());
            let x = conn.exchange(&replay).await.map_err(Prepare::Node)?;
            if let Some(err) = x.error {
                let msg = crate::protocol::messages::error_field(err.body(), b'M')
                    .unwrap_or("error")
                    .to_owned();
                return Err(Prepare::Refused(ProxyError::error(
                    "26000",
                    format!(
                        "pgfleet: cannot prepare the statement again on node \"{}\": {msg}",
                        conn.target.name
                    ),
                )));
            }
            for (name, id) in added {
                if name.is_empty() {
                    conn.applied.unnamed = Some(id);
                } else {
                    conn.applied.prepared.insert(name);
                }
            }
        }
        Ok(())
    }

    /// Bookkeeping after a request completed on `node`.
    pub(in crate::frontend) fn finish(&mut self, node: NodeId, mut plan: Plan, outcome: &Outcome) {
        let was_in_tx = self.routing.tx_node.is_some();
        let Some(conn) = self.conns[node.index()].as_mut() else {
            return;
        };
        conn.status = outcome.status;
        if plan.has_query {
            conn.applied.unnamed = None;
        }
        for (i, (name, stmt)) in plan.parses.drain(..).enumerate() {
            if i >= outcome.parses_ok {
                break;
            }
            let id = self.statements.insert(&name, stmt);
            if name.is_empty() {
                conn.applied.unnamed = Some(id);
            } else {
                conn.applied.prepared.insert(name);
            }
        }
        for name in &plan.closes {
            self.statements.remove(name);
            conn.applied.prepared.remove(name);
        }
        if !outcome.saw_error {
            for name in &plan.deallocates {
                if name == "*" {
                    self.statements.clear();
                    conn.applied.prepared.clear();
                    conn.applied.unnamed = None;
                } else {
                    self.statements.remove(name);
                    conn.applied.prepared.remove(name);
                }
            }
        }
        if let Some(pin) = plan.pin
            && self.routing.pinned.is_none()
        {
            tracing::info!(node = %conn.target.name, reason = ?pin, "session pinned to node");
            self.routing.pinned = Some((node, pin));
            conn.applied.unresettable = true;
        }
        let changed = !plan.changes.is_empty();
        if changed {
            record(&mut self.pending_changes, plan.changes, outcome);
        }
        match outcome.status {
            TxStatus::InTransaction | TxStatus::Failed => {
                self.routing.tx_node = Some(node);
                if changed {
                    // The server reads the transaction's next statements in an encoding it set.
                    self.reading.encoding =
                        self.settings.client_encoding_with(self.pending_changes.changes());
                }
            }
            TxStatus::Idle => {
                self.routing.tx_node = None;
                if !self.pending_changes.is_empty() {
                    let committed = if was_in_tx || outcome.began_tx {
                        outcome.last_commit
                    } else {
                        !outcome.saw_error
                    };
                    if committed {
                        // The node that ran them has them, but for a RESET of a startup parameter.
                        let (ran, generation) =
                            Settings::as_run_on(&conn.applied.settings, self.pending_changes.changes());
                        for c in self.pending_changes.changes() {
                            self.settings.apply(c);
                        }
                        conn.applied.settings = ran;
                        conn.applied.settings_generation = generation;
                    }
                    self.reading.encoding = self.settings.client_encoding();
                }
                // Also the savepoints of a transaction that changed no setting.
                self.pending_changes.clear();
            }
        }
        if plan.ddl {
            self.shared.catalog.invalidate(&self.database, plan.code_ddl);
        }
        // The room of a request's few parses is kept for the next; a long batch's is not held for the
        // session's life.
        if plan.parses.capacity() <= SPARE_PARSES {
            self.spare_parses = plan.parses;
        }
    }

    /// Returns every node connection to its pool (rolling back and resetting as needed).
    pub(super) async fn close(&mut self) {
        for slot in self.conns.iter_mut() {
            if let Some(c) = slot.take() {
                c.release().await;
            }
        }
    }
}

/// Records what a request changed: everything when it succeeded; when it failed, only the savepoint
/// statements that ran before the failure, since a later ROLLBACK TO may name one of them (pgJDBC's
/// `autosave` sends its savepoint with the statement that fails). A failed request's setting changes are
/// not recorded.
fn record(pending: &mut PendingChanges, changes: Vec<SessionChange>, outcome: &Outcome) {
    if !outcome.saw_error {
        changes.into_iter().for_each(|c| pending.record(c));
        return;
    }
    changes
        .into_iter()
        .filter(|c| matches!(c, SessionChange::Savepoint(_)))
        .take(outcome.savepoint_tags)
        .for_each(|c| pending.record(c));
}

/// Why bringing a node up to date failed.
pub(super) enum Prepare {
    /// The node failed.
    Node(BackendError),
    /// The node refused what the proxy replayed; the client gets this error.
    Refused(ProxyError),
}
