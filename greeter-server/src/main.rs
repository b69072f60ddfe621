//! `greeter-server`: the article's `python server.py`, in Rust, on one or many ports.
//!
//! ```text
//! greeter-server                          # one instance on 127.0.0.1:50051
//! greeter-server --port 50051-50053       # three instances in one process
//! greeter-server --port 50053 --latency 20ms --error-rate 0.1
//! kill -USR1 <pid>    # report NOT_SERVING (health), keep serving calls
//! kill -USR2 <pid>    # report SERVING again
//! greeter-server --port 0 --control-stdin   # `latency 200ms`, `health not-serving` on stdin
//! greeter-server --port 0 --register etcd://127.0.0.1:2379/greeter   # found by clients watching etcd
//! greeter-server --tls-cert certs/server.pem --tls-key certs/server.key --ca certs/ca.pem  # mTLS
//! ```

use std::{net::IpAddr, process::ExitCode, time::Duration};

use clap::Parser;
use greeter_server::{Config, EtcdTarget, control::Command, parse_ports};
use lb_core::resolver::Target;
use tracing::info;

/// Serves example.MyService (SayHello -> "Hello, {name}!") with health checks and
/// reflection, on one or many ports.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on. The default is reachable from this machine only; use
    /// 0.0.0.0 to accept connections from other hosts.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,

    /// Port to serve on; repeat it, or give a range like 50051-50053, for one instance
    /// per port. 0 lets the OS choose (the log says which).
    #[arg(long = "port", value_name = "PORT|FIRST-LAST", default_value = "50051", value_parser = parse_ports)]
    ports: Vec<Vec<u16>>,

    /// Delay added to every call, e.g. 20ms or 1s: makes this instance "slow".
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,

    /// Fraction of calls (0 to 1) answered with UNAVAILABLE, chosen by a seeded RNG.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,

    /// Make a fraction of calls slow: PERCENT%:DURATION, e.g. 5%:50ms (5 % of the
    /// calls, chosen by the seeded RNG, take 50 ms more). The tail that hedging cuts.
    #[arg(long, value_name = "PERCENT%:DURATION")]
    latency_tail: Option<greeter_server::LatencyTail>,

    /// Seed for the --error-rate and --latency-tail choices (each instance adds its
    /// index).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Work on at most N calls at once (per instance); the others wait their turn, so
    /// latency and utilisation grow with load, as on a machine of that size. With
    /// --orca, the share of that capacity in use is the reported utilisation.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    capacity: Option<u32>,

    /// HTTP/2 streams (calls) a client may have open at once on one connection (its
    /// SETTINGS_MAX_CONCURRENT_STREAMS); a call beyond it waits in the client's
    /// connection. A low value, e.g. 4, shows a client's connectionScaling (gRFC A105).
    #[arg(long, value_name = "N", default_value_t = greeter_server::MAX_CONCURRENT_STREAMS, value_parser = clap::value_parser!(u32).range(1..=i64::from(greeter_server::MAX_CONCURRENT_STREAMS)))]
    max_concurrent_streams: u32,

    /// Report load (ORCA, gRFC A51): an xds.data.orca.v3.OrcaLoadReport in every
    /// answer's endpoint-load-metrics-bin trailer, and the
    /// xds.service.orca.v3.OpenRcaService out-of-band stream.
    #[arg(long)]
    orca: bool,

    /// Close each client connection after this long (e.g. 30s), with GOAWAY: clients
    /// reconnect, which spreads load onto new servers.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_connection_age: Option<Duration>,

    /// Register every instance in etcd under this prefix, e.g.
    /// etcd://127.0.0.1:2379/greeter: clients with --servers etcd://127.0.0.1:2379/greeter
    /// find it. Deregistered on shutdown; after a crash, when its lease expires.
    #[arg(long, value_name = "etcd://HOST:PORT/PREFIX", value_parser = parse_etcd)]
    register: Option<EtcdTarget>,

    /// How long the etcd registration outlives a crashed server (its lease's
    /// time-to-live; renewed every third of it, at least 2s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, requires = "register")]
    register_ttl: Duration,

    /// How long a call may take to be answered before the server gives up with
    /// DEADLINE_EXCEEDED.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,

    /// Answer SayHello only with `authorization: Bearer <token>`, the token read from
    /// this file (its first line); others get UNAUTHENTICATED. Without it,
    /// $GREETER_TOKEN is used if set. Health and reflection stay open.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,

    /// Serve TLS with this certificate (PEM; with --tls-key). scripts/gen-certs.sh
    /// makes one for the demo.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS: require every client to show a certificate signed by this CA
    /// (PEM); clients without one are refused during the handshake.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    ca: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (calls per method, status and
    /// instance, with their durations), e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<std::net::SocketAddr>,

    /// Connections open at once per port; more are accepted and closed at once
    /// (logged and counted), while the open ones keep working.
    #[arg(long, default_value_t = lb_core::server::MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,

    /// How long a new connection may take to send the HTTP/2 preface (after its TLS
    /// handshake) before it is closed: a peer that connects and says nothing, or
    /// one byte a second, holds nothing for long (0s: no limit).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    preface_timeout: Duration,

    /// Close a connection that has carried no call for this long (0s: never).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,

    /// Take commands on standard input, one per line: `latency 200ms`, `health
    /// not-serving`, `health serving`, `stop`; answer each on standard output, after
    /// a `serving ADDR` line per instance and `ready`. End of input stops the server
    /// (the parent is gone). greeter-client playground drives its servers this way.
    #[arg(long)]
    control_stdin: bool,

    /// The address to register in etcd (default: --host, which must then not be a
    /// wildcard such as 0.0.0.0).
    #[arg(long, value_name = "IP", requires = "register")]
    advertise: Option<IpAddr>,
}

fn parse_etcd(text: &str) -> Result<EtcdTarget, String> {
    match text.parse::<Target>() {
        Ok(Target::Etcd(target)) => Ok(target),
        Ok(_) => Err(format!("`{text}` is not an etcd://host:port/prefix target")),
        Err(err) => Err(err.to_string()),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("greeter-server: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve_main());
    // Without waiting for blocking tasks: a read of standard input (--control-stdin)
    // cannot be cancelled, and must not keep a stopped server from exiting.
    runtime.shutdown_background();
    code
}

async fn serve_main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let token = match lb_core::auth::read_token(args.token_file.as_deref(), "GREETER_TOKEN") {
        Ok(token) => token,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match lb_core::tls::server_config(cert, key, args.ca.as_deref())
        {
            Ok(tls) => Some(tls),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let config = Config {
        host: args.host,
        ports: args.ports.into_iter().flatten().collect(),
        latency: args.latency,
        error_rate: args.error_rate,
        latency_tail: args.latency_tail,
        seed: args.seed,
        capacity: args.capacity.map(|n| n as usize),
        max_concurrent_streams: args.max_concurrent_streams,
        orca: args.orca,
        max_connection_age: args.max_connection_age,
        request_timeout: args.request_timeout,
        token,
        tls,
        connections: lb_core::server::ConnectionLimits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            preface_timeout: args.preface_timeout,
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            ..lb_core::server::ConnectionLimits::default()
        },
        metrics: None,
    };
    let registration = args
        .register
        .map(|target| (target, args.advertise, args.register_ttl));
    match run(config, registration, args.metrics, args.control_stdin).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("greeter-server: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    mut config: Config,
    registration: Option<(EtcdTarget, Option<IpAddr>, Duration)>,
    metrics_addr: Option<std::net::SocketAddr>,
    control_stdin: bool,
) -> anyhow::Result<()> {
    // Listen for the signals *before* announcing that we serve: a script that sends
    // SIGTERM as soon as it reads "serving" must get a graceful shutdown, not the
    // default action (an abrupt kill).
    let mut signals = ShutdownSignals::listen()?;
    let metrics = match metrics_addr {
        Some(addr) => {
            let mut registry = lb_core::metrics::Registry::default();
            config.metrics = Some(lb_core::metrics::ServerMetrics::register(&mut registry));
            Some(lb_core::metrics::serve(addr, std::sync::Arc::new(registry)).await?)
        }
        None => None,
    };
    let mut servers = greeter_server::spawn(config).await?;
    if let Some((target, advertise, ttl)) = registration
        && let Err(err) = servers.register(&target, advertise, ttl).await
    {
        servers.shutdown().await?;
        return Err(err.into());
    }
    let mut commands = control_stdin.then(|| {
        for addr in servers.addrs() {
            answer(&format!("serving {addr}"));
        }
        answer("ready");
        commands_from_stdin()
    });
    loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            Some(command) = next_command(&mut commands) => match command {
                Err(err) => {
                    answer(&format!("error: {err}"));
                    continue;
                }
                Ok(command @ Command::Latency(latency)) => {
                    servers.set_latency(latency);
                    answer(&format!("ok {command}"));
                    continue;
                }
                Ok(command @ Command::Serving(serving)) => {
                    servers.set_serving(serving).await;
                    answer(&format!("ok {command}"));
                    continue;
                }
                Ok(Command::Stop) => Signal::Stop("stop command"),
            },
        };
        match signal {
            // For scripts: flip health without stopping (scripts/chaos.sh uses these).
            Signal::NotServing => servers.set_serving(false).await,
            Signal::Serving => servers.set_serving(true).await,
            Signal::Stop(name) => {
                info!("{name}: shutting down gracefully");
                break;
            }
        }
    }
    servers.shutdown().await?;
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

/// Reads commands from standard input in a task of its own, in order, bad ones as
/// errors to answer; end of input (or a read error) becomes `stop`.
fn commands_from_stdin() -> tokio::sync::mpsc::Receiver<Result<Command, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(tokio::io::stdin());
        loop {
            let command = match greeter_server::control::next_line(&mut input).await {
                Ok(Some(Ok(line))) if line.trim().is_empty() => continue,
                Ok(Some(Ok(line))) => line.parse::<Command>(),
                Ok(Some(Err(err))) => Err(err),
                Ok(None) => {
                    info!("standard input closed (--control-stdin)");
                    Ok(Command::Stop)
                }
                Err(err) => {
                    info!("cannot read standard input ({err}): stopping");
                    Ok(Command::Stop)
                }
            };
            let stop = command == Ok(Command::Stop);
            if tx.send(command).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// One line to the parent on standard output. A parent that stopped reading is not a
/// reason to stop serving: a failed write is ignored.
fn answer(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// The next command, or never if commands are not read.
async fn next_command(
    commands: &mut Option<tokio::sync::mpsc::Receiver<Result<Command, String>>>,
) -> Option<Result<Command, String>> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What a signal asks for.
enum Signal {
    /// SIGINT (Ctrl-C) or SIGTERM: shut down gracefully.
    Stop(&'static str),
    /// SIGUSR1: report NOT_SERVING.
    NotServing,
    /// SIGUSR2: report SERVING again.
    Serving,
}

/// The signals the server obeys, listened for from creation on.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    user1: tokio::signal::unix::Signal,
    #[cfg(unix)]
    user2: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                user1: signal(SignalKind::user_defined1())?,
                user2: signal(SignalKind::user_defined2())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves with the next signal that arrives.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
                _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
                _ = self.user1.recv() => Signal::NotServing,
                _ = self.user2.recv() => Signal::Serving,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop("Ctrl-C")
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
