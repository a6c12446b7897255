//! A node that is told to stop (SIGTERM) leaves the cluster first: with etcd
//! membership it revokes its lease at once, so the others take it out of
//! their rings while it drains, not when its lease runs out.

mod common;
use common::etcd::Etcd;
use common::origin::Origin;
use common::{eventually, free_port, Ringside};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_deregisters_from_etcd_before_the_lease_expires() {
    const LEASE: Duration = Duration::from_secs(60);
    let etcd = Etcd::start().await;
    let origin = Origin::start().await;
    let prefix = format!("/ringside-leaving-{}/", std::process::id());
    let peer = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "shutdown_delay: 10s\ncluster:\n  enabled: true\n  peer_listen: {peer}\n  secret: {}\n  \
         membership:\n    etcd: {{endpoints: [\"{}\"], prefix: \"{prefix}\", lease_ttl: {}s}}\n",
        common::CLUSTER_SECRET,
        etcd.url(),
        LEASE.as_secs()
    );
    let mut node = Ringside::start(&origin.url(), &yaml).await;
    eventually(Duration::from_secs(20), "the node registered", || async {
        etcd.keys(&prefix).await.len() == 1
    })
    .await;

    let signalled = Instant::now();
    ringside::demo::process::sigterm(node.pid()).expect("SIGTERM");
    eventually(Duration::from_secs(20), "the key is gone", || async {
        etcd.keys(&prefix).await.is_empty()
    })
    .await;
    let gone_after = signalled.elapsed();
    assert!(gone_after < LEASE / 2, "deregistered after {gone_after:?}");
    // Deregistered during shutdown_delay, while it still serves.
    assert!(node.is_running(), "it left before it stopped serving");
    assert_eq!(node.get("/still?cc=max-age%3D60").await.status, 200);
}
