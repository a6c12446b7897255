//! One channel connection's two directions, the same on both ends: a
//! writer task that seals the frames every stream queues and writes as
//! many as are waiting in one system call (write coalescing), and the
//! reading end that opens records in order.
//!
//! The queue to the writer is bounded ([`OUTBOX_FRAMES`]), so a peer that
//! stops reading holds at most that many frames here: the writer's write
//! then waits, the streams' sends wait behind it, and after
//! `write_timeout` without progress the writer gives up and the connection
//! closes, failing its streams.

use super::handshake::PREFACE;
use super::record::{codec, plain, Opener, RecordError, Sealer, MAX_RECORD};
use super::wire::Frame;
use crate::metrics;
use bytes::BytesMut;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Frames queued for the writer at most, per connection.
pub const OUTBOX_FRAMES: usize = 256;

/// A write takes at most about this many bytes of queued frames.
const COALESCE_BYTES: usize = 256 * 1024;

/// Where a connection's streams queue their frames.
pub type Outbox = mpsc::Sender<Frame>;

/// Records read off a connection: one buffer, decoded by tokio-util's
/// length-delimited codec, filled from the connection only when it holds
/// no whole record. (`FramedRead` reads from the connection before it
/// decodes bytes it was handed, so it would wait on the preface's
/// read-ahead for bytes the other end only sends after its answer.)
/// Cancel-safe: its only state is the buffer and the codec's.
pub struct Records<R> {
    read: R,
    buffer: BytesMut,
    codec: LengthDelimitedCodec,
}

impl<R: AsyncRead + Unpin> Records<R> {
    /// Records from `read`, `buffered` first (bytes already read from
    /// it), none longer than `max` bytes.
    pub fn new(read: R, buffered: &[u8], max: usize) -> Records<R> {
        Records {
            read,
            buffer: BytesMut::from(buffered),
            codec: codec(max),
        }
    }

    /// The next record; None: the connection closed (cleanly between
    /// records, or cut inside one), failed, or sent a length over `max`.
    pub async fn next(&mut self) -> Option<BytesMut> {
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(record)) => return Some(record),
                Ok(None) => {}
                Err(_) => return None,
            }
            self.buffer.reserve(8 * 1024);
            match self.read.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Read until at least `n` bytes are buffered; false: the connection
    /// closed first.
    pub async fn fill(&mut self, n: usize) -> bool {
        while self.buffer.len() < n {
            match self.read.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    /// What is buffered and not yet taken as a record.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// The connection and what is buffered of it.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.read, self.buffer)
    }
}

/// The reading end of a connection.
pub struct Inbox {
    records: Records<ReadHalf<Stream>>,
    opener: Option<Opener>,
}

/// Why a connection's reading end stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The connection closed (cleanly between frames, or cut inside one).
    Closed,
    /// A record that was refused: the connection is closed for it.
    Record(RecordError),
}

impl Inbox {
    /// The reading end of `read`; `buffered`: bytes already read from it.
    pub fn new(read: ReadHalf<Stream>, buffered: &[u8]) -> Inbox {
        Inbox {
            records: Records::new(read, buffered, MAX_RECORD),
            opener: None,
        }
    }

    /// From now on records are protected, opened by `opener`.
    pub fn protect(&mut self, opener: Opener) {
        self.opener = Some(opener);
    }

    /// The next frame: a handshake frame as it is, a protected one opened.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        let record = self.next_record().await?;
        self.open(record)
    }

    /// The next record, unopened.
    pub async fn next_record(&mut self) -> Result<BytesMut, ReadError> {
        let record = self.records.next().await.ok_or(ReadError::Closed)?;
        metrics::observe_channel_frames("in", 1);
        Ok(record)
    }

    /// Open `record`: protected once [`Self::protect`] was called, else as it is.
    pub fn open(&mut self, record: BytesMut) -> Result<Frame, ReadError> {
        match &mut self.opener {
            Some(opener) => opener.open(record).map_err(ReadError::Record),
            None => {
                Frame::parse(record.freeze()).map_err(|e| ReadError::Record(RecordError::Wire(e)))
            }
        }
    }

    /// The first `n` bytes back (the asking side checks them for an HTTP
    /// answer from a node without the channel); None: closed first.
    pub async fn first_bytes(&mut self, n: usize) -> Option<&[u8]> {
        match self.records.fill(n).await {
            true => Some(&self.records.buffered()[..n]),
            false => None,
        }
    }
}

/// Write `frames` unprotected (the handshake), with the preface first when
/// `preface`.
pub async fn write_plain(
    write: &mut WriteHalf<Stream>,
    preface: bool,
    frames: &[Frame],
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    if preface {
        out.extend_from_slice(PREFACE);
    }
    for frame in frames {
        plain(frame, &mut out);
    }
    write.write_all(&out).await?;
    write.flush().await
}

/// Start the writer of a connection: frames queued on the returned outbox
/// are sealed by `sealer` in order and written, those waiting together in
/// one write. It ends when every outbox is dropped, or a write fails or
/// makes no progress for `write_timeout` (the peer stopped reading).
pub fn spawn_writer(
    write: WriteHalf<Stream>,
    sealer: Sealer,
    write_timeout: Duration,
) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(OUTBOX_FRAMES);
    let task = tokio::spawn(write_loop(write, sealer, rx, write_timeout));
    (tx, task)
}

async fn write_loop(
    mut write: WriteHalf<Stream>,
    mut sealer: Sealer,
    mut rx: mpsc::Receiver<Frame>,
    write_timeout: Duration,
) {
    let mut out = BytesMut::with_capacity(16 * 1024);
    while let Some(frame) = rx.recv().await {
        let mut frames = 1;
        sealer.seal(&frame, &mut out);
        drop(frame);
        // Let the tasks that are ready now queue their frames first: they
        // go out in this write (one system call, and one wakeup of the
        // other end, for all of them).
        tokio::task::yield_now().await;
        while out.len() < COALESCE_BYTES {
            let Ok(frame) = rx.try_recv() else { break };
            sealer.seal(&frame, &mut out);
            frames += 1;
        }
        let written = tokio::time::timeout(write_timeout, async {
            write.write_all(&out).await?;
            write.flush().await
        })
        .await;
        metrics::observe_channel_frames("out", frames);
        if !matches!(written, Ok(Ok(()))) {
            log::warn!("peer channel: a write failed or the peer stopped reading; closing");
            break;
        }
        out.clear();
        if out.capacity() > 4 * COALESCE_BYTES {
            out = BytesMut::with_capacity(16 * 1024);
        }
    }
    let _ = write.shutdown().await;
}
