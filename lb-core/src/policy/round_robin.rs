//! `round_robin` (the article's 轮询): endpoints in turn.
//!
//! A shared counter advances by one per pick; the pick is the endpoint at
//! `counter % n`, skipping any that are not ready. With `[a, b, c]` and the counter
//! starting at 1, picks go `b, c, a, b, c, a, ...`: over `3k` picks each gets exactly `k`.
//!
//! The counter starts at a random offset (as in grpc-go `balancer/roundrobin`), so that
//! many clients started at once do not all send their first call to the same endpoint.
//!
//! With `slowStartConfig` ([`super::slow_start`]), an endpoint that has just become
//! READY takes its turn only with the probability its ramp says, and passes it to the
//! next endpoint otherwise.
//!
//! Caveat: equal *calls* are not equal *load*. A slow endpoint gets its share of calls
//! all the same, and they pile up on it; `least_connections` reacts to that.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, RngCore};

use std::sync::Arc;
use serde::Deserialize;

use super::slow_start::{self, SlowStart, SlowStartConfig};
use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "round_robin";

/// Settings of `round_robin`: `{"round_robin": {}}` in service-config JSON, or with
/// slow start, `{"round_robin": {"slowStartConfig": {"slowStartWindow": "30s"}}}`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RoundRobinConfig {
    /// Ramp up endpoints that have just become READY (off by default).
    pub slow_start_config: Option<SlowStartConfig>,
}

impl PolicyConfig for RoundRobinConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "endpoints in turn (the article's 轮询)";

    fn validate(&mut self) -> Result<(), String> {
        slow_start::validate(self.slow_start_config.as_ref())
    }

    fn slow_start(&self) -> Option<&SlowStartConfig> {
        self.slow_start_config.as_ref()
    }

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(
            RoundRobin::new(rng)
                .with_slow_start(SlowStart::new(self.slow_start_config.as_ref(), endpoints)),
        )
    }
}

/// Picks endpoints in turn.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
    slow_start: Option<SlowStart>,
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
            slow_start: None,
        }
    }

    /// The same, ramping up endpoints that have just become READY.
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// The ready endpoint whose turn `turn` is, skipping those that are down.
    fn turn(&self, endpoints: &[EndpointState], turn: usize) -> Result<usize, PickError> {
        let n = endpoints.len();
        let start = turn % n;
        (0..n)
            .map(|offset| (start + offset) % n)
            .find(|&i| endpoints[i].is_ready())
            .ok_or_else(|| PickError::none_ready(endpoints))
    }
}

/// How many turns a pick may pass on for slow start before it takes the last one.
const MAX_PASSES: usize = 8;

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
        let mut turn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut i = self.turn(endpoints, turn)?;
        if let Some(slow_start) = &self.slow_start {
            // An endpoint in its window may pass its turn on to the next one.
            for _ in 0..MAX_PASSES.min(n) {
                if slow_start.admits(&endpoints[i], ctx) {
                    break;
                }
                turn = self.next.fetch_add(1, Ordering::Relaxed);
                i = self.turn(endpoints, turn)?;
            }
        }
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
