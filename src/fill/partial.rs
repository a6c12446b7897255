//! The fill of one range (RFC 9111 §3.3): a range request for a response
//! too large to store whole asks the origin for its range alone, and the
//! `206` it gets is kept as the URL's partial entry (`keys::partial`),
//! which `proxy/partial.rs` answers the same range and ranges inside it
//! from. A part is judged as the whole would be (a `no-store` or `private`
//! part is never kept) and kept only when it is one part whose
//! `Content-Range` says the complete length, its length is what that range
//! says, it does not vary (one part per URL: no variant may answer for
//! another) and it fits `max_object_size`. Anything else from the origin
//! (a `200` that ignored the `Range`, a multipart answer) is passed on and
//! never kept here: only a part may be stored under a partial key.

use super::{judge, Job, NotKept};
use crate::metrics::{self};
use crate::net::origin::OriginResponse;
use crate::rfc::cache_rules::{self, NotStorable};
use crate::rfc::range;
use http::header;
use http::StatusCode;

/// Why this answer to a range fill is not kept, or None when it is.
pub(super) fn not_storable_because(job: &Job, response: &OriginResponse) -> Option<NotKept> {
    let head = &response.header;
    let one_part = head.status == StatusCode::PARTIAL_CONTENT
        && head
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| range::parse_content_range(v.as_bytes()))
            .is_some_and(|(part, _)| response.content_length() == Some(part.length()));
    if !one_part || cache_rules::vary(&head.headers) != cache_rules::Vary::None {
        metrics::observe_not_stored(NotStorable::Status.as_str());
        return Some(NotKept::Rule(NotStorable::Status));
    }
    // Judged as the complete response it is a part of.
    let mut as_whole = head.clone();
    as_whole.set_status(StatusCode::OK).ok()?;
    if let Err(why) = judge(job, &as_whole) {
        metrics::observe_not_stored(why.as_str());
        return Some(NotKept::Rule(why));
    }
    if response
        .content_length()
        .is_some_and(|n| n > job.max_object_size)
    {
        metrics::TOO_LARGE.inc();
        return Some(NotKept::TooLarge);
    }
    None
}
