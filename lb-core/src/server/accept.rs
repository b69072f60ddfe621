//! Accepting connections within the limits: a slot per connection, the TLS handshake
//! and the HTTP/2 preface each bounded in time, the rest closed at once.

use std::{
    io,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{net::TcpListener, sync::mpsc};
use tracing::warn;

use super::conn::{Conn, Io, Slot};
use super::{ConnectionLimits, ConnectionStats, RateLimited};

/// The connections a listener accepts, with the [`ConnectionLimits`] applied, as
/// tonic's `serve_with_incoming` takes them. Ends when dropped (the server stopped).
pub struct Incoming {
    connections: mpsc::Receiver<Conn>,
    stats: Arc<ConnectionStats>,
}

impl Incoming {
    /// The listener's counters (shared: they go on changing).
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

/// Accepts connections on `listener` with `limits`, doing the TLS handshake first
/// when `tls` is set, on a task of its own (a slow handshake never holds up the next
/// accept).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<crate::tls::ServerTls>,
) -> Incoming {
    let stats = Arc::new(ConnectionStats::default());
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, limits, tls, stats.clone(), tx));
    Incoming {
        connections: rx,
        stats,
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<crate::tls::ServerTls>,
    stats: Arc<ConnectionStats>,
    tx: mpsc::Sender<Conn>,
) {
    let local = listener.local_addr().ok();
    let refusals = RateLimited::default();
    let accept_errors = RateLimited::default();
    let handshake_failures = Arc::new(RateLimited::default());
    let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return, // The server stopped.
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: it fails at once, so pause rather than
                // spin, and let the server's other tasks run meanwhile.
                accept_errors.warn(|more| {
                    warn!(listener = ?local, error = %err, more, "accept failed; pausing 50 ms")
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = stats.open.load(Ordering::Relaxed);
        if open >= limits.max_connections {
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            refusals.warn(|more| {
                warn!(%peer, listener = ?local, open, refused, more,
                    "connection refused: {} connections open, the limit (--max-connections)",
                    limits.max_connections)
            });
            drop(tcp);
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let slot = Slot::take(stats.clone());
        let _ = tcp.set_nodelay(true);
        match &acceptor {
            None => {
                let conn = Conn::new(Io::Plain(tcp), peer, &limits, slot);
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let limits = limits.clone();
                let failures = handshake_failures.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                    let reason = match handshake {
                        Ok(Ok(tls)) => {
                            let conn = Conn::new(Io::Tls(Box::new(tls)), peer, &limits, slot);
                            let _ = tx.send(conn).await;
                            return;
                        }
                        Ok(Err(err)) => crate::tls::describe_handshake_error(&err),
                        Err(_) => format!(
                            "no TLS handshake within {}",
                            humantime::format_duration(limits.handshake_timeout)
                        ),
                    };
                    let failed = slot.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed) + 1;
                    failures
                        .warn(|more| warn!(%peer, %reason, failed, more, "TLS handshake refused"));
                });
            }
        }
    }
}
