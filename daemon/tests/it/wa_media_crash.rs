//! kill -9 while the real daemon uploads and sends documents: no PDF is
//! lost, every document is recorded as sent once with its media id, and
//! every upload a sent record names is deleted at Meta afterwards. Only an
//! upload whose answer the kill cut off before its media id was committed
//! stays at Meta (Meta deletes it after 30 days): at most `concurrency`
//! per kill.

use crate::pms_support::Daemon;
use crate::support::*;
use clinic_relay::whatsapp::media::{self, Document, MediaConfig};
use clinic_relay::whatsapp::message::Recipient;
use clinic_relay::whatsapp::outbox;
use graph_sim::Sim;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const ROUNDS: u64 = 10;
const RECIPIENTS: usize = 8;
const PER_RECIPIENT: usize = 5;
const CONCURRENCY: usize = 8;

fn to(r: usize) -> String {
    format!("+49155510{r:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_uploading_loses_no_document_and_leaves_only_cut_uploads() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-media"));
    // Slow answers: kills land between upload, send and commit.
    sim.delay(Some(Duration::from_millis(5)));
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\nconcurrency = {CONCURRENCY}\n",
        sim.base_url()
    ));
    std::fs::write(install.tmp.path().join("wa.token"), "tok-media\n").unwrap();
    let vault = install.open();
    // Due in the past: the spawned daemon runs on the real clock.
    let queued_at = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    for i in 0..PER_RECIPIENT {
        for r in 0..RECIPIENTS {
            let doc = Document {
                pdf: format!("%PDF-1.4 doc {r}/{i}").into_bytes(),
                filename: format!("doc-{i}.pdf"),
                caption: None,
            };
            let to = Recipient::phone(&to(r)).unwrap();
            let config = MediaConfig::default();
            media::enqueue_document(&vault, &config, None, to, doc, None, queued_at, None)
                .await
                .unwrap();
        }
    }
    vault.close().unwrap();
    let total = RECIPIENTS * PER_RECIPIENT;

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    for _ in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before = sim.requests().iter().filter(|q| q.status == 200).count();
        if sim.sent_messages().len() >= total {
            break;
        }
        let target = before + 1 + (seed % 10) as usize;
        let mut child = spawn_quiet(&install);
        sim.wait_for(Duration::from_secs(10), |r| {
            r.iter().filter(|q| q.status == 200).count() >= target
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }

    // A last run in process finishes the queue. Its clock (2027) is past
    // the TTL of every upload of the killed runs (set from the real clock).
    sim.delay(None);
    let d = Daemon::start_in(install).await;
    let vault = d.running.vault.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while vault.count(clinic_relay::vault::Tree::WaOutbox) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the queue drains");
        d.running.whatsapp.as_ref().unwrap().kick();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records = outbox::sent(&vault).unwrap();
    assert_eq!(records.len(), total, "each document recorded once");
    assert_eq!(media::queued_documents(&vault), 0, "no PDF left behind");
    let named: HashSet<String> = records.iter().filter_map(|r| r.media_id.clone()).collect();
    assert_eq!(named.len(), total, "each record names its own upload");
    let media = d.running.wa_media.clone().unwrap();
    // No status webhooks here: the uploads of this last run are deleted at
    // their TTL too.
    d.clock.advance(jiff::SignedDuration::from_hours(25));
    while sim.media_ids().iter().any(|id| named.contains(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sent uploads deleted"
        );
        media.kick();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orphans = sim.media_ids().len();
    assert!(
        orphans <= kills * CONCURRENCY,
        "{orphans} uploads left for {kills} kills"
    );

    // Every document reached its recipient, in order (a duplicate directly
    // follows its first copy).
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in sim.sent_messages() {
        per.entry(m["to"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["document"]["filename"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..PER_RECIPIENT).map(|i| format!("doc-{i}.pdf")).collect();
    for r in 0..RECIPIENTS {
        let mut got = per.remove(&to(r)).unwrap_or_default();
        got.dedup();
        assert_eq!(got, want, "recipient {r}");
    }
    let uploads = sim
        .requests()
        .iter()
        .filter(|q| q.method == "POST" && q.path.ends_with("/media") && q.status == 200)
        .count();
    eprintln!(
        "kill -9: {kills} kills, {uploads} uploads for {total} documents, {orphans} left at Meta"
    );
    assert!(kills >= 5, "only {kills} kills landed while sending");
    d.stop().await;
}
