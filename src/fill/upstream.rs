//! The fill's one seam: who answers it. An [`Upstream`] is the origin and
//! the peers, by address. The node's is its [`OriginClient`]: the origin
//! over HTTP, a peer over the peer channel when it speaks it, else signed
//! HTTP. Tests put a fake in its place that answers from memory, slowly,
//! with a refusal or not at all (as groupcache's `fakePeers`), so what a
//! fill decides from the answers (the order it asks in, a failed peer
//! skipped for a while, one fetch per key) is tested in process, on paused
//! time (`tests.rs`).

use super::Job;
use crate::cluster::{peers, Cluster};
use crate::net::channel::client::{Ask, AskError};
use crate::net::channel::wire;
use crate::net::origin::{FetchError, OriginClient, OriginResponse};
use async_trait::async_trait;
use pingora::http::RequestHeader;

/// Whoever answers a fill.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// The origin's answer to `job`.
    async fn origin(&self, job: &Job) -> Result<OriginResponse, FetchError>;

    /// The answer of the peer `addr` to `job`; for a `lookup`, its cached
    /// copy only. A refusal by its gate is an answer here (see
    /// `source::refusal_reason`).
    async fn peer(
        &self,
        cluster: &Cluster,
        addr: &str,
        job: &Job,
        lookup: bool,
    ) -> Result<OriginResponse, FetchError>;

    /// Done with `response`: its connection back to the pool when the body
    /// was read whole, else closed.
    async fn finish(&self, response: OriginResponse);
}

#[async_trait]
impl Upstream for OriginClient {
    async fn origin(&self, job: &Job) -> Result<OriginResponse, FetchError> {
        // On the heap already: a trait method's future is boxed.
        let body = job.body.clone();
        self.fetch(&job.target, &job.request, body, job.interim.as_ref())
            .await
    }

    async fn peer(
        &self,
        cluster: &Cluster,
        addr: &str,
        job: &Job,
        lookup: bool,
    ) -> Result<OriginResponse, FetchError> {
        if let Some(response) = over_channel(self, cluster, addr, job, lookup).await {
            return response;
        }
        let timeouts = (cluster.peer_timeout, cluster.peer_read_timeout);
        let request = peer_request(job, cluster, addr, lookup);
        let request = (&request, job.body.clone());
        let interim = job.interim.as_ref();
        // Boxed apart: pingora's client futures are large, and the channel's
        // ask (the usual case) should not allocate room for them.
        let fetched = self.fetch_peer(addr, request, timeouts, cluster.peer_h2c, interim);
        Box::pin(fetched).await
    }

    async fn finish(&self, response: OriginResponse) {
        response.finish(self).await
    }
}

/// Ask `addr` over the peer channel; None: ask it over HTTP instead (the
/// channel is off, the peer does not speak it, or the body is too large
/// for one frame).
async fn over_channel(
    client: &OriginClient,
    cluster: &Cluster,
    addr: &str,
    job: &Job,
    lookup: bool,
) -> Option<Result<OriginResponse, FetchError>> {
    let fits = job
        .body
        .as_ref()
        .is_none_or(|b| b.len() <= MAX_CHANNEL_BODY);
    if !cluster.peer_channel || !fits || !client.channel_worth_trying(addr) {
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
    match client
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

/// The fill request plus the peer protocol's headers (see `peers.rs`), for
/// the peer `to`; a `lookup` asks for its cached copy only.
fn peer_request(job: &Job, cluster: &Cluster, to: &str, lookup: bool) -> RequestHeader {
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
