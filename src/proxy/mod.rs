//! The proxy: a client request's whole way through ringside, in one place.
//!
//! ```text
//! early_request_filter
//!   timeouts ......... out of the head deadline; idle_timeout for the
//!                      keep-alive wait after it, request_body_timeout for
//!                      its body (pingora's set_keepalive, set_read_timeout)
//! request_filter
//!   readiness? ....... this process's own /readyz probe: 204, answered here
//!                      and not counted (readiness.rs)
//!   too large? ....... request line over 16 KiB: 414; head over 64 KiB: 431
//!                      (over HTTP/1 the connection screen answers first);
//!                      HTTP/1.1 without Host: 400; on the peer listener
//!                      marked as refusals (x-ringside-refused)
//!   a body? .......... one of max_request_bodies, else 503
//!   admit / route .... peer listener: signature, origin (peer.rs);
//!                      app listener: the configured origin, or an
//!                      absolute-form URL on the allowlist (routes.rs;
//!                      else 403/405)
//!   prepare .......... the target normalised in place (request.rs, 400 if
//!                      it cannot be); from here on, key, rule and upstream
//!                      request all see this one; peers: PURGE (peer.rs)
//!   not GET/HEAD ..... pass: pingora proxies it untouched (upstream_peer...)
//!   bypass? .......... a path rule, a request body, no-store, upgrade:
//!                      pass as well; else strip the headers of
//!                      cache.strip_request_headers (a Range stays: it is
//!                      answered from the whole object, see range.rs)
//!   look up .......... (cacheable.rs) plain key, or the variant key when
//!                      the origin varies (key layout: keys.rs);
//!                      a key owned by another node: its hot mirror, if any
//!   fresh? ........... hit: answer from memory (304 if the client's validators match,
//!                      206/416 for a GET's Range, see range.rs)
//!   stale-while-rev .. answer stale now, refresh once in the background
//!   otherwise ........ fill (fill/): one fetch per key, shared by every
//!                      concurrent request for it, from the key's owner
//!                      (cluster, app listener only) or the origin,
//!                      revalidating the stale copy when there is one
//! upstream_* ......... pass-through: origin-form URI, Host, no peer headers
//! response_filter .... Cache-Status on responses pingora proxied; a write's
//!                      2xx/3xx first invalidates its URIs cluster-wide
//!                      (invalidate.rs)
//! request_body_filter  the body is in: its max_request_bodies slot is free
//! fail_to_proxy ...... origin down: 502, origin slow: 504; a body that
//!                      stopped: 408; one the screen refused: 400
//! logging ............ one metrics observation per request
//! ```
//!
//! Responses answered from the cache or by a fill are written in
//! `request_filter` (which then returns `Ok(true)`); everything else returns
//! `Ok(false)` and pingora's proxy phases stream it both ways.
//!
//! A peer's request over the peer channel (the default `peer_protocol`)
//! takes none of pingora's phases: `channel.rs` reads it from a connection
//! its handshake authenticated (`net/channel/server.rs`), checks the sender
//! is still a member, then prepares and looks it up as above (`prepare`,
//! `policy`, `cacheable.rs`), answering on the channel's stream. The signed
//! HTTP path (`peer.rs`) remains for peers that do not speak the channel,
//! and for PURGE, LEAVING, JOINED and HANDOFF.

use crate::cluster::peers;
use crate::config::Scope;
use crate::metrics::{self, CacheResult};
use crate::net::bodies::{Bodies, BodySlot};
use crate::net::connections;
use crate::net::origin::OriginTarget;
use crate::node::Node;
use crate::rfc::cache_rules::{self, CacheControl, RuleOptions};
use crate::shutdown::InFlight;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use http::Method;
use pingora::http::authority::raw_target_authority;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod body;
mod byteranges;
mod cacheable;
mod channel;
pub use channel::ChannelListener;
mod downstream;
mod invalidate;
mod partial;
mod peer;
mod policy;
mod request;
mod respond;
mod told;

use crate::rfc::cache_status::{CacheStatus, Detail, HEADER as CACHE_STATUS};
use respond::{send_error, send_refusal, send_unavailable};

/// Which listener a [`Ringside`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The app-facing listener: may ask the key's owner on another node.
    App,
    /// The peer listener: authenticated requests from other sidecars, served
    /// from this node's cache or origin and never forwarded again.
    Peer,
}

/// One listener's proxy: the node it serves and the listener's role.
#[derive(Clone)]
pub struct Ringside {
    pub role: Role,
    pub node: Arc<Node>,
    /// The origin of requests in origin-form on this listener.
    origin: Arc<OriginTarget>,
    /// Stripped and key headers of cacheable requests.
    headers: Arc<request::HeaderPolicy>,
    /// The caching rules' options every path shares (rules add their ttl).
    rule_options: RuleOptions,
    /// The listener's metrics label (`proxy`, `upstream`, `peers`).
    listener: &'static str,
    /// Request bodies arriving on this listener (`max_request_bodies`).
    bodies: Arc<Bodies>,
}

/// Per-request state carried across pingora's phases.
pub struct RequestCtx {
    _in_flight: InFlight,
    started: Instant,
    target: Option<Arc<OriginTarget>>,
    result: CacheResult,
    /// The Cache-Status value for a response pingora proxies.
    cache_status: CacheStatus,
    /// When pingora started proxying this request to the origin; taken when
    /// its outcome is counted in the origin metrics (fills count their own).
    origin_started: Option<Instant>,
    /// An unsafe method: its non-error response invalidates (invalidate.rs).
    is_write: bool,
    /// The scope the request's path rule applied (see `policy.rs`).
    scope: Scope,
    /// The answer was stored and served under the rule's override.
    overridden: bool,
    /// The body of a POST or QUERY read to key it: a request that then goes
    /// to the origin on its own sends it in a fill (`go_alone`).
    read_body: Option<Bytes>,
    /// What a request that went alone is told and counted as.
    alone: Option<(CacheResult, CacheStatus)>,
    /// The part of a body over `max_key_body` already read: sent to the
    /// origin ahead of the rest (`request_body_filter`).
    body_prefix: Option<Bytes>,
    /// Held while the request's body arrives.
    body_slot: Option<BodySlot>,
}

impl Ringside {
    pub fn new(node: Arc<Node>) -> Ringside {
        let config = &node.config;
        let headers = Arc::new(request::HeaderPolicy::new(&config.cache));
        let rule_options = RuleOptions {
            heuristic: config.heuristic(),
            cache_set_cookie: config.cache.cache_set_cookie,
            targeted: config.targeted_fields(),
            stale_if_error: config.cache.stale_if_error,
            credentials: config.credential_headers().into(),
            ..RuleOptions::default()
        };
        let bodies = Bodies::new(config.request_bodies(), "proxy");
        Ringside {
            role: Role::App,
            origin: node.origins.default().clone(),
            node,
            headers,
            rule_options,
            listener: "proxy",
            bodies,
        }
    }

    /// The same proxy, serving the peer listener.
    pub fn for_peers(&self) -> Ringside {
        Ringside {
            role: Role::Peer,
            listener: "peers",
            bodies: Bodies::new(self.node.config.request_bodies(), "peers"),
            ..self.clone()
        }
    }

    /// Drop what a write made stale, here and on every member (RFC 9111
    /// §4.4, see invalidate.rs). False when a member did not confirm in time.
    async fn invalidate_written(
        &self,
        req: &RequestHeader,
        response: &ResponseHeader,
        ctx: &RequestCtx,
    ) -> bool {
        let target = ctx.target.as_ref().unwrap_or(&self.origin);
        let uris = invalidate::invalidated_uris(&req.uri, &response.headers, target);
        let keys: Vec<String> = uris
            .iter()
            .map(|u| self.node.cache_key(target, u))
            .collect();
        let within = self
            .node
            .cluster()
            .map_or(Duration::ZERO, |c| c.invalidation_timeout);
        invalidate::everywhere(&self.node, target, &keys, &uris, within).await == 0
    }

    /// Let pingora proxy this request to the origin, uncached.
    fn pass(&self, ctx: &mut RequestCtx, result: CacheResult, status: CacheStatus) -> Result<bool> {
        ctx.result = result;
        ctx.cache_status = status;
        Ok(false)
    }

    /// Normalise the request's target in place and collapse repeated
    /// Content-Lengths (see `request.rs`). Peers send normalised targets;
    /// one with encoded slashes is refused there rather than proxied.
    fn prepare(&self, req: &mut RequestHeader) -> Result<request::Target, request::Refusal> {
        let slashes = match self.role {
            Role::App => self.node.config.cache.encoded_slashes,
            Role::Peer => crate::config::EncodedSlashes::Reject,
        };
        let normalized = request::normalized_target(req, slashes)?;
        request::apply(req, &normalized);
        request::collapse_content_length(req);
        Ok(normalized)
    }

    /// The same proxy, serving the listener of an upstream (`upstreams`).
    pub fn for_upstream(&self, origin: Arc<OriginTarget>) -> Ringside {
        Ringside {
            origin,
            listener: "upstream",
            bodies: Bodies::new(self.node.config.request_bodies(), "upstream"),
            ..self.clone()
        }
    }
}

impl Ringside {
    /// A POST or QUERY its path rule caches by its body: read the body (see
    /// `body.rs`), then serve it as a read keyed by it, or, when it is too
    /// large to key, send it on uncached.
    async fn serve_by_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: Arc<OriginTarget>,
        mut policy: policy::Policy,
    ) -> Result<bool> {
        let timeout = self.node.config.cache.key_body_timeout;
        let too_large = CacheStatus::bypass(Detail::BodyTooLarge);
        match body::read(session, &policy.body, timeout).await {
            body::Read::Whole(body) => {
                let req = session.req_header();
                if self.role == Role::Peer && !peers::body_matches(&req.headers, &body) {
                    metrics::PEER_AUTH_FAILURES.inc();
                    let refusal = "body does not match its signed digest\n";
                    ctx.result = CacheResult::Error;
                    return respond::send_refusal(session, 401, refusal, "credentials").await;
                }
                let client_cc = cache_rules::request_cache_control(&req.headers);
                ctx.read_body = Some(body.clone());
                if client_cc.no_store {
                    let status = CacheStatus::bypass(Detail::NoStore);
                    return self
                        .go_alone(session, ctx, CacheResult::Bypass, status)
                        .await;
                }
                policy.body_digest = Some(body::digest(&body, policy.body.key));
                self.headers.strip(session.req_header_mut());
                self.serve_cacheable(session, ctx, target, policy, client_cc, Some(body))
                    .await
            }
            body::Read::Announced => {
                metrics::KEY_BODY_TOO_LARGE.inc();
                self.pass(ctx, CacheResult::Bypass, too_large)
            }
            body::Read::Prefix(prefix) => {
                metrics::KEY_BODY_TOO_LARGE.inc();
                ctx.body_prefix = Some(prefix);
                self.pass(ctx, CacheResult::Bypass, too_large)
            }
            body::Read::WholeTooLarge(body) => {
                metrics::KEY_BODY_TOO_LARGE.inc();
                self.send_once(session, ctx, body).await
            }
            body::Read::TooSlow => {
                ctx.result = CacheResult::Error;
                let status = CacheStatus::bypass(Detail::BodyTimeout);
                send_error(session, 408, "request body too slow\n", status).await
            }
            body::Read::Broken => {
                ctx.result = CacheResult::Error;
                let status = CacheStatus::bypass(Detail::BadRequest);
                send_error(
                    session,
                    400,
                    "request body broken off or malformed\n",
                    status,
                )
                .await
            }
        }
    }
}

impl Ringside {
    /// Answer an error of ringside's own. One that refuses the request
    /// (`reason`: not an origin's failure) is marked as a refusal on the
    /// peer listener, so that the asking node does not take it for the
    /// owner's answer.
    async fn send_own_error(
        &self,
        session: &mut Session,
        code: u16,
        body: &'static str,
        status: CacheStatus,
        reason: Option<&'static str>,
    ) -> Result<bool> {
        match (self.role, reason) {
            (Role::Peer, Some(reason)) => send_refusal(session, code, body, reason).await,
            _ => send_error(session, code, body, status).await,
        }
    }

    /// A slot for this request's body, if it has one: false (answered 503)
    /// when `max_request_bodies` bodies are arriving already.
    async fn admit_body(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if !request::has_body(session.req_header()) {
            return Ok(true);
        }
        if let Some(slot) = self.bodies.enter() {
            ctx.body_slot = Some(slot);
            return Ok(true);
        }
        ctx.result = CacheResult::Error;
        let body = "too many request bodies at once\n";
        let peer = self.role == Role::Peer;
        send_unavailable(session, body, ctx.cache_status, peer).await?;
        Ok(false)
    }
}

/// Answer a request ringside refuses to act on.
async fn refuse(
    rs: &Ringside,
    session: &mut Session,
    ctx: &mut RequestCtx,
    refusal: request::Refusal,
) -> Result<bool> {
    ctx.result = CacheResult::Error;
    let reason = match refusal.status {
        414 => "too-large",
        _ => "malformed",
    };
    let (code, message) = (refusal.status, refusal.message);
    rs.send_own_error(session, code, message, refusal.cache_status, Some(reason))
        .await
}

/// What a failed proxying is answered: status, body, and, for the
/// client's own faults, the refusal reason on the peer listener. Those
/// first: a body that stopped (408), one the connection screen refused
/// (400). An origin's failure is an answer, not a refusal.
fn failure_answer(e: &Error) -> (u16, &'static str, Option<&'static str>) {
    let downstream = e.esource() == &ErrorSource::Downstream;
    if connections::refused_by_screen(e).is_some() {
        return (400, "malformed request body\n", Some("malformed"));
    }
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, "error\n", None),
        ErrorType::ReadTimedout if downstream => (408, "request body timed out\n", Some("timeout")),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (504, "origin timed out\n", None)
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "origin unreachable\n", None),
            ErrorSource::Downstream => (400, "bad request\n", Some("malformed")),
            _ => (500, "internal error\n", None),
        },
    }
}

/// pingora counts keep-alive timeouts in whole seconds; the config checks
/// that there is at least one.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// Why a GET/HEAD skips the cache, if it does; else the request's own
/// Cache-Control, parsed once here for the lookup.
fn bypass_reason(req: &RequestHeader, rule_bypass: bool) -> Result<CacheControl, Detail> {
    let h = &req.headers;
    if rule_bypass {
        return Err(Detail::Rule);
    }
    if request::has_body(req) {
        return Err(Detail::RequestBody);
    }
    if h.contains_key(header::UPGRADE) {
        return Err(Detail::Upgrade);
    }
    let client_cc = cache_rules::request_cache_control(h);
    if client_cc.no_store {
        return Err(Detail::NoStore);
    }
    Ok(client_cc)
}

#[async_trait]
impl ProxyHttp for Ringside {
    type CTX = RequestCtx;

    /// No downstream modules: pingora's default adds a (disabled) compression
    /// module whose per-request bookkeeping the hit path does not need.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: InFlight::enter(),
            started: Instant::now(),
            target: None,
            result: CacheResult::Pass,
            cache_status: CacheStatus::METHOD,
            origin_started: None,
            is_write: false,
            scope: Scope::Shared,
            overridden: false,
            read_body: None,
            alone: None,
            body_prefix: None,
            body_slot: None,
        }
    }

    /// The request head is in: from here on the connection is not under the
    /// head deadline. Its body may take as long as it takes while it moves
    /// (`request_body_timeout` between bytes), and the connection may then
    /// wait `idle_timeout` for the next request (unless pingora will close
    /// it: the client asked, or the process is stopping).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        connections::head_received(session.as_downstream());
        let config = &self.node.config;
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(whole_seconds(config.idle_timeout)));
        }
        session.set_read_timeout(Some(config.request_body_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Pipelined requests are answered in order (RFC 9112 §9.3.2) rather
        // than dropped after the first response.
        session.set_pipelining_enabled(true);
        respond::keep_response_dates(session);
        if crate::net::readiness::is_probe(session.req_header()) {
            return crate::net::readiness::answer(session).await;
        }
        if let Err(refusal) = request::check_protocol(session.req_header()) {
            return refuse(self, session, ctx, refusal).await;
        }
        if connections::header_bytes(session.req_header()) > connections::MAX_REQUEST_HEADER_BYTES {
            ctx.result = CacheResult::Error;
            let status = CacheStatus::bypass(Detail::HeaderTooLarge);
            let body = "request headers too large\n";
            return self
                .send_own_error(session, 431, body, status, Some("too-large"))
                .await;
        }
        if !self.admit_body(session, ctx).await? {
            return Ok(true);
        }
        let target = if self.role == Role::Peer {
            match peer::admit(self, session, ctx).await? {
                Some(target) => Ok(target),
                None => return Ok(true),
            }
        } else {
            self.node.origins.route(session.req_header(), &self.origin)
        };
        let target = match target {
            Ok(target) => target,
            Err(unroutable) => {
                ctx.result = CacheResult::Error;
                let status = CacheStatus::bypass(Detail::Refused);
                let (code, message) = (unroutable.status(), unroutable.message());
                return send_error(session, code, message, status).await;
            }
        };
        ctx.target = Some(target.clone());
        let normalized = match self.prepare(session.req_header_mut()) {
            Ok(normalized) => normalized,
            Err(refusal) => return refuse(self, session, ctx, refusal).await,
        };
        if self.role == Role::Peer && peer::handle(self, session, ctx, &target).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let policy = self.policy(&target, req);
        let uncached_target = matches!(normalized, request::Target::PassUncached);
        let by_body = !policy.bypass && !uncached_target && policy.body.caches(&req.method);
        if req.method != Method::GET && req.method != Method::HEAD && !by_body {
            ctx.is_write = invalidate::is_unsafe(&req.method);
            return self.pass(ctx, CacheResult::Pass, CacheStatus::METHOD);
        }
        if uncached_target {
            let status = CacheStatus::bypass(Detail::EncodedSlash);
            return self.pass(ctx, CacheResult::Bypass, status);
        }
        ctx.scope = policy.scope;
        if by_body {
            return self.serve_by_body(session, ctx, target, policy).await;
        }
        match bypass_reason(req, policy.bypass) {
            Err(why) => self.pass(ctx, CacheResult::Bypass, CacheStatus::bypass(why)),
            Ok(client_cc) => {
                self.headers.strip(session.req_header_mut());
                self.serve_cacheable(session, ctx, target, policy, client_cc, None)
                    .await
            }
        }
    }

    /// A body over `max_key_body` was partly read to key its request: that
    /// part goes to the origin ahead of the first chunk pingora reads. Once
    /// the body is in, its slot under `max_request_bodies` is free again.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(prefix) = ctx.body_prefix.take() {
            let rest = body.take().unwrap_or_default();
            *body = Some([prefix, rest].concat().into());
        }
        if end_of_stream {
            ctx.body_slot = None;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.origin_started.get_or_insert_with(Instant::now);
        let target = ctx.target.clone().unwrap_or_else(|| self.origin.clone());
        Ok(Box::new(target.peer().await?))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let target = ctx.target.as_ref().unwrap_or(&self.origin);
        if raw_target_authority(upstream.raw_path())
            .authority()
            .is_some()
        {
            // Absolute-form from a forward-proxy client: origins want origin-form.
            let path = upstream
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            upstream.set_uri(
                path.parse()
                    .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?,
            );
        }
        upstream.insert_header(header::HOST, target.host_header.clone())?;
        for name in peers::HEADERS {
            upstream.remove_header(name);
        }
        target.prepare_upstream(upstream);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Interim responses (100 Continue, 103 Early Hints) are not the answer.
        if !matches!(upstream.status.as_u16(), 100 | 102 | 103) {
            if let Some(started) = ctx.origin_started.take() {
                let status = Some(upstream.status.as_u16());
                metrics::observe_origin(status, started.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.is_write && invalidate::invalidates(upstream.status) {
            // Before the app sees its write's answer: read-your-writes.
            if !self
                .invalidate_written(session.req_header(), upstream, ctx)
                .await
            {
                ctx.cache_status = CacheStatus::METHOD.detail(Detail::InvalidationIncomplete);
            }
        }
        let status = ctx.cache_status.scope(told::scope(ctx.scope));
        upstream.insert_header(CACHE_STATUS.clone(), status.header_value())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, body, reason) = failure_answer(e);
        ctx.result = CacheResult::Error;
        if let Some(started) = ctx.origin_started.take() {
            if e.esource() == &ErrorSource::Upstream {
                metrics::observe_origin(None, started.elapsed().as_secs_f64());
            }
        }
        if code == 408 {
            metrics::request_refusals(self.listener, "body-timeout").inc();
        }
        let client_gone = matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        ) && e.esource() == &ErrorSource::Downstream
            && connections::refused_by_screen(e).is_none();
        // An interim response (a 103 passed on) is no answer yet.
        let answered = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        if !answered && !client_gone {
            let status = ctx.cache_status;
            let _ = self
                .send_own_error(session, code, body, status, reason)
                .await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        connections::exchange_finished(session.as_downstream());
        if crate::net::readiness::is_probe(session.req_header()) {
            return;
        }
        if self.role == Role::Peer {
            metrics::observe_peer_served(ctx.result);
            return;
        }
        let method = &session.req_header().method;
        let seconds = ctx.started.elapsed().as_secs_f64();
        metrics::observe_request(
            ctx.result,
            method,
            ctx.scope.as_str(),
            ctx.overridden,
            seconds,
        );
    }
}
