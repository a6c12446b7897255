//! A real cluster: several ringside processes on 127.0.0.1 with static
//! membership, in front of one real origin.

mod common;
use common::origin::Origin;
use common::{start_cluster, Conn};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_fetch_per_key_for_the_whole_cluster() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "").await;
    let path = "/cold?cc=max-age%3D60&delay_ms=300";
    let mut tasks = Vec::new();
    for round in 0..30 {
        let addr = nodes[round % 3].addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await.unwrap();
            conn.request("GET", path, &[]).await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        origin.hits(path),
        1,
        "exactly one origin request cluster-wide"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_object_is_stored_once_cluster_wide() {
    let origin = Origin::start().await;
    // No hot mirrors: this test is about ownership.
    let nodes = start_cluster(&origin.url(), 3, "  hot: {fraction: 0}\n").await;
    for k in 0..30 {
        for node in &nodes {
            let r = node.get(&format!("/k{k}?cc=max-age%3D60")).await;
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(origin.total_hits(), 30);
    let mut entries = 0.0;
    for node in &nodes {
        entries += node.metric("ringside_cache_entries", &[]).await;
    }
    assert_eq!(
        entries, 30.0,
        "each of the 30 objects is stored on exactly one node"
    );
    let mut peer = 0.0;
    for node in &nodes {
        peer += node
            .metric("ringside_requests_total", &["result=\"peer\""])
            .await;
    }
    assert!(
        peer >= 30.0,
        "non-owners answered through the owner: {peer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_peer_costs_no_client_errors() {
    let origin = Origin::start().await;
    let mut nodes = start_cluster(&origin.url(), 3, "").await;
    let victim = nodes.remove(2);
    let pid = victim.pid();
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for k in 0..40 {
        for node in &nodes {
            let r = node.get(&format!("/d{k}?cc=max-age%3D60")).await;
            assert_eq!(r.status, 200, "key {k}");
        }
    }
    drop(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_listener_rejects_requests_without_credentials() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let yaml = std::fs::read_to_string(
        std::env::temp_dir().join(format!("ringside-test-{}.yaml", nodes[0].addr.port())),
    )
    .unwrap();
    let peer_addr: std::net::SocketAddr = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("peer_listen: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut conn = Conn::connect(peer_addr).await.unwrap();
    let r = conn
        .request(
            "GET",
            "/x?cc=max-age%3D60",
            &[("x-ringside-origin", &origin.url())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(origin.total_hits(), 0);
    assert!(
        nodes[0]
            .metric("ringside_peer_auth_failures_total", &[])
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_removes_a_key_cluster_wide_and_needs_the_token() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "").await;
    let path = "/p?cc=max-age%3D600";
    for node in &nodes {
        node.get(path).await;
    }
    assert_eq!(origin.hits(path), 1);
    let mut admin = Conn::connect(nodes[1].admin).await.unwrap();
    let denied = admin.request("PURGE", path, &[]).await.unwrap();
    assert_eq!(denied.status, 401);
    let auth = format!("Bearer {}", common::CLUSTER_SECRET);
    let ok = admin
        .request("PURGE", path, &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    for node in &nodes {
        node.get(path).await;
    }
    assert_eq!(origin.hits(path), 2, "refetched once after the purge");
}
