//! What ringside trusts in etcd and shows it: the TLS files and the auth
//! password. All are read when membership starts, so that a file that is
//! missing or is not what it should be stops the start with the field's
//! name, rather than failing every call later.

use crate::config::{EtcdAuth, EtcdTls};
use crate::error::{Error, Kind, Result};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::tls::{self, RootCertStore};

const TLS: &str = "cluster.membership.etcd.tls";
const AUTH: &str = "cluster.membership.etcd.auth";

/// Idle connections the connector may keep; the gateway client keeps none.
const POOL_SIZE: usize = 1;

/// The connector for etcd's endpoints: with `tls`, trusting `ca_file`
/// instead of the system's roots and showing the client certificate.
///
/// pingora reads the files itself and panics on one it cannot use, so each
/// is loaded here first, by the same loaders.
pub(super) fn connector(tls: Option<&EtcdTls>) -> Result<Connector> {
    let Some(config) = tls else {
        return Ok(Connector::new(None));
    };
    tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &config.ca_file {
        load_ca(ca, &mut roots)?;
    }
    let client_cert = config.cert_file.clone().zip(config.key_file.clone());
    if let Some((cert, key)) = &client_cert {
        check_client_cert(cert, key, roots)?;
    }
    let mut options = ConnectorOptions::new(POOL_SIZE);
    options.ca_file = config.ca_file.clone();
    options.cert_key_file = client_cert;
    Ok(Connector::new(Some(options)))
}

fn load_ca(path: &str, roots: &mut RootCertStore) -> Result<()> {
    tls::load_ca_file_into_store(path, roots)
        .map_err(|e| Error::new(Kind::Read, format!("{TLS}.ca_file: {path:?}")).caused_by(e))?;
    if roots.is_empty() {
        return Err(Error::invalid(format!(
            "{TLS}.ca_file: {path:?} holds no PEM certificate"
        )));
    }
    Ok(())
}

/// The certificate and key load, and go together.
fn check_client_cert(cert: &str, key: &str, roots: RootCertStore) -> Result<()> {
    let cert_der = tls::load_pem_file_ca(&cert.to_string())
        .map_err(|e| Error::new(Kind::Read, format!("{TLS}.cert_file: {cert:?}")).caused_by(e))?;
    if cert_der.is_empty() {
        return Err(Error::invalid(format!(
            "{TLS}.cert_file: {cert:?} holds no PEM certificate"
        )));
    }
    let key_der = tls::load_pem_file_private_key(&key.to_string())
        .map_err(|e| Error::new(Kind::Read, format!("{TLS}.key_file: {key:?}")).caused_by(e))?;
    if key_der.is_empty() {
        return Err(Error::invalid(format!(
            "{TLS}.key_file: {key:?} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"
        )));
    }
    let mismatch = |e: &dyn std::fmt::Display| {
        Error::invalid(format!(
            "{TLS}.key_file: {key:?} is not the key of cert_file {cert:?}: {e}"
        ))
    };
    let Some((certs, private_key)) =
        tls::load_certs_and_key_files(cert, key).map_err(|e| mismatch(&e))?
    else {
        return Err(mismatch(&"not loadable as a pair"));
    };
    tls::ClientConfig::builder_with_protocol_versions(&[&tls::version::TLS12, &tls::version::TLS13])
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, private_key)
        .map(|_| ())
        .map_err(|e| mismatch(&e))
}

/// The password, from the file or the environment variable `auth` names.
/// A trailing newline (`echo pw > file`) is no part of it.
pub(super) fn password(auth: &EtcdAuth) -> Result<String> {
    let (field, read) = match (&auth.password_file, &auth.password_env) {
        (Some(path), _) => (
            "password_file",
            std::fs::read_to_string(path)
                .map_err(|e| Error::new(Kind::Read, format!("{path:?}")).caused_by(e)),
        ),
        (None, Some(name)) => (
            "password_env",
            std::env::var(name).map_err(|e| Error::invalid(format!("${name}")).caused_by(e)),
        ),
        (None, None) => {
            let why = format!("{AUTH}: neither password_file nor password_env");
            return Err(Error::invalid(why));
        }
    };
    let password = read.map_err(|e| e.within(format!("{AUTH}.{field}")))?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(Error::invalid(format!(
            "{AUTH}.{field}: the password is empty"
        )));
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A file in the temp directory, removed on drop.
    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str, text: &str) -> Temp {
            let path = std::env::temp_dir().join(format!(
                "ringside-credentials-{}-{name}",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
            Temp(path)
        }

        fn path(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn auth(password_file: Option<String>, password_env: Option<&str>) -> EtcdAuth {
        EtcdAuth {
            username: "ringside".into(),
            password_file,
            password_env: password_env.map(str::to_string),
        }
    }

    #[test]
    fn passwords_come_from_a_file_or_a_variable_without_the_newline() {
        let file = Temp::new("password", "s3cret\r\n");
        assert_eq!(
            password(&auth(Some(file.path()), None)).map_err(|e| e.to_string()),
            Ok("s3cret".into())
        );
        let empty = Temp::new("empty-password", "\n");
        let e = password(&auth(Some(empty.path()), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.password_file: the password is empty"),
            "{e}"
        );
        // A name no other test uses: set once, never removed.
        let name = format!("RINGSIDE_UNIT_TEST_ETCD_PASSWORD_{}", std::process::id());
        std::env::set_var(&name, "from-env");
        let from_env = password(&auth(None, Some(&name))).map_err(|e| e.to_string());
        assert_eq!(from_env, Ok("from-env".into()));
        let unset = auth(None, Some("RINGSIDE_UNIT_TEST_UNSET_VARIABLE"));
        let e = password(&unset).unwrap_err().to_string();
        assert!(
            e.contains("auth.password_env: $RINGSIDE_UNIT_TEST_UNSET_VARIABLE"),
            "{e}"
        );
    }

    /// A self-signed certificate and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_client_key_must_belong_to_its_certificate() {
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let (cert, key, other_key) = (
            Temp::new("client.crt", &cert),
            Temp::new("client.key", &key),
            Temp::new("other.key", &other_key),
        );
        let roots = RootCertStore::empty();
        assert_eq!(
            check_client_cert(&cert.path(), &key.path(), roots.clone()).map_err(|e| e.to_string()),
            Ok(())
        );
        let e = check_client_cert(&cert.path(), &other_key.path(), roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.key_file") && e.contains("is not the key of cert_file"),
            "{e}"
        );
        let e = check_client_cert(&key.path(), &key.path(), RootCertStore::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.cert_file") && e.contains("no PEM certificate"),
            "{e}"
        );
    }
}
