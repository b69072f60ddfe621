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
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long and how often each subject is measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Callers in flight at once; each subject is measured at each.
    pub concurrencies: Vec<usize>,
    /// Measured time per run.
    pub duration: Duration,
    /// Load sent before measuring, to fill connection pools and caches.
    pub warmup: Duration,
    /// Runs per subject and concurrency; medians are reported.
    pub repeats: usize,
    /// Full runs (every subject, every concurrency, in turn); each target's verdict is
    /// given for each, and the spread of each ratio over them.
    #[serde(default = "one")]
    pub runs: usize,
}

fn one() -> usize {
    1
}

/// One run's (or the median of several runs') figures.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
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

/// A client of another stack, run as a process: the Python grpcio client
/// (`scripts/python/bench_client.py`) or Node's grpc-js (`scripts/node/bench_client.js`).
/// `command` is the interpreter and script, e.g. `["python3", "scripts/python/bench_client.py"]`;
/// it gets the target, concurrency, duration, warm-up and `round_robin`, and prints one
/// JSON line.
pub fn measure_external_client(
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
                "the client `{}` failed: {}",
                command.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        #[derive(serde::Deserialize)]
        struct Line {
            calls: u64,
            seconds: f64,
            #[serde(default)]
            errors: u64,
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
            errors: line.errors,
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
            // The balancer hands every pick its time (read once per call anyway).
            let now = lb_core::clock::now_nanos();
            for _ in 0..picks {
                let mut ctx = PickContext::new(&mut rng).with_headers(&headers).at(now);
                let _ =
                    std::hint::black_box(picker.pick(std::hint::black_box(&endpoints), &mut ctx));
            }
            let nanos = started.elapsed().as_nanos() as f64 / f64::from(picks.max(1));
            (policy, nanos)
        })
        .collect()
}

/// One policy's pick cost at a small and a large endpoint set (for "a pick stays flat
/// with fleet size").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PickFlat {
    /// The policy.
    pub policy: String,
    /// Whether its pick is meant to be O(1) (all but `least_connections`, which scans).
    pub constant: bool,
    /// Nanoseconds per pick at 3 endpoints.
    pub ns_at_3: f64,
    /// Nanoseconds per pick at 1,000 endpoints.
    pub ns_at_1000: f64,
}

/// [`pick_cost`] at 3 and at 1,000 endpoints, for every policy.
pub fn pick_flatness(picks: u32) -> Vec<PickFlat> {
    // A first pass warms the caches and the CPU's clock, so that the first set timed
    // is not the slower one for that alone.
    let _ = pick_cost(3, picks / 4);
    let small = pick_cost(3, picks);
    let large = pick_cost(1000, picks);
    small
        .into_iter()
        .zip(large)
        .map(|((policy, ns_at_3), (_, ns_at_1000))| PickFlat {
            constant: policy.name() != "least_connections",
            policy: policy.name().to_string(),
            ns_at_3,
            ns_at_1000,
        })
        .collect()
}

/// A server (or proxy) under h2load's load: calls/s and mean latency.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct H2Row {
    /// `greeter-server`, `python-server`, `lb-proxy`, `nginx`.
    pub subject: String,
    /// h2load's connections (`-c`).
    pub connections: usize,
    /// Streams in flight per connection (`-m`).
    pub streams: usize,
    /// Calls completed per second.
    pub calls_per_sec: f64,
    /// Mean time per call, in microseconds (h2load reports no percentiles).
    pub mean_us: f64,
    /// Calls that failed.
    pub errors: u64,
}

/// The unary `SayHello("bench")` as a gRPC message on the wire: the 5-byte prefix
/// (not compressed, length) and the protobuf bytes, for h2load's `-d`.
pub fn hello_frame() -> Vec<u8> {
    use prost::Message;
    let message = HelloRequest {
        name: "bench".into(),
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// nghttp2's `h2load` against `addr`: `connections` connections with `streams` calls
/// in flight on each, for `duration` after `warmup`, one thread. It is written in C and
/// costs little CPU per call, so the server is what is measured, not our client.
pub fn measure_h2load(
    h2load: &std::path::Path,
    subject: &str,
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    settings: &Settings,
) -> anyhow::Result<H2Row> {
    let frame = std::env::temp_dir().join(format!("lb-bench-hello-{}.grpc", std::process::id()));
    std::fs::write(&frame, hello_frame())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", frame.display()))?;
    // h2load takes whole milliseconds with a unit.
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let output = Command::new(h2load)
        .arg(format!("--duration={}", ms(settings.duration)))
        .arg(format!("--warm-up-time={}", ms(settings.warmup)))
        .args([
            "-c",
            &connections.to_string(),
            "-m",
            &streams.to_string(),
            "-t",
            "1",
        ])
        .arg("-d")
        .arg(&frame)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://{addr}/example.MyService/SayHello"))
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", h2load.display()))?;
    let _ = std::fs::remove_file(&frame);
    let text = String::from_utf8_lossy(&output.stdout);
    parse_h2load(subject, connections, streams, &text).ok_or_else(|| {
        anyhow::anyhow!(
            "h2load against {subject} ({addr}) printed no result: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Reads h2load's summary: `finished in 1.00s, 11618.00 req/s, ...`, `requests: ...
/// N succeeded, N failed, N errored, N timeout`, `time for request: min max mean ...`.
pub fn parse_h2load(
    subject: &str,
    connections: usize,
    streams: usize,
    text: &str,
) -> Option<H2Row> {
    let calls_per_sec = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse::<f64>().ok())?;
    let requests = text.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let count = |what: &str| {
        requests
            .split(", ")
            .find_map(|part| part.strip_suffix(what))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let errors = count(" failed") + count(" errored") + count(" timeout");
    let mean = text
        .lines()
        .find_map(|l| l.strip_prefix("time for request:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(parse_h2load_time)?;
    Some(H2Row {
        subject: subject.to_string(),
        connections,
        streams,
        calls_per_sec,
        mean_us: mean,
        errors,
    })
}

/// `83us`, `4.75ms`, `1.2s` as microseconds.
fn parse_h2load_time(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What h2load 1.52 printed against a greeter-server.
    const H2LOAD: &str = "\
finished in 1.50s, 11618.00 req/s, 590.00KB/s
requests: 11618 total, 11618 started, 11618 done, 11610 succeeded, 5 failed, 3 errored, 0 timeout
status codes: 11618 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 590.00KB (604159) total, 67.00KB (68611) headers (space savings 95.87%), 334.51KB (342540) data
                     min         max         mean         sd        +/- sd
time for request:       44us      4.75ms        83us        48us    99.40%
";

    #[test]
    fn h2load_summaries_are_read() {
        let row = parse_h2load("greeter-server", 1, 16, H2LOAD).expect("parsed");
        assert_eq!(row.calls_per_sec, 11618.0);
        assert_eq!(row.mean_us, 83.0);
        assert_eq!(row.errors, 8);
        assert_eq!((row.connections, row.streams), (1, 16));
        assert_eq!(parse_h2load_time("4.75ms"), Some(4750.0));
        assert_eq!(parse_h2load_time("1.5s"), Some(1_500_000.0));
        assert!(parse_h2load("x", 1, 1, "connection refused").is_none());
    }

    #[test]
    fn the_hello_frame_is_a_grpc_message() {
        // Not compressed, 7 bytes long: field 1, length 5, "bench".
        assert_eq!(hello_frame(), b"\x00\x00\x00\x00\x07\x0a\x05bench");
    }
}
