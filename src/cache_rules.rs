//! HTTP caching rules for a shared cache (RFC 9111), as pure functions.
//!
//! This module owns every caching *decision* the proxy makes:
//! whether a response may be stored, how long it stays fresh, how old it already is
//! on arrival, how long a stale copy may still be served, which request headers select
//! among variants (`Vary`), whether a client's conditional request can be answered
//! with 304, which validators to send when revalidating, and how a 304 from the
//! origin refreshes the stored headers.
//!
//! There is no I/O, async, clock or global state here: callers pass in headers and
//! timestamps and get plain values back. That keeps every rule unit-testable and
//! checkable against the RFC text, and lets the proxy and storage code act on
//! these decisions without re-implementing them.
//!
//! All header input comes from clients or origins and may be hostile. Nothing here
//! panics on a header value. Malformed input is either ignored or read the
//! conservative way: cache less and revalidate more.

use std::hash::Hasher;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use siphasher::sip::SipHasher13;

/// RFC 9111 §1.2.2: a delta-seconds value too large to represent is read as 2^31.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

// ---------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------

/// Parsed Cache-Control (request or response). Multiple header lines and comma lists are merged;
/// directive names are case-insensitive; values may be quoted (`"60"`). A duplicated or malformed
/// delta-seconds value for max-age/s-maxage is treated as 0 (RFC 9111 §4.2.1: invalid => stale).
/// delta-seconds saturate at 2^31 instead of overflowing (§1.2.2). `private="set-cookie"` or
/// `no-cache="x"` with a field list is treated like the unqualified directive (conservative).
///
/// For the other delta-seconds directives a malformed value is ignored and duplicates are merged
/// conservatively: the smallest stale-while-revalidate / stale-if-error / max-stale wins, the
/// largest min-fresh wins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `Some(None)` = `max-stale` without a value (any staleness is acceptable).
    pub max_stale: Option<Option<u64>>,
}

impl CacheControl {
    /// Parses every `Cache-Control` line in `headers`. Never fails: unknown or malformed
    /// directives are skipped (RFC 9111 §5.2.3).
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            for element in split_list(line.as_bytes()) {
                if let Some((name, argument)) = split_directive(element) {
                    cc.apply(&name, argument);
                }
            }
        }
        cc
    }

    fn apply(&mut self, name: &[u8], argument: Option<&[u8]>) {
        match name {
            b"no-store" => self.no_store = true,
            b"no-cache" => self.no_cache = true,
            b"private" => self.private = true,
            b"public" => self.public = true,
            b"must-revalidate" => self.must_revalidate = true,
            b"proxy-revalidate" => self.proxy_revalidate = true,
            b"only-if-cached" => self.only_if_cached = true,
            b"max-age" => self.max_age = Some(freshness_seconds(self.max_age, argument)),
            b"s-maxage" => self.s_maxage = Some(freshness_seconds(self.s_maxage, argument)),
            b"stale-while-revalidate" => {
                self.stale_while_revalidate = smallest(self.stale_while_revalidate, argument)
            }
            b"stale-if-error" => self.stale_if_error = smallest(self.stale_if_error, argument),
            b"min-fresh" => self.min_fresh = largest(self.min_fresh, argument),
            b"max-stale" => self.max_stale = merge_max_stale(self.max_stale, argument),
            _ => {}
        }
    }
}

/// Request directives, with the HTTP/1.0 fallback: `Pragma: no-cache` counts as
/// `Cache-Control: no-cache` only when the request has no Cache-Control at all (RFC 9111 §5.4).
pub fn request_cache_control(headers: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::parse(headers);
    if !headers.contains_key(header::CACHE_CONTROL) && pragma_no_cache(headers) {
        cc.no_cache = true;
    }
    cc
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers.get_all(header::PRAGMA).iter().any(|line| {
        split_list(line.as_bytes())
            .iter()
            .any(|element| element.eq_ignore_ascii_case(b"no-cache"))
    })
}

/// max-age / s-maxage: a repeated or unreadable value makes the response stale (RFC 9111 §4.2.1).
fn freshness_seconds(previous: Option<u64>, argument: Option<&[u8]>) -> u64 {
    if previous.is_some() {
        return 0;
    }
    argument.and_then(parse_delta_seconds).unwrap_or(0)
}

fn smallest(previous: Option<u64>, argument: Option<&[u8]>) -> Option<u64> {
    match (previous, argument.and_then(parse_delta_seconds)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn largest(previous: Option<u64>, argument: Option<&[u8]>) -> Option<u64> {
    match (previous, argument.and_then(parse_delta_seconds)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn merge_max_stale(previous: Option<Option<u64>>, argument: Option<&[u8]>) -> Option<Option<u64>> {
    let current = match argument {
        None => Some(None),
        Some(value) => parse_delta_seconds(value).map(Some),
    };
    match (previous, current) {
        (Some(Some(a)), Some(Some(b))) => Some(Some(a.min(b))),
        (Some(Some(limit)), _) | (_, Some(Some(limit))) => Some(Some(limit)),
        (a, b) => a.or(b),
    }
}

/// delta-seconds = 1*DIGIT (RFC 9111 §1.2.2), saturating at [`MAX_DELTA_SECONDS`].
fn parse_delta_seconds(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seconds = value.iter().fold(0u64, |acc, digit| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
            .min(MAX_DELTA_SECONDS)
    });
    Some(seconds)
}

/// Splits `name[=argument]` into a lowercased name and the argument with any quotes removed.
/// Returns `None` for an element with an empty name.
fn split_directive(element: &[u8]) -> Option<(Vec<u8>, Option<&[u8]>)> {
    let (name, argument) = match element.iter().position(|&b| b == b'=') {
        Some(eq) => (
            &element[..eq],
            Some(unquote(element[eq + 1..].trim_ascii())),
        ),
        None => (element, None),
    };
    let name = name.trim_ascii();
    if name.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), argument))
}

/// Strips one pair of surrounding double quotes. Escapes inside are left alone: the only
/// quoted arguments we interpret are numbers, where a backslash is invalid anyway.
fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// Splits a comma-separated field value into trimmed, non-empty elements, ignoring commas
/// inside quoted strings (RFC 9110 §5.6.1, §5.6.4).
fn split_list(value: &[u8]) -> Vec<&[u8]> {
    let mut elements = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &byte) in value.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match byte {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                push_element(&mut elements, &value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push_element(&mut elements, &value[start..]);
    elements
}

fn push_element<'a>(elements: &mut Vec<&'a [u8]>, element: &'a [u8]) {
    let element = element.trim_ascii();
    if !element.is_empty() {
        elements.push(element);
    }
}

// ---------------------------------------------------------------------------
// Storability
// ---------------------------------------------------------------------------

/// Why a response is not stored. [`NotStorable::as_str`] gives a short kebab-case token for
/// metrics labels and the Cache-Status `detail` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// No explicit freshness, and no default TTL configured.
    NoFreshness,
}

impl NotStorable {
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

/// Policy knobs from config. `Default` = no default TTL, Set-Cookie responses not stored.
#[derive(Debug, Clone, Default)]
pub struct RuleOptions {
    /// TTL applied when the origin gives no freshness information (no s-maxage, max-age,
    /// Expires). `None` = do not store such responses ([`NotStorable::NoFreshness`]).
    pub default_ttl: Option<Duration>,
    /// Store responses that carry Set-Cookie.
    pub cache_set_cookie: bool,
}

/// Decides whether a response may be stored by a shared cache (RFC 9111 §3, §3.5).
/// Checks run in the order of the [`NotStorable`] variants and the first failure is reported.
///
/// - Only GET responses are stored (the proxy fetches GET to serve HEAD).
/// - Statuses heuristically cacheable by default (RFC 9110 §15.1) are stored; 302, 307 and 403
///   only with explicit freshness; anything else (including 206 and 304) never.
/// - `no-store` in request or response, or `private` in the response, forbids storing.
/// - A request with `Authorization` is stored only if the response has `public`, `s-maxage`
///   or `must-revalidate` (§3.5).
/// - `Set-Cookie` forbids storing unless `opts.cache_set_cookie`; `Vary: *` always does.
/// - There must be freshness: s-maxage/max-age/Expires, or `opts.default_ttl`. A `no-cache`
///   response is instead storable exactly when it has a validator (ETag or Last-Modified),
///   since every use revalidates it.
pub fn check_storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    opts: &RuleOptions,
) -> Result<(), NotStorable> {
    let resp_cc = CacheControl::parse(resp_headers);
    let explicit_freshness = has_explicit_freshness(resp_headers, &resp_cc);

    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    if !status_is_storable(status, explicit_freshness) {
        return Err(NotStorable::Status);
    }
    if resp_cc.no_store || CacheControl::parse(req_headers).no_store {
        return Err(NotStorable::NoStore);
    }
    if resp_cc.private {
        return Err(NotStorable::Private);
    }
    if req_headers.contains_key(header::AUTHORIZATION) && !allows_authorized(&resp_cc) {
        return Err(NotStorable::Authorization);
    }
    if resp_headers.contains_key(header::SET_COOKIE) && !opts.cache_set_cookie {
        return Err(NotStorable::SetCookie);
    }
    if vary(resp_headers) == Vary::Star {
        return Err(NotStorable::VaryStar);
    }
    let usable = if resp_cc.no_cache {
        has_validators(resp_headers)
    } else {
        explicit_freshness || opts.default_ttl.is_some()
    };
    if !usable {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

fn status_is_storable(status: StatusCode, explicit_freshness: bool) -> bool {
    let heuristically_cacheable = matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    );
    let cacheable_when_explicit = matches!(status.as_u16(), 302 | 307 | 403);
    heuristically_cacheable || (cacheable_when_explicit && explicit_freshness)
}

/// RFC 9111 §3.5: a shared cache may store a response to an authorized request only if the
/// response explicitly allows it.
fn allows_authorized(resp_cc: &CacheControl) -> bool {
    resp_cc.public || resp_cc.s_maxage.is_some() || resp_cc.must_revalidate
}

/// The origin stated a lifetime. A present but unreadable Expires still counts: it means
/// "already expired" (RFC 9111 §5.3), so the default TTL must not override it.
fn has_explicit_freshness(resp_headers: &HeaderMap, cc: &CacheControl) -> bool {
    cc.s_maxage.is_some() || cc.max_age.is_some() || resp_headers.contains_key(header::EXPIRES)
}

fn has_validators(resp_headers: &HeaderMap) -> bool {
    resp_headers.contains_key(header::ETAG) || resp_headers.contains_key(header::LAST_MODIFIED)
}

// ---------------------------------------------------------------------------
// Freshness, age, staleness
// ---------------------------------------------------------------------------

/// Freshness lifetime for a shared cache (RFC 9111 §4.2.1): s-maxage, else max-age, else
/// Expires - Date (Date missing or invalid => `response_time`; invalid or repeated Expires,
/// e.g. "0" => already expired => zero), else `opts.default_ttl`, else zero.
/// Response `no-cache` => zero (must revalidate every time).
pub fn freshness_lifetime(
    resp_headers: &HeaderMap,
    cc: &CacheControl,
    response_time: SystemTime,
    opts: &RuleOptions,
) -> Duration {
    if cc.no_cache {
        return Duration::ZERO;
    }
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Duration::from_secs(seconds);
    }
    if resp_headers.contains_key(header::EXPIRES) {
        let Some(expires) = single_http_date(resp_headers, &header::EXPIRES) else {
            return Duration::ZERO;
        };
        let date = single_http_date(resp_headers, &header::DATE).unwrap_or(response_time);
        return expires.duration_since(date).unwrap_or(Duration::ZERO);
    }
    opts.default_ttl.unwrap_or(Duration::ZERO)
}

/// Age of the response at the moment it was received (RFC 9111 §4.2.3):
///
/// ```text
/// apparent_age          = max(0, response_time - date_value)
/// response_delay        = response_time - request_time
/// corrected_age_value   = age_value + response_delay
/// corrected_initial_age = max(apparent_age, corrected_age_value)
/// ```
///
/// Missing or garbled Age => 0; missing or garbled Date => apparent_age 0. Clocks running
/// backwards give zero rather than a negative duration.
pub fn initial_age(
    resp_headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = single_http_date(resp_headers, &header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = age_value(resp_headers).saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

/// The Age header as a duration; absent, repeated or garbled => zero.
fn age_value(resp_headers: &HeaderMap) -> Duration {
    let seconds = single_value(resp_headers, &header::AGE)
        .and_then(|value| parse_delta_seconds(value.as_bytes().trim_ascii()))
        .unwrap_or(0);
    Duration::from_secs(seconds)
}

/// How long past its freshness lifetime a stored response may still be served, per purpose
/// (RFC 5861). Both are zero when serving stale is forbidden.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleWindows {
    pub while_revalidate: Duration,
    pub if_error: Duration,
}

/// The stale-while-revalidate and stale-if-error windows of a response. RFC 9111 §4.2.4: a
/// cache must not serve stale when no-cache, must-revalidate, proxy-revalidate or (for a
/// shared cache) s-maxage is present, since s-maxage implies proxy-revalidate (§5.2.2.10).
pub fn stale_windows(cc: &CacheControl) -> StaleWindows {
    let forbids_stale =
        cc.no_cache || cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    if forbids_stale {
        return StaleWindows::default();
    }
    StaleWindows {
        while_revalidate: Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0)),
        if_error: Duration::from_secs(cc.stale_if_error.unwrap_or(0)),
    }
}

/// Whether the client's request directives rule out serving a stored entry as-is
/// (RFC 9111 §5.2.1): `no-cache`, `max-age=0`, `max-age=N` with `current_age` > N, or
/// `min-fresh` greater than the freshness remaining. The caller consults this only when
/// configured to honour client cache directives.
pub fn request_requires_revalidation(
    req_cc: &CacheControl,
    current_age: Duration,
    freshness: Duration,
) -> bool {
    if req_cc.no_cache {
        return true;
    }
    if let Some(max_age) = req_cc.max_age {
        if max_age == 0 || current_age > Duration::from_secs(max_age) {
            return true;
        }
    }
    if let Some(min_fresh) = req_cc.min_fresh {
        let remaining = freshness.saturating_sub(current_age);
        if remaining < Duration::from_secs(min_fresh) {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Vary
// ---------------------------------------------------------------------------

/// The request headers a stored response varies on (RFC 9111 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    None,
    /// `Vary: *`, or a Vary member that is not a valid field name (no request can match it).
    Star,
    /// Lowercased, deduplicated, sorted by name.
    Headers(Vec<HeaderName>),
}

/// Reads the response's Vary header(s) into a canonical form, so that
/// "Accept-Encoding, accept-language" and "Accept-Language,Accept-Encoding" compare equal.
pub fn vary(resp_headers: &HeaderMap) -> Vary {
    let mut names: Vec<HeaderName> = Vec::new();
    for line in resp_headers.get_all(header::VARY) {
        for element in split_list(line.as_bytes()) {
            if element == b"*" {
                return Vary::Star;
            }
            // HeaderName::from_bytes lowercases; an invalid name is treated like "*".
            match HeaderName::from_bytes(element) {
                Ok(name) => names.push(name),
                Err(_) => return Vary::Star,
            }
        }
    }
    if names.is_empty() {
        return Vary::None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Vary::Headers(names)
}

/// A stable fingerprint of the request's values for the given Vary header names, to extend a
/// cache key. Values are normalised as lists (lines merged, elements trimmed, empty elements
/// dropped), so whitespace around commas does not matter. An absent header fingerprints
/// differently from an empty one. The hash is SipHash-1-3 with a zero key over an
/// unambiguous, endian-independent encoding, so it is stable across processes and machines.
pub fn vary_fingerprint(names: &[HeaderName], req_headers: &HeaderMap) -> u64 {
    const NAME: u8 = 1;
    const ABSENT: u8 = 2;
    const ELEMENT: u8 = 3;
    const END: u8 = 4;

    let mut sorted: Vec<&HeaderName> = names.iter().collect();
    sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    sorted.dedup();

    let mut hasher = SipHasher13::new_with_keys(0, 0);
    for name in sorted {
        write_tagged(&mut hasher, NAME, name.as_str().as_bytes());
        if !req_headers.contains_key(name) {
            hasher.write(&[ABSENT]);
            continue;
        }
        for line in req_headers.get_all(name) {
            for element in split_list(line.as_bytes()) {
                write_tagged(&mut hasher, ELEMENT, element);
            }
        }
        hasher.write(&[END]);
    }
    hasher.finish()
}

fn write_tagged(hasher: &mut SipHasher13, tag: u8, bytes: &[u8]) {
    hasher.write(&[tag]);
    hasher.write(&(bytes.len() as u64).to_le_bytes());
    hasher.write(bytes);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Whether the client's conditional request matches the stored response, so the cache may
/// answer 304 (RFC 9111 §4.3.2, RFC 9110 §13.2.2).
///
/// If-None-Match takes precedence: weak comparison against the stored ETag, `*` matches any
/// stored response; a non-match or garbled header is `false` and If-Modified-Since is then
/// ignored. Otherwise If-Modified-Since matches when the stored Last-Modified (or, failing
/// that, Date) is not later than it. Garbled or repeated dates => `false`.
/// The caller must only use this for GET and HEAD (If-Modified-Since applies to nothing else).
pub fn client_validators_match(req_headers: &HeaderMap, stored_resp_headers: &HeaderMap) -> bool {
    if req_headers.contains_key(header::IF_NONE_MATCH) {
        return if_none_match_matches(req_headers, stored_resp_headers);
    }
    if req_headers.contains_key(header::IF_MODIFIED_SINCE) {
        return not_modified_since(req_headers, stored_resp_headers);
    }
    false
}

fn if_none_match_matches(req_headers: &HeaderMap, stored_resp_headers: &HeaderMap) -> bool {
    let lines: Vec<&HeaderValue> = req_headers.get_all(header::IF_NONE_MATCH).iter().collect();
    if let [only] = lines.as_slice() {
        if only.as_bytes().trim_ascii() == b"*" {
            return true;
        }
    }
    let Some(stored) = stored_entity_tag(stored_resp_headers) else {
        return false;
    };
    let mut candidates = Vec::new();
    for line in lines {
        match parse_entity_tags(line.as_bytes()) {
            Some(tags) => candidates.extend(tags),
            None => return false,
        }
    }
    candidates.contains(&stored)
}

fn not_modified_since(req_headers: &HeaderMap, stored_resp_headers: &HeaderMap) -> bool {
    let Some(since) = single_http_date(req_headers, &header::IF_MODIFIED_SINCE) else {
        return false;
    };
    let last_modified = single_http_date(stored_resp_headers, &header::LAST_MODIFIED)
        .or_else(|| single_http_date(stored_resp_headers, &header::DATE));
    match last_modified {
        Some(last_modified) => last_modified <= since,
        None => false,
    }
}

/// Conditional headers for revalidating a stored response with the origin (RFC 9111 §4.3.1):
/// If-None-Match from the stored ETag and If-Modified-Since from the stored Last-Modified.
/// A validator that does not parse (e.g. `ETag: *`, which as If-None-Match would match
/// anything) is not sent. Empty if the stored response has no usable validators.
pub fn revalidation_headers(stored_resp_headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(2);
    if stored_entity_tag(stored_resp_headers).is_some() {
        if let Some(etag) = stored_resp_headers.get(header::ETAG) {
            headers.push((header::IF_NONE_MATCH, etag.clone()));
        }
    }
    if single_http_date(stored_resp_headers, &header::LAST_MODIFIED).is_some() {
        if let Some(last_modified) = stored_resp_headers.get(header::LAST_MODIFIED) {
            headers.push((header::IF_MODIFIED_SINCE, last_modified.clone()));
        }
    }
    headers
}

/// The opaque part of the stored response's single ETag, if it has exactly one well-formed one.
fn stored_entity_tag(resp_headers: &HeaderMap) -> Option<&[u8]> {
    let value = single_value(resp_headers, &header::ETAG)?;
    match parse_entity_tags(value.as_bytes())?.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

/// Parses `#entity-tag` (RFC 9110 §8.8.3) into the opaque tags, quotes and `W/` removed: we only
/// ever use weak comparison (§8.8.3.2), which ignores the weak flag. Opaque tags may contain
/// commas, so this scans rather than splitting. Any malformation rejects the whole value.
fn parse_entity_tags(mut input: &[u8]) -> Option<Vec<&[u8]>> {
    let mut tags = Vec::new();
    loop {
        input = skip_separators(input);
        if input.is_empty() {
            return Some(tags);
        }
        let (tag, rest) = parse_entity_tag(input)?;
        tags.push(tag);
        input = rest.trim_ascii_start();
        if !(input.is_empty() || input.starts_with(b",")) {
            return None;
        }
    }
}

/// One entity-tag at the start of `input`: its opaque part and the rest of the input.
fn parse_entity_tag(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let input = input.strip_prefix(b"W/").unwrap_or(input);
    let body = input.strip_prefix(b"\"")?;
    let close = body.iter().position(|&b| b == b'"')?;
    let opaque = &body[..close];
    if opaque.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return None;
    }
    Some((opaque, &body[close + 1..]))
}

fn skip_separators(input: &[u8]) -> &[u8] {
    let start = input
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\t' | b','))
        .unwrap_or(input.len());
    &input[start..]
}

// ---------------------------------------------------------------------------
// Freshening with 304
// ---------------------------------------------------------------------------

/// Applies a 304 response's headers to the stored ones (RFC 9111 §4.3.4, §3.2): each header in
/// the 304 replaces every stored line of the same name, except framing and encoding headers
/// (Content-Length, Content-Encoding, Transfer-Encoding, Content-Range) and hop-by-hop headers
/// (Connection, Keep-Alive, TE, Trailer, Upgrade, Proxy-*, and anything the 304's Connection
/// header names, RFC 9110 §7.6.1), which are kept from the stored response.
pub fn merge_not_modified(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let connection_options = connection_options(not_modified);
    for name in not_modified.keys() {
        if is_kept_from_stored(name) || connection_options.contains(name) {
            continue;
        }
        stored.remove(name);
        for value in not_modified.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
}

fn is_kept_from_stored(name: &HeaderName) -> bool {
    let framing = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
    ];
    let hop_by_hop = [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ];
    framing.contains(name)
        || hop_by_hop.contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// Field names listed in the Connection header, which are hop-by-hop for this message.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|line| split_list(line.as_bytes()))
        .filter_map(|element| HeaderName::from_bytes(element).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Header helpers
// ---------------------------------------------------------------------------

/// The header's value if it appears exactly once. Repeats of a singleton field are invalid
/// and read as absent (RFC 9111 §4.2.1 allows treating such responses as stale).
fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    match values.next() {
        Some(_) => None,
        None => Some(first),
    }
}

/// An HTTP-date header (RFC 9110 §5.6.7) appearing exactly once and parsing cleanly.
fn single_http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let text = single_value(headers, name)?.to_str().ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn cc(value: &str) -> CacheControl {
        CacheControl::parse(&headers(&[("cache-control", value)]))
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn date(seconds: u64) -> String {
        httpdate::fmt_http_date(at(seconds))
    }

    fn no_default() -> RuleOptions {
        RuleOptions::default()
    }

    fn with_default_ttl(seconds: u64) -> RuleOptions {
        RuleOptions {
            default_ttl: Some(Duration::from_secs(seconds)),
            cache_set_cookie: false,
        }
    }

    fn storable(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<(), NotStorable> {
        storable_with(req, status, resp, &no_default())
    }

    fn storable_with(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        opts: &RuleOptions,
    ) -> Result<(), NotStorable> {
        let status = StatusCode::from_u16(status).unwrap();
        check_storable(&Method::GET, &headers(req), status, &headers(resp), opts)
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    // --- Cache-Control parsing ---

    #[test]
    fn parses_common_response_directives() {
        let parsed = cc("public, max-age=60, s-maxage=120, must-revalidate");
        assert!(parsed.public && parsed.must_revalidate);
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(120));
        assert!(!parsed.no_store && !parsed.private && !parsed.no_cache);
    }

    #[test]
    fn merges_multiple_header_lines() {
        let parsed = CacheControl::parse(&headers(&[
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=5, proxy-revalidate"),
        ]));
        assert!(parsed.no_cache && parsed.proxy_revalidate);
        assert_eq!(parsed.max_age, Some(5));
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        let parsed = cc("MAX-AGE=60, No-Store, S-MaxAge=7, Only-If-Cached");
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(7));
        assert!(parsed.no_store && parsed.only_if_cached);
    }

    #[test]
    fn quoted_values_are_accepted() {
        let parsed = cc("max-age=\"60\", stale-if-error=\"300\"");
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.stale_if_error, Some(300));
    }

    #[test]
    fn whitespace_around_elements_is_ignored() {
        let parsed = cc("  max-age=60 ,\tpublic  ,,");
        assert_eq!(parsed.max_age, Some(60));
        assert!(parsed.public);
    }

    #[test]
    fn duplicate_max_age_or_s_maxage_means_stale() {
        assert_eq!(cc("max-age=60, max-age=120").max_age, Some(0));
        assert_eq!(cc("max-age=60, max-age=60").max_age, Some(0));
        let across_lines = CacheControl::parse(&headers(&[
            ("cache-control", "s-maxage=600"),
            ("cache-control", "s-maxage=600"),
        ]));
        assert_eq!(across_lines.s_maxage, Some(0));
    }

    #[test]
    fn malformed_max_age_means_stale() {
        for value in [
            "max-age=abc",
            "max-age",
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=+5",
            "max-age=\"60",
            "max-age=6 0",
        ] {
            assert_eq!(cc(value).max_age, Some(0), "{value}");
        }
        assert_eq!(cc("s-maxage=1e3").s_maxage, Some(0));
    }

    #[test]
    fn huge_delta_seconds_saturate() {
        let parsed =
            cc("max-age=99999999999999999999999999999999, stale-while-revalidate=4294967296");
        assert_eq!(parsed.max_age, Some(MAX_DELTA_SECONDS));
        assert_eq!(parsed.stale_while_revalidate, Some(MAX_DELTA_SECONDS));
    }

    #[test]
    fn qualified_private_and_no_cache_act_unqualified() {
        let parsed = cc("private=\"set-cookie\", no-cache=\"x-foo, max-age=5\"");
        assert!(parsed.private && parsed.no_cache);
        // The comma inside the quoted field list does not start a new directive.
        assert_eq!(parsed.max_age, None);
    }

    #[test]
    fn garbage_is_ignored() {
        let parsed = cc(",,, =, =5, foo=bar, ;;;, \"quoted\", max-age=5, x-unknown");
        assert_eq!(
            parsed,
            CacheControl {
                max_age: Some(5),
                ..CacheControl::default()
            }
        );
    }

    #[test]
    fn non_ascii_bytes_do_not_break_parsing() {
        let mut map = HeaderMap::new();
        map.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=60, \xff\xfeno-store, public").unwrap(),
        );
        map.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"s-maxage=6\xe20").unwrap(),
        );
        let parsed = CacheControl::parse(&map);
        assert_eq!(parsed.max_age, Some(60));
        assert!(parsed.public);
        assert!(!parsed.no_store, "mangled directive name must not match");
        assert_eq!(parsed.s_maxage, Some(0));
    }

    #[test]
    fn max_stale_with_and_without_value() {
        assert_eq!(cc("max-stale").max_stale, Some(None));
        assert_eq!(cc("max-stale=30").max_stale, Some(Some(30)));
        assert_eq!(cc("max-stale=soon").max_stale, None);
        assert_eq!(cc("max-stale, max-stale=30").max_stale, Some(Some(30)));
        assert_eq!(cc("max-stale=90, max-stale=30").max_stale, Some(Some(30)));
    }

    #[test]
    fn other_duplicate_deltas_merge_conservatively() {
        let parsed = cc("stale-while-revalidate=60, stale-while-revalidate=10, min-fresh=5, min-fresh=20, stale-if-error=x");
        assert_eq!(parsed.stale_while_revalidate, Some(10));
        assert_eq!(parsed.min_fresh, Some(20));
        assert_eq!(parsed.stale_if_error, None);
    }

    #[test]
    fn no_header_parses_to_default() {
        assert_eq!(
            CacheControl::parse(&HeaderMap::new()),
            CacheControl::default()
        );
    }

    #[test]
    fn pragma_no_cache_applies_only_without_cache_control() {
        let pragma_only = request_cache_control(&headers(&[("pragma", "No-Cache")]));
        assert!(pragma_only.no_cache);
        let both = request_cache_control(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=10"),
        ]));
        assert!(!both.no_cache);
        assert_eq!(both.max_age, Some(10));
        let other_pragma = request_cache_control(&headers(&[("pragma", "x-foo")]));
        assert!(!other_pragma.no_cache);
        // Responses never read Pragma.
        assert!(!CacheControl::parse(&headers(&[("pragma", "no-cache")])).no_cache);
    }

    // --- Storability ---

    #[test]
    fn plain_200_with_max_age_is_storable() {
        assert_eq!(
            storable(&[], 200, &[("cache-control", "max-age=60")]),
            Ok(())
        );
    }

    #[test]
    fn only_get_is_stored() {
        let resp = headers(&[("cache-control", "max-age=60")]);
        for method in [Method::HEAD, Method::POST, Method::PUT, Method::OPTIONS] {
            let result = check_storable(
                &method,
                &HeaderMap::new(),
                StatusCode::OK,
                &resp,
                &no_default(),
            );
            assert_eq!(result, Err(NotStorable::Method), "{method}");
        }
    }

    #[test]
    fn partial_and_not_modified_are_never_stored() {
        let resp = [("cache-control", "public, max-age=600")];
        assert_eq!(storable(&[], 206, &resp), Err(NotStorable::Status));
        assert_eq!(storable(&[], 304, &resp), Err(NotStorable::Status));
    }

    #[test]
    fn server_errors_and_unknown_statuses_are_not_stored() {
        let resp = [("cache-control", "max-age=600")];
        for status in [500, 502, 503, 201, 401, 429, 599] {
            assert_eq!(
                storable(&[], status, &resp),
                Err(NotStorable::Status),
                "{status}"
            );
        }
    }

    #[test]
    fn heuristically_cacheable_statuses_use_default_ttl() {
        let opts = with_default_ttl(30);
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert_eq!(storable_with(&[], status, &[], &opts), Ok(()), "{status}");
        }
    }

    #[test]
    fn redirects_and_forbidden_need_explicit_freshness() {
        let opts = with_default_ttl(30);
        for status in [302, 307, 403] {
            assert_eq!(
                storable_with(&[], status, &[], &opts),
                Err(NotStorable::Status),
                "{status}"
            );
            assert_eq!(
                storable(&[], status, &[("cache-control", "max-age=60")]),
                Ok(())
            );
            assert_eq!(storable(&[], status, &[("expires", &date(60))]), Ok(()));
        }
    }

    #[test]
    fn no_store_in_response_or_request_is_refused() {
        assert_eq!(
            storable(&[], 200, &[("cache-control", "no-store, max-age=60")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(
                &[("cache-control", "no-store")],
                200,
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn private_responses_are_not_stored_by_a_shared_cache() {
        assert_eq!(
            storable(&[], 200, &[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            storable(
                &[],
                200,
                &[("cache-control", "max-age=60, private=\"set-cookie\"")]
            ),
            Err(NotStorable::Private)
        );
    }

    #[test]
    fn authorized_requests_need_explicit_permission() {
        let req = [("authorization", "Bearer abc")];
        assert_eq!(
            storable(&req, 200, &[("cache-control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            storable_with(&req, 200, &[], &with_default_ttl(30)),
            Err(NotStorable::Authorization)
        );
    }

    #[test]
    fn authorized_requests_allowed_by_public_s_maxage_or_must_revalidate() {
        let req = [("authorization", "Basic dXNlcjpwYXNz")];
        for resp_cc in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert_eq!(
                storable(&req, 200, &[("cache-control", resp_cc)]),
                Ok(()),
                "{resp_cc}"
            );
        }
    }

    #[test]
    fn set_cookie_is_refused_unless_configured() {
        let resp = [
            ("cache-control", "max-age=60"),
            ("set-cookie", "session=1; HttpOnly"),
        ];
        assert_eq!(storable(&[], 200, &resp), Err(NotStorable::SetCookie));
        let opts = RuleOptions {
            default_ttl: None,
            cache_set_cookie: true,
        };
        assert_eq!(storable_with(&[], 200, &resp, &opts), Ok(()));
    }

    #[test]
    fn vary_star_is_refused() {
        assert_eq!(
            storable(&[], 200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            storable(
                &[],
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("vary", "Accept-Encoding"),
                    ("vary", "*")
                ]
            ),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            storable(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")]
            ),
            Ok(())
        );
    }

    #[test]
    fn no_freshness_without_default_ttl() {
        let resp = [("last-modified", &*date(0)), ("content-type", "text/html")];
        assert_eq!(storable(&[], 200, &resp), Err(NotStorable::NoFreshness));
        assert_eq!(
            storable_with(&[], 200, &resp, &with_default_ttl(60)),
            Ok(())
        );
    }

    #[test]
    fn expires_alone_is_explicit_freshness_even_if_invalid() {
        assert_eq!(storable(&[], 200, &[("expires", &date(3600))]), Ok(()));
        assert_eq!(storable(&[], 200, &[("expires", "0")]), Ok(()));
    }

    #[test]
    fn no_cache_is_storable_only_with_a_validator() {
        assert_eq!(
            storable(
                &[],
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")]
            ),
            Ok(())
        );
        assert_eq!(
            storable(
                &[],
                200,
                &[("cache-control", "no-cache"), ("last-modified", &date(0))]
            ),
            Ok(())
        );
        assert_eq!(
            storable_with(
                &[],
                200,
                &[("cache-control", "no-cache, max-age=60")],
                &with_default_ttl(60)
            ),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn first_failing_rule_is_reported() {
        let resp = [
            ("cache-control", "private, no-store"),
            ("set-cookie", "a=b"),
            ("vary", "*"),
        ];
        assert_eq!(storable(&[], 200, &resp), Err(NotStorable::NoStore));
    }

    #[test]
    fn reasons_have_stable_tokens() {
        let tokens: Vec<&str> = [
            NotStorable::Method,
            NotStorable::Status,
            NotStorable::NoStore,
            NotStorable::Private,
            NotStorable::Authorization,
            NotStorable::SetCookie,
            NotStorable::VaryStar,
            NotStorable::NoFreshness,
        ]
        .iter()
        .map(NotStorable::as_str)
        .collect();
        assert_eq!(
            tokens,
            [
                "method",
                "status",
                "no-store",
                "private",
                "authorization",
                "set-cookie",
                "vary-star",
                "no-freshness"
            ]
        );
    }

    // --- Freshness lifetime ---

    fn lifetime(resp: &[(&str, &str)], opts: &RuleOptions) -> Duration {
        let resp = headers(resp);
        freshness_lifetime(&resp, &CacheControl::parse(&resp), at(0), opts)
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let expires = date(3600);
        let base = [("date", &*date(0)), ("expires", &*expires)];
        let all = [
            base[0],
            base[1],
            ("cache-control", "max-age=60, s-maxage=600"),
        ];
        assert_eq!(lifetime(&all, &no_default()), secs(600));
        let no_s_maxage = [base[0], base[1], ("cache-control", "max-age=60")];
        assert_eq!(lifetime(&no_s_maxage, &no_default()), secs(60));
        assert_eq!(lifetime(&base, &no_default()), secs(3600));
    }

    #[test]
    fn expires_is_measured_from_date_not_receipt() {
        let resp = [("date", &*date(0)), ("expires", &*date(300))];
        assert_eq!(lifetime(&resp, &no_default()), secs(300));
        // Origin clock 100 s behind ours: lifetime still Expires - Date.
        let resp = headers(&[("date", &date(100)), ("expires", &date(400))]);
        let lifetime = freshness_lifetime(&resp, &CacheControl::default(), at(0), &no_default());
        assert_eq!(lifetime, secs(300));
    }

    #[test]
    fn expires_without_date_uses_response_time() {
        assert_eq!(
            lifetime(&[("expires", &date(120))], &no_default()),
            secs(120)
        );
        assert_eq!(
            lifetime(
                &[("expires", &date(120)), ("date", "garbage")],
                &no_default()
            ),
            secs(120)
        );
    }

    #[test]
    fn expires_in_the_past_or_invalid_is_zero() {
        let opts = with_default_ttl(60);
        assert_eq!(
            lifetime(&[("date", &date(500)), ("expires", &date(100))], &opts),
            Duration::ZERO
        );
        assert_eq!(lifetime(&[("expires", "0")], &opts), Duration::ZERO);
        assert_eq!(lifetime(&[("expires", "-1")], &opts), Duration::ZERO);
        assert_eq!(
            lifetime(&[("expires", &date(100)), ("expires", &date(200))], &opts),
            Duration::ZERO
        );
    }

    #[test]
    fn default_ttl_only_when_origin_is_silent() {
        let opts = with_default_ttl(60);
        assert_eq!(lifetime(&[("content-type", "text/plain")], &opts), secs(60));
        assert_eq!(
            lifetime(&[("cache-control", "max-age=0")], &opts),
            Duration::ZERO
        );
        assert_eq!(lifetime(&[("cache-control", "max-age=5")], &opts), secs(5));
        assert_eq!(lifetime(&[("cache-control", "public")], &opts), secs(60));
        assert_eq!(lifetime(&[], &no_default()), Duration::ZERO);
    }

    #[test]
    fn no_cache_response_has_zero_freshness() {
        assert_eq!(
            lifetime(
                &[("cache-control", "no-cache, max-age=600")],
                &with_default_ttl(60)
            ),
            Duration::ZERO
        );
    }

    // --- Initial age ---

    #[test]
    fn age_is_response_delay_without_date_or_age() {
        assert_eq!(initial_age(&HeaderMap::new(), at(10), at(12)), secs(2));
    }

    #[test]
    fn apparent_age_from_date() {
        let resp = headers(&[("date", &date(0))]);
        assert_eq!(initial_age(&resp, at(29), at(30)), secs(30));
    }

    #[test]
    fn age_header_plus_delay_can_dominate() {
        let resp = headers(&[("date", &date(100)), ("age", "50")]);
        // apparent = 2, corrected_age_value = 50 + 2
        assert_eq!(initial_age(&resp, at(100), at(102)), secs(52));
    }

    #[test]
    fn origin_clock_ahead_gives_zero_apparent_age() {
        let resp = headers(&[("date", &date(1000)), ("age", "7")]);
        assert_eq!(initial_age(&resp, at(0), at(1)), secs(8));
        let resp = headers(&[("date", &date(1000))]);
        assert_eq!(initial_age(&resp, at(0), at(0)), Duration::ZERO);
    }

    #[test]
    fn garbled_or_huge_age_header() {
        for bad in ["abc", "-5", "1.5", "10, 20", ""] {
            let resp = headers(&[("age", bad)]);
            assert_eq!(initial_age(&resp, at(0), at(0)), Duration::ZERO, "{bad:?}");
        }
        let resp = headers(&[("age", "99999999999999999999999")]);
        assert_eq!(initial_age(&resp, at(0), at(0)), secs(MAX_DELTA_SECONDS));
    }

    #[test]
    fn clocks_running_backwards_do_not_panic() {
        let resp = headers(&[("date", "not a date"), ("age", "3")]);
        assert_eq!(initial_age(&resp, at(10), at(5)), secs(3));
    }

    // --- Stale windows ---

    #[test]
    fn stale_windows_come_from_directives() {
        let windows = stale_windows(&cc(
            "max-age=60, stale-while-revalidate=30, stale-if-error=86400",
        ));
        assert_eq!(
            windows,
            StaleWindows {
                while_revalidate: secs(30),
                if_error: secs(86400)
            }
        );
        assert_eq!(stale_windows(&cc("max-age=60")), StaleWindows::default());
    }

    #[test]
    fn revalidation_directives_disable_stale() {
        for value in [
            "max-age=60, must-revalidate, stale-if-error=600",
            "max-age=60, proxy-revalidate, stale-while-revalidate=600",
            "s-maxage=60, stale-while-revalidate=600, stale-if-error=600",
            "no-cache, stale-if-error=600",
        ] {
            assert_eq!(
                stale_windows(&cc(value)),
                StaleWindows::default(),
                "{value}"
            );
        }
    }

    // --- Vary ---

    #[test]
    fn vary_absent_or_empty_is_none() {
        assert_eq!(vary(&HeaderMap::new()), Vary::None);
        assert_eq!(vary(&headers(&[("vary", "")])), Vary::None);
        assert_eq!(vary(&headers(&[("vary", " , ")])), Vary::None);
    }

    #[test]
    fn vary_is_normalised() {
        let a = vary(&headers(&[("vary", "Accept-Encoding, accept-language")]));
        let b = vary(&headers(&[("vary", "Accept-Language,Accept-Encoding")]));
        let c = vary(&headers(&[
            ("vary", "accept-language"),
            ("vary", "ACCEPT-ENCODING, Accept-Language"),
        ]));
        let expected = Vary::Headers(vec![header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE]);
        assert_eq!(a, expected);
        assert_eq!(b, expected);
        assert_eq!(c, expected);
    }

    #[test]
    fn vary_star_or_invalid_name_is_star() {
        assert_eq!(
            vary(&headers(&[("vary", "accept-encoding, *")])),
            Vary::Star
        );
        assert_eq!(vary(&headers(&[("vary", "accept encoding")])), Vary::Star);
        let mut map = HeaderMap::new();
        map.append(
            header::VARY,
            HeaderValue::from_bytes(b"accept-\xe9ncoding").unwrap(),
        );
        assert_eq!(vary(&map), Vary::Star);
    }

    // --- Vary fingerprint ---

    fn fingerprint(names: &[HeaderName], req: &[(&str, &str)]) -> u64 {
        vary_fingerprint(names, &headers(req))
    }

    #[test]
    fn fingerprint_ignores_whitespace_around_commas_and_line_splits() {
        let names = [header::ACCEPT_ENCODING];
        let a = fingerprint(&names, &[("accept-encoding", "gzip, br")]);
        assert_eq!(a, fingerprint(&names, &[("accept-encoding", "gzip,br")]));
        assert_eq!(
            a,
            fingerprint(&names, &[("accept-encoding", "  gzip ,\tbr ")])
        );
        assert_eq!(
            a,
            fingerprint(
                &names,
                &[("accept-encoding", "gzip"), ("accept-encoding", "br")]
            )
        );
        assert_ne!(a, fingerprint(&names, &[("accept-encoding", "br, gzip")]));
    }

    #[test]
    fn fingerprint_distinguishes_absent_from_empty() {
        let names = [header::ACCEPT_LANGUAGE];
        let absent = fingerprint(&names, &[]);
        let empty = fingerprint(&names, &[("accept-language", "")]);
        assert_ne!(absent, empty);
    }

    #[test]
    fn fingerprint_depends_only_on_named_headers() {
        let names = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];
        let base = fingerprint(
            &names,
            &[("accept-encoding", "gzip"), ("accept-language", "en")],
        );
        assert_eq!(
            base,
            fingerprint(
                &names,
                &[
                    ("accept-language", "en"),
                    ("accept-encoding", "gzip"),
                    ("user-agent", "x")
                ]
            )
        );
        assert_ne!(
            base,
            fingerprint(
                &names,
                &[("accept-encoding", "gzip"), ("accept-language", "de")]
            )
        );
        // Values must not bleed between names.
        assert_ne!(
            fingerprint(&names, &[("accept-encoding", "gzip, en")]),
            fingerprint(
                &names,
                &[("accept-encoding", "gzip"), ("accept-language", "en")]
            )
        );
        let reversed = [header::ACCEPT_LANGUAGE, header::ACCEPT_ENCODING];
        assert_eq!(
            base,
            fingerprint(
                &reversed,
                &[("accept-encoding", "gzip"), ("accept-language", "en")]
            )
        );
    }

    #[test]
    fn fingerprint_is_a_fixed_function() {
        // Stable across runs and processes (shared keys across replicas depend on it).
        assert_eq!(fingerprint(&[], &[]), fingerprint(&[], &[("accept", "x")]));
        let names = [header::ACCEPT_ENCODING];
        assert_eq!(
            fingerprint(&names, &[("accept-encoding", "gzip")]),
            fingerprint(&names, &[("accept-encoding", "gzip")])
        );
    }

    // --- Client conditional requests ---

    fn client_match(req: &[(&str, &str)], stored: &[(&str, &str)]) -> bool {
        client_validators_match(&headers(req), &headers(stored))
    }

    #[test]
    fn if_none_match_strong_tag() {
        let stored = [("etag", "\"abc\"")];
        assert!(client_match(&[("if-none-match", "\"abc\"")], &stored));
        assert!(!client_match(&[("if-none-match", "\"abd\"")], &stored));
        assert!(!client_match(&[("if-none-match", "\"ABC\"")], &stored));
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(client_match(
            &[("if-none-match", "W/\"abc\"")],
            &[("etag", "\"abc\"")]
        ));
        assert!(client_match(
            &[("if-none-match", "\"abc\"")],
            &[("etag", "W/\"abc\"")]
        ));
        assert!(client_match(
            &[("if-none-match", "W/\"abc\"")],
            &[("etag", "W/\"abc\"")]
        ));
    }

    #[test]
    fn if_none_match_list_across_lines_and_commas_in_tags() {
        let stored = [("etag", "\"a,b\"")];
        assert!(client_match(
            &[("if-none-match", "\"x\", W/\"y\" ,\"a,b\"")],
            &stored
        ));
        assert!(client_match(
            &[("if-none-match", "\"x\""), ("if-none-match", "\"a,b\"")],
            &stored
        ));
        assert!(!client_match(&[("if-none-match", "\"a\", \"b\"")], &stored));
    }

    #[test]
    fn if_none_match_star_matches_any_stored_response() {
        assert!(client_match(
            &[("if-none-match", "*")],
            &[("etag", "\"v9\"")]
        ));
        assert!(client_match(&[("if-none-match", " * ")], &[]));
        assert!(!client_match(
            &[("if-none-match", "*, \"v9\"")],
            &[("etag", "\"v9\"")]
        ));
    }

    #[test]
    fn if_none_match_mismatch_ignores_if_modified_since() {
        let stored = [("etag", "\"new\""), ("last-modified", &*date(0))];
        let req = [
            ("if-none-match", "\"old\""),
            ("if-modified-since", &*date(100)),
        ];
        assert!(!client_match(&req, &stored));
    }

    #[test]
    fn garbled_if_none_match_or_stored_etag_never_matches() {
        let stored = [("etag", "\"abc\"")];
        for bad in ["abc", "\"abc", "W/abc", "\"abc\" junk", "w/\"abc\""] {
            assert!(!client_match(&[("if-none-match", bad)], &stored), "{bad}");
        }
        assert!(!client_match(
            &[("if-none-match", "\"abc\"")],
            &[("etag", "abc")]
        ));
        assert!(!client_match(&[("if-none-match", "\"abc\"")], &[]));
        assert!(!client_match(
            &[("if-none-match", "\"abc\"")],
            &[("etag", "\"abc\""), ("etag", "\"abc\"")]
        ));
    }

    #[test]
    fn if_modified_since_against_last_modified() {
        let stored = [("last-modified", &*date(100)), ("date", &*date(500))];
        assert!(client_match(&[("if-modified-since", &date(100))], &stored));
        assert!(client_match(&[("if-modified-since", &date(200))], &stored));
        assert!(!client_match(&[("if-modified-since", &date(99))], &stored));
    }

    #[test]
    fn if_modified_since_falls_back_to_date() {
        let stored = [("date", &*date(500))];
        assert!(client_match(&[("if-modified-since", &date(600))], &stored));
        assert!(!client_match(&[("if-modified-since", &date(400))], &stored));
        assert!(!client_match(&[("if-modified-since", &date(400))], &[]));
    }

    #[test]
    fn garbled_dates_never_match() {
        let stored = [("last-modified", &*date(100))];
        assert!(!client_match(
            &[("if-modified-since", "yesterday")],
            &stored
        ));
        assert!(!client_match(
            &[("if-modified-since", &date(200))],
            &[("last-modified", "0")]
        ));
        assert!(!client_match(
            &[
                ("if-modified-since", &date(200)),
                ("if-modified-since", &date(300))
            ],
            &stored
        ));
        assert!(!client_match(&[], &stored));
    }

    // --- Revalidation with the origin ---

    #[test]
    fn revalidation_sends_both_validators() {
        let lm = date(0);
        let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", &lm)]);
        let sent = revalidation_headers(&stored);
        assert_eq!(
            sent,
            vec![
                (header::IF_NONE_MATCH, HeaderValue::from_static("W/\"v1\"")),
                (
                    header::IF_MODIFIED_SINCE,
                    HeaderValue::from_str(&lm).unwrap()
                ),
            ]
        );
    }

    #[test]
    fn revalidation_without_validators_is_empty() {
        assert!(revalidation_headers(&headers(&[("date", &date(0))])).is_empty());
    }

    #[test]
    fn revalidation_skips_unusable_validators() {
        let stored = headers(&[("etag", "*"), ("last-modified", "last tuesday")]);
        assert!(revalidation_headers(&stored).is_empty());
        let stored = headers(&[("etag", "\"a\", \"b\"")]);
        assert!(revalidation_headers(&stored).is_empty());
    }

    // --- Freshening with 304 ---

    #[test]
    fn not_modified_replaces_headers_but_keeps_framing() {
        let mut stored = headers(&[
            ("content-length", "1234"),
            ("content-encoding", "gzip"),
            ("content-type", "text/html"),
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("date", &date(0)),
        ]);
        let not_modified = headers(&[
            ("content-length", "0"),
            ("content-encoding", "identity"),
            ("etag", "\"v1\""),
            ("cache-control", "max-age=120"),
            ("date", &date(500)),
        ]);
        merge_not_modified(&mut stored, &not_modified);
        assert_eq!(stored["content-length"], "1234");
        assert_eq!(stored["content-encoding"], "gzip");
        assert_eq!(stored["content-type"], "text/html");
        assert_eq!(stored["cache-control"], "max-age=120");
        assert_eq!(stored["date"], date(500).as_str());
    }

    #[test]
    fn not_modified_replaces_all_instances() {
        let mut stored = headers(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "public"),
            ("x-a", "1"),
        ]);
        let not_modified = headers(&[
            ("cache-control", "no-cache"),
            ("cache-control", "stale-if-error=5"),
        ]);
        merge_not_modified(&mut stored, &not_modified);
        let values: Vec<&str> = stored
            .get_all("cache-control")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, ["no-cache", "stale-if-error=5"]);
        assert_eq!(stored["x-a"], "1");
    }

    #[test]
    fn not_modified_ignores_hop_by_hop_headers() {
        let mut stored = headers(&[("x-trace", "stored"), ("etag", "\"v1\"")]);
        let not_modified = headers(&[
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("content-range", "bytes 0-1/2"),
            ("x-trace", "from-304"),
            ("etag", "\"v1\""),
        ]);
        merge_not_modified(&mut stored, &not_modified);
        assert_eq!(stored["x-trace"], "stored");
        for name in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "proxy-authenticate",
            "upgrade",
            "te",
            "trailer",
            "content-range",
        ] {
            assert!(!stored.contains_key(name), "{name}");
        }
    }

    // --- Client request directives ---

    #[test]
    fn request_no_cache_or_max_age_zero_forces_revalidation() {
        assert!(request_requires_revalidation(
            &cc("no-cache"),
            Duration::ZERO,
            secs(600)
        ));
        assert!(request_requires_revalidation(
            &cc("max-age=0"),
            Duration::ZERO,
            secs(600)
        ));
        let pragma = request_cache_control(&headers(&[("pragma", "no-cache")]));
        assert!(request_requires_revalidation(&pragma, secs(1), secs(600)));
    }

    #[test]
    fn request_max_age_compares_with_current_age() {
        assert!(!request_requires_revalidation(
            &cc("max-age=30"),
            secs(30),
            secs(600)
        ));
        assert!(request_requires_revalidation(
            &cc("max-age=30"),
            secs(31),
            secs(600)
        ));
        // Malformed max-age reads as 0: revalidate.
        assert!(request_requires_revalidation(
            &cc("max-age=soon"),
            secs(1),
            secs(600)
        ));
    }

    #[test]
    fn request_min_fresh_needs_remaining_freshness() {
        assert!(!request_requires_revalidation(
            &cc("min-fresh=100"),
            secs(500),
            secs(600)
        ));
        assert!(request_requires_revalidation(
            &cc("min-fresh=101"),
            secs(500),
            secs(600)
        ));
        assert!(request_requires_revalidation(
            &cc("min-fresh=1"),
            secs(700),
            secs(600)
        ));
        assert!(!request_requires_revalidation(
            &cc("min-fresh=0"),
            secs(700),
            secs(600)
        ));
    }

    #[test]
    fn request_without_directives_accepts_fresh_entry() {
        let none = CacheControl::default();
        assert!(!request_requires_revalidation(&none, secs(10), secs(60)));
        assert!(!request_requires_revalidation(
            &cc("max-stale, only-if-cached"),
            secs(10),
            secs(60)
        ));
    }
}
