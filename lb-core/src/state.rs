//! Live, lock-free state of one endpoint: what a picker reads.
//!
//! An [`EndpointState`] is a cheap handle (an `Arc`) shared by the balancer, which
//! updates it, and the pickers, which read it. Every field is an atomic, so reading the
//! state of a hundred endpoints during a pick takes no lock and never waits.
//!
//! The ground floor, with what pickers read. May import: `endpoint`, `clock`,
//! `latency`, `histogram`, `orca`, `sync`.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
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
    /// How often its calls failed lately, for the policies that count failures as load.
    failures: FailureEstimate,
    /// When it last became READY (clock nanoseconds; 0: never), for slow start.
    ready_since: AtomicU64,
    /// When it joined (clock nanoseconds), and whether it has been in
    /// TRANSIENT_FAILURE since it was last READY: what tells an endpoint still
    /// connecting for the first time from one that failed (`priority_experimental`'s
    /// failover timeout).
    created_at: AtomicU64,
    failed: AtomicBool,
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
                failures: FailureEstimate::new(decay),
                ready_since: AtomicU64::new(0),
                created_at: AtomicU64::new(clock::now_nanos()),
                failed: AtomicBool::new(false),
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
        let mut load = crate::sync::lock(&self.inner.load);
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
        *crate::sync::lock(&self.inner.load)
    }

    /// The reports stopped coming for too long: the next one starts a new blackout.
    pub fn expire_load(&self) {
        crate::sync::lock(&self.inner.load).non_empty_since = 0;
    }

    /// Forgets the load reports (the balancer does this when it reconnects: a new
    /// connection starts with a blackout, as in gRPC).
    pub fn reset_load(&self) {
        *crate::sync::lock(&self.inner.load) = ReportedLoad::default();
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

    /// Moves the endpoint to `state`; returns the state it was in. Becoming READY
    /// starts its [`ready_since`](Self::ready_since) clock.
    pub fn set_connectivity(&self, state: Connectivity) -> Connectivity {
        self.set_connectivity_at(state, clock::now_nanos())
    }

    /// The same, at `now` on a clock of the caller's (the simulator's virtual time):
    /// becoming READY starts the ready clock at `now`, and no real clock is read.
    pub fn set_connectivity_at(&self, state: Connectivity, now: u64) -> Connectivity {
        let previous =
            Connectivity::from_u8(self.inner.connectivity.swap(state as u8, Ordering::AcqRel));
        self.note_failure(state);
        if state == Connectivity::Ready && previous != Connectivity::Ready {
            self.set_ready_since(now);
        }
        previous
    }

    /// TRANSIENT_FAILURE marks the endpoint failed until it is READY again.
    fn note_failure(&self, state: Connectivity) {
        match state {
            Connectivity::TransientFailure => self.inner.failed.store(true, Ordering::Relaxed),
            Connectivity::Ready => self.inner.failed.store(false, Ordering::Relaxed),
            Connectivity::Idle | Connectivity::Connecting => {}
        }
    }

    /// Whether the endpoint is still connecting for the first time: never READY yet,
    /// and no attempt failed. (One that was READY and reconnects, or that failed and
    /// tries again, is not.)
    pub fn is_starting(&self) -> bool {
        !self.is_ready()
            && self.ready_since().is_none()
            && !self.inner.failed.load(Ordering::Relaxed)
    }

    /// Since when the endpoint has been in the balancer (clock nanoseconds).
    pub fn created_at(&self) -> u64 {
        self.inner.created_at.load(Ordering::Relaxed)
    }

    /// Sets when the endpoint joined, on a clock of the caller's (the simulator's).
    pub fn set_created_at(&self, at: u64) {
        self.inner.created_at.store(at, Ordering::Relaxed);
    }

    /// Moves the endpoint from `from` to `to` if it is in `from` now; returns whether it
    /// moved. Of several threads racing to make the same move, exactly one succeeds.
    pub fn transition(&self, from: Connectivity, to: Connectivity) -> bool {
        let moved = self
            .inner
            .connectivity
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.note_failure(to);
        }
        if moved && to == Connectivity::Ready && from != Connectivity::Ready {
            self.set_ready_since(clock::now_nanos());
        }
        moved
    }

    /// When the endpoint last became READY (clock nanoseconds), if it ever did: where
    /// slow start's window begins.
    pub fn ready_since(&self) -> Option<u64> {
        match self.inner.ready_since.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// Sets when the endpoint became READY, on a clock of the caller's (the
    /// simulator's virtual time; the balancer's own moves set it by themselves).
    pub fn set_ready_since(&self, at: u64) {
        self.inner.ready_since.store(at.max(1), Ordering::Relaxed);
    }

    /// Records how a call ended, at `now` (clock nanoseconds): `ok` is false for a
    /// failure of the endpoint's (UNAVAILABLE, a broken connection, ...). The balancer
    /// does this for every call; see [`success_rate`](Self::success_rate).
    pub fn record_outcome(&self, ok: bool, now: u64) {
        self.inner.failures.record(ok, now);
    }

    /// Whether any recent call failed (the success rate is below 1): cheaper than
    /// [`success_rate`](Self::success_rate), no clock needed.
    pub(crate) fn has_failed_lately(&self) -> bool {
        self.inner.failures.rate.load(Ordering::Relaxed) != 0f64.to_bits()
    }

    /// The share of its recent calls that succeeded, 0 to 1 (1 before any failure):
    /// an average over about the last [`FAILURE_MEMORY`] calls, whose failures are
    /// forgotten over the latency decay time (10 s) when no calls come. The
    /// load-aware policies divide an endpoint's load by it, so that an endpoint that
    /// fails fast does not look idle.
    pub fn success_rate(&self, now: u64) -> f64 {
        1.0 - self.inner.failures.failure_rate(now)
    }

    /// The same, asking `now` for the time only if a call failed lately (a pick's
    /// common case reads no clock).
    pub(crate) fn success_rate_lazily(&self, now: impl FnOnce() -> u64) -> f64 {
        if self.has_failed_lately() {
            self.success_rate(now())
        } else {
            1.0
        }
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
            state: Some(self.clone()),
            started_at: now,
        }
    }
}

/// How many recent calls [`EndpointState::success_rate`] averages over (the weight of
/// one call is `1 / FAILURE_MEMORY`).
pub const FAILURE_MEMORY: f64 = 10.0;

/// A failure rate below this counts as none.
const FORGOTTEN: f64 = 1e-3;

/// A lock-free moving average of failures: per call, `rate += (failed − rate) / N`;
/// between calls it decays towards 0 with time constant τ, so that an endpoint that
/// failed and then got no calls is forgiven (Finagle's failure accrual, smoothed).
#[derive(Debug)]
struct FailureEstimate {
    /// The failure rate, as `f64` bits.
    rate: AtomicU64,
    /// When it was last updated (clock nanoseconds).
    updated_at: AtomicU64,
    decay_ns: f64,
}

impl FailureEstimate {
    fn new(decay: Duration) -> Self {
        Self {
            rate: AtomicU64::new(0f64.to_bits()),
            updated_at: AtomicU64::new(0),
            decay_ns: decay.as_nanos().max(1) as f64,
        }
    }

    fn failure_rate(&self, now: u64) -> f64 {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        if rate == 0.0 {
            return 0.0;
        }
        let age = now.saturating_sub(self.updated_at.load(Ordering::Relaxed)) as f64;
        let rate = rate * (-age / self.decay_ns).exp();
        // Below a tenth of a per cent it is forgotten: exactly 0, so that an endpoint
        // that failed once, long ago, does not lose every tie for minutes.
        if rate < FORGOTTEN { 0.0 } else { rate }
    }

    fn record(&self, ok: bool, now: u64) {
        if ok && self.rate.load(Ordering::Relaxed) == 0f64.to_bits() {
            return; // The common case: nothing to store.
        }
        let rate = self.failure_rate(now);
        let failed = if ok { 0.0 } else { 1.0 };
        let next = rate + (failed - rate) / FAILURE_MEMORY;
        // Forgotten: back to the state that needs no clock (`has_failed_lately`).
        let next = if next < FORGOTTEN { 0.0 } else { next };
        // Two calls ending at once may race and lose one sample: no lock per call.
        self.rate.store(next.to_bits(), Ordering::Relaxed);
        self.updated_at.store(now, Ordering::Relaxed);
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
    /// `None` once the call is over (it is counted once).
    state: Option<EndpointState>,
    started_at: u64,
}

impl InFlightGuard {
    /// Ends the call at `now` on the caller's clock (see
    /// [`EndpointState::start_call_at`]).
    pub fn finish_at(mut self, now: u64) {
        self.finish(now);
    }

    /// Ends the call now, if it has not ended yet: what dropping the guard does, for
    /// a guard kept in a struct that outlives the call (a response body).
    pub(crate) fn finish_now(&mut self) {
        self.finish(clock::now_nanos());
    }

    /// Whether the call still counts as in flight.
    pub(crate) fn in_flight(&self) -> bool {
        self.state.is_some()
    }

    fn finish(&mut self, now: u64) {
        if let Some(state) = self.state.take() {
            let rtt = now.saturating_sub(self.started_at);
            state.inner.latency.record(rtt, now);
            state.inner.durations.observe_nanos(rtt);
            state.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.finish_now();
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
    fn failures_lower_the_success_rate_and_are_forgiven_over_time() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(state.success_rate(1), 1.0);
        for _ in 0..30 {
            state.record_outcome(false, 1_000);
        }
        assert!(
            state.success_rate(1_000) < 0.1,
            "{}",
            state.success_rate(1_000)
        );
        // One successful call in ten brings it a tenth of the way back.
        let before = state.success_rate(1_000);
        state.record_outcome(true, 1_000);
        assert!((state.success_rate(1_000) - (before + (1.0 - before) / 10.0)).abs() < 1e-9);
        // 30 s without calls (three decay times): mostly forgiven.
        let later = 1_000 + 30_000_000_000;
        assert!(
            state.success_rate(later) > 0.95,
            "{}",
            state.success_rate(later)
        );
        // 70 s: below a tenth of a per cent, forgotten entirely (no tie is lost to it).
        assert_eq!(state.success_rate(1_000 + 70_000_000_000), 1.0);
    }

    #[test]
    fn becoming_ready_starts_the_ready_clock() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(state.ready_since(), None);
        state.set_connectivity(Connectivity::Ready);
        let first = state.ready_since().expect("set");
        state.set_connectivity(Connectivity::Ready);
        assert_eq!(
            state.ready_since(),
            Some(first),
            "staying READY is not a restart"
        );
        state.set_connectivity(Connectivity::Idle);
        state.set_ready_since(5);
        assert!(state.transition(Connectivity::Idle, Connectivity::Ready));
        let again = state.ready_since().unwrap();
        assert!(again != 5 && again >= first, "a new READY starts it again");
    }

    #[test]
    fn an_endpoint_is_starting_until_it_is_ready_or_fails() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert!(state.is_starting());
        state.set_connectivity(Connectivity::Connecting);
        assert!(state.is_starting());
        state.set_connectivity(Connectivity::TransientFailure);
        state.set_connectivity(Connectivity::Connecting);
        assert!(
            !state.is_starting(),
            "it failed once: a retry is not a start"
        );
        state.set_connectivity(Connectivity::Ready);
        state.set_connectivity(Connectivity::Idle);
        assert!(
            !state.is_starting(),
            "it was READY: reconnecting is not starting"
        );
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
