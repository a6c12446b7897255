//! The store's bounds seen from outside: total bytes stay under
//! `cache.capacity`, responses over `cache.max_object_size` stream through
//! intact without being stored, and the size gauges on /metrics tell the truth.

mod common;
use common::origin::Origin;
use common::{cache_status, is_hit};
use common::{eventually, Ringside};
use std::time::Duration;

const CAPACITY: u64 = 1 << 20;
const MAX_OBJECT: u64 = 64 << 10;
const SMALL_CACHE: &str = "cache:\n  capacity: 1MiB\n  max_object_size: 64KiB\n";

async fn small_cache() -> (Origin, Ringside) {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), SMALL_CACHE).await;
    (origin, rs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_bytes_stay_within_capacity() {
    let (origin, rs) = small_cache().await;
    let n = 300; // 300 x 16 KiB is almost 5 x the capacity
    let path = |i: usize| format!("/obj/{i}?size=16384&cc=max-age%3D600");
    // Eight clients in parallel, so inserts race each other too.
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let addr = rs.addr;
            tokio::spawn(async move {
                for i in (w..n).step_by(8) {
                    let r = common::get(addr, &path(i)).await.unwrap();
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body.len(), 16384);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(origin.total_hits(), n as u64);

    let bytes = rs.metric("ringside_cache_bytes", &[]).await;
    let entries = rs.metric("ringside_cache_entries", &[]).await;
    assert!(bytes > 0.0, "something is cached");
    assert!(
        bytes <= CAPACITY as f64,
        "cache holds {bytes} bytes > capacity {CAPACITY}"
    );
    // Each entry weighs at least its 16 KiB body.
    let most = (CAPACITY / 16384) as f64;
    assert!(entries >= 1.0 && entries <= most, "{entries} entries");
    let evicted = rs
        .metric("ringside_cache_evictions_total", &["cause=\"size\""])
        .await;
    assert!(evicted > 0.0, "evictions by size: {evicted}");

    // Ask again for everything, only from the cache, so that asking stores
    // and evicts nothing (a second pass that refetched would evict what
    // survived before reaching it, whichever order it went in): whatever
    // survived is a hit, a miss is 504, and no more can have survived than fits.
    let only_cached = [("cache-control", "only-if-cached")];
    let mut hits = 0;
    for i in 0..n {
        let r = rs.request("GET", &path(i), &only_cached).await;
        if is_hit(&r) {
            assert_eq!((r.status, r.body.len()), (200, 16384));
            hits += 1;
        } else {
            assert_eq!(r.status, 504, "a miss only-if-cached");
        }
    }
    assert!(hits >= 1, "nothing survived in the cache");
    assert!(hits as f64 <= most, "{hits} hits cannot all have fit");
    assert_eq!(
        origin.total_hits(),
        n as u64,
        "the second pass fetched nothing"
    );
    let bytes = rs.metric("ringside_cache_bytes", &[]).await;
    assert!(bytes <= CAPACITY as f64, "after the second pass: {bytes}");
}

#[tokio::test]
async fn too_large_objects_stream_through_uncached() {
    let (origin, rs) = small_cache().await;
    for path in [
        "/big?size=1000000&cc=max-age%3D60",
        "/big?size=1000000&chunked=1&cc=max-age%3D60",
    ] {
        let too_large_before = rs.metric("ringside_cache_too_large_total", &[]).await;
        for _ in 0..2 {
            let r = rs.get(path).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.body.len(), 1_000_000, "{path}");
            assert!(r.body.iter().all(|&b| b == b'x'), "{path}: body intact");
            // A known length says so before anything is sent; a chunked body
            // streams and is found too large only on the way.
            let known_length = !path.contains("chunked");
            assert!(
                !known_length || cache_status(&r).contains("too-large"),
                "{path}: {}",
                cache_status(&r)
            );
            assert!(!is_hit(&r), "{path}");
            if let Some(len) = r.header("content-length") {
                assert_eq!(len, "1000000", "{path}");
            }
        }
        assert_eq!(origin.hits(path), 2, "{path}: not stored");
        let too_large = rs.metric("ringside_cache_too_large_total", &[]).await;
        assert!(too_large >= too_large_before + 2.0, "{path}: {too_large}");
    }
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 0.0);
    assert_eq!(rs.metric("ringside_cache_bytes", &[]).await, 0.0);
}

#[tokio::test]
async fn head_of_a_too_large_object_is_answered_without_storing() {
    let (origin, rs) = small_cache().await;
    let path = "/bighead?size=1000000&cc=max-age%3D60";
    let r = rs.request("HEAD", path, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("1000000"));
    let r = rs.get(path).await;
    assert_eq!(r.body.len(), 1_000_000);
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test]
async fn objects_up_to_the_limit_are_stored_and_one_byte_more_is_not() {
    let (origin, rs) = small_cache().await;
    let limit = MAX_OBJECT;
    for chunked in ["", "&chunked=1"] {
        for (size, stored) in [(limit - 1000, true), (limit, true), (limit + 1, false)] {
            let path = format!("/edge?size={size}{chunked}&cc=max-age%3D60");
            let first = rs.get(&path).await;
            let second = rs.get(&path).await;
            for r in [&first, &second] {
                assert_eq!(r.status, 200, "{path}");
                assert_eq!(r.body.len() as u64, size, "{path}");
            }
            if stored {
                assert_eq!(origin.hits(&path), 1, "{path} should be stored");
                assert!(is_hit(&second), "{path}: {}", cache_status(&second));
                assert_eq!(
                    second.header("content-length"),
                    Some(size.to_string().as_str()),
                    "{path}: a stored object is served with its length"
                );
            } else {
                assert_eq!(origin.hits(&path), 2, "{path} should not be stored");
                assert!(!is_hit(&second), "{path}");
                if chunked.is_empty() {
                    assert!(cache_status(&second).contains("too-large"), "{path}");
                }
            }
        }
    }
}

#[tokio::test]
async fn size_gauges_report_capacity_and_follow_fills() {
    let (_origin, rs) = small_cache().await;
    let capacity = rs.metric("ringside_cache_capacity_bytes", &[]).await;
    assert_eq!(capacity, CAPACITY as f64);
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 0.0);
    assert_eq!(rs.metric("ringside_cache_bytes", &[]).await, 0.0);

    rs.get("/g1?size=10000&cc=max-age%3D60").await;
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 1.0);
    let one = rs.metric("ringside_cache_bytes", &[]).await;
    // The body's 10,000 bytes sit in the allocator's 12 KiB size class,
    // and are charged at it (`footprint::allocated`).
    assert!(
        (10000.0..13500.0).contains(&one),
        "one 10 kB object weighs {one}"
    );

    rs.get("/g2?size=20000&cc=max-age%3D60").await;
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 2.0);
    let two = rs.metric("ringside_cache_bytes", &[]).await;
    assert!(
        two >= one + 20000.0 && two < one + 25000.0,
        "{one} then {two}"
    );

    // A hit changes nothing; an uncacheable response adds nothing.
    rs.get("/g1?size=10000&cc=max-age%3D60").await;
    rs.get("/g3?size=10000&cc=no-store").await;
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 2.0);
    assert_eq!(rs.metric("ringside_cache_bytes", &[]).await, two);
    assert_eq!(
        rs.metric("ringside_cache_capacity_bytes", &[]).await,
        CAPACITY as f64
    );
}

#[tokio::test]
async fn expired_objects_leave_the_gauges() {
    let (_origin, rs) = small_cache().await;
    // No validators, no stale windows: its usable life ends with freshness.
    rs.get("/short?size=5000&cc=max-age%3D1").await;
    assert_eq!(rs.metric("ringside_cache_entries", &[]).await, 1.0);
    eventually(
        Duration::from_secs(10),
        "the expired entry leaves the gauges",
        || async {
            rs.metric("ringside_cache_entries", &[]).await == 0.0
                && rs.metric("ringside_cache_bytes", &[]).await == 0.0
        },
    )
    .await;
    let expired = rs
        .metric("ringside_cache_evictions_total", &["cause=\"expired\""])
        .await;
    assert!(expired >= 1.0, "{expired}");
}

#[tokio::test]
async fn an_empty_body_is_stored_and_served_empty() {
    let (origin, rs) = small_cache().await;
    let path = "/empty?size=0&cc=max-age%3D60";
    for _ in 0..2 {
        let r = rs.get(path).await;
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("0"));
    }
    let head = rs.request("HEAD", path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(is_hit(&head));
    assert_eq!(origin.hits(path), 1);
}

/// 204 and 304 have no body: no Content-Length on a 204 and no
/// Transfer-Encoding on either (RFC 9110 §8.6, RFC 9112 §6.1), whether the
/// response was stored or streamed through; the connection stays in step.
#[tokio::test]
async fn bodyless_responses_carry_no_body_framing() {
    let (origin, rs) = small_cache().await;
    for (path, stored) in [
        ("/nobody?status=204&cc=max-age%3D60", true),
        ("/nobody?status=204", false),
        ("/nobody?status=304", false),
    ] {
        let mut conn = common::Conn::connect(rs.addr).await.unwrap();
        for method in ["GET", "GET", "HEAD"] {
            let r = conn.request(method, path, &[]).await.unwrap();
            assert!(r.body.is_empty(), "{method} {path}");
            assert_eq!(
                r.header("transfer-encoding"),
                None,
                "{method} {path}: {:?}",
                r.headers
            );
            if r.status == 204 {
                assert_eq!(
                    r.header("content-length"),
                    None,
                    "{method} {path}: {:?}",
                    r.headers
                );
            }
            // The next response on the connection is read correctly.
            let next = conn.request("GET", "/next?size=3", &[]).await.unwrap();
            assert_eq!(next.body, b"xxx", "after {method} {path}");
        }
        assert_eq!(origin.hits(path), if stored { 1 } else { 3 }, "{path}");
    }
}

/// A full cache keeps the keys clients keep asking for while one-off URLs,
/// more than it holds between two requests for each of those keys, stream
/// through it: a new key gets in only if it was asked for more often than
/// the keys it would push out (README, "Evicted"; `store/admission.rs`).
/// Plain LRU would evict every one of them between their requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_off_urls_do_not_push_out_the_keys_clients_keep_asking_for() {
    let (origin, rs) = small_cache().await;
    // 2 KiB objects: the 1 MiB cache holds about 260.
    let hot = |i: usize| format!("/hot/{i}?size=2048&cc=max-age%3D600");
    let hot_keys = 40;
    let one_offs_per_round = 600;
    let (mut hot_hits, mut hot_hits_after_warm_up) = (0, 0);
    for round in 0..10 {
        for i in 0..hot_keys {
            let r = rs.get(&hot(i)).await;
            assert_eq!(r.status, 200);
            if is_hit(&r) {
                hot_hits += 1;
                hot_hits_after_warm_up += usize::from(round >= 3);
            }
        }
        if round == 0 {
            eventually(
                Duration::from_secs(30),
                "the admission filter is sized",
                || {
                    let log = rs.log();
                    async move { log.contains("admission filter sized") }
                },
            )
            .await;
        }
        let first = round * one_offs_per_round;
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let addr = rs.addr;
                tokio::spawn(async move {
                    for i in (first + w..first + one_offs_per_round).step_by(8) {
                        let path = format!("/once/{i}?size=2048&cc=max-age%3D600");
                        let r = common::get(addr, &path).await.unwrap();
                        assert_eq!(r.status, 200);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // From the fourth round on, once they have been asked for more often
    // than a one-off URL (measured: every one of them a hit).
    let asked = 7 * hot_keys;
    assert!(
        hot_hits_after_warm_up >= asked * 9 / 10,
        "{hot_hits_after_warm_up} hits of {asked} requests for the often-asked keys"
    );
    let hot_fetches: u64 = (0..hot_keys).map(|i| origin.hits(&hot(i))).sum();
    assert_eq!(hot_fetches, (10 * hot_keys - hot_hits) as u64);
}
