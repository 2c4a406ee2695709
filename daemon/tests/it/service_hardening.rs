//! Issue 7: PHI reads are durably audited before they are answered; a
//! failed start leaves no dangling `service.start` and no socket file; the
//! watchdog does not depend on the async runtime; backups stream.

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::audit::AuditDraft;
use clinic_relay::clock::ManualClock;
use clinic_relay::config::Config;
use clinic_relay::service::{self, ServiceError};
use clinic_relay::vault::{Txn, Vault, VaultError};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A bound on how long a broken build can hang a test (never a sleep: every
/// wait below ends as soon as its event happens).
const HANG: Duration = Duration::from_secs(30);

/// The audit actions on disk *now*: the data directory is copied as it is
/// (as if the process had been killed at this instant) and the copy opened.
fn durable_actions(data: &Path, mk: &clinic_relay::keys::MasterKey) -> Vec<String> {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(data, copy.path());
    let vault = Vault::open(copy.path(), mk).unwrap();
    let actions = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap().action)
        .collect();
    vault.verify_audit().unwrap();
    vault.close().unwrap();
    actions
}

fn patient_body(mrn: &str) -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:clinic-relay:mrn", "value": mrn}],
        "name": [{"family": "ZZHARD", "given": ["ZZGIVEN"]}],
        "birthDate": "1901-02-03"
    })
}

/// Holds the vault writer until `go` is sent: nothing can be made durable
/// meanwhile. Returns once the writer is held.
async fn hold_writer(vault: &Vault) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let vault = vault.clone();
    let held = tokio::spawn(async move {
        vault
            .write(move |_| {
                entered_tx.send(()).unwrap();
                go_rx.recv_timeout(HANG).unwrap();
                Ok::<_, VaultError>((Txn::new(t0()), ()))
            })
            .await
            .unwrap();
    });
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(HANG).unwrap())
        .await
        .unwrap();
    (go_tx, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phi_read_is_answered_only_once_its_audit_entry_is_durable() {
    let d = Daemon::start("").await;
    let (status, p) = d
        .api("POST", "/v1/patients", Some(patient_body("H-100")))
        .await;
    assert_eq!(status, 200, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();

    // While the writer is held, no audit entry can become durable: a read
    // must not be answered.
    let (go, held) = hold_writer(&d.running.vault).await;
    let socket = d.running.api_socket.clone();
    let path = format!("/v1/patients/{pid}");
    let read = tokio::spawn(async move { api_call(&socket, "GET", &path, None, &[]).await });
    // Until the read is either answered (the defect) or known to wait for
    // its audit entry (the status document counts such reads).
    loop {
        if read.is_finished() {
            break;
        }
        let (_, s) = d.api("GET", "/v1/status", None).await;
        if s["audit"]["reads_waiting"].as_u64() == Some(1) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        !read.is_finished(),
        "the read was answered while its audit entry could not be written"
    );
    go.send(()).unwrap();
    held.await.unwrap();
    let (status, got) = tokio::time::timeout(HANG, read).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(got["name"][0]["family"], "ZZHARD");
    // Killed right now, the log would hold the read.
    let actions = durable_actions(&d.install.data, &d.install.master_key());
    assert_eq!(
        actions.iter().filter(|a| *a == "patient.read").count(),
        1,
        "{actions:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reads_larger_than_the_queue_is_all_durably_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mk = key(3);
    let vault = open(&data, &mk);
    let clock = Arc::new(ManualClock::new(t0()));
    let (auditor, task) =
        clinic_relay::api::read_audit::ReadAuditor::with_capacity(vault.clone(), clock, 4);
    const READS: usize = 300;
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..READS {
        let auditor = auditor.clone();
        reads.spawn(async move {
            auditor
                .record(vec![
                    AuditDraft::new("api:test", "patient.read").subject(format!("p-{i:032x}"))
                ])
                .await
        });
    }
    while let Some(done) = reads.join_next().await {
        done.unwrap().unwrap();
    }
    // Every read was answered, so every entry is on disk now.
    let actions = durable_actions(&data, &mk);
    assert_eq!(
        actions.iter().filter(|a| *a == "patient.read").count(),
        READS
    );
    drop(auditor);
    tokio::time::timeout(HANG, task).await.unwrap().unwrap();
    tokio::task::spawn_blocking(move || vault.close().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_answered_and_audited_under_concurrent_load() {
    let d = Daemon::start("").await;
    let (_, p) = d
        .api("POST", "/v1/patients", Some(patient_body("H-200")))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    const CLIENTS: usize = 16;
    const EACH: usize = 20;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let socket = d.running.api_socket.clone();
        let path = format!("/v1/patients/{pid}");
        clients.spawn(async move {
            for _ in 0..EACH {
                let (status, _) = api_call(&socket, "GET", &path, None, &[]).await;
                assert_eq!(status, 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let actions = durable_actions(&d.install.data, &d.install.master_key());
    assert_eq!(
        actions.iter().filter(|a| *a == "patient.read").count(),
        CLIENTS * EACH
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_bind_leaves_no_start_entry_and_no_socket() {
    // Someone else holds the MLLP port.
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = occupied.local_addr().unwrap();
    let install = TestInstall::new(&format!("[pms]\nmllp_listen = \"{addr}\"\n"));
    let config = Config::load(&install.config).unwrap();
    let socket = config.api.socket.clone();
    let clock = Arc::new(ManualClock::new(t0()));
    let err = match service::start(config.clone(), clock.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("started on a port in use"),
    };
    assert!(
        matches!(
            err,
            ServiceError::Bind {
                key: "pms.mllp_listen",
                ..
            }
        ),
        "{err}"
    );
    assert!(!socket.exists(), "the API socket file was left behind");

    // The data directory is free again, and its log tells the truth.
    let vault = install.open();
    let actions: Vec<String> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap().action)
        .collect();
    assert!(
        !actions.iter().any(|a| a == "service.start"),
        "a start that failed was audited as a start: {actions:?}"
    );
    assert_eq!(actions, ["service.start-failed"]);
    vault.verify_audit().unwrap();
    vault.close().unwrap();

    // Once the port is free, the same configuration starts.
    drop(occupied);
    let running = service::start(config, clock).await.unwrap();
    assert!(socket.exists());
    running.shutdown().await.unwrap();
    assert!(!socket.exists());
    let vault = install.open();
    let actions: Vec<String> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap().action)
        .collect();
    assert_eq!(
        actions,
        ["service.start-failed", "service.start", "service.stop"]
    );
    vault.close().unwrap();
}

#[test]
fn the_watchdog_pets_while_the_runtime_is_blocked() {
    // A one-thread runtime whose only worker is stuck in blocking work: a
    // watchdog that lived on the runtime could not run at all.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pets_tx, pets) = std::sync::mpsc::channel::<()>();
    rt.block_on(async move {
        let dog = service::Watchdog::start_with(Duration::from_millis(5), move || {
            let _ = pets_tx.send(());
        })
        .unwrap();
        // Blocking the worker on purpose.
        for _ in 0..3 {
            pets.recv_timeout(HANG)
                .expect("no watchdog pet while the runtime was blocked");
        }
        dog.stop();
    });
}

/// A destination that remembers how much it was handed at once.
#[derive(Default)]
struct Recording {
    bytes: Vec<u8>,
    largest_write: usize,
    writes: usize,
}

impl std::io::Write for Recording {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.largest_write = self.largest_write.max(buf.len());
        self.writes += 1;
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_backup_is_written_in_bounded_pieces_and_restores() {
    use clinic_relay::vault::backup::CHUNK_BYTES;
    use clinic_relay::vault::{Owner, Tree};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(5);
    let vault = open(&dir, &mk);
    // About 12 MiB of records: many times one chunk.
    const RECORDS: usize = 3000;
    let mut txn = Txn::new(t0());
    for i in 0..RECORDS {
        txn.put(
            Tree::Slots,
            format!("SLOT-{i:05}"),
            Owner::System,
            vec![b'x'; 4096],
        );
    }
    vault.commit(txn).unwrap();
    let p = marker_patient(&vault, "BK");
    vault.put_patient(&p, "test", t0()).unwrap();

    let (sink, summary) = vault.backup_into(t0(), Recording::default()).unwrap();
    assert_eq!(summary.bytes, sink.bytes.len() as u64);
    assert!(summary.records as usize > RECORDS);
    // Handed over a chunk at a time, never the whole store at once.
    assert!(
        sink.largest_write <= CHUNK_BYTES + 4096 + 1024,
        "a write of {} bytes",
        sink.largest_write
    );
    assert!(sink.bytes.len() > 40 * CHUNK_BYTES);
    assert!(sink.writes > 40, "{} writes", sink.writes);
    assert!(find_markers(&sink.bytes, &markers(&p)).is_empty());
    vault.close().unwrap();

    let (restored, report) = Vault::restore_from(
        std::io::Cursor::new(&sink.bytes),
        &tmp.path().join("restored"),
        &clinic_relay::vault::keyring_path(&dir),
        &mk,
    )
    .unwrap();
    assert_eq!(report.records, summary.records);
    assert_eq!(restored.count(Tree::Slots), RECORDS);
    assert_eq!(restored.get_patient(p.id).unwrap().as_ref(), Some(&p));
    restored.close().unwrap();
}

#[test]
fn a_damaged_or_cut_backup_restores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mk = key(6);
    let vault = open(&dir, &mk);
    for n in 0..3 {
        let p = marker_patient(&vault, &format!("D{n}"));
        vault.put_patient(&p, "test", t0()).unwrap();
    }
    let good = vault.backup(t0()).unwrap();
    vault.close().unwrap();
    let ring = clinic_relay::vault::keyring_path(&dir);
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let cases = [
        ("a flipped byte", flipped),
        ("a cut tail", good[..good.len() - 10].to_vec()),
        // Exactly the final chunk (length + 8-byte count + tag) missing.
        ("no final chunk", good[..good.len() - (4 + 8 + 16)].to_vec()),
        ("something appended", [good.clone(), b"x".to_vec()].concat()),
    ];
    for (what, bytes) in cases {
        let target = tmp.path().join("restored");
        assert!(
            Vault::restore(&bytes, &target, &ring, &mk).is_err(),
            "{what} restored"
        );
        assert!(
            !target.exists(),
            "{what}: the restore wrote before checking"
        );
    }
    let (restored, _) = Vault::restore(&good, &tmp.path().join("ok"), &ring, &mk).unwrap();
    restored.close().unwrap();
}

#[test]
fn a_format_1_backup_still_restores() {
    // Taken by the release before backups streamed (synthetic data, test key).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/backup-v1");
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::open(fixture.join("backup-v1.crbk")).unwrap();
    let (restored, report) = Vault::restore_from(
        std::io::BufReader::new(file),
        &tmp.path().join("restored"),
        &fixture.join("keyring"),
        &key(0x42),
    )
    .unwrap();
    assert_eq!(report.records, 9);
    assert_eq!(report.audit_entries, 2);
    for tag in ["V1A", "V1B"] {
        let p = marker_patient(&restored, tag);
        assert_eq!(restored.get_patient(p.id).unwrap().as_ref(), Some(&p));
    }
    restored.close().unwrap();
}
