//! The server's limits answer with gRPC's statuses and name the limit; the server
//! keeps serving afterwards.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::Config;
use tonic::{Code, transport::Channel};

async fn client(addr: std::net::SocketAddr) -> MyServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects");
    // The client's own limit is raised, so that the server's is what is tested.
    MyServiceClient::new(channel).max_encoding_message_size(64 * 1024 * 1024)
}

#[tokio::test]
async fn a_5_mib_name_is_resource_exhausted_and_the_server_goes_on() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("starts");
    let mut client = client(servers.addrs()[0]).await;
    let status = client
        .say_hello(HelloRequest {
            name: "x".repeat(5 * 1024 * 1024),
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 4194304 bytes (4 MiB)"),
        "{status:?}"
    );
    let reply = client
        .say_hello(HelloRequest {
            name: "next".into(),
        })
        .await
        .expect("the server still answers");
    assert_eq!(reply.into_inner().message, "Hello, next!");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_call_slower_than_the_request_timeout_is_deadline_exceeded() {
    let mut config = Config::on_ports(&[0]).with_latency(Duration::from_secs(30));
    config.request_timeout = Duration::from_millis(200);
    let servers = greeter_server::spawn(config).await.expect("starts");
    let mut client = client(servers.addrs()[0]).await;
    let status = client
        .say_hello(HelloRequest {
            name: "slow".into(),
        })
        .await
        .expect_err("timed out");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("request timeout of 200ms"),
        "{status:?}"
    );
    servers.shutdown().await.expect("clean shutdown");
}
