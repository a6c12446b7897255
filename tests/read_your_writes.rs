//! Read-your-writes under load, as README's "Cluster" section promises it:
//! once a write's 2xx answer has reached the app without
//! `detail=invalidation-incomplete`, no GET that starts after it, on any
//! node, is answered with what the origin had before the write.
//!
//! A versioned origin (a PUT bumps the path's version; every body names
//! its path, version and checksum), a 3-node cluster, and concurrent
//! keep-alive clients spread over the nodes sending skewed GETs and PUTs
//! over a couple of thousand keys. The checker keeps, per key, the highest
//! version a confirmed PUT answered with; a GET reads that floor before it
//! is sent and must get at least it. `benches/read_your_writes.sh` runs the
//! same for minutes, with nodes killed and restarted.

mod common;
use common::origin::{versioned_body, Origin};
use common::{metric_sum, start_cluster, Conn, Response};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const KEYS: usize = 2_000;
const CLIENTS: usize = 24;
/// Requests per client; a PUT one time in ten.
const REQUESTS: usize = 1_500;

/// Every key's confirmed floor, and what broke it.
struct Checker {
    floors: Vec<AtomicU64>,
    violations: Mutex<Vec<String>>,
    gets: AtomicUsize,
    confirmed_puts: AtomicUsize,
    unconfirmed_puts: AtomicUsize,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            floors: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            violations: Mutex::new(Vec::new()),
            gets: AtomicUsize::new(0),
            confirmed_puts: AtomicUsize::new(0),
            unconfirmed_puts: AtomicUsize::new(0),
        }
    }

    fn violation(&self, what: String) {
        self.violations.lock().push(what);
    }
}

fn path(key: usize) -> String {
    format!("/rw/{key}")
}

fn target(key: usize) -> String {
    format!("{}?versioned=1&cc=max-age%3D60", path(key))
}

fn version(r: &Response) -> Option<u64> {
    r.header("x-version")?.parse().ok()
}

/// A small generator with a skew: low keys are asked for far more often.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn key(&mut self) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((u * u * u) * KEYS as f64) as usize
    }

    fn is_write(&mut self) -> bool {
        self.next().is_multiple_of(10)
    }
}

async fn client(node: SocketAddr, seed: u64, checker: Arc<Checker>) {
    let mut conn = Conn::connect(node).await.expect("connect to ringside");
    let mut draws = Draws(seed);
    for _ in 0..REQUESTS {
        let key = draws.key();
        if draws.is_write() {
            put(&mut conn, key, &checker).await;
        } else {
            get(&mut conn, node, key, &checker).await;
        }
    }
}

async fn put(conn: &mut Conn, key: usize, checker: &Checker) {
    let Ok(r) = conn.request("PUT", &target(key), &[]).await else {
        return;
    };
    let incomplete = common::cache_status(&r).contains("invalidation-incomplete");
    match (r.status, version(&r)) {
        (200, Some(v)) if !incomplete => {
            checker.floors[key].fetch_max(v, Ordering::SeqCst);
            checker.confirmed_puts.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            checker.unconfirmed_puts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn get(conn: &mut Conn, node: SocketAddr, key: usize, checker: &Checker) {
    let floor = checker.floors[key].load(Ordering::SeqCst);
    let Ok(r) = conn.request("GET", &target(key), &[]).await else {
        return;
    };
    checker.gets.fetch_add(1, Ordering::Relaxed);
    let Some(v) = version(&r) else {
        return checker.violation(format!("{node} {}: no version: {r:?}", path(key)));
    };
    if r.text() != versioned_body(&path(key), v) {
        checker.violation(format!(
            "{node} {}: body {:?} for v{v}",
            path(key),
            r.text()
        ));
    }
    if v < floor {
        checker.violation(format!(
            "{node} {}: v{v} after a confirmed write of v{floor} ({}, age {})",
            path(key),
            common::cache_status(&r),
            r.header("age").unwrap_or("-"),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_get_after_a_confirmed_write_is_answered_with_the_old_version() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "").await;
    let checker = Arc::new(Checker::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let node = nodes[i % nodes.len()].addr;
            tokio::spawn(client(node, 0x9e37_79b9 + i as u64 * 7919, checker.clone()))
        })
        .collect();
    for client in clients {
        client.await.expect("a client task");
    }
    let violations = checker.violations.lock().clone();
    let gets = checker.gets.load(Ordering::Relaxed);
    let confirmed = checker.confirmed_puts.load(Ordering::Relaxed);
    let unconfirmed = checker.unconfirmed_puts.load(Ordering::Relaxed);
    eprintln!(
        "{gets} GETs, {confirmed} confirmed and {unconfirmed} unconfirmed PUTs, {} violations",
        violations.len()
    );
    assert!(gets > CLIENTS * REQUESTS / 2, "most GETs answered: {gets}");
    assert!(
        violations.is_empty(),
        "{} GETs broke read-your-writes, the first:\n{}",
        violations.len(),
        violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for node in &nodes {
        let metrics = node.metrics().await;
        let failures = metric_sum(&metrics, "ringside_invalidation_peer_failures_total", &[]);
        let log = node.log();
        let why: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("purge"))
            .take(5)
            .collect();
        assert_eq!(
            failures,
            0.0,
            "{}: invalidations unconfirmed with every member up:\n{}",
            node.addr,
            why.join("\n")
        );
    }
    assert_eq!(unconfirmed, 0, "every member was up: every write confirmed");
}
