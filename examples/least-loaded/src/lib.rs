//! `least_loaded`: a load-balancing policy written *outside* lb-core, in one file.
//!
//! It sends each call to the ready endpoint with the fewest calls in flight *per unit
//! of weight*: an endpoint of weight 3 carrying 3 calls counts as loaded as one of
//! weight 1 carrying 1. (`least_connections` ignores weights; this is what it becomes
//! when some servers are bigger than others.) Ties go to the first tied endpoint after
//! a random starting point, so that idle endpoints share the first calls.
//!
//! Worked example: endpoints `a=1` (weight 1, 1 call in flight), `b=3` (2 calls) and
//! `c=1` (1 call). Loads: a 1/1 = 1.0, b 2/3 ≈ 0.67, c 1.0: the call goes to `b`,
//! although `b` has the most calls in flight.
//!
//! Everything about the policy is here: its settings ([`LeastLoadedConfig`], read from
//! gRPC service-config JSON as `{"least_loaded": {"weighted": true}}`), its name and
//! summary, how it builds its picker, and the picker itself. [`register`] makes the
//! name known to lb-core; from then on it works wherever a built-in policy does:
//!
//! ```
//! use lb_core::Policy;
//!
//! least_loaded::register().unwrap();
//! let by_name: Policy = "least_loaded".parse().unwrap();
//! let by_json: Policy = r#"{"loadBalancingConfig":[{"least_loaded":{"weighted":false}}]}"#
//!     .parse()
//!     .unwrap();
//! assert_eq!(by_name.name(), "least_loaded");
//! assert_eq!(by_json.settings::<least_loaded::LeastLoadedConfig>().unwrap().weighted, false);
//! assert!(Policy::names().contains(&"least_loaded"));
//! ```

use std::sync::Arc;

use lb_core::{
    EndpointState, PickContext, PickError, Picker,
    policy::{PolicyConfig, register as register_policy},
};
use rand::RngCore;
use serde::Deserialize;

/// The name users type.
pub const NAME: &str = "least_loaded";

/// Settings of `least_loaded`: `{"least_loaded": {"weighted": true}}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LeastLoadedConfig {
    /// Divide each endpoint's calls in flight by its weight (default `true`); `false`
    /// compares the calls alone, as `least_connections` does.
    pub weighted: bool,
}

impl Default for LeastLoadedConfig {
    fn default() -> Self {
        Self { weighted: true }
    }
}

impl PolicyConfig for LeastLoadedConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "the fewest calls in flight per unit of weight, of all";

    fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(LeastLoaded {
            weighted: self.weighted,
        })
    }
}

/// Makes `least_loaded` known by its name. Call it once at start-up (calling it again
/// does no harm).
pub fn register() -> Result<(), lb_core::Error> {
    register_policy::<LeastLoadedConfig>()
}

/// The picker: a scan of every endpoint, as `least_connections` does.
#[derive(Debug)]
pub struct LeastLoaded {
    weighted: bool,
}

impl LeastLoaded {
    /// The load of one endpoint: calls in flight, per unit of weight if weighted.
    fn load(&self, endpoint: &EndpointState) -> f64 {
        let calls = endpoint.in_flight() as f64;
        if self.weighted {
            calls / f64::from(endpoint.weight().max(1))
        } else {
            calls
        }
    }
}

impl Picker for LeastLoaded {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        if endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        let start = ctx.index(endpoints.len());
        let mut best: Option<(usize, f64)> = None;
        for offset in 0..endpoints.len() {
            let i = (start + offset) % endpoints.len();
            if !endpoints[i].is_ready() {
                continue;
            }
            let load = self.load(&endpoints[i]);
            if best.is_none_or(|(_, lowest)| load < lowest) {
                best = Some((i, load));
            }
        }
        let (i, load) = best.ok_or_else(|| PickError::none_ready(endpoints))?;
        ctx.explain(|| {
            format!(
                "{NAME}: lowest load {load:.2} -> {}",
                endpoints[i].endpoint()
            )
        });
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{Connectivity, Endpoint};
    use rand::{SeedableRng, rngs::SmallRng};

    fn endpoint(address: &str, weight: u32, in_flight: usize) -> EndpointState {
        let endpoint: Endpoint = address.parse().expect("valid");
        let state = EndpointState::new(endpoint.with_weight(weight));
        state.set_connectivity(Connectivity::Ready);
        for _ in 0..in_flight {
            std::mem::forget(state.start_call()); // Held for the test's whole life.
        }
        state
    }

    #[test]
    fn the_worked_example_picks_the_big_endpoint() {
        let endpoints = [
            endpoint("10.0.0.1:80", 1, 1),
            endpoint("10.0.0.2:80", 3, 2),
            endpoint("10.0.0.3:80", 1, 1),
        ];
        let picker = LeastLoaded { weighted: true };
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..20 {
            let mut ctx = PickContext::new(&mut rng);
            assert_eq!(picker.pick(&endpoints, &mut ctx), Ok(1));
        }
        let unweighted = LeastLoaded { weighted: false };
        let mut ctx = PickContext::new(&mut rng);
        assert_ne!(unweighted.pick(&endpoints, &mut ctx), Ok(1));
    }

    #[test]
    fn nothing_ready_is_an_error() {
        let endpoints = [endpoint("10.0.0.1:80", 1, 0)];
        endpoints[0].set_connectivity(Connectivity::TransientFailure);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut ctx = PickContext::new(&mut rng);
        let picker = LeastLoaded { weighted: true };
        assert_eq!(
            picker.pick(&endpoints, &mut ctx),
            Err(PickError::NoneReady { total: 1 })
        );
        assert_eq!(picker.pick(&[], &mut ctx), Err(PickError::NoEndpoints));
    }
}
