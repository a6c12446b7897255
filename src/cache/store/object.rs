//! The stored object: a response as the cache keeps it, and every way one
//! is made. From an origin's (or owner's) answer ([`CachedObject::from_response`]),
//! from a stale copy and the 304 that revalidated it
//! ([`CachedObject::refreshed_by`]), and from a copy another node handed
//! over ([`CachedObject::ready_to_serve`]). Each way judges the head once,
//! with the caching rules (freshness, stale windows, Vary), and stores the
//! head as hits serve it ([`with_serving_slots`]). What a response keeps
//! for its one client (`no-cache="..."`, `private="..."`) stays out of the
//! copy that is shared ([`CachedObject::for_sharing`]).

use super::footprint;
use crate::cache::keys;
use crate::rfc::cache_rules::{self, RuleOptions};
use crate::rfc::cache_status::{self, CacheStatus};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use pingora::http::ResponseHeader;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A stored response with everything needed to judge and serve it.
#[derive(Debug)]
pub struct CachedObject {
    /// Status and end-to-end headers as the origin sent them, without
    /// hop-by-hop headers; `age` and `cache-status` hold placeholders that
    /// every hit overwrites in its clone (see [`with_serving_slots`]).
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Age the response already had when it arrived (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// When the response arrived, on the monotonic clock.
    pub received_at: Instant,
    /// How long it is fresh, counted from its age zero.
    pub freshness: Duration,
    /// How long after freshness a stale copy may serve while revalidating.
    pub stale_while_revalidate: Duration,
    /// How long after freshness a stale copy may serve when the origin fails.
    pub stale_if_error: Duration,
    /// How long after freshness the entry is kept for conditional revalidation
    /// (zero when it has no ETag or Last-Modified).
    pub revalidation_window: Duration,
    /// Request headers the origin varies on (empty: none).
    pub vary: Vec<HeaderName>,
    /// Fingerprint of the request's values for `vary`: which variant this is.
    pub vary_fingerprint: u64,
    /// Hits served from this copy: with its remaining freshness, what makes
    /// it worth handing over when this node stops (see `handoff/`).
    pub hits: AtomicU64,
    /// Stored and served under its path rule's override of something the
    /// origin said (`override`: no-store, no-cache, private, freshness).
    pub overridden: bool,
}

impl CachedObject {
    /// The response's current age (RFC 9111 §4.2.3): initial age plus time resident here.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.freshness
    }

    /// How far past freshness it is (zero while fresh).
    pub fn staleness(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.freshness)
    }

    /// How long it stays fresh from `now` (zero once stale).
    pub fn remaining_freshness(&self, now: Instant) -> Duration {
        self.freshness.saturating_sub(self.age(now))
    }

    /// Count a hit on this copy (one relaxed add: no lock on the hit path).
    pub fn record_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Time from arrival until nothing can use it any more.
    pub(super) fn usable_life(&self) -> Duration {
        let after_fresh = self
            .stale_while_revalidate
            .max(self.stale_if_error)
            .max(self.revalidation_window);
        (self.freshness + after_fresh)
            .saturating_sub(self.initial_age)
            .min(MAX_LIFE)
    }
}

#[cfg(test)]
impl CachedObject {
    /// An object fresh for an hour, received now, varying on nothing.
    pub(crate) fn fresh_for_tests(header: ResponseHeader, body: Bytes) -> CachedObject {
        CachedObject {
            header,
            body,
            initial_age: Duration::ZERO,
            received_at: Instant::now(),
            freshness: Duration::from_secs(3600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidation_window: Duration::ZERO,
            vary: Vec::new(),
            vary_fingerprint: 0,
            hits: AtomicU64::new(0),
            overridden: false,
        }
    }
}

impl CachedObject {
    /// An origin's (or owner's) response and its whole body as the cache
    /// keeps it: sent with a known length whatever the origin's framing
    /// was (a 204 has no body and may carry no length, RFC 9110 §8.6), and
    /// with a Date.
    pub fn from_response(
        mut header: ResponseHeader,
        body: Bytes,
        request_headers: &HeaderMap,
        rules: &RuleOptions,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> CachedObject {
        if has_body(header.status) {
            let _ = header.insert_header(header::CONTENT_LENGTH, body.len());
        }
        ensure_date(&mut header, response_time);
        describe(
            header,
            body,
            request_headers,
            rules,
            request_time,
            response_time,
        )
    }

    /// This stale copy's head updated by a 304 (RFC 9111 §4.3.4), judged
    /// again as a new response. The 304's Set-Cookie is merged only into the
    /// copy for the client that caused it (`with_set_cookie`), never into the
    /// one that is shared.
    pub fn refreshed_by(
        &self,
        not_modified: &HeaderMap,
        rules: &RuleOptions,
        times: (SystemTime, SystemTime),
        with_set_cookie: bool,
    ) -> CachedObject {
        let (request_time, response_time) = times;
        let mut merged = self.header.headers.clone();
        cache_rules::merge_not_modified(&mut merged, not_modified);
        let cookies = not_modified.get_all(header::SET_COOKIE);
        if with_set_cookie && cookies.iter().next().is_some() {
            merged.remove(header::SET_COOKIE);
            for cookie in cookies {
                merged.append(header::SET_COOKIE, cookie.clone());
            }
        }
        let mut header = ResponseHeader::build(self.header.status, Some(merged.len()))
            .unwrap_or_else(|_| self.header.clone());
        for (name, value) in &merged {
            let _ = header.append_header(name.clone(), value.clone());
        }
        ensure_date(&mut header, response_time);
        let body = self.body.clone();
        let mut object = describe(
            header,
            body,
            &HeaderMap::new(),
            rules,
            request_time,
            response_time,
        );
        object.vary = self.vary.clone();
        object.vary_fingerprint = self.vary_fingerprint;
        object.hits = self.hits().into();
        object
    }

    /// This object (handed over by another node: `handoff/`) with its head
    /// as this node stores heads, ready to serve hits.
    pub fn ready_to_serve(mut self) -> CachedObject {
        let placeholder = ResponseHeader::build(200, Some(0)).expect("a static status");
        let header = std::mem::replace(&mut self.header, placeholder);
        self.header = with_serving_slots(header);
        self
    }

    /// The object as it may be shared, and the object for the one client it
    /// was fetched for when those differ: the fields its `no-cache="..."`
    /// or `private="..."` name (RFC 9111 §5.2.2.4, §5.2.2.7) are that
    /// client's alone, so the shared copy goes without them. Nearly every
    /// response names none: the object itself, shared.
    pub fn for_sharing(
        self: Arc<Self>,
        rules: &RuleOptions,
    ) -> (Arc<CachedObject>, Option<Arc<CachedObject>>) {
        let fields = cache_rules::unshared_fields(&self.header.headers, &rules.targeted);
        if !fields.iter().any(|f| self.header.headers.contains_key(f)) {
            return (self, None);
        }
        let mut parts = self.header.as_owned_parts();
        for field in &fields {
            parts.headers.remove(field);
        }
        let shared = CachedObject {
            header: footprint::compact_head(parts),
            body: self.body.clone(),
            initial_age: self.initial_age,
            received_at: self.received_at,
            freshness: self.freshness,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            revalidation_window: self.revalidation_window,
            vary: self.vary.clone(),
            vary_fingerprint: self.vary_fingerprint,
            hits: self.hits().into(),
            overridden: self.overridden,
        };
        (Arc::new(shared), Some(self))
    }

    /// Where this object is stored under the plain `key`: the key itself,
    /// or for a varying response the variant key (its fingerprint appended).
    pub fn variant_key(&self, key: &str) -> Option<String> {
        (!self.vary.is_empty()).then(|| keys::variant(key, self.vary_fingerprint))
    }
}

/// moka panics on expirations past 1000 years; nothing useful lives a year.
const MAX_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The object for a head (with a Date) and body: the caching rules' view of
/// it, judged once.
fn describe(
    header: ResponseHeader,
    body: Bytes,
    request_headers: &http::HeaderMap,
    rules: &RuleOptions,
    request_time: SystemTime,
    response_time: SystemTime,
) -> CachedObject {
    let (judged, cc) = cache_rules::judged(&header.headers, rules);
    let overridden = cache_rules::served_under_override(&header.headers, rules);
    let freshness = cache_rules::freshness_lifetime(&judged, &cc, response_time, rules);
    let stale = cache_rules::stale_windows(&cc, rules);
    let has_validators = header.headers.contains_key(header::ETAG)
        || header.headers.contains_key(header::LAST_MODIFIED);
    let vary = match cache_rules::vary(&header.headers) {
        cache_rules::Vary::Headers(names) => names,
        _ => Vec::new(),
    };
    let vary_fingerprint = cache_rules::vary_fingerprint(&vary, request_headers);
    let initial_age = cache_rules::initial_age(&header.headers, request_time, response_time);
    CachedObject {
        initial_age,
        received_at: Instant::now(),
        freshness,
        stale_while_revalidate: stale.while_revalidate,
        stale_if_error: stale.if_error,
        revalidation_window: if has_validators {
            REVALIDATION_WINDOW
        } else {
            Duration::ZERO
        },
        vary,
        vary_fingerprint,
        overridden,
        header: with_serving_slots(header),
        body,
        hits: Default::default(),
    }
}

/// The stored head as it will be served: without pingora's header-case map
/// (lowercase names on the wire), and with `age` and `cache-status` already
/// present, so that a hit overwrites two values in its clone instead of
/// growing it (see `respond::send_object`), and compacted so that it holds
/// no more memory than its headers need (see `footprint`). Called after
/// everything that reads the origin's own Age.
fn with_serving_slots(header: ResponseHeader) -> ResponseHeader {
    let mut parts: http::response::Parts = header.into();
    parts
        .headers
        .insert(header::AGE, http::HeaderValue::from_static("0"));
    parts.headers.insert(
        cache_status::HEADER.clone(),
        CacheStatus::HIT.header_value(),
    );
    footprint::compact_head(parts)
}

/// How long past freshness an object with validators is kept, so that it can
/// be revalidated with a cheap 304 instead of fetched again.
const REVALIDATION_WINDOW: Duration = Duration::from_secs(300);

/// A cache must have a Date to compute age; origins that omit it get one.
/// Stored responses are served as HTTP/1.1 whatever the origin spoke.
pub fn ensure_date(header: &mut ResponseHeader, at: SystemTime) {
    header.set_version(http::Version::HTTP_11);
    if !header.headers.contains_key(header::DATE) {
        let _ = header.insert_header(header::DATE, httpdate::fmt_http_date(at));
    }
}

/// Whether a response with this status has a body to frame: 1xx, 204 and 304
/// never do, and must not announce one (RFC 9112 §6.1, §6.3).
pub fn has_body(status: http::StatusCode) -> bool {
    !(status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED)
}
