//! The flags several subcommands share: which servers (`--servers` and TLS), and what
//! each call looks like and how many (the workload).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use greeter_client::LoadSpec;
use lb_core::{
    Endpoint, OutlierDetection, Policy, RetryPolicy,
    resolver::{Resolution, Target},
    service_config::ServiceConfig,
    tls::ClientTls,
};

use super::usage;

/// `--servers`, shared by every subcommand.
#[derive(Args, Debug)]
pub struct Servers {
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
    pub target: Option<Target>,

    /// The DNS server to ask for a dns:/// target (default: the system's), e.g.
    /// 127.0.0.1:5353.
    #[arg(long, value_name = "IP:PORT")]
    pub dns_server: Option<std::net::SocketAddr>,

    /// Connect over TLS, trusting the servers' certificates only if this CA (PEM)
    /// signed them. scripts/gen-certs.sh makes one for the demo.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,

    /// Mutual TLS: show this certificate (PEM; with --tls-key and --ca) to servers.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "ca"])]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Expect servers' certificates to name this host, whatever address is dialled
    /// (default: each server's own host or IP address).
    #[arg(long, value_name = "NAME", requires = "ca")]
    pub tls_server_name: Option<String>,
}

/// The endpoints now, and their later changes if the target is watched.
pub type Resolved = (Vec<Endpoint>, Option<Resolution>);

impl Servers {
    /// The endpoints now, and their changes (for a watched file or DNS).
    pub async fn resolve(&self) -> anyhow::Result<Resolved> {
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
    pub fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
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
pub struct Workload {
    /// Number of calls to send in all.
    #[arg(long, default_value_t = 100)]
    pub requests: u64,

    /// Calls in flight at once (each worker sends its next call when one returns).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub concurrency: u16,

    /// The name to greet.
    #[arg(long, default_value = "world")]
    pub name: String,

    /// Seed for the balancer's random choices (default: a fresh one each run).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Deadline of each call, e.g. 500ms or 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Key space for ring_hash and maglev: call n carries `x-lb-key: key-(n mod KEYS)`.
    /// 0 sends no key (those policies then pick at random).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,

    /// Send for this long (e.g. 30s) instead of --requests calls.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Attempts per call: a call that fails before reaching a server (refused, reset,
    /// GOAWAY) is retried on another one, within a retry budget. 1 turns retries off.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub max_attempts: u32,

    /// Do not watch the servers' grpc.health.v1.Health.
    #[arg(long)]
    pub no_health_check: bool,

    /// Ping a server's connection when its calls have had no answer for this long
    /// (and drop the connection, retrying its calls elsewhere, if the ping is not
    /// answered within --liveness-timeout): how a hung server leaves the rotation.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub liveness_interval: Duration,

    /// See --liveness-interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub liveness_timeout: Duration,

    /// Never ping: a hung server keeps its calls until their deadlines.
    #[arg(long, conflicts_with_all = ["liveness_interval", "liveness_timeout"])]
    pub no_liveness: bool,

    /// Eject servers whose calls keep failing (5 in a row, a success rate far below
    /// the others', or more than 85 % failed), for 5 s, then 10 s, ... at most 30 s;
    /// never more than half.
    #[arg(long)]
    pub outlier_detection: bool,

    /// Outlier detection with these settings instead, in gRFC A50's JSON, e.g.
    /// '{"interval":"1s","failurePercentageEjection":{"threshold":80}}'.
    #[arg(long, value_name = "JSON", conflicts_with = "outlier_detection", value_parser = parse_outlier_config)]
    pub outlier_config: Option<OutlierDetection>,

    /// gRPC's service config, as a file or as JSON: per method (matched by service and
    /// method name) a `timeout`, `waitForReady`, a `retryPolicy` (backoff, pushback) or
    /// a `hedgingPolicy`; `retryThrottling`; `loadBalancingConfig`. Unknown fields are
    /// errors. With `compare`, each policy runs without it and then with it.
    #[arg(long, value_name = "FILE|JSON", value_parser = parse_service_config)]
    pub service_config: Option<ServiceConfig>,

    /// Show where calls go every second while running (a table in a terminal, one
    /// line per second otherwise).
    #[arg(long)]
    pub live: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Send `authorization: Bearer <token>` with every call, the token read from this
    /// file (its first line). Without it, $GREETER_TOKEN is used if set.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics while running (per server:
    /// calls, in flight, durations, state), e.g. 127.0.0.1:9091. Use with --duration.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Workload {
    /// The bearer token to send, if any; a file that cannot be read is a usage error.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        lb_core::auth::read_token(self.token_file.as_deref(), "GREETER_TOKEN")
            .map_err(|e| usage(e.to_string()))
    }

    pub fn spec(&self, servers: Vec<Endpoint>, policy: Policy) -> LoadSpec {
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
            outlier: self
                .outlier_config
                .clone()
                .or_else(|| self.outlier_detection.then(lb_sim::demo_outlier_detection)),
            live: self.live,
            updates: None,
            token: None,
            tls: None,
            metrics: None,
            service_config: self.service_config.clone(),
        }
    }
}

/// `--service-config`: gRPC's service config, a file or JSON (`ServiceConfig::load`).
pub fn parse_service_config(text: &str) -> Result<ServiceConfig, String> {
    ServiceConfig::load(text).map_err(|e| e.to_string())
}

/// `--outlier-config`: gRFC A50's JSON (lb-core's `OutlierDetection::from_str`).
pub fn parse_outlier_config(text: &str) -> Result<OutlierDetection, String> {
    text.parse()
}
/// With --metrics, starts the /metrics endpoint and has the run report into it.
pub async fn serve_metrics(
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
pub fn write_svg(
    path: Option<&std::path::Path>,
    reports: &[greeter_client::Report],
) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, lb_sim::svg::comparison_svg(reports))
            .map_err(|e| anyhow::anyhow!("cannot write the SVG to {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Several policies, as `--policies` takes them: comma-separated names or JSON.
#[derive(Clone, Debug)]
pub struct PolicyList(pub Vec<Policy>);

/// `--policies`: split at the commas outside any JSON object or list, so that a
/// policy's own JSON (`{"priority_experimental":{"children":{...},...}}`) stays whole.
pub fn parse_policy_list(text: &str) -> Result<PolicyList, String> {
    let mut policies = Vec::new();
    let (mut depth, mut start, mut in_string, mut escaped) = (0i32, 0, false, false);
    let mut push = |piece: &str| -> Result<(), String> {
        let piece = piece.trim();
        if piece.is_empty() {
            return Err("an empty policy between two commas".into());
        }
        policies.push(piece.parse::<Policy>().map_err(|e| e.to_string())?);
        Ok(())
    };
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => depth += 1,
            '}' | ']' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => {
                push(&text[start..i])?;
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&text[start..])?;
    Ok(PolicyList(policies))
}
