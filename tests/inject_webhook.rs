//! `ringside inject` end to end: the real binary serving HTTPS with a test
//! CA (rcgen), real AdmissionReview requests sent with `curl --cacert`, the
//! returned JSONPatch applied with the json-patch crate, and the patched Pod
//! checked by `kubernetes-validate --strict` for Kubernetes 1.29. The
//! chart's `ringside.sidecar` template (rendered by the real `helm`) and the
//! webhook started with the chart's args must give the same resources.
//!
//! Needs `curl`, `helm` and `kubernetes-validate`
//! (tests/tools/install-k8s-tools.sh); missing tools fail the test with that
//! hint rather than skipping.

mod common;
use base64::Engine;
use common::process::{without_ringside_env, Process};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Webhook {
    process: Process,
    port: u16,
    dir: PathBuf,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn require(tool: &str) {
    common::process::require_tool(tool, common::process::K8S_TOOLS);
}

/// A new test CA (written to `ca_file` in `dir`) and a certificate for
/// 127.0.0.1 signed by it, written to `tls.crt` and `tls.key` by renaming
/// (as the kubelet swaps a Secret's files: either file is whole at any time).
fn write_certs(dir: &Path, ca_file: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringside test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, "ringside-webhook");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join(ca_file), ca.pem()).unwrap();
    for (file, pem) in [("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())] {
        let staged = dir.join(format!("{file}.new"));
        std::fs::write(&staged, pem).unwrap();
        std::fs::rename(&staged, dir.join(file)).unwrap();
    }
}

/// Wait (outside any runtime) until `condition` holds; see `common::eventually`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = common::eventually(Duration::from_secs(30), what, || {
        let holds = condition();
        async move { holds }
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime to wait in")
        .block_on(waited);
}

/// The webhook with the flags the tests share, plus `extra`.
fn start(name: &str, extra: &[&str]) -> Webhook {
    let mut args = vec![
        "--sidecar-image=ghcr.io/ringside/ringside:test",
        "--config-map=ringside-config",
        "--secret=ringside-peer-secret",
    ];
    args.extend_from_slice(extra);
    launch(name, &args)
}

/// `ringside inject` on a free port with a test certificate and `args`.
fn launch(name: &str, args: &[&str]) -> Webhook {
    require("curl");
    let dir = std::env::temp_dir().join(format!("ringside-inject-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_certs(&dir, "ca.pem");
    let port = common::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringside"));
    command
        .arg("inject")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--tls-cert={}", dir.join("tls.crt").display()))
        .arg(format!("--tls-key={}", dir.join("tls.key").display()))
        .args(args);
    let mut process = Process::spawn("the webhook", command, &dir.join("webhook.log"));
    let healthy = || {
        let healthy = call(port, &dir, "ca.pem", "GET", "/healthz", None).0 == 200;
        async move { healthy }
    };
    let ready = process.wait_until(Duration::from_secs(30), "the webhook is healthy", healthy);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime to wait in")
        .block_on(ready);
    Webhook { process, port, dir }
}

/// (HTTP status, body) of a request to the webhook on `port` over HTTPS,
/// from a client that trusts only the CA in `ca_file` (in `dir`); status 0
/// when the TLS handshake (or anything else) failed.
fn call(
    port: u16,
    dir: &Path,
    ca_file: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-X", method])
        .arg("--cacert")
        .arg(dir.join(ca_file))
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        let file = dir.join("body.json");
        std::fs::write(&file, b).unwrap();
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.display()));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

impl Webhook {
    /// What the webhook wrote so far (its log).
    fn log(&self) -> String {
        self.process.log()
    }

    /// (HTTP status, body) over HTTPS verified against the test CA.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        self.call_trusting("ca.pem", method, path, body)
    }

    /// (HTTP status, body) over HTTPS from a client that trusts only the CA
    /// in `ca_file` (in the webhook's directory); status 0 when the TLS
    /// handshake (or anything else) failed.
    fn call_trusting(
        &self,
        ca_file: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> (u16, String) {
        call(self.port, &self.dir, ca_file, method, path, body)
    }

    fn review(&self, object: Value) -> Value {
        self.review_at("/mutate", "shop", object)
    }

    /// The AdmissionResponse for `object` created in `namespace`, sent to
    /// `path` (`/mutate`, or `/mutate/namespace` as for a namespace
    /// labelled ringside.io/inject=enabled).
    fn review_at(&self, path: &str, namespace: &str, object: Value) -> Value {
        let kind = object["kind"].as_str().unwrap_or("Pod").to_string();
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "7f0c-test", "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "operation": "CREATE", "object": object}
        });
        let (status, body) = self.call("POST", path, Some(&serde_json::to_vec(&review).unwrap()));
        assert_eq!(status, 200, "{body}");
        let out: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "7f0c-test");
        out["response"].clone()
    }

    /// Send the pod, apply the patch, validate, check idempotency.
    fn inject(&self, pod: &Value) -> Value {
        let response = self.review(pod.clone());
        assert_eq!(response["allowed"], true, "{response}");
        assert_eq!(response["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("patch failed: {e}"));
        validate(&patched);
        // Idempotent: the patched pod gets no second patch.
        let again = self.review(patched.clone());
        assert_eq!(again["allowed"], true);
        assert!(
            again.get("patch").is_none(),
            "second pass patched again: {again}"
        );
        patched
    }
}

fn validate(pod: &Value) {
    require("kubernetes-validate");
    // Tests run in parallel and may validate pods of the same name.
    static VALIDATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "ringside-inject-pod-{}-{}-{}.json",
        std::process::id(),
        pod["metadata"]["name"].as_str().unwrap_or("pod"),
        VALIDATED.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::write(&file, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.29.0"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "patched pod is not valid for 1.29:\n{}{}\n{pod:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Pod that examples/kubernetes/app.yaml's Deployment creates.
fn example_pod() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/app.yaml"),
    )
    .unwrap();
    let deploy: Value = serde_yaml::from_str(&text).unwrap();
    let template = &deploy["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["name"] = json!("catalog-7d9f8-abcde");
    metadata["namespace"] = deploy["metadata"]["namespace"].clone();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

fn container<'a>(pod: &'a Value, list: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ringside")
        .unwrap_or_else(|| panic!("no ringside in {list}: {pod:#}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

#[test]
fn injects_native_sidecar_into_example_pod() {
    let hook = start("native", &["--native-sidecar=always"]);
    let pod = hook.inject(&example_pod());
    assert_eq!(
        pod["metadata"]["annotations"]["ringside.io/injected"],
        "true"
    );
    let c = container(&pod, "initContainers");
    assert_eq!(c["restartPolicy"], "Always");
    assert_eq!(c["image"], "ghcr.io/ringside/ringside:test");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "ringside-admin");
    let admin = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ringside-admin")
        .unwrap();
    assert_eq!(admin["containerPort"], 9090);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        env(c, "POD_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    // The peer secret and the admin token are files of the mounted Secret,
    // never environment variables (/proc/<pid>/environ, crash dumps).
    assert!(
        !c["env"].to_string().contains("secretKeyRef"),
        "a secret in the environment: {}",
        c["env"]
    );
    for name in ["RINGSIDE_CLUSTER_SECRET", "RINGSIDE_ADMIN_TOKEN"] {
        assert!(env(c, name).is_none(), "{name} is set");
    }
    assert_eq!(
        env(c, "RINGSIDE_CLUSTER_SECRET_FILE").unwrap()["value"],
        "/etc/ringside-secret/secret"
    );
    assert_eq!(
        env(c, "RINGSIDE_ADMIN_TOKEN_FILE").unwrap()["value"],
        "/etc/ringside-secret/admin-token"
    );
    let mount = json!({"name": "ringside-secret", "mountPath": "/etc/ringside-secret",
        "readOnly": true});
    assert!(c["volumeMounts"].as_array().unwrap().contains(&mount));
    assert_eq!(
        volume(&pod, "ringside-secret").unwrap()["secret"]["secretName"],
        "ringside-peer-secret"
    );
    // ringside.io/capacity: 512MiB -> request 1.15 x 512 + 40 Mi + 256 x 40 Ki, limit + 128 Mi.
    assert_eq!(
        env(c, "RINGSIDE_CAPACITY").unwrap()["value"],
        (512u64 << 20).to_string()
    );
    assert_eq!(c["resources"]["requests"]["memory"], "639Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "767Mi");
    // ringside.io/app: catalog -> the app's ConfigMap.
    let vol = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ringside-config")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], "ringside-config-catalog");
    // The app container is untouched.
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn overrides_and_existing_lists() {
    let hook = start(
        "regular",
        &["--native-sidecar=auto", "--kube-version=v1.28.9"],
    );
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "legacy", "namespace": "shop", "annotations": {
            "ringside.io/inject": "true",
            "ringside.io/origin": "https://api.example.com",
            "ringside.io/port": "8181",
            "ringside.io/admin-port": "9191",
            "ringside.io/capacity": "1Gi",
            "team": "search"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "app:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    });
    let patched = hook.inject(&pod);
    // auto on 1.28: a regular container, existing lists extended, not replaced.
    assert_eq!(
        patched["spec"]["initContainers"].as_array().unwrap().len(),
        1
    );
    assert_eq!(patched["spec"]["containers"].as_array().unwrap().len(), 2);
    assert_eq!(
        patched["spec"]["volumes"].as_array().unwrap().len(),
        4,
        "data + config, secret, tmp"
    );
    assert_eq!(patched["metadata"]["annotations"]["team"], "search");
    let c = container(&patched, "containers");
    assert!(c.get("restartPolicy").is_none());
    assert_eq!(
        env(c, "RINGSIDE_ORIGIN").unwrap()["value"],
        "https://api.example.com"
    );
    assert_eq!(
        env(c, "RINGSIDE_LISTEN").unwrap()["value"],
        "127.0.0.1:8181"
    );
    assert_eq!(
        env(c, "RINGSIDE_ADMIN_LISTEN").unwrap()["value"],
        "0.0.0.0:9191"
    );
    let ports: Vec<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![9191, 7070]);
    assert_eq!(c["resources"]["requests"]["memory"], "1228Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "1356Mi");
    let vol = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ringside-config")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], "ringside-config");

    // Per-pod native override on the same (1.28) webhook.
    let mut native = pod.clone();
    native["metadata"]["name"] = json!("native");
    native["metadata"]["annotations"]["ringside.io/native-sidecar"] = json!("true");
    let patched = hook.inject(&native);
    assert_eq!(
        container(&patched, "initContainers")["restartPolicy"],
        "Always"
    );
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "migrate");
}

#[test]
fn regular_sidecars_wait_before_exit() {
    let hook = start(
        "wait",
        &["--kube-version=v1.28.9", "--wait-before-exit-seconds=5"],
    );
    let pod = |name: &str, extra: Value| {
        let mut annotations = json!({"ringside.io/inject": "true"});
        annotations
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    };
    let delay = |patched: &Value, list: &str| {
        env(container(patched, list), "RINGSIDE_SHUTDOWN_DELAY").map(|e| e["value"].clone())
    };
    // 1.28: a regular container, which gets SIGTERM with the app, waits.
    let patched = hook.inject(&pod("regular", json!({})));
    assert_eq!(delay(&patched, "containers"), Some(json!("5s")));
    // Per pod.
    let patched = hook.inject(&pod(
        "longer",
        json!({"ringside.io/wait-before-exit-seconds": "12"}),
    ));
    assert_eq!(delay(&patched, "containers"), Some(json!("12s")));
    let patched = hook.inject(&pod(
        "none",
        json!({"ringside.io/wait-before-exit-seconds": "0"}),
    ));
    assert_eq!(delay(&patched, "containers"), None);
    // A native sidecar stops after the app: no wait.
    let patched = hook.inject(&pod(
        "native",
        json!({"ringside.io/native-sidecar": "true"}),
    ));
    assert_eq!(delay(&patched, "initContainers"), None);
    // Asked for on a native sidecar, the wait is ignored: and `kubectl
    // apply` says so (a warning), rather than silently.
    let asked = pod(
        "native-waiting",
        json!({"ringside.io/native-sidecar": "true", "ringside.io/wait-before-exit-seconds": "10"}),
    );
    let r = hook.review(asked.clone());
    assert_eq!(r["allowed"], true, "{r}");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("ringside.io/wait-before-exit-seconds") && w[0].contains("native sidecar"),
        "{w:?}"
    );
    assert_eq!(delay(&hook.inject(&asked), "initContainers"), None);
    // On a regular container it waits, and nothing is said.
    let r = hook.review(pod(
        "regular-waiting",
        json!({"ringside.io/wait-before-exit-seconds": "10"}),
    ));
    assert!(warnings(&r).is_empty(), "{r}");
    // An unusable value is denied, naming the annotation.
    let r = hook.review(pod(
        "bad",
        json!({"ringside.io/wait-before-exit-seconds": "soon"}),
    ));
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("ringside.io/wait-before-exit-seconds") && message.contains("soon"),
        "{message}"
    );
}

/// A sidecar runs `--sidecar-threads` workers (the chart's sidecar.threads,
/// 2 by default), or per pod `ringside.io/threads`; 0 leaves it to the
/// container's CPU limit.
#[test]
fn threads_per_pod() {
    let pod = |name: &str, annotations: Value| {
        pod_with(
            name,
            annotations,
            json!({}),
            json!([{"name": "app", "image": "app:1"}]),
        )
    };
    let threads = |patched: &Value| {
        env(container(patched, "containers"), "RINGSIDE_THREADS").map(|e| e["value"].clone())
    };
    let hook = start("threads", &["--native-sidecar=never"]);
    let patched = hook.inject(&pod("default", json!({"ringside.io/inject": "true"})));
    assert_eq!(
        threads(&patched),
        Some(json!("2")),
        "two workers by default"
    );
    let patched = hook.inject(&pod(
        "annotated",
        json!({"ringside.io/inject": "true", "ringside.io/threads": "0"}),
    ));
    assert_eq!(threads(&patched), Some(json!("0")));
    let r = hook.review(pod(
        "bad",
        json!({"ringside.io/inject": "true", "ringside.io/threads": "many"}),
    ));
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("ringside.io/threads") && message.contains("\"many\""),
        "{message}"
    );
    let hook = start(
        "threads-flag",
        &["--native-sidecar=never", "--sidecar-threads=4"],
    );
    let patched = hook.inject(&pod("flag", json!({"ringside.io/inject": "true"})));
    assert_eq!(threads(&patched), Some(json!("4")));
}

/// A namespace labelled `ringside.io/inject=enabled` sends its pods to
/// `/mutate/namespace`: each gets the sidecar without an annotation, one
/// annotated "false" does not, and one the sidecar cannot work in (host
/// network, or a namespace without the ConfigMap) starts without it and a
/// warning says why, where a pod that asked itself is refused.
#[test]
fn a_labelled_namespace_injects_its_pods_unless_they_opt_out() {
    let hook = start(
        "namespace",
        &[
            "--native-sidecar=always",
            "--config-namespaces=ringside,shop",
        ],
    );
    let plain = |name: &str, annotations: Value| {
        pod_with(
            name,
            annotations,
            json!({}),
            json!([{"name": "app", "image": "app:1"}]),
        )
    };
    let patched = |r: &Value, pod: &Value| {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().expect("a patch"))
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    };
    let namespaced = |ns: &str, pod: Value| hook.review_at("/mutate/namespace", ns, pod);
    // No annotation at all: injected.
    let pod = plain("unannotated", json!({}));
    let r = namespaced("shop", pod.clone());
    assert_eq!(r["allowed"], true, "{r}");
    let injected = patched(&r, &pod);
    validate(&injected);
    assert_eq!(container(&injected, "initContainers")["name"], "ringside");
    // The same pod through /mutate (a namespace that asked nothing): untouched.
    assert!(hook.review(pod.clone()).get("patch").is_none());
    // Opted out.
    let r = namespaced("shop", plain("out", json!({"ringside.io/inject": "false"})));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("opts out"),
        "{r}"
    );
    // Cannot have it: allowed without, and told why.
    let mut host = plain("host", json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    let r = namespaced("shop", host.clone());
    assert_eq!(
        r["allowed"], true,
        "a namespace's pod is never refused: {r}"
    );
    assert!(r.get("patch").is_none(), "{r}");
    let w = warnings(&r);
    assert!(
        w.iter()
            .any(|w| w.starts_with("no ringside sidecar: hostNetwork")),
        "{w:?}"
    );
    let r = namespaced("batch", plain("elsewhere", json!({})));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r}");
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("namespace batch has no ConfigMap ringside-config")),
        "{r}"
    );
    // A pod that asked itself is refused those instead.
    let r = hook.review_at(
        "/mutate",
        "batch",
        plain("asked", json!({"ringside.io/inject": "true"})),
    );
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace batch has no ConfigMap"),
        "{r}"
    );
    let (_, metrics) = hook.call("GET", "/metrics", None);
    for series in [
        r#"ringside_inject_admissions_total{decision="injected",reason="namespace"}"#,
        r#"ringside_inject_admissions_total{decision="skipped",reason="opted_out"}"#,
        r#"ringside_inject_admissions_total{decision="skipped",reason="host_network"}"#,
        r#"ringside_inject_admissions_total{decision="denied",reason="no_config_map"}"#,
    ] {
        assert!(
            sample(&metrics, series) >= Some(1.0),
            "{series}:\n{metrics}"
        );
    }
}

#[test]
fn memory_request_and_limit_per_pod() {
    let hook = start("memory", &["--memory-limit=1Gi"]);
    let pod = |name: &str, annotations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    };
    let memory = |patched: &Value| {
        let c = container(patched, "containers");
        let r = &c["resources"];
        (
            r["requests"]["memory"].clone(),
            r["limits"]["memory"].clone(),
        )
    };
    // The flag's limit, the formula's request.
    let patched = hook.inject(&pod("flags", json!({"ringside.io/inject": "true"})));
    assert_eq!(memory(&patched), (json!("345Mi"), json!("1Gi")));
    // Annotations win over both.
    let patched = hook.inject(&pod(
        "annotated",
        json!({"ringside.io/inject": "true", "ringside.io/memory-request": "700Mi",
               "ringside.io/memory-limit": "1.5Gi"}),
    ));
    assert_eq!(memory(&patched), (json!("700Mi"), json!("1.5Gi")));
    // A capacity whose request exceeds the limit, and unusable quantities: denied.
    for (annotations, named) in [
        (
            json!({"ringside.io/inject": "true", "ringside.io/capacity": "2GiB"}),
            "above the memory limit 1Gi",
        ),
        (
            json!({"ringside.io/inject": "true", "ringside.io/memory-request": "lots"}),
            "ringside.io/memory-request",
        ),
        (
            json!({"ringside.io/inject": "true", "ringside.io/memory-limit": "2GiB"}),
            "ringside.io/memory-limit",
        ),
    ] {
        let r = hook.review(pod("denied", annotations));
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{message}");
    }
}

/// A Pod named `name` in namespace shop with these annotations, labels and containers.
fn pod_with(name: &str, annotations: Value, labels: Value, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations, "labels": labels},
        "spec": {"containers": containers}})
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn near_misses_get_warnings() {
    let hook = start("warnings", &[]);
    let app = json!([{"name": "app", "image": "app:1"}]);
    // "True" and "enabled": not injected, and told why.
    for value in ["True", "enabled"] {
        let r = hook.review(pod_with(
            "almost",
            json!({"ringside.io/inject": value}),
            json!({}),
            app.clone(),
        ));
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none());
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "{r}");
        assert!(
            w[0].contains(&format!("{value:?}")) && w[0].contains("only \"true\""),
            "{w:?}"
        );
    }
    // A label instead of the annotation.
    let r = hook.review(pod_with(
        "label",
        json!({}),
        json!({"ringside.io/inject": "true", "app": "catalog"}),
        app.clone(),
    ));
    assert!(r.get("patch").is_none());
    assert_eq!(
        warnings(&r),
        ["ringside.io/inject is a label: ringside reads it only as an annotation"]
    );
    // Injected, with a warning about a misspelt annotation.
    let pod = pod_with(
        "typo",
        json!({"ringside.io/inject": "true", "ringside.io/capcity": "1Gi"}),
        json!({"app": "catalog"}),
        app,
    );
    let r = hook.review(pod.clone());
    assert_eq!(r["patchType"], "JSONPatch");
    assert_eq!(
        warnings(&r),
        ["unknown annotation ringside.io/capcity is ignored (see ringside's annotation list)"]
    );
    for w in warnings(&r) {
        assert!(
            w.len() <= 120,
            "kubectl may cut warnings over 120 characters: {w}"
        );
    }
    // A clean pod gets none.
    hook.inject(&pod_with(
        "clean",
        json!({"ringside.io/inject": "true"}),
        json!({}),
        json!([{"name": "app", "image": "app:1"}]),
    ));
}

#[test]
fn refuses_pods_the_sidecar_cannot_work_in() {
    let hook = start("unfit", &[]);
    let inject = json!({"ringside.io/inject": "true"});
    let mut host = pod_with(
        "host",
        inject.clone(),
        json!({}),
        json!([{"name": "app", "image": "app:1"}]),
    );
    host["spec"]["hostNetwork"] = json!(true);
    let r = hook.review(host);
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("hostNetwork"), "{message}");

    let busy = json!([{"name": "app", "image": "app:1",
        "ports": [{"containerPort": 3000}, {"name": "metrics", "containerPort": 9090}]}]);
    let r = hook.review(pod_with("busy", inject, json!({}), busy.clone()));
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("container \"app\" already uses port 9090")
            && message.contains("ringside.io/admin-port"),
        "{message}"
    );
    // Moving the admin port out of the way lets it in.
    let moved = pod_with(
        "moved",
        json!({"ringside.io/inject": "true", "ringside.io/admin-port": "9191"}),
        json!({}),
        busy,
    );
    hook.inject(&moved);
}

#[test]
fn refuses_an_app_the_chart_does_not_have_there() {
    let hook = start("apps", &["--apps=shop/catalog,web/search"]);
    let app = json!([{"name": "app", "image": "app:1"}]);
    let with_app = |name: &str| {
        pod_with(
            name,
            json!({"ringside.io/inject": "true", "ringside.io/app": name}),
            json!({}),
            app.clone(),
        )
    };
    // catalog has a ConfigMap in shop.
    let patched = hook.inject(&with_app("catalog"));
    let volume = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ringside-config")
        .unwrap()
        .clone();
    assert_eq!(volume["configMap"]["name"], "ringside-config-catalog");
    // A typo, and an app of another namespace: refused, naming the annotation.
    for name in ["catalgo", "search"] {
        let r = hook.review(with_app(name));
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("ringside.io/app")
                && message.contains(&format!("{name:?}"))
                && message.contains("apps there: catalog"),
            "{message}"
        );
    }
    // No app: the standalone ConfigMap, always there.
    hook.inject(&pod_with(
        "standalone",
        json!({"ringside.io/inject": "true"}),
        json!({}),
        app,
    ));
}

#[test]
fn decisions_are_logged_and_counted() {
    let hook = start("observed", &[]);
    let app = json!([{"name": "app", "image": "app:1"}]);
    let (status, before) = hook.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &before,
            r#"ringside_inject_admissions_total{decision="denied",reason="host_network"}"#
        ),
        Some(0.0),
        "every outcome is listed from the start:\n{before}"
    );
    // One of each: injected (by generateName, as a Deployment's pods come),
    // skipped, denied, and a body that is no review at all.
    let mut generated = pod_with(
        "",
        json!({"ringside.io/inject": "true"}),
        json!({}),
        app.clone(),
    );
    generated["metadata"]["generateName"] = json!("catalog-7d9f8-");
    hook.inject(&generated);
    hook.review(pod_with(
        "plain",
        json!({"ringside.io/inject": "True"}),
        json!({}),
        app.clone(),
    ));
    hook.review(pod_with(
        "bad",
        json!({"ringside.io/inject": "true", "ringside.io/port": "0"}),
        json!({}),
        app,
    ));
    assert_eq!(hook.call("POST", "/mutate", Some(b"{not json")).0, 400);

    let (_, metrics) = hook.call("GET", "/metrics", None);
    let count = |labels: &str| {
        sample(
            &metrics,
            &format!("ringside_inject_admissions_total{{{labels}}}"),
        )
    };
    // inject() sends the patched pod again: skipped as already injected.
    assert_eq!(
        count(r#"decision="injected",reason="requested""#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        count(r#"decision="skipped",reason="already_injected""#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"decision="skipped",reason="not_requested""#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"decision="denied",reason="invalid_annotation""#),
        Some(1.0)
    );
    assert_eq!(count(r#"decision="error",reason="bad_review""#), Some(1.0));
    assert_eq!(
        sample(&metrics, "ringside_inject_warnings_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "ringside_inject_admission_duration_seconds_count"),
        Some(5.0)
    );

    let log = hook.log();
    for line in [
        "shop/catalog-7d9f8-*: injected (requested): regular sidecar, ConfigMap ringside-config, memory 345Mi/473Mi",
        "shop/plain: skipped (not_requested)",
        "warnings: ringside.io/inject is \"True\"",
        "shop/bad: denied (invalid_annotation): annotation ringside.io/port: \"0\" is invalid",
        "rejected AdmissionReview: request body is not JSON",
    ] {
        assert!(log.contains(line), "the log lacks {line:?}:\n{log}");
    }
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn skips_and_errors() {
    let hook = start("errors", &[]);
    // Not annotated: allowed, no patch.
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
                       "spec": {"containers": [{"name": "app", "image": "app"}]}});
    let r = hook.review(plain);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    // Already carrying a container named ringside.
    let manual = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "manual", "annotations": {"ringside.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app"}, {"name": "ringside", "image": "r"}]}});
    let r = hook.review(manual);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    // Not a Pod: allowed with a message.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let r = hook.review(cm);
    assert_eq!(r["allowed"], true);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("only into Pods"),
        "{r}"
    );
    // An unusable annotation: denied, naming it.
    let bad = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bad", "annotations": {"ringside.io/inject": "true", "ringside.io/capacity": "lots"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]}});
    let r = hook.review(bad);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("ringside.io/capacity"),
        "{r}"
    );
    // A pod with no annotations map at all but... nothing to inject, and no metadata.
    let r = hook.review(json!({"kind": "Pod", "spec": {}}));
    assert_eq!(r["allowed"], true);
    // Malformed bodies: 400 with a message, and the server lives on.
    let (status, body) = hook.call("POST", "/mutate", Some(b"{not json"));
    assert_eq!(status, 400);
    assert!(body.contains("not JSON"), "{body}");
    let (status, body) = hook.call(
        "POST",
        "/mutate",
        Some(br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("no request"), "{body}");
    let (status, _) = hook.call("GET", "/mutate", None);
    assert_eq!(status, 405);
    assert_eq!(hook.call("GET", "/healthz", None).0, 200);
}

#[test]
fn refuses_bad_flags() {
    for (flag, wanted) in [
        ("--apps=shop/catalog", "--tls-cert"),
        ("--peer-tls-secrets=shop/catalog", "NAMESPACE/APP=SECRET"),
        (
            "--app-capacities=shop/catalog=lots",
            "--app-capacities: \"lots\"",
        ),
        (
            "--app-header-secrets=shop/catalog=key",
            "--app-header-secrets: \"key\" (for shop/catalog) is invalid; expected SECRET/KEY",
        ),
        // An app's capacity too large for the limit (flags split at spaces).
        (
            "--memory-limit=8Gi --app-capacities=shop/catalog=64GiB",
            "--app-capacities (shop/catalog): memory request",
        ),
        (
            "--security-context=[1]",
            "--security-context: \"[1]\" is invalid",
        ),
        (
            "--sidecar-threads=2000",
            "--sidecar-threads: 2000 is invalid",
        ),
    ] {
        let out = without_ringside_env(&mut Command::new(env!("CARGO_BIN_EXE_ringside")))
            .args([
                "inject",
                "--tls-cert=/nonexistent.pem",
                "--tls-key=/nonexistent.key",
                "--sidecar-image=x",
            ])
            .args(flag.split_whitespace())
            .env_remove("RINGSIDE_LISTEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(wanted), "{flag}: {stderr}");
    }
}

/// The chart as a parent chart uses it: `ringside.sidecar` included in a
/// regular and a native Pod, next to the chart's own objects (the webhook
/// Deployment among them), for `values` (under `ringside:`).
fn render_with_manual_pods(name: &str, values: &str) -> Vec<Value> {
    require("helm");
    let dir = std::env::temp_dir().join(format!(
        "ringside-inject-{}-chart-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("charts")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/ringside");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&chart)
        .arg(dir.join("charts/ringside"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: manual\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/pods.yaml"),
        r#"{{- range $native := list false true }}
{{- $ringside := dict "Values" $.Values.ringside "Release" $.Release "native" $native "app" $.Values.app "Chart" $.Subcharts.ringside.Chart }}
---
apiVersion: v1
kind: Pod
metadata:
  name: manual-{{ ternary "native" "regular" $native }}
  namespace: shop
spec:
  {{- if $native }}
  initContainers:
    {{- include "ringside.sidecar" $ringside | nindent 4 }}
  {{- end }}
  containers:
    - name: app
      image: app:1
    {{- if not $native }}
    {{- include "ringside.sidecar" $ringside | nindent 4 }}
    {{- end }}
  volumes:
    {{- include "ringside.sidecarVolumes" $ringside | nindent 4 }}
{{- end }}
"#,
    )
    .unwrap();
    // As the user's values (-f): Helm removes a subchart default set to null
    // there, not from the parent chart's own values.yaml.
    let user_values = dir.join("user-values.yaml");
    std::fs::write(&user_values, values).unwrap();
    let out = Command::new("helm")
        .args(["template", "rs"])
        .arg(&dir)
        .arg("-f")
        .arg(&user_values)
        // The pods are created in shop: the chart writes its ConfigMap there.
        .args(["--set", "ringside.namespaces={shop}"])
        .args(["--namespace", "ringside", "--kube-version", "1.30.0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "helm template ({name}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d.get("kind").is_some())
        .collect()
}

/// The memory README's Memory section says a sidecar needs, as (request,
/// limit) in the chart's and the webhook's notation: request = 1.15 x
/// capacity + 40 MiB + 40 KiB per connection the app keeps open, limit =
/// request + headroom, each rounded up to a whole MiB.
fn footprint_formula(capacity: u64, connections: u64, headroom: u64) -> (String, String) {
    const MIB: u64 = 1 << 20;
    let cache = (capacity * 115).div_ceil(100);
    let request = (cache + 40 * MIB + connections * 40 * 1024).div_ceil(MIB);
    let limit = request + headroom.div_ceil(MIB);
    (format!("{request}Mi"), format!("{limit}Mi"))
}

/// Every JSON path at which `a` and `b` differ, with both values.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (l, r) = (x.get(k), y.get(k));
                let null = Value::Null;
                differences(
                    l.unwrap_or(&null),
                    r.unwrap_or(&null),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: chart {a}, webhook {b}")),
        _ => {}
    }
}

/// The two ways to the same sidecar inject the same thing: for each value
/// set, the chart's `ringside.sidecar` and `ringside.sidecarVolumes`
/// templates and the real webhook, started with the args the chart renders
/// for it, give the same container, field by field (env, probes, ports,
/// resources, secret keys, security context, mounts), and the same volumes;
/// the memory is the footprint formula's unless set explicitly.
#[test]
fn chart_and_webhook_inject_the_same_container() {
    const MIB: u64 = 1 << 20;
    // (name, values, the (request, limit) expected)
    let formula = footprint_formula;
    let cases: &[(&str, &str, (String, String))] = &[
        ("defaults", "", ("345Mi".into(), "473Mi".into())),
        (
            "fractions",
            "ringside:\n  sidecar: {capacity: 100MB, memoryConnections: 10, memoryHeadroom: 64M}\n",
            formula(100_000_000, 10, 64_000_000),
        ),
        (
            "large",
            "ringside:\n  sidecar: {capacity: 1.5GiB, memoryConnections: 1000, \
             memoryHeadroom: 256Mi, waitBeforeExitSeconds: 9, threads: 3}\n",
            formula(1536 * MIB, 1000, 256 * MIB),
        ),
        (
            "explicit",
            "ringside:\n  sidecar: {memoryRequest: 900Mi, memoryLimit: 1.5Gi}\n",
            ("900Mi".into(), "1.5Gi".into()),
        ),
        (
            "limit-only",
            "ringside:\n  sidecar: {memoryLimit: 2G, cpuLimit: 500m}\n",
            (formula(256 * MIB, 256, 0).0, "2G".into()),
        ),
        (
            "openshift",
            "ringside:\n  sidecar:\n    securityContext: {runAsUser: null, runAsGroup: null}\n",
            ("345Mi".into(), "473Mi".into()),
        ),
        (
            "ports-and-app",
            "app: catalog\nringside:\n  sidecar: {port: 8181, adminPort: 9191, peerPort: 7171, \
             capacity: 64MiB, logLevel: debug, threads: 0}\n  apps:\n    - name: catalog\n      \
             namespace: shop\n      selector: {app: catalog}\n",
            formula(64 * MIB, 256, 128 * MIB),
        ),
        (
            "app-capacity-and-headers",
            "app: catalog\nringside:\n  apps:\n    - name: catalog\n      namespace: shop\n      \
             selector: {app: catalog}\n      capacity: 1GiB\n      injectHeaders:\n        \
             - {name: Authorization, secret: catalog-api-key, key: token, prefix: \"Bearer \"}\n        \
             - {name: X-Client-Id, secret: catalog-api-key, key: client-id}\n        \
             - {name: X-Tenant, secret: a-tenant, key: id}\n",
            formula(1024 * MIB, 256, 128 * MIB),
        ),
    ];
    for (name, values, (request, limit)) in cases {
        let docs = render_with_manual_pods(name, values);
        let args = webhook_args(&docs);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let hook = launch(&format!("same-{name}"), &args);
        for native in [false, true] {
            let which = if native { "native" } else { "regular" };
            let manual = docs
                .iter()
                .find(|d| d["metadata"]["name"] == format!("manual-{which}"))
                .unwrap();
            validate(manual);
            let list = if native {
                "initContainers"
            } else {
                "containers"
            };
            let mut annotations = json!({"ringside.io/inject": "true",
                                         "ringside.io/native-sidecar": native.to_string()});
            if values.starts_with("app: ") {
                annotations["ringside.io/app"] = json!("catalog");
            }
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("hooked-{which}"), "namespace": "shop",
                    "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
            let injected = hook.inject(&pod);
            let mut diff = Vec::new();
            let (from_chart, from_webhook) = (container(manual, list), container(&injected, list));
            differences(from_chart, from_webhook, "container", &mut diff);
            let volumes = |pod: &Value| {
                let mut v: Vec<Value> = pod["spec"]["volumes"].as_array().unwrap().clone();
                v.retain(|v| v["name"].as_str().unwrap().starts_with("ringside-"));
                Value::Array(v)
            };
            differences(&volumes(manual), &volumes(&injected), "volumes", &mut diff);
            assert!(
                diff.is_empty(),
                "{name} ({which}): chart and webhook disagree:\n{}",
                diff.join("\n")
            );
            let security = &from_chart["securityContext"];
            assert_eq!(security["runAsNonRoot"], true, "{name}");
            let uid = security.get("runAsUser");
            match *name {
                // OpenShift's restricted SCC picks the UID: none fixed.
                "openshift" => assert!(uid.is_none() && security.get("runAsGroup").is_none()),
                _ => assert_eq!(uid, Some(&json!(65532)), "{name}"),
            }
            let memory = &from_chart["resources"];
            assert_eq!(memory["requests"]["memory"], *request, "{name}");
            assert_eq!(memory["limits"]["memory"], *limit, "{name}");
            // Both mount the header Secrets (so that agreeing is not both lacking them).
            let headers = volume(manual, "ringside-headers");
            assert_eq!(
                headers.is_some(),
                *name == "app-capacity-and-headers",
                "{name}"
            );
        }
    }
}

/// Peers dial every replica of an app on one port, the ConfigMap's
/// membership port (the chart's sidecar.peerPort): the webhook started with
/// the chart's args makes each injected sidecar listen and declare exactly
/// that port, and refuses a per-pod `ringside.io/peer-port`, naming it.
#[test]
fn sidecars_listen_on_the_port_their_peers_dial() {
    let values = "ringside:\n  sidecar: {peerPort: 7171}\n  apps:\n    - name: catalog\n      \
                  namespace: shop\n      selector: {app: catalog}\n";
    let docs = render_with_manual_pods("peer-port", values);
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "rs-ringside-config-catalog")
        .expect("catalog's ConfigMap");
    let config: Value =
        serde_yaml::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let dialed = config["cluster"]["membership"]["dns"]["port"]
        .as_u64()
        .unwrap();
    assert_eq!(dialed, 7171);
    let args: Vec<String> = docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]
        ["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| {
            a.starts_with("--sidecar-")
                || a.starts_with("--apps=")
                || a.starts_with("--config-map=")
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hook = launch("peer-port", &args);
    let pod = |name: &str, annotations: Value| {
        pod_with(
            name,
            annotations,
            json!({}),
            json!([{"name": "app", "image": "app:1"}]),
        )
    };
    let patched = hook.inject(&pod(
        "catalog",
        json!({"ringside.io/inject": "true", "ringside.io/app": "catalog"}),
    ));
    let c = container(&patched, "containers");
    assert_eq!(
        env(c, "RINGSIDE_PEER_LISTEN").unwrap()["value"],
        format!("0.0.0.0:{dialed}")
    );
    let peer = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ringside-peer");
    assert_eq!(peer.unwrap()["containerPort"], dialed);
    // A pod cannot listen elsewhere: its peers would still dial 7171.
    let r = hook.review(pod(
        "elsewhere",
        json!({"ringside.io/inject": "true", "ringside.io/app": "catalog",
               "ringside.io/peer-port": "7272"}),
    ));
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("ringside.io/peer-port")
            && message.contains("\"7272\"")
            && message.contains("sidecar.peerPort (7171)"),
        "{message}"
    );
    assert!(
        warnings(&r).is_empty(),
        "a known annotation, not a typo: {r}"
    );
}

/// cert-manager renews the webhook's certificate and the kubelet swaps the
/// mounted files: the running webhook serves the new certificate (from a new
/// CA) without a restart, and a client that trusts only the old CA is
/// refused from then on.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let mut hook = start("renewal", &[]);
    let pid = hook.process.pid();
    assert_eq!(hook.call_trusting("ca.pem", "GET", "/healthz", None).0, 200);
    write_certs(&hook.dir, "new-ca.pem");
    wait_until("a client trusting only the new CA gets through", || {
        hook.call_trusting("new-ca.pem", "GET", "/healthz", None).0 == 200
    });
    let (status, _) = hook.call_trusting("ca.pem", "GET", "/healthz", None);
    assert_eq!(status, 0, "the old CA still verifies the webhook");
    // The same process, answering reviews with the new certificate.
    assert!(hook.process.is_running());
    assert_eq!(hook.process.pid(), pid);
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "renewed", "namespace": "shop", "operation": "CREATE",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "object": pod_with("after", json!({"ringside.io/inject": "true"}), json!({}),
                json!([{"name": "app", "image": "app:1"}]))}});
    let body = serde_json::to_vec(&review).unwrap();
    let (status, answer) = hook.call_trusting("new-ca.pem", "POST", "/mutate", Some(&body));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"patchType\":\"JSONPatch\""), "{answer}");
    let (_, metrics) = hook.call_trusting("new-ca.pem", "GET", "/metrics", None);
    let loaded = sample(
        &metrics,
        r#"ringside_inject_certificate_reloads_total{result="loaded"}"#,
    );
    assert!(loaded >= Some(1.0), "{metrics}");
    assert!(
        hook.log().contains("reloaded the TLS certificate"),
        "{}",
        hook.log()
    );
}

/// A certificate replaced by one that does not match its key (or garbage)
/// is refused: the webhook keeps serving the one it has, and says why.
#[test]
fn a_broken_certificate_keeps_the_previous_one() {
    let hook = start("broken", &[]);
    let garbage = hook.dir.join("tls.crt.new");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::rename(&garbage, hook.dir.join("tls.crt")).unwrap();
    wait_until("the failed reload is counted", || {
        let (_, metrics) = hook.call("GET", "/metrics", None);
        sample(
            &metrics,
            r#"ringside_inject_certificate_reloads_total{result="failed"}"#,
        ) == Some(1.0)
    });
    assert_eq!(hook.call("GET", "/healthz", None).0, 200);
    assert!(
        hook.log().contains("keeping the previous TLS certificate"),
        "{}",
        hook.log()
    );
}

/// The webhook's args as the chart renders them in `docs`, without those
/// `launch` sets itself.
fn webhook_args(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the webhook Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| {
            !["inject", "--listen=", "--tls-cert=", "--tls-key="]
                .iter()
                .any(|p| a.starts_with(p))
        })
        .collect()
}

/// A volume of `pod` by name.
fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// An app with `peerTls` gets its Secret mounted where its ConfigMap
/// expects the files, by the chart's template and by the webhook alike;
/// other apps get no such volume.
#[test]
fn chart_and_webhook_mount_an_apps_peer_tls_secret() {
    let values =
        "app: catalog\nringside:\n  apps:\n    - name: catalog\n      namespace: shop\n      \
                  selector: {app: catalog}\n      peerTls: {secretName: catalog-peer-tls}\n    \
                  - name: search\n      namespace: shop\n      selector: {app: search}\n";
    let docs = render_with_manual_pods("peer-tls", values);
    let args = webhook_args(&docs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hook = launch("peer-tls", &args);
    let manual = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "manual-regular")
        .unwrap();
    validate(manual);
    let mount = json!({"name": "ringside-peer-tls", "mountPath": "/etc/ringside-peer-tls",
        "readOnly": true});
    let secret = json!({"name": "ringside-peer-tls", "secret": {"secretName": "catalog-peer-tls"}});
    let mounts = |pod: &Value| container(pod, "containers")["volumeMounts"].clone();
    assert!(
        mounts(manual).as_array().unwrap().contains(&mount),
        "chart: {}",
        mounts(manual)
    );
    assert_eq!(volume(manual, "ringside-peer-tls"), Some(&secret));
    let pod = |app: &str| {
        pod_with(
            app,
            json!({"ringside.io/inject": "true", "ringside.io/app": app,
                   "ringside.io/native-sidecar": "false"}),
            json!({}),
            json!([{"name": "app", "image": "app:1"}]),
        )
    };
    let injected = hook.inject(&pod("catalog"));
    assert_eq!(mounts(&injected), mounts(manual), "chart and webhook agree");
    assert_eq!(volume(&injected, "ringside-peer-tls"), Some(&secret));
    let other = hook.inject(&pod("search"));
    assert!(volume(&other, "ringside-peer-tls").is_none(), "{other}");
    assert!(!mounts(&other).to_string().contains("ringside-peer-tls"));
}

/// Made-up contents of the Secrets an app's injected headers read: (Secret,
/// key, value).
const SECRET_DATA: &[(&str, &str, &str)] = &[
    ("catalog-api-key", "token", "cat-3f9a-token-value"),
    ("partner-key", "key", "partner-77c1-key-value"),
];

/// Lay out `volume` (a projected volume of Secret keys) in `dir` as the
/// kubelet would, each item's file holding its key's value from
/// [`SECRET_DATA`] (with the trailing newline `kubectl create secret
/// --from-file` often leaves); how many files were written.
fn materialize_secrets(volume: &Value, dir: &Path) -> usize {
    let mut written = 0;
    for source in volume["projected"]["sources"].as_array().unwrap() {
        let secret = source["secret"]["name"].as_str().unwrap();
        for item in source["secret"]["items"].as_array().unwrap() {
            let key = item["key"].as_str().unwrap();
            let (.., value) = SECRET_DATA
                .iter()
                .find(|(s, k, _)| *s == secret && *k == key)
                .unwrap_or_else(|| panic!("no data for {secret}/{key}"));
            let file = dir.join(item["path"].as_str().unwrap());
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, format!("{value}\n")).unwrap();
            written += 1;
        }
    }
    written
}

/// An app's injected headers end to end: the chart's ConfigMap for the app
/// and the pod the webhook makes (started with the chart's args) agree on
/// where each Secret key is. The test lays the patched pod's projected
/// volume out as the kubelet would (made-up Secret data), runs the real
/// ringside on the app's rendered config with that directory in place of
/// the mount path, and the origin and the upstream each receive their
/// header, from the file; the values are in no environment variable of the
/// container and in no log line.
#[test]
fn an_injected_header_reaches_the_origin_from_its_mounted_secret() {
    use common::origin::Origin;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (origin, partner) =
        runtime.block_on(async { (Origin::start().await, Origin::start().await) });
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let values = format!(
        r#"app: catalog
ringside:
  sidecar: {{origin: "{origin}"}}
  apps:
    - name: catalog
      namespace: shop
      selector: {{app: catalog}}
      config:
        upstreams:
          - {{listen: "{upstream}", origin: "{partner}"}}
      injectHeaders:
        - {{name: Authorization, secret: catalog-api-key, key: token, prefix: "Bearer "}}
        - {{name: X-Api-Key, secret: partner-key, key: key, origin: "{partner}"}}
"#,
        origin = origin.url(),
        partner = partner.url(),
    );
    let docs = render_with_manual_pods("headers-e2e", &values);
    let args = webhook_args(&docs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hook = launch("headers-e2e", &args);
    let pod = pod_with(
        "catalog",
        json!({"ringside.io/inject": "true", "ringside.io/app": "catalog",
               "ringside.io/native-sidecar": "false"}),
        json!({}),
        json!([{"name": "app", "image": "app:1"}]),
    );
    let patched = hook.inject(&pod);
    let c = container(&patched, "containers");
    // Files, never the environment.
    assert!(c.get("envFrom").is_none(), "{c}");
    for e in c["env"].as_array().unwrap() {
        assert!(e["valueFrom"].get("secretKeyRef").is_none(), "{e}");
    }
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ringside-headers")
        .unwrap_or_else(|| panic!("no header Secrets mounted: {c}"));
    assert_eq!(mount["readOnly"], true);
    // The app's own container never gets the key.
    let app = patched["spec"]["containers"].as_array().unwrap().iter();
    let app = app.filter(|c| c["name"] != "ringside").collect::<Vec<_>>();
    assert_eq!(app.len(), 1, "{patched:#}");
    assert!(
        !app[0].to_string().contains("ringside-headers"),
        "{:#}",
        app[0]
    );
    let mount_path = mount["mountPath"].as_str().unwrap();
    let dir = hook.dir.join("mounted-headers");
    let volume = volume(&patched, "ringside-headers").expect("the header Secrets' volume");
    assert_eq!(materialize_secrets(volume, &dir), 2, "{volume}");
    // The app's rendered config, with the directory for the mount path; the
    // listeners and the cluster (the pod's network) are the test's.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "rs-ringside-config-catalog")
        .expect("catalog's ConfigMap");
    let mut config: serde_yaml::Mapping =
        serde_yaml::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    for key in ["listen", "admin_listen", "log_level", "cluster"] {
        config.remove(key);
    }
    let yaml = serde_yaml::to_string(&config).unwrap();
    assert!(
        yaml.contains(&format!("value_file: {mount_path}/")),
        "{yaml}"
    );
    let yaml = yaml.replace(mount_path, dir.to_str().unwrap());
    runtime.block_on(async {
        let ringside = common::Ringside::start_yaml(&yaml).await;
        assert_eq!(ringside.get("/v1/items/1").await.status, 200);
        assert_eq!(
            origin.last_request_header("/v1/items/1", "authorization"),
            Some("Bearer cat-3f9a-token-value".to_string())
        );
        assert_eq!(
            origin.last_request_header("/v1/items/1", "x-api-key"),
            None,
            "the upstream's header stays with the upstream"
        );
        let quoted = common::get(upstream, "/quote").await.expect("the upstream");
        assert_eq!(quoted.status, 200);
        assert_eq!(
            partner.last_request_header("/quote", "x-api-key"),
            Some("partner-77c1-key-value".to_string())
        );
        assert_eq!(partner.last_request_header("/quote", "authorization"), None);
        let log = ringside.log();
        for (.., value) in SECRET_DATA {
            assert!(!log.contains(value), "a secret in the log:\n{log}");
            assert!(!c.to_string().contains(value));
        }
    });
}
