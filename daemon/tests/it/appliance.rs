//! Backup, restore and status through the real binary against a running
//! daemon (in-process, so the test can drive load at the same time).

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::vault::{Tree, Vault, VaultError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_write_load_restores_and_verifies() {
    let d = Daemon::start("").await;
    let addr = d.running.mllp_addr;
    // Write load on two connections while the backup runs.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    // The backup starts once both writers are under way.
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(2);
    for w in 0..2 {
        let stop = stop_rx.clone();
        let started_tx = started_tx.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Mllp::connect(addr).await;
            let mut n = 0;
            while !*stop.borrow() || n < 20 {
                let ack = c
                    .send(&adt_a04(
                        &format!("L{w}-{n}"),
                        &format!("LOAD{w}{n:05}"),
                        "ZZLOAD",
                        "",
                    ))
                    .await;
                assert_eq!(msa(&ack).0, "AA");
                n += 1;
                if n == 5 {
                    started_tx.send(()).await.unwrap();
                }
            }
            n
        }));
    }
    for _ in 0..2 {
        started.recv().await.unwrap();
    }
    let backup = d.install.tmp.path().join("backups/b1.crbk");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let out = run_cli_async(
        &d.install.config,
        &["backup", "create", backup.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    stop_tx.send(true).unwrap();
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written >= 40);
    assert!(backup
        .parent()
        .unwrap()
        .join("clinic-relay.keyring")
        .exists());
    // The backup holds no PHI in the clear.
    let bytes = std::fs::read(&backup).unwrap();
    assert!(find_markers(&bytes, &["ZZLOAD".to_owned(), "LOAD000000".to_owned()]).is_empty());

    let restored = d.install.tmp.path().join("restored");
    let out = run_cli_async(
        &d.install.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("verified"), "{}", stdout(&out));

    // Restoring again into the same (now non-empty) directory is refused.
    let out = run_cli_async(
        &d.install.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    let vault = Vault::open(&restored, &d.install.master_key()).unwrap();
    assert!(vault.count(Tree::Patients) >= 1);
    vault.verify_audit().unwrap();
    vault.close().unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_erased_after_the_backup_stays_unreadable_in_it() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c.send(&adt_a04("E1", "ERASE1", "ZZGONE", "")).await).0,
        "AA"
    );
    assert_eq!(
        msa(&c.send(&adt_a04("E2", "KEEP1", "ZZKEPT", "")).await).0,
        "AA"
    );
    let gone = d.running.vault.find_patients_by_mrn("", "ERASE1").unwrap()[0];
    let kept = d.running.vault.find_patients_by_mrn("", "KEEP1").unwrap()[0];
    let backup = d.install.tmp.path().join("b.crbk");
    let out = run_cli_async(
        &d.install.config,
        &["backup", "create", backup.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, _) = d
        .api("DELETE", &format!("/v1/patients/{}", gone.to_hex()), None)
        .await;
    assert_eq!(status, 204);

    let restored = d.install.tmp.path().join("restored");
    let out = run_cli_async(
        &d.install.config,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let vault = Vault::open(&restored, &d.install.master_key()).unwrap();
    assert!(matches!(
        vault.get(clinic_relay::vault::Tree::Patients, &gone.0),
        Err(VaultError::KeyUnavailable { .. })
    ));
    // For every decision the vault makes, the leftover is simply absent.
    assert!(vault.get_patient(gone).unwrap().is_none());
    assert_eq!(
        vault.get_patient(kept).unwrap().unwrap().family_name,
        "ZZKEPT"
    );
    vault.close().unwrap();
    d.stop().await;
}

#[test]
fn status_against_a_stopped_daemon_says_so_and_fails() {
    let install = TestInstall::new("");
    let out = install.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NOT RUNNING"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_and_turns_unhealthy_with_a_stuck_queue() {
    let d = Daemon::start("").await;
    let out = run_cli_async(&d.install.config, &["status"]).await;
    let text = stdout(&out);
    assert!(
        text.contains("WhatsApp dry-run")
            && text.contains("audit: head seq")
            && text.contains("reminders (last 30 days): 0 sent"),
        "{text}"
    );
    // Healthy unless the machine itself warns (a nearly full disk).
    assert_eq!(out.status.success(), !text.contains("WARNING"), "{text}");

    // A patient action queued for the PMS with no outbound endpoint configured.
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("Q1", "APPT-Q1", "003000", "202612011000"))
            .await)
        .0,
        "AA"
    );
    let cfg = d.running.outbound.clone();
    clinic_relay::pms::outbound::record(
        &d.running.vault,
        &cfg,
        &clinic_relay::pms::outbound::PatientAction::Confirm {
            appointment: "APPT-Q1".into(),
        },
        "test",
        t0(),
    )
    .await
    .unwrap();
    let out = run_cli_async(&d.install.config, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("pms.outbound_endpoint is not set"),
        "{}",
        stdout(&out)
    );
    d.stop().await;
}
