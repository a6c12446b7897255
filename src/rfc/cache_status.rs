//! The `Cache-Status` vocabulary (RFC 9211): the header every response
//! carries to say what ringside did with it.
//!
//! Fills (`fill.rs`), the request flow (`proxy/`) and the peer protocol all
//! name outcomes, so the words live here, below all of them, as types: a
//! value is built from its parts (`fwd`, `fwd-status`, `stored`,
//! `collapsed`, `detail`, and two parameters of ringside's own: `scope`, the
//! cache a request used when it is not the one every caller shares, and
//! `override`, an answer stored and served under a path rule's override of
//! the origin's directives) and written out in one place, so no two modules
//! can spell the same outcome two ways.

use crate::rfc::cache_rules::NotStorable;
use http::{HeaderName, HeaderValue};
use std::fmt;

/// The response header.
pub static HEADER: HeaderName = HeaderName::from_static("cache-status");

/// The cache name every value starts with.
const CACHE: &str = "ringside";

/// The hit's value, encoded once: hits are the hot path.
static HIT_VALUE: HeaderValue = HeaderValue::from_static("ringside; hit");

/// What ringside did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    /// Why the request went forward; None: answered from the cache (a hit).
    fwd: Option<Fwd>,
    /// The status of the forward response, when it matters to the reader.
    fwd_status: Option<u16>,
    /// The forward response was stored.
    stored: bool,
    /// The request joined another request's fill (singleflight).
    collapsed: bool,
    detail: Option<Detail>,
    /// Whose cache answered, when not everyone's (extension parameter `scope`).
    scope: Option<Scope>,
    /// Stored and served under a path rule's override of the origin's
    /// directives (extension parameter `override`).
    overridden: bool,
}

/// The `scope` parameter: the cache a request used, when it is not the one
/// shared by every caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Scope {
    /// The partition of the request's credential.
    PerCredential,
    /// The shared cache, although the request carried a credential.
    SharedDespiteCredentials,
}

/// RFC 9211 §2.2 `fwd` values ringside uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Fwd {
    /// Configured or requested not to use the cache.
    Bypass,
    /// A method the cache never answers.
    Method,
    /// Not in the cache.
    UriMiss,
    /// In the cache, but not the variant this request asks for.
    VaryMiss,
    /// Not answered from the cache, for a reason `detail` gives.
    Miss,
    /// In the cache but stale.
    Stale,
}

/// The `detail` parameter: ringside's own words for what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Served stale while a background fill refreshes it.
    StaleWhileRevalidate,
    /// Served stale because the origin failed.
    StaleIfError,
    /// Being stored as it streams; its length is not known yet, so whether
    /// it fits `max_object_size` is not either.
    Storing,
    /// Answered by the key's owner on another node.
    Peer,
    /// Answered from the cache of the key's previous owner (a membership change).
    PreviousOwner,
    /// The fill's answer was not storable; this request went on its own.
    NotStored,
    /// Not storable, for this reason (the fill's own request).
    NotStorable(NotStorable),
    /// Larger than `cache.max_object_size`.
    TooLarge,
    /// A range of a response that is not stored: the origin answers it.
    RangeNotStored,
    OnlyIfCached,
    CollapseTimeout,
    /// The fill this request waited on died; it went on its own.
    Abandoned,
    OriginTimeout,
    OriginUnreachable,
    /// A write whose invalidation some member did not confirm in time.
    InvalidationIncomplete,
    /// A peer's purge.
    Purge,
    /// A member's notice or handoff (see `announce.rs`, `handoff/`).
    Membership,
    /// Bypasses: a path rule, a request body, an upgrade, `no-store`.
    Rule,
    RequestBody,
    Upgrade,
    NoStore,
    /// Refusals: the request is not proxied.
    HeaderTooLarge,
    Refused,
    BadRequest,
    UriTooLong,
    PeerRefused,
    /// Passed uncached (`cache.encoded_slashes: pass`).
    EncodedSlash,
    /// A POST or QUERY cached by its body, whose body is over `max_key_body`.
    BodyTooLarge,
    /// No byte of a request body for longer than allowed.
    BodyTimeout,
}

impl Detail {
    fn as_str(self) -> &'static str {
        match self {
            Detail::StaleWhileRevalidate => "stale-while-revalidate",
            Detail::StaleIfError => "stale-if-error",
            Detail::Storing => "storing",
            Detail::Peer => "peer",
            Detail::PreviousOwner => "previous-owner",
            Detail::NotStored => "not-stored",
            Detail::NotStorable(why) => why.as_str(),
            Detail::TooLarge => "too-large",
            Detail::RangeNotStored => "range-not-stored",
            Detail::OnlyIfCached => "only-if-cached",
            Detail::CollapseTimeout => "collapse-timeout",
            Detail::Abandoned => "abandoned",
            Detail::OriginTimeout => "origin-timeout",
            Detail::OriginUnreachable => "origin-unreachable",
            Detail::InvalidationIncomplete => "invalidation-incomplete",
            Detail::Purge => "purge",
            Detail::Membership => "membership",
            Detail::Rule => "rule",
            Detail::RequestBody => "request-body",
            Detail::Upgrade => "upgrade",
            Detail::NoStore => "no-store",
            Detail::HeaderTooLarge => "header-too-large",
            Detail::Refused => "refused",
            Detail::BadRequest => "bad-request",
            Detail::UriTooLong => "uri-too-long",
            Detail::PeerRefused => "peer-refused",
            Detail::EncodedSlash => "encoded-slash",
            Detail::BodyTooLarge => "body-too-large",
            Detail::BodyTimeout => "body-timeout",
        }
    }
}

impl CacheStatus {
    /// Answered from the cache, fresh.
    pub const HIT: CacheStatus = CacheStatus {
        fwd: None,
        fwd_status: None,
        stored: false,
        collapsed: false,
        detail: None,
        scope: None,
        overridden: false,
    };
    /// Fetched from the origin and stored.
    pub const STORED: CacheStatus = CacheStatus::forward(Fwd::UriMiss).stored();
    /// A stale copy revalidated with a 304.
    pub const REVALIDATED: CacheStatus = CacheStatus::forward(Fwd::Stale).fwd_status(304);
    /// Answered by the key's owner on another node.
    pub const FROM_PEER: CacheStatus = CacheStatus::forward(Fwd::UriMiss).detail(Detail::Peer);
    /// The previous owner's copy, stored here (the key's new owner).
    pub const FROM_PREVIOUS_OWNER: CacheStatus = CacheStatus::forward(Fwd::UriMiss)
        .stored()
        .detail(Detail::PreviousOwner);
    /// A method the cache does not answer, proxied untouched.
    pub const METHOD: CacheStatus = CacheStatus::forward(Fwd::Method);

    /// Went forward, for this reason.
    pub const fn forward(fwd: Fwd) -> CacheStatus {
        CacheStatus {
            fwd: Some(fwd),
            ..CacheStatus::HIT
        }
    }

    /// A bypass of the cache, for this reason.
    pub const fn bypass(detail: Detail) -> CacheStatus {
        CacheStatus::forward(Fwd::Bypass).detail(detail)
    }

    pub const fn detail(self, detail: Detail) -> CacheStatus {
        CacheStatus {
            detail: Some(detail),
            ..self
        }
    }

    pub const fn fwd_status(self, status: u16) -> CacheStatus {
        CacheStatus {
            fwd_status: Some(status),
            ..self
        }
    }

    pub const fn stored(self) -> CacheStatus {
        CacheStatus {
            stored: true,
            ..self
        }
    }

    pub const fn collapsed(self) -> CacheStatus {
        CacheStatus {
            collapsed: true,
            ..self
        }
    }

    /// The cache this request used, if not the shared one.
    pub const fn scope(self, scope: Option<Scope>) -> CacheStatus {
        CacheStatus { scope, ..self }
    }

    /// Whether the answer is served under a rule's override.
    pub const fn overridden(self, overridden: bool) -> CacheStatus {
        CacheStatus { overridden, ..self }
    }

    /// The header value; a plain hit's is encoded once.
    pub fn header_value(&self) -> HeaderValue {
        if *self == CacheStatus::HIT {
            return HIT_VALUE.clone();
        }
        HeaderValue::try_from(self.to_string()).expect("Cache-Status words are visible ASCII")
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CACHE)?;
        match self.fwd {
            None => f.write_str("; hit")?,
            Some(fwd) => write!(f, "; fwd={}", <&str>::from(fwd))?,
        }
        if let Some(status) = self.fwd_status {
            write!(f, "; fwd-status={status}")?;
        }
        if self.stored {
            f.write_str("; stored")?;
        }
        if self.collapsed {
            f.write_str("; collapsed")?;
        }
        if let Some(detail) = self.detail {
            write!(f, "; detail={}", detail.as_str())?;
        }
        if let Some(scope) = self.scope {
            write!(f, "; scope={}", <&str>::from(scope))?;
        }
        if self.overridden {
            f.write_str("; override")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(status: CacheStatus) -> String {
        status.header_value().to_str().unwrap().to_owned()
    }

    #[test]
    fn values_read_as_rfc_9211_lists() {
        assert_eq!(text(CacheStatus::HIT), "ringside; hit");
        assert_eq!(
            text(CacheStatus::HIT.detail(Detail::StaleWhileRevalidate)),
            "ringside; hit; detail=stale-while-revalidate"
        );
        assert_eq!(text(CacheStatus::STORED), "ringside; fwd=uri-miss; stored");
        assert_eq!(
            text(CacheStatus::STORED.collapsed()),
            "ringside; fwd=uri-miss; stored; collapsed"
        );
        assert_eq!(
            text(CacheStatus::REVALIDATED.collapsed()),
            "ringside; fwd=stale; fwd-status=304; collapsed"
        );
        assert_eq!(
            text(
                CacheStatus::forward(Fwd::Miss)
                    .collapsed()
                    .detail(Detail::CollapseTimeout)
            ),
            "ringside; fwd=miss; collapsed; detail=collapse-timeout"
        );
        assert_eq!(
            text(
                CacheStatus::forward(Fwd::UriMiss)
                    .fwd_status(200)
                    .detail(Detail::NotStorable(NotStorable::SetCookie))
            ),
            "ringside; fwd=uri-miss; fwd-status=200; detail=set-cookie"
        );
        assert_eq!(
            text(CacheStatus::bypass(Detail::PeerRefused)),
            "ringside; fwd=bypass; detail=peer-refused"
        );
        assert_eq!(
            text(CacheStatus::forward(Fwd::VaryMiss)),
            "ringside; fwd=vary-miss"
        );
    }

    #[test]
    fn scope_and_override_come_last() {
        let per_credential = Some(Scope::PerCredential);
        assert_eq!(
            text(CacheStatus::HIT.scope(per_credential).overridden(true)),
            "ringside; hit; scope=per-credential; override"
        );
        assert_eq!(
            text(
                CacheStatus::HIT
                    .detail(Detail::StaleWhileRevalidate)
                    .scope(Some(Scope::SharedDespiteCredentials))
            ),
            "ringside; hit; detail=stale-while-revalidate; scope=shared-despite-credentials"
        );
        assert_eq!(
            text(CacheStatus::STORED.overridden(true)),
            "ringside; fwd=uri-miss; stored; override"
        );
    }
}
