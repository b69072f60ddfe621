//! Layer 6, the balancer: a `tower::Service` that sends each gRPC call to the endpoint a
//! [`Picker`](crate::Picker) chooses, and keeps calls alive while endpoints come and go.
//!
//! This is the top floor, and the smallest: [`Balancer::builder`] takes the endpoints
//! (or a resolver, [`Balancer::following`]) and every setting (`builder.rs`), and
//! builds the layers below; the [`Balancer`] handle (`handle.rs`) is what a tonic
//! client calls, and what a program asks about its endpoints.
//!
//! # How a call flows
//! One file per step, from the top floor down:
//!
//! 1. A tonic client (`MyServiceClient<Balancer>`) hands the [`Balancer`] an
//!    `http::Request` (`balancer/handle.rs`: the handle and its `tower::Service`).
//! 2. The balancer loads the current snapshot (the usable endpoints, their
//!    connections and a picker built for them; an `Arc` swapped whenever something
//!    changes, so reading it takes no lock) and asks the picker for an index
//!    (`call/pick.rs`; the snapshot is the endpoint pool's, `subchannels/pool.rs`).
//!    When no endpoint is usable, the call waits while some endpoint is still
//!    connecting.
//! 3. It counts the call as in flight on that endpoint and sends it on the endpoint's
//!    own connection (`call/attempt.rs`; straight to hyper's HTTP/2 client,
//!    `transport/wire.rs`), whose response body (`call/response.rs`) drops the count,
//!    and records the call's latency and outcome, when it ends.
//! 4. If the attempt fails before any server saw it (its connection already gone, the
//!    stream refused, GOAWAY), or was cut off with its connection, it is retried on
//!    another endpoint, within the [`RetryPolicy`], its budget and the call's deadline
//!    (`call/retry.rs`, `call/budget.rs`), sending again the request body kept for that
//!    (`call/replay.rs`) and what is left of the deadline (`call/headers.rs`). Errors
//!    name the endpoint. A method with an entry in the
//!    [service config](crate::service_config) is retried as it says, with backoff and
//!    the server's pushback, or hedged (`call/hedge.rs`).
//! 5. A connection with as many calls open as its server allows hands the call to
//!    another connection to the same endpoint, opened when needed
//!    ([`subchannels::scaling`](crate::subchannels), gRFC A105).
//!
//! # Endpoints
//! Each endpoint is a subchannel (`subchannels/subchannel.rs`) with a task that
//! connects it, watches its health, and reconnects it with gRPC's connection
//! [`Backoff`](crate::Backoff) (`subchannels/connection.rs`, over
//! `transport/connector.rs`). Endpoints can be added and removed at any time
//! ([`Balancer::add_endpoint`], [`Balancer::remove_endpoint`],
//! [`Balancer::set_endpoints`], [`Balancer::follow`]): the pool applies each change in
//! one step, and a removed endpoint finishes its calls in flight. Outlier detection
//! ([`OutlierDetection`], counted in `subchannels/ejection.rs`) ejects endpoints whose
//! calls keep failing.
//!
//! A server that hangs (connected, never answering) is noticed by
//! [`Liveness`] pings while calls wait on it; its connection is then dropped, its
//! calls retried elsewhere, and it returns once it answers its health check again.
//!
//! When no endpoint is usable, a call waits while some endpoint is still CONNECTING (up
//! to [`BalancerBuilder::queue_timeout`], or its deadline), as gRPC does, and fails at
//! once with `UNAVAILABLE` when all of them have failed; the message lists every
//! endpoint with its state and last error. Failing at once still lets the runtime run
//! (the reconnect timers above all).
//!
//! May import: `call`, `subchannels`, `transport`, `policy`, `service_config`,
//! `resolver`, `state`, `endpoint`, `error`, `backoff`, `latency`, `sync`.

mod builder;
mod handle;

pub use crate::call::{PickedEndpoint, ResponseBody, RetryPolicy};
pub use crate::subchannels::{
    EndpointStatus, FailurePercentage, Health, OutlierDetection, SuccessRate,
};
pub use crate::transport::{Liveness, connect};
pub use builder::BalancerBuilder;
pub use handle::Balancer;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[tokio::test]
    async fn an_empty_endpoint_list_is_an_error() {
        let err = Balancer::builder(Vec::new()).build().unwrap_err();
        assert!(matches!(err, Error::NoEndpoints));
    }
}
