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
//! - **Failure percentage**, every `interval` (off unless configured): among endpoints
//!   with at least `request_volume` calls (and at least `minimum_hosts` of them), eject
//!   those whose share of failed calls is above `threshold` per cent. Catches a fleet
//!   that is failing together, where no one stands out from the mean.
//!
//! Each of the interval detectors ejects an outlier it finds with probability
//! `enforcement_percentage` (100 by default), drawn from the balancer's seeded RNG.
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
    /// The failure-percentage detector (`None`: off, the default, as in gRFC A50).
    pub failure_percentage: Option<FailurePercentage>,
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
    /// An outlier found is ejected with this probability, in per cent (0 to 100).
    pub enforcement_percentage: u32,
}

/// Settings of the failure-percentage detector (gRFC A50's
/// `failure_percentage_ejection`).
#[derive(Clone, Debug, PartialEq)]
pub struct FailurePercentage {
    /// Eject above this percentage of failed calls in the interval (0 to 100).
    pub threshold: u32,
    /// Endpoints with fewer calls in the interval are not judged.
    pub request_volume: u64,
    /// Too few endpoints with enough calls: nobody is judged.
    pub minimum_hosts: usize,
    /// An outlier found is ejected with this probability, in per cent (0 to 100).
    pub enforcement_percentage: u32,
}

impl Default for FailurePercentage {
    /// gRFC A50's defaults: above 85 %, of endpoints with 50 calls, from 5 endpoints.
    fn default() -> Self {
        Self {
            threshold: 85,
            request_volume: 50,
            minimum_hosts: 5,
            enforcement_percentage: 100,
        }
    }
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
            failure_percentage: None,
        }
    }
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            request_volume: 100,
            minimum_hosts: 5,
            enforcement_percentage: 100,
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

/// gRFC A50's JSON for outlier detection, as `outlier_detection_experimental` takes it
/// (without `childPolicy`: the balancer's policy is set on its own), plus
/// `consecutiveFailures` (Envoy's `consecutive_5xx`):
///
/// ```
/// use lb_core::OutlierDetection;
///
/// let config: OutlierDetection = r#"{"interval": "1s", "baseEjectionTime": "5s",
///     "failurePercentageEjection": {"threshold": 80, "requestVolume": 20, "minimumHosts": 3}}"#
///     .parse()
///     .unwrap();
/// let failure = config.failure_percentage.as_ref().unwrap();
/// assert_eq!((failure.threshold, failure.enforcement_percentage), (80, 100));
/// assert!(config.success_rate.is_none(), "a detector left out is off");
/// let err = r#"{"failurePercentageEjection": {"treshold": 80}}"#.parse::<OutlierDetection>();
/// assert!(err.unwrap_err().contains("unknown field `treshold`"));
/// ```
///
/// A field left out takes [`OutlierDetection::default`]'s value; a detector left out
/// (`successRateEjection`, `failurePercentageEjection`, `consecutiveFailures`) is off,
/// as in gRFC A50, and its fields left out take A50's defaults. Two differences from
/// A50: `maxEjectionPercent` defaults to 50 (A50: 10), and it is a ceiling that an
/// ejection must stay within (A50 ejects while fewer than that share are out, so it
/// always allows one): with 10 % of a fleet of 5, nothing is ejected here.
impl std::str::FromStr for OutlierDetection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let json: json::Config =
            serde_json::from_str(text).map_err(|e| format!("outlier detection config: {e}"))?;
        json.into_config()
            .map_err(|e| format!("outlier detection config: {e}"))
    }
}

mod json {
    use std::time::Duration;

    use serde::Deserialize;

    use crate::json::duration_text;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct Config {
        #[serde(default, with = "optional_duration")]
        interval: Option<Duration>,
        #[serde(default, with = "optional_duration")]
        base_ejection_time: Option<Duration>,
        #[serde(default, with = "optional_duration")]
        max_ejection_time: Option<Duration>,
        max_ejection_percent: Option<u32>,
        consecutive_failures: Option<u32>,
        success_rate_ejection: Option<SuccessRate>,
        failure_percentage_ejection: Option<FailurePercentage>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct SuccessRate {
        stdev_factor: Option<u32>,
        enforcement_percentage: Option<u32>,
        minimum_hosts: Option<usize>,
        request_volume: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct FailurePercentage {
        threshold: Option<u32>,
        enforcement_percentage: Option<u32>,
        minimum_hosts: Option<usize>,
        request_volume: Option<u64>,
    }

    mod optional_duration {
        use std::time::Duration;

        use serde::Deserializer;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::duration_text::deserialize(d).map(Some)
        }
    }

    fn percent(field: &str, value: Option<u32>, default: u32) -> Result<u32, String> {
        match value.unwrap_or(default) {
            p @ 0..=100 => Ok(p),
            p => Err(format!("{field} is a percentage, 0 to 100, not {p}")),
        }
    }

    impl Config {
        pub(crate) fn into_config(self) -> Result<super::OutlierDetection, String> {
            let defaults = super::OutlierDetection::default();
            let interval = self.interval.unwrap_or(defaults.interval);
            if interval.is_zero() {
                return Err("interval must be above 0".into());
            }
            if self.consecutive_failures == Some(0) {
                return Err("consecutiveFailures must be 1 or more (leave it out for off)".into());
            }
            let success_rate = self
                .success_rate_ejection
                .map(|s| -> Result<_, String> {
                    let d = super::SuccessRate::default();
                    Ok(super::SuccessRate {
                        stdev_factor: s.stdev_factor.unwrap_or(d.stdev_factor),
                        request_volume: s.request_volume.unwrap_or(d.request_volume),
                        minimum_hosts: s.minimum_hosts.unwrap_or(d.minimum_hosts),
                        enforcement_percentage: percent(
                            "successRateEjection.enforcementPercentage",
                            s.enforcement_percentage,
                            d.enforcement_percentage,
                        )?,
                    })
                })
                .transpose()?;
            let failure_percentage = self
                .failure_percentage_ejection
                .map(|f| -> Result<_, String> {
                    let d = super::FailurePercentage::default();
                    Ok(super::FailurePercentage {
                        threshold: percent(
                            "failurePercentageEjection.threshold",
                            f.threshold,
                            d.threshold,
                        )?,
                        request_volume: f.request_volume.unwrap_or(d.request_volume),
                        minimum_hosts: f.minimum_hosts.unwrap_or(d.minimum_hosts),
                        enforcement_percentage: percent(
                            "failurePercentageEjection.enforcementPercentage",
                            f.enforcement_percentage,
                            d.enforcement_percentage,
                        )?,
                    })
                })
                .transpose()?;
            Ok(super::OutlierDetection {
                interval,
                base_ejection_time: self
                    .base_ejection_time
                    .unwrap_or(defaults.base_ejection_time),
                max_ejection_time: self.max_ejection_time.unwrap_or(defaults.max_ejection_time),
                max_ejection_percent: percent(
                    "maxEjectionPercent",
                    self.max_ejection_percent,
                    defaults.max_ejection_percent,
                )?,
                consecutive_failures: self.consecutive_failures,
                success_rate,
                failure_percentage,
            })
        }
    }
}

impl OutlierDetection {
    /// The indices of `stats` (successes, failures in the last interval) that the
    /// failure-percentage detector ejects, worst first.
    pub fn failure_percentage_outliers(&self, stats: &[(u64, u64)]) -> Vec<usize> {
        let Some(config) = &self.failure_percentage else {
            return Vec::new();
        };
        let judged: Vec<(usize, f64)> = stats
            .iter()
            .enumerate()
            .filter(|(_, (ok, failed))| ok + failed >= config.request_volume.max(1))
            .map(|(i, &(ok, failed))| (i, 100.0 * failed as f64 / (ok + failed) as f64))
            .collect();
        if judged.len() < config.minimum_hosts.max(1) {
            return Vec::new();
        }
        let mut outliers: Vec<(usize, f64)> = judged
            .into_iter()
            .filter(|&(_, failed)| failed > f64::from(config.threshold))
            .collect();
        outliers.sort_by(|a, b| b.1.total_cmp(&a.1));
        outliers.into_iter().map(|(i, _)| i).collect()
    }

    /// What one interval's detectors eject, in order (success rate first, then failure
    /// percentage, as gRFC A50 runs them), each with the reason for the log; every
    /// outlier is kept with its detector's `enforcement_percentage` chance, drawn from
    /// `rng`. The caller still applies `max_ejection_percent`.
    pub fn interval_outliers(
        &self,
        stats: &[(u64, u64)],
        rng: &mut dyn rand::RngCore,
    ) -> Vec<(usize, String)> {
        use rand::Rng;
        let rate = |(ok, failed): (u64, u64)| 100.0 * ok as f64 / (ok + failed).max(1) as f64;
        let mut out: Vec<(usize, String)> = Vec::new();
        if let Some(config) = &self.success_rate {
            for i in self.success_rate_outliers(stats) {
                if rng.random_range(0..100) < config.enforcement_percentage {
                    let reason =
                        format!("success rate {:.1}%, far below its peers'", rate(stats[i]));
                    out.push((i, reason));
                }
            }
        }
        if let Some(config) = &self.failure_percentage {
            for i in self.failure_percentage_outliers(stats) {
                if !out.iter().any(|(j, _)| *j == i)
                    && rng.random_range(0..100) < config.enforcement_percentage
                {
                    let reason = format!(
                        "{:.1}% of its calls failed, above the threshold of {}%",
                        100.0 - rate(stats[i]),
                        config.threshold
                    );
                    out.push((i, reason));
                }
            }
        }
        out
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
    fn failure_percentage_ejects_above_the_threshold_even_when_all_fail_alike() {
        let config = OutlierDetection {
            success_rate: Some(SuccessRate::default()),
            failure_percentage: Some(FailurePercentage::default()),
            ..OutlierDetection::default()
        };
        // Five endpoints failing 90 % alike: no one stands out for the success rate,
        // and every one is above 85 % failed.
        let stats = vec![(10, 90); 5];
        assert!(config.success_rate_outliers(&stats).is_empty());
        assert_eq!(config.failure_percentage_outliers(&stats).len(), 5);
        // At 80 % failed, below the threshold: kept.
        assert!(
            config
                .failure_percentage_outliers(&[(20, 80); 5])
                .is_empty()
        );
        // Too few calls (49 < 50), or too few endpoints judged (4 < 5): nobody.
        assert!(config.failure_percentage_outliers(&[(4, 45); 5]).is_empty());
        assert!(
            config
                .failure_percentage_outliers(&[(10, 90); 4])
                .is_empty()
        );
        // Off by default.
        assert!(
            OutlierDetection::default()
                .failure_percentage_outliers(&stats)
                .is_empty()
        );
    }

    #[test]
    fn enforcement_is_a_seeded_chance_and_each_endpoint_is_named_once() {
        use rand::SeedableRng;
        let mut config = OutlierDetection {
            failure_percentage: Some(FailurePercentage::default()),
            ..OutlierDetection::default()
        };
        let mut stats = vec![(990, 10); 5];
        stats.push((0, 1000)); // an outlier for both detectors
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let found = config.interval_outliers(&stats, &mut rng);
        assert_eq!(found.len(), 1, "named by one detector only: {found:?}");
        assert!(found[0].1.contains("success rate"), "{found:?}");
        config.success_rate = None;
        let found = config.interval_outliers(&stats, &mut rng);
        assert!(
            found[0].1.contains("100.0% of its calls failed"),
            "{found:?}"
        );
        // At 50 %, about half the intervals eject it.
        config
            .failure_percentage
            .as_mut()
            .unwrap()
            .enforcement_percentage = 50;
        let ejected = (0..1000)
            .filter(|_| !config.interval_outliers(&stats, &mut rng).is_empty())
            .count();
        assert!((400..600).contains(&ejected), "{ejected}");
    }

    #[test]
    fn json_mistakes_name_the_field() {
        let err = |text: &str| text.parse::<OutlierDetection>().unwrap_err();
        assert!(
            err(r#"{"failurePercentageEjection": {"threshold": 120}}"#)
                .contains("failurePercentageEjection.threshold is a percentage, 0 to 100, not 120")
        );
        assert!(
            err(r#"{"successRateEjection": {"enforcementPercentage": 101}}"#)
                .contains("successRateEjection.enforcementPercentage")
        );
        assert!(err(r#"{"interval": "0s"}"#).contains("interval must be above 0"));
        assert!(err(r#"{"interval": "soon"}"#).contains("`soon` is not a duration"));
        assert!(err(r#"{"childPolicy": []}"#).contains("unknown field `childPolicy`"));
        assert!(err(r#"{"consecutiveFailures": 0}"#).contains("consecutiveFailures"));
        let all: OutlierDetection = r#"{"interval": "2s", "maxEjectionPercent": 30,
            "consecutiveFailures": 3, "successRateEjection": {},
            "failurePercentageEjection": {"enforcementPercentage": 50}}"#
            .parse()
            .unwrap();
        assert_eq!(all.interval, Duration::from_secs(2));
        assert_eq!(all.max_ejection_percent, 30);
        assert_eq!(all.consecutive_failures, Some(3));
        assert_eq!(all.success_rate, Some(SuccessRate::default()));
        assert_eq!(
            all.failure_percentage,
            Some(FailurePercentage {
                enforcement_percentage: 50,
                ..FailurePercentage::default()
            })
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
