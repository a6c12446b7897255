//! Origins: where a request goes, and the client that fetches cache fills.
//!
//! An [`OriginTarget`] is one upstream (scheme, host, port) with its resolved
//! address and connection options; the reverse-proxy origin and each
//! forward-proxy allowlist entry are one each. Both the pass-through path
//! (pingora's proxy, via [`OriginTarget::peer`]) and cache fills
//! ([`OriginClient::fetch`]) connect through pingora connectors. Idle
//! keep-alive connections are pooled per target: by pingora for the
//! pass-through path and HTTP/2, by [`IdlePool`] for fills over HTTP/1.
//!
//! Fills use their own client rather than pingora's proxy phase because a
//! fill must outlive the client that triggered it: it runs in a spawned task
//! so that the waiters it serves still get the object when that client
//! disconnects (see `fill.rs`).

use crate::config::{Config, OriginUrl};
use crate::net::channel::client::{Ask, AskError, ChannelBody, Channels, Identity};
use crate::net::dns::Resolver;
pub use crate::net::fetch::{FetchError, InterimSink};
use crate::net::idle_pool::IdlePool;
use crate::net::inject::Injected;
use crate::net::peer_tls::PeerTls;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// One upstream origin.
pub struct OriginTarget {
    pub url: OriginUrl,
    /// `scheme://host:port`: the first part of every cache key for this origin.
    pub key_prefix: String,
    /// The Host header sent to the origin.
    pub host_header: HeaderValue,
    connect_timeout: Duration,
    read_timeout: Duration,
    idle_timeout: Duration,
    verify_tls: bool,
    /// Its host's addresses, kept for their TTL.
    dns: Resolver,
    /// Headers added to every request sent here (never to a peer).
    injected: Injected,
    /// Prepended to every request's path sent here (`origin.url`'s path).
    base_path: String,
}

impl OriginTarget {
    pub fn new(url: OriginUrl, config: &Config) -> OriginTarget {
        let host_header = HeaderValue::from_str(&url.host_header())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        OriginTarget {
            key_prefix: url.key_prefix(),
            host_header,
            connect_timeout: config.origin.connect_timeout,
            read_timeout: config.origin.read_timeout,
            idle_timeout: config.origin.idle_timeout,
            verify_tls: config.origin.verify_tls,
            dns: Resolver::default(),
            injected: Injected::default(),
            base_path: String::new(),
            url,
        }
    }

    /// The same target, adding `injected` to every request it is sent.
    pub fn with_injected(mut self, injected: Injected) -> OriginTarget {
        self.injected = injected;
        self
    }

    /// The same target, reached under `base` (`/v1`: app paths appended to it).
    pub fn with_base_path(mut self, base: String) -> OriginTarget {
        self.base_path = base;
        self
    }

    /// The path under which this origin is reached ("" for its root).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// A request as this origin gets it: its path under the base path, and
    /// the injected headers.
    pub fn prepare_upstream(&self, request: &mut RequestHeader) {
        if !self.base_path.is_empty() {
            let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
            if let Ok(uri) = format!("{}{path}", self.base_path).parse::<http::Uri>() {
                request.set_uri(uri);
            }
        }
        self.injected.apply(request);
    }

    /// The connection options and current address of this origin.
    pub async fn peer(&self) -> pingora::Result<HttpPeer> {
        let addr = self.resolve().await?;
        let mut peer = HttpPeer::new(addr, self.url.tls, self.url.host.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        options.total_connection_timeout = Some(self.connect_timeout);
        options.read_timeout = Some(self.read_timeout);
        options.write_timeout = Some(self.read_timeout);
        options.idle_timeout = Some(self.idle_timeout);
        options.verify_cert = self.verify_tls;
        options.verify_hostname = self.verify_tls;
        Ok(peer)
    }

    async fn resolve(&self) -> pingora::Result<SocketAddr> {
        let (host, port) = (&self.url.host, self.url.port);
        match self.dns.socket_addr(host, port, self.connect_timeout).await {
            Some(addr) => Ok(addr),
            None => Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("cannot resolve origin host {}", self.url.host),
            ),
        }
    }
}

/// The client for cache fills: a pooled connector shared by every fill,
/// and with `cluster.tls` the TLS every request to a peer goes over.
pub struct OriginClient {
    connector: Connector,
    idle: IdlePool,
    peer_tls: Option<Arc<PeerTls>>,
    /// Connections of the peer channel, by peer (`channel/`).
    channels: Channels,
    /// The address peer connections are made from: this node's member
    /// address, which a receiver without peer TLS checks the sender's
    /// connection against (`proxy/peer.rs`, `proxy/channel.rs`). None:
    /// the kernel's choice.
    peer_source: Option<std::net::IpAddr>,
    /// For peers named by host rather than address.
    dns: Resolver,
}

/// An origin response whose headers have arrived; the body is read on demand.
pub struct OriginResponse {
    body: Body,
    pub header: ResponseHeader,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

impl OriginClient {
    /// A client whose peer requests go over `peer_tls` when given (never
    /// cleartext then), signed cleartext HTTP otherwise.
    pub fn new(peer_tls: Option<Arc<PeerTls>>) -> OriginClient {
        OriginClient {
            connector: Connector::new(None),
            idle: IdlePool::default(),
            peer_tls,
            channels: Channels::default(),
            peer_source: None,
            dns: Resolver::default(),
        }
    }

    /// The same client, making its peer connections from `ip` (this
    /// node's member address; an unspecified one leaves the choice to the
    /// kernel).
    pub fn with_peer_source(mut self, ip: Option<std::net::IpAddr>) -> OriginClient {
        self.peer_source = ip.filter(|ip| !ip.is_unspecified());
        self
    }

    /// Send `request` (origin-form path, headers already cleaned) and wait for
    /// the response headers; interim responses before them go to `interim`.
    pub async fn fetch(
        &self,
        target: &OriginTarget,
        request: &RequestHeader,
        body: Option<Bytes>,
        interim: Option<&InterimSink>,
    ) -> Result<OriginResponse, FetchError> {
        let started = Instant::now();
        let mut request = request.clone();
        target.prepare_upstream(&mut request);
        let request = &request;
        let result = self.fetch_inner(target, request, body, interim).await;
        let status = result.as_ref().ok().map(|r| r.header.status.as_u16());
        crate::metrics::observe_origin(status, started.elapsed().as_secs_f64());
        result.map_err(|e| {
            log::warn!(
                "origin {} fetch {} failed: {e}",
                target.key_prefix,
                request.uri
            );
            FetchError::from_pingora(&e)
        })
    }

    /// Send `request` to another ringside's peer listener at `addr` (`host:port`).
    /// Connecting is bounded by `connect_timeout`; waiting for the answer by
    /// `read_timeout`, which must leave the owner time for its own origin fetch.
    /// Interim responses before the answer go to `interim`. A `body` is
    /// that of a POST or QUERY cached by its body.
    pub async fn fetch_peer(
        &self,
        addr: &str,
        (request, body): (&RequestHeader, Option<Bytes>),
        timeouts: (Duration, Duration),
        h2c: bool,
        interim: Option<&InterimSink>,
    ) -> Result<OriginResponse, FetchError> {
        let sent = Sent {
            request,
            body,
            interim,
        };
        self.send_to_peer(addr, sent, timeouts, h2c).await
    }

    /// [`Self::fetch_peer`], with a request body (a handoff's entries).
    pub async fn send_peer(
        &self,
        addr: &str,
        request: &RequestHeader,
        body: Option<Bytes>,
        connect_timeout: Duration,
        read_timeout: Duration,
        h2c: bool,
    ) -> Result<OriginResponse, FetchError> {
        let sent = Sent {
            request,
            body,
            interim: None,
        };
        self.send_to_peer(addr, sent, (connect_timeout, read_timeout), h2c)
            .await
    }

    /// The peer listener at `addr` as a connection target: resolved within
    /// `connect_timeout`, over TLS with `cluster.tls`.
    async fn peer_target(
        &self,
        addr: &str,
        (connect_timeout, read_timeout): (Duration, Duration),
    ) -> Result<HttpPeer, FetchError> {
        let timeout = connect_timeout;
        let Some(socket) = self.dns.host_port(addr, timeout).await else {
            return Err(FetchError::Unreachable);
        };
        let mut peer = HttpPeer::new(socket, false, String::new());
        peer.options.connection_timeout = Some(timeout);
        peer.options.total_connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(tls) = &self.peer_tls {
            tls.configure(&mut peer, addr);
        }
        if let Some(ip) = self.peer_source {
            let mut bind = pingora::connectors::l4::BindTo::default();
            bind.addr = Some(std::net::SocketAddr::new(ip, 0));
            peer.options.bind_to = Some(bind);
        }
        Ok(peer)
    }

    /// Whether to ask `addr` over the peer channel: not known to lack it.
    pub fn channel_worth_trying(&self, addr: &str) -> bool {
        self.channels.worth_trying(addr)
    }

    /// Ask the peer at `addr` over the peer channel (`channel/`), as
    /// `identity`. `UseHttp`: it does not speak the channel, ask it over
    /// HTTP. Timeouts as for [`Self::fetch_peer`].
    pub async fn ask_channel(
        &self,
        addr: &str,
        identity: &dyn Identity,
        ask: Ask<'_>,
        timeouts: (Duration, Duration),
        interim: Option<&InterimSink>,
    ) -> Result<OriginResponse, AskError> {
        let peer = self
            .peer_target(addr, timeouts)
            .await
            .map_err(AskError::Failed)?;
        let request_time = SystemTime::now();
        let asked = self
            .channels
            .ask((addr, &peer), identity, ask, timeouts.1, interim)
            .await;
        let (header, body) = match asked {
            Ok(answer) => answer,
            Err(AskError::Connect(e)) => {
                if let Some(tls) = &self.peer_tls {
                    tls.note_failure(addr, &e);
                }
                return Err(AskError::Failed(FetchError::from_pingora(&e)));
            }
            Err(e) => return Err(e),
        };
        Ok(OriginResponse {
            body: Body::Channel(body),
            header,
            request_time,
            response_time: SystemTime::now(),
        })
    }

    async fn send_to_peer(
        &self,
        addr: &str,
        sent: Sent<'_>,
        timeouts: (Duration, Duration),
        h2c: bool,
    ) -> Result<OriginResponse, FetchError> {
        let request = sent.request;
        let read_timeout = timeouts.1;
        let mut peer = self.peer_target(addr, timeouts).await?;
        if h2c {
            peer.options.set_http_version(2, 2);
        }
        self.send(peer, sent, read_timeout, Duration::from_secs(60))
            .await
            .map_err(|e| {
                log::warn!("peer {addr} fetch {} failed: {e}", request.uri);
                if let Some(tls) = &self.peer_tls {
                    tls.note_failure(addr, &e);
                }
                FetchError::from_pingora(&e)
            })
    }

    async fn fetch_inner(
        &self,
        target: &OriginTarget,
        request: &RequestHeader,
        body: Option<Bytes>,
        interim: Option<&InterimSink>,
    ) -> pingora::Result<OriginResponse> {
        let peer = target.peer().await?;
        let sent = Sent {
            request,
            body,
            interim,
        };
        let timeouts = (target.read_timeout, target.idle_timeout);
        self.send(peer, sent, timeouts.0, timeouts.1).await
    }

    async fn send(
        &self,
        peer: HttpPeer,
        sent: Sent<'_>,
        read_timeout: Duration,
        idle_timeout: Duration,
    ) -> pingora::Result<OriginResponse> {
        let Sent {
            request,
            body,
            interim,
        } = sent;
        let request_time = SystemTime::now();
        let target = peer.reuse_hash();
        // A pooled connection may have been closed by the origin while idle;
        // for these idempotent fills one retry on a fresh connection is safe.
        // The other idle ones to this target are likely dead too (the peer
        // restarted, say): they are closed, not tried.
        for attempt in 0..2 {
            let (mut session, reused) = match attempt {
                0 => self.session(&peer, target).await?,
                _ => {
                    self.idle.clear(target);
                    self.connector.get_http_session(&peer).await?
                }
            };
            session.set_read_timeout(Some(read_timeout));
            session.set_write_timeout(Some(read_timeout));
            let sent = async {
                session
                    .write_request_header(Box::new(request.clone()))
                    .await?;
                if let Some(body) = &body {
                    session.write_request_body(body.clone(), false).await?;
                }
                // An HTTP/2 peer may answer a GET and close its stream before
                // our end-of-stream frame goes out ("inactive stream"): its
                // answer is what counts. Retrying instead would resend a
                // signed request it has served, which it refuses as a replay.
                let finished = session.finish_request_body().await;
                match read_final_header(&mut session, interim).await {
                    Ok(()) => Ok(()),
                    Err(e) => finished.and(Err(e)),
                }
            }
            .await;
            match sent {
                Ok(()) => {
                    let header = session
                        .response_header()
                        .cloned()
                        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no header"))?;
                    return Ok(OriginResponse {
                        body: Body::Http(Box::new(HttpBody {
                            session,
                            peer,
                            target,
                            idle_timeout,
                        })),
                        header,
                        request_time,
                        response_time: SystemTime::now(),
                    });
                }
                Err(e) if reused && attempt == 0 && !is_timeout(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Error::e_explain(ErrorType::ConnectError, "origin connection failed twice")
    }

    /// A session to `peer`: on an idle HTTP/1 connection of ours, or from
    /// pingora's connector (HTTP/2, or a new connection). True if reused.
    async fn session(&self, peer: &HttpPeer, target: u64) -> pingora::Result<(HttpSession, bool)> {
        match self.idle.take(target) {
            Some(stream) => {
                let session = Http1Session::new_with_options(stream, peer);
                Ok((HttpSession::H1(session), true))
            }
            None => self.connector.get_http_session(peer).await,
        }
    }
}

/// Where a response's body comes from (one per fetch).
enum Body {
    /// An HTTP session (an origin, or a peer over HTTP), pooled once read.
    /// Boxed: a session and its peer are over a kilobyte, and a response is
    /// moved through the fill several times (each move a copy), the peer
    /// channel's answers (the usual hop) included.
    Http(Box<HttpBody>),
    /// A stream of the peer channel.
    Channel(ChannelBody),
    /// A whole body in memory, until read: a test's fake upstream.
    #[cfg(test)]
    Memory(Option<Bytes>),
}

struct HttpBody {
    session: HttpSession,
    peer: HttpPeer,
    /// The peer's `reuse_hash`: which idle connections it may reuse.
    target: u64,
    idle_timeout: Duration,
}

/// What a fetch sends, and where the interim responses it gets go.
struct Sent<'a> {
    request: &'a RequestHeader,
    body: Option<Bytes>,
    interim: Option<&'a InterimSink>,
}

/// Interim responses an origin may send before the final one (RFC 9110
/// §15.2); past this many the origin is misbehaving.
pub const MAX_INTERIM_RESPONSES: usize = 8;

/// Read response heads until the final one: 100 Continue, 102 Processing
/// and 103 Early Hints go to `interim` (without their hop-by-hop fields) and
/// nothing interim is ever part of the response (or stored); 101 is
/// refused, fills never ask to upgrade.
async fn read_final_header(
    session: &mut HttpSession,
    interim: Option<&InterimSink>,
) -> pingora::Result<()> {
    for _ in 0..=MAX_INTERIM_RESPONSES {
        session.read_response_header().await?;
        let status = session.response_header().map(|h| h.status.as_u16());
        match status {
            Some(101) => return Error::e_explain(ErrorType::InvalidHTTPHeader, "unasked-for 101"),
            Some(100..=199) => pass_on_interim(session.response_header(), interim),
            _ => return Ok(()),
        }
    }
    Error::e_explain(ErrorType::InvalidHTTPHeader, "too many interim responses")
}

/// Hand an interim head to whoever wants it, without waiting.
fn pass_on_interim(head: Option<&ResponseHeader>, interim: Option<&InterimSink>) {
    if let (Some(head), Some(interim)) = (head, interim) {
        let mut head = head.clone();
        strip_response_hop_by_hop(&mut head);
        let _ = interim.try_send(head);
    }
}

fn is_timeout(e: &Error) -> bool {
    FetchError::from_pingora(e) == FetchError::Timeout
}

impl OriginResponse {
    /// The next body chunk, or None at the end.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        match &mut self.body {
            Body::Http(http) => http
                .session
                .read_response_body()
                .await
                .map_err(|e| FetchError::from_pingora(&e)),
            Body::Channel(body) => body.read_chunk().await,
            #[cfg(test)]
            Body::Memory(body) => Ok(body.take()),
        }
    }

    /// A response whose `body` is all in memory, as a test's fake
    /// upstream answers (its Content-Length set).
    #[cfg(test)]
    pub fn from_memory(mut header: ResponseHeader, body: Bytes) -> OriginResponse {
        let _ = header.insert_header(header::CONTENT_LENGTH, body.len());
        let now = SystemTime::now();
        OriginResponse {
            body: Body::Memory(Some(body)),
            header,
            request_time: now,
            response_time: now,
        }
    }

    /// The body length the origin announced, if it did.
    pub fn content_length(&self) -> Option<u64> {
        self.header
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// Return the connection to the pool once the body has been read whole;
    /// otherwise close it (a half-read connection cannot be reused).
    /// A channel stream has nothing to return: dropped before its end, it
    /// is cancelled.
    pub async fn finish(self, client: &OriginClient) {
        let Body::Http(http) = self.body else {
            return;
        };
        let HttpBody {
            mut session,
            peer,
            target,
            idle_timeout,
        } = *http;
        if !session.response_done() {
            return session.shutdown().await;
        }
        match session {
            HttpSession::H1(mut session) => {
                session.respect_keepalive();
                if let Some(stream) = session.reuse().await {
                    client.idle.put(target, stream, idle_timeout);
                }
            }
            session => {
                client
                    .connector
                    .release_http_session(session, &peer, Some(idle_timeout))
                    .await
            }
        }
    }
}

/// Remove hop-by-hop headers from a response header.
pub fn strip_response_hop_by_hop(header: &mut ResponseHeader) {
    for name in crate::rfc::headers::hop_by_hop_names(&header.headers) {
        header.remove_header(&name);
    }
}
