//! How the client's connections are made: TLS (rustls with the OS roots
//! plus an optional extra CA) over a direct TCP connection or a CONNECT
//! tunnel (`super::proxy`), and how their failures are worded.

use super::client::{ApiError, ClientError};
use super::config::WhatsappConfig;
use super::proxy::{Connector, Proxy, ProxyError};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) type Http = Client<HttpsConnector<Connector>, Full<Bytes>>;

/// A connection failure, worded for whoever fixes it: a proxy failure names
/// the proxy setting; otherwise the deepest cause ("Connection refused").
pub(crate) fn connect_error(e: &hyper_util::client::legacy::Error) -> ApiError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<ProxyError>() {
            return ApiError::Connect(p.0.clone());
        }
        cur = err.source();
    }
    let why = super::proxy::innermost(e);
    if e.is_connect() {
        ApiError::Connect(why)
    } else {
        ApiError::Connect(format!("request: {why}"))
    }
}

/// A pooled client for `dst` (the API, or the webhook's public URL for
/// `whatsapp check`), through the proxy the config and environment choose.
pub(crate) fn http_for(
    config: &WhatsappConfig,
    dst: &hyper::Uri,
) -> Result<(Http, Option<Proxy>), ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = tls_config(config.extra_ca_file.as_deref())?;
    let proxy = super::proxy::choose(config, dst, &|k| std::env::var(k).ok())
        .map_err(|e| ClientError::Proxy(e.0))?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        // Config validation lets http:// through to loopback only.
        .https_or_http()
        .enable_http1()
        .wrap_connector(Connector::new(http, proxy.clone(), config.connect_timeout));
    let http = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector);
    Ok((http, proxy))
}

fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientError::Ca(format!("cannot read {}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::Ca(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ClientError::Ca(format!(
                "{} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ClientError::Ca(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
