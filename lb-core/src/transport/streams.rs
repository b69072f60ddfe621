//! Counting one connection's streams, and reading its server's limit on them
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`) from the frames as they pass: what an endpoint
//! needs to open another connection when one is full (gRFC A105; the algorithm is in
//! [`crate::subchannels::scaling`]).

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
