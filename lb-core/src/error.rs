//! The library's typed errors. Each names the thing that failed.

use crate::policy::Policy;

/// Errors from parsing configuration and building a [`Balancer`](crate::Balancer).
///
/// Errors of individual calls are [`tonic::Status`] values instead (see the
/// balancer's docs), because that is what a gRPC caller inspects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address in an endpoint list could not be parsed.
    #[error("invalid endpoint `{input}`: {reason}")]
    InvalidEndpoint {
        /// The text as the user wrote it.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A balancer needs at least one endpoint.
    #[error("no endpoints given (expected a list such as 127.0.0.1:50051,127.0.0.1:50052)")]
    NoEndpoints,
    /// A policy name that no picker answers to.
    #[error("unknown policy `{name}`; valid policies: {}", Policy::names().join(", "))]
    UnknownPolicy {
        /// The name as the user wrote it.
        name: String,
    },
    /// The address could not be turned into a tonic endpoint.
    #[error("endpoint {endpoint}: {source}")]
    Transport {
        /// The endpoint, as `host:port`.
        endpoint: String,
        /// What tonic said.
        #[source]
        source: tonic::transport::Error,
    },
}
