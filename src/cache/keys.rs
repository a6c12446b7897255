//! The key scheme: how a request becomes the strings the cache, the
//! singleflight and purge look things up by. Every key is built here, so
//! the layout below is the whole truth about them.
//!
//! ```text
//! plain key    <origin prefix><path>[?<query>]            query unless cache.include_query: false
//!              [\x1f<name>[=<values>]]...                 cache.key_headers, in order
//!              [\x1fcredential=<digest, 32 hex>]          scope: per-credential, with a credential
//!              [\x1fbody=<method>:<digest, 32 hex>]       a POST or QUERY keyed on its body
//! variant key  <plain key>\x1fvary=<fingerprint, 16 hex>  one response of a URL that varies
//! flight key   <plain or variant key>[\x1fvia-peer]       via-peer: filled by asking the owner
//! partial key  <plain key>\x1fpartial                      the one stored 206 of a URL too large
//!                                                          to store whole (`proxy/partial.rs`)
//! range flight <partial key>\x1f<Range value, escaped>     the fill of one range
//! ```
//!
//! `\x1f` (unit separator) never occurs in a normalised target or in an
//! escaped header value, so a key's parts cannot run into each other, and
//! every key of one URL (its variants, its header-keyed copies, its flights)
//! starts with the URL's key and a separator ([`url_of`] gives it back):
//! that is what a purge of the URL removes, by index (`store::families`).

use http::header::{HeaderMap, HeaderName};

/// Separates a key's parts.
const SEPARATOR: char = '\u{1f}';

/// The plain key of an origin (`key_prefix`, e.g. `https://api:443`) and a
/// normalised request URI.
pub fn plain(origin_prefix: &str, uri: &http::Uri, include_query: bool) -> String {
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    let query = uri.query().filter(|_| include_query);
    // Built by hand: `format!` costs several times more on the hit path.
    let mut key =
        String::with_capacity(origin_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    key.push_str(origin_prefix);
    key.push_str(path);
    if let Some(q) = query {
        key.push('?');
        key.push_str(q);
    }
    key
}

/// Append the values of the key headers `names` to a plain key: `\x1f` +
/// name, then `=` + the values (lines joined by `,`) unless the header is
/// absent. Bytes outside visible ASCII, `%` and `,` are percent-encoded, so
/// distinct values never give the same key.
pub fn append_header_values(key: &mut String, names: &[HeaderName], headers: &HeaderMap) {
    for name in names {
        key.push(SEPARATOR);
        key.push_str(name.as_str());
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_some() {
            key.push('=');
        }
        for (i, value) in values.enumerate() {
            if i > 0 {
                key.push(',');
            }
            push_escaped(key, value.as_bytes());
        }
    }
}

fn push_escaped(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if (0x21..0x7f).contains(&b) && b != b'%' && b != b',' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Append a request's partition (`scope: per-credential`, a digest of its
/// credentials, see `node::partitions`) to its key.
pub fn append_partition(key: &mut String, partition: &str) {
    key.push(SEPARATOR);
    key.push_str("credential=");
    key.push_str(partition);
}

/// Append what keys a request by its body (a POST or QUERY a path rule
/// caches): its method and a digest of the body (see `proxy/body.rs`).
pub fn append_body(key: &mut String, method: &str, digest: &str) {
    key.push(SEPARATOR);
    key.push_str("body=");
    key.push_str(method);
    key.push(':');
    key.push_str(digest);
}

/// A flight key no other request shares: for a fill of one request alone
/// (a body that keys nothing, see `proxy/body.rs`).
pub fn once(key: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{key}{SEPARATOR}once={n}")
}

/// Where one response of a varying URL is stored.
pub fn variant(plain: &str, fingerprint: u64) -> String {
    // Allocated once at its length: it is stored as the variant's key
    // (`format!` would double the allocation past the plain key).
    let mut key = String::with_capacity(plain.len() + VARIANT_MARK.len() + 16);
    key.push_str(plain);
    key.push_str(VARIANT_MARK);
    key.push_str(&format!("{fingerprint:016x}"));
    key
}

/// The plain key of a variant key ([`variant`]); None for any other key.
pub fn plain_of_variant(key: &str) -> Option<&str> {
    let (plain, fingerprint) = key.rsplit_once(VARIANT_MARK)?;
    let hex = fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(plain)
}

/// What separates a variant key's plain key from its fingerprint.
const VARIANT_MARK: &str = "\u{1f}vary=";

/// The origin part of a key (`scheme://host:port`, see [`plain`]).
pub fn origin_prefix(key: &str) -> &str {
    let after_scheme = key.find("://").map_or(0, |i| i + 3);
    let end = key[after_scheme..]
        .find('/')
        .map_or(key.len(), |i| after_scheme + i);
    &key[..end]
}

/// The URL a key belongs to: its plain key without the values of
/// `cache.key_headers` (everything before the first separator). Every key
/// stored or filled for one URL (variants, header-keyed copies, flights
/// via a peer) gives back that URL's key: what a purge of the URL removes.
pub fn url_of(key: &str) -> &str {
    key.split(SEPARATOR).next().unwrap_or(key)
}

/// Whether `key` is the URL's key itself, not derived from it.
pub fn is_url(key: &str) -> bool {
    !key.contains(SEPARATOR)
}

/// Where the one partial entry (a stored 206) of a URL is kept.
pub fn partial(plain: &str) -> String {
    format!("{plain}{SEPARATOR}partial")
}

/// The singleflight key of a fill of the range `range` (a `Range` value).
pub fn range_flight(plain: &str, range: &[u8]) -> String {
    let mut key = partial(plain);
    key.push(SEPARATOR);
    push_escaped(&mut key, range);
    key
}

/// The singleflight key of a fill that asks the key's owner on another node.
///
/// It differs from the key's own so that a request from a peer (which
/// always fills from this node's cache or origin) never joins it: with ring
/// views that disagree, two nodes each forwarding to the other would
/// otherwise wait on each other until `peer_timeout`, and the key would not
/// be stored where the asking peer expects it.
pub fn via_peer(key: String) -> String {
    format!("{key}{SEPARATOR}via-peer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_derived_key_gives_back_its_url() {
        let uri: http::Uri = "/a?b=1".parse().unwrap();
        let plain = plain("http://o:80", &uri, true);
        assert_eq!(plain, "http://o:80/a?b=1");
        assert_eq!(super::plain("http://o:80", &uri, false), "http://o:80/a");
        assert_eq!(url_of(&plain), plain);
        assert!(is_url(&plain));
        assert_eq!(url_of(&variant(&plain, 7)), plain);
        assert_eq!(url_of(&via_peer(plain.clone())), plain);
        assert_eq!(url_of(&partial(&plain)), plain);
        assert!(range_flight(&plain, b"bytes=0-9").starts_with(&partial(&plain)));
        assert_ne!(
            range_flight(&plain, b"bytes=0-9"),
            range_flight(&plain, b"bytes=0-99")
        );
        let mut keyed = plain.clone();
        let names = [HeaderName::from_static("x-tenant")];
        append_header_values(&mut keyed, &names, &HeaderMap::new());
        assert_eq!(url_of(&keyed), plain);
        assert_eq!(url_of(&variant(&keyed, 7)), plain);
        assert!(!is_url(&keyed));
        // A URL that extends another is another URL.
        assert_ne!(url_of("http://o:80/a?b=10"), plain);
    }

    #[test]
    fn variant_keys_give_back_their_plain_key_and_keys_their_origin() {
        let uri: http::Uri = "/a?b=1".parse().unwrap();
        let plain = plain("http://o:80", &uri, true);
        assert_eq!(
            plain_of_variant(&variant(&plain, 0xabc)),
            Some(plain.as_str())
        );
        assert_eq!(plain_of_variant(&plain), None);
        assert_eq!(plain_of_variant(&via_peer(plain.clone())), None);
        assert_eq!(origin_prefix(&plain), "http://o:80");
        assert_eq!(origin_prefix(&variant(&plain, 1)), "http://o:80");
        assert_eq!(origin_prefix("https://h:443"), "https://h:443");
    }

    #[test]
    fn header_values_extend_the_key_unambiguously() {
        let names = [
            HeaderName::from_static("x-forwarded-host"),
            HeaderName::from_static("x-tenant"),
        ];
        let key = |values: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (n, v) in values {
                headers.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let mut k = String::from("k");
            append_header_values(&mut k, &names, &headers);
            k
        };
        assert_eq!(key(&[]), "k\u{1f}x-forwarded-host\u{1f}x-tenant");
        assert_eq!(
            key(&[("x-tenant", "a b,%")]),
            "k\u{1f}x-forwarded-host\u{1f}x-tenant=a%20b%2C%25"
        );
        assert_ne!(key(&[("x-tenant", "")]), key(&[]));
        assert_ne!(
            key(&[("x-tenant", "a"), ("x-tenant", "b")]),
            key(&[("x-tenant", "a,b")])
        );
    }
}
