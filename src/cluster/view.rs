//! The fleet's live state as one immutable snapshot: what the monitor last saw of each node, and which node
//! is the primary of each shard (the one shard of an unsharded fleet). Sessions read it through `arc_swap`
//! without taking a lock.

use std::time::{Duration, SystemTime};

use super::{NodeId, ShardId};
use crate::protocol::lsn::{Lsn, WalGeometry};
use crate::protocol::messages::ProxyError;

/// What the monitor knows about one node.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// The last health check succeeded (true before the first check, so a fresh proxy serves at once).
    pub up: bool,
    /// `pg_is_in_recovery()` at the last successful check; None before it.
    pub in_recovery: Option<bool>,
    /// WAL position: `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` on a replica.
    pub lsn: Option<Lsn>,
    /// The server's WAL page and segment sizes, to read its insert positions (`Lsn::inserted_end`).
    pub wal: Option<WalGeometry>,
    /// Sessions may commit asynchronously by default (`synchronous_commit = off` in the server's
    /// configuration or for a role or database): on a primary, commit positions are then insert positions
    /// (`frontend::session::positions`, `commit_position`).
    pub async_commits: bool,
    /// Bytes of WAL the node has not replayed yet, measured against the primary's last position.
    pub lag_bytes: Option<u64>,
    /// How far behind in time the node's replay is (zero when it has replayed all the primary has written).
    pub lag: Option<Duration>,
    /// When the last check finished.
    pub checked_at: Option<SystemTime>,
    /// When the last successful check began: its `lsn` is at least the node's position at that moment.
    pub started: Option<std::time::Instant>,
    /// Why the last check failed.
    pub error: Option<String>,
}

/// Which node takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    /// This one.
    One(NodeId),
    /// No node can take writes now.
    None,
    /// Several nodes claim to be primary; writes are refused until one steps down.
    Conflict(Vec<NodeId>),
}

/// The whole fleet at one moment.
#[derive(Debug, Clone)]
pub struct FleetView {
    /// Per node, in config order.
    pub nodes: Vec<NodeState>,
    /// The write node of each shard, by shard number (one entry in an unsharded fleet).
    pub primaries: Vec<Primary>,
    /// Per shard, the live node configured with role = "primary", if any.
    pub configured_primaries: Vec<Option<NodeId>>,
}

/// What a shard number beyond the snapshot's shards has (a reload added the shard after it was taken).
const NO_PRIMARY: Primary = Primary::None;

impl FleetView {
    /// The write node of `shard`.
    pub fn primary(&self, shard: ShardId) -> &Primary {
        self.primaries.get(shard.index()).unwrap_or(&NO_PRIMARY)
    }

    /// The write node of `shard`, if there is exactly one.
    pub fn primary_node(&self, shard: ShardId) -> Option<NodeId> {
        match self.primary(shard) {
            Primary::One(n) => Some(*n),
            _ => None,
        }
    }

    /// Whether `node` is the primary of its shard.
    pub fn is_primary(&self, node: NodeId) -> bool {
        self.primaries.contains(&Primary::One(node))
    }

    /// The node that takes writes on `shard`, or the error a write gets when there is none (`name` names
    /// the claimants of a conflict).
    pub fn primary_or_error<'a>(
        &self,
        shard: ShardId,
        name: impl Fn(NodeId) -> Option<&'a str>,
    ) -> Result<NodeId, ProxyError> {
        match self.primary(shard) {
            Primary::One(n) => Ok(*n),
            Primary::None => Err(ProxyError::error(
                "08006",
                "pgfleet: no primary is available: no node with role = \"auto\" is up and out of recovery",
            )
            .with_hint(
                "Promote a replica (pg_ctl promote, Patroni, pg_auto_failover) or bring the primary back.",
            )),
            Primary::Conflict(claimants) => {
                let names: Vec<&str> = claimants.iter().filter_map(|n| name(*n)).collect();
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
}
