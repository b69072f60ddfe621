//! One attempt of one call on one endpoint: sending it, reading what a failure means
//! (never sent, cut off, out of time), and the response body that keeps the call
//! counted as in flight until it ends.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;

use tokio::time::Instant;
use tonic::Status;

use super::headers::{header_status, is_endpoint_failure};
use super::response::{PickedEndpoint, ResponseBody, record_load};
use crate::subchannels::pool::Pool;
use crate::subchannels::subchannel::Subchannel;
use crate::transport::errors::{
    asked_to_calm_down, connection_lost, describe, going_away, never_reached_a_server,
};
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
    pub async fn send(
        mut self,
        request: http::Request<AttemptBody>,
        extensions: &mut http::Extensions,
        deadline: Option<Instant>,
        fair_share: bool,
    ) -> Result<http::Response<ResponseBody>, Failure> {
        self.sub.calls.fetch_add(1, Ordering::Relaxed);
        // A stream on the first connection with one free (gRFC A105): usually this
        // one; when it has as many calls open as its server allows, another. With one
        // connection per endpoint, nothing is counted.
        let mut on_extra = false;
        let scaling = self.pool.settings.max_connections > 1;
        let stream = match scaling.then(|| self.wire.streams.try_take()) {
            None => None,
            Some(Some(stream)) => Some(stream),
            Some(None) => {
                // Within the call's deadline: a connection slow to open must not hold
                // a call past it.
                let elsewhere =
                    self.sub
                        .stream_elsewhere(&self.wire, self.generation, &self.pool.settings);
                let found = match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, elsewhere).await.ok(),
                    None => Some(elsewhere.await),
                };
                match found {
                    Some((wire, stream)) => {
                        on_extra = !Arc::ptr_eq(&wire.streams, &self.wire.streams);
                        self.wire = wire;
                        Some(stream)
                    }
                    // Out of time: the send below fails with the deadline at once.
                    None => Some(self.wire.streams.take()),
                }
            }
        };
        let sent = self.wire.send(request);
        let result = match deadline {
            None => sent.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                Ok(result) => result,
                Err(_) => {
                    // Dropping the attempt resets its stream: the server sees CANCELLED.
                    // An endpoint that lets calls run out of time is failing them, as
                    // Envoy and linkerd count it (and its latency estimate has just
                    // taken the whole wait, for the load-aware policies).
                    if fair_share {
                        self.pool.record_outcome(&self.sub, false);
                    }
                    let endpoint = self.state.endpoint();
                    return Err(Failure {
                        status: Status::deadline_exceeded(format!(
                            "endpoint {endpoint}: deadline exceeded"
                        )),
                        kind: FailureKind::Deadline,
                    });
                }
            },
        };
        // An answer has begun once its first frame is in, not its headers: a server
        // killed between writing the two would otherwise cost the call, which the
        // headers alone would have committed (see `first_frame`).
        let result = match result {
            Ok(response) => {
                let (parts, mut body) = response.into_parts();
                // A "trailers-only" answer carries its status in the headers: the call
                // is over, and its outcome known, already.
                let status = header_status(&parts.headers);
                let first = match status {
                    Some(_) => First::None,
                    None => first_frame(&mut body, deadline).await,
                };
                match first {
                    // The connection broke: the attempt failed, as if before its answer.
                    First::Failed(err) if connection_lost(&err) || going_away(&err) => Err(err),
                    // Anything else (a stream the server reset) is the answer's to tell.
                    first => Ok((parts, body, first, status)),
                }
            }
            Err(err) => Err(err),
        };
        let endpoint = self.state.endpoint();
        match result {
            Ok((mut parts, body, first, status)) => {
                self.sub.answers.fetch_add(1, Ordering::Relaxed);
                let mut call = std::mem::take(extensions);
                call.extend(std::mem::take(&mut parts.extensions));
                call.insert(PickedEndpoint(endpoint.clone()));
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
                Ok(http::Response::from_parts(parts, body))
            }
            Err(err) => {
                // No response arrived. Say which endpoint, and why, in gRPC's terms.
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
                    // The connection under the call is gone (closed, reset, or declared
                    // dead by a liveness ping), or going (the server sent GOAWAY): out of
                    // the rotation until reconnected and healthy. Connectivity deals with
                    // this; it is not held against the endpoint by outlier detection, so
                    // a server that hung and recovered is back as soon as it answers, and
                    // a server recycling its connections (as nginx does after every
                    // 1,000 calls on one) is not a bad server.
                    // (An extra connection, gRFC A105, leaves its set when it closes:
                    // the endpoint's first connection may be fine.)
                    if !on_extra {
                        self.pool.report_broken(&self.sub, self.generation, &reason);
                    }
                } else if kind == FailureKind::Cut {
                    // The server reset the call itself: its own failure.
                    self.pool.record_outcome(&self.sub, false);
                }
                let mut status = Status::unavailable(format!("endpoint {endpoint}: {reason}"));
                status.set_source(Arc::new(err));
                Err(Failure { status, kind })
            }
        }
    }
}

/// How long an answer's first frame is waited for after its headers, at most: a healthy
/// server sends both at once, within microseconds; a server that sends its headers and
/// then takes its time (a stream with nothing to say yet) gets its headers to the
/// caller after this, as they are.
pub(crate) const FIRST_FRAME_GRACE: Duration = Duration::from_millis(50);

/// An answer's first frame, read right after its headers.
pub(crate) enum First {
    /// Not read (a trailers-only answer, or none within the grace).
    None,
    /// The body ended with nothing in it.
    Ended,
    /// A message came first (the common case, kept inline).
    Data(Bytes),
    /// Another frame came first (trailers: an answer with no message), boxed to keep
    /// every body small (a body is moved several times on a call's way).
    Frame(Box<http_body::Frame<Bytes>>),
    /// Reading it failed so.
    Failed(hyper::Error),
}

/// Reads `body`'s first frame: at once if it is there (the common case, with no timer
/// made), else within [`FIRST_FRAME_GRACE`] or the deadline if sooner. A connection
/// that breaks meanwhile is the attempt's failure, to be retried like any call cut off
/// before its answer: the caller has been given nothing yet. (`first_frame` only
/// reads; `Route::send` decides.)
async fn first_frame(body: &mut Incoming, deadline: Option<Instant>) -> First {
    let mut next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    let frame = match futures::FutureExt::now_or_never(&mut next) {
        Some(frame) => frame,
        None => {
            // Boxed: the timer is the rare path, and would make every attempt's future
            // (moved several times per call) bigger for nothing.
            let grace = Instant::now() + FIRST_FRAME_GRACE;
            let until = deadline.map_or(grace, |d| d.min(grace));
            match Box::pin(tokio::time::timeout_at(until, next)).await {
                Ok(frame) => frame,
                Err(_) => return First::None,
            }
        }
    };
    match frame {
        None => First::Ended,
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => First::Data(data),
            Err(frame) => First::Frame(Box::new(frame)),
        },
        Some(Err(err)) => First::Failed(err),
    }
}
