//! Configuration, in two layers: [`FileConfig`] mirrors the TOML file
//! (unknown keys are errors), and [`Config`] is the validated form the daemon
//! runs on. `clinic-relay config check` runs exactly the same validation.
//!
//! Every error names the key path, the bad value and the fix. Relative paths
//! in the file are resolved against the directory of the config file, so a
//! config works the same from any working directory.

use jiff::tz::TimeZone;
use jiff::SignedDuration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/clinic-relay/config.toml";
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}. Give the right file with --config PATH (or CLINIC_RELAY_CONFIG)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is larger than 1 MiB; it is not a clinic-relay config")]
    TooLarge { path: PathBuf },
    #[error("{path}: unknown key `{key}`. Remove it or correct the spelling; every key is listed in docs/configuration.md")]
    UnknownKey { path: PathBuf, key: String },
    #[error("{path}: `{key}`: {reason}. Fix: {fix}")]
    Syntax {
        path: PathBuf,
        key: String,
        reason: String,
        fix: &'static str,
    },
    #[error("{path}: `{key}` = {value:?} is invalid: {reason}. Fix: {fix}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
        fix: &'static str,
    },
}

// ---- the file layer ---------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub service: ServiceFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub keys: KeysFile,
    #[serde(default)]
    pub pms: PmsFile,
    #[serde(default)]
    pub api: ApiFile,
    #[serde(default)]
    pub whatsapp: crate::whatsapp::config::WhatsappFile,
    #[serde(default)]
    pub webhook: crate::webhook::config::WebhookFile,
    #[serde(default)]
    pub reminders: crate::care::config::RemindersFile,
    #[serde(default)]
    pub conversations: crate::care::conversation::config::ConversationsFile,
    #[serde(default)]
    pub policy: crate::whatsapp::policy::PolicyFile,
    #[serde(default)]
    pub results: crate::care::results_config::ResultsFile,
    #[serde(default)]
    pub booking: crate::care::booking::config::BookingFile,
    #[serde(default)]
    pub console: crate::console::config::ConsoleFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub data_dir: Option<String>,
    pub time_zone: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub idempotency_retention: Option<String>,
    pub cache_mb: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    pub master_key_file: Option<String>,
    pub previous_master_key_file: Option<String>,
    pub generate_dev_key: Option<bool>,
    pub keyring_copy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmsFile {
    pub mllp_listen: Option<String>,
    pub allow: Option<Vec<String>>,
    pub max_connections: Option<u32>,
    pub idle_timeout: Option<String>,
    pub first_frame_timeout: Option<String>,
    pub max_message_bytes: Option<u64>,
    pub application: Option<String>,
    pub facility: Option<String>,
    pub assigning_authority: Option<String>,
    pub phone_country_code: Option<String>,
    pub phone_trunk_prefix: Option<String>,
    pub phone_region: Option<String>,
    pub status_map: Option<std::collections::BTreeMap<String, String>>,
    pub consent_field: Option<String>,
    pub deliverable_result_statuses: Option<Vec<String>>,
    pub max_pdf_bytes: Option<u64>,
    pub processing_ids: Option<Vec<String>>,
    pub default_duration: Option<String>,
    pub outbound_endpoint: Option<String>,
    pub outbound_timeout: Option<String>,
    pub outbound_confirm_status: Option<String>,
    pub outbound_new_patient: Option<String>,
    pub receiving_application: Option<String>,
    pub receiving_facility: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    pub socket: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_long_poll: Option<String>,
    pub tcp_listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub client_ca: Option<String>,
    pub max_connections: Option<u32>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
}

// ---- the runtime layer ------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    pub service: ServiceConfig,
    pub log: LogConfig,
    pub keys: KeysConfig,
    pub pms: PmsConfig,
    pub api: ApiConfig,
    pub whatsapp: crate::whatsapp::config::WhatsappConfig,
    /// The WhatsApp webhook receiver; None when `webhook.listen` is unset.
    pub webhook: Option<crate::webhook::config::WebhookConfig>,
    /// Appointment reminders (`[reminders]`).
    pub reminders: crate::care::config::RemindersConfig,
    /// The conversation bot and the staff inbox (`[conversations]`).
    pub conversations: crate::care::conversation::config::ConversationsConfig,
    /// The minimal-payload policy (`[policy]`).
    pub policy: crate::whatsapp::policy::Policy,
    /// Result documents behind an identity check (`[results]`).
    pub results: crate::care::results_config::ResultsConfig,
    /// Self-service booking from open slots (`[booking]`).
    pub booking: crate::care::booking::config::BookingConfig,
    /// The staff console (`[console]`); None when `console.listen` is unset.
    pub console: Option<crate::console::config::ConsoleConfig>,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    pub time_zone: TimeZone,
    pub time_zone_name: String,
    pub shutdown_timeout: Duration,
    /// How long an HL7 control id or API idempotency key is remembered.
    pub idempotency_retention: Duration,
    /// The storage engine's page cache, in bytes (`service.cache_mb`).
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald when started by systemd (JOURNAL_STREAM is set), text otherwise.
    Auto,
    Journald,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: tracing::Level,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub master_key_file: Option<PathBuf>,
    /// Set while moving to a new master key: the daemon opens the data with
    /// this key and rotates to `master_key_file` while serving.
    pub previous_master_key_file: Option<PathBuf>,
    pub generate_dev_key: bool,
    /// A copy of the keyring kept current on every change (beside backups).
    pub keyring_copy: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PmsConfig {
    pub mllp_listen: SocketAddr,
    pub allow: Vec<ipnet::IpNet>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// How long a new connection may take to send its first frame.
    pub first_frame_timeout: Duration,
    pub max_message_bytes: usize,
    pub application: String,
    pub facility: String,
    pub mapping: crate::pms::map::MappingConfig,
    pub outbound: crate::pms::outbound::OutboundConfig,
    /// None: no endpoint configured; messages wait in the queue.
    pub sender: Option<crate::pms::sender::SenderConfig>,
    /// MLLP over TLS when set.
    pub tls: Option<crate::tls::TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub max_body_bytes: usize,
    pub max_long_poll: Duration,
    /// The optional TCP door (mutual TLS, client certificates required).
    pub tcp: Option<(SocketAddr, crate::tls::TlsFiles)>,
    pub limits: crate::api::ApiLimits,
}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and
    /// anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let path = &normalize(path);
        let file: FileConfig = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
        validate(file, path)
    }
}

/// Turns a TOML/serde error into one that names the key path.
fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let key = e
        .span()
        .map(|span| key_path_at(text, span.start))
        .unwrap_or_default();
    let message = e.message().to_owned();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let section = key.rsplit_once('.').map(|(s, _)| s).unwrap_or("");
        let key = match (section.is_empty(), key.contains('.')) {
            (false, _) => format!("{section}.{field}"),
            (true, _) => field.to_owned(),
        };
        return ConfigError::UnknownKey {
            path: path.to_owned(),
            key,
        };
    }
    ConfigError::Syntax {
        path: path.to_owned(),
        key: if key.is_empty() {
            "(file)".to_owned()
        } else {
            key
        },
        reason: message,
        fix: "see config/clinic-relay.toml for the expected form of each key",
    }
}

/// The dotted key path at byte `offset`: the last `[table]` header before it,
/// plus the key on its line.
fn key_path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut consumed = 0usize;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        consumed += line.len();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if offset < consumed {
                return table;
            }
            continue;
        }
        if offset < consumed || consumed >= text.len() {
            let key = trimmed
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"');
            return match (table.is_empty(), key.is_empty()) {
                (_, true) => table,
                (true, false) => key.to_owned(),
                (false, false) => format!("{table}.{key}"),
            };
        }
    }
    table
}

/// A path from the file: relative ones against `base` (the config file's
/// directory, absolute), and `.`/`..` segments removed, so messages and
/// `/v1/status` show `/srv/cr/.dev-data`, never `config/../.dev-data`.
fn resolve(base: &Path, value: &str) -> PathBuf {
    normalize(&base.join(value))
}

/// Makes `path` absolute (against the working directory, once, at load) and
/// removes `.` and `..` segments lexically. Lexical is what the config means:
/// `../data` is the sibling of the config's directory even if that directory
/// is a symbolic link. If the working directory is unknown the path stays
/// relative (and still clean).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                // `/..` is `/`; a leading `..` of a relative path stays.
                let last = out.components().next_back();
                match last {
                    Some(Component::Normal(_)) => {
                        out.pop();
                    }
                    Some(Component::RootDir | Component::Prefix(_)) => {}
                    _ => out.push(".."),
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Parses a duration such as `10s`, `72h`, `1h 30m`, `30d` or ISO 8601 `PT10S`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(d) = s.trim().parse::<SignedDuration>() {
        return Duration::try_from(d).ok();
    }
    // Days (`30d`, `1 week`): a span, with days counted as 24 hours.
    let span: jiff::Span = s.trim().parse().ok()?;
    let secs = span
        .total((
            jiff::Unit::Second,
            jiff::SpanRelativeTo::days_are_24_hours(),
        ))
        .ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

fn validate(mut file: FileConfig, path: &Path) -> Result<Config, ConfigError> {
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    let invalid =
        |key: &'static str, value: &str, reason: &str, fix: &'static str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            value: value.to_owned(),
            reason: reason.to_owned(),
            fix,
        };

    let data_dir = match file.service.data_dir.as_deref() {
        None => PathBuf::from("/var/lib/clinic-relay"),
        Some("") => {
            return Err(invalid(
                "service.data_dir",
                "",
                "empty path",
                "give a directory, e.g. /var/lib/clinic-relay",
            ))
        }
        Some(v) => resolve(&base, v),
    };

    let (time_zone, time_zone_name) = match file.service.time_zone.as_deref() {
        None => {
            let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
            let name = tz.iana_name().unwrap_or("UTC").to_owned();
            (tz, name)
        }
        Some(v) => match TimeZone::get(v) {
            Ok(tz) => (tz, v.to_owned()),
            Err(_) => {
                return Err(invalid(
                    "service.time_zone",
                    v,
                    "not an IANA time zone name",
                    "use a name from the tz database such as Europe/Berlin or America/New_York",
                ))
            }
        },
    };

    let shutdown_timeout = match file.service.shutdown_timeout.as_deref() {
        None => Duration::from_secs(10),
        Some(v) => match parse_duration(v) {
            Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(300) => d,
            Some(_) => {
                return Err(invalid(
                    "service.shutdown_timeout",
                    v,
                    "out of range",
                    "use a duration from 1s to 300s, e.g. \"10s\"",
                ))
            }
            None => {
                return Err(invalid(
                    "service.shutdown_timeout",
                    v,
                    "not a duration",
                    "write it like \"10s\", \"2m\" or \"1h 30m\"",
                ))
            }
        },
    };

    let cache_bytes = match file.service.cache_mb {
        None => crate::vault::DEFAULT_CACHE_BYTES,
        Some(n @ 4..=4096) => u64::from(n) * 1024 * 1024,
        Some(n) => {
            return Err(invalid(
                "service.cache_mb",
                &n.to_string(),
                "out of range",
                "use 4 to 4096 (MiB)",
            ))
        }
    };

    let level = match file.log.level.as_deref().unwrap_or("info") {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        other => {
            return Err(invalid(
                "log.level",
                other,
                "unknown level",
                "use one of error, warn, info, debug, trace",
            ))
        }
    };
    let format = match file.log.format.as_deref().unwrap_or("auto") {
        "auto" => LogFormat::Auto,
        "journald" => LogFormat::Journald,
        "text" => LogFormat::Text,
        other => {
            return Err(invalid(
                "log.format",
                other,
                "unknown format",
                "use auto (journald under systemd, text otherwise), journald or text",
            ))
        }
    };

    let key_path = |key: &'static str, v: Option<&str>| -> Result<Option<PathBuf>, ConfigError> {
        match v {
            None => Ok(None),
            Some("") => Err(invalid(
                key,
                "",
                "empty path",
                "give the path of a 0600 key file, or remove the key to use the systemd credential",
            )),
            Some(v) => Ok(Some(resolve(&base, v))),
        }
    };
    let keys = KeysConfig {
        master_key_file: key_path("keys.master_key_file", file.keys.master_key_file.as_deref())?,
        previous_master_key_file: key_path(
            "keys.previous_master_key_file",
            file.keys.previous_master_key_file.as_deref(),
        )?,
        generate_dev_key: file.keys.generate_dev_key.unwrap_or(false),
        keyring_copy: key_path("keys.keyring_copy", file.keys.keyring_copy.as_deref())?,
    };
    if keys.generate_dev_key && keys.master_key_file.is_none() {
        return Err(invalid(
            "keys.generate_dev_key",
            "true",
            "there is no keys.master_key_file to create",
            "set keys.master_key_file to where the development key should be written",
        ));
    }

    // `pms.allow = ["any"]`: an explicit "every host" (kept as 0.0.0.0/0 and ::/0).
    let allow_any = any_host(file.pms.allow.as_deref(), &invalid)?;
    if allow_any {
        file.pms.allow = Some(vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()]);
    }
    let pms = validate_pms(&file.pms, &time_zone, &base, &invalid)?;
    require_allow_list(&pms, &invalid)?;

    let api_socket = match file.api.socket.as_deref() {
        None => PathBuf::from("/run/clinic-relay/api.sock"),
        Some("") => {
            return Err(invalid(
                "api.socket",
                "",
                "empty path",
                "give a socket path, e.g. /run/clinic-relay/api.sock",
            ))
        }
        Some(v) => resolve(&base, v),
    };
    let max_body_bytes = match file.api.max_body_bytes {
        None => 1024 * 1024,
        Some(n) if (1024..=64 * 1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "api.max_body_bytes",
                &n.to_string(),
                "out of range",
                "use 1024 to 67108864 bytes",
            ))
        }
    };
    let max_long_poll = duration_in(
        file.api.max_long_poll.as_deref(),
        "api.max_long_poll",
        Duration::from_secs(60),
        (Duration::from_secs(1), Duration::from_secs(600)),
        &invalid,
    )?;
    let tcp = match file.api.tcp_listen.as_deref() {
        None | Some("") => None,
        Some(v) => {
            let addr: SocketAddr = v.parse().map_err(|_| {
                invalid(
                    "api.tcp_listen",
                    v,
                    "not a socket address",
                    "write IP:PORT, e.g. 192.168.10.2:8443",
                )
            })?;
            let need = |key: &'static str,
                        value: &Option<String>|
             -> Result<PathBuf, ConfigError> {
                match value.as_deref() {
                    Some(p) if !p.is_empty() => Ok(resolve(&base, p)),
                    _ => Err(invalid(key, "", "required when api.tcp_listen is set", "the TCP door always uses TLS with client certificates: set api.tls_cert, api.tls_key and api.client_ca")),
                }
            };
            let files = crate::tls::TlsFiles {
                cert: need("api.tls_cert", &file.api.tls_cert)?,
                key: need("api.tls_key", &file.api.tls_key)?,
                client_ca: Some(need("api.client_ca", &file.api.client_ca)?),
                section: "api",
            };
            Some((addr, files))
        }
    };
    let api_limits = api_limits(&file.api, &invalid)?;
    let api = ApiConfig {
        socket: api_socket,
        max_body_bytes,
        max_long_poll,
        tcp,
        limits: api_limits,
    };

    let idempotency_retention = duration_in(
        file.service.idempotency_retention.as_deref(),
        "service.idempotency_retention",
        Duration::from_secs(30 * 24 * 3600),
        (
            Duration::from_secs(3600),
            Duration::from_secs(3650 * 24 * 3600),
        ),
        &invalid,
    )?;
    let webhook =
        crate::webhook::config::validate(&file.webhook, &|v| resolve(&base, v), &invalid)?;

    let whatsapp = crate::whatsapp::config::validate(&file.whatsapp, |v| resolve(&base, v))
        .map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key: e.key,
            value: e.value,
            reason: e.reason,
            fix: e.fix,
        })?;

    let reminders =
        crate::care::config::validate(&file.reminders, &|v| resolve(&base, v), &invalid)?;
    let policy = crate::whatsapp::policy::validate(&file.policy)
        .map_err(|e| invalid(e.key, &e.value, &e.reason, e.fix))?;
    if !policy.is_mapped(&reminders.template) {
        return Err(invalid(
            "reminders.template",
            &reminders.template,
            "no [policy.templates] mapping says which field each of its parameters carries",
            "add [policy.templates.NAME] with kind = \"reminder\" and params = \
             [\"appointment_date\", \"appointment_time\"] (docs/configuration.md, [policy])",
        ));
    }

    let results = crate::care::results_config::validate(&file.results, &time_zone_name, &invalid)?;
    if !policy.is_mapped(&results.template) {
        return Err(invalid(
            "results.template",
            &results.template,
            "no [policy.templates] mapping says which kind of message it is",
            "add [policy.templates.NAME] with kind = \"result-notice\" and params = [] \
             (docs/configuration.md, [policy])",
        ));
    }

    let conversations = crate::care::conversation::config::validate(&file.conversations, &invalid)?;
    if !policy.is_mapped(&conversations.reopen_template) {
        return Err(invalid(
            "conversations.reopen_template",
            &conversations.reopen_template,
            "no [policy.templates] mapping says which kind of message it is",
            "add [policy.templates.NAME] with kind = \"staff-text\" and params = [] \
             (docs/configuration.md, [policy])",
        ));
    }

    let booking = crate::care::booking::config::validate(&file.booking, &invalid)?;
    let console =
        crate::console::config::validate(&file.console, &|v| resolve(&base, v), &invalid)?;

    Ok(Config {
        path: path.to_owned(),
        service: ServiceConfig {
            data_dir,
            time_zone,
            time_zone_name,
            shutdown_timeout,
            idempotency_retention,
            cache_bytes,
        },
        log: LogConfig { level, format },
        keys,
        pms,
        api,
        whatsapp,
        webhook,
        reminders,
        conversations,
        policy,
        results,
        booking,
        console,
    })
}

/// Whether `pms.allow` is the explicit `["any"]`; `"any"` mixed with
/// addresses is an error (it would make the addresses meaningless).
fn any_host(allow: Option<&[String]>, invalid: &Invalid<'_>) -> Result<bool, ConfigError> {
    let list = allow.unwrap_or_default();
    let any = list.iter().any(|e| e.trim().eq_ignore_ascii_case("any"));
    if any && list.len() > 1 {
        return Err(invalid(
            "pms.allow",
            "any",
            "\"any\" cannot be combined with addresses",
            "write either allow = [\"any\"] or a list of addresses and networks",
        ));
    }
    Ok(any)
}

/// A listener reachable from the network needs an explicit allow-list:
/// otherwise any host on the LAN could send HL7 that changes patient data.
/// A loopback listener may leave it empty (only local processes reach it).
fn require_allow_list(pms: &PmsConfig, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    if pms.allow.is_empty() && !pms.mllp_listen.ip().to_canonical().is_loopback() {
        return Err(invalid(
            "pms.allow",
            "[]",
            &format!(
                "pms.mllp_listen = \"{}\" is reachable from the network, and without an allow-list any host could send HL7 that changes patient data",
                pms.mllp_listen
            ),
            "list the PMS's addresses or networks, e.g. allow = [\"192.168.10.5\"] or [\"192.168.10.0/24\"]; or write allow = [\"any\"] to accept every host (then restrict the port on the firewall); or listen on 127.0.0.1",
        ));
    }
    Ok(())
}

/// `api.max_connections`, `api.header_timeout`, `api.body_timeout`.
fn api_limits(file: &ApiFile, invalid: &Invalid<'_>) -> Result<crate::api::ApiLimits, ConfigError> {
    use crate::api::limits::{MAX_CONNECTIONS_RANGE, TIMEOUT_RANGE};
    let default = crate::api::ApiLimits::default();
    let max_connections = match file.max_connections {
        None => default.max_connections,
        Some(n) if (MAX_CONNECTIONS_RANGE.0..=MAX_CONNECTIONS_RANGE.1).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "api.max_connections",
                &n.to_string(),
                "out of range",
                "use 1 to 1024",
            ))
        }
    };
    Ok(crate::api::ApiLimits {
        max_connections,
        header_timeout: duration_in(
            file.header_timeout.as_deref(),
            "api.header_timeout",
            default.header_timeout,
            TIMEOUT_RANGE,
            invalid,
        )?,
        body_timeout: duration_in(
            file.body_timeout.as_deref(),
            "api.body_timeout",
            default.body_timeout,
            TIMEOUT_RANGE,
            invalid,
        )?,
    })
}

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

fn duration_in(
    value: Option<&str>,
    key: &'static str,
    default: Duration,
    (min, max): (Duration, Duration),
    invalid: &Invalid<'_>,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match parse_duration(v) {
        Some(d) if d >= min && d <= max => Ok(d),
        Some(_) => Err(invalid(
            key,
            v,
            "out of range",
            "see docs/configuration.md for the allowed range",
        )),
        None => Err(invalid(
            key,
            v,
            "not a duration",
            "write it like \"30s\", \"5m\" or \"1h 30m\"",
        )),
    }
}

fn validate_pms(
    file: &PmsFile,
    tz: &TimeZone,
    base: &Path,
    invalid: &Invalid<'_>,
) -> Result<PmsConfig, ConfigError> {
    use crate::model::AppointmentStatus;
    use crate::pms::map::{FieldPath, MappingConfig};
    let mllp_raw = file.mllp_listen.as_deref().unwrap_or("127.0.0.1:2575");
    let mllp_listen: SocketAddr = mllp_raw.parse().map_err(|_| {
        invalid(
            "pms.mllp_listen",
            mllp_raw,
            "not a socket address",
            "write IP:PORT, e.g. 0.0.0.0:2575 or [::]:2575 (host names are not accepted)",
        )
    })?;
    let mut allow = Vec::new();
    for entry in file.allow.iter().flatten() {
        let net = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                invalid(
                    "pms.allow",
                    entry,
                    "not an address or network",
                    "list addresses or CIDR networks, e.g. [\"192.168.10.5\", \"10.0.0.0/24\"]",
                )
            })?;
        allow.push(net);
    }
    let max_connections = match file.max_connections {
        None => 64,
        Some(n @ 1..=4096) => n as usize,
        Some(n) => {
            return Err(invalid(
                "pms.max_connections",
                &n.to_string(),
                "out of range",
                "use 1 to 4096",
            ))
        }
    };
    let idle_timeout = duration_in(
        file.idle_timeout.as_deref(),
        "pms.idle_timeout",
        Duration::from_secs(300),
        (Duration::from_secs(1), Duration::from_secs(86_400)),
        invalid,
    )?;
    let first_frame_timeout = duration_in(
        file.first_frame_timeout.as_deref(),
        "pms.first_frame_timeout",
        Duration::from_secs(30),
        (Duration::from_millis(100), Duration::from_secs(3600)),
        invalid,
    )?;
    let max_message_bytes = match file.max_message_bytes {
        None => 16 * 1024 * 1024,
        Some(n) if (1024..=256 * 1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "pms.max_message_bytes",
                &n.to_string(),
                "out of range",
                "use 1024 to 268435456 bytes",
            ))
        }
    };
    let max_pdf_bytes = match file.max_pdf_bytes {
        None => 10 * 1024 * 1024,
        Some(n) if (1024..=max_message_bytes as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "pms.max_pdf_bytes",
                &n.to_string(),
                "out of range",
                "use 1024 bytes up to pms.max_message_bytes",
            ))
        }
    };
    let phone_plan = crate::pms::phone::plan_from_config(
        file.phone_region.as_deref(),
        file.phone_country_code.as_deref(),
        file.phone_trunk_prefix.as_deref(),
    )
    .map_err(|e| invalid(e.key, &e.value, &e.reason, e.fix))?;
    let mut status_map = std::collections::HashMap::new();
    for (code, fhir) in file.status_map.iter().flatten() {
        let status: AppointmentStatus = serde_json::from_value(serde_json::Value::String(fhir.clone())).map_err(|_| {
            invalid("pms.status_map", fhir, "not a FHIR appointment status", "use booked, arrived, fulfilled, cancelled, noshow, pending, proposed, checked-in, waitlist or entered-in-error")
        })?;
        status_map.insert(code.to_ascii_uppercase(), status);
    }
    let consent_field = match file.consent_field.as_deref() {
        None => Some(FieldPath {
            segment: "ZCN".to_owned(),
            field: 2,
            component: 1,
        }),
        Some("") => None,
        Some(v) => Some(FieldPath::parse(v).ok_or_else(|| {
            invalid(
                "pms.consent_field",
                v,
                "not a field path",
                "write SEG-FIELD or SEG-FIELD.COMPONENT, e.g. \"ZCN-2\"; \"\" turns it off",
            )
        })?),
    };
    let deliverable_statuses = file
        .deliverable_result_statuses
        .clone()
        .unwrap_or_else(|| vec!["F".to_owned(), "C".to_owned()]);
    let processing_ids = processing_ids(file.processing_ids.as_deref(), invalid)?;
    let default_duration = duration_in(
        file.default_duration.as_deref(),
        "pms.default_duration",
        Duration::from_secs(15 * 60),
        (Duration::from_secs(60), Duration::from_secs(24 * 3600)),
        invalid,
    )?;
    let sender = match file.outbound_endpoint.as_deref() {
        None | Some("") => None,
        Some(v) => {
            let ok = v.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(invalid("pms.outbound_endpoint", v, "not HOST:PORT", "the PMS's MLLP listener, e.g. \"192.168.10.5:2576\" or \"pms.clinic.lan:2576\""));
            }
            Some(crate::pms::sender::SenderConfig {
                endpoint: v.to_owned(),
                timeout: duration_in(
                    file.outbound_timeout.as_deref(),
                    "pms.outbound_timeout",
                    Duration::from_secs(30),
                    (Duration::from_secs(1), Duration::from_secs(600)),
                    invalid,
                )?,
            })
        }
    };
    let application = file
        .application
        .clone()
        .unwrap_or_else(|| "CLINIC-RELAY".to_owned());
    let facility = file.facility.clone().unwrap_or_default();
    let outbound = crate::pms::outbound::OutboundConfig {
        application: application.clone(),
        facility: facility.clone(),
        receiving_application: file
            .receiving_application
            .clone()
            .unwrap_or_else(|| "PMS".to_owned()),
        receiving_facility: file.receiving_facility.clone().unwrap_or_default(),
        confirm_status: file
            .outbound_confirm_status
            .clone()
            .unwrap_or_else(|| "Confirmed".to_owned()),
        consent_field: consent_field.clone(),
        assigning_authority: file.assigning_authority.clone().unwrap_or_default(),
        new_patient_trigger: match file.outbound_new_patient.as_deref() {
            None => "A04".to_owned(),
            Some(v) => crate::pms::new_patient::trigger(v)
                .ok_or_else(|| {
                    invalid(
                        "pms.outbound_new_patient",
                        v,
                        "not a registration message clinic-relay can send",
                        "use \"ADT^A04\" (register), \"ADT^A05\" (pre-admit) or \"ADT^A28\" (add person)",
                    )
                })?
                .to_owned(),
        },
    };
    let tls = match (file.tls_cert.as_deref(), file.tls_key.as_deref()) {
        (None | Some(""), None | Some("")) => None,
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            Some(crate::tls::TlsFiles {
                cert: resolve(base, cert),
                key: resolve(base, key),
                client_ca: file
                    .tls_client_ca
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|p| resolve(base, p)),
                section: "pms",
            })
        }
        _ => {
            return Err(invalid(
                "pms.tls_cert",
                "",
                "pms.tls_cert and pms.tls_key go together",
                "set both (PEM files) for MLLP over TLS, or neither for plain MLLP",
            ))
        }
    };
    Ok(PmsConfig {
        mllp_listen,
        tls,
        outbound,
        sender,
        allow,
        max_connections,
        idle_timeout,
        first_frame_timeout,
        max_message_bytes,
        application: file
            .application
            .clone()
            .unwrap_or_else(|| "CLINIC-RELAY".to_owned()),
        facility: file.facility.clone().unwrap_or_default(),
        mapping: MappingConfig {
            assigning_authority: file.assigning_authority.clone().unwrap_or_default(),
            phone_plan,
            time_zone: tz.clone(),
            status_map,
            deliverable_statuses,
            max_pdf_bytes,
            processing_ids,
            consent_field,
            default_duration_minutes: u32::try_from(default_duration.as_secs() / 60).unwrap_or(15),
        },
    })
}

/// `pms.processing_ids`: the MSH-11 values (HL7 table 0103) accepted.
fn processing_ids(
    list: Option<&[String]>,
    invalid: &Invalid<'_>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = list else {
        return Ok(vec!["P".to_owned()]);
    };
    if list.is_empty() {
        return Err(invalid(
            "pms.processing_ids",
            "[]",
            "the list is empty, so every message would be refused",
            "list at least one of \"P\" (production), \"T\" (training) or \"D\" (debugging); the default is [\"P\"]",
        ));
    }
    let mut ids = Vec::new();
    for id in list {
        let upper = id.trim().to_ascii_uppercase();
        if !matches!(upper.as_str(), "P" | "T" | "D") {
            return Err(invalid(
                "pms.processing_ids",
                id,
                "not an HL7 processing id",
                "use \"P\" (production), \"T\" (training) or \"D\" (debugging), e.g. [\"T\"] for a test PMS",
            ));
        }
        if !ids.contains(&upper) {
            ids.push(upper);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_ids_default_to_production_and_are_checked() {
        assert_eq!(load("").unwrap().pms.mapping.processing_ids, ["P"]);
        let c = load("[pms]\nprocessing_ids = [\"t\", \"T\", \"D\"]\n").unwrap();
        assert_eq!(c.pms.mapping.processing_ids, ["T", "D"]);
        let msg = load("[pms]\nprocessing_ids = [\"X\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`pms.processing_ids`") && msg.contains("\"X\""),
            "{msg}"
        );
        assert!(msg.contains("Fix: use \"P\""), "{msg}");
        let msg = load("[pms]\nprocessing_ids = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`pms.processing_ids`") && msg.contains("empty"),
            "{msg}"
        );
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/clinic-relay/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.service.data_dir, Path::new("/var/lib/clinic-relay"));
        assert_eq!(c.service.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.pms.mllp_listen.port(), 2575);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = Config::from_toml(
            "[service]\ndata_dir = \"data\"\n",
            Path::new("/opt/cr/config.toml"),
        )
        .unwrap();
        assert_eq!(c.service.data_dir, Path::new("/opt/cr/data"));
    }

    #[test]
    fn paths_are_absolute_and_free_of_dot_segments() {
        let c = Config::from_toml(
            "[service]\ndata_dir = \"../.dev-data/./data\"\n[api]\nsocket = \"../../../../run/x.sock\"\n",
            Path::new("/srv/cr/config/dev.toml"),
        )
        .unwrap();
        assert_eq!(c.service.data_dir, Path::new("/srv/cr/.dev-data/data"));
        assert_eq!(c.api.socket, Path::new("/run/x.sock"));

        // A relative config path (`--config config/dev.toml`) is anchored at
        // the working directory once, at load.
        let cwd = std::env::current_dir().unwrap();
        let c = Config::from_toml(
            "[service]\ndata_dir = \"../.dev-data/data\"\n[keys]\nmaster_key_file = \"../.dev-data/k\"\n",
            Path::new("config/dev.toml"),
        )
        .unwrap();
        assert_eq!(c.path, cwd.join("config/dev.toml"));
        assert_eq!(c.service.data_dir, cwd.join(".dev-data/data"));
        assert_eq!(
            c.keys.master_key_file.as_deref(),
            Some(cwd.join(".dev-data/k").as_path())
        );
        for p in [&c.path, &c.service.data_dir, &c.api.socket] {
            assert!(p.is_absolute(), "{}", p.display());
            assert!(!p.to_string_lossy().contains(".."), "{}", p.display());
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let err = load("[service]\ndata_dir = \"/x\"\ndata_dirr = \"/y\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown key `service.data_dirr`"), "{msg}");
        assert!(msg.contains("docs/configuration.md"), "{msg}");
        let err = load("[nonsense]\na = 1\n").unwrap_err().to_string();
        assert!(err.contains("unknown key `nonsense`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let msg = load("[service]\ndata_dir = 5\n").unwrap_err().to_string();
        assert!(msg.contains("`service.data_dir`"), "{msg}");
    }

    #[test]
    fn bad_time_zone_names_key_value_and_fix() {
        let msg = load("[service]\ntime_zone = \"Mars/Olympus\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`service.time_zone`"), "{msg}");
        assert!(msg.contains("Mars/Olympus"), "{msg}");
        assert!(msg.contains("Europe/Berlin"), "{msg}");
    }

    #[test]
    fn bad_address_names_key_and_fix() {
        let msg = load("[pms]\nmllp_listen = \"localhost:99999\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`pms.mllp_listen`"), "{msg}");
        assert!(msg.contains("0.0.0.0:2575"), "{msg}");
    }

    #[test]
    fn durations_parse_in_friendly_and_iso_forms() {
        assert_eq!(parse_duration("72h"), Some(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("PT10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(
            load("").unwrap().service.idempotency_retention,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(
            load("[service]\nidempotency_retention = \"90d\"\n")
                .unwrap()
                .service
                .idempotency_retention,
            Duration::from_secs(90 * 24 * 3600)
        );
        let msg = load("[service]\nidempotency_retention = \"5m\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`service.idempotency_retention`"), "{msg}");
        let msg = load("[service]\nshutdown_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`service.shutdown_timeout`") && msg.contains("\"10s\""),
            "{msg}"
        );
    }

    #[test]
    fn the_store_cache_is_configurable_within_bounds() {
        assert_eq!(
            load("").unwrap().service.cache_bytes,
            crate::vault::DEFAULT_CACHE_BYTES
        );
        assert_eq!(
            load("[service]\ncache_mb = 64\n")
                .unwrap()
                .service
                .cache_bytes,
            64 * 1024 * 1024
        );
        for bad in ["2", "5000"] {
            let msg = load(&format!("[service]\ncache_mb = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("`service.cache_mb`") && msg.contains("4 to 4096"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_network_listener_needs_an_allow_list() {
        for listen in ["0.0.0.0:2575", "[::]:2575", "192.168.10.2:2575"] {
            for allow in ["", "allow = []\n"] {
                let msg = load(&format!("[pms]\nmllp_listen = \"{listen}\"\n{allow}"))
                    .unwrap_err()
                    .to_string();
                assert!(msg.contains("`pms.allow`"), "{msg}");
                assert!(msg.contains(listen), "{msg}");
                assert!(msg.contains("allow = [\"any\"]"), "{msg}");
                assert!(msg.contains("127.0.0.1"), "{msg}");
            }
        }
        let c =
            load("[pms]\nmllp_listen = \"0.0.0.0:2575\"\nallow = [\"192.168.10.0/24\"]\n").unwrap();
        assert_eq!(c.pms.allow.len(), 1);
        let c = load("[pms]\nmllp_listen = \"0.0.0.0:2575\"\nallow = [\"any\"]\n").unwrap();
        let everyone: Vec<ipnet::IpNet> =
            vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        assert_eq!(c.pms.allow, everyone);
        let msg = load("[pms]\nmllp_listen = \"0.0.0.0:2575\"\nallow = [\"any\", \"10.0.0.1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`pms.allow`"), "{msg}");
    }

    #[test]
    fn a_loopback_listener_may_leave_the_allow_list_empty() {
        for listen in ["127.0.0.1:2575", "[::1]:2575", "127.0.0.2:0"] {
            let c = load(&format!("[pms]\nmllp_listen = \"{listen}\"\n")).unwrap();
            assert!(c.pms.allow.is_empty());
        }
        // The default listens on loopback, so an empty file stays valid.
        assert!(load("").unwrap().pms.mllp_listen.ip().is_loopback());
    }

    #[test]
    fn dev_key_needs_a_path() {
        let msg = load("[keys]\ngenerate_dev_key = true\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("keys.master_key_file"), "{msg}");
    }
}
