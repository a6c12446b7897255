//! Interim responses (RFC 9110 §15.2): which of an origin's 1xx answers a
//! proxy passes on to its client before the final response.
//!
//! A proxy forwards the 1xx responses it did not ask for itself, except to
//! an HTTP/1.0 client, which cannot read them (§15.2); `101` is never
//! interim for us (fills do not upgrade). A `100 Continue` goes only to a
//! request that asked for it with `Expect: 100-continue` (§10.1.1): a
//! cacheable request has no content to continue with, and an unasked-for
//! 100 tells its client nothing. `102 Processing`, `103 Early Hints`
//! (RFC 8297) and unknown 1xx go to every HTTP/1.1 (or later) request.

use http::header::{self, HeaderMap};
use http::{StatusCode, Version};

/// Whether the 1xx `status` from the origin goes to a client whose request
/// was `version` with `req_headers`.
pub fn forwarded_to(status: StatusCode, version: Version, req_headers: &HeaderMap) -> bool {
    if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    if matches!(version, Version::HTTP_09 | Version::HTTP_10) {
        return false;
    }
    status != StatusCode::CONTINUE || expects_continue(req_headers)
}

/// `Expect: 100-continue` (the only expectation, any case, RFC 9110 §10.1.1).
fn expects_continue(req_headers: &HeaderMap) -> bool {
    req_headers.get_all(header::EXPECT).iter().any(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hints_go_to_http_1_1_clients_and_later_only() {
        let none = HeaderMap::new();
        let hints = StatusCode::from_u16(103).unwrap();
        assert!(forwarded_to(hints, Version::HTTP_11, &none));
        assert!(forwarded_to(hints, Version::HTTP_2, &none));
        assert!(forwarded_to(
            StatusCode::PROCESSING,
            Version::HTTP_11,
            &none
        ));
        assert!(forwarded_to(
            StatusCode::from_u16(199).unwrap(),
            Version::HTTP_11,
            &none
        ));
        assert!(!forwarded_to(hints, Version::HTTP_10, &none));
        assert!(!forwarded_to(hints, Version::HTTP_09, &none));
    }

    #[test]
    fn continue_only_when_asked_for_and_never_a_final_status() {
        let mut asked = HeaderMap::new();
        asked.insert(header::EXPECT, HeaderValue::from_static("100-Continue"));
        let none = HeaderMap::new();
        assert!(forwarded_to(StatusCode::CONTINUE, Version::HTTP_11, &asked));
        assert!(!forwarded_to(StatusCode::CONTINUE, Version::HTTP_11, &none));
        assert!(!forwarded_to(
            StatusCode::CONTINUE,
            Version::HTTP_10,
            &asked
        ));
        assert!(!forwarded_to(
            StatusCode::SWITCHING_PROTOCOLS,
            Version::HTTP_11,
            &none
        ));
        assert!(!forwarded_to(StatusCode::OK, Version::HTTP_11, &none));
    }
}
