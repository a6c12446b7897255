//! The request as ringside acts on it, prepared once in `request_filter`
//! so that the cache key, the path rule and the request sent upstream
//! (proxied, filled, or asked of the owner) all come from the same one:
//!
//! - protocol checks a shared cache makes before trusting a request
//!   (RFC 9112): a request line over [`MAX_REQUEST_LINE_BYTES`] gets 414,
//!   an HTTP/1.1 request without `Host` 400;
//! - the normalised target (`crate::rfc::normalize`), written back into the
//!   request; what cannot be normalised gets 400 (or, for encoded slashes
//!   with `cache.encoded_slashes: pass`, goes through uncached);
//! - one `Content-Length` where the client repeated an identical one;
//! - the header policy for cacheable requests: `cache.strip_request_headers`
//!   (and `_extra`) removed, `cache.key_headers` made part of the key.

use crate::cache::keys;
use crate::config::{CacheConfig, EncodedSlashes};
use crate::rfc::cache_status::{CacheStatus, Detail};
use crate::rfc::normalize::{self, Rejection};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Version};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;
use std::borrow::Cow;

/// Request lines longer than this get 414, as nginx's and Apache's default
/// limits (8 KiB) would, with room for the long query strings APIs use.
/// Over HTTP/1 the connection screen refuses them first, at any length.
pub use crate::net::screen::MAX_REQUEST_LINE_BYTES;

/// A request ringside answers itself with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
    pub cache_status: CacheStatus,
}

impl Refusal {
    fn bad_request(message: &'static str) -> Refusal {
        Refusal {
            status: 400,
            message,
            cache_status: CacheStatus::bypass(Detail::BadRequest),
        }
    }
}

/// 414 for an over-long request line, 400 for HTTP/1.1 without `Host`
/// (RFC 9112 §3.2).
pub fn check_protocol(req: &RequestHeader) -> Result<(), Refusal> {
    // method SP request-target SP HTTP/1.1
    let line = req.method.as_str().len() + req.raw_path().len() + 10;
    if line > MAX_REQUEST_LINE_BYTES {
        return Err(Refusal {
            status: 414,
            message: "request line too long\n",
            cache_status: CacheStatus::bypass(Detail::UriTooLong),
        });
    }
    if req.version == Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Err(Refusal::bad_request("HTTP/1.1 request without Host\n"));
    }
    Ok(())
}

/// What becomes of a request's target.
#[derive(Debug)]
pub enum Target {
    /// Already normal (the common case): nothing to change.
    AsIs,
    /// Use this normalised origin-form target instead.
    Rewrite(http::Uri),
    /// Encoded slashes, and `cache.encoded_slashes: pass`: proxy it as
    /// sent, bypassing the cache.
    PassUncached,
}

/// Normalise the request's target (origin-form, or the path and query of
/// an absolute-form target). `OPTIONS *` stays as it is.
pub fn normalized_target(req: &RequestHeader, slashes: EncodedSlashes) -> Result<Target, Refusal> {
    let raw = req.raw_path();
    if raw == b"*" && req.method == Method::OPTIONS {
        return Ok(Target::AsIs);
    }
    let (target, absolute) = match raw_target_authority(raw) {
        RawTargetAuthority::Absolute { path_and_query, .. } => (path_and_query, true),
        _ => (raw, false),
    };
    // An absolute-form target may leave the path out (`http://host?q`): it is `/`.
    let target: Cow<[u8]> = match target.first() {
        None | Some(b'?') if absolute => [b"/", target].concat().into(),
        _ => target.into(),
    };
    match normalize::normalize_target(&target) {
        Ok(Cow::Borrowed(_)) if !absolute => Ok(Target::AsIs),
        Ok(normal) => normal
            .parse()
            .map(Target::Rewrite)
            .map_err(|_| Refusal::bad_request(Rejection::NotAPath.message())),
        Err(Rejection::EncodedSeparator) if slashes == EncodedSlashes::Pass => {
            Ok(Target::PassUncached)
        }
        Err(why) => Err(Refusal::bad_request(why.message())),
    }
}

/// Write the normalised target into the request. Done after routing, which
/// reads the authority of an absolute-form target.
pub fn apply(req: &mut RequestHeader, target: &Target) {
    if let Target::Rewrite(uri) = target {
        req.set_uri(uri.clone());
    }
}

/// Identical repeated `Content-Length` values (pingora refuses differing
/// ones) are forwarded as one (RFC 9110 §8.6).
pub fn collapse_content_length(req: &mut RequestHeader) {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (values.next(), values.next()) {
        let first = first.clone();
        let _ = req.insert_header(header::CONTENT_LENGTH, first);
    }
}

/// Whether a GET or HEAD carries a body: a body may change the answer, so
/// such a request is never answered from or stored in the shared cache.
pub fn has_body(req: &RequestHeader) -> bool {
    let h = &req.headers;
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

/// `cache.strip_request_headers` and `cache.key_headers`, parsed once.
#[derive(Debug, Default)]
pub struct HeaderPolicy {
    /// Removed from cacheable requests (minus the key headers).
    strip: Vec<HeaderName>,
    /// Their values extend the cache key, in this order.
    key: Vec<HeaderName>,
}

impl HeaderPolicy {
    /// From a validated config (invalid names, impossible after validation, are skipped).
    pub fn new(cache: &CacheConfig) -> HeaderPolicy {
        let names = |list: &[String]| -> Vec<HeaderName> {
            list.iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        let key = names(&cache.key_headers);
        let strip = cache
            .stripped_headers()
            .into_iter()
            .filter(|n| !key.contains(n))
            .collect();
        HeaderPolicy { strip, key }
    }

    /// Remove the stripped headers from a cacheable request.
    pub fn strip(&self, req: &mut RequestHeader) {
        // Requests carry few headers: scanning them is cheaper than a lookup
        // per configured name, and allocates nothing.
        while let Some(name) = req.headers.keys().find(|n| self.strip.contains(n)).cloned() {
            req.remove_header(&name);
        }
    }

    /// Append the key headers' values to a cache key (see `keys.rs`).
    pub fn extend_key(&self, key: &mut String, headers: &HeaderMap) {
        if !self.key.is_empty() {
            keys::append_header_values(key, &self.key, headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target, None).unwrap();
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn absolute_form_targets_are_normalised_to_origin_form() {
        let req = request("GET", b"http://api:80/a//b/../c?x=%7e", &[]);
        match normalized_target(&req, EncodedSlashes::Reject).unwrap() {
            Target::Rewrite(uri) => assert_eq!(uri, "/a/c?x=~"),
            other => panic!("{other:?}"),
        }
        let req = request("GET", b"http://api:80?q", &[]);
        match normalized_target(&req, EncodedSlashes::Reject).unwrap() {
            Target::Rewrite(uri) => assert_eq!(uri, "/?q"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encoded_slashes_are_refused_or_passed_as_configured() {
        let req = request("GET", b"/a/..%2fb", &[]);
        let refusal = normalized_target(&req, EncodedSlashes::Reject).unwrap_err();
        assert_eq!(refusal.status, 400);
        assert!(matches!(
            normalized_target(&req, EncodedSlashes::Pass),
            Ok(Target::PassUncached)
        ));
        let options = request("OPTIONS", b"*", &[]);
        assert!(matches!(
            normalized_target(&options, EncodedSlashes::Reject),
            Ok(Target::AsIs)
        ));
    }

    #[test]
    fn identical_content_lengths_become_one() {
        let mut req = request(
            "POST",
            b"/",
            &[("Content-Length", "5"), ("Content-Length", "5")],
        );
        collapse_content_length(&mut req);
        assert_eq!(req.headers.get_all("content-length").iter().count(), 1);
        assert!(has_body(&req));
        assert!(!has_body(&request("GET", b"/", &[("Content-Length", "0")])));
        assert!(has_body(&request(
            "GET",
            b"/",
            &[("Transfer-Encoding", "chunked")]
        )));
    }

    #[test]
    fn key_headers_are_kept_and_extend_the_key_unambiguously() {
        let cache = CacheConfig {
            key_headers: vec!["X-Forwarded-Host".into(), "X-Tenant".into()],
            ..CacheConfig::default()
        };
        let policy = HeaderPolicy::new(&cache);
        let mut req = request(
            "GET",
            b"/",
            &[
                ("X-Forwarded-Host", "evil"),
                ("X-Original-URL", "/admin"),
                ("X-Kept", "1"),
            ],
        );
        policy.strip(&mut req);
        assert!(req.headers.contains_key("x-forwarded-host"));
        assert!(!req.headers.contains_key("x-original-url"));
        assert!(req.headers.contains_key("x-kept"));

        let mut key = String::from("k");
        policy.extend_key(
            &mut key,
            &request("GET", b"/", &[("X-Tenant", "t")]).headers,
        );
        assert_eq!(key, "k\u{1f}x-forwarded-host\u{1f}x-tenant=t");
    }
}
