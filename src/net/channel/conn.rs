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
use super::record::{codec, plain, Opener, RecordError, Sealer};
use super::wire::Frame;
use crate::metrics;
use bytes::BytesMut;
use futures::StreamExt;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// Frames queued for the writer at most, per connection.
pub const OUTBOX_FRAMES: usize = 256;

/// A write takes at most about this many bytes of queued frames.
const COALESCE_BYTES: usize = 256 * 1024;

/// Where a connection's streams queue their frames.
pub type Outbox = mpsc::Sender<Frame>;

/// The reading end of a connection.
pub struct Inbox {
    framed: FramedRead<ReadHalf<Stream>, LengthDelimitedCodec>,
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
        let mut framed = FramedRead::new(read, codec());
        framed.read_buffer_mut().extend_from_slice(buffered);
        Inbox {
            framed,
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
        match self.framed.next().await {
            Some(Ok(record)) => {
                metrics::observe_channel_frames("in", 1);
                Ok(record)
            }
            // A cut inside a frame, a length over the limit, a reset.
            Some(Err(_)) | None => Err(ReadError::Closed),
        }
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

    /// The bytes that arrived first, before any frame (the asking side
    /// checks them for an HTTP answer from a node without the channel).
    pub fn buffered(&self) -> &BytesMut {
        self.framed.read_buffer()
    }

    pub fn get_mut(&mut self) -> &mut ReadHalf<Stream> {
        self.framed.get_mut()
    }

    pub fn read_buffer_mut(&mut self) -> &mut BytesMut {
        self.framed.read_buffer_mut()
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
