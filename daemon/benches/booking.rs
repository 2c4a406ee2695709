//! `cargo bench -p clinic-relay --bench booking`: issue 11's slot search
//! target (< 5 ms per list shown over 10,000 open slots), on a real vault.
//!
//! 10,000 open slots (4 services, 10 providers, over the next 13 days)
//! are written through the writer (`stage_replace_slots`), 20 of them held
//! for another patient. Measured, each `ITER` times on the booking shell's
//! own path (the functions the webhook's writer job calls; the txn is
//! built, not committed): the held slots read, the slot table (the
//! in-memory copy, checked against its committed generation), the search,
//! the opaque row ids, the list message and its policy check and outbox
//! staging:
//!
//! * `start`: Book chosen → the list of services;
//! * `group`: a service's row → its first page of times;
//! * `later`: the "Later" row of page 5 → page 6;
//! * `page 100`: a deep page (900 slots skipped), the worst a patient can
//!   reach by paging;
//! * `replaced`: the first list after the table was replaced (the copy is
//!   the replacement itself, kept when it was staged: nothing decoded);
//! * `taken`: the first list after a slot was taken out of the table (the
//!   booking flow, on the PMS's confirmation): the copy minus that slot;
//! * `cold`: the first list on a copy that is gone (a restart, a restore):
//!   the whole table decoded once.
//!
//! Prints p50 / p99 / max per kind. `BOOKING_BENCH_SLOTS` and
//! `BOOKING_BENCH_ITER` override the defaults.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clinic_relay::care::booking::search::Group;
use clinic_relay::care::booking::store::{self, GroupRef, Hold, Tap};
use clinic_relay::care::booking::{shell, Pick};
use clinic_relay::care::Settings;
use clinic_relay::keys::MasterKey;
use clinic_relay::model::{Patient, PatientId, Slot};
use clinic_relay::pms::outbound::OutboundConfig;
use clinic_relay::vault::{Txn, Vault, VaultError};
use jiff::{SignedDuration, Timestamp};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn patient(n: u8) -> Patient {
    Patient {
        id: PatientId([n; 16]),
        mrn: format!("BENCH{n}"),
        family_name: "ZZ".into(),
        given_name: "ZZ".into(),
        birth_date: None,
        phone: Some(format!("+49151555012{n:02}")),
        language: Some("de".into()),
        deceased: false,
        protected: false,
    }
}

fn slots(n: usize, now: Timestamp) -> Vec<Slot> {
    let span = 13 * 24 * 3600;
    (0..n)
        .map(|i| Slot {
            id: format!("BENCH-SLOT-{i:05}"),
            start: now + SignedDuration::from_secs(3600 + (i as i64) * span / n as i64),
            duration_minutes: 15,
            provider: Some(format!("DOC{}", i % 10)),
            location: Some("ROOM1".into()),
            service: Some(format!("SVC{}", i % 4)),
        })
        .collect()
}

fn replace(vault: &Vault, slots: Vec<Slot>, now: Timestamp) {
    vault
        .write_blocking(move |v| {
            let mut txn = Txn::new(now);
            v.stage_replace_slots(&mut txn, &slots)?;
            Ok::<_, VaultError>((txn, ()))
        })
        .unwrap();
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize];
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    println!(
        "{name:<10} n={:<5} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        d.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*d.last().unwrap())
    );
}

fn settings() -> Settings {
    Settings {
        reminders: Default::default(),
        conversations: Default::default(),
        time_zone: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
        outbound: OutboundConfig {
            application: "CR".into(),
            facility: "F".into(),
            receiving_application: "PMS".into(),
            receiving_facility: "F".into(),
            confirm_status: "Confirmed".into(),
            consent_field: None,
            assigning_authority: "ZZHOSP".into(),
            new_patient_trigger: "A04".into(),
        },
        results: Default::default(),
        media: Default::default(),
        booking: Default::default(),
    }
}

fn main() {
    let n = env("BOOKING_BENCH_SLOTS", 10_000);
    let iter = env("BOOKING_BENCH_ITER", 500);
    let tmp = tempfile::tempdir().unwrap();
    // A fixed key, so the same store can be opened again (the cold reads).
    let key = MasterKey::from_bytes([7; 32]);
    let vault = Vault::open(&tmp.path().join("vault"), &key).unwrap();
    vault.set_care(settings());
    let now: Timestamp = "2027-01-18T07:00:00Z".parse().unwrap();
    let (me, other) = (patient(1), patient(2));
    vault.put_patient(&me, "bench", now).unwrap();
    vault.put_patient(&other, "bench", now).unwrap();
    let all = slots(n, now);
    let held: Vec<Hold> = all
        .iter()
        .step_by(n / 20)
        .take(20)
        .map(|s| Hold {
            patient: other.id,
            pick: Pick::of(s),
            until: now + SignedDuration::from_mins(15),
        })
        .collect();
    replace(&vault, all.clone(), now);
    vault
        .write_blocking(move |v| {
            let mut txn = Txn::new(now);
            for h in &held {
                store::stage_hold(v, &mut txn, h)?;
            }
            Ok::<_, VaultError>((txn, ()))
        })
        .unwrap();

    let group = store::payload(Tap::Group(store::group_ref(
        &vault,
        &Group::Service("SVC1".into()),
    )));
    let gref = match store::parse_payload(&group) {
        Some(Tap::Group(g)) => g,
        _ => unreachable!(),
    };
    let page = |p: u32| store::payload(Tap::Page(p, Some::<GroupRef>(gref)));
    let run = |f: &dyn Fn(&mut Txn)| {
        let mut d = Vec::with_capacity(iter);
        for _ in 0..iter {
            let mut txn = Txn::new(now);
            let t = Instant::now();
            f(&mut txn);
            d.push(t.elapsed());
            std::hint::black_box(txn);
        }
        d
    };
    println!("{n} open slots, 20 held for another patient, {iter} lists per kind (release build)");
    // The first list after a replacement, after a slot was taken out, and
    // on a table nobody has read yet (a fresh vault over the same store).
    let first_list = |vault: &Vault| {
        let mut txn = Txn::new(now);
        let t = Instant::now();
        shell::start(vault, &mut txn, me.id, Some("en".into()), now).unwrap();
        t.elapsed()
    };
    let mut replaced = Vec::new();
    let mut taken = Vec::new();
    for k in 0..5 {
        replace(&vault, all.clone(), now);
        replaced.push(first_list(&vault));
        let id = all[n / 2 + k].id.clone();
        vault
            .write_blocking(move |v| {
                let mut txn = Txn::new(now);
                v.stage_remove_slot(&mut txn, &id)?;
                Ok::<_, VaultError>((txn, ()))
            })
            .unwrap();
        taken.push(first_list(&vault));
    }
    replace(&vault, all.clone(), now);
    report(
        "start",
        run(&|txn| shell::start(&vault, txn, me.id, Some("en".into()), now).unwrap()),
    );
    report(
        "group",
        run(&|txn| {
            assert!(shell::on_tap(&vault, txn, me.id, &group, now).unwrap());
        }),
    );
    let later = page(6);
    report(
        "later",
        run(&|txn| {
            assert!(shell::on_tap(&vault, txn, me.id, &later, now).unwrap());
        }),
    );
    let deep = page(100);
    report(
        "page 100",
        run(&|txn| {
            assert!(shell::on_tap(&vault, txn, me.id, &deep, now).unwrap());
        }),
    );
    report("replaced", replaced);
    report("taken", taken);
    vault.close().unwrap();
    let mut cold = Vec::new();
    for _ in 0..5 {
        let vault = Vault::open(&tmp.path().join("vault"), &key).unwrap();
        vault.set_care(settings());
        cold.push(first_list(&vault));
        vault.close().unwrap();
    }
    report("cold", cold);
}
