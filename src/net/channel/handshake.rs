//! The handshake that opens a channel: three messages that prove to both
//! ends that the other holds the cluster secret, bind the connection to
//! the two members and their ring generations, and derive the session keys
//! (`record.rs`). The secret never crosses the wire.
//!
//! ```text
//! asker  -> owner   PREFACE, Hello { versions, from, to, generation, nonce_a }
//! owner  -> asker   Welcome { version, from, generation, nonce_b,
//!                             mac = HMAC(secret, "server" | T) }
//! asker  -> owner   Finish { mac = HMAC(secret, "client" | T) }
//! owner  -> asker   Accepted (the first protected record)
//! ```
//!
//! `T` is the SHA-256 of the Hello's payload and the Welcome's (its mac
//! zeroed): both nonces, both addresses, both generations and the version.
//! The owner refuses a Hello not addressed to it (`to` is not its
//! `cluster.me`: redirected), from itself (reflected) or from a non-member
//! before answering; the asker checks that the Welcome comes from the member
//! it dialled, with a valid proof over its own fresh nonce (so no recorded
//! Welcome passes); the owner checks the Finish over its own fresh nonce
//! (so no recorded handshake passes). The session keys are
//! `HMAC(secret, "c2s" | T)` and `HMAC(secret, "s2c" | T)`, cut to 16
//! bytes: fresh per connection, one per direction.

use super::record::Protection;
use super::wire::{Frame, Hello, Welcome};
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

/// What a connection to a channel opens with, before the Hello: not HTTP
/// (a NUL first), so that a node without the channel answers it with a 400
/// or closes, and the asker knows to use HTTP with that node instead.
pub const PREFACE: &[u8] = b"\0RINGSIDE-CHANNEL\r\n";

/// The channel versions this build speaks.
pub const VERSIONS: (u8, u8) = (1, 1);

/// The refusal reason that makes the asker fall back to HTTP.
pub const NO_COMMON_VERSION: &str = "version";

/// What the handshake derived: each direction's protection.
pub struct Keys {
    /// Asker to owner.
    pub to_owner: Protection,
    /// Owner to asker.
    pub to_asker: Protection,
}

/// A fresh 32-byte nonce from the system's secure source.
pub fn nonce() -> Option<[u8; 32]> {
    let rng = ring::rand::SystemRandom::new();
    ring::rand::generate::<[u8; 32]>(&rng)
        .ok()
        .map(|n| n.expose())
}

/// The version both ends speak, the highest, if any.
pub fn choose_version(theirs: (u8, u8), ours: (u8, u8)) -> Option<u8> {
    let (low, high) = (theirs.0.max(ours.0), theirs.1.min(ours.1));
    (low <= high).then_some(high)
}

/// The transcript hash `T` of a Hello and a Welcome (its mac ignored).
pub fn transcript(hello: &Hello, welcome: &Welcome) -> [u8; 32] {
    let unsigned = Welcome {
        mac: [0; 32],
        ..welcome.clone()
    };
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"ringside-channel-v1\n");
    context.update(&Frame::Hello(hello.clone()).to_bytes());
    context.update(&Frame::Welcome(unsigned).to_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

fn mac(secret: &hmac::Key, label: &[u8], transcript: &[u8; 32]) -> [u8; 32] {
    let mut context = hmac::Context::with_key(secret);
    context.update(label);
    context.update(transcript);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.sign().as_ref());
    out
}

/// The owner's proof.
pub fn server_proof(secret: &hmac::Key, transcript: &[u8; 32]) -> [u8; 32] {
    mac(secret, b"server", transcript)
}

/// The asker's proof.
pub fn client_proof(secret: &hmac::Key, transcript: &[u8; 32]) -> [u8; 32] {
    mac(secret, b"client", transcript)
}

/// Whether `proof` is `expected`, compared in constant time.
pub fn proof_matches(proof: &[u8; 32], expected: &[u8; 32]) -> bool {
    bool::from(proof.ct_eq(expected))
}

/// The session keys of the connection `transcript` opened. `tls`: the
/// connection is mutual TLS, which protects the records already.
pub fn session_keys(secret: &hmac::Key, transcript: &[u8; 32], tls: bool) -> Keys {
    let key = |label: &[u8]| {
        let full = mac(secret, label, transcript);
        let mut key = [0u8; 16];
        key.copy_from_slice(&full[..16]);
        (!tls).then_some(key)
    };
    Keys {
        to_owner: Protection::new(key(b"c2s")),
        to_asker: Protection::new(key(b"s2c")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            versions: VERSIONS,
            from: "10.0.0.1:7070".into(),
            to: "10.0.0.2:7070".into(),
            generation: 1,
            nonce: [1; 32],
        }
    }

    fn welcome() -> Welcome {
        Welcome {
            version: 1,
            from: "10.0.0.2:7070".into(),
            generation: 1,
            nonce: [2; 32],
            mac: [0; 32],
        }
    }

    #[test]
    fn versions_meet_at_the_highest_common_one() {
        assert_eq!(choose_version((1, 1), (1, 1)), Some(1));
        assert_eq!(choose_version((1, 3), (1, 2)), Some(2));
        assert_eq!(choose_version((2, 3), (1, 1)), None);
        assert_eq!(choose_version((0, 0), VERSIONS), None);
    }

    #[test]
    fn the_transcript_binds_every_field_of_both_messages() {
        let base = transcript(&hello(), &welcome());
        let signed = Welcome {
            mac: [9; 32],
            ..welcome()
        };
        assert_eq!(transcript(&hello(), &signed), base, "its own mac aside");
        let hellos = [
            Hello {
                from: "10.0.0.3:7070".into(),
                ..hello()
            },
            Hello {
                to: "10.0.0.3:7070".into(),
                ..hello()
            },
            Hello {
                generation: 2,
                ..hello()
            },
            Hello {
                nonce: [3; 32],
                ..hello()
            },
            Hello {
                versions: (1, 2),
                ..hello()
            },
        ];
        for h in hellos {
            assert_ne!(transcript(&h, &welcome()), base, "{h:?}");
        }
        let welcomes = [
            Welcome {
                from: "10.0.0.3:7070".into(),
                ..welcome()
            },
            Welcome {
                generation: 2,
                ..welcome()
            },
            Welcome {
                nonce: [3; 32],
                ..welcome()
            },
            Welcome {
                version: 2,
                ..welcome()
            },
        ];
        for w in welcomes {
            assert_ne!(transcript(&hello(), &w), base, "{w:?}");
        }
    }

    #[test]
    fn proofs_differ_by_side_and_by_secret() {
        let t = transcript(&hello(), &welcome());
        let secret = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another secret!!");
        let server = server_proof(&secret, &t);
        assert!(proof_matches(&server, &server_proof(&secret, &t)));
        assert!(!proof_matches(&server, &client_proof(&secret, &t)));
        assert!(!proof_matches(&server, &server_proof(&other, &t)));
        assert_ne!(nonce(), nonce());
    }
}
