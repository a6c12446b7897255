//! A minimal HTTP/1.1 client over a keep-alive TCP connection.
//!
//! The demo needs to send thousands of small requests and time each one
//! without a client library's pools and retries in the way; integration tests
//! need the same thing to talk to ringside byte by byte. So this module owns
//! exactly that: write a request, read one response back (framed by
//! `Content-Length`, `Transfer-Encoding: chunked`, the end of the connection,
//! or no body at all for HEAD, 1xx, 204 and 304), and keep the connection for
//! the next request unless the server said `Connection: close`.
//!
//! Nothing here panics on what the network sends: malformed responses become
//! `io::ErrorKind::InvalidData` errors.

use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response heads larger than this are refused (a garbage guard).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Response bodies larger than this are refused (a garbage guard).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// In the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), handy in tests and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive connection to one server.
///
/// After a response with `Connection: close`, or after any error (including a
/// request future dropped half-way, e.g. by a timeout), the connection is
/// closed and the next [`Conn::request`] opens a new one to the same address.
pub struct Conn {
    addr: SocketAddr,
    /// `None` when closed; reopened by the next request.
    stream: Option<TcpStream>,
    /// Bytes read from the stream but not consumed yet.
    buf: BytesMut,
}

impl Conn {
    /// Open a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = open(addr).await?;
        Ok(Conn {
            addr,
            stream: Some(stream),
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// The address this connection talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection is open and will carry the next request.
    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Send a request without a body and read its whole response.
    ///
    /// `target` is sent as is (`/items/1?x=y`, or an absolute URL for a
    /// proxy). A `Host` header naming the connected address is added unless
    /// `headers` has one.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        self.request_with_body(method, target, headers, &[]).await
    }

    /// Send a request with a body (sent with Content-Length when not empty)
    /// and read its whole response.
    pub async fn request_with_body(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let length = body.len().to_string();
        let mut all_headers = headers.to_vec();
        if !body.is_empty() {
            all_headers.push(("Content-Length", &length));
        }
        let mut head = request_head(method, target, &self.host(), &all_headers)?;
        head.extend_from_slice(body);
        // Take the stream out for the duration: if this future is dropped or
        // fails half-way, the connection stays closed rather than half-read.
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                self.buf.clear();
                open(self.addr).await?
            }
        };
        stream.write_all(&head).await?;
        let mut reader = Reader {
            stream: &mut stream,
            buf: &mut self.buf,
        };
        let (response, keep_alive) = read_response(&mut reader, method == "HEAD").await?;
        if keep_alive {
            self.stream = Some(stream);
        }
        Ok(response)
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// One request on a fresh connection: `GET path`, then close.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut conn = Conn::connect(addr).await?;
    conn.request("GET", path, &[("Connection", "close")]).await
}

async fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn request_head(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> io::Result<Vec<u8>> {
    let has_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    let mut lines = vec![format!("{method} {target} HTTP/1.1")];
    if !has_host {
        lines.push(format!("Host: {host}"));
    }
    lines.extend(headers.iter().map(|(n, v)| format!("{n}: {v}")));
    let head = lines.join("\r\n") + "\r\n\r\n";
    // A CR or LF inside a part would smuggle extra lines into the request.
    if head.matches('\n').count() != lines.len() + 1 {
        return Err(invalid_input(
            "CR or LF inside the method, target or a header",
        ));
    }
    Ok(head.into_bytes())
}

/// Reads from a stream through a buffer that keeps what was read too far.
struct Reader<'a> {
    stream: &'a mut TcpStream,
    buf: &'a mut BytesMut,
}

impl Reader<'_> {
    /// Read more bytes into the buffer; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        Ok(self.stream.read_buf(self.buf).await? > 0)
    }

    /// Everything up to and including the first `delimiter`, at most `limit` bytes.
    async fn until(&mut self, delimiter: &[u8], limit: usize) -> io::Result<BytesMut> {
        loop {
            if let Some(at) = find(self.buf, delimiter) {
                return Ok(self.buf.split_to(at + delimiter.len()));
            }
            if self.buf.len() > limit {
                return Err(invalid_data("line or header block too long"));
            }
            if !self.fill().await? {
                return Err(closed_early());
            }
        }
    }

    /// Exactly `n` bytes.
    async fn exactly(&mut self, n: usize) -> io::Result<BytesMut> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(closed_early());
            }
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything until the server closes the connection.
    async fn until_closed(&mut self) -> io::Result<BytesMut> {
        while self.fill().await? {
            if self.buf.len() > MAX_BODY_BYTES {
                return Err(invalid_data("body too large"));
            }
        }
        Ok(self.buf.split())
    }
}

/// Read one final response (skipping 1xx interim ones). Also says whether the
/// connection may carry another request.
async fn read_response(
    reader: &mut Reader<'_>,
    head_request: bool,
) -> io::Result<(Response, bool)> {
    loop {
        let head = reader.until(b"\r\n\r\n", MAX_HEAD_BYTES).await?;
        let head = parse_response_head(&head)?;
        if (100..200).contains(&head.status) && head.status != 101 {
            continue; // 100 Continue, 103 Early Hints: the real answer follows
        }
        let framing = body_framing(&head, head_request)?;
        let keep_alive = head.keep_alive && framing != Framing::UntilClose;
        let body = read_body(reader, framing).await?;
        let response = Response {
            status: head.status,
            headers: head.headers,
            body,
        };
        return Ok((response, keep_alive));
    }
}

/// What the status line and headers say, before the body.
#[derive(Debug)]
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `keep-alive`.
    keep_alive: bool,
}

fn parse_response_head(head: &[u8]) -> io::Result<ResponseHead> {
    let text = std::str::from_utf8(head).map_err(|_| invalid_data("response head is not UTF-8"))?;
    let mut lines = text.trim_end_matches("\r\n").split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, status) = parse_status_line(status_line)?;
    let headers = lines
        .map(parse_header_line)
        .collect::<io::Result<Vec<_>>>()?;
    let connection = header_tokens(&headers, "connection");
    let keep_alive = match version {
        "HTTP/1.1" => !connection.iter().any(|t| t == "close"),
        _ => connection.iter().any(|t| t == "keep-alive"),
    };
    Ok(ResponseHead {
        status,
        headers,
        keep_alive,
    })
}

/// `HTTP/1.1 200 OK` → (`HTTP/1.1`, 200).
fn parse_status_line(line: &str) -> io::Result<(&str, u16)> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(invalid_data(&format!("bad status line {line:?}")));
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| invalid_data(&format!("bad status code {code:?}")))?;
    Ok((version, status))
}

/// `Name: value` → (`Name`, `value`), with the value trimmed.
pub(super) fn parse_header_line(line: &str) -> io::Result<(String, String)> {
    match line.split_once(':') {
        Some((name, value)) if !name.is_empty() && !name.contains([' ', '\t']) => {
            Ok((name.to_owned(), value.trim().to_owned()))
        }
        _ => Err(invalid_data(&format!("bad header line {line:?}"))),
    }
}

/// The comma-separated tokens of every `name` header, lowercased.
pub(super) fn header_tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn body_framing(head: &ResponseHead, head_request: bool) -> io::Result<Framing> {
    if head_request || matches!(head.status, 100..=199 | 204 | 304) {
        return Ok(Framing::None);
    }
    let codings = header_tokens(&head.headers, "transfer-encoding");
    if let Some(last) = codings.last() {
        return Ok(if last == "chunked" {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    match content_length(&head.headers)? {
        Some(n) if n > MAX_BODY_BYTES => Err(invalid_data("body too large")),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::UntilClose),
    }
}

/// The `Content-Length`, if any; differing values are an error.
pub(super) fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    let mut found = None;
    for value in header_tokens(headers, "content-length") {
        let n = value
            .parse::<usize>()
            .map_err(|_| invalid_data(&format!("bad Content-Length {value:?}")))?;
        if found.is_some_and(|f| f != n) {
            return Err(invalid_data("conflicting Content-Length values"));
        }
        found = Some(n);
    }
    Ok(found)
}

async fn read_body(reader: &mut Reader<'_>, framing: Framing) -> io::Result<Vec<u8>> {
    match framing {
        Framing::None => Ok(Vec::new()),
        Framing::Length(n) => Ok(reader.exactly(n).await?.to_vec()),
        Framing::Chunked => read_chunked(reader).await,
        Framing::UntilClose => Ok(reader.until_closed().await?.to_vec()),
    }
}

/// A chunked body: `size[;ext]\r\n data \r\n` ... `0\r\n [trailers] \r\n`.
async fn read_chunked(reader: &mut Reader<'_>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = reader.until(b"\r\n", 1024).await?;
        let size = parse_chunk_size(&line)?;
        if size == 0 {
            skip_trailers(reader).await?;
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(invalid_data("body too large"));
        }
        let mut chunk = reader.exactly(size + 2).await?;
        if !chunk.ends_with(b"\r\n") {
            return Err(invalid_data("chunk not followed by CRLF"));
        }
        chunk.truncate(size);
        body.extend_from_slice(&chunk);
    }
}

/// `1a;name=value\r\n` → 26.
fn parse_chunk_size(line: &[u8]) -> io::Result<usize> {
    let text = std::str::from_utf8(line).map_err(|_| invalid_data("chunk size is not UTF-8"))?;
    let digits = text
        .trim_end_matches("\r\n")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    usize::from_str_radix(digits, 16)
        .map_err(|_| invalid_data(&format!("bad chunk size {digits:?}")))
}

async fn skip_trailers(reader: &mut Reader<'_>) -> io::Result<()> {
    loop {
        let line = reader.until(b"\r\n", MAX_HEAD_BYTES).await?;
        if line.len() == 2 {
            return Ok(());
        }
    }
}

/// Where `needle` first occurs in `haystack`.
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid_data(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn invalid_input(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_owned())
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before the response was complete",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// A loopback server for one connection: for each canned answer, read one
    /// request head and write the answer. Returns the request heads it read.
    async fn canned_server(answers: Vec<&'static str>) -> (SocketAddr, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut requests = Vec::new();
            for answer in answers {
                let mut reader = Reader {
                    stream: &mut stream,
                    buf: &mut buf,
                };
                let head = reader.until(b"\r\n\r\n", MAX_HEAD_BYTES).await.unwrap();
                requests.push(String::from_utf8(head.to_vec()).unwrap());
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        (addr, task)
    }

    #[tokio::test]
    async fn content_length_bodies_on_one_keep_alive_connection() {
        let (addr, server) = canned_server(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno\n",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let first = conn
            .request("GET", "/a", &[("Accept", "*/*")])
            .await
            .unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.body, b"hello");
        assert_eq!(first.header("x-a"), Some("1"));
        assert_eq!(first.header("CONTENT-LENGTH"), Some("5"));
        assert!(conn.is_open());
        let second = conn.request("GET", "/b", &[]).await.unwrap();
        assert_eq!((second.status, second.text().as_str()), (404, "no\n"));

        let requests = server.await.unwrap();
        assert_eq!(
            requests[0],
            format!("GET /a HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n")
        );
        assert!(requests[1].starts_with("GET /b HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers() {
        let (addr, _server) = canned_server(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let response = conn.request("GET", "/", &[]).await.unwrap();
        assert_eq!(response.text(), "hello, world");
        // The connection stays usable after the last chunk and trailers.
        let next = conn.request("GET", "/", &[]).await.unwrap();
        assert_eq!((next.status, next.body.len()), (204, 0));
    }

    #[tokio::test]
    async fn head_and_304_have_no_body_despite_content_length() {
        let (addr, _server) = canned_server(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1000\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let head = conn.request("HEAD", "/", &[]).await.unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        let not_modified = conn
            .request("GET", "/", &[("If-None-Match", "\"x\"")])
            .await
            .unwrap();
        assert_eq!((not_modified.status, not_modified.body.len()), (304, 0));
        let last = conn.request("GET", "/", &[]).await.unwrap();
        assert_eq!(last.text(), "ok");
    }

    #[tokio::test]
    async fn interim_100_continue_is_skipped() {
        let (addr, _server) = canned_server(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let response = conn.request("GET", "/", &[]).await.unwrap();
        assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    }

    #[tokio::test]
    async fn connection_close_reads_to_end_and_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for body in ["first", "second"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = BytesMut::new();
                let mut reader = Reader {
                    stream: &mut stream,
                    buf: &mut buf,
                };
                reader.until(b"\r\n\r\n", MAX_HEAD_BYTES).await.unwrap();
                let answer = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}");
                stream.write_all(answer.as_bytes()).await.unwrap();
                // Dropping the stream closes it: that ends the body.
            }
        });
        let mut conn = Conn::connect(addr).await.unwrap();
        let first = conn.request("GET", "/", &[]).await.unwrap();
        assert_eq!(first.text(), "first");
        assert!(!conn.is_open());
        let second = conn.request("GET", "/", &[]).await.unwrap();
        assert_eq!(second.text(), "second");
    }

    #[tokio::test]
    async fn get_sends_connection_close() {
        let (addr, server) =
            canned_server(vec!["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        let response = get(addr, "/healthz").await.unwrap();
        assert_eq!(response.text(), "ok");
        let requests = server.await.unwrap();
        assert!(requests[0].contains("\r\nConnection: close\r\n"));
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors_not_panics() {
        let (addr, _server) = canned_server(vec!["SSH-2.0-OpenSSH\r\n\r\n"]).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let err = conn.request("GET", "/", &[]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let (addr, _server) =
            canned_server(vec!["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let err = conn.request("GET", "/", &[]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!conn.is_open());
    }

    #[test]
    fn header_values_cannot_smuggle_lines() {
        let err = request_head("GET", "/", "h", &[("X", "a\r\nEvil: 1")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(request_head("GET", "/ HTTP/1.1\r\n", "h", &[]).is_err());
    }

    #[test]
    fn own_host_header_replaces_the_default() {
        let head = request_head("GET", "/", "127.0.0.1:1", &[("host", "example.com")]).unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line("HTTP/1.1 200 OK").unwrap(),
            ("HTTP/1.1", 200)
        );
        assert_eq!(
            parse_status_line("HTTP/1.0 204").unwrap(),
            ("HTTP/1.0", 204)
        );
        assert!(parse_status_line("HTTP/2 200 OK").is_err());
        assert!(parse_status_line("HTTP/1.1 2000 OK").is_err());
        assert!(parse_status_line("HTTP/1.1 abc OK").is_err());
    }

    #[test]
    fn http_1_0_closes_unless_keep_alive() {
        let head = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        let head =
            parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(head.keep_alive);
        let head = parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
    }
}
