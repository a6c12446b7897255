//! The connection screen: requests that pingora's HTTP/1 parser answers
//! with the wrong status, or reads the wrong way, caught in a client
//! connection's bytes before pingora parses them.
//!
//! | what arrives | pingora alone | the screen |
//! |---|---|---|
//! | a request line over 16 KiB | 414 from the proxy up to 64 KiB, then 400 (the target no longer parses as a URI) | 414 |
//! | more header fields than pingora parses ([`MAX_FIELDS`]) | 400 | 431 |
//! | a request head over 64 KiB | 431 from the proxy, after reading up to 1 MiB of it | 431, once past 65 KiB as sent |
//! | a chunk-size line without a size | the last chunk: httparse reads an empty size as 0, and what follows is taken for the next request | 400: the request is refused |
//!
//! RFC 9112 §7.1: `chunk-size = 1*HEXDIG`, so a line without a digit is
//! not a chunk size, and ending the body there is how a request smuggles
//! another past a proxy that reads it the other way.
//!
//! To know where heads and chunk-size lines are, the screen follows the
//! framing of every request on the connection as pingora frames it: a
//! request's body is chunked when it has `Transfer-Encoding` (pingora
//! refuses any other last coding), else `Content-Length` long (identical
//! values repeated or comma-joined are one), else empty. Where it could
//! disagree with pingora (a `Content-Length` pingora refuses anyway, a line
//! ending pingora refuses, an `Upgrade` or `CONNECT` that may turn the
//! connection into something else), it stops screening the connection and
//! pingora's own checks stand: the screen refuses only what it is sure of.
//!
//! A pure state machine over the bytes as they arrive, in any pieces;
//! `connections.rs` feeds it and answers its refusals.

/// Request lines longer than this (without their line end) get 414: the
/// proxy's own limit (`proxy/request.rs`).
pub const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;

/// Header fields pingora parses in one head (its `MAX_HEADERS`); a head
/// with more gets 431.
pub const MAX_FIELDS: usize = 256;

/// Heads longer than this, as sent, get 431. The proxy refuses heads whose
/// target and fields take over 64 KiB (`connections::MAX_REQUEST_HEADER_BYTES`);
/// the head as sent is a little longer (method, version, line ends,
/// blanks), so the screen leaves those to the proxy and stops only heads
/// clearly past it.
pub const MAX_HEAD_BYTES: usize = 65 * 1024;

/// Longer chunk-size lines (extensions) and trailer lines are pingora's to
/// refuse: the screen stops following the connection.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// The start of a header line kept while it arrives: enough for the names
/// the screen reads and a `Content-Length` value.
const KEPT_LINE_BYTES: usize = 64;

/// What the screen refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 414.
    RequestLineTooLong,
    /// 431.
    TooManyFields,
    /// 431.
    HeadTooLarge,
    /// 400; the body is cut there.
    EmptyChunkSize,
}

impl Refusal {
    /// The `reason` label of `ringside_requests_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::RequestLineTooLong => "uri-too-long",
            Refusal::TooManyFields | Refusal::HeadTooLarge => "headers-too-large",
            Refusal::EmptyChunkSize => "bad-chunk",
        }
    }

    /// Whether it refuses a request head (answered on the wire, before the
    /// proxy sees the request) rather than a body under way.
    pub fn is_head(self) -> bool {
        self != Refusal::EmptyChunkSize
    }
}

/// A refusal, and how many of the bytes just scanned come before the
/// refused head or line and may still be read (0 when it began earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub deliver: usize,
}

/// Where the connection is in its stream of requests.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between requests: empty lines are skipped, as httparse skips them.
    Idle,
    /// The request line, so far.
    RequestLine(Line),
    /// The header section, so far.
    Fields(Head),
    /// A `Content-Length` body: bytes still to come.
    Body(u64),
    /// A chunk-size line, so far.
    ChunkSize(ChunkLine),
    /// A chunk's data, and its line end, still to come.
    ChunkData(u64),
    /// Trailer lines after the last chunk: the current one so far.
    Trailers(Line),
    /// Not followed any more (see the module doc); nothing is refused.
    Off,
}

/// A line being read: its length so far, its first bytes, its last byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    bytes: usize,
    kept: [u8; KEPT_LINE_BYTES],
    last: u8,
}

impl Line {
    fn new() -> Line {
        Line {
            bytes: 0,
            kept: [0; KEPT_LINE_BYTES],
            last: 0,
        }
    }

    /// Take `rest` up to and with the line's LF: the bytes used, and
    /// whether the line ended.
    fn take(&mut self, rest: &[u8]) -> (usize, bool) {
        let (used, ended) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (rest.len(), false),
        };
        let body = &rest[..used - usize::from(ended)];
        if self.bytes < KEPT_LINE_BYTES {
            let n = body.len().min(KEPT_LINE_BYTES - self.bytes);
            self.kept[self.bytes..self.bytes + n].copy_from_slice(&body[..n]);
        }
        if let Some(&b) = body.last() {
            self.last = b;
        }
        self.bytes += body.len();
        (used, ended)
    }

    /// Its length without the line end (a CR before the LF belongs to it).
    fn length(&self) -> usize {
        self.bytes - usize::from(self.last == b'\r' && self.bytes > 0)
    }

    /// Whether it ended with CR LF (else a bare LF).
    fn crlf(&self) -> bool {
        self.bytes > 0 && self.last == b'\r'
    }

    /// Its text, when it was kept whole (without the line end).
    fn whole(&self) -> Option<&[u8]> {
        (self.bytes <= KEPT_LINE_BYTES).then(|| &self.kept[..self.length()])
    }

    fn starts_with(&self, prefix: &[u8]) -> bool {
        self.kept[..self.bytes.min(KEPT_LINE_BYTES)].starts_with(prefix)
    }
}

/// A header section being read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    /// Bytes of the head so far, request line included.
    bytes: usize,
    line: Line,
    fields: usize,
    framing: Framing,
}

/// What the head says about the body and the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Framing {
    chunked: bool,
    length: Option<u64>,
    /// The screen cannot follow what comes after this request.
    unsure: bool,
}

/// A chunk-size line being read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ChunkLine {
    bytes: usize,
    /// Hex digits at the start of the line, and their value.
    digits: u32,
    size: u64,
    /// A byte other than a hex digit has come.
    past_size: bool,
    last: u8,
}

/// One connection's screen.
#[derive(Debug)]
pub struct Screen {
    state: State,
}

impl Default for Screen {
    fn default() -> Self {
        Screen::new()
    }
}

impl Screen {
    pub fn new() -> Screen {
        Screen { state: State::Idle }
    }

    /// Follow `bytes`, the next ones the client sent; the first refusal in
    /// them, if any. After a refusal the screen is off.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<Refused> {
        let mut at = 0;
        // Where the head or chunk-size line being read began in `bytes`
        // (0: before them).
        let mut began = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let (used, step) = match &mut self.state {
                State::Off => return None,
                State::Idle => match rest[0] {
                    b'\r' | b'\n' => (1, Step::Go),
                    _ => {
                        began = at;
                        (0, Step::Next(State::RequestLine(Line::new())))
                    }
                },
                State::RequestLine(line) => request_line(line, rest),
                State::Fields(head) => head.fields(rest),
                State::Body(left) => {
                    let used = (*left).min(rest.len() as u64);
                    *left -= used;
                    (
                        used as usize,
                        if *left == 0 { Step::Done } else { Step::Go },
                    )
                }
                State::ChunkSize(line) => {
                    if line.bytes == 0 {
                        began = at;
                    }
                    line.scan(rest)
                }
                State::ChunkData(left) => {
                    let used = (*left).min(rest.len() as u64);
                    *left -= used;
                    match *left {
                        0 => (
                            used as usize,
                            Step::Next(State::ChunkSize(ChunkLine::default())),
                        ),
                        _ => (used as usize, Step::Go),
                    }
                }
                State::Trailers(line) => trailer_line(line, rest),
            };
            at += used;
            match step {
                Step::Go => {}
                Step::Next(state) => self.state = state,
                Step::Done => self.state = State::Idle,
                Step::Refuse(refusal) => {
                    self.state = State::Off;
                    return Some(Refused {
                        refusal,
                        deliver: began,
                    });
                }
            }
        }
        None
    }
}

/// What a state made of the bytes it looked at.
#[derive(Debug)]
enum Step {
    /// Stay, and go on with the next bytes.
    Go,
    /// Go on in this state.
    Next(State),
    /// The request is over: the next byte starts another.
    Done,
    Refuse(Refusal),
}

fn request_line(line: &mut Line, rest: &[u8]) -> (usize, Step) {
    let (used, ended) = line.take(rest);
    if line.length() > MAX_REQUEST_LINE_BYTES {
        return (used, Step::Refuse(Refusal::RequestLineTooLong));
    }
    if !ended {
        return (used, Step::Go);
    }
    let head = Head {
        bytes: line.bytes + 1,
        line: Line::new(),
        fields: 0,
        framing: Framing {
            // pingora answers 405 and closes; tunnels are read before it.
            unsure: line.starts_with(b"CONNECT "),
            ..Framing::default()
        },
    };
    (used, Step::Next(State::Fields(head)))
}

impl Head {
    fn fields(&mut self, rest: &[u8]) -> (usize, Step) {
        let (used, ended) = self.line.take(rest);
        self.bytes += used;
        if self.bytes > MAX_HEAD_BYTES {
            return (used, Step::Refuse(Refusal::HeadTooLarge));
        }
        if !ended {
            return (used, Step::Go);
        }
        if self.line.length() == 0 {
            return (used, self.end_of_head());
        }
        self.fields += 1;
        if self.fields > MAX_FIELDS {
            return (used, Step::Refuse(Refusal::TooManyFields));
        }
        self.read_field();
        self.line = Line::new();
        (used, Step::Go)
    }

    /// What a header line says about framing.
    fn read_field(&mut self) {
        let line = &self.line.kept[..self.line.bytes.min(KEPT_LINE_BYTES)];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return; // pingora refuses the head, or it is a name we do not read
        };
        let name = &line[..colon];
        let framing = &mut self.framing;
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            framing.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            framing.unsure = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let value = self
                .line
                .whole()
                .and_then(|l| content_length(&l[colon + 1..]));
            match value {
                Some(n) if framing.length.is_none_or(|m| m == n) => framing.length = Some(n),
                _ => framing.unsure = true,
            }
        }
    }

    /// The blank line: what follows is the body, or the next request.
    fn end_of_head(&mut self) -> Step {
        let framing = &self.framing;
        if framing.unsure {
            return Step::Next(State::Off);
        }
        match (framing.chunked, framing.length) {
            (true, _) => Step::Next(State::ChunkSize(ChunkLine::default())),
            (false, Some(n)) if n > 0 => Step::Next(State::Body(n)),
            _ => Step::Done,
        }
    }
}

/// A `Content-Length` value as pingora reads it: digits, or the same
/// digits repeated in a comma-separated list. None: pingora refuses it.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|m| m != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

impl ChunkLine {
    fn scan(&mut self, rest: &[u8]) -> (usize, Step) {
        for (i, &b) in rest.iter().enumerate() {
            if b == b'\n' {
                return (i + 1, self.end());
            }
            self.bytes += 1;
            match (b as char).to_digit(16) {
                Some(digit) if !self.past_size => {
                    self.digits += 1;
                    self.size = self.size.saturating_mul(16) + u64::from(digit);
                }
                _ => self.past_size = true,
            }
            self.last = b;
            if self.bytes > MAX_CHUNK_LINE_BYTES || self.digits > 15 {
                // pingora refuses it (httparse: at most 16 digits).
                return (i + 1, Step::Next(State::Off));
            }
        }
        (rest.len(), Step::Go)
    }

    /// The line's LF has come.
    fn end(&self) -> Step {
        if self.bytes == 0 || self.last != b'\r' {
            return Step::Next(State::Off); // a bare LF: pingora refuses it
        }
        match (self.digits, self.size) {
            (0, _) => Step::Refuse(Refusal::EmptyChunkSize),
            (_, 0) => Step::Next(State::Trailers(Line::new())),
            (_, size) => Step::Next(State::ChunkData(size.saturating_add(2))),
        }
    }
}

/// A trailer line; the blank one ends the request.
fn trailer_line(line: &mut Line, rest: &[u8]) -> (usize, Step) {
    let (used, ended) = line.take(rest);
    if line.bytes > MAX_CHUNK_LINE_BYTES || (ended && !line.crlf()) {
        return (used, Step::Next(State::Off)); // pingora's to judge
    }
    match (ended, line.length()) {
        (false, _) => (used, Step::Go),
        (true, 0) => (used, Step::Done),
        (true, _) => (used, Step::Next(State::Trailers(Line::new()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(bytes: &[u8], piece: usize) -> Option<Refused> {
        let mut screen = Screen::new();
        let mut first = None;
        for chunk in bytes.chunks(piece.max(1)) {
            if let Some(refused) = screen.scan(chunk) {
                first.get_or_insert(refused);
            }
        }
        first
    }

    /// The verdict on `bytes`, the same however they are split.
    fn verdict(bytes: &[u8]) -> Option<Refusal> {
        let whole = scan_in_pieces(bytes, bytes.len()).map(|r| r.refusal);
        for piece in [1, 2, 3, 7, 100] {
            let split = scan_in_pieces(bytes, piece).map(|r| r.refusal);
            assert_eq!(
                split,
                whole,
                "pieces of {piece}: {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        whole
    }

    fn get(line: usize, fields: usize) -> Vec<u8> {
        let mut head = format!("GET /{} HTTP/1.1\r\n", "a".repeat(line - 14));
        for i in 0..fields {
            head.push_str(&format!("x-f{i}: v\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    #[test]
    fn request_lines_over_16_kib_are_refused() {
        let request = get(16 * 1024, 0);
        assert_eq!(request.iter().position(|&b| b == b'\r'), Some(16 * 1024));
        assert_eq!(verdict(&get(16 * 1024, 1)), None);
        assert_eq!(
            verdict(&get(16 * 1024 + 1, 1)),
            Some(Refusal::RequestLineTooLong)
        );
        assert_eq!(
            verdict(&get(70 * 1024, 1)),
            Some(Refusal::RequestLineTooLong)
        );
    }

    #[test]
    fn more_fields_than_pingora_parses_are_refused() {
        assert_eq!(verdict(&get(20, MAX_FIELDS)), None);
        assert_eq!(
            verdict(&get(20, MAX_FIELDS + 1)),
            Some(Refusal::TooManyFields)
        );
        let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(70 * 1024));
        assert_eq!(verdict(big.as_bytes()), Some(Refusal::HeadTooLarge));
        let fits = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(63 * 1024));
        assert_eq!(verdict(fits.as_bytes()), None);
    }

    #[test]
    fn bodies_are_followed_to_the_next_head() {
        // A body that looks like an over-long line is a body.
        let body = "x".repeat(20 * 1024);
        let post = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let pipelined = [post.as_bytes(), &get(20 * 1024, 1)].concat();
        let refused = scan_in_pieces(&pipelined, pipelined.len()).unwrap();
        assert_eq!(refused.refusal, Refusal::RequestLineTooLong);
        assert_eq!(refused.deliver, post.len(), "the POST may be read whole");
        assert_eq!(verdict(post.as_bytes()), None);
        // Repeated identical lengths are one; chunked wins over a length.
        let twice = format!(
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc{}",
            "\r\n".repeat(3)
        );
        assert_eq!(verdict(twice.as_bytes()), None);
        let chunked = format!(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             14000\r\n{}\r\n0\r\nx-trailer: 1\r\n\r\n",
            "y".repeat(0x14000)
        );
        let then = [chunked.as_bytes(), &get(20 * 1024, 1)].concat();
        assert_eq!(verdict(chunked.as_bytes()), None);
        assert_eq!(verdict(&then), Some(Refusal::RequestLineTooLong));
    }

    #[test]
    fn a_chunk_size_line_without_a_size_is_refused() {
        let post = |body: &str| {
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
        };
        for body in [
            "5\r\nhello\r\n\r\n\r\n",
            "5\r\nhello\r\n \r\n",
            "\r\n",
            ";x=1\r\n",
        ] {
            assert_eq!(
                verdict(&post(body)),
                Some(Refusal::EmptyChunkSize),
                "{body:?}"
            );
        }
        for body in [
            "5\r\nhello\r\n0\r\n\r\n",
            "5;x=1\r\nhello\r\n0 \r\n\r\n",
            "A\r\n0123456789\r\n0\r\n\r\n",
        ] {
            assert_eq!(verdict(&post(body)), None, "{body:?}");
        }
        let cut = post("5\r\nhello\r\n\r\n");
        let refused = scan_in_pieces(&cut, cut.len()).unwrap();
        assert_eq!(
            &cut[..refused.deliver],
            &post("5\r\nhello\r\n")[..],
            "up to the bad line"
        );
    }

    #[test]
    fn what_pingora_may_read_otherwise_turns_the_screen_off() {
        for head in [
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        ] {
            let then = [head.as_bytes(), &get(20 * 1024, 1)].concat();
            assert_eq!(verdict(&then), None, "{head:?}");
        }
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped() {
        let request = [b"\r\n\r\n\n".as_slice(), &get(20, 2), &get(20, 2)].concat();
        assert_eq!(verdict(&request), None);
    }
}
