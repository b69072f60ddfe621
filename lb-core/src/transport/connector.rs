//! Opening an endpoint's connection (TCP, then TLS if asked), so that a refusal can be
//! read for what it is.
//!
//! With TLS 1.3 a client's handshake is over before the server has looked at the
//! client's certificate. A server that requires one and got none sends the alert
//! `certificate_required` and closes the connection; meanwhile the client has gone on
//! to HTTP/2. If its first call is still queued when the connection dies, hyper tells
//! that call only "connection closed"; if its next write fails first, it says "broken
//! pipe". Either way the alert, which was there to be read, is lost, and the user is
//! not told what to fix.
//!
//! So this connector does the TLS handshake itself and then waits for the server's
//! verdict before handing the connection to hyper: it sends the HTTP/2 connection
//! preface (which hyper would send first anyway; hyper's own copy is then skipped) and
//! reads until the server's first bytes (its SETTINGS) arrive, or its alert does. A
//! refusal thus fails the connection attempt itself, with rustls's error for it
//! ("certificate required", "unknown CA", ...). (This counts on the server to send
//! its SETTINGS once it has read the client's 24-byte preface, without waiting for
//! the client's own SETTINGS: hyper, grpc-go, gRPC C-core and nginx all do.)
//!
//! Underneath, the TCP stream holds back a write error of the "peer is gone" kind
//! (pretending the write succeeded: the connection is lost anyway) until the read side
//! has said what it has to say, so that an alert already in the socket is read first.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use hyper_util::rt::TokioIo;

use super::tls::ClientTls;
use crate::{Endpoint, Error};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
#[cfg(feature = "tls")]
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

use super::tls::TlsFor;

/// A `tower::Service<Uri>` for tonic's `connect_with_connector`: a TCP connection
/// (with `TCP_NODELAY`) to the URI's host and port, with TLS if set.
#[derive(Clone, Default)]
pub(crate) struct Connector {
    tls: Option<Arc<TlsFor>>,
}

impl Connector {
    pub(crate) fn new(tls: Option<TlsFor>) -> Self {
        Self {
            tls: tls.map(Arc::new),
        }
    }

    /// The connector that reaches `endpoint`: plain TCP, or with `tls`, TCP and a TLS
    /// handshake that verifies the server's certificate (see [`crate::tls`]).
    pub(crate) fn to(endpoint: &Endpoint, tls: Option<&ClientTls>) -> Result<Self, Error> {
        match tls {
            None => Ok(Self::new(None)),
            Some(tls) => Ok(Self::new(Some(tls.for_endpoint(endpoint)?))),
        }
    }

    /// A tonic endpoint for `endpoint`, and the connector that reaches it (see
    /// [`Connector::to`]). Calls on it say `https` with TLS.
    pub(crate) fn for_endpoint(
        endpoint: &Endpoint,
        tls: Option<&ClientTls>,
    ) -> Result<(tonic::transport::Endpoint, Self), Error> {
        let transport = |source| Error::Transport {
            endpoint: endpoint.to_string(),
            source,
        };
        let target = tonic::transport::Endpoint::from_shared(endpoint.uri()).map_err(transport)?;
        let connector = Self::to(endpoint, tls)?;
        if tls.is_none() {
            return Ok((target, connector));
        }
        // tonic connects to `http://` (the handshake is the connector's) but says
        // `https` in every call, as a client over TLS does.
        let origin: http::Uri =
            format!("https://{endpoint}")
                .parse()
                .map_err(|_| Error::InvalidEndpoint {
                    input: endpoint.to_string(),
                    reason: "not usable in a URI".into(),
                })?;
        Ok((target.origin(origin), connector))
    }
}

/// Connects one tonic channel to `endpoint`, over TLS with `tls`, within `timeout`
/// (connect and handshakes), with the balancer's connector (a TLS refusal is read as
/// such): for a one-off call, such as a health check from a script.
pub async fn connect(
    endpoint: &Endpoint,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, Error> {
    let tls = tls.map(|tls| tls.clone().with_timeout(timeout));
    let (target, connector) = Connector::for_endpoint(endpoint, tls.as_ref())?;
    let target = target.connect_timeout(timeout).timeout(timeout);
    let failed = |reason: String| Error::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    tokio::time::timeout(timeout, target.connect_with_connector(connector))
        .await
        .map_err(|_| failed(format!("cannot connect within {timeout:?}")))?
        .map_err(|e| failed(super::errors::describe(&e)))
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
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
            let tcp = Deferred {
                tcp,
                write_error: None,
            };
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            };
            #[cfg(not(feature = "tls"))]
            match *tls {}
            #[cfg(feature = "tls")]
            handshake(tcp, &tls).await
        })
    }
}

/// The TLS handshake, then the HTTP/2 preface sent and the server's first bytes read
/// (see the module docs), within the time allowed.
#[cfg(feature = "tls")]
async fn handshake(tcp: Deferred, tls: &TlsFor) -> io::Result<TokioIo<Stream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (config, name, limit) = tls;
    let verdict = async {
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await?;
        // gRPC needs HTTP/2: a server that did not agree to it in ALPN would
        // answer the preface with HTTP/1 (tonic checks this too).
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server did not agree to HTTP/2 in the TLS handshake (ALPN h2): \
                         is it a gRPC server?",
            ));
        }
        tls.write_all(PREFACE).await?;
        tls.flush().await?;
        let mut first = vec![0; 4096];
        let read = tls.read(&mut first).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection right after the TLS handshake",
            ));
        }
        first.truncate(read);
        Ok(Primed {
            io: tls,
            first,
            skip: PREFACE.len(),
        })
    };
    match tokio::time::timeout(*limit, verdict).await {
        Ok(primed) => Ok(TokioIo::new(Stream::Tls(Box::new(primed?)))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no TLS handshake and HTTP/2 greeting within {}",
                humantime::format_duration(*limit)
            ),
        )),
    }
}

/// A connection as hyper gets it.
pub(crate) enum Stream {
    Plain(Deferred),
    #[cfg(feature = "tls")]
    Tls(Box<Primed<tokio_rustls::client::TlsStream<Deferred>>>),
}

#[cfg(feature = "tls")]
/// A stream on which the HTTP/2 preface was sent and the server's first bytes read:
/// it replays those bytes to hyper, and skips hyper's own preface.
pub(crate) struct Primed<T> {
    io: T,
    first: Vec<u8>,
    skip: usize,
}

#[cfg(feature = "tls")]
impl<T: AsyncRead + Unpin> AsyncRead for Primed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

#[cfg(feature = "tls")]
impl<T: AsyncWrite + Unpin> AsyncWrite for Primed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.skip > 0 {
            // hyper's first bytes are the preface, already sent: take them as written.
            let at = PREFACE.len() - self.skip;
            let n = self.skip.min(data.len());
            if data[..n] != PREFACE[at..at + n] {
                return Poll::Ready(Err(io::Error::other(
                    "HTTP/2 started with something other than its preface",
                )));
            }
            self.skip -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
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
