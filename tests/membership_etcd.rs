//! etcd membership against a real etcd (Debian's `etcd-server`, binary
//! `etcd`), started per test on free 127.0.0.1 ports with its own data
//! directory, and killed by PID when the test's handle drops.
//!
//! Without `etcd` on the PATH these tests fail, saying how to install it:
//! CI installs it (`.ci/run`), and a silently skipped test would hide that
//! etcd membership went untested.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ringside::config::{ClusterConfig, EtcdMembership, MembershipConfig};
use ringside::membership::{start, Member};
use serde_json::{json, Value};
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const PREFIX: &str = "/ringside/members/";

fn logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// This machine's arch as Go (and so etcd) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A real etcd on 127.0.0.1. Dropping it kills the process and removes its files.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    generation: u32,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    async fn start() -> Etcd {
        match Command::new("etcd").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "`etcd --version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!(
                "etcd is needed for the etcd membership tests but could not be run ({e}). \
                 Install it: `apt-get install -y etcd-server` (Debian/Ubuntu; .ci/run does this). \
                 (On arches other than amd64 these tests set ETCD_UNSUPPORTED_ARCH for it.)"
            ),
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringside-etcd-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let mut etcd = Etcd {
            child: None,
            dir,
            generation: 0,
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join(format!("data-{}", self.generation))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    async fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut etcd = Command::new("etcd");
        if go_arch() != "amd64" {
            // etcd 3.4 refuses to run on an arch it does not list as
            // supported (arm64 among them) unless this names that arch.
            etcd.env("ETCD_UNSUPPORTED_ARCH", go_arch());
        }
        let child = etcd
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) =
                post(self.client_port, "/v3/kv/range", &json!({"key": "AA=="})).await
            {
                return;
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "etcd did not come up on {} within 30s; its log ends:\n{tail}",
                    self.url()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill the process (SIGKILL, by PID) and reap it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same ports, with the same data.
    async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Start again on the same ports with an empty data directory, as if
    /// etcd had lost everything.
    async fn restart_empty(&mut self) {
        self.stop();
        self.generation += 1;
        self.spawn().await;
    }

    async fn put(&self, key: &str, value: &str) {
        let (status, body) = post(
            self.client_port,
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )
        .await
        .expect("put");
        assert_eq!(status, 200, "put {key}: {body}");
    }

    async fn delete(&self, key: &str) {
        let (status, body) = post(
            self.client_port,
            "/v3/kv/deleterange",
            &json!({"key": B64.encode(key)}),
        )
        .await
        .expect("delete");
        assert_eq!(status, 200, "delete {key}: {body}");
    }

    /// Keys under PREFIX, as etcd has them.
    async fn keys(&self) -> Vec<String> {
        let (status, body) = post(
            self.client_port,
            "/v3/kv/range",
            &json!({"key": B64.encode(PREFIX), "range_end": B64.encode("/ringside/members0"), "keys_only": true}),
        )
        .await
        .expect("range");
        assert_eq!(status, 200, "range: {body}");
        let mut keys: Vec<String> = body
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|kv| kv.get("key")?.as_str().map(str::to_string))
            .filter_map(|k| String::from_utf8(B64.decode(k).ok()?).ok())
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One JSON POST to etcd's gateway: (status, body). The test's own client,
/// so that the code under test is not checking itself.
async fn post(port: u16, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    // Unary answers carry a Content-Length; find the JSON either way.
    let json_start = body.find('{').unwrap_or(0);
    let value = serde_json::Deserializer::from_str(&body[json_start..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or(Value::Null);
    Ok((status, value))
}

fn cluster(advertise: &str, endpoints: Vec<String>, lease_ttl: Duration) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        peer_listen: "127.0.0.1:7070".into(),
        advertise: advertise.into(),
        membership: MembershipConfig {
            etcd: Some(EtcdMembership {
                endpoints,
                prefix: PREFIX.into(),
                lease_ttl,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn addrs(rx: &watch::Receiver<Vec<Member>>) -> Vec<String> {
    rx.borrow().iter().map(|m| m.addr.clone()).collect()
}

async fn wait_for(rx: &mut watch::Receiver<Vec<Member>>, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if addrs(rx) == want {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!(
                "members still {:?} after {within:?}, expected {want:?}",
                addrs(rx)
            );
        }
    }
}

const A: &str = "127.0.3.1:7070";
const B: &str = "127.0.3.2:7070";
const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_other_and_a_dead_nodes_lease_expires() {
    logs();
    let etcd = Etcd::start().await;
    // A's first endpoint has nothing behind it: it must move on to the next.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut rx_a = start(&cluster(A, vec![dead, etcd.url()], TTL))
        .await
        .expect("start A");
    // B runs on a runtime of its own, shut down below as a crash would stop it:
    // its task is dropped mid-flight and nobody renews its lease any more.
    let runtime_b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime for B");
    let config_b = cluster(B, vec![etcd.url()], TTL);
    let mut rx_b = runtime_b
        .spawn(async move { start(&config_b).await })
        .await
        .expect("B's start task")
        .expect("start B");

    wait_for(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    wait_for(&mut rx_b, &[A, B], Duration::from_secs(10)).await;
    assert_eq!(
        etcd.keys().await,
        vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")]
    );

    // Well past the TTL, both are still there: the leases are being renewed.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(addrs(&rx_a), [A, B]);

    let died = Instant::now();
    runtime_b.shutdown_background();
    wait_for(&mut rx_a, &[A], TTL + Duration::from_secs(4)).await;
    let took = died.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "B left after {took:?}: sooner than its lease could expire"
    );
    assert_eq!(etcd.keys().await, vec![format!("{PREFIX}{A}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_deregisters_at_once() {
    logs();
    let etcd = Etcd::start().await;
    // A long lease: leaving through expiry would take 30 s.
    let ttl = Duration::from_secs(30);
    let mut rx_a = start(&cluster(A, vec![etcd.url()], ttl))
        .await
        .expect("start A");
    let rx_b = start(&cluster(B, vec![etcd.url()], ttl))
        .await
        .expect("start B");
    wait_for(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    drop(rx_b);
    wait_for(&mut rx_a, &[A], Duration::from_secs(5)).await;
    assert_eq!(etcd.keys().await, vec![format!("{PREFIX}{A}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_written_by_others_are_read_with_their_weights() {
    logs();
    let etcd = Etcd::start().await;
    // Written before the node starts (seen by the listing) ...
    etcd.put(
        &format!("{PREFIX}127.0.3.7:7070"),
        r#"{"addr":"127.0.3.7:7070","weight":3}"#,
    )
    .await;
    etcd.put("/elsewhere/127.0.3.99:7070", "127.0.3.99:7070")
        .await;
    let mut rx = start(&cluster(A, vec![etcd.url()], TTL))
        .await
        .expect("start A");
    wait_for(&mut rx, &[A, "127.0.3.7:7070"], Duration::from_secs(10)).await;
    assert_eq!(
        rx.borrow().clone(),
        vec![Member::new(A, 1), Member::new("127.0.3.7:7070", 3)]
    );
    // ... and after (seen by the watch): a bare address as the value.
    etcd.put(&format!("{PREFIX}127.0.3.8:7070"), "127.0.3.8:7070")
        .await;
    wait_for(
        &mut rx,
        &[A, "127.0.3.7:7070", "127.0.3.8:7070"],
        Duration::from_secs(5),
    )
    .await;
    etcd.delete(&format!("{PREFIX}127.0.3.7:7070")).await;
    wait_for(&mut rx, &[A, "127.0.3.8:7070"], Duration::from_secs(5)).await;

    // Someone deletes this node's own key: it puts it back.
    etcd.delete(&format!("{PREFIX}{A}")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !etcd.keys().await.contains(&format!("{PREFIX}{A}")) {
        assert!(Instant::now() < deadline, "A did not put its key back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_keeps_the_list_and_the_watch_recovers() {
    logs();
    let mut etcd = Etcd::start().await;
    let mut rx_a = start(&cluster(A, vec![etcd.url()], TTL))
        .await
        .expect("start A");
    let mut rx_b = start(&cluster(B, vec![etcd.url()], TTL))
        .await
        .expect("start B");
    wait_for(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    wait_for(&mut rx_b, &[A, B], Duration::from_secs(10)).await;

    // etcd goes away for longer than the lease TTL: nothing changes meanwhile.
    etcd.stop();
    rx_a.mark_unchanged();
    rx_b.mark_unchanged();
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        !rx_a.has_changed().unwrap(),
        "A's list changed while etcd was down"
    );
    assert!(
        !rx_b.has_changed().unwrap(),
        "B's list changed while etcd was down"
    );
    assert_eq!(addrs(&rx_a), [A, B]);

    etcd.restart().await;
    // Both are registered again (their leases survived, or were re-granted)...
    let deadline = Instant::now() + Duration::from_secs(15);
    while etcd.keys().await != vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")] {
        assert!(
            Instant::now() < deadline,
            "registrations after the restart: {:?}",
            etcd.keys().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and both follow changes again.
    let c = "127.0.3.3:7070";
    etcd.put(&format!("{PREFIX}{c}"), c).await;
    wait_for(&mut rx_a, &[A, B, c], Duration::from_secs(15)).await;
    wait_for(&mut rx_b, &[A, B, c], Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_again_when_etcd_loses_its_data() {
    logs();
    let mut etcd = Etcd::start().await;
    let mut rx_a = start(&cluster(A, vec![etcd.url()], TTL))
        .await
        .expect("start A");
    let mut rx_b = start(&cluster(B, vec![etcd.url()], TTL))
        .await
        .expect("start B");
    wait_for(&mut rx_a, &[A, B], Duration::from_secs(10)).await;

    // A brand-new etcd on the same address: the old leases do not exist there.
    etcd.restart_empty().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while etcd.keys().await != vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")] {
        assert!(
            Instant::now() < deadline,
            "registrations in the new etcd: {:?}",
            etcd.keys().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&mut rx_a, &[A, B], Duration::from_secs(10)).await;
    wait_for(&mut rx_b, &[A, B], Duration::from_secs(10)).await;
    // The new registrations live on leases that are renewed.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        etcd.keys().await,
        vec![format!("{PREFIX}{A}"), format!("{PREFIX}{B}")]
    );
}
