//! The balancer: a `tower::Service` that sends each gRPC call to the endpoint a
//! [`Picker`] chooses, and keeps calls alive while endpoints come and go.
//!
//! # How a call flows
//! 1. A tonic client (`MyServiceClient<Balancer>`) hands the balancer an
//!    `http::Request`.
//! 2. The balancer loads the current snapshot (the usable endpoints, their
//!    connections and a picker built for them; an `Arc` swapped whenever something
//!    changes, so reading it takes no lock) and asks the picker for an index.
//! 3. It counts the call as in flight on that endpoint, sends it on the endpoint's own
//!    tonic `Channel`, and wraps the response body so the count drops, and the call's
//!    latency and outcome are recorded, when the body ends.
//! 4. If the attempt fails before any server saw it (connection refused or reset,
//!    GOAWAY), it is retried on another endpoint, within the [`RetryPolicy`], its budget
//!    and the call's deadline. Errors name the endpoint.
//!
//! # Endpoints
//! Each endpoint has a task that connects it, watches its health, and reconnects it
//! with gRPC's connection [`Backoff`] (see [`subchannel`]). Endpoints can be added and
//! removed at any time ([`Balancer::add_endpoint`], [`Balancer::remove_endpoint`],
//! [`Balancer::follow`]); a removed one finishes its calls in flight. Outlier detection
//! ([`outlier`]) ejects endpoints whose calls keep failing.
//!
//! A server that hangs (connected, never answering) is noticed by [`liveness`]
//! pings while calls wait on it; its connection is then dropped, its calls retried
//! elsewhere, and it returns once it answers its health check again.
//!
//! When no endpoint is usable, a call waits while some endpoint is still CONNECTING (up
//! to [`BalancerBuilder::queue_timeout`], or its deadline), as gRPC does, and fails at
//! once with `UNAVAILABLE` when all of them have failed; the message lists every
//! endpoint with its state and last error. Failing at once still lets the runtime run
//! (the reconnect timers above all): see `pick_when_ready`.

mod call;
mod connector;
pub mod liveness;
pub mod outlier;
pub mod retry;
pub mod subchannel;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tokio::{sync::watch, time::Instant};
use tonic::{Status, body::Body};
use tower::Service;
use tracing::{debug, info};

pub use call::{PickedEndpoint, ResponseBody};
pub(crate) use connector::Connector;
pub use liveness::Liveness;
pub use outlier::{OutlierDetection, SuccessRate};
pub use retry::RetryPolicy;
pub use subchannel::{EndpointStatus, Health};

use call::{
    Failure, FailureKind, Route, deadline_after, grpc_timeout, grpc_timeout_value, header_status,
};
use retry::{RequestBody, RetryBudget};
use subchannel::{Core, Settings, Subchannel};

use crate::resolver::Resolution;
use crate::{
    Backoff, Endpoint, Error,
    policy::{BuildPicker, PickContext, PickError, Picker, Policy},
};

/// Configures and builds a [`Balancer`]. Start with [`Balancer::builder`].
pub struct BalancerBuilder {
    endpoints: Vec<Endpoint>,
    following: Option<Resolution>,
    authorization: Option<http::HeaderValue>,
    policy: Arc<dyn BuildPicker>,
    explain: u64,
    seed: Option<u64>,
    queue_timeout: Duration,
    retry: RetryPolicy,
    settings: Settings,
}

impl BalancerBuilder {
    /// Uses one of the built-in policies (default `round_robin`).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.settings.latency_decay = policy.latency_decay();
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

    /// Sends `authorization: Bearer <token>` with every call (replacing any the caller
    /// set), for servers that check a token. The header is marked sensitive, so it is
    /// not logged.
    pub fn bearer_token(mut self, token: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidToken {
            reason: "a token must be visible ASCII (no spaces or control characters)".into(),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let mut value =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid())?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// Connects to every endpoint over TLS (default: plaintext HTTP/2), verifying each
    /// server's certificate and, for mutual TLS, showing the client's own. See
    /// [`crate::tls`].
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// How long one connection attempt may take (default 20 s, gRPC's minimum).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a usable endpoint while some endpoint is still
    /// connecting (default 10 s; a shorter call deadline wins).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The reconnect backoff (default: gRPC's 1 s, ×1.6, ±20 %, at most 120 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Health-checks every endpoint with `grpc.health.v1.Health/Watch` for `service`
    /// (`""`, the default, asks about the whole server); `None` turns it off.
    pub fn health_check(mut self, service: Option<&str>) -> Self {
        self.settings.health_service = service.map(String::from);
        self
    }

    /// Pings an endpoint's connection when its calls get no answer, and takes the
    /// endpoint out of the rotation if the ping is not answered either (default: ping
    /// after 500 ms of silence, dead after 1 s more; `None` turns it off). See
    /// [`liveness`].
    pub fn liveness(mut self, liveness: Option<Liveness>) -> Self {
        self.settings.liveness = liveness;
        self
    }

    /// Ejects endpoints whose calls keep failing (default: off).
    pub fn outlier_detection(mut self, config: Option<OutlierDetection>) -> Self {
        self.settings.outlier = config;
        self
    }

    /// Retries calls that failed before reaching a server (default: 3 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Builds the balancer and starts connecting to every endpoint.
    ///
    /// Must be called inside a Tokio runtime: each endpoint's connection task is spawned
    /// on it.
    pub fn build(mut self) -> Result<Balancer, Error> {
        let handshake_limit = self.settings.connect_timeout;
        self.settings.tls = self
            .settings
            .tls
            .map(|tls| tls.with_timeout(handshake_limit));
        if self.endpoints.is_empty() && self.following.is_none() {
            return Err(Error::NoEndpoints);
        }
        let seed = self
            .seed
            .unwrap_or_else(|| SmallRng::from_os_rng().next_u64());
        self.settings.seed = seed;
        let (stop, stopped) = watch::channel(());
        let core = Core::new(
            self.policy,
            self.settings.clone(),
            stopped.clone(),
            SmallRng::seed_from_u64(seed),
        );
        for endpoint in self.endpoints {
            core.add(endpoint)?;
        }
        if let Some(mut config) = self.settings.outlier.clone() {
            // A zero interval would make `tokio::time::interval` panic.
            config.interval = config.interval.max(Duration::from_millis(1));
            tokio::spawn(outlier_task(core.clone(), config, stopped));
        }
        let shared = Arc::new(Shared {
            core,
            explain: AtomicU64::new(self.explain),
            authorization: self.authorization,
            queue_timeout: self.queue_timeout,
            budget: RetryBudget::new(&self.retry),
            retry: self.retry,
            retries: AtomicU64::new(0),
            seed,
            clones: AtomicU64::new(0),
            _stop: stop,
        });
        let balancer = Balancer {
            rng: shared.next_rng(),
            shared,
        };
        if let Some(resolution) = self.following {
            balancer.follow(resolution);
        }
        Ok(balancer)
    }
}

/// Runs outlier detection's interval until the balancer is dropped.
async fn outlier_task(core: Arc<Core>, config: OutlierDetection, mut stopped: watch::Receiver<()>) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.tick().await; // The first tick is immediate; judge after a full interval.
    loop {
        tokio::select! {
            _ = ticks.tick() => core.outlier_interval(&config),
            _ = stopped.changed() => return,
        }
    }
}

/// A client-side load balancer for gRPC, usable under any tonic-generated client.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lb_core::{Balancer, Policy, parse_endpoint_list};
///
/// let endpoints = parse_endpoint_list("127.0.0.1:50051,127.0.0.1:50052")?;
/// let balancer = Balancer::builder(endpoints).policy(Policy::default()).build()?;
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
            following: None,
            authorization: None,
            policy: Arc::new(Policy::default()),
            explain: 0,
            seed: None,
            queue_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            settings: Settings {
                connect_timeout: Duration::from_secs(20),
                backoff: Backoff::default(),
                health_service: Some(String::new()),
                outlier: None,
                latency_decay: crate::latency::DEFAULT_DECAY,
                seed: 0,
                tls: None,
                liveness: Some(Liveness::default()),
            },
        }
    }

    /// Starts configuring a balancer that follows a resolver: over the endpoints it
    /// has now (possibly none yet, as when servers have still to register) and every
    /// later change. See [`Balancer::follow`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lb_core::Error> {
    /// use lb_core::{Balancer, resolver::Target};
    ///
    /// let target: Target = "dns:///greeter.default.svc.cluster.local:50051".parse()?;
    /// let balancer = Balancer::following(target.resolve().await?).build()?;
    /// # Ok(()) }
    /// ```
    pub fn following(resolution: impl Into<Resolution>) -> BalancerBuilder {
        let resolution = resolution.into();
        let mut builder = Self::builder(resolution.endpoints());
        builder.following = Some(resolution);
        builder
    }

    /// The name of the policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.shared.core.policy.name()
    }

    /// The state of every endpoint, in the order they were added.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.shared.core.statuses()
    }

    /// How many endpoints calls can be sent to now (READY and not ejected). Reads the
    /// current snapshot: no lock.
    pub fn usable_endpoints(&self) -> usize {
        self.shared.core.snapshot.load().ready.len()
    }

    /// Calls retried on another endpoint so far.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Adds an endpoint and starts connecting to it; `Ok(false)` if it is already here.
    /// It takes calls as soon as it is READY, with no call needed to find it.
    pub fn add_endpoint(&self, endpoint: Endpoint) -> Result<bool, Error> {
        self.shared.core.add(endpoint)
    }

    /// Removes an endpoint: new calls never pick it; calls in flight to it finish.
    /// `false` if it was not here.
    pub fn remove_endpoint(&self, endpoint: &Endpoint) -> bool {
        self.shared.core.remove(endpoint)
    }

    /// Makes the endpoint set exactly `endpoints`: adds the new, removes the missing.
    pub fn set_endpoints(&self, endpoints: &[Endpoint]) -> Result<(), Error> {
        for current in self.endpoints() {
            if !endpoints.contains(&current.endpoint) {
                self.remove_endpoint(&current.endpoint);
            }
        }
        // Every endpoint that can be added is, even if one cannot: the first error
        // is returned after.
        let mut first_error = None;
        for endpoint in endpoints {
            if let Err(err) = self.add_endpoint(endpoint.clone()) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Follows a resolver: applies every endpoint set it publishes, in the background,
    /// until the resolver or the balancer goes away; and when an endpoint fails, asks
    /// the resolver to look again ([`Resolution::resolve_now`]). Takes a
    /// [`Resolution`] from [`Target::resolve`](crate::resolver::Target::resolve), or
    /// any `watch::Receiver<Vec<Endpoint>>` of your own.
    pub fn follow(&self, resolution: impl Into<Resolution>) {
        let resolution = resolution.into();
        let mut updates = resolution.updates();
        let mut failures = self.shared.core.failures.subscribe();
        let core = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                let endpoints = updates.borrow_and_update().clone();
                let Some(shared) = core.upgrade() else { return };
                let balancer = Balancer {
                    rng: SmallRng::seed_from_u64(0),
                    shared,
                };
                if let Err(err) = balancer.set_endpoints(&endpoints) {
                    tracing::warn!("resolver update not applied: {err}");
                }
                drop(balancer);
                loop {
                    tokio::select! {
                        changed = updates.changed() => match changed {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        failed = failures.changed() => match failed {
                            // An endpoint failed: the list may be stale.
                            Ok(()) => resolution.resolve_now(),
                            Err(_) => return,
                        },
                    }
                }
            }
        });
    }

    /// Resolves whenever endpoint states change (for watching, and tests).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.core.changes.subscribe()
    }

    /// Waits until every endpoint has finished its first connection attempt (READY or
    /// TRANSIENT_FAILURE), or `timeout` passes, and returns their states.
    ///
    /// Useful before measuring: calls sent while some endpoints are still connecting
    /// go to the ones already READY, which skews the first shares.
    pub async fn wait_settled(&self, timeout: Duration) -> Vec<EndpointStatus> {
        let deadline = deadline_after(timeout);
        let mut changes = self.changes();
        loop {
            if self.shared.core.settled()
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                return self.endpoints();
            }
        }
    }
}

/// For metrics: a handle that does not keep the balancer alive.
impl Balancer {
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.shared)
    }
}

impl Shared {
    /// The policy's name and every endpoint's state (no RNG drawn: reading metrics
    /// must not change a seeded run's picks).
    pub(crate) fn report(&self) -> (&'static str, Vec<EndpointStatus>) {
        (self.core.policy.name(), self.core.statuses())
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

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // tonic's channel panics on a request without a path (in a task every later
        // call on that connection needs), so such a request never gets that far. A
        // proxy can be handed one; a generated client never makes one.
        if !request.uri().path().starts_with('/') {
            let status = tonic::Status::unimplemented(format!(
                "malformed method path `{}`: a gRPC path is /package.Service/Method",
                request.uri().path()
            ));
            return Box::pin(std::future::ready(Err(status)));
        }
        if let Some(authorization) = &self.shared.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        // The common case picks right here, synchronously, with this clone's RNG.
        let first = self
            .shared
            .try_pick(&mut self.rng, request.headers(), &[])
            .ok();
        let shared = self.shared.clone();
        if shared.retry.max_attempts <= 1
            && let Some(route) = first
        {
            return Box::pin(async move { route.send(request).await.map_err(|f| f.status) });
        }
        let rng = SmallRng::seed_from_u64(self.rng.next_u64());
        Box::pin(async move { shared.call(request, first, rng).await })
    }
}

/// Transparent retries per call (of calls that never reached a server), on top of
/// `RetryPolicy::max_attempts`.
const MAX_TRANSPARENT_RETRIES: u32 = 5;

/// What every clone of a balancer shares.
pub(crate) struct Shared {
    core: Arc<Core>,
    /// How many more picks to explain.
    explain: AtomicU64,
    /// Sent with every call, if set.
    authorization: Option<http::HeaderValue>,
    queue_timeout: Duration,
    retry: RetryPolicy,
    budget: RetryBudget,
    retries: AtomicU64,
    seed: u64,
    clones: AtomicU64,
    /// Dropped with the last balancer clone, which tells the tasks to end.
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

    /// One call: pick, send, and retry elsewhere while the policy allows.
    async fn call(
        &self,
        request: http::Request<Body>,
        mut route: Option<Route>,
        mut rng: SmallRng,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let (mut parts, body) = request.into_parts();
        let mut body = if self.retry.max_attempts > 1 {
            RequestBody::read(body, self.retry.max_replay_bytes).await?
        } else {
            RequestBody::Streaming(body)
        };
        let timeout = grpc_timeout(&parts.headers);
        let deadline = timeout.map(deadline_after);
        let mut tried: Vec<Arc<Subchannel>> = Vec::new();
        let mut attempt = 1;
        let mut transparent = 0;
        let mut last_failure: Option<Status> = None;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let route = match route.take() {
                Some(route) => route,
                None => {
                    self.pick_when_ready(&mut rng, &parts.headers, &tried, left)
                        .await?
                }
            };
            // Each attempt carries what is left of the call's deadline, not all of it.
            let mut fair_share = true;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                // An attempt sent with less than half of the call's time (after a wait
                // for a reconnect, or a retry late in the call) running out is no
                // verdict on its endpoint.
                fair_share = timeout.is_none_or(|total| left * 2 >= total);
                if left.is_zero() {
                    return Err(Status::deadline_exceeded(format!(
                        "deadline passed after {} attempt(s)",
                        attempt - 1
                    )));
                }
                parts
                    .headers
                    .insert("grpc-timeout", grpc_timeout_value(left));
            }
            let sub = route.sub.clone();
            let endpoint = route.state.endpoint().clone();
            let Some(attempt_body) = body.attempt() else {
                // The body outgrew what is kept for a retry while the last attempt
                // was failing: that failure is the call's.
                return Err(last_failure
                    .take()
                    .unwrap_or_else(|| Status::internal("request body already sent")));
            };
            let send = route.send(http::Request::from_parts(parts.clone(), attempt_body));
            // tonic's own timer starts only once a connection is ready; this one also
            // covers a wait for a reconnect.
            let result = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, send).await {
                    Ok(result) => result,
                    Err(_) => {
                        // An endpoint that lets calls run out of time is failing them,
                        // as Envoy and linkerd count it (and its latency estimate has
                        // just taken the whole wait, for the load-aware policies).
                        if fair_share {
                            self.core.record_outcome(&sub, false);
                        }
                        return Err(Status::deadline_exceeded(format!(
                            "endpoint {endpoint}: deadline exceeded"
                        )));
                    }
                },
                None => send.await,
            };
            let retry_allowed = attempt < self.retry.max_attempts && body.is_replayable();
            match result {
                Ok(response) => {
                    let answered = header_status(response.headers());
                    let retry_code =
                        answered.filter(|code| self.retry.retryable_codes.contains(code));
                    match retry_code {
                        Some(code) if retry_allowed && self.budget.allows_retry() => {
                            self.budget.on_failure();
                            body.abandon_attempt();
                            self.note_retry(&sub, &format!("{code:?} from the server"));
                        }
                        Some(_) => {
                            // A failure all the same, only not retried this time.
                            self.budget.on_failure();
                            body.commit();
                            return Ok(response);
                        }
                        None => {
                            self.budget.on_success();
                            body.commit();
                            return Ok(response);
                        }
                    }
                }
                Err(Failure { status, kind })
                    if kind == FailureKind::Unsent
                        && transparent < MAX_TRANSPARENT_RETRIES
                        && body.is_replayable() =>
                {
                    // No server saw it (as gRFC A6's transparent retries): it costs
                    // neither an attempt nor budget, within its own small cap. A
                    // connection closing with GOAWAY refuses calls this way.
                    transparent += 1;
                    body.abandon_attempt();
                    self.note_retry(&sub, status.message());
                    last_failure = Some(status);
                    tried.push(sub);
                    continue;
                }
                Err(Failure { status, kind }) => {
                    // As gRFC A6 throttles: a call that ran out of time is not a
                    // failure that a retry could have saved, and costs no token.
                    if kind != FailureKind::Deadline {
                        self.budget.on_failure();
                    }
                    let retryable = match kind {
                        FailureKind::Unsent => true,
                        FailureKind::Cut => self.retry.retry_cut_calls,
                        FailureKind::Deadline => false,
                    };
                    if !(retryable && retry_allowed && self.budget.allows_retry()) {
                        return Err(status);
                    }
                    body.abandon_attempt();
                    self.note_retry(&sub, status.message());
                    last_failure = Some(status);
                }
            }
            tried.push(sub);
            attempt += 1;
        }
    }

    fn note_retry(&self, sub: &Subchannel, why: &str) {
        sub.retries.fetch_add(1, Ordering::Relaxed);
        self.retries.fetch_add(1, Ordering::Relaxed);
        debug!(endpoint = %sub.state.endpoint(), %why, "retrying on another endpoint");
    }

    /// Picks a route, avoiding endpoints in `tried` (another endpoint for a retry) as
    /// long as some other is usable.
    fn try_pick(
        &self,
        rng: &mut SmallRng,
        headers: &http::HeaderMap,
        tried: &[Arc<Subchannel>],
    ) -> Result<Route, PickError> {
        let snapshot = self.core.snapshot.load();
        let was_tried = |i: usize| {
            snapshot
                .routes
                .get(i)
                .is_some_and(|r| tried.iter().any(|t| Arc::ptr_eq(t, &r.sub)))
        };
        let mut index = self.pick_index(&snapshot, rng, headers)?;
        if was_tried(index) {
            // Ask the policy again a few times, then take any untried usable endpoint.
            index = (0..3)
                .filter_map(|_| self.pick_index(&snapshot, rng, headers).ok())
                .find(|&i| !was_tried(i))
                .or_else(|| (0..snapshot.routes.len()).find(|&i| !was_tried(i)))
                .unwrap_or(index);
        }
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
            sub: route.sub.clone(),
            generation: route.generation,
            core: self.core.clone(),
        })
    }

    fn pick_index(
        &self,
        snapshot: &subchannel::Snapshot,
        rng: &mut SmallRng,
        headers: &http::HeaderMap,
    ) -> Result<usize, PickError> {
        let ctx = PickContext::new(rng).with_headers(headers);
        if self.should_explain() {
            let mut why = String::new();
            let result = snapshot
                .picker
                .pick(&snapshot.ready, &mut ctx.explain_into(&mut why));
            match &result {
                Ok(_) => info!(target: "lb_core::explain", "{why}"),
                Err(err) => info!(target: "lb_core::explain", "{}: {err}", self.core.policy.name()),
            }
            result
        } else {
            snapshot.picker.pick(&snapshot.ready, &mut { ctx })
        }
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

    /// The slow path: no endpoint is usable. Waits while any is still connecting, for
    /// at most the queue timeout, or what is left of the call's deadline if sooner.
    async fn pick_when_ready(
        &self,
        rng: &mut SmallRng,
        headers: &http::HeaderMap,
        tried: &[Arc<Subchannel>],
        call_left: Option<Duration>,
    ) -> Result<Route, Status> {
        let wait = call_left.map_or(self.queue_timeout, |t| t.min(self.queue_timeout));
        let deadline = deadline_after(wait);
        let mut changes = self.core.changes.subscribe();
        loop {
            if let Ok(route) = self.try_pick(rng, headers, tried) {
                return Ok(route);
            }
            if !self.core.any_connecting() {
                // Failing fast must not mean failing without ever yielding: a caller
                // that retries in a loop would then hold its worker thread, and the
                // timers that reconnect the endpoints would never run. This yields
                // once the task has used up its scheduling budget.
                tokio::task::coop::consume_budget().await;
                return Err(self.no_ready_endpoint("all endpoints failed"));
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let why = format!("none became ready within {wait:?}");
                return Err(match call_left {
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
            .map(|s| {
                let state = if s.ejected {
                    format!("{} (ejected)", s.connectivity)
                } else {
                    s.connectivity.to_string()
                };
                match s.last_error {
                    Some(err) => format!("endpoint {}: {state} ({err})", s.endpoint),
                    None => format!("endpoint {}: {state}", s.endpoint),
                }
            })
            .collect();
        Status::unavailable(format!(
            "{}: no ready endpoint, {why}: {}",
            self.core.policy.name(),
            states.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::call::{grpc_timeout, grpc_timeout_value, has_cause};
    use super::*;
    use crate::EndpointState;
    use bytes::Bytes;
    use http_body::{Body as _, Frame};
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

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
    fn grpc_timeout_values_round_trip() {
        for ms in [1u64, 250, 10_000] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "grpc-timeout",
                grpc_timeout_value(Duration::from_millis(ms)),
            );
            assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(ms)));
        }
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
