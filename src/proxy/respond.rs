//! Writing responses: from a stored object (the hit path), from a streamed
//! origin response, and ringside's own short errors. Either kind of answer
//! may be a 304 (the client's validators match), a 412 (its `If-Match` or
//! `If-Unmodified-Since` is false: `cache_rules::preconditions`) or, for a GET with `Range`,
//! a 206 or 416 cut from the complete response (`crate::rfc::range` decides).

use super::byteranges;
use crate::cache::store::CachedObject;
use crate::metrics;
use crate::rfc::cache_rules::{self, Precondition};
use crate::rfc::interim;
use crate::rfc::range::{self, ByteRange, Selection};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

use super::downstream::Downstream;
use tokio::time::Instant;

use crate::rfc::cache_status::{CacheStatus, Detail, HEADER as CACHE_STATUS};

/// Let every response to this request keep the `Date` it carries, which
/// pingora would set to the current time (RFC 9110 §6.6.1): a hit the
/// stored response's, a pass-through the origin's; responses without one
/// (ringside's own) still get the current time. Through the switch
/// `vendor/pingora-core` adds (see `vendor/README.md`).
pub fn keep_response_dates(session: &mut Session) {
    match session.as_downstream_mut() {
        ServerSession::H1(h1) => h1.set_keep_response_date(true),
        ServerSession::H2(h2) => h2.set_keep_response_date(true),
        _ => {}
    }
}

/// Pass an interim (1xx) response the origin sent before the final one to
/// the client whose request the fill is for, when RFC 9110 §15.2 lets it
/// have it (`rfc::interim`). It is never stored.
pub async fn send_interim(session: &mut impl Downstream, head: ResponseHeader) -> Result<()> {
    let req = session.req_header();
    if !interim::forwarded_to(head.status, req.version, &req.headers) {
        return Ok(());
    }
    session.write_response_header(Box::new(head), false).await
}

/// Answer from a stored object: 412 when the client's `If-Match` or
/// `If-Unmodified-Since` is false, 304 when its validators match a
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
    session: &mut impl Downstream,
    object: &CachedObject,
    cache_status: CacheStatus,
    now: Instant,
) -> Result<bool> {
    let cache_status = cache_status.header_value();
    let req = session.req_header();
    let head = req.method == Method::HEAD;
    let age = HeaderValue::from(object.age(now).as_secs());
    if answered_by_preconditions(session, object, &age, &cache_status).await? {
        return Ok(true);
    }
    let req = session.req_header();
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
        Selection::Parts(ranges) => {
            let whole: Parts = (*object.header).clone();
            let framing = byteranges::framing(&whole, &ranges, complete);
            let mut h = byteranges::multipart_head(whole, &framing);
            h.headers.insert(header::AGE, age);
            h.headers.insert(CACHE_STATUS.clone(), cache_status);
            session
                .write_response_header(Box::new(ResponseHeader::from(h)), false)
                .await?;
            let _held = metrics::BodyInFlight::new(object.body.len());
            let (pieces, end) = byteranges::pieces(framing);
            for (head, range) in pieces {
                session.write_response_body(Some(head), false).await?;
                let part = object
                    .body
                    .slice(range.first as usize..=range.last as usize);
                session.write_response_body(Some(part), false).await?;
            }
            session.write_response_body(Some(end), true).await?;
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

/// Evaluate the request's preconditions against a stored response (RFC
/// 9110 §13.2.2) and send its 304 or 412 if they call for one: true when
/// that is the answer.
pub async fn answered_by_preconditions(
    session: &mut impl Downstream,
    object: &CachedObject,
    age: &HeaderValue,
    cache_status: &HeaderValue,
) -> Result<bool> {
    let req = session.req_header();
    let stored = &object.header;
    match cache_rules::evaluate_preconditions(&req.headers, stored.status, &stored.headers) {
        Precondition::Proceed => Ok(false),
        Precondition::NotModified => {
            let mut h = not_modified_header(&object.header)?;
            h.insert_header(header::AGE, age.clone())?;
            h.insert_header(CACHE_STATUS.clone(), cache_status.clone())?;
            session.write_response_header(Box::new(h), true).await?;
            Ok(true)
        }
        Precondition::Failed => send_precondition_failed(session, cache_status.clone()).await,
    }
}

/// 412 for a GET or HEAD whose `If-Match` or `If-Unmodified-Since` is false
/// (RFC 9110 §15.5.13): no content, as the origin would have sent none.
async fn send_precondition_failed(
    session: &mut impl Downstream,
    cache_status: HeaderValue,
) -> Result<bool> {
    let mut h = ResponseHeader::build(StatusCode::PRECONDITION_FAILED, Some(2))?;
    h.insert_header(header::CONTENT_LENGTH, 0)?;
    h.insert_header(CACHE_STATUS.clone(), cache_status)?;
    session.write_response_header(Box::new(h), true).await?;
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
    session: &mut impl Downstream,
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
/// fill's leader). A 2xx whose validators the client already holds is
/// answered 304, and one its `If-Match` or `If-Unmodified-Since` rules out
/// 412, as a hit would be (the fill itself asked unconditionally);
/// a `Range` is answered from the stream when its length is known (the
/// bytes before the part are skipped, the client is answered as soon as the
/// part is through), else with the whole response, as RFC 9110 §14.2 allows.
pub async fn send_stream(
    session: &mut impl Downstream,
    header: Box<ResponseHeader>,
    body: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, crate::net::origin::FetchError>>,
    cache_status: CacheStatus,
) -> Result<bool> {
    let cache_status = cache_status.header_value();
    let req = session.req_header();
    let head = req.method == Method::HEAD;
    // Dropping `body` when answering 304 or 412 stops the leader's share of the fill.
    match cache_rules::evaluate_preconditions(&req.headers, header.status, &header.headers) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            let mut h = not_modified_header(&header)?;
            h.insert_header(CACHE_STATUS.clone(), cache_status.clone())?;
            session.write_response_header(Box::new(h), true).await?;
            return Ok(true);
        }
        Precondition::Failed => return send_precondition_failed(session, cache_status).await,
    }
    // The whole body's length, when the head says it.
    let complete = header
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let selection = complete.map(|complete| (requested_part(req, &header, complete), complete));
    let (mut header, pieces, end) = match selection {
        Some((Selection::Part(part), complete)) => {
            let parts = partial_head(Parts::from(*header), part, complete);
            let header = Box::new(ResponseHeader::from(parts));
            (header, vec![(Bytes::new(), part)], Bytes::new())
        }
        Some((Selection::Parts(ranges), complete)) => {
            let whole = Parts::from(*header);
            let framing = byteranges::framing(&whole, &ranges, complete);
            let head = byteranges::multipart_head(whole, &framing);
            let (pieces, end) = byteranges::pieces(framing);
            (Box::new(ResponseHeader::from(head)), pieces, end)
        }
        Some((Selection::Unsatisfiable, complete)) => {
            return send_unsatisfiable(session, complete, cache_status).await;
        }
        Some((Selection::Whole, _)) | None => {
            (header, vec![(Bytes::new(), WHOLE_BODY)], Bytes::new())
        }
    };
    header.insert_header(CACHE_STATUS.clone(), cache_status)?;
    session.write_response_header(header, head).await?;
    if head {
        return Ok(true);
    }
    write_body_parts(session, body, &pieces, end).await
}

/// Every byte of a body: the window of a response sent whole.
const WHOLE_BODY: ByteRange = ByteRange {
    first: 0,
    last: u64::MAX,
};

/// Write a streamed body as `parts`: for each, its head (empty for a
/// single part or the whole) and the bytes of the body in its window
/// (positions in the whole body, ascending and apart); then `end` (the
/// multipart close delimiter, or empty), and end the response. Reading
/// stops once past the last window.
async fn write_body_parts(
    session: &mut impl Downstream,
    mut body: tokio::sync::mpsc::Receiver<
        std::result::Result<Bytes, crate::net::origin::FetchError>,
    >,
    parts: &[(Bytes, ByteRange)],
    end: Bytes,
) -> Result<bool> {
    let mut position = 0u64;
    let (mut next, mut started) = (0, false);
    while next < parts.len() {
        let Some(chunk) = body.recv().await else {
            break;
        };
        let Ok(chunk) = chunk else {
            // Headers are out; all we can do is cut the response short.
            return Error::e_explain(ErrorType::ReadError, "origin body failed mid-stream");
        };
        let start = position;
        position = start.saturating_add(chunk.len() as u64);
        while let Some((head, window)) = parts.get(next) {
            if window.first >= position {
                break; // this part starts in a later chunk
            }
            if !started && !head.is_empty() {
                session
                    .write_response_body(Some(head.clone()), false)
                    .await?;
            }
            started = true;
            let from = window.first.max(start);
            let to = position.min(window.last.saturating_add(1));
            if from < to {
                let piece = match (from == start, to == position) {
                    (true, true) => chunk.clone(),
                    _ => chunk.slice((from - start) as usize..(to - start) as usize),
                };
                session.write_response_body(Some(piece), false).await?;
            }
            if window.last >= position {
                break; // the part goes on in the next chunk
            }
            (next, started) = (next + 1, false);
        }
    }
    if !end.is_empty() {
        session.write_response_body(Some(end), false).await?;
    }
    session.write_response_body(None, true).await?;
    Ok(true)
}

/// A short plain-text error generated by ringside itself.
pub async fn send_error(
    session: &mut impl Downstream,
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
    session: &mut impl Downstream,
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
    session: &mut impl Downstream,
    code: u16,
    body: &'static str,
    reason: &'static str,
) -> Result<bool> {
    let refused = (&crate::cluster::peers::REFUSED, reason);
    let status = CacheStatus::bypass(Detail::PeerRefused);
    send_plain(session, code, body, status, &[refused]).await
}

async fn send_plain(
    session: &mut impl Downstream,
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
