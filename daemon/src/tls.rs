//! TLS for the LAN listeners (MLLP, and the API's optional TCP door), with
//! rustls and its `ring` provider. Certificates and keys are PEM files; a
//! private key readable by group or others is refused, like the master key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAX_PEM_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {reason}")]
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {path} holds no {what}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{key}: the private key {path} is readable by group or others (mode {mode:04o}). Fix: chmod 600 {path}")]
    KeyPermissions {
        key: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
}

/// Where a listener's TLS material is, with the config keys that named it
/// (for error messages).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
    /// Config section, e.g. "pms" or "api".
    pub section: &'static str,
}

fn check_size(key: &'static str, path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| TlsError::Read {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsError::Read {
            key,
            path: path.to_owned(),
            reason: "larger than 1 MiB".to_owned(),
        });
    }
    Ok(())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    check_size(key, path)?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_size(key, path)?;
    let mode = std::fs::metadata(path)
        .map_err(|e| TlsError::Read {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            key,
            path: path.to_owned(),
            mode,
        });
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Builds the server side: TLS 1.2/1.3 with the ring provider, and client
/// certificate verification when a client CA is given.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_key, key_key, ca_key) = match files.section {
        "pms" => ("pms.tls_cert", "pms.tls_key", "pms.tls_client_ca"),
        "console" => ("console.cert", "console.key", "console.client_ca"),
        _ => ("api.tls_cert", "api.tls_key", "api.client_ca"),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            key: cert_key,
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca_key, ca)? {
                roots.add(c).map_err(|e| TlsError::Config {
                    key: ca_key,
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config {
                    key: ca_key,
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            certs(cert_key, &files.cert)?,
            private_key(key_key, &files.key)?,
        )
        .map_err(|e| TlsError::Config {
            key: key_key,
            reason: format!("certificate and key do not fit together: {e}"),
        })?;
    Ok(Arc::new(config))
}

/// A short, stable name for a client certificate (for logs and audit).
pub fn peer_name(conn: &rustls::ServerConnection) -> String {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| {
            let digest = ring::digest::digest(&ring::digest::SHA256, c.as_ref());
            format!(
                "cert:{}",
                hex::encode(digest.as_ref().get(..8).unwrap_or_default())
            )
        })
        .unwrap_or_else(|| "cert:none".to_owned())
}
