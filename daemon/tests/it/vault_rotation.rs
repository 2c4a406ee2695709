//! Master key rotation: data is re-sealed under a new generation of keys
//! while readers keep reading; a rotation interrupted after its first step
//! resumes; blind indexes and the audit chain survive unchanged.

use crate::support::*;
use clinic_relay::vault::keyring::KeyringError;
use clinic_relay::vault::{Vault, VaultError};
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn rotation_reseals_everything_while_readers_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (key(1), key(2));
    let vault = open(tmp.path(), &old);
    let patients: Vec<_> = (0..150)
        .map(|i| {
            let p = marker_patient(&vault, &format!("{i:04}"));
            vault.put_patient(&p, "test", t0()).unwrap();
            p
        })
        .collect();
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    for p in &patients {
                        assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(p));
                        reads += 1;
                    }
                }
            });
        }
        let report = vault.rotate_master_key(&new).unwrap();
        done.store(true, Ordering::Relaxed);
        report
    });
    // 150 records + 150 phone index entries + 150 audit entries + head, at
    // least.
    assert!(report.resealed >= 451, "{report:?}");
    assert_eq!(
        report.keys_retired, 151,
        "150 patient keys + the old system key"
    );
    assert_eq!(
        vault
            .find_patients_by_mrn(TEST_AUTHORITY, &patients[9].mrn)
            .unwrap(),
        vec![patients[9].id]
    );
    vault.close().unwrap();

    match Vault::open(tmp.path(), &old) {
        Err(VaultError::Keyring(KeyringError::WrongMasterKey { hint, .. })) => {
            assert!(hint.contains("before the last rotation"), "{hint}")
        }
        other => panic!("the old key must no longer open the data: {other:?}"),
    }
    let vault = open(tmp.path(), &new);
    assert!(!vault.rotation_pending());
    assert_eq!(vault.key_generation(), 2);
    for p in &patients {
        assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(p));
    }
    assert_eq!(vault.verify_audit().unwrap(), 150);
}

#[test]
fn an_interrupted_rotation_resumes_with_the_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (key(1), key(2));
    let vault = open(tmp.path(), &old);
    let p = marker_patient(&vault, "R");
    vault.put_patient(&p, "test", t0()).unwrap();
    vault.begin_rotation(&new).unwrap();
    // New writes during a rotation use the new generation at once.
    let q = marker_patient(&vault, "S");
    vault.put_patient(&q, "test", t0()).unwrap();
    vault.close().unwrap(); // "crash" between the steps

    let vault = open(tmp.path(), &new);
    assert!(vault.rotation_pending());
    assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(&p));
    let report = vault.resume_rotation().unwrap();
    assert!(report.resealed >= 3);
    assert!(!vault.rotation_pending());
    assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(&p));
    assert_eq!(vault.get_patient(q.id).unwrap().as_ref(), Some(&q));
    vault.verify_audit().unwrap();
}

#[test]
fn the_daemon_rotates_online_from_the_previous_key() {
    // The operator's path: put the new key in keys.master_key_file, the old
    // one in keys.previous_master_key_file, restart; the daemon serves and
    // rotates. Here the same code path runs through `service::open_vault`.
    let install = TestInstall::new("");
    let vault = install.open();
    let p = marker_patient(&vault, "O");
    vault.put_patient(&p, "test", t0()).unwrap();
    vault.close().unwrap();
    let old_path = install.tmp.path().join("old.key");
    std::fs::rename(&install.key_file, &old_path).unwrap();
    clinic_relay::keys::MasterKey::generate()
        .unwrap()
        .write_new_file(&install.key_file)
        .unwrap();
    let text = std::fs::read_to_string(&install.config).unwrap().replace(
        "[keys]\n",
        "[keys]\nprevious_master_key_file = \"old.key\"\n",
    );
    std::fs::write(&install.config, text).unwrap();
    let config = clinic_relay::config::Config::load(&install.config).unwrap();
    let opened = clinic_relay::service::open_vault(&config).unwrap();
    let new = opened
        .rotate_to
        .expect("the previous key opened the data, so a rotation is due");
    opened.vault.rotate_master_key(&new).unwrap();
    opened.vault.close().unwrap();
    let vault = install.open();
    assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(&p));
}

#[test]
fn a_backup_taken_before_a_rotation_still_restores_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (old, new) = (key(1), key(2));
    let vault = open(&dir, &old);
    let p = marker_patient(&vault, "B");
    vault.put_patient(&p, "test", t0()).unwrap();
    let backup = vault.backup(t0()).unwrap();
    vault.rotate_master_key(&new).unwrap();
    vault.close().unwrap();
    let (restored, report) = Vault::restore(
        &backup,
        &tmp.path().join("restored"),
        &clinic_relay::vault::keyring_path(&dir),
        &new,
    )
    .unwrap();
    assert_eq!(report.unreadable_erased, 0);
    assert_eq!(restored.get_patient(p.id).unwrap().as_ref(), Some(&p));
    // The old master key opens neither.
    assert!(Vault::restore(
        &backup,
        &tmp.path().join("again"),
        &clinic_relay::vault::keyring_path(&dir),
        &old
    )
    .is_err());
}
