//! What a real ringside process does with requests built to make a shared
//! cache hand one user's answer to another: paths that the path rules and
//! the origin would read differently (web cache deception), GET/HEAD with a
//! body, headers that change the origin's answer without being in the key,
//! and protocol corner cases (RFC 9112) a lenient server gets wrong.

mod common;
use common::cache_status;
use common::origin::Origin;
use common::raw::raw_exchange;
use common::Ringside;

/// The example rules of config.yaml.
const RULES: &str = "cache:\n  rules:\n    - prefix: /static/\n      ttl: 1h\n    - prefix: /api/session\n      bypass: true\n";

async fn setup(extra: &str) -> (Origin, Ringside) {
    let origin = Origin::start().await;
    let ringside = Ringside::start(&origin.url(), extra).await;
    (origin, ringside)
}

fn status_of(reply: &str) -> Option<u16> {
    reply.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

// ---- item 2: web cache deception ----

#[tokio::test]
async fn traversal_paths_are_never_stored_under_the_static_rule() {
    let (origin, rs) = setup(RULES).await;
    // The victim's request resolves to /account at the origin; its answer
    // (no freshness of its own) must not be stored under /static/'s 1 h ttl.
    for path in [
        "/static/../account",
        "/static/%2e%2e/account",
        "/static/.%2E/account",
    ] {
        let before = origin.hits("/account");
        let victim = rs
            .request("GET", path, &[("Cookie", "session=victim")])
            .await;
        assert_eq!(victim.status, 200, "{path}");
        assert_eq!(
            origin.hits("/account"),
            before + 1,
            "{path}: the origin saw another path"
        );
        let attacker = rs.get(path).await;
        assert!(
            !cache_status(&attacker).contains("hit"),
            "{path}: the victim's answer was served to another client: {}",
            cache_status(&attacker)
        );
        assert_eq!(origin.hits("/account"), before + 2, "{path}");
    }
    // An encoded slash cannot be normalised safely: refused, never fetched.
    let r = rs.get("/static/..%2faccount").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = rs.get("/static/..%2Faccount").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        origin.total_hits(),
        6,
        "a refused request reached the origin"
    );
}

#[tokio::test]
async fn the_bypass_rule_holds_for_every_spelling_of_its_path() {
    let (origin, rs) = setup(RULES).await;
    let canonical = "/api/session?cc=max-age%3D60";
    let spellings = [
        "//api/session?cc=max-age%3D60",
        "/api//session?cc=max-age%3D60",
        "/api/./session?cc=max-age%3D60",
        "/api/%73ession?cc=max-age%3D60",
        "/api/x/../session?cc=max-age%3d60",
    ];
    for (i, path) in spellings.iter().enumerate() {
        for round in 0..2 {
            let r = rs.get(path).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(
                cache_status(&r),
                "ringside; fwd=bypass; detail=rule",
                "{path} (request {round})"
            );
        }
        assert_eq!(
            origin.hits(canonical),
            2 * (i as u64 + 1),
            "{path}: origin saw another path"
        );
    }
}

#[tokio::test]
async fn spellings_of_one_resource_share_one_entry() {
    let (origin, rs) = setup("").await;
    let first = rs.get("/items/%41%2d1?cc=max-age%3d60").await;
    assert_eq!(first.status, 200);
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    let canonical = "/items/A-1?cc=max-age%3D60";
    assert_eq!(
        origin.hits(canonical),
        1,
        "the origin was not sent the normal form"
    );
    for same in [
        canonical,
        "//items/./A-1?cc=max-age%3D60",
        "/items/x/../%41-1?cc=max-age%3D60",
    ] {
        let r = rs.get(same).await;
        assert_eq!(cache_status(&r), "ringside; hit", "{same}");
        assert_eq!(r.text(), first.text(), "{same}");
    }
    assert_eq!(origin.total_hits(), 1);
}

#[tokio::test]
async fn targets_that_cannot_be_normalised_get_400() {
    let (origin, rs) = setup("").await;
    let cases: [(&str, &[u8]); 8] = [
        (
            "two spaces before the target",
            b"GET  /x HTTP/1.1\r\nHost: x\r\n",
        ),
        (
            "invalid percent-encoding",
            b"GET /x%zz HTTP/1.1\r\nHost: x\r\n",
        ),
        (
            "a truncated percent-encoding",
            b"GET /x% HTTP/1.1\r\nHost: x\r\n",
        ),
        ("an encoded NUL", b"GET /x%00y HTTP/1.1\r\nHost: x\r\n"),
        (
            "a raw backslash",
            b"GET /static/..\\account HTTP/1.1\r\nHost: x\r\n",
        ),
        (
            "a climb above the root",
            b"GET /a/../../etc/passwd HTTP/1.1\r\nHost: x\r\n",
        ),
        (
            "a dot segment with parameters",
            b"GET /static/..;/account HTTP/1.1\r\nHost: x\r\n",
        ),
        (
            "invalid encoding in the query",
            b"GET /x?a=%G0 HTTP/1.1\r\nHost: x\r\n",
        ),
    ];
    for (what, head) in cases {
        let reply = raw_exchange(rs.addr, [head, b"Connection: close\r\n\r\n"].concat())
            .await
            .text;
        assert_eq!(status_of(&reply), Some(400), "{what}: {reply:?}");
    }
    assert_eq!(
        origin.total_hits(),
        0,
        "a refused request reached the origin"
    );
}

#[tokio::test]
async fn encoded_slashes_pass_uncached_when_configured() {
    let (origin, rs) = setup("cache:\n  encoded_slashes: pass\n").await;
    let path = "/projects/group%2Fname?cc=max-age%3D60";
    for _ in 0..2 {
        let r = rs.get(path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            cache_status(&r),
            "ringside; fwd=bypass; detail=encoded-slash"
        );
    }
    assert_eq!(
        origin.hits(path),
        2,
        "the path was not sent as is, or was cached"
    );
}

#[tokio::test]
async fn absolute_form_targets_are_normalised_too() {
    let origin = Origin::start().await;
    let yaml = format!("forward_proxy:\n  allow: [\"{}\"]\n{RULES}", origin.url());
    let rs = Ringside::start(&origin.url(), &yaml).await;
    let authority = origin.addr.to_string();
    let request = format!(
        "GET http://{authority}//api/%73ession?cc=max-age%3D60 HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..2 {
        let reply = raw_exchange(rs.addr, request.clone()).await.text;
        assert_eq!(status_of(&reply), Some(200), "{reply:?}");
        assert!(reply.contains("detail=rule"), "{reply:?}");
    }
    assert_eq!(origin.hits("/api/session?cc=max-age%3D60"), 2);
}

// ---- item 4: GET or HEAD with a body ----

#[tokio::test]
async fn a_get_or_head_with_a_body_bypasses_the_cache_with_its_body() {
    let (origin, rs) = setup("").await;
    let path = "/with-body?cc=max-age%3D60";
    for method in ["GET", "HEAD"] {
        let before = origin.hits(path);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let reply = raw_exchange(rs.addr, request).await.text;
        assert_eq!(status_of(&reply), Some(200), "{method}: {reply:?}");
        assert!(reply.contains("detail=request-body"), "{method}: {reply:?}");
        assert_eq!(origin.hits(path), before + 1, "{method}");
        assert_eq!(
            origin
                .last_request_header(path, "content-length")
                .as_deref(),
            Some("5"),
            "{method}: the body's framing did not reach the origin"
        );
    }
    // Nothing was stored by them: a plain GET is a miss, then a hit.
    let r = rs.get(path).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert_eq!(cache_status(&rs.get(path).await), "ringside; hit");
    assert_eq!(origin.hits(path), 3);
}

#[tokio::test]
async fn a_fill_never_announces_a_body_it_does_not_send() {
    let (origin, rs) = setup("").await;
    let path = "/empty-body?cc=max-age%3D60";
    let r = rs.request("GET", path, &[("Content-Length", "0")]).await;
    assert_eq!(r.status, 200);
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert_eq!(origin.last_request_header(path, "content-length"), None);
    assert_eq!(origin.last_request_header(path, "transfer-encoding"), None);
}

// ---- item 5: headers that change the origin's answer ----

/// The defaults of `cache.strip_request_headers`, with a value each.
const STRIPPED: [(&str, &str); 14] = [
    ("Forwarded", "host=evil.example"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-Forwarded-Port", "6666"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Scheme", "http"),
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Host", "evil.example"),
    ("X-Original-Host", "evil.example"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
];

#[tokio::test]
async fn stripped_headers_never_reach_the_origin_on_cacheable_requests() {
    let (origin, rs) = setup("").await;
    let mut headers = STRIPPED.to_vec();
    headers.push(("X-Kept", "yes"));
    let path = "/strip?cc=max-age%3D60";
    // A miss, and a client-forced revalidation (the poisoning route).
    let r = rs.request("GET", path, &headers).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    headers.push(("Cache-Control", "no-cache"));
    let r = rs.request("GET", path, &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(path), 2);
    for (name, _) in STRIPPED {
        assert_eq!(
            origin.last_request_header(path, &name.to_ascii_lowercase()),
            None,
            "{name} reached the origin on a cacheable request"
        );
    }
    assert_eq!(
        origin.last_request_header(path, "x-kept").as_deref(),
        Some("yes")
    );
    // Requests that are not shared keep them.
    let post = "/strip-post";
    assert_eq!(rs.request("POST", post, &STRIPPED).await.status, 200);
    assert_eq!(
        origin
            .last_request_header(post, "x-forwarded-host")
            .as_deref(),
        Some("evil.example")
    );
}

#[tokio::test]
async fn a_key_header_gives_each_value_its_own_entry() {
    let yaml = "cache:\n  key_headers: [X-Tenant, X-Forwarded-Host]\n";
    let (origin, rs) = setup(yaml).await;
    let path = "/tenant?cc=max-age%3D60";
    let a = rs.request("GET", path, &[("X-Tenant", "a")]).await;
    assert!(cache_status(&a).contains("stored"), "{}", cache_status(&a));
    let b = rs
        .request(
            "GET",
            path,
            &[("X-Tenant", "b"), ("X-Forwarded-Host", "b.example")],
        )
        .await;
    assert!(
        cache_status(&b).contains("stored"),
        "tenant b got a's entry: {}",
        cache_status(&b)
    );
    assert_eq!(
        origin.last_request_header(path, "x-tenant").as_deref(),
        Some("b")
    );
    assert_eq!(
        origin
            .last_request_header(path, "x-forwarded-host")
            .as_deref(),
        Some("b.example"),
        "a key header is passed to the origin, even one stripped by default"
    );
    let a_again = rs.request("GET", path, &[("X-Tenant", "a")]).await;
    assert_eq!(cache_status(&a_again), "ringside; hit");
    assert_eq!(a_again.text(), a.text());
    let none = rs.get(path).await;
    assert!(
        cache_status(&none).contains("stored"),
        "{}",
        cache_status(&none)
    );
    assert_eq!(origin.hits(path), 3);
}

#[tokio::test]
async fn client_forced_revalidations_are_counted_and_can_be_ignored() {
    let (origin, rs) = setup("").await;
    let path = "/forced?cc=max-age%3D60";
    rs.get(path).await;
    assert_eq!(
        rs.metric("ringside_client_revalidations_total", &[]).await,
        0.0
    );
    for cc in ["no-cache", "max-age=0"] {
        let r = rs.request("GET", path, &[("Cache-Control", cc)]).await;
        assert!(
            !cache_status(&r).contains("hit"),
            "{cc}: {}",
            cache_status(&r)
        );
    }
    assert_eq!(origin.hits(path), 3);
    assert_eq!(
        rs.metric("ringside_client_revalidations_total", &[]).await,
        2.0
    );

    let (origin, rs) = setup("cache:\n  honor_client_no_cache: false\n").await;
    rs.get(path).await;
    let r = rs
        .request("GET", path, &[("Cache-Control", "no-cache")])
        .await;
    assert_eq!(cache_status(&r), "ringside; hit");
    assert_eq!(origin.hits(path), 1);
    assert_eq!(
        rs.metric("ringside_client_revalidations_total", &[]).await,
        0.0
    );
}

// ---- item 7: protocol strictness ----

#[tokio::test]
async fn http11_without_host_gets_400() {
    let (origin, rs) = setup("").await;
    let reply = raw_exchange(rs.addr, "GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .text;
    assert_eq!(status_of(&reply), Some(400), "{reply:?}");
    // HTTP/1.0 has no such rule.
    let reply = raw_exchange(rs.addr, "GET /old HTTP/1.0\r\n\r\n")
        .await
        .text;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert_eq!(origin.hits("/nohost"), 0);
    assert_eq!(origin.hits("/old"), 1);
}

#[tokio::test]
async fn identical_duplicate_content_lengths_are_forwarded_once() {
    let (origin, rs) = setup("").await;
    let request = "POST /dup-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let reply = raw_exchange(rs.addr, request).await.text;
    assert_eq!(status_of(&reply), Some(200), "{reply:?}");
    assert!(reply.ends_with("echo:hello"), "{reply:?}");
    assert_eq!(
        origin.last_request_header_all("/dup-cl", "content-length"),
        ["5"]
    );
}

#[tokio::test]
async fn an_over_long_request_line_gets_414() {
    let (origin, rs) = setup("").await;
    let long = format!("/long?pad={}", "p".repeat(17 * 1024));
    let reply = raw_exchange(
        rs.addr,
        format!("GET {long} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
    .text;
    assert_eq!(status_of(&reply), Some(414), "{:?}", reply.get(..200));
    assert_eq!(origin.total_hits(), 0);
    // Up to the limit (16 KiB) it is served.
    let fits = format!("/long?pad={}", "p".repeat(15 * 1024));
    assert_eq!(rs.get(&fits).await.status, 200);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (origin, rs) = setup("").await;
    // A hit, a miss and a proxied POST, sent back to back in one write.
    rs.get("/pipe/1?cc=max-age%3D60").await;
    let requests = "GET /pipe/1?cc=max-age%3D60 HTTP/1.1\r\nHost: x\r\n\r\n\
GET /pipe/2 HTTP/1.1\r\nHost: x\r\n\r\n\
POST /pipe/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\
GET /pipe/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(rs.addr, requests).await.text;
    let bodies: Vec<&str> = [
        "GET /pipe/1?cc=max-age%3D60 #1",
        "GET /pipe/2 #1",
        "echo:hi",
        "GET /pipe/4 #1",
    ]
    .into_iter()
    .collect();
    let mut at = 0;
    for body in bodies {
        let found = reply[at..]
            .find(body)
            .unwrap_or_else(|| panic!("{body:?} missing or out of order in {reply:?}"));
        at += found + body.len();
    }
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 4, "{reply:?}");
    assert_eq!(origin.hits("/pipe/4"), 1);
}
