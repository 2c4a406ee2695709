//! The results journey end to end (issue 11, item 3), through real sockets
//! and a manual clock: ORU^R01 with a PDF (status F) over MLLP → the
//! `document_ready` notice at the simulator (nothing of the result in it) →
//! a signed "Show it" tap → asked for the date of birth → two wrong answers
//! (replies) → the right one → the PDF uploaded and sent as a document with
//! a neutral name → a signed `delivered` status → the upload deleted at the
//! simulator. A second result locks after three wrong answers (staff event,
//! nothing sent); a correction is offered again; retention purges the PDF.

use crate::care_reminders::{at, button_tap, daemon, opt_in, payloads, pms_peer, post_signed};
use crate::care_reminders::{templates, WA_ID};
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{events, statuses_body, text_message};
use base64::Engine as _;
use clinic_relay::model::{EventKind, PatientId};
use graph_sim::{Sim, Template};
use jiff::SignedDuration;

/// Markers in the result's OBX segments (test name, value) and its order
/// number: they must never reach WhatsApp.
const RESULT_MARKERS: &[&str] = &["ZZTESTNAMEMARKER", "ZZVALUEMARKER", "RES-R1", "RES-R2"];
/// Inside the PDF only: the document itself carries it, the notice never.
const PDF_MARKER: &str = "ZZPDFMARKER";

fn pdf(n: u32) -> Vec<u8> {
    format!("%PDF-1.4\n% {PDF_MARKER} {n}\n1 0 obj << >> endobj\n%%EOF\n").into_bytes()
}

fn oru(control_id: &str, order: &str, status: &str, pdf: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
    [
        msh("ORU^R01^ORU_R01", control_id, "2.5.1"),
        "PID|1||CARE001^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN||19010203".to_owned(),
        format!("ORC|RE|PL-{order}|{order}"),
        format!("OBR|1|PL-{order}|{order}|ZZTESTNAMEMARKER^ZZTESTNAMEMARKER|||20270114080000"),
        format!("OBX|1|NM|ZZTESTNAMEMARKER^Glucose||ZZVALUEMARKER|mmol/L|||||{status}"),
        format!("OBX|2|ED|PDF^Report||^AP^PDF^Base64^{b64}||||||{status}"),
    ]
    .join("\r")
}

fn notices(sim: &Sim) -> Vec<serde_json::Value> {
    templates(sim)
        .into_iter()
        .filter(|m| m["template"]["name"] == "document_ready")
        .collect()
}

fn texts(sim: &Sim, text: &str) -> usize {
    sim.sent_messages()
        .iter()
        .filter(|m| m["text"]["body"] == text)
        .count()
}

fn documents(sim: &Sim) -> Vec<serde_json::Value> {
    sim.sent_messages()
        .into_iter()
        .filter(|m| m["type"] == "document")
        .collect()
}

const ASK: &str =
    "To open your document, please reply with your date of birth (for example 31.12.1980).";
const WRONG: &str = "That does not match our records. Please try again.";
const LOCKED: &str =
    "For your safety, this document can no longer be opened here. Please contact the practice.";

/// Posts a signed text from the patient and lets the outbox look.
async fn say(d: &Daemon, wamid: &str, text: &str) {
    assert_eq!(
        post_signed(d, text_message(wamid, WA_ID, "ZZ", text)).await,
        200
    );
    d.running.whatsapp.as_ref().unwrap().kick();
}

async fn tap(d: &Daemon, wamid: &str, payload: &str) {
    assert_eq!(post_signed(d, button_tap(wamid, payload)).await, 200);
    d.running.whatsapp.as_ref().unwrap().kick();
}

/// A new notice (the n-th) at the simulator; its "Show it" payload.
async fn notice(sim: &Sim, d: &Daemon, n: usize) -> String {
    d.running.whatsapp.as_ref().unwrap().kick();
    let sent = until("the notice at the simulator", || {
        notices(sim).get(n).cloned()
    })
    .await;
    let body = serde_json::to_string(&sent).unwrap();
    for m in RESULT_MARKERS.iter().chain([&PDF_MARKER]) {
        assert!(!body.contains(m), "the notice carries {m}: {body}");
    }
    assert_eq!(sent["to"], format!("+{WA_ID}"));
    // No parameters, no header: only the approved text and the button.
    let components = sent["template"]["components"].as_array().unwrap();
    assert!(components.iter().all(|c| c["type"] == "button"), "{body}");
    assert_eq!(sent["template"]["name"], "document_ready");
    let p = payloads(&sent);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("cr1:d:"), "{p:?}");
    p[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_goes_out_only_after_the_right_date_of_birth_and_locks_after_three_wrong() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("document_ready", "en"));
    let (pms, _) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    let mut c = d.mllp().await;
    let ack = c.send(&adt_a04("A-R", "CARE001", "ZZFAMILY", "")).await;
    assert_eq!(msa(&ack).0, "AA");
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, patient).await;

    // A final result with a PDF: the notice, nothing of the result in it.
    let ack = c.send(&oru("R1", "RES-R1", "F", &pdf(1))).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let show = notice(&sim, &d, 0).await;
    let notified = events(&d, EventKind::ResultNotified);
    assert_eq!(notified.len(), 1);
    assert_eq!(notified[0].details["sent"], "true");

    // "Show it" → the date of birth is asked for.
    tap(&d, "wamid.R1-show", &show).await;
    until("asked for the date of birth", || {
        (texts(&sim, ASK) == 1).then_some(())
    })
    .await;
    // Two wrong answers, each told; a text that is no date is not counted.
    say(&d, "wamid.R1-a1", "04.02.1901").await;
    until("wrong once", || (texts(&sim, WRONG) == 1).then_some(())).await;
    say(&d, "wamid.R1-a2", "1901-02-04").await;
    until("wrong twice", || (texts(&sim, WRONG) == 2).then_some(())).await;
    assert!(documents(&sim).is_empty());
    // The right one, in another common form.
    say(&d, "wamid.R1-a3", "3/2/1901").await;
    let doc = until("the document at the simulator", || {
        documents(&sim).into_iter().next()
    })
    .await;
    assert_eq!(doc["document"]["filename"], "document.pdf");
    assert!(doc["document"].get("caption").is_none(), "{doc}");
    let media_id = doc["document"]["id"].as_str().unwrap().to_owned();
    assert_eq!(sim.media_bytes(&media_id), Some(pdf(1)), "the PDF uploaded");
    assert_eq!(events(&d, EventKind::ResultDelivered).len(), 1);
    assert!(
        d.running
            .vault
            .get_result("RES-R1")
            .unwrap()
            .unwrap()
            .delivered
    );
    // Meta says delivered (signed status): the upload is deleted at once.
    let sent = sim.sent_messages();
    let i = sent.iter().position(|m| m["type"] == "document").unwrap();
    let wamid = sim.accepted()[i].wamid.clone();
    assert_eq!(
        post_signed(&d, statuses_body(&wamid, "delivered")).await,
        200
    );
    until("DELETE of the upload at the simulator", || {
        sim.requests()
            .iter()
            .any(|r| {
                r.method == "DELETE" && r.path.ends_with(&format!("/{media_id}")) && r.status == 200
            })
            .then_some(())
    })
    .await;
    assert!(!sim.media_ids().contains(&media_id));
    // A second tap sends nothing again.
    tap(&d, "wamid.R1-show2", &show).await;
    until("already sent", || {
        (texts(&sim, "This document has already been sent to you.") == 1).then_some(())
    })
    .await;

    // A second result: three wrong answers lock it; staff get the event.
    let ack = c.send(&oru("R2", "RES-R2", "F", &pdf(2))).await;
    assert_eq!(msa(&ack).0, "AA");
    let show2 = notice(&sim, &d, 1).await;
    tap(&d, "wamid.R2-show", &show2).await;
    until("asked again", || (texts(&sim, ASK) == 2).then_some(())).await;
    for (i, wrong) in ["01.01.1990", "02.01.1990", "03.01.1990"]
        .into_iter()
        .enumerate()
    {
        say(&d, &format!("wamid.R2-a{i}"), wrong).await;
    }
    until("locked", || (texts(&sim, LOCKED) == 1).then_some(())).await;
    let locked = events(&d, EventKind::ResultLocked);
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0].patient, Some(patient));
    assert_eq!(texts(&sim, WRONG), 4);
    // The right date now changes nothing; nor does another tap.
    say(&d, "wamid.R2-late", "03.02.1901").await;
    tap(&d, "wamid.R2-show2", &show2).await;
    until("locked, told again", || {
        (texts(&sim, LOCKED) == 2).then_some(())
    })
    .await;
    assert_eq!(documents(&sim).len(), 1);
    assert_eq!(events(&d, EventKind::ResultDelivered).len(), 1);

    // A correction of the first result (a new version) is offered again.
    let ack = c.send(&oru("R3", "RES-R1", "C", &pdf(3))).await;
    assert_eq!(msa(&ack).0, "AA");
    let show3 = notice(&sim, &d, 2).await;
    assert_eq!(show3, show, "the same result, the same opaque payload");
    tap(&d, "wamid.R3-show", &show3).await;
    until("asked for the correction", || {
        (texts(&sim, ASK) == 3).then_some(())
    })
    .await;
    say(&d, "wamid.R3-a1", "03021901").await;
    until("the corrected document", || {
        (documents(&sim).len() == 2).then_some(())
    })
    .await;
    let media = documents(&sim)[1]["document"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sim.media_bytes(&media), Some(pdf(3)));

    // Retention: 30 days on, both PDFs are purged from the vault, audited.
    at(&d, t0() + SignedDuration::from_hours(30 * 24 + 1)).await;
    until("purged", || {
        (events(&d, EventKind::ResultPurged).len() == 2).then_some(())
    })
    .await;
    for order in ["RES-R1", "RES-R2"] {
        let r = d.running.vault.get_result(order).unwrap().unwrap();
        assert!(r.pdf.is_empty(), "{order}");
    }
    let mut markers: Vec<&str> = FORBIDDEN_MARKERS.to_vec();
    markers.extend_from_slice(RESULT_MARKERS);
    assert_sim_saw_none(&sim, &markers);

    let install = d.stop().await;
    // Nothing of the result, the answers or the PDF in the clear on disk.
    let mut on_disk: Vec<String> = markers.iter().map(|m| (*m).to_owned()).collect();
    on_disk.extend([PDF_MARKER.to_owned(), "04.02.1901".to_owned()]);
    let hits = scan_dir(&install.data, &on_disk);
    assert!(hits.is_empty(), "{hits:?}");
    let vault = install.open();
    let actions: Vec<String> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action.starts_with("result."))
        .map(|e| e.action)
        .collect();
    for a in [
        "result.notified",
        "result.proof-asked",
        "result.proof-wrong",
        "result.released",
        "result.locked",
        "result.purge",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
}

/// `results.proof = "code"`: the one-time code the PMS put on the result
/// (an OBX `ZRC`) opens it, typed loosely; the code never reaches
/// WhatsApp. While the answer is awaited, an opt-out keyword still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_code_from_the_pms_opens_the_result_and_stop_still_opts_out() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("document_ready", "en"));
    let (pms, received) = pms_peer().await;
    let d =
        crate::care_reminders::daemon_with(&sim, pms, "", "[results]\nproof = \"code\"\n").await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c.send(&adt_a04("A-C", "CARE001", "ZZFAMILY", "")).await).0,
        "AA"
    );
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, patient).await;
    let with_code = |id: &str, order: &str, code: &str| {
        format!(
            "{}\rOBX|3|ST|ZRC^Release code||{code}||||||F",
            oru(id, order, "F", &pdf(7))
        )
    };
    let ack = c.send(&with_code("C1", "RES-R1", "ZZCODE42")).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let show = notice(&sim, &d, 0).await;
    tap(&d, "wamid.C-show", &show).await;
    let ask = "To open your document, please reply with the code the practice gave you.";
    until("asked for the code", || {
        (texts(&sim, ask) == 1).then_some(())
    })
    .await;
    // The date of birth is not the code.
    say(&d, "wamid.C-a1", "03.02.1901").await;
    until("wrong", || (texts(&sim, WRONG) == 1).then_some(())).await;
    say(&d, "wamid.C-a2", "zz code 42").await;
    let doc = until("the document", || documents(&sim).into_iter().next()).await;
    assert_eq!(doc["document"]["filename"], "document.pdf");

    // A second result: "STOP" while the code is awaited opts out (to the
    // PMS), and is not counted as a wrong answer.
    let ack = c.send(&with_code("C2", "RES-R2", "ZZCODE43")).await;
    assert_eq!(msa(&ack).0, "AA");
    let show2 = notice(&sim, &d, 1).await;
    tap(&d, "wamid.C-show2", &show2).await;
    until("asked again", || (texts(&sim, ask) == 2).then_some(())).await;
    say(&d, "wamid.C-stop", "STOP").await;
    crate::care_reminders::pms_got(&received, "ADT^A31").await;
    assert_eq!(events(&d, EventKind::OptedOut).len(), 1);
    assert_eq!(texts(&sim, WRONG), 1);
    let mut markers: Vec<&str> = FORBIDDEN_MARKERS.to_vec();
    markers.extend_from_slice(RESULT_MARKERS);
    markers.extend_from_slice(&["ZZCODE42", "ZZCODE43"]);
    assert_sim_saw_none(&sim, &markers);
    d.stop().await;
}

/// The pending question and the retention timer are durable: a restart
/// between "Show it" and the answer loses neither, and an uncollected
/// result is purged at its time, not a second early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_proof_and_the_retention_survive_a_restart() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("document_ready", "en"));
    let (pms, _) = pms_peer().await;
    let d =
        crate::care_reminders::daemon_with(&sim, pms, "", "[results]\nretention = \"7d\"\n").await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c.send(&adt_a04("A-S", "CARE001", "ZZFAMILY", "")).await).0,
        "AA"
    );
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, patient).await;
    assert_eq!(
        msa(&c.send(&oru("S1", "RES-R1", "F", &pdf(5))).await).0,
        "AA"
    );
    assert_eq!(
        msa(&c.send(&oru("S2", "RES-R2", "F", &pdf(6))).await).0,
        "AA"
    );
    let show = notice(&sim, &d, 0).await;
    notice(&sim, &d, 1).await;
    tap(&d, "wamid.S-show", &show).await;
    until("asked", || (texts(&sim, ASK) == 1).then_some(())).await;

    drop(c);
    let install = d.stop().await;
    let d = Daemon::start_in(install).await;
    say(&d, "wamid.S-a1", "1901-02-03").await;
    let doc = until("the document after the restart", || {
        documents(&sim).into_iter().next()
    })
    .await;
    let id = doc["document"]["id"].as_str().unwrap();
    assert_eq!(sim.media_bytes(id), Some(pdf(5)));

    // Seven days on: not a second early; then both PDFs go (one collected).
    let due = t0() + SignedDuration::from_hours(7 * 24);
    at(&d, due - SignedDuration::from_secs(1)).await;
    assert!(events(&d, EventKind::ResultPurged).is_empty());
    at(&d, due).await;
    let purged = until("purged", || {
        let e = events(&d, EventKind::ResultPurged);
        (e.len() == 2).then_some(e)
    })
    .await;
    let mut collected: Vec<&str> = purged
        .iter()
        .map(|e| e.details["collected"].as_str())
        .collect();
    collected.sort_unstable();
    assert_eq!(collected, ["false", "true"]);
    assert!(d
        .running
        .vault
        .get_result("RES-R2")
        .unwrap()
        .unwrap()
        .pdf
        .is_empty());
    let mut markers: Vec<&str> = FORBIDDEN_MARKERS.to_vec();
    markers.extend_from_slice(RESULT_MARKERS);
    assert_sim_saw_none(&sim, &markers);
    d.stop().await;
}

/// With the conversation bot on, the answers to the proof question are the
/// results flow's, not the bot's: a date of birth (wrong, then right) is not
/// "not understood", so nothing goes to staff and the bot says nothing; the
/// answers still appear in the patient's conversation for staff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bot_on_a_proof_answer_is_not_handed_to_staff() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("document_ready", "en"));
    let (pms, _) = pms_peer().await;
    let d = crate::care_reminders::daemon_with(&sim, pms, "", "[conversations]\nenabled = true\n")
        .await;
    let mut c = d.mllp().await;
    let ack = c.send(&adt_a04("A-B", "CARE001", "ZZFAMILY", "")).await;
    assert_eq!(msa(&ack).0, "AA");
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, patient).await;
    let ack = c.send(&oru("B1", "RES-R1", "F", &pdf(3))).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let show = notice(&sim, &d, 0).await;

    tap(&d, "wamid.B-show", &show).await;
    until("asked", || (texts(&sim, ASK) == 1).then_some(())).await;
    say(&d, "wamid.B-a1", "01.01.1990").await;
    until("wrong", || (texts(&sim, WRONG) == 1).then_some(())).await;
    say(&d, "wamid.B-a2", "3.2.1901").await;
    until("the document", || documents(&sim).into_iter().next()).await;

    // The bot stayed out of it: no hand-off, no "staff will answer".
    let waiting = "Thank you. A member of staff will answer you here as soon as possible.";
    assert_eq!(texts(&sim, waiting), 0);
    assert!(events(&d, EventKind::StaffRequested).is_empty());
    // A greeting afterwards is the bot's again: the menu.
    say(&d, "wamid.B-hi", "hi").await;
    until("the menu", || {
        sim.sent_messages()
            .into_iter()
            .find(|m| m["type"] == "interactive")
    })
    .await;
    assert!(events(&d, EventKind::StaffRequested).is_empty());
    let mut markers: Vec<&str> = FORBIDDEN_MARKERS.to_vec();
    markers.extend_from_slice(RESULT_MARKERS);
    assert_sim_saw_none(&sim, &markers);
    d.stop().await;
}
