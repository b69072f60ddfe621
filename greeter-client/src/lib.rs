//! The balancing client: sends `SayHello` calls through [`lb_core::Balancer`] and
//! reports where they went.
//!
//! - [`load`]: runs a closed-loop load (N workers, each sending its next call as soon as
//!   the last one returns) and collects what happened.
//! - [`live`]: a view refreshed every second while a run goes on (`--live`).
//! - [`health`]: asks servers' `grpc.health.v1.Health` whether they are SERVING (the
//!   scripts use it to wait for servers to come up).
//!
//! What a run produces is an [`lb_sim::Report`], the same type the simulator makes, so
//! real and simulated runs print the same tables. The simulator is the `lb-sim` crate,
//! the web playground `lb-playground`; the binary's subcommands are one file each
//! under `src/cli/`.
#![forbid(unsafe_code)]

pub mod health;
pub mod live;
pub mod load;

pub use lb_sim::Report;
pub use load::{LoadSpec, run};
