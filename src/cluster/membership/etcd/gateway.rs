//! The client of etcd v3's JSON gateway (`/v3/...`, served by etcd 3.4 and
//! later): JSON POSTs over HTTP/1.1 through pingora's client connector, the
//! stack ringside already uses for origins, with TLS by rustls.
//!
//! What it owns:
//! - **endpoints**: tried in configured order starting with the one that
//!   last answered. A connection failure, a timeout or a 5xx (etcd answers
//!   503 without a leader) moves on to the next; any other answer is etcd's
//!   word, which another endpoint would repeat.
//! - **connections**: one per call, closed after it. Calls come a few
//!   seconds apart, and no pool can hand out a connection that died with an
//!   etcd restart.
//! - **auth**: with `auth` configured, a token from `/v3/auth/authenticate`
//!   goes in the `Authorization` header. Each endpoint keeps its own token
//!   (etcd's simple tokens are valid only on the member that issued them),
//!   fetched on first use and fetched again, once per call, when etcd
//!   rejects it: it expired (`--auth-token-ttl`), or etcd's users or roles
//!   changed since it was issued.
//! - **bounds**: a call gets `timeout` per endpoint, body included; a
//!   stream gets it for its head, and its reader bounds each message.

use super::credentials;
use crate::config::{EtcdMembership, OriginUrl};
use crate::error;
use crate::net::dns::Resolver;
use bytes::Bytes;
use http::header;
use log::{debug, info};
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde_json::{json, Value};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Largest unary answer accepted (a range over the prefix lists every member).
const MAX_BODY: usize = 16 << 20;
/// Largest error answer read for its message, and largest single streamed message.
const MAX_MESSAGE: usize = 1 << 20;

/// What etcd says when a token is stale: it expired (401), or users or
/// roles changed since it was issued, or none was sent.
const TOKEN_REJECTIONS: [&str; 3] = [
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
];

#[derive(Debug)]
pub(super) enum CallError {
    /// Connecting, sending or reading failed, or the endpoint answered 5xx
    /// (etcd answers 503 without a leader): the next endpoint may do better.
    Transport(String),
    /// etcd answered with an error status: another endpoint would say the same.
    Status { status: u16, message: String },
    /// etcd answered 200 with something unusable.
    Api(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) | CallError::Api(e) => f.write_str(e),
            CallError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
        }
    }
}

impl CallError {
    /// etcd refused the token: authenticating again may help.
    fn is_token_rejected(&self) -> bool {
        match self {
            CallError::Status { status, message } => {
                *status == 401 || TOKEN_REJECTIONS.iter().any(|r| message.contains(r))
            }
            _ => false,
        }
    }

    /// The same error, its message starting with `what`.
    fn context(self, what: &str) -> CallError {
        match self {
            CallError::Transport(e) => CallError::Transport(format!("{what}: {e}")),
            CallError::Api(e) => CallError::Api(format!("{what}: {e}")),
            CallError::Status { status, message } => CallError::Status {
                status,
                message: format!("{what}: {message}"),
            },
        }
    }
}

pub(super) struct Gateway {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that last answered: tried first.
    preferred: AtomicUsize,
    connector: Connector,
    timeout: Duration,
    login: Option<Login>,
}

/// Who ringside is to etcd when auth is on.
struct Login {
    username: String,
    password: String,
}

struct Endpoint {
    url: OriginUrl,
    dns: Resolver,
    host_header: String,
    /// The auth token this endpoint issued, while it is believed valid.
    token: Mutex<Option<String>>,
}

impl Endpoint {
    fn parse(url: &str) -> error::Result<Endpoint> {
        let url = OriginUrl::parse(url).map_err(|why| {
            error::Error::invalid(format!("cluster.membership.etcd.endpoints: {url:?}: {why}"))
        })?;
        Ok(Endpoint {
            host_header: url.host_header(),
            url,
            dns: Resolver::default(),
            token: Mutex::new(None),
        })
    }

    fn token(&self) -> Option<String> {
        self.token.lock().clone()
    }

    fn set_token(&self, token: Option<String>) {
        *self.token.lock() = token;
    }

    /// Forget `rejected`, unless another call has already replaced it.
    fn forget_token(&self, rejected: &str) {
        let mut token = self.token.lock();
        if token.as_deref() == Some(rejected) {
            *token = None;
        }
    }

    fn request(
        &self,
        path: &str,
        body: &Bytes,
        token: Option<&str>,
    ) -> pingora::Result<RequestHeader> {
        let mut request = RequestHeader::build("POST", path.as_bytes(), None)?;
        request.insert_header(header::HOST, &self.host_header)?;
        request.insert_header(header::CONTENT_TYPE, "application/json")?;
        request.insert_header(header::ACCEPT, "application/json")?;
        request.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        if let Some(token) = token {
            request.insert_header(header::AUTHORIZATION, token)?;
        }
        Ok(request)
    }

    /// Where to connect now (its name's answer kept no longer than its
    /// TTL: etcd's address may move), connecting, writing and each read
    /// bounded by `timeout`.
    async fn peer(&self, timeout: Duration) -> pingora::Result<HttpPeer> {
        let (host, port) = (&self.url.host, self.url.port);
        let Some(addr) = self.dns.socket_addr(host, port, timeout).await else {
            return Error::e_explain(ErrorType::ConnectNoRoute, format!("cannot resolve {host}"));
        };
        let mut peer = HttpPeer::new(addr, self.url.tls, self.url.host.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(timeout);
        options.total_connection_timeout = Some(timeout);
        options.read_timeout = Some(timeout);
        options.write_timeout = Some(timeout);
        Ok(peer)
    }
}

impl Gateway {
    pub(super) fn new(config: &EtcdMembership, timeout: Duration) -> error::Result<Gateway> {
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Endpoint::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            let why = "cluster.membership.etcd.endpoints: none given";
            return Err(error::Error::invalid(why));
        }
        let login = match &config.auth {
            Some(auth) => Some(Login {
                username: auth.username.clone(),
                password: credentials::password(auth)?,
            }),
            None => None,
        };
        Ok(Gateway {
            endpoints,
            preferred: AtomicUsize::new(0),
            connector: credentials::connector(config.tls.as_ref())?,
            timeout,
            login,
        })
    }

    /// POST `request` to `path` and return the answer's first JSON value.
    pub(super) async fn call(&self, path: &str, request: &Value) -> Result<Value, CallError> {
        let body = &Bytes::from(request.to_string());
        self.on_some_endpoint(path, move |endpoint| async move {
            let answer = self.open(endpoint, path, body).await?;
            let data = answer.read_to_end(MAX_BODY).await?;
            first_json(&data)
                .ok_or_else(|| CallError::Api(format!("answer is not JSON: {}", snippet(&data))))
        })
        .await
    }

    /// POST `request` to `path` and return the answer as a stream of JSON
    /// values. Reading it is not bounded here: the reader bounds each message.
    pub(super) async fn stream(
        &self,
        path: &str,
        request: &Value,
    ) -> Result<JsonStream, CallError> {
        let body = &Bytes::from(request.to_string());
        self.on_some_endpoint(path, move |endpoint| async move {
            let mut answer = self.open(endpoint, path, body).await?;
            answer.session.set_read_timeout(None);
            Ok(JsonStream {
                answer,
                pending: Vec::new(),
            })
        })
        .await
    }

    /// Drop every auth token: the next call authenticates afresh.
    pub(super) fn forget_tokens(&self) {
        for endpoint in &self.endpoints {
            endpoint.set_token(None);
        }
    }

    /// Endpoint indexes to try, in configured order starting with the preferred one.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (first + i) % n)
    }

    /// Run `attempt` against each endpoint in turn, each bounded by the
    /// timeout, until one gives etcd's answer (anything but a transport error).
    async fn on_some_endpoint<'a, T, F, Fut>(
        &'a self,
        path: &str,
        attempt: F,
    ) -> Result<T, CallError>
    where
        F: Fn(&'a Endpoint) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut last = CallError::Transport("no endpoint".into());
        for i in self.order() {
            let endpoint = &self.endpoints[i];
            let outcome = tokio::time::timeout(self.timeout, attempt(endpoint))
                .await
                .unwrap_or_else(|_| {
                    Err(CallError::Transport(format!(
                        "no answer within {:?}",
                        self.timeout
                    )))
                });
            match outcome {
                Err(CallError::Transport(e)) => {
                    last =
                        CallError::Transport(format!("{}{path}: {e}", endpoint.url.key_prefix()));
                    debug!("membership (etcd): {last}");
                }
                answered => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(last)
    }

    /// POST `body` to `endpoint` and read the answer's head: Ok if it is
    /// 200. With auth, the endpoint's token goes along (fetched first if
    /// there is none), and a rejected token is replaced once.
    async fn open(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &Bytes,
    ) -> Result<Answer, CallError> {
        let token = self.token(endpoint).await?;
        let answer = self.send(endpoint, path, body, token.as_deref()).await?;
        match (answer.success().await, token) {
            (Err(e), Some(rejected)) if e.is_token_rejected() => {
                info!(
                    "membership (etcd): {} rejected the auth token ({e}); authenticating again",
                    endpoint.url.key_prefix()
                );
                endpoint.forget_token(&rejected);
                let token = self.token(endpoint).await?;
                let answer = self.send(endpoint, path, body, token.as_deref()).await?;
                answer.success().await
            }
            (outcome, _) => outcome,
        }
    }

    /// `endpoint`'s auth token (None without auth), authenticating there if it has none.
    async fn token(&self, endpoint: &Endpoint) -> Result<Option<String>, CallError> {
        let Some(login) = &self.login else {
            return Ok(None);
        };
        if let Some(token) = endpoint.token() {
            return Ok(Some(token));
        }
        let request = json!({ "name": login.username, "password": login.password });
        let authenticated = async {
            let body = Bytes::from(request.to_string());
            let answer = self
                .send(endpoint, "/v3/auth/authenticate", &body, None)
                .await?
                .success()
                .await?;
            let data = answer.read_to_end(MAX_MESSAGE).await?;
            first_json(&data)
                .and_then(|v| v.get("token")?.as_str().map(str::to_owned))
                .filter(|token| !token.is_empty())
                .ok_or_else(|| {
                    CallError::Api(format!("answer without a token: {}", snippet(&data)))
                })
        };
        let token = authenticated
            .await
            .map_err(|e| e.context(&format!("authenticating as {:?}", login.username)))?;
        endpoint.set_token(Some(token.clone()));
        Ok(Some(token))
    }

    /// Connect to `endpoint`, send one POST and read the answer's head.
    async fn send(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &Bytes,
        token: Option<&str>,
    ) -> Result<Answer, CallError> {
        let sent = async {
            let peer = endpoint.peer(self.timeout).await?;
            let (mut session, _) = self.connector.get_http_session(&peer).await?;
            let request = endpoint.request(path, body, token)?;
            session.write_request_header(Box::new(request)).await?;
            session.write_request_body(body.clone(), true).await?;
            // A Content-Length body ends without shutting down the write
            // side: etcd (Go) takes that for the client leaving and would
            // cancel a watch.
            session.finish_request_body().await?;
            session.read_response_header().await?;
            Ok::<_, Box<Error>>(session)
        };
        match sent.await {
            Ok(session) => Ok(Answer::new(session)),
            Err(e) => Err(CallError::Transport(describe(&e))),
        }
    }
}

/// A pingora error as a log line, with a hint where the fix is in the config.
fn describe(e: &Error) -> String {
    match e.etype() {
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert => format!(
            "{e} (check cluster.membership.etcd.tls: does ca_file hold the CA that signed \
             etcd's certificate, for this host name or IP?)"
        ),
        _ => e.to_string(),
    }
}

/// An answer whose head has been read; its body is read on demand.
pub(super) struct Answer {
    session: HttpSession,
    status: u16,
}

impl Answer {
    fn new(session: HttpSession) -> Answer {
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        Answer { session, status }
    }

    /// This answer if it is a 200; otherwise etcd's error, read from the body.
    async fn success(self) -> Result<Answer, CallError> {
        let status = self.status;
        if status == 200 {
            return Ok(self);
        }
        let data = self.read_to_end(MAX_MESSAGE).await.unwrap_or_default();
        let message = error_message(&data);
        Err(match status {
            500.. => CallError::Transport(format!("HTTP {status}: {message}")),
            _ => CallError::Status { status, message },
        })
    }

    async fn next_data(&mut self) -> Result<Option<Bytes>, CallError> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| CallError::Transport(format!("reading the answer: {e}")))
    }

    async fn read_to_end(mut self, max: usize) -> Result<Vec<u8>, CallError> {
        let mut body = Vec::new();
        while let Some(data) = self.next_data().await? {
            if body.len() + data.len() > max {
                return Err(CallError::Transport(format!(
                    "answer larger than {max} bytes"
                )));
            }
            body.extend_from_slice(&data);
        }
        Ok(body)
    }
}

/// A streamed answer read as a sequence of JSON values (the gateway writes
/// one per message, newline-separated, with no regard for chunk boundaries).
pub(super) struct JsonStream {
    answer: Answer,
    /// Bytes read but not yet parsed into a whole value.
    pending: Vec<u8>,
}

impl JsonStream {
    /// The next value, or None when the stream ended cleanly.
    pub(super) async fn next_json(&mut self) -> error::Result<Option<Value>> {
        let broken = |why: String| error::Error::new(error::Kind::Etcd, why);
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&self.pending).into_iter::<Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.pending.drain(..used);
                    return Ok(Some(value));
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(broken("bad JSON in the stream".into()).caused_by(e))
                }
                // Only whitespace, or a value cut short: read on.
                _ => {}
            }
            let next = self.answer.next_data().await;
            match next.map_err(|e| broken(e.to_string()))? {
                Some(data) if self.pending.len() + data.len() > MAX_MESSAGE => {
                    let why = format!("streamed message larger than {MAX_MESSAGE} bytes");
                    return Err(broken(why));
                }
                Some(data) => self.pending.extend_from_slice(&data),
                None if self.pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => return Err(broken("the stream ended inside a message".into())),
            }
        }
    }
}

/// The first JSON value in `data` (gateway streams put one per line).
fn first_json(data: &[u8]) -> Option<Value> {
    serde_json::Deserializer::from_slice(data)
        .into_iter::<Value>()
        .next()?
        .ok()
}

/// etcd's message from an error answer, or the answer's start.
fn error_message(data: &[u8]) -> String {
    if let Some(v) = first_json(data) {
        let v = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
        if let Some(m) = v
            .get("message")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
        {
            return m.to_string();
        }
    }
    snippet(data)
}

fn snippet(data: &[u8]) -> String {
    format!(
        "{:?}",
        String::from_utf8_lossy(&data[..data.len().min(200)])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_etcd_json() {
        let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(error_message(body), "etcdserver: requested lease not found");
        let stream_err = br#"{"error":{"grpc_code":14,"http_code":503,"message":"no leader"}}"#;
        assert_eq!(error_message(stream_err), "no leader");
    }

    #[test]
    fn stale_tokens_are_told_from_other_refusals() {
        let status = |status, message: &str| CallError::Status {
            status,
            message: message.into(),
        };
        assert!(status(401, "etcdserver: invalid auth token").is_token_rejected());
        assert!(status(400, "etcdserver: revision of auth store is old").is_token_rejected());
        assert!(!status(
            400,
            "etcdserver: authentication failed, invalid user ID or password"
        )
        .is_token_rejected());
        assert!(!status(403, "etcdserver: permission denied").is_token_rejected());
        assert!(!CallError::Transport("invalid auth token".into()).is_token_rejected());
    }

    fn gateway(endpoints: &[String], timeout: Duration) -> Gateway {
        let config: EtcdMembership =
            match serde_yaml::from_str(&format!("endpoints: {endpoints:?}")) {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
        match Gateway::new(&config, timeout) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// An endpoint that takes the connection and then says nothing (a
    /// stalled etcd) costs one timeout, not a hang.
    #[tokio::test]
    async fn a_stalled_endpoint_costs_one_timeout() {
        let silent = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let port = silent.local_addr().map(|a| a.port()).unwrap_or(0);
        let gateway = gateway(
            &[format!("http://127.0.0.1:{port}")],
            Duration::from_millis(300),
        );
        let started = tokio::time::Instant::now();
        let outcome = gateway.call("/v3/kv/range", &json!({})).await;
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(CallError::Transport(_))),
            "{outcome:?}"
        );
        assert!(took < Duration::from_secs(3), "the call took {took:?}");
        drop(silent);
    }

    /// A chunked, trailer-carrying, message-splitting answer decodes into the
    /// JSON values it carries. Served by a local socket writing the bytes as
    /// etcd might, so that pingora's reader and the splitting both run.
    #[tokio::test]
    async fn chunked_json_stream_decodes_across_chunk_boundaries() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let server = tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let messages = "{\"result\":{\"created\":true}}\n{\"result\":{\"events\":[{\"kv\":{\"key\":\"YQ==\"}}]}}\n";
            let (a, b) = messages.split_at(30); // splits the second message
            let answer = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\nGrpc-Trailer: x\r\n\r\n",
                a.len(),
                b.len()
            );
            // Dribble it out in small writes.
            for piece in answer.as_bytes().chunks(7) {
                let _ = socket.write_all(piece).await;
                tokio::task::yield_now().await;
            }
        });
        let gateway = gateway(
            &[format!("http://127.0.0.1:{port}")],
            Duration::from_secs(5),
        );
        let mut stream = match gateway.stream("/v3/watch", &json!({})).await {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let first = stream.next_json().await.map_err(|e| e.to_string());
        assert_eq!(first, Ok(Some(json!({"result":{"created":true}}))));
        let second = stream.next_json().await.map_err(|e| e.to_string());
        assert_eq!(
            second,
            Ok(Some(json!({"result":{"events":[{"kv":{"key":"YQ=="}}]}})))
        );
        assert_eq!(
            stream.next_json().await.map_err(|e| e.to_string()),
            Ok(None)
        );
        let _ = server.await;
    }
}
