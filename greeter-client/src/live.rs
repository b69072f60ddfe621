//! The live view: where calls are going, second by second, while a run goes on.
//!
//! In a terminal the screen is redrawn every second with a table (calls per second per
//! server, with a bar, and each server's state); otherwise one plain line per second,
//! which scripts and logs can keep.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use lb_core::{Balancer, Endpoint};
use tokio::time::Instant;

use crate::load::Progress;

/// Prints the view every second until aborted.
pub async fn show(balancer: Balancer, progress: Arc<Progress>) {
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last: HashMap<Endpoint, u64> = HashMap::new();
    let mut last_ok = 0;
    loop {
        ticks.tick().await;
        let statuses = balancer.endpoints();
        let ok = progress.ok.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        let rates: Vec<u64> = statuses
            .iter()
            .map(|s| s.calls - last.get(&s.endpoint).copied().unwrap_or(0))
            .collect();
        let total: u64 = rates.iter().sum::<u64>().max(1);
        let t = started.elapsed().as_secs();
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
                let state = if s.ejected {
                    format!("{} ejected", s.connectivity)
                } else {
                    s.connectivity.to_string()
                };
                out.push_str(&format!(
                    "  {:<22} {:>6}/s  {:<30}  {state}\n",
                    s.endpoint.to_string(),
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
                    format!("{} {}/s {}{ejected}", s.endpoint, rate, s.connectivity)
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
        last = statuses
            .into_iter()
            .map(|s| (s.endpoint, s.calls))
            .collect();
        last_ok = ok;
    }
}
