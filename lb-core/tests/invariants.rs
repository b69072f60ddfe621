//! Properties every policy keeps, whatever the endpoints look like (proptest).
//!
//! - A pick is an index in range that points at a READY endpoint, or an error exactly
//!   when no endpoint is ready.
//! - After an endpoint is removed, no pick returns it: neither from a picker rebuilt
//!   for the smaller set (what the balancer does), nor from the old picker while the
//!   removed endpoint drains (no longer READY).

use lb_core::{BuildPicker, Connectivity, Endpoint, EndpointState, PickContext, PickError, Policy};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::SmallRng};

const STATES: [Connectivity; 4] = [
    Connectivity::Idle,
    Connectivity::Connecting,
    Connectivity::Ready,
    Connectivity::TransientFailure,
];

/// (connectivity, calls in flight, weight) per endpoint.
fn fleet() -> impl Strategy<Value = Vec<(usize, usize, u32)>> {
    prop::collection::vec((0..4usize, 0..6usize, 1..5u32), 0..12)
}

fn build(spec: &[(usize, usize, u32)]) -> (Vec<EndpointState>, Vec<lb_core::InFlightGuard>) {
    let mut guards = Vec::new();
    let endpoints = spec
        .iter()
        .enumerate()
        .map(|(i, &(state, in_flight, weight))| {
            let endpoint: Endpoint = format!("10.1.0.{i}:80").parse().expect("valid");
            let e = EndpointState::new(endpoint.with_weight(weight));
            e.set_connectivity(STATES[state]);
            guards.extend((0..in_flight).map(|_| e.start_call()));
            e
        })
        .collect();
    (endpoints, guards)
}

fn headers(key: Option<u16>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Some(key) = key {
        headers.insert("x-lb-key", key.to_string().parse().expect("digits"));
    }
    headers
}

proptest! {
    // A fixed seed: the same 200 cases every run, as every test here is deterministic.
    #![proptest_config(ProptestConfig {
        cases: 200,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1b_c0de),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn picks_are_in_range_and_ready(spec in fleet(), seed: u64, key: Option<u16>) {
        let (endpoints, _guards) = build(&spec);
        let any_ready = endpoints.iter().any(EndpointState::is_ready);
        let headers = headers(key);
        for policy in Policy::all() {
            let mut rng = SmallRng::seed_from_u64(seed);
            let picker = policy.build(&endpoints, &mut rng);
            for _ in 0..20 {
                let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
                match picker.pick(&endpoints, &mut ctx) {
                    Ok(i) => {
                        prop_assert!(i < endpoints.len(), "{policy}: {i} of {}", endpoints.len());
                        prop_assert!(endpoints[i].is_ready(), "{policy} picked a non-ready endpoint");
                    }
                    Err(err) => {
                        prop_assert!(!any_ready, "{policy} failed with a ready endpoint: {err}");
                        prop_assert_eq!(err, PickError::none_ready(&endpoints));
                    }
                }
            }
        }
    }

    #[test]
    fn a_removed_endpoint_is_never_picked(
        spec in fleet().prop_filter("something to remove", |s| !s.is_empty()),
        removed in any::<prop::sample::Index>(),
        seed: u64,
        key: Option<u16>,
    ) {
        let (endpoints, _guards) = build(&spec);
        let r = removed.index(endpoints.len());
        let gone = endpoints[r].clone();
        let rest: Vec<EndpointState> = endpoints
            .iter()
            .filter(|e| !e.same_as(&gone))
            .cloned()
            .collect();
        let headers = headers(key);
        for policy in Policy::all() {
            let mut rng = SmallRng::seed_from_u64(seed);
            let old = policy.build(&endpoints, &mut rng);
            let new = policy.build(&rest, &mut rng);
            // While it drains, the removed endpoint is no longer READY.
            let before = gone.set_connectivity(Connectivity::Idle);
            for _ in 0..20 {
                let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
                if let Ok(i) = new.pick(&rest, &mut ctx) {
                    prop_assert!(!rest[i].same_as(&gone), "{policy}: rebuilt picker chose it");
                }
                let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
                if let Ok(i) = old.pick(&endpoints, &mut ctx) {
                    prop_assert!(!endpoints[i].same_as(&gone), "{policy}: old picker chose it");
                }
            }
            gone.set_connectivity(before);
        }
    }
}
