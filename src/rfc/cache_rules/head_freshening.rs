//! Freshening a stored GET response with a HEAD response (RFC 9111 §4.3.5).
//!
//! A HEAD's `200` is what a GET would have been, less the content: when it
//! describes the stored representation (the same validators, the same
//! length), its fields may refresh the stored response as a 304 would;
//! otherwise the stored response is no longer the current one. The RFC
//! counts any received validator that matches; here every validator the
//! HEAD response carries must match and it must carry one, since without a
//! validator nothing says the content is the same (the conservative
//! reading: the stored copy is retired and the next GET fetches anew).

use http::header::{self, HeaderMap, HeaderName};

/// Whether a HEAD response's fields (`head`) describe the stored GET
/// response's representation (`stored`), so that they may freshen it.
pub fn head_describes_stored(stored: &HeaderMap, head: &HeaderMap) -> bool {
    let validators = [header::ETAG, header::LAST_MODIFIED];
    let received: Vec<&HeaderName> = validators
        .iter()
        .filter(|v| head.contains_key(*v))
        .collect();
    !received.is_empty()
        && received.iter().all(|name| same_value(stored, head, name))
        && (!head.contains_key(header::CONTENT_LENGTH)
            || same_value(stored, head, &header::CONTENT_LENGTH))
}

/// Both have exactly one line of `name`, equal but for surrounding blanks.
fn same_value(a: &HeaderMap, b: &HeaderMap, name: &HeaderName) -> bool {
    let one = |map: &HeaderMap| {
        let mut values = map.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_bytes().trim_ascii().to_vec()),
            _ => None,
        }
    };
    matches!((one(a), one(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc::cache_rules::tests::headers;

    const LM: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

    #[test]
    fn the_same_validators_and_length_describe_the_stored_response() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", LM),
            ("content-length", "10"),
        ]);
        let describes = |head: &[(&str, &str)]| head_describes_stored(&stored, &headers(head));
        assert!(describes(&[("etag", "\"v1\""), ("content-length", "10")]));
        assert!(describes(&[("etag", "\"v1\""), ("last-modified", LM)]));
        assert!(describes(&[("last-modified", LM)]));
        assert!(!describes(&[("etag", "\"v2\"")]));
        assert!(!describes(&[("etag", "\"v1\""), ("content-length", "11")]));
        assert!(!describes(&[
            ("etag", "\"v1\""),
            ("last-modified", "Thu, 22 Oct 2015 07:28:00 GMT")
        ]));
        assert!(
            !describes(&[("content-length", "10")]),
            "no validator says it is the same"
        );
        assert!(!describes(&[("etag", "\"v1\""), ("etag", "\"v1\"")]));
    }

    #[test]
    fn a_validator_the_stored_response_lacks_does_not_match() {
        let stored = headers(&[("last-modified", LM)]);
        assert!(!head_describes_stored(
            &stored,
            &headers(&[("etag", "\"v1\""), ("last-modified", LM)])
        ));
    }
}
