//! A real etcd (Debian's `etcd-server`, binary `etcd`) for the tests, on
//! free 127.0.0.1 ports with its own data directory, killed by PID when its
//! handle drops.
//!
//! Without `etcd` on the PATH [`Etcd::start`] fails the test, saying how to
//! install it: CI installs it (`.ci/run`), and a silently skipped test would
//! hide that etcd membership went untested.

use super::process::Process;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
pub struct Etcd {
    process: Option<Process>,
    dir: PathBuf,
    generation: u32,
    pub client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub async fn start() -> Etcd {
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
            process: None,
            dir,
            generation: 0,
            client_port: super::free_port(),
            peer_port: super::free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join(format!("data-{}", self.generation))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut etcd = Command::new("etcd");
        if go_arch() != "amd64" {
            // etcd 3.4 refuses to run on an arch it does not list as
            // supported (arm64 among them) unless this names that arch.
            etcd.env("ETCD_UNSUPPORTED_ARCH", go_arch());
        }
        etcd.arg("--data-dir")
            .arg(self.data_dir())
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")]);
        let process = self
            .process
            .insert(Process::spawn("etcd", etcd, &self.log_path()));
        let port = self.client_port;
        let ready = || async move {
            let health = post(port, "/v3/kv/range", &json!({"key": "AA=="})).await;
            matches!(health, Ok((200, _)))
        };
        let what = format!("etcd answers on {client}");
        process
            .wait_until(Duration::from_secs(30), &what, ready)
            .await;
    }

    /// Kill the process (SIGKILL, by PID) and reap it.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Start again on the same ports, with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Start again on the same ports with an empty data directory, as if
    /// etcd had lost everything.
    pub async fn restart_empty(&mut self) {
        self.stop();
        self.generation += 1;
        self.spawn().await;
    }

    pub async fn put(&self, key: &str, value: &str) {
        let (status, body) = post(
            self.client_port,
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )
        .await
        .expect("put");
        assert_eq!(status, 200, "put {key}: {body}");
    }

    pub async fn delete(&self, key: &str) {
        let (status, body) = post(
            self.client_port,
            "/v3/kv/deleterange",
            &json!({"key": B64.encode(key)}),
        )
        .await
        .expect("delete");
        assert_eq!(status, 200, "delete {key}: {body}");
    }

    /// Keys under `prefix`, as etcd has them, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = post(
            self.client_port,
            "/v3/kv/range",
            &json!({
                "key": B64.encode(prefix),
                "range_end": B64.encode(range_end(prefix)),
                "keys_only": true
            }),
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

/// The end of etcd's range for every key starting with `prefix`: the prefix
/// with its last byte incremented.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One JSON POST to etcd's gateway: (status, body). The test's own client,
/// so that the code under test is not checking itself.
pub async fn post(port: u16, path: &str, body: &Value) -> Result<(u16, Value), String> {
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
