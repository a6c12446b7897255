//! Partial entries (RFC 9111 §3.3): the stored `206` of a URL too large to
//! store whole answers a range request when it holds every byte asked for,
//! and never otherwise.
//!
//! A GET with one `Range` (and no `If-Range`) for a key this node owns and
//! has no complete response for looks at the URL's partial entry
//! (`keys::partial`); when it is fresh and the range lies inside its part
//! ([`range::within_part`]), the answer is cut from it: the stored head
//! with that range's `Content-Range`, a slice of the stored part. Anything
//! it does not cover (a range reaching outside it, several parts, a
//! suffix or open range it cannot tell the end of, a `HEAD`, no `Range`)
//! goes the usual way, so a part never answers what it does not cover. A
//! complete response, once stored, answers every range itself: lookups
//! find it first and the part is no longer read.
//!
//! A range request whose fill brought a response too large to keep asks
//! the origin for its range instead ([`Ringside::fill_range`], a fill of
//! its own per range, `fill/partial.rs`), and that `206` becomes the URL's
//! partial entry: one per URL, the latest replacing the one before.

use super::downstream::Downstream;
use super::respond::answered_by_preconditions;
use super::Ringside;
use crate::cache::keys;
use crate::cache::store::{CachedObject, Entry};
use crate::metrics;
use crate::rfc::cache_status::CacheStatus;
use crate::rfc::range::{self, ByteRange};
use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use std::sync::Arc;
use tokio::time::Instant;

/// The range of `req` that the partial entry `object` can answer, if any.
pub(super) fn covered(object: &CachedObject, req: &RequestHeader) -> Option<ByteRange> {
    if req.method != Method::GET || object.header.status != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let (stored, complete) = object
        .header
        .headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| range::parse_content_range(v.as_bytes()))?;
    if stored.length() != object.body.len() as u64 {
        return None;
    }
    range::within_part(&req.headers, stored, complete)
}

impl Ringside {
    /// The partial entry of the URL whose plain key is `plain_key`, when it
    /// may answer `req` now (fresh, and the client's Cache-Control allows).
    pub(super) fn usable_partial(
        &self,
        plain_key: &str,
        req: &RequestHeader,
        now: Instant,
    ) -> Option<(Arc<CachedObject>, ByteRange)> {
        if req.method != Method::GET || !req.headers.contains_key(header::RANGE) {
            return None;
        }
        let Some(Entry::Object(object)) = self.node.filler.store.get(&keys::partial(plain_key))
        else {
            return None;
        };
        let client_cc = crate::rfc::cache_rules::request_cache_control(&req.headers);
        if !self.usable_for(&object, &client_cc, req, now) {
            return None;
        }
        let asked = covered(&object, req)?;
        Some((object, asked))
    }
}

/// Answer the range `asked` from the partial entry `object` that covers it
/// (see [`covered`]): its preconditions first, as for any stored response.
pub(super) async fn send_part(
    session: &mut impl Downstream,
    object: &CachedObject,
    asked: ByteRange,
    cache_status: CacheStatus,
    now: Instant,
) -> Result<bool> {
    let cache_status = cache_status.header_value();
    let age = HeaderValue::from(object.age(now).as_secs());
    if answered_by_preconditions(session, object, &age, &cache_status).await? {
        return Ok(true);
    }
    let Some((stored, complete)) = object
        .header
        .headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| range::parse_content_range(v.as_bytes()))
    else {
        return Error::e_explain(
            ErrorType::InternalError,
            "a partial entry without its range",
        );
    };
    let mut head: Parts = (*object.header).clone();
    head.headers.insert(header::AGE, age);
    head.headers
        .insert(crate::rfc::cache_status::HEADER.clone(), cache_status);
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(asked.length()));
    if let Ok(value) = HeaderValue::from_str(&asked.content_range(complete)) {
        head.headers.insert(header::CONTENT_RANGE, value);
    }
    let from = (asked.first - stored.first) as usize;
    let body = object.body.slice(from..from + asked.length() as usize);
    session
        .write_response_header(Box::new(ResponseHeader::from(head)), false)
        .await?;
    let _held = metrics::BodyInFlight::new(object.body.len());
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// Whether the fill of a whole response that turned out too large should
/// become the fill of the request's range: a GET with one `Range` and no
/// `If-Range`, for a key this node owns.
pub(super) fn fills_its_range(req: &RequestHeader, own_key: bool) -> bool {
    own_key
        && req.method == Method::GET
        && req.headers.get_all(header::RANGE).iter().count() == 1
        && !req.headers.contains_key(header::IF_RANGE)
}
