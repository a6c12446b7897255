//! The body of a request a path rule caches by its body (a POST listed in
//! the rule's `methods`, or a QUERY), read before anything else so that it
//! can key the request: up to the rule's `max_key_body`, within
//! `cache.key_body_timeout`.
//!
//! What can come of it ([`Read`]):
//! - the whole body, within the limit: the request is a read, keyed by its
//!   method and a digest of the body (of its canonical JSON with
//!   `body_key: json`, see `rfc/json.rs`); its fill carries the body;
//! - a body announced (Content-Length) over the limit: never read here, the
//!   request passes through untouched;
//! - a body that grows past the limit: what was read is held, and goes to
//!   the origin first, then the rest as it arrives (`request_body_filter`):
//!   passed through, uncached, with nothing of it stored;
//! - a body that ended just past the limit: it was read whole, and goes to
//!   the origin in a fill that stores nothing;
//! - a body slower than the timeout: 408; one that breaks off: 400.

use super::policy::BodyPolicy;
use crate::config::BodyKey;
use crate::rfc::json;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::proxy::Session;
use std::fmt::Write;
use std::time::Duration;

/// What reading a request's body for its key brought.
pub enum Read {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Content-Length announces more than the limit: nothing was read.
    Announced,
    /// More than the limit, and more to come: the part read.
    Prefix(Bytes),
    /// More than the limit, read to its end.
    WholeTooLarge(Bytes),
    /// No byte for longer than the timeout allows.
    TooSlow,
    /// The body broke off, or its framing is invalid.
    Broken,
}

/// Read the body of `session`'s request as `policy` says.
pub async fn read(session: &mut Session, policy: &BodyPolicy, timeout: Duration) -> Read {
    let limit = policy.max;
    let announced = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Read::Announced;
    }
    let mut body = BytesMut::new();
    let reading = async {
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > limit {
                        return Ok(session.is_body_done());
                    }
                }
                Ok(None) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(timeout, reading).await {
        Err(_) => Read::TooSlow,
        Ok(Err(_)) => Read::Broken,
        Ok(Ok(done)) => {
            let body = body.freeze();
            match (body.len() as u64 > limit, done) {
                (false, _) => Read::Whole(body),
                (true, true) => Read::WholeTooLarge(body),
                (true, false) => Read::Prefix(body),
            }
        }
    }
}

/// What keys a request by `body` (32 hex digits of its SHA-256, or of its
/// canonical JSON with `body_key: json` when it is JSON).
pub fn digest(body: &[u8], key: BodyKey) -> String {
    let canonical = match key {
        BodyKey::Json => json::canonical(body),
        BodyKey::Raw => None,
    };
    let hashed = canonical.as_deref().unwrap_or(body);
    let digest = ring::digest::digest(&ring::digest::SHA256, hashed);
    let mut hex = String::with_capacity(32);
    for byte in &digest.as_ref()[..16] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_json_is_one_key_and_raw_keys_keep_bytes_apart() {
        let a = br#"{"q": "tea", "page": 1}"#;
        let b = br#"{"page":1,"q":"tea"}"#;
        assert_eq!(digest(a, BodyKey::Json), digest(b, BodyKey::Json));
        assert_ne!(digest(a, BodyKey::Raw), digest(b, BodyKey::Raw));
        assert_ne!(
            digest(b, BodyKey::Json),
            digest(br#"{"page":2,"q":"tea"}"#, BodyKey::Json)
        );
        assert_eq!(
            digest(b"x", BodyKey::Json),
            digest(b"x", BodyKey::Raw),
            "not JSON: raw"
        );
        assert_eq!(digest(b"", BodyKey::Raw).len(), 32);
    }
}
