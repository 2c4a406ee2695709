//! `scripts/bench vault`: raw sled and the vault measured in the same run.
//!
//! Prints throughput for point reads (raw sled vs sealed), durable commits
//! with 16 concurrent writers (group commit) against one-fsync-per-commit,
//! and audit appends with a flush per batch, then the ratios the foundation
//! issue sets as targets.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clinic_relay::audit::AuditDraft;
use clinic_relay::keys::MasterKey;
use clinic_relay::vault::{Owner, Tree, Txn, Vault};
use std::time::{Duration, Instant};

const RECORDS: u64 = 100_000;
const GETS: u64 = 1_000_000;
const PLAINTEXT: usize = 200;
const WRITERS: u64 = 16;
const COMMITS_PER_WRITER: u64 = 400;
const AUDIT_ENTRIES: u64 = 50_000;
const AUDIT_BATCH: u64 = 100;

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// A scrambled but repeatable visiting order over the keys.
fn key_at(i: u64) -> [u8; 8] {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % RECORDS).to_be_bytes()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "clinic-relay vault benchmark ({RECORDS} records of {PLAINTEXT} B, {} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // ---- raw sled -----------------------------------------------------------
    let raw_dir = tmp.path().join("raw");
    let db = sled::Config::new()
        .path(&raw_dir)
        .flush_every_ms(None)
        .cache_capacity(256 << 20)
        .open()
        .unwrap();
    let raw = db.open_tree("bench").unwrap();
    let sealed_len = PLAINTEXT + 1 + 8 + 12 + 16;
    for i in 0..RECORDS {
        raw.insert(i.to_be_bytes(), vec![7u8; sealed_len]).unwrap();
    }
    db.flush().unwrap();
    let start = Instant::now();
    let mut bytes = 0usize;
    for i in 0..GETS {
        bytes += raw.get(key_at(i)).unwrap().unwrap().len();
    }
    let raw_get = per_sec(GETS, start.elapsed());
    assert!(bytes > 0);

    let start = Instant::now();
    let fsync_commits = 300;
    for i in 0..fsync_commits {
        raw.insert((RECORDS + i).to_be_bytes(), vec![1u8; 100])
            .unwrap();
        db.flush().unwrap();
    }
    let raw_fsync = per_sec(fsync_commits, start.elapsed());
    drop(raw);
    drop(db);

    // ---- the vault ------------------------------------------------------------
    let vault = Vault::open(&tmp.path().join("vault"), &MasterKey::generate().unwrap()).unwrap();
    for chunk in 0..RECORDS / 1000 {
        let mut txn = Txn::new(now());
        for i in chunk * 1000..(chunk + 1) * 1000 {
            txn.put(
                Tree::Meta,
                i.to_be_bytes().to_vec(),
                Owner::System,
                vec![7u8; PLAINTEXT],
            );
        }
        vault.commit_unflushed(txn).unwrap();
    }
    vault.flush().unwrap();
    let start = Instant::now();
    let mut bytes = 0usize;
    for i in 0..GETS {
        bytes += vault.get(Tree::Meta, &key_at(i)).unwrap().unwrap().len();
    }
    let sealed_get = per_sec(GETS, start.elapsed());
    assert_eq!(bytes as u64, GETS * PLAINTEXT as u64);

    // Durable commits, 16 writers, each commit = one record + one audit entry.
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let vault = vault.clone();
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(COMMITS_PER_WRITER as usize);
                    for i in 0..COMMITS_PER_WRITER {
                        let t = Instant::now();
                        let mut txn = Txn::new(now());
                        let key = (1u64 << 40 | w << 20 | i).to_be_bytes().to_vec();
                        txn.put(Tree::Meta, key, Owner::System, vec![1u8; 100]);
                        txn.audit(AuditDraft::new("bench", "record.put"));
                        vault.commit(txn).unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let commits = WRITERS * COMMITS_PER_WRITER;
    let group = per_sec(commits, start.elapsed());
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    // Audit appends, one entry per txn, a durable flush every batch.
    let start = Instant::now();
    for i in 0..AUDIT_ENTRIES {
        let mut txn = Txn::new(now());
        txn.audit(
            AuditDraft::new("bench", "message.sent")
                .subject(format!("p-{i:032x}"))
                .detail("template", "reminder_48h"),
        );
        vault.commit_unflushed(txn).unwrap();
        if (i + 1) % AUDIT_BATCH == 0 {
            vault.flush().unwrap();
        }
    }
    vault.flush().unwrap();
    let audit = per_sec(AUDIT_ENTRIES, start.elapsed());
    let start = Instant::now();
    let verified = vault.verify_audit().unwrap();
    let verify = per_sec(verified, start.elapsed());

    println!();
    println!("{:<58} {:>12}", "measure", "per second");
    println!("{:<58} {:>12.0}", "raw sled get (1 thread)", raw_get);
    println!(
        "{:<58} {:>12.0}",
        "vault sealed get: get + AES-256-GCM open (1 thread)", sealed_get
    );
    println!(
        "{:<58} {:>12.0}",
        "raw sled insert + flush per commit (1 writer)", raw_fsync
    );
    println!(
        "{:<58} {:>12.0}",
        format!("vault durable commits, {WRITERS} writers (group commit)"),
        group
    );
    println!(
        "{:<58} {:>12.0}",
        format!("vault audit appends, flush every {AUDIT_BATCH}"),
        audit
    );
    println!(
        "{:<58} {:>12.0}",
        "vault audit verify (entries checked)", verify
    );
    println!();
    println!(
        "commit latency with {WRITERS} writers: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!();
    let check = |ok: bool| if ok { "PASS" } else { "MISS" };
    let ratio = sealed_get / raw_get;
    println!(
        "target: sealed get >= 50% of raw sled get       {:>6.1}%  {}",
        ratio * 100.0,
        check(ratio >= 0.5)
    );
    println!(
        "target: durable commits (16 writers) >= 2,000/s {:>7.0}  {}",
        group,
        check(group >= 2000.0)
    );
    println!(
        "target: audit append >= 10,000/s                {:>7.0}  {}",
        audit,
        check(audit >= 10_000.0)
    );
    println!(
        "group commit vs one fsync per commit:           {:>6.1}x",
        group / raw_fsync
    );
    vault.close().unwrap();
}
