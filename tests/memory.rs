//! The memory bound seen from outside, on the process itself: its resident
//! memory stays near `cache.capacity` when the cache fills with tiny objects
//! or with one URL's `Vary` variants; variants per URL are bounded; a request
//! head that trickles in is cut off at `request_header_timeout`; connections
//! past `max_connections` are refused. (`benches/memory.sh` measures the same
//! cases at full scale.)

mod common;
use common::is_hit;
use common::origin::Origin;
use common::raw::{raw_exchange, raw_open};
use common::{eventually, Conn, Ringside};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const MIB: u64 = 1 << 20;
/// A small cache, so that a few thousand requests fill it several times over.
const CAPACITY: u64 = 4 * MIB;
/// What the process may add to its resident memory on top of 1.15 x the
/// capacity: allocator arenas and thread caches, connection and origin-pool
/// buffers of the load itself. Generous, for a debug build on a busy machine.
const SLACK: u64 = 24 * MIB;

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Send `n` GETs over 8 keep-alive connections; `request(i)` is the i-th
/// target and an optional header. Every answer must be a 200.
async fn load<F>(addr: SocketAddr, n: u64, request: F)
where
    F: Fn(u64) -> (String, Option<(&'static str, String)>) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (next, request) = (next.clone(), request.clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await.expect("connect");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let (target, header) = request(i);
                    let headers: Vec<(&str, &str)> =
                        header.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    let r = conn.request("GET", &target, &headers).await.expect("GET");
                    assert_eq!(r.status, 200, "{target}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
}

/// Fail unless the process's peak resident memory grew by at most 1.15 x
/// the capacity (plus slack) since `ready`.
fn assert_within_capacity(rs: &Ringside, ready: u64, what: &str) {
    let (_, peak) = memory(rs.pid());
    let grown = peak.saturating_sub(ready);
    let bound = CAPACITY * 115 / 100 + SLACK;
    eprintln!("{what}: resident memory grew by {} KiB", grown / 1024);
    assert!(
        grown <= bound,
        "{what}: resident memory grew by {} KiB, more than 1.15 x capacity + slack = {} KiB",
        grown / 1024,
        bound / 1024
    );
}

async fn small_cache(extra: &str) -> (Origin, Ringside) {
    let origin = Origin::start().await;
    let yaml = format!("cache:\n  capacity: 4MiB\n  max_object_size: 1MiB\n{extra}");
    let rs = Ringside::start(&origin.url(), &yaml).await;
    // Warm the process (connection pools, per-thread heaps) before the baseline.
    load(rs.addr, 64, |i| {
        (format!("/warm/{i}?cc=max-age%3D600"), None)
    })
    .await;
    (origin, rs)
}

/// Tiny objects cost far more than their bytes (key, headers, bookkeeping):
/// the weight each entry is charged must cover what it really takes, so
/// that filling the cache several times over stays within the capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_objects_stay_within_the_capacity_in_real_memory() {
    let (origin, rs) = small_cache("").await;
    let (ready, _) = memory(rs.pid());
    let n = 12_000; // about 3 x what fits at their real size
    load(rs.addr, n, |i| {
        (format!("/tiny/{i}?size=10&cc=max-age%3D600"), None)
    })
    .await;
    assert_eq!(origin.total_hits(), 64 + n, "every object was fetched once");
    assert_within_capacity(&rs, ready, "12 000 tiny objects");
    let bytes = rs.metric("ringside_cache_bytes", &[]).await;
    let entries = rs.metric("ringside_cache_entries", &[]).await;
    assert!(bytes <= CAPACITY as f64, "{bytes} bytes cached");
    assert!(
        entries < n as f64 / 2.0,
        "{entries} entries: tiny objects are weighed at their real size"
    );
}

/// The process's resident memory is on /metrics, so that an operator can
/// hold it against `cache.capacity` the way these tests do: the gauge says
/// what /proc says.
#[tokio::test]
async fn metrics_report_the_process_resident_memory() {
    let (_origin, rs) = small_cache("").await;
    let exported = rs.metric("process_resident_memory_bytes", &[]).await;
    let (resident, _) = memory(rs.pid());
    assert!(
        exported > resident as f64 * 0.8 && exported < resident as f64 * 1.25,
        "exported {exported}, /proc says {resident}"
    );
    let metrics = rs.metrics().await;
    for name in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_threads",
    ] {
        assert!(metrics.contains(&format!("\n{name} ")), "{name} missing");
    }
}

/// One URL whose origin varies on a header that takes a new value on every
/// request: the variants stay bounded (default 32 per URL), so neither
/// memory nor other URLs' entries go to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_vary_values_stay_within_the_capacity_in_real_memory() {
    let (_origin, rs) = small_cache("").await;
    let (ready, _) = memory(rs.pid());
    let n = 8_000;
    load(rs.addr, n, |i| {
        let target = "/v?vary=X-V&cc=max-age%3D600".to_owned();
        (target, Some(("X-V", format!("value-{i}"))))
    })
    .await;
    assert_within_capacity(&rs, ready, "8 000 variants of one URL");
    let entries = rs.metric("ringside_cache_entries", &[]).await;
    // The warm-up's 64 objects, the marker and at most 32 variants.
    assert!(entries <= 64.0 + 1.0 + 32.0, "{entries} entries");
}

/// Past `cache.max_variants`, a new variant replaces the oldest of its URL.
#[tokio::test]
async fn a_new_variant_past_the_bound_replaces_the_oldest() {
    let (origin, rs) = small_cache("  max_variants: 4\n").await;
    let other = "/other?cc=max-age%3D600";
    assert_eq!(rs.get(other).await.status, 200);
    let path = "/v?vary=X-V&cc=max-age%3D600";
    let rs = &rs;
    let get = |value: &'static str| async move { rs.request("GET", path, &[("X-V", value)]).await };
    for value in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(get(value).await.status, 200);
    }
    assert_eq!(origin.hits(path), 6);
    // The four newest are kept; "a" and "b" were replaced.
    for value in ["c", "d", "e", "f"] {
        let r = get(value).await;
        assert!(is_hit(&r), "{value}: {:?}", r.header("cache-status"));
    }
    assert_eq!(origin.hits(path), 6);
    let r = get("a").await;
    assert!(
        !is_hit(&r),
        "a was replaced: {:?}",
        r.header("cache-status")
    );
    assert_eq!(r.text().split(' ').next(), Some("X-V=a"));
    assert_eq!(origin.hits(path), 7);
    // Other URLs are untouched.
    assert!(is_hit(&rs.get(other).await));
}

/// A client that sends its request head one byte at a time is cut off once
/// the head has taken `request_header_timeout`; others are served meanwhile.
#[tokio::test]
async fn a_request_head_that_trickles_in_is_cut_off() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "request_header_timeout: 1s\n").await;
    let mut slow = raw_open(rs.addr, b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        // One more header byte every 200 ms, until the server closes.
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {
                if slow.write_all(b"a").await.is_err() {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a trickling request head is still open after 10 s"
        );
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}, before the 1 s deadline"
    );
    assert_eq!(rs.get("/fine?cc=max-age%3D60").await.status, 200);
    assert_eq!(origin.hits("/slow"), 0);
}

/// A connection that sends nothing is closed once its first head is due.
#[tokio::test]
async fn a_silent_connection_is_closed_at_the_head_deadline() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "request_header_timeout: 1s\n").await;
    let mut silent = raw_open(rs.addr, b"").await;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection is still open after 10 s: {read:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    eventually(Duration::from_secs(5), "its slot is free again", || async {
        rs.metric("ringside_connections", &["listener=\"proxy\""])
            .await
            == 0.0
    })
    .await;
}

/// The head deadline is per request head: a keep-alive connection whose
/// requests together take longer than it keeps being served, and a request
/// body may take longer than it.
#[tokio::test]
async fn the_head_deadline_spares_keep_alive_and_bodies() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "request_header_timeout: 1s\n").await;
    let mut conn = Conn::connect(rs.addr).await.unwrap();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = conn
            .request("GET", &format!("/ka/{i}?delay_ms=100"), &[])
            .await
            .expect("keep-alive request");
        assert_eq!(r.status, 200);
        i += 1;
    }
    assert!(i >= 10, "{i} requests");

    // A POST whose body arrives over 1.5 s, in pieces.
    let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n";
    let mut stream = raw_open(rs.addr, head).await;
    let mut buf = vec![0u8; 4096];
    for piece in [b"ab", b"cd", b"ef"] {
        // Nothing is answered before the body is complete.
        let early = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        assert!(early.is_err(), "answered before the body was sent");
        stream.write_all(piece).await.unwrap();
    }
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Past `max_connections` open client connections, a new one is answered
/// 503 and closed; once one closes, new connections are served again.
#[tokio::test]
async fn connections_past_the_cap_are_refused() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "max_connections: 4\n").await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut conn = Conn::connect(rs.addr).await.unwrap();
        let r = conn
            .request("GET", &format!("/held/{i}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        held.push(conn);
    }
    let refused = raw_exchange(rs.addr, b"GET /over HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .text;
    assert!(
        refused.starts_with("HTTP/1.1 503"),
        "the fifth connection: {refused:?}"
    );
    assert_eq!(origin.hits("/over"), 0);
    let count = rs
        .metric(
            "ringside_connections_refused_total",
            &["listener=\"proxy\""],
        )
        .await;
    assert!(count >= 1.0, "refusals counted: {count}");

    drop(held.pop());
    eventually(Duration::from_secs(5), "a slot frees up", || async {
        let request = b"GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        raw_exchange(rs.addr, request)
            .await
            .text
            .starts_with("HTTP/1.1 200")
    })
    .await;
    // The held connections still work.
    for conn in &mut held {
        assert_eq!(
            conn.request("GET", "/held/0", &[]).await.unwrap().status,
            200
        );
    }
}

/// An entry is charged what it takes, however long its key: an 8 KB key is
/// an allocation of its own, which the allocator serves from a 10 KiB
/// block (its size class). Charged only its length, a cache of such
/// entries held a fifth more than it was charged. Measured as the resident
/// memory added per entry against the weight added per entry, with
/// nothing evicted, over enough entries (about 48 MB) that the allocator's
/// own steps do not blur it, and after the first 6 000: by then the memory
/// the admission filter's sizing freed (`store/admission.rs`) is in use
/// again and no longer absorbs new entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_keys_are_charged_what_they_take() {
    let origin = Origin::start().await;
    let yaml = "cache:\n  capacity: 160MiB\n  max_object_size: 1MiB\n";
    let rs = Ringside::start(&origin.url(), yaml).await;
    let pad = Arc::new("k".repeat(8 * 1024));
    let long = |from: u64, n: u64| {
        let pad = pad.clone();
        load(rs.addr, n, move |i| {
            let i = from + i;
            (
                format!("/long/{i}?size=10&cc=max-age%3D600&pad={pad}"),
                None,
            )
        })
    };
    long(0, 6_000).await;
    let measure = || async {
        let (resident, _) = memory(rs.pid());
        let bytes = rs.metric("ringside_cache_bytes", &[]).await;
        let entries = rs.metric("ringside_cache_entries", &[]).await;
        (resident as f64, bytes, entries)
    };
    let (resident_before, bytes_before, entries_before) = measure().await;
    long(6_000, 4_000).await;
    let (resident_after, bytes_after, entries_after) = measure().await;
    let added = entries_after - entries_before;
    assert!(
        added >= 3_990.0,
        "{added} entries added: some were not stored"
    );
    let resident = (resident_after - resident_before) / added;
    let charged = (bytes_after - bytes_before) / added;
    eprintln!("an 8 KB-key entry: {resident:.0} bytes resident, charged {charged:.0}");
    assert!(
        resident <= charged * 1.15,
        "an 8 KB-key entry takes {resident:.0} bytes and is charged {charged:.0}"
    );
}

/// The bound holds when the workload changes under a full cache: tiny
/// objects, then objects under 8 KB keys, then many URLs that vary. Each
/// workload evicts the last one's entries, and the memory those leave
/// behind must not stack up on top of the new ones (issue 26: run in this
/// order at 64 MiB, the peak reached 1.26 x the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bound_holds_across_a_workload_change() {
    let origin = Origin::start().await;
    let capacity = 16 * MIB;
    let yaml = "cache:\n  capacity: 16MiB\n  max_object_size: 1MiB\n";
    let rs = Ringside::start(&origin.url(), yaml).await;
    load(rs.addr, 64, |i| {
        (format!("/warm/{i}?cc=max-age%3D600"), None)
    })
    .await;
    let (ready, _) = memory(rs.pid());
    let report = |what: &str| {
        let (now, peak) = memory(rs.pid());
        eprintln!(
            "{what}: resident {} KiB, peak {} KiB above ready",
            now.saturating_sub(ready) / 1024,
            peak.saturating_sub(ready) / 1024
        );
    };
    // About three times what fits of each, at their real sizes.
    load(rs.addr, 24_000, |i| {
        (format!("/tiny/{i}?size=10&cc=max-age%3D600"), None)
    })
    .await;
    report("tiny objects");
    let pad = "k".repeat(8 * 1024);
    load(rs.addr, 4_800, move |i| {
        (
            format!("/long/{i}?size=10&cc=max-age%3D600&pad={pad}"),
            None,
        )
    })
    .await;
    report("8 KB keys");
    eprintln!(
        "  {} entries, {} bytes cached",
        rs.metric("ringside_cache_entries", &[]).await,
        rs.metric("ringside_cache_bytes", &[]).await
    );
    load(rs.addr, 24_000, |i| {
        let target = format!("/vary/{}?size=10&vary=X-V&cc=max-age%3D600", i / 8);
        (target, Some(("X-V", format!("value-{}", i % 8))))
    })
    .await;
    report("variants");
    let (_, peak) = memory(rs.pid());
    let grown = peak.saturating_sub(ready);
    let bound = capacity * 115 / 100 + SLACK;
    assert!(
        grown <= bound,
        "across the workloads resident memory grew by {} KiB, more than 1.15 x capacity + slack = {} KiB",
        grown / 1024,
        bound / 1024
    );
    let bytes = rs.metric("ringside_cache_bytes", &[]).await;
    assert!(bytes <= capacity as f64, "{bytes} bytes cached");
}
