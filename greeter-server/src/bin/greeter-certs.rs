//! `greeter-certs`: writes a throwaway CA and server and client certificates, for
//! trying TLS and mutual TLS on one machine (see `greeter_server::certs`).
//!
//! ```text
//! greeter-certs --out certs
//! greeter-server --tls-cert certs/server.pem --tls-key certs/server.key --ca certs/ca.pem
//! greeter-client --ca certs/ca.pem --tls-cert certs/client.pem --tls-key certs/client.key
//! ```

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use greeter_server::certs::{DemoPki, SERVER_NAMES};

/// Writes a new demo CA (ca.pem) and certificates signed by it: server.pem/server.key
/// (for localhost, 127.0.0.1 and ::1) and client.pem/client.key (for mutual TLS).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The directory to write into (created if missing; files there are replaced).
    #[arg(long, default_value = "certs")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let written = DemoPki::generate()
        .map_err(|e| format!("cannot make certificates: {e}"))
        .and_then(|pki| pki.write_to(&args.out).map_err(|e| e.to_string()));
    match written {
        Ok(()) => {
            let dir = args.out.display();
            println!(
                "wrote {dir}/ca.pem (demo CA), {dir}/server.pem + server.key (for {}), {dir}/client.pem + client.key",
                SERVER_NAMES.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("greeter-certs: error: {err}");
            ExitCode::FAILURE
        }
    }
}
