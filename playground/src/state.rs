//! What the playground holds while it runs, and what it shows the page once a second:
//! the fleet as last seen, the balancer, the load, the events, and the snapshots.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lb_core::{Balancer, EndpointStatus, Policy};
use serde::Serialize;
use tokio::{sync::watch, time::Instant};

use crate::fleet::{Fleet, ServerView};
use crate::traffic::{Load, Second, Traffic};

/// What `greeter-client playground` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Servers to start.
    pub servers: usize,
    /// Their weights (for the weighted policies), in order; missing ones are 1.
    pub weights: Vec<u32>,
    /// Where the page is served; a loopback address.
    pub listen: SocketAddr,
    /// The policy to start with.
    pub policy: Policy,
    /// The load to start with.
    pub load: Load,
    /// Each call's deadline.
    pub timeout: Duration,
    /// The greeter-server binary to run.
    pub server_binary: PathBuf,
    /// Seeds the balancer's random choices.
    pub seed: u64,
}

/// How many snapshots (seconds) a page opened late is given.
const HISTORY: usize = 60;

/// How many events the page can catch up on.
const EVENTS_KEPT: usize = 200;

/// What the page shows, once a second.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Seconds since the playground started.
    pub t: f64,
    /// The active policy.
    pub policy: PolicyView,
    /// The load, e.g. `{"rate": 200}`.
    pub load: Load,
    /// The load in words.
    pub load_text: String,
    /// Each call's deadline, in milliseconds.
    pub timeout_ms: f64,
    /// Calls answered OK since the start.
    pub ok: u64,
    /// Calls failed since the start.
    pub failed: u64,
    /// Calls retried on another server since the start.
    pub retries: u64,
    /// The last second.
    pub second: Second,
    /// Calls in flight now, to all servers.
    pub in_flight: usize,
    /// One row per server.
    pub servers: Vec<ServerRow>,
    /// The events since the last snapshot, oldest first (`seq` numbers them all).
    pub events: Vec<Event>,
}

/// The active policy, as the page explains it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyView {
    /// Its name, e.g. `least_request`.
    pub name: &'static str,
    /// What it picks, in one line.
    pub summary: &'static str,
    /// Its section of docs/POLICIES.md, served by the playground, if it has one.
    pub doc: Option<String>,
    /// Whether it follows the servers' weights.
    pub uses_weights: bool,
}

impl PolicyView {
    /// The view of the policy called `name`; one that is not registered (a picker
    /// given to the builder directly) has no summary.
    pub fn of(name: &'static str) -> Self {
        Self {
            name,
            summary: lb_core::policy::registry::find(name).map_or("", |r| r.summary()),
            doc: crate::docs::policy_doc(name),
            uses_weights: name.starts_with("weighted_"),
        }
    }
}

/// One server, as its row on the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerRow {
    /// Its process: id, address, pid, added latency, draining.
    #[serde(flatten)]
    pub process: ServerView,
    /// Calls the balancer sent it in the last second (attempts).
    pub calls_per_sec: u64,
    /// Its part of the last second's calls, from 0 to 1.
    pub share: f64,
    /// Calls in flight to it now.
    pub in_flight: usize,
    /// The balancer's connectivity state, e.g. `READY`.
    pub state: String,
    /// What its health check last said.
    pub health: String,
    /// Whether outlier detection has it ejected.
    pub ejected: bool,
    /// Why it last failed, if it did.
    pub last_error: Option<String>,
    /// Mean latency of the calls it answered in the last second, in milliseconds.
    pub mean_ms: Option<f64>,
}

/// Something that happened: an action, failures, retries.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// 1, 2, 3, ... in order.
    pub seq: u64,
    /// Seconds since the start.
    pub t: f64,
    /// `action`, `failure`, `retry` or `error`.
    pub kind: &'static str,
    /// What happened, in words.
    pub text: String,
}

/// Everything the page's requests reach.
pub struct Playground {
    pub(crate) balancer: Balancer,
    pub(crate) fleet: tokio::sync::Mutex<Fleet>,
    /// The fleet as last seen, for the snapshot (the fleet's lock can be held by a
    /// restart for seconds).
    pub(crate) views: Mutex<Vec<ServerView>>,
    pub(crate) traffic: Traffic,
    events: Mutex<Events>,
    pub(crate) snapshot: watch::Sender<Arc<String>>,
    /// The last minute of snapshots, for a page opened (or reloaded) late.
    pub(crate) history: Mutex<VecDeque<Arc<String>>>,
    pub(crate) started: Instant,
    pub(crate) timeout: Duration,
    pub(crate) simulating: Arc<tokio::sync::Semaphore>,
}

struct Events {
    next: u64,
    kept: VecDeque<Event>,
}

impl Playground {
    /// The playground over `fleet` (whose servers' views are `views`), `balancer` and
    /// the load `traffic` sends, each call with deadline `timeout`.
    pub fn new(
        balancer: Balancer,
        fleet: Fleet,
        views: Vec<ServerView>,
        traffic: Traffic,
        timeout: Duration,
    ) -> Self {
        Self {
            traffic,
            balancer,
            fleet: tokio::sync::Mutex::new(fleet),
            views: Mutex::new(views),
            events: Mutex::new(Events {
                next: 0,
                kept: VecDeque::new(),
            }),
            snapshot: watch::Sender::new(Arc::new("{}".into())),
            history: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            timeout,
            simulating: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Records an event for the page (and prints it, for the terminal).
    pub(crate) fn event(&self, kind: &'static str, text: String) {
        let t = self.started.elapsed().as_secs_f64();
        say(&format!("t={t:.1}s {kind}: {text}"));
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.next += 1;
        let seq = events.next;
        if events.kept.len() == EVENTS_KEPT {
            events.kept.pop_front();
        }
        events.kept.push_back(Event { seq, t, kind, text });
    }

    /// The latest snapshot, as JSON.
    pub fn snapshot(&self) -> Arc<String> {
        self.snapshot.borrow().clone()
    }

    /// The last minute of snapshots, oldest first, as a JSON list.
    pub fn history(&self) -> String {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let items: Vec<&str> = history.iter().map(|s| s.as_str()).collect();
        format!("[{}]", items.join(","))
    }

    pub(crate) async fn refresh_views(&self) {
        let views = self.fleet.lock().await.views();
        *self.views.lock().unwrap_or_else(PoisonError::into_inner) = views;
    }
}

/// A line on the terminal; a terminal that went away (SIGHUP, a closed pipe) is not a
/// reason to fail.
pub fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Once a second: what the last second looked like, for the page.
pub async fn tick(playground: Arc<Playground>) {
    let mut last = Last {
        calls: HashMap::new(),
        event: 0,
        at: Instant::now(),
    };
    let mut last_retries = playground.balancer.retries();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the page and the API have a snapshot from the start.
    loop {
        ticks.tick().await;
        if let Ok(mut fleet) = playground.fleet.try_lock() {
            let views = fleet.views();
            *playground
                .views
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = views;
        }
        let second = playground.traffic.take_second();
        for failure in &second.failures {
            playground.event(
                "failure",
                format!(
                    "{} call{} failed: {}: {}",
                    failure.count,
                    if failure.count == 1 { "" } else { "s" },
                    failure.code,
                    failure.message
                ),
            );
        }
        let retries = playground.balancer.retries();
        if retries > last_retries {
            let n = retries - last_retries;
            playground.event(
                "retry",
                format!(
                    "{n} call{} retried on another server",
                    if n == 1 { "" } else { "s" }
                ),
            );
        }
        last_retries = retries;
        let statuses = playground.balancer.endpoints();
        let snapshot = snapshot(&playground, second, &statuses, &mut last, retries);
        match serde_json::to_string(&snapshot) {
            Ok(json) => {
                let json = Arc::new(json);
                let mut history = playground
                    .history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if history.len() == HISTORY {
                    history.pop_front();
                }
                history.push_back(json.clone());
                drop(history);
                playground.snapshot.send_replace(json);
            }
            Err(err) => tracing::warn!("cannot encode the snapshot: {err}"),
        }
    }
}

/// What the previous snapshot saw, for this one's rates and new events.
struct Last {
    calls: HashMap<String, u64>,
    event: u64,
    at: Instant,
}

fn snapshot(
    playground: &Playground,
    second: Second,
    statuses: &[EndpointStatus],
    last: &mut Last,
    retries: u64,
) -> Snapshot {
    // A tick can come late (a busy machine): rates are per second of real time.
    let now = Instant::now();
    let elapsed = now.duration_since(last.at).as_secs_f64().max(0.001);
    last.at = now;
    let views = playground
        .views
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let by_address: HashMap<String, &EndpointStatus> = statuses
        .iter()
        .map(|s| (s.endpoint.to_string(), s))
        .collect();
    let rates: Vec<u64> = views
        .iter()
        .map(|view| {
            let calls = by_address.get(&view.address).map_or(0, |s| s.calls);
            let before = last.calls.insert(view.address.clone(), calls).unwrap_or(0);
            let per_sec = calls.saturating_sub(before) as f64 / elapsed.max(1.0);
            per_sec.round() as u64
        })
        .collect();
    let total: u64 = rates.iter().sum();
    let servers = views
        .into_iter()
        .zip(rates)
        .map(|(view, rate)| {
            let status = by_address.get(&view.address);
            ServerRow {
                calls_per_sec: rate,
                share: if total == 0 {
                    0.0
                } else {
                    rate as f64 / total as f64
                },
                in_flight: status.map_or(0, |s| s.in_flight),
                state: status.map_or("REMOVED".into(), |s| s.connectivity.to_string()),
                health: status.map_or(String::new(), |s| s.health.to_string()),
                ejected: status.is_some_and(|s| s.ejected),
                last_error: status.and_then(|s| s.last_error.clone()),
                mean_ms: second.mean_ms_by_server.get(&view.address).copied(),
                process: view,
            }
        })
        .collect();
    let policy = PolicyView::of(playground.balancer.policy_name());
    let load = playground.traffic.load();
    let events = playground
        .events
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .kept
        .iter()
        .filter(|e| e.seq > last.event)
        .cloned()
        .collect::<Vec<_>>();
    if let Some(newest) = events.last() {
        last.event = newest.seq;
    }
    let totals = playground.traffic.totals();
    Snapshot {
        t: playground.started.elapsed().as_secs_f64(),
        policy,
        load,
        load_text: load.to_string(),
        timeout_ms: playground.timeout.as_secs_f64() * 1000.0,
        ok: totals.ok.load(std::sync::atomic::Ordering::Relaxed),
        failed: totals.failed.load(std::sync::atomic::Ordering::Relaxed),
        retries,
        in_flight: statuses.iter().map(|s| s.in_flight).sum(),
        second,
        servers,
        events,
    }
}
