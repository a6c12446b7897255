//! Unit tests for the RFC 9111 rules, one group per public function.
use super::*;
use std::time::UNIX_EPOCH;

/// A header map of `pairs`, in order (shared by the submodules' tests).
pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn cc(value: &str) -> CacheControl {
    CacheControl::parse(&headers(&[("cache-control", value)]))
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn date(seconds: u64) -> String {
    httpdate::fmt_http_date(at(seconds))
}

fn no_default() -> RuleOptions {
    RuleOptions::default()
}

fn with_default_ttl(seconds: u64) -> RuleOptions {
    RuleOptions {
        default_ttl: Some(Duration::from_secs(seconds)),
        ..RuleOptions::default()
    }
}

fn storable(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)]) -> Result<(), NotStorable> {
    storable_with(req, status, resp, &no_default())
}

fn storable_with(
    req: &[(&str, &str)],
    status: u16,
    resp: &[(&str, &str)],
    opts: &RuleOptions,
) -> Result<(), NotStorable> {
    let status = StatusCode::from_u16(status).unwrap();
    check_storable(&Method::GET, &headers(req), status, &headers(resp), opts)
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

// --- Cache-Control parsing ---

#[test]
fn parses_common_response_directives() {
    let parsed = cc("public, max-age=60, s-maxage=120, must-revalidate");
    assert!(parsed.public && parsed.must_revalidate);
    assert_eq!(parsed.max_age, Some(60));
    assert_eq!(parsed.s_maxage, Some(120));
    assert!(!parsed.no_store && !parsed.private && !parsed.no_cache);
}

#[test]
fn merges_multiple_header_lines() {
    let parsed = CacheControl::parse(&headers(&[
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=5, proxy-revalidate"),
    ]));
    assert!(parsed.no_cache && parsed.proxy_revalidate);
    assert_eq!(parsed.max_age, Some(5));
}

#[test]
fn directive_names_are_case_insensitive() {
    let parsed = cc("MAX-AGE=60, No-Store, S-MaxAge=7, Only-If-Cached");
    assert_eq!(parsed.max_age, Some(60));
    assert_eq!(parsed.s_maxage, Some(7));
    assert!(parsed.no_store && parsed.only_if_cached);
}

#[test]
fn quoted_values_are_accepted() {
    let parsed = cc("max-age=\"60\", stale-if-error=\"300\"");
    assert_eq!(parsed.max_age, Some(60));
    assert_eq!(parsed.stale_if_error, Some(300));
}

#[test]
fn whitespace_around_elements_is_ignored() {
    let parsed = cc("  max-age=60 ,\tpublic  ,,");
    assert_eq!(parsed.max_age, Some(60));
    assert!(parsed.public);
}

#[test]
fn duplicate_max_age_or_s_maxage_means_stale() {
    assert_eq!(cc("max-age=60, max-age=120").max_age, Some(0));
    assert_eq!(cc("max-age=60, max-age=60").max_age, Some(0));
    let across_lines = CacheControl::parse(&headers(&[
        ("cache-control", "s-maxage=600"),
        ("cache-control", "s-maxage=600"),
    ]));
    assert_eq!(across_lines.s_maxage, Some(0));
}

#[test]
fn malformed_max_age_means_stale() {
    for value in [
        "max-age=abc",
        "max-age",
        "max-age=",
        "max-age=-1",
        "max-age=1.5",
        "max-age=+5",
        "max-age=\"60",
        "max-age=6 0",
    ] {
        assert_eq!(cc(value).max_age, Some(0), "{value}");
    }
    assert_eq!(cc("s-maxage=1e3").s_maxage, Some(0));
}

#[test]
fn huge_delta_seconds_saturate() {
    let parsed = cc("max-age=99999999999999999999999999999999, stale-while-revalidate=4294967296");
    assert_eq!(parsed.max_age, Some(MAX_DELTA_SECONDS));
    assert_eq!(parsed.stale_while_revalidate, Some(MAX_DELTA_SECONDS));
}

#[test]
fn qualified_private_and_no_cache_name_fields_a_shared_cache_leaves_out() {
    let parsed = cc("private=\"Set-Cookie\", no-cache=\"x-user, set-cookie\", max-age=5");
    assert!(!parsed.private && !parsed.no_cache, "{parsed:?}");
    let names: Vec<&str> = parsed.unshared_fields.iter().map(|n| n.as_str()).collect();
    assert_eq!(names, ["set-cookie", "x-user"]);
    assert_eq!(parsed.max_age, Some(5));
    // The token form (which senders should not use) names a field too.
    assert_eq!(cc("no-cache=set-cookie").unshared_fields.len(), 1);
}

#[test]
fn qualified_lists_that_name_no_field_or_a_needed_one_act_unqualified() {
    // The comma inside the quoted field list does not start a new directive.
    let parsed = cc("private=\"set-cookie\", no-cache=\"x-foo, max-age=5\"");
    assert!(parsed.no_cache, "not a field name: unqualified");
    assert_eq!(parsed.max_age, None);
    for value in [
        "no-cache=\"\"",
        "no-cache=\"etag\"",
        "no-cache=\"Cache-Control\"",
    ] {
        assert!(cc(value).no_cache, "{value}");
    }
    for value in ["private=\"content-type, set-cookie\"", "private=\" , \""] {
        assert!(cc(value).private, "{value}");
    }
}

#[test]
fn garbage_is_ignored() {
    let parsed = cc(",,, =, =5, foo=bar, ;;;, \"quoted\", max-age=5, x-unknown");
    assert_eq!(
        parsed,
        CacheControl {
            max_age: Some(5),
            ..CacheControl::default()
        }
    );
}

#[test]
fn non_ascii_bytes_do_not_break_parsing() {
    let mut map = HeaderMap::new();
    map.append(
        header::CACHE_CONTROL,
        HeaderValue::from_bytes(b"max-age=60, \xff\xfeno-store, public").unwrap(),
    );
    map.append(
        header::CACHE_CONTROL,
        HeaderValue::from_bytes(b"s-maxage=6\xe20").unwrap(),
    );
    let parsed = CacheControl::parse(&map);
    assert_eq!(parsed.max_age, Some(60));
    assert!(parsed.public);
    assert!(!parsed.no_store, "mangled directive name must not match");
    assert_eq!(parsed.s_maxage, Some(0));
}

#[test]
fn max_stale_with_and_without_value() {
    assert_eq!(cc("max-stale").max_stale, Some(None));
    assert_eq!(cc("max-stale=30").max_stale, Some(Some(30)));
    assert_eq!(cc("max-stale=soon").max_stale, None);
    assert_eq!(cc("max-stale, max-stale=30").max_stale, Some(Some(30)));
    assert_eq!(cc("max-stale=90, max-stale=30").max_stale, Some(Some(30)));
}

#[test]
fn other_duplicate_deltas_merge_conservatively() {
    let parsed = cc("stale-while-revalidate=60, stale-while-revalidate=10, min-fresh=5, min-fresh=20, stale-if-error=x");
    assert_eq!(parsed.stale_while_revalidate, Some(10));
    assert_eq!(parsed.min_fresh, Some(20));
    assert_eq!(parsed.stale_if_error, None);
}

#[test]
fn no_header_parses_to_default() {
    assert_eq!(
        CacheControl::parse(&HeaderMap::new()),
        CacheControl::default()
    );
}

#[test]
fn pragma_no_cache_applies_only_without_cache_control() {
    let pragma_only = request_cache_control(&headers(&[("pragma", "No-Cache")]));
    assert!(pragma_only.no_cache);
    let both = request_cache_control(&headers(&[
        ("pragma", "no-cache"),
        ("cache-control", "max-age=10"),
    ]));
    assert!(!both.no_cache);
    assert_eq!(both.max_age, Some(10));
    let other_pragma = request_cache_control(&headers(&[("pragma", "x-foo")]));
    assert!(!other_pragma.no_cache);
    // Responses never read Pragma.
    assert!(!CacheControl::parse(&headers(&[("pragma", "no-cache")])).no_cache);
}

// --- Storability ---

#[test]
fn plain_200_with_max_age_is_storable() {
    assert_eq!(
        storable(&[], 200, &[("cache-control", "max-age=60")]),
        Ok(())
    );
}

#[test]
fn only_get_is_stored() {
    let resp = headers(&[("cache-control", "max-age=60")]);
    for method in [Method::HEAD, Method::POST, Method::PUT, Method::OPTIONS] {
        let result = check_storable(
            &method,
            &HeaderMap::new(),
            StatusCode::OK,
            &resp,
            &no_default(),
        );
        assert_eq!(result, Err(NotStorable::Method), "{method}");
    }
}

#[test]
fn partial_and_not_modified_are_never_stored() {
    let resp = [("cache-control", "public, max-age=600")];
    assert_eq!(storable(&[], 206, &resp), Err(NotStorable::Status));
    assert_eq!(storable(&[], 304, &resp), Err(NotStorable::Status));
}

#[test]
fn any_final_status_with_explicit_freshness_is_stored() {
    // RFC 9111 §3: a response with explicit freshness (or `public`) may be stored whatever
    // its status; without it only heuristically cacheable statuses are.
    let opts = with_default_ttl(30);
    for status in [
        201, 299, 302, 303, 307, 400, 401, 403, 429, 499, 500, 502, 503, 599,
    ] {
        for explicit in [
            ("cache-control", "max-age=600"),
            ("cache-control", "s-maxage=600"),
            ("expires", &date(60)),
            ("cache-control", "public"),
        ] {
            assert_eq!(
                storable_with(&[], status, &[explicit], &opts),
                Ok(()),
                "{status} {explicit:?}"
            );
        }
        assert_eq!(
            storable_with(&[], status, &[], &opts),
            Err(NotStorable::Status),
            "{status} without explicit freshness"
        );
    }
}

#[test]
fn heuristic_freshness_comes_from_last_modified() {
    // RFC 9111 §4.2.2: 10% of the time since Last-Modified, capped.
    let opts = RuleOptions {
        heuristic: Some(Heuristic {
            fraction: 0.1,
            max: secs(3600),
        }),
        ..RuleOptions::default()
    };
    let modified = |ago: u64| -> [(&'static str, String); 2] {
        [
            ("date", date(100_000)),
            ("last-modified", date(100_000 - ago)),
        ]
    };
    let lifetime = |pairs: &[(&str, String)]| {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let resp = headers(&pairs);
        freshness_lifetime(&resp, &CacheControl::parse(&resp), at(100_000), &opts)
    };
    assert_eq!(lifetime(&modified(1000)), secs(100));
    assert_eq!(lifetime(&modified(90_000)), secs(3600), "capped");
    let resp = modified(1000);
    let pairs: Vec<(&str, &str)> = resp.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(storable_with(&[], 200, &pairs, &opts), Ok(()));
    assert_eq!(storable_with(&[], 404, &pairs, &opts), Ok(()));
    assert_eq!(
        storable_with(&[], 500, &pairs, &opts),
        Err(NotStorable::Status),
        "500 is not heuristically cacheable"
    );
    assert_eq!(
        storable_with(&[], 200, &pairs, &no_default()),
        Err(NotStorable::NoFreshness),
        "off"
    );
    assert_eq!(
        storable_with(&[], 200, &[("date", &date(0))], &opts),
        Err(NotStorable::NoFreshness),
        "no Last-Modified"
    );
}

#[test]
fn heuristically_cacheable_statuses_use_default_ttl() {
    let opts = with_default_ttl(30);
    for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
        assert_eq!(storable_with(&[], status, &[], &opts), Ok(()), "{status}");
    }
}

#[test]
fn no_store_in_response_or_request_is_refused() {
    assert_eq!(
        storable(&[], 200, &[("cache-control", "no-store, max-age=60")]),
        Err(NotStorable::NoStore)
    );
    assert_eq!(
        storable(
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")]
        ),
        Err(NotStorable::NoStore)
    );
}

#[test]
fn private_responses_are_not_stored_by_a_shared_cache() {
    assert_eq!(
        storable(&[], 200, &[("cache-control", "private, max-age=60")]),
        Err(NotStorable::Private)
    );
    assert_eq!(
        storable(
            &[],
            200,
            &[("cache-control", "max-age=60, private=\"vary\"")]
        ),
        Err(NotStorable::Private),
        "a needed field named: unqualified"
    );
    // Naming fields, the rest is storable (the fields are left out).
    assert_eq!(
        storable(
            &[],
            200,
            &[("cache-control", "max-age=60, private=\"x-user\"")]
        ),
        Ok(())
    );
}

#[test]
fn authorized_requests_need_explicit_permission() {
    let req = [("authorization", "Bearer abc")];
    assert_eq!(
        storable(&req, 200, &[("cache-control", "max-age=60")]),
        Err(NotStorable::Authorization)
    );
    assert_eq!(
        storable_with(&req, 200, &[], &with_default_ttl(30)),
        Err(NotStorable::Authorization)
    );
}

#[test]
fn authorized_requests_allowed_by_public_s_maxage_or_must_revalidate() {
    let req = [("authorization", "Basic dXNlcjpwYXNz")];
    for resp_cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        assert_eq!(
            storable(&req, 200, &[("cache-control", resp_cc)]),
            Ok(()),
            "{resp_cc}"
        );
    }
}

#[test]
fn set_cookie_is_refused_unless_configured() {
    let resp = [
        ("cache-control", "max-age=60"),
        ("set-cookie", "session=1; HttpOnly"),
    ];
    assert_eq!(storable(&[], 200, &resp), Err(NotStorable::SetCookie));
    let opts = RuleOptions {
        cache_set_cookie: true,
        ..RuleOptions::default()
    };
    assert_eq!(storable_with(&[], 200, &resp, &opts), Ok(()));
}

#[test]
fn vary_star_is_refused() {
    assert_eq!(
        storable(&[], 200, &[("cache-control", "max-age=60"), ("vary", "*")]),
        Err(NotStorable::VaryStar)
    );
    assert_eq!(
        storable(
            &[],
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Encoding"),
                ("vary", "*")
            ]
        ),
        Err(NotStorable::VaryStar)
    );
    assert_eq!(
        storable(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")]
        ),
        Ok(())
    );
}

#[test]
fn no_freshness_without_default_ttl() {
    let resp = [("last-modified", &*date(0)), ("content-type", "text/html")];
    assert_eq!(storable(&[], 200, &resp), Err(NotStorable::NoFreshness));
    assert_eq!(
        storable_with(&[], 200, &resp, &with_default_ttl(60)),
        Ok(())
    );
}

#[test]
fn expires_alone_is_explicit_freshness_even_if_invalid() {
    assert_eq!(storable(&[], 200, &[("expires", &date(3600))]), Ok(()));
    assert_eq!(storable(&[], 200, &[("expires", "0")]), Ok(()));
}

#[test]
fn no_cache_is_storable_only_with_a_validator() {
    assert_eq!(
        storable(
            &[],
            200,
            &[("cache-control", "no-cache"), ("etag", "\"v1\"")]
        ),
        Ok(())
    );
    assert_eq!(
        storable(
            &[],
            200,
            &[("cache-control", "no-cache"), ("last-modified", &date(0))]
        ),
        Ok(())
    );
    assert_eq!(
        storable_with(
            &[],
            200,
            &[("cache-control", "no-cache, max-age=60")],
            &with_default_ttl(60)
        ),
        Err(NotStorable::NoFreshness)
    );
}

#[test]
fn first_failing_rule_is_reported() {
    let resp = [
        ("cache-control", "private, no-store"),
        ("set-cookie", "a=b"),
        ("vary", "*"),
    ];
    assert_eq!(storable(&[], 200, &resp), Err(NotStorable::NoStore));
}

#[test]
fn reasons_have_stable_tokens() {
    let tokens: Vec<&str> = <NotStorable as strum::IntoEnumIterator>::iter()
        .map(|r| r.as_str())
        .collect();
    assert_eq!(
        tokens,
        [
            "method",
            "status",
            "no-store",
            "private",
            "authorization",
            "set-cookie",
            "vary-star",
            "no-freshness"
        ]
    );
}

// --- Freshness lifetime ---

fn lifetime(resp: &[(&str, &str)], opts: &RuleOptions) -> Duration {
    let resp = headers(resp);
    freshness_lifetime(&resp, &CacheControl::parse(&resp), at(0), opts)
}

#[test]
fn s_maxage_beats_max_age_beats_expires() {
    let expires = date(3600);
    let base = [("date", &*date(0)), ("expires", &*expires)];
    let all = [
        base[0],
        base[1],
        ("cache-control", "max-age=60, s-maxage=600"),
    ];
    assert_eq!(lifetime(&all, &no_default()), secs(600));
    let no_s_maxage = [base[0], base[1], ("cache-control", "max-age=60")];
    assert_eq!(lifetime(&no_s_maxage, &no_default()), secs(60));
    assert_eq!(lifetime(&base, &no_default()), secs(3600));
}

#[test]
fn expires_is_measured_from_date_not_receipt() {
    let resp = [("date", &*date(0)), ("expires", &*date(300))];
    assert_eq!(lifetime(&resp, &no_default()), secs(300));
    // Origin clock 100 s behind ours: lifetime still Expires - Date.
    let resp = headers(&[("date", &date(100)), ("expires", &date(400))]);
    let lifetime = freshness_lifetime(&resp, &CacheControl::default(), at(0), &no_default());
    assert_eq!(lifetime, secs(300));
}

#[test]
fn expires_without_date_uses_response_time() {
    assert_eq!(
        lifetime(&[("expires", &date(120))], &no_default()),
        secs(120)
    );
    assert_eq!(
        lifetime(
            &[("expires", &date(120)), ("date", "garbage")],
            &no_default()
        ),
        secs(120)
    );
}

#[test]
fn expires_in_the_past_or_invalid_is_zero() {
    let opts = with_default_ttl(60);
    assert_eq!(
        lifetime(&[("date", &date(500)), ("expires", &date(100))], &opts),
        Duration::ZERO
    );
    assert_eq!(lifetime(&[("expires", "0")], &opts), Duration::ZERO);
    assert_eq!(lifetime(&[("expires", "-1")], &opts), Duration::ZERO);
    assert_eq!(
        lifetime(&[("expires", &date(100)), ("expires", &date(200))], &opts),
        Duration::ZERO
    );
}

#[test]
fn default_ttl_only_when_origin_is_silent() {
    let opts = with_default_ttl(60);
    assert_eq!(lifetime(&[("content-type", "text/plain")], &opts), secs(60));
    assert_eq!(
        lifetime(&[("cache-control", "max-age=0")], &opts),
        Duration::ZERO
    );
    assert_eq!(lifetime(&[("cache-control", "max-age=5")], &opts), secs(5));
    assert_eq!(lifetime(&[("cache-control", "public")], &opts), secs(60));
    assert_eq!(lifetime(&[], &no_default()), Duration::ZERO);
}

#[test]
fn no_cache_response_has_zero_freshness() {
    assert_eq!(
        lifetime(
            &[("cache-control", "no-cache, max-age=600")],
            &with_default_ttl(60)
        ),
        Duration::ZERO
    );
}

// --- Initial age ---

#[test]
fn age_is_response_delay_without_date_or_age() {
    assert_eq!(initial_age(&HeaderMap::new(), at(10), at(12)), secs(2));
}

#[test]
fn apparent_age_from_date() {
    let resp = headers(&[("date", &date(0))]);
    assert_eq!(initial_age(&resp, at(29), at(30)), secs(30));
}

#[test]
fn age_header_plus_delay_can_dominate() {
    let resp = headers(&[("date", &date(100)), ("age", "50")]);
    // apparent = 2, corrected_age_value = 50 + 2
    assert_eq!(initial_age(&resp, at(100), at(102)), secs(52));
}

#[test]
fn origin_clock_ahead_gives_zero_apparent_age() {
    let resp = headers(&[("date", &date(1000)), ("age", "7")]);
    assert_eq!(initial_age(&resp, at(0), at(1)), secs(8));
    let resp = headers(&[("date", &date(1000))]);
    assert_eq!(initial_age(&resp, at(0), at(0)), Duration::ZERO);
}

#[test]
fn garbled_or_huge_age_header() {
    for bad in ["abc", "-5", "1.5", ""] {
        let resp = headers(&[("age", bad)]);
        assert_eq!(initial_age(&resp, at(0), at(0)), Duration::ZERO, "{bad:?}");
    }
    let resp = headers(&[("age", "99999999999999999999999")]);
    assert_eq!(initial_age(&resp, at(0), at(0)), secs(MAX_DELTA_SECONDS));
}

#[test]
fn of_an_age_list_or_repeated_ages_the_first_counts() {
    // RFC 9111 §5.1: a list (or repeated lines) is invalid; the first value is used.
    let resp = headers(&[("age", "7200, 0")]);
    assert_eq!(initial_age(&resp, at(0), at(0)), secs(7200));
    let resp = headers(&[("age", "7200"), ("age", "0")]);
    assert_eq!(initial_age(&resp, at(0), at(0)), secs(7200));
}

#[test]
fn clocks_running_backwards_do_not_panic() {
    let resp = headers(&[("date", "not a date"), ("age", "3")]);
    assert_eq!(initial_age(&resp, at(10), at(5)), secs(3));
}

// --- Stale windows ---

#[test]
fn stale_windows_come_from_directives() {
    let windows = stale_windows(
        &cc("max-age=60, stale-while-revalidate=30, stale-if-error=86400"),
        &no_default(),
    );
    assert_eq!(
        windows,
        StaleWindows {
            while_revalidate: secs(30),
            if_error: secs(86400)
        }
    );
    assert_eq!(
        stale_windows(&cc("max-age=60"), &no_default()),
        StaleWindows::default()
    );
}

#[test]
fn the_configured_stale_if_error_window_widens_the_origins() {
    let opts = RuleOptions {
        stale_if_error: secs(300),
        ..RuleOptions::default()
    };
    let window = |value| stale_windows(&cc(value), &opts).if_error;
    assert_eq!(window("max-age=60"), secs(300));
    assert_eq!(window("max-age=60, stale-if-error=900"), secs(900));
    for forbidden in [
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "no-cache",
    ] {
        assert_eq!(window(forbidden), Duration::ZERO, "{forbidden}");
    }
}

#[test]
fn revalidation_directives_disable_stale() {
    for value in [
        "max-age=60, must-revalidate, stale-if-error=600",
        "max-age=60, proxy-revalidate, stale-while-revalidate=600",
        "s-maxage=60, stale-while-revalidate=600, stale-if-error=600",
        "no-cache, stale-if-error=600",
    ] {
        assert_eq!(
            stale_windows(&cc(value), &no_default()),
            StaleWindows::default(),
            "{value}"
        );
    }
}

// --- Vary ---

#[test]
fn vary_absent_or_empty_is_none() {
    assert_eq!(vary(&HeaderMap::new()), Vary::None);
    assert_eq!(vary(&headers(&[("vary", "")])), Vary::None);
    assert_eq!(vary(&headers(&[("vary", " , ")])), Vary::None);
}

#[test]
fn vary_is_normalised() {
    let a = vary(&headers(&[("vary", "Accept-Encoding, accept-language")]));
    let b = vary(&headers(&[("vary", "Accept-Language,Accept-Encoding")]));
    let c = vary(&headers(&[
        ("vary", "accept-language"),
        ("vary", "ACCEPT-ENCODING, Accept-Language"),
    ]));
    let expected = Vary::Headers(vec![header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE]);
    assert_eq!(a, expected);
    assert_eq!(b, expected);
    assert_eq!(c, expected);
}

#[test]
fn vary_star_or_invalid_name_is_star() {
    assert_eq!(
        vary(&headers(&[("vary", "accept-encoding, *")])),
        Vary::Star
    );
    assert_eq!(vary(&headers(&[("vary", "accept encoding")])), Vary::Star);
    let mut map = HeaderMap::new();
    map.append(
        header::VARY,
        HeaderValue::from_bytes(b"accept-\xe9ncoding").unwrap(),
    );
    assert_eq!(vary(&map), Vary::Star);
}

// --- Vary fingerprint ---

fn fingerprint(names: &[HeaderName], req: &[(&str, &str)]) -> u64 {
    vary_fingerprint(names, &headers(req))
}

#[test]
fn fingerprint_ignores_whitespace_around_commas_and_line_splits() {
    let names = [header::ACCEPT_ENCODING];
    let a = fingerprint(&names, &[("accept-encoding", "gzip, br")]);
    assert_eq!(a, fingerprint(&names, &[("accept-encoding", "gzip,br")]));
    assert_eq!(
        a,
        fingerprint(&names, &[("accept-encoding", "  gzip ,\tbr ")])
    );
    assert_eq!(
        a,
        fingerprint(
            &names,
            &[("accept-encoding", "gzip"), ("accept-encoding", "br")]
        )
    );
    // Order matters in general (it does not for Accept-Encoding: see below).
    let names = [header::ACCEPT];
    let a = fingerprint(&names, &[("accept", "text/html, application/json")]);
    assert_ne!(
        a,
        fingerprint(&names, &[("accept", "application/json, text/html")])
    );
}

#[test]
fn fingerprint_distinguishes_absent_from_empty() {
    let names = [header::ACCEPT_LANGUAGE];
    let absent = fingerprint(&names, &[]);
    let empty = fingerprint(&names, &[("accept-language", "")]);
    assert_ne!(absent, empty);
}

#[test]
fn fingerprint_depends_only_on_named_headers() {
    let names = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];
    let base = fingerprint(
        &names,
        &[("accept-encoding", "gzip"), ("accept-language", "en")],
    );
    assert_eq!(
        base,
        fingerprint(
            &names,
            &[
                ("accept-language", "en"),
                ("accept-encoding", "gzip"),
                ("user-agent", "x")
            ]
        )
    );
    assert_ne!(
        base,
        fingerprint(
            &names,
            &[("accept-encoding", "gzip"), ("accept-language", "de")]
        )
    );
    // Values must not bleed between names.
    assert_ne!(
        fingerprint(&names, &[("accept-encoding", "gzip, en")]),
        fingerprint(
            &names,
            &[("accept-encoding", "gzip"), ("accept-language", "en")]
        )
    );
    let reversed = [header::ACCEPT_LANGUAGE, header::ACCEPT_ENCODING];
    assert_eq!(
        base,
        fingerprint(
            &reversed,
            &[("accept-encoding", "gzip"), ("accept-language", "en")]
        )
    );
}

#[test]
fn fingerprint_is_a_fixed_function() {
    // Stable across runs and processes (shared keys across replicas depend on it).
    assert_eq!(fingerprint(&[], &[]), fingerprint(&[], &[("accept", "x")]));
    let names = [header::ACCEPT_ENCODING];
    assert_eq!(
        fingerprint(&names, &[("accept-encoding", "gzip")]),
        fingerprint(&names, &[("accept-encoding", "gzip")])
    );
}

// --- Client conditional requests ---

fn client_match(req: &[(&str, &str)], stored: &[(&str, &str)]) -> bool {
    client_validators_match(&headers(req), &headers(stored))
}

#[test]
fn if_none_match_strong_tag() {
    let stored = [("etag", "\"abc\"")];
    assert!(client_match(&[("if-none-match", "\"abc\"")], &stored));
    assert!(!client_match(&[("if-none-match", "\"abd\"")], &stored));
    assert!(!client_match(&[("if-none-match", "\"ABC\"")], &stored));
}

#[test]
fn if_none_match_uses_weak_comparison() {
    assert!(client_match(
        &[("if-none-match", "W/\"abc\"")],
        &[("etag", "\"abc\"")]
    ));
    assert!(client_match(
        &[("if-none-match", "\"abc\"")],
        &[("etag", "W/\"abc\"")]
    ));
    assert!(client_match(
        &[("if-none-match", "W/\"abc\"")],
        &[("etag", "W/\"abc\"")]
    ));
}

#[test]
fn if_none_match_list_across_lines_and_commas_in_tags() {
    let stored = [("etag", "\"a,b\"")];
    assert!(client_match(
        &[("if-none-match", "\"x\", W/\"y\" ,\"a,b\"")],
        &stored
    ));
    assert!(client_match(
        &[("if-none-match", "\"x\""), ("if-none-match", "\"a,b\"")],
        &stored
    ));
    assert!(!client_match(&[("if-none-match", "\"a\", \"b\"")], &stored));
}

#[test]
fn if_none_match_star_matches_any_stored_response() {
    assert!(client_match(
        &[("if-none-match", "*")],
        &[("etag", "\"v9\"")]
    ));
    assert!(client_match(&[("if-none-match", " * ")], &[]));
    assert!(!client_match(
        &[("if-none-match", "*, \"v9\"")],
        &[("etag", "\"v9\"")]
    ));
}

#[test]
fn if_none_match_mismatch_ignores_if_modified_since() {
    let stored = [("etag", "\"new\""), ("last-modified", &*date(0))];
    let req = [
        ("if-none-match", "\"old\""),
        ("if-modified-since", &*date(100)),
    ];
    assert!(!client_match(&req, &stored));
}

#[test]
fn garbled_if_none_match_or_stored_etag_never_matches() {
    let stored = [("etag", "\"abc\"")];
    for bad in ["abc", "\"abc", "W/abc", "\"abc\" junk", "w/\"abc\""] {
        assert!(!client_match(&[("if-none-match", bad)], &stored), "{bad}");
    }
    assert!(!client_match(
        &[("if-none-match", "\"abc\"")],
        &[("etag", "abc")]
    ));
    assert!(!client_match(&[("if-none-match", "\"abc\"")], &[]));
    assert!(!client_match(
        &[("if-none-match", "\"abc\"")],
        &[("etag", "\"abc\""), ("etag", "\"abc\"")]
    ));
}

#[test]
fn if_modified_since_against_last_modified() {
    let stored = [("last-modified", &*date(100)), ("date", &*date(500))];
    assert!(client_match(&[("if-modified-since", &date(100))], &stored));
    assert!(client_match(&[("if-modified-since", &date(200))], &stored));
    assert!(!client_match(&[("if-modified-since", &date(99))], &stored));
}

#[test]
fn if_modified_since_falls_back_to_date() {
    let stored = [("date", &*date(500))];
    assert!(client_match(&[("if-modified-since", &date(600))], &stored));
    assert!(!client_match(&[("if-modified-since", &date(400))], &stored));
    assert!(!client_match(&[("if-modified-since", &date(400))], &[]));
}

#[test]
fn garbled_dates_never_match() {
    let stored = [("last-modified", &*date(100))];
    assert!(!client_match(
        &[("if-modified-since", "yesterday")],
        &stored
    ));
    assert!(!client_match(
        &[("if-modified-since", &date(200))],
        &[("last-modified", "0")]
    ));
    assert!(!client_match(
        &[
            ("if-modified-since", &date(200)),
            ("if-modified-since", &date(300))
        ],
        &stored
    ));
    assert!(!client_match(&[], &stored));
}

// --- Revalidation with the origin ---

#[test]
fn revalidation_sends_both_validators() {
    let lm = date(0);
    let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", &lm)]);
    let sent = revalidation_headers(&stored);
    assert_eq!(
        sent,
        vec![
            (header::IF_NONE_MATCH, HeaderValue::from_static("W/\"v1\"")),
            (
                header::IF_MODIFIED_SINCE,
                HeaderValue::from_str(&lm).unwrap()
            ),
        ]
    );
}

#[test]
fn revalidation_without_validators_is_empty() {
    assert!(revalidation_headers(&headers(&[("date", &date(0))])).is_empty());
}

#[test]
fn revalidation_skips_unusable_validators() {
    let stored = headers(&[("etag", "*"), ("last-modified", "last tuesday")]);
    assert!(revalidation_headers(&stored).is_empty());
    let stored = headers(&[("etag", "\"a\", \"b\"")]);
    assert!(revalidation_headers(&stored).is_empty());
}

// --- Freshening with 304 ---

#[test]
fn not_modified_replaces_headers_but_keeps_framing() {
    let mut stored = headers(&[
        ("content-length", "1234"),
        ("content-encoding", "gzip"),
        ("content-type", "text/html"),
        ("etag", "\"v1\""),
        ("cache-control", "max-age=60"),
        ("date", &date(0)),
    ]);
    let not_modified = headers(&[
        ("content-length", "0"),
        ("content-encoding", "identity"),
        ("etag", "\"v1\""),
        ("cache-control", "max-age=120"),
        ("date", &date(500)),
    ]);
    merge_not_modified(&mut stored, &not_modified);
    assert_eq!(stored["content-length"], "1234");
    assert_eq!(stored["content-encoding"], "gzip");
    assert_eq!(stored["content-type"], "text/html");
    assert_eq!(stored["cache-control"], "max-age=120");
    assert_eq!(stored["date"], date(500).as_str());
}

#[test]
fn not_modified_replaces_all_instances() {
    let mut stored = headers(&[
        ("cache-control", "max-age=60"),
        ("cache-control", "public"),
        ("x-a", "1"),
    ]);
    let not_modified = headers(&[
        ("cache-control", "no-cache"),
        ("cache-control", "stale-if-error=5"),
    ]);
    merge_not_modified(&mut stored, &not_modified);
    let values: Vec<&str> = stored
        .get_all("cache-control")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values, ["no-cache", "stale-if-error=5"]);
    assert_eq!(stored["x-a"], "1");
}

#[test]
fn not_modified_ignores_hop_by_hop_headers() {
    let mut stored = headers(&[("x-trace", "stored"), ("etag", "\"v1\"")]);
    let not_modified = headers(&[
        ("connection", "keep-alive, X-Trace"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("proxy-authenticate", "Basic"),
        ("upgrade", "h2c"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("content-range", "bytes 0-1/2"),
        ("x-trace", "from-304"),
        ("etag", "\"v1\""),
    ]);
    merge_not_modified(&mut stored, &not_modified);
    assert_eq!(stored["x-trace"], "stored");
    for name in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "proxy-authenticate",
        "upgrade",
        "te",
        "trailer",
        "content-range",
    ] {
        assert!(!stored.contains_key(name), "{name}");
    }
}

// --- Client request directives ---

#[test]
fn request_no_cache_or_max_age_zero_forces_revalidation() {
    assert!(request_requires_revalidation(
        &cc("no-cache"),
        Duration::ZERO,
        secs(600)
    ));
    assert!(request_requires_revalidation(
        &cc("max-age=0"),
        Duration::ZERO,
        secs(600)
    ));
    let pragma = request_cache_control(&headers(&[("pragma", "no-cache")]));
    assert!(request_requires_revalidation(&pragma, secs(1), secs(600)));
}

#[test]
fn request_max_age_compares_with_current_age() {
    assert!(!request_requires_revalidation(
        &cc("max-age=30"),
        secs(30),
        secs(600)
    ));
    assert!(request_requires_revalidation(
        &cc("max-age=30"),
        secs(31),
        secs(600)
    ));
    // Malformed max-age reads as 0: revalidate.
    assert!(request_requires_revalidation(
        &cc("max-age=soon"),
        secs(1),
        secs(600)
    ));
}

#[test]
fn request_min_fresh_needs_remaining_freshness() {
    assert!(!request_requires_revalidation(
        &cc("min-fresh=100"),
        secs(500),
        secs(600)
    ));
    assert!(request_requires_revalidation(
        &cc("min-fresh=101"),
        secs(500),
        secs(600)
    ));
    assert!(request_requires_revalidation(
        &cc("min-fresh=1"),
        secs(700),
        secs(600)
    ));
    assert!(!request_requires_revalidation(
        &cc("min-fresh=0"),
        secs(700),
        secs(600)
    ));
}

#[test]
fn request_without_directives_accepts_fresh_entry() {
    let none = CacheControl::default();
    assert!(!request_requires_revalidation(&none, secs(10), secs(60)));
    assert!(!request_requires_revalidation(
        &cc("max-stale, only-if-cached"),
        secs(10),
        secs(60)
    ));
}

#[test]
fn not_modified_never_merges_set_cookie_into_the_stored_response() {
    let mut stored = headers(&[("etag", "\"v1\""), ("cache-control", "max-age=0")]);
    let not_modified = headers(&[
        ("etag", "\"v1\""),
        ("set-cookie", "session=A-SECRET"),
        ("cache-control", "max-age=60"),
    ]);
    merge_not_modified(&mut stored, &not_modified);
    assert!(!stored.contains_key("set-cookie"));
    assert_eq!(stored["cache-control"], "max-age=60");

    // A stored cookie (cache_set_cookie on) is not replaced by one client's either.
    let mut stored = headers(&[("set-cookie", "shared=1")]);
    merge_not_modified(&mut stored, &headers(&[("set-cookie", "session=B")]));
    assert_eq!(stored["set-cookie"], "shared=1");
}

#[test]
fn expires_in_all_three_date_formats_and_any_case() {
    // RFC 9110 §5.6.7: IMF-fixdate, obsolete RFC 850 and asctime.
    let date_value = "Sun, 06 Nov 1994 08:49:37 GMT";
    for expires in [
        "Sun, 06 Nov 1994 08:50:37 GMT",
        "Sunday, 06-Nov-94 08:50:37 GMT",
        "Sun Nov  6 08:50:37 1994",
        "sun, 06 nov 1994 08:50:37 gmt",
        "SUNDAY, 06-NOV-94 08:50:37 GMT",
        "SUN NOV  6 08:50:37 1994",
    ] {
        let resp = headers(&[("date", date_value), ("expires", expires)]);
        let lifetime = freshness_lifetime(
            &resp,
            &CacheControl::parse(&resp),
            at(0),
            &RuleOptions::default(),
        );
        assert_eq!(lifetime, secs(60), "{expires}");
    }
    for invalid in ["0", "-1", "tomorrow", "Sun, 32 Nov 1994 08:50:37 GMT"] {
        let resp = headers(&[("date", date_value), ("expires", invalid)]);
        let cc = CacheControl::parse(&resp);
        let opts = RuleOptions {
            default_ttl: Some(secs(600)),
            ..RuleOptions::default()
        };
        assert_eq!(
            freshness_lifetime(&resp, &cc, at(0), &opts),
            Duration::ZERO,
            "{invalid}: already expired"
        );
    }
}

#[test]
fn negotiation_fields_vary_by_meaning_not_spelling() {
    let fp = |name: &str, value: &str| {
        let names = [HeaderName::from_bytes(name.as_bytes()).unwrap()];
        vary_fingerprint(&names, &headers(&[(name, value)]))
    };
    // RFC 9110 §12.5.4: language tags are case-insensitive.
    assert_eq!(
        fp("accept-language", "en-US"),
        fp("accept-language", "en-us")
    );
    assert_eq!(
        fp("accept-language", "fr;q=0.8, EN"),
        fp("accept-language", "fr ; q=0.8,en")
    );
    assert_ne!(fp("accept-language", "en"), fp("accept-language", "fr"));
    // Accept-Encoding: case, whitespace and order carry no meaning.
    assert_eq!(
        fp("accept-encoding", "gzip, br"),
        fp("accept-encoding", "BR,gzip")
    );
    assert_ne!(fp("accept-encoding", "gzip"), fp("accept-encoding", "br"));
    // Other fields are compared as sent.
    assert_ne!(fp("x-tenant", "A"), fp("x-tenant", "a"));
}

#[test]
fn a_targeted_field_replaces_cache_control_and_expires() {
    let targets: Arc<[HeaderName]> = [
        HeaderName::from_static("cdn-cache-control"),
        HeaderName::from_static("ringside-cache-control"),
    ]
    .into();
    let opts = RuleOptions {
        targeted: targets.clone(),
        ..RuleOptions::default()
    };
    let resp = [
        ("cache-control", "no-store"),
        ("expires", "0"),
        ("ringside-cache-control", "max-age=60"),
    ];
    assert_eq!(storable_with(&[], 200, &resp, &opts), Ok(()));
    assert_eq!(
        storable(&[], 200, &resp),
        Err(NotStorable::NoStore),
        "not targeted"
    );
    let resp = headers(&resp);
    let judged = targeted(&resp, &targets);
    assert_eq!(judged["cache-control"], "max-age=60");
    assert!(!judged.contains_key("expires"));
    // The first field in the cache's order wins; one that is no valid
    // Structured Field is ignored (more in targeted.rs).
    let both = [
        ("ringside-cache-control", "no-store"),
        ("cdn-cache-control", "max-age=5"),
    ];
    assert_eq!(
        targeted(&headers(&both), &targets)["cache-control"],
        "max-age=5"
    );
    let invalid = [
        ("cache-control", "max-age=9"),
        ("cdn-cache-control", "Max-Age=60"),
    ];
    assert_eq!(
        targeted(&headers(&invalid), &targets)["cache-control"],
        "max-age=9"
    );
}
