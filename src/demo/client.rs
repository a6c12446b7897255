//! The demo's HTTP/1.1 client: hyper's client connection, one at a time.
//!
//! The demo sends thousands of small requests and times each one, so it
//! wants a bare keep-alive connection without a client library's pool and
//! retries in the way; integration tests want the same to talk to ringside.
//! This module owns that thin layer over `hyper::client::conn::http1`: a
//! request from plain strings, its whole response read into a [`Response`],
//! and the connection kept for the next request unless the server closes it.
//!
//! Nothing here panics on what the network sends: hyper's errors become
//! `io::Error`s (`InvalidData` for a malformed response, `UnexpectedEof` for
//! one cut short, `InvalidInput` for a request that cannot be sent).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Response bodies larger than this are refused (a garbage guard).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lowercase; values of one name together, in the order received.
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
/// After a response that closes the connection, or after any error
/// (including a request future dropped half-way, e.g. by a timeout), the
/// connection is dropped and the next [`Conn::request`] opens a new one to
/// the same address.
pub struct Conn {
    addr: SocketAddr,
    /// `None` when closed; reopened by the next request.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Open a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let sender = open(addr).await?;
        Ok(Conn {
            addr,
            sender: Some(sender),
        })
    }

    /// The address this connection talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection is open and will carry the next request.
    pub fn is_open(&self) -> bool {
        self.sender.is_some()
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
        let request = build_request(method, target, &self.addr.to_string(), headers, body)?;
        // Take the sender out for the duration: if this future is dropped or
        // fails half-way, the connection stays closed rather than half-read.
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => open(self.addr).await?,
        };
        let response = sender.send_request(request).await.map_err(from_hyper)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => from_hyper(*e),
                Err(e) => io::Error::new(io::ErrorKind::InvalidData, e),
            })?
            .to_bytes();
        // Ready again once the response is over, unless the server closes.
        if sender.ready().await.is_ok() {
            self.sender = Some(sender);
        }
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            body: body.to_vec(),
        })
    }
}

/// One request on a fresh connection: `GET path`, then close.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut conn = Conn::connect(addr).await?;
    conn.request("GET", path, &[("Connection", "close")]).await
}

/// A new connection to `addr`, driven by its own task until it closes.
async fn open(addr: SocketAddr) -> io::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(from_hyper)?;
    // Its errors reach the request that was in flight.
    tokio::spawn(connection);
    Ok(sender)
}

/// The request from plain strings; anything that cannot go on the wire (a
/// CR or LF that would smuggle a line in, a bad name) is `InvalidInput`.
fn build_request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Request<Full<Bytes>>> {
    let mut request = Request::new(Full::new(Bytes::copy_from_slice(body)));
    *request.method_mut() = Method::from_bytes(method.as_bytes()).map_err(invalid_input)?;
    *request.uri_mut() = target.parse::<Uri>().map_err(invalid_input)?;
    let map = request.headers_mut();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(invalid_input)?;
        map.append(name, HeaderValue::from_str(value).map_err(invalid_input)?);
    }
    if !map.contains_key(HOST) {
        map.insert(HOST, HeaderValue::from_str(host).map_err(invalid_input)?);
    }
    Ok(request)
}

/// hyper's error as an `io::Error` of the kind that says what happened.
fn from_hyper(e: hyper::Error) -> io::Error {
    let kind = if e.is_parse() || e.is_parse_status() {
        io::ErrorKind::InvalidData
    } else if e.is_incomplete_message() {
        io::ErrorKind::UnexpectedEof
    } else if e.is_user() {
        io::ErrorKind::InvalidInput
    } else {
        // A body cut short is an I/O error (UnexpectedEof) inside hyper's.
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            if let Some(io) = inner.downcast_ref::<io::Error>() {
                return io::Error::new(io.kind(), e);
            }
            source = inner.source();
        }
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

fn invalid_input(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// A hyper server whose answer depends on the path: `/chunked` streams
    /// two chunks, `/close` closes the connection, `/304` and `/204` have no
    /// body; anything else echoes the request's headers, one a line.
    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(|r| async { Ok::<_, Infallible>(answer(r)) });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    fn answer(request: Request<Incoming>) -> http::Response<Body> {
        let full = |text: String| Full::new(Bytes::from(text)).boxed_unsync();
        let builder = http::Response::builder();
        let response = match request.uri().path() {
            "/chunked" => {
                let pieces = ["hello", ", world"].map(|p| Ok(Frame::data(Bytes::from(p))));
                let stream = futures::stream::iter(pieces);
                builder.body(StreamBody::new(stream).boxed_unsync())
            }
            "/close" => builder
                .header("connection", "close")
                .body(full("bye".into())),
            "/304" => builder.status(304).body(full(String::new())),
            _ => {
                let echo = request
                    .headers()
                    .iter()
                    .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap_or("?")));
                builder.body(full(echo.collect()))
            }
        };
        response.unwrap()
    }

    #[tokio::test]
    async fn requests_share_one_keep_alive_connection() {
        let addr = server().await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let first = conn
            .request("GET", "/a", &[("Accept", "*/*")])
            .await
            .unwrap();
        assert_eq!(first.status, 200);
        assert!(first.text().contains("accept: */*\n"), "{}", first.text());
        assert!(first.text().contains(&format!("host: {addr}\n")));
        assert_eq!(
            first.header("CONTENT-LENGTH"),
            Some(&*first.body.len().to_string())
        );
        assert!(conn.is_open());
        let second = conn
            .request("GET", "/b", &[("Host", "example.com")])
            .await
            .unwrap();
        assert!(second.text().contains("host: example.com\n"));
        assert!(!second.text().contains(&addr.to_string()));
        assert!(conn.is_open());
    }

    #[tokio::test]
    async fn chunked_bodies_and_bodiless_answers() {
        let addr = server().await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let chunked = conn.request("GET", "/chunked", &[]).await.unwrap();
        assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
        assert_eq!(chunked.text(), "hello, world");
        let head = conn.request("HEAD", "/a", &[]).await.unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert!(head.header("content-length").is_some());
        let not_modified = conn.request("GET", "/304", &[]).await.unwrap();
        assert_eq!((not_modified.status, not_modified.body.len()), (304, 0));
        // The connection carried all of them.
        assert!(conn.is_open());
        assert_eq!(conn.request("GET", "/a", &[]).await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn connection_close_is_honoured_and_the_next_request_reconnects() {
        let addr = server().await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let closing = conn.request("GET", "/close", &[]).await.unwrap();
        assert_eq!(closing.text(), "bye");
        assert!(!conn.is_open());
        let next = conn.request("GET", "/a", &[]).await.unwrap();
        assert_eq!(next.status, 200);
        assert!(conn.is_open());
    }

    #[tokio::test]
    async fn get_sends_connection_close() {
        let addr = server().await;
        let response = get(addr, "/healthz").await.unwrap();
        assert!(response.text().contains("connection: close\n"));
    }

    #[tokio::test]
    async fn bodies_are_sent_with_their_length() {
        let addr = server().await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let with_body = conn
            .request_with_body("POST", "/a", &[], b"hello")
            .await
            .unwrap();
        assert!(with_body.text().contains("content-length: 5\n"));
        let without = conn.request("POST", "/a", &[]).await.unwrap();
        assert!(!without.text().contains("content-length"));
    }

    #[test]
    fn header_values_cannot_smuggle_lines() {
        let err = build_request("GET", "/", "h", &[("X", "a\r\nEvil: 1")], b"").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(build_request("GET", "/ HTTP/1.1\r\n", "h", &[], b"").is_err());
    }

    #[test]
    fn own_host_header_replaces_the_default() {
        let request = build_request("GET", "/", "127.0.0.1:1", &[("host", "example.com")], b"");
        let request = request.unwrap();
        let hosts: Vec<_> = request.headers().get_all(HOST).iter().collect();
        assert_eq!(hosts, ["example.com"]);
    }
}
