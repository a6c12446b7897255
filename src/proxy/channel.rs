//! The owner's end of the peer channel (`net/channel/`): who may open one
//! ([`ChannelOwner::admit`], the checks `peer.rs` makes of an HTTP peer
//! request, once per connection), and how a request on it is served: the
//! lean owner path.
//!
//! A request on the channel skips pingora and the client-facing phases
//! (parsing, the screen, the signature, the nonce table): it arrives as a
//! method, path and fields, is normalised as any request is, and goes
//! straight to the cacheable path (`cacheable.rs`), which answers a hit
//! from the store and a miss through the key's singleflight, exactly as
//! for a peer request over HTTP, writing to a [`ChannelDownstream`]
//! instead of a pingora session. What pingora would proxy uncached there
//! (a bypass, a response not stored for a follower) is fetched from the
//! origin here and streamed back.
//!
//! Asking a peer's request's peer (the loop guard) stays impossible: the
//! channel is served in the peer role, which never asks an owner.

use super::downstream::Downstream;
use super::respond::{send_error, send_refusal};
use super::{body, bypass_reason, RequestCtx, Ringside};
use crate::cluster::Cluster;
use crate::config::OriginUrl;
use crate::metrics::{self, CacheResult};
use crate::net::channel::server::{self, Owner, Reply};
use crate::net::channel::wire::{Hello, Request};
use crate::net::connections::Diverted;
use crate::net::origin::OriginTarget;
use crate::rfc::cache_status::{CacheStatus, Detail, HEADER as CACHE_STATUS};
use crate::rfc::headers::strip_hop_by_hop;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::Stream;
use pingora::proxy::ProxyHttp;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The peer listener's channel: connections that open with the channel's
/// preface are served here instead of by pingora.
pub struct ChannelListener {
    owner: Arc<ChannelOwner>,
    /// Bounds the handshake and each write (a peer that stops reading).
    timeout: Duration,
}

impl ChannelListener {
    /// The channel of the peer listener `peers` serves (None outside a cluster).
    pub fn new(peers: Ringside, timeout: Duration) -> Option<ChannelListener> {
        let cluster = peers.node.cluster()?.clone();
        Some(ChannelListener {
            owner: Arc::new(ChannelOwner { rs: peers, cluster }),
            timeout,
        })
    }
}

#[async_trait]
impl Diverted for ChannelListener {
    fn preface(&self) -> &'static [u8] {
        crate::net::channel::handshake::PREFACE
    }

    async fn serve(&self, stream: Stream, buffered: BytesMut) {
        server::serve(self.owner.clone(), stream, &buffered, self.timeout).await
    }
}

/// This node as the owner on its channel connections.
pub struct ChannelOwner {
    /// The proxy in its peer role.
    rs: Ringside,
    cluster: Arc<Cluster>,
}

/// An admitted asker: the member it proved to be, and what was checked.
pub struct Asker {
    from: String,
    /// The ring generation its membership was last checked against.
    checked: AtomicU64,
    /// Its TLS connection's certificate, checked again as the CA changes.
    ssl: Option<Arc<SslDigest>>,
}

impl Owner for ChannelOwner {
    type Asker = Asker;

    fn me(&self) -> (String, u64) {
        (self.cluster.me.clone(), self.cluster.ring().generation())
    }

    fn secret(&self) -> Arc<::ring::hmac::Key> {
        self.cluster.auth.current_key()
    }

    fn tls(&self) -> bool {
        self.cluster.tls.is_some()
    }

    /// The checks `peer.rs` makes of each HTTP peer request, made once:
    /// addressed to this node, not from it, from a member, over its
    /// certificate (TLS) or from its address (cleartext, where checked).
    fn admit(&self, hello: &Hello, stream: &Stream) -> Result<Asker, &'static str> {
        let cluster = &self.cluster;
        if hello.to != cluster.me {
            return Err("not-for-me");
        }
        if hello.from == cluster.me {
            return Err("from-me");
        }
        if !cluster.is_member(&hello.from) {
            return Err("not-a-member");
        }
        let ssl = stream.get_ssl_digest();
        match cluster.tls {
            Some(_) => self.check_certificate(ssl.as_deref(), &hello.from)?,
            None => self.check_address(&hello.from, stream)?,
        }
        if hello.generation != cluster.ring().generation() {
            metrics::GENERATION_MISMATCHES.inc();
        }
        Ok(Asker {
            from: hello.from.clone(),
            checked: AtomicU64::new(cluster.ring().generation()),
            ssl,
        })
    }

    fn serve(
        self: &Arc<Self>,
        asker: &Arc<Asker>,
        request: Request,
        reply: Reply,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (owner, asker) = (self.clone(), asker.clone());
        // Spawned per request (`server.rs`): its future is kept small by
        // boxing the paths a hit does not take (fills, origin fetches).
        async move { owner.answer(&asker, request, reply).await }
    }
}

impl ChannelOwner {
    /// Without TLS, where `check_sender_address` is on: a member named by
    /// an IP connects from that IP.
    fn check_address(&self, from: &str, stream: &Stream) -> Result<(), &'static str> {
        if !self.rs.node.config.cluster.check_sender_address {
            return Ok(());
        }
        let Ok(claimed) = crate::net::peer_tls::host(from).parse::<IpAddr>() else {
            return Ok(());
        };
        let source = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
        match source {
            Some(ip) if ip.to_canonical() == claimed.to_canonical() => Ok(()),
            _ => Err("address"),
        }
    }

    /// Whether the asker still speaks for a member: checked again when the
    /// ring changed since (and, under TLS, its certificate against the CA
    /// as it is now).
    /// Refused: the reason and the body of the 403.
    fn still_admitted(&self, asker: &Asker) -> Result<(), (&'static str, &'static str)> {
        let generation = self.cluster.ring().generation();
        if asker.checked.load(Ordering::Relaxed) != generation {
            if !self.cluster.is_member(&asker.from) {
                log::warn!("peer channel: {} is no longer a member", asker.from);
                return Err(("not-a-member", "no longer a member\n"));
            }
            asker.checked.store(generation, Ordering::Relaxed);
        }
        self.check_certificate(asker.ssl.as_deref(), &asker.from)
            .map_err(|reason| (reason, "peer certificate refused\n"))
    }

    /// Under `cluster.tls`, whether the connection's certificate is valid
    /// under the CA as it is now and names `from`; a refusal is counted and
    /// logged as on the HTTP path (`peer.rs`). Without TLS: nothing to check.
    fn check_certificate(&self, ssl: Option<&SslDigest>, from: &str) -> Result<(), &'static str> {
        let Some(tls) = &self.cluster.tls else {
            return Ok(());
        };
        tls.check_sender(ssl, from, true).map_err(|why| {
            metrics::observe_peer_tls_refusal(why.reason());
            log::warn!("peer channel: {from} refused: {why}");
            why.reason()
        })
    }

    /// Serve one request, counted as a peer request.
    async fn answer(&self, asker: &Asker, request: Request, reply: Reply) {
        let mut ctx = self.rs.new_ctx();
        let Some(mut downstream) = ChannelDownstream::new(&request, reply) else {
            return;
        };
        let rs = &self.rs;
        let served = match self.still_admitted(asker) {
            Err((reason, body)) => {
                ctx.result = CacheResult::Error;
                send_refusal(&mut downstream, 403, body, reason).await
            }
            Ok(()) => rs.serve_channel(&mut downstream, &mut ctx, request).await,
        };
        if served.is_err() {
            downstream.reply.reset().await;
        }
        metrics::observe_peer_served(ctx.result);
    }
}

impl Ringside {
    /// A request from the channel, as `request_filter` serves a peer
    /// request once admitted: the origin it names, the target normalised,
    /// reads only, a lookup from the cache, the rest down the cacheable path.
    async fn serve_channel(
        &self,
        d: &mut ChannelDownstream,
        ctx: &mut RequestCtx,
        request: Request,
    ) -> Result<bool> {
        let origin = OriginUrl::parse(&request.origin).ok();
        let Some(target) = origin.and_then(|url| self.node.origins.get(&url)) else {
            ctx.result = CacheResult::Error;
            let body = "origin not served by this node\n";
            return send_refusal(d, 403, body, "origin").await;
        };
        ctx.target = Some(target.clone());
        let normalized = match self.prepare(&mut d.req) {
            Ok(normalized) => normalized,
            Err(refusal) => {
                ctx.result = CacheResult::Error;
                return send_refusal(d, refusal.status, refusal.message, "malformed").await;
            }
        };
        let policy = self.policy(&target, &d.req);
        let method = d.req.method.clone();
        let by_body = policy.body.caches(&method) && request.body.is_some();
        if method != Method::GET && method != Method::HEAD && !by_body {
            ctx.result = CacheResult::Error;
            let body = "peers only exchange reads the cache answers\n";
            return send_refusal(d, 405, body, "method").await;
        }
        self.compare_generation(request.generation);
        if request.lookup {
            return Box::pin(self.answer_lookup(d, ctx, &target)).await;
        }
        let key = self.request_key(&target, &d.req, &policy);
        if let Some(cluster) = self.node.cluster() {
            if cluster.remote_owner(&cluster.ring(), &key).is_some() {
                metrics::LOOP_GUARD.inc();
            }
        }
        let passed = match normalized {
            super::request::Target::PassUncached => {
                let status = CacheStatus::bypass(Detail::EncodedSlash);
                self.pass(ctx, CacheResult::Bypass, status)?
            }
            _ => {
                self.serve_read(d, ctx, target.clone(), policy, request.body)
                    .await?
            }
        };
        match passed {
            true => Ok(true),
            // Boxed, as every origin fetch here: a hit's future stays small.
            false => Box::pin(self.fetch_alone(d, ctx, &target)).await,
        }
    }

    /// Count a request from another ring generation than ours.
    fn compare_generation(&self, theirs: u64) {
        if let Some(cluster) = self.node.cluster() {
            if theirs != cluster.ring().generation() {
                metrics::GENERATION_MISMATCHES.inc();
            }
        }
    }

    /// A GET or HEAD, or a POST or QUERY keyed by its body: the cacheable
    /// path unless it bypasses the cache (then false: fetch it alone).
    async fn serve_read(
        &self,
        d: &mut ChannelDownstream,
        ctx: &mut RequestCtx,
        target: Arc<OriginTarget>,
        mut policy: super::policy::Policy,
        request_body: Option<Bytes>,
    ) -> Result<bool> {
        ctx.scope = policy.scope;
        let client_cc = match (&request_body, bypass_reason(&d.req, policy.bypass)) {
            (None, Err(why)) => {
                return self.pass(ctx, CacheResult::Bypass, CacheStatus::bypass(why))
            }
            (None, Ok(client_cc)) => client_cc,
            (Some(_), _) if policy.bypass => {
                return self.pass(ctx, CacheResult::Bypass, CacheStatus::bypass(Detail::Rule))
            }
            (Some(body), _) => {
                policy.body_digest = Some(body::digest(body, policy.body.key));
                ctx.read_body = Some(body.clone());
                let client_cc = crate::rfc::cache_rules::request_cache_control(&d.req.headers);
                if client_cc.no_store {
                    let status = CacheStatus::bypass(Detail::NoStore);
                    return Box::pin(self.go_alone(d, ctx, CacheResult::Bypass, status)).await;
                }
                client_cc
            }
        };
        self.headers.strip(&mut d.req);
        self.serve_cacheable(d, ctx, target, policy, client_cc, request_body)
            .await
    }

    /// What pingora's proxy phases would do with a request the cache does
    /// not answer: send it to the origin as it is (origin-form, its Host,
    /// no peer fields) and stream the answer back with its Cache-Status.
    async fn fetch_alone(
        &self,
        d: &mut ChannelDownstream,
        ctx: &mut RequestCtx,
        target: &OriginTarget,
    ) -> Result<bool> {
        let mut req = d.req.clone();
        let _ = req.insert_header(header::HOST, target.host_header.clone());
        for name in crate::cluster::peers::HEADERS {
            req.remove_header(name);
        }
        let body = ctx.read_body.take();
        let client = &self.node.client;
        let mut response = match client.fetch(target, &req, body, None).await {
            Ok(response) => response,
            Err(e) => {
                ctx.result = CacheResult::Error;
                let (body, detail) = match e.status() {
                    504 => ("origin timed out\n", Detail::OriginTimeout),
                    _ => ("origin unreachable\n", Detail::OriginUnreachable),
                };
                let status = CacheStatus::bypass(detail);
                return send_error(d, e.status(), body, status).await;
            }
        };
        let mut head = response.header.clone();
        crate::net::origin::strip_response_hop_by_hop(&mut head);
        head.insert_header(CACHE_STATUS.clone(), ctx.cache_status.header_value())?;
        let no_body = d.req.method == Method::HEAD;
        d.write_response_header(Box::new(head), no_body).await?;
        if !no_body {
            while let Some(chunk) = response.read_chunk().await.map_err(|_| {
                Error::explain(ErrorType::ReadError, "origin body failed mid-stream")
            })? {
                d.write_response_body(Some(chunk), false).await?;
            }
            d.write_response_body(None, true).await?;
        }
        response.finish(client).await;
        Ok(true)
    }
}

/// A request on the channel, answered into its stream.
pub struct ChannelDownstream {
    req: RequestHeader,
    reply: Reply,
}

impl ChannelDownstream {
    /// The request as a request head (None: it names no valid method or
    /// path; the stream is reset).
    fn new(request: &Request, reply: Reply) -> Option<ChannelDownstream> {
        let method = Method::from_bytes(request.method.as_bytes()).ok()?;
        let fields = Some(request.headers.len());
        let mut req = RequestHeader::build_no_case(method, request.path.as_bytes(), fields).ok()?;
        let mut fields = http::HeaderMap::with_capacity(request.headers.len());
        for (name, value) in &request.headers {
            fields.append(name.clone(), value.clone());
        }
        strip_hop_by_hop(&mut fields);
        for (name, value) in fields {
            if let Some(name) = name {
                req.append_header(name, value).ok()?;
            }
        }
        if let Some(body) = &request.body {
            let _ = req.insert_header(header::CONTENT_LENGTH, body.len());
        }
        Some(ChannelDownstream { req, reply })
    }
}

fn gone(_: server::Gone) -> Box<Error> {
    Error::explain(ErrorType::WriteError, "the asker is gone")
}

impl Downstream for ChannelDownstream {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    async fn write_response_header(
        &mut self,
        mut head: Box<ResponseHeader>,
        end: bool,
    ) -> Result<()> {
        // The channel frames the body itself.
        head.remove_header(&header::TRANSFER_ENCODING);
        self.reply.head(&head, end).await.map_err(gone)
    }

    async fn write_response_body(&mut self, body: Option<Bytes>, end: bool) -> Result<()> {
        match body {
            Some(body) => self.reply.data(body, end).await.map_err(gone),
            None if end => self.reply.data(Bytes::new(), true).await.map_err(gone),
            None => Ok(()),
        }
    }
}
