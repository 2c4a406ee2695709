//! The `[webhook]` section: where Meta's webhook calls are received, the
//! secrets they are checked with, and the receiver's limits. Without a
//! `listen` address the receiver is off.
//!
//! Secrets are never in the config file: the app secret and verify token
//! are files (0600, like the master key). `generate_dev_secrets` creates
//! them on first start for the development config only.

use crate::config::ConfigError;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Meta sends at most 3 MB per webhook call.
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;
/// A secret file is tiny; anything larger is not one.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub listen: Option<String>,
    pub path: Option<String>,
    pub app_secret_file: Option<String>,
    pub previous_app_secret_file: Option<String>,
    pub verify_token_file: Option<String>,
    pub generate_dev_secrets: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub max_connections: Option<u32>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// The request path Meta calls (GET handshake and POST notifications).
    pub path: String,
    pub app_secret_file: PathBuf,
    /// Also accepted while the app secret is being rotated.
    pub previous_app_secret_file: Option<PathBuf>,
    pub verify_token_file: PathBuf,
    /// Create the secret files if missing (development only).
    pub generate_dev_secrets: bool,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    /// Time allowed to receive a request's headers.
    pub header_timeout: Duration,
    /// Time allowed to receive a request's body.
    pub body_timeout: Duration,
    /// Direct TLS when set.
    pub tls: Option<crate::tls::TlsFiles>,
}

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

/// Validates the section; `resolve` turns a path from the file into an
/// absolute one (relative to the config file). None when the receiver is off.
pub fn validate(
    file: &WebhookFile,
    resolve: &dyn Fn(&str) -> PathBuf,
    invalid: &Invalid<'_>,
) -> Result<Option<WebhookConfig>, ConfigError> {
    let Some(listen_raw) = file.listen.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let listen: SocketAddr = listen_raw.parse().map_err(|_| {
        invalid(
            "webhook.listen",
            listen_raw,
            "not a socket address",
            "write IP:PORT, e.g. 127.0.0.1:8443 behind a reverse proxy",
        )
    })?;
    let path = file.path.clone().unwrap_or_else(|| "/webhook".to_owned());
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(invalid(
            "webhook.path",
            &path,
            "not an absolute request path",
            "write a path such as /webhook (the callback URL given to Meta ends with it)",
        ));
    }
    let need = |key: &'static str, v: Option<&str>| -> Result<PathBuf, ConfigError> {
        match v {
            Some(p) if !p.is_empty() => Ok(resolve(p)),
            _ => Err(invalid(
                key,
                "",
                "required when webhook.listen is set",
                "give the path of a 0600 file holding the secret (the app secret from the Meta app dashboard; a verify token of your choice)",
            )),
        }
    };
    let app_secret_file = need("webhook.app_secret_file", file.app_secret_file.as_deref())?;
    let verify_token_file = need(
        "webhook.verify_token_file",
        file.verify_token_file.as_deref(),
    )?;
    let previous_app_secret_file = match file.previous_app_secret_file.as_deref() {
        None | Some("") => None,
        Some(p) => Some(resolve(p)),
    };
    let max_body_bytes = match file.max_body_bytes {
        None => DEFAULT_MAX_BODY,
        Some(n) if (64 * 1024..=64 * 1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "webhook.max_body_bytes",
                &n.to_string(),
                "out of range",
                "use 65536 to 67108864 bytes (Meta sends at most 3 MB)",
            ))
        }
    };
    let max_connections = match file.max_connections {
        None => 64,
        Some(n @ 1..=4096) => n as usize,
        Some(n) => {
            return Err(invalid(
                "webhook.max_connections",
                &n.to_string(),
                "out of range",
                "use 1 to 4096",
            ))
        }
    };
    let timeout = |key: &'static str, v: Option<&str>, default: u64| match v {
        None => Ok(Duration::from_secs(default)),
        Some(s) => match crate::config::parse_duration(s) {
            Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(300) => Ok(d),
            _ => Err(invalid(
                key,
                s,
                "not a duration from 1s to 300s",
                "write it like \"10s\" or \"1m\"",
            )),
        },
    };
    let header_timeout = timeout("webhook.header_timeout", file.header_timeout.as_deref(), 10)?;
    let body_timeout = timeout("webhook.body_timeout", file.body_timeout.as_deref(), 30)?;
    let tls = match (file.tls_cert.as_deref(), file.tls_key.as_deref()) {
        (None | Some(""), None | Some("")) => None,
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            Some(crate::tls::TlsFiles {
                cert: resolve(cert),
                key: resolve(key),
                client_ca: None,
                section: "webhook",
            })
        }
        _ => return Err(invalid(
            "webhook.tls_cert",
            "",
            "webhook.tls_cert and webhook.tls_key go together",
            "set both (direct TLS) or neither (plain HTTP behind a TLS reverse proxy or tunnel)",
        )),
    };
    Ok(Some(WebhookConfig {
        listen,
        path,
        app_secret_file,
        previous_app_secret_file,
        verify_token_file,
        generate_dev_secrets: file.generate_dev_secrets.unwrap_or(false),
        max_body_bytes,
        max_connections,
        header_timeout,
        body_timeout,
        tls,
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: cannot read {path}: {source}. Fix: create the file (mode 0600) with the secret on one line")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {path} is readable or writable by group or others (mode {mode:04o}). Fix: chmod 600 {path}")]
    Permissions {
        key: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{key}: {path} is empty or not a secret (one line of at most 4096 printable characters). Fix: write the secret into it")]
    Format { key: &'static str, path: PathBuf },
    #[error("{key}: cannot write the development secret {path}: {source}")]
    Write {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Rng,
}

/// A secret's bytes: wiped on drop, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// The secrets the receiver checks requests with.
#[derive(Debug)]
pub struct Secrets {
    /// The current app secret first, then the previous one during a rotation.
    pub app_secrets: Vec<Secret>,
    pub verify_token: Secret,
}

/// Reads the secrets, creating the development ones first when the config
/// asks for it and they do not exist (announced loudly, like the dev key).
pub fn load_secrets(cfg: &WebhookConfig) -> Result<Secrets, SecretError> {
    if cfg.generate_dev_secrets {
        for (key, path) in [
            ("webhook.app_secret_file", &cfg.app_secret_file),
            ("webhook.verify_token_file", &cfg.verify_token_file),
        ] {
            if !path.exists() {
                write_dev_secret(key, path)?;
                tracing::warn!(
                    secret_file = %path.display(),
                    "DEVELOPMENT WEBHOOK SECRET GENERATED ({key}): webhook.generate_dev_secrets is on. \
                     Never use this configuration with real patient data."
                );
            }
        }
    }
    let mut app_secrets = vec![read_secret(
        "webhook.app_secret_file",
        &cfg.app_secret_file,
    )?];
    if let Some(prev) = &cfg.previous_app_secret_file {
        app_secrets.push(read_secret("webhook.previous_app_secret_file", prev)?);
    }
    Ok(Secrets {
        app_secrets,
        verify_token: read_secret("webhook.verify_token_file", &cfg.verify_token_file)?,
    })
}

fn write_dev_secret(key: &'static str, path: &Path) -> Result<(), SecretError> {
    let write_err = |source| SecretError::Write {
        key,
        path: path.to_owned(),
        source,
    };
    let mut raw = Zeroizing::new([0u8; 16]);
    SystemRandom::new()
        .fill(raw.as_mut())
        .map_err(|_| SecretError::Rng)?;
    // Meta's app secrets are 32 hex digits: the dev one looks the same.
    let text = Zeroizing::new(hex::encode(raw.as_ref()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.write_all(b"\n").map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

/// Reads a secret file: one line, surrounding white space ignored; refuses
/// files that group or others may read or write.
pub fn read_secret(key: &'static str, path: &Path) -> Result<Secret, SecretError> {
    let read_err = |source| SecretError::Read {
        key,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            key,
            path: path.to_owned(),
            mode,
        });
    }
    let format = || SecretError::Format {
        key,
        path: path.to_owned(),
    };
    if !meta.is_file() || meta.size() > MAX_SECRET_FILE_BYTES {
        return Err(format());
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(64));
    file.take(MAX_SECRET_FILE_BYTES)
        .read_to_end(&mut raw)
        .map_err(read_err)?;
    let text = raw.trim_ascii();
    if text.is_empty() || text.iter().any(|b| !b.is_ascii_graphic() && *b != b' ') {
        return Err(format());
    }
    Ok(Secret::from_bytes(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_secrets_are_created_once_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WebhookConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            path: "/webhook".to_owned(),
            app_secret_file: dir.path().join("sub/app-secret"),
            previous_app_secret_file: None,
            verify_token_file: dir.path().join("sub/verify-token"),
            generate_dev_secrets: true,
            max_body_bytes: DEFAULT_MAX_BODY,
            max_connections: 4,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            tls: None,
        };
        let first = load_secrets(&cfg).unwrap();
        let second = load_secrets(&cfg).unwrap();
        assert_eq!(
            first.app_secrets[0].expose(),
            second.app_secrets[0].expose()
        );
        assert_eq!(first.app_secrets[0].expose().len(), 32);
        let mode = std::fs::metadata(&cfg.app_secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{first:?}")
            .contains(std::str::from_utf8(first.verify_token.expose()).unwrap()));
    }

    #[test]
    fn a_secret_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret("webhook.app_secret_file", &path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret("k", &path).unwrap().expose(), b"abc");
    }
}
