//! A new-patient request to the PMS (issue 11, the chat's intake of an
//! unknown number): an `ADT^A04` registration with what the person told
//! the bot — name, date of birth, the number they wrote from, their
//! consent — and no MRN: the PMS assigns it (docs/hl7.md § 6.1). Staff
//! finish the registration; the PMS's own ADT back then makes the patient
//! known to clinic-relay like any other.
//!
//! The queued message is sealed under the system key (there is no patient
//! key yet) and goes through the same PMS outbox as the patient actions
//! (`outbound.rs`).

use super::hl7::{EncodeError, MessageBuilder, SegmentBuilder};
use super::outbound::{msh, ts, OutboundConfig, Outgoing};
use crate::vault::{Txn, Vault, VaultError};
use jiff::civil::Date;
use jiff::Timestamp;

/// What the intake learnt. `Debug` shows none of it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPatient {
    pub family_name: String,
    pub given_name: String,
    pub birth_date: Date,
    /// E.164, when the person wrote from a number (not a business-scoped id).
    pub phone: Option<String>,
    pub consent: bool,
}

impl std::fmt::Debug for NewPatient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPatient")
            .field("consent", &self.consent)
            .finish_non_exhaustive()
    }
}

impl NewPatient {
    /// Splits a full name as typed: the last word is the family name, the
    /// rest the given names (staff check it when they register).
    pub fn split_name(full: &str) -> (String, String) {
        let words: Vec<&str> = full.split_whitespace().collect();
        match words.split_last() {
            Some((family, given)) => ((*family).to_owned(), given.join(" ")),
            None => (String::new(), String::new()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NewPatientError {
    #[error("new-patient message: {0}")]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// The trigger of a `pms.outbound_new_patient` value (`ADT^A04`, `ADT^A05`,
/// `ADT^A28`; any case), if clinic-relay can send it.
pub fn trigger(configured: &str) -> Option<&'static str> {
    let v = configured.trim().to_ascii_uppercase();
    ["A04", "A05", "A28"]
        .into_iter()
        .find(|t| v == format!("ADT^{t}"))
}

/// The message structure of a trigger: `A04` is an `ADT_A01`, `A05` and
/// `A28` are `ADT_A05`s (the same segments here: MSH, EVN, PID, PV1).
fn structure(trigger: &str) -> &'static str {
    if trigger == "A04" {
        "ADT_A01"
    } else {
        "ADT_A05"
    }
}

/// The `ADT^A04^ADT_A01` (or the configured trigger) of a new-patient
/// request.
pub fn build(
    cfg: &OutboundConfig,
    p: &NewPatient,
    control_id: &str,
    now: Timestamp,
) -> Result<Vec<u8>, EncodeError> {
    let mut msg = MessageBuilder::new();
    let trigger = cfg.new_patient_trigger.as_str();
    msg.push(msh(
        cfg,
        ("ADT", trigger, structure(trigger)),
        control_id,
        now,
    ));
    let mut evn = SegmentBuilder::new("EVN");
    evn.set(1, trigger).set(2, ts(now));
    msg.push(evn);
    let mut pid = SegmentBuilder::new("PID");
    // PID-3 is required but the MRN is the PMS's to assign: the
    // identifier is left empty.
    pid.set(1, "1")
        .set_component(5, 1, p.family_name.as_str())
        .set_component(5, 2, p.given_name.as_str())
        .set(7, p.birth_date.strftime("%Y%m%d").to_string());
    if let Some(phone) = &p.phone {
        // XTN: use PRN, equipment CP (cellular), XTN-12 unformatted: how
        // the daemon itself reads a mobile number (hl7.md § 5.2).
        pid.set_component(13, 2, "PRN")
            .set_component(13, 3, "CP")
            .set_component(13, 12, phone.as_str());
    }
    msg.push(pid);
    // ADT_A01 and ADT_A05 require PV1; "N" = patient class not applicable.
    let mut pv1 = SegmentBuilder::new("PV1");
    pv1.set(1, "1").set(2, "N");
    msg.push(pv1);
    if let Some(field) = &cfg.consent_field {
        let mut seg = SegmentBuilder::new(&field.segment);
        if field.segment.starts_with('Z') && field.field > 1 {
            seg.set(1, "WHATSAPP");
        }
        seg.set_component(
            field.field,
            field.component,
            if p.consent { "Y" } else { "N" },
        );
        msg.push(seg);
    }
    msg.build()
}

/// Queues the request in `txn` (the PMS outbox, system key). Returns the
/// message's control id (the request's reference on the feed). The caller
/// stages the event and the audit entry with its own details.
pub fn stage(
    vault: &Vault,
    txn: &mut Txn,
    cfg: &OutboundConfig,
    p: &NewPatient,
    reference: &str,
    now: Timestamp,
) -> Result<String, NewPatientError> {
    let control_id = format!(
        "CRO{}",
        hex::encode(
            vault
                .blind_index(
                    "outbound-control-id",
                    &format!("{}new-patient{reference}", now.as_nanosecond())
                )
                .get(..8)
                .unwrap_or_default()
        )
    );
    let hl7 = build(cfg, p, &control_id, now)?;
    let outgoing = Outgoing {
        kind: format!("ADT^{}", cfg.new_patient_trigger),
        patient: None,
        control_id: control_id.clone(),
        created_at: now,
        hl7,
    };
    crate::queue::enqueue(
        txn,
        &crate::queue::PMS_OUTBOX,
        &crate::queue::Envelope::new(outgoing, now),
    )?;
    Ok(control_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pms::map::FieldPath;

    fn cfg(consent: Option<FieldPath>) -> OutboundConfig {
        OutboundConfig {
            application: "CLINIC-RELAY".into(),
            facility: "ZZCLINIC".into(),
            receiving_application: "ZZPMS".into(),
            receiving_facility: "ZZCLINIC".into(),
            confirm_status: "Confirmed".into(),
            consent_field: consent,
            assigning_authority: "ZZHOSP".into(),
            new_patient_trigger: "A04".into(),
        }
    }

    #[test]
    fn the_registration_carries_name_birth_date_phone_and_consent_and_no_mrn() {
        let p = NewPatient {
            family_name: "ZZFAMILY".into(),
            given_name: "ZZGIVEN Second".into(),
            birth_date: Date::constant(1901, 2, 3),
            phone: Some("+4915155509999".into()),
            consent: false,
        };
        let field = FieldPath::parse("ZCN-2").unwrap();
        let now: Timestamp = "2027-01-15T08:00:00Z".parse().unwrap();
        let bytes = build(&cfg(Some(field)), &p, "CRO1", now).unwrap();
        let msg = crate::pms::hl7::parse(&bytes).unwrap();
        let t = msg.message_type().unwrap();
        assert_eq!((t.code.as_str(), t.trigger.as_str()), ("ADT", "A04"));
        let text = String::from_utf8(bytes).unwrap();
        let seg = |id: &str| {
            text.split('\r')
                .find(|s| s.starts_with(id))
                .unwrap()
                .to_owned()
        };
        assert_eq!(seg("EVN"), "EVN|A04|20270115080000+0000");
        assert_eq!(
            seg("PID"),
            "PID|1||||ZZFAMILY^ZZGIVEN Second||19010203||||||^PRN^CP^^^^^^^^^+4915155509999"
        );
        assert_eq!(seg("PV1"), "PV1|1|N");
        assert_eq!(seg("ZCN"), "ZCN|WHATSAPP|N");
        assert!(format!("{p:?}").find("ZZ").is_none());
        // The configured alternative: an ADT^A28 (ADT_A05).
        let mut c = cfg(None);
        c.new_patient_trigger = trigger("adt^a28").unwrap().into();
        let text = String::from_utf8(build(&c, &p, "CRO2", now).unwrap()).unwrap();
        assert!(text.contains("|ADT^A28^ADT_A05|CRO2|") && text.contains("\rEVN|A28|"));
        assert!(!text.contains("ZCN"));
        assert_eq!(trigger("ADT^A31"), None);
        assert_eq!(
            NewPatient::split_name("  ZZGIVEN  Second ZZFAMILY "),
            ("ZZFAMILY".into(), "ZZGIVEN Second".into())
        );
    }
}
