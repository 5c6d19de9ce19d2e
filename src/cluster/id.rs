//! Node and shard identity: the index of a node slot, which never changes while pgfleet runs (see
//! [`super::Node`]), and the shard number a node belongs to.

use std::fmt;

/// A node slot's index in the fleet (config order, then order of addition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(usize);

impl NodeId {
    /// The node at slot `index`.
    pub const fn new(index: usize) -> NodeId {
        NodeId(index)
    }

    /// The slot index, for per-node tables.
    pub const fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// A shard's number: `nodes[i].shard` in the config, 0 for every node of an unsharded fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(u32);

impl ShardId {
    /// Shard number `n`.
    pub const fn new(n: u32) -> ShardId {
        ShardId(n)
    }

    /// The number, for per-shard tables and messages.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The number as an index into per-shard tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}
