//! Purge: remove a key, or every key under a prefix, from the whole cluster.
//!
//! The admin endpoint (`PURGE /path` or `DELETE /cache/path`, with the admin
//! token) removes the key from this node's cache and hot area, then sends a
//! signed `PURGE` to every other member's peer listener, which removes it
//! from theirs. Broadcasting to all members rather than only the owner is
//! what clears the hot mirrors, and it keeps purges correct while members
//! disagree about who owns what. Peers never re-broadcast (loop guard).

use crate::cluster::Cluster;
use crate::metrics;
use crate::origin::OriginClient;
use crate::peers;
use crate::store::Store;
use pingora::http::RequestHeader;

/// Remove `key` (and its Vary variants), or every key starting with it.
pub fn apply_local(stores: &[&Store], key: &str, prefix: bool) {
    for store in stores {
        if prefix {
            store.remove_prefix(key);
        } else {
            store.remove(key);
            store.remove_prefix(&format!("{key}\u{1f}"));
        }
    }
    metrics::PURGES.inc();
}

/// Ask every other member to purge too; returns (members that confirmed, members asked).
pub async fn broadcast(
    cluster: &Cluster,
    client: &OriginClient,
    origin: &str,
    path: &str,
    prefix: bool,
) -> (usize, usize) {
    let ring = cluster.ring();
    let others: Vec<&str> = ring
        .members()
        .iter()
        .map(|m| m.addr.as_str())
        .filter(|a| *a != cluster.me)
        .collect();
    let mut confirmed = 0;
    for addr in &others {
        let Ok(mut request) = RequestHeader::build("PURGE", path.as_bytes(), None) else {
            continue;
        };
        if prefix {
            let _ = request.insert_header(peers::PURGE_PREFIX.clone(), "1");
        }
        let _ = request.insert_header(http::header::HOST, *addr);
        cluster.sign_request(&mut request, origin, addr);
        match client
            .fetch_peer(
                addr,
                &request,
                cluster.peer_timeout,
                cluster.peer_timeout,
                cluster.peer_h2c,
            )
            .await
        {
            Ok(response) => {
                if response.header.status.is_success() {
                    confirmed += 1;
                } else {
                    log::warn!(
                        "peer {addr} refused purge of {path}: {}",
                        response.header.status
                    );
                }
                response.finish(client).await;
            }
            Err(e) => log::warn!("peer {addr} unreachable for purge of {path}: {e:?}"),
        }
    }
    (confirmed, others.len())
}
