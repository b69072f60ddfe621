//! weighted_target_experimental: shares by weight among the targets that can take a
//! call; the JSON and its mistakes.

use super::*;
use crate::Connectivity::{Ready, TransientFailure};
use crate::policy::testing::*;

fn policy() -> Policy {
    r#"{"weighted_target_experimental": {"targets": {
        "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
        "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]},
        "zone-c": {"weight": 0, "childPolicy": [{"round_robin": {}}]}}}}"#
        .parse()
        .unwrap()
}

fn zone_counts(picks: &std::collections::BTreeMap<String, usize>) -> [usize; 3] {
    let at = |prefix: &str| {
        picks
            .iter()
            .filter(|(a, _)| a.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    [at("10.0.1."), at("10.0.2."), at("10.0.3.")]
}

fn fleet() -> Vec<EndpointState> {
    endpoints(&[
        ("10.0.1.1:80@zone-a", Ready),
        ("10.0.1.2:80@zone-a", Ready),
        ("10.0.2.1:80@zone-b", Ready),
        ("10.0.3.1:80@zone-c", Ready),
        ("10.0.9.9:80@elsewhere", Ready),
    ])
}

#[test]
fn weights_three_to_one_share_4000_picks_within_three_points() {
    let all = fleet();
    let (picker, usable) = build_over(&policy(), &all);
    let [a, b, c] = zone_counts(&picks_at(picker.as_ref(), &usable, 1, 4000));
    assert_eq!(a + b + c, 4000, "the endpoint in no target gets nothing");
    assert_shares_match_weights(&[a, b], &[3, 1], 3.0);
    assert_eq!(c, 0, "weight 0 while others can take the calls");
}

#[test]
fn a_target_with_no_ready_endpoint_gets_nothing() {
    let all = fleet();
    all[0].set_connectivity(TransientFailure);
    all[1].set_connectivity(TransientFailure);
    let (picker, usable) = build_over(&policy(), &all);
    assert_eq!(
        zone_counts(&picks_at(picker.as_ref(), &usable, 1, 1000)),
        [0, 1000, 0],
        "zone-a's share goes to zone-b"
    );
    // Down since the picker was built: the draw skips it as well.
    let all = fleet();
    let (picker, usable) = build_over(&policy(), &all);
    all[2].set_connectivity(TransientFailure);
    let [a, b, _] = zone_counts(&picks_at(picker.as_ref(), &usable, 1, 1000));
    assert_eq!((a, b), (1000, 0));
    // Only the spare is left: it takes the calls.
    for e in &all[..3] {
        e.set_connectivity(TransientFailure);
    }
    assert_eq!(zone_counts(&picks_at(picker.as_ref(), &usable, 1, 10)), [0, 0, 10]);
}

#[test]
fn without_targets_each_locality_is_one_of_equal_weight() {
    let all = fleet();
    let policy: Policy = "weighted_target_experimental".parse().unwrap();
    let (picker, usable) = build_over(&policy, &all);
    let picks = picks_at(picker.as_ref(), &usable, 1, 4000);
    let [a, b, c] = zone_counts(&picks);
    assert_shares_match_weights(&[a, b, c, 4000 - a - b - c], &[1, 1, 1, 1], 3.0);
}

#[test]
fn json_mistakes_name_the_field() {
    let cases = [
        (r#"{"targets": {"zone-a": {"childPolicy": [{"round_robin": {}}]}}}"#, "targets.zone-a.weight: missing"),
        (r#"{"targets": {"zone-a": {"weight": -1, "childPolicy": []}}}"#, "targets.zone-a.weight: -1 is not a whole number"),
        (r#"{"targets": {"zone-a": {"weight": 1}}}"#, "targets.zone-a.childPolicy: missing"),
        (r#"{"targets": {"zone-a": {"weight": 1, "childPolicy": [{"x": {}}]}}}"#, "targets.zone-a.childPolicy: no supported policy in [x]"),
        (r#"{"targets": {"zone-a": {"weight": 1, "childPolicy": [], "w": 2}}}"#, "targets.zone-a: unknown field `w`"),
        (r#"{"targets": {"zone-a": {"weight": 0, "childPolicy": [{"round_robin": {}}]}}}"#, "every weight is 0"),
        (r#"{"target": {}}"#, "unknown field `target`"),
    ];
    for (settings, expected) in cases {
        let text = format!(r#"{{"weighted_target_experimental": {settings}}}"#);
        let err = text.parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains(expected), "{settings}: {err}");
    }
}

#[test]
fn a_weighted_target_under_a_priority_fails_over_as_a_whole() {
    let policy: Policy = r#"{"priority_experimental": {"children": {
        "p0": {"config": [{"weighted_target_experimental": {"targets": {
            "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
            "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]},
        "p1": {"config": [{"round_robin": {}}]}},
        "priorities": ["p0", "p1"]}}"#
        .parse()
        .unwrap();
    let all = endpoints(&[
        ("10.0.1.1:80@zone-a", Ready),
        ("10.0.2.1:80@zone-b", Ready),
        ("10.0.3.1:80@zone-c#1", Ready),
    ]);
    let (picker, usable) = build_over(&policy, &all);
    let [a, b, c] = zone_counts(&picks_at(picker.as_ref(), &usable, 1, 4000));
    assert_shares_match_weights(&[a, b, c], &[3, 1, 0], 3.0);
    all[0].set_connectivity(TransientFailure);
    let (picker, usable) = build_over(&policy, &all);
    assert_eq!(zone_counts(&picks_at(picker.as_ref(), &usable, 1, 100)), [0, 100, 0]);
    all[1].set_connectivity(TransientFailure);
    let (picker, usable) = build_over(&policy, &all);
    assert_eq!(zone_counts(&picks_at(picker.as_ref(), &usable, 1, 100)), [0, 0, 100]);
}
