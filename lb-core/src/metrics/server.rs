//! A server's metrics (greeter-server, lb-proxy's front, yours): calls started, their
//! durations and statuses, calls in flight, per method; a tower layer records them.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::{BoxFuture, Either};
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Unit;

use super::{DURATION_BUCKETS, Registry};

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

#[cfg(test)]
mod tests {
    use super::*;

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
