//! Back to the PMS over real MLLP: a test PMS peer receives the SRM/SIU/ADT
//! messages; while it is down they wait (across a restart) and then arrive
//! in order; an AE reply dead-letters the message with an event.

use crate::pms_support::*;
use clinic_relay::pms::hl7::{self, AckCode, AckError};
use clinic_relay::pms::mllp;
use clinic_relay::pms::outbound::{self, PatientAction};
use clinic_relay::vault::Tree;
use std::sync::{Arc, Mutex};
use tokio::io::BufReader;
use tokio::net::TcpListener;

/// A PMS that records what it gets and answers AA, or AE for message types
/// listed in `refuse`.
struct PmsPeer {
    received: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PmsPeer {
    async fn start(addr: std::net::SocketAddr, refuse: &'static [&'static str]) -> PmsPeer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let (r, mut w) = tokio::io::split(stream);
                    let mut r = BufReader::new(r);
                    while let Ok(Some(mllp::Incoming::Message(bytes))) =
                        mllp::read_frame(&mut r, 1 << 20).await
                    {
                        let msg = hl7::parse(&bytes).unwrap();
                        let t = msg.message_type().unwrap();
                        let kind = format!("{}^{}", t.code, t.trigger);
                        log.lock().unwrap().push(kind.clone());
                        let (code, err) = if refuse.contains(&kind.as_str()) {
                            (
                                AckCode::Error,
                                Some(AckError::new(204, "unknown appointment at the PMS")),
                            )
                        } else {
                            (AckCode::Accept, None)
                        };
                        let ack = hl7::ack(
                            &msg,
                            code,
                            err.as_ref(),
                            crate::support::t0(),
                            "ZZPMS",
                            "ZZCLINIC",
                            "P1",
                        );
                        mllp::write_frame(&mut w, &ack).await.unwrap();
                    }
                });
            }
        });
        PmsPeer { received, task }
    }
}

async fn free_addr() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn seed(d: &Daemon) -> clinic_relay::model::PatientId {
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("O1", "APPT-O1", "002000", "202612011000"))
            .await)
        .0,
        "AA"
    );
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("O2", "APPT-O2", "002000", "202612021000"))
            .await)
        .0,
        "AA"
    );
    d.running.vault.find_patients_by_mrn("", "002000").unwrap()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_the_pms_across_a_restart_and_arrive_in_order() {
    let addr = free_addr().await;
    let d = Daemon::start(&format!("[pms]\nmllp_listen = \"127.0.0.1:0\"\noutbound_endpoint = \"{addr}\"\noutbound_timeout = \"5s\"\n")).await;
    let patient = seed(&d).await;
    let cfg = d.running.outbound.clone();
    let now = crate::support::t0();
    for action in [
        PatientAction::Confirm {
            appointment: "APPT-O1".into(),
        },
        PatientAction::Cancel {
            appointment: "APPT-O2".into(),
        },
        PatientAction::OptOut { patient },
    ] {
        outbound::record(&d.running.vault, &cfg, &action, "test", now)
            .await
            .unwrap();
    }
    assert_eq!(d.running.vault.count(Tree::PmsOutbox), 3);
    assert!(
        d.running
            .vault
            .get_appointment("APPT-O1")
            .unwrap()
            .unwrap()
            .patient_confirmed
    );
    let (_, feed) = d.api("GET", "/v1/events?after=0", None).await;
    let kinds: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "appointment-confirmed",
            "appointment-cancelled",
            "opted-out"
        ]
    );

    // Restart while the PMS is still down: nothing is lost.
    let install = d.stop().await;
    let d = Daemon::start_in(install).await;
    assert_eq!(d.running.vault.count(Tree::PmsOutbox), 3);

    let peer = PmsPeer::start(addr, &[]).await;
    let sender = d.running.pms_sender.clone().unwrap();
    sender.kick();
    sender.processed_at_least(3).await;
    assert_eq!(
        *peer.received.lock().unwrap(),
        ["SIU^S14", "SRM^S04", "ADT^A31"]
    );
    assert_eq!(d.running.vault.count(Tree::PmsOutbox), 0);
    peer.task.abort();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ae_reply_dead_letters_the_message_with_an_event() {
    let addr = free_addr().await;
    let peer = PmsPeer::start(addr, &["SRM^S04"]).await;
    let d = Daemon::start(&format!(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\noutbound_endpoint = \"{addr}\"\n"
    ))
    .await;
    seed(&d).await;
    let cfg = d.running.outbound.clone();
    let now = crate::support::t0();
    outbound::record(
        &d.running.vault,
        &cfg,
        &PatientAction::Cancel {
            appointment: "APPT-O1".into(),
        },
        "test",
        now,
    )
    .await
    .unwrap();
    outbound::record(
        &d.running.vault,
        &cfg,
        &PatientAction::Confirm {
            appointment: "APPT-O2".into(),
        },
        "test",
        now,
    )
    .await
    .unwrap();
    d.running
        .pms_sender
        .clone()
        .unwrap()
        .processed_at_least(2)
        .await;
    assert_eq!(*peer.received.lock().unwrap(), ["SRM^S04", "SIU^S14"]);
    assert_eq!(d.running.vault.count(Tree::PmsOutbox), 0);
    assert_eq!(d.running.vault.count(Tree::PmsDeadLetters), 1);
    // The sender may refuse the first message before the second action is
    // recorded, so the rejection's place in the feed varies: look it up.
    let (_, feed) = d.api("GET", "/v1/events?after=0", None).await;
    let events = feed["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    let rejected: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "pms-message-rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["details"]["message"], "SRM^S04");
    peer.task.abort();
    d.stop().await;
}

#[test]
fn outbound_messages_have_the_documented_shape() {
    use clinic_relay::model::{Appointment, AppointmentStatus, Patient, PatientId};
    let cfg = clinic_relay::config::Config::from_toml("", std::path::Path::new("/x.toml"))
        .unwrap()
        .pms
        .outbound;
    let p = Patient {
        id: PatientId([1; 16]),
        mrn: "000123".into(),
        family_name: "ZZTEST|PIPE".into(),
        given_name: "ANN".into(),
        birth_date: None,
        phone: None,
        language: None,
        deceased: false,
        protected: false,
    };
    let a = Appointment {
        id: "APPT-9".into(),
        patient: p.id,
        start: crate::support::t0(),
        duration_minutes: 30,
        status: AppointmentStatus::Booked,
        pms_status: None,
        provider: None,
        location: None,
        patient_confirmed: true,
    };
    let (kind, bytes) = outbound::build_message(
        &cfg,
        &PatientAction::Confirm {
            appointment: a.id.clone(),
        },
        &p,
        Some(&a),
        None,
        "CRO1",
        crate::support::t0(),
    )
    .unwrap();
    assert_eq!(kind, "SIU^S14");
    let msg = hl7::parse(&bytes).unwrap();
    assert_eq!(
        msg.segment("SCH").unwrap().component(25, 1),
        Some("Confirmed")
    );
    assert_eq!(msg.segment("SCH").unwrap().component(2, 1), Some("APPT-9"));
    assert_eq!(
        msg.segment("PID").unwrap().component(5, 1),
        Some("ZZTEST|PIPE"),
        "values are escaped on the wire"
    );
    assert_eq!(msg.control_id(), Some("CRO1"));
    let ids: Vec<&str> = msg.segments().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["MSH", "SCH", "PID", "RGS"], "SIU_S12 structure");
    let (_, opt_out) = outbound::build_message(
        &cfg,
        &PatientAction::OptOut { patient: p.id },
        &p,
        None,
        None,
        "CRO2",
        crate::support::t0(),
    )
    .unwrap();
    let ids: Vec<String> = hl7::parse(&opt_out)
        .unwrap()
        .segments()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(
        ids,
        ["MSH", "EVN", "PID", "PV1", "ZCN"],
        "ADT_A05 structure with the consent segment"
    );
}
