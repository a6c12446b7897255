//! Membership: who is in the cluster right now.
//!
//! A source (a static list, DNS, or etcd) publishes the current member list
//! on a `watch` channel; the cluster rebuilds its ring from each new list
//! (see `cluster.rs`). Every list is sorted, de-duplicated and includes this
//! node itself, so two nodes that see the same members build the same ring.

mod dns;
mod etcd;

use crate::config::{ClusterConfig, MembershipConfig};
use tokio::sync::watch;

/// Sources produce ring members; the ring (a pure structure) defines them.
pub use crate::cluster::ring::Member;

/// Sort, de-duplicate (by address, keeping the largest weight) and make sure `me` is present.
pub fn normalize(mut members: Vec<Member>, me: &Member) -> Vec<Member> {
    if !members.iter().any(|m| m.addr == me.addr) {
        members.push(me.clone());
    }
    members.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.weight.cmp(&a.weight)));
    members.dedup_by(|a, b| a.addr == b.addr);
    members
}

/// Start the configured source. The receiver holds the current list at all
/// times (this node alone until the source first answers).
pub async fn start(config: &ClusterConfig) -> crate::error::Result<watch::Receiver<Vec<Member>>> {
    start_serving(config, None).await
}

/// [`start`] for a node whose peer listener is about to open at
/// `peer_listen`: a source that registers this node (etcd) does so only once
/// that listener accepts connections, so that no member routes to it before
/// it can answer.
pub async fn start_serving(
    config: &ClusterConfig,
    peer_listen: Option<String>,
) -> crate::error::Result<watch::Receiver<Vec<Member>>> {
    let me = Member::new(config.advertise_addr(), 1);
    let list = match &config.membership {
        MembershipConfig::Dns(dns) => return dns::start(dns.clone(), config, me).await,
        MembershipConfig::Etcd(etcd) => return etcd::start(etcd.clone(), me, peer_listen).await,
        MembershipConfig::Static(list) => list,
    };
    let members = list
        .iter()
        .map(|s| Member::new(s.addr(), s.weight()))
        .collect();
    // A static list never changes: the sender goes at once, and the ring
    // updater, seeing the channel closed, simply keeps this first list.
    let (_, rx) = watch::channel(normalize(members, &me));
    Ok(rx)
}

/// Wait until something accepts connections at `addr`; whether it did
/// (see [`poll_until`]).
pub(crate) async fn listening(addr: &str) -> bool {
    poll_until(|| async { tokio::net::TcpStream::connect(addr).await.is_ok() }).await
}

/// Poll `condition` every 50 ms, for a minute at most; whether it held.
/// For a node's own start-up (its listener, its ring), not for requests.
pub(crate) async fn poll_until<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Replace the published list with `new` if it differs, logging who joined,
/// who left and whose weight changed. Shared by the DNS and etcd sources.
pub(super) fn publish_if_changed(
    tx: &watch::Sender<Vec<Member>>,
    new: Vec<Member>,
    source: &str,
) -> bool {
    tx.send_if_modified(|current| {
        if *current == new {
            return false;
        }
        let joined: Vec<&str> = new
            .iter()
            .filter(|m| !current.iter().any(|c| c.addr == m.addr))
            .map(|m| m.addr.as_str())
            .collect();
        let left: Vec<&str> = current
            .iter()
            .filter(|c| !new.iter().any(|m| m.addr == c.addr))
            .map(|c| c.addr.as_str())
            .collect();
        let reweighted: Vec<String> = new
            .iter()
            .filter_map(|m| {
                let old = current.iter().find(|c| c.addr == m.addr)?;
                (old.weight != m.weight).then(|| format!("{} {}->{}", m.addr, old.weight, m.weight))
            })
            .collect();
        log::info!(
            target: "ringside::membership",
            "membership ({source}): {} members; joined [{}], left [{}]{}",
            new.len(),
            joined.join(", "),
            left.join(", "),
            if reweighted.is_empty() {
                String::new()
            } else {
                format!(", reweighted [{}]", reweighted.join(", "))
            }
        );
        *current = new;
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_sorts_dedups_and_adds_self() {
        let me = Member::new("10.0.0.2:7070", 1);
        let list = normalize(
            vec![
                Member::new("10.0.0.3:7070", 1),
                Member::new("10.0.0.1:7070", 1),
                Member::new("10.0.0.3:7070", 2),
            ],
            &me,
        );
        let addrs: Vec<_> = list.iter().map(|m| (m.addr.as_str(), m.weight)).collect();
        assert_eq!(
            addrs,
            vec![
                ("10.0.0.1:7070", 1),
                ("10.0.0.2:7070", 1),
                ("10.0.0.3:7070", 2)
            ]
        );
    }
}
