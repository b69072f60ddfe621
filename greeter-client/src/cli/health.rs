//! `greeter-client health`: asks every server's `grpc.health.v1.Health` until each
//! says SERVING (the scripts wait for servers with it).

use std::{process::ExitCode, time::Duration};

use clap::Args;
use greeter_client::health;

use super::args::Servers;
use super::exit_code;

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    pub servers: Servers,

    /// Keep checking for this long before giving up, e.g. 10s.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
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
