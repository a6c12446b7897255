//! Readiness that means this process serves its listeners.
//!
//! A TCP connection that opens proves only that *some* process listens on
//! the port: with the app port held by another process (the app itself, a
//! stale ringside) `/readyz` would say ready while the app's calls go
//! elsewhere. So `/readyz` asks each listener over HTTP, with a request
//! only this process can answer:
//!
//! * at start the process draws two random tokens, `asked` and `answer`;
//! * the admin listener sends `GET /` with `ringside-readiness: <asked>` to
//!   the app-facing (and peer) listener ([`serves`]);
//! * the proxy, first thing in its request phase, recognises `<asked>`
//!   ([`is_probe`]) and answers `204` with `ringside-readiness: <answer>`
//!   itself ([`answer`]): nothing reaches the origin or the metrics;
//! * ready only when every listener gives that answer. Another process sees
//!   at most `<asked>` (and may echo it), never `<answer>`.
//!
//! A listener at its `max_connections` answers 503 before the proxy sees the
//! request: such a node is not ready until a connection frees up.
//!
//! A peer listener with `cluster.tls` speaks TLS only: it is asked over TLS
//! with this node's own certificate, and must show it (`peer_tls.rs`).

use crate::net::peer_tls::PeerTls;
use once_cell::sync::Lazy;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The header of the probe and of its answer.
pub const HEADER: &str = "ringside-readiness";

/// How long one listener may take to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Tokens {
    asked: String,
    answer: String,
}

static TOKENS: Lazy<Tokens> = Lazy::new(|| Tokens {
    asked: random_token(),
    answer: random_token(),
});

/// 128 random bits in hex; should the system's generator fail, the time and
/// the process id (unique on the host, and never sent off it).
fn random_token() -> String {
    let random = ring::rand::generate::<[u8; 16]>(&ring::rand::SystemRandom::new());
    let value = random
        .map(|bytes| u128::from_be_bytes(bytes.expose()))
        .unwrap_or_else(|_| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() ^ (u128::from(std::process::id()) << 96)
        });
    format!("{value:032x}")
}

fn matches(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| bool::from(v.ct_eq(token.as_bytes())))
}

/// [`HEADER`] as a name, parsed once: every request is asked for it.
static HEADER_NAME: Lazy<http::HeaderName> = Lazy::new(|| http::HeaderName::from_static(HEADER));

/// Is this request this process's own readiness probe?
pub fn is_probe(req: &RequestHeader) -> bool {
    matches(
        req.headers.get(&*HEADER_NAME).map(|v| v.as_bytes()),
        &TOKENS.asked,
    )
}

/// Answer the probe: 204 with this process's answer token. Returns
/// `Ok(true)`, as the proxy's request phase does for a finished response.
pub async fn answer(session: &mut Session) -> pingora::Result<bool> {
    let mut head = ResponseHeader::build(204, Some(2))?;
    head.insert_header(HEADER, TOKENS.answer.as_str())?;
    head.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(head), true).await?;
    Ok(true)
}

/// A listener `/readyz` asks.
pub struct Listener {
    pub addr: SocketAddr,
    /// The peer listener with `cluster.tls`.
    pub tls: Option<Arc<PeerTls>>,
}

impl Listener {
    /// A listener that speaks cleartext HTTP.
    pub fn plain(addr: SocketAddr) -> Listener {
        Listener { addr, tls: None }
    }
}

/// Does this process serve HTTP on `listener` right now?
pub async fn serves(listener: &Listener) -> bool {
    let probe = ask(listener.addr, listener.tls.as_deref());
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Some((status, answer))) => {
            status == 204 && matches(answer.as_deref().map(str::as_bytes), &TOKENS.answer)
        }
        _ => false,
    }
}

/// The client of the probes (one: building one reads the system's roots).
static PROBES: Lazy<Connector> = Lazy::new(|| Connector::new(None));

/// The probe's status and answer header: over cleartext HTTP, or over TLS
/// as a peer asks (with this node's own certificate).
async fn ask(addr: SocketAddr, tls: Option<&PeerTls>) -> Option<(u16, Option<String>)> {
    let mut peer = HttpPeer::new(addr, tls.is_some(), String::new());
    if let Some(tls) = tls {
        tls.configure_own(&mut peer);
    }
    let mut request = RequestHeader::build("GET", b"/", None).ok()?;
    request.insert_header(HEADER, TOKENS.asked.as_str()).ok()?;
    request
        .insert_header(http::header::HOST, addr.to_string())
        .ok()?;
    request
        .insert_header(http::header::CONNECTION, "close")
        .ok()?;
    let (mut session, _) = PROBES.get_http_session(&peer).await.ok()?;
    session.write_request_header(Box::new(request)).await.ok()?;
    session.finish_request_body().await.ok()?;
    session.read_response_header().await.ok()?;
    let head = session.response_header()?;
    let answer = head.headers.get(HEADER).and_then(|v| v.to_str().ok());
    Some((head.status.as_u16(), answer.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that is not ringside and answers every request 204, echoing
    /// its request headers back as response headers (the worst case).
    async fn echoing_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head);
                let echoed: String = text
                    .lines()
                    .skip(1)
                    .filter(|l| l.contains(':'))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let reply = format!("HTTP/1.1 204 No Content\r\n{echoed}\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn another_server_on_the_port_is_not_this_process() {
        let addr = echoing_server().await;
        assert!(!serves(&Listener::plain(addr)).await);
        // Nothing listening at all.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!serves(&Listener::plain(closed)).await);
    }

    #[test]
    fn the_tokens_are_random_and_distinct() {
        assert_eq!(TOKENS.asked.len(), 32);
        assert_ne!(TOKENS.asked, TOKENS.answer);
        assert_ne!(random_token(), random_token());
        let mut probe = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!is_probe(&probe));
        probe.insert_header(HEADER, TOKENS.answer.as_str()).unwrap();
        assert!(!is_probe(&probe), "the answer token is not the question");
        probe.insert_header(HEADER, TOKENS.asked.as_str()).unwrap();
        assert!(is_probe(&probe));
    }
}
