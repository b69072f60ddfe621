//! A connection the server closes in good order is replaced at once: a server that
//! closes idle connections (lb-core's own servers do after 5 minutes) is not a
//! failing server, and must not be backed off from.

use std::time::Duration;

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, Connectivity, Endpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_when_idle_is_replaced_at_once() {
    let mut config = greeter_server::Config::on_ports(&[0]);
    // Longer than the backoff's first delay (1 s): the connection "lasted".
    config.connections.idle_timeout = Some(Duration::from_millis(1500));
    let servers = greeter_server::spawn(config).await.expect("starts");
    let endpoint: Endpoint = servers.addrs()[0].to_string().parse().expect("valid");
    // No health checks and no call: nothing is ever answered on the connection (an
    // endpoint kept in reserve, say), which must not make it look hung.
    let balancer = Balancer::builder([endpoint])
        .policy("pick_first".parse().expect("a policy"))
        .health_check(None)
        .seed(1)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(10)).await;

    // The server closes the idle connection after 1.5 s. Every state
    // the endpoint passes through until it is READY on a second connection is looked
    // at; a backoff would show as TRANSIENT_FAILURE for at least 0.8 s.
    let mut changes = balancer.changes();
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            changes.changed().await.expect("balancer alive");
            let status = balancer.endpoints().remove(0);
            assert_ne!(
                status.connectivity,
                Connectivity::TransientFailure,
                "backed off after a clean close: {status:?}"
            );
            if status.connects >= 2 && status.connectivity == Connectivity::Ready {
                return status;
            }
        }
    })
    .await
    .expect("reconnected");
    assert_eq!(status.connect_failures, 0, "{status:?}");
    assert!(status.disconnections >= 1, "{status:?}");
    MyServiceClient::new(balancer.clone())
        .say_hello(HelloRequest { name: "b".into() })
        .await
        .expect("answered on the new connection");
    servers.shutdown().await.expect("clean shutdown");
}
