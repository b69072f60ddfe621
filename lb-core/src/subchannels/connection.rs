//! The task that keeps one endpoint connected: connect, watch its health, notice the
//! connection go, back off, connect again (the state diagram is in `subchannel.rs`).

use std::sync::{Arc, atomic::Ordering};

use rand::rngs::SmallRng;
use tokio::sync::watch;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::{info, warn};

use super::load_reports::LoadReports;
use super::subchannel::{Health, Settings, Subchannel};
use crate::Connectivity;
use crate::sync::lock;
use crate::transport::errors::describe;
use crate::transport::wire::{Closed, ConnectError, End, Wire};

/// What a connection task needs of the pool its endpoint belongs to: the settings, when
/// to stop, and whom to tell when something changed. The pool (`pool.rs`) is the one
/// implementation; the trait keeps the imports one way (the pool starts the tasks, and
/// a task does not know the pool).
pub(crate) trait Fleet: Send + Sync + 'static {
    /// The settings every endpoint shares.
    fn settings(&self) -> &Settings;
    /// Changes when the balancer is dropped: every task ends.
    fn stopped(&self) -> watch::Receiver<()>;
    /// How often the policy wants out-of-band load reports, in nanoseconds (0: none).
    fn oob_period(&self) -> u64;
    /// An endpoint's state changed: publish a new snapshot, and wake the calls waiting.
    fn changed(&self);
    /// An endpoint failed (or lost its connection): the resolver is asked to look again.
    fn failed(&self);
}

/// Keeps one endpoint connected (and health-checked) until it is removed or the
/// balancer is dropped.
pub(crate) struct ConnectionTask {
    pool: Arc<dyn Fleet>,
    sub: Arc<Subchannel>,
    rng: SmallRng,
    stopped: watch::Receiver<()>,
    removed: watch::Receiver<bool>,
    broken: watch::Receiver<u64>,
}

/// Why a connection ended.
enum Ended {
    Stop,
    /// Broken, or dropped for a reason (a call found it gone, the health stream ended).
    Lost(String),
    /// Closed by the server in good order: a GOAWAY, an idle connection closed.
    Closed(String),
}

impl From<End> for Ended {
    fn from(end: End) -> Self {
        match end {
            End::Closed(reason) => Self::Closed(reason),
            End::Broken(reason) => Self::Lost(reason),
        }
    }
}

impl ConnectionTask {
    pub(crate) fn new(pool: Arc<dyn Fleet>, sub: Arc<Subchannel>, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            stopped: pool.stopped(),
            removed: sub.removed.subscribe(),
            broken: sub.broken.subscribe(),
            rng: SmallRng::seed_from_u64(seed),
            pool,
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
                self.pool.failed();
            }
            let endpoint = self.sub.state.endpoint();
            match &reason {
                Some(reason) => info!(%endpoint, %reason, "{previous} -> {state}"),
                None => info!(%endpoint, "{previous} -> {state}"),
            }
        }
        self.pool.changed();
    }

    pub(crate) async fn run(mut self) {
        let mut failures = 0u32;
        let mut generation = 0u64;
        let backoff = self.pool.settings().backoff;
        loop {
            if *self.removed.borrow() {
                return;
            }
            self.set(Connectivity::Connecting, None);
            // The whole attempt (TCP, TLS, HTTP/2) is bounded: a peer that accepts and
            // then says nothing must not keep the endpoint CONNECTING.
            let limit = self.pool.settings().connect_timeout;
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(limit, Self::connect(&self.sub, self.pool.settings())) => attempt,
                _ = Self::stop(&mut self.stopped, &mut self.removed) => return,
            };
            let reason = match attempt {
                Ok(Ok((wire, closed, health))) => {
                    self.sub.connects.fetch_add(1, Ordering::Relaxed);
                    generation += 1;
                    *lock(&self.sub.connection) = Some((wire, generation));
                    let connected_at = tokio::time::Instant::now();
                    let answers_before = self.sub.answers.load(Ordering::Relaxed);
                    let ended = self.serve(health, closed, generation).await;
                    let answered = self.sub.answers.load(Ordering::Relaxed) > answers_before;
                    *lock(&self.sub.connection) = None;
                    // The extra connections go with it (their calls finish first).
                    lock(&self.sub.extra).clear();
                    self.sub.health.set(Health::Unknown);
                    let lasted = connected_at.elapsed() >= backoff.initial;
                    let (reason, fresh) = match ended {
                        Ended::Stop => return,
                        // A connection that lasted and served is a fresh start:
                        // reconnect at once, as gRPC does. One lost at once, or one
                        // that never answered (a hung server accepts connections all
                        // the same), counts as a failed attempt, so that a flapping or
                        // hung server is backed off from.
                        Ended::Lost(reason) => (reason, answered && lasted),
                        // A server that closed a connection after a while (a GOAWAY, or
                        // a connection idle for too long, which carried no call to
                        // answer) is not failing: a fresh start too. (One that died
                        // fails the next attempt, and is backed off from then.)
                        Ended::Closed(reason) => (reason, lasted),
                    };
                    self.sub.disconnections.fetch_add(1, Ordering::Relaxed);
                    if fresh {
                        failures = 0;
                        // IDLE, not TRANSIENT_FAILURE: calls wait for the new attempt
                        // instead of failing fast. The resolver is asked to look again
                        // all the same.
                        self.pool.failed();
                        self.set(Connectivity::Idle, Some(reason));
                        continue;
                    }
                    reason
                }
                Ok(Err(err)) => {
                    self.sub.connect_failures.fetch_add(1, Ordering::Relaxed);
                    describe(&*err)
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
    ) -> Result<(Wire, Closed, Option<Wire>), ConnectError> {
        // Our own connector: a TLS refusal is then read as such (see `connector`).
        let scaling = settings.max_connections > 1;
        let calls = async {
            let (wire, closed) = sub
                .target
                .connect(sub.call_keep_alive(settings.liveness), scaling)
                .await?;
            // When the connection scales (gRFC A105), its server's limit is known before
            // the first call: calls taken on it before, with no limit yet, would wait
            // inside it for streams that the extra connections had free. (A server sends
            // its SETTINGS first thing; the attempt's timeout bounds the wait.)
            if scaling {
                wire.streams.settled().await;
            }
            Ok::<_, ConnectError>((wire, closed))
        };
        if settings.health_service.is_none() {
            let (wire, closed) = calls.await?;
            return Ok((wire, closed, None));
        }
        // The health connection's end shows in its stream: its `Closed` is not needed.
        let health = sub.target.connect(Subchannel::health_keep_alive(), false);
        let ((wire, closed), (health, _)) = tokio::try_join!(calls, health)?;
        Ok((wire, closed, Some(health)))
    }

    /// READY on a new connection: what was learnt of the endpoint's latency belongs to
    /// the old one (a server that hung, say, would otherwise be shunned by `peak_ewma`
    /// for as long as its stall takes to decay).
    fn ready_on_new_connection(&self) {
        self.sub.state.reset_latency();
        self.set(Connectivity::Ready, None);
    }

    /// Opens the out-of-band load-report stream on this connection, if the policy asks
    /// for one; it ends with the connection, or when the guard is dropped.
    fn start_load_reports(&self) -> Option<LoadReports> {
        LoadReports::start(&self.sub, self.pool.oob_period())
    }

    /// While connected: READY (or as the health check says) until the connection is
    /// lost, a call reports it broken, or the task must stop.
    async fn serve(&mut self, health: Option<Wire>, mut closed: Closed, generation: u64) -> Ended {
        // Load reports belong to the connection: a new one starts a new blackout (gRFC
        // A58). Forgotten before the out-of-band stream opens, so as not to lose its
        // first report.
        self.sub.state.reset_load();
        let _load_reports = self.start_load_reports();
        let (Some(service), Some(wire)) = (self.pool.settings().health_service.clone(), health)
        else {
            self.ready_on_new_connection();
            return tokio::select! {
                _ = Self::broken(&mut self.broken, generation) => Ended::Lost(self.last_error()),
                end = closed.wait() => end.into(),
                _ = Self::stop(&mut self.stopped, &mut self.removed) => Ended::Stop,
            };
        };
        let mut health = HealthClient::new(wire);
        let request = HealthCheckRequest { service };
        // A server that accepted the connection but never answers its health check
        // must not keep the endpoint CONNECTING forever.
        let answer_within = self.pool.settings().connect_timeout;
        let stream = tokio::select! {
            stream = tokio::time::timeout(answer_within, health.watch(request)) => match stream {
                Ok(stream) => stream,
                Err(_) => return Ended::Lost(format!("no health answer within {answer_within:?}")),
            },
            end = closed.wait() => return end.into(),
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
                    end = closed.wait() => end.into(),
                    _ = Self::stop(&mut self.stopped, &mut self.removed) => Ended::Stop,
                };
            }
            Err(status) => {
                // The cause (a TLS alert, a reset) is in the status's sources. A TLS
                // refusal is said first and plainly: it is what the user must fix.
                let source = std::error::Error::source(&status);
                if let Some(tls) = source.and_then(crate::transport::tls::explain) {
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
                            self.sub.health.set(Health::Serving);
                            if std::mem::take(&mut first_serving) {
                                self.ready_on_new_connection();
                            } else {
                                self.set(Connectivity::Ready, None);
                            }
                        }
                        other => {
                            self.sub.answers.fetch_add(1, Ordering::Relaxed);
                            self.sub.health.set(Health::NotServing);
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
                end = closed.wait() => return end.into(),
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
