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
//!   bucket of `max_tokens` (default 100). Each failed attempt takes a token (one that
//!   failed on its connection, or with a status that is retried), each call that ends
//!   OK gives back `token_ratio` (default 0.1); retries are allowed only while
//!   more than half the tokens are left. A server dying under load fails a burst of
//!   calls at once (all those in flight to it), which the 50 spare tokens absorb; when
//!   most calls keep failing, retries stop, so a struggling fleet sees at most about
//!   one retry per ten successes, not three times as many calls.
//! - **The call's deadline**: a retry only goes out if time is left, and carries what is
//!   left as its `grpc-timeout`.
//!
//!
//! This file holds the attempt loop; the policy and the budget are in `budget.rs`, the
//! request body kept for a retry in `replay.rs`, one attempt in `attempt.rs`.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use http::HeaderName;
use rand::{Rng, rngs::SmallRng};
use tokio::time::Instant;
use tonic::{Code, Status, body::Body};
use tracing::debug;

use super::attempt::{Failure, FailureKind, Route};
use super::headers::{deadline_after, grpc_timeout, header_status, stamp_attempt};
use super::replay::RequestBody;
use super::response::ResponseBody;
use super::router::Router;
use crate::service_config::{MethodConfig, RetryConfig};
use crate::subchannels::subchannel::Subchannel;
use crate::transport::wire::AttemptBody;

/// Transparent retries per call (of calls that never reached a server), on top of
/// `RetryPolicy::max_attempts`.
pub(crate) const MAX_TRANSPARENT_RETRIES: u32 = 5;

/// The header in which a server says how long to wait before a retry (gRFC A6).
const PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// How one call is retried: from its method's `retryPolicy`, or the balancer's own.
pub(crate) struct Plan<'a> {
    max_attempts: u32,
    codes: &'a [Code],
    retry_cut_calls: bool,
    /// The backoff between attempts (`None`: none, as the balancer's own retries of
    /// calls that failed on a connection, which go straight to another endpoint).
    backoff: Option<&'a RetryConfig>,
    wait_for_ready: bool,
}

impl<'a> Plan<'a> {
    pub(crate) fn new(router: &'a Router, method: Option<&'a MethodConfig>) -> Self {
        let wait_for_ready = method.and_then(|m| m.wait_for_ready).unwrap_or(false);
        match method.and_then(|m| m.retry_policy.as_ref()) {
            Some(config) => Self {
                max_attempts: config.max_attempts,
                codes: &config.retryable_status_codes,
                // A call cut off with its connection ends UNAVAILABLE, in gRPC too.
                retry_cut_calls: config.retryable_status_codes.contains(&Code::Unavailable),
                backoff: Some(config),
                wait_for_ready,
            },
            None => Self {
                // A method entry without a retry policy (a timeout only, say) keeps the
                // balancer's retries of calls that failed on a connection.
                max_attempts: router.retry.max_attempts,
                codes: &router.retry.retryable_codes,
                retry_cut_calls: router.retry.retry_cut_calls,
                backoff: None,
                wait_for_ready,
            },
        }
    }

    /// Whether the request body must be kept for another attempt.
    pub(crate) fn replays(&self) -> bool {
        self.max_attempts > 1
    }
}

/// What a server said about retrying, in `grpc-retry-pushback-ms`: wait this long
/// (`Some(Ok)`), do not retry (`Some(Err)`: a negative or unreadable value), or nothing.
pub(crate) fn pushback(headers: &http::HeaderMap) -> Option<Result<Duration, ()>> {
    let value = headers.get(PUSHBACK)?;
    Some(
        value
            .to_str()
            .ok()
            .filter(|v| v.len() <= 10)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or(()),
    )
}

impl Router {
    /// One call: pick, send, and retry elsewhere while the policy allows.
    ///
    /// (This, [`Router::retry_loop`] and [`Route::send`] return `async` blocks, not
    /// `async fn`s: a block's future holds its arguments once, an `async fn`'s twice,
    /// and a call's future is moved, whole, into the box the caller polls.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async block's future holds the arguments once, an async fn's twice"
    )]
    pub(crate) fn call(
        &self,
        request: http::Request<Body>,
        route: Option<Route>,
        rng: SmallRng,
    ) -> impl Future<Output = Result<http::Response<ResponseBody>, Status>> {
        async move {
            let method = self.service_config.method(request.uri().path()).cloned();
            let (parts, body) = request.into_parts();
            // The deadline: the caller's, or the method's `timeout` if sooner (gRFC A2).
            let caller = grpc_timeout(&parts.headers);
            let timeout = match (caller, method.as_ref().and_then(|m| m.timeout)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(hedging) = method.as_ref().and_then(|m| m.hedging_policy.as_ref()) {
                let body = RequestBody::read(body, self.retry.max_replay_bytes).await?;
                // Whole, or recorded as the first attempt sends it (a proxy's caller may
                // not have sent all of it yet): hedges go out once it is whole.
                if !matches!(body, RequestBody::Streaming(_)) {
                    let wait_for_ready = method.as_ref().and_then(|m| m.wait_for_ready);
                    return self
                        .hedge(
                            parts,
                            body,
                            route,
                            rng,
                            hedging,
                            timeout,
                            wait_for_ready == Some(true),
                        )
                        .await;
                }
                // Too big to keep: attempts at once would each need the rest of the
                // caller's stream. Sent once, with the balancer's own retries (a method
                // with a `hedgingPolicy` has no `retryPolicy`) and the method's
                // `waitForReady`.
                let plan = Plan::new(self, method.as_deref());
                return self
                    .retry_loop(parts, body, route, rng, &plan, timeout)
                    .await;
            }
            let plan = Plan::new(self, method.as_deref());
            let body = if plan.replays() {
                RequestBody::read(body, self.retry.max_replay_bytes).await?
            } else {
                RequestBody::Streaming(body)
            };
            self.retry_loop(parts, body, route, rng, &plan, timeout)
                .await
        }
    }

    /// Attempts one after the other, as `plan` allows.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async block's future holds the arguments once, an async fn's twice"
    )]
    fn retry_loop(
        &self,
        mut parts: http::request::Parts,
        mut body: RequestBody,
        mut route: Option<Route>,
        mut rng: SmallRng,
        plan: &Plan<'_>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<http::Response<ResponseBody>, Status>> {
        async move {
            // Not sent (no server sees them): they go to the response (see `Route::send`).
            let mut extensions = std::mem::take(&mut parts.extensions);
            let deadline = timeout.map(deadline_after);
            let mut tried: Vec<Arc<Subchannel>> = Vec::new();
            let mut attempt = 1;
            let mut transparent = 0;
            // Retries since the start or the server's last pushback: the backoff's exponent.
            let mut backoffs = 0;
            let mut last_failure: Option<Status> = None;
            loop {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let route = match route.take() {
                    Some(route) => route,
                    None => {
                        self.pick_when_ready(
                            &mut rng,
                            &parts.headers,
                            &tried,
                            left,
                            plan.wait_for_ready,
                        )
                        .await?
                    }
                };
                let Some(fair_share) =
                    stamp_attempt(&mut parts.headers, deadline, timeout, attempt - 1)
                else {
                    return Err(Status::deadline_exceeded(format!(
                        "deadline passed after {} attempt(s)",
                        attempt - 1
                    )));
                };
                let sub = route.sub.clone();
                let Some(attempt_body) = body.attempt() else {
                    // The body outgrew what is kept for a retry while the last attempt
                    // was failing: that failure is the call's.
                    return Err(last_failure
                        .take()
                        .unwrap_or_else(|| Status::internal("request body already sent")));
                };
                let request = attempt_request(&parts, attempt_body);
                let result = route
                    .send(request, &mut extensions, deadline, fair_share)
                    .await;
                let retry_allowed = attempt < plan.max_attempts && body.is_replayable();
                // How long to wait before the next attempt, if there is to be one.
                let wait = match result {
                    Ok(mut response) => {
                        let answered = header_status(response.headers());
                        let retry_code = answered.filter(|code| plan.codes.contains(code));
                        let Some(code) = retry_code else {
                            if plan.backoff.is_some()
                                && answered.is_some_and(|code| code != Code::Ok)
                                && matches!(pushback(response.headers()), Some(Err(())))
                            {
                                // An error answer that says "do not retry" counts as a
                                // failure to the throttle, retryable status or not (as
                                // grpc-go).
                                self.budget.on_failure();
                            }
                            body.commit();
                            return Ok(self.answer(response, deadline));
                        };
                        self.budget.on_failure();
                        let wait = match pushback(response.headers()) {
                            // The server asked for no retry.
                            Some(Err(())) => None,
                            Some(Ok(wait)) => {
                                backoffs = 0;
                                Some(wait)
                            }
                            None => Some(self.backoff(plan, &mut backoffs, &mut rng)),
                        };
                        match wait.filter(|&wait| {
                            retry_allowed && self.budget.allows_retry() && fits(deadline, wait)
                        }) {
                            Some(wait) => {
                                // The call's extensions went to this response: back for the
                                // next attempt's.
                                extensions = std::mem::take(response.extensions_mut());
                                body.abandon_attempt();
                                self.note_retry(&sub, &format!("{code:?} from the server"));
                                wait
                            }
                            None => {
                                body.commit();
                                response.body_mut().set_deadline(deadline);
                                return Ok(response);
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
                        // failure that a retry could have saved, and costs no token; nor
                        // does an UNAVAILABLE that the method's retryPolicy does not retry.
                        if kind != FailureKind::Deadline
                            && (plan.backoff.is_none() || plan.retry_cut_calls)
                        {
                            self.budget.on_failure();
                        }
                        let retryable = match kind {
                            FailureKind::Unsent => true,
                            FailureKind::Cut => plan.retry_cut_calls,
                            FailureKind::Deadline => false,
                        };
                        let wait = self.backoff(plan, &mut backoffs, &mut rng);
                        if !(retryable
                            && retry_allowed
                            && self.budget.allows_retry()
                            && fits(deadline, wait))
                        {
                            return Err(status);
                        }
                        body.abandon_attempt();
                        self.note_retry(&sub, status.message());
                        last_failure = Some(status);
                        wait
                    }
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                tried.push(sub);
                attempt += 1;
            }
        }
    }

    /// The call's answer, as the caller gets it: bounded by the call's deadline, and
    /// counted a success by the throttle if it ends OK (an application's error is
    /// neither a success nor a failure to it, gRFC A6). The status of most answers is
    /// in their trailers, so the token comes back when they arrive.
    pub(crate) fn answer(
        &self,
        mut response: http::Response<ResponseBody>,
        deadline: Option<Instant>,
    ) -> http::Response<ResponseBody> {
        match header_status(response.headers()) {
            None => response.body_mut().set_credit(self.budget.clone()),
            Some(code) => {
                if code == Code::Ok {
                    self.budget.on_success();
                }
            }
        }
        response.body_mut().set_deadline(deadline);
        response
    }

    /// The wait before the next retry: drawn between 0 and the backoff's ceiling for
    /// it (gRFC A6's jitter), or none without a backoff.
    fn backoff(&self, plan: &Plan<'_>, backoffs: &mut u32, rng: &mut SmallRng) -> Duration {
        let Some(config) = plan.backoff else {
            return Duration::ZERO;
        };
        *backoffs += 1;
        let ceiling = config.backoff_ceiling(*backoffs);
        ceiling.mul_f64(rng.random_range(0.0..=1.0))
    }

    fn note_retry(&self, sub: &Subchannel, why: &str) {
        sub.retries.fetch_add(1, Ordering::Relaxed);
        self.retries.fetch_add(1, Ordering::Relaxed);
        debug!(endpoint = %sub.state.endpoint(), %why, "retrying on another endpoint");
    }
}

/// A copy of the request's head with `body`: the call may need the head again.
pub(crate) fn attempt_request(
    parts: &http::request::Parts,
    body: AttemptBody,
) -> http::Request<AttemptBody> {
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// Whether a retry after `wait` still starts before the call's deadline.
fn fits(deadline: Option<Instant>, wait: Duration) -> bool {
    deadline.is_none_or(|d| Instant::now() + wait < d)
}
