//! One accepted connection: its bytes, its idle timer, and the calls it carries.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tracing::info;

use super::{ConnectionLimits, ConnectionStats, PREFACE_LEN};

pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a server's request handlers can learn of the connection a call came on
/// (tonic puts it in every request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    pub(super) calls: Arc<Calls>,
}

/// Calls open on one connection, and since when it has had none.
#[derive(Debug)]
pub(super) struct Calls {
    pub(super) open: AtomicUsize,
    /// When the last call ended (milliseconds since the connection was accepted).
    idle_since_ms: AtomicU64,
    accepted_at: Instant,
}

impl Calls {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted_at.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Counts a call open on its connection until dropped.
pub(super) struct CallGuard(pub(super) Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // When idleness starts is written before the count can reach 0, so that the
        // idle timer never sees "no call" with an old start.
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection, plain or TLS, that enforces the preface and idle timeouts
/// on its reads.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Bytes of the preface still to come, and the deadline for them.
    preface_left: usize,
    preface: Option<Pin<Box<Sleep>>>,
    preface_timeout: Duration,
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl Conn {
    pub(super) fn new(
        io: Io,
        remote_addr: SocketAddr,
        limits: &ConnectionLimits,
        slot: Slot,
    ) -> Self {
        let now = Instant::now();
        Self {
            io,
            info: ConnInfo {
                remote_addr,
                calls: Arc::new(Calls {
                    open: AtomicUsize::new(0),
                    idle_since_ms: AtomicU64::new(0),
                    accepted_at: now,
                }),
            },
            preface_left: PREFACE_LEN,
            // Zero: no preface timeout.
            preface: (!limits.preface_timeout.is_zero())
                .then(|| Box::pin(tokio::time::sleep(limits.preface_timeout))),
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.idle_timeout,
            idle: limits
                .idle_timeout
                .map(|idle| Box::pin(tokio::time::sleep_until(now + idle))),
            _slot: slot,
        }
    }

    /// An error that makes the HTTP/2 server close the connection, once counted.
    fn close(&mut self, why: &str, counter: fn(&ConnectionStats) -> &AtomicU64) -> io::Error {
        let stats = &self._slot.stats;
        counter(stats).fetch_add(1, Ordering::Relaxed);
        let peer = self.info.remote_addr;
        stats
            .close_log
            .warn(|more| info!(%peer, more, "closing connection: {why}"));
        io::Error::new(io::ErrorKind::TimedOut, why.to_string())
    }

    /// Whether the idle timeout has passed with no call open; re-arms the timer
    /// otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(idle)) = (self.idle_timeout, self.idle.as_mut()) else {
            return false;
        };
        while idle.as_mut().poll(cx).is_ready() {
            let calls = &self.info.calls;
            let next = if calls.open.load(Ordering::Acquire) > 0 {
                Instant::now() + timeout
            } else {
                let since = Duration::from_millis(calls.idle_since_ms.load(Ordering::Acquire));
                let due = calls.accepted_at + since + timeout;
                if Instant::now() >= due {
                    return true;
                }
                due
            };
            idle.as_mut().reset(next);
        }
        false
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Read first: what is already in the socket counts as in time. The timers
        // are looked at only when there is nothing to read (which also registers
        // their wakers).
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(result) = read {
            if this.preface.is_some() {
                let read = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(read);
                if this.preface_left == 0 {
                    this.preface = None;
                }
            }
            return Poll::Ready(result);
        }
        if let Some(preface) = this.preface.as_mut()
            && preface.as_mut().poll(cx).is_ready()
        {
            let why = format!(
                "no HTTP/2 preface within {}",
                humantime::format_duration(this.preface_timeout)
            );
            return Poll::Ready(Err(this.close(&why, |s| &s.preface_timeouts)));
        }
        if this.poll_idle(cx) {
            let why = "no call for the idle timeout";
            return Poll::Ready(Err(this.close(why, |s| &s.idle_closed)));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, data),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// One open connection's place under the limit, given back when it closes.
pub(super) struct Slot {
    pub(super) stats: Arc<ConnectionStats>,
}

impl Slot {
    pub(super) fn take(stats: Arc<ConnectionStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self { stats }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}
