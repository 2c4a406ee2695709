//! Invariant 1: no PHI in plaintext on disk, in the audit log, or in log
//! output. Patients whose every field is a marker string are written, the
//! vault is flushed and closed, and every byte of every file is searched.

use crate::support::*;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A tracing writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_marker_reaches_disk_audit_or_logs() {
    let install = TestInstall::new("");
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let mut all_markers = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        let vault = install.open();
        let mut patients = Vec::new();
        for i in 0..20 {
            let p = marker_patient(&vault, &format!("{i:03}"));
            vault.put_patient(&p, "test", t0()).unwrap();
            all_markers.extend(markers(&p));
            patients.push(p);
        }
        // Reads, lookups, an update and an erasure all leave traces we scan.
        for p in &patients {
            assert_eq!(vault.get_patient(p.id).unwrap().as_ref(), Some(p));
            assert_eq!(
                vault.find_patients_by_mrn(TEST_AUTHORITY, &p.mrn).unwrap(),
                vec![p.id]
            );
        }
        let mut changed = patients[3].clone();
        changed.family_name = "ZZMARKRENAMED".into();
        all_markers.push(changed.family_name.clone());
        vault.put_patient(&changed, "test", t0()).unwrap();
        vault.erase_patient(patients[4].id, "test", t0()).unwrap();
        tracing::info!(patient = %patients[0].id, "a log line naming a patient the allowed way");
        vault.close().unwrap();
    });

    let disk_hits = scan_dir(&install.data, &all_markers);
    assert!(disk_hits.is_empty(), "PHI on disk: {disk_hits:#?}");

    // The audit log as exported by the real binary.
    let export = install.run(&["audit", "export"]);
    assert!(export.status.success(), "{}", stderr(&export));
    assert!(stdout(&export).lines().count() >= 22);
    let audit_hits = find_markers(&export.stdout, &all_markers);
    assert!(
        audit_hits.is_empty(),
        "PHI in the audit export: {audit_hits:?}"
    );

    let logs = captured.0.lock().unwrap().clone();
    assert!(String::from_utf8_lossy(&logs).contains("a log line naming a patient"));
    let log_hits = find_markers(&logs, &all_markers);
    assert!(log_hits.is_empty(), "PHI in logs: {log_hits:?}");
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    // Guards the guard: a scan that cannot fail proves nothing.
    let tmp = tempfile::tempdir().unwrap();
    let m = vec!["ZZMARKPLAIN".to_owned()];
    std::fs::write(tmp.path().join("plain"), b"xxZZMARKPLAINxx").unwrap();
    let utf16: Vec<u8> = "ZZMARKPLAIN"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    std::fs::write(tmp.path().join("sub/utf16"), utf16).unwrap();
    std::fs::write(tmp.path().join("hex"), hex::encode("ZZMARKPLAIN")).unwrap();
    assert_eq!(scan_dir(tmp.path(), &m).len(), 3);
}
