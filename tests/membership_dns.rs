//! DNS membership against a real (tiny) authoritative DNS server.
//!
//! The server runs in the test on a free UDP port of 127.0.0.1 and answers
//! for one name whose records the test changes while ringside polls it, or
//! stops answering, or says NXDOMAIN. The member list is read from the
//! receiver that `ringside::membership::start` returns, as the cluster
//! reads it.

mod common;
use common::dns::{DnsServer, Mode, Srv};
use ringside::config::{ClusterConfig, DnsMembership, MembershipConfig};
use ringside::membership::start;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

const NAME: &str = "peers.ringside.test.";
const INTERVAL: Duration = Duration::from_millis(200);

fn logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn cluster(advertise: &str, peer_listen: &str, dns: DnsMembership) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        peer_listen: peer_listen.parse().expect("an IP:port"),
        advertise: advertise.into(),
        membership: MembershipConfig::Dns(dns),
        ..Default::default()
    }
}

fn dns(server: &DnsServer, port: Option<u16>) -> DnsMembership {
    DnsMembership {
        name: NAME.into(),
        port,
        srv: false,
        interval: INTERVAL,
        nameserver: Some(server.addr.to_string()),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const ME: &str = "127.0.1.9:7071";

/// A DNS server answering NAME with 127.0.1.1 and 127.0.1.2.
async fn two_members() -> DnsServer {
    DnsServer::start(
        NAME,
        Mode::Answer(vec![ip("127.0.1.1"), ip("127.0.1.2")], vec![]),
    )
    .await
}

/// Membership of node ME (peers on port 7070) from `server`.
async fn watch_members(
    server: &DnsServer,
) -> tokio::sync::watch::Receiver<Vec<ringside::membership::Member>> {
    start(&cluster(ME, "127.0.0.1:7070", dns(server, Some(7070))))
        .await
        .expect("start")
}

#[tokio::test]
async fn members_join_and_leave_and_self_is_always_there() {
    logs();
    let server = two_members().await;
    let mut rx = watch_members(&server).await;
    // Never empty: this node alone until the first answer.
    assert!(common::member_addrs(&rx).contains(&ME.to_string()));

    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7070", "127.0.1.2:7070", ME],
        Duration::from_secs(5),
    )
    .await;

    // A join.
    server.set(Mode::Answer(
        vec![ip("127.0.1.1"), ip("127.0.1.2"), ip("127.0.1.3")],
        vec![],
    ));
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7070", "127.0.1.2:7070", "127.0.1.3:7070", ME],
        Duration::from_secs(5),
    )
    .await;

    // A leave.
    server.set(Mode::Answer(vec![ip("127.0.1.2"), ip("127.0.1.3")], vec![]));
    common::wait_for_members(
        &mut rx,
        &["127.0.1.2:7070", "127.0.1.3:7070", ME],
        Duration::from_secs(5),
    )
    .await;

    // Unchanged answers publish nothing.
    rx.mark_unchanged();
    let polled = server.record_a_answers();
    common::eventually(Duration::from_secs(10), "3 more polls", || async {
        server.record_a_answers() >= polled + 3
    })
    .await;
    assert!(!rx.has_changed().unwrap(), "republished an unchanged list");
}

#[tokio::test]
async fn an_unanswering_server_keeps_the_list_and_persistent_nxdomain_shrinks_it() {
    logs();
    let server = two_members().await;
    let mut rx = watch_members(&server).await;
    let full = ["127.0.1.1:7070", "127.0.1.2:7070", ME];
    common::wait_for_members(&mut rx, &full, Duration::from_secs(5)).await;

    // The server stops answering: lookups time out, the list stays.
    server.set(Mode::Silent);
    rx.mark_unchanged();
    let unanswered = server.unanswered_a_queries();
    common::eventually(
        Duration::from_secs(30),
        "several lookups time out",
        || async { server.unanswered_a_queries() >= unanswered + 6 },
    )
    .await;
    assert!(
        !rx.has_changed().unwrap(),
        "list changed while DNS was silent"
    );
    assert_eq!(common::member_addrs(&rx), full);

    // NXDOMAIN for good: the list shrinks to this node, but only after
    // several answers in a row said so.
    server.set(Mode::NxDomain);
    let nx_before = server.nxdomain_a_answers();
    common::wait_for_members(&mut rx, &[ME], Duration::from_secs(40)).await;
    let nx = server.nxdomain_a_answers() - nx_before;
    assert!(
        nx >= 3,
        "shrank after {nx} NXDOMAIN answers; expected at least 3"
    );

    // The name comes back: so do the members.
    server.set(Mode::Answer(vec![ip("127.0.1.1")], vec![]));
    common::wait_for_members(&mut rx, &["127.0.1.1:7070", ME], Duration::from_secs(40)).await;
}

#[tokio::test]
async fn a_short_nxdomain_blip_does_not_shrink_the_list() {
    let members = vec![ip("127.0.1.1"), ip("127.0.1.2")];
    logs();
    let server = DnsServer::start(NAME, Mode::Answer(members.clone(), vec![])).await;
    let mut rx = watch_members(&server).await;
    let full = ["127.0.1.1:7070", "127.0.1.2:7070", ME];
    common::wait_for_members(&mut rx, &full, Duration::from_secs(5)).await;
    rx.mark_unchanged();

    // Two polls see NXDOMAIN, then the records are back.
    server.set(Mode::NxDomainFor(2, members));
    let answered = server.record_a_answers();
    common::eventually(
        Duration::from_secs(10),
        "the poller keeps asking",
        || async { server.record_a_answers() >= answered + 3 },
    )
    .await;
    assert_eq!(server.nxdomain_a_answers(), 2);
    assert!(
        !rx.has_changed().unwrap(),
        "a 2-poll NXDOMAIN blip changed the list"
    );
    assert_eq!(common::member_addrs(&rx), full);
}

#[tokio::test]
async fn ipv6_members_and_the_port_of_peer_listen() {
    logs();
    let server = DnsServer::start(
        NAME,
        Mode::Answer(vec![ip("127.0.1.1")], vec!["::1".parse().unwrap()]),
    )
    .await;
    // No dns.port: peer_listen's port is used for every member.
    let mut rx = start(&cluster(
        "127.0.1.9:7443",
        "127.0.0.1:7443",
        dns(&server, None),
    ))
    .await
    .expect("start");
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7443", "127.0.1.9:7443", "[::1]:7443"],
        Duration::from_secs(5),
    )
    .await;
    // The AAAA records go, the A stays: only the IPv6 member leaves.
    server.set(Mode::Answer(vec![ip("127.0.1.1")], vec![]));
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7443", "127.0.1.9:7443"],
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn answers_too_large_for_udp_are_fetched_over_tcp() {
    logs();
    let server = two_members().await;
    server.truncate_udp.store(true, Ordering::SeqCst);
    let mut rx = watch_members(&server).await;
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7070", "127.0.1.2:7070", ME],
        Duration::from_secs(5),
    )
    .await;
    assert!(server.tcp_queries.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn the_poller_stops_when_every_receiver_is_dropped() {
    logs();
    let server = DnsServer::start(NAME, Mode::Answer(vec![ip("127.0.1.1")], vec![])).await;
    let mut rx = watch_members(&server).await;
    common::wait_for_members(&mut rx, &["127.0.1.1:7070", ME], Duration::from_secs(5)).await;
    drop(rx);
    // An absence check (no more polls), so it waits on the clock: first
    // for a poll already under way to finish, then five intervals of quiet.
    tokio::time::sleep(INTERVAL * 2).await;
    let asked = server.record_a_answers();
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(server.record_a_answers(), asked, "still polling for nobody");
}

#[tokio::test]
async fn a_bad_nameserver_is_a_start_error() {
    let config = cluster(
        ME,
        "127.0.0.1:7070",
        DnsMembership {
            name: NAME.into(),
            port: None,
            srv: false,
            interval: INTERVAL,
            nameserver: Some("not-an-address".into()),
        },
    );
    let err = start(&config).await.expect_err("must refuse").to_string();
    assert!(err.contains("nameserver"), "{err}");
}

/// Membership of node ME from the SRV records of `name` on `server`.
async fn watch_srv_members(
    server: &DnsServer,
    name: &str,
) -> tokio::sync::watch::Receiver<Vec<ringside::membership::Member>> {
    let dns = DnsMembership {
        name: name.into(),
        port: None,
        srv: true,
        interval: INTERVAL,
        nameserver: Some(server.addr.to_string()),
    };
    start(&cluster(ME, "127.0.0.1:7070", dns))
        .await
        .expect("start")
}

/// (address, weight) of every member.
fn weights(
    rx: &tokio::sync::watch::Receiver<Vec<ringside::membership::Member>>,
) -> Vec<(String, u32)> {
    rx.borrow()
        .iter()
        .map(|m| (m.addr.clone(), m.weight))
        .collect()
}

#[tokio::test]
async fn srv_members_listen_on_their_records_ports_with_relative_weights() {
    logs();
    // Consul's DNS interface: `<service>.service.consul`, the targets'
    // addresses in the additional section.
    let name = "catalog.service.consul.";
    let records = vec![
        Srv::new("node-a.node.dc1.consul.", 7001, 10, ip("127.0.1.1")),
        Srv::new("node-b.node.dc1.consul.", 7002, 20, ip("127.0.1.2")),
    ];
    let server = DnsServer::start(
        name,
        Mode::Srv {
            records: records.clone(),
            glue: true,
        },
    )
    .await;
    let mut rx = watch_srv_members(&server, name).await;
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7001", "127.0.1.2:7002", ME],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        weights(&rx),
        vec![
            ("127.0.1.1:7001".to_string(), 1),
            ("127.0.1.2:7002".to_string(), 2),
            (ME.to_string(), 1),
        ],
        "SRV weights 10 and 20 are 1 and 2 on the ring"
    );
    // A member moves to another port: the ring follows.
    let moved = vec![
        records[0].clone(),
        Srv::new("node-b.node.dc1.consul.", 7003, 20, ip("127.0.1.2")),
    ];
    server.set(Mode::Srv {
        records: moved,
        glue: true,
    });
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7001", "127.0.1.2:7003", ME],
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn srv_targets_without_addresses_in_the_answer_are_looked_up() {
    logs();
    // Kubernetes: `_<port name>._tcp.<service>.<namespace>.svc.cluster.local`,
    // one target per ready pod, looked up by name.
    let name = "_peer._tcp.catalog-ringside.shop.svc.cluster.local.";
    let pod = |n: u8| {
        Srv::new(
            &format!("10-0-0-{n}.catalog-ringside.shop.svc.cluster.local."),
            7070,
            50,
            ip(&format!("127.0.1.{n}")),
        )
    };
    let server = DnsServer::start(
        name,
        Mode::Srv {
            records: vec![pod(1), pod(2)],
            glue: false,
        },
    )
    .await;
    let mut rx = watch_srv_members(&server, name).await;
    common::wait_for_members(
        &mut rx,
        &["127.0.1.1:7070", "127.0.1.2:7070", ME],
        Duration::from_secs(5),
    )
    .await;
    assert!(
        weights(&rx).iter().all(|(_, w)| *w == 1),
        "{:?}",
        weights(&rx)
    );
    // A pod that is no longer ready leaves the records, and the ring.
    server.set(Mode::Srv {
        records: vec![pod(2)],
        glue: false,
    });
    common::wait_for_members(&mut rx, &["127.0.1.2:7070", ME], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn srv_membership_that_stops_answering_keeps_its_members() {
    logs();
    let name = "catalog.service.consul.";
    let server = DnsServer::start(
        name,
        Mode::Srv {
            records: vec![Srv::new("a.node.consul.", 7001, 1, ip("127.0.1.1"))],
            glue: true,
        },
    )
    .await;
    let mut rx = watch_srv_members(&server, name).await;
    common::wait_for_members(&mut rx, &["127.0.1.1:7001", ME], Duration::from_secs(5)).await;
    server.set(Mode::Silent);
    common::eventually(
        Duration::from_secs(10),
        "the silent server was asked",
        || async { server.unanswered_srv_queries() >= 2 },
    )
    .await;
    assert_eq!(common::member_addrs(&rx), vec!["127.0.1.1:7001", ME]);
}
