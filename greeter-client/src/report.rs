//! The result of a load run, as a table for people or JSON for scripts.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What a load run did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The policy used.
    pub policy: String,
    /// Calls asked for.
    pub requests: u64,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Calls finished per second (successes and failures).
    pub calls_per_sec: f64,
    /// Calls answered with OK.
    pub succeeded: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Whether every OK reply was exactly `Hello, {name}!`.
    pub replies_ok: bool,
    /// Where the calls went, by the servers' own `x-served-by`.
    pub backends: Vec<Backend>,
    /// Latency of successful calls.
    pub latency_ms: Latency,
    /// Failures by gRPC code, most frequent first.
    pub errors: Vec<ErrorCount>,
}

/// One server's part of the calls.
#[derive(Clone, Debug, Serialize)]
pub struct Backend {
    /// `host:port` as the server names itself.
    pub address: String,
    /// Calls it answered with OK.
    pub calls: u64,
    /// Its share of all OK calls, from 0 to 1.
    pub share: f64,
    /// Calls it answered with an error.
    pub errors: u64,
    /// Its connectivity at the end of the run when not READY, with the reason, e.g.
    /// `TRANSIENT_FAILURE (tcp connect error: Connection refused)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl Backend {
    pub(crate) fn new(address: String, calls: u64, errors: u64, total: u64) -> Self {
        let share = if total == 0 {
            0.0
        } else {
            calls as f64 / total as f64
        };
        Self {
            address,
            calls,
            share,
            errors,
            state: None,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest call.
    pub max: f64,
}

impl Latency {
    pub(crate) fn from_histogram_us(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// Failures with one gRPC code.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorCount {
    /// The code's name, e.g. `Unavailable`.
    pub code: String,
    /// How many calls failed with it.
    pub count: u64,
    /// The message of the first such failure.
    pub example: String,
}

/// How wide a 100 % bar is, in character cells.
const BAR_WIDTH: usize = 30;

impl Report {
    /// The report as a table with a bar per server.
    ///
    /// ```text
    /// round_robin: 300 calls, concurrency 8, 0.21 s, 1431 calls/s
    ///
    ///   backend              calls   share
    ///   127.0.0.1:50051        100   33.3%  ██████████
    ///   ...
    /// ```
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} calls, concurrency {}, {:.2} s, {:.0} calls/s",
            self.policy, self.requests, self.concurrency, self.elapsed_secs, self.calls_per_sec
        );
        let _ = writeln!(out);
        let width = self
            .backends
            .iter()
            .map(|b| b.address.len())
            .max()
            .unwrap_or(0)
            .max("backend".len());
        let _ = writeln!(
            out,
            "  {:<width$}  {:>6}  {:>6}",
            "backend", "calls", "share"
        );
        for b in &self.backends {
            let _ = write!(
                out,
                "  {:<width$}  {:>6}  {:>5.1}%  {}",
                b.address,
                b.calls,
                b.share * 100.0,
                bar(b.share)
            );
            if b.errors > 0 {
                let _ = write!(out, "  ({} errors)", b.errors);
            }
            if let Some(state) = &b.state {
                let _ = write!(out, "  {state}");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
        let l = &self.latency_ms;
        if self.succeeded == 0 {
            let _ = writeln!(out, "  latency   (no successful calls)");
        } else {
            let _ = writeln!(
                out,
                "  latency   p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
                l.p50, l.p90, l.p99, l.max
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors    none");
        } else {
            for e in &self.errors {
                let _ = writeln!(out, "  errors    {} × {}: {}", e.count, e.code, e.example);
            }
        }
        if !self.replies_ok {
            let _ = writeln!(out, "  warning   some replies were not `Hello, {{name}}!`");
        }
        out
    }
}

/// A horizontal bar of `share × BAR_WIDTH` cells, drawn with eighth-blocks so that
/// 33.3 % and 34.0 % look different.
fn bar(share: f64) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (share.clamp(0.0, 1.0) * (BAR_WIDTH * 8) as f64).round() as usize;
    let mut bar = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        bar.push(EIGHTHS[eighths % 8]);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_with_the_share() {
        assert_eq!(bar(0.0), "");
        assert_eq!(bar(1.0).chars().count(), BAR_WIDTH);
        assert_eq!(bar(0.5), "█".repeat(15));
        assert_eq!(bar(1.0 / 3.0), "█".repeat(10));
        assert_eq!(bar(0.34), format!("{}▎", "█".repeat(10)));
    }

    #[test]
    fn the_table_shows_every_backend_and_the_errors() {
        let report = Report {
            policy: "round_robin".into(),
            requests: 4,
            concurrency: 2,
            elapsed_secs: 0.5,
            calls_per_sec: 8.0,
            succeeded: 3,
            failed: 1,
            replies_ok: true,
            backends: vec![
                Backend::new("127.0.0.1:1".into(), 3, 0, 3),
                Backend::new("127.0.0.1:2".into(), 0, 0, 3),
            ],
            latency_ms: Latency::default(),
            errors: vec![ErrorCount {
                code: "Unavailable".into(),
                count: 1,
                example: "endpoint 127.0.0.1:3: refused".into(),
            }],
        };
        let table = report.to_table();
        assert!(table.contains("127.0.0.1:1       3  100.0%"), "{table}");
        assert!(table.contains("127.0.0.1:2       0    0.0%"), "{table}");
        assert!(
            table.contains("1 × Unavailable: endpoint 127.0.0.1:3: refused"),
            "{table}"
        );
    }
}
