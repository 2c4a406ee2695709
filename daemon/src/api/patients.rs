//! Patients: the reads and commands behind `/v1/patients…` and the staff
//! console's patient lookup (`console::lookup`), so both use one data path.
//! The library calls (`find_by_mrn`, `patient`, `appointments`, `consent`,
//! `consent_history`, `set_consent`, `reminders`) do not audit: each caller
//! audits its read with its own actor before it answers.

use super::fhir;
use super::problem::Problem;
use super::routes::{
    apply, audit_read, audit_reads, internal, no_content, ok, origin, query, read_draft, read_json,
    ApiState, Resp,
};
use crate::care::ledger;
use crate::commands::{Command, Origin};
use crate::model::{Appointment, Consent, ConsentSource, ConsentState, Patient, PatientId};
use crate::pms::phone;
use crate::vault::Tree;
use crate::whatsapp::outbox::SentRecord;
use hyper::body::Incoming;
use hyper::Request;
use jiff::Timestamp;

pub(crate) fn patient_id(segment: &str) -> Result<PatientId, Problem> {
    PatientId::from_hex(segment).ok_or_else(|| Problem::not_found("patient ids are 32 hex digits"))
}

/// The patient with exactly this MRN (no partial match), as a list: the
/// search answers with one.
pub(crate) fn find_by_mrn(state: &ApiState, mrn: &str) -> Result<Vec<Patient>, Problem> {
    Ok(state
        .vault
        .patient_by_mrn(&state.authority, mrn)
        .map_err(internal)?
        .into_iter()
        .collect())
}

/// The patients with this phone number, written any way the clinic's
/// numbering plan parses (`0151 …`, `+49 151 …`): the number is brought
/// to E.164, as the PMS's numbers were when they were stored.
pub(crate) fn find_by_phone(state: &ApiState, raw: &str) -> Result<Vec<Patient>, Problem> {
    let Some(e164) = phone::to_e164(raw, &state.phone_plan) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for id in state
        .vault
        .find_patients_by_phone(&e164)
        .map_err(internal)?
    {
        if let Some(p) = state.vault.get_patient(id).map_err(internal)? {
            found.push(p);
        }
    }
    Ok(found)
}

/// The patient, or 404.
pub(crate) fn patient(state: &ApiState, id: PatientId) -> Result<Patient, Problem> {
    state
        .vault
        .get_patient(id)
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("no such patient"))
}

/// The patient's appointments, soonest first.
pub(crate) fn appointments(state: &ApiState, id: PatientId) -> Result<Vec<Appointment>, Problem> {
    state.vault.appointments_of(id).map_err(internal)
}

/// The current consent (None: never recorded).
pub(crate) fn consent(state: &ApiState, id: PatientId) -> Result<Option<Consent>, Problem> {
    state.vault.get_consent(id).map_err(internal)
}

/// The consent ledger, oldest first; 404 for an unknown patient.
pub(crate) fn consent_history(
    state: &ApiState,
    id: PatientId,
) -> Result<Vec<ledger::Entry>, Problem> {
    patient(state, id)?;
    ledger::history(&state.vault, id).map_err(internal)
}

/// Records the consent staff were given (source = staff; the actor is the
/// origin's): one command through `commands::apply`. Returns the consent
/// now in force; 404 when there is none (a repeated Idempotency-Key after
/// the patient was erased applies nothing).
pub(crate) async fn set_consent(
    state: &ApiState,
    id: PatientId,
    wanted: ConsentState,
    origin: &Origin,
) -> Result<Consent, Problem> {
    apply(
        state,
        &[Command::SetConsent {
            patient: id,
            state: wanted,
            source: ConsentSource::Staff,
        }],
        origin,
    )
    .await?;
    consent(state, id)?.ok_or_else(|| Problem::not_found("no such patient"))
}

/// One reminder (or post-visit follow-up) that went to Meta.
#[derive(Debug, Clone)]
pub(crate) struct ReminderSent {
    /// The appointment it was about (its PMS id and start), when it is
    /// still known.
    pub appointment: Option<(String, Timestamp)>,
    pub follow_up: bool,
    pub sent_at: Timestamp,
    /// Recorded without live credentials: nothing left the box.
    pub dry_run: bool,
    /// The latest delivery state Meta reported: `sent` until a status
    /// came, then `delivered`, `read`, `failed`…
    pub delivery: &'static str,
}

/// The reminders and follow-ups sent to the patient, newest first, each
/// with its appointment and delivery state. What the vault keeps: the
/// outbox's sent records (reference `reminder:<token>:<n>` or
/// `follow-up:<token>`, time, dry run) and the webhook's status records.
/// Queued, expired or dead-lettered reminders have no sent record and are
/// not in this list.
///
/// The sent log has no index by patient: it is read through once, and
/// only the records sealed under this patient's keys are opened.
pub(crate) fn reminders(
    state: &ApiState,
    id: PatientId,
    appointments: &[Appointment],
) -> Result<Vec<ReminderSent>, Problem> {
    let tokens: Vec<(String, &Appointment)> = appointments
        .iter()
        .map(|a| {
            let t = crate::care::store::token(&state.vault, &a.id);
            (hex::encode(t.get(..6).unwrap_or_default()), a)
        })
        .collect();
    let mut out = Vec::new();
    for opened in state.vault.scan_sealed_for(Tree::WaSent, id) {
        let (_, bytes) = opened.map_err(internal)?;
        let Ok(r) = serde_json::from_slice::<SentRecord>(&bytes) else {
            continue;
        };
        if r.patient != Some(id) {
            continue;
        }
        let Some(reference) = r.reference.as_deref() else {
            continue;
        };
        let (follow_up, token) = if let Some(rest) = reference.strip_prefix("reminder:") {
            (false, rest.split(':').next().unwrap_or_default())
        } else if let Some(rest) = reference.strip_prefix("follow-up:") {
            (true, rest)
        } else {
            continue;
        };
        let delivery = match state.vault.wa_status(&r.wamid).map_err(internal)? {
            Some(s) => s.state.name(),
            None => "sent",
        };
        out.push(ReminderSent {
            appointment: tokens
                .iter()
                .find(|(t, _)| t == token)
                .map(|(_, a)| (a.id.clone(), a.start)),
            follow_up,
            sent_at: r.sent_at,
            dry_run: r.dry_run,
            delivery,
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.sent_at));
    Ok(out)
}

/// Whether the patient confirmed this appointment (through a reminder's
/// button): the appointment's own flag, or the reminder workflow's phase.
pub(crate) fn confirmed(state: &ApiState, a: &Appointment) -> Result<bool, Problem> {
    if a.patient_confirmed {
        return Ok(true);
    }
    let token = crate::care::store::token(&state.vault, &a.id);
    let phase = crate::care::store::load(&state.vault, &token)
        .map_err(internal)?
        .map(|s| s.phase);
    Ok(phase == Some(crate::care::reminder::Phase::Confirmed))
}

/// `GET /v1/patients?identifier=[system|]MRN`.
pub(super) async fn search(
    state: &ApiState,
    req: &Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    let Some(identifier) = query(req, "identifier") else {
        return Err(Problem::bad_request(
            "search by identifier: /v1/patients?identifier=MRN",
        ));
    };
    let mrn = identifier.rsplit('|').next().unwrap_or_default();
    let found = find_by_mrn(state, mrn)?;
    let drafts = found
        .iter()
        .map(|p| read_draft(actor, "patient.read", Some(p.id)))
        .collect();
    audit_reads(state, drafts).await?;
    ok(&fhir::bundle(found.iter().map(fhir::patient).collect()))
}

pub(super) async fn get(state: &ApiState, id: &str, actor: &str) -> Result<Resp, Problem> {
    let p = patient(state, patient_id(id)?)?;
    audit_read(state, actor, "patient.read", Some(p.id)).await?;
    ok(&fhir::patient(&p))
}

pub(super) async fn upsert(
    state: &ApiState,
    req: Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    let origin = origin(state, &req, actor);
    let input: fhir::PatientIn = read_json(req, state).await?;
    let mrn = input
        .mrn()
        .ok_or_else(|| Problem::unprocessable("identifier: an MRN is required"))?
        .trim()
        .to_owned();
    let phone = match input.phone() {
        None => None,
        Some(raw) => Some(phone::to_e164(raw, &state.phone_plan).ok_or_else(|| {
            Problem::unprocessable("telecom: the phone number is not a valid number")
        })?),
    };
    let birth_date = match input.birth_date.as_deref() {
        None => None,
        Some(d) => Some(
            d.parse::<jiff::civil::Date>()
                .ok()
                .filter(|d| crate::bounds::date_in_range(*d))
                .ok_or_else(|| {
                    Problem::unprocessable("birthDate: expected YYYY-MM-DD, years 1900 to 2199")
                })?,
        ),
    };
    let name = input.name.first();
    let patient = Patient {
        id: state.vault.patient_id_for_mrn(&state.authority, &mrn),
        family_name: name.and_then(|n| n.family.clone()).unwrap_or_default(),
        given_name: name
            .and_then(|n| n.given.first().cloned())
            .unwrap_or_default(),
        mrn,
        birth_date,
        phone,
        language: input.language(),
        deceased: input.deceased_boolean,
        protected: input.outreach_blocked,
    };
    apply(
        state,
        &[Command::UpsertPatient(Box::new(patient.clone()))],
        &origin,
    )
    .await?;
    ok(&fhir::patient(&patient))
}

pub(super) async fn erase(state: &ApiState, id: &str, actor: &str) -> Result<Resp, Problem> {
    let id = patient_id(id)?;
    let vault = state.vault.clone();
    let now = state.clock.now();
    let actor = actor.to_owned();
    let erased = vault
        .erase_patient_async(id, &actor, now)
        .await
        .map_err(internal)?;
    if erased {
        no_content()
    } else {
        Err(Problem::not_found("no such patient"))
    }
}

/// `GET /v1/patients/{id}/appointments`.
pub(super) async fn get_appointments(
    state: &ApiState,
    id: &str,
    actor: &str,
) -> Result<Resp, Problem> {
    let id = patient_id(id)?;
    let list = appointments(state, id)?;
    audit_read(state, actor, "appointment.read", Some(id)).await?;
    ok(&fhir::bundle(list.iter().map(fhir::appointment).collect()))
}

/// `PUT /v1/patients/{id}/consent` with `{"state": …}`: source = staff.
pub(super) async fn put_consent(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    #[derive(serde::Deserialize)]
    struct ConsentIn {
        state: ConsentState,
    }
    let id = patient_id(id)?;
    let origin = origin(state, &req, actor);
    let input: ConsentIn = read_json(req, state).await?;
    let now_in_force = set_consent(state, id, input.state, &origin).await?;
    ok(&serde_json::to_value(now_in_force).map_err(internal)?)
}

/// The patient's consent ledger (`care::ledger`), oldest first: state,
/// source, time and who. A read of PHI, so it is audited.
pub(super) async fn get_consent_history(
    state: &ApiState,
    id: &str,
    actor: &str,
) -> Result<Resp, Problem> {
    let id = patient_id(id)?;
    let entries = consent_history(state, id)?;
    audit_read(state, actor, "consent.read", Some(id)).await?;
    ok(&serde_json::json!({"patient": id, "entries": entries}))
}
