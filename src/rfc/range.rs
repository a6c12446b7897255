//! Byte ranges (RFC 9110 §14) as pure functions: reading a request's
//! `Range` field and choosing which part of a complete `200` answers it.
//!
//! ringside stores complete responses only and answers range requests from
//! them (`proxy/respond.rs` writes the 206 or 416). What this module decides:
//!
//! - **Which requests**: a GET whose `Range` is one well-formed
//!   `bytes=` ranges-specifier, for a response that would be a `200`
//!   (RFC 9110 §14.2). Anything else, an unknown unit, a malformed or
//!   repeated field, HEAD, gets the whole response, as §14.2 lets a server
//!   ignore what it does not support. An `If-Range` that does not match the
//!   response (strong comparison, RFC 9110 §13.1.5, see
//!   [`cache_rules::if_range_matches`]) also gets the whole response.
//! - **Which bytes**: each `first-last`, `first-` or `-suffix` is clamped to
//!   the representation; ranges that start past its end (or `-0`) are left
//!   out. None left: unsatisfiable (416, `Content-Range: bytes */len`).
//!   Overlapping or adjacent ranges are coalesced (§15.3.7 allows it).
//! - **Several ranges** that stay apart after coalescing are several parts,
//!   sent as `multipart/byteranges` (§14.6, `byteranges.rs`), in ascending
//!   order (§15.3.7.2 lets a server reorder them; coalescing already does).
//!   More than [`MAX_PARTS`] apart get the whole `200` instead (§14.2 lets a
//!   server ignore such a `Range`): many tiny ranges would make the answer
//!   mostly part headers, an amplification vector (§17.15).
//!
//! Nothing here panics on hostile input: numbers too large for a `u64`
//! saturate (a position that large is past any representation's end).

use crate::rfc::cache_rules;
use http::header::{self, HeaderMap};
use http::StatusCode;

/// An inclusive byte range within a representation: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    /// The number of bytes in the range (never zero).
    pub fn length(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The `Content-Range` value of this part of a `complete`-byte representation.
    pub fn content_range(&self, complete: u64) -> String {
        format!("bytes {}-{}/{complete}", self.first, self.last)
    }
}

/// The `Content-Range` value of a 416 for a `complete`-byte representation.
pub fn unsatisfied_range(complete: u64) -> String {
    format!("bytes */{complete}")
}

/// One range-spec as the client wrote it (RFC 9110 §14.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-` or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

/// What answers a range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The whole response, as if there were no `Range`.
    Whole,
    /// A `206` with this one part.
    Part(ByteRange),
    /// A `206` with these parts (at least two, ascending, apart), as
    /// `multipart/byteranges`.
    Parts(Vec<ByteRange>),
    /// A `416`: no requested range overlaps the representation.
    Unsatisfiable,
}

/// Parse a `Range` field value: `bytes=` (unit in any case) and a list of
/// range-specs, blanks around the list's elements allowed. `None` when it
/// is not a well-formed byte-ranges-specifier (unknown unit, no range, a
/// `last` before its `first`, anything else): then the field is ignored.
pub fn parse(value: &[u8]) -> Option<Vec<RangeSpec>> {
    let eq = value.iter().position(|&b| b == b'=')?;
    let (unit, set) = (&value[..eq], &value[eq + 1..]);
    if !unit.trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for element in set.split(|&b| b == b',') {
        let element = element.trim_ascii();
        if element.is_empty() {
            continue; // #rule: empty list elements do not count
        }
        specs.push(parse_spec(element)?);
    }
    (!specs.is_empty()).then_some(specs)
}

/// One range-spec: `first-`, `first-last` or `-suffix`, digits only.
fn parse_spec(spec: &[u8]) -> Option<RangeSpec> {
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.is_empty() {
        return Some(RangeSpec::Suffix(number(last)?));
    }
    let first = number(first)?;
    let last = match last.is_empty() {
        true => None,
        false => Some(number(last)?),
    };
    match last {
        Some(last) if last < first => None,
        _ => Some(RangeSpec::From { first, last }),
    }
}

/// `1*DIGIT`, saturating at `u64::MAX`.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// At most this many parts are sent as `multipart/byteranges`; a `Range`
/// that stays in more pieces after coalescing gets the whole response.
pub const MAX_PARTS: usize = 16;

/// The part(s) of a `len`-byte representation that answer `specs`:
/// satisfiable ranges clamped, sorted and coalesced where they overlap or
/// touch.
pub fn select(specs: &[RangeSpec], len: u64) -> Selection {
    let mut ranges: Vec<ByteRange> = specs.iter().filter_map(|s| clamp(*s, len)).collect();
    ranges.sort_unstable_by_key(|r| r.first);
    let mut parts: Vec<ByteRange> = Vec::with_capacity(ranges.len().min(MAX_PARTS + 1));
    for range in ranges {
        let full = parts.len() == MAX_PARTS;
        match parts.last_mut() {
            Some(merged) if range.first <= merged.last.saturating_add(1) => {
                merged.last = merged.last.max(range.last);
            }
            _ if full => return Selection::Whole,
            _ => parts.push(range),
        }
    }
    match parts.len() {
        0 => Selection::Unsatisfiable,
        1 => Selection::Part(parts[0]),
        _ => Selection::Parts(parts),
    }
}

/// A range-spec within a `len`-byte representation, or `None` when it is
/// unsatisfiable there (RFC 9110 §14.1.1).
fn clamp(spec: RangeSpec, len: u64) -> Option<ByteRange> {
    let end = len.checked_sub(1)?;
    match spec {
        RangeSpec::From { first, last } if first <= end => Some(ByteRange {
            first,
            last: last.map_or(end, |l| l.min(end)),
        }),
        RangeSpec::Suffix(n) if n > 0 => Some(ByteRange {
            first: len.saturating_sub(n),
            last: end,
        }),
        _ => None,
    }
}

/// What answers a GET's `Range` from a response with `status` and
/// `resp_headers` whose complete body is `len` bytes (see the module
/// comment). The caller has checked the method and that a `Range` is there.
pub fn plan(
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    len: u64,
) -> Selection {
    if status != StatusCode::OK {
        return Selection::Whole;
    }
    let mut values = req_headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Selection::Whole;
    };
    if !cache_rules::if_range_matches(req_headers, resp_headers) {
        return Selection::Whole;
    }
    match parse(value.as_bytes()) {
        Some(specs) => select(&specs, len),
        None => Selection::Whole,
    }
}

/// A single-part `Content-Range` of a 206 (RFC 9110 §14.4): `bytes
/// first-last/complete`, the complete length known; None for anything
/// else (`*` length, an unsatisfied range, another unit, garbage).
pub fn parse_content_range(value: &[u8]) -> Option<(ByteRange, u64)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (unit, rest) = value.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, complete) = rest.trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let [first, last, complete] = [first, last, complete].map(|n| number(n.as_bytes()));
    let (first, last, complete) = (first?, last?, complete?);
    (first <= last && last < complete).then_some((ByteRange { first, last }, complete))
}

/// The one range a GET's `Range` asks of a `complete`-byte representation,
/// when `stored` (a part of it) holds all of it: a single field, one part
/// after coalescing, no `If-Range` (a part is never the answer to a
/// validator it might not match). None: the part cannot answer it.
pub fn within_part(req_headers: &HeaderMap, stored: ByteRange, complete: u64) -> Option<ByteRange> {
    if req_headers.contains_key(header::IF_RANGE) {
        return None;
    }
    let mut values = req_headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    match select(&parse(value.as_bytes())?, complete) {
        Selection::Part(asked) if stored.first <= asked.first && asked.last <= stored.last => {
            Some(asked)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn part(first: u64, last: u64) -> Selection {
        Selection::Part(ByteRange { first, last })
    }

    fn selected(value: &str, len: u64) -> Option<Selection> {
        parse(value.as_bytes()).map(|specs| select(&specs, len))
    }

    #[test]
    fn single_ranges_of_each_form_are_clamped_to_the_representation() {
        assert_eq!(selected("bytes=0-99", 1000), Some(part(0, 99)));
        assert_eq!(selected("bytes=100-", 1000), Some(part(100, 999)));
        assert_eq!(selected("bytes=-50", 1000), Some(part(950, 999)));
        assert_eq!(selected("bytes=990-5000", 1000), Some(part(990, 999)));
        assert_eq!(selected("bytes=-5000", 1000), Some(part(0, 999)));
        assert_eq!(selected("bytes=999-999", 1000), Some(part(999, 999)));
        assert_eq!(selected("BYTES = 0-0", 1), Some(part(0, 0)));
    }

    #[test]
    fn ranges_past_the_end_or_empty_suffixes_are_unsatisfiable() {
        assert_eq!(
            selected("bytes=1000-", 1000),
            Some(Selection::Unsatisfiable)
        );
        assert_eq!(selected("bytes=-0", 1000), Some(Selection::Unsatisfiable));
        assert_eq!(selected("bytes=0-", 0), Some(Selection::Unsatisfiable));
        assert_eq!(selected("bytes=-1", 0), Some(Selection::Unsatisfiable));
        let huge = "bytes=99999999999999999999999999-";
        assert_eq!(selected(huge, u64::MAX), Some(Selection::Unsatisfiable));
    }

    #[test]
    fn malformed_specifiers_are_ignored() {
        for value in [
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=",
            "bytes=, ,",
            "items=0-1",
            "bytes 0-1",
            "bytes=0-1-2",
            "bytes=+1-2",
            "bytes=0-1;x",
        ] {
            assert_eq!(parse(value.as_bytes()), None, "{value}");
        }
    }

    fn parts(ranges: &[(u64, u64)]) -> Selection {
        Selection::Parts(
            ranges
                .iter()
                .map(|&(first, last)| ByteRange { first, last })
                .collect(),
        )
    }

    #[test]
    fn several_ranges_coalesce_or_are_several_parts() {
        assert_eq!(selected("bytes=0-9, 5-19", 100), Some(part(0, 19)));
        assert_eq!(selected("bytes=10-19,0-9", 100), Some(part(0, 19)));
        assert_eq!(selected("bytes=0-9,,500-600", 100), Some(part(0, 9)));
        assert_eq!(
            selected("bytes=0-9,20-29", 100),
            Some(parts(&[(0, 9), (20, 29)]))
        );
        assert_eq!(
            selected("bytes=50-59,0-9,5-12,-1", 100),
            Some(parts(&[(0, 12), (50, 59), (99, 99)]))
        );
        assert_eq!(selected("bytes=0-0,-1", 1), Some(part(0, 0)));
    }

    #[test]
    fn more_parts_than_the_limit_get_the_whole_response() {
        let ranges = |n: u64| {
            let list: Vec<String> = (0..n).map(|i| format!("{}-{}", i * 2, i * 2)).collect();
            format!("bytes={}", list.join(","))
        };
        let limit = MAX_PARTS as u64;
        assert!(
            matches!(selected(&ranges(limit), 1000), Some(Selection::Parts(p)) if p.len() == MAX_PARTS)
        );
        assert_eq!(selected(&ranges(limit + 1), 1000), Some(Selection::Whole));
        // Touching ranges coalesce, so they never count against the limit.
        let touching: Vec<String> = (0..100).map(|i| format!("{i}-{i}")).collect();
        let touching = format!("bytes={}", touching.join(","));
        assert_eq!(selected(&touching, 1000), Some(part(0, 99)));
    }

    #[test]
    fn content_ranges_of_one_part_with_a_known_length() {
        let part = |first, last| ByteRange { first, last };
        assert_eq!(
            parse_content_range(b"bytes 0-9/100"),
            Some((part(0, 9), 100))
        );
        assert_eq!(
            parse_content_range(b" BYTES 99-99/100 "),
            Some((part(99, 99), 100))
        );
        for invalid in [
            "bytes 0-9/*",
            "bytes */100",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "items 0-9/100",
            "bytes 0-9",
            "bytes=0-9/100",
            "bytes -1-9/100",
        ] {
            assert_eq!(parse_content_range(invalid.as_bytes()), None, "{invalid}");
        }
    }

    #[test]
    fn a_part_answers_only_ranges_inside_it() {
        let stored = ByteRange {
            first: 100,
            last: 299,
        };
        let asked = |value: &str| within_part(&headers(&[("range", value)]), stored, 1000);
        assert_eq!(asked("bytes=100-299"), Some(stored));
        assert_eq!(
            asked("bytes=150-199"),
            Some(ByteRange {
                first: 150,
                last: 199
            })
        );
        assert_eq!(asked("bytes=150-160,155-170").map(|r| r.last), Some(170));
        assert_eq!(asked("bytes=99-150"), None);
        assert_eq!(asked("bytes=250-300"), None);
        assert_eq!(asked("bytes=100-"), None, "the rest of 1000 bytes");
        assert_eq!(asked("bytes=-10"), None);
        assert_eq!(asked("bytes=100-110,200-210"), None, "two parts");
        assert_eq!(asked("bytes=5000-"), None, "unsatisfiable");
        assert_eq!(asked("bytes=x"), None);
        let with_if_range = headers(&[("range", "bytes=150-199"), ("if-range", "\"v1\"")]);
        assert_eq!(within_part(&with_if_range, stored, 1000), None);
        let whole = ByteRange {
            first: 0,
            last: 999,
        };
        assert_eq!(
            within_part(&headers(&[("range", "bytes=-10")]), whole, 1000),
            Some(ByteRange {
                first: 990,
                last: 999
            })
        );
    }

    #[test]
    fn content_range_values() {
        let range = ByteRange {
            first: 100,
            last: 199,
        };
        assert_eq!(range.length(), 100);
        assert_eq!(range.content_range(1000), "bytes 100-199/1000");
        assert_eq!(unsatisfied_range(1000), "bytes */1000");
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", lm),
            ("date", "Wed, 21 Oct 2015 07:29:00 GMT"),
        ]);
        let matches =
            |value: &str| cache_rules::if_range_matches(&headers(&[("if-range", value)]), &stored);
        assert!(cache_rules::if_range_matches(&HeaderMap::new(), &stored));
        assert!(matches("\"v1\""));
        assert!(matches(" \"v1\" "));
        assert!(!matches("W/\"v1\""), "weak tags never match");
        assert!(!matches("\"v2\""));
        assert!(!matches("\"v1\", \"v2\""));
        assert!(matches(lm));
        assert!(!matches("Wed, 21 Oct 2015 07:28:01 GMT"));
        assert!(!matches("garbage"));
        let weak_etag = headers(&[("etag", "W/\"v1\"")]);
        let req = headers(&[("if-range", "\"v1\"")]);
        assert!(!cache_rules::if_range_matches(&req, &weak_etag));
        // Last-Modified less than 60 s before Date is a weak validator.
        let recent = headers(&[("last-modified", lm), ("date", lm)]);
        let req = headers(&[("if-range", lm)]);
        assert!(!cache_rules::if_range_matches(&req, &recent));
        let twice = headers(&[("if-range", "\"v1\""), ("if-range", "\"v1\"")]);
        assert!(!cache_rules::if_range_matches(&twice, &stored));
    }

    #[test]
    fn plan_answers_only_a_single_range_field_for_a_200() {
        let req = headers;
        let resp = req(&[("etag", "\"v1\"")]);
        let ok = StatusCode::OK;
        let range = req(&[("range", "bytes=0-9")]);
        assert_eq!(plan(&range, ok, &resp, 100), part(0, 9));
        assert_eq!(
            plan(&range, StatusCode::NOT_FOUND, &resp, 100),
            Selection::Whole
        );
        let twice = req(&[("range", "bytes=0-9"), ("range", "bytes=0-9")]);
        assert_eq!(plan(&twice, ok, &resp, 100), Selection::Whole);
        let bad = req(&[("range", "bytes=9-0")]);
        assert_eq!(plan(&bad, ok, &resp, 100), Selection::Whole);
        let matching = req(&[("range", "bytes=0-9"), ("if-range", "\"v1\"")]);
        assert_eq!(plan(&matching, ok, &resp, 100), part(0, 9));
        let other = req(&[("range", "bytes=0-9"), ("if-range", "\"v2\"")]);
        assert_eq!(plan(&other, ok, &resp, 100), Selection::Whole);
    }
}
