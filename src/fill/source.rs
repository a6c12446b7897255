//! Where a fill's answer comes from: the key's owner (another node), its
//! previous owner (a lookup in that node's cache), or the origin, in that
//! order, each failure falling through to the next ([`fetch`]). A refusal
//! by a peer's gate is the peer failing, never an answer for the client.
//!
//! [`AskingPrevious`] marks the flights asking a previous owner, so that a
//! lookup from a peer never waits on one of them: two nodes asking each
//! other cannot wait on each other.

use super::{Filler, Job, Outcome, Source};
use crate::cache::singleflight::Waiter;
use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::metrics;
use crate::net::channel::client::{Ask, AskError};
use crate::net::channel::wire;
use crate::net::origin::{FetchError, OriginResponse};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use std::collections::HashSet;
use std::time::Instant;

/// The flights asking a previous owner right now, by flight key.
#[derive(Default)]
pub struct AskingPrevious(Mutex<HashSet<String>>);

/// A flight's mark in [`AskingPrevious`], removed when dropped.
pub(super) struct Asking<'a> {
    set: &'a AskingPrevious,
    key: String,
}

impl AskingPrevious {
    fn enter(&self, key: &str) -> Asking<'_> {
        self.0.lock().insert(key.to_owned());
        Asking {
            set: self,
            key: key.to_owned(),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.0.lock().contains(key)
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.set.0.lock().remove(&self.key);
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

/// Ask the owner when another node owns the key; else the previous owner
/// when there is one (and no stale copy to revalidate); the origin otherwise,
/// or when they fail or have no copy (a failed peer is skipped for a while).
pub(super) async fn fetch(
    filler: &Filler,
    job: &Job,
    flight_key: &str,
) -> (Result<OriginResponse, FetchError>, Source) {
    if let Some(cluster) = &filler.cluster {
        if let Some(owner) = &job.owner {
            let asked = ask_peer(filler, cluster, owner, job, false).await;
            if let Asked::Answered(response) = asked {
                return (Ok(*response), Source::Owner);
            }
        } else if let (Some(previous), None, None) = (&job.previous_owner, &job.stale, &job.body) {
            let _asking = filler.asking_previous.enter(flight_key);
            let asked = ask_peer(filler, cluster, previous, job, true).await;
            metrics::observe_previous_owner_lookup(asked.as_str());
            if let Asked::Answered(response) = asked {
                return (Ok(*response), Source::PreviousOwner);
            }
        }
    }
    // Boxed, as the HTTP peer fetch below: pingora's client futures are
    // large, and a fill that asks over the peer channel should not carry
    // them (each fill is a task of its own, moved when spawned).
    let body = job.body.clone();
    let fetched = (filler.client).fetch(&job.target, &job.request, body, job.interim.as_ref());
    (Box::pin(fetched).await, Source::Origin)
}

/// What asking a peer brought.
pub(super) enum Asked {
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

/// Ask the peer `addr` for `job` (a previous-owner `lookup`, or the
/// owner's answer), over the peer channel when it speaks it, else signed
/// over HTTP; recording how it went. A refusal by the peer's gate
/// (`proxy/peer.rs`, `proxy/channel.rs`) is the peer failing, not an answer
/// for the client, except a lookup's "not cached". Interim responses go to
/// the job's leader.
pub(super) async fn ask_peer(
    filler: &Filler,
    cluster: &Cluster,
    addr: &str,
    job: &Job,
    lookup: bool,
) -> Asked {
    let started = Instant::now();
    let timeouts = (cluster.peer_timeout, cluster.peer_read_timeout);
    let interim = job.interim.as_ref();
    let response = match over_channel(filler, cluster, addr, job, lookup).await {
        Some(response) => response,
        None => {
            let request = peer_request(job, cluster, addr, lookup);
            let request = (&request, job.body.clone());
            let fetched =
                (filler.client).fetch_peer(addr, request, timeouts, cluster.peer_h2c, interim);
            Box::pin(fetched).await
        }
    };
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

/// Ask `addr` over the peer channel; None: ask it over HTTP instead (the
/// channel is off, the peer does not speak it, or the body is too large
/// for one frame).
async fn over_channel(
    filler: &Filler,
    cluster: &Cluster,
    addr: &str,
    job: &Job,
    lookup: bool,
) -> Option<Result<OriginResponse, FetchError>> {
    let fits = job
        .body
        .as_ref()
        .is_none_or(|b| b.len() <= MAX_CHANNEL_BODY);
    if !cluster.peer_channel || !fits || !filler.client.channel_worth_trying(addr) {
        return None;
    }
    let ask = Ask {
        request: &job.request,
        body: job.body.clone(),
        origin: &job.target.key_prefix,
        lookup,
        generation: cluster.ring().generation(),
    };
    let timeouts = (cluster.peer_timeout, cluster.peer_read_timeout);
    let interim = job.interim.as_ref();
    match (filler.client)
        .ask_channel(addr, cluster, ask, timeouts, interim)
        .await
    {
        Ok(response) => Some(Ok(response)),
        Err(AskError::UseHttp) => None,
        Err(AskError::Failed(e)) => Some(Err(e)),
        Err(AskError::Connect(e)) => Some(Err(FetchError::from_pingora(&e))),
    }
}

/// Request bodies the channel carries in its request frame; larger ones
/// (larger than any body keyed for the cache by default) go over HTTP.
const MAX_CHANNEL_BODY: usize = wire::MAX_FRAME - 64 * 1024;

/// Why a peer's gate refused the request (`proxy/peer.rs`), if it did.
pub(super) fn refusal_reason(response: &OriginResponse) -> Option<&[u8]> {
    response
        .header
        .headers
        .get(&peers::REFUSED)
        .map(|v| v.as_bytes())
}

/// The fill request plus the peer protocol's headers (see `peers.rs`), for
/// the peer `to`; a `lookup` asks for its cached copy only.
pub(super) fn peer_request(job: &Job, cluster: &Cluster, to: &str, lookup: bool) -> RequestHeader {
    let mut request = job.request.clone();
    if lookup {
        let _ = request.insert_header(peers::LOOKUP.clone(), "1");
    }
    match &job.body {
        Some(body) => {
            cluster.sign_request_with_body(&mut request, &job.target.key_prefix, to, body)
        }
        None => cluster.sign_request(&mut request, &job.target.key_prefix, to),
    }
    request
}
