//! Protected frames: after the handshake, every frame in each direction
//! carries its sequence number (0, 1, 2... per direction) and, without
//! TLS, is sealed with AES-128-GCM under that direction's session key with
//! the sequence number as the nonce. The receiver expects exactly the next
//! number: a frame replayed, dropped or reordered on the way is refused
//! before it is opened, and one altered fails its tag. The two directions
//! have keys of their own, so a frame cannot be reflected to its sender.
//! Under mutual TLS the records carry the sequence number only: TLS
//! protects them already.
//!
//! A record on the wire: `length (u32) | sequence (u64) | payload [| tag]`,
//! the length counting what follows it (tokio-util's default framing).

use super::wire::{Frame, WireError, MAX_FRAME};
use bytes::{BufMut, Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

/// The tag AES-GCM appends.
const TAG_LEN: usize = 16;

/// How a direction's records are protected (one per direction per
/// connection: the size difference of the variants costs nothing).
#[allow(clippy::large_enum_variant)]
pub enum Protection {
    /// Sealed under this session key.
    Sealed(LessSafeKey),
    /// Left to TLS, which already protects the connection.
    Tls,
}

impl Protection {
    /// A direction's protection from its 16-byte session key, or TLS's.
    pub fn new(key: Option<[u8; 16]>) -> Protection {
        match key.and_then(|k| UnboundKey::new(&AES_128_GCM, &k).ok()) {
            Some(key) => Protection::Sealed(LessSafeKey::new(key)),
            None => Protection::Tls,
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Not the sequence number expected next: replayed, dropped or reordered.
    Sequence { expected: u64, got: u64 },
    /// Its tag does not match: altered, or sealed with another key.
    Tampered,
    /// Opened, but not a frame.
    Wire(WireError),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Sequence { expected, got } => write!(
                f,
                "frame {got} where {expected} was due (replayed, dropped or reordered)"
            ),
            RecordError::Tampered => f.write_str("frame altered or sealed with another key"),
            RecordError::Wire(e) => write!(f, "{e}"),
        }
    }
}

fn nonce(sequence: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&sequence.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The sending end of one direction.
pub struct Sealer {
    protection: Protection,
    next: u64,
}

impl Sealer {
    pub fn new(protection: Protection) -> Sealer {
        Sealer {
            protection,
            next: 0,
        }
    }

    /// Append `frame` to `out` as the direction's next record.
    pub fn seal(&mut self, frame: &Frame, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        let sequence = self.next;
        self.next += 1;
        out.put_u64(sequence);
        let body = out.len();
        frame.encode(out);
        if let Protection::Sealed(key) = &self.protection {
            let aad = Aad::from(sequence.to_be_bytes());
            let sealed = key.seal_in_place_separate_tag(nonce(sequence), aad, &mut out[body..]);
            match sealed {
                Ok(tag) => out.put_slice(tag.as_ref()),
                // Only a payload over GCM's 64 GiB limit fails; frames are
                // far smaller. Dropped rather than sent unsealed.
                Err(_) => return out.truncate(start),
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// The receiving end of one direction.
pub struct Opener {
    protection: Protection,
    expected: u64,
}

impl Opener {
    pub fn new(protection: Protection) -> Opener {
        Opener {
            protection,
            expected: 0,
        }
    }

    /// Open one record (its payload, without the length prefix).
    pub fn open(&mut self, mut record: BytesMut) -> Result<Frame, RecordError> {
        if record.len() < 8 {
            return Err(RecordError::Wire(WireError::Short));
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&record[..8]);
        let got = u64::from_be_bytes(sequence);
        if got != self.expected {
            return Err(RecordError::Sequence {
                expected: self.expected,
                got,
            });
        }
        let _ = record.split_to(8);
        let payload: Bytes = match &self.protection {
            Protection::Tls => record.freeze(),
            Protection::Sealed(key) => {
                let aad = Aad::from(sequence);
                let plain = key
                    .open_in_place(nonce(got), aad, &mut record)
                    .map_err(|_| RecordError::Tampered)?
                    .len();
                record.truncate(plain);
                record.freeze()
            }
        };
        self.expected += 1;
        Frame::parse(payload).map_err(RecordError::Wire)
    }
}

/// A handshake frame (unprotected) as a record: `length | payload`.
pub fn plain(frame: &Frame, out: &mut BytesMut) {
    let payload = frame.to_bytes();
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
}

/// The longest record after the handshake: a frame, its sequence number
/// and its tag.
pub const MAX_RECORD: usize = MAX_FRAME + 8 + TAG_LEN;

/// The framing both sides read records with, none longer than `max`.
pub fn codec(max: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    fn pair() -> (Sealer, Opener) {
        let key = Some([7u8; 16]);
        (
            Sealer::new(Protection::new(key)),
            Opener::new(Protection::new(key)),
        )
    }

    fn records(sealer: &mut Sealer, frames: &[Frame]) -> Vec<BytesMut> {
        let mut out = BytesMut::new();
        for frame in frames {
            sealer.seal(frame, &mut out);
        }
        let mut codec = codec(MAX_RECORD);
        std::iter::from_fn(|| codec.decode(&mut out).unwrap()).collect()
    }

    fn data(n: u8) -> Frame {
        Frame::Data {
            stream: 1,
            end: false,
            data: Bytes::from(vec![n; 100]),
        }
    }

    #[test]
    fn records_open_in_order_and_only_in_order() {
        let (mut sealer, mut opener) = pair();
        let r = records(&mut sealer, &[data(1), data(2), data(3)]);
        assert_eq!(opener.open(r[0].clone()), Ok(data(1)));
        assert_eq!(
            opener.open(r[0].clone()),
            Err(RecordError::Sequence {
                expected: 1,
                got: 0
            }),
            "replayed"
        );
        assert_eq!(
            opener.open(r[2].clone()),
            Err(RecordError::Sequence {
                expected: 1,
                got: 2
            }),
            "reordered"
        );
        assert_eq!(opener.open(r[1].clone()), Ok(data(2)));
    }

    #[test]
    fn altered_records_and_other_keys_fail_their_tag() {
        let (mut sealer, _) = pair();
        let r = records(&mut sealer, &[data(1)]);
        for at in 8..r[0].len() {
            let mut altered = r[0].clone();
            altered[at] ^= 1;
            let mut opener = pair().1;
            assert_eq!(opener.open(altered), Err(RecordError::Tampered), "{at}");
        }
        let mut other = Opener::new(Protection::new(Some([8u8; 16])));
        assert_eq!(other.open(r[0].clone()), Err(RecordError::Tampered));
        let mut altered_sequence = r[0].clone();
        altered_sequence[7] = 0; // still 0, but a fresh opener at 0 and the tag binds it
        assert!(pair().1.open(altered_sequence).is_ok());
    }

    #[test]
    fn under_tls_records_carry_only_their_sequence() {
        let mut sealer = Sealer::new(Protection::Tls);
        let mut opener = Opener::new(Protection::Tls);
        let r = records(&mut sealer, &[data(1), data(2)]);
        assert_eq!(r[0].len(), 8 + data(1).to_bytes().len());
        assert_eq!(opener.open(r[0].clone()), Ok(data(1)));
        assert!(opener.open(r[0].clone()).is_err());
    }
}
