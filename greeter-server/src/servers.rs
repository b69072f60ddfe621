//! Running instances: [`spawn`] binds every port and starts one tonic server on each
//! (health, reflection, limits, the token check); [`Servers`] reports on them, turns
//! their knobs and shuts them down gracefully.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
    time::Duration,
};

use greeter_proto::MyServiceServer;
use rand::{SeedableRng, rngs::StdRng};
use subtle::ConstantTimeEq;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status, metadata::MetadataValue, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use lb_core::{
    Endpoint,
    resolver::{EtcdTarget, etcd::Registration},
};

use crate::config::{Config, ServerError};
use crate::greeter::{CallCount, Capacity, Greeter, Latency};
use crate::limits::{self, MAX_CONCURRENT_CALLS_PER_CONNECTION, MAX_MESSAGE_SIZE};

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
