//! A node's proxy listeners (the app's, the peers', each upstream's) served
//! by one pingora service, so by one set of worker threads.
//!
//! pingora gives every service a runtime of its own, with `threads` workers
//! each. With one service per listener, a node with `threads: 1` ran two
//! threads that took turns on its CPU: a peer's request woke the peer
//! listener's thread even while the app listener's thread was busy, and a
//! hop's answer woke the asking thread again. On a sidecar's one or two
//! cores those wakeups cost more than the requests (`benches/README.md`,
//! "Zipf time"). Served by one runtime, a request on any listener is picked
//! up by whichever worker is awake.
//!
//! [`ByListener`] keeps each listener's own app (its [`Guarded`] limits and
//! metrics, its proxy role): a connection goes to the app of the address it
//! arrived on.
//!
//! [`Guarded`]: crate::net::connections::Guarded

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;

/// Apps by the address they listen on.
pub struct ByListener<A> {
    apps: Vec<(SocketAddr, Arc<A>)>,
}

impl<A> ByListener<A> {
    pub fn new() -> ByListener<A> {
        ByListener { apps: Vec::new() }
    }

    /// Serve connections that arrive on `addr` with `app`.
    pub fn add(&mut self, addr: SocketAddr, app: A) {
        self.apps.push((addr, Arc::new(app)));
    }

    /// The addresses to listen on, one per app.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.apps.iter().map(|(addr, _)| *addr)
    }

    /// The app for a connection accepted on `local`: the listener on exactly
    /// that address, else one on that port of every address (`0.0.0.0`, `::`).
    fn app_for(&self, local: SocketAddr) -> Option<&Arc<A>> {
        let exact = self.apps.iter().find(|(addr, _)| *addr == local);
        let any_address = || {
            self.apps
                .iter()
                .find(|(addr, _)| addr.ip().is_unspecified() && addr.port() == local.port())
        };
        exact.or_else(any_address).map(|(_, app)| app)
    }
}

impl<A> Default for ByListener<A> {
    fn default() -> Self {
        ByListener::new()
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ByListener<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let local = stream
            .get_socket_digest()
            .and_then(|digest| digest.local_addr()?.as_inet().copied());
        // Every accepted TCP stream has its address; one without is dropped.
        let app = self.app_for(local?)?;
        app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        for (_, app) in &self.apps {
            app.cleanup().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_connection_goes_to_the_listener_it_arrived_on() {
        let mut apps = ByListener::new();
        apps.add(addr("127.0.0.1:8080"), "app");
        apps.add(addr("0.0.0.0:7946"), "peers");
        apps.add(addr("[::]:9000"), "upstream");
        let app_for = |local: &str| apps.app_for(addr(local)).map(|a| **a);
        assert_eq!(app_for("127.0.0.1:8080"), Some("app"));
        assert_eq!(app_for("10.1.2.3:7946"), Some("peers"));
        assert_eq!(app_for("127.0.0.1:7946"), Some("peers"));
        assert_eq!(app_for("[::ffff:10.1.2.3]:9000"), Some("upstream"));
        assert_eq!(
            app_for("10.1.2.3:8080"),
            None,
            "app listens on loopback only"
        );
        assert_eq!(app_for("127.0.0.1:1"), None);
    }
}
