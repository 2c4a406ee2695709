//! The `[whatsapp]` section: where the Cloud API is, which number sends, how
//! the token is found and how fast the outbox may go.
//!
//! Without a token (no `token_file`, no systemd credential `whatsapp-token`)
//! or with `dry_run = true` the outbox runs in dry-run: items are recorded
//! and marked so, and nothing connects out. The token itself is never in
//! the config file.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The systemd credential that holds the access token.
pub const TOKEN_CREDENTIAL: &str = "whatsapp-token";
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
pub const DEFAULT_VERSION: &str = "v21.0";
pub const DEFAULT_RATE: u32 = 80;
/// Meta's ceiling for a number's throughput (with an upgrade).
pub const MAX_RATE: u32 = 1000;
/// Meta posts a message's `sent` status within seconds; a daemon that was
/// down gets it when Meta retries the webhook, usually within minutes.
pub const DEFAULT_IN_DOUBT_HOLD: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappFile {
    pub api_base_url: Option<String>,
    pub api_version: Option<String>,
    pub phone_number_id: Option<String>,
    pub business_account_id: Option<String>,
    pub token_file: Option<String>,
    pub dry_run: Option<bool>,
    pub rate_per_second: Option<u32>,
    pub extra_ca_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    /// Messages in flight at once (to different recipients).
    pub concurrency: Option<u32>,
    /// How long a message whose send was cut off (a crash, a lost answer)
    /// waits for Meta's status webhook before it is sent again.
    pub in_doubt_hold: Option<String>,
    /// `http://host:port` or `"none"`; absent: `HTTPS_PROXY` (see `proxy`).
    pub proxy: Option<String>,
    /// A file holding `user:password` for the proxy.
    pub proxy_auth_file: Option<String>,
    /// A Business Solution Provider's header for the token (instead of
    /// `Authorization: Bearer`).
    pub auth_header: Option<String>,
    /// The webhook's URL as Meta calls it (`whatsapp check` tries it).
    pub webhook_public_url: Option<String>,
    // Media (see `whatsapp::media`).
    pub max_document_bytes: Option<u64>,
    pub media_ttl: Option<String>,
    pub max_inbound_media_bytes: Option<u64>,
    pub inbound_media_retention: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WhatsappConfig {
    /// Scheme and authority, no trailing slash.
    pub api_base_url: String,
    pub api_version: String,
    pub phone_number_id: String,
    pub business_account_id: Option<String>,
    pub token_file: Option<PathBuf>,
    pub force_dry_run: bool,
    pub rate_per_second: u32,
    pub extra_ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub concurrency: usize,
    /// See [`WhatsappFile::in_doubt_hold`] and `whatsapp::in_doubt`.
    pub in_doubt_hold: Duration,
    pub proxy: super::proxy::ProxySetting,
    pub proxy_auth_file: Option<PathBuf>,
    /// None: `Authorization: Bearer <token>`.
    pub auth_header: Option<hyper::header::HeaderName>,
    pub webhook_public_url: Option<String>,
    pub media: super::media_config::MediaConfig,
}

impl Default for WhatsappConfig {
    fn default() -> Self {
        Self {
            api_base_url: DEFAULT_BASE_URL.to_owned(),
            api_version: DEFAULT_VERSION.to_owned(),
            phone_number_id: String::new(),
            business_account_id: None,
            token_file: None,
            force_dry_run: false,
            rate_per_second: DEFAULT_RATE,
            extra_ca_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            concurrency: 16,
            in_doubt_hold: DEFAULT_IN_DOUBT_HOLD,
            proxy: super::proxy::ProxySetting::FromEnv,
            proxy_auth_file: None,
            auth_header: None,
            webhook_public_url: None,
            media: super::media_config::MediaConfig::default(),
        }
    }
}

impl WhatsappConfig {
    /// Where the token is read from: the systemd credential wins over the
    /// file (as for the master key). None: dry-run.
    pub fn token_path(&self) -> Option<PathBuf> {
        if self.force_dry_run || self.phone_number_id.is_empty() {
            return None;
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let candidate = Path::new(&dir).join(TOKEN_CREDENTIAL);
            if candidate.exists() {
                return Some(candidate);
            }
        }
        self.token_file.clone()
    }
}

/// A bad value, for `config.rs` to turn into its `ConfigError::Invalid`.
#[derive(Debug)]
pub struct Invalid {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
    pub fix: &'static str,
}

pub(crate) fn invalid(key: &'static str, value: &str, reason: &str, fix: &'static str) -> Invalid {
    Invalid {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
        fix,
    }
}

/// Validates the section; relative paths resolve against `base`.
pub fn validate(
    file: &WhatsappFile,
    resolve: impl Fn(&str) -> PathBuf,
) -> Result<WhatsappConfig, Invalid> {
    let d = WhatsappConfig::default();
    let api_base_url = match file.api_base_url.as_deref() {
        None => d.api_base_url,
        Some(v) => base_url(v)?,
    };
    let api_version = match file.api_version.as_deref() {
        None => d.api_version,
        Some(v)
            if v.len() >= 2
                && v.starts_with('v')
                && v[1..].chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            v.to_owned()
        }
        Some(v) => {
            return Err(invalid(
                "whatsapp.api_version",
                v,
                "not a Graph API version",
                "write it like \"v21.0\"",
            ))
        }
    };
    let id = |key: &'static str, v: Option<&str>| match v {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_digit()) => {
            Ok(Some(v.to_owned()))
        }
        Some(v) => Err(invalid(
            key,
            v,
            "not a numeric Meta id",
            "copy the id from the WhatsApp Manager (API Setup page)",
        )),
    };
    let phone_number_id =
        id("whatsapp.phone_number_id", file.phone_number_id.as_deref())?.unwrap_or_default();
    let business_account_id = id(
        "whatsapp.business_account_id",
        file.business_account_id.as_deref(),
    )?;
    let rate_per_second = match file.rate_per_second {
        None => d.rate_per_second,
        Some(r) if (1..=MAX_RATE).contains(&r) => r,
        Some(r) => {
            return Err(invalid(
                "whatsapp.rate_per_second",
                &r.to_string(),
                "out of range",
                "use 1 to 1000 (Meta's default throughput is 80 messages per second)",
            ))
        }
    };
    let concurrency = match file.concurrency {
        None => d.concurrency,
        Some(c) if (1..=256).contains(&c) => c as usize,
        Some(c) => {
            return Err(invalid(
                "whatsapp.concurrency",
                &c.to_string(),
                "out of range",
                "use 1 to 256",
            ))
        }
    };
    let timeout = |key: &'static str, v: Option<&str>, default: Duration| match v {
        None => Ok(default),
        Some(v) => match crate::config::parse_duration(v) {
            Some(t) if t >= Duration::from_millis(100) && t <= Duration::from_secs(300) => Ok(t),
            _ => Err(invalid(
                key,
                v,
                "not a duration from 100ms to 300s",
                "write it like \"5s\"",
            )),
        },
    };
    Ok(WhatsappConfig {
        api_base_url,
        api_version,
        phone_number_id,
        business_account_id,
        token_file: file.token_file.as_deref().map(&resolve),
        force_dry_run: file.dry_run.unwrap_or(false),
        rate_per_second,
        extra_ca_file: file.extra_ca_file.as_deref().map(&resolve),
        connect_timeout: timeout(
            "whatsapp.connect_timeout",
            file.connect_timeout.as_deref(),
            d.connect_timeout,
        )?,
        request_timeout: timeout(
            "whatsapp.request_timeout",
            file.request_timeout.as_deref(),
            d.request_timeout,
        )?,
        concurrency,
        in_doubt_hold: match file.in_doubt_hold.as_deref() {
            None => d.in_doubt_hold,
            Some(v) => match crate::config::parse_duration(v) {
                Some(t) if t <= Duration::from_secs(24 * 3600) => t,
                _ => {
                    return Err(invalid(
                        "whatsapp.in_doubt_hold",
                        v,
                        "not a duration up to 24h",
                        "write it like \"15m\" (\"0s\" sends a cut-off message again at once, which may send it twice)",
                    ))
                }
            },
        },
        proxy: match file.proxy.as_deref() {
            None => super::proxy::ProxySetting::FromEnv,
            Some(v) => super::proxy::parse_setting(v)
                .map_err(|(reason, fix)| invalid("whatsapp.proxy", v, reason, fix))?,
        },
        proxy_auth_file: file.proxy_auth_file.as_deref().map(&resolve),
        auth_header: file.auth_header.as_deref().map(auth_header).transpose()?,
        webhook_public_url: file
            .webhook_public_url
            .as_deref()
            .map(webhook_public_url)
            .transpose()?,
        media: super::media_config::validate_config(file)?,
    })
}

/// A header name a BSP may ask the token in. Framing and hop-by-hop headers
/// would break the request, so they are refused.
fn auth_header(v: &str) -> Result<hyper::header::HeaderName, Invalid> {
    const FIX: &str = "write the header name your provider documents, e.g. \"D360-API-KEY\" (leave the key out for Authorization: Bearer)";
    let name = hyper::header::HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| invalid("whatsapp.auth_header", v, "not an HTTP header name", FIX))?;
    const RESERVED: [&str; 9] = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "proxy-authorization",
    ];
    if RESERVED.contains(&name.as_str()) {
        return Err(invalid(
            "whatsapp.auth_header",
            v,
            "this header is part of HTTP itself",
            FIX,
        ));
    }
    Ok(name)
}

/// Meta calls only https URLs; http is accepted for a loopback host (tests,
/// a local try-out).
fn webhook_public_url(v: &str) -> Result<String, Invalid> {
    let bad = |reason: &str| {
        invalid(
            "whatsapp.webhook_public_url",
            v,
            reason,
            "write the callback URL entered in Meta's app settings, e.g. https://relay.clinic.example/webhook",
        )
    };
    let uri: hyper::Uri = v.parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() {
        return Err(bad("must not have a query"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(v.to_owned()),
        Some("http") if is_loopback(host) => Ok(v.to_owned()),
        _ => Err(bad("Meta calls https URLs only")),
    }
}

/// `https://host[:port]`, or `http://` to a loopback host only (the
/// simulator, a local TLS-terminating proxy): a bearer token must never
/// cross a network in the clear.
fn base_url(v: &str) -> Result<String, Invalid> {
    let bad = |reason: &str| {
        invalid(
            "whatsapp.api_base_url",
            v,
            reason,
            "use https://graph.facebook.com (or http://127.0.0.1:PORT for the simulator)",
        )
    };
    let uri: hyper::Uri = v.parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad("must not have a path; the API version is its own key"));
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => {
            return Err(bad(
                "plain http is allowed only to a loopback host (the token would cross the network in the clear)",
            ))
        }
        _ => return Err(bad("the scheme must be https")),
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// The host of a (validated) base URL, for display: never its scheme,
/// port or anything after them.
pub fn host_of(base_url: &str) -> String {
    base_url
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<WhatsappConfig, Invalid> {
        let file: WhatsappFile = toml::from_str(toml_text).unwrap();
        validate(&file, |p| PathBuf::from("/etc/cr").join(p))
    }

    #[test]
    fn defaults_are_dry_run_at_80_per_second() {
        let c = check("").unwrap();
        assert_eq!(c.rate_per_second, 80);
        assert_eq!(c.api_base_url, "https://graph.facebook.com");
        assert!(c.token_path().is_none());
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check("api_base_url = \"http://127.0.0.1:8089\"").is_ok());
        assert!(check("api_base_url = \"http://[::1]:8089/\"").is_ok());
        assert!(check("api_base_url = \"http://localhost:1\"").is_ok());
        let e = check("api_base_url = \"http://graph.facebook.com\"").unwrap_err();
        assert_eq!(e.key, "whatsapp.api_base_url");
        assert!(e.reason.contains("loopback"));
        assert!(check("api_base_url = \"ftp://x\"").is_err());
        assert!(check("api_base_url = \"https://x/v1\"").is_err());
    }

    #[test]
    fn rate_and_ids_are_checked() {
        assert!(check("rate_per_second = 1000").is_ok());
        assert_eq!(
            check("rate_per_second = 1001").unwrap_err().key,
            "whatsapp.rate_per_second"
        );
        assert!(check("phone_number_id = \"12ab\"").is_err());
        let c = check("phone_number_id = \"106540352242922\"\ntoken_file = \"tok\"").unwrap();
        assert_eq!(c.token_file.as_deref(), Some(Path::new("/etc/cr/tok")));
        let c = check("phone_number_id = \"1\"\ntoken_file = \"tok\"\ndry_run = true").unwrap();
        assert!(c.token_path().is_none());
    }

    #[test]
    fn bsp_header_proxy_and_webhook_url_are_checked() {
        let c = check("auth_header = \"D360-API-KEY\"").unwrap();
        assert_eq!(c.auth_header.unwrap().as_str(), "d360-api-key");
        for bad in ["X Key", "", "Content-Length", "Host"] {
            let e = check(&format!("auth_header = \"{bad}\"")).unwrap_err();
            assert_eq!(e.key, "whatsapp.auth_header");
            assert!(e.fix.contains("D360-API-KEY"));
        }
        let e = check("proxy = \"http://u:p@proxy:3128\"").unwrap_err();
        assert_eq!(e.key, "whatsapp.proxy");
        assert!(!e.reason.contains("u:p") && e.fix.contains("proxy_auth_file"));
        assert!(check("proxy = \"none\"").is_ok());
        assert!(check("webhook_public_url = \"https://relay.example/webhook\"").is_ok());
        assert!(check("webhook_public_url = \"http://127.0.0.1:8443/webhook\"").is_ok());
        let e = check("webhook_public_url = \"http://relay.example/webhook\"").unwrap_err();
        assert_eq!(e.key, "whatsapp.webhook_public_url");
    }
}
