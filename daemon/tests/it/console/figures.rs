//! Figures and the real-browser run of the console: ignored tests, run by
//! hand (`-- --ignored --nocapture`) or by `scripts/console-browser`.

use super::client::*;
use crate::care_reminders::*;
use crate::support::*;
use crate::webhook::text_message;
use clinic_relay::clock::Clock;
use clinic_relay::console::staff;
use graph_sim::{Sim, Template};
use jiff::SignedDuration;
use tokio::io::AsyncWriteExt;

/// The inbox page's server time with 500 waiting conversations (unknown
/// senders, so no patient records are needed). A figure, not a gate:
/// `cargo test --test it console::figures::inbox_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
#[allow(clippy::disallowed_methods)] // wall time is what is measured here
async fn inbox_time_with_500_waiting() {
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;
    for n in 0..500u32 {
        let from = format!("4930555{n:05}");
        let hi = text_message(
            &format!("wamid.P{n}"),
            &from,
            "ZZ",
            "I need to talk to someone",
        );
        assert_eq!(post_signed(&d, hi).await, 200);
    }
    drain(&d).await;
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = b.get("/").await;
        times.push(started.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.body.matches("<tr><td>").count(), 500);
    }
    times.sort();
    println!(
        "inbox page with 500 waiting, request over TLS (new connection each): median {:?}, max {:?}",
        times[10], times[19]
    );
    // A new hand-off reaches an open inbox's stream: from the webhook's
    // POST to the event at the browser.
    let mut lags = Vec::new();
    for n in 0..10u32 {
        let mut live = b.events().await;
        read_until(&mut live, "retry: 3000").await;
        let started = std::time::Instant::now();
        let hi = text_message(
            &format!("wamid.L{n}"),
            &format!("4930666{n:05}"),
            "ZZ",
            "I need to talk to someone",
        );
        assert_eq!(post_signed(&d, hi).await, 200);
        read_until(&mut live, "event: inbox").await;
        lags.push(started.elapsed());
    }
    lags.sort();
    println!(
        "new hand-off to the open inbox's event stream: median {:?}, max {:?}",
        lags[5], lags[9]
    );
    d.stop().await;
}

/// The dashboard's server time with 30 days of KPIs (100 staff replies and
/// 100 opt-outs a day, 6,000 entries, staged through the KPI hooks). A
/// figure, not a gate:
/// `cargo test --test it console::figures::dashboard_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
#[allow(clippy::disallowed_methods)] // wall time is what is measured here
async fn dashboard_time_with_30_days_of_kpis() {
    use clinic_relay::model::PatientId;
    use clinic_relay::vault::Txn;
    let sim = Sim::start().await.unwrap();
    let (d, _) = setup(&sim).await;
    let vault = d.running.vault.clone();
    let admin = tokio::task::spawn_blocking(move || {
        for day in 0..30i64 {
            let at = t0() - SignedDuration::from_hours(24 * day);
            let mut txn = Txn::new(at);
            for n in 0..100u8 {
                let conv = [
                    n,
                    u8::try_from(day).unwrap(),
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                ];
                let since = at - SignedDuration::from_secs(60 * i64::from(n));
                clinic_relay::kpi::on_staff_reply(&vault, &mut txn, &conv, since, at);
                clinic_relay::kpi::on_opt_out(&vault, &mut txn, PatientId([n; 16]), since).unwrap();
            }
            vault.commit(txn).unwrap();
        }
        staff::add(
            &vault,
            "zz-admin",
            staff::Role::Admin,
            Some(PASSWORD.to_owned().into()),
            "test",
            t0(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let secret = staff::secret_from_uri(&admin.otpauth).unwrap();
    let mut b = Browser::new(&d);
    assert_eq!(
        b.sign_in_as(&d, "zz-admin", &secret, None).await.status,
        303
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = b.get("/admin").await;
        times.push(started.elapsed());
        assert_eq!(r.status, 200);
        assert!(
            r.body.contains("<dd>100 min (3000 first replies)</dd>")
                || r.body.contains("3000 first replies"),
            "{}",
            &r.body[..2000.min(r.body.len())]
        );
    }
    times.sort();
    println!(
        "dashboard with 30 days of KPIs (6,000 entries), request over TLS (new connection each): median {:?}, max {:?}",
        times[10], times[19]
    );
    d.stop().await;
}

/// The console in Debian's Chromium, driven by npm `playwright-core`
/// (`tests/console-browser/run.mjs`), with an axe-core scan of each page
/// and screenshots in `target/console-screenshots/`. Needs `chromium` and
/// `npm ci` in `tests/console-browser`: run by `scripts/console-browser`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn browser() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("conversation_reopen", "en"));
    let (d, secret) = setup(&sim).await;
    let vault = d.running.vault.clone();
    let enrolment = tokio::task::spawn_blocking(move || {
        staff::add(
            &vault,
            "zz-admin",
            staff::Role::Admin,
            Some(PASSWORD.to_owned().into()),
            "test",
            t0(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let admin_secret = staff::secret_from_uri(&enrolment.otpauth).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg(root.join("tests/console-browser/run.mjs"))
        .env(
            "CONSOLE_URL",
            format!("https://{}", d.running.console_addr.unwrap()),
        )
        .env("STAFF", "zz-desk")
        .env("PASSWORD", PASSWORD)
        .env("TOTP_HEX", hex::encode(&secret))
        .env("ADMIN", "zz-admin")
        .env("ADMIN_TOTP_HEX", hex::encode(&admin_secret))
        .env("SHOTS", &shots)
        .env("NOW", d.clock.now().as_second().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("browser: {line}");
            if line == "handoff" {
                hand_off(&d, "wamid.B1", WA_ID).await;
            } else if line == "photo" {
                let png = include_bytes!("../fixtures/zz-photo.png");
                super::media::send_media(&d, &sim, "wamid.B2", "image", "image/png", png).await;
            } else if let Some(secs) = line.strip_prefix("clock ") {
                d.clock
                    .advance(SignedDuration::from_secs(secs.parse().unwrap()));
            } else {
                log.push(line);
                continue;
            }
            let answer = format!("ok {}\n", d.clock.now().as_second());
            stdin.write_all(answer.as_bytes()).await.unwrap();
        }
        node.wait().await.unwrap()
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the browser test finished in time");
    assert!(status.success(), "browser test failed:\n{}", log.join("\n"));
    assert!(log.iter().any(|l| l == "browser test: all passed"));
    drain(&d).await;
    until("the browser's reply at the simulator", || {
        sim.sent_messages()
            .iter()
            .any(|m| m["text"]["body"] == "ZZ staff: a reply from the browser")
            .then_some(())
    })
    .await;
    assert!(!sim
        .sent_messages()
        .iter()
        .any(|m| m["text"]["body"] == "ZZ forged"));
    d.stop().await;
}

/// The real binary's RSS without the console, with it, and with 20 staff
/// sessions open (each has loaded the inbox once). A figure, not a gate:
/// `cargo test --test it console::figures::rss -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
#[allow(clippy::disallowed_methods)] // the real daemon's TOTP runs on the wall clock
async fn rss_with_20_sessions() {
    let install = TestInstall::new("");
    let mut off = spawn_serve(&install);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let rss_off = rss_kb(off.child.id());
    off.child.kill().unwrap();
    off.child.wait().unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = std::fs::read_to_string(&install.config).unwrap();
    config.push_str(&format!("\n[console]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&install.config, config).unwrap();
    let mut accounts = Vec::new();
    for n in 0..20 {
        let name = format!("zz-desk{n}");
        let out = install.run(&["staff", "add", &name]);
        let text = stdout(&out);
        let password = text
            .lines()
            .find_map(|l| l.split_once("(shown once): ").map(|(_, p)| p.to_owned()))
            .unwrap();
        let uri = text.lines().find(|l| l.starts_with("otpauth://")).unwrap();
        accounts.push((name, password, staff::secret_from_uri(uri).unwrap()));
    }
    let mut on = spawn_serve(&install);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pem = install.data.join("console-cert.pem");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let rss_on = rss_kb(on.child.id());
    let mut open = Vec::new();
    for (name, password, secret) in &accounts {
        let mut b = Browser::at(addr, &pem);
        let page = b.get("/login").await;
        let code = staff::code_at(secret, jiff::Timestamp::now()).unwrap();
        let r = b
            .post(
                "/login",
                &[
                    ("csrf", &page.csrf()),
                    ("name", name),
                    ("password", password),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(b.get("/").await.status, 200);
        open.push(b);
    }
    let rss_sessions = rss_kb(on.child.id());
    println!(
        "RSS: console off {rss_off} kB; console on {rss_on} kB; with 20 sessions {rss_sessions} kB \
         (console + sessions add {} kB)",
        rss_sessions.saturating_sub(rss_off)
    );
    on.child.kill().unwrap();
    // The budget: under 10 MB for the console with 20 sessions.
    assert!(
        rss_sessions.saturating_sub(rss_off) < 10_000,
        "the console adds {} kB",
        rss_sessions.saturating_sub(rss_off)
    );
    on.child.wait().unwrap();
}

/// The patient page's server time when the sent log is long: 20,000 sent
/// messages, 19,990 of them to another patient (sealed under their key)
/// or to nobody in particular, and 10 reminders to this patient. The page
/// reads the whole sent log (it has no index by patient). A figure, not a
/// gate: `cargo test --test it console::figures::lookup_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
#[allow(clippy::disallowed_methods)] // wall time is what is measured here
async fn lookup_time_with_20000_sent() {
    use clinic_relay::vault::{Owner, Tree, Txn};
    use clinic_relay::whatsapp::message::Kind;
    use clinic_relay::whatsapp::outbox::SentRecord;
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;
    let vault = &d.running.vault;
    let mine = vault.find_patients_by_mrn("", "CARE001").unwrap()[0];
    let theirs = vault.find_patients_by_mrn("", "CARE002").unwrap()[0];
    let token = clinic_relay::care::store::token(vault, "APPT-K1");
    let mine_ref = format!("reminder:{}:0", hex::encode(&token[..6]));
    for batch in 0..20u64 {
        let mine_ref = mine_ref.clone();
        vault
            .write(move |_| {
                let mut txn = Txn::new(t0());
                for n in 0..1000u64 {
                    let seq = batch * 1000 + n;
                    let (patient, reference) = match seq % 1000 {
                        0 => (Some(mine), Some(mine_ref.clone())),
                        k if k % 2 == 0 => (
                            Some(theirs),
                            Some(format!("reminder:00000000000{}:0", k % 10)),
                        ),
                        _ => (None, Some("care-conv:x".to_owned())),
                    };
                    let record = SentRecord {
                        outbox_seq: seq,
                        wamid: format!("wamid.F{seq}"),
                        wa_id: None,
                        kind: Kind::Template,
                        template: Some("appointment_reminder".to_owned()),
                        patient,
                        reference,
                        enqueued_at: t0(),
                        sent_at: t0(),
                        attempts: 1,
                        dry_run: false,
                        media_id: None,
                    };
                    let owner = patient.map_or(Owner::System, Owner::Patient);
                    txn.append_json(Tree::WaSent, owner, &record)?;
                }
                Ok::<_, clinic_relay::vault::VaultError>((txn, ()))
            })
            .await
            .unwrap();
    }
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    let path = format!("/p/{}", mine.to_hex());
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = b.get(&path).await;
        times.push(started.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.body.matches("<td>reminder</td>").count(), 20);
    }
    times.sort();
    println!(
        "patient page with 20,000 sent messages, request over TLS (new connection each): median {:?}, max {:?}",
        times[10], times[19]
    );
    d.stop().await;
}
