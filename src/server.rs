//! Assembly: build the store, the proxy and the admin service from a
//! [`Config`], and run them on pingora until a signal ends the process.
//!
//! How the process ends is `shutdown.rs`.

use crate::admin::Admin;
use crate::cache::store::Store;
use crate::cluster::announce;
use crate::cluster::Cluster;
use crate::config::{Config, PeerProtocol};
use crate::metrics;
use crate::net::connections::{self, Guarded, Handshake, Limits};
use crate::net::listeners::ByListener;
use crate::net::peer_tls::CleartextListener;
use crate::net::readiness;
use crate::net::refusals::Refusals;
use crate::net::tunnel::Tunnels;
use crate::node::handoff;
use crate::node::Node;
use crate::proxy::{ChannelListener, Ringside};
use crate::shutdown::DrainOnTerm;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Run ringside with `config` until a signal ends the process.
pub fn run(config: Config) -> ! {
    let config = Arc::new(config);
    check_listeners_free(&config);
    metrics::init(config.cache.capacity);
    // Membership sources and the ring updater run on a small runtime of
    // their own, started before pingora's (which start in `server.run`).
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ringside-cluster")
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(&format!("cannot start a runtime: {e}")));
    let node = Arc::new(build_node(&config, &background));
    start_membership_tasks(&node, &background);
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    add_services(&mut server, &config, node);
    log::info!("{}", startup_line(&config));
    for warning in policy_warnings(&config) {
        log::warn!("{warning}");
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnTerm::new(
            config.shutdown_grace,
            config.shutdown_delay,
        )),
    });
    drop(background);
    std::process::exit(0)
}

/// The node: its store and, in a cluster, its membership (started on
/// `background`, which keeps it running).
fn build_node(config: &Arc<Config>, background: &tokio::runtime::Runtime) -> Node {
    let (main_capacity, hot_capacity) = split_capacity(config);
    let cluster = config.cluster.enabled.then(|| {
        background
            .block_on(Cluster::start(
                &config.cluster,
                hot_capacity,
                config.cache.max_variants,
                config.origin.connect_timeout + config.origin.read_timeout,
            ))
            .unwrap_or_else(|e| fatal(&format!("cluster: {e}")))
    });
    let store = Store::new(main_capacity).with_max_variants(config.cache.max_variants);
    Node::new(config.clone(), store, cluster).unwrap_or_else(|e| fatal(&e.to_string()))
}

/// In a cluster, on `background`: announce this node once its peer
/// listener is up (`announce.rs`), and hand its entries over at SIGTERM
/// (`handoff/`).
fn start_membership_tasks(node: &Arc<Node>, background: &tokio::runtime::Runtime) {
    if node.cluster().is_none() {
        return;
    }
    background.spawn(handoff::at_sigterm(node.clone()));
    let node = node.clone();
    background.spawn(async move {
        let Some(cluster) = node.cluster() else {
            return;
        };
        let origin = &node.origins.default().key_prefix;
        let peer_listen = &node.config.cluster.peer_listen;
        let client = cluster.peer_client();
        announce::joined(&client, cluster, origin, *peer_listen).await;
    });
}

/// What an operator asserted with its path rules, said once at start: the
/// prefixes shared although requests carry credentials, those whose
/// origin directives the rule's ttl overrides, and, in a cluster without
/// peer TLS, that credentials of cacheable requests cross the peer channel
/// in cleartext (signed, not encrypted).
fn policy_warnings(config: &Config) -> Vec<String> {
    use crate::config::Scope;
    let mut warnings = Vec::new();
    let rules: Vec<_> = config.all_rules().collect();
    for rule in &rules {
        if rule.scope == Scope::SharedDespiteCredentials {
            warnings.push(format!(
                "rule {}: answers shared although requests carry credentials \
                 (scope: shared-despite-credentials): the operator asserts they do not depend on the caller",
                rule.prefix
            ));
        }
        if !rule.overrides.is_empty() {
            warnings.push(format!(
                "rule {}: its ttl overrides the origin's {:?} (override)",
                rule.prefix, rule.overrides.0
            ));
        }
    }
    let credentialed = rules.iter().any(|r| r.scope != Scope::Shared);
    if credentialed && config.cluster.enabled && config.cluster.tls.is_none() {
        warnings.push(
            "per-credential or shared-despite-credentials rules in a cluster without cluster.tls: \
             the credentials of cacheable requests cross the peer channel unencrypted"
                .into(),
        );
    }
    warnings
}

/// What the process serves, in one line: every listener and its origin,
/// and the proxy's threads (and, with `threads: 0`, where the number comes from).
fn startup_line(config: &Config) -> String {
    let mut line = format!(
        "ringside listening on {} (origin {}), admin {}",
        config.listen,
        config
            .origin
            .url
            .as_ref()
            .map_or("none".into(), |o| o.url.key_prefix()),
        config.admin_listen
    );
    for upstream in &config.upstreams {
        line += &format!(
            ", upstream {} (origin {})",
            upstream.listen,
            upstream.origin.url.key_prefix()
        );
    }
    if config.cluster.enabled {
        line += &format!(", peers {}", config.cluster.peer_listen);
    }
    let threads = config.worker_threads();
    let plural = if threads == 1 { "" } else { "s" };
    line += &format!("; {threads} proxy thread{plural}");
    if config.threads == 0 {
        line += " (threads: 0, the CPUs this process may use: its CPU quota or affinity, else the machine's)";
    }
    line
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.worker_threads(),
        // pingora sleeps this long after SIGTERM; our watcher exits earlier
        // once the last in-flight request is done.
        grace_period_seconds: Some(config.shutdown_grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The app-facing proxy, the peer listener (in a cluster) and each
/// upstream's, all in one service (see `listeners`), and the admin
/// listener, which probes the others for `/readyz`.
fn add_services(server: &mut Server, config: &Config, node: Arc<Node>) {
    let ringside = Ringside::new(node.clone());
    let mut proxies = ByListener::new();
    let probe = readiness::Listener::plain;
    let mut probed = vec![probe(config.listen)];
    if config.cluster.enabled {
        let peer_listen = config.cluster.peer_listen;
        probed.push(readiness::Listener {
            tls: node.cluster().and_then(|c| c.tls.clone()),
            ..probe(peer_listen)
        });
        let mut peers = pingora::proxy::http_proxy(&server.configuration, ringside.for_peers());
        let h2c = config.cluster.peer_protocol == PeerProtocol::H2c;
        if h2c {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            // HTTP/2 multiplexes: its connection's idle time is pingora's to watch.
            options.h2_idle_timeout = Some(config.idle_timeout);
            peers.server_options = Some(options);
        }
        let kind = if h2c {
            Listener::PeersH2c
        } else {
            Listener::Peers
        };
        let handshake = peer_handshake(config, &node);
        let mut peers = guarded(config, kind, peers, Some(handshake));
        if config.cluster.peer_protocol == PeerProtocol::Channel {
            // The peer channel on the same port (`proxy/channel.rs`); a
            // handshake and each write are bounded like a request head.
            let timeout = config
                .request_header_timeout
                .max(config.cluster.peer_timeout);
            peers.divert(
                ChannelListener::new(ringside.for_peers(), timeout).map(|c| Arc::new(c) as _),
            );
        }
        proxies.add(peer_listen, peers);
    }
    for upstream in &config.upstreams {
        let origin = node
            .origins
            .get(&upstream.origin.url)
            .expect("every upstream is an origin");
        let proxy =
            pingora::proxy::http_proxy(&server.configuration, ringside.for_upstream(origin));
        let proxy = guarded(config, Listener::Upstream, proxy, None);
        proxies.add(upstream.listen, proxy);
        probed.push(probe(upstream.listen));
    }
    let proxy = pingora::proxy::http_proxy(&server.configuration, ringside);
    let proxy = guarded(config, Listener::App, proxy, None);
    proxies.add(config.listen, proxy);
    let listeners: Vec<_> = proxies.addresses().map(|a| a.to_string()).collect();
    let mut service = Service::new("ringside proxy".into(), proxies);
    for addr in &listeners {
        service.add_listener(connections::listener(addr));
    }
    server.add_service(service);
    let admin_limits = Limits {
        max_connections: config.admin_max_connections,
        head_timeout: Some(config.admin_request_header_timeout),
        tunnels: None,
        handshake: None,
        refusals: Arc::new(Refusals::new("admin", false)),
        diverted: None,
    };
    let admin = Admin::new(node, probed).unwrap_or_else(|e| fatal(&e.to_string()));
    let admin_app = Guarded::new(admin, admin_limits);
    let mut admin = Service::new("ringside admin".into(), admin_app);
    // Probes, scrapes and purges: light work, apart from the proxy's workers.
    admin.threads = Some(1);
    admin.add_listener(connections::listener(&config.admin_listen.to_string()));
    server.add_service(admin);
}

/// Exit, naming the setting, when another process holds an address ringside
/// is to listen on.
fn check_listeners_free(config: &Config) {
    let mut addresses = vec![
        ("listen".to_owned(), &config.listen),
        ("admin_listen".to_owned(), &config.admin_listen),
    ];
    if config.cluster.enabled {
        addresses.push((
            "cluster.peer_listen".to_owned(),
            &config.cluster.peer_listen,
        ));
    }
    for (i, upstream) in config.upstreams.iter().enumerate() {
        addresses.push((format!("upstreams[{i}].listen"), &upstream.listen));
    }
    for (field, addr) in addresses {
        if let Err(why) = connections::check_free(&field, *addr) {
            fatal(&why.to_string());
        }
    }
}

/// What a new connection to the peer listener goes through first: TLS with
/// `cluster.tls` (cleartext refused), else a check that refuses TLS (see
/// `peer_tls`). Either waits `request_header_timeout` for the first byte.
fn peer_handshake(config: &Config, node: &Node) -> Arc<dyn Handshake> {
    let timeout = config.request_header_timeout;
    match node.cluster().and_then(|c| c.tls.as_ref()) {
        Some(tls) => tls.listener(timeout),
        None => Arc::new(CleartextListener { timeout }),
    }
}

/// A listener's app: `app` with the connection cap, the limits of its kind
/// and `handshake` (see `connections`).
fn guarded<A: ServerApp + Send + Sync + 'static>(
    config: &Config,
    kind: Listener,
    app: A,
    handshake: Option<Arc<dyn Handshake>>,
) -> Guarded<A> {
    let forward = &config.forward_proxy;
    let limits = Limits {
        max_connections: config.max_connections,
        // HTTP/2 multiplexes requests on one connection: no head deadline there.
        head_timeout: (kind != Listener::PeersH2c).then_some(config.request_header_timeout),
        // Tunnels open on the app's main listener, where HTTPS_PROXY points.
        tunnels: (kind == Listener::App && !forward.connect_allow.is_empty()).then(|| {
            Arc::new(Tunnels::new(
                &forward.connect_allow,
                config.origin.connect_timeout,
                forward.tunnel_idle_timeout,
            ))
        }),
        handshake,
        refusals: Arc::new(Refusals::new(kind.label(), kind.is_peers())),
        diverted: None,
    };
    Guarded::new(app, limits)
}

/// The kinds of listener a node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// `listen`: the main origin, tunnels.
    App,
    /// One of `upstreams`.
    Upstream,
    Peers,
    PeersH2c,
}

impl Listener {
    fn is_peers(self) -> bool {
        matches!(self, Listener::Peers | Listener::PeersH2c)
    }

    /// The `listener` label of its connection metrics.
    fn label(self) -> &'static str {
        match self {
            Listener::App => "proxy",
            Listener::Upstream => "upstream",
            Listener::Peers | Listener::PeersH2c => "peers",
        }
    }
}

/// Bytes for this node's own keys and for the hot area (hot-key rate
/// tracking and mirrors, see `hot`): together, the capacity.
fn split_capacity(config: &Config) -> (u64, u64) {
    let capacity = config.cache.capacity;
    if !config.cluster.enabled {
        return (capacity, 0);
    }
    let hot = (capacity as f64 * config.cluster.hot.fraction) as u64;
    (capacity - hot, hot)
}

fn fatal(message: &str) -> ! {
    log::error!("{message}");
    eprintln!("ringside: {message}");
    std::process::exit(1)
}
