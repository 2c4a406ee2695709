//! Languages end to end (issue 10 item 5): a patient whose PID-15 says
//! `es` gets the Spanish reminder under the account's language code
//! (`reminders.template_codes`: es → es_MX), Spanish dates and a Spanish
//! reply; typing "English" in the chat switches what follows to English.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use clinic_relay::model::PatientId;
use graph_sim::{Sim, Template};

fn text_sent(sim: &Sim, body: &str) -> Option<()> {
    sim.sent_messages()
        .iter()
        .any(|m| m["text"]["body"] == body)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spanish_speaking_patient_gets_spanish_and_can_switch_in_the_chat() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "es_MX"));
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (pms, _received) = pms_peer().await;
    // The account's Spanish template is es_MX: the template book (listed
    // from the account) says so.
    let d = daemon_with(
        &sim,
        pms,
        "business_account_id = \"102290129340398\"\n",
        "\n[reminders]\ntemplate_codes = { es = \"es_MX\" }\n",
    )
    .await;
    until("the account's templates listed", || {
        clinic_relay::whatsapp::template_book::TemplateBook::load(&d.running.vault)
            .unwrap()
            .filter(|b| b.templates.iter().any(|t| t.language == "es_MX"))
    })
    .await;
    // PID-15 (after PID-13's number and an empty PID-14): Spanish.
    let msg = siu("SIU^S12^SIU_S12", "L1", "APPT-L1", "202701201000")
        .replace("0151 5550 1234", "0151 5550 1234||es");
    let mut c = d.mllp().await;
    assert_eq!(msa(&c.send(&msg).await).0, "AA");
    let patient: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    assert_eq!(
        d.running
            .vault
            .get_patient(patient)
            .unwrap()
            .unwrap()
            .language
            .as_deref(),
        Some("es")
    );
    crate::care_reminders::opt_in(&d, patient).await;

    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let sent = until("the reminder", || templates(&sim).into_iter().next()).await;
    assert_eq!(sent["template"]["language"]["code"], "es_MX");
    let body = serde_json::to_string(&sent["template"]["components"][0]).unwrap();
    assert!(
        body.contains("20/01/2027") && body.contains("10:00"),
        "{body}"
    );
    let p = payloads(&sent);
    assert_eq!(post_signed(&d, button_tap("wamid.L1", &p[0])).await, 200);
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the Spanish reply", || {
        text_sent(&sim, "Gracias, su cita está confirmada.")
    })
    .await;

    // "english!" in the chat: English from now on, over PID-15.
    let text = crate::webhook::text_message("wamid.L2", WA_ID, "ZZ", "english!");
    assert_eq!(post_signed(&d, text).await, 200);
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the switch confirmed in English", || {
        text_sent(
            &sim,
            "From now on, messages from the practice will be in English.",
        )
    })
    .await;
    assert_eq!(post_signed(&d, button_tap("wamid.L3", &p[1])).await, 200);
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the English reply", || {
        text_sent(
            &sim,
            "Your appointment is cancelled; the practice has been told.",
        )
    })
    .await;
    d.stop().await;
}
