//! Name resolution, one stack for every name ringside looks up: origins,
//! peers named by host, etcd endpoints, and DNS membership. It is
//! hickory's resolver. With a named server it asks that server only (UDP,
//! and TCP for an answer too large for UDP). Otherwise it follows the
//! system's configuration: resolv.conf's servers, search domains and ndots,
//! and /etc/hosts.
//!
//! Answers are cached for their records' TTL. Each resolver's cache holds
//! at most hickory's default of 32 names, so it does not grow with
//! traffic. An IP literal is never looked up.
//!
//! hickory runs a connection's background work on the runtime whose task
//! opened it, and pingora runs several runtimes. So each user holds its own
//! [`Resolver`]: an origin target (asked by the proxy's fills), a fetch
//! client (for peers named by host), the etcd client, DNS membership (in
//! its task). The one shared between runtimes is the node's fetch client's
//! (the proxy's and the admin listener's, for a purge), and both live as
//! long as the process.

use crate::error::{Error, Kind, Result};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::OnceCell;

/// A hickory resolver: asking `nameserver` only when given, else the
/// system's configuration; each query bounded by `timeout`.
pub fn build(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match nameserver {
        Some(ns) => {
            let mut server = NameServerConfig::udp_and_tcp(ns.ip());
            for connection in &mut server.connections {
                connection.port = ns.port();
            }
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                provider,
            );
            // The operator named a server: ask it, not /etc/hosts.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder(provider).map_err(|e| {
            Error::new(Kind::Dns, "reading the system DNS configuration").caused_by(e)
        })?,
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 2;
    builder
        .build()
        .map_err(|e| Error::new(Kind::Dns, "building the DNS resolver").caused_by(e))
}

/// Host names to addresses, with the system's configuration, built when
/// first asked.
#[derive(Default)]
pub struct Resolver {
    /// Built on the first lookup; a build that failed (no readable
    /// resolv.conf) is tried again on the next one.
    resolver: OnceCell<TokioResolver>,
}

/// A query's own bound; a caller bounds the whole lookup (its connect
/// timeout).
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Resolver {
    /// The first address of `host` (an IP literal as it is), on `port`,
    /// found within `within`; None when it has none, or none in time.
    pub async fn socket_addr(&self, host: &str, port: u16, within: Duration) -> Option<SocketAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, port));
        }
        let built = self.resolver.get_or_try_init(|| async { system() }).await;
        let lookup = built.ok()?.lookup_ip(host);
        match tokio::time::timeout(within, lookup).await {
            Ok(Ok(found)) => found.iter().next().map(|ip| SocketAddr::new(ip, port)),
            Ok(Err(e)) => {
                log::debug!("cannot resolve {host}: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// `addr` as `host:port` (a peer's member address), resolved as
    /// [`socket_addr`](Self::socket_addr) does.
    pub async fn host_port(&self, addr: &str, within: Duration) -> Option<SocketAddr> {
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            return Some(addr);
        }
        let (host, port) = addr.rsplit_once(':')?;
        self.socket_addr(host, port.parse().ok()?, within).await
    }
}

/// The system's resolver; an error (logged) when its configuration cannot be read.
fn system() -> Result<TokioResolver> {
    build(None, QUERY_TIMEOUT).inspect_err(|e| log::warn!("no DNS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_are_never_looked_up_and_host_ports_are_split() {
        let r = Resolver::default();
        let within = Duration::from_secs(1);
        let v4 = r.socket_addr("10.0.0.1", 80, within).await;
        assert_eq!(v4, Some("10.0.0.1:80".parse().unwrap()));
        let v6 = r.socket_addr("[::1]", 443, within).await;
        assert_eq!(v6, Some("[::1]:443".parse().unwrap()));
        let peer = r.host_port("10.0.0.2:7070", within).await;
        assert_eq!(peer, Some("10.0.0.2:7070".parse().unwrap()));
        assert!(r.resolver.get().is_none(), "no resolver was needed");
        assert_eq!(r.host_port("no-port", within).await, None);
    }

    #[tokio::test]
    async fn localhost_comes_from_the_hosts_file() {
        let r = Resolver::default();
        let found = r
            .socket_addr("localhost", 8000, Duration::from_secs(5))
            .await;
        assert!(found.is_some_and(|a| a.ip().is_loopback() && a.port() == 8000));
    }
}
