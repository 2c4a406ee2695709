//! A send with a template the account has not approved fails at enqueue,
//! with an error that says why, instead of later at Meta.

use crate::pms_support::Daemon;
use crate::support::*;
use crate::wa_outbox::Setup;
use clinic_relay::whatsapp::client::{GraphClient, Token};
use clinic_relay::whatsapp::message::{self, Params, Recipient, TemplateSpec};
use clinic_relay::whatsapp::outbox::{self, OutboxError, WaItem};
use clinic_relay::whatsapp::template_book::{self, TemplateBook, TemplateRefusal};
use graph_sim::{Sim, Template};
use std::time::Duration;

fn reminder(language: &str, name: &str) -> WaItem {
    WaItem {
        patient: None,
        recipient: Some(Recipient::phone("+4915550001").unwrap()),
        message: message::template(&TemplateSpec {
            name,
            language,
            header: None,
            body: Params::Positional(vec!["Mo", "9:00"]),
            quick_replies: vec![],
        })
        .unwrap(),
        reference: None,
    }
}

async fn enqueue(s: &Setup, language: &str, name: &str) -> Result<(), OutboxError> {
    outbox::enqueue(&s.vault, reminder(language, name), t0(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_the_account_has_not_approved_is_refused_at_enqueue() {
    let s = Setup::new();
    // Before the account was ever listed, the shipped definitions stand in.
    enqueue(&s, "de", "appointment_reminder").await.unwrap();
    let e = enqueue(&s, "de", "spring_sale").await.unwrap_err();
    assert!(
        matches!(e, OutboxError::Template(TemplateRefusal::Unknown { .. })),
        "{e}"
    );

    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-1"));
    sim.add_template(Template::approved("appointment_reminder", "en"));
    sim.add_template(Template {
        status: "REJECTED".to_owned(),
        ..Template::approved("appointment_reminder", "de")
    });
    let client =
        GraphClient::new(&s.config(&sim), Some(Token::load(&s.token_file).unwrap())).unwrap();
    let book = template_book::refresh(&s.vault, &client, t0())
        .await
        .unwrap();
    assert_eq!(book.templates.len(), 2);
    assert_eq!(TemplateBook::load(&s.vault).unwrap(), Some(book));

    enqueue(&s, "en", "appointment_reminder").await.unwrap();
    let rejected = enqueue(&s, "de", "appointment_reminder").await.unwrap_err();
    assert!(
        rejected
            .to_string()
            .contains("appointment_reminder/de is rejected")
            && rejected.to_string().contains("templates check"),
        "{rejected}"
    );
    let missing = enqueue(&s, "de", "lab_result_ready").await.unwrap_err();
    assert!(
        matches!(
            missing,
            OutboxError::Template(TemplateRefusal::Missing { .. })
        ),
        "{missing}"
    );
    // Free-form messages are not affected by the book.
    s.send("+4915550001", message::text("hello").unwrap()).await;
    // The shipped one queued before the listing, the approved one, the text.
    let queued = outbox::list(&s.vault, 10).unwrap();
    assert_eq!(queued.len(), 3, "nothing refused was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_lists_the_accounts_templates_when_it_starts() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-d"));
    sim.add_template(Template {
        status: "PAUSED".to_owned(),
        ..Template::approved("appointment_reminder", "de")
    });
    let install = crate::wa_templates::live_install(&sim, "tok-d");
    let d = Daemon::start_in(install).await;
    let listed = sim
        .wait_for(Duration::from_secs(10), |r| {
            r.iter()
                .any(|r| r.method == "GET" && r.path.contains("/1022/message_templates"))
        })
        .await;
    assert!(listed, "the daemon did not list the templates");
    let vault = d.running.vault.clone();
    let mut book = None;
    for _ in 0..200 {
        book = TemplateBook::load(&vault).unwrap();
        if book.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let book = book.expect("the listing was stored");
    assert_eq!(book.templates[0].status, "paused");
    let e = outbox::enqueue(&vault, reminder("de", "appointment_reminder"), t0(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is paused"), "{e}");
    d.stop().await;
}
