//! Ejection bookkeeping: counting each endpoint's call outcomes, and ejecting and
//! returning endpoints as outlier detection ([`super::outlier`]) decides.

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::watch;
use tracing::{info, warn};

use super::outlier::OutlierDetection;
use super::pool::Pool;
use super::subchannel::Subchannel;
use super::{lock, read};
use crate::clock;

impl Pool {
    /// After a removal, fewer endpoints may leave too many ejected: let the
    /// longest-ejected ones return until the limit holds again.
    pub(super) fn keep_ejections_within_limit(&self) {
        let Some(config) = &self.settings.outlier else {
            return;
        };
        let _one_at_a_time = lock(&self.ejecting);
        let subs = read(&self.subchannels);
        let mut ejected: Vec<&Arc<Subchannel>> = subs.iter().filter(|s| s.is_ejected()).collect();
        ejected.sort_by_key(|s| s.ejected_at.load(Ordering::Relaxed));
        let mut count = ejected.len();
        for sub in ejected {
            if count == 0 || config.may_eject(count - 1, subs.len()) {
                break;
            }
            sub.ejected_at.store(0, Ordering::Relaxed);
            info!(endpoint = %sub.state.endpoint(), "returned early: too many ejected after a removal");
            count -= 1;
        }
    }

    /// Counts a finished call for outlier detection; may eject `sub` at once after too
    /// many consecutive failures.
    pub fn record_outcome(&self, sub: &Subchannel, success: bool) {
        let total = if success {
            &sub.calls_ok
        } else {
            &sub.calls_failed
        };
        total.fetch_add(1, Ordering::Relaxed);
        let Some(config) = &self.settings.outlier else {
            return;
        };
        if success {
            sub.successes.fetch_add(1, Ordering::Relaxed);
            sub.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        sub.failures.fetch_add(1, Ordering::Relaxed);
        let streak = sub.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(limit) = config.consecutive_failures
            && streak >= limit
            && !sub.is_ejected()
        {
            let reason = format!("{streak} consecutive failures");
            if self.try_eject(sub, config, &reason) {
                self.publish();
            }
        }
    }

    /// Ejects `sub` if the ejection limit allows; says so in the log.
    pub(super) fn try_eject(
        &self,
        sub: &Subchannel,
        config: &OutlierDetection,
        reason: &str,
    ) -> bool {
        let _one_at_a_time = lock(&self.ejecting);
        if sub.is_ejected() {
            return false;
        }
        let (ejected, total) = {
            let subs = read(&self.subchannels);
            (subs.iter().filter(|s| s.is_ejected()).count(), subs.len())
        };
        if !config.may_eject(ejected, total) {
            warn!(endpoint = %sub.state.endpoint(), %reason, ejected, total,
                "not ejected: max_ejection_percent {}% reached", config.max_ejection_percent);
            return false;
        }
        let times = sub.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        sub.ejected_at.store(clock::now_nanos(), Ordering::Relaxed);
        sub.ejections.fetch_add(1, Ordering::Relaxed);
        sub.consecutive_failures.store(0, Ordering::Relaxed);
        info!(endpoint = %sub.state.endpoint(), %reason, duration = ?config.ejection_time(times),
            "ejected by outlier detection");
        true
    }

    /// One outlier-detection interval: the success-rate detector, then returns.
    pub fn outlier_interval(&self, config: &OutlierDetection) {
        let subs: Vec<Arc<Subchannel>> = read(&self.subchannels).clone();
        let stats: Vec<(u64, u64)> = subs
            .iter()
            .map(|s| {
                (
                    s.successes.swap(0, Ordering::Relaxed),
                    s.failures.swap(0, Ordering::Relaxed),
                )
            })
            .collect();
        let mut changed = false;
        let mut judged_now = Vec::new();
        for i in config.success_rate_outliers(&stats) {
            let (ok, failed) = stats[i];
            let rate = 100.0 * ok as f64 / (ok + failed) as f64;
            let reason = format!("success rate {rate:.1}%, far below its peers'");
            if self.try_eject(&subs[i], config, &reason) {
                changed = true;
                judged_now.push(i);
            }
        }
        let now = clock::now_nanos();
        for (i, sub) in subs.iter().enumerate() {
            let at = sub.ejected_at.load(Ordering::Relaxed);
            let times = sub.times_ejected.load(Ordering::Relaxed);
            if at != 0 {
                let until = at.saturating_add(config.ejection_time(times).as_nanos() as u64);
                if now >= until {
                    sub.ejected_at.store(0, Ordering::Relaxed);
                    info!(endpoint = %sub.state.endpoint(), "returned from ejection");
                    changed = true;
                }
            } else if times > 0 && !judged_now.contains(&i) {
                // A50: each clean interval forgives one past ejection.
                sub.times_ejected.store(times - 1, Ordering::Relaxed);
            }
        }
        if changed {
            self.publish();
        }
    }
}

/// Runs outlier detection's interval until the balancer is dropped.
pub(super) async fn run(
    pool: Arc<Pool>,
    config: OutlierDetection,
    mut stopped: watch::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.tick().await; // The first tick is immediate; judge after a full interval.
    loop {
        tokio::select! {
            _ = ticks.tick() => pool.outlier_interval(&config),
            _ = stopped.changed() => return,
        }
    }
}
