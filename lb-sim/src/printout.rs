//! What `greeter-client simulate` prints.

use crate::report::{Report, comparison_table};
use crate::scenario::Scenario;

/// What `greeter-client simulate` prints for `reports` of `scenario`: a line saying
/// what was simulated, and the side-by-side table. The playground shows the same.
pub fn printout(scenario: &Scenario, reports: &[Report]) -> String {
    let events: Vec<String> = scenario.events.iter().map(ToString::to_string).collect();
    let load = match scenario.concurrency {
        Some(callers) => format!("closed loop, {callers} callers"),
        None => format!("at {:.0} calls/s", scenario.arrival_rate()),
    };
    let deadline = scenario
        .timeout
        .map(|t| format!(", {} deadline", humantime::format_duration(t)))
        .unwrap_or_default();
    format!(
        "simulated {} s {load}{deadline} (seed {}){}\n\n{}",
        scenario.duration.as_secs_f64(),
        scenario.seed,
        if events.is_empty() {
            String::new()
        } else {
            format!("; events: {}", events.join(", "))
        },
        comparison_table(reports)
    )
}
