//! gRPC connection backoff: how long to wait before reconnecting to a failed endpoint.
//!
//! From gRPC's `doc/connection-backoff.md`: after the `n`-th consecutive failure, wait
//! `min(initial × multiplierⁿ, max)`, then spread that by a random ±`jitter` so that
//! clients which lost the same server at the same moment do not all return at the same
//! moment (a thundering herd).
//!
//! With the defaults (1 s, ×1.6, ±20 %, at most 120 s) the waits are about
//! 1 s, 1.6 s, 2.56 s, 4.1 s, ... reaching the 120 s cap after 11 failures.
//!
//! The ground floor. May import: nothing of this crate.

use std::time::Duration;

use rand::{Rng, RngCore};

/// Parameters of gRPC connection backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// How much each further failure multiplies the wait.
    pub multiplier: f64,
    /// The random spread, as a fraction of the wait (0.2 = ±20 %).
    pub jitter: f64,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (0 for the first one).
    pub fn delay(&self, failures: u32, rng: &mut dyn RngCore) -> Duration {
        let exponent = i32::try_from(failures).unwrap_or(i32::MAX);
        let base = (self.initial.as_secs_f64() * self.multiplier.powi(exponent))
            .min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        // `try_from` rather than `from`: a huge `max` must not panic the connection task.
        Duration::try_from_secs_f64((base * (1.0 + spread)).max(0.0)).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn grows_by_the_multiplier_within_the_jitter_and_stops_at_the_cap() {
        let backoff = Backoff::default();
        let mut rng = SmallRng::seed_from_u64(9);
        for (failures, expected) in [(0, 1.0), (1, 1.6), (2, 2.56), (3, 4.096), (20, 120.0)] {
            for _ in 0..100 {
                let secs = backoff.delay(failures, &mut rng).as_secs_f64();
                assert!(
                    (expected * 0.8..=expected * 1.2).contains(&secs),
                    "failure {failures}: {secs} s, expected {expected} s ± 20 %"
                );
            }
        }
    }

    #[test]
    fn no_jitter_is_exact() {
        let backoff = Backoff {
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_millis(50),
        };
        let mut rng = SmallRng::seed_from_u64(0);
        let waits: Vec<u128> = (0..5)
            .map(|n| backoff.delay(n, &mut rng).as_millis())
            .collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
    }
}
