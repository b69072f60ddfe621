//! The proxy end to end: a plain tonic client with one channel to the proxy, real
//! backends behind it.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::Config;
use lb_core::policy::RoundRobinConfig;
use lb_core::{Balancer, Endpoint, Policy};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn proxy_over(endpoints: Vec<Endpoint>, policy: Policy) -> (lb_proxy::Running, Channel) {
    let balancer = Balancer::builder(endpoints)
        .policy(policy)
        .seed(31)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let proxy = lb_proxy::spawn("127.0.0.1:0".parse().expect("addr"), balancer)
        .await
        .expect("the proxy starts");
    let channel = Channel::from_shared(format!("http://{}", proxy.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    (proxy, channel)
}

fn endpoints_of(servers: &greeter_server::Servers) -> Vec<Endpoint> {
    servers
        .addrs()
        .iter()
        .map(|a| a.to_string().parse().expect("valid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_channel_to_the_proxy_is_balanced_per_call() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0, 0]))
        .await
        .expect("start");
    let endpoints = endpoints_of(&servers);
    let (proxy, channel) =
        proxy_over(endpoints.clone(), Policy::new(RoundRobinConfig::default())).await;
    let mut client = MyServiceClient::new(channel.clone());
    let mut counts = std::collections::HashMap::new();
    for i in 0..300 {
        let response = client
            .say_hello(HelloRequest {
                name: format!("{i}"),
            })
            .await
            .expect("answered through the proxy");
        let served_by = response.metadata().get("x-served-by").cloned();
        let served_by = served_by
            .and_then(|v| v.to_str().ok().map(String::from))
            .unwrap_or_default();
        assert_eq!(response.into_inner().message, format!("Hello, {i}!"));
        *counts.entry(served_by).or_insert(0) += 1;
    }
    for endpoint in &endpoints {
        assert_eq!(counts.get(&endpoint.to_string()), Some(&100), "{counts:?}");
    }

    // The proxy answers its own health, streaming Watch included.
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch opens")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("a message")
        .expect("not the end");
    assert_eq!(first.status(), ServingStatus::Serving);
    drop(watch);

    proxy.shutdown().await.expect("clean shutdown");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_errors_pass_through_unchanged() {
    let failing = greeter_server::spawn(Config::on_ports(&[0]).with_error_rate(1.0))
        .await
        .expect("start");
    let (proxy, channel) = proxy_over(
        endpoints_of(&failing),
        Policy::new(RoundRobinConfig::default()),
    )
    .await;

    // A backend's error status and message reach the caller as they were.
    let status = MyServiceClient::new(channel.clone())
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .expect_err("the backend fails every call");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "injected failure (--error-rate 1)");

    // A bidirectional stream (server reflection) goes through to the backend.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("the stream opens")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a message")
        .expect("not the end");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "example.MyService"));

    proxy.shutdown().await.expect("clean shutdown");
    failing.shutdown().await.expect("clean shutdown");
}

/// Many concurrent calls through one connection to one backend. A request's end can
/// reach the proxy as an empty DATA frame; relayed as such, h2 servers count it as
/// abuse and close the connection after 100 (GOAWAY `too_many_data_frames`), failing
/// every call on it. The proxy drops empty frames, so all 3,200 calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_calls_keep_the_backend_connection() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("start");
    let (proxy, channel) = proxy_over(
        endpoints_of(&servers),
        Policy::new(RoundRobinConfig::default()),
    )
    .await;
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let mut client = MyServiceClient::new(channel.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    client
                        .say_hello(HelloRequest {
                            name: format!("{i}"),
                        })
                        .await
                        .expect("answered through the proxy");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("every call succeeded");
    }
    proxy.shutdown().await.expect("clean shutdown");
    servers.shutdown().await.expect("clean shutdown");
}

/// Found by `scripts/fuzz.sh proxy_request` (its first input, the empty one): a
/// request without a path made tonic's channel panic in the task that every later
/// call on that backend connection needs, so one bad request broke the connection
/// for everybody. The balancer now answers it UNIMPLEMENTED and sends it nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_path_is_refused_and_breaks_nothing() {
    use tower::Service;
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("servers start");
    let balancer = Balancer::builder(endpoints_of(&servers))
        .seed(32)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let mut proxy = lb_proxy::Proxy::new(
        balancer.clone(),
        lb_proxy::RoutesBody::new(tonic::service::Routes::new(health)),
    );
    for path in ["", "*"] {
        let uri = http::Uri::builder()
            .path_and_query(path)
            .build()
            .expect("a URI");
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::empty())
            .expect("a request");
        let response = proxy.call(request).await.expect("an answer");
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path:?}: {status:?}"
        );
        assert!(
            status.message().contains("malformed method path"),
            "{status:?}"
        );
    }
    // The backend connection is unharmed: the next calls are answered.
    let mut client = MyServiceClient::new(balancer);
    for _ in 0..3 {
        client
            .say_hello(HelloRequest {
                name: "after".into(),
            })
            .await
            .expect("answered");
    }
    servers.shutdown().await.expect("clean shutdown");
}
