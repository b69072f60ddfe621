//! The server's limits: each one set explicitly, each with the status it answers.
//!
//! tonic's own server defaults are permissive (no stream limit, no timeout, no
//! maximum connection age), and where it does enforce a limit its status is not the
//! one gRPC documents: a message over the size limit gets `OUT_OF_RANGE` where gRPC
//! says `RESOURCE_EXHAUSTED`, and its own timeout answers `CANCELLED`. So every limit
//! is set here, and [`LimitsLayer`] answers in gRPC's terms, naming the limit:
//!
//! | limit | default | beyond it |
//! |---|---|---|
//! | message size, either way | 4 MiB ([`MAX_MESSAGE_SIZE`]) | `RESOURCE_EXHAUSTED` "message larger than the server's limit of 4194304 bytes (4 MiB)" |
//! | time to answer a call | 30 s ([`REQUEST_TIMEOUT`]) | `DEADLINE_EXCEEDED` "no answer within the server's request timeout of 30s" |
//! | calls served at once per connection | 256 | later calls wait their turn |
//! | HTTP/2 streams open at once per connection | 1,024 | the client waits (HTTP/2 flow control) |
//! | request header size | 16 KiB | the stream is refused (HTTP/2) |
//! | idle connection check | HTTP/2 ping every 30 s, closed after 10 s unanswered | the connection is closed |
//! | connection age | none (`--max-connection-age`) | GOAWAY, then the calls in flight finish |
//!
//! The limits on connections themselves (how many, the TLS handshake, the HTTP/2
//! preface, idle connections, non-gRPC content types, streams reset before they were
//! accepted) are [`lb_core::server`]'s, shared with lb-proxy.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

/// The largest request or response message, in bytes (gRPC's usual default).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Calls served at once on one connection; more wait. Stops one client from taking
/// every worker.
pub const MAX_CONCURRENT_CALLS_PER_CONNECTION: usize = 256;

/// HTTP/2 streams a client may open at once on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The largest request header block, in bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// How long a call may take to be answered (its response headers), whatever its own
/// deadline says.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle connection is pinged, and how long the answer may take.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Gives every call at most `timeout` to be answered, and restates tonic's statuses
/// for limits in gRPC's terms.
#[derive(Clone, Debug)]
pub struct LimitsLayer {
    timeout: Duration,
}

impl LimitsLayer {
    /// A layer with this request timeout.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service [`LimitsLayer`] makes.
#[derive(Clone, Debug)]
pub struct Limits<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<http::Request<Body>> for Limits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let timeout = self.timeout;
        let answer = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(response)) => Ok(restate(response)),
                Ok(Err(err)) => Err(err),
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within the server's request timeout of {}",
                    humantime::format_duration(timeout)
                ))
                .into_http()),
            }
        })
    }
}

/// A message over the size limit: tonic answers `OUT_OF_RANGE` ("decoded message
/// length too large"); gRPC says `RESOURCE_EXHAUSTED`.
fn restate(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if out_of_range && too_large {
        let status = Status::new(
            Code::ResourceExhausted,
            format!(
                "message larger than the server's limit of {MAX_MESSAGE_SIZE} bytes ({} MiB)",
                MAX_MESSAGE_SIZE / (1024 * 1024)
            ),
        );
        let (parts, _) = status.into_http::<Body>().into_parts();
        for name in ["grpc-status", "grpc-message"] {
            if let Some(value) = parts.headers.get(name) {
                headers.insert(name, value.clone());
            }
        }
    }
    response
}
