//! A real HTTP/1.1 origin for the tests (hyper's server), on 127.0.0.1 and
//! an ephemeral port.
//!
//! Each response is described by the request's query string, so a test says
//! what the origin should answer in the URL it asks ringside for:
//!
//! | parameter      | effect                                                        |
//! |----------------|---------------------------------------------------------------|
//! | `cc=V`         | `Cache-Control: V`                                            |
//! | `status=N`     | status code (default 200)                                     |
//! | `etag=V`       | `ETag: "V"`; answers 304 when If-None-Match carries it        |
//! | `lm=1`         | `Last-Modified` fixed in the past; 304 on If-Modified-Since   |
//! | `expires=N`    | `Expires` N seconds from now (negative: past)                 |
//! | `age=N`        | `Age: N`                                                      |
//! | `vary=H`       | `Vary: H`; the body echoes the request's H                    |
//! | `cookie=1`     | `Set-Cookie: session=...`                                     |
//! | `size=N`       | body of N bytes (default: a short text naming the hit count)  |
//! | `chunked=1`    | chunked transfer encoding instead of Content-Length           |
//! | `delay_ms=N`   | wait N ms before answering                                    |
//! | `nodate=1`     | no Date header                                                |
//! | `cc1=V`        | on the first request of a target, `Cache-Control: V` instead of `cc` |
//! | `cc304=V`      | on a 304, `Cache-Control: V` instead of `cc`                  |
//! | `cookie304=1`  | on a 304 only, `Set-Cookie: session=<count>`                  |
//! | `cookie200=1`  | on a 200 only, `Set-Cookie: session=<count>`                  |
//! | `drip_ms=N`    | send the body in 4 pieces, N ms apart (a slow download)       |
//! | `gdelay_ms=N`  | like `delay_ms`, for GET and HEAD only                        |
//! | `wstatus=N`    | status for other methods than GET and HEAD (writes)           |
//! | `location=V`   | `Location: V`                                                 |
//! | `expires_fmt=F`| `Expires` as `rfc850`, `asctime` or `lower` (IMF, lowercase)  |
//! | `content_location=V` | `Content-Location: V`                                   |
//! | `pattern=1`    | with `size=N`: the body is [`pattern_body`]`(N)`, each byte telling its offset |
//! | `ranges=1`     | a GET's single `Range: bytes=...` is answered 206 with that part |
//! | `echo=H`       | the body names the request's H values (`H=v1,v2 #count`), or `H=-` |
//! | `versioned=1`  | the path has a version (0 at first): a PUT bumps it; every answer says it in `X-Version`, a GET's body is [`versioned_body`] |
//! | `date_ago=N`   | `Date` N seconds before now (a response generated earlier)    |
//! | `etag2=V`      | from the second request of a target on, `ETag: "V"` instead of `etag` (the resource changed) |
//!
//! `expires_fmt=asctime_wrong_weekday` writes `Expires` in asctime form with
//! the weekday one day off (RFC 9110 §5.6.7: recipients should still read it).
//!
//! The origin counts requests per path-and-query and keeps the last request's
//! headers, so tests assert from the origin's own view. [`Origin::set_failing`]
//! makes it answer 503, without `cc`, to everything; [`Origin::stop`] closes
//! the listener.

use bytes::Bytes;
use futures::StreamExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
struct State {
    hits: Mutex<HashMap<String, u64>>,
    last_headers: Mutex<HashMap<String, Vec<(String, String)>>>,
    last_methods: Mutex<HashMap<String, String>>,
    total: AtomicU64,
    connections: AtomicU64,
    failing: AtomicBool,
    stopped: AtomicBool,
    /// `versioned=1`: the current version of each path.
    versions: Mutex<HashMap<String, u64>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(stream, accept_state.clone()));
            }
        });
        Origin { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for exactly this path and query.
    pub fn hits(&self, target: &str) -> u64 {
        let hits = self.state.hits.lock();
        hits.get(target).copied().unwrap_or(0)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn total_hits(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// The headers of the last request for this path and query (lowercase names).
    pub fn last_request_header(&self, target: &str, name: &str) -> Option<String> {
        let all = self.state.last_headers.lock();
        all.get(target)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Every value of `name` in the last request for this path and query, in order.
    pub fn last_request_header_all(&self, target: &str, name: &str) -> Vec<String> {
        let all = self.state.last_headers.lock();
        all.get(target)
            .into_iter()
            .flatten()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The method of the last request for this path and query.
    pub fn last_method(&self, target: &str) -> Option<String> {
        self.state.last_methods.lock().get(target).cloned()
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Stop: new connections are refused, open ones are closed unanswered.
    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve one connection with hyper until it closes.
async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { answer(request, &state).await }
    });
    let _ = http1::Builder::new()
        .title_case_headers(true)
        // As many fields as ringside lets a client send (pingora parses 256).
        .max_headers(512)
        .auto_date_header(false) // `nodate=1` means none; `respond` sets it
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Record the request and answer it; an error (origin stopped, request
/// body cut) makes hyper close the connection unanswered.
async fn answer(request: Request<Incoming>, state: &State) -> std::io::Result<Response<Body>> {
    if state.stopped.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("origin stopped"));
    }
    let (head, body) = request.into_parts();
    let request_body = body.collect().await.map_err(std::io::Error::other)?;
    let target = head.uri.to_string();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let count = {
        let mut hits = state.hits.lock();
        let n = hits.entry(target.clone()).or_insert(0);
        *n += 1;
        *n
    };
    state.total.fetch_add(1, Ordering::SeqCst);
    state
        .last_headers
        .lock()
        .insert(target.clone(), headers.clone());
    let method = head.method.as_str();
    state
        .last_methods
        .lock()
        .insert(target.clone(), method.to_owned());
    let body = request_body.to_bytes();
    let answer = respond(method, &target, &headers, &body, count, state).await;
    Ok(answer.into_response(head.method == Method::HEAD, &query(&target)))
}

/// A response as [`respond`] decides it, before hyper writes it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    /// The hyper response: Content-Length, or with `chunked=1` chunks of
    /// 16 KiB; with `drip_ms=N` the body in four pieces, N ms apart (a
    /// healthy but slow download).
    fn into_response(self, head: bool, q: &HashMap<String, String>) -> Response<Body> {
        let mut response = Response::new(Empty::new().boxed_unsync());
        *response.status_mut() = StatusCode::from_u16(self.status).expect("a status code");
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            let value = HeaderValue::from_bytes(value.as_bytes()).expect("a header value");
            headers.append(name, value);
        }
        if head || matches!(self.status, 204 | 304) {
            return response;
        }
        let chunked = q.contains_key("chunked");
        if !chunked {
            headers.insert(CONTENT_LENGTH, self.body.len().into());
        }
        let drip = q.get("drip_ms").and_then(|v| v.parse().ok());
        let piece_size = match drip {
            Some(_) => self.body.len().div_ceil(4).max(1),
            None => 16 * 1024,
        };
        let pieces: Vec<Bytes> = self
            .body
            .chunks(piece_size)
            .map(Bytes::copy_from_slice)
            .collect();
        let frames = futures::stream::iter(pieces).then(move |piece| async move {
            if let Some(ms) = drip {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(Frame::data(piece))
        });
        *response.body_mut() = StreamBody::new(frames).boxed_unsync();
        response
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The query's parameters, percent-decoded (`+` is a space).
fn query(target: &str) -> HashMap<String, String> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

pub const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

async fn respond(
    method: &str,
    target: &str,
    req: &[(String, String)],
    request_body: &[u8],
    count: u64,
    state: &State,
) -> Answer {
    let q = query(target);
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let is_read = method == "GET" || method == "HEAD";
    if let Some(ms) = q.get("gdelay_ms").and_then(|v| v.parse().ok()) {
        if is_read {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    let mut status: u16 = q.get("status").and_then(|v| v.parse().ok()).unwrap_or(200);
    if let Some(write_status) = q.get("wstatus").and_then(|v| v.parse().ok()) {
        if !is_read {
            status = write_status;
        }
    }
    if state.failing.load(Ordering::SeqCst) {
        status = 503;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    if !q.contains_key("nodate") {
        let ago = q.get("date_ago").and_then(|v| v.parse().ok()).unwrap_or(0);
        let generated = std::time::SystemTime::now() - Duration::from_secs(ago);
        headers.push(("Date".into(), httpdate::fmt_http_date(generated)));
    }
    // A failing origin (set_failing) answers 503 without the resource's caching headers.
    let cc = match q.get("cc1") {
        Some(first) if count == 1 => Some(first),
        _ => q.get("cc"),
    };
    if let Some(cc) = cc.filter(|_| status != 503 || !state.failing.load(Ordering::SeqCst)) {
        headers.push(("Cache-Control".into(), cc.clone()));
    }
    let cache_control_on_304 = q.get("cc304").cloned();
    if let Some(secs) = q.get("expires").and_then(|v| v.parse::<i64>().ok()) {
        let now = std::time::SystemTime::now();
        let at = if secs >= 0 {
            now + Duration::from_secs(secs as u64)
        } else {
            now - Duration::from_secs((-secs) as u64)
        };
        let format = q.get("expires_fmt").map_or("", |f| f.as_str());
        headers.push(("Expires".into(), http_date_as(at, format)));
    }
    for (param, name) in [
        ("location", "Location"),
        ("content_location", "Content-Location"),
        ("tcc", "Ringside-Cache-Control"),
        ("cdncc", "CDN-Cache-Control"),
    ] {
        if let Some(value) = q.get(param) {
            headers.push((name.into(), value.clone()));
        }
    }
    if let Some((name, value)) = q.get("header").and_then(|h| h.split_once(':')) {
        headers.push((name.into(), value.into()));
    }
    if let Some(age) = q.get("age") {
        headers.push(("Age".into(), age.clone()));
    }
    if q.contains_key("cookie") {
        headers.push(("Set-Cookie".into(), format!("session={count}; Path=/")));
    }
    let mut not_modified = false;
    let etag = match q.get("etag2") {
        Some(changed) if count >= 2 => Some(changed),
        _ => q.get("etag"),
    };
    if let Some(etag) = etag {
        let quoted = format!("\"{etag}\"");
        if header(req, "if-none-match").is_some_and(|v| v.contains(&quoted)) {
            not_modified = true;
        }
        headers.push(("ETag".into(), quoted));
    }
    if q.contains_key("lm") {
        if header(req, "if-modified-since") == Some(LAST_MODIFIED) {
            not_modified = true;
        }
        headers.push(("Last-Modified".into(), LAST_MODIFIED.into()));
    }
    let mut body = match q.get("size").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if q.contains_key("pattern") => pattern_body(n),
        Some(n) => vec![b'x'; n],
        None => format!("{method} {target} #{count}").into_bytes(),
    };
    if let Some(vary) = q.get("vary") {
        headers.push(("Vary".into(), vary.clone()));
        let value = header(req, &vary.to_ascii_lowercase()).unwrap_or("-");
        body = format!("{vary}={value} #{count}").into_bytes();
    }
    if let Some(name) = q.get("echo") {
        let name = name.to_ascii_lowercase();
        let values: Vec<&str> = req
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        let values = if values.is_empty() {
            "-".to_string()
        } else {
            values.join(",")
        };
        body = format!("{name}={values} #{count}").into_bytes();
    }
    if method == "POST" || method == "PUT" || method == "QUERY" {
        body = [b"echo:".as_slice(), request_body].concat();
    }
    if q.contains_key("versioned") {
        let path = target.split('?').next().unwrap_or(target).to_string();
        let mut versions = state.versions.lock();
        let version = versions.entry(path.clone()).or_insert(0);
        if method == "PUT" {
            *version += 1;
        } else {
            body = versioned_body(&path, *version).into_bytes();
        }
        headers.push(("X-Version".into(), version.to_string()));
    }
    if not_modified && status == 200 {
        status = 304;
        if let Some(cc) = cache_control_on_304 {
            headers.retain(|(n, _)| n != "Cache-Control");
            headers.push(("Cache-Control".into(), cc));
        }
        if q.contains_key("cookie304") {
            headers.push(("Set-Cookie".into(), format!("session={count}; Path=/")));
        }
    }
    if q.contains_key("cookie200") && status == 200 {
        headers.push(("Set-Cookie".into(), format!("session={count}; Path=/")));
    }
    if let Some((first, last)) = q
        .get("ranges")
        .filter(|_| status == 200 && method == "GET")
        .and_then(|_| requested_range(header(req, "range")?, body.len()))
    {
        status = 206;
        let complete = body.len();
        headers.push((
            "Content-Range".into(),
            format!("bytes {first}-{last}/{complete}"),
        ));
        body = body[first..=last].to_vec();
    }
    headers.push(("X-Origin-Count".into(), count.to_string()));
    Answer {
        status,
        headers,
        body,
    }
}

/// A versioned path's body: the path, its version, and a checksum of both,
/// so that a reader can tell a body for another path, or a damaged one.
pub fn versioned_body(path: &str, version: u64) -> String {
    let sum = path
        .bytes()
        .chain(version.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{path} v{version} sum={sum:016x}")
}

/// A body of `n` bytes in which a part shows where it was cut from: the
/// byte at offset `i` is `i % 251` (a prime, so that parts of equal length
/// at different offsets differ).
pub fn pattern_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The test origin's own reading of a single `bytes=first-last`,
/// `bytes=first-` or `bytes=-suffix` within a body of `len` bytes.
fn requested_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    let end = len.checked_sub(1)?;
    match (first.parse::<usize>().ok(), last.parse::<usize>().ok()) {
        (None, Some(suffix)) if suffix > 0 => Some((len.saturating_sub(suffix), end)),
        (Some(first), None) if first <= end => Some((first, end)),
        (Some(first), Some(last)) if first <= last && first <= end => Some((first, last.min(end))),
        _ => None,
    }
}

/// An HTTP-date in one of RFC 9110 §5.6.7's three formats: IMF-fixdate
/// (default), `rfc850` (obsolete), `asctime`, or IMF-fixdate in `lower` case.
fn http_date_as(at: std::time::SystemTime, format: &str) -> String {
    let imf = httpdate::fmt_http_date(at); // "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = imf.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let [weekday, day, month, year, time, _gmt] = parts[..] else {
        return imf;
    };
    let long_weekday = match weekday {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    match format {
        "rfc850" => format!("{long_weekday}, {day}-{month}-{} {time} GMT", &year[2..]),
        "asctime" => format!(
            "{weekday} {month} {:>2} {time} {year}",
            day.trim_start_matches('0')
        ),
        "asctime_wrong_weekday" => format!(
            "{} {month} {:>2} {time} {year}",
            if weekday == "Mon" { "Tue" } else { "Mon" },
            day.trim_start_matches('0')
        ),
        "lower" => imf.to_ascii_lowercase(),
        _ => imf,
    }
}
