//! `scripts/bench-care`: the reminder workflow's two targets of issue 10,
//! measured on the real daemon (`service::start`, as in the tests) over a
//! store of 100,000 patients with consent and 100,000 appointments, driven
//! by a manual clock. WhatsApp is dry-run (no token): enqueueing is what is
//! measured, and the outbox worker still takes every item off the queue.
//!
//! * `due [N]` (default 100,000): 4,000 appointments whose first reminder
//!   (72 h before) falls due in one hour, the rest spread over six weeks
//!   after it. The clock jumps to the end of that hour; measured: from the
//!   jump to the scheduler having committed (flushed) every due reminder
//!   to the WhatsApp outbox. Prints the time, the count, RSS after start
//!   and the process's peak RSS (VmHWM).
//! * `buttons [RATE] [SECS]` (default 200/s for 30 s): on the same store,
//!   reminders already sent, signed "Confirm" button webhooks over HTTP on
//!   loopback at a steady RATE (open loop: latency counts from the
//!   scheduled send time, so a stall shows up in the calls queued behind
//!   it). The reply is staged in the webhook's own transaction
//!   (`webhook::apply::stage` → `care::shell::on_inbound` → `queue_reply`)
//!   and the receiver answers 200 only once that transaction is durable,
//!   so the 200's latency *is* "webhook in → reply committed to the
//!   outbox". A PMS peer on loopback ACKs the SIU^S14 each confirm sends.
//! * `chat [RATE] [SECS]` (default 200/s for 30 s): issue 11's chatbot
//!   turn on the same store with `[conversations] enabled`: RATE distinct
//!   patients a second write "hi"; the bot's menu is committed to the
//!   outbox before the 200, whose latency is measured the same way.
//!
//! The store is loaded once through the real apply path (`commands::apply`)
//! by a child process and cached in `target/care-bench/<N>`
//! (`CARE_BENCH_CACHE` overrides); every run starts from a copy, so that
//! loading counts neither in the time nor in the RSS.
//!
//! Knobs for profiling: `CARE_BENCH_PAUSE=S` (due: print the pid and wait
//! S seconds before the jump, to attach perf or `callgrind_control -i on`,
//! and again after the run, to read its memory),
//! `CARE_BENCH_CACHE_MB` (`service.cache_mb`), `CARE_BENCH_COMPACT=1` (the
//! store after a backup and a restore), `CARE_BENCH_PATIENTS` (buttons'
//! and chat's store size). Figures: docs/workflows.md § Measured.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use clinic_relay::care::store::{self, Tap};
use clinic_relay::clock::ManualClock;
use clinic_relay::commands::{self, Command, Origin};
use clinic_relay::config::Config;
use clinic_relay::keys::MasterKey;
use clinic_relay::model::{
    Appointment, AppointmentStatus, ConsentSource, ConsentState, Patient, PatientId,
};
use clinic_relay::pms::{hl7, mllp};
use clinic_relay::service::{self, Running};
use clinic_relay::vault::Vault;
use http_body_util::{BodyExt, Full};
use jiff::{SignedDuration, Timestamp};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Appointments whose first reminder is due in the measured hour.
const DUE_IN_HOUR: usize = 4_000;
const SECRET: &str = "bench-app-secret";
/// What a cached store was loaded by: a store written before a change of
/// what the workflows keep (stop 32: one timer an appointment) is loaded
/// again, so that the figures are those of the code measured.
const STORE_LAYOUT: u32 = 2;
const AUTHORITY: &str = "ZZHOSP";

/// The hour's start: Wed 20 January 2027 10:00 in Berlin.
fn hour() -> Timestamp {
    "2027-01-20T09:00:00Z".parse().unwrap()
}

/// When the appointments were booked (a week before).
fn booked_at() -> Timestamp {
    hour() - SignedDuration::from_hours(24 * 7)
}

/// Appointment `i`'s start. The first 4,000 are three days after the hour
/// (Sat 10:00–11:00), so their 72 h reminder is due in it; the others from
/// four days after it, every 37.8 s over six weeks: their earliest
/// reminder (moved into the allowed hours: at worst 21:00 the day before)
/// is due a day after the hour.
fn start_of(i: usize, n: usize) -> Timestamp {
    let h = hour();
    if i < DUE_IN_HOUR {
        let ms = (i as i64) * 3_600_000 / DUE_IN_HOUR as i64;
        h + SignedDuration::from_hours(72) + SignedDuration::from_millis(ms)
    } else {
        let j = (i - DUE_IN_HOUR) as i64;
        let rest = (n - DUE_IN_HOUR).max(1) as i64;
        let span_ms = 42 * 86_400_000_i64;
        h + SignedDuration::from_hours(96) + SignedDuration::from_millis(j * span_ms / rest)
    }
}

fn mrn(i: usize) -> String {
    format!("ZZB{i:07}")
}

/// A mobile number (DE, 0151) per patient; the webhook's `from` is it
/// without the `+`.
fn phone(i: usize) -> String {
    format!("+4915155{i:06}")
}

fn appointment_id(i: usize) -> String {
    format!("ZZA{i:07}")
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime (fields 14 and 15) are at 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The daemon's config: defaults except what a bench must set (loopback
/// listeners, the PMS peer, the outbox rate).
fn write_config(dir: &Path, pms: Option<std::net::SocketAddr>, rate: u32, extra: &str) -> PathBuf {
    let outbound = pms.map_or(String::new(), |a| {
        format!("outbound_endpoint = \"{a}\"\noutbound_timeout = \"5s\"\n")
    });
    // `CARE_BENCH_CACHE_MB`: the store's page cache (`service.cache_mb`,
    // default 16), to see what it costs in RSS.
    let cache = std::env::var("CARE_BENCH_CACHE_MB")
        .map(|v| format!("cache_mb = {v}\n"))
        .unwrap_or_default();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\ndata_dir = \"data\"\ntime_zone = \"Europe/Berlin\"\n{cache}\n\
             [keys]\nmaster_key_file = \"master.key\"\n\n\
             [log]\nlevel = \"warn\"\n\n\
             [api]\nsocket = \"api.sock\"\n\n\
             [pms]\nmllp_listen = \"127.0.0.1:0\"\nphone_region = \"DE\"\n{outbound}\n\
             [whatsapp]\nphone_number_id = \"106540352242922\"\nrate_per_second = {rate}\n\n\
             [webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
             verify_token_file = \"verify-token\"\n{extra}"
        ),
    )
    .unwrap();
    config
}

fn write_secret(dir: &Path, name: &str, value: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn start(dir: &Path, at: Timestamp) -> (Running, ManualClock) {
    let config = Config::load(&dir.join("config.toml")).unwrap();
    let clock = ManualClock::new(at);
    let running = service::start(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    (running, clock)
}

/// `load DIR N` (the child process): N patients with consent and one
/// appointment each, through `commands::apply`, 500 patients a job.
async fn load(dir: PathBuf, n: usize) {
    std::fs::create_dir_all(&dir).unwrap();
    MasterKey::generate()
        .unwrap()
        .write_new_file(&dir.join("master.key"))
        .unwrap();
    write_secret(&dir, "app-secret", SECRET);
    write_secret(&dir, "verify-token", "bench");
    write_config(&dir, None, 80, "");
    let (running, _clock) = start(&dir, booked_at()).await;
    let vault = running.vault.clone();
    let began = Instant::now();
    let mut commands = Vec::new();
    for i in 0..n {
        let id = vault.patient_id_for_mrn(AUTHORITY, &mrn(i));
        commands.push(Command::UpsertPatient(Box::new(Patient {
            id,
            mrn: mrn(i),
            family_name: "ZZBENCH".into(),
            given_name: "ZZPATIENT".into(),
            birth_date: None,
            phone: Some(phone(i)),
            language: Some(["de", "en", "es", "fr"][i % 4].into()),
            deceased: false,
            protected: false,
        })));
        commands.push(Command::SetConsent {
            patient: id,
            state: ConsentState::OptedIn,
            source: ConsentSource::Staff,
        });
        commands.push(Command::UpsertAppointment(Box::new(Appointment {
            id: appointment_id(i),
            patient: id,
            start: start_of(i, n),
            duration_minutes: 15,
            status: AppointmentStatus::Booked,
            pms_status: None,
            provider: None,
            location: None,
            patient_confirmed: false,
        })));
        if commands.len() >= 1_500 || i + 1 == n {
            let batch = std::mem::take(&mut commands);
            commands::apply(&vault, batch, Origin::new("bench"), booked_at())
                .await
                .unwrap();
        }
        if (i + 1) % 10_000 == 0 {
            eprintln!("  loaded {} patients in {:.0?}", i + 1, began.elapsed());
        }
    }
    running.shutdown().await.unwrap();
    std::fs::write(dir.join("complete"), format!("{n} {STORE_LAYOUT}")).unwrap();
}

/// The cached store of `n` patients (loaded by a child process if absent),
/// copied into a fresh temp dir for one run.
fn prepared(n: usize) -> tempfile::TempDir {
    let cache = std::env::var_os("CARE_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/care-bench"))
        .join(n.to_string());
    let layout_ok = std::fs::read_to_string(cache.join("complete"))
        .is_ok_and(|c| c.trim() == format!("{n} {STORE_LAYOUT}"));
    if !layout_ok {
        let _ = std::fs::remove_dir_all(&cache);
        eprintln!(
            "loading {n} patients + appointments into {} (once)…",
            cache.display()
        );
        let t = Instant::now();
        let ok = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("load")
            .arg(&cache)
            .arg(n.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "loading the store failed");
        eprintln!("loaded in {:.1?}", t.elapsed());
    }
    let cache = if std::env::var_os("CARE_BENCH_COMPACT").is_some() {
        // Blocking vault calls: off the runtime's threads.
        std::thread::spawn(move || compacted(&cache))
            .join()
            .unwrap()
    } else {
        cache
    };
    let tmp = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", cache.display()))
        .arg(tmp.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot copy {}", cache.display());
    tmp
}

/// `CARE_BENCH_COMPACT=1`: the same store after a backup and a restore
/// (a fresh sled log holding only live records), made once beside `cache`,
/// to see how much of the RSS is the log's history.
fn compacted(cache: &Path) -> PathBuf {
    let dst = cache.with_extension("compact");
    let marker = format!("compacted {STORE_LAYOUT}");
    if std::fs::read_to_string(dst.join("complete")).is_ok_and(|c| c == marker) {
        return dst;
    }
    let _ = std::fs::remove_dir_all(&dst);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(cache)
        .arg(&dst)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot copy {}", cache.display());
    std::fs::remove_file(dst.join("complete")).unwrap();
    let mk = MasterKey::load_file(&dst.join("master.key")).unwrap();
    let (data, old, backup) = (dst.join("data"), dst.join("old"), dst.join("backup"));
    let vault = Vault::open(&data, &mk).unwrap();
    let file = std::fs::File::create(&backup).unwrap();
    vault
        .backup_to_file(booked_at(), file, &backup, "bench")
        .unwrap();
    vault.close().unwrap();
    std::fs::rename(&data, &old).unwrap();
    let (vault, _) = Vault::restore_from(
        std::fs::File::open(&backup).unwrap(),
        &data,
        &old.join("keyring"),
        &mk,
    )
    .unwrap();
    vault.close().unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    std::fs::remove_file(&backup).unwrap();
    std::fs::write(dst.join("complete"), marker).unwrap();
    dst
}

async fn due(n: usize) {
    let tmp = prepared(n);
    write_config(tmp.path(), None, 80, "");
    let before = hour() - SignedDuration::from_secs(60);
    let (running, clock) = start(tmp.path(), before).await;
    // The scheduler has looked once (nothing due) and is asleep.
    running.care.looked_at(before).await;
    let wa = running.whatsapp.clone().unwrap();
    let after_start = rss_mb();
    let (fired0, processed0) = (running.care.fired(), wa.processed());

    let pause: Option<u64> = std::env::var("CARE_BENCH_PAUSE")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(secs) = pause {
        // Time to attach a profiler to just the measured part.
        eprintln!("pid {} fires in {secs} s", std::process::id());
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let end = hour() + SignedDuration::from_hours(1);
    let cpu0 = cpu_secs();
    let began = Instant::now();
    clock.set(end);
    running.care.looked_at(end).await;
    let took = began.elapsed();
    let cpu = cpu_secs() - cpu0;

    let fired = running.care.fired() - fired0;
    let queued = running.vault.count(clinic_relay::vault::Tree::WaOutbox) as u64
        + (wa.processed() - processed0);
    println!("care due: {n} patients with consent + {n} appointments, {DUE_IN_HOUR} reminders due in the hour");
    println!(
        "  clock jumps to the hour's end → every due reminder committed to the outbox: {:.0} ms ({fired} timers fired, {queued} messages queued or already taken by the dry-run worker), {:.0} ms CPU",
        took.as_secs_f64() * 1000.0,
        cpu * 1000.0
    );
    println!(
        "  RSS after start {after_start:.1} MB, now {:.1} MB, peak (VmHWM) {:.1} MB",
        rss_mb(),
        peak_rss_mb()
    );
    let check = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!(
        "target: ~4,000 due reminders enqueued < 1 s        {:>7.0} ms  {}",
        took.as_secs_f64() * 1000.0,
        check(took < Duration::from_secs(1) && fired as usize == DUE_IN_HOUR.min(n))
    );
    println!(
        "target: RSS < 80 MB                                {:>7.1} MB  {}",
        peak_rss_mb(),
        check(peak_rss_mb() < 80.0)
    );
    if let Some(secs) = pause {
        // The memory as the run left it, for a look from outside.
        eprintln!("pid {} done; shuts down in {secs} s", std::process::id());
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    running.shutdown().await.unwrap();
}

/// A PMS that ACKs every message and counts them.
async fn pms_peer() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(stream);
                let mut r = tokio::io::BufReader::new(r);
                while let Ok(Some(mllp::Incoming::Message(bytes))) =
                    mllp::read_frame(&mut r, 1 << 20).await
                {
                    let msg = hl7::parse(&bytes).unwrap();
                    let ack = hl7::ack(
                        &msg,
                        hl7::AckCode::Accept,
                        None,
                        hour(),
                        "ZZPMS",
                        "ZZCLINIC",
                        "P1",
                    );
                    mllp::write_frame(&mut w, &ack).await.unwrap();
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, count)
}

/// A signed Meta webhook carrying one message from patient `i`.
fn inbound(i: usize, message: serde_json::Value) -> (Bytes, String) {
    let wa_id = phone(i).trim_start_matches('+').to_owned();
    let mut message = message;
    message["from"] = serde_json::Value::String(wa_id.clone());
    message["id"] = serde_json::Value::String(format!("wamid.ZZBENCH{i:07}"));
    message["timestamp"] = serde_json::Value::String("1800400000".to_owned());
    let body = graph_sim::webhooks::meta_json(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "ZZ"}, "wa_id": wa_id}],
            "messages": [message]
        }}]}]
    }));
    let signature = graph_sim::webhooks::sign(SECRET, &body);
    (Bytes::from(body), signature)
}

/// A signed Meta button webhook: patient `i` taps `payload`.
fn button_tap(i: usize, payload: &str) -> (Bytes, String) {
    inbound(
        i,
        serde_json::json!({"type": "button", "button": {"payload": payload, "text": "Confirm"}}),
    )
}

fn target_line(lat: &[Duration], rate: u64) {
    let p99 = pct(lat, 0.99);
    println!(
        "target: p99 < 20 ms at {rate}/s                     {:>7.2?}  {}",
        p99,
        if p99 < Duration::from_millis(20) {
            "PASS"
        } else {
            "MISS"
        }
    );
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn buttons(n: usize, rate: u64, secs: u64) {
    let total = (rate * secs) as usize;
    let tmp = prepared(n);
    let (pms, pms_got) = pms_peer().await;
    write_config(tmp.path(), Some(pms), 1000, "");
    let (running, clock) = start(tmp.path(), hour() - SignedDuration::from_secs(60)).await;
    let wa = running.whatsapp.clone().unwrap();
    let vault = running.vault.clone();

    // Send the reminders of the next three days (the first 4,000 and about
    // two days of the rest), and let the dry-run outbox take them all.
    let at = hour() + SignedDuration::from_hours(72);
    clock.set(at);
    running.care.looked_at(at).await;
    let reminded = running.care.fired();
    wa.processed_at_least(vault.count(clinic_relay::vault::Tree::WaOutbox) as u64)
        .await;
    let taps = reminded_appointments(&vault, n, total);
    assert!(
        taps.len() >= total,
        "only {} reminded appointments for {total} taps",
        taps.len()
    );
    let calls: Vec<(Bytes, String)> = taps
        .iter()
        .map(|&(i, token)| button_tap(i, &store::payload(&token, Tap::Confirm)))
        .collect();
    let processed0 = wa.processed();
    let pms0 = pms_got.load(Ordering::Relaxed);
    let after_setup = rss_mb();

    let (lat, sent_for) = open_loop(&running, calls, rate).await;
    // Every confirm reached the PMS and every reply left the outbox.
    let wait = tokio::time::timeout(Duration::from_secs(60), async {
        while pms_got.load(Ordering::Relaxed) < pms0 + total {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wa.processed_at_least(processed0 + total as u64).await;
    })
    .await;
    println!(
        "care buttons: {total} signed Confirm webhooks at {rate}/s over HTTP on loopback ({:.1} s), {n} patients, {reminded} reminders sent before",
        sent_for.as_secs_f64()
    );
    println!(
        "  webhook in → reply committed to the outbox (the 200, after the flush): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "  afterwards: {} SIU^S14 ACKed by the PMS peer, {} replies taken by the dry-run outbox{}",
        pms_got.load(Ordering::Relaxed) - pms0,
        wa.processed() - processed0,
        if wait.is_err() {
            " (timed out waiting)"
        } else {
            ""
        }
    );
    println!(
        "  RSS after setup {after_setup:.1} MB, peak (VmHWM) {:.1} MB",
        peak_rss_mb()
    );
    target_line(&lat, rate);
    running.shutdown().await.unwrap();
}

/// `chat [RATE] [SECS]`: issue 11's chatbot turn. The conversation bot on,
/// RATE distinct patients a second each write "hi" (a signed text webhook
/// over HTTP on loopback, open loop); the bot's answer, the menu, is staged
/// in the webhook's own transaction and the 200 comes after its flush, so
/// the 200's latency is "webhook in → reply committed to the outbox".
async fn chat(n: usize, rate: u64, secs: u64) {
    let total = (rate * secs) as usize;
    assert!(
        total <= n,
        "{total} turns need as many patients (store: {n})"
    );
    let tmp = prepared(n);
    write_config(
        tmp.path(),
        None,
        1000,
        "\n[conversations]\nenabled = true\n",
    );
    let (running, _clock) = start(tmp.path(), hour()).await;
    let wa = running.whatsapp.clone().unwrap();
    let processed0 = wa.processed();
    let after_setup = rss_mb();
    // Patients spread over the whole store, not its first keys.
    let step = (n / total).max(1);
    let calls: Vec<(Bytes, String)> = (0..total)
        .map(|k| {
            inbound(
                k * step,
                serde_json::json!({"type": "text", "text": {"body": "hi"}}),
            )
        })
        .collect();
    let (lat, sent_for) = open_loop(&running, calls, rate).await;
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        wa.processed_at_least(processed0 + total as u64),
    )
    .await;
    println!(
        "care chat: {total} signed \"hi\" webhooks from {total} patients at {rate}/s over HTTP on loopback ({:.1} s), {n} patients stored",
        sent_for.as_secs_f64()
    );
    println!(
        "  webhook in → menu committed to the outbox (the 200, after the flush): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "  afterwards: {} menus taken by the dry-run outbox{}",
        wa.processed() - processed0,
        if waited.is_err() {
            " (timed out waiting)"
        } else {
            ""
        }
    );
    println!(
        "  RSS after setup {after_setup:.1} MB, peak (VmHWM) {:.1} MB",
        peak_rss_mb()
    );
    target_line(&lat, rate);
    running.shutdown().await.unwrap();
}

/// Posts `calls` to the webhook at a steady `rate` (open loop: a call's
/// latency counts from its scheduled time, so a stall shows in the calls
/// queued behind it). Every answer must be 200. The latencies, sorted, and
/// how long the sending took.
async fn open_loop(
    running: &Running,
    calls: Vec<(Bytes, String)>,
    rate: u64,
) -> (Vec<Duration>, Duration) {
    let total = calls.len();
    let url: hyper::Uri = format!("http://{}/webhook", running.webhook_addr.unwrap())
        .parse()
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(32)
        .build_http::<Full<Bytes>>();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut handles = Vec::with_capacity(total);
    for (i, (body, signature)) in calls.into_iter().enumerate() {
        let scheduled = t0 + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let (client, url) = (client.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let req = hyper::Request::post(url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", signature)
                .body(Full::new(body))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            (status, scheduled.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for h in handles {
        let (status, took) = h.await.unwrap();
        assert_eq!(status, 200);
        lat.push(took);
    }
    let sent_for = t0.elapsed();
    lat.sort();
    (lat, sent_for)
}

/// Up to `want` appointments (index, token) whose reminder was sent and
/// which are still open, in start order.
fn reminded_appointments(vault: &Vault, n: usize, want: usize) -> Vec<(usize, store::Token)> {
    let mut out = Vec::with_capacity(want);
    for i in 0..n {
        if out.len() >= want {
            break;
        }
        let token = store::token(vault, &appointment_id(i));
        let Ok(Some(state)) = store::load(vault, &token) else {
            continue;
        };
        let patient: PatientId = vault.patient_id_for_mrn(AUTHORITY, &mrn(i));
        if !state.sent.is_empty() && state.patient == patient {
            out.push((i, token));
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let num = |i: usize, default: u64| {
        args.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let patients = std::env::var("CARE_BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    match args.first().map(String::as_str) {
        Some("load") => {
            let dir = PathBuf::from(args.get(1).expect("load DIR N"));
            rt.block_on(load(dir, num(2, 100_000) as usize));
        }
        Some("due") | None => rt.block_on(due(num(1, 100_000) as usize)),
        Some("buttons") => rt.block_on(buttons(patients, num(1, 200), num(2, 30))),
        Some("chat") => rt.block_on(chat(patients, num(1, 200), num(2, 30))),
        Some(other) => eprintln!(
            "usage: care [due [PATIENTS] | buttons [RATE] [SECS] | chat [RATE] [SECS]] (got {other}; CARE_BENCH_PATIENTS sets the store for buttons and chat)"
        ),
    }
}
