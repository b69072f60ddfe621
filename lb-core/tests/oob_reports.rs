//! Out-of-band load reports (gRFC A51, A58): with `enableOobLoadReport`, the balancer
//! opens `OpenRcaService/StreamCoreMetrics` on each endpoint's connection and weighs the
//! endpoints by what the streams say. The servers here send no per-call trailers (the
//! reporting layer is left out), so the weights can only have come from the streams.

use std::{net::SocketAddr, time::Duration};

use greeter_proto::{HelloRequest, HelloResponse, MyService, MyServiceClient, MyServiceServer};
use lb_core::orca::server::LoadReporter;
use lb_core::{Balancer, Endpoint, Policy};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

struct Hello;

#[tonic::async_trait]
impl MyService for Hello {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        Ok(Response::new(HelloResponse {
            message: format!("Hello, {}!", request.into_inner().name),
        }))
    }
}

/// A server reporting `utilization` out of band (every 100 ms at most), and the
/// reporter, whose calls the test counts itself.
async fn server(utilization: f64) -> (SocketAddr, LoadReporter) {
    let reporter = LoadReporter::new()
        .with_application_utilization(move || utilization)
        .with_min_report_interval(Duration::from_millis(100));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let router = tonic::transport::Server::builder()
        .add_service(MyServiceServer::new(Hello))
        .add_service(reporter.service());
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    (addr, reporter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_come_from_the_out_of_band_streams() {
    // The same calls per second on both; the first at a quarter of the utilisation:
    // four times the capacity.
    let (a, reporter_a) = server(0.25).await;
    let (b, reporter_b) = server(1.0).await;
    // A steady load of 1,000 "calls" a second on each, counted by the test (bounded:
    // 10 s at most).
    let load = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        for _ in 0..1000 {
            ticks.tick().await;
            for _ in 0..10 {
                reporter_a.record(true);
                reporter_b.record(true);
            }
        }
    });
    let endpoints: Vec<Endpoint> = [a, b]
        .iter()
        .map(|addr| addr.to_string().parse().expect("valid"))
        .collect();
    let policy: Policy = r#"{"weighted_round_robin": {"enableOobLoadReport": true,
        "oobReportingPeriod": "0.1s", "blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}"#
        .parse()
        .expect("valid");
    let balancer = Balancer::builder(endpoints)
        .policy(policy)
        .health_check(None)
        .seed(3)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(10)).await;
    let mut client = MyServiceClient::new(balancer.clone());
    // Calls make the picker read the weights again; until both endpoints' streams have
    // reported a closed window (500 ms), the static weights (1, 1) apply.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let weights = loop {
        client
            .say_hello(HelloRequest { name: "oob".into() })
            .await
            .expect("answered");
        let weights: Vec<f64> = balancer
            .endpoints()
            .iter()
            .map(|s| s.weight.unwrap_or(0.0))
            .collect();
        if weights[0] != weights[1] || tokio::time::Instant::now() > deadline {
            break weights;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    load.abort();
    let ratio = weights[0] / weights[1];
    assert!(
        (3.0..5.5).contains(&ratio),
        "a quarter of the utilisation at the same rate: four times the weight, {weights:?}"
    );
    // Each weight is calls per second over utilisation: about 1,000 / 0.25 and 1,000.
    assert!(
        (500.0..2000.0).contains(&weights[1]),
        "reported, not static: {weights:?}"
    );
}
