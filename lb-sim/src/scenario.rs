//! What a simulation runs: backends, load, deadlines and events.

use std::{fmt, str::FromStr, time::Duration};

use lb_core::OutlierDetection;
use lb_core::locality::{Locality, MAX_PRIORITY};
use serde::Deserialize;

/// One simulated backend: `2ms`, or `2ms,capacity=4,weight=2`, or where it runs too:
/// `2ms,locality=zone-a,priority=1` (for the tree policies).
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    /// Mean service time.
    pub latency: Duration,
    /// Calls served at once (`None`: the scenario's default).
    pub capacity: Option<usize>,
    /// Weight, for the weighted policies.
    pub weight: u32,
    /// Its locality, for `weighted_target_experimental`.
    pub locality: Option<Locality>,
    /// Its priority (0, the highest, by default), for `priority_experimental`.
    pub priority: u32,
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let latency = parts.next().unwrap_or_default().trim();
        let latency = humantime::parse_duration(latency)
            .map_err(|e| format!("backend `{text}`: `{latency}` is not a duration ({e})"))?;
        if latency.is_zero() {
            return Err(format!(
                "backend `{text}`: the mean service time must be above 0"
            ));
        }
        let mut spec = BackendSpec {
            latency,
            capacity: None,
            weight: 1,
            locality: None,
            priority: 0,
        };
        let usage = |part: &str| {
            format!(
                "backend `{text}`: `{part}` is not capacity=N, weight=N (N ≥ 1), \
                 locality=ZONE or priority=P (0 to {MAX_PRIORITY})"
            )
        };
        for part in parts {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let value = value.trim();
            let number = value.parse::<u32>().ok().filter(|&n| n > 0);
            match (key.trim(), number) {
                ("capacity", Some(n)) => spec.capacity = Some(n as usize),
                ("weight", Some(n)) if n <= lb_core::endpoint::MAX_WEIGHT => spec.weight = n,
                ("locality", _) => {
                    spec.locality = Some(
                        value
                            .parse()
                            .map_err(|e| format!("backend `{text}`: {e}"))?,
                    );
                }
                ("priority", _) => {
                    spec.priority = value
                        .parse::<u32>()
                        .ok()
                        .filter(|&p| p <= MAX_PRIORITY)
                        .ok_or_else(|| usage(part))?;
                }
                _ => return Err(usage(part)),
            }
        }
        Ok(spec)
    }
}

/// A change to the fleet at a moment of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When, from the start.
    pub at: Duration,
    /// What.
    pub change: Change,
}

/// What an [`Event`] changes. Backends are numbered from 1, as in the table.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Backend `n`'s mean service time becomes this.
    Slow(usize, Duration),
    /// Backend `n` returns to its original mean service time.
    Recover(usize),
    /// Backend `n` leaves: no new calls; the ones it has finish.
    Remove(usize),
    /// A new backend joins.
    Add(BackendSpec),
    /// Backend `n`'s server dies: TRANSIENT_FAILURE, and its calls fail with it.
    Down(usize),
    /// Backend `n`'s server is back: READY again.
    Up(usize),
}

impl FromStr for Event {
    type Err = String;

    /// `5s slow 3 20ms`, `8s recover 3`, `10s remove 1`, `12s add 2ms,capacity=8`,
    /// `15s down 2`, `20s up 2`.
    fn from_str(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let usage = || {
            format!(
                "event `{text}`: expected `TIME slow N LATENCY`, `TIME recover N`, \
                 `TIME remove N`, `TIME add LATENCY[,capacity=C]`, `TIME down N` or \
                 `TIME up N` (e.g. `5s slow 3 20ms`)"
            )
        };
        let at = words
            .first()
            .and_then(|w| humantime::parse_duration(w).ok())
            .ok_or_else(usage)?;
        let backend = |i: usize| -> Result<usize, String> {
            words
                .get(i)
                .and_then(|w| w.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .ok_or_else(usage)
        };
        let change = match (words.get(1).copied(), words.len()) {
            (Some("slow"), 4) => Change::Slow(
                backend(2)?,
                humantime::parse_duration(words[3]).map_err(|_| usage())?,
            ),
            (Some("recover"), 3) => Change::Recover(backend(2)?),
            (Some("remove"), 3) => Change::Remove(backend(2)?),
            (Some("add"), 3) => Change::Add(words[2].parse()?),
            (Some("down"), 3) => Change::Down(backend(2)?),
            (Some("up"), 3) => Change::Up(backend(2)?),
            _ => return Err(usage()),
        };
        Ok(Event { at, change })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = humantime::format_duration(self.at);
        match &self.change {
            Change::Slow(n, latency) => {
                write!(f, "{at} slow {n} {}", humantime::format_duration(*latency))
            }
            Change::Recover(n) => write!(f, "{at} recover {n}"),
            Change::Remove(n) => write!(f, "{at} remove {n}"),
            Change::Add(spec) => write!(f, "{at} add {}", humantime::format_duration(spec.latency)),
            Change::Down(n) => write!(f, "{at} down {n}"),
            Change::Up(n) => write!(f, "{at} up {n}"),
        }
    }
}

/// Everything a simulation needs.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The backends at the start.
    pub backends: Vec<BackendSpec>,
    /// Capacity of backends that do not give their own.
    pub capacity: usize,
    /// Arrivals per second; `None`: from `utilisation`.
    pub rate: Option<f64>,
    /// Arrival rate as a fraction of the starting fleet's capacity.
    pub utilisation: f64,
    /// How long calls arrive (calls still in flight then are finished after).
    pub duration: Duration,
    /// Changes during the run.
    pub events: Vec<Event>,
    /// Key space for the hashing policies (0: calls carry no key).
    pub keys: u64,
    /// Seeds arrivals, service times and picks.
    pub seed: u64,
    /// Explain the first this many picks.
    pub explain: u64,
    /// Closed loop: this many callers, each sending its next call when its last one
    /// returns (`None`: open-loop arrivals at `rate` or `utilisation`).
    pub concurrency: Option<usize>,
    /// Each call's deadline (`None`: none).
    pub timeout: Option<Duration>,
    /// Eject backends whose calls keep failing (here: running out of time), as the
    /// real balancer's outlier detection does (`None`: off).
    pub outlier: Option<OutlierDetection>,
    /// Backends report their load with every answer, as greeter-server `--orca`
    /// does (calls per second and the share of their capacity in use, over windows of
    /// half a second), for `weighted_round_robin`'s reported weights.
    pub orca: bool,
}

/// The most callers a closed-loop scenario may have.
pub const MAX_CONCURRENCY: usize = 100_000;

/// The most calls one simulation sends: past it, no new call starts.
pub const MAX_CALLS: u64 = 50_000_000;

/// How long a closed-loop caller whose call found no backend waits before its next
/// (greeter-client waits for a change, at most 100 ms).
pub(crate) const UNPICKED_PAUSE_NS: u64 = 100_000_000;

impl Scenario {
    /// Backends with these mean service times, capacity 8 each, 60 % utilisation,
    /// 10 simulated seconds, seed 1.
    pub fn with_backends(latencies: &[&str]) -> Result<Self, String> {
        Ok(Self {
            backends: latencies
                .iter()
                .map(|l| l.parse())
                .collect::<Result<_, _>>()?,
            capacity: 8,
            rate: None,
            utilisation: 0.6,
            duration: Duration::from_secs(10),
            events: Vec::new(),
            keys: 0,
            seed: 1,
            explain: 0,
            concurrency: None,
            timeout: None,
            outlier: None,
            orca: false,
        })
    }

    /// Reads a scenario file (JSON), e.g.
    /// `{"backends": ["2ms", "2ms", "20ms,capacity=4"], "utilisation": 0.6,
    ///   "duration": "10s", "events": ["5s slow 1 20ms", "8s recover 1"]}`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            backends: Vec<String>,
            #[serde(default)]
            capacity: Option<usize>,
            #[serde(default)]
            rate: Option<f64>,
            #[serde(default)]
            utilisation: Option<f64>,
            #[serde(default)]
            duration: Option<String>,
            #[serde(default)]
            events: Vec<String>,
            #[serde(default)]
            keys: Option<u64>,
            #[serde(default)]
            seed: Option<u64>,
            #[serde(default)]
            concurrency: Option<usize>,
            #[serde(default)]
            timeout: Option<String>,
            #[serde(default)]
            outlier_detection: bool,
            #[serde(default)]
            orca: bool,
        }
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut scenario = Self::with_backends(&[])?;
        scenario.backends = file
            .backends
            .iter()
            .map(|b| b.parse())
            .collect::<Result<_, _>>()?;
        scenario.capacity = file.capacity.unwrap_or(scenario.capacity);
        scenario.rate = file.rate;
        scenario.utilisation = file.utilisation.unwrap_or(scenario.utilisation);
        if let Some(duration) = file.duration {
            scenario.duration = humantime::parse_duration(&duration)
                .map_err(|e| format!("duration `{duration}`: {e}"))?;
        }
        scenario.events = file
            .events
            .iter()
            .map(|e| e.parse())
            .collect::<Result<_, _>>()?;
        scenario.keys = file.keys.unwrap_or(0);
        scenario.seed = file.seed.unwrap_or(scenario.seed);
        scenario.concurrency = file.concurrency;
        scenario.orca = file.orca;
        if let Some(timeout) = file.timeout {
            scenario.timeout = Some(
                humantime::parse_duration(&timeout)
                    .map_err(|e| format!("timeout `{timeout}`: {e}"))?,
            );
        }
        scenario.outlier = file
            .outlier_detection
            .then(crate::demo::demo_outlier_detection);
        scenario.check()?;
        Ok(scenario)
    }

    /// Checks that the scenario can run; says what is wrong otherwise.
    pub fn check(&self) -> Result<(), String> {
        if self.backends.is_empty() {
            return Err("a scenario needs at least one backend".into());
        }
        if self.capacity == 0 {
            return Err("capacity must be at least 1".into());
        }
        if !(self.utilisation > 0.0 && self.utilisation.is_finite()) {
            return Err(format!("utilisation {} must be above 0", self.utilisation));
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(format!("rate {rate} must be above 0"));
        }
        let mut count = self.backends.len();
        for event in &self.events {
            match &event.change {
                Change::Add(_) => count += 1,
                Change::Slow(n, _)
                | Change::Recover(n)
                | Change::Remove(n)
                | Change::Down(n)
                | Change::Up(n)
                    if *n > count =>
                {
                    return Err(format!(
                        "event `{event}`: there is no backend {n} (backends are numbered 1 to {count})"
                    ));
                }
                _ => {}
            }
        }
        if let Some(n) = self.concurrency
            && !(1..=MAX_CONCURRENCY).contains(&n)
        {
            return Err(format!(
                "concurrency {n}: between 1 and {MAX_CONCURRENCY} callers"
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err("timeout must be above 0".into());
        }
        if self.arrival_rate() * self.duration.as_secs_f64() > MAX_CALLS as f64 {
            return Err(
                "more than 50 million calls: shorten the duration or lower the rate".into(),
            );
        }
        Ok(())
    }

    /// Arrivals per second: open loop, as set; closed loop, an estimate (each caller
    /// at the rate of the fastest backend).
    pub fn arrival_rate(&self) -> f64 {
        if let Some(callers) = self.concurrency {
            let fastest = self
                .backends
                .iter()
                .map(|b| b.latency.as_secs_f64())
                .fold(f64::INFINITY, f64::min);
            return callers as f64 / fastest;
        }
        self.rate.unwrap_or_else(|| {
            let capacity: f64 = self
                .backends
                .iter()
                .map(|b| b.capacity.unwrap_or(self.capacity) as f64 / b.latency.as_secs_f64())
                .sum();
            self.utilisation * capacity
        })
    }
}
