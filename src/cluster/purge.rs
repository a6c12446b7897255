//! Purge: remove a key, or every key under a prefix, from the whole cluster.
//!
//! The admin endpoint (`PURGE /path` or `DELETE /cache/path`, with the admin
//! token) removes the key from this node's cache and hot area, then sends a
//! signed `PURGE` to every other member's peer listener, which removes it
//! from theirs. Broadcasting to all members rather than only the owner is
//! what clears the hot mirrors, and it keeps purges correct while members
//! disagree about who owns what. Members are asked in parallel. Peers never
//! re-broadcast (loop guard). Writes use the same broadcast to invalidate
//! (`invalidate.rs`). It runs in two rounds ([`broadcast`] says why).

use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::net::origin::OriginClient;
use pingora::http::RequestHeader;
use std::time::Duration;

/// Purge here (`purge_here`) and on every other member, in two rounds,
/// all members at once in each, waiting at most `within` in all; returns
/// (members that confirmed both rounds, members asked).
///
/// Why two: a node asks a key's owner on a miss, and may keep the answer
/// as a hot mirror. In one round, a node that has just purged can ask an
/// owner that has not yet, and mirror (or hand its waiters) the copy the
/// purge was meant to remove. After the first round no member's own store
/// holds the old copy, and no request joins a fill begun before it (they
/// are forgotten); the second round removes what a mirror took meanwhile,
/// and a mirror's fill begun before it does not store. A member that missed
/// the first round (timed out, unreachable) is not confirmed even if it
/// answers the second.
pub async fn broadcast(
    cluster: &Cluster,
    client: &OriginClient,
    order: Order<'_>,
    within: Duration,
    purge_here: impl Fn(),
) -> (usize, usize) {
    let deadline = tokio::time::Instant::now() + within;
    let ring = cluster.ring();
    let others: Vec<&str> = ring
        .members()
        .iter()
        .map(|m| m.addr.as_str())
        .filter(|a| *a != cluster.me)
        .collect();
    purge_here();
    let first = ask_all(cluster, client, &others, order, deadline).await;
    purge_here();
    let second = ask_all(cluster, client, &others, order, deadline).await;
    let confirmed = first
        .iter()
        .zip(&second)
        .filter(|(a, b)| **a && **b)
        .count();
    (confirmed, others.len())
}

/// What to purge on every member: a key, or every key under a prefix, of
/// `origin`'s (a key prefix, `scheme://host:port`) `path`.
#[derive(Debug, Clone, Copy)]
pub struct Order<'a> {
    pub origin: &'a str,
    pub path: &'a str,
    pub prefix: bool,
}

/// Ask each of `members` once, in parallel, until `deadline`: which confirmed.
async fn ask_all(
    cluster: &Cluster,
    client: &OriginClient,
    members: &[&str],
    order: Order<'_>,
    deadline: tokio::time::Instant,
) -> Vec<bool> {
    let asks = members.iter().map(|addr| async move {
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ask = ask_one(cluster, client, addr, order, within);
        tokio::time::timeout_at(deadline, ask)
            .await
            .unwrap_or_else(|_| {
                let path = order.path;
                log::warn!("peer {addr} did not confirm the purge of {path} in time");
                false
            })
    });
    futures::future::join_all(asks).await
}

/// Send one member a signed PURGE; true when it confirmed.
async fn ask_one(
    cluster: &Cluster,
    client: &OriginClient,
    addr: &str,
    order: Order<'_>,
    within: Duration,
) -> bool {
    let Order {
        origin,
        path,
        prefix,
    } = order;
    let Ok(mut request) = RequestHeader::build("PURGE", path.as_bytes(), None) else {
        return false;
    };
    if prefix {
        let _ = request.insert_header(peers::PURGE_PREFIX.clone(), "1");
    }
    match cluster
        .send_signed(client, request, origin, addr, None, within)
        .await
    {
        Ok(status) => {
            let ok = status.is_success();
            if !ok {
                log::warn!("peer {addr} refused purge of {path}: {status}");
            }
            ok
        }
        Err(e) => {
            log::warn!("peer {addr} unreachable for purge of {path}: {e:?}");
            false
        }
    }
}
