//! etcd membership against a real etcd (Debian's `etcd-server`, binary
//! `etcd`), started per test on free 127.0.0.1 ports with its own data
//! directory, and killed by PID when the test's handle drops.
//!
//! Without `etcd` on the PATH these tests fail, saying how to install it:
//! CI installs it (`.ci/run`), and a silently skipped test would hide that
//! etcd membership went untested.

mod common;
use common::etcd::Etcd;
use common::free_port;
use ringside::config::{ClusterConfig, EtcdMembership, MembershipConfig};
use ringside::membership::{start, Member};
use std::time::Duration;
use tokio::time::Instant;

const PREFIX: &str = "/ringside/members/";

fn logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn cluster(advertise: &str, endpoints: Vec<String>, lease_ttl: Duration) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        peer_listen: "127.0.0.1:7070".parse().unwrap(),
        advertise: advertise.into(),
        membership: MembershipConfig::Etcd(EtcdMembership {
            endpoints,
            prefix: PREFIX.into(),
            lease_ttl,
            tls: None,
            auth: None,
        }),
        ..Default::default()
    }
}

const A: &str = "127.0.3.1:7070";
const B: &str = "127.0.3.2:7070";
const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_other_and_a_dead_nodes_lease_expires() {
    logs();
    let etcd = Etcd::start().await;
    // A's first endpoint has nothing behind it: it must move on to the next.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut rx_a = start(&cluster(A, vec![dead, etcd.url()], TTL))
        .await
        .expect("start A");
    // B runs on a runtime of its own, shut down below as a crash would stop it:
    // its task is dropped mid-flight and nobody renews its lease any more.
    let runtime_b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime for B");
    let config_b = cluster(B, vec![etcd.url()], TTL);
    let mut rx_b = runtime_b
        .spawn(async move { start(&config_b).await })
        .await
        .expect("B's start task")
        .expect("start B");

    common::wait_for_members(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    common::wait_for_members(&mut rx_b, &[A, B], Duration::from_secs(10)).await;
    assert_eq!(
        etcd.keys(PREFIX).await,
        vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")]
    );

    // Well past the TTL, both are still there: the leases are being renewed.
    // Time is the subject (a lease outliving its TTL), so this waits on the clock.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(common::member_addrs(&rx_a), [A, B]);

    let died = Instant::now();
    runtime_b.shutdown_background();
    common::wait_for_members(&mut rx_a, &[A], TTL + Duration::from_secs(4)).await;
    let took = died.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "B left after {took:?}: sooner than its lease could expire"
    );
    assert_eq!(etcd.keys(PREFIX).await, vec![format!("{PREFIX}{A}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_deregisters_at_once() {
    logs();
    let etcd = Etcd::start().await;
    // A long lease: leaving through expiry would take 30 s.
    let ttl = Duration::from_secs(30);
    let mut rx_a = start(&cluster(A, vec![etcd.url()], ttl))
        .await
        .expect("start A");
    let rx_b = start(&cluster(B, vec![etcd.url()], ttl))
        .await
        .expect("start B");
    common::wait_for_members(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    drop(rx_b);
    common::wait_for_members(&mut rx_a, &[A], Duration::from_secs(5)).await;
    assert_eq!(etcd.keys(PREFIX).await, vec![format!("{PREFIX}{A}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_written_by_others_are_read_with_their_weights() {
    logs();
    let etcd = Etcd::start().await;
    // Written before the node starts (seen by the listing) ...
    etcd.put(
        &format!("{PREFIX}127.0.3.7:7070"),
        r#"{"addr":"127.0.3.7:7070","weight":3}"#,
    )
    .await;
    etcd.put("/elsewhere/127.0.3.99:7070", "127.0.3.99:7070")
        .await;
    let mut rx = start(&cluster(A, vec![etcd.url()], TTL))
        .await
        .expect("start A");
    common::wait_for_members(&mut rx, &[A, "127.0.3.7:7070"], Duration::from_secs(10)).await;
    assert_eq!(
        rx.borrow().clone(),
        vec![Member::new(A, 1), Member::new("127.0.3.7:7070", 3)]
    );
    // ... and after (seen by the watch): a bare address as the value.
    etcd.put(&format!("{PREFIX}127.0.3.8:7070"), "127.0.3.8:7070")
        .await;
    common::wait_for_members(
        &mut rx,
        &[A, "127.0.3.7:7070", "127.0.3.8:7070"],
        Duration::from_secs(5),
    )
    .await;
    etcd.delete(&format!("{PREFIX}127.0.3.7:7070")).await;
    common::wait_for_members(&mut rx, &[A, "127.0.3.8:7070"], Duration::from_secs(5)).await;

    // Someone deletes this node's own key: it puts it back.
    etcd.delete(&format!("{PREFIX}{A}")).await;
    common::eventually(Duration::from_secs(10), "A puts its key back", || async {
        etcd.keys(PREFIX).await.contains(&format!("{PREFIX}{A}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_keeps_the_list_and_the_watch_recovers() {
    logs();
    let mut etcd = Etcd::start().await;
    let mut rx_a = start(&cluster(A, vec![etcd.url()], TTL))
        .await
        .expect("start A");
    let mut rx_b = start(&cluster(B, vec![etcd.url()], TTL))
        .await
        .expect("start B");
    common::wait_for_members(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    common::wait_for_members(&mut rx_b, &[A, B], Duration::from_secs(10)).await;

    // etcd goes away for longer than the lease TTL: nothing changes meanwhile.
    // An absence check over a span of time, so this waits on the clock.
    etcd.stop();
    rx_a.mark_unchanged();
    rx_b.mark_unchanged();
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        !rx_a.has_changed().unwrap(),
        "A's list changed while etcd was down"
    );
    assert!(
        !rx_b.has_changed().unwrap(),
        "B's list changed while etcd was down"
    );
    assert_eq!(common::member_addrs(&rx_a), [A, B]);

    etcd.restart().await;
    // Both are registered again (their leases survived, or were re-granted)...
    let both = vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")];
    common::eventually(
        Duration::from_secs(15),
        "A and B registered after the restart",
        || async { etcd.keys(PREFIX).await == both },
    )
    .await;
    // ... and both follow changes again.
    let c = "127.0.3.3:7070";
    etcd.put(&format!("{PREFIX}{c}"), c).await;
    common::wait_for_members(&mut rx_a, &[A, B, c], Duration::from_secs(15)).await;
    common::wait_for_members(&mut rx_b, &[A, B, c], Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_again_when_etcd_loses_its_data() {
    logs();
    let mut etcd = Etcd::start().await;
    let mut rx_a = start(&cluster(A, vec![etcd.url()], TTL))
        .await
        .expect("start A");
    let mut rx_b = start(&cluster(B, vec![etcd.url()], TTL))
        .await
        .expect("start B");
    common::wait_for_members(&mut rx_a, &[A, B], Duration::from_secs(10)).await;

    // A brand-new etcd on the same address: the old leases do not exist there.
    etcd.restart_empty().await;
    let both = vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")];
    common::eventually(
        Duration::from_secs(15),
        "A and B registered in the new etcd",
        || async { etcd.keys(PREFIX).await == both },
    )
    .await;
    common::wait_for_members(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    common::wait_for_members(&mut rx_b, &[A, B], Duration::from_secs(10)).await;
    // The new registrations live on leases that are renewed: they outlive
    // twice the TTL (time is the subject, so this waits on the clock).
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        etcd.keys(PREFIX).await,
        vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")]
    );
}
