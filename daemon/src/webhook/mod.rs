//! The WhatsApp webhook receiver: Meta's calls come in over HTTP(S), are
//! authenticated by their HMAC signature over the raw body, parsed, and
//! applied through the core's one apply path; only a durable commit is
//! answered 200. See docs/webhook.md.

pub mod apply;
pub mod config;
pub mod group;
pub mod media;
pub mod payload;
pub mod prune;
pub mod server;

use crate::clock::SharedClock;
use crate::vault::Vault;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Secret(#[from] config::SecretError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Rng(#[from] server::RngError),
}

/// What the receiver needs that can fail, checked before the service
/// opens anything: the secrets and the TLS material.
pub struct Prepared {
    secrets: config::Secrets,
    tls: Option<Arc<rustls::ServerConfig>>,
}

pub fn prepare(cfg: &config::WebhookConfig) -> Result<Prepared, WebhookError> {
    let tls = cfg
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
    Ok(Prepared {
        secrets: config::load_secrets(cfg)?,
        tls,
    })
}

/// The receiver's TLS acceptor, replaced on SIGHUP with one built from the
/// same files (renewed certificates are picked up without a restart;
/// connections already open keep the old one).
#[derive(Clone)]
pub struct TlsReload {
    files: crate::tls::TlsFiles,
    current: Arc<std::sync::Mutex<tokio_rustls::TlsAcceptor>>,
}

impl TlsReload {
    /// Re-reads the certificate and key; on an error the old ones stay.
    pub fn reload(&self) -> Result<(), crate::tls::TlsError> {
        let config = crate::tls::server_config(&self.files)?;
        *crate::sync::lock(&self.current) = tokio_rustls::TlsAcceptor::from(config);
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        crate::sync::lock(&self.current).clone()
    }
}

/// What `config check` says about the receiver, or why it cannot start:
/// the secret files and TLS material are read (never created: a missing
/// development secret is reported as to be generated).
pub fn check(cfg: &config::WebhookConfig) -> Result<String, WebhookError> {
    if let Some(files) = &cfg.tls {
        crate::tls::server_config(files)?;
    }
    let files = [
        ("webhook.app_secret_file", Some(&cfg.app_secret_file)),
        (
            "webhook.previous_app_secret_file",
            cfg.previous_app_secret_file.as_ref(),
        ),
        ("webhook.verify_token_file", Some(&cfg.verify_token_file)),
    ];
    let mut generated = false;
    for (key, path) in files {
        let Some(path) = path else { continue };
        if cfg.generate_dev_secrets && !path.exists() && key != "webhook.previous_app_secret_file" {
            generated = true;
            continue;
        }
        config::read_secret(key, path)?;
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    Ok(format!(
        "webhook on {scheme}://{}{}{}",
        cfg.listen,
        cfg.path,
        if generated {
            " (development secrets will be generated)"
        } else {
            ""
        }
    ))
}

/// Starts serving on `listener` until `stop`; with TLS, also returns the
/// handle that reloads the certificate.
pub fn spawn(
    cfg: &config::WebhookConfig,
    prepared: Prepared,
    listener: tokio::net::TcpListener,
    vault: Vault,
    clock: SharedClock,
    stop: tokio::sync::watch::Receiver<bool>,
    retention: jiff::SignedDuration,
) -> Result<(tokio::task::JoinHandle<()>, Option<TlsReload>), WebhookError> {
    let pruner = prune::hourly(vault.clone(), clock.clone(), retention, stop.clone());
    let receiver = Arc::new(server::Receiver::new(cfg, &prepared.secrets, vault, clock)?);
    let limits = server::Limits {
        max_connections: cfg.max_connections,
        header_timeout: cfg.header_timeout,
    };
    let tls = match (prepared.tls, &cfg.tls) {
        (Some(config), Some(files)) => Some(TlsReload {
            files: files.clone(),
            current: Arc::new(std::sync::Mutex::new(tokio_rustls::TlsAcceptor::from(
                config,
            ))),
        }),
        _ => None,
    };
    let server = server::serve(listener, tls.clone(), receiver, limits, stop);
    let handle = tokio::spawn(async move {
        tokio::join!(server, pruner);
    });
    Ok((handle, tls))
}
