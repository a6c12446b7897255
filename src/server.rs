//! Assembly: build the store, the proxy and the admin service from a
//! [`Config`], and run them on pingora until a signal ends the process.
//!
//! How the process ends is `shutdown.rs`.

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{Config, PeerProtocol};
use crate::connections::{self, Guarded, Limits};
use crate::metrics;
use crate::node::Node;
use crate::proxy::Ringside;
use crate::shutdown::DrainOnTerm;
use crate::store::Store;
use crate::tunnel::Tunnels;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Run ringside with `config` until a signal ends the process.
pub fn run(config: Config) -> ! {
    let config = Arc::new(config);
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
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    add_services(&mut server, &config, node);
    log::info!(
        "ringside listening on {} (admin {}), origin {}",
        config.listen,
        config.admin_listen,
        config.origin_url().key_prefix()
    );
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
            .unwrap_or_else(|e| fatal(&format!("cluster membership: {e}")))
    });
    let store = Store::new(main_capacity).with_max_variants(config.cache.max_variants);
    Node::new(config.clone(), store, cluster)
}

fn server_conf(config: &Config) -> ServerConf {
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    ServerConf {
        threads,
        // pingora sleeps this long after SIGTERM; our watcher exits earlier
        // once the last in-flight request is done.
        grace_period_seconds: Some(config.shutdown_grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The app-facing proxy, the peer listener (in a cluster) and the admin
/// listener, which probes the other two for `/readyz`.
fn add_services(server: &mut Server, config: &Config, node: Arc<Node>) {
    let ringside = Ringside::new(node.clone());
    let mut probed = vec![config.listen.parse().expect("validated by config")];
    if config.cluster.enabled {
        let peer_listen = &config.cluster.peer_listen;
        probed.push(peer_listen.parse().expect("validated by config"));
        let mut peers = pingora::proxy::http_proxy(&server.configuration, ringside.for_peers());
        let h2c = config.cluster.peer_protocol == PeerProtocol::H2c;
        if h2c {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            peers.server_options = Some(options);
        }
        // HTTP/2 multiplexes requests on one connection: no head deadline there.
        server.add_service(guarded_service(config, "peers", peers, peer_listen, !h2c));
    }
    let proxy = pingora::proxy::http_proxy(&server.configuration, ringside);
    server.add_service(guarded_service(
        config,
        "proxy",
        proxy,
        &config.listen,
        true,
    ));
    let mut admin = Service::new("ringside admin".into(), Admin::new(node, probed));
    admin.add_listener(connections::listener(&config.admin_listen));
    server.add_service(admin);
}

/// A listener's service: `app` on `addr` with the connection cap and, when
/// `head_deadline`, the request head deadline (see `connections`).
fn guarded_service<A: ServerApp + Send + Sync + 'static>(
    config: &Config,
    listener: &'static str,
    app: A,
    addr: &str,
    head_deadline: bool,
) -> Service<Guarded<A>> {
    let tunnels = &config.forward_proxy;
    let limits = Limits {
        max_connections: config.max_connections,
        head_timeout: head_deadline.then_some(config.request_header_timeout),
        tunnels: (listener == "proxy" && !tunnels.connect_allow.is_empty()).then(|| {
            Arc::new(Tunnels::new(
                &tunnels.connect_allow,
                config.origin.connect_timeout,
                tunnels.tunnel_idle_timeout,
            ))
        }),
    };
    let mut service = Service::new(
        format!("ringside {listener}"),
        Guarded::new(app, limits, listener),
    );
    service.add_listener(connections::listener(addr));
    service
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
