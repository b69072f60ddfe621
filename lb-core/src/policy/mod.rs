//! Picking policies: which endpoint gets the next call.
//!
//! A policy is a [`Picker`]: a pure, synchronous function from a snapshot of endpoint
//! state to the index of one endpoint. It does no I/O, takes no lock and never waits,
//! so the same code runs inside the [`Balancer`](crate::Balancer) and inside a unit
//! test with hand-made endpoint states. Randomness comes from the RNG in the
//! [`PickContext`], which the caller seeds: a seeded test sees the same picks every run.
//!
//! | name | picks | file |
//! |---|---|---|
//! | `pick_first` | the first ready endpoint (gRPC's default: no balancing) | [`pick_first`] |
//! | `round_robin` | the next endpoint in turn | [`round_robin`] |
//! | `random` | a uniformly random endpoint | [`random`] |
//! | `least_connections` | the endpoint with the fewest calls in flight | [`least_connections`] |
//!
//! The article's 轮询 is `round_robin`, 随机 is `random`, and 最少连接 is
//! `least_connections`.
//!
//! # Adding a policy
//! Copy one of the files (say `random.rs`), implement [`Picker::pick`], then add a
//! variant to [`Policy`] and one arm to each of its three `match`es: the name users
//! type, a one-line summary, and how to build the picker.
//!
//! ```
//! use lb_core::policy::{PickContext, Picker, Policy};
//! use lb_core::{Connectivity, EndpointState};
//! use rand::{SeedableRng, rngs::SmallRng};
//!
//! let endpoints: Vec<EndpointState> = ["10.0.0.1:80", "10.0.0.2:80"]
//!     .iter()
//!     .map(|a| EndpointState::new(a.parse().unwrap()))
//!     .collect();
//! for e in &endpoints {
//!     e.set_connectivity(Connectivity::Ready);
//! }
//! let mut rng = SmallRng::seed_from_u64(7);
//! let picker = "round_robin".parse::<Policy>().unwrap().build(&mut rng);
//! let mut ctx = PickContext::new(&mut rng);
//! let first = picker.pick(&endpoints, &mut ctx).unwrap();
//! let second = picker.pick(&endpoints, &mut ctx).unwrap();
//! assert_ne!(first, second); // in turn
//! ```

pub mod least_connections;
pub mod pick_first;
pub mod random;
pub mod round_robin;

use std::{fmt, str::FromStr};

use rand::RngCore;

use crate::{EndpointState, Error};

pub use least_connections::LeastConnections;
pub use pick_first::PickFirst;
pub use random::Random;
pub use round_robin::RoundRobin;

/// Chooses an endpoint for each call.
///
/// Implementations must be cheap (they run on every call), must return the index of an
/// endpoint that [`is_ready`](EndpointState::is_ready) at the time of the pick, and must
/// return [`PickError`] rather than panic when there is none. Interior state, such as
/// round robin's counter, uses atomics, because one picker serves every clone of a
/// balancer at once.
pub trait Picker: Send + Sync + 'static {
    /// The policy's name, as users type it (`round_robin`).
    fn name(&self) -> &'static str;

    /// Picks one of `endpoints` and returns its index.
    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError>;
}

/// What a pick may use besides endpoint state.
pub struct PickContext<'a> {
    /// The source of randomness. Seed it to make picks reproducible.
    pub rng: &'a mut dyn RngCore,
}

impl<'a> PickContext<'a> {
    /// A context drawing randomness from `rng`.
    pub fn new(rng: &'a mut dyn RngCore) -> Self {
        Self { rng }
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The endpoint list is empty.
    #[error("no endpoints to pick from")]
    NoEndpoints,
    /// There are endpoints, but none is ready.
    #[error("none of the {total} endpoints is ready")]
    NoneReady {
        /// How many endpoints there are.
        total: usize,
    },
}

impl PickError {
    /// The error for a non-empty list in which nothing is ready, or an empty one.
    pub fn none_ready(endpoints: &[EndpointState]) -> Self {
        if endpoints.is_empty() {
            Self::NoEndpoints
        } else {
            Self::NoneReady {
                total: endpoints.len(),
            }
        }
    }
}

/// The policies this crate ships, by the names users type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// [`PickFirst`]: every call to the first ready endpoint.
    PickFirst,
    /// [`RoundRobin`]: endpoints in turn.
    RoundRobin,
    /// [`Random`]: uniformly at random.
    Random,
    /// [`LeastConnections`]: fewest calls in flight.
    LeastConnections,
}

impl Policy {
    /// Every policy, in the order help texts list them.
    pub const ALL: &'static [Policy] = &[
        Policy::PickFirst,
        Policy::RoundRobin,
        Policy::Random,
        Policy::LeastConnections,
    ];

    /// The name users type, in gRPC's snake_case spelling.
    pub fn name(self) -> &'static str {
        match self {
            Policy::PickFirst => pick_first::NAME,
            Policy::RoundRobin => round_robin::NAME,
            Policy::Random => random::NAME,
            Policy::LeastConnections => least_connections::NAME,
        }
    }

    /// One line on what the policy does.
    pub fn summary(self) -> &'static str {
        match self {
            Policy::PickFirst => "every call to the first reachable endpoint (no balancing)",
            Policy::RoundRobin => "endpoints in turn (the article's 轮询)",
            Policy::Random => "a uniformly random endpoint (随机)",
            Policy::LeastConnections => "the endpoint with the fewest calls in flight (最少连接)",
        }
    }

    /// Builds a picker. Policies that need randomness at start (round robin's random
    /// starting point) draw it from `rng`.
    pub fn build(self, rng: &mut dyn RngCore) -> Box<dyn Picker> {
        match self {
            Policy::PickFirst => Box::new(PickFirst),
            Policy::RoundRobin => Box::new(RoundRobin::new(rng)),
            Policy::Random => Box::new(Random),
            Policy::LeastConnections => Box::new(LeastConnections),
        }
    }

    /// All names, for help texts and error messages.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.name()).collect()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.name() == name.trim())
            .ok_or_else(|| Error::UnknownPolicy {
                name: name.to_string(),
            })
    }
}

/// Helpers shared by the policies' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::Connectivity;
    use rand::{SeedableRng, rngs::SmallRng};

    /// `n` endpoints `10.0.0.i:80`, all READY.
    pub fn ready(n: usize) -> Vec<EndpointState> {
        (0..n)
            .map(|i| {
                let state = EndpointState::new(format!("10.0.0.{i}:80").parse().unwrap());
                state.set_connectivity(Connectivity::Ready);
                state
            })
            .collect()
    }

    /// How often each endpoint is picked in `picks` picks.
    pub fn histogram(picker: &dyn Picker, endpoints: &[EndpointState], picks: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(42);
        let mut ctx = PickContext::new(&mut rng);
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            counts[picker.pick(endpoints, &mut ctx).unwrap()] += 1;
        }
        counts
    }

    /// Pearson's chi-square statistic of `counts` against a uniform distribution.
    pub fn chi_square_uniform(counts: &[usize]) -> f64 {
        let total: usize = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::Connectivity;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    #[test]
    fn names_round_trip_and_unknown_lists_the_valid_ones() {
        for &policy in Policy::ALL {
            assert_eq!(policy.name().parse::<Policy>().unwrap(), policy);
        }
        let err = "nope".parse::<Policy>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown policy `nope`; valid policies: pick_first, round_robin, random, least_connections"
        );
    }

    /// Every policy, on 2,000 random mixtures of states and loads, returns an index in
    /// range that points at a READY endpoint, or an error when none is ready.
    #[test]
    fn no_policy_picks_out_of_range_or_not_ready() {
        let mut rng = SmallRng::seed_from_u64(2024);
        let states = [
            Connectivity::Idle,
            Connectivity::Connecting,
            Connectivity::Ready,
            Connectivity::TransientFailure,
        ];
        for &policy in Policy::ALL {
            let picker = policy.build(&mut rng);
            for _ in 0..2_000 {
                let n = rng.random_range(0..8);
                let endpoints = ready(n);
                let mut guards = Vec::new();
                for e in &endpoints {
                    e.set_connectivity(states[rng.random_range(0..states.len())]);
                    for _ in 0..rng.random_range(0..4) {
                        guards.push(e.start_call());
                    }
                }
                let any_ready = endpoints.iter().any(EndpointState::is_ready);
                let mut ctx = PickContext::new(&mut rng);
                match picker.pick(&endpoints, &mut ctx) {
                    Ok(i) => {
                        assert!(i < n, "{policy} picked {i} of {n}");
                        assert!(
                            endpoints[i].is_ready(),
                            "{policy} picked a non-ready endpoint"
                        );
                    }
                    Err(err) => {
                        assert!(!any_ready, "{policy} failed with a ready endpoint: {err}");
                        assert_eq!(err, PickError::none_ready(&endpoints));
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_set_is_an_error_not_a_panic() {
        let mut rng = SmallRng::seed_from_u64(1);
        for &policy in Policy::ALL {
            let picker = policy.build(&mut rng);
            let mut ctx = PickContext::new(&mut rng);
            assert_eq!(picker.pick(&[], &mut ctx), Err(PickError::NoEndpoints));
        }
    }
}
