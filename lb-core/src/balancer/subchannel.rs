//! The connections of each endpoint, and the shared state every call reads.
//!
//! Each endpoint is a `Subchannel` with a task that keeps it connected:
//!
//! ```text
//!        ┌──────────── backoff ◀─────────────┐
//!        ▼                                    │ connect failed
//!  CONNECTING ──connected──▶ (health Watch) ──┼──▶ READY ◀──▶ TRANSIENT_FAILURE
//!        ▲                   first answer     │    SERVING      NOT_SERVING
//!        └── IDLE ◀── connection lost / health stream ended (a call that could not
//!                     connect: TRANSIENT_FAILURE and backoff)
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
//! made together, and the loss of either, once a call or the health stream sees it,
//! ends both: policies see one endpoint. (A call connection that the server closes
//! while no call is on it is reconnected by tonic itself, at the next call.)
//!
//! Every change rebuilds the `Snapshot` (READY, not ejected endpoints and their
//! picker) and wakes calls waiting for one.

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::rngs::SmallRng;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::{info, warn};

use super::connector::Connector;
use super::liveness::{
    HEALTH_KEEPALIVE_INTERVAL, HEALTH_KEEPALIVE_TIMEOUT, Liveness, MAX_INTERVAL,
};
use super::outlier::OutlierDetection;
use crate::{
    Backoff, Connectivity, Endpoint, EndpointState, clock,
    error::describe,
    policy::{BuildPicker, Picker},
};

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
    pub tls: Option<crate::tls::ClientTls>,
    /// When to ping a call connection whose calls get no answer (`None`: never).
    pub liveness: Option<Liveness>,
}

/// The endpoints and their connections, shared by all balancer clones and tasks.
pub(crate) struct Core {
    pub subchannels: RwLock<Vec<Arc<Subchannel>>>,
    /// What calls see: READY, not ejected endpoints, and a picker built for them.
    pub snapshot: arc_swap::ArcSwap<Snapshot>,
    pub policy: Arc<dyn BuildPicker>,
    /// Serialises `publish` (a snapshot from older states must never be stored after
    /// one from newer states) and holds the RNG pickers are built with.
    publishing: Mutex<SmallRng>,
    /// Serialises ejection decisions, so that the ejection limit holds.
    ejecting: Mutex<()>,
    /// Bumped after every change, to wake calls waiting for a READY endpoint.
    pub changes: watch::Sender<u64>,
    /// Bumped whenever an endpoint enters TRANSIENT_FAILURE: the resolver is asked to
    /// look again (gRPC's `ResolveNow`), as the failure may mean the list is stale.
    pub failures: watch::Sender<u64>,
    pub settings: Settings,
    /// Closed when the last balancer clone is dropped: every task ends.
    pub stopped: watch::Receiver<()>,
    /// Counts subchannels ever made, to seed each one's backoff jitter differently.
    made: AtomicU64,
}

/// The READY endpoints and their picker: one consistent view for a call.
pub(crate) struct Snapshot {
    pub picker: Arc<dyn Picker>,
    pub ready: Vec<EndpointState>,
    pub routes: Vec<SnapshotRoute>,
}

pub(crate) struct SnapshotRoute {
    pub sub: Arc<Subchannel>,
    pub channel: Channel,
    pub generation: u64,
}

/// One endpoint, its connection and its counters.
pub(crate) struct Subchannel {
    pub state: EndpointState,
    /// Where and how to connect (address, TLS, connect timeout); each connection
    /// adds its own keepalive settings.
    target: tonic::transport::Endpoint,
    /// Opens its connections (TCP, TLS): see `connector`.
    connector: Connector,
    /// The liveness ping interval for the next call connection, in nanoseconds:
    /// doubled each time the server complains of too many pings (gRFC A8).
    liveness_interval: AtomicU64,
    /// The last connection generation the interval was doubled for: once per
    /// connection, however many of its calls saw the complaint.
    calmed: AtomicU64,
    /// Answers received (calls and health), to tell a connection that served from one
    /// that only hung: see `ConnectionTask::run`.
    pub answers: AtomicU64,
    /// The connection while connected, with its generation (connections made so far),
    /// so that a failure seen on an old connection cannot tear down a newer one.
    connection: Mutex<Option<(Channel, u64)>>,
    last_error: Mutex<Option<String>>,
    /// The generation of the connection a call saw fail to connect. A value, not a
    /// one-shot signal: a report about an older connection must not tear down a newer.
    broken: watch::Sender<u64>,
    /// Set when the endpoint leaves the balancer: its task ends.
    removed: watch::Sender<bool>,
    // Outlier detection.
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// When it was ejected (clock nanoseconds); 0 = not ejected.
    ejected_at: AtomicU64,
    times_ejected: AtomicU32,
    pub ejections: AtomicU64,
    /// Calls sent here, and calls retried elsewhere after failing here.
    pub calls: AtomicU64,
    pub retries: AtomicU64,
    /// Calls that ended well, or as a failure of the endpoint (for metrics; the
    /// outlier counters above are reset every interval).
    calls_ok: AtomicU64,
    calls_failed: AtomicU64,
    /// Connection attempts that succeeded and failed, and connections lost.
    connects: AtomicU64,
    connect_failures: AtomicU64,
    disconnections: AtomicU64,
    /// The last health answer: see [`Health`].
    health: AtomicU8,
}

/// What an endpoint's health check last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No answer yet on this connection, or not checked.
    Unknown,
    /// SERVING.
    Serving,
    /// Anything else (NOT_SERVING, SERVICE_UNKNOWN).
    NotServing,
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
    pub durations: crate::metrics::HistogramSnapshot,
}

impl Core {
    pub fn new(
        policy: Arc<dyn BuildPicker>,
        settings: Settings,
        stopped: watch::Receiver<()>,
        build_rng: SmallRng,
    ) -> Arc<Self> {
        let mut rng = build_rng;
        let snapshot = Snapshot {
            picker: policy.build(&[], &mut rng),
            ready: Vec::new(),
            routes: Vec::new(),
        };
        Arc::new(Self {
            subchannels: RwLock::new(Vec::new()),
            snapshot: arc_swap::ArcSwap::from_pointee(snapshot),
            policy,
            publishing: Mutex::new(rng),
            ejecting: Mutex::new(()),
            changes: watch::Sender::new(0),
            failures: watch::Sender::new(0),
            settings,
            stopped,
            made: AtomicU64::new(0),
        })
    }

    /// Adds `endpoint` and starts connecting to it; `false` if it is already here.
    pub fn add(self: &Arc<Self>, endpoint: Endpoint) -> Result<bool, crate::Error> {
        let (target, connector) = endpoint.to_tonic(self.settings.tls.as_ref())?;
        let target = target.connect_timeout(self.settings.connect_timeout);
        let interval = self
            .settings
            .liveness
            .map_or(Duration::ZERO, |l| l.interval);
        let sub = Arc::new(Subchannel {
            state: EndpointState::with_decay(endpoint, self.settings.latency_decay),
            target,
            connector,
            liveness_interval: AtomicU64::new(nanos(interval)),
            calmed: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            connection: Mutex::new(None),
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
            health: AtomicU8::new(0),
        });
        {
            // Checked and added under one lock: two racing adds make one subchannel.
            let mut subs = write(&self.subchannels);
            if subs
                .iter()
                .any(|s| s.state.endpoint() == sub.state.endpoint())
            {
                return Ok(false);
            }
            subs.push(sub.clone());
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let jitter_seed = self.settings.seed ^ (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tokio::spawn(ConnectionTask::new(self.clone(), sub, jitter_seed).run());
        Ok(true)
    }

    /// Removes `endpoint`: no new call picks it; calls in flight finish on their own
    /// connection. `false` if it was not here.
    pub fn remove(&self, endpoint: &Endpoint) -> bool {
        let removed = {
            let mut subs = write(&self.subchannels);
            let position = subs.iter().position(|s| s.state.endpoint() == endpoint);
            position.map(|i| subs.remove(i))
        };
        let Some(sub) = removed else {
            return false;
        };
        sub.removed.send_replace(true);
        sub.state.set_connectivity(Connectivity::Idle);
        info!(endpoint = %endpoint, "removed: no new calls; calls in flight finish");
        self.keep_ejections_within_limit();
        self.publish();
        true
    }

    /// After a removal, fewer endpoints may leave too many ejected: let the
    /// longest-ejected ones return until the limit holds again.
    fn keep_ejections_within_limit(&self) {
        let Some(config) = &self.settings.outlier else {
            return;
        };
        let _one_at_a_time = lock(&self.ejecting);
        let subs = read(&self.subchannels);
        let mut ejected: Vec<&Arc<Subchannel>> = subs.iter().filter(|s| s.is_ejected()).collect();
        ejected.sort_by_key(|s| s.ejected_at.load(Ordering::Relaxed));
        let mut count = ejected.len();
        for sub in ejected {
            if count == 0 || config.may_eject(count - 1, subs.len()) {
                break;
            }
            sub.ejected_at.store(0, Ordering::Relaxed);
            info!(endpoint = %sub.state.endpoint(), "returned early: too many ejected after a removal");
            count -= 1;
        }
    }

    /// Rebuilds the snapshot of usable endpoints and wakes waiting calls.
    pub fn publish(&self) {
        let mut build_rng = lock(&self.publishing);
        let mut ready = Vec::new();
        let mut routes = Vec::new();
        for sub in read(&self.subchannels).iter() {
            if !sub.state.is_ready() || sub.is_ejected() {
                continue;
            }
            if let Some((channel, generation)) = lock(&sub.connection).clone() {
                ready.push(sub.state.clone());
                routes.push(SnapshotRoute {
                    sub: sub.clone(),
                    channel,
                    generation,
                });
            }
        }
        // A new picker only when the usable set changed: that keeps policies with
        // tables (rings, Maglev, weights) in step with the set, and round robin's turn
        // where it was when something unrelated changed.
        let current = self.snapshot.load();
        let same_set = current.ready.len() == ready.len()
            && current.ready.iter().zip(&ready).all(|(a, b)| a.same_as(b));
        let picker = if same_set {
            current.picker.clone()
        } else {
            self.policy.build(&ready, &mut *build_rng)
        };
        self.snapshot.store(Arc::new(Snapshot {
            picker,
            ready,
            routes,
        }));
        self.changes.send_modify(|version| *version += 1);
    }

    /// Whether every endpoint has finished connecting and the snapshot shows it: each
    /// is in TRANSIENT_FAILURE, ejected, or READY *and published* (a state is set just
    /// before its snapshot is stored, so the states alone can run ahead).
    pub fn settled(&self) -> bool {
        let snapshot = self.snapshot.load();
        read(&self.subchannels)
            .iter()
            .all(|s| match s.state.connectivity() {
                Connectivity::TransientFailure => true,
                Connectivity::Ready => {
                    s.is_ejected() || snapshot.ready.iter().any(|r| r.same_as(&s.state))
                }
                Connectivity::Idle | Connectivity::Connecting => false,
            })
    }

    pub fn any_connecting(&self) -> bool {
        read(&self.subchannels).iter().any(|s| {
            matches!(
                s.state.connectivity(),
                Connectivity::Idle | Connectivity::Connecting
            )
        })
    }

    pub fn statuses(&self) -> Vec<EndpointStatus> {
        read(&self.subchannels)
            .iter()
            .map(|s| EndpointStatus {
                endpoint: s.state.endpoint().clone(),
                connectivity: s.state.connectivity(),
                ejected: s.is_ejected(),
                ejections: s.ejections.load(Ordering::Relaxed),
                in_flight: s.state.in_flight(),
                calls: s.calls.load(Ordering::Relaxed),
                retries: s.retries.load(Ordering::Relaxed),
                last_error: lock(&s.last_error).clone(),
                connected: lock(&s.connection).is_some(),
                health: match s.health.load(Ordering::Relaxed) {
                    1 => Health::Serving,
                    2 => Health::NotServing,
                    _ => Health::Unknown,
                },
                connects: s.connects.load(Ordering::Relaxed),
                connect_failures: s.connect_failures.load(Ordering::Relaxed),
                disconnections: s.disconnections.load(Ordering::Relaxed),
                calls_ok: s.calls_ok.load(Ordering::Relaxed),
                calls_failed: s.calls_failed.load(Ordering::Relaxed),
                durations: s.state.durations().snapshot(),
            })
            .collect()
    }

    /// A call on connection `generation` of `sub` could not connect (`lost`: false),
    /// or found the connection gone (`lost`: true).
    ///
    /// A connection that could not be made is TRANSIENT_FAILURE: calls fail fast
    /// rather than wait for the backoff. A connection lost is IDLE, as in gRPC: the
    /// task reconnects at once, and calls wait for it (within their deadline) instead
    /// of failing in the moment between the loss and the new attempt.
    pub fn report_broken(&self, sub: &Subchannel, generation: u64, error: &str, lost: bool) {
        let current = lock(&sub.connection).as_ref().map(|(_, g)| *g);
        if current != Some(generation) {
            return; // An older connection; the current one may be fine.
        }
        let next = if lost {
            Connectivity::Idle
        } else {
            Connectivity::TransientFailure
        };
        // Only the first report moves the endpoint out of READY and wakes the task.
        if sub.state.transition(Connectivity::Ready, next) {
            *lock(&sub.last_error) = Some(error.to_string());
            let why = if lost {
                "a call found its connection gone"
            } else {
                "a call could not connect"
            };
            info!(endpoint = %sub.state.endpoint(), %error, "{next}: {why}");
            self.publish();
            // The task's own `set` will find the state already changed; count the
            // failure here, so that the resolver is asked to look again now.
            self.failures.send_modify(|n| *n += 1);
            sub.broken.send_replace(generation);
        }
    }

    /// Counts a finished call for outlier detection; may eject `sub` at once after too
    /// many consecutive failures.
    pub fn record_outcome(&self, sub: &Subchannel, success: bool) {
        let total = if success {
            &sub.calls_ok
        } else {
            &sub.calls_failed
        };
        total.fetch_add(1, Ordering::Relaxed);
        let Some(config) = &self.settings.outlier else {
            return;
        };
        if success {
            sub.successes.fetch_add(1, Ordering::Relaxed);
            sub.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        sub.failures.fetch_add(1, Ordering::Relaxed);
        let streak = sub.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(limit) = config.consecutive_failures
            && streak >= limit
            && !sub.is_ejected()
        {
            let reason = format!("{streak} consecutive failures");
            if self.try_eject(sub, config, &reason) {
                self.publish();
            }
        }
    }

    /// Ejects `sub` if the ejection limit allows; says so in the log.
    fn try_eject(&self, sub: &Subchannel, config: &OutlierDetection, reason: &str) -> bool {
        let _one_at_a_time = lock(&self.ejecting);
        if sub.is_ejected() {
            return false;
        }
        let (ejected, total) = {
            let subs = read(&self.subchannels);
            (subs.iter().filter(|s| s.is_ejected()).count(), subs.len())
        };
        if !config.may_eject(ejected, total) {
            warn!(endpoint = %sub.state.endpoint(), %reason, ejected, total,
                "not ejected: max_ejection_percent {}% reached", config.max_ejection_percent);
            return false;
        }
        let times = sub.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        sub.ejected_at.store(clock::now_nanos(), Ordering::Relaxed);
        sub.ejections.fetch_add(1, Ordering::Relaxed);
        sub.consecutive_failures.store(0, Ordering::Relaxed);
        info!(endpoint = %sub.state.endpoint(), %reason, duration = ?config.ejection_time(times),
            "ejected by outlier detection");
        true
    }

    /// One outlier-detection interval: the success-rate detector, then returns.
    pub fn outlier_interval(&self, config: &OutlierDetection) {
        let subs: Vec<Arc<Subchannel>> = read(&self.subchannels).clone();
        let stats: Vec<(u64, u64)> = subs
            .iter()
            .map(|s| {
                (
                    s.successes.swap(0, Ordering::Relaxed),
                    s.failures.swap(0, Ordering::Relaxed),
                )
            })
            .collect();
        let mut changed = false;
        let mut judged_now = Vec::new();
        for i in config.success_rate_outliers(&stats) {
            let (ok, failed) = stats[i];
            let rate = 100.0 * ok as f64 / (ok + failed) as f64;
            let reason = format!("success rate {rate:.1}%, far below its peers'");
            if self.try_eject(&subs[i], config, &reason) {
                changed = true;
                judged_now.push(i);
            }
        }
        let now = clock::now_nanos();
        for (i, sub) in subs.iter().enumerate() {
            let at = sub.ejected_at.load(Ordering::Relaxed);
            let times = sub.times_ejected.load(Ordering::Relaxed);
            if at != 0 {
                let until = at.saturating_add(config.ejection_time(times).as_nanos() as u64);
                if now >= until {
                    sub.ejected_at.store(0, Ordering::Relaxed);
                    info!(endpoint = %sub.state.endpoint(), "returned from ejection");
                    changed = true;
                }
            } else if times > 0 && !judged_now.contains(&i) {
                // A50: each clean interval forgives one past ejection.
                sub.times_ejected.store(times - 1, Ordering::Relaxed);
            }
        }
        if changed {
            self.publish();
        }
    }
}

impl Subchannel {
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

    /// The target for the connection that carries calls: pinged while calls are in
    /// flight and nothing is read (see [`super::liveness`]), or, with liveness off,
    /// kept alive as gently as the health connection.
    fn call_target(&self, liveness: Option<Liveness>) -> tonic::transport::Endpoint {
        match liveness {
            Some(liveness) => {
                let interval = Duration::from_nanos(self.liveness_interval.load(Ordering::Relaxed));
                self.target
                    .clone()
                    .http2_keep_alive_interval(interval.max(Duration::from_millis(1)))
                    .keep_alive_timeout(liveness.timeout)
                    .keep_alive_while_idle(false)
            }
            None => self.health_target(),
        }
    }

    /// The target for the connection that carries the health `Watch` stream.
    fn health_target(&self) -> tonic::transport::Endpoint {
        self.target
            .clone()
            .http2_keep_alive_interval(HEALTH_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HEALTH_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Keeps one endpoint connected (and health-checked) until it is removed or the
/// balancer is dropped.
struct ConnectionTask {
    core: Arc<Core>,
    sub: Arc<Subchannel>,
    rng: SmallRng,
    stopped: watch::Receiver<()>,
    removed: watch::Receiver<bool>,
    broken: watch::Receiver<u64>,
}

/// Why a connection ended.
enum Ended {
    Stop,
    Lost(String),
}

impl ConnectionTask {
    fn new(core: Arc<Core>, sub: Arc<Subchannel>, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            stopped: core.stopped.clone(),
            removed: sub.removed.subscribe(),
            broken: sub.broken.subscribe(),
            rng: SmallRng::seed_from_u64(seed),
            core,
            sub,
        }
    }

    /// Resolves when the balancer is dropped or this endpoint removed.
    async fn stop(stopped: &mut watch::Receiver<()>, removed: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = stopped.changed() => {}
            _ = removed.wait_for(|&gone| gone) => {}
        }
    }

    /// Resolves when a call reports connection `generation` broken.
    async fn broken(broken: &mut watch::Receiver<u64>, generation: u64) {
        let _ = broken.wait_for(|&g| g == generation).await;
    }

    fn set(&self, state: Connectivity, reason: Option<String>) {
        let previous = self.sub.state.set_connectivity(state);
        if let Some(reason) = &reason {
            *lock(&self.sub.last_error) = Some(reason.clone());
        } else if state == Connectivity::Ready {
            *lock(&self.sub.last_error) = None; // Past troubles are past.
        }
        if previous != state {
            if state == Connectivity::TransientFailure {
                self.core.failures.send_modify(|n| *n += 1);
            }
            let endpoint = self.sub.state.endpoint();
            match &reason {
                Some(reason) => info!(%endpoint, %reason, "{previous} -> {state}"),
                None => info!(%endpoint, "{previous} -> {state}"),
            }
        }
        self.core.publish();
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        let mut generation = 0u64;
        let backoff = self.core.settings.backoff;
        loop {
            if *self.removed.borrow() {
                return;
            }
            self.set(Connectivity::Connecting, None);
            // The whole attempt (TCP, TLS, HTTP/2) is bounded: tonic's connect timeout
            // covers the TCP connect only, and a peer that accepts and then says
            // nothing must not keep the endpoint CONNECTING.
            let limit = self.core.settings.connect_timeout;
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(limit, Self::connect(&self.sub, &self.core.settings)) => attempt,
                _ = Self::stop(&mut self.stopped, &mut self.removed) => return,
            };
            let reason = match attempt {
                Ok(Ok((channel, health))) => {
                    self.sub.connects.fetch_add(1, Ordering::Relaxed);
                    generation += 1;
                    *lock(&self.sub.connection) = Some((channel, generation));
                    let connected_at = tokio::time::Instant::now();
                    let answers_before = self.sub.answers.load(Ordering::Relaxed);
                    let ended = self.serve(health, generation).await;
                    let answered = self.sub.answers.load(Ordering::Relaxed) > answers_before;
                    *lock(&self.sub.connection) = None;
                    self.sub.health.store(0, Ordering::Relaxed);
                    if let Ended::Lost(_) = ended {
                        self.sub.disconnections.fetch_add(1, Ordering::Relaxed);
                    }
                    match ended {
                        Ended::Stop => return,
                        Ended::Lost(reason) => {
                            // A connection that lasted and served is a fresh start:
                            // reconnect at once, as gRPC does. One lost at once, or
                            // one that never answered (a hung server accepts
                            // connections all the same), counts as a failed attempt,
                            // so that a flapping or hung server is backed off from.
                            if answered && connected_at.elapsed() >= backoff.initial {
                                failures = 0;
                                // IDLE, not TRANSIENT_FAILURE: calls wait for the new
                                // attempt instead of failing fast. The resolver is
                                // asked to look again all the same.
                                self.core.failures.send_modify(|n| *n += 1);
                                self.set(Connectivity::Idle, Some(reason));
                                continue;
                            }
                            reason
                        }
                    }
                }
                Ok(Err(err)) => {
                    self.sub.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if super::call::has_cause::<tokio::time::error::Elapsed>(&err) {
                        // tonic's own connect timer, set to the same limit, fired first.
                        format!("no connection within {limit:?} (connect and handshakes)")
                    } else {
                        describe(&err)
                    }
                }
                Err(_) => {
                    self.sub.connect_failures.fetch_add(1, Ordering::Relaxed);
                    format!("no connection within {limit:?} (connect and handshakes)")
                }
            };
            let delay = backoff.delay(failures, &mut self.rng);
            failures = failures.saturating_add(1);
            let endpoint = self.sub.state.endpoint().clone();
            warn!(%endpoint, error = %reason, retry_in = ?delay, "connect failed");
            self.set(Connectivity::TransientFailure, Some(reason));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = Self::stop(&mut self.stopped, &mut self.removed) => return,
            }
        }
    }

    /// Connects the call connection and, with health checking on, the health
    /// connection beside it.
    async fn connect(
        sub: &Subchannel,
        settings: &Settings,
    ) -> Result<(Channel, Option<Channel>), tonic::transport::Error> {
        // Our own connector: a TLS refusal is then read as such (see `connector`).
        let calls = sub.call_target(settings.liveness);
        if settings.health_service.is_none() {
            return Ok((
                calls.connect_with_connector(sub.connector.clone()).await?,
                None,
            ));
        }
        let health = sub.health_target();
        let (calls, health) = tokio::try_join!(
            calls.connect_with_connector(sub.connector.clone()),
            health.connect_with_connector(sub.connector.clone())
        )?;
        Ok((calls, Some(health)))
    }

    /// READY on a new connection: what was learnt of the endpoint's latency belongs to
    /// the old one (a server that hung, say, would otherwise be shunned by `peak_ewma`
    /// for as long as its stall takes to decay).
    fn ready_on_new_connection(&self) {
        self.sub.state.reset_latency();
        self.set(Connectivity::Ready, None);
    }

    /// While connected: READY (or as the health check says) until the connection is
    /// lost, a call reports it broken, or the task must stop.
    async fn serve(&mut self, health: Option<Channel>, generation: u64) -> Ended {
        let (Some(service), Some(channel)) = (self.core.settings.health_service.clone(), health)
        else {
            self.ready_on_new_connection();
            return tokio::select! {
                _ = Self::broken(&mut self.broken, generation) => Ended::Lost(self.last_error()),
                _ = Self::stop(&mut self.stopped, &mut self.removed) => Ended::Stop,
            };
        };
        let mut health = HealthClient::new(channel);
        let request = HealthCheckRequest { service };
        // A server that accepted the connection but never answers its health check
        // must not keep the endpoint CONNECTING forever.
        let answer_within = self.core.settings.connect_timeout;
        let stream = tokio::select! {
            stream = tokio::time::timeout(answer_within, health.watch(request)) => match stream {
                Ok(stream) => stream,
                Err(_) => return Ended::Lost(format!("no health answer within {answer_within:?}")),
            },
            _ = Self::stop(&mut self.stopped, &mut self.removed) => return Ended::Stop,
        };
        let mut stream = match stream {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                // gRFC A17: a server without the health service is taken as healthy.
                self.sub.answers.fetch_add(1, Ordering::Relaxed);
                info!(endpoint = %self.sub.state.endpoint(), "no health service: treated as SERVING");
                self.ready_on_new_connection();
                return tokio::select! {
                    _ = Self::broken(&mut self.broken, generation) => Ended::Lost(self.last_error()),
                    _ = Self::stop(&mut self.stopped, &mut self.removed) => Ended::Stop,
                };
            }
            Err(status) => {
                // The cause (a TLS alert, a reset) is in the status's sources. A TLS
                // refusal is said first and plainly: it is what the user must fix.
                let source = std::error::Error::source(&status);
                if let Some(tls) = source.and_then(crate::tls::explain) {
                    return Ended::Lost(tls);
                }
                let cause = source
                    .map(|cause| format!(" ({})", describe(cause)))
                    .unwrap_or_default();
                return Ended::Lost(format!(
                    "health check failed: {:?}: {}{cause}",
                    status.code(),
                    status.message()
                ));
            }
        };
        let mut first_serving = true;
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(answer)) => match answer.status() {
                        ServingStatus::Serving => {
                            self.sub.answers.fetch_add(1, Ordering::Relaxed);
                            self.sub.health.store(1, Ordering::Relaxed);
                            if std::mem::take(&mut first_serving) {
                                self.ready_on_new_connection();
                            } else {
                                self.set(Connectivity::Ready, None);
                            }
                        }
                        other => {
                            self.sub.answers.fetch_add(1, Ordering::Relaxed);
                            self.sub.health.store(2, Ordering::Relaxed);
                            self.set(
                                Connectivity::TransientFailure,
                                Some(format!("health: {}", other.as_str_name())),
                            );
                        }
                    },
                    Ok(None) => return Ended::Lost("health stream ended by the server".into()),
                    Err(status) => return Ended::Lost(format!(
                        "connection lost: {}",
                        status.message()
                    )),
                },
                _ = Self::broken(&mut self.broken, generation) => return Ended::Lost(self.last_error()),
                _ = Self::stop(&mut self.stopped, &mut self.removed) => return Ended::Stop,
            }
        }
    }

    fn last_error(&self) -> String {
        lock(&self.sub.last_error)
            .clone()
            .unwrap_or_else(|| "connection broken".into())
    }
}

/// Locks a mutex that guards plain data, ignoring poisoning: a panic elsewhere cannot
/// leave an `Option<Channel>` half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
