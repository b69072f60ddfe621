//! Live, lock-free state of one endpoint: what a picker reads.
//!
//! An [`EndpointState`] is a cheap handle (an `Arc`) shared by the balancer, which
//! updates it, and the pickers, which read it. Every field is an atomic, so reading the
//! state of a hundred endpoints during a pick takes no lock and never waits.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::histogram::DurationHistogram;
use crate::{
    Endpoint, clock,
    latency::{DEFAULT_DECAY, LatencyEstimate},
};

/// gRPC's connectivity states of a subchannel (one connection to one endpoint).
///
/// See gRPC's `doc/connectivity-semantics-and-api.md`. Only [`Ready`](Self::Ready)
/// endpoints are offered to pickers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Connectivity {
    /// No connection, and none is being made yet.
    Idle = 0,
    /// A connection attempt is under way.
    Connecting = 1,
    /// Connected: calls can be sent.
    Ready = 2,
    /// The last attempt failed; the balancer retries after a backoff.
    TransientFailure = 3,
}

impl Connectivity {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Idle,
            1 => Self::Connecting,
            2 => Self::Ready,
            _ => Self::TransientFailure,
        }
    }

    /// The name gRPC uses in logs, e.g. `TRANSIENT_FAILURE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "IDLE",
            Self::Connecting => "CONNECTING",
            Self::Ready => "READY",
            Self::TransientFailure => "TRANSIENT_FAILURE",
        }
    }
}

impl fmt::Display for Connectivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shared handle to one endpoint's address and live counters.
///
/// Clone it freely: clones see the same counters.
#[derive(Clone)]
pub struct EndpointState {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    in_flight: AtomicUsize,
    connectivity: AtomicU8,
    latency: LatencyEstimate,
    /// Every call's duration, for metrics.
    durations: DurationHistogram,
    /// What the server's load reports said (ORCA), for weights that follow load.
    load: std::sync::Mutex<ReportedLoad>,
}

/// What an endpoint's load reports (ORCA, [`crate::orca`]) last said: what gRPC's
/// `weighted_round_robin` computes its weight from (gRFC A58).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReportedLoad {
    /// Calls per second the server served.
    pub qps: f64,
    /// Errors per second.
    pub eps: f64,
    /// Its utilisation: the application's, else the CPU's.
    pub utilization: f64,
    /// When the last usable report arrived (clock nanoseconds; 0: never).
    pub updated_at: u64,
    /// Since when usable reports have come without the weight expiring (clock
    /// nanoseconds; 0: not now), for the blackout period.
    pub non_empty_since: u64,
}

impl EndpointState {
    /// A new endpoint in state [`Connectivity::Idle`] with nothing in flight, whose
    /// latency estimate decays with the default time constant (10 s).
    pub fn new(endpoint: Endpoint) -> Self {
        Self::with_decay(endpoint, DEFAULT_DECAY)
    }

    /// The same, with latency decay time `decay` (see [`crate::latency`]).
    pub fn with_decay(endpoint: Endpoint, decay: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint,
                in_flight: AtomicUsize::new(0),
                connectivity: AtomicU8::new(Connectivity::Idle as u8),
                latency: LatencyEstimate::new(decay),
                durations: DurationHistogram::default(),
                load: std::sync::Mutex::new(ReportedLoad::default()),
            }),
        }
    }

    /// How long its calls took (each recorded when its guard is dropped).
    pub fn durations(&self) -> &DurationHistogram {
        &self.inner.durations
    }

    /// The endpoint's address.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Whether `other` is a handle to this same endpoint state.
    pub fn same_as(&self, other: &EndpointState) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The endpoint's weight (1 unless the list said `host:port=W`).
    pub fn weight(&self) -> u32 {
        self.inner.endpoint.weight()
    }

    /// The peak-EWMA latency estimate at `now` (clock nanoseconds), or `None` before
    /// any call to this endpoint has finished.
    pub fn latency_estimate(&self, now: u64) -> Option<f64> {
        self.inner.latency.estimate(now)
    }

    /// Forgets the latency estimate: the endpoint is as new to `peak_ewma` as before
    /// its first call (the balancer does this when it reconnects).
    pub fn reset_latency(&self) {
        self.inner.latency.reset();
    }

    /// Takes in a load report from the server, at `now` (clock nanoseconds). A report
    /// without calls or without utilisation says nothing about capacity, and is
    /// ignored (gRFC A58).
    pub fn record_load(&self, report: &crate::orca::OrcaLoadReport, now: u64) {
        let utilization = report.utilization();
        let qps = report.rps_fractional;
        if !(utilization > 0.0 && qps > 0.0 && utilization.is_finite() && qps.is_finite()) {
            return;
        }
        let mut load = crate::balancer::lock(&self.inner.load);
        if load.non_empty_since == 0 {
            load.non_empty_since = now;
        }
        load.qps = qps;
        load.eps = if report.eps.is_finite() {
            report.eps.max(0.0)
        } else {
            0.0
        };
        load.utilization = utilization;
        load.updated_at = now;
    }

    /// What the load reports last said.
    pub fn reported_load(&self) -> ReportedLoad {
        *crate::balancer::lock(&self.inner.load)
    }

    /// The reports stopped coming for too long: the next one starts a new blackout.
    pub fn expire_load(&self) {
        crate::balancer::lock(&self.inner.load).non_empty_since = 0;
    }

    /// Forgets the load reports (the balancer does this when it reconnects: a new
    /// connection starts with a blackout, as in gRPC).
    pub fn reset_load(&self) {
        *crate::balancer::lock(&self.inner.load) = ReportedLoad::default();
    }

    /// Calls sent to this endpoint whose response has not finished yet.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The current connectivity state.
    pub fn connectivity(&self) -> Connectivity {
        Connectivity::from_u8(self.inner.connectivity.load(Ordering::Acquire))
    }

    /// Whether calls may be sent here now.
    pub fn is_ready(&self) -> bool {
        self.connectivity() == Connectivity::Ready
    }

    /// Moves the endpoint to `state`; returns the state it was in.
    pub fn set_connectivity(&self, state: Connectivity) -> Connectivity {
        Connectivity::from_u8(self.inner.connectivity.swap(state as u8, Ordering::AcqRel))
    }

    /// Moves the endpoint from `from` to `to` if it is in `from` now; returns whether it
    /// moved. Of several threads racing to make the same move, exactly one succeeds.
    pub fn transition(&self, from: Connectivity, to: Connectivity) -> bool {
        self.inner
            .connectivity
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts one more call in flight until the returned guard is dropped.
    ///
    /// The balancer keeps the guard inside the response body, so a call counts as in
    /// flight until its last byte (and trailers) arrive, not merely its headers: a
    /// streaming call that is still sending is still load on the server.
    ///
    /// When the guard is dropped, the call's duration feeds the endpoint's latency
    /// estimate (measured on the [`clock`]).
    pub fn start_call(&self) -> InFlightGuard {
        self.start_call_at(clock::now_nanos())
    }

    /// The same, for a call that started at `now` on a clock of the caller's (the
    /// simulator's virtual time). End it with [`InFlightGuard::finish_at`].
    pub fn start_call_at(&self, now: u64) -> InFlightGuard {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            state: self.clone(),
            started_at: now,
            finished: false,
        }
    }
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("endpoint", &self.endpoint().to_string())
            .field("connectivity", &self.connectivity())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Counts a call in flight until dropped, then records how long the call took.
#[must_use = "the call stops counting as in flight as soon as the guard is dropped"]
#[derive(Debug)]
pub struct InFlightGuard {
    state: EndpointState,
    started_at: u64,
    finished: bool,
}

impl InFlightGuard {
    /// Ends the call at `now` on the caller's clock (see
    /// [`EndpointState::start_call_at`]).
    pub fn finish_at(mut self, now: u64) {
        self.finish(now);
    }

    fn finish(&mut self, now: u64) {
        if !self.finished {
            self.finished = true;
            let rtt = now.saturating_sub(self.started_at);
            self.state.inner.latency.record(rtt, now);
            self.state.inner.durations.observe_nanos(rtt);
            self.state.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.finish(clock::now_nanos());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_calls_in_flight() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let a = state.start_call();
        let b = state.clone().start_call();
        assert_eq!(state.in_flight(), 2);
        drop(a);
        assert_eq!(state.in_flight(), 1);
        drop(b);
        assert_eq!(state.in_flight(), 0);
    }

    #[test]
    fn a_finished_call_feeds_the_latency_estimate() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(state.latency_estimate(10), None);
        state.start_call_at(1_000).finish_at(5_000);
        assert_eq!(state.in_flight(), 0);
        assert_eq!(state.latency_estimate(5_000), Some(4_000.0));
    }

    #[test]
    fn connectivity_round_trips() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(state.connectivity(), Connectivity::Idle);
        for next in [
            Connectivity::Connecting,
            Connectivity::Ready,
            Connectivity::TransientFailure,
            Connectivity::Idle,
        ] {
            state.set_connectivity(next);
            assert_eq!(state.connectivity(), next);
            assert_eq!(state.is_ready(), next == Connectivity::Ready);
        }
    }
}
