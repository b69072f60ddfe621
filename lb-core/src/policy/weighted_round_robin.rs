//! `weighted_round_robin`: endpoints in turn, each as often as its weight says, spread
//! out rather than in bursts: nginx's *smooth weighted round robin*.
//!
//! Every endpoint keeps a running score. At each step, every score grows by its
//! endpoint's weight; the highest score wins the turn (the first, on a tie) and gives
//! back the total weight. With weights `a = 5, b = 1, c = 1` (total 7):
//!
//! | step | scores before | pick | after |
//! |---|---|---|---|
//! | 1 | 5, 1, 1 | a | -2, 1, 1 |
//! | 2 | 3, 2, 2 | a | -4, 2, 2 |
//! | 3 | 1, 3, 3 | b | 1, -4, 3 |
//! | 4 | 6, -3, 4 | a | -1, -3, 4 |
//! | 5 | 4, -2, 5 | c | 4, -2, -2 |
//! | 6 | 9, -1, -1 | a | 2, -1, -1 |
//! | 7 | 7, 0, 0 | a | 0, 0, 0 |
//!
//! `a a b a c a a`, and the scores are back at zero: the cycle repeats. A plain weighted
//! round robin would send `a a a a a b c`, five calls in a row to `a`.
//!
//! Why this and not Envoy's EDF scheduler: both spread turns smoothly, but this cycle
//! can be computed once per endpoint set, after which a pick is one atomic increment
//! and an array read: O(1), lock-free, and exact. (Computing it live needs a lock, or,
//! for EDF, a heap, on every call.) Cycles longer than 65,536 turns are scaled down in
//! proportion, keeping every weight at least 1.
//!
//! The cycle starts at a random turn, as `round_robin` does. Weights come from the
//! endpoint list (`host:port=W`); gRPC's own `weighted_round_robin` learns them from
//! servers' load reports instead, which is future work here.
//!
//! Reference: nginx `ngx_http_upstream_round_robin.c` (smooth weighted round robin,
//! 2012).

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, RngCore};

use std::sync::Arc;
use serde::Deserialize;

use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "weighted_round_robin";

/// `weighted_round_robin` has no settings: `{"weighted_round_robin": {}}` in service-config JSON.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedRoundRobinConfig {}

impl PolicyConfig for WeightedRoundRobinConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "in turn, in proportion to the weights (smooth)";

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(WeightedRoundRobin::new(endpoints, rng))
    }
}

/// The longest cycle computed in full.
pub const MAX_CYCLE: u64 = 1 << 16;

/// Endpoints in turn, in proportion to their weights.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    cycle: Vec<usize>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    /// The cycle for `endpoints`' weights (endpoints not ready now are left out),
    /// starting at a random turn drawn from `rng`.
    pub fn new(endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Self {
        let mut picker = Self::starting_at(endpoints, 0);
        if !picker.cycle.is_empty() {
            picker.next = AtomicUsize::new(rng.random_range(0..picker.cycle.len()));
        }
        picker
    }

    /// The cycle, starting at turn `start`.
    pub fn starting_at(endpoints: &[EndpointState], start: usize) -> Self {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| {
                if e.is_ready() {
                    u64::from(e.weight())
                } else {
                    0
                }
            })
            .collect();
        Self {
            cycle: smooth_cycle(&weights),
            next: AtomicUsize::new(start),
        }
    }
}

/// One full cycle of smooth weighted round robin over `weights` (0 = left out).
fn smooth_cycle(weights: &[u64]) -> Vec<usize> {
    let gcd = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let mut weights: Vec<u64> = weights.iter().map(|w| w / gcd).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut scores = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            scores[i] += w as i64;
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        cycle.push(best);
    }
    cycle
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Picker for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let len = self.cycle.len();
        if len == 0 || endpoints.is_empty() {
            return Err(PickError::none_ready(endpoints));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // Skip turns of endpoints that went down since the cycle was computed.
        let i = (0..len)
            .map(|offset| self.cycle[(turn + offset) % len])
            .find(|&i| i < endpoints.len() && endpoints[i].is_ready())
            .ok_or_else(|| PickError::none_ready(endpoints))?;
        ctx.explain(|| {
            format!(
                "{NAME}: turn {} of a {len}-turn cycle -> {}",
                turn % len,
                label(&endpoints[i])
            )
        });
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use rand::SeedableRng;

    #[test]
    fn five_one_one_is_a_a_b_a_c_a_a() {
        let endpoints = weighted(&[5, 1, 1]);
        let picker = WeightedRoundRobin::starting_at(&endpoints, 0);
        let mut rng = rand::rngs::SmallRng::from_seed([0; 32]);
        let mut ctx = PickContext::new(&mut rng);
        let names = ['a', 'b', 'c'];
        let sequence: String = (0..14)
            .map(|_| names[picker.pick(&endpoints, &mut ctx).unwrap()])
            .collect();
        assert_eq!(sequence, "aabacaaaabacaa");
    }

    #[test]
    fn shares_follow_the_weights_within_a_point() {
        for weights in [
            vec![5, 1, 1],
            vec![3, 1],
            vec![1, 2, 3, 4],
            vec![10, 1, 1, 1, 1, 1],
        ] {
            let endpoints = weighted(&weights);
            let mut rng = rand::rngs::SmallRng::from_seed([1; 32]);
            let picker = WeightedRoundRobin::new(&endpoints, &mut rng);
            let counts = histogram(&picker, &endpoints, 70_000);
            assert_shares_match_weights(&counts, &weights, 1.0);
        }
    }

    #[test]
    fn common_factors_and_huge_weights_keep_cycles_short() {
        assert_eq!(smooth_cycle(&[10, 20]), vec![1, 0, 1]);
        let cycle = smooth_cycle(&[10_000, 9_999, 1, 7]);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 4, "{}", cycle.len());
        assert!(cycle.contains(&2), "a weight never rounds down to nothing");
    }
}
