//! A patient's inbound media (image, document, audio, video, sticker).
//!
//! The webhook's commit that stores the message also stores a *pending*
//! media record and a fetch timer, so a crash before the fetch still
//! fetches after the restart. The media worker (`whatsapp::media_worker`)
//! then asks Meta for a fresh URL (`GET /{media-id}`: a URL lives only 5
//! minutes), downloads at most `whatsapp.max_inbound_media_bytes`, checks
//! Meta's sha256, and seals the bytes into [`Tree::WaMedia`] under the
//! patient's key: they are never written in the clear, not even to a
//! temporary file. The bytes are purged `whatsapp.inbound_media_retention`
//! after the message came in (a timer, committed with the fetched bytes).
//! In dry-run nothing connects: the record says `dry_run`.
//!
//! A sender who matches no patient gets nothing fetched: there is no key
//! to seal it under (see `webhook::apply`).

use super::payload::Content;
use crate::model::{Event, EventKind, PatientId};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::whatsapp::media::{key, K_INBOUND, K_INBOUND_META, K_INBOUND_REF};
use crate::whatsapp::media_worker::{stage_timer, Task, TimerKind};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What became of a patient's inbound media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MediaState {
    /// Not fetched yet (a fetch timer is due).
    Pending,
    /// Sealed in the vault until `purge_at`.
    Fetched {
        size: u64,
        /// Hex SHA-256 of the bytes.
        sha256: String,
        fetched_at: Timestamp,
        purge_at: Timestamp,
    },
    /// Dry-run: nothing connected, nothing fetched.
    DryRun,
    /// Not kept: over the size limit, a checksum mismatch, Meta refused.
    Refused { reason: String },
    /// Fetched, then purged at the end of its retention.
    Purged { at: Timestamp },
}

/// The record of one inbound media message (sealed under the patient's key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundMedia {
    pub patient: PatientId,
    /// `image`, `document`, `audio`, `video`, `sticker`.
    pub kind: String,
    pub mime_type: Option<String>,
    pub received_at: Timestamp,
    /// The message's PHI-free feed reference (`Vault::wa_message_ref`).
    pub reference: String,
    pub state: MediaState,
}

pub(crate) fn wamid_blind(vault: &Vault, wamid: &str) -> [u8; 32] {
    vault.blind_index("wa-media", wamid)
}

/// Stages the pending record and the fetch timer of a media message from
/// `patient` (in the webhook's own commit). Other content: nothing.
pub fn stage_inbound(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    wamid: &str,
    content: &Content,
    at: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    let Content::Media {
        media_id,
        mime_type,
        sha256,
        ..
    } = content
    else {
        return Ok(());
    };
    if media_id.is_empty() || !media_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Ok(());
    }
    let blind = wamid_blind(vault, wamid);
    let reference = vault.wa_message_ref(wamid);
    let record = InboundMedia {
        patient,
        kind: content.kind().to_owned(),
        mime_type: mime_type.clone(),
        received_at: at,
        reference: reference.clone(),
        state: MediaState::Pending,
    };
    txn.put_json(
        Tree::WaMedia,
        key(K_INBOUND_META, &blind),
        Owner::Patient(patient),
        &record,
    )?;
    txn.put_json(
        Tree::WaMedia,
        ref_key(vault, &reference),
        Owner::Patient(patient),
        &hex::encode(blind),
    )?;
    let task = Task::Fetch {
        wamid_key: hex::encode(blind),
        media_id: media_id.clone(),
        patient,
        sha256: sha256.clone(),
        attempts: 0,
    };
    stage_timer(
        txn,
        now,
        TimerKind::Fetch,
        &blind,
        Owner::Patient(patient),
        &task,
    )
}

fn ref_key(vault: &Vault, reference: &str) -> Vec<u8> {
    key(K_INBOUND_REF, &vault.blind_index("wa-media-ref", reference))
}

impl Vault {
    /// The media record of the inbound message whose feed reference is
    /// `reference` (the conversation log's `message_ref`), with its bytes
    /// once fetched (PHI: the caller audits the read). None: no media,
    /// unknown, or the patient was erased.
    pub fn wa_inbound_media_by_ref(
        &self,
        reference: &str,
    ) -> VaultResult<Option<(InboundMedia, Option<Vec<u8>>)>> {
        let Some((blind, record)) = self.inbound_media_record(reference)? else {
            return Ok(None);
        };
        let bytes = match self.get(Tree::WaMedia, &key(K_INBOUND, &blind)) {
            Ok(b) => b,
            Err(VaultError::KeyUnavailable { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(Some((record, bytes)))
    }

    /// The record alone of the media an inbound message's reference names
    /// (what a page needs to say "photo" or "purged" without opening it).
    pub fn wa_inbound_media_record_by_ref(
        &self,
        reference: &str,
    ) -> VaultResult<Option<InboundMedia>> {
        Ok(self.inbound_media_record(reference)?.map(|(_, r)| r))
    }

    fn inbound_media_record(
        &self,
        reference: &str,
    ) -> VaultResult<Option<(Vec<u8>, InboundMedia)>> {
        let hex_blind = match self.get_json::<String>(Tree::WaMedia, &ref_key(self, reference)) {
            Ok(Some(h)) => h,
            Ok(None) | Err(VaultError::KeyUnavailable { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(blind) = hex::decode(hex_blind) else {
            return Ok(None);
        };
        match self.get_json::<InboundMedia>(Tree::WaMedia, &key(K_INBOUND_META, &blind)) {
            Ok(Some(r)) => Ok(Some((blind, r))),
            Ok(None) | Err(VaultError::KeyUnavailable { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The media record of an inbound message (None: no media, unknown,
    /// or the patient was erased).
    pub fn wa_inbound_media(&self, wamid: &str) -> VaultResult<Option<InboundMedia>> {
        let k = key(K_INBOUND_META, &wamid_blind(self, wamid));
        match self.get_json(Tree::WaMedia, &k) {
            Err(VaultError::KeyUnavailable { .. }) => Ok(None),
            other => other,
        }
    }

    /// The fetched bytes of an inbound message's media (PHI: the caller
    /// audits the read).
    pub fn wa_inbound_media_bytes(&self, wamid: &str) -> VaultResult<Option<Vec<u8>>> {
        let k = key(K_INBOUND, &wamid_blind(self, wamid));
        match self.get(Tree::WaMedia, &k) {
            Err(VaultError::KeyUnavailable { .. }) => Ok(None),
            other => other,
        }
    }
}

/// How a fetch ended, as the worker applies it.
pub(crate) enum Fetched {
    /// The bytes, their hex SHA-256.
    Bytes(zeroize::Zeroizing<Vec<u8>>, String),
    DryRun,
    Refused(String),
}

/// Applies a finished fetch (on the writer). Nothing happens if the
/// record is gone or unreadable (the patient was erased meanwhile).
pub(crate) fn stage_fetched(
    vault: &Vault,
    txn: &mut Txn,
    blind: &[u8],
    outcome: Fetched,
    now: Timestamp,
    retention: jiff::SignedDuration,
) -> VaultResult<()> {
    let meta_key = key(K_INBOUND_META, blind);
    let mut record = match vault.get_json::<InboundMedia>(Tree::WaMedia, &meta_key) {
        Ok(Some(r)) => r,
        Ok(None) | Err(VaultError::KeyUnavailable { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if record.state != MediaState::Pending {
        return Ok(());
    }
    let owner = Owner::Patient(record.patient);
    match outcome {
        Fetched::Bytes(mut bytes, sha256) => {
            let purge_at = record
                .received_at
                .checked_add(retention)
                .unwrap_or(record.received_at);
            let size = bytes.len() as u64;
            record.state = MediaState::Fetched {
                size,
                sha256,
                fetched_at: now,
                purge_at,
            };
            // Moved, not copied: the txn holds it zeroizing until sealed.
            let plain = std::mem::take(&mut *bytes);
            txn.put(Tree::WaMedia, key(K_INBOUND, blind), owner, plain);
            let task = Task::Purge {
                wamid_key: hex::encode(blind),
            };
            stage_timer(txn, purge_at, TimerKind::Purge, blind, Owner::System, &task)?;
        }
        Fetched::DryRun => record.state = MediaState::DryRun,
        Fetched::Refused(reason) => {
            let mut details = BTreeMap::from([
                ("reason".to_owned(), reason.clone()),
                ("type".to_owned(), record.kind.clone()),
                ("ref".to_owned(), record.reference.clone()),
            ]);
            details.retain(|_, v| !v.is_empty());
            vault.stage_event(
                txn,
                &Event {
                    kind: EventKind::WhatsappMediaRefused,
                    time: now,
                    patient: Some(record.patient),
                    appointment: None,
                    slot: None,
                    details,
                },
            )?;
            record.state = MediaState::Refused { reason };
        }
    }
    let what = match &record.state {
        MediaState::Fetched { .. } => "fetched",
        MediaState::DryRun => "not-fetched-dry-run",
        _ => "refused",
    };
    txn.audit(audit(what, &record));
    txn.put_json(Tree::WaMedia, meta_key, owner, &record)
}

/// The audit entry of what happened to a patient's media (PHI-free).
fn audit(what: &str, record: &InboundMedia) -> crate::audit::AuditDraft {
    let mut draft = crate::audit::AuditDraft::new("system", format!("whatsapp.media.{what}"))
        .detail("type", record.kind.clone())
        .detail("ref", record.reference.clone());
    draft.subject = Some(record.patient.to_string());
    draft
}

/// Purges fetched bytes at the end of their retention (on the writer).
pub(crate) fn stage_purge(
    vault: &Vault,
    txn: &mut Txn,
    blind: &[u8],
    now: Timestamp,
) -> VaultResult<()> {
    txn.remove(Tree::WaMedia, key(K_INBOUND, blind));
    let meta_key = key(K_INBOUND_META, blind);
    match vault.get_json::<InboundMedia>(Tree::WaMedia, &meta_key) {
        Ok(Some(mut r)) => {
            r.state = MediaState::Purged { at: now };
            txn.audit(audit("purged", &r));
            txn.put_json(Tree::WaMedia, meta_key, Owner::Patient(r.patient), &r)
        }
        // Erased meanwhile: the record is unreadable for good; it goes too.
        Err(VaultError::KeyUnavailable { .. }) => {
            txn.remove(Tree::WaMedia, meta_key);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    }
}
