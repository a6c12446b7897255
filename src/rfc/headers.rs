//! Which header fields belong to one connection rather than to the message
//! (RFC 9110 §7.6.1): the hop-by-hop fields, and those a `Connection`
//! header names. No proxy forwards them, stores them or signs them.

use http::header::{self, HeaderMap, HeaderName};
use once_cell::sync::Lazy;

/// The standard hop-by-hop fields, with `keep-alive` and `proxy-connection`
/// that HTTP/1.0 peers still send.
static HOP_BY_HOP: Lazy<[HeaderName; 9]> = Lazy::new(|| {
    [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
});

/// Whether `name` is one of the standard hop-by-hop fields.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The field names a `Connection` header lists (its connection options).
pub fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
}

/// The hop-by-hop fields present, including those the Connection header
/// names. Allocates nothing when there are none (the usual case).
pub fn hop_by_hop_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let standard = HOP_BY_HOP.iter().cloned();
    connection_options(headers)
        .chain(standard)
        .filter(|n| headers.contains_key(n))
        .collect()
}

/// Remove the hop-by-hop fields from a header map.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in hop_by_hop_names(headers) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_nominated_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("cache-control", HeaderValue::from_static("max-age=5"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("cache-control"));
    }
}
