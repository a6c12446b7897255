//! The peer channel's messages and their bytes: every message is one
//! length-delimited frame (a 4-byte big-endian length, then the payload;
//! tokio-util's `LengthDelimitedCodec` reads them), and a payload is a kind
//! byte and that kind's fields, in big-endian integers and length-prefixed
//! byte strings. [`Frame::parse`] reads any payload in one `match` on the
//! kind; [`Frame::encode`] writes one. Nothing here trusts its input: a
//! short, long or malformed payload is a [`WireError`], never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The largest frame either side sends or accepts: a request with its body
/// (bodies keyed for the cache are far smaller), or one piece of a response
/// body ([`MAX_DATA`]) with room to spare.
pub const MAX_FRAME: usize = 1024 * 1024 + 64 * 1024;

/// Response bodies travel in pieces of at most this much, so that one large
/// body does not hold the connection while others' small answers wait.
pub const MAX_DATA: usize = 64 * 1024;

/// Header fields in one request or response head at most.
pub const MAX_FIELDS: usize = 256;

/// A message of the channel. The first four are the handshake (see
/// `handshake.rs`); the others travel protected (see `record.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Asking side, first: who it is, whom it means, its ring, a fresh nonce.
    Hello(Hello),
    /// Answering side: the version it chose, who it is, its ring, its nonce,
    /// and its proof of the cluster secret over both.
    Welcome(Welcome),
    /// Asking side: its proof of the cluster secret over both.
    Finish { mac: [u8; 32] },
    /// The handshake failed: why (then the connection closes).
    Refused { reason: String },
    /// Answering side, protected, first: the channel is open.
    Accepted,
    /// A lookup or fill request on stream `stream`.
    Request(Request),
    /// The asker no longer wants stream `stream`'s answer.
    Cancel { stream: u32 },
    /// A response head (an interim one when its status is 1xx).
    Head(Head),
    /// A piece of a response body; `end`: the last one.
    Data { stream: u32, end: bool, data: Bytes },
    /// The answer broke off (the owner's origin failed mid-body).
    Reset { stream: u32 },
}

/// The asking side's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol versions it speaks, lowest and highest.
    pub versions: (u8, u8),
    /// Its advertised peer address.
    pub from: String,
    /// The member it means to reach, as its ring names it.
    pub to: String,
    pub generation: u64,
    pub nonce: [u8; 32],
}

/// The answering side's reply to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u8,
    /// Its own advertised peer address.
    pub from: String,
    pub generation: u64,
    pub nonce: [u8; 32],
    pub mac: [u8; 32],
}

/// A peer request: what a fill asks of the key's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub stream: u32,
    /// A previous-owner lookup: answered from the cache only.
    pub lookup: bool,
    /// The asker's ring generation (views are compared, as with HTTP).
    pub generation: u64,
    /// `scheme://host:port` of the origin the key belongs to.
    pub origin: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A POST or QUERY cached by its body sends it; empty otherwise.
    pub body: Option<Bytes>,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub stream: u32,
    pub status: u16,
    /// No body follows.
    pub end: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// It ends inside a field.
    Short,
    /// Bytes are left after the last field.
    Trailing,
    /// An unknown kind byte.
    Kind(u8),
    /// A field that is not what its kind allows (a header name, a UTF-8 text).
    Field(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Short => f.write_str("frame ends inside a field"),
            WireError::Trailing => f.write_str("bytes after the frame's last field"),
            WireError::Kind(k) => write!(f, "unknown frame kind {k}"),
            WireError::Field(what) => write!(f, "malformed {what}"),
        }
    }
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const FINISH: u8 = 3;
const REFUSED: u8 = 4;
const ACCEPTED: u8 = 5;
const REQUEST: u8 = 10;
const CANCEL: u8 = 11;
const HEAD: u8 = 20;
const DATA: u8 = 21;
const RESET: u8 = 22;

/// Request flags.
const LOOKUP: u8 = 1;
const HAS_BODY: u8 = 2;

impl Frame {
    /// Read one payload (the frame without its length prefix).
    pub fn parse(payload: Bytes) -> Result<Frame, WireError> {
        let mut r = Reader(payload);
        let frame = match r.u8()? {
            HELLO => Frame::Hello(Hello {
                versions: (r.u8()?, r.u8()?),
                from: r.text()?,
                to: r.text()?,
                generation: r.u64()?,
                nonce: r.array()?,
            }),
            WELCOME => Frame::Welcome(Welcome {
                version: r.u8()?,
                from: r.text()?,
                generation: r.u64()?,
                nonce: r.array()?,
                mac: r.array()?,
            }),
            FINISH => Frame::Finish { mac: r.array()? },
            REFUSED => Frame::Refused { reason: r.text()? },
            ACCEPTED => Frame::Accepted,
            REQUEST => {
                let stream = r.u32()?;
                let flags = r.u8()?;
                Frame::Request(Request {
                    stream,
                    lookup: flags & LOOKUP != 0,
                    generation: r.u64()?,
                    origin: r.text()?,
                    method: r.text()?,
                    path: r.text()?,
                    headers: r.fields()?,
                    body: match flags & HAS_BODY != 0 {
                        true => Some(r.bytes()?),
                        false => None,
                    },
                })
            }
            CANCEL => Frame::Cancel { stream: r.u32()? },
            HEAD => Frame::Head(Head {
                stream: r.u32()?,
                status: r.u16()?,
                end: r.u8()? != 0,
                headers: r.fields()?,
            }),
            DATA => Frame::Data {
                stream: r.u32()?,
                end: r.u8()? != 0,
                data: r.rest(),
            },
            RESET => Frame::Reset { stream: r.u32()? },
            kind => return Err(WireError::Kind(kind)),
        };
        r.finish()?;
        Ok(frame)
    }

    /// Append this frame's payload to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Hello(h) => {
                out.put_u8(HELLO);
                out.put_u8(h.versions.0);
                out.put_u8(h.versions.1);
                put_text(out, &h.from);
                put_text(out, &h.to);
                out.put_u64(h.generation);
                out.put_slice(&h.nonce);
            }
            Frame::Welcome(w) => {
                out.put_u8(WELCOME);
                out.put_u8(w.version);
                put_text(out, &w.from);
                out.put_u64(w.generation);
                out.put_slice(&w.nonce);
                out.put_slice(&w.mac);
            }
            Frame::Finish { mac } => {
                out.put_u8(FINISH);
                out.put_slice(mac);
            }
            Frame::Refused { reason } => {
                out.put_u8(REFUSED);
                put_text(out, reason);
            }
            Frame::Accepted => out.put_u8(ACCEPTED),
            Frame::Request(q) => {
                out.put_u8(REQUEST);
                out.put_u32(q.stream);
                let mut flags = 0;
                if q.lookup {
                    flags |= LOOKUP;
                }
                if q.body.is_some() {
                    flags |= HAS_BODY;
                }
                out.put_u8(flags);
                out.put_u64(q.generation);
                put_text(out, &q.origin);
                put_text(out, &q.method);
                put_text(out, &q.path);
                put_fields(out, &q.headers);
                if let Some(body) = &q.body {
                    put_bytes(out, body);
                }
            }
            Frame::Cancel { stream } => {
                out.put_u8(CANCEL);
                out.put_u32(*stream);
            }
            Frame::Head(h) => {
                out.put_u8(HEAD);
                out.put_u32(h.stream);
                out.put_u16(h.status);
                out.put_u8(h.end as u8);
                put_fields(out, &h.headers);
            }
            Frame::Data { stream, end, data } => {
                out.put_u8(DATA);
                out.put_u32(*stream);
                out.put_u8(*end as u8);
                out.put_slice(data);
            }
            Frame::Reset { stream } => {
                out.put_u8(RESET);
                out.put_u32(*stream);
            }
        }
    }

    /// The payload alone, as bytes (the handshake's transcript uses them).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// A header map as the fields a frame carries, in order.
pub fn fields_of(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn put_len(out: &mut BytesMut, len: usize) {
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_text(out: &mut BytesMut, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.put_slice(bytes);
}

fn put_fields(out: &mut BytesMut, fields: &[(HeaderName, HeaderValue)]) {
    out.put_u16(u16::try_from(fields.len()).unwrap_or(u16::MAX));
    for (name, value) in fields.iter().take(u16::MAX as usize) {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

/// A payload being read, front to back.
struct Reader(Bytes);

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        if self.0.len() < n {
            return Err(WireError::Short);
        }
        Ok(self.0.split_to(n))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(&bytes);
        Ok(array)
    }

    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn text(&mut self) -> Result<String, WireError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Field("text"))
    }

    fn fields(&mut self) -> Result<Vec<(HeaderName, HeaderValue)>, WireError> {
        let count = self.u16()? as usize;
        if count > MAX_FIELDS {
            return Err(WireError::Field("field count"));
        }
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let name = HeaderName::from_bytes(&self.bytes()?)
                .map_err(|_| WireError::Field("field name"))?;
            let value = HeaderValue::from_maybe_shared(self.bytes()?)
                .map_err(|_| WireError::Field("field value"))?;
            fields.push((name, value));
        }
        Ok(fields)
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    fn finish(self) -> Result<(), WireError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(WireError::Trailing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Frame {
        Frame::Request(Request {
            stream: 7,
            lookup: true,
            generation: 42,
            origin: "http://api:80".into(),
            method: "GET".into(),
            path: "/x?y=1".into(),
            headers: vec![(http::header::ACCEPT, HeaderValue::from_static("text/plain"))],
            body: Some(Bytes::from_static(b"{}")),
        })
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let frames = [
            Frame::Hello(Hello {
                versions: (1, 1),
                from: "a:1".into(),
                to: "b:2".into(),
                generation: 9,
                nonce: [3; 32],
            }),
            Frame::Welcome(Welcome {
                version: 1,
                from: "b:2".into(),
                generation: 9,
                nonce: [4; 32],
                mac: [5; 32],
            }),
            Frame::Finish { mac: [6; 32] },
            Frame::Refused {
                reason: "credentials".into(),
            },
            Frame::Accepted,
            request(),
            Frame::Cancel { stream: 3 },
            Frame::Head(Head {
                stream: 3,
                status: 200,
                end: false,
                headers: vec![],
            }),
            Frame::Data {
                stream: 3,
                end: true,
                data: Bytes::from_static(b"body"),
            },
            Frame::Reset { stream: 3 },
        ];
        for frame in frames {
            assert_eq!(Frame::parse(frame.to_bytes()), Ok(frame.clone()));
        }
    }

    #[test]
    fn cut_padded_and_unknown_payloads_are_errors() {
        let bytes = request().to_bytes();
        for cut in 0..bytes.len() {
            assert!(Frame::parse(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut padded = BytesMut::from(&bytes[..]);
        padded.put_u8(0);
        assert_eq!(Frame::parse(padded.freeze()), Err(WireError::Trailing));
        assert_eq!(
            Frame::parse(Bytes::from_static(&[99])),
            Err(WireError::Kind(99))
        );
        let mut bad_name = BytesMut::new();
        bad_name.put_u8(HEAD);
        bad_name.put_u32(1);
        bad_name.put_u16(200);
        bad_name.put_u8(0);
        bad_name.put_u16(1);
        put_bytes(&mut bad_name, b"bad name");
        put_bytes(&mut bad_name, b"v");
        assert_eq!(
            Frame::parse(bad_name.freeze()),
            Err(WireError::Field("field name"))
        );
    }
}
