//! Request-target normalisation (RFC 3986 §6): the one spelling of a path
//! that the cache key, the path rules and the request sent upstream all use.
//!
//! A shared cache that matches rules on one spelling of a path while the
//! origin resolves another can be made to store a private page under a
//! public rule (web cache deception: `/static/..%2faccount`) or to skip a
//! bypass rule (`//api/session`). So every request target is rewritten
//! before anything looks at it:
//!
//! - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are
//!   decoded (`%73` → `s`, `%2e` → `.`), and every other percent-encoding
//!   gets uppercase hex digits (`%c3%a9` → `%C3%A9`), in path and query;
//! - characters that may not appear raw in a URI (space, `"`, `{`, bytes
//!   over 127...) are percent-encoded, so the result is plain ASCII;
//! - repeated slashes are merged (`/api//session` → `/api/session`), as
//!   nginx's `merge_slashes` does;
//! - dot segments are removed (`/a/./b/../c` → `/a/c`), after decoding, so
//!   `%2e%2e` counts as `..`.
//!
//! What cannot be normalised safely is refused (400): invalid
//! percent-encoding, an encoded `/` or `\` in the path (an origin that
//! decodes them resolves `..%2f` differently than we do; see
//! [`Rejection::EncodedSeparator`]), a raw `\` in the path (some servers
//! read it as `/`), NUL or control characters, a `..` that would climb
//! above the root, a dot segment with parameters (`..;`, which Tomcat and
//! Spring resolve as `..`), and a target that is not a path.
//!
//! The functions are pure and allocate only when the target is not already
//! normal, which is the rare case: the hit path pays one scan.

use std::borrow::Cow;
use std::fmt;

/// Why a request target cannot be normalised safely (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not origin-form: the path does not start with `/`.
    NotAPath,
    /// A `%` not followed by two hex digits.
    InvalidPercentEncoding,
    /// `%2F` or `%5C` in the path: a separator the origin may or may not
    /// decode, so the path's segments are ambiguous.
    EncodedSeparator,
    /// A raw `\` in the path, which some servers treat as `/`.
    Backslash,
    /// NUL (raw or `%00` in the path) or a raw control character.
    ControlCharacter,
    /// A `..` segment above the root (`/../etc`).
    EscapesRoot,
    /// A dot segment with parameters (`..;x`), resolved as `..` by some servers.
    DotSegmentParameter,
}

impl Rejection {
    /// The text of the 400 response.
    pub fn message(self) -> &'static str {
        match self {
            Rejection::NotAPath => "request target is not a path\n",
            Rejection::InvalidPercentEncoding => "invalid percent-encoding in request target\n",
            Rejection::EncodedSeparator => "encoded slash or backslash in request path\n",
            Rejection::Backslash => "backslash in request path\n",
            Rejection::ControlCharacter => "control character in request target\n",
            Rejection::EscapesRoot => "request path climbs above the root\n",
            Rejection::DotSegmentParameter => "dot segment with parameters in request path\n",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message().trim_end())
    }
}

/// Normalise an origin-form request target (path, optional `?query`).
/// Borrowed when the target is already normal.
pub fn normalize_target(target: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    let path = normalize_path(path)?;
    let query = query.map(normalize_query).transpose()?;
    let borrowed = matches!(path, Cow::Borrowed(_)) && !matches!(query, Some(Cow::Owned(_)));
    if borrowed {
        // Both parts are the input's own bytes, and normal bytes are ASCII.
        return Ok(Cow::Borrowed(ascii(target)));
    }
    let mut out = path.into_owned();
    if let Some(query) = query {
        out.push('?');
        out.push_str(&query);
    }
    Ok(Cow::Owned(out))
}

/// Normalise a path (see the module documentation). Borrowed when already normal.
pub fn normalize_path(path: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    if path_is_normal(path) {
        return Ok(Cow::Borrowed(ascii(path)));
    }
    let Some(rest) = path.strip_prefix(b"/") else {
        return Err(Rejection::NotAPath);
    };
    let raw_segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let mut kept: Vec<String> = Vec::with_capacity(raw_segments.len());
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.iter().enumerate() {
        let last = i + 1 == raw_segments.len();
        let segment = normalize_segment(raw)?;
        match segment.as_str() {
            // `//` merged; a final empty segment is a trailing slash.
            "" | "." => trailing_slash = last,
            ".." => {
                kept.pop().ok_or(Rejection::EscapesRoot)?;
                trailing_slash = last;
            }
            s if is_dot_segment_with_parameters(s.as_bytes()) => {
                return Err(Rejection::DotSegmentParameter)
            }
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Normalise a query (without its `?`): percent-encoding only, no structure.
/// Borrowed when already normal.
pub fn normalize_query(query: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    if query_is_normal(query) {
        return Ok(Cow::Borrowed(ascii(query)));
    }
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    while i < query.len() {
        match query[i] {
            b'%' => {
                let byte = percent_decoded(query, i)?;
                push_normal_byte(&mut out, byte, false);
                i += 3;
            }
            b if is_control(b) => return Err(Rejection::ControlCharacter),
            b => {
                push_normal_byte(&mut out, b, allowed_raw_in_query(b));
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// One path segment with its percent-encoding normalised.
fn normalize_segment(raw: &[u8]) -> Result<String, Rejection> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let byte = percent_decoded(raw, i)?;
                match byte {
                    b'/' | b'\\' => return Err(Rejection::EncodedSeparator),
                    0 => return Err(Rejection::ControlCharacter),
                    _ => push_normal_byte(&mut out, byte, false),
                }
                i += 3;
            }
            b'\\' => return Err(Rejection::Backslash),
            b if is_control(b) => return Err(Rejection::ControlCharacter),
            b => {
                push_normal_byte(&mut out, b, allowed_raw_in_segment(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Append `byte` in its normal spelling: unreserved characters raw; others
/// raw only where `raw_ok` (a raw byte allowed there), else as `%XX`. A
/// decoded byte is never `raw_ok`: `a%26b` is not `a&b`.
fn push_normal_byte(out: &mut String, byte: u8, raw_ok: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if raw_ok || is_unreserved(byte) {
        out.push(byte as char);
    } else {
        out.push('%');
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0xf)] as char);
    }
}

/// The byte a `%XX` at `at` stands for.
fn percent_decoded(bytes: &[u8], at: usize) -> Result<u8, Rejection> {
    let hex = bytes
        .get(at + 1..at + 3)
        .ok_or(Rejection::InvalidPercentEncoding)?;
    match (hex_value(hex[0]), hex_value(hex[1])) {
        (Some(high), Some(low)) => Ok(high << 4 | low),
        _ => Err(Rejection::InvalidPercentEncoding),
    }
}

/// Whether `path` is exactly what [`normalize_path`] would return.
fn path_is_normal(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else {
        return false;
    };
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let removable = segment.is_empty() || segment == b"." || segment == b"..";
        if (removable && !(last && segment.is_empty()))
            || is_dot_segment_with_parameters(segment)
            || !encoding_is_normal(segment, allowed_raw_in_segment, true)
        {
            return false;
        }
    }
    true
}

/// Whether `query` is exactly what [`normalize_query`] would return.
fn query_is_normal(query: &[u8]) -> bool {
    encoding_is_normal(query, allowed_raw_in_query, false)
}

/// Every raw byte allowed, every `%XX` uppercase and not an unreserved
/// character (nor, in a path, a separator or NUL).
fn encoding_is_normal(bytes: &[u8], allowed_raw: fn(u8) -> bool, in_path: bool) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let Some(hex) = bytes.get(i + 1..i + 3) else {
                return false;
            };
            if !hex
                .iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
            {
                return false;
            }
            let byte = hex_value(hex[0]).unwrap_or(0) << 4 | hex_value(hex[1]).unwrap_or(0);
            if is_unreserved(byte) || (in_path && matches!(byte, b'/' | b'\\' | 0)) {
                return false;
            }
            i += 3;
        } else if allowed_raw(bytes[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `.;x` or `..;x`: a dot segment carrying path parameters.
fn is_dot_segment_with_parameters(segment: &[u8]) -> bool {
    match segment.iter().position(|&b| b == b';') {
        Some(semicolon) => matches!(&segment[..semicolon], b"." | b".."),
        None => false,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `pchar` minus percent-encodings (RFC 3986 §3.3): unreserved, sub-delims, `:`, `@`.
fn allowed_raw_in_segment(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

/// Query characters (RFC 3986 §3.4): `pchar`, `/` and `?`.
fn allowed_raw_in_query(b: u8) -> bool {
    allowed_raw_in_segment(b) || b == b'/' || b == b'?'
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(h: u8) -> Option<u8> {
    (h as char).to_digit(16).map(|d| d as u8)
}

/// Normal bytes are ASCII by construction; anything else is a bug, shown as "/".
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("/")
}

/// An authority-form target (RFC 9112 §3.2.3, CONNECT's): `host:port`, the
/// port required (`[v6]:port` too), no userinfo; the host lowercased.
pub fn authority_form(text: &str) -> Option<(String, u16)> {
    let authority: http::uri::Authority = text.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let port = authority.port_u16()?;
    let host = authority
        .host()
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Result<String, Rejection> {
        normalize_path(p.as_bytes()).map(Cow::into_owned)
    }

    fn target(t: &str) -> Result<String, Rejection> {
        normalize_target(t.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a;x=1/b",
            "/%C3%A9",
            "/a.b/..c/.d",
            "/a%20b",
        ] {
            assert!(
                matches!(normalize_path(p.as_bytes()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn unreserved_characters_are_decoded_and_hex_uppercased() {
        assert_eq!(path("/api/%73ession").unwrap(), "/api/session");
        assert_eq!(path("/%7euser/%2d%5f").unwrap(), "/~user/-_");
        assert_eq!(path("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(path("/a%3bb").unwrap(), "/a%3Bb");
        assert_eq!(path("/a b\"{é").unwrap(), "/a%20b%22%7B%C3%A9");
    }

    #[test]
    fn dot_segments_are_removed_including_encoded_ones() {
        assert_eq!(path("/static/../account").unwrap(), "/account");
        assert_eq!(path("/static/%2e%2e/account").unwrap(), "/account");
        assert_eq!(path("/static/.%2E/account").unwrap(), "/account");
        assert_eq!(path("/api/./session").unwrap(), "/api/session");
        assert_eq!(path("/a/b/..").unwrap(), "/a/");
        assert_eq!(path("/a/.").unwrap(), "/a/");
        assert_eq!(path("/a/..").unwrap(), "/");
        assert_eq!(path("/.").unwrap(), "/");
        assert_eq!(path("/...").unwrap(), "/...");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(path("//api/session").unwrap(), "/api/session");
        assert_eq!(path("/api//session").unwrap(), "/api/session");
        assert_eq!(path("/a//").unwrap(), "/a/");
        assert_eq!(path("//").unwrap(), "/");
        assert_eq!(path("/a//../b").unwrap(), "/b");
    }

    #[test]
    fn what_cannot_be_normalised_safely_is_refused() {
        use Rejection::*;
        let cases = [
            ("/static/..%2faccount", EncodedSeparator),
            ("/a%2Fb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/static/..\\account", Backslash),
            ("/a%zz", InvalidPercentEncoding),
            ("/a%2", InvalidPercentEncoding),
            ("/a%", InvalidPercentEncoding),
            ("/a%00b", ControlCharacter),
            ("/a\0b", ControlCharacter),
            ("/a\nb", ControlCharacter),
            ("/..", EscapesRoot),
            ("/a/../../b", EscapesRoot),
            ("/%2e%2e/x", EscapesRoot),
            ("/static/..;/account", DotSegmentParameter),
            ("/.;x/a", DotSegmentParameter),
            ("", NotAPath),
            ("%20/x", NotAPath),
            ("x", NotAPath),
        ];
        for (input, want) in cases {
            assert_eq!(path(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn the_query_is_validated_and_its_encoding_normalised() {
        assert_eq!(target("/a?x=%41%2f%3d").unwrap(), "/a?x=A%2F%3D");
        assert_eq!(target("/a?p=/x/../y?z").unwrap(), "/a?p=/x/../y?z");
        assert_eq!(target("/a?x=a b").unwrap(), "/a?x=a%20b");
        assert_eq!(target("/a?x=\\").unwrap(), "/a?x=%5C");
        assert_eq!(target("/a?x=%00").unwrap(), "/a?x=%00");
        assert_eq!(target("/a?"), Ok("/a?".into()));
        assert_eq!(target("/a?x=%g1"), Err(Rejection::InvalidPercentEncoding));
        assert_eq!(target("/a?x=\x01"), Err(Rejection::ControlCharacter));
        assert_eq!(target("/a/./b?x=%2f").unwrap(), "/a/b?x=%2F");
        let enc = "/odd/enc%20path?name=caf%C3%A9&slash=%2F&q=a%26b&cc=max-age%3D60";
        assert!(matches!(
            normalize_target(enc.as_bytes()),
            Ok(Cow::Borrowed(_))
        ));
    }
}
