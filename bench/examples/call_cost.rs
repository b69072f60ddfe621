//! What one call costs the client, in instructions: a direct tonic `Channel` against
//! the balancer (`pick_first` over the same one server), and the balancer with its
//! health checks, liveness pings or retries turned off, to see which part costs what.
//!
//! Wall-clock time on these shared machines varies by a factor of 3 from day to day;
//! instructions counted by valgrind do not. Run each variant twice, with N and 2N
//! calls, and the difference divided by N is the cost of one call, with the start-up
//! (connecting, the runtime) taken out:
//!
//! ```text
//! scripts/call-cost.sh        # VARIANTS, CONCURRENCY, CALLS to choose
//! ```
//!
//! Variants: `direct`, `balancer`, `no-health`, `no-liveness`, `no-retries`, `bare`
//! (none of the three). `callgrind_annotate` on the two files shows where the
//! difference goes; docs/BENCHMARKS.md has the figures.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::{Context, bail};
use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, Endpoint, RetryPolicy};
use tonic::transport::Channel;

/// A client under measurement.
#[derive(Clone)]
enum Client {
    Direct(MyServiceClient<Channel>),
    Balancer(MyServiceClient<Balancer>),
}

impl Client {
    async fn call(&mut self) -> anyhow::Result<()> {
        let request = HelloRequest {
            name: "bench".into(),
        };
        match self {
            Self::Direct(client) => client.say_hello(request).await.map(drop)?,
            Self::Balancer(client) => client.say_hello(request).await.map(drop)?,
        }
        Ok(())
    }
}

/// The balancer over `endpoint`, with `pick_first` and the parts asked for.
fn balancer(
    endpoint: Endpoint,
    health: bool,
    liveness: bool,
    retries: bool,
) -> anyhow::Result<Client> {
    let mut builder = Balancer::builder([endpoint])
        .policy("pick_first".parse()?)
        .seed(1);
    if !health {
        builder = builder.health_check(None);
    }
    if !liveness {
        builder = builder.liveness(None);
    }
    if !retries {
        builder = builder.retry(RetryPolicy::disabled());
    }
    Ok(Client::Balancer(MyServiceClient::new(builder.build()?)))
}

const USAGE: &str =
    "usage: call_cost ADDR direct|balancer|no-health|no-liveness|no-retries|bare CONCURRENCY CALLS";

const VARIANTS: [&str; 6] = [
    "direct",
    "balancer",
    "no-health",
    "no-liveness",
    "no-retries",
    "bare",
];

/// The command line: (server, variant, concurrency, calls), or what is wrong with it.
fn parse(args: &[String]) -> anyhow::Result<(SocketAddr, String, u64, u64)> {
    let [addr, variant, concurrency, calls] = args else {
        bail!("{USAGE}");
    };
    if !VARIANTS.contains(&variant.as_str()) {
        bail!("unknown variant `{variant}`; {USAGE}");
    }
    Ok((
        addr.parse().context("ADDR: host:port")?,
        variant.clone(),
        concurrency.parse().context("CONCURRENCY: a number")?,
        calls.parse().context("CALLS: a number")?,
    ))
}

async fn run(addr: SocketAddr, variant: &str, concurrency: u64, calls: u64) -> anyhow::Result<()> {
    let endpoint: Endpoint = addr.to_string().parse()?;
    let client = match variant {
        "direct" => {
            let channel = Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            Client::Direct(MyServiceClient::new(channel))
        }
        "balancer" => balancer(endpoint, true, true, true)?,
        "no-health" => balancer(endpoint, false, true, true)?,
        "no-liveness" => balancer(endpoint, true, false, true)?,
        "no-retries" => balancer(endpoint, true, true, false)?,
        "bare" => balancer(endpoint, false, false, false)?,
        other => bail!("unknown variant `{other}`"),
    };
    // One call first: connected (the balancer waits for READY), outside the count.
    client.clone().call().await?;
    let per_caller = calls / concurrency.max(1);
    let callers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_caller {
                    client.call().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for caller in callers {
        caller.await??;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, variant, concurrency, calls) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("call_cost: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(addr, &variant, concurrency, calls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("call_cost: {err:#}");
            ExitCode::FAILURE
        }
    }
}
