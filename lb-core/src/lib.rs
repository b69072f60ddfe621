//! # lb-core: client-side gRPC load balancing
//!
//! gRPC balances load on the *client*: the client knows several servers, keeps a
//! connection to each, and chooses one for every call. That choice is the *policy*:
//! round robin (轮询), random (随机), least connections (最少连接), or pick first (no
//! balancing at all). This crate is that machinery, small enough to read in an evening.
//!
//! # Layout
//! A call flows through three roles, as in gRPC itself: a *resolver* says which
//! endpoints there are, the *balancer* keeps them connected, and a *picker* chooses one
//! for each call. In the code, those roles are floors of one house, each a folder that
//! imports only the floors below it (each module's docs say which, after "May
//! import:", and `cargo run -p layers` checks that every import keeps to it):
//!
//! ```text
//!  6  balancer/     the Balancer (a tower::Service) and its builder          ◀── resolver/
//!  5  call/         pick, attempt, response body, retry, hedge, replay            metrics/ (on top)
//!  4  subchannels/  each endpoint's connections and health; the pool; ejection
//!  3  transport/    connect (TCP, TLS), one HTTP/2 connection, liveness pings
//!  2  service_config  gRPC's service-config JSON into plain types
//!  1  policy/       pure pickers, leaf and parent: pick(&endpoints, ctx) -> index
//!  0  the ground    endpoint, locality, state, clock, error, latency, histogram, backoff,
//!                   json, sync, orca (load-report messages)
//! ```
//!
//! Following one call down: `balancer/handle.rs` takes it, `call/pick.rs` asks the
//! snapshot's picker (`policy/`) for an endpoint, `call/attempt.rs` sends it on that
//! endpoint's connection (`subchannels/` → `transport/wire.rs`), `call/response.rs`
//! counts it in flight until its body ends, and `call/retry.rs` sends it elsewhere if
//! it never reached a server. docs/ARCHITECTURE.md follows it file by file.
//!
//! - [`endpoint`]: `host:port` addresses and `--servers` lists, with clear errors;
//!   [`locality`]: where an endpoint runs (region, zone, sub-zone) and its priority.
//! - [`state`]: the live, lock-free state of one endpoint ([`EndpointState`]): its
//!   connectivity (IDLE, CONNECTING, READY, TRANSIENT_FAILURE) and since when it is
//!   READY, calls in flight, its latency ([`latency`], on the [`clock`]), durations
//!   ([`histogram`]), recent success rate and reported load.
//! - [`policy`]: the [`Picker`] trait, the policy registry ([`Policy`],
//!   [`policy::PolicyConfig`], [`policy::register`]) and one file per policy, with
//!   [`policy::slow_start`] for the policies that ramp new endpoints up. Pickers do no
//!   I/O, so they are unit-tested with hand-made endpoint states and a seeded RNG.
//! - [`service_config`]: gRPC's service config: the policy, and per method deadlines,
//!   retries and hedging.
//! - [`transport`]: one HTTP/2 connection to one address: [`tls`], and
//!   [`transport::liveness`] pings for connections whose calls get no answer.
//! - [`subchannels`]: every endpoint kept connected and health-checked, the pool that
//!   applies endpoint changes in one step, and outlier detection.
//! - [`call`]: one call's way through: picked, sent, counted in flight until its body
//!   ends, retried or hedged, its errors naming the endpoint.
//! - [`balancer`]: the [`Balancer`], a `tower::Service` that any tonic-generated client
//!   runs on, and its [`BalancerBuilder`].
//! - [`backoff`]: gRPC's connection backoff, used when reconnecting.
//! - [`resolver`]: target URIs (`host:port` lists, watched files, DNS, etcd) and the
//!   endpoint changes they produce, which the balancer follows.
//! - [`auth`]: a bearer token on every call, as a tower layer; token files.
//! - [`metrics`]: Prometheus metrics per endpoint, and a `/metrics` endpoint to serve them.
//! - [`orca`]: ORCA load reports (gRFC A51), which `weighted_round_robin` turns into
//!   weights; with `server`, the layer and service that send them from any tonic server.
//! - `server`: for servers (greeter-server, lb-proxy, yours): the limits on what
//!   connects (how many, the handshake, the HTTP/2 preface, idle time, non-gRPC
//!   requests).
//!
//! # Features
//! | feature | default | adds |
//! |---|---|---|
//! | `dns` | on | `dns:///name:port` targets (hickory) |
//! | `tls` | on | TLS and mutual TLS to the endpoints (rustls): `BalancerBuilder::tls`, [`tls`] |
//! | `metrics` | on | [`metrics`]: Prometheus metrics per endpoint, a `/metrics` endpoint |
//! | `server` | off | `server` (connection limits), `tls::server_config`, the server metrics layer, `orca::server` (load reports), etcd `Registration`; implies `tls` |
//! | `etcd` | off | `etcd://` discovery ([`resolver::etcd`]); etcd-client's build script needs a `protoc` |
//!
//! The default features build with nothing but Rust. `default-features = false` gives
//! the pickers and the balancer over tonic alone; a `dns:///` or `etcd://` target then
//! still parses, and resolving it says which feature to turn on.
//!
//! # Example: a balanced client
//! Three real servers on loopback, one tonic client on top of the balancer:
//!
//! ```
//! use greeter_proto::{HelloRequest, MyServiceClient};
//! use lb_core::{Balancer, PickedEndpoint};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0, 0])).await?;
//! # let servers_list = servers.endpoints_list();
//!
//! // "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053", or wherever yours listen.
//! let endpoints = lb_core::parse_endpoint_list(&servers_list)?;
//! let balancer = Balancer::builder(endpoints)
//!     .policy("round_robin".parse()?)
//!     .seed(7)
//!     .build()?;
//! balancer.wait_settled(std::time::Duration::from_secs(5)).await;
//!
//! let mut client = MyServiceClient::new(balancer);
//! let mut seen = std::collections::HashSet::new();
//! for _ in 0..3 {
//!     let response = client
//!         .say_hello(HelloRequest { name: "world".into() })
//!         .await?;
//!     let picked = response.extensions().get::<PickedEndpoint>().cloned();
//!     seen.insert(picked.expect("the balancer tags every response").0);
//!     assert_eq!(response.into_inner().message, "Hello, world!");
//! }
//! assert_eq!(seen.len(), 3); // round robin: one call to each server
//! # servers.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod balancer;
pub mod call;
pub mod clock;
pub mod endpoint;
pub mod error;
pub mod histogram;
pub mod json;
pub mod latency;
pub mod locality;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod orca;
pub mod policy;
pub mod resolver;
#[cfg(feature = "server")]
pub mod server;
pub mod service_config;
pub mod state;
pub mod subchannels;
mod sync;
pub mod transport;

pub use backoff::Backoff;
pub use balancer::{
    Balancer, BalancerBuilder, EndpointStatus, Liveness, OutlierDetection, PickedEndpoint,
    RetryPolicy,
};
pub use endpoint::{Endpoint, parse_endpoint_list};
pub use error::Error;
pub use policy::{BuildPicker, PickContext, PickCounters, PickError, Picker, Policy, PolicyConfig};
pub use state::{Connectivity, EndpointState, FAILURE_MEMORY, InFlightGuard, ReportedLoad};
pub use transport::tls;
