//! The outbound proxy (HTTP CONNECT): many clinic networks let nothing out
//! but through one.
//!
//! Where the proxy comes from, first match wins:
//! 1. `whatsapp.proxy = "http://host:port"` applies to every Cloud API call
//!    (an explicit setting is meant, even for a loopback host); `"none"`
//!    means direct, whatever the environment says. Credentials are never in
//!    the config file: `whatsapp.proxy_auth_file` holds `user:password`.
//! 2. Otherwise `HTTPS_PROXY` / `https_proxy` (userinfo allowed there),
//!    honouring `NO_PROXY` / `no_proxy`, for `https://` destinations only.
//!    A loopback host is never proxied this way (the simulator, a local
//!    TLS-terminating relay).
//!
//! The tunnel is hyper-util's `Tunnel`; this module only decides, bounds the
//! CONNECT exchange by `whatsapp.connect_timeout` and turns its failures into
//! messages that name the setting to fix.

use super::config::WhatsappConfig;
use hyper::header::HeaderValue;
use hyper::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use zeroize::Zeroizing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `whatsapp.proxy` key as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// Key absent: the environment decides.
    #[default]
    FromEnv,
    /// `"none"`: always direct.
    Direct,
    /// `http://host:port`.
    Url(Uri),
}

/// Validates `whatsapp.proxy`; the error is (reason, fix).
pub fn parse_setting(v: &str) -> Result<ProxySetting, (&'static str, &'static str)> {
    const FIX: &str =
        "write it like \"http://proxy.clinic.lan:3128\" (or \"none\" to ignore HTTPS_PROXY)";
    if v.eq_ignore_ascii_case("none") {
        return Ok(ProxySetting::Direct);
    }
    let uri: Uri = v.parse().map_err(|_| ("not a URL", FIX))?;
    let Some(authority) = uri.authority() else {
        return Err(("no host", FIX));
    };
    if authority.as_str().contains('@') {
        return Err((
            "credentials must not be in the config file",
            "put user:password in a 0600 file and name it in whatsapp.proxy_auth_file",
        ));
    }
    if uri.scheme_str() != Some("http") {
        return Err((
            "only http:// proxies are supported (the tunnel inside is TLS end to end)",
            FIX,
        ));
    }
    if authority.port_u16().is_none() {
        return Err(("no port", FIX));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(("a proxy URL has no path", FIX));
    }
    Ok(ProxySetting::Url(uri))
}

/// The proxy a connection goes through.
#[derive(Clone)]
pub struct Proxy {
    pub uri: Uri,
    auth: Option<HeaderValue>,
    /// The setting named in errors: `whatsapp.proxy` or `HTTPS_PROXY`.
    pub source: &'static str,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("uri", &self.uri)
            .field("source", &self.source)
            .field("auth", &self.auth.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Proxy {
    /// `host:port (source)`, for messages and `whatsapp check`.
    pub fn describe(&self) -> String {
        let at = self.uri.authority().map_or("?", |a| a.as_str());
        format!("{at} ({})", self.source)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProxyError(pub String);

/// The proxy to reach `dst` through, if any. `env` reads an environment
/// variable (injected so tests never touch the process environment).
pub fn choose(
    config: &WhatsappConfig,
    dst: &Uri,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ProxyError> {
    match &config.proxy {
        ProxySetting::Direct => Ok(None),
        ProxySetting::Url(uri) => {
            let auth = match &config.proxy_auth_file {
                Some(path) => Some(read_auth_file(path)?),
                None => None,
            };
            Ok(Some(Proxy {
                uri: uri.clone(),
                auth,
                source: "whatsapp.proxy",
            }))
        }
        ProxySetting::FromEnv => {
            if dst.host().is_none_or(super::config::is_loopback) {
                return Ok(None);
            }
            let first = |a: &str, b: &str| env(a).or_else(|| env(b)).unwrap_or_default();
            let matcher = Matcher::builder()
                .https(first("HTTPS_PROXY", "https_proxy"))
                .no(first("NO_PROXY", "no_proxy"))
                .build();
            let Some(hit) = matcher.intercept(dst) else {
                return Ok(None);
            };
            if hit.uri().scheme_str() != Some("http") {
                return Err(ProxyError(
                    "HTTPS_PROXY: only http:// proxies are supported; write it like http://proxy.clinic.lan:3128".to_owned(),
                ));
            }
            Ok(Some(Proxy {
                uri: hit.uri().clone(),
                auth: hit.basic_auth().cloned(),
                source: "HTTPS_PROXY",
            }))
        }
    }
}

/// `user:password` on one line, as `Proxy-Authorization: Basic …`. The
/// file is checked like every secret file (0600, one line).
fn read_auth_file(path: &Path) -> Result<HeaderValue, ProxyError> {
    use base64::Engine;
    let secret = crate::webhook::config::read_secret("whatsapp.proxy_auth_file", path)
        .map_err(|e| ProxyError(e.to_string()))?;
    if !secret.expose().contains(&b':') {
        return Err(ProxyError(format!(
            "whatsapp.proxy_auth_file {}: must hold one line user:password",
            path.display()
        )));
    }
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(secret.expose()));
    let mut value = HeaderValue::try_from(format!("Basic {}", encoded.as_str())).map_err(|_| {
        ProxyError(format!(
            "whatsapp.proxy_auth_file {}: not usable in a header",
            path.display()
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The TCP leg of every Cloud API connection: direct, or a CONNECT tunnel
/// through the proxy (the TLS layer wraps either).
#[derive(Clone)]
pub struct Connector {
    direct: HttpConnector,
    tunnel: Option<(Tunnel<HttpConnector>, Arc<Proxy>)>,
    timeout: Duration,
    /// Tunnel failures so far (the log gets the 1st, 2nd, 4th, 8th, …).
    failures: Arc<AtomicU64>,
}

impl Connector {
    pub fn new(http: HttpConnector, proxy: Option<Proxy>, timeout: Duration) -> Self {
        let tunnel = proxy.map(|p| {
            let mut t = Tunnel::new(p.uri.clone(), http.clone());
            if let Some(auth) = &p.auth {
                t = t.with_auth(auth.clone());
            }
            (t, Arc::new(p))
        });
        Self {
            direct: http,
            tunnel,
            timeout,
            failures: Arc::new(AtomicU64::new(0)),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.tunnel {
            None => self.direct.poll_ready(cx).map_err(Into::into),
            Some((t, _)) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let Some((tunnel, proxy)) = &mut self.tunnel else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let target = format!(
            "{}:{}",
            dst.host().unwrap_or_default(),
            dst.port_u16().unwrap_or(443)
        );
        let connecting = tunnel.call(dst);
        let proxy = proxy.clone();
        let timeout = self.timeout;
        let failures = self.failures.clone();
        Box::pin(async move {
            let failed = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => explain(&proxy, &target, &e),
                Err(_) => ProxyError(format!(
                    "{}: no tunnel to {target} within whatsapp.connect_timeout",
                    proxy.describe()
                )),
            };
            // The outbox logs only an error's class ("connect"); the cause
            // and the setting to fix are logged here, without flooding.
            let n = failures.fetch_add(1, Ordering::Relaxed);
            if n == 0 || (n + 1).is_power_of_two() {
                tracing::warn!(failures = n + 1, error = %failed.0, "WhatsApp: no tunnel through the proxy");
            }
            Err(failed.into())
        })
    }
}

/// A message that says what went wrong and which setting fixes it.
/// hyper-util does not export its error type, so the kind is told by its
/// (stable) wording; an unknown kind still gets the generic message.
fn explain(proxy: &Proxy, target: &str, e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let at = proxy.describe();
    let env = proxy.source != "whatsapp.proxy";
    let said = e.to_string();
    let text = match said.trim_start_matches("tunnel error: ") {
        "proxy authorization required" if proxy.auth.is_some() => format!(
            "{at}: the proxy refused the credentials (HTTP 407); check {}",
            if env { "the user:password in HTTPS_PROXY" } else { "the user:password in whatsapp.proxy_auth_file" }
        ),
        "proxy authorization required" => format!(
            "{at}: the proxy wants credentials (HTTP 407); {}",
            if env { "write HTTPS_PROXY as http://user:password@host:port" } else { "put user:password in a 0600 file named by whatsapp.proxy_auth_file" }
        ),
        "failed to create underlying connection" => {
            format!("{at}: cannot connect to the proxy: {}", innermost(e))
        }
        "unsuccessful" => format!(
            "{at}: the proxy refused the tunnel to {target}; ask for it to be allowed (CONNECT to port 443)"
        ),
        _ => format!("{at}: the tunnel to {target} failed: {}", innermost(e)),
    };
    ProxyError(text)
}

/// The deepest cause's message (the useful one: "Connection refused").
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(proxy: ProxySetting) -> WhatsappConfig {
        WhatsappConfig {
            proxy,
            ..WhatsappConfig::default()
        }
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    const GRAPH: &str = "https://graph.facebook.com";

    #[test]
    fn environment_proxy_for_https_honouring_no_proxy_never_loopback() {
        let graph: Uri = GRAPH.parse().unwrap();
        let env = env_of(&[("https_proxy", "http://u:p@proxy.lan:3128")]);
        let p = choose(&cfg(ProxySetting::FromEnv), &graph, &env)
            .unwrap()
            .unwrap();
        assert_eq!(p.describe(), "proxy.lan:3128 (HTTPS_PROXY)");
        assert!(p.auth.is_some() && !format!("{p:?}").contains("dTpw"));

        let env = env_of(&[
            ("HTTPS_PROXY", "proxy.lan:3128"),
            ("NO_PROXY", "localhost, .facebook.com"),
        ]);
        assert!(choose(&cfg(ProxySetting::FromEnv), &graph, &env)
            .unwrap()
            .is_none());

        let env = env_of(&[("HTTPS_PROXY", "http://proxy.lan:3128")]);
        for local in [
            "http://127.0.0.1:8089",
            "https://localhost:1",
            "https://[::1]:2",
        ] {
            let dst: Uri = local.parse().unwrap();
            assert!(choose(&cfg(ProxySetting::FromEnv), &dst, &env)
                .unwrap()
                .is_none());
        }
        let env = env_of(&[("HTTPS_PROXY", "https://proxy.lan:3128")]);
        let e = choose(&cfg(ProxySetting::FromEnv), &graph, &env).unwrap_err();
        assert!(e.0.contains("HTTPS_PROXY"), "{e}");
    }

    #[test]
    fn the_config_key_wins_and_none_means_direct() {
        let graph: Uri = GRAPH.parse().unwrap();
        let env = env_of(&[("HTTPS_PROXY", "http://other:1")]);
        let set = parse_setting("http://proxy.lan:3128").unwrap();
        let p = choose(&cfg(set), &graph, &env).unwrap().unwrap();
        assert_eq!(p.describe(), "proxy.lan:3128 (whatsapp.proxy)");
        let direct = parse_setting("none").unwrap();
        assert!(choose(&cfg(direct), &graph, &env).unwrap().is_none());
    }

    #[test]
    fn proxy_urls_are_checked() {
        let (reason, fix) = parse_setting("http://u:secret@proxy.lan:3128").unwrap_err();
        assert!(reason.contains("credentials") && fix.contains("proxy_auth_file"));
        assert!(parse_setting("https://proxy.lan:3128").is_err());
        assert!(parse_setting("socks5://proxy.lan:1080").is_err());
        assert!(parse_setting("http://proxy.lan").is_err());
        assert!(parse_setting("http://proxy.lan:3128/x").is_err());
        assert!(parse_setting("http://proxy.lan:3128/").is_ok());
    }

    #[test]
    fn the_auth_file_holds_one_user_password_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-auth");
        std::fs::write(&path, "clinic:s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o644);
        let mut c = cfg(parse_setting("http://proxy.lan:3128").unwrap());
        c.proxy_auth_file = Some(path.clone());
        let graph: Uri = GRAPH.parse().unwrap();
        let e = choose(&c, &graph, &|_| None).unwrap_err();
        assert!(e.0.contains("chmod 600"), "{e}");
        mode(0o600);
        let p = choose(&c, &graph, &|_| None).unwrap().unwrap();
        // base64("clinic:s3cret")
        assert_eq!(p.auth.unwrap(), "Basic Y2xpbmljOnMzY3JldA==");
        std::fs::write(&path, "no-colon\n").unwrap();
        let e = choose(&c, &graph, &|_| None).unwrap_err();
        assert!(e.0.contains("whatsapp.proxy_auth_file"), "{e}");
        assert!(!e.0.contains("no-colon"));
    }
}
