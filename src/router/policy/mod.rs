//! The routing policy (docs/routing.md) as plain functions: given the session's [`RoutingState`], what the
//! request asks for ([`Ask`]), the fleet snapshot with the per-node [`NodeFacts`] and the routing config, it
//! says which node must run a request, or which read nodes may, in order. It does no I/O: where the rules
//! need a replica asked for its replay position (the consistency levels), it says which candidates need
//! asking, the session asks them, and [`Reads`] finishes the choice with the answers.

use crate::cluster::view::{FleetView, NodeState};
use crate::cluster::{NodeId, ShardId};
use crate::config::{Consistency, LagLimit, ReplicaAffinity, Role, RoutingConfig};
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::ProxyError;
use crate::router::balance::Balancer;
use crate::router::classify::{Pin, Rule, Target};

/// What the policy remembers of one session between requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoutingState {
    /// The node of the open transaction.
    pub tx_node: Option<NodeId>,
    /// The node holding state that cannot be replayed, and why.
    pub pinned: Option<(NodeId, Pin)>,
    /// The `pgfleet.route` startup option.
    pub route: Option<Target>,
    /// With `routing.replica_affinity = "session"`: the node the balancer chose for this session's reads.
    pub read_home: Option<NodeId>,
    /// WAL position of the session's last committed write, until every replica has replayed it.
    pub last_write_lsn: Option<Lsn>,
    /// The session's last commit position as pgfleet learnt it (`SHOW pgfleet.write_lsn`).
    pub committed: Option<Lsn>,
    /// The position `SET pgfleet.read_after` (or the startup option) asks reads to wait for.
    pub read_after: Option<Lsn>,
    /// Monotonic reads: where the session last read and how far its reads may have seen.
    pub seen: Option<Seen>,
    /// A standby refused a read of the session a serializable snapshot it did not ask for (its role's or
    /// database's `default_transaction_isolation`): its reads go to the primary while its settings are
    /// the ones of this generation (`Settings::generation`).
    pub serializable_default: Option<u64>,
}

/// What monotonic reads remember of a session's reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The node of the session's last request.
    pub node: NodeId,
    /// A WAL position at or past everything the session's reads saw; None when the last request did not
    /// tell (the session finds it out before a read moves to another node).
    pub upper: Option<Lsn>,
}

/// What one request asks of the policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// The router's verdict for the statements (a leading-comment override is already part of it).
    pub target: Target,
    /// For a DEALLOCATE of a named statement: the node where that statement is prepared, if any.
    pub deallocated_on: Option<NodeId>,
    /// The position the consistency level asks every read to see, beyond the session's own: the highest
    /// acknowledged commit (`global`) or the primary's position when the read began (`universal`).
    pub floor: Lsn,
    /// The shard the request runs on: only its nodes are candidates (0 in an unsharded fleet).
    pub shard: ShardId,
}

/// What the policy reads of each node beyond the monitor's snapshot: live flags a session can read without
/// waiting (atomics), implemented over the fleet by the session and over a table by the tests.
pub(crate) trait NodeFacts {
    /// How many node slots exist (retired ones included); a snapshot may cover fewer.
    fn slots(&self) -> usize;
    /// Whether a reload removed the node.
    fn retired(&self, node: NodeId) -> bool;
    /// Whether no session saw the node fail in the last moments.
    fn up(&self, node: NodeId) -> bool;
    /// The configured role.
    fn role(&self, node: NodeId) -> Role;
    /// The read weight.
    fn weight(&self, node: NodeId) -> u32;
    /// Connections checked out of the node's pools (for `least_connections`).
    fn in_use(&self, node: NodeId) -> usize;
    /// Whether pgfleet forwards changes to plain servers (`replication.mode = "forward"`).
    fn forwarding(&self) -> bool;
    /// Forward mode: the position pgfleet has applied and made visible on the node; None while it does not
    /// stream.
    fn forward_visible(&self, node: NodeId) -> Option<Lsn>;
    /// The node's name, for messages.
    fn name(&self, node: NodeId) -> Option<&str>;
    /// The shard the node belongs to.
    fn shard(&self, node: NodeId) -> ShardId;
    /// The best replay position known of the node beyond the snapshot: what any session's probe saw.
    fn replayed(&self, node: NodeId) -> Option<Lsn>;
}

/// The policy's answer before the read-specific checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The request runs on the one node in `order` (transaction, pin, DEALLOCATE, primary).
    Fixed,
    /// `order` holds read nodes; finish with [`Reads`].
    Reads(Reads),
}

/// A read choice in progress: candidates in `order`, the first `fresh` of them known to have replayed the
/// position the read must see (or no guarantee applies), the rest to be asked by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reads {
    shard: ShardId,
    primary: Option<NodeId>,
    fresh: usize,
    /// The position every candidate must have replayed.
    lsn: Lsn,
    /// Monotonic reads: a node other than this one must also have replayed the second position.
    moved: Option<(NodeId, Lsn)>,
    /// A move away from the session's last node needs the bound of what the session saw, not known yet.
    bound_missing: bool,
    /// A known-fresh replica can serve: the unsure candidate is asked once, not waited for.
    no_wait: bool,
}

/// The current primary of `shard` in a snapshot, or the error a write gets when there is none.
pub(crate) fn primary(
    view: &FleetView,
    facts: &impl NodeFacts,
    shard: ShardId,
) -> Result<NodeId, ProxyError> {
    view.primary_or_error(shard, |n| facts.name(n))
}

/// Nodes of `shard` that may serve reads now, unbalanced, appended to `out`: replicas (by configuration or,
/// for `auto`, by observation) that are up, in recovery and within `max_lag`, plus the primary when
/// `primary_reads`.
pub(crate) fn read_nodes_into(
    view: &FleetView,
    facts: &impl NodeFacts,
    shard: ShardId,
    primary_reads: bool,
    max_lag: Option<LagLimit>,
    out: &mut Vec<NodeId>,
) {
    let primary = view.primary_node(shard);
    // A snapshot older than a reload covers fewer slots than the fleet; the shorter decides.
    let slots = facts.slots().min(view.nodes.len());
    for (i, state) in view.nodes.iter().enumerate().take(slots) {
        let id = NodeId::new(i);
        if facts.retired(id) || facts.shard(id) != shard {
            continue;
        }
        let usable = if Some(id) == primary {
            primary_reads && state.up && facts.up(id)
        } else {
            let is_replica = match facts.role(id) {
                // Forwarded replicas are plain servers: usable once they stream, whatever their recovery.
                Role::Replica if facts.forwarding() => facts.forward_visible(id).is_some(),
                Role::Replica => state.in_recovery != Some(false),
                Role::Auto => state.in_recovery == Some(true),
                Role::Primary => false,
            };
            is_replica && facts.weight(id) > 0 && state.up && facts.up(id) && within(state, max_lag)
        };
        if usable {
            out.push(id);
        }
    }
}

fn within(state: &NodeState, max_lag: Option<LagLimit>) -> bool {
    match max_lag {
        None => true,
        Some(LagLimit::Bytes(max)) => state.lag_bytes.is_none_or(|b| b <= max),
        Some(LagLimit::Time(max)) => state.lag.is_none_or(|t| t <= max),
    }
}

impl RoutingState {
    /// Whether the session has a transaction or pinned state on `node`, which dies with its connection.
    pub(crate) fn holds_state_on(&self, node: NodeId) -> bool {
        self.tx_node == Some(node) || matches!(self.pinned, Some((n, _)) if n == node)
    }

    /// Whether a request must stay on the node it was given (no retry elsewhere).
    pub(crate) fn bound(&self) -> bool {
        self.tx_node.is_some() || self.pinned.is_some()
    }

    /// The rule label of a request decided by `rule` (statistics, SHOW ROUTE, the debug log): an open
    /// transaction, a pin and the session route win over the statement's own rule.
    pub(crate) fn label<'a>(&self, rule: &'a str) -> &'a str {
        if self.tx_node.is_some() {
            "in transaction"
        } else if let Some((_, pin)) = self.pinned {
            pinned_label(pin)
        } else if let Some(t) = self.route {
            route_override_label(t)
        } else {
            rule
        }
    }

    /// Records the WAL position of a write the session committed; None when the primary could not say,
    /// which sends reads to the primary until a later write tells more.
    pub(crate) fn wrote_at(&mut self, lsn: Option<Lsn>) {
        if let Some(l) = lsn {
            self.committed = Some(self.committed.map_or(l, |c| c.max(l)));
        }
        let lsn = lsn.unwrap_or(Lsn::MAX);
        self.last_write_lsn = Some(self.last_write_lsn.map_or(lsn, |l| l.max(lsn)));
    }

    /// The nodes for a request, into `order` (cleared first): one fixed node, or read candidates for
    /// [`Reads`] to finish, or why no node may run it.
    pub(crate) fn choose(
        &mut self,
        ask: Ask,
        view: &FleetView,
        facts: &impl NodeFacts,
        config: &RoutingConfig,
        balancer: &Balancer,
        order: &mut Vec<NodeId>,
    ) -> Result<Choice, ProxyError> {
        order.clear();
        // DEALLOCATE must run where the statement exists, or PostgreSQL would say it does not.
        let fixed = self
            .tx_node
            .or(self.pinned.map(|(n, _)| n))
            .or(ask.deallocated_on);
        if let Some(n) = fixed {
            order.push(n);
            return Ok(Choice::Fixed);
        }
        if self.route.unwrap_or(ask.target) == Target::Primary {
            order.push(primary(view, facts, ask.shard)?);
            return Ok(Choice::Fixed);
        }
        read_nodes_into(
            view,
            facts,
            ask.shard,
            config.primary_reads,
            config.max_replica_lag,
            order,
        );
        let affinity = config.replica_affinity;
        let home = match (affinity, self.read_home) {
            (ReplicaAffinity::Session, Some(h)) => order.iter().position(|n| *n == h),
            _ => None,
        };
        if let Some(i) = home {
            // The session's node is still a candidate: it goes first, the others stay as fallbacks.
            order[..=i].rotate_right(1);
        } else {
            balancer.order_in_place(
                config.load_balance,
                order,
                |n| facts.weight(n),
                |n| facts.in_use(n),
            );
            if affinity == ReplicaAffinity::Session {
                self.read_home = order.first().copied();
            }
        }
        let primary = view.primary_node(ask.shard);
        let mut reads = Reads {
            shard: ask.shard,
            primary,
            fresh: order.len(),
            lsn: Lsn::ZERO,
            moved: None,
            bound_missing: false,
            no_wait: false,
        };
        let known = |n: NodeId| {
            let snapshot = view.nodes.get(n.index()).and_then(|s| s.lsn);
            snapshot.max(facts.replayed(n))
        };
        // Positions every node of the shard has replayed guarantee nothing more: dropped, so that later
        // reads skip the checks.
        let everywhere = |l: Lsn| {
            (0..view.nodes.len()).map(NodeId::new).all(|n| {
                Some(n) == primary || facts.shard(n) != ask.shard || known(n).is_some_and(|k| k >= l)
            })
        };
        for kept in [&mut self.last_write_lsn, &mut self.read_after] {
            if kept.is_some_and(&everywhere) {
                *kept = None;
            }
        }
        let lsn = [self.last_write_lsn, self.read_after, Some(ask.floor)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(Lsn::ZERO);
        if config.consistency() != Consistency::Off
            && let Some(seen) = self.seen
        {
            match seen.upper {
                Some(upper) if upper > lsn && !everywhere(upper) => reads.moved = Some((seen.node, upper)),
                Some(_) => {}
                // How far the last read saw is unknown: the read stays on that node (or the primary, which
                // has everything); moving needs the bound, which the session finds out first.
                None if order.contains(&seen.node) => {
                    order.retain(|n| *n == seen.node || Some(*n) == primary)
                }
                // No read node left: the read falls back to the primary (`Reads::finish`), which has
                // everything, so the bound would decide nothing. A fleet of the primary alone with
                // primary_reads = false asked it before every read.
                None if order.is_empty() => {}
                None => {
                    // Until the session finds the bound out, only the primary is safe.
                    reads.bound_missing = true;
                    order.retain(|n| Some(*n) == primary);
                    reads.fresh = order.len();
                    return Ok(Choice::Reads(reads));
                }
            }
        }
        if lsn == Lsn::ZERO && reads.moved.is_none() {
            return Ok(Choice::Reads(reads));
        }
        reads.lsn = lsn;
        if lsn == Lsn::MAX {
            // A position nobody could say: no replica can be shown to have it, so none is asked.
            order.retain(|n| Some(*n) == primary);
            reads.fresh = order.len();
            return Ok(Choice::Reads(reads));
        }
        let pick = order.first().copied();
        // Known-fresh candidates first, each group in balanced order; in place, as the list is short.
        let mut fresh = 0;
        for i in 0..order.len() {
            let n = order[i];
            if Some(n) == primary || known(n).is_some_and(|k| k >= reads.need(n)) {
                order[fresh..=i].rotate_right(1);
                fresh += 1;
            }
        }
        if order[..fresh].iter().any(|n| Some(*n) != primary) {
            // The balancer's pick (or the session's home), if not known to be fresh, is asked once, without
            // waiting, before a known-fresh replica serves: balancing survives knowledge a little stale.
            let ask_pick = pick.filter(|p| Some(*p) != primary && !order[..fresh].contains(p));
            order.truncate(fresh);
            if let Some(p) = ask_pick {
                order.push(p);
                reads.no_wait = true;
            }
        }
        reads.fresh = fresh;
        Ok(Choice::Reads(reads))
    }

    /// Records where a request ran and, when known, a position at or past what it saw (`None`: unknown).
    pub(crate) fn read_on(&mut self, node: NodeId, upper: Option<Lsn>) {
        let before = self.seen.and_then(|s| s.upper);
        self.seen = Some(Seen {
            node,
            // The bound covers every read so far: a read's own bound is only one more term.
            upper: upper.map(|u| before.map_or(u, |b| b.max(u))),
        });
    }

    /// The bound of what the session saw, found out when the last request could not tell it.
    pub(crate) fn bound_seen(&mut self, upper: Lsn) {
        if let Some(seen) = self.seen.as_mut() {
            seen.upper = Some(upper);
        }
    }
}

impl Reads {
    /// The candidates the session must ask whether they replayed [`Reads::need`] (none when the guarantee
    /// is already met); ask them in order, until `routing.consistency_wait` has passed.
    pub(crate) fn unsure<'a>(&self, order: &'a [NodeId]) -> &'a [NodeId] {
        order.get(self.fresh..).unwrap_or(&[])
    }

    /// The position `node` must have replayed to serve the read.
    pub(crate) fn need(&self, node: NodeId) -> Lsn {
        match self.moved {
            Some((from, upper)) if from != node => upper.max(self.lsn),
            _ => self.lsn,
        }
    }

    /// Whether the unsure candidates may be waited for (`routing.consistency_wait`): not when a known-fresh
    /// replica can serve the read at once.
    pub(crate) fn may_wait(&self) -> bool {
        !self.no_wait
    }

    /// Whether the session must find out how far its reads saw before this read may move to another node
    /// (then it calls [`RoutingState::bound_seen`] and chooses again).
    pub(crate) fn bound_missing(&self) -> bool {
        self.bound_missing
    }

    /// The session learnt that `node` (one of the unsure) has replayed the write: it is the choice, the
    /// known-fresh candidates its fallbacks.
    pub(crate) fn replayed(&mut self, node: NodeId, order: &mut Vec<NodeId>) {
        order.truncate(self.fresh);
        order.insert(0, node);
        self.fresh = order.len();
    }

    /// No unsure candidate caught up in time: only the known-fresh ones remain.
    pub(crate) fn none_replayed(&mut self, order: &mut Vec<NodeId>) {
        order.truncate(self.fresh);
    }

    /// The end of the read choice: the primary as the last resort, or why no node may serve the read.
    pub(crate) fn finish(
        self,
        state: &RoutingState,
        view: &FleetView,
        facts: &impl NodeFacts,
        config: &RoutingConfig,
        order: &mut Vec<NodeId>,
    ) -> Result<(), ProxyError> {
        if state.route == Some(Target::Replica) {
            if order.is_empty() {
                return Err(ProxyError::error(
                    "57P03",
                    "pgfleet: no replica is available for this session (pgfleet.route=replica): all are down, \
                     out of recovery or lagging beyond routing.max_replica_lag",
                ));
            }
            return Ok(());
        }
        if config.fallback_to_primary {
            // With no read node left (or as the last resort after them), reads go to the primary.
            if let Some(p) = self.primary
                && !order.contains(&p)
            {
                order.push(p);
            }
        } else if order.is_empty() {
            return Err(ProxyError::error(
                "57P03",
                "pgfleet: no replica is available for reads (all are down, out of recovery or lagging beyond \
                 routing.max_replica_lag) and routing.fallback_to_primary = false",
            )
            .with_hint("Set routing.fallback_to_primary = true to read from the primary instead."));
        }
        if order.is_empty() {
            return Err(primary(view, facts, self.shard).err().unwrap_or_else(|| {
                ProxyError::error("08006", "pgfleet: no node is available to run this statement")
            }));
        }
        Ok(())
    }
}

/// Where the session's state moves a request the router targeted, before the candidates are named; `None`
/// when the router's verdict stands. A standby refuses serializable transactions, also a read's implicit
/// one: with serializable the session's default isolation (`serializable`), its reads run on the primary, as
/// they would without pgfleet. The primary answers questions about the server's role (a request labelled
/// `rule`); with none up (`primary_up`, asked only then), a replica answers them as itself.
pub(crate) fn session_target(
    target: Target,
    rule: &str,
    serializable: bool,
    primary_up: impl FnOnce() -> bool,
) -> Option<(Target, Option<Rule>)> {
    match target {
        Target::Replica if serializable => Some((Target::Primary, Some(Rule::SerializableRead))),
        Target::Primary if Rule::answers_without_primary(rule) && !primary_up() => {
            Some((Target::Replica, None))
        }
        _ => None,
    }
}

/// "pinned: {pin}", spelled out so that labelling a pinned session's requests allocates nothing.
fn pinned_label(pin: Pin) -> &'static str {
    match pin {
        Pin::TempTable => "pinned: temporary object",
        Pin::AdvisoryLock => "pinned: session advisory lock",
        Pin::Listen => "pinned: LISTEN",
        Pin::HoldCursor => "pinned: WITH HOLD cursor",
        Pin::SqlPrepare => "pinned: SQL PREPARE",
        Pin::ClientEncoding => "pinned: setting or text outside UTF-8",
        Pin::SetConfig => "pinned: set_config() with values known only to the server",
        Pin::SessionFunction => "pinned: function that leaves state in the session",
    }
}

/// "session route: {target}", spelled out for the same reason.
fn route_override_label(target: Target) -> &'static str {
    match target {
        Target::Primary => "session route: primary",
        Target::Replica => "session route: replica",
    }
}

#[cfg(test)]
mod tests;
