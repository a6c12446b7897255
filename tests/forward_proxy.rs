//! ringside as an HTTP forward proxy (`HTTP_PROXY=http://<listen>`): absolute-form
//! requests for allowlisted origins are routed, rewritten to origin-form and
//! cached per origin; everything else is refused. Also: the Host header an
//! origin sees on the reverse-proxy path.

mod common;
use common::origin::Origin;
use common::raw::raw_exchange;
use common::{Conn, Ringside};

/// The reverse origin, a second origin on the forward-proxy allowlist, and
/// ringside in front of both.
async fn setup() -> (Origin, Origin, Ringside) {
    let reverse = Origin::start().await;
    let second = Origin::start().await;
    let yaml = format!("forward_proxy:\n  allow: [{}]\n", second.url());
    let rs = Ringside::start(&reverse.url(), &yaml).await;
    (reverse, second, rs)
}

/// The authority of an absolute URL (`http://host:port/...` -> `host:port`).
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// A forward-proxy request as HTTP clients send it: absolute-form target,
/// Host naming the target's authority, on a fresh connection.
async fn via_proxy(rs: &Ringside, method: &str, url: &str, body: &[u8]) -> common::Response {
    let mut conn = Conn::connect(rs.addr).await.expect("connect to ringside");
    conn.request_with_body(method, url, &[("Host", authority(url))], body)
        .await
        .expect("request through ringside")
}

#[tokio::test]
async fn absolute_form_get_reaches_the_allowlisted_origin_rewritten_and_is_cached() {
    let (reverse, second, rs) = setup().await;
    let target = "/x?cc=max-age%3D60";
    let url = format!("{}{target}", second.url());
    let first = via_proxy(&rs, "GET", &url, b"").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(
        first.text().starts_with(&format!("GET {target} #1")),
        "origin 2 saw an origin-form request line: {}",
        first.text()
    );
    assert!(first.header("cache-status").unwrap().contains("stored"));
    // Recorded under path and query: the absolute URI was rewritten.
    assert_eq!(second.hits(target), 1);
    assert_eq!(second.total_hits(), 1);
    assert_eq!(reverse.total_hits(), 0, "the reverse origin was not asked");
    assert_eq!(
        second.last_request_header(target, "host").as_deref(),
        Some(second.addr.to_string().as_str()),
        "Host names the forward origin, not ringside"
    );

    // A second request, on a new connection: a hit.
    let again = via_proxy(&rs, "GET", &url, b"").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    let status = again.header("cache-status").unwrap();
    assert!(status.contains("hit"), "{status}");
    assert_eq!(second.hits(target), 1);
    assert_eq!(reverse.total_hits(), 0);
}

#[tokio::test]
async fn cache_key_includes_the_origin() {
    let (reverse, second, rs) = setup().await;
    let target = "/same?cc=max-age%3D60";
    let forward_url = format!("{}{target}", second.url());

    let via_reverse = rs.get(target).await;
    assert_eq!(via_reverse.status, 200);
    let via_forward = via_proxy(&rs, "GET", &forward_url, b"").await;
    assert_eq!(via_forward.status, 200);
    assert!(
        !via_forward.header("cache-status").unwrap().contains("hit"),
        "origin 2's entry must not be the reverse origin's"
    );
    assert_eq!(reverse.hits(target), 1);
    assert_eq!(second.hits(target), 1);

    // Each is now cached under its own origin.
    assert!(rs
        .get(target)
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    assert!(via_proxy(&rs, "GET", &forward_url, b"")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    // The reverse origin named in absolute form is the same origin, so the same entry.
    let reverse_absolute = format!("{}{target}", reverse.url());
    let r = via_proxy(&rs, "GET", &reverse_absolute, b"").await;
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(reverse.hits(target), 1);
    assert_eq!(second.hits(target), 1);
}

#[tokio::test]
async fn absolute_form_pass_through_is_rewritten_to_origin_form() {
    let (reverse, second, rs) = setup().await;
    let url = format!("{}/post?k=v", second.url());
    let r = via_proxy(&rs, "POST", &url, b"payload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "echo:payload");
    assert_eq!(
        second.hits("/post?k=v"),
        1,
        "origin-form on the pass path too"
    );
    assert_eq!(
        second.last_request_header("/post?k=v", "host").as_deref(),
        Some(second.addr.to_string().as_str())
    );
    assert_eq!(reverse.total_hits(), 0);
}

#[tokio::test]
async fn origin_not_on_the_allowlist_is_refused_with_403() {
    let (reverse, second, rs) = setup().await;
    let stranger = Origin::start().await;
    for (method, url) in [
        ("GET", format!("{}/z?cc=max-age%3D60", stranger.url())),
        ("POST", format!("{}/z", stranger.url())),
        // Same host and port, other scheme: a different origin.
        ("GET", format!("https://{}/z", second.addr)),
        // Same port, other host name: a different origin too.
        ("GET", format!("http://localhost:{}/z", second.addr.port())),
    ] {
        let r = via_proxy(&rs, method, &url, b"").await;
        assert_eq!(r.status, 403, "{method} {url}: {}", r.text());
    }
    assert_eq!(stranger.total_hits(), 0, "the stranger never saw a request");
    assert_eq!(second.total_hits(), 0);
    assert_eq!(reverse.total_hits(), 0);
    // Refusals are not cached or sticky: the allowlisted origin still works.
    let ok = via_proxy(&rs, "GET", &format!("{}/z", second.url()), b"").await;
    assert_eq!(ok.status, 200);
    assert_eq!(second.hits("/z"), 1);
}

#[tokio::test]
async fn forward_proxy_is_off_with_an_empty_allowlist() {
    let reverse = Origin::start().await;
    let other = Origin::start().await;
    let rs = Ringside::start(&reverse.url(), "").await;
    let r = via_proxy(&rs, "GET", &format!("{}/a", other.url()), b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(other.total_hits(), 0);
    // Only the reverse origin itself may be named in absolute form.
    let own = via_proxy(&rs, "GET", &format!("{}/a", reverse.url()), b"").await;
    assert_eq!(own.status, 200);
    assert_eq!(reverse.hits("/a"), 1);
}

#[tokio::test]
async fn absolute_form_with_a_conflicting_host_is_rejected_unrouted() {
    let (reverse, second, rs) = setup().await;
    // The URI names origin 2, Host names the reverse origin: ambiguous, so
    // refused (pingora answers 400) rather than routed on either.
    let url = format!("{}/conflict?cc=max-age%3D60", second.url());
    let reverse_host = reverse.addr.to_string();
    let r = rs.request("GET", &url, &[("Host", &reverse_host)]).await;
    assert!((400..500).contains(&r.status), "{}", r.status);
    assert_eq!(second.total_hits(), 0);
    assert_eq!(reverse.total_hits(), 0);
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let (reverse, second, rs) = setup().await;
    let allowed = second.addr;
    let requests = [
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_string(),
        // Even to an allowlisted origin: no tunnels.
        format!("CONNECT {allowed} HTTP/1.1\r\nHost: {allowed}\r\n\r\n"),
    ];
    for request in requests {
        let response = raw_exchange(rs.addr, request).await;
        assert_eq!(response.status(), Some(405), "{response:?}");
    }
    assert_eq!(second.total_hits(), 0);
    assert_eq!(reverse.total_hits(), 0);
}

#[tokio::test]
async fn reverse_proxy_requests_carry_the_origins_host() {
    let (reverse, _second, rs) = setup().await;
    let origin_host = reverse.addr.to_string();
    // Cache fill path, uncacheable fill, pass-through GET (pingora's proxy) and POST.
    let fill = "/h?cc=max-age%3D60";
    let plain = "/h1";
    let pass = "/h2";
    let app_host = ("Host", "ringside.local:8080");
    let no_store = ("Cache-Control", "no-store");
    for (method, target, headers) in [
        ("GET", fill, vec![app_host]),
        ("GET", plain, vec![app_host]),
        ("GET", pass, vec![app_host, no_store]),
        ("POST", pass, vec![app_host]),
    ] {
        // The app talks to ringside and names it in Host.
        let r = rs.request(method, target, &headers).await;
        assert_eq!(r.status, 200, "{method} {target}");
        assert_eq!(
            reverse.last_request_header(target, "host").as_deref(),
            Some(origin_host.as_str()),
            "{method} {target}"
        );
    }
    let bypassed = rs.request("GET", pass, &[no_store]).await;
    assert!(bypassed
        .header("cache-status")
        .unwrap()
        .contains("fwd=bypass"));
    assert_eq!(reverse.hits(fill), 1);
    assert_eq!(reverse.hits(plain), 1);
    assert_eq!(reverse.hits(pass), 3);
}
