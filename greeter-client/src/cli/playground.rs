//! `greeter-client playground`: a fleet of real servers, a balancer and steady load,
//! watched and driven from a web page (the `lb-playground` crate).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use lb_core::Policy;

use super::usage;

#[derive(Args, Debug)]
pub struct PlaygroundArgs {
    /// How many servers to start (greeter-server processes on 127.0.0.1); the page
    /// can add more, up to 12.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=12))]
    pub fleet: u16,

    /// The servers' weights, comma-separated, e.g. 3,1,1 (default 1 each): what
    /// weighted_round_robin and weighted_random follow.
    #[arg(long, value_delimiter = ',', value_name = "W,...", value_parser = clap::value_parser!(u32).range(1..=i64::from(lb_core::endpoint::MAX_WEIGHT)))]
    pub weights: Vec<u32>,

    /// Where to serve the page: a loopback address (the page can kill processes, so
    /// it is never offered to other machines). Port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "IP:PORT")]
    pub listen: std::net::SocketAddr,

    /// The policy to start with.
    #[arg(long, default_value = "round_robin")]
    pub policy: Policy,

    /// Calls per second, started on a clock (open loop; the default, at 200).
    #[arg(long, conflicts_with = "concurrency", value_parser = clap::value_parser!(u32).range(1..=i64::from(lb_playground::traffic::MAX_RATE)))]
    pub rate: Option<u32>,

    /// Instead of a rate: N callers, each sending its next call when its last returns.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(lb_playground::traffic::MAX_CONCURRENCY)))]
    pub concurrency: Option<u32>,

    /// Each call's deadline.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// The greeter-server to run (default: the one beside this greeter-client, as
    /// cargo builds them, or else greeter-server on the PATH).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,

    /// Seed for the balancer's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn run(args: PlaygroundArgs) -> anyhow::Result<ExitCode> {
    use lb_playground::{Options, traffic::Load};
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
    lb_playground::run(Options {
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
