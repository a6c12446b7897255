//! Secrets as files (`admin_token_file`, `cluster.secret_file`): what the
//! Helm chart and the webhook mount instead of environment variables. Real
//! processes read them at start and again when they change (the kubelet
//! swaps a Secret's files by renaming, as [`swap`] does): a new purge token
//! is accepted and the old one refused, a rotated cluster secret is what
//! peers sign with, and a file that does not do is refused by field name,
//! never quoting the secret.

mod common;
use common::origin::Origin;
use common::{free_port, Conn, Ringside};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory of secret files for one test, removed on drop.
struct Secrets(PathBuf);

impl Secrets {
    fn new(name: &str) -> Secrets {
        let dir = std::env::temp_dir().join(format!(
            "ringside-secret-files-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Secrets(dir)
    }

    /// `file` in this directory, holding `text` (written whole, by rename).
    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        swap(&path, text);
        path
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replace `path` with `text` as the kubelet updates a mounted Secret: a
/// new file renamed over the old one, so a reader sees one or the other.
fn swap(path: &Path, text: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// The status of `PURGE path` on `node`'s admin listener with `token`.
async fn purge(node: &Ringside, path: &str, token: &str) -> u16 {
    let mut admin = Conn::connect(node.admin).await.unwrap();
    let auth = format!("Bearer {token}");
    let answer = admin
        .request("PURGE", path, &[("authorization", &auth)])
        .await
        .unwrap();
    answer.status
}

#[tokio::test]
async fn the_purge_token_comes_from_a_file_and_follows_it() {
    let origin = Origin::start().await;
    let secrets = Secrets::new("admin");
    let (first, second) = ("first-purge-token-1234", "second-purge-token-5678");
    let file = secrets.write("admin-token", &format!("{first}\n"));
    let yaml = format!("admin_token_file: {}\n", file.display());
    let node = Ringside::start(&origin.url(), &yaml).await;
    let path = "/purged?cc=max-age%3D600";
    node.get(path).await;
    assert_eq!(
        purge(&node, path, first).await,
        200,
        "the file's token, newline dropped"
    );
    assert_eq!(purge(&node, path, "wrong-token").await, 401);

    swap(&file, second);
    let waited = common::eventually(Duration::from_secs(10), "the new token is accepted", || {
        let node = &node;
        async move { purge(node, path, second).await == 200 }
    });
    waited.await;
    assert_eq!(
        purge(&node, path, first).await,
        401,
        "the old token no longer"
    );
    let loaded = r#"secret="admin_token""#;
    assert_eq!(
        node.metric(
            "ringside_secret_reloads_total",
            &[loaded, r#"result="loaded""#]
        )
        .await,
        1.0
    );

    // An empty file is refused (it is looked at when a purge asks for the
    // token): the token before it stays.
    swap(&file, "");
    common::eventually(
        Duration::from_secs(10),
        "the failed reload is counted",
        || {
            let node = &node;
            async move {
                let accepted = purge(node, path, second).await == 200;
                let failed = node
                    .metric(
                        "ringside_secret_reloads_total",
                        &[loaded, r#"result="failed""#],
                    )
                    .await;
                accepted && failed == 1.0
            }
        },
    )
    .await;
    let log = node.log();
    assert!(log.contains("keeping the previous admin token"), "{log}");
    assert!(
        !log.contains(first) && !log.contains(second),
        "a token in the log:\n{log}"
    );
}

/// One node of a two-node cluster whose secret is the file `secret`.
async fn clustered(origin: &Origin, me: &str, peers: &[String], secret: &Path) -> Ringside {
    let list = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "cluster:\n  enabled: true\n  peer_listen: {me}\n  secret_file: {}\n  \
         peer_timeout: 1s\n  hot: {{fraction: 0}}\n  membership:\n    static: [{list}]\n",
        secret.display()
    );
    Ringside::start(&origin.url(), &yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_secret_comes_from_a_file_and_follows_it() {
    let origin = Origin::start().await;
    let secrets = Secrets::new("cluster");
    let (old, new) = ("the-old-cluster-secret-0123", "the-new-cluster-secret-4567");
    let file_a = secrets.write("a", &format!("{old}\n"));
    let file_b = secrets.write("b", old);
    let peers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let a = clustered(&origin, &peers[0], &peers, &file_a).await;
    let b = clustered(&origin, &peers[1], &peers, &file_b).await;
    let owned_by_b = common::paths_owned_by(
        &peers[1],
        &peers,
        &origin.url(),
        "/rotate/",
        "cc=max-age%3D600",
        200,
    );
    let mut fresh = owned_by_b.iter();
    let through_b = |r: &common::Response| common::cache_status(r).contains("detail=peer");
    // Same secret, one from a file with a newline and one without: A asks B.
    let r = a.get(fresh.next().unwrap()).await;
    assert!(through_b(&r), "{}", common::cache_status(&r));

    // B's Secret is rotated first: A's requests are refused (B counts them)
    // and A loads from the origin, with no client error.
    swap(&file_b, new);
    let answers = parking_lot::Mutex::new(Vec::new());
    common::eventually(Duration::from_secs(10), "B refuses the old secret", || {
        let path = fresh.next().expect("more keys owned by B");
        let (a, b, answers) = (&a, &b, &answers);
        async move {
            let r = a.get(path).await;
            answers.lock().push((r.status, through_b(&r)));
            b.metric("ringside_peer_auth_failures_total", &[]).await >= 1.0
        }
    })
    .await;
    let (status, hopped) = *answers.lock().last().unwrap();
    assert_eq!(status, 200, "the client got the origin's answer");
    assert!(!hopped, "B answered a request signed with the old secret");

    // Then A's: they agree again and A asks B.
    swap(&file_a, new);
    common::eventually(
        Duration::from_secs(10),
        "A asks B with the new secret",
        || {
            let (a, path) = (&a, fresh.next().expect("more keys owned by B"));
            async move { through_b(&a.get(path).await) }
        },
    )
    .await;
    for node in [&a, &b] {
        let loaded = node
            .metric(
                "ringside_secret_reloads_total",
                &[r#"secret="cluster_secret""#, r#"result="loaded""#],
            )
            .await;
        assert_eq!(loaded, 1.0);
        let log = node.log();
        assert!(log.contains("reloaded the cluster secret"), "{log}");
        assert!(
            !log.contains(old) && !log.contains(new),
            "a secret in the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn secret_files_that_do_not_do_stop_the_start_naming_the_field() {
    let secrets = Secrets::new("bad");
    let short = secrets.write("short", "too-short\n");
    let peer = format!("127.0.0.1:{}", free_port());
    let cluster = |secret: &str| {
        format!(
            "cluster: {{enabled: true, peer_listen: \"{peer}\", {secret}, \
             membership: {{static: [\"{peer}\"]}}}}\n"
        )
    };
    let secret = "secret: 0123456789abcdef0123";
    for (yaml, wanted) in [
        (
            "admin_token_file: /nonexistent/admin-token\n".to_string(),
            "admin_token_file: /nonexistent/admin-token",
        ),
        (
            cluster(&format!("secret_file: {}", short.display())),
            "cluster.secret_file",
        ),
        (
            cluster("secret_file: /nonexistent/secret"),
            "cluster.secret_file: /nonexistent/secret",
        ),
        (
            format!(
                "admin_token_file: {}\n{}",
                secrets.write("same", "0123456789abcdef0123").display(),
                cluster(secret)
            ),
            "admin_token_file: the same as the cluster secret",
        ),
    ] {
        let out = exit_output(&yaml).await;
        assert!(out.contains(wanted), "{yaml}: {out}");
        assert!(
            out.contains("9 characters") || !yaml.contains("short"),
            "{out}"
        );
        assert!(
            !out.contains("too-short"),
            "the secret is in the message: {out}"
        );
    }
}

/// What ringside says when it exits at start with `yaml` (plus an origin
/// and listen addresses).
async fn exit_output(yaml: &str) -> String {
    let dir = Secrets::new(&format!("exit-{}", free_port()));
    let config = dir.write(
        "config.yaml",
        &format!(
            "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\norigin: {{url: \"http://127.0.0.1:9\"}}\n{yaml}",
            free_port(),
            free_port()
        ),
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"));
    command.arg("--config").arg(&config);
    let log = dir.0.join("log");
    let mut running = common::process::Process::spawn("ringside", command, &log);
    common::eventually(Duration::from_secs(20), "ringside exits", || {
        let exited = !running.is_running();
        async move { exited }
    })
    .await;
    assert_eq!(running.exit_code(), Some(1), "{}", running.log());
    running.log()
}

/// `ringside check-config` on `yaml` with `env`: (exit code, stderr).
fn check_config(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = Secrets::new(&format!("check-{}", free_port()));
    let file = dir.write("config.yaml", yaml);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"));
    common::process::without_ringside_env(&mut command);
    command
        .arg("check-config")
        .arg(&file)
        .args(args)
        .envs(env.iter().copied());
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A secret is given once: as a value or as a file. A flag or variable for
/// either form replaces both of the file's, as overrides do.
#[test]
fn a_secret_is_a_value_or_a_file_not_both() {
    let origin = "origin: {url: \"http://127.0.0.1:9\"}\n";
    let cluster = "cluster: {enabled: true, membership: {static: [\"127.0.0.1:7070\"]}, ";
    let (code, stderr) = check_config(
        &format!("{origin}admin_token: abc\nadmin_token_file: /run/token\n"),
        &[],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("admin_token, admin_token_file: both given"),
        "{stderr}"
    );
    let both = format!("{origin}{cluster}secret: 0123456789abcdef, secret_file: /run/s}}\n");
    let (code, stderr) = check_config(&both, &[], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cluster.secret, cluster.secret_file: both given"),
        "{stderr}"
    );
    let (code, stderr) = check_config(
        origin,
        &[],
        &[
            ("RINGSIDE_ADMIN_TOKEN", "abcdefgh"),
            ("RINGSIDE_ADMIN_TOKEN_FILE", "/run/token"),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("both given"), "{stderr}");
    // The file's value gives way to a file given by flag (check-config does
    // not read secret files: they are mounted only where ringside runs).
    let in_file = format!("{origin}{cluster}secret: 0123456789abcdef}}\nadmin_token: abc\n");
    for args in [
        &["--cluster-secret-file", "/run/secret"][..],
        &["--admin-token-file", "/run/token"],
    ] {
        let (code, stderr) = check_config(&in_file, args, &[]);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let short = format!("{origin}{cluster}secret: short}}\n");
    let (code, _) = check_config(&short, &["--cluster-secret-file", "/run/secret"], &[]);
    assert_eq!(code, Some(0), "the file replaces the short secret");
    let (code, stderr) = check_config(&short, &[], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cluster.secret_file"),
        "the message offers the file: {stderr}"
    );
}
