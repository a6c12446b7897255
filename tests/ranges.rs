//! Range requests (RFC 9110 §14; RFC 9111 §3.3, §3.4) against real ringside
//! processes in front of the real test origin: a `Range` for a stored
//! complete response is answered from the cache (206, 416, or the whole 200
//! where RFC 9110 says to ignore the range); a `Range` on a miss fills the
//! whole object once and is cut from it; what is not stored leaves the range
//! to the origin. On one node and through a non-owner in a cluster.

mod common;
use common::cache_status;
use common::origin::{pattern_body, Origin, LAST_MODIFIED};
use common::{owner_of, start_cluster, Response, Ringside};

/// Every object here is this long, its bytes telling their offsets.
const LEN: usize = 1000;

/// A stored-for-a-minute object of [`LEN`] distinct bytes, with validators.
fn object(path: &str) -> String {
    format!("{path}?cc=max-age%3D60&size={LEN}&pattern=1&etag=v1&lm=1")
}

/// One node in front of a new origin, with [`object`]`(path)` stored whole.
async fn stored(path: &str) -> (Origin, Ringside, String) {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = object(path);
    assert_whole(&rs.get(&path).await);
    (origin, rs, path)
}

async fn get_range(rs: &Ringside, path: &str, extra: &[(&str, &str)]) -> Response {
    rs.request("GET", path, extra).await
}

/// `r` is the 206 of bytes `first..=last` of the pattern body.
#[track_caller]
fn assert_part(r: &Response, first: usize, last: usize) {
    assert_eq!(r.status, 206, "{r:?}");
    let range = format!("bytes {first}-{last}/{LEN}");
    assert_eq!(r.header("content-range"), Some(range.as_str()), "{r:?}");
    let length = (last - first + 1).to_string();
    assert_eq!(r.header("content-length"), Some(length.as_str()));
    assert!(
        r.body == pattern_body(LEN)[first..=last],
        "wrong bytes for {first}-{last}: {} bytes starting {:?}",
        r.body.len(),
        r.body.first()
    );
}

/// `r` is the whole 200, not a part.
#[track_caller]
fn assert_whole(r: &Response) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-range"), None);
    assert!(r.body == pattern_body(LEN), "{} bytes", r.body.len());
}

/// RFC 9110 §14.1.2 and §15.3.7: each form of a single byte range on a
/// stored response is a 206 from the cache, with Content-Range, the part's
/// Content-Length, and the 200's validators.
#[tokio::test]
async fn rfc9110_14_single_ranges_of_a_stored_response_are_206_hits() {
    let (origin, rs, path) = stored("/single").await;
    for (value, first, last) in [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, LEN - 1),
        ("bytes=-50", LEN - 50, LEN - 1),
        ("bytes=990-5000", 990, LEN - 1),
        ("bytes=-5000", 0, LEN - 1),
    ] {
        let r = get_range(&rs, &path, &[("range", value)]).await;
        assert_part(&r, first, last);
        assert_eq!(cache_status(&r), "ringside; hit", "{value}");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{value}");
        assert!(r.header("age").is_some(), "{value}");
    }
    assert_eq!(origin.hits(&path), 1, "every range came from the cache");
}

/// RFC 9110 §15.5.17: a range that starts past the end (or an empty
/// suffix) is 416 with `Content-Range: bytes */length`. §14.2: a malformed
/// range or an unknown unit is ignored: the whole 200.
#[tokio::test]
async fn rfc9110_15_5_17_unsatisfiable_ranges_get_416_and_malformed_ones_the_whole() {
    let (origin, rs, path) = stored("/unsat").await;
    for value in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = get_range(&rs, &path, &[("range", value)]).await;
        assert_eq!(r.status, 416, "{value}: {r:?}");
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{value}");
        assert!(r.body.is_empty());
    }
    for value in ["bytes=5-1", "items=0-9", "bytes=a-b"] {
        let r = get_range(&rs, &path, &[("range", value)]).await;
        assert_whole(&r);
        assert_eq!(cache_status(&r), "ringside; hit", "{value}");
    }
    assert_eq!(origin.hits(&path), 1);
}

/// RFC 9110 §13.1.5: `If-Range` with the stored strong ETag, or exactly the
/// stored Last-Modified (a strong validator: well before Date), gets the
/// part; another validator or a weak tag gets the whole response.
#[tokio::test]
async fn rfc9110_13_1_5_if_range_gets_the_part_only_when_the_validator_matches() {
    let (origin, rs, path) = stored("/ifrange").await;
    let cases = [
        ("\"v1\"", true),
        (LAST_MODIFIED, true),
        ("\"v2\"", false),
        ("W/\"v1\"", false),
        ("Thu, 22 Oct 2015 07:28:00 GMT", false),
    ];
    for (validator, gets_the_part) in cases {
        let headers = [("range", "bytes=10-19"), ("if-range", validator)];
        let r = get_range(&rs, &path, &headers).await;
        match gets_the_part {
            true => assert_part(&r, 10, 19),
            false => assert_whole(&r),
        }
        assert_eq!(cache_status(&r), "ringside; hit", "{validator}");
    }
    assert_eq!(origin.hits(&path), 1);
}

/// `r` is a 206 whose `multipart/byteranges` body holds exactly the parts
/// `ranges` of the `len`-byte pattern body, in order, each with its
/// `Content-Range`.
#[track_caller]
fn assert_multipart(r: &Response, ranges: &[(usize, usize)], len: usize) {
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.header("content-range"), None, "{r:?}");
    let content_type = r.header("content-type").unwrap_or_default();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("content-type {content_type:?}"));
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, r.body.len());
    let whole = pattern_body(len);
    let mut rest: &[u8] = &r.body;
    for &(first, last) in ranges {
        let delimiter = format!("--{boundary}\r\n");
        let at = rest
            .windows(delimiter.len())
            .position(|w| w == delimiter.as_bytes())
            .expect("a part delimiter");
        rest = &rest[at + delimiter.len()..];
        let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        let range = format!("content-range: bytes {first}-{last}/{len}");
        assert!(head.contains(&range), "{head:?} lacks {range}");
        rest = &rest[head_end + 4..];
        let size = last - first + 1;
        assert!(
            rest[..size] == whole[first..=last],
            "bytes of {first}-{last}"
        );
        rest = &rest[size..];
    }
    let end = format!("\r\n--{boundary}--\r\n");
    assert_eq!(rest, end.as_bytes(), "the close delimiter ends the body");
}

/// RFC 9110 §14.2, §14.6 and §15.3.7: overlapping or adjacent ranges are
/// coalesced into one part; ranges that stay apart are several parts of a
/// `multipart/byteranges` 206, in ascending order, each with its
/// `Content-Range`, cut from the stored object. More than 16 parts get the
/// whole 200 (an amplification guard, RFC 9110 §17.15).
#[tokio::test]
async fn rfc9110_14_6_several_ranges_are_a_multipart_206_from_the_cache() {
    let (origin, rs, path) = stored("/multi").await;
    let r = get_range(&rs, &path, &[("range", "bytes=0-9, 5-19,20-29")]).await;
    assert_part(&r, 0, 29);
    let r = get_range(&rs, &path, &[("range", "bytes=0-9,5000-")]).await;
    assert_part(&r, 0, 9);
    let r = get_range(&rs, &path, &[("range", "bytes=0-9,100-109")]).await;
    assert_multipart(&r, &[(0, 9), (100, 109)], LEN);
    assert_eq!(cache_status(&r), "ringside; hit");
    let r = get_range(&rs, &path, &[("range", "bytes=-10,500-509,0-4,3-7")]).await;
    assert_multipart(&r, &[(0, 7), (500, 509), (LEN - 10, LEN - 1)], LEN);
    let many: Vec<String> = (0..17).map(|i| format!("{}-{}", i * 10, i * 10)).collect();
    let many = format!("bytes={}", many.join(","));
    assert_whole(&get_range(&rs, &path, &[("range", &many)]).await);
    assert_eq!(origin.hits(&path), 1);
}

/// RFC 9110 §14.6 on a miss: the request whose fill streams a larger
/// object gets its several parts cut from the stream as it arrives.
#[tokio::test]
async fn rfc9110_14_6_several_ranges_on_a_streamed_miss_are_a_multipart_206() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let len = 100_000;
    let path = format!("/streamed?cc=max-age%3D60&size={len}&pattern=1");
    let ranges = "bytes=10-19,40000-40009,99990-";
    let r = get_range(&rs, &path, &[("range", ranges)]).await;
    let expected = [(10, 19), (40000, 40009), (99990, 99999)];
    assert_multipart(&r, &expected, len);
    assert!(cache_status(&r).contains("fwd=uri-miss"), "{r:?}");
    let hit = get_range(&rs, &path, &[("range", ranges)]).await;
    assert_multipart(&hit, &expected, len);
    assert_eq!(cache_status(&hit), "ringside; hit");
    assert_eq!(origin.hits(&path), 1);
}

/// RFC 9110 §14.2: range handling is defined for GET only, so a HEAD with
/// `Range` is answered from the cache with the whole response's head.
#[tokio::test]
async fn rfc9110_14_2_head_with_range_is_a_hit_with_the_whole_head() {
    let (origin, rs, path) = stored("/head").await;
    let r = rs.request("HEAD", &path, &[("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(cache_status(&r), "ringside; hit");
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.header("content-range"), None);
    assert_eq!(origin.hits(&path), 1);
}

/// RFC 9110 §13.2.2: If-None-Match is evaluated before Range: a matching
/// conditional range request is a 304, from the cache.
#[tokio::test]
async fn rfc9110_13_2_2_a_matching_if_none_match_wins_over_range() {
    let (origin, rs, path) = stored("/cond").await;
    let headers = [("range", "bytes=0-9"), ("if-none-match", "\"v1\"")];
    let r = get_range(&rs, &path, &headers).await;
    assert_eq!(r.status, 304, "{r:?}");
    assert_eq!(cache_status(&r), "ringside; hit");
    assert_eq!(origin.hits(&path), 1);
}

/// RFC 9111 §3.3, §3.4: on a miss, range requests do not make ringside
/// fetch or store partial content: concurrent range requests for one new
/// key share one fetch of the whole object (the origin would have answered
/// a `Range` with a 206: it never saw one), each gets its own part cut from
/// it, and the whole object is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rfc9111_3_3_range_misses_share_one_whole_fill_and_get_their_parts() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = format!("{}&ranges=1&delay_ms=300", object("/miss"));
    let ranges = [(0, 99), (100, 199), (900, 999), (500, 999), (0, 999)];
    let mut tasks = Vec::new();
    for (first, last) in ranges {
        let (addr, path) = (rs.addr, path.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = common::Conn::connect(addr).await.unwrap();
            let value = format!("bytes={first}-{last}");
            conn.request("GET", &path, &[("range", &value)])
                .await
                .unwrap()
        }));
    }
    for (task, (first, last)) in tasks.into_iter().zip(ranges) {
        assert_part(&task.await.unwrap(), first, last);
    }
    assert_eq!(origin.hits(&path), 1, "one fetch for every range");
    assert_eq!(origin.last_request_header(&path, "range"), None);
    let r = rs.get(&path).await;
    assert_whole(&r);
    assert_eq!(
        cache_status(&r),
        "ringside; hit",
        "the whole object is stored"
    );
}

/// RFC 9110 §14.2: a range on a miss whose length is not known before the
/// body ends (chunked) is answered with the whole 200 as it streams; the
/// stored object then answers the next one with a 206.
#[tokio::test]
async fn rfc9110_14_2_a_range_on_a_miss_of_unknown_length_gets_the_whole_then_parts() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = format!("{}&chunked=1", object("/chunked"));
    let first = get_range(&rs, &path, &[("range", "bytes=0-9")]).await;
    assert_whole(&first);
    let second = get_range(&rs, &path, &[("range", "bytes=0-9")]).await;
    assert_part(&second, 0, 9);
    assert_eq!(cache_status(&second), "ringside; hit");
    assert_eq!(origin.hits(&path), 1);
}

/// RFC 9111 §3: what ringside does not store (`no-store`) it does not cut
/// parts from either: the range request goes to the origin itself, `Range`
/// included, and gets the origin's 206. A body over `max_object_size`
/// sends the `Range` to the origin too, as a fill of its own whose 206 is
/// kept (see the partial entry test below).
#[tokio::test]
async fn rfc9111_3_a_range_for_what_is_not_stored_is_left_to_the_origin() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  max_object_size: 512\n").await;
    let no_store = format!("/ns?cc=no-store&size={LEN}&pattern=1&ranges=1");
    let too_large = format!("/big?cc=max-age%3D60&size={LEN}&pattern=1&ranges=1");
    for (path, told) in [
        (no_store, "detail=range-not-stored"),
        (too_large, "fwd=uri-miss; stored"),
    ] {
        let r = get_range(&rs, &path, &[("range", "bytes=100-199")]).await;
        assert_part(&r, 100, 199);
        assert!(cache_status(&r).contains(told), "{path}: {r:?}");
        let range = origin.last_request_header(&path, "range");
        assert_eq!(range.as_deref(), Some("bytes=100-199"), "{path}");
    }
}

/// RFC 9111 §3.3 in a cluster: a range request through a node that does not
/// own the key is cut from the whole object the owner stores; the origin is
/// asked once, and the owner answers ranges from its cache too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rfc9111_3_3_a_range_through_a_non_owner_is_cut_from_the_owners_object() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let peers: Vec<String> = nodes
        .iter()
        .map(|n| n.peer_addr().expect("peer listener").to_string())
        .collect();
    let path = (0..200)
        .map(|i| object(&format!("/owned{i}")))
        .find(|p| owner_of(&peers[0], &peers, &origin.url(), p) == peers[1])
        .expect("a key owned by node 1");
    let (other, owner) = (&nodes[0], &nodes[1]);

    let r = get_range(other, &path, &[("range", "bytes=0-99")]).await;
    assert_part(&r, 0, 99);
    assert_eq!(cache_status(&r), "ringside; fwd=uri-miss; detail=peer");
    let r = get_range(owner, &path, &[("range", "bytes=-50")]).await;
    assert_part(&r, LEN - 50, LEN - 1);
    assert_eq!(
        cache_status(&r),
        "ringside; hit",
        "the owner stored it whole"
    );
    let r = get_range(other, &path, &[("range", "bytes=500-")]).await;
    assert_part(&r, 500, LEN - 1);
    let r = get_range(other, &path, &[("range", "bytes=2000-")]).await;
    assert_eq!(r.status, 416, "{r:?}");
    assert_eq!(origin.hits(&path), 1, "one origin fetch cluster-wide");
}

/// RFC 9111 §3.3, §3.4: a response too large to store whole is still
/// served in parts: its `206` for a range is stored as a partial entry,
/// which answers the same range and ranges inside it from the cache, and
/// never one it does not cover (that goes to the origin, and its part
/// takes the entry's place). Rules apply to a part as to the whole: a
/// `no-store` one is never kept.
#[tokio::test]
async fn rfc9111_3_3_a_206_is_stored_as_a_partial_entry_that_answers_what_it_covers() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  max_object_size: 512\n").await;
    let path = format!("/partial?cc=max-age%3D60&size={LEN}&pattern=1&ranges=1&etag=v1");
    let first = get_range(&rs, &path, &[("range", "bytes=100-299")]).await;
    assert_part(&first, 100, 299);
    assert_eq!(
        origin.last_request_header(&path, "range").as_deref(),
        Some("bytes=100-299")
    );
    let fetched = origin.hits(&path);
    for (value, first, last) in [
        ("bytes=100-299", 100, 299),
        ("bytes=150-199", 150, 199),
        ("bytes=299-299", 299, 299),
    ] {
        let r = get_range(&rs, &path, &[("range", value)]).await;
        assert_part(&r, first, last);
        assert_eq!(cache_status(&r), "ringside; hit", "{value}");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{value}");
    }
    assert_eq!(
        origin.hits(&path),
        fetched,
        "every covered range from the cache"
    );
    // Not covered: the origin answers, nothing stored is cut for it.
    let r = get_range(&rs, &path, &[("range", "bytes=250-349")]).await;
    assert_part(&r, 250, 349);
    assert!(!common::is_hit(&r), "{r:?}");
    assert!(origin.hits(&path) > fetched);
    let whole = rs.get(&path).await;
    assert_eq!(whole.status, 200, "a GET without Range never gets a part");
    assert!(!common::is_hit(&whole), "{whole:?}");

    let no_store = format!("/partial-ns?cc=no-store&size={LEN}&pattern=1&ranges=1");
    get_range(&rs, &no_store, &[("range", "bytes=0-99")]).await;
    let again = get_range(&rs, &no_store, &[("range", "bytes=0-99")]).await;
    assert_part(&again, 0, 99);
    assert!(!common::is_hit(&again), "{again:?}");
}
