//! HL7 bytes → parse → map → commands → the FHIR views the API would render.
//! Never a panic; an ACK is always written and re-parses with its code; what
//! parses re-encodes with the builder and re-parses to the same values.
#![no_main]

use clinic_relay::api::fhir;
use clinic_relay::commands::Command;
use clinic_relay::keys::MasterKey;
use clinic_relay::pms::hl7::{self, AckCode, AckError, Encoding, Field, Message};
use clinic_relay::pms::map::{self, MapContext, MappingConfig};
use clinic_relay::vault::Vault;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn vault() -> &'static Vault {
    static VAULT: OnceLock<Vault> = OnceLock::new();
    VAULT.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("clinic-relay-fuzz-hl7-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Vault::open(&dir, &MasterKey::from_bytes([7; 32])).expect("a vault in the temp dir")
    })
}

fn config() -> &'static MappingConfig {
    static CONFIG: OnceLock<MappingConfig> = OnceLock::new();
    CONFIG.get_or_init(|| MappingConfig {
        time_zone: jiff::tz::TimeZone::get("Europe/Berlin").expect("bundled tzdb"),
        ..MappingConfig::default()
    })
}

fn is_header(id: &str) -> bool {
    matches!(id, "MSH" | "BHS" | "FHS")
}

/// A field's values with trailing empties trimmed at every level (the wire
/// cannot tell `a^` from `a`), CR written as LF (CR is encoded as `\.br\`).
fn shape(f: &Field) -> Vec<Vec<Vec<String>>> {
    fn trim<T>(mut v: Vec<T>, empty: impl Fn(&T) -> bool) -> Vec<T> {
        while v.last().is_some_and(&empty) {
            v.pop();
        }
        v
    }
    let reps = f.repetitions.iter().map(|r| {
        let comps = r.components.iter().map(|c| {
            let subs = c
                .subcomponents
                .iter()
                .map(|s| s.replace("\r\n", "\n").replace('\r', "\n"))
                .collect();
            trim(subs, String::is_empty)
        });
        trim(comps.collect(), Vec::is_empty)
    });
    trim(reps.collect(), Vec::is_empty)
}

fn values(m: &Message) -> Vec<(String, Vec<Vec<Vec<Vec<String>>>>)> {
    m.segments()
        .iter()
        .map(|s| {
            let from = if is_header(&s.id) { 2 } else { 0 };
            let mut fields: Vec<_> = s.fields.iter().skip(from).map(shape).collect();
            while fields.last().is_some_and(Vec::is_empty) {
                fields.pop();
            }
            (s.id.clone(), fields)
        })
        .collect()
}

fn reencode(m: &Message) -> Option<Vec<u8>> {
    let mut b = hl7::MessageBuilder::new();
    for seg in m.segments() {
        let mut s = hl7::SegmentBuilder::new(&seg.id);
        let first = if is_header(&seg.id) { 3 } else { 1 };
        for (i, f) in seg.fields.iter().enumerate().skip(first - 1) {
            s.set_field(i + 1, f.clone());
        }
        b.push(s);
    }
    b.build().ok()
}

fuzz_target!(|bytes: &[u8]| {
    let now = jiff::Timestamp::from_second(1_800_000_000).expect("a valid time");
    let Ok(header) = hl7::parse_header(bytes) else {
        let err = AckError::new(102, "unreadable");
        let ack = hl7::ack_unparsed(&err, now, "CLINIC-RELAY", "CLINIC", "1");
        assert!(
            hl7::parse(&ack).is_ok(),
            "the AR for an unreadable message must parse"
        );
        return;
    };
    let outcome = match hl7::parse(bytes) {
        Ok(m) => {
            if m.encoding() == Encoding::Utf8 {
                if let Some(again) = reencode(&m) {
                    let back = hl7::parse(&again).expect("what the builder writes parses");
                    assert_eq!(values(&m), values(&back), "re-encoding changed a value");
                }
            }
            let ctx = MapContext {
                vault: vault(),
                config: config(),
                now,
            };
            match map::map(&m, &ctx) {
                Ok(commands) => {
                    for c in &commands {
                        match c {
                            Command::UpsertAppointment(a) => drop(fhir::appointment(a)),
                            Command::UpsertResult(r) => drop(fhir::diagnostic_report(r)),
                            Command::UpsertPatient(p) | Command::UpdatePatientFromContext(p) => {
                                drop(fhir::patient(p))
                            }
                            Command::ReplaceSlots(slots) => {
                                slots.iter().for_each(|s| drop(fhir::slot(s)))
                            }
                            _ => {}
                        }
                    }
                    (AckCode::Accept, None)
                }
                Err(rejection) => (rejection.code, Some(rejection.error)),
            }
        }
        Err(_) => (AckCode::Reject, Some(AckError::new(102, "unreadable"))),
    };
    let ack = hl7::ack(
        &header,
        outcome.0,
        outcome.1.as_ref(),
        now,
        "CLINIC-RELAY",
        "CLINIC",
        "1",
    );
    let parsed = hl7::parse(&ack).expect("our ACK parses");
    let msa = parsed.segment("MSA").expect("an ACK has an MSA");
    assert_eq!(
        msa.text(1),
        Some(outcome.0.as_str()),
        "MSA-1 carries the code"
    );
});
