//! The proxy: a client request's whole way through ringside, in one place.
//!
//! ```text
//! request_filter
//!   readiness? ....... this process's own /readyz probe: 204, answered here
//!                      and not counted (readiness.rs)
//!   too large? ....... request line over 16 KiB: 414; head over 64 KiB: 431;
//!                      HTTP/1.1 without Host: 400
//!   admit / route .... peer listener: signature, origin (peer.rs);
//!                      app listener: the configured origin, or an
//!                      absolute-form URL on the allowlist (else 403/405)
//!   prepare .......... the target normalised in place (request.rs, 400 if
//!                      it cannot be); from here on, key, rule and upstream
//!                      request all see this one; peers: PURGE (peer.rs)
//!   not GET/HEAD ..... pass: pingora proxies it untouched (upstream_peer...)
//!   bypass? .......... a path rule, a request body, no-store, upgrade:
//!                      pass as well; else strip the headers of
//!                      cache.strip_request_headers (a Range stays: it is
//!                      answered from the whole object, see range.rs)
//!   look up .......... plain key, or the variant key when the origin varies;
//!                      a key owned by another node: its hot mirror, if any
//!   fresh? ........... hit: answer from memory (304 if the client's validators match,
//!                      206/416 for a GET's Range, see range.rs)
//!   stale-while-rev .. answer stale now, refresh once in the background
//!   otherwise ........ fill (fill.rs): one fetch per key, shared by every
//!                      concurrent request for it, from the key's owner
//!                      (cluster, app listener only) or the origin,
//!                      revalidating the stale copy when there is one
//! upstream_* ......... pass-through: origin-form URI, Host, no peer headers
//! response_filter .... Cache-Status on responses pingora proxied; a write's
//!                      2xx/3xx first invalidates its URIs cluster-wide
//!                      (invalidate.rs)
//! fail_to_proxy ...... origin down: 502, origin slow: 504
//! logging ............ one metrics observation per request
//! ```
//!
//! Responses answered from the cache or by a fill are written in
//! `request_filter` (which then returns `Ok(true)`); everything else returns
//! `Ok(false)` and pingora's proxy phases stream it both ways.

use crate::cache_rules::{self, CacheControl, RuleOptions};
use crate::cluster::Cluster;
use crate::config::{Config, OriginUrl};
use crate::connections;
use crate::fill::{self, Filler, Job, LeaderResult, Outcome, Started};
use crate::invalidate;
use crate::metrics::{self, CacheResult};
use crate::origin::{strip_hop_by_hop, OriginTarget};
use crate::peers;
use crate::shutdown::InFlight;
use crate::singleflight::WaitError;
use crate::store::{CachedObject, Entry, Store};
use async_trait::async_trait;
use http::header::{self, HeaderValue};
use http::Method;
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod peer;
mod request;
mod respond;

use crate::cache_status::{self, HEADER as CACHE_STATUS, HIT, STALE_WHILE_REVALIDATE};
use respond::{send_error, send_object, send_stream};

/// Which listener a [`Ringside`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The app-facing listener: may ask the key's owner on another node.
    App,
    /// The peer listener: authenticated requests from other sidecars, served
    /// from this node's cache or origin and never forwarded again.
    Peer,
}

/// The proxy's shared state: configuration, origins and the cache.
#[derive(Clone)]
pub struct Ringside {
    pub role: Role,
    pub config: Arc<Config>,
    pub filler: Arc<Filler>,
    /// The reverse-proxy origin.
    pub origin: Arc<OriginTarget>,
    /// Forward-proxy allowlist (the reverse origin included), by origin URL.
    pub forward: HashMap<OriginUrl, Arc<OriginTarget>>,
    /// Stripped and key headers of cacheable requests.
    headers: Arc<request::HeaderPolicy>,
    /// The caching rules' options every path shares (rules add their ttl).
    rule_options: RuleOptions,
}

/// What a request's key has here: the stored object (or mirror) and its
/// variant key, and where a fill would go.
struct Found {
    variant_key: Option<String>,
    stored: Option<Arc<CachedObject>>,
    mirrored: bool,
    route: Route,
}

/// Where a miss is filled from: the owner (and whether to mirror its answer) or the origin.
#[derive(Default)]
struct Route {
    owner: Option<String>,
    mirror: Option<Arc<Store>>,
}

/// Per-request state carried across pingora's phases.
pub struct RequestCtx {
    _in_flight: InFlight,
    started: Instant,
    target: Option<Arc<OriginTarget>>,
    result: CacheResult,
    /// The Cache-Status value for a response pingora proxies.
    cache_status: &'static str,
    /// When pingora started proxying this request to the origin; taken when
    /// its outcome is counted in the origin metrics (fills count their own).
    origin_started: Option<Instant>,
    /// An unsafe method: its non-error response invalidates (invalidate.rs).
    is_write: bool,
}

impl Ringside {
    pub fn new(config: Arc<Config>, filler: Arc<Filler>) -> Ringside {
        let origin = Arc::new(OriginTarget::new(config.origin_url(), &config));
        let mut forward = HashMap::new();
        forward.insert(origin.url.clone(), origin.clone());
        for url in &config.forward_proxy.allow {
            if let Ok(url) = OriginUrl::parse(url) {
                let target = Arc::new(OriginTarget::new(url.clone(), &config));
                forward.entry(url).or_insert(target);
            }
        }
        let headers = Arc::new(request::HeaderPolicy::new(&config.cache));
        let rule_options = RuleOptions {
            default_ttl: None,
            heuristic: config.heuristic(),
            cache_set_cookie: config.cache.cache_set_cookie,
            targeted: config.targeted_fields(),
            stale_if_error: config.cache.stale_if_error,
        };
        Ringside {
            role: Role::App,
            config,
            filler,
            origin,
            forward,
            headers,
            rule_options,
        }
    }

    /// The same proxy, serving the peer listener.
    pub fn for_peers(&self) -> Ringside {
        Ringside {
            role: Role::Peer,
            ..self.clone()
        }
    }

    /// Which origin a request is for; an error status and message if none.
    fn route(&self, req: &RequestHeader) -> Result<Arc<OriginTarget>, (u16, &'static str)> {
        if req.method == Method::CONNECT {
            return Err((405, "CONNECT tunnels are not supported\n"));
        }
        // Absolute-form: the app uses ringside as its HTTP proxy. pingora keeps
        // only the path in `req.uri`; scheme and authority are in the raw target.
        let (scheme, authority) = match raw_target_authority(req.raw_path()) {
            RawTargetAuthority::None => return Ok(self.origin.clone()),
            RawTargetAuthority::AmbiguousAuthority => {
                return Err((400, "ambiguous request target\n"))
            }
            RawTargetAuthority::Absolute {
                scheme, authority, ..
            } => (scheme, authority),
        };
        let authority = http::uri::Authority::try_from(authority)
            .map_err(|_| (400, "invalid request target\n"))?;
        let tls = match scheme.to_ascii_lowercase().as_slice() {
            b"http" => false,
            b"https" => true,
            _ => return Err((400, "unsupported URL scheme\n")),
        };
        let url = OriginUrl {
            tls,
            host: authority
                .host()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        };
        self.forward
            .get(&url)
            .cloned()
            .ok_or((403, "origin is not on ringside's forward_proxy allowlist\n"))
    }

    /// The cache key: origin, path, and the query unless configured out.
    pub fn cache_key(&self, target: &OriginTarget, uri: &http::Uri) -> String {
        let path = if uri.path().is_empty() {
            "/"
        } else {
            uri.path()
        };
        let query = uri.query().filter(|_| self.config.cache.include_query);
        // Built by hand: `format!` costs several times more on the hit path.
        let mut key = String::with_capacity(
            target.key_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        key.push_str(&target.key_prefix);
        key.push_str(path);
        if let Some(q) = query {
            key.push('?');
            key.push_str(q);
        }
        key
    }

    /// The cache key of a (prepared) request: [`Self::cache_key`] plus the
    /// values of `cache.key_headers`, if any.
    fn request_key(&self, target: &OriginTarget, req: &RequestHeader) -> String {
        let mut key = self.cache_key(target, &req.uri);
        if self.headers.has_key_headers() {
            self.headers.extend_key(&mut key, &req.headers);
        }
        key
    }

    /// The stored entry for a request: the object under the plain key, or
    /// under the variant key when the origin varies. Returns the variant key
    /// (None: the plain key is the one to fill) and the object found, if any.
    fn lookup(
        store: &Store,
        key: &str,
        req: &RequestHeader,
    ) -> (Option<String>, Option<Arc<CachedObject>>) {
        match store.get(key) {
            Some(Entry::Object(object)) => (None, Some(object)),
            Some(Entry::Variants { headers, .. }) => {
                let fingerprint = cache_rules::vary_fingerprint(&headers, &req.headers);
                let variant_key = fill::variant_key_for(key, fingerprint);
                match store.get(&variant_key) {
                    Some(Entry::Object(object)) => (Some(variant_key), Some(object)),
                    _ => (Some(variant_key), None),
                }
            }
            None => (None, None),
        }
    }

    /// Serve a GET or HEAD that the cache may answer.
    async fn serve_cacheable(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: Arc<OriginTarget>,
        rules: RuleOptions,
        client_cc: CacheControl,
    ) -> Result<bool> {
        let req = session.req_header();
        let plain_key = self.request_key(&target, req);
        let found = self.find(req, &plain_key);
        // The request's arrival is "now" for freshness: one clock read less per hit.
        let now = ctx.started;
        if let Some(object) = &found.stored {
            let age = object.age(now);
            let forced = self.config.cache.honor_client_no_cache
                && cache_rules::request_requires_revalidation(&client_cc, age, object.freshness);
            let fresh = object.is_fresh(now);
            if forced && fresh {
                // A client made a fresh entry go back to the origin, for everyone.
                metrics::CLIENT_REVALIDATIONS.inc();
            }
            if !forced && fresh {
                ctx.result = CacheResult::Hit;
                if found.mirrored {
                    metrics::HOT_HITS.inc();
                }
                return send_object(session, object, HIT.clone(), now).await;
            }
            let swr = object.stale_while_revalidate;
            if !forced && !swr.is_zero() && object.staleness(now) <= swr {
                let object = object.clone();
                let (flight_key, job) = self.fill_for(req, &target, plain_key, found, rules);
                // Refresh in the background unless someone already is.
                let _ = fill::start(&self.filler, flight_key, job, false);
                ctx.result = CacheResult::Stale;
                return send_object(session, &object, STALE_WHILE_REVALIDATE.clone(), now).await;
            }
        }
        if client_cc.only_if_cached {
            ctx.result = CacheResult::Error;
            let status = "ringside; fwd=miss; detail=only-if-cached";
            return send_error(session, 504, "not in cache (only-if-cached)\n", status).await;
        }
        let (flight_key, job) = self.fill_for(req, &target, plain_key, found, rules);
        self.fill_and_answer(session, ctx, flight_key, job).await
    }

    /// Where the request's key stands: stored here, mirrored here (a key
    /// another node owns, app listener only), or to be asked of its owner.
    fn find(&self, req: &RequestHeader, plain_key: &str) -> Found {
        let (variant_key, stored) = Self::lookup(&self.filler.store, plain_key, req);
        let mut found = Found {
            variant_key,
            stored,
            mirrored: false,
            route: Route::default(),
        };
        let cluster = self
            .filler
            .cluster
            .as_ref()
            .filter(|_| self.role == Role::App);
        if let (Some(cluster), None) = (cluster, &found.stored) {
            let ring = cluster.ring();
            if let Some(owner) = cluster.remote_owner(&ring, plain_key) {
                (found.variant_key, found.stored) =
                    Self::lookup(&cluster.hot.store, plain_key, req);
                found.mirrored = found.stored.is_some();
                found.route = self.route_to_owner(cluster, owner, plain_key);
            }
        }
        found
    }

    /// The flight key and job of a fill for what `find` found.
    fn fill_for(
        &self,
        req: &RequestHeader,
        target: &Arc<OriginTarget>,
        plain_key: String,
        found: Found,
        rules: RuleOptions,
    ) -> (String, Job) {
        let flight_key = flight_key(
            found.variant_key.unwrap_or_else(|| plain_key.clone()),
            &found.route,
        );
        let job = self.fill_job(req, target, &plain_key, found.stored, rules, found.route);
        (flight_key, job)
    }

    /// Lead or follow the key's fill, and answer with what it brings.
    async fn fill_and_answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        flight_key: String,
        job: Job,
    ) -> Result<bool> {
        let timeout = self.config.cache.collapse_timeout;
        match fill::start(&self.filler, flight_key, job, true) {
            // The wait is for the response head: a body that is still
            // arriving is streamed, however long it takes.
            Started::Leading(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => self.send_leader_result(session, ctx, result).await,
                // The fill task always answers; a lost answer means it died.
                _ => {
                    ctx.result = CacheResult::Error;
                    let body = "origin fetch did not finish\n";
                    send_error(session, 504, body, "ringside; fwd=miss").await
                }
            },
            Started::Following(waiter) => match waiter.wait(timeout).await {
                Ok(outcome) => self.send_outcome(session, ctx, outcome, true).await,
                Err(WaitError::Timeout) => {
                    ctx.result = CacheResult::Error;
                    let status = "ringside; fwd=miss; collapsed; detail=collapse-timeout";
                    let body = "origin fetch did not finish in time\n";
                    send_error(session, 504, body, status).await
                }
                Err(WaitError::Abandoned) => {
                    // The leader's fill died; fetch for ourselves, uncached.
                    let status = "ringside; fwd=miss; detail=abandoned";
                    self.pass(ctx, CacheResult::Miss, status)
                }
            },
        }
    }

    /// Answer the request whose fill this was.
    async fn send_leader_result(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        result: LeaderResult,
    ) -> Result<bool> {
        match result {
            LeaderResult::Shared(outcome) => self.send_outcome(session, ctx, outcome, false).await,
            LeaderResult::Stream {
                header,
                body,
                cache_status,
                result,
                storing,
            } => {
                if !storing && wants_part_of(session.req_header(), &header) {
                    // Dropping `body` ends the leader's share of the fill.
                    let status = "ringside; fwd=uri-miss; detail=range-not-stored";
                    return self.pass(ctx, CacheResult::Miss, status);
                }
                ctx.result = result;
                send_stream(session, header, body, &cache_status).await
            }
            LeaderResult::Private {
                object,
                cache_status,
            } => {
                ctx.result = CacheResult::Revalidated;
                let status = HeaderValue::from_str(&cache_status).unwrap_or_else(|_| HIT.clone());
                send_object(session, &object, status, Instant::now()).await
            }
        }
    }

    /// Answer with what a fill produced.
    async fn send_outcome(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        outcome: Outcome,
        collapsed: bool,
    ) -> Result<bool> {
        match outcome {
            Outcome::Fetched {
                object,
                revalidated,
                via_peer,
            } => {
                // A follower may want another variant than the leader fetched.
                if !object.vary.is_empty()
                    && cache_rules::vary_fingerprint(&object.vary, &session.req_header().headers)
                        != object.vary_fingerprint
                {
                    return self.pass(ctx, CacheResult::Miss, "ringside; fwd=vary-miss");
                }
                let (result, status) = match (via_peer, revalidated, collapsed) {
                    (true, _, false) => (CacheResult::Peer, cache_status::FROM_PEER),
                    (true, _, true) => (
                        CacheResult::Peer,
                        "ringside; fwd=uri-miss; collapsed; detail=peer",
                    ),
                    (false, true, false) => (CacheResult::Revalidated, cache_status::REVALIDATED),
                    (false, true, true) => (
                        CacheResult::Revalidated,
                        "ringside; fwd=stale; fwd-status=304; collapsed",
                    ),
                    (false, false, false) => (CacheResult::Miss, cache_status::STORED),
                    (false, false, true) => (
                        CacheResult::Miss,
                        "ringside; fwd=uri-miss; stored; collapsed",
                    ),
                };
                ctx.result = result;
                send_object(
                    session,
                    &object,
                    HeaderValue::from_static(status),
                    Instant::now(),
                )
                .await
            }
            Outcome::UseStale {
                object,
                origin_status,
            } => {
                ctx.result = CacheResult::Stale;
                let status = format!(
                    "ringside; fwd=stale; fwd-status={origin_status}; detail=stale-if-error"
                );
                let status = HeaderValue::from_str(&status).unwrap_or_else(|_| HIT.clone());
                send_object(session, &object, status, Instant::now()).await
            }
            Outcome::NotStored => self.pass(
                ctx,
                CacheResult::Miss,
                "ringside; fwd=uri-miss; detail=not-stored",
            ),
            Outcome::Failed(e) => {
                ctx.result = CacheResult::Error;
                let (body, status) = match e.status() {
                    504 => (
                        "origin timed out\n",
                        "ringside; fwd=uri-miss; detail=origin-timeout",
                    ),
                    _ => (
                        "origin unreachable\n",
                        "ringside; fwd=uri-miss; detail=origin-unreachable",
                    ),
                };
                send_error(session, e.status(), body, status).await
            }
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
        let keys: Vec<String> = uris.iter().map(|u| self.cache_key(target, u)).collect();
        let within = self
            .filler
            .cluster
            .as_ref()
            .map_or(Duration::ZERO, |c| c.invalidation_timeout);
        invalidate::everywhere(&self.filler, target, &keys, &uris, within).await == 0
    }

    /// Let pingora proxy this request to the origin, uncached.
    fn pass(
        &self,
        ctx: &mut RequestCtx,
        result: CacheResult,
        status: &'static str,
    ) -> Result<bool> {
        ctx.result = result;
        ctx.cache_status = status;
        Ok(false)
    }

    /// Ask `owner` unless it is backing off; mirror its answer if the key is hot here.
    fn route_to_owner(&self, cluster: &Cluster, owner: String, key: &str) -> Route {
        let hot = cluster.hot.touch(key);
        if !cluster.health.is_available(&owner) {
            metrics::observe_peer(&owner, "skipped", None);
            return Route::default();
        }
        Route {
            owner: Some(owner),
            mirror: hot.then(|| cluster.hot.store.clone()),
        }
    }

    fn fill_job(
        &self,
        req: &RequestHeader,
        target: &Arc<OriginTarget>,
        key: &str,
        stale: Option<Arc<CachedObject>>,
        rules: RuleOptions,
        route: Route,
    ) -> Job {
        Job {
            owner: route.owner,
            mirror: route.mirror,
            target: target.clone(),
            request: fill_request(req, target),
            key: key.to_owned(),
            stale,
            rules,
            max_object_size: self.config.cache.max_object_size,
        }
    }

    /// Normalise the request's target in place and collapse repeated
    /// Content-Lengths (see `request.rs`). Peers send normalised targets;
    /// one with encoded slashes is refused there rather than proxied.
    fn prepare(&self, req: &mut RequestHeader) -> Result<request::Target, request::Refusal> {
        let slashes = match self.role {
            Role::App => self.config.cache.encoded_slashes,
            Role::Peer => crate::config::EncodedSlashes::Reject,
        };
        let normalized = request::normalized_target(req, slashes)?;
        request::apply(req, &normalized);
        request::collapse_content_length(req);
        Ok(normalized)
    }

    fn rules_for(&self, path: &str) -> (bool, RuleOptions) {
        let rule = self.config.rule_for(path);
        let options = RuleOptions {
            default_ttl: rule.and_then(|r| r.ttl),
            stale_if_error: rule
                .and_then(|r| r.stale_if_error)
                .unwrap_or(self.rule_options.stale_if_error),
            ..self.rule_options.clone()
        };
        (rule.is_some_and(|r| r.bypass), options)
    }
}

/// The singleflight key of a fill. A fill that asks the owner on another
/// node gets a key of its own, so that a request from a peer (which always
/// fills from this node's cache or origin) never joins it: with views that
/// disagree, two nodes each forwarding to the other would otherwise wait on
/// each other until peer_timeout, and the key would not be stored where the
/// asking peer expects it.
fn flight_key(key: String, route: &Route) -> String {
    match route.owner {
        Some(_) => format!("{key}\u{1f}via-peer"),
        None => key,
    }
}

/// Answer a request ringside refuses to act on.
async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    refusal: request::Refusal,
) -> Result<bool> {
    ctx.result = CacheResult::Error;
    send_error(
        session,
        refusal.status,
        refusal.message,
        refusal.cache_status,
    )
    .await
}

/// Request heads larger than this are refused with 431, as nginx and Envoy
/// refuse theirs (pingora alone would accept up to 1 MiB and pass it on).
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// The size of a request head as it arrived (request target and fields);
/// the admin listener applies the same bound.
pub fn header_bytes(req: &RequestHeader) -> usize {
    req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Why a GET/HEAD skips the cache, if it does; else the request's own
/// Cache-Control, parsed once here for the lookup.
fn bypass_reason(req: &RequestHeader, rule_bypass: bool) -> Result<CacheControl, &'static str> {
    let h = &req.headers;
    if rule_bypass {
        return Err("ringside; fwd=bypass; detail=rule");
    }
    if request::has_body(req) {
        return Err("ringside; fwd=bypass; detail=request-body");
    }
    if h.contains_key(header::UPGRADE) {
        return Err("ringside; fwd=bypass; detail=upgrade");
    }
    let client_cc = cache_rules::request_cache_control(h);
    if client_cc.no_store {
        return Err("ringside; fwd=bypass; detail=no-store");
    }
    Ok(client_cc)
}

/// Whether a range request's fill that turned out not storable (or too
/// large) should be left for the origin to answer: a GET with `Range` for a
/// 200. The fill asked for the whole object, to store it; as it will not be
/// stored, the request goes to the origin itself, `Range` and conditionals
/// included, like a follower of such a fill, so that the origin sends the
/// part alone instead of ringside reading (up to all of) a body it cannot
/// keep to cut a part from it. Costs the origin the head of the abandoned
/// response; an origin that ignores `Range` answers a 200, passed on.
fn wants_part_of(req: &RequestHeader, response: &ResponseHeader) -> bool {
    req.method == Method::GET
        && req.headers.contains_key(header::RANGE)
        && response.status == http::StatusCode::OK
}

/// The request a fill sends: GET, origin-form, the client's end-to-end
/// headers minus its own conditionals and `Range`.
///
/// The fill is for the cache and for every request that joins it, so it asks
/// for the whole, current object. The client's `If-None-Match` /
/// `If-Modified-Since` (RFC 9111 §4.3.2) are evaluated against what the fill
/// brings, stored or not: the stored object (`send_object`), or the 200
/// streamed to the leader when it is not storable (`send_stream`); a match
/// is a 304 either way, and a `Range` is cut from it (`range.rs`).
/// Forwarding one client's validators instead would let the origin answer
/// a 304 that neither the cache nor the other waiters can use. Requests that
/// go to the origin on their own keep their conditionals and `Range`, and
/// the origin answers them: bypasses, followers of a fill that is not
/// stored, a range of what is not stored.
fn fill_request(req: &RequestHeader, target: &OriginTarget) -> RequestHeader {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = req.headers.clone();
    strip_hop_by_hop(&mut headers);
    peers::strip_peer_headers(&mut headers);
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
        header::HOST,
        // The fill sends no body, so it announces none.
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    let mut fill =
        RequestHeader::build_no_case(Method::GET, path.as_bytes(), Some(headers.len() + 3))
            .unwrap_or_else(|_| {
                RequestHeader::build_no_case(Method::GET, b"/", None).expect("static")
            });
    let _ = fill.insert_header(header::HOST, target.host_header.clone());
    for (name, value) in headers.iter() {
        let _ = fill.append_header(name.clone(), value.clone());
    }
    fill
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
            cache_status: "ringside; fwd=method",
            origin_started: None,
            is_write: false,
        }
    }

    /// The request head is in: from here on the connection is not under the
    /// head deadline (its body may take as long as it takes).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        connections::head_received(session.as_downstream());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Pipelined requests are answered in order (RFC 9112 §9.3.2) rather
        // than dropped after the first response.
        session.set_pipelining_enabled(true);
        if crate::readiness::is_probe(session.req_header()) {
            return crate::readiness::answer(session).await;
        }
        if let Err(refusal) = request::check_protocol(session.req_header()) {
            return refuse(session, ctx, refusal).await;
        }
        if header_bytes(session.req_header()) > MAX_REQUEST_HEADER_BYTES {
            ctx.result = CacheResult::Error;
            let status = "ringside; fwd=bypass; detail=header-too-large";
            return send_error(session, 431, "request headers too large\n", status).await;
        }
        let target = if self.role == Role::Peer {
            match peer::admit(self, session, ctx).await? {
                Some(target) => Ok(target),
                None => return Ok(true),
            }
        } else {
            self.route(session.req_header())
        };
        let target = match target {
            Ok(target) => target,
            Err((code, message)) => {
                ctx.result = CacheResult::Error;
                return send_error(
                    session,
                    code,
                    message,
                    "ringside; fwd=bypass; detail=refused",
                )
                .await;
            }
        };
        ctx.target = Some(target.clone());
        let normalized = match self.prepare(session.req_header_mut()) {
            Ok(normalized) => normalized,
            Err(refusal) => return refuse(session, ctx, refusal).await,
        };
        if self.role == Role::Peer && peer::handle(self, session, ctx, &target).await? {
            return Ok(true);
        }
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            ctx.is_write = invalidate::is_unsafe(&req.method);
            return self.pass(ctx, CacheResult::Pass, "ringside; fwd=method");
        }
        if matches!(normalized, request::Target::PassUncached) {
            let status = "ringside; fwd=bypass; detail=encoded-slash";
            return self.pass(ctx, CacheResult::Bypass, status);
        }
        let (rule_bypass, rules) = self.rules_for(req.uri.path());
        match bypass_reason(req, rule_bypass) {
            Err(status) => self.pass(ctx, CacheResult::Bypass, status),
            Ok(client_cc) => {
                self.headers.strip(session.req_header_mut());
                self.serve_cacheable(session, ctx, target, rules, client_cc)
                    .await
            }
        }
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
                ctx.cache_status = "ringside; fwd=method; detail=invalidation-incomplete";
            }
        }
        upstream.insert_header(CACHE_STATUS.clone(), ctx.cache_status)?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, body): (u16, &'static str) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "error\n"),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, "origin timed out\n")
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "origin unreachable\n"),
                ErrorSource::Downstream => (400, "bad request\n"),
                _ => (500, "internal error\n"),
            },
        };
        ctx.result = CacheResult::Error;
        if let Some(started) = ctx.origin_started.take() {
            if e.esource() == &ErrorSource::Upstream {
                metrics::observe_origin(None, started.elapsed().as_secs_f64());
            }
        }
        let client_gone = matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        ) && e.esource() == &ErrorSource::Downstream;
        if session.response_written().is_none() && !client_gone {
            let _ = send_error(session, code, body, ctx.cache_status).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        connections::exchange_finished(session.as_downstream());
        if crate::readiness::is_probe(session.req_header()) {
            return;
        }
        if self.role == Role::Peer {
            metrics::observe_peer_served(ctx.result);
            return;
        }
        let method = &session.req_header().method;
        metrics::observe_request(ctx.result, method, ctx.started.elapsed().as_secs_f64());
    }
}
