//! Closed-loop load: `concurrency` workers share a budget of `requests` calls.
//!
//! Each worker sends a call, waits for its answer, and sends the next, so at most
//! `concurrency` calls are in flight at once. That is the load under which the
//! policies differ: with one call at a time, "least connections" has nothing to see.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient, SERVED_BY};
use hdrhistogram::Histogram;
use lb_core::auth::{BearerToken, BearerTokenLayer};
use lb_core::{
    Balancer, Connectivity, Endpoint, EndpointStatus, Liveness, OutlierDetection, PickedEndpoint,
    Policy, RetryPolicy, service_config::ServiceConfig,
};
use tokio::time::Instant;
use tonic::{Code, Request};
use tower::Layer;

use crate::live::Progress;
use lb_sim::report::{Backend, ErrorCount, Latency, Report, latency_histogram};

/// What load to send, and how.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The servers to balance over.
    pub servers: Vec<Endpoint>,
    /// The picking policy.
    pub policy: Policy,
    /// How many calls in all.
    pub requests: u64,
    /// How many calls in flight at once.
    pub concurrency: usize,
    /// The `name` in each `HelloRequest`.
    pub name: String,
    /// Seeds the balancer's random choices; `None` draws a seed from the OS.
    pub seed: Option<u64>,
    /// The deadline of each call.
    pub timeout: Duration,
    /// How long to wait for the first connections before sending.
    pub connect_wait: Duration,
    /// Size of the key space: call `n` carries the header `x-lb-key: key-{n % keys}`
    /// (or the policy's own hash header), for the hashing policies. 0 = no key.
    pub keys: u64,
    /// Log why each of the first this many picks was made.
    pub explain: u64,
    /// Send for this long instead of a number of calls.
    pub duration: Option<Duration>,
    /// Retries of calls that failed before reaching a server.
    pub retry: RetryPolicy,
    /// Watch each server's `grpc.health.v1.Health`.
    pub health_check: bool,
    /// Ping connections whose calls get no answer (`None`: never).
    pub liveness: Option<Liveness>,
    /// Eject servers whose calls keep failing.
    pub outlier: Option<OutlierDetection>,
    /// Print one line (or, in a terminal, a fresh table) per second while running.
    pub live: bool,
    /// Changes to the server list while running (from a resolver), if any.
    pub updates: Option<lb_core::resolver::Resolution>,
    /// Sent as `authorization: Bearer <token>` with every call, if set.
    pub token: Option<String>,
    /// Connect over TLS (mutual TLS if it has a client certificate), if set.
    pub tls: Option<lb_core::tls::ClientTls>,
    /// Report the balancer's endpoints in these metrics while running, if set.
    pub metrics: Option<lb_core::metrics::BalancerMetrics>,
    /// Per-method timeouts, retries and hedging (its policy, if any, is `policy`'s
    /// business: it is not applied from here).
    pub service_config: Option<ServiceConfig>,
}

impl LoadSpec {
    /// `requests` calls to `servers` with `policy`, one at a time, with the defaults of
    /// the command line for everything else.
    pub fn new(servers: Vec<Endpoint>, policy: Policy, requests: u64) -> Self {
        Self {
            servers,
            policy,
            requests,
            concurrency: 1,
            name: "world".into(),
            seed: None,
            timeout: Duration::from_secs(10),
            connect_wait: Duration::from_secs(5),
            keys: 0,
            explain: 0,
            duration: None,
            retry: RetryPolicy::default(),
            health_check: true,
            liveness: Some(Liveness::default()),
            outlier: None,
            live: false,
            updates: None,
            token: None,
            tls: None,
            metrics: None,
            service_config: None,
        }
    }

    /// The header that carries the key: the policy's, or `x-lb-key`.
    pub fn key_header(&self) -> String {
        self.policy
            .hash_header()
            .unwrap_or(lb_core::policy::config::DEFAULT_HASH_HEADER)
            .to_string()
    }
}

/// What one worker saw; merged into the [`Report`] at the end.
struct Tally {
    latency_us: Histogram<u64>,
    /// Per `x-served-by`: (successes, errors).
    served: HashMap<String, (u64, u64)>,
    /// Which server answered for each endpoint the balancer picked.
    picked: HashMap<Endpoint, String>,
    /// Per gRPC code: count and the first message.
    errors: HashMap<Code, (u64, String)>,
    replies_ok: bool,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: latency_histogram(),
            served: HashMap::new(),
            picked: HashMap::new(),
            errors: HashMap::new(),
            replies_ok: true,
        }
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (server, (ok, err)) in other.served {
            let entry = self.served.entry(server).or_default();
            entry.0 += ok;
            entry.1 += err;
        }
        self.picked.extend(other.picked);
        for (code, (count, message)) in other.errors {
            self.errors.entry(code).or_insert((0, message)).0 += count;
        }
        self.replies_ok &= other.replies_ok;
    }
}

/// Builds a balancer over `spec.servers`, sends the load, and reports.
///
/// Returns an error only when the balancer cannot be built; failed calls are counted
/// in the report, not returned.
pub async fn run(spec: &LoadSpec) -> Result<Report, lb_core::Error> {
    // Checked before anything connects: a token that cannot be sent is the caller's
    // mistake, not the servers'.
    let token = BearerTokenLayer::optional(spec.token.as_deref())?;
    let mut builder = Balancer::builder(spec.servers.clone())
        .policy(spec.policy.clone())
        .explain(spec.explain)
        .retry(spec.retry.clone())
        .health_check(spec.health_check.then_some(""))
        .liveness(spec.liveness)
        .outlier_detection(spec.outlier.clone());
    if let Some(config) = &spec.service_config {
        builder = builder.service_config(config.clone().without_policy());
        if !spec.health_check {
            builder = builder.health_check(None); // Even if the config names a service.
        }
    }
    if let Some(seed) = spec.seed {
        builder = builder.seed(seed);
    }
    if let Some(tls) = &spec.tls {
        builder = builder.tls(tls.clone());
    }
    let balancer = builder.build()?;
    if let Some(metrics) = &spec.metrics {
        metrics.watch(&balancer);
    }
    if let Some(updates) = &spec.updates {
        balancer.follow(updates.clone());
    }
    // Let every endpoint finish connecting, so that the first calls are not all sent to
    // whichever server happened to answer first.
    balancer.wait_settled(spec.connect_wait).await;

    let client = MyServiceClient::new(token.layer(balancer.clone()));
    // With a duration, the number of calls is open: the clock ends the run.
    let requests = if spec.duration.is_some() {
        u64::MAX / 2
    } else {
        spec.requests
    };
    let budget = Arc::new(AtomicU64::new(requests));
    let expected = format!("Hello, {}!", spec.name);
    let started = Instant::now();
    let until = spec.duration.map(|d| started + d);
    let progress = Arc::new(Progress::default());
    let (run_over, over) = tokio::sync::oneshot::channel::<()>();
    let live = spec.live.then(|| {
        let over = async move {
            let _ = over.await;
        };
        tokio::spawn(crate::live::show(balancer.clone(), progress.clone(), over))
    });
    let workers: Vec<_> = (0..spec.concurrency.max(1))
        .map(|_| {
            let client = client.clone();
            let budget = budget.clone();
            let call = CallSpec {
                name: spec.name.clone(),
                expected: expected.clone(),
                timeout: spec.timeout,
                keys: spec.keys,
                key_header: spec.key_header(),
                requests,
                until,
                progress: progress.clone(),
            };
            tokio::spawn(worker(client, balancer.clone(), budget, call))
        })
        .collect();

    let mut total = Tally::new();
    for worker in workers {
        match worker.await {
            Ok(tally) => total.merge(tally),
            Err(err) => {
                let entry = total
                    .errors
                    .entry(Code::Internal)
                    .or_insert((0, String::new()));
                entry.0 += 1;
                entry.1 = format!("a worker task failed: {err}");
            }
        }
    }
    let elapsed = started.elapsed();
    drop(run_over); // The live view prints the last second, if it has not, and ends.
    if let Some(live) = live {
        let _ = live.await;
    }
    let states = balancer.endpoints();
    let attempts = states.iter().map(|s| s.calls).sum();
    Ok(build_report(spec, total, elapsed, &states)
        .with_retries(balancer.retries())
        .with_attempts(attempts, balancer.hedges()))
}

/// What every call of a worker looks like.
struct CallSpec {
    name: String,
    expected: String,
    timeout: Duration,
    keys: u64,
    key_header: String,
    requests: u64,
    until: Option<Instant>,
    progress: Arc<Progress>,
}

/// Runs the same workload once per policy, one after the other, against the same
/// servers: what `greeter-client compare` prints side by side.
///
/// With a service config in `spec`, each policy runs twice: without it, then with it
/// (labelled `policy + hedging`, `+ retries`, `+ connection scaling` or
/// `+ service config`), so that the table
/// shows what the config's hedging or retries change, and what they cost.
pub async fn compare(spec: &LoadSpec, policies: &[Policy]) -> Result<Vec<Report>, lb_core::Error> {
    let mut reports = Vec::with_capacity(policies.len());
    for policy in policies {
        let spec = LoadSpec {
            policy: policy.clone(),
            ..spec.clone()
        };
        if let Some(config) = &spec.service_config {
            let without = LoadSpec {
                service_config: None,
                ..spec.clone()
            };
            reports.push(run(&without).await?);
            let mut report = run(&spec).await?;
            report.policy = format!("{} + {}", report.policy, describe(config));
            reports.push(report);
        } else {
            reports.push(run(&spec).await?);
        }
    }
    Ok(reports)
}

/// What a service config does, in a word, for a table's row.
fn describe(config: &ServiceConfig) -> &'static str {
    if config.methods().iter().any(|m| m.hedging_policy.is_some()) {
        "hedging"
    } else if config.methods().iter().any(|m| m.retry_policy.is_some()) {
        "retries"
    } else if config
        .max_connections_per_subchannel()
        .is_some_and(|max| max > 1)
    {
        "connection scaling"
    } else {
        "service config"
    }
}

/// Takes calls from the shared budget until it is empty.
async fn worker(
    mut client: MyServiceClient<BearerToken<Balancer>>,
    balancer: Balancer,
    budget: Arc<AtomicU64>,
    call: CallSpec,
) -> Tally {
    let mut tally = Tally::new();
    let mut changes = balancer.changes();
    // `fetch_update` never takes the budget below zero, however many workers race.
    while let Ok(left) =
        budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
    {
        if call.until.is_some_and(|until| Instant::now() >= until) {
            break;
        }
        let mut request = Request::new(HelloRequest {
            name: call.name.clone(),
        });
        request.set_timeout(call.timeout);
        if call.keys > 0 {
            let number = call.requests - left; // 0, 1, 2, ... across all workers
            let key = format!("key-{}", number % call.keys);
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(call.key_header.as_bytes()),
                key.parse(),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        let sent = Instant::now();
        match client.say_hello(request).await {
            Ok(response) => {
                let micros = sent.elapsed().as_micros().max(1);
                let _ = tally
                    .latency_us
                    .record(u64::try_from(micros).unwrap_or(u64::MAX));
                let picked = response.extensions().get::<PickedEndpoint>();
                let server = served_by(response.metadata())
                    .or_else(|| picked.map(|p| p.0.to_string()))
                    .unwrap_or_else(|| "(unknown)".to_string());
                if let Some(PickedEndpoint(endpoint)) = picked {
                    tally.picked.insert(endpoint.clone(), server.clone());
                }
                tally.served.entry(server).or_default().0 += 1;
                call.progress.ok.fetch_add(1, Ordering::Relaxed);
                if response.into_inner().message != call.expected {
                    tally.replies_ok = false;
                }
            }
            Err(status) => {
                if let Some(server) = served_by(status.metadata()) {
                    tally.served.entry(server).or_default().1 += 1;
                }
                call.progress.failed.fetch_add(1, Ordering::Relaxed);
                tally
                    .errors
                    .entry(status.code())
                    .or_insert((0, status.message().to_string()))
                    .0 += 1;
                if balancer.usable_endpoints() == 0 {
                    // Every server is down: the next call would fail at once too.
                    // Rather than spin through thousands of them a second, wait for
                    // an endpoint's state to change (a reconnect), at most a moment.
                    changes.borrow_and_update();
                    let _ = tokio::time::timeout(OUTAGE_PAUSE, changes.changed()).await;
                }
            }
        }
    }
    tally
}

/// The longest a worker waits after a call failed for want of any usable server.
const OUTAGE_PAUSE: Duration = Duration::from_millis(100);

/// The server's name for itself. A server that does not stamp `x-served-by` (the
/// article's Python server, say) is counted under the endpoint the balancer picked.
fn served_by(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// Where an endpoint runs, for the tables: `zone-a`, `zone-c, priority 1`, or nothing.
fn place(endpoint: &Endpoint) -> Option<String> {
    match (endpoint.locality(), endpoint.priority()) {
        (None, 0) => None,
        (Some(locality), 0) => Some(locality.to_string()),
        (None, priority) => Some(format!("priority {priority}")),
        (Some(locality), priority) => Some(format!("{locality}, priority {priority}")),
    }
}

fn build_report(
    spec: &LoadSpec,
    mut tally: Tally,
    elapsed: Duration,
    states: &[EndpointStatus],
) -> Report {
    // One row per server the balancer has, in order; one that answered nothing still
    // gets its row (with 0), which is the point of pick_first. Servers are matched by
    // what they call themselves (x-served-by); servers removed during the run come
    // after, from what they answered.
    let mut backends = Vec::new();
    for status in states {
        let endpoint = &status.endpoint;
        let name = tally
            .picked
            .get(endpoint)
            .cloned()
            .unwrap_or_else(|| endpoint.to_string());
        let (ok, err) = tally.served.remove(&name).unwrap_or_default();
        if !backends.iter().any(|b: &Backend| b.address == name) {
            let mut backend = Backend::new(name, ok, err);
            backend.place = place(endpoint);
            backend.ejections = status.ejections;
            backend.retries = status.retries;
            if status.connectivity != Connectivity::Ready || status.ejected {
                let ejected = if status.ejected { ", ejected" } else { "" };
                backend.state = Some(match &status.last_error {
                    Some(reason) => format!("{}{ejected} ({reason})", status.connectivity),
                    None => format!("{}{ejected}", status.connectivity),
                });
            }
            backends.push(backend);
        }
    }
    let mut others: Vec<_> = tally.served.into_iter().collect();
    others.sort();
    for (name, (ok, err)) in others {
        backends.push(Backend::new(name, ok, err));
    }

    let errors: Vec<ErrorCount> = tally
        .errors
        .into_iter()
        .map(|(code, (count, example))| ErrorCount {
            code: format!("{code:?}"),
            count,
            example,
        })
        .collect();
    // A timed run's number of calls is what the time allowed.
    let requests = match spec.duration {
        Some(_) => {
            backends.iter().map(|b| b.calls).sum::<u64>()
                + errors.iter().map(|e: &ErrorCount| e.count).sum::<u64>()
        }
        None => spec.requests,
    };
    Report::new(
        &spec.policy.label(),
        requests,
        spec.concurrency,
        elapsed.as_secs_f64(),
        backends,
        Latency::from_histogram_us(&tally.latency_us),
        errors,
    )
    .with_replies_ok(tally.replies_ok)
}
