//! `greeter-client [run]`: SayHello calls through a balancer, and where they went.
//!
//! The path of one call, which `greeter_client::run` takes for every call: a
//! [`Balancer`](lb_core::Balancer) over the servers with the policy asked for, the
//! article's client on top of it (`MyServiceClient::new(balancer)`), and each reply's
//! `x-served-by` counted in the report.

use std::process::ExitCode;

use clap::Args;
use lb_core::{Policy, policy::RoundRobinConfig};

use super::args::{Servers, Workload, serve_metrics};
use super::{exit_code, usage};

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub servers: Servers,

    /// Policy: a registered name (listed by `--help`, from lb-core's registry), or gRPC
    /// service-config JSON such as '{"least_request":{"choiceCount":3}}' (default
    /// round_robin, or --service-config's loadBalancingConfig).
    #[arg(long)]
    pub policy: Option<Policy>,

    #[command(flatten)]
    pub workload: Workload,

    /// Log why each of the first N picks was made (to stderr).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub explain: u64,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
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
