//! Running one request: the routing policy names the candidates (`router::policy`), the session performs
//! what the policy cannot (read-your-writes probes, waits), connects, brings the node up to date, runs the
//! request (`forward`), retries a read on the next candidate when its node fails, and records the write
//! position after a committed write.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;

use super::replay::Prepare;
use super::{Session, SessionError};
use crate::backend::connect::Login;
use crate::backend::{BackendError, Checkout, Pools};
use crate::cluster::view::FleetView;
use crate::cluster::{Node, NodeId, ReplayPositions, ShardId};
use crate::config::{Consistency, Role};
use crate::frontend::forward::{Flow, FlowError, Redo};
use crate::frontend::request::{End, Plan, Request};
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::ProxyError;
use crate::router::classify::{Rule, Target};
use crate::router::policy::{Ask, Choice, NodeFacts};

/// Whether a raw ErrorResponse frame (type byte and length included) is a FATAL or PANIC.
fn is_fatal_frame(frame: &[u8]) -> bool {
    frame.get(5..).is_some_and(crate::backend::conn::is_fatal)
}

/// The policy's view of the live node flags, read from the fleet's atomics (no I/O, no allocation).
pub(super) struct LiveFacts<'a> {
    nodes: &'a [Arc<Node>],
    forward: &'a dyn ReplayPositions,
    pools: &'a Pools,
    /// One clock read per decision, taken when first needed (a write never needs it).
    now_ms: std::cell::Cell<Option<u64>>,
}

impl<'a> LiveFacts<'a> {
    pub(super) fn new(nodes: &'a [Arc<Node>], forward: &'a dyn ReplayPositions, pools: &'a Pools) -> Self {
        LiveFacts {
            nodes,
            forward,
            pools,
            now_ms: std::cell::Cell::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        match self.now_ms.get() {
            Some(now) => now,
            None => {
                let now = crate::cluster::now_ms();
                self.now_ms.set(Some(now));
                now
            }
        }
    }
}

impl NodeFacts for LiveFacts<'_> {
    fn slots(&self) -> usize {
        self.nodes.len()
    }

    fn retired(&self, node: NodeId) -> bool {
        self.nodes[node.index()].is_retired()
    }

    fn up(&self, node: NodeId) -> bool {
        self.nodes[node.index()].is_up_with(|| self.now_ms())
    }

    fn role(&self, node: NodeId) -> Role {
        self.nodes[node.index()].role
    }

    fn weight(&self, node: NodeId) -> u32 {
        self.nodes[node.index()].weight()
    }

    fn in_use(&self, node: NodeId) -> usize {
        self.pools.in_use(node.index())
    }

    fn forwarding(&self) -> bool {
        self.forward.enabled()
    }

    fn forward_visible(&self, node: NodeId) -> Option<Lsn> {
        self.forward.visible(node.index())
    }

    fn name(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(node.index()).map(|n| n.target.name.as_str())
    }

    fn shard(&self, node: NodeId) -> ShardId {
        self.nodes
            .get(node.index())
            .map_or(ShardId::default(), |n| n.shard)
    }

    fn replayed(&self, node: NodeId) -> Option<Lsn> {
        self.nodes.get(node.index()).and_then(|n| n.replayed.get())
    }
}

impl Session {
    pub(super) async fn dispatch(&mut self, req: &Request, end: End) -> Result<(), SessionError> {
        self.current.refresh();
        if self.shared.fleet.generation() != self.fleet_generation {
            self.leave_retired_nodes().await;
        }
        // The candidate list is reused from request to request rather than allocated for each.
        let mut candidates = std::mem::take(&mut self.candidates);
        let result = self.dispatch_to(req, end, &mut candidates).await;
        self.candidates = candidates;
        result
    }

    async fn dispatch_to(
        &mut self,
        req: &Request,
        end: End,
        candidates: &mut Vec<NodeId>,
    ) -> Result<(), SessionError> {
        // The clock is read only when slow statements are logged.
        let started = self
            .current
            .config
            .log
            .slow_statement
            .map(|_| std::time::Instant::now());
        if super::consistency::has_token_statement(req, &self.statements) {
            if end == End::Sync {
                return self.answer_token_extended(req).await;
            }
            return self.refuse(
                ProxyError::error(
                    "0A000",
                    "pgfleet answers pgfleet.write_lsn and pgfleet.read_after itself, not in a batch left open \
                     by Flush",
                )
                .with_hint("End the request with Sync, or send the statement as a simple query."),
                end,
            )
            .await;
        }
        let with_ids;
        // The sharded steps are boxed: inline, their state (several KiB) would be part of every request's
        // future in every fleet, sharded or not, and memory each request touches.
        let req = match self.shared.sharding.is_some() {
            false => req,
            true => {
                let req = match Box::pin(self.assign_ids(req, end)).await? {
                    super::shards::Ids::Unchanged => req,
                    super::shards::Ids::Rewritten(r) => {
                        with_ids = r;
                        &with_ids
                    }
                    super::shards::Ids::Answered => return Ok(()),
                };
                if let super::shards::Step::Answered = Box::pin(self.shard_step(req, end)).await? {
                    return Ok(());
                }
                req
            }
        };
        let spare = std::mem::take(&mut self.spare_parses);
        let mut plan = Plan::for_request_in(req, &self.statements, &self.rules, spare, &mut self.reading);
        // Function volatility only matters for what would otherwise be a read: a write does not wait for it,
        // which keeps writes fast when the primary is slow to answer the catalog query. A read sent to the
        // primary by the catalog (an unlogged table) may be a replica's again once the table is LOGGED.
        let may_read = plan.target == Target::Replica || Rule::is_read_on_primary(&plan.rule);
        // A write waits for them only where its commit's position is asked, and only for what they say of
        // function bodies: whether some function may make the commit asynchronous (`commit_position`).
        let commit_rules = plan.may_write() && self.commit_positions_asked() && !self.function_bodies_known();
        if ((may_read && !self.routing.bound() && !self.function_rules_fresh()) || commit_rules)
            && self.reload_function_rules().await
        {
            plan = Plan::for_request(req, &self.statements, &self.rules);
        }
        let serializable = self.settings.serializable()
            || self.routing.serializable_default == Some(self.settings.generation());
        if let Some((target, rule)) =
            crate::router::policy::session_target(plan.target, &plan.rule, serializable, || self.primary_up())
        {
            plan.target = target;
            if let Some(rule) = rule {
                plan.rule = rule.label();
            }
        }
        // pg_cancel_backend / pg_terminate_backend of a client session: answered without a node.
        if plan.target == Target::Primary && self.answer_signal_call(req, end).await? {
            return Ok(());
        }
        if let Err(e) = self.candidates(&plan, (req, end), candidates).await {
            return self.refuse(e, end).await;
        }
        let retry_allowed = !self.routing.bound() && plan.target == Target::Replica;
        let mut last_err = None;
        // A read whose node's pool is full moves on to the next candidate without waiting; only when no
        // candidate could serve it does it wait, on the first full one (its best choice). A full pool is not
        // a node failure: nothing is marked down or counted against the node.
        let mut first_full: Option<NodeId> = None;
        // By index: a led read that found its replica behind adds the primary when no candidate after it may
        // serve (see the Stale arm).
        let mut i = 0;
        while let Some(&candidate) = candidates.get(i) {
            i += 1;
            let last = i == candidates.len() || !retry_allowed;
            // The primary stands in for replicas that cannot serve a read (down, behind), not for replicas
            // that are busy: unless it is a read node itself, a read that found the replicas' pools full
            // waits for one of them rather than loading the primary.
            let overflow = first_full.filter(|_| self.is_fallback_primary(candidate, &plan));
            let mut node = overflow.unwrap_or(candidate);
            let checkout = if (last && first_full.is_none()) || overflow.is_some() {
                Checkout::Wait
            } else {
                Checkout::Immediate
            };
            // The usual case, a held connection with nothing unread, needs no wait (nor a future to poll).
            let mut connected = match self.holds_quiet(node) {
                true => Ok(()),
                false => self.connect_with(node, checkout).await,
            };
            if let Err(e) = &connected
                && e.is_pool_full()
                && !last
                && overflow.is_none()
            {
                first_full.get_or_insert(node);
                continue;
            }
            if let (Err(e), Some(best)) = (&connected, first_full)
                && last
                && overflow.is_none()
                && (e.is_pool_full() || e.is_node_failure())
            {
                if e.is_node_failure() {
                    self.shared.stats.node_error(node.index());
                }
                node = best;
                connected = self.connect(node).await;
            }
            if let Err(e) = connected {
                if !e.is_pool_full() && !e.is_canceled() && !e.is_node_full() {
                    self.shared.stats.node_error(node.index());
                }
                if self.routing.holds_state_on(node) {
                    return self.node_lost(node, e, end, false).await;
                }
                // A node at its max_connections is passed over like a failed one, without counting against
                // it; when no candidate is left the client gets the node's own 53300.
                if !(e.is_node_failure() || e.is_node_full()) || last {
                    return self.refuse(self.error_of(&e), end).await;
                }
                last_err = Some(self.error_of(&e));
                continue;
            }
            if !self.needs_no_replay(node, &plan)
                && let Err(e) = self.bring_up_to_date_or_cancel(node, &plan).await
            {
                match e {
                    Prepare::Node(e) if e.is_node_failure() && !last => {
                        self.conns[node.index()] = None;
                        self.shared.fleet.nodes()[node.index()].mark_down();
                        self.shared.stats.node_error(node.index());
                        last_err = Some(self.error_of(&e));
                        continue;
                    }
                    Prepare::Node(e) => {
                        self.conns[node.index()] = None;
                        if self.routing.holds_state_on(node) {
                            return self.node_lost(node, e, end, false).await;
                        }
                        return self.refuse(self.error_of(&e), end).await;
                    }
                    Prepare::Refused(err) => return self.refuse(err, end).await,
                }
            }
            let label = self.routing.label(&plan.rule);
            // The node's name is looked up only when the line is logged.
            tracing::debug!(node = %self.shared.fleet.nodes()[node.index()].target.name, rule = %label, "routing request");
            // Another session's answer may have come while this read waited for it or for a connection: then
            // the replica is known to have replayed what the read needs, and no question goes with it.
            let leading = self
                .lead
                .filter(|(n, _)| *n == node)
                .map(|(_, need)| need)
                .filter(|&need| !self.current.nodes[node.index()].replayed.covers(need));
            // A led read is counted once it served: one that found its replica behind did not.
            let count_later = leading.map(|_| (plan.target, label.to_owned()));
            if leading.is_none() {
                self.count_route(node, plan.target, label);
            }
            self.lead_need = leading;
            let wrote = plan.may_write();
            self.note_commit_mode(node, &plan, req);
            let trailer = self.trailer_for(node, &plan, req, end);
            self.trailer = trailer;
            self.trailer_answer = None;
            // Held until the client has the answer, whatever the outcome (see `commits_untracked`).
            let untracked_by = self.commits_untracked(&plan).then(|| self.shared.clone());
            let _untracked = untracked_by
                .as_ref()
                .map(|s| s.fleet.positions(self.shard).untracked_commit());
            match Flow::run(self, node, req, end, &mut plan, retry_allowed).await {
                Ok(()) => {
                    if let Some((target, label)) = &count_later {
                        self.count_route(node, *target, label);
                    }
                    if let Some(started) = started {
                        self.log_if_slow(req, node, started);
                    }
                    self.after_request(node, wrote, trailer).await;
                    self.release_between_transactions(node);
                    return Ok(());
                }
                Err(FlowError::Client(e)) => return Err(e),
                Err(FlowError::Canceled) => {
                    // Nothing reached the node: under transaction pooling its connection goes back as it came.
                    self.release_between_transactions(node);
                    return self.refuse(self.error_of(&BackendError::Canceled), end).await;
                }
                Err(FlowError::Stale { why }) => {
                    // Nothing reached the client; the next candidate (known fresh, or the primary) serves. When
                    // this was the last attempt (the last candidate, or its full pool sent the read back to the
                    // best choice), the primary is tried once more, waiting for a connection: the policy's
                    // last resort.
                    match why {
                        Redo::RecoveryConflict => {
                            tracing::info!(node = %self.shared.fleet.nodes()[node.index()].target.name, "read canceled by a conflict with recovery: it runs on the next node");
                        }
                        Redo::Serializable => {
                            tracing::info!(node = %self.shared.fleet.nodes()[node.index()].target.name, "replica refused the session's serializable isolation: its reads run on the primary");
                            // No other replica would take it.
                            candidates.truncate(i);
                        }
                        Redo::Behind => {}
                    }
                    if i == candidates.len()
                        && self.shared.config().routing.fallback_to_primary
                        && self.routing.route != Some(Target::Replica)
                        && let Ok(p) = self.shared.fleet.primary(self.shard)
                        && p != node
                        && (node != candidate || !candidates.contains(&p))
                    {
                        candidates.push(p);
                        // It waits for a connection rather than sending the read back to the stale replica.
                        first_full = None;
                    }
                    last_err = Some(match why {
                        Redo::Behind => ProxyError::error(
                            "57P03",
                            "pgfleet: no replica has replayed what this read must see (routing.consistency) and \
                             routing.fallback_to_primary = false",
                        ),
                        Redo::RecoveryConflict => ProxyError::error(
                            "40001",
                            "canceling statement due to conflict with recovery: the replica's replay needed \
                             what the read held, and no other node may run it (routing.fallback_to_primary, \
                             pgfleet.route)",
                        ),
                        Redo::Serializable => ProxyError::error(
                            "0A000",
                            "cannot use serializable mode in a hot standby: this session's \
                             default_transaction_isolation is serializable, and no primary may run the read \
                             (routing.fallback_to_primary, pgfleet.route)",
                        )
                        .with_hint(
                            "Run the read on the primary, or use SET default_transaction_isolation = 'repeatable \
                             read' for reads on replicas.",
                        ),
                    });
                    continue;
                }
                Err(FlowError::Node {
                    error,
                    output_sent,
                    farewell_sent,
                }) => {
                    self.conns[node.index()] = None;
                    if error.is_node_failure() {
                        // Not for a FATAL that ends one backend only (an idle_in_transaction_session_timeout).
                        self.shared.fleet.nodes()[node.index()].mark_down();
                    }
                    self.shared.stats.node_error(node.index());
                    tracing::warn!(node = %self.shared.fleet.nodes()[node.index()].target.name, error = %error, "node failed during a request");
                    if output_sent || last || self.routing.tx_node.is_some() {
                        return self.node_lost(node, error, end, farewell_sent).await;
                    }
                    last_err = Some(self.error_of(&error));
                }
            }
        }
        let e = last_err.unwrap_or_else(|| {
            ProxyError::error("08006", "pgfleet: no node is available to run this statement")
        });
        self.refuse(e, end).await
    }

    /// Whether `node` is the primary in a read's candidates only as the fallback for replicas that cannot
    /// serve (`routing.primary_reads = false`).
    fn is_fallback_primary(&self, node: NodeId, plan: &Plan) -> bool {
        plan.target == Target::Replica
            && !self.shared.config().routing.primary_reads
            && self.shared.fleet.primary(self.shard).ok() == Some(node)
    }

    /// A standby refused the session's read a serializable snapshot it did not ask for: its reads go to the
    /// primary until its settings change (`RoutingState::serializable_default`).
    pub(in crate::frontend) fn serializable_by_default(&mut self) {
        self.routing.serializable_default = Some(self.settings.generation());
    }

    /// Whether `node` is the primary as of the current request.
    pub(in crate::frontend) fn is_primary(&self, node: NodeId) -> bool {
        self.current.view.primary_node(self.shard) == Some(node)
    }

    /// Whether the fleet has a primary that no check or session has seen fail.
    fn primary_up(&self) -> bool {
        let fleet = &self.shared.fleet;
        fleet.primary(self.shard).is_ok_and(|p| {
            fleet.view().nodes.get(p.index()).is_some_and(|n| n.up) && fleet.nodes()[p.index()].is_up()
        })
    }

    /// The nodes to try for a plan, best first, into `order`, or why there is none. The routing policy
    /// decides; the session only finds out what the policy cannot (the primary's position for `universal`,
    /// how far the session's reads saw, whether a replica replayed a position), when the policy says so.
    pub(super) async fn candidates(
        &mut self,
        plan: &Plan,
        // The request, asked only when a read could be led (`consistency::may_lead`).
        request: (&Request, End),
        order: &mut Vec<NodeId>,
    ) -> Result<(), ProxyError> {
        self.lead = None;
        let level = self.current.config.routing.consistency();
        let may_read_replica = plan.target == Target::Replica
            && !self.routing.bound()
            && self.routing.route != Some(Target::Primary);
        let floor = match level {
            // Commits made while the fleet was the primary alone carry no position (`trailer_for`): once a
            // reload added a node, the first read that may go there asks the primary, after them, how far it
            // is. With the primary alone, reads go nowhere else.
            Consistency::Global if may_read_replica => {
                match self.shared.fleet.positions(self.shard).uncovered() {
                    Some(count) if !self.primary_alone() => match self.primary_position().await {
                        Some(lsn) => {
                            let positions = self.shared.fleet.positions(self.shard);
                            positions.cover(count, lsn);
                            positions.acked()
                        }
                        None => Lsn::MAX,
                    },
                    _ => self.shared.fleet.positions(self.shard).acked(),
                }
            }
            // Unknown: the primary, which has everything, serves the read.
            Consistency::Universal if may_read_replica => self.primary_position().await.unwrap_or(Lsn::MAX),
            _ => Lsn::ZERO,
        };
        let ask = Ask {
            target: plan.target,
            deallocated_on: self.deallocated_on(plan),
            floor,
            shard: self.shard,
        };
        let (view, mut choice) = {
            // The usual case needs no await, and reads the session's copies of the snapshot.
            let shared = &*self.shared;
            let current = &self.current;
            let facts = LiveFacts::new(&current.nodes, shared.fleet.forward.as_ref(), &shared.pools);
            let routing = &current.config.routing;
            // Chosen once: a second run would move the round-robin balancer twice.
            let choice = self
                .routing
                .choose(ask, &current.view, &facts, routing, &shared.balancer, order)?;
            match choice {
                Choice::Fixed => return Ok(()),
                Choice::Reads(reads) if reads.unsure(order).is_empty() && !reads.bound_missing() => {
                    return reads.finish(&self.routing, &current.view, &facts, routing, order);
                }
                Choice::Reads(_) => {}
            }
            (current.view.clone(), choice)
        };
        if let Choice::Reads(reads) = choice
            && reads.bound_missing()
            && let Some(bound) = self.bound_of_seen(&view).await
        {
            self.routing.bound_seen(bound);
            choice = self.choose_in(ask, &view, order)?;
        }
        let Choice::Reads(mut reads) = choice else {
            return Ok(());
        };
        let wait = if reads.may_wait() {
            self.shared.config().routing.consistency_wait
        } else {
            std::time::Duration::ZERO
        };
        if let Some(&first) = reads.unsure(order).first()
            && wait.is_zero()
            && !self.shared.fleet.forward.enabled()
            && super::consistency::may_lead(request.0, plan, request.1)
        {
            // Another session's question to this replica may be on its way back: its answer, when new enough,
            // spares the node a question of ours (a fraction of a round trip instead of a statement). Whether
            // it was is decided where the question would be written, below.
            let replayed = &self.current.nodes[first.index()].replayed;
            if replayed.lead_in_flight() {
                tokio::select! {
                    biased;
                    () = self.key.canceled() => return Err(self.error_of(&BackendError::Canceled)),
                    () = replayed.await_lead() => {}
                }
            }
            // The first unsure candidate is asked in the same write as the read, ahead of it: no round trip
            // when it has caught up; the known-fresh candidates and the primary stay as fallbacks.
            self.lead = Some((first, reads.need(first)));
            reads.replayed(first, order);
        } else if !reads.unsure(order).is_empty() {
            // Ask the unsure candidates, waiting up to routing.consistency_wait for one to catch up.
            let deadline = tokio::time::Instant::now() + wait;
            'wait: loop {
                for i in 0..reads.unsure(order).len() {
                    if self.key.is_canceled() {
                        return Err(self.error_of(&BackendError::Canceled));
                    }
                    let n = reads.unsure(order)[i];
                    if self.has_replayed(n, reads.need(n)).await {
                        reads.replayed(n, order);
                        break 'wait;
                    }
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    reads.none_replayed(order);
                    break;
                }
                let pause = tokio::time::sleep((deadline - now).min(std::time::Duration::from_millis(10)));
                tokio::select! {
                    biased;
                    () = self.key.canceled() => return Err(self.error_of(&BackendError::Canceled)),
                    () = pause => {}
                }
            }
        }
        let shared = &*self.shared;
        let fleet = &shared.fleet;
        let nodes = fleet.nodes();
        let facts = LiveFacts::new(&nodes, fleet.forward.as_ref(), &shared.pools);
        reads.finish(&self.routing, &view, &facts, &shared.config().routing, order)
    }

    /// One run of the routing policy against a snapshot the caller holds.
    fn choose_in(
        &mut self,
        ask: Ask,
        view: &FleetView,
        order: &mut Vec<NodeId>,
    ) -> Result<Choice, ProxyError> {
        let shared = &*self.shared;
        let fleet = &shared.fleet;
        let nodes = fleet.nodes();
        let facts = LiveFacts::new(&nodes, fleet.forward.as_ref(), &shared.pools);
        self.routing.choose(
            ask,
            view,
            &facts,
            &shared.config().routing,
            &shared.balancer,
            order,
        )
    }

    /// For a DEALLOCATE of a named statement: the node where the session prepared it.
    fn deallocated_on(&self, plan: &Plan) -> Option<NodeId> {
        let name = plan.deallocates.first().filter(|n| n.as_str() != "*")?;
        (0..self.conns.len())
            .find(|n| {
                self.conns[*n]
                    .as_ref()
                    .is_some_and(|c| c.applied.prepared.contains(name))
            })
            .map(NodeId::new)
    }

    /// Counts a routing decision, through the session's recent counters when the rule is one of theirs.
    pub(super) fn count_route(&mut self, node: NodeId, target: Target, label: &str) {
        // The node's counters of the previous request, when it went to the same node: a lookup in the
        // shared list costs a snapshot load.
        if self.last_node.as_ref().is_none_or(|(n, _)| *n != node) {
            self.last_node = self.shared.stats.node_counters(node.index()).map(|c| (node, c));
        }
        if let Some((_, counters)) = &self.last_node {
            counters.queries.fetch_add(1, Ordering::Relaxed);
        }
        self.routes.count(&self.shared.stats, target, label);
    }

    /// Transaction pooling: gives the node connection back once no transaction or pinned state needs it.
    pub(super) fn release_between_transactions(&mut self, node: NodeId) {
        if !self.shared_conns
            || self.routing.tx_node.is_some()
            || self.routing.holds_state_on(node)
            || self.discard_until_sync
        {
            return;
        }
        if let Some(c) = self.conns[node.index()].take() {
            c.return_shared();
        }
    }

    /// A node died under a request that could not be retried. What the node said before closing reaches
    /// the client (its FATAL verbatim); pgfleet speaks for it only when it said nothing.
    pub(super) async fn node_lost(
        &mut self,
        node: NodeId,
        error: BackendError,
        end: End,
        farewell_sent: bool,
    ) -> Result<(), SessionError> {
        let name = self.shared.fleet.nodes()[node.index()].target.name.clone();
        if farewell_sent {
            // The node's FATAL is already with the client: as with PostgreSQL, the connection ends with it.
            return Err(SessionError::Fatal(format!(
                "node \"{name}\" ended the session: {error}"
            )));
        }
        if self.routing.holds_state_on(node) {
            // The client's transaction or pinned session state died with the node's session. Like
            // PostgreSQL, end the client's session rather than let it believe its transaction still exists.
            let e = match &error {
                BackendError::Server { frame, message, .. } if is_fatal_frame(frame) => {
                    let _ = self.client.write_all(frame).await;
                    let _ = self.client.flush().await;
                    return Err(SessionError::Fatal(format!(
                        "node \"{name}\" ended the session: {message}"
                    )));
                }
                BackendError::Server { code, message, .. } => ProxyError::fatal(code, message.clone()),
                _ => {
                    let what = if self.routing.tx_node == Some(node) {
                        "transaction"
                    } else {
                        "pinned session state"
                    };
                    ProxyError::fatal(
                        "57P01",
                        format!(
                            "pgfleet: lost the connection to node \"{name}\" holding this session's {what}: {error}"
                        ),
                    )
                }
            };
            let _ = self.client.write_all(&e.encode()).await;
            let _ = self.client.flush().await;
            return Err(SessionError::Fatal(e.message));
        }
        self.refuse(self.error_of(&error), end).await
    }

    /// Whether the session holds a connection to `node` from which nothing arrived since its last reply.
    fn holds_quiet(&mut self, node: NodeId) -> bool {
        self.conns
            .get_mut(node.index())
            .and_then(Option::as_mut)
            .is_some_and(|c| c.is_quiet())
    }

    /// Makes sure the session holds a connection to `node`, waiting for one if the node's pool is full.
    pub(super) async fn connect(&mut self, node: NodeId) -> Result<(), BackendError> {
        self.connect_with(node, Checkout::Wait).await
    }

    /// [`Session::connect`], or with [`Checkout::Immediate`], giving up at once on a full pool.
    pub(super) async fn connect_with(
        &mut self,
        node: NodeId,
        checkout: Checkout,
    ) -> Result<(), BackendError> {
        if node.index() >= self.conns.len() {
            // A node a reload added after the session started.
            self.conns.resize_with(node.index() + 1, || None);
            self.pools.resize_with(node.index() + 1, || None);
        }
        if let Some(c) = self.conns[node.index()].as_mut() {
            // Whatever the node said while idle: pass on notices and notifications, and notice a connection
            // it closed (then its farewell notice concerns only the proxy, which hides the loss).
            let said = c.drain_idle();
            if !c.broken {
                for msg in said {
                    let msg = self.shared.cancels.rewrite_notifications(node.index(), msg);
                    let _ = self.client.write_all(&msg).await;
                }
                return Ok(());
            }
            // Its FATAL, when it sent one: the client holding state there must hear it.
            let closed = c.closed_error();
            self.conns[node.index()] = None;
            if self.routing.holds_state_on(node) {
                return Err(closed);
            }
        }
        // A request cancelled while pgfleet routed it opens no connection: one to a node that hangs would hold
        // it until `pool.connect_timeout`, and it would end with 57014 before running anyway (`run_on`).
        if self.key.is_canceled() {
            return Err(BackendError::Canceled);
        }
        // The session's copy of the node list, read when the request began, unless a reload added this node
        // since: no shared load for the usual checkout.
        let n = match self.current.nodes.get(node.index()) {
            Some(n) => n.clone(),
            None => self.shared.fleet.node(node),
        };
        let login = Login {
            user: &self.user,
            password: &self.password,
            database: &self.database,
            replication: false,
        };
        let pool = match &self.pools[node.index()] {
            Some(p) => p,
            None => self.pools[node.index()].insert(self.shared.pools.pool_for(&n.target, &login)),
        };
        let canceled = self.key.canceled();
        match self
            .shared
            .pools
            .get_from(pool, &n.target, checkout, canceled)
            .await
        {
            Ok(c) => {
                n.mark_up();
                self.conns[node.index()] = Some(self.key.hold(c));
                Ok(())
            }
            Err(e) => {
                if e.is_node_failure() {
                    tracing::warn!(node = %n.target.name, error = %e, "node connection failed");
                    n.mark_down();
                }
                Err(e)
            }
        }
    }
}
