//! The test kit of grpc-lb-rs's end-to-end tests (the files under `tests/tests/`):
//! what several of them need, written once.
//!
//! - [`fleet`] starts greeter-servers on 127.0.0.1, ports chosen by the OS, and
//!   [`endpoints_of`] turns them into the balancer's endpoints.
//! - [`say_hello`] makes one call through a balancer; [`served_by`] reads which server
//!   answered, by the server's own word (its `x-served-by` metadata).
//! - [`wait_until`] waits for the balancer's endpoints to reach a state, woken by the
//!   balancer's changes (no polling, no sleeps), and fails naming what did not happen.
//! - [`calls_to`] reads how many calls the balancer sent to an endpoint.
//! - [`channel_to`] connects a plain tonic channel to an address (an lb-proxy's).
//! - [`process`] runs greeter-servers as processes of their own, to be SIGKILLed or
//!   stopped.

pub mod process;

use std::time::Duration;

use greeter_proto::{HelloRequest, HelloResponse, MyServiceClient};
use greeter_server::{Config, Servers};
use lb_core::{Balancer, Endpoint, EndpointStatus};

/// `n` greeter-servers on 127.0.0.1, each on a port the OS picked, made with `config`
/// (latency, errors, TLS, ...) and its ports replaced.
pub async fn fleet(n: usize, config: Config) -> (Servers, Vec<Endpoint>) {
    let config = Config {
        ports: vec![0; n],
        ..config
    };
    let servers = greeter_server::spawn(config).await.expect("servers start");
    let endpoints = endpoints_of(&servers);
    (servers, endpoints)
}

/// The addresses of in-process servers, as endpoints.
pub fn endpoints_of(servers: &Servers) -> Vec<Endpoint> {
    servers
        .addrs()
        .iter()
        .map(|a| a.to_string().parse().expect("a bound address parses"))
        .collect()
}

/// One `SayHello` call for `name` through `balancer`.
pub async fn say_hello(
    balancer: &Balancer,
    name: &str,
) -> Result<tonic::Response<HelloResponse>, tonic::Status> {
    MyServiceClient::new(balancer.clone())
        .say_hello(HelloRequest { name: name.into() })
        .await
}

/// The server's own name for itself, from the `x-served-by` response metadata.
pub fn served_by<T>(response: &tonic::Response<T>) -> Option<String> {
    let value = response.metadata().get("x-served-by")?;
    value.to_str().ok().map(String::from)
}

/// Waits until `check` holds for the balancer's endpoints, re-checking at each change
/// of theirs; fails after `within`, saying `what` did not happen and how they are.
pub async fn wait_until(
    balancer: &Balancer,
    within: Duration,
    what: &str,
    check: impl Fn(&[EndpointStatus]) -> bool,
) {
    let mut changes = balancer.changes();
    let waited = tokio::time::timeout(within, async {
        while !check(&balancer.endpoints()) {
            changes.changed().await.expect("the balancer is alive");
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "not {what} within {within:?}: {:?}",
        balancer.endpoints()
    );
}

/// Calls the balancer has sent to `endpoint` (attempts, retries included).
pub fn calls_to(balancer: &Balancer, endpoint: &Endpoint) -> u64 {
    balancer
        .endpoints()
        .iter()
        .find(|s| &s.endpoint == endpoint)
        .map_or(0, |s| s.calls)
}

/// A plain tonic channel to `addr` (an lb-proxy's, say), connected.
pub async fn channel_to(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("a valid uri")
        .connect()
        .await
        .expect("connects")
}
