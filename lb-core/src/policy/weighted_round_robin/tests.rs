//! weighted_round_robin's tests: weights from reports, blackout and expiry on a paused
//! clock, gRFC A78's counters, and the scheduler's shares.

use super::*;
use crate::policy::testing::*;
use rand::SeedableRng;

#[test]
fn five_one_one_is_a_a_b_a_c_a_a() {
    let endpoints = weighted(&[5, 1, 1]);
    let picker = WeightedRoundRobin::starting_at(&endpoints, 0);
    let mut rng = rand::rngs::SmallRng::from_seed([0; 32]);
    let mut ctx = PickContext::new(&mut rng);
    let names = ['a', 'b', 'c'];
    let sequence: String = (0..14)
        .map(|_| names[picker.pick(&endpoints, &mut ctx).unwrap()])
        .collect();
    assert_eq!(sequence, "aabacaaaabacaa");
}

#[test]
fn shares_follow_the_weights_within_a_point() {
    for weights in [
        vec![5, 1, 1],
        vec![3, 1],
        vec![1, 2, 3, 4],
        vec![10, 1, 1, 1, 1, 1],
    ] {
        let endpoints = weighted(&weights);
        let mut rng = rand::rngs::SmallRng::from_seed([1; 32]);
        let picker = WeightedRoundRobin::new(&endpoints, &mut rng);
        let counts = histogram(&picker, &endpoints, 70_000);
        assert_shares_match_weights(&counts, &weights, 1.0);
    }
}

/// Endpoints whose servers reported `(qps, eps, utilization)` just now.
fn reporting(loads: &[(f64, f64, f64)]) -> Vec<EndpointState> {
    let endpoints = weighted(&vec![1; loads.len()]);
    let now = crate::clock::now_nanos();
    for (e, &(qps, eps, utilization)) in endpoints.iter().zip(loads) {
        let report = crate::orca::OrcaLoadReport {
            rps_fractional: qps,
            eps,
            application_utilization: utilization,
            ..Default::default()
        };
        e.record_load(&report, now);
    }
    endpoints
}

fn no_blackout() -> WeightedRoundRobinConfig {
    WeightedRoundRobinConfig {
        blackout_period: Duration::ZERO,
        ..WeightedRoundRobinConfig::default()
    }
}

fn picker(endpoints: &[EndpointState], settings: &WeightedRoundRobinConfig) -> WeightedRoundRobin {
    let mut rng = rand::rngs::SmallRng::from_seed([2; 32]);
    WeightedRoundRobin::with_config(endpoints, &mut rng, settings)
}

#[test]
fn reported_loads_become_weights() {
    // Capacities 4, 4 and 1, all busy: 400, 400 and 100 calls a second.
    let endpoints = reporting(&[(400.0, 0.0, 1.0), (400.0, 0.0, 1.0), (100.0, 0.0, 1.0)]);
    let picker = picker(&endpoints, &no_blackout());
    let counts = histogram(&picker, &endpoints, 90_000);
    assert_shares_match_weights(&counts, &[4, 4, 1], 1.0);
    let weights = picker.reported_weights().expect("reported weights in use");
    assert_eq!(weights[0], MAX_STRIDE_WEIGHT);
    assert_eq!(weights[2], (MAX_STRIDE_WEIGHT as f64 / 4.0).round() as u64);
}

/// On tokio's paused clock: reports wait out the blackout, then count, then expire
/// when they stop, and the static weights are back.
#[tokio::test(start_paused = true)]
async fn reports_wait_out_the_blackout_and_expire_when_they_stop() {
    let endpoints = reporting(&[(400.0, 0.0, 1.0), (100.0, 0.0, 1.0)]);
    let settings = WeightedRoundRobinConfig::default();
    let picker = picker(&endpoints, &settings);
    let shares = |picker: &WeightedRoundRobin| histogram(picker, &endpoints, 10_000);
    assert_shares_match_weights(&shares(&picker), &[1, 1], 1.0);
    assert!(picker.reported_weights().is_none(), "in the blackout: static weights");

    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = shares(&picker); // The first pick past the update period reads them.
    assert_shares_match_weights(&shares(&picker), &[4, 1], 1.0);

    // No report for 3 minutes: expired, static again, and a new blackout to come.
    tokio::time::advance(Duration::from_secs(181)).await;
    let _ = shares(&picker);
    assert_shares_match_weights(&shares(&picker), &[1, 1], 1.0);
    assert!(picker.reported_weights().is_none());
    assert_eq!(endpoints[0].reported_load().non_empty_since, 0);
}

/// gRFC A78's counters, on a paused clock: not yet usable while in the blackout
/// (falling back to the static weights), then usable, then stale at every update.
#[tokio::test(start_paused = true)]
async fn the_a78_counters_follow_blackout_and_expiry() {
    let endpoints = reporting(&[(400.0, 0.0, 1.0), (100.0, 0.0, 1.0)]);
    let picker = picker(&endpoints, &WeightedRoundRobinConfig::default());
    let counters = PickCounters::default();
    let mut rng = rand::rngs::SmallRng::from_seed([0; 32]);
    let mut pick_after = async |secs: u64| {
        tokio::time::advance(Duration::from_secs(secs)).await;
        let mut ctx = PickContext::new(&mut rng).with_counters(&counters);
        picker.pick(&endpoints, &mut ctx).expect("a pick");
        [
            &counters.endpoint_weight_not_yet_usable,
            &counters.endpoint_weight_stale,
            &counters.rr_fallback,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    };
    // [not yet usable, stale, rr fallback]
    assert_eq!(pick_after(0).await, [2, 0, 1], "both in the blackout: fallback");
    assert_eq!(pick_after(0).await, [2, 0, 1], "within the update period: no update");
    assert_eq!(pick_after(11).await, [2, 0, 1], "both usable: no fallback");
    assert_eq!(pick_after(181).await, [2, 2, 2], "both forgotten: fallback");
    assert_eq!(pick_after(2).await, [2, 4, 3], "still stale at the next update");
}

/// One server of three stops reporting (its other calls go on): after the expiration
/// period it is back at the mean of the others' weights. Paused clock.
#[tokio::test(start_paused = true)]
async fn a_server_whose_reports_stop_is_back_at_the_mean_after_expiry() {
    let loads = [(400.0, 0.0, 1.0), (400.0, 0.0, 1.0), (100.0, 0.0, 1.0)];
    let endpoints = reporting(&loads);
    let picker = picker(&endpoints, &no_blackout());
    let _ = histogram(&picker, &endpoints, 100);
    assert_eq!(picker.weights(), Some(vec![400.0, 400.0, 100.0]));
    // Every 10 s for 200 s, the first two report again; the third is silent.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = crate::clock::now_nanos();
        for (e, &(qps, _, utilization)) in endpoints.iter().zip(&loads).take(2) {
            let report = crate::orca::OrcaLoadReport {
                rps_fractional: qps,
                application_utilization: utilization,
                ..Default::default()
            };
            e.record_load(&report, now);
        }
        let _ = histogram(&picker, &endpoints, 100);
    }
    assert_eq!(
        picker.weights(),
        Some(vec![400.0, 400.0, 400.0]),
        "expired after 180 s: the mean of the others"
    );
    let counts = histogram(&picker, &endpoints, 30_000);
    assert_shares_match_weights(&counts, &[1, 1, 1], 1.0);
}

#[test]
fn slow_start_scales_the_static_weights_and_metrics_see_them() {
    let endpoints = weighted(&[2, 2, 2]);
    for e in &endpoints {
        e.set_ready_since(1);
    }
    let restart = 100_000_000_000;
    endpoints[2].set_ready_since(restart);
    let settings = WeightedRoundRobinConfig {
        slow_start_config: Some(SlowStartConfig::new(Duration::from_secs(10))),
        ..WeightedRoundRobinConfig::default()
    };
    let picker = picker(&endpoints, &settings);
    assert_eq!(picker.weights(), Some(vec![2.0, 2.0, 2.0]), "static, before a pick");
    let mut rng = rand::rngs::SmallRng::from_seed([0; 32]);
    let mut ctx = PickContext::new(&mut rng).at(restart + 5_000_000_000);
    picker.pick(&endpoints, &mut ctx).unwrap();
    let weights = picker.weights().unwrap();
    assert_eq!(&weights[..2], &[2.0, 2.0]);
    assert!((weights[2] - 1.0).abs() < 1e-9, "half way: half its weight, {weights:?}");
}

#[test]
fn errors_weigh_against_a_server_and_silent_ones_get_the_mean() {
    let settings = no_blackout();
    let now = crate::clock::now_nanos();
    let [failing, clean] = [(400.0, 200.0, 0.5), (400.0, 0.0, 0.5)]
        .map(|load| match reported_weight(&reporting(&[load])[0], now, &settings) {
            Ok(weight) => weight,
            Err(_) => panic!("{load:?} has a usable weight"),
        });
    // 400 / (0.5 + 200/400 × 1) = 400, against 400 / 0.5 = 800.
    assert!((failing - 400.0).abs() < 1e-6 && (clean - 800.0).abs() < 1e-6);
    // The third endpoint never reported: it weighs the mean of the other two.
    let mut endpoints = reporting(&[(300.0, 0.0, 1.0), (100.0, 0.0, 1.0)]);
    endpoints.extend(weighted(&[1]));
    let counts = histogram(&picker(&endpoints, &settings), &endpoints, 60_000);
    assert_shares_match_weights(&counts, &[3, 1, 2], 1.0);
}

#[test]
fn settings_are_read_with_grpc_names_and_checked() {
    use crate::policy::registry::parse_service_config;
    let policy = parse_service_config(
        r#"{"weighted_round_robin":{"blackoutPeriod":"1s","weightUpdatePeriod":"10ms","errorUtilizationPenalty":2.5}}"#,
    )
    .expect("valid");
    let settings = policy.settings::<WeightedRoundRobinConfig>().expect("wrr");
    assert_eq!(settings.blackout_period, Duration::from_secs(1));
    assert_eq!(settings.weight_update_period, MIN_UPDATE_PERIOD, "raised to 100 ms");
    assert_eq!(settings.error_utilization_penalty, 2.5);
    for (json, says) in [
        (r#"{"weighted_round_robin":{"blackout":"1s"}}"#, "blackout"),
        (r#"{"weighted_round_robin":{"enableOobLoadReport":true,"oobReportingPeriod":"0s"}}"#, "oobReportingPeriod must be above 0"),
        (r#"{"weighted_round_robin":{"errorUtilizationPenalty":-1}}"#, "errorUtilizationPenalty"),
        (r#"{"weighted_round_robin":{"weightExpirationPeriod":"soon"}}"#, "soon"),
    ] {
        let err = parse_service_config(json).expect_err(json).to_string();
        assert!(err.contains(says), "{json}: {err}");
    }
}

#[test]
fn the_stride_scheduler_gives_each_its_share_evenly() {
    let weights = stride_weights(&[4.0, 4.0, 1.0]);
    let mut counts = [0usize; 3];
    let mut last_small = None;
    let mut longest_gap = 0;
    for seq in 0..90_000 {
        if let Some(i) = stride_turn(&weights, seq) {
            counts[i] += 1;
            if i == 2 {
                if let Some(last) = last_small {
                    longest_gap = longest_gap.max(seq - last);
                }
                last_small = Some(seq);
            }
        }
    }
    let total: usize = counts.iter().sum();
    let small = counts[2] as f64 / total as f64;
    assert!((small - 1.0 / 9.0).abs() < 0.01, "{counts:?}");
    assert!(longest_gap <= 3 * 4 + 3, "spread out, not in bursts: {longest_gap}");
    // Never below a tenth of the largest.
    assert_eq!(stride_weights(&[1000.0, 1.0])[1], MAX_STRIDE_WEIGHT / 10);
}

#[test]
fn common_factors_and_huge_weights_keep_cycles_short() {
    assert_eq!(smooth_cycle(&[10, 20]), vec![1, 0, 1]);
    let cycle = smooth_cycle(&[10_000, 9_999, 1, 7]);
    assert!(cycle.len() as u64 <= MAX_CYCLE + 4, "{}", cycle.len());
    assert!(cycle.contains(&2), "a weight never rounds down to nothing");
}
