//! The `ringside` command line: `check-config` accepts the shipped config
//! and rejects each class of mistake with exit code 2 and a message naming
//! the field and the value; flags and `RINGSIDE_*` variables override the
//! file; ringside runs from flags alone.

mod common;
use common::origin::Origin;
use common::pki::TestCa;
use common::process::{without_ringside_env, Process};
use common::{free_port, get, metric_sum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The ringside binary with no RINGSIDE_* variables inherited from the
/// environment running the tests.
fn ringside() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringside"));
    without_ringside_env(&mut cmd).stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run ringside");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A file in the temp directory (a config, a log), removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(yaml: &str) -> TempConfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ringside-cli-test-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("write temp config");
        TempConfig(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ringside check-config <yaml in a temp file> [args]`.
fn check(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let file = TempConfig::new(yaml);
    let mut cmd = ringside();
    cmd.arg("check-config").arg(file.path()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Assert `check-config` rejects `yaml` with exit code 2 and a message
/// containing every one of `wanted`.
fn assert_rejected(what: &str, yaml: &str, wanted: &[&str]) {
    assert_rejected_with(what, yaml, &[], &[], wanted);
}

fn assert_rejected_with(
    what: &str,
    yaml: &str,
    args: &[&str],
    env: &[(&str, &str)],
    wanted: &[&str],
) {
    let (code, stdout, stderr) = check(yaml, args, env);
    assert_eq!(code, Some(2), "{what}: exit code; stderr: {stderr}");
    assert!(!stdout.contains(": ok"), "{what}: stdout says ok: {stdout}");
    assert!(
        stderr.starts_with("ringside: invalid configuration: "),
        "{what}: {stderr}"
    );
    for want in wanted {
        assert!(
            stderr.contains(want),
            "{what}: stderr lacks {want:?}: {stderr}"
        );
    }
}

const ORIGIN: &str = "origin: {url: \"http://127.0.0.1:8000\"}\n";

#[test]
fn the_shipped_config_passes_check_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let (code, stdout, stderr) = run(ringside().arg("check-config").arg(&path));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn unknown_keys_are_errors() {
    assert_rejected(
        "unknown top-level key",
        &format!("{ORIGIN}listen_adress: 127.0.0.1:8080\n"),
        &["listen_adress", "unknown field"],
    );
    assert_rejected(
        "unknown nested key",
        &format!("{ORIGIN}cache: {{capacty: 1}}\n"),
        &["cache.capacty", "unknown field `capacty`", "capacity"],
    );
    assert_rejected(
        "unknown key in a rule",
        &format!("{ORIGIN}cache:\n  rules:\n    - {{prefix: /a, tll: 5s}}\n"),
        &["cache.rules[0].tll", "unknown field"],
    );
}

#[test]
fn bad_sizes_and_durations_name_field_and_value() {
    assert_rejected(
        "bad size",
        &format!("{ORIGIN}cache: {{capacity: 12XB}}\n"),
        &["cache.capacity", "12XB"],
    );
    assert_rejected(
        "bad duration",
        "origin:\n  url: http://127.0.0.1:8000\n  read_timeout: soon\n",
        &["origin.read_timeout", "soon", "line 3"],
    );
    assert_rejected(
        "zero duration",
        "origin: {url: \"http://127.0.0.1:8000\", connect_timeout: 0}\n",
        &["origin.connect_timeout", "0"],
    );
    assert_rejected(
        "zero capacity",
        &format!("{ORIGIN}cache: {{capacity: 0}}\n"),
        &["cache.capacity", "0"],
    );
    assert_rejected(
        "bad shutdown delay",
        &format!("{ORIGIN}shutdown_delay: later\n"),
        &["shutdown_delay", "later", "line 2"],
    );
    assert_rejected(
        "a list where a duration goes",
        &format!("{ORIGIN}shutdown_grace: [1, 2]\n"),
        &["shutdown_grace", "sequence", "line 2"],
    );
    // The line is the value's own, deep inside a block mapping.
    assert_rejected(
        "bad size in a block mapping",
        &format!("{ORIGIN}cache:\n  include_query: true\n  cache_set_cookie: false\n  max_object_size: huge\n"),
        &["cache.max_object_size", "huge", "line 5"],
    );
}

#[test]
fn bad_origin_urls_name_field_and_value() {
    for url in [
        "ftp://x",
        // A base path is accepted (README, "Authenticated and paid APIs"),
        // one that is not in normal form is not.
        "http://h/v1/../x",
        "http://user:pw@h",
        "http://h?q=1",
        "h:80",
    ] {
        assert_rejected(
            url,
            &format!("origin: {{url: \"{url}\"}}\n"),
            &["origin.url", url],
        );
    }
    assert_rejected(
        "bad forward-proxy entry",
        &format!("{ORIGIN}forward_proxy:\n  allow: [\"http://ok:1\", \"ftp://y\"]\n"),
        &["forward_proxy.allow[1]", "ftp://y"],
    );
    assert_rejected(
        "tunnel host without a port",
        &format!(
            "{ORIGIN}forward_proxy:\n  connect_allow: [\"api.example:443\", \"api.example\"]\n"
        ),
        &["forward_proxy.connect_allow[1]", "api.example", "host:port"],
    );
    assert_rejected(
        "missing origin",
        "listen: 127.0.0.1:8081\n",
        &["origin.url", "missing"],
    );
    assert_rejected("empty file", "", &["origin.url", "missing"]);
}

#[test]
fn bad_addresses_and_levels_name_field_and_value() {
    assert_rejected(
        "bad listen",
        &format!("{ORIGIN}listen: nowhere\n"),
        &["listen", "nowhere"],
    );
    assert_rejected(
        "bad admin_listen",
        &format!("{ORIGIN}admin_listen: \"127.0.0.1:99999\"\n"),
        &["admin_listen", "127.0.0.1:99999"],
    );
    assert_rejected(
        "same listen and admin_listen",
        &format!("{ORIGIN}listen: 127.0.0.1:8080\nadmin_listen: 127.0.0.1:8080\n"),
        &["admin_listen", "127.0.0.1:8080", "different from listen"],
    );
    assert_rejected(
        "bad log level",
        &format!("{ORIGIN}log_level: loud\n"),
        &["log_level", "loud"],
    );
    assert_rejected(
        "too many threads",
        &format!("{ORIGIN}threads: 5000\n"),
        &["threads", "5000"],
    );
}

#[test]
fn bad_cache_rules_and_limits_name_field_and_value() {
    assert_rejected(
        "rule prefix without /",
        &format!(
            "{ORIGIN}cache:\n  rules:\n    - {{prefix: /ok, ttl: 1s}}\n    - {{prefix: api}}\n"
        ),
        &["cache.rules[1].prefix", "api"],
    );
    assert_rejected(
        "rule with bypass and ttl",
        &format!("{ORIGIN}cache:\n  rules:\n    - {{prefix: /a, bypass: true, ttl: 5s}}\n"),
        &["cache.rules[0]", "bypass", "ttl"],
    );
    assert_rejected(
        "max_object_size above capacity",
        &format!("{ORIGIN}cache: {{capacity: 1MiB, max_object_size: 2MiB}}\n"),
        &["cache.max_object_size", "2097152", "cache.capacity"],
    );
}

#[test]
fn bad_request_handling_settings_name_field_and_value() {
    assert_rejected(
        "a rule prefix that is not a normalised path",
        &format!("{ORIGIN}cache:\n  rules:\n    - {{prefix: /ok/, ttl: 1s}}\n    - {{prefix: \"/a//%7e\", bypass: true}}\n"),
        &["cache.rules[1].prefix", "/a//%7e", "normalised path"],
    );
    assert_rejected(
        "an invalid stripped header name",
        &format!("{ORIGIN}cache: {{strip_request_headers: [X-Ok, \"bad name\"]}}\n"),
        &["cache.strip_request_headers[1]", "bad name", "header name"],
    );
    assert_rejected(
        "an invalid key header name",
        &format!("{ORIGIN}cache: {{key_headers: [\"X:Tenant\"]}}\n"),
        &["cache.key_headers[0]", "X:Tenant", "header name"],
    );
    assert_rejected(
        "an unknown encoded_slashes mode",
        &format!("{ORIGIN}cache: {{encoded_slashes: decode}}\n"),
        &["cache.encoded_slashes", "decode", "reject", "pass"],
    );
}

#[test]
fn the_cluster_secret_cannot_be_the_admin_token() {
    let secret = "same-secret-0123456789";
    assert_rejected(
        "admin_token equal to cluster.secret",
        &format!(
            "{ORIGIN}admin_token: {secret}\ncluster: {{enabled: true, peer_listen: 127.0.0.1:7070, \
             secret: {secret}, membership: {{static: [\"127.0.0.1:7070\"]}}}}\n"
        ),
        &["admin_token", "cluster.secret", "never cross the wire"],
    );
}

#[test]
fn yaml_syntax_errors_name_the_file_and_line() {
    let cases = [
        (
            "unclosed flow mapping",
            "origin: {url: \"http://127.0.0.1:8000\"\ncache: {}\n",
            "line 2",
        ),
        (
            "bad indentation",
            "origin:\n  url: \"http://127.0.0.1:8000\"\n bad: 1\n",
            "line 3",
        ),
        (
            "a tab for indentation",
            "origin:\n\turl: \"http://127.0.0.1:8000\"\n",
            "line 2",
        ),
    ];
    for (what, yaml, line) in cases {
        let file = TempConfig::new(yaml);
        let (code, _, stderr) = run(ringside().arg("check-config").arg(file.path()));
        assert_eq!(code, Some(2), "{what}: {stderr}");
        let shown = file.path().display().to_string();
        assert!(stderr.contains(&shown), "{what}: names the file: {stderr}");
        assert!(stderr.contains(line), "{what}: names {line}: {stderr}");
    }
}

#[test]
fn a_yaml_syntax_error_inside_a_value_is_reported_as_such() {
    // An unterminated quote where a size goes is a syntax error, not a
    // value of the wrong type.
    let yaml = format!("{ORIGIN}cache:\n  capacity: \"256MiB\n");
    let (code, _, stderr) = check(&yaml, &[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cache.capacity"), "{stderr}");
    assert!(
        !stderr.contains("not a scalar"),
        "misleading reason: {stderr}"
    );
    assert!(stderr.contains("end of stream"), "{stderr}");
}

#[test]
fn unreadable_config_paths_are_errors() {
    let missing = std::env::temp_dir().join(format!(
        "ringside-cli-test-{}-does-not-exist.yaml",
        std::process::id()
    ));
    let (code, _, stderr) = run(ringside().arg("check-config").arg(&missing));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    // A directory is not a file either.
    let dir = std::env::temp_dir();
    let (code, _, stderr) = run(ringside().arg("check-config").arg(&dir));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    // Running (not just checking) with a missing --config fails the same way.
    let (code, _, stderr) = run(ringside().arg("--config").arg(&missing));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

/// A mistake in a value a flag or variable gave names that flag or
/// variable, so it does not read as if the file said it.
#[test]
fn flags_and_environment_override_the_file() {
    let good = format!("{ORIGIN}cache: {{capacity: 64MiB}}\n");
    assert_rejected_with(
        "--capacity",
        &good,
        &["--capacity", "12XB"],
        &[],
        &["cache.capacity (from --capacity): \"12XB\" is invalid"],
    );
    assert_rejected_with(
        "RINGSIDE_CAPACITY",
        &good,
        &[],
        &[("RINGSIDE_CAPACITY", "lots")],
        &["cache.capacity (from RINGSIDE_CAPACITY): \"lots\""],
    );
    assert_rejected_with(
        "RINGSIDE_ORIGIN",
        &good,
        &[],
        &[("RINGSIDE_ORIGIN", "ftp://x")],
        &["origin.url (from RINGSIDE_ORIGIN): \"ftp://x\""],
    );
    assert_rejected_with(
        "RINGSIDE_SHUTDOWN_DELAY",
        &good,
        &[],
        &[("RINGSIDE_SHUTDOWN_DELAY", "soon")],
        &["shutdown_delay (from RINGSIDE_SHUTDOWN_DELAY): \"soon\""],
    );
    assert_rejected_with(
        "--log-level",
        &good,
        &["--log-level", "loud"],
        &[],
        &["log_level (from --log-level): \"loud\""],
    );
    assert_rejected_with(
        "--threads",
        &good,
        &["--threads", "many"],
        &[],
        &["threads (from --threads): \"many\""],
    );
    assert_rejected_with(
        "RINGSIDE_PEER_LISTEN",
        &format!("{good}cluster: {{enabled: true, secret: 0123456789abcdef, membership: {{static: [\"127.0.0.1:7070\"]}}}}\n"),
        &[],
        &[("RINGSIDE_PEER_LISTEN", "anywhere")],
        &["cluster.peer_listen (from RINGSIDE_PEER_LISTEN): \"anywhere\""],
    );
    assert_rejected_with(
        "--listen equal to the admin address",
        &good,
        &["--listen", "127.0.0.1:9090"],
        &[],
        &["admin_listen", "127.0.0.1:9090"],
    );
    // The same mistake in the file names no flag.
    let (_, _, stderr) = check(&format!("{ORIGIN}threads: 2000\n"), &[], &[]);
    assert!(
        stderr.contains("threads: 2000 is invalid") && !stderr.contains("(from"),
        "{stderr}"
    );

    // The overrides win over a bad value in the file...
    let bad_origin = "origin: {url: \"ftp://bad\"}\n";
    let (code, _, stderr) = check(bad_origin, &["--origin", "http://127.0.0.1:1"], &[]);
    assert_eq!(code, Some(0), "--origin over the file: {stderr}");
    let (code, _, stderr) = check(
        bad_origin,
        &[],
        &[("RINGSIDE_ORIGIN", "http://127.0.0.1:1")],
    );
    assert_eq!(code, Some(0), "RINGSIDE_ORIGIN over the file: {stderr}");
    // ... and the flag wins over the variable.
    let (code, _, stderr) = check(
        bad_origin,
        &["--origin", "http://127.0.0.1:1"],
        &[("RINGSIDE_ORIGIN", "ftp://x")],
    );
    assert_eq!(code, Some(0), "--origin over RINGSIDE_ORIGIN: {stderr}");
    // A small --capacity shrinks the default max_object_size (8MiB) with it.
    let (code, _, stderr) = check(ORIGIN, &["--capacity", "1MiB"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn help_mentions_the_subcommands() {
    let (code, stdout, stderr) = run(ringside().arg("--help"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("check-config"), "{stdout}");
    assert!(stdout.contains("demo"), "{stdout}");
    assert!(stdout.contains("--origin"), "{stdout}");
    let (code, stdout, _) = run(ringside().args(["check-config", "--help"]));
    assert_eq!(code, Some(0));
    assert!(stdout.to_ascii_lowercase().contains("file"), "{stdout}");
    // A mistyped subcommand is a usage error, not a silent run.
    let (code, _, stderr) = run(ringside().arg("chek-config"));
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn each_subcommand_lists_only_the_flags_it_uses() {
    let proxy_flags = [
        "--config",
        "--admin-listen",
        "--origin",
        "--capacity",
        "--cluster-secret",
        "--peer-listen",
        "--admin-token",
        "--shutdown-delay",
        "--threads",
    ];
    let (code, inject, _) = run(ringside().args(["inject", "--help"]));
    assert_eq!(code, Some(0));
    for flag in proxy_flags {
        let listed = |help: &str| help.contains(&format!("{flag} <"));
        assert!(!listed(&inject), "inject --help lists {flag}:\n{inject}");
    }
    for flag in ["--listen", "--log-level", "--tls-cert", "--sidecar-image"] {
        assert!(
            inject.contains(&format!("{flag} <")),
            "inject --help lacks {flag}:\n{inject}"
        );
    }
    let (_, demo, _) = run(ringside().args(["demo", "--help"]));
    for flag in proxy_flags {
        assert!(
            !demo.contains(&format!("{flag} <")),
            "demo --help lists {flag}:\n{demo}"
        );
    }
    let (_, check, _) = run(ringside().args(["check-config", "--help"]));
    for flag in &proxy_flags[1..] {
        assert!(
            check.contains(&format!("{flag} <")),
            "check-config --help lacks {flag}:\n{check}"
        );
    }
    // A proxy flag before a subcommand would be ignored: a usage error instead.
    let (code, _, stderr) = run(ringside().args(["--origin", "http://a:1", "demo"]));
    assert_eq!(code, Some(2), "{stderr}");
}

/// `ORIGIN` plus a cluster whose membership is `etcd: {<etcd>}`.
fn etcd_yaml(etcd: &str) -> String {
    format!(
        "{ORIGIN}cluster: {{enabled: true, peer_listen: 127.0.0.1:7070, secret: 0123456789abcdef0, \
         membership: {{etcd: {{{etcd}}}}}}}\n"
    )
}

#[test]
fn etcd_tls_and_auth_mistakes_name_the_field() {
    const HTTPS: &str = "endpoints: [\"https://etcd:2379\"]";
    for (what, etcd, wanted) in [
        (
            "tls with an http endpoint",
            "endpoints: [\"https://etcd:2379\", \"http://etcd2:2379\"], tls: {ca_file: ca.pem}"
                .to_string(),
            &[
                "cluster.membership.etcd.endpoints[1]",
                "\"http://etcd2:2379\"",
                "https://",
            ][..],
        ),
        (
            "an empty tls section",
            format!("{HTTPS}, tls: {{}}"),
            &["cluster.membership.etcd.tls: empty"],
        ),
        (
            "a client certificate without its key",
            format!("{HTTPS}, tls: {{cert_file: client.crt}}"),
            &["cluster.membership.etcd.tls.key_file: missing"],
        ),
        (
            "an empty ca_file",
            format!("{HTTPS}, tls: {{ca_file: \"\"}}"),
            &["cluster.membership.etcd.tls.ca_file", "a PEM file path"],
        ),
        (
            "auth without a password source",
            format!("{HTTPS}, auth: {{username: ringside}}"),
            &[
                "cluster.membership.etcd.auth.password_file: missing",
                "password_env",
            ],
        ),
        (
            "auth with two password sources",
            format!("{HTTPS}, auth: {{username: ringside, password_file: pw, password_env: PW}}"),
            &["cluster.membership.etcd.auth", "exactly one"],
        ),
        (
            "auth without a user name",
            format!("{HTTPS}, auth: {{username: \"\", password_env: PW}}"),
            &["cluster.membership.etcd.auth.username"],
        ),
        (
            "a password in the config file",
            format!("{HTTPS}, auth: {{username: ringside, password: hunter2}}"),
            &["password"],
        ),
    ] {
        assert_rejected(what, &etcd_yaml(&etcd), wanted);
    }
}

#[test]
fn check_config_accepts_etcd_tls_and_auth_without_reading_the_files() {
    // The files are a Secret mounted in the pod, not where the config is checked.
    let etcd = "endpoints: [\"https://etcd:2379\"], tls: {ca_file: /nonexistent/ca.crt, \
                cert_file: /nonexistent/c.crt, key_file: /nonexistent/c.key}, \
                auth: {username: ringside, password_file: /nonexistent/password}";
    let (code, stdout, stderr) = check(&etcd_yaml(etcd), &[], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// Start ringside on `yaml` with `env` and wait for it to exit; its output.
async fn exit_message(yaml: &str, env: &[(&str, &str)]) -> String {
    // Tests run in parallel: each process gets a peer port of its own.
    let peer = format!("127.0.0.1:{}", free_port());
    let file = TempConfig::new(&yaml.replace("127.0.0.1:7070", &peer));
    let log = TempConfig::new(""); // the log
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringside"));
    command.arg("--config").arg(file.path());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut running = Process::spawn("ringside", command, log.path());
    common::eventually(Duration::from_secs(20), "ringside exits", || {
        let exited = !running.is_running();
        async move { exited }
    })
    .await;
    running.log()
}

#[tokio::test]
async fn unusable_etcd_credentials_stop_the_start_naming_the_field() {
    let listen = |yaml: String| {
        format!(
            "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\n{yaml}",
            free_port(),
            free_port()
        )
    };
    let not_pem = TempConfig::new("this is not a certificate");
    let not_pem = not_pem.path().display().to_string();
    for (what, etcd, env, wanted) in [
        (
            "a CA file that is missing",
            "tls: {ca_file: /nonexistent/ca.crt}".to_string(),
            &[][..],
            &["cluster.membership.etcd.tls.ca_file", "/nonexistent/ca.crt"][..],
        ),
        (
            "a CA file without a certificate",
            format!("tls: {{ca_file: \"{not_pem}\"}}"),
            &[],
            &["cluster.membership.etcd.tls.ca_file", "no PEM certificate"],
        ),
        (
            "a key file without a key",
            format!("tls: {{cert_file: \"{not_pem}\", key_file: \"{not_pem}\"}}"),
            &[],
            &[
                "cluster.membership.etcd.tls.cert_file",
                "no PEM certificate",
            ],
        ),
        (
            "a password file that is missing",
            "auth: {username: u, password_file: /nonexistent/pw}".to_string(),
            &[],
            &[
                "cluster.membership.etcd.auth.password_file",
                "/nonexistent/pw",
            ],
        ),
        (
            "an empty password variable",
            "auth: {username: u, password_env: ETCD_TEST_PASSWORD}".to_string(),
            &[("ETCD_TEST_PASSWORD", "")],
            &["cluster.membership.etcd.auth.password_env", "empty"],
        ),
    ] {
        let yaml = listen(etcd_yaml(&format!(
            "endpoints: [\"https://127.0.0.1:2379\"], {etcd}"
        )));
        let stderr = exit_message(&yaml, env).await;
        for want in wanted {
            assert!(
                stderr.contains(want),
                "{what}: stderr lacks {want:?}: {stderr}"
            );
        }
    }
}

/// ringside serving `origin` on `listen`, admin on `admin`, from flags alone.
fn serving(listen: SocketAddr, admin: SocketAddr, origin: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringside"));
    cmd.arg("--listen")
        .arg(listen.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--origin")
        .arg(origin);
    cmd
}

#[tokio::test]
async fn runs_from_flags_and_environment_alone() {
    let origin = Origin::start().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = serving(listen, admin, &origin.url());
    command
        .env("RINGSIDE_CAPACITY", "1MiB")
        .env("RINGSIDE_LOG_LEVEL", "warn");
    let log = TempConfig::new(""); // the log
    let mut running = Process::spawn("ringside", command, log.path());
    let ready = || async move { matches!(get(admin, "/readyz").await, Ok(r) if r.status == 200) };
    running
        .wait_until(Duration::from_secs(30), "ringside is ready", ready)
        .await;

    let path = "/cli?cc=max-age%3D60";
    let r = get(listen, path).await.expect("GET through ringside");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("GET {path} #1"));
    let again = get(listen, path).await.expect("GET through ringside");
    assert!(again.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits(path), 1);

    let metrics = get(admin, "/metrics").await.expect("metrics").text();
    assert_eq!(
        metric_sum(&metrics, "ringside_cache_capacity_bytes", &[]),
        1_048_576.0,
        "{metrics}"
    );
    assert!(running.is_running(), "still running");
}

/// The start-up line names every listener with its origin, the peer
/// listener, and the proxy's threads.
#[tokio::test]
async fn the_start_up_line_lists_every_listener() {
    let origin = Origin::start().await;
    let second = Origin::start().await;
    let (listen, admin, upstream, peer) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nthreads: 1\n\
         origin: {{url: \"{}\"}}\n\
         upstreams: [{{listen: \"127.0.0.1:{upstream}\", origin: \"{}\"}}]\n\
         cluster: {{enabled: true, peer_listen: \"127.0.0.1:{peer}\", secret: 0123456789abcdef, \
         membership: {{static: [\"127.0.0.1:{peer}\"]}}}}\n",
        origin.url(),
        second.url()
    );
    let file = TempConfig::new(&yaml);
    let log = TempConfig::new("");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringside"));
    command.arg("--config").arg(file.path());
    let mut running = Process::spawn("ringside", command, log.path());
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let ready = || async move { matches!(get(admin, "/readyz").await, Ok(r) if r.status == 200) };
    running
        .wait_until(Duration::from_secs(30), "ringside is ready", ready)
        .await;
    let text = running.log();
    let line = text
        .lines()
        .find(|l| l.contains("ringside listening on"))
        .unwrap_or_else(|| panic!("{text}"));
    let key = |url: String| url.trim_end_matches('/').to_string();
    for wanted in [
        format!(
            "listening on 127.0.0.1:{listen} (origin {})",
            key(origin.url())
        ),
        format!("admin {admin}"),
        format!(
            "upstream 127.0.0.1:{upstream} (origin {})",
            key(second.url())
        ),
        format!("peers 127.0.0.1:{peer}"),
        "1 proxy thread".to_string(),
    ] {
        assert!(line.contains(&wanted), "{wanted:?} missing: {line}");
    }
}

#[test]
fn membership_names_exactly_one_source() {
    let cluster = "cluster: {enabled: true, peer_listen: 127.0.0.1:7070, secret: 0123456789abcdef0";
    assert_rejected(
        "two membership sources",
        &format!(
            "{ORIGIN}{cluster}, membership: {{static: [\"127.0.0.1:7070\"], dns: {{name: peers}}}}}}\n"
        ),
        &["cluster.membership", "2 sources given", "exactly one of static, dns, etcd"],
    );
    assert_rejected(
        "no membership source",
        &format!("{ORIGIN}{cluster}}}\n"),
        &["cluster.membership", "0 sources given"],
    );
}

#[test]
fn srv_membership_takes_its_ports_from_the_records() {
    let cluster = "cluster: {enabled: true, peer_listen: 127.0.0.1:7070, secret: 0123456789abcdef0";
    assert_rejected(
        "a port with srv",
        &format!(
            "{ORIGIN}{cluster}, membership: {{dns: {{name: catalog.service.consul, srv: true, port: 7070}}}}}}\n"
        ),
        &["cluster.membership.dns.port", "7070", "srv: true"],
    );
    let (code, stdout, stderr) = check(
        &format!("{ORIGIN}{cluster}, membership: {{dns: {{name: catalog.service.consul, srv: true}}}}}}\n"),
        &[],
        &[],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// `ORIGIN` plus a static cluster whose `tls:` section is `{<tls>}`, and
/// `cluster` fields.
fn peer_tls_yaml(tls: &str, cluster: &str) -> String {
    format!(
        "{ORIGIN}cluster: {{enabled: true, peer_listen: 127.0.0.1:7070, secret: 0123456789abcdef0, \
         membership: {{static: [\"127.0.0.1:7070\"]}}, tls: {{{tls}}}{cluster}}}\n"
    )
}

#[test]
fn peer_tls_mistakes_name_the_field() {
    const FILES: &str = "ca_file: ca.crt, cert_file: tls.crt, key_file: tls.key";
    for (what, yaml, wanted) in [
        (
            "no CA",
            peer_tls_yaml("cert_file: tls.crt, key_file: tls.key", ""),
            &["cluster.tls.ca_file: missing", "CA certificate"][..],
        ),
        (
            "no key",
            peer_tls_yaml("ca_file: ca.crt, cert_file: tls.crt", ""),
            &["cluster.tls.key_file: missing"],
        ),
        (
            "an IP as the shared name",
            peer_tls_yaml(&format!("{FILES}, peer_name: \"10.0.0.1\""), ""),
            &["cluster.tls.peer_name", "\"10.0.0.1\"", "DNS name"],
        ),
        (
            "HTTP/2 over cleartext with TLS",
            peer_tls_yaml(FILES, ", peer_protocol: h2c"),
            &["cluster.peer_protocol", "h2c", "http1 with cluster.tls"],
        ),
        (
            "an unknown key",
            peer_tls_yaml(&format!("{FILES}, verify: false"), ""),
            &["cluster.tls", "verify"],
        ),
    ] {
        assert_rejected(what, &yaml, wanted);
    }
    // The files are a Secret mounted in the pod, read when ringside starts.
    let (code, stdout, stderr) = check(&peer_tls_yaml(FILES, ""), &[], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[tokio::test]
async fn unusable_peer_tls_files_stop_the_start_naming_the_field() {
    let dir = TempConfig::new(""); // a unique name to derive file names from
    let dir = dir.path().with_extension("pki");
    std::fs::create_dir_all(&dir).expect("create a directory");
    let ca = TestCa::new("cluster-ca");
    let other = TestCa::new("other-ca");
    let ca_file = ca.write(&dir.join("ca.crt"));
    let good = ca.issue(&dir, "good");
    let stranger = other.issue(&dir, "stranger");
    let elsewhere = ca.issue_for(&dir, "elsewhere", &["10.9.9.9"]);
    let path = |p: &Path| p.display().to_string();
    let (ca_file, missing) = (path(&ca_file), "/nonexistent/ca.crt".to_string());
    for (what, files, wanted) in [
        (
            "a CA file that is missing",
            [missing.clone(), path(&good.cert), path(&good.key)],
            &["cluster.tls.ca_file", "/nonexistent/ca.crt"][..],
        ),
        (
            "a key that is another certificate's",
            [ca_file.clone(), path(&good.cert), path(&stranger.key)],
            &[
                "cluster.tls.cert_file, cluster.tls.key_file",
                "not a certificate and its key",
            ],
        ),
        (
            "a certificate from another CA",
            [ca_file.clone(), path(&stranger.cert), path(&stranger.key)],
            &[
                "cluster.tls.cert_file",
                "not a valid certificate from cluster.tls.ca_file",
            ],
        ),
        (
            "a certificate for another host",
            [ca_file.clone(), path(&elsewhere.cert), path(&elsewhere.key)],
            &[
                "cluster.tls.cert_file",
                "not valid for \"127.0.0.1\"",
                "cluster.advertise",
            ],
        ),
    ] {
        let [ca, cert, key] = files;
        let yaml = format!(
            "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\n{}",
            free_port(),
            free_port(),
            peer_tls_yaml(
                &format!("ca_file: \"{ca}\", cert_file: \"{cert}\", key_file: \"{key}\""),
                ""
            )
        );
        let stderr = exit_message(&yaml, &[]).await;
        for want in wanted {
            assert!(
                stderr.contains(want),
                "{what}: stderr lacks {want:?}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that is not ringside on `addr`'s port: it answers every request
/// 204 and echoes the request's headers back (a readiness token included).
async fn impostor() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut echoed = String::new();
                let mut line = String::new();
                while stream.read_line(&mut line).await.unwrap_or(0) > 2 {
                    if line.contains(':') {
                        echoed.push_str(&line);
                    }
                    line.clear();
                }
                let reply = format!("HTTP/1.1 204 No Content\r\n{echoed}\r\n");
                let _ = stream.get_mut().write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// Another process holds the app port when ringside starts: `/readyz` is
/// never 200 (a connection to the port would open: it is not ringside's),
/// and ringside exits at once with a message naming the setting.
#[tokio::test]
async fn a_port_held_by_another_process_is_never_ready() {
    let origin = Origin::start().await;
    let held = impostor().await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = TempConfig::new(""); // the log
    let mut running = Process::spawn("ringside", serving(held, admin, &origin.url()), log.path());
    common::eventually(Duration::from_secs(60), "ringside exits", || {
        let exited = !running.is_running();
        async move {
            let ready = matches!(get(admin, "/readyz").await, Ok(r) if r.status == 200);
            assert!(!ready, "/readyz is 200 while another process holds {held}");
            exited
        }
    })
    .await;
    let stderr = running.log();
    assert_eq!(running.exit_code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("listen: {held} is in use by another process")),
        "{stderr}"
    );
    assert_eq!(origin.total_hits(), 0);
}

/// `/readyz` asks the app listener itself with this process's token: the
/// probe is answered by ringside, never reaches the origin or the request
/// metrics; a request carrying some other token is an ordinary request.
#[tokio::test]
async fn readiness_probes_stay_inside_the_process() {
    let origin = Origin::start().await;
    let rs = common::Ringside::start(&origin.url(), "").await;
    for _ in 0..3 {
        assert_eq!(get(rs.admin, "/readyz").await.unwrap().status, 200);
    }
    assert_eq!(origin.total_hits(), 0);
    assert_eq!(rs.metric("ringside_requests_total", &[]).await, 0.0);
    let guessed = rs
        .request(
            "GET",
            "/guess",
            &[("ringside-readiness", "0123456789abcdef")],
        )
        .await;
    assert_eq!(guessed.status, 200);
    assert_eq!(guessed.header("ringside-readiness"), None);
    assert_eq!(origin.hits("/guess"), 1);
}

/// `count` consecutive local ports that are free now, below the range
/// `free_port` hands out (so that no other test of this binary takes one).
fn free_range(count: u16) -> u16 {
    (10_000..19_000u16)
        .step_by(usize::from(count))
        .find(|&base| {
            (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
        .expect("a free range of local ports")
}

/// `ringside demo --base-port` puts the sample origin and every node on the
/// ports from that one on (a firewalled or shared machine), each setup in
/// turn; a port taken is an error naming the flag.
#[test]
fn the_demo_runs_on_the_ports_it_is_given() {
    let base = free_range(7);
    let demo = |base: u16| {
        run(ringside().args([
            "demo",
            "--base-port",
            &base.to_string(),
            "--nodes",
            "2",
            "--requests",
            "40",
            "--clients",
            "2",
            "--keys",
            "4",
            "--delay-ms",
            "1",
            "--no-baseline",
        ]))
    };
    let (code, stdout, stderr) = demo(base);
    assert_eq!(
        code,
        Some(0),
        "no request failed, every node started: {stdout}{stderr}"
    );
    assert!(
        stdout.contains(&format!("sample origin on http://127.0.0.1:{base}")),
        "{stdout}"
    );
    for (node, (app, admin, peer)) in [(1, (1, 3, 5)), (2, (2, 4, 6))] {
        let line = format!(
            "node {node}: app http://127.0.0.1:{}, admin http://127.0.0.1:{}, peers 127.0.0.1:{}",
            base + app,
            base + admin,
            base + peer
        );
        assert_eq!(
            stdout.matches(&line).count(),
            2,
            "both setups: {line}\n{stdout}"
        );
    }
    // A port of the range in use: the demo says which, naming the flag.
    let held = std::net::TcpListener::bind(("127.0.0.1", base + 3)).unwrap();
    let (code, _, stderr) = demo(base);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&format!(
            "--base-port {base}: cannot listen on 127.0.0.1:{}",
            base + 3
        )),
        "{stderr}"
    );
    drop(held);
    let (code, _, stderr) = demo(65_530);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("past 65535"), "{stderr}");
}
