//! A HEAD's revalidation of a stale entry (RFC 9111 §4.3.5): the fill asks
//! the origin with a conditional HEAD, so no content crosses for a client
//! that wants none. A 304 is handled like any revalidation (`run`, then
//! `keep::revalidated`). Here, the other answers: a 200 whose fields
//! describe the stored representation (`cache_rules::head_describes_stored`)
//! freshens it like a 304; another 2xx means it changed, so the stored
//! copy is retired (the next GET fetches the new one) and the HEAD's answer
//! goes to the leader alone. A HEAD's answer is never stored: it has no
//! content.

use super::keep::{evict, revalidated, Refresh};
use super::stream::{leader_head, pump, LeaderStream};
use super::{Filler, Job, Kept, LeaderResult, NotKept, Outcome, Report, Whole};
use crate::cache::singleflight::Flight;
use crate::net::origin::OriginResponse;
use crate::rfc::cache_rules::{self, NotStorable};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Finish the fill of a HEAD revalidation whose answer was not a 304.
pub(super) async fn answered(
    filler: Arc<Filler>,
    flight: Flight<String, Outcome>,
    job: Job,
    whole: Whole,
    response: OriginResponse,
    leader: Option<oneshot::Sender<LeaderResult>>,
) {
    let status = response.header.status;
    if let Some(stale) = job.stale.clone() {
        if status == http::StatusCode::OK
            && cache_rules::head_describes_stored(&stale.header.headers, &response.header.headers)
        {
            let refresh = Refresh::new(stale, &response);
            filler.upstream.finish(response).await;
            return revalidated(&filler, flight, &job, &whole, refresh, leader);
        }
        if status.is_success() {
            evict(&filler, &job, &stale);
        }
    }
    flight.complete(Outcome::NotStored);
    let report = Report {
        source: whole.source,
        revalidated: false,
        kept: Kept::No(NotKept::Rule(NotStorable::Method), status.as_u16()),
        private: false,
        overridden: false,
    };
    let out = LeaderStream::open(leader, leader_head(&response, None), report);
    pump(&filler, response, out).await;
}
