//! RFC 9111 behaviour of a real ringside process in front of a real origin:
//! what is stored, for how long, how it is revalidated, and what each
//! response says about it in Cache-Status.

mod common;
use common::is_hit;
use common::origin::Origin;
use common::raw::{raw_exchange, RawServer};
use common::{eventually, Ringside};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// ringside with no default TTL: only the origin's own headers make things cacheable.
async fn setup() -> (Origin, Ringside) {
    let origin = Origin::start().await;
    let ringside = Ringside::start(&origin.url(), "").await;
    (origin, ringside)
}

#[tokio::test]
async fn max_age_response_is_served_from_cache_with_age() {
    let (origin, rs) = setup().await;
    // Already 5 s old at the origin: the hit's Age counts from there.
    let path = "/a?cc=max-age%3D60&age=5";
    let first = rs.get(path).await;
    assert_eq!(first.status, 200);
    assert!(first
        .header("cache-status")
        .unwrap()
        .contains("fwd=uri-miss"));
    assert!(first.header("cache-status").unwrap().contains("stored"));
    let second = rs.get(path).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body);
    assert!(second.header("cache-status").unwrap().contains("hit"));
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!((5..60).contains(&age), "age {age}");
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn s_maxage_wins_over_max_age() {
    let (origin, rs) = setup().await;
    // 2 s old on arrival: fresh for max-age, stale for s-maxage.
    let fresh = "/s?cc=max-age%3D60&age=2";
    rs.get(fresh).await;
    rs.get(fresh).await;
    assert_eq!(origin.hits(fresh), 1);
    let path = "/s?cc=max-age%3D60%2C%20s-maxage%3D1&age=2";
    rs.get(path).await;
    rs.get(path).await;
    assert_eq!(origin.hits(path), 2, "s-maxage=1 made the entry stale");
}

#[tokio::test]
async fn origin_age_counts_against_freshness() {
    let (origin, rs) = setup().await;
    // Already 100 s old with a 60 s lifetime: stale on arrival, not served from cache.
    let path = "/old?cc=max-age%3D60&age=100";
    rs.get(path).await;
    let second = rs.get(path).await;
    assert_eq!(origin.hits(path), 2);
    assert!(second.header("age").is_some());
}

#[tokio::test]
async fn expires_gives_freshness_and_past_expires_does_not() {
    let (origin, rs) = setup().await;
    let fresh = "/e?expires=60";
    rs.get(fresh).await;
    rs.get(fresh).await;
    assert_eq!(origin.hits(fresh), 1);
    let past = "/e?expires=-60";
    rs.get(past).await;
    rs.get(past).await;
    assert_eq!(origin.hits(past), 2);
}

#[tokio::test]
async fn no_freshness_information_is_not_stored_without_a_rule() {
    let (origin, rs) = setup().await;
    let path = "/plain";
    let r = rs.get(path).await;
    assert!(r
        .header("cache-status")
        .unwrap()
        .contains("detail=no-freshness"));
    rs.get(path).await;
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test]
async fn rule_ttl_applies_only_where_the_origin_says_nothing() {
    let origin = Origin::start().await;
    let rs = Ringside::start(
        &origin.url(),
        "cache:\n  rules:\n    - {prefix: /ttl/, ttl: 60s}\n    - {prefix: /never/, bypass: true}\n",
    )
    .await;
    rs.get("/ttl/x").await;
    rs.get("/ttl/x").await;
    assert_eq!(origin.hits("/ttl/x"), 1, "rule TTL made it cacheable");
    // The origin's max-age=0 wins over the rule.
    let zero = "/ttl/y?cc=max-age%3D0";
    rs.get(zero).await;
    rs.get(zero).await;
    assert_eq!(origin.hits(zero), 2);
    let bypass = "/never/z?cc=max-age%3D60";
    let r = rs.get(bypass).await;
    assert!(r.header("cache-status").unwrap().contains("fwd=bypass"));
    rs.get(bypass).await;
    assert_eq!(origin.hits(bypass), 2);
}

#[tokio::test]
async fn no_store_and_private_are_never_stored() {
    let (origin, rs) = setup().await;
    for path in [
        "/ns?cc=no-store%2C%20max-age%3D60",
        "/pv?cc=private%2C%20max-age%3D60",
    ] {
        rs.get(path).await;
        let r = rs.get(path).await;
        assert_eq!(origin.hits(path), 2, "{path}");
        assert!(!r.header("cache-status").unwrap().contains("hit"), "{path}");
    }
}

#[tokio::test]
async fn private_response_is_never_served_to_another_user() {
    let (origin, rs) = setup().await;
    let path = "/me?cc=private%2C%20max-age%3D60";
    let alice = rs
        .request("GET", path, &[("authorization", "Bearer alice")])
        .await;
    let bob = rs
        .request("GET", path, &[("authorization", "Bearer bob")])
        .await;
    assert_ne!(alice.body, bob.body, "bob got alice's private response");
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test]
async fn authorization_requests_are_stored_only_when_the_origin_allows() {
    let (origin, rs) = setup().await;
    let auth = [("authorization", "Bearer t")];
    let plain = "/auth?cc=max-age%3D60";
    rs.request("GET", plain, &auth).await;
    rs.request("GET", plain, &auth).await;
    assert_eq!(
        origin.hits(plain),
        2,
        "max-age alone does not allow sharing"
    );
    for allowed in [
        "/auth?cc=public%2C%20max-age%3D60",
        "/auth?cc=s-maxage%3D60",
        "/auth?cc=must-revalidate%2C%20max-age%3D60",
    ] {
        rs.request("GET", allowed, &auth).await;
        rs.request("GET", allowed, &auth).await;
        assert_eq!(origin.hits(allowed), 1, "{allowed}");
    }
}

#[tokio::test]
async fn set_cookie_responses_are_not_stored_by_default() {
    let (origin, rs) = setup().await;
    let path = "/c?cc=max-age%3D60&cookie=1";
    let first = rs.get(path).await;
    let second = rs.get(path).await;
    assert_eq!(origin.hits(path), 2);
    assert_ne!(first.header("set-cookie"), second.header("set-cookie"));
}

#[tokio::test]
async fn set_cookie_responses_are_stored_when_configured() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  cache_set_cookie: true\n").await;
    let path = "/c?cc=max-age%3D60&cookie=1";
    rs.get(path).await;
    rs.get(path).await;
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn vary_star_is_not_stored() {
    let (origin, rs) = setup().await;
    let path = "/v?cc=max-age%3D60&vary=*";
    rs.get(path).await;
    rs.get(path).await;
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test]
async fn vary_keys_variants_separately() {
    let (origin, rs) = setup().await;
    let path = "/lang?cc=max-age%3D60&vary=Accept-Language";
    let en = rs.request("GET", path, &[("accept-language", "en")]).await;
    let fr = rs.request("GET", path, &[("accept-language", "fr")]).await;
    assert!(en.text().starts_with("Accept-Language=en"), "{}", en.text());
    assert!(fr.text().starts_with("Accept-Language=fr"), "{}", fr.text());
    let en2 = rs.request("GET", path, &[("accept-language", "en")]).await;
    let fr2 = rs.request("GET", path, &[("accept-language", "fr")]).await;
    assert_eq!(en2.body, en.body);
    assert_eq!(fr2.body, fr.body);
    assert!(en2.header("cache-status").unwrap().contains("hit"));
    assert!(fr2.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 2, "one fetch per variant");
}

#[tokio::test]
async fn no_cache_response_is_revalidated_every_time_and_304_refreshes() {
    let (origin, rs) = setup().await;
    let path = "/nc?cc=no-cache&etag=v1";
    let first = rs.get(path).await;
    assert_eq!(first.status, 200);
    let second = rs.get(path).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body, first.body,
        "served the stored body after a 304"
    );
    assert!(second
        .header("cache-status")
        .unwrap()
        .contains("fwd-status=304"));
    assert_eq!(origin.hits(path), 2);
    assert_eq!(
        origin.last_request_header(path, "if-none-match").as_deref(),
        Some("\"v1\"")
    );
}

#[tokio::test]
async fn stale_entry_is_revalidated_with_if_modified_since() {
    let (origin, rs) = setup().await;
    // Stale on arrival; the 304 brings a minute of freshness.
    let path = "/lm?cc1=max-age%3D0&cc=max-age%3D60&lm=1";
    let first = rs.get(path).await;
    let second = rs.get(path).await;
    assert_eq!(second.body, first.body);
    assert!(second
        .header("cache-status")
        .unwrap()
        .contains("fwd-status=304"));
    assert!(origin
        .last_request_header(path, "if-modified-since")
        .is_some());
    // The 304 refreshed freshness: the next request is a plain hit.
    let third = rs.get(path).await;
    assert!(third.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test]
async fn client_conditional_requests_get_304_from_cache() {
    let (origin, rs) = setup().await;
    let path = "/cond?cc=max-age%3D60&etag=abc&lm=1";
    rs.get(path).await;
    let inm = rs
        .request("GET", path, &[("if-none-match", "\"abc\"")])
        .await;
    assert_eq!(inm.status, 304);
    assert!(inm.body.is_empty());
    assert_eq!(inm.header("etag"), Some("\"abc\""));
    let weak = rs
        .request("GET", path, &[("if-none-match", "W/\"abc\"")])
        .await;
    assert_eq!(weak.status, 304, "weak comparison for If-None-Match");
    let other = rs
        .request("GET", path, &[("if-none-match", "\"zzz\"")])
        .await;
    assert_eq!(other.status, 200);
    let ims = rs
        .request(
            "GET",
            path,
            &[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")],
        )
        .await;
    assert_eq!(ims.status, 304);
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let (origin, rs) = setup().await;
    let path = "/h?cc=max-age%3D60";
    let get = rs.get(path).await;
    let head = rs.request("HEAD", path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.header("content-length"));
    assert!(head.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let (origin, rs) = setup().await;
    // Stale on arrival; the refresh brings a minute of freshness.
    let path = "/swr?cc1=max-age%3D0%2C%20stale-while-revalidate%3D30&cc=max-age%3D60";
    rs.get(path).await;
    let mut stale = 0;
    for _ in 0..5 {
        let r = rs.get(path).await;
        assert_eq!(r.status, 200);
        if r.header("cache-status")
            .unwrap()
            .contains("stale-while-revalidate")
        {
            stale += 1;
        }
    }
    assert!(
        stale >= 1,
        "at least the first request after expiry is served stale"
    );
    eventually(
        Duration::from_secs(10),
        "the background refresh",
        || async { origin.hits(path) >= 2 },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the refreshed entry is a hit",
        || async { rs.get(path).await.header("cache-status") == Some("ringside; hit") },
    )
    .await;
    assert_eq!(origin.hits(path), 2, "exactly one background refresh");
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails() {
    let (origin, rs) = setup().await;
    let path = "/sie?cc=max-age%3D0%2C%20stale-if-error%3D60";
    let first = rs.get(path).await;
    origin.set_failing(true);
    let r = rs.get(path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
    assert!(r.header("cache-status").unwrap().contains("stale-if-error"));
    // Unreachable origin: still stale.
    origin.stop();
    let r = rs.get(path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
}

#[tokio::test]
async fn without_stale_if_error_the_origin_error_is_passed_on() {
    let (origin, rs) = setup().await;
    let path = "/nosie?cc=max-age%3D0&etag=x";
    rs.get(path).await;
    origin.set_failing(true);
    let r = rs.get(path).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn must_revalidate_forbids_serving_stale_on_error() {
    let (origin, rs) = setup().await;
    // Kept for revalidation (it has a validator), never served stale.
    let path = "/mr?cc=max-age%3D0%2C%20must-revalidate%2C%20stale-if-error%3D60&etag=x";
    rs.get(path).await;
    origin.stop();
    let r = rs.get(path).await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn client_no_cache_forces_revalidation_when_honoured() {
    let (origin, rs) = setup().await;
    let path = "/force?cc=max-age%3D60";
    rs.get(path).await;
    rs.request("GET", path, &[("cache-control", "no-cache")])
        .await;
    assert_eq!(origin.hits(path), 2);
    rs.request("GET", path, &[("cache-control", "max-age=0")])
        .await;
    assert_eq!(origin.hits(path), 3);
}

#[tokio::test]
async fn client_no_cache_is_ignored_when_configured() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  honor_client_no_cache: false\n").await;
    let path = "/force?cc=max-age%3D60";
    rs.get(path).await;
    let r = rs
        .request("GET", path, &[("cache-control", "no-cache")])
        .await;
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn query_string_is_part_of_the_key_unless_configured_out() {
    let (origin, rs) = setup().await;
    rs.get("/q?cc=max-age%3D60&x=1").await;
    rs.get("/q?cc=max-age%3D60&x=2").await;
    assert_eq!(origin.total_hits(), 2);

    let origin = Origin::start().await;
    let rs = Ringside::start(
        &origin.url(),
        "cache:\n  include_query: false\n  rules: [{prefix: /, ttl: 60s}]\n",
    )
    .await;
    rs.get("/q?x=1").await;
    rs.get("/q?x=2").await;
    assert_eq!(origin.total_hits(), 1);
}

#[tokio::test]
async fn other_methods_pass_through_with_their_bodies() {
    let (origin, rs) = setup().await;
    let mut conn = common::Conn::connect(rs.addr).await.unwrap();
    let r = conn
        .request_with_body("POST", "/p?cc=max-age%3D60", &[], b"payload")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "echo:payload");
    assert!(r.header("cache-status").unwrap().contains("fwd=method"));
    conn.request_with_body("POST", "/p?cc=max-age%3D60", &[], b"again")
        .await
        .unwrap();
    assert_eq!(origin.hits("/p?cc=max-age%3D60"), 2);
}

#[tokio::test]
async fn origin_connections_are_kept_alive_and_reused() {
    let (origin, rs) = setup().await;
    // Sequential misses (fills) and passes (pingora's proxy) to distinct keys:
    // about one pooled connection for each path, not one per request.
    for k in 0..20 {
        rs.get(&format!("/ka{k}?cc=max-age%3D60")).await;
        rs.request("POST", &format!("/kp{k}"), &[]).await;
    }
    assert_eq!(origin.total_hits(), 40);
    assert!(
        origin.connections() <= 4,
        "40 origin requests took {} connections",
        origin.connections()
    );
}

/// RFC 9111 §5.1: of an Age list or repeated Age lines the first value
/// counts: `Age: 7200, 0` with max-age=3600 is stale on arrival.
#[tokio::test]
async fn rfc9111_5_1_the_first_age_value_counts() {
    let (origin, rs) = setup().await;
    let path = "/agelist?cc=max-age%3D3600&age=7200%2C%200";
    rs.get(path).await;
    let second = rs.get(path).await;
    assert!(!is_hit(&second), "{second:?}");
    assert_eq!(origin.hits(path), 2);
}

/// RFC 9110 §5.6.7, RFC 9111 §5.3: Expires in any of the three date formats
/// and any case gives freshness.
#[tokio::test]
async fn rfc9111_5_3_expires_in_every_http_date_format() {
    let (origin, rs) = setup().await;
    for format in ["imf", "rfc850", "asctime", "lower"] {
        let path = format!("/exp-{format}?expires=600&expires_fmt={format}");
        rs.get(&path).await;
        assert!(is_hit(&rs.get(&path).await), "{format}");
        assert_eq!(origin.hits(&path), 1, "{format}");
    }
}

/// RFC 9111 §3: any final status with explicit freshness may be stored, and
/// is reused like a 200.
#[tokio::test]
async fn rfc9111_3_any_final_status_with_explicit_freshness_is_stored() {
    let (origin, rs) = setup().await;
    for status in [299, 303, 400, 404, 410, 499, 500, 503, 599] {
        let path = format!("/status?status={status}&cc=max-age%3D600");
        let first = rs.get(&path).await;
        let second = rs.get(&path).await;
        assert_eq!(second.status, status);
        assert_eq!(second.body, first.body, "{status}");
        assert!(is_hit(&second), "{status}: {second:?}");
        assert_eq!(origin.hits(&path), 1, "{status}");
    }
    // Without explicit freshness, a 500 is not stored.
    let path = "/status?status=500";
    rs.get(path).await;
    rs.get(path).await;
    assert_eq!(origin.hits(path), 2);
}

/// RFC 9111 §4.2.2: with `cache.heuristic_fraction` set, a heuristically
/// cacheable response with Last-Modified and no explicit freshness is fresh
/// for that fraction of its age since the modification (capped). Off by
/// default: an API answer that says nothing about caching is not stored.
#[tokio::test]
async fn rfc9111_4_2_2_heuristic_freshness_from_last_modified() {
    let (origin, rs) = setup().await;
    let path = "/modified-default?lm=1";
    rs.get(path).await;
    let again = rs.get(path).await;
    assert!(!is_hit(&again), "stored on a guess: {again:?}");
    assert_eq!(origin.hits(path), 2);

    let on = Ringside::start(&origin.url(), "cache:\n  heuristic_fraction: 0.1\n").await;
    let path = "/modified?lm=1";
    on.get(path).await;
    assert!(is_hit(&on.get(path).await));
    assert_eq!(origin.hits(path), 1);
}

/// RFC 9111 §4.1 with RFC 9110 §12.5: Vary on Accept-Language or
/// Accept-Encoding matches requests whose values mean the same (language
/// tags in any case; codings in any order), and only those.
#[tokio::test]
async fn rfc9111_4_1_vary_matches_equivalent_negotiation_values() {
    let (origin, rs) = setup().await;
    let cases = [
        (
            "Accept-Language",
            "en-US, fr;q=0.5",
            "en-us,fr ; q=0.5",
            "de",
        ),
        ("Accept-Encoding", "gzip, br", "BR,gzip", "identity"),
    ];
    for (name, first, same, other) in cases {
        let path = format!("/negotiated?cc=max-age%3D600&vary={name}");
        rs.request("GET", &path, &[(name, first)]).await;
        let again = rs.request("GET", &path, &[(name, same)]).await;
        assert!(is_hit(&again), "{name}: {same:?} is {first:?}: {again:?}");
        let different = rs.request("GET", &path, &[(name, other)]).await;
        assert!(!is_hit(&different), "{name}: {other:?}");
        assert_eq!(origin.hits(&path), 2, "{name}");
    }
}

/// RFC 9213: the first targeted field on `cache.targeted_cache_control`
/// (default `Ringside-Cache-Control`) replaces Cache-Control and Expires for
/// ringside's decisions; fields aimed at other caches change nothing.
#[tokio::test]
async fn rfc9213_targeted_cache_control_replaces_cache_control() {
    let (origin, rs) = setup().await;
    let stored = "/tcc?cc=no-store&tcc=max-age%3D600";
    rs.get(stored).await;
    assert!(
        is_hit(&rs.get(stored).await),
        "ringside's own field says store"
    );
    let not_stored = "/tcc?cc=max-age%3D600&tcc=no-store";
    rs.get(not_stored).await;
    assert!(
        !is_hit(&rs.get(not_stored).await),
        "ringside's own field says no"
    );
    let for_cdns = "/cdn?cc=no-store&cdncc=max-age%3D600";
    rs.get(for_cdns).await;
    rs.get(for_cdns).await;
    assert_eq!(
        origin.hits(for_cdns),
        2,
        "CDN-Cache-Control is not ours by default"
    );

    let config = "cache:\n  targeted_cache_control: [CDN-Cache-Control, Ringside-Cache-Control]\n";
    let cdn = Ringside::start(&origin.url(), config).await;
    let path = "/cdn2?cc=no-store&cdncc=max-age%3D600&tcc=no-store";
    cdn.get(path).await;
    assert!(
        is_hit(&cdn.get(path).await),
        "the first configured field wins"
    );
}

/// RFC 9111 §4.2.4: a cache may serve stale when the origin cannot be
/// reached, unless must-revalidate, proxy-revalidate, s-maxage or no-cache
/// forbid it. `cache.stale_if_error` (and a rule's) says how long past
/// freshness; off by default, so only the origin's own stale-if-error counts.
#[tokio::test]
async fn rfc9111_4_2_4_stale_answers_when_the_origin_is_unreachable() {
    let origin = Origin::start().await;
    let config =
        "cache:\n  stale_if_error: 1h\n  rules:\n    - {prefix: /ruled/, stale_if_error: 0s}\n";
    let rs = Ringside::start(&origin.url(), config).await;
    let off = Ringside::start(&origin.url(), "").await;
    let allowed = "/down?cc=max-age%3D0&etag=v1";
    let forbidden = "/down?cc=max-age%3D0%2C%20must-revalidate&etag=v1";
    let ruled_out = "/ruled/down?cc=max-age%3D0&etag=v1";
    for path in [allowed, forbidden, ruled_out] {
        rs.get(path).await;
        off.get(path).await;
    }
    origin.set_failing(true);
    let stale = rs.get(allowed).await;
    assert_eq!(stale.status, 200, "{stale:?}");
    let status = stale.header("cache-status").unwrap();
    assert!(
        status.contains("fwd-status=503; detail=stale-if-error"),
        "{status}"
    );
    assert_eq!(rs.get(forbidden).await.status, 503, "must-revalidate");
    assert_eq!(rs.get(ruled_out).await.status, 503, "the rule's 0s");
    assert_eq!(off.get(allowed).await.status, 503, "off by default");

    origin.stop();
    let refused = rs.get(allowed).await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert!(refused
        .header("cache-status")
        .unwrap()
        .contains("fwd-status=502"));
    assert_eq!(off.get(allowed).await.status, 502);
}

/// RFC 9111 §4.3.2 on a miss: the fill asks the origin unconditionally (its
/// answer is for the cache), and a client whose validators match what it
/// brought gets a 304 all the same, stored or not.
#[tokio::test]
async fn rfc9111_4_3_2_a_miss_answers_304_when_the_clients_validators_match() {
    let (origin, rs) = setup().await;
    let stored = "/miss-inm?cc=max-age%3D60&etag=v1";
    let not_stored = "/miss-inm?cc=no-store&etag=v1";
    for path in [stored, not_stored] {
        let r = rs
            .request("GET", path, &[("if-none-match", "\"v1\"")])
            .await;
        assert_eq!(r.status, 304, "{path}: {r:?}");
        assert!(r.body.is_empty());
        let status = r.header("cache-status").unwrap();
        assert!(status.contains("fwd=uri-miss"), "{path}: {status}");
        assert_eq!(origin.last_request_header(path, "if-none-match"), None);
    }
    let ims = "/miss-ims?cc=max-age%3D60&lm=1";
    let r = rs
        .request(
            "GET",
            ims,
            &[("if-modified-since", common::origin::LAST_MODIFIED)],
        )
        .await;
    assert_eq!(r.status, 304, "{r:?}");
    // The fill stored the whole object for the next client.
    let next = rs.get(stored).await;
    assert_eq!(next.status, 200);
    assert!(is_hit(&next), "{next:?}");
    assert!(!next.body.is_empty());
    assert_eq!(origin.hits(stored), 1);
}

/// RFC 9111 §4.3.2: requests that do not use the cache (a bypass, or a
/// follower of a fill that turned out not storable) go to the origin with
/// the client's own conditionals, so the origin answers their 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rfc9111_4_3_2_requests_the_origin_answers_keep_the_clients_conditionals() {
    let (origin, rs) = setup().await;
    let bypass = "/bypass-inm?etag=v1";
    let headers = [("if-none-match", "\"v1\""), ("cache-control", "no-store")];
    let r = rs.request("GET", bypass, &headers).await;
    assert_eq!(r.status, 304, "{r:?}");
    assert!(r.header("cache-status").unwrap().contains("fwd=bypass"));
    let sent = origin.last_request_header(bypass, "if-none-match");
    assert_eq!(sent.as_deref(), Some("\"v1\""));

    // A follower joins a fill whose answer is not stored, then asks itself.
    let path = "/follow-inm?cc=no-store&etag=v1&delay_ms=500";
    let leader = tokio::spawn(common::get(rs.addr, path));
    common::eventually(Duration::from_secs(5), "the leader's fill", || async {
        origin.hits(path) == 1
    })
    .await;
    let follower = rs
        .request("GET", path, &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(leader.await.unwrap().unwrap().status, 200);
    assert_eq!(follower.status, 304, "{follower:?}");
    let status = follower.header("cache-status").unwrap();
    assert!(status.contains("detail=not-stored"), "{status}");
    assert_eq!(origin.hits(path), 2);
    let sent = origin.last_request_header(path, "if-none-match");
    assert_eq!(
        sent.as_deref(),
        Some("\"v1\""),
        "the follower's own request"
    );
}

/// RFC 9110 §13.2.1: preconditions are ignored when the response would not
/// be a 2xx: a stored 404 is sent as it is, not as a 304.
#[tokio::test]
async fn rfc9110_13_2_1_a_stored_non_2xx_ignores_the_clients_validators() {
    let (origin, rs) = setup().await;
    let path = "/gone?status=404&cc=max-age%3D60&etag=v1";
    rs.get(path).await;
    let r = rs
        .request("GET", path, &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(is_hit(&r), "{r:?}");
    assert_eq!(origin.hits(path), 1);
}

/// RFC 9213 §2.1: targeted cache-control fields are Structured Fields
/// (Dictionaries): one that does not parse as one is ignored as a whole,
/// so `Cache-Control` decides; a valid one's parameters are ignored.
#[tokio::test]
async fn rfc9213_2_1_an_invalid_targeted_field_is_ignored_as_a_whole() {
    let (origin, rs) = setup().await;
    for invalid in ["MAX-AGE%3D600", "max-age%3D600%2C", "max-age%3D600%3B%3B"] {
        let path = format!("/tcc-invalid?cc=no-store&tcc={invalid}");
        rs.get(&path).await;
        let second = rs.get(&path).await;
        assert!(!is_hit(&second), "{invalid}: {second:?}");
        assert_eq!(origin.hits(&path), 2, "{invalid}");
    }
    let with_parameters = "/tcc-params?cc=no-store&tcc=max-age%3D600%3Bby%3Dops";
    rs.get(with_parameters).await;
    assert!(is_hit(&rs.get(with_parameters).await), "parameters ignored");
}

/// RFC 9110 §5.6.7: recipients should read a date leniently; in asctime
/// form the weekday is redundant, so a wrong one does not make `Expires`
/// invalid (which would mean already expired): the date counts as written.
#[tokio::test]
async fn rfc9110_5_6_7_expires_with_a_wrong_weekday_still_counts() {
    let (origin, rs) = setup().await;
    let fresh = "/wrong-day?expires=600&expires_fmt=asctime_wrong_weekday";
    rs.get(fresh).await;
    assert!(is_hit(&rs.get(fresh).await));
    assert_eq!(origin.hits(fresh), 1);
    let past = "/wrong-day?expires=-600&expires_fmt=asctime_wrong_weekday";
    rs.get(past).await;
    rs.get(past).await;
    assert_eq!(origin.hits(past), 2, "an Expires in the past is stale");
}

/// RFC 9110 §13.1.1, §13.1.4, §13.2.2: `If-Match` and (without it)
/// `If-Unmodified-Since` are evaluated against the stored response, as the
/// origin would against its own: false is 412, true serves it; on a miss
/// too, against what the fill brought.
#[tokio::test]
async fn rfc9110_13_2_2_if_match_and_if_unmodified_since_on_hits() {
    let (origin, rs) = setup().await;
    let path = "/pre?cc=max-age%3D600&etag=v1&lm=1";
    let before = "Tue, 20 Oct 2015 07:28:00 GMT";
    let after = "Thu, 22 Oct 2015 07:28:00 GMT";
    let miss = rs.request("GET", path, &[("if-match", "\"v2\"")]).await;
    assert_eq!(miss.status, 412, "{miss:?}");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case; 7] = [
        ("GET", &[("if-match", "\"v1\"")], 200),
        ("GET", &[("if-match", "\"v0\", \"v1\"")], 200),
        ("GET", &[("if-match", "*")], 200),
        ("GET", &[("if-match", "W/\"v1\"")], 412),
        ("HEAD", &[("if-match", "\"v2\"")], 412),
        ("GET", &[("if-unmodified-since", before)], 412),
        ("GET", &[("if-unmodified-since", after)], 200),
    ];
    for (method, headers, status) in cases {
        let r = rs.request(method, path, headers).await;
        assert_eq!(r.status, status, "{method} {headers:?}: {r:?}");
        assert!(is_hit(&r), "{headers:?}: {r:?}");
    }
    let both = [("if-match", "\"v1\""), ("if-unmodified-since", before)];
    assert_eq!(
        rs.request("GET", path, &both).await.status,
        200,
        "If-Match wins"
    );
    assert_eq!(origin.hits(path), 1);
}

/// RFC 9110 §6.6.1: `Date` is when the origin generated the response, and
/// a cache passes it on: a hit carries the stored response's Date (its
/// `Age` says how long it has been held), not the time of the hit. So does
/// a response passed through uncached; ringside's own answers get one.
#[tokio::test]
async fn rfc9110_6_6_1_a_hit_carries_the_stored_responses_date() {
    let (_origin, rs) = setup().await;
    let path = "/dated?cc=max-age%3D600&date_ago=100";
    let first = rs.get(path).await;
    let hit = rs.get(path).await;
    assert!(is_hit(&hit), "{hit:?}");
    let date = hit.header("date").expect("a Date");
    assert_eq!(Some(date), first.header("date"), "{first:?}");
    let generated = httpdate::parse_http_date(date).expect("an HTTP-date");
    let old = SystemTime::now()
        .duration_since(generated)
        .unwrap_or_default();
    assert!(old >= Duration::from_secs(99), "Date {date} is {old:?} old");
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!(age >= 100, "age {age}");

    let passed = rs.get("/dated-pass?cc=no-store&date_ago=100").await;
    let generated = httpdate::parse_http_date(passed.header("date").unwrap()).unwrap();
    let old = SystemTime::now()
        .duration_since(generated)
        .unwrap_or_default();
    assert!(old >= Duration::from_secs(99), "{passed:?}");

    let only_cached = [("cache-control", "only-if-cached")];
    let own = rs.request("GET", "/never-fetched", &only_cached).await;
    assert_eq!(own.status, 504);
    let date = own
        .header("date")
        .expect("ringside's own answer has a Date");
    let generated = httpdate::parse_http_date(date).unwrap();
    let old = SystemTime::now()
        .duration_since(generated)
        .unwrap_or_default();
    assert!(old < Duration::from_secs(5), "{own:?}");
}

/// An origin that sends `103 Early Hints` before every final response.
async fn hinting_origin() -> RawServer {
    RawServer::start("127.0.0.1:0", |_, mut stream| async move {
        let answer = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                      HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok";
        let _ = stream.write_all(answer.as_bytes()).await;
    })
    .await
}

/// RFC 9110 §15.2 and RFC 8297: a proxy forwards the 1xx responses it did
/// not ask for, except to an HTTP/1.0 client; a cache never stores them.
/// The client whose request fetched the response gets the origin's 103
/// Early Hints before the 200; a hit gets the 200 alone.
#[tokio::test]
async fn rfc9110_15_2_interim_responses_reach_the_client_and_are_never_stored() {
    let origin = hinting_origin().await;
    let rs = Ringside::start(&format!("http://{}", origin.addr), "").await;
    let request = "GET /hinted HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(rs.addr, request).await;
    let hints = reply.text.find("HTTP/1.1 103").expect(&reply.text);
    let ok = reply.text.find("HTTP/1.1 200").expect(&reply.text);
    assert!(hints < ok, "{}", reply.text);
    assert!(
        reply.text[hints..ok].contains("</a.css>; rel=preload"),
        "{}",
        reply.text
    );
    let hit = raw_exchange(rs.addr, request).await;
    assert_eq!((hit.status(), hit.responses()), (Some(200), 1), "{hit:?}");
    assert!(hit.text.contains("ringside; hit"), "{}", hit.text);
    assert_eq!(origin.hits("/hinted"), 1);

    let old_client = "GET /hinted-1.0 HTTP/1.0\r\nHost: x\r\n\r\n";
    let reply = raw_exchange(rs.addr, old_client).await;
    assert_eq!(
        (reply.status(), reply.responses()),
        (Some(200), 1),
        "{reply:?}"
    );
}

/// RFC 9111 §4.3.5: a HEAD on a stale entry revalidates with a conditional
/// HEAD, so no body crosses for a client that wants none. A 304 refreshes
/// the entry for everyone; a 200 whose validators differ (the resource
/// changed) answers the HEAD and retires the stored GET response, so the
/// next GET fetches the new one.
#[tokio::test]
async fn rfc9111_4_3_5_a_head_on_a_stale_entry_revalidates_with_head() {
    let (origin, rs) = setup().await;
    let path = "/head-reval?cc1=max-age%3D0&cc=max-age%3D600&etag=v1";
    let first = rs.get(path).await;
    let head = rs.request("HEAD", path, &[]).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(
        common::cache_status(&head).contains("fwd-status=304"),
        "{head:?}"
    );
    assert_eq!(origin.last_method(path).as_deref(), Some("HEAD"));
    assert_eq!(
        origin.last_request_header(path, "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    let get = rs.get(path).await;
    assert!(is_hit(&get), "the 304 refreshed the entry: {get:?}");
    assert_eq!(get.body, first.body);

    let changed = "/head-changed?cc=max-age%3D0&etag=v1&etag2=v2";
    rs.get(changed).await;
    let head = rs.request("HEAD", changed, &[]).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("etag"), Some("\"v2\""), "{head:?}");
    assert_eq!(origin.last_method(changed).as_deref(), Some("HEAD"));
    let get = rs.get(changed).await;
    assert_eq!(get.header("etag"), Some("\"v2\""), "{get:?}");
    assert_eq!(origin.last_method(changed).as_deref(), Some("GET"));
    assert_eq!(
        origin.last_request_header(changed, "if-none-match"),
        None,
        "the changed entry was retired, not revalidated"
    );
}
