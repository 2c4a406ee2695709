//! The one apply path: repeats, key reuse, erased leftovers, merges and
//! erasure, the keyring's torn tail, stored high-water marks, and a
//! concurrent stress run of mixed commands with the invariants checked after.

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::commands::{self, Applied, Command, KeyReuse, Origin};
use clinic_relay::model::{
    Appointment, AppointmentStatus, ConsentSource, ConsentState, LabResult, Patient, ResultStatus,
};
use clinic_relay::vault::{
    anchor_path, keyring_path, store_path, Owner, Tree, Txn, Vault, VaultError,
};
use serde_json::json;

fn patient_body(mrn: &str, family: &str) -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:clinic-relay:mrn", "value": mrn}],
        "name": [{"family": family, "given": ["ZZGIVEN"]}],
        "birthDate": "1901-02-03",
        "telecom": [{"system": "phone", "value": "0151 5550 4242"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_without_a_key_changes_nothing_and_the_daemon_keeps_serving() {
    let d = Daemon::start("").await;
    for _ in 0..3 {
        let (status, body) = d
            .api("POST", "/v1/patients", Some(patient_body("R-1", "ZZSAME")))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = d
        .api("POST", "/v1/patients", Some(patient_body("R-2", "ZZOTHER")))
        .await;
    assert_eq!(status, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_body_is_refused() {
    let d = Daemon::start("").await;
    let key = [("idempotency-key", "client-req-7")];
    let call = |body: serde_json::Value| {
        api_call(
            &d.running.api_socket,
            "POST",
            "/v1/patients",
            Some(body.to_string().into_bytes()),
            &key,
        )
    };
    let (status, first) = call(patient_body("K-1", "ZZFIRST")).await;
    assert_eq!(status, 200, "{first}");
    // A retry of the same request: the same answer.
    let (status, again) = call(patient_body("K-1", "ZZFIRST")).await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    // The key reused for another body: refused, and nothing changes.
    let (status, problem) = call(patient_body("K-1", "ZZSECOND")).await;
    assert_eq!(status, 422, "{problem}");
    let id = first["id"].as_str().unwrap();
    let (_, stored) = d.api("GET", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(stored["name"][0]["family"], "ZZFIRST");
    d.stop().await;
}

fn appointment(id: &str, patient: &Patient, minute: i64) -> Appointment {
    Appointment {
        id: id.to_owned(),
        patient: patient.id,
        start: t0() + jiff::SignedDuration::from_mins(minute),
        duration_minutes: 20,
        status: AppointmentStatus::Booked,
        pms_status: None,
        provider: None,
        location: None,
        patient_confirmed: false,
    }
}

fn result(order: &str, patient: &Patient) -> LabResult {
    LabResult {
        order_number: order.to_owned(),
        patient: patient.id,
        status: ResultStatus::Final,
        observed_at: None,
        received_at: t0(),
        version: 1,
        pdf: b"%PDF-1.4 synthetic".to_vec(),
        delivered: false,
        withdrawn: false,
        release_code: None,
    }
}

async fn verify(vault: &Vault) -> clinic_relay::vault::VerifyReport {
    let vault = vault.clone();
    tokio::task::spawn_blocking(move || vault.verify().unwrap())
        .await
        .unwrap()
}

async fn apply(vault: &Vault, commands: Vec<Command>) -> Applied {
    commands::apply(vault, commands, Origin::new("test"), t0())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_an_erased_patient_are_absent_for_hl7_not_a_reason_to_resend() {
    // A store copied before an erasure and put back (a restored backup):
    // the erased patient's records are still there, sealed under a key that
    // is gone. Every message that touches them must be answered for good,
    // never AR "send again" forever.
    let install = TestInstall::new("");
    let d = Daemon::start_in(install).await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c.send(&adt_a04("E1", "ERA-1", "ZZERASED", "")).await).0,
        "AA"
    );
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("E2", "APPT-ERA", "ERA-1", "20261201100000"))
            .await)
        .0,
        "AA"
    );
    drop(c);
    let install = d.stop().await;
    let before = install.tmp.path().join("store-before");
    copy_dir(&store_path(&install.data), &before);
    // The audit anchor goes back with the store, as with a whole data dir put back.
    let anchor_before = std::fs::read(anchor_path(&install.data)).unwrap();
    {
        let vault = install.open();
        let id = vault.find_patients_by_mrn("", "ERA-1").unwrap()[0];
        assert!(vault.erase_patient_async(id, "test", t0()).await.unwrap());
        vault.close().unwrap();
    }
    std::fs::remove_dir_all(store_path(&install.data)).unwrap();
    copy_dir(&before, &store_path(&install.data));
    std::fs::write(anchor_path(&install.data), anchor_before).unwrap();

    let d = Daemon::start_in(install).await;
    let mut c = d.mllp().await;
    // The appointment again, with the patient's PID: a new registration.
    let ack = c
        .send(&siu_s12_v25("E3", "APPT-ERA", "ERA-1", "20261202100000"))
        .await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let vault = d.running.vault.clone();
    let id = vault.find_patients_by_mrn("", "ERA-1").unwrap()[0];
    assert_eq!(vault.appointments_of(id).unwrap().len(), 1);
    drop(c);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_survivor_shreds_the_keys_of_the_patients_merged_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(3);
    let vault = open(&dir, &mk);
    let merged = marker_patient(&vault, "M");
    let survivor = marker_patient(&vault, "S");
    apply(
        &vault,
        vec![
            Command::UpsertPatient(Box::new(merged.clone())),
            Command::UpsertAppointment(Box::new(appointment("APPT-M", &merged, 60))),
            Command::UpsertPatient(Box::new(survivor.clone())),
        ],
    )
    .await;
    vault.close().unwrap();
    // A copy of the store from before the merge: the merged patient's
    // record and appointment are in it, sealed under their own key.
    let before = tmp.path().join("before");
    copy_dir(&store_path(&dir), &store_path(&before));

    let vault = open(&dir, &mk);
    apply(
        &vault,
        vec![Command::MergePatients {
            survivor: survivor.id,
            merged: merged.id,
        }],
    )
    .await;
    assert_eq!(vault.appointments_of(survivor.id).unwrap().len(), 1);
    assert!(vault
        .erase_patient_async(survivor.id, "privacy-officer", t0())
        .await
        .unwrap());
    let report = verify(&vault).await;
    assert!(report.is_ok(), "{:?}", report.problems);
    let ledger: Vec<_> = vault.erasure_ledger().unwrap();
    assert!(ledger.iter().any(|(id, _)| *id == merged.id));
    vault.close().unwrap();

    std::fs::copy(keyring_path(&dir), keyring_path(&before)).unwrap();
    let old = open(&before, &mk);
    assert!(
        matches!(
            old.get(Tree::Patients, &merged.id.0),
            Err(VaultError::KeyUnavailable { .. })
        ),
        "the merged patient's record opens from an older copy"
    );
    assert!(matches!(
        old.get(Tree::Appointments, &old.appointment_key("APPT-M")),
        Err(VaultError::KeyUnavailable { .. })
    ));
    old.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_fails_until_the_keyring_copy_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let copies = tmp.path().join("copies");
    std::fs::create_dir(&copies).unwrap();
    let vault = open(&dir, &key(4));
    vault
        .set_keyring_mirror(&copies.join("clinic-relay.keyring"))
        .unwrap();
    let p = marker_patient(&vault, "K");
    apply(&vault, vec![Command::UpsertPatient(Box::new(p.clone()))]).await;
    // The folder for the copy is gone (an unmounted backup disk).
    std::fs::remove_dir_all(&copies).unwrap();
    std::fs::write(&copies, b"not a folder").unwrap();
    let first = vault.erase_patient_async(p.id, "test", t0()).await;
    assert!(
        matches!(first, Err(VaultError::KeyringCopyStale(_))),
        "an erasure whose keyring copy still holds the key must not report success: {first:?}"
    );
    // The patient is gone here already; the copy is what is missing.
    assert!(vault.get_patient(p.id).unwrap().is_none());
    std::fs::remove_file(&copies).unwrap();
    std::fs::create_dir(&copies).unwrap();
    assert!(vault.erase_patient_async(p.id, "test", t0()).await.unwrap());
    let copy = std::fs::read_to_string(copies.join("clinic-relay.keyring")).unwrap();
    assert_eq!(copy, std::fs::read_to_string(keyring_path(&dir)).unwrap());
    // Done now: a third request finds nothing to erase.
    assert!(!vault.erase_patient_async(p.id, "test", t0()).await.unwrap());
    vault.close().unwrap();
}

#[test]
fn a_torn_keyring_tail_is_repaired_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(5);
    let vault = open(&dir, &mk);
    vault
        .put_patient(&marker_patient(&vault, "A"), "test", t0())
        .unwrap();
    vault.close().unwrap();
    // A crash (or a full disk) in the middle of appending the next key.
    let ring = keyring_path(&dir);
    let mut text = std::fs::read_to_string(&ring).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    text.push_str(&last[..last.len() / 2]);
    std::fs::write(&ring, &text).unwrap();

    let vault = open(&dir, &mk);
    // The next key is appended after the repair, not onto the fragment.
    let b = marker_patient(&vault, "B");
    vault.put_patient(&b, "test", t0()).unwrap();
    vault.close().unwrap();
    let vault = Vault::open(&dir, &mk).expect("the daemon must start again");
    assert_eq!(vault.get_patient(b.id).unwrap().unwrap(), b);
    assert!(std::fs::read_to_string(&ring).unwrap().ends_with('\n'));
    vault.close().unwrap();
}

#[test]
fn an_empty_commit_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(6));
    let before = vault.audit_seq();
    vault.commit(Txn::new(t0())).unwrap();
    let mut only_removes_of_nothing = Txn::new(t0());
    only_removes_of_nothing.remove(Tree::Slots, b"none".to_vec());
    vault.commit(only_removes_of_nothing).unwrap();
    assert_eq!(vault.audit_seq(), before);
    vault.close().unwrap();
}

#[test]
fn sequence_numbers_are_never_reused_after_a_queue_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(8);
    let vault = open(tmp.path(), &mk);
    let mut txn = Txn::new(t0());
    for i in 0..3u8 {
        txn.append(Tree::PmsOutbox, Owner::System, vec![i]);
    }
    let receipt = vault.commit(txn).unwrap();
    assert_eq!(receipt.appended().last(), Some(&(Tree::PmsOutbox, 3)));
    let mut drain = Txn::new(t0());
    for seq in 1..=3u64 {
        drain.remove(Tree::PmsOutbox, seq.to_be_bytes().to_vec());
    }
    vault.commit(drain).unwrap();
    vault.close().unwrap();
    let vault = open(tmp.path(), &mk);
    let mut txn = Txn::new(t0());
    txn.append(Tree::PmsOutbox, Owner::System, vec![9]);
    let receipt = vault.commit(txn).unwrap();
    assert_eq!(receipt.appended(), &[(Tree::PmsOutbox, 4)]);
    vault.close().unwrap();
}

/// Many writers on the same few patients: ADT changing phones, SIU and ORU
/// carrying older PIDs, result corrections, consent, API-style upserts with
/// idempotency keys, merges and erasures. Afterwards every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_commands_keep_every_invariant() {
    const TASKS: u64 = 8;
    const OPS_PER_TASK: u64 = 1_300;
    const PATIENTS: u64 = 12;
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(9));
    let base: Vec<Patient> = (0..PATIENTS)
        .map(|i| marker_patient(&vault, &format!("{i}")))
        .collect();
    // Two patients whose results are corrected concurrently and never
    // erased: every applied correction must count.
    let stable: Vec<Patient> = (0..2)
        .map(|i| marker_patient(&vault, &format!("R{i}")))
        .collect();
    for p in base.iter().chain(&stable) {
        apply(&vault, vec![Command::UpsertPatient(Box::new(p.clone()))]).await;
    }
    let corrections = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let vault = vault.clone();
        let base = base.clone();
        let stable = stable.clone();
        let corrections = corrections.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for op in 0..OPS_PER_TASK {
                let p = &base[(next() % PATIENTS) as usize];
                let roll = next() % 100;
                let mut phone_changed = p.clone();
                phone_changed.phone = Some(format!("+4915550{:06}", next() % 3));
                let origin = if roll % 5 == 0 {
                    // API-style: a key per request, sometimes sent twice.
                    Origin::new("api:test")
                        .with_key(format!("{t}-{}", op / 2).into_bytes(), KeyReuse::Reject)
                } else {
                    Origin::new("pms:test")
                };
                let commands = match roll {
                    0..=24 => vec![Command::UpsertPatient(Box::new(phone_changed))],
                    25..=44 => vec![
                        Command::UpdatePatientFromContext(Box::new(phone_changed)),
                        Command::UpsertAppointment(Box::new(appointment(
                            &format!("APPT-{}", next() % 40),
                            p,
                            (next() % 1000) as i64,
                        ))),
                    ],
                    45..=59 => vec![
                        Command::UpdatePatientFromContext(Box::new(p.clone())),
                        Command::UpsertResult(Box::new(result(&format!("ORD-{}", next() % 20), p))),
                    ],
                    60..=74 => {
                        let s = &stable[(next() % 2) as usize];
                        vec![Command::UpsertResult(Box::new(result(
                            &format!("STABLE-{}", s.mrn),
                            s,
                        )))]
                    }
                    75..=84 => vec![Command::SetConsent {
                        patient: p.id,
                        state: if next() % 2 == 0 {
                            ConsentState::OptedIn
                        } else {
                            ConsentState::OptedOut
                        },
                        source: ConsentSource::Pms,
                    }],
                    85..=89 => {
                        let other = &base[(next() % PATIENTS) as usize];
                        if other.id == p.id {
                            continue;
                        }
                        vec![
                            Command::UpsertPatient(Box::new(p.clone())),
                            Command::MergePatients {
                                survivor: p.id,
                                merged: other.id,
                            },
                        ]
                    }
                    _ => {
                        vault.erase_patient_async(p.id, "test", t0()).await.unwrap();
                        continue;
                    }
                };
                let stable_result = (60..=74).contains(&roll);
                match commands::apply(&vault, commands, origin, t0()).await {
                    Ok(Applied::Done) if stable_result => {
                        corrections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // An erasure or merge got there first: a clean refusal.
                    Err(commands::CommandError::UnknownPatient(_)) => {}
                    Err(e) => panic!("op {op} of task {t}: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = verify(&vault).await;
    assert!(report.is_ok(), "{:#?}", report.problems);
    // Result versions only grow, and none is lost to a race.
    let versions: u32 = stable
        .iter()
        .map(|s| {
            vault
                .get_result(&format!("STABLE-{}", s.mrn))
                .unwrap()
                .map_or(0, |r| r.version)
        })
        .sum();
    assert_eq!(
        versions,
        corrections.load(std::sync::atomic::Ordering::Relaxed)
    );
    // The phone index agrees with the records: each number finds exactly
    // the patients whose record holds it.
    for n in 0..3 {
        let phone = format!("+4915550{n:06}");
        for id in vault.find_patients_by_phone(&phone).unwrap() {
            let p = vault
                .get_patient(id)
                .unwrap()
                .expect("index names a patient");
            assert_eq!(p.phone.as_deref(), Some(phone.as_str()));
        }
    }
    assert!(vault.verify_audit().unwrap() > TASKS * OPS_PER_TASK / 2);
    assert!(report.patients > 0);
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_erasure_nothing_on_the_feed_links_back_to_the_patient() {
    use clinic_relay::pms::outbound::{self, PatientAction};
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c.send(&adt_a04("F1", "FEED-1", "ZZFEED", "")).await).0,
        "AA"
    );
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("F2", "ZZAPPTFEED", "FEED-1", "20261201100000"))
            .await)
        .0,
        "AA"
    );
    let cfg = d.running.outbound.clone();
    let action = PatientAction::Confirm {
        appointment: "ZZAPPTFEED".into(),
    };
    outbound::record(&d.running.vault, &cfg, &action, "test", t0())
        .await
        .unwrap();
    let (_, before) = d.api("GET", "/v1/events?after=0", None).await;
    assert_eq!(before["events"][0]["appointment"], "ZZAPPTFEED");
    let id = before["events"][0]["patient"].as_str().unwrap().to_owned();
    let (status, _) = d.api("DELETE", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(status, 204);
    let (_, after) = d.api("GET", "/v1/events?after=0", None).await;
    assert_eq!(after["events"][0]["kind"], "redacted");
    assert_eq!(after["cursor"], before["cursor"], "cursors stay valid");
    let text = after.to_string();
    assert!(!text.contains("ZZAPPTFEED"), "{text}");
    assert!(!text.contains(&id), "{text}");
    drop(c);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire_after_their_retention_and_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(10));
    let p = marker_patient(&vault, "I");
    let send = |at: jiff::Timestamp, key: &str| {
        let vault = vault.clone();
        let origin = Origin::new("pms:test").with_key(key.as_bytes().to_vec(), KeyReuse::Reapply);
        let commands = vec![Command::UpsertPatient(Box::new(p.clone()))];
        async move { commands::apply(&vault, commands, origin, at).await.unwrap() }
    };
    let day = jiff::SignedDuration::from_hours(24);
    assert_eq!(send(t0(), "MSG-1").await, Applied::Done);
    assert_eq!(send(t0() + day, "MSG-1").await, Applied::Duplicate);
    assert_eq!(send(t0(), "MSG-2").await, Applied::Done);
    // 30 days later the key is new again (default retention).
    let later = t0() + day * 31;
    assert_eq!(send(later, "MSG-1").await, Applied::Done);
    let removed = commands::prune_idempotency_keys(&vault, later, commands::DEFAULT_KEY_RETENTION)
        .await
        .unwrap();
    assert_eq!(removed, 1, "MSG-2 is pruned; MSG-1 was just seen again");
    assert_eq!(vault.count(Tree::Ingested), 1);
    vault.close().unwrap();
}

#[test]
fn new_patients_registered_at_once_each_get_exactly_one_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(11);
    let vault = open(tmp.path(), &mk);
    let patients: Vec<Patient> = (0..120)
        .map(|i| marker_patient(&vault, &format!("G{i}")))
        .collect();
    // Eight threads race to create the keys, each patient from two threads.
    std::thread::scope(|s| {
        for t in 0..8usize {
            let vault = vault.clone();
            let patients = &patients;
            s.spawn(move || {
                for p in patients.iter().skip(t % 4).step_by(4) {
                    vault.ensure_patient_key(p.id).unwrap();
                    assert!(vault.has_patient_key(p.id));
                }
            });
        }
    });
    for p in &patients {
        vault.put_patient(p, "test", t0()).unwrap();
    }
    vault.close().unwrap();
    let ring = std::fs::read_to_string(keyring_path(tmp.path())).unwrap();
    let patient_keys = ring.lines().filter(|l| l.contains("\"patient:")).count();
    assert_eq!(patient_keys, patients.len(), "one key per patient");
    let vault = open(tmp.path(), &mk);
    for p in &patients {
        assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(p));
    }
    vault.close().unwrap();
}
