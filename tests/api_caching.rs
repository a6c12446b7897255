//! Caching what apps actually call: authenticated, per-caller and POST APIs
//! (README, "Authenticated and paid APIs"), without ever mixing callers.
//!
//! The origin echoes the credential it saw (`echo=H`) and counts its calls,
//! so a test tells from the body whose answer a caller got, and from the
//! count whether the cache answered.

mod common;
use common::origin::Origin;
use common::{cache_status, is_hit, Ringside};

/// Every credential header of the defaults, and one added with `_extra`.
const CREDENTIAL_HEADERS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-tenant-key",
];

const RULES: &str = "cache:\n  credential_headers_extra: [X-Tenant-Key]\n  rules:\n";

async fn node(origin: &Origin, rules: &str) -> Ringside {
    Ringside::start(&origin.url(), &format!("{RULES}{rules}")).await
}

/// A credential is a credential whatever header carries it: with a rule
/// ttl and a `max-age` answer alike, k2 never gets k1's answer. On the old
/// code X-Api-Key, Api-Key, X-Auth-Token, X-Access-Token and Cookie mixed
/// callers.
#[tokio::test]
async fn a_credential_in_any_header_keeps_callers_apart_in_the_shared_scope() {
    let origin = Origin::start().await;
    let rs = node(&origin, "    - {prefix: /v1/, ttl: 60s}\n").await;
    for header in CREDENTIAL_HEADERS {
        for cc in ["", "&cc=max-age%3D60"] {
            let path = format!("/v1/shared?echo={header}{cc}");
            let k1 = rs.request("GET", &path, &[(header, "k1")]).await;
            let k2 = rs.request("GET", &path, &[(header, "k2")]).await;
            if header == "proxy-authorization" {
                // Hop-by-hop: it never reaches the origin, but still keeps
                // the answer from being shared.
                assert!(!is_hit(&k2), "{header}{cc}: {k2:?}");
                assert_eq!(origin.last_request_header(&path, header), None);
                continue;
            }
            assert!(k1.text().starts_with(&format!("{header}=k1 ")), "{k1:?}");
            assert!(
                k2.text().starts_with(&format!("{header}=k2 ")),
                "{header}{cc}: k2 got {:?}",
                k2.text()
            );
            assert!(cache_status(&k2).contains("detail=authorization"), "{k2:?}");
            assert_eq!(origin.hits(&path), 2, "{header}{cc}");
        }
    }
    // Without a credential the rule's ttl stores as before.
    rs.get("/v1/open").await;
    assert!(is_hit(&rs.get("/v1/open").await));
}

/// `strip_request_headers_extra` adds to the 14 defaults instead of
/// replacing them.
#[tokio::test]
async fn extra_stripped_headers_keep_the_defaults() {
    let origin = Origin::start().await;
    let yaml = "cache:\n  strip_request_headers_extra: [X-Debug-Route]\n";
    let rs = Ringside::start(&origin.url(), yaml).await;
    let path = "/strip?cc=max-age%3D60";
    let headers = [("x-debug-route", "/admin"), ("x-forwarded-host", "evil")];
    rs.request("GET", path, &headers).await;
    assert_eq!(origin.last_request_header(path, "x-debug-route"), None);
    assert_eq!(origin.last_request_header(path, "x-forwarded-host"), None);
}

/// `scope: per-credential`: each credential has a partition of its own, in
/// which a private answer is kept for its owner; a request without a
/// credential uses the shared cache.
#[tokio::test]
async fn per_credential_partitions_keep_each_callers_answers_for_that_caller() {
    let origin = Origin::start().await;
    let rs = node(
        &origin,
        "    - {prefix: /v1/, ttl: 60s, scope: per-credential}\n",
    )
    .await;
    for cc in ["", "&cc=private%2C%20max-age%3D60"] {
        let path = format!("/v1/me?echo=x-api-key{cc}");
        let k1 = rs.request("GET", &path, &[("x-api-key", "k1")]).await;
        assert!(cache_status(&k1).contains("stored"), "{k1:?}");
        let again = rs.request("GET", &path, &[("x-api-key", "k1")]).await;
        assert!(
            is_hit(&again),
            "{cc}: the owner's second call is a hit: {again:?}"
        );
        assert_eq!(again.text(), k1.text());
        assert!(
            cache_status(&again).contains("scope=per-credential"),
            "{again:?}"
        );
        let k2 = rs.request("GET", &path, &[("x-api-key", "k2")]).await;
        assert!(!is_hit(&k2), "{cc}: the next caller misses: {k2:?}");
        assert!(k2.text().starts_with("x-api-key=k2 "), "{k2:?}");
        assert_eq!(origin.hits(&path), 2, "{cc}");
        // Another header carrying the same value is another credential.
        let other = rs.request("GET", &path, &[("authorization", "k1")]).await;
        assert!(!is_hit(&other), "{other:?}");
    }
    // No credential: the shared scope, and a private answer is not stored.
    let open = "/v1/open?cc=private%2C%20max-age%3D60";
    rs.get(open).await;
    assert!(!is_hit(&rs.get(open).await));
    let metrics = rs.metrics().await;
    let per_credential = common::metric_sum(
        &metrics,
        "ringside_requests_total",
        &["result=\"hit\"", "scope=\"per-credential\""],
    );
    assert_eq!(per_credential, 2.0, "{metrics}");
}

/// `scope: shared-despite-credentials`: the operator asserts the answer does
/// not depend on the caller; it is shared, and the credential still reaches
/// the origin on a miss. `private` still is not stored.
#[tokio::test]
async fn shared_despite_credentials_shares_and_still_sends_the_credential() {
    let origin = Origin::start().await;
    let rule = "    - {prefix: /geo/, ttl: 60s, scope: shared-despite-credentials}\n";
    let rs = node(&origin, rule).await;
    let path = "/geo/lookup?q=paris";
    rs.request("GET", path, &[("x-api-key", "billing-1")]).await;
    assert_eq!(
        origin.last_request_header(path, "x-api-key").as_deref(),
        Some("billing-1")
    );
    let other = rs.request("GET", path, &[("x-api-key", "billing-2")]).await;
    assert!(is_hit(&other), "{other:?}");
    assert!(
        cache_status(&other).contains("scope=shared-despite-credentials"),
        "{other:?}"
    );
    assert_eq!(origin.hits(path), 1);
    let private = "/geo/me?cc=private%2C%20max-age%3D60";
    rs.request("GET", private, &[("x-api-key", "billing-1")])
        .await;
    rs.request("GET", private, &[("x-api-key", "billing-1")])
        .await;
    assert_eq!(origin.hits(private), 2, "private is never shared");
}

/// `override`: the rule's ttl wins over what the origin says, and every
/// answer under it says `override` (and is counted).
#[tokio::test]
async fn an_override_answers_from_the_cache_where_the_origin_said_no_and_says_so() {
    let origin = Origin::start().await;
    let rs = node(&origin, "    - {prefix: /v1/, ttl: 60s, override: true}\n").await;
    for cc in [
        "cc=no-store",
        "cc=no-cache&etag=v1",
        "cc=private",
        "cc=max-age%3D1&age=30",
        "expires=-10",
    ] {
        let path = format!("/v1/x?{cc}");
        let first = rs.get(&path).await;
        assert!(cache_status(&first).contains("stored"), "{cc}: {first:?}");
        assert!(
            cache_status(&first).ends_with("; override"),
            "{cc}: {first:?}"
        );
        let second = rs.get(&path).await;
        assert!(is_hit(&second), "{cc}: {second:?}");
        assert!(
            cache_status(&second).ends_with("; override"),
            "{cc}: {second:?}"
        );
        assert_eq!(origin.hits(&path), 1, "{cc}");
    }
    // The origin said nothing to override: no flag.
    rs.get("/v1/plain").await;
    let plain = rs.get("/v1/plain").await;
    assert_eq!(cache_status(&plain), "ringside; hit");
    // Set-Cookie is never shared, override or not.
    let cookie = "/v1/c?cookie=1";
    rs.get(cookie).await;
    rs.get(cookie).await;
    assert_eq!(origin.hits(cookie), 2);
    let overridden = rs
        .metric("ringside_requests_total", &["override=\"true\""])
        .await;
    assert_eq!(overridden, 10.0);
    // A partial list overrides only what it names.
    let only_no_store = "    - {prefix: /v2/, ttl: 60s, override: [no-store]}\n";
    let rs = node(&origin, only_no_store).await;
    for (cc, stored) in [("cc=no-store", true), ("cc=private", false)] {
        let path = format!("/v2/y?{cc}");
        rs.get(&path).await;
        rs.get(&path).await;
        assert_eq!(origin.hits(&path), if stored { 1 } else { 2 }, "{cc}");
    }
}

/// In a cluster the owner of a partitioned key is wherever the ring puts
/// it; the asking node and the owner name the partition alike, so k1 hits
/// through any node and k2 never gets k1's answer.
#[tokio::test]
async fn per_credential_answers_stay_with_their_caller_across_a_cluster() {
    let origin = Origin::start().await;
    let extra = format!("{RULES}    - {{prefix: /v1/, ttl: 60s, scope: per-credential}}\n");
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let mut nodes = Vec::new();
    for me in &peers {
        let yaml = format!("{}{extra}", common::cluster_yaml(me, &peers, ""));
        nodes.push(Ringside::start(&origin.url(), &yaml).await);
    }
    for i in 0..20 {
        let path = format!("/v1/me/{i}?echo=authorization&cc=private%2C%20max-age%3D60");
        let first = nodes[i % 3]
            .request("GET", &path, &[("authorization", "Bearer k1")])
            .await;
        assert!(
            first.text().starts_with("authorization=Bearer k1 "),
            "{first:?}"
        );
        for node in &nodes {
            let k1 = node
                .request("GET", &path, &[("authorization", "Bearer k1")])
                .await;
            assert_eq!(k1.text(), first.text(), "{path}: k1 through {}", node.addr);
            let k2 = node
                .request("GET", &path, &[("authorization", "Bearer k2")])
                .await;
            assert!(
                k2.text().starts_with("authorization=Bearer k2 "),
                "{path}: k2 through {} got {:?}",
                node.addr,
                k2.text()
            );
        }
        assert_eq!(
            origin.hits(&path),
            2,
            "{path}: one fetch per credential, cluster-wide"
        );
    }
}

/// Within a partition every way an answer comes back stays its caller's: a
/// stale-while-revalidate refresh goes out with the partition's own
/// credential and its 304 renews that caller's copy only; a Range and a
/// conditional request are answered from the caller's copy.
#[tokio::test]
async fn per_credential_answers_stay_with_their_caller_through_refreshes_304s_and_ranges() {
    let origin = Origin::start().await;
    let rs = node(&origin, "    - {prefix: /v1/, scope: per-credential}\n").await;
    // Stale on arrival, revalidated by ETag; a 304 gives a minute.
    let path = "/v1/me?echo=x-api-key&etag=v1\
                &cc=max-age%3D0%2C%20stale-while-revalidate%3D60&cc304=max-age%3D60";
    let ask = |key: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let rs = &rs;
        async move {
            let mut headers = vec![("x-api-key", key)];
            headers.extend_from_slice(extra);
            rs.request("GET", path, &headers).await
        }
    };
    let k1 = ask("k1", &[]).await;
    let k2 = ask("k2", &[]).await;
    assert!(k1.text().starts_with("x-api-key=k1 "), "{k1:?}");
    assert!(k2.text().starts_with("x-api-key=k2 "), "{k2:?}");
    for (key, first, fetches) in [("k1", &k1, 3), ("k2", &k2, 4)] {
        let stale = ask(key, &[]).await;
        assert!(
            cache_status(&stale).contains("stale-while-revalidate"),
            "{key}: {stale:?}"
        );
        assert_eq!(stale.text(), first.text(), "{key}'s own stale copy");
        common::eventually(
            std::time::Duration::from_secs(10),
            "the partition's background refresh",
            || async { origin.hits(path) == fetches },
        )
        .await;
        assert_eq!(
            origin.last_request_header(path, "x-api-key").as_deref(),
            Some(key),
            "a refresh carries its own partition's credential"
        );
        common::eventually(
            std::time::Duration::from_secs(10),
            "the refreshed copy is a hit for its caller",
            || async {
                let r = ask(key, &[]).await;
                assert_eq!(r.text(), first.text(), "{key}: {r:?}");
                is_hit(&r)
            },
        )
        .await;
    }
    for (key, first) in [("k1", &k1), ("k2", &k2)] {
        let part = ask(key, &[("range", "bytes=10-11")]).await;
        assert_eq!(
            (part.status, part.text()),
            (206, key.to_string()),
            "{part:?}"
        );
        let same = ask(key, &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(same.status, 304, "{same:?}");
        assert_eq!(ask(key, &[]).await.text(), first.text());
    }
    assert_eq!(origin.hits(path), 4, "ranges and 304s came from the copies");
}

/// Hot keys owned by another node are mirrored on the asking node per
/// partition: callers asking one node for the same paths, interleaved,
/// each get only their own answers while mirrors answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_credential_answers_stay_with_their_caller_in_hot_mirrors() {
    let origin = Origin::start().await;
    let rules = format!("{RULES}    - {{prefix: /v1/, ttl: 60s, scope: per-credential}}\n");
    let extra = format!("  hot: {{fraction: 0.2, min_rate: 5}}\n{rules}");
    let nodes = common::start_cluster(&origin.url(), 3, &extra).await;
    let asker = &nodes[1];
    for cc in ["max-age%3D60", "private%2C%20max-age%3D60"] {
        for i in 0..6 {
            let path = format!("/v1/hot/{i}?echo=authorization&cc={cc}");
            let mut seen = std::collections::HashMap::new();
            for _ in 0..30 {
                for key in ["k1", "k2"] {
                    let bearer = format!("Bearer {key}");
                    let r = asker
                        .request("GET", &path, &[("authorization", &bearer)])
                        .await;
                    assert_eq!(r.status, 200, "{r:?}");
                    let body = seen.entry(key).or_insert_with(|| r.text());
                    assert!(
                        body.starts_with(&format!("authorization={bearer} ")),
                        "{r:?}"
                    );
                    assert_eq!(&r.text(), body, "{path}: {key} got {r:?}");
                }
            }
            assert_eq!(origin.hits(&path), 2, "{path}: one fetch per caller");
        }
    }
    let mirrored = asker.metric("ringside_hot_hits_total", &[]).await;
    assert!(mirrored > 0.0, "no answer came from a hot mirror");
}

/// A file for an injected credential, removed when dropped.
struct SecretFile(std::path::PathBuf);

impl SecretFile {
    fn new(name: &str, value: &str) -> SecretFile {
        let path = std::env::temp_dir().join(format!("ringside-{name}-{}", common::free_port()));
        std::fs::write(&path, value).expect("write the secret file");
        SecretFile(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `origin.inject_headers`: the origin gets the credential from a file
/// (replacing the app's copy), reloaded when the file changes; the app's
/// requests carry none, so ordinary shared caching applies.
#[tokio::test]
async fn injected_credentials_reach_the_origin_and_follow_their_file() {
    let origin = Origin::start().await;
    let secret = SecretFile::new("inject", "first-key-0001\n");
    let yaml = format!(
        "origin:\n  url: {}\n  inject_headers:\n    - {{name: Authorization, value_file: {}, prefix: \"Bearer \"}}\n",
        origin.url(),
        secret.path()
    );
    let rs = Ringside::start_yaml(&yaml).await;
    let path = "/billing/a?cc=max-age%3D60";
    rs.get(path).await;
    assert_eq!(
        origin.last_request_header(path, "authorization").as_deref(),
        Some("Bearer first-key-0001")
    );
    assert!(
        is_hit(&rs.get(path).await),
        "an app request without a credential is shared"
    );
    let own = "/billing/own?cc=no-store";
    rs.request("GET", own, &[("authorization", "Bearer app-copy")])
        .await;
    assert_eq!(
        origin.last_request_header(own, "authorization").as_deref(),
        Some("Bearer first-key-0001"),
        "the injected value replaces the app's"
    );
    std::fs::write(&secret.0, "second-key-0002\n").unwrap();
    let pass = "/billing/b?cc=no-store";
    common::eventually(
        std::time::Duration::from_secs(10),
        "the new key is sent",
        || async {
            rs.get(pass).await;
            origin.last_request_header(pass, "authorization").as_deref()
                == Some("Bearer second-key-0002")
        },
    )
    .await;
    for secret in ["first-key-0001", "second-key-0002"] {
        assert!(!rs.log().contains(secret), "the log holds the secret");
        assert!(
            !rs.metrics().await.contains(secret),
            "/metrics holds the secret"
        );
    }
}

/// In a cluster a node never sends its injected credential to a peer: the
/// owner injects its own. A member that records what reaches it stands in
/// for the owner (and answers nothing, so the asker goes to its origin):
/// over the peer channel it opens the channel and records each request in
/// plain text; over signed HTTP (`peer_protocol: http1`) it records the
/// bytes.
#[tokio::test]
async fn injected_credentials_never_cross_the_peer_channel() {
    let recorder_addr = format!("127.0.0.1:{}", common::free_port());
    let recorder = common::channel::Recorder::start(&recorder_addr, common::CLUSTER_SECRET).await;
    let seen = recorder.seen.clone();
    let wire = move || seen.lock().clone();
    injected_credentials_stay_home(&recorder_addr, "", wire).await;
}

#[tokio::test]
async fn injected_credentials_never_cross_to_a_peer_over_http() {
    use tokio::io::AsyncReadExt;
    let recorder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recorder_addr = recorder.local_addr().unwrap().to_string();
    let recorded = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<u8>::new()));
    let sink = recorded.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = recorder.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let wire = move || String::from_utf8_lossy(&recorded.lock()).into_owned();
    injected_credentials_stay_home(&recorder_addr, "  peer_protocol: http1\n", wire).await;
}

/// A node injecting a key asks the member at `recorder_addr` for keys it
/// owns; `wire()` is what that member saw.
async fn injected_credentials_stay_home(
    recorder_addr: &str,
    cluster_extra: &str,
    wire: impl Fn() -> String,
) {
    let origin = Origin::start().await;
    let secret = SecretFile::new("inject-peer", "peer-secret-0003");
    let me = format!("127.0.0.1:{}", common::free_port());
    let members = vec![me.clone(), recorder_addr.to_owned()];
    let yaml = format!(
        "origin:\n  url: {}\n  connect_timeout: 1s\n  read_timeout: 2s\n  inject_headers:\n    - {{name: X-Api-Key, value_file: {}}}\n{}",
        origin.url(),
        secret.path(),
        common::cluster_yaml(&me, &members, cluster_extra)
    );
    let rs = Ringside::start_yaml(&yaml).await;
    let paths = common::paths_owned_by(
        recorder_addr,
        &members,
        &origin.url(),
        "/b/",
        "cc=max-age%3D60",
        3,
    );
    for path in &paths {
        let r = rs.get(path).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            origin.last_request_header(path, "x-api-key").as_deref(),
            Some("peer-secret-0003"),
            "the origin got the injected key"
        );
    }
    let wire = wire();
    assert!(
        wire.contains(&paths[0][..paths[0].find('?').unwrap()]),
        "the peer was asked: {wire}"
    );
    assert!(
        !wire.contains("peer-secret-0003"),
        "the secret crossed to a peer: {wire}"
    );
    assert!(!rs.log().contains("peer-secret-0003"));
}

const SEARCH_RULE: &str =
    "    - {prefix: /v1/search, ttl: 60s, methods: [POST], body_key: json, max_key_body: 1KiB}\n";

async fn post(rs: &Ringside, path: &str, body: &[u8]) -> common::Response {
    let mut conn = common::Conn::connect(rs.addr).await.expect("connect");
    let headers = [("content-type", "application/json")];
    conn.request_with_body("POST", path, &headers, body)
        .await
        .expect("POST to ringside")
}

/// `methods: [POST]`: the same body within the ttl is answered from the
/// cache (the same JSON in another order or spacing too), a different body
/// is another entry, and a POST under the rule is a read: it invalidates
/// nothing.
#[tokio::test]
async fn post_with_equal_bodies_is_a_hit_and_different_bodies_never_share() {
    let origin = Origin::start().await;
    let rs = node(&origin, SEARCH_RULE).await;
    let path = "/v1/search";
    let first = post(&rs, path, br#"{"q": "tea", "page": 1}"#).await;
    assert_eq!(first.text(), r#"echo:{"q": "tea", "page": 1}"#);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let reordered = post(&rs, path, br#"{"page":1,"q":"tea"}"#).await;
    assert!(is_hit(&reordered), "{reordered:?}");
    assert_eq!(reordered.text(), first.text());
    let other = post(&rs, path, br#"{"q": "coffee", "page": 1}"#).await;
    assert_eq!(other.text(), r#"echo:{"q": "coffee", "page": 1}"#);
    assert_eq!(origin.hits(path), 2);
    // A GET of the path is another entry, and the POSTs invalidated nothing.
    rs.get("/v1/search?cc=max-age%3D60").await;
    assert!(is_hit(
        &post(&rs, path, br#"{"q":"coffee","page":1}"#).await
    ));
}

/// Concurrent POSTs with one body make one origin request, which carries
/// the body; a QUERY is cached so on any rule.
#[tokio::test]
async fn concurrent_equal_posts_collapse_into_one_origin_request() {
    let origin = Origin::start().await;
    let rs = std::sync::Arc::new(node(&origin, SEARCH_RULE).await);
    let path = "/v1/search/slow?delay_ms=300";
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let rs = rs.clone();
            tokio::spawn(async move { post(&rs, path, br#"{"q":"tea"}"#).await })
        })
        .collect();
    for p in posts {
        let r = p.await.unwrap();
        assert_eq!(r.text(), r#"echo:{"q":"tea"}"#, "{r:?}");
    }
    assert_eq!(origin.hits(path), 1, "one origin request for eight POSTs");
    let mut conn = common::Conn::connect(rs.addr).await.unwrap();
    let query = "/anything?cc=max-age%3D60";
    conn.request_with_body("QUERY", query, &[], b"select 1")
        .await
        .unwrap();
    let again = conn
        .request_with_body("QUERY", query, &[], b"select 1")
        .await
        .unwrap();
    assert!(is_hit(&again), "{again:?}");
    assert_eq!(again.text(), "echo:select 1");
    assert_eq!(origin.hits(query), 1);
}

/// A body over `max_key_body` passes through whole and uncached, announced
/// by Content-Length (never read) or chunked (the part read goes first);
/// one slower than `key_body_timeout` gets 408.
#[tokio::test]
async fn bodies_over_the_key_limit_pass_through_whole() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let rules = format!("{SEARCH_RULE}  key_body_timeout: 1s\n");
    let rs = node(&origin, &rules).await;
    let path = "/v1/search/big";
    let big = vec![b'x'; 5000];
    for _ in 0..2 {
        let r = post(&rs, path, &big).await;
        assert_eq!(r.body.len(), 5 + big.len(), "{:?}", cache_status(&r));
        assert!(cache_status(&r).contains("detail=body-too-large"), "{r:?}");
    }
    assert_eq!(origin.hits(path), 2);
    // Chunked: 600 bytes, then 600 more: past the limit in the second chunk.
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{a}\r\n258\r\n{b}\r\n0\r\n\r\n",
        a = "a".repeat(600),
        b = "b".repeat(600)
    );
    let reply = common::raw::raw_exchange(rs.addr, chunked).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text);
    assert!(
        reply
            .text
            .contains(&format!("echo:{}{}", "a".repeat(600), "b".repeat(600))),
        "the whole body reached the origin: {}",
        reply.text
    );
    // Slow: the head, then nothing.
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"q\":");
    let mut slow = common::raw::raw_open(rs.addr, head).await;
    let mut answer = String::new();
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        slow.read_to_string(&mut answer),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let _ = slow.shutdown().await;
    let counted = rs.metric("ringside_key_body_too_large_total", &[]).await;
    assert_eq!(counted, 3.0);
}

/// In a cluster a POST whose key another node owns is asked of the owner
/// with its body (signed with the rest): one origin request cluster-wide.
#[tokio::test]
async fn a_posts_body_crosses_to_its_owner_and_is_fetched_once_cluster_wide() {
    let origin = Origin::start().await;
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let mut nodes = Vec::new();
    for me in &peers {
        let yaml = format!(
            "{}{RULES}{SEARCH_RULE}",
            common::cluster_yaml(me, &peers, "")
        );
        nodes.push(Ringside::start(&origin.url(), &yaml).await);
    }
    for i in 0..10 {
        let path = format!("/v1/search/{i}");
        let body = format!("{{\"q\":\"item {i}\"}}");
        for node in &nodes {
            let r = post(node, &path, body.as_bytes()).await;
            assert_eq!(r.text(), format!("echo:{body}"), "{r:?}");
        }
        assert_eq!(
            origin.hits(&path),
            1,
            "{path}: one origin request for three nodes"
        );
    }
}

/// `origin.url` may carry a base path: app paths are appended to it, path
/// rules and keys are the app's paths, and a write's `Location` under the
/// base path invalidates the app path it names.
#[tokio::test]
async fn an_origin_url_with_a_base_path_gets_the_apps_paths_under_it() {
    let origin = Origin::start().await;
    let yaml = format!(
        "origin:\n  url: {}/api/v1/\ncache:\n  rules:\n    - {{prefix: /items/, ttl: 60s}}\n",
        origin.url()
    );
    let rs = Ringside::start_yaml(&yaml).await;
    let first = rs.get("/items/1?echo=host").await;
    assert_eq!(origin.hits("/api/v1/items/1?echo=host"), 1, "{first:?}");
    assert!(
        is_hit(&rs.get("/items/1?echo=host").await),
        "the app path's rule applied"
    );
    let written = format!("/items/2?location={}", "/api/v1/items/1%3Fecho%3Dhost");
    let w = rs.request("POST", &written, &[]).await;
    assert_eq!(w.status, 200, "{w:?}");
    assert_eq!(origin.hits(&format!("/api/v1{written}")), 1);
    assert!(
        !is_hit(&rs.get("/items/1?echo=host").await),
        "the Location's app path was invalidated"
    );
    let e = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args([
            "--origin",
            "http://127.0.0.1:1/v1/../x",
            "--listen",
            "127.0.0.1:1",
        ])
        .arg("--admin-listen")
        .arg("127.0.0.1:2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(stderr.contains("origin.url"), "{stderr}");
}

/// The README's three recipes, `examples/api-caching/*.yaml`, run as they
/// are with `--origin`, `--listen` and `--admin-listen`, and answer with the
/// Cache-Status lines their comments show.
#[tokio::test]
async fn the_api_caching_recipes_run_as_they_are() {
    let origin = Origin::start().await;
    let recipe = |name: &str| {
        format!(
            "{}/examples/api-caching/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let start = |name: &'static str| {
        let origin = origin.url();
        let file = recipe(name);
        async move {
            let listen = format!("127.0.0.1:{}", common::free_port());
            let admin = format!("127.0.0.1:{}", common::free_port());
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"));
            command.args([
                "--config",
                &file,
                "--origin",
                &origin,
                "--listen",
                &listen,
                "--admin-listen",
                &admin,
            ]);
            let scratch = common::ScratchDir::new(&format!("recipe-{name}"));
            let log = scratch.join("ringside.log");
            let mut process = common::process::Process::spawn(name, command, &log);
            let admin_addr: std::net::SocketAddr = admin.parse().unwrap();
            let ready = || async move {
                matches!(common::get(admin_addr, "/readyz").await, Ok(r) if r.status == 200)
            };
            process
                .wait_until(
                    std::time::Duration::from_secs(30),
                    "the recipe's node is ready",
                    ready,
                )
                .await;
            let addr: std::net::SocketAddr = listen.parse().unwrap();
            ((process, scratch), addr)
        }
    };
    let ask = |addr,
               method: &'static str,
               path: &'static str,
               headers: &'static [(&'static str, &'static str)],
               body: &'static [u8]| async move {
        let mut conn = common::Conn::connect(addr).await.unwrap();
        conn.request_with_body(method, path, headers, body)
            .await
            .unwrap()
    };

    let (_node, addr) = start("per-credential").await;
    let key = &[("x-api-key", "k1")];
    let first = ask(addr, "GET", "/v1/me?echo=x-api-key", key, b"").await;
    assert_eq!(
        cache_status(&first),
        "ringside; fwd=uri-miss; stored; scope=per-credential"
    );
    let again = ask(addr, "GET", "/v1/me?echo=x-api-key", key, b"").await;
    assert_eq!(cache_status(&again), "ringside; hit; scope=per-credential");

    let (_node, addr) = start("override").await;
    let first = ask(addr, "GET", "/v1/x?cc=no-store", &[], b"").await;
    assert_eq!(
        cache_status(&first),
        "ringside; fwd=uri-miss; stored; override"
    );
    let again = ask(addr, "GET", "/v1/x?cc=no-store", &[], b"").await;
    assert_eq!(cache_status(&again), "ringside; hit; override");

    let (_node, addr) = start("post-search").await;
    let json = &[("content-type", "application/json")];
    let first = ask(addr, "POST", "/v1/search", json, br#"{"q":"tea","k":5}"#).await;
    assert_eq!(cache_status(&first), "ringside; fwd=uri-miss; stored");
    let again = ask(
        addr,
        "POST",
        "/v1/search",
        json,
        br#"{ "k": 5, "q": "tea" }"#,
    )
    .await;
    assert_eq!(cache_status(&again), "ringside; hit");
    let big: &'static [u8] = Box::leak(vec![b'x'; 70_000].into_boxed_slice());
    let large = ask(addr, "POST", "/v1/search", json, big).await;
    assert_eq!(
        cache_status(&large),
        "ringside; fwd=bypass; detail=body-too-large"
    );
}
