//! Conversations and the staff inbox end to end (issue 11, items 1 and 4),
//! through real sockets and a manual clock: "I need to talk to someone"
//! (a signed webhook) → a `staff-requested` event and one reply at the
//! simulator → the conversation waiting in `GET /v1/conversations` → a
//! staff reply as free text → no bot answer while with staff → 25 hours
//! later the same reply goes out as the reopen template → close. Greetings
//! get the menu in the language they were written in.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{meta_json, text_message};
use clinic_relay::model::EventKind;
use clinic_relay::vault::Tree;
use graph_sim::{Sim, Template};
use jiff::SignedDuration;
use serde_json::{json, Value};

const ON: &str = "\n[conversations]\nenabled = true\n";

/// The daemon with conversations on and the SIU's patient (CARE001, the
/// number `WA_ID`) known.
async fn setup(sim: &Sim, extra: &str) -> Daemon {
    let (pms, _received) = pms_peer().await;
    let d = daemon_with(sim, pms, "", &format!("{ON}{extra}")).await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&siu("SIU^S12^SIU_S12", "H1", "APPT-H1", "202701201000"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    d
}

fn texts(sim: &Sim) -> Vec<String> {
    sim.sent_messages()
        .iter()
        .filter_map(|m| m["text"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn lists(sim: &Sim) -> Vec<Value> {
    sim.sent_messages()
        .into_iter()
        .filter(|m| m["interactive"]["type"] == "list")
        .collect()
}

/// Lets the outbox send what is queued and waits until it is empty.
async fn drain(d: &Daemon) {
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the outbox empty", || {
        (d.running.vault.count(Tree::WaOutbox) == 0).then_some(())
    })
    .await;
}

async fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    api_call(&d.running.api_socket, method, path, body, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_asks_for_a_person_and_staff_answer_from_the_inbox() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("conversation_reopen", "en"));
    let d = setup(&sim, "").await;

    let hi = text_message("wamid.H1", WA_ID, "ZZ", "I need to talk to someone");
    assert_eq!(post_signed(&d, hi).await, 200);
    drain(&d).await;
    let waiting = "Thank you. A member of staff will answer you here as soon as possible.";
    until("the hand-off reply", || {
        texts(&sim).iter().any(|t| t == waiting).then_some(())
    })
    .await;
    let events = crate::webhook::events(&d, EventKind::StaffRequested);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].details["reason"], "asked");
    let conv = events[0].details["conversation"].clone();

    // Two minutes later it is in the inbox, with its waiting time.
    d.clock.set(t0() + SignedDuration::from_secs(120));
    let (status, list) = api(&d, "GET", "/v1/conversations?state=waiting", None).await;
    assert_eq!(status, 200, "{list}");
    let list = list["conversations"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], conv.as_str());
    assert_eq!(list[0]["waiting_seconds"], 120);
    assert_eq!(list[0]["language"], Value::Null);
    assert_eq!(list[0]["window_open"], true);
    assert!(list[0]["patient"].as_str().unwrap().len() == 32);

    // Staff answer inside the window: free text.
    let path = format!("/v1/conversations/{conv}/messages");
    let reply = json!({"text": "ZZ staff: we will call you at noon."});
    let (status, body) = api(&d, "POST", &path, Some(reply.clone())).await;
    assert_eq!(
        (status, body["sent_as"].as_str()),
        (200, Some("text")),
        "{body}"
    );
    assert_eq!(body["state"], "with-staff");
    drain(&d).await;
    until("the staff text", || {
        texts(&sim)
            .iter()
            .any(|t| t == "ZZ staff: we will call you at noon.")
            .then_some(())
    })
    .await;

    // The patient writes again: shown to staff, not answered by the bot.
    let before = sim.sent_messages().len();
    let more = text_message("wamid.H2", WA_ID, "ZZ", "ok thanks, and my prescription?");
    assert_eq!(post_signed(&d, more).await, 200);
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    drain(&d).await;
    assert_eq!(sim.sent_messages().len(), before);
    assert_eq!(
        crate::webhook::events(&d, EventKind::StaffRequested).len(),
        1
    );

    // 25 hours later the window is closed: the same reply goes out as the
    // reopen template, the text waits for the patient's answer.
    d.clock.set(t0() + SignedDuration::from_hours(25));
    let (status, body) = api(&d, "POST", &path, Some(reply)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sent_as"], "reopen-template");
    assert_eq!(body["window_open"], false);
    drain(&d).await;
    let template = until("the reopen template", || {
        sim.sent_messages()
            .into_iter()
            .find(|m| m["template"]["name"] == "conversation_reopen")
    })
    .await;
    assert_eq!(template["template"]["language"]["code"], "en");
    let staff_texts = |sim: &Sim| {
        texts(sim)
            .iter()
            .filter(|t| t.starts_with("ZZ staff"))
            .count()
    };
    assert_eq!(staff_texts(&sim), 1);

    // The conversation, newest last, with delivery states.
    let (status, view) = api(&d, "GET", &format!("/v1/conversations/{conv}"), None).await;
    assert_eq!(status, 200, "{view}");
    let messages = view["messages"].as_array().unwrap();
    let from: Vec<&str> = messages
        .iter()
        .map(|m| m["from"].as_str().unwrap())
        .collect();
    assert_eq!(from, ["patient", "bot", "staff", "patient", "staff", "bot"]);
    assert_eq!(messages[0]["text"], "I need to talk to someone");
    assert_eq!(messages[2]["delivery"], "sent");
    assert!(messages[2]["actor"]
        .as_str()
        .unwrap()
        .starts_with("api:uid="));
    assert_eq!(messages[4]["delivery"], "held");
    assert_eq!(messages[5]["kind"], "template");

    // Closing hands it back to the bot; a second close is a conflict.
    let close = format!("/v1/conversations/{conv}/close");
    let (status, body) = api(&d, "POST", &close, None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("closed")),
        "{body}"
    );
    let (status, body) = api(&d, "POST", &close, None).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = api(
        &d,
        "GET",
        &format!("/v1/conversations/{}", "0".repeat(32)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = api(&d, "POST", &path, Some(json!({"text": " "}))).await;
    assert_eq!(status, 422);
    let (status, _) = api(&d, "GET", "/v1/conversations?state=nonsense", None).await;
    assert_eq!(status, 400);
    let (status, list) = api(&d, "GET", "/v1/conversations?state=waiting", None).await;
    assert_eq!(
        (status, list["conversations"].as_array().unwrap().len()),
        (200, 0)
    );
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);

    // The staff member is the audit actor of every call; the read of the
    // conversation names the patient (drained to disk by the stop).
    let patient = format!("p-{}", view["patient"].as_str().unwrap());
    let install = d.stop().await;
    let vault = install.open();
    let entries: Vec<_> = vault.audit_entries(1).map(|(_, e)| e.unwrap()).collect();
    let of = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("conversation.reply").len(), 2);
    assert_eq!(of("conversation.close").len(), 1);
    assert_eq!(of("conversation.read").len(), 1);
    assert!(of("conversation.list").len() >= 2);
    for e in of("conversation.reply")
        .into_iter()
        .chain(of("conversation.read"))
        .chain(of("conversation.close"))
    {
        assert!(e.actor.starts_with("api:uid="), "{}", e.actor);
        assert_eq!(e.subject.as_deref(), Some(patient.as_str()));
    }
    vault.verify_audit().unwrap();
}

/// A tap on a row of the menu list.
fn menu_tap(wamid: &str, id: &str) -> Vec<u8> {
    meta_json(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "ZZ"}, "wa_id": WA_ID}],
            "messages": [{"from": WA_ID, "id": wamid, "timestamp": "1800000060", "type": "interactive",
                          "interactive": {"type": "list_reply", "list_reply": {"id": id, "title": "Book"}}}]
        }}]}]
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greetings_get_the_menu_in_their_language_and_a_choice_is_answered() {
    let sim = Sim::start().await.unwrap();
    // Booking off: Book is handed to staff (the booking flow has its own
    // tests, `care_booking`).
    let d = setup(&sim, "retention = \"1d\"\n\n[booking]\nenabled = false\n").await;
    for (n, (greeting, body)) in [
        ("hi", "How can we help?"),
        ("¡Hola!", "¿En qué podemos ayudarle?"),
        ("Hallo", "Wie können wir helfen?"),
    ]
    .into_iter()
    .enumerate()
    {
        let msg = text_message(&format!("wamid.G{n}"), WA_ID, "ZZ", greeting);
        assert_eq!(post_signed(&d, msg).await, 200);
        drain(&d).await;
        let menu = until("the menu", || lists(&sim).into_iter().nth(n)).await;
        let text = menu["interactive"]["body"]["text"].as_str().unwrap();
        assert!(text.starts_with(body), "{greeting}: {text}");
        let rows = menu["interactive"]["action"]["sections"][0]["rows"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(rows, 4);
    }
    // Nobody chose: 30 minutes later the menu is reset (durable timer).
    at(&d, t0() + SignedDuration::from_mins(31)).await;
    let (status, idle) = api(&d, "GET", "/v1/conversations?state=idle", None).await;
    assert_eq!(status, 200);
    assert_eq!(idle["conversations"].as_array().unwrap().len(), 1, "{idle}");

    // "Book" from the (German) menu: not automated here, honestly said, and
    // staff get the conversation with its topic.
    let rows = &lists(&sim)[2]["interactive"]["action"]["sections"][0]["rows"];
    let book = rows[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(post_signed(&d, menu_tap("wamid.G9", &book)).await, 200);
    drain(&d).await;
    until("the not-yet reply in German", || {
        texts(&sim)
            .iter()
            .any(|t| t.starts_with("Das geht im Chat noch nicht."))
            .then_some(())
    })
    .await;
    let events = crate::webhook::events(&d, EventKind::StaffRequested);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].details["reason"], "not-yet-automated");
    assert_eq!(events[0].details["topic"], "booking");
    // An idle menu would have been reset after 30 minutes; this one is
    // with staff and stays in the inbox.
    let at_later = t0() + SignedDuration::from_hours(1);
    at(&d, at_later).await;
    let (status, list) = api(&d, "GET", "/v1/conversations?state=waiting", None).await;
    assert_eq!(status, 200);
    let list = list["conversations"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["language"], "de");
    assert_eq!(list[0]["topic"], "booking");
    let conv = list[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/conversations/{conv}");
    let (_, view) = api(&d, "GET", &path, None).await;
    assert_eq!(view["messages"].as_array().unwrap().len(), 8, "{view}");
    // After the retention (1 day here) the messages are purged by their
    // timer; the conversation stays in the inbox.
    at(&d, t0() + SignedDuration::from_hours(49)).await;
    let (status, view) = api(&d, "GET", &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(view["messages"], json!([]), "{view}");
    assert_eq!(view["state"], "waiting");
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_the_clinic_does_not_know_can_reach_staff_too() {
    let sim = Sim::start().await.unwrap();
    let d = setup(&sim, "").await;
    const STRANGER: &str = "4915155509999";
    let hello = text_message("wamid.U1", STRANGER, "ZZ", "hello");
    assert_eq!(post_signed(&d, hello).await, 200);
    drain(&d).await;
    let menu = until("the menu", || lists(&sim).into_iter().next()).await;
    assert_eq!(menu["to"], format!("+{STRANGER}"));
    let four = text_message("wamid.U2", STRANGER, "ZZ", "4");
    assert_eq!(post_signed(&d, four).await, 200);
    drain(&d).await;
    let events = crate::webhook::events(&d, EventKind::StaffRequested);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].patient, None);
    assert_eq!(events[0].details["matched"], "false");
    let (status, list) = api(&d, "GET", "/v1/conversations?state=waiting", None).await;
    assert_eq!(status, 200);
    let entry = list["conversations"][0].clone();
    assert_eq!(
        (entry["contact"].as_str(), &entry["patient"]),
        (Some("unknown"), &Value::Null)
    );
    let path = format!(
        "/v1/conversations/{}/messages",
        entry["id"].as_str().unwrap()
    );
    let (status, body) = api(&d, "POST", &path, Some(json!({"text": "ZZ who is this?"}))).await;
    assert_eq!(
        (status, body["sent_as"].as_str()),
        (200, Some("text")),
        "{body}"
    );
    drain(&d).await;
    let sent = until("the staff text", || {
        sim.sent_messages()
            .into_iter()
            .find(|m| m["text"]["body"] == "ZZ who is this?")
    })
    .await;
    assert_eq!(sent["to"], format!("+{STRANGER}"));
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

/// Issue 11's yardstick for a chatbot turn: a signed webhook in → its
/// reply committed to the outbox (the `200` comes only after that commit),
/// 2,000 patients greeting at 200 conversations a second. Run it by hand:
/// `cargo test --test it care_handoff::chatbot_turn -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn chatbot_turn_latency_at_200_conversations_a_second() {
    use clinic_relay::commands::{self, Command, Origin};
    use clinic_relay::model::{Patient, PatientId};
    const N: usize = 2_000;
    let sim = Sim::start().await.unwrap();
    let d = setup(&sim, "").await;
    let mut patients = Vec::new();
    for i in 0..N {
        let mut id = PatientId(*b"turnpatient00000");
        id.0[12..].copy_from_slice(&(i as u32).to_be_bytes());
        patients.push(Command::UpsertPatient(Box::new(Patient {
            id,
            mrn: format!("TURN{i}"),
            family_name: "ZZ".into(),
            given_name: "ZZ".into(),
            birth_date: None,
            phone: Some(format!("+491515550{i:04}")),
            language: None,
            deceased: false,
            protected: false,
        })));
    }
    for chunk in patients.chunks(1_000) {
        commands::apply(&d.running.vault, chunk.to_vec(), Origin::new("perf"), t0())
            .await
            .unwrap();
    }
    let addr = d.running.webhook_addr.unwrap();
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(5));
    let mut turns = Vec::new();
    for i in 0..N {
        pace.tick().await;
        let body = text_message(
            &format!("wamid.T{i}"),
            &format!("491515550{i:04}"),
            "ZZ",
            "hi",
        );
        turns.push(tokio::spawn(async move {
            let signature = crate::webhook::sign("care-app-secret", &body);
            let headers = [
                ("content-type", "application/json".to_owned()),
                ("x-hub-signature-256", signature),
            ];
            #[allow(clippy::disallowed_methods)] // a measurement of elapsed wall time
            let began = std::time::Instant::now();
            let (status, _) = crate::webhook::http(addr, "POST", "/webhook", body, &headers).await;
            assert_eq!(status, 200);
            began.elapsed()
        }));
    }
    let mut took = Vec::new();
    for t in turns {
        took.push(t.await.unwrap());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "{N} chatbot turns at 200/s: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        took[took.len() - 1]
    );
    // Every greeting got its menu in the outbox or already at the simulator.
    drain(&d).await;
    assert_eq!(lists(&sim).len(), N);
    d.stop().await;
}

/// Meta may put several messages of one person in one webhook call (after
/// an outage it batches). Each is decided on the state the one before it
/// left, in the same transaction: "hi" shows the menu, the "3" after it is
/// a choice from that menu, and both are in the conversation's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_in_one_webhook_call_each_see_the_one_before() {
    let sim = Sim::start().await.unwrap();
    let d = setup(&sim, "").await;
    let mut body: Value =
        serde_json::from_slice(&text_message("wamid.B1", WA_ID, "ZZ", "hi")).unwrap();
    let value = &mut body["entry"][0]["changes"][0]["value"];
    let first = value["messages"][0].clone();
    let mut second = first.clone();
    second["id"] = json!("wamid.B2");
    second["text"]["body"] = json!("I need to talk to someone");
    value["messages"] = json!([first, second]);
    assert_eq!(post_signed(&d, meta_json(&body)).await, 200);
    drain(&d).await;
    until("the menu", || lists(&sim).into_iter().next()).await;
    let waiting = "Thank you. A member of staff will answer you here as soon as possible.";
    until("the hand-off reply", || {
        texts(&sim).iter().any(|t| t == waiting).then_some(())
    })
    .await;
    let events = crate::webhook::events(&d, EventKind::StaffRequested);
    assert_eq!(events.len(), 1);
    let conv = events[0].details["conversation"].clone();
    let (status, view) = api(&d, "GET", &format!("/v1/conversations/{conv}"), None).await;
    assert_eq!(status, 200, "{view}");
    let inbound: Vec<&Value> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["from"] == "patient")
        .collect();
    assert_eq!(inbound.len(), 2, "both messages are in the log: {view}");
    d.stop().await;
}

/// GETs `path` on the API socket: status, content type, raw body.
async fn api_bytes(d: &Daemon, path: &str) -> (u16, Option<String>, Vec<u8>) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::UnixStream::connect(&d.running.api_socket)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, body)
}

/// A patient's photo reaches staff: the message is in the conversation
/// (handed over: the bot cannot read photos), and its bytes come from
/// `GET …/messages/{n}/media` as fetched from Meta and sealed; the read is
/// audited; a text message has no media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_can_open_a_photo_the_patient_sent() {
    let sim = Sim::start().await.unwrap();
    let d = setup(&sim, "").await;
    let image = b"\xff\xd8JPEG ZZPHOTOMARKER bytes".to_vec();
    let (media_id, sha) = sim.add_media("image/jpeg", &image);
    let update = graph_sim::webhooks::inbound_media(
        "wamid.PH1",
        WA_ID,
        "image",
        &media_id,
        "image/jpeg",
        &sha,
        1_800_000_050,
    );
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": update}]}]
    });
    assert_eq!(post_signed(&d, meta_json(&body)).await, 200);
    let events = until("handed to staff", || {
        let e = crate::webhook::events(&d, EventKind::StaffRequested);
        (!e.is_empty()).then_some(e)
    })
    .await;
    let conv = events[0].details["conversation"].clone();
    let (status, view) = api(&d, "GET", &format!("/v1/conversations/{conv}"), None).await;
    assert_eq!(status, 200, "{view}");
    let photo = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "image")
        .cloned()
        .unwrap_or_else(|| panic!("no image in {view}"));
    let n = photo["n"].as_u64().unwrap();
    let path = format!("/v1/conversations/{conv}/messages/{n}/media");
    // The media worker fetches it from the simulator right after the call.
    let mut tries = 0;
    let got = loop {
        let got = api_bytes(&d, &path).await;
        if got.0 == 200 || tries == 500 {
            break got;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(got.0, 200, "{}", String::from_utf8_lossy(&got.2));
    assert_eq!(got.1.as_deref(), Some("image/jpeg"));
    assert_eq!(got.2, image);
    // The bot's reply is no media; a message number that does not exist
    // neither.
    let texts_n = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["from"] == "bot")
        .unwrap()["n"]
        .as_u64()
        .unwrap();
    for n in [texts_n.to_string(), "99".to_owned(), "x".to_owned()] {
        let (status, ct, _) =
            api_bytes(&d, &format!("/v1/conversations/{conv}/messages/{n}/media")).await;
        assert_eq!(status, 404);
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
    }
    // The read is audited: the staff member as actor, the patient as
    // subject (drained to disk by the stop).
    let patient = format!("p-{}", view["patient"].as_str().unwrap());
    let vault = d.stop().await.open();
    let reads: Vec<_> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action == "conversation.media-read")
        .collect();
    assert_eq!(reads.len(), 1);
    assert!(reads[0].actor.starts_with("api:uid="), "{}", reads[0].actor);
    assert_eq!(reads[0].subject.as_deref(), Some(patient.as_str()));
}
