//! The balancer's timers, in paused time: how long a call waits for an endpoint that
//! is still connecting (the queue timeout, or the call's own deadline if sooner).
//! Tokio's clock is paused, so the waits take no real time and are measured exactly.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, Connectivity};
use tokio::{net::TcpListener, time::Instant};
use tonic::Code;

/// A server that accepts connections and never says a word: its endpoint stays
/// CONNECTING (waiting for the health check's first answer) for as long as the
/// connect timeout allows.
async fn silent_server() -> (TcpListener, lb_core::Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let endpoint = listener
        .local_addr()
        .expect("has an address")
        .to_string()
        .parse()
        .expect("valid");
    (listener, endpoint)
}

/// Accepts and holds every connection until the test ends.
fn hold_connections(listener: TcpListener) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_the_queue_timeout_for_an_endpoint_still_connecting() {
    let (listener, endpoint) = silent_server().await;
    hold_connections(listener);
    let balancer = Balancer::builder([endpoint.clone()])
        .queue_timeout(Duration::from_secs(4))
        .connect_timeout(Duration::from_secs(60))
        .seed(1)
        .build()
        .expect("builds");
    let mut client = MyServiceClient::new(balancer.clone());

    let start = Instant::now();
    let status = client
        .say_hello(HelloRequest { name: "q".into() })
        .await
        .expect_err("no endpoint became ready");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(4),
        "the queue timeout, exactly"
    );
    assert!(
        status.message().contains("none became ready within 4s"),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains(&format!("endpoint {endpoint}: CONNECTING"))
    );
    assert_eq!(
        balancer.endpoints()[0].connectivity,
        Connectivity::Connecting,
        "still trying: the call gave up, the endpoint did not"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shorter_deadline_wins_and_is_deadline_exceeded() {
    let (listener, endpoint) = silent_server().await;
    hold_connections(listener);
    let balancer = Balancer::builder([endpoint])
        .queue_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(60))
        .seed(2)
        .build()
        .expect("builds");
    let mut client = MyServiceClient::new(balancer);
    let mut request = tonic::Request::new(HelloRequest { name: "q".into() });
    request.set_timeout(Duration::from_millis(1500));

    let start = Instant::now();
    let status = client.say_hello(request).await.expect_err("out of time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_cannot_connect_fails_calls_at_once() {
    // Bound, then let go: nothing listens there, so the connection is refused.
    let endpoint: lb_core::Endpoint = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        listener
            .local_addr()
            .expect("address")
            .to_string()
            .parse()
            .expect("valid")
    };
    let balancer = Balancer::builder([endpoint])
        .queue_timeout(Duration::from_secs(10))
        .seed(3)
        .build()
        .expect("builds");
    let states = balancer.wait_settled(Duration::from_secs(5)).await;
    assert_eq!(states[0].connectivity, Connectivity::TransientFailure);
    let start = Instant::now();
    let status = MyServiceClient::new(balancer)
        .say_hello(HelloRequest { name: "q".into() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no wait: every endpoint has failed"
    );
}
