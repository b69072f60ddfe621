//! `least_request`: of `k` endpoints drawn at random, the one with the fewest calls in
//! flight. With `k = 2`, the *power of two choices*.
//!
//! Scanning every endpoint (`least_connections`) finds the very least loaded one, but
//! costs O(n) per pick, and when many clients scan at once they all see the same
//! "least loaded" endpoint and pile onto it together. Drawing just two at random and
//! taking the better costs O(1) and, as Mitzenmacher showed, already cuts the worst
//! load from about `log n / log log n` to `log log n`: most of the benefit of knowing
//! everything, for almost nothing.
//!
//! Worked example, `k = 2`, in flight `[a: 3, b: 0, c: 1, d: 5]`: draw `{a, c}` → `c`
//! (1 < 3); draw `{b, d}` → `b`. `d`, the busiest, is only ever picked if drawn with
//! another endpoint at least as busy, which never happens here.
//!
//! The sample never holds the same endpoint twice. Ties go to the first drawn, which is
//! random. With `k ≥ n` every endpoint is compared, so the busiest is never picked
//! while another has fewer calls.
//!
//! **Failures count as load.** An endpoint that answers UNAVAILABLE within a
//! millisecond has nothing in flight, and would win nearly every comparison: the
//! fastest way to fail every call. So the load compared is the calls in flight plus
//! this one, per recent success: `(in flight + 1) / success rate`
//! ([`EndpointState::success_rate`], over about the last 10 calls). A healthy endpoint's
//! success rate is 1 and changes nothing; one failing half its calls counts double; one
//! failing all of them counts 100 times (the rate is floored at 1 %).
//!
//! With `slowStartConfig` ([`super::slow_start`]), an endpoint that has just become
//! READY wins a comparison only with the probability its ramp says.
//!
//! References: M. Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", IEEE TPDS 2001; gRPC's `least_request_experimental` (gRFC A48), whose
//! `choiceCount` this reads (2 to 10); Envoy's LEAST_REQUEST.

use std::sync::Arc;

use rand::RngCore;
use serde::Deserialize;

use super::slow_start::{self, SlowStart, SlowStartConfig};
use super::{LazyNow, PickContext, PickError, Picker, PolicyConfig, best_of_sample, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "least_request";

/// Settings of `least_request`: `{"least_request": {"choiceCount": 3}}`, and
/// optionally `"slowStartConfig": {"slowStartWindow": "30s"}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LeastRequestConfig {
    /// How many random endpoints to compare, 2 to 10 (gRPC clamps larger values to 10).
    pub choice_count: usize,
    /// Ramp up endpoints that have just become READY (off by default).
    pub slow_start_config: Option<SlowStartConfig>,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        Self {
            choice_count: 2,
            slow_start_config: None,
        }
    }
}

impl PolicyConfig for LeastRequestConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "the fewest calls in flight, of k random endpoints";

    fn validate(&mut self) -> Result<(), String> {
        if self.choice_count < 2 {
            return Err(format!(
                "choiceCount {} is below 2: one random choice is just `random`",
                self.choice_count
            ));
        }
        // gRFC A48: values above the maximum are clamped, not rejected.
        self.choice_count = self.choice_count.min(MAX_CHOICES);
        slow_start::validate(self.slow_start_config.as_ref())
    }

    fn slow_start(&self) -> Option<&SlowStartConfig> {
        self.slow_start_config.as_ref()
    }

    fn build(&self, endpoints: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(
            LeastRequest::new(self.choice_count)
                .with_slow_start(SlowStart::new(self.slow_start_config.as_ref(), endpoints)),
        )
    }
}

pub use super::helpers::MAX_CHOICES;

/// Picks the endpoint with the fewest calls in flight among `k` random ones.
#[derive(Debug, Clone, Copy)]
pub struct LeastRequest {
    choices: usize,
    slow_start: Option<SlowStart>,
}

impl LeastRequest {
    /// Compares `choices` endpoints per pick, clamped to 2..=[`MAX_CHOICES`].
    pub fn new(choices: usize) -> Self {
        Self {
            choices: choices.clamp(2, MAX_CHOICES),
            slow_start: None,
        }
    }

    /// The same, ramping up endpoints that have just become READY.
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self
    }
}

/// The least success rate the load-aware policies divide by: an endpoint failing every
/// call counts as 100 times its load, not infinitely much (it may recover).
pub const MIN_SUCCESS_RATE: f64 = 0.01;

/// An endpoint's load per recent success: `(in flight + 1) / success rate`, what
/// `least_request` and `least_connections` compare.
pub fn load_per_success(endpoint: &EndpointState, now: u64) -> f64 {
    (endpoint.in_flight() as f64 + 1.0) / endpoint.success_rate(now).max(MIN_SUCCESS_RATE)
}

/// The same, reading the clock only for an endpoint that failed lately.
pub(crate) fn load_per_success_lazily(endpoint: &EndpointState, now: &LazyNow) -> f64 {
    let rate = endpoint.success_rate_lazily(|| now.get());
    (endpoint.in_flight() as f64 + 1.0) / rate.max(MIN_SUCCESS_RATE)
}

/// `"b: 3 in flight"`, and its success rate when it has failed lately.
pub(crate) fn describe_load(endpoint: &EndpointState, now: &LazyNow) -> String {
    let rate = endpoint.success_rate_lazily(|| now.get());
    if rate < 0.995 {
        format!(
            "{}: {} in flight, {:.0} % ok",
            label(endpoint),
            endpoint.in_flight(),
            rate * 100.0
        )
    } else {
        format!("{}: {} in flight", label(endpoint), endpoint.in_flight())
    }
}

impl Picker for LeastRequest {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let now = ctx.lazy_now();
        best_of_sample(
            NAME,
            endpoints,
            ctx,
            self.choices,
            self.slow_start.as_ref(),
            |e| load_per_success_lazily(e, &now),
            |e| describe_load(e, &now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use rand::SeedableRng;

    #[test]
    fn avoids_the_busy_one() {
        let endpoints = ready(4);
        let _busy: Vec<_> = (0..10).map(|_| endpoints[2].start_call()).collect();
        // k = 2: endpoint 2 only wins if sampled with... nobody less busy: never.
        let counts = histogram(&LeastRequest::new(2), &endpoints, 3_000);
        assert_eq!(counts[2], 0, "{counts:?}");
        // k = n: every endpoint is compared.
        let counts = histogram(&LeastRequest::new(4), &endpoints, 3_000);
        assert_eq!(counts[2], 0, "{counts:?}");
    }

    #[test]
    fn with_k_equal_to_n_the_loaded_one_is_never_chosen() {
        for n in 2..=10 {
            let endpoints = ready(n);
            let _busy: Vec<_> = (0..10).map(|_| endpoints[n - 1].start_call()).collect();
            let counts = histogram(&LeastRequest::new(n), &endpoints, 1_000);
            assert_eq!(counts[n - 1], 0, "n = {n}: {counts:?}");
        }
    }

    #[test]
    fn equal_loads_spread_evenly() {
        let endpoints = ready(3);
        let counts = histogram(&LeastRequest::new(2), &endpoints, 30_000);
        let chi2 = chi_square_uniform(&counts);
        assert!(chi2 < 13.82, "{counts:?}: chi-square {chi2}");
    }

    #[test]
    fn explains_the_sample() {
        let endpoints = ready(2);
        let _b = endpoints[1].start_call();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut why = String::new();
        let mut ctx = PickContext::new(&mut rng).explain_into(&mut why);
        LeastRequest::new(2).pick(&endpoints, &mut ctx).unwrap();
        assert!(why.contains("10.0.0.1:80: 1 in flight"), "{why}");
        assert!(why.ends_with("-> 10.0.0.0:80"), "{why}");
    }
}
