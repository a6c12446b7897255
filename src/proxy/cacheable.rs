//! The cacheable path: a GET or HEAD the cache may answer, from the lookup
//! to the answer.
//!
//! Look the key up (here, or in the hot mirror of a key another node
//! owns); answer a fresh hit, or a stale one while refreshing it in the
//! background; otherwise lead or join the key's fill (`fill.rs`) and answer
//! with what it brings. A fill's answer may not suit every waiter (another
//! Vary variant, a range of what is not stored): such a request goes to the
//! origin on its own, through pingora's proxy phases.
//!
//! A previous-owner lookup from a peer ([`Ringside::answer_lookup`]) takes
//! none of these ways: it is answered from the cache, or from a fill
//! already under way here, or refused as not cached.

use super::downstream::Downstream;
use super::partial;
use super::policy::Policy;
use super::respond::{send_error, send_interim, send_object, send_refusal, send_stream};
use super::told::{self, told};
use super::{RequestCtx, Ringside, Role};
use crate::cache::keys;
use crate::cache::singleflight::WaitError;
use crate::cache::store::{CachedObject, Entry, Store};
use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::fill::{self, Job, Kept, LeaderResult, NotKept, Outcome, Report, Started};
use crate::metrics::{self, CacheResult};
use crate::net::origin::{OriginTarget, MAX_INTERIM_RESPONSES};
use crate::rfc::cache_rules::{self, CacheControl, RuleOptions};
use crate::rfc::cache_status::{CacheStatus, Detail, Fwd};
use crate::rfc::headers::strip_hop_by_hop;
use bytes::Bytes;
use http::header;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What a request's key has here: the stored object (or mirror) and its
/// variant key, and where a fill would go.
struct Found {
    variant_key: Option<String>,
    stored: Option<Arc<CachedObject>>,
    mirrored: bool,
    /// This node owns the key (always, outside a cluster): read from the
    /// same ring as the lookup.
    owned_here: bool,
    route: Route,
}

impl Found {
    /// What the node's own store has, to be filled from the origin.
    fn in_store((variant_key, stored): (Option<String>, Option<Arc<CachedObject>>)) -> Found {
        Found {
            variant_key,
            stored,
            mirrored: false,
            owned_here: true,
            route: Route::default(),
        }
    }
}

/// Where a miss is filled from: the owner (and whether to mirror its
/// answer), or the origin, after the previous owner if there is one.
#[derive(Default)]
struct Route {
    owner: Option<String>,
    mirror: Option<Arc<Store>>,
    previous_owner: Option<String>,
}

impl Ringside {
    /// The cache key of a (prepared) request, the one place it is built
    /// (the layout is `keys.rs`): the URL's key, then the values of
    /// `cache.key_headers`, then the request's partition when its rule is
    /// `per-credential`, then, for a POST or QUERY its rule caches, its
    /// method and the digest of its body (see `policy.rs`, `body.rs`).
    pub(super) fn request_key(
        &self,
        target: &OriginTarget,
        req: &RequestHeader,
        policy: &Policy,
    ) -> String {
        let mut key = self.node.cache_key(target, &req.uri);
        self.headers.extend_key(&mut key, &req.headers);
        if let Some(partition) = &policy.partition {
            keys::append_partition(&mut key, partition);
        }
        if let Some(digest) = &policy.body_digest {
            keys::append_body(&mut key, req.method.as_str(), digest);
        }
        key
    }

    /// Send the request to the origin on its own, uncached, answering with
    /// `status` (the reason) and counting it as `result`. pingora proxies it,
    /// unless its body was read to key it: then pingora cannot send the body
    /// again, and a fill of its own that stores nothing sends it instead.
    pub(super) async fn go_alone(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        result: CacheResult,
        status: CacheStatus,
    ) -> Result<bool> {
        match ctx.read_body.take() {
            None => self.pass(ctx, result, status),
            Some(body) => {
                ctx.alone = Some((result, status));
                // Boxed: a fill's answer can lead back here (once, since
                // the body is taken), which an async fn cannot hold inline.
                Box::pin(self.send_once(session, ctx, body)).await
            }
        }
    }

    /// A request whose body was read (a POST or QUERY cached by its body)
    /// sent to the origin in a fill of its own that stores nothing and that
    /// no other request joins.
    pub(super) async fn send_once(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<bool> {
        let target = ctx.target.clone().unwrap_or_else(|| self.origin.clone());
        let req = session.req_header();
        let key = keys::once(&self.node.cache_key(&target, &req.uri));
        let found = Found::in_store((None, None));
        let rules = self.rule_options.clone();
        let mut job = self.fill_job(req, &target, &key, found, rules, Some(body));
        job.keep = false;
        let (interim, hints) = mpsc::channel(MAX_INTERIM_RESPONSES);
        job.interim = Some(interim);
        self.fill_and_answer(session, ctx, key, job, hints, false)
            .await
    }

    /// Answer with `object`, saying in Cache-Status the scope the request
    /// used and whether the object is served under an override.
    async fn answer(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        object: &CachedObject,
        status: CacheStatus,
        now: Instant,
    ) -> Result<bool> {
        ctx.overridden = object.overridden;
        let status = status
            .scope(told::scope(ctx.scope))
            .overridden(object.overridden);
        send_object(session, object, status, now).await
    }

    /// The stored entry for a request: the object under the plain key, or
    /// under the variant key when the origin varies. Returns the variant key
    /// (None: the plain key is the one to fill) and the object found, if any.
    /// `get` reads `store`, counting the request for admission or not.
    fn lookup(
        get: impl Fn(&str) -> Option<Entry>,
        key: &str,
        req: &RequestHeader,
    ) -> (Option<String>, Option<Arc<CachedObject>>) {
        match get(key) {
            Some(Entry::Object(object)) => (None, Some(object)),
            Some(Entry::Variants { headers, .. }) => {
                let fingerprint = cache_rules::vary_fingerprint(&headers, &req.headers);
                let variant_key = keys::variant(key, fingerprint);
                match get(&variant_key) {
                    Some(Entry::Object(object)) => (Some(variant_key), Some(object)),
                    _ => (Some(variant_key), None),
                }
            }
            None => (None, None),
        }
    }

    /// Serve a GET or HEAD that the cache may answer.
    pub(super) async fn serve_cacheable(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        target: Arc<OriginTarget>,
        policy: Policy,
        client_cc: CacheControl,
        body: Option<Bytes>,
    ) -> Result<bool> {
        let req = session.req_header();
        let plain_key = self.request_key(&target, req, &policy);
        let rules = policy.rules;
        let found = self.find(req, &plain_key);
        // The request's arrival is "now" for freshness: one clock read less per hit.
        let now = ctx.started;
        if let Some(object) = &found.stored {
            let age = object.age(now);
            let forced = self.node.config.cache.honor_client_no_cache
                && cache_rules::request_requires_revalidation(&client_cc, age, object.freshness);
            let fresh = object.is_fresh(now);
            if forced && fresh {
                // A client made a fresh entry go back to the origin, for everyone.
                metrics::CLIENT_REVALIDATIONS.inc();
            }
            if !forced && fresh {
                ctx.result = CacheResult::Hit;
                object.record_hit();
                if found.mirrored {
                    metrics::HOT_HITS.inc();
                }
                let object = object.clone();
                return self
                    .answer(session, ctx, &object, CacheStatus::HIT, now)
                    .await;
            }
            let swr = object.stale_while_revalidate;
            if !forced && !swr.is_zero() && object.staleness(now) <= swr {
                let object = object.clone();
                let (flight_key, job) = self.fill_for(req, &target, plain_key, found, rules, body);
                // Refresh in the background unless someone already is.
                let _ = fill::start(&self.node.filler, flight_key, job, false);
                ctx.result = CacheResult::Stale;
                let status = CacheStatus::HIT.detail(Detail::StaleWhileRevalidate);
                return self.answer(session, ctx, &object, status, now).await;
            }
        }
        if found.stored.is_none() && found.owned_here {
            if let Some((object, asked)) = self.usable_partial(&plain_key, req, now) {
                ctx.result = CacheResult::Hit;
                object.record_hit();
                return partial::send_part(session, &object, asked, CacheStatus::HIT, now).await;
            }
        }
        if client_cc.only_if_cached {
            ctx.result = CacheResult::Error;
            let status = CacheStatus::forward(Fwd::Miss).detail(Detail::OnlyIfCached);
            return send_error(session, 504, "not in cache (only-if-cached)\n", status).await;
        }
        let head = req.method == Method::HEAD;
        let (flight_key, mut job) = self.fill_for(req, &target, plain_key, found, rules, body);
        if head && job.stale.is_some() {
            // RFC 9111 §4.3.5: revalidate with HEAD; no content for a
            // client that wants none (`fill/head.rs`).
            job.request.set_method(Method::HEAD);
        }
        let (interim, hints) = mpsc::channel(MAX_INTERIM_RESPONSES);
        job.interim = Some(interim);
        // Boxed: a fill's state is most of this path's, and the peer
        // channel spawns this future per request (`channel.rs`): a hit's
        // stays small.
        Box::pin(self.fill_and_answer(session, ctx, flight_key, job, hints, true)).await
    }

    /// Where the request's key stands: stored here, mirrored here (a key
    /// another node owns, app listener only), or to be asked of its owner.
    fn find(&self, req: &RequestHeader, plain_key: &str) -> Found {
        let store = &self.node.filler.store;
        let counted = |key: &str| store.get(key);
        let Some(cluster) = self.node.cluster() else {
            return Found::in_store(Self::lookup(counted, plain_key, req));
        };
        let ring = cluster.ring();
        match cluster.remote_owner(&ring, plain_key) {
            Some(owner) if self.role == Role::App => {
                // A copy left here from an earlier ring still serves, but
                // the request counts for admission at the owner (and in the
                // hot area), not in this store, which would never keep it.
                let uncounted = |key: &str| store.get_uncounted(key);
                let mut found = Found::in_store(Self::lookup(uncounted, plain_key, req));
                found.owned_here = false;
                if found.stored.is_none() {
                    let mirror = |key: &str| cluster.hot.store.get(key);
                    (found.variant_key, found.stored) = Self::lookup(mirror, plain_key, req);
                    found.mirrored = found.stored.is_some();
                    found.route = self.route_to_owner(cluster, owner, plain_key);
                }
                found
            }
            // A peer's request for a key owned elsewhere is served here (the loop guard).
            Some(_) => Found {
                owned_here: false,
                ..Found::in_store(Self::lookup(counted, plain_key, req))
            },
            None => {
                let mut found = Found::in_store(Self::lookup(counted, plain_key, req));
                if found.stored.is_none() {
                    found.route.previous_owner = cluster.previous_owner(&ring, plain_key);
                }
                found
            }
        }
    }

    /// Answer a previous-owner lookup from a peer (`x-ringside-lookup`):
    /// from this node's cache, or from a fill of the key already under way
    /// here (one that is not itself asking a previous owner); else refused
    /// as not cached, and the asker goes to its origin. Never fills, never
    /// forwards, so a lookup cannot loop.
    pub(super) async fn answer_lookup(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        target: &OriginTarget,
    ) -> Result<bool> {
        let req = session.req_header();
        let plain_key = self.request_key(target, req, &self.policy(target, req));
        // The key is the asker's now: its request counts there, not here.
        let uncounted = |key: &str| self.node.filler.store.get_uncounted(key);
        let (variant_key, stored) = Self::lookup(uncounted, &plain_key, req);
        let client_cc = cache_rules::request_cache_control(&req.headers);
        let now = ctx.started;
        if let Some(object) = stored.filter(|o| self.usable_for(o, &client_cc, req, now)) {
            ctx.result = CacheResult::Hit;
            object.record_hit();
            return send_object(session, &object, CacheStatus::HIT, now).await;
        }
        let flight_key = variant_key.unwrap_or(plain_key);
        if let Some(waiter) = fill::follow_for_lookup(&self.node.filler, &flight_key) {
            let timeout = self.node.config.cache.collapse_timeout;
            if let Ok(Outcome::Fetched { object, .. }) = waiter.wait(timeout).await {
                let now = Instant::now();
                if self.usable_for(&object, &client_cc, session.req_header(), now) {
                    ctx.result = CacheResult::Miss;
                    let status = CacheStatus::STORED.collapsed();
                    return send_object(session, &object, status, now).await;
                }
            }
        }
        ctx.result = CacheResult::Miss;
        send_refusal(session, 504, "not in cache\n", peers::NOT_CACHED).await
    }

    /// Whether `object` may answer `req` as it is: fresh, the variant it
    /// asks for, and not sent back to the origin by its Cache-Control.
    pub(super) fn usable_for(
        &self,
        object: &CachedObject,
        client_cc: &CacheControl,
        req: &RequestHeader,
        now: Instant,
    ) -> bool {
        let variant = object.vary.is_empty()
            || cache_rules::vary_fingerprint(&object.vary, &req.headers) == object.vary_fingerprint;
        let forced = self.node.config.cache.honor_client_no_cache
            && cache_rules::request_requires_revalidation(
                client_cc,
                object.age(now),
                object.freshness,
            );
        variant && !forced && object.is_fresh(now)
    }

    /// The flight key and job of a fill for what `find` found.
    fn fill_for(
        &self,
        req: &RequestHeader,
        target: &Arc<OriginTarget>,
        plain_key: String,
        found: Found,
        rules: RuleOptions,
        body: Option<Bytes>,
    ) -> (String, Job) {
        let variant_key = found.variant_key.clone();
        let flight_key = flight_key(
            variant_key.unwrap_or_else(|| plain_key.clone()),
            &found.route,
        );
        let job = self.fill_job(req, target, &plain_key, found, rules, body);
        (flight_key, job)
    }

    /// Lead or follow the key's fill, and answer with what it brings. The
    /// leader is also passed the interim responses before it (`hints`);
    /// `may_fill_range`: a response too large to keep may make it fill its
    /// range instead (`partial.rs`).
    async fn fill_and_answer(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        flight_key: String,
        job: Job,
        hints: mpsc::Receiver<ResponseHeader>,
        may_fill_range: bool,
    ) -> Result<bool> {
        let timeout = self.node.config.cache.collapse_timeout;
        match fill::start(&self.node.filler, flight_key, job, true) {
            // The wait is for the response head: a body that is still
            // arriving is streamed, however long it takes.
            Started::Leading(rx) => match leader_result(session, rx, hints, timeout).await {
                Some(result) => {
                    self.send_leader_result(session, ctx, result, may_fill_range)
                        .await
                }
                // The fill task always answers; a lost answer means it died.
                None => {
                    ctx.result = CacheResult::Error;
                    let body = "origin fetch did not finish\n";
                    send_error(session, 504, body, CacheStatus::forward(Fwd::Miss)).await
                }
            },
            Started::Following(waiter) => match waiter.wait(timeout).await {
                Ok(outcome) => self.send_outcome(session, ctx, outcome, true).await,
                Err(WaitError::Timeout) => {
                    ctx.result = CacheResult::Error;
                    let status = CacheStatus::forward(Fwd::Miss)
                        .collapsed()
                        .detail(Detail::CollapseTimeout);
                    let body = "origin fetch did not finish in time\n";
                    send_error(session, 504, body, status).await
                }
                Err(WaitError::Abandoned) => {
                    // The leader's fill died; fetch for ourselves, uncached.
                    let status = CacheStatus::forward(Fwd::Miss).detail(Detail::Abandoned);
                    self.go_alone(session, ctx, CacheResult::Miss, status).await
                }
            },
        }
    }

    /// Answer the request whose fill this was.
    async fn send_leader_result(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        result: LeaderResult,
        may_fill_range: bool,
    ) -> Result<bool> {
        match result {
            LeaderResult::Shared(outcome) => self.send_outcome(session, ctx, outcome, false).await,
            LeaderResult::Stream {
                header,
                body,
                report,
            } => {
                let storing = !matches!(report.kept, Kept::No(..));
                if !storing && wants_part_of(session.req_header(), &header) {
                    let too_large = matches!(report.kept, Kept::No(NotKept::TooLarge, _));
                    let (target, req) = (self.target_of(ctx), session.req_header());
                    let own =
                        self.owns(&self.request_key(&target, req, &self.policy(&target, req)));
                    if may_fill_range
                        && too_large
                        && partial::fills_its_range(session.req_header(), own)
                    {
                        drop(body); // ends the leader's share of the whole's fill
                        return Box::pin(self.fill_range(session, ctx)).await;
                    }
                    // Dropping `body` ends the leader's share of the fill.
                    let status = CacheStatus::forward(Fwd::UriMiss).detail(Detail::RangeNotStored);
                    return self.pass(ctx, CacheResult::Miss, status);
                }
                let mut cache_status;
                (ctx.result, cache_status) = told(&report, false);
                if let Some((result, status)) = ctx.alone.take() {
                    (ctx.result, cache_status) = (result, status);
                }
                ctx.overridden = report.overridden;
                let cache_status = cache_status.scope(told::scope(ctx.scope));
                send_stream(session, header, body, cache_status).await
            }
            LeaderResult::Private { object, report } => {
                let cache_status;
                (ctx.result, cache_status) = told(&report, false);
                self.answer(session, ctx, &object, cache_status, Instant::now())
                    .await
            }
        }
    }

    /// Answer with what a fill produced.
    async fn send_outcome(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
        outcome: Outcome,
        collapsed: bool,
    ) -> Result<bool> {
        match outcome {
            Outcome::Fetched {
                object,
                revalidated,
                source,
            } => {
                if object.header.status == http::StatusCode::PARTIAL_CONTENT {
                    // A range fill's part: it answers only what it covers.
                    let Some(asked) = partial::covered(&object, session.req_header()) else {
                        let status =
                            CacheStatus::forward(Fwd::UriMiss).detail(Detail::RangeNotStored);
                        return self.pass(ctx, CacheResult::Miss, status);
                    };
                    let status;
                    (ctx.result, status) = told(&Report::fetched(source, revalidated), collapsed);
                    return partial::send_part(session, &object, asked, status, Instant::now())
                        .await;
                }
                // A follower may want another variant than the leader fetched.
                if !object.vary.is_empty()
                    && cache_rules::vary_fingerprint(&object.vary, &session.req_header().headers)
                        != object.vary_fingerprint
                {
                    let status = CacheStatus::forward(Fwd::VaryMiss);
                    return self.go_alone(session, ctx, CacheResult::Miss, status).await;
                }
                let status;
                (ctx.result, status) = told(&Report::fetched(source, revalidated), collapsed);
                self.answer(session, ctx, &object, status, Instant::now())
                    .await
            }
            Outcome::UseStale {
                object,
                origin_status,
            } => {
                ctx.result = CacheResult::Stale;
                let status = CacheStatus::forward(Fwd::Stale)
                    .fwd_status(origin_status)
                    .detail(Detail::StaleIfError);
                self.answer(session, ctx, &object, status, Instant::now())
                    .await
            }
            Outcome::NotStored => {
                let status = CacheStatus::forward(Fwd::UriMiss).detail(Detail::NotStored);
                self.go_alone(session, ctx, CacheResult::Miss, status).await
            }
            Outcome::Failed(e) => {
                ctx.result = CacheResult::Error;
                let (body, detail) = match e.status() {
                    504 => ("origin timed out\n", Detail::OriginTimeout),
                    _ => ("origin unreachable\n", Detail::OriginUnreachable),
                };
                let status = CacheStatus::forward(Fwd::UriMiss).detail(detail);
                send_error(session, e.status(), body, status).await
            }
        }
    }

    /// Fill the range a request asks for, when its whole response is too
    /// large to keep (`partial.rs`): a fill of its own, keyed by the
    /// range, whose `206` becomes the URL's partial entry.
    async fn fill_range(
        &self,
        session: &mut impl Downstream,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let target = self.target_of(ctx);
        let req = session.req_header();
        let policy = self.policy(&target, req);
        let plain_key = self.request_key(&target, req, &policy);
        let rules = policy.rules;
        let Some(range) = req.headers.get(header::RANGE).cloned() else {
            let status = CacheStatus::forward(Fwd::UriMiss).detail(Detail::RangeNotStored);
            return self.pass(ctx, CacheResult::Miss, status);
        };
        let flight_key = keys::range_flight(&plain_key, range.as_bytes());
        let partial_key = keys::partial(&plain_key);
        let found = Found::in_store((None, None));
        let mut job = self.fill_job(req, &target, &partial_key, found, rules, None);
        let _ = job.request.insert_header(header::RANGE, range);
        let (interim, hints) = mpsc::channel(MAX_INTERIM_RESPONSES);
        job.interim = Some(interim);
        self.fill_and_answer(session, ctx, flight_key, job, hints, false)
            .await
    }

    /// The origin this request is for.
    fn target_of(&self, ctx: &RequestCtx) -> Arc<OriginTarget> {
        ctx.target.clone().unwrap_or_else(|| self.origin.clone())
    }

    /// Whether this node owns `plain_key` (always, outside a cluster).
    fn owns(&self, plain_key: &str) -> bool {
        self.node
            .cluster()
            .is_none_or(|cluster| cluster.remote_owner(&cluster.ring(), plain_key).is_none())
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
            previous_owner: None,
        }
    }

    fn fill_job(
        &self,
        req: &RequestHeader,
        target: &Arc<OriginTarget>,
        key: &str,
        found: Found,
        rules: RuleOptions,
        body: Option<Bytes>,
    ) -> Job {
        let route = found.route;
        Job {
            owner: route.owner,
            mirror: route.mirror,
            previous_owner: route.previous_owner,
            interim: None,
            target: target.clone(),
            request: fill_request(req, target, body.as_ref()),
            key: key.to_owned(),
            stale: found.stored,
            rules,
            max_object_size: self.node.config.cache.max_object_size,
            body,
            keep: true,
        }
    }
}

/// The leader's result of its fill, within `timeout` (None: none came, or
/// the fill died); the interim responses that come before it are passed to
/// the client as they arrive (`respond::send_interim`).
async fn leader_result(
    session: &mut impl Downstream,
    mut result: oneshot::Receiver<LeaderResult>,
    mut hints: mpsc::Receiver<ResponseHeader>,
    timeout: std::time::Duration,
) -> Option<LeaderResult> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            // Hints are sent before the result: take them first.
            biased;
            Some(head) = hints.recv() => {
                // A client that cannot take it is gone; the answer says so.
                let _ = send_interim(session, head).await;
            }
            answer = &mut result => return answer.ok(),
            _ = &mut deadline => return None,
        }
    }
}

/// The singleflight key of a fill: its own for one that asks the owner
/// (see `keys::via_peer`).
fn flight_key(key: String, route: &Route) -> String {
    match route.owner {
        Some(_) => keys::via_peer(key),
        None => key,
    }
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

/// The request a fill sends: GET (or, for a POST or QUERY keyed on its
/// body, that method and body), origin-form, the client's end-to-end
/// headers minus its own conditionals and `Range` (a HEAD that revalidates
/// a stale entry makes it a HEAD, see `serve_cacheable`).
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
fn fill_request(req: &RequestHeader, target: &OriginTarget, body: Option<&Bytes>) -> RequestHeader {
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
    // A read keyed by its body (POST, QUERY) sends its method and body.
    let method = match body {
        Some(_) => req.method.clone(),
        None => Method::GET,
    };
    let mut fill = RequestHeader::build_no_case(method, path.as_bytes(), Some(headers.len() + 3))
        .unwrap_or_else(|_| RequestHeader::build_no_case(Method::GET, b"/", None).expect("static"));
    let _ = fill.insert_header(header::HOST, target.host_header.clone());
    if let Some(body) = body {
        let _ = fill.insert_header(header::CONTENT_LENGTH, body.len());
    }
    for (name, value) in headers.iter() {
        let _ = fill.append_header(name.clone(), value.clone());
    }
    fill
}
