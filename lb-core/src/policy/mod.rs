//! Picking policies: which endpoint gets the next call.
//!
//! A policy works in two steps, as in gRPC:
//!
//! 1. When the set of READY endpoints changes, the balancer asks the policy
//!    ([`BuildPicker::build`]) for a new [`Picker`] for that set. This is where the
//!    expensive work goes: a hash ring, a Maglev table, an alias table.
//! 2. For every call, the balancer asks the current picker ([`Picker::pick`]) for the
//!    index of one endpoint. A pick is a pure, synchronous function of the endpoints'
//!    live state (connectivity, calls in flight, latency), the call's headers and a
//!    seeded RNG: no I/O, no lock, no waiting.
//!
//! Because picking is pure, the same code runs in the [`Balancer`](crate::Balancer), in
//! unit tests with hand-made endpoint states, and in the simulator with virtual time.
//!
//! The built-in policies are the modules below, one file each, and are listed once,
//! in [`BUILT_IN`] (a line each); [`Policy::all`] lists them with any registered
//! since, and greeter-client's `--help` prints that list with each summary.
//!
//! # Choosing a policy
//! By name (`"least_request".parse::<Policy>()`) with default settings, or by gRPC
//! service-config JSON, as grpc-go and grpc-java accept it:
//!
//! ```
//! use lb_core::Policy;
//!
//! let policy: Policy = r#"{"loadBalancingConfig":[{"least_request":{"choiceCount":3}}]}"#
//!     .parse()
//!     .unwrap();
//! assert_eq!(policy.to_string(), "least_request");
//! let err = r#"{"least_request":{"choices":3}}"#.parse::<Policy>().unwrap_err();
//! assert!(err.to_string().contains("unknown field `choices`"));
//! ```
//!
//! # Adding a policy
//! Everything about a policy lives in its own file: its picker (a [`Picker`], pure and
//! synchronous) and its settings type, which implements [`PolicyConfig`] (its name,
//! its summary, its service-config fields and checks, how it builds the picker).
//!
//! - **A built-in**: a new file here, and one line in the `built_in_policies!` list
//!   below. The tutorial's chapter 6 (docs/06-your-own-policy.md) walks through it.
//! - **In your own crate**: the same file there, and [`register`] at start-up; the name
//!   then works everywhere a built-in's does. See the [`registry`] docs, and
//!   `examples/least-loaded` in this repository.
//!
//! A policy that needs no per-set tables and no settings can also skip all of that:
//! hand a [`Picker`] to [`BalancerBuilder::picker`](crate::BalancerBuilder::picker).
//!
//! Layer 1, the policies: pure, synchronous pickers, leaf and parent, with no I/O. May
//! import: `state`, `endpoint`, `clock`, `latency`, `error`, `json`.

pub mod children;
pub mod config;
mod helpers;
pub mod picker;
pub mod registry;
pub mod slow_start;
#[cfg(test)]
mod testing;

pub use config::{Policy, PolicyConfig, Registration};
pub(crate) use helpers::{Keyed, best_of_sample, first_ready, key_or_random, label};
pub(crate) use picker::LazyNow;
pub use picker::{BuildPicker, EndpointSet, PickContext, PickCounters, PickError, Picker};
pub use registry::register;
pub use slow_start::{SlowStart, SlowStartConfig};

/// Declares the built-in policies: a module per policy, its settings type re-exported,
/// and its entry in [`BUILT_IN`].
macro_rules! built_in_policies {
    ($($module:ident :: $config:ident),* $(,)?) => {
        $(pub mod $module;)*
        $(pub use $module::$config;)*

        /// The built-in policies, in the order help texts list them.
        pub const BUILT_IN: &[Registration] = &[$(Registration::of::<$module::$config>()),*];
    };
}

// The built-in policies, one line each: `file :: settings type`.
built_in_policies! {
    pick_first::PickFirstConfig,
    round_robin::RoundRobinConfig,
    random::RandomConfig,
    least_connections::LeastConnectionsConfig,
    least_request::LeastRequestConfig,
    peak_ewma::PeakEwmaConfig,
    weighted_random::WeightedRandomConfig,
    weighted_round_robin::WeightedRoundRobinConfig,
    ring_hash::RingHashConfig,
    maglev::MaglevConfig,
    priority::PriorityConfig,
    weighted_target::WeightedTargetConfig,
}

#[cfg(test)]
mod tests {
    use super::helpers::sample_distinct;
    use super::testing::*;
    use super::*;
    use crate::Connectivity;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn names_round_trip_and_unknown_lists_the_valid_ones() {
        for policy in Policy::all() {
            assert_eq!(policy.name().parse::<Policy>().unwrap(), policy);
        }
        let err = "nope".parse::<Policy>().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "unknown policy `nope`; valid policies: pick_first, round_robin, random, \
                 least_connections, least_request, peak_ewma, weighted_random, \
                 weighted_round_robin, ring_hash, maglev"
            ),
            "{err}"
        );
    }

    #[test]
    fn sampling_is_distinct() {
        let mut rng = SmallRng::seed_from_u64(8);
        let mut ctx = PickContext::new(&mut rng);
        let mut out = [0; least_request::MAX_CHOICES];
        for n in 1..30 {
            for k in 1..=10 {
                let sample = sample_distinct(n, k, &mut ctx, &mut out).to_vec();
                assert_eq!(sample.len(), k.min(n));
                let mut sorted = sample.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), sample.len(), "{sample:?}");
                assert!(sample.iter().all(|&i| i < n));
            }
        }
    }

    #[test]
    fn an_empty_set_is_an_error_not_a_panic() {
        let mut rng = SmallRng::seed_from_u64(1);
        for policy in Policy::all() {
            let picker = policy.build(&[], &mut rng);
            let mut ctx = PickContext::new(&mut rng);
            assert_eq!(
                picker.pick(&[], &mut ctx),
                Err(PickError::NoEndpoints),
                "{policy}"
            );
            let headers = keyed("k");
            let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
            assert_eq!(
                picker.pick(&[], &mut ctx),
                Err(PickError::NoEndpoints),
                "{policy}"
            );
        }
    }

    #[test]
    fn a_set_with_nothing_ready_is_an_error() {
        let mut rng = SmallRng::seed_from_u64(1);
        let endpoints = ready(4);
        for policy in Policy::all() {
            let picker = policy.build(&endpoints, &mut rng);
            for e in &endpoints {
                e.set_connectivity(Connectivity::TransientFailure);
            }
            let headers = keyed("k");
            let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
            assert_eq!(
                picker.pick(&endpoints, &mut ctx),
                Err(PickError::NoneReady { total: 4 }),
                "{policy}"
            );
            for e in &endpoints {
                e.set_connectivity(Connectivity::Ready);
            }
        }
    }

    #[test]
    fn explanations_name_the_pick() {
        let mut rng = SmallRng::seed_from_u64(3);
        let endpoints = ready(3);
        for policy in Policy::all() {
            let picker = policy.build(&endpoints, &mut rng);
            let headers = keyed("user-1");
            let mut why = String::new();
            let mut ctx = PickContext::new(&mut rng)
                .with_headers(&headers)
                .explain_into(&mut why);
            let i = picker.pick(&endpoints, &mut ctx).unwrap();
            assert!(why.starts_with(policy.name()), "{policy}: {why}");
            assert!(
                why.ends_with(&format!("-> {}", label(&endpoints[i]))),
                "{policy}: {why}"
            );
        }
    }
}
