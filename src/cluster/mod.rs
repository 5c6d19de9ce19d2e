//! The fleet as the router sees it: each node's identity, configured role and weight, the monitor's latest
//! snapshot of their health, roles and lag (`view`, published lock-free), and the health checks that feed
//! it (`monitor`). A connection failure seen by a session also marks a node down for a short while, so that
//! other sessions skip it before the next health check notices.

pub mod monitor;
pub mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use self::view::{FleetView, NodeState, Primary};
use crate::backend::connect::NodeTarget;
use crate::config::{Config, LagLimit, Role};
use crate::protocol::messages::ProxyError;

/// How long a node that refused a connection is skipped before it is tried again.
const DOWN_BACKOFF: Duration = Duration::from_secs(2);

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Name, address, role text, index.
    pub target: NodeTarget,
    /// Configured role.
    pub role: Role,
    /// Read weight.
    pub weight: u32,
    down_until_ms: AtomicU64,
}

impl Node {
    /// Whether no session saw the node fail in the last moments.
    pub fn is_up(&self) -> bool {
        self.is_up_at(now_ms())
    }

    /// [`Node::is_up`] at a given time, so that a scan of every node reads the clock once.
    fn is_up_at(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Records a failed connection: skip this node for a while.
    pub fn mark_down(&self) {
        self.down_until_ms
            .store(now_ms() + DOWN_BACKOFF.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records a successful connection.
    pub fn mark_up(&self) {
        // Every checkout reports success: writing only when the node was marked down keeps the shared
        // cache line from bouncing between the cores that run sessions.
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// All nodes, in config order, and their live state.
#[derive(Debug)]
pub struct Fleet {
    /// The nodes.
    pub nodes: Vec<Node>,
    configured_primary: Option<usize>,
    states: Mutex<Vec<NodeState>>,
    view: ArcSwap<FleetView>,
    /// Forward-mode progress of each replica (empty in external mode).
    pub forward: Arc<crate::replication::ForwardState>,
}

impl Fleet {
    /// The fleet described by a validated config; every node counts as up until a check says otherwise.
    pub fn from_config(config: &Config) -> Fleet {
        let nodes: Vec<Node> = config
            .nodes
            .iter()
            .enumerate()
            .map(|(index, n)| Node {
                target: NodeTarget {
                    index,
                    name: n.name.clone(),
                    role: n.role.to_string(),
                    address: n.address.clone(),
                },
                role: n.role,
                weight: n.weight,
                down_until_ms: AtomicU64::new(0),
            })
            .collect();
        let configured_primary = nodes.iter().position(|n| n.role == Role::Primary);
        let states: Vec<NodeState> = nodes
            .iter()
            .map(|_| NodeState {
                up: true,
                ..NodeState::default()
            })
            .collect();
        let forward = Arc::new(crate::replication::ForwardState::new(config));
        let view = compute_view(&nodes, configured_primary, &states, &forward);
        Fleet {
            nodes,
            configured_primary,
            states: Mutex::new(states),
            view: ArcSwap::from_pointee(view),
            forward,
        }
    }

    /// The latest snapshot.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.load_full()
    }

    /// The latest snapshot, borrowed without touching its shared reference count; not to be held across
    /// an await.
    pub fn view_guard(&self) -> arc_swap::Guard<Arc<FleetView>> {
        self.view.load()
    }

    /// Records a health check result and publishes a new snapshot.
    pub fn update(&self, node: usize, state: NodeState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = states.get_mut(node) {
            *slot = state;
        }
        let view = compute_view(&self.nodes, self.configured_primary, &states, &self.forward);
        self.view.store(Arc::new(view));
    }

    /// The node that takes writes now, or the error a write gets when there is none.
    pub fn primary(&self) -> Result<usize, ProxyError> {
        self.primary_in(&self.view.load())
    }

    /// [`Fleet::primary`] against a given snapshot.
    pub fn primary_in(&self, view: &FleetView) -> Result<usize, ProxyError> {
        match &view.primary {
            Primary::One(n) => Ok(*n),
            Primary::None => Err(ProxyError::error(
                "08006",
                "pgfleet: no primary is available: no node with role = \"auto\" is up and out of recovery",
            )
            .with_hint(
                "Promote a replica (pg_ctl promote, Patroni, pg_auto_failover) or bring the primary back.",
            )),
            Primary::Conflict(nodes) => {
                let names: Vec<&str> = nodes
                    .iter()
                    .map(|n| self.nodes[*n].target.name.as_str())
                    .collect();
                Err(ProxyError::error(
                    "55000",
                    format!(
                        "pgfleet: writes refused: {} nodes claim to be primary ({}); waiting until one steps down",
                        names.len(),
                        names.join(", ")
                    ),
                )
                .with_hint("Demote or stop all but one primary; pgfleet never writes to two primaries."))
            }
        }
    }

    /// The node that will probably take writes: the current primary, else the configured one, else node 0.
    pub fn likely_primary(&self) -> usize {
        self.primary().ok().or(self.configured_primary).unwrap_or(0)
    }

    /// Nodes that may serve reads now, best candidates unfiltered by balance: replicas (by configuration or,
    /// for `auto`, by observation) that are up, in recovery and within `max_lag`, plus the primary when
    /// `primary_reads` is set.
    pub fn read_nodes(&self, view: &FleetView, primary_reads: bool, max_lag: Option<LagLimit>) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        self.read_nodes_into(view, primary_reads, max_lag, &mut out);
        out
    }

    /// [`Fleet::read_nodes`], appended to `out` (which a session reuses from one request to the next).
    pub fn read_nodes_into(
        &self,
        view: &FleetView,
        primary_reads: bool,
        max_lag: Option<LagLimit>,
        out: &mut Vec<usize>,
    ) {
        let primary = match view.primary {
            Primary::One(n) => Some(n),
            _ => None,
        };
        // One clock read for the whole scan rather than one per node.
        let now = now_ms();
        let is_up = |node: &Node| node.is_up_at(now);
        for (i, (node, state)) in self.nodes.iter().zip(&view.nodes).enumerate() {
            let usable = if Some(i) == primary {
                primary_reads && state.up && is_up(node)
            } else {
                let is_replica = match node.role {
                    // Forwarded replicas are plain servers: usable once they stream, whatever their recovery.
                    Role::Replica if self.forward.enabled() => self.forward.visible(i).is_some(),
                    Role::Replica => state.in_recovery != Some(false),
                    Role::Auto => state.in_recovery == Some(true),
                    Role::Primary => false,
                };
                is_replica && node.weight > 0 && state.up && is_up(node) && within(state, max_lag)
            };
            if usable {
                out.push(i);
            }
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

fn compute_view(
    nodes: &[Node],
    configured_primary: Option<usize>,
    states: &[NodeState],
    forward: &crate::replication::ForwardState,
) -> FleetView {
    let primary = match configured_primary {
        Some(p) => Primary::One(p),
        None => {
            let claimants: Vec<usize> = (0..nodes.len())
                .filter(|i| {
                    nodes[*i].role == Role::Auto && states[*i].up && states[*i].in_recovery == Some(false)
                })
                .collect();
            match claimants.len() {
                0 => Primary::None,
                1 => Primary::One(claimants[0]),
                _ => Primary::Conflict(claimants),
            }
        }
    };
    let primary_lsn = match primary {
        Primary::One(p) => states[p].lsn,
        _ => None,
    };
    let mut out: Vec<NodeState> = states.to_vec();
    for (i, s) in out.iter_mut().enumerate() {
        if forward.enabled() && nodes[i].role == Role::Replica {
            // A plain server's own WAL says nothing; what pgfleet has applied there does.
            s.lsn = forward.visible(i);
            s.lag = forward.lag(i, primary_lsn);
        }
        if primary == Primary::One(i) {
            s.lag_bytes = Some(0);
            s.lag = Some(Duration::ZERO);
            continue;
        }
        if let (Some(p), Some(r)) = (primary_lsn, s.lsn) {
            let behind = p.saturating_sub(r);
            s.lag_bytes = Some(behind);
            if behind == 0 || (forward.enabled() && nodes[i].role == Role::Replica && s.lag.is_none()) {
                // Replayed everything the primary has: no lag, however old the last transaction is.
                s.lag = Some(Duration::ZERO);
            }
        }
    }
    FleetView { nodes: out, primary }
}
