//! The one place where tests speak HTTP/1.1 by hand: bytes that no
//! well-behaved client or server sends. [`raw_exchange`] sends a malformed
//! (or captured, or deliberately odd) request and returns what came back;
//! [`RawServer`] is a listener for the origins and peers that misbehave in
//! ways hyper will not (interim 1xx answers, broken framing, garbage,
//! hanging up unanswered). Everything well-formed goes through the demo's
//! hyper client and the hyper test origin instead.

use parking_lot::Mutex;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a raw exchange waits for the server to answer or close.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub text: String,
    /// The server closed (or reset) the connection, rather than leaving it
    /// open until our timeout.
    pub closed: bool,
}

impl RawReply {
    /// The status of the first response, if any came.
    pub fn status(&self) -> Option<u16> {
        let line = self.text.lines().next()?;
        let mut parts = line.split(' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// How many responses (status lines) came back.
    pub fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count() + self.text.matches("HTTP/1.0 ").count()
    }
}

/// Send `bytes` on a new connection and read until the server closes it
/// or 3 s pass. The server may refuse before reading everything.
pub async fn raw_exchange(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> RawReply {
    exchange(addr, bytes.as_ref(), false).await
}

/// As [`raw_exchange`], but stop once one whole response with a
/// `Content-Length` has come (the connection may stay open).
pub async fn raw_first_response(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> RawReply {
    exchange(addr, bytes.as_ref(), true).await
}

/// As [`raw_first_response`], from the local address `source` (another
/// loopback address, say: 127.0.0.2), for a peer that claims to be
/// somewhere it is not.
pub async fn raw_first_response_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    bytes: impl AsRef<[u8]>,
) -> RawReply {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("a socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    let stream = socket.connect(addr).await.expect("connect");
    exchange_on(stream, bytes.as_ref(), true).await
}

/// A new connection with `bytes` sent on it, for tests that go on by hand
/// (send more, slowly; or just go away).
pub async fn raw_open(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes.as_ref()).await.expect("send");
    stream
}

async fn exchange(addr: SocketAddr, bytes: &[u8], first_only: bool) -> RawReply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    exchange_on(stream, bytes, first_only).await
}

async fn exchange_on(mut stream: TcpStream, bytes: &[u8], first_only: bool) -> RawReply {
    // The server may refuse before reading everything; that is fine.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf)).await {
            Err(_elapsed) => break false,
            Ok(Ok(0) | Err(_)) => break true, // closed or reset
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        if first_only && complete_response(&out) {
            break false;
        }
    };
    RawReply {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// A response head followed by its whole Content-Length body.
fn complete_response(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|n| bytes.len() >= end + 4 + n)
}

/// A listener that reads the head of the first request on each connection
/// and hands what it read, with the connection, to its `answer` function.
/// It records every head, for tests that look at what ringside sent.
pub struct RawServer {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    /// Listen on `bind` (e.g. `127.0.0.1:0`). `answer` gets the bytes read
    /// so far (the head, maybe more) and the connection; dropping the
    /// connection closes it.
    pub async fn start<F, Fut>(bind: &str, answer: F) -> RawServer
    where
        F: Fn(Vec<u8>, TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await.expect("bind raw server");
        let addr = listener.local_addr().expect("raw server address");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (recorded, answer) = (recorded.clone(), answer.clone());
                tokio::spawn(async move {
                    let received = read_head(&mut stream).await;
                    recorded.lock().push(received.clone());
                    answer(received, stream).await;
                });
            }
        });
        RawServer { addr, heads, task }
    }

    /// Every request head received so far, in order.
    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.heads.lock().clone()
    }

    /// How many requests had `path` as their target.
    pub fn hits(&self, path: &str) -> u64 {
        let heads = self.heads.lock();
        heads.iter().filter(|h| target(h) == path).count() as u64
    }

    /// Stop listening: the address is free for a real server.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request target of a raw head (`GET /x HTTP/1.1` → `/x`).
pub fn target(head: &[u8]) -> String {
    let head = String::from_utf8_lossy(head);
    head.split(' ').nth(1).unwrap_or("").to_owned()
}

/// Read until the end of a request head, or the connection's end.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}
