//! `greeter-client simulate`: backends and calls in virtual time, picked by the same
//! policies ([`lb_sim`]).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use lb_core::{OutlierDetection, Policy};
use lb_sim::{BackendSpec, Event, Scenario, simulate};

use super::args::{PolicyList, parse_outlier_config, parse_policy_list, write_svg};
use super::usage;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// A backend: its mean service time, optionally `,capacity=N` and `,weight=W`
    /// (e.g. `20ms,capacity=4`). Repeat for each backend.
    #[arg(long = "backend", value_name = "LATENCY[,capacity=N][,weight=W]")]
    pub backends: Vec<BackendSpec>,

    /// A scenario file (JSON) instead of --backend and friends.
    #[arg(long, conflicts_with = "backends")]
    pub scenario: Option<PathBuf>,

    /// Calls each backend serves at once, unless its --backend says otherwise.
    #[arg(long, default_value_t = 8)]
    pub capacity: usize,

    /// Arrival rate as a fraction of the fleet's total capacity.
    #[arg(long, default_value_t = 0.6)]
    pub utilisation: f64,

    /// Arrival rate in calls per second (instead of --utilisation).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Closed loop: N callers, each sending its next call as soon as its last one
    /// returns, as `greeter-client run` does (instead of arrivals at a rate).
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: Option<u64>,

    /// Each call's deadline, e.g. 1s: a call not answered in time fails with
    /// DEADLINE_EXCEEDED and is cancelled on its backend.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Eject backends whose calls keep failing (with --timeout: running out of time),
    /// with the same settings as `run --outlier-detection`.
    #[arg(long)]
    pub outlier_detection: bool,

    /// Backends report their load with every answer (ORCA, as greeter-server --orca:
    /// calls per second and the share of their capacity in use), for
    /// weighted_round_robin's reported weights.
    #[arg(long)]
    pub orca: bool,

    /// Outlier detection with these settings instead, in gRFC A50's JSON (as `run
    /// --outlier-config`).
    #[arg(long, value_name = "JSON", conflicts_with = "outlier_detection", value_parser = parse_outlier_config)]
    pub outlier_config: Option<OutlierDetection>,

    /// Simulated time during which calls arrive.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// A change during the run: `5s slow 3 20ms`, `8s recover 3`, `10s remove 1`,
    /// `12s add 2ms`. Repeatable.
    #[arg(long = "event", value_name = "EVENT")]
    pub events: Vec<Event>,

    /// Policies to simulate, comma-separated (default: all; names listed by `--help`).
    /// Commas inside a policy's JSON do not split it:
    /// `round_robin,{"priority_experimental":{...}}` is two.
    #[arg(long, value_name = "POLICY,...", value_parser = parse_policy_list)]
    pub policies: Vec<PolicyList>,

    /// Key space for ring_hash and maglev (0: no key).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,

    /// Seed for arrivals, service times and picks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Print why each of the first N picks of each policy was made.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub explain: u64,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Also draw the table as an SVG picture in this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
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
        scenario.outlier = Some(lb_sim::demo_outlier_detection());
    }
    if let Some(config) = &args.outlier_config {
        scenario.outlier = Some(config.clone());
    }
    scenario.explain = args.explain;
    scenario.check().map_err(usage)?;
    let policies = if args.policies.is_empty() {
        Policy::all()
    } else {
        args.policies.into_iter().flat_map(|list| list.0).collect()
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
        print!("{}", lb_sim::printout(&scenario, &reports));
    }
    Ok(ExitCode::SUCCESS)
}
