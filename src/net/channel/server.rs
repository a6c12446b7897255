//! The owner's end of a channel connection: answer the handshake (the
//! [`Owner`] admits or refuses the asker), then read requests and serve
//! each on a task of its own, its answer's frames queued as they are ready,
//! so a slow fill never holds up a hit behind it.
//!
//! Streams in flight per connection are bounded ([`MAX_STREAMS`]): a
//! request over the bound is answered with a reset (the asker goes to its
//! origin). The table of streams is that bound's size at most and is
//! emptied as streams finish.

use super::conn::{spawn_writer, write_plain, Inbox, Outbox, ReadError, Records};
use super::handshake::{self, Keys, NO_COMMON_VERSION, VERSIONS};
use super::record::{Opener, Sealer};
use super::wire::{fields_of, Frame, Hello, Request, Welcome, MAX_DATA};
use crate::metrics;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use ring::hmac;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::WriteHalf;
use tokio::task::JoinHandle;

/// Requests in flight on one connection at most.
pub const MAX_STREAMS: usize = 1024;

/// What serves a channel: who this node is, whom it admits, and how it
/// answers a request.
pub trait Owner: Send + Sync + 'static {
    /// What admission learnt of the asker, for its requests.
    type Asker: Send + Sync + 'static;

    /// This node's advertised peer address and ring generation.
    fn me(&self) -> (String, u64);

    /// The cluster secret, as it is now: a new `Arc` when it changed, and
    /// connections opened under the previous one are closed.
    fn secret(&self) -> Arc<hmac::Key>;

    /// Whether the connection is mutual TLS (records then go unsealed).
    fn tls(&self) -> bool;

    /// Admit the asker of `hello` on `stream` (the member it claims to be,
    /// from where it connects, its certificate), or the refusal's reason.
    fn admit(&self, hello: &Hello, stream: &Stream) -> Result<Self::Asker, &'static str>;

    /// Serve one request, answering on `reply`.
    fn serve(
        self: &Arc<Self>,
        asker: &Arc<Self::Asker>,
        request: Request,
        reply: Reply,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Where one stream's answer goes.
pub struct Reply {
    stream: u32,
    outbox: Outbox,
    canceled: Arc<AtomicBool>,
    streams: Arc<Streams>,
}

/// The answer can go no further: the asker cancelled, or the connection closed.
#[derive(Debug)]
pub struct Gone;

impl Reply {
    async fn send(&self, frame: Frame) -> Result<(), Gone> {
        if self.canceled.load(Ordering::Relaxed) {
            return Err(Gone);
        }
        self.outbox.send(frame).await.map_err(|_| Gone)
    }

    /// The response head; `end`: no body follows.
    pub async fn head(&self, head: &ResponseHeader, end: bool) -> Result<(), Gone> {
        let frame = Frame::Head(super::wire::Head {
            stream: self.stream,
            status: head.status.as_u16(),
            end,
            headers: fields_of(&head.headers),
        });
        self.send(frame).await
    }

    /// A piece of the body, sent in frames of at most [`MAX_DATA`]; `end`:
    /// the last.
    pub async fn data(&self, mut data: Bytes, end: bool) -> Result<(), Gone> {
        loop {
            let piece = data.split_to(data.len().min(MAX_DATA));
            let last = data.is_empty();
            let frame = Frame::Data {
                stream: self.stream,
                end: end && last,
                data: piece,
            };
            self.send(frame).await?;
            if last {
                return Ok(());
            }
        }
    }

    /// The answer broke off.
    pub async fn reset(&self) {
        let _ = self
            .send(Frame::Reset {
                stream: self.stream,
            })
            .await;
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.streams.finish(self.stream);
    }
}

/// The streams of a connection in flight, each with its cancel flag.
#[derive(Default)]
pub struct Streams(Mutex<HashMap<u32, Arc<AtomicBool>>>);

impl Streams {
    /// Start `stream`: its cancel flag, or None over the bound or when it
    /// is in flight already.
    fn start(&self, stream: u32) -> Option<Arc<AtomicBool>> {
        let mut streams = self.0.lock();
        if streams.len() >= MAX_STREAMS || streams.contains_key(&stream) {
            return None;
        }
        let flag = Arc::new(AtomicBool::new(false));
        streams.insert(stream, flag.clone());
        Some(flag)
    }

    fn cancel(&self, stream: u32) {
        if let Some(flag) = self.0.lock().get(&stream) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    fn finish(&self, stream: u32) {
        self.0.lock().remove(&stream);
    }
}

/// Serve a channel connection whose preface has been read (`buffered`: the
/// bytes read after it). `timeout` bounds the handshake and each write.
pub async fn serve<O: Owner>(owner: Arc<O>, stream: Stream, buffered: &[u8], timeout: Duration) {
    let Some(open) = open(&owner, stream, buffered, timeout).await else {
        return;
    };
    let Open {
        asker,
        mut inbox,
        outbox,
        mut writer,
        secret,
    } = open;
    metrics::PEER_CHANNELS.with_label_values(&["owner"]).inc();
    let streams = Arc::new(Streams::default());
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(IDLE, inbox.next()) => next,
            // The writer gave up: the asker stopped reading.
            _ = &mut writer => break,
        };
        let frame = match next {
            Ok(Ok(frame)) => frame,
            Err(_idle) if streams.is_empty() => break,
            Err(_idle) => continue,
            Ok(Err(ReadError::Closed)) => break,
            Ok(Err(ReadError::Record(why))) => {
                metrics::observe_channel_refusal("frame");
                log::warn!("peer channel: {why}; closing the connection");
                break;
            }
        };
        match frame {
            Frame::Request(_) if !Arc::ptr_eq(&secret, &owner.secret()) => {
                // Opened under the previous cluster secret: the asker
                // dials again, and proves the current one.
                log::info!("peer channel: the cluster secret changed; closing");
                break;
            }
            Frame::Request(request) => {
                let Some(canceled) = streams.start(request.stream) else {
                    let _ = outbox.try_send(Frame::Reset {
                        stream: request.stream,
                    });
                    continue;
                };
                let reply = Reply {
                    stream: request.stream,
                    outbox: outbox.clone(),
                    canceled,
                    streams: streams.clone(),
                };
                tokio::spawn(owner.serve(&asker, request, reply));
            }
            Frame::Cancel { stream } => streams.cancel(stream),
            other => {
                metrics::observe_channel_refusal("frame");
                log::warn!("peer channel: unexpected {other:?} from an asker; closing");
                break;
            }
        }
    }
    // Streams still being served find their replies gone once the writer
    // stops; it stops with the last outbox.
    writer.abort();
    metrics::PEER_CHANNELS.with_label_values(&["owner"]).dec();
}

/// An owner closes a connection on which nothing arrived for this long
/// and no answer is under way. Askers stop using a connection well before
/// (`client::IDLE_REUSE`), so they never send on one being closed.
pub const IDLE: Duration = Duration::from_secs(120);

/// An open connection, the owner's side.
struct Open<A> {
    asker: Arc<A>,
    inbox: Inbox,
    outbox: Outbox,
    /// Ends when a write fails or makes no progress.
    writer: JoinHandle<()>,
    /// The cluster secret the handshake proved.
    secret: Arc<hmac::Key>,
}

/// The handshake, the owner's side: the asker admitted, the reading end
/// and the writer's outbox; None when refused or broken (the reason sent,
/// logged and counted).
async fn open<O: Owner>(
    owner: &Arc<O>,
    mut stream: Stream,
    buffered: &[u8],
    timeout: Duration,
) -> Option<Open<O::Asker>> {
    let from = peer_address(&stream);
    let first = tokio::time::timeout(timeout, read_hello(&mut stream, buffered)).await;
    let admitted = match first {
        Ok(Ok((hello, leftover))) => {
            admit(owner.as_ref(), &hello, &stream).map(|a| (hello, a, leftover))
        }
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err("timeout"),
    };
    let (read, mut write) = tokio::io::split(stream);
    let outcome = match admitted {
        Ok((hello, asker, leftover)) => {
            let mut inbox = Inbox::new(read, &leftover);
            let done = tokio::time::timeout(
                timeout,
                welcome(owner.as_ref(), &mut inbox, &mut write, &hello),
            )
            .await;
            match done {
                Ok(Ok(keys)) => Ok((asker, inbox, keys)),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err("timeout"),
            }
        }
        Err(reason) => Err(reason),
    };
    let (asker, mut inbox, (keys, secret)) = match outcome {
        Ok(open) => open,
        Err(reason) => {
            refuse(&mut write, &from, reason, timeout).await;
            return None;
        }
    };
    inbox.protect(Opener::new(keys.to_owner));
    let (outbox, writer) = spawn_writer(write, Sealer::new(keys.to_asker), timeout);
    outbox.send(Frame::Accepted).await.ok()?;
    Some(Open {
        asker: Arc::new(asker),
        inbox,
        outbox,
        writer,
        secret,
    })
}

/// Count, log and send a refusal of the handshake.
async fn refuse(
    write: &mut WriteHalf<Stream>,
    from: &str,
    reason: &'static str,
    timeout: Duration,
) {
    metrics::observe_channel_refusal(reason);
    if reason == "credentials" {
        metrics::PEER_AUTH_FAILURES.inc();
    }
    log::warn!("peer channel from {from} refused: {reason}");
    let refused = Frame::Refused {
        reason: reason.to_string(),
    };
    let _ = tokio::time::timeout(timeout, write_plain(write, false, &[refused])).await;
}

/// The asker's Hello (the first frame), and the bytes read after it.
async fn read_hello(
    stream: &mut Stream,
    buffered: &[u8],
) -> Result<(Hello, BytesMut), &'static str> {
    let mut records = Records::new(stream, buffered, MAX_HELLO);
    let record = records.next().await.ok_or("malformed")?;
    match Frame::parse(record.freeze()) {
        Ok(Frame::Hello(hello)) => Ok((hello, records.into_parts().1)),
        _ => Err("malformed"),
    }
}

/// The longest Hello read: two member addresses and a few numbers, far
/// below this; an unauthenticated connection holds no more.
const MAX_HELLO: usize = 4096;

/// A Hello this node answers: a version in common, and an asker the owner admits.
fn admit<O: Owner>(owner: &O, hello: &Hello, stream: &Stream) -> Result<O::Asker, &'static str> {
    handshake::choose_version(hello.versions, VERSIONS).ok_or(NO_COMMON_VERSION)?;
    owner.admit(hello, stream)
}

/// The rest of the handshake, the owner's side: the Welcome with its
/// proof, then the asker's. Err: the reason to refuse.
async fn welcome<O: Owner>(
    owner: &O,
    inbox: &mut Inbox,
    write: &mut WriteHalf<Stream>,
    hello: &Hello,
) -> Result<(Keys, Arc<hmac::Key>), &'static str> {
    let version = handshake::choose_version(hello.versions, VERSIONS).ok_or(NO_COMMON_VERSION)?;
    let (me, generation) = owner.me();
    let mut welcome = Welcome {
        version,
        from: me,
        generation,
        nonce: handshake::nonce().ok_or("no random nonce")?,
        mac: [0; 32],
    };
    let secret = owner.secret();
    let transcript = handshake::transcript(hello, &welcome);
    welcome.mac = handshake::server_proof(&secret, &transcript);
    write_plain(write, false, &[Frame::Welcome(welcome)])
        .await
        .map_err(|_| "closed")?;
    let Ok(Frame::Finish { mac }) = inbox.next().await else {
        return Err("malformed");
    };
    if !handshake::proof_matches(&mac, &handshake::client_proof(&secret, &transcript)) {
        return Err("credentials");
    }
    Ok((
        handshake::session_keys(&secret, &transcript, owner.tls()),
        secret,
    ))
}

/// The address a connection comes from, for the log.
fn peer_address(stream: &Stream) -> String {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "an unknown address".into())
}
