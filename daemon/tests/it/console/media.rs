//! A patient's photo and document in the console's conversation page: the
//! photo shown, the document downloadable, both only with a session, each
//! read audited with the staff member as actor; a scriptable image type is
//! only a download link, never an `<img>`.

use super::client::*;
use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::meta_json;
use clinic_relay::model::EventKind;
use graph_sim::Sim;
use serde_json::json;

/// Posts a media message from `WA_ID` as a signed webhook.
pub(super) async fn send_media(
    d: &Daemon,
    sim: &Sim,
    wamid: &str,
    kind: &str,
    mime: &str,
    bytes: &[u8],
) {
    let (media_id, sha) = sim.add_media(mime, bytes);
    let update = graph_sim::webhooks::inbound_media(
        wamid,
        WA_ID,
        kind,
        &media_id,
        mime,
        &sha,
        1_800_000_050,
    );
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": update}]}]
    });
    assert_eq!(post_signed(d, meta_json(&body)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_shows_the_patients_photo_and_offers_the_document() {
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;
    let photo = b"JPEG ZZPHOTOMARKER bytes".to_vec();
    let letter = b"%PDF-1.4 ZZLETTERMARKER".to_vec();
    let drawing =
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>".to_vec();
    send_media(&d, &sim, "wamid.M1", "image", "image/jpeg", &photo).await;
    let conv = until("handed to staff", || {
        let e = crate::webhook::events(&d, EventKind::StaffRequested);
        e.first().map(|e| e.details["conversation"].clone())
    })
    .await;
    send_media(&d, &sim, "wamid.M2", "document", "application/pdf", &letter).await;
    send_media(&d, &sim, "wamid.M3", "image", "image/svg+xml", &drawing).await;

    let mut b = Browser::new(&d);
    // Signed out: no media, only the sign-in page.
    let r = b.get(&format!("/c/{conv}/m/1")).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);

    // The media worker fetches each from the simulator after its webhook.
    let mut tries = 0;
    let page = loop {
        let page = b.get(&format!("/c/{conv}")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        if page.body.matches(" KiB)").count() == 3 {
            break page;
        }
        tries += 1;
        assert!(tries < 500, "the media were not fetched: {}", page.body);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let links: Vec<String> = page
        .body
        .match_indices(&format!("/c/{conv}/m/"))
        .map(|(i, _)| {
            let rest = &page.body[i..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect();
    // The photo: an <img> and a link; the PDF and the SVG: a link each.
    assert_eq!(page.body.matches("<img src=").count(), 1, "{}", page.body);
    assert_eq!(links.len(), 4, "{links:?}");
    let img = &links[0];
    assert!(page.body.contains(&format!(
        "<img src=\"{img}\" alt=\"Photo sent by the patient\""
    )));
    assert!(page.body.contains("(application/pdf, 1 KiB)"));
    assert!(page.body.contains("(image/svg+xml, 1 KiB)"));
    for marker in ["ZZPHOTOMARKER", "ZZLETTERMARKER", "<script>alert"] {
        assert!(!page.body.contains(marker), "{marker} on the page");
    }

    let got = b.get(img).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert_eq!(got.header("cache-control"), Some("no-store"));
    assert_eq!(got.body.as_bytes(), photo.as_slice());
    let pdf = b.get(&links[2]).await;
    assert_eq!(pdf.status, 200);
    assert_eq!(pdf.header("content-type"), Some("application/pdf"));
    assert_eq!(pdf.header("content-disposition"), Some("attachment"));
    assert_eq!(pdf.body.as_bytes(), letter.as_slice());
    // The SVG goes out as an attachment under the CSP, never rendered.
    let svg = b.get(&links[3]).await;
    assert_eq!(svg.header("content-disposition"), Some("attachment"));
    assert!(svg
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    // A message without media (the bot's answer), and ones that do not
    // exist.
    let bare = (0..9)
        .map(|n| format!("/c/{conv}/m/{n}"))
        .find(|p| !links.contains(p))
        .unwrap();
    assert_eq!(b.get(&bare).await.status, 404);
    for n in ["99", "x"] {
        assert_eq!(b.get(&format!("/c/{conv}/m/{n}")).await.status, 404);
    }

    // Each opened file is audited, the staff member as actor.
    let vault = d.stop().await.open();
    let reads: Vec<_> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action == "conversation.media-read")
        .collect();
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|e| e.actor == "staff:zz-desk"));
}
