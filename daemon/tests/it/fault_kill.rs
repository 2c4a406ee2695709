//! kill -9 under mixed load (issue #8): MLLP registrations and appointments
//! on two connections, API patient writes and erasures, and signed WhatsApp
//! webhooks at once, and the real daemon SIGKILLed at a varying moment, 50
//! times on one data dir. (The WhatsApp outbox under kill -9 has its own
//! test, `wa_crash`, against the Graph simulator.) After
//! every kill: everything acknowledged is present and opens, every index
//! entry agrees with its record (`Vault::verify`), the audit chain verifies,
//! and nothing of a patient whose erasure was acknowledged opens.

use crate::pms_support::*;
use crate::support::*;
use crate::webhook::{sign, statuses_body};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KILLS: u64 = 50;

#[derive(Default)]
struct Acked {
    /// MRNs whose registration got AA (MLLP) or 200 (API).
    patients: BTreeSet<String>,
    /// Appointment ids whose SIU got AA.
    appointments: BTreeSet<String>,
    /// API patients: (MRN, id) pairs created with 200, for the erasures.
    erasable: Vec<(String, String)>,
    /// MRNs of patients whose erasure was sent (acknowledged or not): their
    /// presence after a kill is not promised either way.
    erase_sent: BTreeSet<String>,
    /// (MRN, id) of erasures answered 204.
    erased: Vec<(String, String)>,
    /// wamids of webhook status posts answered 200.
    statuses: Vec<String>,
}

impl Acked {
    fn total(&self) -> usize {
        self.patients.len() + self.appointments.len() + self.erased.len() + self.statuses.len()
    }
}

const WEBHOOK_SECRET: &str = "fault-kill-app-secret";

async fn webhook_load(addr: std::net::SocketAddr, round: u64, acked: Shared) {
    use http_body_util::{BodyExt, Full};
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let io = hyper_util::rt::TokioIo::new(stream);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
        return;
    };
    tokio::spawn(conn);
    for i in 0.. {
        let wamid = format!("wamid.FK{round}-{i}");
        let body = statuses_body(&wamid, ["sent", "delivered", "read"][i % 3]);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/webhook")
            .header("host", "localhost")
            .header("x-hub-signature-256", sign(WEBHOOK_SECRET, &body))
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let Ok(resp) = sender.send_request(req).await else {
            return;
        };
        let status = resp.status().as_u16();
        if resp.into_body().collect().await.is_err() {
            return;
        }
        assert_eq!(status, 200, "webhook {wamid}");
        acked.lock().unwrap().statuses.push(wamid);
    }
}

type Shared = Arc<Mutex<Acked>>;

/// Sends one frame and reads its ACK; `None` once the daemon is gone.
async fn mllp_round_trip(s: &mut tokio::net::TcpStream, message: &str) -> Option<bool> {
    let mut frame = vec![0x0b];
    frame.extend_from_slice(message.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&frame).await.ok()?;
    let mut ack = Vec::new();
    let mut buf = [0u8; 1024];
    while !ack.ends_with(&[0x1c, 0x0d]) {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        ack.extend_from_slice(buf.get(..n)?);
    }
    Some(String::from_utf8_lossy(&ack).contains("MSA|AA|"))
}

async fn mllp_load(addr: std::net::SocketAddr, lane: u64, round: u64, acked: Shared) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    for i in 0.. {
        let mrn = format!("FK{lane}R{round}N{i}");
        let adt = adt_a04(&format!("FK{lane}-{round}-{i}"), &mrn, "ZZFAULT", "");
        match mllp_round_trip(&mut s, &adt).await {
            Some(true) => acked.lock().unwrap().patients.insert(mrn.clone()),
            Some(false) => panic!("ADT {mrn} refused"),
            None => return,
        };
        let appt = format!("FA{lane}R{round}N{i}");
        let siu = siu_s12_v25(
            &format!("FS{lane}-{round}-{i}"),
            &appt,
            &mrn,
            "20261201100000",
        );
        match mllp_round_trip(&mut s, &siu).await {
            Some(true) => acked.lock().unwrap().appointments.insert(appt),
            Some(false) => panic!("SIU {appt} refused"),
            None => return,
        };
    }
}

/// One request on a fresh connection; `None` once the daemon is gone.
async fn api_try(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Option<(u16, serde_json::Value)> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or_default()))
}

async fn api_load(socket: std::path::PathBuf, round: u64, acked: Shared) {
    for i in 0.. {
        let mrn = format!("FAPI-R{round}N{i}");
        let body = serde_json::json!({
            "identifier": [{"value": mrn}],
            "name": [{"family": "ZZFAULTAPI"}],
            "telecom": [{"system": "phone", "value": format!("0151 555{:05}", round * 100 + i)}],
        });
        let Some((status, created)) =
            api_try(&socket, "POST", "/v1/patients", Some(body.to_string())).await
        else {
            return;
        };
        assert_eq!(status, 200, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let victim = {
            let mut a = acked.lock().unwrap();
            a.patients.insert(mrn.clone());
            a.erasable.push((mrn, id));
            // Every third request erases an earlier API patient.
            if i % 3 == 2 {
                let victim = a.erasable.remove(0);
                a.erase_sent.insert(victim.0.clone());
                Some(victim)
            } else {
                None
            }
        };
        if let Some((mrn, id)) = victim {
            let path = format!("/v1/patients/{id}");
            let Some((status, _)) = api_try(&socket, "DELETE", &path, None).await else {
                return;
            };
            assert_eq!(status, 204, "erasure of {mrn}");
            acked.lock().unwrap().erased.push((mrn, id));
        }
    }
}

/// The invariants after a kill, on the data dir the daemon left.
fn check_after_kill(
    round: u64,
    data: &std::path::Path,
    key_file: &std::path::Path,
    acked: &Shared,
) {
    let mk = clinic_relay::keys::MasterKey::load_file(key_file).unwrap();
    let vault = clinic_relay::vault::Vault::open(data, &mk).unwrap();
    let a = acked.lock().unwrap();
    for mrn in a.patients.iter().filter(|m| !a.erase_sent.contains(*m)) {
        let ids = vault.find_patients_by_mrn("", mrn).unwrap();
        assert_eq!(ids.len(), 1, "kill {round}: acknowledged {mrn} lost");
        assert!(vault.get_patient(ids[0]).unwrap().is_some(), "{mrn} opens");
    }
    for appt in &a.appointments {
        assert!(
            vault.get_appointment(appt).unwrap().is_some(),
            "kill {round}: acknowledged appointment {appt} lost"
        );
    }
    for (mrn, id) in &a.erased {
        assert!(
            vault.find_patients_by_mrn("", mrn).unwrap().is_empty(),
            "{mrn}"
        );
        let id = clinic_relay::model::PatientId::from_hex(id).unwrap();
        assert!(
            vault.get_patient(id).unwrap().is_none(),
            "erased {mrn} opens"
        );
    }
    for wamid in &a.statuses {
        assert!(
            vault.wa_status(wamid).unwrap().is_some(),
            "kill {round}: the 200'd webhook {wamid} was lost"
        );
    }
    let report = vault.verify().unwrap();
    assert!(report.is_ok(), "kill {round}: {:#?}", report.problems);
    assert_eq!(vault.audit_damage(), None, "kill {round}");
    vault.verify_audit().unwrap();
    drop(a);
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_mixed_load_loses_nothing_acknowledged() {
    let install = TestInstall::new(
        "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
    );
    for (name, value) in [("app-secret", WEBHOOK_SECRET), ("verify-token", "t")] {
        use std::os::unix::fs::PermissionsExt;
        let path = install.tmp.path().join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let socket = install.tmp.path().join("api.sock");
    let acked: Shared = Arc::default();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let Served {
            mut child,
            mllp: addr,
            webhook,
            ..
        } = spawn_serve(&install);
        let webhook = webhook.expect("the webhook receiver listens");
        let before = acked.lock().unwrap().total();
        let load = [
            tokio::spawn(mllp_load(addr, 1, round, acked.clone())),
            tokio::spawn(mllp_load(addr, 2, round, acked.clone())),
            tokio::spawn(api_load(socket.clone(), round, acked.clone())),
            tokio::spawn(webhook_load(webhook, round, acked.clone())),
        ];
        // Kill after a varying number of acknowledgements, so that the kill
        // lands in every phase of a commit (load keeps running meanwhile).
        let target = before + 1 + (seed % 32) as usize;
        loop {
            let now = acked.lock().unwrap().total();
            if now >= target || load.iter().all(|h| h.is_finished()) {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for h in load {
            h.await
                .expect("a load task failed (a refusal or a wrong answer)");
        }

        let (data, key_file, shared) = (
            install.data.clone(),
            install.key_file.clone(),
            acked.clone(),
        );
        tokio::task::spawn_blocking(move || check_after_kill(round, &data, &key_file, &shared))
            .await
            .unwrap();
    }
    let a = acked.lock().unwrap();
    eprintln!(
        "{KILLS} kills: {} patients, {} appointments, {} erasures, {} webhooks acknowledged",
        a.patients.len(),
        a.appointments.len(),
        a.erased.len(),
        a.statuses.len()
    );
    assert!(a.erased.len() >= 10 && a.appointments.len() >= 100 && a.statuses.len() >= 100);
}
