//! The figures of one harness run, the targets checked against them, and their
//! Markdown.

use std::fmt::Write;

use serde::Serialize;

use crate::{Measurement, Settings};

/// One subject at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `direct`, `balancer/round_robin`, `balance_list`, `lb-proxy`, ...
    pub subject: String,
    /// Callers in flight.
    pub concurrency: usize,
    /// Medians over the runs.
    pub measurement: Measurement,
}

/// The 1,000-endpoint run.
#[derive(Clone, Debug, Serialize)]
pub struct Scale {
    /// Endpoints in the one balancer.
    pub endpoints: usize,
    /// How many of them were READY when measured.
    pub ready: usize,
    /// Client memory (resident) per connected, idle endpoint, in bytes.
    pub bytes_per_endpoint: f64,
    /// round_robin over all of them.
    pub measurement: Measurement,
    /// Concurrency of that load.
    pub concurrency: usize,
    /// Nanoseconds per pick, per policy, at this many endpoints.
    pub pick_ns: Vec<(String, f64)>,
}

/// Everything one run of the harness measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When (UTC date).
    pub date: String,
    /// On what.
    pub machine: String,
    /// How long, how often.
    pub settings: Settings,
    /// Every subject at every concurrency.
    pub rows: Vec<Row>,
    /// One slow server of three: per policy, at `hetero_concurrency`.
    pub hetero: Vec<Row>,
    /// 1,000 endpoints.
    pub scale: Option<Scale>,
    /// Subjects left out, and why.
    pub skipped: Vec<String>,
}

/// A target from the issue, and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What was promised.
    pub goal: String,
    /// `Some(true)` met, `Some(false)` not met, `None` not measured in this run.
    pub met: Option<bool>,
    /// The figures behind the verdict.
    pub detail: String,
}

impl Report {
    /// The row for `subject` at `concurrency`, if measured.
    pub fn get(&self, subject: &str, concurrency: usize) -> Option<&Measurement> {
        self.rows
            .iter()
            .find(|r| r.subject == subject && r.concurrency == concurrency)
            .map(|r| &r.measurement)
    }

    fn hetero_of(&self, policy: &str) -> Option<&Measurement> {
        self.hetero
            .iter()
            .find(|r| r.subject == policy)
            .map(|r| &r.measurement)
    }

    /// The targets, checked against this run's figures.
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let top = self
            .settings
            .concurrencies
            .iter()
            .copied()
            .max()
            .unwrap_or(1);

        // 1. round_robin near the direct channel.
        let goal = format!(
            "Balancer round_robin at concurrency {top}: ≥ 97 % of the direct channel's calls/s, p99 within 5 %"
        );
        targets.push(
            match (
                self.get("direct", top),
                self.get("balancer/round_robin", top),
            ) {
                (Some(direct), Some(rr)) => {
                    let ratio = rr.calls_per_sec / direct.calls_per_sec;
                    let p99 = rr.p99_us / direct.p99_us;
                    Target {
                        goal,
                        met: Some(ratio >= 0.97 && p99 <= 1.05),
                        detail: format!(
                            "{:.1} % of the calls/s, p99 {:.0} µs vs {:.0} µs ({:+.1} %)",
                            ratio * 100.0,
                            rr.p99_us,
                            direct.p99_us,
                            (p99 - 1.0) * 100.0
                        ),
                    }
                }
                _ => not_measured(goal),
            },
        );

        // 2. Every policy at least balance_list, at every concurrency.
        let goal = "Every policy ≥ tonic balance_list calls/s, at every concurrency".to_string();
        let mut worst: Option<(String, usize, f64)> = None;
        for &c in &self.settings.concurrencies {
            let Some(list) = self.get("balance_list", c) else {
                continue;
            };
            for row in self
                .rows
                .iter()
                .filter(|r| r.concurrency == c && r.subject.starts_with("balancer/"))
            {
                let ratio = row.measurement.calls_per_sec / list.calls_per_sec;
                if worst.as_ref().is_none_or(|(_, _, w)| ratio < *w) {
                    worst = Some((row.subject.clone(), c, ratio));
                }
            }
        }
        targets.push(match worst {
            Some((subject, c, ratio)) => Target {
                goal,
                met: Some(ratio >= 1.0),
                detail: format!(
                    "the lowest is {subject} at concurrency {c}: {:.2} × balance_list",
                    ratio
                ),
            },
            None => not_measured(goal),
        });

        // 3. lb-proxy against nginx.
        let goal =
            "lb-proxy ≥ nginx grpc_pass calls/s at equal concurrency, p99 no worse".to_string();
        let pairs: Vec<(usize, &Measurement, &Measurement)> = self
            .settings
            .concurrencies
            .iter()
            .filter_map(|&c| Some((c, self.get("lb-proxy", c)?, self.get("nginx", c)?)))
            .collect();
        targets.push(if pairs.is_empty() {
            not_measured(goal)
        } else {
            let met = pairs
                .iter()
                .all(|(_, p, n)| p.calls_per_sec >= n.calls_per_sec && p.p99_us <= n.p99_us);
            let detail = pairs
                .iter()
                .map(|(c, p, n)| {
                    format!(
                        "c={c}: {:.2} × the calls/s, p99 {:.0} vs {:.0} µs",
                        p.calls_per_sec / n.calls_per_sec,
                        p.p99_us,
                        n.p99_us
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            Target {
                goal,
                met: Some(met),
                detail,
            }
        });

        // 4. greeter-server against the article's Python server.
        let goal = "greeter-server ≥ 10 × the article's Python server calls/s".to_string();
        targets.push(
            match (self.get("direct", top), self.get("python-server", top)) {
                (Some(rust), Some(python)) => {
                    let ratio = rust.calls_per_sec / python.calls_per_sec;
                    Target {
                        goal,
                        met: Some(ratio >= 10.0),
                        detail: format!(
                            "{ratio:.1} × at concurrency {top} ({:.0} vs {:.0} calls/s)",
                            rust.calls_per_sec, python.calls_per_sec
                        ),
                    }
                }
                _ => not_measured(goal),
            },
        );

        // 5. Heterogeneous fleet.
        let goal = "One slow server of 3: peak_ewma p99 ≤ 0.5 × round_robin p99".to_string();
        targets.push(
            match (self.hetero_of("peak_ewma"), self.hetero_of("round_robin")) {
                (Some(ewma), Some(rr)) => Target {
                    goal,
                    met: Some(ewma.p99_us <= 0.5 * rr.p99_us),
                    detail: format!(
                        "p99 {:.1} ms vs {:.1} ms ({:.2} ×)",
                        ewma.p99_us / 1000.0,
                        rr.p99_us / 1000.0,
                        ewma.p99_us / rr.p99_us
                    ),
                },
                _ => not_measured(goal),
            },
        );

        // 6. Picks at scale.
        let goal = "Per pick at 1,000 endpoints: O(1) policies under 100 ns".to_string();
        targets.push(match &self.scale {
            Some(scale) => {
                let o1: Vec<&(String, f64)> = scale
                    .pick_ns
                    .iter()
                    .filter(|(p, _)| p != "least_connections")
                    .collect();
                let slowest = o1
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(p, ns)| format!("{p} {ns:.0} ns"))
                    .unwrap_or_default();
                Target {
                    goal,
                    met: Some(o1.iter().all(|(_, ns)| *ns < 100.0)),
                    detail: format!(
                        "slowest O(1) policy: {slowest}; least_connections (O(n) by design) excluded; client memory {:.1} KiB per connected idle endpoint",
                        scale.bytes_per_endpoint / 1024.0
                    ),
                }
            }
            None => not_measured(goal),
        });
        targets
    }

    /// The report as Markdown: tables per concurrency, the slow-server run, the scale
    /// run, the targets.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let _ = writeln!(
            md,
            "Measured on {} by `scripts/bench.sh`, on {}. Closed loop: each caller sends its next \
             call when the last returns. {} run(s) of {:?} each after {:?} of warm-up; medians. \
             Servers, proxies and client share the same cores, so the absolute numbers are \
             this machine's; the ratios, measured in the same run, are the point.\n",
            self.date, self.machine, s.repeats, s.duration, s.warmup
        );
        if !self.skipped.is_empty() {
            let _ = writeln!(md, "Not measured in this run:\n");
            for why in &self.skipped {
                let _ = writeln!(md, "- {why}");
            }
            md.push('\n');
        }
        md.push_str("![calls/s relative to a direct channel](bench.svg)\n\n");
        for &c in &s.concurrencies {
            let _ = writeln!(md, "### Concurrency {c}\n");
            md.push_str(
                "| subject | calls/s | × direct | p50 | p99 | p99.9 | client CPU per call | errors |\n",
            );
            md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
            let direct = self
                .get("direct", c)
                .map(|m| m.calls_per_sec)
                .filter(|&d| d > 0.0);
            for row in self.rows.iter().filter(|r| r.concurrency == c) {
                let m = &row.measurement;
                let ratio = direct.map_or("".into(), |d| format!("{:.2}", m.calls_per_sec / d));
                let cpu = if m.client_cpu_us > 0.0 {
                    format!("{:.1} µs", m.client_cpu_us)
                } else {
                    "(other process)".into()
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {ratio} | {} | {} | {} | {cpu} | {} |",
                    row.subject,
                    m.calls_per_sec,
                    micros(m.p50_us),
                    micros(m.p99_us),
                    micros(m.p999_us),
                    m.errors
                );
            }
            md.push('\n');
        }
        if let Some(c) = self.hetero.first().map(|r| r.concurrency) {
            let _ = writeln!(
                md,
                "### One slow server of three (20 ms added), concurrency {c}\n\n\
                 | policy | calls/s | p50 | p99 | p99.9 |\n|---|---:|---:|---:|---:|"
            );
            for row in &self.hetero {
                let m = &row.measurement;
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {} |",
                    row.subject,
                    m.calls_per_sec,
                    micros(m.p50_us),
                    micros(m.p99_us),
                    micros(m.p999_us)
                );
            }
            md.push('\n');
        }
        if let Some(scale) = &self.scale {
            let m = &scale.measurement;
            let _ = writeln!(
                md,
                "### {} endpoints in one balancer\n\n\
                 {} of {} READY. Client memory: {:.1} KiB resident per connected, idle endpoint \
                 (a TCP connection, its HTTP/2 state and health-check stream, and the balancer's \
                 own state). round_robin over all of them at concurrency {}: {:.0} calls/s, \
                 p99 {}.\n\n| policy | ns per pick |\n|---|---:|",
                scale.endpoints,
                scale.ready,
                scale.endpoints,
                scale.bytes_per_endpoint / 1024.0,
                scale.concurrency,
                m.calls_per_sec,
                micros(m.p99_us)
            );
            for (policy, ns) in &scale.pick_ns {
                let _ = writeln!(md, "| {policy} | {ns:.0} |");
            }
            md.push('\n');
        }
        md.push_str("### Targets\n\n| target | met | figures |\n|---|---|---|\n");
        for target in self.targets() {
            let met = match target.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {met} | {} |", target.goal, target.detail);
        }
        md
    }
}

fn not_measured(goal: String) -> Target {
    Target {
        goal,
        met: None,
        detail: "not measured in this run".into(),
    }
}

/// `850 µs`, or `12.3 ms` from 10 ms on.
fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Replaces what lies between the markers `<!-- bench:begin -->` and
/// `<!-- bench:end -->` in `document` with `generated` (appending the markers and the
/// text if absent), keeping everything around them.
pub fn splice(document: &str, generated: &str) -> String {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let block = format!("{BEGIN}\n{generated}{END}");
    match (document.find(BEGIN), document.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!(
                "{}{block}{}",
                &document[..begin],
                &document[end + END.len()..]
            )
        }
        _ => format!("{}\n\n{block}\n", document.trim_end()),
    }
}

/// Today's date (UTC), as `YYYY-MM-DD`, from the system clock.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // Howard Hinnant's civil-from-days algorithm.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_keeps_the_text_around_the_markers() {
        let doc = "intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\noutro\n";
        let out = splice(doc, "new\n");
        assert_eq!(
            out,
            "intro\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\noutro\n"
        );
        let out = splice("intro\n", "new\n");
        assert!(out.starts_with("intro\n\n<!-- bench:begin -->\nnew\n"));
    }

    #[test]
    fn today_is_a_date() {
        let today = today();
        assert_eq!(today.len(), 10);
        assert!(today.starts_with("20"), "{today}");
    }
}
