//! Writes invalidate (RFC 9111 §4.4), on every node: read-your-writes.
//! A non-error response to an unsafe method drops the target URI and the
//! same-origin `Location` / `Content-Location` URIs; in a cluster, from the
//! owner, hot mirrors and every variant, before the write's response reaches
//! the app. An error response invalidates nothing.

mod common;
use common::origin::Origin;
use common::{cache_status, is_hit};
use common::{cluster_yaml, free_port, owner_of, start_cluster, Ringside};

/// RFC 9111 §4.4: POST, PUT, PATCH, DELETE and extension methods invalidate
/// the target URI, on a non-error response.
#[tokio::test]
async fn a_successful_write_invalidates_the_target_uri() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    for method in ["POST", "PUT", "PATCH", "DELETE", "FROBNICATE"] {
        let path = format!("/items/{method}?cc=max-age%3D600");
        rs.get(&path).await;
        assert!(is_hit(&rs.get(&path).await), "{method}: cached first");
        let write = rs.request(method, &path, &[]).await;
        assert_eq!(write.status, 200, "{method}");
        let after = rs.get(&path).await;
        assert!(!is_hit(&after), "{method}: {after:?}");
        assert_eq!(origin.hits(&path), 3, "{method}: GET, write, GET");
        let total = rs.metric("ringside_invalidations_total", &[]).await;
        assert!(total >= 1.0);
    }
}

/// RFC 9111 §4.4: a 4xx or 5xx answer to the write invalidates nothing.
#[tokio::test]
async fn an_error_response_to_a_write_invalidates_nothing() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    for status in ["409", "500"] {
        let path = format!("/items/e?cc=max-age%3D600&wstatus={status}");
        rs.get(&path).await;
        let write = rs.request("PUT", &path, &[]).await;
        assert_eq!(write.status.to_string(), status);
        assert!(is_hit(&rs.get(&path).await), "{status}: still cached");
    }
}

/// RFC 9111 §4.4: the Location and Content-Location URIs are invalidated
/// too when they are on the same origin.
#[tokio::test]
async fn location_and_content_location_are_invalidated() {
    let origin = Origin::start().await;
    let rules = "cache:\n  rules:\n    - {prefix: /things/, ttl: 10m}\n";
    let rs = Ringside::start(&origin.url(), rules).await;
    for path in ["/things/7", "/things/8"] {
        rs.get(path).await;
        assert!(is_hit(&rs.get(path).await), "{path} cached");
    }
    let write = rs
        .request(
            "POST",
            "/things/new?location=/things/7&content_location=/things/8",
            &[],
        )
        .await;
    assert_eq!(write.status, 200);
    for path in ["/things/7", "/things/8"] {
        assert!(!is_hit(&rs.get(path).await), "{path} invalidated");
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// A fill that fetched before the write must not store its (old) answer
/// after the write invalidated the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fill_that_started_before_the_write_does_not_store() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let path = "/race?cc=max-age%3D600&gdelay_ms=600";
    let addr = rs.addr;
    let reader = tokio::spawn(async move { common::get(addr, path).await.unwrap() });
    common::eventually(
        std::time::Duration::from_secs(5),
        "GET reached origin",
        || async { origin.hits(path) == 1 },
    )
    .await;
    assert_eq!(rs.request("PUT", path, &[]).await.status, 200);
    let old = reader.await.unwrap();
    assert_eq!(old.status, 200);
    let after = rs.get(path).await;
    assert!(
        !is_hit(&after),
        "the pre-write answer was stored: {after:?}"
    );
    assert_ne!(after.body, old.body);
}

/// Read-your-writes across the cluster: `/items/1` cached through node A
/// (owned by B, mirrored hot on C); `PUT /items/1` through C; then no node
/// answers the old copy, and the origin is asked once for the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_any_node_invalidates_every_node() {
    let origin = Origin::start().await;
    let hot_at_once = "  hot:\n    min_rate: 0.1\n";
    let nodes = start_cluster(&origin.url(), 3, hot_at_once).await;
    let members: Vec<String> = nodes
        .iter()
        .map(|n| n.peer_addr().unwrap().to_string())
        .collect();
    let owned_by_b = |p: &String| {
        members
            .iter()
            .all(|me| owner_of(me, &members, &origin.url(), p) == members[1])
    };
    let path = (0..)
        .map(|i| format!("/items/{i}?cc=max-age%3D600"))
        .find(owned_by_b)
        .unwrap();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let old = a.get(&path).await;
    assert!(cache_status(&old).contains("detail=peer"), "{old:?}");
    c.get(&path).await; // hot at once: C keeps a mirror
    let mirrored = c.get(&path).await;
    assert!(is_hit(&mirrored), "C mirrors the key: {mirrored:?}");
    assert_eq!(origin.hits(&path), 1);

    let write = c.request("PUT", &path, &[]).await;
    assert_eq!(write.status, 200);
    assert!(!cache_status(&write).contains("incomplete"), "{write:?}");

    for node in [a, b, c] {
        let r = node.get(&path).await;
        assert_eq!(r.status, 200);
        assert_ne!(r.body, old.body, "a node answered the old copy: {r:?}");
    }
    assert_eq!(origin.hits(&path), 3, "GET, PUT, then one GET cluster-wide");

    // An error answer to a write leaves every copy in place.
    let failed = c.request("PUT", &format!("{path}&wstatus=500"), &[]).await;
    assert_eq!(failed.status, 500);
    for node in [a, b, c] {
        assert_eq!(node.get(&path).await.status, 200);
    }
    assert_eq!(origin.hits(&path), 3);
}

/// A member that cannot confirm within `invalidation_timeout` is counted,
/// and the write's response says the invalidation is incomplete.
#[tokio::test]
async fn an_unreachable_member_is_reported_on_the_write() {
    let origin = Origin::start().await;
    let me = format!("127.0.0.1:{}", free_port());
    let dead = format!("127.0.0.1:{}", free_port());
    let yaml = cluster_yaml(&me, &[me.clone(), dead], "  invalidation_timeout: 500ms\n");
    let rs = Ringside::start(&origin.url(), &yaml).await;
    let write = rs.request("DELETE", "/items/9", &[]).await;
    assert_eq!(write.status, 200);
    assert!(
        cache_status(&write).contains("detail=invalidation-incomplete"),
        "{write:?}"
    );
    let failures = rs
        .metric("ringside_invalidation_peer_failures_total", &[])
        .await;
    assert_eq!(failures, 1.0);
}

/// `PURGE` sent to the app listener is not ringside's purge (that is on the
/// admin listener, with its token): it goes to the origin like every method
/// but GET and HEAD, token and all, and invalidates as a write does. An
/// origin that refuses it (405) leaves the URL cached; one that answers it
/// 2xx has it dropped, on every node.
#[tokio::test]
async fn purge_on_the_app_listener_is_the_origins_to_answer() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "admin_token: app-port-purge-token\n").await;
    let refused = "/purge/refused?cc=max-age%3D600&wstatus=405";
    rs.get(refused).await;
    let token = [("authorization", "Bearer app-port-purge-token")];
    let r = rs.request("PURGE", refused, &token).await;
    assert_eq!(r.status, 405, "the origin's answer, not ringside's");
    assert!(cache_status(&r).contains("fwd=method"), "{r:?}");
    assert_eq!(origin.hits(refused), 2, "the PURGE reached the origin");
    assert!(is_hit(&rs.get(refused).await), "still cached");
    let invalidations = || rs.metric("ringside_invalidations_total", &[]);
    assert_eq!(invalidations().await, 0.0);
    let accepted = "/purge/accepted?cc=max-age%3D600";
    rs.get(accepted).await;
    let r = rs.request("PURGE", accepted, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        !is_hit(&rs.get(accepted).await),
        "dropped, as after a write"
    );
    assert_eq!(invalidations().await, 1.0);
}
