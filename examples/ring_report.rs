//! Ring quality report: load imbalance (max/mean keys per node over 1M keys)
//! for 3, 10 and 50 nodes, the share of keys that move when a node joins or
//! leaves (against the ideal 1/N), and the cost of one owner lookup.
//!
//!     cargo run --release --example ring_report [-- VNODES]

use ringside::membership::Member;
use ringside::ring::Ring;
use std::collections::HashMap;
use tokio::time::Instant;

const KEYS: usize = 1_000_000;

fn nodes(n: usize) -> Vec<Member> {
    let mut v: Vec<Member> = (0..n)
        .map(|i| Member::new(format!("10.0.{}.{}:7070", i / 250, i % 250 + 1), 1))
        .collect();
    v.sort();
    v
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|k| format!("http://api.internal:80/v1/items/{k}?fields=all"))
        .collect()
}

fn main() {
    let vnodes: u32 = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(ringside::config::ClusterConfig::default().vnodes);
    let keys = keys();
    println!("vnodes per node: {vnodes}, keys: {KEYS}");
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>10} {:>12}",
        "nodes", "max/mean", "join moved", "leave moved", "ideal", "lookup ns"
    );
    for n in [3usize, 10, 50] {
        let ring = Ring::new(nodes(n), "ringside", vnodes);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let started = Instant::now();
        let owners: Vec<&str> = keys
            .iter()
            .map(|k| ring.owner(k).map_or("", |m| m.addr.as_str()))
            .collect();
        let lookup_ns = started.elapsed().as_nanos() as f64 / KEYS as f64;
        for o in &owners {
            *counts.entry(o).or_default() += 1;
        }
        let max = *counts.values().max().unwrap_or(&0) as f64;
        let imbalance = max / (KEYS as f64 / n as f64);
        let joined = Ring::new(nodes(n + 1), "ringside", vnodes);
        let join_moved = moved(&owners, &joined, &keys);
        let mut fewer = nodes(n);
        fewer.remove(n / 2);
        let left = Ring::new(fewer, "ringside", vnodes);
        let leave_moved = moved(&owners, &left, &keys);
        println!(
            "{n:>6} {imbalance:>10.3} {join_moved:>12.4} {leave_moved:>12.4} {:>10.4} {lookup_ns:>12.0}",
            1.0 / (n as f64 + 1.0)
        );
    }
    println!("ideal: join moves 1/(N+1) of the keys, a leave 1/N.");
}

fn moved(before: &[&str], after: &Ring, keys: &[String]) -> f64 {
    let n = keys
        .iter()
        .zip(before)
        .filter(|(k, b)| after.owner(k).map_or("", |m| m.addr.as_str()) != **b)
        .count();
    n as f64 / keys.len() as f64
}
