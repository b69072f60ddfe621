//! The simulator's tests: parsing, determinism, and what each policy does.

use std::time::Duration;

use lb_core::Policy;

use super::*;
use crate::report::Backend;
use lb_core::policy::RoundRobinConfig;

#[test]
fn backends_and_events_parse_and_say_what_is_wrong() {
    assert_eq!(
        "20ms,capacity=4,weight=2".parse::<BackendSpec>(),
        Ok(BackendSpec {
            latency: Duration::from_millis(20),
            capacity: Some(4),
            weight: 2,
            locality: None,
            priority: 0,
        })
    );
    assert!(
        "fast"
            .parse::<BackendSpec>()
            .unwrap_err()
            .contains("`fast`")
    );
    assert!(
        "2ms,cap=4"
            .parse::<BackendSpec>()
            .unwrap_err()
            .contains("`cap=4`")
    );
    assert!(
        "0ms"
            .parse::<BackendSpec>()
            .unwrap_err()
            .contains("above 0")
    );
    let event: Event = "5s slow 3 20ms".parse().unwrap();
    assert_eq!(event.change, Change::Slow(3, Duration::from_millis(20)));
    assert_eq!(event.to_string(), "5s slow 3 20ms");
    assert!(
        "5s explode 3"
            .parse::<Event>()
            .unwrap_err()
            .contains("expected")
    );
    let mut scenario = Scenario::with_backends(&["2ms"]).unwrap();
    scenario.events.push("1s remove 2".parse().unwrap());
    assert!(scenario.check().unwrap_err().contains("no backend 2"));
}

#[test]
fn the_arrival_rate_follows_the_utilisation() {
    let scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).unwrap();
    // 8/0.002 + 8/0.002 + 8/0.02 = 8400 calls/s of capacity; 60 % of it.
    assert!((scenario.arrival_rate() - 5040.0).abs() < 1e-6);
}

#[test]
fn a_removed_backend_gets_no_new_calls_and_an_added_one_does() {
    let mut scenario = Scenario::with_backends(&["2ms", "2ms"]).unwrap();
    scenario.duration = Duration::from_secs(4);
    scenario.events = vec![
        "2s remove 1".parse().unwrap(),
        "2s add 2ms".parse().unwrap(),
    ];
    let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
    let calls: Vec<u64> = report.backends.iter().map(|b| b.calls).collect();
    // Backend 1 served only the first half; 2 and 3 split the second half.
    assert!(calls[0] > 0 && calls[2] > 0, "{calls:?}");
    assert!(calls[1] > calls[0] && calls[1] > calls[2], "{calls:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(report.succeeded, report.requests);
}

#[test]
fn a_closed_loop_keeps_its_callers_busy_and_no_more() {
    let mut scenario = Scenario::with_backends(&["10ms"]).unwrap();
    scenario.concurrency = Some(4);
    let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
    // 4 callers, 10 ms a call, never more than 4 at once on 8 workers: 400 calls/s.
    assert!(
        (360.0..440.0).contains(&report.calls_per_sec),
        "{}",
        report.calls_per_sec
    );
    assert_eq!(report.failed, 0);
    assert_eq!(report.concurrency, 4);
    // Nobody queues: the median is the service time's (exponential: ln 2 × 10 ms).
    assert!(report.latency_ms.p50 < 10.0, "{:?}", report.latency_ms);
}

#[test]
fn reported_load_gives_a_small_backend_its_share_under_weighted_round_robin() {
    let mut scenario =
        Scenario::with_backends(&["5ms,capacity=4", "5ms,capacity=4", "5ms,capacity=1"]).unwrap();
    scenario.concurrency = Some(18);
    scenario.duration = Duration::from_secs(30);
    let wrr: Policy = r#"{"weighted_round_robin":{"blackoutPeriod":"1s"}}"#
        .parse()
        .unwrap();
    let share = |scenario: &Scenario| simulate(scenario, &wrr).report.backends[2].share;
    let static_share = share(&scenario);
    assert!(
        (static_share - 1.0 / 3.0).abs() < 0.02,
        "no reports: equal weights, {static_share}"
    );
    scenario.orca = true;
    let reported = share(&scenario);
    assert!(
        (reported - 1.0 / 9.0).abs() < 0.03,
        "capacities 4, 4, 1 reported: about a ninth, {reported}"
    );
}

#[test]
fn deadlines_fail_calls_and_cancel_them_on_the_backend() {
    let mut scenario = Scenario::with_backends(&["100ms,capacity=1"]).unwrap();
    scenario.concurrency = Some(10);
    scenario.timeout = Some(Duration::from_millis(150));
    let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
    assert!(report.failed > report.succeeded, "{report:?}");
    assert_eq!(report.errors[0].code, "DeadlineExceeded");
    assert_eq!(report.succeeded + report.failed, report.requests);
    assert_eq!(report.backends[0].errors, report.failed);
    assert!(
        report.latency_ms.max <= 151.0,
        "no answer counts after its deadline: {:?}",
        report.latency_ms
    );
    // Cancelled calls free the worker: it serves about one call per 100 ms.
    let served_per_sec = report.succeeded as f64 / 10.0;
    assert!((7.0..11.0).contains(&served_per_sec), "{served_per_sec}");
}

#[test]
fn the_same_seed_gives_the_same_closed_loop_run() {
    let mut scenario = Scenario::with_backends(&["1ms", "10ms", "100ms", "1s"]).unwrap();
    scenario.concurrency = Some(20);
    scenario.timeout = Some(Duration::from_secs(1));
    let policy: Policy = "least_request".parse().unwrap();
    let a = serde_json::to_string(&simulate(&scenario, &policy).report).unwrap();
    let b = serde_json::to_string(&simulate(&scenario, &policy).report).unwrap();
    assert_eq!(a, b);
    scenario.seed = 2;
    let c = serde_json::to_string(&simulate(&scenario, &policy).report).unwrap();
    assert_ne!(a, c);
}

#[test]
fn outlier_detection_ejects_a_backend_whose_calls_time_out() {
    let mut scenario = Scenario::with_backends(&["1ms", "1ms", "1ms", "1s"]).unwrap();
    scenario.concurrency = Some(20);
    scenario.timeout = Some(Duration::from_millis(100));
    let policy = Policy::new(RoundRobinConfig::default());
    let without = simulate(&scenario, &policy).report;
    scenario.outlier = Some(crate::demo_outlier_detection());
    let with = simulate(&scenario, &policy).report;
    fn slow(report: &Report) -> &Backend {
        &report.backends[3]
    }
    assert_eq!(slow(&without).ejections, 0);
    // 5 timeouts in a row: out for 5 s, then (after it failed again) for 10 s.
    assert!(slow(&with).ejections >= 1, "{:?}", slow(&with));
    assert!(
        slow(&with).errors * 4 < slow(&without).errors,
        "{} failed calls on the slow backend with ejection, {} without",
        slow(&with).errors,
        slow(&without).errors
    );
    assert!(with.calls_per_sec > without.calls_per_sec);
    for fast in &with.backends[..3] {
        assert_eq!(fast.ejections, 0, "{fast:?}");
    }
    let file =
        Scenario::from_json(r#"{"backends": ["1ms"], "timeout": "1s", "outlier_detection": true}"#)
            .unwrap();
    assert_eq!(file.outlier, Some(crate::demo_outlier_detection()));
}

#[test]
fn outlier_detection_never_ejects_more_than_half() {
    let mut scenario = Scenario::with_backends(&["1s", "1s", "1s", "1s"]).unwrap();
    scenario.concurrency = Some(8);
    scenario.timeout = Some(Duration::from_millis(10));
    scenario.outlier = Some(crate::demo_outlier_detection());
    let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
    let ejected: Vec<u64> = report.backends.iter().map(|b| b.ejections).collect();
    // Every call fails; two are ejected at a time, the others keep the calls.
    assert!(
        ejected.iter().filter(|&&e| e > 0).count() >= 2,
        "{ejected:?}"
    );
    assert!(report.backends.iter().all(|b| b.errors > 0), "{report:?}");
    assert!(
        report.errors.iter().all(|e| e.code != "Unavailable"),
        "the picker always had backends left: {:?}",
        report.errors
    );
}

#[test]
fn closed_loop_settings_are_checked() {
    let mut scenario = Scenario::with_backends(&["1ms"]).unwrap();
    scenario.concurrency = Some(0);
    assert!(scenario.check().unwrap_err().contains("concurrency 0"));
    scenario.concurrency = Some(2);
    scenario.timeout = Some(Duration::ZERO);
    assert!(scenario.check().unwrap_err().contains("timeout"));
    let file =
        Scenario::from_json(r#"{"backends": ["1ms"], "concurrency": 3, "timeout": "250ms"}"#)
            .unwrap();
    assert_eq!(file.concurrency, Some(3));
    assert_eq!(file.timeout, Some(Duration::from_millis(250)));
}
