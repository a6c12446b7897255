//! Cache fills: one fetch per key, shared by every request waiting for it,
//! stored when HTTP caching rules allow.
//!
//! The fetch goes to the key's owner when another node owns it (cluster),
//! and to the origin otherwise or when the owner fails; either way it stays
//! inside the one flight, so the waiters are coalesced whatever the source.
//! Own keys are stored in this node's cache; an owner's answer is kept only
//! as a hot mirror, or not at all, so each object lives once cluster-wide.
//!
//! A key this node owns since a recent membership change is first asked of
//! its previous owner (`cluster::previous_owner`), still inside the flight:
//! a *lookup*, which that node answers from its cache or from a fill already
//! under way there, never from its origin ([`follow_for_lookup`]). So while
//! the cluster changes, a key is still fetched from the origin once. A
//! lookup never waits on a flight that is itself asking a previous owner
//! ([`AskingPrevious`]): two nodes asking each other cannot wait on each
//! other.
//!
//! [`start`] joins the key's singleflight. The leader spawns [`run`] in its
//! own task, which owns the flight: if the leader's client disconnects, the
//! task still finishes and stores the object for the followers.
//!
//! What a fill produces:
//! - a storable response of 16 KiB or less (by its Content-Length: a peer
//!   hop's answer, usually) is read whole, stored and published to everyone,
//!   the leader included, as [`Outcome::Fetched`] ([`store_whole`]);
//! - a larger storable response small enough to keep is streamed to the
//!   leader as it arrives and read whole at the same time; once complete it
//!   is stored and published to the followers as [`Outcome::Fetched`].
//!   Either way, bytes arriving count as progress, so followers wait for a
//!   slow body as long as it flows (`collapse_timeout` bounds the wait for
//!   the head), and a slow leader never holds up the store (see
//!   [`LeaderStream`]);
//! - anything else (uncacheable, too large) is published as
//!   [`Outcome::NotStored`] *as soon as its headers arrive*, so the followers
//!   go to the origin on their own at once instead of queueing behind a
//!   response they may not share. The leader alone streams it;
//! - a 304 refreshes the stale copy; what is one client's in it (Set-Cookie)
//!   goes to that client alone, and a 304 that makes the response
//!   unshareable evicts the copy (see [`revalidated`]);
//! - no response at all (refused, timed out) is [`Outcome::Failed`];
//! - a 5xx or failure while a stale copy allows stale-if-error is
//!   [`Outcome::UseStale`].

use crate::cache::singleflight::{Flight, Group, Join, Waiter};
use crate::cache::store::footprint;
use crate::cache::store::{ensure_date, has_body, CachedObject, Entry, Epoch, Store};
use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::metrics::{self, CacheResult};
use crate::net::origin::{
    strip_response_hop_by_hop, FetchError, OriginClient, OriginResponse, OriginTarget,
};
use crate::rfc::cache_rules::{self, RuleOptions};
use crate::rfc::cache_status::{CacheStatus, Detail, Fwd};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

/// What a fill published to everyone waiting on the key.
#[derive(Clone)]
pub enum Outcome {
    /// Fetched (or revalidated with a 304), shareable, and stored where it
    /// belongs (this node's cache; a hot mirror or nowhere when a peer owns it).
    Fetched {
        object: Arc<CachedObject>,
        revalidated: bool,
        /// Who answered the fill.
        source: Source,
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

/// Who answered a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Origin,
    /// The key's owner on another node.
    Owner,
    /// The key's previous owner, from its cache: stored here, the new owner.
    PreviousOwner,
}

impl Source {
    fn is_peer(self) -> bool {
        self != Source::Origin
    }

    /// The Cache-Status of a fresh answer from this source.
    pub fn cache_status(self) -> CacheStatus {
        match self {
            Source::Origin => CacheStatus::STORED,
            Source::Owner => CacheStatus::FROM_PEER,
            Source::PreviousOwner => CacheStatus::FROM_PREVIOUS_OWNER,
        }
    }

    /// How a request answered from this source is counted.
    pub fn result(self) -> CacheResult {
        match self {
            Source::Origin => CacheResult::Miss,
            _ => CacheResult::Peer,
        }
    }
}

/// The leader's own result: what everyone got, or a response for it alone.
pub enum LeaderResult {
    /// The outcome every waiter got.
    Shared(Outcome),
    /// A response streamed to the leader as it arrives. Either it is not for
    /// sharing, or it is being stored at the same time: then the followers
    /// get it once it is complete.
    Stream {
        header: Box<ResponseHeader>,
        body: mpsc::Receiver<Result<Bytes, FetchError>>,
        cache_status: CacheStatus,
        result: CacheResult,
        /// Read whole for the followers (and stored) as it streams; false:
        /// for the leader alone (not storable, too large).
        storing: bool,
    },
    /// The stale copy refreshed by a 304, for the leader alone: the 304
    /// carried fields for this one client (Set-Cookie), or made the response
    /// unshareable (see [`revalidated`]).
    Private {
        object: Arc<CachedObject>,
        cache_status: CacheStatus,
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
    /// The key's previous owner, when this node owns it since a recent
    /// membership change: looked up first, the origin only if it has no copy.
    pub previous_owner: Option<String>,
    /// Where a copy from the owner is kept: the hot area when the key is hot here.
    pub mirror: Option<Arc<Store>>,
}

/// Shared by every fill.
pub struct Filler {
    pub flights: Arc<Group<String, Outcome>>,
    pub client: OriginClient,
    pub store: Arc<Store>,
    pub cluster: Option<Arc<Cluster>>,
    pub asking_previous: AskingPrevious,
}

/// The flights asking a previous owner right now, by flight key.
#[derive(Default)]
pub struct AskingPrevious(Mutex<HashSet<String>>);

/// A flight's mark in [`AskingPrevious`], removed when dropped.
struct Asking<'a> {
    set: &'a AskingPrevious,
    key: String,
}

impl AskingPrevious {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, key: &str) -> Asking<'_> {
        self.lock().insert(key.to_owned());
        Asking {
            set: self,
            key: key.to_owned(),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.lock().contains(key)
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

/// For a previous-owner lookup from a peer: the fill of `flight_key`
/// under way here, to wait on, unless it is asking a previous owner itself.
/// Never starts a fill.
pub fn follow_for_lookup(filler: &Filler, flight_key: &str) -> Option<Waiter<Outcome>> {
    if filler.asking_previous.contains(flight_key) {
        return None;
    }
    filler.flights.follow(&flight_key.to_owned())
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

/// The fill itself, in three steps: ask (the owner or the origin,
/// conditionally when there is a stale copy), sort the answer (failure,
/// 5xx with a usable stale copy, 304, storable or not), hand it on. Always
/// completes the flight; never panics on input.
async fn run(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    mut job: Job,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    if let Some(stored) = stored_meanwhile(&filler, &flight, &job) {
        return publish(flight, leader, stored);
    }
    add_validators(&mut job);
    let request_headers = job.request.headers.clone();
    let since = Epoch::now();
    let (response, source) = fetch(&filler, &job, flight.key()).await;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => return publish(flight, leader, failure(job.stale.as_ref(), e)),
    };
    clean_response(&mut response, source.is_peer());
    let whole = Whole {
        store: match source {
            Source::Owner => job.mirror.clone(),
            _ => Some(filler.store.clone()),
        },
        since,
        source,
        request_headers,
    };
    let status = response.header.status;
    if status.is_server_error() {
        if let Some(object) = usable_if_error(job.stale.as_ref()) {
            response.finish(&filler.client).await;
            let origin_status = status.as_u16();
            let outcome = Outcome::UseStale {
                object,
                origin_status,
            };
            return publish(flight, leader, outcome);
        }
    }
    if status == http::StatusCode::NOT_MODIFIED {
        if let Some(stale) = job.stale.clone() {
            let refresh = Refresh {
                stale,
                not_modified: response.header.clone(),
                request_time: response.request_time,
                response_time: response.response_time,
            };
            response.finish(&filler.client).await;
            return revalidated(&filler, flight, &job, &whole, refresh, leader);
        }
    }
    match not_storable_because(&job, &whole, &response) {
        None if reads_whole(&job, &response) => {
            store_whole(filler, flight, job, whole, response, leader).await
        }
        None => store_streaming(filler, flight, job, whole, response, leader).await,
        Some(reason) => {
            flight.complete(Outcome::NotStored);
            let cache_status = not_stored_status(status, reason);
            let head = leader_head(&response, None);
            let out = LeaderStream::open(leader, head, cache_status, source, false);
            pump(&filler, response, out).await;
        }
    }
}

/// A fill that finished between our lookup and our joining the flight has
/// stored the object already: use it, don't fetch again.
fn stored_meanwhile(
    filler: &Filler,
    flight: &Flight<String, Outcome>,
    job: &Job,
) -> Option<Outcome> {
    if job.stale.is_some() {
        return None;
    }
    match filler.store.get_uncounted(flight.key()) {
        Some(Entry::Object(object)) if object.is_fresh(Instant::now()) => Some(Outcome::Fetched {
            object,
            revalidated: false,
            source: Source::Origin,
        }),
        _ => None,
    }
}

/// Revalidate the stale copy, if there is one (RFC 9111 §4.3.1).
fn add_validators(job: &mut Job) {
    if let Some(stale) = &job.stale {
        for (name, value) in cache_rules::revalidation_headers(&stale.header.headers) {
            // Names and values come from a stored response we already parsed.
            let _ = job.request.insert_header(name, value);
        }
    }
}

/// What no response of ours passes on: hop-by-hop fields, the owner's own
/// Cache-Status (it describes its cache, not ours), and peer-protocol
/// fields an origin may have sent.
fn clean_response(response: &mut OriginResponse, via_peer: bool) {
    strip_response_hop_by_hop(&mut response.header);
    if via_peer {
        response.header.remove_header("cache-status");
    } else {
        response.header.remove_header(&peers::REFUSED);
    }
}

/// Whether `head` may be stored, as the answer to this fill's GET.
fn judge(job: &Job, whole: &Whole, head: &ResponseHeader) -> Result<(), cache_rules::NotStorable> {
    let get = http::Method::GET;
    cache_rules::check_storable(
        &get,
        &whole.request_headers,
        head.status,
        &head.headers,
        &job.rules,
    )
}

/// Why this response is not stored (counted), or None when it is.
fn not_storable_because(job: &Job, whole: &Whole, response: &OriginResponse) -> Option<Detail> {
    match judge(job, whole, &response.header) {
        Err(why) => {
            metrics::observe_not_stored(why.as_str());
            Some(Detail::NotStorable(why))
        }
        Ok(())
            if response
                .content_length()
                .is_some_and(|n| n > job.max_object_size) =>
        {
            metrics::TOO_LARGE.inc();
            Some(Detail::TooLarge)
        }
        Ok(()) => None,
    }
}

/// Where a whole response goes once read.
struct Whole {
    store: Option<Arc<Store>>,
    /// Taken before the fetch: a removal of the key after it wins.
    since: Epoch,
    source: Source,
    request_headers: http::HeaderMap,
}

/// Bodies announced (by Content-Length) at most this long are read whole
/// before anyone is answered: they arrive in a segment or a few, and the
/// leader is then answered like a hit, without a stream of its own. The
/// usual case is a peer hop, whose answer comes from the owner's cache.
const READ_WHOLE_UP_TO: u64 = 16 * 1024;

/// Whether this storable response is read whole before answering (see
/// [`READ_WHOLE_UP_TO`]).
fn reads_whole(job: &Job, response: &OriginResponse) -> bool {
    response
        .content_length()
        .is_some_and(|n| n <= READ_WHOLE_UP_TO.min(job.max_object_size))
}

/// Read a small storable response whole, store it, and answer the leader
/// and the followers with it. A body that breaks off is a failed fill for
/// everyone, the leader included: no head has gone out yet.
async fn store_whole(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    job: Job,
    whole: Whole,
    mut response: OriginResponse,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    let announced = response.content_length().unwrap_or(0);
    let mut body = BytesMut::with_capacity(announced as usize);
    loop {
        match response.read_chunk().await {
            Ok(Some(chunk)) if (body.len() + chunk.len()) as u64 <= announced => {
                flight.progress();
                body.extend_from_slice(&chunk);
            }
            // More than announced: pingora's framing never gives that; refuse it.
            Ok(Some(_)) => {
                response.finish(&filler.client).await;
                return publish(
                    flight,
                    leader,
                    failure(job.stale.as_ref(), FetchError::Unreachable),
                );
            }
            Ok(None) => break,
            Err(e) => {
                response.finish(&filler.client).await;
                return publish(flight, leader, failure(job.stale.as_ref(), e));
            }
        }
    }
    match keep(&filler, &job, &whole, response, body).await {
        (outcome, None) => publish(flight, leader, outcome),
        (outcome, Some(own)) => {
            // Fields for this one client: the followers get the shared copy.
            flight.complete(outcome);
            send_private(leader, own, whole.source.cache_status());
        }
    }
}

/// A response read whole: made an object, its connection returned, stored
/// where it belongs, as the outcome for everyone waiting; and, when the
/// response keeps fields for the client it was fetched for, that client's
/// own copy (see [`CachedObject::for_sharing`]).
async fn keep(
    filler: &Filler,
    job: &Job,
    whole: &Whole,
    mut response: OriginResponse,
    body: BytesMut,
) -> (Outcome, Option<Arc<CachedObject>>) {
    let body = footprint::exact_body(body);
    let object = build_object(&mut response, body, &whole.request_headers, &job.rules);
    let (object, own) = object.for_sharing(&job.rules);
    response.finish(&filler.client).await;
    if let Some(store) = &whole.store {
        let variant = object.variant_key(&job.key);
        store.insert_fetched(whole.since, &job.key, variant, object.clone());
    }
    let outcome = Outcome::Fetched {
        object,
        revalidated: false,
        source: whole.source,
    };
    (outcome, own)
}

/// Read a storable response whole for the cache while streaming it to the
/// leader, then store it and hand it to the followers. Bytes flowing count as
/// progress, so followers wait for a slow but healthy body (`collapse_timeout`
/// bounds the wait for the response head, not for the body). A body that
/// turns out larger than the limit is not stored: the followers are released
/// at once and the leader gets the rest.
async fn store_streaming(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    job: Job,
    whole: Whole,
    mut response: OriginResponse,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    let initial_age = cache_rules::initial_age(
        &response.header.headers,
        response.request_time,
        response.response_time,
    );
    // The head goes out before the body is in: with a known length within
    // the limit the object will be stored; without one, that is known only
    // at the end (a body past max_object_size is not stored).
    let cache_status = match (whole.source, response.content_length()) {
        (Source::Origin, None) => CacheStatus::forward(Fwd::UriMiss).detail(Detail::Storing),
        (source, _) => source.cache_status(),
    };
    let head = leader_head(&response, Some(initial_age));
    let mut out = LeaderStream::open(leader, head, cache_status, whole.source, true);
    flight.progress();
    let capacity = response
        .content_length()
        .unwrap_or(0)
        .min(job.max_object_size);
    let mut body = BytesMut::with_capacity(capacity as usize);
    // The last chunk read is held back until the next arrives, and the final
    // one until the object is stored: a client that has the whole body can
    // count on its next request finding the object.
    let mut held: Option<Bytes> = None;
    loop {
        match response.read_chunk().await {
            Ok(Some(chunk)) => {
                flight.progress();
                out.push_held(&mut held);
                if (body.len() + chunk.len()) as u64 > job.max_object_size {
                    metrics::TOO_LARGE.inc();
                    flight.complete(Outcome::NotStored);
                    out.push(Ok(chunk));
                    return pump(&filler, response, out).await;
                }
                body.extend_from_slice(&chunk);
                held = Some(chunk);
            }
            Ok(None) => break,
            Err(e) => {
                response.finish(&filler.client).await;
                flight.complete(failure(job.stale.as_ref(), e));
                out.push_held(&mut held);
                out.send(Err(e)).await;
                return;
            }
        }
    }
    // The leader's head, fields for it alone included, is out already.
    let (outcome, _own) = keep(&filler, &job, &whole, response, body).await;
    flight.complete(outcome);
    // The followers are served; the leader takes the rest at its own pace.
    out.push_held(&mut held);
    out.flush().await;
}

/// A 304 from the origin (or owner) and the stale copy it answers for.
struct Refresh {
    stale: Arc<CachedObject>,
    not_modified: ResponseHeader,
    request_time: SystemTime,
    response_time: SystemTime,
}

/// A 304 refreshed the stale copy (RFC 9111 §4.3.4). A Set-Cookie in the 304
/// belongs to the client whose request caused it: it goes to the leader and
/// never into the store (a background refresh, with no leader, drops it).
/// The stored body is still the one everyone shares, so the merged response
/// without that cookie is judged again as if it were new: when it may no
/// longer be stored (the 304 said `private` or `no-store`, say), the stale
/// copy is evicted and only the leader gets the response.
fn revalidated(
    filler: &Filler,
    flight: Flight<String, Outcome>,
    job: &Job,
    whole: &Whole,
    refresh: Refresh,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    let (shared, unshared) = refreshed(&refresh, &job.rules, false).for_sharing(&job.rules);
    let for_leader = refreshed(&refresh, &job.rules, true);
    let verdict = judge(job, whole, &shared.header);
    match verdict {
        Ok(()) => {
            if let Some(store) = &whole.store {
                let variant = shared.variant_key(&job.key);
                store.insert_fetched(whole.since, &job.key, variant, shared.clone());
            }
            let outcome = Outcome::Fetched {
                object: shared,
                revalidated: true,
                source: whole.source,
            };
            let cookie = refresh
                .not_modified
                .headers
                .contains_key(header::SET_COOKIE);
            if !cookie && unshared.is_none() {
                return publish(flight, leader, outcome);
            }
            flight.complete(outcome);
            send_private(leader, for_leader, CacheStatus::REVALIDATED);
        }
        Err(why) => {
            metrics::observe_not_stored(why.as_str());
            evict(filler, job, &refresh.stale);
            flight.complete(Outcome::NotStored);
            let status = CacheStatus::REVALIDATED.detail(Detail::NotStorable(why));
            send_private(leader, for_leader, status);
        }
    }
}

fn send_private(
    leader: Option<oneshot::Sender<LeaderResult>>,
    object: Arc<CachedObject>,
    cache_status: CacheStatus,
) {
    if let Some(leader) = leader {
        // The leader's client may be gone; nobody else may have this one.
        let _ = leader.send(LeaderResult::Private {
            object,
            cache_status,
        });
    }
}

/// Remove a stored copy that may no longer be served to anyone, wherever it
/// lives (this node's cache or its hot mirrors).
fn evict(filler: &Filler, job: &Job, stale: &CachedObject) {
    let key = stale
        .variant_key(&job.key)
        .unwrap_or_else(|| job.key.clone());
    filler.store.remove(&key);
    if let Some(cluster) = &filler.cluster {
        cluster.hot.store.remove(&key);
    }
}

/// What waiters get when the fetch failed: the stale copy if stale-if-error allows it.
fn failure(stale: Option<&Arc<CachedObject>>, e: FetchError) -> Outcome {
    match usable_if_error(stale) {
        Some(object) => Outcome::UseStale {
            object,
            origin_status: e.status(),
        },
        None => Outcome::Failed(e),
    }
}

/// The Cache-Status of a response streamed to its leader without being stored.
fn not_stored_status(status: http::StatusCode, reason: Detail) -> CacheStatus {
    CacheStatus::forward(Fwd::UriMiss)
        .fwd_status(status.as_u16())
        .detail(reason)
}

/// Ask the owner when another node owns the key; else the previous owner
/// when there is one (and no stale copy to revalidate); the origin otherwise,
/// or when they fail or have no copy (a failed peer is skipped for a while).
async fn fetch(
    filler: &Filler,
    job: &Job,
    flight_key: &str,
) -> (Result<OriginResponse, FetchError>, Source) {
    if let Some(cluster) = &filler.cluster {
        if let Some(owner) = &job.owner {
            let request = peer_request(job, cluster, owner, false);
            if let Asked::Answered(response) = ask_peer(filler, cluster, owner, &request).await {
                return (Ok(*response), Source::Owner);
            }
        } else if let (Some(previous), None) = (&job.previous_owner, &job.stale) {
            let _asking = filler.asking_previous.enter(flight_key);
            let request = peer_request(job, cluster, previous, true);
            let asked = ask_peer(filler, cluster, previous, &request).await;
            metrics::observe_previous_owner_lookup(asked.as_str());
            if let Asked::Answered(response) = asked {
                return (Ok(*response), Source::PreviousOwner);
            }
        }
    }
    (
        filler.client.fetch(&job.target, &job.request).await,
        Source::Origin,
    )
}

/// What asking a peer brought.
enum Asked {
    /// Its answer, for the fill (boxed: a response is large, the others empty).
    Answered(Box<OriginResponse>),
    /// A lookup it had no copy for: not a failure.
    NotCached,
    /// It failed or refused (bad credentials, say mid secret rotation; an
    /// origin it does not serve): recorded, and skipped for a while.
    Failed,
}

impl Asked {
    fn as_str(&self) -> &'static str {
        match self {
            Asked::Answered(_) => "hit",
            Asked::NotCached => "miss",
            Asked::Failed => "error",
        }
    }
}

/// Send `request` to the peer `addr`, recording how it went. A refusal by
/// the peer's gate (`proxy/peer.rs`) is the peer failing, not an answer for
/// the client, except a lookup's "not cached".
async fn ask_peer(
    filler: &Filler,
    cluster: &Cluster,
    addr: &str,
    request: &RequestHeader,
) -> Asked {
    let started = Instant::now();
    let response = filler
        .client
        .fetch_peer(
            addr,
            request,
            cluster.peer_timeout,
            cluster.peer_read_timeout,
            cluster.peer_h2c,
        )
        .await;
    let asked = match response {
        Ok(response) => match refusal_reason(&response) {
            None => Asked::Answered(Box::new(response)),
            Some(reason) => {
                let not_cached = reason == peers::NOT_CACHED.as_bytes();
                if !not_cached {
                    let why = String::from_utf8_lossy(reason);
                    log::warn!("peer {addr} refused us: {} {why}", response.header.status);
                }
                response.finish(&filler.client).await;
                match not_cached {
                    true => Asked::NotCached,
                    false => Asked::Failed,
                }
            }
        },
        Err(_) => Asked::Failed,
    };
    match asked {
        Asked::Failed => {
            cluster.health.record_failure(addr);
            metrics::observe_peer(addr, "error", None);
        }
        _ => {
            cluster.health.record_success(addr);
            metrics::observe_peer(addr, "ok", Some(started.elapsed().as_secs_f64()));
        }
    }
    asked
}

/// Why a peer's gate refused the request (`proxy/peer.rs`), if it did.
fn refusal_reason(response: &OriginResponse) -> Option<&[u8]> {
    response
        .header
        .headers
        .get(&peers::REFUSED)
        .map(|v| v.as_bytes())
}

/// The fill request plus the peer protocol's headers (see `peers.rs`), for
/// the peer `to`; a `lookup` asks for its cached copy only.
fn peer_request(job: &Job, cluster: &Cluster, to: &str, lookup: bool) -> RequestHeader {
    let mut request = job.request.clone();
    if lookup {
        let _ = request.insert_header(peers::LOOKUP.clone(), "1");
    }
    cluster.sign_request(&mut request, &job.target.key_prefix, to);
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

/// The leader's end of a streamed response. Chunks the leader has not taken
/// yet wait in a backlog instead of holding up the fill, so a slow client
/// never delays the store or the followers; the backlog is at most the object
/// being stored (`max_object_size`). Once nothing more is to be stored, the
/// rest is handed over at the leader's pace ([`pump`]).
struct LeaderStream {
    tx: Option<mpsc::Sender<Result<Bytes, FetchError>>>,
    /// Counted in `ringside_response_body_bytes` while it waits.
    backlog: metrics::HeldChunks<FetchError>,
}

impl LeaderStream {
    /// Hand `header` to the leader, if there is one and it is still waiting.
    fn open(
        leader: Option<oneshot::Sender<LeaderResult>>,
        header: ResponseHeader,
        cache_status: CacheStatus,
        source: Source,
        storing: bool,
    ) -> LeaderStream {
        let tx = leader.and_then(|leader| {
            let (tx, body) = mpsc::channel(16);
            let result = source.result();
            let stream = LeaderResult::Stream {
                header: Box::new(header),
                body,
                cache_status,
                result,
                storing,
            };
            leader.send(stream).ok().map(|_| tx)
        });
        LeaderStream {
            tx,
            backlog: metrics::HeldChunks::new(),
        }
    }

    /// Queue a chunk for the leader without waiting for it.
    fn push(&mut self, item: Result<Bytes, FetchError>) {
        let Some(tx) = &self.tx else { return };
        self.backlog.push_back(item);
        while let Some(item) = self.backlog.pop_front() {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.backlog.push_front(item);
                    return;
                }
                Err(TrySendError::Closed(_)) => return self.close(),
            }
        }
    }

    /// Queue the chunk held back in `held`, if any.
    fn push_held(&mut self, held: &mut Option<Bytes>) {
        if let Some(chunk) = held.take() {
            self.push(Ok(chunk));
        }
    }

    /// Hand over the backlog, waiting for the leader to take it. False when
    /// there is no leader (any more).
    async fn flush(&mut self) -> bool {
        let Some(tx) = &self.tx else { return false };
        while let Some(item) = self.backlog.pop_front() {
            if tx.send(item).await.is_err() {
                self.close();
                return false;
            }
        }
        true
    }

    /// Queue `item` and hand everything over.
    async fn send(&mut self, item: Result<Bytes, FetchError>) -> bool {
        if self.tx.is_some() {
            self.backlog.push_back(item);
        }
        self.flush().await
    }

    fn close(&mut self) {
        self.tx = None;
        self.backlog.clear();
    }
}

/// Pass the rest of a response body to the leader at its pace, stopping (and
/// closing the origin connection) as soon as the leader's client goes away.
async fn pump(filler: &Filler, mut response: OriginResponse, mut out: LeaderStream) {
    while out.flush().await {
        match response.read_chunk().await {
            Ok(Some(chunk)) => out.push(Ok(chunk)),
            Ok(None) => break,
            Err(e) => {
                out.send(Err(e)).await;
                break;
            }
        }
    }
    response.finish(&filler.client).await;
}

/// The head the leader's client gets for a streamed response: HTTP/1.1
/// framing (chunked when the length is unknown) and, when it is being
/// stored, the Date and Age a hit on it would carry.
fn leader_head(response: &OriginResponse, stored_age: Option<Duration>) -> ResponseHeader {
    let mut header = response.header.clone();
    header.set_version(http::Version::HTTP_11);
    if has_body(header.status) && header.headers.get(header::CONTENT_LENGTH).is_none() {
        let _ = header.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    if let Some(age) = stored_age {
        ensure_date(&mut header, response.response_time);
        let _ = header.insert_header(header::AGE, age.as_secs());
    }
    header
}

/// A stale copy that stale-if-error still allows to serve now.
fn usable_if_error(stale: Option<&Arc<CachedObject>>) -> Option<Arc<CachedObject>> {
    let stale = stale?;
    (stale.staleness(Instant::now()) <= stale.stale_if_error && !stale.stale_if_error.is_zero())
        .then(|| stale.clone())
}

/// Turn an origin response and its body into a stored object.
fn build_object(
    response: &mut OriginResponse,
    body: Bytes,
    request_headers: &http::HeaderMap,
    rules: &RuleOptions,
) -> Arc<CachedObject> {
    // The object takes the head: the response is only finished after this.
    let empty = ResponseHeader::build(response.header.status, Some(0));
    let header = match empty {
        Ok(empty) => std::mem::replace(&mut response.header, empty),
        Err(_) => response.header.clone(),
    };
    let (requested, responded) = (response.request_time, response.response_time);
    let object =
        CachedObject::from_response(header, body, request_headers, rules, requested, responded);
    Arc::new(object)
}

/// The stale copy's head updated by the 304 (see
/// [`CachedObject::refreshed_by`]).
fn refreshed(refresh: &Refresh, rules: &RuleOptions, with_set_cookie: bool) -> Arc<CachedObject> {
    let times = (refresh.request_time, refresh.response_time);
    let headers = &refresh.not_modified.headers;
    Arc::new(
        refresh
            .stale
            .refreshed_by(headers, rules, times, with_set_cookie),
    )
}
