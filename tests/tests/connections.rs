//! More than one connection to an endpoint when one is full (gRFC A105): a server that
//! allows 10 streams per connection, and 100 long-running streaming calls (health
//! `Watch`es, which stay open) through one balancer.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_core::{Balancer, Endpoint, service_config::ServiceConfig};
use tonic::{Request, Status, service::interceptor::InterceptedService};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A server that allows 10 streams per connection, serving `grpc.health.v1.Health`; it
/// records the client address (one per connection) of every call.
async fn server_of_10_streams() -> (Endpoint, Arc<Mutex<HashSet<SocketAddr>>>) {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    let record = move |request: Request<()>| -> Result<Request<()>, Status> {
        if let Some(peer) = request.remote_addr() {
            seen.lock().expect("not poisoned").insert(peer);
        }
        Ok(request)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(10)
            .add_service(InterceptedService::new(health, record))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr.to_string().parse().expect("valid"), peers)
}

/// Opens `n` `Watch` streams through `balancer` and returns those whose first answer
/// came within `within`, still open.
async fn open_watches(
    balancer: &Balancer,
    n: usize,
    within: Duration,
) -> Vec<tonic::Streaming<tonic_health::pb::HealthCheckResponse>> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut client = HealthClient::new(balancer.clone());
        calls.spawn(async move {
            let mut stream = client
                .watch(HealthCheckRequest::default())
                .await
                .expect("the watch opens")
                .into_inner();
            let first = stream.message().await.expect("an answer");
            assert!(first.is_some(), "the first answer");
            stream
        });
    }
    let mut open = Vec::new();
    let _ = tokio::time::timeout(within, async {
        while let Some(done) = calls.join_next().await {
            open.push(done.expect("the call's task"));
        }
    })
    .await;
    open
}

async fn balancer(endpoint: Endpoint, config: &str) -> Balancer {
    let config: ServiceConfig = config.parse().expect("valid");
    let balancer = Balancer::builder([endpoint])
        .service_config(config)
        .health_check(None)
        .seed(3)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    balancer
}

/// With `connectionScaling` up to 10 connections: all 100 streams are open at once,
/// over 10 connections to the one endpoint (the server saw 10 client addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_open_at_once_over_ten_connections() {
    let (endpoint, peers) = server_of_10_streams().await;
    let balancer = balancer(
        endpoint,
        r#"{"connectionScaling": {"maxConnectionsPerSubchannel": 10}}"#,
    )
    .await;
    let open = open_watches(&balancer, 100, Duration::from_secs(20)).await;
    assert_eq!(open.len(), 100, "every stream answered and open");
    let status = &balancer.endpoints()[0];
    assert_eq!(status.connections, 10, "{status:?}");
    assert_eq!(status.in_flight, 100, "one endpoint, 100 calls in flight");
    assert_eq!(
        peers.lock().expect("not poisoned").len(),
        10,
        "10 connections"
    );
    drop(open);
}

/// Without it (one connection, as before and as gRPC's default): 10 streams open, the
/// others wait inside the connection, however idle the server is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_the_rest_back() {
    let (endpoint, _peers) = server_of_10_streams().await;
    let balancer = balancer(endpoint, "{}").await;
    let open = open_watches(&balancer, 20, Duration::from_millis(500)).await;
    assert_eq!(open.len(), 10, "the server's limit, on one connection");
    assert_eq!(balancer.endpoints()[0].connections, 1);
}
