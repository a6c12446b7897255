//! Announcements: a member tells the others that it is leaving the ring, or
//! that it is back, with a signed notice to their peer listeners (`LEAVING`,
//! `JOINED`; see `peers.rs`).
//!
//! Membership sources take a stopping member out on their own schedule:
//! etcd at once (its lease is revoked), DNS at the next poll after its
//! readiness failed, a static list never. A `LEAVING` notice takes it out
//! of every ring at once, whatever the source (`cluster::member_leaving`).
//! It stays out until the source no longer lists it, or a process on its
//! address announces `JOINED` (a restart on the same address, as with a
//! static list: every node announces itself once its peer listener is up).
//! The notice also says how long the member still answers peers (its
//! `shutdown_delay`): until then the others may ask it for the keys it
//! owned (`cluster::previous_owner`).

use crate::cluster::backoff;
use crate::cluster::peers;
use crate::cluster::Cluster;
use crate::metrics;
use crate::net::origin::OriginClient;
use futures::future::join_all;
use pingora::http::RequestHeader;
use std::time::Duration;

/// Rounds of `JOINED` notices to members that did not confirm (down, or
/// not started yet: they will build their ring with this node anyway).
const JOIN_ROUNDS: u32 = 4;

/// The wait before the second round of notices, doubled for each later one.
const JOIN_RETRY: Duration = Duration::from_secs(2);

/// The longest a member is taken to keep serving after its notice.
const MAX_SERVING: Duration = Duration::from_secs(600);

/// Tell every other member on the ring that this node is leaving, and still
/// answers peers for `serving_for`; each gets at most `within`. Returns how
/// many confirmed.
pub async fn leaving(
    client: &OriginClient,
    cluster: &Cluster,
    origin: &str,
    serving_for: Duration,
    within: Duration,
) -> usize {
    let path = format!("/?serving_ms={}", serving_for.as_millis());
    let others = others(cluster);
    let notices = others
        .iter()
        .map(|to| notify(client, cluster, origin, peers::LEAVING, &path, to, within));
    let confirmed = join_all(notices).await.into_iter().filter(|ok| *ok).count();
    log::info!(
        "leaving: {confirmed} of {} member(s) took this node out of their ring",
        others.len()
    );
    confirmed
}

/// Once this node's peer listener at `peer_listen` accepts connections and
/// its source has listed other members, tell every other member that it is
/// (back) in the ring; members that do not confirm are asked again a few
/// times, a little later each time.
pub async fn joined(
    client: &OriginClient,
    cluster: &Cluster,
    origin: &str,
    peer_listen: std::net::SocketAddr,
) {
    let started = async {
        let ready = || async { !others(cluster).is_empty() };
        crate::cluster::membership::listening(&peer_listen.to_string()).await
            && crate::cluster::membership::poll_until(ready).await
    };
    if !started.await {
        log::debug!(
            "no peer listener at {peer_listen}, or no other member: not announcing this node"
        );
        return;
    }
    let mut pending = others(cluster);
    for round in 0..JOIN_ROUNDS {
        if round > 0 {
            tokio::time::sleep(backoff::after(round, JOIN_RETRY, JOIN_RETRY * 8)).await;
        }
        let within = cluster.peer_timeout;
        let notices = pending
            .iter()
            .map(|to| notify(client, cluster, origin, peers::JOINED, "/", to, within));
        let confirmed = join_all(notices).await;
        pending = pending
            .into_iter()
            .zip(confirmed)
            .filter_map(|(to, ok)| (!ok).then_some(to))
            .collect();
        if pending.is_empty() {
            return;
        }
    }
    log::debug!("joined: not confirmed by {}", pending.join(", "));
}

/// A verified notice `method` from the member `from` (its query says how
/// long it still serves): act on it. True when it changed this node's ring.
pub fn receive(cluster: &Cluster, method: &str, from: &str, query: Option<&str>) -> bool {
    match method {
        peers::LEAVING => {
            metrics::observe_member_notice("leaving");
            cluster.member_leaving(from, serving_for(query))
        }
        peers::JOINED => {
            metrics::observe_member_notice("joined");
            cluster.member_joined(from)
        }
        _ => false,
    }
}

/// `serving_ms=N` in a `LEAVING` notice's query, capped; zero if absent.
fn serving_for(query: Option<&str>) -> Duration {
    let millis = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("serving_ms="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(millis).min(MAX_SERVING)
}

/// The members on this node's ring but itself.
fn others(cluster: &Cluster) -> Vec<String> {
    let ring = cluster.ring();
    ring.members()
        .iter()
        .map(|m| m.addr.clone())
        .filter(|a| *a != cluster.me)
        .collect()
}

/// Send one notice; true when the member confirmed it.
async fn notify(
    client: &OriginClient,
    cluster: &Cluster,
    origin: &str,
    method: &str,
    path: &str,
    to: &str,
    within: Duration,
) -> bool {
    let Ok(request) = RequestHeader::build(method, path.as_bytes(), None) else {
        return false;
    };
    let sent = cluster.send_signed(client, request, origin, to, None, within);
    match tokio::time::timeout(within, sent).await {
        Ok(Ok(status)) if status.is_success() => true,
        outcome => {
            log::debug!("{method} notice to {to} not confirmed: {outcome:?}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_time_comes_from_the_query_capped() {
        assert_eq!(
            serving_for(Some("serving_ms=1500")),
            Duration::from_millis(1500)
        );
        assert_eq!(
            serving_for(Some("a=1&serving_ms=20")),
            Duration::from_millis(20)
        );
        assert_eq!(serving_for(Some("serving_ms=x")), Duration::ZERO);
        assert_eq!(serving_for(None), Duration::ZERO);
        assert_eq!(serving_for(Some("serving_ms=99999999999")), MAX_SERVING);
    }
}
