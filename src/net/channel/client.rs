//! The asking end: one channel connection per peer, opened on first use
//! (one dial at a time per peer, the others wait for it), many requests in
//! flight on it, each answer routed by its stream number to the request
//! that waits for it, as its frames arrive.
//!
//! A peer whose listener does not speak the channel (it answers the
//! preface with HTTP or closes, or refuses the channel's version) is
//! remembered as such for [`LEGACY_RECHECK`] and asked over HTTP meanwhile;
//! then the channel is tried again (a rolling upgrade reaches it). Both
//! tables are bounded by [`MAX_PEERS`].

use super::conn::{spawn_writer, write_plain, Inbox, Outbox, ReadError};
use super::handshake::{self, NO_COMMON_VERSION, VERSIONS};
use super::record::{Opener, Sealer};
use super::server::MAX_STREAMS;
use super::wire::{fields_of, Frame, Head, Hello, Request};
use crate::metrics;
use crate::net::fetch::{FetchError, InterimSink};
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use ring::hmac;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a peer found not to speak the channel is asked over HTTP
/// before the channel is tried again.
pub const LEGACY_RECHECK: Duration = Duration::from_secs(30);

/// Peers remembered at most (open connections, peers without the channel).
pub const MAX_PEERS: usize = 4096;

/// Events queued for one request's answer at most.
const STREAM_EVENTS: usize = 32;

/// Who asks: this node's address, the cluster secret as it is now.
pub trait Identity: Send + Sync {
    fn me(&self) -> &str;
    /// A new `Arc` when the secret changed: connections opened under the
    /// previous one are not used again.
    fn secret(&self) -> Arc<hmac::Key>;
}

/// One request to a peer over the channel.
pub struct Ask<'a> {
    pub request: &'a RequestHeader,
    pub body: Option<Bytes>,
    /// `scheme://host:port` of the key's origin.
    pub origin: &'a str,
    /// A previous-owner lookup.
    pub lookup: bool,
    pub generation: u64,
}

/// Why the channel gave no answer.
#[derive(Debug)]
pub enum AskError {
    /// The peer does not speak the channel (or not now: too many requests
    /// in flight on it): ask it over HTTP.
    UseHttp,
    /// The peer failed: refused the handshake, broke off, timed out.
    Failed(FetchError),
    /// The connection (or its TLS handshake) could not be made: the
    /// caller notes why, as for any peer connection (`peer_tls.rs`).
    Connect(Box<pingora::Error>),
}

/// The asking end's connections, by peer address.
pub struct Channels {
    connector: TransportConnector,
    open: Mutex<HashMap<String, Arc<Conn>>>,
    dialing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    legacy: Mutex<HashMap<String, Instant>>,
}

/// Keep `map` under [`MAX_PEERS`] before an insert: drop what `stale`
/// says, then, if still full, everything (it is all cheap to make again).
fn make_room<V>(map: &mut HashMap<String, V>, stale: impl Fn(&V) -> bool) {
    if map.len() < MAX_PEERS {
        return;
    }
    map.retain(|_, v| !stale(v));
    if map.len() >= MAX_PEERS {
        map.clear();
    }
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            connector: TransportConnector::new(None),
            open: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            legacy: Mutex::new(HashMap::new()),
        }
    }
}

impl Channels {
    /// Whether to try the channel with `addr` (not known to lack it).
    pub fn worth_trying(&self, addr: &str) -> bool {
        let mut legacy = self.legacy.lock();
        match legacy.get(addr) {
            Some(until) if Instant::now() < *until => false,
            Some(_) => {
                legacy.remove(addr);
                true
            }
            None => true,
        }
    }

    fn mark_legacy(&self, addr: &str) {
        let mut legacy = self.legacy.lock();
        let now = Instant::now();
        make_room(&mut legacy, |until| *until <= now);
        legacy.insert(addr.to_owned(), now + LEGACY_RECHECK);
        log::info!("peer {addr} does not speak the peer channel: asking it over HTTP");
    }

    /// Ask `addr` (reached as `peer`: its address, TLS, connect timeout),
    /// waiting `read_timeout` at most for each part of the answer.
    /// Interim heads go to `interim`.
    pub async fn ask(
        &self,
        (addr, peer): (&str, &HttpPeer),
        identity: &dyn Identity,
        ask: Ask<'_>,
        read_timeout: Duration,
        interim: Option<&InterimSink>,
    ) -> Result<(ResponseHeader, ChannelBody), AskError> {
        let conn = self.conn(addr, peer, identity).await?;
        let Some((stream, mut events)) = conn.start() else {
            return Err(AskError::UseHttp);
        };
        let request = Frame::Request(request_frame(stream, &ask));
        if conn.outbox.send(request).await.is_err() {
            conn.streams.lock().remove(&stream);
            return Err(AskError::Failed(FetchError::Unreachable));
        }
        let mut body = ChannelBody {
            events: None,
            conn: conn.clone(),
            stream,
            done: false,
            read_timeout,
        };
        loop {
            let head = match next_event(&mut events, read_timeout).await? {
                Event::Head(head) => head,
                _ => return Err(AskError::Failed(FetchError::Unreachable)),
            };
            let end = head.end;
            let header = response_header(head)?;
            if header.status.is_informational() {
                pass_on_interim(header, interim);
                continue;
            }
            body.done = end;
            body.events = Some(events);
            return Ok((header, body));
        }
    }

    /// The open connection to `addr`, or a new one.
    async fn conn(
        &self,
        addr: &str,
        peer: &HttpPeer,
        identity: &dyn Identity,
    ) -> Result<Arc<Conn>, AskError> {
        if let Some(conn) = self.open_conn(addr, identity) {
            return Ok(conn);
        }
        let dial = {
            let mut dialing = self.dialing.lock();
            make_room(&mut dialing, |d| Arc::strong_count(d) == 1);
            dialing.entry(addr.to_owned()).or_default().clone()
        };
        let _one_at_a_time = dial.lock().await;
        if let Some(conn) = self.open_conn(addr, identity) {
            return Ok(conn);
        }
        // Boxed: connecting is rare, and its state (pingora's connector,
        // TLS) would otherwise be carried by every request's future.
        let conn = match Box::pin(self.dial(addr, peer, identity)).await {
            Ok(conn) => conn,
            Err(AskError::UseHttp) => {
                self.mark_legacy(addr);
                return Err(AskError::UseHttp);
            }
            Err(e) => return Err(e),
        };
        let mut open = self.open.lock();
        make_room(&mut open, |c: &Arc<Conn>| c.is_closed());
        open.insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    fn open_conn(&self, addr: &str, identity: &dyn Identity) -> Option<Arc<Conn>> {
        let secret = identity.secret();
        let mut open = self.open.lock();
        let conn = open.get(addr)?;
        if conn.reusable(&secret) {
            return Some(conn.clone());
        }
        // Idle, closed, or opened under another secret: not used again.
        if let Some(conn) = open.remove(addr) {
            conn.retire();
        }
        None
    }

    /// Connect and run the handshake, within the peer's connect timeout.
    async fn dial(
        &self,
        addr: &str,
        peer: &HttpPeer,
        identity: &dyn Identity,
    ) -> Result<Arc<Conn>, AskError> {
        let timeout = peer
            .options
            .connection_timeout
            .unwrap_or(Duration::from_secs(1));
        let stream = match tokio::time::timeout(timeout, self.connector.new_stream(peer)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                log::warn!("peer channel to {addr}: cannot connect: {e}");
                return Err(AskError::Connect(e));
            }
            Err(_) => return Err(AskError::Failed(FetchError::Timeout)),
        };
        let tls = stream.get_ssl_digest().is_some();
        match tokio::time::timeout(timeout, handshake(stream, addr, identity, tls)).await {
            Ok(result) => result,
            Err(_) => Err(AskError::Failed(FetchError::Timeout)),
        }
    }
}

/// The handshake, the asking side, on a new connection to `addr`.
async fn handshake(
    stream: pingora::protocols::Stream,
    addr: &str,
    identity: &dyn Identity,
    tls: bool,
) -> Result<Arc<Conn>, AskError> {
    let failed = || AskError::Failed(FetchError::Unreachable);
    let hello = Hello {
        versions: VERSIONS,
        from: identity.me().to_owned(),
        to: addr.to_owned(),
        generation: 0,
        nonce: handshake::nonce().ok_or_else(failed)?,
    };
    let (read, mut write) = tokio::io::split(stream);
    let mut inbox = Inbox::new(read, &[]);
    write_plain(&mut write, true, &[Frame::Hello(hello.clone())])
        .await
        .map_err(|_| failed())?;
    if !speaks_channel(&mut inbox).await {
        return Err(AskError::UseHttp);
    }
    let welcome = match inbox.next().await {
        Ok(Frame::Welcome(welcome)) => welcome,
        Ok(Frame::Refused { reason }) => return Err(refused(addr, &reason)),
        _ => return Err(failed()),
    };
    let secret = identity.secret();
    let transcript = handshake::transcript(&hello, &welcome);
    let proof = handshake::server_proof(&secret, &transcript);
    if welcome.from != addr || !handshake::proof_matches(&welcome.mac, &proof) {
        metrics::observe_channel_refusal("owner-proof");
        log::warn!(
            "peer channel to {addr}: the answer is not from that member with the cluster secret \
             (it says {:?}); not using it",
            welcome.from
        );
        return Err(failed());
    }
    let finish = Frame::Finish {
        mac: handshake::client_proof(&secret, &transcript),
    };
    write_plain(&mut write, false, &[finish])
        .await
        .map_err(|_| failed())?;
    let keys = handshake::session_keys(&secret, &transcript, tls);
    let record = inbox.next_record().await.map_err(|_| failed())?;
    if let Ok(Frame::Refused { reason }) = Frame::parse(record.clone().freeze()) {
        return Err(refused(addr, &reason));
    }
    inbox.protect(Opener::new(keys.to_asker));
    if !matches!(inbox.open(record), Ok(Frame::Accepted)) {
        return Err(failed());
    }
    // Writes to a peer wait as long as its answers may.
    let (outbox, writer) = spawn_writer(write, Sealer::new(keys.to_owner), WRITE_TIMEOUT);
    let conn = Arc::new(Conn {
        outbox,
        streams: Mutex::new(HashMap::new()),
        next_stream: AtomicU32::new(1),
        closed: AtomicBool::new(false),
        last_used: Mutex::new(Instant::now()),
        secret: secret.clone(),
    });
    tokio::spawn(read_answers(inbox, writer, conn.clone(), addr.to_owned()));
    metrics::PEER_CHANNELS.with_label_values(&["asker"]).inc();
    Ok(conn)
}

/// How long a write to a peer may make no progress before the connection
/// is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the first bytes back are the channel's, not an HTTP answer or a
/// close (a node without the channel).
async fn speaks_channel(inbox: &mut Inbox) -> bool {
    match inbox.first_bytes(5).await {
        Some(first) => first != b"HTTP/",
        None => false,
    }
}

fn refused(addr: &str, reason: &str) -> AskError {
    if reason == NO_COMMON_VERSION {
        return AskError::UseHttp;
    }
    metrics::observe_channel_refusal("refused-by-owner");
    log::warn!("peer channel to {addr}: refused: {reason}");
    AskError::Failed(FetchError::Unreachable)
}

/// One open connection to a peer.
struct Conn {
    outbox: Outbox,
    /// Streams waiting for their answers.
    streams: Mutex<HashMap<u32, mpsc::Sender<Event>>>,
    next_stream: AtomicU32,
    closed: AtomicBool,
    /// When a stream last started on it.
    last_used: Mutex<Instant>,
    /// The cluster secret its handshake proved.
    secret: Arc<hmac::Key>,
}

/// A connection unused for this long is not used again but closed and
/// replaced: well within the owner's idle limit ([`super::server::IDLE`]),
/// so no request is ever sent on a connection the owner is closing.
pub const IDLE_REUSE: Duration = Duration::from_secs(60);

/// What arrives for a stream.
enum Event {
    Head(Head),
    Data(Bytes, bool),
    Reset,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.outbox.is_closed()
    }

    /// Whether it is open, was used recently enough, and was opened under
    /// the cluster secret as it is now (`current`).
    fn reusable(&self, current: &Arc<hmac::Key>) -> bool {
        !self.is_closed()
            && self.last_used.lock().elapsed() < IDLE_REUSE
            && Arc::ptr_eq(&self.secret, current)
    }

    /// A new stream and its events; None when too many are in flight.
    fn start(&self) -> Option<(u32, mpsc::Receiver<Event>)> {
        let mut streams = self.streams.lock();
        if streams.len() >= MAX_STREAMS {
            return None;
        }
        *self.last_used.lock() = Instant::now();
        let (tx, rx) = mpsc::channel(STREAM_EVENTS);
        loop {
            let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
            if let std::collections::hash_map::Entry::Vacant(slot) = streams.entry(stream) {
                slot.insert(tx);
                return Some((stream, rx));
            }
        }
    }

    /// No new stream starts on it. The streams under way finish; the
    /// owner closes the connection at its idle limit.
    fn retire(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The asker gave up `stream`: forget it, and tell the owner.
    fn cancel(&self, stream: u32) {
        if self.streams.lock().remove(&stream).is_some() {
            let _ = self.outbox.try_send(Frame::Cancel { stream });
        }
    }
}

/// Route each answer's frames to its stream until the connection ends;
/// then every stream still waiting sees it closed.
async fn read_answers(
    mut inbox: Inbox,
    mut writer: tokio::task::JoinHandle<()>,
    conn: Arc<Conn>,
    addr: String,
) {
    loop {
        let next = tokio::select! {
            next = inbox.next() => next,
            // The writer gave up: the owner stopped reading.
            _ = &mut writer => break,
        };
        let (stream, event, last) = match next {
            Ok(Frame::Head(head)) => (head.stream, Event::Head(head.clone()), head.end),
            Ok(Frame::Data { stream, end, data }) => (stream, Event::Data(data, end), end),
            Ok(Frame::Reset { stream }) => (stream, Event::Reset, true),
            Ok(other) => {
                log::warn!("peer channel to {addr}: unexpected {other:?}; closing");
                break;
            }
            Err(ReadError::Closed) => break,
            Err(ReadError::Record(why)) => {
                metrics::observe_channel_refusal("frame");
                log::warn!("peer channel to {addr}: {why}; closing");
                break;
            }
        };
        let tx = {
            let mut streams = conn.streams.lock();
            match last {
                true => streams.remove(&stream),
                false => streams.get(&stream).cloned(),
            }
        };
        // A stream nobody waits for any more (cancelled) is skipped; one
        // that takes nothing for a whole read timeout is given up.
        if let Some(tx) = tx {
            let sent = tokio::time::timeout(WRITE_TIMEOUT, tx.send(event)).await;
            if !matches!(sent, Ok(Ok(()))) {
                conn.cancel(stream);
            }
        }
    }
    conn.closed.store(true, Ordering::Relaxed);
    conn.streams.lock().clear();
    writer.abort();
    metrics::PEER_CHANNELS.with_label_values(&["asker"]).dec();
}

async fn next_event(
    events: &mut mpsc::Receiver<Event>,
    read_timeout: Duration,
) -> Result<Event, AskError> {
    match tokio::time::timeout(read_timeout, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(AskError::Failed(FetchError::Unreachable)),
        Err(_) => Err(AskError::Failed(FetchError::Timeout)),
    }
}

fn request_frame(stream: u32, ask: &Ask<'_>) -> Request {
    let request = ask.request;
    Request {
        stream,
        lookup: ask.lookup,
        generation: ask.generation,
        origin: ask.origin.to_owned(),
        method: request.method.as_str().to_owned(),
        path: request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: fields_of(&request.headers),
        body: ask.body.clone(),
    }
}

fn response_header(head: Head) -> Result<ResponseHeader, AskError> {
    let garbled = |_| AskError::Failed(FetchError::Unreachable);
    let mut header =
        ResponseHeader::build(head.status, Some(head.headers.len())).map_err(garbled)?;
    for (name, value) in head.headers {
        header.append_header(name, value).map_err(garbled)?;
    }
    Ok(header)
}

/// Hand an interim head on without waiting (as the HTTP path does).
fn pass_on_interim(mut head: ResponseHeader, interim: Option<&InterimSink>) {
    if let Some(interim) = interim {
        for name in crate::rfc::headers::hop_by_hop_names(&head.headers) {
            head.remove_header(&name);
        }
        let _ = interim.try_send(head);
    }
}

/// The body of an answer over the channel, read as its frames arrive.
/// Dropped before its end, it cancels the stream.
pub struct ChannelBody {
    events: Option<mpsc::Receiver<Event>>,
    conn: Arc<Conn>,
    stream: u32,
    done: bool,
    read_timeout: Duration,
}

impl ChannelBody {
    /// The next piece, or None at the end.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(events) = &mut self.events else {
                return Ok(None);
            };
            let event = next_event(events, self.read_timeout).await;
            match event {
                Ok(Event::Data(data, end)) => {
                    self.done = end;
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
                Ok(_) => return Err(FetchError::Unreachable),
                Err(AskError::Failed(e)) => return Err(e),
                Err(_) => return Err(FetchError::Unreachable),
            }
        }
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if !self.done {
            self.conn.cancel(self.stream);
        }
    }
}
