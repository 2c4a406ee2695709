//! The vault's sealing through its real interface and the real sled files:
//! round trip, wrong key, and each kind of damage as a typed error.

use crate::support::*;
use clinic_relay::vault::keyring::KeyringError;
use clinic_relay::vault::seal::SealError;
use clinic_relay::vault::{Owner, Tree, Txn, VaultError};

/// Opens the raw sled store under a closed vault, as an attacker with disk
/// access (but no keys) would.
fn raw_tree(dir: &std::path::Path, tree: &str) -> (sled::Db, sled::Tree) {
    let db = sled::open(dir.join("store")).unwrap();
    let t = db.open_tree(tree).unwrap();
    (db, t)
}

#[test]
fn patients_round_trip_and_are_found_by_blind_index() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(1);
    let vault = open(tmp.path(), &mk);
    let a = marker_patient(&vault, "A");
    let b = marker_patient(&vault, "B");
    vault.put_patient(&a, "test", t0()).unwrap();
    vault.put_patient(&b, "test", t0()).unwrap();
    assert_eq!(vault.get_patient(a.id).unwrap().unwrap(), a);
    assert_eq!(
        vault.find_patients_by_mrn(TEST_AUTHORITY, &a.mrn).unwrap(),
        vec![a.id]
    );
    assert_eq!(
        vault
            .find_patients_by_phone(b.phone.as_deref().unwrap())
            .unwrap(),
        vec![b.id]
    );
    assert!(vault
        .find_patients_by_phone("+10000000000")
        .unwrap()
        .is_empty());
    // A changed phone moves the index entry.
    let mut a2 = a.clone();
    a2.phone = Some("+4915550100042".into());
    vault.put_patient(&a2, "test", t0()).unwrap();
    assert!(vault
        .find_patients_by_phone(a.phone.as_deref().unwrap())
        .unwrap()
        .is_empty());
    assert_eq!(
        vault.find_patients_by_phone("+4915550100042").unwrap(),
        vec![a.id]
    );
    vault.close().unwrap();
    // And everything is still there after a reopen.
    let vault = open(tmp.path(), &mk);
    assert_eq!(vault.get_patient(a.id).unwrap().unwrap(), a2);
    assert_eq!(vault.verify_audit().unwrap(), 3);
}

#[test]
fn wrong_master_key_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path(), &key(1)).close().unwrap();
    match clinic_relay::vault::Vault::open(tmp.path(), &key(2)) {
        Err(VaultError::Keyring(KeyringError::WrongMasterKey { .. })) => {}
        other => panic!("expected WrongMasterKey, got {other:?}"),
    }
}

#[test]
fn a_second_process_cannot_open_the_same_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = open(tmp.path(), &key(1));
    match clinic_relay::vault::Vault::open(tmp.path(), &key(1)) {
        Err(VaultError::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn damaged_records_on_disk_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(1);
    let vault = open(tmp.path(), &mk);
    let a = marker_patient(&vault, "A");
    let b = marker_patient(&vault, "B");
    let c = marker_patient(&vault, "C");
    let d = marker_patient(&vault, "D");
    for p in [&a, &b, &c, &d] {
        vault.put_patient(p, "test", t0()).unwrap();
    }
    vault.close().unwrap();
    {
        let (db, t) = raw_tree(tmp.path(), "patients");
        let va = t.get(a.id.0).unwrap().unwrap();
        let vb = t.get(b.id.0).unwrap().unwrap();
        // swap a and b
        t.insert(a.id.0, vb.clone()).unwrap();
        t.insert(b.id.0, va.clone()).unwrap();
        // flip one bit in c
        let mut vc = t.get(c.id.0).unwrap().unwrap().to_vec();
        let mid = vc.len() / 2;
        vc[mid] ^= 0x10;
        t.insert(c.id.0, vc).unwrap();
        // truncate d to its header
        let vd = t.get(d.id.0).unwrap().unwrap();
        t.insert(d.id.0, &vd[..12]).unwrap();
        db.flush().unwrap();
    }
    let vault = open(tmp.path(), &mk);
    for (who, p) in [("swapped a", &a), ("swapped b", &b), ("flipped c", &c)] {
        match vault.get_patient(p.id) {
            Err(VaultError::Damaged {
                source: SealError::Tampered,
                ..
            }) => {}
            other => panic!("{who}: expected a typed damage error, got {other:?}"),
        }
    }
    match vault.get_patient(d.id) {
        Err(VaultError::Damaged {
            source: SealError::Truncated { .. },
            ..
        }) => {}
        other => panic!("truncated: expected Truncated, got {other:?}"),
    }
    // None of these error messages carries PHI.
    let msgs: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|p| vault.get_patient(p.id).unwrap_err().to_string())
        .collect();
    let all_markers: Vec<String> = [&a, &b, &c, &d].iter().flat_map(|p| markers(p)).collect();
    assert!(find_markers(msgs.join("\n").as_bytes(), &all_markers).is_empty());
}

#[test]
fn values_moved_between_records_of_the_same_key_fail_to_open() {
    // Same owner, same key: only the associated data (tree + record key)
    // tells the two records apart.
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(1);
    let vault = open(tmp.path(), &mk);
    let mut txn = Txn::new(t0());
    txn.put(
        Tree::Meta,
        b"one".to_vec(),
        Owner::System,
        b"first".to_vec(),
    );
    txn.put(
        Tree::Meta,
        b"two".to_vec(),
        Owner::System,
        b"second".to_vec(),
    );
    vault.commit(txn).unwrap();
    vault.close().unwrap();
    {
        let (db, t) = raw_tree(tmp.path(), "meta");
        let one = t.get(b"one").unwrap().unwrap();
        t.insert(b"two", one).unwrap();
        db.flush().unwrap();
    }
    let vault = open(tmp.path(), &mk);
    assert_eq!(vault.get(Tree::Meta, b"one").unwrap().unwrap(), b"first");
    assert!(matches!(
        vault.get(Tree::Meta, b"two"),
        Err(VaultError::Damaged {
            source: SealError::Tampered,
            ..
        })
    ));
}

#[test]
fn concurrent_committers_share_flushes_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(1);
    let vault = open(tmp.path(), &mk);
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let vault = vault.clone();
            s.spawn(move || {
                for i in 0..25u64 {
                    let mut txn = Txn::new(t0());
                    txn.put(
                        Tree::Meta,
                        (t * 1000 + i).to_be_bytes().to_vec(),
                        Owner::System,
                        vec![t as u8; 64],
                    );
                    txn.audit(clinic_relay::audit::AuditDraft::new("test", "meta.put"));
                    vault.commit(txn).unwrap();
                }
            });
        }
    });
    vault.close().unwrap();
    let vault = open(tmp.path(), &mk);
    assert_eq!(vault.count(Tree::Meta), 16 * 25);
    assert_eq!(vault.verify_audit().unwrap(), 16 * 25);
}

/// Patients keyed by several callers at once (`ensure_patient_key`, whose
/// creation goes through the same batched append as the writer's) each end
/// up with exactly one key line, the keyring reopens, and every record opens
/// after a restart.
#[test]
fn patients_keyed_by_concurrent_callers_each_get_exactly_one_durable_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(3);
    let vault = open(tmp.path(), &mk);
    let patients: Vec<_> = (0..64)
        .map(|i| marker_patient(&vault, &format!("K{i}")))
        .collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (vault, patients) = (&vault, &patients);
            s.spawn(move || {
                // Every caller asks for every key, each in its own order.
                for i in 0..patients.len() {
                    let p = &patients[(i * 5 + t * 7) % patients.len()];
                    vault.ensure_patient_key(p.id).unwrap();
                }
            });
        }
    });
    for p in &patients {
        vault.put_patient(p, "test", t0()).unwrap();
    }
    vault.close().unwrap();
    let text = std::fs::read_to_string(clinic_relay::vault::keyring_path(tmp.path())).unwrap();
    for p in &patients {
        let label = format!("patient:{}", p.id.to_hex());
        assert_eq!(text.matches(&label).count(), 1, "one key line per patient");
    }
    let vault = open(tmp.path(), &mk);
    for p in &patients {
        assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(p));
    }
}
