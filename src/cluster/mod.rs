//! The fleet as the router sees it: each node's identity, configured role and weight, the monitor's latest
//! snapshot of their health, roles and lag (`view`, published lock-free), and the health checks that feed
//! it (`monitor`). A connection failure seen by a session also marks a node down for a short while, so that
//! other sessions skip it before the next health check notices.

mod id;
pub(crate) mod monitor;
pub(crate) mod positions;
pub(crate) mod view;

pub(crate) use id::NodeId;
// Public through `shard::ShardId`: the sharding API names shards.
pub use id::ShardId;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

use self::view::{FleetView, NodeState, Primary};
use crate::backend::connect::NodeTarget;
use crate::backend::tls::{NodeTls, TlsSetupError};
use crate::config::{Config, NodeConfig, Role};
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::ProxyError;

/// Where the replicas that pgfleet keeps in sync itself (forward mode) stand, as routing needs it. The
/// replication side reports it; the fleet only reads it, so that it does not depend on how forwarding works.
pub trait ReplayPositions: Send + Sync + std::fmt::Debug {
    /// Whether forward mode is on: replicas' own WAL positions then say nothing.
    fn enabled(&self) -> bool;

    /// The position a replica is consistent with, if it is streaming every forwarded database.
    fn visible(&self, node: usize) -> Option<Lsn>;

    /// How far behind in time a replica is: zero once it has reached `primary_lsn`.
    fn lag(&self, node: usize, primary_lsn: Option<Lsn>) -> Option<Duration>;
}

/// How long a node that refused a connection is skipped before it is tried again.
const DOWN_BACKOFF: Duration = Duration::from_secs(2);

/// One node slot. Its index never changes while pgfleet runs: a reload that removes the node retires the
/// slot (sessions and pools still holding the index find it retired) and a node added gets a new slot.
#[derive(Debug)]
pub struct Node {
    /// Name, address, role text, index.
    pub target: NodeTarget,
    /// Configured role.
    pub role: Role,
    /// The shard the node belongs to (0 in an unsharded fleet).
    pub shard: ShardId,
    /// The entry it was made from; a reload that changes anything but the weight makes a new node.
    spec: NodeConfig,
    weight: AtomicU32,
    retired: AtomicBool,
    down_until_ms: AtomicU64,
    /// What the node is known to have replayed (consistency levels), shared by every session.
    pub replayed: positions::ReplayKnowledge,
}

impl Node {
    fn new(index: usize, config: &NodeConfig) -> Result<Node, TlsSetupError> {
        Ok(Node {
            target: NodeTarget {
                index,
                name: config.name.clone(),
                role: config.role.to_string(),
                address: config.address.clone(),
                tls: Arc::new(NodeTls::new(index, config)?),
            },
            role: config.role,
            shard: ShardId::new(config.shard.unwrap_or(0)),
            spec: config.clone(),
            weight: AtomicU32::new(config.weight),
            retired: AtomicBool::new(false),
            down_until_ms: AtomicU64::new(0),
            replayed: positions::ReplayKnowledge::default(),
        })
    }

    /// Whether `config` describes this node, its weight aside.
    pub fn is(&self, config: &NodeConfig) -> bool {
        NodeConfig {
            weight: config.weight,
            ..self.spec.clone()
        } == *config
    }

    /// Read weight (reloadable).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether a reload removed the node from the config.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Whether no session saw the node fail in the last moments.
    pub fn is_up(&self) -> bool {
        self.is_up_with(now_ms)
    }

    /// [`Node::is_up`] with the clock `now_ms` gives (so that a scan of every node reads it once), read only
    /// for a node marked down: a connection since clears the mark, and the usual routing decision reads no
    /// clock at all.
    pub fn is_up_with(&self, now_ms: impl FnOnce() -> u64) -> bool {
        match self.down_until_ms.load(Ordering::Relaxed) {
            0 => true,
            until => until <= now_ms(),
        }
    }

    /// Records a failed connection: skip this node for a while.
    pub fn mark_down(&self) {
        // A node that failed may come back from a restart or a rebuild behind what was known of it.
        self.replayed.checked(None);
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

/// The clock [`Node::is_up_with`] compares with, in milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a reload changed in the fleet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FleetChanges {
    /// Slots of nodes that are new (or whose address or role changed, which makes them new nodes).
    pub added: Vec<usize>,
    /// Slots retired.
    pub removed: Vec<usize>,
    /// (slot, old weight, new weight).
    pub reweighted: Vec<(usize, u32, u32)>,
}

impl FleetChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

/// The fleet's published node list, for an [`arc_swap::Cache`] that keeps a copy and checks it with one
/// pointer comparison instead of loading it anew.
pub(crate) struct NodesCell(pub(crate) Arc<Fleet>);

impl std::ops::Deref for NodesCell {
    type Target = ArcSwap<Vec<Arc<Node>>>;
    fn deref(&self) -> &Self::Target {
        &self.0.nodes
    }
}

/// The fleet's published snapshot, for an [`arc_swap::Cache`] (see [`NodesCell`]).
pub(crate) struct ViewCell(pub(crate) Arc<Fleet>);

impl std::ops::Deref for ViewCell {
    type Target = ArcSwap<FleetView>;
    fn deref(&self) -> &Self::Target {
        &self.0.view
    }
}

/// All node slots, in config order (then in order of addition), and their live state.
#[derive(Debug)]
pub struct Fleet {
    nodes: ArcSwap<Vec<Arc<Node>>>,
    states: Mutex<Vec<NodeState>>,
    view: ArcSwap<FleetView>,
    generation: AtomicU64,
    /// Forward-mode positions of each replica (reporting nothing in external mode).
    pub forward: Arc<dyn ReplayPositions>,
    /// Per shard, the commit and primary positions shared by every session (consistency levels). A reload
    /// cannot change the number of shards.
    positions: Vec<positions::Positions>,
}

impl Fleet {
    /// The fleet described by a validated config, with forward-mode positions reported by `forward`; every
    /// node counts as up until a check says otherwise. Fails only if a node's `tls_ca` became unreadable
    /// since validation.
    pub fn from_config(config: &Config, forward: Arc<dyn ReplayPositions>) -> Result<Fleet, TlsSetupError> {
        let nodes = config
            .nodes
            .iter()
            .enumerate()
            .map(|(index, n)| Node::new(index, n).map(Arc::new))
            .collect::<Result<Vec<Arc<Node>>, TlsSetupError>>()?;
        let states: Vec<NodeState> = nodes.iter().map(|_| fresh_state()).collect();
        let view = compute_view(&nodes, &states, forward.as_ref());
        Ok(Fleet {
            nodes: ArcSwap::from_pointee(nodes),
            states: Mutex::new(states),
            view: ArcSwap::from_pointee(view),
            generation: AtomicU64::new(0),
            forward,
            positions: (0..config.shard_count())
                .map(|_| positions::Positions::default())
                .collect(),
        })
    }

    /// Every node slot, retired ones included (their indexes stay valid).
    pub fn nodes(&self) -> Guard<Arc<Vec<Arc<Node>>>> {
        self.nodes.load()
    }

    /// Every node slot, for holding across waits (a guard should not be).
    pub fn nodes_arc(&self) -> Arc<Vec<Arc<Node>>> {
        self.nodes.load_full()
    }

    /// One node slot. Panics on an index that was never handed out, which would be a bug.
    pub fn node(&self, id: NodeId) -> Arc<Node> {
        self.nodes.load()[id.index()].clone()
    }

    /// Bumped by every reload that changed the node list or weights; sessions compare it to drop
    /// connections to retired nodes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies a reloaded node list. A node keeps its slot when its entry is unchanged but for the weight
    /// (updated in place); otherwise the old slot is retired and the node gets a new one, so that nothing
    /// meant for the old server (or the old TLS settings) reaches the new one. Changes nothing on error.
    pub fn apply(&self, config: &Config) -> Result<FleetChanges, TlsSetupError> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.nodes.load_full();
        let mut nodes: Vec<Arc<Node>> = old.as_ref().clone();
        let mut changes = FleetChanges::default();
        let mut kept = vec![false; nodes.len()];
        let mut reweigh = Vec::new();
        for wanted in &config.nodes {
            let same = nodes.iter().position(|n| !n.is_retired() && n.is(wanted));
            match same {
                Some(i) => {
                    kept[i] = true;
                    reweigh.push((i, wanted.weight));
                }
                None => {
                    // Fallible (TLS files): before anything visible changes.
                    let index = nodes.len();
                    nodes.push(Arc::new(Node::new(index, wanted)?));
                    changes.added.push(index);
                }
            }
        }
        for (i, weight) in reweigh {
            let before = nodes[i].weight.swap(weight, Ordering::Relaxed);
            if before != weight {
                changes.reweighted.push((i, before, weight));
            }
        }
        states.resize_with(nodes.len(), fresh_state);
        for (i, keep) in kept.iter().enumerate() {
            if !keep && !nodes[i].is_retired() {
                nodes[i].retired.store(true, Ordering::Relaxed);
                states[i] = NodeState::default();
                changes.removed.push(i);
            }
        }
        let view = compute_view(&nodes, &states, self.forward.as_ref());
        self.nodes.store(Arc::new(nodes));
        self.view.store(Arc::new(view));
        if !changes.is_empty() {
            self.generation.fetch_add(1, Ordering::Release);
        }
        Ok(changes)
    }

    /// The latest snapshot.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.load_full()
    }

    /// Records a health check result and publishes a new snapshot.
    pub fn update(&self, node: usize, state: NodeState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes.load();
        if nodes.get(node).is_none_or(|n| n.is_retired()) {
            return;
        }
        if let Some(n) = nodes.get(node) {
            // A replica's check replaces what probes told of it: after a failure, a restart or a rebuild the
            // node may stand behind that, and the check's answer is never ahead of the truth.
            let replayed = (state.up && state.in_recovery == Some(true))
                .then_some(state.lsn)
                .flatten();
            n.replayed.checked(replayed);
        }
        if let Some(slot) = states.get_mut(node) {
            *slot = state;
        }
        let view = compute_view(&nodes, &states, self.forward.as_ref());
        self.view.store(Arc::new(view));
    }

    /// The node that takes writes on `shard` now, or the error a write gets when there is none.
    pub fn primary(&self, shard: ShardId) -> Result<NodeId, ProxyError> {
        self.primary_in(&self.view.load(), shard)
    }

    /// [`Fleet::primary`] against a given snapshot.
    pub fn primary_in(&self, view: &FleetView, shard: ShardId) -> Result<NodeId, ProxyError> {
        match view.primary(shard) {
            Primary::One(n) => Ok(*n),
            // Names are looked up only for the error.
            _ => {
                let nodes = self.nodes.load();
                view.primary_or_error(shard, |n| nodes.get(n.index()).map(|n| n.target.name.as_str()))
            }
        }
    }

    /// The node that will probably take writes on `shard`: the current primary, else the configured one,
    /// else the shard's first live slot, else the first live slot.
    pub fn likely_primary(&self, shard: ShardId) -> NodeId {
        let view = self.view.load();
        match view.primary(shard) {
            Primary::One(p) => *p,
            _ => view
                .configured_primaries
                .get(shard.index())
                .copied()
                .flatten()
                .or_else(|| {
                    let nodes = self.nodes.load();
                    let live = |n: &&Arc<Node>| !n.is_retired();
                    nodes
                        .iter()
                        .filter(live)
                        .position(|n| n.shard == shard)
                        .or_else(|| nodes.iter().position(|n| !n.is_retired()))
                        .map(NodeId::new)
                })
                .unwrap_or(NodeId::new(0)),
        }
    }

    /// The commit and primary positions of `shard` (consistency levels).
    pub fn positions(&self, shard: ShardId) -> &positions::Positions {
        // Never empty: a config has at least one shard, and reloads keep the count.
        let last = self.positions.len().saturating_sub(1);
        &self.positions[shard.index().min(last)]
    }

    /// How many shards the fleet has (one when unsharded).
    pub fn shard_count(&self) -> usize {
        self.view.load().primaries.len()
    }
}

/// A node nobody has checked yet counts as up, so that a fresh proxy serves at once.
fn fresh_state() -> NodeState {
    NodeState {
        up: true,
        ..NodeState::default()
    }
}

fn compute_view(nodes: &[Arc<Node>], states: &[NodeState], forward: &dyn ReplayPositions) -> FleetView {
    let shards = nodes
        .iter()
        .filter(|n| !n.is_retired())
        .map(|n| n.shard.index() + 1)
        .max()
        .unwrap_or(1);
    let mut primaries = Vec::with_capacity(shards);
    let mut configured_primaries = Vec::with_capacity(shards);
    for shard in (0..shards).map(|s| ShardId::new(s as u32)) {
        let of_shard = |i: &usize| nodes[*i].shard == shard && !nodes[*i].is_retired();
        let configured = (0..nodes.len())
            .filter(of_shard)
            .find(|i| nodes[*i].role == Role::Primary)
            .map(NodeId::new);
        let primary = match configured {
            Some(p) => Primary::One(p),
            None => {
                let claimants: Vec<NodeId> = (0..nodes.len())
                    .filter(of_shard)
                    .filter(|i| {
                        nodes[*i].role == Role::Auto && states[*i].up && states[*i].in_recovery == Some(false)
                    })
                    .map(NodeId::new)
                    .collect();
                match claimants.len() {
                    0 => Primary::None,
                    1 => Primary::One(claimants[0]),
                    _ => Primary::Conflict(claimants),
                }
            }
        };
        primaries.push(primary);
        configured_primaries.push(configured);
    }
    // Each node's lag is measured against its own shard's primary: positions of different servers do not
    // compare.
    let primary_lsn = |i: usize| match primaries.get(nodes[i].shard.index()) {
        Some(Primary::One(p)) => states[p.index()].lsn,
        _ => None,
    };
    let mut out: Vec<NodeState> = states.to_vec();
    for (i, s) in out.iter_mut().enumerate() {
        let primary_lsn = primary_lsn(i);
        if forward.enabled() && nodes[i].role == Role::Replica {
            // A plain server's own WAL says nothing; what pgfleet has applied there does.
            s.lsn = forward.visible(i);
            s.lag = forward.lag(i, primary_lsn);
        }
        if primaries.contains(&Primary::One(NodeId::new(i))) {
            s.lag_bytes = Some(0);
            s.lag = Some(Duration::ZERO);
            continue;
        }
        if let (Some(p), Some(r)) = (primary_lsn, s.lsn) {
            let behind = p.bytes_since(r);
            s.lag_bytes = Some(behind);
            if behind == 0 || (forward.enabled() && nodes[i].role == Role::Replica && s.lag.is_none()) {
                // Replayed everything the primary has: no lag, however old the last transaction is.
                s.lag = Some(Duration::ZERO);
            }
        }
    }
    FleetView {
        nodes: out,
        primaries,
        configured_primaries,
    }
}
