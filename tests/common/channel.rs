//! The peer channel spoken by a test, as a member (or an impostor) would:
//! the handshake with a secret of the test's choosing, protected frames
//! sealed and opened with the library's own record layer, and the raw
//! bytes of every record, so a test can replay, reorder, alter or cut them.
//! The node under test is a real process; only this end is the test's.

use bytes::{Bytes, BytesMut};
use ring::hmac;
use ringside::channel::handshake::{self, PREFACE, VERSIONS};
use ringside::channel::record::{codec, Opener, Protection, Sealer, MAX_RECORD};
use ringside::channel::wire::{Frame, Hello, Request};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// How long a read waits before the test calls the node silent.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster secret's key, as nodes derive it.
pub fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// Who a handshake claims to be, whom it means, and what it knows.
pub struct Claim<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub secret: &'a str,
}

/// How a handshake ended, seen from the asking side.
pub enum Opened {
    /// The channel is open.
    Open(Box<ChannelConn>),
    /// The node refused, with this reason.
    Refused(String),
    /// The node's Welcome does not prove the secret we hold.
    BadProof,
    /// The node answered with something else, or closed.
    Other(String),
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Open(_) => f.write_str("Open"),
            Opened::Refused(reason) => write!(f, "Refused({reason})"),
            Opened::BadProof => f.write_str("BadProof"),
            Opened::Other(what) => write!(f, "Other({what})"),
        }
    }
}

impl Opened {
    pub fn open(self) -> ChannelConn {
        match self {
            Opened::Open(conn) => *conn,
            other => panic!("channel not opened: {other:?}"),
        }
    }

    pub fn refusal(self) -> String {
        match self {
            Opened::Refused(reason) => reason,
            Opened::Open(_) => panic!("the channel opened"),
            other => panic!("not refused: {other:?}"),
        }
    }
}

/// A connection to a node's peer listener.
pub struct Raw {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buffer: BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next record; None: closed, or nothing within the read timeout.
    pub async fn record(&mut self) -> Option<BytesMut> {
        let mut codec = codec(MAX_RECORD);
        loop {
            if let Ok(Some(record)) = codec.decode(&mut self.buffer) {
                return Some(record);
            }
            let read = self.stream.read_buf(&mut self.buffer);
            match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Whether the node closes the connection (reads return end of file
    /// or a reset) within the read timeout, whatever it sends first.
    pub async fn closed(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            let read = self.stream.read(&mut sink);
            match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// The bytes of a handshake frame on the wire.
pub fn plain(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    ringside::channel::record::plain(frame, &mut out);
    out.to_vec()
}

/// A Hello for `claim`, with a fresh nonce.
pub fn hello(claim: &Claim<'_>) -> Hello {
    Hello {
        versions: VERSIONS,
        from: claim.from.to_owned(),
        to: claim.to.to_owned(),
        generation: 0,
        nonce: handshake::nonce().expect("a nonce"),
    }
}

/// Run the handshake as `claim` on a new connection to `addr`.
pub async fn open(addr: SocketAddr, claim: &Claim<'_>) -> Opened {
    let mut raw = Raw::connect(addr).await;
    let hello = hello(claim);
    let mut first = PREFACE.to_vec();
    first.extend(plain(&Frame::Hello(hello.clone())));
    let mut sent = first.clone();
    if raw.write(&first).await.is_err() {
        return Opened::Other("closed on the Hello".into());
    }
    let welcome = match raw.record().await.map(|r| Frame::parse(r.freeze())) {
        Some(Ok(Frame::Welcome(welcome))) => welcome,
        Some(Ok(Frame::Refused { reason })) => return Opened::Refused(reason),
        other => return Opened::Other(format!("{other:?}")),
    };
    let secret = key(claim.secret);
    let transcript = handshake::transcript(&hello, &welcome);
    let proof = handshake::server_proof(&secret, &transcript);
    let proved = handshake::proof_matches(&welcome.mac, &proof);
    let finish = plain(&Frame::Finish {
        mac: handshake::client_proof(&secret, &transcript),
    });
    sent.extend(&finish);
    if raw.write(&finish).await.is_err() {
        return Opened::Other("closed on the Finish".into());
    }
    let Some(record) = raw.record().await else {
        return Opened::Other("closed after the Finish".into());
    };
    if let Ok(Frame::Refused { reason }) = Frame::parse(record.clone().freeze()) {
        return Opened::Refused(reason);
    }
    if !proved {
        return Opened::BadProof;
    }
    let keys = handshake::session_keys(&secret, &transcript, false);
    let mut opener = Opener::new(keys.to_asker);
    match opener.open(record) {
        Ok(Frame::Accepted) => {}
        other => return Opened::Other(format!("{other:?} instead of Accepted")),
    }
    Opened::Open(Box::new(ChannelConn {
        raw,
        sealer: Sealer::new(keys.to_owner),
        opener,
        sent,
    }))
}

/// An open channel.
pub struct ChannelConn {
    pub raw: Raw,
    sealer: Sealer,
    opener: Opener,
    /// Every byte sent on the connection so far, preface first.
    pub sent: Vec<u8>,
}

/// An answer read off the channel.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub reset: bool,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A GET of `path` on `origin` as stream `stream`.
pub fn get(stream: u32, origin: &str, path: &str) -> Frame {
    Frame::Request(Request {
        stream,
        lookup: false,
        generation: 0,
        origin: origin.to_owned(),
        method: "GET".into(),
        path: path.into(),
        headers: Vec::new(),
        body: None,
    })
}

impl ChannelConn {
    /// `frame` sealed as the next record, not sent.
    pub fn seal(&mut self, frame: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.sealer.seal(frame, &mut out);
        out.to_vec()
    }

    /// Send bytes (sealed records, or anything else), recorded in `sent`.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sent.extend_from_slice(bytes);
        self.raw.write(bytes).await
    }

    pub async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        let record = self.seal(frame);
        self.send_bytes(&record).await
    }

    /// The next frame from the node; None: closed, silent, or a record
    /// that does not open.
    pub async fn frame(&mut self) -> Option<Frame> {
        let record = self.raw.record().await?;
        self.opener.open(record).ok()
    }

    /// Read frames until stream `stream`'s answer is whole.
    pub async fn answer(&mut self, stream: u32) -> Option<Answer> {
        let mut answer = Answer::default();
        loop {
            match self.frame().await? {
                Frame::Head(head) if head.stream == stream && head.status >= 200 => {
                    answer.status = head.status;
                    answer.headers = head
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    if head.end {
                        return Some(answer);
                    }
                }
                Frame::Data {
                    stream: s,
                    end,
                    data,
                } if s == stream => {
                    answer.body.extend_from_slice(&data);
                    if end {
                        return Some(answer);
                    }
                }
                Frame::Reset { stream: s } if s == stream => {
                    answer.reset = true;
                    return Some(answer);
                }
                _ => {}
            }
        }
    }

    /// GET `path` on `origin` as stream `stream` and read its answer.
    pub async fn get(&mut self, stream: u32, origin: &str, path: &str) -> Option<Answer> {
        self.send(&get(stream, origin, path)).await.ok()?;
        self.answer(stream).await
    }
}

/// Bytes the length of a record's body, for a record cut short.
pub fn cut(record: &[u8], keep: usize) -> Bytes {
    Bytes::copy_from_slice(&record[..keep.min(record.len())])
}

/// Protection for a key the node never derived (an impostor's records).
pub fn foreign_sealer() -> Sealer {
    Sealer::new(Protection::new(Some([0x5a; 16])))
}

/// A stand-in owner at `addr` that opens the channel as a real owner
/// would (proving `secret`), records every request it is sent, in plain
/// text, and resets each (so the asker falls back to its origin).
pub struct Recorder {
    pub seen: std::sync::Arc<parking_lot::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start(addr: &str, secret: &str) -> Recorder {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let (me, secret, log) = (addr.to_owned(), key(secret), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (me, secret, log) = (me.clone(), secret.clone(), log.clone());
                tokio::spawn(async move {
                    let raw = Raw {
                        stream,
                        buffer: BytesMut::new(),
                    };
                    record_session(raw, &me, &secret, &log).await;
                });
            }
        });
        Recorder { seen, task }
    }
}

async fn record_session(
    mut raw: Raw,
    me: &str,
    secret: &hmac::Key,
    log: &parking_lot::Mutex<String>,
) -> Option<()> {
    let mut preface = vec![0u8; PREFACE.len()];
    raw.stream.read_exact(&mut preface).await.ok()?;
    let Ok(Frame::Hello(hello)) = Frame::parse(raw.record().await?.freeze()) else {
        return None;
    };
    let mut welcome = ringside::channel::wire::Welcome {
        version: VERSIONS.1,
        from: me.to_owned(),
        generation: 0,
        nonce: handshake::nonce()?,
        mac: [0; 32],
    };
    let transcript = handshake::transcript(&hello, &welcome);
    welcome.mac = handshake::server_proof(secret, &transcript);
    raw.write(&plain(&Frame::Welcome(welcome))).await.ok()?;
    let Ok(Frame::Finish { .. }) = Frame::parse(raw.record().await?.freeze()) else {
        return None;
    };
    let keys = handshake::session_keys(secret, &transcript, false);
    let (mut sealer, mut opener) = (Sealer::new(keys.to_asker), Opener::new(keys.to_owner));
    let mut out = BytesMut::new();
    sealer.seal(&Frame::Accepted, &mut out);
    raw.write(&out).await.ok()?;
    loop {
        let frame = opener.open(raw.record().await?).ok()?;
        let Frame::Request(request) = frame else {
            continue;
        };
        log.lock().push_str(&format!("{request:?}\n"));
        let mut out = BytesMut::new();
        let reset = Frame::Reset {
            stream: request.stream,
        };
        sealer.seal(&reset, &mut out);
        raw.write(&out).await.ok()?;
    }
}
