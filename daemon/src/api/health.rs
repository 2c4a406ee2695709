//! The daemon's health: queue depths, storage, keys, the WhatsApp outbox's
//! state, and the warnings an operator should act on. One computation for
//! `GET /v1/status` (and through it `clinic-relay status`) and the staff
//! console's dashboard, so that the two never tell different stories.
//!
//! Nothing here names a patient: counts, times, paths of our own files.

use super::routes::{ApiState, HealthSources};
use crate::vault::{Tree, Vault};
use jiff::Timestamp;
use serde_json::{json, Value};

/// The state of the WhatsApp access token, as the outbox sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No token configured: dry-run, nothing leaves the box.
    None,
    /// Configured and in use.
    Ok,
    /// Configured, but the file cannot be read now: the outbox is paused.
    Missing,
    /// Meta rejected it (error 190): the outbox is paused until it changes.
    Rejected,
    /// The outbox is not running (see the log).
    Unknown,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::None => "none",
            TokenState::Ok => "ok",
            TokenState::Missing => "missing",
            TokenState::Rejected => "rejected",
            TokenState::Unknown => "unknown",
        }
    }
}

/// A snapshot of the daemon's health at `now`.
#[derive(Debug, Clone)]
pub struct Health {
    pub now: Timestamp,
    pub uptime_seconds: i64,
    /// `live` or `dry-run`.
    pub whatsapp_mode: &'static str,
    /// The host of `whatsapp.api_base_url` (Meta, a BSP, a simulator).
    pub whatsapp_host: String,
    pub token: TokenState,
    pub patients: usize,
    pub pms_last_message_at: Option<Timestamp>,
    pub pms_outbox_depth: usize,
    pub pms_outbox_oldest: Option<Timestamp>,
    pub pms_dead_letters: usize,
    pub pms_sender_configured: bool,
    pub wa_outbox_depth: usize,
    /// Not in `/v1/status` (its shape is fixed); the dashboard shows it.
    pub wa_outbox_oldest: Option<Timestamp>,
    pub wa_dead_letters: usize,
    pub wa_paused: bool,
    pub webhook_configured: bool,
    pub key_generation: u32,
    pub master_key_age_days: Option<i64>,
    pub audit_seq: u64,
    pub reads_waiting: usize,
    pub data_dir: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub events_cursor: u64,
    /// What needs an operator, in plain words (no PHI).
    pub warnings: Vec<String>,
}

/// Reads everything `status` reports. Status must answer when storage does
/// not (it is how IT learns why): a failed read leaves the figure out, and
/// the storage warning says why.
pub fn check(state: &ApiState) -> Health {
    let now = state.clock.now();
    let vault = &state.vault;
    let health = &state.health;
    let mut warnings: Vec<String> = Vec::new();

    let pms_outbox_depth = vault.count(Tree::PmsOutbox);
    let pms_outbox_oldest =
        crate::queue::oldest_enqueued(vault, &crate::queue::PMS_OUTBOX).unwrap_or(None);
    if let Some(oldest) = pms_outbox_oldest {
        if now.duration_since(oldest).as_secs() > 3600 {
            warnings.push("messages for the PMS have waited over an hour (is the PMS reachable? see pms.outbound_endpoint)".to_owned());
        }
    }
    if pms_outbox_depth > 0 && !health.pms_sender_configured {
        warnings.push(
            "messages for the PMS are queued but pms.outbound_endpoint is not set".to_owned(),
        );
    }
    let pms_dead_letters = vault.count(Tree::PmsDeadLetters);
    if pms_dead_letters > 0 {
        warnings.push(format!(
            "{pms_dead_letters} message(s) refused by the PMS (dead letters)"
        ));
    }
    let (free_bytes, total_bytes) = disk(health);
    if total_bytes > 0 && (free_bytes < 1 << 30 || free_bytes.saturating_mul(20) < total_bytes) {
        warnings.push(format!(
            "disk almost full: {} MiB free for the data directory",
            free_bytes >> 20
        ));
    }
    let master_key_age_days = master_key(health, now, &mut warnings);
    vault_warnings(vault, &mut warnings);
    let wa = health.whatsapp.get();
    let wa_outbox_depth = vault.count(Tree::WaOutbox);
    let wa_dead_letters = vault.count(Tree::WaDeadLetters);
    match wa {
        None => warnings.push(
            "the WhatsApp outbox is not running (see the log; messages stay queued)".to_owned(),
        ),
        Some(h) if h.paused() => warnings.push(
            "the WhatsApp outbox is paused: Meta rejected the access token (190); replace whatsapp.token_file (sending resumes when it changes, or on SIGHUP)".to_owned(),
        ),
        Some(_) => {}
    }
    if wa_dead_letters > 0 {
        warnings.push(format!(
            "{wa_dead_letters} WhatsApp message(s) refused by Meta or out of attempts (dead letters)"
        ));
    }
    let token = match wa {
        None => TokenState::Unknown,
        Some(h) if h.dry_run => TokenState::None,
        Some(h) if !h.paused() => TokenState::Ok,
        // Paused: a token file that cannot be opened now (or is empty) is
        // missing; one that can was refused by Meta. Only opened, never
        // read: the secret stays out of this path.
        Some(_) => match &health.whatsapp_token_file {
            Some(p)
                if std::fs::File::open(p)
                    .and_then(|f| f.metadata())
                    .is_ok_and(|m| m.len() > 0) =>
            {
                TokenState::Rejected
            }
            _ => TokenState::Missing,
        },
    };
    Health {
        now,
        uptime_seconds: now.duration_since(state.started).as_secs(),
        whatsapp_mode: match wa {
            Some(h) if !h.dry_run => "live",
            _ => "dry-run",
        },
        whatsapp_host: health.whatsapp_host.clone(),
        token,
        patients: vault.patient_count(),
        pms_last_message_at: health.ingest.last_message_at(),
        pms_outbox_depth,
        pms_outbox_oldest,
        pms_dead_letters,
        pms_sender_configured: health.pms_sender_configured,
        wa_outbox_depth,
        wa_outbox_oldest: crate::queue::oldest_enqueued(vault, &crate::whatsapp::outbox::WA_OUTBOX)
            .unwrap_or(None),
        wa_dead_letters,
        wa_paused: wa.is_some_and(|h| h.paused()),
        webhook_configured: health.webhook_configured,
        key_generation: vault.key_generation(),
        master_key_age_days,
        audit_seq: vault.audit_seq(),
        reads_waiting: state.read_audit.waiting(),
        data_dir: health.data_dir.display().to_string(),
        free_bytes,
        total_bytes,
        // The durable cursor: what a feed reader can actually get.
        events_cursor: *vault.events_watch().borrow(),
        warnings,
    }
}

fn disk(health: &HealthSources) -> (u64, u64) {
    rustix::fs::statvfs(&health.data_dir)
        .map(|s| {
            (
                s.f_bavail.saturating_mul(s.f_frsize),
                s.f_blocks.saturating_mul(s.f_frsize),
            )
        })
        .unwrap_or((0, 0))
}

/// The master key file's age in days, warning when others may read it.
fn master_key(health: &HealthSources, now: Timestamp, warnings: &mut Vec<String>) -> Option<i64> {
    use std::os::unix::fs::PermissionsExt;
    let path = health.master_key_file.as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        warnings.push(format!(
            "the master key file {} is readable by group or others: chmod 600 it",
            path.display()
        ));
    }
    meta.modified()
        .ok()
        .and_then(|m| Timestamp::try_from(m).ok())
        .map(|m| now.duration_since(m).as_secs() / 86_400)
}

fn vault_warnings(vault: &Vault, warnings: &mut Vec<String>) {
    if let Some(why) = vault.storage_failure() {
        warnings.push(format!(
            "storage failed, writes are refused until it recovers by itself (free disk space for the data directory): {}",
            crate::logging::clean(&why)
        ));
    }
    if let Some(why) = vault.audit_damage() {
        warnings.push(format!("audit log damaged: {why}"));
    }
    if let Some(why) = vault.keyring_mirror_error() {
        warnings.push(format!("the keyring copy is stale: {why}"));
    }
    if vault.rotation_pending() {
        warnings.push("a master key rotation is in progress".to_owned());
    }
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.warnings.is_empty()
    }

    /// The body of `GET /v1/status` (documented in docs/api.md; its shape
    /// does not change with the dashboard's extra figures).
    pub fn to_json(&self) -> Value {
        json!({
            "version": crate::service::VERSION,
            "uptime_seconds": self.uptime_seconds,
            "whatsapp_mode": self.whatsapp_mode,
            "patients": self.patients,
            "pms": {
                "last_message_at": self.pms_last_message_at.map(|t| t.to_string()),
                "outbox_depth": self.pms_outbox_depth,
                "outbox_oldest": self.pms_outbox_oldest.map(|t| t.to_string()),
                "dead_letters": self.pms_dead_letters,
                "sender": if self.pms_sender_configured { "configured" } else { "not configured" },
            },
            "whatsapp": {
                "outbox_depth": self.wa_outbox_depth,
                "dead_letters": self.wa_dead_letters,
                "paused": self.wa_paused,
                "webhook": if self.webhook_configured { "configured" } else { "not configured" },
            },
            "keys": {"generation": self.key_generation, "master_key_age_days": self.master_key_age_days},
            "audit": {"seq": self.audit_seq, "reads_waiting": self.reads_waiting},
            "storage": {"data_dir": self.data_dir, "free_bytes": self.free_bytes, "total_bytes": self.total_bytes},
            "events_cursor": self.events_cursor,
            "warnings": self.warnings,
            "healthy": self.healthy(),
        })
    }
}
