//! Only gRPC gets through: a request whose content-type is not `application/grpc…`
//! is answered HTTP 415, as the gRPC spec says; a call is counted open until its
//! response body ends.

use std::{
    pin::Pin,
    sync::atomic::Ordering,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service};

use super::conn::{CallGuard, ConnInfo};

/// Answers anything that is not gRPC with HTTP 415, and counts each call as open on
/// its connection (for the idle timeout) until its response ends.
///
/// The gRPC spec: "If Content-Type does not begin with `application/grpc`, gRPC
/// servers SHOULD respond with HTTP status of 415 (Unsupported Media Type). This will
/// prevent other HTTP/2 clients from interpreting a gRPC error response, which uses
/// status 200 (OK), as successful." (`application/grpc-web` and `application/grpc+proto`
/// begin so too.)
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcOnlyLayer;

impl<S> Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;

    fn layer(&self, inner: S) -> GrpcOnly<S> {
        GrpcOnly { inner }
    }
}

/// The service [`GrpcOnlyLayer`] makes.
#[derive(Clone, Debug)]
pub struct GrpcOnly<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for GrpcOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.as_bytes().get(..16))
            .is_some_and(|start| start.eq_ignore_ascii_case(b"application/grpc"));
        if !grpc {
            let given = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return Box::pin(std::future::ready(Ok(unsupported_media_type(given))));
        }
        let guard = request.extensions().get::<ConnInfo>().map(|info| {
            info.calls.open.fetch_add(1, Ordering::AcqRel);
            CallGuard(info.calls.clone())
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| Body::new(Guarded { inner: body, guard })),
                None => response,
            })
        })
    }
}

fn unsupported_media_type(given: Option<String>) -> http::Response<Body> {
    let text = match given {
        Some(given) => format!(
            "content-type `{given}` is not gRPC: this server speaks gRPC only (application/grpc)\n"
        ),
        None => "no content-type: this server speaks gRPC only (application/grpc)\n".into(),
    };
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(text))));
    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted as open until it ends.
    struct Guarded {
        #[pin]
        inner: Body,
        guard: CallGuard,
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
