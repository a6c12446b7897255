//! etcd membership: every node registers itself under a key prefix with a
//! lease, and watches the prefix to learn who else is there.
//!
//! It speaks etcd v3's JSON gateway (`/v3/...`, served by etcd 3.4 and
//! later) over plain HTTP/1.1 with the small client at the bottom of this
//! file, so no gRPC stack is needed. Each call opens its own connection
//! (`Connection: close`); endpoints are tried in order, and the one that
//! last answered is tried first next time.
//!
//! One task per node runs two loops side by side, and owns the
//! `watch::Sender`:
//! - **register**: grant a lease (`lease_ttl`), put `prefix + addr` =
//!   `{"addr","weight"}` under it, then renew it every TTL/3. A renewal that
//!   reports the lease gone (etcd was unreachable for longer than the TTL, or
//!   lost its data) starts over with a new lease and a new put.
//! - **watch**: list the prefix (`/v3/kv/range`), publish, then follow
//!   `/v3/watch` from the revision after the listing, so that no change
//!   between the two is missed, applying events to the list and publishing
//!   each time it changes. Any watch error (etcd restarted, the watch was
//!   cancelled or compacted, the stream stalled) leads back to listing
//!   again, with backoff; meanwhile the last list stays published, so an etcd
//!   outage freezes the ring rather than shrinking it.
//!
//! The two loops nudge each other: a failed renewal asks the watcher to
//! re-list (its stream may be as dead as the renewal's endpoint), and the
//! watcher asks for a re-put when this node's own key disappears while the
//! lease lives (someone deleted it).
//!
//! Leaving: at SIGTERM (`shutdown::leaving`), or when every receiver has
//! been dropped, the task revokes its lease, which removes the key at once:
//! the others' watches take the node out of their rings while it still
//! drains, instead of routing to it until the lease expires. If the process just dies, the lease expires after
//! `lease_ttl` and the others see this node leave then.

use super::dns::publish_if_changed;
use super::{normalize, Member};
use crate::config::{EtcdMembership, OriginUrl};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use log::{debug, info, log, warn, Level};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

/// A quiet watch is re-established after this long without a byte (etcd's
/// progress notifications come every 10 minutes by default), so a connection
/// that died silently, without a reset, cannot freeze the list forever.
const WATCH_IDLE: Duration = Duration::from_secs(300);

/// Member weights are capped like the static config's.
const MAX_WEIGHT: u32 = 100;

pub async fn start(
    etcd: EtcdMembership,
    me: Member,
) -> Result<watch::Receiver<Vec<Member>>, String> {
    let client = Client::new(&etcd.endpoints, call_timeout(etcd.lease_ttl))?;
    let range_end = prefix_range_end(etcd.prefix.as_bytes());
    let node = Node {
        key: format!("{}{}", etcd.prefix, me.addr).into_bytes(),
        prefix: etcd.prefix.into_bytes(),
        range_end,
        ttl_secs: ttl_secs(etcd.lease_ttl),
        me,
        client,
        lease: AtomicI64::new(0),
        registered: AtomicBool::new(false),
        resync: Notify::new(),
        reput: Notify::new(),
    };
    let (tx, rx) = watch::channel(normalize(Vec::new(), &node.me));
    tokio::spawn(async move { node.run(tx).await });
    Ok(rx)
}

fn ttl_secs(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000) as i64).clamp(1, i64::from(i32::MAX))
}

/// Bound on one call: short enough that a hung call cannot outlive the lease.
fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The end of the key range holding every key that starts with `prefix`:
/// the prefix with its last byte incremented (trailing 0xff bytes dropped
/// first), or "\0" (every key) if the prefix is all 0xff.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            if let Some(b) = end.last_mut() {
                *b = last + 1;
            }
            return end;
        }
        end.pop();
    }
    vec![0]
}

struct Node {
    prefix: Vec<u8>,
    range_end: Vec<u8>,
    key: Vec<u8>,
    ttl_secs: i64,
    me: Member,
    client: Client,
    /// The lease our key is (being) put under; 0 = none. Read at exit to revoke it.
    lease: AtomicI64,
    /// Our key has been put under the current lease (as far as we know).
    registered: AtomicBool,
    /// Register -> watch: re-list and re-watch.
    resync: Notify,
    /// Watch -> register: our key is gone while the lease may live; put it again.
    reput: Notify,
}

impl Node {
    async fn run(self, tx: watch::Sender<Vec<Member>>) {
        tokio::select! {
            _ = tx.closed() => {}
            _ = crate::shutdown::leaving() => {}
            never = self.register_loop() => match never {},
            never = self.watch_loop(&tx) => match never {},
        }
        // SIGTERM, or every receiver is gone: nobody here will serve peers
        // much longer, so leave now rather than when the lease runs out (the
        // others' watches drop this node at once). Revoking (rather
        // than deleting the key) also voids a put that the register loop may
        // have had in flight when it was dropped above.
        let lease = self.lease.load(Ordering::Acquire);
        if lease != 0 {
            match self
                .client
                .call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
                .await
            {
                Ok(_) => info!(
                    "membership (etcd): {} deregistered (lease {lease:x} revoked)",
                    self.me.addr
                ),
                Err(e) => warn!(
                    "membership (etcd): revoking lease {lease:x} of {} at shutdown: {e}; it expires within {}s",
                    self.me.addr, self.ttl_secs
                ),
            }
        }
    }

    // ---- register ------------------------------------------------------

    async fn register_loop(&self) -> Infallible {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut failures = 0u32;
        loop {
            self.registered.store(false, Ordering::Release);
            let (lease, ttl) = match self.grant().await {
                Ok(granted) => granted,
                Err(e) => {
                    failures += 1;
                    let delay = backoff.next();
                    log!(
                        level(failures),
                        "membership (etcd): lease grant failed ({failures} in a row), retrying in {delay:?}: {e}"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            // Recorded before the put, so that a revoke at exit covers a put in flight.
            self.lease.store(lease, Ordering::Release);
            if let Err(e) = self.put(lease).await {
                failures += 1;
                let delay = backoff.next();
                log!(
                    level(failures),
                    "membership (etcd): registering {} failed ({failures} in a row), retrying in {delay:?}: {e}",
                    self.me.addr
                );
                // The unused lease expires by itself.
                tokio::time::sleep(delay).await;
                continue;
            }
            backoff.reset();
            failures = 0;
            self.registered.store(true, Ordering::Release);
            info!(
                "membership (etcd): registered {} (lease {lease:x}, ttl {ttl}s)",
                self.me.addr
            );
            self.keep_alive(lease, ttl).await;
        }
    }

    /// Renew `lease` every TTL/3 until etcd says it is gone.
    async fn keep_alive(&self, lease: i64, ttl: i64) {
        let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
        // Retries back off from a quarter of the period up to the period, no
        // further: etcd renews every lease when it comes back (leader
        // election), and a node that then waits longer than the TTL to renew
        // loses its lease after all.
        let mut backoff = Backoff::new(period / 4, period);
        let mut delay = period;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.reput.notified() => {
                    match self.put(lease).await {
                        Ok(()) => info!("membership (etcd): {} put again (its key was missing)", self.me.addr),
                        Err(CallError::Status { status: 404, message }) => {
                            warn!("membership (etcd): lease {lease:x} is gone ({message}); registering again");
                            return;
                        }
                        Err(e) => warn!("membership (etcd): putting {} again: {e}", self.me.addr),
                    }
                    continue;
                }
            }
            match self.renew(lease).await {
                Ok(remaining) if remaining > 0 => {
                    if failures > 0 {
                        info!("membership (etcd): lease {lease:x} renewed again after {failures} failures");
                        // etcd is back: the watcher need not sit out its backoff.
                        self.resync.notify_one();
                    }
                    failures = 0;
                    backoff.reset();
                    delay = period;
                }
                Ok(_) => {
                    warn!(
                        "membership (etcd): lease {lease:x} of {} has expired; registering again",
                        self.me.addr
                    );
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        // The watch may sit on a connection just as dead.
                        self.resync.notify_one();
                    }
                    // Keep renewing the same lease: it may well survive the
                    // outage, and granting a new one now would orphan it.
                    delay = backoff.next();
                    log!(
                        level(failures),
                        "membership (etcd): renewing lease {lease:x} failed ({failures} in a row), retrying in {delay:?}: {e}"
                    );
                }
            }
        }
    }

    async fn grant(&self) -> Result<(i64, i64), CallError> {
        let body = self
            .client
            .call(
                "/v3/lease/grant",
                &json!({ "TTL": self.ttl_secs.to_string() }),
            )
            .await?;
        if let Some(e) = body
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            return Err(CallError::Api(e.to_string()));
        }
        let id = body.get("ID").and_then(int).filter(|id| *id != 0);
        let ttl = body.get("TTL").and_then(int).unwrap_or(self.ttl_secs);
        match id {
            Some(id) => Ok((id, ttl)),
            None => Err(CallError::Api(format!(
                "grant answer without a lease ID: {body}"
            ))),
        }
    }

    async fn put(&self, lease: i64) -> Result<(), CallError> {
        let value = json!({ "addr": self.me.addr, "weight": self.me.weight }).to_string();
        self.client
            .call(
                "/v3/kv/put",
                &json!({
                    "key": B64.encode(&self.key),
                    "value": B64.encode(value),
                    "lease": lease.to_string(),
                }),
            )
            .await
            .map(|_| ())
    }

    /// The lease's remaining TTL in seconds after renewal; 0 if it is gone.
    async fn renew(&self, lease: i64) -> Result<i64, CallError> {
        // A bidirectional stream on the gateway: one request in the body,
        // one `{"result": {...}}` out, then the stream ends.
        let body = self
            .client
            .call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))
            .await?;
        if let Some(e) = body.get("error") {
            return Err(CallError::Api(format!("keepalive: {e}")));
        }
        let result = body.get("result").unwrap_or(&body);
        // proto3 JSON leaves out zero values: no TTL means 0, the lease is gone.
        Ok(result.get("TTL").and_then(int).unwrap_or(0))
    }

    // ---- watch ---------------------------------------------------------

    async fn watch_loop(&self, tx: &watch::Sender<Vec<Member>>) -> Infallible {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut failures = 0u32;
        loop {
            let (revision, mut members) = match self.list().await {
                Ok(listed) => listed,
                Err(e) => {
                    failures += 1;
                    let delay = backoff.next();
                    log!(
                        level(failures),
                        "membership (etcd): listing members failed ({failures} in a row), keeping the current list, retrying in {delay:?}: {e}"
                    );
                    self.pause(delay).await;
                    continue;
                }
            };
            if failures > 0 {
                info!("membership (etcd): listing works again after {failures} failures");
                failures = 0;
            }
            // Our key missing while we think it is there: deleted by someone,
            // or etcd lost its data. (A put racing this listing can make a
            // spare put; that is harmless.)
            if !members.contains_key(&self.key) && self.registered.load(Ordering::Acquire) {
                self.reput.notify_one();
            }
            self.publish(tx, &members);
            // A resync asked for before this listing is answered by it.
            let _ = tokio::time::timeout(Duration::ZERO, self.resync.notified()).await;
            let mut created = false;
            let outcome = self
                .follow(revision + 1, &mut members, tx, &mut created)
                .await;
            if created {
                backoff.reset();
            }
            let delay = backoff.next();
            match outcome {
                Err(e) => warn!("membership (etcd): watch ended ({e}); listing again in {delay:?}"),
                Ok(()) => debug!("membership (etcd): re-listing (resync)"),
            }
            self.pause(delay).await;
        }
    }

    /// Sleep `delay`, or less if the register loop says etcd answers again.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.resync.notified() => {}
        }
    }

    /// `(revision, members by key)` as etcd has them now.
    async fn list(&self) -> Result<(i64, BTreeMap<Vec<u8>, Member>), CallError> {
        let body = self
            .client
            .call(
                "/v3/kv/range",
                &json!({ "key": B64.encode(&self.prefix), "range_end": B64.encode(&self.range_end) }),
            )
            .await?;
        let revision = body
            .pointer("/header/revision")
            .and_then(int)
            .ok_or_else(|| CallError::Api(format!("range answer without a revision: {body}")))?;
        let mut members = BTreeMap::new();
        for kv in body
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some((key, member)) = self.parse_kv(kv) {
                members.insert(key, member);
            }
        }
        Ok((revision, members))
    }

    /// Follow the watch from `start_revision`, applying its events to
    /// `members`. Returns Ok when a resync was asked for, Err on any failure.
    async fn follow(
        &self,
        start_revision: i64,
        members: &mut BTreeMap<Vec<u8>, Member>,
        tx: &watch::Sender<Vec<Member>>,
        created: &mut bool,
    ) -> Result<(), String> {
        let request = json!({ "create_request": {
            "key": B64.encode(&self.prefix),
            "range_end": B64.encode(&self.range_end),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }});
        let mut stream = self
            .client
            .stream("/v3/watch", &request)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let message = tokio::select! {
                _ = self.resync.notified() => return Ok(()),
                next = tokio::time::timeout(WATCH_IDLE, stream.next_json()) => match next {
                    Err(_) => return Err(format!("no word from etcd for {WATCH_IDLE:?}")),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(None)) => return Err("etcd closed the watch stream".into()),
                    Ok(Ok(Some(message))) => message,
                },
            };
            if let Some(e) = message.get("error") {
                return Err(format!("etcd: {e}"));
            }
            let Some(result) = message.get("result") else {
                return Err(format!("unexpected watch message: {message}"));
            };
            if result
                .get("canceled")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                let reason = result
                    .get("cancel_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let compacted = result.get("compact_revision").and_then(int).unwrap_or(0);
                return Err(format!(
                    "watch cancelled by etcd: {reason:?}{}",
                    if compacted > 0 {
                        format!(" (compacted up to revision {compacted})")
                    } else {
                        String::new()
                    }
                ));
            }
            if result
                .get("created")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                *created = true;
                debug!("membership (etcd): watching from revision {start_revision}");
            }
            let events = result.get("events").and_then(Value::as_array);
            if events.is_none_or(|events| events.is_empty()) {
                continue; // created / progress notification
            }
            for event in events.into_iter().flatten() {
                let Some(kv) = event.get("kv") else { continue };
                // proto3 JSON leaves out the default type, PUT.
                if event.get("type").and_then(Value::as_str) == Some("DELETE") {
                    let Some(key) = kv
                        .get("key")
                        .and_then(Value::as_str)
                        .and_then(|k| B64.decode(k).ok())
                    else {
                        continue;
                    };
                    if key == self.key && self.registered.load(Ordering::Acquire) {
                        // Lease expiry deletes it too; then the put fails and
                        // the register loop grants a new lease.
                        self.reput.notify_one();
                    }
                    members.remove(&key);
                } else if let Some((key, member)) = self.parse_kv(kv) {
                    members.insert(key, member);
                }
            }
            self.publish(tx, members);
        }
    }

    /// A key-value under the prefix as `(key, member)`. The value is
    /// `{"addr","weight"}` as written by `put`, or a bare address; when
    /// neither parses, the key's suffix is the address.
    fn parse_kv(&self, kv: &Value) -> Option<(Vec<u8>, Member)> {
        let key = B64.decode(kv.get("key")?.as_str()?).ok()?;
        let suffix = key.strip_prefix(self.prefix.as_slice())?;
        let value = kv
            .get("value")
            .and_then(Value::as_str)
            .and_then(|v| B64.decode(v).ok())
            .unwrap_or_default();
        let member = parse_member(suffix, &value)?;
        Some((key, member))
    }

    fn publish(&self, tx: &watch::Sender<Vec<Member>>, members: &BTreeMap<Vec<u8>, Member>) {
        let list = normalize(members.values().cloned().collect(), &self.me);
        publish_if_changed(tx, list, "etcd");
    }
}

fn parse_member(key_suffix: &[u8], value: &[u8]) -> Option<Member> {
    let weight_of = |v: &Value| {
        v.get("weight")
            .and_then(Value::as_u64)
            .map(|w| w.clamp(1, u64::from(MAX_WEIGHT)) as u32)
            .unwrap_or(1)
    };
    if let Ok(v) = serde_json::from_slice::<Value>(value) {
        if let Some(addr) = v.get("addr").and_then(Value::as_str).map(str::trim) {
            if !addr.is_empty() {
                return Some(Member::new(addr, weight_of(&v)));
            }
        }
        // A JSON object without an address: weight from it, address from the key.
        if v.is_object() {
            let addr = std::str::from_utf8(key_suffix).ok()?.trim();
            return (!addr.is_empty()).then(|| Member::new(addr, weight_of(&v)));
        }
    }
    let text = std::str::from_utf8(value).ok().map(str::trim).unwrap_or("");
    let addr = if text.is_empty() || text.starts_with('{') {
        std::str::from_utf8(key_suffix).ok()?.trim()
    } else {
        text
    };
    (!addr.is_empty()).then(|| Member::new(addr, 1))
}

/// Warn on the first failure of a streak and every tenth, debug otherwise:
/// an outage should be visible without flooding the log at the retry rate.
fn level(failures: u32) -> Level {
    if failures <= 1 || failures.is_multiple_of(10) {
        Level::Warn
    } else {
        Level::Debug
    }
}

/// proto3 JSON writes 64-bit integers as strings; accept numbers too.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Exponential backoff with jitter (50-100% of the step), so that many
/// sidecars do not retry a recovering etcd in lockstep.
struct Backoff {
    base: Duration,
    max: Duration,
    step: Duration,
    seed: u64,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Backoff {
            base,
            max: max.max(base),
            step: base,
            seed,
        }
    }

    fn next(&mut self) -> Duration {
        // xorshift64: plenty for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let delay = self.step.mul_f64(fraction);
        self.step = self.step.saturating_mul(2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.step = self.base;
    }
}

// ---- a small HTTP/1.1 client for the JSON gateway ----------------------

#[derive(Debug)]
enum CallError {
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

struct Endpoint {
    host: String,
    port: u16,
    host_header: String,
    url: String,
}

struct Client {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that last answered: tried first.
    preferred: AtomicUsize,
    timeout: Duration,
}

/// Largest unary answer accepted (a range over the prefix lists every member).
const MAX_BODY: usize = 16 << 20;
const MAX_HEAD: usize = 64 << 10;

impl Client {
    fn new(urls: &[String], timeout: Duration) -> Result<Client, String> {
        let mut endpoints = Vec::new();
        for url in urls {
            let parsed = OriginUrl::parse(url)
                .map_err(|why| format!("cluster.membership.etcd.endpoints: {url:?}: {why}"))?;
            if parsed.tls {
                return Err(format!(
                    "cluster.membership.etcd.endpoints: {url:?}: only http:// endpoints are supported"
                ));
            }
            endpoints.push(Endpoint {
                host_header: parsed.host_header(),
                url: parsed.key_prefix(),
                host: parsed.host,
                port: parsed.port,
            });
        }
        if endpoints.is_empty() {
            return Err("cluster.membership.etcd.endpoints: none given".into());
        }
        Ok(Client {
            endpoints,
            preferred: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Endpoint indexes to try, in configured order starting with the preferred one.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (first + i) % n)
    }

    /// POST `body` to `path` and return the answer's first JSON value.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let body = body.to_string();
        let mut last = CallError::Transport("no endpoint".into());
        for i in self.order() {
            let endpoint = &self.endpoints[i];
            let attempt = async {
                let mut response = Response::send(endpoint, path, body.as_bytes()).await?;
                let data = response.read_all(MAX_BODY).await?;
                Ok::<_, CallError>((response.status, data))
            };
            let outcome = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(CallError::Transport(format!(
                    "no answer within {:?}",
                    self.timeout
                ))),
            };
            match outcome {
                Ok((status, data)) => {
                    if status >= 500 {
                        last = CallError::Transport(format!(
                            "{}{path}: HTTP {status}: {}",
                            endpoint.url,
                            error_message(&data)
                        ));
                        debug!("membership (etcd): {last}");
                        continue;
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    if status != 200 {
                        return Err(CallError::Status {
                            status,
                            message: error_message(&data),
                        });
                    }
                    return first_json(&data).ok_or_else(|| {
                        CallError::Api(format!(
                            "{}{path}: answer is not JSON: {:?}",
                            endpoint.url,
                            String::from_utf8_lossy(&data[..data.len().min(200)])
                        ))
                    });
                }
                Err(e) => {
                    last = CallError::Transport(format!("{}{path}: {e}", endpoint.url));
                    debug!("membership (etcd): {last}");
                }
            }
        }
        Err(last)
    }

    /// POST `body` to `path` and return the answer as a stream of JSON values.
    async fn stream(&self, path: &str, body: &Value) -> Result<JsonStream, CallError> {
        let body = body.to_string();
        let mut last = CallError::Transport("no endpoint".into());
        for i in self.order() {
            let endpoint = &self.endpoints[i];
            let opened = tokio::time::timeout(
                self.timeout,
                Response::send(endpoint, path, body.as_bytes()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(CallError::Transport(format!(
                    "no answer within {:?}",
                    self.timeout
                )))
            });
            match opened {
                Ok(response) if response.status == 200 => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(JsonStream {
                        response,
                        pending: Vec::new(),
                    });
                }
                Ok(mut response) => {
                    let status = response.status;
                    let data = tokio::time::timeout(self.timeout, response.read_all(MAX_HEAD))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    let message = error_message(&data);
                    if status < 500 {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Err(CallError::Status { status, message });
                    }
                    last = CallError::Transport(format!(
                        "{}{path}: HTTP {status}: {message}",
                        endpoint.url
                    ));
                }
                Err(e) => last = CallError::Transport(format!("{}{path}: {e}", endpoint.url)),
            }
            debug!("membership (etcd): {last}");
        }
        Err(last)
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
    String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned()
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// `Content-Length`: this many bytes left.
    Length(usize),
    /// Chunked: at a chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes of the current chunk left.
    ChunkData(usize),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Until the server closes the connection.
    UntilClose,
    Done,
}

struct Response {
    status: u16,
    stream: TcpStream,
    buf: BytesMut,
    framing: Framing,
}

impl Response {
    /// Connect, send one POST, and read the answer's head.
    async fn send(endpoint: &Endpoint, path: &str, body: &[u8]) -> Result<Response, CallError> {
        let io = |what: &str, e: std::io::Error| CallError::Transport(format!("{what}: {e}"));
        let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| io("connect", e))?;
        let _ = stream.set_nodelay(true);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            endpoint.host_header,
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        // Never shut down the write half: Go's server reads EOF on the
        // request side as the client going away and cancels the watch.
        stream
            .write_all(&request)
            .await
            .map_err(|e| io("send", e))?;
        let mut response = Response {
            status: 0,
            stream,
            buf: BytesMut::with_capacity(8 << 10),
            framing: Framing::UntilClose,
        };
        loop {
            response.read_head().await?;
            // 1xx answers are followed by the real one.
            if !(100..200).contains(&response.status) {
                return Ok(response);
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, CallError> {
        self.buf.reserve(8 << 10);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| CallError::Transport(format!("read: {e}")))
    }

    async fn read_head(&mut self) -> Result<(), CallError> {
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(CallError::Transport("response head too large".into()));
            }
            if self.fill().await? == 0 {
                return Err(CallError::Transport(
                    "connection closed before the response head".into(),
                ));
            }
        };
        let head = self.buf.split_to(end + 4);
        let text = String::from_utf8_lossy(&head[..end]);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or("");
        self.status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| CallError::Transport(format!("bad status line {status_line:?}")))?;
        let mut chunked = false;
        let mut length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length =
                    Some(value.parse::<usize>().map_err(|_| {
                        CallError::Transport(format!("bad content-length {value:?}"))
                    })?);
            }
        }
        self.framing =
            if (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
                Framing::Done
            } else if chunked {
                Framing::ChunkSize
            } else if let Some(n) = length {
                Framing::Length(n)
            } else {
                Framing::UntilClose
            };
        Ok(())
    }

    /// A line (without its CRLF) from the buffer, reading more as needed.
    async fn read_line(&mut self) -> Result<BytesMut, CallError> {
        loop {
            if let Some(at) = find(&self.buf, b"\n") {
                let mut line = self.buf.split_to(at + 1);
                line.truncate(at);
                if line.last() == Some(&b'\r') {
                    line.truncate(at - 1);
                }
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err(CallError::Transport("chunk header line too long".into()));
            }
            if self.fill().await? == 0 {
                return Err(CallError::Transport(
                    "connection closed inside a chunked body".into(),
                ));
            }
        }
    }

    /// The next piece of the body, or None at its end.
    async fn next_data(&mut self) -> Result<Option<BytesMut>, CallError> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        return Err(CallError::Transport(
                            "connection closed inside the body".into(),
                        ));
                    }
                    let n = left.min(self.buf.len());
                    self.framing = Framing::Length(left - n);
                    return Ok(Some(self.buf.split_to(n)));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split()));
                }
                Framing::ChunkSize => {
                    let line = self.read_line().await?;
                    let text = String::from_utf8_lossy(&line);
                    let size = text.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| CallError::Transport(format!("bad chunk size {text:?}")))?;
                    if size == 0 {
                        // Trailers (etcd sends some on errors), up to an empty line.
                        loop {
                            if self.read_line().await?.is_empty() {
                                break;
                            }
                        }
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    self.framing = Framing::ChunkData(size);
                }
                Framing::ChunkData(left) => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        return Err(CallError::Transport(
                            "connection closed inside a chunk".into(),
                        ));
                    }
                    let n = left.min(self.buf.len());
                    self.framing = if n == left {
                        Framing::ChunkEnd
                    } else {
                        Framing::ChunkData(left - n)
                    };
                    return Ok(Some(self.buf.split_to(n)));
                }
                Framing::ChunkEnd => {
                    if !self.read_line().await?.is_empty() {
                        return Err(CallError::Transport("chunk not followed by CRLF".into()));
                    }
                    self.framing = Framing::ChunkSize;
                }
            }
        }
    }

    async fn read_all(&mut self, max: usize) -> Result<Vec<u8>, CallError> {
        let mut body = Vec::new();
        while let Some(data) = self.next_data().await? {
            if body.len() + data.len() > max {
                return Err(CallError::Transport(format!(
                    "response larger than {max} bytes"
                )));
            }
            body.extend_from_slice(&data);
        }
        Ok(body)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response body read as a sequence of JSON values (the gateway writes one
/// per message, newline-separated, with no regard for chunk boundaries).
struct JsonStream {
    response: Response,
    pending: Vec<u8>,
}

impl JsonStream {
    async fn next_json(&mut self) -> Result<Option<Value>, String> {
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
                    return Err(format!("bad JSON in the watch stream: {e}"))
                }
                // Only whitespace, or a value cut short: read on.
                _ => {}
            }
            match self.response.next_data().await.map_err(|e| e.to_string())? {
                Some(data) => {
                    if self.pending.len() + data.len() > MAX_BODY {
                        return Err("watch message too large".into());
                    }
                    self.pending.extend_from_slice(&data);
                }
                None => {
                    return if self.pending.iter().all(u8::is_ascii_whitespace) {
                        Ok(None)
                    } else {
                        Err("watch stream ended inside a message".into())
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_increments_the_last_byte() {
        assert_eq!(
            prefix_range_end(b"/ringside/members/"),
            b"/ringside/members0".to_vec()
        );
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(10)), 10);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }

    #[test]
    fn members_parse_from_json_bare_or_key() {
        let m = parse_member(b"10.0.0.1:7070", br#"{"addr":"10.0.0.1:7070","weight":3}"#);
        assert_eq!(m, Some(Member::new("10.0.0.1:7070", 3)));
        let m = parse_member(b"x", b" 10.0.0.2:7070\n");
        assert_eq!(m, Some(Member::new("10.0.0.2:7070", 1)));
        let m = parse_member(b"10.0.0.3:7070", b"");
        assert_eq!(m, Some(Member::new("10.0.0.3:7070", 1)));
        let m = parse_member(b"10.0.0.4:7070", br#"{"weight":1000}"#);
        assert_eq!(m, Some(Member::new("10.0.0.4:7070", MAX_WEIGHT)));
        assert_eq!(parse_member(b"", b""), None);
    }

    #[test]
    fn int64_as_string_or_number() {
        assert_eq!(
            int(&json!("7587869364296343303")),
            Some(7587869364296343303)
        );
        assert_eq!(int(&json!(12)), Some(12));
        assert_eq!(int(&json!(null)), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.next()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn error_messages_come_from_etcd_json() {
        let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(error_message(body), "etcdserver: requested lease not found");
        let stream_err = br#"{"error":{"grpc_code":14,"http_code":503,"message":"no leader"}}"#;
        assert_eq!(error_message(stream_err), "no leader");
    }

    /// A chunked, trailer-carrying, message-splitting answer decodes into the
    /// JSON values it carries. Served by a local socket so that the real
    /// reader runs.
    #[tokio::test]
    async fn chunked_json_stream_decodes_across_chunk_boundaries() {
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
        let client = match Client::new(
            &[format!("http://127.0.0.1:{port}")],
            Duration::from_secs(5),
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let mut stream = match client.stream("/v3/watch", &json!({})).await {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let first = stream.next_json().await;
        assert_eq!(first, Ok(Some(json!({"result":{"created":true}}))));
        let second = stream.next_json().await;
        assert_eq!(
            second,
            Ok(Some(json!({"result":{"events":[{"kv":{"key":"YQ=="}}]}})))
        );
        assert_eq!(stream.next_json().await, Ok(None));
        let _ = server.await;
    }
}
