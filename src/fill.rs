//! Cache fills: one fetch per key, shared by every request waiting for it,
//! stored when HTTP caching rules allow.
//!
//! The fetch goes to the key's owner when another node owns it (cluster),
//! and to the origin otherwise or when the owner fails; either way it stays
//! inside the one flight, so the waiters are coalesced whatever the source.
//! Own keys are stored in this node's cache; an owner's answer is kept only
//! as a hot mirror, or not at all, so each object lives once cluster-wide.
//!
//! [`start`] joins the key's singleflight. The leader spawns [`run`] in its
//! own task, which owns the flight: if the leader's client disconnects, the
//! task still finishes and stores the object for the followers.
//!
//! What a fill produces:
//! - a storable response small enough to keep is read whole, stored, and
//!   published to everyone as [`Outcome::Fetched`];
//! - anything else (uncacheable, too large, a 304 with nothing to refresh) is
//!   published as [`Outcome::NotStored`] *as soon as its headers arrive*, so
//!   the followers go to the origin on their own at once instead of queueing
//!   behind a response they may not share. The leader alone streams it;
//! - no response at all (refused, timed out) is [`Outcome::Failed`];
//! - a 5xx or failure while a stale copy allows stale-if-error is
//!   [`Outcome::UseStale`].

use crate::cache_rules::{self, RuleOptions};
use crate::cluster::Cluster;
use crate::metrics;
use crate::origin::{
    strip_response_hop_by_hop, FetchError, OriginClient, OriginResponse, OriginTarget,
};
use crate::peers;
use crate::singleflight::{Flight, Group, Join, Waiter};
use crate::store::{CachedObject, Entry, Store};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// What a fill published to everyone waiting on the key.
#[derive(Clone)]
pub enum Outcome {
    /// Fetched (or revalidated with a 304), shareable, and stored where it
    /// belongs (this node's cache; a hot mirror or nowhere when a peer owns it).
    Fetched {
        object: Arc<CachedObject>,
        revalidated: bool,
        /// Answered by the key's owner on another node.
        via_peer: bool,
    },
    /// The origin's answer is not for sharing: fetch your own.
    NotStored,
    /// The origin failed; a stale copy is allowed to answer instead.
    UseStale {
        object: Arc<CachedObject>,
        origin_status: u16,
    },
    /// The origin could not be reached or did not answer in time.
    Failed(FetchError),
}

/// The leader's own result: an outcome, or the unshared response to stream.
pub enum LeaderResult {
    Shared(Outcome),
    Stream {
        header: Box<ResponseHeader>,
        body: mpsc::Receiver<Result<Bytes, FetchError>>,
        reason: &'static str,
    },
}

/// Everything a fill needs, gathered by the proxy from the client's request.
pub struct Job {
    pub target: Arc<OriginTarget>,
    /// The request to send: origin-form, hop-by-hop and conditional headers removed.
    pub request: RequestHeader,
    /// Plain cache key (no variant).
    pub key: String,
    /// The stale copy we hold, if any: revalidated, or served on origin errors.
    pub stale: Option<Arc<CachedObject>>,
    pub rules: RuleOptions,
    pub max_object_size: u64,
    /// The key's owner when it is another node: asked first, the origin
    /// only if it fails (still inside this one flight).
    pub owner: Option<String>,
    /// Where a copy from the owner is kept: the hot area when the key is hot here.
    pub mirror: Option<Arc<Store>>,
}

/// Shared by every fill.
pub struct Filler {
    pub flights: Arc<Group<String, Outcome>>,
    pub client: OriginClient,
    pub store: Arc<Store>,
    pub cluster: Option<Arc<Cluster>>,
}

/// Either lead a fill (the receiver yields this request's own result) or follow one.
pub enum Started {
    Leading(oneshot::Receiver<LeaderResult>),
    Following(Waiter<Outcome>),
}

/// Join the flight for `flight_key`; if leading, spawn the fill.
pub fn start(filler: &Arc<Filler>, flight_key: String, job: Job, want_result: bool) -> Started {
    match filler.flights.join(flight_key) {
        Join::Follower(waiter) => {
            metrics::COALESCED.inc();
            Started::Following(waiter)
        }
        Join::Leader(flight) => {
            let (tx, rx) = oneshot::channel();
            let leader = want_result.then_some(tx);
            tokio::spawn(run(filler.clone(), flight, job, leader));
            Started::Leading(rx)
        }
    }
}

/// The fill itself. Always completes the flight; never panics on input.
async fn run(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    mut job: Job,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    if let Some(stale) = &job.stale {
        for (name, value) in cache_rules::revalidation_headers(&stale.header.headers) {
            // Names and values come from a stored response we already parsed.
            let _ = job.request.insert_header(name, value);
        }
    }
    if job.stale.is_none() {
        // A fill that finished between our lookup and our joining the
        // flight has stored the object already: use it, don't fetch again.
        if let Some(Entry::Object(object)) = filler.store.get(flight.key()) {
            if object.is_fresh(Instant::now()) {
                let outcome = Outcome::Fetched {
                    object,
                    revalidated: false,
                    via_peer: false,
                };
                return publish(flight, leader, outcome);
            }
        }
    }
    let request_headers = job.request.headers.clone();
    let (response, via_peer) = fetch(&filler, &job).await;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            let outcome = match usable_if_error(job.stale.as_ref()) {
                Some(object) => Outcome::UseStale {
                    object,
                    origin_status: e.status(),
                },
                None => Outcome::Failed(e),
            };
            return publish(flight, leader, outcome);
        }
    };
    let status = response.header.status;
    strip_response_hop_by_hop(&mut response.header);
    if via_peer {
        // The owner's own Cache-Status describes its cache, not ours.
        response.header.remove_header("cache-status");
    }
    let store = match via_peer {
        true => job.mirror.clone(),
        false => Some(filler.store.clone()),
    };

    if status.is_server_error() {
        if let Some(object) = usable_if_error(job.stale.as_ref()) {
            response.finish(&filler.client).await;
            let origin_status = status.as_u16();
            return publish(
                flight,
                leader,
                Outcome::UseStale {
                    object,
                    origin_status,
                },
            );
        }
    }

    if status == http::StatusCode::NOT_MODIFIED {
        if let Some(stale) = &job.stale {
            let object = refreshed(stale, &response, &job.rules);
            response.finish(&filler.client).await;
            if let Some(store) = &store {
                store.insert(&job.key, variant_key(&job.key, &object), object.clone());
            }
            let outcome = Outcome::Fetched {
                object,
                revalidated: true,
                via_peer,
            };
            return publish(flight, leader, outcome);
        }
    }

    let verdict = cache_rules::check_storable(
        &http::Method::GET,
        &request_headers,
        status,
        &response.header.headers,
        &job.rules,
    );
    let declared_len = response.content_length();
    let reason = match verdict {
        Err(why) => {
            metrics::observe_not_stored(why.as_str());
            why.as_str()
        }
        Ok(()) if declared_len.is_some_and(|n| n > job.max_object_size) => {
            metrics::TOO_LARGE.inc();
            "too-large"
        }
        Ok(()) => {
            let whole = Whole {
                store,
                via_peer,
                request_headers,
            };
            return store_whole(filler, flight, job, whole, response, leader).await;
        }
    };
    flight.complete(Outcome::NotStored);
    stream_to_leader(&filler, response, Vec::new(), leader, reason).await;
}

/// Where a whole response goes once read.
struct Whole {
    store: Option<Arc<Store>>,
    via_peer: bool,
    request_headers: http::HeaderMap,
}

/// Read a storable response whole, store it and publish it. Falls back to
/// streaming when the body turns out larger than the limit.
async fn store_whole(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    job: Job,
    whole: Whole,
    mut response: OriginResponse,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    let mut body = BytesMut::new();
    loop {
        match response.read_chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > job.max_object_size {
                    metrics::TOO_LARGE.inc();
                    flight.complete(Outcome::NotStored);
                    let prefix = vec![body.freeze(), chunk];
                    return stream_to_leader(&filler, response, prefix, leader, "too-large").await;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                response.finish(&filler.client).await;
                return publish(flight, leader, Outcome::Failed(e));
            }
        }
    }
    let object = build_object(&response, body.freeze(), &whole.request_headers, &job.rules);
    response.finish(&filler.client).await;
    if let Some(store) = &whole.store {
        store.insert(&job.key, variant_key(&job.key, &object), object.clone());
    }
    let outcome = Outcome::Fetched {
        object,
        revalidated: false,
        via_peer: whole.via_peer,
    };
    publish(flight, leader, outcome);
}

/// Ask the owner when another node owns the key; the origin otherwise, or
/// when the owner fails (then it is skipped for a while). True: from a peer.
async fn fetch(filler: &Filler, job: &Job) -> (Result<OriginResponse, FetchError>, bool) {
    if let (Some(owner), Some(cluster)) = (&job.owner, &filler.cluster) {
        let request = peer_request(job, cluster);
        let started = Instant::now();
        match filler
            .client
            .fetch_peer(
                owner,
                &request,
                cluster.peer_timeout,
                cluster.peer_read_timeout,
                cluster.peer_h2c,
            )
            .await
        {
            // A refusal by the peer's gate (bad credentials, say mid secret
            // rotation; an origin it does not serve) is the peer failing, not
            // an answer for the client: load from the origin instead.
            Ok(response) if !refused_by_peer(&response) => {
                cluster.health.record_success(owner);
                metrics::observe_peer(owner, "ok", Some(started.elapsed().as_secs_f64()));
                return (Ok(response), true);
            }
            Ok(refusal) => {
                log::warn!("peer {owner} refused us: {}", refusal.header.status);
                refusal.finish(&filler.client).await;
                cluster.health.record_failure(owner);
                metrics::observe_peer(owner, "error", None);
            }
            Err(_) => {
                cluster.health.record_failure(owner);
                metrics::observe_peer(owner, "error", None);
            }
        }
    }
    (filler.client.fetch(&job.target, &job.request).await, false)
}

/// Whether a peer's answer is its gate refusing the request (`proxy/peer.rs`).
fn refused_by_peer(response: &OriginResponse) -> bool {
    response
        .header
        .headers
        .get("cache-status")
        .is_some_and(|v| v.as_bytes() == peers::REFUSED_STATUS.as_bytes())
}

/// The fill request plus the peer protocol's headers (see `peers.rs`).
fn peer_request(job: &Job, cluster: &Cluster) -> RequestHeader {
    let mut request = job.request.clone();
    let owner = job.owner.as_deref().unwrap_or_default();
    cluster.sign_request(&mut request, &job.target.key_prefix, owner);
    request
}

fn publish(
    flight: Flight<String, Outcome>,
    leader: Option<oneshot::Sender<LeaderResult>>,
    outcome: Outcome,
) {
    if let Some(leader) = leader {
        // The leader's client may be gone; the waiters are served either way.
        let _ = leader.send(LeaderResult::Shared(outcome.clone()));
    }
    flight.complete(outcome);
}

/// Hand an unshared response to the leader and pump its body, stopping (and
/// closing the origin connection) as soon as the leader's client goes away.
async fn stream_to_leader(
    filler: &Filler,
    mut response: OriginResponse,
    prefix: Vec<Bytes>,
    leader: Option<oneshot::Sender<LeaderResult>>,
    reason: &'static str,
) {
    let Some(leader) = leader else {
        return response.finish(&filler.client).await;
    };
    let (tx, rx) = mpsc::channel(16);
    let mut header = response.header.clone();
    header.set_version(http::Version::HTTP_11);
    if has_body(header.status) && header.headers.get(header::CONTENT_LENGTH).is_none() {
        let _ = header.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    let stream = LeaderResult::Stream {
        header: Box::new(header),
        body: rx,
        reason,
    };
    if leader.send(stream).is_err() {
        return response.finish(&filler.client).await;
    }
    for chunk in prefix {
        if tx.send(Ok(chunk)).await.is_err() {
            return response.finish(&filler.client).await;
        }
    }
    loop {
        let next = response.read_chunk().await;
        let end = matches!(next, Ok(None) | Err(_));
        let item = match next {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => break,
            Err(e) => Err(e),
        };
        if tx.send(item).await.is_err() || end {
            break;
        }
    }
    response.finish(&filler.client).await;
}

/// A stale copy that stale-if-error still allows to serve now.
fn usable_if_error(stale: Option<&Arc<CachedObject>>) -> Option<Arc<CachedObject>> {
    let stale = stale?;
    (stale.staleness(Instant::now()) <= stale.stale_if_error && !stale.stale_if_error.is_zero())
        .then(|| stale.clone())
}

/// Where a varying object is stored: the plain key plus its variant's fingerprint.
pub fn variant_key(key: &str, object: &CachedObject) -> Option<String> {
    (!object.vary.is_empty()).then(|| variant_key_for(key, object.vary_fingerprint))
}

pub fn variant_key_for(key: &str, fingerprint: u64) -> String {
    format!("{key}\u{1f}vary={fingerprint:016x}")
}

/// Whether a response with this status has a body to frame: 1xx, 204 and 304
/// never do, and must not announce one (RFC 9112 §6.1, §6.3).
fn has_body(status: http::StatusCode) -> bool {
    !(status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED)
}

/// Turn an origin response and its body into a stored object.
fn build_object(
    response: &OriginResponse,
    body: Bytes,
    request_headers: &http::HeaderMap,
    rules: &RuleOptions,
) -> Arc<CachedObject> {
    let mut header = response.header.clone();
    // The stored copy is sent with a known length, whatever the origin's framing was
    // (a 204 has no body and may not carry a length, RFC 9110 §8.6).
    if has_body(header.status) {
        let _ = header.insert_header(header::CONTENT_LENGTH, body.len());
    }
    ensure_date(&mut header, response.response_time);
    Arc::new(describe(
        header,
        body,
        request_headers,
        rules,
        response.request_time,
        response.response_time,
    ))
}

/// A stored object refreshed by a 304 (RFC 9111 §4.3.4).
fn refreshed(
    stale: &CachedObject,
    response: &OriginResponse,
    rules: &RuleOptions,
) -> Arc<CachedObject> {
    let mut merged = stale.header.headers.clone();
    cache_rules::merge_not_modified(&mut merged, &response.header.headers);
    let mut header = ResponseHeader::build(stale.header.status, Some(merged.len()))
        .unwrap_or_else(|_| stale.header.clone());
    for (name, value) in &merged {
        let _ = header.append_header(name.clone(), value.clone());
    }
    ensure_date(&mut header, response.response_time);
    let mut object = describe(
        header,
        stale.body.clone(),
        &http::HeaderMap::new(),
        rules,
        response.request_time,
        response.response_time,
    );
    object.vary = stale.vary.clone();
    object.vary_fingerprint = stale.vary_fingerprint;
    Arc::new(object)
}

fn describe(
    header: ResponseHeader,
    body: Bytes,
    request_headers: &http::HeaderMap,
    rules: &RuleOptions,
    request_time: SystemTime,
    response_time: SystemTime,
) -> CachedObject {
    let cc = cache_rules::CacheControl::parse(&header.headers);
    let freshness = cache_rules::freshness_lifetime(&header.headers, &cc, response_time, rules);
    let stale = cache_rules::stale_windows(&cc);
    let has_validators = header.headers.contains_key(header::ETAG)
        || header.headers.contains_key(header::LAST_MODIFIED);
    let vary = match cache_rules::vary(&header.headers) {
        cache_rules::Vary::Headers(names) => names,
        _ => Vec::new(),
    };
    let vary_fingerprint = cache_rules::vary_fingerprint(&vary, request_headers);
    let initial_age = cache_rules::initial_age(&header.headers, request_time, response_time);
    CachedObject {
        initial_age,
        received_at: Instant::now(),
        received_wall: response_time,
        freshness,
        stale_while_revalidate: stale.while_revalidate,
        stale_if_error: stale.if_error,
        revalidation_window: if has_validators {
            REVALIDATION_WINDOW
        } else {
            Duration::ZERO
        },
        vary,
        vary_fingerprint,
        header: with_serving_slots(header),
        body,
    }
}

/// The stored head as it will be served: without pingora's header-case map
/// (lowercase names on the wire), and with `age` and `cache-status` already
/// present, so that a hit overwrites two values in its clone instead of
/// growing it (see `respond::send_object`). Called after everything that
/// reads the origin's own Age.
fn with_serving_slots(header: ResponseHeader) -> ResponseHeader {
    let mut parts: http::response::Parts = header.into();
    parts
        .headers
        .insert(header::AGE, http::HeaderValue::from_static("0"));
    parts.headers.insert(
        crate::proxy::CACHE_STATUS.clone(),
        crate::proxy::HIT.clone(),
    );
    ResponseHeader::from(parts)
}

/// How long past freshness an object with validators is kept, so that it can
/// be revalidated with a cheap 304 instead of fetched again.
const REVALIDATION_WINDOW: Duration = Duration::from_secs(300);

/// A cache must have a Date to compute age; origins that omit it get one.
/// Stored responses are served as HTTP/1.1 whatever the origin spoke.
fn ensure_date(header: &mut ResponseHeader, at: SystemTime) {
    header.set_version(http::Version::HTTP_11);
    if !header.headers.contains_key(header::DATE) {
        let _ = header.insert_header(header::DATE, httpdate::fmt_http_date(at));
    }
}
