//! The simulation: a queue of timed happenings (arrivals, completions, deadlines,
//! events, outlier-detection reviews), run in order of their virtual time.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, VecDeque},
    sync::Arc,
};

use lb_core::{
    BuildPicker, Connectivity, Endpoint, EndpointState, InFlightGuard, PickContext, Picker, Policy,
    policy::EndpointSet, policy::config::DEFAULT_HASH_HEADER,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::report::{Backend, ErrorCount, Latency, Report, latency_histogram};
use crate::scenario::{BackendSpec, Change, MAX_CALLS, Scenario, UNPICKED_PAUSE_NS};

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
    /// Calls that failed with their backend (a `down` event).
    cut: u64,
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
            cut: 0,
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
        let mut endpoint = endpoint
            .with_weight(spec.weight)
            .with_priority(spec.priority);
        if let Some(locality) = &spec.locality {
            endpoint = endpoint.with_locality(locality.clone());
        }
        let state = EndpointState::with_decay(endpoint, self.policy.latency_decay());
        // Every time the simulation gives is virtual: no real clock is read.
        state.set_created_at(now);
        state.set_connectivity_at(Connectivity::Ready, now);
        let place = match (&spec.locality, spec.priority) {
            (None, 0) => String::new(),
            (Some(l), 0) => format!(", {l}"),
            (None, p) => format!(", priority {p}"),
            (Some(l), p) => format!(", {l}, priority {p}"),
        };
        let mean_ns = spec.latency.as_nanos() as f64;
        self.backends.push(SimBackend {
            label: format!(
                "{address} ({}, {capacity} at once{place})",
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
            .filter(|&b| !self.backends[b].ejected && self.backends[b].state.is_ready())
            .collect();
        self.states = self
            .view
            .iter()
            .map(|&b| self.backends[b].state.clone())
            .collect();
        let all: Vec<EndpointState> = self
            .active
            .iter()
            .map(|&b| self.backends[b].state.clone())
            .collect();
        let set = EndpointSet {
            usable: &self.states,
            all: &all,
        };
        self.picker = self.policy.build_set(set, &mut self.picks);
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
            Change::Down(n) => self.down(now, n - 1),
            Change::Up(n) => {
                if let Some(b) = self.backends.get(n - 1) {
                    b.state.set_connectivity_at(Connectivity::Ready, now);
                    self.publish();
                }
            }
        }
    }

    /// Backend `backend`'s server dies: TRANSIENT_FAILURE, and every call it had, served
    /// or queued, fails with it (UNAVAILABLE; the simulator does not retry them).
    fn down(&mut self, now: u64, backend: usize) {
        let Some(b) = self.backends.get(backend) else {
            return;
        };
        b.state
            .set_connectivity_at(Connectivity::TransientFailure, now);
        let mut ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, call)| call.backend == backend)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable(); // The map's order is not the same from run to run.
        for id in ids {
            let Some(call) = self.live.remove(&id) else {
                continue;
            };
            call.guard.finish_at(now);
            self.cut += 1;
            if call.serving {
                self.busy_change(now, backend, false);
            }
            self.next_from(now, call.caller, 0);
        }
        self.backends[backend].waiting.clear();
        self.publish();
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
        if self.unpicked + self.cut > 0 {
            errors.push(ErrorCount {
                code: "Unavailable".into(),
                count: self.unpicked + self.cut,
                example: if self.unpicked > 0 {
                    "no backend could be picked".into()
                } else {
                    "the backend went down with the call".into()
                },
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
