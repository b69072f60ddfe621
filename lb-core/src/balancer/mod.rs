//! The balancer: a `tower::Service` that sends each gRPC call to the endpoint a
//! [`Picker`](crate::Picker) chooses, and keeps calls alive while endpoints come and go.
//!
//! # How a call flows
//! Each step is one file of this module:
//!
//! 1. A tonic client (`MyServiceClient<Balancer>`) hands the [`Balancer`] an
//!    `http::Request` (`handle.rs`: the handle and its `tower::Service`; it was built
//!    in `builder.rs`).
//! 2. The balancer loads the current snapshot (the usable endpoints, their
//!    connections and a picker built for them; an `Arc` swapped whenever something
//!    changes, so reading it takes no lock) and asks the picker for an index
//!    (`pick.rs`; the snapshot is the endpoint pool's, `pool.rs`). When no endpoint is
//!    usable, the call waits while some endpoint is still connecting.
//! 3. It counts the call as in flight on that endpoint and sends it on the endpoint's
//!    own connection (`attempt.rs`; straight to hyper's HTTP/2 client, `wire.rs`), whose
//!    response body drops the count, and records the call's latency and outcome, when
//!    it ends.
//! 4. If the attempt fails before any server saw it (its connection already gone, the
//!    stream refused, GOAWAY), or was cut off with its connection, it is retried on
//!    another endpoint, within the [`RetryPolicy`], its
//!    budget and the call's deadline (`retry.rs`), sending again the request body kept
//!    for that (`replay.rs`) and what is left of the deadline (`headers.rs`). Errors
//!    name the endpoint. A method with an entry in the
//!    [service config](crate::service_config) is retried as it says, with backoff and
//!    the server's pushback, or hedged (`hedge.rs`).
//! 5. A connection with as many calls open as its server allows hands the call to
//!    another connection to the same endpoint, opened when needed ([`streams`], gRFC
//!    A105).
//!
//! # Endpoints
//! Each endpoint is a subchannel (`subchannel.rs`) with a task that connects it,
//! watches its health, and reconnects it with gRPC's connection
//! [`Backoff`](crate::Backoff) (`connection.rs`, over `connector.rs`). Endpoints can be
//! added and removed at any time ([`Balancer::add_endpoint`],
//! [`Balancer::remove_endpoint`], [`Balancer::set_endpoints`], [`Balancer::follow`]):
//! the pool applies each change in one step, and a removed endpoint finishes its calls
//! in flight. Outlier detection ([`outlier`], counted in `ejection.rs`) ejects
//! endpoints whose calls keep failing.
//!
//! A server that hangs (connected, never answering) is noticed by [`liveness`]
//! pings while calls wait on it; its connection is then dropped, its calls retried
//! elsewhere, and it returns once it answers its health check again.
//!
//! When no endpoint is usable, a call waits while some endpoint is still CONNECTING (up
//! to [`BalancerBuilder::queue_timeout`], or its deadline), as gRPC does, and fails at
//! once with `UNAVAILABLE` when all of them have failed; the message lists every
//! endpoint with its state and last error. Failing at once still lets the runtime run
//! (the reconnect timers above all).

mod attempt;
mod builder;
mod connection;
mod connector;
mod ejection;
mod handle;
#[cfg(feature = "metrics")]
pub(crate) use handle::Router;
mod headers;
mod hedge;
pub mod liveness;
pub mod outlier;
mod pick;
mod pool;
mod replay;
pub mod retry;
pub mod streams;
mod subchannel;
mod wire;

use std::sync::{Mutex, PoisonError, RwLock};

pub use attempt::{PickedEndpoint, ResponseBody};
pub use builder::BalancerBuilder;
pub use connector::connect;
pub use handle::Balancer;
pub use liveness::Liveness;
pub use outlier::{FailurePercentage, OutlierDetection, SuccessRate};
pub use retry::RetryPolicy;
pub use subchannel::{EndpointStatus, Health};

/// An error and its causes, as [`crate::error::describe`] writes them; a TLS refusal
/// is said first and plainly ("certificate required" is what a user can act on, not
/// the chain of transport errors around it).
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    if let Some(tls) = crate::tls::explain(err) {
        return tls;
    }
    crate::error::describe(err)
}

/// Locks a mutex that guards plain data, ignoring poisoning: a panic elsewhere cannot
/// leave an `Option<Wire>` half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

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
