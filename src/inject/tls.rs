//! The webhook's TLS certificate, reloaded when its files change.
//!
//! cert-manager renews the certificate in its Secret, and the kubelet swaps
//! the mounted files (an atomic symlink switch) a minute or so later; a
//! webhook that read them once would serve the old certificate until it
//! expires. So the listener asks [`ReloadingCert`] for the certificate at
//! every TLS handshake (rustls' `ResolvesServerCert`), which compares the
//! two files' metadata (modification time, size, inode: a `stat` each, no
//! read) with what it loaded and, when either changed, loads them again.
//!
//! A pair that does not load (a file half-written, a key that does not match
//! its certificate) is logged and the previous certificate kept; the next
//! change of either file is tried again. Admission requests are rare enough
//! (one per pod created) that two `stat`s per handshake cost nothing.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{load_certs_and_key_files, ClientHello, CryptoProvider, ResolvesServerCert};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What identifies one version of a file: modification time, size, inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The certificate and key at two paths, as last loaded.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: String,
    key_path: String,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The files' stamps when last tried (loaded or not).
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

impl ReloadingCert {
    /// Load the pair now; an error says what is wrong with it.
    pub fn load(cert_path: &str, key_path: &str) -> Result<ReloadingCert, String> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let key = read(cert_path, key_path)?;
        Ok(ReloadingCert {
            cert_path: cert_path.to_string(),
            key_path: key_path.to_string(),
            loaded: Mutex::new(Loaded { stamps, key }),
        })
    }

    /// The certificate to serve: reloaded first if a file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.stamps != stamps {
            loaded.stamps = stamps;
            match read(&self.cert_path, &self.key_path) {
                Ok(key) => {
                    crate::metrics::observe_certificate_reload(true);
                    log::info!("reloaded the TLS certificate from {}", self.cert_path);
                    loaded.key = key;
                }
                Err(why) => {
                    crate::metrics::observe_certificate_reload(false);
                    log::warn!("keeping the previous TLS certificate: {why}");
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Parse the pair and check that the key is the certificate's.
fn read(cert_path: &str, key_path: &str) -> Result<Arc<CertifiedKey>, String> {
    let (certs, key) = match load_certs_and_key_files(cert_path, key_path) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return Err(format!(
                "{cert_path} holds no certificate or {key_path} no private key"
            ))
        }
        Err(e) => return Err(format!("cannot read {cert_path} or {key_path}: {e}")),
    };
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider installed")?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| format!("{cert_path} and {key_path} do not make a certificate: {e}"))
}
