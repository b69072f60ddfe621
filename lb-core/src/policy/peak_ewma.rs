//! `peak_ewma`: of two endpoints drawn at random, the one with the lower *cost*, where
//! cost = peak-EWMA latency × (calls in flight + 1).
//!
//! Calls in flight say how much work an endpoint has queued; latency says how long each
//! takes. Their product estimates how long a new call would wait. The latency is a
//! [peak-EWMA](crate::latency) of the endpoint's recent calls (timed to the end of the
//! response body): it jumps up at the first slow answer and comes down slowly, and it
//! decays towards zero while the endpoint gets no calls, so an endpoint that was
//! avoided is soon tried again. An endpoint with no finished call yet is assumed to take
//! the configured default latency.
//!
//! Worked example: `a` averages 2 ms with 3 calls in flight, `c` 20 ms with none:
//! cost(a) = 2 × 4 = 8, cost(c) = 20 × 1 = 20, so `{a, c}` → `a`, although `a` is
//! busier. `least_request` would have picked `c`.
//!
//! References: Finagle's `PeakEwma` load balancer (Twitter, 2014); tower's
//! `load::PeakEwma` and `p2c::Balance`, which linkerd2-proxy uses; the two choices are
//! Mitzenmacher's (see [`least_request`](super::least_request)).
//!
//! **Failures count as load**: the cost is divided by the endpoint's recent success
//! rate ([`EndpointState::success_rate`], floored at 1 %), so that an endpoint that
//! answers UNAVAILABLE in a millisecond does not look like the fastest. With
//! `slowStartConfig` ([`super::slow_start`]), an endpoint that has just become READY
//! (and has no latency measured yet) wins a comparison only with the probability its
//! ramp says.
//!
//! Caveat: latency includes the network and the server's queue, so a server that is
//! fast but far looks slow; and with little traffic the estimate rests on few samples.

use std::{sync::Arc, time::Duration};

use rand::RngCore;
use serde::Deserialize;

use super::least_request::MIN_SUCCESS_RATE;
use super::slow_start::{self, SlowStart, SlowStartConfig};
use super::{PickContext, PickError, Picker, PolicyConfig, best_of_sample, config, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "peak_ewma";

/// Settings of `peak_ewma`: `{"peak_ewma": {"decay": "10s", "defaultLatency": "30ms"}}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PeakEwmaConfig {
    /// The latency estimate's decay time τ (see [`crate::latency`]).
    #[serde(with = "config::duration_text")]
    pub decay: Duration,
    /// The latency assumed for an endpoint before its first call finishes.
    #[serde(with = "config::duration_text")]
    pub default_latency: Duration,
    /// Ramp up endpoints that have just become READY (off by default).
    pub slow_start_config: Option<SlowStartConfig>,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        Self {
            decay: crate::latency::DEFAULT_DECAY,
            default_latency: Duration::from_millis(30),
            slow_start_config: None,
        }
    }
}

impl PolicyConfig for PeakEwmaConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "lower peak-EWMA latency × (in flight + 1), of two random";

    fn validate(&mut self) -> Result<(), String> {
        if self.decay.is_zero() {
            return Err("decay must be above 0".into());
        }
        slow_start::validate(self.slow_start_config.as_ref())
    }

    fn slow_start(&self) -> Option<&SlowStartConfig> {
        self.slow_start_config.as_ref()
    }

    fn build(&self, endpoints: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(
            PeakEwma::new(self.default_latency)
                .with_slow_start(SlowStart::new(self.slow_start_config.as_ref(), endpoints)),
        )
    }

    fn latency_decay(&self) -> Duration {
        self.decay
    }
}

/// Picks the cheaper of two random endpoints by latency × load.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    default_latency_ns: f64,
    slow_start: Option<SlowStart>,
}

impl PeakEwma {
    /// Assumes `default_latency` for endpoints without a finished call.
    pub fn new(default_latency: Duration) -> Self {
        Self {
            default_latency_ns: default_latency.as_nanos() as f64,
            slow_start: None,
        }
    }

    /// The same, ramping up endpoints that have just become READY.
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// The cost of sending one more call to `endpoint` at `now`: latency × (in flight
    /// + 1), per recent success.
    pub fn cost(&self, endpoint: &EndpointState, now: u64) -> f64 {
        self.cost_with(endpoint, now, endpoint.success_rate(now))
    }

    fn cost_with(&self, endpoint: &EndpointState, now: u64, success_rate: f64) -> f64 {
        let latency = endpoint
            .latency_estimate(now)
            .unwrap_or(self.default_latency_ns);
        latency * (endpoint.in_flight() as f64 + 1.0) / success_rate.max(MIN_SUCCESS_RATE)
    }
}

impl Picker for PeakEwma {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let now = ctx.now();
        best_of_sample(
            NAME,
            endpoints,
            ctx,
            2,
            self.slow_start.as_ref(),
            |e| self.cost_with(e, now, e.success_rate_lazily(|| now)),
            |e| {
                let ms = e.latency_estimate(now).unwrap_or(self.default_latency_ns) / 1e6;
                let cost = self.cost(e, now) / 1e6;
                let rate = e.success_rate(now);
                let failing = if rate < 0.995 {
                    format!(" / {:.0} % ok", rate * 100.0)
                } else {
                    String::new()
                };
                format!(
                    "{}: {ms:.2} ms × ({} + 1){failing} = {cost:.2}",
                    label(e),
                    e.in_flight()
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use rand::{SeedableRng, rngs::SmallRng};

    const MS: u64 = 1_000_000;

    #[test]
    fn prefers_fast_even_when_busier() {
        let endpoints = ready(2);
        // a: 2 ms, c: 20 ms, measured at t = 1 s.
        endpoints[0].start_call_at(998 * MS).finish_at(1_000 * MS);
        endpoints[1].start_call_at(980 * MS).finish_at(1_000 * MS);
        let _a_busy: Vec<_> = (0..3)
            .map(|_| endpoints[0].start_call_at(1_000 * MS))
            .collect();
        let picker = PeakEwma::new(Duration::from_millis(30));
        let mut rng = SmallRng::seed_from_u64(1);
        let mut ctx = PickContext::new(&mut rng).at(1_000 * MS);
        // 2 × 4 = 8 < 20 × 1 = 20.
        assert_eq!(picker.pick(&endpoints, &mut ctx), Ok(0));
        assert!(picker.cost(&endpoints[0], 1_000 * MS) < picker.cost(&endpoints[1], 1_000 * MS));
    }

    #[test]
    fn an_unmeasured_endpoint_costs_the_default() {
        let endpoints = ready(1);
        let picker = PeakEwma::new(Duration::from_millis(30));
        assert_eq!(picker.cost(&endpoints[0], MS), (30 * MS) as f64);
    }

    #[test]
    fn equal_endpoints_share_evenly() {
        let endpoints = ready(3);
        let counts = histogram(
            &PeakEwma::new(Duration::from_millis(30)),
            &endpoints,
            30_000,
        );
        let chi2 = chi_square_uniform(&counts);
        assert!(chi2 < 13.82, "{counts:?}: chi-square {chi2}");
    }
}
