//! Writing responses: from a stored object (the hit path), from a streamed
//! origin response, and ringside's own short errors. Either kind of answer
//! may be a 304 (the client's validators match) or, for a GET with `Range`,
//! a 206 or 416 cut from the complete response (`crate::rfc::range` decides).

use crate::cache::store::CachedObject;
use crate::metrics;
use crate::rfc::cache_rules;
use crate::rfc::range::{self, ByteRange, Selection};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::time::Instant;

use crate::rfc::cache_status::{CacheStatus, Detail, HEADER as CACHE_STATUS};

/// Answer from a stored object: 304 when the client's validators match a
/// stored 2xx (RFC 9110 §13.2.1: preconditions are ignored for others), a
/// 206 or 416 when a GET's `Range` asks for part of it, else the stored
/// response with Age and Cache-Status.
///
/// This is the hit path: the stored head is cloned as plain `http` parts
/// (no case map to copy) that already hold `age` and `cache-status` slots
/// (see `fill::with_serving_slots`), so the clone never grows; the body is a
/// refcounted `Bytes`. A hit costs one header-map clone and no body copy; a
/// request without `Range` pays one header lookup for it, a part is a slice
/// of the shared body.
pub async fn send_object(
    session: &mut Session,
    object: &CachedObject,
    cache_status: CacheStatus,
    now: Instant,
) -> Result<bool> {
    let cache_status = cache_status.header_value();
    let req = session.req_header();
    let head = req.method == Method::HEAD;
    let age = HeaderValue::from(object.age(now).as_secs());
    if object.header.status.is_success()
        && cache_rules::client_validators_match(&req.headers, &object.header.headers)
    {
        let mut h = not_modified_header(&object.header)?;
        h.insert_header(header::AGE, age)?;
        h.insert_header(CACHE_STATUS.clone(), cache_status)?;
        session.write_response_header(Box::new(h), true).await?;
        return Ok(true);
    }
    let complete = object.body.len() as u64;
    match requested_part(req, &object.header, complete) {
        Selection::Whole => {}
        Selection::Part(part) => {
            let mut h = partial_head((*object.header).clone(), part, complete);
            h.headers.insert(header::AGE, age);
            h.headers.insert(CACHE_STATUS.clone(), cache_status);
            let body = object.body.slice(part.first as usize..=part.last as usize);
            session
                .write_response_header(Box::new(ResponseHeader::from(h)), false)
                .await?;
            // A part keeps the whole body alive while it is written.
            let _held = metrics::BodyInFlight::new(object.body.len());
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }
        Selection::Unsatisfiable => {
            return send_unsatisfiable(session, complete, cache_status).await
        }
    }
    let mut parts: Parts = (*object.header).clone();
    parts.headers.insert(header::AGE, age);
    parts.headers.insert(CACHE_STATUS.clone(), cache_status);
    let no_body = head || object.body.is_empty();
    session
        .write_response_header(Box::new(ResponseHeader::from(parts)), no_body)
        .await?;
    if !no_body {
        // Counted while it is written: the client holds the body until then.
        let _held = metrics::BodyInFlight::new(object.body.len());
        session
            .write_response_body(Some(object.body.clone()), true)
            .await?;
    }
    Ok(true)
}

/// A 304 carries the validators and caching headers of the 200 it stands for
/// (RFC 9110 §15.4.5), and any Set-Cookie meant for this client.
fn not_modified_header(stored: &ResponseHeader) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(StatusCode::NOT_MODIFIED, Some(8))?;
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::LAST_MODIFIED,
        header::SET_COOKIE,
        header::VARY,
    ] {
        for value in stored.headers.get_all(&name) {
            h.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(h)
}

/// The part of a response of `complete` bytes that a GET's `Range` asks
/// for; `Whole` for every other request (RFC 9110 §14.2: range handling is
/// defined for GET alone, so a HEAD gets the whole head).
fn requested_part(req: &RequestHeader, response: &ResponseHeader, complete: u64) -> Selection {
    if req.method != Method::GET || !req.headers.contains_key(header::RANGE) {
        return Selection::Whole;
    }
    range::plan(&req.headers, response.status, &response.headers, complete)
}

/// A 200's head made the 206 of one part of it (RFC 9110 §15.3.7.1): every
/// field of the 200 (validators, caching fields, Content-Type) plus
/// `Content-Range`, with the part's length.
fn partial_head(mut parts: Parts, part: ByteRange, complete: u64) -> Parts {
    parts.status = StatusCode::PARTIAL_CONTENT;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(part.length()));
    if let Ok(value) = HeaderValue::from_str(&part.content_range(complete)) {
        parts.headers.insert(header::CONTENT_RANGE, value);
    }
    parts
}

/// 416 for a `Range` that no byte of the representation satisfies, with
/// its length in `Content-Range: bytes */len` (RFC 9110 §15.5.17).
async fn send_unsatisfiable(
    session: &mut Session,
    complete: u64,
    cache_status: HeaderValue,
) -> Result<bool> {
    let mut h = ResponseHeader::build(StatusCode::RANGE_NOT_SATISFIABLE, Some(3))?;
    h.insert_header(header::CONTENT_RANGE, range::unsatisfied_range(complete))?;
    h.insert_header(header::CONTENT_LENGTH, 0)?;
    h.insert_header(CACHE_STATUS.clone(), cache_status)?;
    session.write_response_header(Box::new(h), true).await?;
    Ok(true)
}

/// Stream a fill's response to the client whose request started it (the
/// fill's leader). A 200 whose validators the client already holds is
/// answered 304, as a hit would be (the fill itself asked unconditionally);
/// a `Range` is answered from the stream when its length is known (the
/// bytes before the part are skipped, the client is answered as soon as the
/// part is through), else with the whole response, as RFC 9110 §14.2 allows.
pub async fn send_stream(
    session: &mut Session,
    header: Box<ResponseHeader>,
    body: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, crate::net::origin::FetchError>>,
    cache_status: CacheStatus,
) -> Result<bool> {
    let cache_status = cache_status.header_value();
    let req = session.req_header();
    let head = req.method == Method::HEAD;
    if header.status == StatusCode::OK
        && cache_rules::client_validators_match(&req.headers, &header.headers)
    {
        let mut h = not_modified_header(&header)?;
        h.insert_header(CACHE_STATUS.clone(), cache_status.clone())?;
        session.write_response_header(Box::new(h), true).await?;
        return Ok(true); // dropping `body` stops the leader's share of the fill
    }
    // The whole body's length, when the head says it.
    let complete = header
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let selection = complete.map(|complete| (requested_part(req, &header, complete), complete));
    let (mut header, window) = match selection {
        Some((Selection::Part(part), complete)) => {
            let parts = partial_head(Parts::from(*header), part, complete);
            (Box::new(ResponseHeader::from(parts)), part)
        }
        Some((Selection::Unsatisfiable, complete)) => {
            return send_unsatisfiable(session, complete, cache_status).await;
        }
        Some((Selection::Whole, _)) | None => (header, WHOLE_BODY),
    };
    header.insert_header(CACHE_STATUS.clone(), cache_status)?;
    session.write_response_header(header, head).await?;
    if head {
        return Ok(true);
    }
    write_body_window(session, body, window).await
}

/// Every byte of a body: the window of a response sent whole.
const WHOLE_BODY: ByteRange = ByteRange {
    first: 0,
    last: u64::MAX,
};

/// Write the bytes of a streamed body that fall in `window` (positions in
/// the whole body) and end the response; stop reading once past it.
async fn write_body_window(
    session: &mut Session,
    mut body: tokio::sync::mpsc::Receiver<
        std::result::Result<Bytes, crate::net::origin::FetchError>,
    >,
    window: ByteRange,
) -> Result<bool> {
    let mut position = 0u64;
    while position <= window.last {
        let Some(chunk) = body.recv().await else {
            break;
        };
        let Ok(chunk) = chunk else {
            // Headers are out; all we can do is cut the response short.
            return Error::e_explain(ErrorType::ReadError, "origin body failed mid-stream");
        };
        let start = position;
        position = start.saturating_add(chunk.len() as u64);
        let from = window.first.max(start);
        let to = position.min(window.last.saturating_add(1));
        if from < to {
            let piece = match (from == start, to == position) {
                (true, true) => chunk,
                _ => chunk.slice((from - start) as usize..(to - start) as usize),
            };
            session.write_response_body(Some(piece), false).await?;
        }
    }
    session.write_response_body(None, true).await?;
    Ok(true)
}

/// A short plain-text error generated by ringside itself.
pub async fn send_error(
    session: &mut Session,
    code: u16,
    body: &'static str,
    cache_status: CacheStatus,
) -> Result<bool> {
    send_plain(session, code, body, cache_status, &[]).await
}

/// A 503 that asks the client to come back in a second; on the peer
/// listener (`peer`) marked as a refusal, so that the asking node loads
/// from its origin instead.
pub async fn send_unavailable(
    session: &mut Session,
    body: &'static str,
    cache_status: CacheStatus,
    peer: bool,
) -> Result<bool> {
    let retry = (&header::RETRY_AFTER, "1");
    let refused = (&crate::cluster::peers::REFUSED, "overloaded");
    let extra: &[(&HeaderName, &'static str)] = match peer {
        true => &[retry, refused],
        false => &[retry],
    };
    send_plain(session, 503, body, cache_status, extra).await
}

/// A peer listener's refusal: an error that says so in `x-ringside-refused`.
pub async fn send_refusal(
    session: &mut Session,
    code: u16,
    body: &'static str,
    reason: &'static str,
) -> Result<bool> {
    let refused = (&crate::cluster::peers::REFUSED, reason);
    let status = CacheStatus::bypass(Detail::PeerRefused);
    send_plain(session, code, body, status, &[refused]).await
}

async fn send_plain(
    session: &mut Session,
    code: u16,
    body: &'static str,
    cache_status: CacheStatus,
    extra: &[(&HeaderName, &'static str)],
) -> Result<bool> {
    let mut h = ResponseHeader::build(code, Some(5 + extra.len()))?;
    for (name, value) in extra {
        h.insert_header((*name).clone(), *value)?;
    }
    h.insert_header(header::CONTENT_TYPE, "text/plain")?;
    h.insert_header(header::CONTENT_LENGTH, body.len())?;
    h.insert_header(header::CACHE_CONTROL, "no-store")?;
    h.insert_header(CACHE_STATUS.clone(), cache_status.header_value())?;
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(true)
}
