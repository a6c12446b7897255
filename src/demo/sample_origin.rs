//! The demo's origin: a deliberately slow JSON API, served in-process.
//!
//! The demo must run on a fresh machine with nothing else installed, so it
//! brings its own upstream. This module owns that upstream: a small HTTP/1.1
//! server with keep-alive (one tokio task per connection, pipelined requests
//! answered in order) that answers `GET /items/{id}` after a fixed delay with
//! a cacheable JSON body, and counts every request that reaches it, so the
//! demo can report the origin's load from the origin's own point of view.
//!
//! Garbage (a bad request line, oversized headers, a request body framing it
//! does not support) gets a `400`-class answer and the connection is closed.

use super::client::{content_length, find, header_tokens, parse_header_line};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request heads larger than this get `431` and a closed connection.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Request bodies (ignored, but read past) larger than this get `413`.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Connections idle for this long are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the sample origin behaves, and its request counter.
#[derive(Debug, Clone)]
pub struct SampleOrigin {
    /// How long each `/items/{id}` answer takes.
    pub delay: Duration,
    /// The `max-age` of `Cache-Control: public, max-age=N` on every item.
    pub max_age: u32,
    /// Pad every item's JSON to about this many bytes (0: no padding).
    pub body_bytes: usize,
    /// Requests received so far (every parsed request, whatever its path).
    /// Clone the `Arc` before calling [`serve`] to read it while it runs.
    pub hits: Arc<AtomicU64>,
}

impl Default for SampleOrigin {
    fn default() -> Self {
        SampleOrigin {
            delay: Duration::from_millis(50),
            max_age: 5,
            body_bytes: 0,
            hits: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl SampleOrigin {
    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Accept connections on `listener` forever, one task per connection.
pub async fn serve(listener: TcpListener, opts: SampleOrigin) {
    let opts = Arc::new(opts);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let opts = opts.clone();
                tokio::spawn(async move {
                    // A failed connection concerns only its client.
                    let _ = serve_connection(stream, &opts).await;
                });
            }
            Err(e) => {
                // Usually out of file descriptors: wait for some to be freed.
                log::warn!("sample origin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answer the requests of one connection in order until it closes.
async fn serve_connection(mut stream: TcpStream, opts: &SampleOrigin) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4 * 1024);
    loop {
        let request = match next_request(&mut stream, &mut buf).await? {
            Next::Request(request) => request,
            Next::Closed => return Ok(()),
            Next::Refuse(status) => {
                let answer = Answer::error(status).closing();
                return stream.write_all(&answer.to_bytes(false)).await;
            }
        };
        opts.hits.fetch_add(1, Ordering::Relaxed);
        let mut answer = answer(&request, opts).await;
        if !request.keep_alive {
            answer = answer.closing();
        }
        stream
            .write_all(&answer.to_bytes(request.method == "HEAD"))
            .await?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// One parsed request; its body, if any, has been read and dropped.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    if_none_match: Vec<String>,
    keep_alive: bool,
}

/// What reading the next request from a connection gave.
#[derive(Debug)]
enum Next {
    Request(Request),
    /// The client closed (or idled out) between requests.
    Closed,
    /// Unusable input: answer with this status and close.
    Refuse(u16),
}

/// Read the next request from `buf`, reading more from `stream` as needed.
/// Bytes of later (pipelined) requests stay in `buf`.
async fn next_request(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Next> {
    let head = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break buf.split_to(at + 4);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(Next::Refuse(431));
        }
        if !read_more(stream, buf).await? {
            return Ok(Next::Closed);
        }
    };
    let (request, body_len) = match parse_request_head(&head) {
        Ok(parsed) => parsed,
        Err(status) => return Ok(Next::Refuse(status)),
    };
    // GET bodies mean nothing here, but they must be read past.
    while buf.len() < body_len {
        if !read_more(stream, buf).await? {
            return Ok(Next::Closed);
        }
    }
    let _ = buf.split_to(body_len);
    Ok(Next::Request(request))
}

/// Read more bytes; `Ok(false)` when the client closed or went idle.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<bool> {
    match tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(buf)).await {
        Ok(read) => Ok(read? > 0),
        Err(_idle) => Ok(false),
    }
}

/// The request and the length of its body, or the status refusing it.
fn parse_request_head(head: &[u8]) -> Result<(Request, usize), u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.trim_end_matches("\r\n").split("\r\n");
    let (method, target, version) = parse_request_line(lines.next().unwrap_or_default())?;
    let headers = lines
        .map(parse_header_line)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|_| 400u16)?;
    if !header_tokens(&headers, "transfer-encoding").is_empty() {
        return Err(411); // chunked request bodies: not for a GET API
    }
    let body_len = content_length(&headers).map_err(|_| 400u16)?.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(413);
    }
    let connection = header_tokens(&headers, "connection");
    let keep_alive = match version {
        "HTTP/1.1" => !connection.iter().any(|t| t == "close"),
        _ => connection.iter().any(|t| t == "keep-alive"),
    };
    let if_none_match = entity_tags(&headers, "if-none-match");
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        if_none_match,
        keep_alive,
    };
    Ok((request, body_len))
}

/// The entity tags listed in every `name` header, as sent (tags are
/// case-sensitive, so unlike other tokens they are not lowercased).
fn entity_tags(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `GET /items/1 HTTP/1.1` → (`GET`, `/items/1`, `HTTP/1.1`).
fn parse_request_line(line: &str) -> Result<(&str, &str, &str), u16> {
    let parts: Vec<&str> = line.split(' ').collect();
    match parts[..] {
        [method, target, version]
            if !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_uppercase())
                && target.starts_with('/')
                && (version == "HTTP/1.1" || version == "HTTP/1.0") =>
        {
            Ok((method, target, version))
        }
        _ => Err(400),
    }
}

/// The answer to a well-formed request.
async fn answer(request: &Request, opts: &SampleOrigin) -> Answer {
    let path = request.target.split('?').next().unwrap_or_default();
    let Some(id) = item_id(path) else {
        return Answer::error(404);
    };
    if request.method != "GET" && request.method != "HEAD" {
        return Answer::error(405).with_header("Allow", "GET, HEAD");
    }
    tokio::time::sleep(opts.delay).await;
    let etag = format!("W/\"item-{id}\"");
    // If-None-Match compares weakly: W/"x" matches "x" (RFC 9110 §13.1.2).
    let matches = request
        .if_none_match
        .iter()
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag.trim_start_matches("W/"));
    let status = if matches { 304 } else { 200 };
    let body = if matches {
        String::new()
    } else {
        item_json(id, opts.body_bytes)
    };
    Answer::new(status, "application/json", body)
        .with_header(
            "Cache-Control",
            &format!("public, max-age={}", opts.max_age),
        )
        .with_header("ETag", &etag)
}

/// `/items/17` → 17.
fn item_id(path: &str) -> Option<u64> {
    let id = path.strip_prefix("/items/")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

fn item_json(id: u64, body_bytes: usize) -> String {
    let served_at = httpdate::fmt_http_date(SystemTime::now());
    let json = format!("{{\"id\":{id},\"name\":\"item {id}\",\"served_at\":\"{served_at}\"}}\n");
    // `,"pad":""` adds 9 bytes around the padding itself.
    match body_bytes.checked_sub(json.len() + 9) {
        Some(pad) => format!(
            "{},\"pad\":\"{}\"}}\n",
            &json[..json.len() - 2],
            "x".repeat(pad)
        ),
        None => json,
    }
}

/// A response about to be written.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: String) -> Answer {
        let headers = vec![
            ("Date".into(), httpdate::fmt_http_date(SystemTime::now())),
            ("Content-Type".into(), content_type.into()),
        ];
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A short plain-text error that nobody should cache.
    fn error(status: u16) -> Answer {
        let body = format!("{status} {}\n", reason(status));
        Answer::new(status, "text/plain", body).with_header("Cache-Control", "no-store")
    }

    fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn closing(self) -> Answer {
        self.with_header("Connection", "close")
    }

    /// The bytes on the wire; `head_only` for answers to HEAD.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 304 {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::{get, Conn};
    use super::*;
    use std::net::SocketAddr;

    async fn start(delay_ms: u64) -> (SocketAddr, SampleOrigin) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = SampleOrigin {
            delay: Duration::from_millis(delay_ms),
            ..SampleOrigin::default()
        };
        tokio::spawn(serve(listener, opts.clone()));
        (addr, opts)
    }

    #[tokio::test]
    async fn serves_items_as_cacheable_json_and_counts_requests() {
        let (addr, origin) = start(0).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let response = conn.request("GET", "/items/17", &[]).await.unwrap();
        assert_eq!(response.status, 200);
        assert!(response
            .text()
            .starts_with("{\"id\":17,\"name\":\"item 17\",\"served_at\":\""));
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("cache-control"), Some("public, max-age=5"));
        assert_eq!(response.header("etag"), Some("W/\"item-17\""));
        assert!(response.header("date").is_some());
        let missing = conn.request("GET", "/nope", &[]).await.unwrap();
        assert_eq!(missing.status, 404);
        assert!(conn.is_open());
        assert_eq!(origin.hits(), 2);
    }

    #[tokio::test]
    async fn conditional_requests_get_304() {
        let (addr, _origin) = start(0).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let headers = [("If-None-Match", "W/\"item-3\"")];
        let response = conn.request("GET", "/items/3", &headers).await.unwrap();
        assert_eq!((response.status, response.body.len()), (304, 0));
        let other = conn.request("GET", "/items/4", &headers).await.unwrap();
        assert_eq!(other.status, 200);
    }

    #[tokio::test]
    async fn head_and_other_methods() {
        let (addr, _origin) = start(0).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let head = conn.request("HEAD", "/items/1", &[]).await.unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert!(head.header("content-length").is_some());
        let post = conn
            .request("POST", "/items/1", &[("Content-Length", "0")])
            .await
            .unwrap();
        assert_eq!(
            (post.status, post.header("allow")),
            (405, Some("GET, HEAD"))
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (addr, origin) = start(5).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let two = "GET /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                   GET /items/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        stream.write_all(two.as_bytes()).await.unwrap();
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        let first = all.find("\"id\":1,").unwrap();
        let second = all.find("\"id\":2,").unwrap();
        assert!(first < second);
        assert_eq!(origin.hits(), 2);
    }

    #[tokio::test]
    async fn garbage_gets_400_and_a_closed_connection() {
        let (addr, _origin) = start(0).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"\x16\x03\x01 hello\r\n\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(all.contains("Connection: close"));
        // The server is still fine for everyone else.
        assert_eq!(get(addr, "/items/9").await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn oversized_head_gets_431() {
        let (addr, _origin) = start(0).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES + 10)
        );
        stream.write_all(huge.as_bytes()).await.unwrap();
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert!(all.starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn item_ids() {
        assert_eq!(item_id("/items/17"), Some(17));
        assert_eq!(item_id("/items/"), None);
        assert_eq!(item_id("/items/1/2"), None);
        assert_eq!(item_id("/items/-1"), None);
        assert_eq!(item_id("/other/1"), None);
    }
}
