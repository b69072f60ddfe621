//! priority_experimental on a virtual clock: failover on TRANSIENT_FAILURE and on the
//! failover timeout, and back again; the JSON and its mistakes.

use std::time::Duration;

use super::*;
use crate::Connectivity::{Connecting, Idle, Ready, TransientFailure};
use crate::policy::testing::*;

const SECOND: u64 = 1_000_000_000;

/// p0: a and b; p1: c.
fn policy() -> Policy {
    r#"{"priority_experimental": {"children": {
        "p0": {"config": [{"round_robin": {}}]},
        "p1": {"config": [{"round_robin": {}}]}},
        "priorities": ["p0", "p1"]}}"#
        .parse()
        .unwrap()
}

fn fleet(p0: crate::Connectivity, p1: crate::Connectivity) -> Vec<EndpointState> {
    endpoints(&[
        ("10.0.0.1:80", p0),
        ("10.0.0.2:80", p0),
        ("10.0.0.3:80#1", p1),
    ])
}

fn counts(list: &[(&str, usize)]) -> std::collections::BTreeMap<String, usize> {
    list.iter().map(|(a, n)| (a.to_string(), *n)).collect()
}

#[test]
fn the_highest_priority_that_works_takes_every_call() {
    let all = fleet(Ready, Ready);
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, SECOND, 1000),
        counts(&[("10.0.0.1:80", 500), ("10.0.0.2:80", 500)])
    );
}

#[test]
fn a_failed_priority_hands_over_at_once_and_gets_its_calls_back_when_ready() {
    let all = fleet(Ready, Ready);
    // p0's servers die: their endpoints go to TRANSIENT_FAILURE.
    for e in &all[..2] {
        e.set_connectivity(TransientFailure);
    }
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 30 * SECOND, 100),
        counts(&[("10.0.0.3:80", 100)])
    );
    // Reconnecting after the backoff (CONNECTING again) is not starting: still p1.
    all[0].set_connectivity(Connecting);
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 31 * SECOND, 100),
        counts(&[("10.0.0.3:80", 100)])
    );
    // One of them is back: every call goes back to p0.
    all[0].set_connectivity(Ready);
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 32 * SECOND, 100),
        counts(&[("10.0.0.1:80", 100)])
    );
}

#[test]
fn a_priority_that_loses_its_connections_fails_over_as_grpc_does() {
    let all = fleet(Ready, Ready);
    for e in &all[..2] {
        e.set_connectivity(Idle); // READY -> IDLE: connection lost, reconnecting
    }
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 5 * SECOND, 10),
        counts(&[("10.0.0.3:80", 10)])
    );
}

#[test]
fn a_priority_still_starting_holds_calls_until_the_failover_timeout() {
    // p0 never connects (a blackholed zone); p1 is READY from the start.
    let all = fleet(Connecting, Ready);
    let (picker, usable) = build_over(&policy(), &all);
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
    let mut why = String::new();
    let mut ctx = PickContext::new(&mut rng).at(SECOND).explain_into(&mut why);
    assert_eq!(
        picker.pick(&usable, &mut ctx),
        Err(PickError::NoneReady { total: 1 }),
        "the call waits for p0"
    );
    assert!(why.contains("p0 still starting"), "{why}");
    // The balancer wakes waiting calls at the timeout: 10 s after p0 started (at 1 ns).
    assert_eq!(picker.next_change(SECOND), Some(1 + 10 * SECOND));
    assert_eq!(picker.next_change(11 * SECOND), None);
    // Just before it, calls still wait; from it on, p1 serves.
    assert!(picks_at(picker.as_ref(), &usable, 10 * SECOND, 10).is_empty());
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 10 * SECOND + 1, 10),
        counts(&[("10.0.0.3:80", 10)])
    );
    // p0 finally connects: it serves again.
    for e in &all[..2] {
        e.set_connectivity(Ready);
    }
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 20 * SECOND, 10),
        counts(&[("10.0.0.1:80", 5), ("10.0.0.2:80", 5)])
    );
}

#[test]
fn a_priority_whose_first_attempts_failed_is_passed_over_before_the_timeout() {
    let all = fleet(TransientFailure, Ready);
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, SECOND, 10),
        counts(&[("10.0.0.3:80", 10)])
    );
    assert_eq!(picker.next_change(SECOND), None);
}

#[test]
fn the_failover_timeout_can_be_set() {
    let policy: Policy = r#"{"priority_experimental": {"failoverTimeout": "2s",
        "children": {"a": {"config": [{"pick_first": {}}]}, "b": {"config": [{"pick_first": {}}]}},
        "priorities": ["a", "b"]}}"#
        .parse()
        .unwrap();
    let settings = policy.settings::<PriorityConfig>().unwrap();
    assert_eq!(settings.failover_timeout, Duration::from_secs(2));
    assert_eq!(settings.children[1].0, "b");
    let all = fleet(Connecting, Ready);
    let (picker, usable) = build_over(&policy, &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, 2 * SECOND + 1, 3),
        counts(&[("10.0.0.3:80", 3)])
    );
}

#[test]
fn without_children_each_priority_level_is_a_round_robin() {
    let all = fleet(Ready, Ready);
    let (picker, usable) = build_over(&"priority_experimental".parse().unwrap(), &all);
    assert_eq!(picks_at(picker.as_ref(), &usable, SECOND, 10).len(), 2, "p0's two");
    for e in &all[..2] {
        e.set_connectivity(TransientFailure);
    }
    let (picker, usable) = build_over(&"priority_experimental".parse().unwrap(), &all);
    assert_eq!(
        picks_at(picker.as_ref(), &usable, SECOND, 4),
        counts(&[("10.0.0.3:80", 4)])
    );
}

#[test]
fn json_mistakes_name_the_field() {
    let cases = [
        (r#"{"priorities": ["p0"]}"#, "priorities[0]: `p0` is not in children"),
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}]}, "p1": {"config": [{"round_robin": {}}]}}, "priorities": ["p0"]}"#,
            "children.p1: not in priorities",
        ),
        (
            r#"{"children": {"p0": {"config": [{"nope": {}}]}}, "priorities": ["p0"]}"#,
            "children.p0.config: no supported policy in [nope]",
        ),
        (
            r#"{"children": {"p0": {"confg": []}}, "priorities": ["p0"]}"#,
            "children.p0.config: missing",
        ),
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}], "x": 1}}, "priorities": ["p0"]}"#,
            "children.p0: unknown field `x`",
        ),
        (
            r#"{"children": {"p0": {"config": [{"least_request": {"choiceCount": 1}}]}}, "priorities": ["p0"]}"#,
            "children.p0.config: least_request: choiceCount",
        ),
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}]}}, "priorities": ["p0", "p0"]}"#,
            "priorities[1]: `p0` is listed twice",
        ),
        (r#"{"failoverTimeout": "soon"}"#, "failoverTimeout: `soon` is not a duration"),
        (r#"{"failoverTimeout": "0s"}"#, "failoverTimeout must be above 0"),
        (r#"{"prioritys": []}"#, "unknown field `prioritys`"),
    ];
    for (settings, expected) in cases {
        let text = format!(r#"{{"loadBalancingConfig": [{{"priority_experimental": {settings}}}]}}"#);
        let err = text.parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains(expected), "{settings}: {err}");
        assert!(err.contains("priority_experimental: "), "{err}");
    }
}
