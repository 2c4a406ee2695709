//! The rest of the conversation bot's menu (issue 11, items 2 and 3),
//! through real sockets and a manual clock, signed webhooks in, the
//! simulator and a test PMS peer out:
//! - an unknown number says "hola", picks Book, answers name, date of
//!   birth and consent → `new-patient-requested` on `GET /v1/events`, an
//!   `ADT^A04` with the name and birth date at the PMS peer, the
//!   conversation waiting in the inbox; the simulator never sees the name
//!   or the birth date, the data directory holds neither in plaintext;
//! - My appointments: two upcoming visits, a tap on one's Cancel → SRM^S04;
//! - Results from the menu: "results" → the proof question; the right
//!   date of birth → the document at the simulator.

use crate::care_reminders::{
    daemon_with, opt_in, pms_got, pms_peer, pms_recorder, post_signed, siu, WA_ID,
};
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{meta_json, text_message};
use clinic_relay::model::PatientId;
use clinic_relay::vault::Tree;
use graph_sim::{Sim, Template};
use serde_json::{json, Value};

const ON: &str = "\n[conversations]\nenabled = true\n";
const STRANGER: &str = "4915155509999";
/// What the stranger tells the bot: it may reach the PMS, never WhatsApp
/// and never the disk in plaintext.
const INTAKE_MARKERS: &[&str] = &[
    "ZZINTAKEGIVEN",
    "ZZINTAKEFAMILY",
    "03/02/1901",
    "19010203",
    "1901-02-03",
];

/// A tap on an interactive message of ours (a list row or a reply button).
fn tap(wamid: &str, from: &str, kind: &str, id: &str) -> Vec<u8> {
    meta_json(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "ZZ"}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid, "timestamp": "1800000060", "type": "interactive",
                          "interactive": {"type": kind, kind: {"id": id, "title": "ZZ"}}}]
        }}]}]
    }))
}

async fn drain(d: &Daemon) {
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the outbox empty", || {
        (d.running.vault.count(Tree::WaOutbox) == 0).then_some(())
    })
    .await;
}

/// Posts `body`, lets the outbox send, and waits for the `n`-th message at
/// the simulator (counted from 0).
async fn exchange(d: &Daemon, sim: &Sim, body: Vec<u8>, n: usize) -> Value {
    assert_eq!(post_signed(d, body).await, 200);
    drain(d).await;
    until(&format!("message {n} at the simulator"), || {
        sim.sent_messages().into_iter().nth(n)
    })
    .await
}

fn body(m: &Value) -> &str {
    m["text"]["body"]
        .as_str()
        .or(m["interactive"]["body"]["text"].as_str())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_number_books_and_becomes_a_new_patient_request() {
    let sim = Sim::start().await.unwrap();
    let (pms, received) = pms_recorder().await;
    let d = daemon_with(&sim, pms, "", ON).await;

    let menu = exchange(
        &d,
        &sim,
        text_message("wamid.I1", STRANGER, "ZZ", "hola"),
        0,
    )
    .await;
    assert_eq!(menu["to"], format!("+{STRANGER}"));
    assert!(
        body(&menu).starts_with("¿En qué podemos ayudarle?"),
        "{menu}"
    );
    let book = menu["interactive"]["action"]["sections"][0]["rows"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = exchange(&d, &sim, tap("wamid.I2", STRANGER, "list_reply", &book), 1).await;
    assert!(body(&q).contains("nombre completo"), "{q}");
    // Digits are no name: asked again, nothing kept.
    let again = exchange(&d, &sim, text_message("wamid.I3", STRANGER, "ZZ", "12"), 2).await;
    assert_eq!(body(&again), body(&q));
    let name = "ZZINTAKEGIVEN ZZINTAKEFAMILY";
    let q = exchange(&d, &sim, text_message("wamid.I4", STRANGER, "ZZ", name), 3).await;
    assert!(body(&q).contains("fecha de nacimiento"), "{q}");
    let dob = "03/02/1901";
    let q = exchange(&d, &sim, text_message("wamid.I5", STRANGER, "ZZ", dob), 4).await;
    assert_eq!(q["interactive"]["type"], "button", "{q}");
    let yes = q["interactive"]["action"]["buttons"][0]["reply"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        q["interactive"]["action"]["buttons"][0]["reply"]["title"],
        "Sí"
    );
    let thanks = exchange(&d, &sim, tap("wamid.I6", STRANGER, "button_reply", &yes), 5).await;
    assert!(body(&thanks).contains("le dará de alta"), "{thanks}");

    // The request on the feed (a reference, no name) …
    let (status, feed) = d.api("GET", "/v1/events?after=0", None).await;
    assert_eq!(status, 200);
    let request = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "new-patient-requested")
        .cloned()
        .expect("a new-patient-requested event");
    assert_eq!(request["details"]["consent"], "yes", "{request}");
    assert_eq!(request["details"]["topic"], "booking");
    let control_id = request["details"]["control_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = feed.to_string();
    for m in INTAKE_MARKERS {
        assert!(!text.contains(m), "the feed carries {m}");
    }
    // … and the ADT^A04 at the PMS, with the name, birth date, number and
    // consent, and no MRN.
    let adt = until("the ADT^A04 at the PMS", || {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.contains("ADT^A04"))
            .cloned()
    })
    .await;
    assert!(adt.contains(&control_id), "{adt}");
    let pid = adt.split('\r').find(|s| s.starts_with("PID|")).unwrap();
    assert_eq!(
        pid,
        format!("PID|1||||ZZINTAKEFAMILY^ZZINTAKEGIVEN||19010203||||||^PRN^CP^^^^^^^^^+{STRANGER}")
    );
    assert!(adt.contains("\rZCN|WHATSAPP|Y"), "{adt}");

    // The conversation waits for staff (reason new-patient), with the
    // answers in its log for the person who registers them.
    let (status, list) = d.api("GET", "/v1/conversations?state=waiting", None).await;
    assert_eq!(status, 200);
    let list = list["conversations"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["contact"], "unknown");
    assert_eq!(list[0]["topic"], "booking");
    assert_eq!(list[0]["id"], request["details"]["conversation"]);
    let staff = crate::webhook::events(&d, clinic_relay::model::EventKind::StaffRequested);
    assert_eq!(staff.len(), 1);
    assert_eq!(staff[0].details["reason"], "new-patient");
    // The answers kept for the request are gone with it.
    let kept = d
        .running
        .vault
        .scan_raw_from(Tree::Care, b"I")
        .filter_map(Result::ok)
        .filter(|(k, _)| k.first() == Some(&b'I'))
        .count();
    assert_eq!(kept, 0);

    assert_sim_saw_none(&sim, INTAKE_MARKERS);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    let install = d.stop().await;
    let markers: Vec<String> = INTAKE_MARKERS.iter().map(|m| (*m).to_owned()).collect();
    let hits = scan_dir(&install.data, &markers);
    assert!(hits.is_empty(), "plaintext in the data directory: {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_done_intake_is_dropped_by_the_idle_reset_and_no_means_no_messages() {
    let sim = Sim::start().await.unwrap();
    let (pms, received) = pms_recorder().await;
    let d = daemon_with(&sim, pms, "", ON).await;
    // "book" straight away (no greeting), a name, then silence.
    exchange(
        &d,
        &sim,
        text_message("wamid.J1", STRANGER, "ZZ", "book"),
        0,
    )
    .await;
    let name = "ZZINTAKEGIVEN ZZINTAKEFAMILY";
    exchange(&d, &sim, text_message("wamid.J2", STRANGER, "ZZ", name), 1).await;
    let intake = |d: &Daemon| {
        d.running
            .vault
            .scan_raw_from(Tree::Care, b"I")
            .filter_map(Result::ok)
            .filter(|(k, _)| k.first() == Some(&b'I'))
            .count()
    };
    assert_eq!(intake(&d), 1);
    let (_, list) = d.api("GET", "/v1/conversations?state=intake", None).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    crate::care_reminders::at(&d, t0() + jiff::SignedDuration::from_mins(31)).await;
    assert_eq!(intake(&d), 0, "the kept name is gone with the reset");
    let (_, list) = d.api("GET", "/v1/conversations?state=idle", None).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    // A date now is no answer to anything: it goes to staff, no request.
    exchange(
        &d,
        &sim,
        text_message("wamid.J3", STRANGER, "ZZ", "03/02/1901"),
        2,
    )
    .await;
    assert!(
        crate::webhook::events(&d, clinic_relay::model::EventKind::NewPatientRequested).is_empty()
    );
    let (_, list) = d.api("GET", "/v1/conversations?state=waiting", None).await;
    let id = list["conversations"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = d
        .api("POST", &format!("/v1/conversations/{id}/close"), None)
        .await;
    assert_eq!(status, 200);

    // Again, to the end, and No to messages: still a request (consent N),
    // and told that nothing else will come.
    let n = sim.sent_messages().len();
    exchange(&d, &sim, text_message("wamid.J4", STRANGER, "ZZ", "2"), n).await;
    exchange(
        &d,
        &sim,
        text_message("wamid.J5", STRANGER, "ZZ", name),
        n + 1,
    )
    .await;
    exchange(
        &d,
        &sim,
        text_message("wamid.J6", STRANGER, "ZZ", "3.2.1901"),
        n + 2,
    )
    .await;
    let thanks = exchange(
        &d,
        &sim,
        text_message("wamid.J7", STRANGER, "ZZ", "no"),
        n + 3,
    )
    .await;
    assert!(
        body(&thanks).contains("you will get no WhatsApp messages"),
        "{thanks}"
    );
    let requests = crate::webhook::events(&d, clinic_relay::model::EventKind::NewPatientRequested);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].details["consent"], "no");
    assert_eq!(requests[0].details["topic"], "appointments");
    let adt = until("the ADT^A04 at the PMS", || {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.contains("ADT^A04"))
            .cloned()
    })
    .await;
    assert!(adt.contains("\rZCN|WHATSAPP|N"), "{adt}");
    assert_sim_saw_none(&sim, INTAKE_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_appointments_lists_the_upcoming_ones_and_a_cancel_reaches_the_pms() {
    let sim = Sim::start().await.unwrap();
    let (pms, received) = pms_peer().await;
    let d = daemon_with(&sim, pms, "", ON).await;
    let mut c = d.mllp().await;
    // t0 is Fri 15 January 2027 09:00 in Berlin.
    for (id, appt, start) in [
        ("M1", "APPT-M1", "202701221000"),
        ("M2", "APPT-M2", "202701201000"),
    ] {
        let ack = c.send(&siu("SIU^S12^SIU_S12", id, appt, start)).await;
        assert_eq!(msa(&ack).0, "AA");
    }
    let ask = text_message("wamid.A1", WA_ID, "ZZ", "my appointments");
    let first = exchange(&d, &sim, ask, 0).await;
    let second = until("the second appointment", || {
        sim.sent_messages().into_iter().nth(1)
    })
    .await;
    // Soonest first; date and time only, with the reminder's own buttons.
    assert_eq!(body(&first), "Your appointment: Wed, Jan 20, 10:00 AM.");
    assert_eq!(body(&second), "Your appointment: Fri, Jan 22, 10:00 AM.");
    let buttons = first["interactive"]["action"]["buttons"]
        .as_array()
        .unwrap()
        .clone();
    let titles: Vec<&str> = buttons
        .iter()
        .map(|b| b["reply"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Cancel", "Reschedule"]);
    let cancel = buttons[0]["reply"]["id"].as_str().unwrap().to_owned();
    assert!(cancel.starts_with("cr1:x:"), "{cancel}");

    let done = exchange(&d, &sim, tap("wamid.A2", WA_ID, "button_reply", &cancel), 2).await;
    assert_eq!(
        body(&done),
        "Your appointment is cancelled; the practice has been told."
    );
    pms_got(&received, "SRM^S04").await;
    let cancelled =
        crate::webhook::events(&d, clinic_relay::model::EventKind::AppointmentCancelled);
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].appointment.as_deref(), Some("APPT-M2"));
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    assert_sim_saw_none(&sim, &["APPT-M1", "APPT-M2", "ROOM1", "Room 2", "ZZDOC"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_from_the_menu_ask_for_proof_and_deliver_the_document() {
    use base64::Engine as _;
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("document_ready", "en"));
    let (pms, _) = pms_peer().await;
    let d = daemon_with(&sim, pms, "", ON).await;
    let mut c = d.mllp().await;
    let ack = c.send(&adt_a04("A-R", "CARE001", "ZZFAMILY", "")).await;
    assert_eq!(msa(&ack).0, "AA");
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, patient).await;

    // Nothing offered yet: "no new documents", no hand-off.
    let none = exchange(
        &d,
        &sim,
        text_message("wamid.R0", WA_ID, "ZZ", "results"),
        0,
    )
    .await;
    assert_eq!(
        body(&none),
        "There are no new documents for you at the moment."
    );

    let pdf = b"%PDF-1.4\n% ZZPDFMARKER\n%%EOF\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
    let oru = [
        msh("ORU^R01^ORU_R01", "R1", "2.5.1"),
        "PID|1||CARE001^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN||19010203".to_owned(),
        "ORC|RE|PL-RES-M1|RES-M1".to_owned(),
        "OBR|1|PL-RES-M1|RES-M1|ZZTESTNAMEMARKER|||20270114080000".to_owned(),
        format!("OBX|1|ED|PDF^Report||^AP^PDF^Base64^{b64}||||||F"),
    ]
    .join("\r");
    let ack = c.send(&oru).await;
    assert_eq!(msa(&ack).0, "AA");
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the notice", || sim.sent_messages().into_iter().nth(1)).await;

    // "results" instead of the notice's button: the same proof question.
    let ask = exchange(&d, &sim, text_message("wamid.R1", WA_ID, "ZZ", "3"), 2).await;
    assert_eq!(
        body(&ask),
        "To open your document, please reply with your date of birth (for example 31.12.1980)."
    );
    assert_eq!(
        post_signed(&d, text_message("wamid.R2", WA_ID, "ZZ", "3.2.1901")).await,
        200
    );
    d.running.whatsapp.as_ref().unwrap().kick();
    let doc = until("the document at the simulator", || {
        sim.sent_messages()
            .into_iter()
            .find(|m| m["type"] == "document")
    })
    .await;
    assert_eq!(doc["document"]["filename"], "document.pdf");
    // Delivered: nothing new any more.
    let n = sim.sent_messages().len();
    let none = exchange(
        &d,
        &sim,
        text_message("wamid.R3", WA_ID, "ZZ", "results"),
        n,
    )
    .await;
    assert_eq!(
        body(&none),
        "There are no new documents for you at the moment."
    );
    // A second result, locked by three wrong answers: the menu says so.
    let ack = c
        .send(&oru.replace("RES-M1", "RES-M2").replace("|R1|", "|R2|"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let ask = exchange(
        &d,
        &sim,
        text_message("wamid.R4", WA_ID, "ZZ", "results"),
        n + 2,
    )
    .await;
    assert!(body(&ask).starts_with("To open your document"), "{ask}");
    for (i, wrong) in ["01.01.1990", "02.01.1990", "03.01.1990"]
        .iter()
        .enumerate()
    {
        let m = text_message(&format!("wamid.R5{i}"), WA_ID, "ZZ", wrong);
        exchange(&d, &sim, m, n + 3 + i).await;
    }
    let locked = exchange(
        &d,
        &sim,
        text_message("wamid.R6", WA_ID, "ZZ", "results"),
        n + 6,
    )
    .await;
    assert_eq!(
        body(&locked),
        "For your safety, this document can no longer be opened here. Please contact the practice."
    );
    assert!(crate::webhook::events(&d, clinic_relay::model::EventKind::StaffRequested).is_empty());
    assert_sim_saw_none(&sim, &["ZZTESTNAMEMARKER", "RES-M1", "RES-M2"]);
    d.stop().await;
}
