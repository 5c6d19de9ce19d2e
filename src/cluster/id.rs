//! Node identity: the index of a node slot, which never changes while pgfleet runs (see [`super::Node`]).

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
