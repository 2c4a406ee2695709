//! Phone numbers through libphonenumber (issue 9, item 2): the config keys
//! old and new, E.164 from whatever the PMS writes, and stores written by
//! the hand-written normaliser that came before.

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::config::Config;
use clinic_relay::model::Patient;
use clinic_relay::pms::phone;

/// The pre-registered patient's MRN (the test config has no assigning
/// authority, so the id is the one ingest computes for this MRN).
const MRN: &str = "000901";

fn config(pms: &str) -> Result<Config, String> {
    let install = TestInstall::new(&format!("[pms]\nmllp_listen = \"127.0.0.1:0\"\n{pms}"));
    Config::load(&install.config).map_err(|e| e.to_string())
}

#[test]
fn phone_region_and_the_old_keys_load_and_bad_values_name_the_fix() {
    let region = |pms: &str| {
        config(pms)
            .unwrap()
            .pms
            .mapping
            .phone_plan
            .region()
            .to_owned()
    };
    assert_eq!(region(""), "DE");
    assert_eq!(region("phone_region = \"AT\"\n"), "AT");
    // A file written before pms.phone_region still loads as it meant.
    assert_eq!(
        region("phone_country_code = \"49\"\nphone_trunk_prefix = \"0\"\n"),
        "DE"
    );
    assert_eq!(
        region("phone_country_code = \"1\"\nphone_trunk_prefix = \"1\"\n"),
        "US"
    );
    let e = config("phone_region = \"Germany\"\n").unwrap_err();
    assert!(
        e.contains("`pms.phone_region` = \"Germany\"") && e.contains("Fix:"),
        "{e}"
    );
    let e = config("phone_region = \"AT\"\nphone_country_code = \"49\"\n").unwrap_err();
    assert!(
        e.contains("pms.phone_country_code") && e.contains("43"),
        "{e}"
    );
    let e = config("phone_trunk_prefix = \"x\"\n").unwrap_err();
    assert!(
        e.contains("pms.phone_trunk_prefix") && e.contains("Fix:"),
        "{e}"
    );
}

/// A patient as the release before libphonenumber stored them: its
/// normaliser wrote "0151 555-01234" as this string, and the blind index is
/// over it.
fn stored_before(vault: &clinic_relay::vault::Vault) -> Patient {
    Patient {
        id: vault.patient_id_for_mrn("", MRN),
        mrn: MRN.to_owned(),
        family_name: "ZZPHONEFAMILY".to_owned(),
        given_name: "ZZPHONEGIVEN".to_owned(),
        birth_date: Some(jiff::civil::date(1901, 2, 3)),
        phone: Some("+4915155501234".to_owned()),
        language: None,
        deceased: false,
        protected: false,
    }
}

/// An ADT^A08 for `mrn` whose only number is `phone`, as the PMS wrote it.
fn adt_a08(control_id: &str, mrn: &str, phone: &str) -> String {
    [
        msh("ADT^A08^ADT_A01", control_id, "2.5.1"),
        "EVN|A08|20261125093000".to_owned(),
        format!(
            "PID|1||{mrn}^^^ZZHOSP^MR||ZZPHONEFAMILY^ZZPHONEGIVEN||19010203|F|||||{phone}^PRN^CP"
        ),
    ]
    .join("\r")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_before_still_finds_the_patient_by_phone() {
    let install = TestInstall::new("[pms]\nmllp_listen = \"127.0.0.1:0\"\nphone_region = \"DE\"\n");
    let (install, before) = tokio::task::spawn_blocking(move || {
        let vault = install.open();
        let p = stored_before(&vault);
        vault.put_patient(&p, "test", t0()).unwrap();
        vault.close().unwrap();
        (install, p)
    })
    .await
    .unwrap();
    let d = Daemon::start_in(install).await;
    let vault = &d.running.vault;
    let plan = phone::PhonePlan::for_region("DE").unwrap();
    for raw in ["0151 555-01234", "+49 (0)151 55501234", "0049 151 55501234"] {
        let e164 = phone::to_e164(raw, &plan).unwrap();
        assert_eq!(
            vault.find_patients_by_phone(&e164).unwrap(),
            vec![before.id],
            "{raw}"
        );
    }
    // The PMS sends the number again in another layout: still one patient
    // under one index entry.
    let mut c = d.mllp().await;
    let ack = c
        .send(&adt_a08("PHONE1", MRN, "+49 (0)151 555-01234"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let p = vault.get_patient(before.id).unwrap().unwrap();
    assert_eq!(p.phone, before.phone);
    assert_eq!(
        vault.find_patients_by_phone("+4915155501234").unwrap(),
        vec![before.id]
    );
    // A number libphonenumber does not accept counts as absent, and a
    // registration replaces the record (HL7 § 5.1): the index entry goes.
    let ack = c.send(&adt_a08("PHONE2", MRN, "0151 12")).await;
    assert_eq!(msa(&ack).0, "AA");
    let p = vault.get_patient(before.id).unwrap().unwrap();
    assert_eq!(p.phone, None);
    assert!(vault
        .find_patients_by_phone("+4915155501234")
        .unwrap()
        .is_empty());
    d.stop().await;
}

// ---- mobile-only WhatsApp --------------------------------------------------

use clinic_relay::model::EventKind;
use clinic_relay::vault::Tree;
use clinic_relay::whatsapp::message::{self, Params, Recipient, TemplateSpec};
use clinic_relay::whatsapp::outbox::{self, OutboxError, WaItem};

fn reminder(
    vault: &clinic_relay::vault::Vault,
    mrn: &str,
    raw: &str,
) -> (WaItem, clinic_relay::model::PatientId) {
    let plan = phone::PhonePlan::default();
    let e164 = phone::to_e164(raw, &plan).unwrap();
    let patient = vault.patient_id_for_mrn("", mrn);
    let mut p = stored_before(vault);
    (p.id, p.mrn, p.phone) = (patient, mrn.to_owned(), Some(e164.clone()));
    vault.put_patient(&p, "test", t0()).unwrap();
    let item = WaItem {
        patient: Some(patient),
        recipient: Some(Recipient::phone(&e164).unwrap()),
        message: message::template(&TemplateSpec {
            name: "appointment_reminder",
            language: "de",
            header: None,
            body: Params::Positional(vec!["Mo", "9:00"]),
            quick_replies: vec![],
        })
        .unwrap(),
        reference: Some("appt-ref-1".to_owned()),
    };
    (item, patient)
}

fn unreachable_events(vault: &clinic_relay::vault::Vault) -> Vec<clinic_relay::model::Event> {
    vault
        .events_after(0, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.kind == EventKind::WhatsappUnreachable)
        .collect()
}

/// Patients are written with the vault's blocking calls, which must not
/// run on the runtime: enqueue runs on this one.
fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_landline_is_not_queued_and_the_feed_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(&tmp.path().join("data"), &key(9));
    // A Berlin landline: refused at enqueue, with an event and no number.
    let (landline, patient) = reminder(&vault, "000911", "030 12345678");
    let err = run(outbox::enqueue(&vault, landline, t0(), None)).unwrap_err();
    assert!(
        matches!(err, OutboxError::Unreachable { reason: "landline" }),
        "{err}"
    );
    assert!(!err.to_string().contains("12345678"), "{err}");
    assert_eq!(vault.count(Tree::WaOutbox), 0, "nothing queued");
    let events = unreachable_events(&vault);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].patient, Some(patient));
    assert_eq!(events[0].details["reason"], "landline");
    assert_eq!(events[0].details["reference"], "appt-ref-1");
    assert_eq!(events[0].details["message"], "template");
    let json = serde_json::to_string(&events[0]).unwrap();
    assert!(!json.contains("12345678"), "no number on the feed: {json}");
    // A toll-free number cannot be a mobile either.
    let (free, _) = reminder(&vault, "000912", "0800 1234567");
    let err = run(outbox::enqueue(&vault, free, t0(), None)).unwrap_err();
    assert!(matches!(
        err,
        OutboxError::Unreachable {
            reason: "not_mobile"
        }
    ));
    // A German mobile and a US number (NANP: fixed or mobile) are queued.
    let (mobile, _) = reminder(&vault, "000913", "0151 12345678");
    run(outbox::enqueue(&vault, mobile, t0(), None)).unwrap();
    let us = WaItem {
        recipient: Some(Recipient::phone("+12015550123").unwrap()),
        ..reminder(&vault, "000914", "0151 12345679").0
    };
    run(outbox::enqueue(&vault, us, t0(), None)).unwrap();
    assert_eq!(vault.count(Tree::WaOutbox), 2);
    assert_eq!(unreachable_events(&vault).len(), 2);
    // A reminder run: the landline is left out with its event, the rest
    // goes in the same commit.
    let batch = vec![
        (reminder(&vault, "000915", "089 1234567").0, None),
        (reminder(&vault, "000916", "0160 1234567").0, None),
    ];
    run(outbox::enqueue_many(&vault, batch, t0())).unwrap();
    assert_eq!(vault.count(Tree::WaOutbox), 3);
    assert_eq!(unreachable_events(&vault).len(), 3);
    vault.close().unwrap();
}

// ---- inbound wa_id matching -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_finds_the_patient_the_pms_wrote_in_national_form() {
    use crate::webhook::{events, post_signed, start_receiver, text_message};
    let d = start_receiver("").await;
    let mut c = d.mllp().await;
    for (id, mrn, raw) in [
        ("PHONE3", "000921", "0151 555-01234"),
        ("PHONE4", "000922", "+52 55 1234 5678"),
        ("PHONE5", "000923", "+55 11 98765-4321"),
    ] {
        let ack = c.send(&adt_a08(id, mrn, raw)).await;
        assert_eq!(msa(&ack).0, "AA", "{raw}");
    }
    let vault = &d.running.vault;
    let id = |mrn| vault.patient_id_for_mrn("", mrn);
    // Meta's wa_id: digits without "+"; for Mexico with the old mobile "1",
    // for an old Brazilian account without the ninth digit.
    for (wamid, wa_id) in [
        ("wamid.PH1", "4915155501234"),
        ("wamid.PH2", "5215512345678"),
        ("wamid.PH3", "551187654321"),
    ] {
        let body = text_message(wamid, wa_id, "ZZNAME", "hallo");
        assert_eq!(post_signed(&d, &body).await, 200, "{wa_id}");
    }
    let received = events(&d, EventKind::MessageReceived);
    let patients: Vec<_> = received.iter().map(|e| e.patient).collect();
    assert_eq!(
        patients,
        vec![Some(id("000921")), Some(id("000922")), Some(id("000923"))]
    );
    assert!(received.iter().all(|e| !e.details.contains_key("matched")));
    d.stop().await;
}
