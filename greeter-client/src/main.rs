//! `greeter-client`: the article's client, balancing its calls over many servers.
//!
//! ```text
//! greeter-client --servers 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 \
//!                --policy least_connections --requests 300 --concurrency 8
//! greeter-client compare --servers ... --requests 2000 --concurrency 16
//! greeter-client simulate --backend 2ms --backend 2ms --backend 20ms
//! greeter-client health --servers 127.0.0.1:50051 --wait 10s
//! greeter-client --servers ... --ca certs/ca.pem --tls-cert certs/client.pem --tls-key certs/client.key
//! ```
//!
//! Exit codes: 0 when every call succeeded, 1 when any failed (or a server is not
//! healthy), 2 for a usage error.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use greeter_client::{
    LoadSpec, health,
    report::comparison_table,
    simulate::{BackendSpec, Event, Scenario, simulate},
};
use lb_core::policy::RoundRobinConfig;
use lb_core::{
    Endpoint, OutlierDetection, Policy, RetryPolicy,
    resolver::{Resolution, Target},
    service_config::ServiceConfig,
    tls::ClientTls,
};

/// Calls example.MyService/SayHello through a client-side load balancer and shows
/// which server answered each call.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send calls with one policy and report where they went (the default).
    Run(LoadArgs),
    /// Send the same calls with several policies, one after the other, and compare.
    Compare(CompareArgs),
    /// Simulate backends and calls in virtual time, with the same pickers.
    Simulate(SimulateArgs),
    /// Wait until every server answers its health check with SERVING.
    Health(HealthArgs),
    /// Start servers and a balancer with steady load, and watch and drive them from a
    /// web page (http://127.0.0.1:8080/): switch the policy, kill, slow down, drain.
    Playground(PlaygroundArgs),
}

/// `--servers`, shared by every subcommand.
#[derive(Args, Debug)]
struct Servers {
    /// Servers to call: comma-separated host:port[=weight] (IPv6 as [::1]:50051);
    /// file:///path/endpoints.json, a JSON list that is watched for changes;
    /// dns:///name:port, re-resolved every 30 s and when a server fails; or
    /// etcd://host:port/prefix, the servers registered there, watched.
    #[arg(
        long = "servers",
        required = true,
        value_name = "HOST:PORT[=W],...|file:///PATH|dns:///NAME:PORT|etcd://HOST:PORT/PREFIX"
    )]
    // An Option only for clap's sake: the top-level arguments are built even when a
    // subcommand is used, and then there is no target to build. Parsing requires it.
    target: Option<Target>,

    /// The DNS server to ask for a dns:/// target (default: the system's), e.g.
    /// 127.0.0.1:5353.
    #[arg(long, value_name = "IP:PORT")]
    dns_server: Option<std::net::SocketAddr>,

    /// Connect over TLS, trusting the servers' certificates only if this CA (PEM)
    /// signed them. scripts/gen-certs.sh makes one for the demo.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,

    /// Mutual TLS: show this certificate (PEM; with --tls-key and --ca) to servers.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "ca"])]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Expect servers' certificates to name this host, whatever address is dialled
    /// (default: each server's own host or IP address).
    #[arg(long, value_name = "NAME", requires = "ca")]
    tls_server_name: Option<String>,
}

/// The endpoints now, and their later changes if the target is watched.
type Resolved = (Vec<Endpoint>, Option<Resolution>);

impl Servers {
    /// The endpoints now, and their changes (for a watched file or DNS).
    async fn resolve(&self) -> anyhow::Result<Resolved> {
        let Some(target) = &self.target else {
            return Err(usage("--servers is required".into()));
        };
        let target = match self.dns_server {
            Some(server) => target
                .clone()
                .with_dns_server(server)
                .map_err(|e| usage(e.to_string()))?,
            None => target.clone(),
        };
        let resolution = target.resolve().await.map_err(|e| match e {
            // etcd out of reach is a failure at run time, not a mistake in the
            // arguments (a file that cannot be read, a name that does not resolve).
            lb_core::Error::Discovery { .. } => anyhow::Error::new(e),
            e => usage(e.to_string()),
        })?;
        let now = resolution.endpoints();
        if now.is_empty() {
            anyhow::bail!("{target}: no servers there (none registered yet?)");
        }
        let follow = (!matches!(target, Target::Static(_))).then_some(resolution);
        Ok((now, follow))
    }

    /// The TLS settings, if --ca was given; an unusable file or name is a usage error.
    /// For a dns:/// target, servers' certificates must name the DNS name (as in gRPC)
    /// unless --tls-server-name says otherwise.
    fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let files = lb_core::tls::ClientTlsFiles {
            ca: self.ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        // No target only when a subcommand was used (see `target`): nothing to connect.
        let Some(target) = &self.target else {
            return Ok(None);
        };
        files.load(target).map_err(|e| usage(e.to_string()))
    }
}

/// What each call looks like and how many: shared by `run` and `compare`.
#[derive(Args, Debug)]
struct Workload {
    /// Number of calls to send in all.
    #[arg(long, default_value_t = 100)]
    requests: u64,

    /// Calls in flight at once (each worker sends its next call when one returns).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    concurrency: u16,

    /// The name to greet.
    #[arg(long, default_value = "world")]
    name: String,

    /// Seed for the balancer's random choices (default: a fresh one each run).
    #[arg(long)]
    seed: Option<u64>,

    /// Deadline of each call, e.g. 500ms or 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Key space for ring_hash and maglev: call n carries `x-lb-key: key-(n mod KEYS)`.
    /// 0 sends no key (those policies then pick at random).
    #[arg(long, default_value_t = 0)]
    keys: u64,

    /// Send for this long (e.g. 30s) instead of --requests calls.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Attempts per call: a call that fails before reaching a server (refused, reset,
    /// GOAWAY) is retried on another one, within a retry budget. 1 turns retries off.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=5))]
    max_attempts: u32,

    /// Do not watch the servers' grpc.health.v1.Health.
    #[arg(long)]
    no_health_check: bool,

    /// Ping a server's connection when its calls have had no answer for this long
    /// (and drop the connection, retrying its calls elsewhere, if the ping is not
    /// answered within --liveness-timeout): how a hung server leaves the rotation.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    liveness_interval: Duration,

    /// See --liveness-interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    liveness_timeout: Duration,

    /// Never ping: a hung server keeps its calls until their deadlines.
    #[arg(long, conflicts_with_all = ["liveness_interval", "liveness_timeout"])]
    no_liveness: bool,

    /// Eject servers whose calls keep failing (5 in a row, a success rate far below
    /// the others', or more than 85 % failed), for 5 s, then 10 s, ... at most 30 s;
    /// never more than half.
    #[arg(long)]
    outlier_detection: bool,

    /// Outlier detection with these settings instead, in gRFC A50's JSON, e.g.
    /// '{"interval":"1s","failurePercentageEjection":{"threshold":80}}'.
    #[arg(long, value_name = "JSON", conflicts_with = "outlier_detection", value_parser = parse_outlier_config)]
    outlier_config: Option<OutlierDetection>,

    /// gRPC's service config, as a file or as JSON: per method (matched by service and
    /// method name) a `timeout`, `waitForReady`, a `retryPolicy` (backoff, pushback) or
    /// a `hedgingPolicy`; `retryThrottling`; `loadBalancingConfig`. Unknown fields are
    /// errors. With `compare`, each policy runs without it and then with it.
    #[arg(long, value_name = "FILE|JSON", value_parser = parse_service_config)]
    service_config: Option<ServiceConfig>,

    /// Show where calls go every second while running (a table in a terminal, one
    /// line per second otherwise).
    #[arg(long)]
    live: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Send `authorization: Bearer <token>` with every call, the token read from this
    /// file (its first line). Without it, $GREETER_TOKEN is used if set.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics while running (per server:
    /// calls, in flight, durations, state), e.g. 127.0.0.1:9091. Use with --duration.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

impl Workload {
    /// The bearer token to send, if any; a file that cannot be read is a usage error.
    fn token(&self) -> anyhow::Result<Option<String>> {
        lb_core::auth::read_token(self.token_file.as_deref(), "GREETER_TOKEN")
            .map_err(|e| usage(e.to_string()))
    }

    fn spec(&self, servers: Vec<Endpoint>, policy: Policy) -> LoadSpec {
        LoadSpec {
            servers,
            policy,
            requests: self.requests,
            concurrency: usize::from(self.concurrency),
            name: self.name.clone(),
            seed: self.seed,
            timeout: self.timeout,
            connect_wait: Duration::from_secs(5),
            keys: self.keys,
            explain: 0,
            duration: self.duration,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                ..RetryPolicy::default()
            },
            health_check: !self.no_health_check,
            liveness: (!self.no_liveness).then_some(lb_core::Liveness {
                interval: self.liveness_interval,
                timeout: self.liveness_timeout,
            }),
            outlier: self.outlier_config.clone().or_else(|| {
                self.outlier_detection
                    .then(greeter_client::load::demo_outlier_detection)
            }),
            live: self.live,
            updates: None,
            token: None,
            tls: None,
            metrics: None,
            service_config: self.service_config.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    servers: Servers,

    /// Policy: a registered name (listed by `--help`, from lb-core's registry), or gRPC
    /// service-config JSON such as '{"least_request":{"choiceCount":3}}' (default
    /// round_robin, or --service-config's loadBalancingConfig).
    #[arg(long)]
    policy: Option<Policy>,

    #[command(flatten)]
    workload: Workload,

    /// Log why each of the first N picks was made (to stderr).
    #[arg(long, value_name = "N", default_value_t = 0)]
    explain: u64,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    servers: Servers,

    /// Policies to compare, comma-separated (default: all; names listed by `--help`).
    #[arg(long, value_delimiter = ',', value_name = "POLICY,...")]
    policies: Vec<Policy>,

    /// Also draw the table as an SVG picture in this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,

    #[command(flatten)]
    workload: Workload,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// A backend: its mean service time, optionally `,capacity=N` and `,weight=W`
    /// (e.g. `20ms,capacity=4`). Repeat for each backend.
    #[arg(long = "backend", value_name = "LATENCY[,capacity=N][,weight=W]")]
    backends: Vec<BackendSpec>,

    /// A scenario file (JSON) instead of --backend and friends.
    #[arg(long, conflicts_with = "backends")]
    scenario: Option<PathBuf>,

    /// Calls each backend serves at once, unless its --backend says otherwise.
    #[arg(long, default_value_t = 8)]
    capacity: usize,

    /// Arrival rate as a fraction of the fleet's total capacity.
    #[arg(long, default_value_t = 0.6)]
    utilisation: f64,

    /// Arrival rate in calls per second (instead of --utilisation).
    #[arg(long)]
    rate: Option<f64>,

    /// Closed loop: N callers, each sending its next call as soon as its last one
    /// returns, as `greeter-client run` does (instead of arrivals at a rate).
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: Option<u64>,

    /// Each call's deadline, e.g. 1s: a call not answered in time fails with
    /// DEADLINE_EXCEEDED and is cancelled on its backend.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Eject backends whose calls keep failing (with --timeout: running out of time),
    /// with the same settings as `run --outlier-detection`.
    #[arg(long)]
    outlier_detection: bool,

    /// Backends report their load with every answer (ORCA, as greeter-server --orca:
    /// calls per second and the share of their capacity in use), for
    /// weighted_round_robin's reported weights.
    #[arg(long)]
    orca: bool,

    /// Outlier detection with these settings instead, in gRFC A50's JSON (as `run
    /// --outlier-config`).
    #[arg(long, value_name = "JSON", conflicts_with = "outlier_detection", value_parser = parse_outlier_config)]
    outlier_config: Option<OutlierDetection>,

    /// Simulated time during which calls arrive.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// A change during the run: `5s slow 3 20ms`, `8s recover 3`, `10s remove 1`,
    /// `12s add 2ms`. Repeatable.
    #[arg(long = "event", value_name = "EVENT")]
    events: Vec<Event>,

    /// Policies to simulate, comma-separated (default: all; names listed by `--help`).
    #[arg(long, value_delimiter = ',', value_name = "POLICY,...")]
    policies: Vec<Policy>,

    /// Key space for ring_hash and maglev (0: no key).
    #[arg(long, default_value_t = 0)]
    keys: u64,

    /// Seed for arrivals, service times and picks.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Print why each of the first N picks of each policy was made.
    #[arg(long, value_name = "N", default_value_t = 0)]
    explain: u64,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Also draw the table as an SVG picture in this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PlaygroundArgs {
    /// How many servers to start (greeter-server processes on 127.0.0.1); the page
    /// can add more, up to 12.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=12))]
    fleet: u16,

    /// The servers' weights, comma-separated, e.g. 3,1,1 (default 1 each): what
    /// weighted_round_robin and weighted_random follow.
    #[arg(long, value_delimiter = ',', value_name = "W,...", value_parser = clap::value_parser!(u32).range(1..=i64::from(lb_core::endpoint::MAX_WEIGHT)))]
    weights: Vec<u32>,

    /// Where to serve the page: a loopback address (the page can kill processes, so
    /// it is never offered to other machines). Port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "IP:PORT")]
    listen: std::net::SocketAddr,

    /// The policy to start with.
    #[arg(long, default_value = "round_robin")]
    policy: Policy,

    /// Calls per second, started on a clock (open loop; the default, at 200).
    #[arg(long, conflicts_with = "concurrency", value_parser = clap::value_parser!(u32).range(1..=i64::from(greeter_client::playground::traffic::MAX_RATE)))]
    rate: Option<u32>,

    /// Instead of a rate: N callers, each sending its next call when its last returns.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(greeter_client::playground::traffic::MAX_CONCURRENCY)))]
    concurrency: Option<u32>,

    /// Each call's deadline.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// The greeter-server to run (default: the one beside this greeter-client, as
    /// cargo builds them, or else greeter-server on the PATH).
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Seed for the balancer's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct HealthArgs {
    #[command(flatten)]
    servers: Servers,

    /// Keep checking for this long before giving up, e.g. 10s.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = with_policy_lists(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    // Warnings by default (an endpoint that fails to connect); RUST_LOG=info shows
    // every connectivity change. Logs go to stderr, so --json output stays clean. The
    // playground's page shows what its servers do, and its terminal the events: a
    // killed server's failed reconnections would only bury them.
    init_tracing(if matches!(cli.command, Some(Command::Playground(_))) {
        "error"
    } else {
        "warn,lb_core::explain=info"
    });
    if let Some(Command::Playground(args)) = cli.command {
        // The playground stops on Ctrl-C itself, after stopping its servers.
        return finish(run_playground(args).await);
    }
    let work = async {
        match cli.command {
            Some(Command::Health(args)) => run_health(args).await,
            Some(Command::Run(args)) => run_load(args).await,
            Some(Command::Compare(args)) => run_compare(args).await,
            Some(Command::Simulate(args)) => run_simulate(args),
            Some(Command::Playground(_)) => unreachable!("run above"),
            None => run_load(cli.load).await,
        }
    };
    let result = tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("greeter-client: interrupted");
            return ExitCode::from(130); // 128 + SIGINT, as shells report it
        }
    };
    finish(result)
}

/// The exit code of a subcommand's result: 2 for a usage error, 1 for any other.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if err.is::<UsageError>() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("greeter-client: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_playground(args: PlaygroundArgs) -> anyhow::Result<ExitCode> {
    use greeter_client::playground::{Options, traffic::Load};
    if !args.listen.ip().is_loopback() {
        return Err(usage(format!(
            "--listen {}: the playground serves only loopback (127.0.0.1 or [::1]), since \
             its page can kill processes",
            args.listen
        )));
    }
    if args.timeout.is_zero() {
        return Err(usage(
            "--timeout 0s: every call would fail at once; give a deadline such as 5s".into(),
        ));
    }
    if args.weights.len() > usize::from(args.fleet) {
        return Err(usage(format!(
            "--weights gives {} weights for {} servers (--fleet)",
            args.weights.len(),
            args.fleet
        )));
    }
    let server_binary = match args.server_bin {
        Some(path) if path.is_file() => path,
        Some(path) => {
            return Err(usage(format!(
                "--server-bin {}: no such file (build it with cargo build -p greeter-server)",
                path.display()
            )));
        }
        None => find_server_binary()?,
    };
    let load = match (args.rate, args.concurrency) {
        (_, Some(callers)) => Load::Concurrency(callers),
        (Some(rate), None) => Load::Rate(rate),
        (None, None) => Load::Rate(200),
    };
    greeter_client::playground::run(Options {
        servers: usize::from(args.fleet),
        weights: args.weights,
        listen: args.listen,
        policy: args.policy,
        load,
        timeout: args.timeout,
        server_binary,
        seed: args.seed,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// greeter-server beside this binary (cargo puts both in target/debug or
/// target/release), or on the PATH.
fn find_server_binary() -> anyhow::Result<PathBuf> {
    let name = format!("greeter-server{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        usage(format!(
            "cannot find {name} beside greeter-client or on the PATH: build it \
             (cargo build -p greeter-server) or give --server-bin PATH"
        ))
    })
}

async fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let tls = args.servers.tls()?; // Before resolving: a bad file is a usage error.
    let (servers, updates) = args.servers.resolve().await?;
    let from_config = args
        .workload
        .service_config
        .as_ref()
        .and_then(|c| c.policy().cloned());
    let policy = match (args.policy, from_config) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "--policy and --service-config's loadBalancingConfig both name a policy: \
                 keep one"
                    .into(),
            ));
        }
        (Some(policy), None) | (None, Some(policy)) => policy,
        (None, None) => Policy::new(RoundRobinConfig::default()),
    };
    let mut spec = args.workload.spec(servers, policy);
    spec.explain = args.explain;
    spec.updates = updates;
    spec.token = args.workload.token()?;
    spec.tls = tls;
    let metrics = serve_metrics(&args.workload, &args.servers, &mut spec).await?;
    let report = greeter_client::run(&spec).await?;
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    if args.workload.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(exit_code(report.failed == 0 && report.replies_ok))
}

async fn run_compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let policies = if args.policies.is_empty() {
        Policy::all()
    } else {
        args.policies
    };
    let tls = args.servers.tls()?;
    let (servers, updates) = args.servers.resolve().await?;
    let mut spec = args
        .workload
        .spec(servers, Policy::new(RoundRobinConfig::default()));
    spec.updates = updates;
    spec.token = args.workload.token()?;
    spec.tls = tls;
    let metrics = serve_metrics(&args.workload, &args.servers, &mut spec).await?;
    let reports = greeter_client::load::compare(&spec, &policies).await?;
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    write_svg(args.svg.as_deref(), &reports)?;
    if args.workload.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!(
            "{} calls per policy, concurrency {}{}\n",
            spec.requests,
            spec.concurrency,
            if spec.keys > 0 {
                format!(", {} keys", spec.keys)
            } else {
                String::new()
            }
        );
        print!("{}", comparison_table(&reports));
    }
    let ok = reports.iter().all(|r| r.failed == 0 && r.replies_ok);
    Ok(exit_code(ok))
}

fn run_simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read scenario {}: {e}", path.display())))?;
            Scenario::from_json(&text)
                .map_err(|e| usage(format!("scenario {}: {e}", path.display())))?
        }
        None => Scenario {
            backends: args.backends,
            capacity: args.capacity,
            rate: args.rate,
            utilisation: args.utilisation,
            duration: args.duration,
            events: args.events,
            keys: args.keys,
            seed: args.seed,
            explain: 0,
            concurrency: None,
            timeout: None,
            outlier: None,
            orca: false,
        },
    };
    if args.orca {
        scenario.orca = true;
    }
    if let Some(callers) = args.concurrency {
        scenario.concurrency = usize::try_from(callers).ok();
    }
    if args.timeout.is_some() {
        scenario.timeout = args.timeout;
    }
    if args.outlier_detection {
        scenario.outlier = Some(greeter_client::load::demo_outlier_detection());
    }
    if let Some(config) = &args.outlier_config {
        scenario.outlier = Some(config.clone());
    }
    scenario.explain = args.explain;
    scenario.check().map_err(usage)?;
    let policies = if args.policies.is_empty() {
        Policy::all()
    } else {
        args.policies
    };
    let mut reports = Vec::new();
    for policy in &policies {
        let outcome = simulate(&scenario, policy);
        for line in &outcome.explanations {
            eprintln!("{line}");
        }
        reports.push(outcome.report);
    }
    write_svg(args.svg.as_deref(), &reports)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!(
            "{}",
            greeter_client::simulate::printout(&scenario, &reports)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// With --metrics, starts the /metrics endpoint and has the run report into it.
async fn serve_metrics(
    workload: &Workload,
    servers: &Servers,
    spec: &mut greeter_client::LoadSpec,
) -> anyhow::Result<Option<lb_core::metrics::MetricsServer>> {
    let Some(addr) = workload.metrics else {
        return Ok(None);
    };
    let mut registry = lb_core::metrics::Registry::default();
    let target = servers
        .target
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    spec.metrics = Some(lb_core::metrics::BalancerMetrics::register(
        &mut registry,
        &target,
    ));
    Ok(Some(
        lb_core::metrics::serve(addr, std::sync::Arc::new(registry)).await?,
    ))
}

/// With `--svg FILE`, the comparison as an SVG picture in that file.
fn write_svg(
    path: Option<&std::path::Path>,
    reports: &[greeter_client::Report],
) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, greeter_client::svg::comparison_svg(reports))
            .map_err(|e| anyhow::anyhow!("cannot write the SVG to {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The policies' names in `--help` come from lb-core's registry (the built-ins and any
/// registered), so they cannot go stale: `-h` lists the names, `--help` a line each.
fn with_policy_lists(command: clap::Command) -> clap::Command {
    let names = Policy::names().join(", ");
    let table = Policy::table();
    let json = "or gRPC service-config JSON such as '{\"least_request\":{\"choiceCount\":3}}'";
    let one = |arg: clap::Arg| {
        arg.help(format!("Policy: {names}; {json}"))
            .long_help(format!("Policy, by name:\n{table}\n{json}"))
    };
    let several = |arg: clap::Arg| {
        arg.help(format!("Policies, comma-separated (default: all): {names}"))
            .long_help(format!(
                "Policies, comma-separated (default: all), each by name:\n{table}\n{json}"
            ))
    };
    command
        .mut_arg("policy", one)
        .mut_subcommand("run", |c| c.mut_arg("policy", one))
        .mut_subcommand("playground", |c| c.mut_arg("policy", one))
        .mut_subcommand("compare", |c| c.mut_arg("policies", several))
        .mut_subcommand("simulate", |c| c.mut_arg("policies", several))
}

/// A usage error found after parsing: printed like clap's, exit code 2.
fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(message))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    // Concurrently, so that --wait bounds the whole command, not each server in turn.
    let tls = args.servers.tls()?;
    let (servers, _) = args.servers.resolve().await?;
    let checks = servers
        .iter()
        .map(|endpoint| health::wait_serving(endpoint, tls.as_ref(), args.wait));
    let mut healthy = true;
    let results = futures::future::join_all(checks).await;
    for (endpoint, result) in servers.iter().zip(results) {
        match result {
            Ok(()) => println!("{endpoint} SERVING"),
            Err(reason) => {
                healthy = false;
                println!("{reason}");
            }
        }
    }
    Ok(exit_code(healthy))
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// `--service-config`: gRPC's service config, a file or JSON (`ServiceConfig::load`).
fn parse_service_config(text: &str) -> Result<ServiceConfig, String> {
    ServiceConfig::load(text).map_err(|e| e.to_string())
}

/// `--outlier-config`: gRFC A50's JSON (lb-core's `OutlierDetection::from_str`).
fn parse_outlier_config(text: &str) -> Result<OutlierDetection, String> {
    text.parse()
}
