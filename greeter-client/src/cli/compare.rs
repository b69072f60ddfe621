//! `greeter-client compare`: the same calls with several policies, one after the
//! other, and the table that puts them side by side.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use lb_core::{Policy, policy::RoundRobinConfig};
use lb_sim::report::comparison_table;

use super::args::{PolicyList, Servers, Workload, parse_policy_list, serve_metrics, write_svg};
use super::exit_code;

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub servers: Servers,

    /// Policies to compare, comma-separated (default: all; names listed by `--help`).
    /// Commas inside a policy's JSON do not split it:
    /// `round_robin,{"priority_experimental":{...}}` is two.
    #[arg(long, value_name = "POLICY,...", value_parser = parse_policy_list)]
    pub policies: Vec<PolicyList>,

    /// Also draw the table as an SVG picture in this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    #[command(flatten)]
    pub workload: Workload,
}

pub async fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let policies = if args.policies.is_empty() {
        Policy::all()
    } else {
        args.policies.into_iter().flat_map(|list| list.0).collect()
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
