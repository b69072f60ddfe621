//! What every clone of a balancer shares to route calls: the endpoint pool, and how
//! calls are picked, waited for, retried and hedged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{SeedableRng, rngs::SmallRng};
use tokio::sync::watch;

use super::budget::{RetryBudget, RetryPolicy};
use crate::subchannels::pool::Pool;
#[cfg(feature = "metrics")]
use crate::subchannels::subchannel::EndpointStatus;

/// What every clone of a balancer shares: the endpoint pool, and how calls are routed
/// to it (picks explained, waiting, retries and their budget).
pub(crate) struct Router {
    pub(crate) pool: Arc<Pool>,
    /// How many more picks to explain.
    pub(crate) explain: AtomicU64,
    pub(crate) queue_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    /// Per-method deadlines, retries and hedging (`BalancerBuilder::service_config`).
    pub(crate) service_config: crate::service_config::ServiceConfig,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) retries: AtomicU64,
    /// Hedged attempts sent (beyond each call's first).
    pub(crate) hedges: AtomicU64,
    /// What the pickers count (gRFC A78's `weighted_round_robin` counters).
    pub(crate) pick_counters: crate::policy::PickCounters,
    pub(crate) seed: u64,
    pub(crate) clones: AtomicU64,
    /// Dropped with the last balancer clone, which tells the tasks to end.
    pub(crate) _stop: watch::Sender<()>,
}

impl Router {
    /// A generator for a new clone: seeded from the balancer's seed and the clone's
    /// number, so a seeded program gets the same streams every run.
    pub(crate) fn next_rng(&self) -> SmallRng {
        let n = self.clones.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(
            self.seed
                .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }
}

#[cfg(feature = "metrics")]
impl Router {
    /// The policy's name and every endpoint's state (no RNG drawn: reading metrics
    /// must not change a seeded run's picks).
    pub(crate) fn report(&self) -> (&'static str, Vec<EndpointStatus>, [u64; 3]) {
        let counters = &self.pick_counters;
        let counts = [
            &counters.rr_fallback,
            &counters.endpoint_weight_not_yet_usable,
            &counters.endpoint_weight_stale,
        ]
        .map(|c| c.load(Ordering::Relaxed));
        (self.pool.policy_name(), self.pool.statuses(), counts)
    }
}
