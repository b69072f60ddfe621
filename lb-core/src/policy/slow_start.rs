//! Slow start: a newly READY endpoint's share ramps up over a window instead of jumping
//! to full (Envoy's `slow_start_config`).
//!
//! A server that has just (re)started has cold caches, an unwarmed JIT, empty
//! connection pools; sent its full share at once, it answers slowly or falls over. And
//! the load-aware policies make it worse: with 0 calls in flight, a new endpoint looks
//! like the *best* one to `least_request` and `peak_ewma`, and gets most new calls.
//!
//! During the window, an endpoint counts with a fraction of its weight:
//!
//! ```text
//! factor = max(minWeightPercent / 100, (time since READY / slowStartWindow) ^ (1 / aggression))
//! ```
//!
//! With a window of 30 s, aggression 1 (linear) and the default minimum of 10 %: 0.1
//! for the first 3 s, 0.5 at 15 s, 1 from 30 s on. Aggression above 1 ramps up faster at
//! first (2: 0.71 at 15 s), below 1 slower (0.5: 0.25 at 15 s).
//!
//! How each policy applies the factor:
//!
//! - `weighted_round_robin` multiplies the endpoint's weight (static or reported) by it,
//!   at each weight update (`weightUpdatePeriod`, 1 s). Its stride scheduler keeps every
//!   weight at a tenth of the largest at least: with equal weights, factors below 0.1
//!   count as 0.1.
//! - `round_robin` lets the endpoint take its turn with probability `factor` and
//!   otherwise gives the turn to the next one: the share of an endpoint of weight
//!   `factor` among endpoints of weight 1, `factor / (n − 1 + factor)`.
//! - `least_request` and `peak_ewma` let it win a comparison with probability `factor`
//!   and otherwise take the runner-up of the sample: its share is at most `factor` ×
//!   what it would win without slow start.
//!
//! Endpoints that become READY together, at start-up, all start at full weight: there
//! is no warm endpoint to take the load instead. Slow start applies to an endpoint that
//! becomes READY more than [`TOGETHER`] (1 s, or the window if shorter) after the first
//! of the current set did: a restart, a reconnection, a new endpoint added to a running
//! fleet.
//!
//! In service-config JSON, in the policy's settings, with Envoy's names:
//!
//! ```
//! use lb_core::Policy;
//!
//! let policy: Policy = r#"{"round_robin": {"slowStartConfig":
//!     {"slowStartWindow": "30s", "aggression": 1.0, "minWeightPercent": 10}}}"#
//!     .parse()
//!     .unwrap();
//! assert_eq!(policy.to_string(), "round_robin");
//! let err = r#"{"round_robin": {"slowStartConfig": {"window": "30s"}}}"#
//!     .parse::<Policy>()
//!     .unwrap_err();
//! assert!(err.to_string().contains("unknown field `window`"), "{err}");
//! ```

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

use super::PickContext;
use crate::EndpointState;
use crate::json;

/// Slow-start settings (Envoy's `slow_start_config`), in a policy's settings as
/// `slowStartConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlowStartConfig {
    /// How long the ramp lasts (required; above 0).
    #[serde(with = "json::duration_text")]
    pub slow_start_window: Duration,
    /// How the ramp bends: 1 is linear, above 1 faster at first, below 1 slower (above
    /// 0; default 1).
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    /// The least fraction of its weight an endpoint gets, in per cent (0 to 100;
    /// default 10).
    #[serde(default = "default_min_weight_percent")]
    pub min_weight_percent: f64,
}

fn default_aggression() -> f64 {
    1.0
}

fn default_min_weight_percent() -> f64 {
    10.0
}

impl SlowStartConfig {
    /// A linear ramp over `window`, from 10 %.
    pub fn new(window: Duration) -> Self {
        Self {
            slow_start_window: window,
            aggression: default_aggression(),
            min_weight_percent: default_min_weight_percent(),
        }
    }

    /// Checks the fields; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.slow_start_window.is_zero() {
            return Err("slowStartConfig.slowStartWindow must be above 0".into());
        }
        if !(self.aggression > 0.0 && self.aggression.is_finite()) {
            return Err(format!(
                "slowStartConfig.aggression must be above 0, not {}",
                self.aggression
            ));
        }
        if !(0.0..=100.0).contains(&self.min_weight_percent) {
            return Err(format!(
                "slowStartConfig.minWeightPercent must be 0 to 100, not {}",
                self.min_weight_percent
            ));
        }
        Ok(())
    }

    /// The fraction of its weight an endpoint READY for `age` gets.
    pub fn factor_at(&self, age: Duration) -> f64 {
        if age >= self.slow_start_window {
            return 1.0;
        }
        let time = age.as_secs_f64() / self.slow_start_window.as_secs_f64();
        time.powf(1.0 / self.aggression)
            .max(self.min_weight_percent / 100.0)
            .min(1.0)
    }
}

/// Endpoints that become READY within this time of the first of their set started
/// together, and none of them is slow-started.
pub const TOGETHER: Duration = Duration::from_secs(1);

/// Slow start for one set of endpoints: the settings, and since when an endpoint that
/// becomes READY is slow-started ([`TOGETHER`] after the first of the set).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    config: SlowStartConfig,
    /// Endpoints READY since this time or later ramp up (clock nanoseconds).
    applies_from: u64,
}

impl SlowStart {
    /// Slow start over `endpoints` (the set a picker is built for), or `None` without
    /// settings.
    pub fn new(config: Option<&SlowStartConfig>, endpoints: &[EndpointState]) -> Option<Self> {
        let config = *config?;
        let first = endpoints
            .iter()
            .filter(|e| e.is_ready())
            .filter_map(EndpointState::ready_since)
            .min()
            .unwrap_or(0);
        let together = config.slow_start_window.min(TOGETHER);
        let together = u64::try_from(together.as_nanos()).unwrap_or(u64::MAX);
        Some(Self {
            config,
            // Strictly later than `together` after the first.
            applies_from: first.saturating_add(together).saturating_add(1),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SlowStartConfig {
        &self.config
    }

    /// The fraction of its weight `endpoint` gets at `now` (clock nanoseconds): 1
    /// outside its window.
    pub fn factor(&self, endpoint: &EndpointState, now: u64) -> f64 {
        match endpoint.ready_since() {
            Some(since) if since >= self.applies_from => self
                .config
                .factor_at(Duration::from_nanos(now.saturating_sub(since))),
            _ => 1.0,
        }
    }

    /// Whether `endpoint` may take this pick: always outside its window, with
    /// probability [`factor`](Self::factor) inside it (drawn from the context's RNG).
    pub fn admits(&self, endpoint: &EndpointState, ctx: &mut PickContext<'_>) -> bool {
        let since = match endpoint.ready_since() {
            Some(since) if since >= self.applies_from => since,
            _ => return true,
        };
        let now = ctx.now();
        let age = Duration::from_nanos(now.saturating_sub(since));
        if age >= self.config.slow_start_window {
            return true;
        }
        let factor = self.config.factor_at(age);
        let admitted = ctx.rng.random::<f64>() < factor;
        if !admitted {
            ctx.explain(|| {
                format!(
                    "slow start: {} at {:.0} % of its weight, passed over; ",
                    endpoint.endpoint(),
                    factor * 100.0
                )
            });
        }
        admitted
    }
}

/// Validates optional slow-start settings (for the policies' `validate`).
pub(crate) fn validate(config: Option<&SlowStartConfig>) -> Result<(), String> {
    config.map_or(Ok(()), SlowStartConfig::validate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_follows_envoys_formula() {
        let linear = SlowStartConfig::new(Duration::from_secs(30));
        let at = |config: &SlowStartConfig, s: f64| config.factor_at(Duration::from_secs_f64(s));
        assert_eq!(at(&linear, 0.0), 0.1, "the minimum");
        assert_eq!(at(&linear, 2.0), 0.1);
        assert!((at(&linear, 15.0) - 0.5).abs() < 1e-9);
        assert_eq!(at(&linear, 30.0), 1.0);
        assert_eq!(at(&linear, 100.0), 1.0);
        let eager = SlowStartConfig {
            aggression: 2.0,
            ..linear
        };
        assert!((at(&eager, 15.0) - 0.5f64.sqrt()).abs() < 1e-9);
        let shy = SlowStartConfig {
            aggression: 0.5,
            min_weight_percent: 0.0,
            ..linear
        };
        assert!((at(&shy, 15.0) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn mistakes_name_the_field() {
        let mut config = SlowStartConfig::new(Duration::ZERO);
        assert!(config.validate().unwrap_err().contains("slowStartWindow"));
        config.slow_start_window = Duration::from_secs(1);
        config.aggression = 0.0;
        assert!(config.validate().unwrap_err().contains("aggression"));
        config.aggression = 1.0;
        config.min_weight_percent = 120.0;
        assert!(config.validate().unwrap_err().contains("minWeightPercent"));
    }

    #[test]
    fn endpoints_ready_together_start_at_full_weight() {
        let endpoints = crate::policy::testing::ready(3);
        for (i, e) in endpoints.iter().enumerate() {
            e.set_ready_since(1_000 + i as u64);
        }
        let config = SlowStartConfig::new(Duration::from_secs(10));
        let slow = SlowStart::new(Some(&config), &endpoints).unwrap();
        assert!(endpoints.iter().all(|e| slow.factor(e, 2_000) == 1.0));
        // One restarts a minute later: it ramps up, the others do not.
        let later = 60_000_000_000;
        endpoints[1].set_ready_since(later);
        let slow = SlowStart::new(Some(&config), &endpoints).unwrap();
        assert_eq!(slow.factor(&endpoints[1], later + 1), 0.1);
        assert!((slow.factor(&endpoints[1], later + 5_000_000_000) - 0.5).abs() < 1e-9);
        assert_eq!(slow.factor(&endpoints[0], later + 1), 1.0);
        assert_eq!(slow.factor(&endpoints[1], later + 10_000_000_000), 1.0);
    }
}
