//! Assembly: build the store, the proxy and the admin service from a
//! [`Config`], and run them on pingora until a signal ends the process.
//!
//! Shutdown: SIGTERM first waits `shutdown_delay` (still serving, `/readyz`
//! failing: see [`shutting_down`]), then stops the listeners, lets in-flight
//! requests finish (counted by [`InFlight`]) and exits as soon as none is
//! left, or after `shutdown_grace` at the latest. SIGINT exits at once.

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{Config, PeerProtocol};
use crate::connections::{self, Guarded, Limits};
use crate::fill::Filler;
use crate::metrics;
use crate::origin::OriginClient;
use crate::proxy::Ringside;
use crate::singleflight::Group;
use crate::store::Store;
use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests being served right now (a guard per request).
pub struct InFlight;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// SIGTERM has arrived: readiness fails from now on, while the listeners
/// still serve through `shutdown_delay` and the drain.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Relaxed)
}

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

    let proxy_addr = config.listen.parse().expect("validated by config");
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
    let admin = Admin::new(ringside.clone(), proxy_addr);
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
        shutdown_signal: Box::new(DrainOnTerm {
            grace,
            delay: config.shutdown_delay,
        }),
    });
    drop(background);
    std::process::exit(0)
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

/// SIGTERM: serve on for `delay`, then graceful, exiting when drained.
/// SIGINT: immediate, also during the delay.
struct DrainOnTerm {
    grace: Duration,
    delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                SHUTTING_DOWN.store(true, Ordering::Relaxed);
                if !self.delay.is_zero() {
                    log::info!("shutdown: serving for {:?} more (shutdown_delay)", self.delay);
                    tokio::select! {
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                        _ = tokio::time::sleep(self.delay) => {}
                    }
                }
                let grace = self.grace;
                std::thread::spawn(move || exit_when_drained(grace));
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

fn exit_when_drained(grace: Duration) {
    let started = Instant::now();
    // Give the listeners a moment to stop accepting.
    std::thread::sleep(Duration::from_millis(100));
    while IN_FLIGHT.load(Ordering::Relaxed) > 0 && started.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    log::info!(
        "shutdown: drained with {} request(s) left after {:?}",
        IN_FLIGHT.load(Ordering::Relaxed),
        started.elapsed()
    );
    std::process::exit(0);
}
