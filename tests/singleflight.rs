//! Request collapsing through a real ringside process: concurrent misses for
//! one key share one origin fetch (and its failure), fills outlive the client
//! that started them, and responses that cannot be shared do not queue
//! requests behind each other.

mod common;
use common::origin::Origin;
use common::raw::{raw_open, RawServer};
use common::{eventually, Response, Ringside};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// No client may wait longer than this for any answer: a hang fails the test.
const HANG: Duration = Duration::from_secs(10);

/// `n` concurrent GETs of `path`, each on its own connection. Returns every
/// response with the time it took (from the common start).
async fn concurrent_gets(addr: SocketAddr, path: &str, n: usize) -> Vec<(Response, Duration)> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let r = tokio::time::timeout(HANG, common::get(addr, &path))
                    .await
                    .unwrap_or_else(|_| panic!("GET {path} hung for {HANG:?}"))
                    .unwrap_or_else(|e| panic!("GET {path} failed: {e}"));
                (r, start.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_misses_make_one_origin_request() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/herd?delay_ms=300&cc=max-age%3D60";

    let responses = concurrent_gets(rs.addr, path, 200).await;

    assert_eq!(
        origin.hits(path),
        1,
        "one origin fetch for 200 concurrent misses"
    );
    let first = &responses[0].0;
    for (r, _) in &responses {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, first.body, "every client got the one fetched body");
    }
    assert_eq!(first.text(), format!("GET {path} #1"));
    let coalesced = rs
        .metric("ringside_singleflight_coalesced_total", &[])
        .await;
    assert!(
        coalesced >= 150.0,
        "most of the 200 waited on the leader's fetch: coalesced={coalesced}"
    );
    assert!(coalesced <= 199.0, "the leader is not counted: {coalesced}");
    let collapsed = responses
        .iter()
        .filter(|(r, _)| r.header("cache-status").unwrap_or("").contains("collapsed"))
        .count();
    assert!(
        collapsed >= 150,
        "Cache-Status says collapsed on {collapsed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fill_survives_its_leader_disconnecting() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/leaver?delay_ms=1500&cc=max-age%3D60";

    // The leader: a raw connection that asks and then goes away.
    let leader = raw_open(
        rs.addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the fill reached the origin",
        || async { origin.hits(path) == 1 },
    )
    .await;
    let addr = rs.addr;
    let before_close = tokio::spawn(async move { concurrent_gets(addr, path, 10).await });
    eventually(Duration::from_secs(5), "ten followers joined", || async {
        rs.metric("ringside_singleflight_coalesced_total", &[])
            .await
            >= 10.0
    })
    .await;
    drop(leader);
    // More arrive after the leader left, while its fill is still running.
    let after_close = concurrent_gets(rs.addr, path, 10).await;
    let before_close = before_close.await.unwrap();
    let waited = after_close
        .iter()
        .filter(|(r, _)| r.header("cache-status").unwrap_or("").contains("collapsed"))
        .count();
    assert!(
        waited > 0,
        "none joined the leaderless fill: {after_close:?}"
    );

    for (r, _) in before_close.iter().chain(after_close.iter()) {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("GET {path} #1"));
    }
    assert_eq!(origin.hits(path), 1);
    let later = rs.get(path).await;
    assert_eq!(later.status, 200);
    assert!(
        later.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        later.header("cache-status")
    );
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fill_is_stored_even_when_every_client_left() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/orphan?delay_ms=300&cc=max-age%3D60";
    let leader = raw_open(
        rs.addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the fill reached the origin",
        || async { origin.hits(path) == 1 },
    )
    .await;
    drop(leader);
    // The orphaned fill lands in the cache with no client waiting for it.
    eventually(
        Duration::from_secs(5),
        "the orphaned fill is stored",
        || async { rs.metric("ringside_cache_entries", &[]).await == 1.0 },
    )
    .await;
    let r = rs.get(path).await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(r.text(), format!("GET {path} #1"));
    assert_eq!(origin.hits(path), 1);
}

/// Responses that may not be shared are published to the waiters as soon as
/// their headers arrive: the waiters then fetch their own at once, in
/// parallel, rather than one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncacheable_responses_do_not_serialise_requests() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    for path in [
        "/nostore?delay_ms=300&cc=no-store",
        "/private?delay_ms=300&cc=private%2C%20max-age%3D60",
    ] {
        let started = Instant::now();
        let responses = concurrent_gets(rs.addr, path, 20).await;
        let wall = started.elapsed();
        assert!(
            wall < Duration::from_secs(2),
            "{path}: 20 x 300 ms took {wall:?}: requests were serialised"
        );
        assert_eq!(
            origin.hits(path),
            20,
            "{path}: each client got its own response"
        );
        let mut bodies: Vec<String> = responses
            .iter()
            .map(|(r, _)| {
                assert_eq!(r.status, 200, "{path}");
                r.text()
            })
            .collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 20, "{path}: no response was shared");
    }
}

/// A stand-in origin that, while `failing`, reads a request and closes the
/// connection without an answer after `delay`; otherwise it relays the
/// connection to `backend`. Counts the connections it saw while failing.
struct FlakyFront {
    server: RawServer,
    failing: Arc<AtomicBool>,
    failed_connections: Arc<AtomicU64>,
}

impl FlakyFront {
    async fn start(backend: SocketAddr, delay: Duration) -> FlakyFront {
        let failing = Arc::new(AtomicBool::new(true));
        let failed_connections = Arc::new(AtomicU64::new(0));
        let (f, c) = (failing.clone(), failed_connections.clone());
        let server = RawServer::start("127.0.0.1:0", move |received, mut stream| {
            let (f, c) = (f.clone(), c.clone());
            async move {
                if f.load(Ordering::SeqCst) {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    // Dropped unanswered.
                } else if let Ok(mut up) = TcpStream::connect(backend).await {
                    if up.write_all(&received).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
                    }
                }
            }
        })
        .await;
        FlakyFront {
            server,
            failing,
            failed_connections,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_fill_fails_every_waiter_promptly_and_the_key_recovers() {
    let origin = Origin::start().await;
    let front = FlakyFront::start(origin.addr, Duration::from_millis(400)).await;
    let rs = Ringside::start(&format!("http://{}", front.server.addr), "").await;
    let path = "/fails?cc=max-age%3D60";

    let responses = concurrent_gets(rs.addr, path, 30).await;
    for (r, took) in &responses {
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(*took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    assert_eq!(
        front.failed_connections.load(Ordering::SeqCst),
        1,
        "the waiters shared the leader's failed fetch"
    );

    // The failure was not remembered: once the origin is back, the key loads.
    front.failing.store(false, Ordering::SeqCst);
    let r = rs.get(path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again = rs.get(path).await;
    assert!(again.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_errors_reach_every_waiter_and_are_not_cached() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/503?delay_ms=300&cc=max-age%3D60";
    origin.set_failing(true);
    let started = Instant::now();
    let responses = concurrent_gets(rs.addr, path, 20).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for (r, _) in &responses {
        assert_eq!(r.status, 503, "{}", r.text());
    }

    origin.set_failing(false);
    let r = rs.get(path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = origin.hits(path);
    let again = rs.get(path).await;
    assert_eq!(again.status, 200);
    assert!(again.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_origin_fails_every_waiter_at_once() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    origin.stop();
    let responses = concurrent_gets(rs.addr, "/gone?cc=max-age%3D60", 20).await;
    for (r, took) in &responses {
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(*took < Duration::from_secs(2), "took {took:?}");
    }
    // Request metrics are recorded just after the response is written, so a
    // client can be a moment ahead of them.
    let errors = &["result=\"error\""];
    eventually(Duration::from_secs(10), "20 errors counted", || async {
        rs.metric("ringside_requests_total", errors).await >= 20.0
    })
    .await;
    assert_eq!(rs.metric("ringside_requests_total", errors).await, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_slower_than_read_timeout_gives_every_waiter_504() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    // The harness's read_timeout is 2 s.
    let path = "/slow?delay_ms=3000&cc=max-age%3D60";
    let responses = concurrent_gets(rs.addr, path, 20).await;
    for (r, took) in &responses {
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            *took >= Duration::from_millis(1800) && *took < Duration::from_millis(3500),
            "504 after {took:?}, read_timeout is 2 s"
        );
        assert!(r.header("cache-status").unwrap().contains("origin-timeout"));
    }
    assert_eq!(origin.hits(path), 1, "the timeout was shared, not repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_is_bounded_by_collapse_timeout_and_the_fill_still_lands() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  collapse_timeout: 500ms\n").await;
    let path = "/patience?delay_ms=1500&cc=max-age%3D60";
    let responses = concurrent_gets(rs.addr, path, 20).await;
    for (r, took) in &responses {
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            *took >= Duration::from_millis(450) && *took < Duration::from_millis(1300),
            "gave up after {took:?}, collapse_timeout is 500 ms"
        );
    }
    let timed_out = responses
        .iter()
        .filter(|(r, _)| {
            r.header("cache-status")
                .unwrap_or("")
                .contains("collapse-timeout")
        })
        .count();
    assert!(
        timed_out >= 15,
        "{timed_out} followers say collapse-timeout"
    );
    // The fill kept going and stored the object for the next request.
    eventually(Duration::from_secs(5), "the fill is stored", || async {
        rs.metric("ringside_cache_entries", &[]).await == 1.0
    })
    .await;
    let r = rs.get(path).await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 1);
}

/// A healthy but slow download of a cacheable body: `collapse_timeout`
/// bounds the wait for the response head, not for the body. The leader gets
/// the bytes as they arrive, followers wait while they flow, and the object
/// is stored once, for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_cacheable_body_streams_past_collapse_timeout() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  collapse_timeout: 500ms\n").await;
    // Four pieces 400 ms apart: 1.6 s in all, each gap under read_timeout (2 s).
    let path = "/slow-body?size=40000&drip_ms=400&cc=max-age%3D60";
    let responses = concurrent_gets(rs.addr, path, 5).await;
    for (r, took) in &responses {
        assert_eq!(r.status, 200, "{r:?} after {took:?}");
        assert_eq!(r.body.len(), 40_000);
    }
    let hit = rs.get(path).await;
    assert!(
        hit.header("cache-status").unwrap().contains("hit"),
        "{hit:?}"
    );
    assert_eq!(origin.hits(path), 1);
}
