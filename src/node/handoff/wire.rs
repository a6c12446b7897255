//! The handoff's wire format: stored entries, one after the other, in the
//! body of one `HANDOFF` request.
//!
//! ```text
//! entry := meta "\n" head body
//! meta  := one line of JSON (`Meta`): the key, the entry's timing as the
//!          sender stored it (age now, freshness, stale windows), Vary, hits,
//!          and the lengths of head and body
//! head  := the stored response head as HTTP/1.1 (status line, fields, CRLF CRLF)
//! body  := the stored body
//! ```
//!
//! serde_json reads the meta line and httparse the head; the format itself
//! only adds the lengths that delimit them. The body is covered by the
//! request's signed digest (`peers::BODY_SHA256`), so what is decoded here
//! came from a member; it is still decoded defensively (any inconsistency
//! ends the batch with an error, nothing panics).

use crate::cache::store::CachedObject;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// Header fields one handed-over head may have.
const MAX_FIELDS: usize = 512;

/// An entry's description, ahead of its head and body.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    /// The plain key (a varying response's variant key is derived from it).
    key: String,
    /// Its age when sent, in milliseconds.
    age_ms: u64,
    freshness_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    revalidation_window_ms: u64,
    vary: Vec<String>,
    vary_fingerprint: u64,
    hits: u64,
    /// Stored under a path rule's override (absent when not, and from older
    /// senders).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    overridden: bool,
    /// Header fields in the head.
    fields: usize,
    head_len: usize,
    body_len: usize,
}

/// One entry as decoded: its plain key and the object to store.
pub struct Decoded {
    pub key: String,
    pub object: CachedObject,
}

/// Why a batch could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// The bytes an entry takes on the wire (for the byte bound), about.
pub fn encoded_len(key: &str, object: &CachedObject) -> usize {
    let fields: usize = object
        .header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    256 + key.len() + fields + object.body.len()
}

/// Append the entry stored under the plain key `key` to `out`, with its
/// age as of `now`.
pub fn encode(out: &mut BytesMut, key: &str, object: &CachedObject, now: Instant) {
    let head = head_bytes(&object.header);
    let meta = Meta {
        key: key.to_owned(),
        age_ms: millis(object.age(now)),
        freshness_ms: millis(object.freshness),
        stale_while_revalidate_ms: millis(object.stale_while_revalidate),
        stale_if_error_ms: millis(object.stale_if_error),
        revalidation_window_ms: millis(object.revalidation_window),
        vary: object.vary.iter().map(|n| n.as_str().to_owned()).collect(),
        vary_fingerprint: object.vary_fingerprint,
        hits: object.hits(),
        overridden: object.overridden,
        fields: object.header.headers.len(),
        head_len: head.len(),
        body_len: object.body.len(),
    };
    // A struct of strings and numbers always serialises.
    let line = serde_json::to_vec(&meta).unwrap_or_default();
    out.reserve(line.len() + 1 + head.len() + object.body.len());
    out.put_slice(&line);
    out.put_u8(b'\n');
    out.put_slice(&head);
    out.put_slice(&object.body);
}

/// Read every entry of a batch, received at `now`. The objects' heads are
/// as stored by the sender (with its serving slots).
pub fn decode(batch: &Bytes, now: Instant) -> Result<Vec<Decoded>, Malformed> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < batch.len() {
        let (entry, next) = decode_one(batch, at, now)?;
        entries.push(entry);
        at = next;
    }
    Ok(entries)
}

fn decode_one(batch: &Bytes, at: usize, now: Instant) -> Result<(Decoded, usize), Malformed> {
    let line_end = batch[at..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| at + i)
        .ok_or(Malformed("no meta line"))?;
    let meta: Meta =
        serde_json::from_slice(&batch[at..line_end]).map_err(|_| Malformed("bad meta line"))?;
    let head_start = line_end + 1;
    let body_start = head_start
        .checked_add(meta.head_len)
        .ok_or(Malformed("head length"))?;
    let end = body_start
        .checked_add(meta.body_len)
        .filter(|end| *end <= batch.len())
        .ok_or(Malformed("entry longer than the batch"))?;
    let header = parse_head(&batch[head_start..body_start], meta.fields)?;
    let vary = meta
        .vary
        .iter()
        .map(|n| HeaderName::from_bytes(n.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Malformed("bad vary name"))?;
    let object = CachedObject {
        header,
        body: batch.slice(body_start..end),
        initial_age: Duration::from_millis(meta.age_ms),
        received_at: now,
        freshness: Duration::from_millis(meta.freshness_ms),
        stale_while_revalidate: Duration::from_millis(meta.stale_while_revalidate_ms),
        stale_if_error: Duration::from_millis(meta.stale_if_error_ms),
        revalidation_window: Duration::from_millis(meta.revalidation_window_ms),
        vary,
        vary_fingerprint: meta.vary_fingerprint,
        hits: meta.hits.into(),
        overridden: meta.overridden,
    };
    Ok((
        Decoded {
            key: meta.key,
            object,
        },
        end,
    ))
}

/// The head as HTTP/1.1 bytes.
fn head_bytes(header: &ResponseHeader) -> Vec<u8> {
    let status = header.status;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {}\r\n", status.as_u16()).as_bytes());
    for (name, value) in header.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A head written by [`head_bytes`], read back with httparse.
fn parse_head(bytes: &[u8], fields: usize) -> Result<ResponseHeader, Malformed> {
    if fields > MAX_FIELDS {
        return Err(Malformed("too many header fields"));
    }
    let mut slots = vec![httparse::EMPTY_HEADER; fields];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        _ => return Err(Malformed("bad head")),
    }
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Malformed("bad status"))?;
    let mut header =
        ResponseHeader::build_no_case(status, Some(fields)).map_err(|_| Malformed("bad status"))?;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(Malformed("bad header field"));
        };
        header
            .append_header(name, value)
            .map_err(|_| Malformed("bad header field"))?;
    }
    Ok(header)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(vary: &[&'static str]) -> CachedObject {
        let mut header = ResponseHeader::build(203, None).unwrap();
        header.insert_header("cache-control", "max-age=60").unwrap();
        header.append_header("x-multi", "a").unwrap();
        header.append_header("x-multi", "b").unwrap();
        CachedObject {
            header,
            body: Bytes::from_static(b"body bytes"),
            initial_age: Duration::from_secs(3),
            received_at: Instant::now(),
            freshness: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(7),
            revalidation_window: Duration::from_secs(300),
            vary: vary.iter().map(|n| HeaderName::from_static(n)).collect(),
            vary_fingerprint: 42,
            hits: 9.into(),
            overridden: false,
        }
    }

    #[test]
    fn entries_come_back_as_they_were_sent() {
        let now = Instant::now();
        let mut batch = BytesMut::new();
        encode(&mut batch, "http://o:80/a", &object(&[]), now);
        encode(
            &mut batch,
            "http://o:80/b",
            &object(&["accept-language"]),
            now,
        );
        let batch = batch.freeze();
        assert!(encoded_len("http://o:80/a", &object(&[])) * 2 >= batch.len());
        let later = now + Duration::from_millis(5);
        let entries = decode(&batch, later).unwrap();
        assert_eq!(entries.len(), 2);
        let (a, b) = (&entries[0], &entries[1]);
        assert_eq!(a.key, "http://o:80/a");
        assert_eq!(b.key, "http://o:80/b");
        assert_eq!(a.object.header.status, 203);
        assert_eq!(a.object.header.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(a.object.body, Bytes::from_static(b"body bytes"));
        assert_eq!(a.object.age(later), Duration::from_secs(3));
        assert_eq!(a.object.freshness, Duration::from_secs(60));
        assert_eq!(a.object.stale_if_error, Duration::from_secs(7));
        assert_eq!(a.object.hits(), 9);
        assert!(a.object.vary.is_empty());
        assert_eq!(b.object.vary, [HeaderName::from_static("accept-language")]);
        assert_eq!(b.object.vary_fingerprint, 42);
    }

    #[test]
    fn a_damaged_batch_is_refused_not_misread() {
        let mut batch = BytesMut::new();
        encode(&mut batch, "http://o:80/a", &object(&[]), Instant::now());
        let whole = batch.freeze();
        let now = Instant::now();
        for cut in [1, whole.len() / 2, whole.len() - 1] {
            assert!(decode(&whole.slice(..cut), now).is_err(), "cut at {cut}");
        }
        let mut extra = BytesMut::from(&whole[..]);
        extra.put_slice(b"{\"not\": \"meta\"}\n");
        assert!(decode(&extra.freeze(), now).is_err());
        assert!(decode(&Bytes::new(), now).unwrap().is_empty());
    }
}
