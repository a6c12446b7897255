//! Shared test harness: a real origin ([`origin::Origin`]), real ringside
//! processes ([`Ringside`]) and a real HTTP/1.1 client (the demo's).
//!
//! Every server listens on 127.0.0.1 with a port picked free by the OS, and
//! is stopped when its handle drops.
#![allow(dead_code)]

pub mod channel;
pub mod dns;
pub mod etcd;
pub mod origin;
pub mod pki;
pub mod process;
pub mod raw;

use process::Process;
pub use ringside::demo::client::{get, Conn, Response};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// A port free right now, for a server a test is about to start.
///
/// Picked at random below Linux's ephemeral range (32768 and up), so that no
/// outgoing connection of a process under test can take it before its server
/// binds it, and never handed out twice by one test binary (tests run in
/// parallel threads, and a cluster's ports are chosen before any node binds).
pub fn free_port() -> u16 {
    use parking_lot::Mutex;
    use std::collections::hash_map::RandomState;
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let random = RandomState::new();
    for attempt in 0u64.. {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        let mut given = GIVEN.lock();
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(attempt < 10_000, "no free port");
            continue;
        }
        given.insert(port);
        return port;
    }
    unreachable!()
}

/// A running ringside process.
pub struct Ringside {
    process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Ringside {
    /// Start ringside in front of `origin_url`; `extra` is YAML appended at
    /// the top level (e.g. a `cache:` section).
    pub async fn start(origin_url: &str, extra: &str) -> Ringside {
        let origin =
            format!("origin:\n  url: {origin_url}\n  connect_timeout: 1s\n  read_timeout: 2s\n");
        Ringside::start_yaml(&format!("{origin}{extra}")).await
    }

    /// Start ringside with `yaml` plus generated listen addresses.
    pub async fn start_yaml(yaml: &str) -> Ringside {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("ringside-test-{}.yaml", addr.port()));
        let log_path = dir.join(format!("ringside-test-{}.log", addr.port()));
        let config = format!(
            "listen: {addr}\nadmin_listen: {admin}\nthreads: 2\nshutdown_grace: 5s\nlog_level: info\n{yaml}"
        );
        std::fs::write(&config_path, config).expect("write config");
        let _ = std::fs::remove_file(&log_path);
        let process = spawn(&config_path, &log_path);
        let mut ringside = Ringside {
            process,
            addr,
            admin,
            config_path,
            log_path,
        };
        ringside.wait_ready().await;
        ringside
    }

    async fn wait_ready(&mut self) {
        let admin = self.admin;
        let ready =
            || async move { matches!(get(admin, "/readyz").await, Ok(r) if r.status == 200) };
        let within = Duration::from_secs(30);
        self.process
            .wait_until(within, "ringside is ready", ready)
            .await;
    }

    /// The config file this process was started with.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The peer listener (`cluster.peer_listen`), when clustered.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.config_text()
            .lines()
            .find_map(|l| l.trim().strip_prefix("peer_listen: "))
            .and_then(|a| a.trim().parse().ok())
    }

    /// SIGKILL the process (no graceful shutdown) and reap it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start a new process from the same config file: same listen, admin
    /// and peer addresses, empty cache. Kills the running one first, if any.
    pub async fn restart(&mut self) {
        self.kill();
        self.process = spawn(&self.config_path, &self.log_path);
        self.wait_ready().await;
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// GET `path` from the app-facing listener on a fresh connection.
    pub async fn get(&self, path: &str) -> Response {
        get(self.addr, path).await.expect("request to ringside")
    }

    /// A request with headers, on a fresh connection.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut conn = Conn::connect(self.addr).await.expect("connect to ringside");
        conn.request(method, path, headers)
            .await
            .expect("request to ringside")
    }

    /// The admin listener's /metrics text.
    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.expect("metrics").text()
    }

    /// Sum of every sample of `name` whose labels contain all of `labels`
    /// (each like `result="hit"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Send SIGTERM and wait for the exit (failing the test after 30 s);
    /// returns how long it took, or None when no process was running.
    pub async fn terminate(&mut self) -> Option<Duration> {
        self.process.terminate(Duration::from_secs(30)).await
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

impl Drop for Ringside {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A directory of its own under the system's temp dir, removed with all it
/// holds when dropped (a test's files never outlive it).
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `ringside-{what}-{pid}-{n}`, created empty.
    pub fn new(what: &str) -> ScratchDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("ringside-{what}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run ringside on `config_path`, appending its output to `log_path`.
fn spawn(config_path: &Path, log_path: &Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringside"));
    command.arg("--config").arg(config_path);
    Process::spawn("ringside", command, log_path)
}

/// Sum the samples of `name` (exact metric name, no suffix) matching `labels`.
pub use ringside::demo::prometheus::sum as metric_sum;

pub const CLUSTER_SECRET: &str = "test-secret-0123456789";

/// The purge token of nodes started with [`cluster_yaml`].
pub const ADMIN_TOKEN: &str = "test-admin-token-42";

/// The `cluster:` YAML for a node whose peer listener is `me`, in a static
/// cluster of `members` (preceded by `admin_token: ADMIN_TOKEN`).
pub fn cluster_yaml(me: &str, members: &[String], extra: &str) -> String {
    let list = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "admin_token: {ADMIN_TOKEN}\ncluster:\n  enabled: true\n  peer_listen: {me}\n  secret: {CLUSTER_SECRET}\n  peer_timeout: 1s\n  membership:\n    static: [{list}]\n{extra}"
    )
}

/// Start `n` ringside nodes in one static cluster in front of `origin_url`.
/// `extra` is appended inside each node's `cluster:` section (indented 2).
pub async fn start_cluster(origin_url: &str, n: usize, extra: &str) -> Vec<Ringside> {
    let peers: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut nodes = Vec::new();
    for me in &peers {
        let yaml = cluster_yaml(me, &peers, extra);
        nodes.push(Ringside::start(origin_url, &yaml).await);
    }
    nodes
}

/// The addresses on a membership channel, in order.
pub fn member_addrs(
    rx: &tokio::sync::watch::Receiver<Vec<ringside::membership::Member>>,
) -> Vec<String> {
    rx.borrow().iter().map(|m| m.addr.clone()).collect()
}

/// Wait until the published list's addresses are `want` (sorted), or fail
/// showing the last list seen.
pub async fn wait_for_members(
    rx: &mut tokio::sync::watch::Receiver<Vec<ringside::membership::Member>>,
    want: &[&str],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        if member_addrs(rx) == want {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!(
                "members still {:?} after {within:?}, expected {want:?}",
                member_addrs(rx)
            );
        }
    }
}

/// The member that owns `path` (as an app asks for it, query included) in
/// the ring node `me` builds from `members` (default hash_key and vnodes).
pub fn owner_of(me: &str, members: &[String], origin_url: &str, path: &str) -> String {
    use ringside::membership::{self, Member};
    let list = members.iter().map(|m| Member::new(m.clone(), 1)).collect();
    let members = membership::normalize(list, &Member::new(me, 1));
    let ring = ringside::ring::Ring::new(members, "ringside", 512);
    let key = format!(
        "{}{path}",
        ringside::config::OriginUrl::parse(origin_url)
            .expect("origin url")
            .key_prefix()
    );
    ring.owner(&key).expect("a member").addr.clone()
}

/// The peer listeners of clustered nodes, in order.
pub fn peer_addrs(nodes: &[Ringside]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.peer_addr().expect("a peer listener").to_string())
        .collect()
}

/// The first `n` paths `{prefix}{k}?{query}` (k = 0, 1, ...) that `owner`
/// owns in the static cluster of `members`.
pub fn paths_owned_by(
    owner: &str,
    members: &[String],
    origin_url: &str,
    prefix: &str,
    query: &str,
    n: usize,
) -> Vec<String> {
    (0..)
        .map(|k| format!("{prefix}{k}?{query}"))
        .filter(|path| owner_of(owner, members, origin_url, path) == owner)
        .take(n)
        .collect()
}

/// The response's `Cache-Status` ("" when it has none).
pub fn cache_status(r: &Response) -> &str {
    r.header("cache-status").unwrap_or_default()
}

/// Whether ringside answered from its cache (`ringside; hit...`).
pub fn is_hit(r: &Response) -> bool {
    cache_status(r).starts_with("ringside; hit")
}

/// Poll `condition` until it holds, or fail after `within` naming `what`.
/// Tests wait on the state they expect, never on the clock.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
