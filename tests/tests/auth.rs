//! Token auth: a server that requires `authorization: Bearer <token>`, and a balancer
//! that sends it.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::Config;
use lb_core::{Balancer, Endpoint, auth::BearerTokenLayer};
use tonic::{Code, transport::Channel};
use tower::Layer;

async fn call(
    client: &mut MyServiceClient<Channel>,
    token: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(HelloRequest { name: "t".into() });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    client
        .say_hello(request)
        .await
        .map(|r| r.into_inner().message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_token_gets_an_answer() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]).with_token("s3cret"))
        .await
        .expect("starts");
    let addr = servers.addrs()[0];
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let mut client = MyServiceClient::new(channel.clone());

    let missing = call(&mut client, None).await.expect_err("refused");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("Bearer"), "{missing:?}");
    for wrong in ["s3cre", "s3cret!", "S3CRET", ""] {
        let status = call(&mut client, Some(wrong)).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{wrong:?}");
    }
    assert_eq!(
        call(&mut client, Some("s3cret")).await.expect("answered"),
        "Hello, t!"
    );

    // Health stays open for probes and for the balancer's health checks.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers without a token");

    // A balancer with the token: every call gets through; without it: none.
    let endpoint: Endpoint = addr.to_string().parse().expect("valid");
    let with = Balancer::builder([endpoint.clone()])
        .seed(41)
        .build()
        .expect("builds");
    with.wait_settled(Duration::from_secs(5)).await;
    let token = BearerTokenLayer::new("s3cret").expect("a valid token");
    let mut balanced = MyServiceClient::new(token.layer(with));
    for _ in 0..3 {
        balanced
            .say_hello(HelloRequest { name: "b".into() })
            .await
            .expect("the balancer sends the token");
    }
    let without = Balancer::builder([endpoint])
        .seed(42)
        .build()
        .expect("builds");
    without.wait_settled(Duration::from_secs(5)).await;
    let status = MyServiceClient::new(without)
        .say_hello(HelloRequest { name: "b".into() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    assert!(BearerTokenLayer::new("with space").is_err());
    servers.shutdown().await.expect("clean shutdown");
}
