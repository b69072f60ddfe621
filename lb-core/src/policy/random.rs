//! `random` (the article's 随机): a uniformly random ready endpoint.
//!
//! Draw `i` uniformly from `0..n`; if that endpoint is ready, it is the pick. When some
//! endpoints are not ready, draw instead among the ready ones only (counting them, then
//! drawing the `k`-th), so every ready endpoint keeps an equal chance.
//!
//! Random needs no shared state at all, which makes it the simplest policy to run on
//! many clients. Over many calls the shares even out (by the law of large numbers), but
//! over a few they do not: 30 calls to 3 endpoints can easily land 14/9/7.

use std::sync::Arc;
use rand::RngCore;
use serde::Deserialize;

use super::helpers::random_ready;
use super::{PickContext, PickError, Picker, PolicyConfig, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "random";

/// `random` has no settings: `{"random": {}}` in service-config JSON.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomConfig {}

impl PolicyConfig for RandomConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "a uniformly random endpoint (随机)";

    fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(Random)
    }
}

/// Picks a ready endpoint uniformly at random.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Picker for Random {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        let i = random_ready(endpoints, ctx)?;
        ctx.explain(|| {
            let n = endpoints.len();
            format!("{NAME}: drew 1 of {n} -> {}", label(&endpoints[i]))
        });
        Ok(i)
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::Connectivity;
    use crate::policy::testing::*;

    /// With 2 degrees of freedom, chi-square exceeds 13.82 with probability 0.001.
    const CHI_SQUARE_2DF_P001: f64 = 13.82;

    #[test]
    fn reproducible_with_a_seed() {
        let endpoints = ready(3);
        let a = histogram(&Random, &endpoints, 1000);
        let b = histogram(&Random, &endpoints, 1000);
        assert_eq!(a, b);
    }

    #[test]
    fn roughly_uniform_over_30000_picks() {
        let endpoints = ready(3);
        let counts = histogram(&Random, &endpoints, 30_000);
        let chi2 = chi_square_uniform(&counts);
        assert!(
            chi2 < CHI_SQUARE_2DF_P001,
            "counts {counts:?}, chi-square {chi2}"
        );
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{c} is far from 10,000");
        }
    }

    #[test]
    fn uniform_among_the_ready_ones_only() {
        let endpoints = ready(4);
        endpoints[1].set_connectivity(Connectivity::TransientFailure);
        let counts = histogram(&Random, &endpoints, 30_000);
        assert_eq!(counts[1], 0);
        let ready: Vec<usize> = [0, 2, 3].iter().map(|&i| counts[i]).collect();
        let chi2 = chi_square_uniform(&ready);
        assert!(
            chi2 < CHI_SQUARE_2DF_P001,
            "counts {counts:?}, chi-square {chi2}"
        );
    }
}
