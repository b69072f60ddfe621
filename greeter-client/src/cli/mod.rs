//! The subcommands of `greeter-client`, one file each, and what they share.
//!
//! | file | subcommand |
//! |---|---|
//! | `run.rs` | `greeter-client [run]`: calls through a balancer, and where they went |
//! | `compare.rs` | `compare`: the same calls with several policies, side by side |
//! | `simulate.rs` | `simulate`: the same pickers in virtual time ([`lb_sim`]) |
//! | `health.rs` | `health`: waits until every server is SERVING |
//! | `playground.rs` | `playground`: a fleet and a balancer driven from a web page |
//! | `args.rs` | `--servers` and the workload's flags, shared by several |

pub mod args;
pub mod compare;
pub mod health;
pub mod playground;
pub mod run;
pub mod simulate;

use std::process::ExitCode;

use lb_core::Policy;

/// A usage error found after parsing: printed like clap's, exit code 2.
pub fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(message))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

pub fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The policies' names in `--help` come from lb-core's registry (the built-ins and any
/// registered), so they cannot go stale: `-h` lists the names, `--help` a line each.
pub fn with_policy_lists(command: clap::Command) -> clap::Command {
    let names = Policy::names().join(", ");
    let table = Policy::table();
    let json = "or gRPC service-config JSON such as '{\"least_request\":{\"choiceCount\":3}}'";
    let one = |arg: clap::Arg| {
        arg.help(format!("Policy: {names}; {json}"))
            .long_help(format!("Policy, by name:\n{table}\n{json}"))
    };
    let several = |arg: clap::Arg| {
        arg.help(format!("Policies, comma-separated (default: all): {names}"))
            .long_help(format!(
                "Policies, comma-separated (default: all), each by name:\n{table}\n{json}"
            ))
    };
    command
        .mut_arg("policy", one)
        .mut_subcommand("run", |c| c.mut_arg("policy", one))
        .mut_subcommand("playground", |c| c.mut_arg("policy", one))
        .mut_subcommand("compare", |c| c.mut_arg("policies", several))
        .mut_subcommand("simulate", |c| c.mut_arg("policies", several))
}

/// The exit code of a subcommand's result: 2 for a usage error, 1 for any other.
pub fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if err.is::<UsageError>() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("greeter-client: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
