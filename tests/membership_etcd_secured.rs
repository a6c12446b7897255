//! etcd membership against a production-like etcd: TLS with client
//! certificates (made at test time), and etcd's users with auth enabled.
//! Real ringside processes, a real etcd (see `common::etcd`), a real origin.
//!
//! A node that cannot convince etcd (a CA that did not sign etcd's
//! certificate, a wrong password) says so in its log, stays out of the
//! cluster, and keeps serving from its own cache.

mod common;
use common::etcd::Etcd;
use common::origin::Origin;
use common::pki::TestCa;
use common::{eventually, free_port, Ringside, CLUSTER_SECRET};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A key prefix no other test uses.
fn prefix(test: &str) -> String {
    format!("/ringside-secured-{}-{test}/", std::process::id())
}

/// Start a clustered node whose member source is `etcd` (YAML flow mapping
/// of the `etcd:` section).
async fn node(origin: &Origin, etcd: &str) -> Ringside {
    let peer = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "cluster:\n  enabled: true\n  peer_listen: {peer}\n  advertise: {peer}\n  secret: {CLUSTER_SECRET}\n  \
         hot: {{fraction: 0}}\n  membership:\n    etcd: {etcd}\n"
    );
    Ringside::start(&origin.url(), &yaml).await
}

async fn wait_ring_members(nodes: &[&Ringside], want: f64) {
    let what = format!("ringside_ring_members = {want} on every node");
    eventually(Duration::from_secs(15), &what, || async {
        for node in nodes {
            if node.metric("ringside_ring_members", &[]).await != want {
                return false;
            }
        }
        true
    })
    .await;
}

/// A file in the system temp directory holding `text`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("ringside-secured-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `etcd:` section (a YAML flow mapping) for `etcd` under `prefix`, plus `fields`.
fn membership(etcd: &Etcd, prefix: &str, fields: &str) -> String {
    format!(
        "{{endpoints: [\"{}\"], prefix: \"{prefix}\", {fields}}}",
        etcd.url()
    )
}

/// `tls:` trusting `ca_file` and showing `etcd`'s client certificate.
fn tls_fields(etcd: &Etcd, ca_file: &Path) -> String {
    let client = &etcd.tls.as_ref().expect("an etcd with TLS").client;
    format!(
        "tls: {{ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\"}}",
        ca_file.display(),
        client.cert.display(),
        client.key.display()
    )
}

/// `auth:` as user `ringside`, the password read from `password_file`.
fn auth_fields(password_file: &TempFile) -> String {
    format!(
        "auth: {{username: ringside, password_file: \"{}\"}}",
        password_file.0.display()
    )
}

const PASSWORD: &str = "members-only-4711";

/// etcd with auth on and a user `ringside` (password [`PASSWORD`]) that
/// may only read and write the keys under `prefix`.
async fn etcd_with_auth(prefix: &str) -> Etcd {
    let mut etcd = Etcd::start().await;
    etcd.add_user("ringside", PASSWORD, "ringside-members", Some(prefix))
        .await;
    etcd.enable_auth("root-password-0815").await;
    etcd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_and_leave_over_tls_with_client_certificates() {
    let etcd = Etcd::start_tls().await;
    let origin = Origin::start().await;
    let prefix = prefix("tls");
    let ca_file = &etcd.tls.as_ref().expect("TLS files").ca;
    // A long lease: a node that left before it expired was revoked.
    let fields = format!("lease_ttl: 60s, {}", tls_fields(&etcd, ca_file));
    let membership = membership(&etcd, &prefix, &fields);
    assert!(etcd.url().starts_with("https://"));
    let a = node(&origin, &membership).await;
    let mut b = node(&origin, &membership).await;
    wait_ring_members(&[&a, &b], 2.0).await;
    assert_eq!(etcd.keys(&prefix).await.len(), 2);

    // SIGTERM: B revokes its lease over TLS, and A's watch drops it.
    b.terminate().await.expect("B was running");
    wait_ring_members(&[&a], 1.0).await;
    assert_eq!(etcd.keys(&prefix).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_with_etcd_auth_and_authenticate_again_when_their_tokens_go_stale() {
    let prefix = prefix("auth");
    let mut etcd = etcd_with_auth(&prefix).await;
    let origin = Origin::start().await;
    let password = TempFile::new("password", &format!("{PASSWORD}\n"));
    let membership = membership(&etcd, &prefix, &auth_fields(&password));
    let a = node(&origin, &membership).await;
    let b = node(&origin, &membership).await;
    wait_ring_members(&[&a, &b], 2.0).await;
    let keys = etcd.keys(&prefix).await;
    assert_eq!(keys.len(), 2);

    // etcd forgets every token it issued (as when they expire). Then
    // someone deletes both registrations: each node puts its own back,
    // which takes a new token.
    etcd.void_tokens().await;
    for key in &keys {
        etcd.delete(key).await;
    }
    eventually(
        Duration::from_secs(10),
        "both keys are put back",
        || async { etcd.keys(&prefix).await == keys },
    )
    .await;
    for node in [&a, &b] {
        let log = node.log();
        assert!(
            log.contains("rejected the auth token") && log.contains("authenticating again"),
            "{} did not authenticate again:\n{log}",
            node.addr
        );
    }
    wait_ring_members(&[&a, &b], 2.0).await;
}

/// `node` stayed out of the cluster saying `why`, and serves from its cache.
async fn assert_kept_out_but_serving(
    node: &Ringside,
    etcd: &Etcd,
    prefix: &str,
    origin: &Origin,
    why: &[&str],
) {
    eventually(Duration::from_secs(10), "the failure is logged", || async {
        let log = node.log();
        why.iter().all(|w| log.contains(w))
    })
    .await;
    assert!(etcd.keys(prefix).await.is_empty(), "the node registered");
    assert_eq!(node.metric("ringside_ring_members", &[]).await, 1.0);
    let path = "/cached?cc=max-age%3D60";
    assert_eq!(node.get(path).await.status, 200);
    let again = node.get(path).await;
    assert_eq!(again.status, 200);
    let status = again.header("cache-status").unwrap_or("");
    assert!(
        status.contains("hit"),
        "second GET: Cache-Status {status:?}"
    );
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_ca_keeps_the_node_out_with_a_clear_error() {
    let etcd = Etcd::start_tls().await;
    let origin = Origin::start().await;
    let wrong_ca = TempFile::new("wrong-ca.crt", "");
    TestCa::new("not etcd's CA").write(&wrong_ca.0);
    let prefix = prefix("wrong-ca");
    let membership = membership(&etcd, &prefix, &tls_fields(&etcd, &wrong_ca.0));
    let node = node(&origin, &membership).await;
    let why = [
        "registering",
        "UnknownIssuer",
        "cluster.membership.etcd.tls",
    ];
    assert_kept_out_but_serving(&node, &etcd, &prefix, &origin, &why).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_keeps_the_node_out_with_a_clear_error() {
    let prefix = prefix("wrong-password");
    let etcd = etcd_with_auth(&prefix).await;
    let origin = Origin::start().await;
    let password = TempFile::new("wrong-password", "not-the-right-one");
    let membership = membership(&etcd, &prefix, &auth_fields(&password));
    let node = node(&origin, &membership).await;
    let why = [
        "registering",
        "authenticating as \"ringside\"",
        "authentication failed, invalid user ID or password",
    ];
    assert_kept_out_but_serving(&node, &etcd, &prefix, &origin, &why).await;
}
