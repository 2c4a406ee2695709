//! Patient lookup in the console over real TLS with a manual clock: search
//! by MRN and by phone number (as the PMS wrote it and in E.164), exact
//! match only; the patient page with the appointment, the reminder sent and
//! the patient's answer, the consent and its history; opt-in and opt-out
//! by staff (source staff, actor `staff:NAME`); no other patient's or
//! conversation's markers on the page; CSRF and sign-in enforced; every
//! page view audited as `patient.read` by `staff:zz-desk`.

use super::client::*;
use crate::care_reminders::*;
use crate::support::*;
use clinic_relay::care::ledger;
use clinic_relay::model::{ConsentSource, ConsentState, PatientId};
use graph_sim::{Sim, Template};

const ACTOR: &str = "staff:zz-desk";

/// Searches for `q`; returns the redirect's location (None: no redirect)
/// and the reply.
async fn search(b: &mut Browser, csrf: &str, q: &str) -> (Option<String>, Reply) {
    let r = b.post("/p", &[("csrf", csrf), ("q", q)]).await;
    (r.header("location").map(str::to_owned), r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_find_one_patient_see_reminders_and_record_consent() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (d, secret) = setup(&sim).await;
    let id: PatientId = d.running.vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    let page_path = format!("/p/{}", id.to_hex());
    // The patient's own conversation: its words never reach this page.
    hand_off(&d, "wamid.L1", WA_ID).await;

    // Signed out: every lookup route goes to the sign-in page.
    let mut b = Browser::new(&d);
    for r in [
        b.get("/p").await,
        b.get(&page_path).await,
        b.post("/p", &[("q", "CARE001")]).await,
    ] {
        assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    }
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    let form = b.get("/p").await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form
        .body
        .contains("<label for=\"q\">MRN or phone number</label>"));
    let csrf = form.csrf();

    // Without (or with a wrong) form token: 403, nothing looked up.
    assert_eq!(b.post("/p", &[("q", "CARE001")]).await.status, 403);
    let wrong = "0".repeat(64);
    assert_eq!(
        b.post("/p", &[("csrf", &wrong), ("q", "CARE001")])
            .await
            .status,
        403
    );

    // The MRN, the number as the PMS wrote it, and in E.164: one patient.
    for q in [
        "CARE001",
        " CARE001 ",
        "0151 5550 1234",
        "+4915155501234",
        "+49 151 55501234",
    ] {
        let (to, r) = search(&mut b, &csrf, q).await;
        assert_eq!(r.status, 303, "{q}: {}", r.body);
        assert_eq!(to.as_deref(), Some(page_path.as_str()), "{q}");
    }
    // No partial match, no near match, no list.
    for q in [
        "CARE00",
        "care001",
        "CARE0011",
        "0151 5550",
        "4915155501234x",
        "",
    ] {
        let (to, r) = search(&mut b, &csrf, q).await;
        assert_eq!((r.status, to), (200, None), "{q}");
        assert!(
            r.body.contains("No patient with this MRN or number."),
            "{q}"
        );
        for marker in ["CARE002", "ZZOTHERFAMILY", "ZZFAMILY", "/p/"] {
            assert!(!r.body.contains(marker), "{marker} for {q}");
        }
    }

    // The page: name, birth date, the appointment in the clinic's time,
    // no consent yet; nothing of the other patient, the visit's service or
    // diagnosis, or the conversation.
    let page = b.get(&page_path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    for shown in [
        "ZZGIVEN ZZFAMILY",
        "1901-02-03",
        "2027-01-20 10:00 CET",
        "booked",
        "no answer",
        "No reminders were sent.",
        "not recorded",
    ] {
        assert!(page.body.contains(shown), "{shown} not on the page");
    }
    for marker in [
        "CARE002",
        "ZZOTHERFAMILY",
        OTHER_WA_ID,
        "ZZSVCMARKER",
        "ZZDXMARKER",
        "I need to talk to someone",
    ] {
        assert!(!page.body.contains(marker), "{marker} on the page");
    }
    assert!(page.body.contains("<th scope=\"col\">"));

    // Opt-in on the patient's request: without the token nothing changes.
    let consent_path = format!("{page_path}/consent");
    let r = b.post(&consent_path, &[("consent", "in")]).await;
    assert_eq!(r.status, 403);
    assert!(d.running.vault.get_consent(id).unwrap().is_none());
    let r = b
        .post(&consent_path, &[("csrf", &csrf), ("consent", "maybe")])
        .await;
    assert_eq!(r.status, 400);
    let r = b
        .post(&consent_path, &[("csrf", &csrf), ("consent", "in")])
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(page_path.as_str()))
    );
    let page = b.get(&page_path).await;
    assert!(page.body.contains("opted in"), "{}", page.body);
    assert!(page.body.contains("staff, at the patient's request"));
    assert!(page.body.contains(ACTOR));

    // The reminder goes out (Sun 17 January, 10:00 in Berlin) and the
    // patient confirms it.
    at(&d, "2027-01-17T09:00:00Z".parse().unwrap()).await;
    let sent = until("the reminder at the simulator", || {
        templates(&sim).into_iter().next()
    })
    .await;
    drain(&d).await;
    let confirm = sent["template"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sub_type"] == "quick_reply")
        .map(|c| c["parameters"][0]["payload"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(
        post_signed(&d, button_tap("wamid.LTAP", &confirm)).await,
        200
    );

    // Two days later the session is long over: signed in again.
    assert_eq!(
        b.get(&page_path).await.header("location"),
        Some("/login"),
        "the idle timeout ended the session"
    );
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    let page = b.get(&page_path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for shown in [
        "2027-01-17 10:00 CET",
        ">reminder<",
        ">sent<",
        ">confirmed<",
        "<td>1</td>",
    ] {
        assert!(page.body.contains(shown), "{shown} not on the page");
    }
    // Opt-out on the patient's request.
    let csrf = page.csrf();
    let r = b
        .post(&consent_path, &[("csrf", &csrf), ("consent", "out")])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = b.get(&page_path).await;
    assert!(
        page.body.contains("Now: <strong>opted out"),
        "{}",
        page.body
    );

    // German, by the browser's language.
    b.lang = "de-DE,de;q=0.9";
    let page = b.get(&page_path).await;
    assert!(page.body.contains("lang=\"de\"") && page.body.contains("Kommende Termine"));
    assert!(page.body.contains("Widerruf erfassen"));

    // A bad id: 404.
    assert_eq!(b.get("/p/zz").await.status, 404);
    let unknown = format!("/p/{}", "0".repeat(32));
    assert_eq!(b.get(&unknown).await.status, 404);

    // The ledger, as the API exports it: both changes by staff, with the
    // staff member as actor.
    let (status, history) = d
        .api(
            "GET",
            &format!("/v1/patients/{}/consent/history", id.to_hex()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let states: Vec<_> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["state"].as_str().unwrap(),
                e["source"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("opted-in", "staff", ACTOR), ("opted-out", "staff", ACTOR)]
    );
    let ledger = ledger::history(&d.running.vault, id).unwrap();
    assert_eq!(
        (ledger[1].state, ledger[1].source),
        (ConsentState::OptedOut, ConsentSource::Staff)
    );

    // The audit: each page view a `patient.read` naming the patient, by
    // the staff member; the consent changes by the staff member.
    let install = d.stop().await;
    let vault = install.open();
    let entries: Vec<_> = vault.audit_entries(1).map(|(_, e)| e.unwrap()).collect();
    let by = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.actor == ACTOR)
            .collect::<Vec<_>>()
    };
    let subject = Some(id.to_string());
    assert_eq!(by("patient.read").len(), 5);
    assert!(by("patient.read").iter().all(|e| e.subject == subject));
    assert_eq!(by("consent.read").len(), 5);
    assert_eq!(by("consent.set").len(), 2);
    assert!(by("consent.set").iter().all(|e| e.subject == subject));
    vault.verify_audit().unwrap();
}

/// The sent log read for one patient opens only the records sealed under
/// that patient's keys: another patient's and the system's are skipped,
/// and after an erasure the erased patient's are gone, not an error.
#[test]
fn the_sent_log_read_for_one_patient() {
    use clinic_relay::vault::{Owner, Tree, Txn, VaultError};
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), &key(7));
    let (a, b) = (marker_patient(&vault, "1"), marker_patient(&vault, "2"));
    vault.put_patient(&a, "test", t0()).unwrap();
    vault.put_patient(&b, "test", t0()).unwrap();
    vault
        .write_blocking(move |_| {
            let mut txn = Txn::new(t0());
            for (n, owner) in [
                Owner::Patient(a.id),
                Owner::Patient(b.id),
                Owner::System,
                Owner::Patient(a.id),
            ]
            .into_iter()
            .enumerate()
            {
                txn.append_json(Tree::WaSent, owner, &format!("record {n}"))?;
            }
            Ok::<_, VaultError>((txn, ()))
        })
        .unwrap();
    let read = |id| -> Vec<String> {
        vault
            .scan_sealed_for(Tree::WaSent, id)
            .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
            .collect()
    };
    assert_eq!(read(a.id), ["record 0", "record 3"]);
    assert_eq!(read(b.id), ["record 1"]);
    vault.erase_patient(a.id, "test", t0()).unwrap();
    assert!(read(a.id).is_empty());
    assert_eq!(read(b.id), ["record 1"]);
}
