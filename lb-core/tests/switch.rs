//! Switching the policy while calls go on: no call fails, and every pick after the
//! switch is the new policy's.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, PickedEndpoint, Policy};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_switched_under_load_drops_no_call_and_takes_every_later_pick() {
    let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0, 0]))
        .await
        .expect("servers start");
    let endpoints = lb_core::parse_endpoint_list(&servers.endpoints_list()).expect("valid");
    let balancer = Balancer::builder(endpoints.clone())
        .policy("round_robin".parse().expect("built in"))
        .seed(9)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(10)).await;
    assert_eq!(balancer.usable_endpoints(), 3);

    // Four callers keep calls in flight the whole time.
    let (calls, mut calls_seen) = watch::channel(0u64);
    let calls = Arc::new(calls);
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = MyServiceClient::new(balancer.clone());
            let (calls, failures, stop) = (calls.clone(), failures.clone(), stop.clone());
            tokio::spawn(async move {
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if client
                        .say_hello(HelloRequest { name: "s".into() })
                        .await
                        .is_err()
                    {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.send_modify(|n| *n += 1);
                }
            })
        })
        .collect();
    calls_seen
        .wait_for(|&n| n >= 200)
        .await
        .expect("callers run");

    balancer.set_policy(Policy::named("pick_first").expect("built in"));
    assert_eq!(balancer.policy_name(), "pick_first");
    let mut client = MyServiceClient::new(balancer.clone());
    for _ in 0..50 {
        let response = client
            .say_hello(HelloRequest { name: "s".into() })
            .await
            .expect("answered");
        let picked = response
            .extensions()
            .get::<PickedEndpoint>()
            .expect("tagged");
        assert_eq!(
            picked.0, endpoints[0],
            "pick_first: every call to the first"
        );
    }

    let switched_at = *calls_seen.borrow();
    calls_seen
        .wait_for(|&n| n >= switched_at + 200)
        .await
        .expect("callers go on");
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("no panic");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no call failed for the switch"
    );
    servers.shutdown().await.expect("clean shutdown");
}
