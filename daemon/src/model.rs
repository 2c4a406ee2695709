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
