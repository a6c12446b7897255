//! When the origin fails: refused connections, slow answers and 5xx, for
//! cacheable GETs and passed-through POSTs alike; what the client sees, that
//! ringside keeps serving, and what /metrics counts.

mod common;
use common::origin::Origin;
use common::raw::{target, RawServer};
use common::{eventually, Conn, Response, Ringside};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// ringside in front of a port nothing listens on.
async fn refused() -> Ringside {
    let dead = common::free_port();
    Ringside::start(&format!("http://127.0.0.1:{dead}"), "").await
}

async fn post(rs: &Ringside, path: &str, body: &[u8]) -> Response {
    let mut conn = Conn::connect(rs.addr).await.expect("connect");
    conn.request_with_body("POST", path, &[], body)
        .await
        .expect("POST to ringside")
}

/// Wait until `name`{labels} reaches `at_least`, then return its value.
/// (A request is counted just after its response is written.)
async fn metric_reaches(rs: &Ringside, name: &str, labels: &[&str], at_least: f64) -> f64 {
    let what = format!("{name}{labels:?} reaches {at_least}");
    eventually(Duration::from_secs(10), &what, || async {
        rs.metric(name, labels).await >= at_least
    })
    .await;
    rs.metric(name, labels).await
}

#[tokio::test]
async fn refused_origin_answers_502_quickly_for_get_and_post() {
    let mut rs = refused().await;
    for path in ["/down?cc=max-age%3D60", "/down-plain"] {
        let started = Instant::now();
        let r = rs.get(path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            !r.body.is_empty() && r.body.len() < 100,
            "short body: {:?}",
            r.text()
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let started = Instant::now();
    let r = post(&rs, "/down", b"payload").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(r.body.len() < 100, "short body: {:?}", r.text());
    let r = rs.request("HEAD", "/down-head", &[]).await;
    assert_eq!(r.status, 502);

    // Still alive and serving.
    assert!(rs.is_running());
    let health = common::get(rs.admin, "/healthz").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(rs.get("/down?cc=max-age%3D60").await.status, 502);
}

#[tokio::test]
async fn fresh_hits_keep_answering_while_the_origin_is_down() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/flap?cc=max-age%3D60";
    let ok = rs.get(path).await;
    assert_eq!(ok.status, 200);
    let other = "/flap2?cc=max-age%3D60";
    origin.stop();
    assert_eq!(rs.get(other).await.status, 502);
    // The stored key still answers from the cache while the origin is down.
    let hit = rs.get(path).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, ok.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_answers_504_for_get_and_post() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    // read_timeout is 2 s in the harness.
    let (get, post_r) = tokio::join!(
        async {
            let started = Instant::now();
            (
                rs.get("/slow?delay_ms=3000&cc=max-age%3D60").await,
                started.elapsed(),
            )
        },
        async {
            let started = Instant::now();
            (
                post(&rs, "/slow?delay_ms=3000", b"x").await,
                started.elapsed(),
            )
        },
    );
    for (what, (r, took)) in [("GET", get), ("POST", post_r)] {
        assert_eq!(r.status, 504, "{what}: {}", r.text());
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
            "{what}: 504 after {took:?}"
        );
        assert!(r.body.len() < 100, "{what}: {:?}", r.text());
    }
    assert_eq!(origin.hits("/slow?delay_ms=3000&cc=max-age%3D60"), 1);
    assert_eq!(
        origin.hits("/slow?delay_ms=3000"),
        1,
        "a POST is not retried"
    );
}

#[tokio::test]
async fn errors_are_counted() {
    let rs = refused().await;
    let errors = rs
        .metric("ringside_requests_total", &["result=\"error\""])
        .await;
    let origin_errors = rs
        .metric(
            "ringside_origin_requests_total",
            &["status_class=\"error\""],
        )
        .await;
    assert_eq!(errors, 0.0);
    assert_eq!(origin_errors, 0.0);

    rs.get("/e1?cc=max-age%3D60").await;
    rs.get("/e2").await;
    post(&rs, "/e3", b"x").await;

    let get_errors = metric_reaches(
        &rs,
        "ringside_requests_total",
        &["result=\"error\"", "method=\"GET\""],
        2.0,
    )
    .await;
    assert_eq!(get_errors, 2.0);
    let post_errors = metric_reaches(
        &rs,
        "ringside_requests_total",
        &["result=\"error\"", "method=\"POST\""],
        1.0,
    )
    .await;
    assert_eq!(post_errors, 1.0);
    let origin_errors = rs
        .metric(
            "ringside_origin_requests_total",
            &["status_class=\"error\""],
        )
        .await;
    assert_eq!(
        origin_errors, 3.0,
        "two GET fills and one passed POST found no origin"
    );
    assert_eq!(
        rs.metric("ringside_origin_requests_total", &["status_class=\"2xx\""])
            .await,
        0.0
    );
}

#[tokio::test]
async fn origin_requests_are_counted_for_passed_requests_too() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    post(&rs, "/p", b"x").await; // pass: a method that is never cached
    rs.request(
        "GET",
        "/b?cc=max-age%3D60",
        &[("cache-control", "no-store")],
    )
    .await; // bypass
    rs.get("/ok?cc=max-age%3D60").await; // fill
    assert_eq!(origin.total_hits(), 3);
    let counted = metric_reaches(
        &rs,
        "ringside_origin_requests_total",
        &["status_class=\"2xx\""],
        3.0,
    )
    .await;
    assert_eq!(counted, 3.0, "every request sent to the origin is counted");
}

#[tokio::test]
async fn origin_5xx_without_a_stale_copy_is_passed_on_and_not_cached() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    for path in ["/err?status=500", "/err?status=503&cc=no-cache"] {
        let first = rs.get(path).await;
        let second = rs.get(path).await;
        for r in [&first, &second] {
            assert!(r.status >= 500, "{path}");
            assert!(
                r.text().starts_with("GET /err"),
                "the origin's body: {}",
                r.text()
            );
        }
        assert_ne!(
            first.body, second.body,
            "{path}: second came from the origin too"
        );
        assert_eq!(origin.hits(path), 2, "{path}: a 5xx is not stored");
    }
    // RFC 9111 §3: with explicit freshness the origin says it may be reused.
    let path = "/err?status=500&cc=max-age%3D60";
    let first = rs.get(path).await;
    let second = rs.get(path).await;
    assert_eq!(second.status, 500);
    assert_eq!(first.body, second.body);
    assert!(second.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 1, "{path}: stored as the origin allows");
    // And for a POST, as is.
    let r = post(&rs, "/err?status=500", b"x").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "echo:x");
    let counted = metric_reaches(
        &rs,
        "ringside_origin_requests_total",
        &["status_class=\"5xx\""],
        6.0,
    )
    .await;
    assert_eq!(counted, 6.0, "five GET fills and one POST");
}

#[tokio::test]
async fn metrics_add_up_after_a_mixed_workload() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let cached = "/m?cc=max-age%3D60";
    rs.get(cached).await; // GET miss
    rs.get(cached).await; // GET hit
    rs.get(cached).await; // GET hit
    rs.request("HEAD", cached, &[]).await; // HEAD hit
    rs.request("HEAD", "/mh?cc=max-age%3D60", &[]).await; // HEAD miss
    rs.get("/m-uncached").await; // GET miss (no freshness: not stored)
    post(&rs, "/m", b"a").await; // POST pass
    post(&rs, "/m", b"b").await; // POST pass
    rs.request("GET", cached, &[("cache-control", "no-store")])
        .await; // GET bypass
    let total = 9.0;

    let expect = [
        ("hit", "GET", 2.0),
        ("hit", "HEAD", 1.0),
        ("miss", "GET", 2.0),
        ("miss", "HEAD", 1.0),
        ("pass", "POST", 2.0),
        ("bypass", "GET", 1.0),
    ];
    let all = metric_reaches(&rs, "ringside_requests_total", &[], total).await;
    assert_eq!(all, total);
    let text = rs.metrics().await;
    for (result, method, n) in expect {
        let labels = [
            format!("result=\"{result}\""),
            format!("method=\"{method}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            common::metric_sum(&text, "ringside_requests_total", &labels),
            n,
            "{result} {method}"
        );
    }
    let durations = common::metric_sum(&text, "ringside_request_duration_seconds_count", &[]);
    assert_eq!(durations, total, "one duration per request");
    for result in ["hit", "miss", "pass", "bypass"] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            common::metric_sum(&text, "ringside_request_duration_seconds_count", &[&label]),
            common::metric_sum(&text, "ringside_requests_total", &[&label]),
            "{result}"
        );
    }
    assert_eq!(
        common::metric_sum(&text, "ringside_requests_total", &["result=\"error\""]),
        0.0
    );
    // The admin listener's own requests are not counted as app requests.
    rs.metrics().await;
    assert_eq!(rs.metric("ringside_requests_total", &[]).await, total);
}

/// An origin that answers each request with canned bytes chosen by path
/// (broken framing, interim answers, garbage), then closes the connection.
async fn broken_origin() -> RawServer {
    RawServer::start("127.0.0.1:0", |head, mut stream| async move {
        let cacheable = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n";
        let answer = match target(&head).as_str() {
            "/truncated" => format!("{cacheable}Content-Length: 100\r\n\r\nshort"),
            // Past the 16 KiB read whole before answering: streamed.
            "/stall" => format!("{cacheable}Content-Length: 100000\r\n\r\n0123456789"),
            "/stall-small" => format!("{cacheable}Content-Length: 100\r\n\r\n0123456789"),
            "/truncated-nostore" => "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\
                                     Content-Length: 100\r\n\r\nshort"
                .into(),
            "/truncated-chunked" => "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\
                                     Transfer-Encoding: chunked\r\n\r\n5\r\nshort\r\n"
                .into(),
            "/early-hints" => format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                 {cacheable}Content-Length: 2\r\n\r\nok"
            ),
            "/continue" => format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
                 {cacheable}Content-Length: 2\r\n\r\nok"
            ),
            "/garbage" => "SSH-2.0-OpenSSH_9.6\r\n\r\n".into(),
            _ => String::new(), // "/hangup": closed without a word
        };
        let _ = stream.write_all(answer.as_bytes()).await;
        if target(&head).starts_with("/stall") {
            // Stalls mid-body, holding the connection, until the test ends.
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// The tests' own client (the demo's, on hyper) reads such answers as
/// errors, and skips interim ones.
#[tokio::test]
async fn the_test_client_reads_broken_answers_as_errors() {
    let origin = broken_origin().await;
    let mut conn = Conn::connect(origin.addr).await.unwrap();
    let err = conn.request("GET", "/garbage", &[]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let err = conn.request("GET", "/truncated", &[]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(!conn.is_open());
    for interim in ["/continue", "/early-hints"] {
        let r = conn.request("GET", interim, &[]).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{interim}");
    }
}

#[tokio::test]
async fn broken_origin_responses_are_errors_and_never_stored() {
    let origin = broken_origin().await;
    let mut rs = Ringside::start(&format!("http://{}", origin.addr), "").await;
    for path in ["/garbage", "/hangup"] {
        for _ in 0..2 {
            let started = Instant::now();
            let r = rs.get(path).await;
            assert_eq!(r.status, 502, "{path}: {}", r.text());
            assert!(started.elapsed() < Duration::from_secs(1), "{path}");
        }
        assert_eq!(
            origin.hits(path),
            2,
            "{path}: the broken response was not stored"
        );
    }
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 0.0);
    assert!(rs.is_running());
}

/// A cacheable body past 16 KiB streams to its client as it arrives, so an
/// origin that stalls mid-body cuts the response once `read_timeout` (2 s
/// here) passes without a byte: the client sees a cut connection, nothing
/// is stored.
#[tokio::test]
async fn an_origin_stalling_mid_body_cuts_the_response_at_read_timeout() {
    let origin = broken_origin().await;
    let rs = Ringside::start(&format!("http://{}", origin.addr), "").await;
    let started = Instant::now();
    let mut conn = Conn::connect(rs.addr).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), conn.request("GET", "/stall", &[]))
        .await
        .expect("no hang");
    let took = started.elapsed();
    assert!(r.is_err(), "a stalled body was delivered as {r:?}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 0.0);
}

/// A small cacheable body (16 KiB or less announced) is read whole before
/// its head goes out, so an origin that stalls mid-body gets the client a
/// 504 once `read_timeout` (2 s here) passes without a byte; nothing is
/// stored.
#[tokio::test]
async fn an_origin_stalling_mid_small_body_is_a_504_at_read_timeout() {
    let origin = broken_origin().await;
    let rs = Ringside::start(&format!("http://{}", origin.addr), "").await;
    let started = Instant::now();
    let mut conn = Conn::connect(rs.addr).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        conn.request("GET", "/stall-small", &[]),
    )
    .await
    .expect("no hang")
    .expect("an answer, not a cut connection");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 0.0);
}

/// Once the headers of a response are on their way, an origin that dies
/// mid-body must show as a cut connection, never as a complete response, and
/// a cacheable one is never stored.
#[tokio::test]
async fn a_body_cut_short_by_the_origin_is_never_passed_off_as_complete() {
    let origin = broken_origin().await;
    let mut rs = Ringside::start(&format!("http://{}", origin.addr), "").await;
    for path in ["/truncated", "/truncated-nostore", "/truncated-chunked"] {
        let mut conn = Conn::connect(rs.addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), conn.request("GET", path, &[]))
            .await
            .expect("no hang");
        match r {
            Err(_) => {}
            Ok(r) => assert!(
                r.status >= 500,
                "{path}: a cut body was delivered as {} {:?}",
                r.status,
                r.text()
            ),
        }
        // POST goes through pingora's own proxying: same rule.
        let mut conn = Conn::connect(rs.addr).await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            conn.request_with_body("POST", path, &[], b"x"),
        )
        .await
        .expect("no hang");
        if let Ok(r) = r {
            assert!(
                r.status >= 500,
                "POST {path}: a cut body was delivered as {} {:?}",
                r.status,
                r.text()
            );
        }
    }
    assert_eq!(origin.hits("/truncated"), 2, "the cut body was not stored");
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 0.0);
    assert!(rs.is_running());
}

/// RFC 9110 §15.2: interim responses (100 Continue, 102, 103 Early Hints)
/// before the final one are never stored and never end the exchange: the
/// final response is cached as usual (the hyper client here reads past
/// the 1xx it is passed; `http_caching.rs` looks at them on the wire).
#[tokio::test]
async fn interim_responses_before_the_final_one_are_skipped() {
    let origin = broken_origin().await;
    let mut rs = Ringside::start(&format!("http://{}", origin.addr), "").await;
    for path in ["/early-hints", "/continue"] {
        let mut conn = Conn::connect(rs.addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), conn.request("GET", path, &[]))
            .await
            .expect("no hang")
            .expect("a response");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, b"ok", "{path}");
        let again = rs.get(path).await;
        assert!(
            again.header("cache-status").unwrap().contains("hit"),
            "{path}: the final response was stored"
        );
        assert_eq!(origin.hits(path), 1, "{path}");
    }
    assert!(rs.is_running());
}
