//! The post-visit follow-up (issue 10), configured with `reminders.
//! follow_up`: SIU^S14 with SCH-25 "Complete" → nothing early → the
//! `visit_follow_up` template at the simulator at the due time, once.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::until;
use graph_sim::{Sim, Template};
use jiff::Timestamp;

fn follow_ups(sim: &Sim) -> Vec<serde_json::Value> {
    templates(sim)
        .into_iter()
        .filter(|m| m["template"]["name"] == "visit_follow_up")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fulfilled_visit_gets_the_follow_up_template_once() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    sim.add_template(Template::approved("visit_follow_up", "en"));
    let (pms, _received) = pms_peer().await;
    let d = daemon_with(&sim, pms, "", "\n[reminders]\nfollow_up = \"3h\"\n").await;
    booked(&d, "APPT-F1", "202701201000", true).await;
    // The visit ends at 10:30 in Berlin; the PMS reports it complete.
    at(&d, "2027-01-20T09:30:00Z".parse().unwrap()).await;
    let done =
        siu("SIU^S14^SIU_S12", "F2", "APPT-F1", "202701201000").replace("||Booked", "||Complete");
    let mut c = d.mllp().await;
    assert_eq!(msa(&c.send(&done).await).0, "AA");
    let due: Timestamp = "2027-01-20T12:30:00Z".parse().unwrap();
    at(&d, due - jiff::SignedDuration::from_secs(1)).await;
    assert!(follow_ups(&sim).is_empty());
    at(&d, due).await;
    let sent = until("the follow-up at the simulator", || {
        follow_ups(&sim).into_iter().next()
    })
    .await;
    assert_eq!(sent["to"], format!("+{WA_ID}"));
    assert_eq!(sent["template"]["language"]["code"], "en");
    // Reported again: no second follow-up.
    assert_eq!(msa(&c.send(&done.replace("|F2|", "|F3|")).await).0, "AA");
    at(&d, "2027-01-21T12:30:00Z".parse().unwrap()).await;
    assert_eq!(follow_ups(&sim).len(), 1);
    d.stop().await;
}
