//! TLS for the three parts that speak it: the MQTT input and the uplink
//! (clients) and the local API (server). PEM loading, trust roots and the
//! rustls configs live here once, with one typed error that callers wrap
//! with `#[from]` (rumqttc's `tls.rs` is the model).
//!
//! Invariants:
//! - every config uses the ring provider (never aws-lc-rs) and TLS 1.2/1.3;
//! - an error names the file it is about, never a key's content;
//! - files are read with [`crate::secret::read_small_file`] (regular files
//!   under a cap, never blocking);
//! - imports nothing above it (only [`crate::secret`]), so the config can check
//!   certificate files without importing the parts that use them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: crate::secret::FileError,
    },
    #[error("`{}` is not valid PEM: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("`{}` holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// The detail is the PEM reader's error kind, never the key itself.
    #[error("`{}`: no usable PEM private key ({detail})", path.display())]
    NoPrivateKey { path: PathBuf, detail: String },
    #[error("a certificate in `{}` is not usable: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Whom a client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The built-in webpki roots.
    Webpki,
    /// The webpki roots and the certificates of a CA file (the uplink).
    WebpkiAnd(&'a Path),
    /// Only the certificates of a CA file (the MQTT input's `ca_file`).
    Only(&'a Path),
}

/// The certificates of a PEM buffer (possibly none).
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The certificates of a PEM file: at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = parse_pem_certs(&pem).map_err(|detail| TlsError::Pem {
        path: path.to_owned(),
        detail,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoPrivateKey {
        path: path.to_owned(),
        // `Debug` of the reader's error names its kind; it holds no key bytes.
        detail: format!("{e:?}"),
    })
}

/// A certificate or key file: a regular file of at most
/// [`MAX_FILE`](crate::secret::MAX_FILE) bytes, read without blocking.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::secret::read_small_file(path, crate::secret::MAX_FILE).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config: the roots `trust` names and, for brokers that require
/// one, a client certificate chain and key.
pub fn client_config(
    trust: Trust<'_>,
    client_auth: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if !matches!(trust, Trust::Only(_)) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Trust::WebpkiAnd(path) | Trust::Only(path) = trust {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::BadCertificate {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client_auth {
        Some((cert, key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_private_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A server config (TLS 1.3 and 1.2, no client certificates).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_private_key(key)?;
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_certs(&missing).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("`{}` holds no PEM certificate", empty.display())
        );
        let e = client_config(Trust::Only(&empty), None).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");

        let key = dir.path().join("bad.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = server_config(&empty, &key).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        // A key that parses as PEM but not as a key: rustls refuses it, and
        // the message does not carry its bytes.
        if let Err(e) = load_private_key(&key) {
            assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        }
    }

    /// A self-signed P-256 certificate and key made by openssl.
    fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
        let (crt, key) = (dir.join("t.crt"), dir.join("t.key"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{out:?}");
        (crt, key)
    }

    #[test]
    fn configs_from_real_files() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = make_cert(dir.path());
        assert_eq!(load_certs(&crt).unwrap().len(), 1);
        server_config(&crt, &key).unwrap();
        client_config(Trust::Only(&crt), Some((&crt, &key))).unwrap();
        client_config(Trust::WebpkiAnd(&crt), None).unwrap();
        client_config(Trust::Webpki, None).unwrap();
        // The certificate is not a key, and the key holds no certificate.
        assert!(matches!(
            load_private_key(&crt).unwrap_err(),
            TlsError::NoPrivateKey { .. }
        ));
        assert!(matches!(
            server_config(&key, &key).unwrap_err(),
            TlsError::NoCertificate { .. }
        ));
    }
}
