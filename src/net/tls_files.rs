//! TLS material read from PEM files and read again when the files change:
//! a certificate with its key (served by a listener, shown by a client) and
//! the CA certificates a listener or a client trusts.
//!
//! cert-manager renews certificates in their Secret, and the kubelet swaps
//! the mounted files (an atomic symlink switch) a minute or so later; a
//! process that read them once would use the old ones until they expire,
//! and would go on trusting a CA that was replaced. So a [`Watched`] value
//! remembers its files' metadata (modification time, size, inode: a `stat`
//! each, no read) and, when its user asks for the value and a file changed,
//! loads them again. It looks at most once per [`RECHECK`], so asking on
//! every handshake or request costs a clock read.
//!
//! Files that do not load (one half-written, a key that does not match its
//! certificate) are logged and the previous value kept; the next change of
//! any of them is tried again. Each user says how reloads are counted.
//!
//! Built on these: [`Watched<CertificateFiles>`] is a rustls certificate
//! resolver for a listener, [`TrustedCa`] a client-certificate verifier that
//! always asks the current CA.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    load_certs_and_key_files, CertificateDer, ClientCertVerified, ClientCertVerifier, ClientHello,
    CryptoProvider, DigitallySignedStruct, HandshakeSignatureValid, ResolvesServerCert,
    RootCertStore, RusTlsError, SignatureScheme, UnixTime, WebPkiClientVerifier,
};
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::DistinguishedName;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often a [`Watched`] value looks at its files, at most.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What identifies one version of a file: modification time, size, inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value loaded from files, loaded again when they change.
pub struct Watched<T> {
    /// What the files are, for the log ("peer TLS certificate").
    what: String,
    paths: Vec<String>,
    load: Loader<T>,
    /// Told of every reload: true when it loaded.
    on_reload: fn(bool),
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The files' stamps when last tried (loaded or not).
    stamps: Vec<Stamp>,
    checked: Instant,
    value: Arc<T>,
    /// Counts the values loaded: 0 for the first.
    generation: u64,
}

impl<T> Watched<T> {
    /// Load the value from `paths` now with `load`; an error says what is
    /// wrong with the files.
    pub fn new(
        what: &str,
        paths: &[&str],
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
        on_reload: fn(bool),
    ) -> Result<Watched<T>, String> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = Arc::new(load()?);
        Ok(Watched {
            what: what.to_string(),
            paths,
            load: Box::new(load),
            on_reload,
            state: Mutex::new(State {
                stamps,
                checked: Instant::now(),
                value,
                generation: 0,
            }),
        })
    }

    /// The current value, loaded again first if a file changed.
    pub fn current(&self) -> Arc<T> {
        self.current_with_generation().0
    }

    /// The current value and its generation (which changes with the value).
    pub fn current_with_generation(&self) -> (Arc<T>, u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
            if stamps != state.stamps {
                state.stamps = stamps;
                self.reload(&mut state);
            }
        }
        (state.value.clone(), state.generation)
    }

    fn reload(&self, state: &mut State<T>) {
        match (self.load)() {
            Ok(value) => {
                state.value = Arc::new(value);
                state.generation += 1;
                (self.on_reload)(true);
                log::info!("reloaded the {} from {}", self.what, self.paths.join(", "));
            }
            Err(why) => {
                (self.on_reload)(false);
                log::warn!("keeping the previous {}: {why}", self.what);
            }
        }
    }
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

/// A certificate (chain) and its private key, in the forms a listener
/// serves and a pingora client shows.
pub struct CertificateFiles {
    pub served: Arc<CertifiedKey>,
    pub shown: Arc<CertKey>,
}

impl CertificateFiles {
    /// Read the pair and check that the key is the certificate's.
    pub fn load(cert_path: &str, key_path: &str) -> Result<CertificateFiles, String> {
        let (certs, key) = match load_certs_and_key_files(cert_path, key_path) {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                return Err(format!(
                    "{cert_path:?} holds no PEM certificate or {key_path:?} no PEM private key"
                ))
            }
            Err(e) => return Err(format!("cannot read {cert_path:?} or {key_path:?}: {e}")),
        };
        let der: Vec<Vec<u8>> = certs.iter().map(|c| c.as_ref().to_vec()).collect();
        let key_der = key.secret_der().to_vec();
        // First: this parses the certificate (pingora's CertKey would panic
        // on one it cannot parse).
        let served = CertifiedKey::from_der(certs, key, &*crypto_provider()?).map_err(|e| {
            format!("{cert_path:?} and {key_path:?} are not a certificate and its key: {e}")
        })?;
        let shown = CertKey::new(der, key_der);
        Ok(CertificateFiles {
            served: Arc::new(served),
            shown: Arc::new(shown),
        })
    }
}

impl ResolvesServerCert for Watched<CertificateFiles> {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().served.clone())
    }
}

fn crypto_provider() -> Result<Arc<CryptoProvider>, String> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| "no TLS crypto provider installed".to_string())
}

/// The CA certificates of one file, as a client verifier (for a listener
/// that requires client certificates) and as a pingora client's trust.
pub struct Ca {
    /// Checks a client's certificate chain against these CAs.
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// For `HttpPeer::options.ca`: checks a server's chain against them.
    pub for_peers: Arc<[WrappedX509]>,
}

impl Ca {
    pub fn load(path: &str) -> Result<Ca, String> {
        // Every certificate in the file: during a rotation it may hold the
        // old CA and the new one.
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{path:?}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{path:?} holds no PEM certificate"));
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("{path:?}: not a CA certificate: {e}"))?;
        }
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider()?)
                .build()
                .map_err(|e| format!("{path:?}: {e}"))?;
        let for_peers = certs
            .into_iter()
            .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
            .collect();
        Ok(Ca {
            client_verifier,
            for_peers,
        })
    }
}

/// A client-certificate verifier that asks the CA files' current contents,
/// so a new CA is trusted (and the old one no longer) without a restart.
#[derive(Debug)]
pub struct TrustedCa {
    pub ca: Arc<Watched<Ca>>,
}

impl TrustedCa {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.ca.current().client_verifier.clone()
    }
}

impl ClientCertVerifier for TrustedCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Optional hints (RFC 8446 §4.2.4); the CA may change under us.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RusTlsError> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RusTlsError> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RusTlsError> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static RELOADS: AtomicU32 = AtomicU32::new(0);

    fn count(_loaded: bool) {
        RELOADS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_changed_file_is_loaded_again_and_a_bad_one_keeps_the_value() {
        let path = std::env::temp_dir().join(format!("ringside-watched-{}", std::process::id()));
        let path = path.display().to_string();
        std::fs::write(&path, "1").unwrap();
        let read = {
            let path = path.clone();
            move || {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                text.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("{text:?}: {e}"))
            }
        };
        let watched = Watched::new("a number", &[&path], read, count).unwrap();
        assert_eq!(watched.current_with_generation(), (Arc::new(1), 0));
        // Not looked at again within RECHECK.
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*watched.current(), 1);
        watched.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(watched.current_with_generation(), (Arc::new(22), 1));
        std::fs::write(&path, "not a number").unwrap();
        watched.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(
            *watched.current(),
            22,
            "a file that does not load keeps the value"
        );
        assert_eq!(RELOADS.load(Ordering::SeqCst), 2);
        let _ = std::fs::remove_file(&path);
    }
}
