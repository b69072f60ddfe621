//! The article's greeter: `MyService.SayHello` answers `Hello, {name}!`.
//!
//! One process can serve on many ports; each port is an independent *instance* with
//! its own address, health status and demo knobs, exactly as if it were a separate
//! server. Every instance:
//!
//! - answers `SayHello` with `Hello, {name}!`, and stamps the response metadata
//!   `x-served-by: host:port`, so a client can see which server answered without any
//!   change to the proto;
//! - serves `grpc.health.v1.Health` (SERVING for `""` and `example.MyService`) and
//!   server reflection, so `grpcurl` can list and call it;
//! - can add latency to every call and fail a seeded fraction of calls with
//!   `UNAVAILABLE`, to make the policies' differences visible;
//! - shuts down gracefully: stops accepting, lets calls in flight finish, then returns;
//! - can register itself in etcd ([`Servers::register`]) under a lease that it keeps
//!   alive, so that clients watching etcd find it, and lose it when it stops or dies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two instances on ports the OS chooses, on 127.0.0.1.
//! let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0])).await?;
//! assert_eq!(servers.addrs().len(), 2);
//! servers.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use greeter_proto::{HelloRequest, HelloResponse, MyService, MyServiceServer};
use rand::{Rng, SeedableRng, rngs::StdRng};
use subtle::ConstantTimeEq;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::service::interceptor::InterceptedService;
use tonic::{
    Request, Response, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::Server,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

pub use lb_core::resolver::EtcdTarget;
use lb_core::{Endpoint, resolver::etcd::Registration};

/// The response metadata key that names the instance that answered.
pub use greeter_proto::SERVED_BY;

pub mod certs;
pub mod control;
pub mod limits;

pub use limits::{
    MAX_CONCURRENT_CALLS_PER_CONNECTION, MAX_CONCURRENT_STREAMS, MAX_MESSAGE_SIZE, REQUEST_TIMEOUT,
};

/// What to serve, and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address to bind (default 127.0.0.1: reachable from this machine only).
    pub host: IpAddr,
    /// One instance per port. Port 0 asks the OS for a free port.
    pub ports: Vec<u16>,
    /// Added to every call before it is answered (while it holds its share of the
    /// capacity, if one is set).
    pub latency: Duration,
    /// The fraction of calls, from 0 to 1, answered with `UNAVAILABLE`.
    pub error_rate: f64,
    /// A tail: a fraction of the calls, chosen by the seeded RNG, take this much longer
    /// (`--latency-tail 5%:50ms`), as a server's slow calls (a GC pause, a cold cache)
    /// do. What hedging is for.
    pub latency_tail: Option<LatencyTail>,
    /// Seeds the choice of which calls fail (each instance adds its index).
    pub seed: u64,
    /// Calls each instance works on at once; the rest wait (`None`: no limit).
    pub capacity: Option<usize>,
    /// The HTTP/2 streams (calls) a client may have open at once on one connection,
    /// sent in the server's SETTINGS (default [`MAX_CONCURRENT_STREAMS`]): a call beyond
    /// it waits in its client's connection. A low one shows gRFC A105's connection
    /// scaling at work.
    pub max_concurrent_streams: u32,
    /// Report load with ORCA (gRFC A51): a report in every answer's trailer and the
    /// out-of-band `OpenRcaService`.
    pub orca: bool,
    /// Close each connection after this long (GOAWAY, then the calls in flight finish),
    /// so that clients reconnect: how servers spread load after a fleet grows.
    pub max_connection_age: Option<Duration>,
    /// How long a call may take to be answered (DEADLINE_EXCEEDED beyond it).
    pub request_timeout: Duration,
    /// If set, `SayHello` answers only calls carrying `authorization: Bearer <token>`
    /// (UNAUTHENTICATED otherwise). Health and reflection stay open, for probes.
    pub token: Option<String>,
    /// Serve TLS (and, if it names a client CA, require client certificates: mutual
    /// TLS) instead of plaintext HTTP/2. See [`lb_core::tls::server_config`].
    pub tls: Option<lb_core::tls::ServerTls>,
    /// Limits on the connections each instance accepts (how many, how long before
    /// the HTTP/2 preface, how long idle). See [`lb_core::server`].
    pub connections: lb_core::server::ConnectionLimits,
    /// Record every call in these metrics (see [`lb_core::metrics`]).
    pub metrics: Option<lb_core::metrics::ServerMetrics>,
}

impl Config {
    /// Instances on 127.0.0.1 at `ports`, with no added latency and no errors.
    pub fn on_ports(ports: &[u16]) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: ports.to_vec(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            latency_tail: None,
            seed: 0,
            capacity: None,
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            orca: false,
            max_connection_age: None,
            request_timeout: REQUEST_TIMEOUT,
            token: None,
            tls: None,
            connections: lb_core::server::ConnectionLimits::default(),
            metrics: None,
        }
    }

    /// The same, recording calls in `metrics`.
    pub fn with_metrics(mut self, metrics: lb_core::metrics::ServerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The same, serving TLS (mutual TLS if `tls` names a client CA).
    pub fn with_tls(mut self, tls: lb_core::tls::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same, requiring `authorization: Bearer <token>` on every `SayHello`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// The same, recycling connections after `age`.
    pub fn with_max_connection_age(mut self, age: Duration) -> Self {
        self.max_connection_age = Some(age);
        self
    }

    /// The same, with `latency` added to every call.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The same, with a latency tail (see [`LatencyTail`]).
    pub fn with_latency_tail(mut self, tail: LatencyTail) -> Self {
        self.latency_tail = Some(tail);
        self
    }

    /// The same, failing `rate` of the calls.
    pub fn with_error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }
}

/// `--latency-tail 5%:50ms`: 5 % of the calls take 50 ms more.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyTail {
    /// The fraction of calls, from 0 to 1.
    pub fraction: f64,
    /// How much longer they take.
    pub extra: Duration,
}

impl std::str::FromStr for LatencyTail {
    type Err = String;

    /// Reads `PERCENT%:DURATION`, e.g. `5%:50ms` or `0.5%:1s`.
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("`{text}` is not PERCENT%:DURATION, e.g. 5%:50ms");
        let (percent, extra) = text.split_once(':').ok_or_else(usage)?;
        let percent: f64 = percent
            .strip_suffix('%')
            .ok_or_else(usage)?
            .parse()
            .map_err(|_| usage())?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("`{text}`: the percentage must be from 0 to 100"));
        }
        let extra = humantime::parse_duration(extra)
            .map_err(|e| format!("`{text}`: `{extra}` is not a duration: {e}"))?;
        if extra > Duration::from_secs(3600) {
            return Err(format!("`{text}`: at most 1h more per call"));
        }
        Ok(Self {
            fraction: percent / 100.0,
            extra,
        })
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process already listens on the port.
    #[error(
        "port {port} on {host} is already in use (is another server running? choose another --port)"
    )]
    PortInUse {
        /// The host that was asked for.
        host: IpAddr,
        /// The busy port.
        port: u16,
    },
    /// Any other failure to listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server on `addr` failed while serving.
    #[error("server on {addr} failed: {source}")]
    Serve {
        /// The instance's address.
        addr: SocketAddr,
        /// What tonic said.
        source: tonic::transport::Error,
    },
    /// Reflection could not be set up from the embedded descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// `--error-rate` outside 0..=1.
    #[error("error rate {0} is outside 0..=1")]
    ErrorRate(f64),
    /// Registration in etcd failed.
    #[error("cannot register in etcd: {0}")]
    Register(#[source] lb_core::Error),
    /// The bound host is a wildcard (0.0.0.0, ::), which no client can dial.
    #[error(
        "listening on {host}, which clients cannot dial: say which address to register (--advertise)"
    )]
    Advertise {
        /// The wildcard host.
        host: IpAddr,
    },
    /// A server task panicked (a bug).
    #[error("server task on {addr} panicked")]
    Panicked {
        /// The instance's address.
        addr: SocketAddr,
    },
}

/// The `MyService` implementation of one instance.
#[derive(Debug)]
pub struct Greeter {
    served_by: AsciiMetadataValue,
    latency: Arc<Latency>,
    error_rate: f64,
    latency_tail: Option<LatencyTail>,
    rng: Mutex<StdRng>,
    calls: Arc<CallCount>,
    capacity: Option<Arc<Capacity>>,
}

/// At most `size` calls worked on at once; the rest wait. How busy it was is the
/// instance's utilisation: the time calls held a slot, over the slots' time.
#[derive(Debug)]
pub struct Capacity {
    slots: tokio::sync::Semaphore,
    size: usize,
    /// Microseconds calls have held a slot, in all.
    busy: AtomicU64,
    /// When utilisation was last read, and `busy` then.
    last: Mutex<(std::time::Instant, u64)>,
}

/// A capacity slot held by a call. Its time counts as busy when it is given back,
/// whether the call finished, timed out or was cancelled by its client.
struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    since: std::time::Instant,
    capacity: &'a Capacity,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.capacity.busy.fetch_add(held, Ordering::Relaxed);
    }
}

impl Capacity {
    fn new(size: usize) -> Self {
        Self {
            slots: tokio::sync::Semaphore::new(size),
            size,
            busy: AtomicU64::new(0),
            last: Mutex::new((std::time::Instant::now(), 0)),
        }
    }

    /// The share of the slots' time in use since the last reading (0 to 1).
    pub fn utilization(&self) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let busy = self.busy.load(Ordering::Relaxed);
        let elapsed = now.duration_since(last.0).as_micros() as f64;
        let used = busy.saturating_sub(last.1) as f64;
        *last = (now, busy);
        if elapsed <= 0.0 {
            return 0.0;
        }
        (used / (elapsed * self.size as f64)).min(1.0)
    }
}

/// The delay added to every call, which [`Servers::set_latency`] can change while the
/// instances serve (the playground's "slow down"). Kept in whole microseconds.
#[derive(Debug, Default)]
struct Latency(AtomicU64);

impl Latency {
    fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.store(micros, Ordering::Relaxed);
    }
}

/// Calls received by all instances: an atomic counter on the hot path, published on
/// a watch channel only once someone watches (tests do), since a watch channel's
/// update takes a lock that every server thread would contend for on every call.
#[derive(Debug)]
struct CallCount {
    count: AtomicU64,
    watched: AtomicBool,
    tx: watch::Sender<u64>,
}

impl CallCount {
    // SeqCst, not Relaxed: `add_one` stores the count then loads `watched`, `watch`
    // stores `watched` then loads the count; with weaker orderings both loads may see
    // the old value, and a call would be counted but never published.
    fn add_one(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if self.watched.load(Ordering::SeqCst) {
            self.publish(n);
        }
    }

    /// Stores `n` unless a larger count is already there (calls race to publish).
    fn publish(&self, n: u64) {
        self.tx.send_if_modified(|current| {
            let newer = n > *current;
            if newer {
                *current = n;
            }
            newer
        });
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.watched.store(true, Ordering::SeqCst);
        self.publish(self.count.load(Ordering::SeqCst));
        self.tx.subscribe()
    }
}

impl Greeter {
    /// Should this call fail? Decided by the seeded RNG, so a seeded run repeats.
    fn inject_failure(&self) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_bool(self.error_rate.min(1.0))
    }

    /// How much longer this call takes, if it is in the tail: drawn from the seeded
    /// RNG as well.
    fn tail(&self) -> Option<Duration> {
        let tail = self.latency_tail.filter(|t| t.fraction > 0.0)?;
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_bool(tail.fraction.min(1.0))
            .then_some(tail.extra)
    }
}

#[tonic::async_trait]
impl MyService for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        self.calls.add_one();
        // Wait for a slot, if the capacity is limited; the call's work (its latency)
        // is done holding it.
        let slot = match &self.capacity {
            Some(capacity) => Some(Slot {
                _permit: capacity
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| Status::unavailable("shutting down"))?,
                since: std::time::Instant::now(),
                capacity,
            }),
            None => None,
        };
        let latency = self.latency.get() + self.tail().unwrap_or_default();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        drop(slot);
        if self.inject_failure() {
            let mut status = Status::unavailable(format!(
                "injected failure (--error-rate {})",
                self.error_rate
            ));
            status
                .metadata_mut()
                .insert(SERVED_BY, self.served_by.clone());
            return Err(status);
        }
        let name = request.into_inner().name;
        let mut response = Response::new(HelloResponse {
            message: format!("Hello, {name}!"),
        });
        response
            .metadata_mut()
            .insert(SERVED_BY, self.served_by.clone());
        Ok(response)
    }
}

/// Running instances. Stop them with [`shutdown`](Self::shutdown): it drains them and
/// waits until they have stopped.
#[derive(Debug)]
pub struct Servers {
    instances: Vec<Instance>,
    stop: watch::Sender<bool>,
    calls: Arc<CallCount>,
    latency: Arc<Latency>,
    registration: Option<Registration>,
}

#[derive(Debug)]
struct Instance {
    addr: SocketAddr,
    health: HealthReporter,
    connections: Arc<lb_core::server::ConnectionStats>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Servers {
    /// The bound addresses, one per instance, in the order the ports were given.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.instances.iter().map(|i| i.addr).collect()
    }

    /// Registers every instance under `target`'s prefix in etcd, as `advertise` (or the
    /// bound host) and its port, with a lease of `ttl` kept alive in the background.
    /// [`Servers::shutdown`] deregisters first; a crash leaves the keys until the
    /// lease expires.
    pub async fn register(
        &mut self,
        target: &EtcdTarget,
        advertise: Option<IpAddr>,
        ttl: Duration,
    ) -> Result<(), ServerError> {
        let endpoints = self
            .addrs()
            .into_iter()
            .map(|addr| {
                let host = match advertise {
                    Some(host) => host,
                    None if addr.ip().is_unspecified() => {
                        return Err(ServerError::Advertise { host: addr.ip() });
                    }
                    None => addr.ip(),
                };
                SocketAddr::new(host, addr.port())
                    .to_string()
                    .parse::<Endpoint>()
                    .map_err(ServerError::Register)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let registration = Registration::register(target, endpoints, ttl)
            .await
            .map_err(ServerError::Register)?;
        self.registration = Some(registration);
        Ok(())
    }

    /// The addresses as a `--servers` list: `127.0.0.1:50051,127.0.0.1:50052`.
    pub fn endpoints_list(&self) -> String {
        let addrs: Vec<String> = self.addrs().iter().map(ToString::to_string).collect();
        addrs.join(",")
    }

    /// The health reporter of instance `index`, to flip its health.
    pub fn health(&self, index: usize) -> Option<&HealthReporter> {
        self.instances.get(index).map(|i| &i.health)
    }

    /// What instance `index` has accepted, refused and closed of its connections.
    pub fn connections(&self, index: usize) -> Option<&lb_core::server::ConnectionStats> {
        self.instances.get(index).map(|i| &*i.connections)
    }

    /// Sets every instance's health (for `""` and `example.MyService`) to SERVING or
    /// NOT_SERVING. Clients that health-check stop or resume sending calls.
    pub async fn set_serving(&self, serving: bool) {
        for index in 0..self.instances.len() {
            self.set_instance_serving(index, serving).await;
        }
    }

    /// The same, for instance `index` only.
    pub async fn set_instance_serving(&self, index: usize, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if let Some(instance) = self.instances.get(index) {
            for service in ["", greeter_proto::SERVICE_NAME] {
                instance.health.set_service_status(service, status).await;
            }
            info!(addr = %instance.addr, "health: {status}");
        }
    }

    /// Sets the delay added to every call from now on, on every instance (calls
    /// already waiting keep the delay they started with).
    pub fn set_latency(&self, latency: Duration) {
        self.latency.set(latency);
        info!("latency: {latency:?}");
    }

    /// The delay added to every call now.
    pub fn latency(&self) -> Duration {
        self.latency.get()
    }

    /// Watches the number of `SayHello` calls received by all instances.
    pub fn calls(&self) -> watch::Receiver<u64> {
        self.calls.watch()
    }

    /// Stops accepting connections, lets calls in flight finish, and returns when every
    /// instance has stopped.
    ///
    /// First every instance reports NOT_SERVING, so that health-checking clients stop
    /// sending it calls, and then ends its health `Watch` streams: those streams never
    /// end by themselves, and a graceful shutdown waits for every open stream (the
    /// ORCA load-report streams end the same way).
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        // First leave etcd, so that watching clients stop picking us at once.
        if let Some(registration) = self.registration.take()
            && let Err(err) = registration.deregister().await
        {
            warn!("{err}; the registration ends when its lease expires");
        }
        for instance in &mut self.instances {
            for service in ["", greeter_proto::SERVICE_NAME] {
                instance
                    .health
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
                instance.health.clear_service_status(service).await;
            }
        }
        // `send_replace` stores the value even if no instance is listening any more.
        self.stop.send_replace(true);
        self.wait().await
    }

    /// Waits until every instance has stopped (after a shutdown, or an error).
    pub async fn wait(self) -> Result<(), ServerError> {
        let mut first_error = None;
        for instance in self.instances {
            let result = match instance.task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(ServerError::Serve {
                    addr: instance.addr,
                    source,
                }),
                Err(_) => Err(ServerError::Panicked {
                    addr: instance.addr,
                }),
            };
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The methods every instance serves, as gRPC names them (for the metrics' labels).
pub const METHODS: [&str; 5] = [
    "example.MyService/SayHello",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Binds every port of `config` and starts serving on each.
///
/// All ports are bound before any instance starts, so a busy port fails the whole
/// start with an error naming it, and nothing is left half-running.
pub async fn spawn(config: Config) -> Result<Servers, ServerError> {
    if !(0.0..=1.0).contains(&config.error_rate) {
        return Err(ServerError::ErrorRate(config.error_rate));
    }
    let mut listeners = Vec::with_capacity(config.ports.len());
    for &port in &config.ports {
        let addr = SocketAddr::new(config.host, port);
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                ServerError::PortInUse {
                    host: config.host,
                    port,
                }
            } else {
                ServerError::Bind { addr, source }
            }
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        listeners.push((local, listener));
    }

    if let Some(metrics) = &config.metrics {
        metrics.add_methods(METHODS);
    }
    let (stop, _) = watch::channel(false);
    let calls = Arc::new(CallCount {
        count: AtomicU64::new(0),
        watched: AtomicBool::new(false),
        tx: watch::Sender::new(0),
    });
    let latency = Arc::new(Latency::default());
    latency.set(config.latency);
    let mut instances = Vec::with_capacity(listeners.len());
    for (index, (addr, listener)) in listeners.into_iter().enumerate() {
        let greeter = Greeter {
            served_by: MetadataValue::try_from(addr.to_string())
                .unwrap_or_else(|_| MetadataValue::from_static("unknown")),
            latency: latency.clone(),
            error_rate: config.error_rate,
            latency_tail: config.latency_tail,
            rng: Mutex::new(StdRng::seed_from_u64(
                config.seed.wrapping_add(index as u64),
            )),
            calls: calls.clone(),
            capacity: config.capacity.map(|n| Arc::new(Capacity::new(n))),
        };
        // ORCA: this instance's load, reported per call and out of band; with a
        // capacity, the share of it in use is the application utilisation.
        let reporter = config.orca.then(|| {
            let reporter = lb_core::orca::server::LoadReporter::new();
            match &greeter.capacity {
                Some(capacity) => {
                    reporter.set_named_metric("capacity", capacity.size as f64);
                    let capacity = capacity.clone();
                    reporter.with_application_utilization(move || capacity.utilization())
                }
                None => reporter,
            }
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<MyServiceServer<Arc<Greeter>>>().await;
        let reflection_v1 = reflection()?.build_v1()?;
        let reflection_v1alpha = reflection()?.build_v1alpha()?;

        let greeter = InterceptedService::new(
            MyServiceServer::from_arc(Arc::new(greeter))
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            TokenCheck::new(config.token.as_deref()),
        );
        let mut builder = Server::builder();
        if let Some(age) = config.max_connection_age {
            // No grace period on purpose: with one, tonic 0.14 waits out the age and
            // the grace and then drops the connection without a GOAWAY, cutting calls
            // off; without one, it sends GOAWAY at the age and lets calls finish.
            builder = builder.max_connection_age(age);
        }
        let router = builder
            .concurrency_limit_per_connection(MAX_CONCURRENT_CALLS_PER_CONNECTION)
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_max_header_list_size(limits::MAX_HEADER_LIST_SIZE)
            .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
            .http2_max_pending_accept_reset_streams(Some(
                lb_core::server::MAX_PENDING_ACCEPT_RESETS,
            ))
            .layer(lb_core::server::GrpcOnlyLayer)
            .layer(match &config.metrics {
                Some(metrics) => metrics.layer(addr),
                None => lb_core::metrics::ServerMetricsLayer::off(),
            })
            // Outside the limits: a call the server times out is counted, and failed.
            .layer(reporter.as_ref().map_or_else(
                lb_core::orca::server::LoadReportLayer::off,
                lb_core::orca::server::LoadReporter::layer,
            ))
            .layer(limits::LimitsLayer::new(config.request_timeout))
            .add_service(greeter)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_optional_service(reporter.as_ref().map(|r| r.service()));
        // Connections are accepted (and TLS handshakes done) with every limit of
        // lb_core::server: how many at once, the preface and idle timeouts.
        let incoming =
            lb_core::server::incoming(listener, config.connections.clone(), config.tls.clone());
        let connections = incoming.stats();
        let mut stopped = stop.subscribe();
        let open_streams = reporter.clone();
        let shutdown = async move {
            // An error means the `Servers` handle is gone: stop too.
            let _ = stopped.wait_for(|&stop| stop).await;
            // The load-report streams never end by themselves, and a graceful
            // shutdown waits for every open stream.
            if let Some(reporter) = open_streams {
                reporter.close();
            }
            info!(%addr, "shutting down: no new connections, finishing calls in flight");
        };
        info!(
            %addr,
            latency = ?config.latency,
            error_rate = config.error_rate,
            latency_tail = ?config.latency_tail.map(|t| format!("{}%:{:?}", t.fraction * 100.0, t.extra)),
            tls = config.tls.is_some(),
            "serving example.MyService, grpc.health.v1.Health and reflection"
        );
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
        instances.push(Instance {
            addr,
            health,
            connections,
            task,
        });
    }
    Ok(Servers {
        instances,
        stop,
        calls,
        latency,
        registration: None,
    })
}

/// Lets a call through only with `authorization: Bearer <token>`, the token compared
/// in constant time (so that timing does not reveal how much of a guess was right).
/// With no token configured, every call passes.
#[derive(Clone, Debug)]
pub struct TokenCheck {
    token: Option<Arc<[u8]>>,
}

impl TokenCheck {
    /// A check for `token` (`None`: no check).
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(expected)) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
        }
    }
}

fn reflection() -> Result<tonic_reflection::server::Builder<'static>, ServerError> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(greeter_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET))
}

/// Parses `--port` values: `50051`, or an inclusive range `50051-50053`.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{s}` is not a port number (0-65535)"))
    };
    match text.split_once('-') {
        None => Ok(vec![port(text)?]),
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if first == 0 || first > last {
                return Err(format!(
                    "`{text}` is not a range of ports (expected e.g. 50051-50053)"
                ));
            }
            Ok((first..=last).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greeter_proto::{HelloRequest, MyServiceClient};

    #[test]
    fn ports_and_ranges() {
        assert_eq!(parse_ports("50051"), Ok(vec![50051]));
        assert_eq!(parse_ports("50051-50053"), Ok(vec![50051, 50052, 50053]));
        assert!(parse_ports("5005x").unwrap_err().contains("`5005x`"));
        assert!(parse_ports("70000").is_err());
        assert!(parse_ports("50053-50051").unwrap_err().contains("range"));
    }

    #[tokio::test]
    async fn a_busy_port_is_named() {
        let first = spawn(Config::on_ports(&[0])).await.unwrap();
        let port = first.addrs()[0].port();
        let err = spawn(Config::on_ports(&[0, port])).await.unwrap_err();
        assert!(matches!(err, ServerError::PortInUse { port: p, .. } if p == port));
        assert!(err.to_string().contains(&format!("port {port} ")), "{err}");
        first.shutdown().await.unwrap();
    }

    #[test]
    fn latency_tails_are_read_and_checked() {
        let tail: LatencyTail = "5%:50ms".parse().unwrap();
        assert_eq!(
            tail,
            LatencyTail {
                fraction: 0.05,
                extra: Duration::from_millis(50)
            }
        );
        let tail: LatencyTail = "0.5%:1s".parse().unwrap();
        assert_eq!(tail.extra, Duration::from_secs(1));
        for (bad, says) in [
            ("5:50ms", "PERCENT%:DURATION"),
            ("5%", "PERCENT%:DURATION"),
            ("150%:1ms", "from 0 to 100"),
            ("5%:soon", "`soon` is not a duration"),
            ("5%:2h", "at most 1h"),
        ] {
            let err = bad.parse::<LatencyTail>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    /// The tail is drawn from the seeded RNG: about its fraction of calls, the same
    /// ones on every run with the same seed.
    #[tokio::test(start_paused = true)]
    async fn a_tenth_of_the_calls_take_longer() {
        let config = Config::on_ports(&[0]).with_latency_tail("10%:100ms".parse().unwrap());
        let servers = spawn(config).await.unwrap();
        let mut client = MyServiceClient::connect(format!("http://{}", servers.addrs()[0]))
            .await
            .unwrap();
        let mut slow = Vec::new();
        for i in 0..200 {
            let start = tokio::time::Instant::now();
            client
                .say_hello(HelloRequest { name: "t".into() })
                .await
                .unwrap();
            if start.elapsed() >= Duration::from_millis(100) {
                slow.push(i);
            }
        }
        assert!(
            (10..=30).contains(&slow.len()),
            "{} slow of 200",
            slow.len()
        );
        servers.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn error_rate_is_checked() {
        let err = spawn(Config::on_ports(&[0]).with_error_rate(1.5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1.5"));
    }
}
