//! One attempt of one call on one endpoint, and its response body.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::future::poll_fn;
use tokio::time::Instant;
use tonic::{Code, Status, body::Body, transport::Channel};
use tower::Service;

use super::subchannel::{Core, Subchannel};
use crate::{Endpoint, EndpointState, InFlightGuard, error::describe};

/// Added to every response's extensions: the endpoint the balancer sent the call to.
///
/// Read it from a tonic response with `response.extensions().get::<PickedEndpoint>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickedEndpoint(pub Endpoint);

/// A picked endpoint, ready to carry one attempt.
pub(crate) struct Route {
    pub state: EndpointState,
    pub guard: InFlightGuard,
    pub channel: Channel,
    pub sub: Arc<Subchannel>,
    pub generation: u64,
    pub core: Arc<Core>,
}

/// Why an attempt failed, and whether another endpoint may try.
pub(crate) struct Failure {
    pub status: Status,
    pub kind: FailureKind,
}

/// What a failed attempt means for a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The request never reached a server (no connection, refused stream, never
    /// sent): sending it elsewhere cannot do anything twice.
    Unsent,
    /// The connection broke while the call was out (reset, closed, declared dead by
    /// a liveness ping): a server may have run it. Retried only if the policy says so.
    Cut,
    /// The call's own deadline passed: no time is left for another attempt.
    Deadline,
}

impl Route {
    pub async fn send(
        mut self,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, Failure> {
        self.sub.calls.fetch_add(1, Ordering::Relaxed);
        let result = match poll_fn(|cx| self.channel.poll_ready(cx)).await {
            Ok(()) => self.channel.call(request).await,
            Err(err) => Err(err),
        };
        let endpoint = self.state.endpoint();
        match result {
            Ok(response) => {
                self.sub.answers.fetch_add(1, Ordering::Relaxed);
                let (mut parts, body) = response.into_parts();
                parts.extensions.insert(PickedEndpoint(endpoint.clone()));
                // A "trailers-only" answer carries its status in the headers: the call
                // is over, and its outcome known, already.
                let outcome = match header_status(&parts.headers) {
                    Some(code) => {
                        self.core
                            .record_outcome(&self.sub, !is_endpoint_failure(code));
                        None
                    }
                    None => Some((self.sub.clone(), self.core.clone())),
                };
                let body = ResponseBody {
                    inner: body,
                    guard: Some(self.guard),
                    outcome,
                };
                Ok(http::Response::from_parts(parts, body))
            }
            Err(err) => {
                // No response arrived. Say which endpoint, and why, in gRPC's terms.
                let reason = describe(&err);
                let (mut status, kind) = if has_cause::<tonic::TimeoutExpired>(&err) {
                    // The call's own deadline ran out: the endpoint may be fine, only
                    // slower than the caller allows; either way it did not answer in
                    // time, which counts against it (as Envoy and linkerd count
                    // timeouts). Not retried: no time is left.
                    self.core.record_outcome(&self.sub, false);
                    let status =
                        Status::deadline_exceeded(format!("endpoint {endpoint}: {reason}"));
                    (status, FailureKind::Deadline)
                } else {
                    let kind = if never_reached_a_server(&err) {
                        FailureKind::Unsent
                    } else {
                        FailureKind::Cut
                    };
                    if asked_to_calm_down(&err) {
                        self.sub.calm_down(self.generation);
                    }
                    if has_cause::<tonic::ConnectError>(&err) {
                        // A connection that could not be made takes the endpoint out of
                        // the snapshot until its task has reconnected it.
                        self.core
                            .report_broken(&self.sub, self.generation, &reason, false);
                        self.core.record_outcome(&self.sub, false);
                    } else if connection_lost(&err) {
                        // The connection under the call is gone (closed, reset, or
                        // declared dead by a liveness ping): out of the rotation until
                        // reconnected and healthy. Connectivity deals with this; it is
                        // not held against the endpoint by outlier detection, so a
                        // server that hung and recovered is back as soon as it answers.
                        self.core
                            .report_broken(&self.sub, self.generation, &reason, true);
                    } else if kind == FailureKind::Cut {
                        // The server reset the call itself: its own failure. (A stream
                        // refused by a connection closing with GOAWAY is routine: a
                        // server recycling connections, not a sign of a bad server.)
                        self.core.record_outcome(&self.sub, false);
                    }
                    let status = Status::unavailable(format!("endpoint {endpoint}: {reason}"));
                    (status, kind)
                };
                status.set_source(Arc::new(err));
                Err(Failure { status, kind })
            }
        }
    }
}

/// Whether a transport error proves that no server saw the request: the connection
/// could not be made, the server refused the stream or announced with a GOAWAY that
/// it would not process it, or the request was cancelled before it was sent.
fn never_reached_a_server(err: &(dyn std::error::Error + 'static)) -> bool {
    has_cause::<tonic::ConnectError>(err)
        || any_cause(err, hyper::Error::is_canceled)
        || any_cause(err, |e: &h2::Error| {
            // Refused outright, or beyond the last stream a GOAWAY said the server
            // would process: h2 fails only those streams with the GOAWAY itself,
            // whatever its reason (graceful, as nginx after every 1,000 calls on a
            // connection, or not, as a server that thinks it is abused); the streams
            // it did take end with the connection, as calls cut off.
            e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
        })
}

/// Whether a transport error says the connection itself is gone, not only this call:
/// closed or reset under it (h2 fails every open stream with an I/O error then), or
/// not answering a liveness ping (hyper's keep-alive timeout).
fn connection_lost(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, hyper::Error::is_timeout) || any_cause(err, h2::Error::is_io)
}

/// Whether the server closed the connection with `ENHANCE_YOUR_CALM` and the debug
/// data `too_many_pings`, as gRPC servers do to a client that pings too often. (Only
/// the calls above the GOAWAY's last stream get that error; the others end with the
/// connection. Other `ENHANCE_YOUR_CALM`s, such as h2's `too_many_resets`, are not
/// about pings.)
fn asked_to_calm_down(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, |e: &h2::Error| {
        e.is_go_away()
            && e.is_remote()
            && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
            && e.to_string().contains("too_many_pings")
    })
}

/// The `grpc-status` in response headers (a trailers-only response), if any.
pub(crate) fn header_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Whether a status says the *endpoint* failed (for outlier detection), rather than
/// that the application answered with an error or the caller gave up.
pub(crate) fn is_endpoint_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss
    )
}

pin_project_lite::pin_project! {
    /// A response body that counts its call as in flight until the body ends, and
    /// reports how the call ended to outlier detection.
    pub struct ResponseBody {
        #[pin]
        inner: Body,
        guard: Option<InFlightGuard>,
        outcome: Option<(Arc<Subchannel>, Arc<Core>)>,
    }
}

impl ResponseBody {
    /// Wraps `inner`, releasing `guard` when the body ends, fails or is dropped.
    pub fn new(inner: Body, guard: InFlightGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
            outcome: None,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(header_status)
                    && let Some((sub, core)) = this.outcome.take()
                {
                    core.record_outcome(&sub, !is_endpoint_failure(code));
                }
            }
            Some(Err(_)) | None => {
                if let (Some((sub, core)), Some(Err(_))) = (this.outcome.take(), &frame) {
                    core.record_outcome(&sub, false);
                }
                this.guard.take(); // The call is over: it no longer loads the endpoint.
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("in_flight", &self.guard.is_some())
            .finish()
    }
}

/// Whether `E` is `err` or one of its causes.
pub(crate) fn has_cause<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    any_cause(err, |_: &E| true)
}

/// Whether `err` or one of its causes is an `E` for which `test` holds.
fn any_cause<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
    test: impl Fn(&E) -> bool + Copy,
) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<E>().is_some_and(test) {
            return true;
        }
        // An io::Error's `source()` skips the error it wraps: look at that one too.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && any_cause(inner, test)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The call's deadline from its `grpc-timeout` header (e.g. `250m` = 250 ms), as tonic
/// sets it from `Request::set_timeout`.
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    // At most 8 digits and a unit, by the gRPC spec; reject anything else.
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` header value (milliseconds, rounded up, at most 8
/// digits).
pub(crate) fn grpc_timeout_value(timeout: Duration) -> http::HeaderValue {
    let millis = timeout.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    http::HeaderValue::from(u64::try_from(millis).unwrap_or(99_999_999))
        .to_str()
        .ok()
        .and_then(|digits| format!("{digits}m").parse().ok())
        .unwrap_or_else(|| http::HeaderValue::from_static("1m"))
}

/// `now + timeout`, saturating instead of panicking on an absurdly long timeout.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
