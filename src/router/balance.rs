//! Choosing among read nodes: weighted random, round robin, or least connections in use.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::cluster::NodeId;
use crate::config::LoadBalance;

/// Picks the order in which read nodes are tried.
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer; the mode is given per call, so that a reload of `routing.load_balance` takes effect at
    /// once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Orders `candidates` (node index, weight, connections in use): the first is the choice, the rest are
    /// fallbacks in order.
    pub fn order(&self, mode: LoadBalance, candidates: &[(usize, u32, usize)]) -> Vec<usize> {
        let mut nodes: Vec<NodeId> = candidates.iter().map(|c| NodeId::new(c.0)).collect();
        let weight = |n: NodeId| candidates.iter().find(|c| c.0 == n.index()).map_or(0, |c| c.1);
        let in_use = |n: NodeId| candidates.iter().find(|c| c.0 == n.index()).map_or(0, |c| c.2);
        self.order_in_place(mode, &mut nodes, weight, in_use);
        nodes.into_iter().map(NodeId::index).collect()
    }

    /// Moves the chosen node to the front of `nodes`, keeping the others in their order as fallbacks.
    /// `weight` and `in_use` (connections checked out) are asked only when the mode needs them.
    pub fn order_in_place(
        &self,
        mode: LoadBalance,
        nodes: &mut [NodeId],
        weight: impl Fn(NodeId) -> u32,
        in_use: impl Fn(NodeId) -> usize,
    ) {
        if nodes.len() <= 1 {
            return;
        }
        let first = match mode {
            LoadBalance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % nodes.len(),
            LoadBalance::LeastConnections => {
                // One reading per node: the counts change under our feet.
                let loads: Vec<usize> = nodes.iter().map(|n| in_use(*n)).collect();
                let min = loads.iter().copied().min().unwrap_or(0);
                let tied: Vec<usize> = (0..loads.len()).filter(|i| loads[*i] == min).collect();
                // Rotate among ties so that an idle fleet still spreads load.
                tied[self.next.fetch_add(1, Ordering::Relaxed) % tied.len()]
            }
            LoadBalance::Random => {
                let total: u64 = nodes.iter().map(|n| u64::from(weight(*n))).sum();
                if total == 0 {
                    0
                } else {
                    let mut pick = rand::rng().random_range(0..total);
                    let mut chosen = 0;
                    for (i, n) in nodes.iter().enumerate() {
                        let w = u64::from(weight(*n));
                        if pick < w {
                            chosen = i;
                            break;
                        }
                        pick -= w;
                    }
                    chosen
                }
            }
        };
        nodes[..=first].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_alternates() {
        let b = Balancer::new();
        let m = LoadBalance::RoundRobin;
        let c = [(1, 1, 0), (2, 1, 0)];
        let firsts: Vec<usize> = (0..4).map(|_| b.order(m, &c)[0]).collect();
        assert_eq!(firsts, vec![1, 2, 1, 2]);
        assert_eq!(b.order(m, &c).len(), 2);
    }

    #[test]
    fn least_connections_prefers_idle() {
        let b = Balancer::new();
        let m = LoadBalance::LeastConnections;
        assert_eq!(b.order(m, &[(1, 1, 5), (2, 1, 1), (3, 1, 3)])[0], 2);
    }

    #[test]
    fn random_follows_weights() {
        let b = Balancer::new();
        let m = LoadBalance::Random;
        let c = [(1, 3, 0), (2, 1, 0), (3, 0, 0)];
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[b.order(m, &c)[0]] += 1;
        }
        assert_eq!(counts[3], 0, "weight 0 is never chosen first");
        assert!(counts[1] > 2 * counts[2], "3:1 weights, got {counts:?}");
    }
}
