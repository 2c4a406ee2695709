//! The command line. `main.rs` only calls [`main`]; each command is a small
//! function over the library, reporting one clear line on failure.

use crate::config::{self, Config};
use crate::keys::MasterKey;
use crate::service;
use crate::vault::Vault;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "clinic-relay",
    version,
    about = "Privacy-first WhatsApp relay for clinics"
)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "CLINIC_RELAY_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve,
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the master key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Take or restore a backup.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Ask the running daemon how it is; exits non-zero when unhealthy or not running.
    Status,
    /// WhatsApp message templates.
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// The WhatsApp outbox (daemon stopped).
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The WhatsApp connection.
    #[command(subcommand)]
    Whatsapp(WhatsappCommand),
    /// Staff accounts of the console (daemon stopped).
    #[command(subcommand)]
    Staff(StaffCommand),
    /// The staff console.
    #[command(subcommand)]
    Console(ConsoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum StaffCommand {
    /// Add an account; its password (unless --password-stdin) and TOTP secret are shown once.
    Add {
        name: String,
        /// desk (default) or admin.
        #[arg(long)]
        role: Option<String>,
        /// Read the password (12 characters or more) from one line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts (no secrets).
    List,
    /// Disable an account: no more logins.
    Disable { name: String },
    /// New password and TOTP secret; unlocks and enables the account.
    Reset {
        name: String,
        /// Change the role too: desk or admin.
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Print the console certificate's SHA-256 fingerprint (made on first use if self-signed).
    Cert,
}

#[derive(Debug, Subcommand)]
pub enum WhatsappCommand {
    /// Try the live configuration end to end (token, phone number id,
    /// business account, webhook public URL); prints OK or FIX per check,
    /// exit 1 when anything needs fixing.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Recent outbound messages, newest first: state, kind, template,
    /// patient pseudonym (never the number; the content only with
    /// --show-content).
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Also print what queued messages say (PHI; the read is audited).
        #[arg(long)]
        show_content: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// List the shipped templates against the WhatsApp account (missing,
    /// pending, rejected, paused, moved to MARKETING); exit 1 unless all are approved.
    Check,
    /// Submit the shipped templates the account is missing for Meta's
    /// review (rejected or paused ones are listed, not resubmitted).
    Create,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a consistent, sealed snapshot to FILE (from the running daemon if
    /// there is one, else from the data directory). Also refreshes the keyring
    /// copy `clinic-relay.keyring` beside FILE.
    Create { file: PathBuf },
    /// Restore FILE into an empty directory and verify it.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// The current keyring (default: the configured data directory's, else
        /// `clinic-relay.keyring` beside FILE).
        #[arg(long)]
        keyring: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file; exit 0 if it is valid, 1 with the reason if not.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new random master key to a new file (mode 0600; never overwrites).
    Init {
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap every key and re-seal all data under a new master key (daemon stopped).
    Rotate {
        #[arg(long)]
        new_key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the head checkpoint; names the first bad entry.
    Verify,
    /// Write entries as JSON lines.
    Export {
        /// Only entries at or after this time: RFC 3339 (2026-01-31T08:00:00Z),
        /// or a date (2026-01-31), meaning its midnight in service.time_zone.
        #[arg(long, value_name = "TIME|DATE")]
        since: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    crate::process::private_umask();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("clinic-relay: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

/// Opens an existing vault for an offline command. These decrypt data too,
/// so they get the same protection as the daemon: no core dumps.
fn open_offline(config: &Config) -> Result<Vault, String> {
    crate::process::disable_core_dumps().map_err(|e| format!("cannot disable core dumps: {e}"))?;
    let opened = service::open_existing_vault(config).map_err(|e| e.to_string())?;
    Ok(opened.vault)
}

pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve => {
            let config = load_config(&cli.config)?;
            crate::logging::init(&config.log);
            service::run(config).map_err(|e| e.to_string())
        }
        Command::Config(ConfigCommand::Check) => {
            let config = load_config(&cli.config)?;
            let key = service::check_master_key(&config).map_err(|e| e.to_string())?;
            if let Some(files) = &config.pms.tls {
                crate::tls::server_config(files).map_err(|e| e.to_string())?;
            }
            if let Some((_, files)) = &config.api.tcp {
                crate::tls::server_config(files).map_err(|e| e.to_string())?;
            }
            // A configured console pair; a self-signed one is made at start.
            if let Some((cert, key)) = config.console.as_ref().and_then(|c| c.tls.clone()) {
                crate::tls::server_config(&crate::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: None,
                    section: "console",
                })
                .map_err(|e| e.to_string())?;
            }
            if config.whatsapp.token_path().is_some() {
                // Builds the client offline: the extra CA, the proxy and its
                // credentials file are checked before the daemon needs them.
                crate::whatsapp::client::GraphClient::new(&config.whatsapp, None)
                    .map_err(|e| e.to_string())?;
            }
            let key = match &config.webhook {
                Some(w) => format!(
                    "{key}; {}",
                    crate::webhook::check(w).map_err(|e| e.to_string())?
                ),
                None => key,
            };
            println!(
                "{}: OK (data in {}, time zone {}; {})",
                config.path.display(),
                config.service.data_dir.display(),
                config.service.time_zone_name,
                key
            );
            Ok(())
        }
        Command::Keys(KeysCommand::Init { out }) => {
            let key = MasterKey::generate().map_err(|e| e.to_string())?;
            key.write_new_file(&out).map_err(|e| e.to_string())?;
            println!(
                "wrote a new master key to {} (mode 0600); keep a recovery copy offline",
                out.display()
            );
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { new_key }) => {
            let config = load_config(&cli.config)?;
            crate::process::disable_core_dumps()
                .map_err(|e| format!("cannot disable core dumps: {e}"))?;
            let new = MasterKey::load_file(&new_key).map_err(|e| e.to_string())?;
            // After a crash mid-rotation only the new key opens the keyring.
            let vault = match Vault::open_existing(&config.service.data_dir, &new) {
                Ok(v) => v,
                Err(_) => open_offline(&config)?,
            };
            let report = vault.rotate_master_key(&new).map_err(|e| e.to_string())?;
            let rotated = crate::audit::AuditDraft::new("admin:cli", "keys.rotate")
                .detail("resealed", report.resealed.to_string())
                .detail("keys_retired", report.keys_retired.to_string());
            vault
                .record_audit_blocking(
                    crate::clock::Clock::now(&crate::clock::SystemClock),
                    [rotated],
                )
                .map_err(|e| e.to_string())?;
            println!(
                "rotation complete: {} records re-sealed, {} old keys retired. Now point keys.master_key_file at {}",
                report.resealed,
                report.keys_retired,
                new_key.display()
            );
            vault.close().map_err(|e| e.to_string())
        }
        Command::Status => status(&load_config(&cli.config)?),
        Command::Outbox(OutboxCommand::List {
            limit,
            show_content,
        }) => {
            let config = load_config(&cli.config)?;
            let vault = open_offline(&config)?;
            crate::whatsapp::cli::outbox_list(&vault, limit, show_content)
        }
        Command::Templates(TemplatesCommand::Check) => {
            crate::whatsapp::cli::templates_check(&load_config(&cli.config)?)
        }
        Command::Whatsapp(WhatsappCommand::Check) => {
            crate::whatsapp::cli::whatsapp_check(&load_config(&cli.config)?)
        }
        Command::Templates(TemplatesCommand::Create) => {
            crate::whatsapp::cli::templates_create(&load_config(&cli.config)?)
        }
        Command::Backup(BackupCommand::Create { file }) => {
            backup_create(&load_config(&cli.config)?, &file)
        }
        Command::Backup(BackupCommand::Restore {
            file,
            data_dir,
            keyring,
        }) => backup_restore(
            &load_config(&cli.config)?,
            &file,
            &data_dir,
            keyring.as_deref(),
        ),
        Command::Staff(cmd) => {
            let config = load_config(&cli.config)?;
            let vault = open_offline(&config)?;
            let done = match cmd {
                StaffCommand::Add {
                    name,
                    role,
                    password_stdin,
                } => crate::console::cli::add(&vault, &name, role.as_deref(), password_stdin),
                StaffCommand::List => crate::console::cli::list(&vault),
                StaffCommand::Disable { name } => crate::console::cli::disable(&vault, &name),
                StaffCommand::Reset {
                    name,
                    role,
                    password_stdin,
                } => crate::console::cli::reset(&vault, &name, role.as_deref(), password_stdin),
            };
            let closed = vault.close().map_err(|e| e.to_string());
            done.and(closed)
        }
        Command::Console(ConsoleCommand::Cert) => {
            crate::console::cli::cert(&load_config(&cli.config)?)
        }
        Command::Audit(AuditCommand::Verify) => {
            let config = load_config(&cli.config)?;
            let vault = open_offline(&config)?;
            let count = vault.verify_audit().map_err(|e| e.to_string())?;
            println!("audit log OK: {count} entries, chain, head checkpoint and anchor verified");
            Ok(())
        }
        Command::Audit(AuditCommand::Export { since, out }) => {
            let config = load_config(&cli.config)?;
            let since = since
                .as_deref()
                .map(|s| parse_since(s, &config.service.time_zone))
                .transpose()?;
            let vault = open_offline(&config)?;
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(
                    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut written = 0u64;
            for (seq, entry) in vault.audit_entries(1) {
                let entry = entry.map_err(|e| format!("audit entry {seq}: {e}"))?;
                if since.is_some_and(|t| entry.time < t) {
                    continue;
                }
                let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
                writeln!(sink, "{line}").map_err(|e| e.to_string())?;
                written += 1;
            }
            sink.flush().map_err(|e| e.to_string())?;
            if out.is_some() {
                println!("exported {written} audit entries");
            }
            Ok(())
        }
    }
}

/// `--since`: an RFC 3339 time, or a plain date meaning its first moment
/// (midnight, or later on a day that starts with a DST gap) in the clinic's
/// time zone, the zone the clinic's days are counted in.
pub fn parse_since(text: &str, tz: &jiff::tz::TimeZone) -> Result<jiff::Timestamp, String> {
    let text = text.trim();
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    text.parse::<jiff::civil::Date>()
        .ok()
        .filter(|_| text.len() == 10)
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!(
                "--since {text:?}: expected an RFC 3339 time (2026-11-29T08:00:00Z) or a date (2026-11-29, midnight in service.time_zone)"
            )
        })
}

/// The name of the keyring copy kept beside backups.
pub const KEYRING_COPY: &str = "clinic-relay.keyring";

/// Creates `path` for a backup: new (never overwrites), mode 0600.
fn create_new_private(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn backup_create(config: &Config, file: &Path) -> Result<(), String> {
    // The destination first: a missing folder or an existing file fails
    // before a backup is taken, so no `backup.create` is audited for it.
    let out = create_new_private(file)?;
    let written = take_backup_into(config, file, out);
    if written.is_err() {
        // Nothing half-written stays behind (the file is ours: create_new).
        let _ = std::fs::remove_file(file);
    }
    let bytes = written?;
    refresh_keyring_copy(config, file, bytes)
}

/// Takes the backup (from the running daemon, else from the data
/// directory) and streams it into `out`; returns its size. The daemon
/// audits the backup it hands out; offline, the entry is written in the
/// same writer job as the snapshot, once the file is durable.
fn take_backup_into(config: &Config, file: &Path, out: std::fs::File) -> Result<u64, String> {
    use crate::api::client::{self, ClientError, Download};
    let at = |e: std::io::Error| format!("{}: {e}", file.display());
    let mut sink = std::io::BufWriter::with_capacity(64 * 1024, out);
    match client::download_blocking(&config.api.socket, "/v1/admin/backup", &mut sink) {
        Ok(Download::Saved(bytes)) => {
            let out = sink.into_inner().map_err(|e| at(e.into_error()))?;
            out.sync_all().map_err(at)?;
            crate::vault::fsio::sync_parent_dir(file).map_err(at)?;
            Ok(bytes)
        }
        Ok(Download::Refused(status, body)) => Err(format!(
            "the daemon refused the backup ({status}): {}",
            String::from_utf8_lossy(&body)
        )),
        Err(ClientError::NotRunning(_)) => {
            let out = sink.into_inner().map_err(|e| at(e.into_error()))?;
            let vault = open_offline(config)?;
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let summary = vault
                .backup_to_file(now, out, file, "admin:cli")
                .map_err(|e| e.to_string())?;
            vault.close().map_err(|e| e.to_string())?;
            Ok(summary.bytes)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn refresh_keyring_copy(config: &Config, file: &Path, size: u64) -> Result<(), String> {
    if let Some(copy) = &config.keys.keyring_copy {
        // The daemon keeps that copy current itself; do not touch it.
        println!(
            "backup written to {} ({} bytes); the keyring copy is kept current at {}",
            file.display(),
            size,
            copy.display()
        );
        return Ok(());
    }
    // The restore needs the current keyring: keep one copy beside the backups.
    let copy = file.parent().unwrap_or(Path::new(".")).join(KEYRING_COPY);
    let keyring = std::fs::read(crate::vault::keyring_path(&config.service.data_dir))
        .map_err(|e| format!("reading the keyring: {e}"))?;
    crate::vault::fsio::replace_atomically(&copy, &keyring)
        .map_err(|e| format!("{}: {e}", copy.display()))?;
    println!(
        "backup written to {} ({} bytes); keyring copy refreshed at {}",
        file.display(),
        size,
        copy.display()
    );
    Ok(())
}

fn backup_restore(
    config: &Config,
    file: &Path,
    data_dir: &Path,
    keyring: Option<&Path>,
) -> Result<(), String> {
    crate::process::disable_core_dumps().map_err(|e| format!("cannot disable core dumps: {e}"))?;
    let keyring = match keyring {
        Some(k) => k.to_owned(),
        None => {
            // The current keyring: the live one, else the copy the daemon
            // keeps up to date (keys.keyring_copy), else the one beside FILE.
            let live = crate::vault::keyring_path(&config.service.data_dir);
            let beside = file.parent().unwrap_or(Path::new(".")).join(KEYRING_COPY);
            [Some(live), config.keys.keyring_copy.clone()]
                .into_iter()
                .flatten()
                .find(|p| p.exists())
                .unwrap_or(beside)
        }
    };
    let at = |e: std::io::Error| format!("{}: {e}", file.display());
    let src = std::fs::File::open(file).map_err(at)?;
    if src.metadata().map_err(at)?.len() > crate::vault::backup::MAX_BACKUP_BYTES as u64 {
        return Err(format!(
            "{} is larger than any clinic-relay backup",
            file.display()
        ));
    }
    let mk = service::load_master_key(config).map_err(|e| e.to_string())?;
    // Streamed from the file: a format-2 backup is never held whole.
    let (vault, report) = Vault::restore_from(
        std::io::BufReader::with_capacity(64 * 1024, src),
        data_dir,
        &keyring,
        &mk,
    )
    .map_err(|e| e.to_string())?;
    vault.close().map_err(|e| e.to_string())?;
    println!(
        "restored {} records into {} and verified them: audit chain of {} entries intact, {} records of erased patients stay unreadable",
        report.records,
        data_dir.display(),
        report.audit_entries,
        report.unreadable_erased
    );
    Ok(())
}

/// A member of the status document (JSON null when absent).
fn at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    v.pointer(pointer).unwrap_or(&serde_json::Value::Null)
}

fn status(config: &Config) -> Result<(), String> {
    use crate::api::client::{self, ClientError};
    let body = match client::request_blocking(&config.api.socket, "GET", "/v1/status") {
        Ok((200, body)) => body,
        Ok((code, _)) => return Err(format!("the daemon answered {code} to a status request")),
        Err(ClientError::NotRunning(socket)) => {
            return Err(format!(
            "clinic-relay is NOT RUNNING: nothing answers on {} (systemctl status clinic-relay)",
            socket.display()
        ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let s: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("unreadable status: {e}"))?;
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| "never".to_owned(), str::to_owned);
    let uptime = at(&s, "/uptime_seconds").as_u64().unwrap_or_default();
    println!(
        "clinic-relay {}: running for {}h {}m, WhatsApp {}",
        text(at(&s, "/version")),
        uptime / 3600,
        uptime % 3600 / 60,
        text(at(&s, "/whatsapp_mode"))
    );
    println!(
        "PMS: last message {}, queue {} (oldest {}), dead letters {}, sender {}",
        text(at(&s, "/pms/last_message_at")),
        at(&s, "/pms/outbox_depth"),
        text(at(&s, "/pms/outbox_oldest")),
        at(&s, "/pms/dead_letters"),
        text(at(&s, "/pms/sender"))
    );
    println!(
        "WhatsApp: outbox {}, dead letters {}, {}, webhook {}",
        at(&s, "/whatsapp/outbox_depth"),
        at(&s, "/whatsapp/dead_letters"),
        if at(&s, "/whatsapp/paused").as_bool() == Some(true) {
            "PAUSED"
        } else {
            "sending"
        },
        text(at(&s, "/whatsapp/webhook"))
    );
    let age = at(&s, "/keys/master_key_age_days")
        .as_u64()
        .map_or_else(|| "unknown".to_owned(), |d| format!("{d} days"));
    println!(
        "keys: generation {}, master key age {age}",
        at(&s, "/keys/generation")
    );
    println!(
        "audit: head seq {}, {} read(s) waiting for their entry",
        at(&s, "/audit/seq"),
        at(&s, "/audit/reads_waiting").as_u64().unwrap_or_default()
    );
    println!(
        "storage: {} MiB free in {}",
        at(&s, "/storage/free_bytes").as_u64().unwrap_or_default() >> 20,
        text(at(&s, "/storage/data_dir"))
    );
    println!(
        "patients: {}, events cursor {}",
        at(&s, "/patients"),
        at(&s, "/events_cursor")
    );
    for line in crate::kpi::status::fetch(&config.api.socket) {
        println!("{line}");
    }
    let warnings = at(&s, "/warnings").as_array().cloned().unwrap_or_default();
    if warnings.is_empty() {
        println!("healthy");
        Ok(())
    } else {
        for w in &warnings {
            println!("WARNING: {}", w.as_str().unwrap_or_default());
        }
        Err(format!("unhealthy: {} warning(s)", warnings.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_date_in_the_clinic_zone() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            parse_since("2026-11-29T08:00:00Z", &berlin).unwrap(),
            t("2026-11-29T08:00:00Z")
        );
        assert_eq!(
            parse_since("2026-11-29T08:00:00+01:00", &berlin).unwrap(),
            t("2026-11-29T07:00:00Z")
        );
        // Midnight in Berlin (UTC+1 in winter, +2 in summer).
        assert_eq!(
            parse_since("2026-11-29", &berlin).unwrap(),
            t("2026-11-28T23:00:00Z")
        );
        assert_eq!(
            parse_since("2026-07-01", &berlin).unwrap(),
            t("2026-06-30T22:00:00Z")
        );
        assert_eq!(
            parse_since("2026-11-29", &jiff::tz::TimeZone::UTC).unwrap(),
            t("2026-11-29T00:00:00Z")
        );
        for bad in ["yesterday", "2026-11-31", "29.11.2026", "2026-11-29T08:00"] {
            let err = parse_since(bad, &berlin).unwrap_err();
            assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
        }
    }
}
