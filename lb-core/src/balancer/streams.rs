//! More than one connection to an endpoint when one is full (gRFC A105).
//!
//! An HTTP/2 server says how many streams (calls) one connection may have open at once,
//! in its `SETTINGS_MAX_CONCURRENT_STREAMS` (tonic and grpc-go: unlimited unless set;
//! servers and proxies often set 100). A call beyond it waits inside the connection
//! until another ends: with 100 long-running streams open, the 101st waits silently
//! however idle the server is (grpc-java #8252, grpc #21386).
//!
//! So each connection counts its open streams, and reads the server's limit from the
//! server's own SETTINGS frames as they pass (hyper does not tell
//! it). A call takes a stream on the endpoint's first connection with one free, in the
//! order the connections were made; when every connection is full and there are fewer
//! than `maxConnectionsPerSubchannel` (the service config's `connectionScaling`, or
//! [`BalancerBuilder::max_connections_per_endpoint`](crate::BalancerBuilder::max_connections_per_endpoint)),
//! the endpoint opens one more, one attempt at a time. At the maximum, the call waits
//! in a connection for a stream to end, as before: the server's limit is never
//! exceeded. Policies still see one endpoint, with all its calls in flight.
//!
//! ```text
//! limit 10, at most 3 connections:
//!   calls 1-10   -> connection 1 (10 of 10)
//!   call 11      -> connection 1 full: connection 2 opens; calls 11-20 go there
//!   call 21      -> connection 3 opens; calls 21-30
//!   call 31      -> all full, at the maximum: waits on the connection with the fewest
//! ```
//!
//! The extra connections belong to the endpoint's current connection: they close with
//! it, and when the server closes them. Like gRPC, the balancer never closes one for
//! being idle: a server that wants unused connections gone says so with its
//! `MAX_CONNECTION_IDLE` (gRFC A9). With one connection per endpoint (the default),
//! nothing here runs: no stream is counted and no frame read, so a call costs what it
//! did before, as A105 asks.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tracing::{debug, info};

use super::lock;
use super::subchannel::{Settings, Subchannel};
use super::wire::Wire;

/// The most connections one endpoint may have (a service config may not ask for more).
pub const MAX_CONNECTIONS_PER_ENDPOINT: u32 = 100;

/// One connection's streams: how many are open, and how many the server allows.
#[derive(Debug)]
pub(crate) struct Streams {
    open: AtomicU32,
    limit: AtomicU32,
    /// The server's first SETTINGS frame has been read (its limit is known).
    settled: AtomicBool,
    settled_signal: Notify,
}

impl Streams {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicU32::new(0),
            // HTTP/2's initial value: no limit until the server's SETTINGS say one.
            limit: AtomicU32::new(u32::MAX),
            settled: AtomicBool::new(false),
            settled_signal: Notify::new(),
        })
    }

    /// Resolves once the server's first SETTINGS frame has been read.
    pub(crate) async fn settled(&self) {
        let signal = self.settled_signal.notified();
        if !self.settled.load(Ordering::Acquire) {
            signal.await;
        }
    }

    /// A stream, if one is free: checked and taken in one step, so that two calls at
    /// once cannot both take the last one.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<StreamSlot> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }

    /// A stream even if none is free (the call then waits in the connection).
    pub(crate) fn take(self: &Arc<Self>) -> StreamSlot {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamSlot(self.clone())
    }

    /// Streams open now.
    pub(crate) fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// The server's limit (`u32::MAX` until it said one).
    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// One open stream, given back when dropped (the call's response has ended).
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<Streams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's socket (or TLS stream) that reads the server's HTTP/2 frames as they
/// pass, for the `SETTINGS_MAX_CONCURRENT_STREAMS` in its SETTINGS frames. It changes
/// nothing it reads: it only follows the frame boundaries (9-byte headers; payloads
/// skipped, except SETTINGS', whose 6-byte entries it reads).
pub(crate) struct SettingsReader<T> {
    inner: T,
    streams: Arc<Streams>,
    /// `None`: the connection does not scale, nothing is read.
    frames: Option<FrameReader>,
}

impl<T> SettingsReader<T> {
    /// Reads the server's SETTINGS as they pass if `scaling` (more than one connection
    /// allowed per endpoint); otherwise only passes the bytes through.
    pub(crate) fn new(inner: T, streams: Arc<Streams>, scaling: bool) -> Self {
        Self {
            inner,
            streams,
            frames: scaling.then(FrameReader::default),
        }
    }
}

/// Where the reader is in the server's stream of frames.
#[derive(Debug, Default)]
struct FrameReader {
    header: [u8; 9],
    /// Bytes of the header read so far (9: in the payload).
    header_read: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u32,
    /// The current frame is a SETTINGS frame (not an ACK): its entries are read.
    settings: bool,
    entry: [u8; 6],
    entry_read: usize,
}

const FRAME_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// What some bytes from the server held.
#[derive(Debug, Default, PartialEq)]
struct Read {
    /// A SETTINGS frame ended in them.
    settings: bool,
    /// The MAX_CONCURRENT_STREAMS they set (the last, if several).
    limit: Option<u32>,
}

impl FrameReader {
    /// Follows `data`, the next bytes from the server.
    fn feed(&mut self, mut data: &[u8]) -> Read {
        let mut read = Read::default();
        while !data.is_empty() {
            if self.header_read < 9 {
                let n = (9 - self.header_read).min(data.len());
                self.header[self.header_read..self.header_read + n].copy_from_slice(&data[..n]);
                self.header_read += n;
                data = &data[n..];
                if self.header_read == 9 {
                    let h = &self.header;
                    self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    self.settings = h[3] == FRAME_SETTINGS && h[4] & FLAG_ACK == 0;
                    self.entry_read = 0;
                    if self.payload_left == 0 {
                        self.header_read = 0;
                        read.settings |= self.settings;
                    }
                }
                continue;
            }
            let n = (self.payload_left as usize).min(data.len());
            if self.settings {
                for &byte in &data[..n] {
                    self.entry[self.entry_read] = byte;
                    self.entry_read += 1;
                    if self.entry_read == 6 {
                        self.entry_read = 0;
                        let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                        if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                            let e = &self.entry;
                            read.limit = Some(u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
                        }
                    }
                }
            }
            self.payload_left -= n as u32;
            data = &data[n..];
            if self.payload_left == 0 {
                self.header_read = 0;
                read.settings |= self.settings;
            }
        }
        read
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsReader<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(frames) = this.frames.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = frames.feed(&buf.filled()[before..]);
            if let Some(limit) = read.limit {
                this.streams.limit.store(limit, Ordering::Relaxed);
            }
            if read.settings && !this.streams.settled.swap(true, Ordering::AcqRel) {
                this.streams.settled_signal.notify_waiters();
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsReader<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Subchannel {
    /// A connection with a free stream for a call whose connection (`first`, the
    /// endpoint's connection `generation`) is full: an extra one with a free stream, in
    /// the order they were made; else one more connection if fewer than the maximum are
    /// open (one attempt at a time; not again for the backoff's first step after one
    /// failed); else the least busy one, where the call waits for a stream.
    pub(crate) async fn stream_elsewhere(
        self: &Arc<Self>,
        first: &Wire,
        generation: u64,
        settings: &Settings,
    ) -> (Wire, StreamSlot) {
        if let Some(found) = self.extra_with_room(generation) {
            return found;
        }
        if self.connections(generation) < settings.max_connections as usize {
            // One connection attempt at a time: the others wait here, and most find a
            // stream on the new connection once it is made.
            let mut last_failure = self.scaling.clone().lock_owned().await;
            if let Some(found) = self.extra_with_room(generation) {
                return found;
            }
            let backing_off =
                last_failure.is_some_and(|at| at.elapsed() < settings.backoff.initial);
            if !backing_off && self.connections(generation) < settings.max_connections as usize {
                // The attempt is the endpoint's, not this call's: it runs to its end
                // (within the connect timeout), holding the lock, even if this call's
                // deadline ends its wait here; else short deadlines would start and
                // drop attempt after attempt, and the endpoint would never scale.
                let sub = Arc::clone(self);
                let settings = settings.clone();
                let attempt = tokio::spawn(async move {
                    let opened = sub.open_extra(generation, &settings).await;
                    *last_failure = match &opened {
                        Ok(_) => None,
                        Err(reason) => {
                            info!(endpoint = %sub.state.endpoint(), %reason, "no extra connection");
                            Some(tokio::time::Instant::now())
                        }
                    };
                    opened.ok()
                });
                if let Ok(Some(wire)) = attempt.await
                    && let Some(slot) = wire.streams.try_take()
                {
                    return (wire, slot);
                }
            }
        }
        // At the maximum: the least busy connection, where the call waits for a stream
        // (the server's limit holds: h2 does not open a stream beyond it).
        let mut best = first.clone();
        for (wire, g) in lock(&self.extra).iter() {
            if *g == generation && wire.streams.open() < best.streams.open() {
                best = wire.clone();
            }
        }
        let slot = best.streams.take();
        (best, slot)
    }

    /// Connections open for calls now: the first and the extra ones.
    pub(crate) fn connections(&self, generation: u64) -> usize {
        1 + lock(&self.extra)
            .iter()
            .filter(|(_, g)| *g == generation)
            .count()
    }

    fn extra_with_room(&self, generation: u64) -> Option<(Wire, StreamSlot)> {
        lock(&self.extra).iter().find_map(|(wire, g)| {
            let slot = (*g == generation).then(|| wire.streams.try_take())??;
            Some((wire.clone(), slot))
        })
    }

    /// Opens one more connection, waits for the server's SETTINGS (its limit), and adds
    /// it to the extra ones until it closes.
    async fn open_extra(&self, generation: u64, settings: &Settings) -> Result<Wire, String> {
        let attempt = async {
            let (wire, closed) = self
                .target
                .connect(self.call_keep_alive(settings.liveness), true)
                .await
                .map_err(|e| super::describe(&*e))?;
            wire.streams.settled().await;
            Ok::<_, String>((wire, closed))
        };
        let (wire, mut closed) = tokio::time::timeout(settings.connect_timeout, attempt)
            .await
            .map_err(|_| format!("not connected within {:?}", settings.connect_timeout))??;
        // Only for the connection it was opened beside: if that one ended meanwhile,
        // this one is dropped (and closes) instead of lingering unused.
        let current = lock(&self.connection).as_ref().map(|(_, g)| *g);
        if current != Some(generation) {
            return Err("the endpoint's connection ended meanwhile".into());
        }
        lock(&self.extra).push((wire.clone(), generation));
        let n = self.connections(generation);
        info!(
            endpoint = %self.state.endpoint(),
            limit = wire.streams.limit(),
            "every connection full: connection {n} opened"
        );
        // Out of the set when it closes (the server closed it, or it broke).
        let streams = Arc::downgrade(&wire.streams);
        let extra = Arc::downgrade(&self.extra);
        tokio::spawn(async move {
            let end = closed.wait().await;
            if let Some(extra) = extra.upgrade() {
                lock(&extra)
                    .retain(|(w, _)| !std::ptr::eq(Arc::as_ptr(&w.streams), streams.as_ptr()));
            }
            let reason = match end {
                super::wire::End::Closed(r) | super::wire::End::Broken(r) => r,
            };
            debug!(%reason, "extra connection ended");
        });
        Ok(wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags, 0, 0, 0, 0]);
        out.extend(payload);
        out
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut out = id.to_be_bytes().to_vec();
        out.extend(value.to_be_bytes());
        out
    }

    #[test]
    fn the_limit_is_read_from_settings_frames_split_anywhere() {
        let mut settings = setting(0x4, 65_535); // INITIAL_WINDOW_SIZE
        settings.extend(setting(0x3, 10));
        let mut stream = frame(FRAME_SETTINGS, 0, &settings);
        stream.extend(frame(0x8, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        stream.extend(frame(FRAME_SETTINGS, FLAG_ACK, &[]));
        stream.extend(frame(0x0, 0, &[7; 300])); // DATA that looks like nothing
        stream.extend(frame(FRAME_SETTINGS, 0, &setting(0x3, 25)));
        // Whole, and one byte at a time: the same limits, in the same order.
        let mut whole = FrameReader::default();
        assert_eq!(
            whole.feed(&stream),
            Read {
                settings: true,
                limit: Some(25)
            }
        );
        let mut bytes = FrameReader::default();
        let seen: Vec<u32> = stream
            .iter()
            .filter_map(|b| bytes.feed(&[*b]).limit)
            .collect();
        assert_eq!(seen, [10, 25]);
        // A server that sets no limit (tonic's default) still settles the connection.
        let mut empty = FrameReader::default();
        assert_eq!(
            empty.feed(&frame(FRAME_SETTINGS, 0, &[])),
            Read {
                settings: true,
                limit: None
            }
        );
    }

    #[test]
    fn a_settings_ack_or_another_frame_sets_nothing() {
        let mut reader = FrameReader::default();
        assert_eq!(
            reader.feed(&frame(FRAME_SETTINGS, FLAG_ACK, &[])),
            Read::default()
        );
        assert_eq!(
            reader.feed(&frame(0x1, 0, &setting(0x3, 1))),
            Read::default(),
            "HEADERS"
        );
    }

    #[test]
    fn streams_are_taken_up_to_the_limit_and_given_back() {
        let streams = Streams::new();
        streams.limit.store(2, Ordering::Relaxed);
        let a = streams.try_take().expect("1 of 2");
        let _b = streams.try_take().expect("2 of 2");
        assert!(streams.try_take().is_none(), "full");
        drop(a);
        let _c = streams.try_take().expect("one given back");
        let _d = streams.take();
        assert_eq!(
            streams.open(),
            3,
            "taken beyond the limit: waits in the connection"
        );
    }

    #[tokio::test]
    async fn a_connection_that_does_not_scale_only_passes_the_bytes_through() {
        use tokio::io::AsyncReadExt;
        let bytes = frame(FRAME_SETTINGS, 0, &setting(0x3, 10));
        for scaling in [true, false] {
            let streams = Streams::new();
            let mut reader = SettingsReader::new(&bytes[..], streams.clone(), scaling);
            let mut read = Vec::new();
            reader.read_to_end(&mut read).await.expect("reads");
            assert_eq!(read, bytes, "unchanged");
            let expected = if scaling { 10 } else { u32::MAX };
            assert_eq!(streams.limit(), expected, "scaling {scaling}");
        }
    }
}
