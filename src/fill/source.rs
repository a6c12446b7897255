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
use crate::net::origin::{FetchError, OriginResponse};
use parking_lot::Mutex;
use std::collections::HashSet;
use tokio::time::Instant;

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
    (filler.upstream.origin(job).await, Source::Origin)
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
/// owner's answer), recording how it went. A refusal by the peer's gate
/// (`proxy/peer.rs`, `proxy/channel.rs`) is the peer failing, not an answer
/// for the client, except a lookup's "not cached". Interim responses go to
/// the job's leader.
async fn ask_peer(
    filler: &Filler,
    cluster: &Cluster,
    addr: &str,
    job: &Job,
    lookup: bool,
) -> Asked {
    let started = Instant::now();
    let response = filler.upstream.peer(cluster, addr, job, lookup).await;
    let asked = match response {
        Ok(response) => match refusal_reason(&response) {
            None => Asked::Answered(Box::new(response)),
            Some(reason) => {
                let not_cached = reason == peers::NOT_CACHED.as_bytes();
                if !not_cached {
                    let why = String::from_utf8_lossy(reason);
                    log::warn!("peer {addr} refused us: {} {why}", response.header.status);
                }
                filler.upstream.finish(response).await;
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
