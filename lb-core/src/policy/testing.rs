//! Helpers shared by the policies' unit tests.

use super::{PickContext, Picker};
use crate::{Connectivity, EndpointState};
use rand::{SeedableRng, rngs::SmallRng};

/// `n` endpoints `10.0.0.i:80`, all READY.
pub fn ready(n: usize) -> Vec<EndpointState> {
    weighted(&vec![1; n])
}

/// Endpoints `10.0.0.i:80` with these weights, all READY.
pub fn weighted(weights: &[u32]) -> Vec<EndpointState> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let endpoint: crate::Endpoint = format!("10.0.0.{i}:80").parse().unwrap();
            let state = EndpointState::new(endpoint.with_weight(w));
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

/// Asserts that each share of `counts` is within `points` percentage points of the
/// weights' share.
pub fn assert_shares_match_weights(counts: &[usize], weights: &[u32], points: f64) {
    let total: usize = counts.iter().sum();
    let weight_total: u32 = weights.iter().sum();
    for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        let share = 100.0 * c as f64 / total as f64;
        let expected = 100.0 * f64::from(w) / f64::from(weight_total);
        assert!(
            (share - expected).abs() <= points,
            "endpoint {i}: {share:.2}% of picks, weight says {expected:.2}% ({counts:?})"
        );
    }
}

/// The request headers of a call keyed `key` under `x-lb-key`.
pub fn keyed(key: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-lb-key", key.parse().unwrap());
    headers
}

/// The endpoint a call keyed `key` goes to.
pub fn owner(picker: &dyn Picker, endpoints: &[EndpointState], key: &str) -> usize {
    let headers = keyed(key);
    let mut rng = SmallRng::seed_from_u64(0);
    let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
    picker.pick(endpoints, &mut ctx).unwrap()
}

/// Asserts that 200 keys each reach the same endpoint every time.
pub fn assert_keys_stick(picker: &dyn Picker, endpoints: &[EndpointState]) {
    for key in 0..200 {
        let key = format!("user-{key}");
        let first = owner(picker, endpoints, &key);
        assert!(
            (0..5).all(|_| owner(picker, endpoints, &key) == first),
            "{key}"
        );
    }
}

/// Endpoints from specs such as `10.0.0.1:80@zone-a#1`, in the given states.
pub fn endpoints(specs: &[(&str, Connectivity)]) -> Vec<EndpointState> {
    specs
        .iter()
        .map(|(spec, connectivity)| {
            let state = EndpointState::new(spec.parse().unwrap());
            state.set_created_at(1);
            state.set_connectivity(*connectivity);
            state
        })
        .collect()
}

/// A picker of `policy` for `all`, built as the balancer builds it: over the READY ones,
/// seeing all; and those READY ones, which its picks index.
pub fn build_over(
    policy: &super::Policy,
    all: &[EndpointState],
) -> (std::sync::Arc<dyn Picker>, Vec<EndpointState>) {
    use super::BuildPicker;
    let usable: Vec<EndpointState> = all.iter().filter(|e| e.is_ready()).cloned().collect();
    let mut rng = SmallRng::seed_from_u64(7);
    let picker = policy.build_set(
        super::EndpointSet {
            usable: &usable,
            all,
        },
        &mut rng,
    );
    (picker, usable)
}

/// The addresses `picks` picks at clock time `now` went to, counted by address.
pub fn picks_at(
    picker: &dyn Picker,
    usable: &[EndpointState],
    now: u64,
    picks: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..picks {
        let mut ctx = PickContext::new(&mut rng).at(now);
        if let Ok(i) = picker.pick(usable, &mut ctx) {
            *counts.entry(usable[i].endpoint().to_string()).or_insert(0) += 1;
        }
    }
    counts
}
