//! Ejection bookkeeping: counting each endpoint's call outcomes, and ejecting and
//! returning endpoints as outlier detection ([`super::outlier`]) decides.

use std::sync::{Arc, atomic::Ordering};

use rand::{SeedableRng, rngs::SmallRng};

use tokio::sync::watch;
use tracing::{info, warn};

use super::outlier::OutlierDetection;
use super::pool::Pool;
use super::subchannel::Subchannel;
use crate::clock;
use crate::sync::{lock, read};

impl Pool {
    /// After a removal, fewer endpoints may leave too many ejected: let the
    /// longest-ejected ones return until the limit holds again.
    pub(crate) fn keep_ejections_within_limit(&self) {
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
        // For the policies that count failures as load; a healthy endpoint's success
        // changes nothing there, and costs no reading of the clock.
        if !success || sub.state.has_failed_lately() {
            sub.state.record_outcome(success, clock::now_nanos());
        }
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
    pub(crate) fn try_eject(
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
        // Enforcement draws from the balancer's seed and the interval's number.
        let interval = self.intervals.fetch_add(1, Ordering::Relaxed);
        let mut rng = SmallRng::seed_from_u64(
            self.settings.seed ^ interval.wrapping_mul(0xA24B_AED4_963E_E407),
        );
        for (i, reason) in config.interval_outliers(&stats, &mut rng) {
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
pub(crate) async fn run(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{SeedableRng, rngs::SmallRng};
    use tokio::time::advance;

    use super::*;
    use crate::subchannels::subchannel::Settings;
    use crate::sync::write;
    use crate::{Backoff, Policy};

    const BASE: Duration = Duration::from_secs(10);

    /// A pool of `n` endpoints that never connect (no task is started): only the
    /// bookkeeping runs. Returns the sender whose drop would stop tasks, to keep it.
    fn pool(n: usize) -> (Arc<Pool>, watch::Sender<()>) {
        let config = OutlierDetection {
            interval: Duration::from_secs(1),
            base_ejection_time: BASE,
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
            consecutive_failures: Some(3),
            success_rate: None,
            failure_percentage: None,
        };
        let settings = Settings {
            connect_timeout: Duration::from_secs(1),
            backoff: Backoff::default(),
            health_service: None,
            outlier: Some(config),
            latency_decay: crate::latency::DEFAULT_DECAY,
            seed: 0,
            tls: None,
            liveness: None,
            max_connections: 1,
        };
        let (stop, stopped) = watch::channel(());
        let pool = Pool::new(
            Arc::new(Policy::default()),
            settings,
            stopped,
            SmallRng::seed_from_u64(0),
        );
        for i in 0..n {
            let endpoint = format!("10.0.0.{i}:80").parse().expect("valid");
            let sub = Subchannel::new(endpoint, &pool.settings).expect("a subchannel");
            write(&pool.subchannels).push(Arc::new(sub));
        }
        (pool, stop)
    }

    fn sub(pool: &Pool, i: usize) -> Arc<Subchannel> {
        read(&pool.subchannels)[i].clone()
    }

    fn fail(pool: &Pool, sub: &Subchannel, times: u32) {
        for _ in 0..times {
            pool.record_outcome(sub, false);
        }
    }

    /// Moves this test's paused clock an hour on first: `clock::now_nanos` counts from
    /// the first reading in the process, which another test's runtime, paused at a
    /// slightly later real time, may have made; from an hour on, this test's own
    /// readings are all past it, and every span below is exact.
    async fn clear_of_other_tests() {
        advance(Duration::from_secs(3600)).await;
        let _ = clock::now_nanos();
    }

    fn interval(pool: &Pool) {
        let config = pool.settings.outlier.clone().expect("configured");
        pool.outlier_interval(&config);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_lasts_base_times_count_capped_and_clean_intervals_forgive() {
        clear_of_other_tests().await;
        let (pool, _stop) = pool(4);
        let a = sub(&pool, 0);
        fail(&pool, &a, 2);
        assert!(!a.is_ejected(), "two failures in a row are below the limit");
        pool.record_outcome(&a, true);
        fail(&pool, &a, 2);
        assert!(!a.is_ejected(), "a success in between resets the count");
        fail(&pool, &a, 1);
        assert!(a.is_ejected(), "three in a row eject at once");

        // First ejection: BASE.
        advance(BASE - Duration::from_millis(1)).await;
        interval(&pool);
        assert!(a.is_ejected(), "still out 1 ms before its time");
        advance(Duration::from_millis(1)).await;
        interval(&pool);
        assert!(!a.is_ejected(), "back after exactly {BASE:?}");

        // Again at once: twice BASE.
        fail(&pool, &a, 3);
        advance(2 * BASE - Duration::from_millis(1)).await;
        interval(&pool);
        assert!(a.is_ejected());
        advance(Duration::from_millis(1)).await;
        interval(&pool);
        assert!(!a.is_ejected(), "back after 2 × base");

        // A third time: 3 × BASE would be 30 s, capped at the 25 s maximum.
        fail(&pool, &a, 3);
        advance(Duration::from_secs(25)).await;
        interval(&pool);
        assert!(!a.is_ejected(), "back after the 25 s maximum");

        // Three clean intervals forgive all three ejections: the next lasts BASE.
        for _ in 0..3 {
            advance(Duration::from_secs(1)).await;
            interval(&pool);
        }
        fail(&pool, &a, 3);
        advance(BASE).await;
        interval(&pool);
        assert!(!a.is_ejected(), "forgiven: one base ejection time again");
        assert_eq!(a.ejections.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_percentage_ejects_in_an_interval_what_fails_too_often() {
        clear_of_other_tests().await;
        let (pool, _stop) = pool(6);
        let mut config = pool.settings.outlier.clone().expect("configured");
        config.consecutive_failures = None;
        config.failure_percentage = Some(super::super::outlier::FailurePercentage {
            threshold: 50,
            request_volume: 10,
            minimum_hosts: 5,
            enforcement_percentage: 100,
        });
        let subs: Vec<_> = (0..6).map(|i| sub(&pool, i)).collect();
        // Endpoint 0 fails 6 calls of 10 (never 3 in a row), the rest 1 in 10.
        for (i, s) in subs.iter().enumerate() {
            for call in 0..10 {
                let failed = if i == 0 {
                    [0, 1, 3].contains(&(call % 5))
                } else {
                    call == 0
                };
                pool.record_outcome(s, !failed);
            }
        }
        assert!(!subs[0].is_ejected(), "never 3 failures in a row");
        advance(Duration::from_secs(1)).await;
        pool.outlier_interval(&config);
        let ejected: Vec<bool> = subs.iter().map(|s| s.is_ejected()).collect();
        assert_eq!(ejected, [true, false, false, false, false, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_max_percent_and_a_removal_lets_the_oldest_back() {
        clear_of_other_tests().await;
        let (pool, _stop) = pool(4);
        let subs: Vec<_> = (0..4).map(|i| sub(&pool, i)).collect();
        fail(&pool, &subs[0], 3);
        advance(Duration::from_secs(1)).await;
        fail(&pool, &subs[1], 3);
        fail(&pool, &subs[2], 3);
        let ejected: Vec<bool> = subs.iter().map(|s| s.is_ejected()).collect();
        assert_eq!(ejected, [true, true, false, false], "50 % of 4 is 2");

        // With 3 endpoints, 50 % is 1: the one ejected first returns early.
        let fourth = subs[3].state.endpoint().clone();
        assert!(pool.remove(&fourth));
        assert!(!subs[0].is_ejected(), "the longest ejected returns");
        assert!(subs[1].is_ejected());
    }
}
