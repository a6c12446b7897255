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
//!   the leader included, as [`Outcome::Fetched`] (`keep::store_whole`);
//! - a larger storable response small enough to keep is streamed to the
//!   leader as it arrives and read whole at the same time; once complete it
//!   is stored and published to the followers as [`Outcome::Fetched`].
//!   Either way, bytes arriving count as progress, so followers wait for a
//!   slow body as long as it flows (`collapse_timeout` bounds the wait for
//!   the head), and a slow leader never holds up the store (see
//!   `stream::LeaderStream`);
//! - anything else (uncacheable, too large) is published as
//!   [`Outcome::NotStored`] *as soon as its headers arrive*, so the followers
//!   go to the origin on their own at once instead of queueing behind a
//!   response they may not share. The leader alone streams it;
//! - a 304 refreshes the stale copy; what is one client's in it (Set-Cookie)
//!   goes to that client alone, and a 304 that makes the response
//!   unshareable evicts the copy (see `keep::revalidated`);
//! - no response at all (refused, timed out) is [`Outcome::Failed`];
//! - a 5xx or failure while a stale copy allows stale-if-error is
//!   [`Outcome::UseStale`].
//!
//! A fill reports what it did as facts ([`Report`]: who answered, whether
//! and why it is kept); what the client is told is the proxy's to say.
//!
//! Here: the flight from start to finish ([`run`]); in `source.rs`, where
//! the answer comes from; in `keep.rs`, storing it (whole, streaming, or a
//! 304's refresh); in `head.rs`, a HEAD's revalidation that was not
//! answered 304; in `partial.rs`, the fill of one range (its 206 kept as
//! a partial entry); in `stream.rs`, the leader's end of a streamed answer;
//! in `upstream.rs`, the seam to whoever answers (the node's client, or a
//! test's fakes).

mod head;
mod keep;
mod partial;
mod source;
mod stream;
#[cfg(test)]
mod tests;
mod upstream;

use crate::cache::singleflight::{Flight, Group, Join, Waiter};
use crate::cache::store::{CachedObject, Entry, Epoch, Store};
use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::metrics;
use crate::net::origin::{
    strip_response_hop_by_hop, FetchError, InterimSink, OriginResponse, OriginTarget,
};
use crate::rfc::cache_rules::{self, RuleOptions};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use keep::{reads_whole, revalidated, store_streaming, store_whole, Refresh};
use source::fetch;
pub use source::{follow_for_lookup, AskingPrevious};
use stream::{leader_head, pump, LeaderStream};
pub use upstream::Upstream;

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
}

/// What a fill did with an answer it hands to its leader alone, as facts:
/// what the client is told of it (Cache-Status, the metric result) is the
/// proxy's to decide (`proxy/told.rs`), from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub source: Source,
    /// The answer is the stale copy, refreshed by a 304.
    pub revalidated: bool,
    pub kept: Kept,
    /// The 304 that refreshed it was for this client alone (its Set-Cookie),
    /// or made the response unshareable.
    pub private: bool,
    /// Kept under the path rule's override of something the origin said.
    pub overridden: bool,
}

impl Report {
    /// An answer published to every waiter: kept, and everyone's.
    pub fn fetched(source: Source, revalidated: bool) -> Report {
        Report {
            source,
            revalidated,
            kept: Kept::Stored,
            private: false,
            overridden: false,
        }
    }
}

/// Whether the answer is kept for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Stored (or being stored, its length known to fit).
    Stored,
    /// Being read whole for the store, its length known only at the end.
    Storing,
    /// Not kept: why, and the status the origin (or owner) answered.
    No(NotKept, u16),
}

/// Why a fill's answer is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    /// The caching rules say so.
    Rule(cache_rules::NotStorable),
    /// Larger than `cache.max_object_size`.
    TooLarge,
    /// The request's body is over `max_key_body`: it keys nothing.
    BodyTooLarge,
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
        /// `kept` is not `No`: read whole for the followers (and stored)
        /// as it streams; else for the leader alone.
        report: Report,
    },
    /// The stale copy refreshed by a 304, for the leader alone: the 304
    /// carried fields for this one client (Set-Cookie), or made the response
    /// unshareable (see [`revalidated`]).
    Private {
        object: Arc<CachedObject>,
        report: Report,
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
    /// The request body it sends (a POST or QUERY cached by its body).
    pub body: Option<Bytes>,
    /// Whether what it fetches may be stored; false: for the leader alone.
    pub keep: bool,
    /// Where the interim (1xx) responses before the answer go: the leader's
    /// client, which may pass them on; None for a background refresh.
    pub interim: Option<InterimSink>,
}

/// Shared by every fill.
pub struct Filler {
    pub flights: Arc<Group<String, Outcome>>,
    /// Who answers: the origin, the owner, the previous owner.
    pub upstream: Arc<dyn Upstream>,
    pub store: Arc<Store>,
    pub cluster: Option<Arc<Cluster>>,
    pub asking_previous: AskingPrevious,
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
    };
    let status = response.header.status;
    if status.is_server_error() {
        if let Some(object) = usable_if_error(job.stale.as_ref()) {
            filler.upstream.finish(response).await;
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
            let refresh = Refresh::new(stale, &response);
            filler.upstream.finish(response).await;
            return revalidated(&filler, flight, &job, &whole, refresh, leader);
        }
    }
    if job.request.method == http::Method::HEAD {
        // Boxed, as the other uncommon ends below: each fill is a task of
        // its own, moved when spawned, and the common end (stored whole)
        // should not carry their state.
        return Box::pin(head::answered(filler, flight, job, whole, response, leader)).await;
    }
    let verdict = match job.request.headers.contains_key(http::header::RANGE) {
        true => partial::not_storable_because(&job, &response),
        false => not_storable_because(&job, &response),
    };
    match verdict {
        None if reads_whole(&job, &response) => {
            store_whole(filler, flight, job, whole, response, leader).await
        }
        None => {
            Box::pin(store_streaming(
                filler, flight, job, whole, response, leader,
            ))
            .await
        }
        Some(reason) => Box::pin(not_kept(filler, flight, source, reason, response, leader)).await,
    }
}

/// An answer that is not kept: published as such at once, so the waiters
/// go their own way, and streamed to the leader alone.
async fn not_kept(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    source: Source,
    reason: NotKept,
    response: OriginResponse,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    flight.complete(Outcome::NotStored);
    let report = Report {
        source,
        revalidated: false,
        kept: Kept::No(reason, response.header.status.as_u16()),
        private: false,
        overridden: false,
    };
    let head = leader_head(&response, None);
    let out = LeaderStream::open(leader, head, report);
    pump(&filler, response, out).await;
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
fn judge(job: &Job, head: &ResponseHeader) -> Result<(), cache_rules::NotStorable> {
    let get = http::Method::GET;
    cache_rules::check_storable(
        &get,
        &job.request.headers,
        head.status,
        &head.headers,
        &job.rules,
    )
}

/// Why this response is not stored (counted), or None when it is.
fn not_storable_because(job: &Job, response: &OriginResponse) -> Option<NotKept> {
    if !job.keep {
        return Some(NotKept::BodyTooLarge);
    }
    match judge(job, &response.header) {
        Err(why) => {
            metrics::observe_not_stored(why.as_str());
            Some(NotKept::Rule(why))
        }
        Ok(())
            if response
                .content_length()
                .is_some_and(|n| n > job.max_object_size) =>
        {
            metrics::TOO_LARGE.inc();
            Some(NotKept::TooLarge)
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

/// A stale copy that stale-if-error still allows to serve now.
fn usable_if_error(stale: Option<&Arc<CachedObject>>) -> Option<Arc<CachedObject>> {
    let stale = stale?;
    (stale.staleness(Instant::now()) <= stale.stale_if_error && !stale.stale_if_error.is_zero())
        .then(|| stale.clone())
}
