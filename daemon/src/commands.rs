//! Domain commands and the one place that applies them.
//!
//! Every input (an HL7 message, a local API request) becomes one or more
//! commands; [`apply`] hands them to the vault's writer, which loads the state
//! they need, decides ([`build`]), and commits the resulting transaction —
//! with an audit entry per change and the idempotency guard — all on the one
//! writer thread, so that no other input can come between the reads and the
//! commit. Only once the commit is durable does the caller acknowledge.

use crate::audit::AuditDraft;
use crate::model::{
    Appointment, Consent, ConsentSource, ConsentState, LabResult, Patient, PatientId, ResultStatus,
    Slot,
};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError};
use jiff::Timestamp;

#[derive(Debug, Clone, serde::Serialize)]
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
    /// A verified WhatsApp webhook call (see `webhook::apply`).
    Webhook(Box<crate::webhook::apply::Batch>),
    /// A staff member's text in a conversation (the inbox API).
    StaffReply {
        conversation: [u8; 16],
        text: crate::care::conversation::StaffText,
    },
    /// Staff hand a conversation back to the bot.
    CloseConversation {
        conversation: [u8; 16],
    },
    /// An operator puts a dead letter back in its queue (the dashboard's
    /// retry button, the local API).
    RetryDeadLetter {
        queue: DeadQueue,
        id: u64,
    },
}

/// The queues whose dead letters can be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadQueue {
    Pms,
    Whatsapp,
}

impl DeadQueue {
    /// `pms` or `whatsapp` (the URL segment).
    pub fn parse(s: &str) -> Option<DeadQueue> {
        match s {
            "pms" => Some(DeadQueue::Pms),
            "whatsapp" => Some(DeadQueue::Whatsapp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeadQueue::Pms => "pms",
            DeadQueue::Whatsapp => "whatsapp",
        }
    }
}

/// Who sent the commands and under which idempotency key.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Audit actor, e.g. `pms:LABSYS|CLINIC` or `api:uid=0`.
    pub actor: String,
    /// Already a blind index: a repeat with the same key (and the same
    /// content) is not applied.
    pub idempotency_key: Option<Vec<u8>>,
    /// What the same key with different content means.
    pub on_reuse: KeyReuse,
    /// How long a key is remembered; a key older than this is new again.
    pub key_retention: jiff::SignedDuration,
}

/// The default time an idempotency key is remembered.
pub const DEFAULT_KEY_RETENTION: jiff::SignedDuration = jiff::SignedDuration::from_hours(30 * 24);

impl Origin {
    /// An origin without an idempotency key.
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            idempotency_key: None,
            on_reuse: KeyReuse::Reject,
            key_retention: DEFAULT_KEY_RETENTION,
        }
    }

    pub fn with_key(mut self, key: Vec<u8>, on_reuse: KeyReuse) -> Self {
        self.idempotency_key = Some(key);
        self.on_reuse = on_reuse;
        self
    }
}

/// A known idempotency key arrives with different content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReuse {
    /// Apply it as a new message (HL7: senders recycle MSH-10 counters).
    Reapply,
    /// Refuse it (API: the client reused a key for another request).
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The idempotency key was seen before with the same content:
    /// acknowledged (once the original is durable), not applied again.
    Duplicate,
    /// The key was seen before with other content and [`KeyReuse::Reject`]:
    /// nothing was applied.
    KeyConflict,
}

/// What the idempotency tree remembers of an applied input.
#[derive(serde::Serialize, serde::Deserialize)]
struct Seen {
    at: Timestamp,
    /// SHA-256 of the commands, hex.
    digest: String,
}

impl Seen {
    /// Older entries hold only the time: they match any content.
    fn decode(bytes: &[u8]) -> Option<Seen> {
        serde_json::from_slice::<Seen>(bytes).ok().or_else(|| {
            serde_json::from_slice::<Timestamp>(bytes)
                .ok()
                .map(|at| Seen {
                    at,
                    digest: String::new(),
                })
        })
    }
}

/// A digest of what the commands say, so that a reused key with other
/// content is told apart from a retransmission.
fn digest(commands: &[Command]) -> Result<String, CommandError> {
    let json = serde_json::to_vec(commands).map_err(|_| VaultError::Encode)?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &json,
    )))
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("unknown patient {0}")]
    UnknownPatient(PatientId),
    #[error(transparent)]
    Conversation(#[from] crate::care::conversation::shell::ConversationError),
    #[error(transparent)]
    DeadLetter(#[from] crate::queue::dead::RetryError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// The name the API uses for a value (`opted-in`, `pms`), for audit details.
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
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

/// Decides what `commands` do and stages it in one txn. Runs on the vault's
/// writer (see [`apply`]): what it reads cannot change before the commit.
fn decide(
    vault: &Vault,
    commands: &[Command],
    origin: &Origin,
    now: Timestamp,
) -> Result<(Txn, Applied), CommandError> {
    let Some(key) = &origin.idempotency_key else {
        return Ok((build(vault, commands, origin, now)?, Applied::Done));
    };
    let digest = digest(commands)?;
    let seen = vault
        .get(Tree::Ingested, key)?
        .as_deref()
        .and_then(Seen::decode)
        .filter(|s| now.duration_since(s.at) < origin.key_retention);
    if let Some(seen) = seen {
        if seen.digest.is_empty() || seen.digest == digest {
            // The original is applied; the answer waits for the flush that
            // makes it durable (it may be in this very batch).
            let mut txn = Txn::new(now);
            txn.wait_for_flush();
            return Ok((txn, Applied::Duplicate));
        }
        match origin.on_reuse {
            KeyReuse::Reject => return Ok((Txn::new(now), Applied::KeyConflict)),
            KeyReuse::Reapply => {
                tracing::warn!(actor = %crate::logging::clean(&origin.actor), "a reused message control id with new content is applied as a new message");
            }
        }
    }
    let mut txn = build(vault, commands, origin, now)?;
    txn.put_json(
        Tree::Ingested,
        key.clone(),
        Owner::System,
        &Seen { at: now, digest },
    )?;
    Ok((txn, Applied::Done))
}

/// Builds the transaction for `commands` (reads current state as needed).
fn build(
    vault: &Vault,
    commands: &[Command],
    origin: &Origin,
    now: Timestamp,
) -> Result<Txn, CommandError> {
    let mut txn = Txn::new(now);
    // Patients created earlier in this same batch count as known.
    let mut fresh: Vec<PatientId> = Vec::new();
    // Patients as this batch leaves them (a merge builds on the survivor's
    // update from the same message).
    let mut staged_patients: std::collections::HashMap<PatientId, Patient> =
        std::collections::HashMap::new();
    let known =
        |id: PatientId, fresh: &[PatientId]| fresh.contains(&id) || vault.has_patient_key(id);
    // Workflow states as this batch leaves them (`care`).
    let mut care = crate::care::shell::Session::default();
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
                // Reminder workflows follow their appointments (read before
                // the merge is staged: the store still links them to `merged`).
                let moving = match vault.care() {
                    Some(_) => vault.appointments_of(*merged)?,
                    None => Vec::new(),
                };
                let moved = vault.stage_merge(&mut txn, *merged, *survivor)?;
                for mut a in moving {
                    a.patient = *survivor;
                    crate::care::shell::on_appointment(vault, &mut txn, &mut care, &a, now)?;
                }
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
                crate::care::shell::on_appointment(vault, &mut txn, &mut care, &a, now)?;
                crate::care::booking::shell::on_appointment(vault, &mut txn, &a, now)?;
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
                    if r.withdrawn {
                        // Whether the patient already had it stays known.
                        r.delivered = prev.delivered;
                    } else if prev.withdrawn && r.status != ResultStatus::Corrected {
                        // A withdrawn result comes back only as a correction
                        // (status C): a resend of the final it replaced must
                        // not make it deliverable again (patient safety).
                        tracing::info!("a result resent after its withdrawal stays withdrawn (send a correction to reissue it)");
                        r.withdrawn = true;
                        r.pdf.clear();
                        r.delivered = prev.delivered;
                    }
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
                crate::care::results_shell::on_result(vault, &mut txn, &mut care.results, &r, now)?;
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
                stage_consent(vault, &mut txn, &consent, &origin.actor)?;
                txn.audit(
                    AuditDraft::new(&origin.actor, "consent.set")
                        .subject(patient.to_string())
                        .detail("state", wire_name(state))
                        .detail("source", wire_name(source)),
                );
            }
            Command::Webhook(batch) => {
                crate::webhook::apply::stage(vault, &mut txn, batch, now)?;
            }
            Command::StaffReply { conversation, text } => {
                use crate::care::conversation::shell;
                shell::staff_reply(vault, &mut txn, conversation, &text.0, &origin.actor, now)?;
            }
            Command::CloseConversation { conversation } => {
                use crate::care::conversation::shell;
                shell::close(vault, &mut txn, conversation, &origin.actor, now)?;
            }
            Command::RetryDeadLetter { queue, id } => {
                use crate::queue::dead::stage_retry;
                match queue {
                    DeadQueue::Pms => stage_retry::<crate::pms::outbound::Outgoing>(
                        vault,
                        &mut txn,
                        &crate::queue::PMS_OUTBOX,
                        *id,
                        &origin.actor,
                        now,
                    )?,
                    DeadQueue::Whatsapp => stage_retry::<crate::whatsapp::outbox::WaItem>(
                        vault,
                        &mut txn,
                        &crate::whatsapp::outbox::WA_OUTBOX,
                        *id,
                        &origin.actor,
                        now,
                    )?,
                }
            }
        }
    }
    Ok(txn)
}

/// Records a consent change. One told to staff that changes the state also
/// goes to the PMS (ADT^A31 with the consent field) and the feed, as a chat
/// keyword does; PMS-sourced consent does not go back to the PMS.
fn stage_consent(
    vault: &Vault,
    txn: &mut Txn,
    consent: &Consent,
    actor: &str,
) -> Result<(), VaultError> {
    let changed = vault.get_consent(consent.patient)?.map(|c| c.state) != Some(consent.state);
    // Opt-outs through staff or the PMS count like the chat's (which
    // counts its own in `care::consent`); a first record as opted out too.
    if changed && consent.state == ConsentState::OptedOut {
        crate::kpi::on_opt_out(vault, txn, consent.patient, consent.at)?;
    }
    if consent.source == ConsentSource::Staff && changed && actor.starts_with("api:") {
        if let Some(settings) = vault.care() {
            let action = match consent.state {
                ConsentState::OptedIn => crate::pms::outbound::PatientAction::OptIn {
                    patient: consent.patient,
                },
                ConsentState::OptedOut => crate::pms::outbound::PatientAction::OptOut {
                    patient: consent.patient,
                },
            };
            match crate::pms::outbound::stage(
                vault,
                txn,
                &settings.outbound,
                &action,
                actor,
                consent.at,
            ) {
                Ok(_) => return Ok(()),
                Err(crate::pms::outbound::ActionError::Vault(e)) => return Err(e),
                // A patient created in this same batch: recorded below,
                // without a message to the PMS.
                Err(e) => tracing::warn!(error = %e, "a consent change was not sent to the PMS"),
            }
        }
    }
    vault.stage_consent_by(txn, consent, actor)
}

/// Applies `commands` in one durable transaction: the reads, the decision
/// and the commit run on the vault's writer, one input at a time; resolves
/// once the commit is durable.
pub async fn apply(
    vault: &Vault,
    commands: Vec<Command>,
    origin: Origin,
    now: Timestamp,
) -> Result<Applied, CommandError> {
    // Patients this may create: their keys are made on the writer, with
    // those of the rest of its batch (one keyring fsync for all).
    let new_patients: Vec<PatientId> = commands
        .iter()
        .filter_map(|c| match c {
            Command::UpsertPatient(p) | Command::UpdatePatientFromContext(p) => Some(p.id),
            _ => None,
        })
        .filter(|id| !vault.has_patient_key(*id))
        .collect();
    vault
        .write_for_new_patients(new_patients, move |v| decide(v, &commands, &origin, now))
        .await
        .map(|c| c.value)
}

/// How many idempotency entries one pruning job reads: the writer is never
/// held for long, and the next job goes on from where this one stopped.
const PRUNE_BATCH: usize = 2_000;

/// Removes idempotency keys older than `retention` (they no longer count:
/// see [`Origin::key_retention`]), in batches of jobs on the writer.
/// Returns how many were removed.
pub async fn prune_idempotency_keys(
    vault: &Vault,
    now: Timestamp,
    retention: jiff::SignedDuration,
) -> Result<usize, CommandError> {
    let mut start: Vec<u8> = Vec::new();
    let mut removed = 0;
    loop {
        let from = std::mem::take(&mut start);
        let (gone, next) = vault
            .write(move |v| {
                let mut txn = Txn::new(now);
                let mut gone = 0usize;
                let mut last = None;
                for item in v.scan_prefix_from(Tree::Ingested, &from).take(PRUNE_BATCH) {
                    let (key, value) = item?;
                    let expired =
                        Seen::decode(&value).is_none_or(|s| now.duration_since(s.at) >= retention);
                    if expired {
                        txn.remove(Tree::Ingested, key.clone());
                        gone += 1;
                    }
                    last = Some(key);
                }
                let next = last.map(|mut k| {
                    k.push(0);
                    k
                });
                Ok::<_, CommandError>((txn, (gone, next)))
            })
            .await?
            .value;
        removed += gone;
        match next {
            Some(k) => start = k,
            None => return Ok(removed),
        }
    }
}
