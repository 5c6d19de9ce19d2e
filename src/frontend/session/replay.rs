//! Session state on nodes: before a request runs on a node, the settings and prepared statements the
//! session has and that node lacks are replayed there (`bring_up_to_date`); after it, what the request
//! changed is recorded (`finish`: prepared statements, pins, the open transaction, committed settings);
//! at the end, every node connection goes back to its pool (`close`).

use super::Session;
use crate::backend::BackendError;
use crate::backend::conn::AppliedState;
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

    /// Bookkeeping after a request completed on `node`: the session takes over the plan's parses and
    /// setting changes.
    pub(in crate::frontend) fn finish(&mut self, node: NodeId, plan: &mut Plan, outcome: &Outcome) {
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
        let changed = !plan.changes.is_empty() || plan.ends_last;
        let mut tx = Transaction {
            pending: &mut self.pending_changes,
            settings: &mut self.settings,
            applied: &mut conn.applied,
        };
        if changed {
            tx.record(std::mem::take(&mut plan.changes), plan.ends_last, outcome);
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
                // What is left ran in the request's implicit transaction, which the failure (if any) undid.
                let left = !tx.pending.is_empty();
                tx.end(!outcome.saw_error);
                if changed || left {
                    self.reading.encoding = self.settings.client_encoding();
                }
            }
        }
        if plan.ddl {
            self.shared.catalog.invalidate(&self.database, plan.code_ddl);
        }
        // The room of a request's few parses is kept for the next; a long batch's is not held for the
        // session's life.
        if plan.parses.capacity() <= SPARE_PARSES {
            self.spare_parses = std::mem::take(&mut plan.parses);
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

/// The open transaction's bookkeeping as a request ends: its setting changes, the session's settings they go
/// to when it commits, and what the node that ran them has.
struct Transaction<'a> {
    pending: &'a mut PendingChanges,
    settings: &'a mut Settings,
    applied: &'a mut AppliedState,
}

impl Transaction<'_> {
    /// Records a request's changes in statement order: settings join the open transaction's, savepoints
    /// reorder them, and each transaction end that ran keeps them (COMMIT, PREPARE TRANSACTION) or drops
    /// them (ROLLBACK, a COMMIT of a failed transaction) as its command tag says; `ends_last`: one more
    /// follows them all. Of a request that failed, only what ran before the failure counts (the tags say
    /// how many savepoints and ends ran), and of that not the settings after the last savepoint or end that
    /// ran: the failure undid them with their (sub)transaction, whatever the client does next. pgJDBC's
    /// `autosave` sends its savepoint with the statement that fails; that savepoint counts.
    fn record(&mut self, changes: Vec<SessionChange>, ends_last: bool, outcome: &Outcome) {
        let is_marker =
            |c: &SessionChange| matches!(c, SessionChange::Savepoint(_) | SessionChange::EndTransaction);
        let markers = changes.iter().filter(|c| is_marker(c)).count();
        let last_end_ran = ends_last && outcome.control_tags > markers;
        let keep = match outcome.saw_error && !last_end_ran {
            false => changes.len(),
            // Up to and with the last marker that ran.
            true => changes
                .iter()
                .enumerate()
                .filter(|(_, c)| is_marker(c))
                .nth(outcome.control_tags.min(markers).wrapping_sub(1))
                .map_or(0, |(at, _)| at + 1),
        };
        let mut marker = 0;
        for change in changes.into_iter().take(keep) {
            match change {
                SessionChange::EndTransaction => {
                    self.end(outcome.kept(marker));
                    marker += 1;
                }
                SessionChange::Savepoint(_) => {
                    self.pending.record(change);
                    marker += 1;
                }
                change => self.pending.record(change),
            }
        }
        if last_end_ran {
            self.end(outcome.kept(markers));
        }
    }

    /// The transaction ended, keeping its setting changes or not.
    fn end(&mut self, kept: bool) {
        if kept && !self.pending.is_empty() {
            // The node that ran them has them, but for a RESET of a startup parameter.
            let (ran, generation) = Settings::as_run_on(&self.applied.settings, self.pending.changes());
            for c in self.pending.changes() {
                self.settings.apply(c);
            }
            self.applied.settings = ran;
            self.applied.settings_generation = generation;
        }
        // Also the savepoints of a transaction that changed no setting.
        self.pending.clear();
    }
}

/// Why bringing a node up to date failed.
pub(super) enum Prepare {
    /// The node failed.
    Node(BackendError),
    /// The node refused what the proxy replayed; the client gets this error.
    Refused(ProxyError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::Savepoint;

    fn set(name: &str) -> SessionChange {
        SessionChange::Set {
            name: name.into(),
            statement: format!("SET {name} = 1"),
        }
    }

    #[test]
    fn a_request_keeps_what_its_transactions_kept() {
        let end = || SessionChange::EndTransaction;
        let mark = |name: &str| SessionChange::Savepoint(Savepoint::Set(name.into()));
        // (changes, a transaction end after them, the node's tags of transaction control, the request
        // failed, the session's settings after it, the open transaction's changes after it)
        type Case = (
            Vec<SessionChange>,
            bool,
            &'static [&'static str],
            bool,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            // Rolled back in the middle; what follows is the next transaction's.
            (
                vec![set("a"), end(), set("b")],
                false,
                &["ROLLBACK"],
                false,
                &[],
                &["b"],
            ),
            (
                vec![set("a"), end(), set("b")],
                false,
                &["COMMIT"],
                false,
                &["a"],
                &["b"],
            ),
            // The last end: a commit, a commit that rolled back a failed transaction, PREPARE TRANSACTION.
            (vec![set("a")], true, &["COMMIT"], false, &["a"], &[]),
            (vec![set("a")], true, &["ROLLBACK"], false, &[], &[]),
            (vec![set("a")], true, &["PREPARE TRANSACTION"], false, &["a"], &[]),
            // Failed after a commit: the commit stands, what came after it is undone.
            (
                vec![set("a"), end(), set("b")],
                false,
                &["COMMIT"],
                true,
                &["a"],
                &[],
            ),
            (vec![set("a")], true, &["COMMIT"], true, &["a"], &[]),
            // The commit itself failed.
            (vec![set("a")], true, &[], true, &[], &[]),
            // Failed after a savepoint: the change before it stands (a ROLLBACK TO it keeps it).
            (
                vec![set("a"), mark("s"), set("b")],
                false,
                &["SAVEPOINT"],
                true,
                &[],
                &["a"],
            ),
            (vec![mark("s"), set("a")], false, &[], true, &[], &[]),
            // Two transactions ended in one string, then a third left open.
            (
                vec![set("a"), end(), set("b"), end(), set("c")],
                false,
                &["COMMIT", "ROLLBACK"],
                false,
                &["a"],
                &["c"],
            ),
        ];
        for (i, (changes, ends_last, tags, failed, settings, pending)) in cases.into_iter().enumerate() {
            let mut outcome = Outcome {
                saw_error: failed,
                ..Default::default()
            };
            for tag in tags {
                outcome.note_tag(tag.as_bytes());
            }
            let mut tx_changes = PendingChanges::default();
            let mut session = Settings::from_startup([]);
            let mut applied = AppliedState::default();
            let mut tx = Transaction {
                pending: &mut tx_changes,
                settings: &mut session,
                applied: &mut applied,
            };
            tx.record(changes, ends_last, &outcome);
            let names = |map: &std::collections::BTreeMap<String, String>| -> Vec<String> {
                map.keys().cloned().collect()
            };
            assert_eq!(
                names(session.entries()),
                *settings,
                "case {i}: the session's settings"
            );
            assert_eq!(names(&applied.settings), *settings, "case {i}: the node's");
            let open: Vec<&str> = tx_changes.changes().iter().filter_map(|c| c.name()).collect();
            assert_eq!(open, *pending, "case {i}: the open transaction's");
        }
    }
}
