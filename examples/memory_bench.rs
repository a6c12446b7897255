//! Memory benchmark for ringside (not a test): see benches/README.md.
//!
//!   cargo build --release --bin ringside --example memory_bench
//!   target/release/examples/memory_bench            # every case
//!   target/release/examples/memory_bench --case tiny --case idle
//!
//! Each case of issue 8's "the byte bound is not the process's memory" runs
//! against a fresh release ringside (`cache.capacity` 64 MiB by default, so
//! that its peak is its own): the process's RSS when ready and its peak RSS
//! (`VmHWM` from `/proc/PID/status`) are printed in one table with what its
//! `/metrics` says it holds. Every loop is bounded in count and in time;
//! everything listens on 127.0.0.1; every ringside is a child process stopped
//! by PID.
//!
//! The origin is the integration tests' origin (`tests/common/origin.rs`),
//! whose answers are described by the query string (`size`, `cc`, `vary`).

#[path = "../tests/common/origin.rs"]
#[allow(dead_code)]
mod origin;

use clap::{Parser, ValueEnum};
use origin::Origin;
use ringside::demo::client::{self, Conn};
use ringside::demo::cluster::{NodeOptions, Nodes};
use ringside::demo::process::ringside_beside_examples;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
struct Cli {
    /// Cases to run (repeat the flag); default: all, in this order.
    #[arg(long, value_enum)]
    case: Vec<Case>,
    /// cache.capacity of every ringside.
    #[arg(long, default_value = "64MiB")]
    capacity: String,
    /// Requests for distinct tiny objects.
    #[arg(long, default_value_t = 250_000)]
    tiny_requests: u64,
    /// Requests for one URL with `Vary: X-V`, each with another X-V value.
    #[arg(long, default_value_t = 150_000)]
    variant_requests: u64,
    /// Distinct long keys asked of a 2-node cluster's first node (about
    /// half are owned by the other node and go through the hot-key tracker).
    #[arg(long, default_value_t = 24_000)]
    long_keys: u64,
    /// Length of each long key's query padding, in bytes (request lines
    /// over 16 KiB are refused with 414).
    #[arg(long, default_value_t = 15 * 1024)]
    key_bytes: usize,
    /// Clients that each read the start of a distinct large object, then stop reading.
    #[arg(long, default_value_t = 40)]
    slow_readers: u64,
    /// Size of each slow reader's object.
    #[arg(long, default_value_t = 8 << 20)]
    object_bytes: u64,
    /// Connections opened and left idle (nothing sent).
    #[arg(long, default_value_t = 5_000)]
    idle_connections: u64,
    /// Connections that make one request, then stay open, idle.
    #[arg(long, default_value_t = 1_000)]
    keepalive_connections: u64,
    /// Connections that send their request head one byte at a time.
    #[arg(long, default_value_t = 200)]
    slowloris_connections: u64,
    /// Seconds between two bytes of a slowloris connection.
    #[arg(long, default_value_t = 2)]
    slowloris_interval: u64,
    /// How long the slowloris connections keep trying, in seconds.
    #[arg(long, default_value_t = 25)]
    slowloris_secs: u64,
    /// Distinct 8 KiB-key objects stored in the mixed case's second phase.
    #[arg(long, default_value_t = 24_000)]
    mixed_long_keys: u64,
    /// Concurrent keep-alive clients for the request-driven cases.
    #[arg(long, default_value_t = 32)]
    clients: u64,
    /// Upper bound on each request-driven case's duration, in seconds.
    #[arg(long, default_value_t = 150)]
    case_timeout: u64,
    /// The ringside binary (default: next to this example's directory).
    #[arg(long)]
    ringside: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Case {
    Tiny,
    Variants,
    HotKeys,
    SlowReaders,
    Idle,
    KeepAlive,
    Slowloris,
    Mixed,
}

impl Case {
    const ALL: [Case; 8] = [
        Case::Tiny,
        Case::Variants,
        Case::HotKeys,
        Case::SlowReaders,
        Case::Idle,
        Case::KeepAlive,
        Case::Slowloris,
        Case::Mixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Tiny => "tiny objects",
            Case::Variants => "Vary: X-V, random values",
            Case::HotKeys => "long keys owned elsewhere",
            Case::SlowReaders => "slow readers",
            Case::Idle => "idle connections",
            Case::KeepAlive => "idle keep-alive connections",
            Case::Slowloris => "slowloris",
            Case::Mixed => "tiny, then 8 KB keys, then Vary",
        }
    }
}

/// One line of the table.
struct Row {
    case: Case,
    load: String,
    ready_rss: u64,
    peak_rss: u64,
    cache_bytes: f64,
    entries: f64,
    note: String,
}

/// What every case shares: the ringside binary, its settings and the origin.
struct Bench {
    exe: PathBuf,
    cli: Cli,
    origin: Origin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("memory_bench: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let exe = ringside_beside_examples(cli.ringside.as_deref())?;
    let cases = if cli.case.is_empty() {
        Case::ALL.to_vec()
    } else {
        cli.case.clone()
    };
    let bench = Bench {
        exe,
        cli,
        origin: Origin::start().await,
    };
    let mut rows = Vec::new();
    for case in cases {
        eprintln!("running: {}", case.name());
        let row = match case {
            Case::Tiny => bench.tiny().await?,
            Case::Variants => bench.variants().await?,
            Case::HotKeys => bench.hot_keys().await?,
            Case::SlowReaders => bench.slow_readers().await?,
            Case::Idle => bench.idle().await?,
            Case::KeepAlive => bench.keep_alive().await?,
            Case::Slowloris => bench.slowloris().await?,
            Case::Mixed => bench.mixed().await?,
        };
        eprintln!("  {}", row.line());
        rows.push(row);
    }
    println!(
        "\nmemory: cache.capacity {} per ringside, {} CPUs; RSS in MiB",
        bench.cli.capacity,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{}", Row::header());
    for row in &rows {
        println!("{}", row.line());
    }
    Ok(())
}

impl Row {
    fn header() -> String {
        format!(
            "| {:<26} | {:<44} | {:>9} | {:>8} | {:>11} | {:>8} | {}\n|{}|{}|{}|{}|{}|{}|---",
            "case",
            "load",
            "ready RSS",
            "peak RSS",
            "cache bytes",
            "entries",
            "note",
            "-".repeat(28),
            "-".repeat(46),
            "-".repeat(10) + ":",
            "-".repeat(9) + ":",
            "-".repeat(12) + ":",
            "-".repeat(9) + ":",
        )
    }

    fn line(&self) -> String {
        format!(
            "| {:<26} | {:<44} | {:>9.0} | {:>8.0} | {:>11.1} | {:>8.0} | {}",
            self.case.name(),
            self.load,
            mib(self.ready_rss),
            mib(self.peak_rss),
            self.cache_bytes / (1024.0 * 1024.0),
            self.entries,
            self.note
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Bench {
    /// Start `n` ringside nodes (a cluster when `n > 1`) in front of the origin.
    async fn nodes(&self, n: usize) -> Result<Nodes, String> {
        let options = NodeOptions {
            clustered: n > 1,
            capacity: self.cli.capacity.clone(),
            max_object_size: "8MiB".into(),
            ..NodeOptions::default()
        };
        Nodes::start(&self.exe, self.origin.addr, n, &options).await
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.cli.case_timeout)
    }

    /// Fill the cache with many tiny objects: the per-entry overhead shows.
    async fn tiny(&self) -> Result<Row, String> {
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let load = drive(
            node.proxy_addr,
            self.cli.clients,
            self.cli.tiny_requests,
            self.deadline(),
            |i| (format!("/tiny/{i}?size=10&cc=max-age%3D3600"), None),
        )
        .await;
        self.row(
            Case::Tiny,
            &nodes,
            ready,
            load.describe("distinct tiny GETs"),
            String::new(),
        )
        .await
    }

    /// One URL varying on a header whose every value is new: variants pile
    /// up under one URL; do other URLs' entries survive?
    async fn variants(&self) -> Result<Row, String> {
        const OTHERS: u64 = 1000;
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let other = |i: u64| -> String { format!("/other/{i}?size=10&cc=max-age%3D3600") };
        drive(node.proxy_addr, 4, OTHERS, self.deadline(), move |i| {
            (other(i), None)
        })
        .await;
        let load = drive(
            node.proxy_addr,
            self.cli.clients,
            self.cli.variant_requests,
            self.deadline(),
            |i| {
                let path = "/v?vary=X-V&cc=max-age%3D3600".to_owned();
                (path, Some(("X-V", format!("{i:x}"))))
            },
        )
        .await;
        let mut survived = 0;
        let mut conn = Conn::connect(node.proxy_addr)
            .await
            .map_err(|e| e.to_string())?;
        for i in 0..OTHERS {
            if let Ok(r) = conn.request("GET", &other(i), &[]).await {
                survived += u64::from(is_hit(&r));
            }
        }
        let note = format!("other URLs still cached: {survived}/{OTHERS}");
        let load = load.describe("GETs of one URL, new X-V each");
        self.row(Case::Variants, &nodes, ready, load, note).await
    }

    /// The workload changes under a full cache, on one process: the tiny
    /// case's load, then distinct objects under 8 KiB keys (each asked
    /// twice, so that they are worth admitting over the tiny ones), then the
    /// Vary case's load. Each phase evicts the last one's entries; the
    /// peak is over all three.
    async fn mixed(&self) -> Result<Row, String> {
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let (addr, clients) = (node.proxy_addr, self.cli.clients);
        drive(
            addr,
            clients,
            self.cli.tiny_requests,
            self.deadline(),
            |i| (format!("/tiny/{i}?size=10&cc=max-age%3D3600"), None),
        )
        .await;
        let after_tiny = peak_rss(node.pid())?;
        let pad = "k".repeat(8 * 1024);
        let long = 2 * self.cli.mixed_long_keys;
        drive(addr, clients, long, self.deadline(), move |i| {
            let path = format!("/long/{}?size=10&cc=max-age%3D3600&pad={pad}", i / 2);
            (path, None)
        })
        .await;
        let after_long = peak_rss(node.pid())?;
        let load = drive(
            addr,
            clients,
            self.cli.variant_requests,
            self.deadline(),
            |i| {
                let path = "/v?vary=X-V&cc=max-age%3D3600".to_owned();
                (path, Some(("X-V", format!("{i:x}"))))
            },
        )
        .await;
        let note = format!(
            "peak after tiny {:.0}, after 8 KB keys {:.0}",
            mib(after_tiny),
            mib(after_long)
        );
        let load = format!(
            "{} tiny, 2 x {} long keys, {}",
            self.cli.tiny_requests,
            self.cli.mixed_long_keys,
            load.describe("Vary GETs")
        );
        self.row(Case::Mixed, &nodes, ready, load, note).await
    }

    /// Long URLs owned by the other node of a 2-node cluster, asked of the
    /// first node: nothing is stored there (`no-store`), so whatever its
    /// memory grows by is bookkeeping (the hot-key tracker).
    async fn hot_keys(&self) -> Result<Row, String> {
        let nodes = self.nodes(2).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let pad = "k".repeat(self.cli.key_bytes);
        let load = drive(
            node.proxy_addr,
            8,
            self.cli.long_keys,
            self.deadline(),
            move |i| (format!("/long/{i}?cc=no-store&pad={pad}"), None),
        )
        .await;
        let metrics = metrics_text(node.admin_addr).await?;
        let peer = sample(&metrics, "ringside_peer_requests_total", "outcome=\"ok\"");
        let note = format!("{peer:.0} keys went to their owner (the other node)");
        let load = load.describe(&format!("GETs of {} KiB keys", self.cli.key_bytes / 1024));
        self.row(Case::HotKeys, &nodes, ready, load, note).await
    }

    /// Clients that start reading distinct large objects and stop: the
    /// objects' bodies stay alive while they are being written, evicted or not.
    async fn slow_readers(&self) -> Result<Row, String> {
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let size = self.cli.object_bytes;
        let mut readers = Vec::new();
        let deadline = self.deadline();
        for i in 0..self.cli.slow_readers {
            if Instant::now() > deadline {
                break;
            }
            let path = format!("/big/{i}?size={size}&cc=max-age%3D3600");
            match start_reading(node.proxy_addr, &path, 64 * 1024).await {
                Ok(stream) => readers.push(stream),
                Err(e) => eprintln!("  slow reader {i}: {e}"),
            }
        }
        let metrics = metrics_text(node.admin_addr).await?;
        let held = match metrics.contains("ringside_response_body_bytes") {
            true => format!(
                "{:.0} MiB",
                sample(&metrics, "ringside_response_body_bytes", "") / (1024.0 * 1024.0)
            ),
            false => "not counted".to_owned(),
        };
        let load = format!("{} readers of {} MiB objects", readers.len(), size >> 20);
        let note = format!("bodies held by readers: {held} (ringside_response_body_bytes)");
        let row = self.row(Case::SlowReaders, &nodes, ready, load, note).await;
        drop(readers);
        row
    }

    /// Connections that are opened and never send anything.
    async fn idle(&self) -> Result<Row, String> {
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let mut conns = Vec::new();
        let mut refused = 0;
        for _ in 0..self.cli.idle_connections {
            match TcpStream::connect(node.proxy_addr).await {
                Ok(stream) => conns.push(stream),
                Err(_) => refused += 1,
            }
        }
        // Let ringside take every connection in (and close those past its cap).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let open = count_open(&mut conns);
        let load = format!("{} connections, nothing sent", self.cli.idle_connections);
        let note = format!("open after 2 s: {open}; connect refused: {refused}");
        self.row(Case::Idle, &nodes, ready, load, note).await
    }

    /// Connections that make one request each and then stay open, idle, as
    /// an app's connection pool keeps them.
    async fn keep_alive(&self) -> Result<Row, String> {
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let mut conns = Vec::new();
        let mut failed = 0;
        for _ in 0..self.cli.keepalive_connections {
            let Ok(mut conn) = Conn::connect(node.proxy_addr).await else {
                failed += 1;
                continue;
            };
            match conn
                .request("GET", "/ka?size=10&cc=max-age%3D3600", &[])
                .await
            {
                Ok(r) if r.status == 200 && conn.is_open() => conns.push(conn),
                _ => failed += 1,
            }
        }
        let load = format!(
            "{} connections, one GET each",
            self.cli.keepalive_connections
        );
        let note = format!("kept open: {}; failed: {failed}", conns.len());
        self.row(Case::KeepAlive, &nodes, ready, load, note).await
    }

    /// Connections that send their request head one byte every few seconds.
    async fn slowloris(&self) -> Result<Row, String> {
        let nodes = self.nodes(1).await?;
        let node = &nodes.nodes[0];
        let ready = rss(node.pid())?;
        let mut conns = Vec::new();
        for _ in 0..self.cli.slowloris_connections {
            if let Ok(mut stream) = TcpStream::connect(node.proxy_addr).await {
                if stream
                    .write_all(b"GET /slow HTTP/1.1\r\nX-Slow: ")
                    .await
                    .is_ok()
                {
                    conns.push(Some(stream));
                }
            }
        }
        let started = Instant::now();
        let total = Duration::from_secs(self.cli.slowloris_secs);
        let interval = Duration::from_secs(self.cli.slowloris_interval.max(1));
        let mut last_close = None;
        while started.elapsed() < total && conns.iter().any(Option::is_some) {
            tokio::time::sleep(interval).await;
            for slot in conns.iter_mut() {
                let Some(stream) = slot else { continue };
                if !is_open(stream) || stream.write_all(b"a").await.is_err() {
                    *slot = None;
                    last_close = Some(started.elapsed());
                }
            }
        }
        let closed = conns.iter().filter(|c| c.is_none()).count();
        let load = format!(
            "{} conns, 1 head byte / {} s",
            conns.len(),
            interval.as_secs()
        );
        let note = match last_close {
            Some(at) => format!(
                "closed by ringside: {closed}/{}, the last after {:.0} s",
                conns.len(),
                at.as_secs_f64()
            ),
            None => format!(
                "closed by ringside: 0/{} after {} s",
                conns.len(),
                total.as_secs()
            ),
        };
        self.row(Case::Slowloris, &nodes, ready, load, note).await
    }

    /// The table row for a case that ran against `nodes` (the first one measured).
    async fn row(
        &self,
        case: Case,
        nodes: &Nodes,
        ready_rss: u64,
        load: String,
        note: String,
    ) -> Result<Row, String> {
        let node = &nodes.nodes[0];
        let text = metrics_text(node.admin_addr).await?;
        Ok(Row {
            case,
            load,
            ready_rss,
            peak_rss: peak_rss(node.pid())?,
            cache_bytes: sample(&text, "ringside_cache_bytes", "")
                + sample(&text, "ringside_hot_bytes", ""),
            entries: sample(&text, "ringside_cache_entries", "")
                + sample(&text, "ringside_hot_entries", ""),
            note,
        })
    }
}

/// How a request-driven load went.
struct Load {
    sent: u64,
    errors: u64,
    elapsed: Duration,
}

impl Load {
    fn describe(&self, what: &str) -> String {
        let errors = match self.errors {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        format!(
            "{} {what} in {:.0} s{errors}",
            self.sent,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Send up to `n` GETs from `clients` keep-alive connections, stopping at
/// `deadline`; `request(i)` gives the i-th target and an optional header.
async fn drive<F>(addr: SocketAddr, clients: u64, n: u64, deadline: Instant, request: F) -> Load
where
    F: Fn(u64) -> (String, Option<(&'static str, String)>) + Send + Sync + 'static,
{
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (next, errors, request) = (next.clone(), errors.clone(), request.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = Conn::connect(addr).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || Instant::now() > deadline {
                        break;
                    }
                    let (target, header) = request(i);
                    let headers: Vec<(&str, &str)> =
                        header.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    match conn.request("GET", &target, &headers).await {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Load {
        sent: next.load(Ordering::Relaxed).min(n),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

fn is_hit(r: &client::Response) -> bool {
    r.header("cache-status")
        .is_some_and(|s| s.starts_with("ringside; hit"))
}

/// Send `GET path` and read at least `at_least` bytes of the answer, then
/// return the connection unread beyond that.
async fn start_reading(addr: SocketAddr, path: &str, at_least: usize) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut read = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while read < at_least {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed early".into()),
            Ok(Ok(n)) => read += n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in 30 s".into()),
        }
    }
    Ok(stream)
}

/// Whether the server has not closed this connection: whatever it sent
/// (a 503, say) is read and dropped; open means nothing more to read yet.
fn is_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

fn count_open(conns: &mut [TcpStream]) -> usize {
    conns.iter().filter(|s| is_open(s)).count()
}

/// `VmRSS` of a process, in bytes.
fn rss(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmRSS:")
}

/// `VmHWM` (peak RSS) of a process, in bytes.
fn peak_rss(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("{path}: no {field}"))
}

async fn metrics_text(admin: SocketAddr) -> Result<String, String> {
    let fetch = client::get(admin, "/metrics");
    match tokio::time::timeout(Duration::from_secs(10), fetch).await {
        Ok(Ok(r)) if r.status == 200 => Ok(r.text()),
        Ok(Ok(r)) => Err(format!("/metrics answered {}", r.status)),
        Ok(Err(e)) => Err(format!("/metrics: {e}")),
        Err(_) => Err("/metrics did not answer in 10 s".into()),
    }
}

/// Sum of the samples of `name` whose labels contain `label` (empty: all).
fn sample(text: &str, name: &str, label: &str) -> f64 {
    ringside::demo::prometheus::sum(text, name, &[label])
}
