//! The cluster: this node's view of the ring and its relations to peers.
//!
//! [`Cluster::start`] starts the membership source and a task that rebuilds
//! the ring whenever the member list changes. The ring sits behind an
//! `RwLock<Arc<Ring>>`: a rebuild swaps the `Arc` in one write, and a request
//! clones the `Arc` it started with, so requests in flight during a
//! membership change finish against the ring they began with, and none sees
//! a half-built one. Hits never look at the ring at all.
//!
//! The ring is built from the membership source's list, minus the members
//! that announced they are leaving (a `LEAVING` notice, see `announce.rs`:
//! they stay out until the source stops listing them or they announce
//! `JOINED`), minus this node once it is leaving itself. So every source,
//! a static list included, takes a stopping member out at once.
//!
//! After a change the ring before it is kept for
//! `cluster.previous_owner_window` ([`Cluster::previous_owner`]): a key's new
//! owner asks the previous one before its origin. Several changes within
//! the window (a rolling restart) keep several rings, and the previous owner
//! is the key's most recent owner other than this node. A node that has
//! just joined counts the ring without itself as the one before.

pub(crate) mod announce;
mod backoff;
pub(crate) mod hot;
pub mod membership;
pub mod peers;
pub(crate) mod purge;
pub mod ring;

use crate::cache::store::Epoch;
use crate::cluster::hot::HotKeys;
use crate::cluster::membership::Member;
use crate::cluster::peers::{Envelope, PeerAuth, PeerHealth, Refusal, SeenNonces};
use crate::cluster::ring::Ring;
use crate::config::{ClusterConfig, PeerProtocol};
use crate::metrics;
use crate::net::origin::{FetchError, OriginClient};
use crate::net::peer_tls::PeerTls;
use bytes::Bytes;
use http::{header, HeaderValue};
use parking_lot::{Mutex, RwLock};
use pingora::http::RequestHeader;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct Cluster {
    /// This node's advertised peer address.
    pub me: String,
    ring: RwLock<Arc<Ring>>,
    /// The rings before the last changes, newest first, while they count.
    previous: RwLock<VecDeque<Previous>>,
    /// How long a previous ring counts (`cluster.previous_owner_window`).
    previous_window: Duration,
    /// What the ring is built from; rebuilds happen under this lock.
    view: Mutex<View>,
    hash_key: String,
    vnodes: u32,
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
    /// Ask peers over the peer channel (`net/channel/`), HTTP only for
    /// those that do not speak it.
    pub peer_channel: bool,
    /// How long a write waits for members to confirm its invalidation.
    pub invalidation_timeout: Duration,
    /// Mutual TLS with peers (`cluster.tls`); None: signed cleartext.
    pub tls: Option<Arc<PeerTls>>,
}

/// Previous rings kept at most (each a few KiB per member).
const MAX_PREVIOUS_RINGS: usize = 8;

/// A ring replaced by a membership change, and until when its owners are
/// asked first.
struct Previous {
    ring: Arc<Ring>,
    until: Instant,
}

/// What the ring is built from.
#[derive(Default)]
struct View {
    /// The membership source's latest list.
    listed: Vec<Member>,
    /// Members that announced they are leaving, by address.
    leaving: HashMap<String, Departure>,
    /// This node is leaving: its own ring leaves it out as well.
    me_leaving: bool,
}

/// A member's announced departure.
#[derive(Debug, Clone, Copy)]
pub struct Departure {
    /// When it was announced, as a removal epoch: what it hands over is not
    /// stored over a purge or invalidation that came after (see `handoff/`).
    pub since: Epoch,
    /// Until when it still answers peers (its `shutdown_delay`).
    serving_until: Instant,
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
    ) -> crate::error::Result<Arc<Cluster>> {
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(PeerTls::load(tls, &config.advertise_addr())?)),
            None => None,
        };
        let auth = PeerAuth::from_config(config)?;
        let peer_listen = Some(config.peer_listen.to_string());
        let mut members = membership::start_serving(config, peer_listen).await?;
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
            previous: RwLock::new(VecDeque::new()),
            previous_window: config.previous_owner_window,
            view: Mutex::new(View::default()),
            hash_key: config.hash_key.clone(),
            vnodes: config.vnodes,
            auth,
            nonces: SeenNonces::new(peers::MAX_NONCE_SENDERS),
            health: PeerHealth::new(config.peer_backoff),
            hot: HotKeys::new(hot_capacity, min_rate, max_variants),
            peer_timeout: config.peer_timeout,
            peer_read_timeout: config.peer_timeout + origin_budget,
            peer_h2c: config.peer_protocol == PeerProtocol::H2c,
            peer_channel: config.peer_protocol == PeerProtocol::Channel,
            invalidation_timeout: config.invalidation_timeout,
            tls,
        });
        cluster.install(first);
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while members.changed().await.is_ok() {
                let list = members.borrow_and_update().clone();
                let Some(cluster) = weak.upgrade() else { break };
                cluster.install(list);
            }
        });
        Ok(cluster)
    }

    /// The source published `listed`: rebuild the ring from it. Departures
    /// are forgotten once the source no longer lists the member and it no
    /// longer serves.
    fn install(&self, listed: Vec<Member>) {
        let mut view = self.view.lock();
        let now = Instant::now();
        view.leaving.retain(|addr, departure| {
            now < departure.serving_until || listed.iter().any(|m| m.addr == *addr)
        });
        view.listed = listed;
        self.rebuild(&view);
    }

    /// `from` announced it is leaving and serves peers for `serving_for`
    /// more: out of the ring now. Only members count: listed, on the ring,
    /// or on a previous ring (its source may have dropped it already).
    pub fn member_leaving(&self, from: &str, serving_for: Duration) -> bool {
        let previous = self.previous_rings();
        let mut view = self.view.lock();
        let on = |ring: &Ring| ring.members().iter().any(|m| m.addr == from);
        let known = view.listed.iter().any(|m| m.addr == from)
            || on(&self.ring())
            || previous.iter().any(|r| on(r));
        if !known || from == self.me {
            return false;
        }
        let departure = Departure {
            since: Epoch::now(),
            serving_until: Instant::now() + serving_for,
        };
        view.leaving.insert(from.to_owned(), departure);
        self.rebuild(&view);
        true
    }

    /// `from` announced it is (back) in the cluster: its departure is over.
    pub fn member_joined(&self, from: &str) -> bool {
        let mut view = self.view.lock();
        if view.leaving.remove(from).is_none() {
            return false;
        }
        self.rebuild(&view);
        true
    }

    /// The departure `from` announced, if it did.
    pub fn departure(&self, from: &str) -> Option<Departure> {
        self.view.lock().leaving.get(from).copied()
    }

    /// This node leaves: from now on its own ring, too, is the ring
    /// without it, which it returns.
    pub fn leave(&self) -> Arc<Ring> {
        let mut view = self.view.lock();
        view.me_leaving = true;
        self.rebuild(&view);
        self.ring()
    }

    /// Build the ring `view` describes and swap it in (called under the
    /// view's lock, so rebuilds happen one at a time).
    fn rebuild(&self, view: &View) {
        let members = view
            .listed
            .iter()
            .filter(|m| !view.leaving.contains_key(&m.addr))
            .filter(|m| !(view.me_leaving && m.addr == self.me))
            .cloned()
            .collect();
        self.install_ring(members);
    }

    /// Build and swap in the ring for `members`; keep the one it replaces
    /// as the previous ring.
    fn install_ring(&self, members: Vec<Member>) {
        let ring = Arc::new(Ring::new(members, &self.hash_key, self.vnodes));
        let addrs: Vec<String> = ring.members().iter().map(|m| m.addr.clone()).collect();
        let previous = {
            let mut slot = self.ring.write();
            std::mem::replace(&mut *slot, ring.clone())
        };
        if previous.generation() == ring.generation() {
            return;
        }
        self.keep_previous(previous.clone(), &ring);
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
        self.ring.read().clone()
    }

    /// Remember `previous`, just replaced by `current`, for the window. A
    /// node that has just joined (its ring was itself alone, or empty) had
    /// no ring of the cluster: the one before is the cluster without it.
    fn keep_previous(&self, previous: Arc<Ring>, current: &Ring) {
        if self.previous_window.is_zero() {
            return;
        }
        let newcomer = previous.members().iter().all(|m| m.addr == self.me);
        let previous = match newcomer {
            false => previous,
            true => {
                let others: Vec<Member> = current
                    .members()
                    .iter()
                    .filter(|m| m.addr != self.me)
                    .cloned()
                    .collect();
                Arc::new(Ring::new(others, &self.hash_key, self.vnodes))
            }
        };
        let now = Instant::now();
        let mut rings = self.previous.write();
        rings.retain(|p| now < p.until);
        rings.truncate(MAX_PREVIOUS_RINGS - 1);
        rings.push_front(Previous {
            ring: previous,
            until: now + self.previous_window,
        });
    }

    /// The member to ask before the origin for `key`, which this node owns
    /// on `ring`: its most recent owner other than this node on the rings
    /// that still count, if it still answers (on `ring`, or leaving but
    /// still serving) and is not backing off.
    pub fn previous_owner(&self, ring: &Ring, key: &str) -> Option<String> {
        let owner = self
            .previous_rings()
            .iter()
            .filter_map(|r| r.owner(key))
            .find(|owner| owner.addr != self.me)?
            .addr
            .clone();
        let on_ring = ring.members().iter().any(|m| m.addr == owner);
        let serving = || {
            self.departure(&owner)
                .is_some_and(|d| Instant::now() < d.serving_until)
        };
        ((on_ring || serving()) && self.health.is_available(&owner)).then_some(owner)
    }

    /// The previous rings that still count, newest first. (Their lock is
    /// released before the view's is taken: rebuilds take them the other
    /// way round.)
    fn previous_rings(&self) -> Vec<Arc<Ring>> {
        let now = Instant::now();
        let previous = self.previous.read();
        (previous.iter())
            .filter(|p| now < p.until)
            .map(|p| p.ring.clone())
            .collect()
    }

    /// Make `request` a peer request for `origin` to the member `to`: who
    /// sends it, from which ring generation, when, a fresh nonce, and the
    /// signature over all of it (see `peers.rs`). Call it last: a header
    /// added afterwards breaks the signature. Peer requests carry no body, so
    /// any body framing copied from the client's request is dropped.
    pub fn sign_request(&self, request: &mut RequestHeader, origin: &str, to: &str) {
        self.sign(request, origin, to, None)
    }

    /// [`Self::sign_request`] for a request that carries `body` (a
    /// `HANDOFF`): its length and digest are signed with the rest.
    pub fn sign_request_with_body(
        &self,
        request: &mut RequestHeader,
        origin: &str,
        to: &str,
        body: &[u8],
    ) {
        self.sign(request, origin, to, Some(body))
    }

    fn sign(&self, request: &mut RequestHeader, origin: &str, to: &str, body: Option<&[u8]>) {
        request.remove_header(&header::CONTENT_LENGTH);
        request.remove_header(&header::TRANSFER_ENCODING);
        if let Some(body) = body {
            let digest = HeaderValue::from_str(&peers::body_digest(body)).expect("hex");
            let _ = request.insert_header(peers::BODY_SHA256.clone(), digest);
            let _ = request.insert_header(header::CONTENT_LENGTH, body.len());
        }
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

    /// Send `request` (a control request: `PURGE`, a notice, a handoff with
    /// its `body`) to the member `to`, signed, for `origin`; connecting within
    /// `peer_timeout` and answering within `within`. Returns the answer's status.
    pub async fn send_signed(
        &self,
        client: &OriginClient,
        mut request: RequestHeader,
        origin: &str,
        to: &str,
        body: Option<Bytes>,
        within: Duration,
    ) -> Result<http::StatusCode, FetchError> {
        let _ = request.insert_header(header::HOST, to);
        // Signed last: the signature covers everything above, for this receiver.
        match &body {
            Some(body) => self.sign_request_with_body(&mut request, origin, to, body),
            None => self.sign_request(&mut request, origin, to),
        }
        let connect = within.min(self.peer_timeout);
        let response = client
            .send_peer(to, &request, body, connect, within, self.peer_h2c)
            .await?;
        let status = response.header.status;
        response.finish(client).await;
        Ok(status)
    }

    /// A client for this node's peer requests: over peer TLS when it is on,
    /// and from this node's member address.
    pub fn peer_client(&self) -> OriginClient {
        let source = self.me.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        OriginClient::new(self.tls.clone()).with_peer_source(source)
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

    /// Whether `addr` may speak for a member: it is on the current ring, or
    /// it left lately (it announced its departure, or is on a previous ring
    /// of the window): a leaving node still hands its entries over.
    pub fn is_member(&self, addr: &str) -> bool {
        let on = |ring: &Ring| ring.members().iter().any(|m| m.addr == addr);
        if on(&self.ring()) {
            return true;
        }
        let announced = self.view.lock().leaving.contains_key(addr);
        announced || self.previous_rings().iter().any(|r| on(r))
    }

    /// The peer that owns `key`, or None when this node does (or is alone).
    pub fn remote_owner(&self, ring: &Ring, key: &str) -> Option<String> {
        let owner = ring.owner(key)?;
        (owner.addr != self.me).then(|| owner.addr.clone())
    }
}

/// The asking end of the peer channel speaks for this node.
impl crate::net::channel::client::Identity for Cluster {
    fn me(&self) -> &str {
        &self.me
    }

    fn secret(&self) -> Arc<::ring::hmac::Key> {
        self.auth.current_key()
    }
}

fn path_and_query(request: &RequestHeader) -> &str {
    request.uri.path_and_query().map_or("/", |p| p.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MembershipConfig, StaticMember};

    const A: &str = "10.0.0.1:7070";
    const B: &str = "10.0.0.2:7070";
    const C: &str = "10.0.0.3:7070";

    /// Node A of a static cluster of A, B and C.
    async fn node_a(window: Duration) -> Arc<Cluster> {
        let config = ClusterConfig {
            enabled: true,
            advertise: A.into(),
            secret: "0123456789abcdef".into(),
            previous_owner_window: window,
            membership: MembershipConfig::Static(
                [A, B, C].map(|m| StaticMember::Addr(m.into())).to_vec(),
            ),
            ..ClusterConfig::default()
        };
        Cluster::start(&config, 0, 8, Duration::from_secs(1))
            .await
            .unwrap()
    }

    fn owned_by(ring: &Ring, who: &str, n: usize) -> Vec<String> {
        (0..)
            .map(|k| format!("http://o:80/k/{k}"))
            .filter(|k| ring.owner(k).unwrap().addr == who)
            .take(n)
            .collect()
    }

    #[tokio::test]
    async fn a_newcomer_asks_the_owners_of_the_ring_without_it() {
        let a = node_a(Duration::from_secs(60)).await;
        let ring = a.ring();
        let without_a = Ring::new(
            [B, C].map(|m| Member::new(m, 1)).to_vec(),
            "ringside",
            ClusterConfig::default().vnodes,
        );
        for key in owned_by(&ring, A, 50) {
            let before = without_a.owner(&key).unwrap().addr.clone();
            assert_eq!(a.previous_owner(&ring, &key), Some(before));
        }
        let off = node_a(Duration::ZERO).await;
        let key = &owned_by(&off.ring(), A, 1)[0];
        assert_eq!(
            off.previous_owner(&off.ring(), key),
            None,
            "window 0: never"
        );
    }

    #[tokio::test]
    async fn later_changes_keep_the_earlier_previous_owners() {
        let a = node_a(Duration::from_secs(60)).await;
        let full = a.ring();
        let keys = owned_by(&full, A, 50);
        let first: Vec<_> = keys.iter().map(|k| a.previous_owner(&full, k)).collect();
        // B leaves and comes back: A's own keys did not move, and their
        // owners before A joined are still the ones to ask.
        assert!(a.member_leaving(B, Duration::ZERO));
        assert_eq!(a.ring().members().len(), 2);
        assert!(a.member_joined(B));
        assert_eq!(a.ring().generation(), full.generation());
        let now: Vec<_> = keys.iter().map(|k| a.previous_owner(&full, k)).collect();
        assert_eq!(first, now);
        // A member that left and no longer serves is not asked.
        assert!(a.member_leaving(C, Duration::ZERO));
        let ring = a.ring();
        assert!(keys
            .iter()
            .all(|k| a.previous_owner(&ring, k).as_deref() != Some(C)));
    }

    #[tokio::test]
    async fn only_members_can_leave_and_leaving_takes_this_node_out() {
        let a = node_a(Duration::from_secs(60)).await;
        assert!(!a.member_leaving("10.9.9.9:7070", Duration::ZERO));
        assert!(
            !a.member_leaving(A, Duration::ZERO),
            "not by a notice naming it"
        );
        assert!(!a.member_joined(B), "B never left");
        let after = a.leave();
        let members: Vec<&str> = after.members().iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(members, [B, C]);
        assert!(a.remote_owner(&after, "http://o:80/x").is_some());
    }
}
