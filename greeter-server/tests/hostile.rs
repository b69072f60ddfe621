//! Hostile input: whatever arrives from the network, the server stays up and answers
//! the next call.

use std::time::Duration;

use greeter_proto::{HelloRequest, HelloResponse, MyServiceClient};
use greeter_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, transport::Channel};

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

/// The server answers a normal call.
async fn still_answers(addr: std::net::SocketAddr) {
    let reply = MyServiceClient::new(channel(addr).await)
        .say_hello(HelloRequest { name: "ok".into() })
        .await
        .expect("the server still answers");
    assert_eq!(reply.into_inner().message, "Hello, ok!");
}

/// `HelloRequest` with `name` as raw bytes, to send what a `string` must not hold.
#[derive(Clone, PartialEq, prost::Message)]
struct RawHello {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_the_name_is_refused_and_nothing_breaks() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("starts");
    let addr = servers.addrs()[0];
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<RawHello, HelloResponse, _>(
            tonic::Request::new(RawHello {
                name: vec![0xff, 0xfe, 0x80],
            }),
            http::uri::PathAndQuery::from_static("/example.MyService/SayHello"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("not a string");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    still_answers(addr).await;
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http2_and_thousands_of_idle_connections() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("starts");
    let addr = servers.addrs()[0];

    // Not the HTTP/2 preface: the server closes the connection.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        &[0u8; 64][..],
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let _ = stream.write_all(garbage).await;
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "the server closed the connection");
    }

    // 10,000 connections opened and dropped without a word, 200 at a time (both ends
    // are in this process: 400 descriptors, well within the usual limit of 1,024).
    for _ in 0..50 {
        let mut open = Vec::with_capacity(200);
        for _ in 0..200 {
            open.push(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .expect("connects"),
            );
        }
        drop(open);
    }
    still_answers(addr).await;
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_beyond_the_limit_waits_its_turn() {
    // Each call takes 200 ms: 3,000 at once on one connection are far beyond the
    // 1,024 streams and 256 calls a connection may have at once.
    let servers =
        greeter_server::spawn(Config::on_ports(&[0]).with_latency(Duration::from_millis(200)))
            .await
            .expect("starts");
    let addr = servers.addrs()[0];
    let client = MyServiceClient::new(channel(addr).await);
    let calls: Vec<_> = (0..3_000)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .say_hello(HelloRequest {
                        name: format!("{i}"),
                    })
                    .await
            })
        })
        .collect();
    let mut answered = 0;
    for call in calls {
        if call.await.expect("no panic").is_ok() {
            answered += 1;
        }
    }
    assert_eq!(
        answered, 3_000,
        "every call waited its turn and was answered"
    );
    still_answers(addr).await;
    servers.shutdown().await.expect("clean shutdown");
}
