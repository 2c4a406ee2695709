//! The consent ledger (issue 10): opt-in / opt-out from each source through
//! its real interface — the PMS field over MLLP, a chat keyword in a signed
//! webhook, staff through the API — each recorded with source, time and
//! actor, exported by `GET /v1/patients/{id}/consent/history`, and erased
//! with the patient. A staff change goes to the PMS and the feed like a
//! keyword does.

use crate::care_reminders::{booked, button_tap, daemon, pms_got, pms_peer, post_signed, WA_ID};
use crate::pms_support::*;
use crate::support::until;
use crate::support::{assert_sim_saw_none, FORBIDDEN_MARKERS};
use clinic_relay::model::EventKind;
use clinic_relay::vault::Tree;
use graph_sim::{Sim, Template};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consent_source_lands_in_the_ledger_and_the_ledger_goes_with_the_patient() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    let patient = booked(&d, "APPT-L1", "202701201000", false).await;
    let a31 = || {
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == "ADT^A31")
            .count()
    };

    // (a) The PMS's consent field (ZCN-2) opts in.
    let mut c = d.mllp().await;
    let adt = format!(
        "{}\rZCN|WHATSAPP|Y",
        adt_a04("L-A04", "CARE001", "ZZFAMILY", "")
    );
    assert_eq!(msa(&c.send(&adt).await).0, "AA");
    // (b) The patient sends STOP.
    let stop = crate::webhook::text_message("wamid.L1", WA_ID, "ZZ", "STOP");
    assert_eq!(post_signed(&d, stop).await, 200);
    until("ADT^A31 for the keyword", || (a31() == 1).then_some(())).await;
    // (c) Staff record an opt-in through the API.
    let hex_id = hex::encode(patient.0);
    let path = format!("/v1/patients/{hex_id}/consent");
    let (status, body) = d
        .api("PUT", &path, Some(serde_json::json!({"state": "opted-in"})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "staff");
    until("ADT^A31 for the staff change", || {
        (a31() == 2).then_some(())
    })
    .await;
    assert_eq!(crate::webhook::events(&d, EventKind::OptedOut).len(), 1);
    let opted_in = crate::webhook::events(&d, EventKind::OptedIn);
    assert_eq!(opted_in.len(), 1);
    assert_eq!(opted_in[0].patient, Some(patient));
    // The same state again is recorded, not sent again.
    let (status, _) = d
        .api("PUT", &path, Some(serde_json::json!({"state": "opted-in"})))
        .await;
    assert_eq!(status, 200);

    let (status, h) = d.api("GET", &format!("{path}/history"), None).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["patient"], hex_id);
    let entries = h["entries"].as_array().unwrap();
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["state"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("opted-in", "pms"),
            ("opted-out", "chat"),
            ("opted-in", "staff"),
            ("opted-in", "staff"),
        ]
    );
    assert!(entries[0]["actor"].as_str().unwrap().starts_with("pms:"));
    assert_eq!(entries[1]["actor"], "patient");
    assert!(
        entries[2]["actor"]
            .as_str()
            .unwrap()
            .starts_with("api:uid="),
        "{}",
        entries[2]
    );
    assert!(entries.iter().all(|e| e["at"].is_string()));
    assert_eq!(a31(), 2);
    let (status, _) = d.api("GET", "/v1/patients/00/consent/history", None).await;
    assert_eq!(status, 404);

    // Staff record an opt-out: it counts on the KPIs like the chat's STOP
    // (a minute later: one patient's opt-outs are told apart by their time).
    d.clock.advance(jiff::SignedDuration::from_mins(1));
    let (status, _) = d
        .api(
            "PUT",
            &path,
            Some(serde_json::json!({"state": "opted-out"})),
        )
        .await;
    assert_eq!(status, 200);
    let kpis = clinic_relay::kpi::read::total(&d.running.vault).unwrap();
    assert_eq!(kpis.get(clinic_relay::kpi::Kpi::OptOut), 2);

    // Erased with the patient: nothing of the ledger is left.
    let (status, _) = d
        .api("DELETE", &format!("/v1/patients/{hex_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = d.api("GET", &format!("{path}/history"), None).await;
    assert_eq!(status, 404);
    assert_eq!(d.running.vault.count(Tree::Consents), 0);
    let install = d.stop().await;
    let audited = install
        .open()
        .audit_entries(1)
        .filter_map(|(_, e)| e.ok())
        .filter(|e| e.action == "consent.read")
        .count();
    // The export is a read of PHI: audited.
    assert_eq!(audited, 1);
}

/// Opt-out by button: a quick-reply payload `cr1:o:` is handled like STOP
/// (consent, ledger, ADT^A31, feed, one confirmation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_button_is_handled_like_stop() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, received) = pms_peer().await;
    let d = daemon(&sim, pms).await;
    let patient = booked(&d, "APPT-B1", "202701201000", true).await;
    assert_eq!(post_signed(&d, button_tap("wamid.B1", "cr1:o:")).await, 200);
    assert_eq!(post_signed(&d, button_tap("wamid.B2", "cr1:o:")).await, 200);
    pms_got(&received, "ADT^A31").await;
    assert_eq!(crate::webhook::events(&d, EventKind::OptedOut).len(), 1);
    let consent = d.running.vault.get_consent(patient).unwrap().unwrap();
    assert_eq!(consent.state, clinic_relay::model::ConsentState::OptedOut);
    let h = clinic_relay::care::ledger::history(&d.running.vault, patient).unwrap();
    assert_eq!(
        h.last().map(|e| (e.source, e.actor.as_str())),
        Some((clinic_relay::model::ConsentSource::Chat, "patient"))
    );
    d.running.whatsapp.as_ref().unwrap().kick();
    until("one confirmation", || {
        let n = sim
            .sent_messages()
            .iter()
            .filter(|m| m["type"] == "text")
            .count();
        (n == 1).then_some(())
    })
    .await;
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
    d.stop().await;
}

/// A merge moves the merged patient's ledger to the survivor; erasing the
/// survivor then leaves nothing of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_moves_the_ledger_to_the_survivor() {
    use clinic_relay::commands::{self, Command, Origin};
    use clinic_relay::model::{ConsentSource, ConsentState};
    let dir = tempfile::tempdir().unwrap();
    let vault = crate::support::open(&dir.path().join("data"), &crate::support::key(3));
    let merged = crate::support::marker_patient(&vault, "LM1");
    let survivor = crate::support::marker_patient(&vault, "LM2");
    let (m, s) = (merged.id, survivor.id);
    let set = |patient, state| Command::SetConsent {
        patient,
        state,
        source: ConsentSource::Pms,
    };
    commands::apply(
        &vault,
        vec![
            Command::UpsertPatient(Box::new(merged)),
            Command::UpsertPatient(Box::new(survivor)),
            set(m, ConsentState::OptedIn),
        ],
        Origin::new("pms:ZZPMS|ZZCLINIC"),
        crate::support::t0(),
    )
    .await
    .unwrap();
    commands::apply(
        &vault,
        vec![
            set(s, ConsentState::OptedOut),
            Command::MergePatients {
                survivor: s,
                merged: m,
            },
        ],
        Origin::new("pms:ZZPMS|ZZCLINIC"),
        crate::support::t0() + jiff::SignedDuration::from_secs(60),
    )
    .await
    .unwrap();
    let h = clinic_relay::care::ledger::history(&vault, s).unwrap();
    let states: Vec<_> = h.iter().map(|e| e.state).collect();
    assert_eq!(states, [ConsentState::OptedIn, ConsentState::OptedOut]);
    assert!(h.iter().all(|e| e.actor == "pms:ZZPMS|ZZCLINIC"));
    assert!(clinic_relay::care::ledger::history(&vault, m)
        .unwrap()
        .is_empty());
    vault
        .erase_patient_async(s, "test", crate::support::t0())
        .await
        .unwrap();
    assert_eq!(vault.count(Tree::Consents), 0);
}
