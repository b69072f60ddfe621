//! One endpoint (a *subchannel*, in gRPC's words): its connection, its counters and
//! what it reports. The task that keeps it connected is in `connection.rs`.
//!
//! Each endpoint is a `Subchannel` with a task that keeps it connected:
//!
//! ```text
//!        ┌──────────── backoff ◀─────────────┐
//!        ▼                                    │ connect failed
//!  CONNECTING ──connected──▶ (health Watch) ──┼──▶ READY ◀──▶ TRANSIENT_FAILURE
//!        ▲                   first answer     │    SERVING      NOT_SERVING
//!        └── IDLE ◀── connection lost or closed / health stream ended (lost at once,
//!                     or without an answer: TRANSIENT_FAILURE and backoff)
//! ```
//!
//! With health checking on, a connected endpoint stays CONNECTING until the server's
//! first `grpc.health.v1.Health/Watch` answer (gRFC A17), goes READY on SERVING, and
//! TRANSIENT_FAILURE on anything else; a server without the health service
//! (UNIMPLEMENTED) counts as healthy. Because the Watch stream stays open on a
//! connection to the server, a server that dies is noticed at once, without waiting
//! for a call to fail.
//!
//! With health checking on, an endpoint has two HTTP/2 connections: one for calls,
//! which is pinged while calls wait on it (see [`super::liveness`]), and one for the
//! Watch stream, which would otherwise count as a call in flight forever. They are
//! made together, and the loss of either ends both: policies see one endpoint. The
//! call connection's end is seen the moment it happens, by the task that runs it
//! (`wire.rs`), even while no call is on it; the health connection's, by its stream.
//!
//! Every change rebuilds the `Snapshot` (READY, not ejected endpoints and their
//! picker) and wakes calls waiting for one.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tracing::warn;

use super::outlier::OutlierDetection;
use crate::transport::connector::Connector;
use crate::transport::liveness::{
    HEALTH_KEEPALIVE_INTERVAL, HEALTH_KEEPALIVE_TIMEOUT, Liveness, MAX_INTERVAL,
};
use crate::transport::wire::{KeepAlive, Target, Wire};
use crate::{Backoff, Connectivity, Endpoint, EndpointState, Error};

/// Settings every subchannel shares.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    /// The service name to health-check (`""`: the whole server), or `None`: off.
    pub health_service: Option<String>,
    pub outlier: Option<OutlierDetection>,
    pub latency_decay: Duration,
    pub seed: u64,
    /// TLS for every connection, or `None`: plaintext HTTP/2.
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// When to ping a call connection whose calls get no answer (`None`: never).
    pub liveness: Option<Liveness>,
    /// Call connections per endpoint at most (gRFC A105): more than one are opened
    /// only when every open one has as many calls as the server allows.
    pub max_connections: u32,
}

/// One endpoint, its connection and its counters.
pub(crate) struct Subchannel {
    pub state: EndpointState,
    /// Where and how to connect (address, TLS); each connection adds its own
    /// keepalive settings.
    pub target: Target,
    /// The liveness ping interval for the next call connection, in nanoseconds:
    /// doubled each time the server complains of too many pings (gRFC A8).
    pub liveness_interval: AtomicU64,
    /// The last connection generation the interval was doubled for: once per
    /// connection, however many of its calls saw the complaint.
    pub calmed: AtomicU64,
    /// Answers received (calls and health), to tell a connection that served from one
    /// that only hung: see `ConnectionTask::run`.
    pub answers: AtomicU64,
    /// The connection while connected, with its generation (connections made so far),
    /// so that a failure seen on an old connection cannot tear down a newer one.
    pub connection: Mutex<Option<(Wire, u64)>>,
    /// Connections beyond the first, opened when every one was full (gRFC A105; see
    /// `streams.rs`), with the generation of the first connection they belong to.
    pub extra: Arc<Mutex<Vec<(Wire, u64)>>>,
    /// Held while one more connection is being opened (one attempt at a time, held by
    /// the attempt itself, which no call's deadline cuts short); when the last attempt
    /// failed.
    pub scaling: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
    pub last_error: Mutex<Option<String>>,
    /// The generation of the connection a call found gone or going. A value, not a
    /// one-shot signal: a report about an older connection must not tear down a newer.
    pub broken: watch::Sender<u64>,
    /// Set when the endpoint leaves the balancer: its task ends.
    pub removed: watch::Sender<bool>,
    // Outlier detection.
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub consecutive_failures: AtomicU32,
    /// When it was ejected (clock nanoseconds); 0 = not ejected.
    pub ejected_at: AtomicU64,
    pub times_ejected: AtomicU32,
    pub ejections: AtomicU64,
    /// Calls sent here, and calls retried elsewhere after failing here.
    pub calls: AtomicU64,
    pub retries: AtomicU64,
    /// Calls that ended well, or as a failure of the endpoint (for metrics; the
    /// outlier counters above are reset every interval).
    pub calls_ok: AtomicU64,
    pub calls_failed: AtomicU64,
    /// Connection attempts that succeeded and failed, and connections lost.
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub disconnections: AtomicU64,
    /// The last health answer.
    pub health: HealthCell,
    /// An out-of-band load-report stream is open: the trailers' reports are not read.
    pub oob_reports: AtomicBool,
}

/// What an endpoint's health check last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// No answer yet on this connection, or not checked.
    Unknown,
    /// SERVING.
    Serving,
    /// Anything else (NOT_SERVING, SERVICE_UNKNOWN).
    NotServing,
}

impl std::fmt::Display for Health {
    /// As grpc.health.v1 names the answers: `SERVING`, `NOT_SERVING`, or `UNKNOWN`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "UNKNOWN",
            Self::Serving => "SERVING",
            Self::NotServing => "NOT_SERVING",
        })
    }
}

/// A [`Health`] that tasks write and readers read without a lock.
#[derive(Debug, Default)]
pub(crate) struct HealthCell(AtomicU8);

impl HealthCell {
    pub fn get(&self) -> Health {
        match self.0.load(Ordering::Relaxed) {
            1 => Health::Serving,
            2 => Health::NotServing,
            _ => Health::Unknown,
        }
    }

    pub fn set(&self, health: Health) {
        self.0.store(health as u8, Ordering::Relaxed);
    }
}

/// One endpoint's state, as `Balancer::endpoints` reports it.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    /// The address.
    pub endpoint: Endpoint,
    /// Its connectivity state (TRANSIENT_FAILURE also while its health is NOT_SERVING).
    pub connectivity: Connectivity,
    /// Whether outlier detection has it ejected now.
    pub ejected: bool,
    /// How many times it was ejected.
    pub ejections: u64,
    /// Calls in flight to it now.
    pub in_flight: usize,
    /// Calls sent to it (attempts, retries included).
    pub calls: u64,
    /// Calls that failed on it before any answer and were retried elsewhere.
    pub retries: u64,
    /// Why it last failed (to connect, its health, a call), if it did.
    pub last_error: Option<String>,
    /// Whether a connection to it is open now.
    pub connected: bool,
    /// Connections open for calls: 0, 1, or more when one was full (gRFC A105,
    /// [`BalancerBuilder::max_connections_per_endpoint`](crate::BalancerBuilder::max_connections_per_endpoint)).
    pub connections: usize,
    /// What its health check last said.
    pub health: Health,
    /// Connection attempts that succeeded, that failed, and connections lost.
    pub connects: u64,
    /// See `connects`.
    pub connect_failures: u64,
    /// See `connects`.
    pub disconnections: u64,
    /// Calls that got an answer (any status but the endpoint's own failures).
    pub calls_ok: u64,
    /// Calls that failed because of the endpoint (no answer, UNAVAILABLE, ...).
    pub calls_failed: u64,
    /// How long its calls took, from the pick to the end of the response.
    pub durations: crate::histogram::HistogramSnapshot,
    /// The weight the policy picks it by now, if the policy has weights
    /// ([`Picker::weights`](crate::Picker::weights): `weighted_round_robin`'s reported or
    /// static weight, after slow start); `None` while it is not READY.
    pub weight: Option<f64>,
}

impl Subchannel {
    /// A subchannel for `endpoint`, not yet connecting (see `ConnectionTask`).
    pub fn new(endpoint: Endpoint, settings: &Settings) -> Result<Self, Error> {
        let connector = Connector::to(&endpoint, settings.tls.as_ref())?;
        let target = Target::new(&endpoint, connector, settings.tls.is_some())?;
        let interval = settings.liveness.map_or(Duration::ZERO, |l| l.interval);
        Ok(Self {
            state: EndpointState::with_decay(endpoint, settings.latency_decay),
            target,
            liveness_interval: AtomicU64::new(nanos(interval)),
            calmed: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            connection: Mutex::new(None),
            extra: Arc::default(),
            scaling: Arc::new(tokio::sync::Mutex::new(None)),
            last_error: Mutex::new(None),
            broken: watch::Sender::new(0),
            removed: watch::Sender::new(false),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_at: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            calls_ok: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            disconnections: AtomicU64::new(0),
            health: HealthCell::default(),
            oob_reports: AtomicBool::new(false),
        })
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_at.load(Ordering::Relaxed) != 0
    }

    /// The server closed connection `generation` with `ENHANCE_YOUR_CALM`
    /// "too_many_pings", as gRPC servers do when pinged more often than they allow:
    /// ping it half as often from its next connection on (gRFC A8), up to
    /// [`MAX_INTERVAL`]; once per connection.
    pub fn calm_down(&self, generation: u64) {
        if self.calmed.swap(generation, Ordering::Relaxed) == generation {
            return;
        }
        let doubled =
            self.liveness_interval
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n > 0 && n < nanos(MAX_INTERVAL))
                        .then(|| n.saturating_mul(2).min(nanos(MAX_INTERVAL)))
                });
        if let Ok(before) = doubled {
            warn!(endpoint = %self.state.endpoint(),
                interval = ?Duration::from_nanos(before.saturating_mul(2).min(nanos(MAX_INTERVAL))),
                "the server asked for fewer pings (too_many_pings): liveness interval doubled");
        }
    }

    /// How the connection that carries calls is kept alive: pinged while calls are in
    /// flight and nothing is read (see [`super::liveness`]), or, with liveness off, as
    /// gently as the health connection.
    pub(crate) fn call_keep_alive(&self, liveness: Option<Liveness>) -> KeepAlive {
        match liveness {
            Some(liveness) => {
                let interval = Duration::from_nanos(self.liveness_interval.load(Ordering::Relaxed));
                KeepAlive {
                    interval: interval.max(Duration::from_millis(1)),
                    timeout: liveness.timeout,
                    while_idle: false,
                }
            }
            None => Self::health_keep_alive(),
        }
    }

    /// How the connection that carries the health `Watch` stream is kept alive.
    pub(crate) fn health_keep_alive() -> KeepAlive {
        KeepAlive {
            interval: HEALTH_KEEPALIVE_INTERVAL,
            timeout: HEALTH_KEEPALIVE_TIMEOUT,
            while_idle: true,
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
