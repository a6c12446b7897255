//! A real etcd (Debian's `etcd-server`, binary `etcd`) for the tests, on
//! free 127.0.0.1 ports with its own data directory, killed by PID when its
//! handle drops.
//!
//! Without `etcd` on the PATH [`Etcd::start`] fails the test, saying how to
//! install it: CI installs it (`.ci/run`), and a silently skipped test would
//! hide that etcd membership went untested.

use super::pki::{CertFiles, TestCa};
use super::process::Process;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// With TLS: the files etcd and its clients use.
    pub tls: Option<EtcdTlsFiles>,
    /// Flags beyond the defaults (TLS), kept across restarts.
    flags: Vec<String>,
    /// The tests' own client of etcd's gateway.
    client: Gateway,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Etcd::launch(false).await
    }

    async fn launch(tls: bool) -> Etcd {
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
        let client_port = super::free_port();
        let tls = tls.then(|| EtcdTlsFiles::generate(&dir));
        let mut etcd = Etcd {
            process: None,
            generation: 0,
            client_port,
            peer_port: super::free_port(),
            flags: tls.as_ref().map_or_else(Vec::new, EtcdTlsFiles::flags),
            client: Gateway::new(client_port, tls.as_ref()),
            tls,
            dir,
        };
        etcd.spawn().await;
        etcd
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
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
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&self.flags);
        let process = self
            .process
            .insert(Process::spawn("etcd", etcd, &self.log_path()));
        let gateway = self.client.clone();
        let ready = || {
            let gateway = gateway.clone();
            async move {
                let health = gateway.post("/v3/kv/range", &json!({"key": "AA=="})).await;
                matches!(health, Ok((200, _)))
            }
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
        let put = json!({"key": B64.encode(key), "value": B64.encode(value)});
        self.expect_ok("/v3/kv/put", &put).await;
    }

    pub async fn delete(&self, key: &str) {
        self.expect_ok("/v3/kv/deleterange", &json!({"key": B64.encode(key)}))
            .await;
    }

    /// Keys under `prefix`, as etcd has them, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let range = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix)),
            "keys_only": true
        });
        let body = self.expect_ok("/v3/kv/range", &range).await;
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

    /// Create `root` and turn etcd's auth on: from here on every call of
    /// this handle authenticates as root first.
    pub async fn enable_auth(&mut self, root_password: &str) {
        self.add_user("root", root_password, "root", None).await;
        self.expect_ok("/v3/auth/enable", &json!({})).await;
        self.client.login = Some(("root".into(), root_password.into()));
    }

    /// Turn auth off and on again: etcd forgets every token it issued, as
    /// when they expire (`--auth-token-ttl`), but without waiting for that.
    pub async fn void_tokens(&mut self) {
        self.expect_ok("/v3/auth/disable", &json!({})).await;
        let login = self.client.login.take();
        self.expect_ok("/v3/auth/enable", &json!({})).await;
        self.client.login = login;
    }

    /// A user whose role `role` may read and write the keys under `prefix`
    /// (no grant when None: root's role needs none).
    pub async fn add_user(&self, name: &str, password: &str, role: &str, prefix: Option<&str>) {
        self.expect_ok("/v3/auth/role/add", &json!({"name": role}))
            .await;
        if let Some(prefix) = prefix {
            let perm = json!({
                "permType": "READWRITE",
                "key": B64.encode(prefix),
                "range_end": B64.encode(range_end(prefix)),
            });
            self.expect_ok("/v3/auth/role/grant", &json!({"name": role, "perm": perm}))
                .await;
        }
        let user = json!({"name": name, "password": password});
        self.expect_ok("/v3/auth/user/add", &user).await;
        self.expect_ok("/v3/auth/user/grant", &json!({"user": name, "role": role}))
            .await;
    }

    /// POST to the gateway, failing the test unless etcd answers 200.
    async fn expect_ok(&self, path: &str, body: &Value) -> Value {
        match self.client.post(path, body).await {
            Ok((200, answer)) => answer,
            Ok((status, answer)) => panic!("etcd {path}: {status} {answer}"),
            Err(e) => panic!("etcd {path}: {e}"),
        }
    }
}

/// The TLS files of a test etcd: its server certificate, and the CA and
/// client certificate its clients need (`--client-cert-auth` is on).
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub client: CertFiles,
    server: CertFiles,
}

impl EtcdTlsFiles {
    fn generate(dir: &std::path::Path) -> EtcdTlsFiles {
        let ca = TestCa::new("etcd test CA");
        EtcdTlsFiles {
            ca: ca.write(&dir.join("ca.crt")),
            client: ca.issue(dir, "client"),
            // Also a client certificate: etcd 3.4's gateway connects to
            // its own gRPC side with it.
            server: ca.issue(dir, "server"),
        }
    }

    fn flags(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            format!("--cert-file={}", path(&self.server.cert)),
            format!("--key-file={}", path(&self.server.key)),
            format!("--trusted-ca-file={}", path(&self.ca)),
            "--client-cert-auth".into(),
        ]
    }
}

impl Etcd {
    /// etcd serving https only, to clients with a certificate its CA signed.
    pub async fn start_tls() -> Etcd {
        Etcd::launch(true).await
    }
}

/// The tests' own client of etcd's JSON gateway, on pingora's connector
/// rather than ringside's etcd client, so that the code under test is not
/// checking itself. Once `login` is set, every call authenticates first.
#[derive(Clone)]
struct Gateway {
    port: u16,
    tls: bool,
    connector: Arc<Connector>,
    login: Option<(String, String)>,
}

impl Gateway {
    fn new(port: u16, tls: Option<&EtcdTlsFiles>) -> Gateway {
        let options = tls.map(|files| {
            let path = |p: &PathBuf| p.display().to_string();
            let mut options = ConnectorOptions::new(1);
            options.ca_file = Some(path(&files.ca));
            options.cert_key_file = Some((path(&files.client.cert), path(&files.client.key)));
            options
        });
        Gateway {
            port,
            tls: tls.is_some(),
            connector: Arc::new(Connector::new(options)),
            login: None,
        }
    }

    /// One JSON POST: (status, the answer's first JSON value).
    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let token = match &self.login {
            Some((name, password)) => {
                let login = json!({"name": name, "password": password});
                let (status, answer) = self.send("/v3/auth/authenticate", &login, None).await?;
                let token = answer.get("token").and_then(Value::as_str);
                Some(
                    token
                        .ok_or(format!("authenticate: {status} {answer}"))?
                        .to_string(),
                )
            }
            None => None,
        };
        self.send(path, body, token.as_deref()).await
    }

    async fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let exchange = async {
            let mut peer = HttpPeer::new(("127.0.0.1", self.port), self.tls, "127.0.0.1".into());
            peer.options.connection_timeout = Some(Duration::from_secs(5));
            let (mut session, _) = self.connector.get_http_session(&peer).await?;
            let body = Bytes::from(body.to_string());
            let mut request = RequestHeader::build("POST", path.as_bytes(), None)?;
            request.insert_header("host", format!("127.0.0.1:{}", self.port))?;
            request.insert_header("content-type", "application/json")?;
            request.insert_header("content-length", body.len().to_string())?;
            if let Some(token) = token {
                request.insert_header("authorization", token)?;
            }
            session.write_request_header(Box::new(request)).await?;
            session.write_request_body(body, true).await?;
            session.finish_request_body().await?;
            session.read_response_header().await?;
            let status = session.response_header().map_or(0, |h| h.status.as_u16());
            let mut answer = Vec::new();
            while let Some(data) = session.read_response_body().await? {
                answer.extend_from_slice(&data);
            }
            Ok::<_, Box<pingora::Error>>((status, answer))
        };
        let (status, answer) = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        // Stream answers (watch, keepalive) hold one JSON value per line.
        let value = serde_json::Deserializer::from_slice(&answer)
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or(Value::Null);
        Ok((status, value))
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
