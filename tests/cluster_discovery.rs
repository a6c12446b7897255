//! End to end cluster discovery: real ringside processes find each other
//! through a real DNS server (as behind a Kubernetes headless Service) or a
//! real etcd, in front of one real origin, while clients keep asking.
//!
//! Every node listens for peers on its own loopback address (127.0.0.N)
//! with the same peer port, as pods do; app and admin listeners stay on
//! 127.0.0.1.

mod common;
use common::dns::{DnsServer, Mode, Srv};
use common::etcd::Etcd;
use common::origin::Origin;
use common::{eventually, free_port, get, Ringside, CLUSTER_SECRET};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const DNS_NAME: &str = "peers.test.";
const LEASE_TTL: Duration = Duration::from_secs(2);

/// The `cluster:` YAML for the node on 127.0.0.`n`, peer port `port`, with
/// `membership` (indented 4) as its member source. No hot mirrors: these
/// tests are about ownership.
fn discovery_yaml(n: u8, port: u16, membership: &str) -> String {
    let me = format!("127.0.0.{n}:{port}");
    format!(
        "cluster:\n  enabled: true\n  peer_listen: {me}\n  advertise: {me}\n  secret: {CLUSTER_SECRET}\n  \
         peer_timeout: 1s\n  hot: {{fraction: 0}}\n  membership:\n    {membership}\n"
    )
}

fn cacheable(key: &str) -> String {
    format!("/{key}?cc=max-age%3D60")
}

/// The raw value of the unlabelled sample `name` (e.g. a ring generation,
/// compared as text so that no digit is lost to floating point).
async fn raw_sample(node: &Ringside, name: &str) -> String {
    let text = node.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in the metrics of {}", node.addr))
        .trim()
        .to_string()
}

/// Wait until every node in `nodes` reports `ringside_ring_members` = `want`.
async fn wait_members(nodes: &[&Ringside], want: f64, within: Duration) {
    let what = format!("ringside_ring_members = {want} on every node");
    eventually(within, &what, || async {
        for node in nodes {
            if node.metric("ringside_ring_members", &[]).await != want {
                return false;
            }
        }
        true
    })
    .await;
}

/// Ring generations of `nodes`, which must all be equal.
async fn same_generation(nodes: &[&Ringside]) -> String {
    let mut gens = Vec::new();
    for node in nodes {
        gens.push(raw_sample(node, "ringside_ring_generation").await);
    }
    assert!(
        gens.windows(2).all(|w| w[0] == w[1]),
        "the nodes disagree on the ring: generations {gens:?}"
    );
    gens.pop().unwrap()
}

async fn sum_metric(nodes: &[&Ringside], name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += node.metric(name, labels).await;
    }
    sum
}

/// Clients asking `addrs` in turn for `keys`, each request on a fresh
/// connection, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered so far (200 or not).
    answered: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(addrs: &[SocketAddr], keys: &[String], clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (stop, addrs, keys) = (stop.clone(), addrs.to_vec(), keys.to_vec());
            let answered = answered.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let addr = addrs[i % addrs.len()];
                    let path = cacheable(&keys[(i / addrs.len()) % keys.len()]);
                    let answer =
                        tokio::time::timeout(Duration::from_secs(5), get(addr, &path)).await;
                    match answer {
                        Ok(Ok(r)) if r.status == 200 => ok += 1,
                        Ok(Ok(r)) => errors.push(format!("{addr}{path}: status {}", r.status)),
                        Ok(Err(e)) => errors.push(format!("{addr}{path}: {e}")),
                        Err(_) => errors.push(format!("{addr}{path}: no answer within 5s")),
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    i += clients;
                }
                (ok, errors)
            }));
        }
        Load {
            stop,
            answered,
            tasks,
        }
    }

    /// Wait until the clients got `n` more answers than they have now.
    async fn run_for(&self, n: u64) {
        let target = self.answered.load(Ordering::SeqCst) + n;
        let what = format!("{n} more client requests answered");
        eventually(Duration::from_secs(30), &what, || async {
            self.answered.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    /// Stop the clients: (requests answered 200, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ok, mut errors) = (0, Vec::new());
        for task in self.tasks {
            let (o, e) = task.await.expect("client task");
            ok += o;
            errors.extend(e);
        }
        (ok, errors)
    }
}

/// Ask every node for every key once; each must answer 200.
async fn ask_all(nodes: &[&Ringside], keys: &[String]) {
    for key in keys {
        for node in nodes {
            let r = node.get(&cacheable(key)).await;
            assert_eq!(r.status, 200, "{key} from {}", node.addr);
        }
    }
}

/// Ask every node of a 3-node cluster for `keys` (none asked before): one
/// origin fetch per key for the whole cluster, one copy of each, and the
/// non-owners answered through the owner.
async fn share_one_cache(nodes: &[&Ringside], origin: &Origin, keys: &[String]) {
    ask_all(nodes, keys).await;
    let n = keys.len() as f64;
    assert_eq!(origin.total_hits() as f64, n, "one origin fetch per key");
    assert_eq!(
        sum_metric(nodes, "ringside_cache_entries", &[]).await,
        n,
        "each object stored on exactly one node"
    );
    assert!(
        sum_metric(nodes, "ringside_requests_total", &["result=\"peer\""]).await >= 2.0 * n,
        "non-owners answered through the owner"
    );
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}{k}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_discovered_nodes_share_one_cache_and_survive_a_leave() {
    let origin = Origin::start().await;
    let ips: Vec<Ipv4Addr> = (1..=3).map(|n| Ipv4Addr::new(127, 0, 0, n)).collect();
    let dns = DnsServer::start(DNS_NAME, Mode::Answer(ips.clone(), vec![])).await;
    let port = free_port();
    let membership = format!(
        "dns: {{name: peers.test, port: {port}, interval: 200ms, nameserver: \"{}\"}}",
        dns.addr
    );
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(Ringside::start(&origin.url(), &discovery_yaml(n, port, &membership)).await);
    }
    let all: Vec<&Ringside> = nodes.iter().collect();
    wait_members(&all, 3.0, Duration::from_secs(10)).await;
    let three = same_generation(&all).await;

    let warm = keys("dns", 20);
    share_one_cache(&all, &origin, &warm).await;

    // Node 3 leaves: first its record goes, then the process, while
    // clients keep asking nodes 1 and 2 for every key.
    let load = Load::start(&[nodes[0].addr, nodes[1].addr], &warm, 4);
    load.run_for(20).await;
    dns.set_a(&ips[..2]);
    let mut leaving = nodes.pop().unwrap();
    let stopped = tokio::spawn(async move {
        let took = leaving.terminate().await;
        (leaving, took)
    });
    let survivors: Vec<&Ringside> = nodes.iter().collect();
    wait_members(&survivors, 2.0, Duration::from_secs(10)).await;
    let (leaving, took) = stopped.await.expect("terminate");
    assert!(took.is_some(), "node 3 did not exit on SIGTERM");
    drop(leaving);
    load.run_for(20).await;
    let (ok, errors) = load.finish().await;
    assert!(
        errors.is_empty(),
        "{} client errors during the leave (of {}): {:?}",
        errors.len(),
        ok + errors.len() as u64,
        &errors[..errors.len().min(10)]
    );
    assert!(ok > 20, "the clients barely ran: {ok} requests");
    eprintln!("leave: {ok} client requests, all 200");

    for node in &survivors {
        let changes = node.metric("ringside_membership_changes_total", &[]).await;
        assert!(
            changes >= 1.0,
            "{}: {changes} membership changes",
            node.addr
        );
    }
    let two = same_generation(&survivors).await;
    assert_ne!(two, three, "the ring generation did not change");
    // After the change every key is still served, by one owner each.
    ask_all(&survivors, &warm).await;
    ask_all(&survivors, &keys("after", 10)).await;
}

/// SRV records give each member a port of its own, so the nodes here all
/// listen on 127.0.0.1 (as Consul agents advertise services on one host).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn srv_discovered_nodes_on_ports_of_their_own_share_one_cache() {
    let origin = Origin::start().await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let records = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Srv::new(
                &format!("node-{i}.node.dc1.consul."),
                *port,
                1,
                Ipv4Addr::LOCALHOST,
            )
        })
        .collect();
    let name = "catalog.service.consul.";
    let dns = DnsServer::start(
        name,
        Mode::Srv {
            records,
            glue: true,
        },
    )
    .await;
    let membership = format!(
        "dns: {{name: {name}, srv: true, interval: 200ms, nameserver: \"{}\"}}",
        dns.addr
    );
    let mut nodes = Vec::new();
    for port in &ports {
        nodes.push(Ringside::start(&origin.url(), &discovery_yaml(1, *port, &membership)).await);
    }
    let all: Vec<&Ringside> = nodes.iter().collect();
    wait_members(&all, 3.0, Duration::from_secs(10)).await;
    same_generation(&all).await;

    share_one_cache(&all, &origin, &keys("srv", 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_discovered_nodes_survive_a_crash_and_take_in_a_newcomer() {
    let etcd = Etcd::start().await;
    let origin = Origin::start().await;
    let port = free_port();
    let prefix = format!(
        "/ringside/test-{:x}/",
        RandomState::new().hash_one(std::process::id())
    );
    let membership = format!(
        "etcd: {{endpoints: [\"{}\"], prefix: \"{prefix}\", lease_ttl: 2s}}",
        etcd.url()
    );
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(Ringside::start(&origin.url(), &discovery_yaml(n, port, &membership)).await);
    }
    let all: Vec<&Ringside> = nodes.iter().collect();
    wait_members(&all, 3.0, Duration::from_secs(10)).await;
    same_generation(&all).await;
    assert_eq!(etcd.keys(&prefix).await.len(), 3);
    let warm = keys("etcd", 20);
    ask_all(&all, &warm).await;
    assert_eq!(origin.total_hits(), 20, "one origin fetch per key");

    // Node 3 crashes under load on the other two.
    let load = Load::start(&[nodes[0].addr, nodes[1].addr], &warm, 4);
    load.run_for(20).await;
    let mut crashed = nodes.pop().unwrap();
    let died = Instant::now();
    crashed.kill();
    let survivors: Vec<&Ringside> = nodes.iter().collect();
    wait_members(&survivors, 2.0, LEASE_TTL + Duration::from_secs(4)).await;
    let took = died.elapsed();
    load.run_for(20).await;
    let (ok, errors) = load.finish().await;
    assert!(
        errors.is_empty(),
        "{} client errors after the crash (of {}): {:?}",
        errors.len(),
        ok + errors.len() as u64,
        &errors[..errors.len().min(10)]
    );
    assert!(ok > 20, "the clients barely ran: {ok} requests");
    eprintln!("crash: {ok} client requests, all 200; survivors saw 2 members after {took:?}");
    assert!(
        took >= Duration::from_millis(500),
        "node 3 left after {took:?}: sooner than its lease could expire"
    );
    same_generation(&survivors).await;
    drop(crashed);

    // A newcomer on 127.0.0.4 joins: everyone sees 3 members again, and it
    // owns, and serves to its peers, a share of the keys.
    let newcomer = Ringside::start(&origin.url(), &discovery_yaml(4, port, &membership)).await;
    let all: Vec<&Ringside> = vec![&nodes[0], &nodes[1], &newcomer];
    wait_members(&all, 3.0, Duration::from_secs(10)).await;
    same_generation(&all).await;
    let fresh = keys("joined", 30);
    for key in &fresh {
        for node in &nodes {
            let r = node.get(&cacheable(key)).await;
            assert_eq!(r.status, 200, "{key} from {}", node.addr);
        }
    }
    let served = newcomer.metric("ringside_peer_served_total", &[]).await;
    assert!(served > 0.0, "the newcomer answered no peer request");
    let to_newcomer = format!("peer=\"127.0.0.4:{port}\"");
    let sent = sum_metric(
        &[&nodes[0], &nodes[1]],
        "ringside_peer_requests_total",
        &[&to_newcomer, "outcome=\"ok\""],
    )
    .await;
    assert!(sent > 0.0, "no node sent a request to the newcomer");
    assert!(
        newcomer.metric("ringside_cache_entries", &[]).await > 0.0,
        "the newcomer stores none of the keys it owns"
    );
}
