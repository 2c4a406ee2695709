//! ADT: registration and updates (A01/A04/A08/A28/A31) and merges (A40).

use super::fields::{self, clean};
use super::{MapContext, Rejection};
use crate::commands::Command;
use crate::model::{ConsentSource, ConsentState};
use crate::pms::hl7::{Message, Segment};

/// A01/A04/A08/A28/A31: create or update the patient in PID (+ PD1, consent).
pub fn register(msg: &Message, ctx: &MapContext<'_>) -> Result<Vec<Command>, Rejection> {
    let pid = msg
        .segment("PID")
        .ok_or_else(|| Rejection::missing("PID", 3))?;
    let mut patient = fields::patient_from_pid(pid, ctx)?;
    patient.protected = msg
        .segment("PD1")
        .and_then(|pd1| clean(pd1.text(12)))
        .is_some_and(|v| v.eq_ignore_ascii_case("Y"));
    let id = patient.id;
    let mut commands = vec![Command::UpsertPatient(Box::new(patient))];
    if let Some(state) = consent(msg, ctx) {
        commands.push(Command::SetConsent {
            patient: id,
            state,
            source: ConsentSource::Pms,
        });
    }
    Ok(commands)
}

/// The PMS's consent flag at the configured field: `Y` opts in, `N` out,
/// anything else (or nothing) leaves consent as it is.
fn consent(msg: &Message, ctx: &MapContext<'_>) -> Option<ConsentState> {
    let value = clean(ctx.config.consent_field.as_ref()?.read(msg))?;
    match value.to_ascii_uppercase().as_str() {
        "Y" | "YES" | "OPTIN" | "OPT-IN" => Some(ConsentState::OptedIn),
        "N" | "NO" | "OPTOUT" | "OPT-OUT" => Some(ConsentState::OptedOut),
        _ => None,
    }
}

/// A40: each PID is the surviving patient, the MRG after it names the one
/// merged into it. A message may carry several pairs.
pub fn merge(msg: &Message, ctx: &MapContext<'_>) -> Result<Vec<Command>, Rejection> {
    let mut commands = Vec::new();
    let mut survivor: Option<&Segment> = None;
    for seg in msg.segments() {
        match seg.id.as_str() {
            "PID" => survivor = Some(seg),
            "MRG" => {
                let pid = survivor
                    .take()
                    .ok_or_else(|| Rejection::missing("PID", 3))?;
                let patient = fields::patient_from_pid(pid, ctx)?;
                let merged_mrn = fields::mrn(seg, 1, &ctx.config.assigning_authority)
                    .ok_or_else(|| Rejection::missing("MRG", 1))?;
                let merged = ctx
                    .vault
                    .patient_id_for_mrn(&ctx.config.assigning_authority, &merged_mrn);
                let survivor_id = patient.id;
                commands.push(Command::UpdatePatientFromContext(Box::new(patient)));
                if merged != survivor_id {
                    commands.push(Command::MergePatients {
                        survivor: survivor_id,
                        merged,
                    });
                }
            }
            _ => {}
        }
    }
    if commands.is_empty() {
        return Err(Rejection::missing("MRG", 1));
    }
    Ok(commands)
}
