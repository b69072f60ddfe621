//! Retrying a call on another endpoint, safely.
//!
//! A call that failed *before it reached a server* (the connection was refused, the
//! server refused the stream after GOAWAY, the request was never sent) can be sent again
//! to another endpoint without doing anything twice. A call *cut off* by a dying
//! connection (reset, closed) may have run on the server already; it is retried too by
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
//! Only a request whose body is complete when the call starts (every unary call, and a
//! client stream already sent) can be replayed; a body still streaming goes out once.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use tonic::{Code, Status, body::Body};

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

/// A request body, kept whole for replay or passed through once.
pub(crate) enum RequestBody {
    /// Complete: every attempt sends a copy.
    Replayable(Vec<Bytes>, Option<http::HeaderMap>),
    /// Still streaming: sent once, what was read first going first.
    Streaming(Body),
}

impl RequestBody {
    /// Reads what `body` has ready *now*. A body that ends without waiting (and fits
    /// `limit`) is replayable; one that would have to wait is a stream.
    pub(crate) async fn read(mut body: Body, limit: usize) -> Result<Self, Status> {
        let mut chunks = Vec::new();
        let mut size = 0;
        loop {
            let next =
                futures::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await;
            match next {
                Poll::Ready(None) => return Ok(Self::Replayable(chunks, None)),
                Poll::Ready(Some(Err(status))) => return Err(status),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        size += data.len();
                        chunks.push(data);
                        if size > limit {
                            return Ok(Self::Streaming(prefixed(chunks, None, body)));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        if body.is_end_stream() {
                            return Ok(Self::Replayable(chunks, trailers));
                        }
                        return Ok(Self::Streaming(prefixed(chunks, trailers, body)));
                    }
                },
                Poll::Pending => return Ok(Self::Streaming(prefixed(chunks, None, body))),
            }
        }
    }

    /// The body for one attempt: a copy if replayable, else the stream (once).
    pub(crate) fn attempt(&mut self) -> Option<Body> {
        match self {
            Self::Replayable(chunks, trailers) => {
                Some(prefixed(chunks.clone(), trailers.clone(), Body::empty()))
            }
            Self::Streaming(body) => Some(std::mem::take(body)),
        }
    }

    pub(crate) fn is_replayable(&self) -> bool {
        matches!(self, Self::Replayable(..))
    }
}

fn prefixed(chunks: Vec<Bytes>, trailers: Option<http::HeaderMap>, rest: Body) -> Body {
    let mut frames: VecDeque<Frame<Bytes>> = chunks.into_iter().map(Frame::data).collect();
    if let Some(trailers) = trailers {
        frames.push_back(Frame::trailers(trailers));
    }
    Body::new(Prefixed { frames, rest })
}

/// Frames already read, then the rest of the body.
struct Prefixed {
    frames: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
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

    #[tokio::test]
    async fn a_complete_body_is_replayable_and_copies_are_equal() {
        let body = Body::new(http_body_util_full(b"hello"));
        let mut request = RequestBody::read(body, 1024).await.unwrap();
        assert!(request.is_replayable());
        for _ in 0..2 {
            let body = request.attempt().unwrap();
            assert_eq!(collect(body).await, b"hello");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_once() {
        let body = Body::new(http_body_util_full(b"hello"));
        let mut request = RequestBody::read(body, 2).await.unwrap();
        assert!(!request.is_replayable());
        assert_eq!(collect(request.attempt().unwrap()).await, b"hello");
    }

    /// A one-chunk body, ready at once, as a unary tonic request is.
    fn http_body_util_full(
        bytes: &'static [u8],
    ) -> impl http_body::Body<Data = Bytes, Error = Status> {
        Prefixed {
            frames: VecDeque::from([Frame::data(Bytes::from_static(bytes))]),
            rest: Body::empty(),
        }
    }

    async fn collect(mut body: Body) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(frame) =
            futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(data) = frame.unwrap().into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }
}
