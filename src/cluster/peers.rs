//! Peers: how sidecars talk to each other, and how they prove who they are.
//!
//! The protocol is plain HTTP/1.1 with pooled keep-alive connections (the
//! same pingora connector as origin fills; HTTP/2 over cleartext with
//! `cluster.peer_protocol: h2c`, measured slower on loopback; over mutual
//! TLS with `cluster.tls`, see `peer_tls.rs`) to each peer's *peer
//! listener*, never to its app-facing one. A peer request is the
//! client's request as a fill would send it to the origin (a GET without a
//! body), or a `PURGE` from the admin endpoint, plus these headers:
//!
//! | header                    | meaning                                                   |
//! |---------------------------|-----------------------------------------------------------|
//! | `x-ringside-origin`       | which origin (`scheme://host:port`) the key belongs to     |
//! | `x-ringside-from`         | the sender's advertised peer address                      |
//! | `x-ringside-to`           | the receiver's peer address, as the sender's ring names it |
//! | `x-ringside-generation`   | the sender's ring generation (views can be compared)      |
//! | `x-ringside-timestamp`    | unix seconds; refused more than 30 s from the receiver's clock |
//! | `x-ringside-nonce`        | 128 bits never used before (32 hex digits), accepted once |
//! | `x-ringside-purge-prefix` | on a `PURGE`: every key under the path, not just the key  |
//! | `x-ringside-lookup`       | on a GET: a previous-owner lookup, answered from the cache only |
//! | `x-ringside-body-sha256`  | on a `HANDOFF`: hex SHA-256 of its body (the only request with one) |
//! | `x-ringside-signature`    | HMAC-SHA256 of the canonical request below, keyed by the cluster secret (base64) |
//!
//! The canonical request, one line each (`\n`-terminated):
//!
//! ```text
//! ringside-peer-v2
//! <method>
//! <path and query, exactly as sent>
//! purge: none | key | prefix
//! body-sha256: <x-ringside-body-sha256 if sent, else that of "" (no body)>
//! <name>:<value>      for every signed header field, sorted by name (lower case),
//!                     repeated fields in the order sent, values without surrounding blanks
//! ```
//!
//! Every header field is signed except the signature itself, `host` (HTTP/2
//! sends it as `:authority`) and the hop-by-hop ones (RFC 9110 §7.6.1: an
//! HTTP/2 client drops them); the receiver removes these unsigned ones
//! before acting on the request. So the signature covers the
//! `x-ringside-*` fields above and every end-to-end header the owner reads
//! (`Cache-Control`, the headers its stored responses vary on, `Range`) or
//! passes on to its origin (a fill forwards the client's end-to-end headers).
//! A header added on the way breaks it: nothing between peers may add any.
//!
//! Besides GET, HEAD and `PURGE`, members send each other three notices
//! (see `announce.rs` and `handoff/`): `LEAVING` (the sender is leaving the
//! ring), `JOINED` (it is back) and `HANDOFF` (entries it owned, for the
//! receiver to keep). A `HANDOFF` is the one request with a body: its
//! digest travels in the signed `x-ringside-body-sha256`, and the receiver
//! checks the body it reads against it ([`body_matches`]).
//!
//! The receiver ([`PeerAuth::verify`], then [`SeenNonces::first_use`]) checks,
//! in this order: the credentials are present; the request carries no body
//! framing (`Content-Length`, `Transfer-Encoding`) unless it declares its
//! body's digest; the timestamp is within
//! 30 s; the signature (compared in constant time); the request is addressed
//! to this node (`x-ringside-to` is its `cluster.me`) and not sent by it;
//! the nonce was not seen before. Any failure is a 401, counted in
//! `ringside_peer_auth_failures_total`. Nonces are remembered for 60 s (twice
//! the timestamp window, so a nonce is refused for as long as its timestamp
//! would pass) in a table of at most 32,768; when more arrive, the oldest
//! are forgotten and every request no newer than them gets 503 (its sender
//! loads from its origin instead), so a replay is never accepted.
//!
//! So the secret itself never crosses the wire, and a captured request can be
//! neither altered (another path, origin, purge mode or header), nor replayed
//! (to the same node, another node or its sender), nor used much later. A
//! request that arrived on the peer listener is served from the owner's cache
//! or its origin, never forwarded again, whatever the receiver thinks of the
//! ring (the loop guard).
//!
//! [`PeerHealth`] remembers peers that failed and skips them for a backoff
//! that doubles with each failure (up to 16x), so a dead peer costs one
//! timeout, not one per request.

use crate::cluster::backoff;
use crate::config::{ClusterConfig, MIN_SECRET_LEN};
use crate::metrics;
use crate::net::secret_files;
use crate::net::watched_files::Watched;
use crate::rfc::headers::hop_by_hop_names;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use parking_lot::Mutex;
use ring::hmac;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

pub static ORIGIN: HeaderName = HeaderName::from_static("x-ringside-origin");
pub static FROM: HeaderName = HeaderName::from_static("x-ringside-from");
pub static TO: HeaderName = HeaderName::from_static("x-ringside-to");
pub static GENERATION: HeaderName = HeaderName::from_static("x-ringside-generation");
pub static TIMESTAMP: HeaderName = HeaderName::from_static("x-ringside-timestamp");
pub static NONCE: HeaderName = HeaderName::from_static("x-ringside-nonce");
pub static SIGNATURE: HeaderName = HeaderName::from_static("x-ringside-signature");
/// On a peer PURGE: purge every key starting with the path.
pub static PURGE_PREFIX: HeaderName = HeaderName::from_static("x-ringside-purge-prefix");

/// On a GET: a previous owner is asked for its copy (answered from its
/// cache, or a fill already under way there; never filled, never forwarded).
pub static LOOKUP: HeaderName = HeaderName::from_static("x-ringside-lookup");
/// On a request with a body (`HANDOFF`): the hex SHA-256 of that body.
pub static BODY_SHA256: HeaderName = HeaderName::from_static("x-ringside-body-sha256");

/// Every peer-protocol header: removed before anything goes to an origin.
pub static HEADERS: [&HeaderName; 10] = [
    &ORIGIN,
    &FROM,
    &TO,
    &GENERATION,
    &TIMESTAMP,
    &NONCE,
    &SIGNATURE,
    &PURGE_PREFIX,
    &LOOKUP,
    &BODY_SHA256,
];

/// The notices members send each other (methods of their own, like `PURGE`).
pub const LEAVING: &str = "LEAVING";
pub const JOINED: &str = "JOINED";
pub const HANDOFF: &str = "HANDOFF";

/// The hex SHA-256 of a request body, for [`BODY_SHA256`].
pub fn body_digest(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `body` is the one a verified request's signed digest names.
pub fn body_matches(headers: &HeaderMap, body: &[u8]) -> bool {
    headers
        .get(&BODY_SHA256)
        .is_some_and(|declared| declared.as_bytes() == body_digest(body).as_bytes())
}

pub fn strip_peer_headers(headers: &mut HeaderMap) {
    for name in HEADERS {
        headers.remove(name);
    }
}

/// On a peer listener's refusals (401, 403, 405, 503...), the reason: the
/// asking node tells "the peer refused us" from an origin's answer by this
/// header alone. Responses from origins never carry it (fills strip it), so
/// an origin cannot make a healthy owner look like it refuses.
pub static REFUSED: HeaderName = HeaderName::from_static("x-ringside-refused");

/// The refusal reason of a lookup the node has no copy for: the asker goes
/// to its origin, without counting the peer as failed.
pub const NOT_CACHED: &str = "not-cached";

/// How far a request's timestamp may be from the receiver's clock.
const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// How long a nonce is remembered: as long as its timestamp could pass.
pub const NONCE_WINDOW: Duration = Duration::from_secs(2 * MAX_CLOCK_SKEW_SECS);

/// Bound on the nonce table, in sending processes (one window of about 700
/// bytes each: 3 MiB at most). A cluster has one per member (and per
/// restart of a member within [`NONCE_WINDOW`]), whatever its request rate.
pub const MAX_NONCE_SENDERS: u64 = 4096;

/// SHA-256 of the empty body, the only body peer requests have.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a peer request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingCredentials,
    BodyFraming,
    Expired,
    BadSignature,
    /// Signed for another node.
    NotForMe,
    /// Signed by this node: a request of ours sent back to us.
    FromMe,
    Replayed,
    /// Older than the nonces still remembered: the table overflowed, so a
    /// replay could not be told apart.
    Forgotten,
}

impl Refusal {
    /// The answer's status: 503 when only our capacity is the problem.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Forgotten => 503,
            _ => 401,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::MissingCredentials => "missing peer credentials",
            Refusal::BodyFraming => "peer requests carry no body, this one has body framing",
            Refusal::Expired => "timestamp outside the 30 s window",
            Refusal::BadSignature => "bad signature",
            Refusal::NotForMe => "signed for another node",
            Refusal::FromMe => "signed by this node",
            Refusal::Replayed => "nonce already used (replay)",
            Refusal::Forgotten => "older than the nonces still remembered (too many peer requests)",
        })
    }
}

/// Who sends a peer request to whom, and when: with a fresh nonce, these
/// make every signature unique.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub timestamp: u64,
    pub nonce: u128,
}

impl Envelope<'_> {
    /// The envelope as protocol headers (to add before signing).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let nonce = format!("{:032x}", self.nonce);
        [
            (&FROM, HeaderValue::from_str(self.from).ok()),
            (&TO, HeaderValue::from_str(self.to).ok()),
            (&TIMESTAMP, Some(HeaderValue::from(self.timestamp))),
            (&NONCE, HeaderValue::from_str(&nonce).ok()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.clone(), value?)))
        .collect()
    }
}

/// A nonce for a peer request: this process's random 64 bits, then a
/// counter. Nonces must never repeat (a receiver refuses one it has seen),
/// not be unpredictable: the signature covers them. One draw from the
/// system's random source per process instead of a system call per
/// request. None if that draw failed.
pub fn next_nonce() -> Option<u128> {
    static PROCESS_BITS: once_cell::sync::Lazy<Option<u64>> =
        once_cell::sync::Lazy::new(|| random_nonce().map(|n| n as u64));
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let high = (*PROCESS_BITS)?;
    let low = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(u128::from(high) << 64 | u128::from(low))
}

/// 128 bits from the system's secure random source (None if it fails).
pub fn random_nonce() -> Option<u128> {
    let bytes: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .ok()?
        .expose();
    Some(u128::from_be_bytes(bytes))
}

/// A verified request's nonce and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    pub value: u128,
    pub timestamp: u64,
}

/// Signs and verifies peer requests with the cluster secret.
pub struct PeerAuth {
    /// The secret's HMAC key: fixed, or from `cluster.secret_file` and made
    /// again when the file changes (a rotated Secret: nodes whose files
    /// differ for a moment refuse each other's requests, 401, and load from
    /// the origin meanwhile).
    key: Watched<hmac::Key>,
}

fn hmac_key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

impl PeerAuth {
    pub fn new(secret: &str) -> PeerAuth {
        PeerAuth {
            key: Watched::fixed("cluster secret", hmac_key(secret)),
        }
    }

    /// The secret `config` gives: `secret`, or the file `secret_file`
    /// (read now, and again when it changes). Err names the field.
    pub fn from_config(config: &ClusterConfig) -> crate::error::Result<PeerAuth> {
        let kind = secret_files::Kind {
            field: "cluster.secret",
            check: |secret| secret_files::at_least(secret, MIN_SECRET_LEN),
            make: hmac_key,
            on_reload: metrics::observe_cluster_secret_reload,
        };
        let key = secret_files::watch(kind, &config.secret, config.secret_file.trim())?;
        Ok(PeerAuth { key })
    }

    /// The cluster secret's HMAC key as it is now (the peer channel's
    /// handshake proves it and derives its session keys from it). A new
    /// `Arc` when the secret's file changed: a channel opened under another
    /// one is closed (`net/channel/`).
    pub fn current_key(&self) -> std::sync::Arc<hmac::Key> {
        self.key.current()
    }

    /// The signature of a request whose headers already carry its envelope
    /// (and everything else it will be sent with, but `host`).
    pub fn sign(&self, method: &str, path: &str, headers: &HeaderMap) -> HeaderValue {
        let tag = self.tag(method, path, headers);
        HeaderValue::from_str(&BASE64.encode(tag.as_ref())).expect("base64 is a valid header")
    }

    /// The HMAC of what a signature covers, fed to it piece by piece.
    fn tag(&self, method: &str, path: &str, headers: &HeaderMap) -> hmac::Tag {
        let key = self.key.current();
        let mut context = hmac::Context::with_key(&key);
        canonical(method, path, headers, |piece| context.update(piece));
        context.sign()
    }

    /// Check a request as it arrived at the node whose address is `me`, at
    /// unix time `now`. Returns its nonce, for [`SeenNonces::first_use`].
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        me: &str,
        now: u64,
    ) -> Result<Nonce, Refusal> {
        let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(from), Some(to), Some(ts), Some(nonce), Some(sig)) = (
            get(&FROM),
            get(&TO),
            get(&TIMESTAMP),
            get(&NONCE),
            get(&SIGNATURE),
        ) else {
            return Err(Refusal::MissingCredentials);
        };
        if (headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::TRANSFER_ENCODING))
            && !headers.contains_key(&BODY_SHA256)
        {
            return Err(Refusal::BodyFraming);
        }
        let timestamp: u64 = ts.parse().map_err(|_| Refusal::MissingCredentials)?;
        if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
            return Err(Refusal::Expired);
        }
        let tag = BASE64.decode(sig).map_err(|_| Refusal::BadSignature)?;
        let expected = self.tag(method, path, headers);
        if !bool::from(expected.as_ref().ct_eq(&tag)) {
            return Err(Refusal::BadSignature);
        }
        if to != me {
            return Err(Refusal::NotForMe);
        }
        if from == me {
            return Err(Refusal::FromMe);
        }
        let value = parse_nonce(nonce).ok_or(Refusal::MissingCredentials)?;
        Ok(Nonce { value, timestamp })
    }
}

/// A nonce as sent: exactly 32 hex digits.
fn parse_nonce(text: &str) -> Option<u128> {
    let hex = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| u128::from_str_radix(text, 16).ok()).flatten()
}

/// What a signature covers (see the module documentation), handed to
/// `out` in pieces: lines of `name: value` or the request's own parts.
fn canonical(method: &str, path: &str, headers: &HeaderMap, mut out: impl FnMut(&[u8])) {
    let purge: &[u8] = match (method, headers.contains_key(&PURGE_PREFIX)) {
        ("PURGE", true) => b"purge: prefix",
        ("PURGE", false) => b"purge: key",
        _ => b"purge: none",
    };
    let body = headers
        .get(&BODY_SHA256)
        .map_or(EMPTY_BODY_SHA256.as_bytes(), |v| v.as_bytes());
    for line in [
        &[b"ringside-peer-v2".as_slice()][..],
        &[method.as_bytes()],
        &[path.as_bytes()],
        &[purge],
        &[b"body-sha256: ", body],
    ] {
        line.iter().for_each(|piece| out(piece));
        out(b"\n");
    }
    for (name, value) in signed_headers(headers) {
        out(name.as_str().as_bytes());
        out(b":");
        out(value.as_bytes().trim_ascii());
        out(b"\n");
    }
}

/// The header fields a signature covers, sorted by name (stable: repeated
/// fields keep their order).
fn signed_headers(headers: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue)> {
    let unsigned = unsigned_headers(headers);
    let mut signed: Vec<_> = headers
        .iter()
        .filter(|(name, _)| *name != SIGNATURE && !unsigned.contains(name))
        .collect();
    signed.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    signed
}

/// The header fields a peer request may carry unsigned: `host` and the
/// hop-by-hop ones. The receiver removes them before acting on the request.
pub fn unsigned_headers(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names = hop_by_hop_names(headers);
    if headers.contains_key(header::HOST) {
        names.push(header::HOST);
    }
    names
}

/// The nonces of accepted peer requests, as an anti-replay window per
/// sending process (RFC 4303 §3.4.3 does the same for IPsec): a nonce is
/// the sender's random process bits and a counter ([`next_nonce`]), so for
/// each sending process it is enough to know the highest counter accepted
/// and which of the [`WINDOW_BITS`] counters below it were. A counter
/// above the highest is new; one inside the window is accepted once; one
/// below the window cannot be told from a replay and is refused as
/// forgotten (503; it takes more than [`WINDOW_BITS`] requests from one
/// sender overtaking it).
///
/// The table holds at most `capacity` sending processes, each forgotten
/// once it has sent nothing for [`NONCE_WINDOW`] (by then a replay's
/// timestamp has expired). When one has to go for room, every request no
/// newer than its newest is refused: it could be a replay of one of the
/// forgotten ones. So the table never accepts a replay, its memory does
/// not grow with the request rate, and it refuses only under a flood of
/// distinct senders (which takes the cluster secret).
pub struct SeenNonces {
    /// Process bits -> that sender's window.
    senders: Cache<u64, Arc<Mutex<Window>>>,
    /// The newest timestamp among the windows forgotten for room.
    forgotten_up_to: Arc<AtomicU64>,
}

/// How far behind a sender's highest counter a request may arrive.
pub const WINDOW_BITS: u64 = 4096;

/// One sending process: its highest counter and the counters accepted below it.
struct Window {
    highest: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`): counter `highest - i` was accepted.
    seen: [u64; (WINDOW_BITS / 64) as usize],
    /// The newest timestamp accepted from this sender.
    newest: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            highest: 0,
            seen: [0; (WINDOW_BITS / 64) as usize],
            newest: 0,
        }
    }

    /// Accept `counter` once.
    fn accept(&mut self, counter: u64, timestamp: u64) -> Result<(), Refusal> {
        let empty = self.newest == 0;
        if empty || counter > self.highest {
            let shift = if empty {
                WINDOW_BITS
            } else {
                counter - self.highest
            };
            self.shift(shift);
            self.highest = counter;
        }
        let behind = self.highest - counter;
        if behind >= WINDOW_BITS {
            return Err(Refusal::Forgotten);
        }
        let (word, bit) = ((behind / 64) as usize, behind % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return Err(Refusal::Replayed);
        }
        self.seen[word] |= 1 << bit;
        self.newest = self.newest.max(timestamp);
        Ok(())
    }

    /// Move every bit `by` places further behind (off the end past the window).
    fn shift(&mut self, by: u64) {
        if by >= WINDOW_BITS {
            self.seen = [0; (WINDOW_BITS / 64) as usize];
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        for i in (0..self.seen.len()).rev() {
            let from = i.checked_sub(words);
            let high = from.map_or(0, |f| self.seen[f] << bits);
            let low = match (from.and_then(|f| f.checked_sub(1)), bits) {
                (Some(f), 1..) => self.seen[f] >> (64 - bits),
                _ => 0,
            };
            self.seen[i] = high | low;
        }
    }
}

impl SeenNonces {
    pub fn new(capacity: u64) -> SeenNonces {
        let forgotten_up_to = Arc::new(AtomicU64::new(0));
        let watermark = forgotten_up_to.clone();
        let senders = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_idle(NONCE_WINDOW)
            .eviction_listener(move |_, window: Arc<Mutex<Window>>, cause| {
                if cause == RemovalCause::Size {
                    let newest = window.lock().newest;
                    watermark.fetch_max(newest, Ordering::Relaxed);
                }
            })
            .build();
        SeenNonces {
            senders,
            forgotten_up_to,
        }
    }

    /// Accept `nonce` once: a second use within the window is a replay.
    pub fn first_use(&self, nonce: Nonce) -> Result<(), Refusal> {
        let result = self.remember(nonce);
        match result {
            Ok(()) => metrics::PEER_NONCES.set(self.senders.entry_count() as i64),
            Err(Refusal::Forgotten) => metrics::observe_nonce_refusal("overflow"),
            Err(_) => metrics::observe_nonce_refusal("replay"),
        }
        result
    }

    fn remember(&self, nonce: Nonce) -> Result<(), Refusal> {
        if nonce.timestamp <= self.forgotten_up_to.load(Ordering::Relaxed) {
            return Err(Refusal::Forgotten);
        }
        let (process, counter) = ((nonce.value >> 64) as u64, nonce.value as u64);
        let window = self
            .senders
            .get_with(process, || Arc::new(Mutex::new(Window::new())));
        let mut window = window.lock();
        window.accept(counter, nonce.timestamp.max(1))
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which peers recently failed, and until when they are skipped.
pub struct PeerHealth {
    base_backoff: Duration,
    down: Mutex<HashMap<String, (Instant, u32)>>,
}

impl PeerHealth {
    pub fn new(base_backoff: Duration) -> PeerHealth {
        PeerHealth {
            base_backoff,
            down: Mutex::new(HashMap::new()),
        }
    }

    /// Should we ask this peer now? (False while it is backing off.)
    pub fn is_available(&self, peer: &str) -> bool {
        match self.down.lock().get(peer) {
            Some((until, _)) => Instant::now() >= *until,
            None => true,
        }
    }

    pub fn record_success(&self, peer: &str) {
        let mut down = self.down.lock();
        if down.remove(peer).is_some() {
            log::info!("peer {peer} is answering again");
            metrics::PEERS_DOWN.set(down.len() as i64);
        }
    }

    pub fn record_failure(&self, peer: &str) {
        let now = Instant::now();
        let mut down = self.down.lock();
        let failures = down.get(peer).map_or(0, |(_, n)| *n) + 1;
        let backoff = backoff::after(failures, self.base_backoff, self.base_backoff * 16);
        down.insert(peer.to_string(), (now + backoff, failures));
        log::warn!("peer {peer} failed ({failures} in a row); skipping it for {backoff:?}");
        metrics::PEERS_DOWN.set(down.len() as i64);
    }

    /// Forget peers that left the ring.
    pub fn retain(&self, members: &[String]) {
        let mut down = self.down.lock();
        down.retain(|peer, _| members.contains(peer));
        metrics::PEERS_DOWN.set(down.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef";
    const ME: &str = "10.0.0.2:7070";
    const NOW: u64 = 1_700_000_000;

    /// A signed GET from 10.0.0.1 to ME, as a fill would send it.
    fn signed_get() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api"));
        h.insert(ORIGIN.clone(), HeaderValue::from_static("http://api:80"));
        h.insert(GENERATION.clone(), HeaderValue::from_static("42"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.append(header::ACCEPT, HeaderValue::from_static("text/plain"));
        sign(h, "GET", "/x?y=1", NOW)
    }

    fn sign(mut h: HeaderMap, method: &str, path: &str, timestamp: u64) -> HeaderMap {
        let envelope = Envelope {
            from: "10.0.0.1:7070",
            to: ME,
            timestamp,
            nonce: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        };
        h.extend(envelope.headers());
        let signature = PeerAuth::new(SECRET).sign(method, path, &h);
        h.insert(SIGNATURE.clone(), signature);
        h
    }

    fn verify(h: &HeaderMap, method: &str, path: &str) -> Result<Nonce, Refusal> {
        PeerAuth::new(SECRET).verify(method, path, h, ME, NOW)
    }

    fn with(mut h: HeaderMap, name: &'static str, value: &'static str) -> HeaderMap {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        h
    }

    #[test]
    fn a_signed_request_verifies_and_returns_its_nonce() {
        let h = signed_get();
        assert_eq!(
            verify(&h, "GET", "/x?y=1"),
            Ok(Nonce {
                value: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                timestamp: NOW
            })
        );
        assert_eq!(h[&NONCE], "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn tampering_with_any_signed_element_breaks_the_signature() {
        let bad = Err(Refusal::BadSignature);
        assert_eq!(verify(&signed_get(), "HEAD", "/x?y=1"), bad, "method");
        assert_eq!(verify(&signed_get(), "GET", "/z?y=1"), bad, "path");
        assert_eq!(verify(&signed_get(), "GET", "/x?y=2"), bad, "query");
        assert_eq!(verify(&signed_get(), "GET", "/x"), bad, "query removed");
        for (name, value) in [
            ("x-ringside-origin", "http://evil:80"),
            ("x-ringside-from", "10.0.0.9:7070"),
            ("x-ringside-to", "10.0.0.3:7070"),
            ("x-ringside-timestamp", "1700000001"),
            ("x-ringside-nonce", "0123456789abcdef0123456789abcdee"),
            ("x-ringside-generation", "43"),
            ("accept", "text/html"),
        ] {
            let h = with(signed_get(), name, value);
            assert_eq!(verify(&h, "GET", "/x?y=1"), bad, "{name} changed");
        }
        for (name, value) in [
            ("cache-control", "no-cache"),
            ("x-forwarded-host", "evil"),
            ("x-ringside-purge-prefix", "1"),
            ("authorization", "Bearer x"),
        ] {
            let h = with(signed_get(), name, value);
            assert_eq!(verify(&h, "GET", "/x?y=1"), bad, "{name} added");
        }
        let mut h = signed_get();
        h.remove(header::ACCEPT);
        assert_eq!(verify(&h, "GET", "/x?y=1"), bad, "header removed");
        let mut h = signed_get();
        h.remove(&GENERATION);
        assert_eq!(verify(&h, "GET", "/x?y=1"), bad, "generation removed");
        let mut h = signed_get();
        h.remove(header::ACCEPT);
        h.append(header::ACCEPT, HeaderValue::from_static("text/plain"));
        h.append(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(
            verify(&h, "GET", "/x?y=1"),
            bad,
            "repeated fields reordered"
        );
        let other = PeerAuth::new("another secret!!");
        assert_eq!(
            other.verify("GET", "/x?y=1", &signed_get(), ME, NOW),
            bad,
            "other secret"
        );
    }

    #[test]
    fn the_purge_mode_is_signed() {
        let purge_key = sign(HeaderMap::new(), "PURGE", "/p/", NOW);
        assert!(verify(&purge_key, "PURGE", "/p/").is_ok());
        let widened = with(purge_key, "x-ringside-purge-prefix", "1");
        assert_eq!(verify(&widened, "PURGE", "/p/"), Err(Refusal::BadSignature));
        let prefix = with(HeaderMap::new(), "x-ringside-purge-prefix", "1");
        let mut narrowed = sign(prefix, "PURGE", "/p/", NOW);
        assert!(verify(&narrowed, "PURGE", "/p/").is_ok());
        narrowed.remove(&PURGE_PREFIX);
        assert_eq!(
            verify(&narrowed, "PURGE", "/p/"),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn host_hop_by_hop_and_field_order_are_not_signed() {
        // What HTTP/2 and HTTP/1.1 transports change on the way.
        let mut h = signed_get();
        h.remove(header::HOST);
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(verify(&h, "GET", "/x?y=1").is_ok());
        let mut names_reordered = HeaderMap::new();
        let original = signed_get();
        let mut names: Vec<&HeaderName> = original.keys().collect();
        names.reverse();
        for name in names {
            for value in original.get_all(name) {
                names_reordered.append(name.clone(), value.clone());
            }
        }
        assert!(verify(&names_reordered, "GET", "/x?y=1").is_ok());
        assert_eq!(unsigned_headers(&h), [header::CONNECTION, header::TE]);
        assert!(unsigned_headers(&signed_get()).contains(&header::HOST));
    }

    #[test]
    fn a_header_nominated_by_connection_is_unsigned_and_stripped_not_trusted() {
        // Added with Connection naming it: unsigned, so the receiver drops it.
        let mut h = with(signed_get(), "cache-control", "no-cache");
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("cache-control"),
        );
        assert!(verify(&h, "GET", "/x?y=1").is_ok());
        assert!(unsigned_headers(&h).contains(&header::CACHE_CONTROL));
        // A signed header cannot be unsigned that way: it was signed.
        let mut h = signed_get();
        h.insert(header::CONNECTION, HeaderValue::from_static("accept"));
        assert_eq!(verify(&h, "GET", "/x?y=1"), Err(Refusal::BadSignature));
    }

    #[test]
    fn expired_redirected_self_sent_and_bodied_requests_are_refused() {
        let h = signed_get();
        let auth = PeerAuth::new(SECRET);
        assert_eq!(
            auth.verify("GET", "/x?y=1", &h, ME, NOW + 31),
            Err(Refusal::Expired)
        );
        assert_eq!(
            auth.verify("GET", "/x?y=1", &h, ME, NOW - 31),
            Err(Refusal::Expired)
        );
        assert!(auth.verify("GET", "/x?y=1", &h, ME, NOW + 30).is_ok());
        assert_eq!(
            auth.verify("GET", "/x?y=1", &h, "10.0.0.3:7070", NOW),
            Err(Refusal::NotForMe)
        );
        assert_eq!(
            auth.verify("GET", "/x?y=1", &h, "10.0.0.1:7070", NOW),
            Err(Refusal::NotForMe),
            "the sender is not the receiver it signed for"
        );
        let mut to_self = with(HeaderMap::new(), "x-ringside-origin", "http://api:80");
        to_self.extend(
            Envelope {
                from: ME,
                to: ME,
                timestamp: NOW,
                nonce: 1,
            }
            .headers(),
        );
        let signature = auth.sign("GET", "/", &to_self);
        to_self.insert(SIGNATURE.clone(), signature);
        assert_eq!(verify(&to_self, "GET", "/"), Err(Refusal::FromMe));
        for (name, value) in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            let h = with(signed_get(), name, value);
            assert_eq!(verify(&h, "GET", "/x?y=1"), Err(Refusal::BodyFraming));
        }
        assert_eq!(
            verify(&HeaderMap::new(), "GET", "/"),
            Err(Refusal::MissingCredentials)
        );
        let short_nonce = with(signed_get(), "x-ringside-nonce", "1234");
        assert!(verify(&short_nonce, "GET", "/x?y=1").is_err());
    }

    #[test]
    fn a_body_is_allowed_only_with_its_signed_digest() {
        let body = b"entries";
        let mut h = HeaderMap::new();
        h.insert(
            BODY_SHA256.clone(),
            HeaderValue::from_str(&body_digest(body)).unwrap(),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let h = sign(h, HANDOFF, "/", NOW);
        assert!(verify(&h, HANDOFF, "/").is_ok());
        assert!(body_matches(&h, body));
        assert!(!body_matches(&h, b"entries, altered"));
        let mut swapped = h.clone();
        swapped.insert(
            BODY_SHA256.clone(),
            HeaderValue::from_str(&body_digest(b"other")).unwrap(),
        );
        assert_eq!(verify(&swapped, HANDOFF, "/"), Err(Refusal::BadSignature));
        assert!(!body_matches(&signed_get(), b""), "no digest, no body");
    }

    #[test]
    fn the_empty_body_digest_is_sha256_of_nothing() {
        let digest = ring::digest::digest(&ring::digest::SHA256, b"");
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, EMPTY_BODY_SHA256);
    }

    fn nonce(value: u128, timestamp: u64) -> Nonce {
        Nonce { value, timestamp }
    }

    #[test]
    fn nonces_never_repeat_and_are_accepted_once() {
        let (a, b) = (next_nonce().unwrap(), next_nonce().unwrap());
        assert_ne!(a, b);
        assert_eq!(a >> 64, b >> 64, "one random part per process");
        assert_ne!(random_nonce().unwrap(), random_nonce().unwrap());
        let seen = SeenNonces::new(100);
        assert_eq!(seen.first_use(nonce(a, NOW)), Ok(()));
        assert_eq!(seen.first_use(nonce(b, NOW)), Ok(()));
        assert_eq!(seen.first_use(nonce(a, NOW)), Err(Refusal::Replayed));
    }

    /// Sender `process`'s nonce number `counter`.
    fn from(process: u64, counter: u64) -> u128 {
        u128::from(process) << 64 | u128::from(counter)
    }

    #[test]
    fn a_senders_window_takes_each_counter_once_in_any_order() {
        let seen = SeenNonces::new(10);
        for counter in [5, 7, 6, 1, 5000, 4000] {
            assert_eq!(
                seen.first_use(nonce(from(1, counter), NOW)),
                Ok(()),
                "{counter}"
            );
        }
        for counter in [5000, 4000] {
            assert_eq!(
                seen.first_use(nonce(from(1, counter), NOW)),
                Err(Refusal::Replayed),
                "{counter} twice"
            );
        }
        for counter in [5, 7, 6] {
            assert!(
                seen.first_use(nonce(from(1, counter), NOW)).is_err(),
                "{counter} twice"
            );
        }
        // 904 is 4096 behind 5000: too far back to tell from a replay.
        assert_eq!(
            seen.first_use(nonce(from(1, 904), NOW)),
            Err(Refusal::Forgotten)
        );
        assert_eq!(seen.first_use(nonce(from(1, 905), NOW)), Ok(()));
        // Another sender's counters are its own.
        assert_eq!(seen.first_use(nonce(from(2, 5), NOW)), Ok(()));
        // A jump of several words keeps what is still inside the window.
        assert_eq!(seen.first_use(nonce(from(1, 5130), NOW)), Ok(()));
        assert_eq!(
            seen.first_use(nonce(from(1, 5000), NOW)),
            Err(Refusal::Replayed)
        );
        assert_eq!(seen.first_use(nonce(from(1, 4999), NOW)), Ok(()));
    }

    #[test]
    fn the_table_does_not_grow_with_the_request_rate() {
        let seen = SeenNonces::new(10);
        for counter in 0..100_000 {
            assert_eq!(seen.first_use(nonce(from(7, counter), NOW)), Ok(()));
        }
        seen.senders.run_pending_tasks();
        assert_eq!(seen.senders.entry_count(), 1);
    }

    #[test]
    fn an_overflowing_nonce_table_refuses_what_it_may_have_forgotten() {
        let seen = SeenNonces::new(10);
        for n in 0..20 {
            assert_eq!(seen.first_use(nonce(from(n, 0), NOW + n)), Ok(()));
            seen.senders.run_pending_tasks();
        }
        assert_eq!(seen.senders.entry_count(), 10);
        for n in 0..20 {
            assert!(
                seen.first_use(nonce(from(n, 0), NOW + n)).is_err(),
                "{n} accepted twice"
            );
        }
        assert_eq!(
            seen.first_use(nonce(from(100, 0), NOW + 9)),
            Err(Refusal::Forgotten),
            "as old as a forgotten sender's newest"
        );
        assert_eq!(Refusal::Forgotten.status(), 503);
        assert_eq!(
            seen.first_use(nonce(from(101, 0), NOW + 10)),
            Ok(()),
            "newer: fine"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_skips_a_failed_peer_then_lets_it_back() {
        use tokio::time::advance;
        let base = Duration::from_millis(30);
        let health = PeerHealth::new(base);
        assert!(health.is_available("p"));
        health.record_failure("p");
        advance(base - Duration::from_millis(1)).await;
        assert!(!health.is_available("p"));
        advance(Duration::from_millis(1)).await;
        assert!(health.is_available("p"));
        health.record_failure("p");
        advance(base).await;
        assert!(
            !health.is_available("p"),
            "second failure doubles the backoff"
        );
        advance(base).await;
        assert!(health.is_available("p"));
        health.record_failure("p");
        health.record_success("p");
        assert!(health.is_available("p"), "an answer ends the backoff");
    }
}
