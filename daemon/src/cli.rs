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
        /// Only entries at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
        #[arg(long)]
        since: Option<jiff::Timestamp>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
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
            let new = MasterKey::load_file(&new_key).map_err(|e| e.to_string())?;
            // After a crash mid-rotation only the new key opens the keyring.
            let vault = match Vault::open_existing(&config.service.data_dir, &new) {
                Ok(v) => v,
                Err(_) => open_offline(&config)?,
            };
            let report = vault.rotate_master_key(&new).map_err(|e| e.to_string())?;
            let mut txn =
                crate::vault::Txn::new(crate::clock::Clock::now(&crate::clock::SystemClock));
            txn.audit(
                crate::audit::AuditDraft::new("admin:cli", "keys.rotate")
                    .detail("resealed", report.resealed.to_string())
                    .detail("keys_retired", report.keys_retired.to_string()),
            );
            vault.commit(txn).map_err(|e| e.to_string())?;
            println!(
                "rotation complete: {} records re-sealed, {} old keys retired. Now point keys.master_key_file at {}",
                report.resealed,
                report.keys_retired,
                new_key.display()
            );
            vault.close().map_err(|e| e.to_string())
        }
        Command::Audit(AuditCommand::Verify) => {
            let config = load_config(&cli.config)?;
            let vault = open_offline(&config)?;
            let count = vault.verify_audit().map_err(|e| e.to_string())?;
            println!("audit log OK: {count} entries, chain and head checkpoint verified");
            Ok(())
        }
        Command::Audit(AuditCommand::Export { since, out }) => {
            let config = load_config(&cli.config)?;
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
