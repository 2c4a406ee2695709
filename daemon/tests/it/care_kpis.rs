//! KPIs end to end (issue 10, item 6), through real sockets and a manual
//! clock: reminders fired to the simulator, delivered / read statuses and a
//! Confirm and a Cancel tap as signed webhooks (one status posted twice), a
//! STOP, two no-shows (S26) → `GET /metrics` parses with a Prometheus
//! text-format parser and its counters match what the simulator received;
//! `GET /v1/kpis` gives the same numbers; a restart keeps them.

use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{meta_json, sign};
use clinic_relay::model::PatientId;
use graph_sim::{Sim, Template};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use std::collections::HashMap;
use std::time::Duration;

const SECRET: &str = "kpi-app-secret";
/// The patient's number as the SIU's PID-13 writes it (national, DE).
const WA_ID: &str = "4915155501234";

async fn daemon(sim: &Sim) -> Daemon {
    daemon_with(sim, "").await
}

/// [`daemon`] with `extra` config appended (e.g. a `[reminders]` section).
async fn daemon_with(sim: &Sim, extra: &str) -> Daemon {
    let install = TestInstall::new(&format!(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\nphone_region = \"DE\"\n\n\
         [whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\n\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n{extra}",
        sim.base_url()
    ));
    install.wa_secrets(SECRET);
    Daemon::start_in(install).await
}

fn siu(kind: &str, control_id: &str, appt: &str, start: &str) -> String {
    siu_s12_v25(control_id, appt, "KPI001", start).replace("SIU^S12^SIU_S12", kind)
}

async fn post_signed(d: &Daemon, body: Vec<u8>) -> u16 {
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

fn button_tap(wamid: &str, payload: &str) -> Vec<u8> {
    meta_json(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "ZZ"}, "wa_id": WA_ID}],
            "messages": [{"from": WA_ID, "id": wamid, "timestamp": "1800400000", "type": "button",
                          "button": {"payload": payload, "text": "ZZ"}}]
        }}]}]
    }))
}

/// The reminders the simulator accepted: (wamid, quick-reply payloads).
fn reminders(sim: &Sim) -> Vec<(String, Vec<String>)> {
    let sent = sim.sent_messages();
    let wamids = sim.accepted_wamids();
    assert_eq!(sent.len(), wamids.len());
    sent.iter()
        .zip(wamids)
        .filter(|(m, _)| m["type"] == "template")
        .map(|(m, w)| {
            let payloads = m["template"]["components"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["sub_type"] == "quick_reply")
                .map(|c| c["parameters"][0]["payload"].as_str().unwrap().to_owned())
                .collect();
            (w, payloads)
        })
        .collect()
}

/// `GET /metrics`: (content type, body).
async fn metrics(d: &Daemon) -> (String, String) {
    let stream = tokio::net::UnixStream::connect(&d.running.api_socket)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/metrics")
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (ct, String::from_utf8(body.to_vec()).unwrap())
}

/// Every sample of the exposition, parsed by `prometheus-parse`, by metric
/// name and its labels (`k=v` joined by `,`, sorted).
fn scrape(text: &str) -> HashMap<String, prometheus_parse::Value> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        assert!(out.insert(key, s.value).is_none(), "{}", s.metric);
    }
    out
}

fn num(samples: &HashMap<String, prometheus_parse::Value>, key: &str) -> f64 {
    match samples.get(key) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

async fn at(d: &Daemon, at: Timestamp) {
    d.clock.set(at);
    tokio::time::timeout(Duration::from_secs(20), d.running.care.looked_at(at))
        .await
        .expect("scheduler looked");
    d.running.whatsapp.as_ref().unwrap().kick();
}

/// What the run below leads to, checked on `/metrics` and `/v1/kpis`.
async fn check(d: &Daemon, reminders_at_sim: usize) {
    let (ct, text) = metrics(d).await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(
        !text.contains("KPI001") && !text.contains("APPT-K"),
        "{text}"
    );
    let m = scrape(&text);
    assert_eq!(
        num(&m, "clinic_relay_reminders_sent_total"),
        reminders_at_sim as f64
    );
    assert_eq!(num(&m, "clinic_relay_reminders_delivered_total"), 3.0);
    assert_eq!(num(&m, "clinic_relay_reminders_read_total"), 2.0);
    assert_eq!(num(&m, "clinic_relay_reminders_confirmed_total"), 1.0);
    assert_eq!(num(&m, "clinic_relay_reminders_cancelled_total"), 1.0);
    assert_eq!(num(&m, "clinic_relay_reminders_rescheduled_total"), 0.0);
    assert_eq!(num(&m, "clinic_relay_opt_outs_total"), 1.0);
    let visits = |outcome: &str, confirmed: &str| {
        num(
            &m,
            &format!(
                "clinic_relay_visits_total{{confirmed_reminder={confirmed},outcome={outcome}}}"
            ),
        )
    };
    assert_eq!(visits("no_show", "true"), 1.0);
    assert_eq!(visits("no_show", "false"), 1.0);
    assert_eq!(visits("fulfilled", "true"), 0.0);
    assert_eq!(
        num(&m, "clinic_relay_no_show_ratio{confirmed_reminder=true}"),
        1.0
    );
    match &m["clinic_relay_reminder_answer_delay_seconds"] {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, 2.0);
            // Both answers came 5 and 10 minutes after the reminder.
            let le_15min = buckets.iter().find(|b| b.less_than == 900.0).unwrap();
            assert_eq!(le_15min.count, 2.0);
        }
        other => panic!("{other:?}"),
    }

    let (status, k) = d
        .api("GET", "/v1/kpis?from=2027-01-01&to=2027-01-31", None)
        .await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(k["from"], "2027-01-01");
    assert_eq!(k["reminders"]["sent"], reminders_at_sim);
    assert_eq!(k["reminders"]["delivered"], 3);
    assert_eq!(k["reminders"]["read"], 2);
    assert_eq!(k["reminders"]["confirmed"], 1);
    assert_eq!(k["reminders"]["cancelled"], 1);
    assert_eq!(k["opt_outs"], 1);
    assert_eq!(k["visits"]["with_confirmed_reminder"]["no_shows"], 1);
    assert_eq!(k["visits"]["with_confirmed_reminder"]["no_show_rate"], 1.0);
    assert_eq!(k["visits"]["without_confirmed_reminder"]["no_shows"], 1);
    assert_eq!(k["answer_delay_seconds"]["count"], 2);
    assert_eq!(k["answer_delay_seconds"]["median"], 450.0);
    // Days before: nothing.
    let (status, k) = d
        .api("GET", "/v1/kpis?from=2026-12-01&to=2026-12-31", None)
        .await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(k["reminders"]["sent"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_kpis_match_what_the_simulator_received_and_survive_a_restart() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let d = daemon(&sim).await;
    let mut c = d.mllp().await;
    // Three visits on Wed 20 January 2027 (Berlin): their 72 h reminders
    // are due Sun 17th 10:00.
    for (id, appt, start) in [
        ("K1", "APPT-K1", "202701201000"),
        ("K2", "APPT-K2", "202701201000"),
        ("K3", "APPT-K3", "202701201000"),
    ] {
        let ack = c.send(&siu("SIU^S12^SIU_S12", id, appt, start)).await;
        assert_eq!(msa(&ack).0, "AA");
    }
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "KPI001").unwrap()[0];
    crate::care_reminders::opt_in(&d, patient).await;
    let due: Timestamp = "2027-01-17T09:00:00Z".parse().unwrap();
    at(&d, due).await;
    let sent = until("three reminders at the simulator", || {
        let r = reminders(&sim);
        (r.len() == 3).then_some(r)
    })
    .await;
    until("the sends recorded", || {
        let s = clinic_relay::kpi::read::total(&d.running.vault).unwrap();
        (s.get(clinic_relay::kpi::Kpi::Sent) == 3).then_some(())
    })
    .await;

    // Delivered: all three; read: two, one of them posted twice (a retry).
    for (wamid, _) in &sent {
        let body = crate::webhook::statuses_body(wamid, "delivered");
        assert_eq!(post_signed(&d, body).await, 200);
    }
    for (wamid, _) in [&sent[0], &sent[1], &sent[1]] {
        let body = crate::webhook::statuses_body(wamid, "read");
        assert_eq!(post_signed(&d, body).await, 200);
    }
    // Which reminder is which visit does not matter: one Confirm, one
    // Cancel, 5 and 10 minutes after the reminders.
    d.clock.set(due + jiff::SignedDuration::from_mins(5));
    assert_eq!(
        post_signed(&d, button_tap("wamid.KTAP1", &sent[0].1[0])).await,
        200
    );
    d.clock.set(due + jiff::SignedDuration::from_mins(10));
    assert_eq!(
        post_signed(&d, button_tap("wamid.KTAP2", &sent[1].1[1])).await,
        200
    );
    let text = |wamid: &str, body: &str| crate::webhook::text_message(wamid, WA_ID, "ZZ", body);
    assert_eq!(post_signed(&d, text("wamid.KSTOP", "STOP")).await, 200);
    // The confirmed one and the untouched one are no-shows (S26); the
    // cancelled one's workflow is closed, its S26 counts nothing.
    let confirmed =
        crate::webhook::events(&d, clinic_relay::model::EventKind::AppointmentConfirmed);
    let confirmed_appt = confirmed[0].appointment.clone().unwrap();
    let cancelled =
        crate::webhook::events(&d, clinic_relay::model::EventKind::AppointmentCancelled);
    let cancelled_appt = cancelled[0].appointment.clone().unwrap();
    for (i, appt) in ["APPT-K1", "APPT-K2", "APPT-K3"].into_iter().enumerate() {
        let ack = c
            .send(&siu(
                "SIU^S26^SIU_S12",
                &format!("N{i}"),
                appt,
                "202701201000",
            ))
            .await;
        assert_eq!(msa(&ack).0, "AA");
    }
    assert_ne!(confirmed_appt, cancelled_appt);

    d.running.whatsapp.as_ref().unwrap().kick();
    let reminders_at_sim = reminders(&sim).len();
    assert_eq!(reminders_at_sim, 3);
    check(&d, reminders_at_sim).await;

    // A bad range is a clear 422.
    for q in [
        "from=2027-02-01&to=2027-01-01",
        "from=2027-13-01&to=2027-12-31",
        "from=27-01-01",
        "from=2026-01-01&to=2027-01-31",
    ] {
        let (status, p) = d.api("GET", &format!("/v1/kpis?{q}"), None).await;
        assert_eq!(status, 422, "{q}: {p}");
        assert!(p["detail"].as_str().unwrap().contains("from"), "{p}");
    }

    // A restart keeps them.
    let install = d.stop().await;
    let d = Daemon::start_in(install).await;
    check(&d, reminders_at_sim).await;
    d.stop().await;
}

/// What `/metrics` costs when the vault holds a year of a busy clinic's
/// entries, scaled down: 100,000 reminders sent, delivered and read (300,000
/// entries). Run it by hand:
/// `cargo test --release --test it care_kpis::sum_300k -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn sum_300k_kpi_entries() {
    use clinic_relay::kpi::{self, Kpi};
    use clinic_relay::webhook::payload::StatusKind;
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("data"), &key(3));
    let day0: Timestamp = "2027-01-01T09:00:00Z".parse().unwrap();
    for chunk in 0..N / 5_000 {
        vault
            .write(move |v| {
                let mut txn = clinic_relay::vault::Txn::new(day0);
                for i in chunk * 5_000..(chunk + 1) * 5_000 {
                    let now = day0 + jiff::SignedDuration::from_hours((i / 300) as i64);
                    let wamid = format!("wamid.PERF{i:08}");
                    let reference = format!("reminder:{:012x}:0", i);
                    kpi::on_sent(v, &mut txn, Some(&reference), &wamid, false, now)?;
                }
                Ok::<_, clinic_relay::vault::VaultError>((txn, ()))
            })
            .await
            .unwrap();
        vault
            .write(move |v| {
                let mut txn = clinic_relay::vault::Txn::new(day0);
                for i in chunk * 5_000..(chunk + 1) * 5_000 {
                    let now = day0 + jiff::SignedDuration::from_hours((i / 300) as i64);
                    let wamid = format!("wamid.PERF{i:08}");
                    kpi::on_status(v, &mut txn, &wamid, StatusKind::Read, 0, false, now)?;
                }
                Ok::<_, clinic_relay::vault::VaultError>((txn, ()))
            })
            .await
            .unwrap();
    }
    #[allow(clippy::disallowed_methods)] // a measurement of elapsed wall time
    let began = std::time::Instant::now();
    let s = kpi::read::total(&vault).unwrap();
    let text = kpi::prom::encode(&s, kpi::prom::Gauges::default());
    let took = began.elapsed();
    assert_eq!(s.get(Kpi::Sent), N as u64);
    assert_eq!(s.get(Kpi::Read), N as u64);
    assert!(text.contains(&format!("clinic_relay_reminders_delivered_total {N}\n")));
    #[allow(clippy::disallowed_methods)]
    let began = std::time::Instant::now();
    let month = kpi::read::summary(&vault, 20270101, 20270131).unwrap();
    let took_month = began.elapsed();
    println!(
        "summed {} entries for /metrics in {took:?}; January ({} sent) in {took_month:?}",
        3 * N,
        month.get(Kpi::Sent)
    );
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booked_visit_never_reported_attended_counts_as_a_no_show_once() {
    let sim = Sim::start().await.unwrap();
    let d = daemon_with(&sim, "\n[reminders]\nunattended_after = \"24h\"\n").await;
    let mut c = d.mllp().await;
    // Two visits Wed 20 January 2027 10:00 Berlin (09:00 UTC); the PMS
    // reports the second one complete, never the first.
    for (id, appt) in [("U1", "APPT-U1"), ("U2", "APPT-U2")] {
        let ack = c
            .send(&siu("SIU^S12^SIU_S12", id, appt, "202701201000"))
            .await;
        assert_eq!(msa(&ack).0, "AA");
    }
    let visits = |m: &HashMap<String, prometheus_parse::Value>, outcome: &str| {
        num(
            m,
            &format!("clinic_relay_visits_total{{confirmed_reminder=false,outcome={outcome}}}"),
        )
    };
    at(&d, "2027-01-20T10:00:00Z".parse().unwrap()).await;
    let done =
        siu("SIU^S14^SIU_S12", "U2-done", "APPT-U2", "202701201000").replace("Booked", "Complete");
    assert_eq!(msa(&c.send(&done).await).0, "AA");
    // A second short of a day after the start: not yet.
    at(&d, "2027-01-21T08:59:59Z".parse().unwrap()).await;
    let m = scrape(&metrics(&d).await.1);
    assert_eq!((visits(&m, "no_show"), visits(&m, "fulfilled")), (0.0, 1.0));
    at(&d, "2027-01-21T09:00:00Z".parse().unwrap()).await;
    until("the unattended visit counted", || {
        let s = clinic_relay::kpi::read::total(&d.running.vault).unwrap();
        (s.get(clinic_relay::kpi::Kpi::NoShowUnconfirmed) == 1).then_some(())
    })
    .await;
    let m = scrape(&metrics(&d).await.1);
    assert_eq!((visits(&m, "no_show"), visits(&m, "fulfilled")), (1.0, 1.0));
    // The PMS reports it late after all: the visit is not counted twice.
    let late =
        siu("SIU^S14^SIU_S12", "U1-late", "APPT-U1", "202701201000").replace("Booked", "Complete");
    assert_eq!(msa(&c.send(&late).await).0, "AA");
    let m = scrape(&metrics(&d).await.1);
    assert_eq!((visits(&m, "no_show"), visits(&m, "fulfilled")), (1.0, 1.0));
    d.stop().await;
}
