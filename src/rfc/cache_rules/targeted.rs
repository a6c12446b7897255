//! Targeted cache-control fields (RFC 9213): `Ringside-Cache-Control`,
//! `CDN-Cache-Control` and the like, which address one class of caches and,
//! where valid, replace `Cache-Control` and `Expires` for it.
//!
//! They are Dictionary Structured Fields (RFC 9213 §2.1, RFC 8941 §3.2),
//! not Cache-Control's list syntax: a field that does not parse as a
//! Dictionary is ignored as a whole, never read leniently the way
//! Cache-Control is, so a typo cannot override the origin's `no-store`. A
//! valid field's members are the directives: a Boolean true one stands
//! alone (`no-store`), an Integer is the directive's argument
//! (`max-age=60`), parameters are ignored. Parsing is the `sfv` crate's,
//! the Structured Fields parser of the ecosystem.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sfv::{BareItem, ListEntry, Parser};

/// The response as this cache judges it (RFC 9213 §2.2): the first of
/// `targets` (in the cache's order) present with a valid, non-empty value
/// replaces Cache-Control, and Expires is ignored; without one, the
/// response as it is. Borrowed unless a targeted field applies.
pub fn targeted<'a>(resp_headers: &'a HeaderMap, targets: &[HeaderName]) -> Cow<'a, HeaderMap> {
    let Some(directives) = targets.iter().find_map(|t| directives(resp_headers, t)) else {
        return Cow::Borrowed(resp_headers);
    };
    let mut judged = resp_headers.clone();
    judged.remove(header::CACHE_CONTROL);
    judged.remove(header::EXPIRES);
    judged.insert(header::CACHE_CONTROL, directives);
    Cow::Owned(judged)
}

/// The directives of the targeted field `name`, written as Cache-Control
/// would write them, when it is present, parses as a Dictionary (all its
/// lines joined, RFC 8941 §4.2) and has a member.
fn directives(resp_headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut joined = Vec::new();
    for line in resp_headers.get_all(name) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    if joined.is_empty() {
        return None;
    }
    let dictionary = Parser::parse_dictionary(&joined).ok()?;
    let written: Vec<String> = dictionary
        .iter()
        .filter_map(|(key, entry)| as_cache_directive(key, entry))
        .collect();
    if dictionary.is_empty() {
        return None;
    }
    HeaderValue::from_str(&written.join(", ")).ok()
}

/// One Dictionary member in Cache-Control syntax: `name` for Boolean true,
/// `name=N` for an Integer; a String (`private="x"`: a field list) counts
/// as the directive alone, the conservative reading. Boolean false is no
/// directive. Any other type is no valid argument: written so that
/// Cache-Control parsing reads it as invalid (for max-age, already stale).
fn as_cache_directive(key: &str, entry: &ListEntry) -> Option<String> {
    let ListEntry::Item(item) = entry else {
        return Some(format!("{key}=?"));
    };
    match &item.bare_item {
        BareItem::Boolean(true) | BareItem::String(_) => Some(key.to_owned()),
        BareItem::Boolean(false) => None,
        BareItem::Integer(n) => Some(format!("{key}={n}")),
        _ => Some(format!("{key}=?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn judged(lines: &[(&str, &str)]) -> Option<String> {
        let targets: Arc<[HeaderName]> = [
            HeaderName::from_static("cdn-cache-control"),
            HeaderName::from_static("ringside-cache-control"),
        ]
        .into();
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_str(value).unwrap());
        }
        match targeted(&headers, &targets) {
            Cow::Borrowed(_) => None,
            Cow::Owned(judged) => {
                assert!(!judged.contains_key(header::EXPIRES));
                Some(judged[header::CACHE_CONTROL].to_str().unwrap().to_owned())
            }
        }
    }

    fn ours(value: &str) -> Option<String> {
        judged(&[
            ("cache-control", "no-store"),
            ("ringside-cache-control", value),
        ])
    }

    #[test]
    fn a_valid_dictionary_replaces_cache_control() {
        assert_eq!(ours("max-age=60").as_deref(), Some("max-age=60"));
        assert_eq!(
            ours("max-age=60, stale-if-error=30, public").as_deref(),
            Some("max-age=60, stale-if-error=30, public")
        );
        assert_eq!(ours("no-store").as_deref(), Some("no-store"));
        // Parameters are ignored; a field list is the directive alone.
        assert_eq!(ours("max-age=60;by=ops").as_deref(), Some("max-age=60"));
        assert_eq!(
            ours("private=\"set-cookie\", max-age=5").as_deref(),
            Some("private, max-age=5")
        );
        assert_eq!(ours("no-store=?0, max-age=5").as_deref(), Some("max-age=5"));
        // A Dictionary's repeated key: the last value counts (RFC 8941 §4.2.2).
        assert_eq!(ours("max-age=5, max-age=60").as_deref(), Some("max-age=60"));
        // Lines join into one Dictionary.
        let lines = [
            ("ringside-cache-control", "max-age=60"),
            ("ringside-cache-control", "public"),
        ];
        assert_eq!(judged(&lines).as_deref(), Some("max-age=60, public"));
    }

    #[test]
    fn a_field_that_is_no_dictionary_is_ignored_as_a_whole() {
        for invalid in [
            "MAX-AGE=60",
            "max-age=60,",
            "max-age=60;;",
            "max-age=60 public",
            "max-age=\"60",
            "max-age=60, no-store=?2",
            "",
        ] {
            assert_eq!(ours(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn arguments_of_the_wrong_type_are_invalid_arguments() {
        assert_eq!(ours("max-age=\"60\"").as_deref(), Some("max-age"));
        assert_eq!(ours("max-age=6.5").as_deref(), Some("max-age=?"));
        assert_eq!(ours("max-age=(1 2)").as_deref(), Some("max-age=?"));
        assert_eq!(ours("max-age=-1").as_deref(), Some("max-age=-1"));
    }

    #[test]
    fn the_first_valid_field_in_the_caches_order_counts() {
        let both = [
            ("ringside-cache-control", "no-store"),
            ("cdn-cache-control", "max-age=5"),
        ];
        assert_eq!(judged(&both).as_deref(), Some("max-age=5"));
        let first_invalid = [
            ("cdn-cache-control", "Max-Age=5"),
            ("ringside-cache-control", "max-age=60"),
        ];
        assert_eq!(judged(&first_invalid).as_deref(), Some("max-age=60"));
        assert_eq!(judged(&[("cache-control", "max-age=9")]), None);
    }
}
