//! Assembly: build the store, the proxy and the admin service from a
//! [`Config`], and run them on pingora until a signal ends the process.
//!
//! How the process ends is `shutdown.rs`.

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{Config, PeerProtocol};
use crate::connections::{self, Guarded, Limits};
use crate::fill::Filler;
use crate::metrics;
use crate::origin::OriginClient;
use crate::proxy::Ringside;
use crate::shutdown::DrainOnTerm;
use crate::singleflight::Group;
use crate::store::Store;
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
    let (main_capacity, hot_capacity) = split_capacity(&config);
    let cluster = match config.cluster.enabled {
        false => None,
        true => Some(
            background
                .block_on(Cluster::start(
                    &config.cluster,
                    hot_capacity,
                    config.cache.max_variants,
                    config.origin.connect_timeout + config.origin.read_timeout,
                ))
                .unwrap_or_else(|e| fatal(&format!("cluster membership: {e}"))),
        ),
    };
    let filler = Arc::new(Filler {
        flights: Group::new(),
        client: OriginClient::default(),
        store: Arc::new(Store::new(main_capacity).with_max_variants(config.cache.max_variants)),
        cluster,
    });
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let grace = config.shutdown_grace;
    let conf = ServerConf {
        threads,
        // pingora sleeps this long after SIGTERM; our watcher exits earlier
        // once the last in-flight request is done.
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut listeners = vec![config.listen.parse().expect("validated by config")];
    if config.cluster.enabled {
        listeners.push(
            config
                .cluster
                .peer_listen
                .parse()
                .expect("validated by config"),
        );
    }
    let ringside = Ringside::new(config.clone(), filler);
    if config.cluster.enabled {
        let mut peers = pingora::proxy::http_proxy(&server.configuration, ringside.for_peers());
        let h2c = config.cluster.peer_protocol == PeerProtocol::H2c;
        if h2c {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            peers.server_options = Some(options);
        }
        // HTTP/2 multiplexes requests on one connection: no head deadline there.
        let peers = guarded_service(&config, "peers", peers, &config.cluster.peer_listen, !h2c);
        server.add_service(peers);
    }
    let admin = Admin::new(ringside.clone(), listeners);
    let proxy = pingora::proxy::http_proxy(&server.configuration, ringside);
    let proxy = guarded_service(&config, "proxy", proxy, &config.listen, true);
    let mut admin = Service::new("ringside admin".into(), admin);
    admin.add_listener(connections::listener(&config.admin_listen));
    server.add_service(proxy);
    server.add_service(admin);
    log::info!(
        "ringside listening on {} (admin {}), origin {}",
        config.listen,
        config.admin_listen,
        config.origin_url().key_prefix()
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnTerm::new(grace, config.shutdown_delay)),
    });
    drop(background);
    std::process::exit(0)
}

/// Exit, naming the setting, when another process holds an address ringside
/// is to listen on.
fn check_listeners_free(config: &Config) {
    let mut addresses = vec![
        ("listen", &config.listen),
        ("admin_listen", &config.admin_listen),
    ];
    if config.cluster.enabled {
        addresses.push(("cluster.peer_listen", &config.cluster.peer_listen));
    }
    for (field, addr) in addresses {
        if let Err(why) = connections::check_free(field, addr) {
            fatal(&why);
        }
    }
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
    let limits = Limits {
        max_connections: config.max_connections,
        head_timeout: head_deadline.then_some(config.request_header_timeout),
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
