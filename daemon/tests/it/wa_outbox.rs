//! The WhatsApp outbox end to end: a real vault, the worker, the client and
//! the Graph API simulator on loopback.

use crate::support::*;
use crate::wa_client::config_for;
use clinic_relay::clock::{ManualClock, SharedClock};
use clinic_relay::model::EventKind;
use clinic_relay::vault::{Tree, Vault};
use clinic_relay::whatsapp::client::GraphClient;
use clinic_relay::whatsapp::config::WhatsappConfig;
use clinic_relay::whatsapp::message::{self, Frame, Params, Recipient, Row, TemplateSpec};
use clinic_relay::whatsapp::outbox::{self, WaItem};
use clinic_relay::whatsapp::worker::{OutboxHandle, Worker};
use graph_sim::{Injection, Sim, Template};
use jiff::SignedDuration;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Setup {
    /// Holds the temporary directory for the test's lifetime.
    pub _dir: tempfile::TempDir,
    pub vault: Vault,
    pub clock: ManualClock,
    pub token_file: std::path::PathBuf,
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vault = open(&dir.path().join("data"), &key(7));
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "tok-1\n").unwrap();
        Self {
            _dir: dir,
            vault,
            clock: ManualClock::new(t0()),
            token_file,
        }
    }

    pub fn config(&self, sim: &Sim) -> WhatsappConfig {
        WhatsappConfig {
            token_file: Some(self.token_file.clone()),
            ..config_for(sim)
        }
    }

    pub fn start(&self, config: &WhatsappConfig) -> (OutboxHandle, watch::Sender<bool>) {
        let clock: SharedClock = Arc::new(self.clock.clone());
        let (mut worker, handle) =
            Worker::new(self.vault.clone(), clock, config, Some(None)).unwrap();
        worker.token_poll = Duration::from_millis(20);
        let (stop, rx) = watch::channel(false);
        tokio::spawn(worker.run(rx));
        (handle, stop)
    }

    pub async fn send(&self, to: &str, msg: message::OutMessage) {
        let item = WaItem {
            patient: None,
            recipient: Some(if to.contains('.') {
                Recipient::bsuid(to).unwrap()
            } else {
                Recipient::phone(to).unwrap()
            }),
            message: msg,
            reference: None,
        };
        outbox::enqueue(&self.vault, item, self.clock.now_ts(), None)
            .await
            .unwrap();
    }
}

trait Now {
    fn now_ts(&self) -> jiff::Timestamp;
}
impl Now for ManualClock {
    fn now_ts(&self) -> jiff::Timestamp {
        clinic_relay::clock::Clock::now(self)
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// Kicks the worker until `n` messages have left the queue (retries wait
/// for their back-off otherwise).
async fn drain(handle: &OutboxHandle, n: u64) {
    within(async {
        while handle.processed() < n {
            handle.kick();
            let _ =
                tokio::time::timeout(Duration::from_millis(20), handle.processed_at_least(n)).await;
        }
    })
    .await;
}

fn texts_to(sim: &Sim, to: &str) -> Vec<String> {
    sim.sent_messages()
        .iter()
        .filter(|m| m["to"] == to)
        .map(|m| m["text"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_sent_and_meta_ids_are_stored() {
    let s = Setup::new();
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-1"));
    sim.add_template(Template::approved("appointment_reminder", "de"));
    sim.map_wa_id("+4915550001", "4915550777");
    let config = s.config(&sim);
    // The PDF goes up first; the document message names its media id.
    let client = GraphClient::new(
        &config,
        Some(clinic_relay::whatsapp::client::Token::new("tok-1")),
    )
    .unwrap();
    let media = client
        .upload_media(b"%PDF-1.4 x", "application/pdf", "r.pdf")
        .await
        .unwrap();
    let f = Frame {
        header: Some("Praxis"),
        body: "Termin?",
        footer: Some("Antworten"),
    };
    let msgs = vec![
        message::text("eins").unwrap(),
        message::buttons(&f, &[("yes", "Ja"), ("no", "Nein")]).unwrap(),
        message::list(
            &f,
            "Wählen",
            &[(
                None,
                vec![Row {
                    id: "s1",
                    title: "Mo 9:00",
                    description: Some("Dr. Z"),
                }],
            )],
        )
        .unwrap(),
        message::template(&TemplateSpec {
            name: "appointment_reminder",
            language: "de",
            // The shipped template has no header: a text header nobody
            // mapped to a field is refused by the minimal-payload policy.
            header: None,
            body: Params::Positional(vec!["Mo", "9:00"]),
            quick_replies: vec!["CONFIRM:A1", "CANCEL:A1"],
        })
        .unwrap(),
        message::document(&media, "befund.pdf", Some("Ihr Befund")).unwrap(),
    ];
    let n = msgs.len() as u64;
    for m in msgs {
        s.send("+4915550001", m).await;
    }
    s.send("US.13491208655302741918", message::text("bsuid").unwrap())
        .await;
    let read = WaItem {
        patient: None,
        recipient: None,
        message: message::mark_read("wamid.IN1").unwrap(),
        reference: None,
    };
    outbox::enqueue(&s.vault, read, t0(), None).await.unwrap();
    let (handle, _stop) = s.start(&config);
    within(handle.processed_at_least(n + 2)).await;

    let sent = sim.sent_messages();
    let kinds: Vec<&str> = sent
        .iter()
        .filter(|m| m["to"] == "+4915550001")
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["text", "interactive", "interactive", "template", "document"]
    );
    assert!(sent
        .iter()
        .any(|m| m["recipient"] == "US.13491208655302741918"));
    assert!(sent
        .iter()
        .any(|m| m["status"] == "read" && m["message_id"] == "wamid.IN1"));
    let records = outbox::sent(&s.vault).unwrap();
    assert_eq!(records.len() as u64, n + 2);
    assert!(records
        .iter()
        .filter(|r| r.kind != message::Kind::MarkRead)
        .all(|r| r.wamid.starts_with("wamid.") && !r.dry_run));
    // Meta's wa_id differs from the number sent: it is what is stored.
    let resolved = records
        .iter()
        .filter(|r| r.wa_id.as_deref() == Some("4915550777"))
        .count();
    assert_eq!(resolved as u64, n);
    assert_eq!(s.vault.count(Tree::WaOutbox), 0);
    // Delivered: the media goes from Meta's servers.
    client.delete_media(&media).await.unwrap();
    assert!(sim.media_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_become_events_and_transient_ones_are_retried() {
    let s = Setup::new();
    let sim = Sim::start().await.unwrap();
    sim.inject(Injection::code(131047).for_recipient("+4915550002"));
    sim.inject(
        Injection::code(131000)
            .for_recipient("+4915550003")
            .times(2),
    );
    sim.inject(Injection::http(502).for_recipient("+4915550003"));
    s.send("+4915550002", message::text("outside window").unwrap())
        .await;
    s.send("+4915550003", message::text("a").unwrap()).await;
    s.send("+4915550003", message::text("b").unwrap()).await;
    let (handle, _stop) = s.start(&s.config(&sim));
    drain(&handle, 3).await;
    assert_eq!(texts_to(&sim, "+4915550003"), ["a", "b"]);
    assert!(texts_to(&sim, "+4915550002").is_empty());
    assert_eq!(s.vault.count(Tree::WaDeadLetters), 1);
    let events = s.vault.events_after(0, 100).unwrap();
    let rejected: Vec<_> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::WhatsappMessageRejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].1.details["reason"], "refused:131047");
    assert_eq!(rejected[0].1.details["message"], "text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_sends_each_once_in_per_recipient_order() {
    let s = Setup::new();
    let sim = Sim::start().await.unwrap();
    sim.refuse_connections(true);
    let recipients = ["+4915550011", "+4915550012", "+4915550013"];
    for i in 0..10 {
        for r in recipients {
            s.send(r, message::text(&format!("m{i:02}")).unwrap()).await;
        }
    }
    let (handle, _stop) = s.start(&s.config(&sim));
    // Every recipient's head fails at least once.
    within(async {
        while outbox::list(&s.vault, 100)
            .unwrap()
            .iter()
            .filter(|l| l.attempts > 0)
            .count()
            < 3
        {
            handle.kick();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(handle.processed(), 0);
    sim.refuse_connections(false);
    s.clock.advance(SignedDuration::from_hours(1));
    drain(&handle, 30).await;
    let want: Vec<String> = (0..10).map(|i| format!("m{i:02}")).collect();
    for r in recipients {
        assert_eq!(texts_to(&sim, r), want, "{r}");
    }
    assert_eq!(sim.sent_messages().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_190_pauses_until_the_token_file_changes() {
    let s = Setup::new();
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-2"));
    for i in 0..5 {
        s.send("+4915550021", message::text(&format!("t{i}")).unwrap())
            .await;
    }
    let (handle, _stop) = s.start(&s.config(&sim));
    within(handle.wait_paused(true)).await;
    assert_eq!(s.vault.count(Tree::WaOutbox), 5, "nothing dropped");
    assert_eq!(s.vault.count(Tree::WaDeadLetters), 0);
    std::fs::write(&s.token_file, "tok-2\n").unwrap();
    within(handle.wait_paused(false)).await;
    within(handle.processed_at_least(5)).await;
    assert_eq!(
        texts_to(&sim, "+4915550021"),
        ["t0", "t1", "t2", "t3", "t4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_without_credentials_connects_nowhere() {
    let s = Setup::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = WhatsappConfig {
        api_base_url: format!("http://{}", listener.local_addr().unwrap()),
        phone_number_id: "1".to_owned(),
        token_file: None,
        ..WhatsappConfig::default()
    };
    for i in 0..4 {
        s.send("+4915550031", message::text(&format!("d{i}")).unwrap())
            .await;
    }
    let (handle, _stop) = s.start(&config);
    assert!(handle.dry_run);
    within(handle.processed_at_least(4)).await;
    let records = outbox::sent(&s.vault).unwrap();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.dry_run));
    assert!(outbox::list(&s.vault, 10)
        .unwrap()
        .iter()
        .all(|l| l.state == "dry-run"));
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "dry-run made a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_item_is_dropped_with_an_event_not_sent() {
    let s = Setup::new();
    let sim = Sim::start().await.unwrap();
    let item = WaItem {
        patient: None,
        recipient: Some(Recipient::phone("+4915550041").unwrap()),
        message: message::text("too late").unwrap(),
        reference: Some("appt-hash".to_owned()),
    };
    outbox::enqueue(
        &s.vault,
        item,
        t0(),
        Some(t0() + SignedDuration::from_mins(5)),
    )
    .await
    .unwrap();
    s.send("+4915550041", message::text("later").unwrap()).await;
    s.clock.advance(SignedDuration::from_mins(10));
    let (handle, _stop) = s.start(&s.config(&sim));
    within(handle.processed_at_least(1)).await;
    assert_eq!(texts_to(&sim, "+4915550041"), ["later"]);
    let events = s.vault.events_after(0, 10).unwrap();
    assert!(events
        .iter()
        .any(|(_, e)| e.kind == EventKind::WhatsappMessageExpired
            && e.details["reference"] == "appt-hash"));
}

/// `/v1/status` tells clinic IT what the WhatsApp side is doing: dry-run by
/// default; live with a token, and a paused outbox (token rejected, 190) is
/// a warning that names the fix, with the queued messages still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_whatsapp_mode_queue_and_a_paused_outbox() {
    use crate::pms_support::Daemon;
    let d = Daemon::start("").await;
    let (status, s) = d.api("GET", "/v1/status", None).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["whatsapp_mode"], "dry-run");
    assert_eq!(s["whatsapp"]["paused"], false);
    assert_eq!(s["whatsapp"]["webhook"], "not configured");
    d.stop().await;

    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("the-right-token"));
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\n",
        sim.base_url()
    ));
    std::fs::write(install.tmp.path().join("wa.token"), "an-expired-token\n").unwrap();
    let d = Daemon::start_in(install).await;
    let item = WaItem {
        patient: None,
        recipient: Some(Recipient::phone("+4915550029").unwrap()),
        message: message::text("ZZ status").unwrap(),
        reference: None,
    };
    outbox::enqueue(&d.running.vault, item, t0(), None)
        .await
        .unwrap();
    let handle = d.running.whatsapp.clone().unwrap();
    within(handle.wait_paused(true)).await;
    let (_, s) = d.api("GET", "/v1/status", None).await;
    assert_eq!(s["whatsapp_mode"], "live", "{s}");
    assert_eq!(s["whatsapp"]["paused"], true);
    assert_eq!(s["whatsapp"]["outbox_depth"], 1);
    assert_eq!(s["healthy"], false);
    assert!(
        s["warnings"].to_string().contains("whatsapp.token_file"),
        "{s}"
    );
    d.stop().await;
}

/// Issue 9 item 6: a free-form message to a patient outside Meta's 24-hour
/// customer-service window is refused at enqueue with a clear error (Meta
/// would refuse it with 131047 after the queue); a template always goes.
/// The window opens with the patient's inbound message (through the real
/// webhook apply path) and closes 24 hours later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_form_messages_need_the_24_hour_window_templates_do_not() {
    use clinic_relay::vault::Txn;
    use clinic_relay::webhook::{apply, payload::Notification};
    let s = Setup::new();
    let p = marker_patient(&s.vault, "71");
    tokio::task::block_in_place(|| s.vault.put_patient(&p, "test", t0())).unwrap();
    let phone = p.phone.clone().unwrap();
    let item = |msg: message::OutMessage| WaItem {
        patient: Some(p.id),
        recipient: Some(Recipient::phone(&phone).unwrap()),
        message: msg,
        reference: None,
    };
    let text = || message::text("ZZ free form").unwrap();
    let template = || {
        message::template(&TemplateSpec {
            name: "appointment_reminder",
            language: "de",
            header: None,
            body: Params::Positional(vec!["Mo", "9:00"]),
            quick_replies: vec![],
        })
        .unwrap()
    };

    let refused = outbox::enqueue(&s.vault, item(text()), t0(), None).await;
    let err = refused.expect_err("no inbound message yet").to_string();
    assert!(err.contains("24-hour") && err.contains("template"), "{err}");
    outbox::enqueue(&s.vault, item(template()), t0(), None)
        .await
        .expect("a template is always allowed");

    // The patient writes to us: the window opens.
    let inbound: Notification = serde_json::from_value(serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "ZZWABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "messages": [{"from": phone.trim_start_matches('+'), "id": "wamid.WIN1",
                          "timestamp": t0().as_second().to_string(), "type": "text",
                          "text": {"body": "ZZ hello"}}]
        }}]}]
    }))
    .unwrap();
    let batch = apply::Batch::from_notification(inbound);
    s.vault
        .write(move |v| {
            let mut txn = Txn::new(t0());
            apply::stage(v, &mut txn, &batch, t0())?;
            Ok::<_, clinic_relay::vault::VaultError>((txn, ()))
        })
        .await
        .unwrap();
    assert_eq!(s.vault.wa_last_inbound(p.id).unwrap(), Some(t0()));
    let later = t0() + SignedDuration::from_hours(23);
    outbox::enqueue(&s.vault, item(text()), later, None)
        .await
        .expect("inside the window");
    let closed = t0() + SignedDuration::from_hours(25);
    let err = outbox::enqueue(&s.vault, item(text()), closed, None)
        .await
        .expect_err("the window closed")
        .to_string();
    assert!(err.contains("25 h ago"), "{err}");
    assert_eq!(s.vault.count(Tree::WaOutbox), 2);
}

/// End to end through real sockets in both directions (issue 9): the daemon
/// sends through the simulator, and the simulator delivers the status
/// lifecycle back to the daemon's webhook the way Meta does, signed over
/// `\uXXXX`-escaped JSON, shuffled, every update twice, four to a call.
/// Every message ends in `read`, whatever the order of arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_lifecycle_from_the_simulator_ends_in_the_right_state() {
    use crate::pms_support::Daemon;
    use clinic_relay::webhook::payload::StatusKind;
    use graph_sim::webhooks::{deliver, Delivery};
    const SECRET: &str = "lifecycle-app-secret";
    let sim = Sim::start().await.unwrap();
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\n\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
        sim.base_url()
    ));
    install.wa_secrets(SECRET);
    let d = Daemon::start_in(install).await;
    for (i, to) in ["+4915550031", "+4915550032", "+4915550031", "+4915550033"]
        .iter()
        .enumerate()
    {
        let item = WaItem {
            patient: None,
            recipient: Some(Recipient::phone(to).unwrap()),
            message: message::text(&format!("ZZ lifecycle {i} – ü/😀")).unwrap(),
            reference: None,
        };
        outbox::enqueue(&d.running.vault, item, t0(), None)
            .await
            .unwrap();
    }
    let handle = d.running.whatsapp.clone().unwrap();
    within(handle.processed_at_least(4)).await;
    let wamids = sim.accepted_wamids();
    assert_eq!(wamids.len(), 4);

    let delivery = Delivery {
        url: format!("http://{}/webhook", d.running.webhook_addr.unwrap()),
        app_secret: SECRET.to_owned(),
        shuffle: Some(0x5eed),
        duplicate: true,
        per_call: 4,
    };
    let statuses = deliver(&sim.status_updates(t0().as_second() as u64), &delivery)
        .await
        .expect("the webhook calls are delivered");
    assert_eq!(statuses.len(), 6, "24 updates, 4 to a call");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for wamid in &wamids {
        let record = d.running.vault.wa_status(wamid).unwrap().expect(wamid);
        assert_eq!(record.state, StatusKind::Read, "{wamid}");
    }
    d.stop().await;
}
