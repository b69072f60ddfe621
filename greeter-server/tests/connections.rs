//! Limits on connections (lb_core::server): slowloris peers are closed by the preface
//! timeout, connections beyond the cap are refused while the open ones keep working,
//! idle connections are closed, and what is not gRPC gets HTTP 415.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, Servers};
use lb_core::server::{ConnectionLimits, ConnectionStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

async fn hello(channel: &Channel) -> String {
    MyServiceClient::new(channel.clone())
        .say_hello(HelloRequest { name: "ok".into() })
        .await
        .expect("answered")
        .into_inner()
        .message
}

async fn serve(limits: ConnectionLimits) -> Servers {
    let mut config = Config::on_ports(&[0]);
    config.connections = limits;
    greeter_server::spawn(config).await.expect("starts")
}

/// Waits (at most a minute: a bound on a hang, not a measurement) until `done` holds.
async fn until(what: &str, stats: &ConnectionStats, done: impl Fn(&ConnectionStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(stats) {
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server has closed `stream` (read returns the end, or an error).
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {} // The server's own HTTP/2 greeting, if it sent one.
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slowloris_connections_are_closed_by_the_preface_timeout() {
    let servers = serve(ConnectionLimits {
        preface_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    })
    .await;
    let addr = servers.addrs()[0];
    let good = channel(addr).await;
    // 2,000 peers that send one byte of the preface and then a byte a second: none
    // ever completes it. (Both ends are in this process: 4,000 descriptors.)
    let mut slow = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let mut stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(err) if err.raw_os_error() == Some(24) => {
                // EMFILE: this machine's open-file limit (often 1,024) is too low.
                eprintln!("SKIPPED: needs 4,000 open files here (ulimit -n): {err}");
                return;
            }
            Err(err) => panic!("connects: {err}"),
        };
        stream.write_all(b"P").await.expect("one byte");
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for stream in &mut slow {
                let _ = stream.write_all(b"R").await;
            }
        }
        let mut all_closed = true;
        for stream in &mut slow {
            all_closed &= closed_by_server(stream).await;
        }
        all_closed
    });
    // Meanwhile a real client is served as usual.
    assert_eq!(hello(&good).await, "Hello, ok!");
    assert!(
        trickle.await.expect("no panic"),
        "every slow peer was closed"
    );
    let stats = servers.connections(0).expect("instance 0");
    until("2,000 preface timeouts", stats, |s| {
        s.preface_timeouts.load(Ordering::Relaxed) >= 2_000
    })
    .await;
    assert_eq!(hello(&good).await, "Hello, ok!");
    assert_eq!(hello(&channel(addr).await).await, "Hello, ok!");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_while_the_open_ones_keep_working() {
    let servers = serve(ConnectionLimits {
        max_connections: 5,
        ..ConnectionLimits::default()
    })
    .await;
    let addr = servers.addrs()[0];
    let good = channel(addr).await;
    assert_eq!(hello(&good).await, "Hello, ok!");
    // Four more take the other slots (and hold them: their preface timeout is 10 s).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects"),
        );
    }
    let stats = servers.connections(0).expect("instance 0");
    until("5 open", stats, |s| s.open.load(Ordering::Relaxed) == 5).await;
    // The next ones are accepted and closed at once, and counted.
    for _ in 0..3 {
        let mut extra = tokio::net::TcpStream::connect(addr)
            .await
            .expect("accepted");
        assert!(closed_by_server(&mut extra).await);
    }
    assert_eq!(stats.refused.load(Ordering::Relaxed), 3);
    // The open connection was never disturbed.
    for _ in 0..10 {
        assert_eq!(hello(&good).await, "Hello, ok!");
    }
    // A slot given back is a slot for a newcomer.
    drop(held);
    until("slots given back", stats, |s| {
        s.open.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(hello(&channel(addr).await).await, "Hello, ok!");
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_calls_is_closed_after_the_idle_timeout_and_a_stream_keeps_one_open() {
    let servers = serve(ConnectionLimits {
        idle_timeout: Some(Duration::from_secs(1)),
        ..ConnectionLimits::default()
    })
    .await;
    let addr = servers.addrs()[0];
    // A health Watch is a call that stays open: its connection is never idle.
    let watching = channel(addr).await;
    let mut watch = tonic_health::pb::health_client::HealthClient::new(watching)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watching")
        .into_inner();
    assert!(watch.message().await.expect("an answer").is_some());
    // One call, then nothing: closed once the idle timeout has passed.
    let idle = channel(addr).await;
    assert_eq!(hello(&idle).await, "Hello, ok!");
    let stats = servers.connections(0).expect("instance 0");
    until("the idle connection closed", stats, |s| {
        s.idle_closed.load(Ordering::Relaxed) >= 1
    })
    .await;
    // The watched connection is still open: a health change still reaches it.
    servers.set_serving(false).await;
    let next = watch
        .message()
        .await
        .expect("still open")
        .expect("an answer");
    assert_eq!(
        next.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_grpc_gets_http_415() {
    let servers = serve(ConnectionLimits::default()).await;
    let addr = servers.addrs()[0];
    let channel = channel(addr).await;
    for content_type in [Some("application/json"), None, Some("text/plain")] {
        let mut request = http::Request::post(format!("http://{addr}/example.MyService/SayHello"));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"{\"name\": \"json\"}"),
            )))
            .expect("a request");
        let mut channel = channel.clone();
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut channel, cx))
            .await
            .expect("ready");
        let response = tower::Service::call(&mut channel, request)
            .await
            .expect("an HTTP answer");
        assert_eq!(
            response.status(),
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    // gRPC on the same connection is answered as ever.
    assert_eq!(hello(&channel).await, "Hello, ok!");
    servers.shutdown().await.expect("clean shutdown");
}
