//! While the cluster changes, a key is still fetched from the origin once:
//! cold keys requested on every node while a member joins and while one
//! leaves (etcd membership, real processes), each costs one origin fetch.
//!
//! The fills are made to straddle the change: the origin answers after
//! five seconds, every node asks for every key before the change (its owner
//! starts the one fill), and every node asks again once all rings show the
//! change, while those fills are still under way. The key's new owner then
//! asks the previous owner, which answers from the fill it has under way
//! (or, when the machine was slow, from its cache). Without previous-owner
//! routing, every key that moved is fetched a second time by its new owner.
//!
//! The bound asserted is exactly one fetch per key: the views are made to
//! agree before the second round, so each round has one owner per key and
//! the second round's owner reaches the first round's fill. (Requests that
//! land in the milliseconds while views disagree can cost a second fetch:
//! `benches/README.md` measures that case under continuous load.)

mod common;
use common::etcd::Etcd;
use common::origin::Origin;
use common::{eventually, free_port, Ringside};
use std::time::Duration;

/// How long the origin takes: longer than the change takes to settle.
const QUERY: &str = "cc=max-age%3D300&delay_ms=5000";
const KEYS: usize = 48;

struct Cluster {
    etcd: Etcd,
    origin: Origin,
    prefix: String,
    nodes: Vec<Ringside>,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let mut cluster = Cluster {
            etcd: Etcd::start().await,
            origin: Origin::start().await,
            prefix: format!(
                "/ringside-double-fills-{}-{}/",
                std::process::id(),
                free_port()
            ),
            nodes: Vec::new(),
        };
        for _ in 0..n {
            cluster.add().await;
        }
        cluster.wait_for_members(&cluster.all(), n).await;
        cluster
    }

    fn all(&self) -> Vec<&Ringside> {
        self.nodes.iter().collect()
    }

    /// Start one more member (it registers in etcd and joins every ring).
    async fn add(&mut self) {
        let peer = format!("127.0.0.1:{}", free_port());
        let yaml = format!(
            "origin:\n  url: {}\n  read_timeout: 10s\nshutdown_delay: 10s\n\
             cluster:\n  enabled: true\n  peer_listen: {peer}\n  secret: {}\n  \
             membership:\n    etcd: {{endpoints: [\"{}\"], prefix: \"{}\", lease_ttl: 30s}}\n",
            self.origin.url(),
            common::CLUSTER_SECRET,
            self.etcd.url(),
            self.prefix,
        );
        self.nodes.push(Ringside::start_yaml(&yaml).await);
    }

    async fn wait_for_members(&self, nodes: &[&Ringside], n: usize) {
        for node in nodes {
            eventually(Duration::from_secs(30), &format!("{n} members"), || async {
                node.metric("ringside_ring_members", &[]).await == n as f64
            })
            .await;
        }
    }

    /// Ask every node in `nodes` for every path, all at once, each
    /// answered 200; the requests run on after this returns.
    fn round(&self, nodes: &[&Ringside], paths: &[String]) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for node in nodes {
            for path in paths {
                let (addr, path) = (node.addr, path.clone());
                tasks.push(tokio::spawn(async move {
                    let r = common::get(addr, &path).await.expect("a response");
                    assert_eq!(r.status, 200, "{path} via {addr}: {}", r.text());
                }));
            }
        }
        tasks
    }

    async fn fills_under_way(&self, paths: &[String]) {
        eventually(
            Duration::from_secs(30),
            "every key's fill started",
            || async { paths.iter().all(|p| self.origin.hits(p) >= 1) },
        )
        .await;
    }

    /// After both rounds: every path was fetched from the origin once.
    fn assert_fetched_once(&self, paths: &[String], change: &str) {
        let total: u64 = paths.iter().map(|p| self.origin.hits(p)).sum();
        let per_key = total as f64 / paths.len() as f64;
        println!("{change}: {per_key:.2} origin fetches per key");
        for path in paths {
            let hits = self.origin.hits(path);
            assert_eq!(hits, 1, "{path}: fetched {hits} times across the {change}");
        }
    }
}

fn paths(prefix: &str) -> Vec<String> {
    (0..KEYS).map(|k| format!("/{prefix}{k}?{QUERY}")).collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.await.expect("a request task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_keys_are_fetched_once_while_a_member_joins() {
    let mut cluster = Cluster::start(3).await;
    let paths = paths("join");
    let first = cluster.round(&cluster.all(), &paths);
    cluster.fills_under_way(&paths).await;

    cluster.add().await;
    cluster.wait_for_members(&cluster.all(), 4).await;
    let second = cluster.round(&cluster.all(), &paths);
    finish(first).await;
    finish(second).await;
    cluster.assert_fetched_once(&paths, "join");
    let newcomer = &cluster.nodes[3];
    let asked = newcomer
        .metric("ringside_previous_owner_lookups_total", &["result=\"hit\""])
        .await;
    assert!(
        asked >= 1.0,
        "the newcomer owns some keys and asked their previous owners"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_keys_are_fetched_once_while_a_member_leaves() {
    let cluster = Cluster::start(4).await;
    let paths = paths("leave");
    let first = cluster.round(&cluster.all(), &paths);
    cluster.fills_under_way(&paths).await;

    // It leaves at once and keeps serving for its shutdown_delay (10 s).
    let leaving = cluster.nodes[2].pid();
    ringside::demo::process::sigterm(leaving).expect("SIGTERM");
    let rest: Vec<&Ringside> = [0, 1, 3].iter().map(|&i| &cluster.nodes[i]).collect();
    cluster.wait_for_members(&rest, 3).await;
    // The leaving node's own app still asks it, during its shutdown_delay.
    let second = cluster.round(&cluster.all(), &paths);
    finish(first).await;
    finish(second).await;
    cluster.assert_fetched_once(&paths, "leave");
}
