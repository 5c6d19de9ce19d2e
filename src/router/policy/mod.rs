//! The routing policy (docs/routing.md) as plain functions: given the session's [`RoutingState`], what the
//! request asks for ([`Ask`]), the fleet snapshot with the per-node [`NodeFacts`] and the routing config, it
//! says which node must run a request, or which read nodes may, in order. It does no I/O: where the rules
//! need a replica asked for its replay position (read-your-writes), it says which candidates need asking,
//! the session asks them, and [`Reads`] finishes the choice with the answers.

use crate::cluster::NodeId;
use crate::cluster::view::{FleetView, NodeState, Primary};
use crate::config::{LagLimit, ReplicaAffinity, Role, RoutingConfig};
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::ProxyError;
use crate::router::balance::Balancer;
use crate::router::classify::{Pin, Target};

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
}

/// What one request asks of the policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// The router's verdict for the statements (a leading-comment override is already part of it).
    pub target: Target,
    /// For a DEALLOCATE of a named statement: the node where that statement is prepared, if any.
    pub deallocated_on: Option<NodeId>,
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
/// session's last write (or the guarantee does not apply), the rest to be asked by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reads {
    primary: Option<NodeId>,
    fresh: usize,
    /// The write position the unsure candidates are asked about.
    lsn: Lsn,
}

/// The current primary of a snapshot, or the error a write gets when there is none.
pub(crate) fn primary(view: &FleetView, facts: &impl NodeFacts) -> Result<NodeId, ProxyError> {
    view.primary_or_error(|n| facts.name(n))
}

/// The primary, without the error (which costs an allocation to build).
fn primary_node(view: &FleetView) -> Option<NodeId> {
    match view.primary {
        Primary::One(n) => Some(n),
        _ => None,
    }
}

/// Nodes that may serve reads now, unbalanced, appended to `out`: replicas (by configuration or, for `auto`,
/// by observation) that are up, in recovery and within `max_lag`, plus the primary when `primary_reads`.
pub(crate) fn read_nodes_into(
    view: &FleetView,
    facts: &impl NodeFacts,
    primary_reads: bool,
    max_lag: Option<LagLimit>,
    out: &mut Vec<NodeId>,
) {
    let primary = primary_node(view);
    // A snapshot older than a reload covers fewer slots than the fleet; the shorter decides.
    let slots = facts.slots().min(view.nodes.len());
    for (i, state) in view.nodes.iter().enumerate().take(slots) {
        let id = NodeId::new(i);
        if facts.retired(id) {
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
            order.push(primary(view, facts)?);
            return Ok(Choice::Fixed);
        }
        read_nodes_into(view, facts, config.primary_reads, config.max_replica_lag, order);
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
        let primary = primary_node(view);
        let mut reads = Reads {
            primary,
            fresh: order.len(),
            lsn: Lsn::ZERO,
        };
        let Some(lsn) = self.last_write_lsn else {
            return Ok(Choice::Reads(reads));
        };
        let known_fresh = |n: NodeId| {
            Some(n) == primary
                || view
                    .nodes
                    .get(n.index())
                    .is_some_and(|s| s.lsn.is_some_and(|l| l >= lsn))
        };
        if view
            .nodes
            .iter()
            .enumerate()
            .all(|(i, s)| Some(NodeId::new(i)) == primary || s.lsn.is_some_and(|l| l >= lsn))
        {
            // Every node has replayed it: the guarantee holds without further checks.
            self.last_write_lsn = None;
            return Ok(Choice::Reads(reads));
        }
        // Known-fresh candidates first, each group in balanced order; in place, as the list is short.
        let mut fresh = 0;
        for i in 0..order.len() {
            if known_fresh(order[i]) {
                order[fresh..=i].rotate_right(1);
                fresh += 1;
            }
        }
        if order[..fresh].iter().any(|n| Some(*n) != primary) {
            order.truncate(fresh);
        }
        reads.fresh = fresh;
        reads.lsn = lsn;
        Ok(Choice::Reads(reads))
    }
}

impl Reads {
    /// The candidates the session must ask whether they replayed [`Reads::lsn`] (none when the guarantee
    /// is already met); ask them in order, until `routing.read_your_writes_wait` has passed.
    pub(crate) fn unsure<'a>(&self, order: &'a [NodeId]) -> &'a [NodeId] {
        order.get(self.fresh..).unwrap_or(&[])
    }

    /// The write position the unsure candidates are asked about.
    pub(crate) fn lsn(&self) -> Lsn {
        self.lsn
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
            return Err(primary(view, facts).err().unwrap_or_else(|| {
                ProxyError::error("08006", "pgfleet: no node is available to run this statement")
            }));
        }
        Ok(())
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
