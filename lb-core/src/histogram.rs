//! A histogram of call durations in lock-free counters, with Prometheus's bucket
//! bounds: each endpoint keeps one (read by `Balancer::endpoints` and by the
//! metrics, when the `metrics` feature is on).
//!
//! A worked example: after 2 calls, one answered in 3 ms and one in 40 ms, the
//! snapshot's `counts` hold 1 in the bucket up to 5 ms and 1 in the one up to 50 ms
//! (not cumulative), `count` is 2 and `sum_seconds` 0.043.
//!
//! The ground floor. May import: nothing of this crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the duration buckets, in seconds: 100 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations in lock-free counters: recording is three atomic adds, so
/// every call can afford it.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Calls per bucket (not cumulative); the last one is beyond 10 s.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration, in nanoseconds.
    pub fn observe_nanos(&self, nanos: u64) {
        let seconds = nanos as f64 / 1e9;
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now (`count` is the buckets' total; `sum` is read apart, so a scrape
    /// during calls may see a call in one and not yet the other).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            counts,
        }
    }
}

/// A [`DurationHistogram`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Calls recorded.
    pub count: u64,
    /// Their durations added up, in seconds.
    pub sum_seconds: f64,
    /// Calls per bucket of [`DURATION_BUCKETS`] (not cumulative), then beyond it.
    pub counts: Vec<u64>,
}

impl HistogramSnapshot {
    /// (upper bound, calls in that bucket) pairs, the last bound `f64::MAX` (+Inf),
    /// as the text encoder takes them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.counts.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_on_a_bound_counts_in_that_bucket() {
        let histogram = DurationHistogram::default();
        histogram.observe_nanos(5_000_000); // exactly 5 ms: in le="0.005"
        histogram.observe_nanos(5_000_001); // just above: in le="0.01"
        histogram.observe_nanos(0);
        histogram.observe_nanos(60_000_000_000); // a minute: only +Inf
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum_seconds - 60.010000001).abs() < 1e-9);
        let buckets = snapshot.buckets();
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.0001), Some(1));
        assert_eq!(at(0.005), Some(1));
        assert_eq!(at(0.01), Some(1));
        assert_eq!(at(f64::MAX), Some(1));
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
    }
}
