//! What a session learns and asks about WAL positions for the consistency levels (docs/routing.md,
//! "Consistency levels"): the bound of what its reads saw (monotonic reads), the primary's current position
//! (`universal`), whether a replica has replayed a position (asked in a round trip of its own when a read
//! cannot be led by the question), which position query rides behind a request, and what a request's
//! commit position and read position leave in the session's routing state afterwards.

use super::Session;
use crate::backend::Checkout;
use crate::cluster::NodeId;
use crate::cluster::positions::PrimaryAsk;
use crate::cluster::view::{FleetView, Primary};
use crate::config::{Consistency, ReplicaAffinity};
use crate::frontend::forward::Trailer;
use crate::frontend::request::{End, Plan, Request};
use crate::protocol::TxStatus;
use crate::protocol::lsn::Lsn;
use crate::protocol::wal_call::WalPosition;
use crate::router::classify::Target;

impl Session {
    /// Monotonic reads, before a read leaves the node of the session's last request that did not say how
    /// far it saw: a primary position taken after that request ended, which bounds it. A health check of
    /// the primary that began after it serves; else the primary is asked.
    pub(super) async fn bound_of_seen(&mut self, view: &FleetView) -> Option<Lsn> {
        if let (Primary::One(p), Some(read_at)) = (view.primary(self.shard), self.last_read_at)
            && let Some(state) = view.nodes.get(p.index())
            && state.started.is_some_and(|s| s > read_at)
            && let Some(lsn) = state.lsn
        {
            return Some(lsn);
        }
        self.primary_position().await
    }

    /// The primary's current WAL position, asked after this call began; concurrent asks of all sessions
    /// share one query (`cluster::positions`). None when the primary could not say.
    ///
    /// A cancel ends the wait, as it ends a replica's question (`replayed`): a primary that hangs would
    /// otherwise hold the cancelled request until it answered or `pool.connect_timeout` ran out. The
    /// connection with the question on it is then closed, unless the session keeps state on the primary
    /// (then the wait goes on, and the cancel reaches the primary with the request). None on a cancel too:
    /// the request then ends with 57014 before any node runs it (`CancelKey::run_on`).
    pub(super) async fn primary_position(&mut self) -> Option<Lsn> {
        let shared = self.shared.clone();
        let primary = shared.fleet.primary(self.shard).ok()?;
        let cancelable = !self.routing.holds_state_on(primary);
        let handle = self.key.handle();
        let mut asking = false;
        let asked = handle
            .unless_canceled(cancelable, async {
                let turn = match shared.fleet.positions(self.shard).primary_position().await {
                    PrimaryAsk::Known(lsn) => return Some(lsn),
                    PrimaryAsk::Turn(turn) => turn,
                };
                asking = true;
                self.connect(primary).await.ok()?;
                let lsn = self.ask_position(primary, WalPosition::Written).await;
                self.release_between_transactions(primary);
                let lsn = lsn?;
                turn.answer(lsn);
                Some(lsn)
            })
            .await;
        // On a cancel, dropping the turn lets the next waiting session ask.
        if asked.is_none() && asking {
            self.conns[primary.index()] = None;
        }
        asked.flatten()
    }

    /// Which position a commit on `node` (the primary) gets: the insert position when the commit may have
    /// been asynchronous (the session named `synchronous_commit`, the server's health check found
    /// asynchronous commits in its configuration or a role's or database's settings, or a function of the
    /// session's database sets it in its body), else the write position (see `WalPosition`).
    pub(in crate::frontend) fn commit_position(&self, node: NodeId) -> WalPosition {
        let by_default = self
            .current
            .view
            .nodes
            .get(node.index())
            .is_some_and(|n| n.async_commits);
        if self.async_commits || by_default || self.rules.may_set_commit_mode() {
            WalPosition::Inserted
        } else {
            WalPosition::Written
        }
    }

    /// The position of the commit the session just made on `node`, asked in a round trip of its own.
    pub(in crate::frontend) async fn ask_commit_position(&mut self, node: NodeId) -> Option<Lsn> {
        let position = self.commit_position(node);
        let answer = self.ask_position(node, position).await?;
        Some(self.position_answer(node, position, answer))
    }

    /// `answer`, `node`'s answer to `position`, as the WAL position it stands for: an insert position is read
    /// as its page boundary (`Lsn::inserted_end`) with the node's WAL page and segment sizes as the current
    /// request's fleet snapshot has them (unknown before its first health check); the others as they are.
    pub(in crate::frontend) fn position_answer(
        &self,
        node: NodeId,
        position: WalPosition,
        answer: Lsn,
    ) -> Lsn {
        match position {
            WalPosition::Inserted => {
                answer.inserted_end(self.current.view.nodes.get(node.index()).and_then(|n| n.wal))
            }
            WalPosition::Written | WalPosition::Replayed => answer,
        }
    }

    /// Notes a request that may make the session's commits asynchronous (see `async_commits`): one that sets
    /// `synchronous_commit`, or a request on the primary whose text names it (SET LOCAL, `set_config`). The
    /// texts are read only of requests that may write or run in a transaction (`set_config` counts as a
    /// write), and only where commit positions are asked (not at `consistency = "off"`, nor with the primary
    /// as the fleet's only node): reads outside transactions are most requests and set nothing a commit
    /// uses. A SET, which lasts, is noted everywhere.
    pub(super) fn note_commit_mode(&mut self, node: NodeId, plan: &Plan, req: &Request) {
        if self.async_commits {
            return;
        }
        let sets = plan.changes.iter().any(|c| {
            matches!(c, crate::router::classify::SessionChange::Set { name, .. } if name == "synchronous_commit")
        });
        self.async_commits = sets
            || ((plan.may_write() || self.routing.tx_node.is_some() || plan.tx_start.is_some())
                && matches!(self.current.view.primary(self.shard), Primary::One(p) if *p == node)
                && self.commit_positions_asked()
                && super::consistency::names_synchronous_commit(req, &self.statements));
    }

    /// Whether the session's commits get positions at all: not at `consistency = "off"`, nor with the
    /// primary as the fleet's only node (`trailer_for`).
    pub(super) fn commit_positions_asked(&self) -> bool {
        self.current.config.routing.consistency() != Consistency::Off && !self.primary_alone()
    }

    /// A WAL position asked in a round trip of its own on the session's connection to `node`.
    async fn ask_position(&mut self, node: NodeId, position: WalPosition) -> Option<Lsn> {
        let conn = self.conns[node.index()].as_mut()?;
        tracing::debug!(node = %conn.target.name, function = position.name(), "position asked in a round trip of its own");
        conn.call_position(position).await.ok().flatten()
    }

    /// The position query that rides behind a request (`forward::Trailer`), if any: behind a request on
    /// the primary that may commit a write (its commit position, without a round trip of its own) or read
    /// (how far it saw; not when the session's reads keep to the primary), and with `replica_affinity =
    /// "statement"` behind a read on a replica (how far it saw, which lets the next read move to another
    /// replica). None inside a transaction the request does
    /// not end (the query would be part of it), after a Flush, around COPY, for pinned sessions and at
    /// `consistency = "off"`.
    pub(super) fn trailer_for(&self, node: NodeId, plan: &Plan, req: &Request, end: End) -> Option<Trailer> {
        let routing = &self.current.config.routing;
        if routing.consistency() == Consistency::Off
            || end == End::Open
            || self.routing.pinned.is_some()
            || plan.pin.is_some()
            || self.routing.route == Some(Target::Primary)
        {
            return None;
        }
        // Which query would ride first; the request's texts are looked at only when one would.
        let kind = if matches!(self.current.view.primary(self.shard), Primary::One(p) if *p == node) {
            let wrote = plan.may_write() || self.tx_wrote;
            if wrote && self.primary_alone() {
                // Where a commit landed matters only to a later read elsewhere; with the primary as the only
                // node there is none. The commit counts as untracked instead (`untracked_commit`), which the
                // first read elsewhere after a reload added a node asks the primary about.
                return None;
            } else if wrote {
                Trailer::commit(self.commit_position(node))
            } else if self.primary_alone() {
                // How far a read on the primary saw matters only to a later read elsewhere; with the primary
                // as the only node there is none (a replica added later finds no position and asks the
                // primary).
                return None;
            } else if routing.replica_affinity == ReplicaAffinity::Session
                && self.routing.read_home == Some(node)
            {
                // The session's reads stay on the primary, which has everything; should they move (the
                // primary stops serving reads), the session asks the primary once how far it could have
                // seen (`bound_of_seen`) instead of every read saying it.
                return None;
            } else {
                Trailer::Primary
            }
        } else if routing.replica_affinity == ReplicaAffinity::Statement
            && !self.shared.fleet.forward.enabled()
        {
            Trailer::Replay
        } else {
            return None;
        };
        let in_transaction = self.routing.tx_node.is_some() || plan.tx_start.is_some();
        if (in_transaction && !super::consistency::may_end_transaction(req, &self.statements))
            || super::consistency::may_copy(req, &self.statements)
        {
            return None;
        }
        Some(kind)
    }

    /// Whether the session's fleet is its primary alone (no node retired by a reload counts): then no read
    /// can go anywhere else, and positions matter to none.
    pub(super) fn primary_alone(&self) -> bool {
        self.current.nodes.iter().filter(|n| !n.is_retired()).count() == 1
    }

    /// Whether a request may commit without a position query (see `trailer_for`): then, from before it
    /// reaches the primary until its client has the answer, the fleet counts it as running an untracked
    /// commit (`Positions::untracked_commit`), which a `global` read elsewhere after a reload added a node
    /// asks the primary about (`candidates`).
    pub(super) fn commits_untracked(&self, plan: &Plan) -> bool {
        (plan.may_write() || self.tx_wrote)
            && self.current.config.routing.consistency() != Consistency::Off
            && self.primary_alone()
    }

    /// Whether a replica has replayed `lsn`: known fleet-wide (a health check or any session's probe said
    /// so), else asked on the session's own connection, whose answer every session then shares.
    pub(super) async fn has_replayed(&mut self, node: NodeId, lsn: Lsn) -> bool {
        let slot = self.shared.fleet.node(node);
        if slot.replayed.covers(lsn) {
            return true;
        }
        let replayed = self.replayed(node).await;
        if let Some(l) = replayed {
            slot.replayed.saw(l);
        }
        replayed.is_some_and(|l| l >= lsn)
    }

    /// A replica's replay position, asked on the session's own connection to it.
    pub(super) async fn replayed(&mut self, node: NodeId) -> Option<Lsn> {
        if self.shared.fleet.forward.enabled() {
            // Forwarded replicas: pgfleet itself knows what it has applied there.
            return self.shared.fleet.forward.visible(node.index());
        }
        // A replica that hangs (in the connection attempt or on the question) would hold the request here past
        // the client's cancel: unless the session keeps state on it, its connection goes instead, holding
        // nothing the session cannot set up again.
        let cancelable = !self.routing.holds_state_on(node);
        let handle = self.key.handle();
        let asked = handle
            .unless_canceled(cancelable, async {
                // A full pool is an unknown answer, not a reason to wait: a session waiting here for one
                // replica while holding a probed connection to another could wait on a session doing the
                // same the other way.
                self.connect_with(node, Checkout::Immediate).await.ok()?;
                self.ask_position(node, WalPosition::Replayed).await
            })
            .await;
        let Some(lsn) = asked else {
            self.conns[node.index()] = None;
            return None;
        };
        // Under transaction pooling the probed connection goes back at once: the read may go elsewhere, and
        // a connection kept until this session's next request on that node is one other sessions lack.
        self.release_between_transactions(node);
        lsn
    }

    /// After a request: its commit position for read-your-writes (from the trailer, else asked of the
    /// primary on the same connection) and, for monotonic reads, where it ran and how far it saw.
    pub(super) async fn after_request(&mut self, node: NodeId, wrote: bool, trailer: Option<Trailer>) {
        let status = self.conn(node).map_or(TxStatus::Idle, |c| c.status);
        let state = if status == TxStatus::Idle {
            "idle"
        } else {
            "idle in transaction"
        };
        if let Some(entry) = &self.entry {
            entry.update(
                state,
                self.routing
                    .tx_node
                    .or(self.routing.pinned.map(|p| p.0))
                    .map(NodeId::index),
            );
        }
        if self.current.config.routing.consistency() == Consistency::Off || self.routing.pinned.is_some() {
            return;
        }
        let answer = std::mem::take(&mut self.trailer_answer)
            .filter(|_| status == TxStatus::Idle && trailer.is_some());
        self.routing.read_on(node, answer);
        self.last_read_at = Some(std::time::Instant::now());
        if status.in_transaction() {
            self.tx_wrote |= wrote;
            return;
        }
        let committed_write = wrote || std::mem::take(&mut self.tx_wrote);
        if !committed_write || self.shared.fleet.primary(self.shard).ok() != Some(node) {
            return;
        }
        if trailer.is_some_and(Trailer::is_commit) {
            // None: the primary could not say; reads go to the primary until a later write tells more.
            self.routing.wrote_at(answer);
            self.commit_untracked &= answer.is_none();
            return;
        }
        if self.primary_alone() {
            // Not asked (see `trailer_for`): should a reload add a node, the session's reads stay on the
            // primary until a later write says where it committed, and SHOW pgfleet.write_lsn asks the
            // primary.
            self.routing.wrote_at(None);
            self.commit_untracked = true;
            return;
        }
        // No trailer could ride behind this request (COPY, or a Flush-ended batch): ask separately.
        if self.conn(node).is_none() {
            return;
        }
        match self.ask_commit_position(node).await {
            Some(lsn) => {
                self.shared.fleet.positions(self.shard).acknowledged(lsn);
                self.routing.wrote_at(Some(lsn));
                self.commit_untracked = false;
            }
            // Unknown position: be safe and read from the primary until a later write tells us more.
            None => self.routing.wrote_at(None),
        }
    }
}
