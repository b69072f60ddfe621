//! A deterministic, discrete-event simulation of a client balancing calls over
//! backends, using the *same picker code* as the real balancer.
//!
//! # The model
//! - **Backends** have a mean service time and a capacity: `capacity` calls are served
//!   at once, more wait in a first-in, first-out queue (a server with that many
//!   workers). Service times are exponentially distributed around the mean, so some
//!   calls are much slower than the mean, as on real servers.
//! - **Calls arrive** open-loop, as a Poisson process: independent arrivals at a fixed
//!   average rate, whether or not earlier calls have finished, as from many
//!   independent users. The rate is given directly, or as a *utilisation* of the
//!   fleet's total capacity (`Σ capacity / mean service time`).
//! - Or **closed-loop** (`concurrency`): N callers, each sending its next call as soon
//!   as its last one returns, as greeter-client does. The load then adapts to the
//!   fleet: a slow backend slows its callers down instead of piling calls up.
//! - **Deadlines** (`timeout`): a call not answered in time fails with
//!   DEADLINE_EXCEEDED and is cancelled on its backend (taken out of the queue, or its
//!   worker freed), as a gRPC server drops a cancelled call. An overloaded backend then
//!   shows up as failed calls, not as a p99 of minutes.
//! - **Outlier detection** (`outlier`): failed calls count against their backend as in
//!   the real balancer (lb-core's `OutlierDetection`): 5 in a row, or a success rate
//!   far below the others' at a review every interval, eject it; the picker is rebuilt
//!   without it (as the balancer publishes a new snapshot) until its time is up. With
//!   deadlines, a backend too slow to answer in time leaves the draws.
//! - **Each call is picked** by the policy's [`Picker`], reading real
//!   [`EndpointState`]s: the in-flight count rises at the pick and falls when the call
//!   completes, and the latency estimate is fed with the call's full latency (queueing
//!   included), all in virtual time.
//! - **Events** change the fleet mid-run: a backend slows down or recovers, leaves or
//!   joins.
//!
//! Time is virtual (integer nanoseconds) and every random number comes from generators
//! seeded from `--seed`, so the same scenario prints the same table, byte for byte.
//! A million calls take a second or two.
//!
//! ```
//! use greeter_client::simulate::{Scenario, simulate};
//! use lb_core::{Policy, policy::RoundRobinConfig};
//!
//! let scenario: Scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).unwrap();
//! let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
//! assert_eq!(report.backends.len(), 3);
//! ```

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, VecDeque},
    fmt,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use lb_core::{
    BuildPicker, Connectivity, Endpoint, EndpointState, InFlightGuard, OutlierDetection,
    PickContext, Picker, Policy, policy::config::DEFAULT_HASH_HEADER,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Deserialize;

use crate::report::{Backend, ErrorCount, Latency, Report, latency_histogram};

/// One simulated backend: `2ms`, or `2ms,capacity=4,weight=2`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    /// Mean service time.
    pub latency: Duration,
    /// Calls served at once (`None`: the scenario's default).
    pub capacity: Option<usize>,
    /// Weight, for the weighted policies.
    pub weight: u32,
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
        };
        for part in parts {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let number = value.trim().parse::<u32>().ok().filter(|&n| n > 0);
            match (key.trim(), number) {
                ("capacity", Some(n)) => spec.capacity = Some(n as usize),
                ("weight", Some(n)) if n <= lb_core::endpoint::MAX_WEIGHT => spec.weight = n,
                _ => {
                    return Err(format!(
                        "backend `{text}`: `{part}` is not capacity=N or weight=N (N ≥ 1)"
                    ));
                }
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
}

impl FromStr for Event {
    type Err = String;

    /// `5s slow 3 20ms`, `8s recover 3`, `10s remove 1`, `12s add 2ms,capacity=8`.
    fn from_str(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let usage = || {
            format!(
                "event `{text}`: expected `TIME slow N LATENCY`, `TIME recover N`, \
                 `TIME remove N` or `TIME add LATENCY[,capacity=C]` (e.g. `5s slow 3 20ms`)"
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
const UNPICKED_PAUSE_NS: u64 = 100_000_000;

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
            .then(crate::load::demo_outlier_detection);
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
                Change::Slow(n, _) | Change::Recover(n) | Change::Remove(n) if *n > count => {
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

/// What [`simulate`] returns.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The same report as a real run's.
    pub report: Report,
    /// Why the first `explain` picks were made, with their virtual time.
    pub explanations: Vec<String>,
}

/// Runs `scenario` with `policy`.
pub fn simulate(scenario: &Scenario, policy: &Policy) -> Outcome {
    Simulation::new(scenario, policy).run()
}

/// What `greeter-client simulate` prints for `reports` of `scenario`: a line saying
/// what was simulated, and the side-by-side table. The playground shows the same.
pub fn printout(scenario: &Scenario, reports: &[Report]) -> String {
    let events: Vec<String> = scenario.events.iter().map(ToString::to_string).collect();
    let load = match scenario.concurrency {
        Some(callers) => format!("closed loop, {callers} callers"),
        None => format!("at {:.0} calls/s", scenario.arrival_rate()),
    };
    let deadline = scenario
        .timeout
        .map(|t| format!(", {} deadline", humantime::format_duration(t)))
        .unwrap_or_default();
    format!(
        "simulated {} s {load}{deadline} (seed {}){}\n\n{}",
        scenario.duration.as_secs_f64(),
        scenario.seed,
        if events.is_empty() {
            String::new()
        } else {
            format!("; events: {}", events.join(", "))
        },
        crate::report::comparison_table(reports)
    )
}

const NANOS_PER_SEC: f64 = 1e9;

struct SimBackend {
    label: String,
    state: EndpointState,
    mean_ns: f64,
    base_mean_ns: f64,
    capacity: usize,
    busy: usize,
    /// Calls queued, by id (a call cancelled meanwhile is skipped when its turn comes).
    waiting: VecDeque<u64>,
    served: u64,
    timeouts: u64,
    /// Outlier detection's view of it.
    ejected: bool,
    ejected_until: u64,
    times_ejected: u32,
    ejections: u64,
    failure_streak: u32,
    /// Successes and failures in the current interval.
    interval: (u64, u64),
    /// Its load reports (with `orca`).
    load: SimLoad,
}

/// A simulated backend's load reports: calls answered and busy time (workers × time)
/// over the open window, and the report of the last closed one.
#[derive(Default)]
struct SimLoad {
    window_start: u64,
    answered: u64,
    busy_ns: f64,
    /// When `busy` last changed.
    changed_at: u64,
    report: Option<lb_core::orca::OrcaLoadReport>,
}

/// How long a simulated backend's load-report window lasts (as greeter-server's).
const LOAD_WINDOW_NS: u64 = 500_000_000;

struct Call {
    arrived: u64,
    guard: InFlightGuard,
    backend: usize,
    /// The closed-loop caller that sent it.
    caller: Option<usize>,
    /// On a worker now (not queued).
    serving: bool,
}

enum Happening {
    Arrival,
    Send {
        caller: usize,
    },
    Done {
        id: u64,
    },
    Timeout {
        id: u64,
    },
    Change(usize),
    /// Outlier detection's periodic review.
    Review,
}

struct Scheduled {
    at: u64,
    seq: u64,
    what: Happening,
}

// The heap is a max-heap: order by (time, sequence) reversed, so the earliest comes
// first and simultaneous events keep the order they were scheduled in.
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}

struct Simulation<'s> {
    scenario: &'s Scenario,
    policy: &'s Policy,
    backends: Vec<SimBackend>,
    /// Backends in the membership now, by index into `backends`.
    active: Vec<usize>,
    /// What the picker sees: the members not ejected, by index into `backends`, and
    /// their states (parallel).
    view: Vec<usize>,
    states: Vec<EndpointState>,
    picker: Arc<dyn Picker>,
    heap: BinaryHeap<Scheduled>,
    seq: u64,
    /// Arrivals and service times.
    world: SmallRng,
    /// Picks (and pickers' own randomness).
    picks: SmallRng,
    mean_gap_ns: f64,
    end_ns: u64,
    calls: u64,
    unpicked: u64,
    timeouts: u64,
    /// Calls not yet answered, failed or cancelled, by id.
    live: std::collections::HashMap<u64, Call>,
    latency: hdrhistogram::Histogram<u64>,
    explanations: Vec<String>,
    key_header: http::HeaderName,
}

impl<'s> Simulation<'s> {
    fn new(scenario: &'s Scenario, policy: &'s Policy) -> Self {
        let header = policy.hash_header().unwrap_or(DEFAULT_HASH_HEADER);
        let mut sim = Self {
            scenario,
            policy,
            backends: Vec::new(),
            active: Vec::new(),
            view: Vec::new(),
            states: Vec::new(),
            picker: policy.build(&[], &mut SmallRng::seed_from_u64(0)),
            heap: BinaryHeap::new(),
            seq: 0,
            world: SmallRng::seed_from_u64(scenario.seed),
            picks: SmallRng::seed_from_u64(scenario.seed ^ 0x5EED_0F91_C5C5),
            mean_gap_ns: NANOS_PER_SEC / scenario.arrival_rate(),
            end_ns: u64::try_from(scenario.duration.as_nanos()).unwrap_or(u64::MAX),
            calls: 0,
            unpicked: 0,
            timeouts: 0,
            live: std::collections::HashMap::new(),
            latency: latency_histogram(),
            explanations: Vec::new(),
            key_header: http::HeaderName::from_bytes(header.as_bytes())
                .unwrap_or(http::HeaderName::from_static(DEFAULT_HASH_HEADER)),
        };
        for spec in &scenario.backends {
            sim.add_backend(spec, 0);
        }
        sim.publish();
        if let Some(config) = &scenario.outlier {
            let interval = u64::try_from(config.interval.as_nanos()).unwrap_or(u64::MAX);
            sim.schedule(interval.max(1), Happening::Review);
        }
        for (i, event) in scenario.events.iter().enumerate() {
            let at = u64::try_from(event.at.as_nanos()).unwrap_or(u64::MAX);
            sim.schedule(at, Happening::Change(i));
        }
        match scenario.concurrency {
            Some(callers) => {
                for caller in 0..callers {
                    sim.schedule(0, Happening::Send { caller });
                }
            }
            None => {
                let first = sim.gap();
                sim.schedule(first, Happening::Arrival);
            }
        }
        sim
    }

    /// Adds a backend, READY from `now` (virtual time: where slow start begins).
    fn add_backend(&mut self, spec: &BackendSpec, now: u64) {
        let number = self.backends.len() + 1;
        let capacity = spec.capacity.unwrap_or(self.scenario.capacity).max(1);
        let address = format!("b{number}:{}", 50_050 + number);
        let endpoint: Endpoint = match address.parse() {
            Ok(endpoint) => endpoint,
            Err(_) => return, // Only past 15,000 backends; check() forbids that many.
        };
        let state = EndpointState::with_decay(
            endpoint.with_weight(spec.weight),
            self.policy.latency_decay(),
        );
        state.set_connectivity(Connectivity::Ready);
        state.set_ready_since(now);
        let mean_ns = spec.latency.as_nanos() as f64;
        self.backends.push(SimBackend {
            label: format!(
                "{address} ({}, {capacity} at once)",
                humantime::format_duration(spec.latency)
            ),
            state: state.clone(),
            mean_ns,
            base_mean_ns: mean_ns,
            capacity,
            busy: 0,
            waiting: VecDeque::new(),
            served: 0,
            timeouts: 0,
            ejected: false,
            ejected_until: 0,
            times_ejected: 0,
            ejections: 0,
            failure_streak: 0,
            interval: (0, 0),
            load: SimLoad {
                window_start: now,
                changed_at: now,
                ..SimLoad::default()
            },
        });
        self.active.push(self.backends.len() - 1);
    }

    /// What the picker sees after a change: the members not ejected, and a picker
    /// built for them (as the real balancer publishes a snapshot).
    fn publish(&mut self) {
        self.view = self
            .active
            .iter()
            .copied()
            .filter(|&b| !self.backends[b].ejected)
            .collect();
        self.states = self
            .view
            .iter()
            .map(|&b| self.backends[b].state.clone())
            .collect();
        self.picker = self.policy.build(&self.states, &mut self.picks);
    }

    /// Ejects `backend` if outlier detection allows one more; whether it did.
    fn eject(&mut self, now: u64, backend: usize) -> bool {
        let Some(config) = &self.scenario.outlier else {
            return false;
        };
        let ejected = self
            .active
            .iter()
            .filter(|&&b| self.backends[b].ejected)
            .count();
        let b = &mut self.backends[backend];
        if b.ejected || !config.may_eject(ejected, self.active.len()) {
            return false;
        }
        b.ejected = true;
        b.times_ejected += 1;
        b.ejections += 1;
        b.failure_streak = 0;
        let time = config.ejection_time(b.times_ejected);
        b.ejected_until = now.saturating_add(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX));
        true
    }

    /// Every interval: the success-rate detector, and the ejected whose time is up
    /// come back; a returned backend not ejected again is forgiven one ejection.
    fn review(&mut self, now: u64) {
        let Some(config) = self.scenario.outlier.clone() else {
            return;
        };
        let judged: Vec<usize> = self
            .active
            .iter()
            .copied()
            .filter(|&b| !self.backends[b].ejected)
            .collect();
        let stats: Vec<(u64, u64)> = judged.iter().map(|&b| self.backends[b].interval).collect();
        let mut changed = false;
        let mut ejected_now = Vec::new();
        // Enforcement draws from a generator of its own, so that arrivals and picks do
        // not change when an outlier is found.
        let mut enforcement = SmallRng::seed_from_u64(self.scenario.seed ^ now);
        for (i, _reason) in config.interval_outliers(&stats, &mut enforcement) {
            if self.eject(now, judged[i]) {
                ejected_now.push(judged[i]);
                changed = true;
            }
        }
        for &b in &self.active {
            let backend = &mut self.backends[b];
            if backend.ejected && !ejected_now.contains(&b) && backend.ejected_until <= now {
                backend.ejected = false;
                changed = true;
            } else if !backend.ejected && backend.times_ejected > 0 {
                backend.times_ejected -= 1;
            }
            backend.interval = (0, 0);
        }
        if changed {
            self.publish();
        }
        let next =
            now.saturating_add(u64::try_from(config.interval.as_nanos()).unwrap_or(u64::MAX));
        if next < self.end_ns {
            self.schedule(next.max(now + 1), Happening::Review);
        }
    }

    fn schedule(&mut self, at: u64, what: Happening) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            what,
        });
    }

    /// The time to the next arrival: exponential, so arrivals form a Poisson process.
    fn gap(&mut self) -> u64 {
        let u: f64 = self.world.random();
        (-(1.0 - u).ln() * self.mean_gap_ns) as u64
    }

    fn service_time(&mut self, backend: usize) -> u64 {
        let u: f64 = self.world.random();
        ((-(1.0 - u).ln() * self.backends[backend].mean_ns) as u64).max(1)
    }

    fn run(mut self) -> Outcome {
        while let Some(Scheduled { at, what, .. }) = self.heap.pop() {
            match what {
                Happening::Arrival => self.arrive(at),
                Happening::Send { caller } => self.send(at, Some(caller)),
                Happening::Done { id } => self.complete(at, id),
                Happening::Timeout { id } => self.time_out(at, id),
                Happening::Change(i) => self.change(at, i),
                Happening::Review => self.review(at),
            }
        }
        self.report()
    }

    /// An open-loop arrival: the next one is scheduled at once.
    fn arrive(&mut self, now: u64) {
        let next = now.saturating_add(self.gap());
        if next < self.end_ns {
            self.schedule(next, Happening::Arrival);
        }
        self.send(now, None);
    }

    /// A closed-loop caller's call ended at `now`: it sends its next, if there is time.
    fn next_from(&mut self, now: u64, caller: Option<usize>, pause: u64) {
        let at = now.saturating_add(pause);
        if let Some(caller) = caller
            && at < self.end_ns
        {
            self.schedule(at, Happening::Send { caller });
        }
    }

    /// One call, picked now and sent to its backend.
    fn send(&mut self, now: u64, caller: Option<usize>) {
        if self.calls >= MAX_CALLS {
            return;
        }
        let number = self.calls;
        self.calls += 1;

        let mut headers = http::HeaderMap::new();
        if self.scenario.keys > 0
            && let Ok(value) = format!("key-{}", number % self.scenario.keys).parse()
        {
            headers.insert(self.key_header.clone(), value);
        }
        let explain = number < self.scenario.explain;
        let mut why = String::new();
        let picked = {
            let ctx = PickContext::new(&mut self.picks)
                .with_headers(&headers)
                .at(now);
            let mut ctx = if explain {
                ctx.explain_into(&mut why)
            } else {
                ctx
            };
            self.picker.pick(&self.states, &mut ctx)
        };
        if explain {
            let t = now as f64 / NANOS_PER_SEC;
            self.explanations.push(match &picked {
                Ok(_) => format!("[{} t={t:.6}s] {why}", self.policy),
                Err(err) => format!("[{} t={t:.6}s] {err}", self.policy),
            });
        }
        let Some(&backend) = picked.ok().and_then(|i| self.view.get(i)) else {
            self.unpicked += 1;
            self.next_from(now, caller, UNPICKED_PAUSE_NS);
            return;
        };
        let id = number;
        let call = Call {
            arrived: now,
            guard: self.backends[backend].state.start_call_at(now),
            backend,
            caller,
            serving: false,
        };
        self.live.insert(id, call);
        if let Some(timeout) = self.scenario.timeout {
            let at = now.saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
            self.schedule(at, Happening::Timeout { id });
        }
        if self.backends[backend].busy < self.backends[backend].capacity {
            self.start(now, backend, id);
        } else {
            self.backends[backend].waiting.push_back(id);
        }
    }

    fn start(&mut self, now: u64, backend: usize, id: u64) {
        if let Some(call) = self.live.get_mut(&id) {
            call.serving = true;
        }
        self.busy_change(now, backend, true);
        let done = now.saturating_add(self.service_time(backend));
        self.schedule(done, Happening::Done { id });
    }

    /// One more (`up`) or one fewer of `backend`'s workers is busy from `now` on; the
    /// time they were busy so far counts towards its load report.
    fn busy_change(&mut self, now: u64, backend: usize, up: bool) {
        let b = &mut self.backends[backend];
        b.load.busy_ns += b.busy as f64 * now.saturating_sub(b.load.changed_at) as f64;
        b.load.changed_at = now;
        if up {
            b.busy += 1;
        } else {
            b.busy = b.busy.saturating_sub(1);
        }
    }

    /// `backend` answered a call at `now`: with `orca`, the answer carries its load
    /// report, that of its last closed window (closed here when half a second old).
    fn report_load(&mut self, now: u64, backend: usize) {
        if !self.scenario.orca {
            return;
        }
        let b = &mut self.backends[backend];
        b.load.answered += 1;
        let age = now.saturating_sub(b.load.window_start);
        if age >= LOAD_WINDOW_NS {
            let busy =
                b.load.busy_ns + b.busy as f64 * now.saturating_sub(b.load.changed_at) as f64;
            b.load.report = Some(lb_core::orca::OrcaLoadReport {
                rps_fractional: b.load.answered as f64 / (age as f64 / NANOS_PER_SEC),
                application_utilization: busy / (b.capacity as f64 * age as f64),
                ..lb_core::orca::OrcaLoadReport::default()
            });
            b.load = SimLoad {
                window_start: now,
                changed_at: now,
                report: b.load.report.take(),
                ..SimLoad::default()
            };
        }
        if let Some(report) = &b.load.report {
            b.state.record_load(report, now);
        }
    }

    /// A worker of `backend` is free: the next queued call still waiting takes it.
    fn start_next(&mut self, now: u64, backend: usize) {
        while let Some(id) = self.backends[backend].waiting.pop_front() {
            if self.live.contains_key(&id) {
                self.start(now, backend, id);
                return;
            }
        }
    }

    fn complete(&mut self, now: u64, id: u64) {
        // A call that timed out was cancelled, its worker freed then: nothing to do.
        let Some(call) = self.live.remove(&id) else {
            return;
        };
        let micros = (now.saturating_sub(call.arrived) / 1_000).max(1);
        let _ = self.latency.record(micros);
        call.guard.finish_at(now);
        let b = &mut self.backends[call.backend];
        b.served += 1;
        b.failure_streak = 0;
        b.interval.0 += 1;
        self.busy_change(now, call.backend, false);
        self.report_load(now, call.backend);
        self.start_next(now, call.backend);
        self.next_from(now, call.caller, 0);
    }

    /// The call's deadline passed before its answer: it fails, and is cancelled on its
    /// backend (its worker freed, or its place in the queue given up).
    fn time_out(&mut self, now: u64, id: u64) {
        let Some(call) = self.live.remove(&id) else {
            return; // Answered in time.
        };
        self.timeouts += 1;
        call.guard.finish_at(now);
        let b = &mut self.backends[call.backend];
        b.timeouts += 1;
        b.failure_streak += 1;
        b.interval.1 += 1;
        let streak = b.failure_streak;
        if call.serving {
            self.busy_change(now, call.backend, false);
            self.start_next(now, call.backend);
        }
        let limit = self
            .scenario
            .outlier
            .as_ref()
            .and_then(|c| c.consecutive_failures);
        if limit.is_some_and(|n| streak >= n.max(1)) && self.eject(now, call.backend) {
            self.publish();
        }
        self.next_from(now, call.caller, 0);
    }

    fn change(&mut self, now: u64, index: usize) {
        let Some(event) = self.scenario.events.get(index) else {
            return;
        };
        match &event.change {
            Change::Slow(n, latency) => {
                if let Some(b) = self.backends.get_mut(n - 1) {
                    b.mean_ns = latency.as_nanos() as f64;
                }
            }
            Change::Recover(n) => {
                if let Some(b) = self.backends.get_mut(n - 1) {
                    b.mean_ns = b.base_mean_ns;
                }
            }
            Change::Remove(n) => {
                if let Some(position) = self.active.iter().position(|&b| b == n - 1) {
                    self.active.remove(position);
                    self.publish();
                }
            }
            Change::Add(spec) => {
                self.add_backend(spec, now);
                self.publish();
            }
        }
    }

    fn report(self) -> Outcome {
        let backends: Vec<Backend> = self
            .backends
            .iter()
            .map(|b| {
                let mut row = Backend::new(b.label.clone(), b.served, b.timeouts);
                row.ejections = b.ejections;
                row
            })
            .collect();
        let mut errors = Vec::new();
        if self.unpicked > 0 {
            errors.push(ErrorCount {
                code: "Unavailable".into(),
                count: self.unpicked,
                example: "no backend could be picked".into(),
            });
        }
        if self.timeouts > 0 {
            let timeout = self.scenario.timeout.unwrap_or_default();
            errors.push(ErrorCount {
                code: "DeadlineExceeded".into(),
                count: self.timeouts,
                example: format!("no answer within {}", humantime::format_duration(timeout)),
            });
        }
        let report = Report::new(
            &self.policy.label(),
            self.calls,
            self.scenario.concurrency.unwrap_or(0),
            self.scenario.duration.as_secs_f64(),
            backends,
            Latency::from_histogram_us(&self.latency),
            errors,
        );
        Outcome {
            report,
            explanations: self.explanations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::policy::RoundRobinConfig;

    #[test]
    fn backends_and_events_parse_and_say_what_is_wrong() {
        assert_eq!(
            "20ms,capacity=4,weight=2".parse::<BackendSpec>(),
            Ok(BackendSpec {
                latency: Duration::from_millis(20),
                capacity: Some(4),
                weight: 2
            })
        );
        assert!(
            "fast"
                .parse::<BackendSpec>()
                .unwrap_err()
                .contains("`fast`")
        );
        assert!(
            "2ms,cap=4"
                .parse::<BackendSpec>()
                .unwrap_err()
                .contains("`cap=4`")
        );
        assert!(
            "0ms"
                .parse::<BackendSpec>()
                .unwrap_err()
                .contains("above 0")
        );
        let event: Event = "5s slow 3 20ms".parse().unwrap();
        assert_eq!(event.change, Change::Slow(3, Duration::from_millis(20)));
        assert_eq!(event.to_string(), "5s slow 3 20ms");
        assert!(
            "5s explode 3"
                .parse::<Event>()
                .unwrap_err()
                .contains("expected")
        );
        let mut scenario = Scenario::with_backends(&["2ms"]).unwrap();
        scenario.events.push("1s remove 2".parse().unwrap());
        assert!(scenario.check().unwrap_err().contains("no backend 2"));
    }

    #[test]
    fn the_arrival_rate_follows_the_utilisation() {
        let scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).unwrap();
        // 8/0.002 + 8/0.002 + 8/0.02 = 8400 calls/s of capacity; 60 % of it.
        assert!((scenario.arrival_rate() - 5040.0).abs() < 1e-6);
    }

    #[test]
    fn a_removed_backend_gets_no_new_calls_and_an_added_one_does() {
        let mut scenario = Scenario::with_backends(&["2ms", "2ms"]).unwrap();
        scenario.duration = Duration::from_secs(4);
        scenario.events = vec![
            "2s remove 1".parse().unwrap(),
            "2s add 2ms".parse().unwrap(),
        ];
        let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
        let calls: Vec<u64> = report.backends.iter().map(|b| b.calls).collect();
        // Backend 1 served only the first half; 2 and 3 split the second half.
        assert!(calls[0] > 0 && calls[2] > 0, "{calls:?}");
        assert!(calls[1] > calls[0] && calls[1] > calls[2], "{calls:?}");
        assert_eq!(report.failed, 0);
        assert_eq!(report.succeeded, report.requests);
    }

    #[test]
    fn a_closed_loop_keeps_its_callers_busy_and_no_more() {
        let mut scenario = Scenario::with_backends(&["10ms"]).unwrap();
        scenario.concurrency = Some(4);
        let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
        // 4 callers, 10 ms a call, never more than 4 at once on 8 workers: 400 calls/s.
        assert!(
            (360.0..440.0).contains(&report.calls_per_sec),
            "{}",
            report.calls_per_sec
        );
        assert_eq!(report.failed, 0);
        assert_eq!(report.concurrency, 4);
        // Nobody queues: the median is the service time's (exponential: ln 2 × 10 ms).
        assert!(report.latency_ms.p50 < 10.0, "{:?}", report.latency_ms);
    }

    #[test]
    fn reported_load_gives_a_small_backend_its_share_under_weighted_round_robin() {
        let mut scenario =
            Scenario::with_backends(&["5ms,capacity=4", "5ms,capacity=4", "5ms,capacity=1"])
                .unwrap();
        scenario.concurrency = Some(18);
        scenario.duration = Duration::from_secs(30);
        let wrr: Policy = r#"{"weighted_round_robin":{"blackoutPeriod":"1s"}}"#
            .parse()
            .unwrap();
        let share = |scenario: &Scenario| simulate(scenario, &wrr).report.backends[2].share;
        let static_share = share(&scenario);
        assert!(
            (static_share - 1.0 / 3.0).abs() < 0.02,
            "no reports: equal weights, {static_share}"
        );
        scenario.orca = true;
        let reported = share(&scenario);
        assert!(
            (reported - 1.0 / 9.0).abs() < 0.03,
            "capacities 4, 4, 1 reported: about a ninth, {reported}"
        );
    }

    #[test]
    fn deadlines_fail_calls_and_cancel_them_on_the_backend() {
        let mut scenario = Scenario::with_backends(&["100ms,capacity=1"]).unwrap();
        scenario.concurrency = Some(10);
        scenario.timeout = Some(Duration::from_millis(150));
        let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
        assert!(report.failed > report.succeeded, "{report:?}");
        assert_eq!(report.errors[0].code, "DeadlineExceeded");
        assert_eq!(report.succeeded + report.failed, report.requests);
        assert_eq!(report.backends[0].errors, report.failed);
        assert!(
            report.latency_ms.max <= 151.0,
            "no answer counts after its deadline: {:?}",
            report.latency_ms
        );
        // Cancelled calls free the worker: it serves about one call per 100 ms.
        let served_per_sec = report.succeeded as f64 / 10.0;
        assert!((7.0..11.0).contains(&served_per_sec), "{served_per_sec}");
    }

    #[test]
    fn the_same_seed_gives_the_same_closed_loop_run() {
        let mut scenario = Scenario::with_backends(&["1ms", "10ms", "100ms", "1s"]).unwrap();
        scenario.concurrency = Some(20);
        scenario.timeout = Some(Duration::from_secs(1));
        let policy: Policy = "least_request".parse().unwrap();
        let a = serde_json::to_string(&simulate(&scenario, &policy).report).unwrap();
        let b = serde_json::to_string(&simulate(&scenario, &policy).report).unwrap();
        assert_eq!(a, b);
        scenario.seed = 2;
        let c = serde_json::to_string(&simulate(&scenario, &policy).report).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn outlier_detection_ejects_a_backend_whose_calls_time_out() {
        let mut scenario = Scenario::with_backends(&["1ms", "1ms", "1ms", "1s"]).unwrap();
        scenario.concurrency = Some(20);
        scenario.timeout = Some(Duration::from_millis(100));
        let policy = Policy::new(RoundRobinConfig::default());
        let without = simulate(&scenario, &policy).report;
        scenario.outlier = Some(crate::load::demo_outlier_detection());
        let with = simulate(&scenario, &policy).report;
        fn slow(report: &Report) -> &Backend {
            &report.backends[3]
        }
        assert_eq!(slow(&without).ejections, 0);
        // 5 timeouts in a row: out for 5 s, then (after it failed again) for 10 s.
        assert!(slow(&with).ejections >= 1, "{:?}", slow(&with));
        assert!(
            slow(&with).errors * 4 < slow(&without).errors,
            "{} failed calls on the slow backend with ejection, {} without",
            slow(&with).errors,
            slow(&without).errors
        );
        assert!(with.calls_per_sec > without.calls_per_sec);
        for fast in &with.backends[..3] {
            assert_eq!(fast.ejections, 0, "{fast:?}");
        }
        let file = Scenario::from_json(
            r#"{"backends": ["1ms"], "timeout": "1s", "outlier_detection": true}"#,
        )
        .unwrap();
        assert_eq!(file.outlier, Some(crate::load::demo_outlier_detection()));
    }

    #[test]
    fn outlier_detection_never_ejects_more_than_half() {
        let mut scenario = Scenario::with_backends(&["1s", "1s", "1s", "1s"]).unwrap();
        scenario.concurrency = Some(8);
        scenario.timeout = Some(Duration::from_millis(10));
        scenario.outlier = Some(crate::load::demo_outlier_detection());
        let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
        let ejected: Vec<u64> = report.backends.iter().map(|b| b.ejections).collect();
        // Every call fails; two are ejected at a time, the others keep the calls.
        assert!(
            ejected.iter().filter(|&&e| e > 0).count() >= 2,
            "{ejected:?}"
        );
        assert!(report.backends.iter().all(|b| b.errors > 0), "{report:?}");
        assert!(
            report.errors.iter().all(|e| e.code != "Unavailable"),
            "the picker always had backends left: {:?}",
            report.errors
        );
    }

    #[test]
    fn closed_loop_settings_are_checked() {
        let mut scenario = Scenario::with_backends(&["1ms"]).unwrap();
        scenario.concurrency = Some(0);
        assert!(scenario.check().unwrap_err().contains("concurrency 0"));
        scenario.concurrency = Some(2);
        scenario.timeout = Some(Duration::ZERO);
        assert!(scenario.check().unwrap_err().contains("timeout"));
        let file =
            Scenario::from_json(r#"{"backends": ["1ms"], "concurrency": 3, "timeout": "250ms"}"#)
                .unwrap();
        assert_eq!(file.concurrency, Some(3));
        assert_eq!(file.timeout, Some(Duration::from_millis(250)));
    }
}
