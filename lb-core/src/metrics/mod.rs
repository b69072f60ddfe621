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
//! | `grpc_subchannel_open_connections` | gauge | connections open for calls (more than 1 with `connectionScaling`) |
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
//!
//! A side module on top: it reads the balancer, and nothing below reads it. May import:
//! `balancer`, `call`, `subchannels`, `policy`, `state`, `histogram`, `error`.

mod client;
#[cfg(feature = "server")]
mod server;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
pub use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info};

use crate::Error;
pub use crate::histogram::{DURATION_BUCKETS, DurationHistogram, HistogramSnapshot};
pub use client::BalancerMetrics;
#[cfg(feature = "server")]
pub use server::{MAX_METHODS, ServerMetrics, ServerMetricsLayer, ServerMetricsService};

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
