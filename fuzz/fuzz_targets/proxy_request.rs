//! lb-proxy's handling of a request from the network: any path, any headers (the
//! hashing policies read `x-lb-key`; `grpc-timeout` sets the deadline), any body,
//! forwarded through the proxy's balancer (ring_hash) to a real greeter-server on
//! loopback. Whatever the request, the proxy answers (a gRPC status at worst) within
//! its time, never panics, and keeps serving the next request.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use libfuzzer_sys::{arbitrary, fuzz_target};
use tonic::body::Body;
use tower::Service;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

type Proxy = lb_proxy::Proxy<lb_proxy::RoutesBody>;

/// What lives for the whole run: the servers and the proxy's health reporter are kept
/// (not leaked: LeakSanitizer would rightly complain).
struct Setup {
    runtime: tokio::runtime::Runtime,
    proxy: Proxy,
    _servers: greeter_server::Servers,
    _health: tonic_health::server::HealthReporter,
}

/// One runtime, server and proxy for the whole run (the per-input cost is the call).
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (proxy, servers, reporter) = runtime.block_on(async {
            let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0]))
                .await
                .expect("servers start");
            let endpoints = lb_core::parse_endpoint_list(&servers.endpoints_list()).expect("valid");
            let balancer = lb_core::Balancer::builder(endpoints)
                .policy("ring_hash".parse().expect("a policy"))
                .seed(1)
                .build()
                .expect("builds");
            balancer.wait_settled(Duration::from_secs(5)).await;
            let (reporter, health) = tonic_health::server::health_reporter();
            let proxy = lb_proxy::Proxy::new(
                balancer,
                lb_proxy::RoutesBody::new(tonic::service::Routes::new(health)),
            );
            (proxy, servers, reporter)
        });
        Setup {
            runtime,
            proxy,
            _servers: servers,
            _health: reporter,
        }
    })
}

fuzz_target!(|input: Input| {
    let Setup { runtime, proxy, .. } = setup();
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    // What an HTTP/2 server would not pass on (an invalid path or header) is not a
    // request the proxy can ever see.
    let Ok(uri) = http::Uri::builder()
        .path_and_query(input.path.as_str())
        .build()
    else {
        return;
    };
    request = request.uri(uri);
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(Body::new(http_body_util::Full::new(Bytes::from(
        input.body,
    )))) else {
        return;
    };
    let mut proxy = proxy.clone();
    runtime.block_on(async move {
        let answer = tokio::time::timeout(Duration::from_secs(35), async {
            let response = proxy.call(request).await.expect("the proxy always answers");
            // Read the whole answer, trailers included.
            let _ = response.into_body().collect().await;
        })
        .await;
        assert!(answer.is_ok(), "no answer within 35 s");
    });
});
