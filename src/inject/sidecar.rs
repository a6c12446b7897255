//! The ringside container that the webhook adds to a pod, and the JSONPatch
//! that adds it.
//!
//! Owns everything about *what* is injected (image, ports, probes,
//! resources, security context, env, volumes, annotation overrides) so that
//! the HTTP side in [`super`] and the AdmissionReview envelope in
//! [`super::review`] stay free of pod details. Pure functions over
//! `serde_json::Value`: unit-testable without a server, and tolerant of any
//! pod shape the API server may send (missing arrays, maps or fields).

use super::apps::{AppSidecar, AppSidecars, HeaderSecrets};
use super::checks;
use super::memory::{parse_capacity, Memory, Quantity, Sizing, QUANTITY_HINT};
use super::pod::*; // the annotations and PodOptions
use crate::config::OriginUrl;
use serde_json::{json, Map, Value};

/// Longest wait before exit accepted (beyond it the pod's grace period ends first).
const MAX_WAIT_BEFORE_EXIT: u32 = 3600;
/// Most proxy worker threads a sidecar may be given (ringside's own bound).
pub const MAX_THREADS: u32 = 1024;

/// Name of the injected container; its presence marks a pod as injected.
pub const CONTAINER_NAME: &str = "ringside";
/// The keys of the peer secret and of the admin (purge) token in the Secret
/// (the chart's `secret.yaml` writes both; an existing Secret has both).
pub const PEER_SECRET_KEY: &str = "secret";
pub const ADMIN_TOKEN_KEY: &str = "admin-token";
/// Volume holding the ConfigMap's `config.yaml`.
pub const CONFIG_VOLUME: &str = "ringside-config";
/// Writable scratch space (the root filesystem is read-only).
pub const TMP_VOLUME: &str = "ringside-tmp";
/// Where the config file is mounted.
pub const CONFIG_DIR: &str = "/etc/ringside";
/// Volume holding the Secret with the peer secret and the admin token, as
/// files: never environment variables, which `/proc/<pid>/environ` and
/// some tools show.
pub const SECRET_VOLUME: &str = "ringside-secret";
/// Where it is mounted (`RINGSIDE_CLUSTER_SECRET_FILE`, `RINGSIDE_ADMIN_TOKEN_FILE`).
pub const SECRET_DIR: &str = "/etc/ringside-secret";
/// Volume holding an app's peer TLS Secret (`ca.crt`, `tls.crt`, `tls.key`).
pub const PEER_TLS_VOLUME: &str = "ringside-peer-tls";
/// Where it is mounted (the app's ConfigMap names the files there).
pub const PEER_TLS_DIR: &str = "/etc/ringside-peer-tls";
/// Volume holding the Secret keys an app's injected headers read (a
/// projected volume: one source per Secret, only the keys named).
pub const HEADER_SECRETS_VOLUME: &str = "ringside-headers";
/// Where it is mounted: key KEY of Secret SECRET is the file
/// `HEADER_SECRETS_DIR/SECRET/KEY`, the header's `value_file` in the app's
/// ConfigMap (read again when the kubelet updates the Secret).
pub const HEADER_SECRETS_DIR: &str = "/etc/ringside-headers";

const MIB: u64 = 1 << 20;

/// Whether the sidecar goes into `initContainers` with `restartPolicy: Always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeSidecar {
    /// Native when the cluster's Kubernetes version (--kube-version) is 1.29 or newer.
    Auto,
    Always,
    Never,
}

/// Everything the injected container depends on that is not in the pod.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub image_pull_policy: String,
    /// ConfigMap with `config.yaml`, in the pod's namespace.
    pub config_map: String,
    /// Secret holding the cluster secret and admin token, in the pod's namespace.
    pub secret: String,
    pub native_sidecar: NativeSidecar,
    /// The cluster's version (`1.29.3`, `v1.30.0-gke.1`), for `auto`.
    pub kube_version: Option<String>,
    /// Default cache capacity in bytes.
    pub capacity: u64,
    /// Connections and headroom of the default memory formula.
    pub sizing: Sizing,
    /// Explicit memory request and limit (else the formula in [`super::memory`]).
    pub memory_request: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
    pub cpu_request: String,
    pub cpu_limit: Option<String>,
    pub port: u16,
    pub admin_port: u16,
    /// The container's `ringside-peer` port, set as RINGSIDE_PEER_LISTEN: the
    /// port peers dial (the DNS membership port in the app's ConfigMap), the
    /// same for every pod.
    pub peer_port: u16,
    /// `shutdown_delay` of regular-container sidecars, in seconds.
    pub wait_before_exit_seconds: u32,
    /// Proxy worker threads of injected sidecars (0: their CPU limit, else
    /// the node's CPUs).
    pub threads: u32,
    /// The container's securityContext (a JSON object; empty: none).
    pub security_context: Value,
    /// The chart's apps as (namespace, name): a `ringside.io/app` outside
    /// this list names a ConfigMap that does not exist. None: not checked.
    pub apps: Option<Vec<(String, String)>>,
    /// The namespaces that have the standalone ConfigMap and the Secret (the
    /// chart's release, apps' and `namespaces`): a pod of no app elsewhere
    /// could not start. None: not checked.
    pub config_namespaces: Option<Vec<String>>,
    /// What each app's sidecars get besides these: capacity, peer TLS
    /// Secret (mounted at [`PEER_TLS_DIR`]), the Secrets of injected headers
    /// (at [`HEADER_SECRETS_DIR`]).
    pub app_sidecars: AppSidecars,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "ghcr.io/ringside/ringside:latest".into(),
            image_pull_policy: "IfNotPresent".into(),
            config_map: "ringside".into(),
            secret: "ringside-peer-secret".into(),
            native_sidecar: NativeSidecar::Auto,
            kube_version: None,
            capacity: 256 * MIB,
            sizing: Sizing::default(),
            memory_request: None,
            memory_limit: None,
            cpu_request: "50m".into(),
            cpu_limit: None,
            port: 8080,
            admin_port: 9090,
            peer_port: 7070,
            wait_before_exit_seconds: 0,
            threads: 2,
            security_context: default_security_context(),
            apps: None,
            config_namespaces: None,
            app_sidecars: AppSidecars::default(),
        }
    }
}

/// The injected container's securityContext unless told otherwise (the
/// chart's sidecar.securityContext default): non-root as the image's UID
/// 65532, read-only root, no privilege escalation or capabilities, seccomp
/// RuntimeDefault (Pod Security "restricted").
pub fn default_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// What the webhook decided for one pod.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not asked for, or already injected: allow unchanged (reason label, message).
    Skip(&'static str, String),
    /// Allow with this JSONPatch (a JSON array of operations); a summary for
    /// the log; who asked.
    Patch(Value, String, AskedBy),
    /// The pod asked for injection but cannot have it (reason label, message).
    Deny(&'static str, String),
}

impl Decision {
    /// The `decision` and `reason` labels of the webhook's metrics and log.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Decision::Skip(reason, _) => ("skipped", reason),
            Decision::Patch(.., AskedBy::Pod) => ("injected", "requested"),
            Decision::Patch(.., AskedBy::Namespace) => ("injected", "namespace"),
            Decision::Deny(reason, _) => ("denied", reason),
        }
    }
}

/// A decision and the near-misses to show the user (AdmissionResponse warnings).
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    pub warnings: Vec<String>,
}

fn annotations(pod: &Value) -> Option<&Map<String, Value>> {
    pod.get("metadata")?.get("annotations")?.as_object()
}

/// A port annotation, or `default`.
fn annotated_port(pod: &Value, key: &str, default: u16) -> Result<u16, String> {
    let Some(v) = annotation(pod, key) else {
        return Ok(default);
    };
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "annotation {key}: {v:?} is invalid; expected a port number 1-65535"
        )),
    }
}

/// The origin annotation, validated as the config would validate it.
fn annotated_origin(pod: &Value) -> Result<Option<String>, String> {
    let Some(v) = annotation(pod, ANNOTATION_ORIGIN) else {
        return Ok(None);
    };
    OriginUrl::parse(v.trim()).map_err(|why| {
        format!("annotation {ANNOTATION_ORIGIN}: {v:?} is invalid; expected {why}")
    })?;
    Ok(Some(v.trim().to_string()))
}

/// The capacity annotation, or `default` (the app's, else the release's).
fn annotated_capacity(pod: &Value, default: u64) -> Result<u64, String> {
    let Some(v) = annotation(pod, ANNOTATION_CAPACITY) else {
        return Ok(default);
    };
    match parse_capacity(v) {
        Some(c) if c > 0 => Ok(c),
        _ => Err(format!(
            "annotation {ANNOTATION_CAPACITY}: {v:?} is invalid; expected a size \
             such as \"512MiB\", \"512Mi\", \"1GiB\" or a byte count"
        )),
    }
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    annotations(pod)?.get(key)?.as_str()
}

fn is_true(v: Option<&str>) -> bool {
    v.map(str::trim) == Some("true")
}

/// Does the pod already carry the sidecar (by container name or annotation)?
pub fn already_injected(pod: &Value) -> bool {
    if is_true(annotation(pod, ANNOTATION_INJECTED)) {
        return true;
    }
    let spec = pod.get("spec");
    ["containers", "initContainers"].iter().any(|list| {
        spec.and_then(|s| s.get(*list))
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
            })
    })
}

/// `1.29`, `v1.30.2`, `1.31.0-gke.100` -> (major, minor).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((major, minor.parse().ok()?))
}

impl Settings {
    /// Native sidecars are on by default from Kubernetes 1.29 (beta, enabled).
    /// `auto` without a known version falls back to a regular container: on
    /// an older API server an init container with `restartPolicy: Always`
    /// would block the pod from ever starting.
    pub fn native_by_default(&self) -> bool {
        match self.native_sidecar {
            NativeSidecar::Always => true,
            NativeSidecar::Never => false,
            NativeSidecar::Auto => self
                .kube_version
                .as_deref()
                .and_then(major_minor)
                .is_some_and(|v| v >= (1, 29)),
        }
    }

    /// Apply the pod's app (its `ringside.io/app` in `namespace`) and
    /// annotations; an unusable value is an error naming the annotation.
    pub fn pod_options(&self, pod: &Value, namespace: &str) -> Result<PodOptions, String> {
        if let Some(v) = annotation(pod, ANNOTATION_PEER_PORT) {
            return Err(format!(
                "annotation {ANNOTATION_PEER_PORT}: {v:?} is not supported: peers dial every \
                 replica of an app on the same port, the chart's sidecar.peerPort ({}); remove \
                 the annotation, or change sidecar.peerPort for all apps",
                self.peer_port
            ));
        }
        let app = self
            .app_sidecars
            .get(namespace, annotation(pod, ANNOTATION_APP));
        let capacity = annotated_capacity(pod, app.capacity.unwrap_or(self.capacity))?;
        let AppSidecar {
            peer_tls_secret,
            header_secrets,
            ..
        } = app;
        let opts = PodOptions {
            origin: annotated_origin(pod)?,
            capacity,
            memory: self.memory(pod, capacity)?,
            port: annotated_port(pod, ANNOTATION_PORT, self.port)?,
            admin_port: annotated_port(pod, ANNOTATION_ADMIN_PORT, self.admin_port)?,
            peer_port: self.peer_port,
            native: self.annotated_native(pod)?,
            config_map: self.annotated_config_map(pod)?,
            wait_before_exit_seconds: self.annotated_wait_before_exit(pod)?,
            peer_tls_secret,
            header_secrets,
            threads: self.annotated_threads(pod)?,
        };
        if opts.port == opts.admin_port
            || opts.port == opts.peer_port
            || opts.admin_port == opts.peer_port
        {
            return Err(format!(
                "annotations {ANNOTATION_PORT}, {ANNOTATION_ADMIN_PORT}: ports {} and {} must \
                 differ from each other and from the peer port {} (the chart's sidecar.peerPort)",
                opts.port, opts.admin_port, opts.peer_port
            ));
        }
        Ok(opts)
    }

    fn annotated_native(&self, pod: &Value) -> Result<bool, String> {
        match annotation(pod, ANNOTATION_NATIVE).map(str::trim) {
            None => Ok(self.native_by_default()),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(format!(
                "annotation {ANNOTATION_NATIVE}: {v:?} is invalid; expected \"true\" or \"false\""
            )),
        }
    }

    /// The app's ConfigMap: the chart's per-app `<config-map>-<app>`.
    fn annotated_config_map(&self, pod: &Value) -> Result<String, String> {
        match annotation(pod, ANNOTATION_APP).map(str::trim) {
            None => Ok(self.config_map.clone()),
            Some(app) if is_dns_label(app) => Ok(format!("{}-{app}", self.config_map)),
            Some(app) => Err(format!(
                "annotation {ANNOTATION_APP}: {app:?} is invalid; expected an app name from \
                 the chart's apps list (lowercase letters, digits and '-')"
            )),
        }
    }

    fn annotated_wait_before_exit(&self, pod: &Value) -> Result<u32, String> {
        let Some(v) = annotation(pod, ANNOTATION_WAIT_BEFORE_EXIT) else {
            return Ok(self.wait_before_exit_seconds);
        };
        match v.trim().parse::<u32>() {
            Ok(n) if n <= MAX_WAIT_BEFORE_EXIT => Ok(n),
            _ => Err(format!(
                "annotation {ANNOTATION_WAIT_BEFORE_EXIT}: {v:?} is invalid; expected \
                 whole seconds from 0 to {MAX_WAIT_BEFORE_EXIT}, such as \"10\""
            )),
        }
    }

    fn annotated_threads(&self, pod: &Value) -> Result<u32, String> {
        let Some(v) = annotation(pod, ANNOTATION_THREADS) else {
            return Ok(self.threads);
        };
        match v.trim().parse::<u32>() {
            Ok(n) if n <= MAX_THREADS => Ok(n),
            _ => Err(format!(
                "annotation {ANNOTATION_THREADS}: {v:?} is invalid; expected a number of \
                 threads from 0 (the container's CPU limit, else the node's CPUs) to \
                 {MAX_THREADS}, such as \"2\""
            )),
        }
    }

    /// The memory request and limit: annotations, else flags, else the formula.
    fn memory(&self, pod: &Value, capacity: u64) -> Result<Memory, String> {
        let explicit = |key: &str, default: &Option<Quantity>| match annotation(pod, key) {
            None => Ok(default.clone()),
            Some(v) => Quantity::parse(v).map(Some).ok_or_else(|| {
                format!("annotation {key}: {v:?} is invalid; expected {QUANTITY_HINT}")
            }),
        };
        let request = explicit(ANNOTATION_MEMORY_REQUEST, &self.memory_request)?;
        let limit = explicit(ANNOTATION_MEMORY_LIMIT, &self.memory_limit)?;
        Memory::resolve(capacity, self.sizing, request, limit).map_err(|why| {
            format!("annotations {ANNOTATION_MEMORY_REQUEST}, {ANNOTATION_MEMORY_LIMIT}, {ANNOTATION_CAPACITY}: {why}")
        })
    }

    /// The container spec for these options.
    pub fn container(&self, o: &PodOptions) -> Value {
        let mut env = vec![
            json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
            json!({"name": "RINGSIDE_CONFIG", "value": format!("{CONFIG_DIR}/config.yaml")}),
            json!({"name": "RINGSIDE_LISTEN", "value": format!("127.0.0.1:{}", o.port)}),
            json!({"name": "RINGSIDE_ADMIN_LISTEN", "value": format!("0.0.0.0:{}", o.admin_port)}),
            json!({"name": "RINGSIDE_PEER_LISTEN", "value": format!("0.0.0.0:{}", o.peer_port)}),
            json!({"name": "RINGSIDE_CAPACITY", "value": o.capacity.to_string()}),
            json!({"name": "RINGSIDE_THREADS", "value": o.threads.to_string()}),
            json!({"name": "RINGSIDE_CLUSTER_SECRET_FILE",
                "value": format!("{SECRET_DIR}/{PEER_SECRET_KEY}")}),
            json!({"name": "RINGSIDE_ADMIN_TOKEN_FILE",
                "value": format!("{SECRET_DIR}/{ADMIN_TOKEN_KEY}")}),
        ];
        if let Some(origin) = &o.origin {
            env.push(json!({"name": "RINGSIDE_ORIGIN", "value": origin}));
        }
        // A regular container gets SIGTERM with the app: serve its last calls.
        if !o.native && o.wait_before_exit_seconds > 0 {
            let delay = format!("{}s", o.wait_before_exit_seconds);
            env.push(json!({"name": "RINGSIDE_SHUTDOWN_DELAY", "value": delay}));
        }
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": {"path": path, "port": "ringside-admin", "scheme": "HTTP"},
                "periodSeconds": period,
                "timeoutSeconds": 2,
                "failureThreshold": failures,
            })
        };
        let mut limits = json!({"memory": o.memory.limit.text});
        if let Some(cpu) = &self.cpu_limit {
            limits["cpu"] = json!(cpu);
        }
        let mut c = json!({
            "name": CONTAINER_NAME,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "ports": [
                {"name": "ringside-admin", "containerPort": o.admin_port, "protocol": "TCP"},
                {"name": "ringside-peer", "containerPort": o.peer_port, "protocol": "TCP"},
            ],
            "env": env,
            "resources": {
                "requests": {"cpu": self.cpu_request, "memory": o.memory.request.text},
                "limits": limits,
            },
            // The app waits for this before starting when ringside is a native sidecar.
            "startupProbe": probe("/readyz", 1, 30),
            "readinessProbe": probe("/readyz", 5, 3),
            "livenessProbe": probe("/healthz", 10, 3),
            "securityContext": self.security_context,
            "volumeMounts": [
                {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true},
                {"name": SECRET_VOLUME, "mountPath": SECRET_DIR, "readOnly": true},
                {"name": TMP_VOLUME, "mountPath": "/tmp"},
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        });
        if o.native {
            c["restartPolicy"] = json!("Always");
        }
        if self
            .security_context
            .as_object()
            .is_none_or(|m| m.is_empty())
        {
            if let Some(c) = c.as_object_mut() {
                c.remove("securityContext");
            }
        }
        if let Some(mounts) = c["volumeMounts"].as_array_mut() {
            if o.peer_tls_secret.is_some() {
                mounts.push(
                    json!({"name": PEER_TLS_VOLUME, "mountPath": PEER_TLS_DIR, "readOnly": true}),
                );
            }
            if !o.header_secrets.is_empty() {
                mounts.push(json!({"name": HEADER_SECRETS_VOLUME,
                    "mountPath": HEADER_SECRETS_DIR, "readOnly": true}));
            }
        }
        c
    }

    /// Decide what to do with one pod object created in `namespace`, asked
    /// for `by` the pod or its namespace, with the near-misses to warn about.
    pub fn decide(&self, pod: &Value, namespace: &str, by: AskedBy) -> Verdict {
        let decision = self.decision(pod, namespace, by);
        let mut warnings = checks::near_misses(pod);
        match &decision {
            Decision::Patch(..) => {
                if let Ok(opts) = self.pod_options(pod, namespace) {
                    warnings.extend(checks::ignored(pod, &opts));
                }
            }
            // The namespace asked, the pod cannot have it: say why it has none.
            Decision::Skip(reason, why) if by == AskedBy::Namespace && is_unfit(reason) => {
                warnings.push(format!("no ringside sidecar: {why}"));
            }
            _ => {}
        }
        Verdict { decision, warnings }
    }

    fn decision(&self, pod: &Value, namespace: &str, by: AskedBy) -> Decision {
        if let Some(skip) = not_asked(pod, by) {
            return skip;
        }
        if already_injected(pod) {
            return Decision::Skip(
                "already_injected",
                "ringside sidecar already present".into(),
            );
        }
        // A pod that asked is refused what cannot work; one whose namespace
        // asked starts without the sidecar (a Job, a DaemonSet on the host's
        // network), and the warning says why.
        let refuse = |reason: &'static str, why: String| match by {
            AskedBy::Pod => Decision::Deny(reason, why),
            AskedBy::Namespace => Decision::Skip(reason, why),
        };
        let opts = match self.pod_options(pod, namespace) {
            Ok(o) => o,
            Err(e) => return Decision::Deny("invalid_annotation", e),
        };
        if let (Some(app), Some(apps)) = (annotation(pod, ANNOTATION_APP), &self.apps) {
            if let Some(why) = checks::unknown_app(app.trim(), namespace, apps) {
                return Decision::Deny("unknown_app", why);
            }
        }
        if annotation(pod, ANNOTATION_APP).is_none() {
            if let Some(list) = &self.config_namespaces {
                if let Some(why) = checks::no_config_map(namespace, list, &opts.config_map) {
                    return refuse("no_config_map", why);
                }
            }
        }
        if let Some((reason, why)) = checks::unfit(pod, &opts) {
            return refuse(reason, why);
        }
        let mut summary = format!(
            "{} sidecar, ConfigMap {}, memory {}/{}",
            if opts.native { "native" } else { "regular" },
            opts.config_map,
            opts.memory.request.text,
            opts.memory.limit.text
        );
        if !opts.header_secrets.is_empty() {
            let names: Vec<&str> = opts.header_secrets.keys().map(String::as_str).collect();
            summary.push_str(&format!(", header Secrets {}", names.join(", ")));
        }
        Decision::Patch(self.patch(pod, &opts), summary, by)
    }

    /// JSONPatch adding the container, volumes and the injected annotation.
    /// Every `add` creates its array or map when the pod has none.
    pub fn patch(&self, pod: &Value, o: &PodOptions) -> Value {
        let mut ops = Vec::new();
        let spec = pod.get("spec");
        let has = |key: &str| spec.and_then(|s| s.get(key)).is_some_and(|v| v.is_array());
        let container = self.container(o);
        let list = if o.native {
            "initContainers"
        } else {
            "containers"
        };
        if has(list) {
            ops.push(json!({"op": "add", "path": format!("/spec/{list}/-"), "value": container}));
        } else {
            ops.push(json!({"op": "add", "path": format!("/spec/{list}"), "value": [container]}));
        }
        let mut volumes = vec![
            json!({"name": CONFIG_VOLUME, "configMap": {"name": o.config_map}}),
            json!({"name": SECRET_VOLUME, "secret": {"secretName": self.secret}}),
            json!({"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        ];
        if let Some(secret) = &o.peer_tls_secret {
            volumes.push(json!({"name": PEER_TLS_VOLUME, "secret": {"secretName": secret}}));
        }
        if let Some(volume) = header_secrets_volume(&o.header_secrets) {
            volumes.push(volume);
        }
        if has("volumes") {
            for v in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
            }
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
        }
        let key = escape_pointer(ANNOTATION_INJECTED);
        match pod.get("metadata") {
            Some(m) if m.get("annotations").is_some_and(Value::is_object) => ops.push(
                json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": "true"}),
            ),
            Some(m) if m.is_object() => ops.push(json!({"op": "add", "path": "/metadata/annotations",
                "value": {ANNOTATION_INJECTED: "true"}})),
            _ => ops.push(json!({"op": "add", "path": "/metadata",
                "value": {"annotations": {ANNOTATION_INJECTED: "true"}}})),
        }
        Value::Array(ops)
    }
}

/// The projected volume of the Secret keys an app's injected headers read:
/// key KEY of Secret SECRET at `SECRET/KEY`, only the keys named (the chart's
/// `ringside.sidecarVolumes` writes the same); None when there are none.
fn header_secrets_volume(secrets: &HeaderSecrets) -> Option<Value> {
    let sources: Vec<Value> = secrets
        .iter()
        .map(|(secret, keys)| {
            let items: Vec<Value> = keys
                .iter()
                .map(|key| json!({"key": key, "path": format!("{secret}/{key}")}))
                .collect();
            json!({"secret": {"name": secret, "items": items}})
        })
        .collect();
    (!sources.is_empty())
        .then(|| json!({"name": HEADER_SECRETS_VOLUME, "projected": {"sources": sources}}))
}

/// The skip for a pod not asked for: by its own annotation (only "true"
/// asks), or in a namespace that asked, by `ringside.io/inject: "false"`.
fn not_asked(pod: &Value, by: AskedBy) -> Option<Decision> {
    let value = annotation(pod, ANNOTATION_INJECT).map(str::trim);
    match (by, value) {
        (AskedBy::Pod, Some("true")) | (AskedBy::Namespace, None | Some("true")) => None,
        (AskedBy::Namespace, Some("false")) => Some(Decision::Skip(
            "opted_out",
            format!(
                "annotation {ANNOTATION_INJECT} is \"false\": this pod opts out of its \
                 namespace's {NAMESPACE_LABEL}={NAMESPACE_LABEL_ENABLED}"
            ),
        )),
        (AskedBy::Namespace, Some(v)) => Some(Decision::Skip(
            "not_requested",
            format!(
                "annotation {ANNOTATION_INJECT} is {v:?}: in a namespace labelled \
                 {NAMESPACE_LABEL}={NAMESPACE_LABEL_ENABLED} a pod is injected unless it says \
                 \"false\", and this value says neither"
            ),
        )),
        (AskedBy::Pod, _) => Some(Decision::Skip(
            "not_requested",
            "injection not requested (annotation ringside.io/inject is not \"true\")".into(),
        )),
    }
}

/// Reasons a pod cannot have the sidecar (refused when it asked itself).
fn is_unfit(reason: &str) -> bool {
    matches!(reason, "host_network" | "port_conflict" | "no_config_map")
}

/// JSON Pointer escaping (RFC 6901): `~` -> `~0`, `/` -> `~1`.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value) -> Value {
        json!({"metadata": {"annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "app"}]}})
    }

    #[test]
    fn versions() {
        assert_eq!(major_minor("v1.29.3"), Some((1, 29)));
        assert_eq!(major_minor("1.31+"), Some((1, 31)));
        assert_eq!(major_minor("1.30.0-gke.1"), Some((1, 30)));
        assert_eq!(major_minor("x"), None);
        let mut s = Settings {
            kube_version: Some("1.28.5".into()),
            ..Settings::default()
        };
        assert!(!s.native_by_default());
        s.kube_version = Some("v1.29.0".into());
        assert!(s.native_by_default());
        s.kube_version = None;
        assert!(!s.native_by_default());
    }

    #[test]
    fn resources_follow_capacity() {
        let s = Settings::default();
        let o = s
            .pod_options(&pod(json!({ANNOTATION_CAPACITY: "128Mi"})), "shop")
            .unwrap();
        let c = s.container(&o);
        // 1.15 x 128 MiB + 40 MiB + 256 x 40 KiB = 197.2 MiB; + 128 MiB headroom.
        assert_eq!(c["resources"]["requests"]["memory"], "198Mi");
        assert_eq!(c["resources"]["limits"]["memory"], "326Mi");
    }

    #[test]
    fn an_apps_capacity_and_header_secrets_reach_its_pods_only() {
        let capacities = vec!["shop/catalog=1GiB".to_string()];
        let headers = vec![
            "shop/catalog=partner-key/token".to_string(),
            "shop/catalog=billing/key".to_string(),
        ];
        let s = Settings {
            app_sidecars: AppSidecars::from_flags(super::super::apps::AppFlags {
                capacities: &capacities,
                header_secrets: &headers,
                ..Default::default()
            })
            .unwrap(),
            ..Settings::default()
        };
        let catalog = pod(json!({ANNOTATION_APP: "catalog"}));
        let o = s.pod_options(&catalog, "shop").unwrap();
        let c = s.container(&o);
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
        };
        assert_eq!(env("RINGSIDE_CAPACITY").unwrap()["value"], "1073741824");
        // 1.15 x 1 GiB + 40 MiB + 10 MiB = 1227.6 MiB.
        assert_eq!(c["resources"]["requests"]["memory"], "1228Mi");
        let mount = json!({"name": HEADER_SECRETS_VOLUME, "mountPath": HEADER_SECRETS_DIR,
            "readOnly": true});
        assert!(
            c["volumeMounts"].as_array().unwrap().contains(&mount),
            "{c}"
        );
        assert!(!c.to_string().contains("secretKeyRef"), "{c}");
        let volume = json!({"name": HEADER_SECRETS_VOLUME, "projected": {"sources": [
            {"secret": {"name": "billing", "items": [{"key": "key", "path": "billing/key"}]}},
            {"secret": {"name": "partner-key",
                        "items": [{"key": "token", "path": "partner-key/token"}]}},
        ]}});
        let ops = s.patch(&catalog, &o);
        let volumes = ops
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/spec/volumes");
        assert!(
            volumes.unwrap()["value"]
                .as_array()
                .unwrap()
                .contains(&volume),
            "{ops}"
        );
        // A pod's own annotation still wins over the app's capacity.
        let sized = pod(json!({ANNOTATION_APP: "catalog", ANNOTATION_CAPACITY: "64Mi"}));
        assert_eq!(s.pod_options(&sized, "shop").unwrap().capacity, 64 * MIB);
        // The same name in another namespace is another app.
        let elsewhere = s.pod_options(&catalog, "web").unwrap();
        assert_eq!(elsewhere.capacity, 256 * MIB);
        let c = s.container(&elsewhere);
        assert!(!c.to_string().contains(HEADER_SECRETS_DIR), "{c}");
        assert!(!s
            .patch(&catalog, &elsewhere)
            .to_string()
            .contains("projected"));
    }

    #[test]
    fn skip_and_deny() {
        let s = Settings::default();
        let skipped = |p: &Value| {
            let verdict = s.decide(p, "shop", AskedBy::Pod);
            matches!(verdict.decision, Decision::Skip(..))
        };
        assert!(skipped(&pod(json!({}))));
        assert!(skipped(&json!(null)));
        let bad = pod(json!({ANNOTATION_INJECT: "true", ANNOTATION_PORT: "0"}));
        match s.decide(&bad, "shop", AskedBy::Pod).decision {
            Decision::Deny(_, m) => assert!(m.contains("ringside.io/port"), "{m}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape_pointer("ringside.io/injected"),
            "ringside.io~1injected"
        );
        assert_eq!(escape_pointer("a~b"), "a~0b");
    }
}
