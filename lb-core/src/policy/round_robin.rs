//! `round_robin` (the article's 轮询): endpoints in turn.
//!
//! A shared counter advances by one per pick; the pick is the endpoint at
//! `counter % n`, skipping any that are not ready. With `[a, b, c]` and the counter
//! starting at 1, picks go `b, c, a, b, c, a, ...`: over `3k` picks each gets exactly `k`.
//!
//! The counter starts at a random offset (as in grpc-go `balancer/roundrobin`), so that
//! many clients started at once do not all send their first call to the same endpoint.
//!
//! Caveat: equal *calls* are not equal *load*. A slow endpoint gets its share of calls
//! all the same, and they pile up on it; `least_connections` reacts to that.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, RngCore};

use std::sync::Arc;
use serde::Deserialize;

use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "round_robin";

/// `round_robin` has no settings: `{"round_robin": {}}` in service-config JSON.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRobinConfig {}

impl PolicyConfig for RoundRobinConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "endpoints in turn (the article's 轮询)";

    fn build(&self, _: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(RoundRobin::new(rng))
    }
}

/// Picks endpoints in turn.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin whose first pick is at a random position drawn from `rng`.
    pub fn new(rng: &mut dyn RngCore) -> Self {
        Self::starting_at(rng.random_range(0..1 << 16))
    }

    /// A round robin whose first pick is at `start` (modulo the endpoint count).
    pub fn starting_at(start: usize) -> Self {
        Self {
            next: AtomicUsize::new(start),
        }
    }
}

impl Picker for RoundRobin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let n = endpoints.len();
        if n == 0 {
            return Err(PickError::NoEndpoints);
        }
        // Relaxed is enough: the counter only has to hand out distinct numbers; it
        // orders nothing else. Wrapping at usize::MAX is harmless.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let start = turn % n;
        let i = (0..n)
            .map(|offset| (start + offset) % n)
            .find(|&i| endpoints[i].is_ready())
            .ok_or_else(|| PickError::none_ready(endpoints))?;
        ctx.explain(|| format!("{NAME}: turn {turn} mod {n} -> {}", label(&endpoints[i])));
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn three_endpoints_get_exactly_a_third_each() {
        let endpoints = ready(3);
        for start in [0, 1, 2, 12345] {
            let picker = RoundRobin::starting_at(start);
            assert_eq!(histogram(&picker, &endpoints, 3 * 1000), vec![1000; 3]);
        }
    }

    #[test]
    fn goes_in_turn_from_the_start_offset() {
        let endpoints = ready(3);
        let picker = RoundRobin::starting_at(1);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut ctx = PickContext::new(&mut rng);
        let picks: Vec<usize> = (0..6)
            .map(|_| picker.pick(&endpoints, &mut ctx).unwrap())
            .collect();
        assert_eq!(picks, [1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn the_start_offset_is_seeded() {
        let endpoints = ready(1000);
        let first = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let picker = RoundRobin::new(&mut rng);
            picker
                .pick(&endpoints, &mut PickContext::new(&mut rng))
                .unwrap()
        };
        assert_eq!(first(5), first(5));
        assert!(
            (0..10)
                .map(first)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }
}
