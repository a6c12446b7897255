//! `ringside inject`: the mutating admission webhook that adds the ringside
//! sidecar to Pods annotated `ringside.io/inject: "true"`.
//!
//! This module owns the command's flags ([`InjectArgs`]) and the HTTPS
//! server; what is injected lives in [`sidecar`], what the chart says about
//! each of its apps (capacity, peer TLS, the Secrets of injected headers) in
//! [`apps`], the AdmissionReview envelope in [`review`]. The server is a pingora HTTP app on a rustls TLS
//! listener (the same runtime as the proxy, no second HTTP stack):
//!
//! * `POST /mutate`: AdmissionReview v1 in, AdmissionReview out; an
//!   unparseable body gets 400 with a message, never a crash. A pod is
//!   injected when it asks (`ringside.io/inject: "true"`).
//! * `POST /mutate/namespace`: the same, for pods of namespaces labelled
//!   `ringside.io/inject=enabled` (the chart's second webhook): injected
//!   unless they say `"false"`; a pod the sidecar cannot work in starts
//!   without it, with a warning, instead of being refused.
//! * `GET /healthz`, `GET /readyz`: probes for the webhook Deployment.
//! * `GET /metrics`: admission counts by decision and reason, warnings and
//!   latency (`ringside_inject_*`).
//!
//! Every decision is logged at info: the pod, injected / skipped / denied,
//! why, and the warnings returned with it.
//!
//! The certificate is reloaded when its files change (`tls_files` and
//! `watched_files`, shared with the peer listener's TLS): a cert-manager
//! renewal takes effect within a second of the kubelet swapping the files,
//! no restart.

pub mod apps;
pub mod checks;
pub mod memory;
pub mod pod;
pub mod review;
pub mod sidecar;

use crate::net::tls_files::CertificateFiles;
use crate::net::watched_files::Watched;
use apps::{AppFlags, AppSidecars};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use pod::AskedBy;
use sidecar::{NativeSidecar, Settings};
use std::process::ExitCode;
use std::sync::Arc;

/// Largest AdmissionReview accepted (the API server's own limit is 3 MiB objects).
const MAX_BODY: usize = 8 << 20;

/// HTTPS address when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";

/// Flags of `ringside inject` (only these: the proxy's flags do not apply).
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// HTTPS address of the webhook.
    #[arg(long, env = "RINGSIDE_INJECT_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "RINGSIDE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// PEM certificate (chain) served by the webhook.
    #[arg(long, env = "RINGSIDE_INJECT_TLS_CERT")]
    pub tls_cert: String,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RINGSIDE_INJECT_TLS_KEY")]
    pub tls_key: String,
    /// Image of the injected ringside container.
    #[arg(long, env = "RINGSIDE_INJECT_SIDECAR_IMAGE")]
    pub sidecar_image: String,
    /// imagePullPolicy of the injected container.
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// ConfigMap with config.yaml, in the pod's namespace. A pod annotated
    /// `ringside.io/app: NAME` gets `<config-map>-NAME` instead.
    #[arg(long, default_value = "ringside")]
    pub config_map: String,
    /// Secret with the cluster's peer secret (key `secret`) and the admin
    /// token (key `admin-token`), in the pod's namespace.
    #[arg(long, default_value = "ringside-peer-secret")]
    pub secret: String,
    /// Inject as a native sidecar (init container with restartPolicy: Always).
    #[arg(long, value_enum, default_value = "auto")]
    pub native_sidecar: NativeSidecar,
    /// The cluster's Kubernetes version, used by --native-sidecar auto (1.29+ = native).
    #[arg(long, env = "RINGSIDE_INJECT_KUBE_VERSION")]
    pub kube_version: Option<String>,
    /// Default cache capacity of injected sidecars (e.g. 256MiB or 256Mi).
    #[arg(long = "sidecar-capacity", default_value = "256MiB")]
    pub sidecar_capacity: String,
    /// Connections an app keeps open to its sidecar, 40 KiB each in the
    /// default memory request (see --memory-request).
    #[arg(long, default_value_t = 256)]
    pub memory_connections: u64,
    /// Memory between the default request and limit, for responses being
    /// written and fills in flight (e.g. 128Mi).
    #[arg(long, default_value = "128Mi")]
    pub memory_headroom: String,
    /// Memory request of injected containers (e.g. 900Mi); default: 1.15 x
    /// capacity + 40 MiB + 40 KiB x --memory-connections.
    #[arg(long)]
    pub memory_request: Option<String>,
    /// Memory limit of injected containers (e.g. 1.5Gi); default: the
    /// request + --memory-headroom.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// CPU request of the injected container.
    #[arg(long, default_value = "50m")]
    pub cpu_request: String,
    /// CPU limit of the injected container (none by default).
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// App-facing port (ringside listens on 127.0.0.1:PORT in the pod).
    #[arg(long = "sidecar-port", default_value_t = 8080)]
    pub port: u16,
    /// Admin port (probes and /metrics, on all pod addresses).
    #[arg(long = "sidecar-admin-port", default_value_t = 9090)]
    pub admin_port: u16,
    /// The port peers dial (the ConfigMap's membership port, the chart's
    /// sidecar.peerPort): every injected sidecar listens on it.
    #[arg(long = "sidecar-peer-port", default_value_t = 7070)]
    pub peer_port: u16,
    /// Seconds an injected sidecar that is not a native sidecar keeps serving
    /// after SIGTERM (its shutdown_delay), so the app's last calls get through.
    #[arg(long, default_value_t = 0)]
    pub wait_before_exit_seconds: u32,
    /// Proxy worker threads of injected sidecars (their RINGSIDE_THREADS; 0:
    /// the container's CPU limit, else the node's CPUs).
    #[arg(long = "sidecar-threads", default_value_t = 2)]
    pub threads: u32,
    /// securityContext of injected containers, as a JSON object (the chart's
    /// sidecar.securityContext); default: non-root UID 65532, read-only root,
    /// no capabilities, seccomp RuntimeDefault.
    #[arg(long)]
    pub security_context: Option<String>,
    /// The apps that have a ConfigMap, as NAMESPACE/NAME, comma-separated (the
    /// chart's `apps`; empty: none). A pod whose ringside.io/app is not one of
    /// its namespace's is refused. Not given: not checked.
    #[arg(long, value_delimiter = ',')]
    pub apps: Option<Vec<String>>,
    /// The namespaces that have the standalone ConfigMap (--config-map) and
    /// the Secret, comma-separated (the chart's release namespace, its apps'
    /// and `namespaces`). A pod of no app elsewhere is refused (asked by its
    /// namespace: not injected, with a warning). Not given: not checked.
    #[arg(long, value_delimiter = ',')]
    pub config_namespaces: Option<Vec<String>>,
    /// The apps whose peers speak mutual TLS (the chart's
    /// `apps[].peerTls.secretName`), as NAMESPACE/APP=SECRET, comma-separated:
    /// their sidecars mount SECRET (ca.crt, tls.crt, tls.key) at
    /// /etc/ringside-peer-tls, where the app's ConfigMap expects it.
    #[arg(long, value_delimiter = ',')]
    pub peer_tls_secrets: Vec<String>,
    /// The apps whose sidecars have a cache capacity of their own (the
    /// chart's `apps[].capacity`), as NAMESPACE/APP=SIZE, comma-separated:
    /// instead of --sidecar-capacity, for their RINGSIDE_CAPACITY and their
    /// memory request and limit (a pod's ringside.io/capacity still wins).
    #[arg(long, value_delimiter = ',')]
    pub app_capacities: Vec<String>,
    /// The Secret keys the apps' injected headers read (the chart's
    /// `apps[].injectHeaders`), as NAMESPACE/APP=SECRET/KEY, comma-separated,
    /// an app repeated for each key: their sidecars mount each key as the
    /// file /etc/ringside-headers/SECRET/KEY, which the app's ConfigMap names
    /// as the header's value_file (never an environment variable).
    #[arg(long, value_delimiter = ',')]
    pub app_header_secrets: Vec<String>,
}

impl InjectArgs {
    /// Check the flags and turn them into injection [`Settings`].
    pub fn settings(&self) -> Result<Settings, String> {
        let capacity = memory::parse_capacity(&self.sidecar_capacity)
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                format!(
                    "--sidecar-capacity: {:?} is invalid; expected a size such as 256MiB",
                    self.sidecar_capacity
                )
            })?;
        let (sizing, memory_request, memory_limit) = self.memory_flags(capacity)?;
        let app_sidecars = self.app_sidecars(sizing, &memory_request, &memory_limit)?;
        if self.sidecar_image.trim().is_empty() {
            return Err("--sidecar-image: empty; expected an image reference".into());
        }
        if self.threads > sidecar::MAX_THREADS {
            return Err(format!(
                "--sidecar-threads: {} is invalid; expected 0 (the container's CPU limit, else \
                 the node's CPUs) to {}",
                self.threads,
                sidecar::MAX_THREADS
            ));
        }
        for (flag, port) in [
            ("--sidecar-port", self.port),
            ("--sidecar-admin-port", self.admin_port),
            ("--sidecar-peer-port", self.peer_port),
        ] {
            if port == 0 {
                return Err(format!("{flag}: 0 is invalid; expected 1-65535"));
            }
        }
        Ok(Settings {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            config_map: self.config_map.clone(),
            secret: self.secret.clone(),
            native_sidecar: self.native_sidecar,
            kube_version: self.kube_version.clone(),
            capacity,
            sizing,
            memory_request,
            memory_limit,
            cpu_request: self.cpu_request.clone(),
            cpu_limit: self.cpu_limit.clone(),
            port: self.port,
            admin_port: self.admin_port,
            peer_port: self.peer_port,
            wait_before_exit_seconds: self.wait_before_exit_seconds,
            threads: self.threads,
            security_context: self.security_context_flag()?,
            apps: self.apps_flag()?,
            config_namespaces: self.config_namespaces.as_ref().map(|list| {
                list.iter()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect()
            }),
            app_sidecars,
        })
    }

    /// The per-app flags, each app's capacity checked against the memory
    /// flags as --sidecar-capacity is.
    fn app_sidecars(
        &self,
        sizing: memory::Sizing,
        request: &Option<memory::Quantity>,
        limit: &Option<memory::Quantity>,
    ) -> Result<AppSidecars, String> {
        let apps = AppSidecars::from_flags(AppFlags {
            capacities: &self.app_capacities,
            peer_tls_secrets: &self.peer_tls_secrets,
            header_secrets: &self.app_header_secrets,
        })?;
        for (app, capacity) in apps.capacities() {
            memory::Memory::resolve(capacity, sizing, request.clone(), limit.clone()).map_err(
                |why| format!("--memory-request, --memory-limit, --app-capacities ({app}): {why}"),
            )?;
        }
        Ok(apps)
    }

    /// The memory flags: how requests and limits are sized, and the explicit
    /// request and limit, checked to fit together for `capacity`.
    fn memory_flags(&self, capacity: u64) -> Result<MemoryFlags, String> {
        let headroom = memory::parse_quantity(&self.memory_headroom).ok_or_else(|| {
            format!(
                "--memory-headroom: {:?} is invalid; expected {}",
                self.memory_headroom,
                memory::QUANTITY_HINT
            )
        })?;
        let sizing = memory::Sizing {
            connections: self.memory_connections,
            headroom,
        };
        let quantity = |flag: &str, v: &Option<String>| match v {
            None => Ok(None),
            Some(v) => memory::Quantity::parse(v).map(Some).ok_or_else(|| {
                format!(
                    "{flag}: {v:?} is invalid; expected {}",
                    memory::QUANTITY_HINT
                )
            }),
        };
        let memory_request = quantity("--memory-request", &self.memory_request)?;
        let memory_limit = quantity("--memory-limit", &self.memory_limit)?;
        memory::Memory::resolve(
            capacity,
            sizing,
            memory_request.clone(),
            memory_limit.clone(),
        )
        .map_err(|why| format!("--memory-request, --memory-limit, --sidecar-capacity: {why}"))?;
        Ok((sizing, memory_request, memory_limit))
    }

    /// `--security-context` as a JSON object, or the default.
    fn security_context_flag(&self) -> Result<serde_json::Value, String> {
        let Some(text) = &self.security_context else {
            return Ok(sidecar::default_security_context());
        };
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(format!(
                "--security-context: {text:?} is invalid; expected a JSON object such as \
                 {{\"runAsNonRoot\":true}} (a Kubernetes SecurityContext)"
            )),
        }
    }

    /// `--apps` as (namespace, name) pairs; None when not given.
    fn apps_flag(&self) -> Result<Option<Vec<(String, String)>>, String> {
        let Some(list) = &self.apps else {
            return Ok(None);
        };
        list.iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| match a.trim().split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Ok((ns.to_string(), name.to_string()))
                }
                _ => Err(format!("--apps: {a:?} is invalid; expected NAMESPACE/NAME")),
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Some)
    }
}

/// What the memory flags give: sizing, explicit request, explicit limit.
type MemoryFlags = (
    memory::Sizing,
    Option<memory::Quantity>,
    Option<memory::Quantity>,
);

/// The webhook's HTTP app.
pub struct Webhook {
    pub settings: Settings,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    reply(status, "text/plain", format!("{message}\n").into_bytes())
}

#[async_trait]
impl ServeHttp for Webhook {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/healthz" | "/readyz") => {
                reply(StatusCode::OK, "text/plain", b"ok\n".to_vec())
            }
            (Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render(),
            ),
            (Method::POST, path @ ("/mutate" | "/mutate/namespace")) => {
                let by = match path {
                    "/mutate" => AskedBy::Pod,
                    _ => AskedBy::Namespace,
                };
                let mut body = Vec::new();
                loop {
                    match session.read_request_body().await {
                        Ok(Some(chunk)) => {
                            if body.len() + chunk.len() > MAX_BODY {
                                return error(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "AdmissionReview larger than 8 MiB",
                                );
                            }
                            body.extend_from_slice(&chunk);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                &format!("cannot read request body: {e}"),
                            )
                        }
                    }
                }
                let started = tokio::time::Instant::now();
                match review::respond(&body, &self.settings, by) {
                    Ok(out) => {
                        record(&out, started.elapsed().as_secs_f64());
                        let bytes = serde_json::to_vec(&out.review).unwrap_or_default();
                        reply(StatusCode::OK, "application/json", bytes)
                    }
                    Err(review::BadReview(why)) => {
                        let seconds = started.elapsed().as_secs_f64();
                        crate::metrics::observe_admission("error", "bad_review", 0, seconds);
                        log::warn!("rejected AdmissionReview: {why}");
                        error(StatusCode::BAD_REQUEST, &why)
                    }
                }
            }
            (_, "/mutate" | "/mutate/namespace") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use POST /mutate")
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not found; the webhook is POST /mutate",
            ),
        }
    }
}

/// Log one decision and count it.
fn record(out: &review::Reviewed, seconds: f64) {
    crate::metrics::observe_admission(out.decision, out.reason, out.warnings.len(), seconds);
    let warnings = match out.warnings.is_empty() {
        true => String::new(),
        false => format!("; warnings: {}", out.warnings.join("; ")),
    };
    log::info!(
        "{}: {} ({}): {}{warnings}",
        out.pod,
        out.decision,
        out.reason,
        out.detail
    );
}

fn check_pem(flag: &str, path: &str, marker: &str) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag}: cannot read {path}: {e}"))?;
    if !text.contains("-----BEGIN") || !text.contains(marker) {
        return Err(format!("{flag}: {path} holds no PEM {marker}"));
    }
    Ok(())
}

/// Run the webhook until a signal ends the process.
pub fn run(args: &InjectArgs) -> ExitCode {
    let listen = args.listen.as_str();
    let log_level = args.log_level.as_str();
    let _ = env_logger::Builder::new()
        .parse_filters(&format!("{log_level},pingora=warn,pingora_core=warn"))
        .format_timestamp_millis()
        .try_init();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringside inject: {e}");
            return ExitCode::from(2);
        }
    };
    let certificate = listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| format!("--listen: {listen:?} is invalid; expected IP:port"))
        .and_then(|_| check_pem("--tls-cert", &args.tls_cert, "CERTIFICATE"))
        .and_then(|_| check_pem("--tls-key", &args.tls_key, "PRIVATE KEY"))
        .and_then(|_| {
            let (cert, key) = (args.tls_cert.clone(), args.tls_key.clone());
            Watched::new(
                "TLS certificate",
                &[&args.tls_cert, &args.tls_key],
                move || CertificateFiles::load(&cert, &key),
                crate::metrics::observe_certificate_reload,
            )
            .map_err(|e| format!("--tls-cert, --tls-key: {e}"))
        });
    let certificate = match certificate {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringside inject: {e}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: 2,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    crate::metrics::init_inject();
    let native = settings.native_by_default();
    let mut service = Service::new("ringside inject".into(), Webhook { settings });
    let mut tls = match TlsSettings::intermediate(&args.tls_cert, &args.tls_key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("ringside inject: cannot use the TLS certificate or key: {e}");
            return ExitCode::from(2);
        }
    };
    tls.set_cert_resolver(Arc::new(certificate));
    service.add_tls_with_settings(listen, None, tls);
    server.add_service(service);
    log::info!(
        "ringside inject listening on https://{} (POST /mutate), native sidecar: {native}",
        listen
    );
    server.run_forever()
}
