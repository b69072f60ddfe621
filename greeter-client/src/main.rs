//! `greeter-client`: the article's client, balancing its calls over many servers.
//!
//! ```text
//! greeter-client --servers 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 \
//!                --policy least_connections --requests 300 --concurrency 8
//! greeter-client health --servers 127.0.0.1:50051 --wait 10s
//! ```
//!
//! Exit codes: 0 when every call succeeded, 1 when any failed (or a server is not
//! healthy), 2 for a usage error.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use greeter_client::{LoadSpec, health};
use lb_core::{Endpoint, Policy};

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
    /// Send calls and report where they went (what runs without a subcommand).
    Run(LoadArgs),
    /// Wait until every server answers its health check with SERVING.
    Health(HealthArgs),
}

/// `--servers`, shared by every subcommand.
#[derive(Args, Debug)]
struct Servers {
    /// Servers to call, comma-separated host:port (IPv6 as [::1]:50051).
    #[arg(
        long = "servers",
        required = true,
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    list: Vec<Endpoint>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    servers: Servers,

    /// Balancing policy: pick_first, round_robin, random or least_connections.
    #[arg(long, default_value = "round_robin")]
    policy: Policy,

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

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    let cli = Cli::parse();
    init_tracing();
    let work = async {
        match cli.command {
            Some(Command::Health(args)) => run_health(args).await,
            Some(Command::Run(args)) => run_load(args).await,
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
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("greeter-client: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let spec = LoadSpec {
        servers: args.servers.list,
        policy: args.policy,
        requests: args.requests,
        concurrency: usize::from(args.concurrency),
        name: args.name,
        seed: args.seed,
        timeout: args.timeout,
        connect_wait: Duration::from_secs(5),
    };
    let report = greeter_client::run(&spec).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.failed == 0 && report.replies_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    // Concurrently, so that --wait bounds the whole command, not each server in turn.
    let servers = args.servers.list;
    let checks = servers
        .iter()
        .map(|endpoint| health::wait_serving(endpoint, args.wait));
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
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // Warnings by default (an endpoint that fails to connect); RUST_LOG=info shows
    // every connectivity change. Logs go to stderr, so --json output stays clean.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
