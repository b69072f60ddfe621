//! `cargo run -p least-loaded`: registers `least_loaded`, then runs it beside the
//! built-in policies through the real balancer (three greeter-servers on 127.0.0.1,
//! one of them slow) and in the simulator, and prints both comparisons.

use std::time::Duration;

use greeter_client::LoadSpec;
use lb_core::Policy;
use lb_sim::{Scenario, report::comparison_table, simulate};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    least_loaded::register()?;
    let policies: Vec<Policy> = ["round_robin", "least_connections", "least_loaded"]
        .iter()
        .map(|name| name.parse())
        .collect::<Result<_, _>>()?;

    // Two fast servers and a slow one, on ports the OS picks.
    let fast = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0])).await?;
    let slow = greeter_server::spawn(
        greeter_server::Config::on_ports(&[0]).with_latency(Duration::from_millis(20)),
    )
    .await?;
    let list = format!("{},{}", fast.endpoints_list(), slow.endpoints_list());
    let servers = lb_core::parse_endpoint_list(&list)?;
    let mut spec = LoadSpec::new(servers, Policy::default(), 600);
    spec.concurrency = 8;
    spec.seed = Some(7);
    let reports = greeter_client::load::compare(&spec, &policies).await?;
    println!(
        "real servers ({list}; the last is 20 ms slow), 600 calls per policy, concurrency 8\n"
    );
    print!("{}", comparison_table(&reports));

    let scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).map_err(anyhow::Error::msg)?;
    let reports: Vec<_> = policies
        .iter()
        .map(|policy| simulate(&scenario, policy).report)
        .collect();
    println!(
        "\nsimulated: backends 2ms, 2ms, 20ms, {} s at {:.0} calls/s\n",
        scenario.duration.as_secs_f64(),
        scenario.arrival_rate()
    );
    print!("{}", comparison_table(&reports));

    fast.shutdown().await?;
    slow.shutdown().await?;
    Ok(())
}
