//! Back to the PMS: what a patient did becomes an HL7 message in a durable
//! queue, in the same transaction as the state change, the event for the
//! feed and the audit entry. The sender (`sender.rs`) delivers the queue in
//! order.
//!
//! HL7 v2 has no standard "patient confirmed" event, so the mapping is an
//! adapter with a documented default (docs/hl7.md):
//!
//! | patient action        | message  | notes                                   |
//! |-----------------------|----------|-----------------------------------------|
//! | booking request       | SRM^S01  | ARQ with the chosen slot                |
//! | reschedule request    | SRM^S02  | ARQ with the appointment (+ new slot)   |
//! | cancellation request  | SRM^S04  | ARQ with the appointment                |
//! | confirmation          | SIU^S14  | SCH-25 = `pms.outbound_confirm_status`  |
//! | opt-out / opt-in      | ADT^A31  | consent field (`pms.consent_field`) N/Y |

use super::hl7::{EncodeError, MessageBuilder, SegmentBuilder};
use crate::audit::AuditDraft;
use crate::model::{
    Appointment, Consent, ConsentSource, ConsentState, Event, EventKind, Patient, PatientId, Slot,
};
use crate::pms::map::FieldPath;
use crate::vault::{Txn, Vault, VaultError};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Something a patient did that the PMS must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientAction {
    Confirm {
        appointment: String,
    },
    Cancel {
        appointment: String,
    },
    Reschedule {
        appointment: String,
        slot: Option<String>,
    },
    Book {
        patient: PatientId,
        slot: String,
    },
    OptOut {
        patient: PatientId,
    },
    OptIn {
        patient: PatientId,
    },
}

/// How outbound messages are addressed and shaped (config `[pms]`).
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub application: String,
    pub facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// SCH-25 of the SIU^S14 that reports a confirmation.
    pub confirm_status: String,
    /// Where opt-in/opt-out goes in the ADT^A31; None: not sent.
    pub consent_field: Option<FieldPath>,
    pub assigning_authority: String,
    /// The ADT trigger of the chat intake's new-patient request (`A04`,
    /// `A05` or `A28`; `pms.outbound_new_patient`).
    pub new_patient_trigger: String,
}

/// A queued message. Sealed under the patient's key (it carries PID), so an
/// erased patient's pending messages can no longer be read or sent. Its
/// `Debug` names the message, never the HL7 bytes (they hold PHI).
#[derive(Clone, Serialize, Deserialize)]
pub struct Outgoing {
    pub kind: String,
    pub patient: Option<PatientId>,
    pub control_id: String,
    pub created_at: Timestamp,
    #[serde(with = "hl7_text")]
    pub hl7: Vec<u8>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("kind", &self.kind)
            .field("patient", &self.patient)
            .field("control_id", &self.control_id)
            .field("created_at", &self.created_at)
            .field("hl7_bytes", &self.hl7.len())
            .finish()
    }
}

impl crate::queue::Queued for Outgoing {
    fn patient(&self) -> Option<PatientId> {
        self.patient
    }

    fn describe(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::from([
            ("message".to_owned(), self.kind.clone()),
            ("control_id".to_owned(), self.control_id.clone()),
        ])
    }
}

/// The HL7 bytes as a string in the (sealed) JSON record.
mod hl7_text {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("unknown appointment")]
    UnknownAppointment,
    #[error("unknown patient {0}")]
    UnknownPatient(PatientId),
    #[error("unknown slot")]
    UnknownSlot,
    #[error("outbound message: {0}")]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

pub(super) fn ts(t: Timestamp) -> String {
    t.strftime("%Y%m%d%H%M%S+0000").to_string()
}

pub(super) fn msh(
    cfg: &OutboundConfig,
    kind: (&str, &str, &str),
    control_id: &str,
    now: Timestamp,
) -> SegmentBuilder {
    let mut msh = SegmentBuilder::new("MSH");
    msh.set(3, cfg.application.as_str())
        .set(4, cfg.facility.as_str())
        .set(5, cfg.receiving_application.as_str())
        .set(6, cfg.receiving_facility.as_str())
        .set(7, ts(now))
        .set_component(9, 1, kind.0)
        .set_component(9, 2, kind.1)
        .set_component(9, 3, kind.2)
        .set(10, control_id)
        .set(11, "P")
        .set(12, "2.5.1")
        .set(18, "UNICODE UTF-8");
    msh
}

fn pid(p: &Patient, authority: &str) -> SegmentBuilder {
    let mut pid = SegmentBuilder::new("PID");
    pid.set(1, "1")
        .set_component(3, 1, p.mrn.as_str())
        .set_component(3, 4, authority)
        .set_component(3, 5, "MR")
        .set_component(5, 1, p.family_name.as_str())
        .set_component(5, 2, p.given_name.as_str());
    if let Some(d) = p.birth_date {
        pid.set(7, d.strftime("%Y%m%d").to_string());
    }
    pid
}

fn arq(
    appointment_id: &str,
    start: Option<(Timestamp, u32)>,
    slot_id: Option<&str>,
) -> SegmentBuilder {
    let mut arq = SegmentBuilder::new("ARQ");
    arq.set_component(1, 1, appointment_id);
    if let Some(slot) = slot_id {
        // ARQ-2 (filler appointment id) is the PMS's; the slot goes in ARQ-1.2
        // as the namespace-qualified hint the PMS can look up.
        arq.set_component(1, 2, slot);
    }
    if let Some((start, minutes)) = start {
        arq.set(9, minutes.to_string()).set_component(10, 1, "MIN");
        arq.set_component(11, 1, ts(start));
    }
    arq
}

/// An empty resource group (`RGS|1|A`), which SRM_S01 and SIU_S12 require.
fn rgs() -> SegmentBuilder {
    let mut rgs = SegmentBuilder::new("RGS");
    rgs.set(1, "1").set(2, "A");
    rgs
}

/// Builds the HL7 message for an action.
pub fn build_message(
    cfg: &OutboundConfig,
    action: &PatientAction,
    patient: &Patient,
    appointment: Option<&Appointment>,
    slot: Option<&Slot>,
    control_id: &str,
    now: Timestamp,
) -> Result<(String, Vec<u8>), EncodeError> {
    let mut msg = MessageBuilder::new();
    let kind = match action {
        PatientAction::Book { .. } => ("SRM", "S01", "SRM_S01"),
        PatientAction::Reschedule { .. } => ("SRM", "S02", "SRM_S01"),
        PatientAction::Cancel { .. } => ("SRM", "S04", "SRM_S01"),
        PatientAction::Confirm { .. } => ("SIU", "S14", "SIU_S12"),
        PatientAction::OptOut { .. } | PatientAction::OptIn { .. } => ("ADT", "A31", "ADT_A05"),
    };
    msg.push(msh(cfg, kind, control_id, now));
    match action {
        PatientAction::Book { .. }
        | PatientAction::Reschedule { .. }
        | PatientAction::Cancel { .. } => {
            let id = appointment.map_or(control_id, |a| a.id.as_str());
            let start = slot
                .map(|s| (s.start, s.duration_minutes))
                .or(appointment.map(|a| (a.start, a.duration_minutes)));
            msg.push(arq(id, start, slot.map(|s| s.id.as_str())));
            msg.push(pid(patient, &cfg.assigning_authority));
            // SRM_S01 requires a resource group, even an empty one.
            msg.push(rgs());
        }
        PatientAction::Confirm { .. } => {
            let mut sch = SegmentBuilder::new("SCH");
            if let Some(a) = appointment {
                sch.set_component(2, 1, a.id.as_str())
                    .set_component(11, 3, a.duration_minutes.to_string())
                    .set_component(11, 4, ts(a.start));
            }
            sch.set_component(25, 1, cfg.confirm_status.as_str());
            msg.push(sch);
            msg.push(pid(patient, &cfg.assigning_authority));
            msg.push(rgs());
        }
        PatientAction::OptOut { .. } | PatientAction::OptIn { .. } => {
            let mut evn = SegmentBuilder::new("EVN");
            evn.set(1, "A31").set(2, ts(now));
            msg.push(evn);
            msg.push(pid(patient, &cfg.assigning_authority));
            // ADT_A05 requires PV1; "N" = patient class not applicable.
            let mut pv1 = SegmentBuilder::new("PV1");
            pv1.set(1, "1").set(2, "N");
            msg.push(pv1);
            if let Some(field) = &cfg.consent_field {
                let flag = if matches!(action, PatientAction::OptIn { .. }) {
                    "Y"
                } else {
                    "N"
                };
                let mut seg = SegmentBuilder::new(&field.segment);
                if field.segment.starts_with('Z') && field.field > 1 {
                    seg.set(1, "WHATSAPP");
                }
                seg.set_component(field.field, field.component, flag);
                msg.push(seg);
            }
        }
    }
    Ok((format!("{}^{}", kind.0, kind.1), msg.build()?))
}

fn event_kind(action: &PatientAction) -> EventKind {
    match action {
        PatientAction::Confirm { .. } => EventKind::AppointmentConfirmed,
        PatientAction::Cancel { .. } => EventKind::AppointmentCancelled,
        PatientAction::Reschedule { .. } => EventKind::RescheduleRequested,
        PatientAction::Book { .. } => EventKind::BookingRequested,
        PatientAction::OptOut { .. } => EventKind::OptedOut,
        PatientAction::OptIn { .. } => EventKind::OptedIn,
    }
}

/// Records a patient action: state change, feed event, queued HL7 message
/// and audit entry, in one durable transaction decided and committed on the
/// vault's writer. Returns the message's control id.
pub async fn record(
    vault: &Vault,
    cfg: &OutboundConfig,
    action: &PatientAction,
    actor: &str,
    now: Timestamp,
) -> Result<String, ActionError> {
    let (cfg, action, actor) = (cfg.clone(), action.clone(), actor.to_owned());
    vault
        .write(move |v| decide(v, &cfg, &action, &actor, now))
        .await
        .map(|c| c.value)
}

/// The txn for a patient action, and the control id of its HL7 message.
fn decide(
    vault: &Vault,
    cfg: &OutboundConfig,
    action: &PatientAction,
    actor: &str,
    now: Timestamp,
) -> Result<(Txn, String), ActionError> {
    let mut txn = Txn::new(now);
    let control_id = stage(vault, &mut txn, cfg, action, actor, now)?;
    Ok((txn, control_id))
}

/// Stages a patient action in `txn` (for callers on the writer that commit
/// it with their own state change, like the workflows in `care`): state
/// change, queued HL7 message, feed event, audit entry. Returns the
/// message's control id.
pub fn stage(
    vault: &Vault,
    txn: &mut Txn,
    cfg: &OutboundConfig,
    action: &PatientAction,
    actor: &str,
    now: Timestamp,
) -> Result<String, ActionError> {
    let (patient_id, mut appointment) = match action {
        PatientAction::Confirm { appointment }
        | PatientAction::Cancel { appointment }
        | PatientAction::Reschedule { appointment, .. } => {
            let a = vault
                .get_appointment(appointment)?
                .ok_or(ActionError::UnknownAppointment)?;
            (a.patient, Some(a))
        }
        PatientAction::Book { patient, .. }
        | PatientAction::OptOut { patient }
        | PatientAction::OptIn { patient } => (*patient, None),
    };
    let patient = vault
        .get_patient(patient_id)?
        .ok_or(ActionError::UnknownPatient(patient_id))?;
    let slot = match action {
        PatientAction::Book { slot, .. }
        | PatientAction::Reschedule {
            slot: Some(slot), ..
        } => Some(
            vault
                .slots()?
                .into_iter()
                .find(|s| &s.id == slot)
                .ok_or(ActionError::UnknownSlot)?,
        ),
        _ => None,
    };
    match action {
        PatientAction::Confirm { .. } => {
            if let Some(a) = appointment.as_mut() {
                a.patient_confirmed = true;
                vault.stage_appointment(txn, a)?;
            }
        }
        PatientAction::OptOut { .. } | PatientAction::OptIn { .. } => {
            let state = if matches!(action, PatientAction::OptIn { .. }) {
                ConsentState::OptedIn
            } else {
                ConsentState::OptedOut
            };
            // Staff tell it through the API (actor `api:…`); otherwise it
            // is the patient's chat keyword.
            let (source, who) = if actor.starts_with("api:") {
                (ConsentSource::Staff, actor)
            } else {
                (ConsentSource::Chat, "patient")
            };
            vault.stage_consent_by(
                txn,
                &Consent {
                    patient: patient_id,
                    state,
                    source,
                    at: now,
                },
                who,
            )?;
        }
        _ => {}
    }
    let control_id = format!(
        "CRO{}",
        hex::encode(
            &vault.blind_index(
                "outbound-control-id",
                &format!("{}{:?}", now.as_nanosecond(), action)
            )[..8]
        )
    );
    let (kind, hl7) = build_message(
        cfg,
        action,
        &patient,
        appointment.as_ref(),
        slot.as_ref(),
        &control_id,
        now,
    )?;
    let outgoing = Outgoing {
        kind: kind.clone(),
        patient: Some(patient_id),
        control_id: control_id.clone(),
        created_at: now,
        hl7,
    };
    crate::queue::enqueue(
        txn,
        &crate::queue::PMS_OUTBOX,
        &crate::queue::Envelope::new(outgoing, now),
    )?;
    let event = Event {
        kind: event_kind(action),
        time: now,
        patient: Some(patient_id),
        appointment: appointment.as_ref().map(|a| a.id.clone()),
        slot: slot.as_ref().map(|s| s.id.clone()),
        details: Default::default(),
    };
    vault.stage_event(txn, &event)?;
    txn.audit(
        AuditDraft::new(actor, "patient.action")
            .subject(patient_id.to_string())
            .detail(
                "event",
                serde_json::to_value(event.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            )
            .detail("outbound", kind),
    );
    Ok(control_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_queued_message_shows_no_hl7() {
        let msg = Outgoing {
            kind: "ADT^A31".to_owned(),
            patient: None,
            control_id: "CRO1".to_owned(),
            created_at: Timestamp::UNIX_EPOCH,
            hl7: b"MSH|^~\\&|X\rPID|1||ZZMARKERMRN^^^H^MR||ZZMARKERFAMILY^ZZMARKERGIVEN".to_vec(),
        };
        for shown in [format!("{msg:?}"), format!("{msg:#?}")] {
            assert!(!shown.contains("ZZMARKER"), "{shown}");
            assert!(
                shown.contains("ADT^A31") && shown.contains("CRO1"),
                "{shown}"
            );
        }
    }
}
