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
//! checkov (offline) holds the example's renders to two policies: images
//! pinned by digest, no secret in an environment variable.
//!
//! Needs `helm`, `kubernetes-validate` and `checkov` on PATH: CI installs
//! them with tests/tools/install-k8s-tools.sh. Missing tools fail the tests,
//! never skip.

mod common;
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
    common::process::require_tool(tool, common::process::K8S_TOOLS);
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

/// A directory for one call's files, removed when the call is done.
fn tmpdir(name: &str) -> common::ScratchDir {
    common::ScratchDir::new(&format!("helm-{name}"))
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
            // A CA is named by its commonName, a server certificate by its DNS names.
            let names: &[&str] = match path(doc, &["spec", "isCA"]) {
                Some(_) => &["spec", "commonName"],
                None => &["spec", "dnsNames"],
            };
            &[
                &["spec", "secretName"],
                &["spec", "issuerRef", "name"],
                names,
            ]
        }
        "Issuer" => {
            assert_eq!(api, "cert-manager.io/v1");
            match path(doc, &["spec", "ca"]) {
                Some(_) => &[&["spec", "ca", "secretName"]],
                None => &[&["spec", "selfSigned"]],
            }
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
    // Near-misses ("True", a label) reach the webhook, which warns; "false" does not.
    let condition = hook["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(
        condition.contains("annotations['ringside.io/inject'] != 'false'")
            && condition.contains("'ringside.io/inject' in object.metadata.labels"),
        "{condition}"
    );
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
    // No apps: a ringside.io/app annotation names no ConfigMap.
    assert!(args.contains(&"--apps="), "{args:?}");
    // Regular-container sidecars keep serving 5 s after SIGTERM by default.
    assert!(args.contains(&"--wait-before-exit-seconds=5"), "{args:?}");
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

/// The args of the webhook's container.
fn webhook_args(docs: &[serde_yaml::Value]) -> Vec<String> {
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// The namespace and the parsed config.yaml of `app`'s ConfigMap (release rs).
fn app_config(docs: &[serde_yaml::Value], app: &str) -> (String, ringside::config::Config) {
    let name = format!("rs-ringside-config-{app}");
    let cm = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && d["metadata"]["name"].as_str() == Some(&name))
        .unwrap_or_else(|| panic!("{app}'s ConfigMap"));
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let config = ringside::config::Config::from_yaml(text, app)
        .unwrap()
        .finish(ringside::config::Overrides {
            cluster_secret: Some("0123456789abcdef0123".into()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("rendered config rejected: {e}\n{text}"));
    let namespace = cm["metadata"]["namespace"].as_str().unwrap_or_default();
    (namespace.to_string(), config)
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
    let (namespace, config) = app_config(&docs, "catalog");
    assert_eq!(namespace, "shop");
    assert!(config.cluster.enabled);
    let ringside::config::MembershipConfig::Dns(dns) = config.cluster.membership else {
        panic!("dns membership: {:?}", config.cluster.membership)
    };
    assert_eq!(dns.name, "rs-ringside-catalog-peers.shop.svc.cluster.local");
    assert_eq!(dns.port, Some(7070));
    // The webhook knows which app has a ConfigMap in which namespace.
    let args = webhook_args(&docs);
    assert!(
        args.iter()
            .any(|a| a == "--apps=shop/catalog,ringside/search"),
        "{args:?}"
    );
}

#[test]
fn an_apps_peer_tls_secret_is_in_its_config_and_the_webhooks_args() {
    let values = format!("{APPS}    peerTls: {{secretName: search-peer-tls}}\n");
    let docs = validate("peer-tls", &template("peer-tls", &values));
    let tls = app_config(&docs, "search")
        .1
        .cluster
        .tls
        .expect("search has peer TLS");
    assert_eq!(tls.ca_file, "/etc/ringside-peer-tls/ca.crt");
    assert_eq!(tls.cert_file, "/etc/ringside-peer-tls/tls.crt");
    assert_eq!(tls.key_file, "/etc/ringside-peer-tls/tls.key");
    assert_eq!(
        tls.peer_name, "rs-ringside-search-peers.ringside.svc.cluster.local",
        "the certificate names the app's peers Service"
    );
    assert!(
        app_config(&docs, "catalog").1.cluster.tls.is_none(),
        "catalog has none"
    );
    let args = webhook_args(&docs);
    assert!(
        args.iter()
            .any(|a| a == "--peer-tls-secrets=ringside/search=search-peer-tls"),
        "{args:?}"
    );
    // Without any, no flag.
    let args = webhook_args(&documents(&template("no-peer-tls", APPS)));
    assert!(
        !args.iter().any(|a| a.starts_with("--peer-tls-secrets")),
        "{args:?}"
    );
}

/// The config.yaml of the ConfigMap `name` in `namespace` (release rs).
fn config_text<'a>(docs: &'a [serde_yaml::Value], name: &str, namespace: &str) -> &'a str {
    docs.iter()
        .find(|d| {
            kind(d) == "ConfigMap"
                && d["metadata"]["name"].as_str() == Some(name)
                && d["metadata"]["namespace"].as_str() == Some(namespace)
        })
        .and_then(|cm| cm["data"]["config.yaml"].as_str())
        .unwrap_or_else(|| panic!("no ConfigMap {namespace}/{name}"))
}

/// The environment the chart's sidecar gives ringside (`ringside.sidecar`,
/// and the webhook alike) for the default values: listeners, threads and the
/// peer Secret's files.
const SIDECAR_ENV: &[(&str, &str)] = &[
    ("RINGSIDE_LISTEN", "127.0.0.1:8080"),
    ("RINGSIDE_ADMIN_LISTEN", "0.0.0.0:9090"),
    ("RINGSIDE_PEER_LISTEN", "0.0.0.0:7070"),
    ("RINGSIDE_THREADS", "2"),
    (
        "RINGSIDE_CLUSTER_SECRET_FILE",
        "/etc/ringside-secret/secret",
    ),
    (
        "RINGSIDE_ADMIN_TOKEN_FILE",
        "/etc/ringside-secret/admin-token",
    ),
];

/// The real `ringside check-config` on a rendered config.yaml, in the
/// sidecar's environment: Ok, or its message.
fn check_config(name: &str, config: &str) -> Result<(), String> {
    let dir = tmpdir(&format!("{name}-check-config"));
    let file = dir.join("config.yaml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringside"));
    common::process::without_ringside_env(&mut command);
    let out = command
        .arg("check-config")
        .arg(&file)
        .envs(SIDECAR_ENV.iter().copied())
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Every rendered ConfigMap passes the real `ringside check-config`.
fn every_config_passes_check_config(name: &str, docs: &[serde_yaml::Value]) {
    // ringside's configs; the chart's other ConfigMaps (dashboards) hold none.
    let configs: Vec<_> = (docs.iter())
        .filter(|d| kind(d) == "ConfigMap")
        .filter_map(|cm| Some((cm, cm["data"]["config.yaml"].as_str()?)))
        .collect();
    assert!(!configs.is_empty(), "{name}: no ringside ConfigMap");
    for (cm, text) in configs {
        let which = cm["metadata"]["name"].as_str().unwrap();
        check_config(name, text)
            .unwrap_or_else(|e| panic!("{name}: {which} refused by check-config: {e}\n{text}"));
    }
}

/// A global config (sidecar.extraConfig) and one app's own config over it.
const MERGED: &str = r#"
sidecar:
  origin: http://catalog-api.shop:8000
  extraConfig:
    origin: {read_timeout: 10s, verify_tls: false}
    cache:
      include_query: true
      credential_headers_extra: [X-Tenant-Key]
      rules:
        - {prefix: /static/, ttl: 1h}
apps:
  - name: catalog
    namespace: shop
    selector: {app: catalog}
    config:
      origin: {verify_tls: true}
      cache:
        include_query: false
        rules:
          - {prefix: /v1/, ttl: 60s, scope: per-credential}
  - name: search
    namespace: shop
    selector: {app: search}
"#;

/// `apps[].config` is merged over the global config as values.yaml says:
/// maps key by key (what the app does not set keeps the global value), any
/// other value replaced, lists included (the app's rules are its rules), and
/// false over true. Apps without
/// a config of their own, and the standalone config, get the global one;
/// every rendered config passes the real `ringside check-config`.
#[test]
fn an_apps_config_is_merged_over_the_global_config() {
    use ringside::config::Scope;
    use std::time::Duration;
    let docs = validate("merged", &template("merged", MERGED));
    let rules = |c: &ringside::config::Config| {
        c.cache
            .rules
            .iter()
            .map(|r| (r.prefix.clone(), r.ttl, r.scope))
            .collect::<Vec<_>>()
    };
    let (_, catalog) = app_config(&docs, "catalog");
    assert_eq!(
        rules(&catalog),
        vec![(
            "/v1/".to_string(),
            Some(Duration::from_secs(60)),
            Scope::PerCredential
        )],
        "the app's list replaces the global one"
    );
    assert!(
        catalog.origin.verify_tls,
        "the app's true over the global false"
    );
    assert!(
        !catalog.cache.include_query,
        "the app's false over the global true"
    );
    assert_eq!(
        catalog.origin.read_timeout,
        Duration::from_secs(10),
        "a key the app does not set keeps the global value"
    );
    assert_eq!(catalog.cache.credential_headers_extra, ["X-Tenant-Key"]);
    let global = |c: &ringside::config::Config| {
        assert_eq!(
            rules(c),
            vec![(
                "/static/".to_string(),
                Some(Duration::from_secs(3600)),
                Scope::Shared
            )]
        );
        assert!(!c.origin.verify_tls && c.cache.include_query);
        assert_eq!(c.origin.read_timeout, Duration::from_secs(10));
    };
    global(&app_config(&docs, "search").1);
    let standalone = config_text(&docs, "rs-ringside-config", "shop");
    global(
        &ringside::config::Config::from_yaml(standalone, "standalone")
            .unwrap()
            .finish(Default::default())
            .unwrap(),
    );
    every_config_passes_check_config("merged", &docs);
}

/// What the schema cannot see (a contradiction between fields) the rendered
/// config's `ringside check-config` refuses, naming the field: the check
/// the merge test relies on can fail.
#[test]
fn check_config_refuses_a_contradiction_the_schema_lets_through() {
    let values = format!("{APPS}    config:\n      cache:\n        rules:\n          - {{prefix: /v1/, override: true}}\n");
    let docs = documents(&template("override-without-ttl", &values));
    let text = config_text(&docs, "rs-ringside-config-search", "ringside");
    let e = check_config("override-without-ttl", text).expect_err("override without a ttl");
    assert!(
        e.contains("cache.rules[0].override: set without a ttl"),
        "{e}"
    );
}

/// A wrong scope (or any policy value of a rule) fails `helm template`
/// itself, at the value's path, listing what it may be.
#[test]
fn a_wrong_scope_fails_the_render_naming_the_field_and_the_scopes() {
    let values = format!("{APPS}    config:\n      cache:\n        rules:\n          - {{prefix: /v1/, ttl: 60s, scope: per-user}}\n");
    let e = template_in(&chart(), "bad-scope", &values, &[]).expect_err("scope: per-user");
    assert!(
        e.contains("/apps/1/config/cache/rules/0/scope")
            && e.contains("'shared', 'per-credential', 'shared-despite-credentials'"),
        "{e}"
    );
    // The same in the global config, and in an upstream's rules.
    let global =
        "sidecar:\n  extraConfig:\n    cache:\n      rules: [{prefix: /, scope: private}]\n";
    let e = template_in(&chart(), "bad-global-scope", global, &[]).expect_err("scope: private");
    assert!(
        e.contains("/sidecar/extraConfig/cache/rules/0/scope"),
        "{e}"
    );
    let upstream = format!(
        "{APPS}    config:\n      upstreams:\n        - listen: 127.0.0.1:8081\n          \
         origin: https://partner.example.com\n          rules: [{{prefix: /, scope: mine}}]\n"
    );
    let e = template_in(&chart(), "bad-upstream-scope", &upstream, &[]).expect_err("mine");
    assert!(
        e.contains("/apps/1/config/upstreams/0/rules/0/scope"),
        "{e}"
    );
}

/// Per app, a header injected into the origin's requests from a key of a
/// Secret: the app's config names the file the key is mounted as
/// (`value_file`), never an environment variable, for the app's origin and
/// for an upstream it names; the webhook is told which keys to mount, and
/// other apps get none. The configs pass `ringside check-config`.
#[test]
fn an_injected_header_reads_its_secret_from_a_mounted_file() {
    let values = r#"
sidecar:
  origin: http://catalog-api.shop:8000
apps:
  - name: catalog
    namespace: shop
    selector: {app: catalog}
    config:
      upstreams:
        - {listen: "127.0.0.1:8081", origin: "https://partner.example.com"}
    injectHeaders:
      - {name: Authorization, secret: catalog-api-key, key: token, prefix: "Bearer "}
      - {name: X-Client-Id, secret: catalog-api-key, key: client-id}
      - {name: X-Api-Key, secret: partner-key, key: key, origin: "https://partner.example.com", replace: false}
  - name: search
    namespace: shop
    selector: {app: search}
"#;
    let docs = validate("inject-headers", &template("inject-headers", values));
    let headers = |list: &[ringside::config::InjectHeader]| {
        list.iter()
            .map(|h| {
                assert!(h.value_env.is_empty(), "{h:?}");
                (
                    h.name.clone(),
                    h.value_file.clone(),
                    h.prefix.clone(),
                    h.replace,
                )
            })
            .collect::<Vec<_>>()
    };
    let (_, catalog) = app_config(&docs, "catalog");
    let file = |secret: &str, key: &str| format!("/etc/ringside-headers/{secret}/{key}");
    assert_eq!(
        headers(&catalog.origin.inject_headers),
        vec![
            (
                "Authorization".to_string(),
                file("catalog-api-key", "token"),
                "Bearer ".to_string(),
                true
            ),
            (
                "X-Client-Id".to_string(),
                file("catalog-api-key", "client-id"),
                String::new(),
                true
            ),
        ]
    );
    assert_eq!(
        headers(&catalog.upstreams[0].inject_headers),
        vec![(
            "X-Api-Key".to_string(),
            file("partner-key", "key"),
            String::new(),
            false
        )]
    );
    let (_, search) = app_config(&docs, "search");
    assert!(search.origin.inject_headers.is_empty());
    let args = webhook_args(&docs);
    assert!(
        args.iter().any(|a| a
            == "--app-header-secrets=shop/catalog=catalog-api-key/client-id,\
                shop/catalog=catalog-api-key/token,shop/catalog=partner-key/key"),
        "{args:?}"
    );
    every_config_passes_check_config("inject-headers", &docs);
    // Without injected headers, no flag.
    let args = webhook_args(&documents(&template("no-inject-headers", APPS)));
    assert!(
        !args.iter().any(|a| a.starts_with("--app-header-secrets")),
        "{args:?}"
    );
}

/// An app's capacity is its sidecars' cache capacity (its ConfigMap) and
/// the webhook sizes their memory by it; other apps keep sidecar.capacity. A
/// capacity whose memory request exceeds an explicit limit fails the
/// render, naming the app's capacity.
#[test]
fn an_apps_capacity_sizes_its_sidecars() {
    let values = APPS.replace(
        "    selector: {app: catalog}\n",
        "    selector: {app: catalog}\n    capacity: 1GiB\n",
    );
    let docs = validate("app-capacity", &template("app-capacity", &values));
    assert_eq!(app_config(&docs, "catalog").1.cache.capacity, 1 << 30);
    assert_eq!(app_config(&docs, "search").1.cache.capacity, 256 << 20);
    let args = webhook_args(&docs);
    assert!(
        args.iter()
            .any(|a| a == "--app-capacities=shop/catalog=1GiB"),
        "{args:?}"
    );
    let e = template_in(
        &chart(),
        "app-capacity-limit",
        &values.replace("sidecar:\n", "sidecar:\n  memoryLimit: 1Gi\n"),
        &[],
    )
    .expect_err("a 1228Mi request under a 1Gi limit");
    assert!(
        e.contains("apps[catalog].capacity: memory request 1228Mi is above the memory limit 1Gi"),
        "{e}"
    );
}

/// The fields the chart sets itself, secrets, and injected headers written
/// as ringside config are refused in sidecar.extraConfig and apps[].config,
/// the message naming the field and the value to set instead; an injected
/// header for an origin the app does not have, or twice for one origin, is
/// refused naming the entry.
#[test]
fn an_apps_config_cannot_set_what_the_chart_sets() {
    let app = |config: &str| format!("{APPS}    config:\n      {config}\n");
    let headers = |list: &str| format!("{APPS}    injectHeaders:\n{list}");
    let cases = [
        (app("cache: {capacity: 1GiB}"), "apps[search].config.cache.capacity: set by the chart from apps[].capacity"),
        (app("origin: {url: \"http://other:8000\"}"), "apps[search].config.origin.url: set by the chart from apps[].origin"),
        (app("listen: 127.0.0.1:9999"), "apps[search].config.listen: set by the chart"),
        (app("cluster: {secret: 0123456789abcdef0123}"), "apps[search].config.cluster.secret: a secret in a ConfigMap"),
        (app("admin_token: 0123456789abcdef0123"), "apps[search].config.admin_token: a secret in a ConfigMap"),
        (
            app("origin: {inject_headers: [{name: X-Api-Key, value_env: API_KEY}]}"),
            "apps[search].config.origin.inject_headers: use apps[].injectHeaders",
        ),
        (
            app("upstreams: [{listen: \"127.0.0.1:8081\", origin: \"https://p.example.com\", \
                 inject_headers: [{name: X-Api-Key, value_file: /k}]}]"),
            "apps[search].config.upstreams[0].inject_headers: use apps[].injectHeaders with origin: https://p.example.com",
        ),
        (
            "sidecar:\n  extraConfig:\n    threads: 4\n".to_string(),
            "sidecar.extraConfig.threads: set by the chart: sidecar.threads",
        ),
        (
            headers("      - {name: X-Api-Key, secret: k, key: key, origin: \"https://elsewhere.example.com\"}\n"),
            "apps[search].injectHeaders[0].origin: \"https://elsewhere.example.com\" is neither the app's origin (http://catalog-api.shop:8000)",
        ),
        (
            headers("      - {name: X-Api-Key, secret: k, key: a}\n      - {name: x-api-key, secret: k, key: b}\n"),
            "apps[search].injectHeaders[1].name: x-api-key is injected into the app's origin twice",
        ),
    ];
    for (values, wanted) in cases {
        let e = template_in(&chart(), "chart-owned", &values, &[])
            .expect_err(&format!("rendered:\n{values}"));
        assert!(e.contains(wanted), "{values}\nwanted {wanted:?} in:\n{e}");
    }
}

#[test]
fn cert_manager() {
    let docs = validate(
        "cert-manager",
        &template("cert-manager", "certManager:\n  enabled: true\n"),
    );
    // The chart's own CA: a self-signed root, a CA Issuer, and the
    // webhook's certificate from it (a renewal keeps the CA and the caBundle).
    assert_eq!(count(&docs, "Certificate"), 2);
    assert_eq!(count(&docs, "Issuer"), 2);
    let ca = docs
        .iter()
        .find(|d| kind(d) == "Certificate" && d["spec"]["isCA"].as_bool() == Some(true))
        .expect("a CA Certificate");
    let ca_issuer = docs
        .iter()
        .find(|d| kind(d) == "Issuer" && d["spec"]["ca"]["secretName"] == ca["spec"]["secretName"])
        .expect("an Issuer of the CA's Secret");
    let leaf = docs
        .iter()
        .find(|d| kind(d) == "Certificate" && d["spec"].get("isCA").is_none())
        .unwrap();
    assert_eq!(
        leaf["spec"]["issuerRef"]["name"],
        ca_issuer["metadata"]["name"]
    );
    let mwc = docs
        .iter()
        .find(|d| kind(d) == "MutatingWebhookConfiguration")
        .unwrap();
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some(format!("ringside/{}", leaf["metadata"]["name"].as_str().unwrap()).as_str())
    );
    let volumes = &docs.iter().find(|d| kind(d) == "Deployment").unwrap()["spec"]["template"]
        ["spec"]["volumes"];
    assert_eq!(
        volumes[0]["secret"]["secretName"],
        leaf["spec"]["secretName"]
    );
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

/// A CA certificate as a caBundle holds it: base64 of its PEM.
fn ca_bundle() -> String {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    base64::engine::general_purpose::STANDARD.encode(ca.pem())
}

/// The lines of `b` not in `a`, for a readable failure.
fn changed_lines(a: &str, b: &str) -> String {
    let before: std::collections::HashSet<&str> = a.lines().collect();
    let changed: Vec<&str> = b.lines().filter(|l| !before.contains(l)).collect();
    changed.join("\n")
}

/// Argo CD and `helm template | kubectl apply` render without a cluster to
/// look the existing Secrets up in: given an existing webhook TLS Secret and
/// its caBundle (or cert-manager) and existing peer Secrets (or the values),
/// two renders are byte-identical, so nothing rotates on every sync.
#[test]
fn gitops_renders_are_byte_identical() {
    let ca = ca_bundle();
    let peers = "existingPeerSecret: ringside-peers\n";
    let given = "peerSecret: 0123456789abcdef0123\nadminToken: fedcba9876543210fedc\n";
    let cases = [
        (
            "existing-tls",
            format!("{APPS}{peers}webhook:\n  tls:\n    existingSecret: webhook-tls\n    caBundle: {ca}\n"),
        ),
        ("cert-manager", format!("{APPS}{peers}certManager:\n  enabled: true\n")),
        (
            "cert-manager-ca",
            format!("{APPS}{given}certManager:\n  enabled: true\nwebhook:\n  tls:\n    caBundle: {ca}\n"),
        ),
    ];
    for (name, values) in &cases {
        let first = template(&format!("{name}-1"), values);
        let second = template(&format!("{name}-2"), values);
        assert!(
            first == second,
            "{name}: two renders differ:\n{}",
            changed_lines(&first, &second)
        );
        let docs = validate(name, &first);
        let mwc = docs
            .iter()
            .find(|d| kind(d) == "MutatingWebhookConfiguration")
            .unwrap();
        let bundle = mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str();
        let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
        let pod = &deploy["spec"]["template"]["spec"];
        assert!(
            deploy["spec"]["template"]["metadata"]
                .get("annotations")
                .is_none(),
            "{name}: no checksum of a certificate the chart does not hold"
        );
        let args = pod["containers"][0]["args"].as_sequence().unwrap();
        let has_arg = |a: &str| args.iter().any(|x| x.as_str() == Some(a));
        let secrets: Vec<_> = docs.iter().filter(|d| kind(d) == "Secret").collect();
        match *name {
            "existing-tls" => {
                assert_eq!(bundle, Some(ca.as_str()));
                assert_eq!(
                    pod["volumes"][0]["secret"]["secretName"].as_str(),
                    Some("webhook-tls")
                );
                assert!(secrets.is_empty(), "{name}: {secrets:?}");
                assert!(has_arg("--secret=ringside-peers"), "{args:?}");
            }
            "cert-manager" => {
                assert_eq!(bundle, None, "cert-manager's CA injector fills it");
                assert!(secrets.is_empty(), "{name}: {secrets:?}");
            }
            _ => {
                // A known CA: no CA injector needed.
                assert_eq!(bundle, Some(ca.as_str()));
                assert!(mwc["metadata"].get("annotations").is_none(), "{mwc:?}");
                assert_eq!(
                    secrets.len(),
                    2,
                    "the given peer secret, in ringside and shop"
                );
            }
        }
    }
    // What the test can tell: without them, every render makes a new CA.
    let first = template("generated-1", APPS);
    let second = template("generated-2", APPS);
    assert_ne!(first, second);
}

#[test]
fn webhook_tls_values_must_fit_together() {
    let ca = ca_bundle();
    let cases = [
        (
            "webhook:\n  tls:\n    existingSecret: webhook-tls\n".to_string(),
            "webhook.tls.caBundle: empty",
        ),
        (
            "webhook:\n  tls:\n    existingSecret: webhook-tls\n    caBundle: bm90IGEgY2VydA==\n"
                .to_string(),
            "webhook.tls.caBundle: not a base64-encoded PEM certificate",
        ),
        (
            format!("webhook:\n  tls:\n    caBundle: {ca}\n"),
            "webhook.tls.caBundle: given, but the chart generates",
        ),
        (
            format!(
                "certManager: {{enabled: true}}\nwebhook:\n  tls:\n    existingSecret: w\n    caBundle: {ca}\n"
            ),
            "webhook.tls.existingSecret, certManager.enabled: choose one",
        ),
        (
            "webhook:\n  tls:\n    caBundle: \"not base64!\"\n".to_string(),
            "caBundle",
        ),
    ];
    for (values, message) in &cases {
        match template_in(&chart(), "tls-bad", values, &[]) {
            Ok(_) => panic!("rendered, but should not be:\n{values}"),
            Err(e) => assert!(e.contains(message), "{values}: {e}"),
        }
    }
}

/// Which webhooks of the MutatingWebhookConfiguration `docs` would send a
/// pod of a namespace with these labels to: their paths.
fn webhooks_for(docs: &[serde_yaml::Value], namespace_labels: &[(&str, &str)]) -> Vec<String> {
    let mwc = docs
        .iter()
        .find(|d| kind(d) == "MutatingWebhookConfiguration")
        .unwrap();
    mwc["webhooks"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|hook| selects(&hook["namespaceSelector"], namespace_labels))
        .map(|hook| {
            hook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A namespace labelled ringside.io/inject=enabled sends its pods to the
/// namespace-wide webhook only (the webhook then injects those that do not
/// opt out, tests/inject_webhook.rs); other namespaces to the annotation's
/// only; the release namespace to neither. `namespaces` get the standalone
/// ConfigMap and the Secret, and the webhook knows which namespaces have them.
#[test]
fn a_namespace_label_opts_every_pod_in() {
    let values = "namespaces: [batch]\n";
    let docs = validate("namespace-opt-in", &template("namespace-opt-in", values));
    let enabled = [
        ("kubernetes.io/metadata.name", "batch"),
        ("ringside.io/inject", "enabled"),
    ];
    assert_eq!(webhooks_for(&docs, &enabled), ["/mutate/namespace"]);
    assert_eq!(webhooks_for(&docs, SHOP), ["/mutate"]);
    let release = [
        ("kubernetes.io/metadata.name", "ringside"),
        ("ringside.io/inject", "enabled"),
    ];
    assert!(webhooks_for(&docs, &release).is_empty());
    let mwc = docs
        .iter()
        .find(|d| kind(d) == "MutatingWebhookConfiguration")
        .unwrap();
    let condition = mwc["webhooks"][1]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        condition.contains("object.metadata.annotations['ringside.io/inject'] == 'false'")
            && condition.starts_with('!'),
        "opted-out pods are not even sent: {condition}"
    );
    for k in ["ConfigMap", "Secret"] {
        assert!(
            docs.iter()
                .any(|d| kind(d) == k && d["metadata"]["namespace"].as_str() == Some("batch")),
            "no {k} in batch"
        );
    }
    let args = webhook_args(&docs);
    assert!(
        args.iter()
            .any(|a| a == "--config-namespaces=ringside,batch"),
        "{args:?}"
    );
    // Off: one webhook, for every namespace but the excluded ones.
    let off = validate(
        "namespace-opt-in-off",
        &template(
            "namespace-opt-in-off",
            "webhook: {namespaceInjection: false}\n",
        ),
    );
    assert_eq!(webhooks_for(&off, &enabled), ["/mutate"]);
}

/// OpenShift's restricted-v2 SCC assigns a UID from the namespace's range
/// and refuses a fixed one: with the UIDs set to null, neither the webhook's
/// pod nor the injected sidecar (the webhook's --security-context) fixes
/// one, and both stay non-root.
#[test]
fn security_contexts_can_leave_the_uid_to_openshift() {
    let values = "sidecar:\n  securityContext: {runAsUser: null, runAsGroup: null}\n\
                  webhook:\n  podSecurityContext: {runAsUser: null, runAsGroup: null}\n";
    let docs = validate("openshift", &template("openshift", values));
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert!(pod["securityContext"].get("runAsUser").is_none(), "{pod:?}");
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let args = webhook_args(&docs);
    let flag = args
        .iter()
        .find_map(|a| a.strip_prefix("--security-context="))
        .expect("--security-context");
    let injected: serde_json::Value = serde_json::from_str(flag).unwrap();
    assert_eq!(injected["runAsNonRoot"], true);
    assert!(injected.get("runAsUser").is_none() && injected.get("runAsGroup").is_none());
    assert_eq!(injected["capabilities"]["drop"][0], "ALL");
    // The default fixes the image's UID.
    let args = webhook_args(&documents(&template("uid-default", "")));
    let flag = args
        .iter()
        .find_map(|a| a.strip_prefix("--security-context="))
        .unwrap();
    assert!(flag.contains("\"runAsUser\":65532"), "{flag}");
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

/// What a default kube-prometheus-stack installed as release
/// `kube-prometheus-stack` selects: its Prometheus has
/// `serviceMonitorSelector`, `podMonitorSelector` and `ruleSelector` each
/// `matchLabels: {release: <release>}` (the `*SelectorNilUsesHelmValues`
/// defaults) and `{}` namespace selectors (every namespace).
/// The webhook's own /metrics are scraped by a ServiceMonitor of its
/// Service's https port, checking the certificate against the webhook's CA
/// (the TLS Secret's ca.crt, or a ConfigMap of a given caBundle) for the
/// Service's name, under a job of their own.
#[test]
fn the_webhooks_own_metrics_are_scraped_over_verified_tls() {
    let ca = ca_bundle();
    let on = "monitoring:\n  webhookMonitor: {enabled: true}\n";
    let cases = [
        ("webhook-monitor", on.to_string()),
        (
            "webhook-monitor-existing",
            format!("{on}webhook:\n  tls:\n    existingSecret: webhook-tls\n    caBundle: {ca}\n"),
        ),
    ];
    for (name, values) in &cases {
        let docs = validate(name, &template(name, values));
        let monitors: Vec<_> = docs
            .iter()
            .filter(|d| kind(d) == "ServiceMonitor")
            .collect();
        assert_eq!(monitors.len(), 1, "{name}");
        let sm = monitors[0];
        let services: Vec<_> = docs
            .iter()
            .filter(|d| kind(d) == "Service")
            .filter(|svc| {
                selects(
                    &sm["spec"]["selector"],
                    &labels_of(&svc["metadata"]["labels"]),
                )
            })
            .collect();
        assert_eq!(services.len(), 1, "{name}: selects {services:?}");
        let service = services[0];
        let mwc = docs
            .iter()
            .find(|d| kind(d) == "MutatingWebhookConfiguration")
            .unwrap();
        assert_eq!(
            mwc["webhooks"][0]["clientConfig"]["service"]["name"], service["metadata"]["name"],
            "{name}: the Service the API server calls"
        );
        let endpoint = &sm["spec"]["endpoints"][0];
        assert_eq!(endpoint["scheme"].as_str(), Some("https"));
        let port = endpoint["port"].as_str().unwrap();
        assert!(
            service["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["name"].as_str() == Some(port)),
            "{name}: no Service port {port}"
        );
        let tls = &endpoint["tlsConfig"];
        assert_eq!(
            tls["serverName"].as_str(),
            Some(
                format!(
                    "{}.ringside.svc",
                    service["metadata"]["name"].as_str().unwrap()
                )
                .as_str()
            )
        );
        assert!(tls.get("insecureSkipVerify").is_none());
        let job = endpoint["relabelings"][0]["replacement"].as_str();
        assert_eq!(job, Some("ringside-webhook"), "not the sidecars' job");
        match *name {
            "webhook-monitor" => {
                let secret = tls["ca"]["secret"]["name"].as_str().unwrap();
                let rendered = docs
                    .iter()
                    .find(|d| kind(d) == "Secret" && d["metadata"]["name"].as_str() == Some(secret))
                    .unwrap_or_else(|| panic!("no Secret {secret}"));
                assert_eq!(tls["ca"]["secret"]["key"].as_str(), Some("ca.crt"));
                assert!(rendered["data"]["ca.crt"]
                    .as_str()
                    .is_some_and(|c| c.len() > 100));
                assert_eq!(
                    rendered["data"]["ca.crt"].as_str(),
                    mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
                    "the CA the API server trusts"
                );
            }
            _ => {
                use base64::Engine;
                let map = tls["ca"]["configMap"]["name"].as_str().unwrap();
                let rendered = docs
                    .iter()
                    .find(|d| kind(d) == "ConfigMap" && d["metadata"]["name"].as_str() == Some(map))
                    .unwrap_or_else(|| panic!("no ConfigMap {map}"));
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(&ca)
                    .unwrap();
                assert_eq!(
                    rendered["data"]["ca.crt"].as_str(),
                    Some(String::from_utf8(pem).unwrap().as_str())
                );
            }
        }
    }
}

const KPS_SELECTOR: (&str, &str) = ("release", "kube-prometheus-stack");
const MONITORING_KINDS: &[&str] = &["ServiceMonitor", "PodMonitor", "PrometheusRule"];

fn selected_by_kube_prometheus_stack(doc: &serde_yaml::Value) -> bool {
    doc["metadata"]["labels"][KPS_SELECTOR.0].as_str() == Some(KPS_SELECTOR.1)
}

#[test]
fn a_default_kube_prometheus_stack_picks_up_every_monitoring_object() {
    // The example, as the walkthrough installs it.
    let values = std::fs::read_to_string(root().join("examples/kubernetes/values.yaml")).unwrap();
    let docs = validate("kps-example", &template("kps-example", &values));
    assert_eq!(
        count(&docs, "PodMonitor"),
        1,
        "the example scrapes with a PodMonitor"
    );
    assert_eq!(
        count(&docs, "PrometheusRule"),
        1,
        "the example installs the rules"
    );
    for doc in docs.iter().filter(|d| MONITORING_KINDS.contains(&kind(d))) {
        assert!(
            selected_by_kube_prometheus_stack(doc),
            "kube-prometheus-stack does not select the example's {}: {:?}",
            kind(doc),
            doc["metadata"]
        );
    }

    // Every kind, one value, whatever the release is called.
    let values = format!(
        "{APPS}\nfullnameOverride: platform-cache\nmonitoring:\n  selectorLabels: {{release: \
         kube-prometheus-stack}}\n  serviceMonitor: {{enabled: true, labels: {{team: shop}}}}\n  \
         podMonitor: {{enabled: true}}\nprometheusRule: {{enabled: true}}\n"
    );
    let docs = validate("kps", &template("kps", &values));
    for k in MONITORING_KINDS {
        let objects: Vec<_> = docs.iter().filter(|d| kind(d) == *k).collect();
        assert!(!objects.is_empty(), "no {k}");
        for doc in objects {
            assert!(
                selected_by_kube_prometheus_stack(doc),
                "{k} not selected: {doc:?}"
            );
        }
    }
    let service_monitors = docs.iter().filter(|d| kind(d) == "ServiceMonitor");
    for sm in service_monitors {
        assert_eq!(
            sm["metadata"]["labels"]["team"].as_str(),
            Some("shop"),
            "own labels kept"
        );
        // It selects its app's peers Service, in its namespace, by a port name it has.
        let namespace = &sm["metadata"]["namespace"];
        let service = docs
            .iter()
            .filter(|d| kind(d) == "Service" && d["metadata"]["namespace"] == *namespace)
            .find(|svc| {
                selects(
                    &sm["spec"]["selector"],
                    &labels_of(&svc["metadata"]["labels"]),
                )
            })
            .unwrap_or_else(|| panic!("the ServiceMonitor selects no Service: {sm:?}"));
        let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
        assert!(
            service["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["name"].as_str() == Some(port)),
            "the Service has no port {port}"
        );
    }
    for pm in docs.iter().filter(|d| kind(d) == "PodMonitor") {
        // It selects the app's pods, by the sidecar's admin port name.
        let app = APPS_SELECTORS
            .iter()
            .find(|(ns, _)| pm["metadata"]["namespace"].as_str() == Some(*ns))
            .unwrap();
        assert!(selects(&pm["spec"]["selector"], app.1), "{pm:?}");
        let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["port"].as_str(), Some("ringside-admin"));
    }
    // Both monitors give their targets job="ringside", which RingsideSidecarDown
    // matches (tests/observability.rs fires it from these monitors' labels).
    for m in docs
        .iter()
        .filter(|d| matches!(kind(d), "ServiceMonitor" | "PodMonitor"))
    {
        let endpoints = m["spec"]["endpoints"]
            .as_sequence()
            .or(m["spec"]["podMetricsEndpoints"].as_sequence())
            .unwrap();
        let job = endpoints[0]["relabelings"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["targetLabel"].as_str() == Some("job"))
            .map(|r| r["replacement"].as_str());
        assert_eq!(job, Some(Some("ringside")), "{m:?}");
    }
}

/// The namespaces and pod labels of the apps in [`APPS`].
const APPS_SELECTORS: &[(&str, &[(&str, &str)])] = &[
    ("shop", &[("app", "catalog")]),
    ("ringside", &[("app", "search"), ("tier", "web")]),
];

fn labels_of(map: &serde_yaml::Value) -> Vec<(&str, &str)> {
    map.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?, v.as_str()?)))
        .collect()
}

// ------------------------------------------------------ NetworkPolicy ----

/// A pod that sends traffic, for [`admits`]: its namespace (name and
/// labels) and its own labels.
struct Source<'a> {
    namespace: &'a str,
    namespace_labels: &'a [(&'a str, &'a str)],
    labels: &'a [(&'a str, &'a str)],
}

/// The catalog pod's container ports by name: the app's `http` and the
/// injected sidecar's (tests/inject_webhook.rs checks the sidecar's names).
const CATALOG_PORTS: &[(&str, u64)] = &[
    ("http", 3000),
    ("ringside-admin", 9090),
    ("ringside-peer", 7070),
];

/// A label selector (matchLabels, matchExpressions) against labels.
fn selects(selector: &serde_yaml::Value, labels: &[(&str, &str)]) -> bool {
    let value = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let labels_ok = selector["matchLabels"]
        .as_mapping()
        .into_iter()
        .flatten()
        .all(|(k, v)| value(k.as_str().unwrap()) == v.as_str());
    let expressions_ok = selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .all(|e| {
            let have = value(e["key"].as_str().unwrap());
            let listed = |v: &str| {
                e["values"]
                    .as_sequence()
                    .is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(v)))
            };
            match e["operator"].as_str().unwrap() {
                "In" => have.is_some_and(listed),
                "NotIn" => !have.is_some_and(listed),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                op => panic!("unknown operator {op}"),
            }
        });
    labels_ok && expressions_ok
}

/// NetworkPolicy semantics for ingress to a catalog pod: is TCP traffic
/// from `source` to `port` admitted by these policies? (A pod selected by no
/// policy admits everything; selected by some, the union of their rules. A
/// rule without `from` admits every source, without `ports` every port; a
/// peer with only a podSelector means pods of the policy's namespace, with
/// only a namespaceSelector every pod of those namespaces.)
fn admits(policies: &[&serde_yaml::Value], source: &Source, port: u64) -> bool {
    if policies.is_empty() {
        return true;
    }
    policies.iter().any(|np| {
        let policy_ns = np["metadata"]["namespace"].as_str().unwrap();
        let from_ok = |rule: &serde_yaml::Value| match rule["from"].as_sequence() {
            None => true,
            Some(peers) => peers.iter().any(|peer| {
                let ns_ok = match peer.get("namespaceSelector") {
                    Some(sel) => selects(sel, source.namespace_labels),
                    None => source.namespace == policy_ns,
                };
                let pod_ok = peer
                    .get("podSelector")
                    .is_none_or(|sel| selects(sel, source.labels));
                ns_ok && pod_ok && peer.get("ipBlock").is_none()
            }),
        };
        let port_ok = |rule: &serde_yaml::Value| match rule["ports"].as_sequence() {
            None => true,
            Some(ports) => ports.iter().any(|p| {
                let tcp = p["protocol"].as_str().unwrap_or("TCP") == "TCP";
                let first = match &p["port"] {
                    serde_yaml::Value::Number(n) => n.as_u64().unwrap(),
                    serde_yaml::Value::String(name) => {
                        CATALOG_PORTS
                            .iter()
                            .find(|(n, _)| n == name)
                            .unwrap_or_else(|| panic!("no container port named {name}"))
                            .1
                    }
                    other => panic!("port {other:?}"),
                };
                let last = p["endPort"].as_u64().unwrap_or(first);
                tcp && (first..=last).contains(&port)
            }),
        };
        np["spec"]["ingress"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|rule| from_ok(rule) && port_ok(rule))
    })
}

/// The NetworkPolicies that select the catalog pods (app=catalog in shop).
fn catalog_policies(docs: &[serde_yaml::Value]) -> Vec<&serde_yaml::Value> {
    docs.iter()
        .filter(|d| kind(d) == "NetworkPolicy")
        .filter(|d| d["metadata"]["namespace"].as_str() == Some("shop"))
        .filter(|d| selects(&d["spec"]["podSelector"], &[("app", "catalog")]))
        .collect()
}

const SHOP: &[(&str, &str)] = &[("kubernetes.io/metadata.name", "shop")];
const MONITORING: &[(&str, &str)] = &[("kubernetes.io/metadata.name", "monitoring")];
const CATALOG: Source = Source {
    namespace: "shop",
    namespace_labels: SHOP,
    labels: &[("app", "catalog")],
};
const FRONTEND: Source = Source {
    namespace: "shop",
    namespace_labels: SHOP,
    labels: &[("app", "frontend")],
};
/// A kube-prometheus-stack Prometheus pod (labels set by Prometheus Operator).
const PROMETHEUS: Source = Source {
    namespace: "monitoring",
    namespace_labels: MONITORING,
    labels: &[
        ("app.kubernetes.io/name", "prometheus"),
        ("prometheus", "kube-prometheus-stack-prometheus"),
    ],
};

#[test]
fn network_policy_allows_only_what_ringside_needs() {
    let values = format!(
        "{APPS}\nnetworkPolicy: {{enabled: true}}\npodDisruptionBudget: {{enabled: true}}\n"
    );
    let docs = validate("netpol", &template("netpol", &values));
    assert_eq!(count(&docs, "PodDisruptionBudget"), 1);
    assert_eq!(count(&docs, "NetworkPolicy"), 2);
    // Never a rule open to every source or every port, and only ringside's ports.
    for np in docs.iter().filter(|d| kind(d) == "NetworkPolicy") {
        let types = np["spec"]["policyTypes"].as_sequence().unwrap();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].as_str(), Some("Ingress"));
        for rule in np["spec"]["ingress"].as_sequence().unwrap() {
            assert!(
                rule["from"].as_sequence().is_some_and(|f| !f.is_empty()),
                "a rule open to every source: {rule:?}"
            );
            let ports = rule["ports"]
                .as_sequence()
                .unwrap_or_else(|| panic!("a rule open to every port: {rule:?}"));
            for p in ports {
                assert!(p.get("endPort").is_none(), "a port range: {p:?}");
                let name = p["port"].as_str().unwrap_or_default();
                assert!(name.starts_with("ringside-"), "not a ringside port: {p:?}");
            }
        }
    }
    let policies = catalog_policies(&docs);
    assert_eq!(policies.len(), 1);
    let allowed = |source: &Source, port: u64| admits(&policies, source, port);
    // Peers reach the peer port, the scraper the admin port; nothing else.
    assert!(allowed(&CATALOG, 7070), "peers to the peer port");
    assert!(allowed(&PROMETHEUS, 9090), "Prometheus to the admin port");
    for (source, port, what) in [
        (&CATALOG, 3000, "the app port from a peer"),
        (&CATALOG, 9090, "the admin port from a peer"),
        (&FRONTEND, 3000, "the app port from another pod"),
        (&FRONTEND, 7070, "the peer port from another pod"),
        (&FRONTEND, 9090, "the admin port from another pod"),
        (&PROMETHEUS, 7070, "the peer port from Prometheus"),
        (&PROMETHEUS, 3000, "the app port from Prometheus"),
        (&FRONTEND, 22, "any other port"),
    ] {
        assert!(!allowed(source, port), "{what} is open");
    }

    // The app's own policy from the example adds exactly its port and sources.
    let text =
        std::fs::read_to_string(root().join("examples/kubernetes/app-networkpolicy.yaml")).unwrap();
    let own = validate("netpol-app", &text);
    let mut with_app: Vec<&serde_yaml::Value> = catalog_policies(&own);
    assert_eq!(with_app.len(), 1, "the example selects the catalog pods");
    with_app.extend(policies.iter().copied());
    assert!(admits(&with_app, &FRONTEND, 3000));
    assert!(admits(&with_app, &CATALOG, 7070));
    assert!(!admits(&with_app, &FRONTEND, 7070));
    assert!(!admits(&with_app, &PROMETHEUS, 3000));

    // Scrapers are configurable; none: the admin port is closed to every pod.
    let custom = format!(
        "{APPS}\nnetworkPolicy:\n  enabled: true\n  metricsFrom:\n    - namespaceSelector: \
         {{matchLabels: {{kubernetes.io/metadata.name: monitoring}}}}\n"
    );
    let docs = validate("netpol-custom", &template("netpol-custom", &custom));
    let policies = catalog_policies(&docs);
    assert!(admits(&policies, &PROMETHEUS, 9090));
    assert!(!admits(&policies, &FRONTEND, 9090));
    let none = format!("{APPS}\nnetworkPolicy: {{enabled: true, metricsFrom: []}}\n");
    let docs = validate("netpol-none", &template("netpol-none", &none));
    let policies = catalog_policies(&docs);
    assert!(!admits(&policies, &PROMETHEUS, 9090));
    assert!(admits(&policies, &CATALOG, 7070));
}

/// A pod of the ingress controller's namespace (as the example lists it).
const INGRESS: Source = Source {
    namespace: "ingress-nginx",
    namespace_labels: &[("kubernetes.io/metadata.name", "ingress-nginx")],
    labels: &[("app.kubernetes.io/name", "ingress-nginx")],
};

/// `apps[].allowAppIngressFrom` and `appPorts` open the app's own ports to
/// whom they list, in the chart's policy beside ringside's rules, and
/// nothing more: turning the policy on no longer cuts the app off.
#[test]
fn an_apps_own_ports_are_opened_to_whom_it_lists() {
    let values = APPS.replace(
        "    selector: {app: catalog}\n",
        "    selector: {app: catalog}\n    allowAppIngressFrom:\n      - podSelector: \
         {matchLabels: {app: frontend}}\n    appPorts: [http]\n",
    );
    let values = format!("{values}\nnetworkPolicy: {{enabled: true}}\n");
    let docs = validate("netpol-app-ports", &template("netpol-app-ports", &values));
    let policies = catalog_policies(&docs);
    assert_eq!(
        policies.len(),
        1,
        "one policy per app, the app's rule in it"
    );
    let allowed = |source: &Source, port: u64| admits(&policies, source, port);
    assert!(
        allowed(&FRONTEND, 3000),
        "the listed caller to the app port"
    );
    assert!(allowed(&CATALOG, 7070), "peers still reach the peer port");
    assert!(
        allowed(&PROMETHEUS, 9090),
        "the scraper still reaches /metrics"
    );
    for (source, port, what) in [
        (&FRONTEND, 7070, "the peer port from the app's caller"),
        (&FRONTEND, 9090, "the admin port from the app's caller"),
        (&PROMETHEUS, 3000, "the app port from Prometheus"),
        (&INGRESS, 3000, "the app port from a source not listed"),
    ] {
        assert!(!allowed(source, port), "{what} is open");
    }
    // The example: off, so nothing is isolated; on, its callers get in.
    let example = std::fs::read_to_string(root().join("examples/kubernetes/values.yaml")).unwrap();
    let docs = documents(&template("example-netpol-off", &example));
    assert_eq!(
        count(&docs, "NetworkPolicy"),
        0,
        "the example starts with it off"
    );
    let on = format!("{example}\nnetworkPolicy: {{enabled: true}}\n");
    let docs = validate("example-netpol-on", &template("example-netpol-on", &on));
    let policies = catalog_policies(&docs);
    assert!(admits(&policies, &FRONTEND, 3000));
    assert!(admits(&policies, &INGRESS, 3000));
    assert!(!admits(&policies, &FRONTEND, 7070));
    assert!(!admits(&policies, &INGRESS, 9090));
    // Ringside's own ports cannot be listed as the app's.
    for port in ["ringside-peer", "9090", "7070"] {
        let bad = on.replace("appPorts: [http]", &format!("appPorts: [{port}]"));
        let e = template_in(&chart(), "netpol-bad-port", &bad, &[]).expect_err(port);
        assert!(
            e.contains("apps[catalog].appPorts") && e.contains("one of ringside's ports"),
            "{port}: {e}"
        );
    }
}

#[test]
fn example_values() {
    let values = std::fs::read_to_string(root().join("examples/kubernetes/values.yaml")).unwrap();
    validate("example", &template("example", &values));
}

/// examples/kubernetes/api-caching.yaml over the typical install: it
/// renders and validates, the catalog caches /v1/ per credential, the
/// storefront's sidecars inject the weather API's key from its Secret, and
/// every config passes `ringside check-config`.
#[test]
fn the_api_caching_example() {
    let values = std::fs::read_to_string(root().join("examples/kubernetes/values.yaml")).unwrap();
    let overlay = root().join("examples/kubernetes/api-caching.yaml");
    let rendered = template_in(
        &chart(),
        "api-caching",
        &values,
        &["-f", overlay.to_str().unwrap(), "--kube-version", "1.30.0"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let docs = validate("api-caching", &rendered);
    let (_, catalog) = app_config(&docs, "catalog");
    let rule = &catalog.cache.rules[0];
    assert_eq!(
        (rule.prefix.as_str(), rule.scope),
        ("/v1/", ringside::config::Scope::PerCredential)
    );
    let (_, storefront) = app_config(&docs, "storefront");
    let injected = &storefront.origin.inject_headers[0];
    assert_eq!(
        (injected.name.as_str(), injected.value_file.as_str()),
        (
            "Authorization",
            "/etc/ringside-headers/weather-api-key/token"
        )
    );
    assert_eq!(storefront.cache.capacity, 128 << 20);
    let args = webhook_args(&docs);
    for wanted in [
        "--app-header-secrets=shop/storefront=weather-api-key/token",
        "--app-capacities=shop/storefront=128MiB",
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted}: {args:?}");
    }
    every_config_passes_check_config("api-caching", &docs);
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
        ("sidecar:\n  memoryRequest: lots\n", "memoryRequest"),
        ("sidecar:\n  memoryHeadroom: 64MiB\n", "memoryHeadroom"),
        ("sidecar:\n  memoryConnections: -1\n", "memoryConnections"),
        ("sidecar:\n  memoryOverhead: 64Mi\n", "memoryOverhead"),
        ("webhok:\n  enabled: true\n", "webhok"),
        ("image:\n  digest: sha256:abc\n", "digest"),
        ("sidecar:\n  threads: -1\n", "threads"),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    peerTls: {secret: x}\n",
            "secretName",
        ),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    appPorts: [http]\n",
            "allowAppIngressFrom",
        ),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    allowAppIngressFrom: \
             [{podSelector: {}}]\n",
            "appPorts",
        ),
        ("apps:\n  - name: ok\n    selector: {app: x}\n    capacity: lots\n", "capacity"),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    config: {cache: {rule: []}}\n",
            "'rule' not allowed",
        ),
        (
            "sidecar:\n  extraConfig: {cache: {rules: [{prefix: /, override: [no-transform]}]}}\n",
            "override",
        ),
        (
            "sidecar:\n  extraConfig: {cache: {rules: [{prefix: /, methods: [GET]}]}}\n",
            "methods",
        ),
        (
            "sidecar:\n  extraConfig: {cache: {rules: [{prefix: /, body_key: yaml}]}}\n",
            "body_key",
        ),
        (
            "sidecar:\n  extraConfig: {cache: {rules: [{ttl: 60s}]}}\n",
            "missing property 'prefix'",
        ),
        (
            "sidecar:\n  extraConfig: {cache: {credential_headers_extra: [\"X Key\"]}}\n",
            "credential_headers_extra",
        ),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    injectHeaders: [{name: X-Api-Key, secret: k}]\n",
            "missing property 'key'",
        ),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    injectHeaders: \
             [{name: X-Api-Key, secret: My_Key, key: k}]\n",
            "secret",
        ),
        (
            "apps:\n  - name: ok\n    selector: {app: x}\n    injectHeaders: \
             [{name: X-Api-Key, secret: k, key: k, value_env: KEY}]\n",
            "'value_env' not allowed",
        ),
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
fn a_memory_request_above_the_limit_fails_the_render() {
    let e = template_in(&chart(), "memory", "sidecar:\n  memoryLimit: 256Mi\n", &[])
        .expect_err("a 345Mi request under a 256Mi limit was rendered");
    assert!(
        e.contains("memory request 345Mi is above the memory limit 256Mi"),
        "{e}"
    );
}

/// `helm <command> ringside <chart> -n ringside -f examples/kubernetes/values.yaml <extra>`:
/// the example as the walkthrough installs it; its stdout.
fn helm_example(command: &str, extra: &[&str]) -> String {
    require("helm");
    let values = root().join("examples/kubernetes/values.yaml");
    helm_ok(
        Command::new("helm")
            .args([command, "ringside", chart().to_str().unwrap()])
            .args(["--namespace", "ringside", "-f"])
            .arg(&values)
            .args(extra),
    )
}

/// Run a helm command that must succeed; its stdout.
fn helm_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn notes_commands_work_as_written() {
    let text = helm_example("install", &["--dry-run=client"]);
    let notes = &text[text.find("NOTES:").expect("NOTES")..];
    // No port-forward to race (a background forward used before it is up):
    // the sidecar's /metrics through the API server's pod proxy, on the
    // admin port the sidecar declares.
    assert!(!notes.contains("port-forward"), "{notes}");
    assert!(
        notes
            .contains("kubectl get --raw /api/v1/namespaces/NAMESPACE/pods/POD:9090/proxy/metrics"),
        "{notes}"
    );
    // The walkthrough's port-forwards are in the background and used once
    // they answer, never after a fixed sleep.
    let readme = std::fs::read_to_string(root().join("examples/kubernetes/README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    for (i, line) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("port-forward "))
    {
        if !line.trim_start().starts_with("kubectl") {
            continue;
        }
        assert!(
            line.trim_end().ends_with('&'),
            "not in the background: {line}"
        );
        let next = lines[i + 1..].iter().take(3).copied().collect::<Vec<_>>();
        assert!(
            next.iter().any(|l| l.starts_with("until curl")),
            "a port-forward used without waiting for it: {line}\n{next:?}"
        );
        assert!(!next.iter().any(|l| l.starts_with("sleep")), "{next:?}");
    }
    assert!(
        notes.contains("get endpointslices -l kubernetes.io/service-name=ringside-catalog-peers"),
        "{notes}"
    );
    assert!(!notes.contains("get endpoints "), "{notes}");
    // Every replica's decisions: the log selector selects the webhook's pods.
    let logs = notes
        .lines()
        .find(|l| l.contains(" logs -l "))
        .unwrap_or_else(|| panic!("no logs -l in {notes}"));
    let selector = logs
        .split(" -l ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let wanted: Vec<(&str, &str)> = selector
        .split(',')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let docs = documents(&helm_example("template", &[]));
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    let pod_labels = labels_of(&deploy["spec"]["template"]["metadata"]["labels"]);
    assert!(
        wanted.iter().all(|w| pod_labels.contains(w)) && wanted.len() >= 2,
        "{selector} does not select the webhook's pods {pod_labels:?}"
    );
    assert!(logs.contains("--prefix"), "{logs}");
    assert!(
        notes.contains("Pods in this release's namespace (ringside) are never injected"),
        "{notes}"
    );
    assert!(
        !notes.contains("NetworkPolicy"),
        "the example leaves the NetworkPolicy off: {notes}"
    );
    // On without the app's callers listed, NOTES says its ports are closed.
    let text = helm_example(
        "install",
        &[
            "--dry-run=client",
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            "apps=[{\"name\":\"catalog\",\"namespace\":\"shop\",\"selector\":{\"app\":\"catalog\"}}]",
        ],
    );
    assert!(
        text.contains("its own ports are closed until apps[].allowAppIngressFrom"),
        "{text}"
    );
}

/// Every name a `prefix` in `text` is followed by (`deployment/NAME`).
fn names_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn the_walkthrough_names_what_the_chart_renders() {
    let docs = documents(&helm_example("template", &[]));
    let exists = |k: &str, name: &str, namespace: &str| {
        docs.iter().any(|d| {
            kind(d) == k
                && d["metadata"]["name"].as_str() == Some(name)
                && d["metadata"]["namespace"].as_str() == Some(namespace)
        })
    };
    let readme = std::fs::read_to_string(root().join("examples/kubernetes/README.md")).unwrap();
    let mut checked = 0;
    for line in readme.lines().filter(|l| l.contains("kubectl")) {
        let namespace = names_after(line, "-n ")
            .first()
            .copied()
            .unwrap_or("default");
        for (prefix, k) in [
            ("deployment/", "Deployment"),
            ("deploy/", "Deployment"),
            ("get secret ", "Secret"),
            ("delete secret ", "Secret"),
            ("service-name=", "Service"),
        ] {
            for name in names_after(line, prefix) {
                assert!(
                    exists(k, name, namespace),
                    "README: no {k} {namespace}/{name}: {line}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "only {checked} names checked");
    // The namespace the walkthrough creates is the example app's.
    let app: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("examples/kubernetes/app.yaml")).unwrap(),
    )
    .unwrap();
    let namespace = app["metadata"]["namespace"].as_str().unwrap();
    assert!(readme.contains(&format!("kubectl create namespace {namespace}")));
}

#[test]
fn manual_injection_example() {
    let docs = validate("manual-example", &manual_example("manual-example", &[]));
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    let sidecar = &deploy["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"].as_str(), Some("ringside"));
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    assert_eq!(
        sidecar["resources"]["requests"]["memory"].as_str(),
        Some("345Mi")
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

/// A digest as `docker buildx imagetools inspect` prints one.
const DIGEST: &str = "sha256:4d1b9e0c2f6a8b3e5d7c9a1f0e2b4d6c8a0f1e3d5b7c9e1a3f5d7b9c1e3a5f70";

/// checkov's verdict on `rendered` for each of `checks`: (check id,
/// resource, passed), run offline (`--skip-download`).
fn checkov(name: &str, rendered: &str, checks: &[&str]) -> Vec<(String, String, bool)> {
    require("checkov");
    let dir = tmpdir(&format!("{name}-checkov"));
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, rendered).unwrap();
    let out = Command::new("checkov")
        .arg("-f")
        .arg(&file)
        .args(["--framework", "kubernetes", "--skip-download", "-o", "json"])
        .args(["--check", &checks.join(",")])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: checkov printed no JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let verdicts = |key: &str, passed: bool| {
        report["results"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (field("check_id"), field("resource"), passed)
            })
            .collect::<Vec<_>>()
    };
    [
        verdicts("passed_checks", true),
        verdicts("failed_checks", false),
    ]
    .concat()
}

/// The images are pinned by digest (CKV_K8S_43) and no secret is in an
/// environment variable (CKV_K8S_35): checkov on the example's renders, the
/// webhook's and the manually injected sidecar's, with the digest the
/// walkthrough sets after its push. Without the digest, CKV_K8S_43 fails,
/// and checkov does flag a secret in the environment.
#[test]
fn checkov_finds_image_digests_and_secrets_as_files() {
    const CHECKS: &[&str] = &["CKV_K8S_43", "CKV_K8S_35"];
    let digest = format!("image.digest={DIGEST}");
    let renders = [
        ("example", helm_example("template", &["--set", &digest])),
        (
            "manual-example",
            manual_example(
                "manual-checkov",
                &[
                    "--set",
                    &format!("ringside.{digest}"),
                    "--set",
                    &format!("image=ghcr.io/example/catalog:1.4.2@{DIGEST}"),
                ],
            ),
        ),
    ];
    // The sidecar of an app with an injected header: its Secret is a file.
    let headers = manual_example(
        "manual-checkov-headers",
        &[
            "--set",
            &format!("ringside.{digest}"),
            "--set",
            &format!("image=ghcr.io/example/catalog:1.4.2@{DIGEST}"),
            "--set-json",
            "ringside.apps=[{\"name\":\"catalog\",\"selector\":{\"app\":\"catalog\"},\
             \"injectHeaders\":[{\"name\":\"X-Api-Key\",\"secret\":\"catalog-api-key\",\
             \"key\":\"key\"}]}]",
        ],
    );
    assert!(
        headers.contains("path: catalog-api-key/key"),
        "the header's Secret is not mounted:\n{headers}"
    );
    let renders = [
        renders[0].clone(),
        renders[1].clone(),
        ("manual-example-headers", headers),
    ];
    for (name, rendered) in &renders {
        let verdicts = checkov(name, rendered, CHECKS);
        for check in CHECKS {
            let deployments: Vec<_> = verdicts.iter().filter(|v| v.0 == *check).collect();
            assert!(!deployments.is_empty(), "{name}: {check} checked nothing");
            assert!(
                deployments.iter().all(|v| v.2),
                "{name}: {check} fails: {deployments:?}"
            );
        }
    }
    let rendered = helm_example("template", &[]);
    let verdicts = checkov("example-no-digest", &rendered, &["CKV_K8S_43"]);
    assert!(
        verdicts.iter().any(|v| !v.2),
        "without image.digest, a tag alone passes: {verdicts:?}"
    );
    let in_env = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec:\n  \
                  containers:\n    - name: c\n      image: app@sha256:00\n      env:\n        \
                  - name: SECRET\n          valueFrom: {secretKeyRef: {name: s, key: k}}\n";
    let verdicts = checkov("secret-in-env", in_env, &["CKV_K8S_35"]);
    assert!(verdicts.iter().any(|v| !v.2), "{verdicts:?}");
}

/// `helm template` of examples/kubernetes/manual-injection (a parent chart
/// that includes ringside.sidecar) with `extra`; its stdout.
fn manual_example(name: &str, extra: &[&str]) -> String {
    // Copied, so that the dependency build does not touch the repository.
    let dir = tmpdir(name);
    let example = root().join("examples/kubernetes/manual-injection");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&example)
        .arg(dir.path())
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
    helm_ok(Command::new("helm").args(["dependency", "update", copy.to_str().unwrap()]));
    template_in(&copy, &format!("{name}-t"), "", extra).unwrap_or_else(|e| panic!("{e}"))
}
