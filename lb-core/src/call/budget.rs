//! The balancer's own retry settings ([`RetryPolicy`]) and the retry throttle that
//! every call shares (gRFC A6's token bucket, `RetryBudget`): failed attempts take
//! tokens, calls that end OK give some back, and retries stop while half are gone.

use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Code;

/// When and how often calls are retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call in all, first one included (1 = no retries).
    pub max_attempts: u32,
    /// Status codes answered *by a server* that are retried too (default none: an
    /// application's error is its answer). Calls that never reached a server are always
    /// retried.
    pub retryable_codes: Vec<Code>,
    /// Whether calls cut off by a broken connection are retried (default `true`). Such a
    /// call may have run on the server: turn this off for methods that are not safe to
    /// repeat.
    pub retry_cut_calls: bool,
    /// The budget's size, in tokens.
    pub max_tokens: u32,
    /// Tokens given back per success.
    pub token_ratio: f64,
    /// The largest request body that is kept for replay.
    pub max_replay_bytes: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retryable_codes: Vec::new(),
            retry_cut_calls: true,
            max_tokens: 100,
            token_ratio: 0.1,
            max_replay_bytes: 4 * 1024 * 1024,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn disabled() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }
}

/// gRFC A6's token bucket, in thousandths of a token.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

impl RetryBudget {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        let max = u64::from(policy.max_tokens) * 1000;
        Self {
            tokens: AtomicU64::new(max),
            max,
            ratio: thousandths(policy.token_ratio),
        }
    }

    /// gRPC's own bucket, from a service config's `retryThrottling`.
    pub(crate) fn throttling(throttling: crate::service_config::RetryThrottling) -> Self {
        let max = u64::from(throttling.max_tokens) * 1000;
        Self {
            tokens: AtomicU64::new(max),
            max,
            ratio: thousandths(throttling.token_ratio),
        }
    }

    pub(crate) fn on_success(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.ratio).min(self.max))
            });
    }

    pub(crate) fn on_failure(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// Whether a retry may go out now.
    pub(crate) fn allows_retry(&self) -> bool {
        self.tokens.load(Ordering::Relaxed) * 2 > self.max
    }
}

/// A token ratio in thousandths of a token, rounded: 0.57 is 570 (not 569, as
/// `0.57 * 1000.0` truncated would be).
fn thousandths(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_retries_when_most_calls_fail() {
        let policy = RetryPolicy {
            max_tokens: 10,
            ..RetryPolicy::default()
        };
        let budget = RetryBudget::new(&policy);
        assert!(budget.allows_retry());
        for _ in 0..4 {
            budget.on_failure();
        }
        assert!(budget.allows_retry(), "6 tokens left is more than half");
        budget.on_failure();
        assert!(
            !budget.allows_retry(),
            "5 tokens left is not more than half"
        );
        // Ten successes give one token back.
        for _ in 0..10 {
            budget.on_success();
        }
        assert!(budget.allows_retry());
        for _ in 0..1000 {
            budget.on_success();
        }
        assert_eq!(
            budget.tokens.load(Ordering::Relaxed),
            10_000,
            "capped at the size"
        );
    }

    #[test]
    fn token_ratios_are_read_to_three_decimal_places() {
        assert_eq!(thousandths(0.57), 570);
        assert_eq!(thousandths(0.001), 1);
        assert_eq!(thousandths(1.0), 1000);
    }
}
