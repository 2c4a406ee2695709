//! The audit anchor (issue 7): the (seq, hash) of the chain's end kept
//! outside sled, in `<data_dir>/audit-anchor`, MAC'd with the audit key. A
//! store rolled back with its own head checkpoint is caught at open (the
//! vault reports audit damage, so the daemon refuses to start) and by
//! `clinic-relay audit verify`; ordinary stops, crashes between the sled
//! flush and the anchor write, and restores open cleanly.

use crate::support::*;
use clinic_relay::audit::AuditDraft;
use clinic_relay::vault::{keyring_path, store_path, Txn, Vault};
use std::path::{Path, PathBuf};

fn anchor_path(dir: &Path) -> PathBuf {
    dir.join("audit-anchor")
}

fn audit(vault: &Vault, n: u64) {
    for i in 0..n {
        let mut txn = Txn::new(t0());
        txn.audit(AuditDraft::new("test", "thing.done").detail("n", i.to_string()));
        vault.commit(txn).unwrap();
    }
}

/// The seq the anchor file claims (its format is JSON; tests only read it).
fn anchored_seq(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(anchor_path(dir)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["seq"].as_u64().unwrap()
}

fn replace_store(install: &TestInstall, from: &Path) {
    std::fs::remove_dir_all(store_path(&install.data)).unwrap();
    copy_dir(from, &store_path(&install.data));
}

fn verify_fails_naming(install: &TestInstall, expected: &[&str]) {
    let out = install.run(&["audit", "verify"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "verify passed: {err}");
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

fn verify_passes(install: &TestInstall, entries: u64) {
    let out = install.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{entries} entries")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_earlier_copy_of_the_store_put_back_is_a_rollback() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 5);
    vault.close().unwrap();
    let before = install.tmp.path().join("store-before");
    copy_dir(&store_path(&install.data), &before);

    let vault = install.open();
    audit(&vault, 5);
    vault.close().unwrap();
    replace_store(&install, &before);

    // The copy is internally consistent: its head checkpoint matches its
    // (shorter) log. Only the anchor knows that entries 6..=10 existed.
    let vault = install.open();
    let why = vault
        .audit_damage()
        .expect("a rolled-back store opened clean");
    assert!(why.contains("rolled back"), "{why}");
    // Nothing can be chained onto it (the daemon refuses to start on this).
    let mut txn = Txn::new(t0());
    txn.audit(AuditDraft::new("test", "more"));
    assert!(vault.commit(txn).is_err());
    vault.close().unwrap();
    verify_fails_naming(
        &install,
        &["rolled back", "anchor", "entry 10", "ends at 5"],
    );
}

#[test]
fn a_cut_tail_with_an_older_sealed_head_put_back_is_a_rollback() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 6);
    vault.close().unwrap();
    let old_head = {
        let db = sled::open(store_path(&install.data)).unwrap();
        let head = db
            .open_tree("audit")
            .unwrap()
            .get(b"head")
            .unwrap()
            .unwrap();
        head.to_vec()
    };
    let vault = install.open();
    audit(&vault, 4);
    vault.close().unwrap();
    {
        edit_audit_entries(&install.data, |entries| {
            for n in 7..=10u64 {
                entries.remove(n.to_be_bytes()).unwrap();
            }
        });
        let db = sled::open(store_path(&install.data)).unwrap();
        let tree = db.open_tree("audit").unwrap();
        tree.insert(b"head", old_head).unwrap();
        db.flush().unwrap();
    }
    let vault = install.open();
    let why = vault.audit_damage().expect("a cut tail opened clean");
    assert!(why.contains("rolled back"), "{why}");
    vault.close().unwrap();
    verify_fails_naming(&install, &["rolled back", "entry 10", "ends at 6"]);
}

#[test]
fn normal_and_kill_like_stops_reopen_cleanly() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 3);
    vault.close().unwrap();
    assert_eq!(anchored_seq(&install.data), 3);

    let vault = install.open();
    assert_eq!(vault.audit_damage(), None);
    audit(&vault, 2);
    // A kill-like stop: no close, the handle just goes away. The writer
    // thread may hold the last reference for a moment and release the store
    // in the background: wait for the data dir's lock (a blocking flock).
    drop(vault);
    let lock = std::fs::File::open(install.data.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    drop(lock);

    let vault = install.open();
    assert_eq!(vault.audit_damage(), None);
    assert_eq!(vault.audit_seq(), 5);
    assert_eq!(anchored_seq(&install.data), 5);
    audit(&vault, 1);
    vault.close().unwrap();
    verify_passes(&install, 6);
}

#[test]
fn a_crash_between_the_flush_and_the_anchor_write_opens() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 3);
    vault.close().unwrap();
    let older = std::fs::read(anchor_path(&install.data)).unwrap();

    let vault = install.open();
    audit(&vault, 3);
    vault.close().unwrap();
    // The store is durable up to 6, the anchor still says 3: what a crash
    // right after the sled flush leaves.
    std::fs::write(anchor_path(&install.data), older).unwrap();
    assert_eq!(anchored_seq(&install.data), 3);

    let vault = install.open();
    assert_eq!(vault.audit_damage(), None);
    assert_eq!(vault.audit_seq(), 6);
    // The anchor caught up at open.
    assert_eq!(anchored_seq(&install.data), 6);
    vault.close().unwrap();
    verify_passes(&install, 6);
}

#[test]
fn a_tampered_anchor_is_reported() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 4);
    vault.close().unwrap();
    let path = anchor_path(&install.data);
    let good = std::fs::read(&path).unwrap();

    // One bit flipped, anywhere in the file.
    for at in [2, good.len() / 2, good.len() - 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let vault = install.open();
        let why = vault.audit_damage().expect("a flipped bit went unnoticed");
        assert!(why.contains("audit anchor"), "{why}");
        vault.close().unwrap();
        verify_fails_naming(&install, &["audit anchor"]);
    }

    // A well-formed anchor with a seq raised by hand: its MAC no longer holds.
    let text = String::from_utf8(good.clone()).unwrap();
    let forged = text.replace("\"seq\":4", "\"seq\":3");
    assert_ne!(forged, text);
    std::fs::write(&path, forged).unwrap();
    verify_fails_naming(&install, &["audit anchor", "MAC"]);

    // Deleted: this store has written anchors before, so that is damage too.
    std::fs::remove_file(&path).unwrap();
    let vault = install.open();
    let why = vault
        .audit_damage()
        .expect("a deleted anchor went unnoticed");
    assert!(why.contains("missing"), "{why}");
    vault.close().unwrap();
    verify_fails_naming(&install, &["audit anchor", "missing"]);

    // Put back, all is well again.
    std::fs::write(&path, &good).unwrap();
    verify_passes(&install, 4);
}

#[test]
fn a_data_dir_from_before_anchors_gets_one_at_open() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 4);
    vault.close().unwrap();
    // What an older version left: no anchor file, and no mark in the store
    // that anchors were ever written.
    std::fs::remove_file(anchor_path(&install.data)).unwrap();
    {
        let db = sled::open(store_path(&install.data)).unwrap();
        let audit = db.open_tree("audit").unwrap();
        assert!(audit.remove(b"anchored").unwrap().is_some());
        db.flush().unwrap();
    }
    let vault = install.open();
    assert_eq!(vault.audit_damage(), None);
    assert_eq!(anchored_seq(&install.data), 4);
    vault.close().unwrap();
    verify_passes(&install, 4);
    // From now on, a missing anchor is damage.
    std::fs::remove_file(anchor_path(&install.data)).unwrap();
    verify_fails_naming(&install, &["audit anchor", "missing"]);
}

#[test]
fn a_backup_restored_into_a_new_dir_opens_and_verifies() {
    let install = TestInstall::new("");
    let vault = install.open();
    audit(&vault, 7);
    let backup = vault.backup(t0()).unwrap();
    audit(&vault, 2);
    vault.close().unwrap();

    let restored = install.tmp.path().join("restored");
    let (vault, report) = Vault::restore(
        &backup,
        &restored,
        &keyring_path(&install.data),
        &install.master_key(),
    )
    .unwrap();
    assert_eq!(report.audit_entries, 7);
    assert_eq!(vault.audit_damage(), None);
    assert_eq!(anchored_seq(&restored), 7);
    audit(&vault, 1);
    vault.close().unwrap();
    assert_eq!(anchored_seq(&restored), 8);

    // The restored dir in the configured place: it starts and verifies.
    std::fs::rename(&install.data, install.tmp.path().join("data-old")).unwrap();
    std::fs::rename(&restored, &install.data).unwrap();
    let vault = install.open();
    assert_eq!(vault.audit_damage(), None);
    vault.close().unwrap();
    verify_passes(&install, 8);
}
