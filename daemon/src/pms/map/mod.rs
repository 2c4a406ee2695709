//! HL7 v2 → domain commands. Dispatch is on MSH-9 alone; each message type
//! has its own file. A mapping error carries the ACK code and the ERR
//! contents (position and reason, never values).

mod adt;
mod cda;
mod fields;
mod oru;
mod siu;

use super::hl7::{AckCode, AckError, Message};
use super::phone::PhonePlan;
use crate::commands::Command;
use crate::model::AppointmentStatus;
use crate::vault::Vault;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::HashMap;

pub use fields::FieldPath;

/// How this clinic's PMS fills its messages (config `[pms]`).
#[derive(Debug, Clone)]
pub struct MappingConfig {
    /// PID-3 repetition whose CX-4 names this authority is the MRN; empty:
    /// the first `MR` repetition, else the first.
    pub assigning_authority: String,
    pub phone_plan: PhonePlan,
    pub time_zone: TimeZone,
    /// Local SCH-25 codes (upper-cased) and what they mean.
    pub status_map: HashMap<String, AppointmentStatus>,
    /// OBX-11 / OBR-25 codes whose documents are stored for delivery.
    pub deliverable_statuses: Vec<String>,
    pub max_pdf_bytes: usize,
    /// MSH-11.1 values accepted (upper case; `pms.processing_ids`). An empty
    /// MSH-11 counts as `P`.
    pub processing_ids: Vec<String>,
    /// Where the PMS says a patient opted in (`Y`) or out (`N`).
    pub consent_field: Option<FieldPath>,
    pub default_duration_minutes: u32,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            assigning_authority: String::new(),
            phone_plan: PhonePlan::default(),
            time_zone: TimeZone::UTC,
            status_map: HashMap::new(),
            deliverable_statuses: vec!["F".to_owned(), "C".to_owned()],
            max_pdf_bytes: 10 * 1024 * 1024,
            processing_ids: vec!["P".to_owned()],
            consent_field: Some(FieldPath {
                segment: "ZCN".to_owned(),
                field: 2,
                component: 1,
            }),
            default_duration_minutes: 15,
        }
    }
}

/// Why a message cannot be applied: the ACK code (AE or AR) and the ERR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: AckCode,
    pub error: AckError,
}

impl Rejection {
    pub fn content(error: AckError) -> Self {
        Self {
            code: AckCode::Error,
            error,
        }
    }

    pub fn missing(segment: &str, field: u32) -> Self {
        Self::content(AckError::required_field_missing(segment, field))
    }

    pub fn invalid(segment: &str, field: u32, what: &str) -> Self {
        Self::content(AckError::new(102, format!("{segment}-{field}: {what}")).at(segment, field))
    }
}

/// What the mapper needs besides the message: the vault's blind index (for
/// patient ids), the clock (received times) and the config.
pub struct MapContext<'a> {
    pub vault: &'a Vault,
    pub config: &'a MappingConfig,
    pub now: Timestamp,
}

/// Maps one message to the commands that apply it.
pub fn map(msg: &Message, ctx: &MapContext<'_>) -> Result<Vec<Command>, Rejection> {
    let Some(kind) = msg.message_type() else {
        return Err(Rejection {
            code: AckCode::Reject,
            error: AckError::required_field_missing("MSH", 9),
        });
    };
    check_message_time(msg)?;
    let code = kind.code.trim().to_ascii_uppercase();
    let trigger = kind.trigger.trim().to_ascii_uppercase();
    match (code.as_str(), trigger.as_str()) {
        ("ADT", t) if adt::REGISTRATIONS.contains(&t) => adt::register(msg, ctx),
        ("ADT", t) if adt::MERGES.contains(&t) => adt::merge(msg, ctx),
        // Every other ADT event (visits, transfers, discharges, links, and
        // events we do not know): its PIDs only fill in.
        ("ADT", _) => adt::context(msg, ctx),
        ("SIU", t) if siu::TRIGGERS.contains(&t) => siu::schedule(msg, &trigger, ctx),
        ("ORU", "R01") => oru::document(msg, &trigger, ctx),
        ("MDM", t) if oru::MDM_TRIGGERS.contains(&t) => oru::document(msg, &trigger, ctx),
        ("SIU" | "ORU" | "MDM", _) => Err(Rejection {
            code: AckCode::Reject,
            error: AckError::new(201, format!("unsupported event {code}^{trigger}")).at("MSH", 9),
        }),
        _ => Err(Rejection {
            code: AckCode::Reject,
            error: AckError::new(200, format!("unsupported message type {code}")).at("MSH", 9),
        }),
    }
}

/// MSH-7 is not stored, but a year outside [`crate::bounds`] is a sender
/// bug worth an AE rather than a silent AA. Other shapes stay accepted, as
/// they always were (some PMSs write odd MSH-7s).
fn check_message_time(msg: &Message) -> Result<(), Rejection> {
    let Some(value) = msg
        .segment("MSH")
        .and_then(|msh| fields::clean(msh.component(7, 1)))
    else {
        return Ok(());
    };
    let year = value
        .trim()
        .get(..4)
        .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|y| y.parse::<i16>().ok());
    match year {
        Some(y) if !(crate::bounds::MIN_YEAR..=crate::bounds::MAX_YEAR).contains(&y) => Err(
            Rejection::invalid("MSH", 7, "date/time out of range (years 1900 to 2199)"),
        ),
        _ => Ok(()),
    }
}
