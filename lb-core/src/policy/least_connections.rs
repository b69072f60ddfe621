//! `least_connections` (the article's 最少连接): the endpoint with the fewest calls in
//! flight.
//!
//! Scan every ready endpoint and keep the one with the smallest in-flight count. Ties
//! are broken uniformly at random by *reservoir sampling*: the `k`-th endpoint found
//! with the current minimum replaces the choice with probability `1/k`, so each of the
//! tied endpoints ends up chosen with probability `1/(number tied)`, in one pass.
//!
//! Worked example: in-flight `[a: 3, b: 1, c: 1]`. `a` is skipped (3 > 1); `b` is the
//! first with 1, `c` the second, so `c` replaces `b` with probability 1/2.
//!
//! Why it helps: a slow endpoint holds its calls longer, so its in-flight count stays
//! high and it gets fewer new calls, without anyone measuring latency. In-flight counts
//! here are counted until the response *body* ends (see
//! [`EndpointState::start_call`]).
//!
//! **Failures count as load**: what is compared is the calls in flight plus this one,
//! per recent success, `(in flight + 1) / success rate` (see
//! [`least_request`](super::least_request)): an endpoint that fails every call at once
//! never has calls in flight, and would otherwise get nearly all of them.
//!
//! Caveats: the full scan is O(n) per pick (fine for tens of endpoints; the power of two
//! choices, `least_request`, samples instead); and each client sees only its own calls,
//! not the server's total load.

use std::sync::Arc;
use rand::RngCore;
use serde::Deserialize;

use super::least_request::{describe_load, load_per_success_lazily};
use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "least_connections";

/// `least_connections` has no settings: `{"least_connections": {}}` in service-config JSON.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastConnectionsConfig {}

impl PolicyConfig for LeastConnectionsConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "the fewest calls in flight, of all endpoints (最少连接)";

    fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(LeastConnections)
    }
}

/// Picks the ready endpoint with the fewest calls in flight; random among ties.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl Picker for LeastConnections {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let now = ctx.lazy_now();
        let mut best: Option<(usize, f64)> = None; // (index, load per success)
        let mut tied = 0usize;
        for (i, endpoint) in endpoints.iter().enumerate() {
            if !endpoint.is_ready() {
                continue;
            }
            let load = load_per_success_lazily(endpoint, &now);
            match best {
                Some((_, min)) if load > min => {}
                Some((_, min)) if load == min => {
                    tied += 1;
                    if ctx.index(tied) == 0 {
                        best = Some((i, load));
                    }
                }
                _ => {
                    best = Some((i, load));
                    tied = 1;
                }
            }
        }
        let (i, load) = best.ok_or_else(|| PickError::none_ready(endpoints))?;
        if ctx.explaining() {
            let loads: Vec<String> = endpoints
                .iter()
                .filter(|e| e.is_ready())
                .map(|e| describe_load(e, &now))
                .collect();
            ctx.explain(|| {
                format!(
                    "{NAME}: {{{}}}, least (in flight + 1) per success {load:.2} (tie of {tied}) -> {}",
                    loads.join(", "),
                    label(&endpoints[i])
                )
            });
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use rand::SeedableRng;

    #[test]
    fn picks_the_fewest_in_flight() {
        let endpoints = ready(3);
        let _a = [endpoints[0].start_call(), endpoints[0].start_call()];
        let _c = endpoints[2].start_call();
        // a: 2, b: 0, c: 1  ->  always b (the picks themselves add no load here).
        assert_eq!(
            histogram(&LeastConnections, &endpoints, 100),
            vec![0, 100, 0]
        );
    }

    #[test]
    fn ties_are_broken_fairly() {
        let endpoints = ready(4);
        let _busy = endpoints[3].start_call();
        let counts = histogram(&LeastConnections, &endpoints, 30_000);
        assert_eq!(counts[3], 0);
        let chi2 = chi_square_uniform(&counts[..3]);
        assert!(chi2 < 13.82, "counts {counts:?}, chi-square {chi2}");
    }

    #[test]
    fn spreads_calls_that_stay_in_flight() {
        // Picks that hold their call open fill the endpoints level by level.
        let endpoints = ready(3);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut ctx = PickContext::new(&mut rng);
        let guards: Vec<_> = (0..9)
            .map(|_| endpoints[LeastConnections.pick(&endpoints, &mut ctx).unwrap()].start_call())
            .collect();
        let loads: Vec<usize> = endpoints.iter().map(EndpointState::in_flight).collect();
        assert_eq!(loads, vec![3, 3, 3]);
        drop(guards);
    }
}
