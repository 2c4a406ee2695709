//! The practice-management-system boundary: everything that speaks to the PMS.

pub mod hl7;
