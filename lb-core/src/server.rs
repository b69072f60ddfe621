//! Serving gRPC to whoever connects: a limit on everything that comes from outside.
//!
//! A gRPC server is an HTTP/2 server, and most of what can go wrong with one happens
//! before any call: a peer opens connections and never speaks (slowloris), opens
//! thousands and keeps them idle, fails its TLS handshake, or sends requests that are
//! not gRPC at all. tonic leaves those limits to the application; [`incoming`] and
//! [`GrpcOnlyLayer`] set them, for greeter-server and lb-proxy alike:
//!
//! | limit | default | beyond it |
//! |---|---|---|
//! | connections open at once | 4,096 ([`MAX_CONNECTIONS`]) | the connection is accepted and closed at once; logged and counted |
//! | TLS handshake | 10 s ([`crate::tls::HANDSHAKE_TIMEOUT`]) | closed; logged with the peer and the reason |
//! | from accept to the HTTP/2 preface | 10 s ([`PREFACE_TIMEOUT`]) | closed: a slowloris peer holds nothing for long (past the preface, a connection is bounded by the idle timeout, and each call by the server's request timeout) |
//! | no call on a connection | 5 min ([`IDLE_TIMEOUT`]) | closed once nothing is left to read (a client reconnects when it next needs to; lb-core's balancer at once); without a GOAWAY, as tonic does not hand a server its connections, so a call sent at that very moment is cut (and retried by a balancer that retries cut calls) |
//! | content-type not `application/grpc…` | — | HTTP 415, as the gRPC spec says |
//! | streams reset before the server took them | 4,096 per connection ([`MAX_PENDING_ACCEPT_RESETS`]) | GOAWAY `ENHANCE_YOUR_CALM` |
//!
//! Worked example: a peer opens 2,000 connections and sends one byte a second on each.
//! Each holds one of the 4,096 slots for at most 10 s, then the preface timeout closes
//! it; meanwhile every other client connects and calls as usual. A peer that opens
//! 20,000 connections gets 4,096 (minus what others hold) and the rest are closed as
//! soon as they are accepted, which costs the server a file descriptor for an instant
//! rather than memory for as long as the peer likes.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use lb_core::server::{ConnectionLimits, incoming};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let incoming = incoming(listener, ConnectionLimits::default(), None);
//! // Server::builder().layer(GrpcOnlyLayer).add_service(...)
//! //     .serve_with_incoming_shutdown(incoming, shutdown)
//! # drop(incoming); Ok(()) }
//! ```
//!
//! A side module for servers: it shares the transport's TLS settings. May import:
//! `transport`, `error`.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Instant, Sleep},
};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::{info, warn};

/// Connections one listener keeps open at once, by default.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a new connection may take to send the HTTP/2 preface (after its TLS
/// handshake, with TLS).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may carry no call before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Streams a client may reset before the server accepted them, per connection.
///
/// hyper's default is 20: a defence against the HTTP/2 "rapid reset" attack
/// (CVE-2023-44487). But a server that stalls for a few seconds (a GC pause, a
/// `SIGSTOP`, an overloaded host) sees exactly that pattern from honest clients:
/// every call whose deadline passed meanwhile is cancelled with `RST_STREAM` before
/// the server could accept it. A client with `C` calls in flight and deadline `D`
/// resets about `C × S / D` streams in a stall of `S` seconds: 64 callers at 200 ms
/// in a 3 s stall make 960. Beyond the limit the server answers `GOAWAY
/// ENHANCE_YOUR_CALM` and the calls still on the connection fail. 4,096 covers a
/// stall of 12 s at that rate and still bounds the attack (the memory of 4,096
/// reset streams per connection, on at most [`MAX_CONNECTIONS`] connections).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 4096;

/// The length of the HTTP/2 connection preface (`PRI * HTTP/2.0…`), which a client
/// must send first.
const PREFACE_LEN: usize = 24;

/// The limits [`incoming`] applies to each connection.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// From accept (or the end of the TLS handshake) to the HTTP/2 preface (zero:
    /// no limit).
    pub preface_timeout: Duration,
    /// A connection with no call for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            preface_timeout: PREFACE_TIMEOUT,
            idle_timeout: Some(IDLE_TIMEOUT),
            handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
        }
    }
}

/// What a listener has turned away or closed, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections accepted in all.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// TLS handshakes that failed or took too long.
    pub handshakes_failed: AtomicU64,
    /// Connections closed for sending no HTTP/2 preface in time.
    pub preface_timeouts: AtomicU64,
    /// Connections closed after carrying no call for the idle timeout.
    pub idle_closed: AtomicU64,
    /// Says so in the log, at most once a second.
    close_log: RateLimited,
}

/// The connections a listener accepts, with the [`ConnectionLimits`] applied, as
/// tonic's `serve_with_incoming` takes them. Ends when dropped (the server stopped).
pub struct Incoming {
    connections: mpsc::Receiver<Conn>,
    stats: Arc<ConnectionStats>,
}

impl Incoming {
    /// The listener's counters (shared: they go on changing).
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

/// Accepts connections on `listener` with `limits`, doing the TLS handshake first
/// when `tls` is set, on a task of its own (a slow handshake never holds up the next
/// accept).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<crate::tls::ServerTls>,
) -> Incoming {
    let stats = Arc::new(ConnectionStats::default());
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, limits, tls, stats.clone(), tx));
    Incoming {
        connections: rx,
        stats,
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<crate::tls::ServerTls>,
    stats: Arc<ConnectionStats>,
    tx: mpsc::Sender<Conn>,
) {
    let local = listener.local_addr().ok();
    let refusals = RateLimited::default();
    let accept_errors = RateLimited::default();
    let handshake_failures = Arc::new(RateLimited::default());
    let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return, // The server stopped.
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: it fails at once, so pause rather than
                // spin, and let the server's other tasks run meanwhile.
                accept_errors.warn(|more| {
                    warn!(listener = ?local, error = %err, more, "accept failed; pausing 50 ms")
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = stats.open.load(Ordering::Relaxed);
        if open >= limits.max_connections {
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            refusals.warn(|more| {
                warn!(%peer, listener = ?local, open, refused, more,
                    "connection refused: {} connections open, the limit (--max-connections)",
                    limits.max_connections)
            });
            drop(tcp);
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let slot = Slot::take(stats.clone());
        let _ = tcp.set_nodelay(true);
        match &acceptor {
            None => {
                let conn = Conn::new(Io::Plain(tcp), peer, &limits, slot);
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let limits = limits.clone();
                let failures = handshake_failures.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                    let reason = match handshake {
                        Ok(Ok(tls)) => {
                            let conn = Conn::new(Io::Tls(Box::new(tls)), peer, &limits, slot);
                            let _ = tx.send(conn).await;
                            return;
                        }
                        Ok(Err(err)) => crate::tls::describe_handshake_error(&err),
                        Err(_) => format!(
                            "no TLS handshake within {}",
                            humantime::format_duration(limits.handshake_timeout)
                        ),
                    };
                    let failed = slot.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed) + 1;
                    failures
                        .warn(|more| warn!(%peer, %reason, failed, more, "TLS handshake refused"));
                });
            }
        }
    }
}

/// One open connection's place under the limit, given back when it closes.
struct Slot {
    stats: Arc<ConnectionStats>,
}

impl Slot {
    fn take(stats: Arc<ConnectionStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self { stats }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Logs at most once a second, saying how many messages it held back meanwhile: a
/// flood of bad connections must not become a flood of log lines.
#[derive(Debug, Default)]
struct RateLimited {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl RateLimited {
    fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        log(self.held_back.swap(0, Ordering::Relaxed));
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a server's request handlers can learn of the connection a call came on
/// (tonic puts it in every request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    calls: Arc<Calls>,
}

/// Calls open on one connection, and since when it has had none.
#[derive(Debug)]
struct Calls {
    open: AtomicUsize,
    /// When the last call ended (milliseconds since the connection was accepted).
    idle_since_ms: AtomicU64,
    accepted_at: Instant,
}

impl Calls {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted_at.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Counts a call open on its connection until dropped.
struct CallGuard(Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // When idleness starts is written before the count can reach 0, so that the
        // idle timer never sees "no call" with an old start.
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection, plain or TLS, that enforces the preface and idle timeouts
/// on its reads.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Bytes of the preface still to come, and the deadline for them.
    preface_left: usize,
    preface: Option<Pin<Box<Sleep>>>,
    preface_timeout: Duration,
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl Conn {
    fn new(io: Io, remote_addr: SocketAddr, limits: &ConnectionLimits, slot: Slot) -> Self {
        let now = Instant::now();
        Self {
            io,
            info: ConnInfo {
                remote_addr,
                calls: Arc::new(Calls {
                    open: AtomicUsize::new(0),
                    idle_since_ms: AtomicU64::new(0),
                    accepted_at: now,
                }),
            },
            preface_left: PREFACE_LEN,
            // Zero: no preface timeout.
            preface: (!limits.preface_timeout.is_zero())
                .then(|| Box::pin(tokio::time::sleep(limits.preface_timeout))),
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.idle_timeout,
            idle: limits
                .idle_timeout
                .map(|idle| Box::pin(tokio::time::sleep_until(now + idle))),
            _slot: slot,
        }
    }

    /// An error that makes the HTTP/2 server close the connection, once counted.
    fn close(&mut self, why: &str, counter: fn(&ConnectionStats) -> &AtomicU64) -> io::Error {
        let stats = &self._slot.stats;
        counter(stats).fetch_add(1, Ordering::Relaxed);
        let peer = self.info.remote_addr;
        stats
            .close_log
            .warn(|more| info!(%peer, more, "closing connection: {why}"));
        io::Error::new(io::ErrorKind::TimedOut, why.to_string())
    }

    /// Whether the idle timeout has passed with no call open; re-arms the timer
    /// otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(idle)) = (self.idle_timeout, self.idle.as_mut()) else {
            return false;
        };
        while idle.as_mut().poll(cx).is_ready() {
            let calls = &self.info.calls;
            let next = if calls.open.load(Ordering::Acquire) > 0 {
                Instant::now() + timeout
            } else {
                let since = Duration::from_millis(calls.idle_since_ms.load(Ordering::Acquire));
                let due = calls.accepted_at + since + timeout;
                if Instant::now() >= due {
                    return true;
                }
                due
            };
            idle.as_mut().reset(next);
        }
        false
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Read first: what is already in the socket counts as in time. The timers
        // are looked at only when there is nothing to read (which also registers
        // their wakers).
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(result) = read {
            if this.preface.is_some() {
                let read = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(read);
                if this.preface_left == 0 {
                    this.preface = None;
                }
            }
            return Poll::Ready(result);
        }
        if let Some(preface) = this.preface.as_mut()
            && preface.as_mut().poll(cx).is_ready()
        {
            let why = format!(
                "no HTTP/2 preface within {}",
                humantime::format_duration(this.preface_timeout)
            );
            return Poll::Ready(Err(this.close(&why, |s| &s.preface_timeouts)));
        }
        if this.poll_idle(cx) {
            let why = "no call for the idle timeout";
            return Poll::Ready(Err(this.close(why, |s| &s.idle_closed)));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, data),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Answers anything that is not gRPC with HTTP 415, and counts each call as open on
/// its connection (for the idle timeout) until its response ends.
///
/// The gRPC spec: "If Content-Type does not begin with `application/grpc`, gRPC
/// servers SHOULD respond with HTTP status of 415 (Unsupported Media Type). This will
/// prevent other HTTP/2 clients from interpreting a gRPC error response, which uses
/// status 200 (OK), as successful." (`application/grpc-web` and `application/grpc+proto`
/// begin so too.)
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcOnlyLayer;

impl<S> Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;

    fn layer(&self, inner: S) -> GrpcOnly<S> {
        GrpcOnly { inner }
    }
}

/// The service [`GrpcOnlyLayer`] makes.
#[derive(Clone, Debug)]
pub struct GrpcOnly<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for GrpcOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.as_bytes().get(..16))
            .is_some_and(|start| start.eq_ignore_ascii_case(b"application/grpc"));
        if !grpc {
            let given = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return Box::pin(std::future::ready(Ok(unsupported_media_type(given))));
        }
        let guard = request.extensions().get::<ConnInfo>().map(|info| {
            info.calls.open.fetch_add(1, Ordering::AcqRel);
            CallGuard(info.calls.clone())
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| Body::new(Guarded { inner: body, guard })),
                None => response,
            })
        })
    }
}

fn unsupported_media_type(given: Option<String>) -> http::Response<Body> {
    let text = match given {
        Some(given) => format!(
            "content-type `{given}` is not gRPC: this server speaks gRPC only (application/grpc)\n"
        ),
        None => "no content-type: this server speaks gRPC only (application/grpc)\n".into(),
    };
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(text))));
    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted as open until it ends.
    struct Guarded {
        #[pin]
        inner: Body,
        guard: CallGuard,
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
