//! A staff reply that WhatsApp refuses, or that fails after it was sent,
//! shows as "not delivered" with the reason in words on the conversation
//! page (and as `delivery_error` in the inbox API), instead of "waiting to
//! be sent" for ever.

use super::client::*;
use crate::care_reminders::*;
use graph_sim::{Injection, Sim};

async fn reply(b: &mut Browser, conv: &str, text: &str) {
    let page = b.get(&format!("/c/{conv}")).await;
    let r = b
        .post(
            &format!("/c/{conv}/reply"),
            &[
                ("csrf", &page.csrf()),
                ("once", &page.field("once")),
                ("text", text),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_failed_reply_says_why() {
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;
    let conv = hand_off(&d, "wamid.D1", WA_ID).await;
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);

    // Refused at the send: "not a WhatsApp user" (131026), not retried.
    sim.inject(Injection::code(131026));
    reply(&mut b, &conv, "ZZ staff: first").await;
    drain(&d).await;
    let page = b.get(&format!("/c/{conv}")).await;
    assert!(
        page.body
            .contains("not delivered: this number cannot get WhatsApp messages"),
        "{}",
        page.body
    );
    let (_, view) = d
        .api("GET", &format!("/v1/conversations/{conv}"), None)
        .await;
    let first = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["text"] == "ZZ staff: first")
        .cloned()
        .unwrap();
    assert_eq!(first["delivery"], "failed");
    assert_eq!(first["delivery_error"], "131026");

    // Sent, then failed on the way (Meta's status webhook with 131047).
    reply(&mut b, &conv, "ZZ staff: second").await;
    drain(&d).await;
    let wamid = sim.accepted_wamids().pop().unwrap();
    let mut update = graph_sim::webhooks::status(&wamid, "failed", WA_ID, 1_800_000_100);
    update["statuses"][0]["errors"] =
        serde_json::json!([{"code": 131047, "title": "Re-engagement message"}]);
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": update}]}]
    });
    assert_eq!(post_signed(&d, crate::webhook::meta_json(&body)).await, 200);
    let page = b.get(&format!("/c/{conv}")).await;
    assert!(
        page.body
            .contains("not delivered: more than 24 hours since the patient&#39;s last message")
            || page
                .body
                .contains("not delivered: more than 24 hours since the patient's last message"),
        "{}",
        page.body
    );
    d.stop().await;
}
