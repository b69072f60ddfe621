//! One attempt of one call on one endpoint: sending it, reading what a failure means
//! (never sent, cut off, out of time), and the response body that keeps the call
//! counted as in flight until it ends.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;
use tonic::{Status, body::Body};

use super::headers::{header_status, is_endpoint_failure};
use super::pool::Pool;
use super::retry::RetryBudget;
use super::streams::StreamSlot;
use super::subchannel::Subchannel;
use super::wire::{AttemptBody, Wire};
use crate::{Endpoint, EndpointState, InFlightGuard};

/// Added to every response's extensions: the endpoint the balancer sent the call to.
///
/// Read it from a tonic response with `response.extensions().get::<PickedEndpoint>()`.
/// (The response's extensions also hold the request's own: the balancer moves them
/// from the request, which no server sees, to the response.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickedEndpoint(pub Endpoint);

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
        let endpoint = self.state.endpoint();
        match result {
            Ok(response) => {
                self.sub.answers.fetch_add(1, Ordering::Relaxed);
                let (mut parts, body) = response.into_parts();
                let mut call = std::mem::take(extensions);
                call.extend(std::mem::take(&mut parts.extensions));
                call.insert(PickedEndpoint(endpoint.clone()));
                parts.extensions = call;
                // A "trailers-only" answer carries its status in the headers: the call
                // is over, and its outcome known, already.
                record_load(&self.sub, &parts.headers);
                let outcome = match header_status(&parts.headers) {
                    Some(code) => {
                        self.pool
                            .record_outcome(&self.sub, !is_endpoint_failure(code));
                        None
                    }
                    None => Some((self.sub.clone(), self.pool.clone())),
                };
                let body = ResponseBody {
                    inner: Inner::Wire(body),
                    guard: Some(self.guard),
                    stream,
                    outcome,
                    deadline: None,
                    timer: None,
                    timed_out: false,
                    credit: None,
                };
                Ok(http::Response::from_parts(parts, body))
            }
            Err(err) => {
                // No response arrived. Say which endpoint, and why, in gRPC's terms.
                let reason = super::describe(&err);
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

/// Hands a load report in `headers` (ORCA's `endpoint-load-metrics-bin`), if there is
/// one, to the endpoint, for weights that follow load. A report that cannot be read is
/// ignored: it was the server's to send, and the call is fine.
fn record_load(sub: &Subchannel, headers: &http::HeaderMap) {
    if sub.oob_reports.load(Ordering::Relaxed) {
        return; // The out-of-band stream reports for this endpoint (gRFC A58).
    }
    match crate::orca::OrcaLoadReport::from_headers(headers) {
        Some(Ok(report)) => sub.state.record_load(&report, crate::clock::now_nanos()),
        Some(Err(err)) => {
            tracing::debug!(endpoint = %sub.state.endpoint(), %err, "load report ignored");
        }
        None => {}
    }
}

/// Whether a transport error proves that no server saw the request: the connection
/// was gone before the request was handed to it, or the server refused the stream or
/// announced with a GOAWAY that it would not process it.
fn never_reached_a_server(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, never_handed_over)
        || any_cause(err, |e: &h2::Error| {
            // Refused outright, or beyond the last stream a GOAWAY said the server
            // would process: h2 fails only those streams with the GOAWAY itself,
            // whatever its reason (graceful, as nginx after every 1,000 calls on a
            // connection, or not, as a server that thinks it is abused); the streams
            // it did take end with the connection, as calls cut off.
            e.reason() == Some(h2::Reason::REFUSED_STREAM) || going_away(e)
        })
}

/// Whether hyper gave the request back unsent: its connection was closed before the
/// request reached it ("canceled"), or ended while the request still waited in its
/// queue, or for a stream the server's limit did not allow yet ("dispatch task is
/// gone").
fn never_handed_over(err: &hyper::Error) -> bool {
    err.is_canceled() || (err.is_user() && err.to_string().starts_with("dispatch task is gone"))
}

/// Whether a transport error says the connection itself is gone, not only this call:
/// gone before the call was handed to it, closed or reset under it (h2 fails every open
/// stream with an I/O error then), or not answering a liveness ping (hyper's
/// keep-alive timeout).
fn connection_lost(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, never_handed_over)
        || any_cause(err, hyper::Error::is_timeout)
        || any_cause(err, h2::Error::is_io)
}

/// Whether the server said, with a GOAWAY, that this connection takes no new calls.
fn going_away(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, |e: &h2::Error| e.is_go_away() && e.is_remote())
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

pin_project_lite::pin_project! {
    /// A response body that counts its call as in flight until the body ends, and
    /// reports how the call ended to outlier detection.
    ///
    /// The call's deadline covers the body too: the attempt's own timer stops at the
    /// response headers, so a server that sends them and then stalls would otherwise
    /// hold the call until the connection dies.
    pub struct ResponseBody {
        inner: Inner,
        guard: Option<InFlightGuard>,
        // The call's stream on its connection, given back with the guard (gRFC A105).
        stream: Option<StreamSlot>,
        outcome: Option<(Arc<Subchannel>, Arc<Pool>)>,
        // The call's deadline, and its timer, made only if the body has to be
        // waited for (most answers are in full by the time they are read).
        deadline: Option<tokio::time::Instant>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        timed_out: bool,
        // The retry throttle, given a token back if the call ends OK (gRFC A6 counts a
        // call's success by its status, which is in the trailers).
        credit: Option<Arc<RetryBudget>>,
    }
}

/// The body under a [`ResponseBody`]: hyper's own, as it came off the connection, or
/// any other.
enum Inner {
    Wire(Incoming),
    Body(Body),
}

impl Inner {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        match self {
            // As tonic reads a transport error: a reset stream's reason becomes its
            // gRPC code (CANCEL is CANCELLED, and so on).
            Self::Wire(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|err| Status::from_error(Box::new(err))),
            Self::Body(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Wire(body) => body.is_end_stream(),
            Self::Body(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Wire(body) => body.size_hint(),
            Self::Body(body) => body.size_hint(),
        }
    }
}

impl ResponseBody {
    /// Wraps `inner`, releasing `guard` when the body ends, fails or is dropped.
    pub fn new(inner: Body, guard: InFlightGuard) -> Self {
        Self {
            inner: Inner::Body(inner),
            guard: Some(guard),
            stream: None,
            outcome: None,
            deadline: None,
            timer: None,
            timed_out: false,
            credit: None,
        }
    }

    /// The same body, failing with `DEADLINE_EXCEEDED` if it has not ended by
    /// `deadline`.
    pub(crate) fn until(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The same body, giving `budget` a token back if its trailers say OK.
    pub(crate) fn credit(mut self, budget: Arc<RetryBudget>) -> Self {
        self.credit = Some(budget);
        self
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
        if *this.timed_out {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let Some(deadline) = *this.deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                // Out of time before the body ended: the endpoint let the call run out,
                // which counts against it, as a deadline before the headers does.
                *this.timed_out = true;
                let endpoint = match this.outcome.take() {
                    Some((sub, pool)) => {
                        pool.record_outcome(&sub, false);
                        format!("endpoint {}: ", sub.state.endpoint())
                    }
                    None => String::new(),
                };
                this.guard.take();
                this.stream.take();
                return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "{endpoint}deadline exceeded while the response was still arriving"
                )))));
            }
        };
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some((sub, _))) = (frame.trailers_ref(), &this.outcome) {
                    record_load(sub, trailers);
                }
                if let Some(code) = frame.trailers_ref().and_then(header_status) {
                    if let Some((sub, pool)) = this.outcome.take() {
                        pool.record_outcome(&sub, !is_endpoint_failure(code));
                    }
                    if let Some(budget) = this.credit.take()
                        && code == tonic::Code::Ok
                    {
                        budget.on_success();
                    }
                }
            }
            Some(Err(_)) | None => {
                if let (Some((sub, pool)), Some(Err(_))) = (this.outcome.take(), &frame) {
                    pool.record_outcome(&sub, false);
                }
                this.guard.take(); // The call is over: it no longer loads the endpoint.
                this.stream.take();
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

/// Whether `err` or one of its causes is an `E` for which `test` holds.
pub(crate) fn any_cause<E: std::error::Error + 'static>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use std::collections::VecDeque;

    /// A body that yields its frames one poll at a time.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn poll(body: &mut ResponseBody) -> Option<Frame<Bytes>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(frame) => frame.map(|f| f.unwrap()),
            Poll::Pending => panic!("test body never pends"),
        }
    }

    #[test]
    fn a_call_is_in_flight_until_its_body_ends() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(
                b"headers came first; this is the message",
            )),
            Frame::trailers(http::HeaderMap::new()),
        ]));
        let mut body = ResponseBody::new(Body::new(frames), state.start_call());
        assert_eq!(state.in_flight(), 1, "headers alone do not end a call");
        assert!(poll(&mut body).unwrap().is_data());
        assert_eq!(state.in_flight(), 1, "the message is not the end either");
        assert!(poll(&mut body).unwrap().is_trailers());
        assert!(poll(&mut body).is_none());
        assert_eq!(state.in_flight(), 0, "the end of the body ends the call");
        drop(body);
        assert_eq!(state.in_flight(), 0, "and is counted once");
    }

    /// The throttle gets its token back when the call *ends* OK: by its trailers, not
    /// when its headers came.
    #[test]
    fn a_call_is_a_success_to_the_throttle_when_its_trailers_say_ok() {
        use crate::RetryPolicy;
        for (status, credited) in [("0", true), ("14", false)] {
            let budget = Arc::new(RetryBudget::new(&RetryPolicy {
                max_tokens: 10,
                token_ratio: 1.0,
                ..RetryPolicy::default()
            }));
            for _ in 0..5 {
                budget.on_failure();
            }
            assert!(!budget.allows_retry(), "5 of 10 tokens left");
            let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", status.parse().unwrap());
            let frames = Frames(VecDeque::from([
                Frame::data(Bytes::from_static(b"the message")),
                Frame::trailers(trailers),
            ]));
            let mut body =
                ResponseBody::new(Body::new(frames), state.start_call()).credit(budget.clone());
            assert!(poll(&mut body).unwrap().is_data());
            assert!(!budget.allows_retry(), "status {status}: not over yet");
            assert!(poll(&mut body).unwrap().is_trailers());
            assert_eq!(budget.allows_retry(), credited, "status {status}");
        }
    }

    #[test]
    fn dropping_an_unfinished_body_ends_the_call() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let frames = Frames(VecDeque::from([Frame::data(Bytes::from_static(b"x"))]));
        let body = ResponseBody::new(Body::new(frames), state.start_call());
        assert_eq!(state.in_flight(), 1);
        drop(body);
        assert_eq!(state.in_flight(), 0);
    }

    #[test]
    fn causes_are_found_anywhere_in_the_chain() {
        let inner = std::io::Error::other(Status::unavailable("inner"));
        let outer = Status::from_error(Box::new(inner));
        assert!(any_cause(&outer, |s: &Status| s.message() == "inner"));
        assert!(!any_cause(&outer, h2::Error::is_io));
    }

    /// A body whose server went quiet after the headers.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_covers_the_body_too() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let start = tokio::time::Instant::now();
        let deadline = start + std::time::Duration::from_millis(200);
        let mut body =
            ResponseBody::new(Body::new(Stalled), state.start_call()).until(Some(deadline));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let status = frame.expect("an error, not the end").unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(200));
        assert_eq!(state.in_flight(), 0, "the call is over");
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(next.is_none(), "and stays over");
    }
}
