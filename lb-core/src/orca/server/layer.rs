//! The per-call reports: a tower layer that puts the current report in each answer's
//! trailers (`endpoint-load-metrics-bin`), and counts the call for the next.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use tonic::body::Body;

use crate::orca::TRAILER;

use super::LoadReporter;

/// See [`LoadReporter::layer`].
#[derive(Clone, Debug, Default)]
pub struct LoadReportLayer {
    reporter: Option<LoadReporter>,
}

impl LoadReportLayer {
    /// A layer that reports nothing (for a server without load reports): responses
    /// pass through unchanged.
    pub fn off() -> Self {
        Self::default()
    }
}

impl<S> tower::Layer<S> for LoadReportLayer {
    type Service = LoadReportService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadReportService {
            inner,
            reporter: self.reporter.clone(),
        }
    }
}

/// See [`LoadReporter::layer`].
#[derive(Clone, Debug)]
pub struct LoadReportService<S> {
    inner: S,
    reporter: Option<LoadReporter>,
}

impl<S, B> tower::Service<http::Request<B>> for LoadReportService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        BoxFuture<'static, Result<http::Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(reporter) = self.reporter.clone() else {
            return futures::future::Either::Left(self.inner.call(request));
        };
        // The out-of-band stream is not a call to count.
        if request.uri().path() == crate::orca::STREAM_CORE_METRICS {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let response = self.inner.call(request);
        futures::future::Either::Right(Box::pin(async move {
            let response = response.await?;
            let (mut parts, body) = response.into_parts();
            if let Some(code) = grpc_status(&parts.headers) {
                // Trailers-only: the call is over, its report goes in the headers.
                reporter.record(code == 0);
                parts
                    .headers
                    .insert(TRAILER, reporter.current().trailer.clone());
                return Ok(http::Response::from_parts(parts, body));
            }
            let body = Body::new(ReportBody {
                inner: body,
                reporter: Some(reporter),
            });
            Ok(http::Response::from_parts(parts, body))
        }))
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pin_project_lite::pin_project! {
    /// A response body whose trailers get the server's load report.
    pub struct ReportBody<B> {
        #[pin]
        inner: B,
        reporter: Option<LoadReporter>,
    }
}

impl<B> http_body::Body for ReportBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) if frame.is_trailers() => {
                let Ok(mut trailers) = frame.into_trailers() else {
                    unreachable!("checked: trailers")
                };
                if let Some(reporter) = this.reporter.take() {
                    reporter.record(grpc_status(&trailers).is_none_or(|code| code == 0));
                    trailers.insert(TRAILER, reporter.current().trailer.clone());
                }
                Some(Ok(http_body::Frame::trailers(trailers)))
            }
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl LoadReporter {
    /// A tower layer for a tonic server: counts every call and adds the current report
    /// to its trailers (or, for a trailers-only answer, to its headers).
    pub fn layer(&self) -> LoadReportLayer {
        LoadReportLayer {
            reporter: Some(self.clone()),
        }
    }
}
