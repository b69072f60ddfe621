//! Noticing a server that stopped answering while calls wait on it.
//!
//! A process that is stopped (`kill -STOP`), deadlocked or swapped out keeps its TCP
//! connections open: the kernel still acknowledges every byte, so neither a call nor
//! the health stream ever fails. Without help, a hung server keeps its share of the
//! picks until each call's own deadline expires.
//!
//! HTTP/2 has the tool for this: a `PING` frame, which the peer's HTTP/2 layer must
//! answer. The balancer sends one only when it has reason to, as gRPC's keepalive
//! does (gRFC A8) but tighter:
//!
//! - on the endpoint's *call* connection, only while calls are in flight on it, and
//!   only when nothing at all (no response, no data) has been read from it for
//!   [`Liveness::interval`];
//! - if no answer comes within [`Liveness::timeout`], the connection is dead: the
//!   endpoint leaves the rotation at once, the calls on that connection are retried
//!   elsewhere like any call cut by a broken connection, and the endpoint's task
//!   reconnects and waits for the server's health check before it is READY again.
//!
//! A busy, healthy connection never pings (responses keep arriving); an idle one never
//! pings either (nothing is in flight). That is why the health `Watch` stream, which is
//! open for the connection's whole life, runs on a connection of its own: on the call
//! connection it would count as a call in flight forever.
//!
//! Worked example, with the defaults (500 ms, 1 s): 16 callers, one of three servers
//! stopped at t = 0. Its last response was read just before; at t = 0.5 s the balancer
//! pings, at t = 1.5 s the ping is overdue and the connection is declared dead. The
//! five or so calls stuck on it are retried on the other two servers and succeed well
//! within a 2 s deadline; no new call is sent to the stopped server until it answers its
//! health check again.
//!
//! # Against grpc-go, Java and C-core servers
//! Those servers allow, by default, one ping per 5 minutes while they have sent
//! nothing, and close the connection with `GOAWAY ENHANCE_YOUR_CALM` ("too_many_pings")
//! after the third one too many. Pings come only when nothing has been read for the
//! interval, so a busy connection never gets there; but a call that keeps such a server
//! silent for about 4 intervals (2 s with the defaults: a slow unary call, a quiet
//! server stream) does, and the calls on that connection are cut (and retried, if
//! cut calls are). For such servers and such calls, allow the pings on the server
//! (grpc-go: `keepalive.EnforcementPolicy{MinTime}`; C-core:
//! `grpc.http2.min_ping_interval_without_data_ms`, `grpc.http2.max_ping_strikes`), or
//! raise the interval (`--liveness-interval 10s`, which also makes a hang take longer
//! to notice), or turn liveness off. When a call does see the complaint, the balancer
//! doubles that endpoint's interval for its next connections, once per connection, as
//! gRFC A8 asks; but only the calls opened after the GOAWAY see it, so this is a
//! safety net, not a cure. The greeter-server and lb-proxy of this project accept any
//! ping rate.

use std::time::Duration;

/// When to probe a connection whose calls get no answer. See the [module
/// docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Ping after this long without reading anything while calls are in flight.
    pub interval: Duration,
    /// The connection is dead if the ping is not answered within this.
    pub timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
        }
    }
}

/// The longest interval the doubling after `too_many_pings` reaches: 5 minutes, the
/// minimum gRPC servers accept by default.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// How the health connection is kept alive while idle: pinged only as often as gRPC
/// servers allow by default (every 5 minutes), so that a peer that vanished without
/// closing its connections (power loss, a partition) is noticed eventually even when
/// no call goes to it.
pub(crate) const HEALTH_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(300);
/// See [`HEALTH_KEEPALIVE_INTERVAL`].
pub(crate) const HEALTH_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
