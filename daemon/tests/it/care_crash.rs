//! kill -9 around reminders' due times (issue 10): each reminder reaches
//! WhatsApp exactly once, never zero times, never twice.
//!
//! 40 patients are booked (real MLLP, opted in) with visits whose one
//! reminder falls due, one after another, over about 24 s of real time.
//! Then the real binary is SIGKILLed 20–24 times while the reminders go out.
//! The simulator answers each accepted message only after a delay, so most
//! kills land between Meta taking a message and the daemon learning it:
//! the send is in doubt. After each restart the test delivers the status
//! webhooks of every message the simulator accepted (echoing each send's
//! callback data), as Meta keeps retrying them until the receiver is back.
//! Finally every appointment's reminder must be at the simulator once.
//! Spawns the real binary because it kills it.

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::commands::{self, Command, Origin};
use clinic_relay::model::{ConsentSource, ConsentState};
use graph_sim::webhooks::{deliver, Delivery};
use graph_sim::{Sim, Template};
use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

const PATIENTS: usize = 40;
const ROUNDS: u64 = 24;
const SECRET: &str = "care-crash-app-secret";
/// Meta holds the message this long before answering: the window a kill
/// must not turn into a second send.
const ANSWER_DELAY: Duration = Duration::from_millis(300);

fn siu(i: usize, start: Timestamp) -> String {
    let start = start.strftime("%Y%m%d%H%M%S+0000").to_string();
    [
        msh("SIU^S12^SIU_S12", &format!("KC{i:03}"), "2.5.1"),
        format!("SCH|KAPPT{i:03}^ZZPMS|KAPPT{i:03}^ZZPMS|||||CHECKUP||||^^30^{start}^||||||||||||||Booked"),
        format!("PID|1||ZZKC{i:03}^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN||19010203|F|||||0151 5550 {:04}", 100 + i),
        "RGS|1|A".to_owned(),
        format!("AIS|1|A|CHECKUP|{start}|0|MIN|30|MIN"),
    ]
    .join("\r")
}

/// The reminders the simulator accepted, per appointment (the Confirm
/// button's payload names it opaquely).
fn reminders_per_appointment(sim: &Sim) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for m in sim.sent_messages() {
        if m["type"] != "template" {
            continue;
        }
        let payload = crate::care_reminders::payloads(&m)
            .into_iter()
            .next()
            .expect("a Confirm button");
        *per.entry(payload).or_insert(0) += 1;
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_due_times_sends_each_reminder_exactly_once() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let hold = std::env::var("CARE_CRASH_HOLD").unwrap_or_else(|_| "10s".to_owned());
    let install = TestInstall::new(&format!(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\nphone_region = \"DE\"\n\n\
         [whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\nconcurrency = 8\n\
         in_doubt_hold = \"{hold}\"\n\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n\n\
         [reminders]\nfirst = \"1m\"\nsecond = \"\"\nallowed_hours = \"00:00-23:59\"\n",
        sim.base_url()
    ));
    install.wa_secrets(SECRET);

    // Book and opt in (in process, on the real clock), then stop.
    let d = Daemon::start_in(install).await;
    // The real binary runs on the system clock, so the bookings do too.
    let now = clinic_relay::clock::Clock::now(&clinic_relay::clock::SystemClock);
    d.clock.set(now);
    // Reminders due from 8 s from now, one every 0.6 s.
    let first_due = now + SignedDuration::from_secs(8);
    let mut c = d.mllp().await;
    for i in 0..PATIENTS {
        let due = first_due + SignedDuration::from_millis(600 * i as i64);
        let ack = c.send(&siu(i, due + SignedDuration::from_mins(1))).await;
        assert_eq!(msa(&ack).0, "AA", "{ack:?}");
        let patient = d
            .running
            .vault
            .find_patients_by_mrn("", &format!("ZZKC{i:03}"))
            .unwrap()[0];
        commands::apply(
            &d.running.vault,
            vec![Command::SetConsent {
                patient,
                state: ConsentState::OptedIn,
                source: ConsentSource::Staff,
            }],
            Origin::new("test"),
            now,
        )
        .await
        .unwrap();
    }
    drop(c);
    let install = d.stop().await;
    sim.answer_delay(Some(ANSWER_DELAY));

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    let mut in_window = 0;
    for _ in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before = sim_accepted(&sim);
        if before >= PATIENTS && kills >= 20 {
            break;
        }
        let mut served = spawn_serve(&install);
        // Meta's retries of every status so far reach the restarted daemon.
        let delivery = Delivery {
            url: format!("http://{}/webhook", served.webhook.unwrap()),
            app_secret: SECRET.to_owned(),
            shuffle: None,
            duplicate: false,
            per_call: 10,
        };
        let statuses = sim.status_updates(1_800_000_000);
        for code in deliver(&statuses, &delivery).await.unwrap() {
            assert_eq!(code, 200);
        }
        // Kill once 1–3 more messages were accepted (their answers are
        // still on the way), or at a random moment if none come soon.
        let target = before + 1 + (seed % 3) as usize;
        let reached = sim
            .wait_for(Duration::from_millis(2_000 + seed % 1_500), |r| {
                accepted_in(r) >= target
            })
            .await;
        served.child.kill().unwrap();
        served.child.wait().unwrap();
        kills += 1;
        in_window += usize::from(reached);
    }
    assert!(
        kills >= 20,
        "only {kills} kills before every reminder was out"
    );

    // A last run: the statuses once more, and the rest of the reminders
    // (those whose send never reached Meta go after the hold).
    sim.answer_delay(None);
    let mut served = spawn_serve(&install);
    let delivery = Delivery {
        url: format!("http://{}/webhook", served.webhook.unwrap()),
        app_secret: SECRET.to_owned(),
        shuffle: None,
        duplicate: false,
        per_call: 10,
    };
    deliver(&sim.status_updates(1_800_000_000), &delivery)
        .await
        .unwrap();
    // Done when every reminder is out and nothing is left queued (an item
    // still in doubt would go out again after the hold).
    let socket = install.tmp.path().join("api.sock");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let (code, status) = api_call(&socket, "GET", "/v1/status", None, &[]).await;
        assert_eq!(code, 200);
        if sim_accepted(&sim) >= PATIENTS && status["whatsapp"]["outbox_depth"] == 0 {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let per = reminders_per_appointment(&sim);
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    assert!(all, "never zero: only {} of {PATIENTS} out", per.len());
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "never twice: {} of {} reminders went out more than once after {kills} kills \
         ({in_window} inside the answer window)",
        twice.len(),
        per.len()
    );
    assert_eq!(per.len(), PATIENTS);
    eprintln!("{kills} kills, {in_window} with sends in doubt; {PATIENTS} reminders, each once");
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);
}

fn sim_accepted(sim: &Sim) -> usize {
    accepted_in(&sim.requests())
}

/// Messages the simulator accepted, from its record of requests.
fn accepted_in(recorded: &[graph_sim::Recorded]) -> usize {
    recorded
        .iter()
        .filter(|r| r.status == 200 && r.path.ends_with("/messages"))
        .count()
}
