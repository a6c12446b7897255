//! `multipart/byteranges` (RFC 9110 §14.6): the body of a `206` that
//! carries several parts of one representation, each with its own
//! `Content-Type` and `Content-Range`, between boundary delimiters
//! (RFC 2046 §5.1.1).
//!
//! What is decided here is the framing, as text around the parts: the
//! caller writes each part's head, then the part's bytes (a slice of the
//! stored body, never a copy), then the closing delimiter, and announces
//! [`Multipart::content_length`] up front. The boundary is the caller's
//! (random per response: a pure function draws none).

use crate::rfc::range::ByteRange;

/// The framing of one multipart/byteranges body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multipart {
    /// Each part's head (delimiter and fields) and its range.
    pub parts: Vec<(String, ByteRange)>,
    /// The close delimiter, after the last part.
    pub end: String,
    boundary: String,
}

impl Multipart {
    /// The framing of `parts` of a `complete`-byte representation of
    /// `content_type` (none: the parts say none either).
    pub fn new(
        boundary: &str,
        parts: &[ByteRange],
        content_type: Option<&str>,
        complete: u64,
    ) -> Multipart {
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let delimiter = if i == 0 { "" } else { "\r\n" };
                let content_type = content_type
                    .map(|t| format!("Content-Type: {t}\r\n"))
                    .unwrap_or_default();
                let range = part.content_range(complete);
                let head = format!(
                    "{delimiter}--{boundary}\r\n{content_type}Content-Range: {range}\r\n\r\n"
                );
                (head, *part)
            })
            .collect();
        Multipart {
            parts,
            end: format!("\r\n--{boundary}--\r\n"),
            boundary: boundary.to_owned(),
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    /// The whole body's length: every part's head and bytes, and the end.
    pub fn content_length(&self) -> u64 {
        let framing: usize = self.parts.iter().map(|(head, _)| head.len()).sum();
        let bytes: u64 = self.parts.iter().map(|(_, part)| part.length()).sum();
        (framing + self.end.len()) as u64 + bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_between_delimiters_with_their_own_fields() {
        let parts = [
            ByteRange { first: 0, last: 1 },
            ByteRange { first: 5, last: 6 },
        ];
        let body = b"abcdefgh";
        let framing = Multipart::new("B", &parts, Some("text/plain"), 8);
        let mut written = Vec::new();
        for (head, part) in &framing.parts {
            written.extend_from_slice(head.as_bytes());
            written.extend_from_slice(&body[part.first as usize..=part.last as usize]);
        }
        written.extend_from_slice(framing.end.as_bytes());
        let expected = "--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/8\r\n\r\nab\
                        \r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-6/8\r\n\r\nfg\
                        \r\n--B--\r\n";
        assert_eq!(String::from_utf8(written.clone()).unwrap(), expected);
        assert_eq!(framing.content_length(), written.len() as u64);
        assert_eq!(framing.content_type(), "multipart/byteranges; boundary=B");
        let untyped = Multipart::new("B", &parts, None, 8);
        assert!(!untyped.parts[0].0.contains("Content-Type"));
    }
}
