//! `clinic-relay templates check` against the simulator.

use crate::support::*;
use graph_sim::{Sim, Template};

/// An install with live credentials pointing at `sim`, holding `token`.
pub fn live_install(sim: &Sim, token: &str) -> TestInstall {
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"1065\"\n\
         business_account_id = \"1022\"\ntoken_file = \"wa.token\"\n",
        sim.base_url()
    ));
    std::fs::write(install.tmp.path().join("wa.token"), format!("{token}\n")).unwrap();
    install
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_check_reports_missing_and_rejected() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-t"));
    sim.add_template(Template::approved("appointment_reminder", "de"));
    sim.add_template(Template::approved("appointment_reminder", "en"));
    sim.add_template(Template {
        status: "REJECTED".to_owned(),
        ..Template::approved("lab_result_ready", "de")
    });
    let install = live_install(&sim, "tok-t");
    let out = run_cli_async(&install.config, &["templates", "check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = |name: &str, lang: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name) && l.split_whitespace().nth(1) == Some(lang))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("appointment_reminder", "de").ends_with("approved"),
        "{stdout}"
    );
    assert!(
        line("lab_result_ready", "de").ends_with("rejected"),
        "{stdout}"
    );
    assert!(
        line("lab_result_ready", "en").ends_with("missing"),
        "{stdout}"
    );
    assert!(
        stderr.contains("16 of 18 templates are not approved"),
        "{stderr}"
    );
    assert!(!stdout.contains("tok-t") && !stderr.contains("tok-t"));

    // Without credentials it says what to configure.
    let dry = TestInstall::new("[whatsapp]\n");
    let out = run_cli_async(&dry.config, &["templates", "check"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs live credentials"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_list_shows_state_and_pseudonyms_never_numbers() {
    use clinic_relay::whatsapp::message::{self, Recipient};
    use clinic_relay::whatsapp::outbox::{self, WaItem};
    let install = TestInstall::new("");
    let vault = install.open();
    for body in ["ZZMARKBODY1", "ZZMARKBODY2"] {
        let item = WaItem {
            patient: None,
            recipient: Some(Recipient::phone("+4915550999").unwrap()),
            message: message::text(body).unwrap(),
            reference: None,
        };
        outbox::enqueue(&vault, item, t0(), None).await.unwrap();
    }
    vault.close().unwrap();
    let out = run_cli_async(&install.config, &["outbox", "list", "--limit", "1"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(
        rows[0].contains("queued") && rows[0].contains("text"),
        "{stdout}"
    );
    assert!(!stdout.contains("4915550999") && !stdout.contains("ZZMARK"));

    // --show-content prints what the queued messages say, and audits it.
    let out = run_cli_async(&install.config, &["outbox", "list", "--show-content"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ZZMARKBODY1") && stdout.contains("ZZMARKBODY2"),
        "{stdout}"
    );
    let out = run_cli_async(&install.config, &["audit", "export"]).await;
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("outbox.read"), "{audit}");
    assert!(!audit.contains("ZZMARK"), "the audit log holds no content");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_create_submits_the_missing_ones_only() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-c"));
    sim.add_template(Template::approved("appointment_reminder", "de"));
    sim.add_template(Template {
        status: "REJECTED".to_owned(),
        ..Template::approved("lab_result_ready", "de")
    });
    let install = live_install(&sim, "tok-c");
    let out = run_cli_async(&install.config, &["templates", "create"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    let submitted: Vec<serde_json::Value> = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/1022/message_templates"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let names: Vec<(String, String)> = submitted
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["language"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("appointment_reminder".to_owned(), "en".to_owned()),
            ("lab_result_ready".to_owned(), "en".to_owned()),
            ("appointment_reminder".to_owned(), "es".to_owned()),
            ("appointment_reminder".to_owned(), "fr".to_owned()),
            ("visit_follow_up".to_owned(), "de".to_owned()),
            ("visit_follow_up".to_owned(), "en".to_owned()),
            ("visit_follow_up".to_owned(), "es".to_owned()),
            ("visit_follow_up".to_owned(), "fr".to_owned()),
            ("document_ready".to_owned(), "en".to_owned()),
            ("document_ready".to_owned(), "de".to_owned()),
            ("document_ready".to_owned(), "es".to_owned()),
            ("document_ready".to_owned(), "fr".to_owned()),
            ("conversation_reopen".to_owned(), "de".to_owned()),
            ("conversation_reopen".to_owned(), "en".to_owned()),
            ("conversation_reopen".to_owned(), "es".to_owned()),
            ("conversation_reopen".to_owned(), "fr".to_owned())
        ],
        "{stdout}"
    );
    // What is submitted is the shipped definition, components and all.
    assert_eq!(
        Some(&submitted[0]),
        clinic_relay::whatsapp::templates::definition("appointment_reminder", "en").as_ref()
    );
    assert!(stdout.contains("rejected (left as it is)"), "{stdout}");
    assert!(stdout.contains("submitted: pending"), "{stdout}");

    // Now nothing is missing: the check shows them pending.
    let out = run_cli_async(&install.config, &["templates", "check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("missing"), "{stdout}");
    assert_eq!(stdout.matches("pending").count(), 16, "{stdout}");

    // A refused submission is reported and fails the command; the others go.
    let fresh = Sim::start().await.unwrap();
    fresh.require_token(Some("tok-c"));
    fresh.inject(
        graph_sim::Injection::code(100)
            .route(graph_sim::Route::Templates)
            .for_recipient("lab_result_ready")
            .times(2),
    );
    let install = live_install(&fresh, "tok-c");
    let out = run_cli_async(&install.config, &["templates", "create"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("NOT submitted").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("submitted: pending").count(), 16, "{stdout}");
    assert!(
        stderr(&out).contains("2 templates could not be submitted"),
        "{}",
        stderr(&out)
    );
}
