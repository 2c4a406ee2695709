//! `scripts/bench-outbox`: the WhatsApp outbox measured end to end: a real
//! vault (durable commits), the worker, the hyper/rustls client and the
//! Graph API simulator on loopback, all in this process (they share the
//! machine's cores, as on a clinic's small server).
//!
//! * `lifted` (default N = 20,000): producers enqueue N messages to 500
//!   recipients (in commits of 50, like a reminder run) while the worker
//!   sends them with the limiter lifted;
//!   prints enqueue and end-to-end send rates.
//! * `paced` (30 s): the limiter at 80 msg/s with a backlog; prints the
//!   rate measured over 30 s and its deviation from 80.
//!
//! Both print the process's peak RSS (VmHWM: vault, worker, client and the
//! simulator together, so an upper bound for the daemon's share).
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clinic_relay::clock::{SharedClock, SystemClock};
use clinic_relay::keys::MasterKey;
use clinic_relay::vault::Vault;
use clinic_relay::whatsapp::config::WhatsappConfig;
use clinic_relay::whatsapp::message::{self, Recipient};
use clinic_relay::whatsapp::outbox::{self, WaItem};
use clinic_relay::whatsapp::worker::Worker;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RECIPIENTS: usize = 500;
const PRODUCERS: usize = 4;
const BATCH: usize = 50;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn item(i: usize) -> WaItem {
    WaItem {
        patient: None,
        recipient: Some(Recipient::phone(&format!("+4915550{:05}", i % RECIPIENTS)).unwrap()),
        message: message::text(&format!("Erinnerung {i}: Ihr Termin morgen um 9:00")).unwrap(),
        reference: None,
    }
}

async fn enqueue_all(vault: &Vault, clock: &SharedClock, n: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let vault = vault.clone();
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                outbox::enqueue(&vault, item(i), clock.now(), None)
                    .await
                    .unwrap();
                i += PRODUCERS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn setup(
    rate: Option<u32>,
) -> (
    tempfile::TempDir,
    Vault,
    SharedClock,
    graph_sim::Sim,
    WhatsappConfig,
    Option<u32>,
) {
    let dir = tempfile::tempdir().unwrap();
    // The daemon's default store cache (service.cache_mb).
    let vault = Vault::open_with_cache(
        &dir.path().join("data"),
        &MasterKey::from_bytes([9; 32]),
        16 << 20,
    )
    .unwrap();
    let sim = graph_sim::Sim::start().await.unwrap();
    sim.require_token(Some("bench"));
    let token = dir.path().join("token");
    std::fs::write(&token, "bench\n").unwrap();
    let config = WhatsappConfig {
        api_base_url: sim.base_url(),
        phone_number_id: "106540352242922".to_owned(),
        token_file: Some(token),
        concurrency: std::env::var("OUTBOX_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        ..WhatsappConfig::default()
    };
    let clock: SharedClock = Arc::new(SystemClock);
    (dir, vault, clock, sim, config, rate)
}

async fn lifted(n: usize) {
    let (_dir, vault, clock, sim, config, rate) = setup(None).await;
    let (worker, handle) = Worker::new(vault.clone(), clock.clone(), &config, Some(rate)).unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let cpu0 = cpu_secs();
    tokio::spawn(worker.run(rx));
    let enq = enqueue_all(&vault, &clock, n).await;
    handle.processed_at_least(n as u64).await;
    let total = start.elapsed();
    let sent = sim.sent_messages().len();
    println!(
        "outbox lifted: {n} messages to {RECIPIENTS} recipients, {PRODUCERS} producers committing {BATCH} at a time, concurrency {}",
        config.concurrency
    );
    println!(
        "  enqueue (durable, concurrent with sending): {:.0} msg/s",
        n as f64 / enq.as_secs_f64()
    );
    println!(
        "  sent end to end: {:.0} msg/s ({sent} accepted by the simulator in {:.2} s)",
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  CPU (whole process: vault, worker, client, simulator): {:.2} s per 10,000 messages",
        (cpu_secs() - cpu0) / n as f64 * 10_000.0
    );
    println!("  peak RSS {:.1} MB", peak_rss_mb());
}

async fn paced(secs: u64) {
    let rate = 80u32;
    let (_dir, vault, clock, sim, config, _) = setup(Some(rate)).await;
    let backlog = (rate as u64 * secs + 400) as usize;
    enqueue_all(&vault, &clock, backlog).await;
    let (worker, handle) =
        Worker::new(vault.clone(), clock.clone(), &config, Some(Some(rate))).unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(worker.run(rx));
    // Measure from the first send, over `secs` seconds.
    handle.processed_at_least(1).await;
    let base = sim.sent_messages().len();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let got = sim.sent_messages().len() - base;
    let measured = got as f64 / start.elapsed().as_secs_f64();
    println!(
        "outbox paced: limiter {rate} msg/s, {got} sent in {secs} s = {measured:.2} msg/s ({:+.2} %)",
        (measured / f64::from(rate) - 1.0) * 100.0
    );
    println!("  peak RSS {:.1} MB", peak_rss_mb());
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some("paced") => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
            rt.block_on(paced(secs));
        }
        Some("lifted") | None => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
            rt.block_on(lifted(n));
        }
        Some(other) => eprintln!("usage: wa_outbox [lifted [N] | paced [SECS]] (got {other})"),
    }
}
