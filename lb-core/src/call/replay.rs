//! Keeping a request body so that a retry can send it again.
//!
//! A request whose body is complete when the call starts (every unary call from a
//! tonic client) is kept whole and each attempt sends a copy. A body still streaming
//! when the call starts (a client stream, or a call relayed by lb-proxy whose frames
//! are still arriving) is *recorded* as it is sent, as gRPC's retry buffer does: a
//! retry sends what was recorded and then goes on reading the caller's stream. Once
//! the body outgrows [`RetryPolicy::max_replay_bytes`] or a response arrives, the
//! recording is dropped and the call is committed to its endpoint.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use tokio::sync::Notify;
use tonic::{Status, body::Body};

use crate::transport::wire::AttemptBody;

/// A request body, kept for replay or passed through once.
pub(crate) enum RequestBody {
    /// Complete when the call started, in at most one chunk and without trailers
    /// (every unary call): every attempt sends the same bytes, nothing is copied.
    One(Option<Bytes>),
    /// Complete when the call started: every attempt sends a copy.
    Replayable(Vec<Bytes>, Option<http::HeaderMap>),
    /// Still streaming when the call started: recorded as it is sent, so that a retry
    /// can send what was sent before and then go on with the rest.
    Recording(Arc<Mutex<Recording>>),
    /// Too big to keep: sent once, what was read first going first.
    Streaming(Body),
}

impl RequestBody {
    /// Reads what `body` has ready *now*. A body that ends without waiting (and fits
    /// `limit`) is replayable as it is; one that would have to wait is recorded while
    /// it streams, up to `limit` bytes.
    pub(crate) async fn read(mut body: Body, limit: usize) -> Result<Self, Status> {
        // The first chunk apart: a unary request has only that one, and needs no
        // vector.
        let mut first = None;
        let mut chunks = Vec::new();
        let mut size = 0;
        loop {
            let next =
                futures::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await;
            match next {
                Poll::Ready(None) if chunks.is_empty() => return Ok(Self::One(first)),
                Poll::Ready(None) => return Ok(Self::Replayable(chunks, None)),
                Poll::Ready(Some(Err(status))) => return Err(status),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        size += data.len();
                        if first.is_none() && chunks.is_empty() {
                            first = Some(data);
                        } else {
                            chunks.extend(first.take());
                            chunks.push(data);
                        }
                        if size > limit {
                            chunks.extend(first.take());
                            return Ok(Self::Streaming(prefixed(chunks, None, body)));
                        }
                    }
                    Err(frame) => {
                        chunks.extend(first.take());
                        let trailers = frame.into_trailers().ok();
                        if body.is_end_stream() {
                            return Ok(Self::Replayable(chunks, trailers));
                        }
                        return Ok(Self::Streaming(prefixed(chunks, trailers, body)));
                    }
                },
                Poll::Pending => {
                    chunks.extend(first.take());
                    return Ok(Self::Recording(Arc::new(Mutex::new(Recording {
                        source: body,
                        chunks,
                        size,
                        limit,
                        trailers: None,
                        ended: false,
                        kept: true,
                        attempt: 0,
                        reader: None,
                        settled: Arc::new(Notify::new()),
                    }))));
                }
            }
        }
    }

    /// The body for one attempt: a copy if replayable, a replay of the recording, or
    /// the stream (once).
    pub(crate) fn attempt(&mut self) -> Option<AttemptBody> {
        match self {
            // A unary request: one chunk, no trailers (the common case: kept cheap,
            // a reference to the same bytes, no box).
            Self::One(chunk) => Some(AttemptBody::One(chunk.clone())),
            Self::Replayable(chunks, trailers) => Some(AttemptBody::Body(prefixed(
                chunks.clone(),
                trailers.clone(),
                Body::empty(),
            ))),
            Self::Recording(recording) => {
                let mut r = lock(recording);
                if r.attempt > 0 && !r.kept {
                    return None;
                }
                // From now on only this attempt reads the rest of the caller's body; an
                // older one waiting on the source is woken to learn that it is over.
                r.attempt += 1;
                if let Some(waker) = r.reader.take() {
                    waker.wake();
                }
                Some(AttemptBody::Body(Body::new(Replay {
                    recording: recording.clone(),
                    attempt: r.attempt,
                    next: 0,
                    trailers_sent: false,
                })))
            }
            Self::Streaming(body) => Some(AttemptBody::Body(std::mem::take(body))),
        }
    }

    /// Whether the whole body is here: attempts can then run at once (hedging), each
    /// with its own copy.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self, Self::One(_) | Self::Replayable(..))
    }

    /// A recording whose source has ended, all of it kept, becomes a whole body (the
    /// attempt reading it goes on reading the recording); then [`Self::is_complete`].
    pub(crate) fn settle(&mut self) -> bool {
        if let Self::Recording(recording) = self {
            let r = lock(recording);
            if r.ended && r.kept {
                let whole = Self::Replayable(r.chunks.clone(), r.trailers.clone());
                drop(r);
                *self = whole;
            }
        }
        self.is_complete()
    }

    /// For a recording, what is told when it has ended or stopped being kept (then
    /// [`Self::settle`] or [`Self::is_replayable`] say which).
    pub(crate) fn on_settled(&self) -> Option<Arc<Notify>> {
        match self {
            Self::Recording(recording) => Some(lock(recording).settled.clone()),
            _ => None,
        }
    }

    pub(crate) fn is_replayable(&self) -> bool {
        match self {
            Self::One(_) | Self::Replayable(..) => true,
            Self::Recording(recording) => lock(recording).kept,
            Self::Streaming(_) => false,
        }
    }

    /// A response has arrived: the call will not be retried, so the recording can go.
    ///
    /// The current attempt may still be sending recorded chunks (it waits for flow
    /// control): those stay until it has sent them (see `Replay`); nothing new is kept.
    pub(crate) fn commit(&mut self) {
        if let Self::Recording(recording) = self {
            lock(recording).kept = false;
        }
    }

    /// The current attempt failed: it must stop reading the caller's body now, so that
    /// what it reads cannot be lost to the next attempt.
    pub(crate) fn abandon_attempt(&mut self) {
        if let Self::Recording(recording) = self {
            let mut r = lock(recording);
            r.attempt += 1;
            if let Some(waker) = r.reader.take() {
                waker.wake();
            }
        }
    }
}

/// A streaming request body and what has been read of it, shared by its attempts.
pub(crate) struct Recording {
    /// The rest of the caller's body, not read yet.
    source: Body,
    /// The data read so far, while `kept`.
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    trailers: Option<http::HeaderMap>,
    /// The source has ended.
    ended: bool,
    /// Everything read so far is in `chunks`: a new attempt can replay it. Off once
    /// the body outgrew `limit`, failed, or the call was answered.
    kept: bool,
    /// The attempt that reads from the source now; older ones are superseded.
    attempt: u64,
    /// The waker of the attempt last waiting on the source, to wake when superseded.
    reader: Option<Waker>,
    /// Told when the source has ended or the recording stopped being kept: a hedge
    /// waiting for the whole body learns that it may go, or never will.
    settled: Arc<Notify>,
}

fn lock(recording: &Mutex<Recording>) -> std::sync::MutexGuard<'_, Recording> {
    // Nothing in a poll below can panic with the lock held; if it ever did, what
    // was recorded is still consistent (every update is a single push or flag).
    recording.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One attempt's view of a [`Recording`]: the recorded chunks first, then the source.
struct Replay {
    recording: Arc<Mutex<Recording>>,
    attempt: u64,
    /// The next recorded chunk to send.
    next: usize,
    trailers_sent: bool,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let mut r = lock(&this.recording);
        if r.attempt != this.attempt {
            return Poll::Ready(Some(Err(Status::cancelled(
                "request superseded by a retry",
            ))));
        }
        if let Some(chunk) = r.chunks.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if !r.kept && !r.chunks.is_empty() {
            // Committed (or too big): every recorded chunk has now been sent, and no
            // other attempt will come; free them.
            r.chunks = Vec::new();
            this.next = 0;
        }
        if r.ended {
            if !this.trailers_sent
                && let Some(trailers) = r.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let r = &mut *r;
        match Pin::new(&mut r.source).poll_frame(cx) {
            Poll::Pending => {
                r.reader = Some(cx.waker().clone());
                Poll::Pending
            }
            Poll::Ready(None) => {
                r.ended = true;
                r.settled.notify_one();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(status))) => {
                r.kept = false;
                r.settled.notify_one();
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    r.size += data.len();
                    if r.kept && r.size <= r.limit {
                        r.chunks.push(data.clone());
                        this.next += 1;
                    } else {
                        // Too big to keep (or already answered): no more attempts.
                        // This attempt has sent every recorded chunk (it reads the
                        // source only after them), so they can go.
                        r.kept = false;
                        r.chunks = Vec::new();
                        this.next = 0;
                        r.settled.notify_one();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    r.trailers = Some(trailers.clone());
                    r.ended = true;
                    this.trailers_sent = true;
                    r.settled.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
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

    #[tokio::test]
    async fn a_body_still_streaming_is_recorded_and_a_retry_replays_it_then_goes_on() {
        let (tx, body) = channel_body();
        let mut request = RequestBody::read(body, 1024).await.unwrap();
        assert!(matches!(request, RequestBody::Recording(_)));
        let mut first = request.attempt().unwrap();
        tx.send(Bytes::from_static(b"one ")).unwrap();
        assert_eq!(next_data(&mut first).await, b"one ");
        assert!(request.is_replayable(), "4 bytes are kept");

        // The first attempt fails; the retry sends "one " again, then reads on.
        let second = request.attempt().unwrap();
        assert!(
            futures::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx))
                .await
                .unwrap()
                .is_err(),
            "the superseded attempt reads nothing more"
        );
        tx.send(Bytes::from_static(b"two")).unwrap();
        drop(tx);
        assert_eq!(collect(second).await, b"one two");
        let third = request.attempt().unwrap();
        assert_eq!(
            collect(third).await,
            b"one two",
            "a whole recording replays"
        );
    }

    #[tokio::test]
    async fn a_recording_stops_at_the_limit_and_when_answered() {
        let (tx, body) = channel_body();
        let mut request = RequestBody::read(body, 5).await.unwrap();
        let mut first = request.attempt().unwrap();
        tx.send(Bytes::from_static(b"abcdef")).unwrap();
        assert_eq!(next_data(&mut first).await, b"abcdef", "sent all the same");
        assert!(!request.is_replayable(), "6 bytes are over the limit of 5");
        assert!(request.attempt().is_none());

        let (tx, body) = channel_body();
        let mut request = RequestBody::read(body, 1024).await.unwrap();
        let mut first = request.attempt().unwrap();
        tx.send(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(next_data(&mut first).await, b"abc");
        request.commit();
        assert!(!request.is_replayable(), "answered: committed");
        tx.send(Bytes::from_static(b"def")).unwrap();
        drop(tx);
        assert_eq!(collect(first).await, b"def", "the stream goes on");
    }

    #[tokio::test]
    async fn an_answer_during_a_replay_loses_nothing() {
        let (tx, body) = channel_body();
        let mut request = RequestBody::read(body, 1024).await.unwrap();
        let mut first = request.attempt().unwrap();
        for chunk in ["a", "b", "c"] {
            tx.send(Bytes::from(chunk)).unwrap();
            assert_eq!(next_data(&mut first).await, chunk.as_bytes());
        }
        request.abandon_attempt();
        let mut second = request.attempt().unwrap();
        assert_eq!(next_data(&mut second).await, b"a");
        // The server answers while "b" and "c" are still to be replayed.
        request.commit();
        assert!(!request.is_replayable());
        tx.send(Bytes::from_static(b"d")).unwrap();
        drop(tx);
        assert_eq!(collect(second).await, b"bcd", "nothing recorded is dropped");
    }

    /// A body that arrived after the call started (a proxy's caller's) is whole once
    /// the first attempt has read it to its end: then hedges can each send a copy, and
    /// the first attempt is not disturbed.
    #[tokio::test]
    async fn a_recording_that_ended_settles_into_a_whole_body() {
        let (tx, body) = channel_body();
        let mut request = RequestBody::read(body, 1024).await.unwrap();
        let mut first = request.attempt().unwrap();
        assert!(!request.settle(), "nothing has arrived yet");
        tx.send(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(next_data(&mut first).await, b"hello");
        assert!(!request.settle(), "not ended yet");
        drop(tx);
        assert!(
            collect(first).await.is_empty(),
            "the first attempt reads the end"
        );
        assert!(request.settle(), "ended, all of it kept");
        let (hedge, another) = (request.attempt().unwrap(), request.attempt().unwrap());
        assert_eq!(collect(hedge).await, b"hello");
        assert_eq!(collect(another).await, b"hello", "a copy each");
    }

    /// A body whose chunks arrive when the test sends them, as a relayed stream's do.
    fn channel_body() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Body) {
        struct Channel(tokio::sync::mpsc::UnboundedReceiver<Bytes>);
        impl http_body::Body for Channel {
            type Data = Bytes;
            type Error = Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
                self.0
                    .poll_recv(cx)
                    .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Body::new(Channel(rx)))
    }

    async fn next_data(body: &mut AttemptBody) -> Vec<u8> {
        let frame = futures::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        frame.into_data().unwrap().to_vec()
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

    async fn collect(mut body: AttemptBody) -> Vec<u8> {
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
