//! The fleet as the router sees it: each node's identity, configured role and weight, and whether it is
//! usable right now. Connection failures mark a node down for a short while so that other sessions skip it.

pub mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::connect::NodeTarget;
use crate::config::{Config, Role};

/// How long a node that refused a connection is skipped for reads before it is tried again.
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
    /// Whether the node may be tried now.
    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// Records a failed connection: skip this node for a while.
    pub fn mark_down(&self) {
        self.down_until_ms
            .store(now_ms() + DOWN_BACKOFF.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records a successful connection.
    pub fn mark_up(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// All nodes, in config order.
#[derive(Debug)]
pub struct Fleet {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Index of the primary.
    pub primary: usize,
}

impl Fleet {
    /// The fleet described by a validated config.
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
        let primary = nodes.iter().position(|n| n.role == Role::Primary).unwrap_or(0);
        Fleet { nodes, primary }
    }

    /// Indices of nodes that may serve reads (replicas with weight > 0, plus the primary when asked).
    pub fn read_nodes(&self, primary_reads: bool) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                (n.role == Role::Replica && n.weight > 0) || (primary_reads && *i == self.primary)
            })
            .map(|(i, _)| i)
            .collect()
    }
}
