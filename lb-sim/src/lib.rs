//! A deterministic, discrete-event simulation of a client balancing calls over
//! backends, using the *same picker code* as the real balancer.
//!
//! # The model
//! - **Backends** have a mean service time and a capacity: `capacity` calls are served
//!   at once, more wait in a first-in, first-out queue (a server with that many
//!   workers). Service times are exponentially distributed around the mean, so some
//!   calls are much slower than the mean, as on real servers.
//! - **Calls arrive** open-loop, as a Poisson process: independent arrivals at a fixed
//!   average rate, whether or not earlier calls have finished, as from many
//!   independent users. The rate is given directly, or as a *utilisation* of the
//!   fleet's total capacity (`Σ capacity / mean service time`).
//! - Or **closed-loop** (`concurrency`): N callers, each sending its next call as soon
//!   as its last one returns, as greeter-client does. The load then adapts to the
//!   fleet: a slow backend slows its callers down instead of piling calls up.
//! - **Deadlines** (`timeout`): a call not answered in time fails with
//!   DEADLINE_EXCEEDED and is cancelled on its backend (taken out of the queue, or its
//!   worker freed), as a gRPC server drops a cancelled call. An overloaded backend then
//!   shows up as failed calls, not as a p99 of minutes.
//! - **Outlier detection** (`outlier`): failed calls count against their backend as in
//!   the real balancer (lb-core's `OutlierDetection`): 5 in a row, or a success rate
//!   far below the others' at a review every interval, eject it; the picker is rebuilt
//!   without it (as the balancer publishes a new snapshot) until its time is up. With
//!   deadlines, a backend too slow to answer in time leaves the draws.
//! - **Each call is picked** by the policy's [`Picker`](lb_core::Picker), reading real
//!   [`EndpointState`](lb_core::EndpointState)s: the in-flight count rises at the pick and falls when the call
//!   completes, and the latency estimate is fed with the call's full latency (queueing
//!   included), all in virtual time.
//! - **Events** change the fleet mid-run: a backend slows down or recovers, leaves or
//!   joins.
//!
//! Time is virtual (integer nanoseconds) and every random number comes from generators
//! seeded from `--seed`, so the same scenario prints the same table, byte for byte.
//! A million calls take a second or two.
//!
//! ```
//! use lb_sim::{Scenario, simulate};
//! use lb_core::{Policy, policy::RoundRobinConfig};
//!
//! let scenario: Scenario = Scenario::with_backends(&["2ms", "2ms", "20ms"]).unwrap();
//! let report = simulate(&scenario, &Policy::new(RoundRobinConfig::default())).report;
//! assert_eq!(report.backends.len(), 3);
//! ```

//!
//! # The crate
//! - [`scenario`]: what is simulated: backends, load, deadlines, events (`--backend`,
//!   `--event`, or a JSON file);
//! - `engine.rs`: the simulation itself, in virtual time ([`simulate`]);
//! - [`report`]: what a run produced, simulated or real (greeter-client's runs make the
//!   same [`Report`]), and the side-by-side table of several policies;
//! - [`printout`] and [`svg`]: that table as text and as an SVG picture;
//! - [`demo_outlier_detection`]: the outlier-detection settings the demos use.
#![forbid(unsafe_code)]

mod demo;
mod engine;
mod printout;
pub mod report;
pub mod scenario;
pub mod svg;
#[cfg(test)]
mod tests;

pub use demo::demo_outlier_detection;
pub use engine::{Outcome, simulate};
pub use printout::printout;
pub use report::Report;
pub use scenario::{BackendSpec, Change, Event, MAX_CALLS, MAX_CONCURRENCY, Scenario};
