//! Property tests: the parsers that read what clients and origins send
//! (request paths, Cache-Control, Age, Expires/Date, Vary, Range/If-Range)
//! run on 100,000 generated inputs each without panicking, path
//! normalisation is idempotent and leaves no dot segment or `//` behind, and
//! a selected byte range always lies within the representation.
//!
//! Inputs are drawn from small alphabets of the bytes that matter to each
//! parser (separators, digits, `%`, quotes, directive names...), so that
//! the cases hit the interesting branches instead of random noise.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use ringside::cache_rules::{self, CacheControl, RuleOptions, Vary};
use ringside::normalize::{normalize_path, normalize_target};
use ringside::range::{self, Selection};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CASES: u32 = 100_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What paths are made of: the bytes and pieces that steer normalisation
/// (separators, dots, percent-encoding, parameters, a query, bytes that
/// must be encoded or refused), each meaningful by what surrounds it.
const PATH_PIECES: &[&[u8]] = &[
    b"/", b"//", b".", b"..", b"%", b"%2e", b"%2E", b"%2f", b"%5C", b"%73", b"%7e", b"%c3%a9",
    b"%0", b"%00", b"2", b"e", b"F", b";", b"..;", b"?", b"=", b"&", b"~", b"a", b"static", b" ",
    b"\\", b"\x00", b"\x7f", b"\xc3", b"#",
];

/// A sequence of pieces, drawn by index: one cheap strategy per case.
fn from_pieces(pieces: &'static [&'static [u8]], max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..pieces.len(), 0..max)
        .prop_map(move |picks| picks.iter().flat_map(|&i| pieces[i]).copied().collect())
}

fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), from_pieces(PATH_PIECES, 16)).prop_map(|(rooted, rest)| {
        let mut out = if rooted { b"/".to_vec() } else { Vec::new() };
        out.extend(rest);
        out
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn normalising_any_path_never_panics_and_is_idempotent(target in path_bytes()) {
        if let Ok(normal) = normalize_target(&target) {
            let again = normalize_target(normal.as_bytes());
            prop_assert!(
                matches!(again, Ok(Cow::Borrowed(n)) if n == normal),
                "not a fixed point: {target:?} -> {normal:?} -> {again:?}"
            );
            let path = normal.split('?').next().unwrap_or_default();
            prop_assert!(path.starts_with('/'), "{normal:?}");
            prop_assert!(!path.contains("//"), "{normal:?}");
            prop_assert!(
                !path.split('/').any(|s| s == "." || s == ".."),
                "dot segment left in {normal:?}"
            );
            prop_assert!(normal.is_ascii(), "{normal:?}");
            prop_assert!(normal.parse::<http::Uri>().is_ok(), "{normal:?} is not a URI");
        }
    }

    #[test]
    fn normalising_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        if let Ok(normal) = normalize_path(&bytes) {
            prop_assert!(matches!(normalize_path(normal.as_bytes()), Ok(Cow::Borrowed(_))));
        }
    }
}

/// What header values are made of: list and parameter syntax, digits,
/// quotes, directive names, dates, field names, and obs-text bytes.
const VALUE_PIECES: &[&[u8]] = &[
    b"0",
    b"1",
    b"7",
    b"9",
    b",",
    b";",
    b"=",
    b" ",
    b"\t",
    b"\"",
    b"-",
    b"a",
    b"x",
    b"\x80",
    b"\xff",
    b"max-age",
    b"s-maxage",
    b"no-cache",
    b"no-store",
    b"private",
    b"public",
    b"must-revalidate",
    b"proxy-revalidate",
    b"only-if-cached",
    b"stale-while-revalidate",
    b"stale-if-error",
    b"min-fresh",
    b"max-stale",
    b"99999999999999999999",
    b"-1",
    b"Sun, 06 Nov 1994 08:49:37 GMT",
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    b"GMT",
    b"*",
    b"Accept-Encoding",
    b"accept-encoding",
    b"X-V",
    b"Accept-Language",
];

fn header_value() -> impl Strategy<Value = HeaderValue> {
    from_pieces(VALUE_PIECES, 10)
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("only valid header bytes"))
}

/// Up to three lines of `name`.
fn headers(names: &'static [&'static str]) -> impl Strategy<Value = HeaderMap> {
    let line = (prop::sample::select(names), header_value());
    prop::collection::vec(line, 0..4).prop_map(|lines| {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(HeaderName::from_static(name), value);
        }
        map
    })
}

fn instant() -> impl Strategy<Value = SystemTime> {
    (0u64..1 << 40).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cache_control_parses_anything(h in headers(&["cache-control", "pragma"])) {
        let cc = CacheControl::parse(&h);
        let request = cache_rules::request_cache_control(&h);
        // The request view only adds Pragma's no-cache.
        prop_assert_eq!(CacheControl { no_cache: cc.no_cache, ..request }, cc.clone());
        let _ = cache_rules::stale_windows(&cc, &RuleOptions::default());
        let _ = cache_rules::request_requires_revalidation(&cc, Duration::from_secs(5), Duration::from_secs(10));
    }

    #[test]
    fn age_parses_anything(
        h in headers(&["age", "date"]),
        requested in instant(),
        received in instant(),
    ) {
        let age = cache_rules::initial_age(&h, requested, received);
        // Age never goes below what the response said it was, when it said it once, validly.
        if let (Some(v), 1) = (h.get("age"), h.get_all("age").iter().count()) {
            if let Ok(seconds) = std::str::from_utf8(v.as_bytes()).unwrap_or("x").trim().parse::<u32>() {
                prop_assert!(age >= Duration::from_secs(u64::from(seconds)));
            }
        }
    }

    #[test]
    fn freshness_parses_anything(
        h in headers(&["cache-control", "expires", "date"]),
        received in instant(),
        ttl in prop::option::of(0u64..1 << 32),
    ) {
        let cc = CacheControl::parse(&h);
        let opts = RuleOptions { default_ttl: ttl.map(Duration::from_secs), ..RuleOptions::default() };
        let lifetime = cache_rules::freshness_lifetime(&h, &cc, received, &opts);
        if cc.no_cache {
            prop_assert_eq!(lifetime, Duration::ZERO);
        }
    }

    #[test]
    fn vary_parses_anything_into_a_canonical_form(
        resp in headers(&["vary"]),
        req in headers(&["accept-encoding", "accept-language", "x-v"]),
    ) {
        match cache_rules::vary(&resp) {
            Vary::Headers(names) => {
                prop_assert!(!names.is_empty());
                prop_assert!(names.windows(2).all(|w| w[0].as_str() < w[1].as_str()), "{names:?}");
                let fingerprint = cache_rules::vary_fingerprint(&names, &req);
                let reversed: Vec<HeaderName> = names.iter().rev().cloned().collect();
                prop_assert_eq!(fingerprint, cache_rules::vary_fingerprint(&reversed, &req));
            }
            Vary::None | Vary::Star => {}
        }
    }
}

/// What `Range` values are made of: units, separators, digits (some past
/// `u64`), suffixes, blanks, and bytes that have no place there.
const RANGE_PIECES: &[&[u8]] = &[
    b"bytes",
    b"BYTES",
    b"items",
    b"=",
    b"-",
    b",",
    b" ",
    b"\t",
    b"0",
    b"1",
    b"9",
    b"99",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"x",
    b";",
    b"\"",
    b"\x80",
    b"bytes=",
    b"bytes=0-",
];

/// A representation length: small ones (where the edges are), or any.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..300, any::<u64>()]
}

fn within(selection: Selection, len: u64) -> Result<(), TestCaseError> {
    if let Selection::Part(part) = selection {
        prop_assert!(
            part.first <= part.last && part.last < len,
            "{part:?} of {len}"
        );
        prop_assert!(part.length() <= len);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn range_parses_anything_and_selects_within_the_representation(
        value in from_pieces(RANGE_PIECES, 12),
        len in length(),
    ) {
        if let Some(specs) = range::parse(&value) {
            prop_assert!(!specs.is_empty());
            within(range::select(&specs, len), len)?;
        }
    }

    #[test]
    fn range_plans_any_request_and_response(
        range_value in prop::option::of(from_pieces(RANGE_PIECES, 12)),
        mut req in headers(&["if-range"]),
        resp in headers(&["etag", "last-modified", "date"]),
        len in length(),
    ) {
        if let Some(value) = range_value {
            req.append("range", HeaderValue::from_bytes(&value).expect("valid header bytes"));
        }
        within(range::plan(&req, http::StatusCode::OK, &resp, len), len)?;
        let _ = cache_rules::if_range_matches(&req, &resp);
    }
}

/// A JSON value of a few levels: objects with keys from a small set (so
/// that orders collide), arrays, strings with escapes, numbers.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-c\"\\\\\u{e9} ]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-d]{1,2}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The same object written with its members in another order and spaces
/// between the tokens.
fn reordered(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(members) => {
            let mut written: Vec<String> = members
                .iter()
                .map(|(k, v)| format!(" {} :\n{} ", Value::String(k.clone()), reordered(v)))
                .collect();
            written.reverse();
            format!("{{ {} }}", written.join(" , "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(reordered).collect();
            format!("[ {} ]", items.join(" ,\t"))
        }
        other => other.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..config() })]

    #[test]
    fn canonical_json_is_idempotent_and_blind_to_member_order(value in json_value()) {
        let compact = serde_json::to_vec(&value).unwrap();
        let canonical = ringside::json::canonical(&compact).expect("JSON");
        prop_assert_eq!(ringside::json::canonical(&canonical), Some(canonical.clone()));
        let other = ringside::json::canonical(reordered(&value).as_bytes()).expect("JSON");
        prop_assert_eq!(other, canonical);
    }

    #[test]
    fn canonical_json_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = ringside::json::canonical(&bytes);
    }
}
