//! The peer listener's gate: what a request from another sidecar must pass
//! before the owner serves it (see `peers.rs` for the protocol).
//!
//! - credentials: a valid signature for this node, with a nonce not seen
//!   before, else 401 (counted; 503 when the nonce table is full); then the
//!   headers the signature does not cover (host, hop-by-hop) are dropped;
//! - with `cluster.tls`, the connection's certificate: valid under the CA
//!   as it is now, for the member that signed the request, which must be a
//!   member of this node's ring, else 403 (counted; see `peer_tls.rs`);
//! - without it, the connection's source address: a request signed as
//!   coming from a member whose address is an IP must come from that IP,
//!   else 403 (`address`, counted with the auth failures), since the
//!   signature only proves knowing the cluster secret, which every member
//!   does. A member named by a DNS name is not checked (a lookup per
//!   request; TLS is the answer there), nor where
//!   `cluster.check_sender_address` is off (NAT, a mesh rewriting sources);
//! - origin: the `x-ringside-origin` it names must be one this node may
//!   reach too (its origin or forward-proxy allowlist), else 403;
//!
//! then, once `request_filter` has normalised the target:
//! - `PURGE`: applied to this node's stores and answered here;
//! - `LEAVING`, `JOINED`: a member's notice, applied to the ring here
//!   (`announce.rs`); `HANDOFF`: entries a stopping member hands over, its
//!   body read (bounded) and checked against its signed digest, then kept
//!   as far as this node's rules allow (`handoff/`);
//! - a GET with `x-ringside-lookup`: a previous-owner lookup, answered
//!   from the cache only (`cacheable.rs`);
//! - other methods than GET/HEAD, and a POST or QUERY its path rule does
//!   not cache by its body: 405 (peers only exchange cacheable reads; a
//!   body's digest is signed, and checked once it is read, `body.rs`);
//! - ring views: a different generation is counted, and a key this node does
//!   not think it owns is still served here (never forwarded: the loop guard).

use super::respond::{send_error, send_refusal};
use super::{RequestCtx, Ringside};
use crate::cluster::peers::{self, Refusal};
use crate::cluster::Cluster;
use crate::config::OriginUrl;
use crate::metrics::{self, CacheResult};
use crate::net::origin::OriginTarget;
use crate::net::peer_tls::TlsRefusal;
use crate::rfc::cache_status::{CacheStatus, Detail};
use crate::{cluster::announce, node::handoff};
use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

/// Check a peer request's credentials (over the target as sent) and origin.
/// `Ok(Some(target))`: serve it for that origin; `Ok(None)`: already answered.
pub async fn admit(
    rs: &Ringside,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Option<Arc<OriginTarget>>> {
    let Some(cluster) = rs.node.filler.cluster.clone() else {
        return refuse(session, ctx, Refused::NotAMember).await;
    };
    if let Err(why) = cluster.verify_request(session.req_header()) {
        if why.status() == 401 {
            metrics::PEER_AUTH_FAILURES.inc();
        }
        log::warn!(
            "peer request from {:?} refused: {why}",
            session.req_header().headers.get(&peers::FROM)
        );
        return refuse(session, ctx, Refused::Credentials(why)).await;
    }
    if let Err(why) = check_certificate(&cluster, session) {
        metrics::observe_peer_tls_refusal(why.reason());
        log::warn!(
            "peer request from {:?} refused: {why}",
            session.req_header().headers.get(&peers::FROM)
        );
        ctx.result = CacheResult::Error;
        let body = "peer certificate refused\n";
        send_refusal(session, 403, body, why.reason()).await?;
        return Ok(None);
    }
    if let Err(why) = check_address(rs, &cluster, session) {
        metrics::PEER_AUTH_FAILURES.inc();
        log::warn!("peer request refused: {why}");
        ctx.result = CacheResult::Error;
        let body = "peer request from another address than its sender's\n";
        send_refusal(session, 403, body, "address").await?;
        return Ok(None);
    }
    // Act on signed headers only.
    let req = session.req_header_mut();
    for name in peers::unsigned_headers(&req.headers) {
        req.remove_header(&name);
    }
    let req = session.req_header();
    let origin = req
        .headers
        .get(&peers::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| OriginUrl::parse(v).ok());
    match origin.and_then(|url| rs.node.origins.get(&url)) {
        Some(target) => Ok(Some(target)),
        None => refuse(session, ctx, Refused::OriginNotServed).await,
    }
}

/// The sender a peer request names (signed with it), or "".
fn claimed_sender(session: &Session) -> &str {
    let from = session.req_header().headers.get(&peers::FROM);
    from.and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// With `cluster.tls`: the connection's certificate, for the request's
/// signed sender.
fn check_certificate(cluster: &Cluster, session: &Session) -> Result<(), TlsRefusal> {
    let Some(tls) = &cluster.tls else {
        return Ok(());
    };
    let from = claimed_sender(session);
    let ssl = session.digest().and_then(|d| d.ssl_digest.as_deref());
    tls.check_sender(ssl, from, cluster.is_member(from))
}

/// Without `cluster.tls`: the request's signed sender, when its address is
/// an IP, is where the connection comes from.
fn check_address(rs: &Ringside, cluster: &Cluster, session: &Session) -> Result<(), String> {
    if cluster.tls.is_some() || !rs.node.config.cluster.check_sender_address {
        return Ok(());
    }
    let from = claimed_sender(session);
    let Ok(claimed) = crate::net::peer_tls::host(from).parse::<IpAddr>() else {
        return Ok(());
    };
    let source = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical());
    match source {
        Some(ip) if ip == claimed.to_canonical() => Ok(()),
        other => Err(format!("signed by {from}, sent from {other:?}")),
    }
}

/// Act on an admitted peer request whose target is normalised: `PURGE` and
/// methods other than GET/HEAD are answered here (`Ok(true)`); for the
/// rest, ring views are compared and the loop guard counted.
pub async fn handle(
    rs: &Ringside,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &OriginTarget,
) -> Result<bool> {
    let Some(cluster) = rs.node.filler.cluster.clone() else {
        return Ok(false);
    };
    let req = session.req_header();
    if req.method.as_str() == "PURGE" {
        let key = rs.node.cache_key(target, &req.uri);
        let prefix = req.headers.contains_key(&peers::PURGE_PREFIX);
        rs.node.purge_here(&key, prefix);
        ctx.result = CacheResult::Pass;
        let status = CacheStatus::bypass(Detail::Purge);
        send_error(session, 200, "purged\n", status).await?;
        return Ok(true);
    }
    if membership(rs, session, ctx, target).await? {
        return Ok(true);
    }
    let req = session.req_header();
    let read = req.method == Method::GET
        || req.method == Method::HEAD
        || rs.policy(target, req).body.caches(&req.method);
    if !read {
        refuse(session, ctx, Refused::NotARead).await?;
        return Ok(true);
    }
    let ring = cluster.ring();
    let theirs = req
        .headers
        .get(&peers::GENERATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if theirs.is_some_and(|g| g != ring.generation()) {
        metrics::GENERATION_MISMATCHES.inc();
        log::debug!(
            "peer {:?} has ring generation {theirs:?}, ours is {}",
            req.headers.get(&peers::FROM),
            ring.generation()
        );
    }
    if req.headers.contains_key(&peers::LOOKUP) {
        rs.answer_lookup(session, ctx, target).await?;
        return Ok(true);
    }
    if cluster
        .remote_owner(&ring, &rs.request_key(target, req, &rs.policy(target, req)))
        .is_some()
    {
        metrics::LOOP_GUARD.inc();
    }
    Ok(false)
}

/// A member's notice or handoff, answered here (true); false for any
/// other request.
async fn membership(
    rs: &Ringside,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &OriginTarget,
) -> Result<bool> {
    let (Some(cluster), req) = (rs.node.cluster(), session.req_header()) else {
        return Ok(false);
    };
    let method = req.method.as_str().to_owned();
    let from = req
        .headers
        .get(&peers::FROM)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match method.as_str() {
        peers::LEAVING | peers::JOINED => {
            announce::receive(cluster, &method, &from, req.uri.query());
            ctx.result = CacheResult::Pass;
            send_error(session, 200, "noted\n", handoff::ANSWERED).await?;
        }
        peers::HANDOFF => receive_handoff(rs, session, ctx, target, &from).await?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Read a `HANDOFF` body (bounded), check it against its signed digest and
/// keep what this node's rules allow.
async fn receive_handoff(
    rs: &Ringside,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &OriginTarget,
    from: &str,
) -> Result<()> {
    let limit = handoff::max_batch_bytes(rs.node.config.cache.max_object_size);
    let Some(body) = read_body(session, limit).await? else {
        refuse(session, ctx, Refused::BatchTooLarge).await?;
        return Ok(());
    };
    if !peers::body_matches(&session.req_header().headers, &body) {
        metrics::PEER_AUTH_FAILURES.inc();
        refuse(session, ctx, Refused::BodyNotSigned).await?;
        return Ok(());
    }
    match handoff::accept(&rs.node, target, from, &body) {
        Ok(stored) => {
            log::debug!("handoff from {from}: stored {stored} entries");
            ctx.result = CacheResult::Pass;
            send_error(session, 200, "kept\n", handoff::ANSWERED).await?;
        }
        Err(why) => {
            log::warn!("handoff from {from} refused: {why:?}");
            refuse(session, ctx, Refused::MalformedBatch).await?;
        }
    }
    Ok(())
}

/// The request body, whole, or None when it is longer than `limit`.
async fn read_body(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// Why this node's gate refuses a peer request (the certificate and
/// sender-address refusals have their own reasons).
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// This node is in no cluster.
    NotAMember,
    /// Its signature does not hold (401), or its nonce is older than those
    /// remembered (503: ask the origin).
    Credentials(Refusal),
    /// It names an origin this node does not serve.
    OriginNotServed,
    /// A method whose answer the cache does not keep.
    NotARead,
    BatchTooLarge,
    /// A handoff batch whose body is not the one signed.
    BodyNotSigned,
    MalformedBatch,
}

impl Refused {
    /// The answer: status, body and `x-ringside-refused` reason.
    fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            Refused::NotAMember => (404, "not a cluster member\n", "not-a-member"),
            Refused::Credentials(Refusal::Forgotten) => (
                Refusal::Forgotten.status(),
                "too many peer requests; ask the origin\n",
                "overloaded",
            ),
            Refused::Credentials(why) => (
                why.status(),
                "peer credentials missing or invalid\n",
                "credentials",
            ),
            Refused::OriginNotServed => (403, "origin not served by this node\n", "origin"),
            Refused::NotARead => (
                405,
                "peers only exchange reads the cache answers\n",
                "method",
            ),
            Refused::BatchTooLarge => (413, "handoff batch too large\n", "too-large"),
            Refused::BodyNotSigned => (
                401,
                "body does not match its signed digest\n",
                "credentials",
            ),
            Refused::MalformedBatch => (400, "malformed handoff batch\n", "malformed"),
        }
    }
}

async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    why: Refused,
) -> Result<Option<Arc<OriginTarget>>> {
    ctx.result = CacheResult::Error;
    let (status, body, reason) = why.answer();
    send_refusal(session, status, body, reason).await?;
    Ok(None)
}
