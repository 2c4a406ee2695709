//! The API's JSON request bodies (FHIR Patient, Appointment, the slot list):
//! deserialising and every accessor the handlers call never panic, whatever
//! the bytes.
#![no_main]

use clinic_relay::api::fhir::{AppointmentIn, PatientIn, SlotIn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<PatientIn>(bytes) {
        let _ = (p.mrn(), p.phone(), p.language());
        let _ = format!("{p:?}");
    }
    if let Ok(a) = serde_json::from_slice::<AppointmentIn>(bytes) {
        let _ = (
            a.patient(),
            a.duration_minutes(),
            a.provider(),
            a.location(),
        );
        let _ = format!("{a:?}");
    }
    if let Ok(slots) = serde_json::from_slice::<Vec<SlotIn>>(bytes) {
        let _ = format!("{slots:?}");
    }
});
