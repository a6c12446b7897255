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

use std::borrow::Cow;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use siphasher::sip::SipHasher13;

use super::headers;

mod policy;
pub use policy::{has_credentials, Audience, Overrides};
mod head_freshening;
mod http_date;
mod preconditions;
mod targeted;
pub use head_freshening::head_describes_stored;
pub use http_date::parse_http_date;
pub use preconditions::{evaluate as evaluate_preconditions, Precondition};
pub use targeted::targeted;

/// RFC 9111 §1.2.2: a delta-seconds value too large to represent is read as 2^31.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

// ---------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------

/// Parsed Cache-Control (request or response). Multiple header lines and comma lists are merged;
/// directive names are case-insensitive; values may be quoted (`"60"`). A duplicated or malformed
/// delta-seconds value for max-age/s-maxage is treated as 0 (RFC 9111 §4.2.1: invalid => stale).
/// delta-seconds saturate at 2^31 instead of overflowing (§1.2.2). `private="set-cookie"` or
/// `no-cache="x"` with a list of field names (§5.2.2.7, §5.2.2.4) lets a shared cache store the
/// response without those fields ([`CacheControl::unshared_fields`]); a list that is empty, not
/// field names, or names a field the stored response needs (its caching fields, its framing and
/// representation metadata) is read as the unqualified directive (conservative).
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
    /// The fields `no-cache="..."` and `private="..."` name: a shared cache
    /// stores the response without them (RFC 9111 §5.2.2.4, §5.2.2.7), so
    /// they go to the client whose request brought the response, to no other.
    pub unshared_fields: Vec<HeaderName>,
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
            b"no-cache" => match argument.and_then(unshared_field_names) {
                Some(names) => self.unshared(names),
                None => self.no_cache = true,
            },
            b"private" => match argument.and_then(unshared_field_names) {
                Some(names) => self.unshared(names),
                None => self.private = true,
            },
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

impl CacheControl {
    fn unshared(&mut self, names: Vec<HeaderName>) {
        for name in names {
            if !self.unshared_fields.contains(&name) {
                self.unshared_fields.push(name);
            }
        }
    }
}

/// Fields a stored response cannot do without: what the cache judges it by
/// and what frames or describes its body. A qualified `no-cache` or
/// `private` naming one of them is read unqualified.
const NEEDED_FIELDS: [HeaderName; 12] = [
    header::AGE,
    header::CACHE_CONTROL,
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::CONTENT_TYPE,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::TRANSFER_ENCODING,
    header::VARY,
];

/// The field names of a qualified `no-cache` / `private` (`"a, b"`), when
/// every one is a valid name a stored response can do without.
fn unshared_field_names(argument: &[u8]) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for name in split_list(argument) {
        let name = HeaderName::from_bytes(name).ok()?;
        if NEEDED_FIELDS.contains(&name) {
            return None;
        }
        names.push(name);
    }
    (!names.is_empty()).then_some(names)
}

/// The fields of a response a shared cache must not store with it
/// (`no-cache="..."`, `private="..."`), as this cache judges it (`targets`:
/// RFC 9213 targeted fields). Empty for nearly every response.
pub fn unshared_fields(resp_headers: &HeaderMap, targets: &[HeaderName]) -> Vec<HeaderName> {
    CacheControl::parse(&targeted(resp_headers, targets)).unshared_fields
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    /// The request was an authenticated one (RFC 9111 §3.5): it carried a
    /// credential, in `Authorization` or any other credential header.
    Authorization,
    SetCookie,
    VaryStar,
    /// No explicit freshness, and no default TTL configured.
    NoFreshness,
}

impl NotStorable {
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
}

/// Policy knobs from config. `Default` = no default TTL, no heuristic freshness, Set-Cookie
/// responses not stored, `Authorization` the one credential header, a shared audience and
/// no overrides.
#[derive(Debug, Clone)]
pub struct RuleOptions {
    /// TTL applied when the origin gives no freshness information (no s-maxage, max-age,
    /// Expires). `None` = do not store such responses ([`NotStorable::NoFreshness`]).
    pub default_ttl: Option<Duration>,
    /// Heuristic freshness (RFC 9111 §4.2.2) for responses with Last-Modified and no explicit
    /// freshness, when no default TTL applies. `None` = off.
    pub heuristic: Option<Heuristic>,
    /// Store responses that carry Set-Cookie.
    pub cache_set_cookie: bool,
    /// Targeted cache-control fields this cache obeys, in order (RFC 9213).
    pub targeted: Arc<[HeaderName]>,
    /// How long past freshness a stored response may answer when the origin fails or
    /// cannot be reached, beyond the origin's own stale-if-error (RFC 9111 §4.2.4 allows
    /// it unless the response forbids serving stale). Zero: only what the origin says.
    pub stale_if_error: Duration,
    /// The same for stale-while-revalidate.
    pub stale_while_revalidate: Duration,
    /// Request headers that carry a credential (RFC 9111 §3.5's `Authorization`, and
    /// whatever else the configuration lists).
    pub credentials: Arc<[HeaderName]>,
    /// The client's request carried a credential, found before anything was
    /// stripped from it (a hop-by-hop `Proxy-Authorization` included): the
    /// fill's own request may no longer show it.
    pub credentialed: bool,
    /// Whom a response is stored for.
    pub audience: Audience,
    /// Origin directives `default_ttl` wins over.
    pub overrides: Overrides,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            default_ttl: None,
            heuristic: None,
            cache_set_cookie: false,
            targeted: Arc::new([]),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            credentials: Arc::new([header::AUTHORIZATION]),
            credentialed: false,
            audience: Audience::Shared,
            overrides: Overrides::default(),
        }
    }
}

/// A fraction of the time since Last-Modified, capped (RFC 9111 §4.2.2; 10% is usual).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heuristic {
    pub fraction: f64,
    pub max: Duration,
}

impl Heuristic {
    /// The lifetime for a response last modified `since_modified` before its Date.
    fn lifetime(&self, since_modified: Duration) -> Duration {
        since_modified
            .mul_f64(self.fraction.clamp(0.0, 1.0))
            .min(self.max)
    }
}

/// Decides whether a response may be stored by a shared cache (RFC 9111 §3, §3.5).
/// Checks run in the order of the [`NotStorable`] variants and the first failure is reported.
///
/// - Only GET responses are stored (the proxy fetches GET to serve HEAD).
/// - Statuses heuristically cacheable by default (RFC 9110 §15.1) are stored; any other final
///   status only with explicit freshness or `public` (RFC 9111 §3); 206 (no range support)
///   and 304 (not a representation) never.
/// - `no-store` in request or response, or `private` in the response, forbids storing.
/// - A request with a credential (`Authorization`, or any of `opts.credentials`) is stored
///   only if the response has `public`, `s-maxage` or `must-revalidate` (§3.5), unless the
///   audience is shared despite credentials, or private.
/// - `Set-Cookie` forbids storing for a shared audience unless `opts.cache_set_cookie`;
///   `Vary: *` always does.
/// - For a private audience (one caller's partition), `private` is allowed and `s-maxage`
///   does not apply; overridden directives are not read at all (see [`judged`]).
/// - There must be freshness: s-maxage/max-age/Expires, or `opts.default_ttl`, or (a
///   heuristically cacheable status with Last-Modified) `opts.heuristic`. A `no-cache`
///   response is instead storable exactly when it has a validator (ETag or Last-Modified),
///   since every use revalidates it.
pub fn check_storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    opts: &RuleOptions,
) -> Result<(), NotStorable> {
    let (resp_headers, resp_cc) = judged(resp_headers, opts);
    let resp_headers = &*resp_headers;
    let explicit_freshness = has_explicit_freshness(resp_headers, &resp_cc, opts);
    let shared = opts.audience.is_shared();

    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    if !status_is_storable(status, explicit_freshness || resp_cc.public) {
        return Err(NotStorable::Status);
    }
    if resp_cc.no_store || CacheControl::parse(req_headers).no_store {
        return Err(NotStorable::NoStore);
    }
    if resp_cc.private && shared {
        return Err(NotStorable::Private);
    }
    let credentials = opts.credentialed || has_credentials(req_headers, &opts.credentials);
    if credentials && opts.audience == Audience::Shared && !allows_authorized(&resp_cc) {
        return Err(NotStorable::Authorization);
    }
    if resp_headers.contains_key(header::SET_COOKIE) && !opts.cache_set_cookie && shared {
        return Err(NotStorable::SetCookie);
    }
    if vary(resp_headers) == Vary::Star {
        return Err(NotStorable::VaryStar);
    }
    let heuristic = opts.heuristic.is_some()
        && heuristically_cacheable(status)
        && resp_headers.contains_key(header::LAST_MODIFIED);
    let usable = if resp_cc.no_cache {
        has_validators(resp_headers)
    } else {
        explicit_freshness || opts.default_ttl.is_some() || heuristic
    };
    if !usable {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// The response as this cache judges it: its targeted field in place of
/// Cache-Control (RFC 9213, see [`targeted`]), and its directives as the
/// rule's audience and overrides leave them ([`Audience`], [`Overrides`]).
pub fn judged<'a>(
    resp_headers: &'a HeaderMap,
    opts: &RuleOptions,
) -> (Cow<'a, HeaderMap>, CacheControl) {
    let headers = targeted(resp_headers, &opts.targeted);
    let mut cc = CacheControl::parse(&headers);
    opts.audience.apply(&mut cc);
    opts.overrides.apply(&mut cc);
    (headers, cc)
}

/// Whether the rule's overrides set aside something this response said:
/// it is then stored and served under an override.
pub fn served_under_override(resp_headers: &HeaderMap, opts: &RuleOptions) -> bool {
    if !opts.overrides.any() {
        return false;
    }
    let headers = targeted(resp_headers, &opts.targeted);
    opts.overrides
        .set_aside(&CacheControl::parse(&headers), &headers)
}

/// RFC 9111 §3: any final status may be stored when the response says how long it is fresh
/// (or `public`); without that, only the heuristically cacheable ones. 206 needs range
/// support and 304 is not a representation: neither is stored. 1xx are not final.
fn status_is_storable(status: StatusCode, explicitly_cacheable: bool) -> bool {
    let code = status.as_u16();
    if code < 200 || code == 206 || code == 304 {
        return false;
    }
    heuristically_cacheable(status) || explicitly_cacheable
}

/// RFC 9110 §15.1 (less 206, which needs range support).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// RFC 9111 §3.5: a shared cache may store a response to an authorized request only if the
/// response explicitly allows it.
fn allows_authorized(resp_cc: &CacheControl) -> bool {
    resp_cc.public || resp_cc.s_maxage.is_some() || resp_cc.must_revalidate
}

/// The origin stated a lifetime. A present but unreadable Expires still counts: it means
/// "already expired" (RFC 9111 §5.3), so the default TTL must not override it (unless the
/// rule overrides the origin's freshness).
fn has_explicit_freshness(resp_headers: &HeaderMap, cc: &CacheControl, opts: &RuleOptions) -> bool {
    let expires = resp_headers.contains_key(header::EXPIRES) && !opts.overrides.freshness;
    cc.s_maxage.is_some() || cc.max_age.is_some() || expires
}

fn has_validators(resp_headers: &HeaderMap) -> bool {
    resp_headers.contains_key(header::ETAG) || resp_headers.contains_key(header::LAST_MODIFIED)
}

// ---------------------------------------------------------------------------
// Freshness, age, staleness
// ---------------------------------------------------------------------------

/// Freshness lifetime for a shared cache (RFC 9111 §4.2.1): s-maxage, else max-age, else
/// Expires - Date (Date missing or invalid => `response_time`; invalid or repeated Expires,
/// e.g. "0" => already expired => zero), else `opts.default_ttl`, else the heuristic from
/// Last-Modified (§4.2.2; the caller stores only heuristically cacheable statuses without
/// explicit freshness), else zero. Response `no-cache` => zero (must revalidate every time).
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
    if resp_headers.contains_key(header::EXPIRES) && !opts.overrides.freshness {
        let Some(expires) = single_http_date(resp_headers, &header::EXPIRES) else {
            return Duration::ZERO;
        };
        let date = single_http_date(resp_headers, &header::DATE).unwrap_or(response_time);
        return expires.duration_since(date).unwrap_or(Duration::ZERO);
    }
    if let Some(ttl) = opts.default_ttl {
        return ttl;
    }
    let (Some(heuristic), Some(modified)) = (
        opts.heuristic,
        single_http_date(resp_headers, &header::LAST_MODIFIED),
    ) else {
        return Duration::ZERO;
    };
    let date = single_http_date(resp_headers, &header::DATE).unwrap_or(response_time);
    heuristic.lifetime(date.duration_since(modified).unwrap_or(Duration::ZERO))
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

/// The Age header as a duration: of a list (`Age: 7200, 0`) or repeated
/// lines, the first value counts (RFC 9111 §5.1 lets a recipient use the
/// first and discard the rest); absent or garbled => zero.
fn age_value(resp_headers: &HeaderMap) -> Duration {
    let seconds = resp_headers
        .get(header::AGE)
        .and_then(|line| split_list(line.as_bytes()).first().copied())
        .and_then(parse_delta_seconds)
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
/// `opts.stale_if_error` widens the stale-if-error window where serving stale is allowed.
pub fn stale_windows(cc: &CacheControl, opts: &RuleOptions) -> StaleWindows {
    if forbids_stale(cc) {
        return StaleWindows::default();
    }
    let origin_if_error = Duration::from_secs(cc.stale_if_error.unwrap_or(0));
    let origin_while_revalidate = Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0));
    StaleWindows {
        while_revalidate: origin_while_revalidate.max(opts.stale_while_revalidate),
        if_error: origin_if_error.max(opts.stale_if_error),
    }
}

/// RFC 9111 §4.2.4: no stale copy may be served at all.
fn forbids_stale(cc: &CacheControl) -> bool {
    cc.no_cache || cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some()
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
/// dropped), so whitespace around commas does not matter. For the content-negotiation fields
/// whose values are case-insensitive tokens (Accept-Encoding, Accept-Language, Accept-Charset;
/// RFC 9110 §12.5) case and whitespace inside elements (`gzip;q=0.5`) do not matter either,
/// and for Accept-Encoding, where order carries no meaning, neither does order. An absent
/// header fingerprints differently from an empty one. The hash is SipHash-1-3 with a zero key
/// over an unambiguous, endian-independent encoding, so it is stable across processes and
/// machines.
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
        for element in vary_elements(name, req_headers) {
            write_tagged(&mut hasher, ELEMENT, &element);
        }
        hasher.write(&[END]);
    }
    hasher.finish()
}

/// The request's elements of one Vary field, in the form that compares equal when the
/// semantics are equal (see [`vary_fingerprint`]).
fn vary_elements(name: &HeaderName, req_headers: &HeaderMap) -> Vec<Vec<u8>> {
    let negotiation = [
        header::ACCEPT_ENCODING,
        header::ACCEPT_LANGUAGE,
        header::ACCEPT_CHARSET,
    ];
    let canonical = negotiation.contains(name);
    let mut elements: Vec<Vec<u8>> = req_headers
        .get_all(name)
        .iter()
        .flat_map(|line| split_list(line.as_bytes()))
        .map(|element| match canonical {
            true => element
                .iter()
                .filter(|b| !matches!(b, b' ' | b'\t'))
                .map(u8::to_ascii_lowercase)
                .collect(),
            false => element.to_vec(),
        })
        .collect();
    if name == header::ACCEPT_ENCODING {
        elements.sort();
    }
    elements
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

/// Whether a request's `If-Range` lets its `Range` apply to this response (RFC 9110 §13.1.5);
/// `true` without one. An entity-tag matches by strong comparison (§8.8.3.2): neither tag may
/// be weak and the opaque tags must be equal. An HTTP-date matches when it equals the
/// response's Last-Modified and that is a strong validator: at least 60 s before the response's
/// Date (§8.8.2.2). Anything else (a repeated or garbled field, no validator to compare with)
/// is `false`: the client then gets the whole response, never a part of another one.
pub fn if_range_matches(req_headers: &HeaderMap, resp_headers: &HeaderMap) -> bool {
    let mut values = req_headers.get_all(header::IF_RANGE).iter();
    let Some(first) = values.next() else {
        return true;
    };
    if values.next().is_some() {
        return false;
    }
    /// The opaque part of a single strong entity-tag.
    fn strong_tag(value: &[u8]) -> Option<&[u8]> {
        let value = value.trim_ascii();
        match parse_entity_tag(value)? {
            _ if value.starts_with(b"W/") => None,
            (opaque, rest) if rest.trim_ascii().is_empty() => Some(opaque),
            _ => None,
        }
    }
    let value = first.as_bytes();
    let trimmed = value.trim_ascii();
    if trimmed.starts_with(b"\"") || trimmed.starts_with(b"W/") {
        let stored = single_value(resp_headers, &header::ETAG).map(|v| strong_tag(v.as_bytes()));
        return matches!((strong_tag(value), stored), (Some(a), Some(Some(b))) if a == b);
    }
    let since = std::str::from_utf8(value)
        .ok()
        .and_then(|v| parse_http_date(v.trim()));
    let last_modified = single_http_date(resp_headers, &header::LAST_MODIFIED);
    let date = single_http_date(resp_headers, &header::DATE);
    match (since, last_modified, date) {
        (Some(since), Some(last_modified), Some(date)) => {
            since == last_modified && last_modified + Duration::from_secs(60) <= date
        }
        _ => false,
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
/// (Content-Length, Content-Encoding, Transfer-Encoding, Content-Range), hop-by-hop headers
/// (Connection, Keep-Alive, TE, Trailer, Upgrade, Proxy-*, and anything the 304's Connection
/// header names, RFC 9110 §7.6.1), and Set-Cookie, which are kept from the stored response.
/// A 304's Set-Cookie is for the one client whose request caused it; a shared cache must not
/// merge it into what it hands to everyone (the caller gives it to that client alone).
pub fn merge_not_modified(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let connection_options: Vec<HeaderName> = headers::connection_options(not_modified).collect();
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
    framing.contains(name)
        || headers::is_hop_by_hop(name)
        || name == header::SET_COOKIE
        || name.as_str().starts_with("proxy-")
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
    parse_http_date(text.trim())
}

#[cfg(test)]
mod tests;
