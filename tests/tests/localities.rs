//! Localities and priorities with real servers and real process kills: a 3:1
//! weighted target over zones a and b at priority 0, zone c at priority 1.
//!
//! 1. All up: zone a takes about 75 % of the calls, zone b 25 %, zone c none.
//! 2. Zone a's servers are SIGKILLed while calls go on: every call goes to zone b.
//! 3. Zone b's server is SIGKILLed too: priority 0 has failed, zone c takes them all.
//! 4. Zones a and b restart on their ports: back to 75/25/0.
//!
//! Every call has a deadline of 1 s, and none may fail: there is always a healthy
//! priority to fail over to. The servers are processes of their own (this test binary
//! run again as a server, see [`server_process`]); each step waits for the balancer's
//! own view of its endpoints, not for a timer.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use e2e_tests::process::ServerProcess as Server;
use e2e_tests::wait_until;
use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Backoff, Balancer, Connectivity, Endpoint, PickedEndpoint, Policy};

/// Not a test of its own: the body of the server processes the test below starts
/// (see `e2e_tests::process`).
#[test]
fn server_process() {
    e2e_tests::process::serve_if_asked();
}

const TREE: &str = r#"{"priority_experimental": {
    "children": {
        "p0": {"config": [{"weighted_target_experimental": {"targets": {
            "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
            "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]},
        "p1": {"config": [{"round_robin": {}}]}},
    "priorities": ["p0", "p1"]}}"#;

/// Calls, each with a deadline of 1 s, from 8 callers; counted by the zone of the
/// endpoint that answered. `halfway` is told when a third of them have finished.
async fn calls(balancer: &Balancer, n: u64, halfway: Arc<Notify>) -> (BTreeMap<String, u64>, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let left = Arc::new(AtomicU64::new(n));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = MyServiceClient::new(balancer.clone());
            let (left, sent, halfway) = (left.clone(), sent.clone(), halfway.clone());
            tokio::spawn(async move {
                let (mut zones, mut failed) = (BTreeMap::<String, u64>::new(), 0u64);
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let mut request = tonic::Request::new(HelloRequest {
                        name: "zone".into(),
                    });
                    request.set_timeout(Duration::from_secs(1));
                    match client.say_hello(request).await {
                        Ok(response) => {
                            let zone = response
                                .extensions()
                                .get::<PickedEndpoint>()
                                .and_then(|p| p.0.locality().map(|l| l.name().to_string()))
                                .unwrap_or_default();
                            *zones.entry(zone).or_default() += 1;
                        }
                        Err(status) => {
                            eprintln!("a call failed: {status}");
                            failed += 1;
                        }
                    }
                    if sent.fetch_add(1, Ordering::Relaxed) + 1 == n / 3 {
                        halfway.notify_one();
                    }
                }
                (zones, failed)
            })
        })
        .collect();
    let (mut zones, mut failed) = (BTreeMap::new(), 0);
    for worker in workers {
        let (z, f) = worker.await.expect("the caller ran");
        for (zone, n) in z {
            *zones.entry(zone).or_default() += n;
        }
        failed += f;
    }
    (zones, failed)
}

/// The share of `zone` in `zones`, in per cent.
fn share(zones: &BTreeMap<String, u64>, zone: &str) -> f64 {
    let total: u64 = zones.values().sum();
    100.0 * zones.get(zone).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

/// Kills `servers` while calls go on, and returns how many of those calls failed.
async fn kill_under_load(balancer: &Balancer, servers: &mut [&mut Server]) -> u64 {
    let halfway = Arc::new(Notify::new());
    let load = tokio::spawn({
        let (balancer, halfway) = (balancer.clone(), halfway.clone());
        async move { calls(&balancer, 1500, halfway).await }
    });
    // Kill in the middle of the load, once a third of it has been answered.
    halfway.notified().await;
    for server in servers.iter_mut() {
        server.kill();
    }
    let (_, failed) = load.await.expect("the load ran");
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_fail_over_by_priority_and_come_back_without_a_failed_call() {
    let mut a1 = Server::start(0);
    let mut a2 = Server::start(0);
    let mut b = Server::start(0);
    let c = Server::start(0);
    let at = |server: &Server, place: &str| -> Endpoint {
        format!("{}{place}", server.addr)
            .parse()
            .expect("an endpoint")
    };
    let endpoints = vec![
        at(&a1, "@zone-a"),
        at(&a2, "@zone-a"),
        at(&b, "@zone-b"),
        at(&c, "@zone-c#1"),
    ];
    let policy: Policy = TREE.parse().expect("the tree parses");
    let balancer = Balancer::builder(endpoints)
        .policy(policy)
        .seed(29)
        // Restarted servers are found within a moment, not the default's 1 s and up.
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_millis(200),
        })
        .build()
        .expect("the balancer builds");
    let ready = |n| {
        move |statuses: &[lb_core::EndpointStatus]| {
            statuses
                .iter()
                .filter(|s| s.connectivity == Connectivity::Ready)
                .count()
                == n
        }
    };
    let within = Duration::from_secs(10);
    wait_until(&balancer, within, "all four READY", ready(4)).await;

    // 1. All up: 3:1 between zones a and b, nothing to zone c.
    let (zones, failed) = calls(&balancer, 2000, Arc::default()).await;
    assert_eq!(failed, 0);
    assert!((share(&zones, "zone-a") - 75.0).abs() <= 5.0, "{zones:?}");
    assert!((share(&zones, "zone-b") - 25.0).abs() <= 5.0, "{zones:?}");
    assert_eq!(zones.get("zone-c"), None, "{zones:?}");

    // 2. Zone a's servers die under load: no call fails, and then zone b takes all.
    let failed = kill_under_load(&balancer, &mut [&mut a1, &mut a2]).await;
    assert_eq!(failed, 0, "calls failed while zone a went down");
    wait_until(&balancer, within, "zone a's endpoints out", ready(2)).await;
    let (zones, failed) = calls(&balancer, 500, Arc::default()).await;
    assert_eq!((failed, share(&zones, "zone-b")), (0, 100.0), "{zones:?}");

    // 3. Zone b dies too: priority 0 has failed, priority 1 (zone c) takes every call.
    let failed = kill_under_load(&balancer, &mut [&mut b]).await;
    assert_eq!(failed, 0, "calls failed while failing over to priority 1");
    wait_until(&balancer, within, "only zone c left", ready(1)).await;
    let (zones, failed) = calls(&balancer, 500, Arc::default()).await;
    assert_eq!((failed, share(&zones, "zone-c")), (0, 100.0), "{zones:?}");

    // 4. Zones a and b restart on their ports: the calls go back to priority 0.
    let _a1 = Server::start(a1.addr.port());
    let _a2 = Server::start(a2.addr.port());
    let _b = Server::start(b.addr.port());
    wait_until(&balancer, within, "all four READY again", ready(4)).await;
    let (zones, failed) = calls(&balancer, 2000, Arc::default()).await;
    assert_eq!(failed, 0);
    assert!((share(&zones, "zone-a") - 75.0).abs() <= 5.0, "{zones:?}");
    assert!((share(&zones, "zone-b") - 25.0).abs() <= 5.0, "{zones:?}");
    assert_eq!(zones.get("zone-c"), None, "{zones:?}");
    drop(c);
}
