//! End to end: real greeter servers on 127.0.0.1:0, real gRPC calls through lb-core.

use std::time::Duration;

use e2e_tests::served_by;
use greeter_client::{LoadSpec, Report};
use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, Servers};
use lb_core::policy::{LeastConnectionsConfig, PickFirstConfig, RoundRobinConfig};
use lb_core::{Balancer, Endpoint, Policy};
use tonic::Code;

/// Three fast instances, plus `slow` with 20 ms of added latency when asked.
async fn fleet(fast: usize, slow: Option<Duration>) -> (Servers, Option<Servers>, Vec<Endpoint>) {
    let fast = greeter_server::spawn(Config::on_ports(&vec![0; fast]))
        .await
        .expect("fast servers start");
    let slow = match slow {
        Some(latency) => Some(
            greeter_server::spawn(Config::on_ports(&[0]).with_latency(latency))
                .await
                .expect("slow server starts"),
        ),
        None => None,
    };
    let mut endpoints: Vec<Endpoint> = fast
        .addrs()
        .iter()
        .map(|a| a.to_string().parse().expect("a bound address parses"))
        .collect();
    if let Some(slow) = &slow {
        endpoints.push(slow.addrs()[0].to_string().parse().expect("parses"));
    }
    (fast, slow, endpoints)
}

fn calls_to(report: &Report, address: &str) -> u64 {
    report
        .backends
        .iter()
        .find(|b| b.address == address)
        .map_or(0, |b| b.calls)
}

async fn load(endpoints: &[Endpoint], policy: Policy, requests: u64, concurrency: usize) -> Report {
    let mut spec = LoadSpec::new(endpoints.to_vec(), policy, requests);
    spec.concurrency = concurrency;
    spec.seed = Some(7);
    greeter_client::run(&spec)
        .await
        .expect("the balancer builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_lands_100_100_100_by_the_servers_own_word() {
    let (servers, _, endpoints) = fleet(3, None).await;
    let report = load(&endpoints, Policy::new(RoundRobinConfig::default()), 300, 8).await;

    assert_eq!(report.failed, 0, "{}", report.to_table());
    assert!(report.replies_ok, "every reply is `Hello, world!`");
    for endpoint in &endpoints {
        assert_eq!(
            calls_to(&report, &endpoint.to_string()),
            100,
            "{}",
            report.to_table()
        );
    }
    assert_eq!(report.backends.len(), 3, "no call came from anywhere else");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_the_slow_server_fewer_calls_than_round_robin() {
    let (fast, slow, endpoints) = fleet(2, Some(Duration::from_millis(20))).await;
    let slow_address = endpoints[2].to_string();

    let rr = load(&endpoints, Policy::new(RoundRobinConfig::default()), 300, 8).await;
    let lc = load(&endpoints, Policy::new(LeastConnectionsConfig {}), 300, 8).await;
    assert_eq!(rr.failed + lc.failed, 0);

    let (rr_slow, lc_slow) = (calls_to(&rr, &slow_address), calls_to(&lc, &slow_address));
    assert_eq!(rr_slow, 100, "round robin ignores speed: exactly a third");
    // A slow server keeps its calls in flight longer, so least_connections sees it busy
    // and sends elsewhere. Typically it gets 5-15 of 300; half of round robin's share
    // leaves a wide margin for a loaded machine.
    assert!(
        lc_slow * 2 < rr_slow,
        "least_connections sent {lc_slow} calls to the slow server, round robin {rr_slow}\n{}",
        lc.to_table()
    );
    fast.shutdown().await.expect("clean shutdown");
    slow.expect("spawned")
        .shutdown()
        .await
        .expect("clean shutdown");
}

#[tokio::test]
async fn replies_are_hello_name_and_name_the_server() {
    let (servers, _, endpoints) = fleet(2, None).await;
    let balancer = Balancer::builder(endpoints.clone())
        .policy(Policy::new(PickFirstConfig {}))
        .seed(1)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer);
    for name in ["world", "Rust", "负载均衡"] {
        let response = client
            .say_hello(HelloRequest { name: name.into() })
            .await
            .expect("the call succeeds");
        assert_eq!(response.get_ref().message, format!("Hello, {name}!"));
        // pick_first: always the first server.
        assert_eq!(served_by(&response), Some(endpoints[0].to_string()));
    }
    servers.shutdown().await.expect("clean shutdown");
}

/// A port that nothing listens on: bound by us, then released.
async fn dead_endpoint() -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string().parse().expect("parses")
}

#[tokio::test]
async fn a_call_to_a_server_that_is_down_names_it() {
    let dead = dead_endpoint().await;
    let balancer = Balancer::builder([dead.clone()])
        .seed(1)
        .build()
        .expect("builds");
    let mut client = MyServiceClient::new(balancer);
    let status = client
        .say_hello(HelloRequest {
            name: "anyone".into(),
        })
        .await
        .expect_err("nobody is listening");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains(&format!("endpoint {dead}")),
        "the error names the endpoint: {}",
        status.message()
    );
}

#[tokio::test]
async fn a_server_that_shuts_down_is_left_without_a_failed_call() {
    let (first, _, mut endpoints) = fleet(1, None).await;
    let (second, _, others) = fleet(1, None).await;
    endpoints.extend(others);
    let balancer = Balancer::builder(endpoints.clone())
        .policy(Policy::new(PickFirstConfig {}))
        .seed(3)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer.clone());
    let hello = || HelloRequest { name: "x".into() };
    let response = client
        .say_hello(hello())
        .await
        .expect("first server answers");
    assert_eq!(served_by(&response), Some(endpoints[0].to_string()));

    // A graceful shutdown says NOT_SERVING first: the balancer leaves the server before
    // it goes, and pick_first moves on without a single failed call.
    let mut changes = balancer.changes();
    first.shutdown().await.expect("clean shutdown");
    while balancer.endpoints()[0].connectivity == lb_core::Connectivity::Ready {
        changes.changed().await.expect("balancer alive");
    }
    for _ in 0..3 {
        let response = client.say_hello(hello()).await.expect("the second answers");
        assert_eq!(served_by(&response), Some(endpoints[1].to_string()));
    }
    second.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_count_in_flight_until_they_end_and_shutdown_lets_them_finish() {
    let servers =
        greeter_server::spawn(Config::on_ports(&[0]).with_latency(Duration::from_millis(300)))
            .await
            .expect("starts");
    let endpoint: Endpoint = servers.addrs()[0].to_string().parse().expect("parses");
    let balancer = Balancer::builder([endpoint])
        .seed(5)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;

    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut client = MyServiceClient::new(balancer.clone());
            tokio::spawn(async move {
                client
                    .say_hello(HelloRequest {
                        name: format!("caller {i}"),
                    })
                    .await
            })
        })
        .collect();
    // Wait until the server has received all 16 (its own counter, not a sleep).
    let mut received = servers.calls();
    received.wait_for(|&n| n >= 16).await.expect("server is up");
    assert_eq!(balancer.endpoints()[0].in_flight, 16);

    // Shut down while all 16 are still inside their 300 ms: they must all finish.
    let shutdown = tokio::spawn(servers.shutdown());
    for call in calls {
        let reply = call.await.expect("task").expect("in-flight call finishes");
        assert!(reply.into_inner().message.starts_with("Hello, caller "));
    }
    shutdown.await.expect("task").expect("graceful shutdown");
    assert_eq!(
        balancer.endpoints()[0].in_flight,
        0,
        "every guard was released"
    );
}

/// The README's "write your own policy" example, against real servers.
#[tokio::test]
async fn a_custom_picker_plugs_in() {
    use lb_core::{EndpointState, PickContext, PickError, Picker};

    /// Always the ready endpoint listed last.
    struct LastReady;

    impl Picker for LastReady {
        fn name(&self) -> &'static str {
            "last_ready"
        }
        fn pick(
            &self,
            endpoints: &[EndpointState],
            _: &mut PickContext<'_>,
        ) -> Result<usize, PickError> {
            (0..endpoints.len())
                .rev()
                .find(|&i| endpoints[i].is_ready())
                .ok_or_else(|| PickError::none_ready(endpoints))
        }
    }

    let (servers, _, endpoints) = fleet(3, None).await;
    let balancer = Balancer::builder(endpoints.clone())
        .picker(LastReady)
        .build()
        .expect("builds");
    assert_eq!(balancer.policy_name(), "last_ready");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer);
    for _ in 0..5 {
        let response = client
            .say_hello(HelloRequest { name: "me".into() })
            .await
            .expect("succeeds");
        assert_eq!(served_by(&response), Some(endpoints[2].to_string()));
    }
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_missed_deadline_is_deadline_exceeded_and_keeps_the_endpoint() {
    let (servers, slow, endpoints) = fleet(0, Some(Duration::from_millis(500))).await;
    let balancer = Balancer::builder(endpoints.clone())
        .seed(2)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let mut client = MyServiceClient::new(balancer.clone());
    let mut request = tonic::Request::new(HelloRequest {
        name: "hurry".into(),
    });
    request.set_timeout(Duration::from_millis(50));
    let status = client.say_hello(request).await.expect_err("too slow");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("endpoint {}", endpoints[0]))
    );
    // A slow endpoint is not a broken one.
    assert_eq!(
        balancer.endpoints()[0].connectivity,
        lb_core::Connectivity::Ready
    );
    servers.shutdown().await.expect("clean shutdown");
    slow.expect("spawned")
        .shutdown()
        .await
        .expect("clean shutdown");
}
