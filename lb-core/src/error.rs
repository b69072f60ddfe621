//! The library's typed errors. Each names the thing that failed.
//!
//! The ground floor. May import: nothing of this crate.

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
    /// A connection to an endpoint could not be made (see
    /// [`balancer::connect`](crate::balancer::connect)).
    #[error("endpoint {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why not, e.g. "connection refused" or a TLS refusal.
        reason: String,
    },
    /// A balancer needs at least one endpoint.
    #[error("no endpoints given (expected a list such as 127.0.0.1:50051,127.0.0.1:50052)")]
    NoEndpoints,
    /// A policy name that no registered policy answers to.
    #[error("unknown policy `{name}`; valid policies: {valid}")]
    UnknownPolicy {
        /// The name as the user wrote it.
        name: String,
        /// The registered names, comma-separated.
        valid: String,
    },
    /// A policy registered under a name that cannot be used.
    #[error("policy name `{name}`: {reason}")]
    InvalidPolicyName {
        /// The name.
        name: &'static str,
        /// Why not (taken by another policy, not snake_case).
        reason: String,
    },
    /// Service-config JSON that could not be used.
    #[error("invalid service config: {reason}")]
    InvalidServiceConfig {
        /// What is wrong, naming the policy or field.
        reason: String,
    },
    /// A target URI that names no resolver, or a bad one.
    #[error("invalid target `{target}`: {reason}")]
    InvalidTarget {
        /// The target as the user wrote it.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoints file that could not be read or parsed.
    #[error("endpoints file {}: {reason}", path.display())]
    EndpointsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the line where it can tell.
        reason: String,
    },
    /// A discovery service (etcd) could not be reached or answered an error.
    #[error("{target}: {reason}")]
    Discovery {
        /// The target, as `etcd://host:port/prefix`.
        target: String,
        /// What failed.
        reason: String,
    },
    /// A bearer token that cannot be sent, or cannot be read.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What is wrong (naming the file, if it came from one).
        reason: String,
    },
    /// The metrics endpoint could not listen.
    #[error("metrics on {addr}: {reason}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why not (a busy port is named).
        reason: String,
    },
    /// A certificate or key that cannot be used.
    #[error("{}{reason}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Tls {
        /// The file it came from (empty if given as bytes).
        path: String,
        /// What is wrong with it.
        reason: String,
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

/// An error and its causes, `outer: inner: innermost`.
///
/// tonic's transport errors say only "transport error" in their own `Display` and keep
/// the useful part ("tcp connect error: Connection refused") in their sources. For a
/// TLS refusal, `tls::explain` (feature `tls`) says it more plainly ("the server
/// requires a client certificate"); the balancer's errors try that first.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_the_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&inner), "refused");
        let outer = Error::InvalidEndpoint {
            input: "x".into(),
            reason: "bad".into(),
        };
        assert_eq!(describe(&outer), "invalid endpoint `x`: bad");
    }
}
