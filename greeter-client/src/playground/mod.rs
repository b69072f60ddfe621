//! `greeter-client playground`: a fleet, a balancer and steady load, watched and
//! driven from a web page.
//!
//! ```text
//! greeter-client playground                 # 3 servers, http://127.0.0.1:8080/
//! greeter-client playground --fleet 5 --policy least_request --rate 500
//! ```
//!
//! What runs:
//!
//! - [`fleet`]: real `greeter-server` processes on 127.0.0.1, killed with SIGKILL,
//!   restarted on their port, slowed down and drained through their standard input;
//! - one [`Balancer`] over them, whose policy the page switches while calls go on;
//! - [`traffic`]: calls at a steady rate (or from N callers in closed loop);
//! - once a second, a [`Snapshot`] of it all: per server its calls per second, share,
//!   calls in flight, connectivity, health and ejection; the latency percentiles,
//!   failures and retries of that second; sent to the page as a server-sent event;
//! - [`api`]: the page (HTML, CSS and script, built into the binary), the events, and
//!   a small JSON API for the page's buttons, which answers its own page only.
//!
//! Ctrl-C (or SIGTERM, or closing the terminal) stops every server it started; and
//! each server exits by itself when the playground's end of its pipe closes.

pub mod api;
pub mod fleet;
pub mod traffic;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use lb_core::{Balancer, EndpointStatus, Policy};
use serde::Serialize;
use tokio::{sync::watch, time::Instant};

use fleet::{Fleet, ServerView};
use traffic::{Load, Second, Traffic};

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

/// How long the playground's balancer waits between attempts to reconnect.
const RECONNECT: lb_core::Backoff = lb_core::Backoff {
    initial: Duration::from_millis(200),
    multiplier: 1.6,
    jitter: 0.2,
    max: Duration::from_secs(1),
};

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
            doc: api::policy_doc(name),
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
    balancer: Balancer,
    fleet: tokio::sync::Mutex<Fleet>,
    /// The fleet as last seen, for the snapshot (the fleet's lock can be held by a
    /// restart for seconds).
    views: Mutex<Vec<ServerView>>,
    traffic: Traffic,
    events: Mutex<Events>,
    snapshot: watch::Sender<Arc<String>>,
    /// The last minute of snapshots, for a page opened (or reloaded) late.
    history: Mutex<VecDeque<Arc<String>>>,
    started: Instant,
    timeout: Duration,
    simulating: Arc<tokio::sync::Semaphore>,
}

struct Events {
    next: u64,
    kept: VecDeque<Event>,
}

impl Playground {
    /// Records an event for the page (and prints it, for the terminal).
    fn event(&self, kind: &'static str, text: String) {
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

    async fn refresh_views(&self) {
        let views = self.fleet.lock().await.views();
        *self.views.lock().unwrap_or_else(PoisonError::into_inner) = views;
    }
}

/// Starts the fleet, the balancer, the load and the page, and runs until Ctrl-C.
pub async fn run(options: Options) -> anyhow::Result<()> {
    // The page's port first: if it is taken, nothing else has started.
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|err| api::bind_error(options.listen, err))?;
    let listen = listener.local_addr().context("the page's address")?;
    let mut signals = Signals::listen()?;

    let mut fleet = Fleet::new(options.server_binary.clone());
    // Ctrl-C while the servers start stops the ones already running.
    let started = tokio::select! {
        started = start(&mut fleet, &options) => Some(started),
        why = signals.next() => {
            say(&format!("{why}: stopping the servers"));
            None
        }
    };
    let balancer = match started {
        Some(Ok(balancer)) => balancer,
        Some(Err(err)) => {
            fleet.stop_all().await;
            return Err(err);
        }
        None => {
            fleet.stop_all().await;
            return Ok(());
        }
    };
    let views = fleet.views();
    let playground = Arc::new(Playground {
        traffic: Traffic::start(balancer.clone(), options.load, options.timeout),
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
        timeout: options.timeout,
        simulating: Arc::new(tokio::sync::Semaphore::new(1)),
    });
    playground.event(
        "action",
        format!(
            "started {} servers; {} with {}",
            options.servers,
            options.load,
            options.policy.name()
        ),
    );
    let mut first = playground.snapshot.subscribe();
    let ticker = tokio::spawn(tick(playground.clone()));
    // The page is offered once there is something to show on it.
    let _ = first.changed().await;
    let page = tokio::spawn(api::serve(listener, listen, playground.clone()));
    say(&format!(
        "playground: open http://{listen}/ (Ctrl-C stops it and the servers it started)"
    ));

    let why = signals.next().await;
    say(&format!("{why}: stopping the servers"));
    ticker.abort();
    page.abort();
    // An action may hold the fleet for a few seconds (a server that is slow to
    // start); a second signal does not wait for it. The servers still stop then: each
    // exits when its standard input, the playground's end of the pipe, closes.
    tokio::select! {
        () = async { playground.fleet.lock().await.stop_all().await } => say("stopped"),
        why = signals.next() => say(&format!("{why} again: exiting at once")),
    }
    Ok(())
}

/// The servers, then a balancer over them once they have connected.
async fn start(fleet: &mut Fleet, options: &Options) -> anyhow::Result<Balancer> {
    for index in 0..options.servers {
        let weight = options.weights.get(index).copied().unwrap_or(1);
        fleet.add(weight).await?;
    }
    let balancer = Balancer::builder(fleet.endpoints())
        .policy(options.policy.clone())
        .seed(options.seed)
        .health_check(Some(""))
        // Reconnect within a second, so that a restarted server is seen at once
        // (the default waits up to 120 s between attempts, which spares a real fleet
        // but would leave a learner waiting).
        .backoff(RECONNECT)
        // Eject a server whose calls keep failing, as `run --outlier-detection` does.
        .outlier_detection(Some(crate::load::demo_outlier_detection()))
        .build()?;
    balancer.wait_settled(Duration::from_secs(5)).await;
    Ok(balancer)
}

/// A line on the terminal; a terminal that went away (SIGHUP, a closed pipe) is not a
/// reason to fail.
fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Once a second: what the last second looked like, for the page.
async fn tick(playground: Arc<Playground>) {
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

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed): all mean "stop".
struct Signals {
    #[cfg(unix)]
    signals: Vec<(tokio::signal::unix::Signal, &'static str)>,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut signals = Vec::new();
            for (kind, name) in [
                (SignalKind::interrupt(), "SIGINT"),
                (SignalKind::terminate(), "SIGTERM"),
                (SignalKind::hangup(), "SIGHUP"),
            ] {
                signals.push((signal(kind).context("cannot listen for signals")?, name));
            }
            Ok(Self { signals })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let waits = self.signals.iter_mut().map(|(signal, name)| {
                Box::pin(async move {
                    signal.recv().await;
                    *name
                })
            });
            futures::future::select_all(waits).await.0
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
