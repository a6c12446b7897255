//! The cluster: this node's view of the ring and its relations to peers.
//!
//! [`Cluster::start`] starts the membership source and a task that rebuilds
//! the ring whenever the member list changes. The ring sits behind an
//! `RwLock<Arc<Ring>>`: a rebuild swaps the `Arc` in one write, and a request
//! clones the `Arc` it started with, so requests in flight during a
//! membership change finish against the ring they began with, and none sees
//! a half-built one. Hits never look at the ring at all.

use crate::config::{ClusterConfig, PeerProtocol};
use crate::hot::HotKeys;
use crate::membership::{self, Member};
use crate::metrics;
use crate::peer_tls::PeerTls;
use crate::peers::{self, Envelope, PeerAuth, PeerHealth, Refusal, SeenNonces};
use crate::ring::Ring;
use http::{header, HeaderValue};
use pingora::http::RequestHeader;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct Cluster {
    /// This node's advertised peer address.
    pub me: String,
    ring: RwLock<Arc<Ring>>,
    pub auth: PeerAuth,
    /// Nonces of the peer requests accepted lately (replays are refused).
    pub nonces: SeenNonces,
    pub health: PeerHealth,
    pub hot: HotKeys,
    /// Bound on connecting to a peer: a dead peer costs at most this.
    pub peer_timeout: Duration,
    /// Bound on a peer's answer: enough for the owner's own origin fetch, so
    /// a slow origin does not make a healthy owner look dead.
    pub peer_read_timeout: Duration,
    /// Talk HTTP/2 over cleartext to peers instead of HTTP/1.1.
    pub peer_h2c: bool,
    /// How long a write waits for members to confirm its invalidation.
    pub invalidation_timeout: Duration,
    /// Mutual TLS with peers (`cluster.tls`); None: signed cleartext.
    pub tls: Option<Arc<PeerTls>>,
}

impl Cluster {
    /// Start membership and the ring. `hot_capacity` is the byte budget of
    /// the hot area (rate tracking and mirrors); mirrors keep at most
    /// `max_variants` variants per URL.
    /// `origin_budget` is the longest an origin fetch may take (connect + read timeouts).
    pub async fn start(
        config: &ClusterConfig,
        hot_capacity: u64,
        max_variants: usize,
        origin_budget: Duration,
    ) -> Result<Arc<Cluster>, String> {
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(PeerTls::load(tls, &config.advertise_addr())?)),
            None => None,
        };
        let mut members = membership::start(config).await?;
        let first = members.borrow_and_update().clone();
        let min_rate = if hot_capacity == 0 {
            f64::INFINITY
        } else {
            config.hot.min_rate
        };
        let cluster = Arc::new(Cluster {
            me: config.advertise_addr(),
            ring: RwLock::new(Arc::new(Ring::new(
                Vec::new(),
                &config.hash_key,
                config.vnodes,
            ))),
            auth: PeerAuth::new(&config.secret),
            nonces: SeenNonces::new(peers::MAX_NONCE_SENDERS),
            health: PeerHealth::new(config.peer_backoff),
            hot: HotKeys::new(hot_capacity, min_rate, max_variants),
            peer_timeout: config.peer_timeout,
            peer_read_timeout: config.peer_timeout + origin_budget,
            peer_h2c: config.peer_protocol == PeerProtocol::H2c,
            invalidation_timeout: config.invalidation_timeout,
            tls,
        });
        cluster.install(first, &config.hash_key, config.vnodes);
        let (hash_key, vnodes) = (config.hash_key.clone(), config.vnodes);
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while members.changed().await.is_ok() {
                let list = members.borrow_and_update().clone();
                let Some(cluster) = weak.upgrade() else { break };
                cluster.install(list, &hash_key, vnodes);
            }
        });
        Ok(cluster)
    }

    /// Build and swap in the ring for `members`.
    fn install(&self, members: Vec<Member>, hash_key: &str, vnodes: u32) {
        let ring = Arc::new(Ring::new(members, hash_key, vnodes));
        let addrs: Vec<String> = ring.members().iter().map(|m| m.addr.clone()).collect();
        let previous = {
            let mut slot = self.ring.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *slot, ring.clone())
        };
        if previous.generation() == ring.generation() {
            return;
        }
        let before: Vec<String> = previous.members().iter().map(|m| m.addr.clone()).collect();
        let others = |list: &[String], than: &[String]| -> Vec<String> {
            list.iter()
                .filter(|a| !than.contains(a) && **a != self.me)
                .cloned()
                .collect()
        };
        metrics::peers_changed(&others(&addrs, &before), &others(&before, &addrs));
        self.health.retain(&addrs);
        metrics::RING_MEMBERS.set(addrs.len() as i64);
        metrics::RING_GENERATION.set(ring.generation() as i64);
        if !previous.members().is_empty() {
            metrics::MEMBERSHIP_CHANGES.inc();
        }
        log::info!(
            "ring generation {:x}: {} member(s): {}",
            ring.generation(),
            addrs.len(),
            addrs.join(", ")
        );
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Make `request` a peer request for `origin` to the member `to`: who
    /// sends it, from which ring generation, when, a fresh nonce, and the
    /// signature over all of it (see `peers.rs`). Call it last: a header
    /// added afterwards breaks the signature. Peer requests carry no body, so
    /// any body framing copied from the client's request is dropped.
    pub fn sign_request(&self, request: &mut RequestHeader, origin: &str, to: &str) {
        request.remove_header(&header::CONTENT_LENGTH);
        request.remove_header(&header::TRANSFER_ENCODING);
        let Some(nonce) = peers::next_nonce() else {
            // Unsigned, the peer refuses it and this node asks the origin.
            log::error!("no random nonce for a peer request: sending it unsigned");
            return;
        };
        let envelope = Envelope {
            from: &self.me,
            to,
            timestamp: peers::now_secs(),
            nonce,
        };
        let mut headers = envelope.headers();
        headers.extend(
            HeaderValue::from_str(origin)
                .ok()
                .map(|v| (peers::ORIGIN.clone(), v)),
        );
        headers.push((
            peers::GENERATION.clone(),
            HeaderValue::from(self.ring().generation()),
        ));
        for (name, value) in headers {
            // Names are static and values were validated as header values above.
            let _ = request.insert_header(name, value);
        }
        let signature = self.auth.sign(
            request.method.as_str(),
            path_and_query(request),
            &request.headers,
        );
        let _ = request.insert_header(peers::SIGNATURE.clone(), signature);
    }

    /// Check a request that arrived on the peer listener: signed by a member
    /// for this node, and not seen before.
    pub fn verify_request(&self, request: &RequestHeader) -> Result<(), Refusal> {
        let nonce = self.auth.verify(
            request.method.as_str(),
            path_and_query(request),
            &request.headers,
            &self.me,
            peers::now_secs(),
        )?;
        self.nonces.first_use(nonce)
    }

    /// Whether `addr` is a member of this node's current ring.
    pub fn is_member(&self, addr: &str) -> bool {
        self.ring().members().iter().any(|m| m.addr == addr)
    }

    /// The peer that owns `key`, or None when this node does (or is alone).
    pub fn remote_owner(&self, ring: &Ring, key: &str) -> Option<String> {
        let owner = ring.owner(key)?;
        (owner.addr != self.me).then(|| owner.addr.clone())
    }
}

fn path_and_query(request: &RequestHeader) -> &str {
    request.uri.path_and_query().map_or("/", |p| p.as_str())
}
