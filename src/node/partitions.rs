//! Per-credential partitions of the cache (`scope: per-credential`): the
//! name of a request's partition is a keyed digest of the credentials it
//! carries (every credential header present, name and value, in the
//! configuration's order), so that callers with the same credential share
//! a partition and no two credentials ever do.
//!
//! Only the digest goes into keys, and from there into the handoff and a
//! purge's records; never the credential, so a leaked key (a log line, a
//! debug dump) reveals nothing. The digest is keyed by a key derived from
//! the cluster secret, so every member names a caller's partition alike
//! (the owner of a partitioned key finds it under the same name); a node
//! without a cluster draws a random key at start (its cache starts empty
//! anyway). 128 bits of HMAC-SHA256: no two credentials share a partition
//! short of a collision of that.

use http::header::{HeaderMap, HeaderName};
use ring::hmac;
use std::fmt::Write;

/// What the partition key is derived for (a label: the secret's other use,
/// signing peer requests, keys its HMAC with the secret itself).
const PURPOSE: &[u8] = b"ringside credential partitions v1";

pub struct Partitions {
    key: hmac::Key,
    /// The credential headers, in the configuration's order.
    names: Vec<HeaderName>,
}

impl Partitions {
    /// Partitions keyed from the cluster `secret`, or from a random key when
    /// there is none.
    pub fn new(secret: Option<&str>, names: Vec<HeaderName>) -> Partitions {
        let key = match secret {
            Some(secret) => {
                let derived = hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
                    PURPOSE,
                );
                hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
            }
            None => {
                let rng = ring::rand::SystemRandom::new();
                hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                    .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &random_fallback()))
            }
        };
        Partitions { key, names }
    }

    /// The partition of a request carrying credentials in `headers`: 32 hex
    /// digits; None when it carries none.
    pub fn of(&self, headers: &HeaderMap) -> Option<String> {
        let mut context = hmac::Context::with_key(&self.key);
        let mut any = false;
        for name in &self.names {
            for value in headers.get_all(name) {
                any = true;
                context.update(name.as_str().as_bytes());
                context.update(b"\0");
                context.update(value.as_bytes());
                context.update(b"\0");
            }
        }
        if !any {
            return None;
        }
        let tag = context.sign();
        let mut hex = String::with_capacity(32);
        for byte in &tag.as_ref()[..16] {
            let _ = write!(hex, "{byte:02x}");
        }
        Some(hex)
    }
}

/// Should the system's random source fail: the time and the process id
/// (unique on the host; the key never leaves the process).
fn random_fallback() -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    [
        now.as_nanos().to_le_bytes().as_slice(),
        &std::process::id().to_le_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    fn names() -> Vec<HeaderName> {
        ["authorization", "x-api-key", "cookie"]
            .map(HeaderName::from_static)
            .to_vec()
    }

    #[test]
    fn one_credential_one_partition_and_never_the_credential_itself() {
        let a = Partitions::new(Some("cluster-secret-0123"), names());
        let b = Partitions::new(Some("cluster-secret-0123"), names());
        let k1 = headers(&[("x-api-key", "k1")]);
        let k2 = headers(&[("x-api-key", "k2")]);
        let p1 = a.of(&k1).unwrap();
        assert_eq!(p1.len(), 32);
        assert!(!p1.contains("k1"));
        assert_eq!(b.of(&k1), Some(p1.clone()), "members name partitions alike");
        assert_ne!(a.of(&k2), Some(p1.clone()));
        let other_header = headers(&[("authorization", "k1")]);
        assert_ne!(a.of(&other_header), Some(p1), "the header is part of it");
        assert_eq!(
            a.of(&headers(&[("accept", "x")])),
            None,
            "no credential: no partition"
        );
        let other_secret = Partitions::new(Some("another-secret-4567"), names());
        assert_ne!(other_secret.of(&k1), a.of(&k1));
        let random = Partitions::new(None, names());
        assert_ne!(random.of(&k1), a.of(&k1));
    }
}
