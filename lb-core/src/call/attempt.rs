//! One attempt of one call on one endpoint: sending it, reading the answer's first
//! frame, and what a failure means (never sent, cut off, out of time). The response
//! body that keeps the call counted as in flight until it ends is in `response.rs`.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, Waker},
    time::Duration,
};

use http_body::Body as _;
use hyper::body::Incoming;

use tokio::time::Instant;
use tonic::Status;

use super::headers::{header_status, is_endpoint_failure};
use super::response::{First, PickedEndpoint, ResponseBody, record_load};
use crate::subchannels::pool::Pool;
use crate::subchannels::subchannel::Subchannel;
use crate::transport::errors::{
    asked_to_calm_down, connection_lost, describe, going_away, never_reached_a_server,
};
use crate::transport::streams::StreamSlot;
use crate::transport::wire::{AttemptBody, Wire};
use crate::{EndpointState, InFlightGuard};

/// A picked endpoint, ready to carry one attempt.
pub(crate) struct Route {
    pub state: EndpointState,
    pub guard: InFlightGuard,
    pub wire: Wire,
    pub sub: Arc<Subchannel>,
    pub generation: u64,
    pub pool: Arc<Pool>,
}

/// Why an attempt failed, and whether another endpoint may try.
pub(crate) struct Failure {
    pub status: Status,
    pub kind: FailureKind,
}

/// What a failed attempt means for a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The request never reached a server (the connection was gone, the stream was
    /// refused): sending it elsewhere cannot do anything twice.
    Unsent,
    /// The connection broke while the call was out (reset, closed, declared dead by
    /// a liveness ping): a server may have run it. Retried only if the policy says so.
    Cut,
    /// The call's own deadline passed: no time is left for another attempt.
    Deadline,
}

impl Route {
    /// Sends one attempt and waits for the response's headers, until `deadline` at
    /// the latest. An attempt that runs out of time counts against its endpoint if it
    /// had a `fair_share` of the call's time (not one sent late in the call, after a
    /// wait for a reconnect or a retry).
    ///
    /// The response's extensions are the call's (`extensions`, taken from the request:
    /// nothing below the balancer reads them), hyper's and a [`PickedEndpoint`]: one
    /// map, made once per call (making one for the response alone would cost two
    /// allocations). On a failure, `extensions` are left for the next attempt.
    ///
    /// (An `async` block, not an `async fn`: the future holds its arguments once, where
    /// an `async fn` keeps a second copy of them. This future is the largest part of a
    /// call's, and is moved on every call; the waits that few calls have are boxed.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async block's future holds the arguments once, an async fn's twice"
    )]
    pub fn send<'a>(
        mut self,
        request: http::Request<AttemptBody>,
        extensions: &'a mut http::Extensions,
        deadline: Option<Instant>,
        fair_share: bool,
    ) -> impl Future<Output = Result<http::Response<ResponseBody>, Failure>> + Send + 'a {
        async move {
            self.sub.calls.fetch_add(1, Ordering::Relaxed);
            // A stream on the first connection with one free (gRFC A105): usually this
            // one; when it has as many calls open as its server allows, another. With
            // one connection per endpoint, nothing is counted.
            let mut on_extra = false;
            let stream = if self.pool.settings.max_connections > 1 {
                match self.wire.streams.try_take() {
                    Some(stream) => Some(stream),
                    None => match Box::pin(self.stream_elsewhere(deadline)).await {
                        Some((wire, stream)) => {
                            on_extra = !Arc::ptr_eq(&wire.streams, &self.wire.streams);
                            self.wire = wire;
                            Some(stream)
                        }
                        // Out of time: the send below fails with the deadline at once.
                        None => Some(self.wire.streams.take()),
                    },
                }
            } else {
                None
            };
            let sent = self.wire.send(request);
            let result = match deadline {
                None => sent.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                    Ok(result) => result,
                    Err(_) => return Err(self.out_of_time(fair_share)),
                },
            };
            let mut response = match result {
                Ok(response) => response,
                Err(err) => return Err(self.failed(err, on_extra)),
            };
            // An answer has begun once its first frame is in, not its headers: a server
            // killed between writing the two would otherwise cost the call, which the
            // headers alone would have committed (see `first_frame`). A "trailers-only"
            // answer carries its status in the headers: the call is over, and its
            // outcome known, already.
            let status = header_status(response.headers());
            let first = match status {
                Some(_) => First::None,
                None => match first_frame_now(response.body_mut()) {
                    Some(first) => first,
                    None => Box::pin(first_frame(response.body_mut(), deadline)).await,
                },
            };
            match first {
                // The connection broke: the attempt failed, as if before its answer.
                First::Failed(err) if connection_lost(&err) || going_away(&err) => {
                    Err(self.failed(err, on_extra))
                }
                // Anything else (a stream the server reset) is the answer's to tell.
                first => Ok(self.answered(response, first, status, extensions, stream)),
            }
        }
    }

    /// A stream on another of the endpoint's connections (opening one if it may),
    /// within the call's `deadline`: a connection slow to open must not hold a call
    /// past it. `None` if the deadline came first.
    async fn stream_elsewhere(&self, deadline: Option<Instant>) -> Option<(Wire, StreamSlot)> {
        let elsewhere = self
            .sub
            .stream_elsewhere(&self.wire, self.generation, &self.pool.settings);
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, elsewhere).await.ok(),
            None => Some(elsewhere.await),
        }
    }

    /// The answer, as the call's: its extensions, what its headers tell the balancer,
    /// and its body, counted in flight until it ends.
    fn answered(
        self,
        response: http::Response<Incoming>,
        first: First,
        status: Option<tonic::Code>,
        extensions: &mut http::Extensions,
        stream: Option<StreamSlot>,
    ) -> http::Response<ResponseBody> {
        self.sub.answers.fetch_add(1, Ordering::Relaxed);
        let (mut parts, body) = response.into_parts();
        let mut call = std::mem::take(extensions);
        call.extend(std::mem::take(&mut parts.extensions));
        call.insert(PickedEndpoint(self.state.endpoint().clone()));
        parts.extensions = call;
        record_load(&self.sub, &parts.headers);
        let outcome = match status {
            Some(code) => {
                self.pool
                    .record_outcome(&self.sub, !is_endpoint_failure(code));
                None
            }
            None => Some((self.sub.clone(), self.pool.clone())),
        };
        let body = ResponseBody::from_wire(body, first, self.guard, stream, outcome);
        http::Response::from_parts(parts, body)
    }

    /// The attempt ran out of the call's time before its answer came.
    fn out_of_time(&self, fair_share: bool) -> Failure {
        // Dropping the attempt resets its stream: the server sees CANCELLED. An
        // endpoint that lets calls run out of time is failing them, as Envoy and
        // linkerd count it (and its latency estimate has just taken the whole wait,
        // for the load-aware policies).
        if fair_share {
            self.pool.record_outcome(&self.sub, false);
        }
        Failure {
            status: Status::deadline_exceeded(format!(
                "endpoint {}: deadline exceeded",
                self.state.endpoint()
            )),
            kind: FailureKind::Deadline,
        }
    }

    /// No answer arrived: say which endpoint, and why, in gRPC's terms.
    fn failed(&self, err: hyper::Error, on_extra: bool) -> Failure {
        let reason = describe(&err);
        let kind = if never_reached_a_server(&err) {
            FailureKind::Unsent
        } else {
            FailureKind::Cut
        };
        if asked_to_calm_down(&err) {
            self.sub.calm_down(self.generation);
        }
        if connection_lost(&err) || going_away(&err) {
            // The connection under the call is gone (closed, reset, or declared dead by
            // a liveness ping), or going (the server sent GOAWAY): out of the rotation
            // until reconnected and healthy. Connectivity deals with this; it is not
            // held against the endpoint by outlier detection, so a server that hung and
            // recovered is back as soon as it answers, and a server recycling its
            // connections (as nginx does after every 1,000 calls on one) is not a bad
            // server. (An extra connection, gRFC A105, leaves its set when it closes:
            // the endpoint's first connection may be fine.)
            if !on_extra {
                self.pool.report_broken(&self.sub, self.generation, &reason);
            }
        } else if kind == FailureKind::Cut {
            // The server reset the call itself: its own failure.
            self.pool.record_outcome(&self.sub, false);
        }
        let mut status =
            Status::unavailable(format!("endpoint {}: {reason}", self.state.endpoint()));
        status.set_source(Arc::new(err));
        Failure { status, kind }
    }
}

/// How long an answer's first frame is waited for after its headers, at most: a healthy
/// server sends both at once, within microseconds; a server that sends its headers and
/// then takes its time (a stream with nothing to say yet) gets its headers to the
/// caller after this, as they are.
pub(crate) const FIRST_FRAME_GRACE: Duration = Duration::from_millis(50);

/// `body`'s first frame if it is in already: the common case, as a healthy server
/// sends it with the headers.
fn first_frame_now(body: &mut Incoming) -> Option<First> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(First::of(frame)),
        Poll::Pending => None,
    }
}

/// Waits for `body`'s first frame within [`FIRST_FRAME_GRACE`], or the deadline if
/// sooner. A connection that breaks meanwhile is the attempt's failure, to be retried
/// like any call cut off before its answer: the caller has been given nothing yet.
/// (`first_frame` only reads; `Route::send` decides.)
async fn first_frame(body: &mut Incoming, deadline: Option<Instant>) -> First {
    let grace = Instant::now() + FIRST_FRAME_GRACE;
    let until = deadline.map_or(grace, |d| d.min(grace));
    let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout_at(until, next).await {
        Ok(frame) => First::of(frame),
        Err(_) => First::None,
    }
}
