//! The reminder journey end to end (issue 10), through real sockets and a
//! manual clock: SIU^S12 in over MLLP → nothing early → the reminder at the
//! simulator at the exact due time with its buttons → a signed "Confirm"
//! button webhook → SIU^S14 at a test PMS peer, an event on the feed, a
//! short reply → no 24 h reminder. A cancel (S15) drops pending reminders.

use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{meta_json, sign};
use clinic_relay::commands::{self, Command, Origin};
use clinic_relay::model::{ConsentSource, ConsentState, EventKind, PatientId};
use clinic_relay::pms::hl7::{self, AckCode};
use clinic_relay::pms::mllp;
use clinic_relay::vault::Tree;
use graph_sim::{Sim, Template};
use jiff::Timestamp;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpListener;

const SECRET: &str = "care-app-secret";
/// The patient's number as the SIU's PID-13 writes it (national, DE).
pub(crate) const WA_ID: &str = "4915155501234";

/// A PMS that records the message types it gets and answers AA.
/// Waits until the test PMS peer has received a message of `kind` (e.g. `SIU^S14`).
pub(crate) async fn pms_got(received: &Mutex<Vec<String>>, kind: &str) {
    until(&format!("{kind} at the PMS"), || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|k| k == kind)
            .then_some(())
    })
    .await;
}

/// A test PMS on loopback that answers AA and keeps, per message, its
/// type (`ADT^A31`, …).
pub(crate) async fn pms_peer() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    pms_keeping(|_, msg| {
        let t = msg.message_type().unwrap();
        format!("{}^{}", t.code, t.trigger)
    })
    .await
}

/// A test PMS that keeps every message it gets, as text, and answers AA.
pub(crate) async fn pms_recorder() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    pms_keeping(|bytes, _| String::from_utf8_lossy(bytes).into_owned()).await
}

/// A test PMS on loopback that answers AA and keeps `keep(bytes, message)`
/// of each message.
async fn pms_keeping(
    keep: fn(&[u8], &hl7::Message) -> String,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(stream);
                let mut r = BufReader::new(r);
                while let Ok(Some(mllp::Incoming::Message(bytes))) =
                    mllp::read_frame(&mut r, 1 << 20).await
                {
                    let msg = hl7::parse(&bytes).unwrap();
                    log.lock().unwrap().push(keep(&bytes, &msg));
                    let ack =
                        hl7::ack(&msg, AckCode::Accept, None, t0(), "ZZPMS", "ZZCLINIC", "P1");
                    mllp::write_frame(&mut w, &ack).await.unwrap();
                }
            });
        }
    });
    (addr, received)
}

pub(crate) async fn daemon(sim: &Sim, pms: std::net::SocketAddr) -> Daemon {
    daemon_with(sim, pms, "", "").await
}

/// The daemon with `whatsapp` lines added to `[whatsapp]` and `extra`
/// config appended (e.g. a `[reminders]` section).
pub(crate) async fn daemon_with(
    sim: &Sim,
    pms: std::net::SocketAddr,
    whatsapp: &str,
    extra: &str,
) -> Daemon {
    let install = TestInstall::new(&format!(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\noutbound_endpoint = \"{pms}\"\n\
         outbound_timeout = \"5s\"\nphone_region = \"DE\"\n\n\
         [whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\n{whatsapp}\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n{extra}",
        sim.base_url()
    ));
    install.wa_secrets(SECRET);
    Daemon::start_in(install).await
}

/// Staff record the patient's opt-in (through the apply path).
pub(crate) async fn opt_in(d: &Daemon, patient: PatientId) {
    commands::apply(
        &d.running.vault,
        vec![Command::SetConsent {
            patient,
            state: ConsentState::OptedIn,
            source: ConsentSource::Staff,
        }],
        Origin::new("test"),
        t0(),
    )
    .await
    .unwrap();
}

pub(crate) fn siu(kind: &str, control_id: &str, appt: &str, start: &str) -> String {
    let msg = siu_s12_v25(control_id, appt, "CARE001", start).replace("SIU^S12^SIU_S12", kind);
    // The service and a diagnosis carry markers (as do the MRN, the full
    // name and the birth date) that the simulator must never see.
    let dg1 = "\rDG1|1||ZZDXMARKER^Marker diagnosis^I10|||A\rRGS|";
    msg.replace("CHECKUP", "ZZSVCMARKER")
        .replacen("\rRGS|", dg1, 1)
}

pub(crate) fn templates(sim: &Sim) -> Vec<serde_json::Value> {
    sim.sent_messages()
        .into_iter()
        .filter(|m| m["type"] == "template")
        .collect()
}

fn timers(d: &Daemon) -> usize {
    d.running
        .vault
        .scan_raw_from(Tree::Care, b"T")
        .filter_map(Result::ok)
        .filter(|(k, _)| k.first() == Some(&b'T'))
        .count()
}

/// Moves the clock to `at` and waits until the scheduler has run what was
/// due then, and the outbox has looked at its queue.
pub(crate) async fn at(d: &Daemon, at: Timestamp) {
    d.clock.set(at);
    tokio::time::timeout(Duration::from_secs(20), d.running.care.looked_at(at))
        .await
        .expect("scheduler looked");
    d.running.whatsapp.as_ref().unwrap().kick();
}

pub(crate) fn button_tap(wamid: &str, payload: &str) -> Vec<u8> {
    meta_json(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "ZZ"}, "wa_id": WA_ID}],
            "messages": [{"from": WA_ID, "id": wamid, "timestamp": "1800400000", "type": "button",
                          "button": {"payload": payload, "text": "Confirm"}}]
        }}]}]
    }))
}

pub(crate) async fn post_signed(d: &Daemon, body: Vec<u8>) -> u16 {
    crate::webhook::http(
        d.running.webhook_addr.unwrap(),
        "POST",
        "/webhook",
        body.clone(),
        &[
            ("content-type", "application/json".to_owned()),
            ("x-hub-signature-256", sign(SECRET, &body)),
        ],
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_goes_out_at_its_time_and_a_confirm_reaches_the_pms() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    let mut c = d.mllp().await;
    // t0 is Fri 15 January 2027 09:00 in Berlin; the visit Wed 20th 10:00.
    for (kind, id, appt) in [
        ("SIU^S12^SIU_S12", "C1", "APPT-C1"),
        ("SIU^S12^SIU_S12", "C2", "APPT-C2"),
        ("SIU^S15^SIU_S12", "C3", "APPT-C2"),
    ] {
        let ack = c.send(&siu(kind, id, appt, "202701201000")).await;
        assert_eq!(msa(&ack).0, "AA");
    }
    // One timer for C1 (its first reminder's; the state holds the
    // second); C2's went with its cancel.
    assert_eq!(timers(&d), 1);
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    opt_in(&d, patient).await;

    // Due Sun 17 January 10:00 in Berlin (09:00 UTC): nothing a second early.
    let due: Timestamp = "2027-01-17T09:00:00Z".parse().unwrap();
    at(&d, due - jiff::SignedDuration::from_secs(1)).await;
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    assert!(templates(&sim).is_empty());
    at(&d, due).await;
    let sent = until("the reminder at the simulator", || {
        templates(&sim).into_iter().next()
    })
    .await;
    assert_eq!(sent["to"], format!("+{WA_ID}"));
    assert_eq!(sent["template"]["name"], "appointment_reminder");
    assert_eq!(sent["template"]["language"]["code"], "en");
    let components = sent["template"]["components"].as_array().unwrap();
    let body = serde_json::to_string(&components[0]).unwrap();
    assert!(
        body.contains("Wed, Jan 20") && body.contains("10:00 AM"),
        "{body}"
    );
    let payloads: Vec<String> = components
        .iter()
        .filter(|c| c["sub_type"] == "quick_reply")
        .map(|c| c["parameters"][0]["payload"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(payloads.len(), 3);
    for p in &payloads {
        assert!(!p.contains("APPT") && !p.contains("CARE001"), "{p}");
    }
    assert!(
        !body.contains("CHECKUP") && !body.contains("ZZDOC"),
        "{body}"
    );

    // The patient taps Confirm.
    assert_eq!(
        post_signed(&d, button_tap("wamid.TAP1", &payloads[0])).await,
        200
    );
    pms_got(&received, "SIU^S14").await;
    let confirmed = crate::webhook::events(&d, EventKind::AppointmentConfirmed);
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].appointment.as_deref(), Some("APPT-C1"));
    assert!(
        d.running
            .vault
            .get_appointment("APPT-C1")
            .unwrap()
            .unwrap()
            .patient_confirmed
    );
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the reply at the simulator", || {
        sim.sent_messages()
            .iter()
            .any(|m| m["text"]["body"] == "Thank you, your appointment is confirmed.")
            .then_some(())
    })
    .await;
    // The same tap again (Meta retries): no second message to the PMS.
    assert_eq!(
        post_signed(&d, button_tap("wamid.TAP1", &payloads[0])).await,
        200
    );
    assert_eq!(timers(&d), 0);

    // No 24 h reminder after the confirmation, none for the cancelled one.
    at(&d, "2027-01-19T12:00:00Z".parse().unwrap()).await;
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    assert_eq!(templates(&sim).len(), 1);
    assert_eq!(
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == "SIU^S14")
            .count(),
        1
    );
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

pub(crate) async fn booked(d: &Daemon, appt: &str, start: &str, consent: bool) -> PatientId {
    let mut c = d.mllp().await;
    let ack = c
        .send(&siu("SIU^S12^SIU_S12", &format!("B-{appt}"), appt, start))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    if consent {
        opt_in(d, patient).await;
    }
    patient
}

/// The appointment's pending reminder times as its state holds them, after
/// checking that the timer index holds the earliest of them and nothing
/// else of this appointment's (one timer an appointment: `care::store::stage_first_timer`).
fn due_times(d: &Daemon, appt: &str) -> Vec<Timestamp> {
    let vault = &d.running.vault;
    let token = clinic_relay::care::store::token(vault, appt);
    let state = clinic_relay::care::store::load(vault, &token)
        .unwrap()
        .expect("a reminder state");
    let mut dues: Vec<Timestamp> = state.pending.iter().map(|p| p.due).collect();
    dues.sort();
    let index: Vec<Timestamp> = vault
        .scan_raw_from(Tree::Care, b"T")
        .filter_map(Result::ok)
        .filter_map(|(k, _)| clinic_relay::care::store::parse_timer_key(&k))
        .filter(|(_, t, _)| *t == token)
        .map(|(due, ..)| due)
        .collect();
    assert_eq!(
        index,
        dues.first().copied().into_iter().collect::<Vec<_>>(),
        "the index holds the earliest pending timer, and only it"
    );
    dues
}

pub(crate) fn payloads(sent: &serde_json::Value) -> Vec<String> {
    sent["template"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sub_type"] == "quick_reply")
        .map(|c| c["parameters"][0]["payload"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_tap_goes_to_the_pms_and_drops_the_second_reminder() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    booked(&d, "APPT-X1", "202701201000", true).await;
    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let sent = until("the reminder", || templates(&sim).into_iter().next()).await;
    let cancel = payloads(&sent)[1].clone();
    assert_eq!(post_signed(&d, button_tap("wamid.X1", &cancel)).await, 200);
    pms_got(&received, "SRM^S04").await;
    assert_eq!(
        crate::webhook::events(&d, EventKind::AppointmentCancelled).len(),
        1
    );
    assert_eq!(timers(&d), 0);
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the reply", || {
        sim.sent_messages()
            .iter()
            .any(|m| {
                m["text"]["body"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Your appointment is cancelled"))
            })
            .then_some(())
    })
    .await;
    // A Confirm after the Cancel changes nothing at the PMS.
    assert_eq!(
        post_signed(&d, button_tap("wamid.X2", &payloads(&sent)[0])).await,
        200
    );
    at(&d, "2027-01-19T12:00:00Z".parse().unwrap()).await;
    assert_eq!(templates(&sim).len(), 1);
    assert!(crate::webhook::events(&d, EventKind::AppointmentConfirmed).is_empty());
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reschedule_recomputes_the_reminders_across_a_dst_change_and_quiet_hours() {
    let sim = Sim::start().await.unwrap();
    let (pms, _) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    booked(&d, "APPT-D1", "202701201000", true).await;
    assert_eq!(
        due_times(&d, "APPT-D1"),
        [
            "2027-01-17T09:00:00Z".parse::<Timestamp>().unwrap(),
            "2027-01-19T09:00:00Z".parse().unwrap()
        ]
    );
    // Moved (S13) to Tue 30 March 2027 07:30 CEST, after the clocks went
    // forward on Sun 28 March: 72 h before is Sat 27th 07:30 CET, before
    // 08:00, so Fri 26th 21:00 CET; 24 h before is Mon 29th 07:30 CEST, so
    // Sun 28th 21:00 CEST.
    let mut c = d.mllp().await;
    let ack = c
        .send(&siu("SIU^S13^SIU_S12", "R-D1", "APPT-D1", "202703300730"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    assert_eq!(
        due_times(&d, "APPT-D1"),
        [
            "2027-03-26T20:00:00Z".parse::<Timestamp>().unwrap(),
            "2027-03-28T19:00:00Z".parse().unwrap()
        ]
    );
    // The old times pass: nothing.
    at(&d, "2027-01-19T12:00:00Z".parse().unwrap()).await;
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    // A no-show (S26) drops them.
    let ack = c
        .send(&siu("SIU^S26^SIU_S12", "N-D1", "APPT-D1", "202703300730"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    assert_eq!(timers(&d), 0);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

/// One timer an appointment: the 24 h reminder's timer is staged as the
/// 72 h one fires, so a clock that jumps past both still sends both, each
/// once. An appointment as a store written before left it (a timer for
/// every pending reminder) gets the same, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reminder_goes_once_with_one_timer_an_appointment_and_from_a_store_written_before() {
    use clinic_relay::care::store;
    use clinic_relay::vault::{Txn, VaultError};
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, _) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    booked(&d, "APPT-J1", "202701201000", true).await;
    booked(&d, "APPT-J2", "202701201000", true).await;
    assert_eq!(due_times(&d, "APPT-J1").len(), 2);
    assert_eq!(timers(&d), 2);
    let vault = d.running.vault.clone();
    let token = |appt: &str| store::token(&vault, appt);
    let old = token("APPT-J2");
    let state = store::load(&vault, &old).unwrap().unwrap();
    vault
        .write(move |_| {
            let mut txn = Txn::new(t0());
            for p in &state.pending {
                store::stage_timer(&mut txn, p.due, &old, p.offset, state.patient);
            }
            Ok::<_, VaultError>((txn, ()))
        })
        .await
        .unwrap();
    assert_eq!(timers(&d), 3);

    // Past both (Sun 17th 09:00 and Tue 19th 09:00 UTC), before the visit.
    at(&d, "2027-01-19T12:00:00Z".parse().unwrap()).await;
    assert_eq!(timers(&d), 0);
    let sent_for = |appt: &str| {
        let hex = hex::encode(token(appt));
        templates(&sim)
            .iter()
            .filter(|t| payloads(t).iter().any(|p| p.contains(&hex)))
            .count()
    };
    until("four reminders at the simulator", || {
        (templates(&sim).len() >= 4).then_some(())
    })
    .await;
    at(&d, "2027-01-20T08:00:00Z".parse().unwrap()).await;
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    assert_eq!((sent_for("APPT-J1"), sent_for("APPT-J2")), (2, 2));
    assert_eq!(templates(&sim).len(), 4);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reminder_without_consent_and_never_twice_across_a_restart() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, _) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    booked(&d, "APPT-N1", "202701201000", false).await;
    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let skipped = crate::webhook::events(&d, EventKind::ReminderSkipped);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].details["reason"], "no-consent");
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    assert!(templates(&sim).is_empty());

    // With consent, the 24 h one goes; a restart neither loses nor repeats it.
    booked(&d, "APPT-N1", "202701201000", true).await;
    at(&d, "2027-01-19T09:00:00Z".parse().unwrap()).await;
    until("the 24 h reminder", || templates(&sim).into_iter().next()).await;
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    let install = d.stop().await;
    let d = Daemon::start_in(install).await;
    for t in ["2027-01-19T09:00:00Z", "2027-01-19T20:00:00Z"] {
        at(&d, t.parse().unwrap()).await;
    }
    assert_eq!(timers(&d), 0);
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    assert_eq!(templates(&sim).len(), 1);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_opts_out_at_once_with_one_confirmation_and_start_opts_back_in() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    booked(&d, "APPT-S1", "202701201000", true).await;
    let text = |wamid: &str, body: &str| crate::webhook::text_message(wamid, WA_ID, "ZZ", body);
    assert_eq!(post_signed(&d, text("wamid.S1", "ARRÊT!")).await, 200);
    assert_eq!(post_signed(&d, text("wamid.S2", "Stopp")).await, 200);
    assert_eq!(
        post_signed(&d, text("wamid.S3", "please do not stop")).await,
        200
    );
    assert_eq!(crate::webhook::events(&d, EventKind::OptedOut).len(), 1);
    pms_got(&received, "ADT^A31").await;
    d.running.whatsapp.as_ref().unwrap().kick();
    let confirmations = || {
        sim.sent_messages()
            .iter()
            .filter(|m| {
                m["text"]["body"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("You will get no more messages"))
            })
            .count()
    };
    until("the confirmation", || (confirmations() == 1).then_some(())).await;
    // The 72 h reminder: not sent.
    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let skipped = crate::webhook::events(&d, EventKind::ReminderSkipped);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].details["reason"], "no-consent");
    // START: the 24 h one goes.
    assert_eq!(post_signed(&d, text("wamid.S4", "start")).await, 200);
    assert_eq!(crate::webhook::events(&d, EventKind::OptedIn).len(), 1);
    at(&d, "2027-01-19T09:00:00Z".parse().unwrap()).await;
    until("the 24 h reminder", || templates(&sim).into_iter().next()).await;
    assert_eq!(confirmations(), 1);
    // A language file's own words count too: Spanish "empezar" is not a
    // built-in keyword, it comes from config/messages/es.toml.
    assert_eq!(post_signed(&d, text("wamid.S5", "Baja")).await, 200);
    assert_eq!(post_signed(&d, text("wamid.S6", "¡Empezar!")).await, 200);
    assert_eq!(crate::webhook::events(&d, EventKind::OptedOut).len(), 2);
    assert_eq!(crate::webhook::events(&d, EventKind::OptedIn).len(), 2);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_follow_an_appointment_into_the_surviving_patient_of_a_merge() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, _) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    let merged = booked(&d, "APPT-M1", "202701201000", false).await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&siu_s12_v25("M2", "APPT-M2", "CARE002", "202702201000"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let survivor: PatientId = d.running.vault.find_patients_by_mrn("", "CARE002").unwrap()[0];
    commands::apply(
        &d.running.vault,
        vec![
            Command::MergePatients { survivor, merged },
            Command::SetConsent {
                patient: survivor,
                state: ConsentState::OptedIn,
                source: ConsentSource::Staff,
            },
        ],
        Origin::new("test"),
        t0(),
    )
    .await
    .unwrap();
    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    until("the reminder", || templates(&sim).into_iter().next()).await;
    assert!(crate::webhook::events(&d, EventKind::ReminderSkipped).is_empty());
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

/// Issue 10's yardstick, scaled to the slice: 4,000 reminders due in one
/// hour found and queued by the scheduler's jobs. Run it by hand:
/// `cargo test --release --test it care_reminders::fire_4000 -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn fire_4000_due_reminders() {
    use clinic_relay::care::{config::RemindersConfig, shell, Settings};
    use clinic_relay::model::{Appointment, AppointmentStatus, Patient};
    use clinic_relay::pms::outbound::OutboundConfig;
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("data"), &key(3));
    vault.set_care(Settings {
        reminders: RemindersConfig::default(),
        conversations: Default::default(),
        time_zone: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
        outbound: OutboundConfig {
            application: "CR".into(),
            facility: "F".into(),
            receiving_application: "PMS".into(),
            receiving_facility: "F".into(),
            confirm_status: "Confirmed".into(),
            consent_field: None,
            assigning_authority: "ZZHOSP".into(),
            new_patient_trigger: "A04".into(),
        },
        results: Default::default(),
        media: Default::default(),
        booking: Default::default(),
    });
    const N: usize = 4_000;
    // Visits spread over one hour on Wed 20 January 2027 from 10:00.
    let start: Timestamp = "2027-01-20T09:00:00Z".parse().unwrap();
    let mut commands = Vec::new();
    for i in 0..N {
        let id = PatientId(*b"perfpatient00000");
        let mut id = id;
        id.0[12..].copy_from_slice(&(i as u32).to_be_bytes());
        commands.push(Command::UpsertPatient(Box::new(Patient {
            id,
            mrn: format!("PERF{i}"),
            family_name: "ZZ".into(),
            given_name: "ZZ".into(),
            birth_date: None,
            phone: Some(format!("+491515550{i:04}")),
            language: None,
            deceased: false,
            protected: false,
        })));
        commands.push(Command::SetConsent {
            patient: id,
            state: ConsentState::OptedIn,
            source: ConsentSource::Staff,
        });
        commands.push(Command::UpsertAppointment(Box::new(Appointment {
            id: format!("PERF-A{i}"),
            patient: id,
            start: start + jiff::SignedDuration::from_millis(900 * i as i64),
            duration_minutes: 15,
            status: AppointmentStatus::Booked,
            pms_status: None,
            provider: None,
            location: None,
            patient_confirmed: false,
        })));
    }
    for chunk in commands.chunks(1_500) {
        commands::apply(&vault, chunk.to_vec(), Origin::new("perf"), t0())
            .await
            .unwrap();
    }
    let now: Timestamp = "2027-01-17T10:00:00Z".parse().unwrap();
    #[allow(clippy::disallowed_methods)] // a measurement of elapsed wall time
    let began = std::time::Instant::now();
    let mut fired = 0;
    loop {
        let n = vault
            .write(move |v| shell::fire_due(v, now, 512))
            .await
            .unwrap()
            .value;
        fired += n;
        if n == 0 {
            break;
        }
    }
    let took = began.elapsed();
    assert!(vault.events_after(0, 10).unwrap().is_empty());
    assert_eq!(fired, N);
    assert_eq!(vault.count(Tree::WaOutbox), N);
    println!("fired {fired} reminder timers and queued {N} messages in {took:?}");
    vault.close().unwrap();
}
