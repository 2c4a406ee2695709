//! Sends cut off mid-flight (`whatsapp::in_doubt`), on a manual clock: a
//! message marked in flight when the daemon starts waits for its status
//! webhook; a status echoing its callback data records it as sent (never
//! sent again), and one no status names goes out once the hold is over.

use crate::care_reminders::{daemon_with, pms_peer};
use crate::support::*;
use crate::webhook::sign;
use clinic_relay::queue;
use clinic_relay::vault::Tree;
use clinic_relay::whatsapp::in_doubt;
use clinic_relay::whatsapp::message::{self, Recipient};
use clinic_relay::whatsapp::outbox::{self, WaItem, WA_OUTBOX};
use graph_sim::webhooks::{meta_json, status_with_callback};
use graph_sim::Sim;
use jiff::SignedDuration;
use std::collections::HashSet;

fn text_to(to: &str, body: &str) -> WaItem {
    WaItem {
        patient: None,
        recipient: Some(Recipient::phone(to).unwrap()),
        message: message::text(body).unwrap(),
        reference: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_send_waits_for_its_status_and_is_never_sent_twice() {
    let sim = Sim::start().await.unwrap();
    let (pms, _) = pms_peer().await;
    // Two messages were out when the daemon died: marked, never settled.
    let d = daemon_with(&sim, pms, "in_doubt_hold = \"15m\"\n", "").await;
    let install = d.stop().await;
    let vault = install.open();
    let queued_at = t0() - SignedDuration::from_mins(5);
    for (to, body) in [
        ("+4915155500001", "reached Meta"),
        ("+4915155500002", "lost"),
    ] {
        outbox::enqueue(&vault, text_to(to, body), queued_at, None)
            .await
            .unwrap();
    }
    let taken = vault
        .write(|v| {
            queue::take_batch_held::<WaItem>(
                v,
                &WA_OUTBOX,
                t0(),
                false,
                &HashSet::new(),
                8,
                SignedDuration::ZERO,
            )
        })
        .await
        .unwrap()
        .value;
    let seqs: Vec<u64> = taken.items.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs.len(), 2);
    vault.close().unwrap();

    let d = crate::pms_support::Daemon::start_in(install).await;
    let wa = d.running.whatsapp.clone().unwrap();
    // In doubt: nothing goes out, even on an operator's "retry now".
    d.clock.set(t0() + SignedDuration::from_mins(14));
    wa.kick();
    sim.wait_for(std::time::Duration::from_millis(300), |r| !r.is_empty())
        .await;
    assert!(sim.sent_messages().is_empty());

    // Meta's status for the first names it: recorded as sent, with its wamid.
    let status = status_with_callback(
        "wamid.CUTOFF1",
        "delivered",
        "4915155500001",
        Some(&in_doubt::callback_data(seqs[0])),
        1_800_000_000,
    );
    let body = meta_json(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": status}]}]
    }));
    let (code, _) = crate::webhook::http(
        d.running.webhook_addr.unwrap(),
        "POST",
        "/webhook",
        body.clone(),
        &[
            ("content-type", "application/json".to_owned()),
            ("x-hub-signature-256", sign("care-app-secret", &body)),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let sent = outbox::sent(&d.running.vault).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].outbox_seq, seqs[0]);
    assert_eq!(sent[0].wamid, "wamid.CUTOFF1");
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 1);

    // The hold is over: the second (no status named it) goes out, once;
    // the first never does.
    d.clock.set(t0() + SignedDuration::from_mins(15));
    wa.kick();
    wa.processed_at_least(1).await;
    let texts: Vec<String> = sim
        .sent_messages()
        .iter()
        .map(|m| m["text"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts, ["lost"]);
    assert_eq!(
        sim.sent_messages()[0]["biz_opaque_callback_data"],
        in_doubt::callback_data(seqs[1])
    );
    assert_eq!(d.running.vault.count(Tree::WaOutbox), 0);
    assert_eq!(outbox::sent(&d.running.vault).unwrap().len(), 2);
    d.stop().await;
}
