//! Slow start and failures counted as load, on virtual time (`PickContext::at`) and a
//! seeded RNG: pure picks over hand-made endpoint states, so every count is exact and
//! repeatable.
//!
//! - A restarted endpoint under slow start gets at most its configured share during
//!   the window, second by second, and its full share after it, under `round_robin`,
//!   `weighted_round_robin`, `least_request` and `peak_ewma`.
//! - An endpoint that fails every call within a millisecond is not preferred by
//!   `least_request`, `least_connections` or `peak_ewma`, where it would have been.

use lb_core::{BuildPicker, Connectivity, EndpointState, PickContext, Policy};
use rand::{SeedableRng, rngs::SmallRng};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// Three READY endpoints, READY since 1 s.
fn fleet() -> Vec<EndpointState> {
    (0..3)
        .map(|i| {
            let state = EndpointState::new(format!("10.0.0.{i}:80").parse().expect("valid"));
            state.set_connectivity(Connectivity::Ready);
            state.set_ready_since(S);
            state
        })
        .collect()
}

/// How often endpoint 2 is picked in `picks` picks spread over `[from, from + 1 s)`.
fn share_of_last(
    picker: &dyn lb_core::Picker,
    endpoints: &[EndpointState],
    from: u64,
    picks: u64,
    rng: &mut SmallRng,
) -> f64 {
    let mut hits = 0;
    for k in 0..picks {
        let mut ctx = PickContext::new(rng).at(from + k * S / picks);
        if picker.pick(endpoints, &mut ctx).expect("a pick") == 2 {
            hits += 1;
        }
    }
    hits as f64 / picks as f64
}

/// Linear over 10 s from 10 %: the factor at the end of second `k` of the window.
fn factor_by_end_of(k: u64) -> f64 {
    ((k + 1) as f64 / 10.0).clamp(0.1, 1.0)
}

const SLOW_START: &str =
    r#""slowStartConfig": {"slowStartWindow": "10s", "aggression": 1.0, "minWeightPercent": 10}"#;

#[test]
fn a_restarted_endpoint_ramps_up_over_the_window_in_turn_based_policies() {
    for name in ["round_robin", "weighted_round_robin"] {
        let policy: Policy = format!(r#"{{"{name}": {{{SLOW_START}}}}}"#)
            .parse()
            .expect("valid");
        let endpoints = fleet();
        // Endpoint 2 restarts at 100 s: the others have been READY for 99 s.
        let restart = 100 * S;
        endpoints[2].set_connectivity(Connectivity::Idle);
        endpoints[2].set_connectivity(Connectivity::Ready);
        endpoints[2].set_ready_since(restart);
        let mut rng = SmallRng::seed_from_u64(11);
        let picker = policy.build(&endpoints, &mut rng);
        let mut shares = Vec::new();
        for k in 0..10 {
            let share = share_of_last(&*picker, &endpoints, restart + k * S, 3000, &mut rng);
            // A weight of `factor` among two of weight 1.
            let f = factor_by_end_of(k);
            let configured = f / (2.0 + f);
            assert!(
                share <= configured + 0.02,
                "{name}, second {k} of the window: {share:.3} > {configured:.3}"
            );
            shares.push(share);
        }
        assert!(
            shares[0] < 0.08 && shares[9] > 0.25,
            "{name} ramps up: {shares:.3?}"
        );
        let after = share_of_last(&*picker, &endpoints, restart + 12 * S, 3000, &mut rng);
        assert!(
            (after - 1.0 / 3.0).abs() < 0.02,
            "{name}: a full third after the window: {after:.3}"
        );
    }
}

#[test]
fn a_restarted_idle_endpoint_is_not_flooded_by_the_load_aware_policies() {
    for name in ["least_request", "peak_ewma"] {
        let endpoints = fleet();
        let restart = 100 * S;
        endpoints[2].set_connectivity(Connectivity::Idle);
        endpoints[2].set_connectivity(Connectivity::Ready);
        endpoints[2].set_ready_since(restart);
        // The two old ones are busy (3 calls in flight each, 5 ms a call); the new one
        // has nothing in flight and no latency yet (peak_ewma assumes 1 ms).
        let mut busy = Vec::new();
        for e in &endpoints[..2] {
            e.start_call_at(restart - 10 * MS)
                .finish_at(restart - 5 * MS);
            busy.extend((0..3).map(|_| e.start_call_at(restart)));
        }
        let (plain, settings) = if name == "peak_ewma" {
            (
                r#""defaultLatency": "1ms""#.to_string(),
                format!(r#""defaultLatency": "1ms", {SLOW_START}"#),
            )
        } else {
            (String::new(), SLOW_START.to_string())
        };
        let mut rng = SmallRng::seed_from_u64(5);
        let plain: Policy = format!(r#"{{"{name}": {{{plain}}}}}"#)
            .parse()
            .expect("valid");
        let without = share_of_last(
            &*plain.build(&endpoints, &mut rng),
            &endpoints,
            restart,
            3000,
            &mut rng,
        );
        assert!(
            without > 0.6,
            "{name} without slow start floods it: {without:.3}"
        );
        let policy: Policy = format!(r#"{{"{name}": {{{settings}}}}}"#)
            .parse()
            .expect("valid");
        let picker = policy.build(&endpoints, &mut rng);
        for k in 0..10 {
            let share = share_of_last(&*picker, &endpoints, restart + k * S, 3000, &mut rng);
            // Its share without slow start (2 in 3 comparisons include it) times the factor.
            let configured = factor_by_end_of(k) * without;
            assert!(
                share <= configured + 0.03,
                "{name}, second {k}: {share:.3} > {configured:.3}"
            );
        }
        let after = share_of_last(&*picker, &endpoints, restart + 12 * S, 3000, &mut rng);
        assert!(
            (after - without).abs() < 0.03,
            "{name}: its full share after the window: {after:.3} against {without:.3}"
        );
        drop(busy);
    }
}

/// A closed loop of 6 callers under `name` (virtual time, 0.5 ms steps): a call to a
/// healthy endpoint takes 5 ms; to endpoint 2 it fails with UNAVAILABLE after 0.5 ms.
/// With `record_failures` false the balancer is as it was before failures counted (no
/// outcome recorded). Endpoint 2's share of the calls after a warm-up.
fn failing_share(name: &str, record_failures: bool) -> f64 {
    let policy: Policy = format!(r#"{{"{name}": {{}}}}"#).parse().expect("valid");
    let endpoints = fleet();
    let mut rng = SmallRng::seed_from_u64(3);
    let picker = policy.build(&endpoints, &mut rng);
    let step = MS / 2;
    let mut calls: Vec<(usize, u64, lb_core::InFlightGuard)> = Vec::new();
    let mut counts = [0u64; 3];
    let mut now = 10 * S;
    for round in 0..4000 {
        let mut i = 0;
        while i < calls.len() {
            if calls[i].1 <= now {
                let (e, _, guard) = calls.swap_remove(i);
                guard.finish_at(now);
                if record_failures {
                    endpoints[e].record_outcome(e != 2, now);
                }
            } else {
                i += 1;
            }
        }
        while calls.len() < 6 {
            let mut ctx = PickContext::new(&mut rng).at(now);
            let e = picker.pick(&endpoints, &mut ctx).expect("a pick");
            if round >= 1000 {
                counts[e] += 1;
            }
            let took = if e == 2 { step } else { 10 * step };
            calls.push((e, now + took, endpoints[e].start_call_at(now)));
        }
        now += step;
    }
    counts[2] as f64 / counts.iter().sum::<u64>() as f64
}

#[test]
fn an_endpoint_failing_fast_is_not_preferred() {
    for name in ["least_request", "least_connections", "peak_ewma"] {
        let before = failing_share(name, false);
        assert!(
            before > 0.5,
            "{name}, failures not counted: the failing endpoint looks best ({before:.3})"
        );
        let now = failing_share(name, true);
        assert!(
            now <= 1.0 / 3.0,
            "{name}: the failing endpoint took {now:.3} of the calls (before: {before:.3})"
        );
        println!("{name}: the failing endpoint's share {before:.3} -> {now:.3}");
    }
}
