//! Reschedule end to end (issue 10): the reminder's "Reschedule" button →
//! the next open slots as an interactive list at the simulator → a row
//! chosen (signed `list_reply` webhook) → SRM^S02 at the test PMS peer, a
//! `reschedule-requested` event, a short reply. With no open slot: a
//! `staff-requested` event (reason `reschedule-no-slots`) and a reply.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::meta_json;
use clinic_relay::commands::{self, Command, Origin};
use clinic_relay::model::{EventKind, Slot};
use graph_sim::{Sim, Template};
use jiff::Timestamp;

fn list_reply(wamid: &str, id: &str) -> Vec<u8> {
    meta_json(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "ZZ"}, "wa_id": WA_ID}],
            "messages": [{"from": WA_ID, "id": wamid, "timestamp": "1800400000", "type": "interactive",
                          "interactive": {"type": "list_reply",
                                          "list_reply": {"id": id, "title": "Mon, Jan 18 9:00 AM"}}}]
        }}]}]
    }))
}

async fn replace_slots(d: &Daemon, slots: Vec<Slot>) {
    commands::apply(
        &d.running.vault,
        vec![Command::ReplaceSlots(slots)],
        Origin::new("test"),
        t0(),
    )
    .await
    .unwrap();
}

/// Books a visit, lets its first reminder go out and taps "Reschedule".
async fn tap_reschedule(sim: &Sim, d: &Daemon, appt: &str) {
    booked(d, appt, "202701201000", true).await;
    at(d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let sent = until("the reminder", || templates(sim).into_iter().next()).await;
    let p = payloads(&sent);
    assert_eq!(p.len(), 3);
    assert!(p[2].starts_with("cr1:r:"), "{}", p[2]);
    assert_eq!(post_signed(d, button_tap("wamid.R1", &p[2])).await, 200);
    d.running.whatsapp.as_ref().unwrap().kick();
}

fn text_sent(sim: &Sim, body: &str) -> Option<()> {
    sim.sent_messages()
        .iter()
        .any(|m| m["text"]["body"] == body)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_offers_open_slots_and_a_chosen_row_reaches_the_pms() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    booked(&d, "APPT-R1", "202701201000", true).await;
    let a = d.running.vault.get_appointment("APPT-R1").unwrap().unwrap();
    let slot = |id: String, start: Timestamp, provider: Option<String>| Slot {
        id,
        start,
        duration_minutes: 30,
        provider,
        location: a.location.clone(),
        service: None,
    };
    // Twelve free slots of the same provider from Mon 18 January 08:00
    // UTC, one in the past, one of another provider (soonest of all).
    let first: Timestamp = "2027-01-18T08:00:00Z".parse().unwrap();
    let mut slots: Vec<Slot> = (0..12)
        .map(|i| {
            slot(
                format!("SLOT-{i:02}"),
                first + jiff::SignedDuration::from_hours(i),
                a.provider.clone(),
            )
        })
        .collect();
    slots.push(slot(
        "SLOT-PAST".into(),
        "2027-01-16T08:00:00Z".parse().unwrap(),
        a.provider.clone(),
    ));
    slots.push(slot(
        "SLOT-OTHER".into(),
        "2027-01-17T12:00:00Z".parse().unwrap(),
        Some("ZZOTHER".into()),
    ));
    replace_slots(&d, slots).await;

    tap_reschedule(&sim, &d, "APPT-R1").await;
    let list = until("the list of slots at the simulator", || {
        sim.sent_messages()
            .into_iter()
            .find(|m| m["interactive"]["type"] == "list")
    })
    .await;
    assert_eq!(list["to"], format!("+{WA_ID}"));
    let rows = list["interactive"]["action"]["sections"][0]["rows"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 10, "Meta allows ten rows");
    assert_eq!(rows[0]["title"], "Mon, Jan 18 9:00 AM");
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        !text.contains("SLOT-") && !text.contains("APPT") && !text.contains("ZZDOC"),
        "{text}"
    );

    // The patient picks the first row.
    let id = rows[0]["id"].as_str().unwrap();
    assert_eq!(post_signed(&d, list_reply("wamid.L1", id)).await, 200);
    pms_got(&received, "SRM^S02").await;
    let ev = crate::webhook::events(&d, EventKind::RescheduleRequested);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].appointment.as_deref(), Some("APPT-R1"));
    assert_eq!(ev[0].slot.as_deref(), Some("SLOT-00"));
    let kpis = clinic_relay::kpi::read::total(&d.running.vault).unwrap();
    assert_eq!(kpis.get(clinic_relay::kpi::Kpi::Rescheduled), 1);
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the reply", || {
        text_sent(
            &sim,
            "Your request has been sent to the practice; you'll get a confirmation.",
        )
    })
    .await;
    // The appointment keeps its time until the PMS moves it (SIU^S13).
    let a = d.running.vault.get_appointment("APPT-R1").unwrap().unwrap();
    assert_eq!(
        a.start,
        "2027-01-20T09:00:00Z".parse::<Timestamp>().unwrap()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_without_open_slots_hands_over_to_staff() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    tap_reschedule(&sim, &d, "APPT-R2").await;
    let handoff = until("the staff-requested event", || {
        crate::webhook::events(&d, EventKind::StaffRequested)
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(handoff.appointment.as_deref(), Some("APPT-R2"));
    assert_eq!(
        handoff.details.get("reason").map(String::as_str),
        Some("reschedule-no-slots")
    );
    until("the reply", || {
        text_sent(
            &sim,
            "There is no free time to offer right now. The practice will contact you.",
        )
    })
    .await;
    assert!(!sim
        .sent_messages()
        .iter()
        .any(|m| m["interactive"]["type"] == "list"));
    assert!(received.lock().unwrap().iter().all(|k| k != "SRM^S02"));
    d.stop().await;
}
