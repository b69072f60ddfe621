//! Retrying a call on another endpoint, safely.
//!
//! A call that failed *before it reached a server* (its connection was gone before the
//! request was handed to it, the server refused the stream or announced with a GOAWAY
//! that it would not take it) can be sent again to another endpoint without doing
//! anything twice. A call *cut off* by a dying connection (reset, closed) may have run
//! on the server already; it is retried too by
//! default, as the greeting is safe to repeat, but a method that must not run twice
//! should set [`RetryPolicy::retry_cut_calls`] to `false`. Three things keep retries
//! from making an outage worse:
//!
//! - **A cap on attempts** per call (default 3 in all). A call that never reached a
//!   server is retried *transparently* (gRFC A6): without counting as an attempt or
//!   spending budget, up to 5 times, since nothing was done and nothing can be done
//!   twice.
//! - **A retry budget** shared by all calls (gRFC A6 "retry throttling"): a token
//!   bucket of `max_tokens` (default 100). Each failed attempt takes a token, each
//!   success gives back `token_ratio` (default 0.1); retries are allowed only while
//!   more than half the tokens are left. A server dying under load fails a burst of
//!   calls at once (all those in flight to it), which the 50 spare tokens absorb; when
//!   most calls keep failing, retries stop, so a struggling fleet sees at most about
//!   one retry per ten successes, not three times as many calls.
//! - **The call's deadline**: a retry only goes out if time is left, and carries what is
//!   left as its `grpc-timeout`.
//!
//!
//! This file holds the policy, the budget and the attempt loop; the request body kept
//! for a retry is in `replay.rs`, one attempt in `attempt.rs`.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use rand::rngs::SmallRng;
use tokio::time::Instant;
use tonic::{Code, Status, body::Body};
use tracing::debug;

use super::ResponseBody;
use super::attempt::{Failure, FailureKind, Route};
use super::handle::Router;
use super::headers::{
    GRPC_TIMEOUT, deadline_after, grpc_timeout, grpc_timeout_value, header_status,
};
use super::replay::RequestBody;
use super::subchannel::Subchannel;

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
            ratio: (policy.token_ratio.clamp(0.0, 1.0) * 1000.0) as u64,
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

/// Transparent retries per call (of calls that never reached a server), on top of
/// `RetryPolicy::max_attempts`.
const MAX_TRANSPARENT_RETRIES: u32 = 5;

impl Router {
    /// One call: pick, send, and retry elsewhere while the policy allows.
    pub(super) async fn call(
        &self,
        request: http::Request<Body>,
        mut route: Option<Route>,
        mut rng: SmallRng,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let (mut parts, body) = request.into_parts();
        // Not sent (no server sees them): they go to the response (see `Route::send`).
        let mut extensions = std::mem::take(&mut parts.extensions);
        let mut body = if self.retry.max_attempts > 1 {
            RequestBody::read(body, self.retry.max_replay_bytes).await?
        } else {
            RequestBody::Streaming(body)
        };
        let timeout = grpc_timeout(&parts.headers);
        let deadline = timeout.map(deadline_after);
        let mut tried: Vec<Arc<Subchannel>> = Vec::new();
        let mut attempt = 1;
        let mut transparent = 0;
        let mut last_failure: Option<Status> = None;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let route = match route.take() {
                Some(route) => route,
                None => {
                    self.pick_when_ready(&mut rng, &parts.headers, &tried, left)
                        .await?
                }
            };
            // Each attempt carries what is left of the call's deadline, not all of it.
            let mut fair_share = true;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                // An attempt sent with less than half of the call's time (after a wait
                // for a reconnect, or a retry late in the call) running out is no
                // verdict on its endpoint.
                fair_share = timeout.is_none_or(|total| left * 2 >= total);
                if left.is_zero() {
                    return Err(Status::deadline_exceeded(format!(
                        "deadline passed after {} attempt(s)",
                        attempt - 1
                    )));
                }
                parts.headers.insert(GRPC_TIMEOUT, grpc_timeout_value(left));
            }
            let sub = route.sub.clone();
            let Some(attempt_body) = body.attempt() else {
                // The body outgrew what is kept for a retry while the last attempt
                // was failing: that failure is the call's.
                return Err(last_failure
                    .take()
                    .unwrap_or_else(|| Status::internal("request body already sent")));
            };
            // A copy of the request's head for this attempt: the call may need it again.
            let mut request = http::Request::new(attempt_body);
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            let result = route
                .send(request, &mut extensions, deadline, fair_share)
                .await;
            let retry_allowed = attempt < self.retry.max_attempts && body.is_replayable();
            match result {
                Ok(mut response) => {
                    let answered = header_status(response.headers());
                    let retry_code =
                        answered.filter(|code| self.retry.retryable_codes.contains(code));
                    match retry_code {
                        Some(code) if retry_allowed && self.budget.allows_retry() => {
                            // The call's extensions went to this response: back for the
                            // next attempt's.
                            extensions = std::mem::take(response.extensions_mut());
                            self.budget.on_failure();
                            body.abandon_attempt();
                            self.note_retry(&sub, &format!("{code:?} from the server"));
                        }
                        Some(_) => {
                            // A failure all the same, only not retried this time.
                            self.budget.on_failure();
                            body.commit();
                            return Ok(response.map(|b| b.until(deadline)));
                        }
                        None => {
                            self.budget.on_success();
                            body.commit();
                            return Ok(response.map(|b| b.until(deadline)));
                        }
                    }
                }
                Err(Failure { status, kind })
                    if kind == FailureKind::Unsent
                        && transparent < MAX_TRANSPARENT_RETRIES
                        && body.is_replayable() =>
                {
                    // No server saw it (as gRFC A6's transparent retries): it costs
                    // neither an attempt nor budget, within its own small cap. A
                    // connection closing with GOAWAY refuses calls this way.
                    transparent += 1;
                    body.abandon_attempt();
                    self.note_retry(&sub, status.message());
                    last_failure = Some(status);
                    tried.push(sub);
                    continue;
                }
                Err(Failure { status, kind }) => {
                    // As gRFC A6 throttles: a call that ran out of time is not a
                    // failure that a retry could have saved, and costs no token.
                    if kind != FailureKind::Deadline {
                        self.budget.on_failure();
                    }
                    let retryable = match kind {
                        FailureKind::Unsent => true,
                        FailureKind::Cut => self.retry.retry_cut_calls,
                        FailureKind::Deadline => false,
                    };
                    if !(retryable && retry_allowed && self.budget.allows_retry()) {
                        return Err(status);
                    }
                    body.abandon_attempt();
                    self.note_retry(&sub, status.message());
                    last_failure = Some(status);
                }
            }
            tried.push(sub);
            attempt += 1;
        }
    }

    fn note_retry(&self, sub: &Subchannel, why: &str) {
        sub.retries.fetch_add(1, Ordering::Relaxed);
        self.retries.fetch_add(1, Ordering::Relaxed);
        debug!(endpoint = %sub.state.endpoint(), %why, "retrying on another endpoint");
    }
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
}
