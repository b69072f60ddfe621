//! The balancing client: sends `SayHello` calls through [`lb_core::Balancer`] and
//! reports where they went.
//!
//! - [`load`]: runs a closed-loop load (N workers, each sending its next call as soon as
//!   the last one returns) and collects what happened.
//! - [`report`]: the result, as a table with bars for people or JSON for scripts, and
//!   the side-by-side table of several policies (`compare`, `simulate`).
//! - [`simulate`]: a seeded discrete-event simulation in virtual time, with the same
//!   pickers as the real balancer.
//! - [`svg`]: the comparison table as an SVG picture (`--svg FILE`).
//! - [`live`]: a view refreshed every second while a run goes on (`--live`).
//! - [`playground`]: a fleet, a balancer and steady load, watched and driven from a
//!   web page (`greeter-client playground`).
//! - [`health`]: asks servers' `grpc.health.v1.Health` whether they are SERVING (the
//!   scripts use it to wait for servers to come up).
#![forbid(unsafe_code)]

pub mod health;
pub mod live;
pub mod load;
pub mod playground;
pub mod report;
pub mod simulate;
pub mod svg;

pub use load::{LoadSpec, run};
pub use report::Report;
