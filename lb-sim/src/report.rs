//! The result of a run, as a table for people or JSON for scripts; and the side-by-side
//! table of several runs that `compare` and `simulate` print.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one run (one policy) did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The policy used.
    pub policy: String,
    /// Calls asked for.
    pub requests: u64,
    /// Calls in flight at once (0 in a simulation, whose arrivals are open-loop).
    pub concurrency: usize,
    /// Duration of the run: wall time, or simulated time in a simulation.
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
    /// Jain's fairness index of the backends' calls: 1 when all got the same number,
    /// `1/n` when one got everything.
    pub fairness: f64,
    /// Latency of successful calls.
    pub latency_ms: Latency,
    /// Failures by gRPC code, most frequent first.
    pub errors: Vec<ErrorCount>,
    /// Calls retried on another server after failing before any answer.
    pub retries: u64,
    /// Attempts sent to the servers in all: one per call, plus retries and hedges.
    pub attempts: u64,
    /// Hedged attempts (a method's `hedgingPolicy`): sent because an earlier one was
    /// slow to answer.
    pub hedges: u64,
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
    /// Times outlier detection ejected it.
    pub ejections: u64,
    /// Calls that failed on it before any answer and were retried elsewhere.
    pub retries: u64,
    /// Its connectivity at the end of the run when not READY, with the reason, e.g.
    /// `TRANSIENT_FAILURE (tcp connect error: Connection refused)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Where it runs, if the list said: `zone-a`, `zone-c, priority 1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
}

impl Backend {
    /// Its name in tables: the address, and where it runs if known.
    pub fn label(&self) -> String {
        match &self.place {
            Some(place) => format!("{} ({place})", self.address),
            None => self.address.clone(),
        }
    }

    /// A backend row; its share is filled in by [`Report::new`].
    pub fn new(address: String, calls: u64, errors: u64) -> Self {
        Self {
            address,
            calls,
            share: 0.0,
            errors,
            ejections: 0,
            retries: 0,
            state: None,
            place: None,
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
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest call.
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram recorded in microseconds.
    pub fn from_histogram_us(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// A histogram for latencies in microseconds: 1 µs to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
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

/// Jain's fairness index of `counts`: `(Σx)² / (n·Σx²)`.
///
/// R. Jain, D. Chiu, W. Hawe, "A Quantitative Measure of Fairness and Discrimination
/// for Resource Allocation in Shared Computer Systems", DEC TR-301, 1984. 100/100/100
/// gives 1.0; 300/0/0 gives 0.33.
pub fn jain_index(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    if counts.is_empty() || squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

/// How wide a 100 % bar is in the single-run table, in character cells.
const BAR_WIDTH: usize = 30;
/// And in the comparison table.
const SMALL_BAR_WIDTH: usize = 8;

impl Report {
    /// A report; derives the shares, totals, rate and fairness, and sorts the errors
    /// most frequent first.
    pub fn new(
        policy: &str,
        requests: u64,
        concurrency: usize,
        elapsed_secs: f64,
        mut backends: Vec<Backend>,
        latency_ms: Latency,
        mut errors: Vec<ErrorCount>,
    ) -> Self {
        let succeeded: u64 = backends.iter().map(|b| b.calls).sum();
        let failed: u64 = errors.iter().map(|e| e.count).sum();
        for b in &mut backends {
            b.share = if succeeded == 0 {
                0.0
            } else {
                b.calls as f64 / succeeded as f64
            };
        }
        errors.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
        let counts: Vec<u64> = backends.iter().map(|b| b.calls).collect();
        Self {
            policy: policy.to_string(),
            requests,
            concurrency,
            elapsed_secs,
            calls_per_sec: if elapsed_secs > 0.0 {
                (succeeded + failed) as f64 / elapsed_secs
            } else {
                0.0
            },
            succeeded,
            failed,
            replies_ok: true,
            fairness: jain_index(&counts),
            backends,
            latency_ms,
            errors,
            retries: 0,
            attempts: 0,
            hedges: 0,
        }
    }

    /// The same, with the attempts sent and how many of them were hedges.
    pub fn with_attempts(mut self, attempts: u64, hedges: u64) -> Self {
        self.attempts = attempts;
        self.hedges = hedges;
        self
    }

    /// Attempts beyond one per call, as a fraction of the calls: the extra load that
    /// retries and hedging cost the servers.
    pub fn extra_load(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.attempts.saturating_sub(self.requests) as f64 / self.requests as f64
    }

    /// The same, with the number of retries.
    pub fn with_retries(mut self, retries: u64) -> Self {
        self.retries = retries;
        self
    }

    /// The same, noting whether every reply was the expected greeting.
    pub fn with_replies_ok(mut self, ok: bool) -> Self {
        self.replies_ok = ok;
        self
    }

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
            .map(|b| b.label().chars().count())
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
                b.label(),
                b.calls,
                b.share * 100.0,
                bar(b.share, BAR_WIDTH)
            );
            if b.errors > 0 {
                let _ = write!(out, "  ({} errors)", b.errors);
            }
            if b.retries > 0 {
                let _ = write!(out, "  ({} retried elsewhere)", b.retries);
            }
            if b.ejections > 0 {
                let _ = write!(out, "  (ejected {}×)", b.ejections);
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
        if self.retries > 0 {
            let _ = writeln!(out, "  retries   {}", self.retries);
        }
        if self.hedges > 0 {
            let _ = writeln!(
                out,
                "  hedges    {} ({} attempts for {} calls: {:.1} % more load)",
                self.hedges,
                self.attempts,
                self.requests,
                self.extra_load() * 100.0
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

/// Several runs side by side: one row per policy, one column per backend (by address,
/// in order of first appearance), then fairness, rate, latency and errors.
///
/// ```text
///   A = 127.0.0.1:50051   B = 127.0.0.1:50052   C = 127.0.0.1:50053
///
///   policy                A             B             C             Jain  calls/s  p50 ms  p99 ms  p999 ms  errors
///   round_robin           ██▋      33%  ██▋      33%  ██▋      33%  1.000     1034    0.41   22.41    22.91       0
/// ```
pub fn comparison_table(reports: &[Report]) -> String {
    let addresses = columns(reports);
    let mut out = String::new();
    let legend: Vec<String> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let place = reports
                .iter()
                .flat_map(|r| &r.backends)
                .find(|b| b.address == *a)
                .and_then(|b| b.place.as_deref());
            match place {
                Some(place) => format!("{} = {a} ({place})", letter(i)),
                None => format!("{} = {a}", letter(i)),
            }
        })
        .collect();
    let _ = writeln!(out, "  {}", legend.join("   "));
    let _ = writeln!(out);

    let name_width = reports
        .iter()
        .map(|r| r.policy.len())
        .max()
        .unwrap_or(0)
        .max("policy".len());
    let cell = SMALL_BAR_WIDTH + 6;
    let _ = write!(out, "  {:<name_width$}", "policy");
    for i in 0..addresses.len() {
        let _ = write!(out, "  {:<cell$}", letter(i));
    }
    // The extra load that hedging or retries cost, only where some run had any.
    let show_load = reports.iter().any(|r| r.hedges > 0 || r.extra_load() > 0.0);
    let _ = write!(
        out,
        "  {:>5}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}",
        "Jain", "calls/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    let _ = writeln!(out, "{}", if show_load { "   +load" } else { "" });
    for report in reports {
        let _ = write!(out, "  {:<name_width$}", report.policy);
        for address in &addresses {
            let share = share_of(report, address);
            let bar = bar(share, SMALL_BAR_WIDTH);
            let percent = format!("{:.0}%", share * 100.0);
            let _ = write!(out, "  {bar:<SMALL_BAR_WIDTH$} {percent:>5}");
        }
        let l = &report.latency_ms;
        let _ = write!(
            out,
            "  {:>5.3}  {:>8.0}  {:>8.2}  {:>8.2}  {:>8.2}  {:>6}",
            report.fairness, report.calls_per_sec, l.p50, l.p99, l.p999, report.failed
        );
        if show_load {
            let _ = write!(out, "  {:>5.1}%", report.extra_load() * 100.0);
        }
        let _ = writeln!(out);
    }
    out
}

/// The backends of `reports`, in the order they first appear: the table's columns.
pub(crate) fn columns(reports: &[Report]) -> Vec<&str> {
    let mut addresses: Vec<&str> = Vec::new();
    for report in reports {
        for b in &report.backends {
            if !addresses.contains(&b.address.as_str()) {
                addresses.push(&b.address);
            }
        }
    }
    addresses
}

/// A column's name: A, B, ... Z, then #27, #28, ...
pub(crate) fn letter(i: usize) -> String {
    match u8::try_from(i) {
        Ok(i) if i < 26 => char::from(b'A' + i).to_string(),
        _ => format!("#{}", i + 1),
    }
}

/// A policy's share of calls on backend `address` (0 if it sent it none).
pub(crate) fn share_of(report: &Report, address: &str) -> f64 {
    report
        .backends
        .iter()
        .find(|b| b.address == address)
        .map_or(0.0, |b| b.share)
}

/// A horizontal bar of `share × width` cells, drawn with eighth-blocks so that
/// 33.3 % and 34.0 % look different.
fn bar(share: f64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (share.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut bar = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        bar.push(EIGHTHS[eighths % 8]);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(policy: &str, calls: &[u64], failed: u64) -> Report {
        let backends = calls
            .iter()
            .enumerate()
            .map(|(i, &c)| Backend::new(format!("127.0.0.1:{}", i + 1), c, 0))
            .collect();
        let errors = if failed == 0 {
            vec![]
        } else {
            vec![ErrorCount {
                code: "Unavailable".into(),
                count: failed,
                example: "endpoint 127.0.0.1:3: refused".into(),
            }]
        };
        Report::new(policy, 4, 2, 0.5, backends, Latency::default(), errors)
    }

    #[test]
    fn bars_scale_with_the_share() {
        assert_eq!(bar(0.0, BAR_WIDTH), "");
        assert_eq!(bar(1.0, BAR_WIDTH).chars().count(), BAR_WIDTH);
        assert_eq!(bar(0.5, BAR_WIDTH), "█".repeat(15));
        assert_eq!(bar(1.0 / 3.0, BAR_WIDTH), "█".repeat(10));
        assert_eq!(bar(0.34, BAR_WIDTH), format!("{}▎", "█".repeat(10)));
    }

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_not() {
        assert_eq!(jain_index(&[100, 100, 100]), 1.0);
        assert!((jain_index(&[300, 0, 0]) - 1.0 / 3.0).abs() < 1e-12);
        assert!((jain_index(&[2, 1]) - 0.9).abs() < 1e-12);
        assert_eq!(jain_index(&[]), 0.0);
        assert_eq!(jain_index(&[0, 0]), 0.0);
    }

    #[test]
    fn the_table_shows_every_backend_and_the_errors() {
        let table = report("round_robin", &[3, 0], 1).to_table();
        assert!(table.contains("127.0.0.1:1       3  100.0%"), "{table}");
        assert!(table.contains("127.0.0.1:2       0    0.0%"), "{table}");
        assert!(
            table.contains("1 × Unavailable: endpoint 127.0.0.1:3: refused"),
            "{table}"
        );
    }

    #[test]
    fn the_comparison_lines_up_policies_and_backends() {
        let table = comparison_table(&[
            report("pick_first", &[30, 0, 0], 0),
            report("round_robin", &[10, 10, 10], 2),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "  A = 127.0.0.1:1   B = 127.0.0.1:2   C = 127.0.0.1:3"
        );
        assert!(lines[2].starts_with("  policy       A "), "{table}");
        assert!(
            lines[3].starts_with("  pick_first   ████████  100%"),
            "{table}"
        );
        assert!(lines[3].contains("0.333"), "{table}");
        assert!(lines[4].contains("1.000"), "{table}");
        assert!(lines[4].trim_end().ends_with('2'), "{table}");
    }
}
