//! `greeter-client playground`: a fleet, a balancer and steady load, watched and
//! driven from a web page.
//!
//! ```text
//! greeter-client playground                 # 3 servers, http://127.0.0.1:8080/
//! greeter-client playground --fleet 5 --policy least_request --rate 500
//! ```
//!
//! What runs:
//!
//! - [`fleet`]: real `greeter-server` processes on 127.0.0.1, killed with SIGKILL,
//!   restarted on their port, slowed down and drained through their standard input;
//! - one [`Balancer`] over them, whose policy the page switches while calls go on;
//! - [`traffic`]: calls at a steady rate (or from N callers in closed loop);
//! - once a second, a [`Snapshot`] of it all: per server its calls per second, share,
//!   calls in flight, connectivity, health and ejection; the latency percentiles,
//!   failures and retries of that second; sent to the page as a server-sent event;
//! - [`api`]: the page (HTML, CSS and script, built into the binary), the events, and
//!   a small JSON API for the page's buttons, which answers its own page only.
//!
//! Ctrl-C (or SIGTERM, or closing the terminal) stops every server it started; and
//! each server exits by itself when the playground's end of its pipe closes.

pub mod api;
pub mod docs;
pub mod fleet;
pub mod state;
pub mod traffic;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use lb_core::Balancer;

use fleet::Fleet;
pub use state::{Event, Options, Playground, PolicyView, ServerRow, Snapshot};
use state::{say, tick};
use traffic::Traffic;

/// How long the playground's balancer waits between attempts to reconnect.
const RECONNECT: lb_core::Backoff = lb_core::Backoff {
    initial: Duration::from_millis(200),
    multiplier: 1.6,
    jitter: 0.2,
    max: Duration::from_secs(1),
};

/// Starts the fleet, the balancer, the load and the page, and runs until Ctrl-C.
pub async fn run(options: Options) -> anyhow::Result<()> {
    // The page's port first: if it is taken, nothing else has started.
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|err| api::bind_error(options.listen, err))?;
    let listen = listener.local_addr().context("the page's address")?;
    let mut signals = Signals::listen()?;

    let mut fleet = Fleet::new(options.server_binary.clone());
    // Ctrl-C while the servers start stops the ones already running.
    let started = tokio::select! {
        started = start(&mut fleet, &options) => Some(started),
        why = signals.next() => {
            say(&format!("{why}: stopping the servers"));
            None
        }
    };
    let balancer = match started {
        Some(Ok(balancer)) => balancer,
        Some(Err(err)) => {
            fleet.stop_all().await;
            return Err(err);
        }
        None => {
            fleet.stop_all().await;
            return Ok(());
        }
    };
    let views = fleet.views();
    let traffic = Traffic::start(balancer.clone(), options.load, options.timeout);
    let playground = Arc::new(Playground::new(
        balancer,
        fleet,
        views,
        traffic,
        options.timeout,
    ));
    playground.event(
        "action",
        format!(
            "started {} servers; {} with {}",
            options.servers,
            options.load,
            options.policy.name()
        ),
    );
    let mut first = playground.snapshot.subscribe();
    let ticker = tokio::spawn(tick(playground.clone()));
    // The page is offered once there is something to show on it.
    let _ = first.changed().await;
    let page = tokio::spawn(api::serve(listener, listen, playground.clone()));
    say(&format!(
        "playground: open http://{listen}/ (Ctrl-C stops it and the servers it started)"
    ));

    let why = signals.next().await;
    say(&format!("{why}: stopping the servers"));
    ticker.abort();
    page.abort();
    // An action may hold the fleet for a few seconds (a server that is slow to
    // start); a second signal does not wait for it. The servers still stop then: each
    // exits when its standard input, the playground's end of the pipe, closes.
    tokio::select! {
        () = async { playground.fleet.lock().await.stop_all().await } => say("stopped"),
        why = signals.next() => say(&format!("{why} again: exiting at once")),
    }
    Ok(())
}

/// The servers, then a balancer over them once they have connected.
async fn start(fleet: &mut Fleet, options: &Options) -> anyhow::Result<Balancer> {
    for index in 0..options.servers {
        let weight = options.weights.get(index).copied().unwrap_or(1);
        fleet.add(weight).await?;
    }
    let balancer = Balancer::builder(fleet.endpoints())
        .policy(options.policy.clone())
        .seed(options.seed)
        .health_check(Some(""))
        // Reconnect within a second, so that a restarted server is seen at once
        // (the default waits up to 120 s between attempts, which spares a real fleet
        // but would leave a learner waiting).
        .backoff(RECONNECT)
        // Eject a server whose calls keep failing, as `run --outlier-detection` does.
        .outlier_detection(Some(lb_sim::demo_outlier_detection()))
        .build()?;
    balancer.wait_settled(Duration::from_secs(5)).await;
    Ok(balancer)
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed): all mean "stop".
struct Signals {
    #[cfg(unix)]
    signals: Vec<(tokio::signal::unix::Signal, &'static str)>,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut signals = Vec::new();
            for (kind, name) in [
                (SignalKind::interrupt(), "SIGINT"),
                (SignalKind::terminate(), "SIGTERM"),
                (SignalKind::hangup(), "SIGHUP"),
            ] {
                signals.push((signal(kind).context("cannot listen for signals")?, name));
            }
            Ok(Self { signals })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let waits = self.signals.iter_mut().map(|(signal, name)| {
                Box::pin(async move {
                    signal.recv().await;
                    *name
                })
            });
            futures::future::select_all(waits).await.0
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
