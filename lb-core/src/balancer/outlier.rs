//! Outlier detection: stop sending calls to an endpoint that keeps failing, for a while.
//!
//! Health checks ask a server how it is; outlier detection watches how its calls
//! actually go (gRFC A50, after Envoy's outlier detection). Two detectors:
//!
//! - **Consecutive failures**: `n` failed calls in a row (default 5) eject the endpoint at
//!   once. Cheap and fast; catches a server that fails everything.
//! - **Success rate**, every `interval`: among endpoints with at least `request_volume`
//!   calls in the interval (and at least `minimum_hosts` of them), eject those whose
//!   success rate is below `mean − stdev × stdev_factor / 1000`. Catches a server that is
//!   clearly worse than its peers without a fixed threshold.
//!
//! An ejected endpoint gets no calls for `base_ejection_time × times ejected` (so a
//! repeat offender stays out longer), at most `max(base, max_ejection_time)`, then
//! returns. Each interval in which a returned endpoint is not ejected again lowers its
//! count by one. Never more than `max_ejection_percent` of the endpoints (rounded down)
//! are ejected at once, so outlier detection cannot empty the fleet.
//!
//! Worked example: 4 endpoints, success rates 0.99, 0.98, 0.99, 0.60, stdev factor 1900:
//! mean 0.89, stdev 0.167, threshold 0.89 − 0.317 = 0.573: nobody is ejected (0.60 is
//! above). At 0.40 instead: mean 0.84, stdev 0.254, threshold 0.357: still kept! The
//! success-rate detector needs enough peers to stand out from; consecutive failures do
//! not.

use std::time::Duration;

/// Outlier detection settings (gRFC A50 names; Envoy's defaults where A50 has none).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// How often the success-rate detector runs and ejections are reviewed.
    pub interval: Duration,
    /// How long a first ejection lasts.
    pub base_ejection_time: Duration,
    /// The longest ejection (never shorter than `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// At most this percentage of endpoints, rounded down, is ejected at once.
    pub max_ejection_percent: u32,
    /// Eject after this many consecutive failures (`None`: off).
    pub consecutive_failures: Option<u32>,
    /// The success-rate detector (`None`: off).
    pub success_rate: Option<SuccessRate>,
}

/// Settings of the success-rate detector.
#[derive(Clone, Debug, PartialEq)]
pub struct SuccessRate {
    /// Eject below `mean − stdev × stdev_factor / 1000`.
    pub stdev_factor: u32,
    /// Endpoints with fewer calls in the interval are not judged.
    pub request_volume: u64,
    /// Too few endpoints with enough calls: nobody is judged.
    pub minimum_hosts: usize,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            consecutive_failures: Some(5),
            success_rate: Some(SuccessRate::default()),
        }
    }
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            request_volume: 100,
            minimum_hosts: 5,
        }
    }
}

impl OutlierDetection {
    /// How long the `times`-th ejection of an endpoint lasts.
    pub fn ejection_time(&self, times: u32) -> Duration {
        let max = self.max_ejection_time.max(self.base_ejection_time);
        self.base_ejection_time
            .checked_mul(times.max(1))
            .map_or(max, |t| t.min(max))
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= self.max_ejection_percent as usize * total
    }

    /// The indices of `stats` (successes, failures in the last interval) that the
    /// success-rate detector ejects, worst first.
    pub fn success_rate_outliers(&self, stats: &[(u64, u64)]) -> Vec<usize> {
        let Some(config) = &self.success_rate else {
            return Vec::new();
        };
        let judged: Vec<(usize, f64)> = stats
            .iter()
            .enumerate()
            .filter(|(_, (ok, failed))| ok + failed >= config.request_volume.max(1))
            .map(|(i, &(ok, failed))| (i, ok as f64 / (ok + failed) as f64))
            .collect();
        if judged.len() < config.minimum_hosts.max(1) {
            return Vec::new();
        }
        let n = judged.len() as f64;
        let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
        let variance = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
        let threshold = mean - variance.sqrt() * f64::from(config.stdev_factor) / 1000.0;
        let mut outliers: Vec<(usize, f64)> =
            judged.into_iter().filter(|&(_, r)| r < threshold).collect();
        outliers.sort_by(|a, b| a.1.total_cmp(&b.1));
        outliers.into_iter().map(|(i, _)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_grow_with_repeats_and_stop_at_the_maximum() {
        let config = OutlierDetection {
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            ..OutlierDetection::default()
        };
        let secs: Vec<u64> = (1..=5).map(|n| config.ejection_time(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 90, 100, 100]);
        let short_max = OutlierDetection {
            max_ejection_time: Duration::from_secs(1),
            ..config
        };
        assert_eq!(
            short_max.ejection_time(3),
            Duration::from_secs(30),
            "never below base"
        );
    }

    #[test]
    fn never_more_than_the_max_percent() {
        let config = OutlierDetection::default(); // 50 %
        assert!(config.may_eject(0, 3));
        assert!(!config.may_eject(1, 3), "2 of 3 is 67 %");
        assert!(config.may_eject(4, 10) && !config.may_eject(5, 10));
        assert!(
            !config.may_eject(0, 1),
            "a lone endpoint is never ejected at 50 %"
        );
        let none = OutlierDetection {
            max_ejection_percent: 0,
            ..config
        };
        assert!(!none.may_eject(0, 100));
    }

    #[test]
    fn success_rate_ejects_the_clear_outlier_only() {
        let config = OutlierDetection::default();
        let healthy = (990, 10);
        let mut stats = vec![healthy; 5];
        assert!(config.success_rate_outliers(&stats).is_empty());
        stats.push((300, 700));
        assert_eq!(config.success_rate_outliers(&stats), vec![5]);
        // Too few calls to judge: ignored, whatever its rate.
        stats[5] = (1, 50);
        assert!(config.success_rate_outliers(&stats).is_empty());
        // Too few hosts with enough calls: nobody is judged.
        assert!(
            config
                .success_rate_outliers(&[healthy, healthy, (0, 500)])
                .is_empty()
        );
    }

    #[test]
    fn the_worked_example_keeps_everyone() {
        let config = OutlierDetection {
            success_rate: Some(SuccessRate {
                minimum_hosts: 4,
                ..SuccessRate::default()
            }),
            ..OutlierDetection::default()
        };
        let stats = [(990, 10), (980, 20), (990, 10), (400, 600)];
        assert!(config.success_rate_outliers(&stats).is_empty());
    }
}
