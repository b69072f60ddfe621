//! lb-proxy: one address in front, per-call balancing behind.
//!
//! A client that knows a single address (the article's Python client, `grpcurl`, a
//! service outside your control) gets no client-side balancing: its one HTTP/2
//! connection pins every call to one server, and a TCP (L4) balancer in between cannot
//! help, because it balances *connections*. This proxy speaks HTTP/2 on both sides and
//! balances *calls*: every call it receives is handed, as it is, to an
//! [`lb_core::Balancer`], which picks a backend per call with any policy.
//!
//! Nothing is decoded: the request and response bodies stream through, so unary and
//! streaming calls, metadata, trailers (the gRPC status) and deadlines (`grpc-timeout`)
//! all pass unchanged. The proxy answers `grpc.health.v1.Health` itself (SERVING), so
//! that it can be health-checked like any gRPC server.
//!
//! ```text
//!  client ──one connection──▶ lb-proxy ──per call──▶ Balancer ──▶ backend 1, 2, 3
//! ```
#![forbid(unsafe_code)]

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use lb_core::{
    Balancer,
    auth::{BearerToken, BearerTokenLayer},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::{Status, body::Body, transport::Server};
use tower::Layer;
use tower::Service;
use tracing::info;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The proxy failed while serving.
    #[error("proxy on {addr} failed: {source}")]
    Serve {
        /// The proxy's address.
        addr: SocketAddr,
        /// What tonic said.
        source: tonic::transport::Error,
    },
}

/// The proxy as a `tower::Service`: its own health service for
/// `/grpc.health.v1.Health/*`, the balancer for everything else.
#[derive(Clone)]
pub struct Proxy<H> {
    balancer: BearerToken<Balancer>,
    health: H,
}

impl<H> Proxy<H> {
    /// A proxy forwarding to `balancer` and answering health with `health`.
    pub fn new(balancer: Balancer, health: H) -> Self {
        Self {
            balancer: BearerTokenLayer::none().layer(balancer),
            health,
        }
    }

    /// The same, sending `token` to the backends with every call.
    pub fn with_token(self, token: &BearerTokenLayer) -> Self {
        Self {
            balancer: token.layer(self.balancer.inner().clone()),
            health: self.health,
        }
    }
}

/// The path prefix of the health service, which the proxy answers itself.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

impl<H> Service<http::Request<Body>> for Proxy<H>
where
    H: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = H::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, H::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), H::Error>> {
        // Both inner services are always ready (the balancer by design, tonic's
        // generated servers likewise); readiness is checked per call below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            let mut health = self.health.clone();
            return Box::pin(async move {
                futures::future::poll_fn(|cx| health.poll_ready(cx)).await?;
                health.call(request).await
            });
        }
        let call = self
            .balancer
            .call(request.map(|body| Body::new(WithoutEmptyData(body))));
        Box::pin(async move {
            Ok(match call.await {
                // The backend's answer, streamed through as it is.
                Ok(response) => response.map(Body::new),
                // No backend could take it: a gRPC error naming why, as a
                // trailers-only response, so the client sees a proper status.
                Err(status) => status.into_http(),
            })
        })
    }
}

/// A request body relayed without its empty DATA frames.
///
/// An HTTP/2 client may end its request with an empty DATA frame, and the server side
/// hands that on as an empty chunk. Relayed as it is, it becomes an empty DATA frame
/// *before* the end of the stream, which h2 servers count as abuse (a flood of empty
/// frames is a known denial-of-service): after 100 on one connection, h2 closes it with
/// GOAWAY `ENHANCE_YOUR_CALM` (`too_many_data_frames`). An empty chunk carries nothing,
/// so it is dropped here.
struct WithoutEmptyData(Body);

impl http_body::Body for WithoutEmptyData {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        loop {
            match std::task::ready!(Pin::new(&mut self.0).poll_frame(cx)) {
                Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    /// The proxy's own health: told NOT_SERVING at shutdown, which also ends the
    /// health Watch streams of callers (a balancer in front of the proxy keeps one
    /// open, and a graceful shutdown waits for every stream to end).
    health: tonic_health::server::HealthReporter,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets calls in flight finish, and returns.
    pub async fn shutdown(mut self) -> Result<(), ProxyError> {
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health.clear_service_status("").await;
        self.stop.send_replace(true);
        self.wait().await
    }

    /// Waits until the proxy stops.
    pub async fn wait(self) -> Result<(), ProxyError> {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ProxyError::Serve {
                addr: self.addr,
                source,
            }),
            Err(_) => Ok(()),
        }
    }
}

/// Listens on `addr` (port 0: any free port) and forwards every call through
/// `balancer`.
pub async fn spawn(addr: SocketAddr, balancer: Balancer) -> Result<Running, ProxyError> {
    spawn_with(addr, balancer, Options::default()).await
}

/// How the proxy serves its callers.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve TLS (mutual TLS if it names a client CA; see
    /// [`lb_core::tls::server_config`]). How the proxy reaches its backends, over TLS
    /// or not, is the balancer's setting ([`lb_core::BalancerBuilder::tls`]).
    pub tls: Option<lb_core::tls::ServerTls>,
    /// Limits on the connections callers open (how many, how long before the HTTP/2
    /// preface, how long idle). See [`lb_core::server`].
    pub connections: lb_core::server::ConnectionLimits,
    /// Record the calls it receives (`grpc_server_call_*`; the balancer's own
    /// per-backend metrics are [`lb_core::metrics::BalancerMetrics`]).
    pub metrics: Option<lb_core::metrics::ServerMetrics>,
    /// The bearer token sent to the backends with every call (default: none; a
    /// caller's own `authorization` is passed on).
    pub token: BearerTokenLayer,
}

/// [`spawn`], with [`Options`].
pub async fn spawn_with(
    addr: SocketAddr,
    balancer: Balancer,
    options: Options,
) -> Result<Running, ProxyError> {
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Callers' cancellations after a backend stall must not cost every call on
        // their connection: see lb_core::server::MAX_PENDING_ACCEPT_RESETS.
        .http2_max_pending_accept_reset_streams(Some(lb_core::server::MAX_PENDING_ACCEPT_RESETS));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ProxyError::Bind { addr, source })?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let health = tonic::service::Routes::new(health);
    let proxy = Proxy::new(balancer, RoutesBody(health)).with_token(&options.token);
    let (stop, mut stopped) = watch::channel(false);
    info!(%addr, "lb-proxy listening: every call is balanced over the backends");
    let task = tokio::spawn(async move {
        server
            .layer(lb_core::server::GrpcOnlyLayer)
            .layer(match &options.metrics {
                Some(metrics) => metrics.layer(addr),
                None => lb_core::metrics::ServerMetricsLayer::off(),
            })
            .serve_with_incoming_shutdown(
                proxy,
                lb_core::server::incoming(listener, options.connections, options.tls),
                async move {
                    let _ = stopped.wait_for(|&stop| stop).await;
                },
            )
            .await
    });
    Ok(Running {
        addr,
        health: reporter,
        stop,
        task,
    })
}

/// tonic's `Routes` (here: the health service) with its error type made concrete.
#[derive(Clone)]
pub struct RoutesBody(tonic::service::Routes);

impl RoutesBody {
    /// Wraps `routes` (tonic services, such as the health service).
    pub fn new(routes: tonic::service::Routes) -> Self {
        Self(routes)
    }
}

impl Service<http::Request<Body>> for RoutesBody {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <tonic::service::Routes as Service<http::Request<Body>>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call =
            <tonic::service::Routes as Service<http::Request<Body>>>::call(&mut self.0, request);
        Box::pin(call)
    }
}
