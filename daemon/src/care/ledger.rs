//! The consent ledger: every change of a patient's WhatsApp consent, with
//! its source (PMS field, chat keyword, staff through the API), who made it
//! and when. Append-only; each entry sealed under the patient's key in
//! `Tree::Consents` next to the current state (key = patient id + time +
//! counter, so a prefix scan reads one patient's history in order), and
//! removed with the patient. Exported by `GET /v1/patients/{id}/consent/history`.

use crate::model::{Consent, ConsentSource, ConsentState, PatientId};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub state: ConsentState,
    pub source: ConsentSource,
    pub at: Timestamp,
    /// Who: `pms:…` (the sending system), `patient` (a chat keyword),
    /// `api:uid=…` / `api:cert=…` (the staff member's peer identity).
    pub actor: String,
}

/// The actor when the caller names none.
pub fn default_actor(source: ConsentSource) -> &'static str {
    match source {
        ConsentSource::Pms => "pms",
        ConsentSource::Chat => "patient",
        ConsentSource::Staff => "staff",
    }
}

/// Orders entries of one instant in the order they were staged.
static COUNTER: AtomicU32 = AtomicU32::new(0);

const KEY_LEN: usize = 16 + 8 + 4;

fn key(patient: PatientId, at: Timestamp) -> Vec<u8> {
    let nanos = u64::try_from(at.as_nanosecond()).unwrap_or(0);
    let mut k = patient.0.to_vec();
    k.extend_from_slice(&nanos.to_be_bytes());
    k.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    k
}

/// Appends `consent` (by `actor`) to the patient's ledger in `txn`.
pub fn stage(txn: &mut Txn, consent: &Consent, actor: &str) -> VaultResult<()> {
    let entry = Entry {
        state: consent.state,
        source: consent.source,
        at: consent.at,
        actor: actor.to_owned(),
    };
    txn.put_json(
        Tree::Consents,
        key(consent.patient, consent.at),
        Owner::Patient(consent.patient),
        &entry,
    )
}

fn entry_keys(vault: &Vault, patient: PatientId) -> VaultResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for r in vault.scan_prefix(Tree::Consents, &patient.0) {
        let (k, v) = match r {
            Ok(kv) => kv,
            // An erased patient has no history to show.
            Err(VaultError::KeyUnavailable { .. }) => continue,
            Err(e) => return Err(e),
        };
        if k.len() == KEY_LEN {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// The patient's consent changes, oldest first (an entry that no longer
/// decodes is left out).
pub fn history(vault: &Vault, patient: PatientId) -> VaultResult<Vec<Entry>> {
    Ok(entry_keys(vault, patient)?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// Removes the patient's ledger in `txn` (erasure).
pub fn stage_remove(vault: &Vault, txn: &mut Txn, patient: PatientId) -> VaultResult<()> {
    for (k, _) in entry_keys(vault, patient)? {
        txn.remove(Tree::Consents, k);
    }
    Ok(())
}

/// Moves `from`'s ledger to `to` in `txn` (a merge: the survivor's history
/// holds both, in time order, sealed under the survivor's key).
pub fn stage_move(vault: &Vault, txn: &mut Txn, from: PatientId, to: PatientId) -> VaultResult<()> {
    for (k, v) in entry_keys(vault, from)? {
        txn.remove(Tree::Consents, k);
        if let Ok(entry) = serde_json::from_slice::<Entry>(&v) {
            txn.put_json(
                Tree::Consents,
                key(to, entry.at),
                Owner::Patient(to),
                &entry,
            )?;
        }
    }
    Ok(())
}
