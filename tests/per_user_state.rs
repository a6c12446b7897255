//! What is one user's stays theirs: a 304 that revalidates a shared entry
//! may carry fields for the one client whose request caused it (Set-Cookie)
//! or make the entry unshareable (`private`, `no-store`). RFC 9111 §3.2 and
//! §4.3.4 say which fields a 304 updates; ringside then judges the merged
//! response as if it were new. On one node, in a cluster (the 304 reaches the
//! owner), and for background (stale-while-revalidate) refreshes. And a
//! response may name its per-user fields itself (`no-cache="set-cookie"`,
//! `private="..."`, RFC 9111 §5.2.2.4 and §5.2.2.7): the rest is shared,
//! those fields never.

mod common;
use common::origin::Origin;
use common::{cache_status, is_hit};
use common::{cluster_yaml, eventually, free_port, owner_of, start_cluster, Ringside};
use std::time::Duration;

/// Stored stale at once (max-age=0, revalidated on every use); a 304 makes it
/// fresh for a minute (`cc304`) and sets a cookie (`cookie304`).
const COOKIE_ON_304: &str = "cc=max-age%3D0&etag=v1&cc304=max-age%3D60&cookie304=1";

/// RFC 9111 §4.3.4: a 304's Set-Cookie goes to the client that revalidated,
/// never into the stored response other clients are served (whether or not
/// `cache_set_cookie` lets 200s with cookies be stored).
#[tokio::test]
async fn a_304s_set_cookie_goes_only_to_the_client_that_caused_it() {
    let origin = Origin::start().await;
    for cookies in ["false", "true"] {
        let config = format!("cache:\n  cache_set_cookie: {cookies}\n");
        let rs = Ringside::start(&origin.url(), &config).await;
        let path = format!("/profile-{cookies}?{COOKIE_ON_304}");

        let first = rs.get(&path).await;
        assert!(cache_status(&first).contains("stored"), "{first:?}");
        assert_eq!(first.header("set-cookie"), None);

        let a = rs.get(&path).await;
        assert!(cache_status(&a).contains("fwd-status=304"), "{a:?}");
        assert_eq!(
            a.header("set-cookie"),
            Some("session=2; Path=/"),
            "A: its cookie"
        );

        let b = rs.get(&path).await;
        assert!(cache_status(&b).contains("hit"), "{b:?}");
        assert_eq!(b.header("set-cookie"), None, "B must not get A's cookie");
        assert_eq!(origin.hits(&path), 2);
    }
}

/// RFC 9111 §3 and §4.3.4: a 304 saying `private` or `no-store` makes the
/// merged response unstorable for a shared cache: the stored copy goes, the
/// client that revalidated gets its answer, the next client goes to the origin.
#[tokio::test]
async fn a_304_that_says_private_or_no_store_evicts_the_entry() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    for (i, directive) in ["private%2C%20max-age%3D60", "no-store"].iter().enumerate() {
        let path = format!("/me{i}?cc=max-age%3D0&etag=v1&cc304={directive}");
        rs.get(&path).await;
        let a = rs.get(&path).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(cache_status(&a).contains("fwd-status=304"), "{a:?}");
        let b = rs.get(&path).await;
        assert!(!cache_status(&b).contains("hit"), "{directive}: {b:?}");
        assert_eq!(origin.hits(&path), 3, "{directive}: B went to the origin");
    }
}

/// A background refresh has no client: a cookie its 304 brings goes nowhere.
#[tokio::test]
async fn a_background_refresh_never_stores_a_304s_cookie() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/swr?cc=max-age%3D0%2C%20stale-while-revalidate%3D60&etag=v1&cc304=max-age%3D60&cookie304=1";
    rs.get(path).await;
    let stale = rs.get(path).await;
    assert!(
        cache_status(&stale).contains("stale-while-revalidate"),
        "{stale:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the background refresh",
        || async { origin.hits(path) == 2 },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the refreshed entry is a hit",
        || async {
            let r = rs.get(path).await;
            assert_eq!(r.header("set-cookie"), None, "{r:?}");
            cache_status(&r) == "ringside; hit"
        },
    )
    .await;
}

/// In a cluster the owner revalidates: the cookie goes back through the
/// asking node to the one client, and the owner's copy stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_304s_cookie_through_the_owner_reaches_only_its_client() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let members: Vec<String> = nodes
        .iter()
        .map(|n| n.peer_addr().unwrap().to_string())
        .collect();
    let path = (0..)
        .map(|i| format!("/owned{i}?{COOKIE_ON_304}"))
        .find(|p| owner_of(&members[0], &members, &origin.url(), p) == members[1])
        .unwrap();
    let (asker, owner) = (&nodes[0], &nodes[1]);

    let first = asker.get(&path).await;
    assert!(cache_status(&first).contains("detail=peer"), "{first:?}");
    let a = asker.get(&path).await;
    assert_eq!(a.header("set-cookie"), Some("session=2; Path=/"), "{a:?}");
    for node in [asker, owner] {
        let b = node.get(&path).await;
        assert_eq!(b.header("set-cookie"), None, "{b:?}");
        assert_eq!(b.status, 200);
    }
    assert_eq!(origin.hits(&path), 2);
}

/// RFC 9111 §5.2.2.4: `no-cache="set-cookie"` lets a shared cache store
/// the response but never serve its Set-Cookie without revalidating. The
/// client whose request filled the cache gets its cookie; the stored copy
/// has none, and serves everyone else while fresh. (Read as a plain
/// `no-cache`, every request revalidated and each 304 served the first
/// user's cookie to the next.) In a cluster too: the owner's copy and the
/// asking node's are clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_cache_naming_set_cookie_stores_the_response_without_it() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  cache_set_cookie: true\n").await;
    let cc = "cc=max-age%3D60%2C%20no-cache%3D%22Set-Cookie%22&etag=v1&cookie200=1";
    let path = format!("/nc-cookie?{cc}");
    let a = rs.get(&path).await;
    assert_eq!(
        a.header("set-cookie"),
        Some("session=1; Path=/"),
        "A: {a:?}"
    );
    for client in ["B", "C"] {
        let r = rs.get(&path).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("set-cookie"),
            None,
            "{client} got A's cookie: {r:?}"
        );
        assert!(is_hit(&r), "{client}: the rest is stored, fresh: {r:?}");
    }
    assert_eq!(origin.hits(&path), 1);

    let members: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut nodes = Vec::new();
    for me in &members {
        let yaml = format!(
            "cache:\n  cache_set_cookie: true\n{}",
            cluster_yaml(me, &members, "")
        );
        nodes.push(Ringside::start(&origin.url(), &yaml).await);
    }
    let path = (0..)
        .map(|i| format!("/nc-owned{i}?{cc}"))
        .find(|p| owner_of(&members[0], &members, &origin.url(), p) == members[1])
        .unwrap();
    let a = nodes[0].get(&path).await;
    assert_eq!(
        a.header("set-cookie"),
        Some("session=1; Path=/"),
        "A: {a:?}"
    );
    for node in [&nodes[0], &nodes[1]] {
        let r = node.get(&path).await;
        assert_eq!(r.header("set-cookie"), None, "{r:?}");
    }
}

/// RFC 9111 §5.2.2.7: `private` with field names keeps only those fields
/// from a shared cache; the rest of the response may be stored.
#[tokio::test]
async fn private_naming_fields_stores_the_rest() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "cache:\n  cache_set_cookie: true\n").await;
    let path = "/pf?cc=max-age%3D60%2C%20private%3D%22set-cookie%2C%20x-user%22&cookie200=1&header=X-User%3Aalice";
    let a = rs.get(path).await;
    assert_eq!(
        a.header("set-cookie"),
        Some("session=1; Path=/"),
        "A: {a:?}"
    );
    assert_eq!(a.header("x-user"), Some("alice"), "A: {a:?}");
    let b = rs.get(path).await;
    assert!(is_hit(&b), "the rest is stored: {b:?}");
    assert_eq!(b.header("set-cookie"), None, "{b:?}");
    assert_eq!(b.header("x-user"), None, "{b:?}");
    assert_eq!(origin.hits(path), 1);
}
