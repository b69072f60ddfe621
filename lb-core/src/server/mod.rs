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
//! Files: `accept.rs` (the accept loop, handshakes and the preface bounded), `conn.rs`
//! (one connection: its idle timer and its calls), `grpc_only.rs` (HTTP 415 for what
//! is not gRPC).
//!
//! A side module for servers: it shares the transport's TLS settings. May import:
//! `transport`, `error`.

mod accept;
mod conn;
mod grpc_only;

pub use accept::{Incoming, incoming};
pub use conn::{Conn, ConnInfo};
pub use grpc_only::{GrpcOnly, GrpcOnlyLayer};

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

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

/// Logs at most once a second, saying how many messages it held back meanwhile: a
/// flood of bad connections must not become a flood of log lines.
#[derive(Debug, Default)]
pub(crate) struct RateLimited {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl RateLimited {
    pub(crate) fn warn(&self, log: impl FnOnce(u64)) {
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
