//! Client connections: how many may be open at once, how long a request head
//! may take to arrive, and how small their buffers are.
//!
//! pingora accepts every connection the OS hands it, gives each a 64 KiB
//! read buffer, and reads a request head with a timeout per read only: a
//! client that sends one header byte every few seconds holds its connection
//! (and the memory behind it) forever, and nothing bounds how many such
//! connections there are. This module adds those bounds around a listener's
//! pingora app:
//!
//! - [`Guarded`] counts open connections; past `max_connections` a new one
//!   is answered `503` and closed at once (`ringside_connections_refused_total`;
//!   during a flood, past 64 refusals at a time, closed without an answer;
//!   on the peer listener marked as a refusal, see `refusals.rs`);
//! - the stream pingora reads is a [`HeadDeadline`]: while a request head is
//!   being read, reads fail once `request_header_timeout` has passed since
//!   the head's first byte (since the connection opened, for its first
//!   request), and pingora closes the connection. The proxy marks where a
//!   head ends ([`head_received`], first thing in its request phases) and
//!   where the exchange ends ([`exchange_finished`], in `logging`); request
//!   bodies and the idle time between keep-alive requests are not under this
//!   deadline (the proxy gives pingora `request_body_timeout` for bodies and
//!   `idle_timeout` for keep-alive: `Session::set_read_timeout` and
//!   `set_keepalive`);
//! - every byte pingora reads from it passes the connection screen
//!   (`screen.rs`): a head it refuses is answered here (414, 431) and the
//!   connection closed, after the exchange before it if that is still under
//!   way; a body it refuses fails pingora's read with an error the proxy
//!   answers (400, [`refused_by_screen`]);
//! - a new connection is handed to pingora only once its first byte has
//!   arrived (within the head deadline): pingora's per-connection request
//!   state takes about 30 KiB, a connection waiting for its first byte a
//!   few hundred bytes;
//! - a connection that opens with `CONNECT ` on a listener with tunnels
//!   (the app's, with `forward_proxy.connect_allow`) never reaches pingora:
//!   its head is read here, under the same deadline, and `tunnel.rs`
//!   answers and relays it;
//! - a listener may take a new connection through a [`Handshake`] first
//!   (the peer listener: TLS, or refusing TLS where it has none; see
//!   `peer_tls.rs`), within the connection cap, before any of the above;
//! - [`listener`] configures the listening socket without pingora's 64 KiB
//!   read buffer: pingora reads request heads and bodies into buffers of its
//!   own, so the extra layer only cost memory on every idle connection.
//!
//! HTTP/2 (h2c on the peer listener) multiplexes requests over one stream,
//! so there the head deadline is off; the connection cap still applies.

use crate::metrics;
use crate::net::refusals::Refusals;
use crate::net::screen::{Refusal, Screen};
use crate::net::tunnel::{self, Tunnels};
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The listening socket for `addr`: no L4 read buffer (see the module doc),
/// pingora's default write buffer (one segment).
pub fn listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0))
}

/// Fail with a message naming `field` when `addr` cannot be listened on right
/// now, e.g. another process holds it. Checked before pingora starts: it
/// would retry for 30 s and then stop that listener's thread while the rest
/// of the process runs on (and `/readyz` says why it is not ready).
pub fn check_free(field: &str, addr: std::net::SocketAddr) -> crate::error::Result<()> {
    use crate::error::{Error, Kind};
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::new(
            Kind::Listen,
            format!("{field}: {addr} is in use by another process; ringside cannot listen there"),
        )),
        Err(e) => {
            let what = format!("{field}: cannot listen on {addr}");
            Err(Error::new(Kind::Listen, what).caused_by(e))
        }
    }
}

/// The bounds a [`Guarded`] app applies to its connections.
#[derive(Clone)]
pub struct Limits {
    /// Open connections at most; more are refused.
    pub max_connections: usize,
    /// How long one request head may take; `None`: no deadline (HTTP/2).
    pub head_timeout: Option<Duration>,
    /// CONNECT tunnels this listener opens (needs `head_timeout`).
    pub tunnels: Option<Arc<Tunnels>>,
    /// What a new connection goes through before HTTP.
    pub handshake: Option<Arc<dyn Handshake>>,
    /// How this listener answers on the wire when it refuses.
    pub refusals: Arc<Refusals>,
    /// Another protocol served here instead of HTTP, to connections that
    /// open with its preface (the peer channel; needs `head_timeout`).
    pub diverted: Option<Arc<dyn Diverted>>,
}

/// A protocol a listener serves beside HTTP, told apart by the first
/// bytes a connection sends (its preface, which must not be HTTP).
#[async_trait]
pub trait Diverted: Send + Sync {
    fn preface(&self) -> &'static [u8];

    /// Serve a connection whose preface has been read; `buffered`: the
    /// bytes read after it.
    async fn serve(&self, stream: Stream, buffered: BytesMut);
}

/// A step between accepting a connection and speaking HTTP on it, such as
/// TLS. It bounds its own time.
#[async_trait]
pub trait Handshake: Send + Sync {
    /// The stream to speak HTTP on, or None when the connection is done
    /// with (closed, refused, or answered here).
    async fn accept(&self, stream: Stream) -> Option<Stream>;
}

/// A listener's app with its connections counted, capped and given a head deadline.
pub struct Guarded<A> {
    app: Arc<A>,
    limits: Limits,
    open: AtomicUsize,
    /// Refused connections being answered right now.
    refusing: AtomicUsize,
    /// `ringside_connections` and `ringside_connections_refused_total` of this listener.
    open_gauge: IntGauge,
    refused: IntCounter,
}

impl<A> Guarded<A> {
    /// `app` with `limits`; `listener` names it in the metrics.
    pub fn new(app: A, limits: Limits) -> Guarded<A> {
        let (open_gauge, refused) = metrics::connection_metrics(limits.refusals.listener());
        Guarded {
            app: Arc::new(app),
            limits,
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            open_gauge,
            refused,
        }
    }

    /// Serve `diverted` instead of HTTP to connections that open with its preface.
    pub fn divert(&mut self, diverted: Option<Arc<dyn Diverted>>) {
        self.limits.diverted = diverted;
    }

    /// Take a connection slot, if one is free; it is given back on drop.
    fn enter(&self) -> Option<Slot<'_, A>> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limits.max_connections).then_some(open + 1)
            });
        match taken {
            Ok(_) => {
                self.open_gauge.inc();
                Some(Slot(self))
            }
            Err(_) => None,
        }
    }
}

/// One open connection's place under the cap.
struct Slot<'a, A>(&'a Guarded<A>);

impl<A> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.open_gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.enter() else {
            self.refused.inc();
            if self.refusing.fetch_add(1, Ordering::AcqRel) < REFUSALS_AT_ONCE {
                let mut stream = stream;
                answer_and_close(&mut stream, self.limits.refusals.busy()).await;
            }
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return None;
        };
        let stream = match &self.limits.handshake {
            Some(handshake) => handshake.accept(stream).await?,
            None => stream,
        };
        let stream: Stream = match self.limits.head_timeout {
            Some(timeout) => {
                let refusals = self.limits.refusals.clone();
                let mut stream = HeadDeadline::new(stream, timeout, refusals);
                // pingora's request state is large (tens of KiB a
                // connection): wait for the client's first byte before
                // handing it over, so a silent connection costs little.
                if !stream.first_byte().await {
                    return None;
                }
                if let Some(diverted) = &self.limits.diverted {
                    match stream.opens_with(diverted.preface()).await {
                        Ok(false) => {}
                        Ok(true) => {
                            let (inner, buffered) = stream.into_parts();
                            diverted.serve(inner, buffered).await;
                            return None;
                        }
                        Err(_) => return None,
                    }
                }
                if let Some(tunnels) = &self.limits.tunnels {
                    match stream.connect_head().await {
                        Ok(None) => {}
                        Ok(Some(head)) => {
                            tunnels.serve(stream, &head).await;
                            return None;
                        }
                        Err(_) => return None,
                    }
                }
                Box::new(stream)
            }
            None => stream,
        };
        // pingora's HTTP apps serve every request of the connection before
        // returning; the slot is held until then.
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// How long a refused connection is given to take its 503.
const REFUSAL_TIME: Duration = Duration::from_millis(500);

/// Refused connections that may be answered at once; past that (a flood),
/// a refused connection is closed without an answer, so that refusing
/// costs a bounded amount of memory too.
const REFUSALS_AT_ONCE: usize = 64;

/// Write `answer` (a whole HTTP response) and close. The client's side is
/// read (and dropped) until it closes or half a second passes, so that the
/// close does not reset the connection and destroy the answer before the
/// client has read it.
pub async fn answer_and_close(stream: &mut Stream, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(answer).await?;
        stream.flush().await?;
        Shutdown::shutdown(&mut **stream).await;
        let mut sink = [0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Where a connection is in its current exchange.
const READING_HEAD: u8 = 0;
const IN_EXCHANGE: u8 = 1;
const IDLE: u8 = 2;

/// A client's stream as pingora reads it: reads fail once a request head
/// has been arriving for too long, and every byte read passes the screen.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    phase: AtomicU8,
    screen: Screen,
    refusals: Arc<Refusals>,
    /// A refusal of the screen's under way, if any.
    refusing: Option<Refusing>,
    /// A head refused during the exchange before it waits for the
    /// exchange's end ([`exchange_finished`] wakes it).
    waiting: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// When the head being read must be complete.
    due: Instant,
    /// A timer for `due`, armed only when a head read has to wait: a client
    /// that sends its head in one go never touches the timer wheel.
    deadline: Pin<Box<Sleep>>,
    /// Bytes read before pingora takes over (the first byte; the start of
    /// a head checked for CONNECT), handed to its first reads.
    replay: BytesMut,
}

impl HeadDeadline {
    /// A new connection: its first head is due `timeout` from now.
    fn new(inner: Stream, timeout: Duration, refusals: Arc<Refusals>) -> HeadDeadline {
        HeadDeadline {
            inner,
            timeout,
            phase: AtomicU8::new(READING_HEAD),
            screen: Screen::new(),
            refusals,
            refusing: None,
            waiting: AtomicBool::new(false),
            waker: Mutex::new(None),
            due: Instant::now() + timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            replay: BytesMut::new(),
        }
    }

    /// Wait for the first byte of the connection, within the head deadline.
    /// False when the client closed, failed or sent nothing in time.
    async fn first_byte(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.read(&mut byte).await {
            Ok(1) => {
                self.replay.extend_from_slice(&byte);
                true
            }
            _ => false,
        }
    }

    /// If the connection opens with a CONNECT, its head (read within the
    /// head deadline; what follows it stays to be read), and the stream is
    /// then in its exchange. None: not a CONNECT, nothing consumed.
    async fn connect_head(&mut self) -> io::Result<Option<BytesMut>> {
        let prefix = tunnel::CONNECT_PREFIX;
        self.read_ahead(|b| b.len() >= prefix.len() || !prefix.starts_with(b))
            .await?;
        if !self.replay.starts_with(prefix) {
            return Ok(None);
        }
        let end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n");
        self.read_ahead(|b| end(b).is_some() || b.len() >= tunnel::MAX_HEAD_BYTES)
            .await?;
        let head = match end(&self.replay) {
            Some(at) => self.replay.split_to(at + 4),
            // Too long: the tunnel answers 400 for a head it cannot parse.
            None => std::mem::take(&mut self.replay),
        };
        self.phase.store(IN_EXCHANGE, Ordering::Relaxed);
        Ok(Some(head))
    }

    /// Whether the connection opens with `preface` (read within the head
    /// deadline, then consumed; otherwise nothing is consumed).
    async fn opens_with(&mut self, preface: &[u8]) -> io::Result<bool> {
        self.read_ahead(|b| b.len() >= preface.len() || !preface.starts_with(b))
            .await?;
        if !self.replay.starts_with(preface) {
            return Ok(false);
        }
        let _ = self.replay.split_to(preface.len());
        Ok(true)
    }

    /// The stream under the deadline and the bytes read from it ahead.
    fn into_parts(self) -> (Stream, BytesMut) {
        (self.inner, self.replay)
    }

    /// Read into `replay` until `enough` holds, within the head deadline.
    async fn read_ahead(&mut self, enough: impl Fn(&[u8]) -> bool) -> io::Result<()> {
        let due = self.due;
        let mut chunk = [0u8; 2048];
        while !enough(&self.replay) {
            let n = tokio::time::timeout_at(due, self.inner.read(&mut chunk))
                .await
                .map_err(|_| too_slow())??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.replay.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// The connection serving `session`, when it is one of ours.
    fn of(session: &pingora::protocols::http::ServerSession) -> Option<&HeadDeadline> {
        let stream = session.stream()?;
        (**stream).as_any().downcast_ref::<HeadDeadline>()
    }
}

/// The head of the session's current request is in: its body and response
/// are not under the head deadline.
pub fn head_received(session: &pingora::protocols::http::ServerSession) {
    if let Some(stream) = HeadDeadline::of(session) {
        stream.phase.store(IN_EXCHANGE, Ordering::Relaxed);
    }
}

/// The session's exchange is over: the next byte read starts the next head.
pub fn exchange_finished(session: &pingora::protocols::http::ServerSession) {
    if let Some(stream) = HeadDeadline::of(session) {
        stream.phase.store(IDLE, Ordering::Release);
        if stream.waiting.swap(false, Ordering::AcqRel) {
            let waker = stream.waker.lock().take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// The screen's refusal behind a failed read (a body it refused), if it was one.
pub fn refused_by_screen(e: &pingora::Error) -> Option<Refusal> {
    let io = e.root_cause().downcast_ref::<io::Error>()?;
    io.get_ref()?.downcast_ref::<ScreenRefused>().map(|r| r.0)
}

/// A read failed because the screen refused what the client sent.
#[derive(Debug)]
struct ScreenRefused(Refusal);

impl std::fmt::Display for ScreenRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused by ringside ({})", self.0.reason())
    }
}

impl std::error::Error for ScreenRefused {}

/// Where a refusal of the screen's is.
#[derive(Debug, Clone, Copy)]
enum Refusing {
    /// A head refused while the exchange before it is under way: answered
    /// once that exchange is over, so that its response is not cut into.
    AfterExchange(Refusal),
    /// The answer is being written (`written` bytes so far).
    Writing { refusal: Refusal, written: usize },
    /// Answered: the client's bytes are read and dropped until it closes or
    /// the time is up, so that the close does not destroy the answer.
    Draining(Refusal),
    /// Over: every read fails.
    Closed(Refusal),
}

impl HeadDeadline {
    /// Pass the bytes just read (from `before` in `buf`) through the screen:
    /// on a refusal, keep what comes before the refused head or line and
    /// start refusing.
    fn screen_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        before: usize,
    ) -> Poll<io::Result<()>> {
        let Some(refused) = self.screen.scan(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        self.refusals.count(refused.refusal);
        buf.set_filled(before + refused.deliver);
        self.refusing = Some(match refused.refusal.is_head() {
            false => Refusing::Closed(refused.refusal),
            true => Refusing::AfterExchange(refused.refusal),
        });
        match refused.deliver {
            0 => self.poll_refusal(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Go on refusing: wait for the exchange's end, write the answer, drain,
    /// then fail every read.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(refusing) = self.refusing else {
                return Poll::Ready(Ok(()));
            };
            let next = match refusing {
                Refusing::AfterExchange(refusal) => {
                    if self.in_exchange(cx) {
                        return Poll::Pending;
                    }
                    self.deadline.as_mut().reset(Instant::now() + REFUSAL_TIME);
                    Refusing::Writing {
                        refusal,
                        written: 0,
                    }
                }
                Refusing::Writing { refusal, written } => {
                    match self.poll_answer(cx, refusal, written) {
                        Poll::Ready(Some(written)) => Refusing::Writing { refusal, written },
                        Poll::Ready(None) => Refusing::Draining(refusal),
                        Poll::Pending => match self.deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => Refusing::Closed(refusal),
                            Poll::Pending => return Poll::Pending,
                        },
                    }
                }
                Refusing::Draining(refusal) => {
                    let mut sink = [0u8; 512];
                    let mut sink = ReadBuf::new(&mut sink);
                    match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                        Poll::Ready(Ok(())) if !sink.filled().is_empty() => continue,
                        Poll::Ready(_) => Refusing::Closed(refusal),
                        Poll::Pending => match self.deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => Refusing::Closed(refusal),
                            Poll::Pending => return Poll::Pending,
                        },
                    }
                }
                Refusing::Closed(refusal) => {
                    let kind = match refusal.is_head() {
                        true => io::ErrorKind::ConnectionAborted,
                        false => io::ErrorKind::InvalidData,
                    };
                    return Poll::Ready(Err(io::Error::new(kind, ScreenRefused(refusal))));
                }
            };
            self.refusing = Some(next);
        }
    }

    /// Whether the exchange before a refused head is still under way; if
    /// so, [`exchange_finished`] wakes this task.
    fn in_exchange(&self, cx: &Context<'_>) -> bool {
        if self.phase.load(Ordering::Acquire) != IN_EXCHANGE {
            return false;
        }
        *self.waker.lock() = Some(cx.waker().clone());
        self.waiting.store(true, Ordering::Release);
        // The exchange may have ended meanwhile, before the waker was there.
        self.phase.load(Ordering::Acquire) == IN_EXCHANGE
    }

    /// Write more of the answer: `Some(written)` while there is more to
    /// write, None once it is out (flushed, and our side shut).
    fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
        refusal: Refusal,
        written: usize,
    ) -> Poll<Option<usize>> {
        let answer = self.refusals.answer(refusal);
        let inner = Pin::new(&mut self.inner);
        if written < answer.len() {
            return match inner.poll_write(cx, &answer[written..]) {
                Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Some(written + n)),
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
        let mut inner = inner;
        match inner.as_mut().poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(_) => {}
        }
        match inner.poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(None),
        }
    }
}

fn too_slow() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")
}

impl HeadDeadline {
    /// A read of a head that must be complete by `due`: bytes that arrive
    /// in time are passed on; a read that has to wait arms the timer.
    fn poll_read_head(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => {
                if self.deadline.deadline() != self.due {
                    self.deadline.as_mut().reset(self.due);
                }
                match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(too_slow())),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(Ok(())) if Instant::now() >= self.due => Poll::Ready(Err(too_slow())),
            ready => ready,
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return this.poll_refusal(cx);
        }
        let before = buf.filled().len();
        match this.poll_read_unscreened(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.screen_read(cx, buf, before),
            read => read,
        }
    }
}

impl HeadDeadline {
    /// A read as the head deadline allows it, before the screen sees it.
    fn poll_read_unscreened(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            if self.replay.is_empty() && buf.remaining() > 0 {
                // The rest of what has arrived, if any, in the same read.
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        match self.phase.load(Ordering::Relaxed) {
            READING_HEAD => self.poll_read_head(cx, buf),
            IDLE => {
                let before = buf.filled().len();
                let read = Pin::new(&mut self.inner).poll_read(cx, buf);
                if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    // The first bytes of the next request: its head is due in `timeout`.
                    self.due = Instant::now() + self.timeout;
                    self.phase.store(READING_HEAD, Ordering::Relaxed);
                }
                read
            }
            _ => Pin::new(&mut self.inner).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    /// pingora peeks for the HTTP/2 preface on h2c listeners, a read that
    /// waits for its bytes: it falls under the head deadline too.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let peek = self.inner.try_peek(buf);
        match tokio::time::timeout_at(self.due, peek).await {
            Ok(peeked) => peeked,
            Err(_) => Err(too_slow()),
        }
    }
}

/// Request heads larger than this are refused with 431, as nginx and Envoy
/// refuse theirs (pingora alone would accept up to 1 MiB and pass it on);
/// the proxy's and the admin listener's alike.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// The size of a request head as it arrived (request target and fields).
pub fn header_bytes(req: &pingora::http::RequestHeader) -> usize {
    req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
}
