//! Choosing among read nodes: weighted random, round robin, or least connections in use.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

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
        if candidates.len() <= 1 {
            return candidates.iter().map(|c| c.0).collect();
        }
        let first = match mode {
            LoadBalance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % candidates.len(),
            LoadBalance::LeastConnections => {
                let min = candidates.iter().map(|c| c.2).min().unwrap_or(0);
                let tied: Vec<usize> = (0..candidates.len())
                    .filter(|i| candidates[*i].2 == min)
                    .collect();
                // Rotate among ties so that an idle fleet still spreads load.
                tied[self.next.fetch_add(1, Ordering::Relaxed) % tied.len()]
            }
            LoadBalance::Random => {
                let total: u64 = candidates.iter().map(|c| u64::from(c.1)).sum();
                if total == 0 {
                    0
                } else {
                    let mut pick = rand::rng().random_range(0..total);
                    let mut chosen = 0;
                    for (i, c) in candidates.iter().enumerate() {
                        if pick < u64::from(c.1) {
                            chosen = i;
                            break;
                        }
                        pick -= u64::from(c.1);
                    }
                    chosen
                }
            }
        };
        let mut out = Vec::with_capacity(candidates.len());
        out.push(candidates[first].0);
        out.extend(
            candidates
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, c)| c.0),
        );
        out
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
