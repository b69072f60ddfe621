//! Weights that follow real load (gRFC A58): three greeter-servers of capacities 4, 4
//! and 1 (`--capacity`), reporting their load with ORCA (`--orca`), under the same
//! steady load through `weighted_round_robin` and through `round_robin`.
//!
//! What is asserted are shares and a ratio of two p99s measured in the same test, not
//! wall-clock times: with reported weights the small server's share settles near 1/9,
//! as its size says, and the tail is shorter than round robin's, which sends it a third
//! of the calls and makes them queue.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, Servers, spawn};
use lb_core::{Balancer, Endpoint, Policy};
use tokio::time::Instant;

/// A server of `capacity` calls at once, 5 ms of work each, reporting its load.
async fn server(capacity: usize) -> Servers {
    let mut config = Config::on_ports(&[0]).with_latency(Duration::from_millis(5));
    config.capacity = Some(capacity);
    config.orca = true;
    spawn(config).await.expect("starts")
}

/// What one policy did under `callers` closed-loop callers: each endpoint's share of
/// the calls after `warmup`, and the p99 of those calls.
async fn run(policy: Policy, endpoints: &[Endpoint], callers: usize) -> (Vec<f64>, Duration) {
    let balancer = Balancer::builder(endpoints.to_vec())
        .policy(policy)
        .seed(7)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(10)).await;
    let warmup = Duration::from_millis(2500);
    let measured = Duration::from_millis(2500);
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measured);
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = MyServiceClient::new(balancer.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        return took;
                    }
                    client
                        .say_hello(HelloRequest { name: "w".into() })
                        .await
                        .expect("answered");
                    if sent >= from {
                        took.push(sent.elapsed());
                    }
                }
            })
        })
        .collect();
    // Shares from the balancer's own counts, over the measured window only.
    tokio::time::sleep_until(from).await;
    let before: Vec<u64> = balancer.endpoints().iter().map(|s| s.calls).collect();
    tokio::time::sleep_until(until).await;
    let after: Vec<u64> = balancer.endpoints().iter().map(|s| s.calls).collect();
    let mut took = Vec::new();
    for task in tasks {
        took.extend(task.await.expect("no panic"));
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    let calls: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = calls.iter().sum();
    let shares = calls.iter().map(|&c| c as f64 / total as f64).collect();
    (shares, p99)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_weights_give_a_small_server_its_ninth_and_a_shorter_tail() {
    let fleet = [server(4).await, server(4).await, server(1).await];
    let endpoints: Vec<Endpoint> = fleet
        .iter()
        .map(|s| s.addrs()[0].to_string().parse().expect("valid"))
        .collect();
    // A blackout of 1 s instead of 10, so that the test does not wait for it.
    let wrr: Policy =
        r#"{"weighted_round_robin":{"blackoutPeriod":"1s","weightUpdatePeriod":"200ms"}}"#
            .parse()
            .expect("valid");
    let (wrr_shares, wrr_p99) = run(wrr, &endpoints, 18).await;
    let (rr_shares, rr_p99) = run("round_robin".parse().expect("valid"), &endpoints, 18).await;
    println!("weighted_round_robin: {wrr_shares:.3?} p99 {wrr_p99:?}");
    println!("round_robin:          {rr_shares:.3?} p99 {rr_p99:?}");
    assert!(
        (wrr_shares[2] - 1.0 / 9.0).abs() <= 0.05,
        "the small server's share settles near 1/9: {wrr_shares:?}"
    );
    assert!(
        (rr_shares[2] - 1.0 / 3.0).abs() <= 0.05,
        "round robin gives it a third: {rr_shares:?}"
    );
    assert!(
        wrr_p99 < rr_p99,
        "reported weights shorten the tail: {wrr_p99:?} against {rr_p99:?}"
    );
    for servers in fleet {
        servers.shutdown().await.expect("clean shutdown");
    }
}

/// Failures count as load: of three servers, one answers every call with UNAVAILABLE at
/// once (`--error-rate 1`, no latency) while the others take 5 ms. Counting calls in
/// flight alone, it would look the least loaded and get most calls (over 60 % in
/// lb-core/tests/ramp_and_failures.rs, where the same loop runs without failures
/// counted); divided by its success rate, its load is high, and it gets less than its
/// third. Outlier detection is off, so that only the policy decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_fast_is_not_preferred_by_the_load_aware_policies() {
    let healthy = spawn(Config::on_ports(&[0, 0]).with_latency(Duration::from_millis(5)))
        .await
        .expect("starts");
    let failing = spawn(Config::on_ports(&[0]).with_error_rate(1.0))
        .await
        .expect("starts");
    let endpoints: Vec<Endpoint> = healthy
        .addrs()
        .iter()
        .chain(&failing.addrs())
        .map(|a| a.to_string().parse().expect("valid"))
        .collect();
    for name in ["least_request", "least_connections", "peak_ewma"] {
        let balancer = Balancer::builder(endpoints.clone())
            .policy(name.parse().expect("valid"))
            .outlier_detection(None)
            .seed(9)
            .build()
            .expect("builds");
        balancer.wait_settled(Duration::from_secs(10)).await;
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let mut client = MyServiceClient::new(balancer.clone());
                tokio::spawn(async move {
                    for _ in 0..150 {
                        // Failures are expected: that is the failing server's answer.
                        let _ = client.say_hello(HelloRequest { name: "f".into() }).await;
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("no panic");
        }
        let calls: Vec<u64> = balancer.endpoints().iter().map(|s| s.calls).collect();
        let share = calls[2] as f64 / calls.iter().sum::<u64>() as f64;
        println!("{name}: calls {calls:?}, the failing server's share {share:.3}");
        assert!(
            share <= 1.0 / 3.0,
            "{name}: the failing server took {share:.3} of the calls ({calls:?})"
        );
    }
    healthy.shutdown().await.expect("clean shutdown");
    failing.shutdown().await.expect("clean shutdown");
}
