//! The API's resource shapes, modelled on FHIR R4 where a resource exists
//! (Patient, Appointment, Slot, DiagnosticReport). Only the elements
//! clinic-relay understands are read; everything else in a request is ignored,
//! as FHIR servers commonly do.

use crate::model::{
    Appointment, AppointmentStatus, LabResult, Patient, PatientId, ResultStatus, Slot,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Sets a member of a JSON object (a no-op on anything else).
pub fn set(v: &mut Value, key: &str, value: Value) {
    if let Some(object) = v.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
}

pub const MRN_SYSTEM: &str = "urn:clinic-relay:mrn";

pub fn patient(p: &Patient) -> Value {
    let mut v = json!({
        "resourceType": "Patient",
        "id": p.id.to_hex(),
        "identifier": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": MRN_SYSTEM,
            "value": p.mrn,
        }],
        "name": [{"family": p.family_name, "given": [p.given_name]}],
        "deceasedBoolean": p.deceased,
    });
    if let Some(d) = p.birth_date {
        set(&mut v, "birthDate", json!(d.to_string()));
    }
    if let Some(phone) = &p.phone {
        set(
            &mut v,
            "telecom",
            json!([{"system": "phone", "use": "mobile", "value": phone}]),
        );
    }
    if let Some(lang) = &p.language {
        set(
            &mut v,
            "communication",
            json!([{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": lang}]}, "preferred": true}]),
        );
    }
    if p.protected {
        set(
            &mut v,
            "meta",
            json!({"security": [{"system": "urn:clinic-relay:outreach", "code": "blocked"}]}),
        );
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatientIn {
    #[serde(default)]
    pub identifier: Vec<IdentifierIn>,
    #[serde(default)]
    pub name: Vec<NameIn>,
    pub birth_date: Option<String>,
    #[serde(default)]
    pub telecom: Vec<TelecomIn>,
    #[serde(default)]
    pub communication: Vec<CommunicationIn>,
    #[serde(default)]
    pub deceased_boolean: bool,
    /// clinic-relay's own flag: no outreach (PD1-12 in HL7).
    #[serde(default)]
    pub outreach_blocked: bool,
}

#[derive(Deserialize)]
pub struct IdentifierIn {
    pub system: Option<String>,
    pub value: Option<String>,
}

#[derive(Deserialize)]
pub struct NameIn {
    pub family: Option<String>,
    #[serde(default)]
    pub given: Vec<String>,
}

#[derive(Deserialize)]
pub struct TelecomIn {
    pub system: Option<String>,
    pub value: Option<String>,
}

#[derive(Deserialize)]
pub struct CommunicationIn {
    pub language: Option<CodeableIn>,
}

#[derive(Deserialize)]
pub struct CodeableIn {
    #[serde(default)]
    pub coding: Vec<CodingIn>,
}

#[derive(Deserialize)]
pub struct CodingIn {
    pub code: Option<String>,
}

// The request shapes hold PHI (names, MRNs, phone numbers, birth dates,
// appointment times), so their `Debug` never prints a value: only which
// members are present and how many entries a list has. A `{:?}` in a log
// line or an error can then not leak what a client sent.

/// `Some(..)`/`None` without the value.
struct Presence(bool);

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "Some(<redacted>)" } else { "None" })
    }
}

/// The length of a list, without its entries.
struct Count(usize);

impl std::fmt::Debug for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[<{} redacted>]", self.0)
    }
}

impl std::fmt::Debug for PatientIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientIn")
            .field("identifier", &Count(self.identifier.len()))
            .field("name", &Count(self.name.len()))
            .field("birth_date", &Presence(self.birth_date.is_some()))
            .field("telecom", &Count(self.telecom.len()))
            .field("communication", &Count(self.communication.len()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IdentifierIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentifierIn")
            .field("system", &self.system)
            .field("value", &Presence(self.value.is_some()))
            .finish()
    }
}

impl std::fmt::Debug for NameIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameIn")
            .field("family", &Presence(self.family.is_some()))
            .field("given", &Count(self.given.len()))
            .finish()
    }
}

impl std::fmt::Debug for TelecomIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelecomIn")
            .field("system", &self.system)
            .field("value", &Presence(self.value.is_some()))
            .finish()
    }
}

impl std::fmt::Debug for CommunicationIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommunicationIn")
            .field("language", &Presence(self.language.is_some()))
            .finish()
    }
}

impl std::fmt::Debug for CodeableIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeableIn")
            .field("coding", &Count(self.coding.len()))
            .finish()
    }
}

impl std::fmt::Debug for CodingIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodingIn")
            .field("code", &Presence(self.code.is_some()))
            .finish()
    }
}

impl PatientIn {
    /// The MRN: the identifier in our system, else the first with a value.
    pub fn mrn(&self) -> Option<&str> {
        self.identifier
            .iter()
            .find(|i| i.system.as_deref() == Some(MRN_SYSTEM))
            .or_else(|| self.identifier.first())
            .and_then(|i| i.value.as_deref())
            .filter(|v| !v.trim().is_empty())
    }

    pub fn phone(&self) -> Option<&str> {
        self.telecom
            .iter()
            .find(|t| t.system.as_deref() == Some("phone"))
            .and_then(|t| t.value.as_deref())
    }

    pub fn language(&self) -> Option<String> {
        self.communication
            .iter()
            .filter_map(|c| c.language.as_ref())
            .flat_map(|l| l.coding.iter())
            .find_map(|c| c.code.clone())
    }
}

pub fn appointment(a: &Appointment) -> Value {
    // Checked: a record stored before issue 8's bounds may not have an end.
    let end = crate::bounds::end_of(a.start, a.duration_minutes);
    let mut participants = vec![
        json!({"actor": {"reference": format!("Patient/{}", a.patient.to_hex())}, "status": "accepted"}),
    ];
    if let Some(p) = &a.provider {
        participants.push(json!({"actor": {"display": p}, "status": "accepted"}));
    }
    if let Some(l) = &a.location {
        participants
            .push(json!({"actor": {"display": l, "type": "Location"}, "status": "accepted"}));
    }
    let mut v = json!({
        "resourceType": "Appointment",
        "id": a.id,
        "status": a.status.fhir_code(),
        "start": a.start.to_string(),
        "minutesDuration": a.duration_minutes,
        "participant": participants,
        "extension": [{"url": "urn:clinic-relay:patient-confirmed", "valueBoolean": a.patient_confirmed}],
    });
    if let Some(end) = end {
        set(&mut v, "end", json!(end.to_string()));
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentIn {
    pub status: AppointmentStatus,
    pub start: jiff::Timestamp,
    pub minutes_duration: Option<u32>,
    pub end: Option<jiff::Timestamp>,
    #[serde(default)]
    pub participant: Vec<ParticipantIn>,
}

#[derive(Deserialize)]
pub struct ParticipantIn {
    pub actor: Option<ReferenceIn>,
}

#[derive(Deserialize)]
pub struct ReferenceIn {
    pub reference: Option<String>,
    pub display: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl std::fmt::Debug for AppointmentIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The status is a code, not PHI; when and with whom is.
        f.debug_struct("AppointmentIn")
            .field("status", &self.status)
            .field("participant", &Count(self.participant.len()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ParticipantIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantIn")
            .field("actor", &self.actor)
            .finish()
    }
}

impl std::fmt::Debug for ReferenceIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceIn")
            .field("reference", &Presence(self.reference.is_some()))
            .field("display", &Presence(self.display.is_some()))
            .field("type", &self.kind)
            .finish()
    }
}

impl AppointmentIn {
    pub fn patient(&self) -> Option<PatientId> {
        self.participant
            .iter()
            .filter_map(|p| p.actor.as_ref()?.reference.as_deref())
            .find_map(|r| r.strip_prefix("Patient/").and_then(PatientId::from_hex))
    }

    pub fn duration_minutes(&self) -> u32 {
        self.minutes_duration
            .or_else(|| {
                let end = self.end?;
                u32::try_from(end.duration_since(self.start).as_secs() / 60).ok()
            })
            .unwrap_or(15)
    }

    /// The ranges of [`crate::bounds`]; the problem text when out of them.
    pub fn out_of_range(&self) -> Option<&'static str> {
        if !crate::bounds::timestamp_in_range(self.start) {
            return Some("start: years 1900 to 2199");
        }
        if self
            .end
            .is_some_and(|e| !crate::bounds::timestamp_in_range(e))
        {
            return Some("end: years 1900 to 2199");
        }
        if !crate::bounds::duration_in_range(self.duration_minutes()) {
            return Some("minutesDuration: at most 10,080 minutes (one week)");
        }
        None
    }

    fn display_where(&self, location: bool) -> Option<String> {
        self.participant
            .iter()
            .filter_map(|p| p.actor.as_ref())
            .filter(|a| {
                a.reference.is_none() && (a.kind.as_deref() == Some("Location")) == location
            })
            .find_map(|a| a.display.clone())
    }

    pub fn provider(&self) -> Option<String> {
        self.display_where(false)
    }

    pub fn location(&self) -> Option<String> {
        self.display_where(true)
    }
}

pub fn slot(s: &Slot) -> Value {
    let mut v = json!({
        "resourceType": "Slot",
        "id": s.id,
        "status": "free",
        "start": s.start.to_string(),
    });
    if let Some(end) = crate::bounds::end_of(s.start, s.duration_minutes) {
        set(&mut v, "end", json!(end.to_string()));
    }
    if let Some(p) = &s.provider {
        set(&mut v, "schedule", json!({"display": p}));
    }
    if let Some(l) = &s.location {
        set(&mut v, "comment", json!(l));
    }
    if let Some(svc) = &s.service {
        set(&mut v, "serviceType", json!([{"coding": [{"code": svc}]}]));
    }
    v
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotIn {
    pub id: String,
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
    pub provider: Option<String>,
    pub location: Option<String>,
    pub service: Option<String>,
}

/// `data` stands in for the PDF's base64: the download streams the
/// document into its place instead of holding it twice over (`download.rs`).
pub fn diagnostic_report(r: &LabResult, data: Value) -> Value {
    // A result the sender took back: FHIR's "withdrawn following a previous
    // final release", with no document.
    let status = match r.status {
        _ if r.withdrawn => "entered-in-error",
        ResultStatus::Final => "final",
        ResultStatus::Corrected => "corrected",
        ResultStatus::Preliminary => "preliminary",
        ResultStatus::Other => "unknown",
    };
    let form = if r.withdrawn {
        json!([])
    } else {
        json!([{
            "contentType": "application/pdf",
            "data": data,
            "size": r.pdf.len(),
        }])
    };
    json!({
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:clinic-relay:order", "value": r.order_number}],
        "status": status,
        "subject": {"reference": format!("Patient/{}", r.patient.to_hex())},
        "issued": r.received_at.to_string(),
        "presentedForm": form,
        "extension": [
            {"url": "urn:clinic-relay:version", "valueInteger": r.version},
            {"url": "urn:clinic-relay:delivered", "valueBoolean": r.delivered}
        ],
    })
}

pub fn bundle(entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_out_of_range_renders_without_an_end() {
        let a = Appointment {
            id: "A".into(),
            patient: PatientId([1; 16]),
            start: jiff::Timestamp::MAX,
            duration_minutes: u32::MAX,
            status: AppointmentStatus::Booked,
            pms_status: None,
            provider: None,
            location: None,
            patient_confirmed: false,
        };
        let v = appointment(&a);
        assert!(v.get("end").is_none(), "{v}");
        let s = Slot {
            id: "S".into(),
            start: jiff::Timestamp::MAX,
            duration_minutes: u32::MAX,
            provider: None,
            location: None,
            service: None,
        };
        assert!(slot(&s).get("end").is_none());
    }

    #[test]
    fn debug_of_request_shapes_prints_no_phi() {
        let patient: PatientIn = serde_json::from_value(json!({
            "identifier": [{"system": MRN_SYSTEM, "value": "ZZMARK-MRN"}],
            "name": [{"family": "ZZMARK-FAMILY", "given": ["ZZMARK-GIVEN"]}],
            "birthDate": "1901-02-03",
            "telecom": [{"system": "phone", "value": "+49 ZZMARK 0100"}],
            "communication": [{"language": {"coding": [{"code": "ZZMARK-LANG"}]}}],
            "deceasedBoolean": true,
        }))
        .unwrap();
        let appointment: AppointmentIn = serde_json::from_value(json!({
            "status": "booked",
            "start": "1901-02-03T09:00:00Z",
            "participant": [{"actor": {"reference": "Patient/ZZMARK", "display": "Dr. ZZMARK"}}],
        }))
        .unwrap();
        for text in [
            format!("{patient:?}"),
            format!("{patient:#?}"),
            format!("{appointment:?}"),
            format!("{:?}", patient.name),
            format!("{:?}", patient.telecom),
            format!("{:?}", patient.communication),
        ] {
            assert!(!text.contains("ZZMARK"), "{text}");
            assert!(!text.contains("1901"), "{text}");
            assert!(!text.contains("true"), "{text}");
        }
        let text = format!("{patient:?}");
        assert!(text.contains("birth_date: Some(<redacted>)"), "{text}");
        assert!(text.contains("identifier: [<1 redacted>]"), "{text}");
    }
}
