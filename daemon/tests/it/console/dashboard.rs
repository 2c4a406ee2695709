//! The admin dashboard over real TLS sockets with a manual clock: the KPI
//! figures match what the test caused (a hand-off answered by staff three
//! minutes later, a STOP), a desk account gets 403, a message the PMS
//! refused is listed as a dead letter and the retry button (with CSRF)
//! delivers it to the PMS once it accepts; the same through the local API
//! on the Unix socket (the TCP door refuses it: `tls.rs`); no marker value
//! anywhere on the page; the view is audited. A WhatsApp dead letter is
//! retried from the page too, and a token Meta rejects shows as such.

use super::client::*;
use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use clinic_relay::clock::Clock;
use clinic_relay::console::staff::{self, Role};
use clinic_relay::pms::hl7::{self, AckCode, AckError};
use clinic_relay::pms::mllp;
use clinic_relay::pms::outbound::{self, PatientAction};
use clinic_relay::vault::Tree;
use graph_sim::{Sim, Template};
use jiff::SignedDuration;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::BufReader;

/// A test PMS that answers AE to everything while `refuse` is set, AA
/// otherwise, and keeps the type of each message it accepted.
struct Pms {
    addr: std::net::SocketAddr,
    refuse: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
}

async fn pms() -> Pms {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refuse = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (r0, a0) = (refuse.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (refuse, accepted) = (r0.clone(), a0.clone());
            tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(stream);
                let mut r = BufReader::new(r);
                while let Ok(Some(mllp::Incoming::Message(bytes))) =
                    mllp::read_frame(&mut r, 1 << 20).await
                {
                    let msg = hl7::parse(&bytes).unwrap();
                    let t = msg.message_type().unwrap();
                    let (code, err) = if refuse.load(Ordering::SeqCst) {
                        (AckCode::Error, Some(AckError::new(204, "ZZ not now")))
                    } else {
                        accepted
                            .lock()
                            .unwrap()
                            .push(format!("{}^{}", t.code, t.trigger));
                        (AckCode::Accept, None)
                    };
                    let ack = hl7::ack(&msg, code, err.as_ref(), t0(), "ZZPMS", "ZZCLINIC", "P1");
                    mllp::write_frame(&mut w, &ack).await.unwrap();
                }
            });
        }
    });
    Pms {
        addr,
        refuse,
        accepted,
    }
}

/// Adds staff member `name` with `role`; returns the TOTP secret.
async fn add_staff(d: &Daemon, name: &'static str, role: Role) -> Vec<u8> {
    let vault = d.running.vault.clone();
    let enrolment = tokio::task::spawn_blocking(move || {
        staff::add(
            &vault,
            name,
            role,
            Some(PASSWORD.to_owned().into()),
            "test",
            t0(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    staff::secret_from_uri(&enrolment.otpauth).unwrap()
}

/// Queues a confirmation of APPT-K1 for the PMS and waits until it has
/// been dead-lettered (the PMS refuses) — the dead letters' count then.
async fn refused_message(d: &Daemon, pms: &Pms, dead_before: usize) {
    pms.refuse.store(true, Ordering::SeqCst);
    outbound::record(
        &d.running.vault,
        &d.running.outbound,
        &PatientAction::Confirm {
            appointment: "APPT-K1".into(),
        },
        "test",
        d.clock.now(),
    )
    .await
    .unwrap();
    until("the refused message dead-lettered", || {
        (d.running.vault.count(Tree::PmsDeadLetters) == dead_before + 1).then_some(())
    })
    .await;
    pms.refuse.store(false, Ordering::SeqCst);
}

/// The first retry form's path on the page.
fn retry_path(body: &str) -> String {
    let at = body.find("action=\"/admin/dead/").expect("a retry form") + 8;
    let end = at + body[at..].find('"').unwrap();
    body[at..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_kpis_queues_and_dead_letters_and_retry_one() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("conversation_reopen", "en"));
    let pms = pms().await;
    let d = daemon_with(&sim, pms.addr, "", CONSOLE).await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&siu("SIU^S12^SIU_S12", "K1", "APPT-K1", "202701201000"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let admin_secret = add_staff(&d, "zz-admin", Role::Admin).await;
    let desk_secret = add_staff(&d, "zz-desk", Role::Desk).await;

    // KPIs through the real flow: a hand-off answered 3 minutes later (the
    // staff response time), and a STOP (an opt-out).
    let conv = hand_off(&d, "wamid.D1", WA_ID).await;
    d.clock.set(t0() + SignedDuration::from_mins(3));
    let mut admin = Browser::new(&d);
    let r = admin.sign_in_as(&d, "zz-admin", &admin_secret, None).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let csrf = admin.get("/").await.csrf();
    let r = admin
        .post(
            &format!("/c/{conv}/reply"),
            &[("csrf", &csrf), ("text", "ZZ staff: on our way")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let stop = crate::webhook::text_message("wamid.D2", WA_ID, "ZZ", "STOP");
    assert_eq!(post_signed(&d, stop).await, 200);
    drain(&d).await;

    // A message the PMS refuses: a dead letter.
    refused_message(&d, &pms, 0).await;

    // Signed out: to the sign-in page. A desk account: 403.
    let mut anonymous = Browser::new(&d);
    let r = anonymous.get("/admin").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let mut desk = Browser::new(&d);
    assert_eq!(
        desk.sign_in_as(&d, "zz-desk", &desk_secret, None)
            .await
            .status,
        303
    );
    let r = desk.get("/admin").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Only administrators"), "{}", r.body);
    assert!(!r.body.contains("/admin/dead/"));
    // The desk's own page has no dashboard link; the admin's has.
    assert!(!desk.get("/").await.body.contains("href=\"/admin\""));

    let page = admin.get("/admin").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let body = &page.body;
    // The day's figures (clinic time zone): 0 sent, 0 confirmed, 1 opt-out,
    // no no-shows, 1 first staff reply after 3 minutes.
    let today = t0()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date()
        .to_string();
    let row_at = body
        .find(&format!("<th scope=\"row\">{today}</th>"))
        .unwrap_or_else(|| panic!("no row for {today}: {body}"));
    let row = &body[row_at..row_at + body[row_at..].find("</tr>").unwrap()];
    assert!(
        row.ends_with("<td>0</td><td>0</td><td>1</td><td>0</td><td>0</td><td>1</td><td>3</td>"),
        "{row}"
    );
    assert!(
        body.contains("<dd>3 min (first replies: 1)</dd>"),
        "median on the page"
    );
    assert_eq!(body.matches("<svg class=\"chart\"").count(), 4);
    assert!(body.contains("role=\"img\" aria-label=\"Reminders sent and confirmed per day\""));
    assert!(!body.contains("style="), "no inline style (CSP)");
    assert_eq!(
        body.matches("<script").count(),
        body.matches("<script src=\"/static/").count()
    );
    // Queues, WhatsApp, warnings (the same words as `status`).
    assert!(body.contains("To the PMS") && body.contains("To WhatsApp"));
    assert!(body.contains("live (messages are sent)") && body.contains("<dd>127.0.0.1</dd>"));
    assert!(body.contains("<dd>in use</dd>"));
    let (_, status) = d.api("GET", "/v1/status", None).await;
    for w in status["warnings"].as_array().unwrap() {
        assert!(body.contains(&*esc(w.as_str().unwrap())), "{w} on the page");
    }
    assert!(body.contains("message(s) refused by the PMS (dead letters)"));
    // The dead letter: kind, reason in plain words, attempts; no PHI.
    assert!(body.contains("<td>SIU^S14</td>"), "{body}");
    assert!(body.contains("refused by the receiver"));
    for marker in [WA_ID, "ZZ not now", "ZZOTHERFAMILY", "ZZ staff: on our way"]
        .iter()
        .chain(FORBIDDEN_MARKERS)
    {
        assert!(!body.contains(marker), "{marker} on the dashboard");
    }

    // Retry: without the token 403, as a desk 403, then for real.
    let path = retry_path(body);
    assert!(path.starts_with("/admin/dead/pms/"), "{path}");
    assert_eq!(admin.post(&path, &[]).await.status, 403);
    assert_eq!(
        admin.post(&path, &[("csrf", &"0".repeat(64))]).await.status,
        403
    );
    let desk_csrf = desk.get("/").await.csrf();
    assert_eq!(desk.post(&path, &[("csrf", &desk_csrf)]).await.status, 403);
    assert_eq!(d.running.vault.count(Tree::PmsDeadLetters), 1);
    let admin_csrf = page.csrf();
    let r = admin.post(&path, &[("csrf", &admin_csrf)]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/admin")));
    until("the retried message at the PMS", || {
        (pms.accepted.lock().unwrap().iter().any(|m| m == "SIU^S14")
            && d.running.vault.count(Tree::PmsOutbox) == 0)
            .then_some(())
    })
    .await;
    assert_eq!(d.running.vault.count(Tree::PmsDeadLetters), 0);
    let again = admin.post(&path, &[("csrf", &admin_csrf)]).await;
    assert_eq!(again.status, 404, "a dead letter is retried once");
    assert!(admin.get("/admin").await.body.contains("<p>None.</p>"));

    // The same through the local API (Unix socket).
    refused_message(&d, &pms, 0).await;
    let id = retry_path(&admin.get("/admin").await.body)
        .trim_start_matches("/admin/dead/pms/")
        .trim_end_matches("/retry")
        .to_owned();
    let (status, answer) = d
        .api(
            "POST",
            &format!("/v1/admin/dead-letters/pms/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "queued");
    until("the second retry at the PMS", || {
        (pms.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == "SIU^S14")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let (status, _) = d
        .api("POST", "/v1/admin/dead-letters/pms/999/retry", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = d
        .api("POST", "/v1/admin/dead-letters/fax/1/retry", None)
        .await;
    assert_eq!(status, 404);

    // Audited: the views and both retries, by whom.
    let install = d.stop().await;
    let vault = install.open();
    let entries: Vec<_> = vault.audit_entries(1).map(|(_, e)| e.unwrap()).collect();
    let by = |action: &str, actor: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.actor == actor)
            .count()
    };
    assert!(by("dashboard.read", "staff:zz-admin") >= 3);
    assert_eq!(by("dashboard.read", "staff:zz-desk"), 0);
    assert_eq!(by("pms.outbound.retry", "staff:zz-admin"), 1);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "pms.outbound.retry" && e.actor.starts_with("api:"))
            .count(),
        1
    );
    vault.verify_audit().unwrap();
}

/// HTML-escapes like the console (the warnings quote paths).
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['&', '<', '>', '"', '\'']) {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
            .into()
    } else {
        s.into()
    }
}

/// A WhatsApp message Meta refused (131026) is listed with its code and
/// retried from the page (the simulator then accepts it); a token Meta
/// rejects (190) shows as such, with the paused outbox among the warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_dead_letter_is_retried_and_a_rejected_token_shows() {
    use graph_sim::Injection;
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("conversation_reopen", "en"));
    let (d, _) = setup(&sim).await;
    let secret = add_staff(&d, "zz-admin", Role::Admin).await;
    let conv = hand_off(&d, "wamid.W1", WA_ID).await;
    let mut admin = Browser::new(&d);
    assert_eq!(
        admin.sign_in_as(&d, "zz-admin", &secret, None).await.status,
        303
    );
    let csrf = admin.get("/").await.csrf();
    let path = format!("/c/{conv}/reply");

    sim.inject(Injection::code(131026));
    let r = admin
        .post(&path, &[("csrf", &csrf), ("text", "ZZ staff: first try")])
        .await;
    assert_eq!(r.status, 303);
    until("the refused reply dead-lettered", || {
        (d.running.vault.count(Tree::WaDeadLetters) == 1).then_some(())
    })
    .await;
    let page = admin.get("/admin").await;
    assert!(
        page.body.contains("refused by the receiver (131026)"),
        "{}",
        page.body
    );
    assert!(page.body.contains("WhatsApp message(s) refused by Meta"));
    assert!(!page.body.contains("ZZ staff: first try") && !page.body.contains(WA_ID));
    let retry = retry_path(&page.body);
    assert!(retry.starts_with("/admin/dead/whatsapp/"), "{retry}");
    let r = admin.post(&retry, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    until("the retried reply at the simulator", || {
        sim.sent_messages()
            .iter()
            .any(|m| m["text"]["body"] == "ZZ staff: first try")
            .then_some(())
    })
    .await;
    assert_eq!(d.running.vault.count(Tree::WaDeadLetters), 0);

    // Meta rejects the token: the outbox pauses, the page says why.
    sim.inject(Injection::code(190));
    let r = admin
        .post(&path, &[("csrf", &csrf), ("text", "ZZ staff: second")])
        .await;
    assert_eq!(r.status, 303);
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), handle.wait_paused(true))
        .await
        .unwrap();
    let page = admin.get("/admin").await;
    assert!(
        page.body.contains("rejected by Meta (error 190)"),
        "{}",
        page.body
    );
    assert!(page.body.contains("the WhatsApp outbox is paused"));
    d.stop().await;
}
