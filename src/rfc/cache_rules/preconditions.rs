//! Conditional requests answered from a stored response (RFC 9110 §13.2),
//! as the origin would answer them against the same representation.
//!
//! All four preconditions of a GET or HEAD are evaluated, in the order of
//! RFC 9110 §13.2.2: `If-Match` (strong comparison; `*` matches the stored
//! response), else `If-Unmodified-Since` (against the stored
//! `Last-Modified`; ignored when either is missing or not one valid date),
//! whose failure is a 412; then `If-None-Match` (weak comparison), else
//! `If-Modified-Since`, whose match is a 304 ([`super::client_validators_match`]).
//! A cache MAY ignore the first two (§13.1.1, §13.1.4), but a client that
//! sends them wants the origin's answer, and the stored response is what
//! the origin sent. Preconditions are ignored when the response is not a
//! 2xx (§13.2.1). `If-Range` is the range code's (`range.rs`).

use http::header::{self, HeaderMap};
use http::StatusCode;

use super::{client_validators_match, parse_entity_tag, single_http_date, single_value};

/// What a conditional GET or HEAD gets from a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition stands in the way: the response (or its part).
    Proceed,
    /// 304: the client's validators match.
    NotModified,
    /// 412: `If-Match` or `If-Unmodified-Since` is false.
    Failed,
}

/// Evaluate the request's preconditions against a stored (or just fetched)
/// response with `status` and `resp_headers` (RFC 9110 §13.2.2).
pub fn evaluate(
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
) -> Precondition {
    if !status.is_success() {
        return Precondition::Proceed;
    }
    let holds = match req_headers.contains_key(header::IF_MATCH) {
        true => if_match_holds(req_headers, resp_headers),
        false => unmodified_since_holds(req_headers, resp_headers),
    };
    if !holds {
        return Precondition::Failed;
    }
    match client_validators_match(req_headers, resp_headers) {
        true => Precondition::NotModified,
        false => Precondition::Proceed,
    }
}

/// `If-Match` (RFC 9110 §13.1.1): `*` alone holds for any stored response;
/// else one of the listed tags must equal the stored strong ETag. A weak
/// or missing stored ETag, or a garbled field, does not hold.
fn if_match_holds(req_headers: &HeaderMap, resp_headers: &HeaderMap) -> bool {
    let lines: Vec<&[u8]> = req_headers
        .get_all(header::IF_MATCH)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .collect();
    if lines == [b"*".as_slice()] {
        return true;
    }
    let Some(stored) =
        single_value(resp_headers, &header::ETAG).and_then(|v| strong_tag(v.as_bytes()))
    else {
        return false;
    };
    let mut candidates = Vec::new();
    for line in lines {
        match strong_tags(line) {
            Some(tags) => candidates.extend(tags),
            None => return false,
        }
    }
    candidates.contains(&Some(stored))
}

/// `If-Unmodified-Since` (RFC 9110 §13.1.4): holds unless the stored
/// `Last-Modified` is later than it; ignored (holds) when either is not
/// one valid HTTP-date.
fn unmodified_since_holds(req_headers: &HeaderMap, resp_headers: &HeaderMap) -> bool {
    let since = single_http_date(req_headers, &header::IF_UNMODIFIED_SINCE);
    let modified = single_http_date(resp_headers, &header::LAST_MODIFIED);
    match (since, modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => true,
    }
}

/// The opaque part of a single strong entity-tag (`W/` ones have none).
fn strong_tag(value: &[u8]) -> Option<&[u8]> {
    match strong_tags(value.trim_ascii())?.as_slice() {
        [only] => *only,
        _ => None,
    }
}

/// A `#entity-tag` list: for each tag its opaque part, or None for a weak
/// one; None for the whole when it is garbled.
fn strong_tags(mut input: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut tags = Vec::new();
    loop {
        input = input.trim_ascii_start();
        while let Some(rest) = input.strip_prefix(b",") {
            input = rest.trim_ascii_start();
        }
        if input.is_empty() {
            return Some(tags);
        }
        let weak = input.starts_with(b"W/");
        let (opaque, rest) = parse_entity_tag(input)?;
        tags.push((!weak).then_some(opaque));
        input = rest.trim_ascii_start();
        if !(input.is_empty() || input.starts_with(b",")) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc::cache_rules::tests::headers;

    const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    const BEFORE: &str = "Tue, 20 Oct 2015 07:28:00 GMT";
    const AFTER: &str = "Thu, 22 Oct 2015 07:28:00 GMT";

    fn against(req: &[(&str, &str)], stored: &[(&str, &str)]) -> Precondition {
        evaluate(&headers(req), StatusCode::OK, &headers(stored))
    }

    fn stored() -> [(&'static str, &'static str); 2] {
        [("etag", "\"v1\""), ("last-modified", MODIFIED)]
    }

    #[test]
    fn if_match_needs_a_strong_match() {
        use Precondition::*;
        let ok = |value: &str| against(&[("if-match", value)], &stored());
        assert_eq!(ok("\"v1\""), Proceed);
        assert_eq!(ok("\"v0\", \"v1\""), Proceed);
        assert_eq!(ok("*"), Proceed);
        assert_eq!(ok("\"v2\""), Failed);
        assert_eq!(ok("W/\"v1\""), Failed, "weak tags never match");
        assert_eq!(ok("garbage"), Failed);
        assert_eq!(ok("\"v1\" x"), Failed);
        let weak = [("etag", "W/\"v1\"")];
        assert_eq!(against(&[("if-match", "\"v1\"")], &weak), Failed);
        assert_eq!(against(&[("if-match", "*")], &weak), Proceed);
        assert_eq!(against(&[("if-match", "\"v1\"")], &[]), Failed);
        let two_lines = [("if-match", "\"v0\""), ("if-match", "\"v1\"")];
        assert_eq!(against(&two_lines, &stored()), Proceed);
    }

    #[test]
    fn if_unmodified_since_counts_only_without_if_match() {
        use Precondition::*;
        assert_eq!(
            against(&[("if-unmodified-since", BEFORE)], &stored()),
            Failed
        );
        assert_eq!(
            against(&[("if-unmodified-since", MODIFIED)], &stored()),
            Proceed
        );
        assert_eq!(
            against(&[("if-unmodified-since", AFTER)], &stored()),
            Proceed
        );
        assert_eq!(
            against(&[("if-unmodified-since", "soon")], &stored()),
            Proceed
        );
        let no_date = [("etag", "\"v1\"")];
        assert_eq!(
            against(&[("if-unmodified-since", BEFORE)], &no_date),
            Proceed
        );
        let both = [("if-match", "\"v1\""), ("if-unmodified-since", BEFORE)];
        assert_eq!(against(&both, &stored()), Proceed);
    }

    #[test]
    fn a_failed_precondition_comes_before_a_not_modified() {
        use Precondition::*;
        let req = [("if-match", "\"v2\""), ("if-none-match", "\"v1\"")];
        assert_eq!(against(&req, &stored()), Failed);
        let req = [("if-match", "\"v1\""), ("if-none-match", "\"v1\"")];
        assert_eq!(against(&req, &stored()), NotModified);
        assert_eq!(
            against(&[("if-modified-since", AFTER)], &stored()),
            NotModified
        );
        assert_eq!(against(&[], &stored()), Proceed);
    }

    #[test]
    fn a_non_2xx_ignores_every_precondition() {
        let req = headers(&[("if-match", "\"v2\"")]);
        let not_found = evaluate(&req, StatusCode::NOT_FOUND, &headers(&stored()));
        assert_eq!(not_found, Precondition::Proceed);
    }
}
