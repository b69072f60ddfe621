//! The benchmark harness: our balancer measured against the alternatives, in one run.
//!
//! Every *subject* gets the same closed-loop load: `concurrency` callers, each sending
//! its next `SayHello` as soon as the last one returns, for a fixed time after a
//! warm-up. Each run is repeated and the medians reported, with each subject's calls/s
//! as a ratio to a plain tonic `Channel` to one server (the floor of overhead).
//!
//! | subject | what is measured |
//! |---|---|
//! | `direct` | one tonic `Channel` to one server: no balancing at all |
//! | `balancer/<policy>` | `lb_core::Balancer` over the 3 servers, per policy |
//! | `balance_list` | tonic's own `Channel::balance_list` over the 3 servers |
//! | `grpcio` | the Python grpcio client, `round_robin` over the 3 servers |
//! | `lb-proxy` / `nginx` | one tonic `Channel` to the proxy, which balances over the 3 |
//! | `python-server` | one tonic `Channel` to the article's Python server |
//!
//! Worked example of the numbers: if `direct` does 40,000 calls/s at concurrency 64 and
//! `balancer/round_robin` 39,000, the ratio is 0.975: the balancer costs 2.5 % of the
//! throughput (the target is at most 3 %).
//!
//! `scripts/bench.sh` starts the servers, proxies and the Python pieces and runs the
//! `lb-bench` binary, which writes the tables into `docs/BENCHMARKS.md` and a chart
//! into `docs/bench.svg`. The functions here are also run, for a fraction of a second
//! each, by the smoke test, so the harness cannot rot.

pub mod chart;
pub mod report;

use std::{net::SocketAddr, process::Command, time::Duration};

use greeter_proto::{HelloRequest, MyServiceClient};
use hdrhistogram::Histogram;
use lb_core::{Balancer, Endpoint, Policy};
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long and how often each subject is measured.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Callers in flight at once; each subject is measured at each.
    pub concurrencies: Vec<usize>,
    /// Measured time per run.
    pub duration: Duration,
    /// Load sent before measuring, to fill connection pools and caches.
    pub warmup: Duration,
    /// Runs per subject and concurrency; medians are reported.
    pub repeats: usize,
}

/// One run's (or the median of several runs') figures.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Measurement {
    /// Calls completed per second.
    pub calls_per_sec: f64,
    /// Latency percentiles, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Calls that failed (they should not).
    pub errors: u64,
    /// CPU time this process (the client) spent per completed call, in microseconds:
    /// what the client side costs, whatever the servers and the scheduler do.
    pub client_cpu_us: f64,
}

impl Measurement {
    /// The median of each figure over several runs.
    pub fn median(runs: &[Measurement]) -> Measurement {
        let median = |f: fn(&Measurement) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or_default()
        };
        Measurement {
            calls_per_sec: median(|m| m.calls_per_sec),
            p50_us: median(|m| m.p50_us),
            p99_us: median(|m| m.p99_us),
            p999_us: median(|m| m.p999_us),
            errors: runs.iter().map(|m| m.errors).sum(),
            client_cpu_us: median(|m| m.client_cpu_us),
        }
    }
}

/// A client under test: a tonic channel (direct, `balance_list`, or to a proxy) or our
/// balancer.
#[derive(Clone)]
pub enum Client {
    /// A tonic `Channel`.
    Channel(MyServiceClient<Channel>),
    /// Our balancer.
    Balancer(MyServiceClient<Balancer>),
}

impl Client {
    /// A channel to one address, connected before it is measured.
    pub async fn direct(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
        Ok(Self::Channel(MyServiceClient::new(channel)))
    }

    /// tonic's `Channel::balance_list` over `addrs`.
    pub fn balance_list(addrs: &[SocketAddr]) -> anyhow::Result<Self> {
        let endpoints = addrs
            .iter()
            .map(|addr| Channel::from_shared(format!("http://{addr}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Channel(MyServiceClient::new(Channel::balance_list(
            endpoints.into_iter(),
        ))))
    }

    /// Our balancer over `addrs` with `policy`, once every endpoint is READY.
    pub async fn balancer(policy: Policy, addrs: &[SocketAddr]) -> anyhow::Result<Self> {
        let endpoints = addrs
            .iter()
            .map(|a| a.to_string().parse::<Endpoint>())
            .collect::<Result<Vec<_>, _>>()?;
        let balancer = Balancer::builder(endpoints)
            .policy(policy)
            .seed(1)
            .build()?;
        balancer.wait_settled(Duration::from_secs(10)).await;
        Ok(Self::Balancer(MyServiceClient::new(balancer)))
    }

    async fn call(&mut self, request: HelloRequest) -> Result<(), tonic::Status> {
        match self {
            Self::Channel(client) => client.say_hello(request).await.map(drop),
            Self::Balancer(client) => client.say_hello(request).await.map(drop),
        }
    }
}

/// One closed-loop run: `concurrency` callers for `warmup + duration`, measuring the
/// calls *sent* after the warm-up.
pub async fn run_once(
    client: &Client,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Measurement {
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                // 1 µs to 60 s, 3 significant digits.
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let mut errors = 0;
                loop {
                    let sent = Instant::now();
                    if sent >= stop_at {
                        break;
                    }
                    let result = client
                        .call(HelloRequest {
                            name: "bench".into(),
                        })
                        .await;
                    if sent < measure_from {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            let micros = sent.elapsed().as_micros();
                            histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                        }
                        Err(_) => errors += 1,
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    // The process's CPU time over the measured window only.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        let before = cpu_time();
        tokio::time::sleep_until(stop_at).await;
        cpu_time()
            .zip(before)
            .map(|(after, before)| after.saturating_sub(before))
    });
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = 0;
    for worker in workers {
        if let Ok((histogram, worker_errors)) = worker.await {
            let _ = total.add(&histogram);
            errors += worker_errors;
        }
    }
    let cpu = cpu.await.ok().flatten().unwrap_or_default();
    Measurement {
        calls_per_sec: total.len() as f64 / duration.as_secs_f64(),
        p50_us: total.value_at_quantile(0.50) as f64,
        p99_us: total.value_at_quantile(0.99) as f64,
        p999_us: total.value_at_quantile(0.999) as f64,
        errors,
        client_cpu_us: cpu.as_secs_f64() * 1e6 / total.len().max(1) as f64,
    }
}

/// CPU time (user and system) this process has used so far (Linux: from
/// `/proc/self/stat`, in clock ticks of 10 ms; `None` elsewhere).
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// `settings.repeats` runs, and their medians.
pub async fn measure(client: &Client, concurrency: usize, settings: &Settings) -> Measurement {
    let mut runs = Vec::with_capacity(settings.repeats);
    for _ in 0..settings.repeats.max(1) {
        runs.push(run_once(client, concurrency, settings.warmup, settings.duration).await);
    }
    Measurement::median(&runs)
}

/// The Python grpcio client (`scripts/python/bench_client.py`), run as a process:
/// `command` is the interpreter and script, e.g. `["python3", "scripts/python/bench_client.py"]`.
pub fn measure_python_client(
    command: &[String],
    addrs: &[SocketAddr],
    concurrency: usize,
    settings: &Settings,
) -> anyhow::Result<Measurement> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("empty Python client command"))?;
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let target = format!("ipv4:{}", list.join(","));
    let mut runs = Vec::new();
    for _ in 0..settings.repeats.max(1) {
        let output = Command::new(program)
            .args(args)
            .arg(&target)
            .arg(concurrency.to_string())
            .arg(settings.duration.as_secs_f64().to_string())
            .arg(settings.warmup.as_secs_f64().to_string())
            .arg("round_robin")
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
        if !output.status.success() {
            anyhow::bail!(
                "the Python client failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        #[derive(serde::Deserialize)]
        struct Line {
            calls: u64,
            seconds: f64,
            p50_us: f64,
            p99_us: f64,
            p999_us: f64,
        }
        let line: Line = serde_json::from_slice(&output.stdout)?;
        runs.push(Measurement {
            calls_per_sec: line.calls as f64 / line.seconds,
            p50_us: line.p50_us,
            p99_us: line.p99_us,
            p999_us: line.p999_us,
            errors: 0,
            client_cpu_us: 0.0,
        });
    }
    Ok(Measurement::median(&runs))
}

/// The cost of one pick at `n` READY endpoints, in nanoseconds, per policy: `picks`
/// picks timed in one go (a quick figure for the report; `cargo bench -p lb-core`
/// measures it properly).
pub fn pick_cost(n: usize, picks: u32) -> Vec<(Policy, f64)> {
    use lb_core::{BuildPicker, Connectivity, EndpointState, PickContext};
    use rand::{SeedableRng, rngs::SmallRng};
    let endpoints: Vec<EndpointState> = (0..n)
        .map(|i| {
            let endpoint: Endpoint =
                format!("10.{}.{}.{}:80", i / 65_536, (i / 256) % 256, i % 256)
                    .parse()
                    .expect("valid address");
            let state = EndpointState::new(endpoint);
            state.set_connectivity(Connectivity::Ready);
            state
        })
        .collect();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-lb-key", http::HeaderValue::from_static("user-12345"));
    Policy::all()
        .into_iter()
        .map(|policy| {
            let mut rng = SmallRng::seed_from_u64(1);
            let picker = policy.build(&endpoints, &mut rng);
            let started = std::time::Instant::now();
            for _ in 0..picks {
                let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
                let _ =
                    std::hint::black_box(picker.pick(std::hint::black_box(&endpoints), &mut ctx));
            }
            let nanos = started.elapsed().as_nanos() as f64 / f64::from(picks.max(1));
            (policy, nanos)
        })
        .collect()
}

/// This process's resident memory, in bytes (Linux; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One line about the machine: CPU model and count, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}, {}", std::env::consts::OS)
}
