//! Invariant 4: erasing a patient destroys their data key, so nothing of
//! theirs opens afterwards, even from a copy of the store taken before.

use crate::support::*;
use clinic_relay::vault::{keyring_path, store_path, Tree, VaultError};

#[test]
fn erased_patient_is_unreadable_also_in_an_older_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(7);
    let vault = open(&dir, &mk);
    let a = marker_patient(&vault, "A");
    let b = marker_patient(&vault, "B");
    vault.put_patient(&a, "test", t0()).unwrap();
    vault.put_patient(&b, "test", t0()).unwrap();
    vault.close().unwrap();

    // The copy an attacker (or an old backup) holds.
    let before = tmp.path().join("before");
    copy_dir(&store_path(&dir), &store_path(&before));

    let vault = open(&dir, &mk);
    assert!(vault.erase_patient(a.id, "privacy-officer", t0()).unwrap());
    assert!(
        !vault.erase_patient(a.id, "privacy-officer", t0()).unwrap(),
        "second erasure is a no-op"
    );
    assert_eq!(vault.get_patient(a.id).unwrap(), None);
    assert!(vault
        .find_patients_by_mrn(TEST_AUTHORITY, &a.mrn)
        .unwrap()
        .is_empty());
    assert_eq!(vault.get_patient(b.id).unwrap().as_ref(), Some(&b));
    let ledger = vault.erasure_ledger().unwrap();
    assert_eq!(ledger, vec![(a.id, t0())]);
    let erase_entry = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .find(|e| e.action == "patient.erase")
        .unwrap();
    assert_eq!(
        erase_entry.subject.as_deref(),
        Some(a.id.to_string().as_str())
    );
    vault.close().unwrap();

    // Old store + current keyring: a is gone for good, b still opens.
    std::fs::copy(keyring_path(&dir), keyring_path(&before)).unwrap();
    let old = open(&before, &mk);
    match old.get(Tree::Patients, &a.id.0) {
        Err(VaultError::KeyUnavailable { tree, .. }) => assert_eq!(tree, Tree::Patients.name()),
        other => panic!("erased patient readable from an old copy: {other:?}"),
    }
    // The MRN lookup goes to the record, which no longer opens: not found.
    assert!(old
        .find_patients_by_mrn(TEST_AUTHORITY, &a.mrn)
        .unwrap()
        .is_empty());
    // The phone lookup's entry is sealed under the destroyed key too.
    assert!(matches!(
        old.find_patients_by_phone(a.phone.as_deref().unwrap()),
        Err(VaultError::KeyUnavailable { .. })
    ));
    assert_eq!(old.get_patient(b.id).unwrap().as_ref(), Some(&b));
}

#[test]
fn the_keyring_file_itself_forgets_the_erased_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(7);
    let vault = open(tmp.path(), &mk);
    let a = marker_patient(&vault, "A");
    vault.put_patient(&a, "test", t0()).unwrap();
    // A new patient's key line is durable in the store's write-ahead log
    // first, and reaches the keyring file at the next checkpoint.
    let wal = tmp.path().join("store").join("wal");
    let holds = |path: &std::path::Path, label: &str| {
        let bytes = std::fs::read(path).unwrap_or_default();
        bytes.windows(label.len()).any(|w| w == label.as_bytes())
    };
    let label = format!("patient:{}", a.id.to_hex());
    assert!(holds(&wal, &label) || holds(&keyring_path(tmp.path()), &label));
    vault.erase_patient(a.id, "test", t0()).unwrap();
    assert!(
        !holds(&keyring_path(tmp.path()), &label),
        "the erased key's line must be gone from the file"
    );
    assert!(
        !holds(&wal, &label),
        "the erased key's line must be gone from the store's log"
    );
    // A stale temp file of the rewrite must not linger either.
    assert!(!keyring_path(tmp.path()).with_extension("tmp").exists());
}

#[test]
fn a_patient_registered_again_after_erasure_keeps_the_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(7);
    let vault = open(tmp.path(), &mk);
    let a = marker_patient(&vault, "A");
    vault.put_patient(&a, "test", t0()).unwrap();
    vault.erase_patient(a.id, "test", t0()).unwrap();
    // The PMS sends the same MRN again: a new registration, a new key.
    vault.put_patient(&a, "test", t0()).unwrap();
    vault.close().unwrap();
    let vault = open(tmp.path(), &mk);
    assert_eq!(vault.get_patient(a.id).unwrap().as_ref(), Some(&a));
    assert_eq!(vault.erasure_ledger().unwrap().len(), 1);
}

#[test]
fn key_handles_are_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(7);
    let vault = open(&dir, &mk);
    let a = marker_patient(&vault, "A");
    vault.put_patient(&a, "test", t0()).unwrap();
    vault.close().unwrap();
    let before = tmp.path().join("before");
    copy_dir(&store_path(&dir), &store_path(&before));
    let vault = open(&dir, &mk);
    vault.erase_patient(a.id, "test", t0()).unwrap(); // a had the highest handle
    let b = marker_patient(&vault, "B");
    vault.put_patient(&b, "test", t0()).unwrap();
    vault.close().unwrap();
    std::fs::copy(keyring_path(&dir), keyring_path(&before)).unwrap();
    let old = open(&before, &mk);
    assert!(matches!(
        old.get(Tree::Patients, &a.id.0),
        Err(VaultError::KeyUnavailable { .. })
    ));
}

#[test]
fn the_keyring_copy_follows_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let copy = tmp.path().join("backups-keyring");
    let vault = open(&dir, &key(7));
    vault.set_keyring_mirror(&copy).unwrap();
    let a = marker_patient(&vault, "A");
    vault.put_patient(&a, "test", t0()).unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(keyring_path(&dir)).unwrap()
    );
    vault.erase_patient(a.id, "test", t0()).unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(keyring_path(&dir)).unwrap()
    );
    assert!(!std::fs::read_to_string(&copy)
        .unwrap()
        .contains(&a.id.to_hex()));
}

#[test]
fn a_keyring_copy_of_other_data_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy.keyring");
    let first = open(&tmp.path().join("one"), &key(7));
    first.set_keyring_mirror(&copy).unwrap();
    first.close().unwrap();
    let before = std::fs::read(&copy).unwrap();
    // A fresh data dir (say, a daemon started before a restore) must not
    // replace the only current copy.
    let second = open(&tmp.path().join("two"), &key(7));
    assert!(second.set_keyring_mirror(&copy).is_err());
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

#[test]
fn a_patient_erased_after_a_restored_backup_can_be_registered_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(7);
    let vault = open(&dir, &mk);
    let a = marker_patient(&vault, "A");
    vault.put_patient(&a, "test", t0()).unwrap();
    let backup = vault.backup(t0()).unwrap();
    vault.erase_patient(a.id, "test", t0()).unwrap();
    vault.close().unwrap();
    let (restored, report) = clinic_relay::vault::Vault::restore(
        &backup,
        &tmp.path().join("restored"),
        &keyring_path(&dir),
        &mk,
    )
    .unwrap();
    assert!(report.unreadable_erased >= 1);
    // The PMS registers the same MRN again: a new record under a new key.
    restored.put_patient(&a, "test", t0()).unwrap();
    assert_eq!(restored.get_patient(a.id).unwrap().as_ref(), Some(&a));
}
