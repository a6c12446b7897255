//! Read-your-writes soak (benches/README.md, "Read-your-writes"): the shape
//! of `tests/read_your_writes.rs`, for minutes, with nodes killed.
//!
//! A 3-node cluster (static membership, defaults otherwise) in front of the
//! sample origin, whose items have versions (a PUT bumps one). Keep-alive
//! clients spread over the nodes send skewed GETs and PUTs (one in ten)
//! over `--keys` items; every `--kill-every` seconds one node, in turn, is
//! killed with SIGKILL and started again on its addresses. A checker keeps,
//! per item, the highest version a PUT answered with and without
//! `detail=invalidation-incomplete`; a GET reads that floor before it is
//! sent, and an answer below it is a violation. Unconfirmed writes are
//! counted apart while every member is up and while one is down, and so are
//! the nodes' `ringside_invalidation_peer_failures_total`. The run fails on
//! a violation, or on an unconfirmed write or a failed invalidation with
//! every member up.

use parking_lot::Mutex;
use ringside::demo::client::{Conn, Response};
use ringside::demo::cluster::{NodeOptions, Nodes};
use ringside::demo::process::ringside_beside_examples;
use ringside::demo::sample_origin::SampleOrigin;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct WritesArgs {
    #[arg(long, default_value_t = 5000)]
    keys: usize,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long the load runs.
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Seconds between kills (0: none).
    #[arg(long, default_value_t = 120)]
    kill_every_secs: u64,
    /// The ringside binary (default: next to this example's directory).
    #[arg(long)]
    ringside: Option<PathBuf>,
}

/// What the clients saw.
#[derive(Default)]
struct Counts {
    gets: AtomicU64,
    get_errors: AtomicU64,
    confirmed_puts: AtomicU64,
    /// Writes answered with `invalidation-incomplete` (or not 200) while
    /// every member was up, and while one was down or restarting.
    unconfirmed_all_up: AtomicU64,
    unconfirmed_one_down: AtomicU64,
    put_errors: AtomicU64,
    violations: AtomicU64,
    wrong_bodies: AtomicU64,
}

struct Checker {
    floors: Vec<AtomicU64>,
    counts: Counts,
    /// Cleared just before a kill, set again once the node is back.
    all_up: AtomicBool,
    first_violations: Mutex<Vec<String>>,
}

pub async fn run(args: WritesArgs) -> Result<(), String> {
    let exe = ringside_beside_examples(args.ringside.as_deref())?;
    let origin = SampleOrigin {
        delay: Duration::from_millis(1),
        max_age: 60,
        ..SampleOrigin::default()
    };
    let origin_addr = ringside::demo::start_origin(&origin, 0).await?;
    let mut nodes = Nodes::start(&exe, origin_addr, 3, &NodeOptions::default()).await?;
    let checker = Arc::new(Checker {
        floors: (0..args.keys).map(|_| AtomicU64::new(0)).collect(),
        counts: Counts::default(),
        all_up: AtomicBool::new(true),
        first_violations: Mutex::new(Vec::new()),
    });
    let until = Instant::now() + Duration::from_secs(args.duration_secs);
    let addrs = nodes.proxy_addrs();
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let node = addrs[i % addrs.len()];
            let seed = 0x9e37_79b9 + i as u64 * 7919;
            tokio::spawn(client(node, seed, args.keys, until, checker.clone()))
        })
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    let mut rss = Vec::new();
    let mut failures = PeerFailures::default();
    failures.window_opens(&nodes).await?;
    while args.kill_every_secs > 0 && Instant::now() + kill_gap(&args) < until {
        tokio::time::sleep(kill_gap(&args)).await;
        rss.push(resident_mib(&nodes));
        failures.window_closes(&nodes).await?;
        let victim = kills % nodes.nodes.len();
        checker.all_up.store(false, Ordering::SeqCst);
        nodes.kill_and_restart(victim).await?;
        nodes.wait_for_ring(3).await?;
        checker.all_up.store(true, Ordering::SeqCst);
        kills += 1;
        // A write begun while the node was down may still be waiting for
        // it: its failure belongs to the down window.
        tokio::time::sleep(INVALIDATION_TIMEOUT + Duration::from_secs(1)).await;
        failures.window_opens(&nodes).await?;
    }
    for client in clients {
        client.await.map_err(|e| format!("a client task: {e}"))?;
    }
    rss.push(resident_mib(&nodes));
    failures.window_closes(&nodes).await?;
    report(&checker, &origin, started.elapsed(), kills, &rss, &failures);
    nodes.stop().await?;
    verdict(&checker, &failures)
}

/// `cluster.invalidation_timeout`'s default, which the nodes run with.
const INVALIDATION_TIMEOUT: Duration = Duration::from_secs(2);

/// `ringside_invalidation_peer_failures_total` summed over the nodes, within
/// the windows where every member was up (each opens once the ring is whole
/// again and the write timeouts of the down window have passed, and closes
/// before the next kill).
#[derive(Default)]
struct PeerFailures {
    window_start: Vec<u64>,
    all_up: u64,
}

impl PeerFailures {
    async fn window_opens(&mut self, nodes: &Nodes) -> Result<(), String> {
        self.window_start = peer_failures(nodes).await?;
        Ok(())
    }

    async fn window_closes(&mut self, nodes: &Nodes) -> Result<(), String> {
        let now = peer_failures(nodes).await?;
        let grew = now
            .iter()
            .zip(&self.window_start)
            .map(|(n, s)| n.saturating_sub(*s));
        self.all_up += grew.sum::<u64>();
        Ok(())
    }
}

/// Each node's count of members that did not confirm an invalidation.
async fn peer_failures(nodes: &Nodes) -> Result<Vec<u64>, String> {
    let views = nodes.metrics().await?;
    Ok(views.iter().map(|v| v.invalidation_peer_failures).collect())
}

/// The run fails when a GET broke read-your-writes, or when, with every
/// member up, a write went unconfirmed or a member failed an invalidation.
fn verdict(checker: &Checker, failures: &PeerFailures) -> Result<(), String> {
    let c = &checker.counts;
    let broken = c.violations.load(Ordering::Relaxed) + c.wrong_bodies.load(Ordering::Relaxed);
    let unconfirmed = c.unconfirmed_all_up.load(Ordering::Relaxed);
    match (broken, unconfirmed, failures.all_up) {
        (0, 0, 0) => Ok(()),
        (0, u, f) => Err(format!(
            "with every member up, {u} writes went unconfirmed and {f} invalidations failed"
        )),
        (n, _, _) => Err(format!("{n} GETs broke read-your-writes")),
    }
}

fn kill_gap(args: &WritesArgs) -> Duration {
    Duration::from_secs(args.kill_every_secs)
}

/// Each node's resident memory, in MiB, from `/proc`.
fn resident_mib(nodes: &Nodes) -> Vec<u64> {
    nodes
        .nodes
        .iter()
        .filter_map(|n| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid())).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024)
        })
        .collect()
}

fn report(
    checker: &Checker,
    origin: &SampleOrigin,
    took: Duration,
    kills: usize,
    rss: &[Vec<u64>],
    failures: &PeerFailures,
) {
    let c = &checker.counts;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "\nread-your-writes soak: {:.0} s, {kills} kills; {} GETs ({} failed), {} confirmed PUTs, \
         {} unconfirmed with every member up, {} with one down, {} PUTs failed; \
         {} origin requests",
        took.as_secs_f64(),
        n(&c.gets),
        n(&c.get_errors),
        n(&c.confirmed_puts),
        n(&c.unconfirmed_all_up),
        n(&c.unconfirmed_one_down),
        n(&c.put_errors),
        origin.hits()
    );
    println!(
        "invalidation peer failures while every member was up: {}",
        failures.all_up
    );
    println!("resident memory (MiB) per node, before each kill and at the end: {rss:?}");
    for v in checker.first_violations.lock().iter() {
        println!("violation: {v}");
    }
    println!(
        "RESULT read_your_writes violations={} wrong_bodies={} gets={} confirmed_puts={} \
         unconfirmed_all_up={} unconfirmed_one_down={} peer_failures_all_up={}",
        n(&c.violations),
        n(&c.wrong_bodies),
        n(&c.gets),
        n(&c.confirmed_puts),
        n(&c.unconfirmed_all_up),
        n(&c.unconfirmed_one_down),
        failures.all_up
    );
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

    fn key(&mut self, keys: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((u * u * u) * keys as f64) as usize
    }
}

async fn client(node: SocketAddr, seed: u64, keys: usize, until: Instant, checker: Arc<Checker>) {
    let Ok(mut conn) = Conn::connect(node).await else {
        return;
    };
    let mut draws = Draws(seed);
    while Instant::now() < until {
        let key = draws.key(keys);
        match draws.next().is_multiple_of(10) {
            true => put(&mut conn, key, &checker).await,
            false => get(&mut conn, key, &checker).await,
        }
    }
}

/// Whether `body` is item `key`'s JSON at version `v` (the sample origin's
/// `item_json`).
fn is_item(body: &str, key: usize, v: u64) -> bool {
    let version = format!("\"version\":{v}");
    body.starts_with(&format!("{{\"id\":{key},"))
        && body
            .split_once(&version)
            .is_some_and(|(_, rest)| rest.starts_with([',', '}']))
}

/// A client of a node that is down does not spin on refused connections.
async fn pause_after_an_error() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn version(r: &Response) -> Option<u64> {
    r.header("x-version")?.parse().ok()
}

async fn put(conn: &mut Conn, key: usize, checker: &Checker) {
    let all_up = checker.all_up.load(Ordering::SeqCst);
    let c = &checker.counts;
    let Ok(r) = conn.request("PUT", &format!("/items/{key}"), &[]).await else {
        c.put_errors.fetch_add(1, Ordering::Relaxed);
        return pause_after_an_error().await;
    };
    let status = r.header("cache-status").unwrap_or_default();
    let confirmed = !status.contains("invalidation-incomplete");
    match (r.status, version(&r)) {
        (200, Some(v)) if confirmed => {
            checker.floors[key].fetch_max(v, Ordering::SeqCst);
            c.confirmed_puts.fetch_add(1, Ordering::Relaxed);
        }
        _ if all_up && checker.all_up.load(Ordering::SeqCst) => {
            c.unconfirmed_all_up.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            c.unconfirmed_one_down.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn get(conn: &mut Conn, key: usize, checker: &Checker) {
    let floor = checker.floors[key].load(Ordering::SeqCst);
    let c = &checker.counts;
    let Ok(r) = conn.request("GET", &format!("/items/{key}"), &[]).await else {
        c.get_errors.fetch_add(1, Ordering::Relaxed);
        return pause_after_an_error().await;
    };
    c.gets.fetch_add(1, Ordering::Relaxed);
    let Some(v) = version(&r) else {
        c.get_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if !is_item(&r.text(), key, v) {
        c.wrong_bodies.fetch_add(1, Ordering::Relaxed);
    }
    if v < floor {
        c.violations.fetch_add(1, Ordering::Relaxed);
        let mut first = checker.first_violations.lock();
        if first.len() < 10 {
            first.push(format!(
                "item {key}: v{v} after a confirmed write of v{floor} ({}, age {})",
                r.header("cache-status").unwrap_or_default(),
                r.header("age").unwrap_or("-")
            ));
        }
    }
}
