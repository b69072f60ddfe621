//! The live view: where calls are going, second by second, while a run goes on.
//!
//! In a terminal the screen is redrawn every second with a table (calls per second per
//! server, with a bar, each server's state and, under `weighted_round_robin`, the weight it
//! is picked by); otherwise one plain line per second, which scripts and logs can keep.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lb_core::{Balancer, Endpoint};
use tokio::time::Instant;

/// Calls finished so far, for the live view.
#[derive(Debug, Default)]
pub struct Progress {
    /// Calls answered OK.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
}

/// Prints the view every second until `done` resolves (the run is over), and then once
/// more for the run's last second if its tick had not come yet: a 14 s run shows
/// t=1s to t=14s, however the end and the 14th tick fall.
pub async fn show(balancer: Balancer, progress: Arc<Progress>, done: impl Future<Output = ()>) {
    let started = Instant::now();
    let mut view = View {
        terminal: std::io::stdout().is_terminal(),
        last: HashMap::new(),
        last_ok: 0,
        last_t: 0,
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut done = std::pin::pin!(done);
    loop {
        tokio::select! {
            _ = ticks.tick() => view.print(&balancer, &progress, started.elapsed().as_secs()),
            () = &mut done => {
                let end = started.elapsed().as_secs_f64().round() as u64;
                if end > view.last_t {
                    view.print(&balancer, &progress, end);
                }
                return;
            }
        }
    }
}

/// What the last line showed, to print the next one's rates.
struct View {
    terminal: bool,
    last: HashMap<Endpoint, u64>,
    last_ok: u64,
    last_t: u64,
}

impl View {
    /// One line (or, in a terminal, one screen) for second `t` of the run.
    fn print(&mut self, balancer: &Balancer, progress: &Progress, t: u64) {
        let terminal = self.terminal;
        let (last, last_ok) = (&self.last, self.last_ok);
        let statuses = balancer.endpoints();
        let ok = progress.ok.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        let rates: Vec<u64> = statuses
            .iter()
            .map(|s| s.calls - last.get(&s.endpoint).copied().unwrap_or(0))
            .collect();
        let total: u64 = rates.iter().sum::<u64>().max(1);
        let mut out = String::new();
        if terminal {
            out.push_str("\x1b[2J\x1b[H"); // clear the screen, cursor home
            out.push_str(&format!(
                "t={t}s  {} calls/s  ok {ok}  failed {failed}  retries {}\n\n",
                ok - last_ok,
                balancer.retries()
            ));
            for (s, rate) in statuses.iter().zip(&rates) {
                let bar = "█".repeat((*rate * 30 / total) as usize);
                let mut state = if s.ejected {
                    format!("{} ejected", s.connectivity)
                } else {
                    s.connectivity.to_string()
                };
                if let Some(weight) = s.weight {
                    state.push_str(&format!("  weight {}", show_weight(weight)));
                }
                out.push_str(&format!(
                    "  {:<22} {:>6}/s  {:<30}  {state}\n",
                    place(&s.endpoint),
                    rate,
                    bar
                ));
            }
        } else {
            let parts: Vec<String> = statuses
                .iter()
                .zip(&rates)
                .map(|(s, rate)| {
                    let ejected = if s.ejected { " ejected" } else { "" };
                    let weight = s
                        .weight
                        .map(|w| format!(" weight={}", show_weight(w)))
                        .unwrap_or_default();
                    format!(
                        "{} {}/s {}{ejected}{weight}",
                        place(&s.endpoint),
                        rate,
                        s.connectivity
                    )
                })
                .collect();
            out.push_str(&format!(
                "t={t}s ok={ok} failed={failed} retries={} | {}\n",
                balancer.retries(),
                parts.join(" | ")
            ));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        self.last = statuses
            .into_iter()
            .map(|s| (s.endpoint, s.calls))
            .collect();
        self.last_ok = ok;
        self.last_t = t;
    }
}

/// An endpoint as the live view names it: its address, and where it runs if the list
/// said (`127.0.0.1:50051@zone-a#1`).
fn place(endpoint: &Endpoint) -> String {
    let mut place = endpoint.to_string();
    if let Some(locality) = endpoint.locality() {
        place.push_str(&format!("@{locality}"));
    }
    if endpoint.priority() != 0 {
        place.push_str(&format!("#{}", endpoint.priority()));
    }
    place
}

/// A weight as the live view shows it: whole when it is (typed weights), else with
/// three significant digits (reported ones: `qps / utilisation`, say 1530 or 0.512).
fn show_weight(weight: f64) -> String {
    if weight.fract() == 0.0 || weight >= 100.0 {
        format!("{weight:.0}")
    } else if weight >= 10.0 {
        format!("{weight:.1}")
    } else {
        format!("{weight:.3}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weights_are_shown_short() {
        let shown: Vec<String> = [3.0, 1530.4, 45.26, 0.5123].map(super::show_weight).into();
        assert_eq!(shown, ["3", "1530", "45.3", "0.512"]);
    }
}
