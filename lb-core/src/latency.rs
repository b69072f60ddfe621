//! Peak-EWMA latency: how slow an endpoint has been lately, leaning towards its worst.
//!
//! Each finished call gives a sample `rtt`. The estimate moves as follows:
//!
//! - if `rtt` is above the estimate, the estimate *jumps* to it (the "peak" part), so a
//!   server that suddenly slows down is noticed on its first slow answer;
//! - otherwise it moves towards `rtt` by an exponentially weighted moving average whose
//!   weight depends on the time since the last sample: `w = e^(-Δt/τ)`,
//!   `estimate = estimate·w + rtt·(1-w)`. τ is the *decay time* (default 10 s).
//!
//! When read, the estimate also decays towards zero with the time since its last sample,
//! so an endpoint that gets no calls (perhaps because it looked slow) soon looks cheap
//! again and is tried once more.
//!
//! Worked example (τ = 10 s): estimate 2 ms, then a 20 ms sample: estimate 20 ms at
//! once. Then 2 ms samples 1 s apart: `w = e^(-0.1) ≈ 0.905`, so 20 → 18.3 → 16.7 → ...
//!
//! From Finagle's `PeakEwma` load metric, also used by linkerd and tower's
//! `load::PeakEwma`. Times are nanoseconds on the [`clock`](crate::clock), so a
//! simulation can supply its own virtual time.
//!
//! The ground floor. May import: nothing of this crate.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// The default decay time τ.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// A lock-free peak-EWMA estimate of latency.
///
/// The estimate and its timestamp are two atomics, updated one after the other: two
/// calls finishing at the same instant may interleave, which at worst loses one sample.
/// That is the price of taking no lock on every call, and it does not bias the estimate.
#[derive(Debug)]
pub struct LatencyEstimate {
    /// The estimate in nanoseconds, as `f64` bits.
    estimate: AtomicU64,
    /// When the estimate was last updated (clock nanoseconds); 0 = never.
    updated_at: AtomicU64,
    decay_ns: f64,
}

impl LatencyEstimate {
    /// An estimate with no samples, decaying with time constant `decay`.
    pub fn new(decay: Duration) -> Self {
        Self {
            estimate: AtomicU64::new(0f64.to_bits()),
            updated_at: AtomicU64::new(0),
            decay_ns: decay.as_nanos().max(1) as f64,
        }
    }

    /// Adds a sample: a call that took `rtt_ns` and finished at `now`.
    pub fn record(&self, rtt_ns: u64, now: u64) {
        let rtt = rtt_ns as f64;
        let last = self.updated_at.load(Ordering::Acquire);
        let previous = f64::from_bits(self.estimate.load(Ordering::Acquire));
        let next = if last == 0 || rtt >= previous {
            rtt
        } else {
            let weight = (-(now.saturating_sub(last) as f64) / self.decay_ns).exp();
            previous * weight + rtt * (1.0 - weight)
        };
        self.estimate.store(next.to_bits(), Ordering::Release);
        self.updated_at.store(now.max(1), Ordering::Release);
    }

    /// Forgets every sample, as if no call had finished yet.
    pub fn reset(&self) {
        self.updated_at.store(0, Ordering::Release);
        self.estimate.store(0f64.to_bits(), Ordering::Release);
    }

    /// The estimate at `now` in nanoseconds, decayed towards zero since the last
    /// sample, or `None` before the first sample.
    pub fn estimate(&self, now: u64) -> Option<f64> {
        let last = self.updated_at.load(Ordering::Acquire);
        if last == 0 {
            return None;
        }
        let estimate = f64::from_bits(self.estimate.load(Ordering::Acquire));
        let weight = (-(now.saturating_sub(last) as f64) / self.decay_ns).exp();
        Some(estimate * weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    #[test]
    fn jumps_to_a_peak_and_decays_slowly_after() {
        let ewma = LatencyEstimate::new(Duration::from_secs(10));
        assert_eq!(ewma.estimate(S), None);
        ewma.record(2 * MS, S);
        assert_eq!(ewma.estimate(S), Some((2 * MS) as f64));
        ewma.record(20 * MS, 2 * S);
        assert_eq!(
            ewma.estimate(2 * S),
            Some((20 * MS) as f64),
            "a peak is taken at once"
        );
        ewma.record(2 * MS, 3 * S);
        let after = ewma.estimate(3 * S).unwrap() / MS as f64;
        // 20·e^(-0.1) + 2·(1 - e^(-0.1)) = 18.29 ms
        assert!((after - 18.287).abs() < 0.01, "{after}");
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero() {
        let ewma = LatencyEstimate::new(Duration::from_secs(1));
        ewma.record(100 * MS, S);
        let later = ewma.estimate(S + 3 * S).unwrap();
        // e^(-3) ≈ 0.0498
        assert!(
            (later / (100 * MS) as f64 - 0.0498).abs() < 0.001,
            "{later}"
        );
    }
}
