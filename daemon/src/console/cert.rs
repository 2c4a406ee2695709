//! The console's certificate: the configured pair, or a self-signed one made
//! on first start in the data directory (key file 0600, created once, never
//! logged). `clinic-relay console cert` prints its SHA-256 fingerprint so
//! that IT can pin it in the desk browsers, or replace it.

use super::config::ConsoleConfig;
use crate::tls::{TlsError, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const SELF_SIGNED_CERT: &str = "console-cert.pem";
pub const SELF_SIGNED_KEY: &str = "console-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("console certificate: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("console certificate: cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The certificate and key files the console uses: the configured ones, or
/// the self-signed pair in `data_dir`, made now if missing.
pub fn files(config: &ConsoleConfig, data_dir: &Path) -> Result<TlsFiles, CertError> {
    let (cert, key) = match &config.tls {
        Some((c, k)) => (c.clone(), k.clone()),
        None => {
            let (c, k) = (
                data_dir.join(SELF_SIGNED_CERT),
                data_dir.join(SELF_SIGNED_KEY),
            );
            if !c.exists() || !k.exists() {
                generate(config, &c, &k)?;
            }
            (c, k)
        }
    };
    Ok(TlsFiles {
        cert,
        key,
        client_ca: None,
        section: "console",
    })
}

/// Names the certificate is valid for: localhost, the loopback address, the
/// listen address (unless it is the wildcard) and the host's name.
fn names(config: &ConsoleConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let ip = config.listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if !host.is_empty() && host.len() <= 253 && host.chars().all(plain) {
            names.push(host.to_owned());
        }
    }
    names
}

fn generate(config: &ConsoleConfig, cert: &Path, key: &Path) -> Result<(), CertError> {
    let made = rcgen::generate_simple_self_signed(names(config))
        .map_err(|e| CertError::Generate(e.to_string()))?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    // The key first, 0600 from its creation: never a moment readable.
    write_new(key, made.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.cert.pem().as_bytes(), 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    // A half pair from an interrupted first start is replaced whole.
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The SHA-256 fingerprint of the certificate's DER, as browsers show it
/// (`AB:CD:…`).
pub fn fingerprint(cert: &Path) -> Result<String, CertError> {
    let der = CertificateDer::from_pem_file(cert).map_err(|e| {
        CertError::Tls(TlsError::Read {
            key: "console.cert",
            path: cert.to_owned(),
            reason: e.to_string(),
        })
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}
