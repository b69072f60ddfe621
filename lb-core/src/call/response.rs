//! The response body that keeps a call counted as in flight until it ends, and what
//! the balancer learns as it passes: how the call ended (for outlier detection), load
//! reports in its trailers (ORCA), and whether it ended OK (for the retry throttle).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use hyper::body::Incoming;
use tonic::{Status, body::Body};

use super::budget::RetryBudget;
use super::headers::{header_status, is_endpoint_failure};
use crate::subchannels::pool::Pool;
use crate::subchannels::subchannel::Subchannel;
use crate::transport::streams::StreamSlot;
use crate::{Endpoint, InFlightGuard};

/// Added to every response's extensions: the endpoint the balancer sent the call to.
///
/// Read it from a tonic response with `response.extensions().get::<PickedEndpoint>()`.
/// (The response's extensions also hold the request's own: the balancer moves them
/// from the request, which no server sees, to the response.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickedEndpoint(pub Endpoint);

/// Hands a load report in `headers` (ORCA's `endpoint-load-metrics-bin`), if there is
/// one, to the endpoint, for weights that follow load. A report that cannot be read is
/// ignored: it was the server's to send, and the call is fine.
pub(crate) fn record_load(sub: &Subchannel, headers: &http::HeaderMap) {
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

/// An answer's first frame, as the attempt read it right after the headers
/// (`attempt.rs`), for the body to give first.
pub(crate) enum First {
    /// Not read (a trailers-only answer, or none within the grace).
    None,
    /// The body ended with nothing in it.
    Ended,
    /// A message came first (the common case, kept inline).
    Data(Bytes),
    /// Another frame came first (trailers: an answer with no message), boxed to keep
    /// the attempt's future small (it is moved several times on a call's way).
    Frame(Box<http_body::Frame<Bytes>>),
    /// Reading it failed so.
    Failed(hyper::Error),
}

impl First {
    /// What hyper's `poll_frame` gave.
    pub(crate) fn of(frame: Option<Result<http_body::Frame<Bytes>, hyper::Error>>) -> Self {
        match frame {
            None => Self::Ended,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Self::Data(data),
                Err(frame) => Self::Frame(Box::new(frame)),
            },
            Some(Err(err)) => Self::Failed(err),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call as in flight until the body ends, and
    /// reports how the call ended to outlier detection.
    ///
    /// The call's deadline covers the body too: the attempt's own timer stops at the
    /// response headers, so a server that sends them and then stalls would otherwise
    /// hold the call until the connection dies.
    ///
    /// (Every answer's body is moved a few times on its way to the caller, so it is
    /// kept small: what most calls never use is boxed or folded into one field.)
    pub struct ResponseBody {
        inner: Inner,
        guard: InFlightGuard,
        // The call's stream on its connection, given back with the guard (gRFC A105).
        stream: Option<StreamSlot>,
        outcome: Option<(Arc<Subchannel>, Arc<Pool>)>,
        // The call's deadline, and its timer, made only if the body has to be
        // waited for (most answers are in full by the time they are read).
        deadline: Deadline,
        // The retry throttle, given a token back if the call ends OK (gRFC A6 counts a
        // call's success by its status, which is in the trailers).
        credit: Option<Arc<RetryBudget>>,
    }
}

/// The body under a [`ResponseBody`]: hyper's own, as it came off the connection, or
/// any other.
enum Inner {
    /// hyper's body, and its first message if the attempt read it already (the common
    /// case: any other first frame is rare, and makes the body an [`Inner::Body`]: of
    /// [`Rest`], or an empty one if hyper's had ended).
    Wire(Incoming, Option<Bytes>),
    Body(Body),
}

/// The deadline of a call's body, and the timer for it once the body has had to be
/// waited for.
enum Deadline {
    None,
    At(tokio::time::Instant),
    Ticking(Pin<Box<tokio::time::Sleep>>),
    /// It passed: the body has said so, and says nothing more.
    Passed,
}

impl Inner {
    /// hyper's `body` and its `first` frame, read by the attempt.
    fn wire(body: Incoming, first: First) -> Self {
        match first {
            First::None => Self::Wire(body, None),
            First::Data(data) => Self::Wire(body, Some(data)),
            // It is over: hyper's body has nothing more to give.
            First::Ended => Self::Body(Body::empty()),
            First::Frame(frame) => Self::rest(Ok(*frame), body),
            First::Failed(err) => Self::rest(Err(wire_error(err)), body),
        }
    }

    fn rest(first: Result<Frame<Bytes>, Status>, body: Incoming) -> Self {
        Self::Body(Body::new(Rest {
            first: Some(first),
            body,
        }))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self {
            Self::Wire(body, first) => match first.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Pin::new(body).poll_frame(cx).map_err(wire_error),
            },
            Self::Body(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Wire(_, Some(_)) => false,
            Self::Wire(body, None) => body.is_end_stream(),
            Self::Body(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Wire(_, Some(_)) => http_body::SizeHint::new(),
            Self::Wire(body, None) => body.size_hint(),
            Self::Body(body) => body.size_hint(),
        }
    }
}

/// As tonic reads a transport error: a reset stream's reason becomes its gRPC code
/// (CANCEL is CANCELLED, and so on).
fn wire_error(err: hyper::Error) -> Status {
    Status::from_error(Box::new(err))
}

/// A body after a first frame that was not a message (hyper's, whose first frame was
/// its trailers or an error): that frame is given first, then the rest of the body.
struct Rest<B> {
    first: Option<Result<Frame<Bytes>, Status>>,
    body: B,
}

impl<B> http_body::Body for Rest<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        // As tonic reads a transport error (see `wire_error`).
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(|err| Status::from_error(err.into()))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.first {
            Some(_) => http_body::SizeHint::new(),
            None => self.body.size_hint(),
        }
    }
}

impl ResponseBody {
    /// Wraps `inner`, releasing `guard` when the body ends, fails or is dropped.
    pub fn new(inner: Body, guard: InFlightGuard) -> Self {
        Self {
            inner: Inner::Body(inner),
            guard,
            stream: None,
            outcome: None,
            deadline: Deadline::None,
            credit: None,
        }
    }

    /// The body of an answer off the wire (with its `first` frame, if the attempt read
    /// it), counted in flight until it ends by `guard`
    /// (and its `stream` on the connection), and telling `outcome`'s pool how the call
    /// ended, if its headers did not say already.
    pub(crate) fn from_wire(
        body: Incoming,
        first: First,
        guard: InFlightGuard,
        stream: Option<StreamSlot>,
        outcome: Option<(Arc<Subchannel>, Arc<Pool>)>,
    ) -> Self {
        Self {
            inner: Inner::wire(body, first),
            guard,
            stream,
            outcome,
            deadline: Deadline::None,
            credit: None,
        }
    }

    /// The same body, failing with `DEADLINE_EXCEEDED` if it has not ended by
    /// `deadline`.
    #[cfg(test)]
    pub(crate) fn until(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.set_deadline(deadline);
        self
    }

    /// Fails the body with `DEADLINE_EXCEEDED` if it has not ended by `deadline` (in
    /// place: a body is not moved for it).
    pub(crate) fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = match deadline {
            Some(deadline) => Deadline::At(deadline),
            None => Deadline::None,
        };
    }

    /// The same body, giving `budget` a token back if its trailers say OK.
    #[cfg(test)]
    pub(crate) fn credit(mut self, budget: Arc<RetryBudget>) -> Self {
        self.set_credit(budget);
        self
    }

    /// Gives `budget` a token back if the trailers say OK (in place).
    pub(crate) fn set_credit(&mut self, budget: Arc<RetryBudget>) {
        self.credit = Some(budget);
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if let Deadline::Passed = this.deadline {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Deadline::At(deadline) = *this.deadline {
                    *this.deadline =
                        Deadline::Ticking(Box::pin(tokio::time::sleep_until(deadline)));
                }
                let Deadline::Ticking(timer) = this.deadline else {
                    return Poll::Pending; // No deadline, or it passed already.
                };
                ready!(timer.as_mut().poll(cx));
                // Out of time before the body ended: the endpoint let the call run out,
                // which counts against it, as a deadline before the headers does.
                *this.deadline = Deadline::Passed;
                let endpoint = match this.outcome.take() {
                    Some((sub, pool)) => {
                        pool.record_outcome(&sub, false);
                        format!("endpoint {}: ", sub.state.endpoint())
                    }
                    None => String::new(),
                };
                this.guard.finish_now();
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
                this.guard.finish_now(); // The call is over: it no longer loads the endpoint.
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
            .field("in_flight", &self.guard.in_flight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EndpointState;
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

    /// An answer whose first frame was not a message (its trailers, or an error, read
    /// by the attempt) gives that frame first, then the rest of its body; the call is in
    /// flight until the body ends, and counted once.
    #[test]
    fn a_first_frame_other_than_a_message_is_given_first() {
        let state = EndpointState::new("127.0.0.1:1".parse().unwrap());
        let trailers = Rest {
            first: Some(Ok(Frame::trailers(http::HeaderMap::new()))),
            body: Frames(VecDeque::new()),
        };
        assert!(!trailers.is_end_stream(), "the trailers are still to come");
        assert!(trailers.size_hint().exact().is_none());
        let mut body = ResponseBody::new(Body::new(trailers), state.start_call());
        assert!(poll(&mut body).unwrap().is_trailers());
        assert_eq!(state.in_flight(), 1, "not over until the body says so");
        assert!(poll(&mut body).is_none());
        assert_eq!(state.in_flight(), 0, "the end of the body ends the call");
        drop(body);
        assert_eq!(state.in_flight(), 0, "and is counted once");

        // An error first: the caller gets it as it was, and the call is over.
        let failed = Rest {
            first: Some(Err(Status::cancelled("the server reset the stream"))),
            body: Frames(VecDeque::from([Frame::data(Bytes::from_static(b"never"))])),
        };
        let mut body = ResponseBody::new(Body::new(failed), state.start_call());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(status))) => {
                assert_eq!(status.code(), tonic::Code::Cancelled);
                assert_eq!(status.message(), "the server reset the stream");
            }
            other => panic!("expected the error first, got {other:?}"),
        }
        assert_eq!(state.in_flight(), 0, "an error ends the call");
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
