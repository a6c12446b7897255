//! The demo's origin: a deliberately slow JSON API, served in-process.
//!
//! The demo must run on a fresh machine with nothing else installed, so it
//! brings its own upstream. This module owns that upstream: hyper's HTTP/1.1
//! server (keep-alive and pipelining included, one tokio task per
//! connection) answering `GET /items/{id}` after a fixed delay with a
//! cacheable JSON body, and counting every request that reaches it, so the
//! demo can report the origin's load from the origin's own point of view.
//! Each item has a version, 0 at first: `PUT /items/{id}` bumps it, and
//! every answer says it (`"version"` in the JSON, `X-Version`, the ETag),
//! so a benchmark can tell an answer from before a write from one after it.
//!
//! Garbage (a bad request line, oversized headers) gets hyper's `400`-class
//! answer and a closed connection; a request body over 1 MiB gets `413`.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};

/// Request bodies (ignored, but read past) larger than this get `413`.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Connections that send no request head for this long are closed.
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
    /// The version of every item written to (absent: 0).
    pub versions: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Default for SampleOrigin {
    fn default() -> Self {
        SampleOrigin {
            delay: Duration::from_millis(50),
            max_age: 5,
            body_bytes: 0,
            hits: Arc::new(AtomicU64::new(0)),
            versions: Default::default(),
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
                tokio::spawn(serve_connection(stream, opts.clone()));
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
async fn serve_connection(stream: TcpStream, opts: Arc<SampleOrigin>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let opts = opts.clone();
        async move { Ok::<_, Infallible>(answer(request, &opts).await) }
    });
    // A failed connection concerns only its client.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The answer to a request that hyper parsed.
async fn answer(request: Request<Incoming>, opts: &SampleOrigin) -> Response<Full<Bytes>> {
    opts.hits.fetch_add(1, Ordering::Relaxed);
    let (head, body) = request.into_parts();
    // GET bodies mean nothing here, but they must be read past.
    if Limited::new(body, MAX_BODY_BYTES).collect().await.is_err() {
        return error(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let Some(id) = item_id(head.uri.path()) else {
        return error(StatusCode::NOT_FOUND);
    };
    let version = match head.method {
        Method::GET | Method::HEAD => opts.version(id),
        Method::PUT => opts.write(id),
        _ => {
            let mut refused = error(StatusCode::METHOD_NOT_ALLOWED);
            let allow = HeaderValue::from_static("GET, HEAD, PUT");
            refused.headers_mut().insert(ALLOW, allow);
            return refused;
        }
    };
    tokio::time::sleep(opts.delay).await;
    let etag = match version {
        0 => format!("W/\"item-{id}\""),
        _ => format!("W/\"item-{id}-v{version}\""),
    };
    let (status, body) = if if_none_match(&head.headers, &etag) {
        (StatusCode::NOT_MODIFIED, String::new())
    } else {
        (StatusCode::OK, item_json(id, version, opts.body_bytes))
    };
    let mut response = respond(status, "application/json", body);
    let headers = response.headers_mut();
    let cache_control = format!("public, max-age={}", opts.max_age);
    headers.insert(CACHE_CONTROL, header_value(&cache_control));
    headers.insert(ETAG, header_value(&etag));
    headers.insert(VERSION, HeaderValue::from(version));
    response
}

/// The header every answer carries its item's version in.
pub const VERSION: http::HeaderName = http::HeaderName::from_static("x-version");

impl SampleOrigin {
    fn version(&self, id: u64) -> u64 {
        let versions = self.versions.lock();
        versions.get(&id).copied().unwrap_or(0)
    }

    /// A write to item `id`: its new version.
    fn write(&self, id: u64) -> u64 {
        let mut versions = self.versions.lock();
        let version = versions.entry(id).or_insert(0);
        *version += 1;
        *version
    }
}

/// Whether an `If-None-Match` lists `etag`, compared weakly: W/"x" matches
/// "x" (RFC 9110 §13.1.2); `*` matches anything.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let bare = etag.trim_start_matches("W/");
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == bare)
}

/// `/items/17` → 17.
fn item_id(path: &str) -> Option<u64> {
    let id = path.strip_prefix("/items/")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// An item as JSON: `{"id":17,"name":"item 17","served_at":"...","version":0}`.
pub fn item_json(id: u64, version: u64, body_bytes: usize) -> String {
    let served_at = httpdate::fmt_http_date(SystemTime::now());
    let json = format!(
        "{{\"id\":{id},\"name\":\"item {id}\",\"served_at\":\"{served_at}\",\"version\":{version}}}\n"
    );
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

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, header_value(content_type));
    response
}

/// A short plain-text error that nobody should cache.
fn error(status: StatusCode) -> Response<Full<Bytes>> {
    let body = format!("{status}\n");
    let mut response = respond(status, "text/plain", body);
    let no_store = HeaderValue::from_static("no-store");
    response.headers_mut().insert(CACHE_CONTROL, no_store);
    response
}

/// A header value from text this module made (always visible ASCII).
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
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
        let strong = [("If-None-Match", "\"x\", \"item-4\"")];
        let response = conn.request("GET", "/items/4", &strong).await.unwrap();
        assert_eq!(response.status, 304);
    }

    #[tokio::test]
    async fn head_and_other_methods() {
        let (addr, _origin) = start(0).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let head = conn.request("HEAD", "/items/1", &[]).await.unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert!(head.header("content-length").is_some());
        let post = conn
            .request_with_body("POST", "/items/1", &[], b"x")
            .await
            .unwrap();
        assert_eq!(
            (post.status, post.header("allow")),
            (405, Some("GET, HEAD, PUT"))
        );
        let big = vec![b'x'; MAX_BODY_BYTES + 1];
        let refused = conn.request_with_body("GET", "/items/1", &[], &big).await;
        assert_eq!(refused.unwrap().status, 413);
    }

    #[tokio::test]
    async fn a_put_bumps_the_items_version_and_every_answer_says_it() {
        let (addr, _origin) = start(0).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let version = |r: &crate::demo::client::Response| r.header("x-version").map(str::to_owned);
        let before = conn.request("GET", "/items/3", &[]).await.unwrap();
        assert_eq!(version(&before).as_deref(), Some("0"));
        assert!(before.text().contains("\"version\":0}"));
        let put = conn.request("PUT", "/items/3", &[]).await.unwrap();
        assert_eq!((put.status, version(&put).as_deref()), (200, Some("1")));
        let after = conn.request("GET", "/items/3", &[]).await.unwrap();
        assert!(after.text().starts_with("{\"id\":3,") && after.text().contains("\"version\":1}"));
        assert_ne!(before.header("etag"), after.header("etag"));
        let other = conn.request("GET", "/items/4", &[]).await.unwrap();
        assert_eq!(version(&other).as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn a_closing_request_closes_and_the_origin_serves_on() {
        let (addr, origin) = start(0).await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let closing = [("Connection", "close")];
        let response = conn.request("GET", "/items/9", &closing).await.unwrap();
        assert_eq!(response.status, 200);
        assert!(!conn.is_open());
        assert_eq!(get(addr, "/items/9").await.unwrap().status, 200);
        assert_eq!(origin.hits(), 2);
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
