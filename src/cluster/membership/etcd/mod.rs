//! etcd membership: every node registers itself under a key prefix with a
//! lease, and watches the prefix to learn who else is there.
//!
//! It speaks etcd v3's JSON gateway (`/v3/...`, etcd 3.4 and later) through
//! pingora's client connector (`gateway.rs`), over plain HTTP or TLS, with
//! etcd's users if configured (the files and the password: `credentials.rs`).
//! Not the `etcd-client` crate: its build script needs `protoc`, while
//! building ringside needs only Rust and cmake, and it brings tonic and prost
//! for a handful of calls. pingora's connector is already built, speaks TLS
//! through rustls, and is the client ringside uses for its origins.
//!
//! One task per node runs two loops side by side, and owns the
//! `watch::Sender`:
//! - **register**: once this node's peer listener accepts connections (so
//!   that nobody routes to it before it can answer), grant a lease
//!   (`lease_ttl`), put `prefix + addr` =
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
//! A node that cannot reach or convince etcd (wrong CA, wrong password)
//! says why in the log at every tenth failure, stays out of the others'
//! rings, and keeps serving with the list it has (at first, itself alone).
//!
//! Leaving: at SIGTERM, once the other members were told (`announce.rs`,
//! at most [`ANNOUNCE_FIRST`] later), or when every receiver has
//! been dropped, the task revokes its lease, which removes the key at once:
//! the others' watches take the node out of their rings while it still
//! drains, instead of routing to it until the lease expires. If the process
//! just dies, the lease expires after `lease_ttl` and the others see this
//! node leave then.

mod credentials;
mod gateway;

use super::publish_if_changed;
use super::{normalize, Member};
use crate::cluster::backoff::Backoff;
use crate::config::EtcdMembership;
use crate::error;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use gateway::{CallError, Gateway};
use log::{debug, info, log, warn, Level};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// A quiet watch is re-established after this long without a byte (etcd's
/// progress notifications come every 10 minutes by default), so a connection
/// that died silently, without a reset, cannot freeze the list forever.
const WATCH_IDLE: Duration = Duration::from_secs(300);

/// At SIGTERM, the longest the lease is kept while the other members are
/// told (`announce.rs`): they learn the node still serves before they see it
/// leave.
const ANNOUNCE_FIRST: Duration = Duration::from_secs(3);

/// Member weights are capped like the static config's.
const MAX_WEIGHT: u32 = 100;

/// Members as etcd has them, by key.
type Members = BTreeMap<Vec<u8>, Member>;

/// Start registering `me` (once `serving`, this node's peer listener,
/// accepts connections, if given) and watching the members.
pub async fn start(
    etcd: EtcdMembership,
    me: Member,
    serving: Option<String>,
) -> error::Result<watch::Receiver<Vec<Member>>> {
    let gateway = Gateway::new(&etcd, call_timeout(etcd.lease_ttl))?;
    let range_end = prefix_range_end(etcd.prefix.as_bytes());
    let node = Node {
        key: format!("{}{}", etcd.prefix, me.addr).into_bytes(),
        prefix: etcd.prefix.into_bytes(),
        range_end,
        ttl_secs: ttl_secs(etcd.lease_ttl),
        me,
        serving,
        gateway,
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
    /// This node's peer listener: registered once it accepts connections.
    serving: Option<String>,
    gateway: Gateway,
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
        // The exit waits (within `shutdown_grace`) until the lease is
        // revoked below: taken at SIGTERM instead, the hold could come after
        // a drain that ends at once, and the key would outlive the process
        // by its lease's TTL.
        let _hold = crate::shutdown::hold_exit();
        tokio::select! {
            _ = tx.closed() => {}
            _ = crate::shutdown::left(ANNOUNCE_FIRST) => {}
            never = self.register_loop() => match never {},
            never = self.watch_loop(&tx) => match never {},
        }
        // SIGTERM, or every receiver is gone: nobody here will serve peers
        // much longer, so leave now rather than when the lease runs out.
        self.leave().await;
    }

    /// Revoke the lease, which deletes our key at once (the others' watches
    /// drop this node). Revoking rather than deleting the key also voids a
    /// put that the register loop may have had in flight when it stopped.
    async fn leave(&self) {
        let lease = self.lease.load(Ordering::Acquire);
        if lease == 0 {
            return;
        }
        let revoke = json!({ "ID": lease.to_string() });
        match self.gateway.call("/v3/lease/revoke", &revoke).await {
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

    // ---- register ------------------------------------------------------

    async fn register_loop(&self) -> Infallible {
        if let Some(listener) = &self.serving {
            if !super::listening(listener).await {
                warn!("membership (etcd): peer listener {listener} is not up; registering anyway");
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut failures = 0u32;
        loop {
            self.registered.store(false, Ordering::Release);
            match self.register().await {
                Ok((lease, ttl)) => {
                    backoff.reset();
                    failures = 0;
                    self.registered.store(true, Ordering::Release);
                    info!(
                        "membership (etcd): registered {} (lease {lease:x}, ttl {ttl}s)",
                        self.me.addr
                    );
                    self.keep_alive(lease, ttl).await;
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff.next_delay();
                    log!(
                        level(failures),
                        "membership (etcd): registering {} failed ({failures} in a row), retrying in {delay:?}: {e}",
                        self.me.addr
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Grant a lease and put our key under it: `(lease, ttl)`. A lease left
    /// unused by a failed put expires by itself.
    async fn register(&self) -> error::Result<(i64, i64)> {
        let (lease, ttl) = self
            .grant()
            .await
            .map_err(|e| etcd_error("lease grant", e))?;
        // Recorded before the put, so that a revoke at exit covers a put in flight.
        self.lease.store(lease, Ordering::Release);
        self.put(lease).await.map_err(|e| etcd_error("put", e))?;
        Ok((lease, ttl))
    }

    /// Renew `lease` every TTL/3 until etcd says it is gone.
    async fn keep_alive(&self, lease: i64, ttl: i64) {
        let mut schedule = Renewals::new(ttl);
        let mut delay = schedule.period;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.reput.notified() => {
                    if !self.put_again(lease).await {
                        return;
                    }
                    continue;
                }
            }
            match self.renew_once(lease, &mut schedule).await {
                Some(next) => delay = next,
                None => return,
            }
        }
    }

    /// Renew `lease` now: how long until the next renewal, or None when the
    /// lease is gone.
    async fn renew_once(&self, lease: i64, schedule: &mut Renewals) -> Option<Duration> {
        match self.renew(lease).await {
            Ok(remaining) if remaining > 0 => {
                if schedule.failures > 0 {
                    info!(
                        "membership (etcd): lease {lease:x} renewed again after {} failures",
                        schedule.failures
                    );
                    // etcd is back: the watcher need not sit out its backoff.
                    self.resync.notify_one();
                }
                Some(schedule.succeeded())
            }
            Ok(_) => {
                warn!(
                    "membership (etcd): lease {lease:x} of {} has expired; registering again",
                    self.me.addr
                );
                None
            }
            Err(e) => {
                let delay = schedule.failed();
                if schedule.failures == 1 {
                    // The watch may sit on a connection just as dead.
                    self.resync.notify_one();
                }
                // Keep renewing the same lease: it may well survive the
                // outage, and granting a new one now would orphan it.
                log!(
                    level(schedule.failures),
                    "membership (etcd): renewing lease {lease:x} failed ({} in a row), retrying in {delay:?}: {e}",
                    schedule.failures
                );
                Some(delay)
            }
        }
    }

    /// Put our key again under `lease` (someone deleted it). False when the
    /// lease itself is gone: register anew.
    async fn put_again(&self, lease: i64) -> bool {
        match self.put(lease).await {
            Ok(()) => info!(
                "membership (etcd): {} put again (its key was missing)",
                self.me.addr
            ),
            Err(CallError::Status {
                status: 404,
                message,
            }) => {
                warn!("membership (etcd): lease {lease:x} is gone ({message}); registering again");
                return false;
            }
            Err(e) => warn!("membership (etcd): putting {} again: {e}", self.me.addr),
        }
        true
    }

    async fn grant(&self) -> Result<(i64, i64), CallError> {
        let grant = json!({ "TTL": self.ttl_secs.to_string() });
        let body = self.gateway.call("/v3/lease/grant", &grant).await?;
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
        let put = json!({
            "key": B64.encode(&self.key),
            "value": B64.encode(value),
            "lease": lease.to_string(),
        });
        self.gateway.call("/v3/kv/put", &put).await.map(|_| ())
    }

    /// The lease's remaining TTL in seconds after renewal; 0 if it is gone.
    async fn renew(&self, lease: i64) -> Result<i64, CallError> {
        // A bidirectional stream on the gateway: one request in the body,
        // one `{"result": {...}}` out, then the stream ends.
        let keepalive = json!({ "ID": lease.to_string() });
        let body = self.gateway.call("/v3/lease/keepalive", &keepalive).await?;
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
                    let delay = backoff.next_delay();
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
            self.adopt(tx, &members).await;
            let mut created = false;
            let outcome = self
                .follow(revision + 1, &mut members, tx, &mut created)
                .await;
            if created {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match outcome {
                Err(e) => warn!("membership (etcd): watch ended ({e}); listing again in {delay:?}"),
                Ok(()) => debug!("membership (etcd): re-listing (resync)"),
            }
            self.pause(delay).await;
        }
    }

    /// Publish a fresh listing. It answers any resync asked for before it,
    /// and asks for a re-put if our key is missing while we think it is
    /// there: deleted by someone, or etcd lost its data. (A put racing the
    /// listing can make a spare put; that is harmless.)
    async fn adopt(&self, tx: &watch::Sender<Vec<Member>>, members: &Members) {
        if !members.contains_key(&self.key) && self.registered.load(Ordering::Acquire) {
            self.reput.notify_one();
        }
        self.publish(tx, members);
        let _ = tokio::time::timeout(Duration::ZERO, self.resync.notified()).await;
    }

    /// Sleep `delay`, or less if the register loop says etcd answers again.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.resync.notified() => {}
        }
    }

    /// `(revision, members by key)` as etcd has them now.
    async fn list(&self) -> Result<(i64, Members), CallError> {
        let range =
            json!({ "key": B64.encode(&self.prefix), "range_end": B64.encode(&self.range_end) });
        let body = self.gateway.call("/v3/kv/range", &range).await?;
        let revision = body
            .pointer("/header/revision")
            .and_then(int)
            .ok_or_else(|| CallError::Api(format!("range answer without a revision: {body}")))?;
        let kvs = body.get("kvs").and_then(Value::as_array);
        let members = kvs
            .into_iter()
            .flatten()
            .filter_map(|kv| self.parse_kv(kv))
            .collect();
        Ok((revision, members))
    }

    /// Follow the watch from `start_revision`, applying its events to
    /// `members`. Returns Ok when a resync was asked for, Err on any failure.
    async fn follow(
        &self,
        start_revision: i64,
        members: &mut Members,
        tx: &watch::Sender<Vec<Member>>,
        created: &mut bool,
    ) -> error::Result<()> {
        let broken = |why: String| error::Error::new(error::Kind::Etcd, why);
        let mut stream = self
            .gateway
            .stream("/v3/watch", &self.watch_request(start_revision))
            .await
            .map_err(|e| broken(e.to_string()))?;
        loop {
            let message = tokio::select! {
                _ = self.resync.notified() => return Ok(()),
                next = tokio::time::timeout(WATCH_IDLE, stream.next_json()) => match next {
                    Err(_) => return Err(broken(format!("no word from etcd for {WATCH_IDLE:?}"))),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(None)) => return Err(broken("etcd closed the watch stream".into())),
                    Ok(Ok(Some(message))) => message,
                },
            };
            let result = watch_result(&message).inspect_err(|e| {
                if e.to_string().contains("permission denied") {
                    // Likely a token that expired just before the watch began.
                    self.gateway.forget_tokens();
                }
            })?;
            if result.get("created").and_then(Value::as_bool) == Some(true) {
                *created = true;
                debug!("membership (etcd): watching from revision {start_revision}");
            }
            if self.apply_events(result, members) {
                self.publish(tx, members);
            }
        }
    }

    /// Watch every key under the prefix from `start_revision` on.
    fn watch_request(&self, start_revision: i64) -> Value {
        json!({ "create_request": {
            "key": B64.encode(&self.prefix),
            "range_end": B64.encode(&self.range_end),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }})
    }

    /// Apply a watch result's events to `members`; false if it had none
    /// (the watch's creation, or a progress notification).
    fn apply_events(&self, result: &Value, members: &mut Members) -> bool {
        let events = result.get("events").and_then(Value::as_array);
        let Some(events) = events.filter(|events| !events.is_empty()) else {
            return false;
        };
        for event in events {
            let Some(kv) = event.get("kv") else { continue };
            // proto3 JSON leaves out the default type, PUT.
            if event.get("type").and_then(Value::as_str) != Some("DELETE") {
                if let Some((key, member)) = self.parse_kv(kv) {
                    members.insert(key, member);
                }
                continue;
            }
            let Some(key) = kv
                .get("key")
                .and_then(Value::as_str)
                .and_then(|k| B64.decode(k).ok())
            else {
                continue;
            };
            if key == self.key && self.registered.load(Ordering::Acquire) {
                // Lease expiry deletes it too; then the put fails and the
                // register loop grants a new lease.
                self.reput.notify_one();
            }
            members.remove(&key);
        }
        true
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

    fn publish(&self, tx: &watch::Sender<Vec<Member>>, members: &Members) {
        let list = normalize(members.values().cloned().collect(), &self.me);
        publish_if_changed(tx, list, "etcd");
    }
}

/// A watch message's `result`, or why the watch is over: etcd reported an
/// error, or cancelled the watch (compaction past its revision, permissions).
fn watch_result(message: &Value) -> error::Result<&Value> {
    let broken = |why: String| error::Error::new(error::Kind::Etcd, why);
    if let Some(e) = message.get("error") {
        return Err(broken(format!("etcd: {e}")));
    }
    let Some(result) = message.get("result") else {
        return Err(broken(format!("unexpected watch message: {message}")));
    };
    if result.get("canceled").and_then(Value::as_bool) != Some(true) {
        return Ok(result);
    }
    let reason = result
        .get("cancel_reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    let compacted = match result.get("compact_revision").and_then(int) {
        Some(revision) if revision > 0 => format!(" (compacted up to revision {revision})"),
        _ => String::new(),
    };
    Err(broken(format!(
        "watch cancelled by etcd: {reason:?}{compacted}"
    )))
}

/// `call` to etcd failed with `e`.
fn etcd_error(call: &str, e: impl fmt::Display) -> error::Error {
    error::Error::new(error::Kind::Etcd, format!("{call}: {e}"))
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

/// When to renew a lease: every TTL/3 while renewals succeed. Retries
/// back off from a quarter of that period up to the period, no further:
/// etcd renews every lease when it comes back (leader election), and a node
/// that then waits longer than the TTL to renew loses its lease after all.
struct Renewals {
    period: Duration,
    backoff: Backoff,
    /// Failed renewals in a row.
    failures: u32,
}

impl Renewals {
    fn new(ttl_secs: i64) -> Renewals {
        let period = Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
        Renewals {
            period,
            backoff: Backoff::new(period / 4, period),
            failures: 0,
        }
    }

    /// The delay after a renewal that worked.
    fn succeeded(&mut self) -> Duration {
        self.failures = 0;
        self.backoff.reset();
        self.period
    }

    /// The delay after a renewal that failed.
    fn failed(&mut self) -> Duration {
        self.failures += 1;
        self.backoff.next_delay()
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
}
