//! A real cluster: several ringside processes on 127.0.0.1 with static
//! membership, in front of one real origin.

mod common;
use common::cache_status;
use common::origin::Origin;
use common::raw::{raw_exchange, raw_first_response, RawServer};
use common::{
    cluster_yaml, eventually, free_port, owner_of, peer_addrs, start_cluster, Conn, Ringside,
};
use http::{HeaderMap, HeaderValue};
use ringside::config::OriginUrl;
use ringside::membership::{self, Member};
use ringside::peers::{self, Envelope, PeerAuth};
use ringside::ring::Ring;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_fetch_per_key_for_the_whole_cluster() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "").await;
    let path = "/cold?cc=max-age%3D60&delay_ms=300";
    let mut tasks = Vec::new();
    for round in 0..30 {
        let addr = nodes[round % 3].addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await.unwrap();
            conn.request("GET", path, &[]).await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        origin.hits(path),
        1,
        "exactly one origin request cluster-wide"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_object_is_stored_once_cluster_wide() {
    let origin = Origin::start().await;
    // No hot mirrors: this test is about ownership.
    let nodes = start_cluster(&origin.url(), 3, "  hot: {fraction: 0}\n").await;
    for k in 0..30 {
        for node in &nodes {
            let r = node.get(&format!("/k{k}?cc=max-age%3D60")).await;
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(origin.total_hits(), 30);
    let mut entries = 0.0;
    for node in &nodes {
        entries += node.metric("ringside_cache_entries", &[]).await;
    }
    assert_eq!(
        entries, 30.0,
        "each of the 30 objects is stored on exactly one node"
    );
    let mut peer = 0.0;
    for node in &nodes {
        peer += node
            .metric("ringside_requests_total", &["result=\"peer\""])
            .await;
    }
    assert!(
        peer >= 30.0,
        "non-owners answered through the owner: {peer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_peer_costs_no_client_errors() {
    let origin = Origin::start().await;
    let mut nodes = start_cluster(&origin.url(), 3, "").await;
    let mut victim = nodes.remove(2);
    victim.kill(); // SIGKILL, and reaped: its ports refuse from here on
    for k in 0..40 {
        for node in &nodes {
            let r = node.get(&format!("/d{k}?cc=max-age%3D60")).await;
            assert_eq!(r.status, 200, "key {k}");
        }
    }
    drop(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_listener_rejects_requests_without_credentials() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let yaml = std::fs::read_to_string(
        std::env::temp_dir().join(format!("ringside-test-{}.yaml", nodes[0].addr.port())),
    )
    .unwrap();
    let peer_addr: std::net::SocketAddr = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("peer_listen: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut conn = Conn::connect(peer_addr).await.unwrap();
    let r = conn
        .request(
            "GET",
            "/x?cc=max-age%3D60",
            &[("x-ringside-origin", &origin.url())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(origin.total_hits(), 0);
    assert!(
        nodes[0]
            .metric("ringside_peer_auth_failures_total", &[])
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_removes_a_key_cluster_wide_and_needs_the_token() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "").await;
    let path = "/p?cc=max-age%3D600";
    for node in &nodes {
        node.get(path).await;
    }
    assert_eq!(origin.hits(path), 1);
    let mut admin = Conn::connect(nodes[1].admin).await.unwrap();
    let denied = admin.request("PURGE", path, &[]).await.unwrap();
    assert_eq!(denied.status, 401);
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let ok = admin
        .request("PURGE", path, &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    for node in &nodes {
        node.get(path).await;
    }
    assert_eq!(origin.hits(path), 2, "refetched once after the purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_with_a_body_never_marks_the_owner_down() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let peers = peer_addrs(&nodes);
    let owned_by_1 = |k: &String| owner_of(&peers[0], &peers, &origin.url(), k) == peers[1];
    let mut keys = (0..200)
        .map(|i| format!("/body/{i}?cc=max-age%3D60"))
        .filter(owned_by_1);
    let (with_body, plain) = (keys.next().unwrap(), keys.next().unwrap());
    let request = format!(
        "GET {with_body} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let reply = raw_exchange(nodes[0].addr, request).await.text;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(reply.contains("detail=request-body"), "{reply:?}");
    assert_eq!(origin.hits(&with_body), 1);
    assert_eq!(nodes[0].metric("ringside_peers_down", &[]).await, 0.0);
    // The owner still answers for its keys.
    let r = nodes[0].get(&plain).await;
    assert_eq!(
        cache_status(&r),
        "ringside; fwd=uri-miss; detail=peer",
        "{}",
        diag(&nodes).await
    );
}

// ---- helpers ----

/// The origin's default body for a GET of `path` starts with this.
fn body_ok(r: &common::Response, path: &str) -> bool {
    r.text().starts_with(&format!("GET {path} #"))
}

/// Request `path` from `node` until it answers from its hot mirror; panics
/// if it never does within `max` requests. Returns how many it took.
async fn heat(node: &Ringside, path: &str, max: usize) -> usize {
    for i in 1..=max {
        let r = node.get(path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(body_ok(&r, path), "{}", r.text());
        if cache_status(&r) == "ringside; hit" {
            return i;
        }
    }
    panic!("{path} never became a hot hit in {max} requests");
}

/// Peer-request counters and warnings of every node, for failure messages.
async fn diag(nodes: &[Ringside]) -> String {
    let mut out = String::new();
    for node in nodes {
        let metrics = node.metrics().await;
        let counters = metrics
            .lines()
            .filter(|l| l.starts_with("ringside_peer_requests_total{"));
        let warnings = node.log();
        let warnings = warnings
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10);
        out.push_str(&format!("node {}:\n", node.addr));
        for line in counters.chain(warnings) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

// ---- failures ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_peer_under_load_costs_no_client_errors() {
    let origin = Origin::start().await;
    // No mirrors: every request for a victim-owned key must go to the victim.
    let extra = "  hot: {fraction: 0}\n  peer_backoff: 300ms\n";
    let mut nodes = start_cluster(&origin.url(), 3, extra).await;
    let peers = peer_addrs(&nodes);
    let keys: Vec<String> = (0..90)
        .map(|k| format!("/load{k}?cc=max-age%3D60"))
        .collect();
    let victim_owned = keys
        .iter()
        .filter(|k| owner_of(&peers[0], &peers, &origin.url(), k) == peers[2])
        .count();
    assert!(victim_owned >= 10, "only {victim_owned} keys on the victim");
    let keys = Arc::new(keys);
    let survivors = [nodes[0].addr, nodes[1].addr];
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..8usize {
        let (keys, stop, made) = (keys.clone(), stop.clone(), made.clone());
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut round = c * 11;
            while !stop.load(Ordering::Relaxed) {
                let path = &keys[round % keys.len()];
                let addr = survivors[(round / keys.len() + c) % 2];
                let started = Instant::now();
                let r = common::get(addr, path).await;
                let ok = matches!(&r, Ok(r) if r.status == 200 && body_ok(r, path));
                let what = match r {
                    Ok(r) => format!("{path} via {addr}: {} {}", r.status, r.text()),
                    Err(e) => format!("{path} via {addr}: {e}"),
                };
                results.push((ok, started.elapsed(), what));
                made.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
            results
        }));
    }
    eventually(
        Duration::from_secs(30),
        "100 requests before the kill",
        || async { made.load(Ordering::Relaxed) >= 100 },
    )
    .await;
    nodes[2].kill();
    let at_kill = made.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        "200 requests after the kill",
        || async { made.load(Ordering::Relaxed) >= at_kill + 200 },
    )
    .await;
    let stopped_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut slowest = Duration::ZERO;
    for client in clients {
        for (ok, took, what) in client.await.unwrap() {
            assert!(ok, "client error: {what}");
            slowest = slowest.max(took);
            total += 1;
        }
    }
    assert!(total >= 300, "only {total} requests under load");
    assert!(
        stopped_at.elapsed() < Duration::from_millis(1500),
        "the load did not drain promptly"
    );
    // A refused connection must never cost a peer_timeout (1 s) per request.
    assert!(slowest < Duration::from_millis(900), "slowest {slowest:?}");
    let mut skipped = 0.0;
    for node in &nodes[..2] {
        let errors = node
            .metric("ringside_peer_requests_total", &["outcome=\"error\""])
            .await;
        assert!(errors > 0.0, "a survivor never saw the victim fail");
        assert!(node.metric("ringside_peers_down", &[]).await >= 1.0);
        skipped += node
            .metric("ringside_peer_requests_total", &["outcome=\"skipped\""])
            .await;
    }
    assert!(skipped > 0.0, "survivors kept asking the dead peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_peer_is_used_again_after_its_backoff() {
    let origin = Origin::start().await;
    let extra = "  hot: {fraction: 0}\n  peer_backoff: 200ms\n";
    let mut nodes = start_cluster(&origin.url(), 3, extra).await;
    let peers = peer_addrs(&nodes);
    let owned: Vec<String> = (0..)
        .map(|k| format!("/r{k}?cc=max-age%3D60"))
        .filter(|k| owner_of(&peers[0], &peers, &origin.url(), k) == peers[2])
        .take(12)
        .collect();
    let r = nodes[0].get(&owned[0]).await;
    assert_eq!(r.status, 200);
    assert!(
        cache_status(&r).contains("detail=peer"),
        "{r:?}\n{}",
        diag(&nodes).await
    );

    nodes[2].kill();
    let r = nodes[0].get(&owned[1]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!cache_status(&r).contains("detail=peer"), "{r:?}");
    assert!(
        nodes[0]
            .metric("ringside_peer_requests_total", &["outcome=\"error\""])
            .await
            >= 1.0
    );

    nodes[2].restart().await;
    assert_eq!(nodes[2].peer_addr().unwrap().to_string(), peers[2]);
    assert_eq!(
        nodes[2].metric("ringside_peer_served_total", &[]).await,
        0.0
    );
    // Time is the subject: the owner's failure put it in a 200 ms backoff,
    // which must have run out before counting attempts (a lower bound, so
    // a slow machine cannot make this early).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut via_peer = None;
    for (i, path) in owned[2..].iter().enumerate() {
        let r = nodes[0].get(path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(body_ok(&r, path));
        if cache_status(&r).contains("detail=peer") {
            via_peer = Some(i);
            break;
        }
        // Attempts are paced past the 200 ms base backoff: what is counted
        // is attempts, and a stale pooled connection may cost one.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let attempts = via_peer.expect("the restarted owner was never asked again");
    // The owner counts a request it served after answering it.
    eventually(
        Duration::from_secs(10),
        "the restarted owner counts what it served",
        || async { nodes[2].metric("ringside_peer_served_total", &[]).await >= 1.0 },
    )
    .await;
    // Stale pooled connections to the dead process may cost one more try, no more.
    assert!(
        attempts <= 1,
        "took {attempts} extra attempts\n{}",
        diag(&nodes).await
    );
}

/// The connections a node keeps to a peer for its hops all die when the
/// peer restarts. The first hop after the restart must still reach the
/// peer: dead idle connections are dropped, or retried once on a new one,
/// never counted as the peer failing (which would send keys to the origin
/// and put the peer in a backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hops_after_a_peer_restart_reach_it_at_once() {
    let origin = Origin::start().await;
    let extra = "  hot: {fraction: 0}\n";
    let mut nodes = start_cluster(&origin.url(), 2, extra).await;
    let peers = peer_addrs(&nodes);
    let owned: Vec<String> = (0..)
        .map(|k| format!("/idle{k}?cc=max-age%3D60"))
        .filter(|k| owner_of(&peers[0], &peers, &origin.url(), k) == peers[1])
        .take(12)
        .collect();
    // Concurrent hops leave several idle connections to the peer.
    let (a, warm) = (nodes[0].addr, &owned[..8]);
    let answers = futures::future::join_all(warm.iter().map(|p| common::get(a, p))).await;
    for (path, r) in warm.iter().zip(answers) {
        let r = r.unwrap();
        assert!(cache_status(&r).contains("detail=peer"), "{path}: {r:?}");
    }
    nodes[1].restart().await;
    for path in &owned[8..] {
        let r = nodes[0].get(path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            cache_status(&r).contains("detail=peer"),
            "{path} did not hop: {r:?}\n{}",
            diag(&nodes).await
        );
    }
    let errors = nodes[0]
        .metric("ringside_peer_requests_total", &["outcome=\"error\""])
        .await;
    assert_eq!(
        errors, 0.0,
        "a dead idle connection counted as the peer failing"
    );
}

// ---- disagreeing member lists ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disagreeing_member_lists_never_loop_or_deadlock() {
    let origin = Origin::start().await;
    let [a, b, c, dead] = [0; 4].map(|_| format!("127.0.0.1:{}", free_port()));
    let extra = "  hot: {fraction: 0}\n  peer_backoff: 200ms\n";
    let views = [
        (&a, vec![a.clone(), b.clone(), c.clone()]),
        (&b, vec![a.clone(), b.clone()]),
        // C also lists a member that never started.
        (&c, vec![a.clone(), c.clone(), dead.clone()]),
    ];
    let mut nodes = Vec::new();
    for (me, members) in &views {
        let yaml = cluster_yaml(me, members, extra);
        nodes.push(Ringside::start(&origin.url(), &yaml).await);
    }
    let keys: Vec<String> = (0..60)
        .map(|k| format!("/dis{k}?cc=max-age%3D60"))
        .collect();
    let disagree = keys
        .iter()
        .filter(|k| {
            let owners: Vec<String> = views
                .iter()
                .map(|(me, m)| owner_of(me, m, &origin.url(), k))
                .collect();
            owners.windows(2).any(|w| w[0] != w[1])
        })
        .count();
    assert!(
        disagree >= 10,
        "only {disagree} keys with disagreeing owners"
    );

    let mut after_first_round = 0;
    for round in 0..3 {
        if round == 1 {
            after_first_round = origin.total_hits();
        }
        let mut tasks = Vec::new();
        for path in &keys {
            for node in &nodes {
                let (addr, path) = (node.addr, path.clone());
                tasks.push(tokio::spawn(async move {
                    let r = tokio::time::timeout(Duration::from_secs(5), common::get(addr, &path))
                        .await;
                    (path, addr, r)
                }));
            }
        }
        for t in tasks {
            let (path, addr, r) = t.await.unwrap();
            let r = r
                .unwrap_or_else(|_| panic!("{path} via {addr} hung"))
                .unwrap_or_else(|e| panic!("{path} via {addr}: {e}"));
            assert_eq!(r.status, 200, "{path} via {addr}: {}", r.text());
            assert!(body_ok(&r, &path), "{path} via {addr}: {}", r.text());
        }
    }
    assert_eq!(
        origin.total_hits(),
        after_first_round,
        "after one round every key is cached where each view (and each loop guard) puts it"
    );
    // Each node's view stores a key on one node at most (its owner by that
    // view, or the node itself when the owner is down), so three views can
    // cost at most three origin fetches per key however often it is asked.
    for path in &keys {
        let hits = origin.hits(path);
        assert!(
            (1..=3).contains(&hits),
            "{path}: {hits} origin hits after 3 rounds (at most one per node)"
        );
    }
    let mut loop_guard = 0.0;
    let mut mismatches = 0.0;
    let mut generations = Vec::new();
    for node in &nodes {
        loop_guard += node.metric("ringside_loop_guard_total", &[]).await;
        mismatches += node
            .metric("ringside_ring_generation_mismatches_total", &[])
            .await;
        generations.push(node.metric("ringside_ring_generation", &[]).await);
    }
    assert!(loop_guard > 0.0, "no peer request hit a disagreement");
    assert!(mismatches > 0.0, "no generation mismatch was seen");
    assert_ne!(generations[0], generations[1]);
    assert_ne!(generations[0], generations[2]);
    assert_ne!(generations[1], generations[2]);
    assert_eq!(nodes[1].metric("ringside_ring_members", &[]).await, 2.0);
    assert_eq!(nodes[2].metric("ringside_ring_members", &[]).await, 3.0);
}

// ---- hot keys ----

/// Three nodes with hot mirrors on (5 requests/s make a key hot), and the
/// first path `{prefix}{k}?cc={cc}` that node 0 owns, as node 1 sees the ring.
async fn hot_cluster(origin: &Origin, prefix: &str, cc: &str) -> (Vec<Ringside>, String) {
    let extra = "  hot: {fraction: 0.2, min_rate: 5}\n";
    let nodes = start_cluster(&origin.url(), 3, extra).await;
    let peers = peer_addrs(&nodes);
    let path = (0..)
        .map(|k| format!("{prefix}{k}?cc={cc}"))
        .find(|k| owner_of(&peers[1], &peers, &origin.url(), k) == peers[0])
        .expect("some key is owned by node 0");
    (nodes, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_key_is_mirrored_but_never_outlives_the_owners_freshness() {
    let origin = Origin::start().await;
    let (nodes, path) = hot_cluster(&origin, "/hot", "max-age%3D2").await;
    let asker = &nodes[1]; // nodes[0] owns the key
    let fetched_at = Instant::now();
    let r = asker.get(&path).await;
    assert!(
        cache_status(&r).contains("detail=peer"),
        "{r:?}\n{}",
        diag(&nodes).await
    );
    let took = heat(asker, &path, 40).await;
    assert!(took >= 5, "hot after only {took} requests");
    assert!(asker.metric("ringside_hot_hits_total", &[]).await > 0.0);
    assert!(asker.metric("ringside_hot_entries", &[]).await >= 1.0);
    // Counted by the asker before a hop's answer goes on, unlike the
    // owner's count of what it served, which comes after its response.
    let hops = asker.metric("ringside_peer_requests_total", &[]).await;
    for _ in 0..20 {
        let r = asker.get(&path).await;
        assert_eq!(cache_status(&r), "ringside; hit");
        assert!(body_ok(&r, &path));
    }
    assert_eq!(
        asker.metric("ringside_peer_requests_total", &[]).await,
        hops,
        "the owner kept serving a mirrored key"
    );
    assert!(
        fetched_at.elapsed() < Duration::from_millis(1500),
        "too slow to test freshness"
    );
    assert_eq!(origin.hits(&path), 1);

    // The owner's copy is stale after 2 s; the mirror must be too. Time is
    // the subject (a freshness lifetime), so this waits on the clock.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(fetched_at.elapsed())).await;
    let r = asker.get(&path).await;
    assert_eq!(r.status, 200);
    assert_ne!(
        cache_status(&r),
        "ringside; hit",
        "the mirror outlived the owner's freshness"
    );
    assert!(body_ok(&r, &path));
    assert_eq!(origin.hits(&path), 2, "the owner refetched once");
}

// ---- singleflight ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_fetch_for_150_concurrent_clients_on_three_nodes() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "").await;
    let path = "/crowd?cc=max-age%3D60&delay_ms=300";
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..50 {
            let addr = node.addr;
            tasks.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), common::get(addr, path)).await
            }));
        }
    }
    for t in tasks {
        let r = t.await.unwrap().expect("hung").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(body_ok(&r, path), "{}", r.text());
    }
    assert_eq!(
        origin.hits(path),
        1,
        "one origin request cluster-wide\n{}",
        diag(&nodes).await
    );
}

// ---- peer auth ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_listener_checks_signature_age_and_origin() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let peer = nodes[0].peer_addr().unwrap();
    let origin_url = OriginUrl::parse(&origin.url()).unwrap().key_prefix();
    let send = |secret: &'static str,
                ts: u64,
                signed_path: String,
                sent_path: String,
                o: String| {
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(peers::ORIGIN.clone(), HeaderValue::from_str(&o).unwrap());
            let to = peer.to_string();
            let envelope = Envelope {
                from: "127.0.0.1:1",
                to: &to,
                timestamp: ts,
                nonce: peers::random_nonce().unwrap(),
            };
            headers.extend(envelope.headers());
            let signature = PeerAuth::new(secret).sign("GET", &signed_path, &headers);
            headers.insert(peers::SIGNATURE.clone(), signature);
            let pairs: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let mut conn = Conn::connect(peer).await.unwrap();
            conn.request("GET", &sent_path, &pairs).await.unwrap()
        }
    };
    let now = peers::now_secs();
    let secret = common::CLUSTER_SECRET;
    let p = |s: &str| s.to_string();

    let ok = send(
        secret,
        now,
        p("/a?cc=max-age%3D60"),
        p("/a?cc=max-age%3D60"),
        origin_url.clone(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(body_ok(&ok, "/a?cc=max-age%3D60"));

    let wrong = send(
        "not-the-secret-at-all",
        now,
        p("/b"),
        p("/b"),
        origin_url.clone(),
    )
    .await;
    assert_eq!(wrong.status, 401, "wrong secret");
    let replayed = send(
        secret,
        now,
        p("/a?cc=max-age%3D60"),
        p("/b"),
        origin_url.clone(),
    )
    .await;
    assert_eq!(replayed.status, 401, "signature for another path");
    let expired = send(secret, now - 120, p("/b"), p("/b"), origin_url.clone()).await;
    assert_eq!(expired.status, 401, "expired timestamp");
    let future = send(secret, now + 120, p("/b"), p("/b"), origin_url.clone()).await;
    assert_eq!(future.status, 401, "timestamp from the future");
    assert!(
        nodes[0]
            .metric("ringside_peer_auth_failures_total", &[])
            .await
            >= 4.0
    );

    let elsewhere = send(secret, now, p("/b"), p("/b"), p("http://127.0.0.1:9")).await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.text());
    assert_eq!(origin.hits("/b"), 0);
    assert_eq!(
        origin.total_hits(),
        1,
        "only the valid request reached the origin (/a: {} hits)\n{}",
        origin.hits("/a?cc=max-age%3D60"),
        diag(&nodes).await
    );
}

// ---- purge ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_by_prefix_reaches_every_node() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 3, "  hot: {fraction: 0}\n").await;
    let purged: Vec<String> = (0..12)
        .map(|k| format!("/pp/{k}?cc=max-age%3D600"))
        .collect();
    let kept = "/keep/1?cc=max-age%3D600";
    for path in purged.iter().map(String::as_str).chain([kept]) {
        for node in &nodes {
            assert_eq!(node.get(path).await.status, 200);
        }
        assert_eq!(origin.hits(path), 1, "{path}\n{}", diag(&nodes).await);
    }
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let mut admin = Conn::connect(nodes[1].admin).await.unwrap();
    let r = admin
        .request(
            "PURGE",
            "/pp/",
            &[("authorization", &auth), ("ringside-purge", "prefix")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("2 of 2"), "{}", r.text());
    for path in purged.iter().map(String::as_str).chain([kept]) {
        for node in &nodes {
            let r = node.get(path).await;
            assert_eq!(r.status, 200);
            assert!(body_ok(&r, path));
        }
    }
    for path in &purged {
        assert_eq!(
            origin.hits(path),
            2,
            "{path} refetched once after the purge"
        );
    }
    assert_eq!(origin.hits(kept), 1, "outside the prefix: untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_clears_hot_mirrors() {
    let origin = Origin::start().await;
    let (nodes, path) = hot_cluster(&origin, "/hp", "max-age%3D600").await;
    let (owner, asker) = (&nodes[0], &nodes[1]);
    heat(asker, &path, 40).await;
    assert_eq!(origin.hits(&path), 1);

    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let mut admin = Conn::connect(owner.admin).await.unwrap();
    let r = admin
        .request("PURGE", &path, &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let r = asker.get(&path).await;
    assert_eq!(r.status, 200);
    assert_ne!(cache_status(&r), "ringside; hit", "served a purged mirror");
    assert!(body_ok(&r, &path));
    assert_eq!(origin.hits(&path), 2, "the owner refetched after the purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossed_owner_views_do_not_wait_on_each_other() {
    // A weighs B three times, B weighs everyone alike: for some keys A thinks
    // B owns them and B thinks A does. Asked at once on both nodes, neither
    // peer request may wait for the other's forwarded fill (a wait cycle
    // that only peer_timeout would break, marking a healthy peer down).
    let origin = Origin::start().await;
    let [a, b] = [0; 2].map(|_| format!("127.0.0.1:{}", free_port()));
    let yaml = |me: &str, b_weight: u32| {
        format!(
            "cluster:\n  enabled: true\n  peer_listen: {me}\n  secret: {}\n  peer_timeout: 2s\n  \
             hot: {{fraction: 0}}\n  membership:\n    static: [\"{a}\", {{addr: \"{b}\", weight: {b_weight}}}]\n",
            common::CLUSTER_SECRET
        )
    };
    let ring_owner = |me: &str, b_weight: u32, path: &str| {
        let members = vec![Member::new(a.clone(), 1), Member::new(b.clone(), b_weight)];
        let ring = Ring::new(
            membership::normalize(members, &Member::new(me, 1)),
            "ringside",
            512,
        );
        let key = format!(
            "{}{path}",
            OriginUrl::parse(&origin.url()).unwrap().key_prefix()
        );
        ring.owner(&key).unwrap().addr.clone()
    };
    let nodes = [
        Ringside::start(&origin.url(), &yaml(&a, 3)).await,
        Ringside::start(&origin.url(), &yaml(&b, 1)).await,
    ];
    let crossed: Vec<String> = (0..2000)
        .map(|k| format!("/x{k}?cc=max-age%3D60&delay_ms=200"))
        .filter(|k| ring_owner(&a, 3, k) == b && ring_owner(&b, 1, k) == a)
        .take(5)
        .collect();
    assert_eq!(crossed.len(), 5, "no keys with crossed owners");
    let mut tasks = Vec::new();
    for path in &crossed {
        for node in &nodes {
            let (addr, path) = (node.addr, path.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let r =
                    tokio::time::timeout(Duration::from_secs(10), common::get(addr, &path)).await;
                (path, addr, r, started.elapsed())
            }));
        }
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (path, addr, r, took) = t.await.unwrap();
        let r = r
            .unwrap_or_else(|_| panic!("{path} via {addr} hung"))
            .unwrap_or_else(|e| panic!("{path} via {addr}: {e}"));
        assert_eq!(r.status, 200, "{path} via {addr}: {}", r.text());
        assert!(body_ok(&r, &path));
        slowest = slowest.max(took);
    }
    for node in &nodes {
        assert_eq!(
            node.metric("ringside_peer_requests_total", &["outcome=\"error\""])
                .await,
            0.0,
            "a healthy peer was counted as failed"
        );
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "crossed requests waited on each other: slowest {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_refuses_us_costs_no_client_errors() {
    // B was given another secret (say, half-way through a rotation): it
    // answers A's peer requests with 401. A's clients must still get the
    // origin's answer, not B's refusal.
    let origin = Origin::start().await;
    let [a, b] = [0; 2].map(|_| format!("127.0.0.1:{}", free_port()));
    let members = [a.clone(), b.clone()];
    let extra = "  hot: {fraction: 0}\n";
    let node_a = Ringside::start(&origin.url(), &cluster_yaml(&a, &members, extra)).await;
    let yaml_b = cluster_yaml(&b, &members, extra)
        .replace(common::CLUSTER_SECRET, "another-secret-0123456789");
    let _node_b = Ringside::start(&origin.url(), &yaml_b).await;
    let owned_by_b: Vec<String> = (0..)
        .map(|k| format!("/refused{k}?cc=max-age%3D60"))
        .filter(|k| owner_of(&a, &members, &origin.url(), k) == b)
        .take(5)
        .collect();
    for path in &owned_by_b {
        let r = node_a.get(path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(body_ok(&r, path), "{path}: {}", r.text());
    }
    assert!(
        node_a
            .metric("ringside_peer_requests_total", &["outcome=\"error\""])
            .await
            >= 1.0,
        "the refusal was not counted as a peer failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_can_talk_http2_over_cleartext() {
    let origin = Origin::start().await;
    let extra = "  peer_protocol: h2c\n  hot: {fraction: 0}\n";
    let nodes = start_cluster(&origin.url(), 3, extra).await;
    for k in 0..20 {
        for node in &nodes {
            let r = node.get(&format!("/h2/{k}?cc=max-age%3D60")).await;
            assert_eq!(r.status, 200);
            assert!(r.text().contains(&format!("/h2/{k}")), "{}", r.text());
        }
    }
    assert_eq!(origin.total_hits(), 20, "one origin fetch per key");
    let mut ok = 0.0;
    for node in &nodes {
        ok += node
            .metric("ringside_peer_requests_total", &["outcome=\"ok\""])
            .await;
    }
    assert!(ok >= 40.0, "answered by owners over h2c: {ok}");
    // Purges are signed over h2c too: every other member confirms.
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let mut admin = Conn::connect(nodes[0].admin).await.unwrap();
    let r = admin
        .request(
            "PURGE",
            "/h2/",
            &[("authorization", &auth), ("ringside-purge", "prefix")],
        )
        .await
        .unwrap();
    assert!(
        r.text().contains("2 of 2"),
        "{}\nnode 0:\n{}\nnode 1:\n{}\nnode 2:\n{}",
        r.text(),
        nodes[0].log(),
        nodes[1].log(),
        nodes[2].log()
    );
    for node in &nodes {
        assert_eq!(
            node.metric("ringside_peer_auth_failures_total", &[]).await,
            0.0
        );
    }
}

// ---- peer auth: real signed requests, captured and replayed ----

/// The recorded request whose request line starts with `method`.
fn captured(capture: &RawServer, method: &str) -> Vec<u8> {
    let heads = capture.heads();
    let found = heads
        .into_iter()
        .find(|h| h.starts_with(format!("{method} ").as_bytes()));
    found.unwrap_or_else(|| panic!("no {method} captured"))
}

/// `head` with `lines` ("Name: value") added at its end.
fn with_headers(head: &[u8], lines: &[&str]) -> Vec<u8> {
    let mut out = head[..head.len() - 2].to_vec();
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captured_peer_requests_cannot_be_tampered_with_redirected_or_replayed() {
    // A and C are real nodes; B's address is first a capturing listener,
    // then (once a GET and a PURGE that A signed for B are recorded) a real
    // node. Everything is replayed well within the 30 s timestamp window.
    let origin = Origin::start().await;
    let [a, b, c] = [0; 3].map(|_| format!("127.0.0.1:{}", free_port()));
    let members = [a.clone(), b.clone(), c.clone()];
    // B, once real, fills from its origin (not from A's copy, as the key's
    // new owner would by asking the previous one): what reaches the origin
    // tells what B accepted.
    // Signed HTTP is what this test captures (the peer channel's own
    // handshake and records are tested in `peer_channel.rs`).
    let extra = "  hot: {fraction: 0}\n  previous_owner_window: 0s\n  peer_protocol: http1\n";
    // A stand-in for B: records the head of every request A sends it, then
    // hangs up (so A falls back to the origin, or counts the purge as
    // unconfirmed).
    let capture = RawServer::start(&b, |_, _| async {}).await;
    let node_a = Ringside::start(&origin.url(), &cluster_yaml(&a, &members, extra)).await;
    let node_c = Ringside::start(&origin.url(), &cluster_yaml(&c, &members, extra)).await;
    let owned_by_b: Vec<String> = (0..)
        .map(|k| format!("/pp/{k}?cc=max-age%3D600"))
        .filter(|k| owner_of(&a, &members, &origin.url(), k) == b)
        .take(4)
        .collect();
    let path = &owned_by_b[0];
    // The client's end-to-end headers go to the owner, and on to its origin.
    let accept = [("accept", "application/json")];
    let r = node_a.request("GET", path, &accept).await;
    assert_eq!(r.status, 200, "A falls back to the origin");
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let mut admin = Conn::connect(node_a.admin).await.unwrap();
    let headers = [("authorization", auth.as_str())];
    let purged = admin
        .request("PURGE", "/pp/", &headers)
        .await
        .unwrap()
        .text();
    assert!(
        purged.contains("1 of 2"),
        "C confirmed, B hung up: {purged}"
    );
    let (get, purge) = (captured(&capture, "GET"), captured(&capture, "PURGE"));
    capture.close().await;
    let node_b = Ringside::start(&origin.url(), &cluster_yaml(&b, &members, extra)).await;
    let peer = |n: &Ringside| n.peer_addr().unwrap();
    for key in &owned_by_b[1..] {
        assert_eq!(node_b.get(key).await.status, 200);
        assert_eq!(origin.hits(key), 1);
    }

    // Tampered: a header added to a GET that B never saw before.
    for added in [
        &["Cache-Control: no-cache", "X-Forwarded-Host: evil"][..],
        &["Cache-Control: no-cache"],
        &["X-Forwarded-Host: evil"],
    ] {
        let status = raw_first_response(peer(&node_b), &with_headers(&get, added))
            .await
            .status();
        assert_eq!(status, Some(401), "{added:?} added");
    }
    let get_text = String::from_utf8_lossy(&get).into_owned();
    assert!(get_text.contains("accept: application/json"), "{get_text}");
    let changed = get_text.replace("application/json", "text/html");
    assert_eq!(
        raw_first_response(peer(&node_b), changed.as_bytes())
            .await
            .status(),
        Some(401),
        "accept changed"
    );
    // Redirected: to another node, and back to its sender.
    assert_eq!(
        raw_first_response(peer(&node_c), &get).await.status(),
        Some(401),
        "sent to C"
    );
    assert_eq!(
        raw_first_response(peer(&node_a), &get).await.status(),
        Some(401),
        "sent back to A"
    );
    assert_eq!(
        origin.hits(path),
        1,
        "no refused request reached the origin"
    );
    // Unchanged, to B: accepted once (the refusals above did not use up its nonce).
    assert_eq!(
        raw_first_response(peer(&node_b), &get).await.status(),
        Some(200)
    );
    assert_eq!(origin.hits(path), 2);
    assert_eq!(origin.last_request_header(path, "x-forwarded-host"), None);
    assert_eq!(
        raw_first_response(peer(&node_b), &get).await.status(),
        Some(401),
        "replayed"
    );

    // A single-key PURGE widened to a prefix: refused, nothing purged.
    let widened = with_headers(&purge, &["x-ringside-purge-prefix: 1"]);
    assert_eq!(
        raw_first_response(peer(&node_b), &widened).await.status(),
        Some(401)
    );
    assert_eq!(
        raw_first_response(peer(&node_b), &purge).await.status(),
        Some(200),
        "as signed"
    );
    assert_eq!(
        raw_first_response(peer(&node_b), &purge).await.status(),
        Some(401),
        "replayed"
    );
    for key in &owned_by_b[1..] {
        let r = node_b.get(key).await;
        assert_eq!(cache_status(&r), "ringside; hit", "{key} was purged");
    }

    let failures = "ringside_peer_auth_failures_total";
    let refused = node_b.metric(failures, &[]).await;
    assert_eq!(refused, 7.0, "4 tampered, 2 replays, 1 widened");
    assert_eq!(node_c.metric(failures, &[]).await, 1.0);
    assert_eq!(node_a.metric(failures, &[]).await, 1.0);
    let replays = node_b
        .metric("ringside_peer_nonce_refusals_total", &["reason=\"replay\""])
        .await;
    assert_eq!(replays, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_needs_its_own_token_never_the_cluster_secret() {
    let origin = Origin::start().await;
    let [a, b] = [0; 2].map(|_| format!("127.0.0.1:{}", free_port()));
    let members = [a.clone(), b.clone()];
    let with_token = Ringside::start(&origin.url(), &cluster_yaml(&a, &members, "")).await;
    let token_line = format!("admin_token: {}\n", common::ADMIN_TOKEN);
    let yaml = cluster_yaml(&b, &members, "").replace(&token_line, "");
    let without_token = Ringside::start(&origin.url(), &yaml).await;
    let purge = |node: &Ringside, authorization: String| {
        let admin = node.admin;
        async move {
            let mut conn = Conn::connect(admin).await.unwrap();
            let headers = [("authorization", authorization.as_str())];
            conn.request("PURGE", "/t", &headers).await.unwrap()
        }
    };
    let secret = common::CLUSTER_SECRET;
    let r = purge(&without_token, format!("Bearer {secret}")).await;
    assert_eq!(r.status, 401, "the cluster secret purged: {}", r.text());
    assert!(r.text().contains("set admin_token"), "{}", r.text());

    let token = common::ADMIN_TOKEN;
    for accepted in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER   {token}"),
    ] {
        let r = purge(&with_token, accepted.clone()).await;
        assert_eq!(r.status, 200, "{accepted}: {}", r.text());
    }
    for refused in [
        format!("Bearer {secret}"),
        format!("Bearer {token}x"),
        format!("Bearer {}", &token[..token.len() - 1]),
        format!("Basic {token}"),
        format!("Bearer{token}"),
    ] {
        let r = purge(&with_token, refused.clone()).await;
        assert_eq!(r.status, 401, "{refused}: {}", r.text());
    }
    assert_eq!(
        with_token
            .metric("ringside_admin_auth_failures_total", &[])
            .await,
        5.0
    );
}

/// Only a peer's own gate says "refused" (`x-ringside-refused`): an origin
/// sending that field cannot make a healthy owner look dead to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_cannot_forge_a_peer_refusal() {
    let origin = Origin::start().await;
    let nodes = start_cluster(&origin.url(), 2, "").await;
    let members = peer_addrs(&nodes);
    let paths: Vec<String> = (0..)
        .map(|i| format!("/forged{i}?cc=max-age%3D60&header=X-Ringside-Refused:1"))
        .filter(|p| owner_of(&members[0], &members, &origin.url(), p) == members[1])
        .take(3)
        .collect();
    for path in &paths {
        let r = nodes[0].get(path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ringside-refused"), None, "not passed on");
        assert!(cache_status(&r).contains("detail=peer"), "{r:?}");
    }
    assert_eq!(nodes[0].metric("ringside_peers_down", &[]).await, 0.0);
    for path in &paths {
        assert_eq!(origin.hits(path), 1, "the owner fetched it, once");
    }
}
