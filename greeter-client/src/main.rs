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
//!
//! # The path of one call
//! What the article's Python client does with one channel, this one does with a
//! balancer under the same generated client (`greeter_client::load`, for every call):
//!
//! ```text
//! let endpoints = lb_core::parse_endpoint_list("127.0.0.1:50051,127.0.0.1:50052")?;
//! let balancer = Balancer::builder(endpoints).policy("round_robin".parse()?).build()?;
//! let mut client = MyServiceClient::new(balancer);          // tonic's generated client
//! let reply = client.say_hello(HelloRequest { name: "world".into() }).await?;
//! let server = reply.metadata().get("x-served-by");          // who answered
//! assert_eq!(reply.into_inner().message, "Hello, world!");
//! ```
//!
//! Each subcommand is one file under `src/cli/`: `run.rs` (the default), `compare.rs`,
//! `simulate.rs` (the `lb-sim` crate), `health.rs`, `playground.rs` (the
//! `lb-playground` crate); `args.rs` holds the flags they share.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::{
    compare::CompareArgs, finish, health::HealthArgs, playground::PlaygroundArgs, run::LoadArgs,
    simulate::SimulateArgs, with_policy_lists,
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
        return finish(cli::playground::run(args).await);
    }
    let work = async {
        match cli.command {
            Some(Command::Health(args)) => cli::health::run(args).await,
            Some(Command::Run(args)) => cli::run::run(args).await,
            Some(Command::Compare(args)) => cli::compare::run(args).await,
            Some(Command::Simulate(args)) => cli::simulate::run(args),
            Some(Command::Playground(_)) => unreachable!("run above"),
            None => cli::run::run(cli.load).await,
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
