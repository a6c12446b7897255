//! The observability layer, proven with the real tools:
//!
//! - `monitoring/ringside-rules.yaml` passes `promtool check rules` and the
//!   promtool unit tests in `monitoring/tests/`, and the chart's
//!   PrometheusRule carries exactly the same groups;
//! - both Grafana dashboards validate (ajv) against a JSON schema generated
//!   from Grafana's own dashboard types (`@grafana/schema`, through
//!   ts-json-schema-generator), and follow our conventions (units,
//!   descriptions, the datasource/namespace/app/pod variables);
//! - a real 3-node cluster under mixed traffic is scraped by a real
//!   Prometheus that loads the rules file: every dashboard target, every
//!   template variable, every recording rule and every alert expression is
//!   queried through the HTTP API and must return data (alerts that must stay
//!   silent on a healthy cluster are checked to be silent, and the
//!   threshold-free part of each alert must return data); and each node's
//!   live /metrics passes `promtool check metrics`.
//!
//! Needs prometheus and promtool (Debian's `prometheus` package) on PATH and
//! the npm tools in monitoring/schema/node_modules: CI installs them with
//! tests/tools/install-observability-tools.sh. Missing tools fail the tests,
//! never skip.

mod common;
use common::origin::Origin;
use common::process::Process;
use common::{eventually, start_cluster, Conn, Ringside, ADMIN_TOKEN};
use serde_json::Value as Json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const INSTALL: &str = "bash tests/tools/install-observability-tools.sh";
const RULES: &str = "monitoring/ringside-rules.yaml";
const DASHBOARDS: &[&str] = &[
    "charts/ringside/dashboards/ringside-overview.json",
    "charts/ringside/dashboards/ringside-cluster.json",
];
const PROMETHEUS_RULE: &str = "charts/ringside/templates/prometheusrule.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(tool: &str) -> PathBuf {
    common::process::require_tool(tool, INSTALL)
}

/// An npm tool installed in monitoring/schema/node_modules.
fn require_npm(tool: &str) -> PathBuf {
    let path = root()
        .join("monitoring/schema/node_modules/.bin")
        .join(tool);
    assert!(
        path.is_file(),
        "{} is missing: install it with `{INSTALL}`",
        path.display()
    );
    path
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringside-observability-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Run `cmd` (from the repository root); Ok(stdout + stderr) when it exits 0.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} exited with {}:\n{text}", out.status))
    }
}

fn rules_yaml() -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join(RULES)).expect("rules file");
    serde_yaml::from_str(&text).expect("rules file is YAML")
}

/// Every rule of the rules file: (record or alert name, expr, is_alert).
fn rules() -> Vec<(String, String, bool)> {
    let doc = rules_yaml();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr").trim().to_string();
            match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(name), None) => out.push((name.to_string(), expr, false)),
                (None, Some(name)) => out.push((name.to_string(), expr, true)),
                _ => panic!("a rule is either a record or an alert: {rule:?}"),
            }
        }
    }
    out
}

// ---------------------------------------------------------------- rules ----

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let promtool = require("promtool");
    let out = run(Command::new(&promtool).args(["check", "rules", RULES]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");

    let mut tests: Vec<PathBuf> = std::fs::read_dir(root().join("monitoring/tests"))
        .expect("monitoring/tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    tests.sort();
    assert!(
        !tests.is_empty(),
        "no promtool unit tests in monitoring/tests"
    );
    let out = run(Command::new(&promtool).args(["test", "rules"]).args(&tests))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert has a unit test, and a runbook that its runbook_url names.
    let tests_text: String = tests
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("unit test file"))
        .collect();
    let doc = rules_yaml();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            assert!(
                tests_text.contains(&format!("alertname: {alert}\n")),
                "{alert} has no promtool unit test"
            );
            let annotations = &rule["annotations"];
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    annotations[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{alert} has no {key}"
                );
            }
            let url = annotations["runbook_url"].as_str().unwrap();
            let doc = format!("docs/alerts/{alert}.md");
            assert!(url.ends_with(&doc), "{alert}: runbook_url {url}");
            let runbook =
                std::fs::read_to_string(root().join(&doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
            for section in ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"] {
                assert!(runbook.contains(section), "{doc} has no {section}");
            }
            assert!(runbook.contains("```promql"), "{doc} shows no PromQL");
            {
                let label = "severity";
                assert!(rule["labels"][label].is_string(), "{alert}: no {label}");
            }
        }
    }
}

/// The rules file's groups as the chart's template writes them: indented by
/// two spaces, with Go template braces escaped for Helm.
fn escaped_for_helm(rules: &str) -> String {
    let start = rules.find("\ngroups:\n").expect("a groups: line") + 1;
    let mut out = String::new();
    for line in rules[start..].lines() {
        if line.is_empty() {
            out.push('\n');
            continue;
        }
        out.push_str("  ");
        let mut rest = line;
        while let Some(i) = rest.find(['{', '}']) {
            let pair = &rest[i..i.saturating_add(2).min(rest.len())];
            if pair == "{{" || pair == "}}" {
                out.push_str(&rest[..i]);
                out.push_str(&format!("{{{{`{pair}`}}}}"));
                rest = &rest[i + 2..];
            } else {
                out.push_str(&rest[..=i]);
                rest = &rest[i + 1..];
            }
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

#[test]
fn chart_prometheus_rule_carries_the_same_rules() {
    let rules = std::fs::read_to_string(root().join(RULES)).expect("rules file");
    let template = std::fs::read_to_string(root().join(PROMETHEUS_RULE)).expect("template");
    let begin = "  # --- BEGIN monitoring/ringside-rules.yaml ---\n";
    let end = "  # --- END monitoring/ringside-rules.yaml ---\n";
    let start = template.find(begin).expect("BEGIN line") + begin.len();
    let stop = template.find(end).expect("END line");
    assert!(
        template[start..stop] == escaped_for_helm(&rules),
        "{PROMETHEUS_RULE} differs from {RULES}: copy the groups again, indented by two spaces, \
         with {{{{ and }}}} written as {{{{`{{{{`}}}} and {{{{`}}}}`}}}}"
    );

    // And helm renders it (only when enabled) into the same groups.
    require("helm");
    let chart = root().join("charts/ringside");
    let off = run(Command::new("helm").arg("template").arg("t").arg(&chart))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !off.contains("kind: PrometheusRule"),
        "off unless prometheusRule.enabled"
    );
    let on = run(Command::new("helm")
        .arg("template")
        .arg("t")
        .arg(&chart)
        .args(["--namespace", "mon", "--set", "prometheusRule.enabled=true"])
        .args(["--set", "prometheusRule.labels.release=kps"])
        .args(["--show-only", "templates/prometheusrule.yaml"]))
    .unwrap_or_else(|e| panic!("{e}"));
    let doc: serde_yaml::Value = serde_yaml::from_str(&on).expect("rendered YAML");
    assert_eq!(doc["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(doc["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(doc["metadata"]["namespace"].as_str(), Some("mon"));
    assert_eq!(doc["metadata"]["labels"]["release"].as_str(), Some("kps"));
    assert_eq!(doc["spec"]["groups"], rules_yaml()["groups"]);
}

/// The target labels a Prometheus Operator gives a monitor's targets before
/// the monitor's own relabelings: job is `<namespace>/<name>` for a
/// PodMonitor and the Service's name for a ServiceMonitor; then the
/// monitor's (static) relabelings apply.
fn target_labels(monitor: &serde_yaml::Value, service: &str) -> Vec<(String, String)> {
    let namespace = monitor["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let name = monitor["metadata"]["name"].as_str().expect("name");
    let (job, endpoint) = match monitor["kind"].as_str() {
        Some("PodMonitor") => (
            format!("{namespace}/{name}"),
            &monitor["spec"]["podMetricsEndpoints"][0],
        ),
        Some("ServiceMonitor") => (service.to_string(), &monitor["spec"]["endpoints"][0]),
        other => panic!("not a monitor: {other:?}"),
    };
    let mut labels = vec![
        ("job".to_string(), job),
        ("instance".to_string(), "10.0.0.1:9090".to_string()),
        ("namespace".to_string(), namespace.to_string()),
        ("pod".to_string(), "catalog-0".to_string()),
        (
            "endpoint".to_string(),
            endpoint["port"].as_str().expect("port").to_string(),
        ),
    ];
    for r in endpoint["relabelings"].as_sequence().into_iter().flatten() {
        assert!(
            r.get("sourceLabels").is_none() && r.get("action").is_none(),
            "only static relabelings are modelled here: {r:?}"
        );
        let target = r["targetLabel"].as_str().expect("targetLabel").to_string();
        let value = r["replacement"].as_str().expect("replacement").to_string();
        labels.retain(|(k, _)| *k != target);
        labels.push((target, value));
    }
    labels.sort();
    labels
}

/// RingsideSidecarDown, as the chart's PrometheusRule carries it, fires for
/// the targets of the chart's own ServiceMonitor and PodMonitor, whatever the
/// release is called (here with fullnameOverride, no "ringside" in any name).
#[test]
fn sidecar_down_fires_for_the_chart_monitors_targets() {
    let promtool = require("promtool");
    require("helm");
    let dir = tmpdir("chart-monitors");
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        "fullnameOverride: platform-cache\napps:\n  - {name: catalog, namespace: shop, selector: {app: catalog}}\n\
         monitoring:\n  serviceMonitor: {enabled: true}\n  podMonitor: {enabled: true}\nprometheusRule: {enabled: true}\n",
    )
    .unwrap();
    let rendered = run(Command::new("helm")
        .args([
            "template",
            "platform",
            "charts/ringside",
            "--namespace",
            "platform",
        ])
        .arg("-f")
        .arg(&values))
    .unwrap_or_else(|e| panic!("{e}"));
    let docs: Vec<serde_yaml::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|d| d.get("kind").is_some())
        .collect();
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(k));
    let rule = of_kind("PrometheusRule").next().expect("a PrometheusRule");
    let rules_path = dir.join("rules.yaml");
    let groups = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
        "groups".into(),
        rule["spec"]["groups"].clone(),
    )]))
    .unwrap();
    std::fs::write(&rules_path, groups).unwrap();
    let service = of_kind("Service")
        .find(|s| s["metadata"]["labels"]["ringside.io/peers"].as_str() == Some("true"))
        .expect("the peers Service")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let monitors: Vec<_> = of_kind("PodMonitor")
        .chain(of_kind("ServiceMonitor"))
        .collect();
    assert_eq!(monitors.len(), 2);
    let mut tests = String::from("rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n");
    for monitor in monitors {
        let labels = target_labels(monitor, &service);
        let series = |name: &str, extra: &[(&str, &str)]| {
            let mut all: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            all.extend(extra.iter().map(|(k, v)| format!("{k}=\"{v}\"")));
            format!("{name}{{{}}}", all.join(","))
        };
        let firing = [
            ("alertname", "RingsideSidecarDown"),
            ("alertstate", "firing"),
            ("severity", "critical"),
        ];
        tests.push_str(&format!(
            "  - interval: 1m\n    input_series:\n      - series: '{}'\n        values: '0x15'\n    \
             promql_expr_test:\n      - expr: ALERTS{{alertname=\"RingsideSidecarDown\"}}\n        \
             eval_time: 10m\n        exp_samples:\n          - labels: '{}'\n            value: 1\n",
            series("up", &[]),
            series("ALERTS", &firing),
        ));
    }
    let tests_path = dir.join("tests.yaml");
    std::fs::write(&tests_path, &tests).unwrap();
    let out = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&tests_path))
    .unwrap_or_else(|e| {
        panic!("RingsideSidecarDown does not fire for the chart's targets:\n{e}\n{tests}")
    });
    assert!(out.contains("SUCCESS"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ----------------------------------------------------------- dashboards ----

fn dashboard(path: &str) -> Json {
    let text = std::fs::read_to_string(root().join(path)).expect("dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

#[test]
fn dashboards_validate_against_grafana_schema() {
    let generator = require_npm("ts-json-schema-generator");
    let ajv = require_npm("ajv");
    let types = root().join(
        "monitoring/schema/node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts",
    );
    assert!(
        types.is_file(),
        "{} is missing: install it with `{INSTALL}`",
        types.display()
    );
    let dir = tmpdir("schema");
    let schema = dir.join("dashboard.schema.json");
    run(Command::new(&generator)
        .arg("--path")
        .arg(&types)
        .args([
            "--type",
            "Dashboard",
            "--additional-properties",
            "--no-type-check",
        ])
        .arg("-o")
        .arg(&schema))
    .unwrap_or_else(|e| panic!("{e}"));

    // The schema rejects what it should: it is not an empty one.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"schemaVersion": "39", "panels": [{"type": 1}]}"#).unwrap();
    let rejected = run(Command::new(&ajv)
        .args(["validate", "--strict=false", "--all-errors", "-s"])
        .arg(&schema)
        .arg("-d")
        .arg(&bad));
    assert!(rejected.is_err(), "the schema accepts a broken dashboard");

    for path in DASHBOARDS {
        let out = run(Command::new(&ajv)
            .args([
                "validate",
                "--strict=false",
                "--all-errors",
                "--errors=text",
                "-s",
            ])
            .arg(&schema)
            .arg("-d")
            .arg(root().join(path)))
        .unwrap_or_else(|e| panic!("{path} does not match Grafana's schema: {e}"));
        assert!(out.contains("valid"), "{out}");

        let dash = dashboard(path);
        assert!(dash["schemaVersion"].as_u64().unwrap() >= 39, "{path}");
        assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
        let vars: Vec<&Json> = dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        let var = |name: &str| {
            *vars
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{path}: no ${name} variable"))
        };
        assert_eq!(var("datasource")["type"], "datasource");
        assert_eq!(var("datasource")["query"], "prometheus");
        for name in ["namespace", "app", "pod"] {
            let v = var(name);
            assert_eq!(v["type"], "query", "{path} ${name}");
            assert!(
                v["definition"].as_str().is_some_and(
                    |d| d.starts_with("label_values(") && d.ends_with(&format!(", {name})"))
                ),
                "{path} ${name}: {}",
                v["definition"]
            );
            assert_eq!(v["datasource"]["uid"], "${datasource}");
        }
        let mut ids = std::collections::HashSet::new();
        for p in panels(&dash) {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{path}: id of {title}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert!(
                p["description"].as_str().is_some_and(|d| d.len() > 20),
                "{path}: {title} has no description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{path}: {title} has no unit"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{path}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{path}: {title} has no target");
            for t in targets {
                let expr = t["expr"].as_str().expect("expr");
                for var in ["$namespace", "$app", "$pod"] {
                    assert!(expr.contains(var), "{path}: {title}: {expr} ignores {var}");
                }
                assert!(
                    !expr.contains("[5m]") && !expr.contains("[1m]"),
                    "{path}: {title}: use $__rate_interval: {expr}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------- a real Prometheus ------

struct Prometheus {
    process: Process,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrape each (admin address, pod) every second with static labels
    /// namespace=shop, app=web, pod, loading `rules`.
    fn start(targets: &[(SocketAddr, &str)], rules: &Path) -> Prometheus {
        let prometheus = require("prometheus");
        let dir = tmpdir("prometheus");
        let mut static_configs = String::new();
        for (addr, pod) in targets {
            static_configs.push_str(&format!(
                "      - targets: [\"{addr}\"]\n        labels: {{namespace: shop, app: web, pod: {pod}}}\n"
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: ringside\n    static_configs:\n{static_configs}",
            rules.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let mut command = Command::new(prometheus);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let log = dir.join("prometheus.log");
        let process = Process::spawn("prometheus", command, &log);
        Prometheus { process, addr, dir }
    }

    async fn wait_ready(&mut self) {
        let addr = self.addr;
        let ready = || async move {
            matches!(common::get(addr, "/-/ready").await, Ok(r) if r.status == 200)
        };
        let within = Duration::from_secs(30);
        self.process
            .wait_until(within, "prometheus is ready", ready)
            .await;
    }

    async fn api(&self, path_and_query: &str) -> Json {
        let r = common::get(self.addr, path_and_query)
            .await
            .expect("prometheus API");
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{path_and_query}: {e}: {}", r.text()))
    }

    /// An instant query: Ok(result array) or Err(the error).
    async fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let v = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn label_values(&self, label: &str, matcher: &str) -> Vec<String> {
        let v = self
            .api(&format!(
                "/api/v1/label/{label}/values?match[]={}",
                encode(matcher)
            ))
            .await;
        assert_eq!(v["status"], "success", "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `s` as a query-string value.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Mixed traffic on the cluster until `stop`: hits, misses, peer hops, hot
/// keys, coalesced fetches, revalidations, uncacheable responses, origin
/// 5xx, origin timeouts (ringside errors), slow owners, keys owned by a
/// dead member (peer errors), bypasses, passes, purges and refused purges. Bounded: stops by itself
/// after 3 minutes.
async fn drive_traffic(nodes: Vec<(SocketAddr, SocketAddr)>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut i: usize = 0;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
        let (addr, admin) = nodes[i % nodes.len()];
        let get = |path: String| async move {
            if let Ok(mut c) = Conn::connect(addr).await {
                let _ = c.request("GET", &path, &[]).await;
            }
        };
        // Hits and misses on keys spread over the ring (peer hops).
        for k in 0..6 {
            get(format!("/k{}?cc=max-age%3D20", (i * 6 + k) % 40)).await;
        }
        // One hot key asked everywhere: hot mirrors and their hits.
        for _ in 0..4 {
            get("/hot?cc=max-age%3D60".to_string()).await;
        }
        get(format!("/reval?cc=max-age%3D1&etag=v{}", i % 3)).await;
        if i.is_multiple_of(3) {
            get("/nostore?cc=no-store".to_string()).await;
            get(format!("/err?status=503&n={}", i % 5)).await;
            if let Ok(mut c) = Conn::connect(addr).await {
                let _ = c
                    .request(
                        "GET",
                        "/k1?cc=max-age%3D20",
                        &[("cache-control", "no-store")],
                    )
                    .await; // bypass
                let _ = c.request_with_body("POST", "/post", &[], b"x").await; // pass
            }
        }
        if i.is_multiple_of(8) {
            // Coalesced: five concurrent requests for one new key.
            let mut tasks = Vec::new();
            for _ in 0..5 {
                let path = format!("/co{i}?cc=max-age%3D60&delay_ms=200");
                tasks.push(tokio::spawn(get(path)));
            }
            // Slow keys: owners answer after 1.5 s (slow peer hops); a 2.5 s
            // origin exceeds the 2 s read timeout (errors).
            for (n, &(a, _)) in nodes.iter().enumerate() {
                tasks.push(tokio::spawn(async move {
                    if let Ok(mut c) = Conn::connect(a).await {
                        let p = format!("/slow{i}-{n}?cc=max-age%3D60&delay_ms=1500");
                        let _ = c.request("GET", &p, &[]).await;
                    }
                }));
            }
            tasks.push(tokio::spawn(get(format!("/timeout{i}?delay_ms=2500"))));
            drop(tasks); // left running; the loop goes on
        }
        if i % 10 == 5 {
            if let Ok(mut c) = Conn::connect(admin).await {
                let _ = c
                    .request("PURGE", "/hot?cc=max-age%3D60", &[("authorization", &auth)])
                    .await;
                let _ = c.request("PURGE", "/k3?cc=max-age%3D20", &[]).await; // refused
            }
        }
        i += 1;
        // Pacing, not waiting: the traffic is spread over Prometheus's
        // scrape and rate windows until the test says stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A dashboard expression with Grafana's variables replaced.
fn substitute(expr: &str, namespace: &str, app: &str, pod: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "2s")
        .replace("$__range", "1m")
        .replace("$namespace", namespace)
        .replace("$app", app)
        .replace("$pod", pod)
}

/// Alerts' conditions without their thresholds: each must return data from
/// the live cluster, proving the alert can see what it watches.
fn alert_inputs(alert: &str) -> &'static [&'static str] {
    match alert {
        "RingsideOriginErrorRateHigh" => &[
            "namespace_app:ringside_origin_errors:ratio_rate5m",
            "namespace_app:ringside_origin_requests:rate5m",
        ],
        "RingsideHitRatioCollapsed" => &[
            "namespace_app:ringside_hit_ratio:rate5m",
            "avg_over_time(namespace_app:ringside_hit_ratio:rate5m[1d])",
            "namespace_app:ringside_lookups:rate5m",
        ],
        "RingsidePeerErrorsSustained" => &[
            "namespace_app_peer:ringside_peer_failures:ratio_rate5m",
            "sum by (namespace, app, peer) (rate(ringside_peer_requests_total[5m]))",
        ],
        "RingsideRingDisagreement" => &["namespace_app:ringside_ring_generations:count"],
        "RingsideCacheChurn" => &[
            "namespace_app_pod:ringside_cache_fill:ratio",
            "namespace_app_pod:ringside_cache_turnover:ratio_per_hour",
        ],
        "RingsideSidecarDown" => &["up{job=\"ringside\"}"],
        other => panic!("{other}: list its threshold-free inputs in alert_inputs()"),
    }
}

/// Alerts that a healthy cluster must not trigger (their expression is
/// empty), whatever the test traffic's error share.
const SILENT_WHEN_HEALTHY: &[&str] = &[
    "RingsideRingDisagreement",
    "RingsideSidecarDown",
    "RingsideCacheChurn",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_and_rules_return_data_from_a_real_prometheus() {
    let promtool = require("promtool");
    require("prometheus");
    let origin = Origin::start().await;
    // A fourth member dies at once: the keys it owns cost peer errors (and
    // backoff) on the living three, which then load them from the origin.
    let mut nodes: Vec<Ringside> = start_cluster(&origin.url(), 4, "").await;
    nodes.pop().expect("four nodes").kill();
    let pods = ["web-0", "web-1", "web-2"];
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(drive_traffic(
        nodes.iter().map(|n| (n.addr, n.admin)).collect(),
        stop.clone(),
    ));

    // The rules file as is, but evaluated every second instead of every 30 s
    // so that recorded series exist within the test's time.
    let dir = tmpdir("rules");
    let rules_text = std::fs::read_to_string(root().join(RULES)).unwrap();
    let fast = rules_text.replace("    interval: 30s\n", "    interval: 1s\n");
    assert_ne!(fast, rules_text, "the recording group's interval moved");
    let rules_path = dir.join("ringside-rules.yaml");
    std::fs::write(&rules_path, fast).unwrap();
    let targets: Vec<(SocketAddr, &str)> =
        nodes.iter().zip(pods).map(|(n, p)| (n.admin, p)).collect();
    let mut prom = Prometheus::start(&targets, &rules_path);
    prom.wait_ready().await;

    // Every expression to prove, with what it must return.
    struct Check {
        what: String,
        expr: String,
        must_be_empty: bool,
    }
    let mut checks: Vec<Check> = Vec::new();
    for path in DASHBOARDS {
        let dash = dashboard(path);
        for p in panels(&dash) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                for (ns, app, pod) in [
                    (".*", ".*", ".*"),
                    ("shop", "web", ".*"),
                    ("shop", "web", "web-1|web-2"),
                ] {
                    checks.push(Check {
                        what: format!(
                            "{path}: {} [{}] ({ns}, {app}, {pod})",
                            p["title"], t["refId"]
                        ),
                        expr: substitute(expr, ns, app, pod),
                        must_be_empty: false,
                    });
                }
            }
        }
    }
    for (name, expr, is_alert) in rules() {
        if is_alert {
            for input in alert_inputs(&name) {
                checks.push(Check {
                    what: format!("{RULES}: {name}, input {input}"),
                    expr: input.to_string(),
                    must_be_empty: false,
                });
            }
        } else {
            checks.push(Check {
                what: format!("{RULES}: {name} (expr)"),
                expr: expr.clone(),
                must_be_empty: false,
            });
            checks.push(Check {
                what: format!("{RULES}: {name} (recorded)"),
                expr: name.clone(),
                must_be_empty: false,
            });
        }
    }

    // A few scrapes of every node first.
    eventually(
        Duration::from_secs(30),
        "3 scrapes of each node",
        || async {
            let scrapes = prom
                .query("count_over_time(up{job=\"ringside\"}[1m]) >= 3")
                .await
                .unwrap();
            scrapes.len() == 3
        },
    )
    .await;

    // Wait until everything returns data (scrapes every second, rules too).
    // Each poll that still misses some reports them, for a failure's output.
    let without_data = || async {
        let mut missing = Vec::new();
        for c in &checks {
            match prom.query(&c.expr).await {
                Err(e) => panic!("{}: query failed: {e}\n{}", c.what, c.expr),
                Ok(result) if result.is_empty() && !c.must_be_empty => {
                    missing.push(format!("{}\n    {}", c.what, c.expr))
                }
                Ok(_) => {}
            }
        }
        missing
    };
    eventually(
        Duration::from_secs(90),
        "every dashboard and rule expression returns data (the last poll's misses are above)",
        || async {
            let missing = without_data().await;
            if !missing.is_empty() {
                eprintln!(
                    "{} of {} expressions return no data yet:\n{}",
                    missing.len(),
                    checks.len(),
                    missing.join("\n")
                );
            }
            missing.is_empty()
        },
    )
    .await;
    eprintln!(
        "{} dashboard/rule expressions queried, all with data",
        checks.len()
    );

    // Alert expressions evaluate; those a healthy cluster must not trigger
    // are empty; and Prometheus loaded every rule without evaluation errors.
    for (name, expr, is_alert) in rules() {
        if !is_alert {
            continue;
        }
        let result = prom
            .query(&expr)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{expr}"));
        if SILENT_WHEN_HEALTHY.contains(&name.as_str()) {
            assert!(
                result.is_empty(),
                "{name} fires on a healthy cluster: {result:?}"
            );
        }
    }
    let loaded = prom.api("/api/v1/rules").await;
    let mut count = 0;
    for group in loaded["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().unwrap() {
            count += 1;
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    assert_eq!(count, rules().len(), "Prometheus loaded every rule");

    // The cluster agrees on its ring and every target is up.
    let generations = prom
        .query("namespace_app:ringside_ring_generations:count")
        .await
        .unwrap();
    assert_eq!(generations[0]["value"][1], "1", "{generations:?}");
    let up = prom.query("up{job=\"ringside\"} == 1").await.unwrap();
    assert_eq!(up.len(), 3, "{up:?}");

    // The dashboards' template variables find the scrape's labels.
    assert_eq!(
        prom.label_values("namespace", "ringside_cache_capacity_bytes")
            .await,
        ["shop"]
    );
    assert_eq!(
        prom.label_values("app", "ringside_cache_capacity_bytes{namespace=~\"shop\"}")
            .await,
        ["web"]
    );
    assert_eq!(
        prom.label_values(
            "pod",
            "ringside_cache_capacity_bytes{namespace=~\"shop\", app=~\"web\"}"
        )
        .await,
        pods
    );

    // The traffic reached every kind of answer the dashboards show.
    for (expr, what) in [
        ("sum(ringside_requests_total{result=\"hit\"})", "hits"),
        (
            "sum(ringside_requests_total{result=\"peer\"})",
            "peer answers",
        ),
        (
            "sum(ringside_requests_total{result=\"bypass\"})",
            "bypasses",
        ),
        ("sum(ringside_requests_total{result=\"error\"})", "errors"),
        (
            "sum(ringside_peer_requests_total{outcome=\"error\"})",
            "peer errors",
        ),
        ("sum(ringside_purges_total)", "purges"),
        ("sum(ringside_admin_auth_failures_total)", "refused purges"),
        (
            "sum(ringside_singleflight_coalesced_total)",
            "coalesced requests",
        ),
    ] {
        let r = prom.query(expr).await.unwrap();
        let v: f64 = r[0]["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v > 0.0, "no {what}: {expr}");
    }

    for expr in [
        "namespace_app:ringside_hit_ratio:rate5m",
        "namespace_app:ringside_origin_offload:ratio_rate5m",
        "namespace_app:ringside_origin_errors:ratio_rate5m",
        "namespace_app_peer:ringside_peer_failures:ratio_rate5m",
    ] {
        let r = prom.query(expr).await.unwrap();
        let values: Vec<String> = r.iter().map(|s| s["value"][1].to_string()).collect();
        eprintln!("{expr} = {}", values.join(", "));
    }

    // Each node's live /metrics is clean for promtool's linter.
    for node in &nodes {
        let text = node.metrics().await;
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics on {}:\n{report}",
            node.admin
        );
    }

    stop.store(true, Ordering::SeqCst);
    let _ = traffic.await;
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}
