//! The peer channel against real nodes, spoken by the test as a member, an
//! impostor or a broken peer would (`common::channel`): who may open one,
//! what a captured, replayed, reordered, altered or cut record gets, what a
//! peer that stops reading costs, and a cluster of a node with the channel
//! and one without it (a rolling upgrade) serving each other.

mod common;

use common::channel::{self, Claim, Raw};
use common::origin::Origin;
use common::{cluster_yaml, eventually, free_port, owner_of, Ringside, CLUSTER_SECRET};
use ringside::channel::wire::Frame;
use ringside::config::OriginUrl;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);

/// A node `b` in a cluster of `a`, `b` and `c` where only `b` runs: the
/// test speaks for `a` (or pretends to).
struct Lone {
    origin: Origin,
    node: Ringside,
    a: String,
    b: String,
    c: String,
}

impl Lone {
    async fn start(top: &str) -> Lone {
        let origin = Origin::start().await;
        let [a, b, c] = [0; 3].map(|_| format!("127.0.0.1:{}", free_port()));
        let members = [a.clone(), b.clone(), c.clone()];
        let yaml = format!("{top}{}", cluster_yaml(&b, &members, ""));
        let node = Ringside::start(&origin.url(), &yaml).await;
        Lone {
            origin,
            node,
            a,
            b,
            c,
        }
    }

    fn peer(&self) -> std::net::SocketAddr {
        self.node.peer_addr().expect("a peer listener")
    }

    /// The origin as the channel names it (`scheme://host:port`).
    fn origin_name(&self) -> String {
        OriginUrl::parse(&self.origin.url())
            .expect("origin url")
            .key_prefix()
            .to_owned()
    }

    /// The claim of member `a` with the cluster secret.
    fn as_a(&self) -> Claim<'_> {
        Claim {
            from: &self.a,
            to: &self.b,
            secret: CLUSTER_SECRET,
        }
    }

    async fn refusals(&self, reason: &str) -> f64 {
        let label = format!("reason=\"{reason}\"");
        (self.node)
            .metric("ringside_peer_channel_refusals_total", &[&label])
            .await
    }

    async fn open_channels(&self) -> f64 {
        (self.node)
            .metric("ringside_peer_channels", &["role=\"owner\""])
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_is_answered_from_the_store_many_requests_at_a_time() {
    let lone = Lone::start("").await;
    let origin = lone.origin_name();
    let mut conn = channel::open(lone.peer(), &lone.as_a()).await.open();
    let path = "/ch/one?cc=max-age%3D60";
    let first = conn.get(1, &origin, path).await.expect("an answer");
    assert_eq!(first.status, 200);
    assert!(first.text().contains("/ch/one"), "{}", first.text());
    let again = conn.get(3, &origin, path).await.expect("an answer");
    assert_eq!(again.body, first.body);
    let status = again.header("cache-status").unwrap_or_default();
    assert!(status.contains("hit"), "from the owner's store: {status}");
    assert_eq!(lone.origin.hits(path), 1);

    // Fifty requests in flight on the one connection, sent before any
    // answer is read, a slow one first: it holds up none of the others.
    for k in 0..50u32 {
        let delay = if k == 0 { "&delay_ms=1500" } else { "" };
        let path = format!("/ch/many/{k}?cc=max-age%3D60{delay}");
        conn.send(&channel::get(100 + k, &origin, &path))
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    while order.len() < 50 {
        match conn.frame().await.expect("the answers") {
            Frame::Data {
                stream, end: true, ..
            } => order.push(stream),
            Frame::Head(head) if head.end => order.push(head.stream),
            _ => {}
        }
    }
    assert_eq!(
        order.last(),
        Some(&100),
        "the slow answer came last: {order:?}"
    );
    assert_eq!(lone.origin.total_hits(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshakes_without_the_secret_or_for_another_member_are_refused() {
    let lone = Lone::start("").await;
    let wrong_secret = Claim {
        secret: "not-the-cluster-secret",
        ..lone.as_a()
    };
    assert_eq!(
        channel::open(lone.peer(), &wrong_secret).await.refusal(),
        "credentials"
    );
    let for_c = Claim {
        to: &lone.c,
        ..lone.as_a()
    };
    assert_eq!(
        channel::open(lone.peer(), &for_c).await.refusal(),
        "not-for-me",
        "a handshake meant for another member is not taken here"
    );
    let from_b = Claim {
        from: &lone.b,
        ..lone.as_a()
    };
    assert_eq!(
        channel::open(lone.peer(), &from_b).await.refusal(),
        "from-me",
        "a handshake reflected to its own sender"
    );
    let stranger = format!("127.0.0.1:{}", free_port());
    let non_member = Claim {
        from: &stranger,
        ..lone.as_a()
    };
    assert_eq!(
        channel::open(lone.peer(), &non_member).await.refusal(),
        "not-a-member"
    );
    assert_eq!(lone.refusals("credentials").await, 1.0);
    assert_eq!(
        (lone.node)
            .metric("ringside_peer_auth_failures_total", &[])
            .await,
        1.0
    );
    // The node proves itself only to a Hello it admits, and never with a
    // proof that a wrong secret can check: the wrong-secret asker also
    // finds the Welcome's proof wrong (its refusal came first above).
    let mut raw = Raw::connect(lone.peer()).await;
    let hello = channel::hello(&wrong_secret);
    let mut first = ringside::channel::handshake::PREFACE.to_vec();
    first.extend(channel::plain(&Frame::Hello(hello.clone())));
    raw.write(&first).await.unwrap();
    let Some(Ok(Frame::Welcome(welcome))) = raw.record().await.map(|r| Frame::parse(r.freeze()))
    else {
        panic!("a Welcome");
    };
    let transcript = ringside::channel::handshake::transcript(&hello, &welcome);
    let wrong = channel::key(wrong_secret.secret);
    let proof = ringside::channel::handshake::server_proof(&wrong, &transcript);
    assert!(!ringside::channel::handshake::proof_matches(
        &welcome.mac,
        &proof
    ));
    assert_eq!(lone.origin.total_hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_reordered_altered_or_foreign_records_are_never_served() {
    let lone = Lone::start("").await;
    let origin = lone.origin_name();
    // Every request reaches the origin (no-store): what an accepted replay
    // would cost shows there.
    let path = |k: &str| format!("/ch/replay/{k}?cc=no-store");

    // A whole session, replayed on a new connection: the node's fresh
    // nonce makes the recorded Finish worthless.
    let mut conn = channel::open(lone.peer(), &lone.as_a()).await.open();
    let answer = conn.get(1, &origin, &path("session")).await.unwrap();
    assert_eq!(answer.status, 200);
    let mut replay = Raw::connect(lone.peer()).await;
    replay.write(&conn.sent).await.unwrap();
    let first = replay.record().await.map(|r| Frame::parse(r.freeze()));
    assert!(matches!(first, Some(Ok(Frame::Welcome(_)))), "{first:?}");
    let second = replay.record().await.map(|r| Frame::parse(r.freeze()));
    let refused = Frame::Refused {
        reason: "credentials".into(),
    };
    assert_eq!(second, Some(Ok(refused)));
    assert!(replay.closed().await);

    // A record sent again on its own connection.
    let request = channel::get(3, &origin, &path("twice"));
    let record = conn.seal(&request);
    conn.send_bytes(&record).await.unwrap();
    assert_eq!(conn.answer(3).await.unwrap().status, 200);
    conn.send_bytes(&record).await.unwrap();
    assert!(
        conn.raw.closed().await,
        "a replayed record closes the channel"
    );

    // Records out of order.
    let mut conn = channel::open(lone.peer(), &lone.as_a()).await.open();
    let early = conn.seal(&channel::get(1, &origin, &path("early")));
    let late = conn.seal(&channel::get(3, &origin, &path("late")));
    conn.send_bytes(&late).await.unwrap();
    conn.send_bytes(&early).await.unwrap();
    assert!(
        conn.raw.closed().await,
        "a reordered record closes the channel"
    );

    // A record altered on the way, one byte at a time in three places.
    for at in [10, 20, 40] {
        let mut conn = channel::open(lone.peer(), &lone.as_a()).await.open();
        let mut record = conn.seal(&channel::get(1, &origin, &path("altered")));
        record[at] ^= 0x20;
        conn.send_bytes(&record).await.unwrap();
        assert!(conn.raw.closed().await, "altered at {at}");
    }

    // A record sealed under a key the node never derived.
    let mut conn = channel::open(lone.peer(), &lone.as_a()).await.open();
    let mut out = bytes::BytesMut::new();
    channel::foreign_sealer().seal(&channel::get(1, &origin, &path("foreign")), &mut out);
    conn.send_bytes(&out).await.unwrap();
    assert!(conn.raw.closed().await);

    for k in ["early", "late", "altered", "foreign"] {
        assert_eq!(lone.origin.hits(&path(k)), 0, "{k} was served");
    }
    assert_eq!(lone.origin.hits(&path("twice")), 1);
    assert_eq!(lone.origin.hits(&path("session")), 1);
    assert!(lone.refusals("frame").await >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_or_stalled_asker_costs_the_owner_nothing_lasting() {
    // Writes to an asker that stopped reading give up after 1 s.
    let lone = Lone::start("request_header_timeout: 1s\n").await;
    let origin = lone.origin_name();

    // Cut inside a record: the connection ends, nothing is served.
    let mut cut = channel::open(lone.peer(), &lone.as_a()).await.open();
    let record = cut.seal(&channel::get(1, &origin, "/ch/cut?cc=no-store"));
    let half = channel::cut(&record, record.len() / 2);
    cut.send_bytes(&half).await.unwrap();
    drop(cut);

    // An asker that asks for 32 MiB and never reads a byte of it.
    let mut stalled = channel::open(lone.peer(), &lone.as_a()).await.open();
    for k in 0..32u32 {
        let path = format!("/ch/big/{k}?cc=max-age%3D60&size=1048576");
        let frame = channel::get(1 + 2 * k, &origin, &path);
        stalled.send(&frame).await.unwrap();
    }
    // Open first (else the wait below could pass before it began)...
    eventually(WITHIN, "the owner counts the stalled channel", || async {
        lone.open_channels().await >= 1.0
    })
    .await;
    eventually(WITHIN, "the owner closes both connections", || async {
        lone.open_channels().await == 0.0
    })
    .await;
    assert_eq!(lone.origin.hits("/ch/cut?cc=no-store"), 0);

    // And serves the next asker as before.
    let mut conn = channel::open(lone.peer(), &lone.as_a()).await.open();
    let answer = conn.get(1, &origin, "/ch/after?cc=max-age%3D60").await;
    assert_eq!(answer.map(|a| a.status), Some(200));
    drop(stalled);
}

/// A rolling upgrade: a node with the channel and one that does not speak
/// it (`peer_protocol: http1` accepts only signed HTTP on its peer
/// listener, as a node of the previous version does) serve each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_channel_and_one_without_serve_each_other() {
    let origin = Origin::start().await;
    let members: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let new = Ringside::start(&origin.url(), &cluster_yaml(&members[0], &members, "")).await;
    let old_extra = "  peer_protocol: http1\n";
    let old = Ringside::start(
        &origin.url(),
        &cluster_yaml(&members[1], &members, old_extra),
    )
    .await;
    let keys: Vec<String> = (0..40)
        .map(|k| format!("/mixed/{k}?cc=max-age%3D60"))
        .collect();
    let owned_by = |m: &String| {
        keys.iter()
            .filter(|k| &owner_of(&members[0], &members, &origin.url(), k) == m)
            .count()
    };
    assert!(owned_by(&members[0]) > 5 && owned_by(&members[1]) > 5);
    for key in &keys {
        for node in [&new, &old] {
            let r = node.get(key).await;
            assert_eq!(r.status, 200);
            assert!(r.text().contains("/mixed/"), "{}", r.text());
        }
        assert_eq!(origin.hits(key), 1, "one origin fetch for {key}");
    }
    for node in [&new, &old] {
        let ok = node
            .metric("ringside_peer_requests_total", &["outcome=\"ok\""])
            .await;
        assert!(ok >= 5.0, "answered by the other node: {ok}");
    }
    let channels = new
        .metric("ringside_peer_channels", &["role=\"asker\""])
        .await;
    assert_eq!(channels, 0.0, "the new node asks the old one over HTTP");
}
