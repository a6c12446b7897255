//! Mutual TLS between peers (`cluster.tls`): real ringside processes with
//! certificates made at test time (rcgen), in front of the real test origin.
//!
//! Each node reads its CA, certificate and key from a directory of its own,
//! as a pod reads a mounted Secret; rotating them replaces the files the
//! way the kubelet does (write aside, rename over). A request through a
//! node that does not own the key is answered by the owner over TLS
//! (`Cache-Status: ...; detail=peer`) or, when the owner refuses the node,
//! by the origin.

mod common;
use common::origin::Origin;
use common::pki::{CertFiles, TestCa};
use common::raw::raw_exchange;
use common::{cache_status, cluster_yaml, eventually, free_port, owner_of, Ringside};
use common::{Response, CLUSTER_SECRET};
use http::HeaderValue;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use ringside::config::OriginUrl;
use ringside::peers::{self, Envelope, PeerAuth};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A node's TLS files, as a mounted Secret: `ca.crt`, `tls.crt`, `tls.key`
/// in a directory of its own, removed on drop.
struct Secret {
    dir: PathBuf,
}

impl Secret {
    fn new(name: &str) -> Secret {
        let dir = std::env::temp_dir().join(format!(
            "ringside-peer-tls-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the secret's directory");
        Secret { dir }
    }

    /// A secret holding `ca` (the PEM of one or more CA certificates) and `cert`.
    fn with(name: &str, ca: &str, cert: &CertFiles) -> Secret {
        let secret = Secret::new(name);
        secret.install(ca, cert);
        secret
    }

    /// Replace the files, each by a rename (never half-written).
    fn install(&self, ca: &str, cert: &CertFiles) {
        let put = |name: &str, text: &[u8]| {
            let aside = self.dir.join(format!(".{name}.new"));
            std::fs::write(&aside, text).expect("write a secret file");
            std::fs::rename(&aside, self.dir.join(name)).expect("rename a secret file");
        };
        put("ca.crt", ca.as_bytes());
        put(
            "tls.crt",
            &std::fs::read(&cert.cert).expect("read the certificate"),
        );
        put("tls.key", &std::fs::read(&cert.key).expect("read the key"));
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The `tls:` section inside `cluster:` (indented 2).
    fn yaml(&self, peer_name: &str) -> String {
        format!(
            "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    peer_name: \"{peer_name}\"\n",
            self.file("ca.crt").display(),
            self.file("tls.crt").display(),
            self.file("tls.key").display()
        )
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA whose certificates live in a scratch directory.
struct Pki {
    ca: TestCa,
    pem: String,
    dir: Secret,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca = TestCa::new(name);
        let dir = Secret::new(&format!("{name}-pki"));
        let pem = std::fs::read_to_string(ca.write(&dir.file("ca.pem"))).expect("CA PEM");
        Pki { ca, pem, dir }
    }

    /// A certificate for 127.0.0.1 and localhost.
    fn issue(&self, name: &str) -> CertFiles {
        self.ca.issue(&self.dir.dir, name)
    }

    fn issue_for(&self, name: &str, sans: &[&str]) -> CertFiles {
        self.ca.issue_for(&self.dir.dir, name, sans)
    }

    /// `name`'s secret: this CA and a certificate from it for 127.0.0.1.
    fn secret(&self, name: &str) -> Secret {
        Secret::with(name, &self.pem, &self.issue(name))
    }
}

/// `n` peer addresses on 127.0.0.1.
fn addresses(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect()
}

/// Start node `me` of the static cluster `members`, with `tls` (a
/// `Secret::yaml`, or "" for cleartext). No hot mirrors, so every answer
/// for a key owned elsewhere comes from the owner or the origin; a short
/// backoff, so a refused owner is asked again soon.
async fn node(origin: &Origin, me: &str, members: &[String], tls: &str) -> Ringside {
    let extra = format!("  hot: {{fraction: 0}}\n  peer_backoff: 100ms\n{tls}");
    Ringside::start(&origin.url(), &cluster_yaml(me, members, &extra)).await
}

/// A cacheable path that `owner` owns in the ring of `members`.
fn owned_by(owner: &str, members: &[String], origin: &Origin, tag: &str) -> String {
    (0..)
        .map(|i| format!("/{tag}/{i}?cc=max-age%3D60"))
        .find(|path| owner_of(owner, members, &origin.url(), path) == owner)
        .expect("some path")
}

fn via_peer(r: &Response) -> bool {
    cache_status(r).contains("detail=peer")
}

/// Ask `node` for new keys that `owner` owns until the owner answers one. (A
/// node that could not ask the owner keeps the origin's answer, so each
/// try is a key not asked before.)
async fn answered_in_time(
    node: &Ringside,
    owner: &str,
    members: &[String],
    origin: &Origin,
    what: &str,
) {
    static TRIES: AtomicUsize = AtomicUsize::new(0);
    eventually(Duration::from_secs(20), what, || {
        let n = TRIES.fetch_add(1, Ordering::SeqCst);
        let path = owned_by(owner, members, origin, &format!("try{n}"));
        async move { via_peer(&node.get(&path).await) }
    })
    .await;
}

async fn refusals(node: &Ringside, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    node.metric("ringside_peer_tls_refusals_total", &[&label])
        .await
}

async fn all_refusals(node: &Ringside) -> f64 {
    node.metric("ringside_peer_tls_refusals_total", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_certificates_from_the_ca_answer_each_other_over_tls() {
    let origin = Origin::start().await;
    let pki = Pki::new("cluster-ca");
    let (sa, sb) = (pki.secret("a"), pki.secret("b"));
    let members = addresses(2);
    let a = node(&origin, &members[0], &members, &sa.yaml("")).await;
    let b = node(&origin, &members[1], &members, &sb.yaml("")).await;

    let path = owned_by(&members[1], &members, &origin, "tls");
    let r = a.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(via_peer(&r), "answered by the owner: {}", cache_status(&r));
    assert!(common::is_hit(&b.get(&path).await), "the owner stored it");
    let path = owned_by(&members[0], &members, &origin, "tls-back");
    let r = b.get(&path).await;
    assert!(via_peer(&r), "and the other way: {}", cache_status(&r));
    assert_eq!(origin.total_hits(), 2, "one origin fetch per key");
    assert_eq!(all_refusals(&a).await + all_refusals(&b).await, 0.0);

    // The peer listener speaks TLS only: a cleartext request is told so.
    let peer = b.peer_addr().expect("a peer listener");
    let reply = raw_exchange(peer, "GET /x HTTP/1.1\r\nHost: b\r\n\r\n").await;
    assert_eq!(reply.status(), Some(403), "{}", reply.text);
    assert!(
        reply.text.contains("x-ringside-refused: tls-required"),
        "{}",
        reply.text
    );
    assert_eq!(refusals(&b, "cleartext").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_certificate_for_every_replica_names_the_cluster_with_peer_name() {
    // A Kubernetes Secret per app: pod IPs are not known when it is
    // issued, so the certificate names the app's peer Service instead.
    let origin = Origin::start().await;
    let pki = Pki::new("app-ca");
    let name = "catalog-ringside.shop.svc.cluster.local";
    let shared = pki.issue_for("catalog", &[name]);
    let secret = Secret::with("shared", &pki.pem, &shared);
    let members = addresses(2);
    let a = node(&origin, &members[0], &members, &secret.yaml(name)).await;
    let _b = node(&origin, &members[1], &members, &secret.yaml(name)).await;
    let path = owned_by(&members[1], &members, &origin, "shared");
    let r = a.get(&path).await;
    assert!(via_peer(&r), "answered by the owner: {}", cache_status(&r));
    assert_eq!(all_refusals(&a).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_valid_certificate_gets_nothing_and_asks_its_origin() {
    let origin = Origin::start().await;
    let pki = Pki::new("cluster-ca");
    let impostor = Pki::new("impostor-ca");
    let (sa, sb) = (pki.secret("a"), pki.secret("b"));
    // M's certificate is from another CA. M trusts both, so that it is
    // the owner refusing M, not M refusing the owner.
    let both = format!("{}{}", impostor.pem, pki.pem);
    let sm = Secret::with("m", &both, &impostor.issue("m"));
    let members = addresses(3);
    let a = node(&origin, &members[0], &members, &sa.yaml("")).await;
    let b = node(&origin, &members[1], &members, &sb.yaml("")).await;
    let m = node(&origin, &members[2], &members, &sm.yaml("")).await;

    let path = owned_by(&members[1], &members, &origin, "guarded");
    let started = Instant::now();
    let r = m.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!via_peer(&r), "B answered M: {}", cache_status(&r));
    // Not a hang: well inside the client's patience even on a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );
    assert_eq!(origin.hits(&path), 1, "M asked the origin itself");
    assert!(
        refusals(&b, "handshake").await >= 1.0,
        "B refused the handshake"
    );
    assert!(
        refusals(&m, "owner_handshake").await >= 1.0,
        "M counts why:\n{}",
        m.log()
    );
    assert!(
        m.log().contains("peer TLS with"),
        "M logs the failed TLS with B:\n{}",
        m.log()
    );
    assert_eq!(
        b.metric("ringside_peer_served_total", &[]).await,
        0.0,
        "B served nothing to anyone"
    );

    // A, with a certificate from the CA, is answered: B fetches the key now.
    let r = a.get(&path).await;
    assert!(via_peer(&r), "{}", cache_status(&r));
    assert_eq!(origin.hits(&path), 2, "B had not fetched it for M");
}

/// A peer request sent by hand over mutual TLS with `cert` (trusting
/// `ca`), to the peer listener `to`, as the member `from`; signed with the
/// cluster secret unless `signed` is false. The answer's status and
/// `x-ringside-refused`.
async fn peer_request(
    cert: &CertFiles,
    ca: &Path,
    to: std::net::SocketAddr,
    from: &str,
    path: &str,
    origin: &Origin,
    signed: bool,
) -> (u16, String) {
    let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(&cert.cert)
        .expect("certificate PEM")
        .map(|c| c.expect("a certificate").to_vec())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("key PEM");
    let cas: Vec<WrappedX509> = CertificateDer::pem_file_iter(ca)
        .expect("CA PEM")
        .map(|c| WrappedX509::new(c.expect("a CA certificate").to_vec(), parse_x509))
        .collect();
    let mut peer = HttpPeer::new(to, true, "127.0.0.1".into());
    peer.client_cert_key = Some(Arc::new(CertKey::new(certs, key.secret_der().to_vec())));
    peer.options.ca = Some(cas.into());

    let mut request = RequestHeader::build("GET", path.as_bytes(), None).expect("request");
    let origin = OriginUrl::parse(&origin.url())
        .expect("origin")
        .key_prefix();
    request
        .insert_header(
            peers::ORIGIN.clone(),
            HeaderValue::from_str(&origin).unwrap(),
        )
        .unwrap();
    let to = to.to_string();
    let envelope = Envelope {
        from,
        to: &to,
        timestamp: peers::now_secs(),
        nonce: peers::random_nonce().expect("a nonce"),
    };
    for (name, value) in envelope.headers() {
        request.insert_header(name, value).unwrap();
    }
    if signed {
        let signature = PeerAuth::new(CLUSTER_SECRET).sign("GET", path, &request.headers);
        request
            .insert_header(peers::SIGNATURE.clone(), signature)
            .unwrap();
    }
    request.insert_header("host", "peer").unwrap();

    let connector = Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .expect("TLS to the peer");
    session
        .write_request_header(Box::new(request))
        .await
        .expect("send");
    session.finish_request_body().await.expect("send");
    session.read_response_header().await.expect("an answer");
    let header = session.response_header().expect("a response head");
    let refused = header
        .headers
        .get(&peers::REFUSED)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (header.status.as_u16(), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_must_name_a_member_and_requests_stay_signed() {
    let origin = Origin::start().await;
    let pki = Pki::new("cluster-ca");
    let (sa, sb) = (pki.secret("a"), pki.secret("b"));
    let members = addresses(2);
    let _a = node(&origin, &members[0], &members, &sa.yaml("")).await;
    let b = node(&origin, &members[1], &members, &sb.yaml("")).await;
    let to = b.peer_addr().expect("a peer listener");
    let ca = sb.file("ca.crt");
    let for_localhost = pki.issue("client");
    let elsewhere = pki.issue_for("elsewhere", &["10.9.9.9", "elsewhere.test"]);
    let a_addr = members[0].as_str();

    let ask = |cert: &CertFiles, from: &str, path: &str, signed: bool| {
        let (cert, ca, from, path) = (cert.clone(), ca.clone(), from.to_string(), path.to_string());
        let origin = &origin;
        async move { peer_request(&cert, &ca, to, &from, &path, origin, signed).await }
    };
    let path = "/by-hand?cc=max-age%3D60";
    assert_eq!(
        ask(&for_localhost, a_addr, path, true).await,
        (200, String::new()),
        "a member's certificate and a signature: served"
    );
    assert_eq!(
        ask(&for_localhost, a_addr, path, false).await,
        (401, "credentials".into()),
        "TLS does not replace the signature"
    );
    assert_eq!(
        ask(&elsewhere, a_addr, path, true).await,
        (403, "identity".into()),
        "a certificate from the CA for another host"
    );
    assert_eq!(
        ask(&for_localhost, "127.0.0.1:1", path, true).await,
        (403, "identity".into()),
        "signed as a node that is no member"
    );
    assert_eq!(refusals(&b, "identity").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_ca_and_certificates_are_picked_up_without_restart() {
    let origin = Origin::start().await;
    let old = Pki::new("old-ca");
    let new = Pki::new("new-ca");
    // B is rotated, C starts after the rotation, D keeps the old CA.
    let (sb, sd) = (old.secret("b"), old.secret("d"));
    let members = addresses(3);
    let (b_addr, c_addr) = (&members[0], &members[1]);
    let b = node(&origin, b_addr, &members, &sb.yaml("")).await;
    let d = node(&origin, &members[2], &members, &sd.yaml("")).await;
    let before = owned_by(b_addr, &members, &origin, "before");
    assert!(
        via_peer(&d.get(&before).await),
        "D and B talk before the rotation"
    );

    sb.install(&new.pem, &new.issue("b2"));
    let sc = new.secret("c");
    let c = node(&origin, c_addr, &members, &sc.yaml("")).await;

    // C (new CA) and B find each other in both directions: B serves and
    // shows its new certificate and trusts the new CA.
    answered_in_time(&c, b_addr, &members, &origin, "C is answered by B").await;
    answered_in_time(&b, c_addr, &members, &origin, "B is answered by C").await;
    assert!(
        b.metric("ringside_peer_tls_reloads_total", &["result=\"loaded\""])
            .await
            >= 2.0,
        "B reloaded its CA and its certificate"
    );

    // D still shows a certificate from the old CA: B no longer trusts it,
    // on the connection D opened before (or in the handshake of a new one,
    // when D's pool let that one go).
    let after = owned_by(b_addr, &members, &origin, "after");
    let r = d.get(&after).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !via_peer(&r),
        "B answered D after the rotation: {}",
        cache_status(&r)
    );
    common::eventually(
        Duration::from_secs(10),
        "B counts its refusal of D",
        || async { refusals(&b, "certificate").await + refusals(&b, "handshake").await >= 1.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_cluster_refuses_clearly_and_serves_from_the_origin() {
    let origin = Origin::start().await;
    let pki = Pki::new("cluster-ca");
    let secret = pki.secret("a");
    let members = addresses(2);
    let (a_addr, b_addr) = (&members[0], &members[1]);
    let a = node(&origin, a_addr, &members, &secret.yaml("")).await;
    let b = node(&origin, b_addr, &members, "").await;

    // A (TLS) asks B (cleartext): no cleartext from A, B says why.
    let path = owned_by(b_addr, &members, &origin, "to-cleartext");
    let r = a.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!via_peer(&r), "{}", cache_status(&r));
    // (Its JOINED notice at start, `announce.rs`, may have been refused too.)
    assert!(
        refusals(&b, "tls").await >= 1.0,
        "B refused a TLS handshake"
    );
    assert!(refusals(&a, "owner_handshake").await >= 1.0);
    assert!(b.log().contains("mixed cluster"), "{}", b.log());

    // B (cleartext) asks A (TLS): A answers 403 tls-required.
    let path = owned_by(a_addr, &members, &origin, "to-tls");
    let r = b.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!via_peer(&r), "{}", cache_status(&r));
    assert!(
        refusals(&a, "cleartext").await >= 1.0,
        "A refused cleartext"
    );
    assert!(a.log().contains("mixed cluster"), "{}", a.log());
    assert!(b.log().contains("tls-required"), "B logs why: {}", b.log());

    for node in [&a, &b] {
        assert_eq!(
            node.metric("ringside_peer_served_total", &[]).await,
            0.0,
            "{} served a peer",
            node.addr
        );
    }
}

/// A TLS node that stops hands its entries to their next owners over TLS:
/// the others take the leaving node's certificate while it hands over,
/// though their rings no longer list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaving_node_hands_over_under_tls() {
    let origin = Origin::start().await;
    let pki = Pki::new("handoff-ca");
    let members = addresses(3);
    let secrets: Vec<Secret> = ["x", "y", "z"].iter().map(|n| pki.secret(n)).collect();
    let mut nodes = Vec::new();
    for (me, secret) in members.iter().zip(&secrets) {
        nodes.push(node(&origin, me, &members, &secret.yaml("")).await);
    }
    let paths = common::paths_owned_by(
        &members[0],
        &members,
        &origin.url(),
        "/tls-handoff",
        "cc=max-age%3D300",
        10,
    );
    for path in &paths {
        assert_eq!(nodes[0].get(path).await.status, 200);
    }
    nodes[0].terminate().await.expect("node 0 was running");
    let mut stored = 0.0;
    for node in &nodes[1..] {
        stored += node
            .metric("ringside_handoff_received_total", &["result=\"stored\""])
            .await;
    }
    assert_eq!(stored, paths.len() as f64, "every entry handed over");
    assert_eq!(
        all_refusals(&nodes[1]).await + all_refusals(&nodes[2]).await,
        0.0
    );
    for path in &paths {
        nodes[1].get(path).await;
        assert_eq!(origin.hits(path), 1, "{path} fetched again");
    }
}
