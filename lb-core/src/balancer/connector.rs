//! Opening an endpoint's TCP connection, so that a refusal can be read for what it is.
//!
//! With TLS 1.3 a client's handshake is over before the server has looked at the
//! client's certificate. A server that requires one and got none sends the alert
//! `certificate_required` and closes the connection; meanwhile the client has already
//! written its HTTP/2 preface. Its next write then fails with "broken pipe" (or
//! "connection reset"), and if the HTTP/2 layer reports that first, the alert, which
//! is already waiting in the socket, is never read: the user is told "broken pipe"
//! instead of "certificate required".
//!
//! So this connector's stream holds back a write error of that kind (pretending the
//! write succeeded: the connection is lost anyway) until the read side has said what it
//! has to say. The TLS layer above then reads the alert and fails with it; only if the
//! peer closed without a word does the read side report the original write error.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A `tower::Service<Uri>` for tonic's `connect_with_connector`: a TCP connection
/// (with `TCP_NODELAY`) to the URI's host and port, as a [`Deferred`] stream.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Connector;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Deferred>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Deferred>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            // An IPv6 address comes in brackets in a URI.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(Deferred {
                tcp,
                write_error: None,
            }))
        })
    }
}

/// A TCP stream whose "broken pipe" on write waits for the read side: see the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct Deferred {
    tcp: TcpStream,
    write_error: Option<io::Error>,
}

/// Write errors that mean "the peer is gone": what it sent before going may still be
/// waiting to be read.
fn peer_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl AsyncRead for Deferred {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.tcp).poll_read(cx, buf));
        let at_end = buf.filled().len() == before;
        Poll::Ready(match (result, self.write_error.take()) {
            // Nothing more to read: now the write error may be told.
            (Ok(()), Some(write_error)) if at_end => Err(write_error),
            (result, write_error) => {
                self.write_error = write_error;
                result
            }
        })
    }
}

impl AsyncWrite for Deferred {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_error.is_some() {
            return Poll::Ready(Ok(data.len())); // Lost already; the reader will tell.
        }
        match ready!(Pin::new(&mut self.tcp).poll_write(cx, data)) {
            Err(err) if peer_gone(&err) => {
                self.write_error = Some(err);
                Poll::Ready(Ok(data.len()))
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
