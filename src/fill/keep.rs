//! Keeping what a fill fetched: a small storable response read whole and
//! then published ([`store_whole`]), a larger one streamed to the leader
//! while it is read whole for the store ([`store_streaming`]), a 304 that
//! refreshes the stale copy ([`revalidated`]). Whatever is stored passes
//! the store's removal epochs, so a write or purge after the fetch began
//! wins.

use super::stream::{leader_head, pump, LeaderStream};
use super::{
    failure, judge, publish, Filler, Job, Kept, LeaderResult, NotKept, Outcome, Report, Source,
    Whole,
};
use crate::cache::singleflight::Flight;
use crate::cache::store::footprint;
use crate::cache::store::CachedObject;
use crate::metrics::{self};
use crate::net::origin::{FetchError, OriginResponse};
use crate::rfc::cache_rules::{self, RuleOptions};

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::oneshot;

/// Bodies announced (by Content-Length) at most this long are read whole
/// before anyone is answered: they arrive in a segment or a few, and the
/// leader is then answered like a hit, without a stream of its own. The
/// usual case is a peer hop, whose answer comes from the owner's cache.
pub(super) const READ_WHOLE_UP_TO: u64 = 16 * 1024;

/// Whether this storable response is read whole before answering (see
/// [`READ_WHOLE_UP_TO`]).
pub(super) fn reads_whole(job: &Job, response: &OriginResponse) -> bool {
    response
        .content_length()
        .is_some_and(|n| n <= READ_WHOLE_UP_TO.min(job.max_object_size))
}

/// Read a small storable response whole, store it, and answer the leader
/// and the followers with it. A body that breaks off is a failed fill for
/// everyone, the leader included: no head has gone out yet.
pub(super) async fn store_whole(
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
                filler.upstream.finish(response).await;
                return publish(
                    flight,
                    leader,
                    failure(job.stale.as_ref(), FetchError::Unreachable),
                );
            }
            Ok(None) => break,
            Err(e) => {
                filler.upstream.finish(response).await;
                return publish(flight, leader, failure(job.stale.as_ref(), e));
            }
        }
    }
    match keep(&filler, &job, &whole, response, body).await {
        (outcome, None) => publish(flight, leader, outcome),
        (outcome, Some(own)) => {
            // Fields for this one client: the followers get the shared copy.
            flight.complete(outcome);
            send_own(leader, own, whole.source);
        }
    }
}

/// The leader's own copy of what it fetched: the shared one plus fields
/// the origin kept to this one client (`no-cache="..."`, `private="..."`).
fn send_own(
    leader: Option<oneshot::Sender<LeaderResult>>,
    object: Arc<CachedObject>,
    source: Source,
) {
    if let Some(leader) = leader {
        let report = Report {
            overridden: object.overridden,
            ..Report::fetched(source, false)
        };
        let _ = leader.send(LeaderResult::Private { object, report });
    }
}

/// A response read whole: made an object, its connection returned, stored
/// where it belongs, as the outcome for everyone waiting; and, when the
/// response keeps fields for the client it was fetched for, that client's
/// own copy (see [`CachedObject::for_sharing`]).
pub(super) async fn keep(
    filler: &Filler,
    job: &Job,
    whole: &Whole,
    mut response: OriginResponse,
    body: BytesMut,
) -> (Outcome, Option<Arc<CachedObject>>) {
    let body = footprint::exact_body(body);
    let object = build_object(&mut response, body, &job.request.headers, &job.rules);
    let (object, own) = object.for_sharing(&job.rules);
    filler.upstream.finish(response).await;
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
pub(super) async fn store_streaming(
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
    let report = Report {
        source: whole.source,
        revalidated: false,
        kept: match response.content_length() {
            Some(_) => Kept::Stored,
            None => Kept::Storing,
        },
        private: false,
        overridden: cache_rules::served_under_override(&response.header.headers, &job.rules),
    };
    let head = leader_head(&response, Some(initial_age));
    let mut out = LeaderStream::open(leader, head, report);
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
                filler.upstream.finish(response).await;
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
pub(super) struct Refresh {
    pub(super) stale: Arc<CachedObject>,
    pub(super) not_modified: ResponseHeader,
    pub(super) request_time: SystemTime,
    pub(super) response_time: SystemTime,
}

impl Refresh {
    /// `response` (a 304, or a 200 to a HEAD that describes the copy)
    /// answering for `stale`.
    pub(super) fn new(stale: Arc<CachedObject>, response: &OriginResponse) -> Refresh {
        Refresh {
            stale,
            not_modified: response.header.clone(),
            request_time: response.request_time,
            response_time: response.response_time,
        }
    }
}

/// A 304 refreshed the stale copy (RFC 9111 §4.3.4). A Set-Cookie in the 304
/// belongs to the client whose request caused it: it goes to the leader and
/// never into the store (a background refresh, with no leader, drops it).
/// The stored body is still the one everyone shares, so the merged response
/// without that cookie is judged again as if it were new: when it may no
/// longer be stored (the 304 said `private` or `no-store`, say), the stale
/// copy is evicted and only the leader gets the response.
pub(super) fn revalidated(
    filler: &Filler,
    flight: Flight<String, Outcome>,
    job: &Job,
    whole: &Whole,
    refresh: Refresh,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    let (shared, unshared) = refreshed(&refresh, &job.rules, false).for_sharing(&job.rules);
    let for_leader = refreshed(&refresh, &job.rules, true);
    let verdict = judge(job, &shared.header);
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
            send_private(leader, for_leader, whole.source, Kept::Stored);
        }
        Err(why) => {
            metrics::observe_not_stored(why.as_str());
            evict(filler, job, &refresh.stale);
            flight.complete(Outcome::NotStored);
            let kept = Kept::No(NotKept::Rule(why), 304);
            send_private(leader, for_leader, whole.source, kept);
        }
    }
}

pub(super) fn send_private(
    leader: Option<oneshot::Sender<LeaderResult>>,
    object: Arc<CachedObject>,
    source: Source,
    kept: Kept,
) {
    if let Some(leader) = leader {
        // The leader's client may be gone; nobody else may have this one.
        let report = Report {
            source,
            revalidated: true,
            kept,
            private: true,
            overridden: object.overridden,
        };
        let _ = leader.send(LeaderResult::Private { object, report });
    }
}

/// Remove a stored copy that may no longer be served to anyone, wherever it
/// lives (this node's cache or its hot mirrors).
pub(super) fn evict(filler: &Filler, job: &Job, stale: &CachedObject) {
    let key = stale
        .variant_key(&job.key)
        .unwrap_or_else(|| job.key.clone());
    filler.store.remove(&key);
    if let Some(cluster) = &filler.cluster {
        cluster.hot.store.remove(&key);
    }
}

/// Turn an origin response and its body into a stored object.
pub(super) fn build_object(
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
pub(super) fn refreshed(
    refresh: &Refresh,
    rules: &RuleOptions,
    with_set_cookie: bool,
) -> Arc<CachedObject> {
    let times = (refresh.request_time, refresh.response_time);
    let headers = &refresh.not_modified.headers;
    Arc::new(
        refresh
            .stale
            .refreshed_by(headers, rules, times, with_set_cookie),
    )
}
