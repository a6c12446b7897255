//! Purge: remove a key, or every key under a prefix, from the whole cluster.
//!
//! The admin endpoint (`PURGE /path` or `DELETE /cache/path`, with the admin
//! token) removes the key from this node's cache and hot area, then sends a
//! signed `PURGE` to every other member's peer listener, which removes it
//! from theirs. Broadcasting to all members rather than only the owner is
//! what clears the hot mirrors, and it keeps purges correct while members
//! disagree about who owns what. Members are asked in parallel. Peers never
//! re-broadcast (loop guard). Writes use the same broadcast to invalidate
//! (`invalidate.rs`).

use crate::cache::keys;
use crate::cache::store::Store;
use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::metrics;
use crate::net::origin::OriginClient;
use pingora::http::RequestHeader;
use std::time::Duration;

/// Remove `key` (and its Vary variants), or every key starting with it.
pub fn apply_local(stores: &[&Store], key: &str, prefix: bool) {
    for store in stores {
        if prefix {
            store.remove_prefix(key);
        } else {
            store.remove(key);
            store.remove_prefix(&keys::derived_prefix(key));
        }
    }
    metrics::PURGES.inc();
}

/// Ask every other member to purge too, all at once, waiting at most
/// `within` for each; returns (members that confirmed, members asked).
pub async fn broadcast(
    cluster: &Cluster,
    client: &OriginClient,
    origin: &str,
    path: &str,
    prefix: bool,
    within: Duration,
) -> (usize, usize) {
    let ring = cluster.ring();
    let others: Vec<&str> = ring
        .members()
        .iter()
        .map(|m| m.addr.as_str())
        .filter(|a| *a != cluster.me)
        .collect();
    let asks = others.iter().map(|addr| async move {
        let ask = ask_one(cluster, client, addr, origin, path, prefix, within);
        tokio::time::timeout(within, ask).await.unwrap_or_else(|_| {
            log::warn!("peer {addr} did not confirm the purge of {path} within {within:?}");
            false
        })
    });
    let confirmed = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    (confirmed, others.len())
}

/// Send one member a signed PURGE; true when it confirmed.
async fn ask_one(
    cluster: &Cluster,
    client: &OriginClient,
    addr: &str,
    origin: &str,
    path: &str,
    prefix: bool,
    within: Duration,
) -> bool {
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
