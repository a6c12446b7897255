//! Mutual TLS between peers (`cluster.tls`): the peer listener serves TLS
//! and requires a client certificate from the cluster's CA; a node asking
//! an owner shows its certificate and checks the owner's against the CA.
//! The signed-request protocol (`peers.rs`) runs unchanged inside: TLS
//! adds confidentiality, authenticated answers and a second, independent
//! credential; the HMAC signature stays on.
//!
//! **Identity.** A peer is who its member address says, and its
//! certificate must say so too, as in HTTPS: it must be valid for the host
//! of that address (an IP or DNS SAN), or, with `peer_name`, for that one
//! name on every peer (one certificate shared by all replicas of an app,
//! such as a Kubernetes Secret; pod IPs are not known when it is issued).
//! - asking: the owner's certificate is checked for the owner's host (or
//!   `peer_name`), the owner being the member the ring chose;
//! - answering: the request's signed sender (`x-ringside-from`) must be a
//!   member of this node's ring, and the connection's certificate valid for
//!   its host (or `peer_name`) under the CA as it is *now*: a connection
//!   opened before the CA changed is checked again, so a replaced CA stops
//!   being trusted on open connections too. Failures are a 403 with
//!   `x-ringside-refused: certificate` or `identity`.
//!
//! **Rotation.** The CA, the certificate and its key are read again when
//! their files change (`tls_files.rs`): new handshakes use the new
//! certificate at once; connections to owners are pooled per client
//! certificate and CA, so a node's next request after a change opens a new
//! one.
//!
//! **Mixed clusters refuse.** A node with `cluster.tls` never speaks
//! cleartext to a peer, and its peer listener answers a cleartext request
//! with a 403 (`x-ringside-refused: tls-required`) that tells the asker why;
//! a node without it closes a connection that opens with a TLS handshake.
//! Both log the reason and count it (`ringside_peer_tls_refusals_total`),
//! and the asker loads from its origin: slower, never wrong, never a hang.

use crate::config::PeerTlsConfig;
use crate::error;
use crate::metrics;
use crate::net::connections::{answer_and_close, Handshake};
use crate::net::tls_files::{Ca, CertificateFiles, TrustedCa};
use crate::net::watched_files::Watched;
use async_trait::async_trait;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::listeners::TlsAccept;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::Stream;
use pingora::tls::{CertificateDer, ServerName, UnixTime};
use pingora::upstreams::peer::{HttpPeer, Scheme};
use pingora::{Error, ErrorType};
use rustls::client::verify_server_name;
use rustls::server::ParsedCertificate;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// This node's peer TLS: its certificate, the CA, whom to expect.
pub struct PeerTls {
    certificate: Arc<Watched<CertificateFiles>>,
    ca: Arc<Watched<Ca>>,
    /// The name every peer's certificate carries; None: each member's host.
    peer_name: Option<String>,
    /// This node's advertised peer address.
    me: String,
    acceptor: Acceptor,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("certificate", &self.certificate)
            .field("ca", &self.ca)
            .field("peer_name", &self.peer_name)
            .finish()
    }
}

/// Why a peer request was refused on its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRefusal {
    /// None, or not valid under the current CA.
    Certificate(String),
    /// Valid, but not for the member that signed the request, or no member.
    Identity(String),
}

impl TlsRefusal {
    /// The `reason` label and `x-ringside-refused` value.
    pub fn reason(&self) -> &'static str {
        match self {
            TlsRefusal::Certificate(_) => "certificate",
            TlsRefusal::Identity(_) => "identity",
        }
    }
}

impl fmt::Display for TlsRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsRefusal::Certificate(why) | TlsRefusal::Identity(why) => f.write_str(why),
        }
    }
}

impl PeerTls {
    /// Read the files of `config` and check that this node's certificate is
    /// one its peers will accept: from the CA, naming `me` (this node's
    /// advertised peer address) or `peer_name`. Errors name the field.
    pub fn load(config: &PeerTlsConfig, me: &str) -> error::Result<PeerTls> {
        let ca_file = config.ca_file.clone();
        let ca = Watched::new(
            "peer TLS CA",
            &[&config.ca_file],
            move || Ca::load(&ca_file),
            |loaded| metrics::observe_peer_tls_reload("ca", loaded),
        )
        .map_err(|e| e.within("cluster.tls.ca_file"))?;
        let (cert_file, key_file) = (config.cert_file.clone(), config.key_file.clone());
        let certificate = Watched::new(
            "peer TLS certificate",
            &[&config.cert_file, &config.key_file],
            move || CertificateFiles::load(&cert_file, &key_file),
            |loaded| metrics::observe_peer_tls_reload("certificate", loaded),
        )
        .map_err(|e| e.within("cluster.tls.cert_file, cluster.tls.key_file"))?;
        let (certificate, ca) = (Arc::new(certificate), Arc::new(ca));
        let mut settings = TlsSettings::with_callbacks(Box::new(KeepCertificate))
            .map_err(|e| error::Error::invalid("cluster.tls").caused_by(e))?;
        settings.set_cert_resolver(certificate.clone());
        settings.set_client_cert_verifier(Arc::new(TrustedCa { ca: ca.clone() }));
        let tls = PeerTls {
            certificate,
            ca,
            peer_name: Some(config.peer_name.clone()).filter(|n| !n.is_empty()),
            me: me.to_string(),
            acceptor: settings.build(),
        };
        tls.check_own_certificate()?;
        Ok(tls)
    }

    /// This node's certificate, as its peers will check it.
    fn check_own_certificate(&self) -> error::Result<()> {
        let chain: Vec<CertificateDer<'static>> = self.certificate.current().served.cert.clone();
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| error::Error::invalid("cluster.tls.cert_file: empty"))?;
        self.ca
            .current()
            .client_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| {
                let what =
                    "cluster.tls.cert_file: not a valid certificate from cluster.tls.ca_file";
                error::Error::invalid(what).caused_by(e)
            })?;
        check_name(leaf, self.identity_of(&self.me)).map_err(|why| {
            let field = match self.peer_name {
                Some(_) => "cluster.tls.peer_name",
                None => "this node's peer address (cluster.advertise)",
            };
            error::Error::invalid(format!(
                "cluster.tls.cert_file: {why}; peers expect it for {field}"
            ))
        })
    }

    /// The name a member's certificate must be valid for.
    fn identity_of<'a>(&'a self, member: &'a str) -> &'a str {
        self.peer_name.as_deref().unwrap_or_else(|| host(member))
    }

    /// The peer listener's first step: TLS, after refusing cleartext.
    /// `timeout` bounds the wait for the client's first byte and the handshake.
    pub fn listener(self: &Arc<Self>, timeout: Duration) -> Arc<dyn Handshake> {
        Arc::new(TlsListener {
            tls: self.clone(),
            timeout,
        })
    }

    /// Make `peer` a TLS connection to `member` (its peer address): this
    /// node's certificate shown, the member's checked against the CA for
    /// its identity. Connections are pooled per client certificate and CA.
    pub fn configure(&self, peer: &mut HttpPeer, member: &str) {
        self.configure_for(peer, self.identity_of(member));
    }

    /// Make `peer` a TLS connection to this node's own peer listener (for
    /// `/readyz`), expecting this node's own identity.
    pub fn configure_own(&self, peer: &mut HttpPeer) {
        self.configure_for(peer, self.identity_of(&self.me));
    }

    fn configure_for(&self, peer: &mut HttpPeer, identity: &str) {
        let (ca, generation) = self.ca.current_with_generation();
        peer.scheme = Scheme::HTTPS;
        // Never empty (pingora skips verification without a name): a member
        // address always has a host, and peer_name is validated.
        peer.sni = identity.to_string();
        peer.client_cert_key = Some(self.certificate.current().shown.clone());
        peer.options.ca = Some(ca.for_peers.clone());
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.group_key = generation;
    }

    /// Log and count a failed request to `member`, if TLS is why.
    pub fn note_failure(&self, member: &str, e: &Error) {
        if is_tls_failure(e) {
            metrics::observe_peer_tls_refusal("owner_handshake");
            log::warn!(
                "peer TLS with {member} failed: {e} (does it have cluster.tls, with a certificate \
                 from our CA for {:?}, and trust our CA?)",
                self.identity_of(member)
            );
        }
    }

    /// Check the certificate of the connection a peer request came on
    /// (`ssl`), for the member that signed it (`from`, `is_member` in this
    /// node's ring).
    pub fn check_sender(
        &self,
        ssl: Option<&SslDigest>,
        from: &str,
        is_member: bool,
    ) -> Result<(), TlsRefusal> {
        let Some(peer) = ssl.and_then(|d| d.extension.get::<PeerCertificate>()) else {
            return Err(TlsRefusal::Certificate(
                "no client certificate on the connection".into(),
            ));
        };
        let (ca, generation) = self.ca.current_with_generation();
        let mut checked = peer.checked.lock();
        let (leaf, intermediates) = peer.chain.split_first().ok_or_else(|| {
            TlsRefusal::Certificate("no client certificate on the connection".into())
        })?;
        // What the last check on this connection already showed.
        let chain_ok = checked
            .as_ref()
            .is_some_and(|c| c.ca_generation == generation);
        let name_ok = chain_ok && checked.as_ref().is_some_and(|c| c.sender == from);
        if !chain_ok {
            ca.client_verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map_err(|e| {
                    TlsRefusal::Certificate(format!("not valid under the current CA: {e}"))
                })?;
        }
        if !name_ok {
            check_name(leaf, self.identity_of(from))
                .map_err(|e| TlsRefusal::Identity(e.to_string()))?;
            *checked = Some(Checked {
                ca_generation: generation,
                sender: from.to_string(),
            });
        }
        if !is_member {
            return Err(TlsRefusal::Identity(format!(
                "{from} is not a member of this node's ring"
            )));
        }
        Ok(())
    }
}

/// Whether TLS failed `e`: the handshake, or an alert the owner sent after
/// it (TLS 1.3 clients finish first; a refused client certificate comes
/// back as an alert on the first read).
fn is_tls_failure(e: &Error) -> bool {
    let handshake = matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert
    );
    let alert = e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<rustls::Error>());
    handshake || alert
}

/// The host of a `host:port` address, without IPv6 brackets.
pub(crate) fn host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `cert` is valid for `name` (DNS name or IP address).
fn check_name(cert: &CertificateDer<'_>, name: &str) -> error::Result<()> {
    let server_name = ServerName::try_from(name)
        .map_err(|_| error::Error::invalid(format!("{name:?} is not a host name or IP")))?;
    let parsed = ParsedCertificate::try_from(cert)
        .map_err(|e| error::Error::invalid("unreadable certificate").caused_by(e))?;
    verify_server_name(&parsed, &server_name).map_err(|e| {
        error::Error::invalid(format!("the certificate is not valid for {name:?}")).caused_by(e)
    })
}

/// What the peer listener keeps of a connection's client certificate: the
/// chain, and the last check it passed (CA generation and sender).
struct PeerCertificate {
    chain: Vec<CertificateDer<'static>>,
    checked: Mutex<Option<Checked>>,
}

struct Checked {
    ca_generation: u64,
    sender: String,
}

/// Keeps the client's certificate chain with the connection (pingora hands
/// it to the HTTP layer in the session's TLS digest).
struct KeepCertificate;

#[async_trait]
impl TlsAccept for KeepCertificate {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let chain = tls.peer_cert_chain_der()?.to_vec();
        Some(Arc::new(PeerCertificate {
            chain,
            checked: Mutex::new(None),
        }))
    }
}

/// The first byte a client sends, within `timeout` (None: it closed, failed
/// or sent nothing; a TCP probe does that). Left in the stream.
async fn first_byte(stream: &mut Stream, timeout: Duration) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(timeout, stream.try_peek(&mut byte)).await {
        Ok(Ok(true)) => Some(byte[0]),
        _ => None,
    }
}

/// Who is on the other end, for the log.
fn client(stream: &Stream) -> String {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "an unknown address".into())
}

/// The peer listener of a node with `cluster.tls`.
struct TlsListener {
    tls: Arc<PeerTls>,
    timeout: Duration,
}

/// What a cleartext request to a TLS peer listener gets.
static TLS_REQUIRED: Lazy<Vec<u8>> = Lazy::new(|| {
    let body = "this peer listener speaks TLS only: the asking node needs cluster.tls \
                (a mixed cluster)\n";
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nx-ringside-refused: tls-required\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

#[async_trait]
impl Handshake for TlsListener {
    async fn accept(&self, mut stream: Stream) -> Option<Stream> {
        let client = client(&stream);
        if first_byte(&mut stream, self.timeout).await? != TLS_HANDSHAKE_RECORD {
            metrics::observe_peer_tls_refusal("cleartext");
            log::warn!(
                "peer request from {client} refused: it is not TLS, and this node has \
                 cluster.tls (a mixed cluster: that node needs cluster.tls too)"
            );
            answer_and_close(&mut stream, &TLS_REQUIRED).await;
            return None;
        }
        // The peer listener is plain TCP to pingora: TLS happens here.
        let Ok(tcp) = stream.into_any().downcast::<TcpStream>() else {
            log::error!("peer listener: a connection that is not a TCP stream");
            return None;
        };
        let handshake = self.tls.acceptor.tls_handshake(*tcp);
        let failure = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(tls)) => return Some(Box::new(tls)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no handshake within {:?}", self.timeout),
        };
        metrics::observe_peer_tls_refusal("handshake");
        log::warn!("peer TLS handshake with {client} failed: {failure}");
        None
    }
}

/// The peer listener of a node without `cluster.tls`: a connection that
/// opens with a TLS handshake comes from a node that has it.
pub struct CleartextListener {
    /// Bounds the wait for the client's first byte.
    pub timeout: Duration,
}

#[async_trait]
impl Handshake for CleartextListener {
    async fn accept(&self, mut stream: Stream) -> Option<Stream> {
        if first_byte(&mut stream, self.timeout).await? == TLS_HANDSHAKE_RECORD {
            metrics::observe_peer_tls_refusal("tls");
            log::warn!(
                "TLS handshake from {} refused: this node has no cluster.tls, and that one \
                 has (a mixed cluster: configure cluster.tls on every node, or on none)",
                client(&stream)
            );
            return None;
        }
        Some(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_member_addresses() {
        assert_eq!(host("10.0.0.1:7070"), "10.0.0.1");
        assert_eq!(host("[::1]:7070"), "::1");
        assert_eq!(host("node-a.peers.svc:7070"), "node-a.peers.svc");
    }

    #[test]
    fn the_cleartext_refusal_has_the_length_it_says() {
        let text = std::str::from_utf8(&TLS_REQUIRED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
