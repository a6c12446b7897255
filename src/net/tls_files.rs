//! TLS material read from PEM files and read again when the files change
//! (a [`Watched`] value each): a certificate with its key (served by a
//! listener, shown by a client) and the CA certificates a listener or a
//! client trusts.
//!
//! cert-manager renews certificates in their Secret, and the kubelet swaps
//! the mounted files (an atomic symlink switch) a minute or so later; a
//! process that read them once would use the old ones until they expire,
//! and would go on trusting a CA that was replaced. Files that do not load
//! (one half-written, a key that does not match its certificate) are logged
//! and the previous value kept.
//!
//! Built on these: [`Watched<CertificateFiles>`] is a rustls certificate
//! resolver for a listener, [`TrustedCa`] a client-certificate verifier that
//! always asks the current CA.

use super::watched_files::Watched;
use crate::error::{self, Error, Kind};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    load_certs_and_key_files, CertificateDer, ClientCertVerified, ClientCertVerifier, ClientHello,
    CryptoProvider, DigitallySignedStruct, HandshakeSignatureValid, ResolvesServerCert,
    RootCertStore, RusTlsError, SignatureScheme, UnixTime, WebPkiClientVerifier,
};
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::DistinguishedName;
use std::sync::Arc;

/// A certificate (chain) and its private key, in the forms a listener
/// serves and a pingora client shows.
pub struct CertificateFiles {
    pub served: Arc<CertifiedKey>,
    pub shown: Arc<CertKey>,
}

impl CertificateFiles {
    /// Read the pair and check that the key is the certificate's.
    pub fn load(cert_path: &str, key_path: &str) -> error::Result<CertificateFiles> {
        let (certs, key) = match load_certs_and_key_files(cert_path, key_path) {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                return Err(Error::invalid(format!(
                    "{cert_path:?} holds no PEM certificate or {key_path:?} no PEM private key"
                )))
            }
            Err(e) => {
                let what = format!("cannot read {cert_path:?} or {key_path:?}");
                return Err(Error::new(Kind::Read, what).caused_by(e));
            }
        };
        let der: Vec<Vec<u8>> = certs.iter().map(|c| c.as_ref().to_vec()).collect();
        let key_der = key.secret_der().to_vec();
        // First: this parses the certificate (pingora's CertKey would panic
        // on one it cannot parse).
        let served = CertifiedKey::from_der(certs, key, &*crypto_provider()?).map_err(|e| {
            let what = format!("{cert_path:?} and {key_path:?} are not a certificate and its key");
            Error::invalid(what).caused_by(e)
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

fn crypto_provider() -> error::Result<Arc<CryptoProvider>> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| Error::invalid("no TLS crypto provider installed"))
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
    pub fn load(path: &str) -> error::Result<Ca> {
        // Every certificate in the file: during a rotation it may hold the
        // old CA and the new one.
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Error::new(Kind::Read, format!("{path:?}")).caused_by(e))?;
        if certs.is_empty() {
            return Err(Error::invalid(format!("{path:?} holds no PEM certificate")));
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| {
                Error::invalid(format!("{path:?}: not a CA certificate")).caused_by(e)
            })?;
        }
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider()?)
                .build()
                .map_err(|e| Error::invalid(format!("{path:?}")).caused_by(e))?;
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
