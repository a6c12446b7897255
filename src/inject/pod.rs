//! What a pod says to the webhook: the `ringside.io/` annotations it may
//! carry, and the options they add up to once read ([`PodOptions`]). A leaf
//! both the injection (`sidecar`) and the warnings about a pod (`checks`)
//! read from.

use super::apps::HeaderSecrets;
use super::memory::Memory;

/// Annotation that asks for injection (`"true"`).
pub const ANNOTATION_INJECT: &str = "ringside.io/inject";
/// Annotation the webhook sets on pods it has mutated.
pub const ANNOTATION_INJECTED: &str = "ringside.io/injected";
/// Per-pod origin override (`http://host:port`).
pub const ANNOTATION_ORIGIN: &str = "ringside.io/origin";
/// Per-pod cache capacity override (`512MiB`, `512Mi`, bytes).
pub const ANNOTATION_CAPACITY: &str = "ringside.io/capacity";
/// Per-pod app-facing port (listens on 127.0.0.1).
pub const ANNOTATION_PORT: &str = "ringside.io/port";
/// Per-pod admin port (probes, metrics).
pub const ANNOTATION_ADMIN_PORT: &str = "ringside.io/admin-port";
/// No longer supported, and refused: peers dial every member of an app on one
/// port (DNS records carry addresses, not ports), the chart's
/// `sidecar.peerPort` in the app's ConfigMap, so one pod cannot listen on
/// another. Known, so that it is refused with that reason rather than
/// warned about as a typo.
pub const ANNOTATION_PEER_PORT: &str = "ringside.io/peer-port";
/// Which app's ConfigMap to mount (`<config-map>-<app>`), as listed in the chart's `apps`.
pub const ANNOTATION_APP: &str = "ringside.io/app";
/// Per-pod native-sidecar override (`"true"` / `"false"`).
pub const ANNOTATION_NATIVE: &str = "ringside.io/native-sidecar";
/// Per-pod seconds a regular-container sidecar keeps serving after SIGTERM
/// (Linkerd's `waitBeforeExitSeconds`); ignored for native sidecars, which
/// Kubernetes stops after the app.
pub const ANNOTATION_WAIT_BEFORE_EXIT: &str = "ringside.io/wait-before-exit-seconds";
/// Per-pod memory request of the container (a Kubernetes quantity), instead of
/// the formula in [`super::memory`].
pub const ANNOTATION_MEMORY_REQUEST: &str = "ringside.io/memory-request";
/// Per-pod memory limit of the container, instead of the request + headroom.
pub const ANNOTATION_MEMORY_LIMIT: &str = "ringside.io/memory-limit";
/// Per-pod proxy worker threads (`RINGSIDE_THREADS`; 0: the container's
/// CPU limit, else the node's CPUs).
pub const ANNOTATION_THREADS: &str = "ringside.io/threads";
/// Every annotation ringside reads or writes (others under `ringside.io/` are typos).
pub const ANNOTATIONS: [&str; 13] = [
    ANNOTATION_INJECT,
    ANNOTATION_INJECTED,
    ANNOTATION_ORIGIN,
    ANNOTATION_CAPACITY,
    ANNOTATION_PORT,
    ANNOTATION_ADMIN_PORT,
    ANNOTATION_PEER_PORT,
    ANNOTATION_APP,
    ANNOTATION_NATIVE,
    ANNOTATION_WAIT_BEFORE_EXIT,
    ANNOTATION_MEMORY_REQUEST,
    ANNOTATION_MEMORY_LIMIT,
    ANNOTATION_THREADS,
];

/// The namespace label that asks for the sidecar in every pod of the
/// namespace (as `istio-injection=enabled` does), with this value; a pod
/// opts out with `ringside.io/inject: "false"`.
pub const NAMESPACE_LABEL: &str = "ringside.io/inject";
pub const NAMESPACE_LABEL_ENABLED: &str = "enabled";

/// Who asks for the sidecar: the pod itself (`ringside.io/inject: "true"`,
/// the webhook's `/mutate`) or its namespace ([`NAMESPACE_LABEL`], the API
/// server sends those pods to `/mutate/namespace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskedBy {
    Pod,
    Namespace,
}

/// The effective per-pod values after annotation overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOptions {
    pub origin: Option<String>,
    pub capacity: u64,
    pub port: u16,
    pub admin_port: u16,
    pub peer_port: u16,
    pub native: bool,
    pub config_map: String,
    pub memory: Memory,
    /// Seconds of `shutdown_delay`; applied only when not native.
    pub wait_before_exit_seconds: u32,
    /// The app's peer TLS Secret, mounted at the sidecar's `PEER_TLS_DIR`.
    pub peer_tls_secret: Option<String>,
    /// The Secret keys the app's injected headers read, mounted as files
    /// under the sidecar's `HEADER_SECRETS_DIR`.
    pub header_secrets: HeaderSecrets,
    /// Proxy worker threads (`RINGSIDE_THREADS`).
    pub threads: u32,
}
