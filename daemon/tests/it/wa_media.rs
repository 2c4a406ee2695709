//! WhatsApp media end to end (issue 9 item 3), through real sockets: the
//! daemon, its webhook receiver and the Graph API simulator. A PDF goes up,
//! out as a document, and is deleted at Meta once delivered (or at its
//! TTL); a patient's image is fetched and sealed; neither is ever on disk
//! in the clear.

use crate::pms_support::Daemon;
use crate::support::*;
use clinic_relay::model::{EventKind, Patient};
use clinic_relay::webhook::media::MediaState;
use clinic_relay::whatsapp::media::{self, Document, MediaConfig};
use clinic_relay::whatsapp::message::Recipient;
use clinic_relay::whatsapp::outbox;
use graph_sim::webhooks::{deliver, inbound_media, Delivery};
use graph_sim::{Injection, Sim};
use jiff::SignedDuration;
use std::time::Duration;

const SECRET: &str = "media-app-secret";
const PDF_MARKER: &str = "ZZPDFMARKERq7Lk2";
const IMAGE_MARKER: &str = "ZZIMAGEMARKERw3Xp9";

/// A daemon with the outbox pointed at `sim` (live unless `dry_run`) and
/// the webhook receiver on loopback; `extra` goes into `[whatsapp]`.
async fn daemon(sim: &Sim, extra: &str, dry_run: bool) -> Daemon {
    let token = if dry_run {
        ""
    } else {
        "token_file = \"wa.token\"\n"
    };
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         {token}rate_per_second = 1000\n{extra}\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
        sim.base_url()
    ));
    install.wa_secrets(SECRET);
    Daemon::start_in(install).await
}

fn delivery(d: &Daemon) -> Delivery {
    Delivery {
        url: format!("http://{}/webhook", d.running.webhook_addr.unwrap()),
        app_secret: SECRET.to_owned(),
        shuffle: None,
        duplicate: false,
        per_call: 4,
    }
}

async fn add_patient(d: &Daemon, tag: &str) -> Patient {
    let vault = d.running.vault.clone();
    let tag = tag.to_owned();
    tokio::task::spawn_blocking(move || {
        let p = marker_patient(&vault, &tag);
        vault.put_patient(&p, "test", t0()).unwrap();
        p
    })
    .await
    .unwrap()
}

fn wa_id(p: &Patient) -> String {
    p.phone
        .as_deref()
        .unwrap()
        .trim_start_matches('+')
        .to_owned()
}

fn pdf() -> Vec<u8> {
    format!("%PDF-1.4\n% {PDF_MARKER}\n1 0 obj << >> endobj\n%%EOF\n").into_bytes()
}

fn state_of(d: &Daemon, wamid: &str) -> Option<MediaState> {
    d.running
        .vault
        .wa_inbound_media(wamid)
        .unwrap()
        .map(|m| m.state)
}

fn deletes(sim: &Sim, media_id: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.path.ends_with(&format!("/{media_id}")))
        .count()
}

async fn send_document(d: &Daemon, patient: Option<&Patient>, to: &str) {
    let doc = Document {
        pdf: pdf(),
        filename: "Befund.pdf".to_owned(),
        caption: Some("Ihr Befund".to_owned()),
    };
    media::enqueue_document(
        &d.running.vault,
        &MediaConfig::default(),
        patient.map(|p| p.id),
        Recipient::phone(to).unwrap(),
        doc,
        Some("result:1".to_owned()),
        t0(),
        None,
    )
    .await
    .unwrap();
}

/// The acceptance line of issue 9: upload + document + delete; inbound
/// media fetched and sealed; a marker scan of the data dir finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_document_delete_and_inbound_media_sealed_leave_no_clear_bytes() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok"));
    let d = daemon(&sim, "", false).await;
    let p = add_patient(&d, "31").await;

    // The patient sends a photo: fetched through the simulator, sealed.
    let image = format!("\u{ff}\u{d8}JPEG {IMAGE_MARKER} bytes").into_bytes();
    let (media_id, sha) = sim.add_media("image/jpeg", &image);
    let at = t0().as_second() as u64;
    let update = inbound_media(
        "wamid.IMG1",
        &wa_id(&p),
        "image",
        &media_id,
        "image/jpeg",
        &sha,
        at,
    );
    let statuses = deliver(&[update], &delivery(&d)).await.unwrap();
    assert_eq!(statuses, [200]);
    let fetched = until("the image is fetched", || {
        match state_of(&d, "wamid.IMG1") {
            Some(s @ MediaState::Fetched { .. }) => Some(s),
            _ => None,
        }
    })
    .await;
    let MediaState::Fetched { size, sha256, .. } = fetched else {
        unreachable!()
    };
    assert_eq!((size, sha256), (image.len() as u64, sha));
    assert_eq!(
        d.running
            .vault
            .wa_inbound_media_bytes("wamid.IMG1")
            .unwrap(),
        Some(image.clone())
    );
    let download = sim
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/whatsapp_business/attachments/"))
        .expect("downloaded from the URL Meta gave");
    assert_eq!(download.authorization.as_deref(), Some("Bearer tok"));

    // A PDF to the patient (the window is open: they just wrote).
    send_document(&d, Some(&p), p.phone.as_deref().unwrap()).await;
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.processed_at_least(1))
        .await
        .unwrap();
    let uploads: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/media"))
        .collect();
    assert_eq!(uploads.len(), 1);
    let body = String::from_utf8_lossy(&uploads[0].body).into_owned();
    assert!(
        body.contains("name=\"messaging_product\"\r\n\r\nwhatsapp"),
        "{body}"
    );
    assert!(
        body.contains("name=\"type\"\r\n\r\napplication/pdf"),
        "{body}"
    );
    assert!(
        body.contains("filename=\"document.pdf\""),
        "neutral name: {body}"
    );
    let media_ids = sim.media_ids();
    let pdf_id = media_ids
        .iter()
        .find(|id| sim.media_bytes(id) == Some(pdf()))
        .expect("the PDF is at Meta")
        .clone();
    let sent = sim.sent_messages();
    let doc = sent.iter().find(|m| m["type"] == "document").unwrap();
    assert_eq!(doc["document"]["id"], pdf_id.as_str());
    assert_eq!(doc["document"]["filename"], "Befund.pdf");
    assert!(doc.get("x_vault_document").is_none(), "{doc}");
    let record = outbox::sent(&d.running.vault).unwrap().pop().unwrap();
    assert_eq!(record.media_id.as_deref(), Some(pdf_id.as_str()));
    assert_eq!(
        media::queued_documents(&d.running.vault),
        0,
        "PDF left the vault"
    );
    assert_eq!(deletes(&sim, &pdf_id), 0, "not before it is delivered");

    // Meta reports the lifecycle: `delivered` deletes the upload at once.
    let statuses = deliver(&sim.status_updates(at + 5), &delivery(&d))
        .await
        .unwrap();
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(
        sim.wait_for(Duration::from_secs(20), |r| r
            .iter()
            .any(|r| r.method == "DELETE"
                && r.path.ends_with(&format!("/{pdf_id}"))
                && r.status == 200))
            .await,
        "DELETE /{{media-id}} after delivered"
    );
    assert!(!sim.media_ids().contains(&pdf_id));

    let install = d.stop().await;
    let vault = install.open();
    let actions: Vec<(String, Option<String>)> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action.starts_with("whatsapp.media."))
        .map(|e| (e.action, e.subject))
        .collect();
    assert_eq!(
        actions,
        [
            ("whatsapp.media.fetched".to_owned(), Some(p.id.to_string())),
            ("whatsapp.media.deleted-at-meta".to_owned(), None),
        ]
    );
    vault.close().unwrap();
    let hits = scan_dir(
        &install.data,
        &[PDF_MARKER.to_owned(), IMAGE_MARKER.to_owned()],
    );
    assert!(hits.is_empty(), "clear media bytes on disk: {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_upload_is_deleted_at_its_ttl_and_a_retry_reuses_it() {
    let sim = Sim::start().await.unwrap();
    let d = daemon(&sim, "media_ttl = \"2h\"\n", false).await;
    // The first send fails (transient): the retry must not upload again.
    sim.inject(Injection::code(131000));
    send_document(&d, None, "+4915550061").await;
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while handle.processed() < 1 {
            handle.kick();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let uploads = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/media"))
        .count();
    let docs: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/messages"))
        .collect();
    assert_eq!((uploads, docs.len()), (1, 2), "one upload, sent twice");
    let media_id = sim.media_ids().pop().unwrap();

    // No status comes. Before the TTL nothing is deleted...
    let media = d.running.wa_media.clone().unwrap();
    d.clock.advance(SignedDuration::from_mins(119));
    let settled = media.settled();
    let now = clinic_relay::clock::Clock::now(&d.clock);
    tokio::time::timeout(Duration::from_secs(20), media.looked_at(now))
        .await
        .unwrap();
    assert_eq!(media.settled(), settled);
    assert_eq!(deletes(&sim, &media_id), 0);
    // ...at the TTL it is.
    d.clock.advance(SignedDuration::from_mins(2));
    media.kick();
    assert!(
        sim.wait_for(Duration::from_secs(20), |r| r
            .iter()
            .any(|r| r.method == "DELETE" && r.status == 200))
            .await
    );
    assert!(sim.media_ids().is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_inbound_media_is_refused_with_an_event_and_fetched_media_is_purged() {
    let sim = Sim::start().await.unwrap();
    let d = daemon(
        &sim,
        "max_inbound_media_bytes = 2048\ninbound_media_retention = \"7d\"\n",
        false,
    )
    .await;
    let p = add_patient(&d, "32").await;
    let (big, big_sha) = sim.add_media("video/mp4", &vec![7u8; 4096]);
    let (small, small_sha) = sim.add_media("image/jpeg", b"small image");
    let (bad, _) = sim.add_media("image/jpeg", b"tampered image");
    let at = t0().as_second() as u64;
    let updates = [
        inbound_media(
            "wamid.BIG",
            &wa_id(&p),
            "video",
            &big,
            "video/mp4",
            &big_sha,
            at,
        ),
        inbound_media(
            "wamid.SMALL",
            &wa_id(&p),
            "image",
            &small,
            "image/jpeg",
            &small_sha,
            at,
        ),
    ];
    let mut updates = updates.to_vec();
    let wrong_sha = "00".repeat(32);
    updates.push(inbound_media(
        "wamid.BAD",
        &wa_id(&p),
        "image",
        &bad,
        "image/jpeg",
        &wrong_sha,
        at,
    ));
    deliver(&updates, &delivery(&d)).await.unwrap();
    until("all settled", || {
        let done = ["wamid.BIG", "wamid.SMALL", "wamid.BAD"]
            .iter()
            .all(|w| state_of(&d, w).is_some_and(|s| s != MediaState::Pending));
        done.then_some(())
    })
    .await;
    // A state is readable once applied; the feed shows an event only once
    // its commit is durable (a moment later): wait for that too.
    until("both refusals on the feed", || {
        let events = d.running.vault.events_after(0, 1000).unwrap();
        (events
            .iter()
            .filter(|(_, e)| e.kind == EventKind::WhatsappMediaRefused)
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        state_of(&d, "wamid.BAD"),
        Some(MediaState::Refused {
            reason: "sha256-mismatch".to_owned()
        })
    );
    assert_eq!(
        d.running.vault.wa_inbound_media_bytes("wamid.BAD").unwrap(),
        None
    );
    assert_eq!(
        state_of(&d, "wamid.BIG"),
        Some(MediaState::Refused {
            reason: "too-large".to_owned()
        })
    );
    assert_eq!(
        d.running.vault.wa_inbound_media_bytes("wamid.BIG").unwrap(),
        None
    );
    let events = d.running.vault.events_after(0, 1000).unwrap();
    let refused: Vec<_> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::WhatsappMediaRefused)
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let refused: Vec<_> = refused
        .into_iter()
        .filter(|(_, e)| e.details["reason"] == "too-large")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].1.patient, Some(p.id));
    assert_eq!(refused[0].1.details["reason"], "too-large");
    assert_eq!(refused[0].1.details["type"], "video");
    let big_downloads = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains(&format!("mid={big}")))
        .count();
    assert_eq!(big_downloads, 0, "Meta's file_size said no: not downloaded");

    // The retention ends: the bytes go, the record says so.
    assert!(matches!(
        state_of(&d, "wamid.SMALL"),
        Some(MediaState::Fetched { .. })
    ));
    d.clock.advance(SignedDuration::from_hours(7 * 24 + 1));
    d.running.wa_media.as_ref().unwrap().kick();
    until("purged", || {
        matches!(state_of(&d, "wamid.SMALL"), Some(MediaState::Purged { .. })).then_some(())
    })
    .await;
    assert_eq!(
        d.running
            .vault
            .wa_inbound_media_bytes("wamid.SMALL")
            .unwrap(),
        None
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dry_run_media_is_neither_fetched_nor_uploaded_and_nothing_connects() {
    let sim = Sim::start().await.unwrap();
    let d = daemon(&sim, "", true).await;
    assert!(d.running.wa_media.as_ref().unwrap().dry_run);
    let p = add_patient(&d, "33").await;
    let (id, sha) = sim.add_media("image/jpeg", b"img");
    let update = inbound_media(
        "wamid.DRY",
        &wa_id(&p),
        "image",
        &id,
        "image/jpeg",
        &sha,
        t0().as_second() as u64,
    );
    deliver(&[update], &delivery(&d)).await.unwrap();
    until("marked dry-run", || {
        (state_of(&d, "wamid.DRY")? == MediaState::DryRun).then_some(())
    })
    .await;
    // A document: recorded as sent (dry-run), nothing uploaded, the PDF
    // gone from the vault.
    send_document(&d, None, "+4915550093").await;
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.processed_at_least(1))
        .await
        .unwrap();
    let record = outbox::sent(&d.running.vault).unwrap().pop().unwrap();
    assert!(record.dry_run);
    assert_eq!(record.media_id, None);
    assert_eq!(media::queued_documents(&d.running.vault), 0);
    assert!(sim.requests().is_empty(), "dry-run connected to the API");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_limit_or_not_a_pdf_is_refused_at_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("data"), &key(9));
    let config = MediaConfig {
        max_document_bytes: 64,
        ..MediaConfig::default()
    };
    let try_send = |pdf: Vec<u8>| {
        media::enqueue_document(
            &vault,
            &config,
            None,
            Recipient::phone("+4915550071").unwrap(),
            Document {
                pdf,
                filename: "a.pdf".to_owned(),
                caption: None,
            },
            None,
            t0(),
            None,
        )
    };
    let e = try_send(vec![b'%'; 65]).await.unwrap_err().to_string();
    assert!(e.contains("max_document_bytes"), "{e}");
    let e = try_send(b"GIF89a".to_vec()).await.unwrap_err().to_string();
    assert!(e.contains("not a PDF"), "{e}");
    assert_eq!(vault.count(clinic_relay::vault::Tree::WaOutbox), 0);
    assert_eq!(media::queued_documents(&vault), 0);
}

/// The fetch is committed with the webhook: a daemon that stops before it
/// could fetch (the API unreachable) fetches after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_fetch_survives_a_restart() {
    let sim = Sim::start().await.unwrap();
    sim.refuse_connections(true);
    let d = daemon(&sim, "", false).await;
    let p = add_patient(&d, "34").await;
    let (id, sha) = sim.add_media("application/pdf", b"%PDF-1.4 from the patient");
    let at = t0().as_second() as u64;
    let update = inbound_media(
        "wamid.LATER",
        &wa_id(&p),
        "document",
        &id,
        "application/pdf",
        &sha,
        at,
    );
    deliver(&[update], &delivery(&d)).await.unwrap();
    let media = d.running.wa_media.clone().unwrap();
    until("a failed attempt", || (media.settled() >= 1).then_some(())).await;
    assert_eq!(state_of(&d, "wamid.LATER"), Some(MediaState::Pending));
    let install = d.stop().await;

    sim.refuse_connections(false);
    let d = Daemon::start_in(install).await;
    // The retry waits its back-off (seconds), on the daemon's clock.
    d.clock.advance(SignedDuration::from_secs(60));
    d.running.wa_media.as_ref().unwrap().kick();
    until("fetched after the restart", || {
        matches!(
            state_of(&d, "wamid.LATER"),
            Some(MediaState::Fetched { .. })
        )
        .then_some(())
    })
    .await;
    assert_eq!(
        d.running
            .vault
            .wa_inbound_media_bytes("wamid.LATER")
            .unwrap(),
        Some(b"%PDF-1.4 from the patient".to_vec())
    );
    d.stop().await;
}

/// A PDF whose item left the queue unsettled (dropped at its expiry) is
/// swept; one still queued is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_the_pdf_of_an_expired_item_only() {
    use clinic_relay::queue;
    use clinic_relay::whatsapp::outbox::{WaItem, WA_OUTBOX};
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("data"), &key(9));
    for (to, expires) in [
        ("+4915550081", Some(t0() + SignedDuration::from_secs(60))),
        ("+4915550082", None),
    ] {
        media::enqueue_document(
            &vault,
            &MediaConfig::default(),
            None,
            Recipient::phone(to).unwrap(),
            Document {
                pdf: pdf(),
                filename: "a.pdf".to_owned(),
                caption: None,
            },
            None,
            t0(),
            expires,
        )
        .await
        .unwrap();
    }
    let later = t0() + SignedDuration::from_mins(5);
    let taken = vault
        .write(move |v| {
            let busy = std::collections::HashSet::new();
            queue::take_batch::<WaItem>(v, &WA_OUTBOX, later, false, &busy, 10)
                .map(|(txn, batch)| (txn, batch.items.len()))
        })
        .await
        .unwrap()
        .value;
    assert_eq!(taken, 1, "the other one expired and was dropped");
    assert_eq!(media::queued_documents(&vault), 2);
    let swept = clinic_relay::whatsapp::media_sweep::sweep(&vault, later)
        .await
        .unwrap();
    assert_eq!(swept, 1);
    assert_eq!(media::queued_documents(&vault), 1);
}

/// Refused for good after the upload (131026): the PDF leaves the vault
/// and the upload is deleted at Meta at once. Refused at the upload
/// itself: the PDF leaves, nothing is left at Meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_leaves_the_vault_and_its_upload_is_deleted_at_once() {
    let sim = Sim::start().await.unwrap();
    let d = daemon(&sim, "", false).await;
    sim.inject(Injection::code(131026));
    send_document(&d, None, "+4915550091").await;
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.processed_at_least(1))
        .await
        .unwrap();
    assert_eq!(media::queued_documents(&d.running.vault), 0);
    assert!(
        sim.wait_for(Duration::from_secs(20), |r| r
            .iter()
            .any(|r| r.method == "DELETE" && r.status == 200))
            .await,
        "the upload is deleted at once"
    );
    assert!(sim.media_ids().is_empty());

    sim.inject(Injection::code(100).route(graph_sim::Route::Media));
    send_document(&d, None, "+4915550092").await;
    tokio::time::timeout(Duration::from_secs(20), handle.processed_at_least(2))
        .await
        .unwrap();
    assert_eq!(media::queued_documents(&d.running.vault), 0);
    assert!(sim.media_ids().is_empty());
    let rejected = d
        .running
        .vault
        .events_after(0, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.kind == EventKind::WhatsappMessageRejected)
        .map(|(_, e)| e.details["reason"].clone())
        .collect::<Vec<_>>();
    assert_eq!(rejected, ["refused:131026", "refused:100"]);
    d.stop().await;
}

/// Keys of the media tree by their first byte (`D`, `I`, `T`, …).
fn media_kinds(vault: &clinic_relay::vault::Vault) -> Vec<char> {
    vault
        .scan_raw(clinic_relay::vault::Tree::WaMedia)
        .map(|r| r.unwrap().0[0] as char)
        .collect()
}

/// An erased patient's media is unreadable at once (crypto-shredding) and
/// swept: their fetched image, and the PDF still queued for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_patients_media_is_unreadable_at_once_and_swept() {
    let sim = Sim::start().await.unwrap();
    let d = daemon(&sim, "", false).await;
    let p = add_patient(&d, "35").await;
    let (id, sha) = sim.add_media("image/jpeg", b"an image");
    let at = t0().as_second() as u64;
    let update = inbound_media("wamid.ER", &wa_id(&p), "image", &id, "image/jpeg", &sha, at);
    deliver(&[update], &delivery(&d)).await.unwrap();
    until("fetched", || {
        matches!(state_of(&d, "wamid.ER"), Some(MediaState::Fetched { .. })).then_some(())
    })
    .await;
    // A PDF that cannot go out yet (Meta unreachable).
    sim.refuse_connections(true);
    send_document(&d, Some(&p), p.phone.as_deref().unwrap()).await;
    assert_eq!(media::queued_documents(&d.running.vault), 1);

    let vault = d.running.vault.clone();
    assert!(vault.erase_patient_async(p.id, "test", t0()).await.unwrap());
    assert!(vault.wa_inbound_media("wamid.ER").unwrap().is_none());
    assert_eq!(vault.wa_inbound_media_bytes("wamid.ER").unwrap(), None);
    // The outbox drops the erased patient's item; the sweep takes the rest.
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the item is dropped", || {
        (vault.count(clinic_relay::vault::Tree::WaOutbox) == 0).then_some(())
    })
    .await;
    clinic_relay::whatsapp::media_sweep::sweep(&vault, t0())
        .await
        .unwrap();
    let left = media_kinds(&vault);
    assert!(
        !left
            .iter()
            .any(|k| matches!(k, 'D' | 'd' | 'I' | 'i' | 'r')),
        "{left:?}"
    );
    d.stop().await;
}

/// A result outside the 24-hour window goes as the approved template with
/// a document header (`lab_result_ready`): the PDF is uploaded the same way
/// and its media id goes into the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_a_document_header_carries_the_uploaded_pdf() {
    use clinic_relay::whatsapp::message::{Params, TemplateSpec};
    let sim = Sim::start().await.unwrap();
    sim.add_template(graph_sim::Template::approved("lab_result_ready", "de"));
    let d = daemon(&sim, "", false).await;
    let p = add_patient(&d, "36").await;
    let spec = TemplateSpec {
        name: "lab_result_ready",
        language: "de",
        header: None,
        body: Params::Positional(vec![]),
        quick_replies: vec![],
    };
    let to = Recipient::phone(p.phone.as_deref().unwrap()).unwrap();
    let pid = p.id;
    d.running
        .vault
        .write(move |v| {
            let mut txn = clinic_relay::vault::Txn::new(t0());
            media::stage_template_document(
                v,
                &mut txn,
                &MediaConfig::default(),
                Some(pid),
                to,
                pdf(),
                "Befund.pdf",
                &spec,
                None,
                t0(),
                None,
            )?;
            Ok::<_, media::MediaError>((txn, ()))
        })
        .await
        .unwrap();
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.processed_at_least(1))
        .await
        .unwrap();
    let sent = sim.sent_messages();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let header = &sent[0]["template"]["components"][0]["parameters"][0]["document"];
    let media_id = sim.media_ids().pop().expect("uploaded");
    assert_eq!(header["id"], media_id.as_str());
    assert_eq!(header["filename"], "Befund.pdf");
    assert!(sent[0].get("x_vault_document_at").is_none());
    assert_eq!(sim.media_bytes(&media_id), Some(pdf()));
    let record = outbox::sent(&d.running.vault).unwrap().pop().unwrap();
    assert_eq!(record.media_id.as_deref(), Some(media_id.as_str()));
    assert_eq!(media::queued_documents(&d.running.vault), 0);
    d.stop().await;
}

/// Through a Business Solution Provider the token goes in its header, for
/// the media download too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsp_auth_header_is_used_for_the_media_download() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok"));
    sim.token_header(Some("D360-API-KEY"));
    let d = daemon(&sim, "auth_header = \"D360-API-KEY\"\n", false).await;
    let p = add_patient(&d, "37").await;
    let (id, sha) = sim.add_media("image/png", b"png bytes");
    let at = t0().as_second() as u64;
    let update = inbound_media("wamid.BSP", &wa_id(&p), "image", &id, "image/png", &sha, at);
    deliver(&[update], &delivery(&d)).await.unwrap();
    until("fetched through the BSP header", || {
        matches!(state_of(&d, "wamid.BSP"), Some(MediaState::Fetched { .. })).then_some(())
    })
    .await;
    let download = sim
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/whatsapp_business/attachments/"))
        .unwrap();
    assert_eq!(download.authorization, None, "no Bearer to a BSP");
    d.stop().await;
}
