//! The PMS link: HL7 v2 over MLLP in and out.

pub mod hl7;
pub mod ingest;
pub mod listener;
pub mod map;
pub mod mllp;
pub mod new_patient;
pub mod outbound;
pub mod phone;
pub mod sender;
