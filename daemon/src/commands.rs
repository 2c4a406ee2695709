//! Domain commands and the one place that applies them.
//!
//! Every input (an HL7 message, a local API request) becomes one or more
//! commands; [`apply`] turns them into a single vault transaction with an
//! audit entry per change and an idempotency guard, commits it durably, and
//! only then does the caller acknowledge.

use crate::audit::AuditDraft;
use crate::model::{
    Appointment, Consent, ConsentSource, ConsentState, LabResult, Patient, PatientId, Slot,
};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError};
use jiff::Timestamp;

#[derive(Debug, Clone)]
pub enum Command {
    /// The full registration (ADT, the API): replaces what we hold.
    UpsertPatient(Box<Patient>),
    /// A PID carried along in a scheduling or result message: fills in what
    /// it has, keeps what it lacks (a SIU's PID must not clear the phone or
    /// the no-outreach flag an ADT set).
    UpdatePatientFromContext(Box<Patient>),
    /// ADT^A40: `merged` is folded into `survivor`.
    MergePatients {
        survivor: PatientId,
        merged: PatientId,
    },
    UpsertAppointment(Box<Appointment>),
    /// A result document; a later version of the same order replaces it.
    UpsertResult(Box<LabResult>),
    ReplaceSlots(Vec<Slot>),
    SetConsent {
        patient: PatientId,
        state: ConsentState,
        source: ConsentSource,
    },
}

/// Who sent the commands and under which idempotency key.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Audit actor, e.g. `pms:LABSYS|CLINIC` or `api:uid=0`.
    pub actor: String,
    /// Already a blind index: a repeat with the same key is not applied.
    pub idempotency_key: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The idempotency key was seen before: acknowledged, not applied again.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("unknown patient {0}")]
    UnknownPatient(PatientId),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// `known` updated with what `context` carries: names, birth date, phone
/// and language when present; flags (deceased, no outreach) only ever set.
fn fill_in(mut known: Patient, context: &Patient) -> Patient {
    if !context.family_name.is_empty() {
        known.family_name.clone_from(&context.family_name);
    }
    if !context.given_name.is_empty() {
        known.given_name.clone_from(&context.given_name);
    }
    if context.birth_date.is_some() {
        known.birth_date = context.birth_date;
    }
    if context.phone.is_some() {
        known.phone.clone_from(&context.phone);
    }
    if context.language.is_some() {
        known.language.clone_from(&context.language);
    }
    known.deceased |= context.deceased;
    known.protected |= context.protected;
    known
}

/// Builds the transaction for `commands` (reads current state as needed).
pub fn build(
    vault: &Vault,
    commands: &[Command],
    origin: &Origin,
    now: Timestamp,
) -> Result<Txn, CommandError> {
    let mut txn = Txn::new(now);
    if let Some(key) = &origin.idempotency_key {
        txn.require_absent(Tree::Ingested, key.clone());
        txn.put_json(Tree::Ingested, key.clone(), Owner::System, &now)?;
    }
    // Patients created earlier in this same batch count as known.
    let mut fresh: Vec<PatientId> = Vec::new();
    // Patients as this batch leaves them (a merge builds on the survivor's
    // update from the same message).
    let mut staged_patients: std::collections::HashMap<PatientId, Patient> =
        std::collections::HashMap::new();
    let known =
        |id: PatientId, fresh: &[PatientId]| fresh.contains(&id) || vault.has_patient_key(id);
    for cmd in commands {
        match cmd {
            Command::UpsertPatient(p) => {
                let staged = vault.patient_upsert_txn(p, &origin.actor, now)?;
                txn.extend(staged);
                fresh.push(p.id);
                staged_patients.insert(p.id, (**p).clone());
            }
            Command::UpdatePatientFromContext(p) => {
                let merged = match vault.get_patient(p.id)? {
                    Some(known) => fill_in(known, p),
                    None => (**p).clone(),
                };
                let staged = vault.patient_upsert_txn(&merged, &origin.actor, now)?;
                txn.extend(staged);
                fresh.push(p.id);
                staged_patients.insert(p.id, merged);
            }
            Command::MergePatients { survivor, merged } => {
                if !known(*survivor, &fresh) {
                    return Err(CommandError::UnknownPatient(*survivor));
                }
                let moved = vault.stage_merge(&mut txn, *merged, *survivor)?;
                // The merged record goes, with its lookups, so a phone or MRN
                // search no longer finds it. Its key stays: nothing of the
                // survivor is sealed with it, and erasure finds it by id.
                if let Some(old) = vault.get_patient(*merged)? {
                    for key in vault.patient_index_keys(&old) {
                        txn.remove(Tree::PatientIndex, key);
                    }
                    // "Do not contact" and "deceased" survive the merge.
                    let base = match staged_patients.get(survivor) {
                        Some(p) => Some(p.clone()),
                        None => vault.get_patient(*survivor)?,
                    };
                    if let Some(mut keep) = base {
                        if (old.protected && !keep.protected) || (old.deceased && !keep.deceased) {
                            keep.protected |= old.protected;
                            keep.deceased |= old.deceased;
                            txn.extend(vault.patient_upsert_txn(&keep, &origin.actor, now)?);
                            staged_patients.insert(*survivor, keep);
                        }
                    }
                }
                txn.remove(Tree::Patients, merged.0);
                txn.audit(
                    AuditDraft::new(&origin.actor, "patient.merge")
                        .subject(survivor.to_string())
                        .detail("merged", merged.to_string())
                        .detail("records_moved", moved.to_string()),
                );
            }
            Command::UpsertAppointment(a) => {
                if !known(a.patient, &fresh) {
                    return Err(CommandError::UnknownPatient(a.patient));
                }
                let previous = vault.get_appointment(&a.id)?;
                let mut a = (**a).clone();
                if let Some(prev) = &previous {
                    // A confirmation we recorded survives a PMS update that
                    // does not change the time.
                    a.patient_confirmed = prev.patient_confirmed
                        && prev.start == a.start
                        && prev.patient == a.patient;
                    if prev.patient != a.patient {
                        vault.stage_unlink(
                            &mut txn,
                            prev.patient,
                            crate::vault::records::LinkKind::Appointment,
                            &vault.appointment_key(&a.id),
                        );
                    }
                }
                vault.stage_appointment(&mut txn, &a)?;
                txn.audit(
                    AuditDraft::new(
                        &origin.actor,
                        if previous.is_some() {
                            "appointment.update"
                        } else {
                            "appointment.create"
                        },
                    )
                    .subject(a.patient.to_string())
                    .detail("status", a.status.fhir_code()),
                );
            }
            Command::UpsertResult(r) => {
                if !known(r.patient, &fresh) {
                    return Err(CommandError::UnknownPatient(r.patient));
                }
                let mut r = (**r).clone();
                if let Some(prev) = vault.get_result(&r.order_number)? {
                    r.version = prev.version + 1;
                    if prev.patient != r.patient {
                        vault.stage_unlink(
                            &mut txn,
                            prev.patient,
                            crate::vault::records::LinkKind::Result,
                            &vault.result_key(&r.order_number),
                        );
                    }
                }
                vault.stage_result(&mut txn, &r)?;
                txn.audit(
                    AuditDraft::new(&origin.actor, "result.receive")
                        .subject(r.patient.to_string())
                        .detail("version", r.version.to_string())
                        .detail("pdf_bytes", r.pdf.len().to_string()),
                );
            }
            Command::ReplaceSlots(slots) => {
                vault.stage_replace_slots(&mut txn, slots)?;
                txn.audit(
                    AuditDraft::new(&origin.actor, "slots.replace")
                        .detail("count", slots.len().to_string()),
                );
            }
            Command::SetConsent {
                patient,
                state,
                source,
            } => {
                if !known(*patient, &fresh) {
                    return Err(CommandError::UnknownPatient(*patient));
                }
                let consent = Consent {
                    patient: *patient,
                    state: *state,
                    source: *source,
                    at: now,
                };
                vault.stage_consent(&mut txn, &consent)?;
                txn.audit(
                    AuditDraft::new(&origin.actor, "consent.set")
                        .subject(patient.to_string())
                        .detail("state", format!("{state:?}"))
                        .detail("source", format!("{source:?}")),
                );
            }
        }
    }
    Ok(txn)
}

/// Applies `commands` in one durable transaction.
pub async fn apply(
    vault: &Vault,
    commands: &[Command],
    origin: &Origin,
    now: Timestamp,
) -> Result<Applied, CommandError> {
    if let Some(key) = &origin.idempotency_key {
        // Fast path for retransmissions: no need to rebuild anything.
        if vault.get(Tree::Ingested, key)?.is_some() {
            return Ok(Applied::Duplicate);
        }
    }
    let txn = build(vault, commands, origin, now)?;
    let receipt = vault.commit_async(txn).await?;
    Ok(if receipt.duplicate {
        Applied::Duplicate
    } else {
        Applied::Done
    })
}
