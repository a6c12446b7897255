//! The `Cache-Status` vocabulary (RFC 9211): the header every response
//! carries to say what ringside did with it, and the values that more than
//! one module writes. Fills (`fill.rs`) and the request flow (`proxy/`) both
//! name outcomes, so the words live here, below both.

use http::{HeaderName, HeaderValue};

/// The response header.
pub static HEADER: HeaderName = HeaderName::from_static("cache-status");

/// Answered from the cache, fresh.
pub static HIT: HeaderValue = HeaderValue::from_static("ringside; hit");

/// Answered from the cache while a background fill refreshes it.
pub static STALE_WHILE_REVALIDATE: HeaderValue =
    HeaderValue::from_static("ringside; hit; detail=stale-while-revalidate");

/// Fetched from the origin and stored.
pub const STORED: &str = "ringside; fwd=uri-miss; stored";
/// Fetched from the origin and being stored; its length is not known yet,
/// so whether it fits `max_object_size` is not either.
pub const STORING: &str = "ringside; fwd=uri-miss; detail=storing";
/// Answered by the key's owner on another node.
pub const FROM_PEER: &str = "ringside; fwd=uri-miss; detail=peer";
/// A stale copy revalidated with a 304.
pub const REVALIDATED: &str = "ringside; fwd=stale; fwd-status=304";
