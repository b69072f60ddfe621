//! The server side of ORCA: a [`LoadReporter`] measures the server's load; its
//! [`layer`](LoadReporter::layer) adds a report to every response's trailers, and its
//! [`service`](LoadReporter::service) answers the out-of-band stream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lb_core::orca::server::LoadReporter;
//!
//! let reporter = LoadReporter::new()
//!     // The application's own measure of how busy it is, as a fraction; optional (the
//!     // process's CPU utilisation is reported either way).
//!     .with_application_utilization(|| 0.5);
//! reporter.set_named_metric("capacity", 4.0);
//! tonic::transport::Server::builder()
//!     .layer(reporter.layer())
//!     .add_service(reporter.service())
//!     // .add_service(your_service)
//! #   ;
//! # Ok(()) }
//! ```
//!
//! What is measured, over the last half second or more (a window closes at the first
//! call or report after it has lasted [`WINDOW`]): calls and failed calls (any status
//! but OK) per second, seen by the layer; the process's CPU time as a fraction of the
//! machine's cores (Linux: `/proc/self/stat`; elsewhere 0); and what the application
//! reports. Every call's trailer carries the report of the last closed window, encoded
//! once per window, so a call pays a reference count, not an encoding.

mod layer;
mod oob;

pub use layer::{LoadReportLayer, LoadReportService};
pub use oob::OpenRcaService;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use crate::orca::OrcaLoadReport;
use crate::sync::lock;

/// How long a measuring window lasts at least.
pub const WINDOW: Duration = Duration::from_millis(500);

/// The longest out-of-band interval: a client asking for more gets a report a day.
pub const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(86_400);

/// The shortest out-of-band interval a client gets, whatever it asks for (gRFC A51
/// lets servers set a minimum; grpc-go's default is 30 s, too slow for a demo).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(1);

type Source = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Measures a server's load and reports it. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct LoadReporter {
    state: Arc<State>,
}

struct State {
    calls: AtomicU64,
    errors: AtomicU64,
    application: Mutex<Option<Source>>,
    named: Mutex<BTreeMap<String, f64>>,
    window: Mutex<Window>,
    current: ArcSwap<Current>,
    min_interval: Mutex<Duration>,
    cores: f64,
    /// Set by [`LoadReporter::close`]: every out-of-band stream ends.
    closed: tokio::sync::watch::Sender<bool>,
}

/// Where the open window started.
struct Window {
    /// No report was made yet: the first is made at once, whatever the window's age
    /// (so that it carries the named metrics, at least).
    first: bool,
    at: Instant,
    calls: u64,
    errors: u64,
    cpu: Option<Duration>,
}

/// The last closed window's report, and its trailer value.
struct Current {
    report: OrcaLoadReport,
    trailer: http::HeaderValue,
}

impl std::fmt::Debug for LoadReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadReporter")
            .field("report", &self.state.current.load().report)
            .finish()
    }
}

impl Default for LoadReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadReporter {
    /// A reporter with nothing counted yet.
    pub fn new() -> Self {
        let report = OrcaLoadReport::default();
        Self {
            state: Arc::new(State {
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                application: Mutex::new(None),
                named: Mutex::new(BTreeMap::new()),
                window: Mutex::new(Window {
                    first: true,
                    at: Instant::now(),
                    calls: 0,
                    errors: 0,
                    cpu: process_cpu(),
                }),
                current: ArcSwap::from_pointee(Current {
                    trailer: report.to_trailer(),
                    report,
                }),
                min_interval: Mutex::new(MIN_REPORT_INTERVAL),
                cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
                closed: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Reports `utilization()` as `application_utilization` (a fraction; gRPC's
    /// `weighted_round_robin` prefers it to the CPU's): read once per window.
    pub fn with_application_utilization(
        self,
        utilization: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        *lock(&self.state.application) = Some(Arc::new(utilization));
        self
    }

    /// The shortest out-of-band interval to grant (default [`MIN_REPORT_INTERVAL`]).
    pub fn with_min_report_interval(self, min: Duration) -> Self {
        *lock(&self.state.min_interval) = min;
        self
    }

    /// Sets a named metric, reported from the next window on.
    pub fn set_named_metric(&self, name: &str, value: f64) {
        lock(&self.state.named).insert(name.to_string(), value);
    }

    /// Counts one call and how it ended (`ok`: status OK). The layer does this.
    pub fn record(&self, ok: bool) {
        self.state.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.state.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The report of the last closed window (closing the open one if it is due).
    pub fn report(&self) -> OrcaLoadReport {
        self.current().report.clone()
    }

    fn current(&self) -> Arc<Current> {
        let current = self.state.current.load_full();
        let state = &self.state;
        // Whoever finds the window due closes it; the others keep the last report.
        let Ok(mut window) = state.window.try_lock() else {
            return current;
        };
        let elapsed = window.at.elapsed();
        if elapsed < WINDOW && !window.first {
            return current;
        }
        let seconds = elapsed.as_secs_f64().max(1e-3);
        let calls = state.calls.load(Ordering::Relaxed);
        let errors = state.errors.load(Ordering::Relaxed);
        let cpu = process_cpu();
        let cpu_utilization = match (cpu, window.cpu) {
            (Some(now), Some(then)) => {
                now.saturating_sub(then).as_secs_f64() / seconds / state.cores
            }
            _ => 0.0,
        };
        // The first report comes at once, over a window too short for rates: it says
        // only what is not a rate (named metrics, the application's utilisation), and
        // the window keeps running. (Clients ignore a report without calls per second.)
        let first = window.first && elapsed < WINDOW;
        let (rps, eps, cpu_utilization) = if first {
            (0.0, 0.0, 0.0)
        } else {
            (
                (calls - window.calls) as f64 / seconds,
                (errors - window.errors) as f64 / seconds,
                cpu_utilization,
            )
        };
        let report = OrcaLoadReport {
            cpu_utilization,
            rps: rps.round() as u64,
            rps_fractional: rps,
            eps,
            application_utilization: lock(&state.application)
                .clone()
                .map_or(0.0, |f| f().max(0.0)),
            named_metrics: lock(&state.named)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            ..OrcaLoadReport::default()
        };
        if first {
            window.first = false;
        } else {
            *window = Window {
                first: false,
                at: Instant::now(),
                calls,
                errors,
                cpu,
            };
        }
        let current = Arc::new(Current {
            trailer: report.to_trailer(),
            report,
        });
        state.current.store(current.clone());
        current
    }

    /// Ends every open out-of-band stream (with status OK) and every one opened later,
    /// which gets its first report and then ends. Call it when the server shuts down:
    /// the streams never end by themselves, and a graceful shutdown waits for every
    /// open stream. Per-call trailers are not affected.
    pub fn close(&self) {
        self.state.closed.send_replace(true);
    }
}

/// The process's CPU time so far (user and system), on Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux counts in clock ticks of 1/100 s (USER_HZ) on every common platform.
    Some(Duration::from_millis(ticks.saturating_mul(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_counted_per_window() {
        let reporter = LoadReporter::new().with_application_utilization(|| 0.5);
        reporter.set_named_metric("capacity", 4.0);
        for i in 0..100 {
            reporter.record(i % 10 != 0);
        }
        // Close the window as if it had lasted one second.
        lock(&reporter.state.window).at = Instant::now() - Duration::from_secs(1);
        let report = reporter.report();
        assert!((report.rps_fractional - 100.0).abs() < 5.0, "{report:?}");
        assert!((report.eps - 10.0).abs() < 1.0, "{report:?}");
        assert_eq!(report.application_utilization, 0.5);
        assert_eq!(report.named_metrics.get("capacity"), Some(&4.0));
        assert!(report.cpu_utilization >= 0.0);
        // The trailer carries the same report.
        let trailer = reporter.current().trailer.clone();
        assert_eq!(OrcaLoadReport::from_trailer(&trailer).unwrap(), report);
    }
}
