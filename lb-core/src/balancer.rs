//! The balancer: a `tower::Service` that sends each gRPC call to the endpoint a
//! [`Picker`] chooses.
//!
//! # How a call flows
//! 1. A tonic client (`MyServiceClient<Balancer>`) hands the balancer an
//!    `http::Request`.
//! 2. The balancer loads the current [`Snapshot`] (the READY endpoints and their
//!    channels; an `Arc` swapped whenever connectivity changes, so reading it takes no
//!    lock) and asks the picker for an index.
//! 3. It counts the call as in flight on that endpoint, sends it on the endpoint's own
//!    tonic `Channel`, and wraps the response body so the count drops when the body ends.
//! 4. If the endpoint's connection fails, the error names the endpoint, and the endpoint
//!    leaves the snapshot until its connection task has reconnected it.
//!
//! # Connections
//! Each endpoint has a background task that connects it, marks it READY, and when a
//! call reports the connection broken, reconnects it with gRPC's connection
//! [`Backoff`]. The tasks end when the last clone of the balancer is dropped.
//!
//! When no endpoint is READY, a call waits while some endpoint is still CONNECTING (up
//! to [`BalancerBuilder::queue_timeout`]), as gRPC does, and fails at once with
//! `UNAVAILABLE` when all of them have failed; the message lists every endpoint with its
//! state and last error.

use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::future::{BoxFuture, poll_fn};
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tonic::{Status, body::Body, transport::Channel};
use tower::Service;
use tracing::{info, warn};

use crate::{
    Backoff, Connectivity, Endpoint, EndpointState, Error, InFlightGuard,
    error::describe,
    policy::{BuildPicker, PickContext, PickError, Picker, Policy},
};

/// Added to every response's extensions: the endpoint the balancer sent the call to.
///
/// Read it from a tonic response with `response.extensions().get::<PickedEndpoint>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickedEndpoint(pub Endpoint);

/// One endpoint's state as [`Balancer::endpoints`] reports it.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    /// The address.
    pub endpoint: Endpoint,
    /// Its connectivity state.
    pub connectivity: Connectivity,
    /// Calls in flight to it now.
    pub in_flight: usize,
    /// Why the last connection attempt or call failed, if it did.
    pub last_error: Option<String>,
}

/// Configures and builds a [`Balancer`]. Start with [`Balancer::builder`].
pub struct BalancerBuilder {
    endpoints: Vec<Endpoint>,
    policy: Arc<dyn BuildPicker>,
    latency_decay: Duration,
    explain: u64,
    seed: Option<u64>,
    connect_timeout: Duration,
    queue_timeout: Duration,
    backoff: Backoff,
}

impl BalancerBuilder {
    /// Uses one of the built-in policies (default `round_robin`).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.latency_decay = policy.latency_decay();
        self.policy = Arc::new(policy);
        self
    }

    /// Uses your own stateless picker, for a policy this crate does not ship.
    pub fn picker(mut self, picker: impl Picker) -> Self {
        let picker: Arc<dyn Picker> = Arc::new(picker);
        self.policy = Arc::new(picker);
        self
    }

    /// Uses your own policy that builds a picker per endpoint set (tables, rings).
    pub fn build_picker(mut self, policy: Arc<dyn BuildPicker>) -> Self {
        self.policy = policy;
        self
    }

    /// Logs why each of the first `picks` picks was made, at INFO level under the
    /// target `lb_core::explain` (e.g. `least_request sampled {b: 3 in flight, c: 1
    /// in flight} -> c`).
    pub fn explain(mut self, picks: u64) -> Self {
        self.explain = picks;
        self
    }

    /// Seeds every random choice (picks, round robin's start, backoff jitter), so a run
    /// can be repeated. Without a seed, one is drawn from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How long one connection attempt may take (default 20 s, gRPC's minimum).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for an endpoint to become READY while some endpoint is
    /// still connecting (default 10 s).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The reconnect backoff (default: gRPC's 1 s, ×1.6, ±20 %, at most 120 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Builds the balancer and starts connecting to every endpoint.
    ///
    /// Must be called inside a Tokio runtime: each endpoint's connection task is spawned
    /// on it.
    pub fn build(self) -> Result<Balancer, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let seed = self
            .seed
            .unwrap_or_else(|| SmallRng::from_os_rng().next_u64());
        let mut build_rng = SmallRng::seed_from_u64(seed);
        let first = Snapshot {
            picker: self.policy.build(&[], &mut build_rng),
            ready: Vec::new(),
            routes: Vec::new(),
        };

        let mut targets = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let target = tonic::transport::Endpoint::from_shared(endpoint.uri())
                .map_err(|source| Error::Transport {
                    endpoint: endpoint.to_string(),
                    source,
                })?
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true);
            targets.push(target);
        }

        let core = Arc::new(Core {
            subchannels: self
                .endpoints
                .into_iter()
                .map(|endpoint| Subchannel {
                    state: EndpointState::with_decay(endpoint, self.latency_decay),
                    connection: Mutex::new(None),
                    last_error: Mutex::new(None),
                    broken: Notify::new(),
                })
                .collect(),
            snapshot: arc_swap::ArcSwap::from_pointee(first),
            policy: self.policy,
            publishing: Mutex::new(build_rng),
            changes: watch::Sender::new(0),
        });

        let (stop, stopped) = watch::channel(());
        for (index, target) in targets.into_iter().enumerate() {
            let task = ConnectionTask {
                core: core.clone(),
                index,
                target,
                backoff: self.backoff,
                rng: SmallRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9)),
                stopped: stopped.clone(),
            };
            tokio::spawn(task.run());
        }

        let shared = Arc::new(Shared {
            core,
            explain: AtomicU64::new(self.explain),
            queue_timeout: self.queue_timeout,
            seed,
            clones: AtomicU64::new(0),
            _stop: stop,
        });
        Ok(Balancer {
            rng: shared.next_rng(),
            shared,
        })
    }
}

/// A client-side load balancer for gRPC, usable under any tonic-generated client.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lb_core::{Balancer, Policy, parse_endpoint_list};
///
/// let endpoints = parse_endpoint_list("127.0.0.1:50051,127.0.0.1:50052")?;
/// let balancer = Balancer::builder(endpoints).policy(Policy::RoundRobin).build()?;
/// // let mut client = MyServiceClient::new(balancer);
/// # Ok(()) }
/// ```
///
/// Cloning is cheap and every clone shares endpoints, connections and counters; each
/// clone draws its random numbers from its own generator, seeded from the builder's
/// seed, so no lock is shared between clones on the call path.
pub struct Balancer {
    shared: Arc<Shared>,
    rng: SmallRng,
}

impl Balancer {
    /// Starts configuring a balancer over `endpoints`.
    pub fn builder(endpoints: impl IntoIterator<Item = Endpoint>) -> BalancerBuilder {
        BalancerBuilder {
            endpoints: endpoints.into_iter().collect(),
            policy: Arc::new(Policy::RoundRobin),
            latency_decay: crate::latency::DEFAULT_DECAY,
            explain: 0,
            seed: None,
            connect_timeout: Duration::from_secs(20),
            queue_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }

    /// The name of the policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.shared.core.policy.name()
    }

    /// The state of every endpoint, in the order they were given.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.shared.core.statuses()
    }

    /// Waits until every endpoint has finished its first connection attempt (READY or
    /// TRANSIENT_FAILURE), or `timeout` passes, and returns their states.
    ///
    /// Useful before measuring: calls sent while some endpoints are still connecting
    /// go to the ones already READY, which skews the first shares.
    pub async fn wait_settled(&self, timeout: Duration) -> Vec<EndpointStatus> {
        let deadline = deadline_after(timeout);
        let mut changes = self.shared.core.changes.subscribe();
        loop {
            let settled = self.shared.core.subchannels.iter().all(|s| {
                matches!(
                    s.state.connectivity(),
                    Connectivity::Ready | Connectivity::TransientFailure
                )
            });
            if settled
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                return self.endpoints();
            }
        }
    }
}

impl Clone for Balancer {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            rng: self.shared.next_rng(),
        }
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy_name())
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl Service<http::Request<Body>> for Balancer {
    type Response = http::Response<ResponseBody>;
    // Calls fail with a gRPC status, not an opaque error: tonic hands a `Status` found
    // in the error to the caller as it is, so the caller sees UNAVAILABLE and a message
    // naming the endpoint instead of UNKNOWN.
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    /// Always ready: readiness belongs to the endpoint picked for each call, which is
    /// not known until the call arrives.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The common case picks right here, synchronously, with this clone's RNG.
        match self.shared.try_pick(&mut self.rng, request.headers()) {
            Ok(route) => Box::pin(route.send(request)),
            Err(_) => {
                let shared = self.shared.clone();
                let rng = SmallRng::from_rng(&mut self.rng);
                let deadline = grpc_timeout(request.headers());
                Box::pin(async move {
                    let route = shared
                        .pick_when_ready(rng, request.headers(), deadline)
                        .await?;
                    route.send(request).await
                })
            }
        }
    }
}

/// What every clone of a balancer shares.
struct Shared {
    core: Arc<Core>,
    /// How many more picks to explain.
    explain: AtomicU64,
    queue_timeout: Duration,
    seed: u64,
    clones: AtomicU64,
    /// Dropped with the last balancer clone, which tells the connection tasks to end.
    _stop: watch::Sender<()>,
}

impl Shared {
    /// A generator for a new clone: seeded from the balancer's seed and the clone's
    /// number, so a seeded program gets the same streams every run.
    fn next_rng(&self) -> SmallRng {
        let n = self.clones.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(
            self.seed
                .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }

    fn try_pick(&self, rng: &mut SmallRng, headers: &http::HeaderMap) -> Result<Route, PickError> {
        let snapshot = self.core.snapshot.load();
        let ctx = PickContext::new(rng).with_headers(headers);
        let index = if self.should_explain() {
            let mut why = String::new();
            let result = snapshot
                .picker
                .pick(&snapshot.ready, &mut ctx.explain_into(&mut why));
            match &result {
                Ok(_) => info!(target: "lb_core::explain", "{why}"),
                Err(err) => info!(target: "lb_core::explain", "{}: {err}", self.core.policy.name()),
            }
            result?
        } else {
            snapshot.picker.pick(&snapshot.ready, &mut { ctx })?
        };
        // A picker's index is checked, not trusted: a bug in a learner's policy should
        // fail the call, not panic the client.
        let (state, route) = snapshot
            .ready
            .get(index)
            .zip(snapshot.routes.get(index))
            .ok_or(PickError::NoneReady {
                total: snapshot.ready.len(),
            })?;
        Ok(Route {
            guard: state.start_call(),
            state: state.clone(),
            channel: route.channel.clone(),
            subchannel: route.subchannel,
            generation: route.generation,
            core: self.core.clone(),
        })
    }

    /// Whether this pick is one of the first few to explain. One relaxed load when
    /// explaining is off.
    fn should_explain(&self) -> bool {
        self.explain.load(Ordering::Relaxed) > 0
            && self
                .explain
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    /// The slow path: no endpoint is READY. Waits while any is still connecting, for at
    /// most the queue timeout, or the call's own deadline (`grpc-timeout`) if sooner.
    async fn pick_when_ready(
        &self,
        mut rng: SmallRng,
        headers: &http::HeaderMap,
        call_timeout: Option<Duration>,
    ) -> Result<Route, Status> {
        let wait = call_timeout.map_or(self.queue_timeout, |t| t.min(self.queue_timeout));
        let deadline = deadline_after(wait);
        let mut changes = self.core.changes.subscribe();
        loop {
            if let Ok(route) = self.try_pick(&mut rng, headers) {
                return Ok(route);
            }
            if !self.core.any_connecting() {
                return Err(self.no_ready_endpoint("all endpoints failed"));
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let why = format!("none became ready within {wait:?}");
                return Err(match call_timeout {
                    Some(t) if t <= self.queue_timeout => {
                        let waiting = self.no_ready_endpoint(&why);
                        Status::deadline_exceeded(waiting.message())
                    }
                    _ => self.no_ready_endpoint(&why),
                });
            }
        }
    }

    fn no_ready_endpoint(&self, why: &str) -> Status {
        let states: Vec<String> = self
            .core
            .statuses()
            .into_iter()
            .map(|s| match s.last_error {
                Some(err) => format!("endpoint {}: {} ({err})", s.endpoint, s.connectivity),
                None => format!("endpoint {}: {}", s.endpoint, s.connectivity),
            })
            .collect();
        Status::unavailable(format!(
            "{}: no ready endpoint, {why}: {}",
            self.core.policy.name(),
            states.join("; ")
        ))
    }
}

/// The endpoints and their connections, shared with the connection tasks.
struct Core {
    subchannels: Vec<Subchannel>,
    /// READY endpoints only, and a picker built for them: what calls see.
    snapshot: arc_swap::ArcSwap<Snapshot>,
    /// Builds a picker for each new set of READY endpoints.
    policy: Arc<dyn BuildPicker>,
    /// Serialises `publish`, so that a snapshot built from older states can never be
    /// stored after one built from newer states; holds the RNG pickers are built with.
    publishing: Mutex<SmallRng>,
    /// Bumped after every connectivity change, to wake calls waiting for a READY one.
    changes: watch::Sender<u64>,
}

/// One endpoint and its connection.
struct Subchannel {
    state: EndpointState,
    /// The connection while READY, with its generation: the number of connections
    /// made so far, so that a failure seen on an old connection cannot tear down a
    /// newer one. Locked only when a snapshot is rebuilt or a failure reported.
    connection: Mutex<Option<(Channel, u64)>>,
    last_error: Mutex<Option<String>>,
    /// Signalled by a call that saw this connection fail.
    broken: Notify,
}

struct Snapshot {
    picker: Arc<dyn Picker>,
    ready: Vec<EndpointState>,
    routes: Vec<SnapshotRoute>,
}

struct SnapshotRoute {
    channel: Channel,
    subchannel: usize,
    generation: u64,
}

impl Core {
    /// Rebuilds the snapshot of READY endpoints and wakes waiting calls.
    fn publish(&self) {
        let mut build_rng = lock(&self.publishing);
        let mut ready = Vec::new();
        let mut routes = Vec::new();
        for (index, sub) in self.subchannels.iter().enumerate() {
            let connection = lock(&sub.connection).clone();
            if let (true, Some((channel, generation))) = (sub.state.is_ready(), connection) {
                ready.push(sub.state.clone());
                routes.push(SnapshotRoute {
                    channel,
                    subchannel: index,
                    generation,
                });
            }
        }
        // A new picker only when the READY set changed: that keeps policies with tables
        // (rings, Maglev, weights) in step with the set, and round robin's turn where it
        // was when something unrelated changed (an endpoint going from CONNECTING to
        // TRANSIENT_FAILURE, say).
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

    fn any_connecting(&self) -> bool {
        self.subchannels.iter().any(|s| {
            matches!(
                s.state.connectivity(),
                Connectivity::Idle | Connectivity::Connecting
            )
        })
    }

    fn statuses(&self) -> Vec<EndpointStatus> {
        self.subchannels
            .iter()
            .map(|s| EndpointStatus {
                endpoint: s.state.endpoint().clone(),
                connectivity: s.state.connectivity(),
                in_flight: s.state.in_flight(),
                last_error: lock(&s.last_error).clone(),
            })
            .collect()
    }

    /// A call failed on connection `generation` of subchannel `index`.
    fn report_broken(&self, index: usize, generation: u64, error: &str) {
        let Some(sub) = self.subchannels.get(index) else {
            return;
        };
        let current = lock(&sub.connection).as_ref().map(|(_, g)| *g);
        if current != Some(generation) {
            return; // An older connection; the current one may be fine.
        }
        // Only the first report moves READY -> TRANSIENT_FAILURE and wakes the task.
        if sub
            .state
            .transition(Connectivity::Ready, Connectivity::TransientFailure)
        {
            *lock(&sub.last_error) = Some(error.to_string());
            warn!(endpoint = %sub.state.endpoint(), %error, "connection failed: TRANSIENT_FAILURE");
            self.publish();
            sub.broken.notify_one();
        }
    }
}

/// Keeps one endpoint connected: connect, wait until broken, back off, repeat.
struct ConnectionTask {
    core: Arc<Core>,
    index: usize,
    target: tonic::transport::Endpoint,
    backoff: Backoff,
    rng: SmallRng,
    stopped: watch::Receiver<()>,
}

impl ConnectionTask {
    async fn run(mut self) {
        let mut failures = 0u32;
        let mut generation = 0u64;
        loop {
            let core = self.core.clone();
            let sub = &core.subchannels[self.index];
            let endpoint = sub.state.endpoint().clone();
            sub.state.set_connectivity(Connectivity::Connecting);
            core.publish();

            let attempt = tokio::select! {
                attempt = self.target.connect() => attempt,
                _ = self.stopped.changed() => return,
            };
            match attempt {
                Ok(channel) => {
                    failures = 0;
                    generation += 1;
                    *lock(&sub.connection) = Some((channel, generation));
                    *lock(&sub.last_error) = None;
                    sub.state.set_connectivity(Connectivity::Ready);
                    info!(%endpoint, "connected: READY");
                    core.publish();
                    tokio::select! {
                        _ = sub.broken.notified() => {}
                        _ = self.stopped.changed() => return,
                    }
                    // The call that broke it already moved it out of READY; reconnect
                    // at once, as gRPC does after a READY connection is lost.
                    *lock(&sub.connection) = None;
                }
                Err(err) => {
                    let reason = describe(&err);
                    let delay = self.backoff.delay(failures, &mut self.rng);
                    failures = failures.saturating_add(1);
                    *lock(&sub.last_error) = Some(reason.clone());
                    sub.state.set_connectivity(Connectivity::TransientFailure);
                    warn!(%endpoint, error = %reason, retry_in = ?delay, "connect failed: TRANSIENT_FAILURE");
                    core.publish();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stopped.changed() => return,
                    }
                }
            }
        }
    }
}

/// A picked endpoint, ready to carry one call.
struct Route {
    state: EndpointState,
    guard: InFlightGuard,
    channel: Channel,
    subchannel: usize,
    generation: u64,
    core: Arc<Core>,
}

impl Route {
    async fn send(
        mut self,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let result = match poll_fn(|cx| self.channel.poll_ready(cx)).await {
            Ok(()) => self.channel.call(request).await,
            Err(err) => Err(err),
        };
        let endpoint = self.state.endpoint();
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts.extensions.insert(PickedEndpoint(endpoint.clone()));
                let body = ResponseBody {
                    inner: body,
                    guard: Some(self.guard),
                };
                Ok(http::Response::from_parts(parts, body))
            }
            Err(err) => {
                // No response arrived. Say which endpoint, and why, in gRPC's terms.
                let reason = describe(&err);
                let mut status = if has_cause::<tonic::TimeoutExpired>(&err) {
                    // The call's own deadline ran out: the endpoint may be fine, only
                    // slower than the caller allows.
                    Status::deadline_exceeded(format!("endpoint {endpoint}: {reason}"))
                } else {
                    // A connection could not be made: take the endpoint out of the
                    // snapshot until its task has reconnected. Other failures (a
                    // connection closed under the call) leave it in: tonic's channel
                    // reconnects by itself, and reports a ConnectError if it cannot.
                    if has_cause::<tonic::ConnectError>(&err) {
                        self.core
                            .report_broken(self.subchannel, self.generation, &reason);
                    }
                    Status::unavailable(format!("endpoint {endpoint}: {reason}"))
                };
                status.set_source(Arc::new(err));
                Err(status)
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call as in flight until the body ends.
    pub struct ResponseBody {
        #[pin]
        inner: Body,
        guard: Option<InFlightGuard>,
    }
}

impl ResponseBody {
    /// Wraps `inner`, releasing `guard` when the body ends, fails or is dropped.
    pub fn new(inner: Body, guard: InFlightGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if matches!(frame, None | Some(Err(_))) {
            this.guard.take(); // The call is over: it no longer loads the endpoint.
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("in_flight", &self.guard.is_some())
            .finish()
    }
}

/// Whether `E` is `err` or one of its causes.
fn has_cause<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The call's deadline from its `grpc-timeout` header (e.g. `250m` = 250 ms), as tonic
/// sets it from `Request::set_timeout`.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    // At most 8 digits and a unit, by the gRPC spec; reject anything else.
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `now + timeout`, saturating instead of panicking on an absurdly long timeout.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Locks a mutex that guards plain data, ignoring poisoning: a panic elsewhere cannot
/// leave an `Option<Channel>` half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::{Body as _, Frame};
    use std::collections::VecDeque;

    /// A body that yields its frames one poll at a time.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn poll(body: &mut ResponseBody) -> Option<Frame<Bytes>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(frame) => frame.map(|f| f.unwrap()),
            Poll::Pending => panic!("test body never pends"),
        }
    }

    #[test]
    fn a_call_is_in_flight_until_its_body_ends() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(
                b"headers came first; this is the message",
            )),
            Frame::trailers(http::HeaderMap::new()),
        ]));
        let mut body = ResponseBody::new(Body::new(frames), state.start_call());
        assert_eq!(state.in_flight(), 1, "headers alone do not end a call");
        assert!(poll(&mut body).unwrap().is_data());
        assert_eq!(state.in_flight(), 1, "the message is not the end either");
        assert!(poll(&mut body).unwrap().is_trailers());
        assert!(poll(&mut body).is_none());
        assert_eq!(state.in_flight(), 0, "the end of the body ends the call");
        drop(body);
        assert_eq!(state.in_flight(), 0, "and is counted once");
    }

    #[test]
    fn dropping_an_unfinished_body_ends_the_call() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let frames = Frames(VecDeque::from([Frame::data(Bytes::from_static(b"x"))]));
        let body = ResponseBody::new(Body::new(frames), state.start_call());
        assert_eq!(state.in_flight(), 1);
        drop(body);
        assert_eq!(state.in_flight(), 0);
    }

    #[test]
    fn grpc_timeout_headers_are_read_and_bad_ones_ignored() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "12x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn causes_are_found_anywhere_in_the_chain() {
        let err = Status::unavailable("outer");
        assert!(has_cause::<Status>(&err));
        assert!(!has_cause::<tonic::TimeoutExpired>(&err));
    }

    #[tokio::test]
    async fn an_empty_endpoint_list_is_an_error() {
        let err = Balancer::builder(Vec::new()).build().unwrap_err();
        assert!(matches!(err, Error::NoEndpoints));
    }
}
