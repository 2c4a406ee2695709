//! The `[console]` section: where the staff console listens, its TLS
//! material (or none: a self-signed certificate is made on first start),
//! and the session timeouts. Without `listen` the console is off.

use crate::config::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    pub listen: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Plain HTTP; allowed only on a loopback address.
    pub plain_http: Option<bool>,
    pub idle_timeout: Option<String>,
    pub absolute_timeout: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// Configured certificate and key; None: the self-signed pair in the
    /// data directory (made on first start).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub plain_http: bool,
    /// A session unused this long is over (HIPAA automatic logoff).
    pub idle_timeout: Duration,
    /// A session is over this long after its login, used or not.
    pub absolute_timeout: Duration,
}

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

pub fn validate(
    file: &ConsoleFile,
    resolve: &dyn Fn(&str) -> PathBuf,
    invalid: &Invalid<'_>,
) -> Result<Option<ConsoleConfig>, ConfigError> {
    let Some(raw) = file.listen.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let listen: SocketAddr = raw.parse().map_err(|_| {
        invalid(
            "console.listen",
            raw,
            "not a socket address",
            "write IP:PORT, e.g. 192.168.1.10:8443",
        )
    })?;
    let plain_http = file.plain_http.unwrap_or(false);
    if plain_http && !listen.ip().is_loopback() {
        return Err(invalid(
            "console.plain_http",
            "true",
            "plain HTTP would send passwords and patient data over the LAN",
            "remove console.plain_http (TLS), or listen on 127.0.0.1",
        ));
    }
    let tls = match (file.cert.as_deref(), file.key.as_deref()) {
        (None | Some(""), None | Some("")) => None,
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => Some((resolve(c), resolve(k))),
        _ => {
            return Err(invalid(
                "console.cert",
                "",
                "console.cert and console.key go together",
                "set both, or neither (a self-signed certificate is made on first start)",
            ))
        }
    };
    let duration = |key: &'static str, v: Option<&str>, default: u64, max: u64| match v {
        None => Ok(Duration::from_secs(default)),
        Some(s) => match crate::config::parse_duration(s) {
            Some(d) if d >= Duration::from_secs(60) && d <= Duration::from_secs(max) => Ok(d),
            _ => Err(invalid(
                key,
                s,
                "out of range",
                "write a duration from 1m to the maximum (idle 1h, absolute 24h), e.g. \"15m\"",
            )),
        },
    };
    let idle_timeout = duration(
        "console.idle_timeout",
        file.idle_timeout.as_deref(),
        900,
        3600,
    )?;
    let absolute_timeout = duration(
        "console.absolute_timeout",
        file.absolute_timeout.as_deref(),
        12 * 3600,
        24 * 3600,
    )?;
    Ok(Some(ConsoleConfig {
        listen,
        tls,
        plain_http,
        idle_timeout,
        absolute_timeout,
    }))
}
