//! Prometheus metrics: what the balancer and a server are doing, per endpoint.
//!
//! A program started with `--metrics 127.0.0.1:9090` answers `GET /metrics` with the
//! [OpenMetrics] text format, which Prometheus scrapes. Names follow gRPC's own
//! OpenTelemetry metrics where one exists ([gRFC A66], [A94]), written the Prometheus
//! way: dots become underscores, counters end in `_total`, durations are in seconds.
//! Every balancer series carries `grpc_target` (what the program was pointed at) and
//! `grpc_lb_endpoint` (one backend), so a dashboard shows how calls spread.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `grpc_client_attempt_started_total` | counter | calls sent to the endpoint (its picks, retries included) |
//! | `grpc_client_attempt_duration_seconds` | histogram | pick to end of the response |
//! | `grpc_lb_endpoint_calls_total{outcome}` | counter | `ok`, or `failed` because of the endpoint |
//! | `grpc_lb_endpoint_in_flight` | gauge | calls under way now (what least_request reads) |
//! | `grpc_lb_endpoint_state{state}` | gauge | 1 for the current connectivity state |
//! | `grpc_lb_endpoint_health_serving` | gauge | 1 if its health check says SERVING |
//! | `grpc_lb_endpoint_ejected` / `_ejections_total` | gauge / counter | outlier detection |
//! | `grpc_lb_endpoint_retries_total` | counter | calls that failed here and were sent elsewhere |
//! | `grpc_subchannel_connection_attempts_succeeded_total`, `..._failed_total` | counter | connecting |
//! | `grpc_subchannel_disconnections_total` | counter | connections lost |
//! | `grpc_subchannel_open_connections` | gauge | 1 while connected |
//!
//! and on servers (greeter-server, and lb-proxy's front), per `server_address`:
//! `grpc_server_call_started_total{grpc_method}`,
//! `grpc_server_call_duration_seconds{grpc_method, grpc_status}` (a call dropped before
//! its answer, because the client went away, is `CANCELLED`) and
//! `grpc_server_call_in_flight`. The same address twice in one balancer (with two
//! weights) is told apart by a suffix: `grpc_lb_endpoint="127.0.0.1:50051#2"`.
//!
//! A worked example: after 2 calls to `127.0.0.1:50051`, one answered in 3 ms and one
//! in 40 ms, the histogram reads `_bucket{le="0.0025"} 0`, `{le="0.005"} 1`,
//! `{le="0.05"} 2`, `_count 2`, `_sum 0.043`: buckets count calls *at or below*
//! their bound, so the p50 lies between 2.5 and 5 ms.
//!
//! ```
//! use lb_core::{Balancer, metrics::{BalancerMetrics, Registry}};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::default();
//! let metrics = BalancerMetrics::register(&mut registry, "127.0.0.1:50051");
//! let balancer = Balancer::builder(lb_core::parse_endpoint_list("127.0.0.1:50051")?).build()?;
//! metrics.watch(&balancer);
//! let text = lb_core::metrics::encode(&registry);
//! assert!(text.contains(r#"grpc_lb_endpoint_in_flight{grpc_target="127.0.0.1:50051",grpc_lb_policy="round_robin",grpc_lb_endpoint="127.0.0.1:50051"} 0"#));
//! # Ok(()) }
//! ```
//!
//! [OpenMetrics]: https://prometheus.io/docs/specs/om/open_metrics_spec/
//! [gRFC A66]: https://github.com/grpc/proposal/blob/master/A66-otel-stats.md
//! [A94]: https://github.com/grpc/proposal/blob/master/A94-subchannel-otel-metrics.md

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http_body_util::Full;
pub use prometheus_client::registry::Registry;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        gauge::Gauge, histogram::Histogram,
    },
    registry::Unit,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info};

use crate::{Balancer, Connectivity, Error, balancer::Health};

/// Upper bounds of the duration buckets, in seconds: 100 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations in lock-free counters: recording is three atomic adds, so
/// every call can afford it.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Calls per bucket (not cumulative); the last one is beyond 10 s.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration, in nanoseconds.
    pub fn observe_nanos(&self, nanos: u64) {
        let seconds = nanos as f64 / 1e9;
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now (`count` is the buckets' total; `sum` is read apart, so a scrape
    /// during calls may see a call in one and not yet the other).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            counts,
        }
    }
}

/// A [`DurationHistogram`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Calls recorded.
    pub count: u64,
    /// Their durations added up, in seconds.
    pub sum_seconds: f64,
    /// Calls per bucket of [`DURATION_BUCKETS`] (not cumulative), then beyond it.
    pub counts: Vec<u64>,
}

impl HistogramSnapshot {
    /// (upper bound, calls in that bucket) pairs, the last bound `f64::MAX` (+Inf),
    /// as the text encoder takes them.
    fn buckets(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// Per-endpoint metrics of the balancers it [watches](BalancerMetrics::watch), read
/// at scrape time from the counters the balancer keeps anyway.
#[derive(Clone, Debug)]
pub struct BalancerMetrics {
    target: Arc<str>,
    watched: Arc<Mutex<Vec<Weak<crate::balancer::Router>>>>,
}

impl BalancerMetrics {
    /// Registers the balancer metrics in `registry`, labelled `grpc_target=target`.
    pub fn register(registry: &mut Registry, target: &str) -> Self {
        let metrics = Self {
            target: escape_label_value(target).into(),
            watched: Arc::default(),
        };
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Reports `balancer`'s endpoints from now on, until it is dropped.
    pub fn watch(&self, balancer: &Balancer) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|b| b.strong_count() > 0);
        watched.push(balancer.downgrade());
    }
}

type Labels<'a> = [(&'static str, &'a str); 3];

/// A metric's name, its help, and how to read it from an endpoint's status.
type Described<T> = (&'static str, &'static str, fn(&crate::EndpointStatus) -> T);

impl Collector for BalancerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let balancers: Vec<_> = self
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        // (policy, endpoint address, status) for every endpoint of every balancer.
        // Two rows must never share a label set (Prometheus rejects such a scrape):
        // the same address twice (with two weights, or in two balancers with the same
        // policy) is told apart by a suffix, `#2`, `#3`, ...
        let mut seen = HashSet::new();
        let rows: Vec<(&'static str, String, crate::EndpointStatus)> = balancers
            .iter()
            .flat_map(|b| {
                let (policy, statuses) = b.report();
                statuses.into_iter().map(move |s| (policy, s))
            })
            .map(|(policy, status)| {
                let address = status.endpoint.to_string();
                let mut label = address.clone();
                let mut n = 1;
                while !seen.insert((policy, label.clone())) {
                    n += 1;
                    label = format!("{address}#{n}");
                }
                (policy, label, status)
            })
            .collect();
        let labels = |policy, endpoint| -> Labels<'_> {
            [
                ("grpc_target", &self.target),
                ("grpc_lb_policy", policy),
                ("grpc_lb_endpoint", endpoint),
            ]
        };
        let counters: [Described<u64>; 6] = [
            (
                "grpc_client_attempt_started",
                "Calls sent to the endpoint: its picks, retries included",
                |s| s.calls,
            ),
            (
                "grpc_lb_endpoint_retries",
                "Calls that failed on the endpoint before an answer and were sent to another",
                |s| s.retries,
            ),
            (
                "grpc_lb_endpoint_ejections",
                "Times outlier detection ejected the endpoint",
                |s| s.ejections,
            ),
            (
                "grpc_subchannel_connection_attempts_succeeded",
                "Connection attempts that succeeded",
                |s| s.connects,
            ),
            (
                "grpc_subchannel_connection_attempts_failed",
                "Connection attempts that failed",
                |s| s.connect_failures,
            ),
            (
                "grpc_subchannel_disconnections",
                "Connections to the endpoint that were lost",
                |s| s.disconnections,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (policy, endpoint, status) in &rows {
                ConstCounter::new(value(status))
                    .encode(family.encode_family(&labels(policy, endpoint))?)?;
            }
        }
        let gauges: [Described<i64>; 4] = [
            (
                "grpc_lb_endpoint_in_flight",
                "Calls to the endpoint under way now",
                |s| s.in_flight as i64,
            ),
            (
                "grpc_lb_endpoint_ejected",
                "1 while outlier detection keeps the endpoint out",
                |s| i64::from(s.ejected),
            ),
            (
                "grpc_lb_endpoint_health_serving",
                "1 if the endpoint's last health answer was SERVING",
                |s| i64::from(s.health == Health::Serving),
            ),
            (
                "grpc_subchannel_open_connections",
                "Open connections to the endpoint (0 or 1)",
                |s| i64::from(s.connected),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (policy, endpoint, status) in &rows {
                ConstGauge::new(value(status))
                    .encode(family.encode_family(&labels(policy, endpoint))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "grpc_lb_endpoint_calls",
            "Calls that ended, by outcome: ok, or failed because of the endpoint",
            None,
            MetricType::Counter,
        )?;
        for (policy, endpoint, status) in &rows {
            for (outcome, value) in [("ok", status.calls_ok), ("failed", status.calls_failed)] {
                let [a, b, c] = labels(policy, endpoint);
                ConstCounter::new(value).encode(family.encode_family(&[
                    a,
                    b,
                    c,
                    ("outcome", outcome),
                ])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "grpc_lb_endpoint_state",
            "1 for the endpoint's connectivity state, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for (policy, endpoint, status) in &rows {
            for state in [
                Connectivity::Idle,
                Connectivity::Connecting,
                Connectivity::Ready,
                Connectivity::TransientFailure,
            ] {
                let [a, b, c] = labels(policy, endpoint);
                ConstGauge::new(i64::from(status.connectivity == state))
                    .encode(family.encode_family(&[a, b, c, ("state", state.as_str())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "grpc_client_attempt_duration",
            "How long calls to the endpoint took, from the pick to the end of the response",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (policy, endpoint, status) in &rows {
            let snapshot = &status.durations;
            family
                .encode_family(&labels(policy, endpoint))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                snapshot.sum_seconds,
                snapshot.count,
                &snapshot.buckets(),
                None,
            )?;
        }
        Ok(())
    }
}

/// A label value as the text format wants it (prometheus-client writes values as they
/// are): backslash, double quote and newline escaped. Only the target needs it; every
/// other label value is checked text (addresses, method names, fixed words).
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The most distinct method names a server reports; calls to others are counted as
/// `other`, so that clients cannot grow the series without bound.
pub const MAX_METHODS: usize = 64;

type MetricLabels = Vec<(&'static str, String)>;

/// Server-side call metrics, shared by every instance of a process.
///
/// Method names come from the network, so a method gets series of its own only once
/// it is known: named with [`ServerMetrics::add_methods`] (a server's own methods), or
/// answered by something other than UNIMPLEMENTED (a proxy learns its backends'
/// methods so; the first call of each is counted as `other`). At most
/// [`MAX_METHODS`] names.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    started: Family<MetricLabels, Counter>,
    durations: Family<MetricLabels, Histogram>,
    in_flight: Family<MetricLabels, Gauge>,
    methods: Arc<RwLock<HashSet<String>>>,
}

impl ServerMetrics {
    /// Registers the server metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            started: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            in_flight: Family::default(),
            methods: Arc::default(),
        };
        registry.register(
            "grpc_server_call_started",
            "Calls the server received, by method",
            metrics.started.clone(),
        );
        registry.register_with_unit(
            "grpc_server_call_duration",
            "How long calls took, until the response started (all of a unary call), by method and status",
            Unit::Seconds,
            metrics.durations.clone(),
        );
        registry.register(
            "grpc_server_call_in_flight",
            "Calls the server is answering now",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// Names methods the server serves (`package.Service/Method`), so that their calls
    /// get series of their own from the first call on.
    pub fn add_methods<'a>(&self, methods: impl IntoIterator<Item = &'a str>) {
        for method in methods {
            self.admit(method);
        }
    }

    /// A tower layer that records the calls of the server on `address`.
    pub fn layer(&self, address: SocketAddr) -> ServerMetricsLayer {
        ServerMetricsLayer {
            metrics: Some((self.clone(), Arc::from(address.to_string()))),
        }
    }

    /// The label for `method`: its name if known, else `other`.
    fn label(&self, method: &str) -> String {
        let methods = self.methods.read().unwrap_or_else(PoisonError::into_inner);
        if methods.contains(method) {
            method.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Knows `method` from now on, if it is well-formed and there is room.
    fn admit(&self, method: &str) {
        if !looks_like_a_method(method) {
            return;
        }
        if self
            .methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(method)
        {
            return;
        }
        let mut methods = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        if methods.len() < MAX_METHODS {
            methods.insert(method.to_string());
        }
    }
}

/// `package.Service/Method`, in the characters protobuf names use.
fn looks_like_a_method(method: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    method.len() <= 200
        && method
            .split_once('/')
            .is_some_and(|(s, m)| valid(s) && valid(m))
}

/// Records every call of one server; with no metrics, passes calls through untouched.
#[derive(Clone, Debug, Default)]
pub struct ServerMetricsLayer {
    metrics: Option<(ServerMetrics, Arc<str>)>,
}

impl ServerMetricsLayer {
    /// A layer that records nothing (for a server without `--metrics`).
    pub fn off() -> Self {
        Self::default()
    }
}

impl<S> tower::Layer<S> for ServerMetricsLayer {
    type Service = ServerMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`ServerMetricsLayer`].
#[derive(Clone, Debug)]
pub struct ServerMetricsService<S> {
    inner: S,
    metrics: Option<(ServerMetrics, Arc<str>)>,
}

impl<S, B, R> tower::Service<http::Request<B>> for ServerMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<http::Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some((metrics, address)) = &self.metrics else {
            return Either::Left(self.inner.call(request));
        };
        let record = CallRecord::start(metrics, address, request.uri().path());
        let response = self.inner.call(request);
        Either::Right(Box::pin(async move {
            // The whole record moves in (not just the field set below), so that it
            // lives, and is dropped, with this future.
            let mut record = record;
            let result = response.await;
            // The status in the headers (a trailers-only answer), else OK: a unary
            // answer's status comes in trailers, after the message, and is OK unless
            // the handler failed, which tonic answers trailers-only.
            record.status = Some(match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", code_name),
                Err(_) => "UNKNOWN",
            });
            result
        }))
    }
}

/// One call being answered: counted in flight until dropped, then recorded with its
/// status, or as CANCELLED if it was dropped before an answer (the client went away).
struct CallRecord {
    metrics: ServerMetrics,
    method: String,
    label: String,
    address: Arc<str>,
    in_flight: Gauge,
    started: Instant,
    status: Option<&'static str>,
}

impl CallRecord {
    fn start(metrics: &ServerMetrics, address: &Arc<str>, path: &str) -> Self {
        let method = path.strip_prefix('/').unwrap_or(path).to_string();
        let label = metrics.label(&method);
        metrics
            .started
            .get_or_create(&vec![
                ("grpc_method", label.clone()),
                ("server_address", address.to_string()),
            ])
            .inc();
        let in_flight = metrics
            .in_flight
            .get_or_create(&vec![("server_address", address.to_string())])
            .clone();
        in_flight.inc();
        Self {
            metrics: metrics.clone(),
            method,
            label,
            address: address.clone(),
            in_flight,
            started: Instant::now(),
            status: None,
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.in_flight.dec();
        let status = self.status.unwrap_or("CANCELLED");
        self.metrics
            .durations
            .get_or_create(&vec![
                ("grpc_method", std::mem::take(&mut self.label)),
                ("grpc_status", status.to_string()),
                ("server_address", self.address.to_string()),
            ])
            .observe(self.started.elapsed().as_secs_f64());
        if self.status.is_some_and(|s| s != "UNIMPLEMENTED") {
            self.metrics.admit(&self.method);
        }
    }
}

/// gRPC's name for a status code, e.g. 14 → `UNAVAILABLE`.
fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The registry in the text format Prometheus scrapes.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; a collector that fails leaves what it wrote.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// The most scrapes answered at once; more connections wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

/// A running `/metrics` endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Serves `registry` at `http://addr/metrics` (HTTP/1.1) until shut down. A busy
/// port is an error naming it.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> Result<MetricsServer, Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Metrics {
        addr,
        reason: if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("port {} is already in use", addr.port())
        } else {
            e.to_string()
        },
    })?;
    let addr = listener.local_addr().map_err(|e| Error::Metrics {
        addr,
        reason: e.to_string(),
    })?;
    let (stop, mut stopped) = watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    info!(%addr, "metrics at http://{addr}/metrics");
    let task = tokio::spawn(async move {
        // The connections being answered, ended with the server.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                // A free slot first, then a connection; shutdown ends either wait.
                accepted = async {
                    let permit = slots.clone().acquire_owned().await;
                    (permit, listener.accept().await)
                } => accepted,
                _ = stopped.wait_for(|&stop| stop) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (Ok(permit), accepted) = accepted else {
                break;
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    debug!(%err, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            connections.spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    std::future::ready(Ok::<_, Infallible>(respond(&request, &registry)))
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(16 * 1024)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // A scrape that takes longer than this is a stuck client.
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
        connections.abort_all();
    });
    Ok(MetricsServer { addr, stop, task })
}

fn respond(
    request: &http::Request<hyper::body::Incoming>,
    registry: &Registry,
) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(registry),
        ),
        (_, "/metrics") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_on_a_bound_counts_in_that_bucket() {
        let histogram = DurationHistogram::default();
        histogram.observe_nanos(5_000_000); // exactly 5 ms: in le="0.005"
        histogram.observe_nanos(5_000_001); // just above: in le="0.01"
        histogram.observe_nanos(0);
        histogram.observe_nanos(60_000_000_000); // a minute: only +Inf
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum_seconds - 60.010000001).abs() < 1e-9);
        let buckets = snapshot.buckets();
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.0001), Some(1));
        assert_eq!(at(0.005), Some(1));
        assert_eq!(at(0.01), Some(1));
        assert_eq!(at(f64::MAX), Some(1));
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            escape_label_value("file:///a\"b\\c\nd"),
            "file:///a\\\"b\\\\c\\nd"
        );
    }

    #[test]
    fn only_well_formed_method_names_are_admitted() {
        for good in ["example.MyService/SayHello", "a.B/C_d"] {
            assert!(looks_like_a_method(good), "{good}");
        }
        for bad in [
            "",
            "/",
            "a/",
            "/b",
            "a/b/c",
            "a b/c",
            "é/x",
            &"a".repeat(201),
        ] {
            assert!(!looks_like_a_method(bad), "{bad}");
        }
    }
}
