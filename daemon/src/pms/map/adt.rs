//! ADT: registrations and updates replace the patient ([`REGISTRATIONS`]),
//! merges fold one patient into another ([`MERGES`]), and every other event
//! (admit/visit/transfer/discharge, links, unknown triggers) only fills in
//! from its PID segments ([`context`]). docs/hl7.md § 5 has the table.

use super::fields::{self, clean};
use super::{MapContext, Rejection};
use crate::commands::Command;
use crate::model::{ConsentSource, ConsentState};
use crate::pms::hl7::{Message, Segment};

/// Events that carry the patient's full demographics: the PID replaces the
/// stored record (a field it leaves empty becomes empty). A01 admit, A04
/// register, A05 pre-admit, A08 update, A14 pending admit, A28 add person,
/// A31 update person.
pub const REGISTRATIONS: &[&str] = &["A01", "A04", "A05", "A08", "A14", "A28", "A31"];

/// Events whose MRG names a patient to fold into the PID's: A40 (merge
/// patient, v2.3.1+), its older forms A34 (patient id only) and A36 (patient
/// id and account number), and A46/A47 (change patient id), which move
/// everything from the old identifier to the new one.
pub const MERGES: &[&str] = &["A34", "A36", "A40", "A46", "A47"];

/// Any other ADT event with PID segments: each PID only fills in (like the PID
/// of an SIU). Without a PID there is nothing for us in it: AA, no change.
pub fn context(msg: &Message, ctx: &MapContext<'_>) -> Result<Vec<Command>, Rejection> {
    let mut commands = Vec::new();
    let mut seen = Vec::new();
    // A17 (swap patients) carries two PIDs; most events one.
    for pid in msg.segments_named("PID") {
        let patient = fields::patient_from_pid(pid, ctx)?;
        if seen.contains(&patient.id) {
            continue;
        }
        seen.push(patient.id);
        commands.push(Command::UpdatePatientFromContext(Box::new(patient)));
    }
    Ok(commands)
}

/// A01/A04/A05/A08/A14/A28/A31: create or replace the patient in PID (+ PD1, consent).
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

/// A40 (and A34/A36/A46/A47): each PID is the surviving patient, the MRG
/// after it names the one merged into it. A message may carry several pairs.
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
