//! What each listener (the app's, the peers', the admin's) lets a client
//! hold, and for how long: open connections (`max_connections`,
//! `admin_max_connections`), a request head (`request_header_timeout`), an
//! idle keep-alive connection (`idle_timeout`), a request body that stops
//! (`request_body_timeout`) and request bodies at once
//! (`max_request_bodies`); and that every refusal on the peer listener says
//! it is one (`x-ringside-refused`), so that the asking node loads from its
//! origin instead of handing the refusal to its app.

mod common;
use common::origin::Origin;
use common::raw::{raw_first_response, raw_first_response_from, raw_open};
use common::{cluster_yaml, eventually, free_port, get, paths_owned_by, Conn, Ringside};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Read from `stream` until the server closes it or `within` passes:
/// what came, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read one response head (up to its blank line) from `stream`, within 10 s.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(head: &str) -> Option<u16> {
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A node alone in its cluster, so that it has a peer listener.
async fn clustered(origin: &Origin, extra: &str) -> Ringside {
    let me = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "{extra}{}",
        cluster_yaml(&me, std::slice::from_ref(&me), "")
    );
    Ringside::start(&origin.url(), &yaml).await
}

// ---- the admin listener ----

/// Prometheus, probes and operators need a few connections: past
/// `admin_max_connections` (64 by default) a new one is answered 503 and
/// closed, as on the proxy's listeners, so that nothing on the pod network
/// can hold the sidecar's memory through its admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_listener_caps_its_connections() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    // Keep-alive clients, each idle after one probe.
    let mut held = Vec::new();
    for i in 0..64 {
        let mut conn = Conn::connect(rs.admin).await.expect("connect");
        let r = conn.request("GET", "/healthz", &[]).await;
        assert_eq!(r.map(|r| r.status).ok(), Some(200), "connection {i}");
        held.push(conn);
    }
    let refused = raw_first_response(rs.admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(refused.status(), Some(503), "the 65th: {:?}", refused.text);
    assert!(
        refused.text.contains("too many connections"),
        "{:?}",
        refused.text
    );
    // The proxy's listener is not affected.
    assert_eq!(rs.get("/app?cc=no-store").await.status, 200);
    drop(held);
    eventually(
        Duration::from_secs(10),
        "the admin port serves again",
        || async { matches!(get(rs.admin, "/healthz").await, Ok(r) if r.status == 200) },
    )
    .await;
    let refusals = rs
        .metric(
            "ringside_connections_refused_total",
            &["listener=\"admin\""],
        )
        .await;
    assert!(refusals >= 1.0, "admin refusals counted: {refusals}");
}

/// A request head that trickles into the admin port is cut off at
/// `admin_request_header_timeout` (5 s by default), however steadily it
/// trickles. Time is the subject: one byte a second, for up to 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_listener_cuts_off_a_slow_head() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let mut slow = raw_open(rs.admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {
                if slow.write_all(b"a").await.is_err() {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a trickling head is still open on the admin port after 30 s"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(rs.admin, "/healthz").await.unwrap().status, 200);
}

// ---- idle connections ----

/// An idle keep-alive connection is closed after `idle_timeout` on the
/// app's and the peers' listeners, and after `admin_idle_timeout` on the
/// admin's: a client that holds connections open without using them gives
/// its slots back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_keep_alive_connections_are_closed_on_every_listener() {
    let origin = Origin::start().await;
    let rs = clustered(&origin, "idle_timeout: 1s\nadmin_idle_timeout: 1s\n").await;
    let peer = rs.peer_addr().expect("a peer listener");
    let cases: [(&str, SocketAddr, &[u8], u16); 3] = [
        (
            "app",
            rs.addr,
            b"GET /idle?cc=no-store HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
        ),
        // Unsigned: refused, and the connection kept open.
        ("peer", peer, b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n", 401),
        (
            "admin",
            rs.admin,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
        ),
    ];
    for (listener, addr, request, status) in cases {
        let mut stream = raw_open(addr, request).await;
        let head = read_head(&mut stream).await;
        assert_eq!(status_of(&head), Some(status), "{listener}: {head:?}");
        assert!(
            head.contains("keep-alive"),
            "{listener}: kept alive: {head:?}"
        );
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(15)).await;
        assert!(
            closed,
            "{listener}: an idle connection is still open after 15 s"
        );
    }
}

// ---- the peer listener's refusals ----

/// A peer listener at `max_connections` refuses new connections, marked as
/// a refusal: an asking node loads from its origin and backs off from the
/// peer, and its app never gets the 503. Here an unauthenticated client
/// holds every slot of a restarted node with idle keep-alive connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_peer_listener_refuses_as_a_peer_and_the_app_is_served() {
    let origin = Origin::start().await;
    let [a, b] = [0; 2].map(|_| format!("127.0.0.1:{}", free_port()));
    let members = [a.clone(), b.clone()];
    let node_a = Ringside::start(&origin.url(), &cluster_yaml(&a, &members, "")).await;
    let capped = format!("max_connections: 4\n{}", cluster_yaml(&b, &members, ""));
    let mut node_b = Ringside::start(&origin.url(), &capped).await;
    // Restarted: whatever A had pooled to B is dead, every slot is free.
    node_b.restart().await;
    let b_peer: SocketAddr = b.parse().unwrap();
    let mut held = Vec::new();
    let refusal = loop {
        let mut stream = raw_open(b_peer, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let head = read_head(&mut stream).await;
        match status_of(&head) {
            Some(401) => held.push(stream),
            _ => break head,
        }
        assert!(held.len() <= 8, "B's peer listener never filled up");
    };
    assert_eq!(status_of(&refusal), Some(503), "{refusal:?}");
    assert!(
        refusal
            .to_ascii_lowercase()
            .contains("x-ringside-refused: "),
        "the refusal says it is one: {refusal:?}"
    );
    let paths = paths_owned_by(
        &b,
        &members,
        &origin.url(),
        "/capped/",
        "cc=max-age%3D60",
        5,
    );
    for path in &paths {
        let r = node_a.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(origin.hits(path), 1, "{path} was loaded from the origin");
    }
    let failed = node_a
        .metric(
            "ringside_peer_requests_total",
            &[&format!("peer=\"{b}\""), "outcome=\"error\""],
        )
        .await;
    assert!(failed >= 1.0, "A counted B as failing: {failed}");
    drop(held);
}

/// Every answer the peer listener gives a request it refuses carries
/// `x-ringside-refused`, whatever refused it: the connection screen (an
/// over-long request line, more header fields than pingora parses, an
/// over-large head) or the proxy's own checks (no Host).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_on_the_peer_listener_is_marked() {
    let origin = Origin::start().await;
    let rs = clustered(&origin, "").await;
    let peer = rs.peer_addr().expect("a peer listener");
    let line = |n: usize| format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(n));
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        ("a 20 KB request line", line(20 * 1024), 414),
        ("a 70 KB request line", line(70 * 1024), 414),
        (
            "300 header fields",
            format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            431,
        ),
        (
            "a 70 KB head",
            format!(
                "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(70 * 1024)
            ),
            431,
        ),
        ("no Host", "GET /nohost HTTP/1.1\r\n\r\n".to_owned(), 400),
    ];
    for (what, request, status) in cases {
        let reply = raw_first_response(peer, request.into_bytes()).await;
        assert_eq!(
            reply.status(),
            Some(status),
            "{what}: {:?}",
            head_of(&reply.text)
        );
        assert!(
            reply
                .text
                .to_ascii_lowercase()
                .contains("x-ringside-refused: "),
            "{what}: not marked as a refusal: {:?}",
            head_of(&reply.text)
        );
    }
    assert_eq!(origin.total_hits(), 0);
}

fn head_of(text: &str) -> &str {
    &text[..text.find("\r\n\r\n").unwrap_or(text.len()).min(400)]
}

// ---- request bodies ----

/// A request body in which no byte arrives for `request_body_timeout` is
/// answered 408 and its connection closed; the origin never gets a whole
/// request. A body that keeps moving, however slowly, is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_that_stops_gets_408() {
    let origin = Origin::start().await;
    // The origin's read timeout well past the body's, so that the one that
    // fires is the body's.
    let yaml = format!(
        "origin:\n  url: {}\n  read_timeout: 10s\nrequest_body_timeout: 2s\n",
        origin.url()
    );
    let rs = Ringside::start_yaml(&yaml).await;
    let head = "POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";
    let mut stalled = raw_open(rs.addr, head).await;
    let started = Instant::now();
    let (reply, closed) = read_until_closed(&mut stalled, Duration::from_secs(20)).await;
    assert_eq!(status_of(&reply), Some(408), "{reply:?}");
    assert!(closed, "the connection stays open: {reply:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.hits("/stalled"), 0, "the origin got a whole request");
    let refused = rs
        .metric(
            "ringside_requests_refused_total",
            &["reason=\"body-timeout\""],
        )
        .await;
    assert_eq!(refused, 1.0);

    // Ten bytes, one every 100 ms (the deadline is 2 s without a byte):
    // time is the subject.
    let head = "POST /trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
    let mut trickle = raw_open(rs.addr, head).await;
    for byte in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trickle.write_all(&[*byte]).await.expect("send a body byte");
    }
    let head = read_head(&mut trickle).await;
    assert_eq!(status_of(&head), Some(200), "{head:?}");
    assert_eq!(origin.hits("/trickle"), 1);
}

/// At most `max_request_bodies` requests of a listener may be receiving
/// their bodies (each holding an origin connection while it does); another
/// is answered 503 at once, while requests without a body are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_hold_at_most_their_share_of_origin_connections() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "max_request_bodies: 2\n").await;
    let slow_head = "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\na";
    let before = origin.connections();
    let slow = [
        raw_open(rs.addr, slow_head).await,
        raw_open(rs.addr, slow_head).await,
    ];
    eventually(
        Duration::from_secs(10),
        "both slow bodies reach the origin",
        || async { origin.connections() >= before + 2 },
    )
    .await;
    let third = "POST /third HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let reply = raw_first_response(rs.addr, third).await;
    assert_eq!(reply.status(), Some(503), "{:?}", reply.text);
    assert!(
        reply.text.to_ascii_lowercase().contains("retry-after: "),
        "{:?}",
        reply.text
    );
    assert_eq!(origin.hits("/third"), 0);
    assert_eq!(rs.get("/meanwhile?cc=no-store").await.status, 200);
    let refused = rs
        .metric(
            "ringside_requests_refused_total",
            &["reason=\"too-many-bodies\""],
        )
        .await;
    assert!(refused >= 1.0, "{refused}");

    drop(slow);
    eventually(
        Duration::from_secs(10),
        "uploads are taken again",
        || async {
            let mut conn = Conn::connect(rs.addr).await.expect("connect");
            let r = conn
                .request_with_body("POST", "/again", &[], b"hello")
                .await;
            matches!(r, Ok(r) if r.status == 200)
        },
    )
    .await;
}

/// Without peer TLS, nothing but the connection says who sent a peer
/// request: the signature proves only that the sender knows the cluster
/// secret. So a request signed as coming from a member whose address is an
/// IP must come from that IP, else 403 (`x-ringside-refused: address`):
/// one member cannot speak for another (a `LEAVING` notice, a handoff)
/// from its own host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_request_must_come_from_the_address_of_its_sender() {
    use http::{HeaderMap, HeaderValue};
    use ringside::config::OriginUrl;
    use ringside::peers::{self, Envelope, PeerAuth};
    let origin = Origin::start().await;
    let a = format!("127.0.0.1:{}", free_port());
    // A member on another loopback address, never started: its name is all
    // the forged requests need.
    let b = format!("127.0.0.2:{}", free_port());
    let members = [a.clone(), b.clone()];
    let node = Ringside::start(&origin.url(), &cluster_yaml(&a, &members, "")).await;
    let key_prefix = OriginUrl::parse(&origin.url()).unwrap().key_prefix();
    let signed_by = |from: &str, path: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            peers::ORIGIN.clone(),
            HeaderValue::from_str(&key_prefix).unwrap(),
        );
        let envelope = Envelope {
            from,
            to: &a,
            timestamp: peers::now_secs(),
            nonce: peers::random_nonce().unwrap(),
        };
        headers.extend(envelope.headers());
        let signature = PeerAuth::new(common::CLUSTER_SECRET).sign("GET", path, &headers);
        headers.insert(peers::SIGNATURE.clone(), signature);
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {a}\r\n");
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
        head + "\r\n"
    };
    let peer: SocketAddr = a.parse().unwrap();
    let loopback = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let path = "/who?cc=max-age%3D60";
    let forged = raw_first_response_from(loopback(1), peer, signed_by(&b, path)).await;
    assert_eq!(forged.status(), Some(403), "{:?}", forged.text);
    assert!(
        forged
            .text
            .to_ascii_lowercase()
            .contains("x-ringside-refused: address"),
        "{:?}",
        forged.text
    );
    assert_eq!(origin.hits(path), 0);
    let genuine = raw_first_response_from(loopback(2), peer, signed_by(&b, path)).await;
    assert_eq!(genuine.status(), Some(200), "{:?}", genuine.text);
    assert_eq!(origin.hits(path), 1);
    let failures = node.metric("ringside_peer_auth_failures_total", &[]).await;
    assert!(failures >= 1.0, "{failures}");
}
