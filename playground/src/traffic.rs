//! The playground's steady load, and what it saw in the last second.
//!
//! Two shapes of load, switchable while it runs:
//!
//! - **a rate** (open loop): calls start every 10 ms, `rate / 100` at a time, whether
//!   or not earlier ones have returned. A slow server then piles calls up, which is
//!   what `least_request` and `peak_ewma` notice.
//! - **a concurrency** (closed loop): N callers, each sending its next call when its
//!   last one returns, as `greeter-client run` does. Changing N lets every caller
//!   finish its call first: no call is cut off.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient};
use hdrhistogram::Histogram;
use lb_core::{Balancer, PickedEndpoint};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::Instant};
use tonic::Request;

use greeter_proto::SERVED_BY;
use lb_sim::report::latency_histogram;

/// The most calls per second the playground sends.
pub const MAX_RATE: u32 = 20_000;

/// The most callers in closed loop.
pub const MAX_CONCURRENCY: u32 = 1_000;

/// The most calls in flight in open loop: past it, calls due are skipped (and
/// counted), so that a fleet that stopped answering does not grow a queue forever.
pub const MAX_IN_FLIGHT: usize = 5_000;

/// How often open-loop calls start.
const TICK: Duration = Duration::from_millis(10);

/// How many distinct failures each second keeps, with their messages.
const FAILURES_KEPT: usize = 5;

/// The shape and size of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Load {
    /// Calls per second, started on a clock.
    Rate(u32),
    /// Callers, each with one call in flight.
    Concurrency(u32),
}

impl Load {
    /// Checks the size against the limits; says what is allowed otherwise.
    pub fn check(self) -> Result<Self, String> {
        match self {
            Self::Rate(rate) if !(1..=MAX_RATE).contains(&rate) => Err(format!(
                "rate {rate} calls/s is outside 1 to {MAX_RATE}: choose another"
            )),
            Self::Concurrency(n) if !(1..=MAX_CONCURRENCY).contains(&n) => Err(format!(
                "concurrency {n} is outside 1 to {MAX_CONCURRENCY}: choose another"
            )),
            load => Ok(load),
        }
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rate(rate) => write!(f, "{rate} calls/s"),
            Self::Concurrency(n) => write!(f, "{n} callers in closed loop"),
        }
    }
}

/// One failed call, as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// The gRPC code, e.g. `Unavailable`.
    pub code: String,
    /// The status message.
    pub message: String,
    /// How many calls failed so in that second.
    pub count: u64,
}

/// What the last second looked like.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    /// Calls answered OK.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Open-loop calls not sent because too many were in flight.
    pub skipped: u64,
    /// Median latency of the OK calls, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Mean latency of the OK calls by the server that answered (`x-served-by`).
    pub mean_ms_by_server: HashMap<String, f64>,
    /// The failures, by code and message.
    pub failures: Vec<Failure>,
}

/// The running load and its counters.
pub struct Traffic {
    load: watch::Sender<Load>,
    window: Arc<Mutex<Window>>,
    in_flight: Arc<AtomicUsize>,
    totals: Arc<Totals>,
}

/// Counts since the start.
#[derive(Debug, Default)]
pub struct Totals {
    /// Calls answered OK.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
}

/// What is being counted for the current second.
struct Window {
    latency_us: Histogram<u64>,
    by_server: HashMap<String, (u64, u64)>,
    failures: Vec<Failure>,
    ok: u64,
    failed: u64,
    skipped: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            latency_us: latency_histogram(),
            by_server: HashMap::new(),
            failures: Vec::new(),
            ok: 0,
            failed: 0,
            skipped: 0,
        }
    }
}

impl Traffic {
    /// Starts sending `load` through `balancer`, each call with `timeout`.
    pub fn start(balancer: Balancer, load: Load, timeout: Duration) -> Self {
        let (tx, rx) = watch::channel(load);
        let traffic = Self {
            load: tx,
            window: Arc::new(Mutex::new(Window::new())),
            in_flight: Arc::new(AtomicUsize::new(0)),
            totals: Arc::new(Totals::default()),
        };
        let caller = Caller {
            client: MyServiceClient::new(balancer.clone()),
            balancer,
            timeout,
            window: traffic.window.clone(),
            in_flight: traffic.in_flight.clone(),
            totals: traffic.totals.clone(),
        };
        tokio::spawn(drive(caller, rx));
        traffic
    }

    /// The load now.
    pub fn load(&self) -> Load {
        *self.load.borrow()
    }

    /// Changes the load from now on.
    pub fn set_load(&self, load: Load) {
        self.load.send_replace(load);
    }

    /// Counts since the start.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// What was counted since the last call, and a fresh count from now.
    pub fn take_second(&self) -> Second {
        let window = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *window, Window::new())
        };
        let ms = |q: f64| window.latency_us.value_at_quantile(q) as f64 / 1000.0;
        Second {
            ok: window.ok,
            failed: window.failed,
            skipped: window.skipped,
            p50_ms: if window.ok > 0 { ms(0.5) } else { 0.0 },
            p99_ms: if window.ok > 0 { ms(0.99) } else { 0.0 },
            mean_ms_by_server: window
                .by_server
                .into_iter()
                .map(|(server, (count, sum_us))| {
                    (server, sum_us as f64 / count.max(1) as f64 / 1000.0)
                })
                .collect(),
            failures: window.failures,
        }
    }
}

/// What every call needs.
#[derive(Clone)]
struct Caller {
    client: MyServiceClient<Balancer>,
    balancer: Balancer,
    timeout: Duration,
    window: Arc<Mutex<Window>>,
    in_flight: Arc<AtomicUsize>,
    totals: Arc<Totals>,
}

impl Caller {
    /// One call, counted; whether it succeeded.
    async fn call(mut self) -> bool {
        let mut request = Request::new(HelloRequest {
            name: "playground".into(),
        });
        request.set_timeout(self.timeout);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let result = self.client.say_hello(request).await;
        let micros = u64::try_from(sent.elapsed().as_micros().max(1)).unwrap_or(u64::MAX);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(response) => {
                let server = response
                    .metadata()
                    .get(SERVED_BY)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
                    .or_else(|| {
                        response
                            .extensions()
                            .get::<PickedEndpoint>()
                            .map(|p| p.0.to_string())
                    })
                    .unwrap_or_default();
                let _ = window.latency_us.record(micros);
                let entry = window.by_server.entry(server).or_default();
                entry.0 += 1;
                entry.1 += micros;
                window.ok += 1;
                self.totals.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(status) => {
                window.failed += 1;
                self.totals.failed.fetch_add(1, Ordering::Relaxed);
                let code = format!("{:?}", status.code());
                let message: String = status.message().chars().take(300).collect();
                let failures = &mut window.failures;
                if let Some(failure) = failures
                    .iter_mut()
                    .find(|f| f.code == code && f.message == message)
                {
                    failure.count += 1;
                } else if failures.len() < FAILURES_KEPT {
                    failures.push(Failure {
                        code,
                        message,
                        count: 1,
                    });
                } else if let Some(last) = failures.last_mut() {
                    // Past the few kept, the rest are counted with the last one.
                    last.count += 1;
                }
                false
            }
        }
    }

    /// After a failure with no server usable, waits for a change (a reconnect), at
    /// most a moment, rather than failing thousands of calls a second.
    async fn pause_if_all_down(&self) {
        if self.balancer.usable_endpoints() == 0 {
            let mut changes = self.balancer.changes();
            changes.borrow_and_update();
            let _ = tokio::time::timeout(OUTAGE_PAUSE, changes.changed()).await;
        }
    }
}

/// The longest a caller waits after a failure for want of any usable server.
const OUTAGE_PAUSE: Duration = Duration::from_millis(100);

/// Sends the load, and follows its changes, until the playground ends.
async fn drive(caller: Caller, mut load: watch::Receiver<Load>) {
    // Closed-loop callers of an older load finish their call and stop.
    let generation = Arc::new(AtomicU64::new(0));
    loop {
        let current = *load.borrow_and_update();
        let mine = generation.fetch_add(1, Ordering::SeqCst) + 1;
        match current {
            Load::Concurrency(n) => {
                for _ in 0..n {
                    let caller = caller.clone();
                    let generation = generation.clone();
                    tokio::spawn(async move {
                        while generation.load(Ordering::SeqCst) == mine {
                            if !caller.clone().call().await {
                                caller.pause_if_all_down().await;
                            }
                        }
                    });
                }
                if load.changed().await.is_err() {
                    return;
                }
            }
            Load::Rate(rate) => {
                let mut ticks = tokio::time::interval(TICK);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let per_tick = f64::from(rate) * TICK.as_secs_f64();
                let mut due = 0.0;
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        changed = load.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break;
                        }
                    }
                    due += per_tick;
                    while due >= 1.0 {
                        due -= 1.0;
                        if caller.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                            let mut window =
                                caller.window.lock().unwrap_or_else(PoisonError::into_inner);
                            window.skipped += 1;
                            continue;
                        }
                        tokio::spawn(caller.clone().call());
                    }
                    if caller.balancer.usable_endpoints() == 0 {
                        // Nothing to send to: calls due would fail at once.
                        caller.pause_if_all_down().await;
                        due = 0.0;
                    }
                }
            }
        }
    }
}
