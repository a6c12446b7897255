//! A node that stops (SIGTERM) hands what it holds to the members that own
//! it once it is gone, and the others take it out of their rings at once,
//! even with a static member list; a node that comes back on the same
//! address asks each key's previous owner before its origin. Real
//! processes, static membership.

mod common;
use common::origin::Origin;
use common::{
    cache_status, eventually, is_hit, paths_owned_by, peer_addrs, start_cluster, Ringside,
};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);

/// Request every path through `node`, each answered 200.
async fn get_all(node: &Ringside, paths: &[String]) {
    for path in paths {
        let r = node.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

/// Wait until every node in `nodes` has `n` members on its ring.
async fn ring_members(nodes: &[Ringside], n: f64) {
    for node in nodes {
        eventually(WITHIN, &format!("{n} ring members"), || async {
            node.metric("ringside_ring_members", &[]).await == n
        })
        .await;
    }
}

/// SIGTERM node 0 and wait for its exit (it hands over first), then until
/// the others have taken it out of their rings.
async fn stop_first(nodes: &mut [Ringside]) {
    nodes[0].terminate().await.expect("node 0 was running");
    ring_members(&nodes[1..], (nodes.len() - 1) as f64).await;
}

async fn sum_metric(nodes: &[Ringside], name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += node.metric(name, labels).await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_node_hands_its_entries_to_their_next_owners() {
    let origin = Origin::start().await;
    let mut nodes = start_cluster(&origin.url(), 3, "").await;
    let peers = peer_addrs(&nodes);
    let url = origin.url();
    let fresh = paths_owned_by(&peers[0], &peers, &url, "/h", "cc=max-age%3D300", 20);
    // Stored (it has a validator to revalidate with), but stale: not worth handing over.
    let stale = paths_owned_by(&peers[0], &peers, &url, "/s", "cc=max-age%3D0&etag=v1", 1);
    get_all(&nodes[0], &fresh).await;
    get_all(&nodes[0], &stale).await;

    // A static list does not change: the others take the node out on its notice.
    stop_first(&mut nodes).await;
    let others = &nodes[1..];
    for node in others {
        get_all(node, &fresh).await;
    }
    for path in &fresh {
        assert_eq!(origin.hits(path), 1, "{path} was fetched again");
    }
    let stored = sum_metric(
        others,
        "ringside_handoff_received_total",
        &["result=\"stored\""],
    )
    .await;
    assert_eq!(stored, fresh.len() as f64, "each fresh entry stored once");
    get_all(&nodes[1], &stale).await;
    assert_eq!(
        origin.hits(&stale[0]),
        2,
        "a stale entry is not handed over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_asks_the_previous_owner_before_the_origin() {
    let origin = Origin::start().await;
    let mut nodes = start_cluster(&origin.url(), 3, "").await;
    let peers = peer_addrs(&nodes);
    let url = origin.url();
    let paths = paths_owned_by(&peers[0], &peers, &url, "/p", "cc=max-age%3D300", 12);
    get_all(&nodes[0], &paths).await;
    stop_first(&mut nodes).await;

    // The same address again, an empty cache: it announces itself and is back in every ring.
    nodes[0].restart().await;
    ring_members(&nodes, 3.0).await;
    for path in &paths {
        let r = nodes[0].get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            cache_status(&r).contains("detail=previous-owner"),
            "{path}: {}",
            cache_status(&r)
        );
        assert_eq!(origin.hits(path), 1, "{path} was fetched again");
        let again = nodes[0].get(path).await;
        assert!(
            is_hit(&again),
            "{path}: stored by its owner: {}",
            cache_status(&again)
        );
    }
    let hits = nodes[0]
        .metric("ringside_previous_owner_lookups_total", &["result=\"hit\""])
        .await;
    assert_eq!(hits, paths.len() as f64);

    // A key the previous owner does not have: it answers from its cache
    // only, so the new owner's own fetch is the only one.
    let cold = paths_owned_by(&peers[0], &peers, &url, "/cold", "cc=max-age%3D300", 1);
    get_all(&nodes[0], &cold).await;
    assert_eq!(
        origin.hits(&cold[0]),
        1,
        "the lookup itself never reaches the origin"
    );
    let misses = nodes[0]
        .metric(
            "ringside_previous_owner_lookups_total",
            &["result=\"miss\""],
        )
        .await;
    assert!(misses >= 1.0, "the cold key was looked up first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_handoff_is_bounded_in_bytes_and_sends_the_most_used_first() {
    let origin = Origin::start().await;
    // Entries of 20 000 bytes: four fit in 90 KiB, five do not.
    let mut nodes = start_cluster(&origin.url(), 3, "  handoff: {max_bytes: 90KiB}\n").await;
    let peers = peer_addrs(&nodes);
    let query = "cc=max-age%3D300&size=20000";
    let paths = paths_owned_by(&peers[0], &peers, &origin.url(), "/b", query, 10);
    let (used, unused) = paths.split_at(4);
    for _ in 0..5 {
        get_all(&nodes[0], used).await;
    }
    get_all(&nodes[0], unused).await;

    stop_first(&mut nodes).await;
    get_all(&nodes[1], &paths).await;
    for path in used {
        assert_eq!(
            origin.hits(path),
            1,
            "{path}, used five times, was not handed over"
        );
    }
    for path in unused {
        assert_eq!(
            origin.hits(path),
            2,
            "{path}: past the byte bound, yet handed over"
        );
    }
}
