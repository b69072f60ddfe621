//! `lb-proxy`: a gRPC proxy that balances every call it receives over the backends.
//!
//! ```text
//! lb-proxy --listen 127.0.0.1:50050 --backends 127.0.0.1:50051,127.0.0.1:50052 --policy least_request
//! python client.py   # pointed at 127.0.0.1:50050: its calls now spread over both servers
//! lb-proxy --tls-cert certs/server.pem --tls-key certs/server.key --ca certs/ca.pem \
//!          --backends ... --backend-ca certs/ca.pem --backend-tls-cert certs/client.pem --backend-tls-key certs/client.key
//! ```
//!
//! Exit codes: 0 after Ctrl-C/SIGTERM, 1 on a runtime failure, 2 for a usage error.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use lb_core::{
    Backoff, Balancer, Policy, RetryPolicy,
    metrics::{BalancerMetrics, ServerMetrics},
    resolver::{Resolution, Target},
    service_config::ServiceConfig,
    tls::{ClientTls, ClientTlsFiles, server_config},
};
use rand::{SeedableRng, rngs::SmallRng};
use tracing::{info, warn};

/// Accepts any gRPC call on one address and forwards it, unchanged, to one of the
/// backends, picked per call by a load-balancing policy.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: SocketAddr,

    /// Backends: comma-separated host:port[=weight], file:///path/endpoints.json,
    /// dns:///name:port, or etcd://host:port/prefix.
    #[arg(
        long,
        value_name = "HOST:PORT[=W],...|file:///PATH|dns:///NAME:PORT|etcd://HOST:PORT/PREFIX"
    )]
    backends: Target,

    /// The DNS server to ask for a dns:/// target (default: the system's).
    #[arg(long, value_name = "IP:PORT")]
    dns_server: Option<SocketAddr>,

    /// Policy: a registered name (listed by `--help`), or gRPC service-config JSON
    /// (default round_robin, or --service-config's loadBalancingConfig).
    #[arg(long)]
    policy: Option<Policy>,

    /// gRPC's service config, as a file or as JSON: per method (matched by service and
    /// method name) a `timeout`, `waitForReady`, a `retryPolicy` or a `hedgingPolicy`;
    /// `retryThrottling`; `loadBalancingConfig`. Unknown fields are errors.
    #[arg(long, value_name = "FILE|JSON", value_parser = parse_service_config)]
    service_config: Option<ServiceConfig>,

    /// Attempts per call for calls that failed before reaching a backend (1 = none).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=5))]
    max_attempts: u32,

    /// Send `authorization: Bearer <token>` to the backends with every call (replacing
    /// the caller's), the token read from this file; without it, $GREETER_TOKEN if set.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,

    /// Connections open at once ; more are accepted and closed at once
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

    /// Do not watch the backends' grpc.health.v1.Health.
    #[arg(long)]
    no_health_check: bool,

    /// Ping a backend's connection when its calls have had no answer for this long
    /// (and drop it, retrying its calls elsewhere, if the ping is not answered within
    /// --liveness-timeout): how a hung backend leaves the rotation.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    liveness_interval: Duration,

    /// See --liveness-interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    liveness_timeout: Duration,

    /// Never ping: a hung backend keeps its calls until their deadlines.
    #[arg(long, conflicts_with_all = ["liveness_interval", "liveness_timeout"])]
    no_liveness: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics: per backend (picks, in
    /// flight, durations, state, ejections, retries, health) and the calls received.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,

    /// Serve TLS to callers with this certificate (PEM; with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Mutual TLS with callers: require a client certificate signed by this CA (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    ca: Option<PathBuf>,

    /// Reach the backends over TLS, trusting their certificates only if this CA (PEM)
    /// signed them.
    #[arg(long, value_name = "PEM")]
    backend_ca: Option<PathBuf>,

    /// Mutual TLS with the backends: show them this certificate (PEM; with
    /// --backend-tls-key and --backend-ca).
    #[arg(long, value_name = "PEM", requires_all = ["backend_tls_key", "backend_ca"])]
    backend_tls_cert: Option<PathBuf>,

    /// The private key of --backend-tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "backend_tls_cert")]
    backend_tls_key: Option<PathBuf>,

    /// Expect the backends' certificates to name this host (default: each backend's
    /// own host or IP address).
    #[arg(long, value_name = "NAME", requires = "backend_ca")]
    backend_tls_server_name: Option<String>,

    /// Worker threads: 1 runs everything on one thread, so that a call's inbound and
    /// outbound halves never wake another thread (the fastest for a few callers);
    /// 0 means one per core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=1024))]
    threads: u16,
}

impl Args {
    /// The TLS settings for callers and for backends; unusable files are errors that
    /// name the file.
    fn tls(&self) -> Result<(Option<lb_core::tls::ServerTls>, Option<ClientTls>), lb_core::Error> {
        let front = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server_config(cert, key, self.ca.as_deref())?),
            _ => None,
        };
        let back = ClientTlsFiles {
            ca: self.backend_ca.clone(),
            cert: self.backend_tls_cert.clone(),
            key: self.backend_tls_key.clone(),
            server_name: self.backend_tls_server_name.clone(),
        }
        .load(&self.backends)?;
        Ok((front, back))
    }
}

fn main() -> ExitCode {
    let command = Args::command().mut_arg("policy", |arg| {
        // From lb-core's registry, so the list cannot go stale.
        arg.help(format!(
            "Policy: {}; or gRPC service-config JSON",
            Policy::names().join(", ")
        ))
        .long_help(format!(
            "Policy, by name:\n{}\nor gRPC service-config JSON such as \
             '{{\"least_request\":{{\"choiceCount\":3}}}}'",
            Policy::table()
        ))
    });
    let args = Args::from_arg_matches(&command.get_matches()).unwrap_or_else(|err| err.exit());
    init_tracing();
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lb-proxy: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // The one place a usage error becomes exit code 2, as in the other binaries.
        Err(err) if err.is::<UsageError>() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("lb-proxy: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A mistake in the arguments (a file that cannot be read, a target that cannot
/// work): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(err.to_string()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut stop = StopSignals::listen()?;
    let token =
        lb_core::auth::read_token(args.token_file.as_deref(), "GREETER_TOKEN").map_err(usage)?;
    let token = lb_core::auth::BearerTokenLayer::optional(token.as_deref()).map_err(usage)?;
    let (front_tls, backend_tls) = args.tls().map_err(usage)?;
    let target = match args.dns_server {
        Some(server) => args.backends.clone().with_dns_server(server),
        None => Ok(args.backends.clone()),
    }
    .map_err(usage)?;
    let Some(resolution) = resolve_backends(&target, &mut stop).await? else {
        info!("stopped before the backends were found");
        return Ok(());
    };
    // Backends may be none yet (servers still to register in etcd): calls wait for
    // them, up to the queue timeout.
    let config = args.service_config.clone();
    let policy = match (
        args.policy.clone(),
        config.as_ref().and_then(|c| c.policy().cloned()),
    ) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "--policy and --service-config's loadBalancingConfig both name a policy: keep one",
            ));
        }
        (Some(policy), None) | (None, Some(policy)) => policy,
        (None, None) => Policy::new(lb_core::policy::RoundRobinConfig::default()),
    };
    let mut builder = Balancer::following(resolution)
        .policy(policy)
        .retry(RetryPolicy {
            max_attempts: args.max_attempts,
            ..RetryPolicy::default()
        })
        .health_check((!args.no_health_check).then_some(""))
        .liveness((!args.no_liveness).then_some(lb_core::Liveness {
            interval: args.liveness_interval,
            timeout: args.liveness_timeout,
        }));
    if let Some(config) = config {
        builder = builder.service_config(config.without_policy());
        if args.no_health_check {
            builder = builder.health_check(None); // Even if the config names a service.
        }
    }
    if let Some(tls) = backend_tls {
        builder = builder.tls(tls);
    }
    let balancer = builder.build()?;
    let mut options = lb_proxy::Options {
        tls: front_tls,
        connections: lb_core::server::ConnectionLimits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            preface_timeout: args.preface_timeout,
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            ..lb_core::server::ConnectionLimits::default()
        },
        metrics: None,
        token,
    };
    let metrics = match args.metrics {
        Some(addr) => {
            let mut registry = lb_core::metrics::Registry::default();
            BalancerMetrics::register(&mut registry, &target.to_string()).watch(&balancer);
            options.metrics = Some(ServerMetrics::register(&mut registry));
            Some(lb_core::metrics::serve(addr, std::sync::Arc::new(registry)).await?)
        }
        None => None,
    };
    balancer.wait_settled(Duration::from_secs(5)).await;
    let proxy = lb_proxy::spawn_with(args.listen, balancer, options).await?;
    stop.recv().await;
    info!("shutting down: no new connections, finishing calls in flight");
    proxy.shutdown().await?;
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    Ok(())
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

/// How often a target that cannot be resolved yet is tried again: from 250 ms, up to
/// 10 s apart (gRPC's connection backoff, shorter).
const RESOLVE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    multiplier: 2.0,
    jitter: 0.2,
    max: Duration::from_secs(10),
};

/// Resolves the backends. A proxy often starts before its backends (pods not ready
/// yet, servers still to register in etcd): a DNS name without records or an etcd out
/// of reach is retried, with backoff, until found or until a signal says stop (then
/// `None`). A target that cannot work (a file that cannot be read) is a usage error.
async fn resolve_backends(
    target: &Target,
    stop: &mut StopSignals,
) -> anyhow::Result<Option<Resolution>> {
    let mut rng = SmallRng::from_os_rng();
    for failures in 0u32.. {
        let err = match target.resolve().await {
            Ok(resolution) => return Ok(Some(resolution)),
            Err(err) if matches!(target, Target::Dns { .. } | Target::Etcd(_)) => err,
            Err(err) => return Err(usage(err)),
        };
        let delay = RESOLVE_BACKOFF.delay(failures, &mut rng);
        warn!("{err}; trying again in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.recv() => return Ok(None),
        }
    }
    unreachable!("the loop above only ends by returning")
}

/// Ctrl-C or SIGTERM (as from `kill` or Kubernetes): time to drain. Listened for from
/// the start, once: a signal that arrives while the proxy is still resolving its
/// backends, or connecting, is kept until it is looked at, not lost.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves at the next Ctrl-C or SIGTERM (or at once for one already received).
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_service_config(text: &str) -> Result<ServiceConfig, String> {
    ServiceConfig::load(text).map_err(|e| e.to_string())
}
