//! What an operator's path rule changes in the caching decisions, as RFC
//! 9111 lets a cache's configuration change them:
//!
//! - the [`Audience`] a response is stored for: everyone (a shared cache,
//!   where a request carrying a credential is stored only when the answer
//!   allows it, §3.5), everyone although requests carry credentials (the
//!   operator asserts the answers do not depend on the caller), or one
//!   caller's partition (a private cache's rules, §3: `private` answers may
//!   be stored there, `s-maxage` and `proxy-revalidate` do not apply);
//! - the origin directives the rule's ttl wins over ([`Overrides`]), for
//!   this cache's own storing and freshness decisions only: the answer
//!   still reaches the client as the origin sent it.
//!
//! A credential is a credential whatever header carries it: the rule's
//! list of credential headers decides ([`has_credentials`]).

use super::CacheControl;
use http::header::{self, HeaderMap, HeaderName};

/// Whom a response is stored for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Audience {
    /// Every caller: RFC 9111's shared cache.
    #[default]
    Shared,
    /// Every caller, although the request carries credentials.
    SharedDespiteCredentials,
    /// One caller's partition: a private cache's rules.
    Private,
}

/// Origin directives a rule's ttl wins over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    /// `max-age`, `s-maxage` and `Expires`: the rule's ttl is the freshness.
    pub freshness: bool,
}

impl Overrides {
    pub fn any(&self) -> bool {
        self.no_store || self.no_cache || self.private || self.freshness
    }

    /// The directives as this cache obeys them: the overridden ones gone.
    pub(super) fn apply(&self, cc: &mut CacheControl) {
        if self.no_store {
            cc.no_store = false;
        }
        if self.no_cache {
            cc.no_cache = false;
        }
        if self.private {
            cc.private = false;
        }
        if self.freshness {
            cc.max_age = None;
            cc.s_maxage = None;
        }
    }

    /// Whether the origin said something these overrides set aside: the
    /// answer is then served under an override (and says so).
    pub fn set_aside(&self, cc: &CacheControl, resp_headers: &HeaderMap) -> bool {
        let freshness = cc.max_age.is_some()
            || cc.s_maxage.is_some()
            || resp_headers.contains_key(header::EXPIRES);
        (self.no_store && cc.no_store)
            || (self.no_cache && cc.no_cache)
            || (self.private && cc.private)
            || (self.freshness && freshness)
    }
}

impl Audience {
    /// The directives as a cache of this audience reads them (RFC 9111
    /// §5.2.2.10, §5.2.2.8: `s-maxage` and `proxy-revalidate` are for
    /// shared caches only).
    pub(super) fn apply(&self, cc: &mut CacheControl) {
        if *self == Audience::Private {
            cc.s_maxage = None;
            cc.proxy_revalidate = false;
        }
    }

    /// Whether a response is stored for more than the caller who asked.
    pub fn is_shared(&self) -> bool {
        *self != Audience::Private
    }
}

/// Whether the request carries a credential in one of `names`.
pub fn has_credentials(req_headers: &HeaderMap, names: &[HeaderName]) -> bool {
    names.iter().any(|name| req_headers.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(value: &'static str) -> CacheControl {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, value.parse().unwrap());
        CacheControl::parse(&headers)
    }

    #[test]
    fn overrides_remove_only_what_they_name() {
        let all = Overrides {
            no_store: true,
            no_cache: true,
            private: true,
            freshness: true,
        };
        let mut origin = cc("no-store, no-cache, private, max-age=5, s-maxage=9, must-revalidate");
        all.apply(&mut origin);
        assert_eq!(origin, cc("must-revalidate"));
        let only_private = Overrides {
            private: true,
            ..Overrides::default()
        };
        let mut origin = cc("private, no-store");
        only_private.apply(&mut origin);
        assert_eq!(origin, cc("no-store"));
    }

    #[test]
    fn an_override_is_set_aside_only_when_the_origin_said_it() {
        let no_store = Overrides {
            no_store: true,
            ..Overrides::default()
        };
        let none = HeaderMap::new();
        assert!(no_store.set_aside(&cc("no-store"), &none));
        assert!(!no_store.set_aside(&cc("max-age=60"), &none));
        let freshness = Overrides {
            freshness: true,
            ..Overrides::default()
        };
        let mut expires = HeaderMap::new();
        expires.insert(header::EXPIRES, "0".parse().unwrap());
        assert!(freshness.set_aside(&CacheControl::default(), &expires));
        assert!(!freshness.set_aside(&CacheControl::default(), &none));
    }

    #[test]
    fn credentials_are_found_in_any_listed_header() {
        let names = [
            HeaderName::from_static("authorization"),
            HeaderName::from_static("x-api-key"),
        ];
        let mut headers = HeaderMap::new();
        assert!(!has_credentials(&headers, &names));
        headers.insert("x-api-key", "k1".parse().unwrap());
        assert!(has_credentials(&headers, &names));
        assert!(!has_credentials(&headers, &names[..1]));
    }
}
