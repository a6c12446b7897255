//! The consistent-hash ring: which member owns a key.
//!
//! Each member gets `vnodes × weight` points on a 64-bit circle, at
//! SipHash-2-4(hash_key, "addr#i"); a key belongs to the first point at or
//! after SipHash-2-4(hash_key, key). The ring is a pure function of the
//! member set and the cluster-wide `hash_key`, so any two nodes that see the
//! same members agree on every owner, and a join or leave moves only the keys
//! on the arcs that changed hands (about 1/N of them).
//!
//! Rings are immutable: membership changes build a new one and swap it in
//! (see `cluster.rs`), so a lookup never sees a half-built ring.

use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};
use std::hash::Hasher;

/// One sidecar, by the peer address the others reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// `host:port` of its peer listener.
    pub addr: String,
    /// Relative share of the key space (1 = normal).
    pub weight: u32,
}

impl Member {
    pub fn new(addr: impl Into<String>, weight: u32) -> Member {
        Member {
            addr: addr.into(),
            weight: weight.max(1),
        }
    }
}

pub struct Ring {
    /// Sorted by hash; the u32 indexes `members`.
    points: Vec<(u64, u32)>,
    members: Vec<Member>,
    keys: (u64, u64),
    generation: u64,
}

/// The SipHash key for a cluster-wide `hash_key` string.
pub fn sip_keys(material: &str) -> (u64, u64) {
    let mut h = SipHasher128::new_with_keys(0x7269_6e67_7369_6465, 0x6b65_7973_0000_0001);
    h.write(material.as_bytes());
    let h = h.finish128();
    (h.h1, h.h2)
}

fn sip(keys: (u64, u64), bytes: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_keys(keys.0, keys.1);
    h.write(bytes);
    h.finish()
}

impl Ring {
    /// Build the ring for `members` (normalised: sorted, de-duplicated).
    pub fn new(members: Vec<Member>, hash_key: &str, vnodes: u32) -> Ring {
        let keys = sip_keys(hash_key);
        let mut points = Vec::with_capacity(members.len() * vnodes as usize);
        for (index, member) in members.iter().enumerate() {
            for i in 0..vnodes * member.weight.max(1) {
                let point = sip(keys, format!("{}#{i}", member.addr).as_bytes());
                points.push((point, index as u32));
            }
        }
        // Ties (astronomically rare) break by member index so every node agrees.
        points.sort_unstable();
        let generation = generation_of(&members);
        Ring {
            points,
            members,
            keys,
            generation,
        }
    }

    /// The member that owns `key`; None only for an empty ring.
    pub fn owner(&self, key: &str) -> Option<&Member> {
        if self.points.is_empty() {
            return None;
        }
        let h = sip(self.keys, key.as_bytes());
        let i = self.points.partition_point(|&(p, _)| p < h);
        let (_, member) = self.points[i % self.points.len()];
        self.members.get(member as usize)
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A fingerprint of the member set: equal on nodes that agree on the ring.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Generations are content hashes, not counters, so that two nodes can tell
/// whether they agree by comparing them.
pub fn generation_of(members: &[Member]) -> u64 {
    let mut text = String::new();
    for m in members {
        text.push_str(&m.addr);
        text.push('*');
        text.push_str(&m.weight.to_string());
        text.push('\n');
    }
    // 53 bits so the value survives a trip through a Prometheus float.
    sip((0, 0), text.as_bytes()) >> 11
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nodes(n: usize) -> Vec<Member> {
        let mut v: Vec<Member> = (0..n)
            .map(|i| Member::new(format!("10.0.{}.{}:7070", i / 250, i % 250 + 1), 1))
            .collect();
        v.sort();
        v
    }

    fn imbalance(ring: &Ring, keys: usize) -> f64 {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for k in 0..keys {
            let owner = ring.owner(&format!("http://api:80/items/{k}")).unwrap();
            *counts.entry(owner.addr.as_str()).or_default() += 1;
        }
        let max = *counts.values().max().unwrap() as f64;
        max / (keys as f64 / ring.members().len() as f64)
    }

    #[test]
    fn same_members_same_owners_whatever_the_order_of_discovery() {
        let a = Ring::new(nodes(5), "k", 64);
        let mut shuffled = nodes(5);
        shuffled.reverse();
        shuffled.sort();
        let b = Ring::new(shuffled, "k", 64);
        assert_eq!(a.generation(), b.generation());
        for k in 0..1000 {
            let key = format!("/k/{k}");
            assert_eq!(a.owner(&key), b.owner(&key));
        }
    }

    #[test]
    fn the_hash_key_changes_placement() {
        let a = Ring::new(nodes(5), "one", 64);
        let b = Ring::new(nodes(5), "two", 64);
        let differ = (0..1000)
            .filter(|k| a.owner(&format!("/{k}")) != b.owner(&format!("/{k}")))
            .count();
        assert!(differ > 500, "{differ}");
    }

    #[test]
    fn load_is_balanced_at_the_default_vnodes() {
        let vnodes = crate::config::ClusterConfig::default().vnodes;
        for n in [3, 10, 50] {
            let ring = Ring::new(nodes(n), "ringside", vnodes);
            let imb = imbalance(&ring, 200_000);
            assert!(imb <= 1.10, "{n} nodes: max/mean {imb:.3}");
        }
    }

    #[test]
    fn a_join_moves_about_one_nth_of_the_keys() {
        for n in [3, 10] {
            let before = Ring::new(nodes(n), "ringside", 512);
            let after = Ring::new(nodes(n + 1), "ringside", 512);
            let keys = 100_000;
            let moved = (0..keys)
                .filter(|k| {
                    let key = format!("/{k}");
                    before.owner(&key).unwrap().addr != after.owner(&key).unwrap().addr
                })
                .count() as f64
                / keys as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (moved - ideal).abs() <= ideal * 0.10,
                "{n}->{}: moved {moved:.4}, ideal {ideal:.4}",
                n + 1
            );
        }
    }

    #[test]
    fn weights_shift_load() {
        let mut members = nodes(2);
        members[0].weight = 3;
        let ring = Ring::new(members.clone(), "ringside", 512);
        let heavy = (0..100_000)
            .filter(|k| ring.owner(&format!("/{k}")).unwrap().addr == members[0].addr)
            .count() as f64
            / 100_000.0;
        assert!((heavy - 0.75).abs() < 0.05, "{heavy}");
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert!(Ring::new(Vec::new(), "k", 10).owner("x").is_none());
    }
}
