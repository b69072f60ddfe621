//! `lb-bench`: measures every subject against servers that are already running, and
//! writes the report. `scripts/bench.sh` starts everything and calls it; see the crate
//! docs for what each subject is.
//!
//! ```text
//! lb-bench --servers 127.0.0.1:50071,127.0.0.1:50072,127.0.0.1:50073 \
//!          --proxy 127.0.0.1:50080 --nginx 127.0.0.1:50081 --python-server 127.0.0.1:50082 \
//!          --python-client "python3 scripts/python/bench_client.py" \
//!          --hetero 127.0.0.1:50091,127.0.0.1:50092,127.0.0.1:50093 \
//!          --scale 127.0.0.1:51000-51999 --out docs/BENCHMARKS.md --svg docs/bench.svg
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use lb_bench::{
    Client, Settings, chart, machine, measure, measure_external_client, measure_h2load, pick_cost,
    pick_flatness,
    report::{Report, Row, Run, Scale, splice, today},
    resident_bytes,
};
use lb_core::policy::RoundRobinConfig;
use lb_core::{Balancer, Endpoint, Policy};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Measures our balancer against the alternatives, in one run."
)]
struct Args {
    /// The 3 servers every subject calls: comma-separated host:port.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddr>,

    /// lb-proxy, balancing over --servers.
    #[arg(long)]
    proxy: Option<SocketAddr>,

    /// nginx with grpc_pass to an upstream of --servers.
    #[arg(long)]
    nginx: Option<SocketAddr>,

    /// The article's Python server.
    #[arg(long)]
    python_server: Option<SocketAddr>,

    /// The Python grpcio client: interpreter and script, e.g.
    /// "python3 scripts/python/bench_client.py".
    #[arg(long)]
    python_client: Option<String>,

    /// Node's grpc-js client: interpreter and script, e.g.
    /// "node scripts/node/bench_client.js".
    #[arg(long)]
    node_client: Option<String>,

    /// Another subject behind one tonic Channel, as NAME=HOST:PORT (repeatable), e.g.
    /// "lb-proxy --threads 0=127.0.0.1:50083".
    #[arg(long, value_name = "NAME=HOST:PORT", value_parser = parse_also)]
    also: Vec<(String, SocketAddr)>,

    /// nghttp2's h2load: also measure the servers and proxies with it.
    #[arg(long, value_name = "PATH")]
    h2load: Option<PathBuf>,

    /// Three servers, one of them slow, for the heterogeneous-fleet run.
    #[arg(long, value_delimiter = ',')]
    hetero: Vec<SocketAddr>,

    /// Many servers for the scale run: HOST:FIRST-LAST, e.g. 127.0.0.1:51000-51999.
    #[arg(long)]
    scale: Option<String>,

    /// Callers in flight; each subject is measured at each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,

    /// Measured time per run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Warm-up before each run.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Rounds per subject and concurrency within a run (their median is the run's).
    #[arg(long, default_value_t = 3)]
    repeats: usize,

    /// Full runs: every subject at every concurrency, then again; each target is judged
    /// in every run, and each ratio's spread over the runs is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,

    /// A JSON report saved by an earlier run (--json): print which ratios and verdicts
    /// moved beyond the noise.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,

    /// Picks timed per policy and endpoint count, for "a pick stays flat".
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    picks: u32,

    /// Which process runs on which core, for the report (scripts/bench.sh pins them).
    #[arg(long, default_value = "")]
    layout: String,

    /// Policies to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<Policy>,

    /// Something left out, and why (repeatable): shown in the report.
    #[arg(long)]
    skipped: Vec<String>,

    /// Markdown file whose `<!-- bench:begin -->`...`<!-- bench:end -->` block is
    /// replaced with the report.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Where to write the SVG chart.
    #[arg(long)]
    svg: Option<PathBuf>,

    /// Where to write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `NAME=HOST:PORT`, split at the last `=`.
fn parse_also(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=HOST:PORT, got `{text}`"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("`{addr}` is not HOST:PORT: {e}"))?;
    if name.is_empty() {
        return Err(format!("`{text}`: the name is empty"));
    }
    Ok((name.to_string(), addr))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lb-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(subject: &str, c: usize, m: &lb_bench::Measurement) {
    eprintln!(
        "  {subject:<32} c={c:<3} {:>9.0} calls/s  p50 {:>7.0} µs  p99 {:>7.0} µs  client CPU {:>5.1} µs/call  errors {}",
        m.calls_per_sec, m.p50_us, m.p99_us, m.client_cpu_us, m.errors
    );
}

async fn run(args: Args) -> anyhow::Result<()> {
    let baseline: Option<Report> = match &args.baseline {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--baseline {}: {e}", path.display()))?;
            Some(serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--baseline {}: not a report saved by lb-bench --json: {e}",
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let settings = Settings {
        concurrencies: args.concurrency.clone(),
        duration: args.duration,
        warmup: args.warmup,
        repeats: args.repeats,
        runs: usize::try_from(args.runs).unwrap_or(1),
    };
    let policies = if args.policies.is_empty() {
        Policy::all()
    } else {
        args.policies.clone()
    };
    let first = *args
        .servers
        .first()
        .ok_or_else(|| anyhow::anyhow!("--servers is empty"))?;

    // The subjects, each connected once, before any measuring.
    let mut subjects: Vec<(String, Client)> = vec![("direct".into(), Client::direct(first).await?)];
    for policy in &policies {
        let client = Client::balancer(policy.clone(), &args.servers).await?;
        subjects.push((format!("balancer/{}", policy.name()), client));
    }
    subjects.push(("balance_list".into(), Client::balance_list(&args.servers)?));
    for (name, addr) in [
        ("lb-proxy", args.proxy),
        ("nginx", args.nginx),
        ("python-server", args.python_server),
    ] {
        if let Some(addr) = addr {
            subjects.push((name.into(), Client::direct(addr).await?));
        }
    }
    for (name, addr) in &args.also {
        subjects.push((name.clone(), Client::direct(*addr).await?));
    }
    let split = |command: &Option<String>| -> Option<Vec<String>> {
        command
            .as_ref()
            .map(|c| c.split_whitespace().map(String::from).collect())
    };
    // Clients of other stacks, measured as processes, right after balance_list.
    let external: Vec<(&str, Vec<String>)> = [
        ("grpcio", split(&args.python_client)),
        ("grpc-js", split(&args.node_client)),
    ]
    .into_iter()
    .filter_map(|(name, command)| Some((name, command?)))
    .collect();
    // The servers and proxies h2load measures, as they are reached.
    let mut h2_subjects = vec![("greeter-server", first)];
    for (name, addr) in [
        ("python-server", args.python_server),
        ("lb-proxy", args.proxy),
        ("nginx", args.nginx),
    ] {
        if let Some(addr) = addr {
            h2_subjects.push((name, addr));
        }
    }

    // Full runs, each visiting every subject at every concurrency in turn, in rounds:
    // a burst of noise from the rest of the machine then hits one round of every
    // subject, not every run of one subject.
    let once = Settings {
        repeats: 1,
        ..settings.clone()
    };
    let mut runs = Vec::new();
    for run_number in 1..=settings.runs {
        let mut run = Run::default();
        for &c in &settings.concurrencies {
            eprintln!("== run {run_number} of {}, concurrency {c}", settings.runs);
            let mut rounds: Vec<(String, Vec<lb_bench::Measurement>)> = Vec::new();
            for round in 0..settings.repeats.max(1) {
                let mut index = 0;
                let mut note = |name: &str, m: lb_bench::Measurement| {
                    if round == 0 {
                        rounds.push((name.to_string(), Vec::new()));
                    }
                    rounds[index].1.push(m);
                    index += 1;
                };
                for (name, client) in &subjects {
                    note(
                        name,
                        lb_bench::run_once(client, c, once.warmup, once.duration).await,
                    );
                    if name == "balance_list" {
                        for (client_name, command) in &external {
                            note(
                                client_name,
                                measure_external_client(command, &args.servers, c, &once)?,
                            );
                        }
                    }
                }
            }
            for (name, measured) in rounds {
                let m = lb_bench::Measurement::median(&measured);
                progress(&name, c, &m);
                run.rows.push(Row {
                    subject: name,
                    concurrency: c,
                    measurement: m,
                });
            }
        }
        if let Some(h2load) = &args.h2load {
            eprintln!("== run {run_number}: the servers under h2load");
            for (connections, streams) in [(1, 1), (1, 16), (4, 16)] {
                for (name, addr) in &h2_subjects {
                    let row = measure_h2load(h2load, name, *addr, connections, streams, &once)?;
                    eprintln!(
                        "  {name:<32} {connections} × {streams:<3} {:>9.0} calls/s  mean {:>7.0} µs  errors {}",
                        row.calls_per_sec, row.mean_us, row.errors
                    );
                    run.h2load.push(row);
                }
            }
        }
        run.picks = pick_flatness(args.picks);
        runs.push(run);
    }
    // The medians over the runs, per subject and concurrency.
    let rows: Vec<Row> = runs
        .first()
        .map(|first| {
            first
                .rows
                .iter()
                .map(|row| {
                    let same: Vec<lb_bench::Measurement> = runs
                        .iter()
                        .filter_map(|run| {
                            run.rows
                                .iter()
                                .find(|r| {
                                    r.subject == row.subject && r.concurrency == row.concurrency
                                })
                                .map(|r| r.measurement)
                        })
                        .collect();
                    Row {
                        measurement: lb_bench::Measurement::median(&same),
                        ..row.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default();

    let mut hetero = Vec::new();
    if !args.hetero.is_empty() {
        let c = 16;
        let hetero_settings = Settings {
            concurrencies: vec![c],
            duration: args.duration.max(Duration::from_secs(2)),
            repeats: 1,
            ..settings.clone()
        };
        eprintln!("== one slow server of three, concurrency {c}");
        for policy in &policies {
            let client = Client::balancer(policy.clone(), &args.hetero).await?;
            let m = measure(&client, c, &hetero_settings).await;
            progress(policy.name(), c, &m);
            hetero.push(Row {
                subject: policy.name().into(),
                concurrency: c,
                measurement: m,
            });
        }
    }

    let scale = match &args.scale {
        Some(spec) => Some(scale_run(spec, &settings).await?),
        None => None,
    };

    let report = Report {
        date: today(),
        machine: machine(),
        layout: args.layout.clone(),
        settings,
        rows,
        runs,
        hetero,
        scale,
        skipped: args.skipped.clone(),
    };
    let markdown = report.to_markdown();
    print!("{markdown}");
    if let Some(path) = &args.out {
        let document = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, splice(&document, &markdown))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, chart::svg(&report))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(baseline) = &baseline {
        let moved = report.compare(baseline);
        eprintln!(
            "== against the baseline of {} ({})",
            baseline.date,
            args.baseline
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string())
        );
        if moved.is_empty() {
            eprintln!("  nothing moved beyond the noise");
        }
        for line in moved {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// One balancer over many servers: memory per endpoint, load over all, pick cost.
async fn scale_run(spec: &str, settings: &Settings) -> anyhow::Result<Scale> {
    let (host, ports) = spec
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--scale: expected HOST:FIRST-LAST, got `{spec}`"))?;
    let ports = greeter_server::parse_ports(ports).map_err(|e| anyhow::anyhow!("--scale: {e}"))?;
    let endpoints = ports
        .iter()
        .map(|port| format!("{host}:{port}").parse::<Endpoint>())
        .collect::<Result<Vec<_>, _>>()?;
    let n = endpoints.len();
    eprintln!("== {n} endpoints in one balancer");
    let before = resident_bytes().unwrap_or(0);
    let balancer = Balancer::builder(endpoints)
        .policy(Policy::new(RoundRobinConfig::default()))
        .seed(2)
        .build()?;
    let statuses = balancer.wait_settled(Duration::from_secs(60)).await;
    let ready = statuses
        .iter()
        .filter(|s| s.connectivity == lb_core::Connectivity::Ready)
        .count();
    let after = resident_bytes().unwrap_or(0);
    let bytes_per_endpoint = after.saturating_sub(before) as f64 / n.max(1) as f64;
    eprintln!(
        "  {ready} READY; {:.1} KiB per endpoint",
        bytes_per_endpoint / 1024.0
    );
    let c = 64;
    let client = Client::Balancer(greeter_proto::MyServiceClient::new(balancer));
    let measurement = measure(
        &client,
        c,
        &Settings {
            repeats: 1,
            ..settings.clone()
        },
    )
    .await;
    progress("round_robin (scale)", c, &measurement);
    let pick_ns = pick_cost(n, 200_000)
        .into_iter()
        .map(|(policy, ns)| (policy.name().to_string(), ns))
        .collect();
    Ok(Scale {
        endpoints: n,
        ready,
        bytes_per_endpoint,
        measurement,
        concurrency: c,
        pick_ns,
    })
}
