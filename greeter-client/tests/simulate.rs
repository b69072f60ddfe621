//! The simulator: deterministic, and it shows what the policies are for.

use std::process::Command;

use lb_core::Policy;
use lb_core::policy::RoundRobinConfig;
use lb_sim::{Scenario, simulate};

/// Runs the greeter-client binary with `args`.
fn client(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// 3 backends (2 ms, 2 ms, 20 ms, capacity 8 each) at 60 % utilisation, 10 simulated
/// seconds: round robin sends the slow backend a third of the calls, four times what it
/// can serve, and its queue grows all run long.
#[test]
fn load_aware_policies_halve_round_robins_p99() {
    let scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).expect("valid");
    let p99 = |policy: Policy| simulate(&scenario, &policy).report.latency_ms.p99;
    let round_robin = p99(Policy::new(RoundRobinConfig::default()));
    let least_request = p99("least_request".parse().expect("known"));
    let peak_ewma = p99("peak_ewma".parse().expect("known"));
    println!(
        "p99: round_robin {round_robin:.2} ms, least_request {least_request:.2} ms, peak_ewma {peak_ewma:.2} ms"
    );
    assert!(
        least_request <= 0.5 * round_robin,
        "{least_request} vs {round_robin}"
    );
    assert!(
        peak_ewma <= 0.5 * round_robin,
        "{peak_ewma} vs {round_robin}"
    );
}

#[test]
fn every_call_is_served_once() {
    let scenario = Scenario::with_backends(&["2ms", "5ms"]).expect("valid");
    for policy in Policy::all() {
        let report = simulate(&scenario, &policy).report;
        assert_eq!(report.failed, 0, "{policy}");
        assert_eq!(report.succeeded, report.requests, "{policy}");
    }
}

#[test]
fn the_same_command_prints_the_same_output() {
    let args = [
        "simulate",
        "--backend",
        "2ms",
        "--backend",
        "2ms",
        "--backend",
        "20ms,capacity=4",
        "--duration",
        "3s",
        "--event",
        "1s slow 1 10ms",
        "--event",
        "2s recover 1",
        "--keys",
        "50",
        "--explain",
        "3",
    ];
    let run = || client(&args);
    let (first, second) = (run(), run());
    assert_eq!(first.status.code(), Some(0));
    assert!(!first.stdout.is_empty());
    assert_eq!(first.stdout, second.stdout, "tables differ");
    assert_eq!(first.stderr, second.stderr, "explanations differ");
    let stdout = String::from_utf8_lossy(&first.stdout);
    for policy in Policy::names() {
        assert!(
            stdout.contains(&format!("  {policy} ")),
            "{policy} missing:\n{stdout}"
        );
    }
    let explained = String::from_utf8_lossy(&first.stderr);
    assert_eq!(
        explained.lines().count(),
        3 * Policy::names().len(),
        "{explained}"
    );
}

#[test]
fn a_scenario_file_works_and_mistakes_exit_2() {
    let dir = std::env::temp_dir().join(format!("lb-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("scenario.json");
    std::fs::write(
        &file,
        r#"{"backends": ["2ms", "20ms"], "duration": "2s", "utilisation": 0.5,
            "events": ["1s remove 2"]}"#,
    )
    .expect("written");
    let client = || Command::new(env!("CARGO_BIN_EXE_greeter-client"));
    let out = client()
        .args([
            "simulate",
            "--policies",
            "round_robin",
            "--json",
            "--scenario",
        ])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json[0]["policy"], "round_robin");

    std::fs::write(&file, r#"{"backends": ["2ms"], "events": ["1s remove 3"]}"#).expect("written");
    let out = client()
        .arg("simulate")
        .arg("--scenario")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backend 3"));

    let out = client()
        .args(["simulate", "--backend", "2ms", "--event", "soon slow 1 5ms"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `TIME slow N LATENCY`"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The scenario of docs/POLICIES.md ("When two random choices are not enough"): ten
/// backends, from 1 ms to 1 s, 50 callers in closed loop with 1 s deadlines. The same
/// seed prints the same table; the slow backends' calls show up as failed calls, not as
/// a p99 of minutes; and a full scan (`least_connections`) fails fewer calls than two
/// random choices (`least_request`).
#[test]
fn closed_loop_with_deadlines_prints_the_same_table_and_fails_calls_not_the_p99() {
    let args = [
        "simulate",
        "--backend",
        "1ms",
        "--backend",
        "10ms",
        "--backend",
        "10ms",
        "--backend",
        "10ms",
        "--backend",
        "10ms",
        "--backend",
        "100ms",
        "--backend",
        "100ms",
        "--backend",
        "100ms",
        "--backend",
        "100ms",
        "--backend",
        "1s",
        "--concurrency",
        "50",
        "--timeout",
        "1s",
        "--policies",
        "least_request,least_connections",
        "--json",
    ];
    let run = || client(&args);
    let (first, second) = (run(), run());
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(first.stdout, second.stdout, "the same seed, the same run");
    let reports: serde_json::Value = serde_json::from_slice(&first.stdout).expect("JSON");
    let [least_request, least_connections] = [&reports[0], &reports[1]];
    for report in [least_request, least_connections] {
        assert_eq!(report["concurrency"], 50);
        let p99 = report["latency_ms"]["p99"].as_f64().expect("p99");
        assert!(p99 <= 1000.0, "answers come within their deadline: {p99}");
    }
    let failed = |r: &serde_json::Value| r["failed"].as_u64().expect("failed");
    assert!(failed(least_request) > 0, "{least_request}");
    assert!(
        failed(least_connections) < failed(least_request),
        "a full scan fails fewer: {} vs {}",
        failed(least_connections),
        failed(least_request)
    );
}

#[test]
fn svg_draws_the_same_table_and_an_unwritable_file_is_named() {
    let dir = std::env::temp_dir().join(format!("greeter-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("simulate.svg");
    let file_arg = file.to_string_lossy().into_owned();
    let out = client(&[
        "simulate",
        "--backend",
        "2ms",
        "--backend",
        "20ms",
        "--svg",
        &file_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let svg = std::fs::read_to_string(&file).expect("written");
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    let table = String::from_utf8_lossy(&out.stdout);
    for policy in Policy::names() {
        assert!(svg.contains(&format!(">{policy}<")), "{policy} missing");
    }
    // The same numbers as the text table: round robin's shares, 50 % each.
    assert!(table.contains("round_robin"));
    assert!(svg.contains(">50%<"), "{svg}");

    let unwritable = dir.join("no/such/dir/x.svg").to_string_lossy().into_owned();
    let out = client(&["simulate", "--backend", "2ms", "--svg", &unwritable]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write the SVG to") && stderr.contains("x.svg"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}

/// docs/POLICIES.md's "Deadlines with outlier ejection": the same ten backends with
/// 300 ms deadlines; ejection takes the slow half out of least_request's draws, so it
/// serves more calls and fails fewer, and only slow backends are ejected.
#[test]
fn outlier_detection_with_deadlines_takes_the_slow_half_out_of_two_random_choices() {
    let mut args = vec!["simulate"];
    for latency in [
        "1ms", "10ms", "10ms", "10ms", "10ms", "100ms", "100ms", "100ms", "100ms", "1s",
    ] {
        args.extend(["--backend", latency]);
    }
    args.extend([
        "--concurrency",
        "50",
        "--timeout",
        "300ms",
        "--policies",
        "least_request",
        "--json",
    ]);
    let run = |extra: &[&str]| {
        let out = client(&[args.as_slice(), extra].concat());
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        reports[0].clone()
    };
    let (without, with) = (run(&[]), run(&["--outlier-detection"]));
    let number = |r: &serde_json::Value, field: &str| r[field].as_f64().expect(field);
    assert!(number(&with, "calls_per_sec") > 2.0 * number(&without, "calls_per_sec"));
    assert!(number(&with, "failed") * 2.0 < number(&without, "failed"));
    let ejections: Vec<u64> = with["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["ejections"].as_u64().expect("ejections"))
        .collect();
    assert!(
        ejections[..5].iter().all(|&e| e == 0),
        "fast ones stay: {ejections:?}"
    );
    assert!(
        ejections[5..].iter().all(|&e| e > 0),
        "slow ones leave: {ejections:?}"
    );
    let slow_share: f64 = with["backends"].as_array().expect("backends")[5..]
        .iter()
        .map(|b| b["share"].as_f64().expect("share"))
        .sum();
    assert!(slow_share < 0.05, "the slow half gets {slow_share}");
}
