//! One sidecar in front of several APIs (`upstreams`): each origin on a
//! listener of its own, cached apart, with its own path rules, purged by
//! naming it, and shared across a cluster like the main origin.

mod common;
use common::origin::Origin;
use common::{cluster_yaml, free_port, get, owner_of, Conn, Ringside};
use std::net::SocketAddr;

/// The upstream block for `origin` on `listen`, bypassing `/live`.
fn upstream_yaml(listen: SocketAddr, origin: &Origin) -> String {
    format!(
        "upstreams:\n  - listen: {listen}\n    origin: {}\n    rules:\n      - prefix: /live\n        bypass: true\n",
        origin.url()
    )
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

#[tokio::test]
async fn each_upstream_listener_fronts_its_own_origin_with_its_own_rules() {
    let main = Origin::start().await;
    let other = Origin::start().await;
    let second = free_addr();
    let yaml = format!(
        "admin_token: {}\n{}",
        common::ADMIN_TOKEN,
        upstream_yaml(second, &other)
    );
    let rs = Ringside::start(&main.url(), &yaml).await;

    let path = "/items/1?cc=max-age%3D600";
    for _ in 0..2 {
        assert_eq!(get(second, path).await.unwrap().status, 200);
    }
    let hit = get(second, path).await.unwrap();
    assert_eq!(hit.header("cache-status"), Some("ringside; hit"));
    assert_eq!(other.hits(path), 1, "the upstream's origin fetched once");
    assert_eq!(main.hits(path), 0, "the main origin never asked");
    // The same path on the main listener is the main origin's, cached apart.
    rs.get(path).await;
    rs.get(path).await;
    assert_eq!(main.hits(path), 1);
    assert_eq!(other.hits(path), 1);

    // The upstream's own rules apply to its origin only.
    let live = "/live/price?cc=max-age%3D600";
    for _ in 0..2 {
        get(second, live).await.unwrap();
        rs.get(live).await;
    }
    assert_eq!(other.hits(live), 2, "bypassed on the upstream listener");
    assert_eq!(
        main.hits(live),
        1,
        "cached on the main listener (cache.rules)"
    );

    // A purge names the upstream's origin.
    let mut admin = Conn::connect(rs.admin).await.unwrap();
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let purged = admin
        .request(
            "PURGE",
            path,
            &[("authorization", &auth), ("ringside-origin", &other.url())],
        )
        .await
        .unwrap();
    assert_eq!(purged.status, 200, "{}", purged.text());
    get(second, path).await.unwrap();
    assert_eq!(other.hits(path), 2, "refetched after the purge");
    rs.get(path).await;
    assert_eq!(main.hits(path), 1, "the main origin's copy untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstreams_keys_are_shared_across_the_cluster() {
    let main = Origin::start().await;
    let other = Origin::start().await;
    let peers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let listeners = [free_addr(), free_addr()];
    let mut nodes = Vec::new();
    for (me, listen) in peers.iter().zip(listeners) {
        let yaml = format!(
            "{}{}",
            cluster_yaml(me, &peers, ""),
            upstream_yaml(listen, &other)
        );
        nodes.push(Ringside::start(&main.url(), &yaml).await);
    }
    // A key of the upstream's origin that node 1 owns, asked of node 0.
    let path = (0..200)
        .map(|i| format!("/shared/{i}?cc=max-age%3D600"))
        .find(|p| owner_of(&peers[0], &peers, &other.url(), p) == peers[1])
        .expect("a key node 1 owns");
    let first = get(listeners[0], &path).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("cache-status"),
        Some("ringside; fwd=uri-miss; detail=peer"),
        "node 0 asked the owner"
    );
    let at_owner = get(listeners[1], &path).await.unwrap();
    assert_eq!(
        at_owner.header("cache-status"),
        Some("ringside; hit"),
        "the owner stored it"
    );
    assert_eq!(other.hits(&path), 1, "one fetch cluster-wide");
    assert_eq!(main.total_hits(), 0);
}

#[tokio::test]
async fn an_upstream_on_a_taken_address_or_origin_is_a_config_error() {
    let main = Origin::start().await;
    let other = Origin::start().await;
    let check = |yaml: String| {
        let dir = std::env::temp_dir().join(format!("ringside-upstreams-{}.yaml", free_port()));
        std::fs::write(&dir, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
            .arg("check-config")
            .arg(&dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&dir);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = format!("listen: 127.0.0.1:18080\norigin:\n  url: {}\n", main.url());
    let (code, err) = check(format!(
        "{base}upstreams:\n  - listen: 127.0.0.1:18080\n    origin: {}\n",
        other.url()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstreams[0].listen"), "{err}");
    let (code, err) = check(format!(
        "{base}upstreams:\n  - listen: 127.0.0.1:18081\n    origin: {}\n",
        main.url()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstreams[0].origin"), "{err}");
    let (code, err) = check(format!(
        "{base}upstreams:\n  - listen: 127.0.0.1:18081\n    origin: {}\n    rules:\n      - prefix: live\n",
        other.url()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstreams[0].rules[0].prefix"), "{err}");
}
