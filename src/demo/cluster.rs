//! A set of local ringside nodes in front of one origin: either one cluster
//! (static membership of their peer listeners, a shared random secret) or
//! the same number of independent caches (cluster disabled).
//!
//! Each node gets its own YAML config in a private temporary directory that
//! is removed when the [`Nodes`] are dropped; every node is a child process
//! stopped by PID. For the cluster benchmarks a node can be restarted on its
//! own config ([`Nodes::restart`]), and with etcd membership one can be
//! added ([`Nodes::add`]).

use super::process::{free_ports, ports_from, RingsideProcess};
use super::report::RingsideView;
use super::{client, report};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How the nodes are set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Share one cache on a consistent-hash ring, or run as independent caches.
    pub clustered: bool,
    /// `cache.capacity` of each node, e.g. `64MiB`.
    pub capacity: String,
    /// `cache.max_object_size` of each node (at most `capacity`).
    pub max_object_size: String,
    /// `cluster.hot.fraction` (0 disables local mirrors of others' keys).
    pub hot_fraction: f64,
    /// `cluster.hot.min_rate`.
    pub hot_min_rate: f64,
    /// Proxy worker threads per node.
    pub threads: u32,
    /// Where the members come from.
    pub membership: Membership,
    /// Handoff at SIGTERM and previous-owner lookups (`cluster.handoff`,
    /// `cluster.previous_owner_window`): on (the defaults) or off.
    pub handoff: bool,
    /// `shutdown_delay`: how long a node serves on after SIGTERM.
    pub shutdown_delay: Duration,
    /// The nodes' ports, from this one on (app-facing ports first, then
    /// admin, then peer); None: free ports the OS picks.
    pub base_port: Option<u16>,
}

/// The membership source of a cluster's nodes.
#[derive(Debug, Clone)]
pub enum Membership {
    /// The list of every node's peer listener.
    Static,
    /// Registration under `prefix` of the etcd at `endpoint`.
    Etcd { endpoint: String, prefix: String },
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            clustered: true,
            capacity: "64MiB".into(),
            max_object_size: "1MiB".into(),
            hot_fraction: 0.1,
            hot_min_rate: 1.0,
            threads: 2,
            membership: Membership::Static,
            handoff: true,
            shutdown_delay: Duration::ZERO,
            base_port: None,
        }
    }
}

/// Running ringside nodes and the directory holding their configs.
pub struct Nodes {
    pub nodes: Vec<RingsideProcess>,
    dir: PathBuf,
    /// Each node's config file, in node order.
    configs: Vec<PathBuf>,
    exe: PathBuf,
    origin: SocketAddr,
    options: NodeOptions,
    secret: String,
}

impl Nodes {
    /// Start `n` nodes of `exe` in front of `origin`, and wait until all are ready.
    pub async fn start(
        exe: &Path,
        origin: SocketAddr,
        n: usize,
        options: &NodeOptions,
    ) -> Result<Nodes, String> {
        let mut nodes = Nodes {
            nodes: Vec::new(),
            dir: private_temp_dir()?,
            configs: Vec::new(),
            exe: exe.to_owned(),
            origin,
            options: options.clone(),
            secret: random_secret()?,
        };
        // Three ports a node: app-facing, admin, peer.
        let ports = match options.base_port {
            Some(base) => ports_from(base, 3 * n),
            None => free_ports(3 * n)?,
        };
        let peers: Vec<SocketAddr> = ports[2 * n..].to_vec();
        for i in 0..n {
            let (proxy, admin) = (ports[i], ports[n + i]);
            println!(
                "  node {}: app http://{proxy}, admin http://{admin}, peers {}",
                i + 1,
                peers[i]
            );
            nodes.launch(proxy, admin, peers[i], &peers)?;
        }
        for node in &mut nodes.nodes {
            node.wait_until_ready().await?;
        }
        if options.clustered {
            nodes.wait_for_ring(n).await?;
        }
        Ok(nodes)
    }

    /// Write the next node's config and start it (not waiting for it).
    fn launch(
        &mut self,
        proxy: SocketAddr,
        admin: SocketAddr,
        peer: SocketAddr,
        peers: &[SocketAddr],
    ) -> Result<(), String> {
        let options = &self.options;
        let mut yaml = node_yaml(proxy, admin, self.origin, options);
        if options.clustered {
            yaml.push_str(&cluster_yaml(peer, peers, &self.secret, options));
        }
        // Node numbers are never reused (a replaced node's file stays).
        let number = (self.nodes.len() + 1..)
            .find(|n| !self.dir.join(format!("node-{n}.yaml")).exists())
            .expect("a free number");
        let path = self.dir.join(format!("node-{number}.yaml"));
        write_private(&path, &yaml)?;
        let name = format!("node {number}");
        let node = RingsideProcess::start(&name, &self.exe, &path, proxy, admin)?;
        self.nodes.push(node);
        self.configs.push(path);
        Ok(())
    }

    /// Stop node `i` (SIGTERM, waiting for the exit) and start a new process
    /// on the same config (same addresses, an empty cache); ready when this
    /// returns.
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        node.signal_stop();
        node.wait_stopped().await?;
        let (name, proxy, admin) = (node.name.clone(), node.proxy_addr, node.admin_addr);
        *node = RingsideProcess::start(&name, &self.exe, &self.configs[i], proxy, admin)?;
        node.wait_until_ready().await
    }

    /// SIGKILL node `i` (no leaving, no handoff) and start a new process on
    /// the same config; ready when this returns.
    pub async fn kill_and_restart(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        node.kill();
        let (name, proxy, admin) = (node.name.clone(), node.proxy_addr, node.admin_addr);
        *node = RingsideProcess::start(&name, &self.exe, &self.configs[i], proxy, admin)?;
        node.wait_until_ready().await
    }

    /// Start one more node (etcd membership: it registers and joins); ready
    /// when this returns.
    pub async fn add(&mut self) -> Result<(), String> {
        if !matches!(self.options.membership, Membership::Etcd { .. }) {
            return Err("only a cluster with etcd membership can grow".into());
        }
        let ports = free_ports(3)?;
        self.launch(ports[0], ports[1], ports[2], &[])?;
        let node = self.nodes.last_mut().expect("just launched");
        node.wait_until_ready().await
    }

    /// Stop node `i` (SIGTERM, waiting for the exit) and start a new process
    /// in its place on new addresses, as a Kubernetes pod comes back with a
    /// new IP (etcd membership: the new one registers, the old one's lease
    /// is revoked); ready when this returns.
    pub async fn replace(&mut self, i: usize) -> Result<(), String> {
        if !matches!(self.options.membership, Membership::Etcd { .. }) {
            return Err("only a cluster with etcd membership can move a node".into());
        }
        let node = &mut self.nodes[i];
        node.signal_stop();
        node.wait_stopped().await?;
        let ports = free_ports(3)?;
        self.launch(ports[0], ports[1], ports[2], &[])?;
        let node = self.nodes.pop().expect("just launched");
        let config = self.configs.pop().expect("just launched");
        (self.nodes[i], self.configs[i]) = (node, config);
        self.nodes[i].wait_until_ready().await
    }

    /// SIGTERM node `i` without waiting (it leaves, hands over, drains);
    /// [`RingsideProcess::wait_stopped`] on it waits for the exit.
    pub fn signal_stop(&mut self, i: usize) {
        self.nodes[i].signal_stop();
    }

    /// The app-facing addresses, in node order.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.proxy_addr).collect()
    }

    /// Each node's `/metrics`, now.
    pub async fn metrics(&self) -> Result<Vec<RingsideView>, String> {
        let mut views = Vec::new();
        for node in &self.nodes {
            views.push(fetch_metrics(node).await?);
        }
        Ok(views)
    }

    /// Each node's `/metrics`, once together they have counted `requests`
    /// client requests (the last few are counted just after their
    /// responses); after a second, take whatever they say.
    pub async fn settled_metrics(&self, requests: u64) -> Result<Vec<RingsideView>, String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let views = self.metrics().await?;
            let total: u64 = views.iter().map(RingsideView::total).sum();
            if total >= requests || Instant::now() > deadline {
                return Ok(views);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The CPU time the nodes have used so far, all together; None where
    /// it cannot be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.nodes.iter().map(RingsideProcess::cpu_time).sum()
    }

    /// SIGTERM every node at once, then wait for each; all problems in one message.
    pub async fn stop(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            node.signal_stop();
        }
        let mut problems = Vec::new();
        for node in &mut self.nodes {
            if let Err(e) = node.wait_stopped().await {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Print what the nodes printed (warnings and errors only).
    pub fn print_logs(&self) {
        for node in &self.nodes {
            node.print_log();
        }
    }

    /// Wait until every node but those in `except` sees `n` members on its ring.
    pub async fn wait_for_ring_except(&self, n: usize, except: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let nodes = (self.nodes.iter().enumerate()).filter(|(i, _)| !except.contains(i));
        for (_, node) in nodes {
            loop {
                let members = fetch_metrics(node).await?.ring_members;
                if members == n as u64 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} sees {members} ring members, not {n}, after 10 s",
                        node.name
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Wait until every node sees all `n` members on its ring.
    pub async fn wait_for_ring(&self, n: usize) -> Result<(), String> {
        self.wait_for_ring_except(n, &[]).await
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // The processes themselves are killed by their own Drop.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fetch_metrics(node: &RingsideProcess) -> Result<RingsideView, String> {
    let fetch = client::get(node.admin_addr, "/metrics");
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| format!("{}'s /metrics did not answer in time", node.name))?
        .map_err(|e| format!("cannot read {}'s /metrics: {e}", node.name))?;
    if response.status != 200 {
        return Err(format!(
            "{}'s /metrics answered {}",
            node.name, response.status
        ));
    }
    Ok(report::RingsideView::parse(&response.text()))
}

/// The settings every node has, clustered or not.
fn node_yaml(
    proxy: SocketAddr,
    admin: SocketAddr,
    origin: SocketAddr,
    options: &NodeOptions,
) -> String {
    format!(
        "listen: {proxy}\nadmin_listen: {admin}\nthreads: {}\nshutdown_grace: 5s\nlog_level: warn\n\
         shutdown_delay: {}ms\n\
         origin:\n  url: http://{origin}\n\
         cache:\n  capacity: {}\n  max_object_size: {}\n",
        options.threads,
        options.shutdown_delay.as_millis(),
        options.capacity,
        options.max_object_size
    )
}

/// The `cluster:` section of the node whose peer listener is `me`.
fn cluster_yaml(
    me: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    options: &NodeOptions,
) -> String {
    let membership = match &options.membership {
        Membership::Static => {
            let members = peers
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            format!("static: [{members}]")
        }
        Membership::Etcd { endpoint, prefix } => {
            format!("etcd: {{endpoints: [\"{endpoint}\"], prefix: \"{prefix}\"}}")
        }
    };
    let off = "  handoff: {max_bytes: 0}\n  previous_owner_window: 0s\n";
    format!(
        "cluster:\n  enabled: true\n  peer_listen: {me}\n  secret: \"{secret}\"\n  peer_timeout: 1s\n\
         \x20 hot:\n    fraction: {}\n    min_rate: {}\n\
         \x20 membership:\n    {membership}\n{}",
        options.hot_fraction,
        options.hot_min_rate,
        if options.handoff { "" } else { off }
    )
}

/// 32 hex digits from the operating system's random source.
fn random_secret() -> Result<String, String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the operating system gave no random bytes for the peer secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new directory only this user can read (the configs hold the secret).
fn private_temp_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("ringside-demo-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_and_differ() {
        let (a, b) = (random_secret().unwrap(), random_secret().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn cluster_yaml_lists_every_peer() {
        let peers: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let yaml = cluster_yaml(peers[0], &peers, "s", &NodeOptions::default());
        assert!(yaml.contains("peer_listen: 127.0.0.1:1\n"), "{yaml}");
        assert!(
            yaml.contains("static: [\"127.0.0.1:1\", \"127.0.0.1:2\"]"),
            "{yaml}"
        );
        assert!(yaml.contains("  hot:\n    fraction: 0.1\n"), "{yaml}");
    }
}
