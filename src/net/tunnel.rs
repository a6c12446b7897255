//! CONNECT tunnels, for apps that send every call through `HTTPS_PROXY`.
//!
//! An app with `HTTPS_PROXY=http://127.0.0.1:<listen>` opens a tunnel with
//! `CONNECT host:443` before its TLS handshake, for every HTTPS host it
//! calls, cached or not. Refusing those (405) breaks the app's other calls,
//! so ringside tunnels to the hosts on `forward_proxy.connect_allow`: bytes
//! are relayed both ways, untouched and uncached (they are TLS: ringside
//! cannot read them, and must not). Hosts not on the list get 403, so the
//! sidecar never becomes an open relay. Tunnels are counted
//! (`ringside_tunnels_total{result}`, `ringside_tunnel_bytes_total{direction}`).
//!
//! A tunnel is a connection-level matter: pingora's HTTP session has no way
//! to hand over its socket after a CONNECT, so `connections.rs` reads the
//! head of a connection that starts with `CONNECT ` (under the head
//! deadline), and this module answers it and relays. A tunnel holds its
//! connection slot (`max_connections`) until either side closes it or no
//! byte moves either way for `forward_proxy.tunnel_idle_timeout`.

use crate::metrics;
use crate::rfc::normalize::authority_form;
use std::collections::HashSet;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The method token a tunnel request starts with.
pub const CONNECT_PREFIX: &[u8] = b"CONNECT ";

/// Longest CONNECT head read (request line and fields).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Bytes relayed per read, each way.
const RELAY_BUFFER: usize = 16 * 1024;

/// Where tunnels may go, and how long they may take.
#[derive(Debug)]
pub struct Tunnels {
    /// `host:port`, host lowercase.
    allow: HashSet<(String, u16)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// Why a CONNECT gets no tunnel: the status line and the metric result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    NotAllowed,
    Unreachable,
    TimedOut,
}

impl Refusal {
    fn answer(self) -> &'static [u8] {
        match self {
            Refusal::BadRequest => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Refusal::NotAllowed => {
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Refusal::Unreachable => {
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Refusal::TimedOut => {
                b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        }
    }

    fn result(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad-request",
            Refusal::NotAllowed => "not-allowed",
            Refusal::Unreachable => "unreachable",
            Refusal::TimedOut => "timeout",
        }
    }
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

impl Tunnels {
    /// From `forward_proxy.connect_allow` (validated `host:port` entries).
    pub fn new(allow: &[String], connect_timeout: Duration, idle_timeout: Duration) -> Tunnels {
        let allow = allow.iter().filter_map(|a| authority_form(a)).collect();
        Tunnels {
            allow,
            connect_timeout,
            idle_timeout,
        }
    }

    /// Answer the CONNECT whose head is `head` on `client` and, if allowed,
    /// relay until the tunnel ends. Bytes the client sent after the head are
    /// still to be read from `client`.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut client: S, head: &[u8]) {
        let upstream = match self.open(head).await {
            Ok(upstream) => upstream,
            Err(why) => {
                metrics::observe_tunnel(why.result());
                let _ = write_out(&mut client, why.answer()).await;
                let _ = client.shutdown().await;
                return;
            }
        };
        metrics::observe_tunnel("opened");
        metrics::TUNNELS_OPEN.inc();
        if write_out(&mut client, ESTABLISHED).await.is_ok() {
            self.relay(client, upstream).await;
        }
        metrics::TUNNELS_OPEN.dec();
    }

    /// The upstream connection a CONNECT head asks for.
    async fn open(&self, head: &[u8]) -> Result<TcpStream, Refusal> {
        let (host, port) = requested_authority(head).ok_or(Refusal::BadRequest)?;
        if !self.allow.contains(&(host.clone(), port)) {
            log::info!("CONNECT {host}:{port} refused: not on forward_proxy.connect_allow");
            return Err(Refusal::NotAllowed);
        }
        let connect = TcpStream::connect((host.as_str(), port));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => {
                log::warn!("CONNECT {host}:{port}: {e}");
                Err(Refusal::Unreachable)
            }
            Err(_) => Err(Refusal::TimedOut),
        }
    }

    /// Copy bytes both ways until both directions end (a side closing its
    /// write half ends one direction) or nothing moves for the idle timeout.
    async fn relay<S: AsyncRead + AsyncWrite + Unpin>(&self, client: S, upstream: TcpStream) {
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut upstream_read, mut upstream_write) = upstream.into_split();
        let idle = self.idle_timeout;
        let activity = tokio::sync::watch::channel(()).0;
        let up = pump(&mut client_read, &mut upstream_write, "up", &activity);
        let down = pump(&mut upstream_read, &mut client_write, "down", &activity);
        let both = async { tokio::join!(up, down) };
        let mut quiet = activity.subscribe();
        let watchdog = async {
            loop {
                match tokio::time::timeout(idle, quiet.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return,
                }
            }
        };
        tokio::select! {
            _ = both => {}
            _ = watchdog => log::debug!("tunnel idle for {idle:?}: closed"),
        }
    }
}

/// Copy one direction; on its end, close the writer's side (half-close).
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    direction: &'static str,
    activity: &tokio::sync::watch::Sender<()>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        write_out(to, &buffer[..n]).await?;
        activity.send_replace(());
        metrics::observe_tunnel_bytes(direction, n);
    }
}

/// Write and flush: the client's side is buffered (pingora's stream), and
/// a relay must not hold bytes back.
async fn write_out<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8]) -> io::Result<()> {
    to.write_all(bytes).await?;
    to.flush().await
}

/// The `host:port` of a CONNECT head (RFC 9110 §9.3.6: authority-form),
/// host lowercase; None unless it is a well-formed CONNECT.
fn requested_authority(head: &[u8]) -> Option<(String, u16)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    if request.method != Some("CONNECT") {
        return None;
    }
    authority_form(request.path?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_form_only() {
        let head = |s: &str| requested_authority(s.as_bytes());
        assert_eq!(
            head("CONNECT API.example:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("api.example".into(), 443))
        );
        assert_eq!(
            head("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n"),
            Some(("::1".into(), 8443))
        );
        assert_eq!(head("CONNECT api.example HTTP/1.1\r\n\r\n"), None);
        assert_eq!(head("CONNECT user@api.example:443 HTTP/1.1\r\n\r\n"), None);
        assert_eq!(head("CONNECT /path HTTP/1.1\r\n\r\n"), None);
        assert_eq!(head("GET api.example:443 HTTP/1.1\r\n\r\n"), None);
        assert_eq!(head("CONNECT api.example:443 HTTP/1.1\r\n"), None);
    }
}
