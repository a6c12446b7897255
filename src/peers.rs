//! Peers: how sidecars talk to each other, and how they prove who they are.
//!
//! The protocol is plain HTTP/1.1 with pooled keep-alive connections (the
//! same pingora connector as origin fills; HTTP/2 over cleartext with
//! `cluster.peer_protocol: h2c`, measured slower on loopback) to each peer's
//! *peer listener*, never to its app-facing one. A peer request is the client's request as a
//! fill would send it to the origin, plus these headers:
//!
//! | header                   | meaning                                               |
//! |--------------------------|-------------------------------------------------------|
//! | `x-ringside-origin`      | which origin (`scheme://host:port`) the key belongs to |
//! | `x-ringside-from`        | the sender's advertised peer address                  |
//! | `x-ringside-generation`  | the sender's ring generation (views can be compared)  |
//! | `x-ringside-timestamp`   | unix seconds; signatures older than 30 s are refused  |
//! | `x-ringside-signature`   | SipHash-2-4-128 MAC over the above, keyed by the secret |
//!
//! The secret itself never crosses the wire, and a captured request cannot be
//! replayed for another path, origin or much later. A request that arrived on
//! the peer listener is served from the owner's cache or its origin, never
//! forwarded again, whatever the receiver thinks of the ring (the loop guard).
//!
//! [`PeerHealth`] remembers peers that failed and skips them for a backoff
//! that doubles with each failure (up to 16x), so a dead peer costs one
//! timeout, not one per request.

use crate::metrics;
use crate::ring::sip_keys;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub static ORIGIN: HeaderName = HeaderName::from_static("x-ringside-origin");
pub static FROM: HeaderName = HeaderName::from_static("x-ringside-from");
pub static GENERATION: HeaderName = HeaderName::from_static("x-ringside-generation");
pub static TIMESTAMP: HeaderName = HeaderName::from_static("x-ringside-timestamp");
pub static SIGNATURE: HeaderName = HeaderName::from_static("x-ringside-signature");
/// On a peer PURGE: purge every key starting with the path.
pub static PURGE_PREFIX: HeaderName = HeaderName::from_static("x-ringside-purge-prefix");

/// Every peer-protocol header: removed before anything goes to an origin.
pub static HEADERS: [&HeaderName; 6] = [
    &ORIGIN,
    &FROM,
    &GENERATION,
    &TIMESTAMP,
    &SIGNATURE,
    &PURGE_PREFIX,
];

pub fn strip_peer_headers(headers: &mut HeaderMap) {
    for name in HEADERS {
        headers.remove(name);
    }
}

/// The Cache-Status a peer listener puts on its refusals (401, 403, 405...),
/// so that the asking node tells "the peer refused us" from an origin answer.
pub const REFUSED_STATUS: &str = "ringside; fwd=bypass; detail=peer-refused";

const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// Signs and verifies peer requests with the cluster secret.
pub struct PeerAuth {
    keys: (u64, u64),
}

/// What the signature covers.
pub struct Signed<'a> {
    pub timestamp: u64,
    pub from: &'a str,
    pub method: &'a str,
    pub origin: &'a str,
    pub path: &'a str,
}

impl PeerAuth {
    pub fn new(secret: &str) -> PeerAuth {
        PeerAuth {
            keys: sip_keys(&format!("ringside-peer-auth\n{secret}")),
        }
    }

    fn mac(&self, s: &Signed) -> String {
        let mut h = SipHasher24::new_with_keys(self.keys.0, self.keys.1);
        for part in [
            s.timestamp.to_string().as_str(),
            s.from,
            s.method,
            s.origin,
            s.path,
        ] {
            h.write(part.as_bytes());
            h.write(&[0]);
        }
        let h = h.finish128();
        format!("{:016x}{:016x}", h.h1, h.h2)
    }

    /// Add the authentication headers for a request to a peer.
    pub fn sign(&self, headers: &mut Vec<(HeaderName, HeaderValue)>, s: &Signed) {
        let pairs = [
            (&FROM, s.from.to_string()),
            (&TIMESTAMP, s.timestamp.to_string()),
            (&SIGNATURE, self.mac(s)),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.push((name.clone(), value));
            }
        }
    }

    /// Check a request's authentication headers; `Err` says why not.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
    ) -> Result<(), &'static str> {
        let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(from), Some(ts), Some(sig)) = (get(&FROM), get(&TIMESTAMP), get(&SIGNATURE))
        else {
            return Err("missing peer credentials");
        };
        let timestamp: u64 = ts.parse().map_err(|_| "bad timestamp")?;
        if now_secs().abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
            return Err("signature expired");
        }
        let expected = self.mac(&Signed {
            timestamp,
            from,
            method,
            origin: get(&ORIGIN).unwrap_or(""),
            path,
        });
        if constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
            Ok(())
        } else {
            Err("bad signature")
        }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Should we ask this peer now? (False while it is backing off.)
    pub fn is_available(&self, peer: &str) -> bool {
        match self.lock().get(peer) {
            Some((until, _)) => Instant::now() >= *until,
            None => true,
        }
    }

    pub fn record_success(&self, peer: &str) {
        let mut down = self.lock();
        if down.remove(peer).is_some() {
            log::info!("peer {peer} is answering again");
            metrics::PEERS_DOWN.set(down.len() as i64);
        }
    }

    pub fn record_failure(&self, peer: &str) {
        let mut down = self.lock();
        let failures = down.get(peer).map_or(0, |(_, n)| *n) + 1;
        let backoff = self.base_backoff * 2u32.pow(failures.min(5) - 1);
        down.insert(peer.to_string(), (Instant::now() + backoff, failures));
        log::warn!("peer {peer} failed ({failures} in a row); skipping it for {backoff:?}");
        metrics::PEERS_DOWN.set(down.len() as i64);
    }

    /// Forget peers that left the ring.
    pub fn retain(&self, members: &[String]) {
        let mut down = self.lock();
        down.retain(|peer, _| members.contains(peer));
        metrics::PEERS_DOWN.set(down.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_headers(auth: &PeerAuth, ts: u64) -> HeaderMap {
        let mut pairs = Vec::new();
        auth.sign(
            &mut pairs,
            &Signed {
                timestamp: ts,
                from: "10.0.0.1:7070",
                method: "GET",
                origin: "http://api:80",
                path: "/x?y=1",
            },
        );
        let mut h: HeaderMap = pairs.into_iter().collect();
        h.insert(ORIGIN.clone(), HeaderValue::from_static("http://api:80"));
        h
    }

    #[test]
    fn a_signed_request_verifies_and_a_tampered_one_does_not() {
        let auth = PeerAuth::new("0123456789abcdef");
        let h = signed_headers(&auth, now_secs());
        assert_eq!(auth.verify(&h, "GET", "/x?y=1"), Ok(()));
        assert!(auth.verify(&h, "GET", "/x?y=2").is_err(), "other path");
        assert!(auth.verify(&h, "PURGE", "/x?y=1").is_err(), "other method");
        let other = PeerAuth::new("another secret!!");
        assert!(other.verify(&h, "GET", "/x?y=1").is_err(), "other secret");
        let old = signed_headers(&auth, now_secs() - 120);
        assert_eq!(auth.verify(&old, "GET", "/x?y=1"), Err("signature expired"));
        assert_eq!(
            auth.verify(&HeaderMap::new(), "GET", "/"),
            Err("missing peer credentials")
        );
    }

    #[test]
    fn backoff_skips_a_failed_peer_then_lets_it_back() {
        let health = PeerHealth::new(Duration::from_millis(30));
        assert!(health.is_available("p"));
        health.record_failure("p");
        assert!(!health.is_available("p"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(health.is_available("p"));
        health.record_failure("p");
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            !health.is_available("p"),
            "second failure doubles the backoff"
        );
        health.record_success("p");
        assert!(health.is_available("p"));
    }
}
