//! The Helm chart in `charts/ringside`, rendered by the real `helm` and
//! checked by `kubernetes-validate --strict` against Kubernetes 1.29 (the
//! oldest version we support natively) and the newest version the validator
//! ships, for several value sets; plus `helm lint --strict`, the schema's
//! rejections, and the manual-injection example chart.
//!
//! CRD kinds (ServiceMonitor, PodMonitor, Certificate, Issuer) are not in
//! kubernetes-validate's schemas and it has no option to skip them, so they
//! are split out of the stream and checked here for their required fields.
//!
//! Needs `helm` and `kubernetes-validate` on PATH: CI installs them with
//! tests/tools/install-k8s-tools.sh. Missing tools fail the tests, never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const OLDEST: &str = "1.29.0";
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PodMonitor", "Certificate", "Issuer"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/ringside")
}

fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg(if tool == "helm" {
            "version"
        } else {
            "--version"
        })
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is not installed or not working: run `bash tests/tools/install-k8s-tools.sh` \
         (CI runs it from .ci/run)"
    );
}

/// The newest Kubernetes version kubernetes-validate knows (its default, shown in --help).
fn newest() -> &'static str {
    static NEWEST: OnceLock<String> = OnceLock::new();
    NEWEST.get_or_init(|| {
        require("kubernetes-validate");
        let out = Command::new("kubernetes-validate")
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        let words: Vec<&str> = help.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "Defaults")
            .expect("kubernetes-validate --help names its default version");
        words[at + 2].trim_end_matches('.').to_string()
    })
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringside-helm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `helm template` with a values file; Ok(stdout) or Err(stderr).
fn template_in(chart: &Path, name: &str, values: &str, extra: &[&str]) -> Result<String, String> {
    require("helm");
    let dir = tmpdir(name);
    let file = dir.join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let out = Command::new("helm")
        .args([
            "template",
            "rs",
            chart.to_str().unwrap(),
            "--namespace",
            "ringside",
        ])
        .arg("-f")
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn template(name: &str, values: &str) -> String {
    template_in(&chart(), name, values, &["--kube-version", "1.30.0"])
        .unwrap_or_else(|e| panic!("helm template ({name}) failed:\n{e}"))
}

/// Split a rendered stream into documents, as YAML values.
fn documents(rendered: &str) -> Vec<serde_yaml::Value> {
    rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

fn kind(doc: &serde_yaml::Value) -> &str {
    doc.get("kind").and_then(|k| k.as_str()).unwrap_or("")
}

fn path<'a>(doc: &'a serde_yaml::Value, keys: &[&str]) -> Option<&'a serde_yaml::Value> {
    keys.iter().try_fold(doc, |v, k| v.get(*k))
}

/// Validate the built-in kinds with kubernetes-validate, the CRDs by hand.
/// Returns the documents for further checks.
fn validate(name: &str, rendered: &str) -> Vec<serde_yaml::Value> {
    let docs = documents(rendered);
    assert!(!docs.is_empty(), "{name}: nothing rendered");
    let dir = tmpdir(&format!("{name}-validate"));
    let mut files = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if CRD_KINDS.contains(&kind(doc)) {
            check_crd(name, doc);
            continue;
        }
        let file = dir.join(format!("{i:02}-{}.yaml", kind(doc)));
        std::fs::write(&file, serde_yaml::to_string(doc).unwrap()).unwrap();
        files.push(file);
    }
    for version in [OLDEST, newest()] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: kubernetes-validate --strict -k {version} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    docs
}

fn check_crd(name: &str, doc: &serde_yaml::Value) {
    let k = kind(doc);
    let api = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
    assert!(
        path(doc, &["metadata", "name"]).is_some(),
        "{name}: {k} without a name"
    );
    assert!(
        path(doc, &["metadata", "namespace"]).is_some(),
        "{name}: {k} without a namespace"
    );
    let need: &[&[&str]] = match k {
        "ServiceMonitor" => {
            assert_eq!(api, "monitoring.coreos.com/v1");
            &[&["spec", "selector", "matchLabels"], &["spec", "endpoints"]]
        }
        "PodMonitor" => {
            assert_eq!(api, "monitoring.coreos.com/v1");
            &[
                &["spec", "selector", "matchLabels"],
                &["spec", "podMetricsEndpoints"],
            ]
        }
        "Certificate" => {
            assert_eq!(api, "cert-manager.io/v1");
            &[
                &["spec", "secretName"],
                &["spec", "issuerRef", "name"],
                &["spec", "dnsNames"],
            ]
        }
        "Issuer" => {
            assert_eq!(api, "cert-manager.io/v1");
            &[&["spec", "selfSigned"]]
        }
        _ => &[],
    };
    for p in need {
        assert!(path(doc, p).is_some(), "{name}: {k} lacks {}", p.join("."));
    }
}

fn count(docs: &[serde_yaml::Value], k: &str) -> usize {
    docs.iter().filter(|d| kind(d) == k).count()
}

const APPS: &str = r#"
sidecar:
  origin: http://catalog-api.shop:8000
apps:
  - name: catalog
    namespace: shop
    selector: {app: catalog}
  - name: search
    selector: {app: search, tier: web}
"#;

#[test]
fn lint_strict() {
    require("helm");
    let out = Command::new("helm")
        .args(["lint", "--strict", chart().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm lint --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn defaults() {
    let docs = validate("defaults", &template("defaults", ""));
    for k in [
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
        "ServiceAccount",
    ] {
        assert_eq!(count(&docs, k), 1, "{k}");
    }
    // Peer secret + webhook TLS; the standalone ConfigMap.
    assert_eq!(count(&docs, "Secret"), 2);
    assert_eq!(count(&docs, "ConfigMap"), 1);
    let mwc = docs
        .iter()
        .find(|d| kind(d) == "MutatingWebhookConfiguration")
        .unwrap();
    let hook = &mwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"].as_str(), Some("Fail"));
    assert!(hook["clientConfig"]["caBundle"]
        .as_str()
        .is_some_and(|s| s.len() > 100));
    assert!(hook["matchConditions"][0]["expression"]
        .as_str()
        .unwrap()
        .contains("ringside.io/inject"));
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    let args = &deploy["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = args
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "inject");
    assert!(args.contains(&"--kube-version=v1.30.0"), "{args:?}");
    // The rendered sidecar config passes ringside's own checks.
    let cm = docs.iter().find(|d| kind(d) == "ConfigMap").unwrap();
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    ringside::config::Config::from_yaml(text, "configmap")
        .unwrap()
        .finish(ringside::config::Overrides {
            origin: Some("http://api:8000".into()),
            ..Default::default()
        })
        .unwrap();
}

#[test]
fn apps_config_and_peers() {
    let docs = validate("apps", &template("apps", APPS));
    // Standalone config in 2 namespaces (ringside, shop) + one per app.
    assert_eq!(count(&docs, "ConfigMap"), 4);
    assert_eq!(count(&docs, "Secret"), 3); // peer secret in ringside + shop, webhook TLS
    let secrets: Vec<&str> = docs
        .iter()
        .filter(|d| kind(d) == "Secret" && d["type"].as_str() == Some("Opaque"))
        .map(|d| d["data"]["secret"].as_str().unwrap())
        .collect();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0], secrets[1], "one peer secret in every namespace");
    let tokens: Vec<&str> = docs
        .iter()
        .filter(|d| kind(d) == "Secret" && d["type"].as_str() == Some("Opaque"))
        .map(|d| d["data"]["admin-token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens[0], tokens[1], "one admin token in every namespace");
    assert_ne!(
        tokens[0], secrets[0],
        "the admin token is not the peer secret"
    );
    let headless: Vec<_> = docs
        .iter()
        .filter(|d| kind(d) == "Service" && d["spec"]["clusterIP"].as_str() == Some("None"))
        .collect();
    assert_eq!(headless.len(), 2);
    let cm = docs
        .iter()
        .find(|d| {
            kind(d) == "ConfigMap"
                && d["metadata"]["name"].as_str() == Some("rs-ringside-config-catalog")
        })
        .expect("catalog's ConfigMap");
    assert_eq!(cm["metadata"]["namespace"].as_str(), Some("shop"));
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let config = ringside::config::Config::from_yaml(text, "catalog")
        .unwrap()
        .finish(ringside::config::Overrides {
            cluster_secret: Some("0123456789abcdef0123".into()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("rendered config rejected: {e}\n{text}"));
    assert!(config.cluster.enabled);
    let dns = config.cluster.membership.dns.expect("dns membership");
    assert_eq!(dns.name, "rs-ringside-catalog-peers.shop.svc.cluster.local");
    assert_eq!(dns.port, Some(7070));
}

#[test]
fn cert_manager() {
    let docs = validate(
        "cert-manager",
        &template("cert-manager", "certManager:\n  enabled: true\n"),
    );
    assert_eq!(count(&docs, "Certificate"), 1);
    assert_eq!(count(&docs, "Issuer"), 1);
    // Only the peer secret: cert-manager writes the TLS one.
    assert_eq!(count(&docs, "Secret"), 1);
    let mwc = docs
        .iter()
        .find(|d| kind(d) == "MutatingWebhookConfiguration")
        .unwrap();
    assert!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            .as_str()
            .is_some()
    );
    assert!(mwc["webhooks"][0]["clientConfig"].get("caBundle").is_none());
    // An existing issuer: no Issuer is created.
    let docs = validate(
        "cert-manager-issuer",
        &template(
            "cert-manager-issuer",
            "certManager:\n  enabled: true\n  issuerRef: {name: corp-ca, kind: ClusterIssuer}\n",
        ),
    );
    assert_eq!(count(&docs, "Issuer"), 0);
}

#[test]
fn webhook_off() {
    let docs = validate(
        "manual",
        &template("manual", &format!("webhook:\n  enabled: false\n{APPS}")),
    );
    assert_eq!(count(&docs, "MutatingWebhookConfiguration"), 0);
    assert_eq!(count(&docs, "Deployment"), 0);
    assert_eq!(count(&docs, "ConfigMap"), 4);
}

#[test]
fn monitoring() {
    let values = format!(
        "{APPS}\nmonitoring:\n  serviceMonitor: {{enabled: true, labels: {{release: prom}}}}\n  \
         podMonitor: {{enabled: true}}\n  dashboards: {{enabled: true}}\n"
    );
    let docs = validate("monitoring", &template("monitoring", &values));
    assert_eq!(count(&docs, "ServiceMonitor"), 2);
    assert_eq!(count(&docs, "PodMonitor"), 2);
    let dashboards: Vec<_> = docs
        .iter()
        .filter(|d| {
            kind(d) == "ConfigMap"
                && d["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1")
        })
        .collect();
    let files = std::fs::read_dir(chart().join("dashboards"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert!(files >= 1);
    assert_eq!(dashboards.len(), files);
    for d in dashboards {
        let data = d["data"].as_mapping().unwrap();
        for (_, json) in data {
            let v: serde_json::Value =
                serde_json::from_str(json.as_str().unwrap()).expect("dashboard JSON");
            assert!(v.get("title").is_some() && v.get("panels").is_some());
        }
    }
}

#[test]
fn network_policy_and_pdb() {
    let values = format!(
        "{APPS}\nnetworkPolicy: {{enabled: true}}\npodDisruptionBudget: {{enabled: true}}\n"
    );
    let docs = validate("netpol", &template("netpol", &values));
    assert_eq!(count(&docs, "PodDisruptionBudget"), 1);
    assert_eq!(count(&docs, "NetworkPolicy"), 2);
    let np = docs.iter().find(|d| kind(d) == "NetworkPolicy").unwrap();
    let rules = np["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(rules[0]["ports"][0]["port"].as_u64(), Some(7070));
    assert!(rules[0]["from"][0]["podSelector"].is_mapping());
    // Every other TCP port stays open: 1-7069 and 7071-65535.
    assert_eq!(rules[1]["ports"][0]["endPort"].as_u64(), Some(7069));
    assert_eq!(rules[1]["ports"][1]["port"].as_u64(), Some(7071));
}

#[test]
fn example_values() {
    let values = std::fs::read_to_string(root().join("examples/kubernetes/values.yaml")).unwrap();
    validate("example", &template("example", &values));
}

#[test]
fn schema_rejects_bad_values() {
    let cases: &[(&str, &str)] = &[
        ("webhook:\n  failurePolicy: Sometimes\n", "failurePolicy"),
        ("sidecar:\n  capacity: lots\n", "capacity"),
        ("sidecar:\n  origin: ftp://x\n", "origin"),
        ("sidecar:\n  peerPort: 70000\n", "peerPort"),
        ("sidecar:\n  nativeSidecar: maybe\n", "nativeSidecar"),
        (
            "apps:\n  - name: Bad_Name\n    selector: {app: x}\n",
            "name",
        ),
        ("apps:\n  - name: ok\n", "selector"),
        ("peerSecret: short\n", "peerSecret"),
        ("webhok:\n  enabled: true\n", "webhok"),
    ];
    for (values, field) in cases {
        match template_in(&chart(), "bad", values, &[]) {
            Ok(_) => panic!("values accepted but should not be:\n{values}"),
            Err(e) => assert!(
                e.contains(field) && e.contains("schema"),
                "error for {values:?} does not name {field}:\n{e}"
            ),
        }
    }
}

#[test]
fn manual_injection_example() {
    // A parent chart that includes ringside.sidecar; copy it so the
    // dependency build does not touch the repository.
    let dir = tmpdir("manual-example");
    let example = root().join("examples/kubernetes/manual-injection");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&example)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let copy = dir.join("manual-injection");
    // Point the file:// dependency at the real chart.
    let chart_yaml = std::fs::read_to_string(copy.join("Chart.yaml"))
        .unwrap()
        .replace(
            "file://../../../charts/ringside",
            &format!("file://{}", chart().display()),
        );
    std::fs::write(copy.join("Chart.yaml"), chart_yaml).unwrap();
    let out = Command::new("helm")
        .args(["dependency", "update", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered =
        template_in(&copy, "manual-example-t", "", &[]).unwrap_or_else(|e| panic!("{e}"));
    let docs = validate("manual-example", &rendered);
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    let sidecar = &deploy["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"].as_str(), Some("ringside"));
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    assert_eq!(
        sidecar["resources"]["requests"]["memory"].as_str(),
        Some("320Mi")
    );
    assert_eq!(
        sidecar["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let volumes = &deploy["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["configMap"]["name"].as_str(),
        Some("rs-ringside-config-catalog")
    );
}
