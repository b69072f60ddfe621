//! The figures of a harness run (several full runs, and their medians), the targets
//! checked against each run, a comparison with a saved baseline, and the Markdown.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::{H2Row, Measurement, PickFlat, Settings};

/// One subject at one concurrency.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// `direct`, `balancer/round_robin`, `balance_list`, `lb-proxy`, ...
    pub subject: String,
    /// Callers in flight.
    pub concurrency: usize,
    /// Medians over the runs.
    pub measurement: Measurement,
}

/// One full run: every subject once at every concurrency, h2load against the
/// servers, and the pick costs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// Every subject at every concurrency.
    pub rows: Vec<Row>,
    /// The servers and proxies under h2load.
    #[serde(default)]
    pub h2load: Vec<H2Row>,
    /// Nanoseconds per pick at 3 and 1,000 endpoints.
    #[serde(default)]
    pub picks: Vec<PickFlat>,
}

/// The 1,000-endpoint run.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// When (UTC date).
    pub date: String,
    /// On what.
    pub machine: String,
    /// Which process ran on which core (`scripts/bench.sh` pins them).
    #[serde(default)]
    pub layout: String,
    /// How long, how often.
    pub settings: Settings,
    /// Every subject at every concurrency: the medians over the runs.
    pub rows: Vec<Row>,
    /// Each full run as measured.
    #[serde(default)]
    pub runs: Vec<Run>,
    /// One slow server of three: per policy, at `hetero_concurrency`.
    pub hetero: Vec<Row>,
    /// 1,000 endpoints.
    pub scale: Option<Scale>,
    /// Subjects left out, and why.
    pub skipped: Vec<String>,
}

/// A target from the issue, and whether a run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What was promised.
    pub goal: String,
    /// `Some(true)` met, `Some(false)` not met, `None` not measured in this run.
    pub met: Option<bool>,
    /// The figures behind the verdict.
    pub detail: String,
    /// The ratio the verdict turns on, for its spread over the runs.
    pub ratio: Option<f64>,
    /// Whether it is judged in every run (`false`: measured once, outside the runs).
    pub per_run: bool,
}

/// A target over all the runs: how many met it, and the spread of its ratio.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The target, judged on the medians.
    pub target: Target,
    /// Per run: met or not (or not measured).
    pub runs: Vec<Option<bool>>,
    /// The lowest and highest ratio over the runs.
    pub spread: Option<(f64, f64)>,
}

impl Verdict {
    /// Met in at least 4 runs of 5 (80 %), or, for a target measured once, met.
    pub fn holds(&self) -> Option<bool> {
        if !self.target.per_run || self.runs.len() <= 1 {
            return self.target.met;
        }
        let measured = self.runs.iter().filter(|r| r.is_some()).count();
        if measured == 0 {
            return None;
        }
        let met = self.runs.iter().filter(|r| **r == Some(true)).count();
        Some(met * 5 >= measured * 4)
    }
}

/// What the targets look at: one run's rows (or the medians), and what is measured
/// once.
struct View<'a> {
    rows: &'a [Row],
    h2load: &'a [H2Row],
    picks: &'a [PickFlat],
    hetero: &'a [Row],
    concurrencies: &'a [usize],
}

impl View<'_> {
    fn get(&self, subject: &str, concurrency: usize) -> Option<&Measurement> {
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

    fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        // 1. pick_first against the direct channel, on the same one connection.
        for c in [1, 16, 64] {
            let goal = format!(
                "`balancer/pick_first` ≥ 1.00 × `direct` calls/s at concurrency {c}, p99 no worse, client CPU per call no higher"
            );
            targets.push(
                match (self.get("direct", c), self.get("balancer/pick_first", c)) {
                    (Some(direct), Some(first)) if self.concurrencies.contains(&c) => {
                        let ratio = first.calls_per_sec / direct.calls_per_sec;
                        Target {
                            goal,
                            met: Some(
                                ratio >= 1.0
                                    && first.p99_us <= direct.p99_us
                                    && first.client_cpu_us <= direct.client_cpu_us,
                            ),
                            detail: format!(
                                "{ratio:.2} × the calls/s; p99 {} vs {}; CPU {:.1} vs {:.1} µs per call",
                                micros(first.p99_us),
                                micros(direct.p99_us),
                                first.client_cpu_us,
                                direct.client_cpu_us
                            ),
                            ratio: Some(ratio),
                            per_run: true,
                        }
                    }
                    _ => not_measured(goal),
                },
            );
        }
        // 2. Every policy against balance_list and direct.
        for c in [16, 64] {
            let goal = format!(
                "Every policy ≥ 1.05 × `balance_list` and ≥ 0.97 × `direct` calls/s at concurrency {c}, p99 no worse than `balance_list`'s"
            );
            let (Some(list), Some(direct)) = (self.get("balance_list", c), self.get("direct", c))
            else {
                targets.push(not_measured(goal));
                continue;
            };
            let policies: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| r.concurrency == c && r.subject.starts_with("balancer/"))
                .collect();
            if policies.is_empty() {
                targets.push(not_measured(goal));
                continue;
            }
            let score = |r: &Row| {
                (r.measurement.calls_per_sec / list.calls_per_sec / 1.05)
                    .min(r.measurement.calls_per_sec / direct.calls_per_sec / 0.97)
            };
            let worst = policies
                .iter()
                .min_by(|a, b| score(a).total_cmp(&score(b)))
                .expect("not empty");
            let slow_p99: Vec<&str> = policies
                .iter()
                .filter(|r| r.measurement.p99_us > list.p99_us)
                .map(|r| r.subject.trim_start_matches("balancer/"))
                .collect();
            let m = &worst.measurement;
            targets.push(Target {
                goal,
                met: Some(score(worst) >= 1.0 && slow_p99.is_empty()),
                detail: format!(
                    "the lowest, {}: {:.2} × `balance_list`, {:.2} × `direct`; p99 above `balance_list`'s ({}): {}",
                    worst.subject,
                    m.calls_per_sec / list.calls_per_sec,
                    m.calls_per_sec / direct.calls_per_sec,
                    micros(list.p99_us),
                    if slow_p99.is_empty() {
                        "none".to_string()
                    } else {
                        slow_p99.join(", ")
                    }
                ),
                ratio: Some(m.calls_per_sec / list.calls_per_sec),
                per_run: true,
            });
        }
        // 3. lb-proxy against nginx.
        for (c, needed) in [(1, 1.0), (16, 1.5), (64, 1.5)] {
            let goal = format!(
                "`lb-proxy` ≥ {needed:.1} × `nginx` calls/s at concurrency {c}, p99 no worse"
            );
            targets.push(match (self.get("lb-proxy", c), self.get("nginx", c)) {
                (Some(proxy), Some(nginx)) => {
                    let ratio = proxy.calls_per_sec / nginx.calls_per_sec;
                    Target {
                        goal,
                        met: Some(ratio >= needed && proxy.p99_us <= nginx.p99_us),
                        detail: format!(
                            "{ratio:.2} × the calls/s; p99 {} vs {}",
                            micros(proxy.p99_us),
                            micros(nginx.p99_us)
                        ),
                        ratio: Some(ratio),
                        per_run: true,
                    }
                }
                _ => not_measured(goal),
            });
        }
        // 4. A pick stays flat with fleet size.
        let goal = "Every O(1) policy: ns per pick at 1,000 endpoints ≤ 1.2 × at 3".to_string();
        let constant: Vec<&PickFlat> = self.picks.iter().filter(|p| p.constant).collect();
        targets.push(
            match constant
                .iter()
                .max_by(|a, b| (a.ns_at_1000 / a.ns_at_3).total_cmp(&(b.ns_at_1000 / b.ns_at_3)))
            {
                Some(worst) => {
                    let ratio = worst.ns_at_1000 / worst.ns_at_3;
                    Target {
                        goal,
                        met: Some(ratio <= 1.2),
                        detail: format!(
                            "the steepest, {}: {:.1} ns at 1,000 against {:.1} ns at 3 ({ratio:.2} ×)",
                            worst.policy, worst.ns_at_1000, worst.ns_at_3
                        ),
                        ratio: Some(ratio),
                        per_run: true,
                    }
                }
                None => not_measured(goal),
            },
        );
        // 5. The servers under a load generator no one here wrote.
        let pairs = [
            (
                "greeter-server",
                "python-server",
                10.0,
                "the article's Python server",
            ),
            ("lb-proxy", "nginx", 1.0, "`nginx`"),
        ];
        for (ours, theirs, needed, name) in pairs {
            let goal = format!(
                "Under h2load at 64 calls in flight: `{ours}` ≥ {needed:.0} × {name} calls/s"
            );
            let find = |subject: &str| {
                self.h2load
                    .iter()
                    .find(|r| r.subject == subject && r.connections * r.streams == 64)
            };
            targets.push(match (find(ours), find(theirs)) {
                (Some(a), Some(b)) => {
                    let ratio = a.calls_per_sec / b.calls_per_sec;
                    Target {
                        goal,
                        met: Some(ratio >= needed),
                        detail: format!(
                            "{ratio:.2} × ({:.0} vs {:.0} calls/s; mean {} vs {})",
                            a.calls_per_sec,
                            b.calls_per_sec,
                            micros(a.mean_us),
                            micros(b.mean_us)
                        ),
                        ratio: Some(ratio),
                        per_run: true,
                    }
                }
                _ => not_measured(goal),
            });
        }
        // 6. Heterogeneous fleet (measured once).
        let goal = "One slow server of 3: `peak_ewma` p99 ≤ 0.5 × `round_robin` p99".to_string();
        targets.push(
            match (self.hetero_of("peak_ewma"), self.hetero_of("round_robin")) {
                (Some(ewma), Some(rr)) => Target {
                    goal,
                    met: Some(ewma.p99_us <= 0.5 * rr.p99_us),
                    detail: format!(
                        "p99 {} vs {} ({:.2} ×), measured once",
                        micros(ewma.p99_us),
                        micros(rr.p99_us),
                        ewma.p99_us / rr.p99_us
                    ),
                    ratio: Some(ewma.p99_us / rr.p99_us),
                    per_run: false,
                },
                _ => not_measured(goal),
            },
        );
        targets
    }
}

impl Report {
    /// The row for `subject` at `concurrency`, if measured (medians over the runs).
    pub fn get(&self, subject: &str, concurrency: usize) -> Option<&Measurement> {
        self.rows
            .iter()
            .find(|r| r.subject == subject && r.concurrency == concurrency)
            .map(|r| &r.measurement)
    }

    fn median_view(&self) -> (Vec<H2Row>, Vec<PickFlat>) {
        (median_h2load(&self.runs), median_picks(&self.runs))
    }

    /// The targets, judged on the medians and in every run.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let (h2load, picks) = self.median_view();
        let median = View {
            rows: &self.rows,
            h2load: &h2load,
            picks: &picks,
            hetero: &self.hetero,
            concurrencies: &self.settings.concurrencies,
        }
        .targets();
        let per_run: Vec<Vec<Target>> = self
            .runs
            .iter()
            .map(|run| {
                View {
                    rows: &run.rows,
                    h2load: &run.h2load,
                    picks: &run.picks,
                    hetero: &self.hetero,
                    concurrencies: &self.settings.concurrencies,
                }
                .targets()
            })
            .collect();
        median
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let runs: Vec<Option<bool>> = per_run.iter().map(|t| t[i].met).collect();
                let ratios: Vec<f64> = per_run.iter().filter_map(|t| t[i].ratio).collect();
                let spread = ratios
                    .iter()
                    .copied()
                    .reduce(f64::min)
                    .zip(ratios.iter().copied().reduce(f64::max));
                Verdict {
                    target,
                    runs,
                    spread,
                }
            })
            .collect()
    }

    /// Each subject's calls/s as a ratio to `direct`, per concurrency: the median and
    /// the lowest and highest over the runs.
    pub fn ratios(&self) -> Vec<(String, usize, f64, f64, f64)> {
        let mut out = Vec::new();
        for row in &self.rows {
            let Some(direct) = self.get("direct", row.concurrency) else {
                continue;
            };
            if row.subject == "direct" || direct.calls_per_sec <= 0.0 {
                continue;
            }
            let median = row.measurement.calls_per_sec / direct.calls_per_sec;
            let per_run: Vec<f64> = self
                .runs
                .iter()
                .filter_map(|run| {
                    let find = |s: &str| {
                        run.rows
                            .iter()
                            .find(|r| r.subject == s && r.concurrency == row.concurrency)
                    };
                    let (a, d) = (find(&row.subject)?, find("direct")?);
                    Some(a.measurement.calls_per_sec / d.measurement.calls_per_sec)
                })
                .collect();
            let low = per_run.iter().copied().fold(median, f64::min);
            let high = per_run.iter().copied().fold(median, f64::max);
            out.push((row.subject.clone(), row.concurrency, median, low, high));
        }
        out
    }

    /// What moved between `baseline` and this report beyond the noise: a ratio to
    /// `direct` whose change is larger than half the spread of either set of runs
    /// (at least 3 points), and every target whose verdict changed.
    pub fn compare(&self, baseline: &Report) -> Vec<String> {
        let mut moved = Vec::new();
        let old = baseline.ratios();
        for (subject, c, new, low, high) in self.ratios() {
            let Some((_, _, was, old_low, old_high)) =
                old.iter().find(|(s, oc, ..)| *s == subject && *oc == c)
            else {
                continue;
            };
            let noise = ((high - low) / 2.0)
                .max((old_high - old_low) / 2.0)
                .max(0.03);
            if (new - was).abs() > noise {
                moved.push(format!(
                    "{subject} at concurrency {c}: {was:.2} → {new:.2} × direct ({} beyond the noise of ±{noise:.2})",
                    if new > *was { "up" } else { "down" }
                ));
            }
        }
        let before = baseline.verdicts();
        for verdict in self.verdicts() {
            let Some(old) = before.iter().find(|v| v.target.goal == verdict.target.goal) else {
                continue;
            };
            if old.holds() != verdict.holds() {
                moved.push(format!(
                    "target \"{}\": {} → {}",
                    verdict.target.goal,
                    said(old.holds()),
                    said(verdict.holds())
                ));
            }
        }
        moved
    }

    /// The report as Markdown: tables per concurrency, the servers under h2load, the
    /// slow-server run, the scale run, the targets with their verdict in every run.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let _ = writeln!(
            md,
            "Measured on {} by `scripts/bench.sh`, on {}. Closed loop: each caller sends its next \
             call when the last returns. {} full run(s), each visiting every subject in turn \
             ({} round(s) of {:?} after {:?} of warm-up per subject and concurrency); the \
             tables give the medians over the runs and, for each ratio, its lowest and highest \
             run. {} The absolute numbers are this machine's; the ratios, measured in the same \
             run, are the point.\n",
            self.date,
            self.machine,
            s.runs.max(1),
            s.repeats,
            s.duration,
            s.warmup,
            if self.layout.is_empty() {
                "Servers, proxies and client share the same cores, unpinned.".to_string()
            } else {
                format!("Layout: {}.", self.layout)
            }
        );
        if !self.skipped.is_empty() {
            let _ = writeln!(md, "Not measured in this run:\n");
            for why in &self.skipped {
                let _ = writeln!(md, "- {why}");
            }
            md.push('\n');
        }
        md.push_str("![calls/s relative to a direct channel](bench.svg)\n\n");
        let ratios = self.ratios();
        for &c in &s.concurrencies {
            let _ = writeln!(md, "### Concurrency {c}\n");
            md.push_str(
                "| subject | calls/s | × direct (runs) | p50 | p99 | p99.9 | client CPU per call | errors |\n",
            );
            md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for row in self.rows.iter().filter(|r| r.concurrency == c) {
                let m = &row.measurement;
                let ratio = ratios
                    .iter()
                    .find(|(subject, rc, ..)| *subject == row.subject && *rc == c)
                    .map_or_else(
                        || {
                            if row.subject == "direct" {
                                "1".into()
                            } else {
                                String::new()
                            }
                        },
                        |(_, _, median, low, high)| {
                            if self.runs.len() > 1 {
                                format!("{median:.2} ({low:.2}-{high:.2})")
                            } else {
                                format!("{median:.2}")
                            }
                        },
                    );
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
        let (h2load, picks) = self.median_view();
        if !h2load.is_empty() {
            md.push_str(
                "### The servers under h2load\n\n\
                 nghttp2's `h2load` (C, one thread) sends the same prepared `SayHello` frame, so \
                 that the server or proxy is what is measured, not a client of ours. Medians over \
                 the runs.\n\n\
                 | subject | connections × streams | calls/s | mean | errors |\n|---|---:|---:|---:|---:|\n",
            );
            for row in &h2load {
                let _ = writeln!(
                    md,
                    "| {} | {} × {} | {:.0} | {} | {} |",
                    row.subject,
                    row.connections,
                    row.streams,
                    row.calls_per_sec,
                    micros(row.mean_us),
                    row.errors
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
        if !picks.is_empty() {
            md.push_str(
                "### One pick, 3 against 1,000 endpoints\n\n\
                 | policy | ns at 3 | ns at 1,000 | ratio |\n|---|---:|---:|---:|\n",
            );
            for p in &picks {
                let _ = writeln!(
                    md,
                    "| {}{} | {:.1} | {:.1} | {:.2} |",
                    p.policy,
                    if p.constant { "" } else { " (O(n) by design)" },
                    p.ns_at_3,
                    p.ns_at_1000,
                    p.ns_at_1000 / p.ns_at_3
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
                 p99 {}.\n",
                scale.endpoints,
                scale.ready,
                scale.endpoints,
                scale.bytes_per_endpoint / 1024.0,
                scale.concurrency,
                m.calls_per_sec,
                micros(m.p99_us)
            );
        }
        let verdicts = self.verdicts();
        let runs = self.runs.len();
        md.push_str("### Targets\n\n");
        if runs > 1 {
            let _ = writeln!(
                md,
                "A target holds if it is met in at least 4 runs of 5 (80 % of the runs). \
                 \"runs\" shows each run's verdict in order (✓ met, ✗ not met).\n"
            );
        }
        md.push_str("| target | holds | runs | spread of the ratio | figures (medians) |\n|---|---|---|---|---|\n");
        for v in &verdicts {
            let holds = match v.holds() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let marks: String = if v.target.per_run {
                v.runs
                    .iter()
                    .map(|r| match r {
                        Some(true) => '✓',
                        Some(false) => '✗',
                        None => '·',
                    })
                    .collect()
            } else {
                "once".into()
            };
            let spread = match (v.spread, v.target.per_run) {
                (Some((low, high)), true) if runs > 1 => format!("{low:.2}-{high:.2}"),
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "| {} | {holds} | {marks} | {spread} | {} |",
                v.target.goal, v.target.detail
            );
        }
        md
    }
}

fn said(holds: Option<bool>) -> &'static str {
    match holds {
        Some(true) => "holds",
        Some(false) => "does not hold",
        None => "not measured",
    }
}

/// The median of each h2load figure over the runs, per subject and load.
fn median_h2load(runs: &[Run]) -> Vec<H2Row> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .h2load
        .iter()
        .map(|row| {
            let same: Vec<&H2Row> = runs
                .iter()
                .filter_map(|run| {
                    run.h2load.iter().find(|r| {
                        r.subject == row.subject
                            && r.connections == row.connections
                            && r.streams == row.streams
                    })
                })
                .collect();
            H2Row {
                calls_per_sec: median(same.iter().map(|r| r.calls_per_sec)),
                mean_us: median(same.iter().map(|r| r.mean_us)),
                errors: same.iter().map(|r| r.errors).sum(),
                ..row.clone()
            }
        })
        .collect()
}

/// The median pick costs over the runs, per policy.
fn median_picks(runs: &[Run]) -> Vec<PickFlat> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .picks
        .iter()
        .map(|pick| {
            let same: Vec<&PickFlat> = runs
                .iter()
                .filter_map(|run| run.picks.iter().find(|p| p.policy == pick.policy))
                .collect();
            PickFlat {
                ns_at_3: median(same.iter().map(|p| p.ns_at_3)),
                ns_at_1000: median(same.iter().map(|p| p.ns_at_1000)),
                ..pick.clone()
            }
        })
        .collect()
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn not_measured(goal: String) -> Target {
    Target {
        goal,
        met: None,
        detail: "not measured in this run".into(),
        ratio: None,
        per_run: true,
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

    fn row(subject: &str, concurrency: usize, calls_per_sec: f64) -> Row {
        Row {
            subject: subject.into(),
            concurrency,
            measurement: Measurement {
                calls_per_sec,
                p50_us: 100.0,
                p99_us: 200.0,
                p999_us: 300.0,
                errors: 0,
                client_cpu_us: 10.0,
            },
        }
    }

    /// Five runs of `pick_first` against `direct` at concurrency 16, with these ratios.
    fn report(ratios: &[f64]) -> Report {
        let runs: Vec<Run> = ratios
            .iter()
            .map(|r| Run {
                rows: vec![
                    row("direct", 16, 1000.0),
                    row("balancer/pick_first", 16, 1000.0 * r),
                ],
                ..Run::default()
            })
            .collect();
        let mut sorted = ratios.to_vec();
        sorted.sort_by(f64::total_cmp);
        Report {
            date: "2026-12-02".into(),
            machine: "test".into(),
            layout: String::new(),
            settings: Settings {
                concurrencies: vec![16],
                duration: std::time::Duration::from_secs(1),
                warmup: std::time::Duration::from_millis(500),
                repeats: 1,
                runs: ratios.len(),
            },
            rows: vec![
                row("direct", 16, 1000.0),
                row("balancer/pick_first", 16, 1000.0 * sorted[sorted.len() / 2]),
            ],
            runs,
            hetero: Vec::new(),
            scale: None,
            skipped: Vec::new(),
        }
    }

    #[test]
    fn a_target_holds_when_met_in_four_runs_of_five() {
        let at_16 = |r: &Report| {
            r.verdicts()
                .into_iter()
                .find(|v| v.target.goal.contains("`direct` calls/s at concurrency 16"))
                .expect("the target")
        };
        let four = at_16(&report(&[1.02, 1.01, 0.98, 1.03, 1.05]));
        assert_eq!(four.holds(), Some(true));
        assert_eq!(four.runs.iter().filter(|r| **r == Some(false)).count(), 1);
        assert_eq!(four.spread, Some((0.98, 1.05)));
        let three = at_16(&report(&[1.02, 0.99, 0.98, 1.03, 1.05]));
        assert_eq!(three.holds(), Some(false));
        let markdown = report(&[1.02, 1.01, 0.98, 1.03, 1.05]).to_markdown();
        assert!(markdown.contains("| ✓✓✗✓✓ | 0.98-1.05 |"), "{markdown}");
    }

    #[test]
    fn only_moves_beyond_the_noise_are_reported() {
        let before = report(&[0.80, 0.82, 0.81, 0.83, 0.80]);
        assert!(
            report(&[0.81, 0.82, 0.80, 0.83, 0.81])
                .compare(&before)
                .is_empty()
        );
        let after = report(&[1.01, 1.02, 1.00, 1.03, 1.01]);
        let moved = after.compare(&before);
        assert!(
            moved
                .iter()
                .any(|l| l.starts_with("balancer/pick_first at concurrency 16: 0.81 → 1.01")),
            "{moved:?}"
        );
        assert!(
            moved.iter().any(|l| l.contains("does not hold → holds")),
            "the verdict changed too: {moved:?}"
        );
    }

    #[test]
    fn today_is_a_date() {
        let today = today();
        assert_eq!(today.len(), 10);
        assert!(today.starts_with("20"), "{today}");
    }
}
