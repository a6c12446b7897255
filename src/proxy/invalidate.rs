//! Invalidation on writes (RFC 9111 §4.4): a non-error response to an unsafe
//! method (anything but GET, HEAD, OPTIONS and TRACE, extension methods
//! included) invalidates the target URI, and the `Location` and
//! `Content-Location` URIs when they are on the same origin.
//!
//! In a cluster this is **read-your-writes**: the write's response is held
//! back until every member has dropped its copies of those URIs (the owner's,
//! hot mirrors, every Vary variant and header-keyed copy), or until
//! `cluster.invalidation_timeout` has passed. Members are asked in parallel
//! with the signed peer `PURGE`, in two rounds (`purge::broadcast` says
//! why). A fill already under way anywhere when the copy is dropped cannot
//! store what it fetched before the write (see `store::Epoch`), and no
//! request after the drop joins it (`Node::purge_here`).
//!
//! What is guaranteed when the app receives the write's response: no request
//! that starts after it, on this node or on a member that confirmed both
//! rounds in time, is answered with the old copy (`tests/read_your_writes.rs`).
//! A member that did not confirm (down, partitioned, slower than the wait)
//! may serve its copy until that copy's freshness ends; the response then
//! says so in `Cache-Status` (`detail=invalidation-incomplete`), and
//! `ringside_invalidation_peer_failures_total` counts each such member.
//! An error response (4xx, 5xx) to the write invalidates nothing.

use crate::cluster::purge;
use crate::metrics;
use crate::net::origin::OriginTarget;
use crate::node::Node;
use http::{header, HeaderMap, Method, StatusCode, Uri};
use std::time::Duration;

/// Whether a request with this method may change the resource (RFC 9110 §9.2.1).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a response to an unsafe request invalidates: any non-error final
/// status (RFC 9111 §4.4), that is 2xx and 3xx.
pub fn invalidates(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

/// The URIs a write invalidates, as origin-form path-and-query: the request
/// target, then `Location` and `Content-Location` when they name the same
/// origin (a relative reference, or an absolute URI with the same scheme,
/// host and port). Each appears once.
pub fn invalidated_uris(
    request: &Uri,
    response_headers: &HeaderMap,
    target: &OriginTarget,
) -> Vec<Uri> {
    let mut uris = vec![origin_form(request)];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = response_headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let uri = same_origin(value.trim(), request, target).and_then(|u| normalized(&u));
        if let Some(uri) = uri {
            if !uris.contains(&uri) {
                uris.push(uri);
            }
        }
    }
    uris
}

/// In the normal form requests are keyed by (`normalize.rs`); None when it
/// has none (such a URI was never stored).
fn normalized(uri: &Uri) -> Option<Uri> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let normal = crate::rfc::normalize::normalize_target(target.as_bytes()).ok()?;
    normal.parse().ok()
}

fn origin_form(uri: &Uri) -> Uri {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    path.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// `reference` resolved against the request, if it is on the target's origin.
fn same_origin(reference: &str, request: &Uri, target: &OriginTarget) -> Option<Uri> {
    if has_scheme(reference) {
        let uri: Uri = reference.parse().ok()?;
        let scheme = uri.scheme_str()?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let authority = uri.authority()?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host().trim_matches(['[', ']']);
        let url = &target.url;
        let same = tls == url.tls && port == url.port && host.eq_ignore_ascii_case(&url.host);
        return same
            .then(|| origin_form(&uri))
            .and_then(|u| app_side(&u, target));
    }
    if reference.starts_with("//") {
        return None; // network-path reference: another authority
    }
    if reference.starts_with('/') {
        let uri = reference.parse().ok().map(|uri| origin_form(&uri))?;
        return app_side(&uri, target);
    }
    // A relative path: resolved against the request path's directory (RFC 3986 §5.2).
    let base = request.path();
    let directory = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    format!("{directory}{reference}").parse().ok()
}

/// An origin's path as the app names it: without the origin's base path
/// (`origin.url: https://api/v1` names `/v1/items/2` as `/items/2`); None
/// for a path outside it, which nothing under this origin is keyed by.
fn app_side(uri: &Uri, target: &OriginTarget) -> Option<Uri> {
    let base = target.base_path();
    if base.is_empty() {
        return Some(uri.clone());
    }
    let full = uri.path_and_query().map_or("/", |p| p.as_str());
    let rest = full.strip_prefix(base)?;
    match rest.chars().next() {
        Some('/') => rest.parse().ok(),
        Some('?') => format!("/{rest}").parse().ok(),
        None => Some(Uri::from_static("/")),
        Some(_) => None,
    }
}

/// Whether a URI reference starts with a scheme (RFC 3986 §3.1).
fn has_scheme(reference: &str) -> bool {
    let Some((scheme, _)) = reference.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Drop the URLs of `uris` (their keys `keys`) here and on every other
/// member, in parallel, waiting at most `within` (two rounds: see
/// `purge::broadcast`). Returns how many members did not confirm.
pub async fn everywhere(
    node: &Node,
    target: &OriginTarget,
    keys: &[String],
    uris: &[Uri],
    within: Duration,
) -> usize {
    metrics::INVALIDATIONS.inc();
    let Some(cluster) = node.cluster() else {
        for key in keys {
            node.purge_here(key, false);
        }
        return 0;
    };
    let asks = uris.iter().zip(keys).map(|(uri, key)| {
        let order = purge::Order {
            origin: &target.key_prefix,
            path: uri.path_and_query().map_or("/", |p| p.as_str()),
            prefix: false,
        };
        let purge_here = move || node.purge_here(key, false);
        purge::broadcast(cluster, &node.client, order, within, purge_here)
    });
    let unconfirmed: usize = futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|(confirmed, asked)| asked - confirmed)
        .max()
        .unwrap_or(0);
    metrics::INVALIDATION_PEER_FAILURES.inc_by(unconfirmed as u64);
    unconfirmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, OriginUrl};

    fn target() -> OriginTarget {
        let url = OriginUrl::parse("http://api.example:8000").unwrap();
        OriginTarget::new(url, &Config::default())
    }

    fn uris(request: &str, headers: &[(&str, &str)]) -> Vec<String> {
        let headers: HeaderMap = headers
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect();
        invalidated_uris(&request.parse().unwrap(), &headers, &target())
            .iter()
            .map(|u| u.to_string())
            .collect()
    }

    #[test]
    fn unsafe_methods_include_extensions() {
        for m in ["POST", "PUT", "PATCH", "DELETE", "PURGE", "FROB"] {
            assert!(is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!is_unsafe(&m), "{m}");
        }
    }

    #[test]
    fn only_non_error_statuses_invalidate() {
        for code in [200, 201, 204, 301, 303, 399] {
            assert!(invalidates(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [100, 400, 404, 409, 500, 503] {
            assert!(!invalidates(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn location_and_content_location_on_the_same_origin_are_invalidated() {
        assert_eq!(
            uris(
                "/items/1?x=1",
                &[
                    ("location", "/items/2"),
                    ("content-location", "http://API.example:8000/items/3?v=1")
                ]
            ),
            ["/items/1?x=1", "/items/2", "/items/3?v=1"]
        );
        assert_eq!(
            uris("/items/1", &[("location", "2")]),
            ["/items/1", "/items/2"]
        );
        assert_eq!(uris("/items/1", &[("location", "/items/1")]), ["/items/1"]);
        assert_eq!(
            uris("/items/1", &[("location", "/items//./%32")]),
            ["/items/1", "/items/2"],
            "in the normal form keys use"
        );
    }

    #[test]
    fn other_origins_are_left_alone() {
        for other in [
            "https://api.example:8000/x",
            "http://api.example/x",
            "http://evil.example:8000/x",
            "//evil.example/x",
            "mailto:a@b",
            "not a uri",
        ] {
            assert_eq!(uris("/a", &[("location", other)]), ["/a"], "{other}");
        }
    }
}
