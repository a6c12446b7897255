//! Answering several ranges at once: a `206` whose body is
//! `multipart/byteranges` (RFC 9110 §14.6), its framing decided by
//! `rfc::byteranges`. The head is the complete response's, less its
//! `Content-Type` (each part carries it), with the multipart type and the
//! whole body's length. Each part is a slice of the stored body, never a
//! copy; a streamed response is cut into the same parts as it arrives
//! (`respond::write_body_parts`).

use crate::rfc::byteranges::Multipart;
use crate::rfc::range::ByteRange;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::response::Parts;
use http::StatusCode;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// The framing of `ranges` of a complete response with head `whole`, with
/// a boundary of its own.
pub fn framing(whole: &Parts, ranges: &[ByteRange], complete: u64) -> Multipart {
    let content_type = whole
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Multipart::new(&boundary(), ranges, content_type, complete)
}

/// The complete response's head made the 206 of a multipart body.
pub fn multipart_head(mut whole: Parts, framing: &Multipart) -> Parts {
    whole.status = StatusCode::PARTIAL_CONTENT;
    whole.headers.remove(header::TRANSFER_ENCODING);
    whole.headers.remove(header::CONTENT_RANGE);
    whole.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(framing.content_length()),
    );
    if let Ok(value) = HeaderValue::from_str(&framing.content_type()) {
        whole.headers.insert(header::CONTENT_TYPE, value);
    }
    whole
}

/// The body's pieces in order: each part's head (as bytes) and its range,
/// then the close delimiter.
pub fn pieces(framing: Multipart) -> (Vec<(Bytes, ByteRange)>, Bytes) {
    let parts = framing
        .parts
        .into_iter()
        .map(|(head, range)| (Bytes::from(head), range))
        .collect();
    (parts, Bytes::from(framing.end))
}

/// A boundary no representation is likely to contain: random per process,
/// counted per response (RFC 2046 §5.1.1: at most 70 characters).
fn boundary() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one(n);
    format!("ringside-{random:016x}{n:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_says_multipart_and_the_whole_length() {
        let whole: Parts = http::Response::builder()
            .header("content-type", "text/plain")
            .header("content-length", "100")
            .header("etag", "\"v1\"")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let ranges = [
            ByteRange { first: 0, last: 9 },
            ByteRange {
                first: 20,
                last: 29,
            },
        ];
        let framing = framing(&whole, &ranges, 100);
        assert!(framing.parts[0].0.contains("Content-Type: text/plain"));
        let length = framing.content_length();
        let head = multipart_head(whole, &framing);
        assert_eq!(head.status, 206);
        assert_eq!(head.headers["content-length"], length.to_string().as_str());
        let content_type = head.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("multipart/byteranges; boundary=ringside-"));
        assert_eq!(head.headers["etag"], "\"v1\"");
        assert_ne!(boundary(), boundary());
    }
}
