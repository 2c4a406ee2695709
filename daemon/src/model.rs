//! Domain types. No I/O, no crypto, no wire formats: these are what the
//! workflows reason about and what the vault stores (sealed).

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The internal, pseudonymous identity of a patient: 16 opaque bytes.
///
/// It is never derived from PHI in the clear; the PMS link derives it as a
/// keyed hash (blind index) of the assigning authority and MRN, the chat
/// intake draws it at random. It names the patient in audit entries, logs and
/// the keyring, and survives erasure in the erasure ledger.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PatientId(pub [u8; 16]);

impl PatientId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p-{}", self.to_hex())
    }
}

impl fmt::Debug for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<String> for PatientId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::from_hex(&s).ok_or_else(|| "patient id must be 32 hex digits".to_owned())
    }
}

impl From<PatientId> for String {
    fn from(id: PatientId) -> String {
        id.to_hex()
    }
}

/// A patient as the clinic knows them. Every field but `id` is PHI.
///
/// `Debug` is written by hand so that a stray `{:?}` in a log line shows the
/// pseudonymous id and nothing else.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patient {
    pub id: PatientId,
    /// Medical record number from the configured assigning authority.
    pub mrn: String,
    pub family_name: String,
    pub given_name: String,
    pub birth_date: Option<Date>,
    /// E.164, e.g. `+4915112345678`.
    pub phone: Option<String>,
    /// BCP 47 language tag, e.g. `de` or `en`.
    pub language: Option<String>,
    /// PID-30: a deceased patient receives no outreach.
    pub deceased: bool,
    /// PD1-12: the patient asked not to be contacted.
    pub protected: bool,
}

impl fmt::Debug for Patient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patient")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Appointment status, FHIR R4 `AppointmentStatus` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppointmentStatus {
    Proposed,
    Pending,
    Booked,
    Arrived,
    Fulfilled,
    Cancelled,
    Noshow,
    EnteredInError,
    CheckedIn,
    Waitlist,
}

impl AppointmentStatus {
    pub fn fhir_code(self) -> &'static str {
        match self {
            AppointmentStatus::Proposed => "proposed",
            AppointmentStatus::Pending => "pending",
            AppointmentStatus::Booked => "booked",
            AppointmentStatus::Arrived => "arrived",
            AppointmentStatus::Fulfilled => "fulfilled",
            AppointmentStatus::Cancelled => "cancelled",
            AppointmentStatus::Noshow => "noshow",
            AppointmentStatus::EnteredInError => "entered-in-error",
            AppointmentStatus::CheckedIn => "checked-in",
            AppointmentStatus::Waitlist => "waitlist",
        }
    }

    /// Whether reminders still make sense for an appointment in this state.
    pub fn is_upcoming(self) -> bool {
        matches!(
            self,
            AppointmentStatus::Booked | AppointmentStatus::Pending | AppointmentStatus::Proposed
        )
    }
}

/// An appointment as the PMS booked it. `id` is the PMS's own identifier
/// (SCH-2, or SCH-1 when a sender only fills that).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appointment {
    pub id: String,
    pub patient: PatientId,
    pub start: jiff::Timestamp,
    pub duration_minutes: u32,
    pub status: AppointmentStatus,
    /// The PMS's raw status code (SCH-25), kept for the round trip.
    pub pms_status: Option<String>,
    pub provider: Option<String>,
    pub location: Option<String>,
    /// Set when the patient confirmed through clinic-relay.
    pub patient_confirmed: bool,
}

impl fmt::Debug for Appointment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appointment")
            .field("patient", &self.patient)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// An open slot the PMS offers for self-booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub id: String,
    pub start: jiff::Timestamp,
    pub duration_minutes: u32,
    pub provider: Option<String>,
    pub location: Option<String>,
    /// A coded service type, e.g. "checkup".
    pub service: Option<String>,
}

/// OBX-11 / OBR-25 result status (HL7 table 0085/0123), as far as we care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// F: final.
    Final,
    /// C: corrected (replaces an earlier final).
    Corrected,
    /// P and the rest: not deliverable unless configured.
    Preliminary,
    Other,
}

impl ResultStatus {
    pub fn from_hl7(code: &str) -> Self {
        match code.trim() {
            "F" => ResultStatus::Final,
            "C" => ResultStatus::Corrected,
            "P" | "I" | "R" | "S" | "A" => ResultStatus::Preliminary,
            _ => ResultStatus::Other,
        }
    }
}

/// A lab result document waiting to be delivered. The PDF is PHI and is
/// only ever stored sealed under the patient's key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabResult {
    pub order_number: String,
    pub patient: PatientId,
    pub status: ResultStatus,
    pub observed_at: Option<jiff::Timestamp>,
    pub received_at: jiff::Timestamp,
    /// How many versions (corrections) arrived for this order.
    pub version: u32,
    #[serde(with = "base64_bytes")]
    pub pdf: Vec<u8>,
    pub delivered: bool,
    /// The sender cancelled or deleted this result (ORC-1 `CA`, OBX-11 /
    /// OBR-25 `D`/`W`/`X`, MDM^T11, or replaced by an MDM^T10 under a new
    /// document number). A withdrawn result has no PDF and must never be
    /// delivered. Records written before this field existed read as `false`.
    #[serde(default)]
    pub withdrawn: bool,
    /// A one-time code the patient proves their identity with
    /// (`results.proof = "code"`): an OBX with the identifier `ZRC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_code: Option<String>,
}

impl LabResult {
    /// Whether this result may still go to the patient.
    pub fn is_deliverable(&self) -> bool {
        !self.withdrawn && !self.delivered && !self.pdf.is_empty()
    }
}

impl fmt::Debug for LabResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabResult")
            .field("patient", &self.patient)
            .field("status", &self.status)
            .field("pdf_bytes", &self.pdf.len())
            .field("withdrawn", &self.withdrawn)
            .finish_non_exhaustive()
    }
}

/// Stores bytes as base64 inside the (sealed) JSON record.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_stored_before_withdrawal_existed_decodes_as_not_withdrawn() {
        let old = r#"{"order_number":"FILL-1","patient":"000102030405060708090a0b0c0d0e0f",
            "status":"final","observed_at":null,"received_at":"2026-11-25T08:30:00Z",
            "version":1,"pdf":"JVBERi0xLjQK","delivered":false}"#;
        let r: LabResult = serde_json::from_str(old).unwrap();
        assert!(!r.withdrawn);
        assert!(r.is_deliverable());
        let withdrawn = LabResult {
            withdrawn: true,
            pdf: Vec::new(),
            ..r
        };
        assert_eq!(withdrawn.release_code, None);
        assert!(!withdrawn.is_deliverable());
        let back: LabResult =
            serde_json::from_str(&serde_json::to_string(&withdrawn).unwrap()).unwrap();
        assert!(back.withdrawn);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentState {
    OptedIn,
    OptedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentSource {
    Pms,
    Chat,
    Staff,
}

/// Whether a patient may be messaged on WhatsApp, and who said so when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub patient: PatientId,
    pub state: ConsentState,
    pub source: ConsentSource,
    pub at: jiff::Timestamp,
}

/// What happened, for the PMS's event feed. Names patients only by
/// pseudonymous id and appointments by the PMS's own id: never PHI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    AppointmentConfirmed,
    AppointmentCancelled,
    RescheduleRequested,
    BookingRequested,
    /// The PMS booked the slot the patient asked for (`slot`).
    BookingConfirmed,
    /// A booking request failed: `details.reason` = `taken` (the PMS
    /// booked the slot for someone else) or `expired` (no answer within
    /// `booking.hold`).
    BookingFailed,
    OptedOut,
    OptedIn,
    StaffRequested,
    /// A deliverable result's notice was queued (`details.sent` = `false`
    /// with a `reason` when the patient cannot be told: no consent, …).
    ResultNotified,
    /// The patient proved who they are and the document was queued.
    ResultDelivered,
    /// Too many wrong answers: the result is locked, nothing was sent
    /// (staff: contact the patient).
    ResultLocked,
    /// A result's PDF was purged after `results.retention`.
    ResultPurged,
    MessageFailed,
    PatientErased,
    PmsMessageRejected,
    /// A message for the PMS passed its expiry before it could be delivered.
    PmsMessageExpired,
    /// An event about a patient who has since been erased: nothing of it
    /// can be read any more (kind, time, ids are gone with their key).
    Redacted,
    /// A WhatsApp message from a patient (or an unknown sender) was stored.
    MessageReceived,
    /// A message we sent moved on: sent, delivered, read, played, failed.
    MessageStatus,
    /// Meta reported an account-level error in a webhook.
    WhatsappError,
    /// Meta refused a WhatsApp message for good (details: Meta's code), or
    /// it ran out of attempts.
    WhatsappMessageRejected,
    /// A WhatsApp message passed its expiry before it could be sent.
    WhatsappMessageExpired,
    /// A WhatsApp message was not queued: the number cannot be a mobile
    /// (details: `reason` `landline` or `not_mobile`; never the number).
    WhatsappUnreachable,
    /// A patient's inbound media was not kept (over the size limit, a
    /// checksum mismatch, Meta refused the download); details: `reason`.
    WhatsappMediaRefused,
    ReminderSkipped,
    /// An outbound WhatsApp message was not queued: it would have carried a
    /// field the minimal-payload policy does not allow (details: `reason`,
    /// `field`, `template`; never a value).
    PolicyBlocked,
    /// Someone the clinic does not know finished the chat's intake: an
    /// ADT registration request went to the PMS (details: `conversation`,
    /// `control_id`, `consent`, `topic`; never the name or birth date).
    NewPatientRequested,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub time: jiff::Timestamp,
    pub patient: Option<PatientId>,
    pub appointment: Option<String>,
    pub slot: Option<String>,
    /// Free-form, PHI-free details (reason codes, message ids).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: std::collections::BTreeMap<String, String>,
}

impl Event {
    /// What is left of an event about an erased patient: its kind says so,
    /// and nothing else is known.
    pub fn redacted() -> Self {
        Self {
            kind: EventKind::Redacted,
            time: jiff::Timestamp::UNIX_EPOCH,
            patient: None,
            appointment: None,
            slot: None,
            details: std::collections::BTreeMap::new(),
        }
    }
}
