//! The shortest path to the wire: every connection the balancer makes is hyper's HTTP/2
//! client, driven directly, with no tonic `Channel` in between.
//!
//! A tonic `Channel` puts several layers between a call and hyper, each for a job the
//! balancer already does itself:
//!
//! | in a `Channel` | what it does | here |
//! |---|---|---|
//! | `Buffer` (an mpsc queue and a worker task) | lets many callers share one service | every pick clones hyper's `SendRequest`, which is made to be shared |
//! | `Reconnect` | connects again at the next call after a loss | the endpoint's own task (`connection.rs`), with gRPC's backoff |
//! | `GrpcTimeout` | the `grpc-timeout` deadline | the attempt's own timer (`attempt.rs`) |
//! | boxed service and future, boxed response body | type erasure | one concrete body type each way |
//!
//! So an attempt goes from the pick straight to [`Wire::send`]: it sets the origin
//! (scheme and authority) and a user agent, and hands the request to the connection's
//! task through hyper's queue. The connection's end is seen at once, by the task that
//! runs it ([`Closed`]), not at the next call. tonic stays for what it is best at: the
//! generated clients, codecs and servers.
//!
//! What it saves, measured by `scripts/call-cost.sh` (instructions per call on the
//! client, one server, `pick_first`; docs/BENCHMARKS.md has the steps): at 16 callers a
//! call through a plain `Channel` costs about 60,500 instructions, through the balancer
//! over a `Channel` per endpoint it cost 69,900, and on this path it costs 58,700, with
//! the balancer's pick, retry bookkeeping and in-flight counting included.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderValue,
    header::USER_AGENT,
    uri::{Authority, Scheme},
};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::connector::Connector;
use super::errors::{any_cause, describe};
use super::streams::{SettingsReader, Streams};
use crate::{Endpoint, Error};

/// What every request says it comes from, unless the caller set its own.
const USER_AGENT_VALUE: HeaderValue =
    HeaderValue::from_static(concat!("grpc-rust-lb-core/", env!("CARGO_PKG_VERSION")));

/// An error while connecting, with its causes.
pub(crate) type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// How a connection is kept alive with HTTP/2 pings (see [`super::liveness`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
    /// Ping also while no call is open.
    pub while_idle: bool,
}

/// Where an endpoint's connections go and how they are opened.
#[derive(Clone)]
pub(crate) struct Target {
    connector: Connector,
    /// The endpoint's `http://host:port`, for the connector.
    uri: http::Uri,
    /// What every request carries as its `:scheme` (`https` with TLS) and `:authority`.
    scheme: Scheme,
    authority: Authority,
}

impl Target {
    pub(crate) fn new(endpoint: &Endpoint, connector: Connector, tls: bool) -> Result<Self, Error> {
        let invalid = || Error::InvalidEndpoint {
            input: endpoint.to_string(),
            reason: "not usable in a URI".into(),
        };
        let uri: http::Uri = endpoint.uri().parse().map_err(|_| invalid())?;
        let authority = uri.authority().cloned().ok_or_else(invalid)?;
        Ok(Self {
            connector,
            uri,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
        })
    }

    /// Opens one HTTP/2 connection (TCP, TLS if set, the HTTP/2 handshake) and starts
    /// the task that runs it. The caller bounds the time it may take. With `scaling`
    /// (more than one connection per endpoint allowed), the server's
    /// MAX_CONCURRENT_STREAMS is read from its SETTINGS frames as they pass.
    pub(crate) async fn connect(
        &self,
        keep_alive: KeepAlive,
        scaling: bool,
    ) -> Result<(Wire, Closed), ConnectError> {
        use tower::Service;
        let io = self.connector.clone().call(self.uri.clone()).await?;
        let streams = Streams::new();
        let io = SettingsReader::new(io.into_inner(), streams.clone(), scaling);
        let io = TokioIo::new(io);
        let (send, connection) = http2::Builder::new(Spawn)
            .timer(TokioTimer::new())
            .keep_alive_interval(keep_alive.interval)
            .keep_alive_timeout(keep_alive.timeout)
            .keep_alive_while_idle(keep_alive.while_idle)
            .handshake(io)
            .await?;
        let (closed, why) = oneshot::channel();
        // The connection's task: it reads and writes the socket for every call on it,
        // and ends when the connection does: the server closed it (after a GOAWAY, the
        // calls it took finish first), it broke, or every `Wire` is gone.
        tokio::spawn(async move {
            let end = match connection.await {
                Ok(()) => End::Closed("connection closed by the server".to_string()),
                Err(err) if closed_by_peer(&err) => End::Closed(format!(
                    "connection closed by the server: {}",
                    describe(&err)
                )),
                Err(err) => End::Broken(format!("connection lost: {}", describe(&err))),
            };
            let _ = closed.send(end);
        });
        let wire = Wire {
            send,
            streams,
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
        };
        Ok((wire, Closed(why)))
    }
}

/// hyper's executor: spawns each of its futures (one per call, one per connection) on
/// the Tokio runtime, boxed.
///
/// Boxed because hyper's futures are one enum whose largest variant is a whole
/// connection: spawned as they are, every call would copy a connection-sized future
/// into its task (measured: 2,800 instructions of `memcpy` per call); boxed, it is
/// written once, and the task holds a pointer.
#[derive(Clone, Copy)]
struct Spawn;

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// Whether a connection's error only says that the peer closed it (a server closing
/// an idle connection without a GOAWAY shows as the end of the stream, or as a write
/// that found the socket closed), rather than that it stopped answering (a keep-alive
/// ping not answered) or broke the protocol.
fn closed_by_peer(err: &hyper::Error) -> bool {
    !err.is_timeout()
        && any_cause(err, |io: &std::io::Error| {
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
}

/// How a connection ended, and why.
pub(crate) enum End {
    /// Closed by the server: after a GOAWAY, or an idle connection closed (a server that
    /// was killed closes its connections too; its next connection attempt fails).
    Closed(String),
    /// Broken: a keep-alive ping not answered, a protocol error.
    Broken(String),
}

/// Resolves, with the reason, when a connection has ended.
pub(crate) struct Closed(oneshot::Receiver<End>);

impl Closed {
    pub(crate) async fn wait(&mut self) -> End {
        (&mut self.0)
            .await
            .unwrap_or_else(|_| End::Broken("the connection's task is gone".to_string()))
    }
}

/// A handle to one open connection: cheap to clone (two reference counts), and every
/// clone sends on the same connection.
#[derive(Clone)]
pub(crate) struct Wire {
    send: http2::SendRequest<AttemptBody>,
    /// Its streams: how many are open, how many the server allows.
    pub streams: Arc<Streams>,
    scheme: Scheme,
    authority: Authority,
}

impl Wire {
    /// Sends `request` on this connection. The future owns what it needs: it can be
    /// kept after the handle is gone.
    pub(crate) fn send(
        &mut self,
        mut request: http::Request<AttemptBody>,
    ) -> impl Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send + 'static {
        let uri = std::mem::take(request.uri_mut());
        let mut parts = uri.into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and a path make a valid URI: this cannot fail.
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        request
            .headers_mut()
            .entry(USER_AGENT)
            .or_insert(USER_AGENT_VALUE);
        self.send.send_request(request)
    }
}

/// A `tower::Service` over one connection, for tonic's generated clients (the health
/// check's `Watch`): off the call path, so its future may be boxed.
impl tower::Service<http::Request<tonic::body::Body>> for Wire {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.send(request.map(AttemptBody::Body)))
    }
}

/// The body of one attempt's request: the request's own, or a copy of one kept for a
/// retry. One concrete type, so that hyper gets no box around it.
pub(crate) enum AttemptBody {
    /// A body complete when the call started, in one chunk (every unary call).
    One(Option<Bytes>),
    /// Anything else.
    Body(tonic::body::Body),
}

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        match self.get_mut() {
            Self::One(chunk) => {
                std::task::Poll::Ready(chunk.take().map(|chunk| Ok(http_body::Frame::data(chunk))))
            }
            Self::Body(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::One(chunk) => chunk.is_none(),
            Self::Body(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            // A lower bound, not an exact size: hyper would add a `content-length`
            // header for an exact one, which gRPC does not use (and which costs two
            // allocations per call to write).
            Self::One(chunk) => {
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(chunk.as_ref().map_or(0, |c| c.len() as u64));
                hint
            }
            Self::Body(body) => body.size_hint(),
        }
    }
}
