//! `clinic-relay audit verify` on real files tampered with by someone who
//! has the disk but not the keys: each kind of tampering is found, the
//! command exits non-zero, and the message names the first bad seq.
//! (The chain logic against an insider who can seal is covered by the unit
//! tests in `audit.rs`.)

use crate::support::*;
use clinic_relay::audit::AuditDraft;
use clinic_relay::vault::Txn;

/// A closed data dir with 20 audit entries.
fn install_with_audit() -> TestInstall {
    let install = TestInstall::new("");
    let vault = install.open();
    for i in 0..20 {
        let mut txn = Txn::new(t0());
        txn.audit(AuditDraft::new("test", "thing.done").detail("n", i.to_string()));
        vault.commit(txn).unwrap();
    }
    vault.close().unwrap();
    install
}

fn tamper(install: &TestInstall, f: impl FnOnce(&mut AuditEntries)) {
    edit_audit_entries(&install.data, f);
}

fn seq(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn verify_fails_naming(install: &TestInstall, expected: &str) {
    let out = install.run(&["audit", "verify"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "verify passed on a tampered log");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

#[test]
fn an_untouched_log_verifies() {
    let install = install_with_audit();
    let out = install.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("20 entries"));
}

#[test]
fn a_modified_entry_is_named() {
    let install = install_with_audit();
    tamper(&install, |t| {
        let mut v = t.get(seq(7)).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        t.insert(seq(7), v).unwrap();
    });
    verify_fails_naming(&install, "audit entry 7 does not open");
}

#[test]
fn a_deleted_entry_is_named() {
    let install = install_with_audit();
    tamper(&install, |t| {
        t.remove(seq(7)).unwrap();
    });
    verify_fails_naming(&install, "audit entry 7 is missing");
}

#[test]
fn an_inserted_entry_is_named() {
    let install = install_with_audit();
    // Shift 8.. up by one and put a copy of entry 3 in the gap.
    tamper(&install, |t| {
        for n in (8..=20).rev() {
            let v = t.get(seq(n)).unwrap().unwrap();
            t.insert(seq(n + 1), v).unwrap();
        }
        let v = t.get(seq(3)).unwrap().unwrap();
        t.insert(seq(8), v).unwrap();
    });
    verify_fails_naming(&install, "audit entry 8 does not open");
}

#[test]
fn reordered_entries_are_named() {
    let install = install_with_audit();
    tamper(&install, |t| {
        let a = t.get(seq(11)).unwrap().unwrap();
        let b = t.get(seq(12)).unwrap().unwrap();
        t.insert(seq(11), b).unwrap();
        t.insert(seq(12), a).unwrap();
    });
    verify_fails_naming(&install, "audit entry 11 does not open");
}

#[test]
fn a_truncated_log_is_named() {
    let install = install_with_audit();
    tamper(&install, |t| {
        for n in 18..=20 {
            t.remove(seq(n)).unwrap();
        }
    });
    verify_fails_naming(&install, "first missing: 18");
}

#[test]
fn an_appended_entry_is_named() {
    let install = install_with_audit();
    tamper(&install, |t| {
        let v = t.get(seq(20)).unwrap().unwrap();
        t.insert(seq(21), v).unwrap();
    });
    verify_fails_naming(&install, "first unexpected: 21");
}

#[test]
fn a_damaged_log_stops_the_daemon_from_extending_it() {
    let install = install_with_audit();
    tamper(&install, |t| {
        t.remove(seq(20)).unwrap();
    });
    let vault = install.open();
    assert!(vault.audit_damage().is_some());
    let mut txn = Txn::new(t0());
    txn.audit(AuditDraft::new("test", "more"));
    assert!(vault.commit(txn).is_err());
}

#[test]
fn export_since_filters_by_time() {
    let install = TestInstall::new("");
    let vault = install.open();
    for day in 0..4 {
        let mut txn = Txn::new(t0() + jiff::SignedDuration::from_hours(24 * day));
        txn.audit(AuditDraft::new("test", "daily"));
        vault.commit(txn).unwrap();
    }
    vault.close().unwrap();
    let since = (t0() + jiff::SignedDuration::from_hours(48)).to_string();
    let out = install.run(&["audit", "export", "--since", &since]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 3);
    assert!(lines[0]["hash"].as_str().unwrap().len() == 64);
}

#[test]
fn verify_on_a_mistyped_data_dir_is_an_error_not_an_empty_log() {
    let install = TestInstall::new("");
    let text = std::fs::read_to_string(&install.config)
        .unwrap()
        .replace("data_dir = \"data\"", "data_dir = \"dtaa\"");
    std::fs::write(&install.config, text).unwrap();
    let out = install.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("holds no clinic-relay data"),
        "{}",
        stderr(&out)
    );
    assert!(!install.tmp.path().join("dtaa").exists());
}

/// A data dir from before the audit log had its own file kept the entries
/// in sled's audit tree: the first open moves them into `store/audit.log`,
/// and the chain still verifies.
#[test]
fn entries_kept_in_sled_by_an_earlier_version_move_to_the_audit_log_at_open() {
    let install = install_with_audit();
    let log = clinic_relay::vault::store_path(&install.data).join("audit.log");
    let mut entries = Vec::new();
    edit_audit_entries(&install.data, |e| {
        for n in 1..=20u64 {
            entries.push((n, e.remove(seq(n)).unwrap().unwrap()));
        }
    });
    std::fs::remove_file(&log).unwrap();
    {
        let db = sled::open(install.data.join("store")).unwrap();
        let tree = db.open_tree("audit").unwrap();
        for (n, value) in &entries {
            tree.insert(seq(*n), value.as_slice()).unwrap();
        }
        db.flush().unwrap();
    }
    let out = install.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("20 entries"));
    assert!(std::fs::metadata(&log).unwrap().len() > 0);
    let db = sled::open(install.data.join("store")).unwrap();
    let tree = db.open_tree("audit").unwrap();
    assert!(tree.get(seq(1)).unwrap().is_none(), "entry 1 left in sled");
    assert!(tree.get(b"head").unwrap().is_some());
}
