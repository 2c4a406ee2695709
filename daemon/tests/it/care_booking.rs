//! Self-service booking end to end (issue 11, item 2), through real
//! sockets and a manual clock: a greeting (English, Spanish, German) → the
//! menu → Book → the services by their configured labels → the open slots
//! as a list (a "Later" row pages on) → a time → Yes → an `SRM^S01` at the
//! test PMS peer (`ARQ-1.2` = the slot id), `booking-requested` and "we are
//! asking the practice" → the PMS's `SIU^S12` for that slot → "booked",
//! `booking-confirmed`. A slot the PMS books for someone else meanwhile, and
//! a hold that runs out, end in "sorry, taken" and a fresh list; the
//! expired hold's slot is offered to the next patient.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{meta_json, text_message};
use clinic_relay::commands::{self, Command, Origin};
use clinic_relay::model::{EventKind, Slot};
use clinic_relay::vault::Tree;
use graph_sim::Sim;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// The second patient's number (as Meta writes it) and in the PID.
const WA_ID2: &str = "4915155509999";
const PHONE2: &str = "0151 5550 9999";

const CONFIG: &str = "\n[conversations]\nenabled = true\n\n[booking]\nhold = \"15m\"\n\
                      [booking.labels]\nZZSVCMARKER = \"Adults\"\n";

/// A `SIU` for `mrn` (whose number is `phone`) at local time `start`.
fn siu_for(mrn: &str, phone: &str, control: &str, appt: &str, start: &str) -> String {
    siu("SIU^S12^SIU_S12", control, appt, start)
        .replace("CARE001", mrn)
        .replace("0151 5550 1234", phone)
}

async fn send_siu(d: &Daemon, msg: &str) {
    let mut c = d.mllp().await;
    assert_eq!(msa(&c.send(msg).await).0, "AA");
}

/// A tap on a list row or a reply button, from `from`.
fn tap(wamid: &str, from: &str, kind: &str, id: &str) -> Vec<u8> {
    meta_json(&serde_json::json!({
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

/// What the simulator got for `to` from message `from_index` on.
fn sent_to(sim: &Sim, to: &str, from_index: usize) -> Vec<Value> {
    sim.sent_messages()
        .into_iter()
        .skip(from_index)
        .filter(|m| m["to"] == format!("+{to}"))
        .collect()
}

/// Posts `body`, drains the outbox, and returns the messages `to` got.
async fn say(sim: &Sim, d: &Daemon, to: &str, body: Vec<u8>) -> Vec<Value> {
    let before = sim.sent_messages().len();
    assert_eq!(post_signed(d, body).await, 200);
    drain(d).await;
    until("an answer at the simulator", || {
        let got = sent_to(sim, to, before);
        (!got.is_empty()).then_some(got)
    })
    .await
}

fn rows(m: &Value) -> Vec<(String, String)> {
    assert_eq!(m["interactive"]["type"], "list", "{m}");
    m["interactive"]["action"]["sections"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["title"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn last_list(got: &[Value]) -> Vec<(String, String)> {
    rows(
        got.iter()
            .rev()
            .find(|m| m["interactive"]["type"] == "list")
            .expect("a list"),
    )
}

fn texts(got: &[Value]) -> Vec<String> {
    got.iter()
        .filter_map(|m| m["text"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// The start a slot row names (`cr1:k:s:<seconds>:<ref>`).
fn row_start(id: &str) -> Option<Timestamp> {
    let secs = id.strip_prefix("cr1:k:s:")?.split(':').next()?;
    Timestamp::from_second(secs.parse().ok()?).ok()
}

/// Twelve slots of service ZZSVCMARKER (labelled "Adults") every hour
/// from Mon 18 January 2027 08:00 UTC (09:00 in Berlin), and three of an
/// unlabelled service, of the provider and location of the patient's
/// visit.
async fn open_slots(d: &Daemon) -> Vec<Slot> {
    let a = d.running.vault.get_appointment("APPT-H1").unwrap().unwrap();
    let first: Timestamp = "2027-01-18T08:00:00Z".parse().unwrap();
    let slot = |id: String, h: i64, service: &str| Slot {
        id,
        start: first + SignedDuration::from_hours(h),
        duration_minutes: 30,
        provider: a.provider.clone(),
        location: a.location.clone(),
        service: Some(service.to_owned()),
    };
    let mut slots: Vec<Slot> = (0..12)
        .map(|i| slot(format!("ZZSLOT-A{i:02}"), i, "ZZSVCMARKER"))
        .collect();
    slots.extend((0..3).map(|i| slot(format!("ZZSLOT-B{i}"), 24 + i, "ZZSVCMARKER-B")));
    commands::apply(
        &d.running.vault,
        vec![Command::ReplaceSlots(slots.clone())],
        Origin::new("test"),
        t0(),
    )
    .await
    .unwrap();
    slots
}

/// The daemon with conversations on, the patient CARE001 known (a visit on
/// 20 January) and the open slots in the table.
async fn setup(sim: &Sim) -> (Daemon, Arc<Mutex<Vec<String>>>, Vec<Slot>) {
    let (pms, received) = pms_recorder().await;
    let d = daemon_with(sim, pms, "", CONFIG).await;
    send_siu(&d, &siu("SIU^S12^SIU_S12", "H1", "APPT-H1", "202701201000")).await;
    let slots = open_slots(&d).await;
    (d, received, slots)
}

/// The SRM^S01s the PMS got: ARQ-1.2 of each.
fn requested_slots(received: &Mutex<Vec<String>>) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("|SRM^S01^SRM_S01|"))
        .filter_map(|m| {
            let arq = m.split('\r').find(|s| s.starts_with("ARQ|"))?;
            let arq1 = arq.split('|').nth(1)?;
            Some(arq1.split('^').nth(1)?.to_owned())
        })
        .collect()
}

fn holds(d: &Daemon) -> usize {
    d.running
        .vault
        .scan_raw_from(Tree::Care, b"H")
        .filter_map(Result::ok)
        .take_while(|(k, _)| k.first() == Some(&b'H'))
        .count()
}

/// From the menu to Yes on the first time of the first service: the slot
/// row chosen and the texts since.
async fn book_first(sim: &Sim, d: &Daemon, who: &str, n: &str) -> (String, Vec<Value>) {
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}b"), who, "list_reply", "cr1:m:b"),
    )
    .await;
    let groups = last_list(&got);
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0].1, "Adults");
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}g"), who, "list_reply", &groups[0].0),
    )
    .await;
    let times = last_list(&got);
    let (row, _) = times[0].clone();
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}s"), who, "list_reply", &row),
    )
    .await;
    assert_eq!(got[0]["interactive"]["type"], "button", "{:?}", got[0]);
    let yes = got[0]["interactive"]["action"]["buttons"][0]["reply"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}y"), who, "button_reply", &yes),
    )
    .await;
    (row, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_books_from_hi_to_the_pms_confirmation_in_three_languages() {
    let sim = Sim::start().await.unwrap();
    let (d, received, slots) = setup(&sim).await;
    let cases = [
        (
            "hi",
            "en",
            "Please choose a time:",
            "Thank you. We are asking the practice and will confirm here.",
            "Booked: ",
        ),
        (
            "hola",
            "es",
            "Elija una hora:",
            "Gracias. Lo consultamos con la consulta y le confirmaremos aquí.",
            "Reservado: ",
        ),
        (
            "hallo",
            "de",
            "Bitte wählen Sie einen Termin:",
            "Danke. Wir fragen bei der Praxis an und bestätigen hier.",
            "Gebucht: ",
        ),
    ];
    let mut taken: Vec<String> = Vec::new();
    for (i, (greeting, lang, times_body, asking, booked)) in cases.into_iter().enumerate() {
        let n = format!("{lang}{i}");
        let got = say(
            &sim,
            &d,
            WA_ID,
            text_message(&format!("wamid.{n}h"), WA_ID, "ZZ", greeting),
        )
        .await;
        assert_eq!(got[0]["interactive"]["type"], "list", "{lang}: the menu");
        // Book → the two services: the labelled one by its label, the
        // other as a neutral option; never the service's code.
        let got = say(
            &sim,
            &d,
            WA_ID,
            tap(&format!("wamid.{n}b"), WA_ID, "list_reply", "cr1:m:b"),
        )
        .await;
        let groups = last_list(&got);
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].1, "Adults");
        assert!(groups[1].1.ends_with(" 2"), "{groups:?}");
        let got = say(
            &sim,
            &d,
            WA_ID,
            tap(&format!("wamid.{n}g"), WA_ID, "list_reply", &groups[0].0),
        )
        .await;
        assert_eq!(got[0]["interactive"]["body"]["text"], times_body);
        let times = last_list(&got);
        // Nine times per list and a "Later" row, at most ten rows; the
        // times come soonest first (one of them is booked each round).
        let open_a = 12 - i;
        assert_eq!(
            times.len(),
            9.min(open_a) + usize::from(open_a > 9),
            "{times:?}"
        );
        assert!(times.len() <= 10);
        let soonest = slots.iter().find(|s| !taken.contains(&s.id)).unwrap();
        assert_eq!(row_start(&times[0].0), Some(soonest.start), "{lang}");
        let mut row = times[0].0.clone();
        if i == 0 {
            // "Later" pages on to the last three; the patient takes the
            // first of those.
            let later = times.last().unwrap().0.clone();
            assert!(later.starts_with("cr1:k:l:1:"), "{later}");
            let got = say(&sim, &d, WA_ID, tap("wamid.L", WA_ID, "list_reply", &later)).await;
            let page2 = last_list(&got);
            assert_eq!(page2.len(), 3, "{page2:?}");
            assert_eq!(row_start(&page2[0].0), Some(slots[9].start));
            row = page2[0].0.clone();
        }
        let chosen = slots
            .iter()
            .find(|s| Some(s.start) == row_start(&row))
            .unwrap()
            .clone();
        let got = say(
            &sim,
            &d,
            WA_ID,
            tap(&format!("wamid.{n}s"), WA_ID, "list_reply", &row),
        )
        .await;
        assert_eq!(got[0]["interactive"]["type"], "button");
        let yes = got[0]["interactive"]["action"]["buttons"][0]["reply"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let got = say(
            &sim,
            &d,
            WA_ID,
            tap(&format!("wamid.{n}y"), WA_ID, "button_reply", &yes),
        )
        .await;
        assert_eq!(texts(&got), [asking], "{lang}");
        // The SRM^S01 names the slot in ARQ-1.2; the feed has the request.
        until("the SRM^S01 at the PMS", || {
            (requested_slots(&received).len() == i + 1).then_some(())
        })
        .await;
        assert_eq!(requested_slots(&received)[i], chosen.id);
        let ev = crate::webhook::events(&d, EventKind::BookingRequested);
        assert_eq!(ev[i].slot.as_deref(), Some(chosen.id.as_str()));
        assert_eq!(holds(&d), 1);

        // The PMS books it: SIU^S12 for this patient at the slot's time.
        let local = chosen
            .start
            .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
            .strftime("%Y%m%d%H%M")
            .to_string();
        let before = sim.sent_messages().len();
        send_siu(
            &d,
            &siu(
                "SIU^S12^SIU_S12",
                &format!("C{n}"),
                &format!("APPT-B{i}"),
                &local,
            ),
        )
        .await;
        drain(&d).await;
        let booked_text = until("the booked reply", || {
            texts(&sent_to(&sim, WA_ID, before))
                .into_iter()
                .find(|t| t.starts_with(booked))
        })
        .await;
        assert!(booked_text.len() > booked.len() + 5, "{booked_text}");
        let ev = crate::webhook::events(&d, EventKind::BookingConfirmed);
        assert_eq!(ev.len(), i + 1);
        assert_eq!(ev[i].slot.as_deref(), Some(chosen.id.as_str()));
        assert_eq!(holds(&d), 0, "the hold is released");
        // The slot is booked: no longer open.
        assert!(d
            .running
            .vault
            .slots()
            .unwrap()
            .iter()
            .all(|s| s.id != chosen.id));
        taken.push(chosen.id.clone());
    }
    assert!(crate::webhook::events(&d, EventKind::BookingFailed).is_empty());
    let mut markers = FORBIDDEN_MARKERS.to_vec();
    markers.extend(["ZZSLOT", "ZZSVCMARKER-B", "APPT-"]);
    assert_sim_saw_none(&sim, &markers);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_the_pms_gives_to_another_patient_gets_sorry_and_new_options() {
    let sim = Sim::start().await.unwrap();
    let (d, received, slots) = setup(&sim).await;
    say(&sim, &d, WA_ID, text_message("wamid.T0", WA_ID, "ZZ", "hi")).await;
    let (row, _) = book_first(&sim, &d, WA_ID, "T").await;
    assert_eq!(row_start(&row), Some(slots[0].start));
    until("the SRM^S01", || {
        (requested_slots(&received).len() == 1).then_some(())
    })
    .await;

    // Meanwhile the PMS books that time for another patient.
    let before = sim.sent_messages().len();
    let other = siu_for("CARE002", PHONE2, "X1", "APPT-X1", "202701180900");
    send_siu(&d, &other).await;
    drain(&d).await;
    let got = until("sorry and a new list", || {
        let got = sent_to(&sim, WA_ID, before);
        got.iter()
            .any(|m| m["interactive"]["type"] == "list")
            .then_some(got)
    })
    .await;
    assert_eq!(texts(&got), ["Sorry, that time was taken."]);
    let fresh = last_list(&got);
    assert!(
        fresh
            .iter()
            .all(|(id, _)| row_start(id) != Some(slots[0].start)),
        "{fresh:?}"
    );
    let ev = crate::webhook::events(&d, EventKind::BookingFailed);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["reason"], "taken");
    assert_eq!(ev[0].slot.as_deref(), Some(slots[0].id.as_str()));
    assert!(crate::webhook::events(&d, EventKind::BookingConfirmed).is_empty());
    assert_eq!(holds(&d), 0);

    // Once staff hold the conversation the bot answers no booking tap: it
    // is shown to staff.
    let person = text_message("wamid.T8", WA_ID, "ZZ", "I need to talk to someone");
    say(&sim, &d, WA_ID, person).await;
    let before = sim.sent_messages().len();
    assert_eq!(
        post_signed(&d, tap("wamid.T9", WA_ID, "list_reply", &fresh[0].0)).await,
        200
    );
    drain(&d).await;
    assert!(sent_to(&sim, WA_ID, before).is_empty());
    assert_eq!(requested_slots(&received).len(), 1);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_frees_the_slot_for_the_next_patient() {
    let sim = Sim::start().await.unwrap();
    let (d, received, slots) = setup(&sim).await;
    // The second patient is known too (a visit in February).
    send_siu(
        &d,
        &siu_for("CARE002", PHONE2, "P2", "APPT-P2", "202702011000"),
    )
    .await;
    say(&sim, &d, WA_ID, text_message("wamid.E0", WA_ID, "ZZ", "hi")).await;
    let (row, _) = book_first(&sim, &d, WA_ID, "E").await;
    assert_eq!(row_start(&row), Some(slots[0].start));
    until("the SRM^S01", || {
        (requested_slots(&received).len() == 1).then_some(())
    })
    .await;

    // While it is held, the second patient is not offered it.
    say(
        &sim,
        &d,
        WA_ID2,
        text_message("wamid.F0", WA_ID2, "ZZ", "hello"),
    )
    .await;
    let got = say(
        &sim,
        &d,
        WA_ID2,
        tap("wamid.F1", WA_ID2, "list_reply", "cr1:m:b"),
    )
    .await;
    let groups = last_list(&got);
    let got = say(
        &sim,
        &d,
        WA_ID2,
        tap("wamid.F2", WA_ID2, "list_reply", &groups[0].0),
    )
    .await;
    let offered = last_list(&got);
    assert_eq!(
        row_start(&offered[0].0),
        Some(slots[1].start),
        "{offered:?}"
    );
    assert!(offered
        .iter()
        .all(|(id, _)| row_start(id) != Some(slots[0].start)));

    // The PMS does not answer within the hold (15 minutes): sorry, taken,
    // and a fresh list for the first patient.
    let before = sim.sent_messages().len();
    at(&d, t0() + SignedDuration::from_mins(16)).await;
    drain(&d).await;
    let got = until("sorry and a new list", || {
        let got = sent_to(&sim, WA_ID, before);
        got.iter()
            .any(|m| m["interactive"]["type"] == "list")
            .then_some(got)
    })
    .await;
    assert_eq!(texts(&got), ["Sorry, that time was taken."]);
    let ev = crate::webhook::events(&d, EventKind::BookingFailed);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["reason"], "expired");
    assert_eq!(holds(&d), 0);

    // The slot is free again: the second patient is offered it now.
    let got = say(
        &sim,
        &d,
        WA_ID2,
        tap("wamid.F3", WA_ID2, "list_reply", &groups[0].0),
    )
    .await;
    let offered = last_list(&got);
    assert_eq!(
        row_start(&offered[0].0),
        Some(slots[0].start),
        "{offered:?}"
    );
    let got = say(
        &sim,
        &d,
        WA_ID2,
        tap("wamid.F4", WA_ID2, "list_reply", &offered[0].0),
    )
    .await;
    assert_eq!(got[0]["interactive"]["type"], "button");
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_slot_is_not_in_the_reminder_flows_reschedule_list() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(graph_sim::Template::approved("appointment_reminder", "en"));
    let (d, received, slots) = setup(&sim).await;
    let first = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, first).await;
    send_siu(
        &d,
        &siu_for("CARE002", PHONE2, "P2", "APPT-P2", "202702011000"),
    )
    .await;
    // Five minutes before the first patient's reminder, the second one
    // holds the soonest slot.
    at(&d, "2027-01-17T08:55:00Z".parse().unwrap()).await;
    say(
        &sim,
        &d,
        WA_ID2,
        text_message("wamid.G0", WA_ID2, "ZZ", "hi"),
    )
    .await;
    let (row, _) = book_first(&sim, &d, WA_ID2, "G").await;
    assert_eq!(row_start(&row), Some(slots[0].start));
    until("the SRM^S01", || {
        (requested_slots(&received).len() == 1).then_some(())
    })
    .await;

    // The reminder's Reschedule offers the same provider's slots, not the
    // held one.
    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let reminder = until("the reminder", || templates(&sim).into_iter().next()).await;
    let reschedule = payloads(&reminder)[2].clone();
    let before = sim.sent_messages().len();
    assert_eq!(
        post_signed(&d, button_tap("wamid.G9", &reschedule)).await,
        200
    );
    drain(&d).await;
    let list = until("the reschedule list", || {
        sent_to(&sim, WA_ID, before)
            .into_iter()
            .find(|m| m["interactive"]["type"] == "list")
    })
    .await;
    let titles: Vec<String> = rows(&list).into_iter().map(|(_, t)| t).collect();
    assert_eq!(titles[0], "Mon, Jan 18 10:00 AM", "{titles:?}");
    assert!(
        !titles.contains(&"Mon, Jan 18 9:00 AM".to_owned()),
        "{titles:?}"
    );
    d.stop().await;
}

/// Up to the confirm question for the first time of the first service:
/// the row chosen and the Yes button's id.
async fn up_to_yes(sim: &Sim, d: &Daemon, who: &str, n: &str) -> (String, String) {
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}b"), who, "list_reply", "cr1:m:b"),
    )
    .await;
    let groups = last_list(&got);
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}g"), who, "list_reply", &groups[0].0),
    )
    .await;
    let (row, _) = last_list(&got)[0].clone();
    let got = say(
        sim,
        d,
        who,
        tap(&format!("wamid.{n}s"), who, "list_reply", &row),
    )
    .await;
    let yes = got[0]["interactive"]["action"]["buttons"][0]["reply"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (row, yes)
}

/// Two patients say Yes to the same time in one webhook call (Meta batches;
/// the receiver also groups calls that arrive together into one
/// transaction): the first holds it and is asked for at the PMS, the second
/// sees that hold — one SRM^S01, one hold, and the second patient is offered
/// other times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_yes_to_one_time_in_one_webhook_call_hold_it_once() {
    let sim = Sim::start().await.unwrap();
    let (d, received, slots) = setup(&sim).await;
    send_siu(
        &d,
        &siu_for("CARE002", PHONE2, "P2", "APPT-P2", "202702011000"),
    )
    .await;
    say(&sim, &d, WA_ID, text_message("wamid.T0", WA_ID, "ZZ", "hi")).await;
    say(
        &sim,
        &d,
        WA_ID2,
        text_message("wamid.U0", WA_ID2, "ZZ", "hi"),
    )
    .await;
    let (row1, yes1) = up_to_yes(&sim, &d, WA_ID, "T").await;
    let (row2, yes2) = up_to_yes(&sim, &d, WA_ID2, "U").await;
    assert_eq!(row_start(&row1), Some(slots[0].start));
    assert_eq!(row_start(&row2), Some(slots[0].start));

    // Both taps in one call.
    let mut body: Value =
        serde_json::from_slice(&tap("wamid.TY", WA_ID, "button_reply", &yes1)).unwrap();
    let second: Value =
        serde_json::from_slice(&tap("wamid.UY", WA_ID2, "button_reply", &yes2)).unwrap();
    let value = &mut body["entry"][0]["changes"][0]["value"];
    let other = &second["entry"][0]["changes"][0]["value"];
    value["contacts"]
        .as_array_mut()
        .unwrap()
        .push(other["contacts"][0].clone());
    value["messages"]
        .as_array_mut()
        .unwrap()
        .push(other["messages"][0].clone());
    let before = sim.sent_messages().len();
    assert_eq!(post_signed(&d, meta_json(&body)).await, 200);
    drain(&d).await;
    until("the SRM^S01", || {
        (!requested_slots(&received).is_empty()).then_some(())
    })
    .await;
    let got2 = until("other times for the second patient", || {
        let got = sent_to(&sim, WA_ID2, before);
        got.iter()
            .any(|m| m["interactive"]["type"] == "list")
            .then_some(got)
    })
    .await;
    assert_eq!(requested_slots(&received), [slots[0].id.clone()]);
    assert_eq!(holds(&d), 1);
    assert!(last_list(&got2)
        .iter()
        .all(|(id, _)| row_start(id) != Some(slots[0].start)));
    assert_eq!(
        crate::webhook::events(&d, EventKind::BookingRequested).len(),
        1
    );
    d.stop().await;
}
