//! `weighted_random`: a random endpoint, each chosen in proportion to its weight, in
//! O(1) per pick with Vose's *alias method*.
//!
//! The table is built once per endpoint set. Scale the weights so that they average 1:
//! weights `[a: 3, b: 1]` become `[1.5, 0.5]`. Give each endpoint a column of height 1;
//! fill `b`'s column to 0.5 with `b` and top it up with 0.5 of `a` (its *alias*); `a`
//! has exactly 1 left, a full column of its own. A pick draws a column uniformly and
//! then a coin: `b`'s column gives `b` with probability 0.5, else `a`. Overall
//! P(a) = ½·1 + ½·½ = ¾, P(b) = ¼: the weights, with one random index and one coin
//! whatever the number of endpoints.
//!
//! References: A. J. Walker (1977); M. D. Vose, "A linear algorithm for generating
//! random numbers with a given distribution", IEEE TSE 1991.

use rand::Rng;

use std::sync::Arc;
use rand::RngCore;
use serde::Deserialize;

use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "weighted_random";

/// `weighted_random` has no settings: `{"weighted_random": {}}` in service-config JSON.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedRandomConfig {}

impl PolicyConfig for WeightedRandomConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "random, in proportion to the endpoints' weights";

    fn build(&self, endpoints: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(WeightedRandom::new(endpoints))
    }
}

/// Picks a random endpoint with probability proportional to its weight.
#[derive(Debug, Clone)]
pub struct WeightedRandom {
    /// Per column: the probability of keeping the column's own endpoint.
    keep: Vec<f64>,
    /// Per column: the endpoint chosen otherwise.
    alias: Vec<usize>,
}

impl WeightedRandom {
    /// Builds the alias table for `endpoints`' weights (endpoints not ready now get
    /// weight 0).
    pub fn new(endpoints: &[EndpointState]) -> Self {
        let weights: Vec<f64> = endpoints
            .iter()
            .map(|e| {
                if e.is_ready() {
                    f64::from(e.weight())
                } else {
                    0.0
                }
            })
            .collect();
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut keep = vec![1.0; n];
        let mut alias: Vec<usize> = (0..n).collect();
        if total <= 0.0 {
            return Self { keep, alias };
        }
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is full up to rounding error.
        for i in small.into_iter().chain(large) {
            keep[i] = 1.0;
        }
        Self { keep, alias }
    }
}

impl Picker for WeightedRandom {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let n = endpoints.len().min(self.keep.len());
        if n == 0 {
            return Err(PickError::none_ready(endpoints));
        }
        let column = ctx.index(n);
        let coin: f64 = ctx.rng.random();
        let mut i = if coin < self.keep[column] {
            column
        } else {
            self.alias[column]
        };
        if i >= endpoints.len() || !endpoints[i].is_ready() {
            // Went down since the table was built: any ready one, by weight.
            i = weighted_scan(endpoints, ctx)?;
        }
        ctx.explain(|| {
            format!(
                "{NAME}: column {column}, coin {coin:.3} -> {}",
                label(&endpoints[i])
            )
        });
        Ok(i)
    }
}

/// A ready endpoint drawn by weight in one O(n) pass (the slow, rare path).
fn weighted_scan(
    endpoints: &[EndpointState],
    ctx: &mut PickContext<'_>,
) -> Result<usize, PickError> {
    let total: u64 = endpoints
        .iter()
        .filter(|e| e.is_ready())
        .map(|e| u64::from(e.weight()))
        .sum();
    if total == 0 {
        return Err(PickError::none_ready(endpoints));
    }
    let mut ticket = ctx.rng.random_range(0..total);
    for (i, e) in endpoints.iter().enumerate().filter(|(_, e)| e.is_ready()) {
        let w = u64::from(e.weight());
        if ticket < w {
            return Ok(i);
        }
        ticket -= w;
    }
    Err(PickError::none_ready(endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Connectivity;
    use crate::policy::testing::*;

    #[test]
    fn shares_follow_the_weights_within_a_point() {
        for weights in [
            vec![5, 1, 1],
            vec![3, 1],
            vec![1, 2, 3, 4],
            vec![10, 1, 1, 1, 1, 1],
        ] {
            let endpoints = weighted(&weights);
            let counts = histogram(&WeightedRandom::new(&endpoints), &endpoints, 70_000);
            assert_shares_match_weights(&counts, &weights, 1.0);
        }
    }

    #[test]
    fn an_endpoint_that_went_down_is_skipped() {
        let endpoints = weighted(&[5, 1, 1]);
        let picker = WeightedRandom::new(&endpoints);
        endpoints[0].set_connectivity(Connectivity::TransientFailure);
        let counts = histogram(&picker, &endpoints, 7_000);
        assert_eq!(counts[0], 0);
        assert_shares_match_weights(&counts[1..], &[1, 1], 2.0);
    }
}
