//! kill -9 while the real daemon sends the WhatsApp outbox to the
//! simulator, 20 times at random points. No committed message is lost;
//! a message is sent twice only if the kill fell between Meta's answer and
//! the commit that records it (at most `concurrency` per kill), and each
//! is recorded as sent exactly once.

use crate::support::*;
use clinic_relay::whatsapp::message::{self, Recipient};
use clinic_relay::whatsapp::outbox::{self, WaItem};
use graph_sim::Sim;
use std::collections::BTreeMap;
use std::time::Duration;

const ROUNDS: u64 = 20;
const RECIPIENTS: usize = 16;
const PER_RECIPIENT: usize = 25;
const CONCURRENCY: usize = 16;

fn to(r: usize) -> String {
    format!("+49155500{r:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sending_loses_nothing_and_duplicates_stay_in_the_window() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-crash"));
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\nconcurrency = {CONCURRENCY}\n",
        sim.base_url()
    ));
    std::fs::write(install.tmp.path().join("wa.token"), "tok-crash\n").unwrap();
    // Everything is committed before the daemon first runs.
    let vault = install.open();
    for i in 0..PER_RECIPIENT {
        for r in 0..RECIPIENTS {
            let item = WaItem {
                patient: None,
                recipient: Some(Recipient::phone(&to(r)).unwrap()),
                message: message::text(&format!("{i:03}")).unwrap(),
                reference: None,
            };
            // Due in the past: the daemon runs on the real clock.
            let queued_at = jiff::Timestamp::from_second(1_700_000_000).unwrap();
            outbox::enqueue(&vault, item, queued_at, None)
                .await
                .unwrap();
        }
    }
    vault.close().unwrap();
    let total = RECIPIENTS * PER_RECIPIENT;

    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut kills = 0;
    for _ in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before = sim.sent_messages().len();
        if before >= total {
            break;
        }
        let target = before + 1 + (seed % 12) as usize;
        let mut child = spawn_quiet(&install);
        sim.wait_for(Duration::from_secs(10), |r| {
            r.iter().filter(|q| q.status == 200).count() >= target
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    // A last run finishes the queue.
    let mut child = spawn_quiet(&install);
    let distinct = |sim: &Sim| {
        let mut seen = std::collections::HashSet::new();
        for m in sim.sent_messages() {
            seen.insert((m["to"].to_string(), m["text"]["body"].to_string()));
        }
        seen.len()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while distinct(&sim) < total && tokio::time::Instant::now() < deadline {
        sim.wait_for(Duration::from_millis(200), |_| false).await;
    }
    // Stop it cleanly: the last answers are recorded before it exits.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    child.wait().unwrap();

    assert!(kills >= 15, "only {kills} kills landed while sending");
    let sent = sim.sent_messages();
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &sent {
        per.entry(m["to"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["text"]["body"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..PER_RECIPIENT).map(|i| format!("{i:03}")).collect();
    for r in 0..RECIPIENTS {
        let mut got = per.remove(&to(r)).unwrap_or_default();
        // A duplicate is the in-flight message sent again after the restart:
        // it directly follows its first copy.
        got.dedup();
        assert_eq!(got, want, "recipient {r}");
    }
    let duplicates = sent.len() - total;
    assert!(
        duplicates <= kills * CONCURRENCY,
        "{duplicates} duplicates for {kills} kills"
    );
    let vault = install.open();
    assert_eq!(vault.count(clinic_relay::vault::Tree::WaOutbox), 0);
    let records = outbox::sent(&vault).unwrap();
    assert_eq!(records.len(), total, "each message recorded once");
    eprintln!(
        "kill -9: {kills} kills, {} sends for {total} messages ({duplicates} duplicates)",
        sent.len()
    );
}
