//! The PMS link: HL7 v2 over MLLP in and out.

pub mod listener;
pub mod mllp;
pub mod phone;
